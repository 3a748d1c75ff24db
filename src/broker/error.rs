//! Domain errors of the broker. Every variant says what was wrong and, for limits, what the
//! limit is; `grpc/status.rs` maps each one to its RocketMQ code with an exhaustive match.

use crate::metadata::MetadataError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
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
    /// No message with that id (admin lookups).
    #[error("{0}")]
    MessageNotFound(String),
    /// A command for a client that has no Telemetry stream here.
    #[error("{0}")]
    ClientNotConnected(String),
    /// A client did not answer a relayed command in time.
    #[error("{0}")]
    ClientTimeout(String),
    #[error("message store error: {0}")]
    Storage(#[from] StorageError),
    #[error("metadata store error: {0}")]
    Metadata(#[from] MetadataError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

pub type BrokerResult<T> = Result<T, BrokerError>;
