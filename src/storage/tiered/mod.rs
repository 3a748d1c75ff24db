//! Tiered storage: [`TieredLog`], a [`MessageLog`] over the local [`CommitLog`] that offloads
//! sealed segments to an [`ObjectStore`] and serves reads below the local log start from it.
//!
//! - **Upload** (`upload.rs`): the log goes up in log order as *ranges* `[covered, X)` of one
//!   segment: X is the end of a sealed segment, or (tail uploads, `tail_upload_interval`) the
//!   published end of the active segment. Each range becomes one object (its bytes, then one
//!   queue-index slice per queue; layout below), is `put`, and only then recorded in the
//!   manifest (`MetadataStore::put_segment`, fenced with `TieringSettings::fence`): the
//!   manifest row (base = range start, size = range length) is the truth. A sealed segment
//!   whose whole used range is covered may then be dropped by local retention
//!   (`fileReservedTime` / disk ratio); one not covered is never dropped.
//! - **Remote durability** ([`MessageLog::persist_remote`]): a waiter resolves once the
//!   uploaded range covers its records; it asks for a tail upload, and concurrent waiters
//!   share one (group commit).
//! - **Fencing**: a manifest write refused with `MetadataError::Fenced` (another node owns the
//!   log now) fences the log for good: appends fail with `StorageError::Fenced`, uploads stop,
//!   waiters fail. Object-store failures are retried with capped exponential backoff and jitter,
//!   forever; a rate-limited warning says how many segments and bytes wait.
//! - **Orphans**: objects of this log without a manifest row (a crash between `put` and the
//!   row, or between a remote-retention row delete and the object delete) older than a grace
//!   period are deleted at start and on every remote-retention pass.
//! - **Remote retention**: segments whose last record is older than the remote reserved time
//!   and which local retention already dropped lose their manifest row, then their object.
//! - **Cold reads**: `read` below the local start looks records up in a bounded read-ahead
//!   cache (`cache.rs`) of object ranges: a queue's index chunk (one GET of up to 4096
//!   entries), then the aligned `read_ahead_bytes` block of the object holding the record
//!   (one range GET, shared by every queue with records in it). `read` is synchronous (the
//!   broker calls it under its locks): on a miss it starts the fetch in the background and
//!   fails with [`StorageError::RemoteNotCached`]; callers await
//!   [`MessageLog::fetch_remote`] outside their locks and read again. Records from the object
//!   store are checked (length, CRC, position) exactly like local ones.
//!
//! Object layout: for a range with start `B` and length `S`, bytes `[0, S)` are the
//! log's (log position `p` at object offset `p - B`), followed by, for each
//! `SegmentQueue { first_offset, end_offset, index_pos }`, the 32-byte queue-index entries of
//! those offsets at `[index_pos, index_pos + 32 * (end_offset - first_offset))`. Key:
//! `<prefix>/<2 hex of a hash of (log_id, base)>/<log_id>/<base:020>.seg`.
//!
//! - **Merging**: a sealed segment uploaded as several tail chunks is merged into one object
//!   once wholly covered (`upload.rs`: [`upload::merged_object_key`], one manifest row that
//!   replaces the chunks' rows atomically); the chunk objects go with the orphan sweep.
//!
//! Lookups by message id or key (`find_by_message_id`, `find_by_key`) cover local data only.
//!
//! This module must not import protocol (tonic/prost), HTTP-server or SQL crates.

mod cache;
mod upload;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use self::cache::ReadCache;
use super::local::{INDEX_ENTRY_LEN, decode_index_entry, decode_message};
use super::object::{ObjectError, ObjectStore};
use super::{
    AppendMessage, AppendResult, CommitLog, MessageLog, QueueRange, StorageError, StorageResult, StoredMessage,
};
use crate::metadata::{Fence, MetadataStore, SegmentRecord};

/// Index entries fetched per GET of a queue's index slice (128 KiB).
const INDEX_CHUNK_ENTRIES: u64 = 4096;
/// Stripes of the per-queue fetch locks.
const FETCH_STRIPES: usize = 16;

/// Settings of the tiering engine (`storage.tiering` in the configuration).
#[derive(Debug, Clone)]
pub struct TieringSettings {
    /// Names this node's log in the manifest and in object keys.
    pub log_id: String,
    /// Key prefix of every object (no trailing slash; may be empty).
    pub prefix: String,
    /// Objects whose last record is older than this are deleted (remote `fileReservedTime`).
    pub remote_reserved_time: Duration,
    /// How often the uploader looks for newly sealed segments.
    pub upload_interval: Duration,
    /// First and longest wait between retries of a failed object-store or manifest call.
    pub retry_min_backoff: Duration,
    pub retry_max_backoff: Duration,
    /// Least time between two "segments waiting for upload" warnings.
    pub warn_interval: Duration,
    /// Bound of the cold-read cache.
    pub read_cache_bytes: usize,
    /// Bytes fetched by one data GET of a cold read.
    pub read_ahead_bytes: usize,
    /// Objects without a manifest row younger than this are left alone (an upload may be
    /// between its `put` and its row).
    pub orphan_grace: Duration,
    /// How often remote retention and the orphan sweep run.
    pub remote_retention_interval: Duration,
    /// Cluster: upload the published tail of the active segment at least this often (as
    /// chunks). `None`: only sealed segments go up (the single-node behaviour).
    pub tail_upload_interval: Option<Duration>,
    /// Cluster: the lease every manifest write names (`None`: unfenced writes).
    pub fence: Option<Fence>,
    /// Another node's log opened only to be read (adoption): no background task at all (no
    /// upload, no remote retention, no orphan sweep).
    pub read_only: bool,
}

impl Default for TieringSettings {
    fn default() -> Self {
        TieringSettings {
            log_id: "local".into(),
            prefix: String::new(),
            remote_reserved_time: Duration::from_secs(72 * 3600),
            upload_interval: Duration::from_secs(5),
            retry_min_backoff: Duration::from_millis(200),
            retry_max_backoff: Duration::from_secs(30),
            warn_interval: Duration::from_secs(60),
            read_cache_bytes: 64 << 20,
            read_ahead_bytes: 4 << 20,
            orphan_grace: Duration::from_secs(3600),
            remote_retention_interval: Duration::from_secs(60),
            tail_upload_interval: None,
            fence: None,
            read_only: false,
        }
    }
}

/// Figures of the tiering engine, for the admin API and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TieringStats {
    /// Sealed local segments not uploaded yet, and their used bytes.
    pub waiting_segments: u64,
    pub waiting_bytes: u64,
    /// Segments (objects) in the manifest and their total object size.
    pub remote_segments: u64,
    pub remote_bytes: u64,
    pub uploaded_segments: u64,
    pub uploaded_bytes: u64,
    /// Failed object-store or manifest calls of the uploader (each retried).
    pub upload_failures: u64,
    pub orphans_removed: u64,
    pub remote_segments_expired: u64,
    /// Tail chunks replaced by merged objects (one per sealed segment).
    pub merged_chunks: u64,
    /// Range GETs of cold reads and the bytes they returned.
    pub cold_gets: u64,
    pub cold_get_bytes: u64,
    pub cache_bytes: u64,
    /// Where objects go.
    pub object_store: String,
}

#[derive(Debug, Default)]
struct Counters {
    waiting_segments: AtomicU64,
    waiting_bytes: AtomicU64,
    uploaded_segments: AtomicU64,
    uploaded_bytes: AtomicU64,
    upload_failures: AtomicU64,
    orphans_removed: AtomicU64,
    remote_segments_expired: AtomicU64,
    merged_chunks: AtomicU64,
    cold_gets: AtomicU64,
    cold_get_bytes: AtomicU64,
}

/// Where one queue's messages lie in one tiered segment.
#[derive(Debug, Clone, Copy)]
struct QueueSlice {
    base: u64,
    end_offset: u64,
    index_pos: u64,
}

/// The manifest in memory: segments by base and, per queue, slices by first offset.
#[derive(Debug, Default)]
struct Manifest {
    segments: BTreeMap<u64, Arc<SegmentRecord>>,
    queues: HashMap<(Arc<str>, u32), BTreeMap<u64, QueueSlice>>,
}

impl Manifest {
    fn insert(&mut self, rec: SegmentRecord) {
        let base = rec.base;
        for q in &rec.queues {
            let key: (Arc<str>, u32) = (Arc::from(q.topic.as_str()), q.queue_id);
            self.queues
                .entry(key)
                .or_default()
                .insert(q.first_offset, QueueSlice { base, end_offset: q.end_offset, index_pos: q.index_pos });
        }
        self.segments.insert(base, Arc::new(rec));
    }

    fn remove(&mut self, base: u64) {
        let Some(rec) = self.segments.remove(&base) else { return };
        for q in &rec.queues {
            let key: (Arc<str>, u32) = (Arc::from(q.topic.as_str()), q.queue_id);
            if let Some(slices) = self.queues.get_mut(&key) {
                slices.remove(&q.first_offset);
                if slices.is_empty() {
                    self.queues.remove(&key);
                }
            }
        }
    }

    fn slices(&self, topic: &str, queue_id: u32) -> Option<&BTreeMap<u64, QueueSlice>> {
        self.queues.get(&(Arc::from(topic), queue_id))
    }

    /// `[first, end)` of the queue's offsets in the object store.
    fn range(&self, topic: &str, queue_id: u32) -> Option<(u64, u64)> {
        let s = self.slices(topic, queue_id)?;
        let first = *s.keys().next()?;
        // Slices follow log order, so the last one ends highest (no scan of every chunk).
        let end = s.values().next_back()?.end_offset;
        Some((first, end))
    }

    /// The slice holding `offset`, or else the first one above it.
    fn slice_at_or_after(&self, topic: &str, queue_id: u32, offset: u64) -> Option<(u64, QueueSlice)> {
        let s = self.slices(topic, queue_id)?;
        if let Some((&first, q)) = s.range(..=offset).next_back()
            && offset < q.end_offset
        {
            return Some((first, *q));
        }
        s.range(offset..).next().map(|(&f, q)| (f, *q))
    }
}

pub(crate) struct Inner {
    local: Arc<CommitLog>,
    store: Arc<dyn ObjectStore>,
    meta: Arc<dyn MetadataStore>,
    settings: TieringSettings,
    manifest: RwLock<Manifest>,
    cache: Mutex<ReadCache>,
    /// Background fetches running, by (topic, queue, offset), so a busy reader starts one.
    fetching: Mutex<HashSet<(Arc<str>, u32, u64)>>,
    /// Read-ahead GETs running, by (segment base, block start).
    prefetching: Mutex<HashSet<(u64, u64)>>,
    /// Fetches from one segment run one at a time (locks striped by segment), so concurrent
    /// fetches of the same data (a background fetch and a caller awaiting it, or queues
    /// sharing a block) make one GET: the later ones find it cached.
    fetch_locks: Vec<tokio::sync::Mutex<()>>,
    /// One upload pass at a time (the task's, or `upload_now`'s).
    upload_lock: tokio::sync::Mutex<()>,
    /// Everything of the local log below this position is in the manifest (never goes down).
    /// Waiters of `persist_remote` watch it.
    covered: tokio::sync::watch::Sender<u64>,
    /// A manifest write was fenced: this node lost the log for good.
    fenced: std::sync::atomic::AtomicBool,
    /// A `persist_remote` waiter wants a tail upload (coalesced: one pending pass at most).
    tail_request: tokio::sync::Notify,
    counters: Counters,
    runtime: Option<tokio::runtime::Handle>,
}

/// The message log with a remote tier. Build with [`TieredLog::open`].
pub struct TieredLog {
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for TieredLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredLog").field("store", &self.inner.store.describe()).finish_non_exhaustive()
    }
}

fn remote_error(e: ObjectError) -> StorageError {
    match e {
        ObjectError::NotFound(k) => StorageError::Remote(format!("object `{k}` is missing")),
        ObjectError::Transient(m) | ObjectError::Permanent(m) => StorageError::Remote(m),
    }
}

impl TieredLog {
    /// Wraps `local`: holds back local retention at once (nothing is known to be uploaded
    /// yet), loads the manifest, and starts the background task (uploads, orphan sweep,
    /// remote retention). Must be called inside a Tokio runtime.
    pub async fn open(
        local: Arc<CommitLog>,
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn MetadataStore>,
        settings: TieringSettings,
    ) -> StorageResult<Arc<TieredLog>> {
        local.set_retention_limit(Some(local.log_start()));
        if settings.read_ahead_bytes == 0 || settings.read_cache_bytes == 0 {
            return Err(StorageError::Remote("tiering readAheadBytes and readCacheBytes must be above 0".into()));
        }
        let rows = meta
            .list_segments(&settings.log_id)
            .await
            .map_err(|e| StorageError::Remote(format!("loading the tiering manifest: {e}")))?;
        let mut manifest = Manifest::default();
        let mut remote_end = 0;
        for r in rows {
            remote_end = remote_end.max(r.base + r.size);
            manifest.insert(r);
        }
        let published = local.published_position();
        if remote_end > published {
            tracing::warn!(
                log_id = settings.log_id,
                remote_end,
                local_end = published,
                "the manifest reaches past the local log (a lost local tail?); uploads resume past the manifest end"
            );
        }
        let covered = remote_end.max(local.log_start());
        let inner = Arc::new(Inner {
            cache: Mutex::new(ReadCache::new(settings.read_cache_bytes)),
            local,
            store,
            meta,
            settings,
            manifest: RwLock::new(manifest),
            fetching: Mutex::new(HashSet::new()),
            prefetching: Mutex::new(HashSet::new()),
            fetch_locks: (0..FETCH_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            upload_lock: tokio::sync::Mutex::new(()),
            covered: tokio::sync::watch::Sender::new(covered),
            fenced: std::sync::atomic::AtomicBool::new(false),
            tail_request: tokio::sync::Notify::new(),
            counters: Counters::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        });
        inner.update_retention_limit();
        let stop = CancellationToken::new();
        let task = (!inner.settings.read_only).then(|| tokio::spawn(upload::run(inner.clone(), stop.clone())));
        tracing::info!(
            store = inner.store.describe(),
            log_id = inner.settings.log_id,
            remote_segments = inner.manifest_read().segments.len(),
            "tiered storage on"
        );
        Ok(Arc::new(TieredLog { inner, stop, task: Mutex::new(task) }))
    }

    pub fn local(&self) -> &Arc<CommitLog> {
        &self.inner.local
    }

    pub fn stats(&self) -> TieringStats {
        self.inner.stats()
    }

    /// Runs one upload pass now and waits for it (tests, benchmarks): every sealed segment
    /// (and the published tail when `tail_upload_interval` is set) is uploaded unless `stop`
    /// is cancelled first.
    pub async fn upload_now(&self) {
        let tail = self.inner.settings.tail_upload_interval.is_some();
        upload::upload_pending(&self.inner, &self.stop, tail).await;
    }

    /// Runs the orphan sweep now and waits for it (tests).
    #[cfg(test)]
    pub async fn sweep_now(&self) {
        upload::sweep_orphans(&self.inner).await;
    }

    /// Uploads everything published so far, the tail of the active segment included (the
    /// hand-over of a shard). Fails if the log is fenced or closing before it is all up.
    pub async fn upload_all(&self) -> StorageResult<()> {
        let target = self.inner.local.published_position();
        upload::upload_pending(&self.inner, &self.stop, true).await;
        self.check_covered(target)
    }

    fn check_covered(&self, target: u64) -> StorageResult<()> {
        if self.inner.is_fenced() {
            return Err(self.inner.fenced_error());
        }
        if self.inner.covered_to() < target {
            return Err(StorageError::ShuttingDown);
        }
        Ok(())
    }

    /// Everything of the local log below this position is in the manifest.
    pub fn covered_position(&self) -> u64 {
        self.inner.covered_to()
    }

    /// Whether a manifest write was fenced (another node owns the log now).
    pub fn is_fenced(&self) -> bool {
        self.inner.is_fenced()
    }

    /// Stops uploads at once (an upload in flight is abandoned; its object becomes an
    /// orphan); `persist_remote` waiters fail. The log stays open for reads and appends
    /// until `close`.
    pub fn halt(&self) {
        self.stop.cancel();
    }

    /// Stops uploads at once (an upload in flight is abandoned; its object becomes an
    /// orphan) and closes the local log: the lease of the log was lost.
    pub async fn abandon(&self) -> StorageResult<()> {
        self.close().await
    }

    /// Runs remote retention and the orphan sweep now.
    pub async fn remote_retention_now(&self) {
        upload::remote_retention(&self.inner, &self.stop).await;
        upload::sweep_orphans(&self.inner).await;
    }

    /// The manifest rows this node holds in memory, in base order.
    pub fn manifest(&self) -> Vec<SegmentRecord> {
        self.inner.manifest_read().segments.values().map(|r| (**r).clone()).collect()
    }
}

impl Inner {
    fn covered_to(&self) -> u64 {
        *self.covered.borrow()
    }

    fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    fn fenced_error(&self) -> StorageError {
        StorageError::Fenced(format!(
            "log {} was taken over by another node (lease {:?} is no longer ours)",
            self.settings.log_id, self.settings.fence
        ))
    }

    /// Marks the log fenced and wakes every waiter.
    fn set_fenced(&self) {
        self.fenced.store(true, Ordering::Release);
        self.covered.send_modify(|_| {});
    }

    fn manifest_read(&self) -> std::sync::RwLockReadGuard<'_, Manifest> {
        self.manifest.read().unwrap_or_else(|e| e.into_inner())
    }

    fn manifest_write(&self) -> std::sync::RwLockWriteGuard<'_, Manifest> {
        self.manifest.write().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> TieringStats {
        let c = &self.counters;
        let (remote_segments, remote_bytes) = {
            let m = self.manifest_read();
            (m.segments.len() as u64, m.segments.values().map(|r| r.object_size).sum())
        };
        TieringStats {
            waiting_segments: c.waiting_segments.load(Ordering::Relaxed),
            waiting_bytes: c.waiting_bytes.load(Ordering::Relaxed),
            remote_segments,
            remote_bytes,
            uploaded_segments: c.uploaded_segments.load(Ordering::Relaxed),
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            upload_failures: c.upload_failures.load(Ordering::Relaxed),
            orphans_removed: c.orphans_removed.load(Ordering::Relaxed),
            remote_segments_expired: c.remote_segments_expired.load(Ordering::Relaxed),
            merged_chunks: c.merged_chunks.load(Ordering::Relaxed),
            cold_gets: c.cold_gets.load(Ordering::Relaxed),
            cold_get_bytes: c.cold_get_bytes.load(Ordering::Relaxed),
            cache_bytes: self.cache().used_bytes() as u64,
            object_store: self.store.describe(),
        }
    }

    /// Local retention may drop a segment only if it and every segment before it are in the
    /// manifest: segments ending at or below the covered position.
    fn update_retention_limit(&self) {
        self.local.set_retention_limit(Some(self.covered_to()));
    }

    async fn get(&self, key: &str, range: std::ops::Range<u64>) -> StorageResult<Bytes> {
        let bytes = self.store.get_range(key, range).await.map_err(remote_error)?;
        self.counters.cold_gets.fetch_add(1, Ordering::Relaxed);
        self.counters.cold_get_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// The index entry of `offset` in a slice, from the cache.
    fn cached_entry(&self, topic: &Arc<str>, queue_id: u32, first: u64, s: &QueueSlice, offset: u64) -> Option<Bytes> {
        let chunk = (offset - first) / INDEX_CHUNK_ENTRIES;
        let bytes = self.cache().index_chunk(&(s.base, topic.clone(), queue_id, chunk))?;
        let at = ((offset - first) % INDEX_CHUNK_ENTRIES) as usize * INDEX_ENTRY_LEN;
        (at + INDEX_ENTRY_LEN <= bytes.len()).then(|| bytes.slice(at..at + INDEX_ENTRY_LEN))
    }

    /// Fetches what a read of `offset` needs into the cache: the index chunk, then one range
    /// of up to `read_ahead_bytes` from the record on.
    async fn fetch(&self, topic: &str, queue_id: u32, offset: u64) -> StorageResult<()> {
        let topic: Arc<str> = Arc::from(topic);
        let (first, slice, rec) = {
            let m = self.manifest_read();
            let Some((first, s)) = m.slice_at_or_after(&topic, queue_id, offset) else { return Ok(()) };
            let Some(rec) = m.segments.get(&s.base).cloned() else { return Ok(()) };
            (first, s, rec)
        };
        let stripe = crc32c::crc32c(&rec.base.to_le_bytes()) as usize % FETCH_STRIPES;
        let _serial = self.fetch_locks[stripe].lock().await;
        let offset = offset.max(first);
        let entry = match self.cached_entry(&topic, queue_id, first, &slice, offset) {
            Some(e) => e,
            None => {
                let chunk = (offset - first) / INDEX_CHUNK_ENTRIES;
                let from = first + chunk * INDEX_CHUNK_ENTRIES;
                let to = (from + INDEX_CHUNK_ENTRIES).min(slice.end_offset);
                let start = slice.index_pos + (from - first) * INDEX_ENTRY_LEN as u64;
                let end = slice.index_pos + (to - first) * INDEX_ENTRY_LEN as u64;
                let bytes = self.get(&rec.object_key, start..end).await?;
                if bytes.len() as u64 != end - start {
                    return Err(StorageError::Remote(format!("short index read from `{}`", rec.object_key)));
                }
                self.cache().insert_index_chunk((slice.base, topic.clone(), queue_id, chunk), bytes);
                self.cached_entry(&topic, queue_id, first, &slice, offset)
                    .ok_or_else(|| StorageError::Remote("index chunk vanished from the cache".into()))?
            }
        };
        let Some((position, size, _, _)) = decode_index_entry(&entry) else {
            return Err(StorageError::Corrupted {
                position: rec.base,
                reason: format!("tiered index entry of {topic}/{queue_id} offset {offset} is corrupt"),
            });
        };
        let at = position.checked_sub(rec.base).filter(|a| a + u64::from(size) <= rec.size).ok_or_else(|| {
            StorageError::Corrupted { position, reason: "tiered index entry points outside its segment".into() }
        })?;
        if self.cache().data(rec.base, at, size as usize).is_some() {
            return Ok(());
        }
        // Ranges are aligned blocks of the object, so the queues of a segment share them (no
        // overlapping GETs). A record crossing a block end gets only what is not cached of it:
        // from its own start if its first block is cached, up to its end if its last block is.
        let ahead = self.settings.read_ahead_bytes.max(1) as u64;
        let record_end = at + u64::from(size);
        let (aligned, last_block) = (at / ahead * ahead, record_end / ahead * ahead);
        let cached = |block: u64| self.cache().data(rec.base, block, 1).is_some();
        let start = if cached(aligned) { at } else { aligned };
        let end = if last_block > aligned && cached(last_block) {
            record_end
        } else {
            last_block.saturating_add(ahead).min(rec.size)
        };
        let bytes = self.get(&rec.object_key, start..end).await?;
        if (bytes.len() as u64) < at + u64::from(size) - start {
            return Err(StorageError::Remote(format!("short data read from `{}`", rec.object_key)));
        }
        self.cache().insert_data(rec.base, start, bytes);
        Ok(())
    }

    /// Read-ahead: while a reader consumes the block of `rec` holding `at`, fetches the next
    /// block in the background (one GET per block at a time), so sequential cold reads do not
    /// wait for a GET at every block. Takes the segment's fetch lock and checks the cache
    /// again first, so a reader's own fetch of that block waits for it and finds it cached.
    fn prefetch_next_block(self: &Arc<Self>, rec: &Arc<SegmentRecord>, at: u64) {
        let Some(rt) = &self.runtime else { return };
        let ahead = self.settings.read_ahead_bytes.max(1) as u64;
        let next = (at / ahead + 1) * ahead;
        if next >= rec.size || self.cache().data(rec.base, next, 1).is_some() {
            return;
        }
        if !self.prefetching.lock().unwrap_or_else(|e| e.into_inner()).insert((rec.base, next)) {
            return;
        }
        let inner = self.clone();
        let rec = rec.clone();
        rt.spawn(async move {
            let stripe = crc32c::crc32c(&rec.base.to_le_bytes()) as usize % FETCH_STRIPES;
            let serial = inner.fetch_locks[stripe].lock().await;
            if inner.cache().data(rec.base, next, 1).is_none() {
                match inner.get(&rec.object_key, next..(next + ahead).min(rec.size)).await {
                    Ok(bytes) => inner.cache().insert_data(rec.base, next, bytes),
                    Err(e) => tracing::debug!(object = rec.object_key, error = %e, "cold read-ahead failed"),
                }
            }
            drop(serial);
            inner.prefetching.lock().unwrap_or_else(|e| e.into_inner()).remove(&(rec.base, next));
        });
    }

    /// Starts a background fetch for a read that missed the cache (one per offset at a time).
    fn fetch_in_background(self: &Arc<Self>, topic: &str, queue_id: u32, offset: u64) {
        let Some(rt) = &self.runtime else { return };
        let key = (Arc::<str>::from(topic), queue_id, offset);
        if !self.fetching.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
            return;
        }
        let inner = self.clone();
        rt.spawn(async move {
            if let Err(e) = inner.fetch(&key.0, key.1, key.2).await {
                tracing::warn!(topic = %key.0, queue_id = key.1, offset = key.2, error = %e, "cold read fetch failed");
            }
            inner.fetching.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        });
    }

    /// Reads below the local start from the cache. `Ok(None)`: nothing remote at or after
    /// `offset` below `local_start` (read locally). A miss with nothing read yet is
    /// `RemoteNotCached` (and a fetch is started).
    fn read_remote(
        self: &Arc<Self>,
        topic: &str,
        queue_id: u32,
        offset: u64,
        local_start: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> StorageResult<Option<Vec<StoredMessage>>> {
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut out: Vec<StoredMessage> = Vec::new();
        let mut bytes = 0usize;
        let mut offset = offset;
        // The block last checked for read-ahead, so it is checked once per block per read.
        let mut checked_block: Option<(u64, u64)> = None;
        while out.len() < max_messages && offset < local_start {
            let found = {
                let m = self.manifest_read();
                m.slice_at_or_after(topic, queue_id, offset)
                    .and_then(|(first, s)| m.segments.get(&s.base).map(|r| (first, s, r.clone())))
            };
            let Some((first, slice, rec)) = found else { break };
            if first >= local_start {
                break;
            }
            // A gap (nothing tiered there) is skipped, as local retention skips deleted data.
            offset = offset.max(first);
            if offset >= slice.end_offset {
                break;
            }
            let miss = |out: Vec<StoredMessage>| {
                if out.is_empty() {
                    self.fetch_in_background(topic, queue_id, offset);
                    Err(StorageError::RemoteNotCached { topic: topic.to_string(), queue_id, offset })
                } else {
                    Ok(Some(out))
                }
            };
            let Some(entry) = self.cached_entry(&topic_arc, queue_id, first, &slice, offset) else {
                return miss(out);
            };
            let Some((position, size, _, _)) = decode_index_entry(&entry) else {
                return corrupted_or_partial(
                    out,
                    rec.base,
                    format!("tiered index entry of {topic}/{queue_id} offset {offset} is corrupt"),
                );
            };
            let Some(at) = position.checked_sub(rec.base) else {
                return corrupted_or_partial(out, position, "tiered index entry points below its segment".into());
            };
            let Some(data) = self.cache().data(rec.base, at, size as usize) else {
                return miss(out);
            };
            let block = at / self.settings.read_ahead_bytes.max(1) as u64;
            if checked_block != Some((rec.base, block)) {
                checked_block = Some((rec.base, block));
                self.prefetch_next_block(&rec, at);
            }
            let m = match decode_message(&data, position) {
                Ok(m) if m.queue_id == queue_id && m.queue_offset == offset && &*m.topic == topic => m,
                Ok(m) => {
                    let reason = format!(
                        "tiered index of {topic}/{queue_id} offset {offset} points at {}/{} offset {}",
                        m.topic, m.queue_id, m.queue_offset
                    );
                    return corrupted_or_partial(out, position, reason);
                }
                Err(reason) => return corrupted_or_partial(out, position, reason),
            };
            if !out.is_empty() && bytes + m.body.len() > max_bytes {
                break;
            }
            bytes += m.body.len();
            out.push(StoredMessage { topic: topic_arc.clone(), ..m });
            offset += 1;
        }
        Ok((!out.is_empty()).then_some(out))
    }
}

/// Never serve a bad record: what was read before it, or the error if nothing was.
fn corrupted_or_partial(
    out: Vec<StoredMessage>,
    position: u64,
    reason: String,
) -> StorageResult<Option<Vec<StoredMessage>>> {
    if out.is_empty() {
        tracing::error!(position, reason, "refusing to serve a corrupted tiered record");
        return Err(StorageError::Corrupted { position, reason });
    }
    Ok(Some(out))
}

#[async_trait]
impl MessageLog for TieredLog {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        if self.inner.is_fenced() {
            return Err(self.inner.fenced_error());
        }
        self.inner.local.append(messages).await
    }

    async fn append_written(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        if self.inner.is_fenced() {
            return Err(self.inner.fenced_error());
        }
        self.inner.local.append_written(messages).await
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        let local = self.inner.local.queue_range(topic, queue_id);
        let local_start = if local.end == 0 { u64::MAX } else { local.start };
        if offset < local_start
            && let Some(batch) =
                self.inner.read_remote(topic, queue_id, offset, local_start, max_messages, max_bytes)?
        {
            return Ok(batch);
        }
        let mut batch = self.inner.local.read(topic, queue_id, offset, max_messages, max_bytes)?;
        // Local retention may drop segments while the local read runs; the local log then
        // skips what it dropped (clamps to its new start, or leaves a gap in the batch). What
        // was skipped is in the object store: cut the batch at the first gap, and when it
        // starts past `offset`, read the skipped offsets from the object store first.
        let first = batch.first().map(|m| m.queue_offset);
        let dense = batch.iter().zip(first.unwrap_or(0)..).take_while(|(m, o)| m.queue_offset == *o).count();
        batch.truncate(dense);
        if let Some(first) = first
            && first > offset
            && let Some(remote) = self.inner.read_remote(topic, queue_id, offset, first, max_messages, max_bytes)?
        {
            return Ok(remote);
        }
        Ok(batch)
    }

    fn tag_hashes(&self, topic: &str, queue_id: u32, offset: u64, max: usize) -> StorageResult<Vec<(u64, u64)>> {
        let local = self.inner.local.queue_range(topic, queue_id);
        if local.end > 0 && offset >= local.start {
            return self.inner.local.tag_hashes(topic, queue_id, offset, max);
        }
        // Below the local start: from cached index chunks; a miss ends the answer (the caller
        // then reads records, which fetches).
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut out = Vec::new();
        let mut offset = offset;
        while out.len() < max {
            let found = self.inner.manifest_read().slice_at_or_after(topic, queue_id, offset);
            let Some((first, slice)) = found else { break };
            offset = offset.max(first);
            if local.end > 0 && offset >= local.start {
                break;
            }
            let Some(entry) = self.inner.cached_entry(&topic_arc, queue_id, first, &slice, offset) else { break };
            let Some((_, _, tag_hash, _)) = decode_index_entry(&entry) else { break };
            out.push((offset, tag_hash));
            offset += 1;
        }
        Ok(out)
    }

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        let local = self.inner.local.queue_range(topic, queue_id);
        match self.inner.manifest_read().range(topic, queue_id) {
            Some((first, end)) if local.end == 0 => QueueRange { start: first, end },
            Some((first, end)) => QueueRange { start: first.min(local.start), end: local.end.max(end) },
            None => local,
        }
    }

    fn find_by_message_id(&self, message_id: &str) -> StorageResult<Vec<StoredMessage>> {
        self.inner.local.find_by_message_id(message_id)
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        self.inner.local.find_by_key(topic, key, max)
    }

    fn hold_retention(&self, holder: &'static str, position: Option<u64>) {
        self.inner.local.hold_retention(holder, position);
    }

    fn tiering_stats(&self) -> Option<TieringStats> {
        Some(self.inner.stats())
    }

    async fn fetch_remote(&self, topic: &str, queue_id: u32, offset: u64, _max_bytes: usize) -> StorageResult<()> {
        self.inner.fetch(topic, queue_id, offset).await
    }

    async fn persist_remote(&self, results: &[AppendResult]) -> StorageResult<()> {
        let Some(last) = results.iter().map(|r| r.log_position).max() else { return Ok(()) };
        let mut covered = self.inner.covered.subscribe();
        loop {
            // Chunks end at record boundaries: covering a record's position covers it all.
            if *covered.borrow_and_update() > last {
                return Ok(());
            }
            if self.inner.is_fenced() {
                return Err(self.inner.fenced_error());
            }
            if self.stop.is_cancelled() {
                return Err(StorageError::ShuttingDown);
            }
            // One stored permit at most: every waiter arriving meanwhile shares the next pass.
            self.inner.tail_request.notify_one();
            tokio::select! {
                _ = covered.changed() => {}
                _ = self.stop.cancelled() => {}
                // A pass that raced the request may have ended short of `last`: ask again.
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn close(&self) -> StorageResult<()> {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "tiering task failed");
        }
        self.inner.local.close().await
    }
}
