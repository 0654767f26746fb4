//! `GET /v1/namespaces/{ns}/events`: Server-Sent Events of a namespace's changes, filtered
//! by prefix, resumable with `Last-Event-ID`, starting with a `reset` when the id is too
//! old, and bounded in number.
//!
//! Streams are read with reqwest's `bytes_stream()` and parsed by `support::Events`; every
//! read has a timeout.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use support::{Harness, SseEvent};

const NS: &str = "ev";

/// How long a stream is watched to show that an event does *not* come.
const QUIET: Duration = Duration::from_millis(300);

fn id(event: &SseEvent) -> u64 {
    event.id.unwrap_or_else(|| panic!("an event id: {event:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_release_are_events_with_increasing_ids() {
    let h = Harness::start().await;
    let mut events = h.events(NS, "", None).await.expect("the stream opens");
    let held = h.hold(NS, "k", "alice").await;
    h.hold(NS, "k", "alice").await;
    h.release(NS, "k", "alice").await.ok();
    h.release(NS, "k", "alice").await.ok();

    let acquired = events.next().await;
    assert_eq!(acquired.event, "acquired");
    let data = &acquired.data;
    assert_eq!(data["type"], "acquired");
    assert_eq!(data["namespace"], NS);
    assert_eq!(data["key"], "k");
    assert_eq!(data["owner"], "alice");
    assert_eq!(data["mode"], "exclusive");
    assert_eq!(data["count"], 1);
    assert_eq!(data["fencing_token"], held["fencing_token"]);
    assert_eq!(data["revision"], id(&acquired));

    let reentered = events.next().await;
    assert_eq!((reentered.event.as_str(), &reentered.data["count"]), ("acquired", &json!(2)));
    let once = events.next().await;
    assert_eq!((once.event.as_str(), &once.data["count"]), ("released", &json!(1)));
    let freed = events.next().await;
    assert_eq!((freed.event.as_str(), &freed.data["count"]), ("released", &json!(0)));
    let ids: Vec<u64> = [&acquired, &reentered, &once, &freed].iter().map(|e| id(e)).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "revisions increase by one: {ids:?}");
    for event in [&reentered, &once, &freed] {
        assert_eq!(event.data["revision"], id(event));
    }
    events.expect_quiet(QUIET).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_a_cancelled_wait_are_events_too() {
    let h = Harness::start().await;
    let mut events = h.events(NS, "", None).await.expect("the stream opens");
    h.hold(NS, "held", "alice").await;
    let waiter = h.spawn_acquire(NS, "held", json!({ "owner": "ghost", "ttl_ms": 60_000, "wait_ms": 30_000 }));
    h.until_waiters(NS, "held", 1).await;
    waiter.abort();
    h.until_waiters(NS, "held", 0).await;
    h.acquire(NS, "short", json!({ "owner": "bob", "ttl_ms": 300 })).await.ok();

    assert_eq!(events.next().await.event, "acquired");
    let cancelled = events.next().await;
    assert_eq!(cancelled.event, "cancelled", "{cancelled:?}");
    assert_eq!(cancelled.data["owner"], "ghost");
    assert_eq!(cancelled.data["key"], "held");
    assert_eq!(events.next().await.event, "acquired");
    let expired = events.next().await;
    assert_eq!(expired.event, "expired", "{expired:?}");
    assert_eq!((&expired.data["key"], &expired.data["owner"]), (&json!("short"), &json!("bob")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_shows_only_its_keys() {
    let h = Harness::start().await;
    let mut jobs = h.events(NS, "prefix=job-", None).await.expect("the stream opens");
    h.hold(NS, "other", "alice").await;
    h.hold(NS, "jo", "alice").await;
    h.hold(NS, "job-1", "alice").await;
    h.hold(NS, "xjob-2", "alice").await;
    h.hold(NS, "job-2", "alice").await;
    assert_eq!(jobs.next().await.data["key"], "job-1");
    assert_eq!(jobs.next().await.data["key"], "job-2");
    jobs.expect_quiet(QUIET).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_namespaces_events_are_not_shown() {
    let h = Harness::start().await;
    let mut mine = h.events(NS, "", None).await.expect("the stream opens");
    let mut theirs = h.events("ev-other", "", None).await.expect("the stream opens");
    h.hold("ev-other", "k", "bob").await;
    h.hold("ev.other", "k", "bob").await;
    h.hold(NS, "k", "alice").await;
    let seen = mine.next().await;
    assert_eq!((&seen.data["namespace"], &seen.data["owner"]), (&json!(NS), &json!("alice")));
    mine.expect_quiet(QUIET).await;
    let seen = theirs.next().await;
    assert_eq!((&seen.data["namespace"], &seen.data["owner"]), (&json!("ev-other"), &json!("bob")));
    theirs.expect_quiet(QUIET).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_replays_the_events_after_it_then_goes_live() {
    let h = Harness::start().await;
    let mut live = h.events(NS, "", None).await.expect("the stream opens");
    h.hold(NS, "a", "alice").await;
    h.hold(NS, "b", "alice").await;
    h.release(NS, "a", "alice").await.ok();
    h.hold("ev-other", "c", "alice").await;
    let first = live.next().await;
    let second = live.next().await;
    let third = live.next().await;

    let mut resumed = h.events(NS, "", Some(&id(&first).to_string())).await.expect("the stream opens");
    let replayed = [resumed.next().await, resumed.next().await];
    assert_eq!(replayed.iter().map(id).collect::<Vec<_>>(), [id(&second), id(&third)]);
    assert_eq!(replayed[0].event, "acquired");
    assert_eq!(replayed[0].data["key"], "b");
    assert_eq!(replayed[1].event, "released");
    assert_eq!(replayed[1].data["key"], "a");
    // Nothing else is replayed (the other namespace's event is filtered out); live follows.
    resumed.expect_quiet(QUIET).await;
    h.hold(NS, "d", "alice").await;
    let next = resumed.next().await;
    assert_eq!(next.data["key"], "d");
    assert!(id(&next) > id(&third) + 1, "the other namespace's event took a revision");

    // Resuming from the newest id replays nothing.
    let mut current = h.events(NS, "", Some(&id(&next).to_string())).await.expect("the stream opens");
    current.expect_quiet(QUIET).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_older_than_the_buffer_starts_with_a_reset() {
    let h = Harness::start().await;
    // Revisions of a memory server start above its start time: note where this one is.
    let mut first = h.events(NS, "", None).await.expect("the stream opens");
    h.hold(NS, "before", "alice").await;
    let base = id(&first.next().await);
    drop(first);
    // More events than the replay buffer keeps, cheaply: re-entries of one key.
    let events_made = tumbler::mem::EVENT_BUFFER + 100;
    let path = format!("/v1/namespaces/{NS}/locks/busy/acquire");
    let url = format!("{}{path}", h.url);
    let statuses: Vec<u16> = futures::stream::iter(0..events_made)
        .map(|_| {
            let request = h.client.post(&url).json(&json!({ "owner": "churn", "ttl_ms": 600_000 }));
            async move { request.send().await.expect("an answer").status().as_u16() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "every re-entry is granted");
    assert_eq!(h.holders(NS, "busy").await.map(|v| v[0].1), Some(events_made as u64));

    let mut resumed = h.events(NS, "", Some("1")).await.expect("the stream opens");
    let reset = resumed.next().await;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.data["reason"], "too_old");
    let oldest = reset.data["oldest"].as_u64().expect("the oldest revision still kept");
    assert!(oldest > base + 1, "{reset:?}");
    // Then live events, not the buffered ones.
    resumed.expect_quiet(QUIET).await;
    h.hold(NS, "after", "alice").await;
    let next = resumed.next().await;
    assert_eq!(next.data["key"], "after");
    assert_eq!(id(&next), base + events_made as u64 + 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gs2_mutex_changes_are_events_of_the_namespace() {
    let h = Harness::start().await;
    let mut events = h.events(NS, "prefix=prop", None).await.expect("the stream opens");
    let path = format!("/v1/namespaces/{NS}/users/u1/mutexes/prop-1");
    h.post(&format!("{path}/lock"), json!({ "transactionId": "t1", "ttl": 60 })).await.ok();
    h.post(&format!("{path}/unlock"), json!({ "transactionId": "t1" })).await.ok();
    let locked = events.next().await;
    assert_eq!(locked.event, "acquired");
    assert_eq!(locked.data["user"], "u1");
    assert_eq!(locked.data["property_id"], "prop-1");
    assert_eq!(locked.data["owner"], "t1");
    assert_eq!(events.next().await.event, "released");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded_and_a_closed_one_frees_its_place() {
    let h = Harness::with_limits(|l| l.max_event_streams = 2).await;
    let first = h.events(NS, "", None).await.expect("the first stream opens");
    let mut second = h.events("ev-2", "", None).await.expect("the second stream opens");
    let Err(third) = h.events(NS, "", None).await else { panic!("a third stream opened past the bound") };
    let details = third.expect_error(429, "limit_exceeded");
    assert_eq!(details["max"], 2, "{}", third.body);

    drop(first);
    support::until("a closed stream to free its place", || async {
        match h.events(NS, "", None).await {
            Ok(_) => true,
            Err(reply) => {
                reply.expect_error(429, "limit_exceeded");
                false
            }
        }
    })
    .await;
    // The streams still open work.
    h.hold("ev-2", "k", "alice").await;
    assert_eq!(second.next().await.data["key"], "k");
    h.stop().await;
}
