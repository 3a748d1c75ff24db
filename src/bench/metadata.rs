//! The metadata benchmark (`rmq-gateway bench metadata`, part of `make bench`): how many
//! progress transactions per second a metadata store takes, the way the broker writes them
//! (`save_progress`: one transaction per flush with every consumer state that changed), with
//! several writers at once (several gateways sharing one PostgreSQL), and what the row count is
//! afterwards (it grows with queues, never with messages). Runs against a store URL
//! (`sqlite://…` or `postgres://…`); the figures are the store's own, no gateway in between.
//! Timings are reported, never asserted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::Latency;
use crate::metadata::{self, MetadataStore, ProgressRecord, StoreOptions, redact_url};

/// Arguments of `rmq-gateway bench metadata`.
#[derive(Debug, Clone, clap::Args)]
pub struct MetadataBenchArgs {
    /// The store: `postgres://…`, `postgresql://…` or `sqlite://PATH` (created if missing).
    #[arg(long)]
    pub url: String,
    /// Measured time per case.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent writers (each one a gateway's progress flusher, on its own consumer groups).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Progress records per transaction, one case each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub batches: Vec<usize>,
    /// Distinct (group, topic, queue) rows each writer cycles through.
    #[arg(long, default_value_t = 10_000)]
    pub queues: usize,
    /// Pool size (`metadata.maxConnections`).
    #[arg(long, default_value_t = 8)]
    pub max_connections: u32,
    /// Directory for the JSON and Markdown results.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Name of the results files (`<name>-latest.json`/`.md`).
    #[arg(long, default_value = "metadata")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub batch: usize,
    pub writers: usize,
    pub transactions: u64,
    pub transactions_per_sec: f64,
    pub rows_per_sec: f64,
    pub failures: u64,
    /// A failed transaction's error and how long it took, the first of the first writer that had
    /// one (failures are not in `latency`).
    pub first_failure: Option<Failure>,
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub error: String,
    pub after_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetadataReport {
    /// The store URL without its password.
    pub store: String,
    pub duration_secs: f64,
    pub queues_per_writer: usize,
    pub cases: Vec<CaseResult>,
    /// Progress rows stored after every case (writers × queues at most).
    pub progress_rows: usize,
}

fn record(writer: usize, i: usize, floor: u64) -> ProgressRecord {
    ProgressRecord {
        group: format!("bench-w{writer}-g{}", i % 100),
        topic: format!("bench-topic-{}", i / 100 % 100),
        queue_id: (i / 10_000) as u32,
        ack_floor: floor,
        acked_above: vec![0u8; 24],
    }
}

async fn case(store: Arc<dyn MetadataStore>, args: &MetadataBenchArgs, batch: usize) -> anyhow::Result<CaseResult> {
    let deadline = Instant::now() + args.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let store = store.clone();
        let queues = args.queues.max(1);
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let (mut done, mut failures, mut next, mut floor) = (0u64, 0u64, 0usize, 0u64);
            let mut journal = 0u64;
            let mut first_failure = None;
            while Instant::now() < deadline {
                floor += 1;
                let records: Vec<ProgressRecord> = (0..batch).map(|k| record(w, (next + k) % queues, floor)).collect();
                next = (next + batch) % queues;
                journal += batch as u64;
                let t = Instant::now();
                match store.save_progress(&records, journal).await {
                    Ok(()) => {
                        done += 1;
                        h.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        failures += 1;
                        let after_ms = t.elapsed().as_secs_f64() * 1e3;
                        first_failure.get_or_insert(Failure { error: e.to_string(), after_ms });
                    }
                }
            }
            anyhow::Ok((done, failures, first_failure, h))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut done, mut failures, mut first_failure) = (0u64, 0u64, None);
    for t in tasks {
        let (d, f, first, h) = t.await.context("writer task panicked")??;
        done += d;
        failures += f;
        first_failure = first_failure.or(first);
        total.add(&h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(CaseResult {
        batch,
        writers: args.writers,
        transactions: done,
        transactions_per_sec: done as f64 / secs,
        rows_per_sec: (done as f64 * batch as f64) / secs,
        failures,
        first_failure,
        latency: Latency::of(&total),
    })
}

fn markdown(r: &MetadataReport) -> String {
    let mut s = format!(
        "### Metadata store: progress transactions ({}, {:.0} s per case)\n\n\
         | records per transaction | writers | transactions/s | rows/s | p50 ms | p99 ms | max ms | failures |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.store, r.duration_secs
    );
    for c in &r.cases {
        let (p50, p99, max) = c.latency.as_ref().map(|l| (l.p50_ms, l.p99_ms, l.max_ms)).unwrap_or_default();
        s += &format!(
            "| {} | {} | {:.0} | {:.0} | {p50:.2} | {p99:.2} | {max:.2} | {} |\n",
            c.batch, c.writers, c.transactions_per_sec, c.rows_per_sec, c.failures
        );
    }
    for c in &r.cases {
        if let Some(f) = &c.first_failure {
            s += &format!(
                "\nWith {} records per transaction, a failed one (after {:.0} ms): {}\n",
                c.batch, f.after_ms, f.error
            );
        }
    }
    s += &format!(
        "\nProgress rows afterwards: {} (at most writers × queues: the count grows with queues, never with messages).\n",
        r.progress_rows
    );
    s
}

pub async fn run(args: MetadataBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.writers >= 1, "--writers must be at least 1");
    anyhow::ensure!(!args.batches.is_empty() && args.batches.iter().all(|b| *b >= 1), "--batches must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let shown = redact_url(&args.url);
    let options = StoreOptions { max_connections: args.max_connections, ..StoreOptions::default() };
    let store = metadata::open(&args.url, &options).await.with_context(|| format!("opening {shown}"))?;
    let mut cases = Vec::new();
    for &batch in &args.batches {
        let c = case(store.clone(), &args, batch).await?;
        eprintln!(
            "metadata bench {shown}: batch {batch}, {} writers: {:.0} transactions/s, {:.0} rows/s, {} failures{}",
            c.writers,
            c.transactions_per_sec,
            c.rows_per_sec,
            c.failures,
            c.first_failure
                .as_ref()
                .map(|f| format!(" (the first after {:.0} ms: {})", f.after_ms, f.error))
                .unwrap_or_default()
        );
        cases.push(c);
    }
    let progress_rows = store.load_progress().await?.0.len();
    store.close().await;
    let report = MetadataReport {
        store: shown,
        duration_secs: args.duration.as_secs_f64(),
        queues_per_writer: args.queues,
        cases,
        progress_rows,
    };
    let md = markdown(&report);
    println!("\n{md}");
    let json = serde_json::to_string_pretty(&report)?;
    let base = args.results_dir.join(format!("{}-latest", args.name));
    std::fs::write(base.with_extension("json"), &json)?;
    std::fs::write(base.with_extension("md"), &md)?;
    Ok(())
}
