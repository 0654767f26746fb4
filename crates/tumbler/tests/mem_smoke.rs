//! Quick checks of the in-process backend's own promises (the shared behaviour is in the
//! conformance suite).

use std::time::Duration;

use tumbler::mem::MemLocks;
use tumbler::{AcquireOptions, Error, LockGuard, Locker, LockerExt, LostReason};

#[tokio::test]
async fn waiter_is_woken_when_holder_releases() {
    let locks = MemLocks::new();
    let a = locks.owner();
    let b = locks.owner();
    let g = a.lock("k").await.unwrap();
    let waiter = tokio::spawn(async move { b.lock("k").await.map(|g| g.fencing_token()) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    let first = g.fencing_token();
    g.release().await.unwrap();
    let second = waiter.await.unwrap().unwrap();
    assert!(second > first);
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_fires_lost_on_the_guard() {
    let locks = MemLocks::new();
    let a = locks.owner();
    let g = a.acquire("k", AcquireOptions::exclusive().ttl(Duration::from_secs(5))).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), g.lost()).await.unwrap();
    assert_eq!(reason, LostReason::Expired);
    assert!(matches!(g.release().await, Err(Error::Lost { reason: LostReason::Expired })));
}

#[tokio::test(start_paused = true)]
async fn timeout_reports_timeout() {
    let locks = MemLocks::new();
    let a = locks.owner();
    let b = locks.owner();
    let _g = a.lock(1u64).await.unwrap();
    let err = b.acquire(1u64, AcquireOptions::exclusive().timeout(Duration::from_millis(50))).await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
}
