//! `/metrics` scraped by a real Prometheus (Debian's package, fetched by
//! `integration-tests/services/prometheus.sh`): the official Java SDK sends N messages in two
//! rounds, a SimpleConsumer group receives and acks the first round, and Prometheus' HTTP API
//! must then report `rocketmq_messages_in_total{topic}` = N and
//! `rocketmq_consumer_lag_messages{topic,consumer_group}` = N − acked. Then every query of the
//! Grafana dashboard (`charts/rmq-gateway/dashboards/rmq-gateway.json`) runs against the same
//! Prometheus: each must parse, and return data unless it is about something this test does
//! not produce (tiering, transactions, DLQ).
//!
//! Needs `cargo build --bin rmq-gateway`, the Java driver (`SDK_ONLY=java sdk/setup.sh`) and
//! `apt-get download` (or `prometheus` on PATH). A missing part skips with a banner, or fails
//! under `RMQ_E2E_REQUIRED=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::gateway_process::free_port;
use integration_tests::scenario::{Ctx, Expect, assert_once_each, shout};
use integration_tests::sdk::{Mode, Sdk};

/// Queries that may return nothing here: the test stores no tiered segments, runs no
/// transaction and moves nothing to a DLQ.
const MAY_BE_EMPTY: &[&str] = &[
    "rocketmq_tiered_store_",
    "rocketmq_commit_messages_total",
    "rocketmq_rollback_messages_total",
    "rocketmq_half_messages",
    "rocketmq_send_to_dlq_messages_total",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Prometheus binary (prometheus.sh fetches Debian's package when missing), or why not.
fn prometheus_binary() -> Result<PathBuf, String> {
    let script = repo_root().join("integration-tests/services/prometheus.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("path")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} path failed ({})", script.display(), out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A Prometheus child process scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(bin: &Path, dir: &Path, target_port: u16) -> Prometheus {
        let port = free_port().unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rmq-gateway\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Prometheus { child, port, log }
    }

    fn log_tail(&self) -> String {
        integration_tests::gateway_process::tail_file(&self.log, 30)
    }

    /// `GET /api/v1/query?query=…`: the `data.result` array, or the error Prometheus gave.
    fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let body = http_get(self.port, &format!("/api/v1/query?query={}", encode(promql)))?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("query `{promql}` failed: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value `promql` returns, if it returns exactly one sample.
    fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql).ok()?;
        match r.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback (no chunked answers); the body.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer: {text}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_string())
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls until `check` holds or `limit` passes; the last value seen.
fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> T, check: impl Fn(&T) -> bool) -> T {
    let end = Instant::now() + limit;
    loop {
        let v = probe();
        if check(&v) || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every `expr` of the dashboard's panels, with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_root().join("charts/rmq-gateway/dashboards/rmq-gateway.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[test]
fn prometheus_scrapes_counts_and_lag_and_runs_the_dashboard_queries() {
    let test = "prometheus";
    let bin = match prometheus_binary() {
        Ok(b) => b,
        Err(e) => {
            let text = format!("SKIPPED {test}: no Prometheus: {e}");
            if std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1") {
                panic!("{text} (RMQ_E2E_REQUIRED=1)");
            }
            shout(&text);
            return;
        }
    };
    let Some(ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();

    // Round 1 is sent, received and acked by the group; round 2 is only sent.
    let first = ctx.produce(Sdk::Java, &topic, "a");
    let report = ctx.consume(Sdk::Java, Mode::SimpleConsume, &topic, &group, Expect::exactly("a", &first));
    assert_once_each(test, &report, false);
    let second = ctx.produce(Sdk::Java, &topic, "b");
    let sent = (first.len() + second.len()) as f64;
    let acked = first.len() as f64;

    let prom = Prometheus::start(&bin, ctx.path(), ctx.gateway.http_port);
    let limit = Duration::from_secs(60);
    let in_q = format!("sum(rocketmq_messages_in_total{{topic=\"{topic}\"}})");
    let got_in = wait_for(limit, || prom.scalar(&in_q), |v| *v == Some(sent));
    assert_eq!(got_in, Some(sent), "{in_q}\n--- prometheus log:\n{}", prom.log_tail());
    let lag_q = format!("rocketmq_consumer_lag_messages{{topic=\"{topic}\",consumer_group=\"{group}\"}}");
    let got_lag = wait_for(limit, || prom.scalar(&lag_q), |v| *v == Some(sent - acked));
    assert_eq!(got_lag, Some(sent - acked), "{lag_q}\n--- prometheus log:\n{}", prom.log_tail());
    let out_q = format!("sum(rocketmq_messages_out_total{{topic=\"{topic}\",consumer_group=\"{group}\"}})");
    let got_out = prom.scalar(&out_q).unwrap_or_default();
    assert!(got_out >= acked, "{out_q} = {got_out}, want at least {acked}");
    let send_q = "sum(rocketmq_rpc_latency_count{request_code=\"SendMessage\",response_code=\"OK\"})";
    assert!(prom.scalar(send_q).unwrap_or_default() >= sent, "{send_q}");

    // Rates need two samples in their window: wait until one has them.
    let rate_q = format!("sum(rate(rocketmq_messages_in_total{{topic=\"{topic}\"}}[1m]))");
    wait_for(limit, || prom.scalar(&rate_q), Option::is_some);

    let mut problems = Vec::new();
    let queries = dashboard_queries();
    assert!(queries.len() >= 14, "the dashboard has {} queries", queries.len());
    for (title, expr) in &queries {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$topic", ".*")
            .replace("$group", ".*")
            .replace("$job", ".*");
        match prom.query(&q) {
            Err(e) => problems.push(format!("panel `{title}`: {e}")),
            Ok(r) if r.is_empty() && !MAY_BE_EMPTY.iter().any(|m| q.contains(m)) => {
                problems.push(format!("panel `{title}`: `{q}` returned no data"))
            }
            Ok(_) => {}
        }
    }
    assert!(problems.is_empty(), "dashboard queries:\n{}", problems.join("\n"));
}

/// `metrics.enabled: false`: no `/metrics` route (404), and the gateway serves as usual.
#[test]
fn metrics_off_has_no_route() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = match integration_tests::gateway_process::Gateway::start_with(
        dir.path(),
        &[("RMQ_GATEWAY_METRICS__ENABLED", "false")],
    ) {
        Ok(g) => g,
        Err(e) if std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1") => panic!("{e:#}"),
        Err(e) => {
            shout(&format!("SKIPPED metrics_off_has_no_route: {e:#}"));
            return;
        }
    };
    let err = http_get(gateway.http_port, "/metrics").unwrap_err();
    assert!(err.contains("404"), "{err}");
    assert!(http_get(gateway.http_port, "/readyz").is_ok());
}
