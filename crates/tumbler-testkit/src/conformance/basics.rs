//! Try, wait, release, re-entry, and the `under` helpers.

use std::time::Duration;

use tokio::time::Instant;
use tumbler::{AcquireOptions, Error, LockGuard, Locker, LockerExt, Mode};

use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_still_waiting, assert_waiting, err, join, ok, owner,
    release, spawn_acquire, within, Keys, SHORT_WAIT,
};
use super::{part_skipped, skipped, Capability};
use crate::backend::Backend;

/// A try of a held key fails at once with `busy` naming the holder, changes nothing (the
/// holder still holds, and the try can be repeated with the same answer), and succeeds
/// once the holder released. A try of a free key succeeds.
pub async fn try_conflicts_with_holder_and_reports_busy<B: Backend>(backend: &B) {
    const CASE: &str = "try_conflicts_with_holder_and_reports_busy";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);

    let held = ok("a's try_lock of a free key", within("try_lock", a.try_lock(k.clone())).await);
    let held = held.expect("a's try_lock of a free key: found it busy");
    assert_eq!(held.mode(), Mode::Exclusive, "the guard's mode");

    for attempt in 1..=2 {
        let started = Instant::now();
        let e =
            err("b's try of a held key", within("b's try", b.acquire(k.clone(), AcquireOptions::exclusive())).await);
        let Error::Busy { holders } = &e else { panic!("b's try of a held key: expected busy, got {e:?}") };
        assert_eq!(e.code(), "busy");
        assert!(
            holders.iter().any(|h| h.owner.as_str() == a.owner_id()),
            "attempt {attempt}: busy must name the holder {}, named {holders:?}",
            a.owner_id()
        );
        assert!(started.elapsed() < Duration::from_secs(2), "a try must fail at once, took {:?}", started.elapsed());
    }
    let none = ok("b's try_lock of a held key", within("try_lock", b.try_lock(k.clone())).await);
    assert!(none.is_none(), "b's try_lock of a held key must answer None");

    assert_held(&held, "the holder after b's failed tries").await;
    release(held, "a's release").await;
    assert_free(&*b, &k, "b's try after a released").await;
}

/// A waiter is granted as soon as the holder releases — by notification, not by polling:
/// over releases spread across 100 ms after the waiter arrived, nearly every grant follows
/// its release within a few milliseconds (a poller would show latencies spread up to its
/// interval).
pub async fn waiter_is_woken_when_holder_releases<B: Backend>(backend: &B) {
    const CASE: &str = "waiter_is_woken_when_holder_releases";
    const PROMPT: Duration = Duration::from_millis(30);
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);
    let mut latencies = Vec::new();
    for round in 0..5 {
        let held = acquire(&*a, &k, AcquireOptions::exclusive(), "a's acquire").await;
        let waiter = {
            let (b, k) = (b.clone(), k.clone());
            tokio::spawn(async move {
                let guard = b.lock(k).await;
                (Instant::now(), guard)
            })
        };
        assert_waiting(backend, &waiter, "b's lock while a holds").await;
        // Each release falls at another phase of whatever interval a poller would use.
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        assert_still_waiting(&waiter, "b's lock while a holds");
        let released_at = Instant::now();
        release(held, "a's release").await;
        let (granted_at, guard) = join(waiter, "b's lock after a released").await;
        let guard = ok("b's lock after a released", guard);
        latencies.push(granted_at.saturating_duration_since(released_at));
        assert_busy(&*a, &k, AcquireOptions::exclusive(), "a's try while b holds").await;
        release(guard, "b's release").await;
    }
    // One late wake-up is forgiven (a loaded machine), a pattern is not.
    let prompt = latencies.iter().filter(|l| **l < PROMPT).count();
    assert!(
        prompt + 1 >= latencies.len(),
        "a waiter must be woken by the release, not by polling: release-to-grant latencies {latencies:?}"
    );
}

/// `under` runs the work under the lock (others are busy meanwhile), returns its value,
/// and releases afterwards; `under_all` does the same for several keys where supported.
pub async fn under_returns_the_value_and_releases<B: Backend>(backend: &B) {
    const CASE: &str = "under_returns_the_value_and_releases";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (k, k2) = (keys.key("k"), keys.key("k2"));
    let (a, b) = (owner(backend).await, owner(backend).await);

    let work = {
        let (b, k) = (b.clone(), k.clone());
        async move {
            let e = err("b's try inside a's under", b.acquire(k, AcquireOptions::exclusive()).await);
            assert!(matches!(e, Error::Busy { .. }), "b's try inside a's under: expected busy, got {e:?}");
            40 + 2
        }
    };
    let value = ok("a's under", within("a's under", a.under(k.clone(), AcquireOptions::exclusive(), work)).await);
    assert_eq!(value, 42, "under returns the work's value");
    assert_free(&*b, &k, "b's try after a's under").await;

    // A work that returns an error value is still a value: the lock is released as well.
    let failed: std::result::Result<(), &str> =
        ok("a's under", within("a's under", a.under(k.clone(), AcquireOptions::shared(), async { Err("no") })).await);
    assert_eq!(failed, Err("no"));
    assert_free(&*b, &k, "b's try after a's failing under").await;

    if !part_skipped(backend, CASE, "under_all", Capability::MultiKey) {
        let both = vec![k.clone(), k2.clone()];
        let work = {
            let (b, k2) = (b.clone(), k2.clone());
            async move {
                let e = err("b's try inside a's under_all", b.acquire(k2, AcquireOptions::exclusive()).await);
                assert!(matches!(e, Error::Busy { .. }), "b's try inside a's under_all: expected busy, got {e:?}");
                "done"
            }
        };
        let value =
            ok("a's under_all", within("a's under_all", a.under_all(both, AcquireOptions::exclusive(), work)).await);
        assert_eq!(value, "done");
        assert_free(&*b, &k, "b's try of the first key after a's under_all").await;
        assert_free(&*b, &k2, "b's try of the second key after a's under_all").await;
    }

    // The acquire's error comes back and the work never runs.
    let held = acquire(&*b, &k, AcquireOptions::exclusive(), "b's acquire").await;
    let ran = std::sync::atomic::AtomicBool::new(false);
    let e = err(
        "a's under of a held key",
        within(
            "a's under",
            a.under(k.clone(), AcquireOptions::exclusive(), async {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
            }),
        )
        .await,
    );
    assert!(matches!(e, Error::Busy { .. }), "a's under of a held key: expected busy, got {e:?}");
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst), "under ran the work without the lock");
    release(held, "b's release").await;
}

/// A panic inside `under`'s work releases the lock: once the panicking task is joined,
/// another owner takes the key at once.
pub async fn panic_inside_under_releases<B: Backend>(backend: &B) {
    const CASE: &str = "panic_inside_under_releases";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b) = (owner(backend).await, owner(backend).await);

    let task = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move {
            let _ = a
                .under(k, AcquireOptions::exclusive(), async {
                    panic!("deliberate panic inside under (conformance case {CASE})");
                })
                .await;
        })
    };
    let outcome = within("the panicking task", task).await;
    assert!(outcome.as_ref().is_err_and(|e| e.is_panic()), "the work should have panicked: {outcome:?}");
    assert_free(&*b, &k, "b's try after the panic").await;
    // The owner lives on and can lock the key again.
    assert_free(&*a, &k, "a's try after its own panic").await;
}

/// `lost()` stays pending and `lost_reason()` stays `None` for as long as the hold lasts,
/// through other owners' failed tries and waits, and through re-entry and release of
/// inner levels.
pub async fn lost_signal_is_not_fired_while_held<B: Backend>(backend: &B) {
    const CASE: &str = "lost_signal_is_not_fired_while_held";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (k, other) = (keys.key("k"), keys.key("other"));
    let (a, b) = (owner(backend).await, owner(backend).await);

    let held = acquire(&*a, &k, AcquireOptions::exclusive(), "a's acquire").await;
    let activity = async {
        assert_busy(&*b, &k, AcquireOptions::exclusive(), "b's try while a holds").await;
        assert_busy(&*b, &k, AcquireOptions::shared(), "b's shared try while a holds").await;
        let e = err(
            "b's bounded wait while a holds",
            within("b's bounded wait", b.acquire(k.clone(), AcquireOptions::exclusive().timeout(SHORT_WAIT))).await,
        );
        assert!(matches!(e, Error::Timeout), "b's bounded wait: expected timeout, got {e:?}");
        let inner = acquire(&*a, &k, AcquireOptions::exclusive(), "a's re-entry").await;
        release(inner, "a's release of the inner level").await;
        let unrelated = acquire(&*a, &other, AcquireOptions::exclusive(), "a's acquire of another key").await;
        release(unrelated, "a's release of another key").await;
    };
    tokio::select! {
        biased;
        reason = held.lost() => panic!("lost() fired while the lock was held: {reason:?}"),
        () = activity => {}
    }
    assert_held(&held, "a's hold after the others' attempts").await;
    let fired = tokio::time::timeout(Duration::from_millis(200), held.lost()).await;
    assert!(fired.is_err(), "lost() fired while the lock was held: {fired:?}");
    release(held, "a's release").await;
}

/// Re-entry by the holder counts levels: n acquires need n releases, another owner stays
/// busy until the last one, and a re-entry is granted at once even while another owner
/// waits in the queue.
pub async fn reentry_counts_levels<B: Backend>(backend: &B) {
    const CASE: &str = "reentry_counts_levels";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let k = keys.key("k");
    let (a, b, c) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let outer = acquire(&*a, &k, AcquireOptions::exclusive(), "a's first acquire").await;
    let waiter = spawn_acquire(&b, &k, AcquireOptions::exclusive().forever());
    assert_waiting(backend, &waiter, "b's wait while a holds").await;
    // Re-entries are tries: they must not queue behind b.
    let second = acquire(&*a, &k, AcquireOptions::exclusive(), "a's re-entry past a waiter").await;
    let third = acquire(&*a, &k, AcquireOptions::exclusive(), "a's second re-entry").await;

    release(third, "a's release of level 3").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try with 2 levels left").await;
    assert_still_waiting(&waiter, "b's wait with 2 levels left");
    release(second, "a's release of level 2").await;
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try with 1 level left").await;
    assert_waiting(backend, &waiter, "b's wait with 1 level left").await;
    assert_held(&outer, "a's outermost level").await;
    release(outer, "a's release of level 1").await;

    let granted = ok("b's wait after a's last release", join(waiter, "b's wait after a's last release").await);
    assert_busy(&*c, &k, AcquireOptions::exclusive(), "c's try while b holds").await;
    release(granted, "b's release").await;
    assert_free(&*c, &k, "c's try once everybody released").await;
}
