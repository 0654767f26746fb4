//! The conformance suite on the HTTP client, against a real lock server spawned in-process
//! on a free port of 127.0.0.1 (memory store), one server per case; and what only the
//! remote backend has: percent-encoded keys, leases whose loss the guards report, and
//! waits longer than one long-poll.

use std::time::Duration;

use tumbler::remote::{RemoteConfig, RemoteLocks};
use tumbler::{AcquireOptions, Error, LockGuard, Locker, LostReason};
use tumbler_server::ServerConfig;
use tumbler_testkit::conformance::skips_for;
use tumbler_testkit::RemoteBackend;

tumbler_testkit::conformance_tests!(RemoteBackend::new().await);

/// Lock-delay is the server's per-namespace setting, which an acquire cannot ask for:
/// nothing else is skipped.
#[test]
fn remote_skips_exactly_the_per_request_lock_delay_cases() {
    let skipped = skips_for(&tumbler::remote::capabilities());
    assert_eq!(skipped, ["lock_delay_after_owner_death", "lock_delay_does_not_follow_an_explicit_release"]);
}

const SAFETY: Duration = Duration::from_secs(10);

fn short_lease() -> RemoteConfig {
    let mut config = RemoteConfig::default();
    config.session_ttl = Duration::from_millis(600);
    config
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(SAFETY, fut).await.unwrap_or_else(|_| panic!("{what}: did not finish within {SAFETY:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_reserved_characters_are_one_path_segment_each() {
    let backend = RemoteBackend::new().await;
    let (a, b) = (backend.locks().owner().await.expect("owner"), backend.locks().owner().await.expect("owner"));
    let names = ["a/b", "a%2Fb", "a?b=c#d", "with space", "ключ/🔒", "...", "a/../b"];
    let mut guards = Vec::new();
    for name in names {
        let guard =
            a.acquire(name.to_owned(), AcquireOptions::exclusive()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        guards.push(guard);
    }
    for name in names {
        let e = b.acquire(name.to_owned(), AcquireOptions::exclusive()).await.expect_err(name);
        assert!(matches!(e, Error::Busy { .. }), "{name}: {e:?}");
    }
    // None of them is another's: "a" and "b" are free.
    for name in ["a", "b", "a%2Fb%2F", "a%252Fb"] {
        let guard =
            b.acquire(name.to_owned(), AcquireOptions::exclusive()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        guard.release().await.expect("release");
    }
    for guard in guards {
        guard.release().await.expect("release");
    }
    for name in [".", ".."] {
        let e = a.acquire(name.to_owned(), AcquireOptions::exclusive()).await.expect_err(name);
        assert!(matches!(e, Error::InvalidArgument { field: "key", .. }), "{name}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_the_server_is_reported_as_session_ended() {
    let backend = RemoteBackend::with_config(ServerConfig::for_tests(), short_lease()).await;
    let (a, b) = (backend.locks().owner().await.expect("owner"), backend.locks().owner().await.expect("owner"));
    let guard = a.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect("acquire");
    let session = a.session_id().expect("a session");
    let closed = reqwest::Client::new()
        .delete(format!("{}/v1/sessions/{session}", backend.url()))
        .send()
        .await
        .expect("DELETE the session");
    assert_eq!(closed.status().as_u16(), 200);
    // The next keep-alive (every 200 ms) hears 410.
    assert_eq!(within("lost()", guard.lost()).await, LostReason::SessionEnded);
    assert_eq!(a.ended(), Some(LostReason::SessionEnded));
    let e = a.acquire("other".to_owned(), AcquireOptions::exclusive()).await.expect_err("an ended owner");
    assert!(matches!(e, Error::SessionExpired), "{e:?}");
    let e = guard.release().await.expect_err("a lost guard");
    assert!(matches!(e, Error::Lost { reason: LostReason::SessionEnded }), "{e:?}");
    let taken = b.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect("the key is free");
    taken.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_as_connection_lost_once_the_lease_ran_out() {
    let backend = RemoteBackend::with_config(ServerConfig::for_tests(), short_lease()).await;
    let a = backend.locks().owner().await.expect("owner");
    let guard = a.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect("acquire");
    let stopped = tokio::time::Instant::now();
    backend.shutdown().await;
    assert_eq!(within("lost()", guard.lost()).await, LostReason::ConnectionLost);
    // Bounded by the lease (600 ms), with room for a loaded machine.
    assert!(stopped.elapsed() <= Duration::from_millis(1_600), "{:?}", stopped.elapsed());
    assert_eq!(a.ended(), Some(LostReason::ConnectionLost));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_longer_than_the_server_allows_are_several_long_polls_counting_once() {
    let mut server = ServerConfig::for_tests();
    server.limits.max_wait_ms = 1_000;
    // The client asks for 10-minute polls at first: the server refuses, and it halves
    // its bound until accepted.
    let backend = RemoteBackend::with_config(server, RemoteConfig::default()).await;
    let (a, b, c) = (
        backend.locks().owner().await.expect("owner"),
        backend.locks().owner().await.expect("owner"),
        backend.locks().owner().await.expect("owner"),
    );
    for options in [AcquireOptions::exclusive().forever(), AcquireOptions::exclusive().timeout(Duration::from_secs(5))]
    {
        let held = a.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect("a's acquire");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire("k".to_owned(), options).await })
        };
        // Across two of the server's long-poll bounds.
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        assert!(!waiter.is_finished(), "b's wait ended while a held");
        held.release().await.expect("a's release");
        let granted = within("b's wait", waiter).await.expect("task").expect("b's wait");
        let e = c.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect_err("c's try while b holds");
        assert!(matches!(e, Error::Busy { .. }), "{e:?}");
        granted.release().await.expect("b's release");
        // One level only: one release freed the key.
        c.acquire("k".to_owned(), AcquireOptions::exclusive())
            .await
            .expect("c's try")
            .release()
            .await
            .expect("release");
    }
    // A bounded wait longer than one poll still ends with `timeout`, after its bound.
    let held = a.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect("a's acquire");
    let started = tokio::time::Instant::now();
    let e = b.acquire("k".to_owned(), AcquireOptions::exclusive().timeout(Duration::from_millis(1_500))).await;
    assert!(matches!(e, Err(Error::Timeout)), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(1_500), "{:?}", started.elapsed());
    held.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_api_cannot_express_are_refused_before_sending() {
    // No server at all: nothing is sent.
    let locks = RemoteLocks::new("http://127.0.0.1:9", "ns").expect("valid");
    assert!(locks.owner().await.is_err(), "no server listens there");
    let backend = RemoteBackend::new().await;
    let a = backend.locks().owner().await.expect("owner");
    let e = a
        .acquire("k".to_owned(), AcquireOptions::exclusive().lock_delay(Duration::from_secs(1)))
        .await
        .expect_err("lock_delay");
    assert!(matches!(e, Error::NotSupported { operation: "lock_delay", backend: "remote" }), "{e:?}");
    let e = a.acquire("k".to_owned(), AcquireOptions::exclusive().timeout(Duration::ZERO)).await.expect_err("zero");
    assert!(matches!(e, Error::InvalidArgument { field: "wait", .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_moves_the_expiry_and_lost_follows_it() {
    let backend = RemoteBackend::new().await;
    let (a, b) = (backend.locks().owner().await.expect("owner"), backend.locks().owner().await.expect("owner"));
    let started = tokio::time::Instant::now();
    let guard =
        a.acquire("k".to_owned(), AcquireOptions::exclusive().ttl(Duration::from_millis(200))).await.expect("a");
    guard.refresh(Duration::from_millis(600)).await.expect("refresh");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(guard.lost_reason(), None, "lost before the refreshed TTL ran out");
    let e = b.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect_err("b's try");
    assert!(matches!(e, Error::Busy { .. }), "{e:?}");
    assert_eq!(within("lost()", guard.lost()).await, LostReason::Expired);
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    let taken = b.acquire("k".to_owned(), AcquireOptions::exclusive()).await.expect("free after expiry");
    let e = guard.refresh(Duration::from_secs(1)).await.expect_err("refreshing a lost hold");
    assert!(matches!(e, Error::Lost { reason: LostReason::Expired }), "{e:?}");
    taken.release().await.expect("release");
}

/// Waits aborted at every moment around their grant — before it, while its answer is on
/// the way, after it — never leave a hold behind: each time, the key is free again soon
/// after (a leaked grant would stay held by the live owner's session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_waits_racing_their_grant_never_leak_it() {
    let backend = RemoteBackend::new().await;
    let (a, b, c) = (
        backend.locks().owner().await.expect("owner"),
        backend.locks().owner().await.expect("owner"),
        backend.locks().owner().await.expect("owner"),
    );
    for round in 0..60u64 {
        let key = format!("k{round}");
        let held = a.acquire(key.clone(), AcquireOptions::exclusive()).await.expect("a's acquire");
        let waiter = {
            let (b, key) = (b.clone(), key.clone());
            tokio::spawn(async move { b.acquire(key, AcquireOptions::exclusive().forever()).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let release = tokio::spawn(held.release());
        // Abort somewhere between before the release reached the server and well after.
        tokio::time::sleep(Duration::from_micros(round * 50)).await;
        waiter.abort();
        if let Ok(Ok(guard)) = waiter.await {
            guard.release().await.expect("b's release");
        }
        release.await.expect("task").expect("a's release");
        let free = within(&format!("round {round}: the key freed"), async {
            loop {
                match c.acquire(key.clone(), AcquireOptions::exclusive()).await {
                    Ok(guard) => break guard,
                    Err(Error::Busy { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
        })
        .await;
        free.release().await.expect("c's release");
    }
}
