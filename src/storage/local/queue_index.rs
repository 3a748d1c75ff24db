//! The per-queue index (RocketMQ's ConsumeQueue): for every queue offset a fixed-size entry
//! (log position, size, tag hash, store time; see `format.rs`) so a read of offset `n` is one
//! lookup at `n * 32` bytes.
//!
//! Layout: `index/<topic-dir>/<queue_id>/<first_offset:020>.cq`, each file pre-sized (sparse)
//! for a fixed number of entries and mapped shared; `index/<topic-dir>/TOPIC` holds the raw
//! topic name (directory names are an escaped, possibly shortened form of it).
//!
//! Writes come only from the writer (and recovery). They are copies into the map, as Apache
//! writes its ConsumeQueue: an entry is 32 bytes and a batch writes one run of them per queue,
//! so a `pwrite` each cost more than the copy (docs/benchmarks.md). Blocks are reserved with
//! `fallocate` ahead of the writes ([`ALLOCATE_AHEAD`] at a time), so a full disk fails a
//! batch with an error instead of faulting the process (`SIGBUS`) on a write to a hole. Only on
//! file systems where a write into reserved blocks needs no more space (ext4, XFS, tmpfs); on
//! others (btrfs and ZFS reserve space again on every write) and where `fallocate` is not
//! supported, entries are written with `pwrite`. Durability comes
//! from the checkpointer, which fsyncs dirty files before it records a checkpoint (an fsync
//! covers pages dirtied through a shared map). Readers see entries below
//! [`QueueIndex::end`] only, which is published after the entries are written.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use memmap2::MmapRaw;

use super::format::{INDEX_ENTRY_LEN, IndexEntry};
use super::fs::{create_sized_file, fallocate, fsync_dir, page_size, unsupported, write_file_atomically, zero_range};
use crate::fast_map::FastMap;

const INDEX_SUFFIX: &str = ".cq";
const TOPIC_FILE: &str = "TOPIC";

/// Bytes of an index file reserved at a time ahead of its writes (512 entries).
pub const ALLOCATE_AHEAD: u64 = 16 * 1024;

/// One index file: entries for offsets `[first_offset, first_offset + capacity)`.
#[derive(Debug)]
pub struct IndexFile {
    pub first_offset: u64,
    pub capacity: u64,
    pub path: PathBuf,
    file: File,
    /// Shared map of the whole file: read by anyone (entries below the published end), written
    /// by the writer (entries above it).
    map: MmapRaw,
    /// Bytes from the start known to have blocks reserved (`fallocate`); `u64::MAX`: the file
    /// system cannot reserve them, entries are written with `pwrite`. Writer only.
    reserved: AtomicU64,
    dirty: AtomicBool,
}

impl IndexFile {
    fn create(dir: &Path, first_offset: u64, capacity: u64) -> io::Result<Self> {
        let path = dir.join(format!("{first_offset:020}{INDEX_SUFFIX}"));
        let file = create_sized_file(&path, capacity * INDEX_ENTRY_LEN as u64)?;
        Self::map(path, file, first_offset, capacity)
    }

    fn open(path: PathBuf, first_offset: u64) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let capacity = len / INDEX_ENTRY_LEN as u64;
        if capacity == 0 || len % INDEX_ENTRY_LEN as u64 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("index file {} has an impossible size {len}", path.display()),
            ));
        }
        Self::map(path, file, first_offset, capacity)
    }

    fn map(path: PathBuf, file: File, first_offset: u64, capacity: u64) -> io::Result<Self> {
        let map = memmap2::MmapOptions::new().len((capacity as usize) * INDEX_ENTRY_LEN).map_raw(&file)?;
        let reserved = AtomicU64::new(if reservations_hold(&file) { 0 } else { u64::MAX });
        Ok(Self { first_offset, capacity, path, file, map, reserved, dirty: AtomicBool::new(false) })
    }

    /// `len` bytes of the map at `at`.
    ///
    /// Callers read only bytes no one writes meanwhile: published entries (below the queue's
    /// end, never rewritten while the process runs), or any entry while the queue is loaded,
    /// before the writer starts.
    fn bytes(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.map.len(), "index read past the file");
        // SAFETY: in bounds (checked above) of a map that lives as long as `self`, of a file
        // that keeps its size for its whole life (entries are cleared by punching holes, never
        // by truncating); nothing writes these bytes while the slice lives (see above).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), len) }
    }

    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.capacity
    }

    /// The entry for `offset`, `None` if outside this file or not a valid entry.
    pub fn entry(&self, offset: u64) -> Option<IndexEntry> {
        let slot = offset.checked_sub(self.first_offset)?;
        if slot >= self.capacity {
            return None;
        }
        IndexEntry::decode(self.bytes(slot as usize * INDEX_ENTRY_LEN, INDEX_ENTRY_LEN))
    }

    /// Writes encoded entries starting at `offset`; they must fit in this file. Writer only.
    fn write(&self, offset: u64, encoded: &[u8]) -> io::Result<()> {
        debug_assert!(offset >= self.first_offset);
        debug_assert!(offset + (encoded.len() / INDEX_ENTRY_LEN) as u64 <= self.end_offset());
        let at = (offset - self.first_offset) * INDEX_ENTRY_LEN as u64;
        let end = at + encoded.len() as u64;
        self.dirty.store(true, Ordering::Release);
        if !self.reserve(at, end)? {
            return self.file.write_all_at(encoded, at);
        }
        assert!(end <= self.map.len() as u64, "index write past the file");
        // SAFETY: in bounds (checked above) of the live map; only the writer writes, and only
        // entries above the published end, which no reader looks at; the blocks are reserved,
        // so the write cannot fault on a full disk.
        unsafe {
            std::ptr::copy_nonoverlapping(encoded.as_ptr(), self.map.as_mut_ptr().add(at as usize), encoded.len())
        };
        Ok(())
    }

    /// Reserves blocks for the pages holding `[at, end)` (and [`ALLOCATE_AHEAD`] beyond, or
    /// just those pages when the disk has no room for more) unless already done; false when the
    /// file system cannot, so the caller writes with `pwrite`.
    fn reserve(&self, at: u64, end: u64) -> io::Result<bool> {
        let reserved = self.reserved.load(Ordering::Acquire);
        if reserved == u64::MAX {
            return Ok(false);
        }
        if end <= reserved {
            return Ok(true);
        }
        let (page, len) = (page_size(), self.capacity * INDEX_ENTRY_LEN as u64);
        let from = reserved.max(at - at % page);
        let needed = end.div_ceil(page).saturating_mul(page).min(len);
        let ahead = (end + ALLOCATE_AHEAD).div_ceil(page).saturating_mul(page).min(len);
        // Mode 0 within the file's size: allocates blocks for holes, changes nothing else.
        let mut result = fallocate(&self.file, 0, from, ahead).map(|()| ahead);
        if result.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSPC)) && ahead > needed {
            result = fallocate(&self.file, 0, from, needed).map(|()| needed);
        }
        match result {
            Ok(to) => {
                self.reserved.store(to, Ordering::Release);
                Ok(true)
            }
            Err(e) if unsupported(&e) => {
                self.reserved.store(u64::MAX, Ordering::Release);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Clears entries `[from, end of file)`.
    fn clear_from(&self, from: u64) -> io::Result<()> {
        let from = from.clamp(self.first_offset, self.end_offset());
        self.dirty.store(true, Ordering::Release);
        // The punched blocks are free again: reserve them anew before the next write there.
        let at = (from - self.first_offset) * INDEX_ENTRY_LEN as u64;
        let _ = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| (r != u64::MAX).then(|| r.min(at)));
        zero_range(
            &self.file,
            (from - self.first_offset) * INDEX_ENTRY_LEN as u64,
            self.capacity * INDEX_ENTRY_LEN as u64,
        )
    }

    /// Whether any entry at or after `offset` may hold bytes (cheap: looks at the rest of
    /// the block holding `offset`, then asks the file system for data after it).
    fn may_have_data_from(&self, offset: u64) -> bool {
        use std::os::fd::AsRawFd;
        let len = self.capacity * INDEX_ENTRY_LEN as u64;
        let at = offset.saturating_sub(self.first_offset).min(self.capacity) * INDEX_ENTRY_LEN as u64;
        let block_end = ((at / 4096) + 1) * 4096;
        if self.bytes(at as usize, (block_end.min(len) - at) as usize).iter().any(|&b| b != 0) {
            return true;
        }
        if block_end >= len {
            return false;
        }
        // SAFETY: plain syscall on a valid, owned descriptor.
        let next = unsafe { libc::lseek(self.file.as_raw_fd(), block_end as libc::off_t, libc::SEEK_DATA) };
        // ENXIO: no data after `block_end`. Any other answer (data, or an error) is "maybe".
        !(next < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO))
    }

    /// fsyncs the file if it was written since the last sync.
    pub fn sync_if_dirty(&self) -> io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = self.file.sync_data()
        {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// Number of leading slots (from `first_offset`) for which `pred` holds, assuming it
    /// holds for a prefix (binary search).
    fn partition_point(&self, pred: impl Fn(Option<IndexEntry>) -> bool) -> u64 {
        let (mut lo, mut hi) = (0u64, self.capacity);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.entry(self.first_offset + mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// The index of one queue plus its published offset range.
#[derive(Debug)]
pub struct QueueIndex {
    pub topic: Arc<str>,
    pub queue_id: u32,
    pub dir: PathBuf,
    /// Sorted by `first_offset`, contiguous.
    files: RwLock<Vec<Arc<IndexFile>>>,
    /// First readable offset (moves up with retention).
    start: AtomicU64,
    /// One past the last readable offset (published by the writer).
    end: AtomicU64,
    entries_per_file: u64,
    /// A file or the directory itself was created since the last [`QueueIndex::sync`].
    dir_dirty: AtomicBool,
}

impl QueueIndex {
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// For a queue without index files (recovery found its directory empty or missing):
    /// take `offset` as its start and end, as the log says.
    pub fn reset_empty(&self, offset: u64) {
        debug_assert!(self.files().is_empty());
        self.start.store(offset, Ordering::Release);
        self.end.store(offset, Ordering::Release);
    }

    /// Makes offsets below `end` readable. Only called in log order, so it only grows.
    pub fn publish(&self, end: u64) {
        self.end.fetch_max(end, Ordering::AcqRel);
    }

    pub fn files(&self) -> Vec<Arc<IndexFile>> {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The file holding `offset`, if any.
    pub fn file_for(&self, offset: u64) -> Option<Arc<IndexFile>> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let i = files.partition_point(|f| f.first_offset <= offset);
        let f = files.get(i.checked_sub(1)?)?;
        (offset < f.end_offset()).then(|| f.clone())
    }

    /// The entry of a published offset.
    pub fn entry(&self, offset: u64) -> Option<IndexEntry> {
        self.file_for(offset)?.entry(offset)
    }

    /// Writes entries for offsets `first, first + 1, …`, creating files as needed.
    pub fn write_entries(&self, first: u64, encoded: &[u8]) -> io::Result<()> {
        let mut offset = first;
        let mut rest = encoded;
        while !rest.is_empty() {
            let file = self.file_for_write(offset)?;
            let room = (file.end_offset() - offset) as usize * INDEX_ENTRY_LEN;
            let (now, later) = rest.split_at(room.min(rest.len()));
            file.write(offset, now)?;
            offset += (now.len() / INDEX_ENTRY_LEN) as u64;
            rest = later;
        }
        Ok(())
    }

    /// Creates the index file that will hold `offset` (a queue resumed at `offset`: the file
    /// keeps the queue's start across restarts before any record is written).
    pub fn ensure_file(&self, offset: u64) -> io::Result<()> {
        self.file_for_write(offset).map(|_| ())
    }

    fn file_for_write(&self, offset: u64) -> io::Result<Arc<IndexFile>> {
        if let Some(f) = self.file_for(offset) {
            return Ok(f);
        }
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        // Offsets are written in order, so a missing file is the next one (or the first).
        let first = files.last().map_or(offset, |f| f.end_offset());
        if offset < first || offset >= first + self.entries_per_file {
            return Err(io::Error::other(format!(
                "index write at offset {offset} is not contiguous with the next file at {first}"
            )));
        }
        let f = Arc::new(IndexFile::create(&self.dir, first, self.entries_per_file)?);
        files.push(f.clone());
        self.dir_dirty.store(true, Ordering::Release);
        Ok(f)
    }

    /// Clears entries at and above `from` (a rolled-back or torn tail). Files that start
    /// above it are deleted, except the first file, which always remains so the queue keeps
    /// its offsets across restarts.
    pub fn clear_from(&self, from: u64) -> io::Result<()> {
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        while files.len() > 1 && files.last().is_some_and(|f| f.first_offset >= from) {
            if let Some(f) = files.pop() {
                fs::remove_file(&f.path)?;
            }
        }
        if let Some(f) = files.last() {
            f.clear_from(from)?;
        }
        Ok(())
    }

    /// Moves the readable start up to the first entry at or above `log_start` and deletes
    /// files wholly below it (never the last one). Returns the number of files deleted.
    pub fn retire_below(&self, log_start: u64) -> io::Result<usize> {
        let end = self.end();
        let start = self.start();
        let new_start = self.first_offset_at_or_above(log_start, start, end);
        self.start.fetch_max(new_start, Ordering::AcqRel);
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        let mut deleted = 0;
        while files.len() > 1 && files[0].end_offset() <= new_start {
            let f = files.remove(0);
            fs::remove_file(&f.path)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// The first offset in `[lo, hi)` whose entry is at or above `log_start` (`hi` if none).
    fn first_offset_at_or_above(&self, log_start: u64, lo: u64, hi: u64) -> u64 {
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid) {
                Some(e) if e.log_position < log_start => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// Makes everything written so far durable: dirty files, and the directory entries of
    /// files (and of the queue directory) created since the last call.
    pub fn sync(&self) -> io::Result<()> {
        for f in self.files() {
            f.sync_if_dirty()?;
        }
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            let res = fsync_dir(&self.dir).and_then(|()| match self.dir.parent() {
                Some(parent) => fsync_dir(parent),
                None => Ok(()),
            });
            if let Err(e) = res {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// All queue indexes under `index/`, keyed by topic then queue id.
pub type QueueMap = FastMap<Arc<str>, FastMap<u32, Arc<QueueIndex>>>;

/// Escapes a topic into a directory name: `[A-Za-z0-9_-]` stay, anything else is `%XX`;
/// very long names are shortened and made unique with a hash. The real name is in `TOPIC`.
/// Whether a write through a shared map into blocks reserved with `fallocate` needs no more
/// space on `file`'s file system, so it cannot fault on a full disk: ext4, XFS and tmpfs.
fn reservations_hold(file: &File) -> bool {
    use super::fs::magic;
    use std::os::fd::AsRawFd;
    super::fs::on_file_system(file.as_raw_fd(), &[magic::EXT4, magic::XFS, magic::TMPFS])
}

pub fn topic_dir_name(topic: &str) -> String {
    let mut s = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.is_empty() {
        s.push_str("%empty");
    }
    if s.len() > 200 {
        let hash = super::format::message_key_hash("topic-dir", topic);
        s.truncate(150);
        s.push_str(&format!("~{hash:016x}"));
    }
    s
}

/// Creates the index of a new queue (directories and `TOPIC` file). Directory entries are
/// made durable by the caller's next checkpoint; until then the log replay recreates them.
pub fn create_queue(
    root: &Path,
    topic: Arc<str>,
    queue_id: u32,
    entries_per_file: u64,
    start_offset: u64,
) -> io::Result<QueueIndex> {
    let topic_dir = root.join(topic_dir_name(&topic));
    if !topic_dir.join(TOPIC_FILE).exists() {
        fs::create_dir_all(&topic_dir)?;
        write_file_atomically(&topic_dir.join(TOPIC_FILE), topic.as_bytes())?;
        fsync_dir(root)?;
    }
    let dir = topic_dir.join(queue_id.to_string());
    fs::create_dir_all(&dir)?;
    Ok(QueueIndex {
        topic,
        queue_id,
        dir,
        files: RwLock::new(Vec::new()),
        start: AtomicU64::new(start_offset),
        end: AtomicU64::new(start_offset),
        entries_per_file,
        dir_dirty: AtomicBool::new(true),
    })
}

/// What [`load_queues`] found for one queue, before the log replay.
pub struct LoadedQueue {
    pub index: Arc<QueueIndex>,
    /// Whether any index file existed (an empty queue directory means "offsets unknown").
    pub had_files: bool,
}

/// Opens every queue index under `root`. Entries at log positions `>= durable_position`
/// (written after the last checkpoint, possibly torn) are cleared: the caller re-derives them
/// from the log. The queue start is the first entry at or above `log_start`.
pub fn load_queues(
    root: &Path,
    durable_position: u64,
    log_start: u64,
    entries_per_file: u64,
) -> io::Result<Vec<LoadedQueue>> {
    let mut out = Vec::new();
    for topic_entry in fs::read_dir(root)? {
        let topic_dir = topic_entry?.path();
        if !topic_dir.is_dir() {
            continue;
        }
        let topic: Arc<str> = match fs::read_to_string(topic_dir.join(TOPIC_FILE)) {
            Ok(t) => t.into(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Created but never got its name file: nothing was checkpointed in it.
                tracing::warn!(dir = %topic_dir.display(), "removing topic index directory without a TOPIC file");
                fs::remove_dir_all(&topic_dir)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        for queue_entry in fs::read_dir(&topic_dir)? {
            let queue_dir = queue_entry?.path();
            let Some(queue_id) = queue_dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if !queue_dir.is_dir() {
                continue;
            }
            out.push(load_queue(topic.clone(), queue_id, queue_dir, durable_position, log_start, entries_per_file)?);
        }
    }
    Ok(out)
}

fn load_queue(
    topic: Arc<str>,
    queue_id: u32,
    dir: PathBuf,
    durable_position: u64,
    log_start: u64,
    entries_per_file: u64,
) -> io::Result<LoadedQueue> {
    let mut files = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".tmp") {
            fs::remove_file(&path)?;
            continue;
        }
        let Some(first) = name.strip_suffix(INDEX_SUFFIX).and_then(|d| d.parse::<u64>().ok()) else {
            continue;
        };
        files.push(Arc::new(IndexFile::open(path, first)?));
    }
    files.sort_by_key(|f| f.first_offset);
    // Keep the longest contiguous run from the first file; anything after a gap is junk
    // from an interrupted creation and holds nothing durable.
    let mut keep = files.len().min(1);
    while keep < files.len() && files[keep].first_offset == files[keep - 1].end_offset() {
        keep += 1;
    }
    for f in files.drain(keep..) {
        tracing::warn!(file = %f.path.display(), "removing non-contiguous queue index file");
        fs::remove_file(&f.path)?;
    }
    let had_files = !files.is_empty();
    let durable = |e: Option<IndexEntry>| e.is_some_and(|e| e.log_position < durable_position);
    // End: the entries below the checkpoint form a prefix of the queue.
    let mut end = files.first().map_or(0, |f| f.first_offset);
    for f in files.iter().rev() {
        let n = f.partition_point(durable);
        if n > 0 || f.first_offset == end {
            end = f.first_offset + n;
            break;
        }
    }
    let index = QueueIndex {
        topic,
        queue_id,
        dir,
        files: RwLock::new(files),
        start: AtomicU64::new(end),
        end: AtomicU64::new(end),
        entries_per_file,
        dir_dirty: AtomicBool::new(false),
    };
    // Entries above the end are stale (written after the checkpoint). Clearing costs an
    // fsync per queue, so only do it where something is there (normally after a crash).
    let stale = {
        let files = index.files();
        files.iter().any(|f| f.first_offset > end)
            || files.iter().rev().find(|f| f.first_offset <= end).is_some_and(|f| f.may_have_data_from(end))
    };
    if stale {
        index.clear_from(end)?;
    }
    let first = index.files().first().map_or(end, |f| f.first_offset);
    let start = index.first_offset_at_or_above(log_start, first, end);
    index.start.store(start, Ordering::Release);
    Ok(LoadedQueue { index: Arc::new(index), had_files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(pos: u64) -> IndexEntry {
        IndexEntry { log_position: pos, size: 100, tag_hash: pos * 3, store_timestamp_ms: pos as i64 }
    }

    fn encode(entries: &[IndexEntry]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.encode()).collect()
    }

    #[test]
    fn topic_dir_names_are_safe() {
        assert_eq!(topic_dir_name("orders_1-a"), "orders_1-a");
        assert_eq!(topic_dir_name("%RETRY%g|x"), "%25RETRY%25g%7Cx");
        assert_eq!(topic_dir_name(".."), "%2E%2E");
        assert_eq!(topic_dir_name("a/b"), "a%2Fb");
        let long = "|".repeat(127);
        assert!(topic_dir_name(&long).len() <= 200);
        assert_ne!(topic_dir_name(&long), topic_dir_name(&"|".repeat(126)));
    }

    /// Entries written through the map (blocks reserved ahead) and with `pwrite` (a file system
    /// that cannot reserve) read back the same, also after a roll-back punched the tail, and
    /// from a fresh open of the file.
    #[test]
    fn entries_round_trip_through_the_map_and_through_pwrite() {
        let dir = tempfile::tempdir().unwrap();
        for (name, pwrite) in [("mapped", false), ("pwrite", true)] {
            let sub = dir.path().join(name);
            fs::create_dir_all(&sub).unwrap();
            let f = IndexFile::create(&sub, 0, 4096).unwrap();
            if pwrite {
                f.reserved.store(u64::MAX, Ordering::Release);
            }
            let entries: Vec<IndexEntry> = (0..3000u64).map(|i| entry(i * 1000 + 1)).collect();
            for (i, chunk) in entries.chunks(7).enumerate() {
                f.write(i as u64 * 7, &encode(chunk)).unwrap();
            }
            let reserved = f.reserved.load(Ordering::Acquire);
            match pwrite {
                true => assert_eq!(reserved, u64::MAX, "{name}"),
                false if reservations_hold(&f.file) => {
                    assert!(reserved >= 3000 * INDEX_ENTRY_LEN as u64, "{name}: reserved {reserved}")
                }
                false => assert_eq!(reserved, u64::MAX, "{name}: this file system falls back to pwrite"),
            }
            f.clear_from(2000).unwrap();
            assert!(f.reserved.load(Ordering::Acquire) <= 2000 * INDEX_ENTRY_LEN as u64 || pwrite);
            assert_eq!(f.entry(2500), None, "{name}: cleared");
            f.write(2000, &encode(&entries[2000..2100])).unwrap();
            for i in (0..2100u64).step_by(13) {
                assert_eq!(f.entry(i), Some(entries[i as usize]), "{name}: entry {i}");
            }
            f.sync_if_dirty().unwrap();
            let reopened = IndexFile::open(f.path.clone(), 0).unwrap();
            assert_eq!(reopened.entry(2099), Some(entries[2099]), "{name}");
            assert_eq!(reopened.entry(2100), None, "{name}");
        }
    }

    #[test]
    fn writes_span_files_and_reload_up_to_the_durable_position() {
        let root = tempfile::tempdir().unwrap();
        let q = create_queue(root.path(), "t".into(), 0, 4, 0).unwrap();
        let entries: Vec<_> = (0..10).map(|i| entry(i * 100)).collect();
        q.write_entries(0, &encode(&entries[..3])).unwrap();
        q.write_entries(3, &encode(&entries[3..])).unwrap();
        q.publish(10);
        assert_eq!(q.files().len(), 3);
        for i in 0..10 {
            assert_eq!(q.entry(i), Some(entries[i as usize]));
        }
        // Positions >= 650 were not covered by a checkpoint: offsets 7.. are cleared.
        let loaded = load_queues(root.path(), 650, 0, 4).unwrap();
        assert_eq!(loaded.len(), 1);
        let q2 = &loaded[0].index;
        assert_eq!((q2.start(), q2.end()), (0, 7));
        assert_eq!(q2.entry(6), Some(entries[6]));
        assert_eq!(q2.entry(7), None);
        assert_eq!(q2.files().len(), 2);
        // Retention: log starts at 350 → offsets 0..4 are gone, first file deleted.
        assert_eq!(q2.retire_below(350).unwrap(), 1);
        assert_eq!(q2.start(), 4);
    }

    #[test]
    fn a_queue_keeps_its_offsets_when_nothing_is_durable() {
        let root = tempfile::tempdir().unwrap();
        let q = create_queue(root.path(), "t".into(), 1, 4, 0).unwrap();
        q.write_entries(0, &encode(&(0..6).map(|i| entry(1000 + i)).collect::<Vec<_>>())).unwrap();
        q.retire_below(0).unwrap();
        let loaded = load_queues(root.path(), 0, 0, 4).unwrap();
        assert_eq!((loaded[0].index.start(), loaded[0].index.end()), (0, 0));
        assert!(loaded[0].had_files);
    }

    proptest! {
        /// Whatever prefix of entries is durable, reload finds exactly that prefix.
        #[test]
        fn reload_finds_the_durable_prefix(n in 0u64..400, durable in 0u64..45_000, per_file in 1u64..300) {
            let root = tempfile::tempdir().unwrap();
            let q = create_queue(root.path(), "t".into(), 0, per_file, 0).unwrap();
            let entries: Vec<_> = (0..n).map(|i| entry(i * 100 + 7)).collect();
            q.write_entries(0, &encode(&entries)).unwrap();
            let loaded = load_queues(root.path(), durable, 0, per_file).unwrap();
            let expected = entries.iter().filter(|e| e.log_position < durable).count() as u64;
            prop_assert_eq!(loaded[0].index.end(), expected);
            for i in 0..expected {
                prop_assert_eq!(loaded[0].index.entry(i), Some(entries[i as usize]));
            }
            prop_assert_eq!(loaded[0].index.entry(expected), None);
        }
    }
}
