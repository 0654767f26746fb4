//! Keys of the server's key space: `(namespace, name)`, validated.
//!
//! The lock table itself accepts any `Hash + Eq + Clone` key (in-process users lock on
//! their own values); [`Key`] is the validated string form every remote caller uses.

use std::fmt;

use crate::error::{Error, Result};

/// The longest namespace, in characters.
pub const MAX_NAMESPACE_CHARS: usize = 128;
/// The longest key name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 1024;

/// A validated `(namespace, name)` key.
///
/// Namespace: 1–128 characters of `[A-Za-z0-9._-]`. Name: 1–1024 bytes of UTF-8 without
/// control characters. Ordered by namespace, then name (the order of paged listings).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    namespace: String,
    name: String,
}

impl Key {
    /// Validates both parts and builds the key.
    ///
    /// # Errors
    /// `invalid_argument` naming `namespace` or `key` (the name) when either is malformed.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        let namespace = namespace.into();
        let name = name.into();
        validate_namespace(&namespace)?;
        validate_name(&name)?;
        Ok(Key { namespace, name })
    }

    /// The namespace part.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.namespace, self.name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Checks a namespace: 1–128 characters of `[A-Za-z0-9._-]`.
///
/// # Errors
/// `invalid_argument` naming `namespace`, saying what is wrong.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    if namespace.is_empty() {
        return Err(Error::invalid("namespace", "must not be empty"));
    }
    if namespace.len() > MAX_NAMESPACE_CHARS {
        return Err(Error::invalid(
            "namespace",
            format!("must be at most {MAX_NAMESPACE_CHARS} characters, got {}", namespace.chars().count()),
        ));
    }
    if let Some(bad) = namespace.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(Error::invalid("namespace", format!("may only hold A-Z a-z 0-9 . _ -, found {bad:?}")));
    }
    Ok(())
}

/// Checks a key name: 1–1024 bytes of UTF-8 without control characters.
///
/// # Errors
/// `invalid_argument` naming `key`, saying what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("key", "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid("key", format!("must be at most {MAX_NAME_BYTES} bytes, got {}", name.len())));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("key", "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(err: Error) -> &'static str {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected invalid_argument, got {other:?}"),
        }
    }

    #[test]
    fn namespace_accepts_only_its_alphabet_and_length() {
        assert!(validate_namespace("game-1.prod_eu").is_ok());
        assert!(validate_namespace(&"n".repeat(128)).is_ok());
        for bad in ["", "a b", "a/b", "ü", &"n".repeat(129)] {
            assert_eq!(field(validate_namespace(bad).unwrap_err()), "namespace", "{bad:?}");
        }
    }

    #[test]
    fn name_is_bounded_in_bytes_and_free_of_control_characters() {
        assert!(validate_name("user:42/inventory ✓").is_ok());
        assert!(validate_name(&"k".repeat(1024)).is_ok());
        for bad in ["", "a\u{0}b", "tab\there", &"k".repeat(1025)] {
            assert_eq!(field(Key::new("ns", bad).unwrap_err()), "key", "{bad:?}");
        }
        // 512 two-byte characters are 1024 bytes: allowed; one more is not.
        assert!(validate_name(&"é".repeat(512)).is_ok());
        assert!(validate_name(&"é".repeat(513)).is_err());
    }

    #[test]
    fn keys_order_by_namespace_then_name() {
        let a = Key::new("a", "z").unwrap();
        let b = Key::new("b", "a").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "a/z");
    }
}
