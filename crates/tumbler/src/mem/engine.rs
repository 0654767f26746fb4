//! The engine: a `tumbler-core` lock table shared by many tasks — shards behind their own
//! mutexes, waiters woken by notification, one timer task, lost-hold signals, events.
//!
//! The in-process backend is a thin owner-handle layer over it, and the lock server runs
//! the same engine, so wake-ups, timers and events exist once.
//!
//! # Locking
//!
//! Hot single-key operations lock one shard: an immediate grant, a release, and the
//! hand-off of a key to a waiter living in its shard (whose waiters are filed with the
//! shard). Everything else locks the central state (the coordinator and the waiters of the
//! requests it keeps) and then the shards it needs, each on first use ([`LockedShards`]
//! says why that cannot deadlock). No lock is held across an `.await`, and no waiter is
//! woken, nor a guard told, while a lock is held.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use tokio::sync::{broadcast, oneshot, Notify};
use tumbler_core::{
    Acquire, Acquired, Config, Coordinator, Effects, Event, EventLog, Grant, Granted, HandOff, Instant, KeyStatus,
    Layout, Mode, OwnerId, RequestId, RestoredHold, SessionId, SessionInfo, Shard, Shards, TooOld, Wake,
};

use crate::lost::{HoldId, OwnerSignals};

type CoreResult<T> = tumbler_core::Result<T>;
/// The engine's maps are looked up on every hand-off: foldhash, as in the core's tables,
/// instead of std's slower SipHash.
type Map<K, V> = HashMap<K, V, foldhash::quality::RandomState>;
/// What a waiter is told: the outcome of its request, or, for a request living in its
/// shard, that the key was handed to it (the waiter makes the grant from what it asked).
enum Delivery<K> {
    Outcome(CoreResult<Grant<K>>),
    Handed(HandOff),
}
type WakeSender<K> = oneshot::Sender<Delivery<K>>;

/// What [`Engine::admit`] answers: the request's grant, or the key handed to it.
#[derive(Debug)]
pub enum Admitted<K> {
    /// The grant, as the core made it.
    Granted(Grant<K>),
    /// A release handed the request's one key to it, as the request's owner, in its mode:
    /// its grant is [`HandOff::grant`] of those.
    Handed(K, HandOff),
}
/// The waiters of one queued request: the one that queued it, and any retry (same
/// request id) that joined its wait.
type WakeSenders<K> = SmallVec<[WakeSender<K>; 1]>;
/// Outcomes to deliver, each with the waiters of its request.
type Wakes<K> = Vec<(WakeSenders<K>, CoreResult<Grant<K>>)>;

/// Keeps each shard's mutex on its own cache lines, so that two cores working on keys of
/// different shards do not slow each other down through false sharing.
#[repr(align(128))]
struct Padded<T>(T);

struct Central<K> {
    coordinator: Coordinator<K>,
    /// Whom to wake for each queued request the coordinator keeps. Inserted under the same
    /// lock that queues the request, so a grant can never arrive before its waiter is known.
    waiters: Map<RequestId, WakeSenders<K>>,
}

/// One shard and whom to wake for the requests living in it ([`RequestId::home`]), under
/// one lock: the shard grants those requests on its own, and its caller finds their
/// waiters without the central lock.
struct ShardSlot<K> {
    shard: Shard<K>,
    waiters: Map<RequestId, WakeSenders<K>>,
}

struct Timer {
    notify: Notify,
    /// The deadline (nanoseconds after the epoch) the timer task sleeps until; `u64::MAX`
    /// while it has none or is recomputing it.
    armed: AtomicU64,
    running: AtomicBool,
}

struct EventSink<K> {
    log: Mutex<EventLog<K>>,
    tx: broadcast::Sender<Event<K>>,
}

struct Inner<K> {
    layout: Layout,
    shards: Box<[Padded<Mutex<ShardSlot<K>>>]>,
    central: Mutex<Central<K>>,
    epoch: tokio::time::Instant,
    timer: Arc<Timer>,
    owners: Mutex<Map<OwnerId, Weak<OwnerSignals>>>,
    events: Option<EventSink<K>>,
}

impl<K> Drop for Inner<K> {
    fn drop(&mut self) {
        // Lets the timer task see that the engine is gone and end.
        self.timer.notify.notify_one();
    }
}

/// A lock table shared between tasks. Cheap to clone (a shared handle).
///
/// Requires a tokio runtime with the time driver for waits with a bound, TTLs and other
/// deadlines (the timer task is spawned on first need).
pub struct Engine<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Engine<K> {
    fn clone(&self) -> Self {
        Engine { inner: self.inner.clone() }
    }
}

/// The default number of shards: enough that unrelated keys rarely share one on a
/// machine of a few dozen cores, few enough that locking them all stays cheap.
pub const DEFAULT_SHARDS: usize = 32;

/// How many events a watcher may fall behind before it misses some, and how many the
/// engine keeps for replay.
pub const EVENT_BUFFER: usize = 4096;

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Engine<K> {
    /// An engine for `config` (its `shards` decides the sharding).
    pub fn new(config: Config<K>) -> Self {
        Engine::continuing(config, 0)
    }

    /// An engine whose event revisions continue after `last_revision` (a restarted
    /// server's, so that watchers never see a revision twice).
    pub fn continuing(config: Config<K>, last_revision: u64) -> Self {
        let events = config.record_events.then(|| EventSink {
            log: Mutex::new(EventLog::starting_after(EVENT_BUFFER, last_revision)),
            tx: broadcast::channel(EVENT_BUFFER).0,
        });
        let coordinator = Coordinator::new(config);
        let shards = (0..coordinator.layout().shards())
            .map(|_| Padded(Mutex::new(ShardSlot { shard: coordinator.new_shard(), waiters: Map::default() })))
            .collect();
        Engine {
            inner: Arc::new(Inner {
                layout: coordinator.layout().clone(),
                shards,
                central: Mutex::new(Central { coordinator, waiters: Map::default() }),
                epoch: tokio::time::Instant::now(),
                timer: Arc::new(Timer {
                    notify: Notify::new(),
                    armed: AtomicU64::new(u64::MAX),
                    running: AtomicBool::new(false),
                }),
                owners: Mutex::new(Map::default()),
                events,
            }),
        }
    }

    /// The engine's clock: time since it was created, on tokio's monotonic clock (so a
    /// paused test clock drives it too).
    pub fn now(&self) -> Instant {
        Instant::from_epoch(self.inner.epoch.elapsed())
    }

    /// Turns an engine instant back into a tokio instant.
    pub fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.inner.epoch + at.since_epoch()
    }

    /// The key-to-shard mapping.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// Acquires as the core's [`tumbler_core::Coordinator::acquire`] decides, waiting for
    /// the grant when the request is queued.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits withdraws the request; a grant that raced with
    /// the drop is released.
    ///
    /// # Errors
    /// The core's errors.
    pub async fn acquire(&self, req: Acquire<K>) -> CoreResult<Grant<K>> {
        let (owner, mode) = (req.owner.clone(), req.mode);
        Ok(match self.admit(req).await? {
            Admitted::Granted(grant) => grant,
            Admitted::Handed(key, handed) => handed.grant(key, owner, mode),
        })
    }

    /// [`Engine::acquire`], answering a key handed to the request by a release as that key
    /// and the [`HandOff`], for a caller that needs less than a whole [`Grant`] (the
    /// in-process locker: no id is cloned or dropped while the waiter takes the key).
    ///
    /// # Cancel safety
    /// As [`Engine::acquire`].
    ///
    /// # Errors
    /// The core's errors.
    pub async fn admit(&self, req: Acquire<K>) -> CoreResult<Admitted<K>> {
        let now = self.now();
        let mut fx = Effects::new();
        if req.keys.len() == 1 && req.session.is_none() {
            let shard = self.inner.layout.shard_of(&req.keys[0]);
            let fast = {
                let mut slot = self.inner.shards[shard].0.lock();
                let answer = slot.shard.try_acquire(&req, now, &mut fx);
                self.publish(&mut fx);
                answer
            };
            if let Ok(answer) = fast {
                self.settle(fx, Vec::new());
                return answer.map(|a| match a {
                    Acquired::Granted(grant) => Admitted::Granted(grant),
                    Acquired::Waiting { .. } => unreachable!("BUG: a shard never queues"),
                });
            }
        }
        // A wait living in its shard (the core decides which: `RequestId::home`) is told only
        // its fencing token when the key is handed to it: its key is the one it asked for
        // (repeated keys are folded, so any of them).
        let asked = req.keys.first().cloned();
        let (tx, rx) = oneshot::channel();
        let (answer, wakes) = self.with_all(&mut fx, |central, shards, fx| {
            let answer = central.coordinator.acquire(shards, req, now, fx);
            if let Ok(Acquired::Waiting { request, .. }) = &answer {
                // A retry joining an earlier wait comes in addition to its waiter.
                waiters_of(central, shards, *request).entry(*request).or_default().push(tx);
            }
            answer
        });
        self.settle(fx, wakes);
        match answer? {
            Acquired::Granted(grant) => Ok(Admitted::Granted(grant)),
            Acquired::Waiting { request, .. } => {
                let asked = asked.filter(|_| request.home().is_some());
                WaitFor { engine: self, request, asked, rx, done: false }.await
            }
        }
    }

    /// Releases one level of a hold; see [`tumbler_core::Coordinator::release`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn release(&self, key: &K, owner: &OwnerId, mode: Option<Mode>, token: Option<u64>) -> CoreResult<u32> {
        let mut fx = Effects::new();
        let shard = self.inner.layout.shard_of(key);
        let fast = {
            let mut slot = self.inner.shards[shard].0.lock();
            let answer = slot.shard.try_release(key, owner, mode, token, || self.now(), &mut fx);
            debug_assert!(fx.wakes.is_empty(), "BUG: a shard's release wakes only whom it hands the key to");
            // The shard may have handed the key to a request living in it, whose waiter is
            // filed with it.
            let handed = match &answer {
                Ok(Ok(released)) => released.handed.and_then(|h| Some((slot.waiters.remove(&h.request)?, h))),
                _ => None,
            };
            self.publish(&mut fx);
            answer.map(|answer| (answer, handed))
        };
        if let Ok((answer, handed)) = fast {
            if let Some((txs, handed)) = handed {
                self.hand(key, txs, handed);
            }
            self.settle(fx, Vec::new());
            return answer.map(|released| released.left);
        }
        let now = self.now();
        self.full(|c, s, fx| c.release(s, key, owner, mode, token, now, fx))
    }

    /// Tells the waiter of a request that `key` was handed to it. When the waiter has gone,
    /// hands the key on: its hold, found by its token, is released.
    fn hand(&self, key: &K, txs: WakeSenders<K>, handed: HandOff) {
        debug_assert!(txs.len() == 1, "BUG: a request living in its shard has no retries to join it");
        let mut delivered = false;
        for tx in txs {
            delivered |= tx.send(Delivery::Handed(handed)).is_ok();
        }
        if !delivered {
            self.release_handed(key, handed);
        }
    }

    /// Releases the hold `key` was handed to a waiter with, whose waiter has gone (if that
    /// hold has not ended since): the key passes on.
    fn release_handed(&self, key: &K, handed: HandOff) {
        let wake = self.inner.shards[self.inner.layout.shard_of(key)].0.lock().shard.wake_of(key, handed);
        if let Some(Wake { outcome: Ok(grant), .. }) = wake {
            self.release_grant(&grant);
        }
    }

    /// Releases one level of every key of `grant`, ignoring holds that are already gone.
    pub fn release_grant(&self, grant: &Grant<K>) {
        for hold in &grant.holds {
            let _ = self.release(&hold.key, &grant.owner, Some(grant.mode), Some(hold.fencing_token));
        }
    }

    /// See [`tumbler_core::Coordinator::refresh`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn refresh(&self, key: &K, owner: &OwnerId, mode: Option<Mode>, ttl: Duration) -> CoreResult<Instant> {
        let now = self.now();
        self.full(|c, s, fx| c.refresh(s, key, owner, mode, ttl, now, fx))
    }

    /// See [`tumbler_core::Coordinator::transfer`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn transfer(&self, key: &K, from: &OwnerId, mode: Option<Mode>, to: &OwnerId) -> CoreResult<Granted<K>> {
        let now = self.now();
        self.full(|c, s, fx| c.transfer(s, key, from, mode, to, now, fx))
    }

    /// See [`tumbler_core::Coordinator::force_release`].
    pub fn force_release(&self, key: &K) -> usize {
        let now = self.now();
        self.full(|c, s, fx| c.force_release(s, key, now, fx))
    }

    /// See [`tumbler_core::Coordinator::end_owner`].
    pub fn end_owner(&self, owner: &OwnerId, voluntary: bool) -> usize {
        let now = self.now();
        self.full(|c, s, fx| c.end_owner(s, owner, voluntary, now, fx))
    }

    /// See [`tumbler_core::Coordinator::open_session`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn open_session(&self, ttl: Duration) -> CoreResult<SessionInfo> {
        let now = self.now();
        self.full(|c, _, fx| c.open_session(ttl, now, fx))
    }

    /// See [`tumbler_core::Coordinator::keepalive`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn keepalive(&self, id: SessionId) -> CoreResult<SessionInfo> {
        let now = self.now();
        self.full(|c, _, fx| c.keepalive(id, now, fx))
    }

    /// See [`tumbler_core::Coordinator::end_session`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn end_session(&self, id: SessionId) -> CoreResult<()> {
        let now = self.now();
        self.full(|c, s, fx| c.end_session(s, id, now, fx))
    }

    /// Who holds and waits for `key` now.
    pub fn status(&self, key: &K) -> Option<KeyStatus> {
        let mut fx = Effects::new();
        let (status, _) = self.with_all(&mut fx, |c, s, _| c.coordinator.status(s, key));
        status
    }

    /// See [`tumbler_core::Coordinator::session_info`].
    pub fn session_info(&self, id: SessionId) -> Option<SessionInfo> {
        self.inner.central.lock().coordinator.session_info(id)
    }

    /// Re-creates a session recorded before a restart, with a fresh lease of `ttl`.
    pub fn restore_session(&self, id: SessionId, ttl: Duration) {
        let now = self.now();
        self.full(|c, _, fx| c.restore_session(id, ttl, now, fx));
    }

    /// See [`tumbler_core::Coordinator::restore_hold`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn restore_hold(&self, key: &K, hold: &RestoredHold) -> CoreResult<()> {
        self.full(|c, s, fx| c.restore_hold(s, key, hold, fx))
    }

    /// The highest fencing token handed out so far.
    pub fn fencing_high_water(&self) -> u64 {
        let mut fx = Effects::new();
        self.with_all(&mut fx, |c, s, _| c.coordinator.fencing_high_water(s)).0
    }

    /// Makes every later session id greater than `floor`; see
    /// [`tumbler_core::Coordinator::raise_session_floor`].
    pub fn raise_session_floor(&self, floor: u64) {
        self.inner.central.lock().coordinator.raise_session_floor(floor);
    }

    /// Makes every later fencing token greater than `floor`.
    pub fn raise_fencing_floor(&self, floor: u64) {
        self.full(|c, s, _| c.raise_fencing_floor(s, floor));
    }

    /// The keys with at least one hold that satisfy `filter` (unordered; visits every
    /// shard).
    pub fn held_keys(&self, filter: impl FnMut(&K) -> bool) -> Vec<K> {
        let mut fx = Effects::new();
        self.with_all(&mut fx, |c, s, _| c.coordinator.held_keys(s, filter)).0
    }

    /// Counts for monitoring: holds, queued requests, open sessions.
    pub fn stats(&self) -> EngineStats {
        let mut fx = Effects::new();
        self.with_all(&mut fx, |c, s, _| EngineStats {
            holds: c.coordinator.holds(s),
            waiting: c.coordinator.waiting(),
            sessions: c.coordinator.sessions_open(),
        })
        .0
    }

    /// The revision of the last event (0 when the engine records none).
    pub fn last_revision(&self) -> u64 {
        self.inner.events.as_ref().map_or(0, |sink| sink.log.lock().last_revision())
    }

    /// The events after revision `after` still in the replay buffer, and a live stream of
    /// those that follow, with nothing lost or repeated between the two (when the engine
    /// records events; `None` otherwise).
    ///
    /// # Errors
    /// [`TooOld`] when events after `after` have already left the replay buffer
    /// ([`EVENT_BUFFER`] events are kept).
    pub fn watch(&self, after: u64) -> Option<Result<Watch<K>, TooOld>> {
        let sink = self.inner.events.as_ref()?;
        let log = sink.log.lock();
        // Subscribing under the log's lock: every event appended later reaches the stream.
        Some(log.since(after).map(|replay| (replay.cloned().collect(), sink.tx.subscribe())))
    }

    /// Starts delivering lost-hold signals for `owner` to `signals`.
    pub fn register_owner(&self, owner: &OwnerId, signals: &Arc<OwnerSignals>) {
        self.inner.owners.lock().insert(owner.clone(), Arc::downgrade(signals));
    }

    /// Stops delivering lost-hold signals for `owner`.
    pub fn unregister_owner(&self, owner: &OwnerId) {
        self.inner.owners.lock().remove(owner);
    }

    /// The id under which a hold's loss is signalled: its shard and its fencing token.
    pub fn hold_id(&self, key: &K, fencing_token: u64) -> HoldId {
        (self.inner.layout.shard_of(key) as u64, fencing_token)
    }

    /// A live stream of events (when the engine records them), and the revision of the
    /// last event before the stream starts.
    pub fn subscribe(&self) -> Option<(broadcast::Receiver<Event<K>>, u64)> {
        let sink = self.inner.events.as_ref()?;
        let log = sink.log.lock();
        Some((sink.tx.subscribe(), log.last_revision()))
    }

    /// Runs `op` on the coordinator with every shard locked, then settles its effects.
    fn full<R>(&self, op: impl FnOnce(&mut Coordinator<K>, &mut dyn Shards<K>, &mut Effects<K>) -> R) -> R {
        let mut fx = Effects::new();
        let (answer, wakes) = self.with_all(&mut fx, |central, shards, fx| op(&mut central.coordinator, shards, fx));
        self.settle(fx, wakes);
        answer
    }

    /// Locks the central state, runs `op` with shards locked as it reaches them, pairs the
    /// wakes it produced with their waiters and stamps its events, all before unlocking.
    fn with_all<R>(
        &self,
        fx: &mut Effects<K>,
        op: impl FnOnce(&mut Central<K>, &mut LockedShards<'_, K>, &mut Effects<K>) -> R,
    ) -> (R, Wakes<K>) {
        let mut central = self.inner.central.lock();
        let mut shards = LockedShards { shards: &self.inner.shards, guards: SmallVec::new() };
        let answer = op(&mut central, &mut shards, fx);
        let wakes = take_waiters(fx, |request| waiters_of(&mut central, &mut shards, request).remove(&request));
        self.publish(fx);
        (answer, wakes)
    }

    /// Stamps and broadcasts events; called with the locks that ordered them still held,
    /// so revisions follow the order of the changes.
    fn publish(&self, fx: &mut Effects<K>) {
        let Some(sink) = &self.inner.events else { return };
        if fx.events.is_empty() {
            return;
        }
        let mut log = sink.log.lock();
        for event in fx.events.drain(..) {
            let _ = sink.tx.send(log.append(event));
        }
    }

    /// Carries out effects once every lock is released: wakes waiters (releasing grants
    /// whose waiter has gone), tells guards about lost holds, and arms the timer.
    fn settle(&self, mut fx: Effects<K>, wakes: Wakes<K>) {
        for (txs, outcome) in wakes {
            if let Some(grant) = deliver(txs, outcome) {
                // The waiters gave up just as it was granted: hand the lock on.
                self.release_grant(&grant);
            }
        }
        if !fx.lost.is_empty() {
            let owners = self.inner.owners.lock();
            for lost in fx.lost.drain(..) {
                if let Some(signals) = owners.get(&lost.owner).and_then(Weak::upgrade) {
                    signals.mark(self.hold_id(&lost.key, lost.fencing_token), lost.reason);
                }
            }
        }
        if let Some(at) = fx.new_deadline {
            self.arm(at);
        }
    }

    fn arm(&self, at: Instant) {
        let timer = &self.inner.timer;
        let nanos = u64::try_from(at.since_epoch().as_nanos()).unwrap_or(u64::MAX - 1);
        if nanos >= timer.armed.load(Ordering::Acquire) {
            return;
        }
        if !timer.running.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(drive_timer(Arc::downgrade(&self.inner), self.inner.timer.clone()));
                }
                // Outside a runtime (a guard dropped on a plain thread): the next operation
                // made inside one starts the timer task.
                Err(_) => timer.running.store(false, Ordering::Release),
            }
        }
        timer.notify.notify_one();
    }

    /// Carries out everything due now and returns the next deadline.
    fn tick(&self) -> Option<Instant> {
        let now = self.now();
        self.full(|c, s, fx| {
            c.tick(s, now, fx);
            c.next_deadline(s)
        })
    }

    /// Withdraws `request`, which waits on `key` when the caller knows it (see
    /// [`Coordinator::cancel_on`]).
    fn cancel(&self, request: RequestId, key: Option<&K>) -> bool {
        let now = self.now();
        let mut fx = Effects::new();
        let (cancelled, wakes) = self.with_all(&mut fx, |central, shards, fx| {
            let waiters = waiters_of(central, shards, request);
            if let Some(txs) = waiters.get_mut(&request) {
                // The leaving waiter closed its receiver; a retry that joined the request
                // may still wait for it, and then only the leaving waiter goes.
                txs.retain(|tx| !tx.is_closed());
                if !txs.is_empty() {
                    return false;
                }
            }
            waiters.remove(&request);
            match key {
                Some(key) => central.coordinator.cancel_on(shards, request, key, now, fx),
                None => central.coordinator.cancel(shards, request, now, fx),
            }
        });
        self.settle(fx, wakes);
        cancelled
    }
}

/// What [`Engine::watch`] gives: the replayed events, then the live stream after them.
pub type Watch<K> = (Vec<Event<K>>, broadcast::Receiver<Event<K>>);

/// Counts of an engine's table, for monitoring ([`Engine::stats`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EngineStats {
    /// Holds, one per key, owner and mode.
    pub holds: usize,
    /// Queued requests.
    pub waiting: usize,
    /// Open sessions.
    pub sessions: usize,
}

/// Sends `outcome` to the waiters of one request. Returns the grant when none of them was
/// left to take it, for the caller to release.
fn deliver<K: Clone>(mut txs: WakeSenders<K>, outcome: CoreResult<Grant<K>>) -> Option<Grant<K>> {
    if txs.len() == 1 {
        return match txs.pop()?.send(Delivery::Outcome(outcome)) {
            Err(Delivery::Outcome(Ok(grant))) => Some(grant),
            _ => None,
        };
    }
    let mut delivered = false;
    for tx in txs {
        let mut copy = outcome.clone();
        if let (true, Ok(grant)) = (delivered, &mut copy) {
            // Waiters after the first to take the grant are retries: it counted once.
            grant.retried = true;
        }
        delivered |= tx.send(Delivery::Outcome(copy)).is_ok();
    }
    if delivered {
        None
    } else {
        outcome.ok()
    }
}

/// The shards of the engine as a coordinator operation sees them: each is locked when the
/// operation first asks for it and stays locked until the operation ends. Operations that
/// reach the coordinator hold the central lock, so they never race each other for shard
/// locks, and single-shard paths never wait for a second lock while holding one: locking
/// shards in the order an operation asks for them cannot deadlock.
struct LockedShards<'a, K> {
    shards: &'a [Padded<Mutex<ShardSlot<K>>>],
    /// The shards locked so far, with their indexes: most operations touch one or two.
    guards: SmallVec<[(usize, MutexGuard<'a, ShardSlot<K>>); 4]>,
}

impl<K> LockedShards<'_, K> {
    fn slot(&mut self, index: usize) -> &mut ShardSlot<K> {
        let at = match self.guards.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.guards.push((index, self.shards[index].0.lock()));
                self.guards.len() - 1
            }
        };
        &mut self.guards[at].1
    }
}

impl<K> Shards<K> for LockedShards<'_, K> {
    fn count(&self) -> usize {
        self.shards.len()
    }

    fn get(&mut self, index: usize) -> &mut Shard<K> {
        &mut self.slot(index).shard
    }
}

/// Pairs each outcome in `fx` with the waiters `take` finds (and takes) for its request.
fn take_waiters<K>(fx: &mut Effects<K>, mut take: impl FnMut(RequestId) -> Option<WakeSenders<K>>) -> Wakes<K> {
    fx.wakes.drain(..).filter_map(|wake| Some((take(wake.request)?, wake.outcome))).collect()
}

/// Where the waiters of `request` are filed: with its shard when it lives in one, else
/// centrally.
fn waiters_of<'m, K>(
    central: &'m mut Central<K>,
    shards: &'m mut LockedShards<'_, K>,
    request: RequestId,
) -> &'m mut Map<RequestId, WakeSenders<K>> {
    match request.home() {
        Some(home) => &mut shards.slot(home).waiters,
        None => &mut central.waiters,
    }
}

/// The timer task: sleeps until the engine's next deadline (or until woken by an earlier
/// one), ticks the table, repeats; ends when the engine is dropped.
async fn drive_timer<K: Hash + Eq + Clone + Send + Sync + 'static>(engine: Weak<Inner<K>>, timer: Arc<Timer>) {
    loop {
        // While the next deadline is being computed, any new deadline must wake us.
        timer.armed.store(u64::MAX, Ordering::Release);
        let (next, sleep_until) = {
            let Some(inner) = engine.upgrade() else { return };
            let engine = Engine { inner };
            let next = engine.tick();
            (next, next.map(|at| engine.to_tokio(at)))
        };
        let nanos = next.map_or(u64::MAX, |at| u64::try_from(at.since_epoch().as_nanos()).unwrap_or(u64::MAX - 1));
        timer.armed.store(nanos, Ordering::Release);
        match sleep_until {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = timer.notify.notified() => {}
                }
            }
            None => timer.notify.notified().await,
        }
    }
}

/// A queued request's wait for its outcome. Dropping it before the outcome withdraws the
/// request, and releases a grant that raced with the drop.
struct WaitFor<'e, K: Hash + Eq + Clone + Send + Sync + 'static> {
    engine: &'e Engine<K>,
    request: RequestId,
    /// For a request living in its shard: its key, which is what it is handed.
    asked: Option<K>,
    rx: oneshot::Receiver<Delivery<K>>,
    done: bool,
}

// Nothing of a wait is pinned in place: the key it keeps is only moved into its grant.
impl<K: Hash + Eq + Clone + Send + Sync + 'static> Unpin for WaitFor<'_, K> {}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> WaitFor<'_, K> {
    /// The outcome `delivery` brings this request.
    fn outcome(&mut self, delivery: Delivery<K>) -> CoreResult<Admitted<K>> {
        match delivery {
            Delivery::Outcome(outcome) => outcome.map(Admitted::Granted),
            Delivery::Handed(handed) => {
                let key = self.asked.take().expect("BUG: a key handed to a request that asked for none");
                Ok(Admitted::Handed(key, handed))
            }
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> std::future::Future for WaitFor<'_, K> {
    type Output = CoreResult<Admitted<K>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(delivery) => {
                self.done = true;
                Poll::Ready(match delivery {
                    Ok(delivery) => self.outcome(delivery),
                    Err(_) => Err(tumbler_core::Error::Internal("the lock engine dropped a waiting request".into())),
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Drop for WaitFor<'_, K> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Close first: from here on a grant either is already in the channel (we take it
        // and release it) or fails to send (the engine releases it).
        self.rx.close();
        match self.rx.try_recv() {
            Ok(delivery) => match self.outcome(delivery) {
                Ok(Admitted::Granted(grant)) => self.engine.release_grant(&grant),
                Ok(Admitted::Handed(key, handed)) => self.engine.release_handed(&key, handed),
                Err(_) => {}
            },
            Err(_) => {
                self.engine.cancel(self.request, self.asked.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Context;

    use futures::task::noop_waker;
    use smallvec::smallvec;
    use tokio::sync::oneshot;
    use tumbler_core::{Acquire, Config, Mode, OwnerId, Wait};

    use super::Engine;

    fn exclusive(key: &str, owner: &OwnerId, wait: Wait) -> Acquire<String> {
        Acquire {
            keys: smallvec![key.to_owned()],
            owner: owner.clone(),
            mode: Mode::Exclusive,
            wait,
            ttl: None,
            session: None,
            request_id: None,
            lock_delay: None,
        }
    }

    /// The waiter a key is handed to may have gone between its shard's release and its
    /// delivery: the key must then pass on, not stay held by nobody's guard.
    #[tokio::test]
    async fn a_key_handed_to_a_waiter_that_has_gone_passes_on() {
        let engine = Engine::<String>::new(Config { shards: 4, ..Config::default() });
        let (a, b, c) = (OwnerId::new("a").unwrap(), OwnerId::new("b").unwrap(), OwnerId::new("c").unwrap());
        let first = engine.acquire(exclusive("hot", &a, Wait::NoWait)).await.unwrap();
        let waker = noop_waker();
        let mut b_waits = Box::pin(engine.acquire(exclusive("hot", &b, Wait::Forever)));
        assert!(b_waits.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());

        // What a waiter that gives up just as it is granted leaves behind: a sender filed
        // with the shard whose receiver is closed.
        let shard = engine.layout().shard_of(&"hot".to_owned());
        {
            let mut slot = engine.inner.shards[shard].0.lock();
            let txs = slot.waiters.values_mut().next().expect("b's wait lives in the key's shard");
            let (closed, _) = oneshot::channel();
            txs[0] = closed;
        }
        assert_eq!(engine.release(&"hot".to_owned(), &a, None, Some(first.fencing_token())), Ok(0));

        let status = engine.status(&"hot".to_owned());
        assert!(status.as_ref().is_none_or(|s| s.holders.is_empty()), "b's hold was released: {status:?}");
        let c_gets = engine.acquire(exclusive("hot", &c, Wait::NoWait)).await.expect("the key is free");
        assert!(c_gets.fencing_token() > first.fencing_token() + 1, "b was granted a token before it passed on");
        drop(b_waits);
        assert!(matches!(engine.status(&"hot".to_owned()), Some(s) if s.holders.len() == 1 && s.waiters == 0));
    }

    /// A waiter dropped after its key was handed to it but before it looked: the hand-off
    /// sits in its channel, and the drop must release that hold so the key passes on.
    #[tokio::test]
    async fn a_waiter_dropped_with_its_key_handed_but_unseen_passes_it_on() {
        let engine = Engine::<String>::new(Config { shards: 4, ..Config::default() });
        let (a, b, c) = (OwnerId::new("a").unwrap(), OwnerId::new("b").unwrap(), OwnerId::new("c").unwrap());
        let first = engine.acquire(exclusive("hot", &a, Wait::NoWait)).await.unwrap();
        let waker = noop_waker();
        let mut b_waits = Box::pin(engine.acquire(exclusive("hot", &b, Wait::Forever)));
        assert!(b_waits.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        let mut c_waits = Box::pin(engine.acquire(exclusive("hot", &c, Wait::Forever)));
        assert!(c_waits.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());

        assert_eq!(engine.release(&"hot".to_owned(), &a, None, Some(first.fencing_token())), Ok(0));
        let b_holds = engine.status(&"hot".to_owned()).expect("the key is held");
        assert_eq!(b_holds.holders.first().map(|h| &h.holder.owner), Some(&b), "the key went to b: {b_holds:?}");
        drop(b_waits);

        let c_grant = match c_waits.as_mut().poll(&mut Context::from_waker(&waker)) {
            std::task::Poll::Ready(grant) => grant.expect("c is granted"),
            std::task::Poll::Pending => panic!("b's hold was not released when b went"),
        };
        assert_eq!(c_grant.owner, c);
        assert_eq!(c_grant.fencing_token(), first.fencing_token() + 2, "b's hold came and went in between");
    }
}
