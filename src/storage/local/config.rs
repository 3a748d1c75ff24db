//! [`StorageConfig`]: every knob of the local commit log, with RocketMQ-like defaults, and
//! its validation.

use std::path::PathBuf;
use std::time::Duration;

use super::fs::invalid_input;
use crate::storage::{FlushMode, StorageResult};

/// Configuration of [`CommitLog`](super::CommitLog). Build with [`StorageConfig::new`] and
/// override fields as needed.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Data directory (`commitlog/`, `index/`, `keys/`, `checkpoint` live under it).
    /// Default: `./data/store`.
    pub dir: PathBuf,
    /// Size of one commit-log segment file (RocketMQ `mappedFileSizeCommitLog`). A record
    /// never spans segments, so this also bounds the largest message.
    /// Default: 1 GiB. Minimum: 64 KiB.
    pub segment_size: u64,
    /// When appends are acknowledged (RocketMQ `flushDiskType`). `Async` carries the fsync
    /// interval. Default: `Sync`.
    pub flush: FlushMode,
    /// How often the derived data (queue indexes) is fsynced and a checkpoint written;
    /// bounds the log replayed after a crash. Default: 1 s.
    pub checkpoint_interval: Duration,
    /// Sealed segments older than this are deleted (RocketMQ `fileReservedTime`).
    /// Default: 72 h.
    pub file_reserved_time: Duration,
    /// When the file system holding `dir` is fuller than this, the oldest sealed segments are
    /// deleted regardless of age (RocketMQ `diskMaxUsedSpaceRatio`). Default: 0.75.
    pub disk_max_used_ratio: f64,
    /// How often retention runs. Default: 10 s.
    pub retention_interval: Duration,
    /// Entries per queue-index file (32 bytes each; files are sparse). Default: 262 144
    /// (8 MiB). Minimum: 1024.
    pub queue_index_entries_per_file: u64,
    /// The writer stops adding appends to a group-commit batch beyond this many bytes.
    /// Default: 8 MiB.
    pub max_batch_bytes: usize,
    /// Key-index entries kept in memory before they are written as a run file.
    /// Default: 262 144 (4 MiB).
    pub key_index_memtable_entries: usize,
    /// Largest span of log one in-memory key-index table may cover; bounds the log replayed
    /// after a crash to rebuild it. Default: 256 MiB.
    pub key_index_max_log_span: u64,
    /// `Sync` mode on ext4 and XFS: bytes past the end of the log that a background thread keeps
    /// zero-filled, so group commits mostly sync no block-allocation metadata (`zero_ahead.rs`).
    /// 0 turns it off; at least 2 MiB otherwise. Default: 8 MiB.
    pub zero_ahead_bytes: u64,
    /// Bytes of the newest fsynced log left in the page cache: on every checkpoint the
    /// maintenance thread drops the log's older pages from it (and from this process's read
    /// mapping), so the log's share of memory stays near this size however much is written.
    /// Readers further behind read from the disk. 0 leaves the page cache to the kernel.
    /// Default: 1 GiB.
    pub page_cache_window: u64,
    /// Where a log opened in an empty directory starts (cluster take-over of a shard whose
    /// older data is in the object store). Ignored when the directory holds a log.
    /// Default: `None` (position 0, every queue at offset 0).
    pub resume: Option<ResumePoint>,
}

/// The start of a log continuing another one: its first segment begins at `position`, and
/// each listed queue's first offset is its `next_offset` (offsets below it are not local).
/// Queues not listed start at 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePoint {
    pub position: u64,
    pub queues: Vec<ResumeQueue>,
}

/// One queue of a [`ResumePoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeQueue {
    pub topic: String,
    pub queue_id: u32,
    pub next_offset: u64,
}

impl StorageConfig {
    /// Defaults, with the data directory set.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), ..Self::default() }
    }

    /// Rejects impossible values.
    pub fn validate(&self) -> StorageResult<()> {
        if self.segment_size < 64 * 1024 {
            return Err(invalid_input(format!("segment size {} is below the minimum of 64 KiB", self.segment_size)));
        }
        if self.segment_size > u32::MAX as u64 {
            // Record lengths are u32, and a record may fill a segment.
            return Err(invalid_input(format!("segment size {} is above the maximum of 4 GiB - 1", self.segment_size)));
        }
        if !(self.disk_max_used_ratio > 0.0 && self.disk_max_used_ratio <= 1.0) {
            return Err(invalid_input(format!("disk max used ratio {} must be in (0, 1]", self.disk_max_used_ratio)));
        }
        if self.queue_index_entries_per_file < 1024 {
            return Err(invalid_input("queue index entries per file must be at least 1024"));
        }
        if self.key_index_memtable_entries == 0 || self.max_batch_bytes == 0 {
            return Err(invalid_input("key index memtable entries and max batch bytes must be positive"));
        }
        for (name, d) in
            [("checkpoint interval", self.checkpoint_interval), ("retention interval", self.retention_interval)]
        {
            if d.is_zero() {
                return Err(invalid_input(format!("{name} must be positive")));
            }
        }
        if let FlushMode::Async { interval } = self.flush
            && interval.is_zero()
        {
            return Err(invalid_input("async flush interval must be positive"));
        }
        Ok(())
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data/store"),
            segment_size: 1 << 30,
            flush: FlushMode::Sync,
            checkpoint_interval: Duration::from_secs(1),
            file_reserved_time: Duration::from_secs(72 * 3600),
            disk_max_used_ratio: 0.75,
            retention_interval: Duration::from_secs(10),
            queue_index_entries_per_file: 262_144,
            max_batch_bytes: 8 << 20,
            key_index_memtable_entries: 262_144,
            key_index_max_log_span: 256 << 20,
            zero_ahead_bytes: 8 << 20,
            page_cache_window: 1 << 30,
            resume: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_rejected() {
        StorageConfig::new("/tmp/x").validate().unwrap();
        let mut c = StorageConfig::new("/tmp/x");
        c.segment_size = 10;
        assert!(c.validate().is_err());
        let mut c = StorageConfig::new("/tmp/x");
        c.disk_max_used_ratio = 1.5;
        assert!(c.validate().is_err());
        let mut c = StorageConfig::new("/tmp/x");
        c.flush = FlushMode::Async { interval: Duration::ZERO };
        assert!(c.validate().is_err());
    }
}
