//! The consumer journal: every ack is appended to the system topic `rmq_sys_pop_journal`
//! through the message log (so it is group-committed and as durable as messages under the
//! flush policy) before the client hears OK. Progress snapshots in the metadata store record
//! the journal offset they cover; at start the journal is replayed from there, so a crash
//! loses no acknowledged ack, and the SQL store sees one batched write per flush interval.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::storage::{AppendMessage, Properties, StoredMessage};

/// Clients cannot name it: topics starting with `rmq_sys_` are refused.
pub(crate) const JOURNAL_TOPIC: &str = "rmq_sys_pop_journal";
const KIND_ACK: u8 = 1;
const GROUP: &str = "G";
const TOPIC: &str = "T";

/// One acknowledged delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AckRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
}

impl AckRecord {
    pub fn to_append(&self, now_ms: i64) -> AppendMessage {
        let mut properties = Properties::with_capacity(2);
        properties.push(GROUP, self.group.as_str());
        properties.push(TOPIC, self.topic.as_str());
        let mut body = BytesMut::with_capacity(13);
        body.put_u8(KIND_ACK);
        body.put_u32_le(self.queue_id);
        body.put_u64_le(self.offset);
        AppendMessage {
            topic: Arc::from(JOURNAL_TOPIC),
            queue_id: 0,
            born_timestamp_ms: now_ms,
            flags: 0,
            tag_hash: 0,
            properties,
            body: body.freeze(),
        }
    }

    /// Decodes a journal record; None for records of unknown kinds or malformed ones.
    pub fn decode(m: &StoredMessage) -> Option<AckRecord> {
        let mut body: Bytes = m.body.clone();
        if body.remaining() != 13 || body.get_u8() != KIND_ACK {
            return None;
        }
        Some(AckRecord {
            group: m.properties.get(GROUP)?.to_string(),
            topic: m.properties.get(TOPIC)?.to_string(),
            queue_id: body.get_u32_le(),
            offset: body.get_u64_le(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = AckRecord { group: "g".into(), topic: "t".into(), queue_id: 3, offset: 99 };
        let a = r.to_append(5);
        let stored = StoredMessage {
            topic: a.topic,
            queue_id: 0,
            queue_offset: 0,
            log_position: 0,
            store_timestamp_ms: 5,
            born_timestamp_ms: 5,
            flags: 0,
            tag_hash: 0,
            properties: a.properties,
            body: a.body,
        };
        assert_eq!(AckRecord::decode(&stored), Some(r));
    }
}
