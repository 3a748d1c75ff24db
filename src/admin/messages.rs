//! Admin API of the message trace lookup: `GET /api/v1/messages/{id}` (the message: headers,
//! properties, a capped body preview, where it is stored), `GET /api/v1/messages?topic=T&key=K`
//! (by key, a capped list) and `GET /api/v1/messages/{id}/trace` (its lifecycle as
//! time-ordered events plus a per-group summary). JSON in, JSON out; 400 for a malformed id
//! or query, 404 with `{"error": …}` for an unknown message. Calls the broker only.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminState, error};
use crate::broker::namespace::{self, NameKind};
use crate::broker::{BrokerError, FoundMessage, GroupSummary, MessageTrace, StoredAt, TimedEvent, TraceEvent};

/// Body bytes shown by default, and at most.
const DEFAULT_BODY_BYTES: usize = 4096;
const MAX_BODY_BYTES: usize = 64 * 1024;

/// An epoch-ms time as RFC 3339 (UTC, milliseconds); "" when out of range.
fn iso(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

fn stored_json(s: &StoredAt) -> Value {
    json!({
        "role": s.role.as_str(),
        "topic": s.topic,
        "queueId": s.queue_id,
        "queueOffset": s.queue_offset,
        "logPosition": s.log_position,
        "storeTimestamp": s.store_timestamp_ms,
        "storeTime": iso(s.store_timestamp_ms),
    })
}

/// The body: UTF-8 text when it is, else base64; at most `cap` bytes of it.
fn body_json(body: &[u8], cap: usize) -> Value {
    let shown = &body[..body.len().min(cap)];
    let (encoding, data) = match std::str::from_utf8(shown) {
        Ok(text) => ("utf-8", text.to_string()),
        Err(_) => ("base64", base64::engine::general_purpose::STANDARD.encode(shown)),
    };
    json!({ "size": body.len(), "encoding": encoding, "data": data, "truncated": shown.len() < body.len() })
}

fn message_json(m: &FoundMessage, body_cap: usize) -> Value {
    let properties: serde_json::Map<String, Value> =
        m.properties.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "messageId": m.message_id,
        "topic": m.topic,
        "namespace": namespace::split(&m.topic).namespace,
        "type": m.message_type.as_str(),
        "tag": m.tag,
        "keys": m.keys,
        "bornHost": m.born_host,
        "bornTimestamp": m.born_timestamp_ms,
        "bornTime": iso(m.born_timestamp_ms),
        "deliverAt": m.deliver_at_ms,
        "properties": properties,
        "body": body_json(&m.body, body_cap),
        "stored": m.stored.iter().map(stored_json).collect::<Vec<_>>(),
    })
}

fn event_json(e: &TimedEvent) -> Value {
    let mut v = json!({ "time": e.time_ms, "timeIso": iso(e.time_ms), "type": e.event.kind() });
    let fields = match &e.event {
        TraceEvent::Stored { topic, queue_id, offset }
        | TraceEvent::TimerFired { topic, queue_id, offset }
        | TraceEvent::Committed { topic, queue_id, offset } => {
            json!({ "topic": topic, "queueId": queue_id, "offset": offset })
        }
        TraceEvent::Scheduled { deliver_at_ms } => json!({ "deliverAt": deliver_at_ms }),
        TraceEvent::Prepared | TraceEvent::RolledBack => json!({}),
        TraceEvent::Delivered { group, client, attempt, invisible_until_ms }
        | TraceEvent::InvisibilityChanged { group, client, attempt, invisible_until_ms } => json!({
            "group": group,
            "client": client,
            "attempt": attempt,
            "invisibleUntil": invisible_until_ms,
            "invisibleUntilIso": iso(*invisible_until_ms),
        }),
        TraceEvent::Acked { group, dead_lettered } => json!({ "group": group, "deadLettered": dead_lettered }),
        TraceEvent::OffsetReset { group, offset } => json!({ "group": group, "offset": offset }),
        TraceEvent::DeadLettered { group, dlq_topic, queue_id, offset } => {
            json!({ "group": group, "dlqTopic": dlq_topic, "queueId": queue_id, "offset": offset })
        }
    };
    if let (Some(v), Value::Object(fields)) = (v.as_object_mut(), fields) {
        v.extend(fields);
    }
    v
}

fn group_json(g: &GroupSummary) -> Value {
    json!({
        "group": g.group,
        "status": g.status.as_str(),
        "deliveries": g.deliveries,
        "lastAttempt": g.last_attempt,
        "consumerOffset": g.consumer_offset,
        "dlqTopic": g.dlq_topic,
    })
}

/// A transactional message's state from its events; `None` for other messages.
fn transaction_state(t: &MessageTrace) -> Option<&'static str> {
    let kinds: Vec<&str> = t.events.iter().map(|e| e.event.kind()).collect();
    kinds.contains(&"PREPARED").then(|| {
        if kinds.contains(&"COMMITTED") {
            "COMMITTED"
        } else if kinds.contains(&"ROLLED_BACK") {
            "ROLLED_BACK"
        } else if t.truncated {
            // The resolution may lie past the scanned part of the journal.
            "UNKNOWN"
        } else {
            "OPEN"
        }
    })
}

fn trace_json(t: &MessageTrace, body_cap: usize) -> Value {
    json!({
        "transactionState": transaction_state(t),
        "message": message_json(&t.message, body_cap),
        "events": t.events.iter().map(event_json).collect::<Vec<_>>(),
        "groups": t.groups.iter().map(group_json).collect::<Vec<_>>(),
        "journalScanned": t.journal_scanned,
        "truncated": t.truncated,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MessageQuery {
    /// Body bytes to show (default 4096, at most 65536).
    body_bytes: Option<usize>,
    /// Trace only: journal records to scan at most.
    max_journal_records: Option<usize>,
}

impl MessageQuery {
    fn body_cap(&self) -> usize {
        self.body_bytes.unwrap_or(DEFAULT_BODY_BYTES).min(MAX_BODY_BYTES)
    }
}

pub(super) async fn get_message(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Response {
    match s.broker.find_message(&id) {
        Ok(m) => Json(message_json(&m, q.body_cap())).into_response(),
        Err(e) => error(e),
    }
}

pub(super) async fn message_trace(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Response {
    match s.broker.message_trace(&id, q.max_journal_records).await {
        Ok(t) => Json(trace_json(&t, q.body_cap())).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct KeyQuery {
    topic: Option<String>,
    key: Option<String>,
    /// The plain topic name is in this namespace.
    namespace: Option<String>,
    /// Most messages returned (default and cap 64).
    max: Option<usize>,
    body_bytes: Option<usize>,
}

pub(super) async fn find_by_key(State(s): State<AdminState>, Query(q): Query<KeyQuery>) -> Response {
    let (Some(topic), Some(key)) = (q.topic.as_deref(), q.key.as_deref()) else {
        return error(BrokerError::BadRequest(
            "give ?topic=T&key=K (to find a message by id: /api/v1/messages/{id})".into(),
        ));
    };
    let topic = match q.namespace.as_deref().map(str::trim) {
        None | Some("") => topic.to_string(),
        Some(ns) => match namespace::wrap(ns, topic, NameKind::Topic) {
            Ok(t) => t,
            Err(e) => return error(e),
        },
    };
    let cap = q.body_bytes.unwrap_or(DEFAULT_BODY_BYTES).min(MAX_BODY_BYTES);
    match s.broker.find_messages_by_key(&topic, key, q.max.unwrap_or(crate::broker::lookup::MAX_KEY_RESULTS)) {
        Ok(found) => Json(found.iter().map(|m| message_json(m, cap)).collect::<Vec<_>>()).into_response(),
        Err(e) => error(e),
    }
}
