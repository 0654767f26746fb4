//! The lock semantics of DESIGN.md §2 as the HTTP API of §4 shows them: try and wait,
//! cancellation by disconnect, TTLs, sessions, multi-key, retries, re-entry, modes,
//! fencing, force release, listing, quotas and the operations routes.
//!
//! Real time is involved (a real socket), so every wait is a poll with a generous
//! deadline and no assertion depends on tight timing.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{finish, holders_of, Harness};

const NS: &str = "beh";

fn token(hold: &Value) -> u64 {
    hold["fencing_token"].as_u64().unwrap_or_else(|| panic!("a fencing token: {hold}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_on_a_held_key_is_busy_and_names_the_holders() {
    let h = Harness::start().await;
    let held = h.hold(NS, "k", "alice").await;
    assert_eq!(held["namespace"], NS);
    assert_eq!(held["key"], "k");
    assert_eq!(held["owner"], "alice");
    assert_eq!(held["mode"], "exclusive");
    assert_eq!(held["count"], 1);
    assert_eq!(held["session"], Value::Null);
    assert!(held["expires_at_ms"].as_u64().is_some(), "{held}");

    let busy = h.acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 60_000 })).await;
    let details = busy.expect_error(409, "busy");
    let holders = details["holders"].as_array().expect("details.holders");
    assert_eq!(holders.len(), 1, "{details}");
    assert_eq!(holders[0]["owner"], "alice");
    assert_eq!(holders[0]["mode"], "exclusive");
    assert_eq!(holders[0]["count"], 1);
    assert_eq!(holders[0]["fencing_token"], held["fencing_token"]);
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 1, token(&held))]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_without_an_owner_is_given_one() {
    let h = Harness::start().await;
    let first = h.acquire(NS, "anon", json!({ "ttl_ms": 60_000 })).await;
    let owner = first.ok()["owner"].as_str().expect("a generated owner").to_owned();
    assert!(!owner.is_empty());
    // Another anonymous acquire is another owner: busy, not a re-entry.
    h.acquire(NS, "anon", json!({ "ttl_ms": 60_000 })).await.expect_error(409, "busy");
    h.release(NS, "anon", &owner).await.ok();
    h.until_free(NS, "anon").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_granted_when_the_holder_releases() {
    let h = Harness::start().await;
    let first = h.hold(NS, "k", "alice").await;
    let waiter = h.spawn_acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;
    assert!(!waiter.is_finished(), "the waiter was answered before the release");

    assert_eq!(h.release(NS, "k", "alice").await.ok()["count"], 0);
    let granted = finish(waiter).await;
    let granted = granted.ok();
    assert_eq!(granted["owner"], "bob");
    assert_eq!(granted["count"], 1);
    assert!(token(granted) > token(&first), "{granted} after {first}");
    let status = h.status(NS, "k").await;
    assert_eq!(holders_of(status.ok()), [("bob".to_owned(), 1, token(granted))]);
    assert_eq!(status.body["waiters"], 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_is_timeout_and_leaves_the_holder_untouched() {
    let h = Harness::start().await;
    let held = h.hold(NS, "k", "alice").await;
    let started = Instant::now();
    let reply = h.acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 60_000, "wait_ms": 300 })).await;
    reply.expect_error(409, "timeout");
    assert!(started.elapsed() >= Duration::from_millis(250), "answered after {:?}", started.elapsed());
    let status = h.status(NS, "k").await;
    assert_eq!(holders_of(status.ok()), [("alice".to_owned(), 1, token(&held))]);
    assert_eq!(status.body["waiters"], 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_client_disconnects_is_cancelled_and_never_granted() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    let vanishing = h.spawn_acquire(NS, "k", json!({ "owner": "ghost", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;

    vanishing.abort();
    assert!(vanishing.await.is_err_and(|e| e.is_cancelled()), "the request was aborted, not answered");
    h.until_waiters(NS, "k", 0).await;

    h.release(NS, "k", "alice").await.ok();
    // Nobody is waiting any more: the key is free, not granted to the vanished client.
    assert_eq!(h.holders(NS, "k").await, None);
    let next = h.hold(NS, "k", "carol").await;
    assert_eq!(next["owner"], "carol");
    assert_eq!(h.holders(NS, "k").await.map(|v| v.len()), Some(1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_waiter_no_longer_blocks_the_queue_behind_it() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    let vanishing = h.spawn_acquire(NS, "k", json!({ "owner": "ghost", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;
    let behind = h.spawn_acquire(NS, "k", json!({ "owner": "dave", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 2).await;

    vanishing.abort();
    h.until_waiters(NS, "k", 1).await;
    h.release(NS, "k", "alice").await.ok();
    assert_eq!(finish(behind).await.ok()["owner"], "dave");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_hold_expires_and_frees_the_key() {
    let h = Harness::start().await;
    let held = h.acquire(NS, "k", json!({ "owner": "alice", "ttl_ms": 300 })).await;
    held.ok();
    h.until_free(NS, "k").await;
    // The owner's later release finds nothing.
    h.release(NS, "k", "alice").await.expect_error(404, "not_held");
    assert_eq!(h.hold(NS, "k", "bob").await["owner"], "bob");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_granted_to_the_waiter() {
    let h = Harness::start().await;
    h.acquire(NS, "k", json!({ "owner": "alice", "ttl_ms": 300 })).await.ok();
    let waiter = h.spawn_acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    assert_eq!(finish(waiter).await.ok()["owner"], "bob");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_extends_a_ttl_hold() {
    let h = Harness::start().await;
    let held = h.acquire(NS, "k", json!({ "owner": "alice", "ttl_ms": 1500 })).await;
    let first_expiry = held.ok()["expires_at_ms"].as_u64().expect("an expiry");
    let refreshed =
        h.post(&format!("/v1/namespaces/{NS}/locks/k/refresh"), json!({ "owner": "alice", "ttl_ms": 60_000 })).await;
    let new_expiry = refreshed.ok()["expires_at_ms"].as_u64().expect("the new expiry");
    assert!(new_expiry >= first_expiry + 50_000, "{new_expiry} vs {first_expiry}");
    let status = h.status(NS, "k").await;
    assert_eq!(status.ok()["holders"][0]["expires_at_ms"], new_expiry);
    // A shorter TTL never shortens it (DESIGN.md: refresh extends).
    let shorter =
        h.post(&format!("/v1/namespaces/{NS}/locks/k/refresh"), json!({ "owner": "alice", "ttl_ms": 1000 })).await;
    assert_eq!(shorter.ok()["expires_at_ms"], new_expiry);
    // Well past the first TTL, the hold is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 1, token(held.ok()))]));
    h.stop().await;
}

/// A hold without a TTL (it lives with its session) has no expiry to extend: refreshing it
/// is refused, and it stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshing_a_hold_without_a_ttl_is_refused() {
    let h = Harness::start().await;
    let session = h.open_session(60_000).await;
    h.acquire(NS, "k", json!({ "owner": "alice", "session": session })).await.ok();
    let refused =
        h.post(&format!("/v1/namespaces/{NS}/locks/k/refresh"), json!({ "owner": "alice", "ttl_ms": 1000 })).await;
    refused.expect_error(400, "invalid_argument");
    assert_eq!(refused.field(), Some("ttl_ms"), "{}", refused.body);
    assert_eq!(h.status(NS, "k").await.ok()["holders"][0]["expires_at_ms"], Value::Null);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_keep_a_sessions_holds() {
    let h = Harness::start().await;
    let opened = h.post("/v1/sessions", json!({ "ttl_ms": 1500, "label": "worker" })).await;
    let opened = opened.ok().clone();
    let session = opened["id"].as_str().expect("id").to_owned();
    assert_eq!(opened["ttl_ms"], 1500);
    let held = h.acquire(NS, "k", json!({ "owner": "alice", "session": session })).await;
    assert_eq!(held.ok()["session"], session.as_str());
    assert_eq!(held.ok()["expires_at_ms"], Value::Null);

    // Keep it alive for twice its lease.
    let until_then = Instant::now() + Duration::from_millis(3000);
    let mut last_expiry = opened["expires_at_ms"].as_u64().expect("expires_at_ms");
    while Instant::now() < until_then {
        let renewed = h.post(&format!("/v1/sessions/{session}/keepalive"), json!({})).await;
        let renewed = renewed.ok();
        assert_eq!(renewed["id"], session.as_str());
        assert_eq!(renewed["ttl_ms"], 1500);
        let expiry = renewed["expires_at_ms"].as_u64().expect("expires_at_ms");
        assert!(expiry >= last_expiry, "the lease moved back: {expiry} < {last_expiry}");
        last_expiry = expiry;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 1, token(held.ok()))]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_kept_alive_expires_and_its_holds_are_released() {
    let h = Harness::start().await;
    let session = h.open_session(1_500).await;
    h.acquire(NS, "a", json!({ "owner": "alice", "session": session })).await.ok();
    h.acquire(NS, "b", json!({ "owner": "alice", "session": session })).await.ok();
    h.until_free(NS, "a").await;
    h.until_free(NS, "b").await;
    h.post(&format!("/v1/sessions/{session}/keepalive"), json!({})).await.expect_error(410, "session_expired");
    h.acquire(NS, "c", json!({ "owner": "alice", "session": session })).await.expect_error(410, "session_expired");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_releases_its_holds_and_cancels_its_waits() {
    let h = Harness::start().await;
    let session = h.open_session(60_000).await;
    h.acquire(NS, "mine", json!({ "owner": "alice", "session": session })).await.ok();
    h.hold(NS, "theirs", "bob").await;
    let waiting = h.spawn_acquire(NS, "theirs", json!({ "owner": "alice", "session": session, "wait_ms": 30_000 }));
    h.until_waiters(NS, "theirs", 1).await;

    assert_eq!(h.delete(&format!("/v1/sessions/{session}")).await.ok(), &json!({}));
    finish(waiting).await.expect_error(410, "session_expired");
    assert_eq!(h.holders(NS, "mine").await, None);
    assert_eq!(h.waiters(NS, "theirs").await, 0);
    assert_eq!(h.holders(NS, "theirs").await.map(|v| v[0].0.clone()), Some("bob".to_owned()));
    // Closing twice: the session has ended.
    h.delete(&format!("/v1/sessions/{session}")).await.expect_error(410, "session_expired");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_key_acquire_takes_all_keys_or_none() {
    let h = Harness::start().await;
    let path = format!("/v1/namespaces/{NS}/acquire");
    h.hold(NS, "b", "bob").await;
    let busy = h.post(&path, json!({ "keys": ["a", "b", "c"], "owner": "alice", "ttl_ms": 60_000 })).await;
    let details = busy.expect_error(409, "busy");
    assert_eq!(details["holders"][0]["owner"], "bob", "{details}");
    assert_eq!(h.holders(NS, "a").await, None);
    assert_eq!(h.holders(NS, "c").await, None);

    // Waiting for all of them: granted together once `b` is free.
    let waiting =
        h.spawn_post(&path, json!({ "keys": ["a", "b", "c"], "owner": "alice", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "b", 1).await;
    assert_eq!(h.holders(NS, "a").await, None, "a key was taken while another was busy");
    h.release(NS, "b", "bob").await.ok();
    let granted = finish(waiting).await;
    let holds = granted.ok()["holds"].as_array().expect("holds").clone();
    let keys: Vec<&str> = holds.iter().map(|hold| hold["key"].as_str().expect("key")).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    for hold in &holds {
        assert_eq!(hold["owner"], "alice");
        assert_eq!(hold["namespace"], NS);
        let key = hold["key"].as_str().expect("key");
        assert_eq!(h.holders(NS, key).await, Some(vec![("alice".to_owned(), 1, token(hold))]));
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_counts_once() {
    let h = Harness::start().await;
    let body = json!({ "owner": "alice", "ttl_ms": 60_000, "request_id": "req-1" });
    let first = h.acquire(NS, "k", body.clone()).await.ok().clone();
    let retry = h.acquire(NS, "k", body.clone()).await.ok().clone();
    assert_eq!(first["count"], 1);
    assert_eq!(retry["count"], 1, "{retry}");
    assert_eq!(retry["fencing_token"], first["fencing_token"]);
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 1, token(&first))]));
    // Another request id is a real re-entry.
    let again = h.acquire(NS, "k", json!({ "owner": "alice", "ttl_ms": 60_000, "request_id": "req-2" })).await;
    assert_eq!(again.ok()["count"], 2);
    // One release per counted level frees the key.
    assert_eq!(h.release(NS, "k", "alice").await.ok()["count"], 1);
    assert_eq!(h.release(NS, "k", "alice").await.ok()["count"], 0);
    assert_eq!(h.holders(NS, "k").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_entry_counts_and_each_release_drops_one_level() {
    let h = Harness::start().await;
    let mut token_seen = None;
    for expected in 1..=3 {
        let hold = h.hold(NS, "k", "alice").await;
        assert_eq!(hold["count"], expected);
        // Re-entry keeps the hold's token.
        assert_eq!(*token_seen.get_or_insert(token(&hold)), token(&hold));
    }
    let t = token_seen.expect("a token");
    assert_eq!(h.release(NS, "k", "alice").await.ok(), &json!({ "count": 2 }));
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 2, t)]));
    assert_eq!(h.release(NS, "k", "alice").await.ok(), &json!({ "count": 1 }));
    assert_eq!(h.release(NS, "k", "alice").await.ok(), &json!({ "count": 0 }));
    assert_eq!(h.holders(NS, "k").await, None);
    h.release(NS, "k", "alice").await.expect_error(404, "not_held");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_by_another_owner_is_not_owner_and_changes_nothing() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    let held = h.hold(NS, "k", "alice").await;
    let before = h.status(NS, "k").await.ok().clone();
    h.release(NS, "k", "mallory").await.expect_error(409, "not_owner");
    let refresh =
        h.post(&format!("/v1/namespaces/{NS}/locks/k/refresh"), json!({ "owner": "mallory", "ttl_ms": 1 })).await;
    refresh.expect_error(409, "not_owner");
    assert_eq!(h.status(NS, "k").await.ok(), &before);
    assert_eq!(holders_of(&before), [("alice".to_owned(), 2, token(&held))]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holds_coexist_and_exclude_an_exclusive_one() {
    let h = Harness::start().await;
    let shared = |owner: &str| json!({ "owner": owner, "ttl_ms": 60_000, "mode": "shared" });
    assert_eq!(h.acquire(NS, "k", shared("r1")).await.ok()["mode"], "shared");
    h.acquire(NS, "k", shared("r2")).await.ok();
    let status = h.status(NS, "k").await;
    assert_eq!(status.ok()["mode"], "shared");
    assert_eq!(status.body["holders"].as_array().map(Vec::len), Some(2));

    let busy = h.acquire(NS, "k", json!({ "owner": "w", "ttl_ms": 60_000 })).await;
    assert_eq!(busy.expect_error(409, "busy")["holders"].as_array().map(Vec::len), Some(2));

    // Fairness: with a writer queued, a new reader waits behind it rather than joining.
    let writer = h.spawn_acquire(NS, "k", json!({ "owner": "w", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;
    h.acquire(NS, "k", shared("r3")).await.expect_error(409, "busy");
    h.release(NS, "k", "r1").await.ok();
    h.release(NS, "k", "r2").await.ok();
    let granted = finish(writer).await;
    assert_eq!(granted.ok()["mode"], "exclusive");
    assert_eq!(h.status(NS, "k").await.ok()["mode"], "exclusive");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_up_to_its_limit_and_every_holder_names_the_same_limit() {
    let h = Harness::start().await;
    let sem =
        |owner: &str, limit: u32| json!({ "owner": owner, "ttl_ms": 60_000, "mode": "semaphore", "limit": limit });
    let first = h.acquire(NS, "pool", sem("a", 2)).await;
    assert_eq!(first.ok()["mode"], "semaphore");
    assert_eq!(first.ok()["limit"], 2);
    h.acquire(NS, "pool", sem("b", 2)).await.ok();
    let busy = h.acquire(NS, "pool", sem("c", 2)).await;
    assert_eq!(busy.expect_error(409, "busy")["holders"].as_array().map(Vec::len), Some(2));

    let mismatch = h.acquire(NS, "pool", sem("c", 3)).await;
    mismatch.expect_error(400, "invalid_argument");
    assert_eq!(mismatch.field(), Some("limit"), "{}", mismatch.body);

    let status = h.status(NS, "pool").await;
    assert_eq!(status.ok()["mode"], "semaphore");
    assert_eq!(status.body["limit"], 2);
    assert_eq!(status.body["holders"].as_array().map(Vec::len), Some(2));
    // An exclusive request is incompatible with the semaphore's holders.
    h.acquire(NS, "pool", json!({ "owner": "x", "ttl_ms": 60_000 })).await.expect_error(409, "busy");
    // A freed slot admits the next.
    h.post(&format!("/v1/namespaces/{NS}/locks/pool/release"), json!({ "owner": "a", "mode": "semaphore" })).await.ok();
    h.acquire(NS, "pool", sem("c", 2)).await.ok();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_grants_of_a_key() {
    let h = Harness::start().await;
    let mut last = 0;
    for round in 0..5 {
        let owner = format!("owner-{round}");
        let hold = h.hold(NS, "k", &owner).await;
        assert!(token(&hold) > last, "round {round}: {} after {last}", token(&hold));
        last = token(&hold);
        h.release(NS, "k", &owner).await.ok();
    }
    // Through a waiter, an expiry and a force release too.
    h.acquire(NS, "k", json!({ "owner": "short", "ttl_ms": 300 })).await.ok();
    let waiter = h.spawn_acquire(NS, "k", json!({ "owner": "next", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    let granted = finish(waiter).await.ok().clone();
    assert!(token(&granted) > last);
    last = token(&granted);
    h.delete(&format!("/v1/namespaces/{NS}/locks/k")).await.ok();
    assert!(token(&h.hold(NS, "k", "after").await) > last);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_ends_every_hold_of_the_key() {
    let h = Harness::start().await;
    let shared = |owner: &str| json!({ "owner": owner, "ttl_ms": 60_000, "mode": "shared" });
    h.acquire(NS, "k", shared("a")).await.ok();
    h.acquire(NS, "k", shared("b")).await.ok();
    let forced = h.delete(&format!("/v1/namespaces/{NS}/locks/k")).await;
    assert_eq!(forced.ok(), &json!({ "released": 2 }));
    h.status(NS, "k").await.expect_error(404, "not_held");
    h.post(&format!("/v1/namespaces/{NS}/locks/k/release"), json!({ "owner": "a", "mode": "shared" }))
        .await
        .expect_error(404, "not_held");
    h.delete(&format!("/v1/namespaces/{NS}/locks/k")).await.expect_error(404, "not_held");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_grants_the_key_to_the_next_waiter() {
    let h = Harness::start().await;
    h.hold(NS, "k", "stuck").await;
    let waiter = h.spawn_acquire(NS, "k", json!({ "owner": "next", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;
    h.delete(&format!("/v1/namespaces/{NS}/locks/k")).await.ok();
    assert_eq!(finish(waiter).await.ok()["owner"], "next");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_held_keys_in_key_order() {
    let h = Harness::start().await;
    let mut expected = Vec::new();
    // Taken out of order, with other keys and another namespace around them.
    for i in (0..25).rev() {
        let key = format!("item-{i:02}");
        h.hold(NS, &key, "lister").await;
        expected.push(key);
    }
    expected.sort();
    h.hold(NS, "a-before", "lister").await;
    h.hold(NS, "zz-after", "lister").await;
    h.hold("elsewhere", "item-99", "lister").await;
    h.post(&format!("/v1/namespaces/{NS}/users/u/mutexes/item-50/lock"), json!({ "transactionId": "t", "ttl": 60 }))
        .await
        .ok();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/namespaces/{NS}/locks?prefix=item-&limit=10");
        if let Some(after) = &after {
            path = format!("{path}&after={after}");
        }
        let page = h.get(&path).await.ok().clone();
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 10);
        for item in items {
            assert_eq!(item["namespace"], NS);
            assert_eq!(item["holders"][0]["owner"], "lister");
            assert_eq!(item["waiters"], 0);
            seen.push(item["key"].as_str().expect("key").to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().map(String::as_str), "next_after is the page's last key");
                after = Some(next.to_owned());
            }
            None => {
                assert_eq!(page["next_after"], Value::Null);
                break;
            }
        }
        assert!(pages < 10, "paging never ends");
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);

    // Without a prefix: every plain key of the namespace, in order, and no GS2 mutex.
    let all = h.get(&format!("/v1/namespaces/{NS}/locks?limit=1000")).await.ok().clone();
    let keys: Vec<&str> =
        all["items"].as_array().expect("items").iter().map(|i| i["key"].as_str().expect("key")).collect();
    assert_eq!(keys.len(), 27);
    assert_eq!(keys.first(), Some(&"a-before"));
    assert_eq!(keys.last(), Some(&"zz-after"));
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    assert_eq!(all["next_after"], Value::Null);
    // A released key leaves the listing.
    h.release(NS, "item-00", "lister").await.ok();
    let first = h.get(&format!("/v1/namespaces/{NS}/locks?prefix=item-&limit=1")).await;
    assert_eq!(first.ok()["items"][0]["key"], "item-01");
    assert_eq!(first.body["next_after"], "item-01");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_per_key_are_bounded() {
    let h = Harness::with_limits(|l| l.max_waiters_per_key = Some(1)).await;
    let held = h.hold(NS, "k", "alice").await;
    let first = h.spawn_acquire(NS, "k", json!({ "owner": "w1", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;
    let second = h.acquire(NS, "k", json!({ "owner": "w2", "ttl_ms": 60_000, "wait_ms": 30_000 })).await;
    let details = second.expect_error(429, "limit_exceeded");
    assert_eq!(details["max"], 1, "{details}");
    assert_eq!(h.waiters(NS, "k").await, 1);
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 1, token(&held))]));
    h.release(NS, "k", "alice").await.ok();
    assert_eq!(finish(first).await.ok()["owner"], "w1");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_per_session_are_bounded() {
    let h = Harness::with_limits(|l| l.max_holds_per_session = Some(2)).await;
    let session = h.open_session(60_000).await;
    let body = json!({ "owner": "alice", "session": session });
    h.acquire(NS, "a", body.clone()).await.ok();
    h.acquire(NS, "b", body.clone()).await.ok();
    let third = h.acquire(NS, "c", body).await;
    let details = third.expect_error(429, "limit_exceeded");
    assert_eq!(details["max"], 2, "{details}");
    assert_eq!(h.holders(NS, "c").await, None);
    // Other sessions and TTL holds are not counted against it.
    let other = h.open_session(60_000).await;
    h.acquire(NS, "c", json!({ "owner": "bob", "session": other })).await.ok();
    h.hold(NS, "d", "alice").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok() {
    let h = Harness::start().await;
    let health = h.get("/healthz").await;
    assert_eq!(health.ok()["status"], "ok");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_acquisitions_and_request_latency() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    let acquisitions = |text: &str| metric(text, "tumbler_acquisitions_total");
    let text = metrics_when(&h, |text| acquisitions(text).is_some_and(|n| n >= 1.0)).await;
    assert!(text.contains("tumbler_request_duration_seconds"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("tumbler_request_duration_seconds")
            && l.contains("/v1/namespaces/{ns}/locks/{key}/acquire")),
        "latency is labelled by route template:\n{text}"
    );
    assert_eq!(acquisitions(&text), Some(1.0));
    // One route, two methods: each has its own series.
    h.status(NS, "k").await.ok();
    h.delete(&format!("/v1/namespaces/{NS}/locks/k")).await.ok();
    let text = h.metrics().await;
    for method in ["GET", "DELETE"] {
        assert!(
            text.lines().any(|l| l.starts_with("tumbler_request_duration_seconds_count")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains("route=\"/v1/namespaces/{ns}/locks/{key}\"")),
            "{method} on the status route has its own series:\n{text}"
        );
    }
    h.stop().await;
}

/// Each released level is one release in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_one_release_per_release() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    h.release(NS, "k", "alice").await.ok();
    metrics_when(&h, |text| {
        metric(text, "tumbler_acquisitions_total") == Some(1.0)
            && metric(text, "tumbler_releases_total").is_some_and(|n| n >= 1.0)
    })
    .await;
    // Give a second count, if one is coming, time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = h.metrics().await;
    assert_eq!(metric(&text, "tumbler_releases_total"), Some(1.0), "{text}");
    h.stop().await;
}

/// `/metrics` once `ready` says so (the counters follow events in the background).
async fn metrics_when(h: &Harness, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let text = h.metrics().await;
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "the metrics never got there:\n{text}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_are_json_errors() {
    let h = Harness::start().await;
    for path in ["/nope", "/v1/namespaces/ns/locks/k/explode", "/v2/sessions", "/v1/namespaces/ns/users/u"] {
        let reply = h.get(path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        reply.shape(reply.body["error"]["code"].as_str().unwrap_or("?")).expect("the error shape");
    }
    let reply = h.post("/v1/namespaces/ns/locks/k", json!({})).await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    reply.shape(reply.body["error"]["code"].as_str().unwrap_or("?")).expect("the error shape");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_expires_cancels_its_waits() {
    let h = Harness::start().await;
    h.hold(NS, "k", "bob").await;
    let session = h.open_session(500).await;
    let waiting = h.spawn_acquire(NS, "k", json!({ "owner": "alice", "session": session, "wait_ms": 30_000 }));
    finish(waiting).await.expect_error(410, "session_expired");
    assert_eq!(h.waiters(NS, "k").await, 0);
    assert_eq!(h.holders(NS, "k").await.map(|v| v[0].0.clone()), Some("bob".to_owned()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_request_id_share_one_grant() {
    let h = Harness::start().await;
    h.hold(NS, "k", "bob").await;
    let body = json!({ "owner": "alice", "ttl_ms": 60_000, "wait_ms": 30_000, "request_id": "r" });
    let first = h.spawn_acquire(NS, "k", body.clone());
    h.until_waiters(NS, "k", 1).await;
    // The client's retry while the first attempt still waits.
    let retry = h.spawn_acquire(NS, "k", body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.release(NS, "k", "bob").await.ok();
    let (first, retry) = (finish(first).await, finish(retry).await);
    assert_eq!(first.ok()["count"], 1);
    assert_eq!(retry.ok()["count"], 1, "{}", retry.body);
    assert_eq!(first.body["fencing_token"], retry.body["fencing_token"]);
    assert_eq!(h.holders(NS, "k").await, Some(vec![("alice".to_owned(), 1, token(&first.body))]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_the_owners_own() {
    let h = Harness::start().await;
    h.acquire(NS, "k", json!({ "owner": "alice", "ttl_ms": 60_000, "request_id": "r" })).await.ok();
    let other = h.acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 60_000, "request_id": "r" })).await;
    other.expect_error(409, "busy");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_shared_holder_upgrades_and_crossed_upgrades_are_a_deadlock() {
    let h = Harness::start().await;
    let shared = |owner: &str| json!({ "owner": owner, "ttl_ms": 60_000, "mode": "shared" });
    let exclusive = |owner: &str, wait_ms: u64| json!({ "owner": owner, "ttl_ms": 60_000, "wait_ms": wait_ms });

    h.acquire(NS, "solo", shared("a")).await.ok();
    assert_eq!(h.acquire(NS, "solo", exclusive("a", 0)).await.ok()["mode"], "exclusive");

    h.acquire(NS, "k", shared("a")).await.ok();
    h.acquire(NS, "k", shared("b")).await.ok();
    h.acquire(NS, "k", exclusive("a", 0)).await.expect_error(409, "busy");
    let a_upgrading = h.spawn_acquire(NS, "k", exclusive("a", 30_000));
    h.until_waiters(NS, "k", 1).await;
    // b closes the cycle: it fails at once, naming both owners.
    let closing = h.acquire(NS, "k", exclusive("b", 30_000)).await;
    let cycle = closing.expect_error(409, "deadlock")["cycle"].clone();
    let mut owners: Vec<&str> = cycle.as_array().expect("details.cycle").iter().filter_map(Value::as_str).collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners, ["a", "b"], "{cycle}");
    // b gives up its read: a's upgrade goes through.
    h.post(&format!("/v1/namespaces/{NS}/locks/k/release"), json!({ "owner": "b", "mode": "shared" })).await.ok();
    assert_eq!(finish(a_upgrading).await.ok()["mode"], "exclusive");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_across_two_keys_that_close_a_cycle_fail_with_deadlock() {
    let h = Harness::start().await;
    h.hold(NS, "k1", "a").await;
    h.hold(NS, "k2", "b").await;
    let a_waits = h.spawn_acquire(NS, "k2", json!({ "owner": "a", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k2", 1).await;
    let b_waits = h.acquire(NS, "k1", json!({ "owner": "b", "ttl_ms": 60_000, "wait_ms": 30_000 })).await;
    b_waits.expect_error(409, "deadlock");
    assert_eq!(h.waiters(NS, "k1").await, 0);
    h.release(NS, "k2", "b").await.ok();
    assert_eq!(finish(a_waits).await.ok()["owner"], "a");
    h.stop().await;
}

/// DESIGN.md §4: a multi-key acquire answers `{holds: [one acquire answer per key]}`, and
/// the wire type says "in the order asked", so clients pair `keys[i]` with `holds[i]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_named_twice_in_a_multi_key_acquire_is_rejected() {
    let h = Harness::start().await;
    let reply = h
        .post(
            &format!("/v1/namespaces/{NS}/acquire"),
            json!({ "keys": ["a", "b", "a"], "owner": "x", "ttl_ms": 60_000 }),
        )
        .await;
    reply.expect_error(400, "invalid_argument");
    assert_eq!(reply.field(), Some("keys"), "{}", reply.body);
    assert_eq!(h.holders(NS, "a").await, None);
    assert_eq!(h.holders(NS, "b").await, None);
    h.stop().await;
}

/// An owner that upgraded a shared hold holds the key exclusively; the status must not say
/// `shared`, and each of the owner's holds names its own mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_of_an_upgraded_key_says_exclusive() {
    let h = Harness::start().await;
    h.acquire(NS, "k", json!({ "owner": "a", "ttl_ms": 60_000, "mode": "shared" })).await.ok();
    h.acquire(NS, "k", json!({ "owner": "a", "ttl_ms": 60_000 })).await.ok();
    // It is held exclusively: a reader is refused.
    h.acquire(NS, "k", json!({ "owner": "r", "ttl_ms": 60_000, "mode": "shared" })).await.expect_error(409, "busy");
    let status = h.status(NS, "k").await;
    let body = status.ok();
    assert_eq!(body["mode"], "exclusive", "{}", status.body);
    let modes: Vec<(&str, &str)> = body["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| (h["owner"].as_str().unwrap_or_default(), h["mode"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(modes.len(), 2, "{}", status.body);
    assert!(modes.contains(&("a", "shared")) && modes.contains(&("a", "exclusive")), "{}", status.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_are_bounded() {
    let h = Harness::with_limits(|l| l.max_sessions = Some(2)).await;
    let first = h.open_session(60_000).await;
    h.open_session(60_000).await;
    let third = h.post("/v1/sessions", json!({ "ttl_ms": 60_000 })).await;
    assert_eq!(third.expect_error(429, "limit_exceeded")["max"], 2, "{}", third.body);
    h.delete(&format!("/v1/sessions/{first}")).await.ok();
    h.open_session(60_000).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_per_namespace_are_bounded() {
    let h = Harness::with_limits(|l| l.max_keys_per_namespace = Some(2)).await;
    h.hold(NS, "a", "alice").await;
    h.hold(NS, "b", "alice").await;
    let third = h.acquire(NS, "c", json!({ "owner": "alice", "ttl_ms": 60_000 })).await;
    assert_eq!(third.expect_error(429, "limit_exceeded")["max"], 2, "{}", third.body);
    assert_eq!(h.holders(NS, "c").await, None);
    // Re-entry and other namespaces are not new keys of this one.
    assert_eq!(h.hold(NS, "a", "alice").await["count"], 2);
    h.hold("beh-other", "c", "alice").await;
    h.release(NS, "b", "alice").await.ok();
    h.hold(NS, "c", "alice").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_keys_round_trip() {
    let h = Harness::start().await;
    // `a%2Fb` is the one segment `a/b`; reqwest encodes the rest of the non-ASCII.
    for (segment, key) in
        [("a%2Fb", "a/b"), ("with%20space", "with space"), ("ключ%25", "ключ%"), ("a%3Fb%23c", "a?b#c")]
    {
        let held = h.acquire(NS, segment, json!({ "owner": "alice", "ttl_ms": 60_000 })).await;
        assert_eq!(held.ok()["key"], key, "{segment}");
        assert_eq!(h.status(NS, segment).await.ok()["key"], key, "{segment}");
    }
    let listed = h.get(&format!("/v1/namespaces/{NS}/locks?prefix=a%2F")).await;
    assert_eq!(listed.ok()["items"][0]["key"], "a/b");
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiters_ttl_runs_from_its_grant() {
    let h = Harness::start().await;
    h.hold(NS, "k", "alice").await;
    let waiter = h.spawn_acquire(NS, "k", json!({ "owner": "bob", "ttl_ms": 2_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "k", 1).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let released_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_millis() as u64;
    h.release(NS, "k", "alice").await.ok();
    let granted = finish(waiter).await;
    let expires = granted.ok()["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!(expires + 200 >= released_at + 2_000, "the TTL ran while it waited: {expires} vs {released_at}");
    h.stop().await;
}
