//! Group commit: the writer (inline or its thread) and, in `Async` mode, the flusher thread.
//!
//! - **Writer** (state behind one mutex): assigns queue offsets and log positions, encodes the
//!   records into one buffer, writes it with `pwrite` (one call per segment touched), writes
//!   the queue-index entries and key-index entries. The writer thread takes every append
//!   queued since its last batch (up to `max_batch_bytes`) as one batch. The appends of one gRPC
//!   I/O thread's scheduler pass (`coalesce.rs`) are written on that thread when the writer is
//!   free (no hand-off to another thread and back), in both modes; in `Async` mode other
//!   appends are too, alone, at once. Appends that find the writer busy are queued for the
//!   thread, so under contention they are still batched. At most one task writes at a time: a
//!   write stalled by the kernel (dirty-page throttling) blocks one runtime worker, not all of
//!   them.
//! - **`Sync` mode** (group commit): the writer thread takes every batch written since its last
//!   sync (its own and those the I/O threads wrote), issues one `fdatasync` per segment they
//!   touched, then publishes them (queue ends and the readable log position move up) and
//!   completes their appends (one hand-over per runtime waiting on them, `delivery.rs`). It
//!   does not hold the writer during the `fdatasync`: the passes that arrive meanwhile are
//!   written at once and are the next group commit, which starts as soon as this one is
//!   published. Appends made with `append_written` (the consumer journal's receive records) are
//!   answered right after the write instead. (A separate syncer thread, handed each batch by
//!   the writer thread, was measured slower end to end, with half again as many context
//!   switches: appends arrived one by one then, and each small batch crossed two threads on two
//!   shared cores; docs/benchmarks.md.)
//! - **`Async` mode**: batches are published and acknowledged right after the write; the
//!   flusher thread fsyncs what was written on an interval, and once more at shutdown.
//!
//! Failures: a failed write fails every append of its batch, and the writer rolls its state
//! back (positions, queue offsets) and zeroes what it wrote, so nothing of the batch can
//! resurface after a restart. A failed fsync fails every append not yet published (those
//! written during the sync too), and the writer rolls back to the last published (durable)
//! position, zeroing all above it, before it writes anything else.
//! Nothing is ever acknowledged as stored after a failed write or fsync (an `append_written`
//! answer says written, not stored: a failed fsync drops it all the same).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::Shared;
use super::delivery::{Answer, Origin, deliver};
use super::format::{
    HEADER_LEN, IndexEntry, RecordHeader, encode_end_of_segment, encode_record, message_id_hash, message_key_hash,
    record_len,
};
use super::fs::{fsync_dir, invalid_input, io_error, replicate_error};
use super::queue_index::{QueueIndex, create_queue};
use super::segment::Segment;
use crate::fast_map::FastMap;
use crate::observability::metrics::{self, AppendStage};
use crate::storage::record::keys;
use crate::storage::{AppendMessage, AppendResult, FlushMode, StorageError, StorageResult};

pub type Reply = oneshot::Sender<StorageResult<Vec<AppendResult>>>;

pub struct AppendRequest {
    pub messages: Vec<AppendMessage>,
    pub reply: Reply,
    /// The appending task's runtime, when answers to it are best grouped (see `delivery.rs`).
    pub origin: Option<Origin>,
    /// When the append was called: the start of its `rocketmq_storage_append_latency`.
    pub created: Instant,
    /// Answer once written, before the batch's `fdatasync` (`MessageLog::append_written`);
    /// `Sync` mode only (`CommitLog::submit` clears it in `Async` mode).
    pub answer_written: bool,
}

/// Records that appends made at `created` reached `stage` now (when metrics are on).
pub fn observe_stage(stage: AppendStage, created: impl IntoIterator<Item = Instant>) {
    if let Some(m) = metrics::global() {
        let now = Instant::now();
        for c in created {
            m.append_latency(stage, now.saturating_duration_since(c));
        }
    }
}

/// A written append's answer, sent when its batch is published.
struct Completion {
    reply: Reply,
    results: Vec<AppendResult>,
    created: Instant,
    origin: Option<Origin>,
}

impl AppendRequest {
    pub(super) fn approx_bytes(&self) -> usize {
        self.messages.iter().map(|m| HEADER_LEN + m.topic.len() + m.body.len() + 64).sum()
    }
}

pub enum WriterMsg {
    Append(AppendRequest),
    /// Appends of one gRPC I/O thread's scheduler pass (`coalesce.rs`) left when another thread
    /// held the writer. Handed over together, so they share a batch and a single wake-up.
    Appends(Vec<AppendRequest>),
    /// `Sync` mode: appends were written on their own thread while the writer thread slept
    /// ([`Writer::try_inline`]); sync them.
    Sync,
    /// Finish what is queued before this message, then stop.
    Shutdown,
}

/// A written batch, not yet readable: what [`publish`] needs, and in `Sync` mode the segments
/// [`Writer::commit`] fsyncs first.
struct WrittenBatch {
    /// Log position after the batch.
    end: u64,
    segments: Vec<Arc<Segment>>,
    /// Queue ends to publish.
    queue_ends: Vec<(Arc<QueueIndex>, u64)>,
    replies: Vec<Completion>,
}

/// Writer-side state of one queue.
struct WriterQueue {
    index: Arc<QueueIndex>,
    next_offset: u64,
    /// Offset of this queue's first record in the current batch.
    batch_first: u64,
    batch_entries: Vec<u8>,
    in_batch: bool,
}

/// Cleanup still owed after a failed write: the bytes and index entries above these points
/// must be zeroed before anything else is written.
struct Cleanup {
    log_from: u64,
    log_to: u64,
    queues: Vec<(usize, u64)>,
}

/// The writer's state: positions, queue offsets, the active segment. Behind a mutex shared by
/// the writer thread and appending tasks (see [`Writer::try_inline`]).
pub struct Writer {
    shared: Arc<Shared>,
    /// Tells the flusher thread (`Async` mode) that the writer stopped: its last flush follows.
    flusher_stop: Sender<()>,
    /// Set once the writer thread took the shutdown message: nothing is written after it.
    stopped: bool,
    write_pos: u64,
    active: Arc<Segment>,
    slots: FastMap<Arc<str>, FastMap<u32, usize>>,
    queues: Vec<WriterQueue>,
    cleanup: Option<Cleanup>,
    buf: Vec<u8>,
    props: BytesMut,
    /// `Sync` mode: what the writer thread has yet to sync. Pushed to while the writer is held,
    /// so in log order; the writer thread takes it without holding the writer.
    unsynced: Arc<Mutex<Unsynced>>,
}

/// `Sync` mode: batches written (by the writer thread or on their appending thread) and not yet
/// synced, in log order, and whether the writer thread sleeps.
#[derive(Default)]
struct Unsynced {
    batches: Vec<WrittenBatch>,
    /// The writer thread found nothing to sync and sleeps until a message comes; whoever leaves
    /// a batch here then sends it [`WriterMsg::Sync`].
    idle: bool,
}

pub use crate::clock::now_ms;

/// Queues what `msg` carries for the writer thread; true for the shutdown message.
fn receive(msg: WriterMsg, queued: &mut VecDeque<AppendRequest>) -> bool {
    match msg {
        WriterMsg::Append(r) => queued.push_back(r),
        WriterMsg::Appends(rs) => queued.extend(rs),
        WriterMsg::Sync => {}
        WriterMsg::Shutdown => return true,
    }
    false
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        flusher_stop: Sender<()>,
        write_pos: u64,
        active: Arc<Segment>,
        queues: Vec<(Arc<QueueIndex>, u64)>,
    ) -> Self {
        let mut w = Self {
            shared,
            flusher_stop,
            stopped: false,
            write_pos,
            active,
            slots: FastMap::default(),
            queues: Vec::new(),
            cleanup: None,
            buf: Vec::with_capacity(1 << 20),
            props: BytesMut::with_capacity(1024),
            unsynced: Arc::default(),
        };
        for (index, next_offset) in queues {
            w.add_queue(index, next_offset);
        }
        w
    }

    fn add_queue(&mut self, index: Arc<QueueIndex>, next_offset: u64) -> usize {
        let slot = self.queues.len();
        self.slots.entry(index.topic.clone()).or_default().insert(index.queue_id, slot);
        self.queues.push(WriterQueue {
            index,
            next_offset,
            batch_first: next_offset,
            batch_entries: Vec::new(),
            in_batch: false,
        });
        slot
    }

    /// Whether an append made outside a gRPC I/O thread is written on the appending task
    /// ([`Writer::try_inline`]): in `Async` mode only. In `Sync` mode such an append (a timer
    /// firing, a transaction check) goes to the writer thread, which batches it with the others;
    /// the appends of an I/O thread's scheduler pass are written on that thread in both modes
    /// (`coalesce.rs`).
    pub fn inline(flush: FlushMode) -> bool {
        matches!(flush, FlushMode::Async { .. })
    }

    /// The writer thread: takes what is queued (up to `max_batch` bytes) as one batch, until
    /// the shutdown message; in `Sync` mode it also syncs and publishes what was written since
    /// its last sync (its own batch and those written on the appending threads). It holds the
    /// writer only to write (and to roll back after a failed fsync), not during an `fdatasync`
    /// or while publishing, so appending threads write the next group commit's records while
    /// the last one syncs.
    pub fn run(writer: Arc<Mutex<Writer>>, rx: Receiver<WriterMsg>, max_batch: usize) {
        let (unsynced, shared) = {
            let w = lock(&writer);
            (w.unsynced.clone(), w.shared.clone())
        };
        // Appends received but not yet in a batch: a pass's hand-over can exceed `max_batch`.
        let mut queued = VecDeque::new();
        let mut shutdown = false;
        loop {
            if queued.is_empty() && !shutdown {
                // Nothing left to sync: sleep until a message (an append, or a `Sync` from a
                // thread that wrote while we slept).
                let sleep = {
                    let mut u = lock(&unsynced);
                    u.idle = u.batches.is_empty();
                    u.idle
                };
                if sleep {
                    match rx.recv() {
                        Ok(msg) => shutdown = receive(msg, &mut queued),
                        Err(_) => break,
                    }
                }
            }
            let mut requests = Vec::new();
            let mut bytes = 0;
            loop {
                while bytes < max_batch
                    && let Some(r) = queued.pop_front()
                {
                    bytes += r.approx_bytes();
                    requests.push(r);
                }
                if bytes >= max_batch || shutdown {
                    break;
                }
                match rx.try_recv() {
                    Ok(msg) => shutdown = receive(msg, &mut queued),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if !requests.is_empty() {
                let mut w = lock(&writer);
                observe_stage(AppendStage::Queued, requests.iter().map(|r| r.created));
                if let Some(batch) = w.process(requests) {
                    lock(&unsynced).batches.push(batch);
                }
            }
            commit(&writer, &unsynced, &shared);
            if shutdown && queued.is_empty() {
                // What appending threads wrote meanwhile is synced before the writer stops; they
                // write (and leave batches) only while they hold the writer.
                loop {
                    let mut w = lock(&writer);
                    if lock(&unsynced).batches.is_empty() {
                        w.stopped = true;
                        break;
                    }
                    drop(w);
                    commit(&writer, &unsynced, &shared);
                }
                break;
            }
        }
        // Appends queued after the shutdown message are dropped here; their callers see
        // `ShuttingDown` when the reply channel closes.
        let _ = lock(&writer).flusher_stop.send(());
    }

    /// Writes appends on the calling task when the writer is free, sparing the hand-off to the
    /// writer thread, as one batch (one append, or those of one runtime's scheduler pass,
    /// `coalesce.rs`). `Async` mode: acknowledged here. `Sync` mode: left for the writer
    /// thread's next `fdatasync` (woken with `tx` if it sleeps), which answers them. Gives the
    /// requests back when the writer is busy (the writer thread batches them with the others
    /// then); `Err` once it has stopped (the requests are dropped: their callers see the
    /// channel closed).
    pub fn try_inline(
        writer: &Mutex<Writer>,
        mut requests: Vec<AppendRequest>,
        tx: &Sender<WriterMsg>,
    ) -> Result<Option<Vec<AppendRequest>>, StorageError> {
        let mut w = match writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Some(requests)),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        if w.stopped {
            return Err(StorageError::ShuttingDown);
        }
        w.shared.counters.inline_batches.fetch_add(1, Ordering::Relaxed);
        observe_stage(AppendStage::Queued, requests.iter().map(|r| r.created));
        // Answered from here, on the appending tasks' own thread: directly, not as a hand-over;
        // those the writer thread answers after its `fdatasync` are handed over as before.
        let sync = matches!(w.shared.config.flush, FlushMode::Sync);
        for r in &mut requests {
            if !sync || r.answer_written {
                r.origin = None;
            }
        }
        let mut wake = false;
        // `Async` mode: acknowledged in `process`, nothing left to sync.
        if let Some(batch) = w.process(requests) {
            let mut u = lock(&w.unsynced);
            u.batches.push(batch);
            wake = std::mem::take(&mut u.idle);
        }
        drop(w);
        if wake {
            // Fails only once the writer thread is gone; then nothing answers these appends and
            // their callers see `ShuttingDown`.
            let _ = tx.send(WriterMsg::Sync);
        }
        Ok(None)
    }

    /// Writes a batch. `Async` mode: publishes and acknowledges it. `Sync` mode: returns it for
    /// [`Writer::commit`]. Appends that fail are answered here.
    fn process(&mut self, requests: Vec<AppendRequest>) -> Option<WrittenBatch> {
        if let Err(e) = self.prepare() {
            for r in requests {
                let _ = r.reply.send(Err(replicate_error(&e)));
            }
            return None;
        }
        let mut accepted = Vec::with_capacity(requests.len());
        for r in requests {
            match self.validate(&r.messages) {
                Ok(()) => accepted.push(r),
                Err(e) => {
                    let _ = r.reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return None;
        }
        let batch_start = self.write_pos;
        let mut results = Vec::with_capacity(accepted.len());
        let outcome = self.encode_and_write(&accepted, &mut results);
        let touched: Vec<usize> = (0..self.queues.len()).filter(|&s| self.queues[s].in_batch).collect();
        for &s in &touched {
            self.queues[s].in_batch = false;
        }
        let segments = match outcome {
            Ok(segments) => segments,
            Err(e) => {
                tracing::error!(error = %e, position = batch_start, "commit-log write failed; failing the batch");
                let queues = touched.iter().map(|&s| (s, self.queues[s].batch_first)).collect();
                self.roll_back(batch_start, queues);
                for r in accepted {
                    let _ = r.reply.send(Err(replicate_error(&e)));
                }
                return None;
            }
        };
        self.shared.written.store(self.write_pos, Ordering::Release);
        self.shared.counters.batches_written.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.bytes_written.fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        if self.shared.keys.maybe_freeze(self.write_pos) {
            self.shared.wake_maintenance();
        }
        let queue_ends: Vec<_> =
            touched.iter().map(|&s| (self.queues[s].index.clone(), self.queues[s].next_offset)).collect();
        let mut written = Vec::new();
        let mut replies = Vec::with_capacity(accepted.len());
        for (r, results) in accepted.into_iter().zip(results) {
            if r.answer_written {
                written.push(Answer { reply: r.reply, value: Ok(results), origin: r.origin });
            } else {
                replies.push(Completion { reply: r.reply, results, created: r.created, origin: r.origin });
            }
        }
        if !written.is_empty() {
            // Before the sync (`Sync` mode): their loss in a crash costs a redelivery only.
            deliver(written);
        }
        let batch = WrittenBatch { end: self.write_pos, segments, queue_ends, replies };
        match self.shared.config.flush {
            FlushMode::Sync => Some(batch),
            FlushMode::Async { .. } => {
                publish(&self.shared, batch);
                None
            }
        }
    }

    /// Finishes cleanup still owed after a failed write.
    fn prepare(&mut self) -> StorageResult<()> {
        if let Some(c) = self.cleanup.take()
            && let Err(e) = self.clean(&c)
        {
            self.cleanup = Some(c);
            return Err(e);
        }
        Ok(())
    }

    /// Resets positions and queue offsets to before a failed batch and zeroes what it wrote.
    fn roll_back(&mut self, to: u64, queues: Vec<(usize, u64)>) {
        let log_to = self.write_pos.max(self.cleanup.as_ref().map_or(0, |c| c.log_to));
        for &(s, offset) in &queues {
            self.queues[s].next_offset = offset;
        }
        self.write_pos = to;
        {
            let mut g = self.shared.rollback_generation.lock().unwrap_or_else(|e| e.into_inner());
            *g += 1;
            self.shared.written.store(to, Ordering::Release);
            self.shared.synced.fetch_min(to, Ordering::AcqRel);
        }
        self.shared.keys.rewind(to);
        if let Some(seg) = self.shared.segment_at_or_before(to) {
            self.active = seg;
        }
        let mut all_queues = queues;
        if let Some(prev) = self.cleanup.take() {
            all_queues.extend(prev.queues);
        }
        let c = Cleanup { log_from: to, log_to, queues: all_queues };
        if let Err(e) = self.clean(&c) {
            tracing::error!(error = %e, "cleanup after a failed write failed; appends fail until it succeeds");
            self.cleanup = Some(c);
        }
    }

    fn clean(&self, c: &Cleanup) -> StorageResult<()> {
        for seg in self.shared.segments_overlapping(c.log_from, c.log_to) {
            seg.zero(c.log_from, c.log_to).map_err(|e| io_error("zeroing a failed write", e))?;
        }
        for &(s, _) in &c.queues {
            let q = &self.queues[s];
            q.index.clear_from(q.next_offset).map_err(|e| io_error("clearing index entries of a failed write", e))?;
        }
        Ok(())
    }

    fn validate(&self, messages: &[AppendMessage]) -> StorageResult<()> {
        let segment_size = self.shared.config.segment_size;
        for m in messages {
            if m.topic.len() > u16::MAX as usize {
                return Err(invalid_input(format!("topic of {} bytes is longer than 65535 bytes", m.topic.len())));
            }
            // The property encoding has u16 counts and key lengths; refuse what it would cut.
            if m.properties.len() > u16::MAX as usize || m.properties.iter().any(|(k, _)| k.len() > u16::MAX as usize) {
                return Err(invalid_input("more than 65535 properties, or a property key longer than 65535 bytes"));
            }
            let size = (record_len(m.topic.len(), m.properties.encoded_len(), m.body.len()) + HEADER_LEN) as u64;
            if size > segment_size {
                return Err(StorageError::RecordTooLarge { size, segment_size });
            }
        }
        Ok(())
    }

    fn queue_slot(&mut self, topic: &Arc<str>, queue_id: u32) -> StorageResult<usize> {
        if let Some(&slot) = self.slots.get(topic.as_ref()).and_then(|m| m.get(&queue_id)) {
            return Ok(slot);
        }
        let index = create_queue(
            &self.shared.index_dir,
            topic.clone(),
            queue_id,
            self.shared.config.queue_index_entries_per_file,
            0,
        )
        .map_err(|e| io_error(format!("creating the index of {topic}/{queue_id}"), e))?;
        let index = Arc::new(index);
        self.shared.insert_queue(index.clone());
        Ok(self.add_queue(index, 0))
    }

    /// The segment after the active one (created if needed).
    fn next_segment(&mut self) -> StorageResult<Arc<Segment>> {
        let base = self.active.end();
        if let Some(seg) = self.shared.segment_at_or_before(base).filter(|s| s.base == base) {
            return Ok(seg);
        }
        let seg = Segment::create(&self.shared.log_dir, base, self.shared.config.segment_size)
            .map_err(|e| io_error(format!("creating segment at {base}"), e))?;
        fsync_dir(&self.shared.log_dir).map_err(|e| io_error("syncing the commit-log directory", e))?;
        let seg = Arc::new(seg);
        self.shared.push_segment(seg.clone());
        tracing::debug!(base, "rolled to a new commit-log segment");
        Ok(seg)
    }

    /// Encodes and writes the batch; returns the segments written to.
    fn encode_and_write(
        &mut self,
        requests: &[AppendRequest],
        results: &mut Vec<Vec<AppendResult>>,
    ) -> StorageResult<Vec<Arc<Segment>>> {
        let now = now_ms();
        self.buf.clear();
        // A batch far bigger than `max_batch_bytes` (one huge request) does not keep its buffer.
        let max = self.shared.config.max_batch_bytes;
        if self.buf.capacity() > 2 * max {
            self.buf.shrink_to(max);
        }
        let mut chunks: Vec<(Arc<Segment>, u64, usize)> = Vec::new(); // segment, position, buf start
        let mut chunk_pos = self.write_pos;
        let mut chunk_buf = 0;
        let mut key_entries: Vec<(u64, u64)> = Vec::new();
        for r in requests {
            let mut res = Vec::with_capacity(r.messages.len());
            for m in &r.messages {
                self.props.clear();
                m.properties.encode(&mut self.props);
                let len = record_len(m.topic.len(), self.props.len(), m.body.len()) as u64;
                if self.write_pos + len > self.active.end() {
                    if self.active.end() - self.write_pos >= HEADER_LEN as u64 {
                        encode_end_of_segment(&mut self.buf, self.write_pos);
                    }
                    if self.buf.len() > chunk_buf {
                        chunks.push((self.active.clone(), chunk_pos, chunk_buf));
                    }
                    self.active = self.next_segment()?;
                    self.write_pos = self.active.base;
                    chunk_pos = self.write_pos;
                    chunk_buf = self.buf.len();
                }
                let slot = self.queue_slot(&m.topic, m.queue_id)?;
                let q = &mut self.queues[slot];
                if !q.in_batch {
                    q.in_batch = true;
                    q.batch_first = q.next_offset;
                    q.batch_entries.clear();
                }
                let position = self.write_pos;
                let header = RecordHeader {
                    queue_id: m.queue_id,
                    log_position: position,
                    queue_offset: q.next_offset,
                    store_timestamp_ms: now,
                    born_timestamp_ms: m.born_timestamp_ms,
                    flags: m.flags,
                    tag_hash: m.tag_hash,
                };
                encode_record(&mut self.buf, &header, &m.topic, &self.props, &m.body);
                let entry = IndexEntry {
                    log_position: position,
                    size: len as u32,
                    tag_hash: m.tag_hash,
                    store_timestamp_ms: now,
                };
                q.batch_entries.extend_from_slice(&entry.encode());
                res.push(AppendResult { queue_offset: q.next_offset, log_position: position, store_timestamp_ms: now });
                q.next_offset += 1;
                self.write_pos += len;
                collect_keys(m, position, &mut key_entries);
            }
            results.push(res);
        }
        if self.buf.len() > chunk_buf {
            chunks.push((self.active.clone(), chunk_pos, chunk_buf));
        }
        // The zeroer (if any) stays above what is written now.
        if let (Some(z), Some(first)) = (&self.shared.zero_ahead, chunks.first()) {
            z.before_write(first.1, self.write_pos);
        }
        // Write the log, then the index entries.
        for (i, (seg, pos, start)) in chunks.iter().enumerate() {
            let end = chunks.get(i + 1).map_or(self.buf.len(), |c| c.2);
            if let Some(e) = self.shared.faults.write_fault() {
                return Err(io_error(format!("writing the commit log at {pos}"), e));
            }
            seg.write_at(*pos, &self.buf[*start..end])
                .map_err(|e| io_error(format!("writing the commit log at {pos}"), e))?;
        }
        for q in self.queues.iter().filter(|q| q.in_batch) {
            q.index
                .write_entries(q.batch_first, &q.batch_entries)
                .map_err(|e| io_error(format!("writing the index of {}/{}", q.index.topic, q.index.queue_id), e))?;
        }
        self.shared.keys.insert(&key_entries);
        let mut segments: Vec<Arc<Segment>> = chunks.into_iter().map(|c| c.0).collect();
        segments.dedup_by_key(|s| s.base);
        Ok(segments)
    }
}

/// The key-index entries of one message: its id and each of its keys.
pub fn collect_keys(m: &AppendMessage, position: u64, out: &mut Vec<(u64, u64)>) {
    collect_keys_from(&m.topic, &m.properties, position, out);
}

pub fn collect_keys_from(
    topic: &str,
    properties: &crate::storage::Properties,
    position: u64,
    out: &mut Vec<(u64, u64)>,
) {
    if let Some(id) = properties.get(keys::UNIQ_KEY) {
        out.push((message_id_hash(id), position));
    }
    if let Some(ks) = properties.get(keys::KEYS) {
        for k in ks.split(' ').filter(|k| !k.is_empty()) {
            out.push((message_key_hash(topic, k), position));
        }
    }
}

/// `Sync` mode, on the writer thread: one `fdatasync` per segment that the batches written so
/// far touched, then publishes them and acknowledges their appends, all without holding the
/// writer (appending threads write the next batches meanwhile, only above these, and only this
/// thread publishes). A failed fsync fails every unpublished append, those of the batches
/// written during the sync too, and rolls the writer back to the last published (durable)
/// position first, so nothing of them is read, counted as written, or left on disk to
/// resurface after a restart.
fn commit(writer: &Mutex<Writer>, unsynced: &Mutex<Unsynced>, shared: &Shared) {
    let batches = {
        let mut u = lock(unsynced);
        u.idle = false;
        std::mem::take(&mut u.batches)
    };
    if batches.is_empty() {
        return;
    }
    // In log order: a segment's batches are next to each other.
    let mut segments: Vec<Arc<Segment>> = batches.iter().flat_map(|b| b.segments.iter().cloned()).collect();
    segments.dedup_by_key(|s| s.base);
    match sync_segments(shared, &segments) {
        Ok(()) => {
            if let Some(last) = batches.last() {
                shared.synced.store(last.end, Ordering::Release);
            }
            for batch in batches {
                publish(shared, batch);
            }
        }
        Err(e) => {
            let mut w = lock(writer);
            let to = shared.published.load(Ordering::Acquire);
            tracing::error!(error = %e, position = to, "commit-log fsync failed; failing the batch and rolling back");
            let queues = (0..w.queues.len())
                .filter(|&s| w.queues[s].next_offset > w.queues[s].index.end())
                .map(|s| (s, w.queues[s].index.end()))
                .collect();
            w.roll_back(to, queues);
            // Written while the writer was free during the sync, and zeroed with the rest.
            let later = std::mem::take(&mut lock(unsynced).batches);
            for c in batches.into_iter().chain(later).flat_map(|b| b.replies) {
                let _ = c.reply.send(Err(replicate_error(&e)));
            }
        }
    }
}

/// Makes a written (and, in `Sync` mode, synced) batch readable and acknowledges its appends.
/// Log position first: a reader that sees a new queue end must also see the records it points
/// at as published.
fn publish(shared: &Shared, batch: WrittenBatch) {
    shared.published.store(batch.end, Ordering::Release);
    for (q, end) in &batch.queue_ends {
        q.publish(*end);
    }
    observe_stage(AppendStage::Stored, batch.replies.iter().map(|c| c.created));
    deliver(batch.replies.into_iter().map(|c| Answer { reply: c.reply, value: Ok(c.results), origin: c.origin }));
}

fn sync_segments(shared: &Shared, segments: &[Arc<Segment>]) -> StorageResult<()> {
    let started = std::time::Instant::now();
    let result = sync_segments_inner(shared, segments);
    if result.is_ok()
        && !segments.is_empty()
        && let Some(metrics) = crate::observability::metrics::global()
    {
        metrics.flush_latency(started.elapsed());
    }
    result
}

fn sync_segments_inner(shared: &Shared, segments: &[Arc<Segment>]) -> StorageResult<()> {
    for seg in segments {
        if let Some(e) = shared.faults.sync_fault() {
            return Err(io_error(format!("fsyncing segment {}", seg.base), e));
        }
        shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        seg.sync().map_err(|e| io_error(format!("fsyncing segment {}", seg.base), e))?;
    }
    Ok(())
}

/// The flusher of `Async` mode: fsync what was written, every `interval`, and once more at
/// shutdown. Appends were already acknowledged; a failure is logged and retried.
pub fn run_async_flusher(shared: Arc<Shared>, stop: Receiver<()>, interval: Duration) {
    loop {
        let stop = match stop.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        flush_written(&shared);
        if stop {
            break;
        }
    }
}

fn flush_written(shared: &Shared) {
    let generation = *shared.rollback_generation.lock().unwrap_or_else(|e| e.into_inner());
    let target = shared.written.load(Ordering::Acquire);
    let synced = shared.synced.load(Ordering::Acquire);
    if target <= synced {
        return;
    }
    let segments = shared.segments_overlapping(synced, target);
    match sync_segments(shared, &segments) {
        Ok(()) => {
            let g = shared.rollback_generation.lock().unwrap_or_else(|e| e.into_inner());
            // A roll-back since we sampled `target` may have replaced part of what we synced.
            if *g == generation {
                shared.synced.fetch_max(target, Ordering::AcqRel);
            }
        }
        Err(e) => {
            shared.flush_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "async flush failed; acknowledged messages may not be durable");
        }
    }
}
