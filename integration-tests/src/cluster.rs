//! Several `rmq-gateway serve` processes as one cluster on loopback, for the cluster tests:
//! one throwaway PostgreSQL, one S3 server (moto, or s3s-fs), `n` gateways with their own data
//! dirs and ports, each reaching PostgreSQL through its own [`FaultProxy`] (so one node can be
//! cut off from the database while the others keep it), and a round-robin TCP load balancer in
//! front of the gateways' gRPC ports (the cluster's "single address").
//!
//! Per node: [`Cluster::kill9`], [`Cluster::terminate`] (SIGTERM, graceful), [`Cluster::restart`],
//! [`Cluster::wipe_data_dir`], [`Cluster::cut_db`] / [`Cluster::heal_db`]. Waits are bounded:
//! [`Cluster::wait_ready`] (readyz and every shard owned by a live node) and
//! [`Cluster::wait_owned_by_others`] (none of a node's shards is still its own), both read
//! `GET /api/v1/cluster` on the admin port (`{nodes: [..], shards: [{shard, owner, epoch}]}`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use tonic::transport::Channel;

use crate::client::{request, resource};
use crate::fault_proxy::{Fault, FaultProxy};
use crate::gateway_process::{Gateway, Stop, Stopped, free_port};
use crate::postgres::Postgres;
use crate::s3::{Kind, S3Server};

/// A topic the cluster creates at start-up (`topics.create`).
#[derive(Debug, Clone)]
pub struct TopicDef {
    pub name: String,
    pub queues: u32,
    /// `local` or `s3`.
    pub durability: &'static str,
}

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    pub shards: u32,
    pub lease_ttl: Duration,
    pub renew_interval: Duration,
    pub tail_upload_interval: Duration,
    /// The S3 server: moto (tests) or s3s-fs (bench).
    pub s3: Kind,
    /// Routes advertise the load balancer's address (every request goes through it and is
    /// forwarded to the owner) instead of each owner's own address.
    pub advertise_lb: bool,
    pub topics: Vec<TopicDef>,
    /// `storage.flushDiskType`.
    pub flush: &'static str,
    /// Further `RMQ_GATEWAY_*` overrides for every node.
    pub extra: Vec<(String, String)>,
}

impl Default for ClusterOpts {
    /// Short leases so that tests see failover within seconds: lease 4 s, renew 1 s.
    /// `RMQ_E2E_CLUSTER_LEASES=<ttl>/<renew>` in milliseconds (e.g. `10000/2000`, the product's
    /// defaults) overrides them, to measure take-over times with other leases.
    fn default() -> Self {
        let (lease_ttl, renew_interval) = std::env::var("RMQ_E2E_CLUSTER_LEASES")
            .ok()
            .and_then(|v| {
                let (ttl, renew) = v.split_once('/')?;
                Some((
                    Duration::from_millis(ttl.trim().parse().ok()?),
                    Duration::from_millis(renew.trim().parse().ok()?),
                ))
            })
            .unwrap_or((Duration::from_secs(4), Duration::from_secs(1)));
        ClusterOpts {
            shards: 12,
            lease_ttl,
            renew_interval,
            tail_upload_interval: Duration::from_secs(1),
            s3: Kind::Moto,
            advertise_lb: false,
            topics: Vec::new(),
            flush: "SYNC_FLUSH",
            extra: Vec::new(),
        }
    }
}

/// One gateway of the cluster.
pub struct Node {
    pub id: String,
    pub gateway: Gateway,
    /// In front of PostgreSQL, for this node only.
    pub db_proxy: FaultProxy,
}

/// Who owns a shard, as a node's admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOwner {
    pub shard: u32,
    pub owner: Option<String>,
    pub epoch: Option<i64>,
}

/// The cluster. Field order is drop order: gateways first, then the balancer, the services,
/// the directory, and the runtime the proxies ran on.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub lb: LoadBalancer,
    pub opts: ClusterOpts,
    pub postgres: Postgres,
    pub s3: S3Server,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

/// How long a node may take to start and see every shard owned.
const READY_LIMIT: Duration = Duration::from_secs(60);

impl Cluster {
    /// PostgreSQL, S3 and `n` gateways; `None` (test skipped, or a panic under
    /// `RMQ_E2E_REQUIRED=1`) if PostgreSQL or the S3 server cannot be had.
    pub fn start_or_skip(test: &str, n: usize, opts: ClusterOpts) -> Option<Result<Cluster>> {
        let postgres = Postgres::start_or_skip(test)?;
        let s3 = S3Server::start_or_skip(test, opts.s3)?;
        Some(Cluster::start_with(postgres, s3, n, opts))
    }

    /// `n` gateways on the given services.
    pub fn start_with(postgres: Postgres, s3: S3Server, n: usize, opts: ClusterOpts) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let dir = tempfile::Builder::new().prefix("rmq-cluster-").tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?));
        }
        let backends: Vec<SocketAddr> =
            ports.iter().map(|(grpc, _)| SocketAddr::from(([127, 0, 0, 1], *grpc))).collect();
        let lb = rt.block_on(LoadBalancer::start(backends))?;
        let pg_addr = SocketAddr::from(([127, 0, 0, 1], postgres.port()));
        let mut cluster = Cluster { nodes: Vec::new(), lb, opts, postgres, s3, dir, rt };
        for (i, (grpc, http)) in ports.into_iter().enumerate() {
            let db_proxy = cluster.rt.block_on(FaultProxy::start(pg_addr))?;
            let id = format!("n{i}");
            let node_dir = cluster.dir.path().join(&id);
            std::fs::create_dir_all(&node_dir)?;
            let overrides = cluster.overrides(&id, grpc, &db_proxy);
            let gateway = Gateway::start_on(&node_dir, grpc, http, &overrides, &cluster.topics_yaml())
                .with_context(|| format!("starting node {id}"))?;
            cluster.nodes.push(Node { id, gateway, db_proxy });
        }
        for i in 0..n {
            cluster.wait_ready(i)?;
        }
        Ok(cluster)
    }

    /// The node's configuration as `RMQ_GATEWAY_*` overrides.
    fn overrides(&self, id: &str, grpc_port: u16, db_proxy: &FaultProxy) -> Vec<(String, String)> {
        let o = &self.opts;
        let url = self
            .postgres
            .url()
            .replace(&format!(":{}/", self.postgres.port()), &format!(":{}/", db_proxy.addr().port()));
        let advertised = if o.advertise_lb { self.lb.addr().to_string() } else { format!("127.0.0.1:{grpc_port}") };
        let secs = |d: Duration| format!("{}ms", d.as_millis());
        let mut v: Vec<(String, String)> = [
            ("SERVER__ADVERTISED_ADDRESS", advertised),
            ("METADATA__URL", url),
            ("STORAGE__FLUSH_DISK_TYPE", o.flush.to_string()),
            ("STORAGE__TIERING__ENABLED", "true".into()),
            ("STORAGE__TIERING__LOG_ID", format!("node-{id}")),
            ("STORAGE__TIERING__OBJECT_STORE__TYPE", "s3".into()),
            ("STORAGE__TIERING__OBJECT_STORE__BUCKET", self.s3.bucket().into()),
            ("STORAGE__TIERING__OBJECT_STORE__ENDPOINT", self.s3.endpoint().into()),
            ("STORAGE__TIERING__OBJECT_STORE__REGION", "us-east-1".into()),
            ("STORAGE__TIERING__OBJECT_STORE__PATH_STYLE", "true".into()),
            ("STORAGE__TIERING__OBJECT_STORE__ACCESS_KEY", self.s3.access_key().into()),
            ("STORAGE__TIERING__OBJECT_STORE__SECRET_KEY", self.s3.secret_key().into()),
            ("CLUSTER__ENABLED", "true".into()),
            ("CLUSTER__NODE_ID", id.to_string()),
            ("CLUSTER__PEER_ADDRESS", format!("127.0.0.1:{grpc_port}")),
            ("CLUSTER__SHARDS", o.shards.to_string()),
            ("CLUSTER__LEASE_TTL", secs(o.lease_ttl)),
            ("CLUSTER__RENEW_INTERVAL", secs(o.renew_interval)),
            ("CLUSTER__TAIL_UPLOAD_INTERVAL", secs(o.tail_upload_interval)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("RMQ_GATEWAY_{k}"), v))
        .collect();
        v.extend(o.extra.iter().cloned());
        v
    }

    /// `topics.create` for [`ClusterOpts::topics`].
    fn topics_yaml(&self) -> String {
        if self.opts.topics.is_empty() {
            return String::new();
        }
        let mut y = String::from("  create:\n");
        for t in &self.opts.topics {
            y.push_str(&format!(
                "  - name: {}\n    queueNums: {}\n    durability: {}\n",
                t.name, t.queues, t.durability
            ));
        }
        y
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the cluster's directory (logs, data) after the test, and returns it.
    pub fn keep_dir(self) -> PathBuf {
        let Cluster { nodes, lb, dir, .. } = self;
        drop(nodes);
        drop(lb);
        dir.keep()
    }

    /// The load balancer's `127.0.0.1:PORT` (the single address).
    pub fn lb_endpoint(&self) -> String {
        self.lb.addr().to_string()
    }

    /// Node `i`'s own gRPC endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].gateway.endpoint()
    }

    /// SIGKILL node `i` (a crash).
    pub fn kill9(&mut self, i: usize) -> Result<Stopped> {
        self.nodes[i].gateway.stop(Stop::Kill)
    }

    /// SIGTERM node `i`; it must exit successfully (a graceful hand-over) within 30 s.
    pub fn terminate(&mut self, i: usize) -> Result<Stopped> {
        self.nodes[i].gateway.stop(Stop::Graceful)
    }

    /// Starts node `i` again on its data dir and ports (waits for `/readyz` only; see
    /// [`Cluster::wait_ready`]).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.nodes[i].gateway.restart()
    }

    /// Removes node `i`'s data dir (it must be stopped): the node lost its disk.
    pub fn wipe_data_dir(&mut self, i: usize) -> Result<()> {
        self.nodes[i].gateway.wipe_data_dir()
    }

    /// Cuts node `i` off from PostgreSQL: its open connections are cut, new ones stall.
    pub fn cut_db(&self, i: usize) {
        let _guard = self.rt.enter();
        self.nodes[i].db_proxy.set(Fault::Stall);
    }

    /// Lets node `i` reach PostgreSQL again.
    pub fn heal_db(&self, i: usize) {
        let _guard = self.rt.enter();
        self.nodes[i].db_proxy.set(Fault::Pass);
    }

    /// Whether node `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].gateway.is_running()
    }

    /// The shard table as node `i` reports it.
    pub fn shards_seen_by(&self, i: usize) -> Result<Vec<ShardOwner>> {
        cluster_state(self.nodes[i].gateway.http_port)
    }

    /// The shard table as the first running node that answers reports it.
    pub fn shards(&mut self) -> Result<Vec<ShardOwner>> {
        let mut last = anyhow!("no node is running");
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            match self.shards_seen_by(i) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Shards node `i` owns (as a live node reports it).
    pub fn owned_by(&mut self, i: usize) -> Result<Vec<u32>> {
        let id = self.nodes[i].id.clone();
        Ok(self.shards()?.into_iter().filter(|s| s.owner.as_deref() == Some(&id)).map(|s| s.shard).collect())
    }

    /// Ids of the running nodes.
    fn live_ids(&mut self) -> Vec<String> {
        self.nodes.iter_mut().filter_map(|n| n.gateway.is_running().then(|| n.id.clone())).collect()
    }

    /// Waits until node `i` answers `/readyz` and every shard is owned by a running node (as
    /// node `i` sees it); returns how long that took.
    pub fn wait_ready(&mut self, i: usize) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + READY_LIMIT;
        loop {
            let live = self.live_ids();
            let seen = self.shards_seen_by(i);
            if let Ok(shards) = &seen
                && shards.len() == self.opts.shards as usize
                && shards.iter().all(|s| s.owner.as_ref().is_some_and(|o| live.contains(o)))
            {
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not ready with every shard owned after {READY_LIMIT:?}: {seen:?}\nlog:\n{}",
                    self.nodes[i].id,
                    self.nodes[i].gateway.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (up to `limit`) until no shard is owned by node `i` and every shard is owned by
    /// a running node, as every running node sees it; returns the time waited.
    pub fn wait_owned_by_others(&mut self, i: usize, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        let id = self.nodes[i].id.clone();
        loop {
            let live: Vec<String> = self.live_ids().into_iter().filter(|n| *n != id).collect();
            let mut done = !live.is_empty();
            let mut last = String::new();
            for j in 0..self.nodes.len() {
                if self.nodes[j].id == id || !self.is_running(j) {
                    continue;
                }
                match self.shards_seen_by(j) {
                    Ok(shards) => {
                        let ok = shards.len() == self.opts.shards as usize
                            && shards.iter().all(|s| s.owner.as_ref().is_some_and(|o| live.contains(o)));
                        if !ok {
                            done = false;
                            last = format!("{shards:?}");
                        }
                    }
                    Err(e) => {
                        done = false;
                        last = format!("{e:#}");
                    }
                }
            }
            if done {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("the shards of {id} were not all owned by others after {limit:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every message stored in `topic`, read queue by queue with PullMessage from offset 0 at
    /// each queue's owner as QueryRoute on `endpoint` names it (see [`read_stored`]).
    pub fn read_stored(&self, endpoint: &str, topic: &str) -> Result<Vec<Stored>> {
        self.rt.block_on(read_stored(endpoint, topic))
    }

    /// Log lines of node `i` (all its starts) containing `needle`.
    pub fn log_lines_with(&self, i: usize, needle: &str) -> Vec<String> {
        self.nodes[i].gateway.log_lines_with(needle)
    }

    /// Log tails of every node, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} (gRPC {}):\n{}", n.id, n.gateway.endpoint(), n.gateway.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One stored message: its queue, offset, message id and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub queue: i32,
    pub offset: i64,
    pub id: String,
    pub body: Vec<u8>,
}

async fn connect(endpoint: &str) -> Result<MessagingServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(MessagingServiceClient::new(channel).max_decoding_message_size(usize::MAX))
}

/// Reads every message of `topic` as stored: QueryRoute on `endpoint`, then for each queue
/// PullMessage (batches of 32, from offset 0 to its end offset, or until a pull returns nothing) at the address the
/// route gives for that queue. What a queue holds is then exactly what its owner serves.
pub async fn read_stored(endpoint: &str, topic: &str) -> Result<Vec<Stored>> {
    let mut client = connect(endpoint).await?;
    let host_port = endpoint.rsplit_once(':').ok_or_else(|| anyhow!("`{endpoint}` is not host:port"))?;
    let endpoints = proto::Endpoints {
        scheme: proto::AddressScheme::IPv4 as i32,
        addresses: vec![proto::Address { host: host_port.0.to_string(), port: host_port.1.parse()? }],
    };
    let route = client
        .query_route(request(proto::QueryRouteRequest { topic: resource(topic), endpoints: Some(endpoints) }))
        .await?
        .into_inner();
    match route.status.as_ref() {
        Some(s) if s.code == Code::Ok as i32 => {}
        other => bail!("QueryRoute {topic}: {other:?}"),
    }
    let mut queues: Vec<(i32, String)> = route
        .message_queues
        .iter()
        .map(|q| {
            let addr = q
                .broker
                .as_ref()
                .and_then(|b| b.endpoints.as_ref())
                .and_then(|e| e.addresses.first())
                .map(|a| format!("{}:{}", a.host, a.port))
                .unwrap_or_else(|| endpoint.to_string());
            (q.id, addr)
        })
        .collect();
    queues.sort();
    queues.dedup_by_key(|q| q.0);
    let group = format!("audit-{}", std::process::id());
    let mut out = Vec::new();
    for (queue, addr) in queues {
        let mut c = connect(&addr).await?;
        let mq = Some(proto::MessageQueue { topic: resource(topic), id: queue, ..Default::default() });
        let end = c
            .query_offset(request(proto::QueryOffsetRequest {
                message_queue: mq.clone(),
                query_offset_policy: proto::QueryOffsetPolicy::End as i32,
                timestamp: None,
            }))
            .await
            .with_context(|| format!("end offset of {topic}/{queue} at {addr}"))?
            .into_inner();
        match end.status.as_ref() {
            Some(s) if s.code == Code::Ok as i32 => {}
            other => bail!("QueryOffset {topic}/{queue} at {addr}: {other:?}"),
        }
        let mut offset = 0i64;
        while offset < end.offset {
            let r = proto::PullMessageRequest {
                group: resource(&group),
                message_queue: mq.clone(),
                offset,
                batch_size: 32,
                filter_expression: Some(proto::FilterExpression {
                    r#type: proto::FilterType::Tag as i32,
                    expression: "*".into(),
                }),
                long_polling_timeout: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            };
            let mut req = request(r);
            req.set_timeout(Duration::from_secs(30));
            let mut stream =
                c.pull_message(req).await.with_context(|| format!("pull {topic}/{queue} at {addr}"))?.into_inner();
            let mut next = None;
            let mut got = 0;
            while let Some(frame) = stream.message().await? {
                match frame.content {
                    Some(proto::pull_message_response::Content::Message(m)) => {
                        let sp = m.system_properties.unwrap_or_default();
                        let at = sp.queue_offset.unwrap_or(-1);
                        next = Some(next.unwrap_or(0).max(at + 1));
                        out.push(Stored { queue, offset: at, id: sp.message_id, body: m.body.to_vec() });
                        got += 1;
                    }
                    Some(proto::pull_message_response::Content::NextOffset(n)) => next = Some(next.unwrap_or(0).max(n)),
                    Some(proto::pull_message_response::Content::Status(_)) | None => {}
                }
            }
            match next {
                Some(n) if got > 0 && n > offset => offset = n,
                _ => break,
            }
        }
    }
    Ok(out)
}

/// `GET /api/v1/cluster` on `127.0.0.1:<http_port>`: the shard table.
pub fn cluster_state(http_port: u16) -> Result<Vec<ShardOwner>> {
    parse_cluster_state(&http_get(http_port, "/api/v1/cluster")?)
}

/// The shard table of a `GET /api/v1/cluster` body: `shards: [{shard, owner, epoch}]`, the
/// owner a node id (or an object with `nodeId`), absent or null when the shard has none.
pub fn parse_cluster_state(body: &str) -> Result<Vec<ShardOwner>> {
    let v: serde_json::Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    let shards = v.get("shards").and_then(|s| s.as_array()).ok_or_else(|| anyhow!("no `shards` array: {body}"))?;
    shards
        .iter()
        .map(|s| {
            let shard = s.get("shard").and_then(|x| x.as_u64()).ok_or_else(|| anyhow!("shard without `shard`: {s}"))?;
            let owner = s.get("owner").and_then(|o| match o {
                serde_json::Value::String(id) if !id.is_empty() => Some(id.clone()),
                // `{owner: {nodeId: ..}}` as well as a plain id
                serde_json::Value::Object(m) => {
                    m.get("nodeId").or_else(|| m.get("node_id")).and_then(|x| x.as_str()).map(str::to_string)
                }
                _ => None,
            });
            let epoch = s.get("epoch").and_then(|e| e.as_i64());
            Ok(ShardOwner { shard: u32::try_from(shard)?, owner, epoch })
        })
        .collect()
}

/// A plain HTTP/1.1 GET on loopback; the body if the status is 200.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP response: {text}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A round-robin TCP load balancer on a free loopback port: each new connection goes to the
/// next backend that accepts it (a dead one is skipped); bytes are copied both ways.
pub struct LoadBalancer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    stats: Arc<LbStats>,
}

#[derive(Default)]
struct LbStats {
    next: AtomicUsize,
    connections: AtomicU64,
    closed: AtomicBool,
}

impl LoadBalancer {
    /// Must run inside a tokio runtime (it spawns its accept loop there).
    pub async fn start(backends: Vec<SocketAddr>) -> Result<LoadBalancer> {
        if backends.is_empty() {
            bail!("a load balancer needs at least one backend");
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(LbStats::default());
        let task = tokio::spawn(balance(listener, backends, Arc::clone(&stats)));
        Ok(LoadBalancer { addr, task, stats })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.stats.closed.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

async fn balance(listener: TcpListener, backends: Vec<SocketAddr>, stats: Arc<LbStats>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let backends = backends.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let first = stats.next.fetch_add(1, Ordering::Relaxed);
            for k in 0..backends.len() {
                if stats.closed.load(Ordering::Relaxed) {
                    return;
                }
                let backend = backends[(first + k) % backends.len()];
                let connect = tokio::net::TcpStream::connect(backend);
                let Ok(Ok(mut server)) = tokio::time::timeout(Duration::from_secs(2), connect).await else { continue };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                return;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Echo servers that prefix their answer with their index.
    async fn echo(tag: u8) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&[tag, b[0]]).await;
                    }
                });
            }
        });
        addr
    }

    async fn ask(lb: SocketAddr) -> u8 {
        let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[1], b'x');
        b[0]
    }

    #[tokio::test]
    async fn balancer_spreads_connections_and_skips_a_dead_backend() {
        let a = echo(0).await;
        let b = echo(1).await;
        // A port nobody listens on.
        let dead = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let lb = LoadBalancer::start(vec![a, dead, b]).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(lb.addr()).await);
        }
        assert!(seen.contains(&0) && seen.contains(&1), "{seen:?}");
        assert_eq!(lb.connections(), 6);
    }

    #[test]
    fn cluster_state_is_read_leniently() {
        let body = r#"{"nodes":[{"nodeId":"n0"}],"shards":[{"shard":0,"owner":"n0","epoch":3},
            {"shard":1,"owner":null,"epoch":2},{"shard":2,"owner":{"nodeId":"n1"}},{"shard":3}]}"#;
        let s = parse_cluster_state(body).unwrap();
        assert_eq!(s[0], ShardOwner { shard: 0, owner: Some("n0".into()), epoch: Some(3) });
        assert_eq!(s[1].owner, None);
        assert_eq!(s[2].owner.as_deref(), Some("n1"));
        assert_eq!(s[3], ShardOwner { shard: 3, owner: None, epoch: None });
        assert!(parse_cluster_state("{}").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
    }
}
