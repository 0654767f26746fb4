//! An index from ids to the few items each has (an owner's holds in a shard, a session's,
//! an owner's waits), cheap for ids whose items come and go.

use std::hash::Hash;

use smallvec::{Array, SmallVec};

use crate::hash::Map;

/// Below this many empty entries an index never sweeps.
const SWEEP_FLOOR: usize = 64;

/// Maps ids to small lists of items.
///
/// An id whose list empties keeps its entry: the owner of a hot key gives it up and takes
/// it again many times a second, and removing and re-inserting its entry each time would
/// cost two map operations and a clone and a drop of the id (an atomic reference count)
/// on every hand-off. Empty entries are swept away together once they outnumber the others
/// (and [`SWEEP_FLOOR`]), so they never take much more room than the live ones, and the
/// sweep's cost is spread over the removals that made them.
pub(crate) struct Index<I, A: Array> {
    map: Map<I, SmallVec<A>>,
    /// How many entries of `map` have an empty list.
    empty: usize,
}

impl<I: std::fmt::Debug, A: Array> std::fmt::Debug for Index<I, A>
where
    A::Item: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.map.iter().filter(|(_, items)| !items.is_empty())).finish()
    }
}

impl<I, A: Array> Default for Index<I, A> {
    fn default() -> Self {
        Index { map: Map::default(), empty: 0 }
    }
}

impl<I: Hash + Eq + Clone, A: Array> Index<I, A> {
    /// Adds `item` to the list of `id`.
    pub fn push(&mut self, id: &I, item: A::Item) {
        match self.map.get_mut(id) {
            Some(items) => {
                if items.is_empty() {
                    self.empty -= 1;
                }
                items.push(item);
            }
            None => {
                let mut items = SmallVec::new();
                items.push(item);
                self.map.insert(id.clone(), items);
            }
        }
    }

    /// Removes the first item of `id` that `matches` (the order of the others may change).
    pub fn remove(&mut self, id: &I, matches: impl Fn(&A::Item) -> bool) {
        let Some(items) = self.map.get_mut(id) else { return };
        let Some(pos) = items.iter().position(matches) else { return };
        items.swap_remove(pos);
        if items.is_empty() {
            self.empty += 1;
            if self.empty > SWEEP_FLOOR && self.empty > self.map.len() - self.empty {
                self.map.retain(|_, items| !items.is_empty());
                self.empty = 0;
            }
        }
    }

    /// The items of `id` (none when it has no entry).
    pub fn get(&self, id: &I) -> &[A::Item] {
        self.map.get(id).map_or(&[], |items| items.as_slice())
    }

    /// Whether `id` has at least one item.
    pub fn contains(&self, id: &I) -> bool {
        !self.get(id).is_empty()
    }

    /// Every item of every id.
    pub fn items(&self) -> impl Iterator<Item = &A::Item> {
        self.map.values().flatten()
    }

    /// How many entries the map keeps, empty ones included.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_id_has_no_items_and_comes_back_with_new_ones() {
        let mut index: Index<u32, [u8; 2]> = Index::default();
        index.push(&1, 10);
        index.push(&1, 11);
        index.remove(&1, |x| *x == 10);
        assert_eq!(index.get(&1), &[11]);
        index.remove(&1, |x| *x == 99);
        assert_eq!(index.get(&1), &[11], "removing what is not there changes nothing");
        index.remove(&1, |x| *x == 11);
        assert!(!index.contains(&1));
        assert_eq!(index.get(&1), &[] as &[u8]);
        assert_eq!(index.items().count(), 0);
        index.push(&1, 12);
        assert_eq!(index.get(&1), &[12]);
        assert!(index.contains(&1));
        assert!(!index.contains(&2));
    }

    #[test]
    fn empty_entries_never_outnumber_live_ones_past_the_floor() {
        let mut index: Index<u32, [u32; 1]> = Index::default();
        for live in 0..50 {
            index.push(&live, live);
        }
        for id in 1000..11_000 {
            index.push(&id, id);
            index.remove(&id, |x| *x == id);
            assert!(index.entries() <= 2 * 50 + SWEEP_FLOOR + 1, "{} entries at id {id}", index.entries());
        }
        assert_eq!(index.items().count(), 50, "the live ids keep their items");
        for live in 0..50 {
            assert_eq!(index.get(&live), &[live]);
        }
    }
}
