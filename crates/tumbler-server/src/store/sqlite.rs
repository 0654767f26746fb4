//! The embedded store: SQLite, written by one thread with group commit.
//!
//! SQLite calls block, so they never run on the async runtime: one writer thread owns the
//! only connection. `commit` hands its batch to the thread over a channel and awaits the
//! answer on a oneshot. The thread takes the first batch waiting, then every other batch
//! already queued behind it, writes them all in one transaction (in arrival order) and
//! answers them all with its outcome — so concurrent requests share one write and one
//! sync (group commit). Reads (`load`) go through the same thread, after every commit
//! queued before them, so they see every commit already answered.
//!
//! Durability: WAL mode with `synchronous = FULL`. In WAL mode `NORMAL` would only sync
//! at checkpoints, so a commit answered just before a power cut could be lost; `FULL`
//! syncs the WAL on every commit, and group commit pays that sync once per group rather
//! than once per request.
//!
//! One server per file: the connection uses SQLite's exclusive locking mode, so a second
//! server pointed at the same database cannot open it while the first runs. Two lock
//! servers writing one file would each restore the other's holds after a restart.
//!
//! Integers: SQLite stores signed 64-bit integers; a `u64` above `i64::MAX` (a fencing
//! token, a revision) is refused with an error rather than wrapped, because a wrapped
//! high-water mark would compare as smaller and could hand out a token twice.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use tokio::sync::oneshot;
use tumbler_core::Mode;

use super::{Change, HoldRecord, Marks, SessionRecord, Snapshot, StoreError};
use crate::key::LockKey;

/// The tables. A key is its kind plus its parts, so a plain lock and a GS2 mutex never
/// share rows whatever their strings; `user` is `''` for plain locks.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS holds (
    kind          TEXT    NOT NULL,  -- 'lock' or 'mutex': the two key spaces never meet
    namespace     TEXT    NOT NULL,
    user          TEXT    NOT NULL,  -- '' for plain locks
    name          TEXT    NOT NULL,  -- the lock name, or the mutex's property id
    owner         TEXT    NOT NULL,
    mode          TEXT    NOT NULL,
    lim           INTEGER,
    count         INTEGER NOT NULL,
    token         INTEGER NOT NULL,
    session       INTEGER,
    expires_at_ms INTEGER,
    request_ids   TEXT,              -- JSON array of the remembered request ids, or NULL
    PRIMARY KEY (kind, namespace, user, name, owner, mode)
);
CREATE INDEX IF NOT EXISTS holds_by_session ON holds (session) WHERE session IS NOT NULL;
CREATE TABLE IF NOT EXISTS sessions (
    id     INTEGER PRIMARY KEY,
    ttl_ms INTEGER NOT NULL,
    label  TEXT
);
CREATE TABLE IF NOT EXISTS marks (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    fencing_high_water INTEGER NOT NULL,
    last_revision      INTEGER NOT NULL,
    last_session       INTEGER NOT NULL DEFAULT 0  -- ids are never given out twice
);
INSERT OR IGNORE INTO marks (id, fencing_high_water, last_revision) VALUES (1, 0, 0);
";

/// Columns added to a table after its first release, each with the statement that adds it
/// to a file written by an earlier version.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("marks", "last_session", "ALTER TABLE marks ADD COLUMN last_session INTEGER NOT NULL DEFAULT 0"),
    ("holds", "request_ids", "ALTER TABLE holds ADD COLUMN request_ids TEXT"),
];

/// How long `open` waits for another connection to let go of the file (a previous server
/// still closing) before it reports the database as locked.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer the writer thread sends back: errors travel as their message.
type Answer<T> = oneshot::Sender<Result<T, String>>;

/// One `commit` call waiting for the writer.
struct Batch {
    changes: Vec<Change>,
    marks: Marks,
    done: Answer<()>,
}

/// Work for the writer thread.
enum Job {
    Commit(Batch),
    Load(Answer<Snapshot>),
}

struct Inner {
    /// The writer's queue; `None` once closed, so later calls fail at once.
    jobs: parking_lot::Mutex<Option<mpsc::Sender<Job>>>,
    /// The writer thread, joined by the first `close`. An async mutex, so that a second
    /// concurrent `close` waits for that join instead of returning early.
    thread: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    transactions: Arc<AtomicU64>,
}

/// The SQLite store (see the module documentation). Cheap to clone: clones share the
/// writer thread, and closing one closes them all.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it and its directory when missing, and
    /// starts the writer thread. The file stays locked against other servers until
    /// [`close`](Self::close).
    ///
    /// # Errors
    /// `StoreError::Io` when the directory or the database cannot be created or opened,
    /// or another server holds the database.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || open_connection(&path))
            .await
            .map_err(|e| StoreError::Io(format!("opening the store panicked: {e}")))??;
        let (tx, rx) = mpsc::channel();
        let transactions = Arc::new(AtomicU64::new(0));
        let counter = transactions.clone();
        let thread = std::thread::Builder::new()
            .name("tumbler-store".into())
            .spawn(move || write_loop(conn, &rx, &counter))
            .map_err(|e| StoreError::Io(format!("cannot start the store's writer thread: {e}")))?;
        let inner = Inner {
            jobs: parking_lot::Mutex::new(Some(tx)),
            thread: tokio::sync::Mutex::new(Some(thread)),
            transactions,
        };
        Ok(SqliteStore { inner: Arc::new(inner) })
    }

    /// Reads everything back: every key with its holds (in the order they were written),
    /// the sessions, and the marks. Sees every commit answered before it was called.
    ///
    /// # Errors
    /// `StoreError::Io` when the database cannot be read, holds a row this version does
    /// not understand, or the store is closed.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Job::Load(done))?;
        answer.await.map_err(|_| closed())?.map_err(StoreError::Io)
    }

    /// Writes `changes` (in the order given) and `marks` durably and returns once they
    /// are on disk, sharing the transaction with every commit queued at the same time.
    /// Commits are applied in the order they reached the writer; the stored marks only
    /// ever grow.
    ///
    /// # Cancel safety
    /// Once polled, the batch is queued: dropping the future does not withdraw it.
    ///
    /// # Errors
    /// `StoreError::Io` when the transaction failed — then no batch of its group is kept,
    /// and every caller in the group gets the same error — or the store is closed.
    pub async fn commit(&self, changes: Vec<Change>, marks: Marks) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Job::Commit(Batch { changes, marks, done }))?;
        answer.await.map_err(|_| closed())?.map_err(StoreError::Io)
    }

    /// Waits for every commit already queued, then stops the writer thread and closes the
    /// database. Later calls to `commit` and `load` fail with `StoreError::Io`.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop the close: the queue still drains and the
    /// thread still ends; only the wait for it is lost.
    pub async fn close(&self) {
        // Dropping the sender ends the thread's loop once the queue is empty.
        drop(self.inner.jobs.lock().take());
        let mut thread = self.inner.thread.lock().await;
        if let Some(thread) = thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// How many transactions the writer has committed since the store was opened (failed
    /// ones are not counted). A commit is counted before it is answered. With group
    /// commit this is at most, and under load well below, the number of commits answered;
    /// tests and benchmarks compare the two.
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Acquire)
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.inner.jobs.lock();
        jobs.as_ref().ok_or_else(closed)?.send(job).map_err(|_| closed())
    }
}

fn closed() -> StoreError {
    StoreError::Io("the store is closed".into())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path).map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
    // Creating the schema (and its marks row) writes: from here on the exclusive lock is
    // held, so a second server fails now rather than at its first grant.
    prepare(&conn).map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy) => {
            StoreError::Io(format!("{} is in use (is another server running on it?)", path.display()))
        }
        _ => StoreError::Io(format!("cannot set up {}: {e}", path.display())),
    })?;
    Ok(conn)
}

fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    configure(conn)?;
    conn.execute_batch(SCHEMA)?;
    for (table, column, add) in ADDED_COLUMNS {
        let mut columns = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let present =
            columns.query_map([], |row| row.get::<_, String>(0))?.any(|name| name.is_ok_and(|n| n == *column));
        if !present {
            conn.execute_batch(add)?;
        }
    }
    Ok(())
}

/// Sets the connection up. The locking mode comes before the journal mode so that WAL
/// keeps its index in memory (no shared-memory file) under the exclusive lock.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update_and_check(None, "locking_mode", "EXCLUSIVE", |_| Ok(()))?;
    let journal: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        // Still durable with `synchronous = FULL` (unless the database is in memory), only
        // slower: not worth refusing to run.
        tracing::warn!(journal, "SQLite refused WAL mode for the store; keeping this journal mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")
}

/// The writer thread: one group of commits per transaction, loads in between, until every
/// sender is gone and the queue is empty.
fn write_loop(mut conn: Connection, jobs: &mpsc::Receiver<Job>, transactions: &AtomicU64) {
    let mut held_back = None;
    while let Some(job) = held_back.take().or_else(|| jobs.recv().ok()) {
        match job {
            Job::Load(done) => {
                let _ = done.send(load(&conn).map_err(|e| e.to_string()));
            }
            Job::Commit(first) => {
                let (group, next) = gather(first, jobs);
                held_back = next;
                commit_group(&mut conn, group, transactions);
            }
        }
    }
}

/// `first` and every commit already queued behind it. Stops at a load, which is returned
/// to run after this group, so that it sees the group's writes.
fn gather(first: Batch, jobs: &mpsc::Receiver<Job>) -> (Vec<Batch>, Option<Job>) {
    let mut group = vec![first];
    while let Ok(job) = jobs.try_recv() {
        match job {
            Job::Commit(batch) => group.push(batch),
            load @ Job::Load(_) => return (group, Some(load)),
        }
    }
    (group, None)
}

/// Writes `group` in one transaction and answers every batch in it with the outcome.
fn commit_group(conn: &mut Connection, group: Vec<Batch>, transactions: &AtomicU64) {
    let outcome = write_group(conn, &group).map_err(|e| e.to_string());
    match &outcome {
        // Counted before anyone is answered, so a caller that sees its commit done also
        // sees it counted.
        Ok(()) => {
            transactions.fetch_add(1, Ordering::AcqRel);
        }
        Err(e) => tracing::error!(error = %e, batches = group.len(), "a store transaction failed"),
    }
    for batch in group {
        let _ = batch.done.send(outcome.clone());
    }
}

/// One transaction for the whole group; dropping it uncommitted (on `?`) rolls it back.
fn write_group(conn: &mut Connection, group: &[Batch]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut high = Marks::default();
    for batch in group {
        for change in &batch.changes {
            apply(&tx, change)?;
        }
        high.fencing_high_water = high.fencing_high_water.max(batch.marks.fencing_high_water);
        high.last_revision = high.last_revision.max(batch.marks.last_revision);
        high.last_session = high.last_session.max(batch.marks.last_session);
    }
    write_marks(&tx, high)?;
    tx.commit()
}

fn apply(tx: &Transaction<'_>, change: &Change) -> rusqlite::Result<()> {
    match change {
        Change::Key { key, holds } => write_key(tx, key, holds),
        Change::SessionOpened(session) => open_session(tx, session),
        Change::SessionClosed(id) => close_session(tx, *id),
    }
}

/// A key's columns: kind, namespace, user, name.
fn key_columns(key: &LockKey) -> (&'static str, &str, &str, &str) {
    match key {
        LockKey::Lock { namespace, name } => ("lock", namespace, "", name),
        LockKey::Mutex { namespace, user, property } => ("mutex", namespace, user, property),
    }
}

/// Replaces the key's holds with `holds`; none leaves no row for the key.
fn write_key(tx: &Transaction<'_>, key: &LockKey, holds: &[HoldRecord]) -> rusqlite::Result<()> {
    let (kind, namespace, user, name) = key_columns(key);
    tx.prepare_cached("DELETE FROM holds WHERE kind = ?1 AND namespace = ?2 AND user = ?3 AND name = ?4")?
        .execute(params![kind, namespace, user, name])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO holds (kind, namespace, user, name, owner, mode, lim, count, token, session, expires_at_ms,
                            request_ids)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for h in holds {
        let request_ids = (!h.request_ids.is_empty())
            .then(|| serde_json::to_string(&h.request_ids).expect("BUG: a list of strings always serializes"));
        insert.execute(params![
            kind,
            namespace,
            user,
            name,
            h.owner,
            h.mode.name(),
            h.mode.limit(),
            h.count,
            h.fencing_token,
            h.session,
            h.expires_at_ms,
            request_ids,
        ])?;
    }
    Ok(())
}

fn open_session(tx: &Transaction<'_>, s: &SessionRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sessions (id, ttl_ms, label) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET ttl_ms = excluded.ttl_ms, label = excluded.label",
    )?
    .execute(params![s.id, s.ttl_ms, s.label])?;
    Ok(())
}

/// Forgets the session and its holds: a session's end releases all its holds, and the
/// server does not always list the keys that this freed (`DELETE /v1/sessions/{id}`
/// commits the session change alone).
fn close_session(tx: &Transaction<'_>, id: u64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?.execute(params![id])?;
    tx.prepare_cached("DELETE FROM holds WHERE session = ?1")?.execute(params![id])?;
    Ok(())
}

/// Raises the stored marks to `high`; never lowers them.
fn write_marks(tx: &Transaction<'_>, high: Marks) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO marks (id, fencing_high_water, last_revision, last_session) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET
             fencing_high_water = max(fencing_high_water, excluded.fencing_high_water),
             last_revision = max(last_revision, excluded.last_revision),
             last_session = max(last_session, excluded.last_session)",
    )?
    .execute(params![high.fencing_high_water, high.last_revision, high.last_session])?;
    Ok(())
}

fn load(conn: &Connection) -> rusqlite::Result<Snapshot> {
    Ok(Snapshot { sessions: load_sessions(conn)?, keys: load_keys(conn)?, marks: load_marks(conn)? })
}

fn load_sessions(conn: &Connection) -> rusqlite::Result<Vec<SessionRecord>> {
    let mut query = conn.prepare("SELECT id, ttl_ms, label FROM sessions ORDER BY id")?;
    let rows =
        query.query_map([], |row| Ok(SessionRecord { id: row.get(0)?, ttl_ms: row.get(1)?, label: row.get(2)? }))?;
    rows.collect()
}

/// Every key with its holds. Within a key, `rowid` order is the order the holds were
/// written in, because each write of a key deletes and re-inserts all of them.
fn load_keys(conn: &Connection) -> rusqlite::Result<Vec<(LockKey, Vec<HoldRecord>)>> {
    let mut query = conn.prepare(
        "SELECT kind, namespace, user, name, owner, mode, lim, count, token, session, expires_at_ms, request_ids
         FROM holds ORDER BY kind, namespace, user, name, rowid",
    )?;
    let rows = query.query_map([], |row| Ok((key_of(row)?, hold_of(row)?)))?;
    let mut keys: Vec<(LockKey, Vec<HoldRecord>)> = Vec::new();
    for row in rows {
        let (key, hold) = row?;
        match keys.last_mut() {
            Some((last, holds)) if *last == key => holds.push(hold),
            _ => keys.push((key, vec![hold])),
        }
    }
    Ok(keys)
}

/// The key of a `holds` row (columns 0–3).
fn key_of(row: &Row<'_>) -> rusqlite::Result<LockKey> {
    let kind: String = row.get(0)?;
    let namespace: String = row.get(1)?;
    let user: String = row.get(2)?;
    let name: String = row.get(3)?;
    match kind.as_str() {
        "lock" => Ok(LockKey::Lock { namespace: namespace.into(), name: name.into() }),
        "mutex" => Ok(LockKey::Mutex { namespace: namespace.into(), user: user.into(), property: name.into() }),
        _ => Err(unreadable(0, format!("unknown key kind {kind:?}"))),
    }
}

/// The hold of a `holds` row (columns 4–11).
fn hold_of(row: &Row<'_>) -> rusqlite::Result<HoldRecord> {
    let request_ids = match row.get::<_, Option<String>>(11)? {
        None => Vec::new(),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| unreadable(11, format!("request_ids is not a JSON list of strings: {e}")))?,
    };
    Ok(HoldRecord {
        owner: row.get(4)?,
        mode: mode_of(row)?,
        count: row.get(7)?,
        fencing_token: row.get(8)?,
        session: row.get(9)?,
        expires_at_ms: row.get(10)?,
        request_ids,
    })
}

/// The mode of a `holds` row (columns 5 and 6). An unknown mode is an error, never a
/// guess: restoring a semaphore hold as exclusive would change who may enter.
fn mode_of(row: &Row<'_>) -> rusqlite::Result<Mode> {
    let mode: String = row.get(5)?;
    let limit: Option<u32> = row.get(6)?;
    match (mode.as_str(), limit) {
        ("exclusive", None) => Ok(Mode::Exclusive),
        ("shared", None) => Ok(Mode::Shared),
        ("semaphore", Some(limit)) => Ok(Mode::Semaphore { limit }),
        _ => Err(unreadable(5, format!("unknown mode {mode:?} with limit {limit:?}"))),
    }
}

fn load_marks(conn: &Connection) -> rusqlite::Result<Marks> {
    let marks = conn
        .query_row("SELECT fencing_high_water, last_revision, last_session FROM marks WHERE id = 1", [], |row| {
            Ok(Marks { fencing_high_water: row.get(0)?, last_revision: row.get(1)?, last_session: row.get(2)? })
        })
        .optional()?;
    Ok(marks.unwrap_or_default())
}

/// A stored value this version cannot read back.
fn unreadable(column: usize, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, why.into())
}
