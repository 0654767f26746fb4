//! What callers ask of the table and what it answers.

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::mode::Mode;
use crate::owner::OwnerId;
use crate::session::SessionId;
use crate::time::Instant;

/// Identifies one waiting request. Ids come from one counter per table and are handed out
/// in arrival order: this is the global arrival sequence that orders every key's queue.
///
/// The low [`RequestId::HOME_BITS`] bits name the request's home: zero for a request the
/// coordinator keeps, `1 + i` for one that lives in shard `i` (see [`RequestId::home`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// How many low bits of an id name its home.
    pub const HOME_BITS: u32 = 16;

    /// The id with sequence number `sequence` and home `shard`.
    pub(crate) fn new(sequence: u64, shard: Option<usize>) -> Self {
        let home = shard.map_or(0, |i| i as u64 + 1);
        debug_assert!(home < 1 << Self::HOME_BITS, "BUG: more shards than a request id can name");
        RequestId(sequence << Self::HOME_BITS | home)
    }

    /// The shard a request lives in, when it lives in one: a wait for one key alone, with no
    /// session or request id, is kept entirely by its key's shard, which can
    /// then grant it without the coordinator (the hand-off of a hot key). Callers that keep
    /// per-shard state about waiters (whom to wake) file such a request under this shard.
    pub fn home(self) -> Option<usize> {
        let home = self.0 & ((1 << Self::HOME_BITS) - 1);
        (home != 0).then(|| home as usize - 1)
    }
}

/// How long an acquire may wait.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Wait {
    /// A try: fail at once with `busy` when the lock cannot be granted now.
    #[default]
    NoWait,
    /// Wait at most this long, then fail with `timeout`.
    Timeout(Duration),
    /// Wait until granted, cancelled, or the owner or session ends.
    Forever,
}

/// One acquire: of one key or, all-or-nothing, of several.
#[derive(Clone, Debug)]
pub struct Acquire<K> {
    /// The keys; duplicates are folded into one.
    pub keys: SmallVec<[K; 1]>,
    /// Who acquires.
    pub owner: OwnerId,
    /// In which mode.
    pub mode: Mode,
    /// How long it may wait.
    pub wait: Wait,
    /// Time to live of the hold: it expires this long after the grant (or after the latest
    /// re-entry or refresh).
    pub ttl: Option<Duration>,
    /// The session the hold belongs to; its end releases the hold and cancels the wait.
    pub session: Option<SessionId>,
    /// De-duplicates retries: a repeated acquire with the same id by the same owner, for the
    /// same keys and mode, answers the original grant (or joins the original wait) instead
    /// of entering again.
    pub request_id: Option<Arc<str>>,
    /// When the hold ends by expiry or by its session or owner ending (not by a release),
    /// keep the key unclaimable for this long.
    pub lock_delay: Option<Duration>,
}

impl<K> Acquire<K> {
    /// An exclusive try of one key by `owner`, with no TTL, session, or request id.
    pub fn new(key: K, owner: OwnerId) -> Self {
        Acquire { keys: SmallVec::from_buf([key]), ..Acquire::new_empty(owner) }
    }

    /// An exclusive try of several keys at once, all or nothing.
    pub fn all(keys: impl IntoIterator<Item = K>, owner: OwnerId) -> Self {
        Acquire { keys: keys.into_iter().collect(), ..Acquire::new_empty(owner) }
    }

    fn new_empty(owner: OwnerId) -> Self {
        Acquire {
            keys: SmallVec::new(),
            owner,
            mode: Mode::Exclusive,
            wait: Wait::NoWait,
            ttl: None,
            session: None,
            request_id: None,
            lock_delay: None,
        }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the wait policy.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Binds the hold to a session.
    pub fn session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }

    /// Sets the retry de-duplication id.
    pub fn request_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the lock-delay applied when the hold ends without a release.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }
}

/// One key of a grant, as it stands right after the grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted<K> {
    /// The key.
    pub key: K,
    /// How many times the owner now holds it in this mode.
    pub count: u32,
    /// The fencing token of the hold; a re-entry keeps the token of the hold it enters.
    pub fencing_token: u64,
    /// When the hold expires, if it has a TTL.
    pub expires_at: Option<Instant>,
}

/// A successful acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant<K> {
    /// Who holds.
    pub owner: OwnerId,
    /// In which mode.
    pub mode: Mode,
    /// The session of the holds, if any.
    pub session: Option<SessionId>,
    /// One entry per key, in the order the keys were asked for (after folding duplicates).
    pub holds: SmallVec<[Granted<K>; 1]>,
    /// True when this answers a retry (same `request_id`) of a grant already made: nothing
    /// was counted again.
    pub retried: bool,
}

impl<K> Grant<K> {
    /// The fencing token of the first key (the only one for single-key grants).
    pub fn fencing_token(&self) -> u64 {
        self.holds.first().map_or(0, |h| h.fencing_token)
    }
}

/// What an acquire did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired<K> {
    /// Granted at once.
    Granted(Grant<K>),
    /// Queued. The outcome arrives later as a [`crate::Wake`] for this request, or, when a
    /// shard's release hands it the key, as that release's [`crate::Released::handed`].
    Waiting {
        /// The queued request.
        request: RequestId,
        /// When it times out, if it has a bound.
        deadline: Option<Instant>,
    },
}
