//! `acquire_all`: all or nothing, and never a deadlock between multi-key waiters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tumbler::{AcquireOptions, Error, LockGuard, Locker};

use super::skipped;
use super::support::{
    acquire, assert_busy, assert_free, assert_held, assert_waiting, err, join, ok, owner, release, spawn_acquire_all,
    within, Keys, SHORT_WAIT,
};
use crate::backend::Backend;

/// `acquire_all` holds every key or none: a try of `[a, b]` while `b` is held fails with
/// `busy` and leaves `a` free, a bounded wait that runs out leaves `a` free too, and a
/// waiting `acquire_all` is granted both (one fencing token per key) once `b` is
/// released.
pub async fn multi_key_is_all_or_nothing<B: Backend>(backend: &B) {
    const CASE: &str = "multi_key_is_all_or_nothing";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let (ka, kb) = (keys.key("a"), keys.key("b"));
    let (x, y, z) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let held_b = acquire(&*y, &kb, AcquireOptions::exclusive(), "y's hold of b").await;
    let e = err(
        "x's try of [a, b] while b is held",
        within("x's try", x.acquire_all(vec![ka.clone(), kb.clone()], AcquireOptions::exclusive())).await,
    );
    assert!(matches!(e, Error::Busy { .. }), "x's try of [a, b] while b is held: expected busy, got {e:?}");
    assert_free(&*z, &ka, "a after x's failed try of [a, b]").await;

    let e = err(
        "x's bounded wait for [a, b] while b is held",
        within(
            "x's bounded wait",
            x.acquire_all(vec![ka.clone(), kb.clone()], AcquireOptions::exclusive().timeout(SHORT_WAIT)),
        )
        .await,
    );
    assert!(matches!(e, Error::Timeout), "x's bounded wait for [a, b]: expected timeout, got {e:?}");
    assert_free(&*z, &ka, "a after x's bounded wait for [a, b] ran out").await;

    let wait = spawn_acquire_all(&x, vec![ka.clone(), kb.clone()], AcquireOptions::exclusive().forever());
    assert_waiting(backend, &wait, "x's wait for [a, b] while b is held").await;
    assert_held(&held_b, "y's hold of b while x waits").await;
    release(held_b, "y's release of b").await;
    let both = ok("x's wait for [a, b] once b was released", join(wait, "x's wait for [a, b]").await);
    let tokens = both.fencing_tokens();
    assert_eq!(tokens.len(), 2, "one fencing token per key: {tokens:?}");
    assert_eq!(both.fencing_token(), tokens[0], "fencing_token() is the first key's");
    assert_busy(&*z, &ka, AcquireOptions::exclusive(), "z's try of a while x holds [a, b]").await;
    assert_busy(&*z, &kb, AcquireOptions::exclusive(), "z's try of b while x holds [a, b]").await;
    release(both, "x's release of [a, b]").await;
    assert_free(&*z, &ka, "a once x released").await;
    assert_free(&*z, &kb, "b once x released").await;
}

/// A key named twice in one `acquire_all` is one key: a wait for `[a, a]` while `a` is
/// held is granted once `a` is released, with one fencing token, and one release frees it.
pub async fn acquire_all_of_a_repeated_key_waits_and_holds_it_once<B: Backend>(backend: &B) {
    const CASE: &str = "acquire_all_of_a_repeated_key_waits_and_holds_it_once";
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let ka = keys.key("a");
    let (x, y, z) = (owner(backend).await, owner(backend).await, owner(backend).await);

    let held = acquire(&*y, &ka, AcquireOptions::exclusive(), "y's hold of a").await;
    let wait = spawn_acquire_all(&x, vec![ka.clone(), ka.clone()], AcquireOptions::exclusive().forever());
    assert_waiting(backend, &wait, "x's wait for [a, a] while y holds a").await;
    release(held, "y's release of a").await;
    let once = ok("x's wait for [a, a] once a was released", join(wait, "x's wait for [a, a]").await);
    assert_eq!(once.fencing_tokens().len(), 1, "one fencing token for a key named twice: {:?}", once.fencing_tokens());
    assert_busy(&*z, &ka, AcquireOptions::exclusive(), "z's try of a while x holds [a, a]").await;
    release(once, "x's release of [a, a]").await;
    assert_free(&*z, &ka, "a once x released [a, a]").await;
}

/// Many owners repeatedly waiting for overlapping random key sets, in random order, all
/// finish: no deadlock error, no hang, and no two of them ever hold one key at once.
pub async fn overlapping_multi_key_waiters_never_deadlock<B: Backend>(backend: &B) {
    const CASE: &str = "overlapping_multi_key_waiters_never_deadlock";
    const KEYS: usize = 6;
    const OWNERS: usize = 10;
    const ROUNDS: usize = 12;
    if skipped(backend, CASE) {
        return;
    }
    let keys = Keys::new(backend, CASE);
    let pool: Arc<Vec<_>> = Arc::new((0..KEYS).map(|i| keys.key(&format!("k{i}"))).collect());
    let in_use: Arc<Vec<AtomicBool>> = Arc::new((0..KEYS).map(|_| AtomicBool::new(false)).collect());
    let grants = Arc::new(AtomicUsize::new(0));
    let seed: u64 = rand::random();

    let mut tasks = Vec::new();
    for n in 0..OWNERS {
        let (me, pool, in_use, grants) = (owner(backend).await, pool.clone(), in_use.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
            for round in 0..ROUNDS {
                let mut picked: Vec<usize> = (0..KEYS).collect();
                picked.shuffle(&mut rng);
                picked.truncate(rng.gen_range(2..=4));
                let wanted = picked.iter().map(|&i| pool[i].clone()).collect();
                let guard = match me.acquire_all(wanted, AcquireOptions::exclusive().forever()).await {
                    Ok(guard) => guard,
                    Err(e) => panic!("owner {n}, round {round}, keys {picked:?} (seed {seed}): {e:?}"),
                };
                for &i in &picked {
                    assert!(!in_use[i].swap(true, Ordering::SeqCst), "key {i} granted to two owners at once");
                }
                grants.fetch_add(1, Ordering::Relaxed);
                if rng.gen_bool(0.5) {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3))).await;
                } else {
                    tokio::task::yield_now().await;
                }
                for &i in &picked {
                    in_use[i].store(false, Ordering::SeqCst);
                }
                ok("a release", guard.release().await);
            }
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        join(task, &format!("owner {n} of the overlapping multi-key waiters (seed {seed})")).await;
    }
    assert_eq!(grants.load(Ordering::Relaxed), OWNERS * ROUNDS);
    let checker = owner(backend).await;
    for (i, k) in pool.iter().enumerate() {
        assert_free(&*checker, k, &format!("key {i} after every owner finished")).await;
    }
}
