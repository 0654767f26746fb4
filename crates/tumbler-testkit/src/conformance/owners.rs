//! The end of an owner: `goodbye`, and dropping the owner handle.

use tumbler::{AcquireOptions, Error, LockGuard, Locker, LostReason};

use super::skipped;
use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_waiting, err, join, ok, owner, release, spawn_acquire,
    within, Keys,
};
use crate::backend::Backend;

/// `goodbye` releases every hold of the owner (all levels, every mode) and cancels its
/// waits (they fail with `session_expired`), wakes the waiters of the released keys, tells
/// the owner's guards their holds are gone, leaves other owners' holds alone, and leaves
/// the owner usable.
pub async fn goodbye_releases_everything_the_owner_holds<B: Backend>(backend: &B) {
    const CASE: &str = "goodbye_releases_everything_the_owner_holds";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (k1, k2, k3) = (keys.key("k1"), keys.key("k2"), keys.key("k3"));
    let (a, b, c, d) = (owner(backend).await, owner(backend).await, owner(backend).await, owner(backend).await);

    let outer = acquire(&*a, &k1, AcquireOptions::exclusive(), "a's hold of k1").await;
    let inner = acquire(&*a, &k1, AcquireOptions::exclusive(), "a's re-entry of k1").await;
    let reading = acquire(&*a, &k2, AcquireOptions::shared(), "a's shared hold of k2").await;
    let b_holds_k3 = acquire(&*b, &k3, AcquireOptions::exclusive(), "b's hold of k3").await;
    let a_waits = spawn_acquire(&a, &k3, AcquireOptions::exclusive().forever());
    let c_waits = spawn_acquire(&c, &k1, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &a_waits, "a's wait for k3").await;
    assert_waiting(backend, &c_waits, "c's wait for k1").await;

    let ended = ok("a's goodbye", within("a's goodbye", a.goodbye()).await);
    assert_eq!(ended, 2, "goodbye reports the holds it ended (k1 with two levels, k2)");

    let e = err("a's wait cancelled by goodbye", join(a_waits, "a's wait for k3").await);
    assert!(matches!(e, Error::SessionExpired), "a's wait cancelled by goodbye: expected session_expired, got {e:?}");
    let c_hold = ok("c's wait for k1 after a's goodbye", join(c_waits, "c's wait for k1").await);
    for guard in [&outer, &inner, &reading] {
        assert_eq!(within("a guard's lost() after goodbye", guard.lost()).await, LostReason::Goodbye);
    }
    assert_free(&*d, &k2, "k2 after a's goodbye").await;
    assert_held(&b_holds_k3, "b's hold of k3 after a's goodbye").await;

    // a's old guards cannot release what others (or a itself) hold now.
    let again = acquire(&*a, &k2, AcquireOptions::shared(), "a's new shared hold of k2").await;
    for (name, guard) in [("outer", outer), ("inner", inner), ("reading", reading)] {
        let e = err(&format!("releasing a's {name} guard after goodbye"), within("a's release", guard.release()).await);
        assert!(
            matches!(e, Error::Lost { reason: LostReason::Goodbye }),
            "releasing a's {name} guard after goodbye: expected lost(goodbye), got {e:?}"
        );
    }
    assert_held(&c_hold, "c's hold of k1 after a's old guards were released").await;
    assert_busy(&*d, &k1, AcquireOptions::exclusive(), "d's try of k1 while c holds it").await;
    assert_held(&again, "a's new hold of k2 after its old guards were released").await;
    assert_busy(&*d, &k2, AcquireOptions::exclusive(), "d's exclusive try of k2 while a reads it").await;

    release(again, "a's release of its new hold").await;
    release(c_hold, "c's release").await;
    release(b_holds_k3, "b's release").await;
    for (name, k) in [("k1", &k1), ("k2", &k2), ("k3", &k3)] {
        assert_free(&*d, k, &format!("{name} once everybody released")).await;
    }
}

/// Dropping an owner's handle ends the owner: each of its holds is released and the
/// waiter of each key is granted; its guards, still alive, report `owner_ended`, and
/// releasing them does not touch the new holders' holds.
pub async fn owner_death_releases_and_wakes_each_waiter_of_each_key<B: Backend>(backend: &B) {
    const CASE: &str = "owner_death_releases_and_wakes_each_waiter_of_each_key";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (k1, k2) = (keys.key("k1"), keys.key("k2"));
    let (a, b, c, d) = (owner(backend).await, owner(backend).await, owner(backend).await, owner(backend).await);

    let g1 = acquire(&*a, &k1, AcquireOptions::exclusive(), "a's hold of k1").await;
    let g2 = acquire(&*a, &k2, AcquireOptions::shared(), "a's shared hold of k2").await;
    let b_waits = spawn_acquire(&b, &k1, AcquireOptions::exclusive().forever());
    let c_waits = spawn_acquire(&c, &k2, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &b_waits, "b's wait for k1").await;
    assert_waiting(backend, &c_waits, "c's wait for k2").await;

    let a_id = a.owner_id().to_owned();
    drop(a);

    let b_hold = ok("b's wait for k1 after a died", join(b_waits, "b's wait for k1").await);
    let c_hold = ok("c's wait for k2 after a died", join(c_waits, "c's wait for k2").await);
    for guard in [&g1, &g2] {
        let reason = within(&format!("lost() of a guard of {a_id} after its death"), guard.lost()).await;
        assert_eq!(reason, LostReason::OwnerEnded, "the reason the dead owner's hold was lost");
    }
    for (name, guard) in [("k1", g1), ("k2", g2)] {
        let e = err(&format!("releasing the dead owner's guard of {name}"), within("release", guard.release()).await);
        assert!(matches!(e, Error::Lost { .. }), "releasing the dead owner's guard of {name}: got {e:?}");
    }
    assert_held(&b_hold, "b's hold of k1 after the dead owner's guards were released").await;
    assert_held(&c_hold, "c's hold of k2 after the dead owner's guards were released").await;
    assert_busy(&*d, &k1, AcquireOptions::exclusive(), "d's try of k1 while b holds it").await;
    assert_busy(&*d, &k2, AcquireOptions::shared(), "d's try of k2 while c holds it").await;
    release(b_hold, "b's release").await;
    release(c_hold, "c's release").await;
    assert_free(&*d, &k1, "k1 once b released").await;
    assert_free(&*d, &k2, "k2 once c released").await;
}

/// When a re-entered hold is lost, every one of its guards learns it — also after a
/// sibling guard of the same hold was released or dropped: `lost()` fires,
/// `lost_reason()` answers, and releasing answers `lost`.
pub async fn every_guard_of_a_reentered_hold_sees_its_loss<B: Backend>(backend: &B) {
    const CASE: &str = "every_guard_of_a_reentered_hold_sees_its_loss";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);

    let levels = [
        acquire(&*a, &k, AcquireOptions::exclusive(), "a's hold").await,
        acquire(&*a, &k, AcquireOptions::exclusive(), "a's first re-entry").await,
        acquire(&*a, &k, AcquireOptions::exclusive(), "a's second re-entry").await,
    ];
    ok("a's goodbye", within("a's goodbye", a.goodbye()).await);
    let [first, second, third] = levels;
    drop(first);
    let e = err("releasing the second guard of the lost hold", within("a's release", second.release()).await);
    assert!(
        matches!(e, Error::Lost { reason: LostReason::Goodbye }),
        "releasing the second guard after its sibling was dropped: expected lost(goodbye), got {e:?}"
    );
    assert_eq!(
        third.lost_reason(),
        Some(LostReason::Goodbye),
        "the last guard's lost_reason() after its siblings left"
    );
    let reason = within("the last guard's lost() after its siblings left", third.lost()).await;
    assert_eq!(reason, LostReason::Goodbye);
    assert_free(&*b, &k, "the key after a's goodbye").await;
    drop(third);
}
