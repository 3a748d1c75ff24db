//! The `rmq-gateway` binary: command-line parsing, logging set-up and the process's allocator
//! (mimalloc, and the thread that hands its freed memory back to the kernel); everything else is
//! in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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

/// How often [`purge_freed_memory`] runs: memory freed in a burst is back with the kernel about
/// this long after the threads that freed it went quiet.
const HEAP_PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Hands the memory mimalloc freed and has not reused back to the kernel. mimalloc gives freed
/// memory back after a delay (its `purge_delay`, 10 ms, ten times that for the segments back in
/// its arenas, extended while frees go on), but only when some thread later calls into it: after
/// a burst the threads that freed the memory go quiet and it stays resident (`bench timers`:
/// 23 → 94–303 MiB of anonymous memory after 10 million sends; the unit test below: 256 MiB still
/// resident 3 s after its free). `mi_collect(false)` on any thread purges what has waited past its
/// delay in the arenas (and collects the caller's own heap, here empty), so a thread that calls
/// it once per [`HEAP_PURGE_INTERVAL`] returns a burst's memory within a second or two. Under load
/// it purges only what has already waited past its delay, once a second (no CPU difference per
/// send in alternating pairs at ASYNC `max`: README, "Timers"). (`MIMALLOC_PURGE_DELAY=0`, purging
/// on every free, returns it at once but cost 27–47 % more CPU per send.)
fn purge_freed_memory() {
    // SAFETY: `mi_collect` has no preconditions: it is thread-safe and only returns memory that
    // no allocation holds.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Starts the thread that calls [`purge_freed_memory`] for the life of the process.
fn spawn_heap_purger() {
    let spawned = std::thread::Builder::new().name("rmq-heap-purge".into()).spawn(|| {
        // `mi_collect` returns at once on a thread whose heap mimalloc has not set up (its
        // `mi_heap_collect_ex`): set it up here instead of relying on something in this thread
        // having allocated.
        // SAFETY: no preconditions; sets up this thread's (empty) heap.
        unsafe { libmimalloc_sys::mi_thread_init() };
        loop {
            std::thread::sleep(HEAP_PURGE_INTERVAL);
            purge_freed_memory();
        }
    });
    if let Err(e) = spawned {
        // Not fatal: the memory is still reused, it is only returned later.
        eprintln!(
            "rmq-gateway: cannot start the heap purge thread ({e}); freed memory is returned to the kernel only when the allocator is next busy"
        );
    }
}

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
    spawn_heap_purger();
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Anonymous resident memory of this process, in bytes.
    fn rss_anon() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon line");
        let kib: u64 = line.split_whitespace().nth(1).expect("RssAnon value").parse().expect("RssAnon number");
        kib * 1024
    }

    /// The premise and the fix: a thread frees 256 MiB at once and then stays out of the
    /// allocator, as a runtime thread after a burst; the memory stays resident for seconds, until
    /// the purge thread runs.
    #[test]
    fn memory_freed_by_an_idle_thread_goes_back_to_the_kernel() {
        let baseline = rss_anon();
        let (freed_tx, freed_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let idler = std::thread::spawn(move || {
            let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 64 << 10]).collect();
            drop(blocks);
            freed_tx.send(()).expect("the test waits");
            let _ = end_rx.recv();
        });
        freed_rx.recv().expect("the allocating thread ran");
        // Past mimalloc's purge delays (10 ms, 100 ms for its arenas, extended by the frees:
        // a purge 300 ms after this free returned nothing, one 2 s after it all).
        std::thread::sleep(3 * HEAP_PURGE_INTERVAL);
        let idle = rss_anon();
        // The purge thread, as `main` starts it; its first call normally suffices.
        spawn_heap_purger();
        let mut purged = idle;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            purged = rss_anon();
            if purged < baseline + 32 * MIB {
                break;
            }
        }
        end_tx.send(()).expect("the idle thread waits");
        idler.join().expect("the idle thread");
        eprintln!(
            "RssAnon: baseline {} MiB, 3 s after the free {} MiB, with the purge thread {} MiB",
            baseline / MIB,
            idle / MIB,
            purged / MIB
        );
        assert!(
            idle > baseline + 128 * MIB,
            "mimalloc gave the freed memory back by itself ({} MiB over the baseline 3 s after the \
             free): the purge thread's reason no longer holds",
            idle.saturating_sub(baseline) / MIB
        );
        assert!(
            purged < baseline + 32 * MIB,
            "the purge left {} MiB of freed memory resident",
            purged.saturating_sub(baseline) / MIB
        );
    }
}
