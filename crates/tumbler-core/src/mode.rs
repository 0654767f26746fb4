//! Lock modes and which of them may be held together.

use std::fmt;

use crate::error::{Error, Result};

/// How a lock is held.
///
/// `Shared` holds coexist with each other; `Exclusive` coexists with nothing held by
/// another owner; `Semaphore { limit }` admits at most `limit` owners at once, and every
/// holder and waiter of a key must name the same limit. Different modes on one key never
/// coexist across owners (an owner's own holds never conflict with its own requests).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One owner at a time (a write lock).
    Exclusive,
    /// Any number of owners at once (a read lock).
    Shared,
    /// At most `limit` owners at once.
    Semaphore {
        /// How many owners may hold the key at once; at least 1.
        limit: u32,
    },
}

impl Mode {
    /// The stable lower-case name of the mode, as used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
            Mode::Semaphore { .. } => "semaphore",
        }
    }

    /// The semaphore limit, if this is a semaphore.
    pub fn limit(self) -> Option<u32> {
        match self {
            Mode::Semaphore { limit } => Some(limit),
            _ => None,
        }
    }

    /// Checks that the mode is well formed (a semaphore admits at least one owner).
    ///
    /// # Errors
    /// `invalid_argument` naming `limit` for a semaphore with a limit of zero.
    pub fn validate(self) -> Result<()> {
        match self {
            Mode::Semaphore { limit: 0 } => Err(Error::invalid("limit", "a semaphore limit must be at least 1")),
            _ => Ok(()),
        }
    }

    /// Whether a hold or earlier request in mode `self` by one owner rules out a request in
    /// mode `other` by a different owner, before semaphore counting.
    pub(crate) fn conflicts_with(self, other: Mode) -> bool {
        !matches!((self, other), (Mode::Shared, Mode::Shared) | (Mode::Semaphore { .. }, Mode::Semaphore { .. }))
    }

    /// Whether two modes are the same kind (semaphores compare by kind, not limit).
    pub(crate) fn same_kind(self, other: Mode) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Semaphore { limit } => write!(f, "semaphore({limit})"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shared_with_shared_and_semaphore_with_semaphore_coexist() {
        let s = Mode::Shared;
        let x = Mode::Exclusive;
        let m = Mode::Semaphore { limit: 2 };
        assert!(!s.conflicts_with(s));
        assert!(!m.conflicts_with(m));
        for (a, b) in [(x, x), (x, s), (s, x), (x, m), (m, x), (s, m), (m, s)] {
            assert!(a.conflicts_with(b), "{a} vs {b}");
        }
    }

    #[test]
    fn zero_limit_semaphore_is_invalid() {
        assert_eq!(Mode::Semaphore { limit: 0 }.validate().unwrap_err().code(), "invalid_argument");
        assert!(Mode::Semaphore { limit: 1 }.validate().is_ok());
    }
}
