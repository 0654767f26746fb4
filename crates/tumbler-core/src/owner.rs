//! Owners: the identity that re-enters a lock.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The longest owner id accepted, in characters.
pub const MAX_OWNER_CHARS: usize = 256;

/// Who holds or waits for a lock: GS2's `transactionId`, an Elixir owner process, a
/// PostgreSQL session. A request by the same owner for a key it holds in the same mode
/// re-enters that hold and increments its count.
///
/// Cheap to clone (a shared string). Always 1 to 256 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(Arc<str>);

impl OwnerId {
    /// Validates and wraps an owner id.
    ///
    /// # Errors
    /// `invalid_argument` naming `owner` when it is empty, longer than 256 characters, or
    /// contains control characters.
    pub fn new(id: impl AsRef<str>) -> Result<Self> {
        let id = id.as_ref();
        let chars = id.chars().count();
        if chars == 0 {
            return Err(Error::invalid("owner", "must not be empty"));
        }
        if chars > MAX_OWNER_CHARS {
            return Err(Error::invalid("owner", format!("must be at most {MAX_OWNER_CHARS} characters, got {chars}")));
        }
        if id.chars().any(char::is_control) {
            return Err(Error::invalid("owner", "must not contain control characters"));
        }
        Ok(OwnerId(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether two ids are the same allocation or the same text (pointer check first,
    /// because most comparisons in the table are between clones of one id).
    pub(crate) fn same(&self, other: &OwnerId) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for OwnerId {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        OwnerId::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_length_bounds_are_enforced_in_characters() {
        assert!(OwnerId::new("").is_err());
        assert!(OwnerId::new("é".repeat(256)).is_ok());
        let err = OwnerId::new("x".repeat(257)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field: "owner", .. }));
        assert!(OwnerId::new("a\nb").is_err());
    }
}
