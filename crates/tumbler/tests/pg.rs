//! The PostgreSQL backend's own promises, checked against a real PostgreSQL (the
//! throw-away cluster of `tumbler-testkit`; these tests never skip). What every backend
//! promises is checked by the conformance suite (`tumbler-testkit`'s `tests/pg.rs` and
//! `tests/pg_poll.rs`); here is what only PostgreSQL shows: `pg_locks`, backends that can
//! be terminated, `lock_timeout`, transaction-scoped locks, the key spaces.
//!
//! Every test has a database of its own, so it may look at all of `pg_locks` of its
//! database, and every wait is bounded, so a broken backend fails instead of hanging.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tumbler::pg::{
    hash_key, hash_namespace, serialize, serialize_timeout, try_serialize, Namespaces, PgConfig, PgGuard, PgKey,
    PgLocker, PgLocks, WaitStrategy,
};
use tumbler::{AcquireOptions, Error, LockGuard, Locker, LockerExt, LostReason, Mode};
use tumbler_testkit::postgres::test_database;

/// How long a whole test may take.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// The bound of every single wait that should end.
const SAFETY: Duration = Duration::from_secs(10);
/// A wait bound meant to run out.
const SHORT: Duration = Duration::from_millis(200);
/// How much earlier than asked a timeout may be reported (timer granularity).
const SLACK: Duration = Duration::from_millis(15);
/// How often the health check of the tests' sessions runs.
const HEALTH_CHECK: Duration = Duration::from_millis(100);

/// Runs a test body under [`TEST_DEADLINE`].
async fn bounded(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_DEADLINE, body).await.is_err() {
        panic!("the test did not finish within {TEST_DEADLINE:?}: the backend hangs");
    }
}

/// `fut`'s output, failing the test if it takes longer than [`SAFETY`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SAFETY, fut).await.unwrap_or_else(|_| panic!("{what}: did not finish within {SAFETY:?}"))
}

/// Polls `check` every 20 ms until it holds, failing the test after [`SAFETY`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < SAFETY, "{what}: still not so after {SAFETY:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A database of the test's own on the throw-away cluster, and a pool on it for looking
/// at `pg_locks` and running plain SQL.
struct Db {
    options: PgConnectOptions,
    pool: PgPool,
}

impl Db {
    async fn new(hint: &str) -> Db {
        let cluster = test_database().await.expect("the PostgreSQL test cluster must start");
        let url = cluster.fresh_database(hint).await.expect("a fresh test database");
        let options = PgConnectOptions::from_str(&url).expect("the harness gives valid URLs");
        let pool = Db::pool_with(options.clone(), 30).await;
        Db { options, pool }
    }

    /// A new pool of at most `max` connections on the database.
    async fn pool_with(options: PgConnectOptions, max: u32) -> PgPool {
        PgPoolOptions::new().max_connections(max).connect_with(options).await.expect("connect to the test database")
    }

    async fn new_pool(&self, max: u32) -> PgPool {
        Db::pool_with(self.options.clone(), max).await
    }

    /// Locks on a pool of their own, waiting as `wait` says, with a quick health check.
    async fn locks(&self, wait: WaitStrategy) -> PgLocks {
        PgLocks::with_config(self.new_pool(20).await, PgConfig { wait, health_check: Some(HEALTH_CHECK) })
    }

    /// The advisory-lock rows of `pg_locks` in this database for `key`: `(pid, mode,
    /// granted)`, sorted.
    async fn rows(&self, key: PgKey) -> Vec<(i32, String, bool)> {
        let (classid, objid, objsubid) = pg_locks_columns(key);
        sqlx::query_as(
            "SELECT pid, mode, granted FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = $3 ORDER BY pid, mode, granted",
        )
        .bind(classid)
        .bind(objid)
        .bind(objsubid)
        .fetch_all(&self.pool)
        .await
        .expect("read pg_locks")
    }

    /// How many requests for `key` wait (are not granted) in PostgreSQL.
    async fn waiting(&self, key: PgKey) -> usize {
        self.rows(key).await.iter().filter(|(_, _, granted)| !granted).count()
    }

    /// The advisory locks (granted or awaited) of backend `pid`.
    async fn advisory_locks_of(&self, pid: i32) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1")
            .bind(pid)
            .fetch_one(&self.pool)
            .await
            .expect("read pg_locks")
    }
}

/// Where `pg_locks` lists a key, computed here from PostgreSQL's documentation (a bigint
/// key is split into its high and low 32 bits, `objsubid` 1; a pair is `(classid, objid)`
/// with `objsubid` 2), independently of the backend's own code.
fn pg_locks_columns(key: PgKey) -> (i64, i64, i16) {
    match key {
        PgKey::Id(id) => (i64::from((id as u64 >> 32) as u32), i64::from(id as u32), 1),
        PgKey::Pair(a, b) => (i64::from(a as u32), i64::from(b as u32), 2),
    }
}

async fn owner(locks: &PgLocks) -> PgLocker {
    within("opening a session", locks.owner()).await.expect("open a lock session")
}

async fn acquire(owner: &PgLocker, key: PgKey, options: AcquireOptions, what: &str) -> PgGuard {
    within(what, owner.acquire(key, options)).await.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

async fn release(guard: PgGuard, what: &str) {
    within(what, guard.release()).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
}

async fn assert_busy(owner: &PgLocker, key: PgKey, options: AcquireOptions, what: &str) {
    match within(what, owner.acquire(key, options.no_wait())).await {
        Err(Error::Busy { .. }) => {}
        other => panic!("{what}: expected busy, got {other:?}"),
    }
}

async fn assert_free(owner: &PgLocker, key: PgKey, what: &str) {
    release(acquire(owner, key, AcquireOptions::exclusive(), what).await, what).await;
}

fn spawn_acquire(
    owner: &PgLocker,
    key: PgKey,
    options: AcquireOptions,
) -> tokio::task::JoinHandle<tumbler::Result<PgGuard>> {
    let owner = owner.clone();
    tokio::spawn(async move { owner.acquire(key, options).await })
}

/// The error type of `serialize` closures in these tests: lock errors and SQL errors.
#[derive(Debug)]
enum WorkError {
    Lock(Error),
    Sql(#[allow(dead_code, reason = "shown through Debug when a test fails")] sqlx::Error),
    Abandoned,
}

impl From<Error> for WorkError {
    fn from(e: Error) -> Self {
        WorkError::Lock(e)
    }
}

impl From<sqlx::Error> for WorkError {
    fn from(e: sqlx::Error) -> Self {
        WorkError::Sql(e)
    }
}

// ---------------------------------------------------------------------------------------
// Session-level locks
// ---------------------------------------------------------------------------------------

/// go-pglock's own test: while session A holds a key, B's try fails (naming A as the
/// holder), and B's blocking wait — a real wait inside PostgreSQL — is granted once A
/// releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_contend() {
    bounded(async {
        let db = Db::new("two_sessions_contend").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (a, b) = (owner(&locks).await, owner(&locks).await);
        let k = PgKey::hashed("two_sessions_contend");

        let held = acquire(&a, k, AcquireOptions::exclusive(), "a's lock").await;
        match within("b's try", b.acquire(k, AcquireOptions::exclusive())).await {
            Err(Error::Busy { holders }) => {
                assert_eq!(holders.len(), 1, "{holders:?}");
                assert_eq!(holders[0].owner.as_str(), a.owner_id(), "busy names the holding session");
                assert_eq!(holders[0].owner.as_str(), format!("pg-{}", a.backend_pid()));
                assert_eq!(holders[0].mode, Mode::Exclusive);
            }
            other => panic!("b's try while a holds: expected busy, got {other:?}"),
        }
        assert!(within("b's try_lock", b.try_lock(k)).await.expect("try_lock").is_none());

        let waiter = spawn_acquire(&b, k, AcquireOptions::exclusive().forever());
        let b_pid = b.backend_pid();
        eventually("b's wait shows in pg_locks", || async {
            db.rows(k).await.contains(&(b_pid, "ExclusiveLock".to_owned(), false))
        })
        .await;
        assert!(!waiter.is_finished(), "b's wait ended while a holds");
        release(held, "a's release").await;
        let granted = within("b's wait", waiter).await.expect("b's task").expect("b's wait once a released");
        assert_eq!(db.rows(k).await, [(b_pid, "ExclusiveLock".to_owned(), true)]);
        assert_busy(&a, k, AcquireOptions::exclusive(), "a's try while b holds").await;
        release(granted, "b's release").await;
        assert_free(&a, k, "the key once b released").await;
    })
    .await;
}

/// The holder's backend killed from outside (`pg_terminate_backend`): PostgreSQL frees
/// its lock, another session takes it, the holder's guard learns of the loss by the health
/// check (no statement of the holder needed) as `ConnectionLost`, its release says `Lost`,
/// and the session is not silently reconnected: its next acquire fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_holder_backend_frees_the_lock_and_fires_lost() {
    bounded(async {
        let db = Db::new("terminating_the_holder").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (a, b) = (owner(&locks).await, owner(&locks).await);
        let (k, other) = (PgKey::hashed("terminated"), PgKey::hashed("terminated.other"));

        let held = acquire(&a, k, AcquireOptions::exclusive(), "a's lock").await;
        let pid = a.backend_pid();
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&db.pool)
            .await
            .expect("pg_terminate_backend");
        assert!(terminated, "pg_terminate_backend found no backend {pid}");

        let start = Instant::now();
        let reason = within("a's lost()", held.lost()).await;
        assert_eq!(reason, LostReason::ConnectionLost);
        assert!(start.elapsed() < Duration::from_secs(3), "lost() took {:?}", start.elapsed());
        assert_eq!(held.lost_reason(), Some(LostReason::ConnectionLost));

        let taken = acquire(&b, k, AcquireOptions::exclusive().timeout(Duration::from_secs(5)), "b's lock").await;
        match within("a's release", held.release()).await {
            Err(Error::Lost { reason: LostReason::ConnectionLost }) => {}
            other => panic!("a's release after its backend died: expected lost, got {other:?}"),
        }
        for (what, key) in [("the lost key", k), ("another key", other)] {
            match within("a's next acquire", a.acquire(key, AcquireOptions::exclusive())).await {
                Err(Error::Lost { reason: LostReason::ConnectionLost }) => {}
                other => panic!("a's acquire of {what} after its backend died: expected lost, got {other:?}"),
            }
        }
        // Not reconnected under the hood: same backend pid, and nothing of a's is held.
        assert_eq!(a.backend_pid(), pid);
        assert_eq!(db.advisory_locks_of(pid).await, 0);
        assert_eq!(db.rows(other).await, []);
        eventually("the terminated backend is gone", || async {
            let alive: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&db.pool)
                .await
                .expect("pg_stat_activity");
            !alive
        })
        .await;
        release(taken, "b's release").await;
        assert_free(&b, other, "the other key, which a could not take").await;
    })
    .await;
}

/// A session whose backend is killed while one of its acquires waits inside PostgreSQL:
/// the wait fails at once (neither granted nor left to its timeout), the session's other
/// holds are reported `ConnectionLost`, and the session refuses further work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_waiting_backend_fails_the_wait_and_fires_lost() {
    bounded(async {
        let db = Db::new("terminating_a_waiter").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (holder, a) = (owner(&locks).await, owner(&locks).await);
        let (k, mine) = (PgKey::hashed("terminated.wait"), PgKey::hashed("terminated.mine"));

        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;
        let kept = acquire(&a, mine, AcquireOptions::exclusive(), "a's own lock").await;
        let waiter = spawn_acquire(&a, k, AcquireOptions::exclusive().timeout(Duration::from_secs(30)));
        eventually("a's wait shows in pg_locks", || async { db.waiting(k).await == 1 }).await;
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(a.backend_pid())
            .fetch_one(&db.pool)
            .await
            .expect("pg_terminate_backend");
        assert!(terminated);

        let start = Instant::now();
        let outcome = within("a's wait", waiter).await.expect("task");
        assert!(start.elapsed() < Duration::from_secs(3), "the wait ended after {:?}", start.elapsed());
        match &outcome {
            Err(Error::Timeout | Error::Busy { .. }) | Ok(_) => {
                panic!("a's wait when its backend died: expected a connection failure, got {outcome:?}")
            }
            Err(_) => {}
        }
        assert_eq!(within("a's lost()", kept.lost()).await, LostReason::ConnectionLost);
        assert!(matches!(
            within("a's acquire", a.acquire(mine, AcquireOptions::exclusive())).await,
            Err(Error::Lost { reason: LostReason::ConnectionLost })
        ));
        assert_eq!(db.waiting(k).await, 0);
        // The dying backend frees its locks just after it reports its end: wait a little.
        let freed =
            acquire(&holder, mine, AcquireOptions::exclusive().timeout(Duration::from_secs(5)), "a's key once dead")
                .await;
        release(freed, "the holder's release of a's key").await;
        release(held, "the holder's release").await;
    })
    .await;
}

/// A wait bounded by the caller sets `lock_timeout` for its own transaction only: a
/// session whose connection has `lock_timeout = 4321ms` of its own times out after the
/// asked 200 ms, then waits past 200 ms when asked to wait forever, and its connection goes
/// back to the pool with `lock_timeout` still at 4321ms. (Checked on the very connection:
/// the pool has one, and the session hands it back when it closes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_is_restored_after_a_timed_out_wait() {
    bounded(async {
        let db = Db::new("lock_timeout_restored").await;
        let one = Db::pool_with(db.options.clone().options([("lock_timeout", "4321ms")]), 1).await;
        let locks = PgLocks::with_config(one.clone(), PgConfig { wait: WaitStrategy::Block, health_check: None });
        let others = db.locks(WaitStrategy::Block).await;
        let holder = owner(&others).await;
        let k = PgKey::hashed("lock_timeout");

        let a = owner(&locks).await;
        let pid = a.backend_pid();
        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;

        let start = Instant::now();
        match within("a's bounded wait", a.acquire(k, AcquireOptions::exclusive().timeout(SHORT))).await {
            Err(Error::Timeout) => {}
            other => panic!("a's bounded wait: expected timeout, got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(waited + SLACK >= SHORT, "timed out after {waited:?}, before the asked {SHORT:?}");
        assert!(waited < Duration::from_secs(3), "timed out after {waited:?}: the session's 4321ms applied?");

        // If the 200 ms had stuck to the session, this wait would time out.
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(SHORT * 3).await;
            held.release().await
        });
        let start = Instant::now();
        let granted = acquire(&a, k, AcquireOptions::exclusive().forever(), "a's wait for ever").await;
        assert!(start.elapsed() >= SHORT * 2, "granted after {:?}, while still held", start.elapsed());
        within("the holder's release", releaser).await.expect("task").expect("the holder's release");
        release(granted, "a's release").await;

        within("closing a", a.close()).await;
        let mut conn = within("the pool's only connection", one.acquire()).await.expect("connection back in the pool");
        let back: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.expect("pid");
        assert_eq!(back, pid, "the session's connection was not handed back to the pool");
        let setting: String = sqlx::query_scalar("SHOW lock_timeout").fetch_one(&mut *conn).await.expect("SHOW");
        assert_eq!(setting, "4321ms", "the session's own lock_timeout was not restored");
    })
    .await;
}

/// Dropping a future that waits inside PostgreSQL cancels the wait there: its row leaves
/// `pg_locks`, the lock is not granted to the abandoned request later, and the session
/// goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waiting_future_leaves_no_waiting_row_in_pg_locks() {
    bounded(async {
        let db = Db::new("dropped_waiting_future").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (holder, a, c) = (owner(&locks).await, owner(&locks).await, owner(&locks).await);
        let (k, other) = (PgKey::hashed("dropped"), PgKey::hashed("dropped.other"));
        let a_pid = a.backend_pid();

        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;
        {
            let wait = a.acquire(k, AcquireOptions::exclusive().forever());
            let mut wait = std::pin::pin!(wait);
            tokio::select! {
                outcome = &mut wait => panic!("a's wait ended while the key is held: {outcome:?}"),
                () = eventually("a's wait shows in pg_locks", || async { db.waiting(k).await == 1 }) => {}
            }
            // The waiting future is dropped here.
        }
        eventually("no waiting row left for the key", || async { db.waiting(k).await == 0 }).await;
        assert_eq!(db.rows(k).await, [(holder.backend_pid(), "ExclusiveLock".to_owned(), true)]);

        // The session works: it takes another key at once, and the key once it is free.
        let g = acquire(&a, other, AcquireOptions::exclusive(), "a's lock of another key").await;
        release(g, "a's release of the other key").await;
        release(held, "the holder's release").await;
        assert_eq!(db.advisory_locks_of(a_pid).await, 0, "the abandoned wait was granted to a later");
        assert_free(&c, k, "the key once the holder released").await;
        let g = acquire(&a, k, AcquireOptions::exclusive(), "a's lock of the key").await;
        release(g, "a's release").await;
        assert_eq!(db.advisory_locks_of(a_pid).await, 0);
    })
    .await;
}

/// A bounded wait that runs out is `timeout` (code `timeout`), not a database error, in
/// either mode; it leaves the holder holding and no waiting row behind, and the session
/// goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_reports_timeout_not_a_database_error() {
    bounded(async {
        let db = Db::new("timeout_reports_timeout").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (holder, b, c) = (owner(&locks).await, owner(&locks).await, owner(&locks).await);
        let (k, other) = (PgKey::hashed("timeout"), PgKey::hashed("timeout.other"));

        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;
        for options in [AcquireOptions::exclusive(), AcquireOptions::shared()] {
            let what = format!("b's {} wait of {SHORT:?}", options.mode_or_default());
            let start = Instant::now();
            let e = within(&what, b.acquire(k, options.timeout(SHORT))).await.expect_err(&what);
            assert!(matches!(e, Error::Timeout), "{what}: expected timeout, got {e:?}");
            assert_eq!(e.code(), "timeout");
            let waited = start.elapsed();
            assert!(waited + SLACK >= SHORT && waited < Duration::from_secs(3), "{what}: took {waited:?}");
        }
        assert_eq!(db.waiting(k).await, 0, "a timed-out wait left its row");
        assert_eq!(held.lost_reason(), None);
        assert_busy(&c, k, AcquireOptions::exclusive(), "c's try after b's timeouts").await;
        let g = acquire(&b, other, AcquireOptions::exclusive(), "b's lock of another key").await;
        release(g, "b's release").await;
        release(held, "the holder's release").await;
        assert_eq!(db.advisory_locks_of(b.backend_pid()).await, 0);
        assert_free(&b, k, "the key once released").await;
    })
    .await;
}

/// Two sessions each holding what the other waits for: PostgreSQL breaks the cycle after
/// `deadlock_timeout` (1 s), and the session whose wait it failed gets `deadlock` naming
/// itself first and the other session; the other is granted once the loser lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_reports_deadlock_naming_both_sessions() {
    bounded(async {
        let db = Db::new("deadlock").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (a, b) = (owner(&locks).await, owner(&locks).await);
        let (ka, kb) = (PgKey::hashed("deadlock.a"), PgKey::hashed("deadlock.b"));

        let mut held_a = Some(acquire(&a, ka, AcquireOptions::exclusive(), "a's lock of ka").await);
        let mut held_b = Some(acquire(&b, kb, AcquireOptions::exclusive(), "b's lock of kb").await);
        let mut wait_a = spawn_acquire(&a, kb, AcquireOptions::exclusive().forever());
        eventually("a's wait for kb shows in pg_locks", || async { db.waiting(kb).await == 1 }).await;
        let mut wait_b = spawn_acquire(&b, ka, AcquireOptions::exclusive().forever());

        let (loser, winner, failed, mut survivor) = within("the deadlock", async {
            tokio::select! {
                outcome = &mut wait_a => (&a, &b, outcome, wait_b),
                outcome = &mut wait_b => (&b, &a, outcome, wait_a),
            }
        })
        .await;
        let e = failed.expect("the loser's task").expect_err("one of the waits must fail");
        assert_eq!(e.code(), "deadlock", "{e:?}");
        let Error::Deadlock { cycle } = &e else { panic!("expected deadlock, got {e:?}") };
        let cycle: Vec<&str> = cycle.iter().map(|o| o.as_str()).collect();
        assert_eq!(cycle, [loser.owner_id(), winner.owner_id()], "the cycle starts with the failed session");

        // The winner still waits, for the key the loser holds; the loser lets go of it.
        assert!(!survivor.is_finished(), "the other wait ended too");
        let loser_hold = if std::ptr::eq(loser, &a) { held_a.take() } else { held_b.take() };
        release(loser_hold.expect("the loser's hold"), "the loser's release").await;
        let granted = within("the winner's wait", &mut survivor).await.expect("task").expect("the winner's wait");
        release(granted, "the winner's release of its new key").await;
        for guard in [held_a, held_b].into_iter().flatten() {
            release(guard, "the winner's release of its first key").await;
        }
        assert_free(&a, kb, "kb at the end").await;
        assert_free(&b, ka, "ka at the end").await;
    })
    .await;
}

/// A shared or exclusive hold of a session, asked in every combination by another: the
/// answers are PostgreSQL's (checked against plain `pg_try_advisory_lock*` calls) and
/// `pg_locks` lists the modes. Holds stack: n acquires need n releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_exclusive_matrix_matches_postgresql() {
    bounded(async {
        let db = Db::new("matrix").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (a, b) = (owner(&locks).await, owner(&locks).await);
        let mut raw = db.pool.acquire().await.expect("a plain connection");
        let lock_mode = |mode: Mode| if mode == Mode::Shared { "ShareLock" } else { "ExclusiveLock" };
        let rows = [
            (Mode::Shared, Mode::Shared, true),
            (Mode::Shared, Mode::Exclusive, false),
            (Mode::Exclusive, Mode::Shared, false),
            (Mode::Exclusive, Mode::Exclusive, false),
        ];
        for (i, (held_mode, asked_mode, compatible)) in rows.into_iter().enumerate() {
            let k = PgKey::Id(1000 + i as i64);
            let what = format!("{asked_mode} asked while {held_mode} is held");
            let held = acquire(&a, k, AcquireOptions::exclusive().mode(held_mode), &what).await;
            assert_eq!(db.rows(k).await, [(a.backend_pid(), lock_mode(held_mode).to_owned(), true)], "{what}");

            let postgres_says: bool = sqlx::query_scalar(if asked_mode == Mode::Shared {
                "SELECT pg_try_advisory_lock_shared($1)"
            } else {
                "SELECT pg_try_advisory_lock($1)"
            })
            .bind(1000 + i as i64)
            .fetch_one(&mut *raw)
            .await
            .expect("plain try");
            assert_eq!(postgres_says, compatible, "{what}: PostgreSQL's own answer");
            sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *raw).await.expect("unlock");

            match (compatible, within(&what, b.acquire(k, AcquireOptions::exclusive().mode(asked_mode))).await) {
                (true, Ok(second)) => {
                    assert_eq!(second.mode(), asked_mode);
                    assert_eq!(db.rows(k).await.len(), 2, "{what}: both sessions listed");
                    release(second, &what).await;
                }
                (false, Err(Error::Busy { holders })) => {
                    assert_eq!(holders.len(), 1, "{what}: {holders:?}");
                    assert_eq!(holders[0].owner.as_str(), a.owner_id(), "{what}");
                    assert_eq!(holders[0].mode, held_mode, "{what}");
                }
                (_, other) => panic!("{what}: expected {}, got {other:?}", if compatible { "a grant" } else { "busy" }),
            }
            release(held, &what).await;
            assert_eq!(db.rows(k).await, [], "{what}: released");
        }

        // Stacking, per mode: one release of two leaves the lock held, in pg_locks too.
        for mode in [Mode::Exclusive, Mode::Shared] {
            let k = PgKey::hashed(&format!("stacked {mode}"));
            let options = AcquireOptions::exclusive().mode(mode);
            let outer = acquire(&a, k, options.clone(), "a's first level").await;
            let inner = acquire(&a, k, options.clone(), "a's second level").await;
            release(inner, "a's release of one level").await;
            assert_eq!(db.rows(k).await, [(a.backend_pid(), lock_mode(mode).to_owned(), true)], "one level left");
            assert_busy(&b, k, AcquireOptions::exclusive(), "b's try with one level left").await;
            assert_eq!(outer.lost_reason(), None);
            release(outer, "a's release of the last level").await;
            assert_eq!(db.rows(k).await, [], "both levels released");
            assert_free(&b, k, "the key once both levels are released").await;
        }

        // Both modes at once by one session: two rows, released one by one.
        let k = PgKey::hashed("both modes");
        let exclusive = acquire(&a, k, AcquireOptions::exclusive(), "a's exclusive").await;
        let shared = acquire(&a, k, AcquireOptions::shared(), "a's shared while exclusive").await;
        assert_eq!(db.rows(k).await.len(), 2);
        release(exclusive, "a's release of exclusive").await;
        assert_eq!(db.rows(k).await, [(a.backend_pid(), "ShareLock".to_owned(), true)]);
        assert_busy(&b, k, AcquireOptions::exclusive(), "b's exclusive try while a reads").await;
        release(shared, "a's release of shared").await;
        assert_free(&b, k, "the key at the end").await;
    })
    .await;
}

/// PostgreSQL's two key spaces never meet: `(0, 1)` and `1` — the same 64 bits in
/// `pg_locks`' `classid`/`objid` — are two locks, held at once by two sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_keys_and_bigint_keys_never_meet() {
    bounded(async {
        let db = Db::new("key_spaces").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (a, b, c) = (owner(&locks).await, owner(&locks).await, owner(&locks).await);
        let namespaces = Namespaces::new().register("lobby", 0).expect("register");
        let pair = namespaces.key("lobby", 1).expect("a registered namespace");
        assert_eq!(pair, PgKey::Pair(0, 1));
        let id = PgKey::Id(1);

        let held_pair = acquire(&a, pair, AcquireOptions::exclusive(), "a's (0, 1)").await;
        let held_id = acquire(&b, id, AcquireOptions::exclusive(), "b's 1").await;
        assert_eq!(db.rows(pair).await, [(a.backend_pid(), "ExclusiveLock".to_owned(), true)]);
        assert_eq!(db.rows(id).await, [(b.backend_pid(), "ExclusiveLock".to_owned(), true)]);
        // Each is a real lock all the same.
        assert_busy(&c, pair, AcquireOptions::exclusive(), "c's try of (0, 1)").await;
        assert_busy(&c, id, AcquireOptions::exclusive(), "c's try of 1").await;
        // And a (namespace, id) pair of a hashed namespace is in the pair space too.
        let hashed = Namespaces::new().key("party", 1).expect("hashed namespace");
        assert_eq!(hashed, PgKey::Pair(hash_namespace("party"), 1));
        release(acquire(&c, hashed, AcquireOptions::exclusive(), "c's (party, 1)").await, "c's release").await;
        release(held_pair, "a's release").await;
        release(held_id, "b's release").await;
        assert_free(&c, pair, "(0, 1) at the end").await;
        assert_free(&c, id, "1 at the end").await;
    })
    .await;
}

/// `hash_key`'s documented SQL gives the same number for every string, ASCII or not —
/// and so names the very lock: a plain `pg_try_advisory_lock` of the SQL formula fails
/// while a session holds the hashed key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_key_matches_the_sql_formula() {
    bounded(async {
        let db = Db::new("hash_key").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let a = owner(&locks).await;
        let names =
            ["", "a", "orders:42", "tumbler", "a:b", "ünïcödé", "ключ", "日本語のキー", "emoji 🔒 key", "tab\tand\nnewline"];
        for name in names {
            let in_sql: i64 = sqlx::query_scalar(
                "SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint",
            )
            .bind(name)
            .fetch_one(&db.pool)
            .await
            .expect("the documented SQL");
            assert_eq!(hash_key(name), in_sql, "hash_key({name:?})");
            let namespace_in_sql: i32 = sqlx::query_scalar(
                "SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 8))::bit(32)::int",
            )
            .bind(name)
            .fetch_one(&db.pool)
            .await
            .expect("the namespace SQL");
            assert_eq!(hash_namespace(name), namespace_in_sql, "hash_namespace({name:?})");
        }

        for name in ["orders:42", "ключ", "emoji 🔒 key"] {
            let held = acquire(&a, PgKey::from(name), AcquireOptions::exclusive(), name).await;
            let got: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint)",
            )
            .bind(name)
            .fetch_one(&db.pool)
            .await
            .expect("a plain try");
            assert!(!got, "the SQL formula locked {name:?} while a session holds its hash");
            release(held, name).await;
        }
    })
    .await;
}

/// With `WaitStrategy::Poll`, a wait never waits inside PostgreSQL (no waiting row), is
/// granted within about an interval of the release, and a bounded one times out after its
/// bound. Polling declares no FIFO order and no deadlock detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_strategy_waits_and_times_out() {
    bounded(async {
        let db = Db::new("poll").await;
        let locks = db.locks(WaitStrategy::Poll { interval: Duration::from_millis(10) }).await;
        let (holder, b) = (owner(&locks).await, owner(&locks).await);
        let k = PgKey::hashed("poll");
        let caps = b.capabilities();
        assert!(!caps.fifo && !caps.deadlock_detection, "{caps:?}");
        assert_eq!(locks.capabilities(), caps);

        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;
        let start = Instant::now();
        match within("b's bounded wait", b.acquire(k, AcquireOptions::exclusive().timeout(SHORT))).await {
            Err(Error::Timeout) => {}
            other => panic!("b's bounded poll: expected timeout, got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(waited + SLACK >= SHORT && waited < Duration::from_secs(3), "timed out after {waited:?}");

        let waiter = spawn_acquire(&b, k, AcquireOptions::exclusive().forever());
        tokio::time::sleep(SHORT).await;
        assert!(!waiter.is_finished(), "b's wait ended while the key is held");
        assert_eq!(db.waiting(k).await, 0, "a polling wait shows as waiting in PostgreSQL");
        release(held, "the holder's release").await;
        let released = Instant::now();
        let granted = within("b's wait", waiter).await.expect("task").expect("b's wait once released");
        assert!(released.elapsed() < Duration::from_secs(1), "granted {:?} after the release", released.elapsed());
        release(granted, "b's release").await;

        // A bounded wait granted before its bound.
        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's second lock").await;
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(SHORT).await;
            held.release().await
        });
        let granted =
            acquire(&b, k, AcquireOptions::shared().timeout(Duration::from_secs(5)), "b's bounded wait").await;
        within("the release", releaser).await.expect("task").expect("the holder's release");
        release(granted, "b's release").await;
        assert_free(&holder, k, "the key at the end").await;
    })
    .await;
}

/// A polling wait holds its session's connection between attempts; `goodbye` and `close`
/// still end it at once (with `session_expired`), not after the poll interval — here a
/// minute long. (They used to wait for the polling wait to end on its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_and_close_interrupt_a_polling_wait_at_once() {
    bounded(async {
        let db = Db::new("poll_interrupted").await;
        let locks = db.locks(WaitStrategy::Poll { interval: Duration::from_secs(60) }).await;
        let (holder, a) = (owner(&locks).await, owner(&locks).await);
        let (k, mine) = (PgKey::hashed("poll.interrupted"), PgKey::hashed("poll.mine"));
        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;

        let kept = acquire(&a, mine, AcquireOptions::exclusive(), "a's own lock").await;
        let waiter = spawn_acquire(&a, k, AcquireOptions::exclusive().forever());
        tokio::time::sleep(SHORT).await;
        assert!(!waiter.is_finished());
        let start = Instant::now();
        let ended = within("a's goodbye", a.goodbye()).await.expect("a's goodbye");
        assert!(start.elapsed() < Duration::from_secs(2), "goodbye took {:?}", start.elapsed());
        assert_eq!(ended, 1);
        assert!(matches!(within("a's wait", waiter).await.expect("task"), Err(Error::SessionExpired)));
        assert_eq!(kept.lost_reason(), Some(LostReason::Goodbye));
        assert_eq!(db.advisory_locks_of(a.backend_pid()).await, 0);

        // The session lives on after goodbye; close ends it, interrupting its wait too.
        let waiter = spawn_acquire(&a, k, AcquireOptions::exclusive().timeout(Duration::from_secs(30)));
        tokio::time::sleep(SHORT).await;
        assert!(!waiter.is_finished());
        let start = Instant::now();
        within("closing a", a.close()).await;
        assert!(start.elapsed() < Duration::from_secs(2), "close took {:?}", start.elapsed());
        assert!(matches!(within("a's wait", waiter).await.expect("task"), Err(Error::SessionExpired)));
        release(held, "the holder's release").await;
    })
    .await;
}

/// Closing a session releases every level of every lock it holds (its live guards are
/// told the owner ended) and hands its connection back to the pool without any advisory
/// lock: the pool's only connection is the same backend, and `pg_locks` lists nothing of
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_returns_a_clean_connection_to_the_pool() {
    bounded(async {
        let db = Db::new("closing_a_session").await;
        let one = db.new_pool(1).await;
        let locks = PgLocks::with_config(one.clone(), PgConfig { wait: WaitStrategy::Block, health_check: None });
        let others = db.locks(WaitStrategy::Block).await;
        let b = owner(&others).await;
        let (k1, k2) = (PgKey::hashed("closing.1"), PgKey::Pair(7, 7));

        let a = owner(&locks).await;
        let pid = a.backend_pid();
        let outer = acquire(&a, k1, AcquireOptions::exclusive(), "a's first level").await;
        let inner = acquire(&a, k1, AcquireOptions::exclusive(), "a's second level").await;
        let shared = acquire(&a, k2, AcquireOptions::shared(), "a's shared").await;
        assert_eq!(db.advisory_locks_of(pid).await, 2);

        within("closing a", a.close()).await;
        assert_eq!(within("a's lost()", inner.lost()).await, LostReason::OwnerEnded);
        assert_eq!(outer.lost_reason(), Some(LostReason::OwnerEnded));
        match within("a's release after close", shared.release()).await {
            Err(Error::Lost { reason: LostReason::OwnerEnded }) => {}
            other => panic!("releasing a guard of a closed session: expected lost, got {other:?}"),
        }
        drop((outer, inner));

        let mut conn = within("the pool's only connection", one.acquire()).await.expect("connection back in the pool");
        let back: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.expect("pid");
        assert_eq!(back, pid, "the session's connection was closed instead of handed back");
        let mine: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .expect("pg_locks");
        assert_eq!(mine, 0, "the connection came back holding advisory locks");
        // SAVEPOINT fails outside a transaction block.
        let savepoint = sqlx::query("SAVEPOINT probe").execute(&mut *conn).await;
        assert!(savepoint.is_err(), "the connection came back inside a transaction");
        drop(conn);
        assert_free(&b, k1, "k1 once a closed").await;
        assert_free(&b, k2, "k2 once a closed").await;
    })
    .await;
}

/// Closing a session while one of its acquires waits inside PostgreSQL: the wait ends
/// with `session_expired`, and the connection still goes back to the pool clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_waiting_session_cancels_the_wait_and_returns_a_clean_connection() {
    bounded(async {
        let db = Db::new("closing_a_waiting_session").await;
        // Two connections: the session's, and one to cancel its wait from.
        let two = db.new_pool(2).await;
        let locks = PgLocks::with_config(two.clone(), PgConfig { wait: WaitStrategy::Block, health_check: None });
        let others = db.locks(WaitStrategy::Block).await;
        let holder = owner(&others).await;
        let (k, mine) = (PgKey::hashed("closing.waiting"), PgKey::hashed("closing.mine"));

        let held = acquire(&holder, k, AcquireOptions::exclusive(), "the holder's lock").await;
        let a = owner(&locks).await;
        let pid = a.backend_pid();
        let kept = acquire(&a, mine, AcquireOptions::exclusive(), "a's own lock").await;
        let waiter = spawn_acquire(&a, k, AcquireOptions::exclusive().forever());
        eventually("a's wait shows in pg_locks", || async { db.waiting(k).await == 1 }).await;

        within("closing a", a.close()).await;
        match within("a's wait", waiter).await.expect("task") {
            Err(Error::SessionExpired) => {}
            other => panic!("a's wait when its session closed: expected session_expired, got {other:?}"),
        }
        assert_eq!(kept.lost_reason(), Some(LostReason::OwnerEnded));
        assert_eq!(db.waiting(k).await, 0);
        assert_eq!(db.advisory_locks_of(pid).await, 0);

        let (mut c1, mut c2) = within("both pool connections", async {
            (two.acquire().await.expect("connection"), two.acquire().await.expect("connection"))
        })
        .await;
        let mut pids = Vec::new();
        for conn in [&mut c1, &mut c2] {
            pids.push(
                sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut **conn).await.expect("pid"),
            );
        }
        assert!(pids.contains(&pid), "the session's connection {pid} was closed instead of handed back: {pids:?}");
        drop((c1, c2));
        release(held, "the holder's release").await;
        assert_free(&holder, mine, "a's key once a closed").await;
    })
    .await;
}

/// What PostgreSQL cannot do is refused with `not_supported` — a semaphore, a TTL, a
/// retry id, a lock-delay — whether the request would wait or not, one key or several,
/// and nothing is held afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_options_are_rejected_and_nothing_is_held() {
    bounded(async {
        let db = Db::new("unsupported_options").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let (a, b) = (owner(&locks).await, owner(&locks).await);
        let (k1, k2) = (PgKey::hashed("unsupported.1"), PgKey::hashed("unsupported.2"));
        let requests = [
            ("semaphore", AcquireOptions::semaphore(2)),
            ("semaphore", AcquireOptions::semaphore(2).forever()),
            ("ttl", AcquireOptions::exclusive().ttl(Duration::from_secs(30))),
            ("ttl", AcquireOptions::shared().ttl(Duration::from_secs(30)).timeout(SHORT)),
            ("request_id", AcquireOptions::exclusive().request_id("retry-1").forever()),
            ("lock_delay", AcquireOptions::exclusive().lock_delay(Duration::from_secs(1))),
        ];
        for (operation, options) in requests {
            let what = format!("{options:?}");
            for e in [
                within(&what, a.acquire(k1, options.clone())).await.expect_err(&what),
                within(&what, a.acquire_all(vec![k1, k2], options.clone())).await.expect_err(&what),
            ] {
                match &e {
                    Error::NotSupported { operation: op, backend: "pg" } => assert_eq!(*op, operation, "{what}"),
                    other => panic!("{what}: expected not_supported, got {other:?}"),
                }
                assert_eq!(e.code(), "invalid_argument");
            }
        }
        assert_eq!(db.advisory_locks_of(a.backend_pid()).await, 0, "a refused request left a lock");
        assert_eq!(db.rows(k1).await, []);
        assert_free(&b, k1, "k1 after the refused requests").await;
        assert_free(&b, k2, "k2 after the refused requests").await;
        assert_free(&a, k1, "a's own lock after its refused requests").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Transaction-scoped locks
// ---------------------------------------------------------------------------------------

/// `serialize` holds `pg_advisory_xact_lock` while its closure runs — on the closure's
/// own transaction, where a session lock of the key by another session is busy — and
/// the commit releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xact_lock_is_released_on_commit() {
    bounded(async {
        let db = Db::new("xact_commit").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let b = owner(&locks).await;
        let k = PgKey::hashed("xact.commit");
        let (classid, objid, objsubid) = pg_locks_columns(k);

        let value = within(
            "serialize",
            serialize(&db.pool, k, async |tx| {
                let mine: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND pid = pg_backend_pid() AND mode = 'ExclusiveLock' \
                     AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = $3)",
                )
                .bind(classid)
                .bind(objid)
                .bind(objsubid)
                .fetch_one(&mut **tx)
                .await?;
                // A transaction-scoped lock lives only as long as its transaction: the
                // closure's queries run in it.
                assert!(mine, "the closure's transaction does not hold the lock");
                assert_busy(&b, k, AcquireOptions::exclusive(), "b's session lock while serialize runs").await;
                assert_busy(&b, k, AcquireOptions::shared(), "b's shared session lock while serialize runs").await;
                Ok::<_, WorkError>(42)
            }),
        )
        .await
        .expect("serialize");
        assert_eq!(value, 42);
        assert_eq!(db.rows(k).await, [], "the commit did not release the lock");
        assert_free(&b, k, "the key after the commit").await;
    })
    .await;
}

/// A closure that returns an error rolls its transaction back — its writes are gone — and
/// the rollback releases the lock; the closure's error is what `serialize` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xact_lock_is_released_on_rollback() {
    bounded(async {
        let db = Db::new("xact_rollback").await;
        sqlx::query("CREATE TABLE marks (x int)").execute(&db.pool).await.expect("create table");
        let locks = db.locks(WaitStrategy::Block).await;
        let b = owner(&locks).await;
        let k = PgKey::hashed("xact.rollback");

        let outcome = within(
            "serialize",
            serialize(&db.pool, k, async |tx| {
                sqlx::query("INSERT INTO marks VALUES (1)").execute(&mut **tx).await?;
                Err::<(), _>(WorkError::Abandoned)
            }),
        )
        .await;
        assert!(matches!(outcome, Err(WorkError::Abandoned)), "{outcome:?}");
        let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM marks").fetch_one(&db.pool).await.expect("count");
        assert_eq!(marks, 0, "the closure's write survived its error");
        assert_eq!(db.rows(k).await, []);
        assert_free(&b, k, "the key after the rollback").await;
    })
    .await;
}

/// A closure that panics (in a task of its own) rolls back and releases the lock before
/// the panic goes on: once the task is joined, another session takes the key at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xact_lock_is_released_on_panic() {
    bounded(async {
        let db = Db::new("xact_panic").await;
        sqlx::query("CREATE TABLE marks (x int)").execute(&db.pool).await.expect("create table");
        let locks = db.locks(WaitStrategy::Block).await;
        let b = owner(&locks).await;
        let k = PgKey::hashed("xact.panic");

        let pool = db.pool.clone();
        let task = tokio::spawn(async move {
            serialize(&pool, k, async |tx| -> Result<(), WorkError> {
                sqlx::query("INSERT INTO marks VALUES (1)").execute(&mut **tx).await?;
                panic!("deliberate panic inside serialize");
            })
            .await
        });
        let joined = within("the panicking task", task).await;
        assert!(joined.as_ref().is_err_and(|e| e.is_panic()), "the closure should have panicked: {joined:?}");
        // At once: a try, no wait.
        assert_free(&b, k, "the key right after the panic").await;
        let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM marks").fetch_one(&db.pool).await.expect("count");
        assert_eq!(marks, 0, "the panicking closure's write survived");
    })
    .await;
}

/// Transaction-scoped and session-scoped advisory locks of one key conflict in
/// PostgreSQL: `try_serialize` is busy (without running its closure) while a session
/// holds the key, in either mode, and runs once the key is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_serialize_is_busy_while_a_session_holds_the_key() {
    bounded(async {
        let db = Db::new("try_serialize").await;
        let locks = db.locks(WaitStrategy::Block).await;
        let a = owner(&locks).await;
        let k = PgKey::Pair(3, 4);
        let ran = AtomicBool::new(false);

        for mode in [Mode::Exclusive, Mode::Shared] {
            let held = acquire(&a, k, AcquireOptions::exclusive().mode(mode), "a's session lock").await;
            let outcome = within(
                "try_serialize",
                try_serialize(&db.pool, k, async |_| {
                    ran.store(true, Ordering::SeqCst);
                    Ok::<_, WorkError>(())
                }),
            )
            .await;
            assert!(matches!(outcome, Err(WorkError::Lock(Error::Busy { .. }))), "{mode}: {outcome:?}");
            assert!(!ran.load(Ordering::SeqCst), "the closure ran without the lock");
            assert_eq!(held.lost_reason(), None);
            release(held, "a's release").await;
        }
        let outcome = within(
            "try_serialize of a free key",
            try_serialize(&db.pool, k, async |_| {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, WorkError>(7)
            }),
        )
        .await;
        assert!(matches!(outcome, Ok(7)), "{outcome:?}");
        assert!(ran.load(Ordering::SeqCst));
        assert_free(&a, k, "the key at the end").await;
    })
    .await;
}

/// `serialize_timeout` on a held key fails with `timeout` after its bound, without
/// running its closure, and its `lock_timeout` was its transaction's only: the pool's
/// connection is back at the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialize_timeout_reports_timeout() {
    bounded(async {
        let db = Db::new("serialize_timeout").await;
        let one = db.new_pool(1).await;
        let locks = db.locks(WaitStrategy::Block).await;
        let a = owner(&locks).await;
        let k = PgKey::hashed("xact.timeout");
        let ran = AtomicBool::new(false);

        let held = acquire(&a, k, AcquireOptions::exclusive(), "a's session lock").await;
        let start = Instant::now();
        let outcome = within(
            "serialize_timeout",
            serialize_timeout(&one, k, SHORT, async |_| {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, WorkError>(())
            }),
        )
        .await;
        let waited = start.elapsed();
        assert!(matches!(outcome, Err(WorkError::Lock(Error::Timeout))), "{outcome:?}");
        assert!(waited + SLACK >= SHORT && waited < Duration::from_secs(3), "timed out after {waited:?}");
        assert!(!ran.load(Ordering::SeqCst), "the closure ran without the lock");
        assert_eq!(db.waiting(k).await, 0);
        let setting: String = sqlx::query_scalar("SHOW lock_timeout").fetch_one(&one).await.expect("SHOW");
        assert_eq!(setting, "0", "serialize_timeout's lock_timeout outlived its transaction");
        release(held, "a's release").await;

        let value = within(
            "serialize_timeout of a free key",
            serialize_timeout(&one, k, SHORT, async |_| Ok::<_, WorkError>("ran")),
        )
        .await
        .expect("serialize_timeout of a free key");
        assert_eq!(value, "ran");
    })
    .await;
}

/// The closure's queries run in the lock's transaction: twenty concurrent
/// read-modify-write increments of one counter (with a pause between the read and the
/// write) each see the previous one's commit, and the counter ends at exactly 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialize_runs_its_queries_inside_the_transaction() {
    bounded(async {
        let db = Db::new("serialize_counter").await;
        sqlx::query("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
            .execute(&db.pool)
            .await
            .expect("table");
        sqlx::query("INSERT INTO counter VALUES (1, 0)").execute(&db.pool).await.expect("insert");
        let pool = db.new_pool(21).await;
        /// Reads the counter, pauses, writes it plus one; answers what it read.
        async fn increment(conn: &mut PgConnection) -> Result<i32, WorkError> {
            let n: i32 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1").fetch_one(&mut *conn).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
            sqlx::query("UPDATE counter SET n = $1 WHERE id = 1").bind(n + 1).execute(&mut *conn).await?;
            Ok(n)
        }

        // Each in a task of its own, on a connection of its own.
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { serialize(&pool, "counter:1", async |tx| increment(tx).await).await })
            })
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(within("an increment", task).await.expect("task").expect("an increment"));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..20).collect::<Vec<i32>>(), "each increment must see the one before");
        let n: i32 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1").fetch_one(&db.pool).await.expect("n");
        assert_eq!(n, 20);
    })
    .await;
}
