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

/// Tasks on several worker threads pass a few hot keys around, some of them giving up
/// mid-wait (dropping the waiting future, racing with the hand-off to it): every
/// key is held by one task at a time, with fencing tokens that only grow, and at the end
/// every key is free, with no one left queued. Bounded: a fixed number of rounds, under
/// an overall time limit that fails the test if a wake-up is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_keys_pass_between_threads_with_waiters_giving_up() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const KEYS: u64 = 3;
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 1500;
    let locks = MemLocks::<u64>::new();
    let held: Arc<Vec<AtomicBool>> = Arc::new((0..KEYS).map(|_| AtomicBool::new(false)).collect());
    let last_token: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let gave_up = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (owner, held, last_token, gave_up) = (locks.owner(), held.clone(), last_token.clone(), gave_up.clone());
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let key = (t + round) % KEYS;
                    let guard = if round % 4 == t % 4 {
                        // Gives up after a few polls of its task, as a select! would.
                        let patience = async {
                            for _ in 0..round % 3 {
                                tokio::task::yield_now().await;
                            }
                        };
                        tokio::select! {
                            biased;
                            guard = owner.lock(key) => guard.unwrap(),
                            () = patience => {
                                gave_up.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    } else {
                        owner.lock(key).await.unwrap()
                    };
                    assert!(!held[key as usize].swap(true, Ordering::AcqRel), "key {key} held twice");
                    let token = guard.fencing_token();
                    let before = last_token[key as usize].swap(token, Ordering::AcqRel);
                    assert!(token > before, "key {key}: token {token} after {before}");
                    if round % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    held[key as usize].store(false, Ordering::Release);
                    drop(guard);
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("every task finishes: no wake-up was lost");

    let checker = locks.owner();
    for key in 0..KEYS {
        let status = locks.status(&key);
        assert!(status.as_ref().is_none_or(|s| s.holders.is_empty() && s.waiters == 0), "key {key}: {status:?}");
        let guard = checker.acquire(key, AcquireOptions::exclusive()).await.expect("the key is free");
        assert!(guard.fencing_token() > last_token[key as usize].load(Ordering::Acquire));
    }
    let gave_up = gave_up.load(Ordering::Relaxed);
    eprintln!("{gave_up} of {} acquires gave up mid-wait", TASKS * ROUNDS);
    assert!(gave_up > 0, "no waiter gave up mid-wait: the race with the hand-off was not exercised");
}
