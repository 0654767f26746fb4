//! Sessions: liveness scopes whose end releases every hold and wait bound to them.

use std::fmt;
use std::time::Duration;

use crate::time::Instant;

/// Identifies a session of one lock table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A session as the table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// The lease: each keep-alive moves the expiry to `now + ttl`.
    pub ttl: Duration,
    /// When it expires unless kept alive.
    pub expires_at: Instant,
    /// How many holds belong to it.
    pub holds: usize,
}
