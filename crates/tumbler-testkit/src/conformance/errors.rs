//! Requests that must fail, and must change nothing when they do.

use tumbler::{AcquireOptions, Error, LockGuard, Locker, LostReason, Mode};

use super::skipped;
use super::support::{acquire, assert_busy, assert_free, assert_held, err, owner, release, within, Keys, SHORT_WAIT};
use crate::backend::Backend;

/// Nobody but the owner can end a hold. The `Locker` trait offers no release by key, so a
/// non-owner's attempts are what the trait allows: tries and bounded waits in every mode
/// (`busy`, `timeout`), its `goodbye` (ends nothing of others), its death, and releasing
/// a guard whose hold already ended (a stale guard of the same owner, after `goodbye`,
/// must not release that owner's newer hold). Afterwards the holder still holds, at every
/// level.
pub async fn release_by_non_owner_is_rejected_and_changes_nothing<B: Backend>(backend: &B) {
    const CASE: &str = "release_by_non_owner_is_rejected_and_changes_nothing";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (k, stale) = (keys.key("k"), keys.key("stale"));
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let outer = acquire(&*a, &k, AcquireOptions::exclusive(), "a's hold").await;
    let inner = acquire(&*a, &k, AcquireOptions::exclusive(), "a's re-entry").await;
    assert_busy(&*b, &k, AcquireOptions::exclusive(), "b's exclusive try").await;
    assert_busy(&*b, &k, AcquireOptions::shared(), "b's shared try").await;
    let e = err(
        "b's bounded wait",
        within("b's bounded wait", b.acquire(k.clone(), AcquireOptions::exclusive().timeout(SHORT_WAIT))).await,
    );
    assert!(matches!(e, Error::Timeout), "b's bounded wait: expected timeout, got {e:?}");
    let ended = within("b's goodbye", b.goodbye()).await.unwrap_or_else(|e| panic!("b's goodbye: {e:?}"));
    assert_eq!(ended, 0, "b's goodbye ends nothing: b holds nothing");
    drop(b);
    let d = owner(backend).await;
    assert_held(&outer, "a's hold after the others' attempts").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try after the others' attempts").await;

    // Both of a's levels are still there: one release leaves the key held.
    release(inner, "a's release of the inner level").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try with one level left").await;
    release(outer, "a's release of the outer level").await;
    assert_free(&*c, &k, "the key once a released both levels").await;

    // A guard of an ended hold cannot release anybody's newer hold of the key: neither
    // another owner's nor its own owner's.
    let old = acquire(&*a, &stale, AcquireOptions::exclusive(), "a's first hold of the stale key").await;
    within("a's goodbye", a.goodbye()).await.unwrap_or_else(|e| panic!("a's goodbye: {e:?}"));
    let taken = acquire(&*c, &stale, AcquireOptions::exclusive(), "c's hold after a's goodbye").await;
    let e = err("releasing a's ended guard while c holds", within("a's release", old.release()).await);
    assert!(matches!(e, Error::Lost { reason: LostReason::Goodbye }), "releasing a's ended guard: got {e:?}");
    assert_held(&taken, "c's hold after a released its ended guard").await;
    assert_busy(&*d, &stale, AcquireOptions::exclusive(), "d's try while c holds").await;
    release(taken, "c's release").await;

    let old = acquire(&*a, &stale, AcquireOptions::exclusive(), "a's second hold of the stale key").await;
    within("a's goodbye", a.goodbye()).await.unwrap_or_else(|e| panic!("a's goodbye: {e:?}"));
    let newer = acquire(&*a, &stale, AcquireOptions::exclusive(), "a's newer hold").await;
    drop(old);
    assert_held(&newer, "a's newer hold after its ended guard was dropped").await;
    assert_busy(&*d, &stale, AcquireOptions::exclusive(), "d's try while a's newer hold lasts").await;
    release(newer, "a's release of its newer hold").await;
    assert_free(&*d, &stale, "the stale key once a released").await;
}

/// Malformed semaphore requests fail with `invalid_argument` naming `limit`, and change
/// nothing: a limit of zero, and a limit different from the one in use (also when the
/// request would wait: it is refused, not queued).
pub async fn invalid_arguments_are_rejected_and_change_nothing<B: Backend>(backend: &B) {
    const CASE: &str = "invalid_arguments_are_rejected_and_change_nothing";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (free, sem) = (keys.key("free"), keys.key("sem"));
    let (a, b) = (owner(backend).await, owner(backend).await);
    let sem2 = AcquireOptions::semaphore(2);

    let e = err("semaphore(0)", within("a's acquire", a.acquire(free.clone(), AcquireOptions::semaphore(0))).await);
    assert!(
        matches!(e, Error::InvalidArgument { field: "limit", .. }),
        "semaphore(0): expected invalid_argument naming limit, got {e:?}"
    );
    assert_eq!(e.code(), "invalid_argument");
    assert_free(&*b, &free, "the key after semaphore(0)").await;

    let held = acquire(&*a, &sem, sem2.clone(), "a's semaphore(2)").await;
    for limit in [1, 3] {
        let what = format!("semaphore({limit}) on a semaphore(2) key");
        let e = err(&what, within(&what, b.acquire(sem.clone(), AcquireOptions::semaphore(limit))).await);
        assert!(matches!(e, Error::InvalidArgument { field: "limit", .. }), "{what}: got {e:?}");
        // Also when waiting: the request is refused, not queued.
        let e = err(&what, within(&what, b.acquire(sem.clone(), AcquireOptions::semaphore(limit).forever())).await);
        assert!(matches!(e, Error::InvalidArgument { field: "limit", .. }), "{what}, waiting: got {e:?}");
    }
    assert_held(&held, "a's semaphore hold after b's invalid requests").await;
    let second = acquire(&*b, &sem, sem2.clone(), "b's semaphore(2) after its invalid requests").await;
    assert_eq!(second.mode(), Mode::Semaphore { limit: 2 });
    release(second, "b's release").await;
    release(held, "a's release").await;
    assert_free(&*b, &sem, "the semaphore key once released").await;
}

/// An `acquire_all` of no keys fails with `invalid_argument`, whether it may wait or not,
/// and changes nothing: what its owner holds stays held, at every level.
pub async fn acquire_all_of_no_keys_is_rejected_and_changes_nothing<B: Backend>(backend: &B) {
    const CASE: &str = "acquire_all_of_no_keys_is_rejected_and_changes_nothing";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);

    let held = acquire(&*a, &k, AcquireOptions::exclusive(), "a's hold").await;
    for (what, options) in [
        ("a try of no keys", AcquireOptions::exclusive()),
        ("a wait for no keys", AcquireOptions::exclusive().forever()),
        ("a shared wait for no keys", AcquireOptions::shared().timeout(SHORT_WAIT)),
    ] {
        let e = err(what, within(what, a.acquire_all(Vec::new(), options)).await);
        assert!(matches!(e, Error::InvalidArgument { .. }), "{what}: expected invalid_argument, got {e:?}");
        assert_eq!(e.code(), "invalid_argument");
    }
    assert_held(&held, "a's hold after its empty acquire_all").await;
    assert_busy(&*b, &k, AcquireOptions::shared(), "b's try while a holds").await;
    release(held, "a's release").await;
    assert_free(&*b, &k, "the key once a released").await;
}
