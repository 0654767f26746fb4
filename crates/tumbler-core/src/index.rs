//! An index from ids to the few items each has (an owner's holds in a shard, a session's,
//! an owner's waits), cheap for ids whose items come and go.

use std::hash::Hash;

use smallvec::{Array, SmallVec};

use crate::hash::Map;

/// Below this many empty entries an index never sweeps.
const SWEEP_FLOOR: usize = 64;

/// What an [`Index`] keeps for each id: one list of items, or several side by side.
pub(crate) trait Items: Default {
    /// Whether there is no item at all.
    fn is_empty(&self) -> bool;
}

impl<A: Array> Items for SmallVec<A> {
    fn is_empty(&self) -> bool {
        SmallVec::is_empty(self)
    }
}

/// Maps ids to the few items each has.
///
/// An id whose items are all gone keeps its entry: the owner of a hot key gives it up and
/// takes it again many times a second, and removing and re-inserting its entry each time
/// would cost two map operations and a clone and a drop of the id (an atomic reference
/// count) on every hand-off. Empty entries are swept away together once they outnumber the
/// others (and [`SWEEP_FLOOR`]), so they never take much more room than the live ones, and
/// the sweep's cost is spread over the removals that made them.
pub(crate) struct Index<I, V> {
    map: Map<I, V>,
    /// How many entries of `map` have no item.
    empty: usize,
}

impl<I: std::fmt::Debug, V: Items + std::fmt::Debug> std::fmt::Debug for Index<I, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.map.iter().filter(|(_, items)| !items.is_empty())).finish()
    }
}

impl<I, V> Default for Index<I, V> {
    fn default() -> Self {
        Index { map: Map::default(), empty: 0 }
    }
}

impl<I: Hash + Eq + Clone, V: Items> Index<I, V> {
    /// Changes the items of `id` with `change`, in one lookup (an id without an entry
    /// starts with none).
    pub fn change<R>(&mut self, id: &I, change: impl FnOnce(&mut V) -> R) -> R {
        match self.map.get_mut(id) {
            Some(items) => {
                let was_empty = items.is_empty();
                let answer = change(items);
                let is_empty = items.is_empty();
                self.count_empty(was_empty, is_empty);
                answer
            }
            None => {
                let mut items = V::default();
                let answer = change(&mut items);
                if !items.is_empty() {
                    self.map.insert(id.clone(), items);
                }
                answer
            }
        }
    }

    /// The items of `id`, when it has an entry.
    pub fn entry(&self, id: &I) -> Option<&V> {
        self.map.get(id)
    }

    /// The items of every id (empty entries among them).
    pub fn entries(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    fn count_empty(&mut self, was_empty: bool, is_empty: bool) {
        match (was_empty, is_empty) {
            (true, false) => self.empty -= 1,
            (false, true) => {
                self.empty += 1;
                if self.empty > SWEEP_FLOOR && self.empty > self.map.len() - self.empty {
                    self.map.retain(|_, items| !items.is_empty());
                    self.empty = 0;
                }
            }
            _ => {}
        }
    }
}

impl<I: Hash + Eq + Clone, A: Array> Index<I, SmallVec<A>> {
    /// Adds `item` to the list of `id`.
    pub fn push(&mut self, id: &I, item: A::Item) {
        self.change(id, |items| items.push(item));
    }

    /// Removes the first item of `id` that `matches` (the order of the others may change).
    pub fn remove(&mut self, id: &I, matches: impl Fn(&A::Item) -> bool) {
        self.change(id, |items| remove_first(items, matches));
    }

    /// The items of `id` (none when it has no entry).
    pub fn get(&self, id: &I) -> &[A::Item] {
        self.entry(id).map_or(&[], |items| items.as_slice())
    }

    /// How many entries the map keeps, empty ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Removes the first item of `items` that `matches` (the order of the others may change).
pub(crate) fn remove_first<A: Array>(items: &mut SmallVec<A>, matches: impl Fn(&A::Item) -> bool) {
    if let Some(pos) = items.iter().position(matches) {
        items.swap_remove(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_id_has_no_items_and_comes_back_with_new_ones() {
        let mut index: Index<u32, SmallVec<[u8; 2]>> = Index::default();
        index.push(&1, 10);
        index.push(&1, 11);
        index.remove(&1, |x| *x == 10);
        assert_eq!(index.get(&1), &[11]);
        index.remove(&1, |x| *x == 99);
        assert_eq!(index.get(&1), &[11], "removing what is not there changes nothing");
        index.remove(&1, |x| *x == 11);
        assert!(index.get(&1).is_empty());
        assert_eq!(index.get(&1), &[] as &[u8]);
        assert_eq!(index.entries().map(|items| items.len()).sum::<usize>(), 0);
        index.push(&1, 12);
        assert_eq!(index.get(&1), &[12]);
        assert!(!index.get(&1).is_empty());
        assert!(index.get(&2).is_empty());
    }

    #[test]
    fn empty_entries_never_outnumber_live_ones_past_the_floor() {
        let mut index: Index<u32, SmallVec<[u32; 1]>> = Index::default();
        for live in 0..50 {
            index.push(&live, live);
        }
        for id in 1000..11_000 {
            index.push(&id, id);
            index.remove(&id, |x| *x == id);
            assert!(index.len() <= 2 * 50 + SWEEP_FLOOR + 1, "{} entries at id {id}", index.len());
        }
        assert_eq!(index.entries().map(|items| items.len()).sum::<usize>(), 50, "the live ids keep their items");
        for live in 0..50 {
            assert_eq!(index.get(&live), &[live]);
        }
    }
}
