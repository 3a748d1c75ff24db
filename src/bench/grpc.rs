//! RocketMQ v2 gRPC load: producers send `SendMessage` requests exactly as the SDKs shape
//! them (topic, unique message id, NORMAL type, born timestamp and host, tag, body), and
//! consumers long-poll `ReceiveMessage` (server streaming) and acknowledge with `AckMessage`.
//! Works against rmq-gateway, the no-op ceiling server, or any other v2 endpoint.
//!
//! As the SDKs do, every request carries the client id, language, protocol and version
//! headers, QueryRoute names the endpoints the client dialled, and every consumer first opens
//! a Telemetry stream announcing its `Settings` (SIMPLE_CONSUMER, group, subscription) and
//! keeps it open while it receives: Apache RocketMQ's proxy answers ReceiveMessage only for a
//! client whose settings it holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt as _;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;

use super::client_threads::ClientThreads;
use super::load::{self, Consumer, Producer, ServerWatch};
use super::procs::{self, Server};
use super::report::{Report, RunResult};
use super::{LoadArgs, OutArgs};
use crate::proto::messaging_service_client::MessagingServiceClient;
use crate::proto::{self, Code};

/// Flush policy of a gateway the benchmark starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Flush {
    /// `SYNC_FLUSH`: acknowledge after fsync (group commit).
    Sync,
    /// `ASYNC_FLUSH`: acknowledge after the write; fsync on an interval.
    Async,
}

impl Flush {
    pub fn config_value(self) -> &'static str {
        match self {
            Flush::Sync => "SYNC_FLUSH",
            Flush::Async => "ASYNC_FLUSH",
        }
    }
}

/// `rmq-gateway bench e2e`.
#[derive(Debug, Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// gRPC endpoint (host:port, plaintext h2c). Without it a gateway is started on loopback.
    #[arg(long)]
    pub target: Option<String>,
    /// Flush mode of the gateway this command starts.
    #[arg(long, value_enum, default_value = "sync")]
    pub flush: Flush,
    /// Gateway binary to start (default: this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Directory for the started gateway's data (removed afterwards).
    #[arg(long, default_value = "bench-results/.work")]
    pub work_dir: PathBuf,
    /// Topic (default: a fresh `bench-<time>` topic, created through QueryRoute).
    #[arg(long)]
    pub topic: Option<String>,
    /// Consumer group.
    #[arg(long, default_value = "bench-group")]
    pub group: String,
    #[command(flatten)]
    pub out: OutArgs,
}

/// How the load reaches a RocketMQ gRPC endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub topic: String,
    pub group: String,
    /// Whether the server implements QueryRoute/ReceiveMessage (the no-op server does not).
    pub full: bool,
}

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

fn client_id() -> String {
    format!("bench-{}@{}", std::process::id(), CLIENT_SEQ.fetch_add(1, Ordering::Relaxed))
}

fn resource(name: &str) -> Option<proto::Resource> {
    Some(proto::Resource { resource_namespace: String::new(), name: name.to_string() })
}

fn request<T>(msg: T, client: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let md = r.metadata_mut();
    md.insert("x-mq-client-id", client.clone());
    md.insert("x-mq-language", MetadataValue::from_static("RUST"));
    md.insert("x-mq-protocol", MetadataValue::from_static("v2"));
    md.insert("x-mq-client-version", MetadataValue::from_static(env!("CARGO_PKG_VERSION")));
    r
}

/// The load generator's client: generated tonic stubs over one HTTP/2 connection.
pub type Client = MessagingServiceClient<H2Connection>;

/// One HTTP/2 connection (hyper), shared by every request slot that clones it. tonic's
/// `Channel` would put a `tower::Buffer` in front of it: each request then goes through a
/// channel to a worker task and back, a hand-off per request that the SDKs' gRPC stacks do
/// not make and that the load generator, sharing the machine's cores with the server it
/// measures, should not pay either. No reconnection: a broken connection fails its requests
/// and the run reports them.
#[derive(Clone)]
pub struct H2Connection(hyper::client::conn::http2::SendRequest<EndsWithLastData<tonic::body::Body>>);

type H2Future = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tower::Service<http::Request<tonic::body::Body>> for H2Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = H2Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> H2Future {
        Box::pin(self.0.send_request(req.map(EndsWithLastData::new)))
    }
}

/// A request body that says it has ended as soon as its encoder has nothing more, so that
/// hyper sets END_STREAM on the last DATA frame.
///
/// grpc-java, grpc-go and gRPC C-core (the Python SDK) send a unary request as HEADERS and
/// one DATA frame carrying END_STREAM, in one write. tonic's encoder only learns that its
/// one-message stream has ended on the poll after the message, so hyper sends an empty
/// END_STREAM DATA frame after it, which h2 usually writes in a second system call: 35 % of
/// the load generator's writes were these 9-byte frames, one more loopback packet per
/// request for both processes, and the server's unary handler waits for it (it reads the
/// request to its end before calling the service). Looking one frame ahead without waiting
/// removes that frame for unary calls and changes nothing for streams (Telemetry), whose
/// next frame is not ready.
struct EndsWithLastData<B: hyper::body::Body + Unpin> {
    inner: B,
    /// A frame (or error) read ahead of its turn.
    next: Option<Result<hyper::body::Frame<B::Data>, B::Error>>,
    ended: bool,
}

impl<B: hyper::body::Body + Unpin> EndsWithLastData<B> {
    fn new(inner: B) -> Self {
        EndsWithLastData { inner, next: None, ended: false }
    }
}

// Nothing in it is pinned in place (the body it wraps is `Unpin`).
impl<B: hyper::body::Body + Unpin> Unpin for EndsWithLastData<B> {}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for EndsWithLastData<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let frame = match this.next.take() {
            Some(f) => f,
            None if this.ended => return Poll::Ready(None),
            None => match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(f)) => f,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            },
        };
        if frame.is_ok() && !this.ended {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(f)) => this.next = Some(f),
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(Ok(held)) = &self.next
            && let Some(data) = held.data_ref()
        {
            let held = bytes::Buf::remaining(data) as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + held);
            }
            hint.set_lower(hint.lower() + held);
        }
        hint
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
    tokio::spawn(async move {
        // Ends when every clone of `send` is dropped or the server closes the connection.
        let _ = connection.await;
    });
    let origin: http::Uri = format!("http://{addr}").parse()?;
    Ok(MessagingServiceClient::with_origin(H2Connection(send), origin).max_decoding_message_size(usize::MAX))
}

fn check(status: Option<&proto::Status>, what: &str) -> anyhow::Result<()> {
    match status {
        Some(s) if s.code == Code::Ok as i32 => Ok(()),
        Some(s) => anyhow::bail!("{what}: status {} {}", s.code, s.message),
        None => anyhow::bail!("{what}: response has no status"),
    }
}

/// One in-flight request slot of a producer connection.
pub struct GrpcProducer {
    client: Client,
    client_id: MetadataValue<tonic::metadata::Ascii>,
    topic: String,
    /// Unique per slot; message ids are `<prefix><counter>`.
    id_prefix: String,
    counter: u64,
    born_host: String,
    /// The client thread its connection lives on.
    runtime: Option<tokio::runtime::Handle>,
}

impl Producer for GrpcProducer {
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.clone()
    }

    async fn send(&mut self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let born = prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 };
        let messages = bodies
            .into_iter()
            .map(|body| {
                self.counter += 1;
                proto::Message {
                    topic: resource(&self.topic),
                    user_properties: Default::default(),
                    system_properties: Some(proto::SystemProperties {
                        message_id: format!("{}{:010X}", self.id_prefix, self.counter),
                        message_type: proto::MessageType::Normal as i32,
                        born_timestamp: Some(born),
                        born_host: self.born_host.clone(),
                        tag: Some("bench".to_string()),
                        body_encoding: proto::Encoding::Identity as i32,
                        ..Default::default()
                    }),
                    body,
                }
            })
            .collect();
        let reply = self
            .client
            .send_message(request(proto::SendMessageRequest { messages }, &self.client_id))
            .await?
            .into_inner();
        check(reply.status.as_ref(), "SendMessage")?;
        for e in &reply.entries {
            check(e.status.as_ref(), "SendMessage entry")?;
        }
        Ok(())
    }
}

/// A long-polling SimpleConsumer-style receiver; acknowledges in the background.
pub struct GrpcConsumer {
    client: Client,
    client_id: MetadataValue<tonic::metadata::Ascii>,
    topic: String,
    group: String,
    ack_failures: Arc<AtomicU64>,
    /// The consumer's Telemetry stream (its settings), open as long as the consumer lives.
    _telemetry: tonic::Streaming<proto::TelemetryCommand>,
    /// The client thread its connection lives on (its acknowledgements run there too).
    runtime: tokio::runtime::Handle,
}

impl Consumer for GrpcConsumer {
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(self.runtime.clone())
    }

    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        use proto::receive_message_response::Content;
        let req = proto::ReceiveMessageRequest {
            group: resource(&self.group),
            message_queue: Some(proto::MessageQueue { topic: resource(&self.topic), ..Default::default() }),
            filter_expression: Some(proto::FilterExpression {
                r#type: proto::FilterType::Tag as i32,
                expression: "*".into(),
            }),
            batch_size: RECEIVE_BATCH,
            invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration { seconds: LONG_POLL_SECS, nanos: 0 }),
            attempt_id: None,
        };
        let mut r = request(req, &self.client_id);
        r.set_timeout(Duration::from_secs(10));
        let mut stream = self.client.receive_message(r).await?.into_inner();
        let mut bodies = Vec::new();
        let mut entries = Vec::new();
        while let Some(frame) = stream.message().await? {
            match frame.content {
                Some(Content::Status(s)) if s.code == Code::MessageNotFound as i32 => {}
                Some(Content::Status(s)) => check(Some(&s), "ReceiveMessage")?,
                Some(Content::Message(m)) => {
                    if let Some(sp) = m.system_properties {
                        entries.push(proto::AckMessageEntry {
                            message_id: sp.message_id,
                            receipt_handle: sp.receipt_handle.unwrap_or_default(),
                            lite_topic: None,
                        });
                    }
                    bodies.push(m.body);
                }
                Some(Content::DeliveryTimestamp(_)) | None => {}
            }
        }
        if !entries.is_empty() {
            let mut client = self.client.clone();
            let ack = proto::AckMessageRequest { group: resource(&self.group), topic: resource(&self.topic), entries };
            let r = request(ack, &self.client_id);
            let failures = self.ack_failures.clone();
            tokio::spawn(async move {
                let ok = match client.ack_message(r).await {
                    Ok(reply) => check(reply.get_ref().status.as_ref(), "AckMessage").is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(bodies)
    }
}

/// Opens the Telemetry stream of a SimpleConsumer (the way the SDKs start one): sends its
/// `Settings` and waits for the server's answer. The returned stream keeps the session open
/// (dropping it ends the call); the request side never ends.
async fn telemetry(
    client: &mut Client,
    client_id: &MetadataValue<tonic::metadata::Ascii>,
    target: &Target,
) -> anyhow::Result<tonic::Streaming<proto::TelemetryCommand>> {
    let settings = proto::Settings {
        client_type: Some(proto::ClientType::SimpleConsumer as i32),
        access_point: Some(endpoints(target.addr)),
        backoff_policy: None,
        request_timeout: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
        pub_sub: Some(proto::settings::PubSub::Subscription(proto::Subscription {
            group: resource(&target.group),
            subscriptions: vec![proto::SubscriptionEntry {
                topic: resource(&target.topic),
                expression: Some(proto::FilterExpression {
                    r#type: proto::FilterType::Tag as i32,
                    expression: "*".into(),
                }),
            }],
            fifo: Some(false),
            receive_batch_size: Some(RECEIVE_BATCH),
            long_polling_timeout: Some(prost_types::Duration { seconds: LONG_POLL_SECS, nanos: 0 }),
            ..Default::default()
        })),
        user_agent: Some(proto::Ua {
            language: proto::Language::Rust as i32,
            version: env!("CARGO_PKG_VERSION").into(),
            platform: std::env::consts::OS.into(),
            hostname: "127.0.0.1".into(),
        }),
        metric: None,
        client_properties: Default::default(),
    };
    let first =
        proto::TelemetryCommand { status: None, command: Some(proto::telemetry_command::Command::Settings(settings)) };
    let outbound = futures::stream::iter([first]).chain(futures::stream::pending());
    let mut inbound = client.telemetry(request(outbound, client_id)).await.context("Telemetry")?.into_inner();
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(reply))) => {
            if let Some(st) = reply.status.as_ref() {
                check(Some(st), "Telemetry settings")?;
            }
        }
        Ok(Ok(None)) => anyhow::bail!("Telemetry: the server closed the stream without answering the settings"),
        Ok(Err(e)) => return Err(anyhow::Error::from(e).context("Telemetry")),
        Err(_) => anyhow::bail!("Telemetry: no answer to the settings within 10 s"),
    }
    Ok(inbound)
}

fn endpoints(addr: SocketAddr) -> proto::Endpoints {
    proto::Endpoints {
        scheme: if addr.is_ipv4() { proto::AddressScheme::IPv4 } else { proto::AddressScheme::IPv6 } as i32,
        addresses: vec![proto::Address { host: addr.ip().to_string(), port: i32::from(addr.port()) }],
    }
}

/// Messages asked for per ReceiveMessage, and its long-polling timeout.
const RECEIVE_BATCH: i32 = 32;
const LONG_POLL_SECS: i64 = 5;

/// Producers (`producers` connections × `concurrency` slots) and consumers for `target`,
/// each connection on the next of `threads` with the tasks that use it.
pub async fn clients(
    args: &LoadArgs,
    target: &Target,
    threads: &mut ClientThreads,
) -> anyhow::Result<(Vec<GrpcProducer>, Vec<GrpcConsumer>)> {
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let runtime = threads.next_thread();
        let client = ClientThreads::on(&runtime, connect(target.addr)).await??;
        let id = client_id();
        let client_id: MetadataValue<_> = id.parse()?;
        for slot in 0..args.concurrency {
            producers.push(GrpcProducer {
                client: client.clone(),
                client_id: client_id.clone(),
                topic: target.topic.clone(),
                id_prefix: format!("{:08X}{:04X}{:04X}", std::process::id(), p, slot),
                counter: 0,
                born_host: "127.0.0.1".into(),
                runtime: Some(runtime.clone()),
            });
        }
    }
    let mut consumers = Vec::new();
    if args.consumers > 0 {
        anyhow::ensure!(target.full, "this server cannot be consumed from");
    }
    let ack_failures = Arc::new(AtomicU64::new(0));
    for _ in 0..args.consumers {
        let runtime = threads.next_thread();
        let t = target.clone();
        let (client, client_id, telemetry) = ClientThreads::on(&runtime, async move {
            let mut client = connect(t.addr).await?;
            let client_id: MetadataValue<_> = client_id().parse()?;
            let telemetry = telemetry(&mut client, &client_id, &t).await?;
            anyhow::Ok((client, client_id, telemetry))
        })
        .await??;
        consumers.push(GrpcConsumer {
            client,
            client_id,
            topic: target.topic.clone(),
            group: target.group.clone(),
            ack_failures: ack_failures.clone(),
            _telemetry: telemetry,
            runtime,
        });
    }
    Ok((producers, consumers))
}

/// Waits until the endpoint answers and, when the server is a full one, until the topic has a
/// route and takes a message: one probe message is sent (a producer's first send is what
/// creates a topic on the gateway, so consumers that start before the producers would
/// otherwise find none). The probe's send time is out of every window, so it is never counted.
pub async fn prepare(target: &Target, limit: Duration) -> anyhow::Result<()> {
    procs::wait_for_port(target.addr, limit).await?;
    if !target.full {
        return Ok(());
    }
    let mut client = connect(target.addr).await?;
    let id: MetadataValue<_> = client_id().parse()?;
    let start = std::time::Instant::now();
    loop {
        // As the SDKs do: the endpoints the client uses (some servers require them).
        let req = proto::QueryRouteRequest { topic: resource(&target.topic), endpoints: Some(endpoints(target.addr)) };
        let last = match client.query_route(request(req, &id)).await {
            Ok(reply) => match check(reply.get_ref().status.as_ref(), "QueryRoute") {
                Ok(()) => match probe(&client, &id, &target.topic).await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
            },
            Err(e) => anyhow::Error::from(e),
        };
        if start.elapsed() > limit {
            return Err(last.context(format!("topic `{}` is not available", target.topic)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one message whose header carries a send time no window contains.
async fn probe(client: &Client, client_id: &MetadataValue<tonic::metadata::Ascii>, topic: &str) -> anyhow::Result<()> {
    let mut body = Vec::with_capacity(load::HEADER_LEN);
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    let mut p = GrpcProducer {
        client: client.clone(),
        client_id: client_id.clone(),
        topic: topic.to_string(),
        id_prefix: format!("{:08X}FFFF{:04X}", std::process::id(), CLIENT_SEQ.fetch_add(1, Ordering::Relaxed) & 0xFFFF),
        counter: 0,
        born_host: "127.0.0.1".into(),
        runtime: None,
    };
    p.send(vec![Bytes::from(body)]).await.context("probe message")
}

/// Runs the load against a prepared target.
pub async fn run(
    label: &str,
    args: &LoadArgs,
    target: &Target,
    server: &ServerWatch,
) -> anyhow::Result<load::LoadOutcome> {
    // Dropped (its threads stopped) once the load is over.
    let mut threads = ClientThreads::per_cpu()?;
    let (producers, consumers) = clients(args, target, &mut threads).await?;
    let ack_failures = consumers.first().map(|c| c.ack_failures.clone());
    let mut outcome = load::drive(label, args, producers, consumers, server.clone()).await?;
    // Acks run in the background; a failed one counts as a receive error.
    if let Some(f) = ack_failures {
        let failed = f.load(Ordering::Relaxed);
        outcome.receive_errors += failed;
        if failed > 0 && outcome.first_error.is_none() {
            outcome.first_error = Some(format!("{failed} AckMessage calls failed"));
        }
    }
    Ok(outcome)
}

/// A gateway started by the benchmark.
pub struct SpawnedGateway {
    pub server: Server,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
}

/// Starts `rmq-gateway serve` on loopback with the given flush mode and a fresh data
/// directory under `work_dir`; everything else stays at the defaults.
pub fn spawn_gateway(bin: &Path, flush: Flush, work_dir: &Path, name: &str) -> anyhow::Result<SpawnedGateway> {
    spawn_gateway_with(bin, flush, work_dir, name, &[])
}

/// [`spawn_gateway`] with more configuration (`RMQ_GATEWAY_*` variables).
pub fn spawn_gateway_with(
    bin: &Path,
    flush: Flush,
    work_dir: &Path,
    name: &str,
    extra_env: &[(&str, String)],
) -> anyhow::Result<SpawnedGateway> {
    let data_dir = work_dir.join(name);
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let grpc_port = procs::free_port()?;
    let mut http_port = procs::free_port()?;
    while http_port == grpc_port {
        http_port = procs::free_port()?;
    }
    let mut cmd = Command::new(bin);
    // The gateway reads RMQ_GATEWAY_* as configuration: only ours reach it.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(crate::config::ENV_PREFIX) {
            cmd.env_remove(key);
        }
    }
    cmd.arg("serve")
        .env("RMQ_GATEWAY_SERVER__BIND_ADDRESS", "127.0.0.1")
        .env("RMQ_GATEWAY_SERVER__GRPC_SERVER_PORT", grpc_port.to_string())
        .env("RMQ_GATEWAY_SERVER__HTTP_SERVER_PORT", http_port.to_string())
        .env("RMQ_GATEWAY_STORAGE__DATA_DIR", &data_dir)
        .env("RMQ_GATEWAY_STORAGE__FLUSH_DISK_TYPE", flush.config_value())
        .env("RMQ_GATEWAY_TOPICS__AUTO_CREATE_TOPIC_ENABLE", "true");
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    let log = work_dir.join(format!("{name}.log"));
    let mut server = Server::spawn(name, cmd, &log)?;
    server.metrics = Some(SocketAddr::from(([127, 0, 0, 1], http_port)));
    Ok(SpawnedGateway { server, grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)), data_dir })
}

/// What kept the gateway's messages, judged from what it left on disk: an in-memory log
/// leaves nothing but the metadata database.
pub fn gateway_storage(flush: Flush, data_dir: &Path) -> String {
    fn log_bytes(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                match e.file_type() {
                    Ok(t) if t.is_dir() => log_bytes(&e.path()),
                    Ok(_) if name.starts_with("meta.db") => 0,
                    Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                    Err(_) => 0,
                }
            })
            .sum()
    }
    if log_bytes(data_dir) > 0 {
        format!("commit log, {}", flush.config_value())
    } else {
        format!("in-memory log ({} has no effect)", flush.config_value())
    }
}

pub fn default_topic(tag: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("bench-{tag}-{secs}")
}

/// `rmq-gateway bench e2e`.
pub async fn main(args: E2eArgs) -> anyhow::Result<()> {
    args.load.validate()?;
    let topic = args.topic.clone().unwrap_or_else(|| default_topic("e2e"));
    let mut spawned = None;
    let (addr, system, storage) = match &args.target {
        Some(t) => {
            let addr =
                tokio::net::lookup_host(t.as_str()).await?.next().with_context(|| format!("`{t}` does not resolve"))?;
            (addr, format!("grpc {t}"), "as configured".to_string())
        }
        None => {
            let bin = match &args.gateway_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?,
            };
            std::fs::create_dir_all(&args.work_dir)?;
            let g = spawn_gateway(&bin, args.flush, &args.work_dir, "gateway-e2e")?;
            let addr = g.grpc;
            spawned = Some(g);
            (addr, format!("gateway-{}", format!("{:?}", args.flush).to_lowercase()), String::new())
        }
    };
    let target = Target { addr, topic, group: args.group.clone(), full: true };
    prepare(&target, Duration::from_secs(30)).await?;
    let watch = spawned.as_ref().map(|g| g.server.watch()).unwrap_or_default();
    eprintln!("running {system} on {addr}, topic {}", target.topic);
    let outcome = run(&system, &args.load, &target, &watch).await;
    let storage = match &spawned {
        Some(g) => gateway_storage(args.flush, &g.data_dir),
        None => storage,
    };
    let mut report = Report::new(&args.work_dir);
    let mut result = RunResult::new(&system, "single", &storage, &args.load, &outcome?);
    if let Some(mut g) = spawned {
        g.server.check_alive()?;
        result.disk_bytes = Some(procs::dir_size(&g.data_dir));
        g.server.stop(Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&g.data_dir);
    }
    report.results.push(result);
    println!("{}", report.table());
    for p in report.write(&args.out.out, "e2e")? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The distinct addresses QueryRoute on `addr` gives for `topic`'s queues (a cluster: each
/// queue's owner), in route order.
pub async fn route_endpoints(addr: SocketAddr, topic: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut client = connect(addr).await?;
    let id: MetadataValue<_> = client_id().parse()?;
    let req = proto::QueryRouteRequest { topic: resource(topic), endpoints: Some(endpoints(addr)) };
    let reply = client.query_route(request(req, &id)).await?.into_inner();
    check(reply.status.as_ref(), "QueryRoute")?;
    let mut out: Vec<SocketAddr> = Vec::new();
    for q in &reply.message_queues {
        let Some(a) = q.broker.as_ref().and_then(|b| b.endpoints.as_ref()).and_then(|e| e.addresses.first()) else {
            continue;
        };
        let port = u16::try_from(a.port).with_context(|| format!("route port {}", a.port))?;
        let resolved = tokio::net::lookup_host((a.host.as_str(), port))
            .await?
            .next()
            .with_context(|| format!("route address {}:{port} does not resolve", a.host))?;
        if !out.contains(&resolved) {
            out.push(resolved);
        }
    }
    anyhow::ensure!(!out.is_empty(), "QueryRoute for {topic} named no address");
    Ok(out)
}

/// Producers only, producer connection `p` on `addrs[p % addrs.len()]` (clients that follow
/// a cluster's routes spread over the queues' owners); otherwise as [`run`].
pub async fn run_spread(
    label: &str,
    args: &LoadArgs,
    target: &Target,
    addrs: &[SocketAddr],
    server_pids: &[u32],
) -> anyhow::Result<load::LoadOutcome> {
    anyhow::ensure!(!addrs.is_empty(), "no address to send to");
    let mut threads = ClientThreads::per_cpu()?;
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let t = Target { addr: addrs[p % addrs.len()], ..target.clone() };
        let one = LoadArgs { producers: 1, consumers: 0, ..args.clone() };
        let (ps, _) = clients(&one, &t, &mut threads).await?;
        for (slot, mut producer) in ps.into_iter().enumerate() {
            producer.id_prefix = format!("{:08X}{:04X}{:04X}", std::process::id(), p, slot);
            producers.push(producer);
        }
    }
    load::drive(label, args, producers, Vec::<GrpcConsumer>::new(), server_pids.to_vec().into()).await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use hyper::body::{Body, Frame};

    use super::EndsWithLastData;

    type Step = Poll<Option<Result<Frame<Bytes>, &'static str>>>;

    /// A body that plays back a script and, like tonic's encoder, never says it has ended.
    struct Script(VecDeque<Step>);

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Step {
            self.0.pop_front().unwrap_or(Poll::Ready(None))
        }
    }

    fn data(s: &'static str) -> Step {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
    }

    fn poll(body: &mut EndsWithLastData<Script>) -> Option<Result<Bytes, &'static str>> {
        match Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(Ok(f))) => Some(Ok(f.into_data().expect("a data frame"))),
            Poll::Ready(Some(Err(e))) => Some(Err(e)),
            Poll::Ready(None) => None,
            Poll::Pending => Some(Err("pending")),
        }
    }

    #[test]
    fn a_one_message_body_ends_with_its_data_frame() {
        let mut body = EndsWithLastData::new(Script(VecDeque::from([data("request")])));
        assert!(!body.is_end_stream());
        assert_eq!(poll(&mut body), Some(Ok(Bytes::from_static(b"request"))));
        assert!(body.is_end_stream(), "END_STREAM goes on the DATA frame");
        assert_eq!(poll(&mut body), None);
    }

    #[test]
    fn a_stream_is_passed_through_without_waiting_for_its_next_frame() {
        let mut body =
            EndsWithLastData::new(Script(VecDeque::from([data("settings"), Poll::Pending, data("ping"), data("bye")])));
        assert_eq!(poll(&mut body), Some(Ok(Bytes::from_static(b"settings"))));
        assert!(!body.is_end_stream(), "the next frame is not ready: the stream goes on");
        assert_eq!(poll(&mut body), Some(Ok(Bytes::from_static(b"ping"))));
        assert!(!body.is_end_stream(), "one frame read ahead is still to come");
        assert_eq!(body.size_hint().lower(), 3, "the frame read ahead counts in the size");
        assert_eq!(poll(&mut body), Some(Ok(Bytes::from_static(b"bye"))));
        assert!(body.is_end_stream());
        assert_eq!(poll(&mut body), None);
    }

    #[test]
    fn an_error_read_ahead_is_returned_in_its_turn() {
        let mut body = EndsWithLastData::new(Script(VecDeque::from([data("half"), Poll::Ready(Some(Err("broken")))])));
        assert_eq!(poll(&mut body), Some(Ok(Bytes::from_static(b"half"))));
        assert!(!body.is_end_stream());
        assert_eq!(poll(&mut body), Some(Err("broken")));
    }
}
