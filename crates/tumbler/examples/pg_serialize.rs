//! Read-modify-write under a transaction-scoped lock: `serialize` (GameServer.Lock's).
//!
//! Many tasks increment per-lobby counters by reading the value, thinking for a moment and
//! writing it back plus one — the shape of "claim a reward", "append a guess to the game
//! state". `tumbler::pg::serialize(pool, key, async |tx| ...)` runs each in a transaction
//! holding `pg_advisory_xact_lock(lobby, id)`: the lock is released by the commit (or the
//! rollback), so the next writer reads the committed value, and nothing can leak a lock.
//! It works through PgBouncer in transaction mode, unlike session locks.
//!
//! The run shows the lost updates without the lock, the exact count with it, a rollback
//! on `Err`, and the `try_serialize` and `serialize_timeout` variants.
//!
//! Run it with `cargo run -p tumbler --features postgres --example pg_serialize`; it uses
//! `DATABASE_URL` when set, otherwise a throw-away PostgreSQL cluster.

mod pg_support;

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use pg_support::BoxError;
use sqlx::PgPool;
use tumbler::pg::{serialize, serialize_timeout, try_serialize, Namespaces, PgKey};
use tumbler::Error;

const LOBBIES: [i32; 2] = [7, 8];
const TASKS: usize = 16;
const INCREMENTS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pool = pg_support::database("pg_serialize", 8).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS tumbler_example_counters;
         CREATE TABLE tumbler_example_counters (lobby int PRIMARY KEY, value bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;
    // GameServer.Lock's predefined namespaces: `lobby` is 1, so lobby 7 is the lock (1, 7).
    let namespaces = Namespaces::new().register("lobby", 1)?.register("group", 2)?;
    let total = TASKS * INCREMENTS;

    // Without the lock, concurrent read-modify-writes overwrite each other.
    reset(&pool).await?;
    hammer(&pool, &namespaces, false).await?;
    let unprotected = values(&pool).await?;
    let counted: i64 = unprotected.iter().sum();
    println!(
        "without a lock: {total} increments left the counters at {unprotected:?} ({} updates lost)",
        total as i64 - counted
    );

    // With `serialize`, every increment counts.
    reset(&pool).await?;
    let started = Instant::now();
    hammer(&pool, &namespaces, true).await?;
    let serialized = values(&pool).await?;
    println!(
        "with serialize: {total} increments left the counters at {serialized:?} in {} ms",
        started.elapsed().as_millis()
    );
    let per_lobby = (total / LOBBIES.len()) as i64;
    assert_eq!(serialized, vec![per_lobby; LOBBIES.len()], "serialize lost updates");

    // `Err` rolls the transaction back (and releases the lock): the write is undone.
    let lobby = LOBBIES[0];
    let key = namespaces.key("lobby", lobby)?;
    let outcome: Result<(), BoxError> = serialize(&pool, key, async |tx| {
        sqlx::query("UPDATE tumbler_example_counters SET value = value + 1000 WHERE lobby = $1")
            .bind(lobby)
            .execute(&mut **tx)
            .await?;
        Err("the reward was already claimed".into())
    })
    .await;
    assert_eq!(values(&pool).await?[0], per_lobby, "the failed closure's write must be rolled back");
    println!("an Err from the closure: {} — its write was rolled back", outcome.unwrap_err());

    // While someone holds the lock: a try gives up at once, a timeout after a while.
    let holder = serialize(&pool, key, async |_tx| {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, BoxError>(())
    });
    let others = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tried: Result<(), BoxError> = try_serialize(&pool, key, async |_tx| Ok(())).await;
        assert!(matches!(lock_error(tried), Some(Error::Busy { .. })));
        println!("try_serialize while the lock is held: busy, the closure did not run");
        let asked = Instant::now();
        let timed: Result<(), BoxError> =
            serialize_timeout(&pool, key, Duration::from_millis(50), async |_tx| Ok(())).await;
        assert!(matches!(lock_error(timed), Some(Error::Timeout)));
        println!("serialize_timeout(50 ms) while the lock is held: timed out after {} ms", asked.elapsed().as_millis());
    };
    let (held, ()) = tokio::join!(holder, others);
    held?;

    println!("ok: {total} concurrent increments through serialize, none lost");
    sqlx::raw_sql("DROP TABLE tumbler_example_counters").execute(&pool).await?;
    Ok(())
}

/// `TASKS` concurrent tasks, each incrementing the lobbies' counters `INCREMENTS` times in
/// turn. They run on this task (`try_join_all`), not `tokio::spawn`ed: see the note on
/// `Send` in docs/postgres.md.
async fn hammer(pool: &PgPool, namespaces: &Namespaces, locked: bool) -> Result<(), BoxError> {
    let keys: Vec<(i32, PgKey)> =
        LOBBIES.iter().map(|&lobby| Ok((lobby, namespaces.key("lobby", lobby)?))).collect::<tumbler::Result<_>>()?;
    let tasks = (0..TASKS).map(|task| {
        let keys = &keys;
        async move {
            for i in 0..INCREMENTS {
                let (lobby, key) = keys[(task + i) % keys.len()];
                if locked {
                    serialize(pool, key, async |tx| increment(tx, lobby).await).await?;
                } else {
                    let mut tx = pool.begin().await?;
                    increment(&mut tx, lobby).await?;
                    tx.commit().await?;
                }
            }
            Ok::<_, BoxError>(())
        }
    });
    try_join_all(tasks).await?;
    Ok(())
}

/// Read, think, write back plus one.
async fn increment(tx: &mut sqlx::PgConnection, lobby: i32) -> Result<i64, BoxError> {
    let value: i64 = sqlx::query_scalar("SELECT value FROM tumbler_example_counters WHERE lobby = $1")
        .bind(lobby)
        .fetch_one(&mut *tx)
        .await?;
    tokio::time::sleep(Duration::from_millis(1)).await;
    sqlx::query("UPDATE tumbler_example_counters SET value = $2 WHERE lobby = $1")
        .bind(lobby)
        .bind(value + 1)
        .execute(&mut *tx)
        .await?;
    Ok(value + 1)
}

async fn reset(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM tumbler_example_counters").execute(pool).await?;
    for lobby in LOBBIES {
        sqlx::query("INSERT INTO tumbler_example_counters VALUES ($1, 0)").bind(lobby).execute(pool).await?;
    }
    Ok(())
}

async fn values(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM tumbler_example_counters ORDER BY lobby").fetch_all(pool).await
}

/// The lock error inside a failed `serialize`, if that is why it failed.
fn lock_error(outcome: Result<(), BoxError>) -> Option<Error> {
    outcome.err()?.downcast::<Error>().ok().map(|e| *e)
}
