//! `rmq-gateway bench metrics-plot`: scrapes a gateway's `/metrics` every `--interval` while
//! some load runs against it (e.g. `bench e2e --target …` in another shell) and renders the
//! main series over time as one SVG: messages in/out per second, consumer lag, SendMessage and
//! ReceiveMessage p99 (from the histogram's bucket deltas per interval), commit-log flush p99
//! and resident memory. Also writes the raw samples as JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Args)]
pub struct MetricsPlotArgs {
    /// The gateway's admin HTTP address (host:port) serving `/metrics`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// How long to scrape.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Time between scrapes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Output directory (`<stem>.svg`, `<stem>.json`).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    #[arg(long, default_value = "metrics")]
    pub stem: String,
}

/// One scrape: series (name with labels as printed) → value.
pub type Scrape = HashMap<String, f64>;

/// The plotted figures at one point in time (seconds since the first scrape).
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Point {
    t: f64,
    in_per_s: f64,
    out_per_s: f64,
    lag: f64,
    send_p99_ms: f64,
    receive_p99_ms: f64,
    flush_p99_ms: f64,
    rss_mib: f64,
}

pub async fn run(args: MetricsPlotArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be positive");
    let start = Instant::now();
    let mut prev: Option<(f64, Scrape)> = None;
    let mut points = Vec::new();
    while start.elapsed() < args.duration {
        let tick = Instant::now();
        let t = start.elapsed().as_secs_f64();
        match scrape(&args.http).await {
            Ok(s) => {
                if let Some((pt, p)) = &prev {
                    points.push(point(t, t - pt, p, &s));
                }
                prev = Some((t, s));
            }
            Err(e) => eprintln!("metrics-plot: scrape failed: {e:#}"),
        }
        tokio::time::sleep(args.interval.saturating_sub(tick.elapsed())).await;
    }
    anyhow::ensure!(points.len() >= 2, "fewer than 3 scrapes succeeded at {}", args.http);
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let svg = args.out.join(format!("{}.svg", args.stem));
    std::fs::write(&svg, render(&points)).with_context(|| format!("cannot write {}", svg.display()))?;
    let json = args.out.join(format!("{}.json", args.stem));
    std::fs::write(&json, serde_json::to_string_pretty(&points)?)?;
    println!("wrote {} and {}", svg.display(), json.display());
    Ok(())
}

/// GET /metrics over HTTP/1.0 (the body ends with the connection).
pub async fn scrape(addr: &str) -> anyhow::Result<Scrape> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await??;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    anyhow::ensure!(head.contains(" 200 "), "{}", head.lines().next().unwrap_or_default());
    Ok(parse(body))
}

fn parse(body: &str) -> Scrape {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?)))
        .collect()
}

/// Sum of the series named `name` (any labels) whose labels contain `having`.
pub fn sum(s: &Scrape, name: &str, having: &str) -> f64 {
    s.iter().filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(having)).map(|(_, v)| v).sum()
}

/// The q-quantile (ms) of a histogram's observations between two scrapes, linear within the
/// bucket; 0 with none.
fn quantile(prev: &Scrape, cur: &Scrape, name: &str, having: &str, q: f64) -> f64 {
    let bucket = format!("{name}_bucket");
    let mut by_le: HashMap<String, f64> = HashMap::new();
    for (k, v) in cur.iter().filter(|(k, _)| k.starts_with(&bucket) && k.contains(having)) {
        let Some(le) = k.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        *by_le.entry(le.to_string()).or_default() += v - prev.get(k).copied().unwrap_or(0.0);
    }
    let mut buckets: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(le, n)| (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(0.0) }, n))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return lo;
            }
            let inside = (n - below).max(f64::MIN_POSITIVE);
            return lo + (le - lo) * ((rank - below) / inside);
        }
        lo = le;
        below = n;
    }
    lo
}

fn point(t: f64, dt: f64, p: &Scrape, s: &Scrape) -> Point {
    let rate = |name: &str| ((sum(s, name, "") - sum(p, name, "")) / dt.max(1e-9)).max(0.0);
    Point {
        t,
        in_per_s: rate("rocketmq_messages_in_total"),
        out_per_s: rate("rocketmq_messages_out_total"),
        lag: sum(s, "rocketmq_consumer_lag_messages", ""),
        send_p99_ms: quantile(p, s, "rocketmq_rpc_latency", "request_code=\"SendMessage\"", 0.99),
        receive_p99_ms: quantile(p, s, "rocketmq_rpc_latency", "request_code=\"ReceiveMessage\"", 0.99),
        flush_p99_ms: quantile(p, s, "rocketmq_storage_flush_latency", "", 0.99),
        rss_mib: sum(s, "process_resident_memory_bytes", "") / (1024.0 * 1024.0),
    }
}

/// Six small line charts in a 2×3 grid.
fn render(points: &[Point]) -> String {
    type Pick = fn(&Point) -> f64;
    type Series<'a> = &'a [(&'a str, Pick, &'a str)];
    let charts: [(&str, Series); 6] = [
        ("messages / s", &[("in", |p| p.in_per_s, "#1f77b4"), ("out", |p| p.out_per_s, "#ff7f0e")]),
        ("consumer lag (messages)", &[("lag", |p| p.lag, "#d62728")]),
        ("SendMessage p99 (ms)", &[("send", |p| p.send_p99_ms, "#2ca02c")]),
        ("ReceiveMessage p99 (ms, incl. long poll)", &[("receive", |p| p.receive_p99_ms, "#9467bd")]),
        ("commit-log flush p99 (ms)", &[("flush", |p| p.flush_p99_ms, "#8c564b")]),
        ("resident memory (MiB)", &[("rss", |p| p.rss_mib, "#7f7f7f")]),
    ];
    let (cw, ch, pad) = (420.0, 220.0, 40.0);
    let (w, h) = (cw * 2.0, ch * 3.0);
    let t_max = points.last().map_or(1.0, |p| p.t).max(1.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, (title, series)) in charts.iter().enumerate() {
        let (x0, y0) = ((i % 2) as f64 * cw + pad, (i / 2) as f64 * ch + 24.0);
        let (pw, ph) = (cw - pad - 16.0, ch - 60.0);
        let y_max = series.iter().flat_map(|(_, f, _)| points.iter().map(f)).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
        let _ = writeln!(svg, r#"<text x="{x0}" y="{}" font-weight="bold">{title}</text>"#, y0 - 8.0);
        let _ = writeln!(svg, r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>"##);
        let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, x0 - 4.0, y0 + 10.0, fmt(y_max));
        let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">0</text>"#, x0 - 4.0, y0 + ph);
        let _ =
            writeln!(svg, r#"<text x="{}" y="{}" text-anchor="end">{:.0} s</text>"#, x0 + pw, y0 + ph + 14.0, t_max);
        for (j, (name, f, color)) in series.iter().enumerate() {
            let pts: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x0 + pw * p.t / t_max, y0 + ph - ph * f(p) / y_max))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                pts.join(" ")
            );
            let lx = x0 + 8.0 + j as f64 * 70.0;
            let _ = writeln!(svg, r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#, lx, y0 + ph + 14.0);
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn fmt(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_from_bucket_deltas() {
        let prev = parse("h_bucket{le=\"1\"} 0\nh_bucket{le=\"10\"} 0\nh_bucket{le=\"+Inf\"} 0\n");
        let cur = parse("h_bucket{le=\"1\"} 50\nh_bucket{le=\"10\"} 100\nh_bucket{le=\"+Inf\"} 100\n");
        let p50 = quantile(&prev, &cur, "h", "", 0.5);
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = quantile(&prev, &cur, "h", "", 0.99);
        assert!(p99 > 9.0 && p99 <= 10.0, "{p99}");
        assert_eq!(quantile(&cur, &cur, "h", "", 0.99), 0.0);
    }

    #[test]
    fn renders_an_svg() {
        let pts: Vec<Point> =
            (0..5).map(|i| Point { t: i as f64, in_per_s: i as f64 * 10.0, ..Default::default() }).collect();
        let svg = render(&pts);
        assert!(svg.starts_with("<svg") && svg.contains("messages / s") && svg.trim_end().ends_with("</svg>"));
    }
}
