//! The SQLite store: what is committed comes back after a reopen, and concurrent commits
//! share transactions.

use std::sync::Arc;

use tumbler_core::Mode;
use tumbler_server::store::{Change, HoldRecord, Marks, SessionRecord, SqliteStore};
use tumbler_server::LockKey;

fn hold(owner: &str, mode: Mode, token: u64, session: Option<u64>, expires_at_ms: Option<u64>) -> HoldRecord {
    HoldRecord { owner: owner.into(), mode, count: 2, fencing_token: token, session, expires_at_ms }
}

#[tokio::test]
async fn every_change_kind_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/tumbler.db");
    let lock = LockKey::lock("ns", "a:b").unwrap();
    let mutex = LockKey::mutex("ns", "a", "b").unwrap();
    let semaphore = LockKey::lock("ns", "pool").unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let changes = vec![
        Change::SessionOpened(SessionRecord { id: 7, ttl_ms: 5000, label: Some("worker".into()) }),
        Change::SessionOpened(SessionRecord { id: 8, ttl_ms: 100, label: None }),
        Change::Key { key: lock.clone(), holds: vec![hold("o1", Mode::Exclusive, 3, Some(7), None)] },
        Change::Key { key: mutex.clone(), holds: vec![hold("t1", Mode::Exclusive, 4, None, Some(1_900_000_000_000))] },
        Change::Key {
            key: semaphore.clone(),
            holds: vec![
                hold("s1", Mode::Semaphore { limit: 3 }, 5, Some(8), None),
                hold("s2", Mode::Semaphore { limit: 3 }, 6, None, Some(1)),
            ],
        },
    ];
    store.commit(changes, Marks { fencing_high_water: 6, last_revision: 40 }).await.unwrap();
    store.close().await;
    assert!(store.commit(Vec::new(), Marks::default()).await.is_err(), "a closed store refuses commits");

    let store = SqliteStore::open(&path).await.unwrap();
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.marks, Marks { fencing_high_water: 6, last_revision: 40 });
    assert_eq!(snapshot.sessions.len(), 2);
    assert_eq!(snapshot.sessions[0], SessionRecord { id: 7, ttl_ms: 5000, label: Some("worker".into()) });
    let find = |key: &LockKey| snapshot.keys.iter().find(|(k, _)| k == key).map(|(_, h)| h.clone());
    assert_eq!(find(&lock), Some(vec![hold("o1", Mode::Exclusive, 3, Some(7), None)]));
    assert_eq!(find(&mutex), Some(vec![hold("t1", Mode::Exclusive, 4, None, Some(1_900_000_000_000))]));
    assert_eq!(find(&semaphore).map(|h| h.len()), Some(2));
    assert_eq!(find(&semaphore).unwrap()[0].mode, Mode::Semaphore { limit: 3 });

    // A key with no holds is forgotten; a closed session takes its holds with it; marks
    // never go down.
    let changes = vec![Change::Key { key: mutex.clone(), holds: Vec::new() }, Change::SessionClosed(8)];
    store.commit(changes, Marks { fencing_high_water: 2, last_revision: 3 }).await.unwrap();
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.marks, Marks { fencing_high_water: 6, last_revision: 40 });
    assert!(snapshot.keys.iter().all(|(k, _)| *k != mutex));
    assert_eq!(snapshot.sessions.iter().map(|s| s.id).collect::<Vec<_>>(), vec![7]);
    let pool = snapshot.keys.iter().find(|(k, _)| *k == semaphore).map(|(_, h)| h.clone()).unwrap();
    assert_eq!(pool.iter().map(|h| h.owner.as_str()).collect::<Vec<_>>(), vec!["s2"]);
    store.close().await;
}

#[tokio::test]
async fn a_later_commit_of_a_key_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
    let key = LockKey::lock("ns", "k").unwrap();
    for token in 1..=5 {
        let holds = vec![hold("o", Mode::Shared, token, None, None)];
        store.commit(vec![Change::Key { key: key.clone(), holds }], Marks::default()).await.unwrap();
    }
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.keys.len(), 1);
    assert_eq!(snapshot.keys[0].1[0].fencing_token, 5);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).await.unwrap());
    let before = store.transactions();
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = LockKey::lock("ns", &format!("k{i}")).unwrap();
                let holds = vec![hold("o", Mode::Exclusive, i + 1, None, None)];
                store
                    .commit(vec![Change::Key { key, holds }], Marks { fencing_high_water: i + 1, last_revision: i })
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let used = store.transactions() - before;
    assert!(used < 200, "200 concurrent commits took {used} transactions: no grouping");
    let snapshot = store.load().await.unwrap();
    assert_eq!(snapshot.keys.len(), 200);
    assert_eq!(snapshot.marks.fencing_high_water, 200);
    store.close().await;
}

#[tokio::test]
async fn a_path_that_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = SqliteStore::open(&file.join("t.db")).await.err().expect("opening under a file fails");
    assert!(matches!(err, tumbler_server::store::StoreError::Io(_)), "{err:?}");
}
