//! Lost-hold signals: how a backend tells an owner's guards that their holds ended
//! without a release (expiry, owner or session end, connection loss, force release).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;
use tumbler_core::LostReason;

/// Names one hold within a backend: two numbers the backend chooses (for the in-process
/// backend, the key's shard and the hold's fencing token, which together are unique).
pub type HoldId = (u64, u64);

/// The lost holds of one owner, and a way for its guards to wait for theirs.
///
/// Backends mark holds as lost; each guard asks about, or waits for, its own. Marks stay
/// until the guard that owns them forgets them (on drop), so a guard made after its hold
/// was already lost still sees it.
#[derive(Debug)]
pub struct OwnerSignals {
    lost: Mutex<HashMap<HoldId, LostReason>>,
    marked: AtomicUsize,
    changed: watch::Sender<u64>,
}

impl Default for OwnerSignals {
    fn default() -> Self {
        OwnerSignals { lost: Mutex::new(HashMap::new()), marked: AtomicUsize::new(0), changed: watch::channel(0).0 }
    }
}

impl OwnerSignals {
    /// Records that `hold` ended for `reason` and wakes the guards waiting on this owner.
    pub fn mark(&self, hold: HoldId, reason: LostReason) {
        if self.lost.lock().insert(hold, reason).is_none() {
            self.marked.fetch_add(1, Ordering::Release);
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Records that every hold of this owner ended (a connection or session died).
    pub fn mark_all(&self, reason: LostReason) {
        self.mark((u64::MAX, u64::MAX), reason);
    }

    /// Why the first lost hold among `holds` ended, if any did.
    pub fn reason(&self, holds: impl IntoIterator<Item = HoldId>) -> Option<LostReason> {
        if self.marked.load(Ordering::Acquire) == 0 {
            return None;
        }
        let lost = self.lost.lock();
        if let Some(all) = lost.get(&(u64::MAX, u64::MAX)) {
            return Some(*all);
        }
        holds.into_iter().find_map(|h| lost.get(&h).copied())
    }

    /// Completes when one of `holds` is marked lost, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait<I>(&self, holds: impl Fn() -> I) -> LostReason
    where
        I: IntoIterator<Item = HoldId>,
    {
        let mut changes = self.changed.subscribe();
        loop {
            if let Some(reason) = self.reason(holds()) {
                return reason;
            }
            if changes.changed().await.is_err() {
                // The signals are gone with their owner, and nothing will be marked again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forgets the marks of `holds` (their guard is gone).
    pub fn forget(&self, holds: impl IntoIterator<Item = HoldId>) {
        if self.marked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut lost = self.lost.lock();
        for h in holds {
            if lost.remove(&h).is_some() {
                self.marked.fetch_sub(1, Ordering::Release);
            }
        }
    }
}
