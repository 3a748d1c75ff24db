//! A throwaway S3-compatible server for tests and benchmarks (`services/s3.sh`): moto (in
//! memory, fault and conformance tests) or s3s-fs (writes to disk, checks SigV4; throughput), on
//! a free loopback port with one bucket. Dropping an [`S3Server`] stops it; if the test process
//! dies, the script's `--watch-pid` watcher stops it.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rmq_gateway::config::ObjectStoreConfig;

use crate::gateway_process::{tail_file, wait_with_timeout};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PyPI `moto[server]` (pinned by `services/s3-requirements.txt`): objects in memory, any
    /// credentials accepted.
    Moto,
    /// crates.io `s3s-fs` 0.14.1: objects as files under the run directory, SigV4 checked.
    S3sFs,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Moto => "moto",
            Kind::S3sFs => "s3s-fs",
        }
    }
}

/// Installs and starts can take this long (a first `cargo install s3s-fs` builds it).
const START_LIMIT: Duration = Duration::from_secs(600);

pub struct S3Server {
    kind: Kind,
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    run: tempfile::TempDir,
}

/// `integration-tests/services/s3.sh`.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("services/s3.sh")
}

impl S3Server {
    /// Installs the server when missing (cached under `sdk/.work`) and starts it with the bucket
    /// `test-bucket`.
    pub fn start(kind: Kind) -> Result<S3Server> {
        let run = tempfile::Builder::new().prefix("rmq-s3-").tempdir()?;
        let out_path = run.path().join("start.out");
        let err_path = run.path().join("start.err");
        let mut child = Command::new("bash")
            .arg(script())
            .args(["start", kind.arg()])
            .arg(run.path().join("server"))
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .spawn()
            .context("running services/s3.sh")?;
        let Some(status) = wait_with_timeout(&mut child, START_LIMIT)? else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("s3.sh start {} did not finish within {START_LIMIT:?}: {}", kind.arg(), tail_file(&err_path, 20));
        };
        if !status.success() {
            bail!("s3.sh start {} failed ({status}): {}", kind.arg(), tail_file(&err_path, 20));
        }
        let line = std::fs::read_to_string(&out_path)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| {
            words
                .iter()
                .position(|w| *w == name)
                .and_then(|i| words.get(i + 1))
                .map(|v| v.to_string())
                .with_context(|| format!("s3.sh printed no {name}: `{line}`"))
        };
        Ok(S3Server {
            kind,
            endpoint: field("ENDPOINT")?,
            bucket: field("BUCKET")?,
            access_key: field("ACCESS_KEY")?,
            secret_key: field("SECRET_KEY")?,
            run,
        })
    }

    /// The server, or `None` (test skipped, with a loud message) when it cannot be had; with
    /// `RMQ_E2E_REQUIRED=1` (as `make test` runs) that panics with the reason instead.
    pub fn start_or_skip(test: &str, kind: Kind) -> Option<S3Server> {
        match S3Server::start(kind) {
            Ok(server) => Some(server),
            Err(e) => {
                let text = format!("SKIPPED {test}: no {} server: {e:#}", kind.arg());
                if std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1") {
                    panic!("{text} (RMQ_E2E_REQUIRED=1)");
                }
                crate::scenario::shout(&text);
                None
            }
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        let hostport = self.endpoint.trim_start_matches("http://");
        hostport.parse().unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// Where s3s-fs keeps the objects (`<run>/data/<bucket>`).
    pub fn data_dir(&self) -> PathBuf {
        self.run.path().join("server/data").join(&self.bucket)
    }

    /// `storage.tiering.objectStore` for this server (path-style, static credentials), with
    /// `endpoint` replaced (e.g. by a [`crate::fault_proxy::FaultProxy`] in front of it).
    pub fn store_config_via(&self, endpoint: &str, prefix: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            kind: "s3".into(),
            prefix: prefix.into(),
            bucket: self.bucket.clone(),
            region: "us-east-1".into(),
            endpoint: endpoint.into(),
            path_style: true,
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            ..ObjectStoreConfig::default()
        }
    }

    /// `storage.tiering.objectStore` for this server.
    pub fn store_config(&self, prefix: &str) -> ObjectStoreConfig {
        self.store_config_via(&self.endpoint, prefix)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let stopped = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.run.path().join("server"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = stopped {
            eprintln!("s3.sh stop failed: {e}");
        }
    }
}
