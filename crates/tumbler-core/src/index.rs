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

/// Where an id's items sit in an [`Index`]: holders of a slot (a hold, a waiting request)
/// reach their owner's items through it without hashing the owner again.
pub(crate) type Slot = u32;

/// The slot of an item not filed in any index yet: using it as a slot panics.
pub(crate) const UNFILED: Slot = Slot::MAX;

/// Maps ids to the few items each has.
///
/// Each id's items sit in a numbered slot, found by the id once and by the slot after
/// that: an item's holder keeps the slot it was filed under (see [`Index::add`]) and reaches
/// the items directly with [`Index::change_at`]. A slot stays its id's as long as it has
/// items, so a slot kept beside an item is always valid.
///
/// An id whose items are all gone keeps its entry: the owner of a hot key gives it up and
/// takes it again many times a second, and removing and re-inserting its entry each time
/// would cost two map operations and a clone and a drop of the id (an atomic reference
/// count) on every hand-off. Empty entries are swept away together once they outnumber the
/// others (and [`SWEEP_FLOOR`]), so they never take much more room than the live ones, and
/// the sweep's cost is spread over the removals that made them. A swept entry's slot is
/// reused.
pub(crate) struct Index<I, V> {
    slots: Map<I, Slot>,
    items: Vec<V>,
    /// Slots of swept entries, to be reused.
    free: Vec<Slot>,
    /// How many entries of `slots` have no item.
    empty: usize,
}

impl<I: std::fmt::Debug, V: Items + std::fmt::Debug> std::fmt::Debug for Index<I, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.slots.iter().map(|(id, slot)| (id, &self.items[*slot as usize]));
        f.debug_map().entries(live.filter(|(_, items)| !items.is_empty())).finish()
    }
}

impl<I, V> Default for Index<I, V> {
    fn default() -> Self {
        Index { slots: Map::default(), items: Vec::new(), free: Vec::new(), empty: 0 }
    }
}

impl<I: Hash + Eq + Clone, V: Items> Index<I, V> {
    /// Changes the items of `id` with `change`, in one lookup (an id without an entry
    /// starts with none).
    pub fn change<R>(&mut self, id: &I, change: impl FnOnce(&mut V) -> R) -> R {
        self.change_filed(id, change).1
    }

    /// Adds to the items of `id` with `add`, which must leave at least one; answers the
    /// slot they sit in, valid for as long as the item added stays.
    pub fn add(&mut self, id: &I, add: impl FnOnce(&mut V)) -> Slot {
        self.change_filed(id, add).0.expect("BUG: Index::add added nothing")
    }

    /// [`Index::change`], answering also the slot of `id`'s items, if it has any after.
    fn change_filed<R>(&mut self, id: &I, change: impl FnOnce(&mut V) -> R) -> (Option<Slot>, R) {
        match self.slots.get(id) {
            Some(&slot) => (Some(slot), self.change_at(slot, change)),
            None => {
                let mut items = V::default();
                let answer = change(&mut items);
                let slot = (!items.is_empty()).then(|| self.insert(id, items));
                (slot, answer)
            }
        }
    }

    /// Changes the items in `slot` (from [`Index::add`], while an item added there stays)
    /// with `change`, without looking their id up.
    #[inline]
    pub fn change_at<R>(&mut self, slot: Slot, change: impl FnOnce(&mut V) -> R) -> R {
        let items = &mut self.items[slot as usize];
        let was_empty = items.is_empty();
        let answer = change(items);
        let is_empty = items.is_empty();
        self.count_empty(was_empty, is_empty);
        answer
    }

    /// [`Index::change_at`] for a change that keeps at least one item in `slot`, which has
    /// some before: it skips the count of empty entries (checked in debug builds).
    #[inline]
    pub fn change_kept<R>(&mut self, slot: Slot, change: impl FnOnce(&mut V) -> R) -> R {
        let items = &mut self.items[slot as usize];
        debug_assert!(!items.is_empty(), "BUG: Index::change_kept on an empty entry");
        let answer = change(items);
        debug_assert!(!items.is_empty(), "BUG: Index::change_kept emptied an entry");
        answer
    }

    /// The items of `id`, when it has an entry.
    pub fn entry(&self, id: &I) -> Option<&V> {
        self.slots.get(id).map(|slot| &self.items[*slot as usize])
    }

    /// The items of every id (empty entries among them).
    pub fn entries(&self) -> impl Iterator<Item = &V> {
        self.slots.values().map(|slot| &self.items[*slot as usize])
    }

    fn insert(&mut self, id: &I, items: V) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.items[slot as usize] = items;
                slot
            }
            None => {
                self.items.push(items);
                Slot::try_from(self.items.len() - 1).expect("more than 2^32 ids in one index")
            }
        };
        self.slots.insert(id.clone(), slot);
        slot
    }

    #[inline]
    fn count_empty(&mut self, was_empty: bool, is_empty: bool) {
        match (was_empty, is_empty) {
            (true, false) => self.empty -= 1,
            (false, true) => {
                self.empty += 1;
                if self.empty > SWEEP_FLOOR && self.empty > self.slots.len() - self.empty {
                    let Index { slots, items, free, .. } = self;
                    slots.retain(|_, slot| {
                        let live = !items[*slot as usize].is_empty();
                        if !live {
                            // Give back what a list that once spilled to the heap keeps.
                            items[*slot as usize] = V::default();
                            free.push(*slot);
                        }
                        live
                    });
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
        self.slots.len()
    }
}

/// Removes the first item of `items` that `matches` (the order of the others may change).
#[inline]
pub(crate) fn remove_first<A: Array>(items: &mut SmallVec<A>, matches: impl Fn(&A::Item) -> bool) {
    let items_now = items.as_slice();
    // Most lists hold one item (an owner's one hold or wait of a hot key): pop it directly.
    if items_now.len() == 1 && matches(&items_now[0]) {
        items.pop();
    } else if let Some(pos) = items_now.iter().position(matches) {
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

    #[test]
    fn a_kept_slot_reaches_its_ids_items_across_sweeps_and_freed_slots_are_reused() {
        let mut index: Index<u32, SmallVec<[u32; 1]>> = Index::default();
        let kept: Vec<(u32, Slot)> = (0..20).map(|id| (id, index.add(&id, |items| items.push(id)))).collect();
        for id in 1000..5000 {
            let slot = index.add(&id, |items| items.push(id));
            index.change_at(slot, |items| remove_first(items, |x| *x == id));
        }
        assert!(index.items.len() <= 20 + 2 * SWEEP_FLOOR + 2, "swept slots are reused: {} slots", index.items.len());
        for (id, slot) in kept {
            assert_eq!(index.add(&id, |items| items.push(id + 100)), slot, "a slot with items stays its id's");
            index.change_at(slot, |items| remove_first(items, |x| *x == id));
            assert_eq!(index.get(&id), &[id + 100]);
        }
    }

    #[test]
    #[should_panic(expected = "index out of bounds")]
    fn an_unfiled_slot_is_refused() {
        let mut index: Index<u32, SmallVec<[u32; 1]>> = Index::default();
        index.push(&1, 1);
        index.change_at(UNFILED, |items| items.clear());
    }
}
