//! The cold-read cache: byte ranges of tiered objects (queue-index chunks and read-ahead data
//! ranges) kept in memory up to a byte bound, least recently used out first. Readers look
//! records up here synchronously; misses are filled by the async fetch path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

/// Key of an index chunk: (segment base, topic, queue id, chunk number within the segment).
pub type IndexKey = (u64, Arc<str>, u32, u64);

#[derive(Debug)]
struct Slot {
    bytes: Bytes,
    tick: u64,
}

/// Bounded by the sum of the cached ranges' lengths (`capacity` bytes). A range larger than
/// the whole capacity is still kept (alone) so a single big record can be served.
#[derive(Debug)]
pub struct ReadCache {
    capacity: usize,
    used: usize,
    tick: u64,
    index: HashMap<IndexKey, Slot>,
    /// (segment base, object offset of the range start) → bytes from there.
    data: BTreeMap<(u64, u64), Slot>,
}

impl ReadCache {
    pub fn new(capacity: usize) -> ReadCache {
        ReadCache { capacity, used: 0, tick: 0, index: HashMap::new(), data: BTreeMap::new() }
    }

    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn ranges(&self) -> usize {
        self.index.len() + self.data.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    pub fn index_chunk(&mut self, key: &IndexKey) -> Option<Bytes> {
        let tick = self.next_tick();
        let slot = self.index.get_mut(key)?;
        slot.tick = tick;
        Some(slot.bytes.clone())
    }

    pub fn insert_index_chunk(&mut self, key: IndexKey, bytes: Bytes) {
        let tick = self.next_tick();
        self.used += bytes.len();
        if let Some(old) = self.index.insert(key, Slot { bytes, tick }) {
            self.used -= old.bytes.len();
        }
        self.evict();
    }

    /// `len` bytes at object offset `at` of the segment with base `base`, if one cached range
    /// holds all of them, or two adjacent ones (a record crossing a read-ahead block end; the
    /// bytes are then copied together).
    pub fn data(&mut self, base: u64, at: u64, len: usize) -> Option<Bytes> {
        let tick = self.next_tick();
        let ((_, start), slot) = self.data.range_mut((base, 0)..=(base, at)).next_back()?;
        let start = *start;
        let from = usize::try_from(at - start).ok()?;
        let to = from.checked_add(len)?;
        if to <= slot.bytes.len() {
            slot.tick = tick;
            return Some(slot.bytes.slice(from..to));
        }
        if from >= slot.bytes.len() {
            return None;
        }
        let head = slot.bytes.slice(from..);
        let slot_end = start + slot.bytes.len() as u64;
        let next = self.data.get_mut(&(base, slot_end))?;
        let rest = to - from - head.len();
        if rest > next.bytes.len() {
            return None;
        }
        next.tick = tick;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&head);
        out.extend_from_slice(&next.bytes[..rest]);
        if let Some(first) = self.data.get_mut(&(base, start)) {
            first.tick = tick;
        }
        Some(Bytes::from(out))
    }

    pub fn insert_data(&mut self, base: u64, at: u64, bytes: Bytes) {
        let tick = self.next_tick();
        self.used += bytes.len();
        if let Some(old) = self.data.insert((base, at), Slot { bytes, tick }) {
            self.used -= old.bytes.len();
        }
        self.evict();
    }

    /// Drops everything cached of a segment (its object was deleted).
    pub fn forget_segment(&mut self, base: u64) {
        let data: Vec<(u64, u64)> = self.data.range((base, 0)..=(base, u64::MAX)).map(|(k, _)| *k).collect();
        for k in data {
            if let Some(s) = self.data.remove(&k) {
                self.used -= s.bytes.len();
            }
        }
        let used = &mut self.used;
        self.index.retain(|k, s| {
            let keep = k.0 != base;
            if !keep {
                *used -= s.bytes.len();
            }
            keep
        });
    }

    /// Least recently used out until within capacity (the newest entry always stays).
    fn evict(&mut self) {
        while self.used > self.capacity && self.ranges() > 1 {
            let oldest_data = self.data.iter().min_by_key(|(_, s)| s.tick).map(|(k, s)| (*k, s.tick));
            let oldest_index = self.index.iter().min_by_key(|(_, s)| s.tick).map(|(k, s)| (k.clone(), s.tick));
            let freed = match (oldest_data, oldest_index) {
                (Some((dk, dt)), Some((_, it))) if dt <= it => self.data.remove(&dk),
                (_, Some((ik, _))) => self.index.remove(&ik),
                (Some((dk, _)), None) => self.data.remove(&dk),
                (None, None) => None,
            };
            match freed {
                Some(s) => self.used -= s.bytes.len(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lookup_needs_one_range_covering_everything() {
        let mut c = ReadCache::new(1 << 20);
        c.insert_data(100, 10, Bytes::from(vec![7u8; 50]));
        assert_eq!(c.data(100, 10, 50).map(|b| b.len()), Some(50));
        assert_eq!(c.data(100, 20, 10).map(|b| b.len()), Some(10));
        assert!(c.data(100, 20, 41).is_none());
        assert!(c.data(100, 5, 2).is_none());
        assert!(c.data(200, 10, 1).is_none());
    }

    #[test]
    fn data_lookup_joins_two_adjacent_ranges() {
        let mut c = ReadCache::new(1 << 20);
        c.insert_data(100, 0, Bytes::from(vec![1u8; 10]));
        c.insert_data(100, 10, Bytes::from(vec![2u8; 10]));
        c.insert_data(100, 30, Bytes::from(vec![3u8; 10]));
        assert_eq!(c.data(100, 8, 4).as_deref(), Some(&[1u8, 1, 2, 2][..]));
        assert!(c.data(100, 8, 13).is_none(), "past the second range");
        assert!(c.data(100, 18, 14).is_none(), "a gap between the ranges");
    }

    #[test]
    fn stays_within_its_byte_bound_dropping_least_recently_used() {
        let mut c = ReadCache::new(1000);
        for i in 0..10u64 {
            c.insert_data(0, i * 400, Bytes::from(vec![0u8; 400]));
            assert!(c.used_bytes() <= 1000, "{} bytes cached", c.used_bytes());
            // Touch the first range so it stays.
            let _ = c.data(0, 0, 1);
        }
        assert!(c.data(0, 0, 1).is_some(), "recently used range was evicted");
        assert!(c.data(0, 400, 1).is_none());
        c.insert_index_chunk((0, Arc::from("T"), 0, 0), Bytes::from(vec![0u8; 300]));
        assert!(c.used_bytes() <= 1000);
        c.forget_segment(0);
        assert_eq!(c.used_bytes(), 0);
        assert_eq!(c.ranges(), 0);
    }
}
