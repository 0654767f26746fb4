//! The library's error: the lock errors of the contract, plus what only a client sees.

use tumbler_core::{Holder, LostReason, OwnerId};

/// `Result` with the library's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a lock operation failed.
///
/// The first variants are the contract's errors, one per stable code ([`Error::code`]),
/// whichever backend raised them; the remote backend maps the server's codes back to them.
/// The last three exist only on the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument is malformed; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A try found the lock taken (or a queued earlier request ahead of it).
    #[error("busy: the lock is held")]
    Busy {
        /// The current holders, as far as the backend can tell.
        holders: Vec<Holder>,
    },
    /// The wait bound ran out.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// Waiting would have closed a cycle of owners waiting on each other.
    #[error("deadlock: {}", cycle.iter().map(OwnerId::as_str).collect::<Vec<_>>().join(" -> "))]
    Deadlock {
        /// The owners of the cycle, starting with the one whose request failed.
        cycle: Vec<OwnerId>,
    },
    /// Nobody holds that lock (or this guard's hold is gone).
    #[error("not held")]
    NotHeld,
    /// Someone else holds the lock.
    #[error("not owner")]
    NotOwner,
    /// The session (or owner) ended, or ended while the request waited.
    #[error("session expired")]
    SessionExpired,
    /// A configured bound would be exceeded.
    #[error("limit exceeded: {limit} (at most {max})")]
    LimitExceeded {
        /// Which bound.
        limit: String,
        /// Its value.
        max: u64,
    },
    /// The caller did not prove who it is.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// The service cannot answer now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// The hold ended without this guard releasing it; work done under it since then was
    /// not protected.
    #[error("the lock was lost: {}", reason.name())]
    Lost {
        /// Why it ended.
        reason: LostReason,
    },
    /// The backend cannot do this.
    #[error("{operation} is not supported by the {backend} backend")]
    NotSupported {
        /// What was asked.
        operation: &'static str,
        /// Which backend.
        backend: &'static str,
    },
    /// The backend failed underneath (database, network).
    #[error("{backend} backend error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The stable code of the contract closest to this error: the contract's own code for
    /// its variants; `not_held` for a lost hold, `invalid_argument` for an unsupported
    /// operation and `unavailable` for a backend failure.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } | Error::NotSupported { .. } => "invalid_argument",
            Error::Busy { .. } => "busy",
            Error::Timeout => "timeout",
            Error::Deadlock { .. } => "deadlock",
            Error::NotHeld | Error::Lost { .. } => "not_held",
            Error::NotOwner => "not_owner",
            Error::SessionExpired => "session_expired",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Unauthenticated => "unauthenticated",
            Error::PermissionDenied => "permission_denied",
            Error::Unavailable(_) | Error::Backend { .. } => "unavailable",
            Error::Internal(_) => "internal",
        }
    }
}

impl From<tumbler_core::Error> for Error {
    fn from(e: tumbler_core::Error) -> Self {
        use tumbler_core::Error as C;
        match e {
            C::InvalidArgument { field, reason } => Error::InvalidArgument { field, reason },
            C::Busy { holders } => Error::Busy { holders },
            C::Timeout => Error::Timeout,
            C::Deadlock { cycle } => Error::Deadlock { cycle },
            C::NotHeld => Error::NotHeld,
            C::NotOwner => Error::NotOwner,
            C::SessionExpired => Error::SessionExpired,
            C::LimitExceeded { limit, max } => Error::LimitExceeded { limit: limit.to_owned(), max },
            C::Unauthenticated => Error::Unauthenticated,
            C::PermissionDenied => Error::PermissionDenied,
            C::Unavailable(m) => Error::Unavailable(m),
            C::Internal(m) => Error::Internal(m),
            other => Error::Internal(other.to_string()),
        }
    }
}
