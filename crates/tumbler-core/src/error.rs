//! The one error type of lock operations, with the stable codes of the contract.

use std::fmt;

use crate::mode::Mode;
use crate::owner::OwnerId;

/// `Result` with the core's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One current holder of a key, as reported with `busy` and in status answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Who holds it.
    pub owner: OwnerId,
    /// In which mode.
    pub mode: Mode,
    /// How many times that owner has entered it in that mode.
    pub count: u32,
    /// The fencing token of the hold.
    pub fencing_token: u64,
}

/// Why a lock operation failed. Each variant maps to one stable code ([`Error::code`]);
/// callers match on the variant, wire formats carry the code.
///
/// A failed operation changes nothing: the table is exactly as it was before the call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is malformed; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field (`namespace`, `key`, `owner`, `limit`, `mode`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A try (no wait) found the key taken, or a queued earlier request ahead of it.
    #[error("busy: held by {}", describe_holders(.holders))]
    Busy {
        /// Who holds the key now (empty when only queued requests or a lock-delay block it).
        holders: Vec<Holder>,
    },
    /// The wait bound ran out before the lock could be granted.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// Granting would close a cycle of owners waiting on each other.
    #[error("deadlock: {}", describe_cycle(.cycle))]
    Deadlock {
        /// The owners of the cycle, starting with the one whose request failed; each waits
        /// for the next, and the last waits for the first.
        cycle: Vec<OwnerId>,
    },
    /// Nobody holds that key (or that hold is gone).
    #[error("not held")]
    NotHeld,
    /// The key is held, but not by this owner in this mode.
    #[error("not owner: the lock is held by someone else")]
    NotOwner,
    /// The session is unknown, ended or expired, or ended while the request waited.
    #[error("session expired")]
    SessionExpired,
    /// A configured bound would be exceeded.
    #[error("limit exceeded: {limit} (at most {max})")]
    LimitExceeded {
        /// Which bound.
        limit: &'static str,
        /// Its configured value.
        max: u64,
    },
    /// The caller did not prove who it is.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// The service cannot answer now; retrying later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code of this error, as listed in the contract.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::Busy { .. } => "busy",
            Error::Timeout => "timeout",
            Error::Deadlock { .. } => "deadlock",
            Error::NotHeld => "not_held",
            Error::NotOwner => "not_owner",
            Error::SessionExpired => "session_expired",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Unauthenticated => "unauthenticated",
            Error::PermissionDenied => "permission_denied",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field, reason: reason.into() }
    }

    /// Shorthand for [`Error::LimitExceeded`].
    pub(crate) fn limit(limit: &'static str, max: usize) -> Self {
        Error::LimitExceeded { limit, max: max as u64 }
    }
}

fn describe_holders(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return "nobody (earlier requests are queued or a lock-delay is running)".to_owned();
    }
    let parts: Vec<String> = holders.iter().map(|h| format!("{} ({} x{})", h.owner, h.mode, h.count)).collect();
    parts.join(", ")
}

fn describe_cycle(cycle: &[OwnerId]) -> String {
    let mut out = String::new();
    for owner in cycle {
        out.push_str(owner.as_str());
        out.push_str(" waits for ");
    }
    if let Some(first) = cycle.first() {
        out.push_str(first.as_str());
    }
    out
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} x{}, token {})", self.owner, self.mode, self.count, self.fencing_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_contract_code() {
        let owner = OwnerId::new("a").unwrap();
        let cases = [
            (Error::invalid("key", "x"), "invalid_argument"),
            (Error::Busy { holders: vec![] }, "busy"),
            (Error::Timeout, "timeout"),
            (Error::Deadlock { cycle: vec![owner] }, "deadlock"),
            (Error::NotHeld, "not_held"),
            (Error::NotOwner, "not_owner"),
            (Error::SessionExpired, "session_expired"),
            (Error::limit("waiters_per_key", 3), "limit_exceeded"),
            (Error::Unauthenticated, "unauthenticated"),
            (Error::PermissionDenied, "permission_denied"),
            (Error::Unavailable("x".into()), "unavailable"),
            (Error::Internal("x".into()), "internal"),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code);
        }
    }

    #[test]
    fn deadlock_message_names_the_cycle() {
        let a = OwnerId::new("a").unwrap();
        let b = OwnerId::new("b").unwrap();
        let msg = Error::Deadlock { cycle: vec![a, b] }.to_string();
        assert_eq!(msg, "deadlock: a waits for b waits for a");
    }
}
