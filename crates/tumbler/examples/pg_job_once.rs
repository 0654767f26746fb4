//! A scheduled job run by several servers at once, executed exactly once per tick.
//!
//! Every server (here a task with a PostgreSQL session of its own, as a separate process
//! would have) wakes on the same schedule and *tries* the job's lock: the one that gets it
//! runs the job, the others skip at once instead of queueing behind it (go-pglock's
//! `Lock`, Elixir's `lock`). A try alone promises "at most one at a time", not "once per
//! tick" — a server whose clock is late could take the lock after the winner has finished
//! — so the winner also checks, under the lock, that the tick has not been run yet.
//!
//! Run it with `cargo run -p tumbler --features postgres --example pg_job_once`; it uses
//! `DATABASE_URL` when set, otherwise a throw-away PostgreSQL cluster.

mod pg_support;

use std::time::Duration;

use pg_support::BoxError;
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tumbler::pg::{PgKey, PgLocks};
use tumbler::{LockGuard, LockerExt};

const SERVERS: usize = 5;
const TICKS: i64 = 8;
const TICK: Duration = Duration::from_millis(100);
/// How long the job takes: longer than the servers' clocks disagree.
const JOB_TAKES: Duration = Duration::from_millis(40);

/// What one server did over the whole run.
#[derive(Debug, Default)]
struct Tally {
    ran: Vec<i64>,
    skipped_busy: usize,
    skipped_done: usize,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pool = pg_support::database("pg_job_once", 2 * SERVERS as u32 + 2).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS tumbler_example_job_runs;
         CREATE TABLE tumbler_example_job_runs (tick bigint PRIMARY KEY, server int NOT NULL)",
    )
    .execute(&pool)
    .await?;

    let locks = PgLocks::new(pool.clone());
    let job = PgKey::hashed("tumbler-example:nightly-cleanup");
    let (clock, _) = broadcast::channel::<i64>(TICKS as usize);
    let mut servers = JoinSet::new();
    for server in 0..SERVERS {
        // One session per server: each is a different owner to PostgreSQL.
        let locker = locks.owner().await?;
        let mut ticks = clock.subscribe();
        let pool = pool.clone();
        servers.spawn(async move {
            let mut tally = Tally::default();
            while let Ok(tick) = ticks.recv().await {
                // Servers' clocks are never quite in step.
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 10)).await;
                let Some(guard) = locker.try_lock(job).await? else {
                    tally.skipped_busy += 1;
                    continue;
                };
                if already_ran(&pool, tick).await? {
                    tally.skipped_done += 1;
                } else {
                    run_job(&pool, tick, server).await?;
                    tally.ran.push(tick);
                }
                guard.release().await?;
            }
            Ok::<_, BoxError>((server, tally))
        });
    }

    for tick in 1..=TICKS {
        clock.send(tick)?;
        tokio::time::sleep(TICK).await;
    }
    drop(clock);

    let mut tallies = Vec::new();
    while let Some(done) = servers.join_next().await {
        tallies.push(done??);
    }
    tallies.sort_by_key(|(server, _)| *server);
    for (server, tally) in &tallies {
        println!(
            "server {server}: ran ticks {:?}, skipped {} (busy {}, already run {})",
            tally.ran,
            tally.skipped_busy + tally.skipped_done,
            tally.skipped_busy,
            tally.skipped_done
        );
    }

    // The invariant: every tick ran exactly once (the primary key refuses a second run,
    // so a double run would have failed the server above).
    let runs: Vec<(i64, i32)> =
        sqlx::query_as("SELECT tick, server FROM tumbler_example_job_runs ORDER BY tick").fetch_all(&pool).await?;
    assert_eq!(runs.iter().map(|(tick, _)| *tick).collect::<Vec<_>>(), (1..=TICKS).collect::<Vec<_>>());
    let ran: usize = tallies.iter().map(|(_, t)| t.ran.len()).sum();
    let skipped: usize = tallies.iter().map(|(_, t)| t.skipped_busy + t.skipped_done).sum();
    assert_eq!(ran, TICKS as usize);
    assert_eq!(ran + skipped, SERVERS * TICKS as usize);
    println!("ok: {TICKS} ticks on {SERVERS} servers, each tick run exactly once, {skipped} skips");

    sqlx::raw_sql("DROP TABLE tumbler_example_job_runs").execute(&pool).await?;
    Ok(())
}

/// Whether `tick` was already run, by a server that took the lock before us.
async fn already_ran(pool: &PgPool, tick: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tumbler_example_job_runs WHERE tick = $1)")
        .bind(tick)
        .fetch_one(pool)
        .await
}

/// The job: some work, then the record that this tick is done.
async fn run_job(pool: &PgPool, tick: i64, server: usize) -> Result<(), sqlx::Error> {
    tokio::time::sleep(JOB_TAKES).await;
    sqlx::query("INSERT INTO tumbler_example_job_runs (tick, server) VALUES ($1, $2)")
        .bind(tick)
        .bind(server as i32)
        .execute(pool)
        .await?;
    Ok(())
}
