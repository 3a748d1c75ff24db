//! The `rmq-gateway` binary: command-line parsing and logging set-up; everything else is in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use rmq_gateway::config::Config;
use rmq_gateway::server;

/// mimalloc instead of glibc malloc: per-thread free lists without the arena locking and
/// consolidation glibc does on every message (see docs/benchmarks.md).
#[cfg(not(feature = "heap-stats"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Test builds (feature `heap-stats`) count live heap bytes around the same allocator.
#[cfg(feature = "heap-stats")]
#[global_allocator]
static GLOBAL: rmq_gateway::observability::heap::Counting<mimalloc::MiMalloc> =
    rmq_gateway::observability::heap::Counting(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(name = "rmq-gateway", version, about = "A RocketMQ 5.x gRPC gateway with its own storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// YAML configuration file (see config/gateway.yaml). Environment variables
        /// RMQ_GATEWAY_<SECTION>__<KEY> override it.
        #[arg(short, long, env = "RMQ_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print the effective configuration.
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Talk to a running gateway's admin HTTP API (`admin message trace <id>`, …).
    Admin(rmq_gateway::admin::cli::AdminArgs),
    /// Benchmarks (see `make bench`; built with the `bench` feature only).
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        command: Box<rmq_gateway::bench::BenchCommand>,
    },
}

fn init_logging(log: &rmq_gateway::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if log.format == "json" {
        // One JSON object per line: timestamp, level, fields (flattened), message.
        fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
    } else {
        fmt.init();
    }
}

fn load(config: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(config, std::env::vars()).map_err(|e| {
        eprintln!("rmq-gateway: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "bench")]
        Command::Bench { command } => rmq_gateway::bench::run(*command),
        Command::Admin(args) => rmq_gateway::admin::cli::run(args),
        Command::CheckConfig { config } => match load(config.as_deref()) {
            Ok(mut c) => {
                // The effective configuration, without the database password.
                c.metadata.url = rmq_gateway::metadata::redact_url(&c.metadata.url);
                match serde_norway::to_string(&c) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("rmq-gateway: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&config.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("rmq-gateway: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                server::cancel_on_signals(shutdown.clone());
                match server::run(config, shutdown, |_| {}).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        eprintln!("rmq-gateway: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}
