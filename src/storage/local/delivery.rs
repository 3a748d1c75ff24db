//! Delivering the writer thread's answers to the tasks awaiting them, one wake-up per runtime.
//!
//! A task on a single-threaded tokio runtime (the gRPC I/O threads, `server.ioThreads`) that
//! is woken from another thread costs that runtime an `eventfd` write per wake-up, whether or
//! not it is asleep. A group commit answers tens of appends at once, most of them waiting on a
//! few such runtimes: the writer hands each runtime its answers as one task (one wake-up), and
//! that task wakes the appending tasks from inside the runtime, where a wake-up is a push on
//! its local queue. Appends made on a multi-threaded runtime (or outside any) are answered
//! directly: that scheduler already wakes an idle worker only when none is looking for work.
//!
//! Only the hand-over changes: answers are sent after the batch is published (and, in `Sync`
//! mode, synced), exactly as before. An answer whose runtime has shut down is dropped with
//! it; its task was dropped too.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;

static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's key among the threads that append: a single-threaded runtime's tasks all
    /// run on the thread that drives it.
    static LANE: usize = NEXT_LANE.fetch_add(1, Ordering::Relaxed);
}

/// Where an append's answer goes: the single-threaded runtime its task runs on.
pub struct Origin {
    lane: usize,
    handle: Handle,
}

impl Origin {
    /// The calling task's runtime when it is single-threaded; `None` otherwise (answered
    /// directly). Only for a task spawned on that runtime: such a task is only ever polled by
    /// the thread driving the runtime, which therefore also runs the delivery. (A future in
    /// `block_on` is not a task and is answered directly: a `Handle::block_on` caller on
    /// another thread must not depend on the runtime being driven.)
    pub fn current() -> Option<Origin> {
        tokio::task::try_id()?;
        let handle = Handle::try_current().ok()?;
        match handle.runtime_flavor() {
            RuntimeFlavor::CurrentThread => Some(Origin { lane: LANE.with(|l| *l), handle }),
            _ => None,
        }
    }
}

/// One answer to deliver.
pub struct Answer<T> {
    pub reply: oneshot::Sender<T>,
    pub value: T,
    pub origin: Option<Origin>,
}

/// Answers bound for one runtime.
type Lane<T> = (Origin, Vec<(oneshot::Sender<T>, T)>);

/// Sends `answers`: directly when their task is on a multi-threaded runtime or alone on its
/// runtime in this call, otherwise as one task per runtime.
pub fn deliver<T: Send + 'static>(answers: impl IntoIterator<Item = Answer<T>>) {
    // Few runtimes per call (one per I/O thread at most): a linear search beats a map.
    let mut lanes: Vec<Lane<T>> = Vec::new();
    for a in answers {
        let Some(origin) = a.origin else {
            let _ = a.reply.send(a.value);
            continue;
        };
        match lanes.iter_mut().find(|(o, _)| o.lane == origin.lane) {
            Some((_, group)) => group.push((a.reply, a.value)),
            None => lanes.push((origin, vec![(a.reply, a.value)])),
        }
    }
    for (origin, mut group) in lanes {
        if group.len() == 1 {
            if let Some((reply, value)) = group.pop() {
                let _ = reply.send(value);
            }
            continue;
        }
        // The task is dropped unrun if the runtime has shut down: its senders close, and any
        // receiver still alive sees the channel closed.
        drop(origin.handle.spawn(async move {
            for (reply, value) in group {
                let _ = reply.send(value);
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// Answers reach tasks on two single-threaded runtimes (grouped) and on a multi-threaded
    /// one (direct), each with its own value.
    #[test]
    fn answers_reach_their_tasks_on_every_runtime() {
        let (rt_a, rt_b) = (current_thread(), current_thread());
        let multi =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut answers = Vec::new();
        let mut waiting = Vec::new();
        for i in 0..10u32 {
            let rt = match i % 3 {
                0 => &rt_a,
                1 => &rt_b,
                _ => &multi,
            };
            let (reply, rx) = oneshot::channel();
            let origin = rt.block_on(async { tokio::spawn(async { Origin::current() }).await.expect("task") });
            assert_eq!(origin.is_some(), i % 3 != 2, "only single-threaded runtimes get an origin");
            answers.push(Answer { reply, value: i, origin });
            waiting.push((i, rt, rx));
        }
        assert!(Origin::current().is_none(), "no runtime here");
        assert!(rt_a.block_on(async { Origin::current() }).is_none(), "block_on's future is not a task");
        let writer = std::thread::spawn(move || deliver(answers));
        writer.join().expect("writer");
        for (i, rt, rx) in waiting {
            let got = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), rx).await });
            assert_eq!(got.expect("answered in time").expect("not dropped"), i);
        }
    }

    /// A runtime that has shut down drops its answers; the receivers see the channel closed
    /// instead of waiting forever.
    #[test]
    fn answers_to_a_runtime_that_shut_down_close() {
        let rt = current_thread();
        let origin = || rt.block_on(async { tokio::spawn(async { Origin::current() }).await.expect("task") });
        let (a, rx_a) = oneshot::channel::<u8>();
        let (b, rx_b) = oneshot::channel::<u8>();
        let answers =
            vec![Answer { reply: a, value: 1, origin: origin() }, Answer { reply: b, value: 2, origin: origin() }];
        drop(rt);
        deliver(answers);
        assert!(rx_a.blocking_recv().is_err());
        assert!(rx_b.blocking_recv().is_err());
    }
}
