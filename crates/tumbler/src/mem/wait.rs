//! How a queued request's waiter learns its outcome.
//!
//! A request living in its shard ([`RequestId::home`]) has its waiter filed with the shard
//! ([`HomeWaiters`]), read and written only under the shard's lock: the shard hands the
//! key to it with no channel, no allocation and no reference count, and a waiter that
//! leaves takes itself out under the same lock that withdraws its request, so a key is
//! never handed to a waiter that has gone. A plain hand-off (a fencing token, no expiry)
//! goes through the waiter's [`HandCells`] cell when it has one, which the waiter reads
//! without taking the shard's lock; such a waiter is filed by its cell, so the hand-off
//! finds it without hashing. Any other request is told through a `oneshot` channel: a
//! retry (same request id) may join its wait, and each of its waiters is sent the
//! outcome.

use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use smallvec::SmallVec;
use tokio::sync::oneshot;
use tumbler_core::{Grant, HandOff, RequestId};

use super::engine::{Admitted, Engine, Map};

type CoreResult<T> = tumbler_core::Result<T>;

/// What a waiter is told: the outcome of its request, or, for a request living in its
/// shard, that the key was handed to it (the waiter makes its guard from what it asked).
pub(super) enum Delivery<K> {
    Outcome(CoreResult<Grant<K>>),
    Handed(HandOff),
}

/// The waiter of a request living in its shard, as the shard files it in
/// [`HomeWaiters::entries`].
pub(super) enum HomeWait<K> {
    /// Still waiting, with the waker of its latest poll (none before its first).
    Waiting { waker: Option<Waker> },
    /// Decided, for the waiter's next poll to take.
    Decided(Delivery<K>),
}

impl<K> HomeWait<K> {
    /// Records the request's outcome; answers whom to wake once the shard is unlocked.
    pub fn decide(&mut self, delivery: Delivery<K>) -> Option<Waker> {
        match std::mem::replace(self, HomeWait::Decided(delivery)) {
            HomeWait::Waiting { waker } => waker,
            HomeWait::Decided(_) => unreachable!("BUG: a request was decided twice"),
        }
    }

    /// Keeps `cx`'s waker to be woken with the outcome; answers the outcome when there is
    /// one already (the caller then removes the entry).
    pub fn poll(&mut self, cx: &Context<'_>) -> Poll<()> {
        match self {
            HomeWait::Decided(_) => Poll::Ready(()),
            HomeWait::Waiting { waker } => {
                keep_waker(waker, cx);
                Poll::Pending
            }
        }
    }
}

/// Keeps `cx`'s waker in `slot`, unless the one there wakes the same task.
fn keep_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// The waiters of the requests living in one shard ([`RequestId::home`]), read and written
/// under the shard's lock.
///
/// A waiter with a [`HandCells`] cell is filed by its cell while it waits, so that the
/// hand-off of a hot key finds it by comparing at most [`HAND_CELLS`] ids, with no hashing
/// and nothing to remove from a map. Waiters without a cell, and every outcome told the
/// locked way (an error, a grant by the coordinator, a hand-off with an expiry), are
/// entries of a map by request id; a waiter with a cell that is told the locked way keeps
/// its cell reserved until it takes its outcome, so the cell cannot be given to another
/// waiter meanwhile.
pub(super) struct HomeWaiters<K> {
    /// By cell: the request of the waiter waiting there, `0` for none (a request living in
    /// a shard never has id 0: its low bits name the shard).
    requests: [u64; HAND_CELLS],
    /// By cell: the waker of that waiter's latest poll.
    wakers: [Option<Waker>; HAND_CELLS],
    entries: Map<RequestId, HomeWait<K>>,
}

impl<K> Default for HomeWaiters<K> {
    fn default() -> Self {
        HomeWaiters { requests: [0; HAND_CELLS], wakers: Default::default(), entries: Map::default() }
    }
}

impl<K> HomeWaiters<K> {
    /// Files the waiter of `request`, which starts to wait, by its `cell` when it has one.
    pub fn file(&mut self, request: RequestId, cell: Option<usize>) {
        match cell {
            Some(cell) => {
                debug_assert_eq!(self.requests[cell], 0, "BUG: filing a waiter in a cell that has one");
                self.requests[cell] = request.0;
            }
            None => {
                self.entries.insert(request, HomeWait::Waiting { waker: None });
            }
        }
    }

    /// The cell `request` waits in, if it waits in one.
    fn cell_of(&self, request: RequestId) -> Option<usize> {
        self.requests.iter().position(|r| *r == request.0)
    }

    /// Whether `request` (with `cell`, if any) still waits: then keeps `cx`'s waker to be
    /// woken with its outcome. `Ready` when it has an outcome, for [`HomeWaiters::take`].
    pub fn poll(&mut self, request: RequestId, cell: Option<usize>, cx: &Context<'_>) -> Poll<()> {
        if let Some(cell) = cell.filter(|cell| self.requests[*cell] == request.0) {
            keep_waker(&mut self.wakers[cell], cx);
            return Poll::Pending;
        }
        self.entries.get_mut(&request).map_or(Poll::Ready(()), |wait| wait.poll(cx))
    }

    /// Tells the waiter of a request that the key was handed to it: through its cell in
    /// `cells` when it has one and the hand-off is a token alone (it then leaves this
    /// filing), else the locked way. Answers whom to wake.
    pub fn hand(&mut self, cells: &HandCells, handed: HandOff) -> Option<Waker> {
        if handed.expires_at.is_none() {
            if let Some(cell) = self.cell_of(handed.request) {
                cells.hand(cell, handed.fencing_token);
                self.requests[cell] = 0;
                return self.wakers[cell].take();
            }
        }
        self.decide(handed.request, Delivery::Handed(handed))
    }

    /// Records the outcome of `request` for its waiter's next poll; answers whom to wake.
    pub fn decide(&mut self, request: RequestId, delivery: Delivery<K>) -> Option<Waker> {
        if let Some(cell) = self.cell_of(request) {
            // Its cell stays reserved until the waiter takes the outcome (`take`).
            self.requests[cell] = 0;
            self.entries.insert(request, HomeWait::Decided(delivery));
            return self.wakers[cell].take();
        }
        let wait = self.entries.get_mut(&request);
        debug_assert!(wait.is_some(), "BUG: a request decided with no waiter");
        wait.and_then(|wait| wait.decide(delivery))
    }

    /// Takes out the waiter of `request` (with `cell`, if any, which is freed in `cells`):
    /// still waiting, or with its outcome. A request handed its key through its cell has
    /// nothing filed any more, and is answered as decided with that hand-off.
    pub fn take(&mut self, cells: &HandCells, request: RequestId, cell: Option<usize>) -> Option<HomeWait<K>> {
        if let Some(wait) = self.entries.remove(&request) {
            if let Some(cell) = cell {
                cells.free(cell);
            }
            return Some(wait);
        }
        if let Some(cell) = cell.filter(|cell| self.requests[*cell] == request.0) {
            self.requests[cell] = 0;
            cells.free(cell);
            return Some(HomeWait::Waiting { waker: self.wakers[cell].take() });
        }
        cells.handed(cell, request).map(|handed| HomeWait::Decided(Delivery::Handed(handed)))
    }

    /// How many waiters are filed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len() + self.requests.iter().filter(|r| **r != 0).count()
    }
}

/// How many waiters of one shard can be handed their key through a cell at once; the
/// others are told the locked way.
const HAND_CELLS: usize = 16;
/// A cell nobody uses.
const FREE: u64 = 0;
/// A cell whose waiter waits; a cell holding `token + 2` holds a hand-off of `token`.
const WAITING: u64 = 1;

/// The cells through which a shard hands its key to a waiter living in it, kept beside the
/// shard's lock, not under it, so that the waiter sees its hand-off with one load instead
/// of taking the lock.
///
/// Every change but one is made under the shard's lock: reserving a free cell for a new
/// waiter, writing a hand-off into a waiting cell, freeing the cell of a waiter that
/// leaves or is told its outcome the locked way. The one change made without it is the
/// waiter freeing its cell as it takes its hand-off, which only ever turns a cell holding a
/// hand-off into a free one: so a cell read as free under the lock stays free, and a
/// waiting cell changes only under the lock.
pub(super) struct HandCells([AtomicU64; HAND_CELLS]);

impl Default for HandCells {
    fn default() -> Self {
        HandCells(std::array::from_fn(|_| AtomicU64::new(FREE)))
    }
}

impl HandCells {
    /// Reserves a free cell for a new waiter; `None` when every cell is in use. Under the
    /// shard's lock.
    pub fn reserve(&self) -> Option<usize> {
        let cell = self.0.iter().position(|c| c.load(Ordering::Acquire) == FREE)?;
        self.0[cell].store(WAITING, Ordering::Relaxed);
        Some(cell)
    }

    /// Writes the hand-off of `token` into the waiting `cell`. Under the shard's lock.
    pub fn hand(&self, cell: usize, token: u64) {
        debug_assert_eq!(
            self.0[cell].load(Ordering::Relaxed),
            WAITING,
            "BUG: a hand-off into a cell that does not wait"
        );
        self.0[cell].store(token + 2, Ordering::Release);
    }

    /// The hand-off to `request` written into its `cell` (if it has one), freeing the cell;
    /// `None` while it waits. The one change made without the shard's lock.
    #[inline]
    pub fn handed(&self, cell: Option<usize>, request: RequestId) -> Option<HandOff> {
        let cell = &self.0[cell?];
        let value = cell.load(Ordering::Acquire);
        if value < 2 {
            return None;
        }
        cell.store(FREE, Ordering::Release);
        Some(HandOff { request, fencing_token: value - 2, expires_at: None })
    }

    /// Frees the waiting `cell` of a waiter that leaves or is told its outcome the locked
    /// way. Under the shard's lock.
    pub fn free(&self, cell: usize) {
        debug_assert_eq!(self.0[cell].load(Ordering::Relaxed), WAITING, "BUG: freeing a cell that does not wait");
        self.0[cell].store(FREE, Ordering::Release);
    }

    /// How many cells are in use.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.0.iter().filter(|c| c.load(Ordering::Acquire) != FREE).count()
    }
}

pub(super) type WakeSender<K> = oneshot::Sender<Delivery<K>>;
/// The waiters of one queued request the coordinator keeps: the one that queued it, and
/// any retry (same request id) that joined its wait.
pub(super) type WakeSenders<K> = SmallVec<[WakeSender<K>; 1]>;

/// The waiters to tell once every lock is released.
pub(super) struct Wakes<K> {
    /// Outcomes to send, each with the waiters of its request.
    pub sends: Vec<(WakeSenders<K>, CoreResult<Grant<K>>)>,
    /// Waiters filed with their shard whose outcome is recorded there.
    pub wakers: Vec<Waker>,
}

impl<K> Default for Wakes<K> {
    fn default() -> Self {
        Wakes { sends: Vec::new(), wakers: Vec::new() }
    }
}

/// Sends `outcome` to the waiters of one request. Returns the grant when none of them was
/// left to take it, for the caller to release.
pub(super) fn deliver<K: Clone>(mut txs: WakeSenders<K>, outcome: CoreResult<Grant<K>>) -> Option<Grant<K>> {
    if txs.len() == 1 {
        return match txs.pop()?.send(Delivery::Outcome(outcome)) {
            Err(Delivery::Outcome(Ok(grant))) => Some(grant),
            _ => None,
        };
    }
    let mut delivered = false;
    for tx in txs {
        let mut copy = outcome.clone();
        if let (true, Ok(grant)) = (delivered, &mut copy) {
            // Waiters after the first to take the grant are retries: it counted once.
            grant.retried = true;
        }
        delivered |= tx.send(Delivery::Outcome(copy)).is_ok();
    }
    if delivered {
        None
    } else {
        outcome.ok()
    }
}

/// Where a [`WaitFor`] learns its outcome.
pub(super) enum Source<K> {
    /// Filed with shard `shard` (in its [`HomeWaiters`]), and handed its key through `cell` when it
    /// has one; the request asked for `key` (repeated keys are folded, so it is its only
    /// one), which is what it is handed.
    Home { shard: usize, cell: Option<usize>, key: K },
    /// A channel from the coordinator's waiters.
    Central(oneshot::Receiver<Delivery<K>>),
}

/// A queued request's wait for its outcome. Dropping it before the outcome withdraws the
/// request, and releases a grant that raced with the drop.
pub(super) struct WaitFor<'e, K: Hash + Eq + Clone + Send + Sync + 'static> {
    pub engine: &'e Engine<K>,
    pub request: RequestId,
    /// `None` once the outcome was taken.
    pub from: Option<Source<K>>,
}

// Nothing of a wait is pinned in place: the key it keeps is only moved into its outcome.
impl<K: Hash + Eq + Clone + Send + Sync + 'static> Unpin for WaitFor<'_, K> {}

/// The outcome `delivery` brings a request that asked for `key` (when it lives in its
/// shard).
fn admitted<K>(delivery: Delivery<K>, key: Option<K>) -> CoreResult<Admitted<K>> {
    match delivery {
        Delivery::Outcome(outcome) => outcome.map(Admitted::Granted),
        Delivery::Handed(handed) => {
            Ok(Admitted::Handed(key.expect("BUG: a key handed to a request that does not live in its shard"), handed))
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> std::future::Future for WaitFor<'_, K> {
    type Output = CoreResult<Admitted<K>>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some((key, handed)) = self.take_handed() {
            return Poll::Ready(Ok(Admitted::Handed(key, handed)));
        }
        let (engine, request) = (self.engine, self.request);
        let delivery = match self.from.as_mut().expect("BUG: a wait polled after its outcome") {
            Source::Home { shard, cell, .. } => match engine.poll_home(*shard, *cell, request, cx) {
                Poll::Ready(delivery) => Ok(delivery),
                Poll::Pending => return Poll::Pending,
            },
            Source::Central(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(delivery) => delivery,
                Poll::Pending => return Poll::Pending,
            },
        };
        let key = match self.from.take() {
            Some(Source::Home { key, .. }) => Some(key),
            _ => None,
        };
        Poll::Ready(match delivery {
            Ok(delivery) => admitted(delivery, key),
            Err(_) => Err(tumbler_core::Error::Internal("the lock engine dropped a waiting request".into())),
        })
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Drop for WaitFor<'_, K> {
    #[inline]
    fn drop(&mut self) {
        if let Some(from) = self.from.take() {
            self.withdraw(from);
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> WaitFor<'_, K> {
    /// The key handed to this wait through its cell, with the hand-off, when that is its
    /// outcome: the wait is then over. Checked without the shard's lock, before a poll.
    #[inline]
    fn take_handed(&mut self) -> Option<(K, HandOff)> {
        let Some(Source::Home { shard, cell: Some(cell), .. }) = &self.from else {
            return None;
        };
        let handed = self.engine.handed_through(*shard, *cell, self.request)?;
        let Some(Source::Home { key, .. }) = self.from.take() else {
            unreachable!("BUG: a wait's source changed under it")
        };
        Some((key, handed))
    }

    /// Withdraws the request of a wait dropped before its outcome, which still learns it
    /// `from` there; releases a grant that raced with the drop.
    fn withdraw(&self, from: Source<K>) {
        let (delivery, key) = match from {
            Source::Home { cell, key, .. } => (self.engine.cancel(self.request, Some(&key), cell), Some(key)),
            Source::Central(mut rx) => {
                // Close first: from here on a grant either is already in the channel (we take
                // it and release it) or fails to send (the engine releases it).
                rx.close();
                match rx.try_recv() {
                    Ok(delivery) => (Some(delivery), None),
                    Err(_) => (self.engine.cancel(self.request, None, None), None),
                }
            }
        };
        match delivery.map(|delivery| admitted(delivery, key)) {
            Some(Ok(Admitted::Granted(grant))) => self.engine.release_grant(&grant),
            Some(Ok(Admitted::Handed(key, handed))) => self.engine.release_handed(&key, handed),
            _ => {}
        }
    }
}
