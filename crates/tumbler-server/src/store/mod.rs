//! Persistence: what the server writes before it answers, and reads back on start.
//!
//! The lock table lives in memory; the store keeps a copy of its durable part — every
//! key's current holds, the open sessions, the fencing high-water mark and the last event
//! revision — so that a restarted server can put them back. Each request's changes are
//! committed before its answer is sent; concurrent commits share one write (group commit).

mod sqlite;

use std::path::PathBuf;

pub use sqlite::SqliteStore;

use crate::key::LockKey;

/// Where the server keeps its state, as given by `--store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory`: nothing is kept; a restart starts empty (like PostgreSQL's advisory locks).
    Memory,
    /// `sqlite:PATH`: an embedded SQLite database at `PATH` (created with its directory).
    Sqlite(PathBuf),
}

impl StoreUrl {
    /// The default: `sqlite:./tumbler-data/tumbler.db`.
    pub fn default_sqlite() -> Self {
        StoreUrl::Sqlite(PathBuf::from("./tumbler-data/tumbler.db"))
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        if s == "memory" {
            return Ok(StoreUrl::Memory);
        }
        match s.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(StoreUrl::Sqlite(PathBuf::from(path))),
            _ => Err(StoreError::Url(format!("unknown store {s:?}: expected `memory` or `sqlite:PATH`"))),
        }
    }
}

/// A hold as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    /// Its owner id.
    pub owner: String,
    /// Its mode.
    pub mode: tumbler_core::Mode,
    /// Its re-entry count.
    pub count: u32,
    /// Its fencing token.
    pub fencing_token: u64,
    /// The session it belongs to.
    pub session: Option<u64>,
    /// When it expires, in milliseconds since the Unix epoch (wall clock: the monotonic
    /// clock does not survive a restart).
    pub expires_at_ms: Option<u64>,
    /// The `request_id`s of the acquires it answered, oldest first: a retry after a
    /// restart is answered, not counted again.
    pub request_ids: Vec<String>,
}

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its id.
    pub id: u64,
    /// Its lease, in milliseconds.
    pub ttl_ms: u64,
    /// The label given when it was opened.
    pub label: Option<String>,
}

/// One change to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key's holds are now exactly these (none: the key is free and is forgotten).
    Key {
        /// The key.
        key: LockKey,
        /// Its holds.
        holds: Vec<HoldRecord>,
    },
    /// A session was opened (or its record changed).
    SessionOpened(SessionRecord),
    /// A session ended (closed or expired).
    SessionClosed(u64),
}

/// Counters written with every commit.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The highest fencing token handed out: later tokens, after a restart too, are greater.
    pub fencing_high_water: u64,
    /// The last event revision: revisions after a restart continue from it.
    pub last_revision: u64,
    /// The highest session id handed out: ids after a restart start above it, so an id
    /// names one lease only, even one that ended before the restart.
    pub last_session: u64,
}

impl Marks {
    /// Marks above anything an earlier run can have handed out, for a store that keeps
    /// nothing: derived from the start time, so that fencing tokens, revisions and session
    /// ids still increase across restarts. A stale holder's token stays below every new
    /// one, a watcher resuming from an earlier run's revision is told it is too old rather
    /// than waiting for a number already handed out, and an earlier session id is 410, not
    /// a stranger's lease.
    ///
    /// Tokens and revisions start at the start time in milliseconds times 2^10, which
    /// stays below 2^53 (a JSON number any client reads exactly) until the year 2248 and
    /// leaves room for 1,024 per millisecond of uptime, a million a second; session ids
    /// (opaque strings) at the start time in milliseconds times 2^20. This holds as long as
    /// the wall clock does not go back between runs.
    pub fn above_any_earlier_run() -> Marks {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX >> 20);
        Marks { fencing_high_water: millis << 10, last_revision: millis << 10, last_session: millis << 20 }
    }
}

/// Everything a store holds, read on start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The sessions that were open.
    pub sessions: Vec<SessionRecord>,
    /// Every key with holds, and its holds.
    pub keys: Vec<(LockKey, Vec<HoldRecord>)>,
    /// The counters of the last commit.
    pub marks: Marks,
}

/// A store failed; the server answers 503 `unavailable` and keeps its table as it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `--store` value is malformed.
    #[error("{0}")]
    Url(String),
    /// The database failed.
    #[error("store failed: {0}")]
    Io(String),
}

/// The server's store.
#[derive(Clone)]
pub enum Store {
    /// Keeps nothing.
    Memory,
    /// SQLite with group commit.
    Sqlite(SqliteStore),
}

impl Store {
    /// Opens (creating if needed) the store at `url`.
    ///
    /// # Errors
    /// When the database cannot be opened or its schema created.
    pub async fn open(url: &StoreUrl) -> Result<Store, StoreError> {
        match url {
            StoreUrl::Memory => Ok(Store::Memory),
            StoreUrl::Sqlite(path) => Ok(Store::Sqlite(SqliteStore::open(path).await?)),
        }
    }

    /// Reads everything back (empty for `memory`).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        match self {
            Store::Memory => Ok(Snapshot { marks: Marks::above_any_earlier_run(), ..Snapshot::default() }),
            Store::Sqlite(s) => s.load().await,
        }
    }

    /// Writes `changes` and `marks` durably; returns once they are on disk. Commits made
    /// concurrently share one transaction. Changes are applied in the order given, and
    /// commits in the order they were called.
    ///
    /// # Errors
    /// When the write failed (nothing of this commit is then guaranteed to be kept).
    pub async fn commit(&self, changes: Vec<Change>, marks: Marks) -> Result<(), StoreError> {
        match self {
            Store::Memory => Ok(()),
            Store::Sqlite(s) => s.commit(changes, marks).await,
        }
    }

    /// Waits for every commit in flight, then closes the database.
    pub async fn close(&self) {
        if let Store::Sqlite(s) = self {
            s.close().await;
        }
    }
}
