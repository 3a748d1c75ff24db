//! `rmq-gateway bench tracing`: what tracing costs. The same load runs against a gateway with
//! `tracing.enabled: false` and then one with tracing on, 100 % sampled, exporting over
//! OTLP/gRPC to a receiver in this process that counts and discards the spans. Prints a table
//! and the on/off ratios (throughput, send p99, end-to-end p99), and writes
//! `bench-results/tracing.{json,md,svg}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

use super::grpc::{self, Flush, Target};
use super::report::{Ratio, Report, RunResult};
use super::{LoadArgs, OutArgs};

/// `rmq-gateway bench tracing`.
#[derive(Debug, Args)]
pub struct TracingBenchArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Flush mode of the gateways.
    #[arg(long, value_enum, default_value = "sync")]
    pub flush: Flush,
    /// Gateway binary to start (default: this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Directory for the gateways' data (removed afterwards).
    #[arg(long, default_value = "bench-results/.work")]
    pub work_dir: PathBuf,
    #[command(flatten)]
    pub out: OutArgs,
}

/// Counts what it receives, keeps nothing.
#[derive(Clone, Default)]
struct Discard {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Discard {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_receiver(discard: Discard) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(discard))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
        if let Err(e) = served {
            eprintln!("OTLP receiver stopped: {e}");
        }
    });
    Ok(addr)
}

/// Runs the load once against a fresh gateway started with `env`.
async fn one(
    args: &TracingBenchArgs,
    bin: &std::path::Path,
    system: &str,
    env: &[(&str, String)],
) -> anyhow::Result<RunResult> {
    let mut g = grpc::spawn_gateway_with(bin, args.flush, &args.work_dir, system, env)?;
    let target = Target { addr: g.grpc, topic: grpc::default_topic(system), group: "bench-group".into(), full: true };
    grpc::prepare(&target, Duration::from_secs(30)).await?;
    eprintln!("running {system} on {}", g.grpc);
    let outcome = grpc::run(system, &args.load, &target, &g.server.watch()).await;
    let storage = grpc::gateway_storage(args.flush, &g.data_dir);
    g.server.check_alive()?;
    g.server.stop(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&g.data_dir);
    Ok(RunResult::new(system, "max", &storage, &args.load, &outcome?))
}

/// `rmq-gateway bench tracing`.
pub async fn run(args: TracingBenchArgs) -> anyhow::Result<()> {
    args.load.validate()?;
    let bin = match &args.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    std::fs::create_dir_all(&args.work_dir)?;
    let discard = Discard::default();
    let receiver = start_receiver(discard.clone()).await?;
    let mut report = Report::new(&args.work_dir);
    let off = one(&args, &bin, "gateway-tracing-off", &[("RMQ_GATEWAY_TRACING__ENABLED", "false".into())]).await?;
    let on_env = [
        ("RMQ_GATEWAY_TRACING__ENABLED", "true".to_string()),
        ("RMQ_GATEWAY_TRACING__SAMPLE_RATIO", "1.0".to_string()),
        ("RMQ_GATEWAY_TRACING__ENDPOINT", format!("http://{receiver}")),
        ("RMQ_GATEWAY_TRACING__PROTOCOL", "grpc".to_string()),
    ];
    let on = one(&args, &bin, "gateway-tracing-on", &on_env).await?;
    let spans = discard.spans.load(Ordering::Relaxed);
    let ratio = |name: &str, a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(Ratio { name: name.to_string(), value: a / b }),
        _ => None,
    };
    let p99 = |r: &RunResult| r.send_latency.as_ref().map(|l| l.p99_ms);
    let e2e = |r: &RunResult| r.e2e_latency.as_ref().map(|l| l.p99_ms);
    report.ratios.extend(
        [
            ratio("throughput on / off", Some(on.msgs_per_s), Some(off.msgs_per_s)),
            ratio("send p99 on / off", p99(&on), p99(&off)),
            ratio("end-to-end p99 on / off", e2e(&on), e2e(&off)),
            ratio("server CPU µs/msg on / off", on.server_cpu_us_per_msg, off.server_cpu_us_per_msg),
        ]
        .into_iter()
        .flatten(),
    );
    report.notes.push(format!(
        "tracing on: 100 % sampled, OTLP/gRPC to a receiver in the bench process (it counts and discards): \
         {spans} spans received for {} messages measured (warm-up included in the spans)",
        on.messages
    ));
    report.notes.push(
        "each message makes `send` + `append` spans, and with consumers `receive` + `ack`; the receiver's CPU \
         is the bench client's"
            .to_string(),
    );
    report.results.push(off);
    report.results.push(on);
    println!("{}", report.table());
    for r in &report.ratios {
        println!("{}: {:.3}", r.name, r.value);
    }
    for p in report.write(&args.out.out, "tracing")? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
