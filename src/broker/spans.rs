//! The broker's side of message tracing: turns its message types into what
//! [`crate::observability::tracing`] records (topic, id, tag, keys, type, the producer's
//! context). Every function returns at once when tracing is off.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanContext;

use super::error::BrokerError;
use super::message::{DeliveredMessage, MessageType, OutgoingMessage};
use crate::observability::tracing::{self as trace, MessageInfo, MessageSpan, attr};
use crate::storage::StoredMessage;
use crate::storage::record::keys;

fn type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Normal => "normal",
        MessageType::Fifo => "fifo",
        MessageType::Delay => "delay",
        MessageType::Transaction => "transaction",
        MessageType::Priority => "priority",
    }
}

fn user<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The short `error.type` of a broker error (its variant name).
pub(super) fn error_type(e: &BrokerError) -> String {
    let debug = format!("{e:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_string()
}

/// One `send {topic}` server span per message of a SendMessage (empty when tracing is off).
pub(super) fn send_spans(messages: &[OutgoingMessage]) -> Vec<MessageSpan> {
    if !trace::enabled() {
        return Vec::new();
    }
    messages
        .iter()
        .map(|m| {
            let parent = trace::message_context(
                m.trace_context.as_deref(),
                user(&m.user_properties, "traceparent"),
                user(&m.user_properties, "tracestate"),
            );
            let info = MessageInfo {
                topic: &m.topic,
                message_id: &m.message_id,
                tag: m.tag.as_deref(),
                keys: &m.keys,
                message_type: type_name(m.message_type()),
                message_group: m.message_group.as_deref(),
                body_size: m.body.len(),
                parent: parent.as_ref(),
            };
            let mut span = trace::send(&info, messages.len());
            if let Some(at) = m.delivery_timestamp_ms {
                span.set(attr::DELIVERY_TIMESTAMP, at);
            }
            span
        })
        .collect()
}

/// One `receive {topic}` span per delivered message.
pub(super) fn delivered(messages: &[DeliveredMessage], group: &str, client_id: &str) {
    if !trace::enabled() {
        return;
    }
    for m in messages {
        let parent = trace::message_context(
            m.trace_context.as_deref(),
            user(&m.user_properties, "traceparent"),
            user(&m.user_properties, "tracestate"),
        );
        let info = MessageInfo {
            topic: &m.topic,
            message_id: &m.message_id,
            tag: m.tag.as_deref(),
            keys: &m.keys,
            message_type: type_name(m.message_type),
            message_group: m.message_group.as_deref(),
            body_size: m.body.len(),
            parent: parent.as_ref(),
        };
        trace::delivered(&info, group, client_id, m.queue_id, m.queue_offset, m.delivery_attempt);
    }
}

fn stored_parent(m: &StoredMessage) -> Option<SpanContext> {
    let p = &m.properties;
    trace::message_context(p.get(keys::TRACE_CONTEXT), p.get("traceparent"), p.get("tracestate"))
}

/// A span for an event of a stored message (`timer_fire`, `dlq`, `commit`, `rollback`), on
/// `topic` (the message's own topic), parented to its producer's context.
pub(super) fn stored_event(
    operation: &'static str,
    kind: &'static str,
    topic: &str,
    m: &StoredMessage,
    extra: Vec<KeyValue>,
) -> MessageSpan {
    if !trace::enabled() {
        return MessageSpan::default();
    }
    let parent = stored_parent(m);
    let p = &m.properties;
    let keys: Vec<String> = p.get(keys::KEYS).map(|k| k.split(' ').map(str::to_string).collect()).unwrap_or_default();
    let info = MessageInfo {
        topic,
        message_id: p.get(keys::UNIQ_KEY).unwrap_or_default(),
        tag: p.get(keys::TAGS),
        keys: &keys,
        message_type: type_name(MessageType::from_flags(m.flags)),
        message_group: p.get(keys::SHARDING_KEY),
        body_size: m.body.len(),
        parent: parent.as_ref(),
    };
    trace::event(operation, kind, &info, extra)
}

/// The span of an ack (`ack`) or a nack / change-invisible (`nack`) of a delivery.
#[allow(clippy::too_many_arguments)]
pub(super) fn settled(
    operation: &'static str,
    group: &str,
    topic: &str,
    client_id: &str,
    queue_id: u32,
    offset: u64,
    invisible: Option<Duration>,
    result: Result<(), &BrokerError>,
) {
    if !trace::enabled() {
        return;
    }
    let mut span = trace::settled(operation, group, topic, client_id, queue_id, offset, invisible);
    if let Err(e) = result {
        span.fail(&error_type(e), &e.to_string());
    }
}

/// A message that came without a trace context carries its `send` span's on (stored as
/// `trace_context`), so its deliveries, acks, retries and DLQ move join that trace, and so do
/// instrumented consumers.
pub(super) fn carry_context(messages: &mut [OutgoingMessage], spans: &[MessageSpan]) {
    for (m, span) in messages.iter_mut().zip(spans) {
        if m.trace_context.is_none() && user(&m.user_properties, "traceparent").is_none() {
            m.trace_context = span.traceparent();
        }
    }
}
