//! A throwaway PostgreSQL for tests (`services/postgres.sh`): a fresh cluster on a free
//! loopback port in a temp dir, stopped and removed on drop. [`Postgres::stop`] and
//! [`Postgres::start_again`] take it away and bring it back on the same port and data (outage
//! tests). When it cannot be started, [`Postgres::start_or_skip`] skips the test, or fails it
//! with the reason under `RMQ_E2E_REQUIRED=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::scenario::shout;

pub struct Postgres {
    dir: PathBuf,
    port: u16,
    url: String,
    running: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("services/postgres.sh")
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", script().display()))?;
    if !out.status.success() {
        bail!(
            "services/postgres.sh {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Postgres {
    /// Starts a fresh cluster with an empty database `app` (three tries: the free port the
    /// script picked may be taken by another test meanwhile).
    pub fn start() -> Result<Postgres> {
        let mut tries = 0;
        let out = loop {
            tries += 1;
            match run(&["start"]) {
                Ok(out) => break out,
                Err(e) if tries >= 3 => return Err(e),
                Err(e) => eprintln!("services/postgres.sh start failed, trying again: {e:#}"),
            }
        };
        // `export PGTMP=/tmp/pg.x PGPORT=123 DATABASE_URL=postgres://…`
        let field = |name: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
                .with_context(|| format!("no {name} in postgres.sh output `{}`", out.trim()))
        };
        let dir = PathBuf::from(field("PGTMP")?);
        let port = field("PGPORT")?.parse().context("PGPORT")?;
        let url = field("DATABASE_URL")?;
        Ok(Postgres { dir, port, url, running: true })
    }

    /// [`Postgres::start`], or `None` (the test skips) when PostgreSQL cannot be started;
    /// panics with the reason under `RMQ_E2E_REQUIRED=1`.
    pub fn start_or_skip(test: &str) -> Option<Postgres> {
        match Postgres::start() {
            Ok(pg) => Some(pg),
            Err(e) => {
                let text = format!("SKIPPED {test}: no PostgreSQL: {e:#}");
                if std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1") {
                    panic!("{text} (RMQ_E2E_REQUIRED=1)");
                }
                shout(&text);
                None
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/app` (trust authentication, no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates another empty database `name` in the cluster; returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        run(&["createdb", &self.dir.to_string_lossy(), name])?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) -> Result<()> {
        run(&["halt", &self.dir.to_string_lossy()])?;
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&mut self) -> Result<()> {
        run(&["resume", &self.dir.to_string_lossy()])?;
        self.running = true;
        Ok(())
    }

    /// Stops and starts the server.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = run(&["stop", &self.dir.to_string_lossy()]) {
            eprintln!("cannot remove the throwaway PostgreSQL in {}: {e:#}", self.dir.display());
        }
    }
}
