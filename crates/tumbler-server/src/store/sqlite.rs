//! The embedded store: SQLite, written by one thread with group commit.
//!
//! SQLite calls block, so they never run on the async runtime: one writer thread owns the
//! connection. `commit` hands its batch to the thread and awaits the answer. The thread
//! takes the first batch waiting, then every other batch already queued behind it, writes
//! them all in one transaction (in arrival order) and answers them all with its outcome —
//! so concurrent requests share one write and one sync (group commit).
//!
//! Durability: WAL mode with `synchronous = FULL`, so a commit that was answered survives
//! a crash of the process and of the machine.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;
use tumbler_core::Mode;

use super::{Change, HoldRecord, Marks, SessionRecord, Snapshot, StoreError};
use crate::key::LockKey;

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
    last_revision      INTEGER NOT NULL
);
";

/// Work for the writer thread.
enum Job {
    Commit { changes: Vec<Change>, marks: Marks, done: oneshot::Sender<Result<(), String>> },
    Load(oneshot::Sender<Result<Snapshot, String>>),
}

struct Inner {
    /// `None` once closed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    transactions: Arc<AtomicU64>,
}

/// The SQLite store (see the module documentation). Cheap to clone: clones share the
/// writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it and its directory when missing, and
    /// starts the writer thread.
    ///
    /// # Errors
    /// `StoreError::Io` when the directory or the database cannot be created or opened.
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
            .spawn(move || write_loop(conn, rx, &counter))
            .map_err(|e| StoreError::Io(format!("cannot start the store's writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner { jobs: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), transactions }),
        })
    }

    /// Reads everything back. Sees every commit answered before it was called.
    ///
    /// # Errors
    /// `StoreError::Io` when the database cannot be read or the store is closed.
    pub async fn load(&self) -> Result<Snapshot, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Job::Load(done))?;
        answer.await.map_err(|_| closed())?.map_err(StoreError::Io)
    }

    /// Writes `changes` and `marks` durably and returns once they are on disk, sharing the
    /// transaction with every commit queued at the same time.
    ///
    /// # Errors
    /// `StoreError::Io` when the transaction failed (none of its batches is then kept) or
    /// the store is closed.
    pub async fn commit(&self, changes: Vec<Change>, marks: Marks) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Job::Commit { changes, marks, done })?;
        answer.await.map_err(|_| closed())?.map_err(StoreError::Io)
    }

    /// Waits for every commit already queued, then stops the writer thread and closes the
    /// database. Later calls fail.
    pub async fn close(&self) {
        // Dropping the sender ends the thread's loop once the queue is empty.
        drop(self.inner.jobs.lock().take());
        let thread = self.inner.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// How many transactions the writer has committed since the store was opened: with
    /// group commit, fewer than the commits answered.
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

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path).map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(io)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(io)?;
    conn.execute_batch(SCHEMA).map_err(io)?;
    Ok(conn)
}

/// The writer thread: one group of commits per transaction, until every sender is gone.
fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<Job>, transactions: &AtomicU64) {
    let mut next = jobs.recv().ok();
    while let Some(job) = next.take() {
        match job {
            Job::Load(done) => {
                let _ = done.send(load(&conn).map_err(|e| e.to_string()));
                next = jobs.recv().ok();
            }
            Job::Commit { changes, marks, done } => {
                let mut group = vec![(changes, marks, done)];
                // Everything already queued joins this transaction; a load waits for it.
                loop {
                    match jobs.try_recv() {
                        Ok(Job::Commit { changes, marks, done }) => group.push((changes, marks, done)),
                        Ok(load) => {
                            next = Some(load);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let outcome = write_group(&mut conn, &group).map_err(|e| e.to_string());
                if outcome.is_ok() {
                    transactions.fetch_add(1, Ordering::AcqRel);
                }
                for (_, _, done) in group {
                    let _ = done.send(outcome.clone());
                }
                if next.is_none() {
                    next = jobs.recv().ok();
                }
            }
        }
    }
}

type Batch = (Vec<Change>, Marks, oneshot::Sender<Result<(), String>>);

fn write_group(conn: &mut Connection, group: &[Batch]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut high = Marks::default();
    for (changes, marks, _) in group {
        for change in changes {
            apply(&tx, change)?;
        }
        high.fencing_high_water = high.fencing_high_water.max(marks.fencing_high_water);
        high.last_revision = high.last_revision.max(marks.last_revision);
    }
    tx.prepare_cached(
        "INSERT INTO marks (id, fencing_high_water, last_revision) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET
             fencing_high_water = max(fencing_high_water, excluded.fencing_high_water),
             last_revision = max(last_revision, excluded.last_revision)",
    )?
    .execute(params![high.fencing_high_water as i64, high.last_revision as i64])?;
    tx.commit()
}

/// A key's columns: kind, namespace, user, name.
fn key_columns(key: &LockKey) -> (&'static str, &str, &str, &str) {
    match key {
        LockKey::Lock { namespace, name } => ("lock", namespace, "", name),
        LockKey::Mutex { namespace, user, property } => ("mutex", namespace, user, property),
    }
}

fn apply(tx: &Transaction<'_>, change: &Change) -> rusqlite::Result<()> {
    match change {
        Change::Key { key, holds } => {
            let (kind, namespace, user, name) = key_columns(key);
            tx.prepare_cached("DELETE FROM holds WHERE kind = ?1 AND namespace = ?2 AND user = ?3 AND name = ?4")?
                .execute(params![kind, namespace, user, name])?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO holds (kind, namespace, user, name, owner, mode, lim, count, token, session, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for h in holds {
                insert.execute(params![
                    kind,
                    namespace,
                    user,
                    name,
                    h.owner,
                    h.mode.name(),
                    h.mode.limit(),
                    h.count,
                    h.fencing_token as i64,
                    h.session.map(|s| s as i64),
                    h.expires_at_ms.map(|ms| ms as i64),
                ])?;
            }
        }
        Change::SessionOpened(s) => {
            tx.prepare_cached(
                "INSERT INTO sessions (id, ttl_ms, label) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET ttl_ms = excluded.ttl_ms, label = excluded.label",
            )?
            .execute(params![s.id as i64, s.ttl_ms as i64, s.label])?;
        }
        Change::SessionClosed(id) => {
            // A session's end releases all its holds.
            tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?.execute(params![*id as i64])?;
            tx.prepare_cached("DELETE FROM holds WHERE session = ?1")?.execute(params![*id as i64])?;
        }
    }
    Ok(())
}

fn load(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    let mut sessions = conn.prepare("SELECT id, ttl_ms, label FROM sessions ORDER BY id")?;
    snapshot.sessions = sessions
        .query_map([], |row| {
            Ok(SessionRecord {
                id: row.get::<_, i64>(0)? as u64,
                ttl_ms: row.get::<_, i64>(1)? as u64,
                label: row.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut holds = conn.prepare(
        "SELECT kind, namespace, user, name, owner, mode, lim, count, token, session, expires_at_ms
         FROM holds ORDER BY kind, namespace, user, name, token",
    )?;
    let rows = holds.query_map([], |row| {
        let kind: String = row.get(0)?;
        let namespace: String = row.get(1)?;
        let user: String = row.get(2)?;
        let name: String = row.get(3)?;
        let key = match kind.as_str() {
            "mutex" => LockKey::Mutex { namespace: namespace.into(), user: user.into(), property: name.into() },
            _ => LockKey::Lock { namespace: namespace.into(), name: name.into() },
        };
        let mode: String = row.get(5)?;
        let limit: Option<u32> = row.get(6)?;
        let mode = match (mode.as_str(), limit) {
            ("shared", _) => Mode::Shared,
            ("semaphore", Some(limit)) => Mode::Semaphore { limit },
            _ => Mode::Exclusive,
        };
        let hold = HoldRecord {
            owner: row.get(4)?,
            mode,
            count: row.get(7)?,
            fencing_token: row.get::<_, i64>(8)? as u64,
            session: row.get::<_, Option<i64>>(9)?.map(|s| s as u64),
            expires_at_ms: row.get::<_, Option<i64>>(10)?.map(|ms| ms as u64),
        };
        Ok((key, hold))
    })?;
    for row in rows {
        let (key, hold) = row?;
        match snapshot.keys.last_mut() {
            Some((last, holds)) if *last == key => holds.push(hold),
            _ => snapshot.keys.push((key, vec![hold])),
        }
    }
    snapshot.marks = conn
        .query_row("SELECT fencing_high_water, last_revision FROM marks WHERE id = 1", [], |row| {
            Ok(Marks { fencing_high_water: row.get::<_, i64>(0)? as u64, last_revision: row.get::<_, i64>(1)? as u64 })
        })
        .optional()?
        .unwrap_or_default();
    Ok(snapshot)
}
