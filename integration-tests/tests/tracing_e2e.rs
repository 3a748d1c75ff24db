//! Tracing end to end: OTLP receivers started by the test (a tonic `TraceService/Export`
//! server from the `opentelemetry-proto` protobufs, and an axum `POST /v1/traces` for
//! OTLP/HTTP) collect what the gateway exports.
//!
//! - The official Java SDK producer (rocketmq-client-java 5.2.0) runs with the OpenTelemetry
//!   Java agent (it makes a PRODUCER span per send and writes `traceparent` into the message's
//!   properties, exporting to the same receiver); a Java SimpleConsumer receives and acks. The
//!   gateway's `send`, `append`, `receive` and `ack` spans must be in the producer's trace, the
//!   `send` span a child of the agent's producer span, with the semantic conventions'
//!   attribute names.
//! - With the collector down, sends still succeed and the gateway counts the lost spans
//!   (`/api/v1/stats` → `tracing.exportFailed` / `dropped`).
//! - OTLP/HTTP (`tracing.protocol: http`) delivers the spans too.
//! - A message retried then dead-lettered: `receive` (attempts 1, 2), `nack`, `dlq` spans, all
//!   in the trace of its `send` span; a delay message's `timer_fire` and transactions'
//!   `commit` / `rollback` spans likewise.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (its `java` step:
//! the driver and the agent in `sdk/.work/otel`). A missing prerequisite skips with a banner, or
//! fails under `RMQ_E2E_REQUIRED=1`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::gateway_process::{Gateway, free_port, wait_with_timeout};
use integration_tests::sdk::{self, Mode, Report, Run, Sdk};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

const AGENT: &str = "otel/opentelemetry-javaagent-2.10.0.jar";

/// One span as received: service name, span, and attributes as text.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn take(&self, req: ExportTraceServiceRequest) {
        let mut all = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect();
                    all.push(Got {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        attrs,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(v: Option<&any_value::Value>) -> String {
    match v {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            a.values.iter().map(|v| text(v.value.as_ref())).collect::<Vec<_>>().join(",")
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts the OTLP/gRPC receiver; returns its address.
async fn grpc_receiver(r: Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

/// Starts the OTLP/HTTP receiver (`POST /v1/traces`, protobuf); returns its address.
async fn http_receiver(r: Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let r = r.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        r.take(req);
                        (axum::http::StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn required() -> bool {
    std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// `None` when the Java driver and the agent are installed, else why not (a skip, or a failure
/// under RMQ_E2E_REQUIRED=1).
fn missing(need_agent: bool) -> Option<String> {
    let why = Sdk::Java.missing().or_else(|| {
        let agent = sdk::sdk_dir().join(".work").join(AGENT);
        (need_agent && !agent.exists()).then(|| {
            format!("OpenTelemetry Java agent missing ({}); run integration-tests/sdk/setup.sh", agent.display())
        })
    });
    if let Some(why) = &why {
        assert!(!required(), "{why} (RMQ_E2E_REQUIRED=1)");
        eprintln!("\n===== SKIPPED: {why} =====\n");
    }
    why
}

fn java_dir() -> PathBuf {
    sdk::sdk_dir().join(".work/java/5.2.0")
}

/// The Java driver's `produce` under the OpenTelemetry Java agent exporting to `otlp`.
fn produce_with_agent(dir: &std::path::Path, endpoint: &str, topic: &str, count: usize, otlp: SocketAddr) -> Report {
    let deps = std::fs::read_to_string(java_dir().join("classpath.txt")).unwrap();
    let jar = java_dir().join("rmq-e2e-java.jar");
    let agent = sdk::sdk_dir().join(".work").join(AGENT);
    let home = dir.join("home-agent-producer");
    std::fs::create_dir_all(&home).unwrap();
    let stdout = dir.join("agent-producer.stdout");
    let stderr = dir.join("agent-producer.stderr");
    let mut child = Command::new("java")
        .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
        .arg(format!("-javaagent:{}", agent.display()))
        .args([
            "-Dotel.service.name=e2e-producer",
            &format!("-Dotel.exporter.otlp.endpoint=http://{otlp}"),
            "-Dotel.exporter.otlp.protocol=grpc",
            "-Dotel.metrics.exporter=none",
            "-Dotel.logs.exporter=none",
            "-Dotel.traces.sampler=always_on",
            "-Dotel.bsp.schedule.delay=200",
            "-Drmq.e2e.lingerMs=2000",
        ])
        .arg("-cp")
        .arg(format!("{}:{}", jar.display(), deps.trim()))
        .arg("org.rmqgateway.e2e.E2e")
        .args(["produce", "--endpoint", endpoint, "--topic", topic, "--group", "unused"])
        .args(["--count", &count.to_string(), "--prefix", "traced", "--tag", "TagA", "--timeout-secs", "60"])
        .env("RMQ_E2E_HOME", &home)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn java");
    let status = wait_with_timeout(&mut child, Duration::from_secs(120)).unwrap();
    if status.is_none() {
        let _ = child.kill();
    }
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let line = out.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| {
        panic!(
            "agent producer gave no RESULT (status {status:?}); stderr:\n{}",
            integration_tests::gateway_process::tail_file(&stderr, 40)
        )
    });
    eprintln!("agent producer stderr:\n{}", integration_tests::gateway_process::tail_file(&stderr, 30));
    serde_json::from_str(line).unwrap()
}

fn run(sdk: Sdk, mode: Mode, endpoint: &str, topic: &str, group: &str, count: usize, prefix: &str) -> Run {
    Run {
        sdk,
        mode,
        endpoint: endpoint.to_string(),
        topic: topic.to_string(),
        group: group.to_string(),
        count,
        prefix: prefix.to_string(),
        tag: "TagA".into(),
        timeout: Duration::from_secs(60),
        kill_after: Duration::from_secs(120),
        extra_args: vec![],
    }
}

/// Polls `cond` over the receiver's spans for up to 60 s.
fn wait_for(r: &Receiver, what: &str, cond: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = r.spans();
        if cond(&spans) {
            return spans;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = spans
                .iter()
                .map(|s| format!("{}:{} trace={} parent={}", s.service, s.name, s.trace_id, s.parent))
                .collect();
            panic!("timed out waiting for {what}; received: {names:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn gateway_spans<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.service == "rmq-gateway" && s.name == name).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn java_agent_trace_continues_through_the_gateway() {
    if missing(true).is_some() {
        return;
    }
    let rt = runtime();
    let receiver = Receiver::default();
    let otlp = rt.block_on(grpc_receiver(receiver.clone()));
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{otlp}");
    let gateway = Gateway::start_with(
        dir.path(),
        &[("RMQ_GATEWAY_TRACING__ENABLED", "true"), ("RMQ_GATEWAY_TRACING__ENDPOINT", endpoint.as_str())],
    )
    .unwrap();
    let (topic, group) = ("TraceTopic", "TraceGroup");
    let count = 6;
    let sent = produce_with_agent(dir.path(), &gateway.endpoint(), topic, count, otlp);
    assert!(sent.ok && sent.sent == count, "producer: {sent:?}");
    let consumed = sdk::spawn(
        &run(Sdk::Java, Mode::SimpleConsume, &gateway.endpoint(), topic, group, count, "traced"),
        dir.path(),
    )
    .unwrap()
    .wait()
    .unwrap();
    let report = consumed.report().unwrap_or_else(|| panic!("consumer: {}", consumed.describe()));
    assert_eq!(report.acked, Some(count), "consumer: {}", consumed.describe());

    let send_name = format!("send {topic}");
    let spans = wait_for(&receiver, "the producer's and the gateway's spans", |s| {
        let producers = s.iter().filter(|g| g.service == "e2e-producer" && g.kind == SpanKind::Producer as i32).count();
        producers >= count
            && gateway_spans(s, &send_name).len() >= count
            && gateway_spans(s, &format!("append {topic}")).len() >= count
            && gateway_spans(s, &format!("receive {topic}")).len() >= count
            && gateway_spans(s, &format!("ack {topic}")).len() >= count
    });
    let producer_spans: HashMap<&str, &Got> = spans
        .iter()
        .filter(|g| g.service == "e2e-producer" && g.kind == SpanKind::Producer as i32)
        .map(|g| (g.span_id.as_str(), g))
        .collect();
    let sends = gateway_spans(&spans, &send_name);
    let mut trace_of_message = HashMap::new();
    for s in &sends {
        // Parented to the agent's PRODUCER span: same trace, its span id as parent.
        let producer = producer_spans
            .get(s.parent.as_str())
            .unwrap_or_else(|| panic!("gateway send span not parented to a producer span: {s:?}"));
        assert_eq!(s.trace_id, producer.trace_id);
        assert_eq!(s.kind, SpanKind::Server as i32, "{s:?}");
        for (key, want) in [
            ("messaging.system", Some("rocketmq")),
            ("messaging.operation.name", Some("send")),
            ("messaging.operation.type", Some("send")),
            ("messaging.destination.name", Some(topic)),
            ("messaging.rocketmq.message.tag", Some("TagA")),
            ("messaging.rocketmq.message.type", Some("normal")),
            ("messaging.message.id", None),
            ("messaging.rocketmq.message.keys", None),
            ("messaging.destination.partition.id", None),
        ] {
            let got = s.attrs.get(key).unwrap_or_else(|| panic!("send span lacks {key}: {s:?}"));
            if let Some(want) = want {
                assert_eq!(got, want, "{key} of {s:?}");
            }
        }
        // The agent's own span names the same message.
        if let Some(id) = producer.attrs.get("messaging.message.id") {
            assert_eq!(id, &s.attrs["messaging.message.id"]);
        }
        trace_of_message.insert(s.attrs["messaging.message.id"].clone(), (s.trace_id.clone(), s.span_id.clone()));
    }
    // The durable append is a child of the send span.
    for a in gateway_spans(&spans, &format!("append {topic}")) {
        assert!(
            sends.iter().any(|s| s.span_id == a.parent && s.trace_id == a.trace_id),
            "append not under a send: {a:?}"
        );
    }
    // Deliveries and acks are in the producer's trace, parented to the producer's span.
    for name in [format!("receive {topic}"), format!("ack {topic}")] {
        for d in gateway_spans(&spans, &name) {
            let id = d.attrs.get("messaging.message.id").unwrap_or_else(|| panic!("{name} without message id: {d:?}"));
            let (trace, _) = trace_of_message.get(id).unwrap_or_else(|| panic!("{name} of an unknown message: {d:?}"));
            assert_eq!(&d.trace_id, trace, "{name} in another trace: {d:?}");
            assert!(producer_spans.contains_key(d.parent.as_str()), "{name} not parented to the producer span: {d:?}");
            assert_eq!(d.attrs.get("messaging.consumer.group.name").map(String::as_str), Some(group), "{d:?}");
            assert_eq!(d.attrs.get("messaging.system").map(String::as_str), Some("rocketmq"));
        }
    }
    for d in gateway_spans(&spans, &format!("receive {topic}")) {
        assert_eq!(d.attrs.get("messaging.rocketmq.attempt").map(String::as_str), Some("1"), "{d:?}");
        assert_eq!(d.attrs.get("messaging.operation.type").map(String::as_str), Some("receive"));
    }
    drop(gateway);
}

#[test]
fn collector_down_messaging_unaffected_and_lost_spans_counted() {
    if missing(false).is_some() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let endpoint = format!("http://127.0.0.1:{}", free_port().unwrap());
    let gateway = Gateway::start_with(
        dir.path(),
        &[
            ("RMQ_GATEWAY_TRACING__ENABLED", "true"),
            ("RMQ_GATEWAY_TRACING__ENDPOINT", endpoint.as_str()),
            ("RMQ_GATEWAY_TRACING__EXPORT_TIMEOUT", "2s"),
            ("RMQ_GATEWAY_LOG__FORMAT", "json"),
        ],
    )
    .unwrap();
    let count = 20;
    let produced =
        sdk::spawn(&run(Sdk::Java, Mode::Produce, &gateway.endpoint(), "DownTopic", "g", count, "down"), dir.path())
            .unwrap()
            .wait()
            .unwrap();
    let report = produced.report().unwrap_or_else(|| panic!("producer: {}", produced.describe()));
    assert!(report.ok && report.sent == count && report.failed == 0, "producer: {}", produced.describe());
    let http: SocketAddr = format!("127.0.0.1:{}", gateway.http_port).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = rt.block_on(integration_tests::client::http(http, "GET", "/api/v1/stats", None));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let t = &json["tracing"];
        let lost = t["exportFailed"].as_u64().unwrap_or(0) + t["dropped"].as_u64().unwrap_or(0);
        if lost >= count as u64 {
            assert_eq!(t["enabled"], true);
            assert_eq!(t["exported"], 0);
            // The same counters on /metrics (read at scrape time).
            let (status, text) = rt.block_on(integration_tests::client::http(http, "GET", "/metrics", None));
            assert_eq!(status, 200);
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{name} not on /metrics"))
            };
            assert_eq!(value("rocketmq_gateway_spans_exported_total"), 0);
            let on_metrics =
                value("rocketmq_gateway_spans_export_failed_total") + value("rocketmq_gateway_spans_dropped_total");
            assert!(on_metrics >= count as u64, "{on_metrics} lost spans on /metrics");
            break;
        }
        assert!(Instant::now() < deadline, "lost spans never counted: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // log.format json: the failure is logged once, as one JSON object on one line.
    let lines = gateway.log_lines_with("span export failed");
    let line = lines.first().unwrap_or_else(|| panic!("no export failure logged:\n{}", gateway.log_tail(20)));
    let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(json["level"], "WARN", "{line}");
    assert!(json["spans"].as_u64().is_some(), "{line}");
}

#[test]
fn otlp_http_export() {
    if missing(false).is_some() {
        return;
    }
    let rt = runtime();
    let receiver = Receiver::default();
    let addr = rt.block_on(http_receiver(receiver.clone()));
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let gateway = Gateway::start_with(
        dir.path(),
        &[
            ("RMQ_GATEWAY_TRACING__ENABLED", "true"),
            ("RMQ_GATEWAY_TRACING__PROTOCOL", "http"),
            ("RMQ_GATEWAY_TRACING__ENDPOINT", endpoint.as_str()),
        ],
    )
    .unwrap();
    let count = 3;
    let produced =
        sdk::spawn(&run(Sdk::Java, Mode::Produce, &gateway.endpoint(), "HttpTopic", "g", count, "h"), dir.path())
            .unwrap()
            .wait()
            .unwrap();
    assert!(produced.report().is_some_and(|r| r.ok && r.sent == count), "producer: {}", produced.describe());
    let spans = wait_for(&receiver, "send spans over OTLP/HTTP", |s| gateway_spans(s, "send HttpTopic").len() >= count);
    for s in gateway_spans(&spans, "send HttpTopic") {
        assert_eq!(s.attrs.get("messaging.system").map(String::as_str), Some("rocketmq"));
        assert_eq!(s.parent, "", "no producer context: a root span");
    }
}

/// A message whose listener always fails (group retryMaxTimes 1): delivered twice (`receive`
/// spans with attempts 1 and 2, a `nack` span for the failure), then moved to `%DLQ%group` (one
/// `dlq` span). It came without a trace context, so the gateway's `send` span is the root and
/// the context it stored with the message puts every later span in that trace.
#[test]
fn retried_then_dead_lettered_message_spans() {
    if missing(false).is_some() {
        return;
    }
    let rt = runtime();
    let receiver = Receiver::default();
    let otlp = rt.block_on(grpc_receiver(receiver.clone()));
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{otlp}");
    let gateway = Gateway::start_with(
        dir.path(),
        &[("RMQ_GATEWAY_TRACING__ENABLED", "true"), ("RMQ_GATEWAY_TRACING__ENDPOINT", endpoint.as_str())],
    )
    .unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", gateway.http_port).parse().unwrap();
    let (topic, group) = ("RetryTopic", "RetryGroup");
    let body = r#"{"consumeMessageOrderly":false,"retryMaxTimes":1,"retryBackoff":"1s"}"#;
    let (status, text) =
        rt.block_on(integration_tests::client::http(http, "PUT", &format!("/api/v1/groups/{group}"), Some(body)));
    assert!((200..300).contains(&status), "PUT group: {status} {text}");
    let mut r = run(Sdk::Java, Mode::Named("retry-run"), &gateway.endpoint(), topic, group, 2, "rt");
    r.extra_args = ["--poison", "1", "--max-attempts", "2", "--linger-ms", "2000"].map(String::from).to_vec();
    let out = sdk::spawn(&r, dir.path()).unwrap().wait().unwrap();
    let result: serde_json::Value =
        out.result_line.as_deref().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    assert_eq!(result["ok"], true, "retry-run: {}", out.describe());
    let spans = wait_for(&receiver, "the dlq span", |s| !gateway_spans(s, &format!("dlq {topic}")).is_empty());
    let dlq = gateway_spans(&spans, &format!("dlq {topic}"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let dlq = dlq[0];
    assert_eq!(dlq.attrs.get("messaging.rocketmq.dlq_topic").map(String::as_str), Some(&*format!("%DLQ%{group}")));
    assert_eq!(dlq.attrs.get("messaging.consumer.group.name").map(String::as_str), Some(group));
    let id = dlq.attrs.get("messaging.message.id").expect("dlq span names the message").clone();
    let of_message = |name: &str| -> Vec<&Got> {
        gateway_spans(&spans, name).into_iter().filter(|s| s.attrs.get("messaging.message.id") == Some(&id)).collect()
    };
    let sends = of_message(&format!("send {topic}"));
    assert_eq!(sends.len(), 1);
    let mut attempts: Vec<String> = of_message(&format!("receive {topic}"))
        .iter()
        .map(|s| s.attrs.get("messaging.rocketmq.attempt").cloned().unwrap_or_default())
        .collect();
    attempts.sort();
    assert_eq!(attempts, ["1", "2"], "deliveries of the poison message");
    let nacks = of_message(&format!("nack {topic}"));
    assert!(!nacks.is_empty(), "no nack span for the failed delivery");
    // One trace: the send span is the root (no producer context), the rest are in its trace.
    for s in of_message(&format!("receive {topic}")).into_iter().chain(nacks).chain([dlq]) {
        assert_eq!(s.trace_id, sends[0].trace_id, "{s:?}");
    }
}

/// A delay message's `timer_fire` span and a transaction's `commit` / `rollback` span are in
/// the trace of the message's `send` span, naming the same message.
#[test]
fn timer_fire_and_transaction_spans() {
    if missing(false).is_some() {
        return;
    }
    let rt = runtime();
    let receiver = Receiver::default();
    let otlp = rt.block_on(grpc_receiver(receiver.clone()));
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{otlp}");
    let gateway = Gateway::start_with(
        dir.path(),
        &[("RMQ_GATEWAY_TRACING__ENABLED", "true"), ("RMQ_GATEWAY_TRACING__ENDPOINT", endpoint.as_str())],
    )
    .unwrap();
    let steps: [(&str, &str, &[&str]); 3] = [
        ("delay-produce", "DelayTopic", &["--delays-ms", "1000"]),
        ("tx-produce", "TxCommitTopic", &["--resolution", "commit"]),
        ("tx-produce", "TxRollbackTopic", &["--resolution", "rollback"]),
    ];
    for (mode, topic, extra) in steps {
        let mut r = run(Sdk::Java, Mode::Named(mode), &gateway.endpoint(), topic, "g", 1, "x");
        r.extra_args = extra.iter().map(|s| s.to_string()).collect();
        let out = sdk::spawn(&r, dir.path()).unwrap().wait().unwrap();
        let result: serde_json::Value =
            out.result_line.as_deref().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
        assert_eq!(result["ok"], true, "{mode}: {}", out.describe());
    }
    let events = [("timer_fire", "DelayTopic"), ("commit", "TxCommitTopic"), ("rollback", "TxRollbackTopic")];
    let spans = wait_for(&receiver, "timer_fire, commit and rollback spans", |s| {
        events.iter().all(|(op, t)| !gateway_spans(s, &format!("{op} {t}")).is_empty())
    });
    for (op, topic) in events {
        let event = gateway_spans(&spans, &format!("{op} {topic}"));
        assert_eq!(event.len(), 1, "{op}: {event:?}");
        let id = event[0].attrs.get("messaging.message.id").unwrap_or_else(|| panic!("{op} without message id"));
        let send = gateway_spans(&spans, &format!("send {topic}"));
        assert_eq!(send.len(), 1, "{op}: {send:?}");
        assert_eq!(send[0].attrs.get("messaging.message.id"), Some(id), "{op}");
        assert_eq!(event[0].trace_id, send[0].trace_id, "{op} not in the send span's trace");
        assert_eq!(event[0].attrs.get("messaging.system").map(String::as_str), Some("rocketmq"));
    }
    let delay_type = gateway_spans(&spans, "send DelayTopic")[0].attrs.get("messaging.rocketmq.message.type").cloned();
    assert_eq!(delay_type.as_deref(), Some("delay"));
    assert!(
        gateway_spans(&spans, "send DelayTopic")[0].attrs.contains_key("messaging.rocketmq.message.delivery_timestamp")
    );
}
