//! The timer benchmark (`rmq-gateway bench timers`, part of `make bench`): how precisely the
//! gateway delivers a burst of scheduled messages, and what millions of scheduled messages
//! cost. It runs the broker in process on the real commit log and timer index (no gRPC), so
//! the figures are the timer's own. Timings are reported, never asserted.
//!
//! Cases:
//! - **Burst**: `--burst` messages (default 100,000) due within the same second, a few seconds
//!   after they were sent. Lateness is measured twice: when each message became deliverable
//!   (the store time of the record its firing wrote) and when a consumer received it (four
//!   in-process consumers receiving and acking), both minus its delivery time.
//! - **Many scheduled**: `--scheduled` messages (default 10,000,000) due over the next
//!   `--horizon` (default 30 days). Reports the process RSS before and after, the bytes of the
//!   timer index on disk and how many entries the timer holds in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use crate::broker::{Broker, BrokerSettings, Filter, OutgoingMessage, ReceiveRequest, Stores};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::storage::bench::{Rss, rss};
use crate::storage::{BucketFiles, CommitLog, FlushMode, MessageLog, StorageConfig};

/// Arguments of `rmq-gateway bench timers`.
#[derive(Debug, Clone, clap::Args)]
pub struct TimerBenchArgs {
    /// Directory for benchmark data (removed afterwards).
    #[arg(long, default_value = "./data/bench-timers")]
    pub data_dir: PathBuf,
    /// Directory for the JSON and Markdown results.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Messages due within one second.
    #[arg(long, default_value_t = 100_000)]
    pub burst: usize,
    /// Messages scheduled over the horizon for the memory case (0 skips it).
    #[arg(long, default_value_t = 10_000_000)]
    pub scheduled: u64,
    /// How far ahead the scheduled messages are spread.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub horizon: Duration,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lateness {
    pub count: usize,
    pub early: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

impl Lateness {
    fn of(mut v: Vec<i64>) -> Lateness {
        v.sort_unstable();
        let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
        Lateness {
            count: v.len(),
            early: v.iter().filter(|&&x| x < 0).count(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    pub messages: usize,
    pub send_seconds: f64,
    pub timer_precision_ms: u64,
    /// When each message became deliverable, minus its delivery time.
    pub deliverable: Lateness,
    /// When a consumer received it, minus its delivery time.
    pub received: Lateness,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduledResult {
    pub messages: u64,
    pub horizon: String,
    pub send_seconds: f64,
    /// From the end of sending until every message was in the timer index.
    pub index_seconds: f64,
    pub rss_before: Option<Rss>,
    pub rss_after: Option<Rss>,
    /// Growth of anonymous memory (heap) per scheduled message.
    pub anon_growth_bytes_per_message: Option<f64>,
    pub timer_index_bytes: u64,
    pub commit_log_bytes: u64,
    pub entries_in_memory: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimerReport {
    pub burst: BurstResult,
    pub scheduled: Option<ScheduledResult>,
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A broker on a fresh commit log (ASYNC flush, as the gateway's default) and timer index.
async fn start(dir: &Path) -> anyhow::Result<(Broker, Arc<dyn MessageLog>)> {
    std::fs::create_dir_all(dir)?;
    let mut config = Config::default();
    config.topics.auto_create_topic_enable = true;
    config.topics.default_topic_queue_nums = 8;
    let config = Arc::new(config);
    let mut store = StorageConfig::new(dir.join("store"));
    store.flush = FlushMode::Async { interval: Duration::from_millis(500) };
    let log: Arc<dyn MessageLog> = CommitLog::open(store)?;
    let meta = Arc::new(SqliteMetadataStore::open(&format!("sqlite://{}", dir.join("meta.db").display())).await?);
    let bucket = config.timer.timer_bucket.as_millis() as i64;
    let timers = Arc::new(BucketFiles::open(&dir.join("timer"), bucket)?);
    let settings = BrokerSettings::from(&*config);
    let broker = Broker::start(settings, Stores { log: log.clone(), meta, timers }, Arc::new(SystemClock)).await?;
    Ok((broker, log))
}

fn delayed(topic: &str, i: u64, due: i64, body: &Bytes) -> OutgoingMessage {
    OutgoingMessage {
        topic: topic.into(),
        message_id: format!("T{i:016X}"),
        delivery_timestamp_ms: Some(due),
        born_timestamp_ms: crate::clock::now_ms(),
        body: body.clone(),
        ..Default::default()
    }
}

/// Sends `n` delay messages in batches of 256 from 8 tasks; `due(i)` gives each one's time.
async fn send_all(
    broker: &Broker,
    topic: &str,
    n: u64,
    body: &Bytes,
    due: impl Fn(u64) -> i64 + Clone + Send + 'static,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tasks = 8u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (broker, topic, body, due) = (broker.clone(), topic.to_string(), body.clone(), due.clone());
        handles.push(tokio::spawn(async move {
            let mut i = t * 256;
            while i < n {
                let batch: Vec<OutgoingMessage> =
                    (i..(i + 256).min(n)).map(|j| delayed(&topic, j, due(j), &body)).collect();
                broker.send(batch).await?;
                i += tasks * 256;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn burst(args: &TimerBenchArgs) -> anyhow::Result<BurstResult> {
    let dir = args.data_dir.join("burst");
    let _ = std::fs::remove_dir_all(&dir);
    let (broker, log) = start(&dir).await?;
    let timers = tokio::spawn({
        let b = broker.clone();
        async move { b.run_timers().await }
    });
    let n = args.burst as u64;
    let body = Bytes::from(vec![b'x'; args.body_size]);
    // Due in one second, late enough that the sending is over by then.
    let base = crate::clock::now_ms() + 5_000 + (n as i64 / 20);
    let due = move |i: u64| base + (i * 1000 / n.max(1)) as i64;
    let send_seconds = send_all(&broker, "bench_burst", n, &body, due).await?;
    println!("burst: {n} messages sent in {send_seconds:.1}s, due in [{base}, {}) ms", base + 1000);
    // Consumers: receive and ack; record when each message arrived.
    let mut consumers = Vec::new();
    let received = Arc::new(std::sync::Mutex::new(Vec::with_capacity(args.burst)));
    for c in 0..4 {
        let (broker, received) = (broker.clone(), received.clone());
        consumers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while received.lock().map_or(0, |r| r.len()) < n as usize && Instant::now() < deadline {
                let req = ReceiveRequest {
                    client_id: format!("bench-{c}"),
                    group: "bench".into(),
                    topic: "bench_burst".into(),
                    filter: Filter::All,
                    batch_size: 32,
                    invisible_duration: Some(Duration::from_secs(60)),
                    auto_renew: false,
                    long_polling_timeout: Some(Duration::from_secs(5)),
                    deadline_remaining: None,
                    attempt_id: None,
                };
                let got = broker.receive(req).await?;
                let now = crate::clock::now_ms();
                for m in &got {
                    broker.ack(&format!("bench-{c}"), "bench", "bench_burst", &m.receipt_handle).await?;
                }
                let mut r = received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                r.extend(got.iter().map(|m| now - m.delivery_timestamp_ms.unwrap_or(now)));
            }
            anyhow::Ok(())
        }));
    }
    for c in consumers {
        c.await??;
    }
    // Deliverable: the store time of each reference record the timer wrote.
    let mut deliverable = Vec::with_capacity(args.burst);
    for q in 0..8 {
        let range = log.queue_range("bench_burst", q);
        let mut next = range.start;
        while next < range.end {
            let batch = log.read("bench_burst", q, next, 4096, 64 << 20)?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in batch {
                let id = m.properties.get(crate::storage::record::keys::UNIQ_KEY).unwrap_or_default();
                if let Ok(i) = u64::from_str_radix(id.trim_start_matches('T'), 16) {
                    deliverable.push(m.store_timestamp_ms - due(i));
                }
            }
            next = last + 1;
        }
    }
    broker.shutdown().await?;
    timers.await?;
    log.close().await?;
    let received = std::mem::take(&mut *received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BurstResult {
        messages: args.burst,
        send_seconds,
        timer_precision_ms: Config::default().timer.timer_precision.as_millis() as u64,
        deliverable: Lateness::of(deliverable),
        received: Lateness::of(received),
    })
}

async fn scheduled(args: &TimerBenchArgs) -> anyhow::Result<ScheduledResult> {
    let dir = args.data_dir.join("scheduled");
    let _ = std::fs::remove_dir_all(&dir);
    let (broker, log) = start(&dir).await?;
    let timers = tokio::spawn({
        let b = broker.clone();
        async move { b.run_timers().await }
    });
    let rss_before = rss();
    let n = args.scheduled;
    let horizon = args.horizon.as_millis() as u64;
    let start = crate::clock::now_ms() + 60_000;
    // Spread evenly over the horizon (a multiplicative hash scatters the order).
    let due = move |i: u64| start + (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % horizon) as i64;
    let body = Bytes::from(vec![b'x'; args.body_size]);
    let send_seconds = send_all(&broker, "bench_scheduled", n, &body, due).await?;
    // Let the timer task index everything and write it out at a checkpoint.
    let indexing = Instant::now();
    while broker.timer_stats().1 > 0 && indexing.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let index_seconds = indexing.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_after = rss();
    let (entries_in_memory, _) = broker.timer_stats();
    broker.shutdown().await?;
    timers.await?;
    log.close().await?;
    // Anonymous memory: the file-backed part of RSS is the kernel's page cache of the mapped
    // commit log, reclaimable and not the gateway's own.
    let growth = match (&rss_before, &rss_after) {
        (Some(b), Some(a)) if n > 0 => Some((a.rss_anon_kib.saturating_sub(b.rss_anon_kib) * 1024) as f64 / n as f64),
        _ => None,
    };
    let result = ScheduledResult {
        messages: n,
        horizon: humantime::format_duration(args.horizon).to_string(),
        send_seconds,
        index_seconds,
        rss_before,
        rss_after,
        anon_growth_bytes_per_message: growth,
        timer_index_bytes: dir_bytes(&dir.join("timer")),
        commit_log_bytes: dir_bytes(&dir.join("store")),
        entries_in_memory,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

fn markdown(r: &TimerReport) -> String {
    let b = &r.burst;
    let mut s = String::from("## Timer benchmark\n\n");
    s += &format!(
        "Burst: {} messages due within one second (sent in {:.1} s; timer precision {} ms)\n\n",
        b.messages, b.send_seconds, b.timer_precision_ms
    );
    s += "| lateness (ms) | count | early | p50 | p99 | max |\n|---|---|---|---|---|---|\n";
    for (name, l) in [("deliverable", &b.deliverable), ("received by a consumer", &b.received)] {
        s += &format!("| {name} | {} | {} | {} | {} | {} |\n", l.count, l.early, l.p50_ms, l.p99_ms, l.max_ms);
    }
    if let Some(c) = &r.scheduled {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let kib = |r: &Option<Rss>, f: fn(&Rss) -> u64| r.as_ref().map_or(0.0, |r| f(r) as f64 / 1024.0);
        s += &format!(
            "\nScheduled: {} messages due over {} (sent in {:.1} s, indexed {:.1} s later)\n\n| heap (RssAnon) before → after | growth per message | page cache mapped (RssFile) after | timer index on disk | commit log on disk | entries in memory |\n|---|---|---|---|---|---|\n| {:.0} → {:.0} MiB | {} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {} |\n",
            c.messages,
            c.horizon,
            c.send_seconds,
            c.index_seconds,
            kib(&c.rss_before, |r| r.rss_anon_kib),
            kib(&c.rss_after, |r| r.rss_anon_kib),
            c.anon_growth_bytes_per_message.map_or("n/a".into(), |g| format!("{g:.1} B")),
            kib(&c.rss_after, |r| r.rss_file_kib),
            mib(c.timer_index_bytes),
            mib(c.commit_log_bytes),
            c.entries_in_memory
        );
    }
    s
}

pub async fn run(args: TimerBenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let burst = burst(&args).await?;
    let scheduled = if args.scheduled > 0 { Some(scheduled(&args).await?) } else { None };
    let report = TimerReport { burst, scheduled };
    let md = markdown(&report);
    println!("\n{md}");
    let json = serde_json::to_string_pretty(&report)?;
    for name in ["timers-latest".to_string(), format!("timers-{}", crate::clock::now_ms() / 1000)] {
        let base = args.results_dir.join(name);
        std::fs::write(base.with_extension("json"), &json)?;
        std::fs::write(base.with_extension("md"), &md)?;
    }
    let _ = std::fs::remove_dir_all(&args.data_dir);
    Ok(())
}
