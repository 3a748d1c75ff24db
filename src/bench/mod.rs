//! End-to-end benchmarks (`rmq-gateway bench …`): load generators that drive a server over
//! its real wire protocol, a no-op gRPC server that measures the cost of gRPC alone, and the
//! `compare` runner behind `make bench`, which starts every system on loopback, runs the
//! same load against each, and writes JSON, a Markdown table and an SVG plot.
//!
//! Subcommands:
//! - `e2e`: RocketMQ v2 gRPC load (SendMessage + long-polling ReceiveMessage/AckMessage)
//!   against an address, or against a gateway it spawns itself.
//! - `nats`: the same load against NATS JetStream (file storage, publish acks), with the
//!   async-nats client.
//! - `noop-server`: a tonic `MessagingService` whose SendMessage does nothing (the ceiling).
//! - `compare`: everything above in one run, plus Apache RocketMQ 5 (started from its Maven
//!   Central jars by `integration-tests/reference/apache.sh`), with ratios and target checks.
//!
//! Other benchmarks (the storage, timer, S3, tiering, metadata and cluster benchmarks) hang off [`BenchCommand`] as
//! further variants.

pub mod apache;
pub mod client_threads;
pub mod cluster;
pub mod compare;
pub mod grpc;
pub mod load;
pub mod metadata;
pub mod metrics_plot;
#[cfg(feature = "nats-bench")]
pub mod nats;
pub mod noop;
pub mod procs;
pub mod report;
pub mod s3;
pub mod tiering;
pub mod timers;
pub mod tracing_cost;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

/// How NATS JetStream (2.9, file storage) keeps what it acknowledged.
pub const NATS_STORAGE: &str = "JetStream file store (acked before fsync; 2.9 syncs in the background)";

/// `rmq-gateway bench <command>`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// RocketMQ gRPC load against an endpoint (or a gateway this command spawns).
    E2e(grpc::E2eArgs),
    /// The same load against NATS JetStream (file storage, publish acks).
    #[cfg(feature = "nats-bench")]
    Nats(nats::NatsArgs),
    /// A MessagingService whose SendMessage only answers OK: the cost of gRPC alone.
    NoopServer(noop::NoopArgs),
    /// The whole comparison behind `make bench`: gateway SYNC/ASYNC, no-op ceiling, peers.
    Compare(compare::CompareArgs),
    /// The commit log alone: append throughput (SYNC/ASYNC) against the disk's raw
    /// write+fsync ceiling, and the cost of a large backlog.
    Storage(crate::storage::bench::StorageBenchArgs),
    /// Delay/timer messages: lateness of a burst due in one second, and the memory and disk
    /// 10 million scheduled messages take.
    Timers(timers::TimerBenchArgs),
    /// An S3-compatible server's raw PUT and ranged-GET throughput with the SDK client, and the
    /// same reads through the gateway's S3 object store (s3s-fs started here unless --endpoint).
    S3(s3::S3BenchArgs),
    /// The metadata store: progress transactions per second (one `save_progress` per flush)
    /// with several writers, on SQLite or PostgreSQL.
    Metadata(metadata::MetadataBenchArgs),
    /// 1, 2 and 3 gateways as one cluster (PostgreSQL and s3s-fs started here): send
    /// throughput and latency through a load balancer and following the routes, vs one node.
    Cluster(cluster::ClusterBenchArgs),
    /// Tiered storage: upload MB/s, cold-read MB/s and GETs per GB read back from an object
    /// store (a local directory).
    Tiering(tiering::TieringBenchArgs),
    /// Scrapes a gateway's /metrics while a load runs and plots the main series (SVG).
    MetricsPlot(metrics_plot::MetricsPlotArgs),
    /// The cost of tracing: the same load against a gateway with tracing off and with it on
    /// (100 % sampled, exporting to a local OTLP receiver that discards).
    Tracing(tracing_cost::TracingBenchArgs),
}

/// Load shape shared by every load generator.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct LoadArgs {
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Requests in flight per producer connection (closed loop).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Consumers (long-polling receivers; 0 = send only).
    #[arg(long, default_value_t = 0)]
    pub consumers: usize,
    /// Message body size in bytes (at least 16: a timestamp and a sequence number lead it).
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Messages per send request (NATS JetStream publishes one message per request).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Measured time (after the warm-up), e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Warm-up before measuring (not counted).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// Stop after this many measured messages instead of after `--duration` (the duration
    /// still bounds the run).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Target send rate in messages/s across all producers (open-loop pacing); unlimited when
    /// absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long consumers may take to drain what was sent in the window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Print no progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.producers >= 1, "--producers must be at least 1");
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(self.batch >= 1, "--batch must be at least 1");
        anyhow::ensure!(self.message_size >= load::HEADER_LEN, "--message-size must be at least {}", load::HEADER_LEN);
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        if let Some(r) = self.rate {
            anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
        }
        Ok(())
    }
}

/// Where results go.
#[derive(Debug, Clone, Args)]
pub struct OutArgs {
    /// Directory for results (JSON, Markdown, SVG).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

/// Runs a bench subcommand on its own runtime.
pub fn run(command: BenchCommand) -> ExitCode {
    // A subscriber, as `serve` has: without one, every span that h2, hyper and tonic open is
    // also offered to the `log` crate (tracing's `log` feature): 3.5 % of the load generator's
    // CPU in a profile (2026-12-04; the no-op server's cost per message did not change).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rmq-gateway bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            BenchCommand::E2e(args) => grpc::main(args).await,
            #[cfg(feature = "nats-bench")]
            BenchCommand::Nats(args) => nats::main(args).await,
            BenchCommand::NoopServer(args) => noop::main(args).await,
            BenchCommand::Compare(args) => compare::main(args).await,
            BenchCommand::Storage(args) => crate::storage::bench::run(args).await,
            BenchCommand::Timers(args) => timers::run(args).await,
            BenchCommand::S3(args) => s3::run(args).await,
            BenchCommand::Metadata(args) => metadata::run(args).await,
            BenchCommand::Tiering(args) => tiering::run(args).await,
            BenchCommand::Cluster(args) => cluster::run(args).await,
            BenchCommand::MetricsPlot(args) => metrics_plot::run(args).await,
            BenchCommand::Tracing(args) => tracing_cost::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmq-gateway bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
