//! Start-up: open the data directory, load the checkpoint, segments and indexes, replay the log
//! written since the checkpoint (re-deriving queue-index and key-index entries), and cut off a
//! torn or corrupt tail.
//!
//! Rules:
//! - Only the log from the checkpoint on is read, so start-up time depends on the checkpoint
//!   interval, not on how much data is stored.
//! - The log is a prefix: the first record that fails its checks (length, CRC, position,
//!   properties) ends it. Everything after it is zeroed, later segments are deleted, and a
//!   warning says what was cut and why. Acknowledged data is never in that tail: in `Sync`
//!   mode it was fsynced before the acknowledgement.
//! - Records from a newer format version stop start-up with an error instead of being cut.
//! - Recovered records are fsynced before anything is served, so an offset handed out after
//!   a restart is never lost (and never reused) by a later power failure.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::checkpoint::Checkpoint;
use super::config::StorageConfig;
use super::format::{Frame, FrameError, HEADER_LEN, IndexEntry, decode_frame, decode_properties};
use super::fs::{DirLock, fsync_dir, io_error};
use super::key_index::{KeyIndex, MemtableLimits};
use super::queue_index::{QueueIndex, create_queue, load_queues};
use super::segment::{Segment, parse_segment_file_name};
use super::writer::collect_keys_from;
use crate::storage::{StorageError, StorageResult};

/// Everything the running log starts from.
pub struct Recovered {
    pub lock: DirLock,
    pub segments: Vec<Arc<Segment>>,
    pub queues: Vec<Arc<QueueIndex>>,
    pub keys: KeyIndex,
    pub log_start: u64,
    /// End of the recovered log: where the next record goes. Everything below is durable.
    pub end: u64,
    pub checkpoint: Checkpoint,
}

pub fn recover(config: &StorageConfig) -> StorageResult<Recovered> {
    let dir = &config.dir;
    let log_dir = dir.join("commitlog");
    let index_dir = dir.join("index");
    let keys_dir = dir.join("keys");
    for d in [dir, &log_dir, &index_dir, &keys_dir] {
        fs::create_dir_all(d).map_err(|e| io_error(format!("creating {}", d.display()), e))?;
    }
    let lock = DirLock::acquire(dir).map_err(|e| io_error("locking the data directory", e))?;
    let checkpoint = Checkpoint::load(dir).map_err(|e| io_error("reading the checkpoint", e))?;

    let mut segments = load_segments(&log_dir)?;
    let resume = match &config.resume {
        Some(r) if segments.is_empty() && checkpoint.is_none() && dir_is_empty(&index_dir)? => Some(r),
        _ => None,
    };
    let log_start = match resume {
        Some(r) => r.position,
        None => segments.first().map_or_else(|| checkpoint.map_or(0, |c| c.log_position), |s| s.base),
    };
    if let Some(r) = resume {
        start_resumed_queues(config, &index_dir, r)?;
    }
    let mut durable = checkpoint.map_or(log_start, |c| c.log_position);
    if durable < log_start {
        tracing::warn!(
            checkpoint = durable,
            log_start,
            "checkpoint is below the first segment; replaying from the first segment"
        );
        durable = log_start;
    }
    if let Some(last) = segments.last() {
        if durable > last.end() {
            return Err(StorageError::Corrupted {
                position: last.end(),
                reason: format!("the checkpoint says the log is durable up to {durable}, but segment files end here"),
            });
        }
    } else {
        let seg = Segment::create(&log_dir, durable, config.segment_size)
            .map_err(|e| io_error("creating the first segment", e))?;
        fsync_dir(&log_dir).map_err(|e| io_error("syncing the commit-log directory", e))?;
        segments.push(Arc::new(seg));
    }
    let key_from = checkpoint.map_or(log_start, |c| c.key_position).clamp(log_start, durable);

    let limits =
        MemtableLimits { max_entries: config.key_index_memtable_entries, max_log_span: config.key_index_max_log_span };
    let keys = KeyIndex::open(keys_dir, key_from, limits).map_err(|e| io_error("opening the key index", e))?;

    let mut replay = Replay::new(config, &index_dir, &segments, durable, log_start)?;
    let outcome = replay.run(key_from, &keys)?;
    if outcome.end < durable {
        // Data the checkpoint called durable is damaged. Losing it is bad; serving it or
        // never starting again is worse. Re-derive the queue indexes for the shorter log
        // (the keys collected so far are all below the damage, so they stay).
        tracing::error!(
            checkpoint = durable,
            end = outcome.end,
            reason = %outcome.reason.as_ref().map_or_else(|| "unknown".to_string(), |r| r.to_string()),
            "the commit log is damaged below its checkpoint; acknowledged messages after the damage are lost"
        );
        drop(replay);
        replay = Replay::new(config, &index_dir, &segments, outcome.end, log_start)?;
    }
    finish(lock, config, &log_dir, segments, replay, outcome, keys, log_start, key_from)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    lock: DirLock,
    config: &StorageConfig,
    log_dir: &Path,
    mut segments: Vec<Arc<Segment>>,
    replay: Replay,
    outcome: ReplayOutcome,
    keys: KeyIndex,
    log_start: u64,
    key_from: u64,
) -> StorageResult<Recovered> {
    let end = outcome.end;
    // Cut the tail: zero the rest of the last segment and delete any later ones.
    let tail_idx = segments.iter().rposition(|s| s.base <= end).unwrap_or(0);
    let tail = segments[tail_idx].clone();
    let trailing_garbage = first_nonzero_after(&tail, end);
    let removed: Vec<Arc<Segment>> = segments.drain(tail_idx + 1..).collect();
    tail.zero(end, tail.end()).map_err(|e| io_error("zeroing the torn tail", e))?;
    for seg in &removed {
        fs::remove_file(&seg.path).map_err(|e| io_error(format!("removing {}", seg.path.display()), e))?;
    }
    match (&outcome.reason, trailing_garbage, removed.is_empty()) {
        (None | Some(FrameError::Empty), None, true) => {}
        (reason, garbage, _) => tracing::warn!(
            position = end,
            segment = %tail.path.display(),
            reason = %reason.as_ref().map_or_else(|| "end of segments".to_string(), |r| r.to_string()),
            nonzero_bytes_after = garbage.is_some(),
            removed_segments = removed.len(),
            "truncated the commit log: a torn or corrupt tail was cut off"
        ),
    }
    // Make everything recovered durable before it can be served.
    for seg in segments.iter().filter(|s| s.end() > replay.durable) {
        seg.sync().map_err(|e| io_error("syncing recovered segments", e))?;
    }
    fsync_dir(log_dir).map_err(|e| io_error("syncing the commit-log directory", e))?;
    let queues = replay.into_queues();
    for q in &queues {
        q.sync().map_err(|e| io_error("syncing recovered queue indexes", e))?;
    }
    let checkpoint = Checkpoint { log_position: end, key_position: key_from };
    checkpoint.store(&config.dir).map_err(|e| io_error("writing the checkpoint", e))?;
    tracing::info!(
        log_start,
        end,
        replayed_records = outcome.records,
        queues = queues.len(),
        segments = segments.len(),
        "commit log recovered"
    );
    Ok(Recovered { lock, segments, queues, keys, log_start, end, checkpoint })
}

/// Whether a directory has no entries.
fn dir_is_empty(dir: &Path) -> StorageResult<bool> {
    let mut entries = fs::read_dir(dir).map_err(|e| io_error(format!("listing {}", dir.display()), e))?;
    Ok(entries.next().is_none())
}

/// A log resumed in an empty directory: every listed queue gets its first index file at its
/// resume offset (empty, so the queue starts and ends there, also after a restart).
fn start_resumed_queues(config: &StorageConfig, index_dir: &Path, r: &super::config::ResumePoint) -> StorageResult<()> {
    for q in &r.queues {
        create_queue(
            index_dir,
            q.topic.as_str().into(),
            q.queue_id,
            config.queue_index_entries_per_file,
            q.next_offset,
        )
        .and_then(|index| {
            index.ensure_file(q.next_offset)?;
            index.sync()
        })
        .map_err(|e| io_error(format!("starting the index of {}/{} at {}", q.topic, q.queue_id, q.next_offset), e))?;
    }
    fsync_dir(index_dir).map_err(|e| io_error("syncing the index directory", e))?;
    tracing::info!(position = r.position, queues = r.queues.len(), "commit log resumed from a manifest");
    Ok(())
}

/// Whether there is data after `end` in this segment (looks at the next 1 MiB only: a
/// diagnostic for the truncation warning).
fn first_nonzero_after(seg: &Segment, end: u64) -> Option<u64> {
    let tail = seg.tail_from(end);
    let window = &tail[..tail.len().min(1 << 20)];
    window.iter().position(|&b| b != 0).map(|i| end + i as u64)
}

fn load_segments(log_dir: &Path) -> StorageResult<Vec<Arc<Segment>>> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(log_dir).map_err(|e| io_error("listing segments", e))?;
    for entry in entries {
        let path = entry.map_err(|e| io_error("listing segments", e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(|e| io_error("removing a temporary file", e))?;
            continue;
        }
        let Some(base) = parse_segment_file_name(name) else {
            continue;
        };
        let seg = Segment::open(path.clone(), base).map_err(|e| io_error(format!("opening {}", path.display()), e))?;
        segments.push(Arc::new(seg));
    }
    segments.sort_by_key(|s| s.base);
    for w in segments.windows(2) {
        if w[0].end() != w[1].base {
            return Err(StorageError::Corrupted {
                position: w[0].end(),
                reason: format!(
                    "segment {} ends at {} but the next one starts at {}: a segment file is missing",
                    w[0].path.display(),
                    w[0].end(),
                    w[1].base
                ),
            });
        }
    }
    Ok(segments)
}

struct ReplayOutcome {
    end: u64,
    /// Why the scan stopped (`None`: ran past the last segment).
    reason: Option<FrameError>,
    records: u64,
}

/// Queue state during the replay.
struct ReplayQueue {
    index: Arc<QueueIndex>,
    next_offset: u64,
    /// Had no index files: its first replayed record sets its offsets.
    unknown_offsets: bool,
    pending_first: u64,
    pending: Vec<u8>,
}

struct Replay {
    segments: Vec<Arc<Segment>>,
    durable: u64,
    index_dir: std::path::PathBuf,
    entries_per_file: u64,
    queues: Vec<ReplayQueue>,
    slots: HashMap<(Arc<str>, u32), usize>,
}

impl Replay {
    fn new(
        config: &StorageConfig,
        index_dir: &Path,
        segments: &[Arc<Segment>],
        durable: u64,
        log_start: u64,
    ) -> StorageResult<Self> {
        let loaded = load_queues(index_dir, durable, log_start, config.queue_index_entries_per_file)
            .map_err(|e| io_error("loading queue indexes", e))?;
        let mut r = Self {
            segments: segments.to_vec(),
            durable,
            index_dir: index_dir.to_path_buf(),
            entries_per_file: config.queue_index_entries_per_file,
            queues: Vec::new(),
            slots: HashMap::new(),
        };
        for l in loaded {
            let end = l.index.end();
            r.slots.insert((l.index.topic.clone(), l.index.queue_id), r.queues.len());
            r.queues.push(ReplayQueue {
                index: l.index,
                next_offset: end,
                unknown_offsets: !l.had_files,
                pending_first: end,
                pending: Vec::new(),
            });
        }
        Ok(r)
    }

    fn run(&mut self, from: u64, keys: &KeyIndex) -> StorageResult<ReplayOutcome> {
        let mut pos = from;
        let mut records = 0u64;
        let mut key_entries = Vec::new();
        let mut seg_idx = self.segments.iter().rposition(|s| s.base <= pos).unwrap_or(0);
        let reason = loop {
            let seg = self.segments[seg_idx].clone();
            if seg.end() - pos < HEADER_LEN as u64 {
                // Too little room left for a record: the writer moved on to the next segment.
                match self.segments.get(seg_idx + 1) {
                    Some(next) => {
                        pos = next.base;
                        seg_idx += 1;
                        continue;
                    }
                    None => break None,
                }
            }
            let bytes = seg.tail_from(pos);
            match decode_frame(&bytes, pos) {
                Ok(Frame::Message { header, topic, properties, len, .. }) => {
                    // The CRC matched, so these are the bytes that were written: a property
                    // block that does not decode is a writer bug, not a torn tail. Keep the
                    // record (reads report it as corrupted) and the log after it.
                    let props = match decode_properties(properties) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(position = pos, error = %e, "record with an undecodable property block");
                            crate::storage::Properties::new()
                        }
                    };
                    let topic = std::str::from_utf8(&topic)
                        .map_err(|_| StorageError::Corrupted { position: pos, reason: "topic is not utf-8".into() })?;
                    if pos >= self.durable {
                        self.index_record(pos, topic, &header, len)?;
                    }
                    collect_keys_from(topic, &props, pos, &mut key_entries);
                    if key_entries.len() >= 4096 {
                        keys.insert(&key_entries);
                        key_entries.clear();
                    }
                    records += 1;
                    pos += len as u64;
                }
                Ok(Frame::EndOfSegment) => match self.segments.get(seg_idx + 1) {
                    Some(next) => {
                        pos = next.base;
                        seg_idx += 1;
                    }
                    None => {
                        pos = seg.end();
                        break None;
                    }
                },
                Err(e) if e.is_unsupported_version() => {
                    return Err(StorageError::Corrupted {
                        position: pos,
                        reason: format!("{e}: written by a newer version of rmq-gateway; refusing to start"),
                    });
                }
                Err(e) => break Some(e),
            }
        };
        keys.insert(&key_entries);
        self.flush_all()?;
        Ok(ReplayOutcome { end: pos, reason, records })
    }

    fn index_record(
        &mut self,
        pos: u64,
        topic: &str,
        header: &super::format::RecordHeader,
        len: usize,
    ) -> StorageResult<()> {
        let slot = match self.slots.get(&(Arc::<str>::from(topic), header.queue_id)) {
            Some(&s) => s,
            None => {
                let index = create_queue(&self.index_dir, topic.into(), header.queue_id, self.entries_per_file, 0)
                    .map_err(|e| io_error(format!("creating the index of {topic}/{}", header.queue_id), e))?;
                let index = Arc::new(index);
                self.slots.insert((index.topic.clone(), header.queue_id), self.queues.len());
                self.queues.push(ReplayQueue {
                    index,
                    next_offset: 0,
                    unknown_offsets: true,
                    pending_first: 0,
                    pending: Vec::new(),
                });
                self.queues.len() - 1
            }
        };
        let q = &mut self.queues[slot];
        if header.queue_offset != q.next_offset {
            if q.unknown_offsets && q.pending.is_empty() {
                tracing::warn!(
                    topic,
                    queue_id = header.queue_id,
                    offset = header.queue_offset,
                    "queue index was missing; taking the queue's offsets from the log"
                );
                q.index.reset_empty(header.queue_offset);
                q.next_offset = header.queue_offset;
                q.pending_first = header.queue_offset;
            } else {
                return Err(StorageError::Corrupted {
                    position: pos,
                    reason: format!(
                        "record of {topic}/{} has queue offset {} but the index expects {}; refusing to guess",
                        header.queue_id, header.queue_offset, q.next_offset
                    ),
                });
            }
        }
        q.unknown_offsets = false;
        let entry = IndexEntry {
            log_position: pos,
            size: len as u32,
            tag_hash: header.tag_hash,
            store_timestamp_ms: header.store_timestamp_ms,
        };
        if q.pending.is_empty() {
            q.pending_first = q.next_offset;
        }
        q.pending.extend_from_slice(&entry.encode());
        q.next_offset += 1;
        if q.pending.len() >= 64 * 1024 {
            flush_queue(q)?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> StorageResult<()> {
        for q in &mut self.queues {
            flush_queue(q)?;
        }
        Ok(())
    }

    fn into_queues(self) -> Vec<Arc<QueueIndex>> {
        self.queues
            .into_iter()
            .map(|q| {
                q.index.publish(q.next_offset);
                q.index
            })
            .collect()
    }
}

fn flush_queue(q: &mut ReplayQueue) -> StorageResult<()> {
    if q.pending.is_empty() {
        return Ok(());
    }
    q.index
        .write_entries(q.pending_first, &q.pending)
        .map_err(|e| io_error(format!("writing the index of {}/{}", q.index.topic, q.index.queue_id), e))?;
    q.pending.clear();
    Ok(())
}
