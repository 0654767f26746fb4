//! Advisory-lock keys: the `bigint` and `(int, int)` forms PostgreSQL offers, and stable
//! hashing of strings and namespaces onto them.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// An advisory-lock key, in one of PostgreSQL's two key spaces.
///
/// `Id(i64)` is `pg_advisory_lock(bigint)`; `Pair(a, b)` is `pg_advisory_lock(int, int)`,
/// used for `(namespace, id)`. The two spaces never overlap in PostgreSQL, so a `Pair`
/// never meets an `Id`, whatever their numbers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PgKey {
    /// The single-`bigint` form.
    Id(i64),
    /// The two-`int` form.
    Pair(i32, i32),
}

impl PgKey {
    /// The key for a string, through [`hash_key`].
    pub fn hashed(name: &str) -> Self {
        PgKey::Id(hash_key(name))
    }

    /// The `(classid, objid, objsubid)` under which `pg_locks` lists this key.
    pub(crate) fn pg_locks_columns(self) -> (i64, i64, i16) {
        match self {
            PgKey::Id(id) => {
                let bits = id as u64;
                (i64::from((bits >> 32) as u32), i64::from(bits as u32), 1)
            }
            PgKey::Pair(a, b) => (i64::from(a as u32), i64::from(b as u32), 2),
        }
    }
}

impl fmt::Display for PgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgKey::Id(id) => write!(f, "{id}"),
            PgKey::Pair(a, b) => write!(f, "({a}, {b})"),
        }
    }
}

impl From<i64> for PgKey {
    fn from(id: i64) -> Self {
        PgKey::Id(id)
    }
}

impl From<(i32, i32)> for PgKey {
    fn from((a, b): (i32, i32)) -> Self {
        PgKey::Pair(a, b)
    }
}

impl From<&str> for PgKey {
    fn from(name: &str) -> Self {
        PgKey::hashed(name)
    }
}

impl From<String> for PgKey {
    fn from(name: String) -> Self {
        PgKey::hashed(&name)
    }
}

/// Hashes a string onto the `bigint` key space: the first 8 bytes of the SHA-256 of its
/// UTF-8 bytes, read big-endian as a signed 64-bit integer.
///
/// The function is fixed forever (tests pin it with golden vectors) and can be computed
/// in SQL too, for looking a lock up in `pg_locks` by hand:
///
/// ```sql
/// SELECT ('x' || left(encode(sha256(convert_to('orders:42', 'UTF8')), 'hex'), 16))::bit(64)::bigint;
/// ```
///
/// # Collisions
///
/// Two different strings hashing to one key would share a lock: they would exclude each
/// other, never break exclusion. With a 64-bit hash the chance is about `n² / 2⁶⁵` for
/// `n` distinct names in use at once — one in 10⁸ for 10⁶ names. Where even a rare extra
/// wait is unacceptable, use integer keys you allocate yourself (`PgKey::Id` from your
/// primary keys, or `(namespace, id)` pairs).
pub fn hash_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("BUG: SHA-256 has 32 bytes"))
}

/// Hashes a namespace name onto the `int` space of the two-key form: the first 4 bytes of
/// its SHA-256, big-endian, signed.
pub fn hash_namespace(name: &str) -> i32 {
    let digest = Sha256::digest(name.as_bytes());
    i32::from_be_bytes(digest[..4].try_into().expect("BUG: SHA-256 has 32 bytes"))
}

/// A registry of namespaces for the two-key form, like GameServer.Lock's
/// `lobby = 1, group = 2, party = 3`: names you register get the numbers you choose;
/// other names are hashed with [`hash_namespace`] unless the registry is strict.
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    ids: HashMap<String, i32>,
    strict: bool,
}

impl Namespaces {
    /// An empty registry that hashes unknown names.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry that refuses unknown names.
    pub fn strict() -> Self {
        Namespaces { strict: true, ..Self::default() }
    }

    /// Registers `name` as `id`.
    ///
    /// # Errors
    /// `invalid_argument` when the name or the id is already registered to another.
    pub fn register(mut self, name: &str, id: i32) -> Result<Self> {
        if let Some(existing) = self.ids.get(name) {
            if *existing != id {
                return Err(Error::InvalidArgument {
                    field: "namespace",
                    reason: format!("{name:?} is already registered as {existing}"),
                });
            }
        }
        if let Some((other, _)) = self.ids.iter().find(|(n, i)| **i == id && n.as_str() != name) {
            return Err(Error::InvalidArgument {
                field: "namespace",
                reason: format!("id {id} is already registered to {other:?}"),
            });
        }
        self.ids.insert(name.to_owned(), id);
        Ok(self)
    }

    /// The number of a namespace.
    ///
    /// # Errors
    /// `invalid_argument` for an unregistered name in a strict registry.
    pub fn id(&self, name: &str) -> Result<i32> {
        match self.ids.get(name) {
            Some(id) => Ok(*id),
            None if self.strict => Err(Error::InvalidArgument {
                field: "namespace",
                reason: format!("{name:?} is not a registered namespace"),
            }),
            None => Ok(hash_namespace(name)),
        }
    }

    /// The two-key lock `(namespace, id)`.
    ///
    /// # Errors
    /// As [`Namespaces::id`].
    pub fn key(&self, namespace: &str, id: i32) -> Result<PgKey> {
        Ok(PgKey::Pair(self.id(namespace)?, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: these values must never change, or locks taken by old and new
    /// versions of an application would stop excluding each other.
    #[test]
    fn string_hash_matches_its_golden_vectors() {
        // Computed independently (Python's hashlib, and the SQL in `hash_key`'s docs).
        assert_eq!(hash_key(""), -2_039_914_840_885_289_964);
        assert_eq!(hash_key("a"), -3_848_465_438_864_589_366);
        assert_eq!(hash_key("orders:42"), -8_476_019_149_258_318_077);
        assert_eq!(hash_key("tumbler"), 9_191_583_478_867_954_960);
        assert_eq!(hash_key("a:b"), 7_458_984_759_985_081_548);
        assert_eq!(hash_namespace("lobby"), 1_264_435_318);
    }

    #[test]
    fn pg_locks_columns_split_a_bigint_into_high_and_low_words() {
        assert_eq!(PgKey::Id(1).pg_locks_columns(), (0, 1, 1));
        assert_eq!(PgKey::Id(-1).pg_locks_columns(), (0xFFFF_FFFF, 0xFFFF_FFFF, 1));
        assert_eq!(PgKey::Id(1 << 32).pg_locks_columns(), (1, 0, 1));
        assert_eq!(PgKey::Pair(-1, 7).pg_locks_columns(), (0xFFFF_FFFF, 7, 2));
    }

    #[test]
    fn registered_namespaces_keep_their_numbers_and_strict_refuses_others() {
        let ns = Namespaces::new().register("lobby", 1).unwrap().register("group", 2).unwrap();
        assert_eq!(ns.key("lobby", 9).unwrap(), PgKey::Pair(1, 9));
        assert_eq!(ns.id("party").unwrap(), hash_namespace("party"));
        assert!(ns.clone().register("party", 1).is_err());
        assert!(ns.clone().register("lobby", 3).is_err());
        let strict = Namespaces::strict().register("lobby", 1).unwrap();
        assert!(strict.id("party").is_err());
    }
}
