//! The `Locker` trait every backend implements, and what its guards promise.

use std::future::Future;

use tumbler_core::{LostReason, Mode};

use crate::error::Result;
use crate::options::AcquireOptions;

/// What a backend can do. The conformance suite reads these to decide, explicitly, which
/// cases to skip; a backend declares here everything it cannot offer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name (`mem`, `pg`, `remote`).
    pub backend: &'static str,
    /// `semaphore(limit)` mode.
    pub semaphores: bool,
    /// Holds with a time to live.
    pub ttl: bool,
    /// Fencing tokens that strictly increase per key.
    pub fencing_tokens: bool,
    /// Waiters are granted in arrival order, and a queued writer blocks later readers.
    pub fifo: bool,
    /// A wait that would close a cycle fails with `deadlock`.
    pub deadlock_detection: bool,
    /// `acquire_all` of several keys, all or nothing.
    pub multi_key: bool,
    /// Retried acquires with the same request id are answered once.
    pub request_ids: bool,
    /// `lock_delay` after expiry or owner death.
    pub lock_delay: bool,
    /// Waiting can be driven by tokio's paused test clock (no real I/O involved).
    pub virtual_time: bool,
}

impl Capabilities {
    /// Every capability off: a backend that can do only what every backend must (try,
    /// wait, re-entry, exclusive and shared modes). Turn on what it offers.
    pub fn none(backend: &'static str) -> Self {
        Capabilities {
            backend,
            semaphores: false,
            ttl: false,
            fencing_tokens: false,
            fifo: false,
            deadlock_detection: false,
            multi_key: false,
            request_ids: false,
            lock_delay: false,
            virtual_time: false,
        }
    }

    /// Every capability on, for backends built on `tumbler-core`.
    pub fn full(backend: &'static str) -> Self {
        Capabilities {
            backend,
            semaphores: true,
            ttl: true,
            fencing_tokens: true,
            fifo: true,
            deadlock_detection: true,
            multi_key: true,
            request_ids: true,
            lock_delay: true,
            virtual_time: true,
        }
    }
}

/// One owner's handle on a lock backend.
///
/// A `Locker` value *is* an owner (GS2's transaction, an Elixir owner process, a
/// PostgreSQL session): its acquires of a key it already holds in the same mode re-enter
/// and count; other `Locker`s of the same backend are other owners and contend. When the
/// owner ends — every clone of the handle is dropped, or its connection or session dies —
/// all its holds are released and its waits cancelled, and its guards learn that through
/// [`LockGuard::lost`].
pub trait Locker: Send + Sync {
    /// What a lock is named by.
    type Key: Clone + Send + Sync + 'static;
    /// What a successful acquire returns.
    type Guard: LockGuard + 'static;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The owner id this handle acquires as.
    fn owner_id(&self) -> &str;

    /// Acquires `key` as `options` say.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits withdraws the request: it leaves the queue and
    /// the requests behind it are reconsidered. A grant that raced with the drop is
    /// released, never leaked.
    ///
    /// # Errors
    /// `busy` for a try that found the key taken, `timeout`, `deadlock`,
    /// `invalid_argument`, `limit_exceeded`, `session_expired` when the owner ended while
    /// waiting, and backend failures.
    fn acquire(&self, key: Self::Key, options: AcquireOptions) -> impl Future<Output = Result<Self::Guard>> + Send;

    /// Acquires every key of `keys`, all or nothing: the guard holds all of them, or the
    /// call fails holding none. Two overlapping multi-key waits never deadlock each other.
    ///
    /// # Cancel safety
    /// As [`Locker::acquire`].
    ///
    /// # Errors
    /// As [`Locker::acquire`]; `not_supported` where [`Capabilities::multi_key`] is false.
    fn acquire_all(
        &self,
        keys: Vec<Self::Key>,
        options: AcquireOptions,
    ) -> impl Future<Output = Result<Self::Guard>> + Send;

    /// Releases everything this owner holds and cancels everything it waits for (Elixir's
    /// `goodbye`). The owner stays usable. Returns how many holds ended.
    ///
    /// # Errors
    /// Backend failures.
    fn goodbye(&self) -> impl Future<Output = Result<usize>> + Send;
}

/// A held lock. Dropping it releases one level of each of its keys (at once for in-process
/// backends, in the background for remote ones); [`LockGuard::release`] does the same and
/// reports failures.
pub trait LockGuard: Send + Sync {
    /// The fencing token of the first key: pass it to the resource you protect, which
    /// should reject tokens lower than the highest it has seen.
    fn fencing_token(&self) -> u64;

    /// The fencing token of each key, in the order the keys were asked for.
    fn fencing_tokens(&self) -> Vec<u64>;

    /// The mode held.
    fn mode(&self) -> Mode;

    /// Why the hold was lost, if it was.
    fn lost_reason(&self) -> Option<LostReason>;

    /// Completes when the hold is lost (expired, owner or session ended, connection lost,
    /// force-released); never completes while it is held. Made for `tokio::select!` next
    /// to the work done under the lock.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future has no effect.
    fn lost(&self) -> impl Future<Output = LostReason> + Send + '_;

    /// Releases one level of each key now.
    ///
    /// # Errors
    /// `lost` when the hold ended before (the work under it was not protected since);
    /// backend failures. The lock is released (or gone) whatever the outcome.
    fn release(self) -> impl Future<Output = Result<()>> + Send;
}
