//! An in-process gateway for protocol-level tests: `rmq_gateway::server::run` on a tokio task,
//! on free loopback ports (gRPC and HTTP), with its data in a temp dir (or a given one), and
//! each test's `Config` tweak applied on top of the defaults below.

use std::path::Path;
use std::time::Duration;

use rmq_gateway::config::Config;
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::server::{self, BoundAddrs};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A running in-process gateway; [`Gateway::stop`] shuts it down and waits for it.
pub struct Gateway {
    /// the bound gRPC and HTTP addresses
    pub addrs: BoundAddrs,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts a gateway on a fresh temp dir (removed when the gateway is dropped).
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Gateway {
        let dir = tempfile::tempdir().expect("create a temp dir for the gateway");
        let mut gateway = Gateway::start_in(dir.path(), tweak).await;
        gateway._dir = Some(dir);
        gateway
    }

    /// Starts a gateway on `dir` (left in place, e.g. to start another gateway on it). The
    /// defaults: 127.0.0.1 with free ports, a 5 s shutdown timeout, 64 MiB commit log files,
    /// topics auto-created on first use; `tweak` then changes what a test needs.
    pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Gateway {
        let mut config = Config::default();
        config.server.bind_address = "127.0.0.1".into();
        config.server.grpc_server_port = 0;
        config.server.http_server_port = 0;
        config.server.shutdown_timeout = Duration::from_secs(5);
        config.storage.data_dir = dir.to_path_buf();
        config.storage.mapped_file_size_commit_log = 64 * 1024 * 1024;
        config.topics.auto_create_topic_enable = true;
        tweak(&mut config);
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server::run(config, stop.clone(), move |a| {
            let _ = tx.send(a);
        }));
        let addrs = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("gateway start timed out")
            .expect("gateway failed to start");
        Gateway { addrs, stop, task, _dir: None }
    }

    /// A plaintext (h2c) client of the gRPC port.
    pub async fn client(&self) -> MessagingServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addrs.grpc))
            .expect("gRPC URI")
            .connect()
            .await
            .expect("connect to the gateway");
        MessagingServiceClient::new(channel)
    }

    /// Shuts the gateway down and waits for it; fails if that takes over 20 s or the server
    /// ended with an error.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("gateway shutdown timed out")
            .expect("gateway task panicked")
            .expect("gateway ended with an error");
    }
}
