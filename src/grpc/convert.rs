//! Conversions between protocol messages and broker domain types. Proto types stop here.

use std::collections::HashMap;
use std::time::Duration;

use md5::{Digest as _, Md5};

use super::namespace;
use crate::broker::namespace::NameKind;
use crate::broker::{BrokerError, BrokerResult, DeliveredMessage, MessageType, OutgoingMessage};
use crate::proto;

/// Milliseconds of a protobuf timestamp (None for negative or absurd values).
pub fn timestamp_ms(t: &prost_types::Timestamp) -> Option<i64> {
    let ms = t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos) / 1_000_000)?;
    (ms >= 0).then_some(ms)
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn now_timestamp() -> prost_types::Timestamp {
    timestamp(crate::broker::now_ms())
}

/// A protobuf duration as a std duration; negative durations are refused.
pub fn duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::from_secs(d.seconds as u64) + Duration::from_nanos(d.nanos as u64))
}

pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Converts one message of a SendMessage request.
pub fn outgoing(m: proto::Message, header_namespace: &str) -> BrokerResult<OutgoingMessage> {
    let topic = namespace::internal_name(m.topic.as_ref(), header_namespace, NameKind::Topic)?;
    let Some(sp) = m.system_properties else {
        return Err(BrokerError::MessageCorrupted("message has no system_properties".into()));
    };
    let delivery_timestamp_ms = match &sp.delivery_timestamp {
        Some(t) => Some(timestamp_ms(t).ok_or_else(|| {
            BrokerError::IllegalDeliveryTime(format!("delivery timestamp {}s is not a valid time", t.seconds))
        })?),
        None => None,
    };
    let born_timestamp_ms = sp.born_timestamp.as_ref().and_then(timestamp_ms).unwrap_or_else(crate::broker::now_ms);
    let mut user_properties: Vec<(String, String)> = m.user_properties.into_iter().collect();
    user_properties.sort();
    Ok(OutgoingMessage {
        topic,
        message_id: sp.message_id,
        tag: sp.tag.filter(|t| !t.is_empty()),
        keys: sp.keys.into_iter().filter(|k| !k.is_empty()).collect(),
        message_group: sp.message_group.filter(|g| !g.is_empty()),
        delivery_timestamp_ms,
        transactional: sp.message_type == proto::MessageType::Transaction as i32,
        born_timestamp_ms,
        born_host: sp.born_host,
        trace_context: sp.trace_context.filter(|t| !t.is_empty()),
        user_properties,
        body: m.body,
        gzip: sp.body_encoding == proto::Encoding::Gzip as i32,
        orphaned_transaction_recovery: sp.orphaned_transaction_recovery_duration.as_ref().and_then(duration),
        priority: sp.priority,
    })
}

pub fn message_type(t: MessageType) -> proto::MessageType {
    match t {
        MessageType::Normal => proto::MessageType::Normal,
        MessageType::Fifo => proto::MessageType::Fifo,
        MessageType::Delay => proto::MessageType::Delay,
        MessageType::Transaction => proto::MessageType::Transaction,
        MessageType::Priority => proto::MessageType::Priority,
    }
}

/// The resource a client sees for a broker-side name ([`namespace::resource`]).
pub fn resource(name: &str) -> proto::Resource {
    namespace::resource(name)
}

/// Upper-case hex MD5 of the body, as the Apache proxy sends it (Node needs it; Python checks it).
pub fn body_digest(body: &[u8]) -> proto::Digest {
    proto::Digest { r#type: proto::DigestType::Md5 as i32, checksum: hex::encode_upper(Md5::digest(body)) }
}

/// A delivered message with full system properties.
pub fn delivered(m: DeliveredMessage, store_host: &str) -> proto::Message {
    let user_properties: HashMap<String, String> = m.user_properties.into_iter().collect();
    let sp = proto::SystemProperties {
        tag: m.tag,
        keys: m.keys,
        message_id: m.message_id.clone(),
        body_digest: Some(body_digest(&m.body)),
        body_encoding: if m.gzip { proto::Encoding::Gzip } else { proto::Encoding::Identity } as i32,
        message_type: message_type(m.message_type) as i32,
        born_timestamp: Some(timestamp(m.born_timestamp_ms)),
        born_host: m.born_host,
        store_timestamp: Some(timestamp(m.store_timestamp_ms)),
        store_host: store_host.to_string(),
        delivery_timestamp: m.delivery_timestamp_ms.map(timestamp),
        receipt_handle: Some(m.receipt_handle),
        queue_id: m.queue_id as i32,
        queue_offset: Some(m.queue_offset as i64),
        invisible_duration: None,
        delivery_attempt: Some(m.delivery_attempt.min(i32::MAX as u32) as i32),
        message_group: m.message_group,
        trace_context: m.trace_context,
        orphaned_transaction_recovery_duration: None,
        dead_letter_queue: m
            .dead_letter
            .map(|(topic, message_id)| proto::DeadLetterQueue { topic: namespace::client_name(&topic), message_id }),
        lite_topic: None,
        priority: m.priority,
    };
    proto::Message { topic: Some(resource(&m.topic)), user_properties, system_properties: Some(sp), body: m.body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_ms(&timestamp(1_700_000_000_123)), Some(1_700_000_000_123));
        assert_eq!(timestamp_ms(&prost_types::Timestamp { seconds: -5, nanos: 0 }), None);
        assert_eq!(timestamp_ms(&prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }), None);
    }

    #[test]
    fn namespaced_messages() {
        let mut m = proto::Message {
            topic: Some(proto::Resource { resource_namespace: String::new(), name: "t".into() }),
            system_properties: Some(proto::SystemProperties { message_id: "id".into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(outgoing(m.clone(), "ns").unwrap().topic, "ns%t");
        assert_eq!(outgoing(m.clone(), "").unwrap().topic, "t");
        m.topic = Some(proto::Resource { resource_namespace: "a".into(), name: "t".into() });
        assert!(matches!(outgoing(m, "b"), Err(BrokerError::BadRequest(_))));
    }

    #[test]
    fn digest_is_upper_hex_md5() {
        assert_eq!(body_digest(b"hello").checksum, "5D41402ABC4B2A76B9719D911017C592");
    }
}
