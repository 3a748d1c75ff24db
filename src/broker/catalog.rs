//! Topics and consumer groups as the broker shows them to its callers ([`TopicKind`],
//! [`TopicInfo`], [`GroupInfo`]), and their mapping to and from the metadata store's records,
//! so that `grpc/` and `admin/` never see metadata types.

use crate::metadata::{Durability, GroupRecord, TopicRecord, TopicType};

/// The message type a topic accepts (RocketMQ topic attribute `message.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Normal,
    Fifo,
    Delay,
    Transaction,
    /// Priority messages (RIP-80): higher priority delivered first within a queue.
    Priority,
    /// Accepts every type.
    Mixed,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Normal => "NORMAL",
            TopicKind::Fifo => "FIFO",
            TopicKind::Delay => "DELAY",
            TopicKind::Transaction => "TRANSACTION",
            TopicKind::Priority => "PRIORITY",
            TopicKind::Mixed => "MIXED",
        }
    }

    /// Parses RocketMQ's names (`NORMAL`, `FIFO`, `DELAY`, `TRANSACTION`, `PRIORITY`,
    /// `MIXED`), case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "NORMAL" => Some(TopicKind::Normal),
            "FIFO" => Some(TopicKind::Fifo),
            "DELAY" => Some(TopicKind::Delay),
            "TRANSACTION" => Some(TopicKind::Transaction),
            "PRIORITY" => Some(TopicKind::Priority),
            "MIXED" => Some(TopicKind::Mixed),
            _ => None,
        }
    }
}

/// A topic: its name, queue count and the message type it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub queue_nums: u32,
    pub topic_type: TopicKind,
    /// When a send to it is acknowledged.
    pub durability: Durability,
}

/// A consumer group's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    /// Orderly consumption (RocketMQ `consumeMessageOrderly`).
    pub fifo: bool,
    /// Retries before the DLQ (RocketMQ `retryMaxTimes`).
    pub retry_max_times: i32,
    /// The group's own retry delays (one per attempt); `None`: the gateway's
    /// `consumer.retryBackoff`.
    pub retry_backoff: Option<String>,
    /// BROADCASTING (every consumer client gets every message) rather than CLUSTERING.
    pub broadcast: bool,
    /// Created on first use by a client (counts against `consumer.maxAutoCreatedGroups`).
    pub auto_created: bool,
}

impl From<TopicType> for TopicKind {
    fn from(t: TopicType) -> Self {
        match t {
            TopicType::Normal => TopicKind::Normal,
            TopicType::Fifo => TopicKind::Fifo,
            TopicType::Delay => TopicKind::Delay,
            TopicType::Transaction => TopicKind::Transaction,
            TopicType::Priority => TopicKind::Priority,
            TopicType::Mixed => TopicKind::Mixed,
        }
    }
}

impl From<TopicKind> for TopicType {
    fn from(k: TopicKind) -> Self {
        match k {
            TopicKind::Normal => TopicType::Normal,
            TopicKind::Fifo => TopicType::Fifo,
            TopicKind::Delay => TopicType::Delay,
            TopicKind::Transaction => TopicType::Transaction,
            TopicKind::Priority => TopicType::Priority,
            TopicKind::Mixed => TopicType::Mixed,
        }
    }
}

impl From<TopicRecord> for TopicInfo {
    fn from(r: TopicRecord) -> Self {
        TopicInfo { name: r.name, queue_nums: r.queue_nums, topic_type: r.topic_type.into(), durability: r.durability }
    }
}

impl From<GroupRecord> for GroupInfo {
    fn from(g: GroupRecord) -> Self {
        GroupInfo {
            name: g.name,
            fifo: g.fifo,
            retry_max_times: g.retry_max_times,
            retry_backoff: g.retry_backoff,
            broadcast: g.broadcast,
            auto_created: g.auto_created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_round_trip_through_records() {
        let kinds = [
            TopicKind::Normal,
            TopicKind::Fifo,
            TopicKind::Delay,
            TopicKind::Transaction,
            TopicKind::Priority,
            TopicKind::Mixed,
        ];
        for kind in kinds {
            assert_eq!(TopicKind::parse(kind.as_str()), Some(kind));
            assert_eq!(TopicKind::parse(&kind.as_str().to_ascii_lowercase()), Some(kind));
            assert_eq!(TopicKind::from(TopicType::from(kind)), kind);
            assert_eq!(TopicType::from(kind).as_str(), kind.as_str());
        }
        assert_eq!(TopicKind::parse("BATCH"), None);
    }
}
