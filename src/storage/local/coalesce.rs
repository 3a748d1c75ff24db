//! The appends that the tasks of one single-threaded runtime (a gRPC I/O thread,
//! `server.ioThreads`) make in one pass of its scheduler, grouped and written as one batch (in
//! `Sync` mode synced by the writer thread's next group commit).
//!
//! Only on threads declared with [`dedicate_thread`]: a thread that drives one single-threaded
//! runtime for the rest of its life, so every task that appends there, and the task that writes
//! (or hands over) their batch, run on it. (A runtime driven from several threads in turn, or a
//! thread driving several runtimes, could leave a batch waiting for a runtime no one drives.)
//!
//! An appending task puts its request in this thread's open batch for the log; the first one
//! of a batch also spawns the task that takes it ([`CommitLog::append`]). That task is queued
//! behind the tasks that were ready when it was spawned (a single-threaded runtime runs its
//! local queue in order), so the sends that HTTP/2 decoded from the same socket reads join the
//! batch.
//!
//! - `Async` mode: one `pwrite` for their records and one copy per queue for their index
//!   entries. The batch is acknowledged right after its write, from that runtime (no other
//!   thread is woken), exactly as an append written alone.
//! - `Sync` mode: the same write, then one wake-up of the writer thread (if it sleeps), whose
//!   next `fdatasync` covers the batch. Handed over one by one, the first append woke the
//!   writer thread, which could write and `fdatasync` it alone before the next append of the
//!   same pass reached it; that one then waited for a whole second group commit.
//!
//! Durability does not change in either mode, only how many appends share a system call.
//!
//! The batch belongs to its task: the thread keeps only a weak reference to find it.
//! Once that task has run, or was dropped unrun because its runtime shut down (its appenders
//! were dropped with it and see the channel closed), the next append opens a new batch.
//!
//! [`CommitLog::append`]: super::CommitLog

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::writer::AppendRequest;

static NEXT_LOG: AtomicU64 = AtomicU64::new(0);

/// A key for one open log (several can be open in one process: shards, tests).
pub fn log_id() -> u64 {
    NEXT_LOG.fetch_add(1, Ordering::Relaxed)
}

/// Appends waiting for their batch's writing task. Only this thread and that task (on this
/// thread's runtime) touch it, so the lock is never contended.
pub type Batch = Arc<Mutex<Vec<AppendRequest>>>;

/// How the thread finds a batch: weakly, so one whose writing task is gone is not joined.
type OpenBatch = Weak<Mutex<Vec<AppendRequest>>>;

thread_local! {
    /// Set by [`dedicate_thread`].
    static DEDICATED: Cell<bool> = const { Cell::new(false) };
    /// This thread's open batches, by log. A thread appends to a handful of logs at most, so a
    /// list beats a map.
    static OPEN: RefCell<Vec<(u64, OpenBatch)>> = const { RefCell::new(Vec::new()) };
}

/// Declares that the calling thread drives one single-threaded runtime for the rest of its life
/// (the gRPC I/O threads do, `io_threads.rs`): appends made by that runtime's tasks are then
/// grouped per scheduler pass.
pub fn dedicate_thread() {
    DEDICATED.set(true);
}

/// Whether appends made on this thread are coalesced ([`dedicate_thread`]).
pub fn on_dedicated_thread() -> bool {
    DEDICATED.get()
}

/// Adds `request` to this thread's open batch of log `log`. Returns the batch when `request`
/// opened it: the caller then spawns the task that writes it, on this thread's runtime.
pub fn push(log: u64, request: AppendRequest) -> Option<Batch> {
    OPEN.with_borrow_mut(|open| {
        if let Some(batch) = open.iter().find(|(id, _)| *id == log).and_then(|(_, b)| b.upgrade()) {
            batch.lock().unwrap_or_else(|e| e.into_inner()).push(request);
            return None;
        }
        open.retain(|(id, b)| *id != log && b.strong_count() > 0);
        let batch = Arc::new(Mutex::new(vec![request]));
        open.push((log, Arc::downgrade(&batch)));
        Some(batch)
    })
}

/// The appends of `batch`, closing it (this thread no longer finds it): later appends open a
/// new one. Called by the batch's writing task, on the thread that opened it.
pub fn take(log: u64, batch: &Batch) -> Vec<AppendRequest> {
    OPEN.with_borrow_mut(|open| open.retain(|(id, b)| *id != log || !std::ptr::eq(b.as_ptr(), Arc::as_ptr(batch))));
    std::mem::take(&mut *batch.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AppendRequest {
        let (reply, _) = tokio::sync::oneshot::channel();
        AppendRequest {
            messages: Vec::new(),
            reply,
            created: std::time::Instant::now(),
            origin: None,
            answer_written: false,
        }
    }

    /// Appends join the open batch until its writing task takes it; then a new one opens.
    #[test]
    fn a_batch_collects_until_taken() {
        let log = log_id();
        let batch = push(log, request()).expect("the first append opens a batch");
        assert!(push(log, request()).is_none());
        assert!(push(log, request()).is_none());
        let other = push(log_id(), request()).expect("another log has its own batch");
        assert_eq!(take(log, &batch).len(), 3);
        let next = push(log, request()).expect("taken: the next append opens a new batch");
        assert_eq!(take(log, &next).len(), 1);
        assert!(take(log, &batch).is_empty());
        drop(other);
    }

    /// A batch whose writing task was dropped unrun (its runtime shut down) is not joined: the
    /// next append opens a new batch and spawns a task for it, instead of waiting for nothing.
    #[test]
    fn a_dropped_batch_is_not_joined() {
        let log = log_id();
        drop(push(log, request()).expect("opens"));
        let batch = push(log, request()).expect("the dropped batch is gone: a new one opens");
        assert!(push(log, request()).is_none());
        assert_eq!(take(log, &batch).len(), 2);
    }
}
