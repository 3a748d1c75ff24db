//! The on-disk timer index: scheduled messages ordered by due time, so millions of them cost
//! disk, not memory. The messages themselves stay where they were stored once (the broker's
//! timer topic); this index holds 32-byte references to them in time buckets.
//!
//! Layout: one append-only file per bucket of `bucket_ms` (default one minute) under
//! `<dataDir>/timer/`, named by the bucket number. An entry is `due_ms i64, offset u64,
//! log_position u64, kind u32, crc32c u32` (little endian; the CRC covers the first 28 bytes),
//! so a torn or damaged tail is dropped on read. Entries are buffered in memory per bucket and
//! written out at the next checkpoint (or when the buffer passes [`MAX_BUFFERED`]): messages
//! scheduled at random times then cost one append per touched bucket per checkpoint, not one
//! file write each. Reads see buffered entries too. The broker's [`TimerIndex::checkpoint`]
//! writes the buffer, fsyncs every bucket written since the last one and then stores the
//! broker's checkpoint blob (tmp file + rename); after a crash the broker re-indexes what its
//! log holds past that checkpoint (entries may then appear twice: readers deduplicate).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{StorageError, StorageResult};

/// One entry of the timer index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub due_ms: i64,
    /// Offset of the scheduled message in the broker's timer queue.
    pub offset: u64,
    /// Log position of that message (retention must keep it until it fires).
    pub log_position: u64,
    /// A recall: the scheduled message at `offset` must not fire.
    pub cancel: bool,
}

/// Scheduled-message references by due time.
pub trait TimerIndex: Send + Sync + 'static {
    /// Width of one bucket in milliseconds.
    fn bucket_ms(&self) -> i64;
    /// Appends entries to the buckets of their due times (durable after the next checkpoint).
    fn add(&self, entries: &[TimerEntry]) -> StorageResult<()>;
    /// The entries of one bucket in the order written (empty if it has no file).
    fn bucket(&self, bucket: i64) -> StorageResult<Vec<TimerEntry>>;
    /// Buckets that have entries, ascending.
    fn buckets(&self) -> StorageResult<Vec<i64>>;
    /// Drops a bucket whose entries have all fired.
    fn remove_bucket(&self, bucket: i64) -> StorageResult<()>;
    /// Makes every entry added so far durable, then stores `blob` atomically.
    fn checkpoint(&self, blob: &[u8]) -> StorageResult<()>;
    /// The last stored checkpoint blob.
    fn load_checkpoint(&self) -> StorageResult<Option<Vec<u8>>>;
}

const ENTRY_LEN: usize = 32;
const KIND_SCHEDULE: u32 = 1;
const KIND_CANCEL: u32 = 2;
const SUFFIX: &str = ".tmr";
const CHECKPOINT: &str = "checkpoint";
/// Most bucket files kept open for appending.
const MAX_OPEN: usize = 256;
/// Buffered entry bytes that trigger a write-out before the next checkpoint.
const MAX_BUFFERED: usize = 8 << 20;

/// [`TimerIndex`] in bucket files under one directory.
pub struct BucketFiles {
    dir: PathBuf,
    bucket_ms: i64,
    state: Mutex<FilesState>,
}

#[derive(Default)]
struct FilesState {
    open: HashMap<i64, File>,
    /// Encoded entries not written to their files yet, by bucket.
    buffer: HashMap<i64, Vec<u8>>,
    buffered: usize,
    /// Written since the last checkpoint (to fsync).
    dirty: HashSet<i64>,
}

fn io(context: impl Into<String>, source: std::io::Error) -> StorageError {
    StorageError::Io { context: context.into(), source }
}

impl BucketFiles {
    pub fn open(dir: &Path, bucket_ms: i64) -> StorageResult<BucketFiles> {
        fs::create_dir_all(dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        Ok(BucketFiles {
            dir: dir.to_path_buf(),
            bucket_ms: bucket_ms.max(1),
            state: Mutex::new(FilesState::default()),
        })
    }

    fn path(&self, bucket: i64) -> PathBuf {
        self.dir.join(format!("{bucket:012}{SUFFIX}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FilesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BucketFiles {
    /// Appends the buffered entries to their bucket files (no fsync).
    fn write_out(&self, st: &mut FilesState) -> StorageResult<()> {
        let buffer = std::mem::take(&mut st.buffer);
        st.buffered = 0;
        let mut failed = None;
        for (bucket, bytes) in buffer {
            if failed.is_some() {
                st.buffered += bytes.len();
                st.buffer.insert(bucket, bytes);
                continue;
            }
            if let Err(e) = self.append_to(st, bucket, &bytes) {
                st.buffered += bytes.len();
                st.buffer.insert(bucket, bytes);
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn append_to(&self, st: &mut FilesState, bucket: i64, bytes: &[u8]) -> StorageResult<()> {
        if !st.open.contains_key(&bucket) {
            if st.open.len() >= MAX_OPEN {
                st.open.clear();
            }
            let path = self.path(bucket);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io(format!("opening {}", path.display()), e))?;
            // A torn entry at the end (crash mid-write) would misalign what follows: cut it.
            let len = file.metadata().map_err(|e| io(format!("reading {}", path.display()), e))?.len();
            if len % ENTRY_LEN as u64 != 0 {
                file.set_len(len - len % ENTRY_LEN as u64)
                    .map_err(|e| io(format!("truncating {}", path.display()), e))?;
            }
            st.open.insert(bucket, file);
        }
        let file = st.open.get_mut(&bucket).ok_or_else(|| io("timer bucket", ErrorKind::NotFound.into()))?;
        file.write_all(bytes).map_err(|e| io(format!("writing timer bucket {bucket}"), e))?;
        st.dirty.insert(bucket);
        Ok(())
    }
}

fn encode(e: &TimerEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&e.due_ms.to_le_bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.log_position.to_le_bytes());
    out.extend_from_slice(&(if e.cancel { KIND_CANCEL } else { KIND_SCHEDULE }).to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn decode(b: &[u8]) -> Option<TimerEntry> {
    let word = |i: usize| -> Option<[u8; 8]> { b.get(i..i + 8)?.try_into().ok() };
    let half = |i: usize| -> Option<[u8; 4]> { b.get(i..i + 4)?.try_into().ok() };
    if u32::from_le_bytes(half(28)?) != crc32c::crc32c(b.get(..28)?) {
        return None;
    }
    let cancel = match u32::from_le_bytes(half(24)?) {
        KIND_SCHEDULE => false,
        KIND_CANCEL => true,
        _ => return None,
    };
    Some(TimerEntry {
        due_ms: i64::from_le_bytes(word(0)?),
        offset: u64::from_le_bytes(word(8)?),
        log_position: u64::from_le_bytes(word(16)?),
        cancel,
    })
}

impl TimerIndex for BucketFiles {
    fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    fn add(&self, entries: &[TimerEntry]) -> StorageResult<()> {
        let mut st = self.lock();
        for e in entries {
            encode(e, st.buffer.entry(e.due_ms.div_euclid(self.bucket_ms)).or_default());
        }
        st.buffered += entries.len() * ENTRY_LEN;
        if st.buffered >= MAX_BUFFERED {
            self.write_out(&mut st)?;
        }
        Ok(())
    }

    fn bucket(&self, bucket: i64) -> StorageResult<Vec<TimerEntry>> {
        let path = self.path(bucket);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| io(format!("reading {}", path.display()), e))?;
                // A torn entry at the end: ignore it (the next write-out cuts it).
                bytes.truncate(bytes.len() - bytes.len() % ENTRY_LEN);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("opening {}", path.display()), e)),
        };
        if let Some(buffered) = self.lock().buffer.get(&bucket) {
            bytes.extend_from_slice(buffered);
        }
        let mut out = Vec::with_capacity(bytes.len() / ENTRY_LEN);
        let mut damaged = 0usize;
        for chunk in bytes.chunks_exact(ENTRY_LEN) {
            match decode(chunk) {
                Some(e) => out.push(e),
                None => damaged += 1,
            }
        }
        if damaged > 0 {
            tracing::error!(file = %path.display(), damaged, "damaged timer index entries skipped (entries written after the last timer checkpoint are re-indexed from the log)");
        }
        Ok(out)
    }

    fn buckets(&self) -> StorageResult<Vec<i64>> {
        let mut out = Vec::new();
        let dir = fs::read_dir(&self.dir).map_err(|e| io(format!("listing {}", self.dir.display()), e))?;
        for entry in dir.flatten() {
            let name = entry.file_name();
            if let Some(b) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse().ok()) {
                out.push(b);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn remove_bucket(&self, bucket: i64) -> StorageResult<()> {
        let mut st = self.lock();
        st.open.remove(&bucket);
        st.dirty.remove(&bucket);
        if let Some(b) = st.buffer.remove(&bucket) {
            st.buffered -= b.len();
        }
        match fs::remove_file(self.path(bucket)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing timer bucket {bucket}"), e)),
        }
    }

    fn checkpoint(&self, blob: &[u8]) -> StorageResult<()> {
        let dirty: Vec<i64> = {
            let mut st = self.lock();
            self.write_out(&mut st)?;
            std::mem::take(&mut st.dirty).into_iter().collect()
        };
        for bucket in &dirty {
            let path = self.path(*bucket);
            let synced = File::open(&path).and_then(|f| f.sync_data());
            match synced {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    self.lock().dirty.extend(dirty.iter().copied());
                    return Err(io(format!("syncing {}", path.display()), e));
                }
            }
        }
        let tmp = self.dir.join(format!("{CHECKPOINT}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(blob)?;
            f.sync_data()?;
            fs::rename(&tmp, self.dir.join(CHECKPOINT))?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| io("writing the timer checkpoint", e))
    }

    fn load_checkpoint(&self) -> StorageResult<Option<Vec<u8>>> {
        match fs::read(self.dir.join(CHECKPOINT)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading the timer checkpoint", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(due_ms: i64, offset: u64) -> TimerEntry {
        TimerEntry { due_ms, offset, log_position: offset * 100, cancel: false }
    }

    #[test]
    fn entries_land_in_their_buckets_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let idx = BucketFiles::open(dir.path(), 1000).unwrap();
        idx.add(&[entry(1500, 1), entry(999, 2), entry(-5, 3)]).unwrap();
        idx.add(&[TimerEntry { cancel: true, ..entry(1500, 1) }]).unwrap();
        idx.checkpoint(b"cp").unwrap();
        let idx = BucketFiles::open(dir.path(), 1000).unwrap();
        assert_eq!(idx.buckets().unwrap(), vec![-1, 0, 1]);
        assert_eq!(idx.bucket(1).unwrap(), vec![entry(1500, 1), TimerEntry { cancel: true, ..entry(1500, 1) }]);
        assert_eq!(idx.bucket(0).unwrap(), vec![entry(999, 2)]);
        assert_eq!(idx.load_checkpoint().unwrap().as_deref(), Some(&b"cp"[..]));
        idx.remove_bucket(1).unwrap();
        assert!(idx.bucket(1).unwrap().is_empty());
    }

    #[test]
    fn buffered_entries_are_read_and_written_at_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let idx = BucketFiles::open(dir.path(), 1000).unwrap();
        idx.add(&[entry(10, 1)]).unwrap();
        assert_eq!(idx.bucket(0).unwrap(), vec![entry(10, 1)], "visible before it is written");
        assert!(idx.buckets().unwrap().is_empty(), "no file yet");
        idx.checkpoint(b"").unwrap();
        assert_eq!(idx.buckets().unwrap(), vec![0]);
        assert_eq!(idx.bucket(0).unwrap(), vec![entry(10, 1)], "read once, from the file");
    }

    #[test]
    fn torn_tails_and_damaged_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let idx = BucketFiles::open(dir.path(), 1000).unwrap();
        idx.add(&[entry(10, 1), entry(20, 2)]).unwrap();
        idx.checkpoint(b"").unwrap();
        drop(idx);
        let path = dir.path().join(format!("{:012}{SUFFIX}", 0));
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 0xff; // damage the second entry
        bytes.extend_from_slice(&[1, 2, 3]); // and a torn third
        fs::write(&path, &bytes).unwrap();
        let idx = BucketFiles::open(dir.path(), 1000).unwrap();
        assert_eq!(idx.bucket(0).unwrap(), vec![entry(10, 1)]);
        // Appending after a torn tail realigns the file; entries after a damaged one still read.
        idx.add(&[entry(30, 3)]).unwrap();
        idx.checkpoint(b"").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len() % ENTRY_LEN as u64, 0);
        assert_eq!(idx.bucket(0).unwrap(), vec![entry(10, 1), entry(30, 3)]);
    }
}
