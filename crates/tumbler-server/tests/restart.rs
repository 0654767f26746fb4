//! A server restarted on the same store puts back its holds and sessions; fencing tokens,
//! session ids and event revisions keep increasing, never handed out twice.

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

mod support;

use support::Harness;

fn sqlite_config(dir: &tempfile::TempDir) -> ServerConfig {
    ServerConfig { store: StoreUrl::Sqlite(dir.path().join("t.db")), ..ServerConfig::for_tests() }
}

/// A session id names one lease for good: one that ended before a restart is answered
/// 410 afterwards, and is never handed to a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_are_never_given_out_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_config(sqlite_config(&dir)).await;
    let kept = h.open_session(60_000).await;
    let closed = h.open_session(60_000).await;
    h.delete(&format!("/v1/sessions/{closed}")).await.ok();
    h.stop().await;

    let h = Harness::with_config(sqlite_config(&dir)).await;
    let fresh = h.open_session(60_000).await;
    assert!(fresh.parse::<u64>().unwrap() > closed.parse::<u64>().unwrap(), "{fresh} after {closed}");
    h.post(&format!("/v1/sessions/{closed}/keepalive"), json!({})).await.expect_error(410, "session_expired");
    h.acquire("ns", "k", json!({ "owner": "o", "session": closed })).await.expect_error(410, "session_expired");
    h.post(&format!("/v1/sessions/{kept}/keepalive"), json!({})).await.ok();
    h.stop().await;
}

/// With the memory store nothing survives a restart, not even the ids: a client still
/// holding an id from before is told its session is gone, not given a stranger's lease;
/// fencing tokens and revisions keep increasing, so a stale holder's token is below every
/// new one and a watcher resuming from the earlier run is told its revision is too old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_server_hands_out_nothing_of_an_earlier_run_again() {
    let h = Harness::start().await;
    let old = h.open_session(60_000).await;
    let mut events = h.events("ns", "", None).await.expect("a stream");
    let old_token = h.hold("ns", "k", "holder").await["fencing_token"].as_u64().expect("a token");
    let old_revision = events.next().await.id.expect("a revision");
    drop(events);
    h.stop().await;

    let h = Harness::start().await;
    let new = h.open_session(60_000).await;
    assert_ne!(new, old);
    h.post(&format!("/v1/sessions/{old}/keepalive"), json!({})).await.expect_error(410, "session_expired");
    let new_token = h.hold("ns", "k", "holder").await["fencing_token"].as_u64().expect("a token");
    assert!(new_token > old_token, "token {new_token} after {old_token}");
    assert!(new_token < 1 << 53, "token {new_token} is a JSON number every client reads exactly");
    let mut resumed = h.events("ns", "", Some(&old_revision.to_string())).await.expect("a stream");
    let reset = resumed.next().await;
    assert_eq!((reset.event.as_str(), &reset.data["reason"]), ("reset", &json!("too_old")), "{reset:?}");
    drop(resumed);
    let mut events = h.events("ns", "", None).await.expect("a stream");
    h.release("ns", "k", "holder").await.ok();
    let next = events.next().await.id.expect("a revision");
    assert!(next > old_revision, "revision {next} after {old_revision}");
    h.stop().await;
}

/// Revisions are not handed out twice across a restart, even those of events no request
/// writes: a wait given up just before the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_continue_after_a_restart_past_a_cancelled_wait() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_config(sqlite_config(&dir)).await;
    let mut events = h.events("ns", "", None).await.expect("a stream");
    h.hold("ns", "k", "holder").await;
    let acquired = events.next().await;
    h.acquire("ns", "k", json!({ "owner": "waiter", "ttl_ms": 60_000, "wait_ms": 50 }))
        .await
        .expect_error(409, "timeout");
    let cancelled = events.next().await;
    assert_eq!((acquired.event.as_str(), cancelled.event.as_str()), ("acquired", "cancelled"));
    let last = cancelled.id.expect("a revision");
    drop(events);
    h.stop().await;

    let h = Harness::with_config(sqlite_config(&dir)).await;
    let mut events = h.events("ns", "", Some(&last.to_string())).await.expect("a stream");
    h.hold("ns", "other", "a").await;
    let next = events.next().await;
    assert_eq!(next.event, "acquired", "{next:?}");
    assert!(next.id.expect("a revision") > last, "{next:?} after revision {last}");
    h.stop().await;
}

/// A retried acquire is recognised after a restart too (DESIGN.md §2: a lost reply never
/// leaks a count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_is_answered_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_config(sqlite_config(&dir)).await;
    let ask = json!({ "owner": "a", "ttl_ms": 60_000, "request_id": "R" });
    let first = h.acquire("ns", "k", ask.clone()).await.ok().clone();
    assert_eq!(first["count"], 1);
    h.stop().await;

    let h = Harness::with_config(sqlite_config(&dir)).await;
    let retried = h.acquire("ns", "k", ask).await;
    assert_eq!(retried.ok()["count"], 1, "{}", retried.body);
    assert_eq!(retried.ok()["fencing_token"], first["fencing_token"]);
    // One release frees it: no level was added.
    assert_eq!(h.release("ns", "k", "a").await.ok()["count"], 0);
    h.stop().await;
}
