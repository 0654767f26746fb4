//! Lock-delay: a key freed without a release stays unclaimable for a while.

use std::time::Duration;

use tokio::time::Instant;
use tumbler::{AcquireOptions, Error, Locker};

use super::skipped;
use super::support::{acquire, assert_free, err, ok, owner, release, within, Keys, LOCK_DELAY, SLACK};
use crate::backend::Backend;

/// When the owner of a hold with a lock-delay dies, the key stays unclaimable for that
/// delay: tries are `busy`, and a wait is granted only once the delay is over.
pub async fn lock_delay_after_owner_death<B: Backend>(backend: &B) {
    const CASE: &str = "lock_delay_after_owner_death";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let held =
        acquire(&*a, &k, AcquireOptions::exclusive().lock_delay(LOCK_DELAY), "a's acquire with a lock-delay").await;
    drop(a);
    let died = Instant::now();
    for (name, options) in [("exclusive", AcquireOptions::exclusive()), ("shared", AcquireOptions::shared())] {
        let e = err(
            &format!("c's {name} try during the lock-delay"),
            within("c's try", c.acquire(k.clone(), options)).await,
        );
        assert!(matches!(e, Error::Busy { .. }), "c's {name} try during the lock-delay: expected busy, got {e:?}");
    }
    let granted = ok(
        "b's wait through the lock-delay",
        within("b's wait", b.acquire(k.clone(), AcquireOptions::exclusive().timeout(Duration::from_secs(5)))).await,
    );
    let waited = died.elapsed();
    assert!(waited + SLACK >= LOCK_DELAY, "b was granted {waited:?} after a died, within the lock-delay");
    assert!(waited < LOCK_DELAY + Duration::from_secs(2), "b was granted only {waited:?} after a died");
    drop(held);
    release(granted, "b's release").await;
    assert_free(&*c, &k, "the key once b released").await;
}

/// A lock-delay applies only to holds that end without a release: after an explicit
/// release, or a `goodbye`, the key is free at once.
pub async fn lock_delay_does_not_follow_an_explicit_release<B: Backend>(backend: &B) {
    const CASE: &str = "lock_delay_does_not_follow_an_explicit_release";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (released, goodbye) = (keys.key("released"), keys.key("goodbye"));
    let (a, b) = (owner(backend).await, owner(backend).await);
    let with_delay = AcquireOptions::exclusive().lock_delay(Duration::from_secs(30));

    let held = acquire(&*a, &released, with_delay.clone(), "a's acquire with a lock-delay").await;
    release(held, "a's release").await;
    assert_free(&*b, &released, "the key right after a released it").await;

    let held = acquire(&*a, &goodbye, with_delay, "a's acquire with a lock-delay").await;
    ok("a's goodbye", within("a's goodbye", a.goodbye()).await);
    assert_free(&*b, &goodbye, "the key right after a's goodbye").await;
    drop(held);
}
