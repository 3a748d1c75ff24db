//! Maps broker errors to RocketMQ status codes (exhaustively: adding an error variant does not
//! compile until it has a code) and builds `Status` values.

use crate::broker::BrokerError;
use crate::proto::{Code, Status};

pub fn ok() -> Status {
    status(Code::Ok, "OK")
}

pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status { code: code as i32, message: message.into() }
}

/// The RocketMQ code of a broker error.
pub fn code_of(e: &BrokerError) -> Code {
    match e {
        BrokerError::IllegalTopic(_) => Code::IllegalTopic,
        BrokerError::IllegalConsumerGroup(_) => Code::IllegalConsumerGroup,
        BrokerError::IllegalMessageTag(_) => Code::IllegalMessageTag,
        BrokerError::IllegalMessageKey(_) => Code::IllegalMessageKey,
        BrokerError::IllegalMessageGroup(_) => Code::IllegalMessageGroup,
        BrokerError::IllegalPropertyKey(_) => Code::IllegalMessagePropertyKey,
        BrokerError::IllegalMessageId(_) => Code::IllegalMessageId,
        BrokerError::IllegalFilterExpression(_) => Code::IllegalFilterExpression,
        BrokerError::IllegalInvisibleTime(_) => Code::IllegalInvisibleTime,
        BrokerError::IllegalDeliveryTime(_) => Code::IllegalDeliveryTime,
        BrokerError::IllegalPollingTime(_) => Code::IllegalPollingTime,
        BrokerError::InvalidReceiptHandle(_) => Code::InvalidReceiptHandle,
        BrokerError::InvalidTransactionId(_) => Code::InvalidTransactionId,
        BrokerError::MessageTypeConflict(_) => Code::MessagePropertyConflictWithType,
        BrokerError::MessageCorrupted(_) => Code::MessageCorrupted,
        BrokerError::BodyEmpty => Code::MessageBodyEmpty,
        BrokerError::BodyTooLarge { .. } => Code::MessageBodyTooLarge,
        BrokerError::PropertiesTooLarge(_) => Code::MessagePropertiesTooLarge,
        BrokerError::TopicNotFound(_) => Code::TopicNotFound,
        BrokerError::GroupNotFound(_) => Code::ConsumerGroupNotFound,
        // The group does not exist and will not be created (as with autoCreateSubscriptionGroup
        // off): not a throttle, which clients would retry at once.
        BrokerError::GroupLimitReached(_) => Code::ConsumerGroupNotFound,
        BrokerError::Forbidden(_) => Code::Forbidden,
        BrokerError::UnrecognizedClientType(_) => Code::UnrecognizedClientType,
        BrokerError::BadRequest(_) => Code::BadRequest,
        BrokerError::Unsupported(_) => Code::Unsupported,
        BrokerError::TooManyRequests(_) => Code::TooManyRequests,
        BrokerError::MessageNotFound(_) => Code::MessageNotFound,
        BrokerError::IllegalOffset(_) => Code::IllegalOffset,
        BrokerError::OffsetNotFound(_) => Code::OffsetNotFound,
        BrokerError::ClientNotConnected(_) => Code::NotFound,
        BrokerError::ClientTimeout(_) => Code::ProxyTimeout,
        // The write or fsync did not happen: the message is not stored. Clients retry
        // INTERNAL_SERVER_ERROR sends on another endpoint.
        BrokerError::StorageUnavailable(_) => Code::InternalServerError,
        BrokerError::StorageFull(_) => Code::InternalServerError,
        // The record cannot fit a segment: the request itself is too big.
        BrokerError::TooLargeToStore { .. } => Code::MessageBodyTooLarge,
        BrokerError::DataCorrupted(_) => Code::InternalServerError,
        BrokerError::MetadataUnavailable(_) => Code::InternalServerError,
        BrokerError::ShuttingDown => Code::InternalServerError,
        // Cold data on its way from the object store: worth retrying soon.
        BrokerError::RemoteNotCached { .. } => Code::InternalServerError,
        // Cluster: the queue is served elsewhere or changing owner; clients retry elsewhere.
        BrokerError::NotOwner(_) => Code::HaNotAvailable,
        // Only seen when no adopter is known to pass it to: the client retries.
        BrokerError::AdoptedElsewhere(_) => Code::HaNotAvailable,
    }
}

pub fn from_error(e: &BrokerError) -> Status {
    status(code_of(e), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases = [
            (BrokerError::BodyTooLarge { size: 5, limit: 4 }, Code::MessageBodyTooLarge),
            (BrokerError::BodyEmpty, Code::MessageBodyEmpty),
            (BrokerError::TopicNotFound("t".into()), Code::TopicNotFound),
            (BrokerError::InvalidReceiptHandle("x".into()), Code::InvalidReceiptHandle),
            (BrokerError::IllegalPropertyKey("x".into()), Code::IllegalMessagePropertyKey),
            (BrokerError::PropertiesTooLarge("x".into()), Code::MessagePropertiesTooLarge),
            (BrokerError::IllegalInvisibleTime("x".into()), Code::IllegalInvisibleTime),
            (BrokerError::StorageFull("x".into()), Code::InternalServerError),
            (BrokerError::TooLargeToStore { size: 9, segment_size: 8 }, Code::MessageBodyTooLarge),
            (BrokerError::IllegalOffset("x".into()), Code::IllegalOffset),
            (BrokerError::OffsetNotFound("x".into()), Code::OffsetNotFound),
            (BrokerError::TooManyRequests("x".into()), Code::TooManyRequests),
            (BrokerError::GroupLimitReached("x".into()), Code::ConsumerGroupNotFound),
        ];
        for (e, code) in cases {
            assert_eq!(from_error(&e).code, code as i32, "{e}");
        }
    }
}
