//! The `rmq-gateway` binary as a child process: start on free loopback ports with a data
//! dir, wait for `GET /readyz` = 200, stop with SIGTERM (graceful) or SIGKILL (crash),
//! and start again on the same data dir. The child is killed when the handle is dropped.
//! Tests may add configuration overrides (`RMQ_GATEWAY_<SECTION>__<KEY>` variables) and read
//! the child's pid (e.g. for its resident memory).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How long a fresh gateway may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd gateway may take to exit before it is killed (and the stop fails).
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

/// How to stop the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: graceful shutdown; must exit successfully within 30 s.
    Graceful,
    /// SIGKILL: a crash.
    Kill,
}

/// What happened when the gateway was stopped.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub took: Duration,
}

/// Locates the gateway binary: `$RMQ_GATEWAY_BIN`, else `rmq-gateway` in the profile dir
/// of the running test binary (`<target>/debug/deps/..`), else `<workspace>/target/debug`.
/// A relative `RMQ_GATEWAY_BIN` is taken relative to the workspace root.
pub fn gateway_binary() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().unwrap_or(manifest_dir);
    if let Some(path) = std::env::var_os("RMQ_GATEWAY_BIN") {
        let path = workspace.join(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(anyhow!("RMQ_GATEWAY_BIN={} does not exist", path.display()))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join("rmq-gateway"));
    }
    candidates.push(workspace.join("target/debug/rmq-gateway"));
    candidates.dedup();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "rmq-gateway binary not found (looked at {:?}); run `cargo build --bin rmq-gateway` \
             or set RMQ_GATEWAY_BIN",
            candidates
        )
    })
}

/// A running (or stopped) gateway child process bound to one data dir and fixed ports.
pub struct Gateway {
    binary: PathBuf,
    dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    child: Option<Child>,
    starts: u32,
    /// Configuration overrides passed as environment variables.
    overrides: Vec<(String, String)>,
    /// YAML lines appended under the config's `topics:` section (e.g. a `create:` list).
    topics_yaml: String,
}

impl Gateway {
    /// Starts a gateway whose config, data and logs live under `dir`.
    /// Retries with new ports if the chosen ones were taken in the meantime.
    pub fn start(dir: &Path) -> Result<Gateway> {
        Gateway::start_with(dir, &[])
    }

    /// [`Gateway::start`] with configuration overrides: `("RMQ_GATEWAY_SECTION__KEY", value)`.
    pub fn start_with(dir: &Path, overrides: &[(&str, &str)]) -> Result<Gateway> {
        let binary = gateway_binary()?;
        let mut last_error = None;
        for _ in 0..3 {
            let mut gateway = Gateway {
                binary: binary.clone(),
                dir: dir.to_path_buf(),
                grpc_port: free_port()?,
                http_port: free_port()?,
                child: None,
                starts: 0,
                overrides: overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                topics_yaml: String::new(),
            };
            match gateway.spawn_and_wait_ready() {
                Ok(()) => return Ok(gateway),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("gateway did not start")))
    }

    /// Starts a gateway on the given ports (a cluster node's ports must be known before it
    /// starts: its peers and the load balancer name them), with `topics_yaml` appended under
    /// `topics:` (two-space indented lines, e.g. `  create:\n  - name: t\n    durability: s3\n`).
    /// No retry: the caller picks new ports if these were taken.
    pub fn start_on(
        dir: &Path,
        grpc_port: u16,
        http_port: u16,
        overrides: &[(String, String)],
        topics_yaml: &str,
    ) -> Result<Gateway> {
        let mut gateway = Gateway {
            binary: gateway_binary()?,
            dir: dir.to_path_buf(),
            grpc_port,
            http_port,
            child: None,
            starts: 0,
            overrides: overrides.to_vec(),
            topics_yaml: topics_yaml.to_string(),
        };
        gateway.spawn_and_wait_ready()?;
        Ok(gateway)
    }

    /// True while the child process runs (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Removes the data dir (the gateway must be stopped): a node that lost its disk.
    pub fn wipe_data_dir(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("gateway is still running");
        }
        match std::fs::remove_dir_all(self.data_dir()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!("removing {}: {e}", self.data_dir().display())),
        }
    }

    /// The gRPC access point for the SDKs, `127.0.0.1:<port>` (no scheme).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// The running child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The running child's resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> Result<u64> {
        let pid = self.pid().ok_or_else(|| anyhow!("gateway is not running"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no VmRSS line in /proc/{pid}/status"))?;
        Ok(kib * 1024)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `name (bytes)` of every file under the data dir, for failure messages.
    pub fn data_dir_listing(&self) -> String {
        let mut files = Vec::new();
        let mut stack = vec![self.data_dir()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                match entry.metadata() {
                    Ok(m) if m.is_dir() => stack.push(path),
                    Ok(m) => {
                        let name = path.strip_prefix(self.data_dir()).unwrap_or(&path).display().to_string();
                        files.push(format!("{name} ({} B)", m.len()));
                    }
                    Err(_) => {}
                }
            }
        }
        files.sort();
        files.join(", ")
    }

    /// Stops the running gateway; SIGTERM must lead to a successful exit within 30 s.
    pub fn stop(&mut self, how: Stop) -> Result<Stopped> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("gateway is not running"))?;
        let signal = match how {
            Stop::Graceful => libc::SIGTERM,
            Stop::Kill => libc::SIGKILL,
        };
        let started = Instant::now();
        send_signal(&child, signal)?;
        let status = wait_with_timeout(&mut child, GRACEFUL_TIMEOUT)?;
        let took = started.elapsed();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("gateway did not exit within {GRACEFUL_TIMEOUT:?} after SIGTERM; log tail:\n{}", self.log_tail(40));
        };
        if how == Stop::Graceful && !status.success() {
            bail!("gateway exited with {status} after SIGTERM (expected success); log tail:\n{}", self.log_tail(40));
        }
        Ok(Stopped { status, took })
    }

    /// Starts the gateway again on the same data dir and ports.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("gateway is still running");
        }
        self.spawn_and_wait_ready()
    }

    /// The last `lines` lines of the current gateway log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_path(), lines)
    }

    /// Lines of every log of this gateway (all its starts) containing `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        (1..=self.starts)
            .filter_map(|i| std::fs::read_to_string(self.dir.join(format!("gateway-{i}.log"))).ok())
            .flat_map(|text| text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("gateway-{}.log", self.starts))
    }

    fn spawn_and_wait_ready(&mut self) -> Result<()> {
        let config = self.dir.join("gateway.yaml");
        std::fs::create_dir_all(self.data_dir())?;
        std::fs::write(&config, self.config_yaml())?;
        self.starts += 1;
        let log = File::create(self.log_path())?;
        let mut command = Command::new(&self.binary);
        // The gateway reads every `RMQ_GATEWAY_*` variable as a config override and rejects
        // unknown keys, so our own `RMQ_GATEWAY_BIN` (and anything else from the caller's
        // shell) must not leak into it: the test config is the YAML file only.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RMQ_GATEWAY_") {
                command.env_remove(&key);
            }
        }
        for (key, value) in &self.overrides {
            command.env(key, value);
        }
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("RMQ_E2E_GATEWAY_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("gateway exited with {status} before ready; log:\n{}", self.log_tail(40));
            }
            if readyz(self.http_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("gateway not ready after {READY_TIMEOUT:?}; log:\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn config_yaml(&self) -> String {
        format!(
            "server:\n  bindAddress: 127.0.0.1\n  grpcServerPort: {}\n  httpServerPort: {}\n\
             storage:\n  dataDir: {}\n  flushDiskType: SYNC_FLUSH\n\
             topics:\n  autoCreateTopicEnable: true\n{}",
            self.grpc_port,
            self.http_port,
            self.data_dir().display(),
            self.topics_yaml
        )
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True if `GET http://127.0.0.1:<port>/readyz` answers 200.
pub fn readyz(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..read]);
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

fn send_signal(child: &Child, signal: i32) -> Result<()> {
    let pid = i32::try_from(child.id())?;
    // SAFETY: kill(2) on the pid of our own, not yet reaped child.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        bail!("kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the child; `None` if it is still running after `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a text file ("" if unreadable).
pub fn tail_file(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    let text = text.unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
