//! Schema migrations at start-up, run by several processes, applied exactly once.
//!
//! Every process of a deployment starts at once and runs the migrations. Each takes one
//! exclusive lock, waiting for it with a timeout: the first applies what is missing while
//! the others queue inside PostgreSQL; each of them then finds the schema up to date and
//! starts. A process whose timeout runs out first fails to start instead of hanging (an
//! impatient one shows it here), to be restarted by its supervisor.
//!
//! The migrations are not idempotent (`CREATE TABLE`, `ADD COLUMN`): applied twice, the
//! second would fail. The lock is what keeps that from happening — and what lets the
//! bookkeeping table be created with `IF NOT EXISTS`, which is not safe concurrently.
//!
//! Run it with `cargo run -p tumbler --features postgres --example pg_migration_lock`;
//! it uses `DATABASE_URL` when set, otherwise a throw-away PostgreSQL cluster.

mod pg_support;

use std::time::{Duration, Instant};

use pg_support::BoxError;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tumbler::pg::{PgKey, PgLocks};
use tumbler::{AcquireOptions, Error, LockerExt};

const PROCESSES: [&str; 4] = ["a", "b", "c", "d"];
const MIGRATIONS: [(i32, &str, &str); 2] = [
    (1, "create widgets", "CREATE TABLE tumbler_example_widgets (id bigserial PRIMARY KEY, name text NOT NULL)"),
    (2, "add colour", "ALTER TABLE tumbler_example_widgets ADD COLUMN colour text"),
];
/// A slow migration, so the other processes really do wait.
const EACH_TAKES: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pool = pg_support::database("pg_migration_lock", 12).await?;
    drop_tables(&pool).await?;
    let locks = PgLocks::new(pool.clone());

    let started = Instant::now();
    let mut processes = JoinSet::new();
    for name in PROCESSES {
        processes.spawn(start_up(locks.clone(), pool.clone(), name, Duration::from_secs(10)));
    }
    // One more process, started while the migration runs, that waits only 50 ms.
    tokio::time::sleep(Duration::from_millis(50)).await;
    match start_up(locks.clone(), pool.clone(), "e", Duration::from_millis(50)).await {
        Err(Error::Timeout) => println!("process e: gave up after waiting 50 ms; it would exit and be restarted"),
        other => panic!("process e should have timed out, got {other:?}"),
    }

    let mut appliers = Vec::new();
    while let Some(done) = processes.join_next().await {
        let (name, applied) = done??;
        if !applied.is_empty() {
            appliers.push(name);
        }
    }

    // The invariant: each migration applied once, all by one process, and the schema is
    // the final one.
    let versions: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, applied_by FROM tumbler_example_schema_migrations ORDER BY version")
            .fetch_all(&pool)
            .await?;
    assert_eq!(versions.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(appliers.len(), 1, "migrations applied by {appliers:?}");
    assert!(versions.iter().all(|(_, by)| *by == appliers[0]));
    let colour: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'tumbler_example_widgets' AND column_name = 'colour')",
    )
    .fetch_one(&pool)
    .await?;
    assert!(colour);
    println!(
        "ok: {} processes started in {} ms; {} migrations applied exactly once, by process {}",
        PROCESSES.len(),
        started.elapsed().as_millis(),
        versions.len(),
        appliers[0]
    );
    drop_tables(&pool).await?;
    Ok(())
}

/// One process starting: migrate under the lock, waiting at most `patience` for it.
/// Answers the process's name and the versions it applied.
async fn start_up(
    locks: PgLocks,
    pool: PgPool,
    name: &'static str,
    patience: Duration,
) -> tumbler::Result<(&'static str, Vec<i32>)> {
    let session = locks.owner().await?;
    let asked = Instant::now();
    let key = PgKey::hashed("tumbler-example:migrations");
    let options = AcquireOptions::exclusive().timeout(patience);
    // `under` releases the lock however the migration ends, even by a panic.
    let applied = session
        .under(key, options, async {
            let waited = asked.elapsed();
            let applied = migrate(&pool, name).await;
            (waited, applied)
        })
        .await?;
    let (waited, applied) = applied;
    let applied = applied.map_err(|e| Error::Internal(format!("migration failed: {e}")))?;
    let what: Vec<&str> = MIGRATIONS.iter().filter(|m| applied.contains(&m.0)).map(|m| m.1).collect();
    println!(
        "process {name}: took the lock after {:>3} ms; {}",
        waited.as_millis(),
        if what.is_empty() { "schema up to date".to_owned() } else { format!("applied {}", what.join(", ")) }
    );
    session.close().await;
    Ok((name, applied))
}

/// Applies the missing migrations, each in a transaction with its bookkeeping row.
async fn migrate(pool: &PgPool, name: &str) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS tumbler_example_schema_migrations
             (version int PRIMARY KEY, applied_by text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    let done: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM tumbler_example_schema_migrations").fetch_all(pool).await?;
    let mut applied = Vec::new();
    for (version, _, statement) in MIGRATIONS.iter().filter(|m| !done.contains(&m.0)) {
        let mut tx = pool.begin().await?;
        sqlx::query(statement).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO tumbler_example_schema_migrations (version, applied_by) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tokio::time::sleep(EACH_TAKES).await;
        tx.commit().await?;
        applied.push(*version);
    }
    Ok(applied)
}

async fn drop_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("DROP TABLE IF EXISTS tumbler_example_widgets, tumbler_example_schema_migrations")
        .execute(pool)
        .await?;
    Ok(())
}
