//! The load generator's client threads: one thread per CPU, each driving its own
//! single-threaded tokio runtime, onto which connections are placed in turn with everything
//! that uses them (the connection's task, its producers' and consumers' tasks, their
//! acknowledgements). A request's tasks, its socket's readiness and its response then stay on
//! one thread, as in grpc-java's Netty event loops (and in the gateway's own I/O threads,
//! `io_threads.rs`), instead of moving between the workers of a work-stealing runtime, whose
//! wake-ups of each other the load generator would otherwise pay on the cores it shares with
//! the server it measures (docs/benchmarks.md, "The load generator on client threads").
//!
//! The threads stop when the value is dropped; their runtimes' remaining tasks (connections
//! still open) are dropped with them.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Running client threads.
pub struct ClientThreads {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    /// The next thread [`ClientThreads::next_thread`] hands out.
    turn: usize,
}

impl ClientThreads {
    /// One thread per CPU this process may use.
    pub fn per_cpu() -> anyhow::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let mut started = ClientThreads { handles: Vec::new(), threads: Vec::new(), stop: stop.clone(), turn: 0 };
        for i in 0..count.max(1) {
            // Built here, so a failure is reported at start (and the threads started so far
            // stop when `started` is dropped).
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            started.handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new().name(format!("rmq-bench-io-{i}")).spawn(move || {
                // Spawned tasks run while this waits.
                runtime.block_on(stop.cancelled());
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
            started.threads.push(thread);
        }
        Ok(started)
    }

    /// The runtime of the next thread in turn, for the next connection and its users.
    pub fn next_thread(&mut self) -> Handle {
        let h = self.handles[self.turn % self.handles.len()].clone();
        self.turn = self.turn.wrapping_add(1);
        h
    }

    /// Runs `fut` on `runtime` (a connection made there keeps its task there) and waits for it.
    pub async fn on<F>(runtime: &Handle, fut: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        runtime.spawn(fut).await.map_err(|e| anyhow::anyhow!("a client thread's task failed: {e}"))
    }
}

impl Drop for ClientThreads {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work placed on a thread runs there, threads are handed out in turn, and dropping the
    /// value stops them.
    #[tokio::test]
    async fn connections_go_to_the_threads_in_turn_and_stay_there() {
        let mut threads = ClientThreads::start(2).unwrap();
        let name = || std::thread::current().name().map(str::to_string);
        let (a, b, c) = (threads.next_thread(), threads.next_thread(), threads.next_thread());
        let on_a = ClientThreads::on(&a, async move { name() }).await.unwrap();
        let on_b = ClientThreads::on(&b, async move { name() }).await.unwrap();
        let on_c = ClientThreads::on(&c, async move { name() }).await.unwrap();
        assert_eq!(on_a.as_deref(), Some("rmq-bench-io-0"));
        assert_eq!(on_b.as_deref(), Some("rmq-bench-io-1"));
        assert_eq!(on_c, on_a, "the third connection goes back to the first thread");
        // A task spawned from there (an acknowledgement) stays on that thread.
        let nested =
            ClientThreads::on(&a, async move { tokio::spawn(async move { name() }).await.unwrap() }).await.unwrap();
        assert_eq!(nested, on_a);
        drop(threads);
        assert!(a.spawn(async {}).await.is_err(), "the runtime is gone once the threads stopped");
    }
}
