//! Transaction-scoped advisory locks: `serialize` and its variants.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use sqlx::{PgPool, Postgres, Transaction};

use super::failure::{backend, classify};
use super::key::PgKey;
use super::sql;
use crate::error::{Error, Result};

/// How [`run`] takes the lock.
#[derive(Copy, Clone)]
enum Take {
    Wait,
    Try,
    Timeout(Duration),
}

/// Runs `work` in a transaction that holds `pg_advisory_xact_lock(key)`, so every query
/// `work` runs on the transaction runs under the lock (GameServer.Lock's `serialize`).
/// Commits when `work` returns `Ok` and answers its value; rolls back when it returns
/// `Err` or panics (the panic then continues). The lock ends with the transaction.
///
/// Works through transaction-pooling proxies (PgBouncer), unlike session locks.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), tumbler::Error> {
/// let balance: i64 = tumbler::pg::serialize(&pool, "account:7", async |tx| {
///     let (balance,): (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE id = 7")
///         .fetch_one(&mut **tx).await.map_err(|e| tumbler::Error::Internal(e.to_string()))?;
///     sqlx::query("UPDATE accounts SET balance = $1 WHERE id = 7").bind(balance + 10)
///         .execute(&mut **tx).await.map_err(|e| tumbler::Error::Internal(e.to_string()))?;
///     Ok::<_, tumbler::Error>(balance + 10)
/// }).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// `work`'s error; a backend error (turned into `E`) when the transaction cannot begin,
/// the lock cannot be taken (a PostgreSQL deadlock is [`Error::Deadlock`]) or the commit
/// fails.
pub async fn serialize<T, E, F>(pool: &PgPool, key: impl Into<PgKey>, work: F) -> Result<T, E>
where
    F: for<'c> AsyncFnOnce(&mut Transaction<'c, Postgres>) -> Result<T, E>,
    E: From<Error>,
{
    run(pool, key.into(), Take::Wait, work).await
}

/// As [`serialize`], but fails at once with [`Error::Busy`] when the lock is taken
/// (`pg_try_advisory_xact_lock`); `work` does not run then.
///
/// # Errors
/// As [`serialize`], and `busy`.
pub async fn try_serialize<T, E, F>(pool: &PgPool, key: impl Into<PgKey>, work: F) -> Result<T, E>
where
    F: for<'c> AsyncFnOnce(&mut Transaction<'c, Postgres>) -> Result<T, E>,
    E: From<Error>,
{
    run(pool, key.into(), Take::Try, work).await
}

/// As [`serialize`], waiting at most `timeout` for the lock (`lock_timeout` for this
/// transaction only), then failing with [`Error::Timeout`]; `work` does not run then.
///
/// # Errors
/// As [`serialize`], and `timeout`.
pub async fn serialize_timeout<T, E, F>(
    pool: &PgPool,
    key: impl Into<PgKey>,
    timeout: Duration,
    work: F,
) -> Result<T, E>
where
    F: for<'c> AsyncFnOnce(&mut Transaction<'c, Postgres>) -> Result<T, E>,
    E: From<Error>,
{
    run(pool, key.into(), Take::Timeout(timeout), work).await
}

async fn run<T, E, F>(pool: &PgPool, key: PgKey, take: Take, work: F) -> Result<T, E>
where
    F: for<'c> AsyncFnOnce(&mut Transaction<'c, Postgres>) -> Result<T, E>,
    E: From<Error>,
{
    let mut tx = pool.begin().await.map_err(backend)?;
    if let Err(e) = lock(&mut tx, key, take).await {
        let _ = tx.rollback().await;
        return Err(e.into());
    }
    match AssertUnwindSafe(work(&mut tx)).catch_unwind().await {
        Ok(Ok(value)) => {
            tx.commit().await.map_err(backend)?;
            Ok(value)
        }
        Ok(Err(e)) => {
            let _ = tx.rollback().await;
            Err(e)
        }
        Err(panic) => {
            // Roll back now, not whenever the pool next hands out the connection: until
            // then the lock would stay held.
            let _ = tx.rollback().await;
            std::panic::resume_unwind(panic)
        }
    }
}

async fn lock(tx: &mut Transaction<'static, Postgres>, key: PgKey, take: Take) -> Result<()> {
    if let Take::Timeout(d) = take {
        let ms = format!("{}ms", d.as_millis().max(1));
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(ms)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
    }
    let try_only = matches!(take, Take::Try);
    let query = sqlx::query_scalar_with::<_, bool, _>(sql::xact_lock(key, try_only), sql::key_args(key));
    match query.fetch_one(&mut **tx).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Busy { holders: Vec::new() }),
        Err(e) => Err(classify(e, 0).into_error()),
    }
}
