//! Apache RocketMQ 5 as a peer in `bench compare`: a NameServer and a Proxy in local mode (the
//! broker runs inside the proxy JVM), started on loopback by
//! `integration-tests/reference/apache.sh` from the jars that `apache.sh resolve` put under
//! `integration-tests/sdk/.work/apache/lib` (Maven Central, pinned by `reference/pom.xml`).
//!
//! The proxy speaks the same `apache.rocketmq.v2` gRPC as the gateway, so the same load
//! generator drives it; unlike the gateway it never creates topics over gRPC, so the topics and
//! consumer groups of every run are created up front with `apache.sh admin` (one JVM for all).
//! Both JVMs are measured together: CPU and RSS of the NameServer plus the Proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::grpc::Flush;
use super::procs::{self, ServerUnderTest};

/// A running Apache RocketMQ (NameServer + Proxy with its broker), stopped on drop.
pub struct Apache {
    script: PathBuf,
    pub run_dir: PathBuf,
    pub grpc: SocketAddr,
    pub flush: Flush,
    namesrv_pid: u32,
    proxy_pid: u32,
    /// How long `apache.sh start` took (JVM start until the broker registered).
    pub startup: Duration,
    stopped: bool,
}

/// `java` on PATH and the resolved jars, or why not.
pub fn check_prerequisites(script: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        script.is_file(),
        "{} not found (run from the repository root, or pass --apache-script)",
        script.display()
    );
    anyhow::ensure!(procs::which("java").is_some(), "java is not on PATH (Apache RocketMQ needs a JDK 17)");
    let lib = lib_dir(script);
    anyhow::ensure!(
        proxy_jar(&lib).is_some(),
        "the Apache RocketMQ jars are missing in {}: run `bash {} resolve` first (make bench does)",
        lib.display(),
        script.display()
    );
    Ok(())
}

fn lib_dir(script: &Path) -> PathBuf {
    let reference = script.parent().unwrap_or_else(|| Path::new("."));
    reference.join("../sdk/.work/apache/lib")
}

fn proxy_jar(lib: &Path) -> Option<String> {
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("rocketmq-proxy-") && n.ends_with(".jar"))
}

/// The Apache RocketMQ version of the resolved jars (`5.5.0`), from the proxy jar's name.
pub fn version(script: &Path) -> Option<String> {
    let jar = proxy_jar(&lib_dir(script))?;
    Some(jar.trim_start_matches("rocketmq-proxy-").trim_end_matches(".jar").to_string())
}

fn script_command(script: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    cmd
}

fn output(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().collect();
        anyhow::bail!("{what} failed ({}):\n{}", out.status, tail[tail.len().saturating_sub(40)..].join("\n"));
    }
    Ok(stdout)
}

impl Apache {
    /// Starts Apache RocketMQ with `flush` in a fresh `run_dir`; it is stopped when this process
    /// exits, even if it is killed (`--watch-pid`).
    pub fn start(script: &Path, run_dir: &Path, flush: Flush) -> anyhow::Result<Apache> {
        check_prerequisites(script)?;
        let _ = std::fs::remove_dir_all(run_dir);
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let run_dir = std::fs::canonicalize(run_dir)?;
        let port = procs::free_port()?;
        let mode = match flush {
            Flush::Sync => "SYNC",
            Flush::Async => "ASYNC",
        };
        let mut cmd = script_command(script);
        cmd.arg("start")
            .arg(&run_dir)
            .args(["--grpc-port", &port.to_string(), "--flush", mode, "--timeout", "180"])
            .args(["--watch-pid", &std::process::id().to_string()]);
        let t0 = std::time::Instant::now();
        let out = output(cmd, "apache.sh start")?;
        let startup = t0.elapsed();
        // ENDPOINT 127.0.0.1:P NAMESRV 127.0.0.1:N
        let words: Vec<&str> = out.split_whitespace().collect();
        let grpc = match words.as_slice() {
            ["ENDPOINT", g, ..] => g.parse::<SocketAddr>().with_context(|| format!("bad endpoint `{g}`"))?,
            _ => anyhow::bail!("unexpected output of apache.sh start: {out}"),
        };
        let env = std::fs::read_to_string(run_dir.join("apache.env")).context("apache.env")?;
        let pid = |key: &str| -> anyhow::Result<u32> {
            env.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("{key} missing in apache.env"))
        };
        let (namesrv_pid, proxy_pid) = (pid("NAMESRV_PID=")?, pid("PROXY_PID=")?);
        Ok(Apache {
            script: script.to_path_buf(),
            run_dir,
            grpc,
            flush,
            namesrv_pid,
            proxy_pid,
            startup,
            stopped: false,
        })
    }

    /// Creates topics (NORMAL, 8 queues) and consumer groups, all in one admin JVM.
    pub fn create(&self, topics: &[String], groups: &[String]) -> anyhow::Result<()> {
        let mut cmd = script_command(&self.script);
        cmd.arg("admin").arg(&self.run_dir);
        cmd.args(topics.iter().map(|t| format!("topic {t} NORMAL")));
        cmd.args(groups.iter().map(|g| format!("group {g}")));
        output(cmd, "apache.sh admin").map(|_| ())
    }

    /// Where the broker keeps its commit log and queues.
    pub fn store_dir(&self) -> PathBuf {
        self.run_dir.join("store")
    }

    /// What persists the messages and when the broker answers.
    pub fn storage(&self) -> String {
        let v = version(&self.script).unwrap_or_else(|| "5".into());
        match self.flush {
            Flush::Sync => format!("Apache RocketMQ {v} commit log, SYNC_FLUSH (acked after the group-commit flush)"),
            Flush::Async => {
                format!("Apache RocketMQ {v} commit log, ASYNC_FLUSH (acked after the write; flushed every 500 ms)")
            }
        }
    }

    /// Stops both JVMs (`apache.sh stop`: SIGTERM, SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mut cmd = script_command(&self.script);
        cmd.arg("stop").arg(&self.run_dir);
        if let Err(e) = output(cmd, "apache.sh stop") {
            eprintln!("{e:#}");
        }
    }

    fn log_tail(&self) -> String {
        let logs = self.run_dir.join("home-proxy/logs/rocketmqlogs");
        [self.run_dir.join("proxy.out"), logs.join("proxy.log"), logs.join("broker.log")]
            .iter()
            .map(|f| format!("--- {}\n{}", f.display(), procs::tail(f)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl ServerUnderTest for Apache {
    fn pids(&self) -> Vec<u32> {
        vec![self.namesrv_pid, self.proxy_pid]
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, pid) in [("NameServer", self.namesrv_pid), ("Proxy", self.proxy_pid)] {
            anyhow::ensure!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "Apache RocketMQ's {name} (pid {pid}) exited; logs:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake repository layout: `reference/apache.sh` and `sdk/.work/apache/lib/`.
    fn layout(jar: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let reference = root.path().join("reference");
        std::fs::create_dir_all(&reference).unwrap();
        let script = reference.join("apache.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let lib = root.path().join("sdk/.work/apache/lib");
        std::fs::create_dir_all(&lib).unwrap();
        if let Some(j) = jar {
            std::fs::write(lib.join(j), b"").unwrap();
        }
        (root, script)
    }

    #[test]
    fn version_comes_from_the_proxy_jar() {
        let (_root, script) = layout(Some("rocketmq-proxy-5.5.0.jar"));
        assert_eq!(version(&script).as_deref(), Some("5.5.0"));
    }

    #[test]
    fn missing_jars_or_script_fail_with_the_reason() {
        let (_root, script) = layout(None);
        let e = check_prerequisites(&script).unwrap_err().to_string();
        if procs::which("java").is_some() {
            assert!(e.contains("resolve"), "{e}");
        } else {
            assert!(e.contains("java"), "{e}");
        }
        let e = check_prerequisites(Path::new("/nonexistent/apache.sh")).unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
    }
}
