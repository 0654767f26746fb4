//! Holds with a time to live.

use std::time::Duration;

use tokio::time::Instant;
use tumbler::{AcquireOptions, Error, LockGuard, Locker, LostReason};

use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_waiting, err, join, ok, owner, release, within, Keys, SLACK,
    TTL,
};
use super::{part_skipped, skipped, Capability};
use crate::backend::Backend;

/// When a TTL hold expires, the next waiter is granted, the expired guard's `lost()`
/// fires with `expired`, and releasing that guard answers `lost` without touching the
/// new holder's hold. The new holder's fencing token is greater.
pub async fn ttl_expiry_wakes_the_next_waiter<B: Backend>(backend: &B) {
    const CASE: &str = "ttl_expiry_wakes_the_next_waiter";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let started = Instant::now();
    let expiring = acquire(&*a, &k, AcquireOptions::exclusive().ttl(TTL), "a's acquire with a TTL").await;
    let waiter = {
        let (b, k) = (b.clone(), k.clone());
        tokio::spawn(async move {
            let guard = b.acquire(k, AcquireOptions::exclusive().timeout(Duration::from_secs(5))).await;
            (Instant::now(), guard)
        })
    };
    assert_waiting(backend, &waiter, "b's wait before a's TTL ran out").await;

    let reason = within("a's lost() after its TTL", expiring.lost()).await;
    assert_eq!(reason, LostReason::Expired, "the reason a's hold was lost");
    assert!(started.elapsed() + SLACK >= TTL, "a's hold expired after {:?}, before its TTL", started.elapsed());
    assert_eq!(expiring.lost_reason(), Some(LostReason::Expired), "lost_reason() after expiry");

    let (granted_at, granted) = join(waiter, "b's wait for the expiring hold").await;
    let granted = ok("b's wait for the expiring hold", granted);
    let waited = granted_at.saturating_duration_since(started);
    assert!(waited + SLACK >= TTL, "b was granted after {waited:?}, before a's TTL ran out");
    assert!(waited < TTL + Duration::from_secs(2), "b was granted only after {waited:?} for a TTL of {TTL:?}");
    if !part_skipped(backend, CASE, "the new holder's greater token", Capability::FencingTokens) {
        assert!(granted.fencing_token() > expiring.fencing_token(), "the new holder's token must be greater");
    }

    let e = err("releasing the expired guard", within("a's release", expiring.release()).await);
    assert!(
        matches!(e, Error::Lost { reason: LostReason::Expired }),
        "releasing the expired guard: expected lost(expired), got {e:?}"
    );
    assert_held(&granted, "b's hold after a released its expired guard").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try while b holds").await;
    release(granted, "b's release").await;
    assert_free(&*c, &k, "the key once b released").await;
}

/// A waiter that asked for a TTL and is granted when the holder releases gets a hold that
/// lives for that TTL counted from the grant, not from its request: it is held right after
/// a wait longer than its TTL, and expires (its `lost()` fires with `expired`) a TTL after
/// the grant, freeing the key.
pub async fn a_waiter_granted_on_release_counts_its_ttl_from_the_grant<B: Backend>(backend: &B) {
    const CASE: &str = "a_waiter_granted_on_release_counts_its_ttl_from_the_grant";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let holding = acquire(&*a, &k, AcquireOptions::exclusive(), "a's acquire").await;
    let waiter = {
        let (b, k) = (b.clone(), k.clone());
        tokio::spawn(
            async move { b.acquire(k, AcquireOptions::exclusive().ttl(TTL).timeout(Duration::from_secs(5))).await },
        )
    };
    assert_waiting(backend, &waiter, "b's wait with a TTL").await;
    // Longer than b's TTL, so that a TTL counted from b's request would be over.
    tokio::time::sleep(TTL).await;
    let released = Instant::now();
    release(holding, "a's release").await;
    let granted = ok("b's wait", join(waiter, "b's wait for a's release").await);
    assert_held(&granted, "b's hold right after the grant, after a wait longer than its TTL").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try while b holds").await;

    let reason = within("b's lost() after its TTL", granted.lost()).await;
    assert_eq!(reason, LostReason::Expired, "the reason b's hold was lost");
    let lived = released.elapsed();
    assert!(lived + SLACK >= TTL, "b's hold expired {lived:?} after a's release, before its TTL of {TTL:?}");
    assert_free(&*c, &k, "the key once b's hold expired").await;
}

/// Re-entry extends a TTL hold's expiry to the later of the two: a longer TTL keeps the
/// hold past the first expiry, a shorter one does not cut it short.
pub async fn reentry_extends_ttl_to_the_later_expiry<B: Backend>(backend: &B) {
    const CASE: &str = "reentry_extends_ttl_to_the_later_expiry";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (longer, shorter) = (keys.key("longer"), keys.key("shorter"));
    let (a, b) = (owner(backend).await, owner(backend).await);
    let long = Duration::from_millis(400);

    // A longer TTL on re-entry pushes the expiry out.
    let started = Instant::now();
    let outer = acquire(&*a, &longer, AcquireOptions::exclusive().ttl(TTL), "a's acquire with a short TTL").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let inner = acquire(&*a, &longer, AcquireOptions::exclusive().ttl(long), "a's re-entry with a long TTL").await;
    tokio::time::sleep_until(started + Duration::from_millis(250)).await;
    assert_held(&outer, "a's hold past the first TTL").await;
    assert_busy(&*b, &longer, AcquireOptions::exclusive(), "b's try past the first TTL").await;
    let reason = within("a's lost() after the extended TTL", outer.lost()).await;
    assert_eq!(reason, LostReason::Expired);
    let lived = started.elapsed();
    assert!(lived + SLACK >= Duration::from_millis(450), "the extended hold expired after {lived:?}, before 450 ms");
    assert_eq!(inner.lost_reason(), Some(LostReason::Expired), "both levels end with the hold");
    assert_free(&*b, &longer, "the key once the extended hold expired").await;
    drop((outer, inner));

    // A shorter TTL on re-entry does not bring the expiry in.
    let started = Instant::now();
    let outer = acquire(&*a, &shorter, AcquireOptions::exclusive().ttl(long), "a's acquire with a long TTL").await;
    let inner =
        acquire(&*a, &shorter, AcquireOptions::exclusive().ttl(Duration::from_millis(50)), "a's re-entry").await;
    tokio::time::sleep_until(started + Duration::from_millis(200)).await;
    assert_held(&outer, "a's hold past the re-entry's shorter TTL").await;
    assert_busy(&*b, &shorter, AcquireOptions::exclusive(), "b's try past the re-entry's shorter TTL").await;
    release(inner, "a's release of the inner level").await;
    release(outer, "a's release of the outer level").await;
    assert_free(&*b, &shorter, "the key once a released").await;
}

/// A zero TTL is `invalid_argument` naming `ttl`, and takes nothing.
pub async fn zero_ttl_is_invalid_argument<B: Backend>(backend: &B) {
    const CASE: &str = "zero_ttl_is_invalid_argument";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);
    let e = err(
        "a zero TTL",
        within("a's acquire", a.acquire(k.clone(), AcquireOptions::exclusive().ttl(Duration::ZERO))).await,
    );
    assert!(
        matches!(e, Error::InvalidArgument { field: "ttl", .. }),
        "a zero TTL: expected invalid_argument naming ttl, got {e:?}"
    );
    assert_free(&*b, &k, "the key after the invalid request").await;
}
