//! [`LruMap`]: the bound of the per-file caches (open full-text indexes, PromQL series indexes),
//! so that a store of many files, or a query over all of them, cannot grow them without limit.

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept by each per-file cache. A query over more files than this reopens some of them,
/// which costs time, not correctness.
pub(crate) const MAX_CACHED_FILES: usize = 2048;

/// A map of at most `capacity` entries that evicts the least recently used one.
pub(crate) struct LruMap<K, V> {
    entries: HashMap<K, (V, u64)>,
    tick: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        LruMap { entries: HashMap::new(), tick: 0, capacity: capacity.max(1) }
    }

    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        self.tick = self.tick.wrapping_add(1);
        let tick = self.tick;
        self.entries.get_mut(key).map(|(value, used)| {
            *used = tick;
            &*value
        })
    }

    /// Inserts, evicting the least recently used entry when full. Eviction scans the map:
    /// linear in the capacity, and rare next to the file reads that fill the cache.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        self.tick = self.tick.wrapping_add(1);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, self.tick));
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.entries.retain(|key, (value, _)| keep(key, value));
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.keys()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(value, _)| value)
    }
}

impl<K: Hash + Eq + Clone, V> Default for LruMap<K, V> {
    fn default() -> Self {
        LruMap::new(MAX_CACHED_FILES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut map = LruMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        assert_eq!(map.get(&"a"), Some(&1));
        map.insert("c", 3);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&"b"), None, "b was used least recently");
        assert_eq!(map.get(&"a"), Some(&1));
        assert_eq!(map.get(&"c"), Some(&3));
        map.insert("a", 10);
        assert_eq!(map.len(), 2, "replacing does not evict");
        assert_eq!(map.get(&"a"), Some(&10));
    }
}
