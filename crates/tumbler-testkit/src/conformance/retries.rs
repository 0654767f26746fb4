//! Retried acquires carrying a request id.

use std::time::Duration;

use tumbler::{AcquireOptions, LockGuard};

use super::skipped;
use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_waiting, join, ok, owner, release, spawn_acquire, within,
    Keys,
};
use crate::backend::Backend;

/// An acquire retried with the same request id (same owner, key and mode) answers the
/// original grant — same fencing token — without counting a second level: one release
/// frees the key, and the retry's guard cannot release the next holder's hold. Different
/// request ids are different acquires and count as re-entries.
pub async fn request_id_retry_does_not_count_twice<B: Backend>(backend: &B) {
    const CASE: &str = "request_id_retry_does_not_count_twice";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (k, k2) = (keys.key("k"), keys.key("k2"));
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let original = acquire(&*a, &k, AcquireOptions::exclusive().request_id("req-1"), "a's acquire").await;
    let retried = acquire(&*a, &k, AcquireOptions::exclusive().request_id("req-1"), "a's retry").await;
    assert_eq!(retried.fencing_token(), original.fencing_token(), "a retry answers the original grant");
    assert_busy(&*b, &k, AcquireOptions::exclusive(), "b's try while a holds").await;
    release(original, "a's release of the original").await;
    // One release was enough: the retry did not count a level.
    let taken = acquire(&*b, &k, AcquireOptions::exclusive(), "b's acquire after a's single release").await;
    drop(retried);
    assert_held(&taken, "b's hold after a's retry guard was dropped").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try while b holds").await;
    release(taken, "b's release").await;

    // Distinct request ids are distinct acquires: they count.
    let first = acquire(&*a, &k2, AcquireOptions::exclusive().request_id("req-2"), "a's acquire").await;
    let second = acquire(&*a, &k2, AcquireOptions::exclusive().request_id("req-3"), "a's re-entry").await;
    assert_eq!(second.fencing_token(), first.fencing_token(), "a re-entry keeps the token");
    release(second, "a's release of the re-entry").await;
    assert_busy(&*b, &k2, AcquireOptions::exclusive(), "b's try with one level left").await;
    release(first, "a's release").await;
    assert_free(&*b, &k2, "the key once a released both levels").await;
    assert_free(&*c, &k, "the first key at the end").await;
}

/// A retry that arrives while the original request (same owner, key, mode and request
/// id) still waits joins that wait rather than displacing it: when both stay, both are
/// granted the one hold (same token, one level); when the original gives up, the retry
/// keeps waiting and is granted on release, with one level.
pub async fn request_id_retry_joins_the_original_wait<B: Backend>(backend: &B) {
    const CASE: &str = "request_id_retry_joins_the_original_wait";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (both, gives_up) = (keys.key("both"), keys.key("gives-up"));
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    // Both the original and the retry stay.
    let wait = AcquireOptions::exclusive().timeout(Duration::from_secs(5)).request_id("req-both");
    let held = acquire(&*a, &both, AcquireOptions::exclusive(), "a's hold").await;
    let original = spawn_acquire(&b, &both, wait.clone());
    assert_waiting(backend, &original, "b's original wait").await;
    let retry = spawn_acquire(&b, &both, wait);
    assert_waiting(backend, &retry, "b's retry while the original waits").await;
    if original.is_finished() {
        let outcome = join(original, "b's original wait").await;
        panic!("b's original wait ended when the retry joined it: {:?}", outcome.err());
    }
    release(held, "a's release").await;
    let first = ok("b's original wait after a released", join(original, "b's original wait").await);
    let second = ok("b's retry after a released", join(retry, "b's retry").await);
    assert_eq!(first.fencing_token(), second.fencing_token(), "the original and the retry share one grant");
    assert_busy(&*c, &both, AcquireOptions::exclusive(), "c's try while b holds").await;
    release(first, "b's release of the original's guard").await;
    assert_free(&*c, &both, "the key after b's single release").await;
    drop(second);

    // The original gives up; the retry stays.
    let wait = AcquireOptions::exclusive().timeout(Duration::from_secs(5)).request_id("req-gives-up");
    let held = acquire(&*a, &gives_up, AcquireOptions::exclusive(), "a's hold").await;
    let original = spawn_acquire(&b, &gives_up, wait.clone());
    assert_waiting(backend, &original, "b's original wait").await;
    let retry = spawn_acquire(&b, &gives_up, wait);
    assert_waiting(backend, &retry, "b's retry while the original waits").await;
    original.abort();
    let _ = within("b's original wait, aborted", original).await;
    assert_waiting(backend, &retry, "b's retry after the original gave up").await;
    release(held, "a's release").await;
    let granted = ok("b's retry after a released", join(retry, "b's retry").await);
    assert_busy(&*c, &gives_up, AcquireOptions::exclusive(), "c's try while b holds").await;
    release(granted, "b's release").await;
    assert_free(&*c, &gives_up, "the key after b's single release").await;
}
