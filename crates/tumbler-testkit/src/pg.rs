//! The PostgreSQL backend as a [`Backend`] under test, on the throw-away cluster.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tumbler::pg::{PgConfig, PgKey, PgLocker, PgLocks, WaitStrategy};
use tumbler::Capabilities;

use crate::backend::Backend;
use crate::postgres::test_database;

/// The PostgreSQL backend under test: a [`PgLocks`] over a pool of the test cluster;
/// each [`Backend::owner`] is a new session. Key names are hashed with
/// [`tumbler::pg::hash_key`].
#[derive(Clone, Debug)]
pub struct PgBackend {
    locks: PgLocks,
}

impl PgBackend {
    /// A backend with the given waiting strategy, on the test cluster.
    ///
    /// # Panics
    /// When the test cluster cannot be started or reached: PostgreSQL tests never skip.
    pub async fn new(wait: WaitStrategy) -> Self {
        let db = test_database().await.expect("the PostgreSQL test cluster must start");
        let pool = PgPoolOptions::new()
            .max_connections(48)
            .connect_with(db.connect_options())
            .await
            .expect("connecting to the PostgreSQL test cluster");
        let config = PgConfig { wait, health_check: Some(Duration::from_millis(500)) };
        PgBackend { locks: PgLocks::with_config(pool, config) }
    }

    /// The locks underneath.
    pub fn locks(&self) -> &PgLocks {
        &self.locks
    }
}

impl Backend for PgBackend {
    type Locker = PgLocker;

    async fn owner(&self) -> PgLocker {
        self.locks.owner().await.expect("opening a PostgreSQL lock session")
    }

    fn key(&self, name: &str) -> PgKey {
        PgKey::hashed(name)
    }

    fn capabilities(&self) -> Capabilities {
        self.locks.capabilities()
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(150)
    }
}
