//! The in-process backend beside two baselines, measured in one run
//! (`cargo bench -p tumbler --bench mem`; results and how to read them in
//! `docs/BENCHMARKS.md`).
//!
//! - `uncontended/{1,2}-thread/*`: one acquire + release of a random key out of a million,
//!   per thread. Each thread owns the keys of one parity, so no two threads ever want the
//!   same key; what they may share is a shard (tumbler) or a map segment (DashMap). The
//!   figure is the time per pair *as one thread sees it* (wall time of the slowest thread
//!   divided by the pairs each thread did), so perfect scaling shows the 1-thread figure.
//!   Baselines: a `DashMap<u64, Arc<tokio::sync::Mutex<()>>>` keyed lock that keeps its
//!   entries (the usual keyed mutex), and a plain `tokio::sync::Mutex<()>` per thread (the
//!   floor: an async mutex with no key lookup at all; one mutex shared by two threads would
//!   measure contention, not the uncontended path).
//! - `handoff/*`: two tasks on a 2-worker multi-thread runtime pass one lock back and
//!   forth; each sample is the time from the holder's last instruction before releasing to
//!   the waiter's first instruction after its acquire returns. Criterion reports the mean;
//!   a `HANDOFF` line on stdout gives p50/p99 from a separate pass. Beside tumbler and
//!   tokio's `Mutex` runs `floor_table`: the least a lock table that records holders can
//!   do (see [`FloorTable`]), to show how much of the gap to tokio any such table pays.
//!
//! Every uncontended future (tumbler's and the baselines') is polled once with
//! `now_or_never`: an uncontended acquire completes on its first poll, so no executor or
//! waker is involved on either side, and the comparison is of the locks alone.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use dashmap::DashMap;
use futures::task::AtomicWaker;
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tumbler::mem::{MemGuard, MemLocker, MemLocks};
use tumbler::{AcquireOptions, Locker, LockerExt};

/// The key space of the uncontended benchmarks.
const KEYS: u64 = 1 << 20;
/// Length of each thread's pre-generated key sequence (a power of two, walked cyclically).
const SEQUENCE: usize = 1 << 20;
/// Hand-offs in the pass that the percentiles are computed from, split over rounds that
/// alternate between the contenders so that drift in the machine hits both alike.
const PERCENTILE_HANDOFFS: u64 = 100_000;
const PERCENTILE_ROUNDS: u64 = 4;

// ---------------------------------------------------------------------------------------
// Uncontended acquire + release
// ---------------------------------------------------------------------------------------

/// One thread's way of taking and releasing the lock of a key, once.
trait Pair: Send + Sync {
    fn pair(&self, key: u64);
}

struct TumblerTry(MemLocker<u64>);

impl Pair for TumblerTry {
    fn pair(&self, key: u64) {
        let guard = self
            .0
            .acquire(key, AcquireOptions::exclusive())
            .now_or_never()
            .expect("uncontended acquire completes on its first poll")
            .expect("uncontended try succeeds");
        drop(guard);
    }
}

struct TumblerLock(MemLocker<u64>);

impl Pair for TumblerLock {
    fn pair(&self, key: u64) {
        let guard = self
            .0
            .lock(key)
            .now_or_never()
            .expect("uncontended lock completes on its first poll")
            .expect("uncontended lock succeeds");
        drop(guard);
    }
}

type KeyedMutexes = Arc<DashMap<u64, Arc<Mutex<()>>>>;

/// The usual keyed mutex: get or insert the key's mutex, lock it, unlock; entries stay.
struct DashTry(KeyedMutexes);

impl Pair for DashTry {
    fn pair(&self, key: u64) {
        let mutex = self.0.entry(key).or_default().clone();
        let guard = mutex.try_lock().expect("uncontended try_lock succeeds");
        drop(guard);
    }
}

struct DashLock(KeyedMutexes);

impl Pair for DashLock {
    fn pair(&self, key: u64) {
        let mutex = self.0.entry(key).or_default().clone();
        let guard = mutex.lock().now_or_never().expect("uncontended lock completes on its first poll");
        drop(guard);
    }
}

/// A thread's own mutex, on its own cache lines so two threads never share one.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Mutex<()>);

struct TokioTry(Arc<Padded>);

impl Pair for TokioTry {
    fn pair(&self, _key: u64) {
        let guard = self.0 .0.try_lock().expect("uncontended try_lock succeeds");
        drop(guard);
    }
}

struct TokioLock(Arc<Padded>);

impl Pair for TokioLock {
    fn pair(&self, _key: u64) {
        let guard = self.0 .0.lock().now_or_never().expect("uncontended lock completes on its first poll");
        drop(guard);
    }
}

/// Random keys for thread `thread` of `threads`: uniform over the key space, restricted to
/// the residue class of the thread so that threads never meet on a key.
fn key_sequence(thread: u64, threads: u64) -> Arc<[u64]> {
    let mut rng = StdRng::seed_from_u64(0x7u64 << 32 | threads << 8 | thread);
    (0..SEQUENCE)
        .map(|_| {
            let r = rng.gen_range(0..KEYS);
            r - r % threads + thread
        })
        .collect()
}

/// Runs `iters` pairs on the keys from `start` on, wrapping around the sequence.
fn run_pairs(lock: &impl Pair, keys: &[u64], start: usize, iters: u64) {
    let mask = keys.len() - 1;
    for i in 0..iters as usize {
        lock.pair(keys[(start + i) & mask]);
    }
}

/// Where each benchmark continues in its key sequence, so that successive samples walk
/// the whole sequence instead of replaying its (cache-warm) start.
struct Cursor(AtomicUsize);

impl Cursor {
    fn take(&self, iters: u64) -> usize {
        self.0.fetch_add(iters as usize, Ordering::Relaxed)
    }
}

/// Benchmarks `make(thread)` on `threads` OS threads started together; the time returned
/// is that of the slowest thread (thread start-up excluded).
fn bench_threads<P: Pair + 'static>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    sequences: &[Arc<[u64]>],
    make: impl Fn(usize) -> P,
) {
    let threads = sequences.len();
    let locks: Vec<P> = (0..threads).map(&make).collect();
    let cursor = Cursor(AtomicUsize::new(0));
    let mut g = c.benchmark_group(group);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = cursor.take(iters);
            if threads == 1 {
                let t = Instant::now();
                run_pairs(&locks[0], &sequences[0], start, iters);
                return t.elapsed();
            }
            let barrier = Barrier::new(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = locks
                    .iter()
                    .zip(sequences)
                    .map(|(lock, keys)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            barrier.wait();
                            let t = Instant::now();
                            run_pairs(lock, keys, start, iters);
                            t.elapsed()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("bench thread panicked")).max().unwrap_or_default()
            })
        });
    });
    g.finish();
}

fn uncontended(c: &mut Criterion) {
    // Every key already has its mutex, as in a keyed lock that has run for a while (and as
    // the warm-up would leave it anyway).
    let dash: KeyedMutexes = Arc::new(DashMap::new());
    for key in 0..KEYS {
        dash.insert(key, Arc::default());
    }
    for threads in [1u64, 2] {
        let group = format!("uncontended/{threads}-thread");
        let sequences: Vec<Arc<[u64]>> = (0..threads).map(|t| key_sequence(t, threads)).collect();
        let locks = MemLocks::<u64>::new();
        bench_threads(c, &group, "tumbler_try", &sequences, |_| TumblerTry(locks.owner()));
        bench_threads(c, &group, "tumbler_lock", &sequences, |_| TumblerLock(locks.owner()));
        bench_threads(c, &group, "dashmap_try", &sequences, |_| DashTry(dash.clone()));
        bench_threads(c, &group, "dashmap_lock", &sequences, |_| DashLock(dash.clone()));
        bench_threads(c, &group, "tokio_mutex_try", &sequences, |_| TokioTry(Arc::default()));
        bench_threads(c, &group, "tokio_mutex_lock", &sequences, |_| TokioLock(Arc::default()));
    }
}

// ---------------------------------------------------------------------------------------
// Contended hand-off
// ---------------------------------------------------------------------------------------

/// One task's handle on the one lock both tasks pass back and forth.
trait Side: Send + Sync + 'static {
    type Guard: Send + 'static;
    /// Waits for the lock as long as it takes.
    fn lock(&self) -> impl Future<Output = Self::Guard> + Send + '_;
}

const HANDOFF_KEY: u64 = 42;

/// Tumbler: each task is its own owner of one table.
struct TumblerSide(MemLocker<u64>);

impl Side for TumblerSide {
    type Guard = MemGuard<u64>;

    async fn lock(&self) -> MemGuard<u64> {
        self.0.lock(HANDOFF_KEY).await.expect("a wait without a bound succeeds")
    }
}

/// tokio: both tasks share one mutex.
struct TokioSide(Arc<Mutex<()>>);

impl Side for TokioSide {
    type Guard = OwnedMutexGuard<()>;

    fn lock(&self) -> impl Future<Output = OwnedMutexGuard<()>> + Send + '_ {
        self.0.clone().lock_owned()
    }
}

/// The floor of a lock table, for the hand-off only: one mutex over a map from keys to
/// their holder, fencing token and FIFO of waiters, and an index of each owner's keys. A
/// release pops the first waiter, gives it the key with the next token, writes the token
/// into the waiter's slot and wakes it. Nothing else: no modes, re-entry, TTLs, sessions,
/// deadlock detection, lock-delays or events, and nothing to cancel a wait. It is not a
/// usable lock; it shows what any table that records holders pays beyond tokio's `Mutex`.
#[derive(Default)]
struct FloorTable {
    state: parking_lot::Mutex<FloorState>,
}

type FloorMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

#[derive(Default)]
struct FloorState {
    keys: FloorMap<u64, FloorKey>,
    owners: FloorMap<u64, smallvec::SmallVec<[u64; 2]>>,
    last_token: u64,
}

#[derive(Default)]
struct FloorKey {
    holder: Option<u64>,
    waiters: VecDeque<(u64, Arc<FloorSlot>)>,
}

/// Where a waiter finds its token (0 until granted) and how it is woken.
#[derive(Default)]
struct FloorSlot {
    token: AtomicU64,
    waker: AtomicWaker,
}

impl FloorState {
    fn grant(&mut self, key: u64, owner: u64) -> u64 {
        self.last_token += 1;
        self.keys.entry(key).or_default().holder = Some(owner);
        self.owners.entry(owner).or_default().push(key);
        self.last_token
    }
}

impl FloorTable {
    fn release(&self, key: u64, owner: u64) {
        let woken = {
            let mut state = self.state.lock();
            if let Some(keys) = state.owners.get_mut(&owner) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    state.owners.remove(&owner);
                }
            }
            let entry = state.keys.get_mut(&key).expect("the key is held");
            assert_eq!(entry.holder.take(), Some(owner), "released by its holder");
            match entry.waiters.pop_front() {
                Some((next, slot)) => {
                    let token = state.grant(key, next);
                    slot.token.store(token, Ordering::Release);
                    Some(slot)
                }
                None => {
                    state.keys.remove(&key);
                    None
                }
            }
        };
        if let Some(slot) = woken {
            slot.waker.wake();
        }
    }
}

/// A hold of [`FloorTable`]'s key, released on drop.
struct FloorGuard {
    table: Arc<FloorTable>,
    owner: u64,
}

impl Drop for FloorGuard {
    fn drop(&mut self) {
        self.table.release(HANDOFF_KEY, self.owner);
    }
}

struct FloorAcquire {
    table: Arc<FloorTable>,
    owner: u64,
    slot: Option<Arc<FloorSlot>>,
}

impl Future for FloorAcquire {
    type Output = FloorGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FloorGuard> {
        let guard = |this: &Self| FloorGuard { table: this.table.clone(), owner: this.owner };
        if let Some(slot) = &self.slot {
            slot.waker.register(cx.waker());
            return match slot.token.load(Ordering::Acquire) {
                0 => Poll::Pending,
                _ => Poll::Ready(guard(&self)),
            };
        }
        let slot = {
            let mut state = self.table.state.lock();
            if state.keys.get(&HANDOFF_KEY).is_none_or(|k| k.holder.is_none()) {
                state.grant(HANDOFF_KEY, self.owner);
                None
            } else {
                let slot = Arc::new(FloorSlot::default());
                slot.waker.register(cx.waker());
                let waiters = &mut state.keys.get_mut(&HANDOFF_KEY).expect("held").waiters;
                waiters.push_back((self.owner, slot.clone()));
                Some(slot)
            }
        };
        match slot {
            None => Poll::Ready(guard(&self)),
            Some(slot) => {
                self.slot = Some(slot);
                Poll::Pending
            }
        }
    }
}

/// The floor table: each task is its own owner.
struct FloorSide(Arc<FloorTable>, u64);

impl Side for FloorSide {
    type Guard = FloorGuard;

    fn lock(&self) -> impl Future<Output = FloorGuard> + Send + '_ {
        FloorAcquire { table: self.0.clone(), owner: self.1, slot: None }
    }
}

/// What the two tasks share: the release instant of the current hand-off, and for each
/// task whether it is queued on the lock.
struct Court {
    base: Instant,
    released_at: AtomicU64,
    queued: [AtomicBool; 2],
}

impl Court {
    fn nanos(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// One task of the ping-pong. Hand-off `k` goes from task `k % 2` to the other one: the
/// giver waits until the receiver is queued on the lock (its acquire has returned
/// `Pending`, so it is parked in the lock's queue, not on its way there), stamps the time
/// and releases, then yields; the receiver stamps the time as soon as its acquire returns.
/// Both locks run exactly this code, so they are measured on the same path: queued waiter,
/// release, wake, task scheduled (tokio puts a task woken from a worker on that worker),
/// acquire returns.
async fn play<S: Side>(side: S, me: usize, mut held: Option<S::Guard>, court: Arc<Court>, n: u64) -> Vec<u64> {
    let mut samples = Vec::with_capacity(n as usize / 2 + 1);
    let peer = 1 - me;
    for k in 0..n {
        if k % 2 == me as u64 {
            let guard = held.take().expect("BUG: the giver holds the lock");
            // Consume the peer's flag, so that it cannot be mistaken for the next round's.
            while !court.queued[peer].swap(false, Ordering::AcqRel) {
                tokio::task::yield_now().await;
            }
            court.released_at.store(court.nanos(), Ordering::Release);
            drop(guard);
            // Step aside before asking for the lock again: the receiver, woken on this
            // worker, runs now, so the giver's next request is not part of the hand-off.
            tokio::task::yield_now().await;
        } else {
            let mut acquire = std::pin::pin!(side.lock());
            let mut signalled = false;
            let guard = std::future::poll_fn(|cx| {
                let poll = acquire.as_mut().poll(cx);
                if poll.is_pending() && !signalled {
                    signalled = true;
                    court.queued[me].store(true, Ordering::Release);
                }
                poll
            })
            .await;
            let granted_at = court.nanos();
            samples.push(granted_at - court.released_at.load(Ordering::Acquire));
            held = Some(guard);
        }
    }
    samples
}

/// Runs `n` hand-offs between `a` (which takes the lock first) and `b`; returns the
/// latency of each in nanoseconds.
async fn handoff<S: Side>(a: S, b: S, n: u64) -> Vec<u64> {
    let court = Arc::new(Court {
        base: Instant::now(),
        released_at: AtomicU64::new(0),
        queued: [AtomicBool::new(false), AtomicBool::new(false)],
    });
    let first = a.lock().await;
    let ta = tokio::spawn(play(a, 0, Some(first), court.clone(), n));
    let tb = tokio::spawn(play(b, 1, None, court, n));
    let mut samples = ta.await.expect("player a panicked");
    samples.extend(tb.await.expect("player b panicked"));
    samples
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn bench_handoff<S: Side>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, sides: impl Fn() -> (S, S)) {
    let mut g = c.benchmark_group("handoff");
    g.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (a, b) = sides();
            async move { Duration::from_nanos(handoff(a, b, iters).await.iter().sum()) }
        });
    });
    g.finish();
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<u64>) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    println!(
        "HANDOFF {name}: n={} p50={}ns p90={}ns p99={}ns mean={mean:.0}ns",
        samples.len(),
        percentile(&samples, 50),
        percentile(&samples, 90),
        percentile(&samples, 99),
    );
}

fn contended(c: &mut Criterion) {
    let rt = runtime();
    let locks = MemLocks::<u64>::new();
    let (alice, bob) = (locks.owner(), locks.owner());
    let tumbler_sides = || (TumblerSide(alice.clone()), TumblerSide(bob.clone()));
    let mutex = Arc::new(Mutex::new(()));
    let tokio_sides = || (TokioSide(mutex.clone()), TokioSide(mutex.clone()));
    let table = Arc::new(FloorTable::default());
    let floor_sides = || (FloorSide(table.clone(), 1), FloorSide(table.clone(), 2));

    bench_handoff(c, &rt, "tumbler", tumbler_sides);
    bench_handoff(c, &rt, "tokio_mutex", tokio_sides);
    bench_handoff(c, &rt, "floor_table", floor_sides);

    let per_round = PERCENTILE_HANDOFFS / PERCENTILE_ROUNDS;
    let (mut tumbler, mut tokio, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PERCENTILE_ROUNDS {
        let (a, b) = tumbler_sides();
        tumbler.extend(rt.block_on(handoff(a, b, per_round)));
        let (a, b) = tokio_sides();
        tokio.extend(rt.block_on(handoff(a, b, per_round)));
        let (a, b) = floor_sides();
        floor.extend(rt.block_on(handoff(a, b, per_round)));
    }
    report("tumbler", tumbler);
    report("tokio_mutex", tokio);
    report("floor_table", floor);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .without_plots()
}

/// Private, so that the `pub fn` the macro generates needs no documentation.
mod group {
    use criterion::criterion_group;

    use super::{config, contended, uncontended};

    criterion_group! {
        name = benches;
        config = config();
        targets = uncontended, contended
    }
}
criterion_main!(group::benches);
