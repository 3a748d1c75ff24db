//! The HTTP side (axum): `/healthz`, `/readyz`, and the admin API: topics, consumer groups
//! (with their offsets per queue, and offset resets), connected clients, commands relayed to a
//! client (thread stack trace, consume a message directly), and what the gateway holds in
//! memory (`/api/v1/stats`), and the message trace lookup (`messages.rs`). Calls the broker
//! only. Topics and groups are named as the broker
//! stores them (`ns%name` in a namespace, `%25` in a URL path), or by `?namespace=ns` and the
//! plain name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

pub mod cli;
mod messages;

use crate::broker::namespace::{self, NameKind};
use crate::broker::{
    Broker, BrokerError, BrokerStats, ClientInfo, ClientKind, Durability, GroupInfo, OffsetChange, QueueProgress,
    ResetTarget, TopicInfo, TopicKind, TopicProgress, VerifyOutcome,
};

#[derive(Clone)]
pub struct AdminState {
    pub broker: Broker,
    /// False until start-up finished and again once shutdown began.
    pub ready: Arc<AtomicBool>,
    /// The cluster membership (`GET /api/v1/cluster`); `None` outside cluster mode.
    pub cluster: Option<crate::cluster::membership::StatusSource>,
}

pub fn router(state: AdminState) -> axum::Router {
    let router = match crate::observability::metrics::global() {
        Some(_) => axum::Router::new().route("/metrics", get(metrics)),
        None => axum::Router::new(),
    };
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/topics", get(list_topics))
        .route("/api/v1/topics/{name}", get(get_topic).put(put_topic))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{name}", get(get_group).put(put_group))
        .route("/api/v1/groups/{name}/offsets", get(group_offsets))
        .route("/api/v1/groups/{name}/reset-offset", post(reset_offset))
        .route("/api/v1/clients", get(list_clients))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/clients/{client_id}/stack-trace", post(client_stack_trace))
        .route("/api/v1/clients/{client_id}/verify-message", post(verify_message))
        .route("/api/v1/messages", get(messages::find_by_key))
        .route("/api/v1/messages/{id}", get(messages::get_message))
        .route("/api/v1/messages/{id}/trace", get(messages::message_trace))
        .with_state(state)
}

/// Prometheus text exposition of the gateway's metrics (only routed when `metrics.enabled`).
async fn metrics(State(s): State<AdminState>) -> Response {
    let Some(m) = crate::observability::metrics::global() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let broker = s.broker.clone();
    // Reads the data directory's sizes and /proc: off the async workers.
    match tokio::task::spawn_blocking(move || m.render(&broker.metrics_gauges())).await {
        Ok(body) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")).into_response(),
    }
}

/// 200 `ready` while serving. With the metadata store failing the gateway still serves sends,
/// receives and acks (progress waits in memory and in the log's consumer journal), so it stays
/// ready — taking every replica out of the Service because their shared database blinked would
/// turn a metadata outage into a full one — and says so in the body:
/// `ready; metadata: degraded (<error>) for 12s, N progress records waiting`.
async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        let health = s.broker.metadata_health();
        match health.degraded {
            None => (StatusCode::OK, "ready").into_response(),
            Some(d) => {
                let secs = (s.broker.now_ms() - d.since_ms).max(0) / 1000;
                let body = format!(
                    "ready; metadata: degraded ({}) for {secs}s, {} progress records waiting",
                    d.error, health.waiting
                );
                (StatusCode::OK, body).into_response()
            }
        }
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// The cluster as this node sees it: live nodes, every shard's owner, epoch and target, and
/// the shards open here. 404 outside cluster mode.
async fn cluster(State(s): State<AdminState>) -> Response {
    match &s.cluster {
        Some(source) => Json(source.status()).into_response(),
        None => {
            (StatusCode::NOT_FOUND, Json(serde_json_error("cluster mode is off (cluster.enabled)"))).into_response()
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicView {
    /// As the broker stores it: `ns%name` in a namespace.
    name: String,
    /// "" outside any namespace.
    namespace: String,
    queue_nums: u32,
    message_type: &'static str,
    /// `local` or `s3`: when a send to it is acknowledged.
    durability: &'static str,
}

impl From<TopicInfo> for TopicView {
    fn from(t: TopicInfo) -> Self {
        let namespace = namespace::split(&t.name).namespace.to_string();
        TopicView {
            name: t.name,
            namespace,
            queue_nums: t.queue_nums,
            message_type: t.topic_type.as_str(),
            durability: t.durability.as_str(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTopic {
    queue_nums: Option<u32>,
    message_type: Option<String>,
    /// `local` (default) or `s3`.
    durability: Option<String>,
}

/// HTTP status of a broker error (exhaustive, like the gRPC mapping).
fn http_status(e: &BrokerError) -> StatusCode {
    match e {
        BrokerError::IllegalTopic(_)
        | BrokerError::IllegalConsumerGroup(_)
        | BrokerError::IllegalMessageTag(_)
        | BrokerError::IllegalMessageKey(_)
        | BrokerError::IllegalMessageGroup(_)
        | BrokerError::IllegalPropertyKey(_)
        | BrokerError::IllegalMessageId(_)
        | BrokerError::IllegalFilterExpression(_)
        | BrokerError::IllegalInvisibleTime(_)
        | BrokerError::IllegalDeliveryTime(_)
        | BrokerError::IllegalPollingTime(_)
        | BrokerError::InvalidReceiptHandle(_)
        | BrokerError::InvalidTransactionId(_)
        | BrokerError::MessageTypeConflict(_)
        | BrokerError::MessageCorrupted(_)
        | BrokerError::BodyEmpty
        | BrokerError::UnrecognizedClientType(_)
        | BrokerError::IllegalOffset(_)
        | BrokerError::BadRequest(_) => StatusCode::BAD_REQUEST,
        BrokerError::BodyTooLarge { .. } | BrokerError::PropertiesTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BrokerError::TopicNotFound(_)
        | BrokerError::GroupNotFound(_)
        | BrokerError::GroupLimitReached(_)
        | BrokerError::MessageNotFound(_)
        | BrokerError::OffsetNotFound(_)
        | BrokerError::ClientNotConnected(_) => StatusCode::NOT_FOUND,
        BrokerError::ClientTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        BrokerError::NotOwner(_) | BrokerError::AdoptedElsewhere(_) => StatusCode::SERVICE_UNAVAILABLE,
        BrokerError::Forbidden(_) => StatusCode::FORBIDDEN,
        BrokerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        BrokerError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        BrokerError::StorageUnavailable(_)
        | BrokerError::StorageFull(_)
        | BrokerError::TooLargeToStore { .. }
        | BrokerError::DataCorrupted(_)
        | BrokerError::MetadataUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        BrokerError::ShuttingDown | BrokerError::RemoteNotCached { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn error(e: BrokerError) -> Response {
    (http_status(&e), Json(serde_json_error(&e.to_string()))).into_response()
}

fn serde_json_error(message: &str) -> std::collections::BTreeMap<&'static str, String> {
    std::collections::BTreeMap::from([("error", message.to_string())])
}

/// `?namespace=ns`: lists only that namespace's topics or groups (`?namespace=`: those
/// outside any namespace), and names the plain `{name}` of a path in it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InNamespace {
    namespace: Option<String>,
}

impl InNamespace {
    fn given(&self) -> Option<&str> {
        self.namespace.as_deref().map(str::trim)
    }

    /// The broker-side name of the path's `name`.
    fn name(&self, name: String, kind: NameKind) -> Result<String, BrokerError> {
        match self.given() {
            None | Some("") => Ok(name),
            Some(ns) => namespace::wrap(ns, &name, kind),
        }
    }

    /// A filter for broker-side names (refuses a malformed namespace).
    fn filter(&self) -> Result<impl Fn(&str) -> bool + '_, BrokerError> {
        if let Some(ns) = self.given().filter(|ns| !ns.is_empty()) {
            namespace::validate_namespace(ns)?;
        }
        Ok(move |name: &str| self.given().is_none_or(|ns| namespace::split(name).namespace == ns))
    }
}

async fn list_topics(State(s): State<AdminState>, Query(q): Query<InNamespace>) -> Response {
    match q.filter() {
        Ok(keep) => {
            let topics = s.broker.list_topics().into_iter().filter(|t| keep(&t.name)).map(TopicView::from);
            Json(topics.collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(e),
    }
}

async fn get_topic(State(s): State<AdminState>, Path(name): Path<String>, Query(q): Query<InNamespace>) -> Response {
    let name = match q.name(name, NameKind::Topic) {
        Ok(name) => name,
        Err(e) => return error(e),
    };
    match s.broker.list_topics().into_iter().find(|t| t.name == name) {
        Some(t) => Json(TopicView::from(t)).into_response(),
        None => error(BrokerError::TopicNotFound(name)),
    }
}

async fn put_topic(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<InNamespace>,
    Json(body): Json<CreateTopic>,
) -> Response {
    let name = match q.name(name, NameKind::Topic) {
        Ok(name) => name,
        Err(e) => return error(e),
    };
    if let Err(e) = crate::broker::validate::validate_topic(&name) {
        return error(e);
    }
    let kind = body.message_type.as_deref().unwrap_or("NORMAL");
    let Some(topic_type) = TopicKind::parse(kind) else {
        return error(BrokerError::BadRequest(format!(
            "unknown messageType `{kind}` (NORMAL, FIFO, DELAY, TRANSACTION, PRIORITY or MIXED)"
        )));
    };
    let durability = match body.durability.as_deref() {
        None => Durability::Local,
        Some(d) => match Durability::parse(d) {
            Some(d) => d,
            None => return error(BrokerError::BadRequest(format!("unknown durability `{d}` (local or s3)"))),
        },
    };
    match s.broker.create_topic_with(&name, body.queue_nums, topic_type, durability).await {
        Ok(t) => (StatusCode::OK, Json(TopicView::from(t))).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientView {
    client_id: String,
    client_type: &'static str,
    group: Option<String>,
    last_seen_ms_ago: u64,
    /// Has a Telemetry stream open: stack trace and verify-message can reach it.
    connected: bool,
}

impl From<ClientInfo> for ClientView {
    fn from(c: ClientInfo) -> Self {
        let client_type = match c.kind {
            ClientKind::Producer => "PRODUCER",
            ClientKind::PushConsumer => "PUSH_CONSUMER",
            ClientKind::SimpleConsumer => "SIMPLE_CONSUMER",
            ClientKind::PullConsumer => "PULL_CONSUMER",
            ClientKind::Other => "UNKNOWN",
        };
        ClientView {
            client_id: c.client_id,
            client_type,
            group: c.group,
            last_seen_ms_ago: c.last_seen_ms_ago,
            connected: c.connected,
        }
    }
}

async fn list_clients(State(s): State<AdminState>) -> Json<Vec<ClientView>> {
    Json(s.broker.clients().into_iter().map(ClientView::from).collect())
}

async fn client_stack_trace(State(s): State<AdminState>, Path(client_id): Path<String>) -> Response {
    match s.broker.client_thread_stack_trace(&client_id).await {
        Ok(text) => Json(serde_json::json!({ "clientId": client_id, "threadStackTrace": text })).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VerifyMessage {
    topic: String,
    message_id: String,
}

async fn verify_message(
    State(s): State<AdminState>,
    Path(client_id): Path<String>,
    Json(body): Json<VerifyMessage>,
) -> Response {
    match s.broker.verify_message(&client_id, &body.topic, &body.message_id).await {
        Ok(outcome) => {
            let (result, detail) = match outcome {
                VerifyOutcome::Consumed => ("CONSUMED", None),
                VerifyOutcome::FailedToConsume => ("FAILED_TO_CONSUME", None),
                VerifyOutcome::Corrupted => ("CORRUPTED", None),
                VerifyOutcome::Refused { code, message } => ("REFUSED", Some(format!("{message} ({code})"))),
            };
            Json(serde_json::json!({ "clientId": client_id, "messageId": body.message_id, "result": result, "detail": detail }))
                .into_response()
        }
        Err(e) => error(e),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupView {
    /// As the broker stores it: `ns%name` in a namespace.
    name: String,
    /// "" outside any namespace.
    namespace: String,
    consume_message_orderly: bool,
    retry_max_times: i32,
    /// The group's own retry delays; absent: the gateway's `consumer.retryBackoff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_backoff: Option<String>,
    /// `CLUSTERING` or `BROADCASTING`.
    message_model: &'static str,
    /// Created on first use by a client (counts against `consumer.maxAutoCreatedGroups`).
    auto_created: bool,
}

impl From<GroupInfo> for GroupView {
    fn from(g: GroupInfo) -> Self {
        GroupView {
            namespace: namespace::split(&g.name).namespace.to_string(),
            name: g.name,
            consume_message_orderly: g.fifo,
            retry_max_times: g.retry_max_times,
            retry_backoff: g.retry_backoff,
            message_model: if g.broadcast { "BROADCASTING" } else { "CLUSTERING" },
            auto_created: g.auto_created,
        }
    }
}

/// Body of `PUT /api/v1/groups/{name}` (Apache `updateSubGroup -o … -r …`; `retryBackoff`:
/// the group's retry delays, e.g. `"1s 5s 30s"`, `""` back to the gateway default;
/// `messageModel`: `CLUSTERING` or `BROADCASTING`, absent keeps the current one).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutGroup {
    #[serde(default)]
    consume_message_orderly: bool,
    retry_max_times: Option<i32>,
    retry_backoff: Option<String>,
    message_model: Option<String>,
}

async fn list_groups(State(s): State<AdminState>, Query(q): Query<InNamespace>) -> Response {
    match q.filter() {
        Ok(keep) => {
            let groups = s.broker.list_groups().into_iter().filter(|g| keep(&g.name)).map(GroupView::from);
            Json(groups.collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(e),
    }
}

async fn get_group(State(s): State<AdminState>, Path(name): Path<String>, Query(q): Query<InNamespace>) -> Response {
    let name = match q.name(name, NameKind::Group) {
        Ok(name) => name,
        Err(e) => return error(e),
    };
    match s.broker.list_groups().into_iter().find(|g| g.name == name) {
        Some(g) => Json(GroupView::from(g)).into_response(),
        None => error(BrokerError::GroupNotFound(name)),
    }
}

async fn put_group(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<InNamespace>,
    Json(body): Json<PutGroup>,
) -> Response {
    let name = match q.name(name, NameKind::Group) {
        Ok(name) => name,
        Err(e) => return error(e),
    };
    let retry = (body.retry_max_times, body.retry_backoff.as_deref());
    let broadcast = match body.message_model.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None => None,
        Some("CLUSTERING") => Some(false),
        Some("BROADCASTING") => Some(true),
        Some(other) => {
            return error(BrokerError::BadRequest(format!(
                "messageModel `{other}`: expected CLUSTERING or BROADCASTING"
            )));
        }
    };
    match s.broker.put_group(&name, body.consume_message_orderly, retry, broadcast).await {
        Ok(g) => Json(GroupView::from(g)).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetsQuery {
    topic: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueProgressView {
    queue_id: u32,
    min_offset: u64,
    max_offset: u64,
    /// Everything below is consumed; absent when the group has no offset on this queue.
    consumer_offset: Option<u64>,
    /// Messages at or above the consumer offset (`maxOffset - consumerOffset`).
    lag: Option<u64>,
    in_flight: usize,
    acked_above: usize,
}

impl From<QueueProgress> for QueueProgressView {
    fn from(q: QueueProgress) -> Self {
        QueueProgressView {
            queue_id: q.queue_id,
            min_offset: q.min_offset,
            max_offset: q.max_offset,
            consumer_offset: q.consumer_offset,
            lag: q.lag(),
            in_flight: q.in_flight,
            acked_above: q.acked_above,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicProgressView {
    topic: String,
    /// Sum of the queues' lag.
    lag: u64,
    queues: Vec<QueueProgressView>,
}

impl From<TopicProgress> for TopicProgressView {
    fn from(t: TopicProgress) -> Self {
        let lag = t.queues.iter().filter_map(QueueProgress::lag).sum();
        TopicProgressView { topic: t.topic, lag, queues: t.queues.into_iter().map(Into::into).collect() }
    }
}

/// `GET /api/v1/groups/{name}/offsets[?topic=T]`: the group's offset, the queue's bounds and the
/// lag per queue, for `topic` or every topic the group has progress on (Apache
/// `mqadmin consumerProgress`).
async fn group_offsets(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<OffsetsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(BrokerError::BadRequest("the only query parameter is `topic`".into()));
    };
    match s.broker.group_offsets(&name, query.topic.as_deref()).await {
        Ok(topics) => Json(serde_json::json!({
            "group": name,
            "topics": topics.into_iter().map(TopicProgressView::from).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(e),
    }
}

/// Where `POST /api/v1/groups/{name}/reset-offset` moves the group: `timestamp` (epoch ms, an
/// RFC 3339 time, `"earliest"`, or `"latest"`/`"now"`) or `offsets` (queue id → offset).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResetOffset {
    topic: String,
    timestamp: Option<TimeSpec>,
    offsets: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TimeSpec {
    Millis(i64),
    Text(String),
}

impl ResetOffset {
    fn target(&self) -> Result<ResetTarget, BrokerError> {
        match (&self.timestamp, &self.offsets) {
            (Some(TimeSpec::Millis(ms)), None) => Ok(ResetTarget::Timestamp(*ms)),
            (Some(TimeSpec::Text(t)), None) => match t.trim() {
                "earliest" => Ok(ResetTarget::Earliest),
                "latest" | "now" => Ok(ResetTarget::Latest),
                t => match t.parse::<i64>() {
                    Ok(ms) => Ok(ResetTarget::Timestamp(ms)),
                    Err(_) => humantime::parse_rfc3339_weak(t)
                        .ok()
                        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| ResetTarget::Timestamp(d.as_millis().min(i64::MAX as u128) as i64))
                        .ok_or_else(|| {
                            BrokerError::BadRequest(format!(
                                "timestamp `{t}` is none of: epoch milliseconds, an RFC 3339 time \
                                 (2024-05-01T12:00:00Z), earliest, latest, now"
                            ))
                        }),
                },
            },
            (None, Some(offsets)) => offsets
                .iter()
                .map(|(q, &o)| {
                    q.parse::<u32>()
                        .map(|q| (q, o))
                        .map_err(|_| BrokerError::BadRequest(format!("offsets: `{q}` is not a queue id")))
                })
                .collect::<Result<_, _>>()
                .map(ResetTarget::Offsets),
            (Some(_), Some(_)) | (None, None) => {
                Err(BrokerError::BadRequest("give either `timestamp` or `offsets` (one of them)".into()))
            }
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OffsetChangeView {
    queue_id: u32,
    /// The group's offset before the reset (absent: it had none on this queue).
    previous_offset: Option<u64>,
    offset: u64,
    min_offset: u64,
    max_offset: u64,
}

impl From<OffsetChange> for OffsetChangeView {
    fn from(c: OffsetChange) -> Self {
        OffsetChangeView {
            queue_id: c.queue_id,
            previous_offset: c.previous,
            offset: c.offset,
            min_offset: c.min_offset,
            max_offset: c.max_offset,
        }
    }
}

/// `POST /api/v1/groups/{name}/reset-offset` (Apache `mqadmin resetOffsetByTime`, forced):
/// moves the group's offset on every queue of `topic` (or the queues `offsets` names); running
/// consumers get the messages from there at once. Answers the new offset per queue.
async fn reset_offset(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<ResetOffset>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(rejection) => {
            return error(BrokerError::BadRequest(format!("bad reset-offset body: {}", rejection.body_text())));
        }
    };
    let target = match body.target() {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    match s.broker.reset_offsets(&name, &body.topic, target).await {
        Ok(changes) => Json(serde_json::json!({
            "group": name,
            "topic": body.topic,
            "queues": changes.into_iter().map(OffsetChangeView::from).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(e),
    }
}

/// `GET /api/v1/stats`: what the gateway holds per client, group and queue, and its send
/// backpressure (field meanings in the README, "Limits and backpressure").
fn stats_json(s: &BrokerStats) -> serde_json::Value {
    let (c, q, a) = (&s.sessions, &s.states, &s.admission);
    serde_json::json!({
        "clients": {
            "sessions": c.clients,
            "expired": c.expired,
            "relayChannels": c.relay_channels,
            "rememberedReceives": c.remembered_receives,
        },
        "groups": {
            "total": s.groups,
            "autoCreated": s.auto_created_groups,
            "retired": s.groups_retired,
        },
        "queueStates": {
            "live": q.live,
            "idle": q.idle,
            "inflight": q.inflight,
            "ackedAboveFloor": q.acked_above_floor,
            "maxAckedAboveFloor": q.max_acked_above_floor,
            "dirty": q.dirty,
            "renewingClients": q.renewing_clients,
        },
        "sends": {
            "inflightBytes": a.inflight_bytes,
            "peakInflightBytes": a.peak_inflight_bytes,
            "waitingBytes": a.waiting_bytes,
            "connections": a.connections,
            "maxInflightBytes": a.max_inflight_bytes,
            "maxInflightBytesPerConnection": a.max_inflight_bytes_per_connection,
            "waited": a.waited,
            "refused": a.refused,
        },
        "tiering": s.tiering.as_ref().map(|t| serde_json::json!({
            "objectStore": t.object_store,
            "waitingSegments": t.waiting_segments,
            "waitingBytes": t.waiting_bytes,
            "remoteSegments": t.remote_segments,
            "remoteBytes": t.remote_bytes,
            "uploadedSegments": t.uploaded_segments,
            "uploadedBytes": t.uploaded_bytes,
            "uploadFailures": t.upload_failures,
            "orphansRemoved": t.orphans_removed,
            "remoteSegmentsExpired": t.remote_segments_expired,
            "mergedChunks": t.merged_chunks,
            "coldGets": t.cold_gets,
            "coldGetBytes": t.cold_get_bytes,
            "cacheBytes": t.cache_bytes,
        })),
    })
}

async fn stats(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let mut json = stats_json(&s.broker.stats());
    let health = s.broker.metadata_health();
    json["metadata"] = match health.degraded {
        None => serde_json::json!({ "status": "ok", "progressWaiting": health.waiting }),
        Some(d) => serde_json::json!({
            "status": "degraded",
            "error": d.error,
            "degradedForMs": (s.broker.now_ms() - d.since_ms).max(0),
            "failures": d.failures,
            "progressWaiting": health.waiting,
        }),
    };
    // Span export counters (tracing.*): exported, dropped (queue full), exportFailed.
    json["tracing"] = serde_json::to_value(crate::observability::tracing::stats()).unwrap_or_default();
    // Live heap bytes, counted only by test builds (feature heap-stats); null otherwise.
    json["memory"] = serde_json::json!({ "heapBytes": crate::observability::heap::live_bytes() });
    Json(json)
}
