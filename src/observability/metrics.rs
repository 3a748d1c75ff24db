//! The metrics registry and its Prometheus text exposition, with RocketMQ's RIP-46 names and
//! labels (`rocketmq_messages_in_total{topic,message_type}`, `rocketmq_rpc_latency`, …).
//!
//! Two kinds of series:
//! - **Counters and histograms** recorded on the hot path by the layers that see the event
//!   (the protocol layer for messages in/out and RPC latency, the broker for DLQ moves,
//!   timers and transactions, the commit log for flush latency). A recording is a read lock,
//!   two hash look-ups by `&str` and an atomic add; a new label pair allocates once.
//! - **State gauges** (consumer lag, ready and inflight counts, half messages, timers held,
//!   tiering backlog, storage size, process figures) computed at scrape time from the state the
//!   broker and storage keep anyway ([`Gauges`], filled by the broker), never per message.
//!
//! Cardinality is bounded: labels are topics, groups, message types, RPC names and response
//! codes only (no client, message or offset labels), and topic/group pairs are capped
//! ([`DEFAULT_MAX_SERIES`]); pairs beyond the cap are counted under `_other_` and
//! `rocketmq_gateway_metrics_folded_total` counts what was folded.
//!
//! Names are the documented RIP-46 base names with no unit suffix (`rocketmq_rpc_latency`, in
//! milliseconds, as sent over OTLP), counters keep `_total`. Off (`metrics.enabled: false`):
//! [`init`] is never called, [`global`] is `None`, and every recording is a no-op.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fast_map::FastMap;

/// The label value topic/group pairs beyond the cap are counted under.
pub const OTHER: &str = "_other_";
/// Default cap on topic/group label pairs over all families.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// `rocketmq_rpc_latency` buckets (ms), RocketMQ's.
const RPC_BUCKETS: &[f64] = &[1.0, 3.0, 5.0, 7.0, 10.0, 100.0, 1000.0, 2000.0, 3000.0];
/// `rocketmq_storage_flush_latency` buckets (ms).
const FLUSH_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];

/// A stage of a commit-log append, timed from the append call: see
/// [`Metrics::append_latency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendStage {
    /// The writer took it: inline at once, or the writer thread's next batch (an append from
    /// outside the gRPC I/O threads under SYNC_FLUSH waits here for the group commit under way;
    /// one written inline waits for it in `Stored`).
    Queued,
    /// Stored: written, and under SYNC_FLUSH covered by a completed `fdatasync`.
    Stored,
    /// The appending task ran again (the wake-up and the wait for a runtime worker added).
    Resumed,
}

impl AppendStage {
    const ALL: [AppendStage; 3] = [AppendStage::Queued, AppendStage::Stored, AppendStage::Resumed];

    fn label(self) -> &'static str {
        match self {
            AppendStage::Queued => "queued",
            AppendStage::Stored => "stored",
            AppendStage::Resumed => "resumed",
        }
    }
}

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Turns recording on (once per process; later calls return the first registry).
pub fn init(max_series: usize, data_dir: &Path) -> Arc<Metrics> {
    GLOBAL.get_or_init(|| Arc::new(Metrics::new(max_series, Some(data_dir.to_path_buf())))).clone()
}

/// The registry, if metrics are on.
pub fn global() -> Option<&'static Metrics> {
    GLOBAL.get().map(|m| &**m)
}

/// A counted quantity: messages and their bytes.
#[derive(Debug, Default)]
pub struct Cell {
    pub count: AtomicU64,
    pub bytes: AtomicU64,
}

/// Shared cap on label pairs.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    cap: usize,
    folded: AtomicU64,
}

impl Budget {
    fn take(&self) -> bool {
        self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.cap).then_some(n + 1)).is_ok()
    }
}

type Pairs = FastMap<Arc<str>, FastMap<Arc<str>, Arc<Cell>>>;

/// Cells by a pair of labels (topic and message type or consumer group).
#[derive(Debug, Default)]
struct Family {
    map: RwLock<Pairs>,
}

impl Family {
    fn add(&self, budget: &Budget, a: &str, b: &str, count: u64, bytes: u64) {
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(cell) = map.get(a).and_then(|m| m.get(b)) {
                cell.count.fetch_add(count, Ordering::Relaxed);
                cell.bytes.fetch_add(bytes, Ordering::Relaxed);
                return;
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let exists = map.get(a).is_some_and(|m| m.contains_key(b));
        let (a, b) = if exists || budget.take() {
            (a, b)
        } else {
            budget.folded.fetch_add(1, Ordering::Relaxed);
            (OTHER, OTHER)
        };
        let cell = map.entry(Arc::from(a)).or_default().entry(Arc::from(b)).or_default();
        cell.count.fetch_add(count, Ordering::Relaxed);
        cell.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (a, b, count, bytes), sorted.
    fn snapshot(&self) -> Vec<(Arc<str>, Arc<str>, u64, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(a, m)| {
                m.iter().map(|(b, c)| {
                    (a.clone(), b.clone(), c.count.load(Ordering::Relaxed), c.bytes.load(Ordering::Relaxed))
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// A histogram with fixed bounds (milliseconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is +Inf.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = self.bounds.iter().position(|&b| ms <= b).unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or_else(|| "+Inf".to_string(), |v| v.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {acc}");
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count.load(Ordering::Relaxed));
    }
}

/// One consumer group's figures on one topic, summed over its queues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerGauge {
    pub topic: String,
    pub group: String,
    /// Stored at or above the consumer offset (not acked, in order).
    pub lag: u64,
    /// Not delivered yet (max offset − the next offset to deliver).
    pub ready: u64,
    /// Delivered, not acked.
    pub inflight: u64,
}

/// The remote tier's upload backlog.
#[derive(Debug, Clone, Default)]
pub struct TieringBacklog {
    pub waiting_segments: u64,
    pub waiting_bytes: u64,
    pub remote_bytes: u64,
    pub upload_failures: u64,
}

/// State gauges, read at scrape time (filled by the broker).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub consumers: Vec<ConsumerGauge>,
    /// Open transactions (half messages) per topic.
    pub half_messages: Vec<(String, u64)>,
    /// Orphan-transaction checks sent since start.
    pub transaction_checks: u64,
    /// Timer entries held in memory (due soon, not fired).
    pub timers_loaded: u64,
    pub tiering: Option<TieringBacklog>,
    pub topics: usize,
    pub groups: usize,
}

/// The registry.
#[derive(Debug)]
pub struct Metrics {
    budget: Budget,
    /// (topic, message_type).
    messages_in: Family,
    /// (topic, consumer_group).
    messages_out: Family,
    /// (topic, consumer_group).
    dlq: Family,
    /// (topic, "commit" | "rollback" | "half").
    transactions: Family,
    timers_scheduled: AtomicU64,
    timers_fired: AtomicU64,
    /// (RPC, response code) → latency.
    rpc: RwLock<FastMap<(&'static str, &'static str), Arc<Histogram>>>,
    flush: Histogram,
    /// By [`AppendStage`], in its order.
    append: [Histogram; 3],
    data_dir: Option<PathBuf>,
    started: f64,
}

impl Metrics {
    pub fn new(max_series: usize, data_dir: Option<PathBuf>) -> Metrics {
        Metrics {
            budget: Budget { used: AtomicUsize::new(0), cap: max_series, folded: AtomicU64::new(0) },
            messages_in: Family::default(),
            messages_out: Family::default(),
            dlq: Family::default(),
            transactions: Family::default(),
            timers_scheduled: AtomicU64::new(0),
            timers_fired: AtomicU64::new(0),
            rpc: RwLock::new(FastMap::default()),
            flush: Histogram::new(FLUSH_BUCKETS),
            append: AppendStage::ALL.map(|_| Histogram::new(FLUSH_BUCKETS)),
            data_dir,
            started: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// Messages stored by a send (`message_type` lower-case: normal, fifo, delay, transaction).
    pub fn messages_in(&self, topic: &str, message_type: &str, count: u64, bytes: u64) {
        self.messages_in.add(&self.budget, topic, message_type, count, bytes);
    }

    /// Messages delivered to a consumer group (receive or pull).
    pub fn messages_out(&self, topic: &str, group: &str, count: u64, bytes: u64) {
        self.messages_out.add(&self.budget, topic, group, count, bytes);
    }

    /// A message moved to the group's DLQ.
    pub fn dlq_move(&self, topic: &str, group: &str) {
        self.dlq.add(&self.budget, topic, group, 1, 0);
    }

    /// Half messages stored (`outcome` "half"), or transactions committed / rolled back.
    pub fn transaction(&self, topic: &str, outcome: &'static str, count: u64) {
        self.transactions.add(&self.budget, topic, outcome, count, 0);
    }

    pub fn timers_scheduled(&self, count: u64) {
        self.timers_scheduled.fetch_add(count, Ordering::Relaxed);
    }

    pub fn timers_fired(&self, count: u64) {
        self.timers_fired.fetch_add(count, Ordering::Relaxed);
    }

    /// One RPC's latency with the RocketMQ response code of its answer.
    pub fn rpc_latency(&self, rpc: &'static str, code: &'static str, d: Duration) {
        if let Some(h) = self.rpc.read().unwrap_or_else(|e| e.into_inner()).get(&(rpc, code)) {
            h.observe(d);
            return;
        }
        self.rpc
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((rpc, code))
            .or_insert_with(|| Arc::new(Histogram::new(RPC_BUCKETS)))
            .observe(d);
    }

    /// One commit-log fsync.
    pub fn flush_latency(&self, d: Duration) {
        self.flush.observe(d);
    }

    /// One commit-log append (one send request's messages) reached `stage`, `d` after the
    /// append call. The stages' differences say where a send's storage time goes: waiting
    /// for the writer (under SYNC_FLUSH, for the group commit under way), its own write and
    /// fsync, and being scheduled again.
    pub fn append_latency(&self, stage: AppendStage, d: Duration) {
        self.append[stage as usize].observe(d);
    }

    /// The text exposition (Prometheus 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let o = &mut out;
        header(o, "rocketmq_gateway_build_info", "gauge", "Build of the gateway.");
        let _ = writeln!(o, "rocketmq_gateway_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));

        let ins = self.messages_in.snapshot();
        header(o, "rocketmq_messages_in_total", "counter", "Messages stored by sends.");
        for (t, k, n, _) in &ins {
            let _ = writeln!(
                o,
                "rocketmq_messages_in_total{{topic=\"{}\",message_type=\"{}\",is_system=\"{}\"}} {n}",
                esc(t),
                esc(k),
                sys(t)
            );
        }
        header(o, "rocketmq_throughput_in_total", "counter", "Bytes (bodies) stored by sends.");
        for (t, k, _, b) in &ins {
            let _ = writeln!(
                o,
                "rocketmq_throughput_in_total{{topic=\"{}\",message_type=\"{}\",is_system=\"{}\"}} {b}",
                esc(t),
                esc(k),
                sys(t)
            );
        }
        let outs = self.messages_out.snapshot();
        header(o, "rocketmq_messages_out_total", "counter", "Messages delivered to consumer groups.");
        for (t, g, n, _) in &outs {
            let _ = writeln!(
                o,
                "rocketmq_messages_out_total{{topic=\"{}\",consumer_group=\"{}\",is_system=\"{}\"}} {n}",
                esc(t),
                esc(g),
                sys(t)
            );
        }
        header(o, "rocketmq_throughput_out_total", "counter", "Bytes (bodies) delivered to consumer groups.");
        for (t, g, _, b) in &outs {
            let _ = writeln!(
                o,
                "rocketmq_throughput_out_total{{topic=\"{}\",consumer_group=\"{}\",is_system=\"{}\"}} {b}",
                esc(t),
                esc(g),
                sys(t)
            );
        }
        header(o, "rocketmq_send_to_dlq_messages_total", "counter", "Messages moved to a dead-letter queue.");
        for (t, g, n, _) in self.dlq.snapshot() {
            let _ = writeln!(
                o,
                "rocketmq_send_to_dlq_messages_total{{topic=\"{}\",consumer_group=\"{}\",is_system=\"{}\"}} {n}",
                esc(&t),
                esc(&g),
                sys(&t)
            );
        }

        self.render_consumers(o, &g.consumers);

        let tx = self.transactions.snapshot();
        for (name, outcome, help) in [
            ("rocketmq_half_messages_total", "half", "Half (transactional) messages stored."),
            ("rocketmq_commit_messages_total", "commit", "Transactions committed."),
            ("rocketmq_rollback_messages_total", "rollback", "Transactions rolled back."),
        ] {
            header(o, name, "counter", help);
            for (t, _, n, _) in tx.iter().filter(|e| &*e.1 == outcome) {
                let _ = writeln!(o, "{name}{{topic=\"{}\"}} {n}", esc(t));
            }
        }
        header(o, "rocketmq_half_messages", "gauge", "Open transactions (half messages not ended).");
        for (t, n) in capped(&g.half_messages, self.budget.cap) {
            let _ = writeln!(o, "rocketmq_half_messages{{topic=\"{}\"}} {n}", esc(&t));
        }
        simple(
            o,
            "rocketmq_transaction_checks_total",
            "counter",
            "Orphan-transaction checks sent.",
            g.transaction_checks,
        );

        simple(
            o,
            "rocketmq_timer_enqueue_total",
            "counter",
            "Scheduled (delay/timed) messages stored.",
            self.timers_scheduled.load(Ordering::Relaxed),
        );
        simple(
            o,
            "rocketmq_timer_dequeue_total",
            "counter",
            "Scheduled messages fired (made deliverable).",
            self.timers_fired.load(Ordering::Relaxed),
        );
        simple(
            o,
            "rocketmq_timer_message_snapshot",
            "gauge",
            "Timer entries held in memory, not fired.",
            g.timers_loaded,
        );

        header(o, "rocketmq_rpc_latency", "histogram", "gRPC call latency in milliseconds by RPC and RocketMQ code.");
        let mut rpcs: Vec<_> =
            self.rpc.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, h)| (*k, h.clone())).collect();
        rpcs.sort_by_key(|(k, _)| *k);
        for ((rpc, code), h) in rpcs {
            let labels = format!("protocol_type=\"grpc\",request_code=\"{rpc}\",response_code=\"{code}\"");
            h.render(o, "rocketmq_rpc_latency", &labels);
        }
        header(o, "rocketmq_storage_flush_latency", "histogram", "Commit-log fsync latency in milliseconds.");
        self.flush.render(o, "rocketmq_storage_flush_latency", "");
        header(
            o,
            "rocketmq_storage_append_latency",
            "histogram",
            "Commit-log append latency in milliseconds from the append call, by stage: queued (the writer took it), stored (written, and fsynced under SYNC_FLUSH), resumed (the appending task ran again).",
        );
        for stage in AppendStage::ALL {
            let labels = format!("stage=\"{}\"", stage.label());
            self.append[stage as usize].render(o, "rocketmq_storage_append_latency", &labels);
        }

        self.render_storage(o, g);
        simple(o, "rocketmq_topic_number", "gauge", "Topics.", g.topics as u64);
        simple(o, "rocketmq_consumer_group_number", "gauge", "Consumer groups.", g.groups as u64);
        simple(
            o,
            "rocketmq_gateway_metrics_folded_total",
            "counter",
            "New topic/group label pairs counted under _other_ (the series cap was reached).",
            self.budget.folded.load(Ordering::Relaxed),
        );
        render_spans(o, &super::tracing::stats());
        if super::otlp_metrics::PUSH_ENABLED.load(Ordering::Relaxed) {
            simple(
                o,
                "rocketmq_gateway_otlp_push_failures_total",
                "counter",
                "Failed OTLP pushes of these metrics (metrics.otlpEndpoint).",
                super::otlp_metrics::PUSH_FAILURES.load(Ordering::Relaxed),
            );
        }
        if let Some(c) = super::client_metrics::global() {
            c.render(o);
        }
        render_process(o, self.started);
        out
    }

    fn render_consumers(&self, o: &mut String, consumers: &[ConsumerGauge]) {
        let mut rows: Vec<ConsumerGauge> = consumers.iter().take(self.budget.cap).cloned().collect();
        if consumers.len() > self.budget.cap {
            let mut other = ConsumerGauge { topic: OTHER.into(), group: OTHER.into(), ..Default::default() };
            for c in &consumers[self.budget.cap..] {
                other.lag += c.lag;
                other.ready += c.ready;
                other.inflight += c.inflight;
            }
            rows.push(other);
        }
        for (name, help, pick) in [
            ("rocketmq_consumer_lag_messages", "Messages not consumed yet (at or above the consumer offset).", 0),
            ("rocketmq_consumer_ready_messages", "Messages not delivered yet.", 1),
            ("rocketmq_consumer_inflight_messages", "Messages delivered and not acked.", 2),
        ] {
            header(o, name, "gauge", help);
            for c in &rows {
                let v = [c.lag, c.ready, c.inflight][pick];
                let _ = writeln!(
                    o,
                    "{name}{{topic=\"{}\",consumer_group=\"{}\",is_system=\"{}\"}} {v}",
                    esc(&c.topic),
                    esc(&c.group),
                    sys(&c.topic)
                );
            }
        }
    }

    fn render_storage(&self, o: &mut String, g: &Gauges) {
        if let Some(dir) = &self.data_dir {
            let labels = "storage_type=\"local\",storage_medium=\"disk\"";
            header(o, "rocketmq_storage_size", "gauge", "Bytes of the data directory.");
            let _ = writeln!(o, "rocketmq_storage_size{{{labels}}} {}", dir_size(dir));
            // The ratio `storage.diskMaxUsedSpaceRatio` is enforced on.
            if let Ok(ratio) = crate::storage::local::disk_used_ratio(dir) {
                header(o, "rocketmq_storage_disk_ratio", "gauge", "Used share of the data directory's file system.");
                let _ = writeln!(o, "rocketmq_storage_disk_ratio{{{labels}}} {ratio}");
            }
        }
        if let Some(t) = &g.tiering {
            simple(
                o,
                "rocketmq_tiered_store_dispatch_behind_segments",
                "gauge",
                "Sealed segments not uploaded yet.",
                t.waiting_segments,
            );
            simple(
                o,
                "rocketmq_tiered_store_dispatch_behind_bytes",
                "gauge",
                "Bytes of sealed segments not uploaded yet.",
                t.waiting_bytes,
            );
            simple(o, "rocketmq_tiered_store_size", "gauge", "Bytes in the object store.", t.remote_bytes);
            simple(
                o,
                "rocketmq_tiered_store_upload_failures_total",
                "counter",
                "Failed object-store calls of the uploader.",
                t.upload_failures,
            );
        }
    }
}

/// The span exporter's counters (only when tracing is on), read at scrape time.
fn render_spans(o: &mut String, s: &super::tracing::TracingStats) {
    if !s.enabled {
        return;
    }
    simple(o, "rocketmq_gateway_spans_exported_total", "counter", "Spans handed to the OTLP collector.", s.exported);
    simple(
        o,
        "rocketmq_gateway_spans_dropped_total",
        "counter",
        "Spans dropped because the export queue was full.",
        s.dropped,
    );
    simple(
        o,
        "rocketmq_gateway_spans_export_failed_total",
        "counter",
        "Spans lost because their export failed.",
        s.export_failed,
    );
}

/// The first `cap` rows, the rest summed under `_other_`.
fn capped(rows: &[(String, u64)], cap: usize) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = rows.iter().take(cap).cloned().collect();
    if rows.len() > cap {
        out.push((OTHER.to_string(), rows[cap..].iter().map(|r| r.1).sum()));
    }
    out
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple(o: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    header(o, name, kind, help);
    let _ = writeln!(o, "{name} {v}");
}

/// RIP-46's `is_system`: the gateway's own topics (`rmq_sys_*`) and Apache's `TBW102`.
fn sys(topic: &str) -> &'static str {
    if topic.starts_with("rmq_sys_") || topic == "TBW102" { "true" } else { "false" }
}

/// A label value escaped for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Bytes allocated on disk to the files under `dir` (preallocated segments count what they
/// use; symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.blocks() * 512),
                _ => {}
            }
        }
    }
    total
}

/// `process_*` from /proc/self (Linux; absent elsewhere).
fn render_process(o: &mut String, started: f64) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if ticks > 0 {
            header(o, "process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.");
            let _ = writeln!(o, "process_cpu_seconds_total {}", (num(11) + num(12)) as f64 / ticks as f64);
        }
        simple(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            num(21) * page.max(0) as u64,
        );
        simple(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", num(20));
        simple(o, "process_threads", "gauge", "OS threads.", num(17));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        simple(o, "process_open_fds", "gauge", "Open file descriptors.", fds.count() as u64);
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        simple(o, "process_max_fds", "gauge", "Maximum open file descriptors.", lim.rlim_cur);
    }
    header(o, "process_start_time_seconds", "gauge", "Start time of the process since the epoch in seconds.");
    let _ = writeln!(o, "process_start_time_seconds {started}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new(100, None);
        m.messages_in("t", "normal", 2, 10);
        m.messages_in("t", "normal", 1, 5);
        m.messages_out("t", "g", 1, 5);
        m.rpc_latency("SendMessage", "OK", Duration::from_millis(2));
        m.flush_latency(Duration::from_micros(300));
        m.append_latency(AppendStage::Stored, Duration::from_micros(400));
        let g = Gauges {
            consumers: vec![ConsumerGauge { topic: "t".into(), group: "g".into(), lag: 2, ready: 1, inflight: 1 }],
            ..Default::default()
        };
        let text = m.render(&g);
        assert!(
            text.contains("rocketmq_messages_in_total{topic=\"t\",message_type=\"normal\",is_system=\"false\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("rocketmq_throughput_in_total{topic=\"t\",message_type=\"normal\",is_system=\"false\"} 15")
        );
        assert!(text.contains("rocketmq_messages_out_total{topic=\"t\",consumer_group=\"g\",is_system=\"false\"} 1"));
        assert!(
            text.contains("rocketmq_consumer_lag_messages{topic=\"t\",consumer_group=\"g\",is_system=\"false\"} 2")
        );
        assert!(text.contains(
            "rocketmq_rpc_latency_bucket{protocol_type=\"grpc\",request_code=\"SendMessage\",response_code=\"OK\",le=\"3\"} 1"
        ));
        assert!(text.contains("rocketmq_rpc_latency_bucket{protocol_type=\"grpc\",request_code=\"SendMessage\",response_code=\"OK\",le=\"1\"} 0"));
        assert!(text.contains("rocketmq_storage_flush_latency_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("rocketmq_storage_flush_latency_count 1"));
        assert!(text.contains("rocketmq_storage_append_latency_bucket{stage=\"stored\",le=\"0.25\"} 0"), "{text}");
        assert!(text.contains("rocketmq_storage_append_latency_bucket{stage=\"stored\",le=\"0.5\"} 1"));
        assert!(text.contains("rocketmq_storage_append_latency_count{stage=\"queued\"} 0"));
        assert!(text.contains("process_start_time_seconds"));
    }

    #[test]
    fn label_pairs_beyond_the_cap_fold_into_other() {
        let m = Metrics::new(2, None);
        m.messages_in("a", "normal", 1, 1);
        m.messages_in("b", "normal", 1, 1);
        m.messages_in("c", "normal", 1, 1);
        m.messages_out("d", "g", 1, 1);
        m.messages_in("a", "normal", 1, 1);
        let text = m.render(&Gauges::default());
        assert!(
            text.contains("rocketmq_messages_in_total{topic=\"a\",message_type=\"normal\",is_system=\"false\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "rocketmq_messages_in_total{topic=\"_other_\",message_type=\"_other_\",is_system=\"false\"} 1"
            )
        );
        assert!(text.contains(
            "rocketmq_messages_out_total{topic=\"_other_\",consumer_group=\"_other_\",is_system=\"false\"} 1"
        ));
        assert!(!text.contains("topic=\"c\""));
        assert!(text.contains("rocketmq_gateway_metrics_folded_total 2"));
    }

    #[test]
    fn span_counters_only_when_tracing_is_on() {
        let mut o = String::new();
        let off =
            crate::observability::tracing::TracingStats { enabled: false, exported: 1, dropped: 2, export_failed: 3 };
        render_spans(&mut o, &off);
        assert!(o.is_empty());
        render_spans(&mut o, &crate::observability::tracing::TracingStats { enabled: true, ..off });
        assert!(
            o.contains(
                "# TYPE rocketmq_gateway_spans_exported_total counter\nrocketmq_gateway_spans_exported_total 1\n"
            ),
            "{o}"
        );
        assert!(o.contains("rocketmq_gateway_spans_dropped_total 2\n"), "{o}");
        assert!(o.contains("rocketmq_gateway_spans_export_failed_total 3\n"), "{o}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
