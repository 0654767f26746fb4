//! What every backend gets for free on top of [`Locker`]: plain lock and try-lock, and
//! running a future under one or several keys.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use crate::error::{Error, Result};
use crate::locker::{LockGuard, Locker};
use crate::options::AcquireOptions;

/// Conveniences for every [`Locker`].
pub trait LockerExt: Locker {
    /// Waits as long as it takes for an exclusive hold of `key`.
    ///
    /// # Cancel safety
    /// As [`Locker::acquire`].
    ///
    /// # Errors
    /// As [`Locker::acquire`].
    fn lock(&self, key: Self::Key) -> impl Future<Output = Result<Self::Guard>> + Send {
        self.acquire(key, AcquireOptions::exclusive().forever())
    }

    /// Takes an exclusive hold of `key` if it is free now; `Ok(None)` when it is busy
    /// (Elixir's `lock`, go-pglock's `Lock`).
    ///
    /// # Errors
    /// Anything but `busy`, as [`Locker::acquire`].
    fn try_lock(&self, key: Self::Key) -> impl Future<Output = Result<Option<Self::Guard>>> + Send {
        async move {
            match self.acquire(key, AcquireOptions::exclusive()).await {
                Ok(guard) => Ok(Some(guard)),
                Err(Error::Busy { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }

    /// Acquires `key` as `options` say, runs `work` under it, releases, and returns what
    /// `work` returned. The lock is released however `work` ends: returning, returning an
    /// error value, panicking (the panic continues after the release) or being cancelled.
    ///
    /// # Errors
    /// The acquire's errors (then `work` never runs), or `lost` when the hold ended while
    /// `work` ran: its value is then dropped, because it was computed without the lock.
    fn under<T, F>(&self, key: Self::Key, options: AcquireOptions, work: F) -> impl Future<Output = Result<T>> + Send
    where
        F: Future<Output = T> + Send,
        T: Send,
    {
        async move {
            let guard = self.acquire(key, options).await?;
            finish_under(guard, work).await
        }
    }

    /// As [`LockerExt::under`] for several keys, acquired all or nothing.
    ///
    /// # Errors
    /// As [`LockerExt::under`].
    fn under_all<T, F>(
        &self,
        keys: Vec<Self::Key>,
        options: AcquireOptions,
        work: F,
    ) -> impl Future<Output = Result<T>> + Send
    where
        F: Future<Output = T> + Send,
        T: Send,
    {
        async move {
            let guard = self.acquire_all(keys, options).await?;
            finish_under(guard, work).await
        }
    }
}

impl<L: Locker + ?Sized> LockerExt for L {}

async fn finish_under<G: LockGuard, T>(guard: G, work: impl Future<Output = T>) -> Result<T> {
    // The guard lives across `work`: if `work` is cancelled, its drop releases the lock. A
    // panic is caught to release the lock before the panic goes on: a drop releases only in
    // the background on some backends (PostgreSQL, remote), so the lock could still be held
    // when the panicking task is seen to have ended. `work` is never polled again after it
    // panicked, so no broken state of it can be observed.
    let value = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(value) => value,
        Err(panic) => {
            let _ = guard.release().await;
            std::panic::resume_unwind(panic);
        }
    };
    if let Some(reason) = guard.lost_reason() {
        drop(guard);
        return Err(Error::Lost { reason });
    }
    guard.release().await?;
    Ok(value)
}
