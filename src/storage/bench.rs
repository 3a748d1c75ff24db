//! The storage benchmark (`rmq-gateway bench storage`): append throughput and latency of
//! [`CommitLog`] under many concurrent appenders, compared with the disk's own ceiling, and
//! the effect of a large backlog. Prints a table and writes JSON + Markdown to the results
//! directory. Never used by `serve`; timings are reported, not asserted.
//!
//! Cases:
//! - **Throughput**: for each body size × flush mode, `concurrency` tokio tasks append one
//!   message per call (as gRPC sends do) to `queues` queues for `duration` (after a warm-up).
//! - **Ceiling**: for each `Sync` case, a plain loop of sequential `pwrite` + `fdatasync` in
//!   the same directory on a pre-sized file (as the log's segments are), writing per fsync as
//!   many bytes as the group commit wrote per fsync. The log's disk bytes/s over the
//!   ceiling's is the reported ratio.
//! - **Backlog**: `Sync` 100-byte appends on an empty log vs. on a log filled with
//!   `backlog_messages` 100-byte messages (alternating rounds); reports the slowdown, the
//!   process RSS and how long re-opening the big log takes.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use super::record::keys;
use super::{AppendMessage, CommitLog, FlushMode, MessageLog, Properties, StorageConfig};

/// Arguments of `rmq-gateway bench storage`.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageBenchArgs {
    /// Directory for benchmark data; each case uses a fresh sub-directory.
    #[arg(long, default_value = "./data/bench-storage")]
    pub data_dir: PathBuf,
    /// Directory for the JSON and Markdown results.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Measured time per throughput case (after a warm-up of a tenth of it).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent appender tasks.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Queues the appenders spread over.
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
    /// Message body sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1024,16384")]
    pub sizes: Vec<usize>,
    /// Flush modes to measure, comma separated (`sync`, `async`).
    #[arg(long, value_delimiter = ',', default_value = "sync,async")]
    pub modes: Vec<String>,
    /// fsync interval of the `async` mode.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub async_flush_interval: Duration,
    /// Messages in the backlog case (0 skips it).
    #[arg(long, default_value_t = 10_000_000)]
    pub backlog_messages: u64,
    /// `Sync` cases alternate log and ceiling runs this many times (the disk's speed drifts
    /// on shared machines; alternating keeps the comparison fair).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Short run (well under a minute): 1 s per case, one round, a 200 000-message backlog.
    #[arg(long)]
    pub quick: bool,
    /// Keep the data directories instead of deleting them.
    #[arg(long)]
    pub keep_data: bool,
    /// Skip the throughput matrix (run only the backlog case).
    #[arg(long)]
    pub no_matrix: bool,
    /// `storage.zeroAheadBytes` of the logs measured (0: off; it only acts in `sync` mode on
    /// ext4 and XFS).
    #[arg(long, default_value_t = 8 << 20)]
    pub zero_ahead_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub mode: String,
    pub body_bytes: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub messages: u64,
    pub msgs_per_sec: f64,
    /// Body bytes per second.
    pub payload_mb_per_sec: f64,
    /// Log bytes per second (records with framing, properties, topic).
    pub disk_mb_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub fsyncs_per_sec: f64,
    /// Log bytes per fsync: the group-commit batch size achieved.
    pub bytes_per_fsync: f64,
    pub messages_per_fsync: f64,
    /// Writer batches (one `pwrite` each, per segment) per fsync.
    pub batches_per_fsync: f64,
    /// Plain write + fdatasync loop with `bytes_per_fsync` chunks (Sync cases only).
    pub ceiling_mb_per_sec: Option<f64>,
    pub ceiling_fsyncs_per_sec: Option<f64>,
    /// `disk_mb_per_sec / ceiling_mb_per_sec`.
    pub ratio_to_ceiling: Option<f64>,
    /// The ratio of each round (log run, then ceiling run right after it).
    pub round_ratios: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BacklogResult {
    pub backlog_messages: u64,
    pub fill_seconds: f64,
    pub fill_msgs_per_sec: f64,
    pub log_bytes: u64,
    pub empty: CaseResult,
    pub with_backlog: CaseResult,
    /// `1 - with_backlog / empty` in msgs/s (negative: faster).
    pub slowdown: f64,
    /// RSS while the empty log was open and measured.
    pub rss_empty: Option<Rss>,
    /// RSS right after filling the backlog (the filled log still open).
    pub rss_after_fill: Option<Rss>,
    /// RSS while the backlog log was open and measured.
    pub rss_with_backlog: Option<Rss>,
    /// Time to open (recover) the backlog log, per round.
    pub reopen_seconds: Vec<f64>,
    pub key_index_runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub filesystem: String,
    /// `/proc/loadavg` when the benchmark started (other work on the machine skews results).
    pub load_average_start: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub started_at_unix: u64,
    pub machine: Machine,
    pub data_dir: String,
    pub duration_secs: f64,
    pub concurrency: usize,
    pub queues: u32,
    pub cases: Vec<CaseResult>,
    pub backlog: Option<BacklogResult>,
    /// `/proc/loadavg` when the benchmark ended.
    pub load_average_end: String,
}

/// Runs the benchmark and writes `storage-<unix time>.{json,md}` (and `storage-latest.*`).
pub async fn run(mut args: StorageBenchArgs) -> anyhow::Result<()> {
    if args.quick {
        args.duration = Duration::from_secs(1);
        args.rounds = 1;
        args.backlog_messages = args.backlog_messages.min(200_000);
    }
    anyhow::ensure!(args.concurrency > 0 && args.queues > 0, "concurrency and queues must be positive");
    fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let started_at_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let machine = machine(&args.data_dir);
    println!(
        "storage bench: {} cores ({}), {} MiB RAM, {} on {}; {} appenders over {} queues, {:?} per case",
        machine.cores,
        machine.cpu,
        machine.memory_kib / 1024,
        machine.filesystem,
        args.data_dir.display(),
        args.concurrency,
        args.queues,
        args.duration
    );
    let mut cases = Vec::new();
    let modes = if args.no_matrix { Vec::new() } else { args.modes.clone() };
    for mode in &modes {
        let flush = match mode.as_str() {
            "sync" => FlushMode::Sync,
            "async" => FlushMode::Async { interval: args.async_flush_interval },
            other => anyhow::bail!("unknown mode `{other}` (expected sync or async)"),
        };
        for &size in &args.sizes {
            let dir = case_dir(&args, &format!("{mode}-{size}"))?;
            let rounds = if flush == FlushMode::Sync { args.rounds.max(1) } else { 1 };
            let mut total = Measurement::default();
            let mut ceiling = Measurement::default();
            let mut round_ratios = Vec::new();
            for _ in 0..rounds {
                let log = open(&args, &dir, flush).await?;
                let m = measure_appends(&log, &args, size, args.duration).await?;
                log.close().await?;
                drop(log);
                if flush == FlushMode::Sync && m.fsyncs > 0 {
                    let chunk = (m.disk_bytes as f64 / m.fsyncs as f64).round() as usize;
                    let ceiling_dir = dir.clone();
                    let duration = args.duration;
                    let c = tokio::task::spawn_blocking(move || raw_write_fsync(&ceiling_dir, chunk, duration))
                        .await?
                        .context("raw write+fsync ceiling")?;
                    round_ratios.push((m.disk_bytes as f64 / m.seconds) / (c.disk_bytes as f64 / c.seconds));
                    ceiling.add(c);
                }
                total.add(m);
            }
            let mut case = total.result(mode, size, args.concurrency);
            if ceiling.seconds > 0.0 {
                let mbps = ceiling.disk_bytes as f64 / ceiling.seconds / 1e6;
                case.ceiling_mb_per_sec = Some(mbps);
                case.ceiling_fsyncs_per_sec = Some(ceiling.fsyncs as f64 / ceiling.seconds);
                case.ratio_to_ceiling = Some(case.disk_mb_per_sec / mbps);
                case.round_ratios = round_ratios;
            }
            print_case(&case);
            cases.push(case);
            remove_case_dir(&args, &dir);
            settle().await;
        }
    }
    let backlog = if args.backlog_messages > 0 { Some(backlog_case(&args).await?) } else { None };
    let report = BenchReport {
        started_at_unix,
        machine,
        data_dir: args.data_dir.display().to_string(),
        duration_secs: args.duration.as_secs_f64(),
        concurrency: args.concurrency,
        queues: args.queues,
        cases,
        backlog,
        load_average_end: load_average(),
    };
    let markdown = markdown(&report);
    println!("\n{markdown}");
    let json = serde_json::to_string_pretty(&report)?;
    for name in [format!("storage-{started_at_unix}"), "storage-latest".to_string()] {
        let base = args.results_dir.join(name);
        fs::write(base.with_extension("json"), &json)?;
        fs::write(base.with_extension("md"), &markdown)?;
    }
    println!(
        "results written to {}",
        args.results_dir.join(format!("storage-{started_at_unix}.{{json,md}}")).display()
    );
    Ok(())
}

fn case_dir(args: &StorageBenchArgs, name: &str) -> anyhow::Result<PathBuf> {
    let dir = args.data_dir.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Ok(dir)
}

fn remove_case_dir(args: &StorageBenchArgs, dir: &Path) {
    if !args.keep_data
        && let Err(e) = fs::remove_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove benchmark data");
    }
}

async fn open(args: &StorageBenchArgs, dir: &Path, flush: FlushMode) -> anyhow::Result<Arc<CommitLog>> {
    let config = StorageConfig { flush, zero_ahead_bytes: args.zero_ahead_bytes, ..StorageConfig::new(dir) };
    Ok(tokio::task::spawn_blocking(move || CommitLog::open(config)).await??)
}

pub(crate) fn bench_message(queue_id: u32, task: usize, seq: u64, body: &Bytes) -> AppendMessage {
    let mut properties = Properties::with_capacity(1);
    // Unique like a producer's message id, so the key index does its real work.
    properties.push(keys::UNIQ_KEY, format!("AC110001{task:08X}{seq:016X}"));
    AppendMessage {
        topic: Arc::from("BenchTopic"),
        queue_id,
        born_timestamp_ms: 0,
        flags: 0,
        tag_hash: 0,
        properties,
        body: body.clone(),
    }
}

/// What one timed run measured.
#[derive(Debug, Default)]
pub(crate) struct Measurement {
    seconds: f64,
    disk_bytes: u64,
    fsyncs: u64,
    batches: u64,
    /// Per-append latencies in µs, of appends completed inside the window.
    latencies_us: Vec<u32>,
}

impl Measurement {
    pub(crate) fn add(&mut self, other: Measurement) {
        self.seconds += other.seconds;
        self.disk_bytes += other.disk_bytes;
        self.fsyncs += other.fsyncs;
        self.batches += other.batches;
        self.latencies_us.extend(other.latencies_us);
    }

    pub(crate) fn result(mut self, mode: &str, size: usize, concurrency: usize) -> CaseResult {
        self.latencies_us.sort_unstable();
        let lat = &self.latencies_us;
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            f64::from(lat[i]) / 1000.0
        };
        let seconds = self.seconds.max(f64::MIN_POSITIVE);
        let messages = lat.len() as u64;
        let fsyncs = self.fsyncs as f64;
        let disk_bytes = self.disk_bytes as f64;
        CaseResult {
            mode: mode.to_string(),
            body_bytes: size,
            concurrency,
            seconds: self.seconds,
            messages,
            msgs_per_sec: messages as f64 / seconds,
            payload_mb_per_sec: (messages as f64 * size as f64) / seconds / 1e6,
            disk_mb_per_sec: disk_bytes / seconds / 1e6,
            latency_p50_ms: pct(0.50),
            latency_p99_ms: pct(0.99),
            latency_p999_ms: pct(0.999),
            fsyncs_per_sec: fsyncs / seconds,
            bytes_per_fsync: if fsyncs > 0.0 { disk_bytes / fsyncs } else { 0.0 },
            messages_per_fsync: if fsyncs > 0.0 { messages as f64 / fsyncs } else { 0.0 },
            batches_per_fsync: if fsyncs > 0.0 { self.batches as f64 / fsyncs } else { 0.0 },
            ceiling_mb_per_sec: None,
            ceiling_fsyncs_per_sec: None,
            ratio_to_ceiling: None,
            round_ratios: Vec::new(),
        }
    }
}

/// `concurrency` tasks append single messages until the deadline; counts what completes
/// inside the measured window (after a warm-up of a tenth of `duration`, at most 1 s).
async fn measure_appends(
    log: &Arc<CommitLog>,
    args: &StorageBenchArgs,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    measure_appends_with(log, args.concurrency, args.queues, size, duration).await
}

/// [`measure_appends`] with explicit knobs (the tiering bench's backlog case reuses it).
pub(crate) async fn measure_appends_with(
    log: &Arc<CommitLog>,
    concurrency: usize,
    queues: u32,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let warmup = (duration / 10).min(Duration::from_secs(1));
    let start = Instant::now();
    let window_start = start + warmup;
    let deadline = window_start + duration;
    let body = Bytes::from(vec![b'x'; size]);
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let log = log.clone();
        let body = body.clone();
        let queue_id = task as u32 % queues.max(1);
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                log.append(vec![bench_message(queue_id, task, seq, &body)]).await?;
                let t1 = Instant::now();
                if t0 >= window_start && t1 <= deadline {
                    latencies_us.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                }
                seq += 1;
            }
            anyhow::Ok(latencies_us)
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let before = log.stats();
    tokio::time::sleep_until(deadline.into()).await;
    let after = log.stats();
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await??);
    }
    Ok(Measurement {
        seconds: duration.as_secs_f64(),
        disk_bytes: after.bytes_written - before.bytes_written,
        fsyncs: after.fsyncs - before.fsyncs,
        batches: after.batches_written - before.batches_written,
        latencies_us,
    })
}

/// The disk's ceiling for this batch size: sequential `pwrite` of `chunk` bytes followed by
/// `fdatasync`, on pre-sized 1 GiB files like the log's segments.
fn raw_write_fsync(dir: &Path, chunk: usize, duration: Duration) -> std::io::Result<Measurement> {
    const FILE_SIZE: u64 = 1 << 30;
    fs::create_dir_all(dir)?;
    let buf = vec![0xA5u8; chunk.max(1)];
    let mut file_no = 0;
    let new_file = |n: u32| -> std::io::Result<fs::File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join(format!("raw-{n}.bin")))?;
        f.set_len(FILE_SIZE)?;
        Ok(f)
    };
    let mut file = new_file(file_no)?;
    let mut pos = 0u64;
    let (mut bytes, mut syncs) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        if pos + buf.len() as u64 > FILE_SIZE {
            file_no += 1;
            file = new_file(file_no)?;
            pos = 0;
        }
        file.write_all_at(&buf, pos)?;
        file.sync_data()?;
        pos += buf.len() as u64;
        bytes += buf.len() as u64;
        syncs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    for n in 0..=file_no {
        let _ = fs::remove_file(dir.join(format!("raw-{n}.bin")));
    }
    Ok(Measurement { seconds: secs, disk_bytes: bytes, fsyncs: syncs, batches: syncs, latencies_us: Vec::new() })
}

/// Empty log vs. a log holding `backlog_messages`: the backlog is filled once; then, for each
/// round, a fresh empty log and the (re-opened) backlog log are measured one after the other,
/// so drifting disk speed affects both alike.
async fn backlog_case(args: &StorageBenchArgs) -> anyhow::Result<BacklogResult> {
    let dir = case_dir(args, "backlog")?;
    let total = args.backlog_messages;
    let log = open(args, &dir, FlushMode::Sync).await?;
    // Fill with multi-message appends (a producer's batch send) to get there quickly.
    let fill_seconds = fill_backlog(&log, total, args.queues).await?;
    let log_bytes = log.stats().published_position;
    let rss_after_fill = rss();
    println!(
        "backlog: filled {total} messages ({:.2} GB of log) in {fill_seconds:.1} s ({:.0} msgs/s)",
        log_bytes as f64 / 1e9,
        total as f64 / fill_seconds
    );
    log.close().await?;
    drop(log);

    let rounds = args.rounds.max(1);
    let mut empty = Measurement::default();
    let mut with_backlog = Measurement::default();
    let mut rss_empty = None;
    let mut rss_with_backlog = None;
    let mut reopen_seconds = Vec::new();
    let mut key_index_runs = 0;
    for round in 0..rounds {
        // Alternate which goes first, so drift and the previous run's after-effects (page
        // cache write-back, discards of deleted files) hit both alike.
        for backlog_first in [round % 2 == 1, round % 2 == 0] {
            if backlog_first {
                let t = Instant::now();
                let log = open(args, &dir, FlushMode::Sync).await?;
                reopen_seconds.push(t.elapsed().as_secs_f64());
                with_backlog.add(measure_appends(&log, args, 100, args.duration).await?);
                rss_with_backlog = rss();
                key_index_runs = log.stats().key_index_runs;
                log.close().await?;
            } else {
                let empty_dir = case_dir(args, "backlog-empty")?;
                let log = open(args, &empty_dir, FlushMode::Sync).await?;
                empty.add(measure_appends(&log, args, 100, args.duration).await?);
                rss_empty = rss();
                log.close().await?;
                drop(log);
                remove_case_dir(args, &empty_dir);
            }
            settle().await;
        }
    }
    remove_case_dir(args, &dir);
    let empty = empty.result("sync", 100, args.concurrency);
    let with_backlog = with_backlog.result("sync", 100, args.concurrency);
    println!(
        "backlog: empty {:.0} msgs/s, with backlog {:.0} msgs/s (re-open of the backlog log: {:.2} s)",
        empty.msgs_per_sec,
        with_backlog.msgs_per_sec,
        reopen_seconds.iter().cloned().fold(0.0, f64::max)
    );
    Ok(BacklogResult {
        backlog_messages: total,
        fill_seconds,
        fill_msgs_per_sec: total as f64 / fill_seconds,
        log_bytes,
        slowdown: 1.0 - with_backlog.msgs_per_sec / empty.msgs_per_sec,
        empty,
        with_backlog,
        rss_empty,
        rss_after_fill,
        rss_with_backlog,
        reopen_seconds,
        key_index_runs,
    })
}

fn print_case(c: &CaseResult) {
    let ceiling = match (c.ceiling_mb_per_sec, c.ratio_to_ceiling) {
        (Some(m), Some(r)) => format!("ceiling {m:7.1} MB/s  ratio {:5.1}%", r * 100.0),
        _ => String::new(),
    };
    println!(
        "{:>5} {:>6} B  {:>10.0} msgs/s {:>8.1} MB/s payload {:>8.1} MB/s disk  p50 {:>6.2} ms p99 {:>6.2} ms  {:>7.0} fsync/s {:>9.0} B/fsync {:>5.1} batches/fsync  {ceiling}",
        c.mode,
        c.body_bytes,
        c.msgs_per_sec,
        c.payload_mb_per_sec,
        c.disk_mb_per_sec,
        c.latency_p50_ms,
        c.latency_p99_ms,
        c.fsyncs_per_sec,
        c.bytes_per_fsync,
        c.batches_per_fsync
    );
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.*}", digits, v * scale))
}

fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    s.push_str("# Storage benchmark\n\n");
    s.push_str(&format!(
        "Machine: {} × {}, {} MiB RAM, kernel {}, {} (`{}`). {} concurrent appenders over {} queues, one message per append, {:.1} s per case.\n\n",
        r.machine.cores, r.machine.cpu, r.machine.memory_kib / 1024, r.machine.kernel, r.machine.filesystem, r.data_dir, r.concurrency, r.queues, r.duration_secs
    ));
    s.push_str(&format!(
        "Load average (1/5/15 min, runnable/total) at start: `{}`, at end: `{}`. Ceiling = sequential `pwrite` + `fdatasync` of the same bytes per fsync on a pre-sized file in the same directory; `Sync` cases alternate log and ceiling runs (ratio per round in the JSON).\n\n",
        r.machine.load_average_start, r.load_average_end
    ));
    s.push_str("| mode | body | msgs/s | payload MB/s | disk MB/s | p50 ms | p99 ms | p99.9 ms | fsyncs/s | KiB/fsync | msgs/fsync | ceiling MB/s | ratio |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in &r.cases {
        s.push_str(&format!(
            "| {} | {} B | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {} | {} |\n",
            c.mode,
            c.body_bytes,
            c.msgs_per_sec,
            c.payload_mb_per_sec,
            c.disk_mb_per_sec,
            c.latency_p50_ms,
            c.latency_p99_ms,
            c.latency_p999_ms,
            c.fsyncs_per_sec,
            c.bytes_per_fsync / 1024.0,
            c.messages_per_fsync,
            opt(c.ceiling_mb_per_sec, 1.0, 1),
            opt(c.ratio_to_ceiling, 100.0, 1) + if c.ratio_to_ceiling.is_some() { "%" } else { "" },
        ));
    }
    if let Some(b) = &r.backlog {
        let kib = |x: &Option<Rss>| {
            x.as_ref().map_or_else(
                || "–".into(),
                |r| format!("{} / {} / {}", r.vm_rss_kib / 1024, r.rss_anon_kib / 1024, r.rss_file_kib / 1024),
            )
        };
        s.push_str(&format!(
            "\n## Backlog\n\n{} messages of 100 B ({:.2} GB of log) filled in {:.1} s ({:.0} msgs/s). Sync appends of 100 B:\n\n",
            b.backlog_messages,
            b.log_bytes as f64 / 1e9,
            b.fill_seconds,
            b.fill_msgs_per_sec
        ));
        s.push_str("| log | msgs/s | p50 ms | p99 ms | RSS MiB (VmRSS / anon / file) |\n|---|---:|---:|---:|---|\n");
        s.push_str(&format!(
            "| empty | {:.0} | {:.2} | {:.2} | {} |\n",
            b.empty.msgs_per_sec,
            b.empty.latency_p50_ms,
            b.empty.latency_p99_ms,
            kib(&b.rss_empty)
        ));
        s.push_str(&format!(
            "| after fill | – | – | – | {} |\n| with backlog | {:.0} | {:.2} | {:.2} | {} |\n",
            kib(&b.rss_after_fill),
            b.with_backlog.msgs_per_sec,
            b.with_backlog.latency_p50_ms,
            b.with_backlog.latency_p99_ms,
            kib(&b.rss_with_backlog)
        ));
        s.push_str(&format!(
            "\nSlowdown with backlog: {:.1}% ({} alternating rounds; key-index runs: {}). Re-opening the backlog log took {} s.\n",
            b.slowdown * 100.0,
            b.reopen_seconds.len(),
            b.key_index_runs,
            b.reopen_seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / ")
        ));
    }
    s
}

/// Lets the device finish the previous case's write-back and discards before the next one.
pub(crate) async fn settle() {
    // SAFETY: `sync(2)` takes no arguments and cannot fail.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// VmRSS, RssAnon and RssFile of this process (Linux `/proc/self/status`).
pub fn rss() -> Option<Rss> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Rss { vm_rss_kib: field("VmRSS:")?, rss_anon_kib: field("RssAnon:")?, rss_file_kib: field("RssFile:")? })
}

fn machine(dir: &Path) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown cpu".to_string(), |s| s.trim().to_string());
    let memory_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let kernel =
        fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    let abs = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let filesystem = fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|mounts| {
            mounts
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 3 && abs.starts_with(f[1]))
                        .then(|| (f[1].len(), format!("{} {} at {}", f[2], f[0], f[1])))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, s)| s)
        })
        .unwrap_or_else(|| "unknown filesystem".into());
    Machine {
        load_average_start: load_average(),
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_kib,
        kernel,
        filesystem,
    }
}

/// Fills `log` with `total` 100-byte messages over `queues` queues, in multi-message appends
/// (a producer's batch send) from 16 tasks, to get there quickly; returns the seconds it took.
pub(crate) async fn fill_backlog(log: &Arc<CommitLog>, total: u64, queues: u32) -> anyhow::Result<f64> {
    let fill_tasks = 16u64;
    let per_call = 256u64;
    let started = Instant::now();
    let body = Bytes::from(vec![b'b'; 100]);
    let mut tasks = Vec::new();
    for task in 0..fill_tasks {
        let log = log.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mine = total / fill_tasks + u64::from(task < total % fill_tasks);
            let mut seq = 0u64;
            while seq < mine {
                let n = per_call.min(mine - seq);
                let batch = (0..n)
                    .map(|i| {
                        bench_message(((seq + i) % u64::from(queues)) as u32, 1000 + task as usize, seq + i, &body)
                    })
                    .collect();
                log.append(batch).await?;
                seq += n;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    Ok(fill_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the real benchmark from a test binary (until the CLI wires `bench storage`):
    /// `RMQ_STORAGE_BENCH_ARGS="--quick" cargo test --release --lib run_benchmark_from_env -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run explicitly in release mode"]
    fn run_benchmark_from_env() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: StorageBenchArgs,
        }
        use clap::Parser;
        let raw = std::env::var("RMQ_STORAGE_BENCH_ARGS").unwrap_or_default();
        let cli = Cli::parse_from(std::iter::once("bench").chain(raw.split_whitespace()));
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(run(cli.args)).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_run_writes_results() {
        let dir = tempfile::tempdir().unwrap();
        let args = StorageBenchArgs {
            data_dir: dir.path().join("data"),
            results_dir: dir.path().join("results"),
            duration: Duration::from_millis(200),
            concurrency: 8,
            queues: 2,
            sizes: vec![100],
            modes: vec!["sync".into(), "async".into()],
            async_flush_interval: Duration::from_millis(50),
            backlog_messages: 3000,
            rounds: 2,
            quick: false,
            keep_data: false,
            no_matrix: false,
            zero_ahead_bytes: 8 << 20,
        };
        run(args).await.unwrap();
        let json = fs::read_to_string(dir.path().join("results/storage-latest.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["cases"].as_array().unwrap().len(), 2);
        assert!(v["cases"][0]["ceiling_mb_per_sec"].is_number());
        assert!(v["backlog"]["with_backlog"]["messages"].as_u64().unwrap() > 0);
        assert!(dir.path().join("results/storage-latest.md").exists());
    }
}
