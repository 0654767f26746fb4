//! [`LockTable`]: a whole lock table owned by one caller — the coordinator and all shards
//! in one value, with the same fast paths a sharded caller uses.

use std::hash::Hash;
use std::time::Duration;

use crate::config::Config;
use crate::coordinator::{Coordinator, KeyStatus};
use crate::effects::Effects;
use crate::error::Result;
use crate::layout::Layout;
use crate::mode::Mode;
use crate::owner::OwnerId;
use crate::request::{Acquire, Acquired, Granted, RequestId};
use crate::session::{SessionId, SessionInfo};
use crate::shard::{Shard, Shards};
use crate::time::Instant;

/// A complete lock table in one value: for single-threaded callers, tests, and the
/// reference against which sharded callers are checked.
///
/// Every method takes `now` and appends what the caller must do afterwards to `fx`
/// (waiters to wake, guards to tell, events to publish, a deadline to call
/// [`LockTable::tick`] at). Acquire and release try the owning shard's fast path first,
/// exactly as a sharded caller does, and fall back to the coordinator.
#[derive(Debug)]
pub struct LockTable<K> {
    coordinator: Coordinator<K>,
    shards: Vec<Shard<K>>,
}

impl<K: Hash + Eq + Clone> Default for LockTable<K> {
    fn default() -> Self {
        LockTable::new(Config::default())
    }
}

impl<K: Hash + Eq + Clone> LockTable<K> {
    /// An empty table.
    pub fn new(config: Config<K>) -> Self {
        let coordinator = Coordinator::new(config);
        let shards = (0..coordinator.layout().shards()).map(|_| coordinator.new_shard()).collect();
        LockTable { coordinator, shards }
    }

    /// Runs `f` with the coordinator and every shard, as the coordinator's operations
    /// expect them.
    fn with_all<R>(&mut self, f: impl FnOnce(&mut Coordinator<K>, &mut dyn Shards<K>) -> R) -> R {
        f(&mut self.coordinator, &mut self.shards)
    }

    /// The key-to-shard mapping.
    pub fn layout(&self) -> &Layout {
        self.coordinator.layout()
    }

    /// See [`Coordinator::acquire`].
    ///
    /// # Errors
    /// As [`Coordinator::acquire`].
    pub fn acquire(&mut self, req: Acquire<K>, now: Instant, fx: &mut Effects<K>) -> Result<Acquired<K>> {
        if req.keys.len() == 1 {
            let shard = self.coordinator.layout().shard_of(&req.keys[0]);
            if let Ok(answer) = self.shards[shard].try_acquire(&req, now, fx) {
                return answer;
            }
        }
        self.with_all(|c, s| c.acquire(s, req, now, fx))
    }

    /// See [`Coordinator::release`].
    ///
    /// # Errors
    /// As [`Coordinator::release`].
    pub fn release(
        &mut self,
        key: &K,
        owner: &OwnerId,
        mode: Option<Mode>,
        token: Option<u64>,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<u32> {
        let shard = self.coordinator.layout().shard_of(key);
        let shard = &mut self.shards[shard];
        if let Ok(answer) = shard.try_release(key, owner, mode, token, || now, fx) {
            return answer.map(|released| {
                fx.wakes.extend(released.handed.and_then(|handed| shard.wake_of(key, handed)));
                released.left
            });
        }
        self.with_all(|c, s| c.release(s, key, owner, mode, token, now, fx))
    }

    /// See [`Coordinator::cancel`].
    pub fn cancel(&mut self, request: RequestId, now: Instant, fx: &mut Effects<K>) -> bool {
        self.with_all(|c, s| c.cancel(s, request, now, fx))
    }

    /// See [`Coordinator::refresh`].
    ///
    /// # Errors
    /// As [`Coordinator::refresh`].
    pub fn refresh(
        &mut self,
        key: &K,
        owner: &OwnerId,
        mode: Option<Mode>,
        ttl: Duration,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Instant> {
        self.with_all(|c, s| c.refresh(s, key, owner, mode, ttl, now, fx))
    }

    /// See [`Coordinator::transfer`].
    ///
    /// # Errors
    /// As [`Coordinator::transfer`].
    pub fn transfer(
        &mut self,
        key: &K,
        from: &OwnerId,
        mode: Option<Mode>,
        to: &OwnerId,
        now: Instant,
        fx: &mut Effects<K>,
    ) -> Result<Granted<K>> {
        self.with_all(|c, s| c.transfer(s, key, from, mode, to, now, fx))
    }

    /// See [`Coordinator::force_release`].
    pub fn force_release(&mut self, key: &K, now: Instant, fx: &mut Effects<K>) -> usize {
        self.with_all(|c, s| c.force_release(s, key, now, fx))
    }

    /// See [`Coordinator::end_owner`].
    pub fn end_owner(&mut self, owner: &OwnerId, voluntary: bool, now: Instant, fx: &mut Effects<K>) -> usize {
        self.with_all(|c, s| c.end_owner(s, owner, voluntary, now, fx))
    }

    /// See [`Coordinator::open_session`].
    ///
    /// # Errors
    /// As [`Coordinator::open_session`].
    pub fn open_session(&mut self, ttl: Duration, now: Instant, fx: &mut Effects<K>) -> Result<SessionInfo> {
        self.coordinator.open_session(ttl, now, fx)
    }

    /// See [`Coordinator::keepalive`].
    ///
    /// # Errors
    /// As [`Coordinator::keepalive`].
    pub fn keepalive(&mut self, id: SessionId, now: Instant, fx: &mut Effects<K>) -> Result<SessionInfo> {
        self.coordinator.keepalive(id, now, fx)
    }

    /// See [`Coordinator::end_session`].
    ///
    /// # Errors
    /// As [`Coordinator::end_session`].
    pub fn end_session(&mut self, id: SessionId, now: Instant, fx: &mut Effects<K>) -> Result<()> {
        self.with_all(|c, s| c.end_session(s, id, now, fx))
    }

    /// See [`Coordinator::session_info`].
    pub fn session_info(&self, id: SessionId) -> Option<SessionInfo> {
        self.coordinator.session_info(id)
    }

    /// See [`Coordinator::tick`].
    pub fn tick(&mut self, now: Instant, fx: &mut Effects<K>) {
        self.with_all(|c, s| c.tick(s, now, fx));
    }

    /// See [`Coordinator::next_deadline`].
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.with_all(|c, s| c.next_deadline(s))
    }

    /// See [`Coordinator::status`].
    pub fn status(&mut self, key: &K) -> Option<KeyStatus> {
        self.with_all(|c, s| c.status(s, key))
    }

    /// How many requests are queued.
    pub fn waiting(&self) -> usize {
        self.coordinator.waiting()
    }

    /// How many keys have holds, waiters or a lock-delay.
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.keys.len()).sum()
    }

    /// The highest fencing token handed out so far (persist it to keep tokens increasing
    /// across restarts, and pass it back to [`LockTable::raise_fencing_floor`]).
    pub fn fencing_high_water(&self) -> u64 {
        self.shards.iter().map(Shard::fencing_high_water).max().unwrap_or(0)
    }

    /// Makes every later fencing token greater than `floor`.
    pub fn raise_fencing_floor(&mut self, floor: u64) {
        for shard in &mut self.shards {
            shard.raise_fencing_floor(floor);
        }
    }
}
