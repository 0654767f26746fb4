//! What a release decided in its shard alone: the levels left, and the waiter the key went
//! to when the release handed it on ([`crate::Shard::try_release`]).

use smallvec::SmallVec;

use crate::mode::Mode;
use crate::owner::OwnerId;
use crate::request::{Grant, Granted, RequestId};
use crate::time::Instant;

/// The answer of a release its shard carried out alone.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The levels of the hold left to its owner (0: the hold ended).
    pub left: u32,
    /// The waiter the key was handed to, when the hold ended with a waiter that the shard
    /// could grant alone. It is granted already; only its waiter is left to tell.
    pub handed: Option<HandOff>,
}

/// A key handed by its only holder straight to its first waiter: a request for that key
/// alone, with no session or request id ([`RequestId::home`]), granted a new hold of
/// count 1 in the mode it asked for.
///
/// It says only what the waiter does not know already, so that a hot key's hand-off builds
/// no [`Grant`] under the shard's lock and clones no id: the waiter asked for its key, as
/// its owner, in its mode, and makes its grant from those with [`HandOff::grant`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HandOff {
    /// The request that was granted.
    pub request: RequestId,
    /// The new hold's fencing token.
    pub fencing_token: u64,
    /// When the new hold expires, when the request asked for a TTL (counted from the
    /// hand-off).
    pub expires_at: Option<Instant>,
}

impl HandOff {
    /// The grant of this hand-off to a request that asked for `key` as `owner` in `mode`:
    /// exactly the [`Grant`] a grant through the coordinator would have answered.
    pub fn grant<K>(self, key: K, owner: OwnerId, mode: Mode) -> Grant<K> {
        let granted = Granted { key, count: 1, fencing_token: self.fencing_token, expires_at: self.expires_at };
        Grant { owner, mode, session: None, holds: SmallVec::from_buf([granted]), retried: false }
    }
}
