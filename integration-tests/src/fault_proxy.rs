//! A fault-injecting TCP proxy for outage tests of network services (the S3 server): it
//! forwards loopback connections to the real server and can be switched at runtime to refuse
//! connections, stall them, or answer every HTTP request with S3's `503 SlowDown`. Switching
//! away from [`Fault::Pass`] also cuts the connections already open (a client's pooled
//! keep-alive connection must not dodge the fault). The server behind keeps its state, so an
//! in-memory server (moto) loses nothing during the "outage".

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the server.
    Pass,
    /// Accept and close at once (the server is down).
    Refuse,
    /// Accept and never answer (a black hole: the client's timeouts must fire).
    Stall,
    /// Answer every request with `503 Slow Down` and an S3 `<Error><Code>SlowDown</Code>` body.
    SlowDown,
}

const SLOW_DOWN_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>";

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// A fault armed to start once this many bytes more have gone from clients to the server, for
/// a while.
struct Trip {
    at_bytes: u64,
    fault: Fault,
    lasting: Duration,
}

struct Shared {
    mode: watch::Sender<Fault>,
    accepted: AtomicU64,
    /// Bytes forwarded from clients to the server.
    upstream_bytes: AtomicU64,
    trip: Mutex<Option<Trip>>,
}

impl Shared {
    /// Counts `n` forwarded bytes; fires an armed trip whose threshold they cross.
    fn forwarded(&self, n: usize) {
        let total = self.upstream_bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let Ok(mut trip) = self.trip.lock() else { return };
        if trip.as_ref().is_some_and(|t| total >= t.at_bytes)
            && let Some(t) = trip.take()
        {
            self.mode.send_replace(t.fault);
            let mode = self.mode.clone();
            tokio::spawn(async move {
                tokio::time::sleep(t.lasting).await;
                mode.send_replace(Fault::Pass);
            });
        }
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream`, in [`Fault::Pass`] mode. Must be
    /// called inside a tokio runtime; stops when dropped.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(Shared {
            mode,
            accepted: AtomicU64::new(0),
            upstream_bytes: AtomicU64::new(0),
            trip: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        Ok(FaultProxy { addr, shared, task })
    }

    /// Switches the behaviour, for new and open connections (and disarms a pending trip).
    pub fn set(&self, fault: Fault) {
        if let Ok(mut trip) = self.shared.trip.lock() {
            *trip = None;
        }
        self.shared.mode.send_replace(fault);
    }

    /// Arms `fault` to start once `after_bytes` more bytes have been forwarded to the server
    /// (in the middle of a request body, say), and to go back to [`Fault::Pass`] `lasting` later.
    pub fn trip_after(&self, after_bytes: u64, fault: Fault, lasting: Duration) {
        let at_bytes = self.shared.upstream_bytes.load(Ordering::Relaxed) + after_bytes;
        if let Ok(mut trip) = self.shared.trip.lock() {
            *trip = Some(Trip { at_bytes, fault, lasting });
        }
    }

    pub fn fault(&self) -> Fault {
        *self.shared.mode.borrow()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections (passing, stalled, slowed) see the mode change and close.
        self.set(Fault::Refuse);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let rx = shared.mode.subscribe();
        tokio::spawn(serve(client, upstream, rx, Arc::clone(&shared)));
    }
}

/// Waits until the mode differs from `current` (or the proxy is gone).
async fn changed_from(rx: &mut watch::Receiver<Fault>, current: Fault) {
    while *rx.borrow_and_update() == current {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<Fault>, shared: Arc<Shared>) {
    let fault = *rx.borrow_and_update();
    match fault {
        Fault::Refuse => {
            let _ = client.set_zero_linger();
        }
        Fault::Stall => changed_from(&mut rx, Fault::Stall).await,
        Fault::SlowDown => {
            tokio::select! {
                _ = slow_down(&mut client) => {}
                _ = changed_from(&mut rx, Fault::SlowDown) => {}
            }
        }
        Fault::Pass => {
            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
            let _ = server.set_nodelay(true);
            let _ = client.set_nodelay(true);
            let (mut client_rd, mut client_wr) = client.split();
            let (mut server_rd, mut server_wr) = server.split();
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = client_rd.read(&mut buf).await?;
                    if n == 0 {
                        return server_wr.shutdown().await;
                    }
                    server_wr.write_all(&buf[..n]).await?;
                    shared.forwarded(n);
                }
            };
            let down = tokio::io::copy(&mut server_rd, &mut client_wr);
            let cut = tokio::select! {
                r = async { tokio::try_join!(up, down) } => r.is_err(),
                _ = changed_from(&mut rx, Fault::Pass) => true,
            };
            if cut {
                let _ = client.set_zero_linger();
            }
        }
    }
}

/// Answers each HTTP/1.1 request on `client` with 503 SlowDown (reading and discarding the
/// request body so that keep-alive framing holds), until the client closes.
async fn slow_down(client: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        // Read the request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let mut chunk = [0u8; 8192];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let is_head = head.starts_with("head ");
        let header = |name: &str| {
            head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_owned()))
        };
        let length: u64 = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        // A chunked body or a client waiting for 100-continue: answer and close.
        let close = header("transfer-encoding").is_some() || header("expect").is_some();
        let body = if is_head { "" } else { SLOW_DOWN_BODY };
        let response = format!(
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             x-amz-request-id: fault-proxy\r\nConnection: {}\r\n\r\n{body}",
            SLOW_DOWN_BODY.len(),
            if close { "close" } else { "keep-alive" }
        );
        if close {
            client.write_all(response.as_bytes()).await?;
            return Ok(());
        }
        // Discard the body, then answer.
        let mut rest = buf.split_off(head_end);
        buf.clear();
        let mut left = length;
        let have = rest.len() as u64;
        if have >= left {
            buf = rest.split_off(left as usize);
            left = 0;
        } else {
            left -= have;
        }
        let mut sink = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(sink.len() as u64) as usize;
            let n = client.read(&mut sink[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            left -= n as u64;
        }
        client.write_all(response.as_bytes()).await?;
    }
}
