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
/// until the last guard of their hold forgets them (on drop), so a guard made after its
/// hold was already lost still sees it, and so do the other guards of a re-entered hold
/// after one of them is gone (see [`OwnerSignals::add_sibling`]).
#[derive(Debug)]
pub struct OwnerSignals {
    lost: Mutex<HashMap<HoldId, LostReason>>,
    marked: AtomicUsize,
    changed: watch::Sender<u64>,
    /// For each hold with several live guards, how many there are beyond the first.
    siblings: Mutex<HashMap<HoldId, usize>>,
    sibling_count: AtomicUsize,
}

impl Default for OwnerSignals {
    fn default() -> Self {
        OwnerSignals {
            lost: Mutex::new(HashMap::new()),
            marked: AtomicUsize::new(0),
            changed: watch::channel(0).0,
            siblings: Mutex::new(HashMap::new()),
            sibling_count: AtomicUsize::new(0),
        }
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

    /// Records that a new guard stands for `hold` next to guards that already do (a
    /// re-entry, a retried grant), so that the hold's mark outlives the first of them to go.
    pub fn add_sibling(&self, hold: HoldId) {
        *self.siblings.lock().entry(hold).or_default() += 1;
        self.sibling_count.fetch_add(1, Ordering::Release);
    }

    /// A guard of `holds` is gone: forgets the marks of those holds that it was the last
    /// guard of.
    // Inlined: every release asks, and almost always there is nothing to forget.
    #[inline]
    pub fn forget(&self, holds: impl IntoIterator<Item = HoldId>) {
        if self.marked.load(Ordering::Acquire) != 0 || self.sibling_count.load(Ordering::Acquire) != 0 {
            self.forget_marked(holds);
        }
    }

    fn forget_marked(&self, holds: impl IntoIterator<Item = HoldId>) {
        let mut siblings = self.siblings.lock();
        let mut lost = self.lost.lock();
        for h in holds {
            if let Some(left) = siblings.get_mut(&h) {
                // Another guard still stands for this hold: the mark stays for it.
                *left -= 1;
                if *left == 0 {
                    siblings.remove(&h);
                }
                self.sibling_count.fetch_sub(1, Ordering::Release);
                continue;
            }
            if lost.remove(&h).is_some() {
                self.marked.fetch_sub(1, Ordering::Release);
            }
        }
    }
}
