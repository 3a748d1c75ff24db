//! The maintenance thread: writes frozen key-index memtables as run files, writes
//! checkpoints, and applies retention. None of it is on the append path.
//!
//! **Checkpoint** (every `checkpoint_interval`): take the fsynced log position `P` (every
//! record below it is durable and its queue-index entry written), fsync every dirty
//! queue-index file, then record `P` and the key index's durable position in the checkpoint
//! file. Recovery replays from there.
//!
//! **Page cache** (after every checkpoint): the log's pages more than `page_cache_window`
//! bytes behind the fsynced position are dropped from the page cache, so a log written faster
//! than memory is recycled keeps a bounded cache (and a container's memory charge bounded)
//! instead of growing it until the kernel reclaims under the writer.
//!
//! **Retention** (every `retention_interval`): delete the oldest *sealed* segment while it is
//! older than `file_reserved_time` (by modification time, as RocketMQ) or the disk is fuller
//! than `disk_max_used_ratio`; then move queue starts up and drop index data below the new
//! log start. Never deleted: the active segment, anything not yet covered by a checkpoint, and
//! anything above the retention limit (the hook for tiered storage: the offloader will hold
//! back segments that are not uploaded yet; see [`CommitLog::set_retention_limit`]).
//!
//! [`CommitLog::set_retention_limit`]: super::CommitLog::set_retention_limit

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::Shared;
use super::checkpoint::Checkpoint;
use super::fs::disk_used_ratio;

/// What the maintenance thread is asked to do.
#[derive(Debug, Default)]
pub struct MaintenanceState {
    /// Something to do now (a memtable was frozen).
    pub wake: bool,
    /// Stop after a final key-index flush and checkpoint (clean close).
    pub close: bool,
    /// Stop at once (drop without close; the next open recovers from the last checkpoint).
    pub abort: bool,
}

pub fn run(shared: Arc<Shared>) {
    let ckpt_every = shared.config.checkpoint_interval;
    let retention_every = shared.config.retention_interval;
    let mut next_checkpoint = Instant::now() + ckpt_every;
    // First retention pass soon after start (a restarted node may be over its limits).
    let mut next_retention = Instant::now() + retention_every.min(Duration::from_secs(1));
    loop {
        let (close, abort) = {
            let (lock, cvar) = &shared.maintenance;
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if st.wake || st.close || st.abort {
                    break;
                }
                let now = Instant::now();
                let due = next_checkpoint.min(next_retention);
                if now >= due {
                    break;
                }
                st = cvar.wait_timeout(st, due - now).unwrap_or_else(|e| e.into_inner()).0;
            }
            st.wake = false;
            (st.close, st.abort)
        };
        if abort {
            return;
        }
        if close {
            let written = shared.written.load(Ordering::Acquire);
            shared.keys.freeze_all(written);
            flush_keys(&shared);
            if let Err(e) = checkpoint(&shared) {
                tracing::error!(error = %e, "final checkpoint failed; the next start replays more log");
            }
            return;
        }
        flush_keys(&shared);
        let now = Instant::now();
        if now >= next_checkpoint {
            if let Err(e) = checkpoint(&shared) {
                tracing::warn!(error = %e, "checkpoint failed; will retry");
            }
            release_page_cache(&shared);
            next_checkpoint = Instant::now() + ckpt_every;
        }
        if now >= next_retention {
            retention(&shared);
            next_retention = Instant::now() + retention_every;
        }
    }
}

fn flush_keys(shared: &Shared) {
    if !shared.keys.has_frozen() {
        return;
    }
    let log_start = shared.log_start.load(Ordering::Acquire);
    if let Err(e) = shared.keys.flush(log_start) {
        tracing::warn!(error = %e, "writing the key index failed; keeping it in memory and retrying");
    }
}

/// Makes the derived data durable up to the synced log position and records it.
pub fn checkpoint(shared: &Shared) -> std::io::Result<()> {
    // Held for the whole pass: two checkpoints at once (the maintenance thread's and an
    // explicit one) must not store the one read earlier last, moving the checkpoint back.
    let mut last = shared.checkpoint.lock().unwrap_or_else(|e| e.into_inner());
    let log_position = shared.synced.load(Ordering::Acquire);
    let key_position = shared.keys.durable_position().min(log_position);
    for q in shared.all_queues() {
        q.sync()?;
    }
    let c = Checkpoint { log_position, key_position };
    if *last == c {
        return Ok(());
    }
    c.store(&shared.config.dir)?;
    *last = c;
    Ok(())
}

/// Drops the log from the page cache up to `page_cache_window` bytes behind the fsynced
/// position (see the module comment). Dropping is advice: a failed call is logged and its range
/// left to the kernel, not retried every second.
pub fn release_page_cache(shared: &Shared) {
    let window = shared.config.page_cache_window;
    if window == 0 {
        return;
    }
    let to = shared.synced.load(Ordering::Acquire).saturating_sub(window);
    let from = shared.page_cache_released.load(Ordering::Acquire).max(shared.log_start.load(Ordering::Acquire));
    if to <= from {
        return;
    }
    for seg in shared.segments_overlapping(from, to) {
        if let Err(e) = seg.drop_cached(from, to) {
            tracing::warn!(segment = seg.base, error = %e, "dropping old commit-log pages from the page cache failed");
        }
    }
    shared.page_cache_released.store(to, Ordering::Release);
}

/// Deletes the oldest sealed segments that are expired or needed for disk space.
pub fn retention(shared: &Shared) {
    let reserved = shared.config.file_reserved_time;
    let max_ratio = shared.config.disk_max_used_ratio;
    let mut deleted = 0usize;
    loop {
        let checkpointed = shared.checkpoint.lock().unwrap_or_else(|e| e.into_inner()).log_position;
        let held = shared.retention_holds.lock().unwrap_or_else(|e| e.into_inner()).values().min().copied();
        let limit = shared.retention_limit.load(Ordering::Acquire).min(held.unwrap_or(u64::MAX));
        let Some(oldest) = shared.oldest_sealed_segment() else {
            break;
        };
        let expired = oldest
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > reserved);
        let used = match disk_used_ratio(&shared.config.dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read disk usage; retention by age only");
                0.0
            }
        };
        let over = used > max_ratio;
        if !expired && !over {
            break;
        }
        if oldest.end() > checkpointed {
            tracing::debug!(segment = oldest.base, "retention waits for a checkpoint past the segment");
            break;
        }
        if oldest.end() > limit {
            // Tiering hook: the segment still has to be uploaded.
            tracing::debug!(segment = oldest.base, limit, "retention held back by the retention limit");
            break;
        }
        shared.log_start.store(oldest.end(), Ordering::Release);
        shared.remove_segment(oldest.base);
        let path = oldest.path.clone();
        // Drop our reference so the mapping and descriptor go (readers may still hold
        // slices; the space is freed when they drop them).
        drop(oldest);
        if let Err(e) = fs::remove_file(&path) {
            tracing::error!(file = %path.display(), error = %e, "deleting an expired segment failed");
            break;
        }
        deleted += 1;
        tracing::info!(
            file = %path.display(),
            reason = if expired { "fileReservedTime" } else { "diskMaxUsedSpaceRatio" },
            disk_used_ratio = used,
            "deleted commit-log segment"
        );
    }
    if deleted == 0 {
        return;
    }
    let log_start = shared.log_start.load(Ordering::Acquire);
    for q in shared.all_queues() {
        if let Err(e) = q.retire_below(log_start) {
            tracing::warn!(topic = %q.topic, queue_id = q.queue_id, error = %e, "dropping old queue-index files failed");
        }
    }
    if let Err(e) = shared.keys.retire_below(log_start) {
        tracing::warn!(error = %e, "dropping old key-index runs failed");
    }
}
