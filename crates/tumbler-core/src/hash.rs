//! The hash maps of the table.
//!
//! Every lock operation does a handful of map look-ups (key state, owner index, queued
//! requests), so the hasher is on the hot path: foldhash (the default of hashbrown, on
//! which std's map is built) is several times faster than std's SipHash on short keys,
//! and its per-map random seed keeps colliding keys from being chosen in advance.

/// A hash map with a fast, randomly seeded hasher.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// A hash set with the same hasher as [`Map`].
pub(crate) type Set<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
