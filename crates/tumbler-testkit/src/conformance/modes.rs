//! Which modes coexist, and mode conversion by a holder.

use tumbler::{AcquireOptions, Error, LockGuard, Locker, Mode};

use super::skipped;
use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_waiting, err, join, ok, owner, release, spawn_acquire,
    within, Keys, Owner,
};
use crate::backend::Backend;

fn options(mode: Mode) -> AcquireOptions {
    AcquireOptions::exclusive().mode(mode)
}

/// Across owners, shared coexists with shared and nothing else coexists: shared vs
/// exclusive is busy both ways, and exclusive vs exclusive is busy. A refused request
/// leaves the hold alone, and the key is free once the hold is released.
pub async fn shared_exclusive_compatibility_matrix<B: Backend>(backend: &B) {
    const CASE: &str = "shared_exclusive_compatibility_matrix";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let rows = [
        (Mode::Shared, Mode::Shared, true),
        (Mode::Shared, Mode::Exclusive, false),
        (Mode::Exclusive, Mode::Shared, false),
        (Mode::Exclusive, Mode::Exclusive, false),
    ];
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);
    check_matrix(&keys, [&a, &b, &c], &rows).await;
}

/// Checks each row `(held, asked, compatible)` on a key of its own: one owner holds in
/// the first mode, a second asks (a try) in the second, and is granted exactly when the
/// row says so; a third checks that the key is free afterwards.
async fn check_matrix<B: Backend>(keys: &Keys<'_, B>, [a, b, c]: [&Owner<B>; 3], rows: &[(Mode, Mode, bool)]) {
    for (i, &(held_mode, asked_mode, compatible)) in rows.iter().enumerate() {
        let k = keys.key(&format!("row{i}"));
        let what = format!("{asked_mode} asked while {held_mode} is held");
        let held = acquire(&**a, &k, options(held_mode), &format!("a's {held_mode}")).await;
        assert_eq!(held.mode(), held_mode, "the guard reports the mode held");
        let answer = within(&what, b.acquire(k.clone(), options(asked_mode))).await;
        match (compatible, answer) {
            (true, Ok(second)) => {
                assert_eq!(second.mode(), asked_mode, "the guard reports the mode held");
                release(second, &what).await;
            }
            (true, Err(e)) => panic!("{what}: expected a grant, got {e:?}"),
            (false, Ok(_)) => panic!("{what}: expected busy, but it was granted"),
            (false, Err(e)) => assert!(matches!(e, Error::Busy { .. }), "{what}: expected busy, got {e:?}"),
        }
        assert_held(&held, &format!("a's {held_mode} after {what}")).await;
        release(held, &format!("a's release of {held_mode}")).await;
        assert_free(&**c, &k, &format!("the key of row {i} once released")).await;
    }
}

/// Across owners, a semaphore coexists with up to its limit of owners and with nothing
/// else: semaphores and the other modes exclude each other both ways. A semaphore asked
/// with another limit than the one in use is `invalid_argument` naming `limit` and
/// changes nothing. (Shared and exclusive among themselves:
/// [`shared_exclusive_compatibility_matrix`].)
pub async fn shared_exclusive_semaphore_compatibility_matrix<B: Backend>(backend: &B) {
    const CASE: &str = "shared_exclusive_semaphore_compatibility_matrix";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let sem2 = Mode::Semaphore { limit: 2 };
    let rows = [
        (sem2, sem2, true),
        (sem2, Mode::Exclusive, false),
        (sem2, Mode::Shared, false),
        (Mode::Exclusive, sem2, false),
        (Mode::Shared, sem2, false),
    ];
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);
    check_matrix(&keys, [&a, &b, &c], &rows).await;

    // semaphore(2) admits two owners, and a third is busy until one leaves.
    let k = keys.key("semaphore");
    let first = acquire(&*a, &k, options(sem2), "a's semaphore(2)").await;
    let second = acquire(&*b, &k, options(sem2), "b's semaphore(2)").await;
    assert_busy(&*c, &k, options(sem2), "c's semaphore(2) with two holders").await;
    let e = err(
        "c's semaphore(3) on a semaphore(2) key",
        within("c's try", c.acquire(k.clone(), options(Mode::Semaphore { limit: 3 }))).await,
    );
    assert!(
        matches!(e, Error::InvalidArgument { field: "limit", .. }),
        "c's semaphore(3) on a semaphore(2) key: expected invalid_argument naming limit, got {e:?}"
    );
    assert_eq!(e.code(), "invalid_argument");
    assert_held(&first, "a's semaphore hold after c's invalid request").await;
    assert_held(&second, "b's semaphore hold after c's invalid request").await;
    assert_busy(&*c, &k, options(sem2), "c's semaphore(2) after its invalid request").await;
    release(first, "a's release of the semaphore").await;
    let third = acquire(&*c, &k, options(sem2), "c's semaphore(2) after a left").await;
    assert_busy(&*a, &k, options(sem2), "a's semaphore(2) with b and c holding").await;
    release(second, "b's release of the semaphore").await;
    release(third, "c's release of the semaphore").await;
    assert_free(&*a, &k, "the semaphore once everybody left").await;
}

/// An owner holding a key exclusively that asks for it shared is granted at once, even
/// while another owner waits for the key; the other owner gets it once both holds end.
pub async fn exclusive_holder_asking_shared_is_granted_at_once<B: Backend>(backend: &B) {
    const CASE: &str = "exclusive_holder_asking_shared_is_granted_at_once";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let exclusive = acquire(&*a, &k, AcquireOptions::exclusive(), "a's exclusive").await;
    let waiter = spawn_acquire(&b, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &waiter, "b's wait while a holds").await;
    let shared = acquire(&*a, &k, AcquireOptions::shared(), "a's shared while holding exclusive").await;
    assert_eq!(shared.mode(), Mode::Shared, "the guard reports the mode held");
    assert_busy(&*c, &k, AcquireOptions::shared(), "c's shared try while a holds exclusive").await;
    release(exclusive, "a's release of exclusive").await;
    assert_waiting(backend, &waiter, "b's wait while a still holds shared").await;
    assert_held(&shared, "a's shared hold after its exclusive one ended").await;
    release(shared, "a's release of shared").await;
    let granted = ok("b's wait once a let go", join(waiter, "b's wait once a let go").await);
    release(granted, "b's release").await;
    assert_free(&*c, &k, "the key once everybody released").await;
}

/// A shared holder asking exclusive (an upgrade) is granted at once when it is the only
/// holder; while other readers hold, a try is busy and a wait is granted once they leave.
pub async fn shared_holder_upgrades_when_alone_and_waits_for_other_readers<B: Backend>(backend: &B) {
    const CASE: &str = "shared_holder_upgrades_when_alone_and_waits_for_other_readers";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);

    let shared = acquire(&*a, &k, AcquireOptions::shared(), "a's shared").await;
    let upgraded = acquire(&*a, &k, AcquireOptions::exclusive(), "a's upgrade while alone").await;
    assert_eq!(upgraded.mode(), Mode::Exclusive, "the guard reports the mode held");
    assert_busy(&*b, &k, AcquireOptions::shared(), "b's shared try while a holds exclusive").await;
    release(upgraded, "a's release of the upgrade").await;

    let other_reader = acquire(&*b, &k, AcquireOptions::shared(), "b's shared next to a's shared").await;
    assert_busy(&*a, &k, AcquireOptions::exclusive(), "a's upgrade try while b reads").await;
    let upgrade = spawn_acquire(&a, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &upgrade, "a's upgrade wait while b reads").await;
    release(other_reader, "b's release of shared").await;
    let upgraded = ok("a's upgrade once b left", join(upgrade, "a's upgrade once b left").await);
    assert_busy(&*b, &k, AcquireOptions::shared(), "b's shared try after a upgraded").await;
    release(upgraded, "a's release of the upgrade").await;
    assert_held(&shared, "a's shared hold after its upgrade ended").await;
    release(shared, "a's release of shared").await;
    assert_free(&*b, &k, "the key once everybody released").await;
}
