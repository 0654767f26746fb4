//! A server restarted on the same SQLite store puts back its holds and sessions, and its
//! fencing tokens keep increasing.

use serde_json::{json, Value};
use tumbler_server::{ServerConfig, StoreUrl};

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_sessions_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig { store: StoreUrl::Sqlite(dir.path().join("t.db")), ..ServerConfig::for_tests() };
    let client = reqwest::Client::new();

    let server = tumbler_server::spawn(config.clone()).await.expect("first start");
    let url = server.url();
    let (_, session) = post(&client, format!("{url}/v1/sessions"), json!({ "ttl_ms": 60_000 })).await;
    let sid = session["id"].as_str().unwrap().to_owned();
    let (s, held) =
        post(&client, format!("{url}/v1/namespaces/ns/locks/held/acquire"), json!({ "owner": "a", "session": sid }))
            .await;
    assert_eq!(s, 200, "{held}");
    let (s, ttl) =
        post(&client, format!("{url}/v1/namespaces/ns/locks/ttl/acquire"), json!({ "owner": "b", "ttl_ms": 60_000 }))
            .await;
    assert_eq!(s, 200, "{ttl}");
    let (s, _) =
        post(&client, format!("{url}/v1/namespaces/ns/locks/ttl/acquire"), json!({ "owner": "b", "ttl_ms": 60_000 }))
            .await;
    assert_eq!(s, 200);
    let (_, freed) =
        post(&client, format!("{url}/v1/namespaces/ns/locks/freed/acquire"), json!({ "owner": "c", "ttl_ms": 60_000 }))
            .await;
    post(&client, format!("{url}/v1/namespaces/ns/locks/freed/release"), json!({ "owner": "c" })).await;
    server.shutdown().await;

    let server = tumbler_server::spawn(config).await.expect("second start");
    let url = server.url();
    let status: Value =
        client.get(format!("{url}/v1/namespaces/ns/locks/held")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["holders"][0]["owner"], "a");
    assert_eq!(status["holders"][0]["fencing_token"], held["fencing_token"]);
    assert_eq!(status["holders"][0]["session"], sid.as_str());
    let status: Value =
        client.get(format!("{url}/v1/namespaces/ns/locks/ttl")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["holders"][0]["count"], 2, "{status}");
    // The session came back with a fresh lease: it can be kept alive.
    let (s, _) = post(&client, format!("{url}/v1/sessions/{sid}/keepalive"), json!({})).await;
    assert_eq!(s, 200);
    // A freed key's next holder gets a greater token than any handed out before.
    let (s, again) =
        post(&client, format!("{url}/v1/namespaces/ns/locks/freed/acquire"), json!({ "owner": "d", "ttl_ms": 60_000 }))
            .await;
    assert_eq!(s, 200, "{again}");
    let before = [&held, &ttl, &freed].iter().map(|h| h["fencing_token"].as_u64().unwrap()).max().unwrap();
    assert!(again["fencing_token"].as_u64().unwrap() > before, "{again} after {before}");
    // New sessions get new ids.
    let (_, newer) = post(&client, format!("{url}/v1/sessions"), json!({ "ttl_ms": 60_000 })).await;
    assert_ne!(newer["id"], sid.as_str());
    server.shutdown().await;
}
