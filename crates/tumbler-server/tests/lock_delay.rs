//! A namespace's lock-delay keeps a key freed by expiry unclaimable for the delay, and
//! does not apply after an explicit release or in other namespaces.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tumbler_server::ServerConfig;

async fn acquire(client: &reqwest::Client, url: &str, ns: &str, owner: &str, ttl_ms: u64) -> (u16, Value) {
    let response = client
        .post(format!("{url}/v1/namespaces/{ns}/locks/k/acquire"))
        .json(&json!({ "owner": owner, "ttl_ms": ttl_ms }))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_freed_by_expiry_stays_unclaimable_for_the_namespace_delay() {
    let mut config = ServerConfig::for_tests();
    config.lock_delays.insert("guarded".to_owned(), Duration::from_millis(1500));
    let server = tumbler_server::spawn(config).await.expect("server starts");
    let url = server.url();
    let client = reqwest::Client::new();

    assert_eq!(acquire(&client, &url, "guarded", "a", 200).await.0, 200);
    assert_eq!(acquire(&client, &url, "plain", "a", 200).await.0, 200);
    let expired_by = Instant::now() + Duration::from_millis(200);
    // Wait until the plain key's hold has expired: a namespace without a delay is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if acquire(&client, &url, "plain", "b", 60_000).await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the plain key never became free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The guarded key expired at the same time, but its delay still runs (1.5 s after expiry).
    if Instant::now() < expired_by + Duration::from_millis(1200) {
        let (status, body) = acquire(&client, &url, "guarded", "b", 60_000).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "busy");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if acquire(&client, &url, "guarded", "b", 60_000).await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the guarded key never became free after its delay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An explicit release starts no delay.
    let released = client
        .post(format!("{url}/v1/namespaces/guarded/locks/k/release"))
        .json(&json!({ "owner": "b" }))
        .send()
        .await
        .expect("release");
    assert_eq!(released.status().as_u16(), 200);
    assert_eq!(acquire(&client, &url, "guarded", "c", 60_000).await.0, 200);
    server.shutdown().await;
}
