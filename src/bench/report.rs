//! Benchmark results: the serialisable result of each run, the machine it ran on, target
//! checks, and the three outputs — JSON, a Markdown table and a hand-written SVG plot
//! (throughput bars and latency-percentile curves).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadArgs;
use super::load::{LoadOutcome, ResourceUse, SendPath};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds; `None` when empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }

    fn points(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50_ms),
            ("p90", self.p90_ms),
            ("p99", self.p99_ms),
            ("p99.9", self.p999_ms),
            ("max", self.max_ms),
        ]
    }
}

/// One load run against one system.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// e.g. `gateway-async`, `noop-ceiling`, `nats-jetstream`.
    pub system: String,
    /// `max` (closed loop, producers only), `paced-N%` (paced at N% of `max`, with consumers),
    /// or `single`.
    pub phase: String,
    /// What persisted the messages (and when the ack was sent).
    pub storage: String,
    pub producers: usize,
    pub concurrency: usize,
    pub consumers: usize,
    pub message_size: usize,
    pub batch: usize,
    pub target_rate: Option<f64>,
    pub window_s: f64,
    pub messages: u64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub send_latency: Option<Latency>,
    pub e2e_latency: Option<Latency>,
    pub received: u64,
    pub receive_errors: u64,
    /// Messages per receive call that returned messages (one call = one ReceiveMessage or one
    /// delivered NATS message).
    pub msgs_per_receive: Option<f64>,
    pub server: Option<ResourceUse>,
    /// Server CPU time per acknowledged message.
    pub server_cpu_us_per_msg: Option<f64>,
    pub client: Option<ResourceUse>,
    /// CPU used by everything except the server and the client: the machine's busy time minus
    /// theirs (other work, kernel threads, interrupts).
    pub other_cpu_cores: Option<f64>,
    /// Of which other user processes (a lower bound: processes that ended inside the window
    /// are missed) — contention from other work on a shared machine.
    pub other_processes_cores: f64,
    /// Of which kernel threads (writeback, journal, softirq and worker threads).
    pub kernel_threads_cores: f64,
    /// Bytes allocated in the server's data directory after the run (gateway `max` runs).
    pub disk_bytes: Option<u64>,
    /// Where a gateway's sends spent their time (gateways the benchmark started).
    pub send_path: Option<SendPath>,
}

impl RunResult {
    pub fn new(system: &str, phase: &str, storage: &str, args: &LoadArgs, o: &LoadOutcome) -> RunResult {
        let secs = o.window.as_secs_f64().max(1e-9);
        let msgs_per_s = o.messages as f64 / secs;
        RunResult {
            system: system.to_string(),
            phase: phase.to_string(),
            storage: storage.to_string(),
            producers: args.producers,
            concurrency: args.concurrency,
            consumers: args.consumers,
            message_size: args.message_size,
            batch: args.batch,
            target_rate: o.target_rate,
            window_s: secs,
            messages: o.messages,
            requests: o.requests,
            errors: o.errors,
            first_error: o.first_error.clone(),
            msgs_per_s,
            mb_per_s: msgs_per_s * args.message_size as f64 / 1e6,
            send_latency: Latency::of(&o.send_latency_us),
            e2e_latency: o.e2e_latency_us.as_ref().and_then(Latency::of),
            received: o.received,
            receive_errors: o.receive_errors,
            msgs_per_receive: (o.receive_calls > 0).then(|| o.received_total as f64 / o.receive_calls as f64),
            server: o.server,
            server_cpu_us_per_msg: o.server.filter(|_| o.messages > 0).map(|s| s.cpu_seconds * 1e6 / o.messages as f64),
            client: o.client,
            other_cpu_cores: o
                .machine_busy_cores
                .map(|m| (m - o.server.map_or(0.0, |x| x.cpu_cores) - o.client.map_or(0.0, |x| x.cpu_cores)).max(0.0)),
            other_processes_cores: o.other_processes_cores,
            kernel_threads_cores: o.kernel_threads_cores,
            disk_bytes: None,
            send_path: o.send_path,
        }
    }

    pub fn key(&self) -> String {
        format!("{} {}", self.system, self.phase)
    }
}

/// The machine a report comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// Filesystem (device, type) holding the servers' data directories.
    pub data_filesystem: String,
    /// `/proc/loadavg` when the benchmark started (other work on a shared machine).
    pub load_average_at_start: String,
}

impl Machine {
    pub fn detect(data_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_string();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .map_or(0.0, |kb: f64| kb / (1024.0 * 1024.0));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let load_average_at_start = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Machine { cpu_model, cpus, memory_gib, kernel, data_filesystem: filesystem_of(data_dir), load_average_at_start }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} × {}, {:.0} GiB RAM, Linux {}, data on {}; load average at start {}",
            self.cpus, self.cpu_model, self.memory_gib, self.kernel, self.data_filesystem, self.load_average_at_start
        )
    }
}

/// The longest mount point of /proc/mounts that contains `dir`.
fn filesystem_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1])).then(|| (f[1].len(), format!("{} ({}) at {}", f[0], f[2], f[1])))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_string(), |(_, s)| s)
}

/// A target from the issue, checked against the figures.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// A ratio printed by `compare`.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
}

/// A figure as the round table prints it: ratios with two decimals, rates as integers.
fn round_figure(v: f64) -> String {
    if v.abs() < 100.0 { format!("{v:.2}") } else { format!("{v:.0}") }
}

/// One quantity measured in every round of `compare --rounds N`, in round order.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub name: String,
    pub values: Vec<f64>,
}

impl Spread {
    /// The middle value (the mean of the two middle ones for an even count).
    pub fn median(&self) -> Option<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    /// (max − min) / min: how far apart the rounds are (0.1 = they agree within 10 %).
    pub fn relative(&self) -> Option<f64> {
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (self.values.len() > 1 && min > 0.0).then(|| (max - min) / min)
    }
}

/// Everything one benchmark invocation produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    pub command: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub results: Vec<RunResult>,
    pub ratios: Vec<Ratio>,
    pub checks: Vec<Check>,
    /// Key figures of every round (`compare --rounds`); the tables above are the last round's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Spread>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(data_dir: &Path) -> Report {
        Report {
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            git_commit: git_commit(),
            machine: Machine::detect(data_dir),
            results: Vec::new(),
            ratios: Vec::new(),
            checks: Vec::new(),
            rounds: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn find(&self, system: &str, phase: &str) -> Option<&RunResult> {
        self.results.iter().find(|r| r.system == system && r.phase == phase)
    }

    /// Writes `<stem>.json`, `<stem>.md` and `<stem>.svg` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let files = [
            (dir.join(format!("{stem}.json")), serde_json::to_string_pretty(self)?),
            (dir.join(format!("{stem}.md")), self.markdown()),
            (dir.join(format!("{stem}.svg")), self.svg()),
        ];
        let mut paths = Vec::new();
        for (path, text) in files {
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// The results table (and ratios, checks, notes) in Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# rmq-gateway end-to-end benchmark\n");
        let _ = writeln!(s, "- When: {}", self.started_at);
        let _ = writeln!(s, "- Machine: {}", self.machine.summary());
        if let Some(c) = &self.git_commit {
            let _ = writeln!(s, "- Commit: {c}");
        }
        let _ = writeln!(s, "- Command: `{}`", self.command);
        if let Some(r) = self.results.first() {
            let _ = writeln!(
                s,
                "- Load: {} producer connections × {} in flight, {} B messages, batch {}; consumers in paced runs: {}",
                r.producers,
                r.concurrency,
                r.message_size,
                r.batch,
                self.results.iter().map(|r| r.consumers).max().unwrap_or(0)
            );
        }
        let _ = writeln!(s);
        s.push_str(&self.table());
        if !self.ratios.is_empty() {
            let _ = writeln!(s, "\n## Ratios\n\n| Ratio | Value |\n|---|---:|");
            for r in &self.ratios {
                let _ = writeln!(s, "| {} | {:.2} |", r.name, r.value);
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(s, "\n## Targets\n\n| Target | Measured | Met |\n|---|---|---|");
            for c in &self.checks {
                let met = match c.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                };
                let _ = writeln!(s, "| {} | {} | {met} |", c.target, c.measured);
            }
        }
        if let Some(n) = self.rounds.iter().map(|r| r.values.len()).max().filter(|n| *n > 1) {
            let _ = writeln!(s, "\n## Across the {n} rounds (the tables above are the last round's)\n");
            let heads: String = (1..=n).map(|i| format!(" round {i} |")).collect();
            let _ = writeln!(s, "| Quantity |{heads} median | spread |\n|---|{}---:|---:|", "---:|".repeat(n));
            for r in &self.rounds {
                let cells: String = r.values.iter().map(|v| format!(" {} |", round_figure(*v))).collect();
                let median = r.median().map_or("–".to_string(), round_figure);
                let spread = r.relative().map_or("–".to_string(), |x| format!("{:.0} %", x * 100.0));
                let _ = writeln!(s, "| {} |{cells} {median} | {spread} |", r.name);
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The results table, and for gateways the send path table ([`Report::send_path_table`]).
    pub fn table(&self) -> String {
        let mut s = self.results_table();
        if let Some(t) = self.send_path_table() {
            let _ = write!(s, "\n{t}");
        }
        s
    }

    /// Where a gateway's sends spent their time, from its `/metrics` over each run's window
    /// (means; [`SendPath`]); `None` when no run has it.
    fn send_path_table(&self) -> Option<String> {
        let rows: Vec<(&RunResult, SendPath)> =
            self.results.iter().filter_map(|r| r.send_path.map(|p| (r, p))).collect();
        if rows.is_empty() {
            return None;
        }
        let mut s = String::from(
            "Inside the gateway's sends (means over the window, from its `/metrics`; append stages counted from the commit-log append call):\n\n",
        );
        let _ = writeln!(
            s,
            "| System | Run | Client send, mean (ms) | SendMessage handler (ms) | Append: queued / stored / resumed (ms) | fsyncs/s | fsync (ms) | Sends per fsync |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
        let ms = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{x:.3}"));
        for (r, p) in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} / {} / {} | {:.0} | {} | {} |",
                r.system,
                r.phase,
                ms(r.send_latency.as_ref().map(|l| l.mean_ms)),
                ms(p.handler_ms),
                ms(p.queued_ms),
                ms(p.stored_ms),
                ms(p.resumed_ms),
                p.fsyncs as f64 / r.window_s.max(1e-9),
                ms(p.fsync_ms),
                p.appends_per_fsync.map_or("–".to_string(), |x| format!("{x:.1}")),
            );
        }
        Some(s)
    }

    /// Just the results table.
    fn results_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| System | Run | Storage | Target rate | msg/s | MB/s | Send p50 / p99 / p99.9 (ms) | E2E p50 / p99 / p99.9 (ms) | Server CPU (cores) | Server CPU µs/msg | Server RSS peak (MiB) | Client CPU (cores) | Waiting for a CPU: server / client (threads) | Other CPU: procs / kernel threads / total | Msgs/receive | Errors |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let lat = |l: &Option<Latency>| {
            l.as_ref().map_or("–".to_string(), |l| format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p99_ms, l.p999_ms))
        };
        for r in &self.results {
            let other = format!(
                "{:.2} / {:.2} / {}",
                r.other_processes_cores,
                r.kernel_threads_cores,
                r.other_cpu_cores.map_or("–".to_string(), |x| format!("{x:.2}"))
            );
            let waited = |u: Option<ResourceUse>| {
                u.and_then(|u| u.cpu_wait_cores).map_or("–".to_string(), |x| format!("{x:.2}"))
            };
            let wait = format!("{} / {}", waited(r.server), waited(r.client));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {wait} | {other} | {} | {} |",
                r.system,
                r.phase,
                r.storage,
                r.target_rate.map_or("max".to_string(), |x| format!("{x:.0}")),
                r.msgs_per_s,
                r.mb_per_s,
                lat(&r.send_latency),
                lat(&r.e2e_latency),
                r.server.map_or("–".to_string(), |u| format!("{:.2}", u.cpu_cores)),
                r.server_cpu_us_per_msg.map_or("–".to_string(), |x| format!("{x:.1}")),
                r.server.map_or("–".to_string(), |u| format!("{:.0}", u.rss_peak_bytes as f64 / 1048576.0)),
                r.client.map_or("–".to_string(), |u| format!("{:.2}", u.cpu_cores)),
                r.msgs_per_receive.map_or("–".to_string(), |x| format!("{x:.1}")),
                r.errors + r.receive_errors,
            );
        }
        s
    }

    /// Throughput bars, send-latency percentiles at maximum load and end-to-end percentiles
    /// of the paced runs, side by side.
    pub fn svg(&self) -> String {
        let (w, h) = (1260.0, 470.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="20" y="24" font-size="15" font-weight="bold">rmq-gateway benchmark — {}</text>"#,
            esc(&self.started_at)
        );
        let _ = writeln!(s, r##"<text x="20" y="42" fill="#555">{}</text>"##, esc(&self.machine.summary()));
        let systems: Vec<&str> = {
            let mut v: Vec<&str> = Vec::new();
            for r in &self.results {
                if !v.contains(&r.system.as_str()) {
                    v.push(&r.system);
                }
            }
            v
        };
        let color = |sys: &str| PALETTE[systems.iter().position(|x| *x == sys).unwrap_or(0) % PALETTE.len()];

        // Panel 1: throughput of the unpaced runs.
        let (px, py, pw, ph) = (20.0, 70.0, 360.0, 330.0);
        let _ = writeln!(
            s,
            r#"<text x="{px}" y="{}" font-weight="bold">Send throughput, max load (msg/s)</text>"#,
            py - 8.0
        );
        let bars: Vec<&RunResult> = self.results.iter().filter(|r| r.target_rate.is_none()).collect();
        let top = bars.iter().map(|r| r.msgs_per_s).fold(1.0, f64::max) * 1.6;
        let bar_h = (ph / bars.len().max(1) as f64).min(48.0);
        let label_w = 120.0;
        for (i, r) in bars.iter().enumerate() {
            let y = py + i as f64 * bar_h;
            let len = (pw - label_w) * r.msgs_per_s / top;
            let _ = writeln!(s, r#"<text x="{px}" y="{:.1}">{}</text>"#, y + bar_h * 0.55, esc(&r.system));
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{len:.1}" height="{:.1}" fill="{}"/>"#,
                px + label_w,
                y + 4.0,
                bar_h - 8.0,
                color(&r.system)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="11">{:.0} ({:.1} MB/s)</text>"#,
                px + label_w + len + 4.0,
                y + bar_h * 0.55,
                r.msgs_per_s,
                r.mb_per_s
            );
        }

        // Panels 2 and 3: percentile curves on a log scale.
        let send: Vec<Series> = bars
            .iter()
            .filter_map(|r| {
                Some(Series {
                    label: r.system.clone(),
                    system: &r.system,
                    lat: r.send_latency.as_ref()?,
                    dashed: false,
                })
            })
            .collect();
        let e2e: Vec<Series> = self
            .results
            .iter()
            .filter(|r| r.target_rate.is_some())
            .filter_map(|r| {
                Some(Series {
                    label: format!("{} {}", r.system, r.phase),
                    system: &r.system,
                    lat: r.e2e_latency.as_ref()?,
                    dashed: r.phase != "paced-50%",
                })
            })
            .collect();
        percentile_panel(&mut s, 440.0, 70.0, "Send latency at max load (ms)", &send, &color, None);
        percentile_panel(&mut s, 860.0, 70.0, "End-to-end latency, paced runs (ms)", &e2e, &color, Some(5.0));
        let _ = writeln!(s, "</svg>");
        s
    }
}

/// One curve of a percentile panel.
struct Series<'a> {
    label: String,
    system: &'a str,
    lat: &'a Latency,
    dashed: bool,
}

const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

fn percentile_panel(
    s: &mut String,
    x0: f64,
    y0: f64,
    title: &str,
    series: &[Series],
    color: &dyn Fn(&str) -> &'static str,
    target_ms: Option<f64>,
) {
    let (pw, ph) = (360.0, 300.0);
    let (left, bottom) = (50.0, 30.0);
    let _ = writeln!(s, r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#, y0 - 8.0, esc(title));
    if series.is_empty() {
        let _ = writeln!(s, r##"<text x="{}" y="{}" fill="#777">no data</text>"##, x0 + 20.0, y0 + 40.0);
        return;
    }
    let values = series.iter().flat_map(|s| s.lat.points().map(|(_, v)| v.max(0.001))).chain(target_ms);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (dlo, dhi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let (ax, ay, aw, ah) = (x0 + left, y0, pw - left, ph - bottom);
    let ypos = |v: f64| ay + ah - (v.max(0.001).log10() - dlo) / (dhi - dlo) * ah;
    let _ = writeln!(s, r##"<rect x="{ax}" y="{ay}" width="{aw}" height="{ah}" fill="none" stroke="#999"/>"##);
    let mut d = dlo;
    while d <= dhi + 1e-9 {
        let y = ypos(10f64.powf(d));
        let _ = writeln!(s, r##"<line x1="{ax}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, ax + aw);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
            ax - 4.0,
            y + 4.0,
            fmt_ms(10f64.powf(d))
        );
        d += 1.0;
    }
    if let Some(t) = target_ms {
        let y = ypos(t);
        let _ = writeln!(
            s,
            r##"<line x1="{ax}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#000" stroke-dasharray="2,3"/>"##,
            ax + aw
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" font-size="10">target {t} ms</text>"#, ax + 4.0, y - 3.0);
    }
    let n = 5;
    let xpos = |i: usize| ax + 20.0 + i as f64 * (aw - 40.0) / (n - 1) as f64;
    for (i, (name, _)) in series[0].lat.points().iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{name}</text>"#,
            xpos(i),
            ay + ah + 16.0
        );
    }
    for (k, series) in series.iter().enumerate() {
        let pts: Vec<String> = series
            .lat
            .points()
            .iter()
            .enumerate()
            .map(|(i, (_, v))| format!("{:.1},{:.1}", xpos(i), ypos(*v)))
            .collect();
        let c = color(series.system);
        let dash = if series.dashed { r#" stroke-dasharray="5,3""# } else { "" };
        let _ =
            writeln!(s, r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#, pts.join(" "));
        for p in &pts {
            if let Some((x, y)) = p.split_once(',') {
                let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
            }
        }
        let ly = y0 + ph + 14.0 + (k / 2) as f64 * 15.0;
        let lx = x0 + (k % 2) as f64 * 190.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="2"{dash}/>"#,
            ly - 4.0,
            lx + 14.0,
            ly - 4.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{ly:.1}" font-size="11">{}</text>"#, lx + 18.0, esc(&series.label));
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn result(system: &str, rate: Option<f64>) -> RunResult {
        let mut h = super::super::load::histogram().unwrap();
        for v in [100, 200, 300, 5000] {
            h.record(v).unwrap();
        }
        let lat = Latency::of(&h);
        RunResult {
            system: system.into(),
            phase: if rate.is_some() { "paced-50%".into() } else { "max".into() },
            storage: "memory".into(),
            producers: 1,
            concurrency: 1,
            consumers: 1,
            message_size: 1024,
            batch: 1,
            target_rate: rate,
            window_s: 1.0,
            messages: 10,
            requests: 10,
            errors: 0,
            first_error: None,
            msgs_per_s: 10.0,
            mb_per_s: 0.01,
            send_latency: lat.clone(),
            e2e_latency: rate.and(lat),
            received: 10,
            receive_errors: 0,
            msgs_per_receive: None,
            server: None,
            server_cpu_us_per_msg: None,
            client: None,
            other_cpu_cores: None,
            other_processes_cores: 0.0,
            kernel_threads_cores: 0.0,
            disk_bytes: None,
            send_path: None,
        }
    }

    #[test]
    fn outputs_mention_every_system() {
        let mut r = Report::new(Path::new("."));
        r.results = vec![result("a<b", None), result("a<b", Some(5.0)), result("c", None)];
        r.checks.push(Check { target: "x".into(), measured: "y".into(), met: Some(false) });
        let md = r.markdown();
        assert!(md.contains("| a<b | max |"));
        assert!(md.contains("**no**"));
        let svg = r.svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b"));
        assert!(!svg.contains("NaN"));
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(json["results"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn rounds_have_a_median_and_a_spread() {
        let s = Spread { name: "x".into(), values: vec![0.80, 0.88, 0.84] };
        assert_eq!(s.median(), Some(0.84));
        assert!((s.relative().unwrap() - 0.10).abs() < 1e-9);
        let even = Spread { name: "y".into(), values: vec![100.0, 300.0] };
        assert_eq!(even.median(), Some(200.0));
        assert!(Spread { name: "z".into(), values: vec![1.0] }.relative().is_none());
        let mut r = Report::new(Path::new("."));
        r.results = vec![result("a", None)];
        r.rounds = vec![s, even];
        let md = r.markdown();
        assert!(md.contains("## Across the 3 rounds"), "{md}");
        assert!(md.contains("| x | 0.80 | 0.88 | 0.84 | 0.84 | 10 % |"), "{md}");
        assert!(md.contains("| y | 100 | 300 | 200 | 200 % |"), "{md}");
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = super::super::load::histogram().unwrap();
        h.record(1000).unwrap();
        let l = Latency::of(&h).unwrap();
        assert!((l.p50_ms - 1.0).abs() < 0.01);
        assert!(Latency::of(&super::super::load::histogram().unwrap()).is_none());
    }
}
