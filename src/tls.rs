//! TLS and plaintext h2c on the same gRPC port: the first byte of a connection decides (a TLS
//! record starts with 0x16, an HTTP/2 preface with `P`). The certificate comes from
//! `server.tls.certPath`/`keyPath`, or is generated self-signed at start (the Java SDK uses TLS
//! by default and trusts any certificate). At most `server.maxConnections` connections are
//! open at once: beyond it the accept loop waits (new connections stay in the listen backlog).
//! The accept loop only accepts: detection and the handshake run on the runtime that serves the
//! connection (an I/O thread's, `crate::io_threads`, or the main one).
//! Also the client side of TLS between the nodes of a cluster ([`peer_client_config`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
pub use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::{TlsConfig, TlsMode};

/// How long a new connection may take to send its first byte and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that is either plaintext or TLS.
pub enum MaybeTlsStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for MaybeTlsStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            MaybeTlsStream::Plain(s) => s.connect_info(),
            MaybeTlsStream::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

/// An accepted connection holding one of the `server.maxConnections` slots until it closes.
pub struct GrpcConnection {
    stream: MaybeTlsStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for GrpcConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Builds the rustls server configuration (ALPN h2), or None when TLS is disabled.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    if tls.mode == TlsMode::Disabled {
        return Ok(None);
    }
    let (certs, key) = if tls.cert_path.is_empty() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "rmq-gateway".to_string()])?;
        tracing::info!(
            "TLS: using a self-signed certificate generated at start (set server.tls.certPath to use yours)"
        );
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("generated key: {e}"))?;
        (vec![cert.cert.der().clone()], key)
    } else {
        let certs = CertificateDer::pem_file_iter(&tls.cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("server.tls.certPath `{}`: {e}", tls.cert_path))?;
        let key = PrivateKeyDer::from_pem_file(&tls.key_path)
            .map_err(|e| anyhow::anyhow!("server.tls.keyPath `{}`: {e}", tls.key_path))?;
        (certs, key)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The TLS client side of calls to other nodes of a cluster (`cluster.peerTls`): their
/// certificates are checked against the CA(s) in `ca_path`, or, when it is empty, not at all
/// (the traffic is encrypted; `cluster.secret` authenticates the caller). ALPN `h2`.
pub fn peer_client_config(ca_path: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let mut config = if ca_path.is_empty() {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate)).with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_path)
            .map_err(|e| anyhow::anyhow!("cluster.peerCaPath `{ca_path}`: {e}"))?
        {
            let cert = cert.map_err(|e| anyhow::anyhow!("cluster.peerCaPath `{ca_path}`: {e}"))?;
            roots.add(cert).map_err(|e| anyhow::anyhow!("cluster.peerCaPath `{ca_path}`: {e}"))?;
        }
        if roots.is_empty() {
            anyhow::bail!("cluster.peerCaPath `{ca_path}` holds no certificate");
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (peer TLS without `cluster.peerCaPath`); signatures are
/// still checked, so the handshake is a real one.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP connection just accepted, holding one of the `server.maxConnections` slots; not yet
/// classified (TLS or plaintext).
pub struct Accepted {
    socket: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

/// An [`Accepted`] connection detached from the runtime that accepted it, to be served by
/// another one ([`Detached::attach`] registers it with the current runtime's reactor).
pub struct Detached {
    socket: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

impl Accepted {
    /// Detaches the socket from this runtime's reactor. `None` (the connection is closed) if
    /// the runtime refuses to let it go.
    pub fn detach(self) -> Option<Detached> {
        match self.socket.into_std() {
            Ok(socket) => Some(Detached { socket, peer: self.peer, slot: self.slot }),
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "cannot move a connection to an I/O thread");
                None
            }
        }
    }
}

impl Detached {
    /// Registers the socket with the current runtime. Must run inside a runtime.
    pub fn attach(self) -> Option<Accepted> {
        match TcpStream::from_std(self.socket) {
            Ok(socket) => Some(Accepted { socket, peer: self.peer, slot: self.slot }),
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "cannot register a connection with its I/O thread");
                None
            }
        }
    }
}

/// Accepts gRPC connections until `shutdown`, at most `max_connections` open at once, and
/// hands each to `hand_off` (which starts [`handshake`] on the runtime that will serve it).
pub async fn accept_loop(
    listener: TcpListener,
    max_connections: usize,
    mut hand_off: impl FnMut(Accepted),
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut warned = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !warned {
                    tracing::warn!(max_connections, "server.maxConnections connections are open; new ones wait");
                    warned = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                }
            }
        };
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        hand_off(Accepted { socket, peer, slot });
    }
}

/// Detects TLS or plaintext on `accepted` (finishing the TLS handshake), on a task of the
/// current runtime, and passes the connection to the gRPC server reading `incoming`.
pub fn handshake(
    accepted: Accepted,
    acceptor: Option<TlsAcceptor>,
    mode: TlsMode,
    incoming: mpsc::Sender<io::Result<GrpcConnection>>,
) {
    let Accepted { socket, peer, slot } = accepted;
    tokio::spawn(async move {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(socket, acceptor, mode)).await {
            Ok(Ok(Some(stream))) => {
                let _ = incoming.send(Ok(GrpcConnection { stream, _slot: slot })).await;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection dropped during TLS detection"),
            Err(_) => tracing::debug!(%peer, "connection sent nothing within the handshake timeout"),
        }
    });
}

async fn classify(
    socket: TcpStream,
    acceptor: Option<TlsAcceptor>,
    mode: TlsMode,
) -> io::Result<Option<MaybeTlsStream>> {
    let mut first = [0u8; 1];
    if socket.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    let is_tls = first[0] == 0x16;
    match (is_tls, acceptor, mode) {
        (true, Some(acceptor), _) => Ok(Some(MaybeTlsStream::Tls(Box::new(acceptor.accept(socket).await?)))),
        (false, _, TlsMode::Enforcing) => Ok(None),
        (true, None, _) => Ok(None),
        (false, _, TlsMode::Permissive | TlsMode::Disabled) => Ok(Some(MaybeTlsStream::Plain(socket))),
    }
}
