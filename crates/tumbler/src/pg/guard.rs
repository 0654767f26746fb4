//! Guards of session-level advisory locks.

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;
use tumbler_core::{LostReason, Mode};

use super::key::PgKey;
use super::session::Session;
use crate::error::{Error, Result};
use crate::locker::LockGuard;

/// A held session-level advisory lock of one key or several. Dropping it releases one
/// level of each key in the background; [`LockGuard::release`] does it now and reports
/// the outcome.
///
/// PostgreSQL offers no fencing tokens: [`LockGuard::fencing_token`] is always 0.
#[must_use = "if unused the lock is released at once"]
pub struct PgGuard {
    pub(crate) session: Arc<Session>,
    pub(crate) shared: bool,
    /// Each key with the generation of the hold it entered.
    pub(crate) keys: SmallVec<[(PgKey, u64); 1]>,
    pub(crate) released: bool,
}

impl fmt::Debug for PgGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgGuard")
            .field("owner", self.session.owner())
            .field("shared", &self.shared)
            .field("keys", &self.keys.iter().map(|(k, _)| *k).collect::<Vec<_>>())
            .finish()
    }
}

impl PgGuard {
    /// The keys held, in the order they were locked.
    pub fn keys(&self) -> impl Iterator<Item = PgKey> + '_ {
        self.keys.iter().map(|(k, _)| *k)
    }

    fn hold_ids(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.keys.iter().map(|(_, generation)| Session::hold_id(*generation))
    }

    async fn release_all(session: Arc<Session>, shared: bool, keys: SmallVec<[(PgKey, u64); 1]>) -> Result<()> {
        let mut first_error = None;
        // In reverse: the last key locked is the first released.
        for (key, generation) in keys.iter().rev() {
            if let Err(e) = session.release(*key, shared, *generation).await {
                first_error.get_or_insert(e);
            }
        }
        session.signals.forget(keys.iter().map(|(_, g)| Session::hold_id(*g)));
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (session, keys) = (self.session.clone(), std::mem::take(&mut self.keys));
        let shared = self.shared;
        // Without a runtime the levels stay held until the session ends (closing its
        // connection releases them).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = PgGuard::release_all(session, shared, keys).await;
            });
        }
    }
}

impl LockGuard for PgGuard {
    fn fencing_token(&self) -> u64 {
        0
    }

    fn fencing_tokens(&self) -> Vec<u64> {
        vec![0; self.keys.len()]
    }

    fn mode(&self) -> Mode {
        if self.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        }
    }

    fn lost_reason(&self) -> Option<LostReason> {
        self.session.signals.reason(self.hold_ids())
    }

    async fn lost(&self) -> LostReason {
        self.session.signals.wait(|| self.hold_ids().collect::<SmallVec<[_; 1]>>()).await
    }

    async fn release(mut self) -> Result<()> {
        self.released = true;
        let lost = self.lost_reason();
        let result = PgGuard::release_all(self.session.clone(), self.shared, std::mem::take(&mut self.keys)).await;
        match (lost, result) {
            (Some(reason), _) => Err(Error::Lost { reason }),
            (None, result) => result,
        }
    }
}
