//! The official-SDK driver programs under `integration-tests/sdk/` (installed into
//! `sdk/.work/` by `sdk/setup.sh`): run one as a child process with a hard timeout and
//! parse the single `RESULT {json}` line it prints.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::gateway_process::{tail_file, wait_with_timeout};

/// One of the official SDKs (the Java one in two versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// crate `rocketmq` 5.0.0 (no PushConsumer, no ChangeInvisibleDuration)
    Rust,
    /// PyPI `rocketmq-python-client` 5.1.2
    Python,
    /// npm `rocketmq-client-nodejs` 1.0.8
    Node,
    /// Maven `org.apache.rocketmq:rocketmq-client-java` 5.2.0 (newest 5.x on Maven Central)
    Java,
    /// Maven `org.apache.rocketmq:rocketmq-client-java` 5.0.7 (the release cloud vendors recommend)
    Java507,
    /// A Spring Boot 3.5.7 app with `org.apache.rocketmq:rocketmq-v5-client-spring-boot-starter`
    /// 2.3.1 (client-java 5.0.7): `RocketMQClientTemplate` sends, `@RocketMQMessageListener`
    /// receives, configured by its `application.yml` (mode `produce-and-consume` or `push-consume`)
    Spring,
    /// Go module `github.com/apache/rocketmq-clients/golang/v5` 5.1.4 (newest the Go module proxy
    /// serves; has a PushConsumer since 5.1.3); driver `sdk/go`, built to `.work/go-bin`
    Go,
}

/// What the driver does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Produce,
    SimpleConsume,
    PushConsume,
    /// one process sends N and receives them (the Spring app: template + listener)
    ProduceAndConsume,
    /// a message-type mode of `sdk/MESSAGE_TYPES.md` (`fifo-produce`, `timed-consume`, ...)
    Named(&'static str),
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::SimpleConsume => "simple-consume",
            Mode::PushConsume => "push-consume",
            Mode::ProduceAndConsume => "produce-and-consume",
            Mode::Named(name) => name,
        }
    }
}

/// `integration-tests/sdk`.
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

fn work_dir() -> PathBuf {
    sdk_dir().join(".work")
}

/// The Go driver (`sdk/go`, built by setup.sh's go step).
fn go_driver() -> PathBuf {
    work_dir().join("go-bin/rmq-sdk-go")
}

/// The Spring Boot app (`sdk/spring`, built by setup.sh's spring step).
fn spring_jar() -> PathBuf {
    work_dir().join("spring-target/rmq-e2e-spring.jar")
}

impl Sdk {
    pub fn name(self) -> &'static str {
        match self {
            Sdk::Rust => "rust",
            Sdk::Python => "python",
            Sdk::Node => "node",
            Sdk::Java => "java",
            Sdk::Java507 => "java-5.0.7",
            Sdk::Spring => "spring",
            Sdk::Go => "go",
        }
    }

    /// The SDK release a driver must report (`sdk_version` in its RESULT), where it reports one.
    pub fn version(self) -> Option<&'static str> {
        match self {
            Sdk::Java => Some("5.2.0"),
            Sdk::Java507 => Some("5.0.7"),
            // the starter's release (its client-java is reported as `client_java_version`)
            Sdk::Spring => Some("2.3.1"),
            Sdk::Go => Some("5.1.4"),
            Sdk::Rust | Sdk::Python | Sdk::Node => None,
        }
    }

    /// `sdk/.work/java/<version>`: the Java driver jar and `classpath.txt` (the SDK jars).
    fn java_dir(self) -> PathBuf {
        work_dir().join("java").join(self.version().unwrap_or("none"))
    }

    /// `None` if the SDK is installed, else why not.
    pub fn missing(self) -> Option<String> {
        let needed = match self {
            Sdk::Rust => work_dir().join("rust-target/debug/rmq-sdk-rust"),
            Sdk::Python => work_dir().join("py-venv/bin/python"),
            Sdk::Node => work_dir().join("node/node_modules/rocketmq-client-nodejs/package.json"),
            Sdk::Java | Sdk::Java507 => self.java_dir().join("classpath.txt"),
            Sdk::Spring => spring_jar(),
            Sdk::Go => go_driver(),
        };
        (!needed.exists()).then(|| {
            format!(
                "{} SDK not installed ({} missing); run integration-tests/sdk/setup.sh",
                self.name(),
                needed.display()
            )
        })
    }

    fn command(self, mode: Mode) -> Command {
        let mut cmd = match self {
            Sdk::Rust => Command::new(work_dir().join("rust-target/debug/rmq-sdk-rust")),
            Sdk::Python => {
                let mut c = Command::new(work_dir().join("py-venv/bin/python"));
                c.arg(sdk_dir().join("python/e2e.py"));
                c
            }
            Sdk::Node => {
                let mut c = Command::new("node");
                c.arg(sdk_dir().join("node/e2e.js"));
                c
            }
            Sdk::Java | Sdk::Java507 => {
                // A missing classpath file makes `java` fail to find the SDK, visibly.
                let deps = std::fs::read_to_string(self.java_dir().join("classpath.txt")).unwrap_or_default();
                let jar = self.java_dir().join("rmq-e2e-java.jar");
                let mut c = Command::new("java");
                // Small JVM; the SDK's log goes to $RMQ_E2E_HOME/logs (set by the driver).
                c.args(["-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
                    .arg("-cp")
                    .arg(format!("{}:{}", jar.display(), deps.trim()))
                    .arg("org.rmqgateway.e2e.E2e");
                c
            }
            Sdk::Go => Command::new(go_driver()),
            Sdk::Spring => {
                // Small JVM; the client log goes to $RMQ_E2E_HOME/logs (set by the app).
                let mut c = Command::new("java");
                c.args(["-Xmx256m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar"])
                    .arg(spring_jar());
                c
            }
        };
        cmd.arg(mode.arg());
        cmd
    }
}

/// One driver invocation.
#[derive(Debug, Clone)]
pub struct Run {
    pub sdk: Sdk,
    pub mode: Mode,
    pub endpoint: String,
    pub topic: String,
    pub group: String,
    pub count: usize,
    /// bodies are `<prefix>-0` .. `<prefix>-<count-1>`
    pub prefix: String,
    pub tag: String,
    /// the driver's own budget for its main loop (`--timeout-secs`)
    pub timeout: Duration,
    /// hard limit for the whole process (startup and shutdown included); killed after it
    pub kill_after: Duration,
    /// driver-specific arguments after the common ones (e.g. `--tls`, `--fail-every 5`)
    pub extra_args: Vec<String>,
}

/// The driver's `RESULT` line (fields a mode does not produce stay at their defaults).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Report {
    pub sdk: String,
    pub mode: String,
    pub ok: bool,
    pub count: usize,
    pub sent: usize,
    pub failed: usize,
    pub received: usize,
    pub acked: Option<usize>,
    pub ack_failed: usize,
    pub ids: Vec<String>,
    pub duplicates: Vec<String>,
    pub unexpected: Vec<String>,
    pub missing: Vec<usize>,
    pub corrupted: usize,
    pub changed_invisible: Option<usize>,
    pub receive_calls: usize,
    pub receive_errors: usize,
    pub max_delivery_attempt: i64,
    pub errors: Vec<String>,
    pub shutdown_error: Option<String>,
    pub elapsed_ms: u64,
    /// the SDK release the driver ran with (Java drivers)
    pub sdk_version: Option<String>,
    /// whether the driver used TLS (Java drivers)
    pub tls: Option<bool>,
    /// consumers (Java): the delivery attempt of every delivery, per message id
    pub attempts: std::collections::BTreeMap<String, Vec<i64>>,
    /// consumers (Java): received ids that were never acked successfully
    pub unacked: Vec<String>,
    /// PushConsumer with `--fail-every` (Java): ids the listener failed on purpose, with the
    /// attempt it failed, and the attempt at which each of them then succeeded
    #[serde(deserialize_with = "map_or_count")]
    pub failed_on_purpose: std::collections::BTreeMap<String, i64>,
    pub succeeded_after_failure: std::collections::BTreeMap<String, i64>,
    /// `produce-and-consume` (Spring): the ids the producer got, in send order (`ids` are
    /// the received ones)
    pub sent_ids: Vec<String>,
    /// Spring: the rocketmq-client-java release under the starter
    pub client_java_version: Option<String>,
    /// Go: the transport its connections actually used, as seen by gRPC (`tls`, `plaintext`,
    /// `mixed`); `None` where a driver does not report it
    pub transport: Option<String>,
    /// consumers (Go): deliveries whose tag or keys differ from what the producers set (tag
    /// `--tag`, keys `["<prefix>-key-<i>"]`)
    pub property_mismatches: Vec<String>,
    /// every other field (the message-type modes of `sdk/MESSAGE_TYPES.md`)
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `failed_on_purpose` is a map (id → attempt) in `push-consume` but a count in the
/// message-type mode `fifo-consume` (whose scenarios read the RESULT line themselves): a count
/// reads as an empty map.
fn map_or_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::collections::BTreeMap<String, i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum MapOrCount {
        Map(std::collections::BTreeMap<String, i64>),
        Count(serde::de::IgnoredAny),
    }
    Ok(match MapOrCount::deserialize(d)? {
        MapOrCount::Map(m) => m,
        MapOrCount::Count(_) => Default::default(),
    })
}

/// What happened to one driver run.
#[derive(Debug)]
pub struct Outcome {
    pub run: Run,
    /// `None` if the driver printed no parsable `RESULT` line.
    pub report: Option<Report>,
    pub result_line: Option<String>,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    stderr_path: PathBuf,
    home: PathBuf,
}

impl Outcome {
    /// The report, if the driver printed one.
    pub fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// Everything useful for a failure message: exit, result, stderr tail, SDK log tail.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let run = &self.run;
        let _ = writeln!(
            s,
            "--- {} {} (topic {}, group {}, n={}) exit={:?} timed_out={}",
            run.sdk.name(),
            run.mode.arg(),
            run.topic,
            run.group,
            run.count,
            self.status,
            self.timed_out
        );
        let _ = writeln!(s, "RESULT: {}", self.result_line.as_deref().unwrap_or("<none>"));
        let _ = writeln!(s, "stderr (tail):\n{}", tail_file(&self.stderr_path, 40));
        let py_log = self.home.join("logs/rocketmq_python/rocketmq_client.log");
        if py_log.exists() {
            let text = tail_file(&py_log, 2000);
            let notable: Vec<&str> = text.lines().filter(|l| l.contains("[ERROR]") || l.contains("[WARN")).collect();
            let first = notable.len().saturating_sub(30);
            let _ = writeln!(s, "python SDK log, errors/warnings (last 30 of {}):", notable.len());
            let _ = writeln!(s, "{}", notable[first..].join("\n"));
            let _ = writeln!(s, "python SDK log (tail):\n{}", tail_file(&py_log, 10));
        }
        let go_log = self.home.join("logs/rocketmq/rocketmq_client_go.log");
        if go_log.exists() {
            let text = tail_file(&go_log, 5000);
            let notable: Vec<&str> =
                text.lines().filter(|l| l.contains("\tERROR\t") || l.contains("\tWARN\t")).collect();
            let first = notable.len().saturating_sub(30);
            let _ = writeln!(s, "go SDK log {}, errors/warnings (last 30 of {}):", go_log.display(), notable.len());
            let _ = writeln!(s, "{}", notable[first..].join("\n"));
        }
        let java_log = self.home.join("logs/rocketmq-client.log");
        if java_log.exists() {
            let text = tail_file(&java_log, 5000);
            let notable: Vec<&str> = text.lines().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).collect();
            let first = notable.len().saturating_sub(30);
            let _ = writeln!(s, "java SDK log {}, errors/warnings (last 30 of {}):", java_log.display(), notable.len());
            let _ = writeln!(s, "{}", notable[first..].join("\n"));
        }
        s
    }
}

/// A driver started by [`spawn`] that is still running (killed when dropped).
pub struct Running {
    run: Run,
    child: Option<std::process::Child>,
    started: std::time::Instant,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    home: PathBuf,
}

impl Running {
    /// What the driver has printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The largest `PROGRESS received=K` the driver printed so far (drivers that support
    /// `--progress`), 0 if none.
    pub fn progress(&self) -> usize {
        self.stdout()
            .lines()
            .filter_map(|l| l.strip_prefix("PROGRESS received="))
            .filter_map(|k| k.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// True if the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the driver (killing it `kill_after` after its start) and parses its result.
    pub fn wait(mut self) -> Result<Outcome> {
        let mut child = self.child.take().context("driver already waited for")?;
        let left = self.run.kill_after.saturating_sub(self.started.elapsed());
        let status = wait_with_timeout(&mut child, left)?;
        let timed_out = status.is_none();
        if timed_out {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stdout = self.stdout();
        let result_line = stdout.lines().rev().find_map(|l| l.strip_prefix("RESULT ")).map(str::to_string);
        let report = result_line.as_deref().and_then(|l| serde_json::from_str(l).ok());
        Ok(Outcome {
            run: self.run.clone(),
            report,
            result_line,
            status,
            timed_out,
            stderr_path: self.stderr_path.clone(),
            home: self.home.clone(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the driver and returns at once; [`Running::wait`] runs it to completion (or kills it
/// after `kill_after`). Its stdout, stderr and HOME (SDK log files) are kept under `dir`.
pub fn spawn(run: &Run, dir: &Path) -> Result<Running> {
    let tag = format!("{}-{}-{}", run.sdk.name(), run.mode.arg(), run.prefix);
    let stdout_path = dir.join(format!("{tag}.stdout"));
    let stderr_path = dir.join(format!("{tag}.stderr"));
    let home = dir.join(format!("home-{tag}"));
    std::fs::create_dir_all(&home)?;
    let mut cmd = run.sdk.command(run.mode);
    cmd.args(["--endpoint", &run.endpoint, "--topic", &run.topic, "--group", &run.group])
        .args(["--count", &run.count.to_string(), "--prefix", &run.prefix, "--tag", &run.tag])
        .args(["--timeout-secs", &run.timeout.as_secs().to_string()])
        .args(&run.extra_args)
        .env("RUST_BACKTRACE", "0")
        .env("PYTHONUNBUFFERED", "1")
        .env("RMQ_E2E_HOME", &home)
        .env("RMQ_E2E_NODE_DIR", work_dir().join("node"))
        .stdin(Stdio::null())
        // The Go SDK logs to $rocketmq.client.logRoot (a name a shell cannot export).
        .env("rocketmq.client.logRoot", home.join("logs/rocketmq"))
        .stdout(File::create(&stdout_path)?)
        .stderr(File::create(&stderr_path)?);
    let started = std::time::Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {tag}: {cmd:?}"))?;
    Ok(Running { run: run.clone(), child: Some(child), started, stdout_path, stderr_path, home })
}
