//! What an operation asks its caller to do afterwards.

use crate::error::Error;
use crate::event::Event;
use crate::mode::Mode;
use crate::owner::OwnerId;
use crate::request::{Grant, RequestId};
use crate::time::Instant;

/// The outcome of a waiting request, to deliver to whoever waits for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wake<K> {
    /// The request that stopped waiting. (Its owner is in the grant; a caller that needs
    /// it for a failure knows it from the request.)
    pub request: RequestId,
    /// The grant, or why it failed (`timeout`, `deadlock`, `session_expired`, ...).
    pub outcome: Result<Grant<K>, Error>,
}

/// Why a hold ended without its owner releasing it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// Its TTL ran out.
    Expired,
    /// Its session expired or was closed.
    SessionEnded,
    /// Its owner ended (its owner handle was dropped, its process died).
    OwnerEnded,
    /// Its owner released everything at once with `goodbye`.
    Goodbye,
    /// An administrator released it by force.
    ForceReleased,
    /// It was handed to another owner.
    Transferred,
    /// The connection or session that carried it was lost (a backend outside the table,
    /// such as a PostgreSQL connection or a server session lease, reports this).
    ConnectionLost,
}

impl LostReason {
    /// The stable wire name of the reason.
    pub fn name(self) -> &'static str {
        match self {
            LostReason::Expired => "expired",
            LostReason::SessionEnded => "session_ended",
            LostReason::OwnerEnded => "owner_ended",
            LostReason::Goodbye => "goodbye",
            LostReason::ForceReleased => "force_released",
            LostReason::Transferred => "transferred",
            LostReason::ConnectionLost => "connection_lost",
        }
    }
}

/// A hold that ended without its owner asking: its guards must be told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost<K> {
    /// The key.
    pub key: K,
    /// Whose hold it was.
    pub owner: OwnerId,
    /// Its mode.
    pub mode: Mode,
    /// Its fencing token (identifies the hold, since a new hold gets a new token).
    pub fencing_token: u64,
    /// Why it ended.
    pub reason: LostReason,
}

/// Everything an operation asks the caller to carry out once the table is unlocked:
/// wake these waiters, tell these guards their hold is lost, publish these events, and
/// call back by this deadline.
///
/// Operations append; the caller drains and reuses the buffers.
#[derive(Debug)]
pub struct Effects<K> {
    /// Waiting requests that were granted or failed; all of them, but for the waiter that
    /// [`crate::Shard::try_release`] hands its key to, which it answers in
    /// [`crate::Released::handed`] instead.
    pub wakes: Vec<Wake<K>>,
    /// Holds that ended without a release by their owner.
    pub lost: Vec<Lost<K>>,
    /// Changes, unstamped (revision 0), when the table records events.
    pub events: Vec<Event<K>>,
    /// The earliest deadline (TTL, wait bound, lock-delay, session lease) this operation
    /// added, so a caller sleeping until a later deadline knows to wake earlier.
    pub new_deadline: Option<Instant>,
}

impl<K> Default for Effects<K> {
    fn default() -> Self {
        Effects { wakes: Vec::new(), lost: Vec::new(), events: Vec::new(), new_deadline: None }
    }
}

impl<K> Effects<K> {
    /// An empty set of effects.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.wakes.is_empty() && self.lost.is_empty() && self.events.is_empty() && self.new_deadline.is_none()
    }

    /// Empties every buffer, keeping their capacity.
    pub fn clear(&mut self) {
        self.wakes.clear();
        self.lost.clear();
        self.events.clear();
        self.new_deadline = None;
    }

    pub(crate) fn deadline(&mut self, at: Instant) {
        self.new_deadline = Some(self.new_deadline.map_or(at, |d| d.min(at)));
    }
}
