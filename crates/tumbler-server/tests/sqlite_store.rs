//! The SQLite store: what is committed comes back after a reopen, exactly; concurrent
//! commits share transactions; failures are reported and leave the writer running.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tumbler_core::Mode;
use tumbler_server::store::{Change, HoldRecord, Marks, SessionRecord, Snapshot, SqliteStore, StoreError};
use tumbler_server::LockKey;

fn hold(owner: &str, mode: Mode, token: u64, session: Option<u64>, expires_at_ms: Option<u64>) -> HoldRecord {
    HoldRecord {
        owner: owner.into(),
        mode,
        count: 2,
        fencing_token: token,
        session,
        expires_at_ms,
        request_ids: Vec::new(),
    }
}

fn key_change(key: &LockKey, holds: Vec<HoldRecord>) -> Change {
    Change::Key { key: key.clone(), holds }
}

fn lock(name: &str) -> LockKey {
    LockKey::lock("ns", name).unwrap()
}

fn marks(fencing_high_water: u64, last_revision: u64) -> Marks {
    Marks { fencing_high_water, last_revision, last_session: 0 }
}

/// A fresh database path in its own temporary directory (kept alive by the `TempDir`).
fn db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tumbler.db");
    (dir, path)
}

async fn commit(store: &SqliteStore, changes: Vec<Change>) {
    store.commit(changes, Marks::default()).await.unwrap();
}

/// Closes `store` and reads the file back through a fresh store.
async fn reopen(store: SqliteStore, path: &Path) -> Snapshot {
    store.close().await;
    let store = SqliteStore::open(path).await.unwrap();
    let snapshot = store.load().await.unwrap();
    store.close().await;
    snapshot
}

fn holds_of(snapshot: &Snapshot, key: &LockKey) -> Option<Vec<HoldRecord>> {
    snapshot.keys.iter().find(|(k, _)| k == key).map(|(_, h)| h.clone())
}

#[tokio::test]
async fn every_change_kind_and_key_kind_survives_a_reopen() {
    let (_dir, path) = db();
    let plain = lock("a:b");
    let mutex = LockKey::mutex("ns", "a", "b").unwrap();
    let pool = lock("pool");
    let sessions = vec![
        SessionRecord { id: 7, ttl_ms: 5000, label: Some("worker".into()) },
        SessionRecord { id: 8, ttl_ms: 100, label: None },
    ];
    let pool_holds = vec![
        hold("s2", Mode::Semaphore { limit: 3 }, 6, None, Some(1)),
        // Request ids come back in order, whatever their text.
        HoldRecord {
            request_ids: vec!["r-1".into(), "with \"quotes\", commas and ünïcode".into()],
            ..hold("s1", Mode::Semaphore { limit: 3 }, 5, Some(8), None)
        },
    ];
    let store = SqliteStore::open(&path).await.unwrap();
    let mut changes: Vec<Change> = sessions.iter().cloned().map(Change::SessionOpened).collect();
    changes.push(key_change(&plain, vec![hold("o1", Mode::Exclusive, 3, Some(7), None)]));
    changes.push(key_change(&mutex, vec![hold("t1", Mode::Shared, 4, None, Some(1_900_000_000_000))]));
    changes.push(key_change(&pool, pool_holds.clone()));
    store.commit(changes, marks(6, 40)).await.unwrap();

    let snapshot = reopen(store, &path).await;
    assert_eq!(snapshot.marks, marks(6, 40));
    assert_eq!(snapshot.sessions, sessions);
    assert_eq!(holds_of(&snapshot, &plain), Some(vec![hold("o1", Mode::Exclusive, 3, Some(7), None)]));
    assert_eq!(holds_of(&snapshot, &mutex), Some(vec![hold("t1", Mode::Shared, 4, None, Some(1_900_000_000_000))]));
    assert_eq!(holds_of(&snapshot, &pool), Some(pool_holds), "holds come back in the order written");
    assert_eq!(snapshot.keys.len(), 3);
}

#[tokio::test]
async fn a_lock_and_a_mutex_with_the_same_strings_stay_apart() {
    let (_dir, path) = db();
    // Built by hand: a mutex whose user is empty has exactly a plain lock's columns but
    // its kind.
    let plain = LockKey::Lock { namespace: "ns".into(), name: "p".into() };
    let mutex = LockKey::Mutex { namespace: "ns".into(), user: "".into(), property: "p".into() };
    let store = SqliteStore::open(&path).await.unwrap();
    commit(&store, vec![key_change(&plain, vec![hold("a", Mode::Exclusive, 1, None, None)])]).await;
    commit(&store, vec![key_change(&mutex, vec![hold("b", Mode::Exclusive, 2, None, None)])]).await;
    let snapshot = reopen(store, &path).await;
    assert_eq!(holds_of(&snapshot, &plain).unwrap()[0].owner, "a");
    assert_eq!(holds_of(&snapshot, &mutex).unwrap()[0].owner, "b");
}

#[tokio::test]
async fn a_key_with_no_holds_is_forgotten() {
    let (_dir, path) = db();
    let (gone, kept) = (lock("gone"), lock("kept"));
    let store = SqliteStore::open(&path).await.unwrap();
    let one = vec![hold("o", Mode::Exclusive, 1, None, None)];
    commit(&store, vec![key_change(&gone, one.clone()), key_change(&kept, one.clone())]).await;
    commit(&store, vec![key_change(&gone, Vec::new())]).await;
    let snapshot = reopen(store, &path).await;
    assert_eq!(snapshot.keys, vec![(kept, one)]);
}

#[tokio::test]
async fn a_closed_session_is_removed_with_its_holds() {
    let (_dir, path) = db();
    let pool = lock("pool");
    let store = SqliteStore::open(&path).await.unwrap();
    let open = |id| Change::SessionOpened(SessionRecord { id, ttl_ms: 1000, label: None });
    let holds = vec![hold("in8", Mode::Shared, 1, Some(8), None), hold("in9", Mode::Shared, 1, Some(9), None)];
    commit(&store, vec![open(8), open(9), key_change(&pool, holds)]).await;
    commit(&store, vec![Change::SessionClosed(8)]).await;
    let snapshot = reopen(store, &path).await;
    assert_eq!(snapshot.sessions.iter().map(|s| s.id).collect::<Vec<_>>(), vec![9]);
    assert_eq!(holds_of(&snapshot, &pool), Some(vec![hold("in9", Mode::Shared, 1, Some(9), None)]));
}

#[tokio::test]
async fn reopening_a_session_replaces_its_record() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let record = SessionRecord { id: 3, ttl_ms: 10, label: Some("old".into()) };
    commit(&store, vec![Change::SessionOpened(record)]).await;
    let record = SessionRecord { id: 3, ttl_ms: 20, label: None };
    commit(&store, vec![Change::SessionOpened(record.clone())]).await;
    assert_eq!(reopen(store, &path).await.sessions, vec![record]);
}

#[tokio::test]
async fn marks_never_go_down() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    store.commit(Vec::new(), marks(6, 40)).await.unwrap();
    store.commit(Vec::new(), marks(2, 3)).await.unwrap();
    assert_eq!(store.load().await.unwrap().marks, marks(6, 40));
    // Each mark rises on its own.
    store.commit(Vec::new(), marks(1, 41)).await.unwrap();
    store.commit(Vec::new(), Marks { last_session: 9, ..marks(0, 0) }).await.unwrap();
    store.commit(Vec::new(), Marks { last_session: 4, ..marks(0, 0) }).await.unwrap();
    assert_eq!(reopen(store, &path).await.marks, Marks { last_session: 9, ..marks(6, 41) });
}

/// A file written before the session mark existed opens, keeps its other marks, and
/// starts counting sessions from 0.
#[tokio::test]
async fn a_file_from_before_the_session_mark_is_upgraded() {
    let (_dir, path) = db();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE marks (id INTEGER PRIMARY KEY CHECK (id = 1),
                                 fencing_high_water INTEGER NOT NULL, last_revision INTEGER NOT NULL);
             INSERT INTO marks VALUES (1, 12, 34);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.load().await.unwrap().marks, marks(12, 34));
    store.commit(Vec::new(), Marks { last_session: 5, ..marks(12, 34) }).await.unwrap();
    assert_eq!(reopen(store, &path).await.marks, Marks { last_session: 5, ..marks(12, 34) });
}

#[tokio::test]
async fn a_later_commit_of_a_key_wins() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let key = lock("k");
    for token in 1..=5 {
        commit(&store, vec![key_change(&key, vec![hold("o", Mode::Shared, token, None, None)])]).await;
    }
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.keys, vec![(key, vec![hold("o", Mode::Shared, 5, None, None)])]);
    store.close().await;
}

#[tokio::test]
async fn commits_sent_together_apply_in_the_order_sent() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let key = lock("k");
    // `join!` polls the first future first, so its batch is queued first; both are
    // queued before either is answered, so they usually share a transaction.
    let first = store.commit(vec![key_change(&key, vec![hold("first", Mode::Exclusive, 1, None, None)])], marks(1, 1));
    let second =
        store.commit(vec![key_change(&key, vec![hold("second", Mode::Exclusive, 2, None, None)])], marks(2, 2));
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();
    let snapshot = reopen(store, &path).await;
    assert_eq!(holds_of(&snapshot, &key).unwrap()[0].owner, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_transactions() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let before = store.transactions();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let change = key_change(&lock(&format!("k{i}")), vec![hold("o", Mode::Exclusive, i + 1, None, None)]);
                store.commit(vec![change], marks(i + 1, i)).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let used = store.transactions() - before;
    assert!(used < 200, "200 concurrent commits took {used} transactions: no grouping");
    assert!(used >= 1);
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.keys.len(), 200);
    assert_eq!(snapshot.marks, marks(200, 199));
    store.close().await;
}

#[tokio::test]
async fn a_failed_commit_keeps_nothing_and_the_writer_keeps_running() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    // Two holds of one owner in one mode break the table's primary key.
    let twice = vec![hold("o", Mode::Exclusive, 1, None, None), hold("o", Mode::Exclusive, 2, None, None)];
    let session = Change::SessionOpened(SessionRecord { id: 1, ttl_ms: 10, label: None });
    let err = store.commit(vec![session, key_change(&lock("bad"), twice)], marks(9, 9)).await.unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    // A token SQLite cannot hold is refused, not wrapped.
    let huge = vec![hold("o", Mode::Exclusive, u64::MAX, None, None)];
    let err = store.commit(vec![key_change(&lock("huge"), huge)], Marks::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");

    let good = vec![hold("o", Mode::Exclusive, 3, None, None)];
    store.commit(vec![key_change(&lock("good"), good.clone())], marks(3, 3)).await.unwrap();
    let snapshot = reopen(store, &path).await;
    assert_eq!(snapshot, Snapshot { sessions: Vec::new(), keys: vec![(lock("good"), good)], marks: marks(3, 3) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_commit_answered_ok_is_kept_and_no_failed_one_is() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let tasks: Vec<_> = (0..50u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Every tenth commit is broken; whichever group it lands in fails with it.
                let copies = if i % 10 == 5 { 2 } else { 1 };
                let holds = vec![hold("o", Mode::Exclusive, i + 1, None, None); copies];
                store.commit(vec![key_change(&lock(&format!("k{i}")), holds)], Marks::default()).await.is_ok()
            })
        })
        .collect();
    let mut answered_ok = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let ok = task.await.unwrap();
        assert!(!(ok && i % 10 == 5), "broken commit {i} was answered ok");
        if ok {
            answered_ok.push(lock(&format!("k{i}")));
        }
    }
    assert!(answered_ok.len() <= 45);
    let snapshot = reopen(store, &path).await;
    let mut kept: Vec<LockKey> = snapshot.keys.into_iter().map(|(k, _)| k).collect();
    kept.sort();
    answered_ok.sort();
    assert_eq!(kept, answered_ok);
}

#[tokio::test]
async fn a_commit_or_load_after_close_fails() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let clone = store.clone();
    store.close().await;
    let err = clone.commit(Vec::new(), Marks::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    assert!(matches!(clone.load().await, Err(StoreError::Io(_))));
    // Closing again is harmless.
    clone.close().await;
}

#[tokio::test]
async fn close_waits_for_commits_in_flight() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let key = lock("k");
    let pending = store.commit(vec![key_change(&key, vec![hold("o", Mode::Exclusive, 1, None, None)])], marks(1, 1));
    let (committed, ()) = tokio::join!(pending, store.close());
    committed.unwrap();
    let snapshot = reopen(store, &path).await;
    assert_eq!(holds_of(&snapshot, &key).map(|h| h.len()), Some(1));
}

#[tokio::test]
async fn opening_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not/yet/there/tumbler.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.close().await;
    assert!(path.is_file());
}

#[tokio::test]
async fn the_database_is_in_wal_mode() {
    let (_dir, path) = db();
    SqliteStore::open(&path).await.unwrap().close().await;
    // WAL mode is recorded in the file, so a plain connection sees it once the store is
    // closed.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

/// A row whose request ids cannot be read is an error, never silently an empty list: a
/// retry would then count a second level.
#[tokio::test]
async fn unreadable_request_ids_are_refused() {
    let (_dir, path) = db();
    let store = SqliteStore::open(&path).await.unwrap();
    let held = HoldRecord { request_ids: vec!["r".into()], ..hold("o", Mode::Exclusive, 1, None, None) };
    store.commit(vec![key_change(&lock("k"), vec![held])], Marks::default()).await.unwrap();
    store.close().await;
    rusqlite::Connection::open(&path).unwrap().execute_batch("UPDATE holds SET request_ids = 'r'").unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let err = store.load().await.expect_err("an unreadable row is refused");
    assert!(matches!(&err, StoreError::Io(m) if m.contains("request_ids")), "{err:?}");
    store.close().await;
}

#[tokio::test]
async fn a_second_store_cannot_open_a_database_in_use() {
    let (_dir, path) = db();
    let first = SqliteStore::open(&path).await.unwrap();
    // Waits out the busy timeout (a few seconds), then gives up.
    let err = SqliteStore::open(&path).await.err().expect("a database in use is refused");
    assert!(matches!(&err, StoreError::Io(m) if m.contains("in use")), "{err:?}");
    first.close().await;
    SqliteStore::open(&path).await.expect("free again once closed").close().await;
}

#[tokio::test]
async fn a_path_that_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = SqliteStore::open(&file.join("t.db")).await.err().expect("opening under a file fails");
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
}
