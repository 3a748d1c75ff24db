//! The HTTP side (axum): `/healthz`, `/readyz`, and a small admin API for topics. Calls the
//! broker only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, BrokerError};
use crate::metadata::{TopicRecord, TopicType};

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

impl From<TopicRecord> for TopicView {
    fn from(t: TopicRecord) -> Self {
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
        | BrokerError::MessageTypeConflict(_)
        | BrokerError::MessageCorrupted(_)
        | BrokerError::BodyEmpty
        | BrokerError::UnrecognizedClientType(_)
        | BrokerError::BadRequest(_) => StatusCode::BAD_REQUEST,
        BrokerError::BodyTooLarge { .. } | BrokerError::PropertiesTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BrokerError::TopicNotFound(_) | BrokerError::GroupNotFound(_) => StatusCode::NOT_FOUND,
        BrokerError::Forbidden(_) => StatusCode::FORBIDDEN,
        BrokerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        BrokerError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        BrokerError::Storage(_) | BrokerError::Metadata(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    let Some(topic_type) = TopicType::parse(kind) else {
        return error(BrokerError::BadRequest(format!(
            "unknown messageType `{kind}` (NORMAL, FIFO, DELAY, TRANSACTION or MIXED)"
        )));
    };
    let queue_nums = body.queue_nums.unwrap_or(s.broker.config().topics.default_topic_queue_nums);
    match s.broker.create_topic(&name, queue_nums, topic_type).await {
        Ok(t) => (StatusCode::OK, Json(TopicView::from(t))).into_response(),
        Err(e) => error(e),
    }
}
