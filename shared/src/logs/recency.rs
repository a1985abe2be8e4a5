//! A map that knows which of its keys was touched least recently, in O(1)
//! amortised: the detectors' state per address and per workload, evicted
//! oldest first when full and forgotten oldest first when idle.
//!
//! Entries live in a slab; a queue beside it records each touch as (slot,
//! stamp). A touch pushes a new record and leaves the old one behind,
//! stale: its stamp no longer matches the slot's. The oldest entry is the
//! first record of the queue whose stamp still matches, so stale records
//! are dropped as they reach the front, and the queue is compacted when
//! stale records outnumber live ones. Every touch costs one push and, on
//! average, at most one pop: no scan of the map, whatever its size.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    stamp: u64,
}

/// A map whose entries are ordered by their last touch.
#[derive(Debug)]
pub struct RecencyMap<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<u32>,
    queue: VecDeque<(u32, u64)>,
    next_stamp: u64,
}

impl<K, V> Default for RecencyMap<K, V> {
    fn default() -> Self {
        RecencyMap { index: HashMap::new(), slots: Vec::new(), free: Vec::new(), queue: VecDeque::new(), next_stamp: 0 }
    }
}

impl<K: Hash + Eq + Clone, V> RecencyMap<K, V> {
    /// Entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Records held by the queue, live and stale: at most twice the
    /// entries plus a constant.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether `key` has an entry.
    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.index.contains_key(key)
    }

    /// The entry of `key`, without touching it.
    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = *self.index.get(key)?;
        self.slots[i as usize].as_mut().map(|s| &mut s.value)
    }

    /// The entry of `key`, made the most recent.
    pub fn touch<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = *self.index.get(key)?;
        let stamp = self.stamp();
        self.queue.push_back((i, stamp));
        self.compact();
        let slot = self.slots[i as usize].as_mut()?;
        slot.stamp = stamp;
        Some(&mut slot.value)
    }

    /// Adds `key` as the most recent (an existing entry is replaced).
    pub fn insert(&mut self, key: K, value: V) {
        self.remove(&key);
        let stamp = self.stamp();
        let slot = Some(Slot { key: key.clone(), value, stamp });
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.index.insert(key, i);
        self.queue.push_back((i, stamp));
        self.compact();
    }

    /// Removes the entry of `key`.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.index.remove(key)?;
        self.free.push(i);
        // Its queue record goes stale: no slot has its stamp.
        self.slots[i as usize].take().map(|s| s.value)
    }

    /// The least recently touched entry.
    pub fn oldest(&mut self) -> Option<(&K, &mut V)> {
        let i = self.front()?;
        self.slots[i as usize].as_mut().map(|s| (&s.key, &mut s.value))
    }

    /// Removes the least recently touched entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let i = self.front()?;
        self.queue.pop_front();
        let slot = self.slots[i as usize].take()?;
        self.index.remove(&slot.key);
        self.free.push(i);
        Some((slot.key, slot.value))
    }

    /// Every entry, in no order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.slots.iter_mut().flatten().map(|s| (&s.key, &mut s.value))
    }

    /// Every value, in no order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().flatten().map(|s| &s.value)
    }

    /// The slot of the oldest entry, stale records before it dropped.
    fn front(&mut self) -> Option<u32> {
        while let Some(&(i, stamp)) = self.queue.front() {
            if self.slots[i as usize].as_ref().is_some_and(|s| s.stamp == stamp) {
                return Some(i);
            }
            self.queue.pop_front();
        }
        None
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// Drops stale records once they outnumber live ones: each compaction
    /// follows at least as many touches as it keeps records.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.index.len() + 64 {
            let slots = &self.slots;
            self.queue.retain(|&(i, stamp)| slots[i as usize].as_ref().is_some_and(|s| s.stamp == stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_the_least_recently_touched() {
        let mut m: RecencyMap<String, u32> = RecencyMap::default();
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            m.insert(k.to_owned(), v);
        }
        assert_eq!(m.touch("a").copied(), Some(1));
        assert_eq!(m.oldest().map(|(k, v)| (k.clone(), *v)), Some(("b".to_owned(), 2)));
        assert_eq!(m.remove("b"), Some(2));
        assert_eq!(m.pop_oldest(), Some(("c".to_owned(), 3)));
        m.insert("d".to_owned(), 4);
        // get_mut does not touch.
        *m.get_mut("a").unwrap_or_else(|| panic!("a")) = 10;
        assert_eq!(m.pop_oldest(), Some(("a".to_owned(), 10)));
        assert_eq!(m.pop_oldest(), Some(("d".to_owned(), 4)));
        assert_eq!((m.pop_oldest(), m.len(), m.is_empty()), (None, 0, true));
    }

    #[test]
    fn the_queue_stays_within_twice_the_entries() {
        let mut m: RecencyMap<u32, ()> = RecencyMap::default();
        for k in 0..100 {
            m.insert(k, ());
        }
        for round in 0..1000u32 {
            m.touch(&(round % 7));
            assert!(m.queued() <= 2 * m.len() + 65, "{} records for {} entries", m.queued(), m.len());
        }
        // Order: 7..100 untouched since inserted, then the touched ones.
        assert_eq!(m.pop_oldest().map(|(k, _)| k), Some(7));
    }
}
