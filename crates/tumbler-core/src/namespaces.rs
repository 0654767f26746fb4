//! How many keys each namespace has, counted across every shard of one table, for
//! [`Limits::max_keys_per_namespace`](crate::Limits::max_keys_per_namespace).
//!
//! A key is counted from the moment it is about to get state (a hold, a waiter or a
//! lock-delay) until its state is dropped. Shards decide single-key operations on their
//! own, under their own lock and without the coordinator, so the count cannot live in
//! either: it is shared by all of them and kept with atomics. A new key *reserves* its
//! place before it is created, and the reservation fails when the namespace is full, so
//! two shards racing for the last place cannot both get it. A key of a namespace far
//! below its bound costs one uncontended read lock and one atomic add.
//!
//! Only the counting is synchronized here; every decision stays with the shard or the
//! coordinator that asks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use smallvec::SmallVec;

use crate::config::Config;
use crate::error::{Error, Result};

/// The per-namespace bound of one table, shared by its coordinator and its shards: present
/// only when the table has the bound (and knows keys' namespaces), so that a table without
/// it counts nothing.
#[derive(Debug)]
pub(crate) struct KeyBudget<K> {
    counts: Arc<NamespaceCounts>,
    max: usize,
    namespace_of: fn(&K) -> &str,
}

impl<K> Clone for KeyBudget<K> {
    fn clone(&self) -> Self {
        KeyBudget { counts: self.counts.clone(), max: self.max, namespace_of: self.namespace_of }
    }
}

impl<K> KeyBudget<K> {
    /// The budget `config` asks for, if any.
    pub(crate) fn of(config: &Config<K>) -> Option<Self> {
        let (Some(max), Some(namespace_of)) = (config.limits.max_keys_per_namespace, config.namespace_of) else {
            return None;
        };
        Some(KeyBudget { counts: Arc::default(), max, namespace_of })
    }

    /// Reserves a place for each of `new_keys` (keys about to get state), all of them or
    /// none: `limit_exceeded` when a namespace would pass its bound.
    pub(crate) fn reserve<'k>(&self, new_keys: impl IntoIterator<Item = &'k K>) -> Result<()>
    where
        K: 'k,
    {
        let mut wanted: SmallVec<[(&str, usize); 2]> = SmallVec::new();
        for key in new_keys {
            let ns = (self.namespace_of)(key);
            match wanted.iter_mut().find(|(n, _)| *n == ns) {
                Some((_, count)) => *count += 1,
                None => wanted.push((ns, 1)),
            }
        }
        for (i, &(ns, n)) in wanted.iter().enumerate() {
            if !self.counts.reserve(ns, n, self.max) {
                for &(ns, n) in &wanted[..i] {
                    self.counts.release(ns, n);
                }
                return Err(Error::limit("keys_per_namespace", self.max));
            }
        }
        Ok(())
    }

    /// Counts `key` whatever the bound (state restored from a store).
    pub(crate) fn force(&self, key: &K) {
        self.counts.force((self.namespace_of)(key), 1);
    }

    /// Gives back the place of `key`, whose state was dropped.
    pub(crate) fn release(&self, key: &K) {
        self.counts.release((self.namespace_of)(key), 1);
    }
}

/// Keys per namespace, shared by a coordinator and its shards. A namespace with no key
/// takes no memory.
#[derive(Debug, Default)]
pub(crate) struct NamespaceCounts {
    counts: RwLock<HashMap<Box<str>, AtomicUsize>>,
}

impl NamespaceCounts {
    /// Counts `n` more keys of `namespace` if that leaves it at most `max`; otherwise
    /// counts nothing and answers `false`.
    pub(crate) fn reserve(&self, namespace: &str, n: usize, max: usize) -> bool {
        if n == 0 {
            return true;
        }
        let add = |count: &AtomicUsize| {
            count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_add(n).filter(|&c| c <= max)).is_ok()
        };
        {
            // The add happens under the read lock, so that `release` cannot remove the
            // entry between our finding it and our counting on it.
            let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get(namespace) {
                return add(count);
            }
        }
        let mut counts = self.counts.write().unwrap_or_else(|e| e.into_inner());
        add(counts.entry(namespace.into()).or_default())
    }

    /// Counts `n` more keys of `namespace` whatever its bound (for state restored from a
    /// store, which was within the bounds when it was written).
    pub(crate) fn force(&self, namespace: &str, n: usize) {
        self.reserve(namespace, n, usize::MAX);
    }

    /// Counts `n` keys of `namespace` fewer (their state was dropped, or a reservation was
    /// not used).
    pub(crate) fn release(&self, namespace: &str, n: usize) {
        if n == 0 {
            return;
        }
        {
            let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
            let Some(count) = counts.get(namespace) else {
                debug_assert!(false, "BUG: released a key of {namespace:?}, which has none");
                return;
            };
            let before = count.fetch_sub(n, Ordering::AcqRel);
            debug_assert!(before >= n, "BUG: released {n} keys of {namespace:?}, which had {before}");
            if before != n {
                return;
            }
        }
        // The namespace may be empty: forget it, unless a reservation came in meanwhile.
        let mut counts = self.counts.write().unwrap_or_else(|e| e.into_inner());
        if counts.get(namespace).is_some_and(|c| c.load(Ordering::Acquire) == 0) {
            counts.remove(namespace);
        }
    }

    /// The keys `namespace` has now.
    #[cfg(test)]
    pub(crate) fn count(&self, namespace: &str) -> usize {
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        counts.get(namespace).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// How many namespaces have keys now.
    #[cfg(test)]
    pub(crate) fn namespaces(&self) -> usize {
        self.counts.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn reservations_stop_at_the_bound_and_releases_make_room() {
        let counts = NamespaceCounts::default();
        assert!(counts.reserve("a", 2, 3));
        assert!(!counts.reserve("a", 2, 3), "2 more would make 4");
        assert_eq!(counts.count("a"), 2, "a refused reservation counts nothing");
        assert!(counts.reserve("a", 1, 3));
        assert!(!counts.reserve("a", 1, 3));
        assert!(counts.reserve("b", 3, 3), "each namespace has its own count");
        counts.release("a", 1);
        assert!(counts.reserve("a", 1, 3));
        counts.force("a", 5);
        assert_eq!(counts.count("a"), 8);
        counts.release("a", 8);
        counts.release("b", 3);
        assert_eq!((counts.count("a"), counts.namespaces()), (0, 0), "empty namespaces are forgotten");
        assert!(counts.reserve("a", 0, 0), "nothing to reserve always fits");
        assert_eq!(counts.namespaces(), 0);
    }

    #[test]
    fn racing_threads_never_pass_the_bound() {
        const MAX: usize = 50;
        let counts = Arc::new(NamespaceCounts::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    let mut held = 0;
                    for round in 0..20_000 {
                        if round % 3 != 2 && counts.reserve("ns", 1, MAX) {
                            held += 1;
                        } else if held > 0 {
                            counts.release("ns", 1);
                            held -= 1;
                        }
                        assert!(counts.count("ns") <= MAX);
                    }
                    held
                })
            })
            .collect();
        let held: usize = threads.into_iter().map(|t| t.join().expect("no panic")).sum();
        assert_eq!(counts.count("ns"), held, "every reservation is counted once");
        counts.release("ns", held);
        assert_eq!(counts.namespaces(), 0);
    }
}
