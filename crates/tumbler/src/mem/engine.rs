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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;
use tokio::sync::{broadcast, oneshot, Notify};
use tumbler_core::{
    Acquire, Acquired, Config, Coordinator, Effects, Event, EventLog, Grant, Granted, HandOff, Instant, KeyStatus,
    Layout, Mode, OwnerId, Released, RequestId, RestoredHold, SessionId, SessionInfo, Shard, Shards, TooOld, Wake,
};

use super::wait::{deliver, Delivery, HandCells, HomeWait, HomeWaiters, Source, WaitFor, WakeSenders, Wakes};
use crate::lost::{HoldId, OwnerSignals};

type CoreResult<T> = tumbler_core::Result<T>;
/// The engine's maps are looked up on every hand-off: foldhash, as in the core's tables,
/// instead of std's slower SipHash.
pub(super) type Map<K, V> = HashMap<K, V, foldhash::quality::RandomState>;
/// What a request was admitted to ([`Engine::start`], [`WaitFor`]): its grant, or the key
/// handed to it.
#[derive(Debug)]
pub(super) enum Admitted<K> {
    /// The grant, as the core made it.
    Granted(Grant<K>),
    /// A release handed the request's one key to it, as the request's owner, in its mode:
    /// its grant is [`HandOff::grant`] of those.
    Handed(K, HandOff),
}

/// What [`Engine::start`] answers: the admission, or the wait for it.
pub(super) enum Started<'e, K: Hash + Eq + Clone + Send + Sync + 'static> {
    /// Admitted at once.
    Admitted(Admitted<K>),
    /// Queued: the wait for the outcome.
    Waiting(WaitFor<'e, K>),
}

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

/// One shard and the waiters of the requests living in it ([`RequestId::home`]), under
/// one lock: the shard grants those requests on its own, and tells their waiters without
/// the central lock (see [`super::wait`]).
struct ShardSlot<K> {
    shard: Shard<K>,
    waiters: HomeWaiters<K>,
    /// The effects of operations made under this shard's lock alone ([`Engine::on_shard`]),
    /// kept here so that one without effects (a hand-off, a plain grant) builds and drops
    /// none.
    fx: Effects<K>,
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
    /// Each shard's [`HandCells`], beside its lock.
    cells: Box<[Padded<HandCells>]>,
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
            .map(|_| {
                Padded(Mutex::new(ShardSlot {
                    shard: coordinator.new_shard(),
                    waiters: HomeWaiters::default(),
                    fx: Effects::new(),
                }))
            })
            .collect();
        Engine {
            inner: Arc::new(Inner {
                layout: coordinator.layout().clone(),
                cells: (0..coordinator.layout().shards()).map(|_| Padded(HandCells::default())).collect(),
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
        let admitted = match self.start(req)? {
            Started::Admitted(admitted) => admitted,
            Started::Waiting(wait) => wait.await?,
        };
        Ok(match admitted {
            Admitted::Granted(grant) => grant,
            Admitted::Handed(key, handed) => handed.grant(key, owner, mode),
        })
    }

    /// The part of [`Engine::acquire`] that does not wait: the request is admitted at once,
    /// fails, or is queued and answered as the wait for its outcome, which withdraws it
    /// when dropped. For a caller that polls the wait inside its own future (the in-process
    /// locker), so that a hand-off completes through one poll, not a stack of them, and
    /// makes its guard from a handed key without a whole [`Grant`].
    ///
    /// # Errors
    /// The core's errors.
    pub(super) fn start(&self, req: Acquire<K>) -> CoreResult<Started<'_, K>> {
        let now = self.now();
        if req.keys.len() == 1 && req.session.is_none() {
            let shard = self.inner.layout.shard_of(&req.keys[0]);
            let fast = self.on_shard(shard, |shard, _, fx| shard.try_acquire(&req, now, fx));
            if let Ok(answer) = fast {
                return answer.map(|a| match a {
                    Acquired::Granted(grant) => Started::Admitted(Admitted::Granted(grant)),
                    Acquired::Waiting { .. } => unreachable!("BUG: a shard never queues"),
                });
            }
        }
        let mut fx = Effects::new();
        // A wait living in its shard (the core decides which: `RequestId::home`) is told only
        // its fencing token when the key is handed to it: its key is the one it asked for
        // (repeated keys are folded, so any of them).
        let asked = req.keys.first().cloned();
        let ((answer, from), wakes) = self.with_all(&mut fx, |central, shards, fx| {
            let answer = central.coordinator.acquire(shards, req, now, fx);
            let from = match &answer {
                Ok(Acquired::Waiting { request, .. }) => Some(match (request.home(), asked) {
                    (Some(shard), Some(key)) => {
                        let slot = shards.slot(shard);
                        let cell = self.inner.cells[shard].0.reserve();
                        slot.waiters.file(*request, cell);
                        Source::Home { shard, cell, key }
                    }
                    _ => {
                        let (tx, rx) = oneshot::channel();
                        // A retry joining an earlier wait comes in addition to its waiter.
                        central.waiters.entry(*request).or_default().push(tx);
                        Source::Central(rx)
                    }
                }),
                _ => None,
            };
            (answer, from)
        });
        self.settle(fx, wakes);
        Ok(match answer? {
            Acquired::Granted(grant) => Started::Admitted(Admitted::Granted(grant)),
            Acquired::Waiting { request, .. } => Started::Waiting(WaitFor { engine: self, request, from }),
        })
    }

    /// Releases one level of a hold; see [`tumbler_core::Coordinator::release`].
    ///
    /// # Errors
    /// The core's errors.
    pub fn release(&self, key: &K, owner: &OwnerId, mode: Option<Mode>, token: Option<u64>) -> CoreResult<u32> {
        let shard_index = self.inner.layout.shard_of(key);
        let (fast, waker) = self.on_shard(shard_index, |shard, waiters, fx| {
            let answer = shard.try_release(key, owner, mode, token, || self.now(), fx);
            debug_assert!(fx.wakes.is_empty(), "BUG: a shard's release wakes only whom it hands the key to");
            // The shard may have handed the key to a request living in it, whose waiter is
            // filed with it.
            let waker = match &answer {
                Ok(Ok(Released { handed: Some(handed), .. })) => {
                    waiters.hand(&self.inner.cells[shard_index].0, *handed)
                }
                _ => None,
            };
            (answer, waker)
        });
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Ok(answer) = fast {
            return answer.map(|released| released.left);
        }
        let now = self.now();
        self.full(|c, s, fx| c.release(s, key, owner, mode, token, now, fx))
    }

    /// Releases the hold `key` was handed to a waiter with, whose waiter has gone (if that
    /// hold has not ended since): the key passes on.
    pub(super) fn release_handed(&self, key: &K, handed: HandOff) {
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

    /// Runs `op` on shard `index` alone, under its lock; stamps the events it recorded and,
    /// once the shard is unlocked, carries out its other effects (an operation that escalates
    /// to the coordinator has none).
    fn on_shard<R>(
        &self,
        index: usize,
        op: impl FnOnce(&mut Shard<K>, &mut HomeWaiters<K>, &mut Effects<K>) -> R,
    ) -> R {
        let mut slot = self.inner.shards[index].0.lock();
        let ShardSlot { shard, waiters, fx } = &mut *slot;
        let answer = op(shard, waiters, fx);
        self.publish(fx);
        if fx.is_empty() {
            return answer;
        }
        let fx = std::mem::take(fx);
        drop(slot);
        self.settle(fx, Wakes::default());
        answer
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
        let wakes = take_waiters(fx, &mut central, &mut shards);
        self.publish(fx);
        (answer, wakes)
    }

    /// Stamps and broadcasts events; called with the locks that ordered them still held,
    /// so revisions follow the order of the changes.
    #[inline]
    fn publish(&self, fx: &mut Effects<K>) {
        if !fx.events.is_empty() {
            self.publish_events(fx);
        }
    }

    fn publish_events(&self, fx: &mut Effects<K>) {
        let Some(sink) = &self.inner.events else {
            fx.events.clear();
            return;
        };
        let mut log = sink.log.lock();
        for event in fx.events.drain(..) {
            let _ = sink.tx.send(log.append(event));
        }
    }

    /// Carries out effects once every lock is released: wakes waiters (releasing grants
    /// whose waiter has gone), tells guards about lost holds, and arms the timer.
    fn settle(&self, mut fx: Effects<K>, wakes: Wakes<K>) {
        for (txs, outcome) in wakes.sends {
            if let Some(grant) = deliver(txs, outcome) {
                // The waiters gave up just as it was granted: hand the lock on.
                self.release_grant(&grant);
            }
        }
        for waker in wakes.wakers {
            waker.wake();
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
    /// [`Coordinator::cancel_on`]). When it lives in its shard and was decided already,
    /// nothing is withdrawn and its outcome is answered instead, for the caller to release.
    pub(super) fn cancel(&self, request: RequestId, key: Option<&K>, cell: Option<usize>) -> Option<Delivery<K>> {
        let now = self.now();
        let mut fx = Effects::new();
        let (decided, wakes) = self.with_all(&mut fx, |central, shards, fx| {
            match request.home() {
                Some(home) => match shards.slot(home).waiters.take(&self.inner.cells[home].0, request, cell) {
                    Some(HomeWait::Waiting { .. }) => {}
                    Some(HomeWait::Decided(delivery)) => return Some(delivery),
                    None => return None,
                },
                None => {
                    if let Some(txs) = central.waiters.get_mut(&request) {
                        // The leaving waiter closed its receiver; a retry that joined the
                        // request may still wait for it, and then only the leaving waiter goes.
                        txs.retain(|tx| !tx.is_closed());
                        if !txs.is_empty() {
                            return None;
                        }
                    }
                    central.waiters.remove(&request);
                }
            }
            match key {
                Some(key) => central.coordinator.cancel_on(shards, request, key, now, fx),
                None => central.coordinator.cancel(shards, request, now, fx),
            };
            None
        });
        self.settle(fx, wakes);
        decided
    }

    /// The hand-off written into `cell` of shard `shard` for `request`, if there is one,
    /// freeing the cell: how a plain hand-off reaches its waiter without the shard's lock.
    #[inline]
    pub(super) fn handed_through(&self, shard: usize, cell: usize, request: RequestId) -> Option<HandOff> {
        self.inner.cells[shard].0.handed(Some(cell), request)
    }

    /// The outcome of request `request`, filed with shard `shard`, when it has one; else
    /// keeps `cx`'s waker to be woken with it.
    pub(super) fn poll_home(
        &self,
        shard: usize,
        cell: Option<usize>,
        request: RequestId,
        cx: &Context<'_>,
    ) -> Poll<Delivery<K>> {
        let cells = &self.inner.cells[shard].0;
        let mut slot = self.inner.shards[shard].0.lock();
        if slot.waiters.poll(request, cell, cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(match slot.waiters.take(cells, request, cell) {
            Some(HomeWait::Decided(delivery)) => delivery,
            _ => Delivery::Outcome(Err(tumbler_core::Error::Internal("the lock engine lost a waiting request".into()))),
        })
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

/// Takes the outcomes in `fx` to their waiters: records those of requests living in their
/// shard there, and pairs the others with their waiters' channels.
fn take_waiters<K>(fx: &mut Effects<K>, central: &mut Central<K>, shards: &mut LockedShards<'_, K>) -> Wakes<K> {
    let mut wakes = Wakes::default();
    for wake in fx.wakes.drain(..) {
        match wake.request.home() {
            Some(home) => {
                if let Some(waker) = shards.slot(home).waiters.decide(wake.request, Delivery::Outcome(wake.outcome)) {
                    wakes.wakers.push(waker);
                }
            }
            None => {
                if let Some(txs) = central.waiters.remove(&wake.request) {
                    wakes.sends.push((txs, wake.outcome));
                }
            }
        }
    }
    wakes
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll};

    use futures::task::noop_waker;
    use smallvec::smallvec;
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

    /// How many waiters are filed with the shards, and how many hand-off cells are in use:
    /// each waiter leaves with its outcome or its drop, and frees its cell.
    fn filed(engine: &Engine<String>) -> (usize, usize) {
        let waiters = engine.inner.shards.iter().map(|slot| slot.0.lock().waiters.len()).sum();
        (waiters, engine.inner.cells.iter().map(|cells| cells.0.used()).sum())
    }

    /// A waiter filed with its shard leaves nothing behind, whether it takes its key, gives
    /// up before it is handed one, or goes with the key handed to it but unseen.
    #[tokio::test]
    async fn waiters_filed_with_their_shard_leave_nothing_behind() {
        let engine = Engine::<String>::new(Config { shards: 4, ..Config::default() });
        let (a, b, c) = (OwnerId::new("a").unwrap(), OwnerId::new("b").unwrap(), OwnerId::new("c").unwrap());
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first = engine.acquire(exclusive("hot", &a, Wait::NoWait)).await.unwrap();

        let mut b_waits = Box::pin(engine.acquire(exclusive("hot", &b, Wait::Forever)));
        assert!(b_waits.as_mut().poll(&mut cx).is_pending());
        assert_eq!(filed(&engine), (1, 1), "b's waiter is filed with the key's shard, with a cell");
        drop(b_waits);
        assert_eq!(filed(&engine), (0, 0), "b gave up before the key came");

        let mut c_waits = Box::pin(engine.acquire(exclusive("hot", &c, Wait::Forever)));
        assert!(c_waits.as_mut().poll(&mut cx).is_pending());
        assert_eq!(engine.release(&"hot".to_owned(), &a, None, Some(first.fencing_token())), Ok(0));
        assert_eq!(filed(&engine), (0, 1), "c's hand-off waits in its cell");
        let Poll::Ready(Ok(c_grant)) = c_waits.as_mut().poll(&mut cx) else { panic!("c is handed the key") };
        assert_eq!((c_grant.owner.as_str(), c_grant.fencing_token()), ("c", first.fencing_token() + 1));
        assert_eq!(filed(&engine), (0, 0), "c took its key");
    }

    /// A hand-off that carries an expiry, and any to more waiters of one shard than it has
    /// cells, are told the locked way, in the waiter's entry; every waiter still gets its
    /// key and leaves nothing behind.
    #[tokio::test]
    async fn hand_offs_beyond_the_cells_are_told_in_the_entry() {
        let engine = Engine::<String>::new(Config { shards: 1, ..Config::default() });
        let (a, b) = (OwnerId::new("a").unwrap(), OwnerId::new("b").unwrap());
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let mut held = Vec::new();
        for key in &keys {
            held.push(engine.acquire(exclusive(key, &a, Wait::NoWait)).await.unwrap());
        }
        let mut waits: Vec<_> = keys
            .iter()
            .map(|key| {
                let mut req = exclusive(key, &b, Wait::Forever);
                req.ttl = (key == "k0").then(|| std::time::Duration::from_secs(60));
                Box::pin(engine.acquire(req))
            })
            .collect();
        for wait in &mut waits {
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(filed(&engine), (20, 16), "every cell is in use, four waiters go without");

        for (key, grant) in keys.iter().zip(&held) {
            assert_eq!(engine.release(key, &a, None, Some(grant.fencing_token())), Ok(0));
        }
        let (entries, cells) = filed(&engine);
        assert_eq!(entries, 5, "the expiring hand-off and those without a cell are in the entries");
        assert_eq!(cells, 16, "the other hand-offs wait in their cells, and k0's cell still waits");
        for (key, wait) in keys.iter().zip(&mut waits) {
            let Poll::Ready(Ok(grant)) = wait.as_mut().poll(&mut cx) else { panic!("{key} is handed to b") };
            assert_eq!((grant.owner.as_str(), &grant.holds[0].key), ("b", key));
            assert_eq!(grant.holds[0].expires_at.is_some(), key == "k0", "only k0 asked for a TTL");
        }
        assert_eq!(filed(&engine), (0, 0));
    }

    /// A waiter dropped after its key was handed to it but before it looked: the hand-off
    /// sits in its cell, and the drop must release that hold so the key passes on.
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
            Poll::Ready(grant) => grant.expect("c is granted"),
            Poll::Pending => panic!("b's hold was not released when b went"),
        };
        assert_eq!(c_grant.owner, c);
        assert_eq!(c_grant.fencing_token(), first.fencing_token() + 2, "b's hold came and went in between");
        assert_eq!(filed(&engine), (0, 0), "b's hand-off went with b");
    }
}
