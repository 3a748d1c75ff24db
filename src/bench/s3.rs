//! The S3 benchmark (`rmq-gateway bench s3`, part of `make bench`): the raw throughput of an
//! S3-compatible server with the aws-sdk-s3 client the gateway uses (PutObject of whole objects,
//! ranged GetObject), and the same reads through [`S3Store::get_range`], so a cold-read figure
//! can be set beside the server's own ceiling measured in the same run. Against `--endpoint`, or
//! else an s3s-fs it starts itself (`integration-tests/services/s3.sh`, objects written to disk
//! under `--data-dir`). Timings are reported, never asserted. Results: a table on stdout,
//! `bench-results/s3.json` and `s3.md`.
//!
//! [`raw_get_throughput`] is the measurement the tiering benchmark reuses for its
//! "cold reads ≥ 80 % of raw GET" ratio.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::ObjectStoreConfig;
use crate::storage::object::ObjectStore;
use crate::storage::object::s3::{S3Options, S3Store};

/// `16MiB`, `64KiB`, `1GiB`, `4M` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a size (e.g. 16MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// Arguments of `rmq-gateway bench s3`.
#[derive(Debug, Clone, clap::Args)]
pub struct S3BenchArgs {
    /// S3 endpoint URL (e.g. http://127.0.0.1:9000). Empty: start s3s-fs on loopback with
    /// `--s3-script` (installed by `s3.sh install s3s-fs`, cached), writing under `--data-dir`.
    #[arg(long, default_value = "")]
    pub endpoint: String,
    /// Bucket (must exist on an endpoint given with --endpoint).
    #[arg(long, default_value = "test-bucket")]
    pub bucket: String,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Static credentials; empty: the AWS credential chain (with --endpoint).
    #[arg(long, env = "RMQ_BENCH_S3_ACCESS_KEY", default_value = "")]
    pub access_key: String,
    #[arg(long, env = "RMQ_BENCH_S3_SECRET_KEY", default_value = "", hide_env_values = true)]
    pub secret_key: String,
    /// Virtual-hosted-style addressing (AWS); the default is path-style (local servers).
    #[arg(long)]
    pub virtual_hosted: bool,
    /// Size of each object written.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub object_size: u64,
    /// Objects written (and then read back).
    #[arg(long, default_value_t = 32)]
    pub objects: usize,
    /// Size of each ranged GET.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub range_size: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Directory for the s3s-fs this command starts (removed afterwards).
    #[arg(long, default_value = "./data/bench-s3")]
    pub data_dir: PathBuf,
    /// The S3 service script (started from the repository root).
    #[arg(long, default_value = "integration-tests/services/s3.sh")]
    pub s3_script: PathBuf,
    /// Directory for the JSON and Markdown results.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,
}

/// Throughput of one kind of request.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub requests: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub requests_per_s: f64,
    /// Requests per GB (10^9 bytes) moved.
    pub requests_per_gb: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Throughput {
    fn of(bytes: u64, elapsed: Duration, mut latencies_ms: Vec<f64>) -> Throughput {
        latencies_ms.sort_by(f64::total_cmp);
        let at =
            |q: f64| latencies_ms.get(((latencies_ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let requests = latencies_ms.len() as u64;
        Throughput {
            requests,
            bytes,
            seconds,
            mb_per_s: bytes as f64 / 1e6 / seconds,
            requests_per_s: requests as f64 / seconds,
            requests_per_gb: if bytes == 0 { 0.0 } else { requests as f64 * 1e9 / bytes as f64 },
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct S3Report {
    pub endpoint: String,
    /// `s3s-fs 0.14.1 (started by the bench, on disk)` or `given endpoint`.
    pub server: String,
    pub object_size: u64,
    pub objects: usize,
    pub range_size: u64,
    pub concurrency: usize,
    /// PutObject of whole objects with the SDK client.
    pub raw_put: Throughput,
    /// Ranged GetObject with the SDK client, every byte of every object once.
    pub raw_get: Throughput,
    /// The same ranges through `S3Store::get_range` (length checks, timeouts).
    pub store_get: Throughput,
    /// `store_get` MB/s over `raw_get` MB/s.
    pub store_over_raw_get: f64,
}

/// Writes `objects` objects of `size` bytes under `prefix` with PutObject, `concurrency` at a
/// time; returns the throughput and the keys with their sizes.
pub async fn raw_put_throughput(
    client: &Client,
    bucket: &str,
    prefix: &str,
    size: u64,
    objects: usize,
    concurrency: usize,
) -> anyhow::Result<(Throughput, Vec<(String, u64)>)> {
    let body = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let keys: Vec<(String, u64)> = (0..objects).map(|i| (format!("{prefix}{i:06}"), size)).collect();
    let started = Instant::now();
    let latencies: Vec<f64> =
        futures::stream::iter(keys.iter().cloned())
            .map(|(key, _)| {
                let body = body.clone();
                async move {
                    let t = Instant::now();
                    client.put_object().bucket(bucket).key(&key).body(ByteStream::from(body)).send().await.map_err(
                        |e| anyhow::anyhow!("PutObject {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
                    )?;
                    Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64() * 1e3)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
    Ok((Throughput::of(size * objects as u64, started.elapsed(), latencies), keys))
}

/// The ranges covering every byte of `keys`, `range_size` at a time.
fn ranges(keys: &[(String, u64)], range_size: u64) -> Vec<(String, u64, u64)> {
    let step = range_size.max(1);
    let mut out = Vec::new();
    for (key, size) in keys {
        let mut start = 0;
        while start < *size {
            let end = (start + step).min(*size);
            out.push((key.clone(), start, end));
            start = end;
        }
    }
    out
}

/// The server's raw ranged-GET throughput with the SDK client: every byte of `keys` read once
/// in ranges of `range_size`, `concurrency` requests at a time. The ceiling cold reads from the
/// object store are compared with.
pub async fn raw_get_throughput(
    client: &Client,
    bucket: &str,
    keys: &[(String, u64)],
    range_size: u64,
    concurrency: usize,
) -> anyhow::Result<Throughput> {
    let ranges = ranges(keys, range_size);
    let started = Instant::now();
    let results: Vec<(u64, f64)> = futures::stream::iter(ranges)
        .map(|(key, start, end)| async move {
            let t = Instant::now();
            let out = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .range(format!("bytes={start}-{}", end - 1))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GetObject {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))?;
            let body = out.body.collect().await.with_context(|| format!("GetObject {key}: body"))?.into_bytes();
            anyhow::ensure!(
                body.len() as u64 == end - start,
                "GetObject {key}: {} bytes for {start}..{end}",
                body.len()
            );
            Ok::<_, anyhow::Error>((body.len() as u64, t.elapsed().as_secs_f64() * 1e3))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let bytes = results.iter().map(|r| r.0).sum();
    Ok(Throughput::of(bytes, started.elapsed(), results.into_iter().map(|r| r.1).collect()))
}

/// The same reads through an [`ObjectStore`] (keys relative to its prefix).
pub async fn store_get_throughput(
    store: Arc<dyn ObjectStore>,
    keys: &[(String, u64)],
    range_size: u64,
    concurrency: usize,
) -> anyhow::Result<Throughput> {
    let ranges = ranges(keys, range_size);
    let started = Instant::now();
    let results: Vec<(u64, f64)> = futures::stream::iter(ranges)
        .map(|(key, start, end)| {
            let store = Arc::clone(&store);
            async move {
                let t = Instant::now();
                let body = store.get_range(&key, start..end).await.with_context(|| format!("get_range {key}"))?;
                Ok::<_, anyhow::Error>((body.len() as u64, t.elapsed().as_secs_f64() * 1e3))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let bytes = results.iter().map(|r| r.0).sum();
    Ok(Throughput::of(bytes, started.elapsed(), results.into_iter().map(|r| r.1).collect()))
}

/// An s3s-fs started by `s3.sh start s3s-fs`, stopped (and its directory removed) on drop.
/// The tiering benchmark starts its server with this too.
pub(crate) struct LocalServer {
    script: PathBuf,
    run_dir: PathBuf,
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    /// Access key and secret key alike.
    pub(crate) key: String,
}

impl LocalServer {
    pub(crate) fn start(script: &Path, run_dir: &Path) -> anyhow::Result<LocalServer> {
        anyhow::ensure!(
            script.is_file(),
            "{} not found (run from the repository root, pass --s3-script, or give --endpoint)",
            script.display()
        );
        let _ = std::fs::remove_dir_all(run_dir);
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        eprintln!("bench: starting s3s-fs under {} (first run installs it: about 2 minutes)", run_dir.display());
        let out = Command::new("bash")
            .arg(script)
            .args(["start", "s3s-fs"])
            .arg(run_dir)
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running s3.sh start")?;
        anyhow::ensure!(out.status.success(), "s3.sh start s3s-fs failed ({})", out.status);
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |name: &str| {
            words
                .iter()
                .position(|w| *w == name)
                .and_then(|i| words.get(i + 1))
                .map(|v| v.to_string())
                .with_context(|| format!("s3.sh printed no {name}: `{line}`"))
        };
        Ok(LocalServer {
            script: script.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            endpoint: field("ENDPOINT")?,
            bucket: field("BUCKET")?,
            key: field("ACCESS_KEY")?,
        })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).arg("stop").arg(&self.run_dir).status();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn markdown(r: &S3Report) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut s = format!(
        "## S3 benchmark\n\n{} at {}: {} objects of {:.1} MiB, ranged GETs of {:.1} MiB, {} in flight\n\n",
        r.server,
        r.endpoint,
        r.objects,
        mib(r.object_size),
        mib(r.range_size),
        r.concurrency
    );
    s += "| operation | requests | MB | seconds | MB/s | requests/s | requests per GB | p50 ms | p99 ms |\n";
    s += "|---|---|---|---|---|---|---|---|---|\n";
    for (name, t) in [
        ("raw PutObject (SDK)", &r.raw_put),
        ("raw ranged GetObject (SDK)", &r.raw_get),
        ("S3Store::get_range", &r.store_get),
    ] {
        s += &format!(
            "| {name} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |\n",
            t.requests,
            t.bytes as f64 / 1e6,
            t.seconds,
            t.mb_per_s,
            t.requests_per_s,
            t.requests_per_gb,
            t.p50_ms,
            t.p99_ms
        );
    }
    s += &format!("\nS3Store::get_range / raw GET: {:.0} %\n", r.store_over_raw_get * 100.0);
    s
}

pub async fn run(args: S3BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.objects > 0 && args.object_size > 0, "--objects and --object-size must be positive");
    anyhow::ensure!(args.concurrency > 0 && args.range_size > 0, "--concurrency and --range-size must be positive");
    std::fs::create_dir_all(&args.results_dir).with_context(|| format!("creating {}", args.results_dir.display()))?;
    let local =
        if args.endpoint.is_empty() { Some(LocalServer::start(&args.s3_script, &args.data_dir)?) } else { None };
    let (endpoint, bucket, access_key, secret_key, server) = match &local {
        Some(l) => (
            l.endpoint.clone(),
            l.bucket.clone(),
            l.key.clone(),
            l.key.clone(),
            "s3s-fs 0.14.1 (started by the bench, objects on disk)".to_string(),
        ),
        None => (
            args.endpoint.clone(),
            args.bucket.clone(),
            args.access_key.clone(),
            args.secret_key.clone(),
            "given endpoint".to_string(),
        ),
    };
    let cfg = ObjectStoreConfig {
        kind: "s3".into(),
        prefix: format!("rmq-bench-s3/{}/", crate::clock::now_ms()),
        bucket,
        region: args.region.clone(),
        endpoint: endpoint.clone(),
        path_style: !args.virtual_hosted,
        access_key,
        secret_key,
        ..ObjectStoreConfig::default()
    };
    let store = Arc::new(S3Store::connect_with(&cfg, S3Options::default()).await?);
    let client = store.client().clone();
    let full_prefix = store.full_key("x")?.trim_end_matches('x').to_string();

    eprintln!("bench s3: PUT {} × {} bytes", args.objects, args.object_size);
    let (raw_put, keys) =
        raw_put_throughput(&client, store.bucket(), &full_prefix, args.object_size, args.objects, args.concurrency)
            .await?;
    eprintln!("bench s3: ranged GET, SDK client");
    let raw_get = raw_get_throughput(&client, store.bucket(), &keys, args.range_size, args.concurrency).await?;
    eprintln!("bench s3: ranged GET through S3Store");
    let relative: Vec<(String, u64)> =
        keys.iter().map(|(k, n)| (k.strip_prefix(&full_prefix).unwrap_or(k).to_string(), *n)).collect();
    let store_get =
        store_get_throughput(store.clone() as Arc<dyn ObjectStore>, &relative, args.range_size, args.concurrency)
            .await?;
    // Clean up what was written (best effort: a local server is removed anyway).
    let _ = futures::stream::iter(relative.iter())
        .map(|(k, _)| store.delete(k))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await;

    let report = S3Report {
        endpoint,
        server,
        object_size: args.object_size,
        objects: args.objects,
        range_size: args.range_size,
        concurrency: args.concurrency,
        store_over_raw_get: if raw_get.mb_per_s > 0.0 { store_get.mb_per_s / raw_get.mb_per_s } else { 0.0 },
        raw_put,
        raw_get,
        store_get,
    };
    let md = markdown(&report);
    println!("\n{md}");
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.results_dir.join("s3.json"), &json)?;
    std::fs::write(args.results_dir.join("s3.md"), &md)?;
    drop(local);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn ranges_cover_every_byte_once() {
        let keys = vec![("a".to_string(), 10), ("b".to_string(), 4), ("c".to_string(), 0)];
        let r = ranges(&keys, 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r.iter().map(|(_, s, e)| e - s).sum::<u64>(), 14);
        assert_eq!(r[2], ("a".to_string(), 8, 10));
    }
}
