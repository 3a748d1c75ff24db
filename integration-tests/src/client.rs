//! Raw gRPC client helpers for protocol-level tests: requests with the client-id header,
//! resources and normal messages.

use rmq_gateway::proto;

/// A request carrying the `x-mq-client-id` header every RocketMQ RPC needs.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-mq-client-id", tonic::metadata::MetadataValue::from_static("integration-test@1"));
    r
}

/// A resource without namespace.
pub fn resource(name: &str) -> Option<proto::Resource> {
    Some(proto::Resource { resource_namespace: String::new(), name: name.into() })
}

/// A NORMAL message with the system properties an SDK sends.
pub fn message(topic: &str, id: &str, body: impl Into<bytes::Bytes>) -> proto::Message {
    proto::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(proto::SystemProperties {
            message_id: id.into(),
            message_type: proto::MessageType::Normal as i32,
            born_host: "integration-test".into(),
            born_timestamp: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ..Default::default()
        }),
        body: body.into(),
    }
}
