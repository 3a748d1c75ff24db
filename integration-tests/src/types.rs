//! Scenarios for FIFO, delay/timer, recall, transactional and priority messages, run through
//! the SDK drivers' message-type modes (`sdk/MESSAGE_TYPES.md`). Every scenario takes the [`Sdk`] whose
//! driver it runs, so another SDK joins with one line in `tests/types_e2e.rs`; each prints one
//! figures line per run on stderr (`[types] target sdk scenario: ...`) and fails with the drivers'
//! output and the broker's log tail.
//!
//! Target: the gateway (one `rmq-gateway` process per test, [`Ctx`]), or with
//! `RMQ_TYPES_TARGET=apache` Apache RocketMQ 5.5.0, to hold the checks against the reference.
//! Apache runs once per test process, started on first use (SYNC flush, transaction checks
//! every 5 s after 3 s, recall enabled), stopped and removed at exit; or `RMQ_TYPES_APACHE_DIR`
//! names the run dir of one already started by `reference/apache.sh start` (with those
//! `--broker-conf` settings, see [`APACHE_BROKER_CONF`]). Tests on Apache take turns (they
//! share it, and the restart scenarios restart it). What Apache cannot do the same way:
//! its topics always have 8 queues, it refuses delays beyond 1 day (proxy `maxDelayTimeMills`),
//! its timer has 1 s slots, and it has no PRIORITY topics (the priority scenario is skipped).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::apache::TopicType;
use crate::gateway_process::{Stop, free_port, tail_file};
use crate::scenario::{Ctx, shout, unique};
use crate::sdk::{self, Mode, Outcome, Run, Running, Sdk};

/// Hard limit for one scenario: drivers still running then are killed.
const TEST_BUDGET: Duration = Duration::from_secs(200);
/// What a driver needs beyond its `--timeout-secs` (startup; a PushConsumer's shutdown).
const DRIVER_SLACK: Duration = Duration::from_secs(45);
/// Time a consumer started in the background gets before the producer runs (JVM startup).
const CONSUMER_WARMUP: Duration = Duration::from_secs(4);
/// The retries of the FIFO groups (`retryMaxTimes`).
const FIFO_MAX_RETRY: i32 = 3;
/// A delay beyond every maximum (100 days): the send must be refused.
pub const BEYOND_MAX_MS: i64 = 100 * 24 * 3600 * 1000;
/// How much earlier than `ended_at` a committed message may be received: the consumer can see
/// it while the commit's answer is still on its way to the producer.
const COMMIT_SKEW_MS: i64 = 100;
/// FIFO head-of-line: a group finished "after the poison" if later than this after the poison
/// group's first call (the poison's retries take longer).
pub const HOL_MARGIN_MS: i64 = 3000;

/// The broker the scenarios run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Gateway,
    Apache,
}

impl Target {
    /// `RMQ_TYPES_TARGET=apache` selects Apache; anything else the gateway.
    pub fn from_env() -> Target {
        match std::env::var("RMQ_TYPES_TARGET").as_deref() {
            Ok("apache") => Target::Apache,
            _ => Target::Gateway,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Gateway => "gateway",
            Target::Apache => "apache",
        }
    }

    /// How much earlier than its delivery time a delay message may arrive: none on the
    /// gateway; Apache's timer wheel has 1 s slots.
    pub fn allowed_early_ms(self) -> i64 {
        match self {
            Target::Gateway => 0,
            Target::Apache => 1000,
        }
    }

    /// A delay that is accepted and cannot come due during a test: 30 days on the gateway,
    /// 20 hours on Apache (its proxy refuses anything beyond 1 day).
    pub fn far_future_ms(self) -> i64 {
        match self {
            Target::Gateway => 30 * 24 * 3600 * 1000,
            Target::Apache => 20 * 3600 * 1000,
        }
    }

    /// At most how long a stop and restart take; the restart scenarios set their delays past it.
    pub fn restart_allowance(self) -> Duration {
        match self {
            Target::Gateway => Duration::from_secs(8),
            Target::Apache => Duration::from_secs(40),
        }
    }

    /// Apache serializes a FIFO queue; the gateway must not let one group block the others.
    fn blocks_fifo_queue(self) -> bool {
        self == Target::Apache
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// One figures line on the real stderr (not captured by the test harness).
fn figures(ctx: &TypesCtx, scenario: &str, text: &str) {
    figures_line(ctx.target, ctx.sdk, scenario, text);
}

/// [`figures`] for a scenario that did not start a broker (skipped on its target).
fn figures_line(target: Target, sdk: Sdk, scenario: &str, text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[types] {:<7} {:<6} {:<24} {text}", target.name(), sdk.name(), scenario);
}

/// Nearest-rank percentile of sorted values (0 if empty).
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

// ------------------------------------------------------------------------------------ Apache

/// `--broker-conf` settings of the Apache the scenarios use: transaction checks 3 s after the
/// half message and every 5 s (defaults: 6 s, 30 s), recall enabled (off by default), SQL92
/// filters enabled (off by default; the `filters` scenarios need them).
pub const APACHE_BROKER_CONF: [&str; 4] = [
    "transactionCheckInterval=5000",
    "transactionTimeOut=3000",
    "recallMessageEnable=true",
    "enablePropertyFilter=true",
];

/// An Apache NameServer + Proxy (with its broker) run by `reference/apache.sh` in `dir`.
struct ApacheRun {
    dir: PathBuf,
    /// `apache.env`: ports and pids
    env: BTreeMap<String, String>,
    /// started by this process (else attached: `RMQ_TYPES_APACHE_DIR`, left running at exit)
    owned: bool,
}

static APACHE: OnceLock<Result<Mutex<ApacheRun>, String>> = OnceLock::new();
/// The run dir of the Apache this process started (stopped and removed at exit).
static OWNED_APACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_owned_apache() {
    if let Some(dir) = OWNED_APACHE_DIR.get() {
        let _ = crate::apache::run(&["stop", &dir.to_string_lossy()]);
        if std::env::var("RMQ_APACHE_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("apache: run dir kept: {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl ApacheRun {
    /// The shared Apache of this test process, locked for one test.
    fn shared() -> MutexGuard<'static, ApacheRun> {
        let run = APACHE.get_or_init(|| ApacheRun::attach_or_start().map(Mutex::new).map_err(|e| format!("{e:#}")));
        match run {
            // a test that panicked holding it poisoned the lock; the broker itself is fine
            Ok(m) => m.lock().unwrap_or_else(|e| e.into_inner()),
            Err(e) => panic!("Apache RocketMQ could not be started: {e}"),
        }
    }

    fn attach_or_start() -> Result<ApacheRun> {
        if let Some(dir) = std::env::var_os("RMQ_TYPES_APACHE_DIR") {
            let mut run = ApacheRun { dir: PathBuf::from(dir), env: BTreeMap::new(), owned: false };
            run.read_env()?;
            return Ok(run);
        }
        crate::apache::run(&["resolve"])?;
        let dir = tempfile::Builder::new().prefix("rmq-types-apache-").tempdir()?.keep();
        let _ = OWNED_APACHE_DIR.set(dir.clone());
        // SAFETY: registers a plain function with no arguments to run at process exit.
        unsafe { libc::atexit(stop_owned_apache) };
        let mut run = ApacheRun { dir, env: BTreeMap::new(), owned: true };
        run.start(&[("--grpc-port", free_port()?.to_string())])?;
        shout(&format!("types: Apache RocketMQ started for this test process in {}", run.dir.display()));
        Ok(run)
    }

    fn read_env(&mut self) -> Result<()> {
        let text = std::fs::read_to_string(self.dir.join("apache.env"))
            .with_context(|| format!("no Apache running in {}", self.dir.display()))?;
        self.env =
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(())
    }

    fn var(&self, key: &str) -> &str {
        self.env.get(key).map(String::as_str).unwrap_or("")
    }

    /// `apache.sh start` in `dir` with the given ports and [`APACHE_BROKER_CONF`]; one this
    /// process owns is stopped when it exits.
    fn start(&mut self, ports: &[(&str, String)]) -> Result<()> {
        let dir = self.dir.to_string_lossy().into_owned();
        let pid = std::process::id().to_string();
        let mut args = vec!["start", dir.as_str(), "--flush", "SYNC", "--timeout", "150"];
        if self.owned {
            args.extend(["--watch-pid", pid.as_str()]);
        }
        for (flag, value) in ports {
            args.extend([*flag, value.as_str()]);
        }
        for kv in APACHE_BROKER_CONF {
            args.extend(["--broker-conf", kv]);
        }
        crate::apache::run(&args)?;
        self.read_env()
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.var("GRPC_PORT"))
    }

    /// `apache.sh admin` commands; retried while the broker is not registered yet (after a
    /// restart `apache.sh start` may return before the new registration).
    fn admin(&self, commands: &[String]) -> Result<()> {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut args = vec!["admin", dir.as_str()];
        args.extend(commands.iter().map(String::as_str));
        let deadline = Instant::now() + secs(60);
        loop {
            match crate::apache::run(&args) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("no master registered") => {
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops Apache (`apache.sh stop`: SIGTERM; or SIGKILL of both JVMs) and starts it again on
    /// the same run dir (store) and ports.
    fn restart(&mut self, how: Stop) -> Result<()> {
        let dir = self.dir.to_string_lossy().into_owned();
        match how {
            Stop::Graceful => {
                crate::apache::run(&["stop", &dir])?;
            }
            Stop::Kill => {
                let pids: Vec<i32> =
                    ["PROXY_PID", "NAMESRV_PID"].iter().filter_map(|k| self.var(k).parse().ok()).collect();
                for &pid in &pids {
                    // SAFETY: kill(2) of the JVMs apache.sh started for us (pids from apache.env).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let deadline = Instant::now() + secs(20);
                while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let namesrv_port = self.var("NAMESRV_ADDR").rsplit(':').next().unwrap_or("").to_string();
        let ports = [
            ("--grpc-port", self.var("GRPC_PORT").to_string()),
            ("--namesrv-port", namesrv_port),
            ("--broker-port", self.var("BROKER_PORT").to_string()),
            ("--remoting-port", self.var("REMOTING_PORT").to_string()),
        ];
        self.start(&ports)?;
        // ready for clients once the broker is registered again
        self.admin(&["group types_restart_probe".to_string()])
    }

    fn log_tail(&self, lines: usize) -> String {
        let logs = self.dir.join("home-proxy/logs/rocketmqlogs");
        ["proxy.log", "broker.log"]
            .iter()
            .map(|f| format!("--- apache {f} (tail)\n{}", tail_file(&logs.join(f), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// --------------------------------------------------------------------------------- the context

// One value per scenario run: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Broker {
    Gateway(Ctx),
    Apache { apache: MutexGuard<'static, ApacheRun>, dir: Option<tempfile::TempDir> },
}

/// One scenario's broker (a gateway of its own, or the shared Apache), the SDK whose driver
/// it runs, and the temp dir with the drivers' output.
pub struct TypesCtx {
    pub test: &'static str,
    pub sdk: Sdk,
    pub target: Target,
    deadline: Instant,
    broker: Broker,
}

/// A driver's outcome and its RESULT fields (parsed here as JSON: the message-type fields
/// are not all in [`sdk::Report`]'s shape).
pub struct Driver {
    pub outcome: Outcome,
    pub fields: serde_json::Map<String, Value>,
}

impl Driver {
    pub fn ok(&self) -> bool {
        self.fields.get("ok").and_then(Value::as_bool).unwrap_or(false)
    }

    pub fn flag(&self, key: &str) -> Option<bool> {
        self.fields.get(key).and_then(Value::as_bool)
    }

    pub fn num(&self, key: &str) -> i64 {
        self.fields.get(key).and_then(Value::as_i64).unwrap_or(0)
    }

    pub fn opt_num(&self, key: &str) -> Option<i64> {
        self.fields.get(key).and_then(Value::as_i64)
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn strings(&self, key: &str) -> Vec<String> {
        let list = self.fields.get(key).and_then(Value::as_array);
        list.map(|a| a.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect())
            .unwrap_or_default()
    }

    pub fn nums(&self, key: &str) -> BTreeMap<String, i64> {
        let map = self.fields.get(key).and_then(Value::as_object);
        map.map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_i64()?))).collect()).unwrap_or_default()
    }

    pub fn texts(&self, key: &str) -> BTreeMap<String, String> {
        let map = self.fields.get(key).and_then(Value::as_object);
        map.map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default()
    }
}

impl TypesCtx {
    /// The target of `RMQ_TYPES_TARGET` for `sdk`, or `None` (skip, with a banner) if the SDK
    /// or the gateway binary is missing; `RMQ_E2E_REQUIRED=1` fails instead.
    pub fn start(test: &'static str, sdk: Sdk) -> Option<TypesCtx> {
        let target = Target::from_env();
        let broker = match target {
            Target::Gateway => Broker::Gateway(Ctx::start(test, &[sdk])?),
            Target::Apache => {
                if let Some(missing) = sdk.missing() {
                    let text = format!("SKIPPED {test}: {missing}");
                    if std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1") {
                        panic!("{text} (RMQ_E2E_REQUIRED=1)");
                    }
                    shout(&text);
                    return None;
                }
                let apache = ApacheRun::shared();
                let dir = tempfile::Builder::new().prefix(&format!("rmq-types-{test}-")).tempdir().unwrap();
                Broker::Apache { apache, dir: Some(dir) }
            }
        };
        Some(TypesCtx { test, sdk, target, deadline: Instant::now() + TEST_BUDGET, broker })
    }

    /// The temp dir of this scenario (drivers' output, input files).
    pub fn path(&self) -> &Path {
        match &self.broker {
            Broker::Gateway(ctx) => ctx.path(),
            Broker::Apache { dir, .. } => dir.as_ref().map(|d| d.path()).unwrap(),
        }
    }

    /// The broker's gRPC endpoint (`host:port`).
    pub fn endpoint(&self) -> String {
        match &self.broker {
            Broker::Gateway(ctx) => ctx.gateway.endpoint(),
            Broker::Apache { apache, .. } => apache.endpoint(),
        }
    }

    fn broker_log(&self) -> String {
        match &self.broker {
            Broker::Gateway(ctx) => format!("--- gateway log (tail):\n{}", ctx.gateway.log_tail(60)),
            Broker::Apache { apache, .. } => apache.log_tail(40),
        }
    }

    /// Fails the test with the drivers' output and the broker's log tail.
    pub fn fail(&self, what: &str, drivers: &[&Driver]) -> ! {
        let outputs: String = drivers.iter().map(|d| d.outcome.describe()).collect();
        panic!("{} [{} {}]: {what}\n{outputs}{}", self.test, self.target.name(), self.sdk.name(), self.broker_log())
    }

    /// Fails with every problem found, if any.
    fn check(&self, problems: &[String], drivers: &[&Driver]) {
        if !problems.is_empty() {
            self.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), drivers);
        }
    }

    /// A fresh topic of `kind` with `queues` queues (Apache: always 8).
    pub fn topic(&self, kind: TopicType, queues: u32) -> String {
        let kind_name = match kind {
            TopicType::Normal => "NORMAL",
            TopicType::Fifo => "FIFO",
            TopicType::Delay => "DELAY",
            TopicType::Transaction => "TRANSACTION",
        };
        self.create_topic(kind_name, queues)
    }

    /// A fresh PRIORITY topic (RIP-80) with `queues` queues; gateway only (Apache 5.5.0 has no
    /// such type: a scenario using it must not run there).
    pub fn priority_topic(&self, queues: u32) -> String {
        assert!(matches!(self.broker, Broker::Gateway(_)), "{}: PRIORITY topics are gateway-only", self.test);
        self.create_topic("PRIORITY", queues)
    }

    /// A fresh topic whose message type is `kind_name` (as the admin API and apache.sh spell it).
    fn create_topic(&self, kind_name: &str, queues: u32) -> String {
        let name = unique("topic", self.test);
        match &self.broker {
            Broker::Gateway(ctx) => {
                let body = format!(r#"{{"messageType":"{kind_name}","queueNums":{queues}}}"#);
                self.admin_put(ctx, &format!("/api/v1/topics/{name}"), &body);
            }
            Broker::Apache { apache, .. } => apache
                .admin(&[format!("topic {name} {kind_name}")])
                .unwrap_or_else(|e| panic!("{}: creating topic {name}: {e:#}", self.test)),
        }
        name
    }

    /// A fresh consumer group, orderly (`fifo`) or not, with `max_retry` retries if given.
    pub fn group(&self, fifo: bool, max_retry: Option<i32>) -> String {
        self.group_with_backoff(fifo, max_retry, None)
    }

    /// [`TypesCtx::group`] with the group's own retry delays (`retryBackoff`; gateway only).
    pub fn group_with_backoff(&self, fifo: bool, max_retry: Option<i32>, backoff: Option<&str>) -> String {
        let name = unique("group", self.test);
        match &self.broker {
            Broker::Gateway(ctx) => {
                let retry = max_retry.map(|n| format!(r#","retryMaxTimes":{n}"#)).unwrap_or_default();
                let backoff = backoff.map(|b| format!(r#","retryBackoff":"{b}""#)).unwrap_or_default();
                let body = format!(r#"{{"consumeMessageOrderly":{fifo}{retry}{backoff}}}"#);
                self.admin_put(ctx, &format!("/api/v1/groups/{name}"), &body);
            }
            Broker::Apache { apache, .. } => {
                assert!(backoff.is_none(), "{}: retry delays are set on the gateway only", self.test);
                let mut spec = format!("group {name}");
                if fifo {
                    spec.push_str(" --fifo");
                }
                if let Some(n) = max_retry {
                    spec.push_str(&format!(" --max-retry {n}"));
                }
                apache.admin(&[spec]).unwrap_or_else(|e| panic!("{}: creating group {name}: {e:#}", self.test));
            }
        }
        name
    }

    /// A fresh BROADCASTING consumer group (gateway only).
    pub fn broadcast_group(&self) -> String {
        let Broker::Gateway(ctx) = &self.broker else {
            panic!("{}: broadcast groups are configured on the gateway only", self.test);
        };
        let name = unique("group", self.test);
        self.admin_put(ctx, &format!("/api/v1/groups/{name}"), r#"{"messageModel":"BROADCASTING"}"#);
        name
    }

    /// `names.len()` fresh non-orderly consumer groups with the default retries, named after
    /// `names` (on Apache in one admin call).
    pub fn plain_groups(&self, names: &[&str]) -> Vec<String> {
        let groups: Vec<String> = names.iter().map(|n| unique("group", n)).collect();
        match &self.broker {
            Broker::Gateway(ctx) => {
                for g in &groups {
                    self.admin_put(ctx, &format!("/api/v1/groups/{g}"), r#"{"consumeMessageOrderly":false}"#);
                }
            }
            Broker::Apache { apache, .. } => {
                let specs: Vec<String> = groups.iter().map(|g| format!("group {g}")).collect();
                apache.admin(&specs).unwrap_or_else(|e| panic!("{}: creating groups: {e:#}", self.test));
            }
        }
        groups
    }

    /// One admin API call on the gateway (not on Apache): HTTP status and body.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let Broker::Gateway(ctx) = &self.broker else { panic!("{}: the admin API is the gateway's", self.test) };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ctx.gateway.http_port));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(crate::client::http(addr, method, path, body))
    }

    fn admin_put(&self, ctx: &Ctx, path: &str, body: &str) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ctx.gateway.http_port));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (status, answer) = rt.block_on(crate::client::http(addr, "PUT", path, Some(body)));
        assert!((200..300).contains(&status), "{}: PUT {path} {body} -> {status} {answer}", self.test);
    }

    /// Starts a driver in `mode` (`--count count`, `--timeout-secs timeout`, then `extra`).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &self,
        mode: &'static str,
        topic: &str,
        group: &str,
        prefix: &str,
        count: usize,
        timeout: Duration,
        extra: &[&str],
    ) -> Running {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let run = Run {
            sdk: self.sdk,
            mode: Mode::Named(mode),
            endpoint: self.endpoint(),
            topic: topic.to_string(),
            group: group.to_string(),
            count,
            prefix: prefix.to_string(),
            tag: "types".to_string(),
            timeout,
            kill_after: (timeout + DRIVER_SLACK).min(left).max(secs(5)),
            extra_args: extra.iter().map(|a| a.to_string()).collect(),
        };
        sdk::spawn(&run, self.path()).unwrap_or_else(|e| panic!("{}: {e:#}", self.test))
    }

    /// Waits for a driver started by [`TypesCtx::spawn`]; fails if it printed no RESULT or ran
    /// another SDK release than `sdk` stands for.
    pub fn finish(&self, running: Running) -> Driver {
        let outcome = running.wait().unwrap_or_else(|e| panic!("{}: {e:#}", self.test));
        let fields = outcome.result_line.as_deref().and_then(|l| serde_json::from_str::<Value>(l).ok());
        let fields = match fields {
            Some(Value::Object(map)) => map,
            _ => {
                let d = Driver { outcome, fields: Default::default() };
                self.fail("the driver printed no RESULT line", &[&d]);
            }
        };
        let d = Driver { outcome, fields };
        if let Some(want) = self.sdk.version()
            && d.text("sdk_version") != Some(want)
        {
            self.fail(&format!("driver ran SDK version {:?}, expected {want}", d.text("sdk_version")), &[&d]);
        }
        d
    }

    /// [`TypesCtx::spawn`] and [`TypesCtx::finish`].
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        mode: &'static str,
        topic: &str,
        group: &str,
        prefix: &str,
        count: usize,
        timeout: Duration,
        extra: &[&str],
    ) -> Driver {
        self.finish(self.spawn(mode, topic, group, prefix, count, timeout, extra))
    }

    /// Stops the broker `how` and starts it again on the same data (and ports); returns how
    /// long it was away.
    pub fn restart(&mut self, how: Stop) -> Duration {
        let t0 = Instant::now();
        let test = self.test;
        match &mut self.broker {
            Broker::Gateway(ctx) => {
                ctx.gateway.stop(how).unwrap_or_else(|e| panic!("{test}: stop: {e:#}"));
                ctx.gateway.restart().unwrap_or_else(|e| panic!("{test}: restart: {e:#}"));
            }
            Broker::Apache { apache, .. } => {
                apache.restart(how).unwrap_or_else(|e| panic!("{test}: Apache restart: {e:#}"));
            }
        }
        t0.elapsed()
    }
}

impl Drop for TypesCtx {
    fn drop(&mut self) {
        // The gateway's Ctx keeps its own dir on failure; the Apache case keeps the drivers' one.
        if let Broker::Apache { dir, .. } = &mut self.broker
            && (std::thread::panicking() || std::env::var_os("RMQ_E2E_KEEP").is_some())
            && let Some(dir) = dir.take()
        {
            shout(&format!("{}: driver logs kept in {}", self.test, dir.keep().display()));
        }
    }
}

// ----------------------------------------------------------------------------------- checks

/// A producer run must have sent `n` messages; returns their ids.
fn check_sent(ctx: &TypesCtx, d: &Driver, n: usize) -> Vec<String> {
    let ids = d.strings("ids");
    if !d.ok() || d.num("sent") as usize != n || ids.len() != n {
        ctx.fail(&format!("sent {} of {n} ({} ids), errors {:?}", d.num("sent"), ids.len(), d.strings("errors")), &[d]);
    }
    ids
}

/// What a broker restart during a FIFO consumption may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restarted {
    /// no restart: every message exactly once, in order, one at a time per group
    No,
    /// a message whose ack the restart lost may come again (and only then may a SUCCESS be
    /// out of order: one per redelivery), still one at a time per group
    AcksLost,
    /// also the broker's record of what is in flight is lost (Apache after SIGKILL: it hands
    /// out again messages a consumer is still processing), so overlaps are only reported
    InFlightLost,
}

/// What a fifo-consume run got wrong: not all `expect` (group, seq) consumed with SUCCESS, a
/// group's messages out of order or two in flight at once, duplicates, beyond what `restarted`
/// allows.
fn fifo_problems(d: &Driver, expect: usize, restarted: Restarted) -> Vec<String> {
    let mut problems = Vec::new();
    if !d.ok() || d.num("succeeded") as usize != expect {
        problems.push(format!("succeeded {} of {expect} (ok={})", d.num("succeeded"), d.ok()));
    }
    let duplicates = d.strings("duplicates");
    let reorderings = d.num("reorderings");
    if restarted == Restarted::No {
        if reorderings != 0 {
            problems.push(format!("{reorderings} reorderings"));
        }
        if !duplicates.is_empty() {
            problems.push(format!("duplicates {duplicates:?}"));
        }
    } else if reorderings > duplicates.len() as i64 {
        problems.push(format!("{reorderings} reorderings, more than the {} redeliveries", duplicates.len()));
    }
    if d.num("overlaps") != 0 && restarted != Restarted::InFlightLost {
        problems.push(format!("{} overlaps (two messages of one group in flight at once)", d.num("overlaps")));
    }
    problems
}

/// The latest and the median of the groups' done times (ms).
fn done_summary(done: &BTreeMap<String, i64>) -> (i64, i64) {
    let mut v: Vec<i64> = done.values().copied().collect();
    v.sort_unstable();
    (v.last().copied().unwrap_or(0), percentile(&v, 50))
}

/// The delay d of a delay message's body `{prefix}|{d}|{deliver_at}|{j}`.
fn body_delay(body: &str) -> Option<i64> {
    match body.split('|').collect::<Vec<_>>().as_slice() {
        [_, d, _, _] => d.parse().ok(),
        _ => None,
    }
}

/// Arrival checks of a timed-consume run for the delay messages `deliver_at` (id → due ms)
/// produced by delay-produce: each received id is one of them, none arrived more than the
/// target's precision before it was due, the delivery timestamp (where the SDK shows it) is
/// the one sent, none came twice unless `redelivery_allowed` (after a crash). Returns the
/// problems and each id's lateness (ms after it was due; for a delay <= 0, after it was sent).
fn arrival_problems(
    ctx: &TypesCtx,
    consumed: &Driver,
    deliver_at: &BTreeMap<String, i64>,
    redelivery_allowed: bool,
) -> (Vec<String>, BTreeMap<String, i64>) {
    let mut problems = Vec::new();
    let mut lateness = BTreeMap::new();
    let received_at = consumed.nums("received_at");
    let bodies = consumed.texts("bodies");
    let stamps = consumed.nums("delivery_timestamp");
    for (id, &at) in &received_at {
        let Some(&due) = deliver_at.get(id) else {
            problems.push(format!("received {id}, which was not sent (body {:?})", bodies.get(id)));
            continue;
        };
        let delay = bodies.get(id).and_then(|b| body_delay(b)).unwrap_or(0);
        // a message due in the past is due when it was sent
        let effective_due = due.max(due - delay);
        if at < due - ctx.target.allowed_early_ms() {
            problems.push(format!("{id} (delay {delay} ms) arrived {} ms before it was due", due - at));
        }
        if let Some(&stamp) = stamps.get(id)
            && stamp != due
        {
            problems.push(format!("{id}: delivery timestamp {stamp}, sent {due}"));
        }
        lateness.insert(id.clone(), at - effective_due);
    }
    if !redelivery_allowed && !consumed.strings("duplicates").is_empty() {
        problems.push(format!("delivered more than once: {:?}", consumed.strings("duplicates")));
    }
    (problems, lateness)
}

fn lateness_figures(lateness: &BTreeMap<String, i64>) -> String {
    let mut v: Vec<i64> = lateness.values().copied().collect();
    v.sort_unstable();
    format!(
        "lateness p50={} p99={} max={} min={} ms",
        percentile(&v, 50),
        percentile(&v, 99),
        v.last().copied().unwrap_or(0),
        v.first().copied().unwrap_or(0)
    )
}

// ---------------------------------------------------------------------------------- scenarios

/// a) FIFO order: 48 messages in 8 groups on a FIFO topic with 2 queues, consumed by 2
/// PushConsumers of an orderly group (retryMaxTimes 3) whose listener fails the first delivery
/// of every 4th message of a group. Every message is consumed once with SUCCESS, each group
/// in order, never two of a group at once; exactly the 8 failed messages were retried.
pub fn fifo_order(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let (n, groups, fail_every) = (48, 8, 4);
    let topic = ctx.topic(TopicType::Fifo, 2);
    let group = ctx.group(true, Some(FIFO_MAX_RETRY));
    let produced = ctx.run("fifo-produce", &topic, "", "fo", n, secs(30), &["--groups", &groups.to_string()]);
    check_sent(&ctx, &produced, n);
    let args = ["--consumers", "2", "--fail-every", &fail_every.to_string()];
    let consumed = ctx.run("fifo-consume", &topic, &group, "fo", n, secs(60), &args);
    let mut problems = fifo_problems(&consumed, n, Restarted::No);
    let want_failed = (0..n).filter(|i| (i / groups + 1) % fail_every == 0).count() as i64;
    if consumed.num("failed_on_purpose") != want_failed {
        problems.push(format!("failed on purpose {}, expected {want_failed}", consumed.num("failed_on_purpose")));
    }
    if consumed.num("max_delivery_attempt") < 2 {
        problems.push("no retry seen (max delivery attempt < 2)".into());
    }
    let (done_max, done_p50) = done_summary(&consumed.nums("group_done_ms"));
    figures(
        &ctx,
        "fifo",
        &format!(
            "n={n} groups={groups} succeeded={} reorderings={} overlaps={} duplicates={} failed_on_purpose={} \
             max_attempt={} calls={} groups_done p50={done_p50} max={done_max} ms",
            consumed.num("succeeded"),
            consumed.num("reorderings"),
            consumed.num("overlaps"),
            consumed.strings("duplicates").len(),
            consumed.num("failed_on_purpose"),
            consumed.num("max_delivery_attempt"),
            consumed.num("received"),
        ),
    );
    ctx.check(&problems, &[&consumed]);
}

/// b) FIFO head-of-line: 48 messages in 16 groups on a FIFO topic with ONE queue (Apache: 8,
/// so only the groups that hash to the poison group's queue share it), one poison group whose
/// every delivery fails (it retries, then goes to the DLQ). The other 15 groups must all be
/// consumed, in order. A group "waited for the poison" if it finished more than
/// [`HOL_MARGIN_MS`] after the poison group's first call: none may on the gateway; Apache
/// blocks the whole queue until the poison message is given up, which is measured and printed.
pub fn fifo_head_of_line(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let (n, groups) = (48, 16);
    let poison = "hol-g0";
    let expect = n - n / groups;
    let topic = ctx.topic(TopicType::Fifo, 1);
    let group = ctx.group(true, Some(FIFO_MAX_RETRY));
    // The consumer runs first, so it gets the messages as they come (not the whole queue in
    // one batch, which a broker could hand out before the poison message blocks anything).
    let args = ["--consumers", "2", "--poison-group", poison, "--expect", &expect.to_string()];
    let consumer = ctx.spawn("fifo-consume", &topic, &group, "hol", n, secs(75), &args);
    std::thread::sleep(CONSUMER_WARMUP);
    let produced = ctx.run("fifo-produce", &topic, "", "hol", n, secs(30), &["--groups", &groups.to_string()]);
    let consumed = ctx.finish(consumer);
    check_sent(&ctx, &produced, n);
    let mut problems = fifo_problems(&consumed, expect, Restarted::No);
    let done = consumed.nums("group_done_ms");
    if done.contains_key(poison) {
        problems.push("the poison group succeeded".into());
    }
    if consumed.num("poison_calls") < 1 {
        problems.push("the poison group was never delivered".into());
    }
    // Beyond the contract (Java driver): when the poison group's calls began and ended.
    let first = consumed.opt_num("poison_first_ms");
    let last = consumed.opt_num("poison_last_ms");
    let waited: Vec<(&String, &i64)> = match first {
        Some(f) => done.iter().filter(|&(_, &t)| t > f + HOL_MARGIN_MS).collect(),
        None => Vec::new(),
    };
    let (done_max, done_p50) = done_summary(&done);
    let span = match (first, last) {
        (Some(f), Some(l)) => format!("{f}..{l} ms ({} ms)", l - f),
        _ => "n/a (driver does not report it)".into(),
    };
    figures(
        &ctx,
        "fifo-head-of-line",
        &format!(
            "groups={groups} succeeded={} others_done p50={done_p50} max={done_max} ms; poison calls={} span {span}; \
             groups that waited for the poison: {} {:?}",
            consumed.num("succeeded"),
            consumed.num("poison_calls"),
            waited.len(),
            waited.iter().map(|(g, t)| format!("{g}@{t}")).collect::<Vec<_>>()
        ),
    );
    if !ctx.target.blocks_fifo_queue() && !waited.is_empty() {
        problems.push(format!("{} groups waited for the poison group's retries: {waited:?}", waited.len()));
    }
    ctx.check(&problems, &[&consumed]);
}

/// c) Delay: one message per delay -5 s, 0, 1 s, 3 s, 6 s, far future (must not arrive) and
/// 100 days (must be refused, the driver going on). A SimpleConsumer started before gets the
/// five due ones, none before its delivery time (Apache: its 1 s precision), the delivery
/// timestamp as sent, and lingers 2 s after the last; the far one never comes.
pub fn delay(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let far = ctx.target.far_future_ms();
    let near = [-5000, 0, 1000, 3000, 6000];
    let delays: Vec<String> = near.iter().chain(&[far, BEYOND_MAX_MS]).map(i64::to_string).collect();
    let topic = ctx.topic(TopicType::Delay, 2);
    let group = ctx.group(false, None);
    let consumer = ctx.spawn("timed-consume", &topic, &group, "dl", near.len(), secs(45), &["--linger-ms", "2000"]);
    std::thread::sleep(CONSUMER_WARMUP);
    let produced = ctx.run("delay-produce", &topic, "", "dl", 1, secs(30), &["--delays-ms", &delays.join(",")]);
    let consumed = ctx.finish(consumer);

    let mut problems = Vec::new();
    let deliver_at = produced.nums("deliver_at");
    let rejected = produced.texts("rejected");
    let beyond = BEYOND_MAX_MS.to_string();
    if !produced.ok() || produced.num("sent") as usize != near.len() + 1 {
        problems.push(format!("sent {} of {} accepted delays", produced.num("sent"), near.len() + 1));
    }
    if rejected.keys().collect::<Vec<_>>() != [&beyond] {
        problems.push(format!("refused {rejected:?}, expected only the {BEYOND_MAX_MS} ms delay"));
    }
    let far_ids: BTreeSet<&String> =
        deliver_at.iter().filter(|&(_, &at)| at > now_ms() + 3_600_000).map(|(id, _)| id).collect();
    let received: BTreeSet<String> = consumed.strings("ids").into_iter().collect();
    if !consumed.ok() || received.len() != near.len() {
        problems.push(format!("received {} of the {} due messages", received.len(), near.len()));
    }
    if let Some(id) = far_ids.iter().find(|id| received.contains(**id)) {
        problems.push(format!("the far-future message {id} arrived"));
    }
    let (arrival, lateness) = arrival_problems(&ctx, &consumed, &deliver_at, false);
    problems.extend(arrival);
    figures(
        &ctx,
        "delay",
        &format!(
            "received {}/{} due, far-future received={} refused(100d)={:?}; {}",
            received.len(),
            near.len(),
            far_ids.iter().any(|id| received.contains(*id)),
            rejected.get(&beyond).map(|e| e.chars().take(90).collect::<String>()),
            lateness_figures(&lateness)
        ),
    );
    ctx.check(&problems, &[&produced, &consumed]);
}

/// d) Recall: A and B due in 5 s, A recalled with its send receipt's handle; a SimpleConsumer
/// gets B (not before it is due) and, lingering 4 s more, never A. An SDK release without
/// recall reports `recall_supported: false` and the scenario stops there.
pub fn recall(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let topic = ctx.topic(TopicType::Delay, 2);
    let group = ctx.group(false, None);
    let recalled = ctx.run("recall", &topic, "", "rc", 1, secs(30), &["--delay-ms", "5000"]);
    if recalled.flag("recall_supported") == Some(false) {
        figures(&ctx, "recall", "recall not supported by this SDK release (nothing sent)");
        if !recalled.ok() {
            ctx.fail("recall_supported=false must come with ok=true", &[&recalled]);
        }
        return;
    }
    if !recalled.ok() || recalled.flag("recall_ok") != Some(true) {
        ctx.fail("the recall failed", &[&recalled]);
    }
    let (a, b) = (recalled.text("recalled_id").unwrap_or(""), recalled.text("kept_id").unwrap_or(""));
    let consumed = ctx.run("timed-consume", &topic, &group, "rc", 1, secs(40), &["--linger-ms", "4000"]);
    let mut problems = Vec::new();
    let ids = consumed.strings("ids");
    if !consumed.ok() || ids != [b] {
        problems.push(format!("received {ids:?}, expected only B {b} (A {a} was recalled)"));
    }
    let received_at = consumed.nums("received_at").get(b).copied();
    let due = consumed.nums("delivery_timestamp").get(b).copied();
    let early = match (received_at, due) {
        (Some(r), Some(d)) => Some(d - r),
        _ => None,
    };
    if let Some(e) = early
        && e > ctx.target.allowed_early_ms()
    {
        problems.push(format!("B arrived {e} ms before it was due"));
    }
    figures(
        &ctx,
        "recall",
        &format!(
            "recall_ok=true, B received={} (lateness {:?} ms), A received={}",
            ids.iter().any(|i| i == b),
            early.map(|e| -e),
            ids.iter().any(|i| i == a)
        ),
    );
    ctx.check(&problems, &[&recalled, &consumed]);
}

/// e1) Transactions, commit and rollback. Commit: 10 transactional messages held open 3 s and
/// then committed, while a SimpleConsumer runs: it gets all 10, none before its commit
/// returned (less [`COMMIT_SKEW_MS`]). Rollback: 10 messages rolled back; a consumer
/// listening 6 s gets nothing.
pub fn transactions_commit_rollback(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let n = 10;
    let topic = ctx.topic(TopicType::Transaction, 2);
    let group = ctx.group(false, None);
    let consumer = ctx.spawn("timed-consume", &topic, &group, "txc", n, secs(45), &[]);
    std::thread::sleep(CONSUMER_WARMUP);
    let args = ["--resolution", "commit", "--hold-ms", "3000"];
    let committed = ctx.run("tx-produce", &topic, "", "txc", n, secs(30), &args);
    let consumed = ctx.finish(consumer);
    let ids = check_sent(&ctx, &committed, n);
    let ended_at = committed.nums("ended_at");
    let received_at = consumed.nums("received_at");
    let mut problems = Vec::new();
    if ended_at.len() != n {
        problems.push(format!("{} of {n} commits returned", ended_at.len()));
    }
    let got: BTreeSet<&String> = received_at.keys().collect();
    if !consumed.ok() || got != ids.iter().collect() {
        problems.push(format!("received {} of the {n} committed messages (or others)", got.len()));
    }
    let mut after_commit: Vec<i64> = Vec::new();
    for (id, &at) in &received_at {
        if let Some(&end) = ended_at.get(id) {
            after_commit.push(at - end);
            if at < end - COMMIT_SKEW_MS {
                problems.push(format!("{id} received {} ms before its commit returned", end - at));
            }
        }
    }
    after_commit.sort_unstable();

    let rb_topic = ctx.topic(TopicType::Transaction, 2);
    let rb_group = ctx.group(false, None);
    let rolled_back = ctx.run("tx-produce", &rb_topic, "", "txr", n, secs(30), &["--resolution", "rollback"]);
    check_sent(&ctx, &rolled_back, n);
    let args = ["--expect", "0", "--linger-ms", "6000"];
    let listened = ctx.run("timed-consume", &rb_topic, &rb_group, "txr", n, secs(30), &args);
    if rolled_back.nums("ended_at").len() != n {
        problems.push(format!("{} of {n} rollbacks returned", rolled_back.nums("ended_at").len()));
    }
    if !listened.strings("ids").is_empty() {
        problems.push(format!("rolled-back messages delivered: {:?}", listened.strings("ids")));
    }
    figures(
        &ctx,
        "tx-commit-rollback",
        &format!(
            "commit: received {}/{n}, received_at - commit_returned min={} max={} ms; rollback: received {} in 6 s",
            received_at.len(),
            after_commit.first().copied().unwrap_or(0),
            after_commit.last().copied().unwrap_or(0),
            listened.strings("ids").len()
        ),
    );
    ctx.check(&problems, &[&committed, &consumed, &rolled_back, &listened]);
}

/// The orphan part of e2) and f): a transactional producer sends 5 messages and exits without
/// ending them; (`restart`: the broker is stopped so and restarted;) another process of the
/// same topic is asked about each and commits it; then all 5 are consumed, none before its check.
fn orphan_flow(ctx: &mut TypesCtx, scenario: &str, restart: Option<Stop>) {
    let n = 5;
    let topic = ctx.topic(TopicType::Transaction, 2);
    let group = ctx.group(false, None);
    let orphaned = ctx.run("tx-produce", &topic, "", "txo", n, secs(30), &["--resolution", "orphan"]);
    let ids = check_sent(ctx, &orphaned, n);
    let orphaned_at = now_ms();
    let away = restart.map(|how| ctx.restart(how));
    let restarted_at = now_ms();
    let checker = ctx.run("tx-check", &topic, "", "txo", n, secs(75), &[]);
    let consumed = ctx.run("timed-consume", &topic, &group, "txo", n, secs(30), &[]);

    let mut problems = Vec::new();
    let checked_at = checker.nums("checked_at");
    if !checker.ok() || checked_at.keys().collect::<BTreeSet<_>>() != ids.iter().collect() {
        problems.push(format!("checked {} of the {n} orphans (or others): {checked_at:?}", checked_at.len()));
    }
    let received_at = consumed.nums("received_at");
    if !consumed.ok() || received_at.keys().collect::<BTreeSet<_>>() != ids.iter().collect() {
        problems.push(format!("received {} of the {n} committed orphans (or others)", received_at.len()));
    }
    for (id, &at) in &received_at {
        if let Some(&checked) = checked_at.get(id)
            && at < checked
        {
            problems.push(format!("{id} received {} ms before it was checked", checked - at));
        }
    }
    let mut check_delay: Vec<i64> = checked_at.values().map(|&c| c - orphaned_at).collect();
    check_delay.sort_unstable();
    let restart_note = match (restart, away) {
        (Some(how), Some(d)) => format!(
            "{how:?} restart took {} ms, first check {} ms after it; ",
            d.as_millis(),
            check_delay.first().map_or(0, |c| c + orphaned_at - restarted_at)
        ),
        _ => String::new(),
    };
    figures(
        ctx,
        scenario,
        &format!(
            "{restart_note}checked {}/{n} (check_calls {}), checked after the producer died: p50={} max={} ms; consumed {}/{n}",
            checked_at.len(),
            checker.num("check_calls"),
            percentile(&check_delay, 50),
            check_delay.last().copied().unwrap_or(0),
            received_at.len()
        ),
    );
    ctx.check(&problems, &[&orphaned, &checker, &consumed]);
}

/// e2) Orphaned transactions: see [`orphan_flow`].
pub fn transactions_orphan(test: &'static str, sdk: Sdk) {
    let Some(mut ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    orphan_flow(&mut ctx, "tx-orphan", None);
}

/// f) An orphaned transaction sent before a broker stop (`how`) is checked after the
/// restart, committed and consumed.
pub fn orphan_across_restart(test: &'static str, sdk: Sdk, how: Stop) {
    let Some(mut ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    orphan_flow(&mut ctx, &format!("tx-orphan-{}", stop_name(how)), Some(how));
}

fn stop_name(how: Stop) -> &'static str {
    match how {
        Stop::Graceful => "sigterm",
        Stop::Kill => "sigkill",
    }
}

/// f) FIFO order across a broker stop (`how`) and restart in the middle of consumption: 48
/// messages in 8 groups, 2 PushConsumers holding each message 2 s (12 s for all, once
/// started); the broker goes away 10 s after the consumer's spawn (a JVM may take several
/// seconds to start on a loaded machine: the figures show where the stop fell). All are
/// consumed, each group in order, never two of a group at once (Apache after SIGKILL: only
/// reported); a message whose ack the stop lost may come again (and only that).
pub fn fifo_across_restart(test: &'static str, sdk: Sdk, how: Stop) {
    let Some(mut ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let (n, groups) = (48, 8);
    let topic = ctx.topic(TopicType::Fifo, 2);
    let group = ctx.group(true, Some(FIFO_MAX_RETRY));
    let produced = ctx.run("fifo-produce", &topic, "", "fr", n, secs(30), &["--groups", &groups.to_string()]);
    check_sent(&ctx, &produced, n);
    // A delivery whose response the stop cut off (the consumer never saw it) comes back one
    // invisible period (60 s, gateway and Apache alike) after the restart: allow for it.
    let timeout = secs(60) + ctx.target.restart_allowance() + secs(60);
    let consumer =
        ctx.spawn("fifo-consume", &topic, &group, "fr", n, timeout, &["--consumers", "2", "--hold-ms", "2000"]);
    let spawned = Instant::now();
    std::thread::sleep(secs(10));
    let stopped_after = spawned.elapsed();
    let away = ctx.restart(how);
    let consumed = ctx.finish(consumer);
    // The gateway journals its deliveries: even a SIGKILL must not hand out a message that is
    // still being processed. Apache forgets them.
    let restarted = match (how, ctx.target) {
        (Stop::Kill, Target::Apache) => Restarted::InFlightLost,
        _ => Restarted::AcksLost,
    };
    let mut problems = fifo_problems(&consumed, n, restarted);
    let (done_max, done_p50) = done_summary(&consumed.nums("group_done_ms"));
    // group_done_ms counts from the consumer's start, which is after its spawn: a group done
    // later than the stop (from the spawn) certainly finished after it.
    if (done_max as u128) < stopped_after.as_millis() {
        problems.push(format!(
            "consumption ended ({done_max} ms) before the broker stopped ({} ms): nothing was tested",
            stopped_after.as_millis()
        ));
    }
    if how == Stop::Graceful && !consumed.strings("duplicates").is_empty() {
        shout(&format!("{test}: redeliveries across a graceful stop: {:?}", consumed.strings("duplicates")));
    }
    figures(
        &ctx,
        &format!("fifo-{}", stop_name(how)),
        &format!(
            "stopped {} ms after the consumer's spawn, away {} ms; succeeded={} reorderings={} overlaps={} \
             redeliveries={} groups_done p50={done_p50} max={done_max} ms",
            stopped_after.as_millis(),
            away.as_millis(),
            consumed.num("succeeded"),
            consumed.num("reorderings"),
            consumed.num("overlaps"),
            consumed.strings("duplicates").len()
        ),
    );
    ctx.check(&problems, &[&consumed]);
}

/// f) Delay across a broker stop (`how`) and restart: messages due 1 s from now (before the
/// stop), and R + 2 s and R + 5 s (R = the target's restart allowance, so after the restart),
/// and one far in the future. After the restart the later ones arrive, none early; the far
/// one never. A consumer runs throughout (it reconnects). After SIGKILL the message consumed
/// before may come again (its ack may be lost).
pub fn delay_across_restart(test: &'static str, sdk: Sdk, how: Stop) {
    let Some(mut ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let r = ctx.target.restart_allowance().as_millis() as i64;
    let delays = [1000, r + 2000, r + 5000, ctx.target.far_future_ms()];
    let arg: Vec<String> = delays.iter().map(i64::to_string).collect();
    let topic = ctx.topic(TopicType::Delay, 2);
    let group = ctx.group(false, None);
    let timeout = secs(40) + ctx.target.restart_allowance();
    let consumer = ctx.spawn("timed-consume", &topic, &group, "dr", 3, timeout, &["--linger-ms", "2000"]);
    std::thread::sleep(CONSUMER_WARMUP);
    let produced = ctx.run("delay-produce", &topic, "", "dr", 1, secs(30), &["--delays-ms", &arg.join(",")]);
    let deliver_at = produced.nums("deliver_at");
    if !produced.ok() || deliver_at.len() != delays.len() {
        ctx.fail("the delay messages were not all accepted", &[&produced]);
    }
    // stop once the first one is due
    let first_due = deliver_at.values().min().copied().unwrap_or(0);
    std::thread::sleep(Duration::from_millis((first_due + 500 - now_ms()).max(0) as u64));
    let stopped_at = now_ms();
    let away = ctx.restart(how);
    let back_at = now_ms();
    let consumed = ctx.finish(consumer);

    let received = consumed.strings("ids");
    let far: BTreeSet<&String> =
        deliver_at.iter().filter(|&(_, &at)| at > now_ms() + 3_600_000).map(|(id, _)| id).collect();
    let mut problems = Vec::new();
    // The consumer's `ok` is not required: a receive in flight when the gateway went away
    // fails (an SDK error the driver reports, e.g. Go's "Unavailable ... EOF"), and the SDK
    // goes on receiving after the restart. What counts is what arrived.
    if received.len() != 3 {
        problems.push(format!(
            "received {} of the 3 due messages (consumer errors: {:?})",
            received.len(),
            consumed.strings("errors")
        ));
    }
    if received.iter().any(|id| far.contains(id)) {
        problems.push("the far-future message arrived".into());
    }
    // after SIGKILL the message consumed before may be delivered again (its ack may be lost)
    let (arrival, lateness) = arrival_problems(&ctx, &consumed, &deliver_at, how == Stop::Kill);
    problems.extend(arrival);
    let due_after: Vec<i64> = deliver_at.values().filter(|&&at| at > back_at && at < now_ms()).copied().collect();
    figures(
        &ctx,
        &format!("delay-{}", stop_name(how)),
        &format!(
            "stopped at +{} ms after the first was due, away {} ms, {} due after the restart; received {}/3, \
             duplicates {}; {}",
            stopped_at - first_due,
            away.as_millis(),
            due_after.len(),
            received.len(),
            consumed.strings("duplicates").len(),
            lateness_figures(&lateness)
        ),
    );
    if due_after.is_empty() {
        problems.push(format!("the restart took {} ms: no message was due after it", away.as_millis()));
    }
    ctx.check(&problems, &[&produced, &consumed]);
}

/// g) Priority messages (RIP-80), gateway only (Apache 5.5.0 has no PRIORITY topics: skipped
/// with a figures line). 3 messages at each of the priorities 0, 5 and 9 are sent, lowest
/// first, to a PRIORITY topic of 1 queue before any consumer exists; a SimpleConsumer then
/// receives them (up to 16 per receive, so the first receive can take all 9). They must arrive
/// highest priority first — the 9s, then the 5s, then the 0s — each priority in send order,
/// and with the priority they were sent with wherever the SDK shows one. (All 9 start waiting
/// at the first receive, so aging does not reorder them.) An SDK release without a priority
/// API reports `priority_supported: false` and the scenario stops there.
pub fn priority(test: &'static str, sdk: Sdk) {
    let target = Target::from_env();
    if target == Target::Apache {
        figures_line(target, sdk, "priority", "skipped: Apache RocketMQ 5.5.0 has no PRIORITY topics");
        return;
    }
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let (per_level, levels) = (3, [0, 5, 9]);
    let n = per_level * levels.len();
    let topic = ctx.priority_topic(1);
    let group = ctx.group(false, None);
    let arg = levels.map(|p: i64| p.to_string()).join(",");
    let produced = ctx.run("priority-produce", &topic, "", "pr", per_level, secs(30), &["--priorities", &arg]);
    if produced.flag("priority_supported") == Some(false) {
        figures(&ctx, "priority", "priority not supported by this SDK release (nothing sent)");
        if !produced.ok() {
            ctx.fail("priority_supported=false must come with ok=true", &[&produced]);
        }
        return;
    }
    let sent = check_sent(&ctx, &produced, n);
    let sent_priority = produced.nums("priority");
    // Highest priority first; the sort is stable, so each priority keeps its send order.
    let mut expected = sent.clone();
    expected.sort_by_key(|id| std::cmp::Reverse(sent_priority.get(id).copied()));
    let consumed = ctx.run("timed-consume", &topic, &group, "pr", n, secs(30), &[]);

    let ids = consumed.strings("ids");
    let bodies = consumed.texts("bodies");
    // "{priority}.{j}" of each message, from its body `pr|{priority}|{j}`
    let label = |ids: &[String]| -> String {
        let of =
            |id: &String| bodies.get(id).map(|b| b.split_once('|').map_or(b.as_str(), |(_, r)| r).replace('|', "."));
        ids.iter().map(|id| of(id).unwrap_or_else(|| format!("?{id}"))).collect::<Vec<_>>().join(" ")
    };
    let mut problems = Vec::new();
    if !consumed.ok() || ids != expected {
        problems.push(format!("received in the order [{}], expected [{}]", label(&ids), label(&expected)));
    }
    let shown = consumed.nums("priority");
    let mismatched: Vec<_> = shown.iter().filter(|&(id, p)| sent_priority.get(id) != Some(p)).collect();
    for (id, p) in &mismatched {
        problems.push(format!("{id} delivered with priority {p}, sent with {:?}", sent_priority.get(*id)));
    }
    // receipts recorded at the same ms came in one receive
    let receives = consumed.nums("received_at").values().collect::<BTreeSet<_>>().len();
    figures(
        &ctx,
        "priority",
        &format!(
            "sent {n} ({per_level} each at {arg}) before any consumer; received {}/{n} in {receives} receive(s), \
             order [{}]; priority shown on {}/{n}, {} differ from the sent one",
            ids.len(),
            label(&ids),
            shown.len(),
            mismatched.len()
        ),
    );
    ctx.check(&problems, &[&produced, &consumed]);
}
