//! Domain errors of the broker. Every variant says what was wrong and, for limits, what the
//! limit is; `grpc/status.rs` maps each one to its RocketMQ code with an exhaustive match.
//! Failures of the message log and the metadata store become the broker's own kinds here
//! (what a client or operator needs to know), so callers never inspect storage errors.

use crate::metadata::MetadataError;
use crate::storage::StorageError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    IllegalTopic(String),
    #[error("{0}")]
    IllegalConsumerGroup(String),
    #[error("{0}")]
    IllegalMessageTag(String),
    #[error("{0}")]
    IllegalMessageKey(String),
    #[error("{0}")]
    IllegalMessageGroup(String),
    #[error("{0}")]
    IllegalPropertyKey(String),
    #[error("{0}")]
    IllegalMessageId(String),
    #[error("{0}")]
    IllegalFilterExpression(String),
    #[error("{0}")]
    IllegalInvisibleTime(String),
    #[error("{0}")]
    IllegalDeliveryTime(String),
    #[error("{0}")]
    IllegalPollingTime(String),
    #[error("{0}")]
    InvalidReceiptHandle(String),
    #[error("{0}")]
    InvalidTransactionId(String),
    #[error("{0}")]
    MessageTypeConflict(String),
    #[error("{0}")]
    MessageCorrupted(String),
    #[error("message body is empty")]
    BodyEmpty,
    #[error("message body is {size} bytes, which exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    PropertiesTooLarge(String),
    #[error(
        "topic `{0}` does not exist (create it with topics.create or PUT /api/v1/topics/{0}; with \
         autoCreateTopicEnable on, a producer's first send creates it)"
    )]
    TopicNotFound(String),
    #[error("consumer group `{0}` does not exist")]
    GroupNotFound(String),
    /// An unknown group was not auto-created: `consumer.maxAutoCreatedGroups` reached.
    #[error("{0}")]
    GroupLimitReached(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnrecognizedClientType(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// An offset outside a queue (ILLEGAL_OFFSET).
    #[error("{0}")]
    IllegalOffset(String),
    /// A group has no offset on a queue (OFFSET_NOT_FOUND).
    #[error("{0}")]
    OffsetNotFound(String),
    /// No message with that id (admin lookups).
    #[error("{0}")]
    MessageNotFound(String),
    /// A command for a client that has no Telemetry stream here.
    #[error("{0}")]
    ClientNotConnected(String),
    /// A client did not answer a relayed command in time.
    #[error("{0}")]
    ClientTimeout(String),
    /// The message log could not do a read or write (an I/O error, or it is closing): a
    /// message it was writing is not stored.
    #[error("{0}")]
    StorageUnavailable(String),
    /// The disk holding the message log is full: nothing more can be stored until space is
    /// freed.
    #[error("{0}")]
    StorageFull(String),
    /// A record does not fit in a commit-log segment.
    #[error("message store error: record of {size} bytes does not fit in a segment of {segment_size} bytes")]
    TooLargeToStore { size: u64, segment_size: u64 },
    /// Stored data (a log record, an index checkpoint, metadata) is damaged.
    #[error("{0}")]
    DataCorrupted(String),
    /// The metadata store could not be reached or failed a query.
    #[error("{0}")]
    MetadataUnavailable(String),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The data lies in the object store and is being fetched: the broker awaits
    /// `MessageLog::fetch_remote` (outside its locks) and tries again; a client seeing it
    /// retries.
    #[error("{topic}/{queue_id} offset {offset} is being fetched from the object store; retry")]
    RemoteNotCached { topic: String, queue_id: u32, offset: u64 },
    /// Cluster: the queue is not served by this node (it belongs to another node, or is
    /// changing owner): the client retries, on another endpoint or after a fresh route.
    #[error("{0}")]
    NotOwner(String),
    /// Cluster: the scheduled or half message was adopted by another node while this one was
    /// gone (the gRPC layer passes the request on to that node).
    #[error("{0}")]
    AdoptedElsewhere(String),
}

impl From<StorageError> for BrokerError {
    fn from(e: StorageError) -> Self {
        let text = format!("message store error: {e}");
        match e {
            StorageError::Io { .. } | StorageError::ShuttingDown | StorageError::Remote(_) => {
                BrokerError::StorageUnavailable(text)
            }
            StorageError::RemoteNotCached { topic, queue_id, offset } => {
                BrokerError::RemoteNotCached { topic, queue_id, offset }
            }
            StorageError::DiskFull(_) => BrokerError::StorageFull(text),
            StorageError::Corrupted { .. } => BrokerError::DataCorrupted(text),
            StorageError::RecordTooLarge { size, segment_size } => BrokerError::TooLargeToStore { size, segment_size },
            StorageError::NotOwner { .. } | StorageError::Fenced(_) => BrokerError::NotOwner(text),
        }
    }
}

impl From<MetadataError> for BrokerError {
    fn from(e: MetadataError) -> Self {
        let text = format!("metadata store error: {e}");
        match e {
            MetadataError::Unavailable(_) | MetadataError::Query(_) => BrokerError::MetadataUnavailable(text),
            MetadataError::Invalid(_) => BrokerError::DataCorrupted(text),
            MetadataError::Fenced(_) => BrokerError::NotOwner(text),
        }
    }
}

pub type BrokerResult<T> = Result<T, BrokerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_become_broker_kinds_with_their_text() {
        let e = BrokerError::from(StorageError::DiskFull("segment 3".into()));
        assert!(matches!(e, BrokerError::StorageFull(_)));
        assert_eq!(e.to_string(), "message store error: disk is full: segment 3");
        let e = BrokerError::from(StorageError::RecordTooLarge { size: 9, segment_size: 8 });
        assert!(matches!(e, BrokerError::TooLargeToStore { size: 9, segment_size: 8 }));
        assert_eq!(e.to_string(), "message store error: record of 9 bytes does not fit in a segment of 8 bytes");
        assert!(matches!(BrokerError::from(StorageError::ShuttingDown), BrokerError::StorageUnavailable(_)));
        let e = BrokerError::from(StorageError::Corrupted { position: 1, reason: "crc".into() });
        assert!(matches!(e, BrokerError::DataCorrupted(_)));
        let e = BrokerError::from(MetadataError::Query("locked".into()));
        assert!(matches!(e, BrokerError::MetadataUnavailable(_)));
        assert_eq!(e.to_string(), "metadata store error: metadata store query failed: locked");
        assert!(matches!(BrokerError::from(MetadataError::Invalid("x".into())), BrokerError::DataCorrupted(_)));
    }
}
