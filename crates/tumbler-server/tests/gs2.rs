//! The GS2-Lock facade: per-user mutexes `(namespace, user, propertyId)`, locked with a
//! `transactionId` and a TTL in seconds, re-entered by the same transaction, refused to
//! another, listed per user, and kept apart from plain locks whatever their strings.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{Harness, Reply};

const NS: &str = "gs2";

fn mutex(ns: &str, user: &str, property: &str) -> String {
    format!("/v1/namespaces/{ns}/users/{user}/mutexes/{property}")
}

async fn lock(h: &Harness, user: &str, property: &str, transaction: &str, ttl: u64) -> Reply {
    h.post(&format!("{}/lock", mutex(NS, user, property)), json!({ "transactionId": transaction, "ttl": ttl })).await
}

async fn unlock(h: &Harness, user: &str, property: &str, transaction: &str) -> Reply {
    h.post(&format!("{}/unlock", mutex(NS, user, property)), json!({ "transactionId": transaction })).await
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_answers_the_mutex_in_gs2_fields() {
    let h = Harness::start().await;
    let before = now_ms();
    let locked = lock(&h, "u1", "sword", "tx-1", 60).await;
    let after = now_ms();
    let item = &locked.ok()["item"];
    let fields: Vec<&str> = item.as_object().expect("item").keys().map(String::as_str).collect();
    for field in ["mutexId", "propertyId", "transactionId", "ttlAt"] {
        assert!(fields.contains(&field), "{field} in {item}");
    }
    assert!(item["mutexId"].as_str().is_some_and(|id| !id.is_empty()), "{item}");
    assert_eq!(item["propertyId"], "sword");
    assert_eq!(item["transactionId"], "tx-1");
    let ttl_at = item["ttlAt"].as_u64().expect("ttlAt in ms");
    assert!(ttl_at + 2_000 >= before + 60_000 && ttl_at <= after + 60_000 + 2_000, "{ttl_at} vs {before}..{after}");

    let got = h.get(&mutex(NS, "u1", "sword")).await;
    assert_eq!(got.ok(), &json!({ "item": item }));
    // Another user's mutex of the same property is another mutex.
    let theirs = lock(&h, "u2", "sword", "tx-2", 60).await;
    assert_ne!(theirs.ok()["item"]["mutexId"], item["mutexId"]);
    h.stop().await;
}

/// A `mutexId` names one mutex: ids whose parts contain the separators stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_ids_stay_apart_when_ids_contain_separators() {
    let h = Harness::start().await;
    let one = lock(&h, "a%3Amutex%3Ax", "y", "t1", 60).await.ok()["item"]["mutexId"].clone();
    let two = lock(&h, "a", "x%3Amutex%3Ay", "t2", 60).await.ok()["item"]["mutexId"].clone();
    assert_ne!(one, two);
    assert_eq!(one, "grn:tumbler:gs2:user:a%3Amutex%3Ax:mutex:y");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_transaction_re_enters_and_another_is_busy() {
    let h = Harness::start().await;
    let first = lock(&h, "u1", "p", "tx-1", 60).await.ok().clone();
    let again = lock(&h, "u1", "p", "tx-1", 60).await;
    assert_eq!(again.ok()["item"]["transactionId"], "tx-1");

    let busy = lock(&h, "u1", "p", "tx-2", 60).await;
    let details = busy.expect_error(409, "busy");
    assert_eq!(details["holders"][0]["owner"], "tx-1", "{details}");
    unlock(&h, "u1", "p", "tx-2").await.expect_error(409, "not_owner");
    assert_eq!(h.get(&mutex(NS, "u1", "p")).await.ok()["item"]["transactionId"], "tx-1");

    // Two levels: the first unlock leaves it locked, the second frees it.
    let unlocked = unlock(&h, "u1", "p", "tx-1").await;
    assert_eq!(unlocked.ok()["item"]["transactionId"], "tx-1");
    assert_eq!(h.get(&mutex(NS, "u1", "p")).await.ok()["item"]["mutexId"], first["item"]["mutexId"]);
    unlock(&h, "u1", "p", "tx-1").await.ok();
    h.get(&mutex(NS, "u1", "p")).await.expect_error(404, "not_held");
    unlock(&h, "u1", "p", "tx-1").await.expect_error(404, "not_held");
    // Now another transaction may lock it.
    assert_eq!(lock(&h, "u1", "p", "tx-2", 60).await.ok()["item"]["transactionId"], "tx-2");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_entry_extends_the_ttl_to_the_later_of_the_two() {
    let h = Harness::start().await;
    let short = lock(&h, "u1", "p", "tx", 60).await.ok()["item"]["ttlAt"].as_u64().expect("ttlAt");
    let long = lock(&h, "u1", "p", "tx", 600).await.ok()["item"]["ttlAt"].as_u64().expect("ttlAt");
    assert!(long >= short + 500_000, "{long} vs {short}");
    let shorter = lock(&h, "u1", "p", "tx", 60).await.ok()["item"]["ttlAt"].as_u64().expect("ttlAt");
    assert_eq!(shorter, long, "a shorter re-entry must not cut the expiry");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutex_is_unlocked_when_its_ttl_runs_out() {
    let h = Harness::start().await;
    lock(&h, "u1", "p", "tx-1", 1).await.ok();
    support::until("the mutex to expire", || async { h.get(&mutex(NS, "u1", "p")).await.status == 404 }).await;
    h.get(&mutex(NS, "u1", "p")).await.expect_error(404, "not_held");
    assert_eq!(lock(&h, "u1", "p", "tx-2", 60).await.ok()["item"]["transactionId"], "tx-2");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_holds_one_users_locked_mutexes() {
    let h = Harness::start().await;
    lock(&h, "u1", "p2", "tx-a", 60).await.ok();
    lock(&h, "u1", "p1", "tx-b", 60).await.ok();
    lock(&h, "u1", "gone", "tx-c", 60).await.ok();
    unlock(&h, "u1", "gone", "tx-c").await.ok();
    lock(&h, "u2", "p3", "tx-a", 60).await.ok();
    h.post(&format!("{}/lock", mutex("gs2-other", "u1", "p9")), json!({ "transactionId": "tx", "ttl": 60 })).await.ok();
    h.hold(NS, "p4", "u1").await;

    let list = |user: &str| format!("/v1/namespaces/{NS}/users/{user}/mutexes");
    let u1 = h.get(&list("u1")).await;
    let items = u1.ok()["items"].as_array().expect("items");
    let properties: Vec<&str> = items.iter().filter_map(|i| i["propertyId"].as_str()).collect();
    assert_eq!(properties, ["p1", "p2"]);
    assert_eq!(items[0]["transactionId"], "tx-b");
    assert_eq!(items[0], h.get(&mutex(NS, "u1", "p1")).await.ok()["item"]);
    let u2 = h.get(&list("u2")).await;
    assert_eq!(u2.ok()["items"].as_array().map(|i| i.len()), Some(1));
    assert_eq!(u2.body["items"][0]["propertyId"], "p3");
    assert_eq!(h.get(&list("nobody")).await.ok(), &json!({ "items": [] }));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs2_mutexes_and_plain_locks_never_collide() {
    let h = Harness::start().await;
    // The same strings every way round: a plain lock named like the property, like the
    // user, like a path, like the mutex id.
    let locked = lock(&h, "u", "p", "tx", 60).await.ok().clone();
    let mutex_id = locked["item"]["mutexId"].as_str().expect("mutexId").to_owned();
    for key in ["p", "u", "u%2Fp", "users%2Fu%2Fmutexes%2Fp", &percent(&mutex_id)] {
        let plain = h.acquire(NS, key, json!({ "owner": "other", "ttl_ms": 60_000 })).await;
        assert_eq!(plain.ok()["owner"], "other", "plain key {key}");
    }
    // The mutex is untouched, and still refuses another transaction.
    assert_eq!(h.get(&mutex(NS, "u", "p")).await.ok(), &locked);
    lock(&h, "u", "p", "other", 60).await.expect_error(409, "busy");
    // Releasing the plain lock does not unlock the mutex, and the other way round.
    h.release(NS, "p", "other").await.ok();
    assert_eq!(h.get(&mutex(NS, "u", "p")).await.ok(), &locked);
    h.hold(NS, "p", "tx").await;
    unlock(&h, "u", "p", "tx").await.ok();
    assert_eq!(h.holders(NS, "p").await.map(|v| v[0].0.clone()), Some("tx".to_owned()));

    // Composite parts are kept apart: ("a:b", "c") is not ("a", "b:c").
    lock(&h, "a:b", "c", "tx-1", 60).await.ok();
    assert_eq!(lock(&h, "a", "b:c", "tx-2", 60).await.ok()["item"]["transactionId"], "tx-2");

    // Listings keep to their own kind.
    let plain_list = h.get(&format!("/v1/namespaces/{NS}/locks?limit=1000")).await;
    let plain_keys: Vec<&str> =
        plain_list.ok()["items"].as_array().expect("items").iter().filter_map(|i| i["key"].as_str()).collect();
    assert!(!plain_keys.contains(&"c") && !plain_keys.contains(&"b:c"), "{plain_keys:?}");
    let gs2_list = h.get(&format!("/v1/namespaces/{NS}/users/u/mutexes")).await;
    assert_eq!(gs2_list.ok(), &json!({ "items": [] }), "the plain locks are not u's mutexes");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_lock_status_is_not_a_gs2_mutex() {
    let h = Harness::start().await;
    h.hold(NS, "p", "tx").await;
    h.get(&mutex(NS, "u", "p")).await.expect_error(404, "not_held");
    let locked: Value = lock(&h, "u", "p", "tx", 60).await.ok().clone();
    assert_eq!(locked["item"]["transactionId"], "tx");
    assert_eq!(h.status(NS, "p").await.ok()["holders"].as_array().map(|v| v.len()), Some(1));
    h.stop().await;
}

/// Percent-encodes everything but unreserved characters, for a path segment.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
