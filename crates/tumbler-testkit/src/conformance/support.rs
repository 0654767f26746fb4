//! What the cases share: unique keys, bounded waits, spawned waiters, and assertions on
//! what a `Locker` answers.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tumbler::{AcquireOptions, Error, LockGuard, Locker, Result};

use crate::backend::Backend;

/// The TTL of holds that are meant to expire during a case.
pub(crate) const TTL: Duration = Duration::from_millis(150);

/// A wait bound meant to run out during a case.
pub(crate) const SHORT_WAIT: Duration = Duration::from_millis(150);

/// The lock-delay of holds whose owner dies during a case.
pub(crate) const LOCK_DELAY: Duration = Duration::from_millis(300);

/// The safety net around every wait that should end: long enough never to fire on a
/// working backend, short enough that a broken one fails the case instead of hanging it.
pub(crate) const SAFETY: Duration = Duration::from_secs(10);

/// How much earlier than asked a backend's timer may fire (clock granularity), and how
/// late a notification-based wake-up may come on a loaded machine.
pub(crate) const SLACK: Duration = Duration::from_millis(15);

/// The owner handle of backend `B`, shared with spawned tasks. Dropping the last clone
/// ends the owner.
pub(crate) type Owner<B> = Arc<<B as Backend>::Locker>;
pub(crate) type Key<B> = <<B as Backend>::Locker as Locker>::Key;
pub(crate) type Guard<B> = <<B as Backend>::Locker as Locker>::Guard;

/// A new owner of `backend`.
pub(crate) async fn owner<B: Backend>(backend: &B) -> Owner<B> {
    Arc::new(within("making an owner", backend.owner()).await)
}

/// Names keys unique to one call of one case.
pub(crate) struct Keys<'b, B> {
    backend: &'b B,
    prefix: String,
}

impl<'b, B: Backend> Keys<'b, B> {
    pub(crate) fn new(backend: &'b B, case: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static RUN: OnceLock<String> = OnceLock::new();
        // Distinguishes this process from others sharing a backend (a server, a database).
        let run = RUN.get_or_init(|| format!("{:x}{:08x}", std::process::id(), rand::random::<u32>()));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Keys { backend, prefix: format!("tk.{case}.{run}.{n}") }
    }

    /// The key labelled `label` in this call.
    pub(crate) fn key(&self, label: &str) -> Key<B> {
        self.backend.key(&format!("{}.{label}", self.prefix))
    }
}

/// Runs `fut`, failing the case if it does not finish within [`SAFETY`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(SAFETY, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {SAFETY:?} (a lost wake-up or a hung backend)"),
    }
}

/// The value of `result`, failing the case with `what` and the error otherwise.
pub(crate) fn ok<T>(what: &str, result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: expected success, got {e:?} ({e})"))
}

/// The error of `result`, failing the case with `what` if it succeeded.
pub(crate) fn err<T>(what: &str, result: Result<T>) -> Error {
    match result {
        Ok(_) => panic!("{what}: expected an error, but it succeeded"),
        Err(e) => e,
    }
}

/// Acquires `key` as `options` say, failing the case if that fails.
pub(crate) async fn acquire<L: Locker>(owner: &L, key: &L::Key, options: AcquireOptions, what: &str) -> L::Guard {
    ok(what, within(what, owner.acquire(key.clone(), options)).await)
}

/// Checks that a try of `key` in `options`' mode by `owner` fails with `busy`.
pub(crate) async fn assert_busy<L: Locker>(owner: &L, key: &L::Key, options: AcquireOptions, what: &str) {
    let e = err(what, within(what, owner.acquire(key.clone(), options.no_wait())).await);
    assert!(matches!(e, Error::Busy { .. }), "{what}: expected busy, got {e:?} ({e})");
}

/// Checks that `owner` can take `key` exclusively at once, and lets it go again.
pub(crate) async fn assert_free<L: Locker>(owner: &L, key: &L::Key, what: &str) {
    let guard = acquire(owner, key, AcquireOptions::exclusive(), what).await;
    ok(what, guard.release().await);
}

/// Releases `guard`, failing the case if the release fails.
pub(crate) async fn release<G: LockGuard>(guard: G, what: &str) {
    ok(what, within(what, guard.release()).await);
}

/// Starts `owner` acquiring `key` in a task of its own.
pub(crate) fn spawn_acquire<L: Locker + 'static>(
    owner: &Arc<L>,
    key: &L::Key,
    options: AcquireOptions,
) -> JoinHandle<Result<L::Guard>> {
    let (owner, key) = (owner.clone(), key.clone());
    tokio::spawn(async move { owner.acquire(key, options).await })
}

/// Starts `owner` acquiring all of `keys` in a task of its own.
pub(crate) fn spawn_acquire_all<L: Locker + 'static>(
    owner: &Arc<L>,
    keys: Vec<L::Key>,
    options: AcquireOptions,
) -> JoinHandle<Result<L::Guard>> {
    let owner = owner.clone();
    tokio::spawn(async move { owner.acquire_all(keys, options).await })
}

/// Gives spawned requests time to reach the backend, then checks that `task` still waits.
pub(crate) async fn assert_waiting<B: Backend, T>(backend: &B, task: &JoinHandle<T>, what: &str) {
    tokio::time::sleep(backend.settle()).await;
    assert!(!task.is_finished(), "{what}: expected the request to be still waiting, but it finished");
}

/// Checks that `task` still waits, without sleeping first.
pub(crate) fn assert_still_waiting<T>(task: &JoinHandle<T>, what: &str) {
    assert!(!task.is_finished(), "{what}: expected the request to be still waiting, but it finished");
}

/// The outcome of a spawned task, failing the case if it panicked or hangs.
pub(crate) async fn join<T>(task: JoinHandle<T>, what: &str) -> T {
    match within(what, task).await {
        Ok(value) => value,
        Err(e) => panic!("{what}: the task failed: {e}"),
    }
}

/// Checks that `guard`'s hold is not reported lost, neither now nor within a short while.
pub(crate) async fn assert_held<G: LockGuard>(guard: &G, what: &str) {
    assert_eq!(guard.lost_reason(), None, "{what}: the hold is reported lost");
    let fired = tokio::time::timeout(Duration::from_millis(20), guard.lost()).await;
    assert!(fired.is_err(), "{what}: lost() fired on a held lock: {fired:?}");
}
