//! gRPC connections on I/O threads (`server.ioThreads`): each connection is served, from its
//! TLS detection to its close, by one thread running its own single-threaded tokio runtime, as
//! Netty's event loops pin a channel to one thread in Apache RocketMQ's proxy. A request's
//! tasks, its socket's readiness and its response then stay on one thread: no work stealing
//! between runtime workers and none of the wake-ups it costs. Accepted connections go to the
//! threads in turn. Everything that is not a connection's (the log writer, maintenance, timers,
//! the admin API, cluster membership) stays on the main runtime and its own threads.
//!
//! Lifetime: a thread serves until the stop token, then keeps its runtime running, so sockets
//! and tasks a request registered with it (a metadata-store connection opened on demand, say)
//! keep working, until [`IoThreads::release`] (or drop) at the very end of shutdown.

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;

use crate::config::TlsMode;
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
    /// to it until `stop`.
    pub fn start(
        count: usize,
        router: Router,
        acceptor: Option<TlsAcceptor>,
        mode: TlsMode,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let release = CancellationToken::new();
        let mut threads = IoThreads { inboxes: Vec::new(), done: Vec::new(), release: release.clone() };
        for i in 0..count.max(1) {
            // Built here, so a failure is reported at start.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (inbox, mut connections) = mpsc::unbounded_channel::<Detached>();
            let (done_tx, done_rx) = oneshot::channel();
            let (router, acceptor, stop, release) = (router.clone(), acceptor.clone(), stop.clone(), release.clone());
            std::thread::Builder::new().name(format!("rmq-grpc-io-{i}")).spawn(move || {
                // This thread drives `runtime` and nothing else until it ends.
                crate::storage::local::dedicate_thread();
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

impl Drop for IoThreads {
    fn drop(&mut self) {
        self.release.cancel();
    }
}
