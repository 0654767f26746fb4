//! The worker threads that serve connections: hand-offs between connections of different
//! workers, with and without spinning, and a shutdown that ends every worker thread.
//!
//! One test function: it counts the process's worker threads, which tests running beside
//! it in this binary would disturb.

mod support;

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{finish, Harness, DEADLINE};
use tumbler_server::ServerConfig;

const NS: &str = "workers";

/// Threads of this process whose name starts as the server names its workers.
fn worker_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task lists this process's threads");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("tumbler-worker"))
        .count()
}

/// Waits (bounded) until `n` worker threads run: a new thread names itself once it starts.
async fn until_worker_threads(n: usize, context: &str) {
    let deadline = Instant::now() + DEADLINE;
    while worker_threads() != n {
        assert!(Instant::now() < deadline, "{context}: {} worker threads, not {n}", worker_threads());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client with a connection of its own: the server deals connections to its workers in
/// turn, so clients made one after another land on different workers.
fn own_connection() -> reqwest::Client {
    reqwest::Client::builder().timeout(support::REQUEST_TIMEOUT).build().expect("a client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_offs_cross_workers_and_shutdown_ends_every_worker() {
    assert_eq!(worker_threads(), 0, "no server runs yet");
    for spin in [Duration::ZERO, Duration::from_micros(40)] {
        let workers = NonZeroUsize::new(3).expect("3 is not 0");
        let h = Harness::with_config(ServerConfig { workers, spin, ..ServerConfig::for_tests() }).await;
        until_worker_threads(3, &format!("spin {spin:?}: one thread per worker")).await;

        // Five waiters on five connections, dealt round the three workers, each granted
        // in turn by a release from another connection, usually another worker's.
        let first = h.hold(NS, "k", "w0").await;
        let mut token = first["fencing_token"].as_u64().expect("a token");
        let mut waiters = Vec::new();
        for i in 1..=5 {
            let client = own_connection();
            let url = format!("{}/v1/namespaces/{NS}/locks/k/acquire", h.url);
            let body = json!({ "owner": format!("w{i}"), "ttl_ms": 60_000, "wait_ms": 30_000 });
            waiters.push(tokio::spawn(async move {
                let reply = client.post(url).json(&body).send().await.expect("the waiter's request");
                let status = reply.status().as_u16();
                (status, reply.json::<serde_json::Value>().await.expect("JSON"), client)
            }));
            h.until_waiters(NS, "k", i).await;
        }
        h.release(NS, "k", "w0").await.ok();
        for (i, waiter) in waiters.into_iter().enumerate() {
            let (status, body, client) = finish(waiter).await;
            assert_eq!(status, 200, "spin {spin:?}: waiter {}: {body}", i + 1);
            let granted = body["fencing_token"].as_u64().expect("a token");
            assert!(granted > token, "spin {spin:?}: tokens increase: {granted} after {token}");
            token = granted;
            // Released on the waiter's own connection, which wakes the next waiter.
            let release = client
                .post(format!("{}/v1/namespaces/{NS}/locks/k/release", h.url))
                .json(&json!({ "owner": format!("w{}", i + 1) }))
                .send()
                .await
                .expect("the release");
            assert_eq!(release.status().as_u16(), 200, "spin {spin:?}: release by w{}", i + 1);
        }
        h.until_free(NS, "k").await;

        h.stop().await;
        // `stop` returns after joining the workers: no waiting here.
        assert_eq!(worker_threads(), 0, "spin {spin:?}: shutdown ends every worker thread");
    }
}
