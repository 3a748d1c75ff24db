//! `rmq-gateway bench cluster`: send throughput and latency of 1, 2 and 3 gateways forming
//! one cluster on this machine, with the load generator of `bench compare` (gRPC SendMessage,
//! closed loop). Everything runs on loopback and is started here: a throwaway PostgreSQL
//! (`integration-tests/services/postgres.sh`, a fresh database per cluster size), an s3s-fs
//! (`services/s3.sh`, objects on disk), the gateways (`cluster.enabled`, each with its own data
//! dir and ports, `storage.tiering` on the shared bucket) and a round-robin TCP load balancer
//! in front of their gRPC ports.
//!
//! Per cluster size two runs: `lb` (every producer connection through the load balancer:
//! requests reaching a non-owner are forwarded) and `routes` (producer connections spread over
//! the owners QueryRoute names, as SDK clients do). The table gives each run's throughput,
//! p50/p99 send latency and its ratio to the same run on one node; JSON and Markdown go to
//! `bench-results/cluster.*`. On a 2-core machine every node competes for the same cores, so
//! the ratios show the cost of the cluster (forwarding, leases, tail uploads), not scaling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::grpc::{self, Flush, Target};
use super::procs::{self, Server};
use super::report::{Ratio, Report, RunResult};
use super::s3::LocalServer;
use super::{LoadArgs, OutArgs};

/// `rmq-gateway bench cluster`.
#[derive(Debug, Args)]
pub struct ClusterBenchArgs {
    /// Cluster sizes to measure, in this order (the ratios are against the first).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub nodes: Vec<usize>,
    /// Producer connections.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Requests in flight per producer connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// Messages per gRPC send request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Measured time of each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Warm-up before each run's window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Flush mode of the gateways.
    #[arg(long, value_enum, default_value = "sync")]
    pub flush: Flush,
    /// `cluster.shards`.
    #[arg(long, default_value_t = 12)]
    pub shards: u32,
    /// Queues of the benchmark topic (spread over the shards).
    #[arg(long, default_value_t = 12)]
    pub queues: u32,
    /// Gateway binary (default: this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// The script that starts PostgreSQL.
    #[arg(long, default_value = "integration-tests/services/postgres.sh")]
    pub postgres_script: PathBuf,
    /// The script that starts s3s-fs.
    #[arg(long, default_value = "integration-tests/services/s3.sh")]
    pub s3_script: PathBuf,
    /// How long a cluster may take until every shard is owned.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub ready_timeout: Duration,
    /// Where the gateways and s3s-fs keep their data during the run (removed afterwards).
    #[arg(long, default_value = "bench-results/.work/cluster")]
    pub work_dir: PathBuf,
    /// Print no progress lines.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub out: OutArgs,
}

impl ClusterBenchArgs {
    fn load(&self) -> LoadArgs {
        LoadArgs {
            producers: self.producers,
            concurrency: self.concurrency,
            consumers: 0,
            message_size: self.message_size,
            batch: self.batch,
            duration: self.duration,
            warmup: self.warmup,
            messages: None,
            rate: None,
            drain: Duration::ZERO,
            quiet: self.quiet,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.nodes.is_empty(), "--nodes needs at least one cluster size");
        anyhow::ensure!(self.nodes.iter().all(|&n| (1..=16).contains(&n)), "--nodes: sizes between 1 and 16");
        anyhow::ensure!((1..=1024).contains(&self.shards), "--shards must be between 1 and 1024");
        anyhow::ensure!(self.queues >= 1, "--queues must be at least 1");
        Ok(())
    }
}

/// A throwaway PostgreSQL (`postgres.sh start`), stopped and removed on drop.
struct Postgres {
    script: PathBuf,
    dir: String,
    port: u16,
}

impl Postgres {
    fn start(script: &Path) -> anyhow::Result<Postgres> {
        anyhow::ensure!(script.is_file(), "{} not found (run from the repository root)", script.display());
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running postgres.sh start")?;
        anyhow::ensure!(out.status.success(), "postgres.sh start failed ({})", out.status);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
                .with_context(|| format!("postgres.sh printed no {name}: `{}`", text.trim()))
        };
        Ok(Postgres { script: script.to_path_buf(), dir: field("PGTMP")?, port: field("PGPORT")?.parse()? })
    }

    /// A fresh database; its URL.
    fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let status = Command::new("bash")
            .arg(&self.script)
            .args(["createdb", &self.dir, name])
            .stdin(Stdio::null())
            .status()
            .context("running postgres.sh createdb")?;
        anyhow::ensure!(status.success(), "postgres.sh createdb {name} failed ({status})");
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).args(["stop", &self.dir]).stdin(Stdio::null()).status();
    }
}

/// A round-robin TCP load balancer on loopback (a task of this runtime; aborted on drop).
struct LoadBalancer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LoadBalancer {
    async fn start(backends: Vec<SocketAddr>) -> anyhow::Result<LoadBalancer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let backends = backends.clone();
                let first = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    for k in 0..backends.len() {
                        let backend = backends[(first + k) % backends.len()];
                        let Ok(mut server) = tokio::net::TcpStream::connect(backend).await else { continue };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                });
            }
        });
        Ok(LoadBalancer { addr, task })
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One gateway of a benchmark cluster.
struct Node {
    server: Server,
    grpc: SocketAddr,
    http: u16,
    data_dir: PathBuf,
}

/// A plain HTTP/1.1 GET on loopback; the body if the status is 200.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP response")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {}", head.lines().next().unwrap_or(""));
    Ok(body.to_string())
}

/// Whether `GET /api/v1/cluster` on `port` shows `shards` shards, each owned by one of `ids`.
async fn all_owned(port: u16, shards: u32, ids: &[String]) -> anyhow::Result<bool> {
    let body = http_get(port, "/api/v1/cluster").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let list = v.get("shards").and_then(|s| s.as_array()).context("no `shards` in /api/v1/cluster")?;
    Ok(list.len() == shards as usize
        && list.iter().all(|s| s.get("owner").and_then(|o| o.as_str()).is_some_and(|o| ids.iter().any(|id| id == o))))
}

struct Bench<'a> {
    args: &'a ClusterBenchArgs,
    bin: PathBuf,
    report: Report,
}

impl Bench<'_> {
    fn start_node(&self, i: usize, db_url: &str, s3: &LocalServer, prefix: &str) -> anyhow::Result<Node> {
        let id = format!("n{i}");
        let data_dir = self.args.work_dir.join(prefix).join(&id);
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let grpc_port = procs::free_port()?;
        let mut http = procs::free_port()?;
        while http == grpc_port {
            http = procs::free_port()?;
        }
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(crate::config::ENV_PREFIX) {
                cmd.env_remove(key);
            }
        }
        let peer = format!("127.0.0.1:{grpc_port}");
        cmd.arg("serve");
        let env: [(&str, String); 23] = [
            ("SERVER__BIND_ADDRESS", "127.0.0.1".into()),
            ("SERVER__GRPC_SERVER_PORT", grpc_port.to_string()),
            ("SERVER__HTTP_SERVER_PORT", http.to_string()),
            ("SERVER__ADVERTISED_ADDRESS", peer.clone()),
            ("STORAGE__DATA_DIR", data_dir.display().to_string()),
            ("STORAGE__FLUSH_DISK_TYPE", self.args.flush.config_value().into()),
            ("TOPICS__AUTO_CREATE_TOPIC_ENABLE", "true".into()),
            ("TOPICS__DEFAULT_TOPIC_QUEUE_NUMS", self.args.queues.to_string()),
            ("METADATA__URL", db_url.into()),
            ("STORAGE__TIERING__ENABLED", "true".into()),
            ("STORAGE__TIERING__LOG_ID", format!("node-{id}")),
            ("STORAGE__TIERING__OBJECT_STORE__TYPE", "s3".into()),
            ("STORAGE__TIERING__OBJECT_STORE__BUCKET", s3.bucket.clone()),
            ("STORAGE__TIERING__OBJECT_STORE__ENDPOINT", s3.endpoint.clone()),
            ("STORAGE__TIERING__OBJECT_STORE__PREFIX", format!("{prefix}/")),
            ("STORAGE__TIERING__OBJECT_STORE__PATH_STYLE", "true".into()),
            ("STORAGE__TIERING__OBJECT_STORE__REGION", "us-east-1".into()),
            ("STORAGE__TIERING__OBJECT_STORE__ACCESS_KEY", s3.key.clone()),
            ("STORAGE__TIERING__OBJECT_STORE__SECRET_KEY", s3.key.clone()),
            ("CLUSTER__ENABLED", "true".into()),
            ("CLUSTER__NODE_ID", id.clone()),
            ("CLUSTER__PEER_ADDRESS", peer),
            ("CLUSTER__SHARDS", self.args.shards.to_string()),
        ];
        for (k, v) in env {
            cmd.env(format!("{}{k}", crate::config::ENV_PREFIX), v);
        }
        let log = self.args.work_dir.join(prefix).join(format!("{id}.log"));
        let server = Server::spawn(&format!("{prefix}-{id}"), cmd, &log)?;
        Ok(Node { server, grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)), http, data_dir })
    }

    /// Waits until every node answers /readyz and sees every shard owned by a node.
    async fn wait_ready(&self, nodes: &mut [Node]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let ids: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
        loop {
            let mut ready = true;
            let mut last = String::new();
            for node in nodes.iter_mut() {
                node.server.check_alive()?;
                let ok = match http_get(node.http, "/readyz").await {
                    Ok(_) => match all_owned(node.http, self.args.shards, &ids).await {
                        Ok(ok) => ok,
                        Err(e) => {
                            last = format!("{e:#}");
                            false
                        }
                    },
                    Err(e) => {
                        last = format!("{e:#}");
                        false
                    }
                };
                ready &= ok;
            }
            if ready {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < self.args.ready_timeout,
                "cluster of {} not ready (every shard owned) within {:?}: {last}",
                nodes.len(),
                self.args.ready_timeout
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn size(&mut self, n: usize, pg: &Postgres, s3: &LocalServer) -> anyhow::Result<()> {
        let prefix = format!("c{n}-{}", std::process::id());
        let db = pg.create_database(&format!("bench_{}", prefix.replace('-', "_")))?;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(self.start_node(i, &db, s3, &prefix)?);
        }
        let result = self.measure(n, &mut nodes).await;
        for node in &mut nodes {
            node.server.stop(Duration::from_secs(30));
        }
        for node in &nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
        result
    }

    async fn measure(&mut self, n: usize, nodes: &mut [Node]) -> anyhow::Result<()> {
        let took = self.wait_ready(nodes).await?;
        eprintln!("cluster-{n}: {n} gateway(s) ready, every shard owned, after {:.1} s", took.as_secs_f64());
        let lb = LoadBalancer::start(nodes.iter().map(|node| node.grpc).collect()).await?;
        let pids: Vec<u32> = nodes.iter().filter_map(|node| node.server.pid()).collect();
        let system = format!("cluster-{n}");
        let storage =
            format!("{n} node(s), {} shards, {}, tiered to s3s-fs", self.args.shards, self.args.flush.config_value());
        let args = self.args.load();
        // Through the load balancer.
        let target = Target {
            addr: lb.addr,
            topic: grpc::default_topic(&format!("c{n}-lb")),
            group: "bench".into(),
            full: true,
        };
        grpc::prepare(&target, Duration::from_secs(60)).await?;
        eprintln!("{system}: lb ({} in flight through {})", args.producers * args.concurrency, lb.addr);
        let o = grpc::run(&system, &args, &target, &pids.clone().into()).await?;
        self.record(RunResult::new(&system, "lb", &storage, &args, &o));
        for node in nodes.iter_mut() {
            node.server.check_alive()?;
        }
        // Following the routes.
        let target = Target {
            addr: nodes[0].grpc,
            topic: grpc::default_topic(&format!("c{n}-routes")),
            group: "bench".into(),
            full: true,
        };
        grpc::prepare(&target, Duration::from_secs(60)).await?;
        let owners = grpc::route_endpoints(nodes[0].grpc, &target.topic).await?;
        eprintln!("{system}: routes ({} in flight over {} owner(s))", args.producers * args.concurrency, owners.len());
        let o = grpc::run_spread(&system, &args, &target, &owners, &pids).await?;
        self.record(RunResult::new(&system, "routes", &storage, &args, &o));
        for node in nodes.iter_mut() {
            node.server.check_alive()?;
        }
        Ok(())
    }

    fn record(&mut self, r: RunResult) {
        if let Some(e) = &r.first_error {
            self.report.notes.push(format!("{}: first error: {e}", r.key()));
        }
        self.report.results.push(r);
    }

    /// Each run's throughput and p99 against the same run on the first cluster size.
    fn ratios(&mut self) {
        let Some(&base_n) = self.args.nodes.first() else { return };
        let base = format!("cluster-{base_n}");
        let mut ratios = Vec::new();
        for phase in ["lb", "routes"] {
            let Some(b) = self.report.find(&base, phase).cloned() else { continue };
            for &n in &self.args.nodes[1..] {
                let system = format!("cluster-{n}");
                let Some(r) = self.report.find(&system, phase) else { continue };
                if b.msgs_per_s > 0.0 {
                    ratios.push(Ratio {
                        name: format!("{system} {phase} msg/s vs {base}"),
                        value: r.msgs_per_s / b.msgs_per_s,
                    });
                }
                if let (Some(l), Some(bl)) = (&r.send_latency, &b.send_latency)
                    && bl.p99_ms > 0.0
                {
                    ratios.push(Ratio {
                        name: format!("{system} {phase} send p99 vs {base}"),
                        value: l.p99_ms / bl.p99_ms,
                    });
                }
            }
        }
        self.report.ratios = ratios;
    }
}

/// `rmq-gateway bench cluster`.
pub async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let bin = match &args.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("creating {}", args.work_dir.display()))?;
    let pg = Postgres::start(&args.postgres_script)?;
    let s3 = LocalServer::start(&args.s3_script, &args.work_dir.join("s3"))?;
    let mut bench = Bench { args: &args, bin, report: Report::new(&args.work_dir) };
    bench.report.notes.push(format!(
        "every gateway, PostgreSQL (fsync off) and s3s-fs share this machine's {} cores; producers \
         closed loop, {} connections x {} in flight",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        args.producers,
        args.concurrency
    ));
    for &n in &args.nodes {
        bench.size(n, &pg, &s3).await.with_context(|| format!("cluster of {n}"))?;
    }
    bench.ratios();
    println!("{}", bench.report.table());
    for r in &bench.report.ratios {
        println!("{}: {:.2}", r.name, r.value);
    }
    for p in bench.report.write(&args.out.out, "cluster")? {
        eprintln!("wrote {}", p.display());
    }
    drop(s3);
    drop(pg);
    Ok(())
}
