//! The tiering task: uploads the log in ranges (sealed segments, and chunks of the active
//! segment's published tail when tail uploads are on or a `persist_remote` waiter asks; object
//! first, manifest row second), merges the chunks of a sealed segment into one object, raises
//! the local retention limit past what is covered, sweeps orphan objects and applies remote
//! retention. Failures of the object store or the manifest
//! are retried with capped exponential backoff and jitter, forever; they are never fatal,
//! except a fenced manifest write, which stops the task for good (another node owns the log).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::clock::now_ms;
use crate::metadata::{MetadataError, SegmentQueue, SegmentRecord};
use crate::storage::local::{INDEX_ENTRY_LEN, SegmentScan};
use crate::storage::object::ObjectError;

/// The object key of a segment: `<prefix>/<2 hex>/<log_id>/<base:020>.seg`.
pub fn object_key(prefix: &str, log_id: &str, base: u64) -> String {
    let log = if log_id.is_empty() { "local" } else { log_id };
    let hash = crc32c::crc32c(format!("{log}/{base}").as_bytes()) & 0xff;
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{hash:02x}/{log}/{base:020}.seg")
    } else {
        format!("{prefix}/{hash:02x}/{log}/{base:020}.seg")
    }
}

/// The object key of the chunks of `[base, end)` merged into one object:
/// `<prefix>/<2 hex>/<log_id>/<base:020>-<end:020>.seg` (never the key of a chunk, which a
/// reader may still be fetching).
pub fn merged_object_key(prefix: &str, log_id: &str, base: u64, end: u64) -> String {
    let key = object_key(prefix, log_id, base);
    format!("{}-{end:020}.seg", key.trim_end_matches(".seg"))
}

/// Whether `key` is an object of log `log_id` under `prefix` (as [`object_key`] or
/// [`merged_object_key`] make them), and its base.
pub(super) fn parse_object_key(prefix: &str, log_id: &str, key: &str) -> Option<u64> {
    let log = if log_id.is_empty() { "local" } else { log_id };
    let prefix = prefix.trim_end_matches('/');
    let rest = if prefix.is_empty() { key } else { key.strip_prefix(prefix)?.strip_prefix('/')? };
    let (hash, rest) = rest.split_once('/')?;
    let (l, name) = rest.split_once('/')?;
    let digits = name.strip_suffix(".seg")?;
    if hash.len() != 2 || l != log {
        return None;
    }
    match digits.split_once('-') {
        None if digits.len() == 20 => {
            let base = digits.parse().ok()?;
            (object_key(prefix, log_id, base) == key).then_some(base)
        }
        Some((b, e)) if b.len() == 20 && e.len() == 20 => {
            let (base, end) = (b.parse().ok()?, e.parse().ok()?);
            (merged_object_key(prefix, log_id, base, end) == key).then_some(base)
        }
        _ => None,
    }
}

/// The object of a scanned range (data, then one index slice per queue) and its manifest row.
/// A queue whose offsets are not contiguous within the range is an error (the index slice
/// could not address them).
pub fn build_object(prefix: &str, log_id: &str, scan: &SegmentScan) -> Result<(Vec<Bytes>, SegmentRecord), String> {
    let mut by_queue: std::collections::BTreeMap<(Arc<str>, u32), Vec<usize>> = std::collections::BTreeMap::new();
    for (i, r) in scan.records.iter().enumerate() {
        by_queue.entry((r.topic.clone(), r.queue_id)).or_default().push(i);
    }
    let used = scan.used();
    let mut index = Vec::with_capacity(scan.records.len() * INDEX_ENTRY_LEN);
    let mut queues = Vec::with_capacity(by_queue.len());
    for ((topic, queue_id), idx) in by_queue {
        let first = scan.records[idx[0]].queue_offset;
        for (n, &i) in idx.iter().enumerate() {
            let r = &scan.records[i];
            if r.queue_offset != first + n as u64 {
                return Err(format!(
                    "segment {}: {topic}/{queue_id} offsets are not contiguous ({} where {} was expected)",
                    scan.base,
                    r.queue_offset,
                    first + n as u64
                ));
            }
        }
        let index_pos = used + index.len() as u64;
        for &i in &idx {
            index.extend_from_slice(&scan.records[i].index_entry());
        }
        queues.push(SegmentQueue {
            topic: topic.to_string(),
            queue_id,
            first_offset: first,
            end_offset: first + idx.len() as u64,
            index_pos,
        });
    }
    let object_size = used + index.len() as u64;
    let key = object_key(prefix, log_id, scan.base);
    let record = SegmentRecord {
        log_id: log_id.to_string(),
        base: scan.base,
        size: used,
        object_key: key,
        object_size,
        first_store_ms: scan.records.first().map_or(0, |r| r.store_timestamp_ms),
        last_store_ms: scan.records.iter().map(|r| r.store_timestamp_ms).max().unwrap_or(0),
        uploaded_at_ms: now_ms(),
        queues,
    };
    Ok((vec![scan.data.clone(), Bytes::from(index)], record))
}

/// Capped exponential backoff with jitter: attempt 0 waits about `min`, doubling up to `max`.
fn backoff(inner: &Inner, attempt: u32) -> Duration {
    let min = inner.settings.retry_min_backoff.max(Duration::from_millis(1));
    let max = inner.settings.retry_max_backoff.max(min);
    let exp = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    // Full jitter in [exp/2, exp].
    let half = exp / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis().max(1) as u64))
}

pub(super) async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    // A fenced (cluster) log is opened on a take-over, when uploads and `persist_remote`
    // waiters must not queue behind a listing of the whole bucket: its first sweep waits for
    // the first remote-retention pass.
    if inner.settings.fence.is_none() {
        sweep_orphans(&inner).await;
    }
    let mut next_retention = Instant::now() + inner.settings.remote_retention_interval;
    let tail = inner.settings.tail_upload_interval;
    let period = tail.map_or(inner.settings.upload_interval, |t| t.min(inner.settings.upload_interval));
    let mut tail_requested = false;
    while !stop.is_cancelled() && !inner.is_fenced() {
        // A stop abandons a pass in flight (an object put but not recorded is an orphan).
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = upload_pending(&inner, &stop, tail.is_some() || tail_requested) => {}
        }
        if inner.is_fenced() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = merge_chunks(&inner) => {}
        }
        if Instant::now() >= next_retention {
            remote_retention(&inner, &stop).await;
            sweep_orphans(&inner).await;
            next_retention = Instant::now() + inner.settings.remote_retention_interval;
        }
        tail_requested = false;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
            _ = inner.tail_request.notified() => tail_requested = true,
        }
    }
}

/// Counts what waits for upload and tells the local log how far retention may go.
fn refresh_waiting(inner: &Inner) {
    let covered = inner.covered_to();
    let (mut segments, mut bytes) = (0u64, 0u64);
    for s in inner.local.sealed_segments() {
        let end = s.base + s.file_size;
        if end > covered {
            segments += 1;
            bytes += end - s.base.max(covered);
        }
    }
    inner.counters.waiting_segments.store(segments, Ordering::Relaxed);
    inner.counters.waiting_bytes.store(bytes, Ordering::Relaxed);
    inner.update_retention_limit();
}

/// Why an upload step failed.
enum UploadError {
    /// Retry with backoff.
    Retry(String),
    /// The manifest refused the row: another node owns the log.
    Fenced(String),
}

/// Uploads everything due, in log order, up to the published position at the start of the
/// pass: every sealed segment not covered yet and, with `tail`, the published tail of the
/// active segment. Retries failures until they succeed or
/// `stop` is cancelled; a fenced manifest write ends the pass (and the log's uploads).
pub(super) async fn upload_pending(inner: &Arc<Inner>, stop: &CancellationToken, tail: bool) {
    let _one_pass = tokio::select! {
        guard = inner.upload_lock.lock() => guard,
        _ = stop.cancelled() => return,
    };
    let mut last_warn: Option<Instant> = None;
    let limit = inner.local.published_position();
    loop {
        refresh_waiting(inner);
        if inner.is_fenced() {
            return;
        }
        let mut attempt = 0u32;
        loop {
            let base = inner.covered_to();
            match upload_next(inner, tail, limit).await {
                Ok(true) => break,
                Ok(false) => {
                    refresh_waiting(inner);
                    return;
                }
                Err(UploadError::Fenced(reason)) => {
                    tracing::error!(
                        log_id = inner.settings.log_id,
                        fence = ?inner.settings.fence,
                        error = reason,
                        "manifest write fenced: another node owns this log now; uploads and appends stop"
                    );
                    inner.set_fenced();
                    return;
                }
                Err(UploadError::Retry(reason)) => {
                    inner.counters.upload_failures.fetch_add(1, Ordering::Relaxed);
                    let waiting_segments = inner.counters.waiting_segments.load(Ordering::Relaxed);
                    let waiting_bytes = inner.counters.waiting_bytes.load(Ordering::Relaxed);
                    if last_warn.is_none_or(|t| t.elapsed() >= inner.settings.warn_interval) {
                        tracing::warn!(
                            segment = base,
                            waiting_segments,
                            waiting_bytes,
                            error = reason,
                            store = inner.store.describe(),
                            "uploading a sealed segment failed; retrying with backoff. Segments waiting for upload stay on local disk"
                        );
                        last_warn = Some(Instant::now());
                    } else {
                        tracing::debug!(segment = base, error = reason, "upload retry");
                    }
                    let wait = backoff(inner, attempt);
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    // Refresh the counts (more may be sealed meanwhile).
                    refresh_waiting(inner);
                }
            }
        }
    }
}

/// The next range to upload, from the covered position on: the rest of a sealed segment, or
/// (with `tail`) the published records of the active one. Sealed segments with nothing left
/// (only the end-of-segment marker) are passed over, moving the covered position to their end.
/// Nothing at or above `limit` (the published position when the pass started) is taken, so a
/// pass ends under a steady load.
fn next_range(inner: &Inner, tail: bool, limit: u64) -> Result<Option<SegmentScan>, String> {
    loop {
        let from = inner.covered_to().max(inner.local.log_start());
        if from >= limit {
            return Ok(None);
        }
        let Some((_, end, sealed)) = inner.local.segment_span(from) else { return Ok(None) };
        if !sealed && !tail {
            return Ok(None);
        }
        let end = if sealed { end } else { end.min(limit) };
        let scan = inner.local.scan_range(from, end).map_err(|e| format!("scanning the log at {from}: {e}"))?;
        match scan {
            None => return Ok(None),
            Some(scan) if scan.records.is_empty() => {
                if !sealed {
                    return Ok(None);
                }
                inner.covered.send_if_modified(|c| {
                    let moved = *c < end;
                    *c = (*c).max(end);
                    moved
                });
            }
            Some(scan) => return Ok(Some(scan)),
        }
    }
}

/// One range: build the object, `put` it, then record it (fenced when the log has a fence).
/// `Ok(false)`: nothing is due. Idempotent: a retry after a crash puts the same bytes under
/// the same key and upserts the same row.
async fn upload_next(inner: &Arc<Inner>, tail: bool, limit: u64) -> Result<bool, UploadError> {
    let i = inner.clone();
    let scan = tokio::task::spawn_blocking(move || next_range(&i, tail, limit))
        .await
        .map_err(|e| UploadError::Retry(format!("segment scan task failed: {e}")))?
        .map_err(UploadError::Retry)?;
    let Some(scan) = scan else { return Ok(false) };
    let base = scan.base;
    let end = base + scan.used();
    let (parts, record) =
        build_object(&inner.settings.prefix, &inner.settings.log_id, &scan).map_err(UploadError::Retry)?;
    inner.store.put(&record.object_key, parts).await.map_err(|e| {
        UploadError::Retry(match e {
            ObjectError::Transient(m) => format!("object store unavailable: {m}"),
            ObjectError::Permanent(m) | ObjectError::NotFound(m) => format!("object store refused the upload: {m}"),
        })
    })?;
    inner.meta.put_segment(&record, inner.settings.fence.as_ref()).await.map_err(|e| match e {
        MetadataError::Fenced(m) => UploadError::Fenced(m),
        e @ (MetadataError::Unavailable(_) | MetadataError::Query(_) | MetadataError::Invalid(_)) => {
            UploadError::Retry(format!("recording the segment in the manifest: {e}"))
        }
    })?;
    let size = record.object_size;
    tracing::debug!(base, key = record.object_key, bytes = size, queues = record.queues.len(), "log range tiered");
    inner.manifest_write().insert(record);
    inner.covered.send_if_modified(|c| {
        let moved = *c < end;
        *c = (*c).max(end);
        moved
    });
    inner.counters.uploaded_segments.fetch_add(1, Ordering::Relaxed);
    inner.counters.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
    inner.update_retention_limit();
    Ok(true)
}

/// Merges the chunks of every sealed segment that is wholly uploaded in more than one range
/// (tail uploads) into one object: the segment's records are read again from the local log,
/// put under [`merged_object_key`], and recorded with one manifest row that replaces the
/// chunks' rows in the same transaction (fenced like any upload). The chunk objects then have
/// no row: the orphan sweep deletes them after its grace period, so a read already under way
/// finishes. A segment no longer on local disk, or whose chunks do not tile it, stays as it
/// is (a warning for the latter). Failures are retried at the next pass.
pub(super) async fn merge_chunks(inner: &Arc<Inner>) {
    let _no_upload = inner.upload_lock.lock().await;
    let covered = inner.covered_to();
    let local_start = inner.local.log_start();
    let candidates: Vec<Vec<Arc<SegmentRecord>>> = {
        let manifest = inner.manifest_read();
        inner
            .local
            .sealed_segments()
            .iter()
            .map(|s| (s.base, s.base + s.file_size))
            .filter(|&(base, end)| base >= local_start && end <= covered)
            .map(|(base, end)| manifest.segments.range(base..end).map(|(_, r)| r.clone()).collect::<Vec<_>>())
            .filter(|rows| rows.len() > 1)
            .collect()
    };
    for rows in candidates {
        if inner.is_fenced() {
            return;
        }
        match merge_one(inner, &rows).await {
            Ok(()) => {}
            Err(UploadError::Fenced(reason)) => {
                tracing::error!(
                    log_id = inner.settings.log_id,
                    error = reason,
                    "manifest write fenced while merging chunks"
                );
                inner.set_fenced();
                return;
            }
            // The next segments are still tried: one that cannot be merged holds none up.
            Err(UploadError::Retry(reason)) => {
                tracing::warn!(
                    log_id = inner.settings.log_id,
                    segment = rows[0].base,
                    chunks = rows.len(),
                    error = reason,
                    "merging the chunks of a segment failed; retried at the next pass"
                );
            }
        }
    }
}

/// Merges `rows` (the chunks of one sealed segment, in log order) into one object and row.
async fn merge_one(inner: &Arc<Inner>, rows: &[Arc<SegmentRecord>]) -> Result<(), UploadError> {
    let base = rows[0].base;
    let mut end = base;
    for r in rows {
        if r.base != end {
            return Err(UploadError::Retry(format!(
                "chunks do not tile the segment: a gap at {end} (next at {})",
                r.base
            )));
        }
        end = r.base + r.size;
    }
    let i = inner.clone();
    let scan = tokio::task::spawn_blocking(move || i.local.scan_range(base, end))
        .await
        .map_err(|e| UploadError::Retry(format!("segment scan task failed: {e}")))?
        .map_err(|e| UploadError::Retry(format!("scanning the log at {base}: {e}")))?;
    // Dropped locally meanwhile: left as chunks.
    let Some(scan) = scan else { return Ok(()) };
    if scan.base != base || scan.base + scan.used() != end {
        return Err(UploadError::Retry(format!(
            "the local segment [{}, {}) does not match its chunks [{base}, {end})",
            scan.base,
            scan.base + scan.used()
        )));
    }
    let (parts, mut record) =
        build_object(&inner.settings.prefix, &inner.settings.log_id, &scan).map_err(UploadError::Retry)?;
    record.object_key = merged_object_key(&inner.settings.prefix, &inner.settings.log_id, base, end);
    inner
        .store
        .put(&record.object_key, parts)
        .await
        .map_err(|e| UploadError::Retry(format!("putting the merged object: {e}")))?;
    inner.meta.put_segment(&record, inner.settings.fence.as_ref()).await.map_err(|e| match e {
        MetadataError::Fenced(m) => UploadError::Fenced(m),
        e @ (MetadataError::Unavailable(_) | MetadataError::Query(_) | MetadataError::Invalid(_)) => {
            UploadError::Retry(format!("recording the merged segment in the manifest: {e}"))
        }
    })?;
    let (key, bytes) = (record.object_key.clone(), record.object_size);
    {
        let mut manifest = inner.manifest_write();
        for r in rows {
            manifest.remove(r.base);
        }
        manifest.insert(record);
    }
    {
        let mut cache = inner.cache();
        for r in rows {
            cache.forget_segment(r.base);
        }
    }
    inner.counters.merged_chunks.fetch_add(rows.len() as u64, Ordering::Relaxed);
    tracing::debug!(base, end, chunks = rows.len(), key, bytes, "chunks of a sealed segment merged into one object");
    Ok(())
}

/// Deletes objects of this log that have no manifest row and are older than the grace period.
pub(super) async fn sweep_orphans(inner: &Arc<Inner>) {
    // Never beside an upload pass: an object put but not yet recorded looks like an orphan, and
    // with a short grace period it would be deleted just before its row is written.
    let _no_upload = inner.upload_lock.lock().await;
    let prefix = inner.settings.prefix.trim_end_matches('/');
    let list_prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    let objects = match inner.store.list(&list_prefix).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "listing objects for the orphan sweep failed; will retry");
            return;
        }
    };
    let known: HashSet<String> = inner.manifest_read().segments.values().map(|r| r.object_key.clone()).collect();
    let cutoff = now_ms() - inner.settings.orphan_grace.as_millis() as i64;
    for o in objects {
        if parse_object_key(prefix, &inner.settings.log_id, &o.key).is_none() || known.contains(&o.key) {
            continue;
        }
        if o.modified_ms > cutoff {
            continue;
        }
        // Re-check: an upload may have recorded it since the listing.
        if inner.manifest_read().segments.values().any(|r| r.object_key == o.key) {
            continue;
        }
        match inner.store.delete(&o.key).await {
            Ok(()) => {
                inner.counters.orphans_removed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(key = o.key, bytes = o.size, "deleted orphan object (no manifest row)");
            }
            Err(e) => tracing::warn!(key = o.key, error = %e, "deleting an orphan object failed; will retry"),
        }
    }
}

/// Deletes segments whose last record is older than the remote reserved time, which are no
/// longer stored locally and lie below every retention hold: manifest row first, then the object (a crash in between leaves
/// an orphan for the sweep).
pub(super) async fn remote_retention(inner: &Arc<Inner>, stop: &CancellationToken) {
    let cutoff = now_ms() - inner.settings.remote_reserved_time.as_millis() as i64;
    // Never what a retention hold keeps (scheduled messages not fired yet, open transactions):
    // on a log resumed past its manifest (a lost disk) those may be in the object store only.
    let local_start = inner.local.log_start().min(inner.local.lowest_hold().unwrap_or(u64::MAX));
    let expired: Vec<Arc<SegmentRecord>> = inner
        .manifest_read()
        .segments
        .values()
        .take_while(|r| r.last_store_ms < cutoff && r.base + r.size <= local_start)
        .cloned()
        .collect();
    for rec in expired {
        if stop.is_cancelled() {
            return;
        }
        match inner.meta.delete_segment(&rec.log_id, rec.base).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(segment = rec.base, error = %e, "remote retention: removing the manifest row failed; will retry");
                return;
            }
        }
        inner.manifest_write().remove(rec.base);
        inner.cache().forget_segment(rec.base);
        inner.counters.remote_segments_expired.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = inner.store.delete(&rec.object_key).await {
            tracing::warn!(key = rec.object_key, error = %e, "remote retention: deleting the object failed; the orphan sweep will");
        } else {
            tracing::info!(segment = rec.base, key = rec.object_key, "remote retention deleted a tiered segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_and_parse_back() {
        let k = object_key("tier", "node-1", 1 << 20);
        assert!(k.starts_with("tier/") && k.ends_with("/node-1/00000000000001048576.seg"), "{k}");
        assert_eq!(parse_object_key("tier", "node-1", &k), Some(1 << 20));
        assert_eq!(parse_object_key("tier", "node-2", &k), None);
        assert_eq!(parse_object_key("", "", &object_key("", "", 0)), Some(0));
        assert!(object_key("", "", 0).ends_with("/local/00000000000000000000.seg"));
        assert_eq!(parse_object_key("tier", "node-1", "tier/zz/node-1/00000000000001048576.seg"), None);
        let m = merged_object_key("tier", "node-1", 1 << 20, 3 << 20);
        assert!(m.ends_with("/node-1/00000000000001048576-00000000000003145728.seg"), "{m}");
        assert_ne!(m, k, "a merged object never takes a chunk's key");
        assert_eq!(parse_object_key("tier", "node-1", &m), Some(1 << 20));
        assert_eq!(parse_object_key("tier", "node-2", &m), None);
        assert_eq!(parse_object_key("tier", "node-1", &m.replace("-0000", "-9000")), None);
    }
}
