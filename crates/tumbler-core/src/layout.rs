//! Which shard a key lives in.

use std::hash::{BuildHasher, Hash};

use foldhash::quality::RandomState;

/// Maps keys to shards. Cloned into every caller that locks a shard by key, so all of
/// them agree; built once per table with a random hasher seed, so keys chosen by remote
/// callers cannot be aimed at one shard.
#[derive(Clone, Debug)]
pub struct Layout {
    shards: usize,
    hasher: RandomState,
}

impl Layout {
    /// The most shards a table has: a request id names its shard in 16 bits
    /// ([`crate::RequestId::home`]). More are clamped to this.
    pub const MAX_SHARDS: usize = (1 << crate::RequestId::HOME_BITS) - 1;

    /// A layout over `shards` shards (at least 1, at most [`Layout::MAX_SHARDS`]).
    pub fn new(shards: usize) -> Self {
        Layout { shards: shards.clamp(1, Self::MAX_SHARDS), hasher: RandomState::default() }
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard `key` lives in.
    pub fn shard_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        if self.shards == 1 {
            return 0;
        }
        // Multiply-shift maps the hash onto the shard range without a division.
        ((u128::from(self.hasher.hash_one(key)) * self.shards as u128) >> 64) as usize
    }
}
