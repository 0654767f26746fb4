//! Graceful shutdown: long-polls in flight are answered 503 `unavailable` rather than left
//! hanging, event streams end, and `shutdown()` completes in bounded time.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{finish, Harness, Read, DEADLINE};

const NS: &str = "stop";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_in_flight_at_shutdown_are_answered_unavailable() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    h.hold(NS, "m", "alice").await;
    let single = h.spawn_acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 60_000, "wait_ms": 60_000 }));
    let multi = h.spawn_post(
        &format!("/v1/namespaces/{NS}/acquire"),
        json!({ "keys": ["free", "m"], "owner": "carol", "ttl_ms": 60_000, "wait_ms": 60_000 }),
    );
    h.until_waiters(NS, "k", 1).await;
    h.until_waiters(NS, "m", 1).await;

    let started = Instant::now();
    let stopping = tokio::spawn(h.into_server().shutdown());
    for waiter in [single, multi] {
        finish(waiter).await.expect_error(503, "unavailable");
    }
    tokio::time::timeout(DEADLINE, stopping).await.expect("shutdown completes in time").expect("no panic");
    assert!(started.elapsed() < DEADLINE, "shutdown took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_end_at_shutdown() {
    let h = Harness::start().await;
    let mut events = h.events(NS, "", None).await.expect("the stream opens");
    h.hold(NS, "k", "alice").await;
    assert_eq!(events.next().await.event, "acquired");

    let stopping = tokio::spawn(h.into_server().shutdown());
    match events.read(DEADLINE).await {
        Read::Ended => {}
        other => panic!("expected the stream to end, got {other:?}"),
    }
    tokio::time::timeout(DEADLINE, stopping).await.expect("shutdown completes in time").expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_shuts_down_promptly_after_serving() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    h.get("/healthz").await.ok();
    let started = Instant::now();
    h.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());
}
