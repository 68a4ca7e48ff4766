//! The dispatcher's job table: entries in a slab (`Vec`), found through a small id -> slot map.
//!
//! A `HashMap<u64, Entry>` rounds its buckets up to a power of two, each the size of a whole
//! entry: at a million jobs half the table is empty, and every resize moves every entry. Here
//! the map's buckets are 12 bytes and entries never move; freed slots are reused.

use crate::idmap::{id_map, IdMap};

/// Values of type `V` by job id.
#[derive(Debug)]
pub struct JobTable<V> {
    index: IdMap<u32>,
    slots: Vec<Option<V>>,
    free: Vec<u32>,
}

impl<V> JobTable<V> {
    /// A table with room for `n` values.
    pub fn with_capacity(n: usize) -> JobTable<V> {
        JobTable {
            index: id_map(n),
            slots: Vec::with_capacity(n),
            free: Vec::new(),
        }
    }

    /// The value of `id`.
    pub fn get(&self, id: &u64) -> Option<&V> {
        self.index
            .get(id)
            .and_then(|&s| self.slots[s as usize].as_ref())
    }

    /// The value of `id`, mutably.
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        match self.index.get(id) {
            Some(&s) => self.slots[s as usize].as_mut(),
            None => None,
        }
    }

    /// Whether `id` is present.
    #[cfg(test)]
    pub fn contains_key(&self, id: &u64) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts or replaces the value of `id`.
    pub fn insert(&mut self, id: u64, v: V) {
        if let Some(&s) = self.index.get(&id) {
            self.slots[s as usize] = Some(v);
            return;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(v);
                s
            }
            None => {
                self.slots.push(Some(v));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id, slot);
    }

    /// Removes and returns the value of `id`.
    pub fn remove(&mut self, id: &u64) -> Option<V> {
        let s = self.index.remove(id)?;
        self.free.push(s);
        self.slots[s as usize].take()
    }

    /// Every (id, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.index
            .iter()
            .filter_map(|(id, &s)| self.slots[s as usize].as_ref().map(|v| (id, v)))
    }

    /// Number of values.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when empty.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl<V> std::ops::Index<&u64> for JobTable<V> {
    type Output = V;
    fn index(&self, id: &u64) -> &V {
        self.get(id).expect("job in table")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The table behaves like a HashMap under any sequence of inserts and removes.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u64..50, any::<u32>()), 0..300)) {
            let mut t = JobTable::with_capacity(4);
            let mut m = HashMap::new();
            for (ins, id, v) in ops {
                if ins {
                    t.insert(id, v);
                    m.insert(id, v);
                } else {
                    prop_assert_eq!(t.remove(&id), m.remove(&id));
                }
                prop_assert_eq!(t.len(), m.len());
            }
            for (id, v) in &m {
                prop_assert_eq!(t.get(id), Some(v));
            }
            prop_assert_eq!(t.iter().count(), m.len());
        }
    }
}
