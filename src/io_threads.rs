//! gRPC connections on I/O threads (`server.ioThreads`): each connection is served, from its
//! TLS detection to its close, by one thread running its own single-threaded tokio runtime, as
//! Netty's event loops pin a channel to one thread in Apache RocketMQ's proxy. A request's
//! tasks, its socket's readiness and its response then stay on one thread: no work stealing
//! between runtime workers and none of the wake-ups it costs. Accepted connections go to the
//! threads in turn. Everything that is not a connection's (the log writer, maintenance, timers,
//! the admin API, cluster membership) stays on the main runtime and its own threads.
//!
//! With `server.ioThreadAffinity` the threads are pinned, thread `i` to the `i`-th CPU (in
//! turn) of the CPUs the process may run on ([`IoThreadAffinity`]).
//!
//! Lifetime: a thread serves until the stop token, then keeps its runtime running, so sockets
//! and tasks a request registered with it (a metadata-store connection opened on demand, say)
//! keep working, until [`IoThreads::release`] (or drop) at the very end of shutdown.

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;

use crate::config::{IoThreadAffinity, TlsMode};
use crate::tls::{self, Accepted, Detached, TlsAcceptor};

type Served = Result<(), tonic::transport::Error>;

/// The running I/O threads.
pub struct IoThreads {
    inboxes: Vec<mpsc::UnboundedSender<Detached>>,
    done: Vec<oneshot::Receiver<Served>>,
    release: CancellationToken,
}

impl IoThreads {
    /// Starts `count` threads (at least one), each serving `router` on the connections handed
    /// to it until `stop`, pinned to CPUs as `affinity` says.
    pub fn start(
        count: usize,
        affinity: IoThreadAffinity,
        router: Router,
        acceptor: Option<TlsAcceptor>,
        mode: TlsMode,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let count = count.max(1);
        let pinned_to = pinned_cpus(count, affinity);
        let release = CancellationToken::new();
        let mut threads = IoThreads { inboxes: Vec::new(), done: Vec::new(), release: release.clone() };
        for i in 0..count {
            let cpu = pinned_to.as_ref().map(|list| list[i % list.len()]);
            // Built here, so a failure is reported at start.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (inbox, mut connections) = mpsc::unbounded_channel::<Detached>();
            let (done_tx, done_rx) = oneshot::channel();
            let (router, acceptor, stop, release) = (router.clone(), acceptor.clone(), stop.clone(), release.clone());
            std::thread::Builder::new().name(format!("rmq-grpc-io-{i}")).spawn(move || {
                // This thread drives `runtime` and nothing else until it ends.
                crate::storage::local::dedicate_thread();
                if let Some(cpu) = cpu
                    && let Err(e) = cpus::pin_current_thread(cpu)
                {
                    tracing::warn!(thread = i, cpu, error = %e, "cannot pin a gRPC I/O thread to its CPU; it runs unpinned");
                }
                runtime.block_on(async move {
                    let (ready_tx, ready_rx) = mpsc::channel(128);
                    tokio::spawn(async move {
                        while let Some(c) = connections.recv().await {
                            if let Some(c) = c.attach() {
                                tls::handshake(c, acceptor.clone(), mode, ready_tx.clone());
                            }
                        }
                    });
                    let until = {
                        let release = release.clone();
                        async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = release.cancelled() => {}
                            }
                        }
                    };
                    let served = router.serve_with_incoming_shutdown(ReceiverStream::new(ready_rx), until).await;
                    let _ = done_tx.send(served);
                    release.cancelled().await;
                });
                // What still runs (a request's blocking call) gets a moment, not forever.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
            threads.inboxes.push(inbox);
            threads.done.push(done_rx);
        }
        Ok(threads)
    }

    /// The accept loop's hand-off: each connection to the next thread in turn (skipping a
    /// thread that has ended, which only a panic would do).
    pub fn dispatcher(&self) -> impl FnMut(Accepted) + Send + 'static {
        let inboxes = self.inboxes.clone();
        let mut next = 0usize;
        move |accepted: Accepted| {
            let Some(mut c) = accepted.detach() else { return };
            for _ in 0..inboxes.len() {
                let inbox = &inboxes[next % inboxes.len()];
                next = next.wrapping_add(1);
                match inbox.send(c) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(back)) => c = back,
                }
            }
            tracing::error!("no gRPC I/O thread is running; connection closed");
        }
    }

    /// Resolves when every thread's server has stopped (after the stop token: connections
    /// drained), with the first error.
    pub fn served(&mut self) -> impl Future<Output = Served> + Send + 'static {
        let done = std::mem::take(&mut self.done);
        async move {
            let mut first = Ok(());
            for d in done {
                match d.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        if first.is_ok() {
                            first = Err(e);
                        }
                    }
                    Err(_) => tracing::error!("a gRPC I/O thread ended before its server did"),
                }
            }
            first
        }
    }

    /// Stops the threads' runtimes (dropping what still runs on them); the threads end on
    /// their own.
    pub fn release(self) {
        self.release.cancel();
    }
}

/// The CPU of each thread in turn when the threads are to be pinned: the CPUs the process may
/// run on, in order. `None` (unpinned) when `affinity` says so or the CPU set cannot be read.
fn pinned_cpus(threads: usize, affinity: IoThreadAffinity) -> Option<Vec<usize>> {
    if affinity == IoThreadAffinity::Off {
        return None;
    }
    let allowed = match cpus::allowed() {
        Ok(allowed) if !allowed.is_empty() => allowed,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this process's CPU set; the gRPC I/O threads run unpinned");
            return None;
        }
    };
    let pin = match affinity {
        IoThreadAffinity::On => true,
        IoThreadAffinity::Auto => allowed.len() == threads,
        IoThreadAffinity::Off => false,
    };
    tracing::info!(threads, cpus = ?allowed, pinned = pin, setting = ?affinity, "gRPC I/O threads and server.ioThreadAffinity");
    pin.then_some(allowed)
}

/// The process's CPU set (`sched_getaffinity`) and pinning a thread to one CPU of it.
#[cfg(target_os = "linux")]
mod cpus {
    /// The CPUs the calling thread may run on (the process's CPU set, which threads inherit).
    pub fn allowed() -> std::io::Result<Vec<usize>> {
        // SAFETY: `cpu_set_t` is plain bits; all zeros is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into `set`.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `CPU_ISSET` reads a bit of `set`; every index is below `CPU_SETSIZE`.
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
    }

    /// Restricts the calling thread to `cpu`.
    pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
        // SAFETY: as above; `CPU_SET` sets one bit of `set` (`cpu` comes from `allowed`).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes of `set`; 0 is this thread.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Elsewhere the threads are not pinned.
#[cfg(not(target_os = "linux"))]
mod cpus {
    pub fn allowed() -> std::io::Result<Vec<usize>> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "CPU sets are read on Linux only"))
    }

    pub fn pin_current_thread(_cpu: usize) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "threads are pinned on Linux only"))
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        self.release.cancel();
    }
}
