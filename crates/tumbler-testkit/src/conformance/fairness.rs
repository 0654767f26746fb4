//! FIFO queues, wait bounds, and withdrawn waiters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tumbler::{AcquireOptions, Error, LockGuard, Locker};

use super::skipped;
use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_still_waiting, assert_waiting, err, join, ok, owner,
    release, spawn_acquire, within, Keys, SHORT_WAIT, SLACK,
};
use crate::backend::Backend;

/// Waiters on a key are granted in the order they arrived, one after the other.
pub async fn waiters_are_granted_in_arrival_order<B: Backend>(backend: &B) {
    const CASE: &str = "waiters_are_granted_in_arrival_order";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let holder = owner(backend).await;
    let held = acquire(&*holder, &k, AcquireOptions::exclusive(), "the holder's acquire").await;

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..4 {
        let (waiter, k, order) = (owner(backend).await, k.clone(), order.clone());
        let task = tokio::spawn(async move {
            let guard = ok("a waiter's wait", waiter.acquire(k, AcquireOptions::exclusive().forever()).await);
            order.lock().expect("BUG: poisoned").push(i);
            tokio::time::sleep(Duration::from_millis(5)).await;
            ok("a waiter's release", guard.release().await);
        });
        // Each waiter is queued before the next one arrives.
        assert_waiting(backend, &task, &format!("waiter {i} while the key is held")).await;
        waiters.push(task);
    }
    release(held, "the holder's release").await;
    for (i, task) in waiters.into_iter().enumerate() {
        join(task, &format!("waiter {i}")).await;
    }
    let order = order.lock().expect("BUG: poisoned").clone();
    assert_eq!(order, [0, 1, 2, 3], "waiters must be granted in arrival order");
    assert_free(&*holder, &k, "the key once every waiter left").await;
}

/// A writer queued behind a reader is not overtaken by later readers: a new reader's try
/// is busy, and a new waiting reader is granted only after the writer.
pub async fn queued_writer_is_not_starved_by_later_readers<B: Backend>(backend: &B) {
    const CASE: &str = "queued_writer_is_not_starved_by_later_readers";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (reader, writer, late_reader) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let read = acquire(&*reader, &k, AcquireOptions::shared(), "the first reader").await;
    let write = spawn_acquire(&writer, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &write, "the writer while a reader holds").await;

    assert_busy(&*late_reader, &k, AcquireOptions::shared(), "a later reader's try while the writer waits").await;
    let late_read = spawn_acquire(&late_reader, &k, AcquireOptions::shared().forever());
    assert_waiting(backend, &late_read, "a later reader's wait while the writer waits").await;

    release(read, "the first reader's release").await;
    let written = ok("the writer once the first reader left", join(write, "the writer").await);
    assert_waiting(backend, &late_read, "the later reader while the writer holds").await;
    release(written, "the writer's release").await;
    let late = ok("the later reader after the writer", join(late_read, "the later reader").await);
    release(late, "the later reader's release").await;
    assert_free(&*reader, &k, "the key once everybody left").await;
}

/// A bounded wait on a held key fails with `timeout` after its bound (not before), leaves
/// the holder holding, and the same owner can wait again and be granted on release.
pub async fn timeout_leaves_holder_untouched_and_waiter_can_wait_again<B: Backend>(backend: &B) {
    const CASE: &str = "timeout_leaves_holder_untouched_and_waiter_can_wait_again";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let held = acquire(&*a, &k, AcquireOptions::exclusive(), "a's acquire").await;
    for attempt in 1..=2 {
        let started = Instant::now();
        let e = err(
            "b's bounded wait on a held key",
            within("b's bounded wait", b.acquire(k.clone(), AcquireOptions::exclusive().timeout(SHORT_WAIT))).await,
        );
        let waited = started.elapsed();
        assert!(matches!(e, Error::Timeout), "attempt {attempt}: expected timeout, got {e:?}");
        assert_eq!(e.code(), "timeout");
        assert!(waited + SLACK >= SHORT_WAIT, "attempt {attempt}: timed out after {waited:?}, before its bound");
    }
    assert_held(&held, "a's hold after b timed out").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try after b timed out").await;

    let again = spawn_acquire(&b, &k, AcquireOptions::exclusive().timeout(Duration::from_secs(5)));
    assert_waiting(backend, &again, "b's second wait").await;
    release(held, "a's release").await;
    let granted = ok("b's second wait after a released", join(again, "b's second wait").await);
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try while b holds").await;
    release(granted, "b's release").await;
    assert_free(&*c, &k, "the key once everybody left").await;
}

/// A waiter that goes away — its future dropped, or its task aborted — leaves the queue:
/// on release the next waiter is granted, and the one that left never holds the key.
pub async fn dropped_waiter_passes_its_turn_to_the_next<B: Backend>(backend: &B) {
    const CASE: &str = "dropped_waiter_passes_its_turn_to_the_next";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c, d, e) =
        (owner(backend).await, owner(backend).await, owner(backend).await, owner(backend).await, owner(backend).await);

    let held = acquire(&*a, &k, AcquireOptions::exclusive(), "a's acquire").await;

    // b queues, then drops its waiting future.
    {
        let wait = b.acquire(k.clone(), AcquireOptions::exclusive().forever());
        tokio::pin!(wait);
        tokio::select! {
            outcome = &mut wait => panic!("b's wait finished while a holds: {:?}", outcome.err()),
            () = tokio::time::sleep(backend.settle()) => {}
        }
    }
    // c queues in a task that is then aborted.
    let aborted = spawn_acquire(&c, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &aborted, "c's wait while a holds").await;
    // d queues last and stays.
    let next = spawn_acquire(&d, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &next, "d's wait while a holds").await;
    aborted.abort();
    let outcome = within("c's aborted task", aborted).await;
    assert!(outcome.as_ref().is_err_and(|e| e.is_cancelled()), "c's task should be cancelled: {:?}", outcome.err());
    assert_still_waiting(&next, "d's wait after b and c left");

    release(held, "a's release").await;
    let granted = ok("d's wait after a released", join(next, "d's wait").await);
    for (name, other) in [("b", &b), ("c", &c), ("e", &e)] {
        assert_busy(&**other, &k, AcquireOptions::exclusive(), &format!("{name}'s try while d holds")).await;
    }
    release(granted, "d's release").await;
    // Neither b nor c holds a leaked grant.
    assert_free(&*e, &k, "the key once d released").await;
}
