//! [`CommitLog`]: the durable, file-based [`MessageLog`].
//!
//! One append-only log of segments holds the records of all queues (RocketMQ CommitLog); a
//! per-queue index maps queue offsets to log positions (ConsumeQueue); a key index maps
//! message ids and keys to positions (IndexFile). Files under `StorageConfig::dir`:
//!
//! ```text
//! LOCK                           flock'ed while open
//! checkpoint                     see checkpoint.rs
//! commitlog/<base:020>.log       segments (format.rs, segment.rs)
//! index/<topic>/TOPIC            raw topic name
//! index/<topic>/<queue>/<first_offset:020>.cq   queue index (queue_index.rs)
//! keys/<id:020>-L<level>.kidx    key-index runs (key_index.rs)
//! ```
//!
//! Threads: a writer (group commit, `writer.rs`), in `Async` mode a flusher, and a maintenance thread
//! (checkpoints, key-index flushes, retention, `maintenance.rs`). `append` queues a request
//! (written on the appending thread when the writer is free: on a gRPC I/O thread with the
//! others of its scheduler pass, in either mode, `coalesce.rs`; elsewhere in `Async` mode only,
//! `writer.rs`) and awaits its reply; `read`, `queue_range` and the lookups are synchronous, take
//! only short read locks and never fsync.
//!
//! Visibility: a record is readable once *published*: in `Sync` mode after the fsync of its
//! batch, in `Async` mode after its write. Readers check CRCs on every read.

mod checkpoint;
mod coalesce;
mod config;
mod delivery;
mod format;
mod fs;
mod key_index;
mod maintenance;
mod queue_index;
mod recovery;
mod sealed;
mod segment;
mod writer;
mod zero_ahead;

#[cfg(test)]
mod crash_test;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::oneshot;

/// Marks a thread that drives one single-threaded runtime for life (the gRPC I/O threads): its
/// appends are grouped per scheduler pass (`coalesce.rs`).
pub use coalesce::dedicate_thread;
pub use config::{ResumePoint, ResumeQueue, StorageConfig};
/// The used share of the file system holding a path (`diskMaxUsedSpaceRatio` is checked on it).
pub use fs::disk_used_ratio;
/// Writes a small file atomically and durably (temp file, fsync, rename, fsync of the dir).
pub use fs::write_file_atomically;
pub use sealed::{INDEX_ENTRY_LEN, ScannedRecord, SealedSegmentInfo, SegmentScan, decode_index_entry, decode_message};

use self::checkpoint::Checkpoint;
use self::format::{Frame, decode_frame, message_id_hash, message_key_hash};
use self::fs::{DirLock, Faults};
use self::key_index::KeyIndex;
use self::maintenance::MaintenanceState;
use self::queue_index::{QueueIndex, QueueMap};
use self::segment::Segment;
use self::writer::{AppendRequest, Writer, WriterMsg};
use self::zero_ahead::ZeroAhead;
use super::record::keys;
use super::{
    AppendMessage, AppendResult, FlushMode, MessageLog, QueueRange, StorageError, StorageResult, StoredMessage,
};
use crate::observability::metrics::AppendStage;

/// State shared by the [`CommitLog`] handle and its threads.
pub(crate) struct Shared {
    config: StorageConfig,
    log_dir: PathBuf,
    index_dir: PathBuf,
    /// Sorted by base, contiguous.
    segments: RwLock<Vec<Arc<Segment>>>,
    queues: RwLock<QueueMap>,
    keys: KeyIndex,
    /// First position still on disk (moves up with retention).
    log_start: AtomicU64,
    /// Records below this are readable.
    published: AtomicU64,
    /// Records (and their index entries) below this are written to the OS.
    written: AtomicU64,
    /// Records below this are fsynced.
    synced: AtomicU64,
    /// The log below this was dropped from the page cache (`maintenance::release_page_cache`).
    page_cache_released: AtomicU64,
    /// Retention never deletes a segment ending above this (tiering hook).
    retention_limit: AtomicU64,
    /// Holds of other components (e.g. scheduled messages not fired yet), by holder.
    retention_holds: Mutex<std::collections::HashMap<&'static str, u64>>,
    /// The last checkpoint written.
    checkpoint: Mutex<Checkpoint>,
    /// Generation of writer roll-backs; guards `synced` against a roll-back racing an
    /// `Async`-mode flush (which must then not claim the rolled-back range as durable).
    rollback_generation: Mutex<u64>,
    maintenance: (Mutex<MaintenanceState>, Condvar),
    flush_failures: AtomicU64,
    counters: Counters,
    faults: Faults,
    /// Held until `close` (or drop): no second process may open the directory.
    lock: Mutex<Option<DirLock>>,
    /// The zeroer ahead of the writer, when it runs (`zero_ahead.rs`).
    zero_ahead: Option<ZeroAhead>,
}

impl Shared {
    fn segment_for(&self, position: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.base <= position);
        let s = segs.get(i.checked_sub(1)?)?;
        s.contains(position).then(|| s.clone())
    }

    /// The last segment whose base is at or below `position`.
    fn segment_at_or_before(&self, position: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.base <= position);
        segs.get(i.checked_sub(1)?).cloned()
    }

    fn segments_overlapping(&self, from: u64, to: u64) -> Vec<Arc<Segment>> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        segs.iter().filter(|s| s.base < to && s.end() > from).cloned().collect()
    }

    fn push_segment(&self, seg: Arc<Segment>) {
        self.segments.write().unwrap_or_else(|e| e.into_inner()).push(seg);
    }

    fn oldest_sealed_segment(&self) -> Option<Arc<Segment>> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        if segs.len() < 2 {
            return None;
        }
        // The writer may have rolled into the last segment only; everything before it is sealed.
        segs.first().cloned()
    }

    fn remove_segment(&self, base: u64) {
        self.segments.write().unwrap_or_else(|e| e.into_inner()).retain(|s| s.base != base);
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<QueueIndex>> {
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        queues.get(topic)?.get(&queue_id).cloned()
    }

    fn insert_queue(&self, q: Arc<QueueIndex>) {
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        queues.entry(q.topic.clone()).or_default().insert(q.queue_id, q);
    }

    fn all_queues(&self) -> Vec<Arc<QueueIndex>> {
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
        queues.values().flat_map(|m| m.values().cloned()).collect()
    }

    fn wake_maintenance(&self) {
        let (lock, cvar) = &self.maintenance;
        lock.lock().unwrap_or_else(|e| e.into_inner()).wake = true;
        cvar.notify_one();
    }

    /// Reads and verifies the record at `position` (below the published position).
    /// `queue`: the queue the caller expects the record in (saves a topic allocation).
    fn read_at(
        &self,
        position: u64,
        expected_len: Option<usize>,
        queue: Option<&QueueIndex>,
    ) -> Result<StoredMessage, String> {
        let published = self.published.load(Ordering::Acquire);
        if position >= published {
            return Err(format!("position {position} is not published (published up to {published})"));
        }
        let seg = self.segment_for(position).ok_or_else(|| format!("no segment holds position {position}"))?;
        let bytes = match expected_len {
            Some(len) => seg.slice(position, len).ok_or("index entry points past its segment")?,
            None => seg.tail_from(position),
        };
        match decode_frame(&bytes, position).map_err(|e| e.to_string())? {
            Frame::Message { header, topic, properties, body, len } => {
                if expected_len.is_some_and(|l| l != len) {
                    return Err(format!("record is {len} bytes, the index says {expected_len:?}"));
                }
                if position + len as u64 > published {
                    return Err("record extends past the published position".into());
                }
                let topic = std::str::from_utf8(&topic).map_err(|_| "topic is not utf-8".to_string())?;
                let topic: Arc<str> = match queue {
                    Some(q) if &*q.topic == topic && q.queue_id == header.queue_id => q.topic.clone(),
                    _ => self.queue(topic, header.queue_id).map_or_else(|| topic.into(), |q| q.topic.clone()),
                };
                sealed::stored_message(&header, topic, position, properties, body)
            }
            Frame::EndOfSegment => Err("end-of-segment marker where a message was expected".into()),
        }
    }

    /// Verified candidates of a key-index lookup: the newest `limit` matches, in log order.
    fn candidates(&self, hash: u64, limit: usize, matches: impl Fn(&StoredMessage) -> bool) -> Vec<StoredMessage> {
        let log_start = self.log_start.load(Ordering::Acquire);
        let mut out = Vec::new();
        for position in self.keys.lookup(hash).into_iter().rev() {
            if out.len() >= limit || position < log_start {
                break;
            }
            match self.read_at(position, None, None) {
                Ok(m) if matches(&m) => out.push(m),
                Ok(_) => {} // hash collision
                // Stale entries (a rolled-back write, a cut tail) point at non-records.
                Err(reason) => tracing::debug!(position, reason, "skipping stale key-index entry"),
            }
        }
        out.reverse();
        out
    }
}

/// Counters and positions, for metrics, the admin API and the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageStats {
    /// First log position still stored locally.
    pub log_start: u64,
    /// Records below this position are readable.
    pub published_position: u64,
    /// Records below this position are fsynced.
    pub durable_position: u64,
    pub segments: usize,
    pub queues: usize,
    pub key_index_runs: usize,
    pub key_index_memory_entries: usize,
    /// Failed periodic fsyncs in `Async` mode (acknowledged data at risk).
    pub async_flush_failures: u64,
    /// Group-commit batches written since open.
    pub batches_written: u64,
    /// Of those, batches written on the appending thread (`Async` mode, the writer was free:
    /// one append, or those of one I/O thread's scheduler pass), not by the writer thread.
    pub inline_batches: u64,
    /// Log bytes written since open (records, framing included).
    pub bytes_written: u64,
    /// `fdatasync` calls on segments since open.
    pub fsyncs: u64,
}

/// Monotonic counters behind [`StorageStats`].
#[derive(Debug, Default)]
struct Counters {
    batches_written: AtomicU64,
    inline_batches: AtomicU64,
    bytes_written: AtomicU64,
    fsyncs: AtomicU64,
}

struct Threads {
    writer: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    maintenance: Option<JoinHandle<()>>,
    zeroer: Option<JoinHandle<()>>,
}

/// The durable commit log. Open with [`CommitLog::open`]; use through [`MessageLog`].
pub struct CommitLog {
    /// This log's key for appends coalesced per thread (`coalesce.rs`).
    id: u64,
    shared: Arc<Shared>,
    /// Taken by the writer thread per batch, and (`Async` mode) by an appending task that finds
    /// it free.
    writer: Arc<Mutex<Writer>>,
    tx: mpsc::Sender<WriterMsg>,
    closing: AtomicBool,
    threads: Mutex<Threads>,
}

impl std::fmt::Debug for CommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLog").field("dir", &self.shared.config.dir).finish_non_exhaustive()
    }
}

impl CommitLog {
    /// The lowest position a retention hold keeps (`hold_retention`), if any.
    pub fn lowest_hold(&self) -> Option<u64> {
        self.shared.retention_holds.lock().unwrap_or_else(|e| e.into_inner()).values().min().copied()
    }

    /// Opens (or creates) the log in `config.dir`: validates the config, runs recovery
    /// (replays the log since the last checkpoint, truncates a torn tail) and starts the
    /// writer, flusher and maintenance threads. Blocking; call it from `spawn_blocking` or
    /// before the runtime gets busy.
    pub fn open(config: StorageConfig) -> StorageResult<Arc<CommitLog>> {
        config.validate()?;
        let rec = recovery::recover(&config)?;
        let log_dir = config.dir.join("commitlog");
        let index_dir = config.dir.join("index");
        let mut queue_map = QueueMap::default();
        let mut writer_queues = Vec::with_capacity(rec.queues.len());
        for q in rec.queues {
            writer_queues.push((q.clone(), q.end()));
            queue_map.entry(q.topic.clone()).or_default().insert(q.queue_id, q);
        }
        let active = rec.segments.iter().rev().find(|s| s.base <= rec.end).cloned().ok_or_else(|| {
            StorageError::Corrupted { position: rec.end, reason: "no segment holds the end of the log".into() }
        })?;
        // Only where blocks are overwritten in place: a copy-on-write file system (btrfs, ZFS)
        // allocates anew on every write, and tmpfs has nothing to sync.
        let zero_ahead = (matches!(config.flush, FlushMode::Sync)
            && config.zero_ahead_bytes > 0
            && zero_ahead::worth_it(config.segment_size)
            && fs::on_file_system(active.as_raw_fd(), &[fs::magic::EXT4, fs::magic::XFS]))
        .then(|| ZeroAhead::new(rec.end, config.zero_ahead_bytes));
        let shared = Arc::new(Shared {
            log_dir,
            index_dir,
            segments: RwLock::new(rec.segments),
            queues: RwLock::new(queue_map),
            keys: rec.keys,
            log_start: AtomicU64::new(rec.log_start),
            published: AtomicU64::new(rec.end),
            written: AtomicU64::new(rec.end),
            synced: AtomicU64::new(rec.end),
            page_cache_released: AtomicU64::new(rec.log_start),
            retention_limit: AtomicU64::new(u64::MAX),
            retention_holds: Mutex::new(std::collections::HashMap::new()),
            checkpoint: Mutex::new(rec.checkpoint),
            rollback_generation: Mutex::new(0),
            maintenance: (Mutex::new(MaintenanceState::default()), Condvar::new()),
            flush_failures: AtomicU64::new(0),
            counters: Counters::default(),
            faults: Faults::default(),
            lock: Mutex::new(Some(rec.lock)),
            zero_ahead,
            config,
        });
        // Unbounded here (a blocking bounded send would stall an async worker); what is queued is
        // bounded above: the broker caps the bytes of sends in flight (`limits.maxInflightBytes`),
        // and its other appends (acks, journal records) are small and one per RPC in progress.
        let (tx, rx) = mpsc::channel();
        let (flusher_stop, stop_rx) = mpsc::channel();
        let writer = Arc::new(Mutex::new(Writer::new(shared.clone(), flusher_stop, rec.end, active, writer_queues)));
        let core = writer.clone();
        let max_batch = shared.config.max_batch_bytes;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(|e| fs::io_error(format!("spawning the {name} thread"), e))
        };
        let writer_thread = spawn("rmq-log-writer", Box::new(move || Writer::run(core, rx, max_batch)))?;
        let s = shared.clone();
        // `Sync` mode: the writer thread syncs its own batches.
        let flusher = match shared.config.flush {
            FlushMode::Sync => None,
            FlushMode::Async { interval } => {
                Some(spawn("rmq-log-flusher", Box::new(move || writer::run_async_flusher(s, stop_rx, interval)))?)
            }
        };
        let s = shared.clone();
        let maintenance = spawn("rmq-log-maint", Box::new(move || maintenance::run(s)))?;
        let s = shared.clone();
        let zeroer = match shared.zero_ahead {
            Some(_) => Some(spawn(
                "rmq-log-zero",
                Box::new(move || {
                    if let Some(z) = &s.zero_ahead {
                        z.run(&s);
                    }
                }),
            )?),
            None => None,
        };
        Ok(Arc::new(CommitLog {
            id: coalesce::log_id(),
            writer,
            shared,
            tx,
            closing: AtomicBool::new(false),
            threads: Mutex::new(Threads {
                writer: Some(writer_thread),
                flusher,
                maintenance: Some(maintenance),
                zeroer,
            }),
        }))
    }

    /// Queues an append for the writer (or writes it here, `Async` mode) and awaits its
    /// answer: after the write when `answer_written`, else once it is published.
    async fn submit(&self, messages: Vec<AppendMessage>, answer_written: bool) -> StorageResult<Vec<AppendResult>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        if self.closing.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        // `Async` mode publishes each batch right after its write: such appends take the usual
        // path (published, then answered), so nothing there changes.
        let answer_written = answer_written && matches!(self.shared.config.flush, FlushMode::Sync);
        let (reply, rx) = oneshot::channel();
        let created = std::time::Instant::now();
        let origin = delivery::Origin::current();
        let request = AppendRequest { messages, reply, created, origin, answer_written };
        let coalesced = request.origin.is_some() && coalesce::on_dedicated_thread();
        let inline = Writer::inline(self.shared.config.flush);
        let queued = match (inline, coalesced) {
            // A task of an I/O thread's runtime: grouped with the others of its scheduler pass,
            // then written on this runtime (`Sync` mode: synced and answered by the writer
            // thread's next group commit).
            (_, true) => {
                if let Some(batch) = coalesce::push(self.id, request) {
                    let (id, writer, tx) = (self.id, self.writer.clone(), self.tx.clone());
                    let max_batch = self.shared.config.max_batch_bytes;
                    drop(tokio::spawn(async move {
                        let requests = coalesce::take(id, &batch);
                        write_coalesced(requests, max_batch, &writer, &tx).await;
                    }));
                }
                None
            }
            (true, false) => Writer::try_inline(&self.writer, vec![request], &self.tx)?.and_then(|mut r| r.pop()),
            (false, false) => Some(request),
        };
        if let Some(request) = queued {
            // Answered by the writer thread: grouped with the others for this task's runtime.
            self.tx.send(WriterMsg::Append(request)).map_err(|_| StorageError::ShuttingDown)?;
        }
        let appended = rx.await.map_err(|_| StorageError::ShuttingDown)?;
        // An append answered once written has no `stored` stage: it counts as `queued` only.
        if appended.is_ok() && !answer_written {
            writer::observe_stage(AppendStage::Resumed, [created]);
        }
        appended
    }

    pub fn config(&self) -> &StorageConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> StorageStats {
        StorageStats {
            log_start: self.shared.log_start.load(Ordering::Acquire),
            published_position: self.shared.published.load(Ordering::Acquire),
            durable_position: self.shared.synced.load(Ordering::Acquire),
            segments: self.shared.segments.read().unwrap_or_else(|e| e.into_inner()).len(),
            queues: self.shared.all_queues().len(),
            key_index_runs: self.shared.keys.run_count(),
            key_index_memory_entries: self.shared.keys.memory_entries(),
            async_flush_failures: self.shared.flush_failures.load(Ordering::Relaxed),
            batches_written: self.shared.counters.batches_written.load(Ordering::Relaxed),
            inline_batches: self.shared.counters.inline_batches.load(Ordering::Relaxed),
            bytes_written: self.shared.counters.bytes_written.load(Ordering::Relaxed),
            fsyncs: self.shared.counters.fsyncs.load(Ordering::Relaxed),
        }
    }

    /// Retention never deletes a segment that ends above `limit` (`None`: no limit).
    ///
    /// This is the hook for tiered storage: the offloader sets it to the end of the last
    /// segment uploaded (and recorded in the manifest), so local retention cannot drop data
    /// that exists nowhere else. Disk pressure then shows up as `DiskFull` on append instead
    /// of data loss.
    pub fn set_retention_limit(&self, limit: Option<u64>) {
        self.shared.retention_limit.store(limit.unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Runs one retention pass now (normally every `retention_interval`).
    pub fn run_retention(&self) {
        maintenance::retention(&self.shared);
    }

    /// Writes a checkpoint now (normally every `checkpoint_interval`).
    pub fn checkpoint(&self) -> StorageResult<()> {
        maintenance::checkpoint(&self.shared).map_err(|e| fs::io_error("writing a checkpoint", e))
    }

    #[cfg(test)]
    fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Tests of the logs that wrap this `Sync`-mode log: `log.append_written(record(0))`,
    /// forwarded down here, is answered although its batch's `fdatasync` fails, where
    /// `log.append(record(1))` reports the failure.
    #[cfg(test)]
    pub(crate) async fn assert_answers_written_early(
        &self,
        log: &dyn MessageLog,
        record: impl Fn(u64) -> AppendMessage,
    ) {
        let fail_syncs = || &self.faults().fail_syncs;
        fail_syncs().store(1, Ordering::SeqCst);
        let written = log.append_written(vec![record(0)]).await;
        assert!(written.is_ok(), "answered before the failing sync: {written:?}");
        // The answer came first: wait for that sync to take (and fail) before arming the next.
        for _ in 0..500 {
            if fail_syncs().load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(fail_syncs().load(Ordering::SeqCst), 0, "the batch's sync never ran");
        fail_syncs().store(1, Ordering::SeqCst);
        let appended = log.append(vec![record(1)]).await;
        assert!(appended.is_err(), "append waits for its sync and reports its failure");
    }

    /// Holds the writer (tests: every append then goes to the writer thread, which waits).
    #[cfg(test)]
    fn hold_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_threads(&self) -> Threads {
        let mut t = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        Threads {
            writer: t.writer.take(),
            flusher: t.flusher.take(),
            maintenance: t.maintenance.take(),
            zeroer: t.zeroer.take(),
        }
    }

    /// Stops the threads at once, like a crash right after the last write: no final
    /// checkpoint or key-index flush (the next open replays). Used by `Drop` without `close`.
    fn stop_now(&self) {
        self.closing.store(true, Ordering::Release);
        let Threads { writer, flusher, maintenance, zeroer } = self.take_threads();
        let _ = self.tx.send(WriterMsg::Shutdown);
        {
            let (lock, cvar) = &self.shared.maintenance;
            lock.lock().unwrap_or_else(|e| e.into_inner()).abort = true;
            cvar.notify_one();
        }
        if let Some(z) = &self.shared.zero_ahead {
            z.stop();
        }
        for (name, t) in [("writer", writer), ("flusher", flusher), ("maintenance", maintenance), ("zeroer", zeroer)] {
            if let Some(t) = t
                && t.join().is_err()
            {
                tracing::error!(thread = name, "commit-log thread panicked");
            }
        }
    }
}

impl Drop for CommitLog {
    fn drop(&mut self) {
        if !self.closing.load(Ordering::Acquire) {
            self.stop_now();
        }
    }
}

#[async_trait]
impl MessageLog for CommitLog {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        self.submit(messages, false).await
    }

    /// `Sync` mode: answered by the writer thread right after its batch's write, before the
    /// `fdatasync` (the batch is published, and its other appends answered, after it as usual).
    async fn append_written(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        self.submit(messages, true).await
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        let Some(q) = self.shared.queue(topic, queue_id) else {
            return Ok(Vec::new());
        };
        let end = q.end();
        let mut offset = offset.max(q.start());
        let mut out: Vec<StoredMessage> = Vec::new();
        let mut bytes = 0usize;
        let mut file: Option<Arc<queue_index::IndexFile>> = None;
        while offset < end && out.len() < max_messages {
            if !file.as_ref().is_some_and(|f| q_file_covers(f, offset)) {
                file = q.file_for(offset);
            }
            let Some(f) = &file else {
                // Retention removed the file between the start check and now.
                if offset < q.start() {
                    offset = q.start();
                    continue;
                }
                return corrupted_or_partial(out, 0, format!("no index file for {topic}/{queue_id} offset {offset}"));
            };
            let Some(entry) = f.entry(offset) else {
                return corrupted_or_partial(
                    out,
                    0,
                    format!("index entry of {topic}/{queue_id} offset {offset} is corrupt"),
                );
            };
            if entry.log_position < self.shared.log_start.load(Ordering::Acquire) {
                offset += 1; // removed by retention while we read
                continue;
            }
            let m = match self.shared.read_at(entry.log_position, Some(entry.size as usize), Some(&q)) {
                Ok(m) if m.queue_id == queue_id && m.queue_offset == offset && &*m.topic == topic => m,
                Ok(m) => {
                    return corrupted_or_partial(
                        out,
                        entry.log_position,
                        format!(
                            "index of {topic}/{queue_id} offset {offset} points at {}/{} offset {}",
                            m.topic, m.queue_id, m.queue_offset
                        ),
                    );
                }
                Err(_) if entry.log_position < self.shared.log_start.load(Ordering::Acquire) => {
                    offset += 1;
                    continue;
                }
                Err(reason) => return corrupted_or_partial(out, entry.log_position, reason),
            };
            if !out.is_empty() && bytes + m.body.len() > max_bytes {
                break;
            }
            bytes += m.body.len();
            out.push(m);
            offset += 1;
        }
        Ok(out)
    }

    fn tag_hashes(&self, topic: &str, queue_id: u32, offset: u64, max: usize) -> StorageResult<Vec<(u64, u64)>> {
        let Some(q) = self.shared.queue(topic, queue_id) else {
            return Ok(Vec::new());
        };
        let end = q.end();
        let mut offset = offset.max(q.start());
        let mut out = Vec::new();
        let mut file: Option<Arc<queue_index::IndexFile>> = None;
        while offset < end && out.len() < max {
            if !file.as_ref().is_some_and(|f| q_file_covers(f, offset)) {
                file = q.file_for(offset);
            }
            // A missing file (retention) or a bad entry ends the answer: the caller reads
            // records from there and deals with it.
            let Some(entry) = file.as_ref().and_then(|f| f.entry(offset)) else { break };
            out.push((offset, entry.tag_hash));
            offset += 1;
        }
        Ok(out)
    }

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        match self.shared.queue(topic, queue_id) {
            Some(q) => {
                let end = q.end();
                QueueRange { start: q.start().min(end), end }
            }
            None => QueueRange::default(),
        }
    }

    fn find_by_message_id(&self, message_id: &str) -> StorageResult<Vec<StoredMessage>> {
        Ok(self.shared.candidates(message_id_hash(message_id), usize::MAX, |m| {
            m.properties.get(keys::UNIQ_KEY) == Some(message_id)
        }))
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        Ok(self.shared.candidates(message_key_hash(topic, key), max, |m| {
            &*m.topic == topic && m.properties.get(keys::KEYS).is_some_and(|ks| ks.split(' ').any(|k| k == key))
        }))
    }

    fn hold_retention(&self, holder: &'static str, position: Option<u64>) {
        let mut holds = self.shared.retention_holds.lock().unwrap_or_else(|e| e.into_inner());
        match position {
            Some(p) => holds.insert(holder, p),
            None => holds.remove(holder),
        };
    }

    async fn close(&self) -> StorageResult<()> {
        if self.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // The threads finish the queued appends and fsync; joining them blocks.
        let Threads { writer, flusher, maintenance, zeroer } = self.take_threads();
        let _ = self.tx.send(WriterMsg::Shutdown);
        let shared = self.shared.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut panicked = Vec::new();
            for (name, t) in [("writer", writer), ("flusher", flusher)] {
                if let Some(t) = t
                    && t.join().is_err()
                {
                    panicked.push(name);
                }
            }
            if let Some(z) = &shared.zero_ahead {
                z.stop();
            }
            if let Some(t) = zeroer
                && t.join().is_err()
            {
                panicked.push("zeroer");
            }
            {
                let (lock, cvar) = &shared.maintenance;
                lock.lock().unwrap_or_else(|e| e.into_inner()).close = true;
                cvar.notify_one();
            }
            if let Some(t) = maintenance
                && t.join().is_err()
            {
                panicked.push("maintenance");
            }
            panicked
        })
        .await
        .map_err(|e| fs::io_error("joining commit-log threads", std::io::Error::other(e.to_string())))?;
        if !joined.is_empty() {
            return Err(fs::io_error(
                "closing the commit log",
                std::io::Error::other(format!("threads panicked: {joined:?}")),
            ));
        }
        // Everything is flushed and the threads are gone: the directory may be reopened.
        self.shared.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(dir = %self.shared.config.dir.display(), "commit log closed");
        Ok(())
    }
}

/// Writes a batch of appends made on one I/O thread (`coalesce.rs`), in writes of about
/// `max_batch` bytes at most (the writer thread's bound too), or hands them to the writer thread
/// when another thread holds the writer. Runs as a task on the runtime they were made on, and
/// lets that runtime's other tasks run between two writes: a pass of many large sends does not
/// hold every connection of its I/O thread for all of its writes.
async fn write_coalesced(
    requests: Vec<AppendRequest>,
    max_batch: usize,
    writer: &Mutex<Writer>,
    tx: &mpsc::Sender<WriterMsg>,
) {
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        while let Some(r) = requests.next_if(|r| chunk.is_empty() || bytes + r.approx_bytes() <= max_batch) {
            bytes += r.approx_bytes();
            chunk.push(r);
        }
        match Writer::try_inline(writer, chunk, tx) {
            Ok(None) => {}
            // Another thread holds the writer: its thread batches these (and the rest) with the
            // others. Fails only once the writer thread has stopped; the dropped reply says so.
            Ok(Some(busy)) => {
                let _ = tx.send(WriterMsg::Appends(busy.into_iter().chain(requests.by_ref()).collect()));
            }
            // Stopped: the requests are dropped, their callers see `ShuttingDown`.
            Err(_) => return,
        }
        if requests.peek().is_some() {
            tokio::task::yield_now().await;
        }
    }
}

fn q_file_covers(f: &queue_index::IndexFile, offset: u64) -> bool {
    offset >= f.first_offset && offset < f.end_offset()
}

/// Never serve a bad record: return what was read before it, or the error if nothing was.
fn corrupted_or_partial(out: Vec<StoredMessage>, position: u64, reason: String) -> StorageResult<Vec<StoredMessage>> {
    if out.is_empty() {
        tracing::error!(position, reason, "refusing to serve a corrupted record");
        return Err(StorageError::Corrupted { position, reason });
    }
    Ok(out)
}
