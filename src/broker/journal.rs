//! The consumer journal: every ack is appended to the system topic `rmq_sys_pop_journal`
//! through the message log (so it is group-committed and as durable as messages under the
//! flush policy) before the client hears OK, and so is every receive's set of deliveries
//! (deadline, attempt, serial) before the messages are sent. Progress snapshots in the metadata
//! store record the journal offset they cover; at start the journal is replayed from there, so
//! a crash loses no acknowledged ack and no delivery in flight, and the SQL store sees one
//! batched write per flush interval. (Under SYNC_FLUSH a receive of a non-FIFO group waits
//! for its record's write, not its sync: a machine crash, not a process crash, may then lose
//! it and deliver the messages again early; `pop.rs`, `Journaled`.) An offset reset (admin reset, a pull consumer's
//! UpdateOffset) is journaled the same way, so a restart replays it in order with the acks and
//! deliveries around it.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::storage::{AppendMessage, Properties, StoredMessage};

/// Clients cannot name it: topics starting with `rmq_sys_` are refused.
pub(crate) const JOURNAL_TOPIC: &str = "rmq_sys_pop_journal";
const KIND_ACK: u8 = 1;
const KIND_DELIVERIES: u8 = 2;
const KIND_RESET: u8 = 3;
const GROUP: &str = "G";
const TOPIC: &str = "T";
/// The client whose deliveries are renewed while it lives (PushConsumer auto-renew).
const CLIENT: &str = "C";
/// The client the messages were delivered to (message trace lookup; absent in older records).
const RECEIVER: &str = "R";
/// Present when the record is a ChangeInvisibleDuration (a nack or an extension), not a receive.
const INVISIBLE_CHANGE: &str = "X";
/// queue id, offset, serial, attempt, deadline.
const DELIVERY_LEN: usize = 4 + 8 + 8 + 4 + 8;
/// queue id, offset, serial watermark.
const RESET_LEN: usize = 4 + 8 + 8;

/// What one journal record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JournalRecord {
    Ack(AckRecord),
    Deliveries(DeliveryRecord),
    Reset(ResetRecord),
}

/// The deliveries of one receive (one group, one topic); the record's born timestamp is when
/// they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryRecord {
    pub group: String,
    pub topic: String,
    pub auto_renew_client: Option<String>,
    /// The client the messages went to (for the message trace lookup only).
    pub receiver: Option<String>,
    /// A ChangeInvisibleDuration of a delivery, not a receive.
    pub invisible_change: bool,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub queue_id: u32,
    pub offset: u64,
    pub serial: u64,
    pub attempt: u32,
    pub visible_at_ms: i64,
}

fn journal_append(properties: Properties, body: Bytes, now_ms: i64) -> AppendMessage {
    AppendMessage {
        topic: Arc::from(JOURNAL_TOPIC),
        queue_id: 0,
        born_timestamp_ms: now_ms,
        flags: 0,
        tag_hash: 0,
        properties,
        body,
    }
}

impl JournalRecord {
    /// Decodes a journal record; None for records of unknown kinds or malformed ones.
    pub fn decode(m: &StoredMessage) -> Option<JournalRecord> {
        match m.body.first() {
            Some(&KIND_ACK) => AckRecord::decode(m).map(JournalRecord::Ack),
            Some(&KIND_DELIVERIES) => DeliveryRecord::decode(m).map(JournalRecord::Deliveries),
            Some(&KIND_RESET) => ResetRecord::decode(m).map(JournalRecord::Reset),
            _ => None,
        }
    }
}

impl DeliveryRecord {
    pub fn to_append(&self, now_ms: i64) -> AppendMessage {
        let mut properties = Properties::with_capacity(5);
        properties.push(GROUP, self.group.as_str());
        properties.push(TOPIC, self.topic.as_str());
        if let Some(c) = &self.auto_renew_client {
            properties.push(CLIENT, c.as_str());
        }
        if let Some(c) = &self.receiver {
            properties.push(RECEIVER, c.as_str());
        }
        if self.invisible_change {
            properties.push(INVISIBLE_CHANGE, "1");
        }
        let mut body = BytesMut::with_capacity(1 + 4 + self.deliveries.len() * DELIVERY_LEN);
        body.put_u8(KIND_DELIVERIES);
        body.put_u32_le(self.deliveries.len() as u32);
        for d in &self.deliveries {
            body.put_u32_le(d.queue_id);
            body.put_u64_le(d.offset);
            body.put_u64_le(d.serial);
            body.put_u32_le(d.attempt);
            body.put_i64_le(d.visible_at_ms);
        }
        journal_append(properties, body.freeze(), now_ms)
    }

    fn decode(m: &StoredMessage) -> Option<DeliveryRecord> {
        let mut body: Bytes = m.body.clone();
        if body.remaining() < 5 || body.get_u8() != KIND_DELIVERIES {
            return None;
        }
        let n = body.get_u32_le() as usize;
        if body.remaining() != n.checked_mul(DELIVERY_LEN)? {
            return None;
        }
        let deliveries = (0..n)
            .map(|_| Delivery {
                queue_id: body.get_u32_le(),
                offset: body.get_u64_le(),
                serial: body.get_u64_le(),
                attempt: body.get_u32_le(),
                visible_at_ms: body.get_i64_le(),
            })
            .collect();
        Some(DeliveryRecord {
            group: m.properties.get(GROUP)?.to_string(),
            topic: m.properties.get(TOPIC)?.to_string(),
            auto_renew_client: m.properties.get(CLIENT).map(str::to_string),
            receiver: m.properties.get(RECEIVER).map(str::to_string),
            invisible_change: m.properties.get(INVISIBLE_CHANGE).is_some(),
            deliveries,
        })
    }
}

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
        journal_append(properties, body.freeze(), now_ms)
    }

    fn decode(m: &StoredMessage) -> Option<AckRecord> {
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

/// A group's progress on some queues of a topic was moved to a new offset: everything below
/// it is done, nothing above it is; deliveries with a serial below the watermark were made
/// before the reset and no longer count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResetRecord {
    pub group: String,
    pub topic: String,
    pub queues: Vec<QueueReset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueReset {
    pub queue_id: u32,
    pub offset: u64,
    /// Serials below this were issued before the reset.
    pub serial_watermark: u64,
}

impl ResetRecord {
    pub fn to_append(&self, now_ms: i64) -> AppendMessage {
        let mut properties = Properties::with_capacity(2);
        properties.push(GROUP, self.group.as_str());
        properties.push(TOPIC, self.topic.as_str());
        let mut body = BytesMut::with_capacity(1 + 4 + self.queues.len() * RESET_LEN);
        body.put_u8(KIND_RESET);
        body.put_u32_le(self.queues.len() as u32);
        for q in &self.queues {
            body.put_u32_le(q.queue_id);
            body.put_u64_le(q.offset);
            body.put_u64_le(q.serial_watermark);
        }
        journal_append(properties, body.freeze(), now_ms)
    }

    fn decode(m: &StoredMessage) -> Option<ResetRecord> {
        let mut body: Bytes = m.body.clone();
        if body.remaining() < 5 || body.get_u8() != KIND_RESET {
            return None;
        }
        let n = body.get_u32_le() as usize;
        if body.remaining() != n.checked_mul(RESET_LEN)? {
            return None;
        }
        let queues = (0..n)
            .map(|_| QueueReset {
                queue_id: body.get_u32_le(),
                offset: body.get_u64_le(),
                serial_watermark: body.get_u64_le(),
            })
            .collect();
        Some(ResetRecord {
            group: m.properties.get(GROUP)?.to_string(),
            topic: m.properties.get(TOPIC)?.to_string(),
            queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(a: AppendMessage) -> StoredMessage {
        StoredMessage {
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
        }
    }

    #[test]
    fn round_trip() {
        let r = AckRecord { group: "g".into(), topic: "t".into(), queue_id: 3, offset: 99 };
        assert_eq!(JournalRecord::decode(&stored(r.to_append(5))), Some(JournalRecord::Ack(r)));
        let d = DeliveryRecord {
            group: "g".into(),
            topic: "t".into(),
            auto_renew_client: Some("c@1".into()),
            receiver: Some("c@1".into()),
            invisible_change: true,
            deliveries: vec![
                Delivery { queue_id: 1, offset: 7, serial: 11, attempt: 2, visible_at_ms: 99 },
                Delivery { queue_id: 0, offset: 8, serial: 12, attempt: 1, visible_at_ms: 100 },
            ],
        };
        assert_eq!(JournalRecord::decode(&stored(d.to_append(5))), Some(JournalRecord::Deliveries(d.clone())));
        let mut truncated = stored(d.to_append(5));
        truncated.body.truncate(20);
        assert_eq!(JournalRecord::decode(&truncated), None);
        let r = ResetRecord {
            group: "g".into(),
            topic: "t".into(),
            queues: vec![
                QueueReset { queue_id: 0, offset: 12, serial_watermark: 99 },
                QueueReset { queue_id: 3, offset: 0, serial_watermark: 100 },
            ],
        };
        assert_eq!(JournalRecord::decode(&stored(r.to_append(5))), Some(JournalRecord::Reset(r.clone())));
        let mut truncated = stored(r.to_append(5));
        truncated.body.truncate(9);
        assert_eq!(JournalRecord::decode(&truncated), None);
    }
}
