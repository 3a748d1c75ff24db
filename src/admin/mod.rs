//! The HTTP side (axum): `/healthz`, `/readyz`, and the admin API: topics, consumer groups,
//! connected clients, commands relayed to a client (thread stack trace, consume a message
//! directly), and what the gateway holds in memory (`/api/v1/stats`). Calls the broker only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::broker::{
    Broker, BrokerError, BrokerStats, ClientInfo, ClientKind, GroupInfo, TopicInfo, TopicKind, VerifyOutcome,
};

#[derive(Clone)]
pub struct AdminState {
    pub broker: Broker,
    /// False until start-up finished and again once shutdown began.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/topics", get(list_topics))
        .route("/api/v1/topics/{name}", get(get_topic).put(put_topic))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{name}", get(get_group).put(put_group))
        .route("/api/v1/clients", get(list_clients))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/clients/{client_id}/stack-trace", post(client_stack_trace))
        .route("/api/v1/clients/{client_id}/verify-message", post(verify_message))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TopicView {
    name: String,
    queue_nums: u32,
    message_type: &'static str,
}

impl From<TopicInfo> for TopicView {
    fn from(t: TopicInfo) -> Self {
        TopicView { name: t.name, queue_nums: t.queue_nums, message_type: t.topic_type.as_str() }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTopic {
    queue_nums: Option<u32>,
    message_type: Option<String>,
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
        | BrokerError::BadRequest(_) => StatusCode::BAD_REQUEST,
        BrokerError::BodyTooLarge { .. } | BrokerError::PropertiesTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BrokerError::TopicNotFound(_)
        | BrokerError::GroupNotFound(_)
        | BrokerError::GroupLimitReached(_)
        | BrokerError::MessageNotFound(_)
        | BrokerError::ClientNotConnected(_) => StatusCode::NOT_FOUND,
        BrokerError::ClientTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        BrokerError::Forbidden(_) => StatusCode::FORBIDDEN,
        BrokerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        BrokerError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        BrokerError::StorageUnavailable(_)
        | BrokerError::StorageFull(_)
        | BrokerError::TooLargeToStore { .. }
        | BrokerError::DataCorrupted(_)
        | BrokerError::MetadataUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        BrokerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn error(e: BrokerError) -> Response {
    (http_status(&e), Json(serde_json_error(&e.to_string()))).into_response()
}

fn serde_json_error(message: &str) -> std::collections::BTreeMap<&'static str, String> {
    std::collections::BTreeMap::from([("error", message.to_string())])
}

async fn list_topics(State(s): State<AdminState>) -> Json<Vec<TopicView>> {
    Json(s.broker.list_topics().into_iter().map(TopicView::from).collect())
}

async fn get_topic(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.broker.list_topics().into_iter().find(|t| t.name == name) {
        Some(t) => Json(TopicView::from(t)).into_response(),
        None => error(BrokerError::TopicNotFound(name)),
    }
}

async fn put_topic(State(s): State<AdminState>, Path(name): Path<String>, Json(body): Json<CreateTopic>) -> Response {
    if let Err(e) = crate::broker::validate::validate_topic(&name) {
        return error(e);
    }
    let kind = body.message_type.as_deref().unwrap_or("NORMAL");
    let Some(topic_type) = TopicKind::parse(kind) else {
        return error(BrokerError::BadRequest(format!(
            "unknown messageType `{kind}` (NORMAL, FIFO, DELAY, TRANSACTION, PRIORITY or MIXED)"
        )));
    };
    match s.broker.create_topic(&name, body.queue_nums, topic_type).await {
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
    name: String,
    consume_message_orderly: bool,
    retry_max_times: i32,
    /// The group's own retry delays; absent: the gateway's `consumer.retryBackoff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_backoff: Option<String>,
    /// Created on first use by a client (counts against `consumer.maxAutoCreatedGroups`).
    auto_created: bool,
}

impl From<GroupInfo> for GroupView {
    fn from(g: GroupInfo) -> Self {
        GroupView {
            name: g.name,
            consume_message_orderly: g.fifo,
            retry_max_times: g.retry_max_times,
            retry_backoff: g.retry_backoff,
            auto_created: g.auto_created,
        }
    }
}

/// Body of `PUT /api/v1/groups/{name}` (Apache `updateSubGroup -o … -r …`; `retryBackoff`:
/// the group's retry delays, e.g. `"1s 5s 30s"`, `""` back to the gateway default).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutGroup {
    #[serde(default)]
    consume_message_orderly: bool,
    retry_max_times: Option<i32>,
    retry_backoff: Option<String>,
}

async fn list_groups(State(s): State<AdminState>) -> Json<Vec<GroupView>> {
    Json(s.broker.list_groups().into_iter().map(GroupView::from).collect())
}

async fn get_group(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.broker.list_groups().into_iter().find(|g| g.name == name) {
        Some(g) => Json(GroupView::from(g)).into_response(),
        None => error(BrokerError::GroupNotFound(name)),
    }
}

async fn put_group(State(s): State<AdminState>, Path(name): Path<String>, Json(body): Json<PutGroup>) -> Response {
    let retry = (body.retry_max_times, body.retry_backoff.as_deref());
    match s.broker.put_group(&name, body.consume_message_orderly, retry).await {
        Ok(g) => Json(GroupView::from(g)).into_response(),
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
    })
}

async fn stats(State(s): State<AdminState>) -> Json<serde_json::Value> {
    Json(stats_json(&s.broker.stats()))
}
