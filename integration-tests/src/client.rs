//! Raw client helpers for protocol-level tests: gRPC requests with the client-id header,
//! resources, normal messages and receive requests; a minimal HTTP/1.1 call for the admin API;
//! a TLS client that trusts any certificate (like the Java SDK's default).

use std::time::Duration;

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

/// A NORMAL message with the system properties an SDK sends (born now).
pub fn message(topic: &str, id: &str, body: impl Into<bytes::Bytes>) -> proto::Message {
    proto::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(proto::SystemProperties {
            message_id: id.into(),
            message_type: proto::MessageType::Normal as i32,
            born_host: "integration-test".into(),
            born_timestamp: Some(prost_types::Timestamp { seconds: now_secs(), nanos: 0 }),
            ..Default::default()
        }),
        body: body.into(),
    }
}

/// [`message`] with a tag.
pub fn tagged_message(topic: &str, id: &str, tag: &str, body: impl Into<bytes::Bytes>) -> proto::Message {
    let mut m = message(topic, id, body);
    if let Some(sp) = m.system_properties.as_mut() {
        sp.tag = Some(tag.into());
    }
    m
}

/// A ReceiveMessageRequest for `group` on `topic` (any queue) as an SDK sends it: tag filter
/// `*`, up to 32 messages, no auto renew, long polling for `poll`.
pub fn receive_request(
    topic: &str,
    group: &str,
    invisible: Option<Duration>,
    poll: Duration,
) -> proto::ReceiveMessageRequest {
    let seconds = |d: Duration| prost_types::Duration { seconds: d.as_secs() as i64, nanos: 0 };
    proto::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(proto::MessageQueue { topic: resource(topic), ..Default::default() }),
        filter_expression: Some(proto::FilterExpression {
            r#type: proto::FilterType::Tag as i32,
            expression: "*".into(),
        }),
        batch_size: 32,
        invisible_duration: invisible.map(seconds),
        auto_renew: false,
        long_polling_timeout: Some(seconds(poll)),
        attempt_id: None,
    }
}

/// Settings of a consumer (`kind`) of `group` subscribed to `topic` with the tag filter `*`.
pub fn subscription_settings(kind: proto::ClientType, group: &str, topic: &str) -> proto::Settings {
    proto::Settings {
        client_type: Some(kind as i32),
        pub_sub: Some(proto::settings::PubSub::Subscription(proto::Subscription {
            group: resource(group),
            subscriptions: vec![proto::SubscriptionEntry {
                topic: resource(topic),
                expression: Some(proto::FilterExpression {
                    r#type: proto::FilterType::Tag as i32,
                    expression: "*".into(),
                }),
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
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

/// A gRPC client of the gateway at `addr` over TLS (ALPN h2), trusting any certificate.
pub async fn tls_client(
    addr: std::net::SocketAddr,
) -> Result<proto::messaging_service_client::MessagingServiceClient<tonic::transport::Channel>, tonic::transport::Error>
{
    Ok(proto::messaging_service_client::MessagingServiceClient::new(tls_channel(addr).await?))
}

/// A TLS channel to `addr` (ALPN h2), trusting any certificate.
pub async fn tls_channel(addr: std::net::SocketAddr) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    // The gateway's own client side of TLS between nodes without a CA: any certificate, h2.
    let tls = rmq_gateway::tls::peer_client_config("").expect("a TLS client configuration");
    let connector = tokio_rustls::TlsConnector::from(tls);
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a URI")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
                let stream = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
