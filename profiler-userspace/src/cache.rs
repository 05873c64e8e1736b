//! A bounded map that forgets what was used least recently: the caches of code objects, named
//! stacks and native symbols stay within a fixed size however long a recording runs. A leaf
//! module: it knows nothing of what it holds.

use std::{collections::HashMap, hash::Hash};

/// At most `capacity` entries; when full, the quarter used longest ago is dropped at once, so an
/// insert costs O(1) amortized.
pub struct BoundedCache<K, V> {
    entries: HashMap<K, (V, u64)>,
    capacity: usize,
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(4),
            clock: 0,
        }
    }

    /// The value for `key`, marking it used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|(v, used)| {
            *used = clock;
            &*v
        })
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict();
        }
        self.clock += 1;
        self.entries.insert(key, (value, self.clock));
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(v, _)| v)
    }

    /// The value for `key`, made by `make` when absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &V {
        if !self.entries.contains_key(&key) {
            self.insert(key.clone(), make());
        }
        self.get(&key).expect("present: just inserted")
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the entries `f` gives a key for, under that key (when what the keys refer to was
    /// renumbered), and drops the others.
    pub fn rekey(&mut self, f: impl Fn(&K) -> Option<K>) {
        self.entries = std::mem::take(&mut self.entries)
            .into_iter()
            .filter_map(|(k, v)| Some((f(&k)?, v)))
            .collect();
    }

    /// Drops the quarter of the entries used longest ago.
    fn evict(&mut self) {
        let mut stamps: Vec<u64> = self.entries.values().map(|(_, used)| *used).collect();
        let cut = stamps.len() / 4;
        let (_, &mut threshold, _) = stamps.select_nth_unstable(cut);
        self.entries.retain(|_, (_, used)| *used > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let mut c = BoundedCache::new(100);
        c.insert(0, "hot");
        for i in 1..10_000u32 {
            c.insert(i, "cold");
            assert!(c.get(&0).is_some(), "the entry used at every step stays");
            assert!(c.len() <= 100);
        }
        assert!(c.get(&9_999).is_some(), "the newest stays");
        assert!(c.get(&5).is_none(), "old unused entries go");
        assert_eq!(*c.get_or_insert_with(5, || "again"), "again");
    }

    #[test]
    fn rekey_renames_and_drops() {
        let mut c = BoundedCache::new(10);
        c.insert(1, "a");
        c.insert(2, "b");
        c.rekey(|&k| (k == 2).then_some(20));
        assert_eq!((c.len(), c.get(&20).copied()), (1, Some("b")));
    }
}
