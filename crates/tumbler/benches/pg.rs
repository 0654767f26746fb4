//! The PostgreSQL backend beside plain sqlx, on the throw-away test cluster, in one run
//! (`cargo bench -p tumbler --features postgres --bench pg`; results and how to read them
//! in `docs/BENCHMARKS.md`). A plain `main` that prints tables: every figure comes from
//! wall-clock runs of fixed size after a warm-up.
//!
//! - **Throughput**: acquire + release pairs per second by one session, uncontended, on
//!   keys cycling through [`KEYS`] distinct `bigint`s. Contenders, each on a dedicated
//!   connection of the same pool:
//!   - `sqlx try`: the very statements of the backend's uncontended path,
//!     `SELECT pg_try_advisory_lock($1), pg_backend_pid()` then `SELECT
//!     pg_advisory_unlock($1)`, issued directly — the fair baseline, since the backend's
//!     overhead is then only what it does besides those two round trips;
//!   - `sqlx lock`: `SELECT pg_advisory_lock($1)` then `SELECT pg_advisory_unlock($1)`,
//!     what a hand-written blocking lock does (also two round trips), for reference;
//!   - `tumbler try` (`AcquireOptions::exclusive()`) and `tumbler wait`
//!     (`AcquireOptions::exclusive().forever()`) through [`PgLocker`], then
//!     `guard.release()`.
//!
//!   The contenders take turns in [`ROUNDS`] rounds (the order rotating each round) so
//!   that drift in the machine hits all alike; the overhead is the median over rounds of
//!   the backend's time per pair over the baseline's in the same round.
//! - **Hand-off**: session A holds a key, session B waits for it (`forever`); once B is
//!   seen waiting (an ungranted row in `pg_locks` for `Block`; its failed
//!   `pg_try_advisory_lock` having run for `Poll`, then a uniformly random part of the
//!   poll interval, so that releases fall at every phase of B's polling), A releases. A
//!   sample is the time from just before A's `release()` to just after B's `acquire()`
//!   returns.
//!
//! Everything runs on one current-thread tokio runtime: each figure is a chain of round
//! trips, and a single thread adds no cross-thread wake-ups to either side. Sessions run
//! with `health_check: None`, so no background statement shares their connections.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Postgres;
use tumbler::pg::{PgConfig, PgKey, PgLocker, PgLocks, WaitStrategy};
use tumbler::{AcquireOptions, LockGuard, Locker};

/// Distinct keys the throughput contenders cycle through.
const KEYS: i64 = 1024;
/// First key of this benchmark ("tumb" in the high word), away from anyone else's.
const KEY_BASE: i64 = 0x7475_6d62_0000_0000;
/// Pairs each throughput contender does before anything is measured.
const WARMUP_PAIRS: u64 = 2_000;
/// Measured throughput rounds, and pairs per contender per round.
const ROUNDS: usize = 200;
const ROUND_PAIRS: u64 = 500;

/// The hand-off runs: strategy, measured iterations, warm-up iterations.
const HANDOFFS: [(WaitStrategy, usize, usize); 3] = [
    (WaitStrategy::Block, 300, 20),
    (WaitStrategy::Poll { interval: Duration::from_millis(10) }, 300, 5),
    (WaitStrategy::Poll { interval: Duration::from_millis(100) }, 100, 2),
];

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let started = Instant::now();
    let db = tumbler_testkit::postgres::test_database().await.expect("the PostgreSQL test cluster must start");
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(db.connect_options())
        .await
        .expect("connecting to the PostgreSQL test cluster");
    print_machine(&pool).await;
    throughput(&pool).await;
    handoffs(&pool).await;
    println!("\ntotal run time: {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------

async fn print_machine(pool: &PgPool) {
    let cpus = tumbler_testkit::machine::cpus();
    let model = tumbler_testkit::machine::cpu_model();
    let version: String =
        sqlx::query_scalar("SELECT version()").fetch_one(pool).await.expect("asking the server its version");
    println!("machine: {cpus} CPUs ({model})");
    println!("server:  {version}");
    println!("client:  sqlx 0.8, one current-thread tokio runtime, server on the same host over 127.0.0.1 TCP");
}

// ---------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------

/// One way of taking and releasing the lock of a key, each on a connection of its own.
enum Contender {
    /// The backend's own uncontended statements, issued directly.
    SqlxTry { conn: PoolConnection<Postgres>, pid: i32 },
    /// A hand-written blocking lock.
    SqlxLock { conn: PoolConnection<Postgres> },
    /// The backend, with these options.
    Tumbler { name: &'static str, locker: PgLocker, options: AcquireOptions },
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::SqlxTry { .. } => "sqlx try",
            Contender::SqlxLock { .. } => "sqlx lock",
            Contender::Tumbler { name, .. } => name,
        }
    }

    async fn pair(&mut self, key: i64) {
        match self {
            Contender::SqlxTry { conn, pid } => {
                let (got, on): (bool, i32) = sqlx::query_as("SELECT pg_try_advisory_lock($1), pg_backend_pid()")
                    .bind(key)
                    .fetch_one(&mut **conn)
                    .await
                    .expect("pg_try_advisory_lock");
                assert!(got && on == *pid, "an uncontended try succeeds on the connection's own backend");
                let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .fetch_one(&mut **conn)
                    .await
                    .expect("pg_advisory_unlock");
                assert!(released, "the lock just taken is released");
            }
            Contender::SqlxLock { conn } => {
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(key)
                    .execute(&mut **conn)
                    .await
                    .expect("pg_advisory_lock");
                let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .fetch_one(&mut **conn)
                    .await
                    .expect("pg_advisory_unlock");
                assert!(released, "the lock just taken is released");
            }
            Contender::Tumbler { locker, options, .. } => {
                let guard = locker.acquire(PgKey::Id(key), options.clone()).await.expect("an uncontended acquire");
                guard.release().await.expect("releasing the lock just taken");
            }
        }
    }

    /// Does `pairs` pairs, starting at key number `from`; returns the time they took.
    async fn run(&mut self, from: u64, pairs: u64) -> Duration {
        let started = Instant::now();
        for i in from..from + pairs {
            self.pair(KEY_BASE + (i as i64 % KEYS)).await;
        }
        started.elapsed()
    }
}

async fn throughput(pool: &PgPool) {
    let locks = PgLocks::with_config(pool.clone(), PgConfig { wait: WaitStrategy::Block, health_check: None });
    let mut raw = pool.acquire().await.expect("a connection");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *raw).await.expect("the backend pid");
    let mut contenders = vec![
        Contender::SqlxTry { conn: raw, pid },
        Contender::SqlxLock { conn: pool.acquire().await.expect("a connection") },
        Contender::Tumbler {
            name: "tumbler try",
            locker: locks.owner().await.expect("a session"),
            options: AcquireOptions::exclusive(),
        },
        Contender::Tumbler {
            name: "tumbler wait",
            locker: locks.owner().await.expect("a session"),
            options: AcquireOptions::exclusive().forever(),
        },
    ];
    for contender in &mut contenders {
        contender.run(0, WARMUP_PAIRS).await;
    }
    // times[contender][round]
    let mut times = vec![Vec::with_capacity(ROUNDS); contenders.len()];
    for round in 0..ROUNDS {
        for turn in 0..contenders.len() {
            let which = (round + turn) % contenders.len();
            let elapsed = contenders[which].run(WARMUP_PAIRS + (round as u64) * ROUND_PAIRS, ROUND_PAIRS).await;
            times[which].push(elapsed);
        }
    }

    println!(
        "\nthroughput: one session, uncontended, {KEYS} keys cycled; {ROUNDS} rounds x {ROUND_PAIRS} pairs per contender, turns rotating"
    );
    println!(
        "{:<14} {:>10} {:>12} {:>12} {:>9} {:>10}",
        "contender", "pairs/s", "min pairs/s", "max pairs/s", "us/pair", "overhead"
    );
    let baseline = &times[0];
    for (contender, times) in contenders.iter().zip(&times) {
        let mut rates: Vec<f64> = times.iter().map(|t| ROUND_PAIRS as f64 / t.as_secs_f64()).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        // Per round, against the baseline's time in the same round.
        let mut ratios: Vec<f64> =
            times.iter().zip(baseline).map(|(t, base)| t.as_secs_f64() / base.as_secs_f64() - 1.0).collect();
        ratios.sort_by(f64::total_cmp);
        let overhead = ratios[ratios.len() / 2];
        println!(
            "{:<14} {:>10.0} {:>12.0} {:>12.0} {:>9.1} {:>+9.1}%",
            contender.name(),
            median,
            rates[0],
            rates[rates.len() - 1],
            1e6 / median,
            overhead * 100.0,
        );
    }
    for contender in contenders {
        if let Contender::Tumbler { locker, .. } = contender {
            locker.close().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hand-off
// ---------------------------------------------------------------------------------------

async fn handoffs(pool: &PgPool) {
    let mut monitor = pool.acquire().await.expect("a connection to watch the waiter from");
    println!("\nhand-off: from just before A's release() to just after B's acquire(forever) returns");
    println!("{:<16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}", "strategy", "n", "p50", "p90", "p99", "min", "max");
    for (index, (strategy, iterations, warmup)) in HANDOFFS.into_iter().enumerate() {
        let key = PgKey::Id(KEY_BASE + KEYS + index as i64);
        let mut samples = handoff(pool, &mut monitor, strategy, key, iterations, warmup).await;
        samples.sort();
        let name = match strategy {
            WaitStrategy::Block => "Block".to_owned(),
            WaitStrategy::Poll { interval } => format!("Poll {} ms", interval.as_millis()),
        };
        let show = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        println!(
            "{:<16} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            samples.len(),
            show(percentile(&samples, 0.50)),
            show(percentile(&samples, 0.90)),
            show(percentile(&samples, 0.99)),
            show(samples[0]),
            show(samples[samples.len() - 1]),
        );
    }
}

/// `iterations` hand-offs of `key` from one session to another (after `warmup` unmeasured
/// ones); returns the latencies.
async fn handoff(
    pool: &PgPool,
    monitor: &mut PoolConnection<Postgres>,
    strategy: WaitStrategy,
    key: PgKey,
    iterations: usize,
    warmup: usize,
) -> Vec<Duration> {
    let locks = PgLocks::with_config(pool.clone(), PgConfig { wait: strategy, health_check: None });
    let holder = locks.owner().await.expect("a session");
    let waiter = locks.owner().await.expect("a session");
    let mut rng = StdRng::seed_from_u64(42);
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let held = holder.acquire(key, AcquireOptions::exclusive()).await.expect("A takes the free key");
        let waiting = {
            let waiter = waiter.clone();
            tokio::spawn(async move {
                let guard = waiter.acquire(key, AcquireOptions::exclusive().forever()).await.expect("B's wait");
                let granted_at = Instant::now();
                guard.release().await.expect("B releases");
                granted_at
            })
        };
        wait_until_waiting(monitor, waiter.backend_pid(), strategy).await;
        if let WaitStrategy::Poll { interval } = strategy {
            tokio::time::sleep(rng.gen_range(Duration::ZERO..interval)).await;
        }
        let released_at = Instant::now();
        held.release().await.expect("A releases");
        let granted_at = waiting.await.expect("B's task");
        if i >= warmup {
            samples.push(granted_at - released_at);
        }
    }
    holder.close().await;
    waiter.close().await;
    samples
}

/// Returns once the session of backend `pid` is waiting for a lock: queued in PostgreSQL
/// (`Block`), or past its first, failed, try (`Poll`).
async fn wait_until_waiting(monitor: &mut PoolConnection<Postgres>, pid: i32, strategy: WaitStrategy) {
    let probe = match strategy {
        WaitStrategy::Block => {
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND NOT granted)"
        }
        // The waiter's last statement before this wait was the unlock of its previous
        // hold (or its session's first query): a try shown idle is the failed one.
        WaitStrategy::Poll { .. } => {
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'idle' \
             AND query LIKE 'SELECT pg_try_advisory_lock%')"
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: bool =
            sqlx::query_scalar(probe).bind(pid).fetch_one(&mut **monitor).await.expect("watching the waiter");
        if waiting {
            return;
        }
        assert!(Instant::now() < deadline, "the waiter never started waiting");
        tokio::task::yield_now().await;
    }
}

/// The nearest-rank percentile `q` of sorted `samples`.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}
