//! Message storage: the [`MessageLog`] trait the broker appends to and reads from, and its
//! implementations.
//!
//! Contract of a `MessageLog`:
//! - Queue offsets are dense per `(topic, queue_id)`, start at 0 and are never reused, even
//!   across crashes: an offset is only handed out (and made readable) once its record is
//!   durable under the configured [`FlushMode`].
//! - `append` resolves only after the flush policy is met (`Sync`: fsynced; `Async`: written
//!   to the OS). A failed write or fsync fails every append of the affected batch; a failed
//!   append is never reported as stored.
//! - `read` never returns a record that failed its CRC check, and never returns bytes beyond
//!   what `append` has acknowledged.
//! - In `Async` mode a crash of the machine (not just the process) can lose acknowledged
//!   records, and their offsets are then handed out again: that is what `Async` trades for
//!   speed. `Sync` has neither problem.
//!
//! Implementations: [`CommitLog`] (durable, file-based; `local/`, see `docs/storage.md`) and
//! [`memory::MemoryLog`] (tests). [`bench`](mod@bench) is the storage benchmark behind
//! `rmq-gateway bench storage`. [`sharded::ShardedLog`] is the log of a cluster node (home
//! log plus the shards it owns).
//!
//! This module must not import protocol (tonic/prost), HTTP or SQL crates.

#[cfg(feature = "bench")]
pub mod bench;
pub mod local;
pub mod memory;
pub mod object;
pub mod record;
pub mod sharded;
pub mod tiered;
pub mod timer_index;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::{CommitLog, ResumePoint, ResumeQueue, StorageConfig, StorageStats};
pub use record::Properties;
pub use timer_index::{BucketFiles, TimerEntry, TimerIndex};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Acknowledge after the batch containing the record has been fsynced.
    Sync,
    /// Acknowledge after the write; fsync on an interval.
    Async { interval: std::time::Duration },
}

/// One message to append.
#[derive(Debug, Clone)]
pub struct AppendMessage {
    pub topic: Arc<str>,
    pub queue_id: u32,
    pub born_timestamp_ms: i64,
    /// Opaque to storage; the broker keeps message-type bits here.
    pub flags: u32,
    /// Hash of the message tag (0 when none), kept in the queue index so tag filters can
    /// skip records without reading them.
    pub tag_hash: u64,
    pub properties: Properties,
    pub body: Bytes,
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub queue_offset: u64,
    pub log_position: u64,
    pub store_timestamp_ms: i64,
}

/// A message read back from the log.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub topic: Arc<str>,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_position: u64,
    pub store_timestamp_ms: i64,
    pub born_timestamp_ms: i64,
    pub flags: u32,
    pub tag_hash: u64,
    pub properties: Properties,
    pub body: Bytes,
}

/// `[start, end)` of readable offsets of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueRange {
    pub start: u64,
    pub end: u64,
}

/// Errors of the message log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk is full: {0}")]
    DiskFull(String),
    #[error("corrupted record at log position {position}: {reason}")]
    Corrupted { position: u64, reason: String },
    #[error("record of {size} bytes does not fit in a segment of {segment_size} bytes")]
    RecordTooLarge { size: u64, segment_size: u64 },
    #[error("the message log is shutting down")]
    ShuttingDown,
    /// The data asked for lies in the object store and is not in the read cache yet: await
    /// [`MessageLog::fetch_remote`] (outside any lock) and read again. A fetch has already
    /// been started in the background, so a caller that cannot wait may simply retry later.
    #[error("{topic}/{queue_id} offset {offset} is in the object store and being fetched; retry")]
    RemoteNotCached { topic: String, queue_id: u32, offset: u64 },
    /// The object store failed a cold read (outage, throttling): retry later.
    #[error("object store read failed: {0}")]
    Remote(String),
    /// Cluster: the queue's shard is not open on this node (owned by another node, or
    /// changing owner). Nothing was written.
    #[error("{topic}/{queue_id} is not served by this node")]
    NotOwner { topic: String, queue_id: u32 },
    /// Cluster: this node lost the lease of the shard (another node may own it now); the
    /// write was refused.
    #[error("fenced: {0}")]
    Fenced(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// The durable, append-only message log with per-queue indexes.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// Appends messages (to any queues) as one group-committed unit and returns, in the same
    /// order, where each landed. All-or-nothing: on error none of them is acknowledged.
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>>;

    /// Like [`MessageLog::append`], but answered once the records are written (in order, after
    /// every append answered before), not once their group commit has synced them: for records
    /// whose loss in a machine crash costs only a redelivery, never an acknowledged message
    /// (the consumer journal's receive records). They become readable and durable with their
    /// batch as usual, and any later append's sync covers them; a failed sync drops them
    /// although they were answered. Logs that answer after the write anyway (`Async` mode,
    /// memory) need not override it.
    async fn append_written(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        self.append(messages).await
    }

    /// Reads up to `max_messages` messages (and roughly at most `max_bytes` of bodies, but at
    /// least one message) of a queue, starting at `offset`. Offsets below the queue start are
    /// clamped to it; an offset at or past the end returns an empty vector.
    ///
    /// A record that fails its checks ends the returned batch early; when it is the first one,
    /// the call fails with [`StorageError::Corrupted`] (the broker decides whether to skip it).
    /// Synchronous and cheap (no fsync, no long lock), but it may page in data from disk.
    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>>;

    /// The tag hashes of up to `max` consecutive messages of a queue from `offset` on, as
    /// `(offset, tag hash)`, answered from the queue index where the log has one (no record is
    /// read): a tag filter skips what it rejects without reading bodies. Stops early at an
    /// index entry that fails its checks. The default reads the records.
    fn tag_hashes(&self, topic: &str, queue_id: u32, offset: u64, max: usize) -> StorageResult<Vec<(u64, u64)>> {
        let batch = self.read(topic, queue_id, offset, max, usize::MAX)?;
        Ok(batch.into_iter().map(|m| (m.queue_offset, m.tag_hash)).collect())
    }

    /// The readable offset range of a queue (`0..0` for a queue never written).
    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange;

    /// Messages whose `UNIQ_KEY` property equals `message_id`.
    fn find_by_message_id(&self, message_id: &str) -> StorageResult<Vec<StoredMessage>>;

    /// Messages of `topic` with `key` among their `KEYS`, newest last, at most `max`.
    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>>;

    /// Keeps retention from deleting log data at or above `position` on behalf of `holder`
    /// (`None` lifts the hold), e.g. scheduled messages that have not fired yet.
    fn hold_retention(&self, holder: &'static str, position: Option<u64>);

    /// Brings the data of `topic`/`queue_id` from `offset` on (roughly `max_bytes` of it)
    /// from the object store into the read cache, after `read` failed with
    /// [`StorageError::RemoteNotCached`]. Call it without holding locks, then read again.
    /// Logs without a remote tier have nothing to fetch.
    async fn fetch_remote(&self, topic: &str, queue_id: u32, offset: u64, max_bytes: usize) -> StorageResult<()> {
        let _ = (topic, queue_id, offset, max_bytes);
        Ok(())
    }

    /// Resolves once the records at `results` (as returned by `append`) are in the object
    /// store and recorded in the manifest: what a topic with `s3` durability waits for
    /// before acknowledging. Logs without a remote tier fail with `StorageError::Remote`.
    async fn persist_remote(&self, results: &[AppendResult]) -> StorageResult<()> {
        if results.is_empty() {
            return Ok(());
        }
        Err(StorageError::Remote("this message log has no object store (storage.tiering is off)".into()))
    }

    /// Figures of the remote tier, if the log has one.
    fn tiering_stats(&self) -> Option<tiered::TieringStats> {
        None
    }

    /// Flushes everything, writes a checkpoint and stops background work.
    async fn close(&self) -> StorageResult<()>;
}
