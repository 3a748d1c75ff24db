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

/// The `body_digest` a delivered message carries. Every SDK that checks it recomputes the
/// digest of the type named and compares its own rendering as a string, flagging a mismatch as
/// corrupted (a push consumer then nacks the message, or dead-letters it if FIFO). The Apache
/// proxy sends an MD5 to every client; with its hex, MD5 of a 1 KiB body took 2.5 µs here, a
/// CRC32 0.09 µs, so the clients whose CRC32 rendering is known get a CRC32 in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDigest {
    /// MD5 as upper-case hex: what every SDK accepts (the Node.js SDK only this one).
    Md5,
    /// CRC32 (IEEE) as upper-case hex without leading zeros: Java `Utilities.crc32CheckSum`
    /// (`Long.toHexString(..).toUpperCase()`, 5.0.x to 5.2.x) and Go `message.go` 5.1.x
    /// (`strings.ToUpper(strconv.FormatInt(.., 16))`); the Rust SDK does not check.
    Crc32Hex,
    /// CRC32 (IEEE) as eight upper-case hex digits: Python `Misc.crc32_checksum`
    /// (`format(crc, "08X")`).
    Crc32Hex8,
}

impl BodyDigest {
    /// The digest for a client by its `x-mq-language` header; anything else (the Node.js SDK
    /// sends `HTTP` and compares a CRC32 in decimal, C++ and .NET unverified) gets MD5.
    pub fn for_language(language: &str) -> BodyDigest {
        match language {
            // The Go SDK says `GO` (5.1.4 `metadata.LanguageValue`); GOLANG is the enum's name.
            "JAVA" | "GO" | "GOLANG" | "RUST" => BodyDigest::Crc32Hex,
            "PYTHON" => BodyDigest::Crc32Hex8,
            _ => BodyDigest::Md5,
        }
    }

    pub fn of(self, body: &[u8]) -> proto::Digest {
        let (r#type, checksum) = match self {
            BodyDigest::Md5 => (proto::DigestType::Md5, hex::encode_upper(Md5::digest(body))),
            BodyDigest::Crc32Hex => (proto::DigestType::Crc32, format!("{:X}", crc32fast::hash(body))),
            BodyDigest::Crc32Hex8 => (proto::DigestType::Crc32, format!("{:08X}", crc32fast::hash(body))),
        };
        proto::Digest { r#type: r#type as i32, checksum }
    }
}

/// A delivered message with full system properties.
pub fn delivered(m: DeliveredMessage, store_host: &str, digest: BodyDigest) -> proto::Message {
    let user_properties: HashMap<String, String> = m.user_properties.into_iter().collect();
    let sp = proto::SystemProperties {
        tag: m.tag,
        keys: m.keys,
        message_id: m.message_id.clone(),
        body_digest: Some(digest.of(&m.body)),
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
    fn digests_as_each_sdk_renders_them() {
        let md5 = BodyDigest::Md5.of(b"hello");
        assert_eq!(
            (md5.r#type, md5.checksum.as_str()),
            (proto::DigestType::Md5 as i32, "5D41402ABC4B2A76B9719D911017C592")
        );
        // CRC32("hello") = 0x3610A686; CRC32("a") = 0xE8B7BE43; CRC32("") = 0 (Java and Go: "0").
        let crc = BodyDigest::Crc32Hex.of(b"hello");
        assert_eq!((crc.r#type, crc.checksum.as_str()), (proto::DigestType::Crc32 as i32, "3610A686"));
        assert_eq!(BodyDigest::Crc32Hex.of(b"").checksum, "0");
        assert_eq!(BodyDigest::Crc32Hex8.of(b"").checksum, "00000000");
        assert_eq!(BodyDigest::Crc32Hex8.of(b"a").checksum, "E8B7BE43");
        // A CRC below 0x10000000: Java and Go drop the leading zero, Python keeps it.
        let body = (0u32..).map(|i| i.to_le_bytes()).find(|b| crc32fast::hash(b) < 0x1000_0000).unwrap();
        assert_eq!(BodyDigest::Crc32Hex.of(&body).checksum.len(), 7);
        assert_eq!(BodyDigest::Crc32Hex8.of(&body).checksum.len(), 8);
        assert_eq!(BodyDigest::for_language("JAVA"), BodyDigest::Crc32Hex);
        assert_eq!(BodyDigest::for_language("GO"), BodyDigest::Crc32Hex);
        assert_eq!(BodyDigest::for_language("PYTHON"), BodyDigest::Crc32Hex8);
        assert_eq!(BodyDigest::for_language("HTTP"), BodyDigest::Md5);
        assert_eq!(BodyDigest::for_language(""), BodyDigest::Md5);
    }
}
