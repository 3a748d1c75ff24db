//! The protocol-independent load driver: closed-loop (or paced) producers, long-polling
//! consumers, a warm-up and a measured window, latency histograms, progress lines, and CPU
//! and memory of the server under test over exactly the measured window (for a gateway, also
//! where its sends spent their time, from its `/metrics` at the window's ends).
//!
//! Each producer and consumer task runs on the runtime its connection lives on
//! ([`Producer::runtime`]: one of the client threads of `client_threads.rs`), else on the
//! caller's.
//!
//! Every message body starts with a 16-byte header: the send time (nanoseconds since the
//! driver's epoch, little-endian) and a sequence number. Producers and consumers run in the
//! same process, so end-to-end latency is `receive time − send time` on one monotonic clock.
//!
//! Measurement rules:
//! - A send belongs to the window when it *starts* inside it; its latency is the time from
//!   just before the request is built to the response. Producers stop starting sends when the
//!   window ends.
//! - With `--rate`, sends are scheduled at fixed intervals from a shared ticket counter; a
//!   schedule that falls behind is not skipped (the driver turns closed-loop).
//! - End-to-end latency is recorded for messages sent in the window; after the window,
//!   consumers drain until they have seen as many as were acknowledged, or `--drain` elapses.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::LoadArgs;
use super::metrics_plot::{Scrape, scrape, sum};
use super::procs::{self, ProcSample};

/// Bytes at the start of every body: send time (u64 ns) and sequence (u64).
pub const HEADER_LEN: usize = 16;

/// Sends one request carrying `bodies` and waits for the server's acknowledgement.
pub trait Producer: Send + 'static {
    fn send(&mut self, bodies: Vec<Bytes>) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The runtime its connection lives on (`client_threads.rs`), where its task runs;
    /// `None`: the caller's.
    fn runtime(&self) -> Option<Handle> {
        None
    }
}

/// Waits for the next delivered messages (may return none after a long poll) and returns
/// their bodies. Acknowledging them is the consumer's business.
pub trait Consumer: Send + 'static {
    fn receive(&mut self) -> impl Future<Output = anyhow::Result<Vec<Bytes>>> + Send;

    /// As [`Producer::runtime`].
    fn runtime(&self) -> Option<Handle> {
        None
    }
}

/// Spawns `fut` on `runtime`, or on the caller's runtime.
fn spawn_on<F>(runtime: Option<Handle>, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match runtime {
        Some(h) => h.spawn(fut),
        None => tokio::spawn(fut),
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow::anyhow!("histogram: {e:?}"))
}

/// What one load run measured.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Length of the measured window.
    pub window: Duration,
    pub target_rate: Option<f64>,
    /// Messages acknowledged (sent in the window).
    pub messages: u64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub send_latency_us: Histogram<u64>,
    /// Messages of the window seen by consumers.
    pub received: u64,
    /// All messages consumers received (window or not) and the receive calls that brought them.
    pub received_total: u64,
    pub receive_calls: u64,
    pub receive_errors: u64,
    pub e2e_latency_us: Option<Histogram<u64>>,
    pub server: Option<ResourceUse>,
    pub client: Option<ResourceUse>,
    /// Busy cores of the whole machine over the window (server, client and anything else).
    pub machine_busy_cores: Option<f64>,
    /// Cores used by other processes and by kernel threads over the window (lower bounds).
    pub other_processes_cores: f64,
    pub kernel_threads_cores: f64,
    /// Where a gateway's sends spent their time over the window (when it was watched).
    pub send_path: Option<SendPath>,
}

/// What a load watches on the server side over its window.
#[derive(Debug, Clone, Default)]
pub struct ServerWatch {
    /// The processes whose CPU and memory are the server's (summed; none: no server figures).
    pub pids: Vec<u32>,
    /// A gateway's admin HTTP address: its `/metrics` are read at both ends of the window.
    pub metrics: Option<SocketAddr>,
}

impl From<Vec<u32>> for ServerWatch {
    fn from(pids: Vec<u32>) -> Self {
        ServerWatch { pids, metrics: None }
    }
}

/// Inside a gateway's sends over the window, from its `/metrics`: means in milliseconds of the
/// observations made in the window. The append stages count from the commit-log append call
/// (`rocketmq_storage_append_latency`); the handler time includes the append and everything
/// around it (`rocketmq_rpc_latency` of SendMessage, OK answers). What the client sees beyond
/// the handler is HTTP/2, the network and both sides' scheduling.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SendPath {
    pub handler_ms: Option<f64>,
    /// Until the log writer took the append (SYNC_FLUSH: behind the group commit under way).
    pub queued_ms: Option<f64>,
    /// Until it was written (and, under SYNC_FLUSH, covered by a completed fsync).
    pub stored_ms: Option<f64>,
    /// Until the appending task ran again.
    pub resumed_ms: Option<f64>,
    /// Commit-log fsyncs in the window, and their mean.
    pub fsyncs: u64,
    pub fsync_ms: Option<f64>,
    /// Appends (send requests) stored per fsync, when there were fsyncs.
    pub appends_per_fsync: Option<f64>,
}

impl SendPath {
    /// From two scrapes of a gateway's `/metrics`; `None` when it stored nothing in between.
    pub fn between(before: &Scrape, after: &Scrape) -> Option<SendPath> {
        let delta = |name: &str, having: &str| sum(after, name, having) - sum(before, name, having);
        let mean = |name: &str, having: &str| {
            let n = delta(&format!("{name}_count"), having);
            (n > 0.0).then(|| delta(&format!("{name}_sum"), having) / n)
        };
        const APPEND: &str = "rocketmq_storage_append_latency";
        let stored = delta(&format!("{APPEND}_count"), "stage=\"stored\"");
        if stored <= 0.0 {
            return None;
        }
        let fsyncs = delta("rocketmq_storage_flush_latency_count", "").max(0.0);
        Some(SendPath {
            handler_ms: mean("rocketmq_rpc_latency", "request_code=\"SendMessage\",response_code=\"OK\""),
            queued_ms: mean(APPEND, "stage=\"queued\""),
            stored_ms: mean(APPEND, "stage=\"stored\""),
            resumed_ms: mean(APPEND, "stage=\"resumed\""),
            fsyncs: fsyncs as u64,
            fsync_ms: mean("rocketmq_storage_flush_latency", ""),
            appends_per_fsync: (fsyncs > 0.0).then(|| stored / fsyncs),
        })
    }
}

/// CPU and memory of a process over the measured window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ResourceUse {
    /// CPU time / wall time (1.0 = one core busy).
    pub cpu_cores: f64,
    pub cpu_seconds: f64,
    pub rss_end_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_anon_end_bytes: u64,
    /// Time its threads were runnable but waited for a CPU / wall time: how many of its
    /// threads, on average, were queued behind others for a core (0.5 = half a thread).
    pub cpu_wait_cores: Option<f64>,
}

struct Shared {
    epoch: Instant,
    window_start_ns: u64,
    window_end_ns: u64,
    /// Producers stop (window over, message count reached, or failure).
    stop: CancellationToken,
    /// Rate pacing: next ticket and the interval between tickets (one request each).
    tickets: AtomicU64,
    interval_ns: Option<f64>,
    /// Messages started in the window (count mode).
    claimed: AtomicU64,
    limit: Option<u64>,
    batch: usize,
    size: usize,
    seq: AtomicU64,
    /// Last completion of a window send (ns), for the actual window end in count mode.
    last_done_ns: AtomicU64,
    // Progress counters.
    sent_total: AtomicU64,
    received_total: AtomicU64,
    received_in_window: AtomicU64,
    errors_total: AtomicU64,
    interval_max_us: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }

    fn note_error(&self, e: &anyhow::Error) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }

    fn body(&self, sent_ns: u64, filler: &Bytes) -> Bytes {
        let mut b = BytesMut::with_capacity(self.size);
        b.put_u64_le(sent_ns);
        b.put_u64_le(self.seq.fetch_add(1, Ordering::Relaxed));
        b.put_slice(&filler[..self.size - HEADER_LEN]);
        b.freeze()
    }
}

/// The send time written into a body by this driver.
pub fn sent_ns(body: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(..8)?.try_into().ok()?))
}

struct ProducerTally {
    hist: Histogram<u64>,
    messages: u64,
    requests: u64,
    errors: u64,
}

async fn produce<P: Producer>(mut p: P, s: Arc<Shared>, filler: Bytes, hist: Histogram<u64>) -> ProducerTally {
    let mut t = ProducerTally { hist, messages: 0, requests: 0, errors: 0 };
    let batch = s.batch as u64;
    loop {
        if s.stop.is_cancelled() {
            break;
        }
        if let Some(iv) = s.interval_ns {
            let ticket = s.tickets.fetch_add(1, Ordering::Relaxed);
            let due = (ticket as f64 * iv) as u64;
            if due >= s.window_end_ns {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(s.at(due)) => {}
                _ = s.stop.cancelled() => break,
            }
        }
        let start = s.now_ns();
        if start >= s.window_end_ns {
            break;
        }
        let in_window = start >= s.window_start_ns;
        if in_window
            && let Some(limit) = s.limit
            && s.claimed.fetch_add(batch, Ordering::Relaxed) >= limit
        {
            s.stop.cancel();
            break;
        }
        let bodies = (0..s.batch).map(|_| s.body(start, &filler)).collect();
        let result = p.send(bodies).await;
        let done = s.now_ns();
        match result {
            Ok(()) => {
                s.sent_total.fetch_add(batch, Ordering::Relaxed);
                let us = (done - start) / 1000;
                s.interval_max_us.fetch_max(us, Ordering::Relaxed);
                if in_window {
                    t.hist.saturating_record(us.max(1));
                    t.messages += batch;
                    t.requests += 1;
                    s.last_done_ns.fetch_max(done, Ordering::Relaxed);
                }
            }
            Err(e) => {
                s.note_error(&e);
                if in_window {
                    t.errors += 1;
                }
                // Do not spin on a failing server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    t
}

struct ConsumerTally {
    hist: Histogram<u64>,
    errors: u64,
    /// Receives that returned messages, and how many they returned.
    calls: u64,
    messages: u64,
}

async fn consume<C: Consumer>(
    mut c: C,
    s: Arc<Shared>,
    stop: CancellationToken,
    hist: Histogram<u64>,
) -> ConsumerTally {
    let mut t = ConsumerTally { hist, errors: 0, calls: 0, messages: 0 };
    loop {
        let got = tokio::select! {
            r = c.receive() => r,
            _ = stop.cancelled() => break,
        };
        let now = s.now_ns();
        match got {
            Ok(bodies) => {
                s.received_total.fetch_add(bodies.len() as u64, Ordering::Relaxed);
                if !bodies.is_empty() {
                    t.calls += 1;
                    t.messages += bodies.len() as u64;
                }
                for b in &bodies {
                    let Some(sent) = sent_ns(b) else { continue };
                    if sent >= s.window_start_ns && sent < s.window_end_ns {
                        t.hist.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                        s.received_in_window.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                s.note_error(&e.context("receive"));
                t.errors += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    t
}

/// Samples the server (and this process) over the window: CPU at both ends, RSS throughout.
/// A server made of several processes (Apache RocketMQ: NameServer + Proxy) is their sum.
struct Monitored {
    server: Option<ResourceUse>,
    client: Option<ResourceUse>,
    machine_busy_cores: Option<f64>,
    other: procs::OtherCpu,
    wall: f64,
    send_path: Option<SendPath>,
}

/// The gateway's `/metrics` now, if it is watched and answers (a failed scrape only costs the
/// send-path figures: it is reported, not fatal).
async fn scrape_watched(addr: Option<SocketAddr>) -> Option<Scrape> {
    let addr = addr?;
    match scrape(&addr.to_string()).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, %addr, "cannot read the server's /metrics: no send-path figures for this run");
            None
        }
    }
}

/// CPU time and memory of all `pids` together; `None` when there are none or one is gone.
fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = ProcSample::default();
    for p in pids {
        let x = procs::sample(Some(*p))?;
        sum.cpu += x.cpu;
        sum.rss_bytes += x.rss_bytes;
        sum.rss_anon_bytes += x.rss_anon_bytes;
    }
    Some(sum)
}

async fn monitor(s: Arc<Shared>, watch: ServerWatch) -> Monitored {
    let pids = watch.pids;
    tokio::time::sleep_until(s.at(s.window_start_ns)).await;
    let metrics0 = scrape_watched(watch.metrics).await;
    let t0 = Instant::now();
    let census = || async { tokio::task::spawn_blocking(procs::census).await.unwrap_or_default() };
    let census0 = census().await;
    let mut latest = procs::Census::default();
    let machine0 = procs::machine_busy();
    let server0 = sample_all(&pids);
    let client0 = procs::sample(None);
    let me = [std::process::id()];
    let (server_delays0, client_delays0) = (procs::thread_run_delays(&pids), procs::thread_run_delays(&me));
    let mut peak = server0.map_or(0, |x| x.rss_bytes);
    let mut client_peak = client0.map_or(0, |x| x.rss_bytes);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = s.stop.cancelled() => break,
        }
        if let Some(x) = sample_all(&pids) {
            peak = peak.max(x.rss_bytes);
        }
        if let Some(x) = procs::sample(None) {
            client_peak = client_peak.max(x.rss_bytes);
        }
        latest.update(census().await);
    }
    let wall = t0.elapsed().as_secs_f64().max(1e-9);
    let usage = |a: Option<ProcSample>, b: Option<ProcSample>, peak: u64, waited: Option<Duration>| {
        let (a, b) = (a?, b?);
        let cpu = b.cpu.saturating_sub(a.cpu).as_secs_f64();
        Some(ResourceUse {
            cpu_cores: cpu / wall,
            cpu_seconds: cpu,
            rss_end_bytes: b.rss_bytes,
            rss_peak_bytes: peak.max(b.rss_bytes),
            rss_anon_end_bytes: b.rss_anon_bytes,
            cpu_wait_cores: waited.map(|d| d.as_secs_f64() / wall),
        })
    };
    let metrics1 = match metrics0 {
        Some(_) => scrape_watched(watch.metrics).await,
        None => None,
    };
    let server1 = sample_all(&pids);
    let client1 = procs::sample(None);
    let waited = |a: Option<procs::ThreadDelays>, b: Option<procs::ThreadDelays>| {
        a.zip(b).map(|(a, b)| procs::run_delay_between(&a, &b))
    };
    let server_waited = waited(server_delays0, procs::thread_run_delays(&pids));
    let client_waited = waited(client_delays0, procs::thread_run_delays(&me));
    let machine = machine0.zip(procs::machine_busy()).map(|(a, b)| b.saturating_sub(a).as_secs_f64() / wall);
    let mut exclude = vec![std::process::id()];
    exclude.extend(&pids);
    latest.update(census().await);
    let other = latest.other_since(&census0, &exclude);
    Monitored {
        server: usage(server0, server1, peak, server_waited),
        client: usage(client0, client1, client_peak, client_waited),
        machine_busy_cores: machine,
        other,
        wall,
        send_path: metrics0.zip(metrics1).and_then(|(a, b)| SendPath::between(&a, &b)),
    }
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64().max(1e-9);
    if r >= 10_000.0 { format!("{:.1}k", r / 1000.0) } else { format!("{r:.0}") }
}

async fn progress(label: String, s: Arc<Shared>, done: CancellationToken) {
    let mut last_sent = 0;
    let mut last_recv = 0;
    let mut last = Instant::now();
    let total = Duration::from_nanos(s.window_end_ns);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = done.cancelled() => return,
        }
        let now_ns = s.now_ns();
        let stage = if now_ns < s.window_start_ns {
            "warm-up"
        } else if now_ns < s.window_end_ns && !s.stop.is_cancelled() {
            "measure"
        } else {
            "drain"
        };
        let sent = s.sent_total.load(Ordering::Relaxed);
        let recv = s.received_total.load(Ordering::Relaxed);
        let dt = last.elapsed();
        last = Instant::now();
        let max_us = s.interval_max_us.swap(0, Ordering::Relaxed);
        eprintln!(
            "  [{label}] {stage:<7} {:>5.1}/{:.0}s  send {:>7} msg/s  recv {:>7} msg/s  max send latency {:>7.2} ms  errors {}",
            Duration::from_nanos(now_ns).as_secs_f64(),
            total.as_secs_f64(),
            rate(sent - last_sent, dt),
            rate(recv - last_recv, dt),
            max_us as f64 / 1000.0,
            s.errors_total.load(Ordering::Relaxed),
        );
        last_sent = sent;
        last_recv = recv;
    }
}

/// Runs producers (one task per element: each is one in-flight request slot) and consumers
/// under `args`, watching the server as `server` says.
pub async fn drive<P: Producer, C: Consumer>(
    label: &str,
    args: &LoadArgs,
    producers: Vec<P>,
    consumers: Vec<C>,
    server: ServerWatch,
) -> anyhow::Result<LoadOutcome> {
    args.validate()?;
    let empty = histogram()?;
    let window_start_ns = args.warmup.as_nanos() as u64;
    let window_end_ns = window_start_ns + args.duration.as_nanos() as u64;
    let s = Arc::new(Shared {
        epoch: Instant::now(),
        window_start_ns,
        window_end_ns,
        stop: CancellationToken::new(),
        tickets: AtomicU64::new(0),
        interval_ns: args.rate.map(|r| 1e9 * args.batch as f64 / r),
        claimed: AtomicU64::new(0),
        limit: args.messages,
        batch: args.batch,
        size: args.message_size,
        seq: AtomicU64::new(0),
        last_done_ns: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        received_total: AtomicU64::new(0),
        received_in_window: AtomicU64::new(0),
        errors_total: AtomicU64::new(0),
        interval_max_us: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    // Not all zeros, not compressible to nothing; the same bytes for every message.
    let filler: Bytes = (0..args.message_size).map(|i| b"rmq-gateway-bench"[i % 17]).collect::<Vec<u8>>().into();

    let consumer_stop = CancellationToken::new();
    let consumer_tasks: Vec<_> = consumers
        .into_iter()
        .map(|c| spawn_on(c.runtime(), consume(c, s.clone(), consumer_stop.clone(), empty.clone())))
        .collect();
    let progress_done = CancellationToken::new();
    let progress_task =
        (!args.quiet).then(|| tokio::spawn(progress(label.to_string(), s.clone(), progress_done.clone())));
    let monitor_task = tokio::spawn(monitor(s.clone(), server));
    let producer_tasks: Vec<_> = producers
        .into_iter()
        .map(|p| spawn_on(p.runtime(), produce(p, s.clone(), filler.clone(), empty.clone())))
        .collect();

    let mut send_latency_us = empty.clone();
    let (mut messages, mut requests, mut errors) = (0, 0, 0);
    for t in producer_tasks {
        let tally = t.await?;
        send_latency_us.add(&tally.hist).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        messages += tally.messages;
        requests += tally.requests;
        errors += tally.errors;
    }
    // Everything the producers will send is sent: end the window for the monitor.
    let producers_done_ns = s.now_ns();
    s.stop.cancel();
    let Monitored { server, client, machine_busy_cores, other, wall, send_path } = monitor_task.await?;
    let window_end = if args.messages.is_some() {
        s.last_done_ns.load(Ordering::Relaxed).max(window_start_ns + 1)
    } else {
        window_end_ns.min(producers_done_ns.max(window_start_ns + 1))
    };
    let window = Duration::from_nanos(window_end - window_start_ns);

    let has_consumers = !consumer_tasks.is_empty();
    if has_consumers {
        let drain_until = Instant::now() + args.drain;
        while s.received_in_window.load(Ordering::Relaxed) < messages && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    consumer_stop.cancel();
    let mut e2e = empty.clone();
    let (mut receive_errors, mut receive_calls, mut received_total) = (0, 0, 0);
    for t in consumer_tasks {
        let tally = t.await?;
        e2e.add(&tally.hist).map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        receive_errors += tally.errors;
        receive_calls += tally.calls;
        received_total += tally.messages;
    }
    progress_done.cancel();
    if let Some(t) = progress_task {
        let _ = t.await;
    }
    let first_error = s.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(LoadOutcome {
        window,
        target_rate: args.rate,
        messages,
        requests,
        errors,
        first_error,
        send_latency_us,
        received: s.received_in_window.load(Ordering::Relaxed),
        received_total,
        receive_calls,
        receive_errors,
        e2e_latency_us: has_consumers.then_some(e2e),
        server,
        client,
        machine_busy_cores,
        other_processes_cores: other.processes.as_secs_f64() / wall,
        kernel_threads_cores: other.kernel_threads.as_secs_f64() / wall,
        send_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Loopback(tokio::sync::mpsc::UnboundedSender<Bytes>);
    impl Producer for Loopback {
        async fn send(&mut self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
            for b in bodies {
                self.0.send(b)?;
            }
            Ok(())
        }
    }
    struct Sink(Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Bytes>>>);
    impl Consumer for Sink {
        async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
            Ok(self.0.lock().await.recv().await.into_iter().collect())
        }
    }

    fn args() -> LoadArgs {
        LoadArgs {
            producers: 1,
            concurrency: 2,
            consumers: 1,
            message_size: 64,
            batch: 2,
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(50),
            messages: None,
            rate: Some(2000.0),
            drain: Duration::from_secs(2),
            quiet: true,
        }
    }

    #[tokio::test]
    async fn every_window_message_is_counted_once_end_to_end() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let out = drive("t", &args(), vec![Loopback(tx.clone()), Loopback(tx)], vec![Sink(rx)], ServerWatch::default())
            .await
            .unwrap();
        assert!(out.messages > 0);
        assert_eq!(out.messages % 2, 0, "whole batches");
        assert_eq!(out.requests * 2, out.messages);
        assert_eq!(out.received, out.messages);
        assert_eq!(out.send_latency_us.len(), out.requests);
        assert_eq!(out.e2e_latency_us.unwrap().len(), out.messages);
        assert_eq!(out.errors, 0);
    }

    #[test]
    fn send_path_is_the_window_means_of_the_gateway_metrics() {
        let scrape = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Scrape>();
        let stage = |name: &str, stage: &str| format!("rocketmq_storage_append_latency_{name}{{stage=\"{stage}\"}}");
        let send = |name: &str, code: &str| {
            format!(
                "rocketmq_rpc_latency_{name}{{protocol_type=\"grpc\",request_code=\"SendMessage\",response_code=\"{code}\"}}"
            )
        };
        let at = |n: f64, stored_ms: f64, fsyncs: f64| {
            scrape(&[
                (&stage("count", "queued"), n),
                (&stage("sum", "queued"), n * 0.25),
                (&stage("count", "stored"), n),
                (&stage("sum", "stored"), stored_ms),
                (&stage("count", "resumed"), n),
                (&stage("sum", "resumed"), n * 1.0),
                (&send("count", "OK"), n),
                (&send("sum", "OK"), n * 1.25),
                // Failed sends are not in the handler mean.
                (&send("count", "INTERNAL_SERVER_ERROR"), n),
                (&send("sum", "INTERNAL_SERVER_ERROR"), n * 100.0),
                ("rocketmq_storage_flush_latency_count", fsyncs),
                ("rocketmq_storage_flush_latency_sum", fsyncs * 0.3),
            ])
        };
        // Before the window: 100 appends whose stored stage averaged 2 ms; in it: 50 more at 0.5.
        let p = SendPath::between(&at(100.0, 200.0, 10.0), &at(150.0, 225.0, 20.0)).unwrap();
        assert_eq!(p.stored_ms, Some(0.5));
        assert_eq!((p.queued_ms, p.resumed_ms, p.handler_ms), (Some(0.25), Some(1.0), Some(1.25)));
        assert_eq!(p.fsyncs, 10);
        assert!((p.fsync_ms.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(p.appends_per_fsync, Some(5.0));
        // Nothing stored in the window (a server without the metric, or idle): no figures.
        assert_eq!(SendPath::between(&at(100.0, 200.0, 10.0), &at(100.0, 200.0, 12.0)), None);
        assert_eq!(SendPath::between(&Scrape::new(), &Scrape::new()), None);
    }

    #[tokio::test]
    async fn message_count_stops_the_run() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut a = args();
        a.rate = None;
        a.messages = Some(100);
        a.duration = Duration::from_secs(60);
        let out = drive::<_, Sink>("t", &a, vec![Loopback(tx)], vec![], ServerWatch::default()).await.unwrap();
        assert_eq!(out.messages, 100);
        assert!(out.e2e_latency_us.is_none());
    }

    #[test]
    fn several_server_processes_are_summed() {
        let me = std::process::id();
        let one = sample_all(&[me]).unwrap();
        let two = sample_all(&[me, me]).unwrap();
        assert!(two.rss_bytes >= one.rss_bytes * 2 - one.rss_bytes / 2);
        assert!(sample_all(&[]).is_none());
        assert!(sample_all(&[me, u32::MAX]).is_none(), "a vanished process makes the sample unusable");
    }

    #[test]
    fn header_round_trips() {
        let s = Shared {
            epoch: Instant::now(),
            window_start_ns: 0,
            window_end_ns: 1,
            stop: CancellationToken::new(),
            tickets: AtomicU64::new(0),
            interval_ns: None,
            claimed: AtomicU64::new(0),
            limit: None,
            batch: 1,
            size: 40,
            seq: AtomicU64::new(7),
            last_done_ns: AtomicU64::new(0),
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            interval_max_us: AtomicU64::new(0),
            first_error: Mutex::new(None),
        };
        let b = s.body(123_456, &Bytes::from(vec![b'x'; 40]));
        assert_eq!(b.len(), 40);
        assert_eq!(sent_ns(&b), Some(123_456));
        assert_eq!(sent_ns(b"short"), None);
    }
}
