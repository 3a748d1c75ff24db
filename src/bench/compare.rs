//! `rmq-gateway bench compare` (what `make bench` runs): one invocation, one machine, every
//! system started on loopback by this command and stopped at the end.
//!
//! For each system it runs
//! - `max`: producers only, closed loop (`--producers` × `--concurrency` requests in flight)
//!   — send throughput and send latency at saturation; for the gRPC systems (all but NATS)
//!   `--max-runs` of them on the same server, the one with the median rate kept;
//! - `paced-N%` (systems that can be consumed from), for each fraction of `--paced`: producers
//!   paced at that fraction of the system's own `max` throughput, with `--consumers`
//!   long-polling consumers — send and end-to-end latency below saturation. The issue's
//!   end-to-end target is checked on `paced-50%`.
//!
//! Systems: the no-op tonic server (the gRPC ceiling; `max` only), rmq-gateway with
//! SYNC_FLUSH and ASYNC_FLUSH, NATS JetStream (file storage, publish acks, async-nats), and
//! Apache RocketMQ 5 (NameServer + Proxy in local mode, SYNC_FLUSH and ASYNC_FLUSH; same load
//! generator, its two JVMs measured together, a JVM warm-up run before measuring).
//! Then it prints the table, the ratios and the targets of issue #4, and writes JSON, Markdown
//! and SVG. (rocketmq-rust's proxy is not among them: see the README's benchmark section.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::apache::{self, Apache};
use super::grpc::{self, Flush, Target};
use super::load::{LoadOutcome, ResourceUse};
use super::procs::{self, Server, ServerUnderTest};
use super::report::{Check, Ratio, Report, RunResult, Spread};
use super::{LoadArgs, OutArgs};

/// Systems `compare` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// The no-op tonic server (cost of gRPC alone).
    Noop,
    /// rmq-gateway with SYNC_FLUSH.
    GatewaySync,
    /// rmq-gateway with ASYNC_FLUSH.
    GatewayAsync,
    /// NATS JetStream, file storage, publish acks.
    Nats,
    /// Apache RocketMQ 5 (NameServer + Proxy in local mode) with SYNC_FLUSH.
    ApacheSync,
    /// Apache RocketMQ 5 (NameServer + Proxy in local mode) with ASYNC_FLUSH.
    ApacheAsync,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Noop => NOOP,
            System::GatewaySync => GW_SYNC,
            System::GatewayAsync => GW_ASYNC,
            System::Nats => NATS,
            System::ApacheSync => AP_SYNC,
            System::ApacheAsync => AP_ASYNC,
        }
    }
}

const NOOP: &str = "noop-ceiling";

/// The name of a paced run: `paced-50%`.
fn paced_phase(fraction: f64) -> String {
    format!("paced-{:.0}%", fraction * 100.0)
}
const GW_SYNC: &str = "gateway-sync";
const GW_ASYNC: &str = "gateway-async";
const NATS: &str = "nats-jetstream";
const AP_SYNC: &str = "apache-sync";
const AP_ASYNC: &str = "apache-async";

/// The run with the median rate (the lower middle one of an even count).
fn median_run(mut runs: Vec<RunResult>) -> Option<RunResult> {
    runs.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
    let middle = runs.len().saturating_sub(1) / 2;
    (middle < runs.len()).then(|| runs.swap_remove(middle))
}

/// The key figures of every round, in round order: each ratio, and per run its throughput,
/// its send p99 and (paced runs) its end-to-end p99. A quantity missing from a round (a system
/// that failed there) is left out of the table rather than compared with a gap.
fn across_rounds(reports: &[Report]) -> Vec<Spread> {
    let Some(first) = reports.first() else { return Vec::new() };
    let mut out = Vec::new();
    let mut push = |name: String, values: Vec<Option<f64>>| {
        if let Some(values) = values.into_iter().collect::<Option<Vec<f64>>>() {
            out.push(Spread { name, values });
        }
    };
    for ratio in &first.ratios {
        let values = reports.iter().map(|r| r.ratios.iter().find(|x| x.name == ratio.name).map(|x| x.value)).collect();
        push(ratio.name.clone(), values);
    }
    for run in &first.results {
        let each = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<Option<f64>> {
            reports.iter().map(|r| r.find(&run.system, &run.phase).and_then(f)).collect()
        };
        push(format!("{} {} msg/s", run.system, run.phase), each(&|r| Some(r.msgs_per_s)));
        push(format!("{} {} send p99 ms", run.system, run.phase), each(&|r| r.send_latency.as_ref().map(|l| l.p99_ms)));
        if run.target_rate.is_some() {
            push(
                format!("{} {} end-to-end p99 ms", run.system, run.phase),
                each(&|r| r.e2e_latency.as_ref().map(|l| l.p99_ms)),
            );
        }
    }
    out
}

/// `rmq-gateway bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Requests in flight per producer connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Consumers in the paced runs.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Messages per gRPC send request (NATS always publishes one per request).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Measured time of each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Warm-up before each run's window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Paced runs (with consumers), as fractions of the same system's `max` throughput.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5")]
    pub paced: Vec<f64>,
    /// Systems to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "noop,gateway-async,gateway-sync,nats,apache-async,apache-sync"
    )]
    pub systems: Vec<System>,
    /// Gateway binary (default: this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// nats-server binary.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// The script that starts Apache RocketMQ (its jars come from `apache.sh resolve`).
    #[arg(long, default_value = "integration-tests/reference/apache.sh")]
    pub apache_script: PathBuf,
    /// Least load run against each Apache RocketMQ before its measured runs (closed loop, with
    /// consumers; not reported), so that the JVMs' JIT has compiled the hot paths. It goes on,
    /// in 10 s steps up to --jvm-warmup-max, until a step's send rate is within ±10 % of the
    /// step before (the JIT no longer speeds it up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub jvm_warmup: Duration,
    /// Longest JVM warm-up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub jvm_warmup_max: Duration,
    /// A run during which other processes on the machine used more than this many cores is
    /// run again (see --attempts): on a shared machine, contention would skew the ratios.
    #[arg(long, default_value_t = 0.25)]
    pub max_other_cpu: f64,
    /// At most this many tries per run; the least contended one is kept.
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
    /// Closed-loop `max` runs per round of each system (the no-op ceiling, the gateways,
    /// Apache, NATS); the median (by msg/s) is reported and paces the paced runs. The ceiling
    /// is the denominator of two targets, and on a shared VM one run of it moved by a fifth
    /// between rounds.
    #[arg(long, default_value_t = 3)]
    pub max_runs: usize,
    /// Rounds of the whole sequence (every system, every run), to see how far apart the
    /// figures of clean runs on this machine are: the report's tables are the last round's,
    /// and the key figures of every round are tabled with their spread.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Record a `perf` profile of the gateway during its `max` runs (needs `perf`).
    #[arg(long)]
    pub perf: bool,
    /// Where servers keep their data during the run (removed afterwards).
    #[arg(long, default_value = "bench-results/.work")]
    pub work_dir: PathBuf,
    /// Print no progress lines.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub out: OutArgs,
}

impl CompareArgs {
    fn load(&self, consumers: usize, rate: Option<f64>) -> LoadArgs {
        LoadArgs {
            producers: self.producers,
            concurrency: self.concurrency,
            consumers,
            message_size: self.message_size,
            batch: self.batch,
            duration: self.duration,
            warmup: self.warmup,
            messages: None,
            rate,
            drain: Duration::from_secs(5),
            quiet: self.quiet,
        }
    }
}

struct Runner<'a> {
    args: &'a CompareArgs,
    report: Report,
    bin: PathBuf,
}

/// A `perf record` attached to a server for one run.
struct Profile {
    child: std::process::Child,
    data: PathBuf,
}

impl Profile {
    fn start(pid: u32, data: &Path) -> Option<Profile> {
        let child = Command::new("perf")
            // Call graphs by frame pointer: useful with a binary built with
            // `-C force-frame-pointers=yes` (see the README), harmless otherwise.
            .args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"])
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf record could not start: {e}"))
            .ok()?;
        Some(Profile { child, data: data.to_path_buf() })
    }

    /// Stops recording and writes flat `perf report`s (by shared object, then by symbol) next
    /// to the data file.
    fn finish(mut self) -> Option<PathBuf> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child; SIGINT makes perf write its data and exit.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        let _ = self.child.wait();
        let txt = self.data.with_extension("txt");
        let mut text = Vec::new();
        for sort in ["dso", "symbol"] {
            let out = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.5",
                    "--sort",
                    sort,
                    "-i",
                ])
                .arg(&self.data)
                .output()
                .ok()?;
            text.extend_from_slice(&out.stdout);
        }
        std::fs::write(&txt, text).ok()?;
        Some(txt)
    }
}

impl Runner<'_> {
    fn record(&mut self, r: RunResult) {
        if let Some(e) = &r.first_error {
            self.report.notes.push(format!("{}: first error: {e}", r.key()));
        }
        self.report.results.push(r);
    }

    /// The `max` run with the median rate of `maxes`; a note lists them all (`how` they ran
    /// after the rates).
    fn median_max(&mut self, system: &str, maxes: Vec<RunResult>, how: &str) -> anyhow::Result<RunResult> {
        let rates: Vec<String> = maxes.iter().map(|r| format!("{:.0}", r.msgs_per_s)).collect();
        let r = median_run(maxes).context("no max run")?;
        if rates.len() > 1 {
            self.report.notes.push(format!(
                "{system} max: {} runs at {} msg/s{how}; the median is reported",
                rates.len(),
                rates.join(", ")
            ));
        }
        Ok(r)
    }

    /// With `--perf`, a profile of the server (gateways only: they have a data dir) into `file`.
    fn start_profile(&self, data_dir: Option<&Path>, pids: &[u32], file: &str) -> Option<Profile> {
        let pid = pids.first().copied().filter(|_| self.args.perf && data_dir.is_some())?;
        Profile::start(pid, &self.args.out.out.join(file))
    }

    /// Stops `profile` and notes `what` ran under it, with its flat report.
    fn finish_profile(&mut self, profile: Option<Profile>, what: &str) {
        if let Some(txt) = profile.and_then(Profile::finish) {
            self.report.notes.push(format!("{what}; flat profile: {}", txt.display()));
        }
    }

    /// `max` then the paced runs against a gRPC server; `full` says whether it can be consumed
    /// from. `topic` names the topic of a run (`max`, `paced3`); its group is `bench-<run>`.
    /// A `data_dir` is measured after `max` (and the server profiled under `--perf`).
    #[allow(clippy::too_many_arguments)]
    async fn grpc_system(
        &mut self,
        system: &str,
        addr: SocketAddr,
        server: &mut dyn ServerUnderTest,
        full: bool,
        storage: &dyn Fn() -> String,
        data_dir: Option<&Path>,
        topic: &dyn Fn(&str) -> String,
    ) -> anyhow::Result<()> {
        let max_target = Target { addr, topic: topic("max"), group: "bench-max".into(), full };
        grpc::prepare(&max_target, Duration::from_secs(60)).await?;
        let args = self.args.load(0, None);
        eprintln!("{system}: max (closed loop, {} in flight)", args.producers * args.concurrency);
        let watch = server.watch();
        let pids = watch.pids.clone();
        let profile = self.start_profile(data_dir, &pids, &format!("perf-{system}.data"));
        let mut maxes = Vec::new();
        let mut failed = None;
        for _ in 0..self.args.max_runs.max(1) {
            match self.best_of(&format!("{system} max"), |_| grpc::run(system, &args, &max_target, &watch)).await {
                Ok(o) => maxes.push(RunResult::new(system, "max", &storage(), &args, &o)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.finish_profile(
            profile,
            &format!("{system} max ran under `perf record -F 499` (its figures include that overhead)"),
        );
        server.check_alive()?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut r = self.median_max(system, maxes, "")?;
        r.disk_bytes = data_dir.map(procs::dir_size);
        let max_rate = r.msgs_per_s;
        self.record(r);
        if full && self.args.consumers > 0 && max_rate > 0.0 {
            let run = |a: LoadArgs, i: usize| {
                let target =
                    Target { addr, topic: topic(&format!("paced{i}")), group: format!("bench-paced{i}"), full };
                let watch = watch.clone();
                async move {
                    grpc::prepare(&target, Duration::from_secs(60)).await?;
                    grpc::run(system, &a, &target, &watch).await
                }
            };
            let profile = self.start_profile(data_dir, &pids, &format!("perf-{system}-paced.data"));
            let paced = self.paced(system, max_rate, run, storage).await;
            self.finish_profile(
                profile,
                &format!("{system}'s paced runs ran under `perf record -F 499` (consumers included)"),
            );
            paced?;
            server.check_alive()?;
        }
        Ok(())
    }

    /// Runs `run` (given the attempt number) until other processes stay under
    /// `--max-other-cpu` during its window, at most `--attempts` times; keeps the least
    /// contended outcome.
    async fn best_of<F, Fut>(&mut self, label: &str, mut run: F) -> anyhow::Result<LoadOutcome>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<LoadOutcome>>,
    {
        let mut best: Option<LoadOutcome> = None;
        let tries = self.args.attempts.max(1);
        for attempt in 0..tries {
            let o = run(attempt).await?;
            let other = o.other_processes_cores;
            if best.as_ref().is_none_or(|b| other < b.other_processes_cores) {
                best = Some(o);
            }
            if other <= self.args.max_other_cpu {
                break;
            }
            let msg = format!(
                "{label}: other processes used {other:.2} cores during attempt {} of {tries} (limit {:.2})",
                attempt + 1,
                self.args.max_other_cpu
            );
            eprintln!("{msg}");
            self.report.notes.push(msg);
        }
        best.ok_or_else(|| anyhow::anyhow!("{label}: no attempt"))
    }

    /// One paced run per `--paced` fraction; `run` gets the load and a unique run number.
    async fn paced<F, Fut>(
        &mut self,
        system: &str,
        max_rate: f64,
        mut run: F,
        storage: &dyn Fn() -> String,
    ) -> anyhow::Result<()>
    where
        F: FnMut(LoadArgs, usize) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<LoadOutcome>>,
    {
        for (i, fraction) in self.args.paced.clone().into_iter().enumerate() {
            let rate = max_rate * fraction;
            let args = self.args.load(self.args.consumers, Some(rate));
            let phase = paced_phase(fraction);
            eprintln!("{system}: {phase} (paced at {rate:.0} msg/s, {} consumers)", args.consumers);
            let outcome =
                self.best_of(&format!("{system} {phase}"), |attempt| run(args.clone(), i * 10 + attempt)).await?;
            let r = RunResult::new(system, &phase, &storage(), &args, &outcome);
            if r.received < r.messages {
                self.report.notes.push(format!(
                    "{}: consumers saw {} of {} messages sent in the window within the drain time",
                    r.key(),
                    r.received,
                    r.messages
                ));
            }
            if r.msgs_per_s < rate * 0.97 {
                self.report.notes.push(format!(
                    "{}: the pace of {rate:.0} msg/s was not reached ({:.0} msg/s): with consumers running the \
                     machine was saturated",
                    r.key(),
                    r.msgs_per_s
                ));
            }
            self.record(r);
        }
        Ok(())
    }

    async fn noop(&mut self) -> anyhow::Result<()> {
        let port = procs::free_port()?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["bench", "noop-server", "--listen", &format!("127.0.0.1:{port}")]);
        let work = self.args.work_dir.clone();
        let mut server = Server::spawn(NOOP, cmd, &work.join("noop.log"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let result = self
            .grpc_system(NOOP, addr, &mut server, false, &|| "none (answers OK)".into(), None, &grpc::default_topic)
            .await;
        server.stop(Duration::from_secs(10));
        result
    }

    async fn gateway(&mut self, flush: Flush) -> anyhow::Result<()> {
        let system = if flush == Flush::Sync { GW_SYNC } else { GW_ASYNC };
        let mut g = grpc::spawn_gateway(&self.bin, flush, &self.args.work_dir, system)?;
        let data_dir = g.data_dir.clone();
        let storage = || grpc::gateway_storage(flush, &data_dir);
        let result = self
            .grpc_system(system, g.grpc, &mut g.server, true, &storage, Some(&data_dir), &grpc::default_topic)
            .await;
        g.server.stop(Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&data_dir);
        result
    }

    /// Apache RocketMQ with `flush`: started fresh, topics and groups of every run created up
    /// front, a JVM warm-up run, then the same runs as the gateway.
    async fn apache(&mut self, flush: Flush) -> anyhow::Result<()> {
        let system = if flush == Flush::Sync { AP_SYNC } else { AP_ASYNC };
        let run_dir = self.args.work_dir.join(system);
        eprintln!("{system}: starting Apache RocketMQ (NameServer + Proxy in local mode, {})", flush.config_value());
        let mut ap = Apache::start(&self.args.apache_script, &run_dir, flush)?;
        eprintln!("{system}: started in {:.1} s, gRPC on {}", ap.startup.as_secs_f64(), ap.grpc);
        let result = self.apache_runs(system, &mut ap).await;
        ap.stop();
        let _ = std::fs::remove_dir_all(&run_dir);
        result
    }

    async fn apache_runs(&mut self, system: &str, ap: &mut Apache) -> anyhow::Result<()> {
        // Fixed names: the instance is fresh, and Apache never creates topics over gRPC.
        let name = |run: &str| format!("bench-{run}");
        let mut runs = vec!["warmup".to_string(), "max".to_string()];
        for i in 0..self.args.paced.len() {
            runs.extend((0..self.args.attempts.max(1)).map(|a| format!("paced{}", i * 10 + a)));
        }
        let names: Vec<String> = runs.iter().map(|r| name(r)).collect();
        ap.create(&names, &names)?;
        if !self.args.jvm_warmup.is_zero() {
            let target = Target { addr: ap.grpc, topic: name("warmup"), group: name("warmup"), full: true };
            grpc::prepare(&target, Duration::from_secs(60)).await?;
            let step = Duration::from_secs(10).min(self.args.jvm_warmup);
            let mut args = self.args.load(self.args.consumers, None);
            args.warmup = Duration::ZERO;
            args.duration = step;
            args.drain = Duration::ZERO;
            eprintln!(
                "{system}: JVM warm-up, at least {} and until the send rate settles (at most {}), closed loop with \
                 {} consumers; not reported",
                humantime::format_duration(self.args.jvm_warmup),
                humantime::format_duration(self.args.jvm_warmup_max),
                args.consumers
            );
            let mut rates: Vec<f64> = Vec::new();
            let mut elapsed = Duration::ZERO;
            let settled = loop {
                let o = grpc::run(&format!("{system} warm-up"), &args, &target, &ap.watch()).await?;
                ap.check_alive()?;
                anyhow::ensure!(
                    o.messages > 0,
                    "{system}: nothing was sent during the JVM warm-up: {:?}",
                    o.first_error
                );
                elapsed += step;
                rates.push(o.messages as f64 / o.window.as_secs_f64().max(1e-9));
                // Settled: the last step within ±10 % of the one before (a drop is contention
                // or a pause, not the end of the JIT's work).
                let steady = matches!(rates.as_slice(), [.., a, b] if (b - a).abs() <= a * 0.10);
                if elapsed >= self.args.jvm_warmup && steady {
                    break true;
                }
                if elapsed >= self.args.jvm_warmup_max {
                    break false;
                }
            };
            let curve = rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
            self.report.notes.push(format!(
                "{system}: JVM warm-up before measuring (not reported): {} closed loop with {} consumers, send rate per \
                 {} s step {curve} msg/s{}",
                humantime::format_duration(elapsed),
                args.consumers,
                step.as_secs(),
                if settled { "" } else { " (still rising when the warm-up limit was reached)" }
            ));
        }
        let storage = ap.storage();
        let addr = ap.grpc;
        self.grpc_system(system, addr, ap, true, &|| storage.clone(), None, &name).await
    }

    #[cfg(feature = "nats-bench")]
    async fn nats(&mut self) -> anyhow::Result<()> {
        use super::nats;
        let mut s = nats::spawn_server(&self.args.nats_server, &self.args.work_dir, NATS)?;
        let url = s.url.clone();
        let pid = s.server.pid();
        let result = async {
            let args = self.args.load(0, None);
            eprintln!("{NATS}: max (closed loop, {} publishes in flight)", args.producers * args.concurrency);
            // As many `max` runs as the gRPC systems get, each on a stream of its own. Like the
            // gateway's log and Apache's, what they store stays on disk until all of them have
            // run: on this kind of VM, growing the page cache into memory the host has taken
            // back costs the writer more than reusing pages just freed, so deleting each run's
            // stream before the next would favour the later runs.
            let mut maxes = Vec::new();
            let mut streams = Vec::new();
            let mut failed = None;
            for run in 0..self.args.max_runs.max(1) {
                let (u, a) = (url.clone(), args.clone());
                let outcome = self
                    .best_of(&format!("{NATS} max"), |attempt| {
                        let (u, a) = (u.clone(), a.clone());
                        let stream = format!("BENCHMAX{run}A{attempt}");
                        streams.push(stream.clone());
                        async move {
                            nats::create_stream(&u, &stream, Duration::from_secs(30)).await?;
                            nats::run(NATS, &a, &u, &stream, pid).await
                        }
                    })
                    .await;
                match outcome {
                    Ok(o) => maxes.push(RunResult::new(NATS, "max", super::NATS_STORAGE, &args, &o)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            for stream in &streams {
                // A run that failed before creating its stream leaves nothing to delete.
                let _ = nats::delete_stream(&url, stream).await;
            }
            s.server.check_alive()?;
            if let Some(e) = failed {
                return Err(e);
            }
            let r = self.median_max(NATS, maxes, ", each on a stream of its own, kept until the last")?;
            let max_rate = r.msgs_per_s;
            self.record(r);
            if self.args.consumers > 0 && max_rate > 0.0 {
                let u = url.clone();
                let run = |a: LoadArgs, i: usize| {
                    let u = u.clone();
                    async move {
                        let stream = format!("BENCHPACED{i}");
                        nats::create_stream(&u, &stream, Duration::from_secs(30)).await?;
                        let outcome = nats::run(NATS, &a, &u, &stream, pid).await;
                        nats::delete_stream(&u, &stream).await?;
                        outcome
                    }
                };
                self.paced(NATS, max_rate, run, &|| super::NATS_STORAGE.to_string()).await?;
                s.server.check_alive()?;
            }
            anyhow::Ok(())
        }
        .await;
        s.server.stop(Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&s.store_dir);
        result
    }

    #[cfg(not(feature = "nats-bench"))]
    async fn nats(&mut self) -> anyhow::Result<()> {
        anyhow::bail!("this binary was built without the `nats-bench` feature")
    }

    fn ratios_and_checks(&mut self) {
        let r = &self.report;
        let get = |s: &str| r.find(s, "max");
        let mut ratios = Vec::new();
        let mut checks = Vec::new();
        let ceiling = get(NOOP);
        let nats = get(NATS);
        // Issue #13's targets.
        for (gw, need) in [(GW_ASYNC, 0.90), (GW_SYNC, 0.70)] {
            let Some(g) = get(gw) else { continue };
            if let Some(c) = ceiling.filter(|c| c.msgs_per_s > 0.0) {
                let x = g.msgs_per_s / c.msgs_per_s;
                ratios.push(Ratio { name: format!("{gw} / {NOOP} (msg/s)"), value: x });
                checks.push(Check {
                    target: format!("{gw} send throughput ≥ {:.0}% of the no-op ceiling", need * 100.0),
                    measured: format!(
                        "{:.0}% ({:.0} vs {:.0} msg/s){}{}",
                        x * 100.0,
                        g.msgs_per_s,
                        c.msgs_per_s,
                        send_path_summary(g),
                        if x < need { ceiling_gap(g, c, need) } else { String::new() }
                    ),
                    met: Some(x >= need),
                });
            }
            if let Some(n) = nats.filter(|n| n.msgs_per_s > 0.0) {
                let x = g.msgs_per_s / n.msgs_per_s;
                ratios.push(Ratio { name: format!("{gw} / {NATS} (msg/s)"), value: x });
                // Judged only where the target is set: 16 or more messages per request.
                checks.push(Check {
                    target: format!("{gw} level with or ahead of NATS JetStream (≥ 0.95×) at 16 messages per request"),
                    measured: format!(
                        "{x:.2}× ({:.0} vs {:.0} msg/s, {} B, {} per request)",
                        g.msgs_per_s, n.msgs_per_s, g.message_size, g.batch
                    ),
                    met: (g.batch >= 16).then_some(x >= 0.95),
                });
                if let (Some(gl), Some(nl)) = (&g.send_latency, &n.send_latency) {
                    ratios.push(Ratio {
                        name: format!("{gw} / {NATS} (send p99, max load)"),
                        value: gl.p99_ms / nl.p99_ms,
                    });
                    checks.push(Check {
                        target: format!(
                            "{gw} p99 send latency no worse than NATS JetStream (max load, same concurrency)"
                        ),
                        measured: format!("{:.2} ms vs {:.2} ms", gl.p99_ms, nl.p99_ms),
                        met: Some(gl.p99_ms <= nl.p99_ms),
                    });
                }
                let half = |s: &str| r.find(s, &paced_phase(0.5)).and_then(|x| x.send_latency.clone());
                if let (Some(gl), Some(nl)) = (half(gw), half(NATS)) {
                    checks.push(Check {
                        target: format!("{gw} p99 send latency no worse than NATS JetStream (each at half its max)"),
                        measured: format!("{:.2} ms vs {:.2} ms", gl.p99_ms, nl.p99_ms),
                        met: Some(gl.p99_ms <= nl.p99_ms),
                    });
                }
            }
            if let Some(h) = r.find(gw, &paced_phase(0.5)) {
                let mut measured = match &h.e2e_latency {
                    Some(l) => format!("p99 {:.2} ms at {:.0} msg/s", l.p99_ms, h.msgs_per_s),
                    None => "no messages received".to_string(),
                };
                // What the tail is made of on a shared machine: busy cores and queued threads.
                if let (Some(sv), Some(cl)) = (h.server, h.client) {
                    let busy = sv.cpu_cores + cl.cpu_cores + h.other_cpu_cores.unwrap_or(0.0);
                    measured.push_str(&format!("; {busy:.2} cores busy"));
                    if let (Some(ws), Some(wc)) = (sv.cpu_wait_cores, cl.cpu_wait_cores) {
                        measured.push_str(&format!(", threads waiting for a CPU: server {ws:.2}, client {wc:.2}"));
                    }
                }
                let met = h.e2e_latency.as_ref().is_some_and(|l| l.p99_ms <= 5.0);
                if !met {
                    let paced: Vec<&RunResult> =
                        r.results.iter().filter(|x| x.system == gw && x.phase.starts_with("paced-")).collect();
                    measured.push_str(&tail_context(h, get(gw), &paced));
                }
                checks.push(Check {
                    target: format!("{gw} end-to-end p99 ≤ 5 ms at half of the maximum throughput"),
                    measured,
                    met: Some(met),
                });
            }
        }
        for (gw, ap) in [(GW_ASYNC, AP_ASYNC), (GW_SYNC, AP_SYNC)] {
            let (Some(g), Some(a)) = (get(gw), get(ap)) else { continue };
            if a.msgs_per_s > 0.0 {
                let x = g.msgs_per_s / a.msgs_per_s;
                ratios.push(Ratio { name: format!("{gw} / {ap} (msg/s, max)"), value: x });
                checks.push(Check {
                    target: format!("{gw} ≥ 2× Apache RocketMQ ({ap}) in send throughput, same flush mode"),
                    measured: format!("{x:.2}× ({:.0} vs {:.0} msg/s)", g.msgs_per_s, a.msgs_per_s),
                    met: Some(x >= 2.0),
                });
            }
            if let (Some(gl), Some(al)) = (&g.send_latency, &a.send_latency) {
                ratios.push(Ratio {
                    name: format!("{gw} / {ap} (send p99, max load; < 1: ours lower)"),
                    value: gl.p99_ms / al.p99_ms,
                });
                checks.push(Check {
                    target: format!("{gw} p99 send latency lower than Apache RocketMQ ({ap}), max load"),
                    measured: format!("{:.2} ms vs {:.2} ms", gl.p99_ms, al.p99_ms),
                    met: Some(gl.p99_ms < al.p99_ms),
                });
            }
            let half = |s: &str| r.find(s, &paced_phase(0.5)).and_then(|x| x.e2e_latency.clone());
            if let (Some(gl), Some(al)) = (half(gw), half(ap)) {
                ratios.push(Ratio {
                    name: format!("{gw} / {ap} (end-to-end p99, each at half its max; < 1: ours lower)"),
                    value: gl.p99_ms / al.p99_ms,
                });
            }
            if let (Some(gc), Some(ac)) = (g.server_cpu_us_per_msg, a.server_cpu_us_per_msg)
                && ac > 0.0
            {
                ratios.push(Ratio {
                    name: format!("{gw} / {ap} (server CPU µs/msg, max; < 1: ours cheaper)"),
                    value: gc / ac,
                });
            }
            if let (Some(gs), Some(as_)) = (g.server, a.server)
                && as_.rss_peak_bytes > 0
            {
                let x = gs.rss_peak_bytes as f64 / as_.rss_peak_bytes as f64;
                ratios.push(Ratio { name: format!("{gw} / {ap} (server RSS peak, max; < 1: ours smaller)"), value: x });
                checks.push(Check {
                    target: format!("{gw} RSS peak under a tenth of Apache RocketMQ's ({ap}), max load"),
                    measured: format!("{x:.3}× ({} vs {} MiB)", gs.rss_peak_bytes >> 20, as_.rss_peak_bytes >> 20),
                    met: Some(x < 0.1),
                });
                if as_.rss_anon_end_bytes > 0 {
                    // Without the file pages both map (commit log, segments): heaps and buffers.
                    ratios.push(Ratio {
                        name: format!("{gw} / {ap} (server anonymous RSS at the end, max; < 1: ours smaller)"),
                        value: gs.rss_anon_end_bytes as f64 / as_.rss_anon_end_bytes as f64,
                    });
                }
            }
        }
        if let (Some(a), Some(s)) = (get(GW_ASYNC), get(GW_SYNC))
            && a.msgs_per_s > 0.0
        {
            ratios.push(Ratio { name: format!("{GW_SYNC} / {GW_ASYNC} (msg/s)"), value: s.msgs_per_s / a.msgs_per_s });
        }
        let in_memory =
            self.report.results.iter().any(|r| r.system.starts_with("gateway") && r.storage.starts_with("in-memory"));
        if in_memory {
            self.report.notes.push(
                "The gateway ran on its in-memory log (this build of `serve` has no durable commit log): nothing was \
                 persisted and SYNC_FLUSH/ASYNC_FLUSH behave alike. The durability comparisons above are therefore \
                 not yet meaningful."
                    .into(),
            );
        }
        if self.report.find(AP_SYNC, "max").is_some() || self.report.find(AP_ASYNC, "max").is_some() {
            let v = apache::version(&self.args.apache_script).unwrap_or_else(|| "5".into());
            self.report.notes.push(format!(
                "Apache RocketMQ {v} (jars from Maven Central, started by {}): a NameServer and a Proxy in local mode \
                 with the broker inside the proxy JVM, JDK 17, G1, heaps 256 MiB (NameServer) and 1 GiB + 1 GiB direct \
                 (Proxy), the script's defaults. Its server CPU and RSS are the two JVMs summed. Its RSS includes the \
                 commit-log pages the broker has mapped (it writes through mmap). Same load generator, payload and \
                 runs as the gateway; topics (NORMAL, 8 queues) and groups are created with its admin tools first, \
                 and the consumers announce their settings over Telemetry as the SDKs do.",
                self.args.apache_script.display()
            ));
        }
        if self.report.find(NATS, "max").is_some() {
            self.report.notes.push(format!(
                "NATS JetStream storage: {}. ASYNC_FLUSH is the like-for-like durability comparison.",
                super::NATS_STORAGE
            ));
        }
        self.report.notes.push(
            "Other CPU = the machine's busy time minus the server's and the client's: other work on a shared machine, \
             plus kernel time (loopback softirqs, kworkers) charged to neither process."
                .into(),
        );
        self.report.notes.push(
            "Client and servers share the same cores; the client's CPU is in the table. Send latency is measured from \
             just before the request is built to the response; end-to-end latency from the same instant (written into \
             the body) to the consumer's receipt, on one monotonic clock."
                .into(),
        );
        self.report.ratios = ratios;
        self.report.checks = checks;
    }
}

/// `rmq-gateway bench compare`.
pub async fn main(args: CompareArgs) -> anyhow::Result<()> {
    let bin = match &args.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    args.load(args.consumers, None).validate()?;
    anyhow::ensure!(args.paced.iter().all(|f| *f > 0.0 && *f <= 1.0), "--paced fractions must be in (0, 1]");
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    std::fs::create_dir_all(&args.out.out)?;
    let rounds = args.rounds.max(1);
    let mut reports = Vec::with_capacity(rounds);
    let mut failed = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("round {round} of {rounds}");
        }
        let mut runner = Runner { args: &args, report: Report::new(&args.work_dir), bin: bin.clone() };
        for system in args.systems.iter().copied() {
            let result = match system {
                System::Noop => runner.noop().await,
                System::GatewaySync => runner.gateway(Flush::Sync).await,
                System::GatewayAsync => runner.gateway(Flush::Async).await,
                System::Nats => runner.nats().await,
                System::ApacheSync => runner.apache(Flush::Sync).await,
                System::ApacheAsync => runner.apache(Flush::Async).await,
            };
            if let Err(e) = result {
                eprintln!("{}: FAILED: {e:#}", system.label());
                runner.report.notes.push(format!("{} could not be measured: {e:#}", system.label()));
                failed.push(format!("{} (round {round})", system.label()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        runner.ratios_and_checks();
        reports.push(runner.report);
    }
    let spread = across_rounds(&reports);
    let mut report = reports.pop().context("no round ran")?;
    if rounds > 1 {
        report.started_at = reports.first().map_or(report.started_at.clone(), |r| r.started_at.clone());
        report.rounds = spread;
        // The earlier rounds' own notes (repeats for contention, JVM warm-ups, shortfalls).
        let mut earlier = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            earlier
                .extend(r.notes.iter().filter(|n| !report.notes.contains(n)).map(|n| format!("round {}: {n}", i + 1)));
        }
        report.notes.splice(0..0, earlier);
    }
    println!("\n{}", report.markdown());
    let stamp = report.started_at.replace([':', '-'], "");
    let mut written = report.write(&args.out.out, "bench")?;
    let history = args.out.out.join(format!("bench-{stamp}.json"));
    std::fs::copy(args.out.out.join("bench.json"), &history)?;
    written.push(history);
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    // The others' results are written; a missing row still fails the run (never a silent gap).
    anyhow::ensure!(
        failed.is_empty(),
        "{} could not be measured (the reasons are above and in the report's notes)",
        failed.join(", ")
    );
    Ok(())
}

/// Where a gateway's sends went at `max` (from its `/metrics`), for the ceiling target's line:
/// with 64 sends in flight, throughput is 64 over the time a send takes, so this says which
/// part of that time the gateway's storage holds.
fn send_path_summary(g: &RunResult) -> String {
    let (Some(p), Some(l)) = (g.send_path, g.send_latency.as_ref()) else { return String::new() };
    let ms = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{x:.2}"));
    let fsync = match (p.appends_per_fsync, p.fsync_ms) {
        // Under ASYNC_FLUSH the fsyncs run on an interval, apart from the sends.
        (Some(n), Some(f)) if p.fsyncs > 0 && g.system == GW_SYNC => {
            format!(", {n:.1} sends per fsync of {f:.2} ms")
        }
        _ => String::new(),
    };
    format!(
        "; a send took {:.2} ms on average, of which the handler {} ms: its append waited {} ms for the writer, was stored at {} ms and resumed at {} ms{fsync}",
        l.mean_ms,
        ms(p.handler_ms),
        ms(p.queued_ms),
        ms(p.stored_ms),
        ms(p.resumed_ms),
    )
}

/// A run's busy cores (server, client and the rest of the machine) and the machine's CPU per
/// message in it (µs).
fn machine_cpu(r: &RunResult) -> Option<(f64, f64)> {
    let (s, c) = (r.server?, r.client?);
    let busy = s.cpu_cores + c.cpu_cores + r.other_cpu_cores.unwrap_or(0.0);
    (r.msgs_per_s > 0.0 && busy > 0.0).then(|| (busy, busy * 1e6 / r.msgs_per_s))
}

/// For a missed ceiling target (`g` against the ceiling `c`): what `need` of the ceiling would
/// have taken, from the two runs' own figures. By Little's law (a closed loop's rate is its
/// messages in flight over the mean send time) and by CPU (at the busy cores the gateway's run
/// had, the machine's CPU per message that rate allows, against what it spent).
fn ceiling_gap(g: &RunResult, c: &RunResult, need: f64) -> String {
    if c.msgs_per_s <= 0.0 {
        return String::new();
    }
    let mut parts = Vec::new();
    let in_flight = (g.producers * g.concurrency * g.batch.max(1)) as f64;
    if let Some(l) = &g.send_latency {
        let allowed_ms = in_flight / (need * c.msgs_per_s) * 1e3;
        parts.push(format!(
            "with {in_flight:.0} messages in flight a send must take {allowed_ms:.2} ms on average (it took {:.2})",
            l.mean_ms
        ));
    }
    if let (Some((busy_g, per_g)), Some((busy_c, per_c))) = (machine_cpu(g), machine_cpu(c)) {
        let allowed = busy_g * 1e6 / (need * c.msgs_per_s);
        let us = |r: &RunResult, u: Option<ResourceUse>| u.map_or(0.0, |u| u.cpu_cores * 1e6 / r.msgs_per_s);
        parts.push(format!(
            "at its {busy_g:.2} busy cores the machine may spend {allowed:.1} µs of CPU per message (it spent {per_g:.1}: \
             server {:.1}, client {:.1}; the ceiling's run {per_c:.1}: server {:.1}, client {:.1}, at {busy_c:.2} cores)",
            us(g, g.server),
            us(g, g.client),
            us(c, c.server),
            us(c, c.client),
        ));
    }
    if parts.is_empty() { String::new() } else { format!(". {:.0}% would need: {}", need * 100.0, parts.join("; or ")) }
}

/// For a missed end-to-end target at half load (`half`): what the tail follows in the same
/// system's other runs, the busy cores (lighter paced runs) and what consuming adds to a
/// message's server CPU (against a send at `max`).
fn tail_context(half: &RunResult, max: Option<&RunResult>, paced: &[&RunResult]) -> String {
    let mut parts = Vec::new();
    for p in paced.iter().filter(|p| p.msgs_per_s < half.msgs_per_s) {
        if let (Some(l), Some((busy, _))) = (&p.e2e_latency, machine_cpu(p)) {
            parts.push(format!("at {} p99 {:.2} ms with {busy:.2} cores busy", p.phase, l.p99_ms));
        }
    }
    if let (Some(m), Some(h)) = (max.and_then(|m| m.server_cpu_us_per_msg), half.server_cpu_us_per_msg) {
        parts.push(format!(
            "the server spent {h:.1} µs per message sent and consumed at half load against {m:.1} per send at max"
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(". The tail follows the machine's load: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::result;

    #[test]
    fn rounds_are_tabled_per_quantity_and_gaps_left_out() {
        let round = |rate: f64, paced: bool| {
            let mut r = Report::new(Path::new("."));
            let mut max = result(GW_ASYNC, None);
            max.msgs_per_s = rate;
            r.results.push(max);
            if paced {
                r.results.push(result(GW_ASYNC, Some(rate / 2.0)));
            }
            r.ratios.push(Ratio { name: "g / c".into(), value: rate / 1000.0 });
            r
        };
        let spread = across_rounds(&[round(500.0, true), round(550.0, true), round(600.0, false)]);
        let get = |n: &str| spread.iter().find(|s| s.name == n).map(|s| s.values.clone());
        assert_eq!(get("g / c"), Some(vec![0.5, 0.55, 0.6]));
        assert_eq!(get(&format!("{GW_ASYNC} max msg/s")), Some(vec![500.0, 550.0, 600.0]));
        assert!(get(&format!("{GW_ASYNC} max send p99 ms")).is_some());
        // The paced run is missing from round 3: not tabled rather than compared with a gap.
        assert_eq!(get(&format!("{GW_ASYNC} paced-50% msg/s")), None);
        assert!(across_rounds(&[]).is_empty());
    }

    fn cores(server: f64, client: f64, other: f64, mut r: RunResult) -> RunResult {
        let u = |c: f64| ResourceUse {
            cpu_cores: c,
            cpu_seconds: c,
            rss_end_bytes: 0,
            rss_peak_bytes: 0,
            rss_anon_end_bytes: 0,
            cpu_wait_cores: None,
        };
        r.server = Some(u(server));
        r.client = Some(u(client));
        r.other_cpu_cores = Some(other);
        r.server_cpu_us_per_msg = Some(server * 1e6 / r.msgs_per_s);
        r
    }

    #[test]
    fn a_missed_ceiling_says_what_it_would_need() {
        let mut g = result(GW_SYNC, None);
        (g.producers, g.concurrency, g.msgs_per_s) = (4, 16, 36_000.0);
        g.send_latency.as_mut().unwrap().mean_ms = 1.78;
        let g = cores(0.9, 0.8, 0.1, g);
        let mut c = result(NOOP, None);
        c.msgs_per_s = 55_000.0;
        let mut c = cores(0.7, 1.1, 0.1, c);
        let text = ceiling_gap(&g, &c, 0.70);
        // 64 / (0.70 × 55 000) s = 1.66 ms; 1.8 cores / (0.70 × 55 000) = 46.8 µs.
        assert!(text.contains("70% would need"), "{text}");
        assert!(
            text.contains("with 64 messages in flight a send must take 1.66 ms on average (it took 1.78)"),
            "{text}"
        );
        assert!(
            text.contains("may spend 46.8 µs of CPU per message (it spent 50.0: server 25.0, client 22.2"),
            "{text}"
        );
        assert!(text.contains("the ceiling's run 34.5: server 12.7, client 20.0, at 1.90 cores"), "{text}");
        // Without the ceiling's rate there is nothing to say.
        c.msgs_per_s = 0.0;
        assert_eq!(ceiling_gap(&g, &c, 0.70), "");
    }

    #[test]
    fn a_missed_tail_is_set_beside_the_lighter_runs() {
        let mut max = result(GW_ASYNC, None);
        max.msgs_per_s = 50_000.0;
        let max = cores(0.9, 1.0, 0.05, max);
        let mut quarter = result(GW_ASYNC, Some(12_500.0));
        (quarter.phase, quarter.msgs_per_s) = ("paced-25%".into(), 12_500.0);
        let quarter = cores(0.6, 0.5, 0.1, quarter);
        let mut half = result(GW_ASYNC, Some(25_000.0));
        half.msgs_per_s = 25_000.0;
        let half = cores(1.0, 0.8, 0.1, half);
        let text = tail_context(&half, Some(&max), &[&quarter, &half]);
        assert!(text.contains("at paced-25% p99 5.00 ms with 1.20 cores busy"), "{text}");
        assert!(!text.contains("at paced-50%"), "{text}");
        assert!(
            text.contains("spent 40.0 µs per message sent and consumed at half load against 18.0 per send"),
            "{text}"
        );
        assert_eq!(tail_context(&result(GW_ASYNC, Some(1.0)), None, &[]), "");
    }

    #[test]
    fn the_median_max_run_is_kept() {
        let run = |rate: f64| {
            let mut r = result(NOOP, None);
            r.msgs_per_s = rate;
            r
        };
        let rate = |runs: Vec<f64>| median_run(runs.into_iter().map(run).collect()).map(|r| r.msgs_per_s);
        assert_eq!(rate(vec![43_800.0, 36_500.0, 41_000.0]), Some(41_000.0));
        assert_eq!(rate(vec![2.0, 1.0]), Some(1.0));
        assert_eq!(rate(vec![7.0]), Some(7.0));
        assert_eq!(rate(vec![]), None);
    }
}
