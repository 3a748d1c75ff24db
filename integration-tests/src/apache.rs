//! Apache RocketMQ 5 (the reference implementation) on loopback, for differential tests.
//!
//! [`Apache::start`] runs `integration-tests/reference/apache.sh start` (NameServer + Proxy in
//! local mode, the broker inside the proxy JVM) in a temp dir, exposes the proxy's gRPC endpoint,
//! creates topics and groups through mqadmin, and stops both JVMs on drop. The script also stops
//! them if this process dies (`--watch-pid`). The jars come from `apache.sh resolve` (run by
//! `sdk/setup.sh`; [`Apache::start`] runs it too, it is idempotent).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A topic's message type on Apache (`+message.type=` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicType {
    Normal,
    Fifo,
    Delay,
    Transaction,
}

impl TopicType {
    fn as_str(self) -> &'static str {
        match self {
            TopicType::Normal => "NORMAL",
            TopicType::Fifo => "FIFO",
            TopicType::Delay => "DELAY",
            TopicType::Transaction => "TRANSACTION",
        }
    }
}

/// A running Apache RocketMQ (NameServer + Proxy/Broker); stopped on drop.
pub struct Apache {
    /// The run dir; kept after drop when `RMQ_APACHE_KEEP=1` (for reading its logs).
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    grpc: SocketAddr,
    namesrv: String,
    /// How long `apache.sh start` took (JVM start to ready lines and broker registration).
    pub startup: Duration,
}

/// Path of `integration-tests/reference/apache.sh`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference").join("apache.sh")
}

/// Runs `apache.sh` with `args`; its stdout, or an error with both outputs.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .with_context(|| format!("running apache.sh {}", args.join(" ")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "apache.sh {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

impl Apache {
    /// Resolves the jars if needed and starts Apache with `flush` = "SYNC" or "ASYNC".
    pub fn start(flush: &str) -> Result<Apache> {
        run(&["resolve"])?;
        let dir = tempfile::Builder::new().prefix("rmq-apache-").tempdir()?;
        let grpc_port = crate::gateway_process::free_port()?;
        let run_dir = dir.path().to_string_lossy().into_owned();
        let t0 = Instant::now();
        let pid = std::process::id().to_string();
        let out = run(&[
            "start",
            &run_dir,
            "--grpc-port",
            &grpc_port.to_string(),
            "--flush",
            flush,
            "--watch-pid",
            &pid,
            "--timeout",
            "150",
            // SQL92 filters, off by default in Apache's broker.
            "--broker-conf",
            "enablePropertyFilter=true",
        ])?;
        let startup = t0.elapsed();
        // ENDPOINT 127.0.0.1:P NAMESRV 127.0.0.1:N
        let words: Vec<&str> = out.split_whitespace().collect();
        let (grpc, namesrv) = match words.as_slice() {
            ["ENDPOINT", g, "NAMESRV", n, ..] => (g.parse::<SocketAddr>()?, n.to_string()),
            _ => bail!("unexpected output of apache.sh start: {out}"),
        };
        Ok(Apache { path: dir.path().to_path_buf(), dir: Some(dir), grpc, namesrv, startup })
    }

    /// The proxy's gRPC endpoint (plaintext and TLS on the same port).
    pub fn grpc(&self) -> SocketAddr {
        self.grpc
    }

    /// `127.0.0.1:port` of the NameServer.
    pub fn namesrv(&self) -> &str {
        &self.namesrv
    }

    /// The run dir (configs, logs under `home-*/logs/rocketmqlogs`, store).
    pub fn dir(&self) -> &Path {
        self.path.as_path()
    }

    /// Runs several `apache.sh admin` commands in one JVM, e.g. `"topic T FIFO"`,
    /// `"group G --fifo --max-retry 1"`.
    pub fn admin(&self, commands: &[String]) -> Result<()> {
        let run_dir = self.path.as_path().to_string_lossy().into_owned();
        let mut args = vec!["admin", run_dir.as_str()];
        args.extend(commands.iter().map(String::as_str));
        run(&args).map(|_| ())
    }

    /// Creates (or updates) a topic with 8 queues.
    pub fn topic(&self, name: &str, kind: TopicType) -> Result<()> {
        self.admin(&[format!("topic {name} {}", kind.as_str())])
    }

    /// Creates (or updates) a subscription group.
    pub fn group(&self, name: &str, fifo: bool, max_retry: Option<i32>) -> Result<()> {
        let mut c = format!("group {name}");
        if fifo {
            c.push_str(" --fifo");
        }
        if let Some(n) = max_retry {
            c.push_str(&format!(" --max-retry {n}"));
        }
        self.admin(&[c])
    }

    /// RSS in KiB of the NameServer and Proxy JVMs (from /proc), for reports.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let env = std::fs::read_to_string(self.path.as_path().join("apache.env"))?;
        let pid = |key: &str| -> Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{key} missing in apache.env"))
        };
        let rss = |p: String| -> Result<u64> {
            let status = std::fs::read_to_string(format!("/proc/{p}/status"))?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| anyhow!("no VmRSS for {p}"))
        };
        Ok((rss(pid("NAMESRV_PID=")?)?, rss(pid("PROXY_PID=")?)?))
    }

    /// The last lines of the proxy/broker logs, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let logs = self.path.as_path().join("home-proxy/logs/rocketmqlogs");
        ["proxy.log", "broker.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", crate::gateway_process::tail_file(&logs.join(f), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops both JVMs (bounded: SIGKILL after 20 s). Also done on drop.
    pub fn stop(&self) -> Result<()> {
        run(&["stop", &self.path.as_path().to_string_lossy()]).map(|_| ())
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("apache: stop failed: {e:#}");
        }
        if std::env::var("RMQ_APACHE_KEEP").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("apache: run dir kept: {}", dir.keep().display());
        }
    }
}
