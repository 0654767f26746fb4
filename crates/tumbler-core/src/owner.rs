//! Owners: the identity that re-enters a lock.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// The longest owner id accepted, in characters.
pub const MAX_OWNER_CHARS: usize = 256;

/// Who holds or waits for a lock: GS2's `transactionId`, an Elixir owner process, a
/// PostgreSQL session. A request by the same owner for a key it holds in the same mode
/// re-enters that hold and increments its count.
///
/// Cheap to clone (a shared string). Always 1 to 256 characters. Equality and order are
/// those of the text.
#[derive(Clone)]
pub struct OwnerId {
    text: Arc<str>,
    /// The text's hash, computed once: every lock operation looks owners up in the owner
    /// index and compares them with the owners of holds and queue entries, and two
    /// different owners then differ here without their texts being compared.
    hash: u64,
}

/// The hasher of owner ids, seeded at random once per process (the table's maps are each
/// seeded at random too), so that owner ids whose hashes collide cannot be chosen in
/// advance to slow the owner index down.
fn owner_hasher() -> &'static foldhash::quality::RandomState {
    static HASHER: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    HASHER.get_or_init(foldhash::quality::RandomState::default)
}

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
        Ok(OwnerId { text: Arc::from(id), hash: owner_hasher().hash_one(id) })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether two ids are the same: the same allocation (most comparisons in the table
    /// are between clones of one id), or the same hash and text.
    pub(crate) fn same(&self, other: &OwnerId) -> bool {
        Arc::ptr_eq(&self.text, &other.text) || (self.hash == other.hash && self.text == other.text)
    }
}

impl PartialEq for OwnerId {
    fn eq(&self, other: &OwnerId) -> bool {
        self.same(other)
    }
}

impl Eq for OwnerId {}

impl Hash for OwnerId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for OwnerId {
    fn partial_cmp(&self, other: &OwnerId) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OwnerId {
    fn cmp(&self, other: &OwnerId) -> Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

    #[test]
    fn ids_with_the_same_text_are_equal_hash_alike_and_order_by_text() {
        let (a, b, c) =
            (OwnerId::new("mem-1").unwrap(), OwnerId::new("mem-1").unwrap(), OwnerId::new("mem-2").unwrap());
        let hash = |o: &OwnerId| foldhash::fast::FixedState::with_seed(7).hash_one(o);
        assert!(a == b && a.same(&b) && hash(&a) == hash(&b));
        assert!(a != c && !a.same(&c));
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert!(a < c && "mem-10" < "mem-2" && OwnerId::new("mem-10").unwrap() < c);
    }
}
