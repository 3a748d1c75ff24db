//! TLS and plaintext h2c on the same gRPC port: a client that trusts any certificate (like the
//! Java SDK's default) and a plaintext client both reach the gateway.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rmq_gateway::config::{Config, TlsMode};
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use rmq_gateway::server;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Uri};

#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

async fn query_route(client: &mut MessagingServiceClient<tonic::transport::Channel>) -> i32 {
    let mut r = tonic::Request::new(proto::QueryRouteRequest {
        topic: Some(proto::Resource { resource_namespace: String::new(), name: "TlsTopic".into() }),
        endpoints: None,
    });
    r.metadata_mut().insert("x-mq-client-id", "tls-test".parse().unwrap());
    client.query_route(r).await.unwrap().into_inner().status.unwrap().code
}

async fn start(mode: TlsMode) -> (std::net::SocketAddr, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.bind_address = "127.0.0.1".into();
    config.server.grpc_server_port = 0;
    config.server.http_server_port = 0;
    config.server.tls.mode = mode;
    config.storage.data_dir = dir.path().to_path_buf();
    config.storage.mapped_file_size_commit_log = 16 * 1024 * 1024;
    config.topics.auto_create_topic_enable = true;
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server::run(config, stop.clone(), move |a| {
        let _ = tx.send(a);
    }));
    let addrs = tokio::time::timeout(Duration::from_secs(30), rx).await.unwrap().unwrap();
    (addrs.grpc, stop, dir)
}

async fn tls_client(
    addr: std::net::SocketAddr,
) -> Result<MessagingServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(MessagingServiceClient::new(channel))
}

#[tokio::test]
async fn tls_and_plaintext_share_the_port() {
    let (addr, stop, _dir) = start(TlsMode::Permissive).await;
    let mut tls = tls_client(addr).await.expect("TLS connection");
    assert_eq!(query_route(&mut tls).await, Code::Ok as i32);
    let plain = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    assert_eq!(query_route(&mut MessagingServiceClient::new(plain)).await, Code::Ok as i32);
    stop.cancel();
}

#[tokio::test]
async fn enforcing_mode_refuses_plaintext() {
    let (addr, stop, _dir) = start(TlsMode::Enforcing).await;
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
    stop.cancel();
}
