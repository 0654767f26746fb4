//! A throw-away PostgreSQL server for tests (feature `postgres`, on by default).
//!
//! ```no_run
//! # async fn example() {
//! let db = tumbler_testkit::postgres::test_database().await.expect("PostgreSQL for tests");
//! let pool = db.pool().await.expect("connect to the test database");
//! let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
//! # }
//! ```
//!
//! [`test_database`] gives every test of a test binary the same server, started on first
//! use and removed when the binary ends:
//!
//! - If `TUMBLER_TEST_DATABASE_URL` is set, that server is used and nothing is started.
//! - Otherwise `initdb` and `pg_ctl` are looked for on PATH, then under
//!   `/usr/lib/postgresql/<highest version>/bin`; a cluster is initialised in a new
//!   directory under the temporary directory (trust authentication, user `postgres`, UTF-8,
//!   locale C) and started on a free port of 127.0.0.1, with `fsync=off` and
//!   `max_connections=200`. When the tests run as root, PostgreSQL runs as the account
//!   `tumbler-test` or `nobody` (creating `tumbler-test` if neither exists), through
//!   `runuser` or `su`. Starting takes well under a second (`initdb` is most of it).
//! - A watchdog process notices when the test binary has ended (however it ended), stops
//!   the server and removes its directory.
//!
//! **No skipping.** When PostgreSQL cannot be started, every call returns the same
//! [`HarnessError`], which says which command failed and what it printed; tests
//! `.expect(...)` it, so the run fails rather than testing less.
//!
//! The server is not tied to any tokio runtime — it is a separate process, started with
//! `std::process` on a thread of its own — so tests on different runtimes share it; each
//! makes its own connections, on its own runtime, with [`TestDatabase::pool`].

mod cluster;
mod database;
mod error;
mod run_as;
mod watchdog;

use std::sync::{Once, OnceLock};

use tokio::sync::Notify;

pub use database::TestDatabase;
pub use error::{CommandFailure, HarnessError};

/// The variable naming an existing server to use instead of starting one.
pub const DATABASE_URL_VAR: &str = "TUMBLER_TEST_DATABASE_URL";

/// The outcome of the one start attempt of this process.
static SHARED: OnceLock<Result<TestDatabase, HarnessError>> = OnceLock::new();
/// Spawns the starting thread once.
static STARTER: Once = Once::new();
/// Wakes the async callers waiting for [`SHARED`].
static READY: Notify = Notify::const_new();

/// The test server of this test binary, started on the first call (by any test, on any
/// runtime) and shared by all later ones. See the [module documentation](self).
///
/// Waiting for the start does not block the caller's runtime: the server is started on a
/// thread of its own. A failed start is not retried; every call returns its error.
pub async fn test_database() -> Result<&'static TestDatabase, HarnessError> {
    STARTER.call_once(|| {
        let spawned = std::thread::Builder::new().name("tumbler-pg-start".to_owned()).spawn(|| {
            SHARED.get_or_init(start);
            READY.notify_waiters();
        });
        if let Err(error) = spawned {
            SHARED.get_or_init(|| Err(HarnessError::io("spawn the thread that starts PostgreSQL", error)));
        }
    });
    loop {
        let notified = READY.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before looking, so a start finishing in between still wakes us.
        notified.as_mut().enable();
        if let Some(shared) = SHARED.get() {
            return shared.as_ref().map_err(Clone::clone);
        }
        notified.await;
    }
}

/// [`test_database`] for code that is not async: blocks until the server is up.
pub fn test_database_blocking() -> Result<&'static TestDatabase, HarnessError> {
    let shared = SHARED.get_or_init(start);
    READY.notify_waiters();
    shared.as_ref().map_err(Clone::clone)
}

/// Starts (or, given `TUMBLER_TEST_DATABASE_URL`, finds) the server; a panic becomes an
/// error, so that waiters are always answered.
fn start() -> Result<TestDatabase, HarnessError> {
    std::panic::catch_unwind(|| {
        match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.trim().is_empty() => return TestDatabase::new(url.trim().to_owned(), None),
            _ => {}
        }
        let cluster = cluster::start()?;
        TestDatabase::new(
            format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
            Some(cluster.dir.join("server.log")),
        )
    })
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        Err(HarnessError::Panicked { message })
    })
}
