//! The handle tests get: where the server is, pools on the caller's runtime, and fresh
//! databases for tests that need one to themselves.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;

use super::error::HarnessError;

/// A PostgreSQL server for tests, shared by every test of a test binary; get it with
/// [`test_database`](super::test_database).
///
/// It is either a cluster the harness started (listening on 127.0.0.1, user `postgres`
/// without a password, removed when the test binary ends) or the server named by
/// `TUMBLER_TEST_DATABASE_URL`.
///
/// It holds no connection: connections belong to a tokio runtime, and every `#[tokio::test]`
/// has a runtime of its own, so each test makes its own pool with [`pool`](Self::pool) (or
/// from [`url`](Self::url)). Advisory locks are per database and every test shares the
/// `postgres` database, so tests must use keys of their own — or a database of their own
/// from [`fresh_database`](Self::fresh_database).
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL of the `postgres` database (or of `TUMBLER_TEST_DATABASE_URL`).
    url: String,
    /// The server's log, when the harness started the server.
    server_log: Option<PathBuf>,
    /// Counts the databases [`fresh_database`](Self::fresh_database) made.
    created: AtomicU64,
}

impl TestDatabase {
    /// A handle on the server at `url`, whose log is `server_log` when the harness
    /// started it.
    pub(crate) fn new(url: String, server_log: Option<PathBuf>) -> Result<Self, HarnessError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let message = "it must start with postgres:// or postgresql://".to_owned();
            return Err(HarnessError::InvalidUrl { url, message });
        }
        PgConnectOptions::from_str(&url)
            .map_err(|error| HarnessError::InvalidUrl { url: url.clone(), message: error.to_string() })?;
        Ok(TestDatabase { url, server_log, created: AtomicU64::new(0) })
    }

    /// The URL of the shared database, e.g. `postgres://postgres@127.0.0.1:41234/postgres`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the harness started this server (and removes it when the tests end), as
    /// opposed to using the one `TUMBLER_TEST_DATABASE_URL` names.
    pub fn is_throwaway(&self) -> bool {
        self.server_log.is_some()
    }

    /// The server's log file, when the harness started the server: where deadlock reports
    /// and the like end up. It is removed with the cluster.
    pub fn server_log(&self) -> Option<&Path> {
        self.server_log.as_deref()
    }

    /// The connection options of [`url`](Self::url), to build a pool or connection with
    /// settings of one's own.
    pub fn connect_options(&self) -> PgConnectOptions {
        // `new` checked that the URL parses.
        PgConnectOptions::from_str(&self.url).unwrap_or_default()
    }

    /// Connects a new pool (sqlx's defaults: at most 10 connections) to the shared
    /// database, on the caller's tokio runtime.
    pub async fn pool(&self) -> Result<PgPool, HarnessError> {
        connect_pool(&self.url).await
    }

    /// Creates a database no other test uses, named after `name_hint` (any text; it is
    /// reduced to `[a-z0-9_]`) plus a process-unique suffix, and returns its URL.
    ///
    /// On a throw-away cluster it disappears with the cluster; on a server named by
    /// `TUMBLER_TEST_DATABASE_URL` it is left behind (its name starts with `t_`).
    pub async fn fresh_database(&self, name_hint: &str) -> Result<String, HarnessError> {
        let name = unique_name(name_hint, self.created.fetch_add(1, Ordering::Relaxed));
        let statement = format!("CREATE DATABASE \"{name}\"");
        let mut conn = PgConnection::connect(&self.url)
            .await
            .map_err(|error| HarnessError::Connect { url: self.url.clone(), message: error.to_string() })?;
        let created = sqlx::raw_sql(&statement).execute(&mut conn).await;
        let _ = conn.close().await;
        created.map_err(|error| HarnessError::Sql { statement, message: error.to_string() })?;
        Ok(with_database(&self.url, &name))
    }

    /// Connects a new pool to a database made by [`fresh_database`](Self::fresh_database)
    /// and returns both its URL and the pool.
    pub async fn fresh_pool(&self, name_hint: &str) -> Result<(String, PgPool), HarnessError> {
        let url = self.fresh_database(name_hint).await?;
        let pool = connect_pool(&url).await?;
        Ok((url, pool))
    }
}

/// A pool on `url`, on the current runtime.
async fn connect_pool(url: &str) -> Result<PgPool, HarnessError> {
    PgPoolOptions::new()
        .connect(url)
        .await
        .map_err(|error| HarnessError::Connect { url: url.to_owned(), message: error.to_string() })
}

/// `t_<hint>_<process tag>_<n in hex>`: at most 63 bytes (PostgreSQL's limit), of `[a-z0-9_]`,
/// unique within this process by `n` and across processes (and runs against one external
/// server) by the tag.
fn unique_name(hint: &str, n: u64) -> String {
    let hint: String =
        hint.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).take(24).collect();
    format!("t_{hint}_{}_{n:x}", process_tag())
}

/// A tag for this process: its pid and when it started (seconds and sub-seconds mixed), as
/// hex — pids alone repeat across runs against a long-lived external server.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let time = (now.as_secs() << 20) ^ u64::from(now.subsec_micros());
        format!("{:x}_{:x}", std::process::id(), time & 0xff_ffff_ffff)
    })
}

/// `url` with its database (the path) replaced by `database`, keeping any query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |at| authority_start + at);
    format!("{}/{database}{query}", &base[..path_start])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_the_rest_kept() {
        assert_eq!(with_database("postgres://postgres@127.0.0.1:5/postgres", "x"), "postgres://postgres@127.0.0.1:5/x");
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
        assert_eq!(with_database("postgresql://h:5432", "x"), "postgresql://h:5432/x");
        assert_eq!(with_database("postgres://h?host=/tmp", "x"), "postgres://h/x?host=/tmp");
    }

    #[test]
    fn names_are_short_plain_and_distinct() {
        let long = unique_name(&"Ünïcode and spaces! ".repeat(10), u64::MAX);
        assert!(long.len() <= 63, "{long} is {} bytes", long.len());
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{long}");
        assert_ne!(unique_name("a", 0), unique_name("a", 1));
    }
}
