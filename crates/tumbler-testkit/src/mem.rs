//! The in-process backend as a [`Backend`] under test.

use tumbler::mem::{MemLocker, MemLocks};
use tumbler::Capabilities;

use crate::backend::Backend;

/// The in-process backend under test: one [`MemLocks`] table with `String` keys; each
/// [`Backend::owner`] is a new [`MemLocks::owner`].
#[derive(Clone, Default)]
pub struct MemBackend {
    locks: MemLocks<String>,
}

impl MemBackend {
    /// A fresh, empty lock table.
    pub fn new() -> Self {
        MemBackend { locks: MemLocks::new() }
    }

    /// The table underneath, for checks beyond the `Locker` trait.
    pub fn locks(&self) -> &MemLocks<String> {
        &self.locks
    }
}

impl Backend for MemBackend {
    type Locker = MemLocker<String>;

    async fn owner(&self) -> MemLocker<String> {
        self.locks.owner()
    }

    fn key(&self, name: &str) -> String {
        name.to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full("mem")
    }
}
