//! Domain message types: what producers send ([`OutgoingMessage`]), what consumers get
//! ([`DeliveredMessage`]), and how they map to the properties stored in the log (RocketMQ's
//! property names, so stored data reads familiar to RocketMQ operators).

use std::sync::Arc;

use bytes::Bytes;

use super::TopicKind;
use crate::storage::{Properties, StoredMessage, record::keys};

/// The type of one message, as RocketMQ derives it from its properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Normal,
    Fifo,
    Delay,
    Transaction,
    Priority,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Normal => "NORMAL",
            MessageType::Fifo => "FIFO",
            MessageType::Delay => "DELAY",
            MessageType::Transaction => "TRANSACTION",
            MessageType::Priority => "PRIORITY",
        }
    }

    /// Whether a topic of type `topic` accepts this message type.
    pub fn accepted_by(self, topic: TopicKind) -> bool {
        matches!(
            (self, topic),
            (_, TopicKind::Mixed)
                | (MessageType::Normal, TopicKind::Normal)
                | (MessageType::Fifo, TopicKind::Fifo)
                | (MessageType::Delay, TopicKind::Delay)
                | (MessageType::Transaction, TopicKind::Transaction)
                | (MessageType::Priority, TopicKind::Priority)
        )
    }

    /// Low bits of the stored record flags.
    fn flag(self) -> u32 {
        match self {
            MessageType::Normal => 1,
            MessageType::Fifo => 2,
            MessageType::Delay => 3,
            MessageType::Transaction => 4,
            MessageType::Priority => 5,
        }
    }

    pub(crate) fn from_flags(flags: u32) -> Self {
        match flags & TYPE_MASK {
            2 => MessageType::Fifo,
            3 => MessageType::Delay,
            4 => MessageType::Transaction,
            5 => MessageType::Priority,
            _ => MessageType::Normal,
        }
    }
}

const TYPE_MASK: u32 = 0x7;
const FLAG_GZIP: u32 = 0x8;
/// The record is a reference to a message stored once elsewhere (a fired timer, a committed
/// transaction): its body is empty; `REF_*` properties say where the message is.
pub(crate) const FLAG_REF: u32 = 0x10;

/// Message types accepted by a topic type, for routes.
pub fn accepted_types(topic: TopicKind) -> &'static [MessageType] {
    match topic {
        TopicKind::Normal => &[MessageType::Normal],
        TopicKind::Fifo => &[MessageType::Fifo],
        TopicKind::Delay => &[MessageType::Delay],
        TopicKind::Transaction => &[MessageType::Transaction],
        TopicKind::Priority => &[MessageType::Priority],
        TopicKind::Mixed => &[MessageType::Normal, MessageType::Fifo, MessageType::Delay, MessageType::Transaction],
    }
}

/// A message as a producer sent it.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    pub topic: String,
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub message_group: Option<String>,
    pub delivery_timestamp_ms: Option<i64>,
    /// The client declared a transactional message.
    pub transactional: bool,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub trace_context: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub body: Bytes,
    /// The body is gzip-compressed (delivered as is, with the same flag).
    pub gzip: bool,
    /// Transactional: how long before the first orphan check (the producer's
    /// `orphaned_transaction_recovery_duration`).
    pub orphaned_transaction_recovery: Option<std::time::Duration>,
    /// Priority (PRIORITY topics): higher first.
    pub priority: Option<i32>,
}

impl OutgoingMessage {
    /// The type RocketMQ derives from the properties (transaction > delay > fifo > priority >
    /// normal).
    pub fn message_type(&self) -> MessageType {
        if self.transactional {
            MessageType::Transaction
        } else if self.delivery_timestamp_ms.is_some() {
            MessageType::Delay
        } else if self.message_group.is_some() {
            MessageType::Fifo
        } else if self.priority.is_some() {
            MessageType::Priority
        } else {
            MessageType::Normal
        }
    }

    pub(crate) fn flags(&self) -> u32 {
        self.message_type().flag() | if self.gzip { FLAG_GZIP } else { 0 }
    }

    /// System and user properties as stored.
    /// About the bytes this message takes on its way to the log (body, properties and the
    /// record's fixed part), for the in-flight bounds.
    pub(crate) fn approx_size(&self) -> usize {
        const RECORD_OVERHEAD: usize = 128;
        let properties: usize = self.user_properties.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()
            + self.keys.iter().map(|k| k.len() + 1).sum::<usize>()
            + self.tag.as_ref().map_or(0, String::len)
            + self.message_group.as_ref().map_or(0, String::len)
            + self.trace_context.as_ref().map_or(0, String::len)
            + self.message_id.len()
            + self.born_host.len();
        self.body.len() + properties + self.topic.len() + RECORD_OVERHEAD
    }

    pub(crate) fn stored_properties(&self) -> Properties {
        let mut p = Properties::with_capacity(self.user_properties.len() + 6);
        p.push(keys::UNIQ_KEY, self.message_id.as_str());
        if let Some(tag) = &self.tag {
            p.push(keys::TAGS, tag.as_str());
        }
        if !self.keys.is_empty() {
            p.push(keys::KEYS, self.keys.join(" "));
        }
        if let Some(g) = &self.message_group {
            p.push(keys::SHARDING_KEY, g.as_str());
        }
        if let Some(at) = self.delivery_timestamp_ms {
            p.push(keys::TIMER_DELIVER_MS, at.to_string());
        }
        if !self.born_host.is_empty() {
            p.push(keys::BORN_HOST, self.born_host.as_str());
        }
        if let Some(tc) = &self.trace_context {
            p.push(keys::TRACE_CONTEXT, tc.as_str());
        }
        if let Some(priority) = self.priority {
            p.push(keys::PRIORITY, priority.to_string());
        }
        if let Some(d) = self.orphaned_transaction_recovery {
            p.push(keys::CHECK_IMMUNITY_TIME, d.as_secs().to_string());
        }
        for (k, v) in &self.user_properties {
            p.push(k.clone(), v.as_str());
        }
        p
    }
}

/// The record written to a topic's queue when a message stored once elsewhere becomes
/// deliverable there: no body, the properties filters and lookups need, and where the message
/// is. [`dereference`] turns what a consumer reads back into the message.
pub(crate) fn reference(
    original: &StoredMessage,
    topic: Arc<str>,
    queue_id: u32,
    at: (&str, u32, u64),
) -> crate::storage::AppendMessage {
    let mut properties = Properties::with_capacity(6);
    for key in [keys::UNIQ_KEY, keys::TAGS, keys::KEYS] {
        if let Some(v) = original.properties.get(key) {
            properties.push(key, v);
        }
    }
    properties.push(keys::REF_TOPIC, at.0);
    properties.push(keys::REF_QUEUE_ID, at.1.to_string());
    properties.push(keys::REF_OFFSET, at.2.to_string());
    crate::storage::AppendMessage {
        topic,
        queue_id,
        born_timestamp_ms: original.born_timestamp_ms,
        flags: original.flags | FLAG_REF,
        tag_hash: original.tag_hash,
        properties,
        body: Bytes::new(),
    }
}

/// A full copy of a message stored elsewhere, written to a topic's queue (what a reference
/// resolves to, stored as is).
pub(crate) fn copy(original: &StoredMessage, topic: Arc<str>, queue_id: u32) -> crate::storage::AppendMessage {
    crate::storage::AppendMessage {
        topic,
        queue_id,
        born_timestamp_ms: original.born_timestamp_ms,
        flags: original.flags & !FLAG_REF,
        tag_hash: original.tag_hash,
        properties: original.properties.clone(),
        body: original.body.clone(),
    }
}

/// Where a reference record points, or `None` for an ordinary record.
pub(crate) fn referenced(m: &StoredMessage) -> Option<(String, u32, u64)> {
    if m.flags & FLAG_REF == 0 {
        return None;
    }
    let p = &m.properties;
    Some((
        p.get(keys::REF_TOPIC)?.to_string(),
        p.get(keys::REF_QUEUE_ID)?.parse().ok()?,
        p.get(keys::REF_OFFSET)?.parse().ok()?,
    ))
}

/// The message a reference record stands for, at the reference's place (topic, queue,
/// offset, store time) with the original's properties and body.
pub(crate) fn dereference(reference: StoredMessage, original: StoredMessage) -> StoredMessage {
    StoredMessage {
        born_timestamp_ms: original.born_timestamp_ms,
        flags: original.flags & !FLAG_REF,
        tag_hash: original.tag_hash,
        properties: original.properties,
        body: original.body,
        ..reference
    }
}

/// Hash of a tag kept in the queue index (0 means "no tag").
pub fn tag_hash(tag: Option<&str>) -> u64 {
    match tag {
        Some(t) if !t.is_empty() => u64::from(crc32c::crc32c(t.as_bytes())) | (1 << 32),
        _ => 0,
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct DeliveredMessage {
    pub topic: Arc<str>,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub message_id: String,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub message_group: Option<String>,
    pub delivery_timestamp_ms: Option<i64>,
    pub message_type: MessageType,
    pub born_timestamp_ms: i64,
    pub born_host: String,
    pub store_timestamp_ms: i64,
    pub trace_context: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub body: Bytes,
    pub gzip: bool,
    pub receipt_handle: String,
    pub delivery_attempt: u32,
    /// Priority messages: the priority they were sent with.
    pub priority: Option<i32>,
    /// Original topic and message id, for messages read from a dead-letter queue.
    pub dead_letter: Option<(String, String)>,
}

/// Properties that are system fields, not user properties, on delivery.
fn is_system_key(k: &str) -> bool {
    matches!(
        k,
        keys::UNIQ_KEY
            | keys::TAGS
            | keys::KEYS
            | keys::SHARDING_KEY
            | keys::TIMER_DELIVER_MS
            | keys::BORN_HOST
            | keys::TRACE_CONTEXT
            | keys::RECONSUME_TIME
            | keys::RETRY_TOPIC
            | keys::ORIGIN_MESSAGE_ID
            | keys::MAX_RECONSUME_TIMES
            | keys::DLQ_ORIGIN_TOPIC
            | keys::DLQ_ORIGIN_MESSAGE_ID
            | keys::REAL_TOPIC
            | keys::CHECK_IMMUNITY_TIME
            | keys::CHECK_AT
            | keys::PRIORITY
            | keys::REF_TOPIC
            | keys::REF_QUEUE_ID
            | keys::REF_OFFSET
    )
}

impl DeliveredMessage {
    pub(crate) fn from_stored(m: StoredMessage, receipt_handle: String, delivery_attempt: u32) -> Self {
        let p = &m.properties;
        let dead_letter = match (p.get(keys::DLQ_ORIGIN_TOPIC), p.get(keys::DLQ_ORIGIN_MESSAGE_ID)) {
            (Some(t), Some(id)) => Some((t.to_string(), id.to_string())),
            _ => None,
        };
        DeliveredMessage {
            message_id: p.get(keys::UNIQ_KEY).unwrap_or_default().to_string(),
            tag: p.get(keys::TAGS).map(str::to_string),
            keys: p.get(keys::KEYS).map(|k| k.split(' ').map(str::to_string).collect()).unwrap_or_default(),
            message_group: p.get(keys::SHARDING_KEY).map(str::to_string),
            delivery_timestamp_ms: p.get(keys::TIMER_DELIVER_MS).and_then(|v| v.parse().ok()),
            message_type: MessageType::from_flags(m.flags),
            born_timestamp_ms: m.born_timestamp_ms,
            born_host: p.get(keys::BORN_HOST).unwrap_or_default().to_string(),
            store_timestamp_ms: m.store_timestamp_ms,
            trace_context: p.get(keys::TRACE_CONTEXT).map(str::to_string),
            user_properties: p
                .iter()
                .filter(|(k, _)| !is_system_key(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            gzip: m.flags & FLAG_GZIP != 0,
            topic: m.topic,
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            body: m.body,
            receipt_handle,
            delivery_attempt,
            priority: p.get(keys::PRIORITY).and_then(|v| v.parse().ok()),
            dead_letter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_derivation_and_acceptance() {
        let mut m = OutgoingMessage::default();
        assert_eq!(m.message_type(), MessageType::Normal);
        m.message_group = Some("g".into());
        assert_eq!(m.message_type(), MessageType::Fifo);
        m.delivery_timestamp_ms = Some(1);
        assert_eq!(m.message_type(), MessageType::Delay);
        m.transactional = true;
        assert_eq!(m.message_type(), MessageType::Transaction);
        assert!(MessageType::Fifo.accepted_by(TopicKind::Mixed));
        assert!(!MessageType::Fifo.accepted_by(TopicKind::Normal));
    }

    #[test]
    fn stored_properties_round_trip_to_delivery() {
        let m = OutgoingMessage {
            topic: "t".into(),
            message_id: "ID1".into(),
            tag: Some("TagA".into()),
            keys: vec!["k1".into(), "k2".into()],
            born_host: "h".into(),
            user_properties: vec![("a".into(), "1".into())],
            body: Bytes::from_static(b"x"),
            ..Default::default()
        };
        let stored = StoredMessage {
            topic: Arc::from("t"),
            queue_id: 1,
            queue_offset: 7,
            log_position: 0,
            store_timestamp_ms: 5,
            born_timestamp_ms: 4,
            flags: m.flags(),
            tag_hash: tag_hash(m.tag.as_deref()),
            properties: m.stored_properties(),
            body: m.body.clone(),
        };
        let d = DeliveredMessage::from_stored(stored, "h".into(), 1);
        assert_eq!(d.message_id, "ID1");
        assert_eq!(d.tag.as_deref(), Some("TagA"));
        assert_eq!(d.keys, vec!["k1", "k2"]);
        assert_eq!(d.user_properties, vec![("a".to_string(), "1".to_string())]);
        assert_eq!(d.message_type, MessageType::Normal);
    }
}
