//! One unit test per rule of the lock semantics (DESIGN.md §2), against [`LockTable`].
//!
//! Time is driven by hand. Every failing operation is checked to leave the table as it
//! was (statuses, queue sizes, fencing high-water mark, next deadline) and to report no
//! effects. Rules whose implementation spans shards run on a one-shard and an eight-shard
//! table, with keys spread over different shards.

use std::fmt::Debug;
use std::time::Duration;

use tumbler_core::{
    Acquire, Acquired, Config, Effects, Error, EventKind, EventLog, Grant, Instant, Key, KeyStatus, Limits, LockTable,
    LostReason, Mode, OwnerId, RequestId, SessionId, Wait,
};

const X: Mode = Mode::Exclusive;
const S: Mode = Mode::Shared;

fn sem(limit: u32) -> Mode {
    Mode::Semaphore { limit }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn owner(s: &str) -> OwnerId {
    OwnerId::new(s).unwrap()
}

/// A request for one key.
fn req(key: &str, who: &str, mode: Mode, wait: Wait) -> Acquire<String> {
    Acquire::new(key.to_owned(), owner(who)).mode(mode).wait(wait)
}

/// An all-or-nothing exclusive request for several keys.
fn req_all(keys: &[String], who: &str, wait: Wait) -> Acquire<String> {
    Acquire::all(keys.iter().cloned(), owner(who)).wait(wait)
}

fn field(err: Error) -> &'static str {
    match err {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("expected invalid_argument, got {other:?}"),
    }
}

/// Everything observable about some keys and the table as a whole.
#[derive(Debug, PartialEq)]
struct Snapshot {
    statuses: Vec<Option<KeyStatus>>,
    waiting: usize,
    keys: usize,
    fencing: u64,
    next_deadline: Option<Instant>,
}

/// A lock table, a hand-driven clock, and the effects of the last operation.
struct Lab {
    table: LockTable<String>,
    now: Instant,
    fx: Effects<String>,
}

impl Lab {
    fn new(shards: usize) -> Self {
        Lab::with(Config { shards, ..Config::default() })
    }

    fn with(config: Config<String>) -> Self {
        Lab { table: LockTable::new(config), now: Instant::ZERO, fx: Effects::new() }
    }

    fn with_limits(limits: Limits) -> Self {
        Lab::with(Config { limits, ..Config::default() })
    }

    /// A one-shard and an eight-shard table.
    fn both() -> [Lab; 2] {
        [Lab::new(1), Lab::new(8)]
    }

    fn shards(&self) -> usize {
        self.table.layout().shards()
    }

    /// `n` keys, each in a shard of its own when the table has enough shards.
    fn spread(&self, n: usize) -> Vec<String> {
        let layout = self.table.layout();
        let mut keys: Vec<String> = Vec::new();
        let mut shards_used = Vec::new();
        for i in 0.. {
            let key = format!("k{i}");
            let shard = layout.shard_of(&key);
            if layout.shards() < n || !shards_used.contains(&shard) {
                shards_used.push(shard);
                keys.push(key);
            }
            if keys.len() == n {
                break;
            }
        }
        keys
    }

    fn at(&mut self, ms: u64) {
        self.now = at(ms);
    }

    fn acquire(&mut self, req: Acquire<String>) -> Result<Acquired<String>, Error> {
        self.fx.clear();
        self.table.acquire(req, self.now, &mut self.fx)
    }

    /// An acquire that must be granted at once.
    fn grant(&mut self, req: Acquire<String>) -> Grant<String> {
        match self.acquire(req) {
            Ok(Acquired::Granted(grant)) => grant,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    /// An acquire that must be queued.
    fn queue(&mut self, req: Acquire<String>) -> RequestId {
        match self.acquire(req) {
            Ok(Acquired::Waiting { request, .. }) => request,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    /// A try of `key` in `mode` that must be granted.
    fn hold(&mut self, key: &str, who: &str, mode: Mode) -> Grant<String> {
        self.grant(req(key, who, mode, Wait::NoWait))
    }

    /// A wait without bound for `key` in `mode` that must be queued.
    fn wait(&mut self, key: &str, who: &str, mode: Mode) -> RequestId {
        self.queue(req(key, who, mode, Wait::Forever))
    }

    fn release(&mut self, key: &str, who: &str) -> Result<u32, Error> {
        self.release_with(key, who, None, None)
    }

    fn release_with(&mut self, key: &str, who: &str, mode: Option<Mode>, token: Option<u64>) -> Result<u32, Error> {
        self.fx.clear();
        self.table.release(&key.to_owned(), &owner(who), mode, token, self.now, &mut self.fx)
    }

    fn cancel(&mut self, request: RequestId) -> bool {
        self.fx.clear();
        self.table.cancel(request, self.now, &mut self.fx)
    }

    fn tick(&mut self, ms: u64) {
        self.at(ms);
        self.fx.clear();
        self.table.tick(self.now, &mut self.fx);
    }

    fn open_session(&mut self, ttl: u64) -> SessionId {
        self.fx.clear();
        self.table.open_session(ms(ttl), self.now, &mut self.fx).unwrap().id
    }

    fn end_session(&mut self, id: SessionId) -> Result<(), Error> {
        self.fx.clear();
        self.table.end_session(id, self.now, &mut self.fx)
    }

    fn end_owner(&mut self, who: &str, voluntary: bool) -> usize {
        self.fx.clear();
        self.table.end_owner(&owner(who), voluntary, self.now, &mut self.fx)
    }

    fn status(&mut self, key: &str) -> Option<KeyStatus> {
        self.table.status(&key.to_owned())
    }

    /// `(owner, mode, count)` of every hold of `key`, sorted.
    fn holders(&mut self, key: &str) -> Vec<(String, Mode, u32)> {
        let mut out: Vec<(String, Mode, u32)> = self
            .status(key)
            .map(|s| s.holders)
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.holder.owner.to_string(), h.holder.mode, h.holder.count))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.name()).cmp(&(&b.0, b.1.name())));
        out
    }

    fn waiters(&mut self, key: &str) -> usize {
        self.status(key).map_or(0, |s| s.waiters)
    }

    fn token(&mut self, key: &str, who: &str) -> u64 {
        let status = self.status(key).expect("key is held");
        status
            .holders
            .iter()
            .find(|h| h.holder.owner.as_str() == who)
            .expect("owner holds the key")
            .holder
            .fencing_token
    }

    /// The requests the last operation granted.
    fn granted(&self) -> Vec<RequestId> {
        self.fx.wakes.iter().filter(|w| w.outcome.is_ok()).map(|w| w.request).collect()
    }

    /// The requests the last operation failed, with their error codes.
    fn failed(&self) -> Vec<(RequestId, &'static str)> {
        self.fx.wakes.iter().filter_map(|w| w.outcome.as_ref().err().map(|e| (w.request, e.code()))).collect()
    }

    /// `(key, owner, reason)` of every hold the last operation ended without a release.
    fn lost(&self) -> Vec<(String, String, LostReason)> {
        let mut out: Vec<_> = self.fx.lost.iter().map(|l| (l.key.clone(), l.owner.to_string(), l.reason)).collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// `(kind, key, owner, count)` of the last operation's events.
    fn events(&self) -> Vec<(EventKind, String, String, u32)> {
        self.fx.events.iter().map(|e| (e.kind, e.key.clone(), e.owner.to_string(), e.count)).collect()
    }

    fn snapshot(&mut self, keys: &[&str]) -> Snapshot {
        Snapshot {
            statuses: keys.iter().map(|k| self.status(k)).collect(),
            waiting: self.table.waiting(),
            keys: self.table.keys(),
            fencing: self.table.fencing_high_water(),
            next_deadline: self.table.next_deadline(),
        }
    }

    /// Runs `op`, which must fail, and checks that it changed nothing about `keys` or the
    /// table and reported no effects. Returns the error.
    fn fails<R: Debug>(&mut self, keys: &[&str], op: impl FnOnce(&mut Lab) -> Result<R, Error>) -> Error {
        let before = self.snapshot(keys);
        self.fx.clear();
        let err = match op(self) {
            Ok(answer) => panic!("expected an error, got {answer:?}"),
            Err(err) => err,
        };
        assert_eq!(self.snapshot(keys), before, "a failed operation ({err}) changed the table");
        assert!(self.fx.is_empty(), "a failed operation ({err}) reported effects: {:?}", self.fx);
        err
    }
}

/// Checks that `token` is greater than the last one seen, and remembers it.
fn increases(last: &mut u64, token: u64) {
    assert!(token > *last, "token {token} after {last}");
    *last = token;
}

fn busy_holders(err: Error) -> Vec<String> {
    match err {
        Error::Busy { holders } => holders.iter().map(|h| h.owner.to_string()).collect(),
        other => panic!("expected busy, got {other:?}"),
    }
}

fn cycle(err: Error) -> Vec<String> {
    match err {
        Error::Deadlock { cycle } => cycle.iter().map(ToString::to_string).collect(),
        other => panic!("expected deadlock, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Modes and re-entry
// ---------------------------------------------------------------------------------------

#[test]
fn exclusive_try_by_another_owner_is_busy_naming_the_holder() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", X);
    for mode in [X, S, sem(3)] {
        let err = lab.fails(&["k"], |l| l.acquire(req("k", "B", mode, Wait::NoWait)));
        assert_eq!(busy_holders(err), ["A"], "{mode}");
    }
}

#[test]
fn shared_holds_coexist() {
    let mut lab = Lab::new(1);
    let a = lab.hold("k", "A", S);
    let b = lab.hold("k", "B", S);
    assert_ne!(a.fencing_token(), b.fencing_token());
    assert_eq!(lab.holders("k"), [("A".into(), S, 1), ("B".into(), S, 1)]);
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "C", X, Wait::NoWait)));
    assert_eq!(busy_holders(err).len(), 2);
}

#[test]
fn shared_and_semaphore_holds_do_not_coexist() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", sem(5));
    lab.fails(&["k"], |l| l.acquire(req("k", "B", S, Wait::NoWait)));
    lab.release("k", "A").unwrap();
    lab.hold("k", "B", S);
    lab.fails(&["k"], |l| l.acquire(req("k", "A", sem(5), Wait::NoWait)));
}

#[test]
fn reentry_increments_count_and_keeps_token() {
    let mut lab = Lab::new(1);
    let first = lab.hold("k", "A", X);
    let second = lab.hold("k", "A", X);
    assert_eq!(first.holds[0].count, 1);
    assert_eq!(second.holds[0].count, 2);
    assert_eq!(second.fencing_token(), first.fencing_token());
    assert_eq!(lab.holders("k"), [("A".into(), X, 2)]);
}

#[test]
fn each_release_decrements_the_count_and_zero_frees_the_key() {
    let mut lab = Lab::new(1);
    for _ in 0..3 {
        lab.hold("k", "A", X);
    }
    assert_eq!(lab.release("k", "A"), Ok(2));
    assert_eq!(lab.release("k", "A"), Ok(1));
    assert_eq!(lab.holders("k"), [("A".into(), X, 1)]);
    lab.fails(&["k"], |l| l.acquire(req("k", "B", X, Wait::NoWait)));
    assert_eq!(lab.release("k", "A"), Ok(0));
    assert_eq!(lab.status("k"), None);
    lab.hold("k", "B", X);
}

#[test]
fn reentry_is_granted_at_once_even_behind_a_queued_writer() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", S);
    lab.wait("k", "W", X);
    let again = lab.hold("k", "A", S);
    assert_eq!(again.holds[0].count, 2);
    assert_eq!(lab.waiters("k"), 1);
}

#[test]
fn exclusive_holder_asking_shared_is_granted_at_once() {
    let mut lab = Lab::new(1);
    let x = lab.hold("k", "A", X);
    lab.wait("k", "W", X);
    let s = lab.hold("k", "A", S);
    assert_ne!(s.fencing_token(), x.fencing_token(), "a hold in a new mode is a new hold");
    assert_eq!(lab.holders("k"), [("A".into(), X, 1), ("A".into(), S, 1)]);
    // Naming the mode is required to release one of two holds.
    let err = lab.fails(&["k"], |l| l.release("k", "A"));
    assert_eq!(field(err), "mode");
    assert_eq!(lab.release_with("k", "A", Some(X), None), Ok(0));
    assert_eq!(lab.holders("k"), [("A".into(), S, 1)]);
}

#[test]
fn upgrade_by_the_only_holder_is_granted_at_once_even_with_waiters() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", S);
    lab.wait("k", "W", X);
    lab.hold("k", "A", X);
    assert_eq!(lab.holders("k"), [("A".into(), X, 1), ("A".into(), S, 1)]);
    assert_eq!(lab.waiters("k"), 1);
}

#[test]
fn upgrade_waits_until_only_holder_then_jumps_queue() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", S);
    lab.hold("k", "B", S);
    let writer = lab.wait("k", "W", X);
    // A try of the upgrade fails while B also holds.
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "A", X, Wait::NoWait)));
    assert_eq!(busy_holders(err), ["A", "B"]);
    let upgrade = lab.wait("k", "A", X);
    assert_eq!(lab.waiters("k"), 2);

    lab.release("k", "B").unwrap();
    assert_eq!(lab.granted(), [upgrade], "the upgrade goes ahead of the earlier writer");
    assert_eq!(lab.holders("k"), [("A".into(), X, 1), ("A".into(), S, 1)]);
    assert_eq!(lab.waiters("k"), 1);

    lab.release_with("k", "A", Some(X), None).unwrap();
    assert!(lab.granted().is_empty(), "A still holds shared");
    lab.release_with("k", "A", Some(S), None).unwrap();
    assert_eq!(lab.granted(), [writer]);
}

#[test]
fn two_upgraders_deadlock() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", S);
    lab.hold("k", "B", S);
    let upgrade = lab.wait("k", "A", X);
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "B", X, Wait::Forever)));
    assert_eq!(cycle(err), ["B", "A"]);
    // B gives up its shared hold: A's upgrade goes through.
    lab.release("k", "B").unwrap();
    assert_eq!(lab.granted(), [upgrade]);
}

#[test]
fn semaphore_admits_limit_owners_then_queues() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", sem(2));
    lab.hold("k", "B", sem(2));
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "C", sem(2), Wait::NoWait)));
    assert_eq!(busy_holders(err), ["A", "B"]);
    let c = lab.wait("k", "C", sem(2));
    // Re-entry by a holder takes no second permit.
    assert_eq!(lab.hold("k", "A", sem(2)).holds[0].count, 2);
    lab.release("k", "A").unwrap();
    assert!(lab.granted().is_empty());
    lab.release("k", "A").unwrap();
    assert_eq!(lab.granted(), [c]);
    assert_eq!(lab.holders("k"), [("B".into(), sem(2), 1), ("C".into(), sem(2), 1)]);
}

#[test]
fn semaphore_limit_mismatch_is_invalid_argument() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", sem(2));
    for wait in [Wait::NoWait, Wait::Forever] {
        let err = lab.fails(&["k"], |l| l.acquire(req("k", "B", sem(3), wait)));
        assert_eq!(field(err), "limit");
    }
    // A waiter fixes the limit as much as a holder does.
    lab.hold("q", "A", X);
    lab.wait("q", "B", sem(2));
    let err = lab.fails(&["q"], |l| l.acquire(req("q", "C", sem(4), Wait::Forever)));
    assert_eq!(field(err), "limit");
}

// ---------------------------------------------------------------------------------------
// Fairness and waiting
// ---------------------------------------------------------------------------------------

#[test]
fn queued_writer_blocks_new_readers() {
    let mut lab = Lab::new(1);
    lab.hold("k", "R1", S);
    let writer = lab.wait("k", "W", X);
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "R2", S, Wait::NoWait)));
    assert_eq!(busy_holders(err), ["R1"]);
    let reader = lab.wait("k", "R2", S);
    assert_eq!(lab.waiters("k"), 2);

    lab.release("k", "R1").unwrap();
    assert_eq!(lab.granted(), [writer]);
    lab.release("k", "W").unwrap();
    assert_eq!(lab.granted(), [reader]);
}

#[test]
fn waiters_are_granted_in_arrival_order() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", X);
    let b = lab.wait("k", "B", X);
    let c = lab.wait("k", "C", X);
    lab.release("k", "A").unwrap();
    assert_eq!(lab.granted(), [b]);
    lab.release("k", "B").unwrap();
    assert_eq!(lab.granted(), [c]);
}

#[test]
fn release_grants_every_compatible_reader_at_the_head_of_the_queue() {
    let mut lab = Lab::new(1);
    lab.hold("k", "W", X);
    let r1 = lab.wait("k", "R1", S);
    let r2 = lab.wait("k", "R2", S);
    lab.wait("k", "W2", X);
    lab.wait("k", "R3", S);
    lab.release("k", "W").unwrap();
    assert_eq!(lab.granted(), [r1, r2]);
    assert_eq!(lab.waiters("k"), 2, "R3 stays behind W2");
}

#[test]
fn timeout_wait_fails_with_timeout_on_tick_and_leaves_holder() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", X);
    let answer = lab.acquire(req("k", "B", X, Wait::Timeout(ms(50)))).unwrap();
    let Acquired::Waiting { request, deadline } = answer else { panic!("expected to wait, got {answer:?}") };
    assert_eq!(deadline, Some(at(50)));
    assert_eq!(lab.fx.new_deadline, Some(at(50)));

    lab.tick(49);
    assert!(lab.fx.is_empty());
    lab.tick(50);
    assert_eq!(lab.failed(), [(request, "timeout")]);
    assert_eq!(lab.events(), [(EventKind::Cancelled, "k".into(), "B".into(), 0)]);
    assert_eq!(lab.holders("k"), [("A".into(), X, 1)]);
    assert_eq!(lab.waiters("k"), 0);
    assert_eq!(lab.table.waiting(), 0);
}

#[test]
fn cancel_passes_turn_to_next_waiter() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", S);
    let writer = lab.wait("k", "W", X);
    let reader = lab.wait("k", "R", S);
    assert!(lab.cancel(writer));
    assert_eq!(lab.granted(), [reader], "the reader behind the writer now shares with A");
    assert!(lab.fx.wakes.iter().all(|w| w.request != writer), "a cancelled waiter is not woken");
    assert!(lab.events().contains(&(EventKind::Cancelled, "k".into(), "W".into(), 0)));
    assert_eq!(lab.holders("k"), [("A".into(), S, 1), ("R".into(), S, 1)]);
    assert!(!lab.cancel(writer), "a request that left its queue cannot be cancelled again");
    assert!(!lab.cancel(reader), "a granted request cannot be cancelled");
    assert!(lab.fx.is_empty());
}

// ---------------------------------------------------------------------------------------
// Multi-key
// ---------------------------------------------------------------------------------------

#[test]
fn multi_key_is_all_or_nothing() {
    for mut lab in Lab::both() {
        let keys = lab.spread(3);
        let (a, b, c) = (keys[0].as_str(), keys[1].as_str(), keys[2].as_str());
        lab.hold(b, "A", X);
        let err = lab.fails(&[a, b, c], |l| l.acquire(req_all(&keys, "B", Wait::NoWait)));
        assert_eq!(busy_holders(err), ["A"], "shards: {}", lab.shards());
        assert_eq!(lab.status(a), None, "nothing is held while failing");

        let request = lab.queue(req_all(&keys, "B", Wait::Forever));
        assert!(lab.holders(a).is_empty() && lab.holders(c).is_empty(), "nothing is held while waiting");
        assert_eq!((lab.waiters(a), lab.waiters(b), lab.waiters(c)), (1, 1, 1));

        lab.release(b, "A").unwrap();
        assert_eq!(lab.granted(), [request]);
        let grant = lab.fx.wakes[0].outcome.clone().unwrap();
        let granted: Vec<&str> = grant.holds.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(granted, [a, b, c], "holds are listed in the order asked");
        for key in [a, b, c] {
            assert_eq!(lab.holders(key), [("B".into(), X, 1)]);
        }
    }
}

#[test]
fn multi_key_folds_duplicate_keys() {
    let mut lab = Lab::new(8);
    let keys = vec!["d".to_owned(), "e".to_owned(), "d".to_owned()];
    let grant = lab.grant(req_all(&keys, "A", Wait::NoWait));
    assert_eq!(grant.holds.len(), 2);
    assert_eq!(lab.holders("d"), [("A".into(), X, 1)]);
}

#[test]
fn a_multi_key_wait_that_is_cancelled_or_times_out_leaves_every_queue() {
    for mut lab in Lab::both() {
        let keys = lab.spread(2);
        let (a, b) = (keys[0].as_str(), keys[1].as_str());
        lab.hold(b, "X", X);
        let cancelled = lab.queue(req_all(&keys, "A", Wait::Forever));
        let timed_out = lab.queue(req_all(&keys, "B", Wait::Timeout(ms(50))));
        let behind = lab.wait(a, "C", X);
        assert_eq!((lab.waiters(a), lab.waiters(b)), (3, 2));

        assert!(lab.cancel(cancelled));
        assert!(lab.granted().is_empty(), "C still waits behind B on a");
        lab.tick(50);
        assert_eq!(lab.failed(), [(timed_out, "timeout")]);
        assert_eq!(lab.granted(), [behind], "shards: {}", lab.shards());
        assert_eq!((lab.waiters(a), lab.waiters(b)), (0, 0));
        assert_eq!(lab.table.waiting(), 0);
    }
}

#[test]
fn overlapping_multi_key_waiters_never_deadlock() {
    for mut lab in Lab::both() {
        let keys = lab.spread(3);
        let (a, b, c) = (keys[0].clone(), keys[1].clone(), keys[2].clone());
        lab.grant(req_all(&keys, "X", Wait::NoWait));
        // Three requests whose key sets overlap in a ring, asked in different orders.
        let first = lab.queue(req_all(&[a.clone(), b.clone()], "A", Wait::Forever));
        let second = lab.queue(req_all(&[c.clone(), b.clone()], "B", Wait::Forever));
        let third = lab.queue(req_all(&[a.clone(), c.clone()], "C", Wait::Forever));

        lab.release(&a, "X").unwrap();
        assert!(lab.granted().is_empty(), "shards: {}", lab.shards());
        lab.release(&c, "X").unwrap();
        assert!(lab.granted().is_empty(), "B still waits for b and for A ahead of it");
        lab.release(&b, "X").unwrap();
        assert_eq!(lab.granted(), [first]);
        lab.release(&a, "A").unwrap();
        assert!(lab.granted().is_empty(), "C waits behind B on c");
        lab.release(&b, "A").unwrap();
        assert_eq!(lab.granted(), [second]);
        lab.release(&b, "B").unwrap();
        lab.release(&c, "B").unwrap();
        assert_eq!(lab.granted(), [third]);
        assert_eq!(lab.table.waiting(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// Deadlock
// ---------------------------------------------------------------------------------------

#[test]
fn cycle_of_two_holders_fails_the_closing_request_with_deadlock_naming_cycle() {
    for mut lab in Lab::both() {
        let keys = lab.spread(2);
        let (a, b) = (keys[0].as_str(), keys[1].as_str());
        lab.hold(a, "A", X);
        lab.hold(b, "B", X);
        let waiting = lab.wait(b, "A", X);
        for wait in [Wait::Forever, Wait::Timeout(ms(1000))] {
            let err = lab.fails(&[a, b], |l| l.acquire(req(a, "B", X, wait)));
            assert_eq!(cycle(err), ["B", "A"], "shards: {}", lab.shards());
        }
        lab.release(b, "B").unwrap();
        assert_eq!(lab.granted(), [waiting]);
    }
}

#[test]
fn transitive_cycle_of_three_holders_is_a_deadlock_naming_all_three() {
    for mut lab in Lab::both() {
        let keys = lab.spread(3);
        let (a, b, c) = (keys[0].as_str(), keys[1].as_str(), keys[2].as_str());
        lab.hold(a, "A", X);
        lab.hold(b, "B", X);
        lab.hold(c, "C", X);
        lab.wait(b, "A", X);
        lab.wait(c, "B", X);
        let err = lab.fails(&[a, b, c], |l| l.acquire(req(a, "C", S, Wait::Forever)));
        assert_eq!(cycle(err), ["C", "A", "B"], "shards: {}", lab.shards());
    }
}

#[test]
fn waiting_behind_a_queued_request_counts_toward_a_deadlock() {
    // B's shared request on a does not wait for A's shared hold, only for W queued ahead
    // of it; W waits for A. When A then waits for B's key, the cycle runs through the queue.
    for mut lab in Lab::both() {
        let keys = lab.spread(2);
        let (a, b) = (keys[0].as_str(), keys[1].as_str());
        lab.hold(a, "A", S);
        lab.hold(b, "B", X);
        lab.wait(a, "W", X); // W waits for A
        lab.wait(a, "B", S); // B waits for W, queued ahead of it, though A's hold is shared
        let err = lab.fails(&[a, b], |l| l.acquire(req(b, "A", X, Wait::Forever)));
        assert_eq!(cycle(err), ["A", "B", "W"], "shards: {}", lab.shards());
    }
}

// ---------------------------------------------------------------------------------------
// TTL and lock-delay
// ---------------------------------------------------------------------------------------

#[test]
fn ttl_expiry_releases_and_grants_next_waiter_with_expired_event() {
    let mut lab = Lab::new(1);
    let grant = lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)));
    assert_eq!(grant.holds[0].expires_at, Some(at(100)));
    assert_eq!(lab.fx.new_deadline, Some(at(100)));
    let waiter = lab.wait("k", "B", X);

    lab.tick(99);
    assert!(lab.fx.is_empty());
    lab.tick(100);
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Expired)]);
    assert_eq!(lab.fx.lost[0].fencing_token, grant.fencing_token());
    assert_eq!(
        lab.events(),
        [(EventKind::Expired, "k".into(), "A".into(), 0), (EventKind::Acquired, "k".into(), "B".into(), 1)]
    );
    assert_eq!(lab.granted(), [waiter]);
    assert_eq!(lab.holders("k"), [("B".into(), X, 1)]);
}

#[test]
fn a_queued_request_ttl_counts_from_its_grant() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", X);
    lab.queue(req("k", "B", X, Wait::Forever).ttl(ms(100)));
    lab.at(70);
    lab.release("k", "A").unwrap();
    let grant = lab.fx.wakes[0].outcome.clone().unwrap();
    assert_eq!(grant.holds[0].expires_at, Some(at(170)));
    assert_eq!(lab.fx.new_deadline, Some(at(170)));
    lab.tick(169);
    assert!(lab.fx.lost.is_empty());
    lab.tick(170);
    assert_eq!(lab.lost(), [("k".into(), "B".into(), LostReason::Expired)]);
}

#[test]
fn reentry_extends_ttl_to_later() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)));
    lab.at(50);
    let shorter = lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(20)));
    assert_eq!(shorter.holds[0].expires_at, Some(at(100)), "an earlier expiry does not shorten the hold");
    let longer = lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)));
    assert_eq!(longer.holds[0].expires_at, Some(at(150)));
    assert_eq!(longer.holds[0].count, 3);
    lab.tick(100);
    assert!(lab.fx.lost.is_empty());
    assert_eq!(lab.holders("k"), [("A".into(), X, 3)]);
    lab.tick(150);
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Expired)]);
    assert_eq!(lab.status("k"), None, "expiry ends every level");
}

#[test]
fn refresh_extends_ttl() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)));
    lab.at(80);
    let (key, a, b) = ("k".to_owned(), owner("A"), owner("B"));
    let until = lab.table.refresh(&key, &a, None, ms(100), lab.now, &mut lab.fx).unwrap();
    assert_eq!(until, at(180));
    assert_eq!(lab.status("k").unwrap().holders[0].expires_at, Some(at(180)));

    let err = lab.fails(&["k"], |l| l.table.refresh(&key, &b, None, ms(100), l.now, &mut l.fx));
    assert_eq!(err, Error::NotOwner);
    let err = lab.fails(&["k", "free"], |l| l.table.refresh(&"free".to_owned(), &a, None, ms(100), l.now, &mut l.fx));
    assert_eq!(err, Error::NotHeld);
    let err = lab.fails(&["k"], |l| l.table.refresh(&key, &a, None, Duration::ZERO, l.now, &mut l.fx));
    assert_eq!(field(err), "ttl");

    lab.tick(179);
    assert!(lab.fx.lost.is_empty());
    lab.tick(180);
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Expired)]);
}

#[test]
fn refresh_never_shortens_and_needs_a_ttl_hold() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)));
    let (key, a) = ("k".to_owned(), owner("A"));
    // A shorter TTL keeps the later expiry, as re-entry does.
    let until = lab.table.refresh(&key, &a, None, ms(10), lab.now, &mut lab.fx).unwrap();
    assert_eq!(until, at(100));
    assert_eq!(lab.status("k").unwrap().holders[0].expires_at, Some(at(100)));
    lab.tick(99);
    assert!(lab.fx.lost.is_empty(), "not ended at the shorter expiry");
    // A hold without a TTL has no expiry to extend.
    lab.hold("free", "A", X);
    let err = lab.fails(&["k", "free"], |l| l.table.refresh(&"free".to_owned(), &a, Some(X), ms(30), l.now, &mut l.fx));
    assert_eq!(field(err), "ttl");
    lab.tick(1_000);
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Expired)]);
    assert_eq!(lab.holders("free"), [("A".into(), X, 1)], "the untimed hold stays");
}

#[test]
fn lock_delay_after_expiry_blocks_then_grants() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(10)).lock_delay(ms(50)));
    let waiter = lab.wait("k", "B", X);
    lab.tick(10);
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Expired)]);
    assert!(lab.granted().is_empty(), "the key is unclaimable during the lock-delay");
    assert_eq!(lab.fx.new_deadline, Some(at(60)));
    let status = lab.status("k").unwrap();
    assert_eq!((status.holders.len(), status.waiters, status.delayed_until), (0, 1, Some(at(60))));

    lab.at(30);
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "C", S, Wait::NoWait)));
    assert!(busy_holders(err).is_empty(), "busy with nobody holding: a lock-delay runs");
    lab.tick(60);
    assert_eq!(lab.granted(), [waiter]);
    assert_eq!(lab.status("k").unwrap().delayed_until, None);
}

#[test]
fn lock_delay_alone_expires_and_frees_the_key() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(10)).lock_delay(ms(50)));
    lab.tick(10);
    assert_eq!(lab.table.keys(), 1);
    lab.tick(60);
    assert_eq!(lab.status("k"), None);
    assert_eq!(lab.table.keys(), 0);
    lab.hold("k", "C", X);
}

#[test]
fn no_lock_delay_after_explicit_release() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)).lock_delay(ms(50)));
    let waiter = lab.wait("k", "B", X);
    lab.at(5);
    lab.release("k", "A").unwrap();
    assert_eq!(lab.granted(), [waiter]);
    assert_eq!(lab.status("k").unwrap().delayed_until, None);
    // Nor after a release that leaves no waiter (the single-shard fast path).
    lab.grant(req("q", "A", X, Wait::NoWait).lock_delay(ms(50)));
    lab.release("q", "A").unwrap();
    assert_eq!(lab.status("q"), None);
    lab.hold("q", "C", X);
}

#[test]
fn lock_delay_after_session_end_blocks_the_key() {
    let mut lab = Lab::new(1);
    let session = lab.open_session(1000);
    lab.grant(req("k", "A", X, Wait::NoWait).session(session).lock_delay(ms(50)));
    lab.at(10);
    lab.end_session(session).unwrap();
    assert_eq!(lab.status("k").unwrap().delayed_until, Some(at(60)));
    lab.fails(&["k"], |l| l.acquire(req("k", "B", X, Wait::NoWait)));
    lab.tick(60);
    lab.hold("k", "B", X);
}

// ---------------------------------------------------------------------------------------
// Fencing tokens
// ---------------------------------------------------------------------------------------

#[test]
fn fencing_tokens_strictly_increase_per_key_even_after_free() {
    for mut lab in Lab::both() {
        let keys = lab.spread(2);
        let (k, other) = (keys[0].as_str(), keys[1].as_str());
        let mut last = 0;
        increases(&mut last, lab.hold(k, "A", X).fencing_token());
        assert_eq!(lab.hold(k, "A", X).fencing_token(), last, "re-entry keeps the token");
        lab.hold(other, "A", X);
        lab.release(k, "A").unwrap();
        lab.release(k, "A").unwrap();
        assert_eq!(lab.status(k), None);
        increases(&mut last, lab.hold(k, "B", X).fencing_token());
        let waiter = lab.wait(k, "A", X);
        lab.release(k, "B").unwrap();
        assert_eq!(lab.granted(), [waiter]);
        increases(&mut last, lab.token(k, "A"));
        lab.release(k, "A").unwrap();
        increases(&mut last, lab.hold(k, "A", S).fencing_token());
        increases(&mut last, lab.hold(k, "B", S).fencing_token());
        assert!(lab.table.fencing_high_water() >= last);
    }
}

#[test]
fn raise_fencing_floor_keeps_tokens_increasing() {
    for mut lab in Lab::both() {
        let keys = lab.spread(4);
        lab.table.raise_fencing_floor(1000);
        for key in &keys {
            assert!(lab.hold(key, "A", X).fencing_token() > 1000, "shards: {}", lab.shards());
        }
        assert!(lab.table.fencing_high_water() > 1000);
        lab.table.raise_fencing_floor(5);
        for key in &keys {
            let old = lab.token(key, "A");
            lab.release(key, "A").unwrap();
            assert!(lab.hold(key, "B", X).fencing_token() > old, "a lower floor changes nothing");
        }

        // A new table (a restart) raised to the old high-water mark continues above it.
        let mut restarted = Lab::new(lab.shards());
        restarted.table.raise_fencing_floor(lab.table.fencing_high_water());
        let token = restarted.hold(&keys[0], "A", X).fencing_token();
        assert!(token > lab.table.fencing_high_water());
    }
}

// ---------------------------------------------------------------------------------------
// Transfer, force release, owners
// ---------------------------------------------------------------------------------------

#[test]
fn transfer_moves_hold_with_new_token_and_waiters_keep_waiting() {
    let mut lab = Lab::new(1);
    let old = lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(100)));
    lab.hold("k", "A", X);
    let waiter = lab.wait("k", "W", X);
    lab.at(10);
    let (key, a, b) = ("k".to_owned(), owner("A"), owner("B"));

    lab.fx.clear();
    let moved = lab.table.transfer(&key, &a, None, &b, lab.now, &mut lab.fx).unwrap();
    assert!(moved.fencing_token > old.fencing_token());
    assert_eq!((moved.count, moved.expires_at), (2, Some(at(100))));
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Transferred)]);
    assert!(lab.events().contains(&(EventKind::Released, "k".into(), "A".into(), 0)));
    assert!(lab.fx.wakes.is_empty(), "waiters keep waiting");
    assert_eq!(lab.holders("k"), [("B".into(), X, 2)]);
    assert_eq!(lab.waiters("k"), 1);

    assert_eq!(lab.fails(&["k"], |l| l.release("k", "A")), Error::NotOwner);
    let err = lab.fails(&["k"], |l| l.table.transfer(&key, &b, None, &b, l.now, &mut l.fx));
    assert_eq!(field(err), "owner");
    let err = lab.fails(&["k"], |l| l.table.transfer(&key, &a, None, &b, l.now, &mut l.fx));
    assert_eq!(err, Error::NotOwner);

    lab.release("k", "B").unwrap();
    lab.release("k", "B").unwrap();
    assert_eq!(lab.granted(), [waiter]);
}

#[test]
fn transfer_to_an_owner_waiting_behind_a_queued_request_is_a_deadlock() {
    for mut lab in Lab::both() {
        let keys = lab.spread(2);
        let (k, other) = (keys[0].as_str(), keys[1].as_str());
        lab.hold(k, "A", X);
        lab.hold(other, "W", X);
        lab.wait(k, "W", X);
        lab.wait(other, "B", X);
        // Giving k to B would make W (queued on k) wait for B, who waits for W.
        let err = lab
            .fails(&[k, other], |l| l.table.transfer(&k.to_owned(), &owner("A"), None, &owner("B"), l.now, &mut l.fx));
        assert_eq!(cycle(err), ["B", "W"]);
    }
}

#[test]
fn force_release_ends_every_hold_and_wakes_waiters() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", S);
    lab.hold("k", "B", S);
    lab.hold("k", "B", S);
    let waiter = lab.wait("k", "W", X);
    lab.fx.clear();
    assert_eq!(lab.table.force_release(&"k".to_owned(), lab.now, &mut lab.fx), 2);
    assert_eq!(
        lab.lost(),
        [("k".into(), "A".into(), LostReason::ForceReleased), ("k".into(), "B".into(), LostReason::ForceReleased)]
    );
    assert_eq!(lab.granted(), [waiter]);
    lab.fx.clear();
    assert_eq!(lab.table.force_release(&"free".to_owned(), lab.now, &mut lab.fx), 0);
    assert!(lab.fx.is_empty());
}

#[test]
fn end_owner_releases_everything_and_wakes_waiters() {
    for mut lab in Lab::both() {
        let keys = lab.spread(3);
        let (a, b, c) = (keys[0].as_str(), keys[1].as_str(), keys[2].as_str());
        lab.grant(req(a, "A", X, Wait::NoWait).lock_delay(ms(50)));
        lab.hold(b, "A", S);
        lab.hold(b, "A", S);
        lab.hold(c, "X", X);
        let own_wait = lab.wait(c, "A", X);
        let on_b = lab.wait(b, "W", X);

        assert_eq!(lab.end_owner("A", false), 2);
        let mut want = vec![
            (a.to_owned(), "A".to_owned(), LostReason::OwnerEnded),
            (b.into(), "A".into(), LostReason::OwnerEnded),
        ];
        want.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        assert_eq!(lab.lost(), want, "shards: {}", lab.shards());
        assert_eq!(lab.failed(), [(own_wait, "session_expired")]);
        assert_eq!(lab.granted(), [on_b]);
        assert_eq!(lab.waiters(c), 0);
        assert_eq!(lab.status(a).unwrap().delayed_until, Some(at(50)), "an owner's death starts its lock-delays");
        assert_eq!(lab.end_owner("A", false), 0);
    }
}

#[test]
fn goodbye_reports_goodbye_reason() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).lock_delay(ms(50)));
    let waiter = lab.wait("k", "B", X);
    assert_eq!(lab.end_owner("A", true), 1);
    assert_eq!(lab.lost(), [("k".into(), "A".into(), LostReason::Goodbye)]);
    assert_eq!(lab.granted(), [waiter], "goodbye is a release: no lock-delay");
    assert_eq!(lab.status("k").unwrap().delayed_until, None);
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

#[test]
fn request_id_retry_returns_original_grant_without_counting() {
    for session in [false, true] {
        let mut lab = Lab::new(1);
        let sid = session.then(|| lab.open_session(1000));
        let ask = |id: &str| {
            let r = req("k", "A", X, Wait::NoWait).request_id(id);
            match sid {
                Some(s) => r.session(s),
                None => r,
            }
        };
        let first = lab.grant(ask("r1"));
        assert!(!first.retried);
        let retry = lab.grant(ask("r1"));
        assert!(retry.retried);
        assert_eq!(retry.holds, first.holds);
        assert!(lab.fx.is_empty(), "a retry changes nothing");
        assert_eq!(lab.holders("k"), [("A".into(), X, 1)]);

        assert_eq!(lab.grant(ask("r2")).holds[0].count, 2);
        let retry = lab.grant(ask("r1"));
        assert!(retry.retried);
        assert_eq!(retry.holds[0].count, 2);
        assert_eq!(lab.holders("k"), [("A".into(), X, 2)]);
    }
}

#[test]
fn request_id_retry_of_a_waiting_request_joins_it() {
    let mut lab = Lab::new(1);
    lab.hold("k", "B", X);
    let ask = || req("k", "A", X, Wait::Forever).request_id("r1");
    let request = lab.queue(ask());
    assert_eq!(lab.queue(ask()), request);
    assert!(lab.fx.is_empty());
    assert_eq!(lab.waiters("k"), 1);

    // The same id for something else while it waits is refused (where the coordinator
    // decides: a free key without session is granted on the shard's fast path, which
    // does not see waiting requests).
    lab.hold("q", "B", X);
    let err = lab.fails(&["k", "q"], |l| l.acquire(req("q", "A", X, Wait::Forever).request_id("r1")));
    assert_eq!(field(err), "request_id");

    lab.release("k", "B").unwrap();
    assert_eq!(lab.granted(), [request]);
    let retry = lab.grant(ask());
    assert!(retry.retried);
    assert_eq!(lab.holders("k"), [("A".into(), X, 1)]);
}

#[test]
fn request_id_retry_still_answers_after_a_level_entered_without_an_id_is_released() {
    let mut lab = Lab::new(1);
    lab.grant(req("k", "A", X, Wait::NoWait).request_id("r1"));
    lab.hold("k", "A", X);
    lab.release("k", "A").unwrap();
    let retry = lab.grant(req("k", "A", X, Wait::NoWait).request_id("r1"));
    assert!(retry.retried, "the level left is r1's: its retry must not count again");
    assert_eq!(lab.holders("k"), [("A".into(), X, 1)]);
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

#[test]
fn session_end_releases_holds_and_cancels_waits() {
    for mut lab in Lab::both() {
        let keys = lab.spread(3);
        let (a, b, c) = (keys[0].as_str(), keys[1].as_str(), keys[2].as_str());
        let session = lab.open_session(1000);
        lab.grant(req(a, "A", X, Wait::NoWait).session(session));
        lab.grant(req(b, "A", S, Wait::NoWait).session(session));
        lab.grant(req(b, "A", S, Wait::NoWait).session(session));
        lab.hold(c, "X", X);
        let own_wait = lab.queue(req(c, "A", X, Wait::Forever).session(session));
        let on_a = lab.wait(a, "W", X);
        assert_eq!(lab.table.session_info(session).unwrap().holds, 2);

        lab.end_session(session).unwrap();
        let mut want = vec![
            (a.to_owned(), "A".to_owned(), LostReason::SessionEnded),
            (b.into(), "A".into(), LostReason::SessionEnded),
        ];
        want.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        assert_eq!(lab.lost(), want, "shards: {}", lab.shards());
        assert_eq!(lab.failed(), [(own_wait, "session_expired")]);
        assert_eq!(lab.granted(), [on_a]);
        assert_eq!(lab.status(b), None);
        assert_eq!(lab.waiters(c), 0);
        assert_eq!(lab.table.session_info(session), None);

        assert_eq!(lab.fails(&[a, b, c], |l| l.end_session(session)), Error::SessionExpired);
        let err = lab.fails(&[a, b, c], |l| l.acquire(req(b, "A", X, Wait::NoWait).session(session)));
        assert_eq!(err, Error::SessionExpired);
    }
}

#[test]
fn session_expiry_on_tick() {
    let mut lab = Lab::new(1);
    let session = lab.open_session(100);
    assert_eq!(lab.fx.new_deadline, Some(at(100)));
    lab.grant(req("k", "A", X, Wait::NoWait).session(session));
    lab.at(50);
    lab.fx.clear();
    let info = lab.table.keepalive(session, lab.now, &mut lab.fx).unwrap();
    assert_eq!(info.expires_at, at(150));
    assert_eq!(lab.fx.new_deadline, Some(at(150)));
    let waiter = lab.wait("k", "B", X);

    lab.tick(149);
    assert!(lab.fx.is_empty());
    lab.tick(150);
    assert_eq!(lab.fx.lost.len(), 1);
    assert_eq!((lab.fx.lost[0].key.as_str(), lab.fx.lost[0].owner.as_str()), ("k", "A"));
    // The table reports a lapsed lease as `Expired` (its event is `expired`); `SessionEnded`
    // is documented to cover it as well, so either reason is accepted here.
    assert!(matches!(lab.fx.lost[0].reason, LostReason::Expired | LostReason::SessionEnded));
    assert_eq!(lab.events()[0], (EventKind::Expired, "k".into(), "A".into(), 0));
    assert_eq!(lab.granted(), [waiter]);
    assert_eq!(lab.table.session_info(session), None);
}

#[test]
fn keepalive_after_expiry_is_session_expired() {
    let mut lab = Lab::new(1);
    let session = lab.open_session(100);
    lab.grant(req("k", "A", X, Wait::NoWait).session(session));
    lab.at(100);
    let err = lab.fails(&["k"], |l| l.table.keepalive(session, l.now, &mut l.fx));
    assert_eq!(err, Error::SessionExpired, "expired before any tick ran");
    let err = lab.fails(&["k", "q"], |l| l.acquire(req("q", "A", X, Wait::NoWait).session(session)));
    assert_eq!(err, Error::SessionExpired);
    lab.tick(100);
    let err = lab.fails(&["k"], |l| l.table.keepalive(session, l.now, &mut l.fx));
    assert_eq!(err, Error::SessionExpired);
    let err = lab.fails(&["k"], |l| l.table.keepalive(SessionId(999), l.now, &mut l.fx));
    assert_eq!(err, Error::SessionExpired);
}

#[test]
fn a_session_hold_is_only_reentered_in_its_own_session() {
    let mut lab = Lab::new(1);
    let session = lab.open_session(1000);
    lab.grant(req("k", "A", X, Wait::NoWait).session(session));
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "A", X, Wait::NoWait)));
    assert_eq!(field(err), "session");
}

// ---------------------------------------------------------------------------------------
// Release errors
// ---------------------------------------------------------------------------------------

#[test]
fn release_by_non_owner_is_not_owner_and_changes_nothing() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", X);
    lab.hold("k", "A", X);
    let session = lab.open_session(1000);
    lab.grant(req("s", "A", S, Wait::NoWait).session(session));
    lab.wait("s", "W", X);
    for key in ["k", "s"] {
        assert_eq!(lab.fails(&["k", "s"], |l| l.release(key, "B")), Error::NotOwner);
    }
    // Holding the key in another mode is not owning this one.
    assert_eq!(lab.fails(&["k"], |l| l.release_with("k", "A", Some(S), None)), Error::NotOwner);
    // Waiting for a key is not holding it.
    assert_eq!(lab.fails(&["s"], |l| l.release("s", "W")), Error::NotOwner);
}

#[test]
fn release_of_free_key_is_not_held() {
    let mut lab = Lab::new(8);
    assert_eq!(lab.fails(&["k"], |l| l.release("k", "A")), Error::NotHeld);
    // A key with only a (multi-key) waiter on it is not held either.
    lab.hold("b", "X", X);
    lab.queue(req_all(&["a".into(), "b".into()], "A", Wait::Forever));
    assert_eq!(lab.fails(&["a", "b"], |l| l.release("a", "A")), Error::NotHeld);
}

#[test]
fn stale_token_release_is_not_held() {
    let mut lab = Lab::new(1);
    let old = lab.hold("k", "A", X).fencing_token();
    lab.release("k", "A").unwrap();
    let new = lab.hold("k", "A", X).fencing_token();
    let err = lab.fails(&["k"], |l| l.release_with("k", "A", None, Some(old)));
    assert_eq!(err, Error::NotHeld);
    assert_eq!(lab.release_with("k", "A", None, Some(new)), Ok(0));
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

#[test]
fn events_have_kinds_and_counts() {
    let mut lab = Lab::new(1);
    let mut all = Vec::new();
    let token = lab.hold("k", "A", X).fencing_token();
    all.append(&mut lab.fx.events);
    lab.hold("k", "A", X);
    all.append(&mut lab.fx.events);
    let waiter = lab.wait("k", "B", X);
    all.append(&mut lab.fx.events);
    lab.cancel(waiter);
    all.append(&mut lab.fx.events);
    lab.release("k", "A").unwrap();
    all.append(&mut lab.fx.events);
    lab.release("k", "A").unwrap();
    all.append(&mut lab.fx.events);
    lab.grant(req("k", "B", S, Wait::NoWait).ttl(ms(5)));
    all.append(&mut lab.fx.events);
    lab.tick(5);
    all.append(&mut lab.fx.events);

    let seen: Vec<(EventKind, &str, u32)> = all.iter().map(|e| (e.kind, e.owner.as_str(), e.count)).collect();
    assert_eq!(
        seen,
        [
            (EventKind::Acquired, "A", 1),
            (EventKind::Acquired, "A", 2),
            (EventKind::Cancelled, "B", 0),
            (EventKind::Released, "A", 1),
            (EventKind::Released, "A", 0),
            (EventKind::Acquired, "B", 1),
            (EventKind::Expired, "B", 0),
        ]
    );
    assert!(all[..2].iter().chain(&all[3..5]).all(|e| e.fencing_token == token && e.mode == X));
    assert_eq!(all[2].fencing_token, 0, "a cancelled request has no token");
    assert_eq!(all[5].fencing_token, all[6].fencing_token);
    assert!(all.iter().all(|e| e.revision == 0 && e.key == "k"), "operations report events unstamped");
    let names: Vec<&str> = all.iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["acquired", "acquired", "cancelled", "released", "released", "acquired", "expired"]);

    let mut log = EventLog::new(16);
    let revisions: Vec<u64> = all.into_iter().map(|e| log.append(e).revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5, 6, 7], "revisions increase by one per event");
}

#[test]
fn no_events_are_reported_when_recording_is_off() {
    let mut lab = Lab::with(Config { record_events: false, ..Config::default() });
    lab.hold("k", "A", X);
    lab.wait("k", "B", X);
    lab.release("k", "A").unwrap();
    assert!(lab.fx.events.is_empty());
    assert_eq!(lab.granted().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

fn limit(err: Error) -> (&'static str, u64) {
    match err {
        Error::LimitExceeded { limit, max } => (limit, max),
        other => panic!("expected limit_exceeded, got {other:?}"),
    }
}

#[test]
fn keys_per_request_limit_is_limit_exceeded() {
    let mut lab = Lab::with_limits(Limits { max_keys_per_request: 2, ..Limits::default() });
    let keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let err = lab.fails(&["a", "b", "c"], |l| l.acquire(req_all(&keys, "A", Wait::Forever)));
    assert_eq!(limit(err), ("keys_per_request", 2));
    lab.grant(req_all(&keys[..2], "A", Wait::NoWait));
}

#[test]
fn waiters_per_key_limit_is_limit_exceeded() {
    let mut lab = Lab::with_limits(Limits { max_waiters_per_key: Some(1), ..Limits::default() });
    lab.hold("k", "A", X);
    lab.wait("k", "B", X);
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "C", X, Wait::Forever)));
    assert_eq!(limit(err), ("waiters_per_key", 1));
    // A multi-key request is refused when any of its keys is full.
    let keys = vec!["free".to_owned(), "k".to_owned()];
    let err = lab.fails(&["k", "free"], |l| l.acquire(req_all(&keys, "C", Wait::Forever)));
    assert_eq!(limit(err), ("waiters_per_key", 1));
}

#[test]
fn holds_per_session_limit_is_limit_exceeded() {
    let mut lab = Lab::with_limits(Limits { max_holds_per_session: Some(1), ..Limits::default() });
    let session = lab.open_session(1000);
    lab.grant(req("a", "A", X, Wait::NoWait).session(session));
    // Re-entry is not a new hold.
    lab.grant(req("a", "A", X, Wait::NoWait).session(session));
    let err = lab.fails(&["a", "b"], |l| l.acquire(req("b", "A", X, Wait::NoWait).session(session)));
    assert_eq!(limit(err), ("holds_per_session", 1));
    // Nor may a waiting request take the session past its bound once granted.
    lab.hold("c", "X", X);
    let err = lab.fails(&["a", "c"], |l| l.acquire(req("c", "A", X, Wait::Forever).session(session)));
    assert_eq!(limit(err), ("holds_per_session", 1));
    assert_eq!(lab.table.session_info(session).unwrap().holds, 1);
}

#[test]
fn holds_per_session_limit_counts_queued_requests_of_the_session() {
    let mut lab = Lab::with_limits(Limits { max_holds_per_session: Some(2), ..Limits::default() });
    let session = lab.open_session(1000);
    lab.grant(req("a", "A", X, Wait::NoWait).session(session));
    lab.hold("c", "X", X);
    let queued = lab.queue(req("c", "A", X, Wait::Forever).session(session));
    let err = lab.fails(&["a", "c", "d"], |l| l.acquire(req("d", "B", X, Wait::NoWait).session(session)));
    assert_eq!(limit(err), ("holds_per_session", 2));
    let err = lab.fails(&["a", "c", "d"], |l| l.acquire(req("d", "B", X, Wait::Forever).session(session)));
    assert_eq!(limit(err), ("holds_per_session", 2));
    lab.release("c", "X").unwrap();
    assert_eq!(lab.granted(), [queued]);
    assert_eq!(lab.table.session_info(session).unwrap().holds, 2);
    // A cancelled wait frees its place.
    lab.release("c", "A").unwrap();
    lab.hold("c", "X", X);
    let queued = lab.queue(req("c", "A", X, Wait::Forever).session(session));
    assert!(lab.cancel(queued));
    lab.grant(req("d", "B", X, Wait::NoWait).session(session));
}

#[test]
fn keys_per_namespace_limit_is_limit_exceeded() {
    let mut config = Config::for_keys();
    config.limits.max_keys_per_namespace = Some(1);
    config.shards = 8;
    let mut table = LockTable::new(config);
    let mut fx = Effects::new();
    let key = |ns: &str, name: &str| Key::new(ns, name).unwrap();
    let (a, b) = (owner("A"), owner("B"));
    let now = Instant::ZERO;
    table.acquire(Acquire::new(key("ns1", "a"), a.clone()), now, &mut fx).unwrap();

    let mut refused = |table: &mut LockTable<Key>, request: Acquire<Key>| {
        let keys = [key("ns1", "a"), key("ns1", "b")];
        let before = (keys.each_ref().map(|k| table.status(k)), table.keys(), table.waiting(), table.next_deadline());
        fx.clear();
        let err = table.acquire(request, now, &mut fx).unwrap_err();
        let after = (keys.each_ref().map(|k| table.status(k)), table.keys(), table.waiting(), table.next_deadline());
        assert_eq!(after, before);
        assert!(fx.is_empty());
        assert_eq!(limit(err), ("keys_per_namespace", 1));
    };
    refused(&mut table, Acquire::new(key("ns1", "b"), a.clone()));
    // Waiting on a new key is counted too.
    refused(&mut table, Acquire::new(key("ns1", "b"), b.clone()).wait(Wait::Forever));

    let mut fx = Effects::new();
    // A key already in use is not a new one.
    let waiting = Acquire::new(key("ns1", "a"), b.clone()).wait(Wait::Forever);
    assert!(matches!(table.acquire(waiting, now, &mut fx), Ok(Acquired::Waiting { .. })));
    // Other namespaces have their own count; a freed key no longer counts.
    table.acquire(Acquire::new(key("ns2", "a"), a.clone()), now, &mut fx).unwrap();
    table.release(&key("ns1", "a"), &a, None, None, now, &mut fx).unwrap();
    table.release(&key("ns1", "a"), &b, None, None, now, &mut fx).unwrap();
    table.acquire(Acquire::new(key("ns1", "b"), a), now, &mut fx).unwrap();
}

#[test]
fn sessions_limit_is_limit_exceeded() {
    let mut lab = Lab::with_limits(Limits { max_sessions: Some(1), ..Limits::default() });
    let first = lab.open_session(1000);
    let err = lab.fails(&[], |l| l.table.open_session(ms(1000), l.now, &mut l.fx));
    assert_eq!(limit(err), ("sessions", 1));
    lab.end_session(first).unwrap();
    lab.open_session(1000);
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

#[test]
fn key_new_rejects_malformed_parts_naming_the_field() {
    assert!(Key::new("game-1.prod_eu", "user:42/inventory").is_ok());
    for bad in ["", "a b", "a/b", "ü"] {
        assert_eq!(field(Key::new(bad, "x").unwrap_err()), "namespace", "{bad:?}");
    }
    assert_eq!(field(Key::new("n".repeat(129), "x").unwrap_err()), "namespace");
    for bad in ["", "a\nb", "\u{7f}"] {
        assert_eq!(field(Key::new("ns", bad).unwrap_err()), "key", "{bad:?}");
    }
    assert_eq!(field(Key::new("ns", "k".repeat(1025)).unwrap_err()), "key");
}

#[test]
fn owner_new_rejects_malformed_ids_naming_the_owner_field() {
    assert!(OwnerId::new("x".repeat(256)).is_ok());
    for bad in [String::new(), "x".repeat(257), "a\tb".to_owned()] {
        assert_eq!(field(OwnerId::new(&bad).unwrap_err()), "owner", "{bad:?}");
    }
}

#[test]
fn mode_validate_rejects_a_zero_limit_naming_the_limit_field() {
    assert_eq!(field(sem(0).validate().unwrap_err()), "limit");
    for mode in [X, S, sem(1)] {
        assert!(mode.validate().is_ok());
    }
    let mut lab = Lab::new(1);
    let err = lab.fails(&["k"], |l| l.acquire(req("k", "A", sem(0), Wait::NoWait)));
    assert_eq!(field(err), "limit");
}

#[test]
fn malformed_acquires_are_invalid_arguments_naming_the_field() {
    let mut lab = Lab::new(1);
    lab.hold("k", "B", X);
    let cases: Vec<(Acquire<String>, &str)> = vec![
        (req("k", "A", X, Wait::Forever).ttl(Duration::ZERO), "ttl"),
        (req("k", "A", X, Wait::Timeout(Duration::ZERO)), "wait"),
        (req_all(&[], "A", Wait::Forever), "keys"),
        (req("k", "A", X, Wait::Forever).request_id(""), "request_id"),
    ];
    for (request, name) in cases {
        let err = lab.fails(&["k"], |l| l.acquire(request));
        assert_eq!(field(err), name);
    }
    let err = lab.fails(&[], |l| l.table.open_session(Duration::ZERO, l.now, &mut l.fx));
    assert_eq!(field(err), "ttl");
}

// ---------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------

#[test]
fn next_deadline_reports_the_earliest_ttl_wait_session_or_lock_delay() {
    for mut lab in Lab::both() {
        let keys = lab.spread(2);
        let (held, delayed) = (keys[0].as_str(), keys[1].as_str());
        assert_eq!(lab.table.next_deadline(), None);
        lab.grant(req(held, "A", X, Wait::NoWait).ttl(ms(100)));
        assert_eq!(lab.table.next_deadline(), Some(at(100)));
        let waiter = lab.queue(req(held, "B", X, Wait::Timeout(ms(80))));
        assert_eq!(lab.table.next_deadline(), Some(at(80)));
        lab.open_session(60);
        assert_eq!(lab.table.next_deadline(), Some(at(60)));
        lab.grant(req(delayed, "C", X, Wait::NoWait).ttl(ms(10)).lock_delay(ms(30)));
        assert_eq!(lab.table.next_deadline(), Some(at(10)));

        lab.tick(10);
        assert_eq!(lab.table.next_deadline(), Some(at(40)), "the lock-delay's end, shards: {}", lab.shards());
        lab.tick(40);
        assert_eq!(lab.table.next_deadline(), Some(at(60)));
        lab.tick(60);
        assert_eq!(lab.table.next_deadline(), Some(at(80)));
        lab.tick(80);
        assert_eq!(lab.failed(), [(waiter, "timeout")]);
        assert_eq!(lab.table.next_deadline(), Some(at(100)));
        lab.tick(100);
        assert_eq!(lab.table.next_deadline(), None);
        assert_eq!(lab.table.keys(), 0);
    }
}

#[test]
fn a_late_tick_carries_out_deadlines_in_time_order() {
    let mut lab = Lab::new(1);
    // A session ends (at 10) before the hold its request waits for expires (at 50): its
    // wait is cancelled, not granted and then lost.
    let session = lab.open_session(10);
    lab.grant(req("k", "A", X, Wait::NoWait).ttl(ms(50)));
    let in_session = lab.queue(req("k", "B", X, Wait::Forever).session(session));
    // A wait runs out (at 20) before the hold it waits for expires (at 50).
    lab.grant(req("q", "A", X, Wait::NoWait).ttl(ms(50)));
    let bounded = lab.queue(req("q", "C", X, Wait::Timeout(ms(20))));

    lab.tick(100);
    let mut failed = lab.failed();
    failed.sort();
    assert_eq!(failed, [(in_session, "session_expired"), (bounded, "timeout")]);
    assert!(lab.granted().is_empty());
    assert_eq!(
        lab.lost(),
        [("k".into(), "A".into(), LostReason::Expired), ("q".into(), "A".into(), LostReason::Expired)]
    );
    assert_eq!((lab.status("k"), lab.status("q")), (None, None));
}

#[test]
fn a_cancelled_or_granted_wait_no_longer_has_a_deadline() {
    let mut lab = Lab::new(1);
    lab.hold("k", "A", X);
    let first = lab.queue(req("k", "B", X, Wait::Timeout(ms(50))));
    lab.queue(req("k", "C", X, Wait::Timeout(ms(70))));
    assert!(lab.cancel(first));
    assert_eq!(lab.table.next_deadline(), Some(at(70)));
    lab.release("k", "A").unwrap();
    assert_eq!(lab.granted().len(), 1);
    assert_eq!(lab.table.next_deadline(), None);
}

#[test]
fn request_id_retry_after_another_level_is_released_does_not_count_again() {
    // r1 and r2 enter one hold; r1's level is released; a retry of r2 (its reply was
    // lost) must answer the grant without counting a second level.
    let mut t: LockTable<&str> = LockTable::default();
    let mut fx = Effects::new();
    let o = OwnerId::new("o").unwrap();
    let now = Instant::ZERO;
    t.acquire(Acquire::new("k", o.clone()).request_id("r1"), now, &mut fx).unwrap();
    t.acquire(Acquire::new("k", o.clone()).request_id("r2"), now, &mut fx).unwrap();
    assert_eq!(t.release(&"k", &o, None, None, now, &mut fx).unwrap(), 1);
    match t.acquire(Acquire::new("k", o.clone()).request_id("r2"), now, &mut fx).unwrap() {
        Acquired::Granted(g) => {
            assert!(g.retried);
            assert_eq!(g.holds[0].count, 1);
        }
        other => panic!("expected the original grant, got {other:?}"),
    }
    assert_eq!(t.release(&"k", &o, None, None, now, &mut fx).unwrap(), 0);
    assert!(t.status(&"k").is_none());
}

/// The hot-key hand-off: a wait for one key (with or without a time bound) lives in that
/// key's shard, and a release
/// of the key's only hold hands the key to it in that shard alone, with the grant the
/// coordinator would have made. Anything the shard cannot decide alone escalates, changing
/// nothing.
#[test]
fn a_shard_hands_its_key_to_a_plain_waiter_alone_and_escalates_the_rest() {
    use tumbler_core::{Coordinator, Escalate, Shard};
    let coordinator_and_shards = || {
        let c = Coordinator::<String>::new(Config { shards: 8, ..Config::default() });
        let shards: Vec<Shard<String>> = (0..8).map(|_| c.new_shard()).collect();
        (c, shards)
    };
    let key = "hot".to_owned();
    let (mut c, mut shards) = coordinator_and_shards();
    let home = c.layout().shard_of(&key);
    let mut fx = Effects::new();
    let Acquired::Granted(first) = c.acquire(&mut shards, req("hot", "a", X, Wait::NoWait), at(0), &mut fx).unwrap()
    else {
        panic!("a free key is granted")
    };
    let Acquired::Waiting { request, .. } =
        c.acquire(&mut shards, req("hot", "b", X, Wait::Timeout(ms(50))), at(0), &mut fx).unwrap()
    else {
        panic!("a held key queues")
    };
    assert_eq!(request.home(), Some(home), "a wait for one key lives in its shard");
    assert_eq!(c.waiting(), 1);
    assert_eq!(c.next_deadline(&mut shards), Some(at(50)));
    fx.clear();
    let released = shards[home].try_release(&key, &owner("a"), None, None, || at(1), &mut fx);
    let released = released.expect("the shard decides alone").expect("a holds the key");
    assert_eq!(released.left, 0);
    let handed = released.handed.expect("the key is handed to the waiter");
    assert!(fx.wakes.is_empty(), "the caller tells the waiter it was handed: {:?}", fx.wakes);
    assert_eq!(handed.request, request);
    assert_eq!(handed.expires_at, None);
    let wake = shards[home].wake_of(&key, handed).expect("b holds the key");
    assert_eq!(wake.request, request);
    let grant = wake.outcome.as_ref().expect("the waiter is granted");
    assert_eq!(grant.owner, owner("b"));
    assert!(grant.holds[0].fencing_token > first.holds[0].fencing_token);
    let events: Vec<_> = fx.events.iter().map(|e| (e.kind, e.owner.as_str(), e.count, e.fencing_token)).collect();
    let tokens = (first.holds[0].fencing_token, grant.holds[0].fencing_token);
    assert_eq!(
        events,
        [(EventKind::Released, "a", 0, tokens.0), (EventKind::Acquired, "b", 1, tokens.1)],
        "the same events, in the same order, as a hand-off through the coordinator"
    );
    assert_eq!(c.waiting(), 0);
    assert_eq!(c.next_deadline(&mut shards), None, "a granted wait no longer runs out");
    let status = c.status(&mut shards, &key).expect("b holds the key");
    assert_eq!((status.holders.len(), status.waiters), (1, 0));
    assert_eq!(status.holders[0].holder.owner, owner("b"));

    // What the shard leaves to the coordinator: a wait with a request id, and one for
    // several keys (both kept by the coordinator), and two readers or two semaphore
    // holders that would both be granted.
    let cases: [Vec<Acquire<String>>; 4] = [
        vec![req("hot", "b", X, Wait::Forever).request_id("retry-1")],
        vec![req_all(&["hot".to_owned(), "cold".to_owned()], "b", Wait::Forever)],
        vec![req("hot", "b", S, Wait::Forever), req("hot", "c", S, Wait::Forever)],
        vec![req("hot", "b", sem(2), Wait::Forever), req("hot", "c", sem(2), Wait::Forever)],
    ];
    for waiters in cases {
        let (mut c, mut shards) = coordinator_and_shards();
        let home = c.layout().shard_of(&key);
        let mut fx = Effects::new();
        c.acquire(&mut shards, req("hot", "a", X, Wait::NoWait), at(0), &mut fx).unwrap();
        for waiter in &waiters {
            let queued = c.acquire(&mut shards, waiter.clone(), at(0), &mut fx).unwrap();
            assert!(matches!(queued, Acquired::Waiting { .. }), "{waiter:?} queues");
        }
        fx.clear();
        let before = c.status(&mut shards, &key);
        let answer = shards[home].try_release(&key, &owner("a"), Some(X), None, || at(1), &mut fx);
        assert_eq!(answer, Err(Escalate), "{waiters:?}");
        assert!(fx.is_empty(), "{waiters:?}");
        assert_eq!(c.status(&mut shards, &key), before, "{waiters:?}");
        c.release(&mut shards, &key, &owner("a"), Some(X), None, at(1), &mut fx).unwrap();
        assert!(!fx.wakes.is_empty(), "the coordinator grants what the shard left: {waiters:?}");
    }
}

/// Cancelling a wait told its key takes it from that key's queue; told a key it does not
/// wait on, it is still found. Either way it leaves, once, and the queues it leaves are
/// as if it had never waited.
#[test]
fn cancel_on_a_key_withdraws_the_wait_even_when_told_the_wrong_key() {
    use tumbler_core::{Coordinator, Shard};
    let c = &mut Coordinator::<String>::new(Config { shards: 8, ..Config::default() });
    let shards = &mut (0..8).map(|_| c.new_shard()).collect::<Vec<Shard<String>>>();
    let fx = &mut Effects::new();
    let mut wait = |c: &mut Coordinator<String>, shards: &mut Vec<Shard<String>>, key: &str, who: &str| match c
        .acquire(shards, req(key, who, X, Wait::Forever), at(0), fx)
        .unwrap()
    {
        Acquired::Waiting { request, .. } => request,
        other => panic!("{who} queues on {key}: {other:?}"),
    };
    for key in ["hot", "cold"] {
        c.acquire(shards, req(key, "a", X, Wait::NoWait), at(0), &mut Effects::new()).unwrap();
    }
    let b = wait(c, shards, "hot", "b");
    let c_hot = wait(c, shards, "hot", "c");
    let d = wait(c, shards, "cold", "d");
    assert!(b.home().is_some() && c_hot.home().is_some(), "plain waits live in their shards");

    let mut fx = Effects::new();
    assert!(c.cancel_on(shards, b, &"cold".to_owned(), at(1), &mut fx), "b is found although told the wrong key");
    assert!(c.cancel_on(shards, c_hot, &"hot".to_owned(), at(1), &mut fx));
    assert!(!c.cancel_on(shards, c_hot, &"hot".to_owned(), at(1), &mut fx), "a wait leaves once");
    assert!(fx.wakes.is_empty(), "a cancelled waiter is not woken: {:?}", fx.wakes);
    assert_eq!(c.status(shards, &"hot".to_owned()).map(|s| s.waiters), Some(0));
    assert_eq!(c.status(shards, &"cold".to_owned()).map(|s| s.waiters), Some(1), "d still waits");
    assert_eq!(c.waiting(), 1);

    c.release(shards, &"cold".to_owned(), &owner("a"), Some(X), None, at(2), &mut fx).unwrap();
    let [wake] = fx.wakes.as_slice() else { panic!("d is woken alone: {:?}", fx.wakes) };
    assert_eq!(wake.request, d);
}
