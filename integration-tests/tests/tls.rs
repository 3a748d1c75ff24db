//! TLS and plaintext h2c on the same gRPC port: a client that trusts any certificate (like the
//! Java SDK's default) and a plaintext client both reach the gateway.

use std::time::Duration;

use integration_tests::client::tls_client;
use integration_tests::in_process::Gateway;
use rmq_gateway::config::TlsMode;
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};

async fn query_route(client: &mut MessagingServiceClient<tonic::transport::Channel>) -> i32 {
    let mut r = tonic::Request::new(proto::QueryRouteRequest {
        topic: Some(proto::Resource { resource_namespace: String::new(), name: "TlsTopic".into() }),
        endpoints: None,
    });
    r.metadata_mut().insert("x-mq-client-id", "tls-test".parse().unwrap());
    client.query_route(r).await.unwrap().into_inner().status.unwrap().code
}

async fn start(mode: TlsMode) -> Gateway {
    Gateway::start(|c| {
        c.server.tls.mode = mode;
        c.storage.mapped_file_size_commit_log = 16 * 1024 * 1024;
    })
    .await
}

#[tokio::test]
async fn tls_and_plaintext_share_the_port() {
    let gateway = start(TlsMode::Permissive).await;
    let addr = gateway.addrs.grpc;
    let mut tls = tls_client(addr).await.expect("TLS connection");
    assert_eq!(query_route(&mut tls).await, Code::Ok as i32);
    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    assert_eq!(query_route(&mut MessagingServiceClient::new(plain)).await, Code::Ok as i32);
    gateway.stop().await;
}

#[tokio::test]
async fn enforcing_mode_refuses_plaintext() {
    let gateway = start(TlsMode::Enforcing).await;
    let addr = gateway.addrs.grpc;
    let mut tls = tls_client(addr).await.expect("TLS connection");
    assert_eq!(query_route(&mut tls).await, Code::Ok as i32);
    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut c = MessagingServiceClient::new(channel);
        let mut r = tonic::Request::new(proto::QueryRouteRequest::default());
        r.metadata_mut().insert("x-mq-client-id", "tls-test".parse().unwrap());
        assert!(c.query_route(r).await.is_err(), "plaintext must not be served in enforcing mode");
    }
    gateway.stop().await;
}
