//! Owners and guards of the in-process backend.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use smallvec::SmallVec;
use tumbler_core::{Acquire, Config, Grant, KeyStatus, LostReason, Mode, OwnerId};

use super::engine::{Admitted, Engine, Started, DEFAULT_SHARDS};
use super::wait::WaitFor;
use crate::error::{Error, Result};
use crate::locker::{Capabilities, LockGuard, Locker};
use crate::lost::OwnerSignals;
use crate::options::AcquireOptions;

/// An in-process lock table. Cheap to clone: clones share the table.
pub struct MemLocks<K> {
    engine: Engine<K>,
    next_owner: Arc<AtomicU64>,
}

impl<K> Clone for MemLocks<K> {
    fn clone(&self) -> Self {
        MemLocks { engine: self.engine.clone(), next_owner: self.next_owner.clone() }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Default for MemLocks<K> {
    fn default() -> Self {
        MemLocks::new()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> MemLocks<K> {
    /// A table with [`DEFAULT_SHARDS`] shards and no event recording.
    pub fn new() -> Self {
        MemLocks::with_config(Config { shards: DEFAULT_SHARDS, record_events: false, ..Config::default() })
    }

    /// A table configured by `config` (shards, limits, event recording).
    pub fn with_config(config: Config<K>) -> Self {
        MemLocks { engine: Engine::new(config), next_owner: Arc::new(AtomicU64::new(0)) }
    }

    /// A new owner with a generated id (`mem-1`, `mem-2`, ...).
    pub fn owner(&self) -> MemLocker<K> {
        let n = self.next_owner.fetch_add(1, Ordering::Relaxed) + 1;
        self.make_owner(OwnerId::new(format!("mem-{n}")).expect("BUG: generated owner ids are valid"))
    }

    /// A new owner handle with a given id: GS2's transaction id. Its acquires re-enter
    /// holds of that id. The owner ends when this handle and its clones are dropped; do not
    /// make two live handles with one id, since the first to end ends both.
    ///
    /// # Errors
    /// `invalid_argument` for a malformed id.
    pub fn owner_named(&self, id: &str) -> Result<MemLocker<K>> {
        Ok(self.make_owner(OwnerId::new(id)?))
    }

    fn make_owner(&self, id: OwnerId) -> MemLocker<K> {
        let signals = Arc::new(OwnerSignals::default());
        self.engine.register_owner(&id, &signals);
        let shared = Arc::new(OwnerShared { engine: self.engine.clone(), id, signals });
        MemLocker { life: Arc::new(OwnerLife { shared }) }
    }

    /// Who holds and waits for `key`.
    pub fn status(&self, key: &K) -> Option<KeyStatus> {
        self.engine.status(key)
    }

    /// The engine underneath, for operations beyond the [`Locker`] trait (sessions,
    /// transfer, force release, events).
    pub fn engine(&self) -> &Engine<K> {
        &self.engine
    }
}

/// What guards share with their owner without keeping it alive.
struct OwnerShared<K> {
    engine: Engine<K>,
    id: OwnerId,
    signals: Arc<OwnerSignals>,
}

/// The owner's life: dropped with the last [`MemLocker`] clone, and that ends the owner.
struct OwnerLife<K: Hash + Eq + Clone + Send + Sync + 'static> {
    shared: Arc<OwnerShared<K>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Drop for OwnerLife<K> {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.engine.end_owner(&shared.id, false);
        shared.engine.unregister_owner(&shared.id);
    }
}

/// One owner of an in-process lock table. Clones are the same owner; the owner ends
/// (releasing everything it holds) when the last clone is dropped.
pub struct MemLocker<K: Hash + Eq + Clone + Send + Sync + 'static> {
    life: Arc<OwnerLife<K>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Clone for MemLocker<K> {
    fn clone(&self) -> Self {
        MemLocker { life: self.life.clone() }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> fmt::Debug for MemLocker<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemLocker").field("owner", &self.life.shared.id).finish()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> MemLocker<K> {
    fn shared(&self) -> &Arc<OwnerShared<K>> {
        &self.life.shared
    }

    /// This owner's id.
    pub fn id(&self) -> &OwnerId {
        &self.shared().id
    }

    /// Hands this owner's hold of `guard`'s first key to `to` (with all its levels). The
    /// guard reports the hold as lost; requests queued on the key keep waiting. Returns a
    /// guard of `to` for the hold.
    ///
    /// # Errors
    /// `not_held` when the hold is gone; `deadlock` when `to` waits for a request queued on
    /// the key; `invalid_argument` when `to` is this owner.
    pub fn transfer(&self, guard: &MemGuard<K>, to: &MemLocker<K>) -> Result<MemGuard<K>> {
        let (key, token) = guard.holds.first().cloned().ok_or(Error::NotHeld)?;
        if let Some(hold) = self.shared().engine.status(&key).and_then(|s| {
            s.holders.into_iter().find(|h| h.holder.owner == self.shared().id && h.holder.fencing_token == token)
        }) {
            let granted = self.shared().engine.transfer(&key, &self.shared().id, Some(hold.holder.mode), to.id())?;
            if granted.count > hold.holder.count {
                // Merged into a hold `to` already had, whose guards stand for it too.
                to.shared().signals.add_sibling(self.shared().engine.hold_id(&key, granted.fencing_token));
            }
            // The new owner's levels (for a merged hold, its earlier ones too) are the
            // levels this guard stands for plus any others the old hold had; the returned
            // guard releases one level, as every guard does.
            return Ok(MemGuard {
                owner: to.shared().clone(),
                mode: guard.mode,
                holds: SmallVec::from_buf([(key, granted.fencing_token)]),
                released: false,
            });
        }
        Err(Error::NotHeld)
    }

    /// The guard of what a request in `mode` was admitted to. `owner` is this owner's
    /// shared state, cloned before the wait so that a waiter handed its key touches no
    /// reference count.
    // Always inlined: it is the last step of every hand-off's completing poll.
    #[inline(always)]
    fn guard(&self, owner: Arc<OwnerShared<K>>, mode: Mode, admitted: Admitted<K>) -> MemGuard<K> {
        match admitted {
            // A new hold of count 1 that no other guard stands for.
            Admitted::Handed(key, handed) => {
                let holds = SmallVec::from_buf([(key, handed.fencing_token)]);
                MemGuard { owner, mode, holds, released: false }
            }
            Admitted::Granted(grant) => self.granted_guard(owner, grant),
        }
    }

    /// The guard of a grant the core made.
    fn granted_guard(&self, owner: Arc<OwnerShared<K>>, grant: Grant<K>) -> MemGuard<K> {
        for hold in &grant.holds {
            // A re-entry or a retry: another guard already stands for this hold.
            if hold.count > 1 || grant.retried {
                self.shared().signals.add_sibling(self.shared().engine.hold_id(&hold.key, hold.fencing_token));
            }
        }
        let mut granted = grant.holds;
        let holds = match granted.len() {
            // The usual single key, without the general collect.
            1 => granted.pop().map(|h| SmallVec::from_buf([(h.key, h.fencing_token)])).unwrap_or_default(),
            _ => granted.into_iter().map(|h| (h.key, h.fencing_token)).collect(),
        };
        MemGuard { owner, mode: grant.mode, holds, released: false }
    }

    fn admit(&self, keys: SmallVec<[K; 1]>, options: AcquireOptions) -> Acquiring<'_, K> {
        Acquiring { locker: self, step: Step::Ask(keys, options) }
    }

    fn request(&self, keys: SmallVec<[K; 1]>, options: AcquireOptions) -> Acquire<K> {
        Acquire {
            keys,
            owner: self.shared().id.clone(),
            mode: options.mode_or_default(),
            wait: options.wait,
            ttl: options.ttl,
            session: None,
            request_id: options.request_id,
            lock_delay: options.lock_delay,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Locker for MemLocker<K> {
    type Key = K;
    type Guard = MemGuard<K>;

    fn capabilities(&self) -> Capabilities {
        Capabilities::full("mem")
    }

    fn owner_id(&self) -> &str {
        self.shared().id.as_str()
    }

    fn acquire(&self, key: K, options: AcquireOptions) -> impl Future<Output = Result<MemGuard<K>>> + Send {
        self.admit(SmallVec::from_buf([key]), options)
    }

    fn acquire_all(&self, keys: Vec<K>, options: AcquireOptions) -> impl Future<Output = Result<MemGuard<K>>> + Send {
        self.admit(keys.into(), options)
    }

    async fn goodbye(&self) -> Result<usize> {
        Ok(self.shared().engine.end_owner(&self.shared().id, true))
    }
}

/// An acquire of [`MemLocker`] under way. One future, not a stack of `async fn`s: the poll
/// that completes a wait (the key handed to it) takes the outcome and makes the guard in
/// one step, which is the waiter's whole share of a hand-off's latency.
///
/// Asks on its first poll, as an `async fn` would. Dropping it while it waits withdraws
/// the request (see [`WaitFor`]).
struct Acquiring<'a, K: Hash + Eq + Clone + Send + Sync + 'static> {
    locker: &'a MemLocker<K>,
    step: Step<'a, K>,
}

/// How far an [`Acquiring`] has got.
enum Step<'a, K: Hash + Eq + Clone + Send + Sync + 'static> {
    /// Not asked yet.
    Ask(SmallVec<[K; 1]>, AcquireOptions),
    /// Queued. `owner` is this owner's shared state, cloned before the wait so that a
    /// waiter handed its key touches no reference count.
    Waiting { owner: Arc<OwnerShared<K>>, mode: Mode, wait: WaitFor<'a, K> },
    /// Answered.
    Done,
}

// Nothing is pinned in place: every part of an acquire may move between polls.
impl<K: Hash + Eq + Clone + Send + Sync + 'static> Unpin for Acquiring<'_, K> {}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Future for Acquiring<'_, K> {
    type Output = Result<MemGuard<K>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let locker = this.locker;
        if let Step::Ask(..) = this.step {
            let Step::Ask(keys, options) = std::mem::replace(&mut this.step, Step::Done) else { unreachable!() };
            let req = locker.request(keys, options);
            let (owner, mode) = (locker.shared().clone(), req.mode);
            match locker.shared().engine.start(req) {
                Err(e) => return Poll::Ready(Err(e.into())),
                Ok(Started::Admitted(admitted)) => return Poll::Ready(Ok(locker.guard(owner, mode, admitted))),
                Ok(Started::Waiting(wait)) => this.step = Step::Waiting { owner, mode, wait },
            }
        }
        let Step::Waiting { wait, .. } = &mut this.step else {
            panic!("an acquire polled after it was answered");
        };
        let admitted = ready!(Pin::new(wait).poll(cx));
        let Step::Waiting { owner, mode, .. } = std::mem::replace(&mut this.step, Step::Done) else { unreachable!() };
        Poll::Ready(match admitted {
            Ok(admitted) => Ok(locker.guard(owner, mode, admitted)),
            Err(e) => Err(e.into()),
        })
    }
}

/// A held in-process lock of one or several keys. Dropping it releases one level of
/// each key at once.
#[must_use = "if unused the lock is released at once"]
pub struct MemGuard<K: Hash + Eq + Clone + Send + Sync + 'static> {
    owner: Arc<OwnerShared<K>>,
    mode: Mode,
    holds: SmallVec<[(K, u64); 1]>,
    released: bool,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> fmt::Debug for MemGuard<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemGuard")
            .field("owner", &self.owner.id)
            .field("mode", &self.mode)
            .field("tokens", &self.fencing_tokens())
            .finish()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> MemGuard<K> {
    fn hold_ids(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.holds.iter().map(|(key, token)| self.owner.engine.hold_id(key, *token))
    }

    /// The keys held, in the order they were asked for.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.holds.iter().map(|(key, _)| key)
    }

    fn release_now(&mut self) -> Result<()> {
        let lost = self.lost_reason();
        match (lost, self.release_holds()) {
            (Some(reason), _) => Err(Error::Lost { reason }),
            (None, Some(e)) => Err(e.into()),
            (None, None) => Ok(()),
        }
    }

    /// Releases one level of each key and forgets their lost-hold marks; answers the first
    /// error.
    fn release_holds(&mut self) -> Option<tumbler_core::Error> {
        self.released = true;
        let mut first_error = None;
        for (key, token) in &self.holds {
            if let Err(e) = self.owner.engine.release(key, &self.owner.id, Some(self.mode), Some(*token)) {
                first_error.get_or_insert(e);
            }
        }
        self.owner.signals.forget(self.hold_ids());
        first_error
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Drop for MemGuard<K> {
    fn drop(&mut self) {
        if !self.released {
            // Nobody hears the answer, so whether the holds were lost is not asked.
            self.release_holds();
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LockGuard for MemGuard<K> {
    fn fencing_token(&self) -> u64 {
        self.holds.first().map_or(0, |(_, t)| *t)
    }

    fn fencing_tokens(&self) -> Vec<u64> {
        self.holds.iter().map(|(_, t)| *t).collect()
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn lost_reason(&self) -> Option<LostReason> {
        self.owner.signals.reason(self.hold_ids())
    }

    async fn lost(&self) -> LostReason {
        self.owner.signals.wait(|| self.hold_ids().collect::<SmallVec<[_; 1]>>()).await
    }

    async fn release(mut self) -> Result<()> {
        self.release_now()
    }
}
