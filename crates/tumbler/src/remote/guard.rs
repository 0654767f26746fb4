//! Guards of holds on the lock server.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tumbler_core::{LostReason, Mode};

use super::session::{Held, Owner};
use crate::error::{Error, Result};
use crate::locker::LockGuard;

/// A hold of one key or several on the lock server.
///
/// Releasing (explicitly, or by dropping the guard) names each hold by its fencing token,
/// so a guard whose hold already ended — expired, ended by `goodbye` or by its owner's
/// end — can never release a newer hold of the key, not even one of its own owner.
///
/// # Dropping
/// Dropping the guard releases one level of each key in the background, when a tokio
/// runtime is at hand. Dropped outside a runtime, the levels stay held until the owner's
/// session ends (when the last clone of its [`RemoteLocker`](super::RemoteLocker) is
/// dropped, or its lease runs out) or their TTL does.
///
/// # Lost holds
/// [`LockGuard::lost`] fires when the hold's TTL ran out (confirmed with the server), when
/// the owner said `goodbye` or ended, when the server ended the session (a keep-alive
/// answered `410`: [`LostReason::SessionEnded`]), and when keep-alives failed until the
/// lease ran out ([`LostReason::ConnectionLost`]: the server ends the session then, if it
/// has not already). A hold released by force on the server is noticed by the next
/// release or refresh.
#[must_use = "if unused the lock is released at once"]
pub struct RemoteGuard {
    owner: Arc<Owner>,
    mode: Mode,
    holds: SmallVec<[Held; 1]>,
    released: bool,
}

impl fmt::Debug for RemoteGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteGuard")
            .field("owner", &self.owner.id)
            .field("mode", &self.mode)
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("tokens", &self.fencing_tokens())
            .finish()
    }
}

impl RemoteGuard {
    pub(super) fn new(owner: Arc<Owner>, mode: Mode, holds: Vec<Held>) -> Self {
        RemoteGuard { owner, mode, holds: holds.into(), released: false }
    }

    /// The keys held, in the order they were asked for.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.holds.iter().map(|h| h.key.as_str())
    }

    /// Extends each key's hold to expire `ttl` from now (DESIGN.md §2's `refresh`); a hold
    /// whose expiry is already later keeps it. Only a hold taken with a TTL has an expiry
    /// to extend.
    ///
    /// The server names the hold by owner, key and mode: refresh only a guard whose hold
    /// is not lost (checked first), or it could refresh a newer hold of the same owner.
    ///
    /// # Errors
    /// `lost` when the hold ended; `invalid_argument` for a zero TTL, one above the
    /// server's bound, or a hold taken without a TTL; backend failures. Keys before a
    /// failing one were refreshed.
    pub async fn refresh(&self, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(Error::InvalidArgument { field: "ttl", reason: "must be greater than zero".into() });
        }
        for held in &self.holds {
            if let Some(reason) = self.lost_reason() {
                return Err(Error::Lost { reason });
            }
            self.owner.refresh(held, self.mode, ttl).await?;
        }
        Ok(())
    }

    /// Why the first lost hold among `holds` ended, if one did.
    fn lost_reason_of(&self, holds: &[Held]) -> Option<LostReason> {
        self.owner.signals.reason(holds.iter().map(Held::hold_id))
    }

    fn hold_ids(&self) -> SmallVec<[(u64, u64); 1]> {
        self.holds.iter().map(Held::hold_id).collect()
    }

    /// Releases one level of each of `holds`, all at once, and forgets the guard.
    async fn release_holds(owner: Arc<Owner>, mode: Mode, holds: SmallVec<[Held; 1]>) -> Result<()> {
        let results = futures::future::join_all(holds.iter().map(|held| owner.release_level(held, mode))).await;
        owner.guard_gone(&holds, mode);
        let mut first_error = None;
        for result in results {
            match result {
                Ok(_) => {}
                // A lost hold is what the caller most needs to hear of.
                Err(e @ Error::Lost { .. }) => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for RemoteGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let holds = std::mem::take(&mut self.holds);
        let lost = self.lost_reason_of(&holds).is_some();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !lost => {
                let (owner, mode) = (self.owner.clone(), self.mode);
                runtime.spawn(async move {
                    let _ = RemoteGuard::release_holds(owner, mode, holds).await;
                });
            }
            // Lost: nothing is left to release. Outside a runtime: see "Dropping" above.
            _ => self.owner.guard_gone(&holds, self.mode),
        }
    }
}

impl LockGuard for RemoteGuard {
    fn fencing_token(&self) -> u64 {
        self.holds.first().map_or(0, |h| h.token)
    }

    fn fencing_tokens(&self) -> Vec<u64> {
        self.holds.iter().map(|h| h.token).collect()
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn lost_reason(&self) -> Option<LostReason> {
        self.owner.signals.reason(self.hold_ids())
    }

    async fn lost(&self) -> LostReason {
        self.owner.signals.wait(|| self.hold_ids()).await
    }

    /// Releases one level of each key now, all keys at once.
    ///
    /// # Cancel safety
    /// The release runs in a task of its own: dropping this future does not stop it.
    ///
    /// # Errors
    /// `lost` when the hold ended before (nothing is sent then); backend failures.
    async fn release(mut self) -> Result<()> {
        self.released = true;
        let holds = std::mem::take(&mut self.holds);
        if let Some(reason) = self.lost_reason_of(&holds) {
            self.owner.guard_gone(&holds, self.mode);
            return Err(Error::Lost { reason });
        }
        let task = tokio::spawn(RemoteGuard::release_holds(self.owner.clone(), self.mode, holds));
        task.await.unwrap_or_else(|e| Err(Error::Internal(format!("the release task failed: {e}"))))
    }
}
