//! Segments as seen by tiering: which segments are complete (the writer rolled past them and
//! their records are published), the bytes of a segment or of a published range of one (a
//! chunk of the active segment) as one zero-copy [`Bytes`] slice of the mapping, and a scan of
//! their records (the data the index slices of an uploaded object are
//! built from). Also the record decoder the cold-read path uses on bytes fetched back from
//! the object store, so remote records are checked exactly like local ones.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::CommitLog;
use super::format::{Frame, FrameError, IndexEntry, RecordHeader, decode_frame, decode_properties};
use crate::storage::{StorageError, StorageResult, StoredMessage};

/// A segment the writer has rolled past, whose records are all published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSegmentInfo {
    /// Log position of the first byte.
    pub base: u64,
    /// File size (positions `[base, base + file_size)`).
    pub file_size: u64,
    /// Last modification time in ms since the epoch (what local retention ages by).
    pub modified_ms: i64,
}

/// One message record found by [`CommitLog::scan_sealed_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    pub topic: Arc<str>,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_position: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub store_timestamp_ms: i64,
}

impl ScannedRecord {
    /// The 32-byte queue-index entry of this record (the local `.cq` format).
    pub fn index_entry(&self) -> [u8; super::format::INDEX_ENTRY_LEN] {
        IndexEntry {
            log_position: self.log_position,
            size: self.size,
            tag_hash: self.tag_hash,
            store_timestamp_ms: self.store_timestamp_ms,
        }
        .encode()
    }
}

/// A sealed segment's used bytes and its records, in log order.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    pub base: u64,
    /// Bytes `[base, base + used)`: every message record (the end-of-segment marker and the
    /// zeroes after it are left out). A zero-copy slice of the mapping.
    pub data: Bytes,
    pub records: Vec<ScannedRecord>,
}

impl SegmentScan {
    pub fn used(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Size of a queue-index entry (the index slices of tiered objects use the same format).
pub const INDEX_ENTRY_LEN: usize = super::format::INDEX_ENTRY_LEN;

/// Decodes one queue-index entry: `(log_position, size, tag_hash, store_ms)`, or `None` if
/// it fails its CRC.
pub fn decode_index_entry(b: &[u8]) -> Option<(u64, u32, u64, i64)> {
    IndexEntry::decode(b).map(|e| (e.log_position, e.size, e.tag_hash, e.store_timestamp_ms))
}

/// Decodes and verifies (length, CRC, version, position) the message record at the start of
/// `buf`, found at log `position`.
pub fn decode_message(buf: &Bytes, position: u64) -> Result<StoredMessage, String> {
    match decode_frame(buf, position).map_err(|e| e.to_string())? {
        Frame::Message { header, topic, properties, body, .. } => {
            let topic = std::str::from_utf8(&topic).map_err(|_| "topic is not utf-8".to_string())?;
            stored_message(&header, topic.into(), position, properties, body)
        }
        Frame::EndOfSegment => Err("end-of-segment marker where a message was expected".into()),
    }
}

/// The [`StoredMessage`] of a decoded record (its properties decoded here).
pub(super) fn stored_message(
    header: &RecordHeader,
    topic: Arc<str>,
    position: u64,
    properties: Bytes,
    body: Bytes,
) -> Result<StoredMessage, String> {
    Ok(StoredMessage {
        topic,
        queue_id: header.queue_id,
        queue_offset: header.queue_offset,
        log_position: position,
        store_timestamp_ms: header.store_timestamp_ms,
        born_timestamp_ms: header.born_timestamp_ms,
        flags: header.flags,
        tag_hash: header.tag_hash,
        properties: decode_properties(properties).map_err(|e| e.to_string())?,
        body,
    })
}

impl CommitLog {
    /// First log position still stored locally.
    pub fn log_start(&self) -> u64 {
        self.shared.log_start.load(Ordering::Acquire)
    }

    /// The sealed segments still on disk, in log order: every segment but the active one,
    /// once the published position has reached its end.
    pub fn sealed_segments(&self) -> Vec<SealedSegmentInfo> {
        let published = self.shared.published.load(Ordering::Acquire);
        let segs = self.shared.segments.read().unwrap_or_else(|e| e.into_inner()).clone();
        let n = segs.len();
        segs.iter()
            .take(n.saturating_sub(1))
            .filter(|s| s.end() <= published)
            .map(|s| SealedSegmentInfo {
                base: s.base,
                file_size: s.size,
                modified_ms: s
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as i64),
            })
            .collect()
    }

    /// Records below this position are readable (and acknowledged): what a tail upload may
    /// take from the active segment.
    pub fn published_position(&self) -> u64 {
        self.shared.published.load(Ordering::Acquire)
    }

    /// The segment holding `position`: `(base, end, sealed)`, where `sealed` means the writer
    /// rolled past it and all its records are published. `None` when no segment on disk holds
    /// `position` (below the log start, or at the end of the last segment).
    pub fn segment_span(&self, position: u64) -> Option<(u64, u64, bool)> {
        let published = self.shared.published.load(Ordering::Acquire);
        let segs = self.shared.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.base <= position).checked_sub(1)?;
        let s = segs.get(i)?;
        if !s.contains(position) {
            return None;
        }
        let sealed = i + 1 < segs.len() && s.end() <= published;
        Some((s.base, s.end(), sealed))
    }

    /// Reads a sealed segment: its used bytes and its records. `Ok(None)` when the segment is
    /// not (or no longer) on disk or not sealed. A record that fails its checks is an error
    /// (such a segment is not uploaded: the data would be served damaged).
    pub fn scan_sealed_segment(&self, base: u64) -> StorageResult<Option<SegmentScan>> {
        if !self.sealed_segments().iter().any(|s| s.base == base) {
            return Ok(None);
        }
        self.scan_range(base, u64::MAX)
    }

    /// Reads the published records of one segment from `from` (a record boundary: a segment
    /// base or the end of an earlier scan) up to `to` (clamped to the published position and
    /// to the segment end; records crossing it are left out), stopping at the end-of-segment
    /// marker: the unit of a chunk upload. `Ok(None)` when no segment holds `from`. The scan's
    /// `base` is `from`. A record that fails its checks is an error.
    pub fn scan_range(&self, from: u64, to: u64) -> StorageResult<Option<SegmentScan>> {
        let Some(seg) = self.shared.segment_for(from) else { return Ok(None) };
        let limit = to.min(self.shared.published.load(Ordering::Acquire)).min(seg.end());
        let all = seg.tail_from(from);
        let mut pos = from;
        let mut records = Vec::new();
        while pos < limit {
            let at = (pos - from) as usize;
            if at >= all.len() {
                break;
            }
            match decode_frame(&all.slice(at..), pos) {
                Ok(Frame::Message { header, topic, len, .. }) => {
                    let topic = std::str::from_utf8(&topic)
                        .map_err(|_| StorageError::Corrupted { position: pos, reason: "topic is not utf-8".into() })?;
                    let topic =
                        self.shared.queue(topic, header.queue_id).map_or_else(|| topic.into(), |q| q.topic.clone());
                    if pos + len as u64 > limit {
                        break;
                    }
                    records.push(ScannedRecord {
                        topic,
                        queue_id: header.queue_id,
                        queue_offset: header.queue_offset,
                        log_position: pos,
                        size: len as u32,
                        tag_hash: header.tag_hash,
                        store_timestamp_ms: header.store_timestamp_ms,
                    });
                    pos += len as u64;
                }
                Ok(Frame::EndOfSegment) | Err(FrameError::Empty) => break,
                Err(FrameError::Truncated { .. }) if all[at..].iter().all(|&b| b == 0) => break,
                Err(e) => return Err(StorageError::Corrupted { position: pos, reason: e.to_string() }),
            }
        }
        let used = (pos - from) as usize;
        Ok(Some(SegmentScan { base: from, data: all.slice(..used), records }))
    }
}
