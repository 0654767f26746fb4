//! The server's key space: plain locks `(namespace, name)` and GS2 mutexes
//! `(namespace, user, property_id)`, kept apart so that the two never meet.

use std::fmt;
use std::sync::Arc;

use tumbler_core::{validate_name, validate_namespace, Error, Result};

/// A key of the server's lock table.
///
/// The two kinds are variants of one enum, so a GS2 mutex can never equal a plain lock,
/// whatever their strings. Ordered by namespace, then kind, then the remaining parts
/// (the order of paged listings).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKey {
    /// A plain lock: `/v1/namespaces/{namespace}/locks/{name}`.
    Lock {
        /// 1–128 characters of `[A-Za-z0-9._-]`.
        namespace: Arc<str>,
        /// 1–1024 bytes of UTF-8 without control characters.
        name: Arc<str>,
    },
    /// A GS2 mutex: `/v1/namespaces/{namespace}/users/{user}/mutexes/{property}`.
    Mutex {
        /// As for plain locks.
        namespace: Arc<str>,
        /// The user the mutex belongs to (validated as a key name).
        user: Arc<str>,
        /// GS2's `propertyId` (validated as a key name).
        property: Arc<str>,
    },
}

impl LockKey {
    /// A validated plain lock key.
    ///
    /// # Errors
    /// `invalid_argument` naming `namespace` or `key`.
    pub fn lock(namespace: &str, name: &str) -> Result<Self> {
        validate_namespace(namespace)?;
        validate_name(name)?;
        Ok(LockKey::Lock { namespace: namespace.into(), name: name.into() })
    }

    /// A validated GS2 mutex key.
    ///
    /// # Errors
    /// `invalid_argument` naming `namespace`, `user` or `property_id`.
    pub fn mutex(namespace: &str, user: &str, property: &str) -> Result<Self> {
        validate_namespace(namespace)?;
        validate_name(user).map_err(|e| rename(e, "user"))?;
        validate_name(property).map_err(|e| rename(e, "property_id"))?;
        Ok(LockKey::Mutex { namespace: namespace.into(), user: user.into(), property: property.into() })
    }

    /// The namespace the key belongs to.
    pub fn namespace(&self) -> &str {
        match self {
            LockKey::Lock { namespace, .. } | LockKey::Mutex { namespace, .. } => namespace,
        }
    }
}

/// `e` with its field renamed to `field`, when it is an `invalid_argument`: a value the
/// core checks under one name may reach the API under another.
pub(crate) fn rename(e: Error, field: &'static str) -> Error {
    match e {
        Error::InvalidArgument { reason, .. } => Error::InvalidArgument { field, reason },
        other => other,
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKey::Lock { namespace, name } => write!(f, "{namespace}/{name:?}"),
            LockKey::Mutex { namespace, user, property } => {
                write!(f, "{namespace}/users/{user:?}/mutexes/{property:?}")
            }
        }
    }
}
