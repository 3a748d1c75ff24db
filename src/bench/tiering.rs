//! The tiering benchmark (`rmq-gateway bench tiering`, part of `make bench`): what offload and
//! cold reads cost, on the real commit log, the tiering engine and an object store (a local
//! directory: the figures are the engine's own, not a network's). Timings are reported, never
//! asserted.
//!
//! Steps: append `--megabytes` of `--message-size` messages over `--queues` queues to a log
//! with `--segment-size` segments; upload every sealed segment (upload MB/s); drop the local
//! copies (local retention); read every queue back from offset 0 as a consumer group does
//! (queues in turn, 32 messages at a time; a miss awaits `fetch_remote`, then reads again):
//! cold-read MB/s, GETs per GB read and bytes fetched per byte read. The active segment
//! stays local (its messages are read locally).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;

use crate::metadata::sqlite::SqliteMetadataStore;
use crate::storage::object::dir::DirStore;
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
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

pub async fn run(args: TieringBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.queues > 0 && args.message_size > 0, "--queues and --message-size must be above 0");
    let _ = std::fs::remove_dir_all(&args.data_dir);
    let mut config = StorageConfig::new(args.data_dir.join("store"));
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

    let store = Arc::new(DirStore::open(args.data_dir.join("objects"))?);
    let meta =
        Arc::new(SqliteMetadataStore::open(&format!("sqlite://{}", args.data_dir.join("meta.db").display())).await?);
    let settings = TieringSettings {
        log_id: "bench".into(),
        upload_interval: Duration::from_secs(3600),
        remote_retention_interval: Duration::from_secs(3600),
        read_ahead_bytes: args.read_ahead_bytes,
        read_cache_bytes: args.read_cache_bytes,
        ..TieringSettings::default()
    };
    let tiered = TieredLog::open(log.clone(), store, meta, settings).await?;
    let started = Instant::now();
    tiered.upload_now().await;
    let upload = started.elapsed();
    let stats = tiered.stats();
    log.checkpoint()?;
    log.run_retention();

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
    let report = TieringBenchReport {
        messages,
        log_bytes: stats.uploaded_bytes,
        segments_uploaded: stats.uploaded_segments,
        upload_secs: upload.as_secs_f64(),
        upload_mb_per_s: mb_per_s(stats.uploaded_bytes, upload),
        cold_read_secs: cold.as_secs_f64(),
        cold_read_mb_per_s: mb_per_s(read_bytes, cold),
        cold_gets: after.cold_gets,
        gets_per_gb: after.cold_gets as f64 / (read_bytes as f64 / (1u64 << 30) as f64).max(1e-9),
        fetched_bytes_per_byte_read: after.cold_get_bytes as f64 / read_bytes.max(1) as f64,
        store: after.object_store,
    };
    tiered.close().await?;
    let md = format!(
        "| messages | uploaded | upload MB/s | cold read MB/s | GETs per GB | fetched/read |\n|---|---|---|---|---|---|\n\
         | {} | {} segments, {} MiB | {:.0} | {:.0} | {:.0} | {:.2} |\n",
        report.messages,
        report.segments_uploaded,
        report.log_bytes >> 20,
        report.upload_mb_per_s,
        report.cold_read_mb_per_s,
        report.gets_per_gb,
        report.fetched_bytes_per_byte_read
    );
    eprintln!("{md}");
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let base = args.results_dir.join("tiering");
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(base.with_extension("md"), md)?;
    let _ = std::fs::remove_dir_all(&args.data_dir);
    Ok(())
}
