//! OpenTelemetry spans of a message's life on the server (send received, durable append with
//! the flush wait, each delivery, ack, nack / change-invisible, DLQ move, timer fire,
//! transaction commit / rollback), following the OpenTelemetry messaging semantic conventions
//! (`messaging.system = rocketmq`, …), parented to the producer's context carried by the
//! message (`SystemProperties.trace_context`, else the user properties
//! `traceparent`/`tracestate` the OTel Java agent writes), and exported with OTLP (gRPC or
//! HTTP/protobuf).
//!
//! Why the OpenTelemetry API directly and not the `tracing` bridge: every span here has an
//! explicit parent taken from a message (not from the task's current span), several spans of a
//! batch are open at once, and the disabled path must cost one relaxed atomic load: with
//! `tracing.enabled: false` nothing is built at all.
//!
//! Export: a bounded queue (`tracing.maxQueueSize`) drained by one tokio task in batches; the
//! request path never awaits an export. Spans that do not fit the queue are dropped and counted
//! ([`stats`]), as are spans of batches whose export failed (collector down), so messaging is
//! unaffected whatever the collector does. The SDK's own `BatchSpanProcessor` is not used: it
//! exports from its own thread with a blocking executor (unfit for the async tonic/hyper
//! clients we already build) and does not expose its dropped count.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor, Tracer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::TracingConfig;

/// Attribute names (OpenTelemetry messaging semantic conventions, RocketMQ page).
pub mod attr {
    pub const SYSTEM: &str = "messaging.system";
    pub const OPERATION_NAME: &str = "messaging.operation.name";
    pub const OPERATION_TYPE: &str = "messaging.operation.type";
    pub const DESTINATION: &str = "messaging.destination.name";
    pub const PARTITION: &str = "messaging.destination.partition.id";
    pub const MESSAGE_ID: &str = "messaging.message.id";
    pub const BODY_SIZE: &str = "messaging.message.body.size";
    pub const BATCH_COUNT: &str = "messaging.batch.message_count";
    pub const CONSUMER_GROUP: &str = "messaging.consumer.group.name";
    pub const CLIENT_ID: &str = "messaging.client.id";
    pub const TAG: &str = "messaging.rocketmq.message.tag";
    pub const KEYS: &str = "messaging.rocketmq.message.keys";
    pub const MESSAGE_TYPE: &str = "messaging.rocketmq.message.type";
    pub const MESSAGE_GROUP: &str = "messaging.rocketmq.message.group";
    pub const DELIVERY_TIMESTAMP: &str = "messaging.rocketmq.message.delivery_timestamp";
    pub const NAMESPACE: &str = "messaging.rocketmq.namespace";
    /// Delivery attempt (1 = first delivery); the SDKs' own name for it.
    pub const ATTEMPT: &str = "messaging.rocketmq.attempt";
    /// The message's offset in its queue (gateway-specific).
    pub const QUEUE_OFFSET: &str = "messaging.rocketmq.queue_offset";
    /// Nack / change-invisible: how long the message stays invisible (gateway-specific).
    pub const INVISIBLE_MS: &str = "messaging.rocketmq.invisible_duration_ms";
    /// DLQ move: the dead-letter topic (gateway-specific).
    pub const DLQ_TOPIC: &str = "messaging.rocketmq.dlq_topic";
    pub const ERROR_TYPE: &str = "error.type";
}

const SYSTEM: &str = "rocketmq";
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Deliveries remembered for parenting their ack / nack spans (two generations of this many).
const RECENT: usize = 32 * 1024;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<Tracer> = OnceLock::new();
static EXPORTER: OnceLock<Background> = OnceLock::new();
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);
static RECENT_DELIVERIES: Mutex<Recent> = Mutex::new(Recent { current: None, previous: None });

/// Whether spans are made (one relaxed load; callers check it before building anything).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Span export counters (admin `/api/v1/stats`, Prometheus).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingStats {
    pub enabled: bool,
    /// Spans handed to the collector successfully.
    pub exported: u64,
    /// Spans dropped because the export queue (`tracing.maxQueueSize`) was full.
    pub dropped: u64,
    /// Spans lost because their export failed (collector down or too slow).
    pub export_failed: u64,
}

/// The export counters since start.
pub fn stats() -> TracingStats {
    TracingStats {
        enabled: enabled(),
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
        export_failed: EXPORT_FAILED.load(Ordering::Relaxed),
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("tracing.protocol must be `grpc` or `http`, not `{0}`")]
    Protocol(String),
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    #[error("tracing was already set up in this process")]
    AlreadyStarted,
}

struct Background {
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    timeout: Duration,
}

/// Sets up span export as configured (must run inside the tokio runtime). Nothing happens when
/// `tracing.enabled` is false. The exporter connects lazily: a collector that is down only
/// makes exports fail (counted), never the start.
pub fn init(cfg: &TracingConfig) -> Result<(), TracingError> {
    if !cfg.enabled {
        return Ok(());
    }
    let exporter = build_exporter(cfg)?;
    let resource = Resource::builder().with_service_name(cfg.service_name.clone()).build();
    let (tx, rx) = mpsc::channel(cfg.max_queue_size.max(1));
    let stop = CancellationToken::new();
    let task = tokio::spawn(export_loop(exporter, resource.clone(), rx, stop.clone(), cfg.export_timeout));
    let background = Background { stop, task: Mutex::new(Some(task)), timeout: cfg.export_timeout };
    if EXPORTER.set(background).is_err() {
        return Err(TracingError::AlreadyStarted);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(QueueProcessor { tx })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("rmq-gateway");
    if TRACER.set(tracer).is_err() {
        return Err(TracingError::AlreadyStarted);
    }
    ENABLED.store(true, Ordering::Relaxed);
    ::tracing::info!(
        endpoint = cfg.endpoint,
        protocol = cfg.protocol,
        sample_ratio = cfg.sample_ratio,
        "OpenTelemetry span export on"
    );
    Ok(())
}

fn build_exporter(cfg: &TracingConfig) -> Result<opentelemetry_otlp::SpanExporter, TracingError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let built = match cfg.protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.export_timeout)
            .build(),
        "http" => {
            let base = cfg.endpoint.trim_end_matches('/');
            let endpoint = if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_headers(HashMap::new())
                .with_endpoint(endpoint)
                .with_timeout(cfg.export_timeout)
                .build()
        }
        other => return Err(TracingError::Protocol(other.to_string())),
    };
    built.map_err(|e| TracingError::Exporter(e.to_string()))
}

/// Stops the export task after one last export of what is queued (bounded by
/// `tracing.exportTimeout`).
pub async fn shutdown() {
    ENABLED.store(false, Ordering::Relaxed);
    let Some(bg) = EXPORTER.get() else { return };
    bg.stop.cancel();
    let task = bg.task.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(task) = task
        && tokio::time::timeout(bg.timeout + Duration::from_secs(1), task).await.is_err()
    {
        ::tracing::warn!("the last span export did not finish in time");
    }
}

#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

async fn export_loop(
    mut exporter: opentelemetry_otlp::SpanExporter,
    resource: Resource,
    mut rx: mpsc::Receiver<SpanData>,
    stop: CancellationToken,
    timeout: Duration,
) {
    exporter.set_resource(&resource);
    let mut warned = false;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
                _ = stop.cancelled() => break,
            }
        }
        export(&exporter, batch, timeout, &mut warned).await;
    }
    // Last export of what is queued.
    let mut rest = Vec::new();
    while let Ok(s) = rx.try_recv() {
        rest.push(s);
    }
    if !rest.is_empty() {
        export(&exporter, rest, timeout, &mut warned).await;
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    timeout: Duration,
    warned: &mut bool,
) {
    let n = batch.len() as u64;
    match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => {
            EXPORTED.fetch_add(n, Ordering::Relaxed);
            if *warned {
                ::tracing::info!("span export works again");
                *warned = false;
            }
        }
        Ok(Err(e)) => failed(n, &e.to_string(), warned),
        Err(_) => failed(n, "timed out", warned),
    }
}

fn failed(n: u64, why: &str, warned: &mut bool) {
    EXPORT_FAILED.fetch_add(n, Ordering::Relaxed);
    if !*warned {
        ::tracing::warn!(spans = n, error = why, "span export failed; spans are dropped until the collector answers");
        *warned = true;
    } else {
        ::tracing::debug!(spans = n, error = why, "span export failed");
    }
}

/// The producer's context carried by a message: `SystemProperties.trace_context` (a W3C
/// `traceparent`, how the SDKs attach it) first, else the user properties
/// `traceparent`/`tracestate` (the OTel Java agent's). None when neither parses.
pub fn message_context(
    trace_context: Option<&str>,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<SpanContext> {
    trace_context
        .and_then(|tc| parse_traceparent(tc, None))
        .or_else(|| traceparent.and_then(|tp| parse_traceparent(tp, tracestate)))
}

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate.and_then(|s| TraceState::from_str(s).ok()).unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, TraceFlags::new(flags & 1), true, state))
}

/// What a span says about one message.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageInfo<'a> {
    pub topic: &'a str,
    pub message_id: &'a str,
    pub tag: Option<&'a str>,
    pub keys: &'a [String],
    /// `normal`, `fifo`, `delay`, `transaction`.
    pub message_type: &'a str,
    pub message_group: Option<&'a str>,
    pub body_size: usize,
    /// The producer's context (see [`message_context`]).
    pub parent: Option<&'a SpanContext>,
}

impl MessageInfo<'_> {
    fn attributes(&self, operation: &'static str, kind: &'static str) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(12);
        a.push(KeyValue::new(attr::SYSTEM, SYSTEM));
        a.push(KeyValue::new(attr::OPERATION_NAME, operation));
        a.push(KeyValue::new(attr::OPERATION_TYPE, kind));
        a.push(KeyValue::new(attr::DESTINATION, self.topic.to_string()));
        if !self.message_id.is_empty() {
            a.push(KeyValue::new(attr::MESSAGE_ID, self.message_id.to_string()));
        }
        if let Some(tag) = self.tag {
            a.push(KeyValue::new(attr::TAG, tag.to_string()));
        }
        if !self.keys.is_empty() {
            let keys: Vec<opentelemetry::StringValue> = self.keys.iter().map(|k| k.clone().into()).collect();
            a.push(KeyValue::new(attr::KEYS, Value::Array(keys.into())));
        }
        if !self.message_type.is_empty() {
            a.push(KeyValue::new(attr::MESSAGE_TYPE, self.message_type.to_string()));
        }
        if let Some(g) = self.message_group {
            a.push(KeyValue::new(attr::MESSAGE_GROUP, g.to_string()));
        }
        if self.body_size > 0 {
            a.push(KeyValue::new(attr::BODY_SIZE, self.body_size as i64));
        }
        a
    }
}

fn tracer() -> Option<&'static Tracer> {
    if enabled() { TRACER.get() } else { None }
}

fn parent_cx(parent: Option<&SpanContext>) -> Context {
    match parent {
        Some(sc) => Context::new().with_remote_span_context(sc.clone()),
        None => Context::new(),
    }
}

fn start(name: String, kind: SpanKind, attributes: Vec<KeyValue>, parent: &Context) -> Option<Span> {
    let tracer = tracer()?;
    Some(tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(tracer, parent))
}

/// A span that ends when dropped (none when tracing is off or not sampled).
#[derive(Debug, Default)]
pub struct MessageSpan(Option<Span>);

impl MessageSpan {
    /// Adds an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(key, value.into()));
        }
    }

    /// Marks the span failed with `error.type` (a short code) and a message.
    pub fn fail(&mut self, error_type: &str, message: &str) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.to_string()));
            s.set_status(Status::error(message.to_string()));
        }
    }

    /// Ends the span now.
    pub fn end(mut self) {
        if let Some(s) = &mut self.0 {
            s.end();
        }
    }

    /// This span as a W3C `traceparent` (None when not recording).
    pub fn traceparent(&self) -> Option<String> {
        let sc = self.context()?;
        Some(format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
    }

    /// The context children of this span take.
    fn context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|s| s.span_context().clone())
    }

    /// A child span (kind Internal) named `{operation} {topic}`.
    pub fn child(&self, operation: &'static str, topic: &str) -> MessageSpan {
        let Some(sc) = self.context() else { return MessageSpan(None) };
        let attrs = vec![
            KeyValue::new(attr::SYSTEM, SYSTEM),
            KeyValue::new(attr::OPERATION_NAME, operation),
            KeyValue::new(attr::DESTINATION, topic.to_string()),
        ];
        MessageSpan(start(format!("{operation} {topic}"), SpanKind::Internal, attrs, &parent_cx(Some(&sc))))
    }
}

/// The server span of one message of a SendMessage (kind Server, `send {topic}`), parented to
/// the producer's context.
pub fn send(m: &MessageInfo<'_>, batch: usize) -> MessageSpan {
    if !enabled() {
        return MessageSpan(None);
    }
    let mut a = m.attributes("send", "send");
    if batch > 1 {
        a.push(KeyValue::new(attr::BATCH_COUNT, batch as i64));
    }
    MessageSpan(start(format!("send {}", m.topic), SpanKind::Server, a, &parent_cx(m.parent)))
}

/// A message event that has no duration of its own on the server (timer fire, DLQ move,
/// transaction commit / rollback): a span named `{operation} {topic}` parented to the
/// producer's context, with `extra` attributes. Ended at once by the caller (drop).
pub fn event(operation: &'static str, kind: &'static str, m: &MessageInfo<'_>, extra: Vec<KeyValue>) -> MessageSpan {
    if !enabled() {
        return MessageSpan(None);
    }
    let mut a = m.attributes(operation, kind);
    a.extend(extra);
    MessageSpan(start(format!("{operation} {}", m.topic), SpanKind::Internal, a, &parent_cx(m.parent)))
}

/// One delivery of a message to a consumer (`receive {topic}`, kind Server), parented to the
/// producer's context; remembered so the ack or nack of this delivery joins the same trace.
#[allow(clippy::too_many_arguments)]
pub fn delivered(m: &MessageInfo<'_>, group: &str, client_id: &str, queue_id: u32, offset: u64, attempt: u32) {
    if !enabled() {
        return;
    }
    let mut a = m.attributes("receive", "receive");
    a.push(KeyValue::new(attr::CONSUMER_GROUP, group.to_string()));
    a.push(KeyValue::new(attr::CLIENT_ID, client_id.to_string()));
    a.push(KeyValue::new(attr::PARTITION, queue_id.to_string()));
    a.push(KeyValue::new(attr::QUEUE_OFFSET, offset as i64));
    a.push(KeyValue::new(attr::ATTEMPT, attempt as i64));
    drop(start(format!("receive {}", m.topic), SpanKind::Server, a, &parent_cx(m.parent)));
    let entry = Remembered { message_id: m.message_id.to_string(), parent: m.parent.cloned() };
    lock_recent().insert(delivery_key(group, m.topic, queue_id, offset), entry);
}

/// The ack (`ack {topic}`) or nack / change-invisible (`nack {topic}`, with the invisible
/// duration) of a delivery, parented to the producer's context when this node delivered it.
pub fn settled(
    operation: &'static str,
    group: &str,
    topic: &str,
    client_id: &str,
    queue_id: u32,
    offset: u64,
    invisible: Option<Duration>,
) -> MessageSpan {
    if !enabled() {
        return MessageSpan(None);
    }
    let key = delivery_key(group, topic, queue_id, offset);
    let known = if operation == "ack" { lock_recent().remove(key) } else { lock_recent().get(key) };
    let (message_id, parent) = known.map_or((String::new(), None), |r| (r.message_id, r.parent));
    let m = MessageInfo { topic, message_id: &message_id, parent: parent.as_ref(), ..Default::default() };
    let mut a = m.attributes(operation, "settle");
    a.push(KeyValue::new(attr::CONSUMER_GROUP, group.to_string()));
    a.push(KeyValue::new(attr::CLIENT_ID, client_id.to_string()));
    a.push(KeyValue::new(attr::PARTITION, queue_id.to_string()));
    a.push(KeyValue::new(attr::QUEUE_OFFSET, offset as i64));
    if let Some(d) = invisible {
        a.push(KeyValue::new(attr::INVISIBLE_MS, d.as_millis() as i64));
    }
    MessageSpan(start(format!("{operation} {topic}"), SpanKind::Server, a, &parent_cx(parent.as_ref())))
}

#[derive(Clone)]
struct Remembered {
    message_id: String,
    parent: Option<SpanContext>,
}

/// Two generations of at most [`RECENT`] entries: bounded memory, O(1) per operation.
struct Recent {
    current: Option<HashMap<u64, Remembered>>,
    previous: Option<HashMap<u64, Remembered>>,
}

impl Recent {
    fn insert(&mut self, key: u64, entry: Remembered) {
        let current = self.current.get_or_insert_with(HashMap::new);
        if current.len() >= RECENT {
            self.previous = self.current.take();
        }
        self.current.get_or_insert_with(HashMap::new).insert(key, entry);
    }

    fn get(&self, key: u64) -> Option<Remembered> {
        [&self.current, &self.previous].into_iter().flatten().find_map(|m| m.get(&key).cloned())
    }

    fn remove(&mut self, key: u64) -> Option<Remembered> {
        [&mut self.current, &mut self.previous].into_iter().flatten().find_map(|m| m.remove(&key))
    }
}

fn lock_recent() -> std::sync::MutexGuard<'static, Recent> {
    RECENT_DELIVERIES.lock().unwrap_or_else(|e| e.into_inner())
}

fn delivery_key(group: &str, topic: &str, queue_id: u32, offset: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (group, topic, queue_id, offset).hash(&mut h);
    h.finish()
}

/// The trace id of a context as hex (logs).
pub fn trace_id_of(sc: &SpanContext) -> String {
    sc.trace_id().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_like_the_cpp_sdk_writes_it() {
        let sc = parse_traceparent("00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01", None).unwrap();
        assert_eq!(sc.trace_id().to_string(), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(sc.span_id().to_string(), "0102030405060708");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        assert!(parse_traceparent("00-00000000000000000000000000000000-0102030405060708-01", None).is_none());
        assert!(parse_traceparent("garbage", None).is_none());
        assert!(parse_traceparent("00-0102030405060708090a0b0c0d0e0f10-0102030405060708", None).is_none());
    }

    #[test]
    fn system_trace_context_wins_over_user_properties() {
        let sys = "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01";
        let user = "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-00";
        let sc = message_context(Some(sys), Some(user), None).unwrap();
        assert_eq!(sc.span_id().to_string(), "0102030405060708");
        let sc = message_context(None, Some(user), Some("k=v")).unwrap();
        assert!(!sc.is_sampled());
        assert_eq!(sc.trace_state().get("k"), Some("v"));
    }

    #[test]
    fn recent_deliveries_stay_bounded() {
        let mut r = Recent { current: None, previous: None };
        for i in 0..(RECENT as u64 * 3) {
            r.insert(i, Remembered { message_id: i.to_string(), parent: None });
        }
        let held = r.current.as_ref().map_or(0, HashMap::len) + r.previous.as_ref().map_or(0, HashMap::len);
        assert!(held <= 2 * RECENT);
        assert!(r.get(RECENT as u64 * 3 - 1).is_some());
        assert!(r.remove(0).is_none());
    }

    #[test]
    fn config_is_validated() {
        let mut c = crate::config::Config::default();
        assert!(c.validate().is_ok());
        c.tracing.protocol = "udp".into();
        assert!(c.validate().is_err());
        c.tracing.protocol = "http".into();
        c.tracing.sample_ratio = 1.5;
        assert!(c.validate().is_err());
        c.tracing.sample_ratio = 0.5;
        c.log.format = "xml".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn disabled_makes_no_span() {
        let m = MessageInfo { topic: "t", ..Default::default() };
        assert!(send(&m, 1).0.is_none());
    }
}
