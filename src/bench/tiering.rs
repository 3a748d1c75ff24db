//! The tiering benchmark (`rmq-gateway bench tiering`, part of `make bench`): what offload and
//! cold reads cost, on the real commit log, the tiering engine and an object store: by default
//! an s3s-fs started by the bench (objects on disk, loopback; `--endpoint` for another S3
//! server, `--store dir` for a local directory). Timings are reported, never asserted.
//!
//! Cold reads: append `--megabytes` of `--message-size` messages over `--queues` queues to a
//! log with `--segment-size` segments; upload every sealed segment (upload MB/s); drop the
//! local copies; read every queue back from offset 0 as a consumer group does (queues in turn,
//! 32 messages at a time; a miss awaits `fetch_remote`, then reads again): cold-read MB/s,
//! GETs per GB read, bytes fetched per byte read. On S3 the same run then measures the server's
//! raw ranged-GET throughput over the uploaded segment objects ([`raw_get_throughput`], ranges of
//! `--read-ahead-bytes`, `--raw-get-concurrency` in flight: 1 by default, as the consumer
//! loop has one data GET in flight) and reports cold-read MB/s over it (goal ≥ 80 %).
//!
//! Backlog (`--backlog-messages`, default 100 million; 0 skips): a tiered log (small
//! segments, local `fileReservedTime` 0, uploader every second) filled with 100-byte messages
//! in batched appends; then Sync single-message appends are measured (the storage bench's
//! measurement) on it while its uploader works through the backlog, against a fresh empty
//! tiered log, alternating rounds: throughput ratio and p99 of both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use super::s3::{LocalServer, Throughput, raw_get_throughput};
use crate::config::ObjectStoreConfig;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::storage::bench::{CaseResult, Measurement, measure_appends_with, settle};
use crate::storage::object::ObjectStore;
use crate::storage::object::dir::DirStore;
use crate::storage::object::s3::{S3Options, S3Store};
use crate::storage::tiered::{TieredLog, TieringSettings};
use crate::storage::{AppendMessage, CommitLog, FlushMode, MessageLog, Properties, StorageConfig, StorageError};

/// Arguments of `rmq-gateway bench tiering`.
#[derive(Debug, Clone, clap::Args)]
pub struct TieringBenchArgs {
    /// Directory for benchmark data (removed afterwards).
    #[arg(long, default_value = "./data/bench-tiering")]
    pub data_dir: PathBuf,
    /// Directory for the JSON and Markdown results.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Data appended (MiB).
    #[arg(long, default_value_t = 512)]
    pub megabytes: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub message_size: usize,
    /// Queues the messages are spread over.
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
    /// Commit-log segment size (bytes).
    #[arg(long, default_value_t = 64 << 20)]
    pub segment_size: u64,
    /// Cold-read block (bytes per data GET).
    #[arg(long, default_value_t = 4 << 20)]
    pub read_ahead_bytes: usize,
    /// Cold-read cache bound (bytes).
    #[arg(long, default_value_t = 64 << 20)]
    pub read_cache_bytes: usize,
    /// Object store: `s3` (an S3 server: `--endpoint`, or an s3s-fs started here) or `dir`.
    #[arg(long, default_value = "s3", value_parser = ["s3", "dir"])]
    pub store: String,
    /// S3 endpoint URL. Empty: start s3s-fs on loopback with `--s3-script` (installed by
    /// `s3.sh install s3s-fs`), writing under `--data-dir`.
    #[arg(long, default_value = "")]
    pub endpoint: String,
    /// Bucket (must exist on an endpoint given with --endpoint).
    #[arg(long, default_value = "test-bucket")]
    pub bucket: String,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Static credentials; empty: the AWS credential chain (with --endpoint).
    #[arg(long, env = "RMQ_BENCH_S3_ACCESS_KEY", default_value = "")]
    pub access_key: String,
    #[arg(long, env = "RMQ_BENCH_S3_SECRET_KEY", default_value = "", hide_env_values = true)]
    pub secret_key: String,
    /// The S3 service script (started from the repository root).
    #[arg(long, default_value = "integration-tests/services/s3.sh")]
    pub s3_script: PathBuf,
    /// Raw ranged GETs in flight when measuring the server's own throughput.
    #[arg(long, default_value_t = 1)]
    pub raw_get_concurrency: usize,
    /// Messages (100-byte bodies) in the backlog case; 0 skips it.
    #[arg(long, default_value_t = 100_000_000)]
    pub backlog_messages: u64,
    /// Segment size of the backlog case's logs.
    #[arg(long, default_value_t = 64 << 20)]
    pub backlog_segment_size: u64,
    /// Measured time per backlog-case run (after a warm-up of a tenth of it, at most 1 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Empty / backlog alternations.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Concurrent appender tasks of the backlog case.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TieringBenchReport {
    pub messages: u64,
    pub log_bytes: u64,
    pub segments_uploaded: u64,
    pub upload_secs: f64,
    pub upload_mb_per_s: f64,
    pub cold_read_secs: f64,
    pub cold_read_mb_per_s: f64,
    pub cold_gets: u64,
    pub gets_per_gb: f64,
    pub fetched_bytes_per_byte_read: f64,
    pub store: String,
    /// The server's ranged-GET throughput in the same run (S3 only).
    pub raw_get: Option<Throughput>,
    pub raw_get_concurrency: usize,
    /// Cold-read MB/s over raw-GET MB/s (both in 10^6 bytes/s).
    pub cold_over_raw_get: Option<f64>,
    pub backlog: Option<TieredBacklogResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TieredBacklogResult {
    pub backlog_messages: u64,
    pub fill_seconds: f64,
    pub log_bytes: u64,
    pub segment_size: u64,
    /// Sealed segments waiting for upload when the measurements started and when they ended.
    pub waiting_segments_at_start: u64,
    pub waiting_segments_at_end: u64,
    /// Segments uploaded while the backlog log was measured.
    pub uploaded_during_measurement: u64,
    pub empty: CaseResult,
    pub with_backlog: CaseResult,
    /// `with_backlog` msgs/s over `empty` msgs/s (goal ≥ 0.8).
    pub throughput_ratio: f64,
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// The object store of a run and, on S3, what the raw-GET measurement needs.
struct Store {
    store: Arc<dyn ObjectStore>,
    s3: Option<Arc<S3Store>>,
}

async fn open_store(args: &TieringBenchArgs, local: Option<&LocalServer>, prefix: &str) -> anyhow::Result<Store> {
    if args.store == "dir" {
        let store: Arc<dyn ObjectStore> = Arc::new(DirStore::open(args.data_dir.join("objects").join(prefix))?);
        return Ok(Store { store, s3: None });
    }
    let (endpoint, bucket, access_key, secret_key) = match local {
        Some(l) => (l.endpoint.clone(), l.bucket.clone(), l.key.clone(), l.key.clone()),
        None => (args.endpoint.clone(), args.bucket.clone(), args.access_key.clone(), args.secret_key.clone()),
    };
    let cfg = ObjectStoreConfig {
        kind: "s3".into(),
        prefix: format!("rmq-bench-tiering/{}/{prefix}/", crate::clock::now_ms()),
        bucket,
        region: args.region.clone(),
        endpoint,
        path_style: true,
        access_key,
        secret_key,
        ..ObjectStoreConfig::default()
    };
    let s3 = Arc::new(S3Store::connect_with(&cfg, S3Options::default()).await?);
    Ok(Store { store: s3.clone(), s3: Some(s3) })
}

async fn open_meta(path: &std::path::Path) -> anyhow::Result<Arc<SqliteMetadataStore>> {
    Ok(Arc::new(SqliteMetadataStore::open(&format!("sqlite://{}", path.display())).await?))
}

pub async fn run(args: TieringBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.queues > 0 && args.message_size > 0, "--queues and --message-size must be above 0");
    anyhow::ensure!(args.raw_get_concurrency > 0 && args.concurrency > 0, "concurrencies must be above 0");
    let _ = std::fs::remove_dir_all(&args.data_dir);
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let local = if args.store == "s3" && args.endpoint.is_empty() {
        Some(LocalServer::start(&args.s3_script, &args.data_dir.join("s3s-fs"))?)
    } else {
        None
    };
    let result = run_with(&args, local.as_ref()).await;
    drop(local);
    let _ = std::fs::remove_dir_all(&args.data_dir);
    result
}

async fn run_with(args: &TieringBenchArgs, local: Option<&LocalServer>) -> anyhow::Result<()> {
    let mut report = cold_read_case(args, local).await?;
    if args.backlog_messages > 0 {
        report.backlog = Some(backlog_case(args, local).await?);
    }
    let md = markdown(&report);
    println!("\n{md}");
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let base = args.results_dir.join("tiering");
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(base.with_extension("md"), md)?;
    Ok(())
}

async fn cold_read_case(args: &TieringBenchArgs, local: Option<&LocalServer>) -> anyhow::Result<TieringBenchReport> {
    let dir = args.data_dir.join("cold");
    let mut config = StorageConfig::new(dir.join("store"));
    config.segment_size = args.segment_size;
    config.flush = FlushMode::Async { interval: Duration::from_millis(200) };
    config.file_reserved_time = Duration::ZERO;
    config.retention_interval = Duration::from_secs(3600);
    let log = tokio::task::spawn_blocking(move || CommitLog::open(config)).await??;
    log.set_retention_limit(Some(0));

    let total = args.megabytes << 20;
    let per_message = args.message_size as u64;
    let messages = total / per_message;
    let body = Bytes::from(vec![0x5a; args.message_size]);
    let topic: Arc<str> = Arc::from("bench_tiering");
    let mut n = 0u64;
    while n < messages {
        let batch: Vec<AppendMessage> = (0..256.min(messages - n))
            .map(|i| AppendMessage {
                topic: topic.clone(),
                queue_id: ((n + i) % u64::from(args.queues)) as u32,
                born_timestamp_ms: 0,
                flags: 0,
                tag_hash: 0,
                properties: Properties::default(),
                body: body.clone(),
            })
            .collect();
        n += batch.len() as u64;
        log.append(batch).await?;
    }
    // The active (last) segment stays local: its messages are read locally at the end.
    log.checkpoint()?;

    let store = open_store(args, local, "cold").await?;
    let meta = open_meta(&dir.join("meta.db")).await?;
    let settings = TieringSettings {
        log_id: "bench".into(),
        upload_interval: Duration::from_secs(3600),
        remote_retention_interval: Duration::from_secs(3600),
        read_ahead_bytes: args.read_ahead_bytes,
        read_cache_bytes: args.read_cache_bytes,
        ..TieringSettings::default()
    };
    let tiered = TieredLog::open(log.clone(), store.store.clone(), meta, settings).await?;
    eprintln!("bench tiering: uploading {} MiB on {}", args.megabytes, store.store.describe());
    let started = Instant::now();
    tiered.upload_now().await;
    let upload = started.elapsed();
    let stats = tiered.stats();
    log.checkpoint()?;
    log.run_retention();

    eprintln!("bench tiering: cold read");
    let started = Instant::now();
    let mut read_bytes = 0u64;
    let mut read_messages = 0u64;
    // Like a consumer group: every queue in turn, a receive batch (32) at a time.
    let mut next = vec![0u64; args.queues as usize];
    let mut done = vec![false; args.queues as usize];
    while done.iter().any(|d| !d) {
        for q in 0..args.queues {
            let i = q as usize;
            if done[i] {
                continue;
            }
            loop {
                match tiered.read(&topic, q, next[i], 32, 8 << 20) {
                    Ok(batch) if batch.is_empty() => done[i] = true,
                    Ok(batch) => {
                        next[i] = batch.last().map_or(next[i], |m| m.queue_offset + 1);
                        read_messages += batch.len() as u64;
                        read_bytes += batch.iter().map(|m| m.body.len() as u64).sum::<u64>();
                    }
                    Err(StorageError::RemoteNotCached { offset, .. }) => {
                        tiered.fetch_remote(&topic, q, offset, 8 << 20).await?;
                        continue;
                    }
                    Err(e) => return Err(e).context("cold read"),
                }
                break;
            }
        }
    }
    let cold = started.elapsed();
    let after = tiered.stats();
    anyhow::ensure!(read_messages == messages, "read {read_messages} of {messages} messages back");

    // The server's own ranged-GET throughput over the same objects, same range size.
    let raw_get = match &store.s3 {
        Some(s3) => {
            let mut keys = Vec::new();
            for o in s3.list("").await? {
                if o.key.ends_with(".seg") {
                    keys.push((s3.full_key(&o.key)?, o.size));
                }
            }
            eprintln!(
                "bench tiering: raw ranged GET of {} objects, {} in flight",
                keys.len(),
                args.raw_get_concurrency
            );
            Some(
                raw_get_throughput(
                    s3.client(),
                    s3.bucket(),
                    &keys,
                    args.read_ahead_bytes as u64,
                    args.raw_get_concurrency,
                )
                .await?,
            )
        }
        None => None,
    };
    tiered.close().await?;
    drop(tiered);
    let _ = std::fs::remove_dir_all(&dir);
    let cold_read_mb_per_s = mb_per_s(read_bytes, cold);
    Ok(TieringBenchReport {
        messages,
        log_bytes: stats.uploaded_bytes,
        segments_uploaded: stats.uploaded_segments,
        upload_secs: upload.as_secs_f64(),
        upload_mb_per_s: mb_per_s(stats.uploaded_bytes, upload),
        cold_read_secs: cold.as_secs_f64(),
        cold_read_mb_per_s,
        cold_gets: after.cold_gets,
        gets_per_gb: after.cold_gets as f64 / (read_bytes as f64 / 1e9).max(1e-9),
        fetched_bytes_per_byte_read: after.cold_get_bytes as f64 / read_bytes.max(1) as f64,
        store: after.object_store,
        cold_over_raw_get: raw_get.as_ref().map(|r| cold_read_mb_per_s / r.mb_per_s.max(1e-9)),
        raw_get,
        raw_get_concurrency: args.raw_get_concurrency,
        backlog: None,
    })
}

/// A tiered log for the backlog case: Sync flush, small segments, local copies dropped as soon
/// as they are uploaded, the uploader looking every second.
async fn open_tiered(
    args: &TieringBenchArgs,
    local: Option<&LocalServer>,
    name: &str,
) -> anyhow::Result<(Arc<TieredLog>, Arc<CommitLog>)> {
    let dir = args.data_dir.join(name);
    let mut config = StorageConfig::new(dir.join("store"));
    config.segment_size = args.backlog_segment_size;
    config.flush = FlushMode::Sync;
    config.file_reserved_time = Duration::ZERO;
    config.retention_interval = Duration::from_secs(1);
    let log = tokio::task::spawn_blocking(move || CommitLog::open(config)).await??;
    let store = open_store(args, local, name).await?;
    let meta = open_meta(&dir.join("meta.db")).await?;
    let settings = TieringSettings {
        log_id: name.into(),
        upload_interval: Duration::from_secs(1),
        remote_retention_interval: Duration::from_secs(3600),
        ..TieringSettings::default()
    };
    let tiered = TieredLog::open(log.clone(), store.store, meta, settings).await?;
    Ok((tiered, log))
}

async fn backlog_case(args: &TieringBenchArgs, local: Option<&LocalServer>) -> anyhow::Result<TieredBacklogResult> {
    let total = args.backlog_messages;
    let (tiered, log) = open_tiered(args, local, "backlog").await?;
    // Fill with multi-message appends (a producer's batch send), as the storage bench does;
    // the uploader runs meanwhile.
    let fill_seconds = crate::storage::bench::fill_backlog(&log, total, args.queues).await?;
    let log_bytes = log.stats().published_position;
    let at_start = tiered.stats();
    println!(
        "bench tiering backlog: filled {total} messages ({:.2} GB of log) in {fill_seconds:.1} s; \
         {} segments uploaded, {} waiting",
        log_bytes as f64 / 1e9,
        at_start.uploaded_segments,
        at_start.waiting_segments
    );

    let mut empty = Measurement::default();
    let mut with_backlog = Measurement::default();
    let mut uploaded_during = 0;
    for round in 0..args.rounds.max(1) {
        // Alternate which goes first, so drift hits both alike.
        for backlog_first in [round % 2 == 1, round % 2 == 0] {
            if backlog_first {
                let before = tiered.stats().uploaded_segments;
                with_backlog.add(measure_appends_with(&log, args.concurrency, args.queues, 100, args.duration).await?);
                uploaded_during += tiered.stats().uploaded_segments - before;
            } else {
                let name = format!("empty-{round}");
                let (t, l) = open_tiered(args, local, &name).await?;
                empty.add(measure_appends_with(&l, args.concurrency, args.queues, 100, args.duration).await?);
                t.close().await?;
                drop((t, l));
                let _ = std::fs::remove_dir_all(args.data_dir.join(&name));
            }
            settle().await;
        }
    }
    let at_end = tiered.stats();
    tiered.close().await?;
    drop((tiered, log));
    let _ = std::fs::remove_dir_all(args.data_dir.join("backlog"));
    let empty = empty.result("sync", 100, args.concurrency);
    let with_backlog = with_backlog.result("sync", 100, args.concurrency);
    Ok(TieredBacklogResult {
        backlog_messages: total,
        fill_seconds,
        log_bytes,
        segment_size: args.backlog_segment_size,
        waiting_segments_at_start: at_start.waiting_segments,
        waiting_segments_at_end: at_end.waiting_segments,
        uploaded_during_measurement: uploaded_during,
        throughput_ratio: with_backlog.msgs_per_sec / empty.msgs_per_sec.max(1e-9),
        empty,
        with_backlog,
    })
}

fn markdown(r: &TieringBenchReport) -> String {
    let mut s = format!("## Tiering benchmark\n\nObject store: {}\n\n", r.store);
    s += "| messages | uploaded | upload MB/s | cold read MB/s | raw GET MB/s | cold / raw | GETs per GB | fetched/read |\n";
    s += "|---|---|---|---|---|---|---|---|\n";
    s += &format!(
        "| {} | {} segments, {:.0} MB | {:.0} | {:.0} | {} | {} | {:.0} | {:.2} |\n",
        r.messages,
        r.segments_uploaded,
        r.log_bytes as f64 / 1e6,
        r.upload_mb_per_s,
        r.cold_read_mb_per_s,
        r.raw_get
            .as_ref()
            .map_or("-".to_string(), |g| format!("{:.0} ({} in flight)", g.mb_per_s, r.raw_get_concurrency)),
        r.cold_over_raw_get.map_or("-".to_string(), |x| format!("{:.0} % (goal ≥ 80 %)", x * 100.0)),
        r.gets_per_gb,
        r.fetched_bytes_per_byte_read
    );
    if let Some(b) = &r.backlog {
        s += &format!(
            "\nSync 100-byte appends ({} appenders) with tiering on: a backlog of {} messages ({:.1} GB, \
             {} MiB segments; {} segments waiting for upload at the start, {} at the end, {} uploaded while \
             measured) vs an empty log\n\n",
            b.empty.concurrency,
            b.backlog_messages,
            b.log_bytes as f64 / 1e9,
            b.segment_size >> 20,
            b.waiting_segments_at_start,
            b.waiting_segments_at_end,
            b.uploaded_during_measurement
        );
        s += "| log | msgs/s | p50 ms | p99 ms |\n|---|---|---|---|\n";
        for (name, c) in [("empty", &b.empty), ("backlog", &b.with_backlog)] {
            s += &format!("| {name} | {:.0} | {:.2} | {:.2} |\n", c.msgs_per_sec, c.latency_p50_ms, c.latency_p99_ms);
        }
        s += &format!("\nbacklog / empty: {:.0} % of the throughput (goal ≥ 80 %)\n", b.throughput_ratio * 100.0);
    }
    s
}
