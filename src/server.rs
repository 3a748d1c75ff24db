//! Wiring: opens the stores, starts the broker, the gRPC server (h2c + TLS on one port) and the
//! HTTP server, runs background tasks (progress flusher, timers, transaction checker, and
//! housekeeping: session expiry, idle-state pruning, group retirement), and shuts everything
//! down in order on SIGINT/SIGTERM: readiness off → stop accepting and end long polls → drain
//! RPCs → flush consumer progress → close the message log → close the metadata store. The only
//! module that names concrete storage and metadata backends, and the one that turns the
//! configuration into the broker's and the gRPC service's settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::broker::settings::{
    CheckMaxAction, ClientSettings, ConsumeFromWhere, ConsumerSettings, GroupSpec, LimitSettings, TimerSettings,
    TopicSettings, TopicSpec, TransactionSettings,
};
use crate::broker::{Broker, BrokerSettings, Stores};
use crate::clock::SystemClock;
use crate::cluster::membership::{Membership, MembershipSettings};
use crate::cluster::{self, ClusterView, NodeInfo, ShardHandler, ShardId};
use crate::config::{self, BodyDigestPolicy, Config, FlushDiskType};
use crate::grpc::{GrpcSettings, MessagingServiceImpl, ProducerBackoff};
use crate::io_threads::IoThreads;
use crate::metadata::{self, MetadataStore};
use crate::storage::sharded::{ShardSettings, ShardedLog};
use crate::storage::tiered::{TieredLog, TieringSettings};
use crate::storage::{BucketFiles, CommitLog, FlushMode, MessageLog, StorageConfig};
use crate::tls;

/// Addresses the servers actually bound (ports may be 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// The commit-log settings of `storage.*`, for a log in `dir`.
fn storage_config(config: &Config, dir: std::path::PathBuf) -> StorageConfig {
    let s = &config.storage;
    let mut store = StorageConfig::new(dir);
    store.segment_size = s.mapped_file_size_commit_log;
    store.flush = match s.flush_disk_type {
        FlushDiskType::SyncFlush => FlushMode::Sync,
        FlushDiskType::AsyncFlush => FlushMode::Async { interval: s.flush_interval_commit_log },
    };
    store.file_reserved_time = s.file_reserved_time;
    store.disk_max_used_ratio = f64::from(s.disk_max_used_space_ratio) / 100.0;
    store.zero_ahead_bytes = s.zero_ahead_bytes;
    store.page_cache_window = s.page_cache_window_bytes;
    store
}

/// The tiering settings of `storage.tiering.*` (the log id is the caller's).
fn tiering_settings(config: &Config, log_id: String) -> TieringSettings {
    let t = &config.storage.tiering;
    TieringSettings {
        log_id,
        // The object store puts `objectStore.prefix` in front of every key itself.
        prefix: String::new(),
        remote_reserved_time: t.file_reserved_time,
        upload_interval: t.upload_interval,
        retry_max_backoff: t.retry_max_backoff,
        read_cache_bytes: t.read_cache_bytes,
        read_ahead_bytes: t.read_ahead_bytes,
        orphan_grace: t.orphan_grace_period,
        remote_retention_interval: t.remote_retention_interval,
        ..TieringSettings::default()
    }
}

/// Opens the commit log under `<dataDir>/store` (recovery runs here).
fn open_message_log(config: &Config) -> anyhow::Result<Arc<CommitLog>> {
    let s = &config.storage;
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create storage.dataDir `{}`", s.data_dir.display()))?;
    let store = storage_config(config, s.data_dir.join("store"));
    let log = CommitLog::open(store)
        .with_context(|| format!("cannot open the commit log in `{}`", s.data_dir.join("store").display()))?;
    if s.tiering.enabled {
        // Nothing is known to be uploaded until the tiered log has read the manifest: local
        // retention must not drop anything meanwhile.
        log.set_retention_limit(Some(log.log_start()));
    }
    Ok(log)
}

/// Puts the remote tier over the commit log when `storage.tiering.enabled`.
async fn open_tiered(
    config: &Config,
    local: Arc<CommitLog>,
    meta: Arc<dyn MetadataStore>,
) -> anyhow::Result<Arc<dyn MessageLog>> {
    let t = &config.storage.tiering;
    if !t.enabled {
        return Ok(local);
    }
    let store = crate::storage::object::open(&t.object_store, &config.storage.data_dir)
        .await
        .context("cannot open storage.tiering.objectStore")?;
    let settings = tiering_settings(config, t.log_id.clone());
    let log = TieredLog::open(local, store, meta, settings).await.context("cannot start tiered storage")?;
    Ok(log)
}

/// This node in a cluster: its id, the address clients are given for its queues and the one
/// other nodes forward to.
fn cluster_node(config: &Config) -> NodeInfo {
    let c = &config.cluster;
    let port = config.server.grpc_server_port;
    let with_port = |a: &str| {
        if a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            a.to_string()
        } else {
            format!("{a}:{port}")
        }
    };
    let node_id = c.resolved_node_id();
    let host = if config.server.advertised_address.is_empty() {
        node_id.clone()
    } else {
        config.server.advertised_address.clone()
    };
    let advertised = with_port(&host);
    let peer = if c.peer_address.is_empty() { advertised.clone() } else { with_port(&c.peer_address) };
    NodeInfo { node_id, advertised, peer }
}

/// Cluster mode's message log: the node's home log (`<dataDir>/store`, log id
/// `node-<nodeId>`: POP journal, timers, half messages) and the shards it owns
/// (`<dataDir>/shards`), opened and closed by the membership.
async fn open_cluster_log(
    config: &Config,
    node_id: &str,
    local: Arc<CommitLog>,
    meta: Arc<dyn MetadataStore>,
) -> anyhow::Result<Arc<ShardedLog>> {
    let t = &config.storage.tiering;
    let store = crate::storage::object::open(&t.object_store, &config.storage.data_dir)
        .await
        .context("cannot open storage.tiering.objectStore")?;
    // A home log behind its manifest lost its disk (or its tail): it continues past the
    // manifest, as a shard taken over does, so its offsets never repeat ones in the bucket
    // (which the node reads back from there: its timers and transactions are not lost).
    let home_id = cluster::home_log_id(node_id);
    let rows = meta.list_segments(&home_id).await.with_context(|| format!("cannot list the manifest of {home_id}"))?;
    let manifest_end = rows.iter().map(|r| r.base + r.size).max().unwrap_or(0);
    let local = if local.published_position() < manifest_end {
        tracing::warn!(
            local_end = local.published_position(),
            manifest_end,
            "the home log is behind its manifest (a lost disk?); continuing past the manifest, older data from the bucket"
        );
        local.close().await.context("closing the home log")?;
        let dir = config.storage.data_dir.join("store");
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot wipe `{}`", dir.display()))?;
        // The timer index describes the lost log's offsets: rebuilt from the log.
        let timer_dir = config.storage.data_dir.join("timer");
        if timer_dir.exists() {
            std::fs::remove_dir_all(&timer_dir).with_context(|| format!("cannot wipe `{}`", timer_dir.display()))?;
        }
        let mut resume = crate::storage::sharded::resume_point(&rows, config.storage.mapped_file_size_commit_log, 2);
        // Past what the node's saved progress already covers, too.
        let (progress, journal_offset) = meta.load_progress().await.context("loading this node's progress")?;
        for (topic, queue_id, floor) in crate::broker::home_resume_floors(&progress, journal_offset) {
            match resume.queues.iter_mut().find(|q| q.topic == topic && q.queue_id == queue_id) {
                Some(q) => q.next_offset = q.next_offset.max(floor),
                None if floor > 0 => {
                    resume.queues.push(crate::storage::ResumeQueue { topic, queue_id, next_offset: floor })
                }
                None => {}
            }
        }
        let mut store_config = storage_config(config, dir.clone());
        store_config.resume = Some(resume);
        let log = CommitLog::open(store_config)
            .with_context(|| format!("cannot open the commit log in `{}`", dir.display()))?;
        log.set_retention_limit(Some(log.log_start()));
        log
    } else {
        local
    };
    // The home log's tail reaches the bucket like a shard's: a node that dies leaves its
    // scheduled and half messages there for the node that adopts them.
    let mut home_tiering = tiering_settings(config, cluster::home_log_id(node_id));
    home_tiering.tail_upload_interval = Some(config.cluster.tail_upload_interval);
    let home = TieredLog::open(local, store.clone(), meta.clone(), home_tiering)
        .await
        .context("cannot start tiered storage")?;
    let mut tiering = tiering_settings(config, String::new());
    tiering.tail_upload_interval = Some(config.cluster.tail_upload_interval);
    let settings = ShardSettings {
        shards: config.cluster.shards,
        dir: config.storage.data_dir.join("shards"),
        storage: storage_config(config, config.storage.data_dir.join("shards")),
        tiering,
        node_id: node_id.to_string(),
    };
    Ok(ShardedLog::with_tiered_home(home, store, meta, settings))
}

/// Moves shards in and out of this node for the membership: the shard's log, the consumer
/// progress of its queues, and the view the broker and the gRPC layer route by.
struct NodeShards {
    log: Arc<ShardedLog>,
    broker: Broker,
    view: Arc<ClusterView>,
    store: Arc<dyn metadata::ClusterStore>,
}

/// Whether a queue is one of `shard`'s (system topics never are).
fn queues_of(shard: ShardId, shards: u32) -> impl Fn(&str, u32) -> bool + Sync {
    move |topic: &str, queue_id: u32| {
        !topic.starts_with(cluster::SYSTEM_TOPIC_PREFIX) && cluster::shard_of(topic, queue_id, shards) == shard
    }
}

#[async_trait::async_trait]
impl ShardHandler for NodeShards {
    async fn acquire(&self, shard: ShardId, epoch: i64) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.log.open_shard(shard, epoch).await.with_context(|| format!("opening shard {shard}"))?;
        match self.broker.adopt_queues(&queues_of(shard, self.view.shard_count())).await {
            // The lease may have been lost (and the shard abandoned) while this ran.
            Ok(_) if !self.log.is_open(shard) => {
                Err(anyhow::anyhow!("shard {shard} was closed while it was being opened (lease lost)"))
            }
            Ok(states) => {
                self.view.set_local(shard, true);
                tracing::info!(shard, epoch, states, took = ?started.elapsed(), "shard acquired");
                Ok(())
            }
            Err(e) => {
                let _ = self.log.abandon_shard(shard).await;
                Err(anyhow::anyhow!("loading the consumer progress of shard {shard}: {e}"))
            }
        }
    }

    async fn release(&self, shard: ShardId) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        // Requests for its queues go to the next owner (or wait for one) from now on.
        self.view.set_local(shard, false);
        let closed = self.log.close_shard(shard).await;
        let saved = self.broker.release_queues(&queues_of(shard, self.view.shard_count())).await;
        closed.with_context(|| format!("handing shard {shard} over"))?;
        saved.map_err(|e| anyhow::anyhow!("saving the consumer progress of shard {shard}: {e}"))?;
        tracing::info!(shard, took = ?started.elapsed(), "shard handed over");
        Ok(())
    }

    async fn lost(&self, shard: ShardId) {
        self.view.set_local(shard, false);
        if let Err(e) = self.log.abandon_shard(shard).await {
            tracing::warn!(shard, error = %e, "closing a lost shard failed");
        }
        self.broker.forget_queues(&queues_of(shard, self.view.shard_count()));
        tracing::warn!(shard, "shard lease lost: stopped writing to it");
    }

    async fn enter_home(&self, cut: metadata::HomeCut, unapplied: bool) -> anyhow::Result<()> {
        if unapplied {
            self.broker.apply_home_cut(cut).await.map_err(|e| anyhow::anyhow!("giving up adopted messages: {e}"))?;
        }
        self.broker.set_adopted_cut(cut);
        Ok(())
    }

    async fn adopt_home(&self, node_id: &str, from: metadata::HomeCut) -> anyhow::Result<metadata::HomeCut> {
        let started = std::time::Instant::now();
        let (progress, journal_offset) = self.store.node_system_progress(node_id).await?;
        let foreign =
            self.log.open_foreign_home(node_id).await.with_context(|| format!("opening node {node_id}'s home log"))?;
        let adopted = self.broker.adopt_home(node_id, foreign.log(), from, &progress, journal_offset).await;
        foreign.close().await;
        let adopted = adopted.map_err(|e| anyhow::anyhow!("adopting node {node_id}'s messages: {e}"))?;
        tracing::info!(
            node = node_id,
            scheduled = adopted.scheduled,
            half = adopted.half,
            took = ?started.elapsed(),
            "home log adopted"
        );
        Ok(adopted.cut)
    }
}

impl From<&Config> for BrokerSettings {
    fn from(config: &Config) -> Self {
        let (t, l, c) = (&config.topics, &config.limits, &config.consumer);
        BrokerSettings {
            topics: TopicSettings {
                auto_create_topic_enable: t.auto_create_topic_enable,
                default_topic_queue_nums: t.default_topic_queue_nums,
                create: t
                    .create
                    .iter()
                    .map(|s| TopicSpec {
                        name: s.name.clone(),
                        queue_nums: s.queue_nums,
                        message_type: s.message_type.clone(),
                        // Validated with the configuration.
                        durability: crate::metadata::Durability::parse(&s.durability).unwrap_or_default(),
                    })
                    .collect(),
            },
            limits: LimitSettings {
                max_message_size: l.max_message_size,
                max_user_property_size: l.max_user_property_size,
                user_property_max_num: l.user_property_max_num,
                max_message_group_size: l.max_message_group_size,
                max_delay_time: l.max_delay_time,
                max_batch_messages: l.max_batch_messages,
                max_inflight_bytes: l.max_inflight_bytes,
                max_inflight_bytes_per_connection: l.max_inflight_bytes_per_connection,
                inflight_wait_time: l.inflight_wait_time,
            },
            consumer: ConsumerSettings {
                consume_from_where: match c.consume_from_where {
                    config::ConsumeFromWhere::LastOffset => ConsumeFromWhere::LastOffset,
                    config::ConsumeFromWhere::FirstOffset => ConsumeFromWhere::FirstOffset,
                },
                retry_max_times: c.retry_max_times,
                default_invisible_time: c.default_invisible_time,
                min_invisible_time: c.min_invisible_time,
                max_invisible_time: c.max_invisible_time,
                min_long_polling_timeout: c.min_long_polling_timeout,
                max_long_polling_timeout: c.max_long_polling_timeout,
                long_polling_reserve: c.long_polling_reserve,
                receive_batch_size: c.receive_batch_size,
                // Checked by `Config::validate`.
                retry_backoff: c.retry_backoff().unwrap_or_default(),
                progress_flush_interval: c.progress_flush_interval,
                broadcast_retire_after: c.broadcast_retire_after,
                auto_create_subscription_group: c.auto_create_subscription_group,
                max_auto_created_groups: c.max_auto_created_groups,
                queue_state_idle_time: c.queue_state_idle_time,
                groups: c
                    .groups
                    .iter()
                    .map(|g| GroupSpec {
                        name: g.name.clone(),
                        consume_message_orderly: g.consume_message_orderly,
                        retry_max_times: g.retry_max_times,
                        retry_backoff: g.retry_backoff.clone(),
                        broadcast: g.message_model == crate::config::MessageModel::Broadcasting,
                    })
                    .collect(),
            },
            timer: TimerSettings { timer_precision: config.timer.timer_precision },
            transaction: TransactionSettings {
                transaction_timeout: config.transaction.transaction_timeout,
                transaction_check_interval: config.transaction.transaction_check_interval,
                transaction_check_max: config.transaction.transaction_check_max,
                transaction_check_max_action: match config.transaction.transaction_check_max_action {
                    config::CheckMaxAction::Discard => CheckMaxAction::Discard,
                    config::CheckMaxAction::Keep => CheckMaxAction::Keep,
                },
            },
            clients: ClientSettings { channel_expired_timeout: config.server.channel_expired_timeout },
        }
    }
}

impl From<&Config> for GrpcSettings {
    fn from(config: &Config) -> Self {
        let (s, p) = (&config.server, &config.producer);
        GrpcSettings {
            grpc_server_port: s.grpc_server_port,
            advertised_address: s.advertised_address.clone(),
            broker_name: s.broker_name.clone(),
            grpc_max_inbound_message_size: s.grpc_max_inbound_message_size,
            max_body_size: config.limits.max_message_size,
            producer: ProducerBackoff {
                max_attempts: p.max_attempts,
                backoff_initial: p.backoff_initial,
                backoff_max: p.backoff_max,
                backoff_multiplier: p.backoff_multiplier,
            },
            client_metrics: config.metrics.enabled && config.metrics.client_metrics,
            md5_digests_only: s.body_digest == BodyDigestPolicy::Md5,
        }
    }
}

/// Runs the gateway until `shutdown` is cancelled. `on_ready` receives the bound addresses.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(BoundAddrs) + Send,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    if config.metrics.enabled {
        crate::observability::metrics::init(config.metrics.max_series, &config.storage.data_dir);
    }
    // Span export (tracing.enabled): set up here, never fatal (messaging works without it).
    if let Err(e) = crate::observability::tracing::init(&config.tracing) {
        tracing::warn!(error = %e, "OpenTelemetry span export is off");
    }
    // Recovery reads the log since the last checkpoint: blocking work.
    let log = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_message_log(&config))
            .await
            .context("commit-log recovery panicked")??
    };
    let meta_url = config.metadata_url();
    let node = config.cluster.enabled.then(|| cluster_node(&config));
    let mut options = config.metadata.store_options();
    if let Some(n) = &node {
        options.node_id = n.node_id.clone();
    }
    let (meta, cluster_store) = metadata::open_with_cluster(&meta_url, &options).await.with_context(|| {
        format!("cannot open the metadata store `{}` (metadata.url)", metadata::redact_url(&meta_url))
    })?;
    tracing::info!(url = %metadata::redact_url(&meta_url), "metadata store open");
    let (log, sharded): (Arc<dyn MessageLog>, Option<Arc<ShardedLog>>) = match &node {
        Some(n) => {
            let sharded = open_cluster_log(&config, &n.node_id, log, meta.clone()).await?;
            (sharded.clone(), Some(sharded))
        }
        None => (open_tiered(&config, log, meta.clone()).await?, None),
    };
    let timer_index =
        BucketFiles::open(&config.storage.data_dir.join("timer"), config.timer.timer_bucket.as_millis() as i64)
            .context("cannot open the timer index")?;
    let stores = Stores { log: log.clone(), meta: meta.clone(), timers: Arc::new(timer_index) };
    let broker = Broker::start(BrokerSettings::from(&*config), stores, Arc::new(SystemClock))
        .await
        .context("cannot start the broker")?;
    // Cluster: the broker serves only the shards this node holds; none until the membership
    // hands them over.
    let view = node.clone().map(|n| {
        let view = ClusterView::new(n, config.cluster.shards);
        broker.set_ownership(view.clone());
        view
    });

    let bind = &config.server.bind_address;
    let grpc_listener =
        TcpListener::bind((bind.as_str(), config.server.grpc_server_port)).await.with_context(|| {
            format!("cannot listen on {bind}:{} (server.grpcServerPort)", config.server.grpc_server_port)
        })?;
    let http_listener =
        TcpListener::bind((bind.as_str(), config.server.http_server_port)).await.with_context(|| {
            format!("cannot listen on {bind}:{} (server.httpServerPort)", config.server.http_server_port)
        })?;
    let addrs = BoundAddrs { grpc: grpc_listener.local_addr()?, http: http_listener.local_addr()? };

    let tls_config = tls::server_config(&config.server.tls)?;
    let accept_stop = CancellationToken::new();

    let grpc_stop = CancellationToken::new();
    let mut service = MessagingServiceImpl::new(broker.clone(), GrpcSettings::from(&*config));
    // Cluster: requests for other nodes' queues are forwarded, and the peer service (orphan
    // transaction checks relayed between nodes) is served on the same port.
    let peer = match &view {
        Some(view) => {
            let c = &config.cluster;
            let security = crate::grpc::forward::PeerSecurity {
                tls: if c.peer_tls {
                    Some(tls::peer_client_config(&c.peer_ca_path).context("cannot set up TLS between nodes")?)
                } else {
                    None
                },
                secret: (!c.secret.is_empty()).then(|| Arc::from(c.secret.as_str())),
            };
            if !c.secret.is_empty() && c.peer_tls && c.peer_ca_path.is_empty() {
                tracing::warn!(
                    "cluster.peerCaPath is empty: nodes accept any certificate, so the cluster secret goes to whoever answers at a peer address"
                );
            }
            if c.secret.is_empty() {
                tracing::warn!(
                    "cluster.secret is empty: the peer service (orphan-check relays, hand-overs) answers anyone who reaches the gRPC port"
                );
            }
            service = service.with_cluster(view.clone(), c.forward_timeout, security);
            Some(service.peer_server())
        }
        None => None,
    };
    // metrics.clientMetrics: the SDKs' OTLP metrics are received on this port.
    let client_metrics = (config.metrics.enabled && config.metrics.client_metrics).then(|| {
        crate::grpc::otlp::ClientMetricsReceiver::server(crate::observability::client_metrics::init(
            config.metrics.max_series,
        ))
    });
    // metrics.otlpEndpoint: our own metrics pushed every otlpInterval (never fatal).
    let push_stop = CancellationToken::new();
    if config.metrics.enabled && !config.metrics.otlp_endpoint.is_empty() {
        crate::observability::otlp_metrics::PUSH_ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
        let b = broker.clone();
        let snapshot = move || crate::observability::metrics::global().map(|m| m.render(&b.metrics_gauges()));
        tokio::spawn(crate::grpc::otlp::push_loop(
            config.metrics.otlp_endpoint.clone(),
            config.metrics.otlp_interval,
            config.tracing.service_name.clone(),
            snapshot,
            push_stop.clone(),
        ));
    }
    let router = grpc_server(&config.server)
        .add_service(service.into_metered_server())
        .add_optional_service(peer)
        .add_optional_service(client_metrics);
    let tls_acceptor = tls_config.map(tls::TlsAcceptor::from);
    let tls_mode = config.server.tls.mode;
    let max_connections = config.server.max_connections;
    let (grpc, acceptor, io_threads) = match config.server.io_threads {
        0 => {
            // Connections served by the main runtime's workers.
            let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(128);
            let stop = grpc_stop.clone();
            let grpc = tokio::spawn(
                router
                    .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move { stop.cancelled().await }),
            );
            let hand_off = move |c| tls::handshake(c, tls_acceptor.clone(), tls_mode, conn_tx.clone());
            (grpc, tokio::spawn(tls::accept_loop(grpc_listener, max_connections, hand_off, accept_stop.clone())), None)
        }
        n => {
            let mut threads = IoThreads::start(
                n,
                config.server.io_thread_affinity,
                router,
                tls_acceptor,
                tls_mode,
                grpc_stop.clone(),
            )
            .context("cannot start the gRPC I/O threads (server.ioThreads)")?;
            let grpc = tokio::spawn(threads.served());
            let hand_off = threads.dispatcher();
            let acceptor =
                tokio::spawn(tls::accept_loop(grpc_listener, max_connections, hand_off, accept_stop.clone()));
            (grpc, acceptor, Some(threads))
        }
    };

    // Cluster: join; shards come over from the next renew on.
    let membership = match (&view, &sharded, &cluster_store) {
        (Some(view), Some(sharded), Some(store)) => {
            let handler = Arc::new(NodeShards {
                log: sharded.clone(),
                broker: broker.clone(),
                view: view.clone(),
                store: store.clone(),
            });
            let m = Membership::start(store.clone(), view.clone(), handler, MembershipSettings::from(&config.cluster))
                .await
                .context("cannot join the cluster")?;
            tracing::info!(
                node = view.local_node().node_id,
                advertised = view.local_node().advertised,
                peer = view.local_node().peer,
                shards = config.cluster.shards,
                "joined the cluster"
            );
            Some(m)
        }
        (None, _, _) => None,
        _ => anyhow::bail!("cluster.enabled needs a metadata store that can run a cluster (postgres://)"),
    };

    let ready = Arc::new(AtomicBool::new(false));
    let http_stop = CancellationToken::new();
    let http = {
        let stop = http_stop.clone();
        let app = admin::router(AdminState {
            broker: broker.clone(),
            ready: ready.clone(),
            cluster: membership.as_ref().map(|m| m.status_source()),
        });
        tokio::spawn(async move {
            axum::serve(http_listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
        })
    };

    let flusher = {
        let b = broker.clone();
        tokio::spawn(async move { b.run_progress_flusher().await })
    };
    let timers = {
        let b = broker.clone();
        tokio::spawn(async move { b.run_timers().await })
    };
    let checker = {
        let b = broker.clone();
        tokio::spawn(async move { b.run_transaction_checker().await })
    };
    let housekeeping = {
        let b = broker.clone();
        tokio::spawn(async move { b.run_housekeeping().await })
    };

    ready.store(true, Ordering::SeqCst);
    tracing::info!(grpc = %addrs.grpc, http = %addrs.http, tls = ?config.server.tls.mode, "rmq-gateway is ready");
    on_ready(addrs);

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    ready.store(false, Ordering::SeqCst);
    if let Some(m) = membership {
        // Hand every shard over while still serving (requests for them are forwarded to their
        // new owners), then give the other nodes a renew interval to see it.
        let started = std::time::Instant::now();
        match m.leave().await {
            Ok(()) => tracing::info!(took = ?started.elapsed(), "left the cluster; shards handed over"),
            Err(e) => tracing::warn!(error = %e, "leaving the cluster failed; this node's leases will expire"),
        }
        tokio::time::sleep(config.cluster.renew_interval).await;
    }
    accept_stop.cancel();
    push_stop.cancel();
    let broker_stop = broker.shutdown_token();
    if config.cluster.enabled {
        // GOAWAY first, while the Telemetry streams still hold the connections open: clients
        // move their new requests to a new connection (another node behind the load
        // balancer) instead of losing them with a connection closed under them.
        grpc_stop.cancel();
        tokio::time::sleep(config.cluster.renew_interval.max(std::time::Duration::from_secs(1))).await;
    }
    // Ends long polls and telemetry streams so the gRPC server can drain.
    broker_stop.cancel();
    grpc_stop.cancel();
    let limit = config.server.shutdown_timeout;
    match tokio::time::timeout(limit, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!("gRPC connections did not drain within {}", humantime::format_duration(limit)),
    }
    let _ = acceptor.await;
    let _ = flusher.await;
    let _ = timers.await;
    let _ = checker.await;
    let _ = housekeeping.await;
    if let Err(e) = broker.shutdown().await {
        tracing::error!(error = %e, "final flush of consumer progress failed");
    }
    if let Err(e) = log.close().await {
        tracing::error!(error = %e, "closing the message log failed");
    }
    meta.close().await;
    // Last: requests may have registered sockets (metadata-store connections) with them.
    if let Some(t) = io_threads {
        t.release();
    }
    http_stop.cancel();
    let _ = http.await;
    crate::observability::tracing::shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC server's connection settings, shared with the benchmark's no-op ceiling: HTTP/2
/// keep-alive, and bounds per connection on RPCs at once and on streams a client may open and
/// reset at once (the HTTP/2 "rapid reset" flood).
pub fn grpc_server(server: &config::ServerConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(256))
}

/// Cancels the token on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the SIGTERM handler");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn settings_carry_the_configuration() {
        let mut config = Config::default();
        config.consumer.consume_from_where = config::ConsumeFromWhere::FirstOffset;
        config.consumer.retry_backoff = "1s 2m".into();
        config.transaction.transaction_check_max_action = config::CheckMaxAction::Keep;
        config.topics.create.push(config::TopicSpec {
            name: "T".into(),
            queue_nums: None,
            message_type: "FIFO".into(),
            durability: "s3".into(),
        });
        config.limits.max_message_size = 1000;
        config.server.broker_name = "b1".into();

        let b = BrokerSettings::from(&config);
        assert_eq!(b.consumer.consume_from_where, ConsumeFromWhere::FirstOffset);
        assert_eq!(
            b.consumer.retry_backoff,
            crate::broker::Backoff::Customized(vec![Duration::from_secs(1), Duration::from_secs(120)])
        );
        assert_eq!(b.transaction.transaction_check_max_action, CheckMaxAction::Keep);
        assert_eq!(b.topics.create[0].message_type, "FIFO");
        assert_eq!(b.topics.create[0].durability, crate::metadata::Durability::ObjectStore);
        assert_eq!(b.limits.max_message_size, 1000);
        assert_eq!(b.timer.timer_precision, config.timer.timer_precision);
        assert_eq!(b.clients.channel_expired_timeout, Duration::from_secs(120));
        assert_eq!(b.limits.max_inflight_bytes, config.limits.max_inflight_bytes);
        assert_eq!(b.consumer.max_auto_created_groups, config.consumer.max_auto_created_groups);

        let g = GrpcSettings::from(&config);
        assert_eq!(g.max_body_size, 1000);
        assert_eq!(g.broker_name, "b1");
        assert_eq!(g.producer.max_attempts, config.producer.max_attempts);
    }
}
