//! The message-id and key index: maps a 64-bit hash of a message id (`UNIQ_KEY`) or of a
//! `(topic, key)` pair (from `KEYS`) to the log positions of the records carrying it.
//!
//! Structure (a small LSM tree, so memory stays bounded however much data is stored):
//! - the writer appends `(hash, position)` pairs to the *active memtable*;
//! - when it holds enough entries, or spans enough log, the writer *freezes* it;
//! - the maintenance thread writes frozen memtables as sorted, immutable *run* files
//!   (`keys/<id:020>-L<level>.kidx`: header + `(hash, position)` pairs, 16 bytes each) and
//!   merges eight runs of one level into one of the next, dropping positions below the log
//!   start.
//!
//! Hashes collide, runs may overlap after a crash, and positions may point at data that has
//! since been truncated: the index only yields *candidates*; the caller reads each record
//! (CRC-checked) and compares the actual property. So a damaged index can make a lookup miss,
//! never return a wrong message.
//!
//! Durability: [`KeyIndex::durable_position`] is the log position from which keys are not yet
//! in run files; the checkpoint records it and recovery re-inserts keys from there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use memmap2::Mmap;

use super::fs::{fsync_dir, tmp_path};

const RUN_MAGIC: &[u8; 8] = b"RMQKIDX\0";
const RUN_VERSION: u32 = 1;
const RUN_HEADER_LEN: usize = 64;
const RUN_ENTRY_LEN: usize = 16;
const RUN_SUFFIX: &str = ".kidx";
/// Runs of one level merged at once. 8 keeps write amplification at about two rewrites per
/// entry for up to 16 Mi-entry runs.
const FANOUT: usize = 8;
/// Runs at least this large are not merged further (bounds the cost of one merge).
const MAX_MERGE_ENTRIES: u64 = 16 << 20;
/// Background run writing is paced to this rate and synced in steps of `SYNC_STEP`, so it
/// never floods the device queue in front of the commit log's fsyncs.
const WRITE_RATE_BYTES_PER_SEC: f64 = 96e6;
const SYNC_STEP: u64 = 4 << 20;

#[derive(Debug)]
struct MemTable {
    /// Keys of all records at or above this log position (and below the next memtable's
    /// start) are in this memtable.
    start: u64,
    entries: Vec<(u64, u64)>,
}

#[derive(Debug)]
struct Run {
    id: u64,
    level: u32,
    count: u64,
    max_position: u64,
    path: PathBuf,
    map: Mmap,
}

impl Run {
    fn entry(&self, i: u64) -> (u64, u64) {
        let at = RUN_HEADER_LEN + i as usize * RUN_ENTRY_LEN;
        let b = &self.map[at..at + RUN_ENTRY_LEN];
        let mut h = [0u8; 8];
        let mut p = [0u8; 8];
        h.copy_from_slice(&b[..8]);
        p.copy_from_slice(&b[8..]);
        (u64::from_le_bytes(h), u64::from_le_bytes(p))
    }

    fn lookup(&self, hash: u64, out: &mut Vec<u64>) {
        let (mut lo, mut hi) = (0u64, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid).0 < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        while lo < self.count {
            let (h, p) = self.entry(lo);
            if h != hash {
                break;
            }
            out.push(p);
            lo += 1;
        }
    }

    fn open(path: PathBuf, id: u64) -> io::Result<Self> {
        let file = File::open(&path)?;
        let len = file.metadata()?.len() as usize;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
        if len < RUN_HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        // SAFETY: run files are immutable once renamed into place and are only unlinked.
        let map = unsafe { Mmap::map(&file)? };
        let h = &map[..RUN_HEADER_LEN];
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(a)
        };
        if &h[..8] != RUN_MAGIC {
            return Err(bad("bad magic"));
        }
        if crc32c::crc32c(&h[..60]) != u32_at(60) {
            return Err(bad("header crc mismatch"));
        }
        if u32_at(8) != RUN_VERSION {
            return Err(bad("unsupported version"));
        }
        let count = u64_at(16);
        if RUN_HEADER_LEN as u64 + count * RUN_ENTRY_LEN as u64 != len as u64 {
            return Err(bad("size does not match the entry count"));
        }
        Ok(Self { id, level: u32_at(12), count, max_position: u64_at(32), path, map })
    }
}

fn run_header(level: u32, count: u64, min_position: u64, max_position: u64) -> [u8; RUN_HEADER_LEN] {
    let mut h = [0u8; RUN_HEADER_LEN];
    h[..8].copy_from_slice(RUN_MAGIC);
    h[8..12].copy_from_slice(&RUN_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&level.to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..32].copy_from_slice(&min_position.to_le_bytes());
    h[32..40].copy_from_slice(&max_position.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn parse_run_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(RUN_SUFFIX)?;
    let (id, _level) = stem.split_once("-L")?;
    id.parse().ok()
}

/// Limits that decide when the writer freezes the active memtable.
#[derive(Debug, Clone, Copy)]
pub struct MemtableLimits {
    pub max_entries: usize,
    /// Maximum span of log bytes one memtable may cover (bounds replay after a crash).
    pub max_log_span: u64,
}

#[derive(Debug)]
pub struct KeyIndex {
    dir: PathBuf,
    active: Mutex<MemTable>,
    /// Oldest first.
    frozen: RwLock<Vec<Arc<MemTable>>>,
    runs: RwLock<Vec<Arc<Run>>>,
    next_id: AtomicU64,
    limits: MemtableLimits,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing in this file panics while holding a lock; if a bug did, the data is still a
    // valid (if partial) index, so keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KeyIndex {
    /// Opens the run files under `dir`; the active memtable starts at `replay_from`, the log
    /// position from which the caller re-inserts keys.
    pub fn open(dir: PathBuf, replay_from: u64, limits: MemtableLimits) -> io::Result<Self> {
        let mut runs = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
                continue;
            }
            let Some(id) = parse_run_file_name(name) else {
                continue;
            };
            match Run::open(path.clone(), id) {
                Ok(run) => runs.push(Arc::new(run)),
                Err(e) => {
                    // Derived data: losing it only makes lookups for its keys miss.
                    tracing::warn!(file = %path.display(), error = %e, "removing unreadable key-index run");
                    fs::remove_file(&path)?;
                }
            }
        }
        runs.sort_by_key(|r| r.id);
        let next_id = runs.last().map_or(0, |r| r.id + 1);
        Ok(Self {
            dir,
            active: Mutex::new(MemTable { start: replay_from, entries: Vec::new() }),
            frozen: RwLock::new(Vec::new()),
            runs: RwLock::new(runs),
            next_id: AtomicU64::new(next_id),
            limits,
        })
    }

    /// Adds `(hash, position)` pairs (writer thread and recovery).
    pub fn insert(&self, entries: &[(u64, u64)]) {
        if !entries.is_empty() {
            lock(&self.active).entries.extend_from_slice(entries);
        }
    }

    /// Freezes the active memtable if it reached its limits; `write_position` is where the
    /// next record will go. Returns whether a memtable was frozen (then the caller wakes the
    /// maintenance thread to write it out).
    pub fn maybe_freeze(&self, write_position: u64) -> bool {
        let mut active = lock(&self.active);
        if active.entries.is_empty() {
            // Nothing to lose: move the start so a checkpoint need not replay old log.
            active.start = write_position;
            return false;
        }
        let full = active.entries.len() >= self.limits.max_entries
            || write_position.saturating_sub(active.start) >= self.limits.max_log_span;
        if !full {
            return false;
        }
        let old = std::mem::replace(&mut *active, MemTable { start: write_position, entries: Vec::new() });
        // Lock order: active, then frozen (lookups take them one at a time).
        self.frozen.write().unwrap_or_else(|e| e.into_inner()).push(Arc::new(old));
        true
    }

    /// The writer rolled back to `position`: records from there on are rewritten and their
    /// keys go to the active memtable, which must therefore cover them.
    pub fn rewind(&self, position: u64) {
        let mut active = lock(&self.active);
        active.start = active.start.min(position);
    }

    /// Freezes the active memtable regardless of its size (clean shutdown).
    pub fn freeze_all(&self, write_position: u64) {
        let mut active = lock(&self.active);
        if active.entries.is_empty() {
            active.start = write_position;
            return;
        }
        let old = std::mem::replace(&mut *active, MemTable { start: write_position, entries: Vec::new() });
        self.frozen.write().unwrap_or_else(|e| e.into_inner()).push(Arc::new(old));
    }

    /// The log position below which every key is in a durable run file.
    pub fn durable_position(&self) -> u64 {
        // Same lock order as `maybe_freeze` (active, then frozen), so a memtable cannot be in
        // flight between the two.
        let active = lock(&self.active);
        let frozen = self.frozen.read().unwrap_or_else(|e| e.into_inner());
        frozen.first().map_or(active.start, |oldest| oldest.start)
    }

    /// Candidate positions for `hash`, sorted and without duplicates.
    pub fn lookup(&self, hash: u64) -> Vec<u64> {
        // Entries only move active → frozen → runs, each added to the next stage before it
        // leaves the previous one; reading the stages in that order never misses one.
        let mut out: Vec<u64> =
            lock(&self.active).entries.iter().filter(|(h, _)| *h == hash).map(|(_, p)| *p).collect();
        for m in self.frozen.read().unwrap_or_else(|e| e.into_inner()).iter() {
            out.extend(m.entries.iter().filter(|(h, _)| *h == hash).map(|(_, p)| *p));
        }
        for run in self.runs.read().unwrap_or_else(|e| e.into_inner()).iter() {
            run.lookup(hash, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Writes every frozen memtable as a level-0 run, oldest first, then merges runs. On an
    /// error the memtable stays frozen (and in memory) and is retried on the next call.
    pub fn flush(&self, log_start: u64) -> io::Result<()> {
        loop {
            let Some(oldest) = self.frozen.read().unwrap_or_else(|e| e.into_inner()).first().cloned() else {
                break;
            };
            let mut entries = oldest.entries.clone();
            entries.sort_unstable();
            let run = self.write_run(0, entries.len() as u64, entries.into_iter())?;
            let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
            runs.push(Arc::new(run));
            // Publish the run before dropping the memtable so lookups never miss keys.
            self.frozen.write().unwrap_or_else(|e| e.into_inner()).retain(|m| !Arc::ptr_eq(m, &oldest));
        }
        self.compact(log_start)
    }

    /// Merges `FANOUT` runs of one level into one of the next level while possible.
    fn compact(&self, log_start: u64) -> io::Result<()> {
        loop {
            let runs = self.runs.read().unwrap_or_else(|e| e.into_inner()).clone();
            let mut by_level: std::collections::BTreeMap<u32, Vec<Arc<Run>>> = Default::default();
            for r in runs.iter().filter(|r| r.count < MAX_MERGE_ENTRIES) {
                by_level.entry(r.level).or_default().push(r.clone());
            }
            let Some((level, inputs)) = by_level.into_iter().find(|(_, rs)| rs.len() >= FANOUT) else {
                return Ok(());
            };
            let inputs: Vec<Arc<Run>> = inputs.into_iter().take(FANOUT).collect();
            let upper_bound: u64 = inputs.iter().map(|r| r.count).sum();
            let merged = MergeIter::new(&inputs).filter(|(_, p)| *p >= log_start);
            let run = self.write_run(level + 1, upper_bound, merged)?;
            {
                let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
                runs.retain(|r| !inputs.iter().any(|i| Arc::ptr_eq(i, r)));
                runs.push(Arc::new(run));
                runs.sort_by_key(|r| r.id);
            }
            for r in &inputs {
                fs::remove_file(&r.path)?;
            }
        }
    }

    /// Deletes runs whose positions are all below `log_start` (retention).
    pub fn retire_below(&self, log_start: u64) -> io::Result<usize> {
        let dead: Vec<Arc<Run>> = {
            let mut runs = self.runs.write().unwrap_or_else(|e| e.into_inner());
            let (dead, live): (Vec<_>, Vec<_>) = runs.drain(..).partition(|r| r.max_position < log_start);
            *runs = live;
            dead
        };
        for r in &dead {
            fs::remove_file(&r.path)?;
        }
        Ok(dead.len())
    }

    /// Writes sorted `entries` (at most `max_count`) as a run file: temp file, fsync, rename,
    /// directory fsync.
    fn write_run(&self, level: u32, max_count: u64, entries: impl Iterator<Item = (u64, u64)>) -> io::Result<Run> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{id:020}-L{level}{RUN_SUFFIX}"));
        let tmp = tmp_path(&path);
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&[0u8; RUN_HEADER_LEN])?;
        let (mut count, mut min_position, mut max_position) = (0u64, u64::MAX, 0u64);
        let started = std::time::Instant::now();
        for (h, p) in entries {
            debug_assert!(count < max_count);
            w.write_all(&h.to_le_bytes())?;
            w.write_all(&p.to_le_bytes())?;
            count += 1;
            min_position = min_position.min(p);
            max_position = max_position.max(p);
            let written = count * RUN_ENTRY_LEN as u64;
            if written.is_multiple_of(SYNC_STEP) {
                w.flush()?;
                w.get_ref().sync_data()?;
                let due = std::time::Duration::from_secs_f64(written as f64 / WRITE_RATE_BYTES_PER_SEC);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        if count == 0 {
            min_position = 0;
        }
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&run_header(level, count, min_position, max_position))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        fsync_dir(&self.dir)?;
        Run::open(path, id)
    }

    /// Number of entries held in memory (active + frozen memtables).
    pub fn memory_entries(&self) -> usize {
        let frozen: usize = self.frozen.read().unwrap_or_else(|e| e.into_inner()).iter().map(|m| m.entries.len()).sum();
        frozen + lock(&self.active).entries.len()
    }

    pub fn run_count(&self) -> usize {
        self.runs.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn has_frozen(&self) -> bool {
        !self.frozen.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// K-way merge of sorted runs.
struct MergeIter<'a> {
    runs: &'a [Arc<Run>],
    next: Vec<u64>,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<((u64, u64), usize)>>,
}

impl<'a> MergeIter<'a> {
    fn new(runs: &'a [Arc<Run>]) -> Self {
        let mut heap = std::collections::BinaryHeap::new();
        for (i, r) in runs.iter().enumerate() {
            if r.count > 0 {
                heap.push(std::cmp::Reverse((r.entry(0), i)));
            }
        }
        Self { runs, next: vec![1; runs.len()], heap }
    }
}

impl Iterator for MergeIter<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let std::cmp::Reverse((item, i)) = self.heap.pop()?;
        let run = &self.runs[i];
        if self.next[i] < run.count {
            self.heap.push(std::cmp::Reverse((run.entry(self.next[i]), i)));
            self.next[i] += 1;
        }
        // Drop exact duplicates (overlapping runs after a crash).
        while let Some(std::cmp::Reverse((peek, j))) = self.heap.peek().copied() {
            if peek != item {
                break;
            }
            self.heap.pop();
            let run = &self.runs[j];
            if self.next[j] < run.count {
                self.heap.push(std::cmp::Reverse((run.entry(self.next[j]), j)));
                self.next[j] += 1;
            }
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: MemtableLimits = MemtableLimits { max_entries: 3, max_log_span: 1 << 40 };

    #[test]
    fn lookups_see_memtables_runs_and_merged_runs() {
        let dir = tempfile::tempdir().unwrap();
        let idx = KeyIndex::open(dir.path().to_path_buf(), 0, LIMITS).unwrap();
        let mut expected: std::collections::HashMap<u64, Vec<u64>> = Default::default();
        for pos in 0..100u64 {
            let hash = pos % 7;
            idx.insert(&[(hash, pos)]);
            expected.entry(hash).or_default().push(pos);
            if idx.maybe_freeze(pos + 1) {
                idx.flush(0).unwrap();
            }
        }
        assert!(idx.run_count() < 100 / 3, "runs were merged: {}", idx.run_count());
        for (h, ps) in &expected {
            assert_eq!(&idx.lookup(*h), ps);
        }
        // Reopen: keys in runs survive; the unflushed memtable does not (replay restores it).
        let durable = idx.durable_position();
        let in_memory = idx.memory_entries() as u64;
        drop(idx);
        let idx = KeyIndex::open(dir.path().to_path_buf(), durable, LIMITS).unwrap();
        for (h, ps) in &expected {
            let want: Vec<u64> = ps.iter().copied().filter(|p| *p < durable).collect();
            assert_eq!(idx.lookup(*h), want);
        }
        assert_eq!(100 - durable, in_memory);
        // Retention drops runs wholly below the log start.
        idx.retire_below(u64::MAX).unwrap();
        assert_eq!(idx.run_count(), 0);
    }

    #[test]
    fn corrupt_run_files_are_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let idx = KeyIndex::open(dir.path().to_path_buf(), 0, LIMITS).unwrap();
        idx.insert(&[(1, 10), (2, 20), (3, 30)]);
        assert!(idx.maybe_freeze(40));
        idx.flush(0).unwrap();
        drop(idx);
        let file = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let mut bytes = fs::read(&file).unwrap();
        bytes[20] ^= 0xff;
        fs::write(&file, bytes).unwrap();
        let idx = KeyIndex::open(dir.path().to_path_buf(), 40, LIMITS).unwrap();
        assert_eq!(idx.run_count(), 0);
        assert!(idx.lookup(1).is_empty());
    }

    proptest! {
        #[test]
        fn merge_is_sorted_and_complete(mut a in proptest::collection::vec((0u64..50, 0u64..1000), 0..60),
                                        mut b in proptest::collection::vec((0u64..50, 0u64..1000), 0..60)) {
            let dir = tempfile::tempdir().unwrap();
            let idx = KeyIndex::open(dir.path().to_path_buf(), 0, LIMITS).unwrap();
            a.sort_unstable();
            b.sort_unstable();
            let ra = Arc::new(idx.write_run(0, a.len() as u64, a.clone().into_iter()).unwrap());
            let rb = Arc::new(idx.write_run(0, b.len() as u64, b.clone().into_iter()).unwrap());
            let merged: Vec<_> = MergeIter::new(&[ra, rb]).collect();
            let mut want: Vec<_> = a.into_iter().chain(b).collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(merged, want);
        }
    }
}
