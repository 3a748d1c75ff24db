//! `Async` mode: the appends that the tasks of one single-threaded runtime (a gRPC I/O thread,
//! `server.ioThreads`) make in one pass of its scheduler, written as one batch.
//!
//! An appending task puts its request on this thread's pending list for the log; the first
//! one of a batch also spawns the task that writes it ([`CommitLog::append`]). That task is
//! queued behind the tasks that were ready when it was spawned (a single-threaded runtime runs
//! its local queue in order), so the sends that HTTP/2 decoded from the same socket reads
//! join the batch: one `pwrite` for their records and one per queue for their index entries,
//! instead of one each per message. The batch is acknowledged right after its write, from that
//! runtime (no other thread is woken), exactly as an append written alone: durability does not
//! change, only how many appends share a system call.
//!
//! [`CommitLog::append`]: super::CommitLog

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::writer::AppendRequest;

static NEXT_LOG: AtomicU64 = AtomicU64::new(0);

/// A key for one open log (several can be open in one process: shards, tests).
pub fn log_id() -> u64 {
    NEXT_LOG.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// This thread's appends not written yet, by log. A thread appends to a handful of logs at
    /// most, so a list beats a map.
    static PENDING: RefCell<Vec<(u64, Vec<AppendRequest>)>> = const { RefCell::new(Vec::new()) };
}

/// Queues `request` for this thread's next batch of log `log`. True when it is the batch's
/// first: the caller then spawns the task that writes it (on this thread's runtime).
pub fn push(log: u64, request: AppendRequest) -> bool {
    PENDING.with_borrow_mut(|pending| match pending.iter_mut().find(|(id, _)| *id == log) {
        Some((_, batch)) => {
            batch.push(request);
            false
        }
        None => {
            pending.push((log, vec![request]));
            true
        }
    })
}

/// Takes this thread's pending batch of log `log` (empty if there is none).
pub fn take(log: u64) -> Vec<AppendRequest> {
    PENDING.with_borrow_mut(|pending| match pending.iter().position(|(id, _)| *id == log) {
        Some(i) => pending.swap_remove(i).1,
        None => Vec::new(),
    })
}
