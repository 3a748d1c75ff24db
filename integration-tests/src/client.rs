//! Raw client helpers for protocol-level tests: gRPC requests with the client-id header,
//! resources and normal messages; a minimal HTTP/1.1 call for the admin API.

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

/// One HTTP/1.1 request to the admin API (`Connection: close`); returns status and body.
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP port");
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write request");
    s.write_all(body.as_bytes()).await.expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
