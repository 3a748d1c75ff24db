//! Gateway configuration: YAML (`config/gateway.yaml` documents every key) → typed [`Config`],
//! environment overrides, and validation with errors that name the offending key.
//!
//! Keys are camelCase and reuse Apache RocketMQ's names where the meaning matches
//! (`grpcServerPort`, `maxMessageSize`, `autoCreateTopicEnable`, `flushDiskType`, …).
//! Durations are humantime strings (`500ms`, `30s`, `72h`).
//!
//! Environment overrides: `RMQ_GATEWAY_<SECTION>__<KEY>=value`, where SECTION and KEY match the
//! YAML names case-insensitively with underscores ignored, e.g.
//! `RMQ_GATEWAY_SERVER__GRPC_SERVER_PORT=9081` or `RMQ_GATEWAY_STORAGE__FLUSH_DISK_TYPE=ASYNC_FLUSH`.
//! Values are parsed as YAML scalars. Variables without `__` (e.g. `RMQ_GATEWAY_CONFIG`) are
//! not overrides and are ignored here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_norway::Value;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "RMQ_GATEWAY_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageSection,
    pub metadata: MetadataConfig,
    pub topics: TopicsConfig,
    pub limits: LimitsConfig,
    pub producer: ProducerConfig,
    pub consumer: ConsumerConfig,
    pub timer: TimerConfig,
    pub transaction: TransactionConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    pub metrics: MetricsConfig,
    pub tracing: TracingConfig,
}

/// `metrics`: Prometheus `/metrics` on the HTTP port with RocketMQ's RIP-46 names, optionally
/// pushed with OTLP too, and the SDKs' own OTLP metrics received on the gRPC port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Off: no `/metrics`, nothing recorded.
    pub enabled: bool,
    /// OTLP metrics push endpoint (e.g. `http://collector:4317`). Empty: pull only.
    pub otlp_endpoint: String,
    /// How often metrics are pushed to `otlpEndpoint`.
    #[serde(with = "humantime_serde")]
    pub otlp_interval: Duration,
    /// Receive the SDKs' own OTLP metrics (Settings.metric) and expose them on `/metrics`.
    pub client_metrics: bool,
    /// Cap on topic/group label pairs of the per-topic series; new pairs beyond it are
    /// counted under `_other_` (bounded cardinality).
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            otlp_endpoint: String::new(),
            otlp_interval: Duration::from_secs(30),
            client_metrics: false,
            max_series: crate::observability::metrics::DEFAULT_MAX_SERIES,
        }
    }
}

/// `tracing`: OpenTelemetry spans of each message's life on the server (messaging semantic
/// conventions), joined to the producer's trace and exported with OTLP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Off: no spans are made (messaging pays nothing).
    pub enabled: bool,
    /// OTLP endpoint: `http://host:4317` (gRPC) or `http://host:4318` (HTTP, `/v1/traces`).
    pub endpoint: String,
    /// `grpc` or `http` (OTLP/HTTP protobuf).
    pub protocol: String,
    /// Fraction of new traces sampled (0.0–1.0); a message whose producer sampled its trace
    /// follows the producer's decision.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Spans held for export; past it spans are dropped (and counted), never waited for.
    pub max_queue_size: usize,
    /// How long one export may take.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: "grpc".into(),
            sample_ratio: 1.0,
            service_name: "rmq-gateway".into(),
            max_queue_size: 8192,
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// `cluster`: several gateways sharing one PostgreSQL (`metadata.url`) and one bucket
/// (`storage.tiering`) as one cluster. Queues are spread over `shards` shards; each shard is
/// owned by one node at a time through a lease (with a fencing epoch) in PostgreSQL, and its
/// data continues from the object store and the manifest when it changes owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Off: one gateway on its own (every queue is local).
    pub enabled: bool,
    /// Unique per node: names its rows and its node-local log (journal, timers, half
    /// messages). Empty: the host name.
    pub node_id: String,
    /// `host:port` other nodes reach this node's gRPC port at (forwarding). Empty:
    /// `server.advertisedAddress` with `server.grpcServerPort`.
    pub peer_address: String,
    /// Shards the queues of every topic are spread over. Fixed for the life of the cluster
    /// (every node must use the same number).
    pub shards: u32,
    /// A shard whose owner has not renewed its lease for this long is taken over.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often a node renews its leases, heartbeats and looks at the membership.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// Unsealed data of a shard reaches the object store at least this often (what a node
    /// killed with its disk loses at most, for topics with local durability).
    #[serde(with = "humantime_serde")]
    pub tail_upload_interval: Duration,
    /// Bound of one request forwarded to another node.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Nodes call each other (forwarded requests, the peer service) over TLS. Needed when
    /// `server.tls.mode` is `enforcing`.
    pub peer_tls: bool,
    /// PEM file of the CA(s) that sign the nodes' certificates (`server.tls.certPath`), checked
    /// with the peer address's host as the name. Empty: any certificate is accepted (traffic
    /// is encrypted, the peer is not authenticated by its certificate).
    pub peer_ca_path: String,
    /// Shared by every node: a call of the peer service must carry it, so only nodes of the
    /// cluster can relay orphan checks or hand messages over. Empty: the peer service is open
    /// to whoever reaches the gRPC port. Sent in a header: use it with `peerTls`.
    pub secret: String,
}

impl ClusterConfig {
    /// `nodeId`, else the host name (`HOSTNAME`, `/proc/sys/kernel/hostname`) reduced to
    /// letters, digits, '-' and '_'.
    pub fn resolved_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default();
        let id: String =
            host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        if id.is_empty() { "node".into() } else { id }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            peer_address: String::new(),
            shards: 12,
            lease_ttl: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            tail_upload_interval: Duration::from_secs(1),
            forward_timeout: Duration::from_secs(30),
            peer_tls: false,
            peer_ca_path: String::new(),
            secret: String::new(),
        }
    }
}

/// Delay/timer messages (Apache `timerPrecisionMs`, `timerMaxDelaySec` is `limits.maxDelayTime`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TimerConfig {
    /// A scheduled message is delivered within this after its time (never before it).
    #[serde(with = "humantime_serde")]
    pub timer_precision: Duration,
    /// Width of one on-disk time bucket of the timer index; the next bucket is held in memory.
    #[serde(with = "humantime_serde")]
    pub timer_bucket: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self { timer_precision: Duration::from_millis(100), timer_bucket: Duration::from_secs(600) }
    }
}

/// What happens to a half message after its last orphan check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMaxAction {
    /// Rolled back (Apache's default outcome).
    Discard,
    /// Moved to `rmq_sys_trans_check_max` for an operator (Apache `TRANS_CHECK_MAX_TIME_TOPIC`).
    Keep,
}

/// Transactional messages (Apache `transactionTimeOut`, `transactionCheckInterval`,
/// `transactionCheckMax`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TransactionConfig {
    /// First orphan check this long after the half message, unless its producer set
    /// `orphaned_transaction_recovery_duration`.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub transaction_check_interval: Duration,
    /// Checks before giving up on a transaction.
    pub transaction_check_max: u32,
    pub transaction_check_max_action: CheckMaxAction,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        Self {
            transaction_timeout: Duration::from_secs(6),
            transaction_check_interval: Duration::from_secs(30),
            transaction_check_max: 15,
            transaction_check_max_action: CheckMaxAction::Discard,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address both listeners bind to.
    pub bind_address: String,
    /// gRPC port (plaintext h2c and TLS on the same port).
    pub grpc_server_port: u16,
    /// HTTP port: /healthz, /readyz.
    pub http_server_port: u16,
    /// Host advertised in routes. Empty: echo the address the client used to reach us.
    pub advertised_address: String,
    /// Name of the (single) broker in routes.
    pub broker_name: String,
    pub tls: TlsConfig,
    /// Largest gRPC request accepted (bytes).
    pub grpc_max_inbound_message_size: usize,
    /// How long graceful shutdown waits for in-flight RPCs.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A client not seen (no request, heartbeat or Telemetry message) for this long is
    /// forgotten: its long polls end, its auto-renewed messages are released and its state is
    /// dropped (Apache `channelExpiredTimeout`).
    #[serde(with = "humantime_serde")]
    pub channel_expired_timeout: Duration,
    /// Most gRPC connections open at once; beyond it new connections wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams (RPCs) per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Threads serving gRPC connections, each connection on one of them from start to end
    /// (`0`: the main runtime's workers serve them). Default: one per CPU.
    pub io_threads: usize,
    /// Whether each I/O thread is pinned to one CPU of those the process may run on (default
    /// `off`: on the 2-CPU VM of docs/benchmarks.md pinning lowered the half-load tails but cost
    /// SYNC_FLUSH sends CPU and peak throughput).
    pub io_thread_affinity: IoThreadAffinity,
    /// The `body_digest` of delivered messages.
    pub body_digest: BodyDigestPolicy,
}

/// Pinning the gRPC I/O threads (`server.ioThreadAffinity`): thread `i` runs only on the
/// `i`-th CPU (in turn) of the process's CPU set, as Seastar-style servers pin their shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoThreadAffinity {
    /// Pinned when the process may run on exactly as many CPUs as there are I/O threads (a
    /// cpuset of its own, say `docker --cpuset-cpus` or Kubernetes' static CPU manager, or a
    /// machine of that size); not when it sees more CPUs than it has threads (a CPU quota on a
    /// larger machine, where the CPUs it sees are shared).
    Auto,
    /// Always pinned (to the process's CPUs in turn when there are more threads than CPUs).
    On,
    /// Never: the kernel's scheduler places them.
    Off,
}

/// Which `body_digest` delivered messages carry (every SDK that checks it flags a mismatch as
/// corrupted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyDigestPolicy {
    /// A CRC32 rendered as the client's SDK compares it (Java, Go, Python, Rust), MD5 for the
    /// others: a CRC32 costs a small fraction of an MD5.
    Auto,
    /// MD5 to every client, as Apache's proxy sends it.
    Md5,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0".into(),
            grpc_server_port: 8081,
            http_server_port: 8080,
            advertised_address: String::new(),
            broker_name: "rmq-gateway".into(),
            tls: TlsConfig::default(),
            grpc_max_inbound_message_size: 130 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            channel_expired_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            max_concurrent_streams: 512,
            io_threads: std::thread::available_parallelism().map_or(1, usize::from),
            io_thread_affinity: IoThreadAffinity::Off,
            body_digest: BodyDigestPolicy::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only.
    Disabled,
    /// TLS and plaintext on the same port (the first bytes decide).
    Permissive,
    /// TLS only.
    Enforcing,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM certificate chain. Empty: a self-signed certificate is generated at start.
    pub cert_path: String,
    /// PEM private key (required with certPath).
    pub key_path: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { mode: TlsMode::Permissive, cert_path: String::new(), key_path: String::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum FlushDiskType {
    #[serde(rename = "SYNC_FLUSH")]
    SyncFlush,
    #[serde(rename = "ASYNC_FLUSH")]
    AsyncFlush,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageSection {
    /// Where the commit log, indexes and (by default) the SQLite metadata live.
    pub data_dir: PathBuf,
    /// SYNC_FLUSH: acknowledge after fsync. ASYNC_FLUSH: after the write.
    pub flush_disk_type: FlushDiskType,
    /// fsync interval in ASYNC_FLUSH mode.
    #[serde(with = "humantime_serde")]
    pub flush_interval_commit_log: Duration,
    /// Size of one commit-log segment file (bytes).
    pub mapped_file_size_commit_log: u64,
    /// Sealed segments older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub file_reserved_time: Duration,
    /// Disk usage (percent) above which the oldest segments are deleted early.
    pub disk_max_used_space_ratio: u8,
    /// SYNC_FLUSH on ext4 or XFS: bytes past the end of the log kept zero-filled in the
    /// background, so group commits' fdatasyncs mostly write no block-allocation metadata (the
    /// log's bytes then reach the disk twice). 0 turns it off; at least 2 MiB otherwise.
    pub zero_ahead_bytes: u64,
    /// Bytes of the newest fsynced commit log left in the page cache; older log pages are
    /// dropped from it after every checkpoint (readers further behind read from the disk).
    /// 0 leaves the page cache to the kernel.
    pub page_cache_window_bytes: u64,
    /// Offload of sealed segments to an object store, and cold reads from it.
    pub tiering: TieringConfig,
}

/// `storage.tiering`: sealed segments go to an object store; reads below the local log start
/// are served from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TieringConfig {
    /// Off: segments stay local and local retention deletes them.
    pub enabled: bool,
    pub object_store: ObjectStoreConfig,
    /// Names this node's log in the manifest and in object keys (one per gateway node).
    pub log_id: String,
    /// Remote retention: objects whose newest message is older than this are deleted (with
    /// their manifest rows) once the local copy is gone too.
    #[serde(with = "humantime_serde")]
    pub file_reserved_time: Duration,
    /// How often the uploader looks for newly sealed segments.
    #[serde(with = "humantime_serde")]
    pub upload_interval: Duration,
    /// Longest wait between retries of a failed upload (backoff doubles from 200 ms up to it).
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Memory bound of the cold-read cache (bytes).
    pub read_cache_bytes: usize,
    /// Bytes one cold-read GET fetches from the first message wanted on.
    pub read_ahead_bytes: usize,
    /// Objects without a manifest row are deleted once older than this.
    #[serde(with = "humantime_serde")]
    pub orphan_grace_period: Duration,
    /// How often remote retention and the orphan sweep run.
    #[serde(with = "humantime_serde")]
    pub remote_retention_interval: Duration,
}

impl Default for TieringConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            object_store: ObjectStoreConfig::default(),
            log_id: "local".into(),
            file_reserved_time: Duration::from_secs(72 * 3600),
            upload_interval: Duration::from_secs(5),
            retry_max_backoff: Duration::from_secs(30),
            read_cache_bytes: 64 << 20,
            read_ahead_bytes: 4 << 20,
            orphan_grace_period: Duration::from_secs(3600),
            remote_retention_interval: Duration::from_secs(60),
        }
    }
}

/// `storage.tiering.objectStore`: where tiered segments are kept. Its `Debug` hides the secret key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// `dir` (a local directory; no service needed) or `s3` (AWS S3 or an S3-compatible server).
    #[serde(rename = "type")]
    pub kind: String,
    /// `dir`: the directory. Empty: `<dataDir>/objects`.
    pub dir: PathBuf,
    /// Key prefix inside the bucket (or directory).
    pub prefix: String,
    /// `s3`: the bucket.
    pub bucket: String,
    /// `s3`: the region. Empty: from the AWS environment / profile (`us-east-1` if none).
    pub region: String,
    /// `s3`: an endpoint URL for S3-compatible servers. Empty: AWS's.
    pub endpoint: String,
    /// `s3`: path-style addressing (`endpoint/bucket/key`), as most S3-compatible servers need.
    pub path_style: bool,
    /// `s3`: static credentials. Empty: the AWS credential chain (environment, profile, IMDS…).
    pub access_key: String,
    /// Printed (`check-config`, `Debug`) as `<redacted>`.
    #[serde(serialize_with = "redacted")]
    pub secret_key: String,
}

/// Serializes a secret as `<redacted>` (empty stays empty, so "not set" remains visible).
fn redacted<S: serde::Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { "<redacted>" })
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("kind", &self.kind)
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &if self.secret_key.is_empty() { "" } else { "<redacted>" })
            .finish()
    }
}

impl ObjectStoreConfig {
    /// Checks the keys of `storage.tiering.objectStore`: the failing key and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.kind.as_str() {
            "dir" => {}
            "s3" => {
                let b = &self.bucket;
                if b.is_empty() {
                    return Err(("storage.tiering.objectStore.bucket", "is required for type s3".into()));
                }
                let name_ok = (3..=63).contains(&b.len())
                    && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
                    && b.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && b.ends_with(|c: char| c.is_ascii_alphanumeric());
                if !name_ok {
                    return Err((
                        "storage.tiering.objectStore.bucket",
                        format!("`{b}` is not a valid bucket name (3-63 of a-z 0-9 . -)"),
                    ));
                }
                let http = self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://");
                if !self.endpoint.is_empty() && !http {
                    return Err((
                        "storage.tiering.objectStore.endpoint",
                        format!("`{}` must be an http:// or https:// URL", self.endpoint),
                    ));
                }
                if self.access_key.is_empty() != self.secret_key.is_empty() {
                    return Err((
                        "storage.tiering.objectStore.secretKey",
                        "accessKey and secretKey must be set together (or both left empty for the AWS credential chain)"
                            .into(),
                    ));
                }
            }
            other => {
                return Err(("storage.tiering.objectStore.type", format!("`{other}` is not one of dir, s3")));
            }
        }
        if self.prefix.contains("..") || self.prefix.contains('\\') {
            return Err((
                "storage.tiering.objectStore.prefix",
                format!("`{}` must not contain `..` or `\\`", self.prefix),
            ));
        }
        Ok(())
    }
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            kind: "dir".into(),
            dir: PathBuf::new(),
            prefix: String::new(),
            bucket: String::new(),
            region: String::new(),
            endpoint: String::new(),
            path_style: false,
            access_key: String::new(),
            secret_key: String::new(),
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            flush_disk_type: FlushDiskType::SyncFlush,
            flush_interval_commit_log: Duration::from_millis(500),
            mapped_file_size_commit_log: 1024 * 1024 * 1024,
            file_reserved_time: Duration::from_secs(72 * 3600),
            disk_max_used_space_ratio: 75,
            zero_ahead_bytes: 8 * 1024 * 1024,
            page_cache_window_bytes: 1024 * 1024 * 1024,
            tiering: TieringConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB[?sslmode=require]`
    /// (`postgresql://` too). Empty: `sqlite://<dataDir>/meta.db`.
    pub url: String,
    /// PostgreSQL: connections in the pool.
    pub max_connections: u32,
    /// PostgreSQL: bound on opening the store at start (first connection and migrations).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL: how long a query waits for a pooled connection before it fails (and is retried
    /// later by the progress flusher).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// PostgreSQL: server-side bound on one statement; `0s`: none.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        let d = crate::metadata::StoreOptions::default();
        Self {
            url: String::new(),
            max_connections: d.max_connections,
            connect_timeout: d.connect_timeout,
            acquire_timeout: d.acquire_timeout,
            statement_timeout: d.statement_timeout,
        }
    }
}

impl MetadataConfig {
    /// The pool and timeout settings handed to the store.
    pub fn store_options(&self) -> crate::metadata::StoreOptions {
        crate::metadata::StoreOptions {
            node_id: String::new(),
            max_connections: self.max_connections,
            connect_timeout: self.connect_timeout,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Create unknown topics on first use (NORMAL type, defaultTopicQueueNums queues).
    pub auto_create_topic_enable: bool,
    /// Queue count of auto-created topics.
    pub default_topic_queue_nums: u32,
    /// Create these topics at start if missing.
    pub create: Vec<TopicSpec>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self { auto_create_topic_enable: false, default_topic_queue_nums: 8, create: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    #[serde(default)]
    pub queue_nums: Option<u32>,
    /// NORMAL, FIFO, DELAY, TRANSACTION, PRIORITY or MIXED.
    #[serde(default = "default_message_type")]
    pub message_type: String,
    /// When a send is acknowledged: `local` (after the local flush, `storage.flushDiskType`)
    /// or `s3` (after the data is also in the object store: survives the loss of the node's
    /// disk; needs `storage.tiering`).
    #[serde(default = "default_durability")]
    pub durability: String,
}

fn default_durability() -> String {
    "local".into()
}

fn default_message_type() -> String {
    "NORMAL".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message body (bytes); exactly this size passes.
    pub max_message_size: usize,
    /// Σ UTF-8 bytes of user property keys + values + tag + keys.
    pub max_user_property_size: usize,
    /// Most user properties per message.
    pub user_property_max_num: usize,
    /// Message group must be shorter than this (bytes).
    pub max_message_group_size: usize,
    /// Furthest delivery time a delay message may ask for.
    #[serde(with = "humantime_serde")]
    pub max_delay_time: Duration,
    /// Most messages in one SendMessage request.
    pub max_batch_messages: usize,
    /// Most bytes of sends on their way to the commit log, gateway-wide; beyond it a send
    /// waits up to `inflightWaitTime`, then gets TOO_MANY_REQUESTS.
    pub max_inflight_bytes: usize,
    /// The same bound per client connection.
    pub max_inflight_bytes_per_connection: usize,
    /// How long a send over a bound waits for room before TOO_MANY_REQUESTS (Apache
    /// `waitTimeMillsInSendQueue`).
    #[serde(with = "humantime_serde")]
    pub inflight_wait_time: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 4 * 1024 * 1024,
            max_user_property_size: 16 * 1024,
            user_property_max_num: 128,
            max_message_group_size: 64,
            max_delay_time: Duration::from_secs(40 * 24 * 3600),
            max_batch_messages: 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_inflight_bytes_per_connection: 64 * 1024 * 1024,
            inflight_wait_time: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Sent to producers in Settings: send attempts.
    pub max_attempts: i32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub backoff_multiplier: f32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            backoff_multiplier: 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsumeFromWhere {
    /// New groups start at the queue tail, except on queues never trimmed by retention, which
    /// they read from offset 0 (as Apache RocketMQ does while a young queue is in memory).
    #[serde(rename = "CONSUME_FROM_LAST_OFFSET")]
    LastOffset,
    /// New groups start at the oldest retained message.
    #[serde(rename = "CONSUME_FROM_FIRST_OFFSET")]
    FirstOffset,
}

/// How a consumer group's clients share its messages (Apache `MessageModel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MessageModel {
    /// The group's clients share the messages: each is consumed by one of them.
    #[default]
    #[serde(rename = "CLUSTERING")]
    Clustering,
    /// Every client of the group gets every message, with its own progress.
    #[serde(rename = "BROADCASTING")]
    Broadcasting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Where a consumer group seen for the first time starts.
    pub consume_from_where: ConsumeFromWhere,
    /// Retries before a message goes to %DLQ%{group}; delivery attempts = retryMaxTimes + 1.
    pub retry_max_times: i32,
    /// Invisible time for auto-renewed (PushConsumer) receives.
    #[serde(with = "humantime_serde")]
    pub default_invisible_time: Duration,
    #[serde(with = "humantime_serde")]
    pub min_invisible_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_invisible_time: Duration,
    #[serde(with = "humantime_serde")]
    pub min_long_polling_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_long_polling_timeout: Duration,
    /// Time kept back from the client's deadline so a long poll answers before it expires.
    #[serde(with = "humantime_serde")]
    pub long_polling_reserve: Duration,
    /// Most messages returned by one ReceiveMessage; also sent to consumers in Settings.
    pub receive_batch_size: i32,
    /// Retry delays sent to consumers (customized backoff), one per attempt, as in RocketMQ's
    /// `messageDelayLevel`.
    pub retry_backoff: String,
    /// How often consumed progress is written to the metadata store.
    #[serde(with = "humantime_serde")]
    pub progress_flush_interval: Duration,
    /// Broadcast groups: a client's own progress is dropped once it has not received for this
    /// long (a client that comes back later starts again per consumeFromWhere).
    #[serde(with = "humantime_serde")]
    pub broadcast_retire_after: Duration,
    /// Create an unknown consumer group on first use with the defaults above (Apache
    /// `autoCreateSubscriptionGroup`); off: such a group gets CONSUMER_GROUP_NOT_FOUND.
    pub auto_create_subscription_group: bool,
    /// Most auto-created consumer groups; beyond it an unknown group gets
    /// CONSUMER_GROUP_NOT_FOUND. Groups created explicitly (`groups`, admin API) do not count.
    pub max_auto_created_groups: usize,
    /// A consumer group's state on a queue with nothing in flight, unused this long, is
    /// dropped from memory (its position is kept).
    #[serde(with = "humantime_serde")]
    pub queue_state_idle_time: Duration,
    /// Consumer groups created or updated at start (Apache `updateSubGroup`).
    pub groups: Vec<GroupSpec>,
}

/// A consumer group's configuration (`consumer.groups[]`, admin `PUT /api/v1/groups/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    /// Orderly (FIFO) consumption: a message group's next message is handed out only after the
    /// previous one is acked or dead-lettered; consumers are told `fifo = true` in Settings.
    #[serde(default)]
    pub consume_message_orderly: bool,
    /// Retries before the DLQ; `consumer.retryMaxTimes` when absent.
    #[serde(default)]
    pub retry_max_times: Option<i32>,
    /// The group's retry delays (`"1s 5s 30s"`), sent to its consumers; `consumer.retryBackoff`
    /// when absent.
    #[serde(default)]
    pub retry_backoff: Option<String>,
    /// CLUSTERING (default) or BROADCASTING.
    #[serde(default)]
    pub message_model: MessageModel,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            consume_from_where: ConsumeFromWhere::LastOffset,
            retry_max_times: 16,
            default_invisible_time: Duration::from_secs(60),
            min_invisible_time: Duration::from_secs(10),
            max_invisible_time: Duration::from_secs(12 * 3600),
            min_long_polling_timeout: Duration::from_secs(5),
            max_long_polling_timeout: Duration::from_secs(20),
            long_polling_reserve: Duration::from_millis(800),
            receive_batch_size: 32,
            retry_backoff: "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".into(),
            progress_flush_interval: Duration::from_millis(200),
            broadcast_retire_after: Duration::from_secs(24 * 3600),
            auto_create_subscription_group: true,
            max_auto_created_groups: 10_000,
            queue_state_idle_time: Duration::from_secs(120),
            groups: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `rmq_gateway=debug,info`. RUST_LOG wins when set.
    pub level: String,
    /// `text` (human) or `json` (one JSON object per line).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

impl ConsumerConfig {
    /// The retry policy of `retryBackoff`: delays (`"1s 5s 30s"`) or
    /// `"exponential <initial> <multiplier> <max>"`.
    pub fn retry_backoff(&self) -> Result<crate::broker::settings::Backoff, String> {
        crate::broker::settings::Backoff::parse(&self.retry_backoff)
    }
}

impl Config {
    /// Defaults ← YAML file (if any) ← environment overrides, then [`Config::validate`].
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut doc = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
                if text.trim().is_empty() {
                    Value::Mapping(Default::default())
                } else {
                    serde_norway::from_str::<Value>(&text)
                        .map_err(|e| ConfigError::Parse(format!("{}: {e}", p.display())))?
                }
            }
            None => Value::Mapping(Default::default()),
        };
        if doc.is_null() {
            doc = Value::Mapping(Default::default());
        }
        let schema = serde_norway::to_value(Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
        // Overrides always name `SECTION__KEY`; other RMQ_GATEWAY_* variables (such as
        // RMQ_GATEWAY_CONFIG, the config file path) are not configuration keys.
        let mut env: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__")).collect();
        env.sort();
        for (var, value) in env {
            apply_env_override(&mut doc, &schema, &var, &value)?;
        }
        let config: Config = serde_norway::from_value(doc).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field and range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, reason: reason.into() })
        }
        if self.metrics.enabled && self.metrics.max_series == 0 {
            return invalid("metrics.maxSeries", "must be at least 1");
        }
        if self.metrics.enabled && !self.metrics.otlp_endpoint.is_empty() {
            if !self.metrics.otlp_endpoint.starts_with("http://") {
                return invalid("metrics.otlpEndpoint", "must be an OTLP/gRPC URL `http://host:port` (plaintext)");
            }
            if self.metrics.otlp_interval < Duration::from_secs(1) {
                return invalid("metrics.otlpInterval", "must be at least 1s");
            }
        }
        if !matches!(self.tracing.protocol.as_str(), "grpc" | "http") {
            return invalid("tracing.protocol", "must be `grpc` or `http`");
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return invalid("tracing.sampleRatio", "must be between 0.0 and 1.0");
        }
        if self.tracing.enabled && self.tracing.max_queue_size == 0 {
            return invalid("tracing.maxQueueSize", "must be at least 1");
        }
        if self.tracing.enabled && !self.tracing.endpoint.starts_with("http://") {
            return invalid("tracing.endpoint", "must be an http:// URL (plaintext; TLS through a local collector)");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid("log.format", "must be `text` or `json`");
        }
        if self.server.grpc_server_port == self.server.http_server_port && self.server.grpc_server_port != 0 {
            return invalid("server.httpServerPort", "must differ from server.grpcServerPort");
        }
        if self.server.bind_address.parse::<std::net::IpAddr>().is_err() {
            return invalid("server.bindAddress", format!("`{}` is not an IP address", self.server.bind_address));
        }
        let tls = &self.server.tls;
        if tls.cert_path.is_empty() != tls.key_path.is_empty() {
            return invalid("server.tls.keyPath", "certPath and keyPath must be set together");
        }
        if self.storage.mapped_file_size_commit_log < 1024 * 1024 {
            return invalid("storage.mappedFileSizeCommitLog", "must be at least 1 MiB");
        }
        if (self.storage.mapped_file_size_commit_log as u128) < self.limits.max_message_size as u128 + 64 * 1024 {
            return invalid(
                "storage.mappedFileSizeCommitLog",
                "must exceed limits.maxMessageSize by at least 64 KiB so the largest message fits",
            );
        }
        if !(1..=99).contains(&self.storage.disk_max_used_space_ratio) {
            return invalid("storage.diskMaxUsedSpaceRatio", "must be between 1 and 99 (percent)");
        }
        if self.storage.flush_interval_commit_log.is_zero() {
            return invalid("storage.flushIntervalCommitLog", "must be greater than 0");
        }
        if let Err((key, reason)) = self.storage.tiering.object_store.check() {
            return invalid(key, reason);
        }
        let t = &self.storage.tiering;
        if t.enabled {
            if t.log_id.is_empty() || !t.log_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return invalid("storage.tiering.logId", "must be non-empty letters, digits, '-' or '_'");
            }
            if t.read_ahead_bytes < 64 * 1024 {
                return invalid("storage.tiering.readAheadBytes", "must be at least 64 KiB");
            }
            if t.read_cache_bytes < t.read_ahead_bytes {
                return invalid("storage.tiering.readCacheBytes", "must be at least readAheadBytes");
            }
            if t.upload_interval.is_zero() || t.remote_retention_interval.is_zero() || t.retry_max_backoff.is_zero() {
                return invalid(
                    "storage.tiering",
                    "uploadInterval, remoteRetentionInterval and retryMaxBackoff must be greater than 0",
                );
            }
        }
        for t in &self.topics.create {
            match crate::metadata::Durability::parse(&t.durability) {
                None => {
                    return invalid("topics.create[].durability", format!("`{}`: expected local or s3", t.durability));
                }
                Some(crate::metadata::Durability::ObjectStore) if !self.storage.tiering.enabled => {
                    return invalid(
                        "topics.create[].durability",
                        format!("topic `{}`: durability s3 needs storage.tiering.enabled", t.name),
                    );
                }
                Some(_) => {}
            }
        }
        let c = &self.cluster;
        if c.enabled {
            if crate::metadata::StoreKind::of_url(&self.metadata.url) != Some(crate::metadata::StoreKind::Postgres) {
                return invalid(
                    "metadata.url",
                    "cluster.enabled needs a postgres:// metadata store shared by every node",
                );
            }
            if !self.storage.tiering.enabled {
                return invalid(
                    "storage.tiering.enabled",
                    "cluster.enabled needs tiering on a bucket shared by every node",
                );
            }
            if self.server.tls.mode == TlsMode::Enforcing && !c.peer_tls {
                return invalid(
                    "server.tls.mode",
                    "`enforcing` in a cluster needs cluster.peerTls: nodes forward requests to each other's gRPC port, in plaintext without it",
                );
            }
            if self.server.tls.mode == TlsMode::Disabled && c.peer_tls {
                return invalid("cluster.peerTls", "needs server.tls.mode `permissive` or `enforcing` on every node");
            }
            if !c.peer_ca_path.is_empty() && !c.peer_tls {
                return invalid("cluster.peerCaPath", "is used only with cluster.peerTls");
            }
            if !c.secret.bytes().all(|b| b.is_ascii_graphic()) {
                return invalid(
                    "cluster.secret",
                    "must be printable ASCII without spaces (it travels in a gRPC header)",
                );
            }
            if !(1..=1024).contains(&c.shards) {
                return invalid("cluster.shards", "must be between 1 and 1024");
            }
            if !c.node_id.is_empty() && !c.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return invalid("cluster.nodeId", "must be letters, digits, '-' or '_'");
            }
            if c.renew_interval.is_zero() || c.lease_ttl < c.renew_interval * 3 {
                return invalid("cluster.leaseTtl", "must be at least 3 × cluster.renewInterval (and that above 0)");
            }
            if c.tail_upload_interval.is_zero() || c.forward_timeout.is_zero() {
                return invalid("cluster", "tailUploadInterval and forwardTimeout must be greater than 0");
            }
        }
        if !self.metadata.url.is_empty() && crate::metadata::StoreKind::of_url(&self.metadata.url).is_none() {
            return invalid(
                "metadata.url",
                format!(
                    "`{}`: expected sqlite://PATH, postgres://… or postgresql://…",
                    crate::metadata::redact_url(&self.metadata.url)
                ),
            );
        }
        if !(1..=1000).contains(&self.metadata.max_connections) {
            return invalid("metadata.maxConnections", "must be between 1 and 1000");
        }
        if self.metadata.connect_timeout.is_zero() {
            return invalid("metadata.connectTimeout", "must be greater than 0");
        }
        if self.metadata.acquire_timeout.is_zero() {
            return invalid("metadata.acquireTimeout", "must be greater than 0");
        }
        if self.topics.default_topic_queue_nums == 0 || self.topics.default_topic_queue_nums > 1024 {
            return invalid("topics.defaultTopicQueueNums", "must be between 1 and 1024");
        }
        if self.limits.max_message_size == 0 {
            return invalid("limits.maxMessageSize", "must be greater than 0");
        }
        if self.limits.max_batch_messages == 0 {
            return invalid("limits.maxBatchMessages", "must be greater than 0");
        }
        if self.limits.max_inflight_bytes == 0 {
            return invalid("limits.maxInflightBytes", "must be greater than 0");
        }
        if self.limits.max_inflight_bytes_per_connection == 0 {
            return invalid("limits.maxInflightBytesPerConnection", "must be greater than 0");
        }
        if self.limits.inflight_wait_time > Duration::from_secs(60) {
            return invalid("limits.inflightWaitTime", "must not exceed 60s");
        }
        if self.server.channel_expired_timeout < Duration::from_secs(1) {
            return invalid("server.channelExpiredTimeout", "must be at least 1s");
        }
        if self.server.max_connections == 0 {
            return invalid("server.maxConnections", "must be greater than 0");
        }
        if self.server.max_concurrent_streams == 0 {
            return invalid("server.maxConcurrentStreams", "must be greater than 0");
        }
        if self.server.io_threads > 1024 {
            return invalid("server.ioThreads", "must be at most 1024 (0: the main runtime serves connections)");
        }
        if self.consumer.queue_state_idle_time < Duration::from_secs(1) {
            return invalid("consumer.queueStateIdleTime", "must be at least 1s");
        }
        let c = &self.consumer;
        if c.min_invisible_time > c.max_invisible_time {
            return invalid("consumer.minInvisibleTime", "must not exceed consumer.maxInvisibleTime");
        }
        if c.min_long_polling_timeout > c.max_long_polling_timeout {
            return invalid("consumer.minLongPollingTimeout", "must not exceed consumer.maxLongPollingTimeout");
        }
        if !(1..=1024).contains(&c.receive_batch_size) {
            return invalid("consumer.receiveBatchSize", "must be between 1 and 1024");
        }
        if c.retry_max_times < 0 {
            return invalid("consumer.retryMaxTimes", "must not be negative");
        }
        if let Err(e) = self.consumer.retry_backoff() {
            return invalid("consumer.retryBackoff", e);
        }
        if c.progress_flush_interval.is_zero() {
            return invalid("consumer.progressFlushInterval", "must be greater than 0");
        }
        let t = &self.timer;
        if t.timer_precision < Duration::from_millis(1) || t.timer_precision > Duration::from_secs(10) {
            return invalid("timer.timerPrecision", "must be between 1ms and 10s");
        }
        if t.timer_bucket < t.timer_precision || t.timer_bucket > Duration::from_secs(24 * 3600) {
            return invalid("timer.timerBucket", "must be between timer.timerPrecision and 24h");
        }
        if self.limits.max_delay_time > Duration::from_secs(100 * 365 * 24 * 3600) {
            return invalid("limits.maxDelayTime", "must not exceed 100 years");
        }
        if self.transaction.transaction_check_interval < Duration::from_millis(100) {
            return invalid("transaction.transactionCheckInterval", "must be at least 100ms");
        }
        if self.producer.max_attempts < 1 {
            return invalid("producer.maxAttempts", "must be at least 1");
        }
        if self.producer.backoff_multiplier < 1.0 {
            return invalid("producer.backoffMultiplier", "must be at least 1");
        }
        for t in &self.topics.create {
            if t.queue_nums == Some(0) {
                return invalid("topics.create[].queueNums", format!("topic `{}`: must be at least 1", t.name));
            }
        }
        for g in &self.consumer.groups {
            if g.retry_max_times.is_some_and(|r| r < 0) {
                return invalid("consumer.groups[].retryMaxTimes", format!("group `{}`: must not be negative", g.name));
            }
        }
        Ok(())
    }

    /// The metadata store URL, defaulting to SQLite inside the data dir.
    pub fn metadata_url(&self) -> String {
        if self.metadata.url.is_empty() {
            format!("sqlite://{}", self.storage.data_dir.join("meta.db").display())
        } else {
            self.metadata.url.clone()
        }
    }
}

fn normalize(s: &str) -> String {
    s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

/// Sets the key named by `var` (`RMQ_GATEWAY_SECTION__KEY`) in `doc`, resolving names against
/// the default config's shape in `schema`.
fn apply_env_override(doc: &mut Value, schema: &Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_err = |reason: String| ConfigError::Env { var: var.to_string(), reason };
    let path = &var[ENV_PREFIX.len()..];
    let segments: Vec<&str> = path.split("__").collect();
    let mut schema_node = schema;
    let mut doc_node = doc;
    for (i, seg) in segments.iter().enumerate() {
        let Value::Mapping(schema_map) = schema_node else {
            return Err(env_err(format!("`{seg}` is below a key that is not a section")));
        };
        let Some((key, child_schema)) =
            schema_map.iter().find(|(k, _)| k.as_str().is_some_and(|k| normalize(k) == normalize(seg)))
        else {
            return Err(env_err(format!("unknown configuration key `{seg}`")));
        };
        if !doc_node.is_mapping() {
            *doc_node = Value::Mapping(Default::default());
        }
        let Value::Mapping(doc_map) = doc_node else {
            return Err(env_err("internal: not a mapping".into()));
        };
        let last = i + 1 == segments.len();
        if last {
            let parsed: Value =
                serde_norway::from_str(value).map_err(|e| env_err(format!("cannot parse `{value}`: {e}")))?;
            // Keep strings strings: `advertisedAddress=10` should not become a number.
            let parsed = match (child_schema, &parsed) {
                (Value::String(_), v) if !v.is_string() => Value::String(value.to_string()),
                _ => parsed,
            };
            doc_map.insert(key.clone(), parsed);
            return Ok(());
        }
        schema_node = child_schema;
        doc_node = doc_map.entry(key.clone()).or_insert(Value::Mapping(Default::default()));
    }
    Err(env_err("empty key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.server.grpc_server_port, 8081);
        assert_eq!(c.storage.flush_disk_type, FlushDiskType::SyncFlush);
        assert_eq!(c.limits.max_message_size, 4 * 1024 * 1024);
    }

    #[test]
    fn io_thread_affinity_parses_and_defaults_to_off() {
        assert_eq!(Config::default().server.io_thread_affinity, IoThreadAffinity::Off);
        for (text, want) in
            [("on", IoThreadAffinity::On), ("off", IoThreadAffinity::Off), ("auto", IoThreadAffinity::Auto)]
        {
            let c = load_str(&format!("server:\n  ioThreadAffinity: {text}\n"), &[]).unwrap();
            assert_eq!(c.server.io_thread_affinity, want);
        }
        let c = load_str("", &[("RMQ_GATEWAY_SERVER__IO_THREAD_AFFINITY", "auto")]).unwrap();
        assert_eq!(c.server.io_thread_affinity, IoThreadAffinity::Auto);
        assert!(load_str("server:\n  ioThreadAffinity: pinned\n", &[]).is_err());
    }

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.yaml");
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert!(c.topics.auto_create_topic_enable);
    }

    #[test]
    fn production_object_store_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.yaml");
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        let store = &c.storage.tiering.object_store;
        assert_eq!((store.kind.as_str(), store.path_style), ("s3", false));
        assert!(store.access_key.is_empty() && store.secret_key.is_empty());
        assert!(c.metadata_url().starts_with("postgres://"));
    }

    #[test]
    fn production_example_parses_with_postgres() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.yaml");
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert!(c.metadata_url().starts_with("postgres://"));
        assert!(!c.topics.auto_create_topic_enable);
    }

    #[test]
    fn metadata_url_picks_the_store_and_pool_keys_are_checked() {
        for url in ["sqlite:///tmp/m.db", "postgres://u:p@h:5432/db?sslmode=require", "postgresql://h/db"] {
            let c = load_str(&format!("metadata:\n  url: \"{url}\"\n"), &[]).unwrap();
            assert_eq!(c.metadata_url(), url);
        }
        let c = load_str(
            "metadata:\n  maxConnections: 3\n  connectTimeout: 2s\n  acquireTimeout: 500ms\n  statementTimeout: 0s\n",
            &[("RMQ_GATEWAY_METADATA__URL", "postgres://h/db")],
        )
        .unwrap();
        let o = c.metadata.store_options();
        assert_eq!(
            (o.max_connections, o.connect_timeout, o.acquire_timeout, o.statement_timeout),
            (3, Duration::from_secs(2), Duration::from_millis(500), Duration::ZERO)
        );
        let e = load_str("metadata:\n  url: \"mysql://u:hunter2@h/db\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("metadata.url") && e.contains("postgres://") && !e.contains("hunter2"), "{e}");
        let e = load_str("metadata:\n  maxConnections: 0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("metadata.maxConnections"), "{e}");
        let e = load_str("metadata:\n  acquireTimeout: 0s\n", &[]).unwrap_err().to_string();
        assert!(e.contains("metadata.acquireTimeout"), "{e}");
    }

    #[test]
    fn yaml_and_env_override() {
        let c = load_str(
            "server:\n  grpcServerPort: 9000\nstorage:\n  flushDiskType: ASYNC_FLUSH\n  fileReservedTime: 1h\n",
            &[
                ("RMQ_GATEWAY_SERVER__HTTP_SERVER_PORT", "9001"),
                ("RMQ_GATEWAY_TOPICS__AUTO_CREATE_TOPIC_ENABLE", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.grpc_server_port, 9000);
        assert_eq!(c.server.http_server_port, 9001);
        assert_eq!(c.storage.flush_disk_type, FlushDiskType::AsyncFlush);
        assert_eq!(c.storage.file_reserved_time, Duration::from_secs(3600));
        assert!(c.topics.auto_create_topic_enable);
    }

    #[test]
    fn tiering_keys_load_and_are_checked() {
        let c = load_str(
            "storage:\n  tiering:\n    enabled: true\n    logId: node-1\n    fileReservedTime: 30d\n",
            &[("RMQ_GATEWAY_STORAGE__TIERING__READ_AHEAD_BYTES", "1048576")],
        )
        .unwrap();
        assert_eq!(c.storage.tiering.log_id, "node-1");
        assert_eq!(c.storage.tiering.file_reserved_time, Duration::from_secs(30 * 86400));
        assert_eq!(c.storage.tiering.read_ahead_bytes, 1 << 20);
        let e = load_str("storage:\n  tiering:\n    enabled: true\n    readAheadBytes: 10\n", &[]).unwrap_err();
        assert!(e.to_string().contains("storage.tiering.readAheadBytes"), "{e}");
        let e = load_str("storage:\n  tiering:\n    enabled: true\n    logId: a/b\n", &[]).unwrap_err();
        assert!(e.to_string().contains("storage.tiering.logId"), "{e}");
        // Off, nothing is checked.
        assert!(load_str("storage:\n  tiering:\n    readAheadBytes: 10\n", &[]).is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str("server:\n  grpcServerPrt: 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("grpcServerPrt"), "{e}");
        let e = load_str("storage:\n  flushDiskType: SOMETIMES\n", &[]).unwrap_err().to_string();
        assert!(e.contains("SOMETIMES"), "{e}");
        let e = load_str("consumer:\n  receiveBatchSize: 0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("consumer.receiveBatchSize"), "{e}");
        assert!(load_str("", &[("RMQ_GATEWAY_CONFIG", "x"), ("RMQ_GATEWAY_BIN", "y")]).is_ok());
        let e = load_str("", &[("RMQ_GATEWAY_SERVER__NOPE", "1")]).unwrap_err().to_string();
        assert!(e.contains("RMQ_GATEWAY_SERVER__NOPE") && e.contains("NOPE"), "{e}");
        let e = load_str("limits:\n  maxInflightBytes: 0\n", &[]).unwrap_err().to_string();
        assert!(e.contains("limits.maxInflightBytes"), "{e}");
        let e = load_str("server:\n  channelExpiredTimeout: 10ms\n", &[]).unwrap_err().to_string();
        assert!(e.contains("server.channelExpiredTimeout"), "{e}");
        let e = load_str("storage:\n  fileReservedTime: soon\n", &[]).unwrap_err().to_string();
        assert!(e.contains("fileReservedTime") || e.contains("soon"), "{e}");
    }

    #[test]
    fn cluster_tls_needs_tls_between_nodes() {
        let mut c = Config::default();
        c.cluster.enabled = true;
        c.metadata.url = "postgres://u@127.0.0.1/db".into();
        c.storage.tiering.enabled = true;
        c.server.tls.mode = TlsMode::Enforcing;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.tls.mode") && e.contains("peerTls"), "{e}");
        c.cluster.peer_tls = true;
        c.validate().expect("enforcing TLS with TLS between nodes");
        c.server.tls.mode = TlsMode::Disabled;
        assert!(c.validate().unwrap_err().to_string().contains("cluster.peerTls"));
        c.server.tls.mode = TlsMode::Permissive;
        c.cluster.peer_tls = false;
        c.cluster.peer_ca_path = "/etc/ca.pem".into();
        assert!(c.validate().unwrap_err().to_string().contains("cluster.peerCaPath"));
        c.cluster.peer_ca_path.clear();
        c.cluster.secret = "two words".into();
        assert!(c.validate().unwrap_err().to_string().contains("cluster.secret"));
        c.cluster.secret = "s3cr3t!".into();
        c.validate().expect("a printable secret");
    }

    #[test]
    fn object_store_keys_are_checked() {
        let t = |body: &str| format!("storage:\n  tiering:\n    objectStore:\n{body}");
        let e = load_str(&t("      type: gcs\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("storage.tiering.objectStore.type") && e.contains("gcs"), "{e}");
        let e = load_str(&t("      type: s3\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("storage.tiering.objectStore.bucket"), "{e}");
        let e = load_str(&t("      type: s3\n      bucket: Bad_Name\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("storage.tiering.objectStore.bucket"), "{e}");
        let e = load_str(&t("      type: s3\n      bucket: b-1\n      endpoint: localhost:9000\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("storage.tiering.objectStore.endpoint"), "{e}");
        let e = load_str(&t("      type: s3\n      bucket: b-1\n      accessKey: a\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("secretKey"), "{e}");
        let c = load_str(
            &t("      type: s3\n      bucket: b-1\n      endpoint: http://127.0.0.1:9000\n      pathStyle: true\n      accessKey: a\n      secretKey: hush\n"),
            &[],
        )
        .unwrap();
        assert!(c.storage.tiering.object_store.path_style);
        let debug = format!("{:?}", c.storage.tiering.object_store);
        assert!(!debug.contains("hush") && debug.contains("<redacted>"), "{debug}");
        let printed = serde_norway::to_string(&c).unwrap();
        assert!(!printed.contains("hush") && printed.contains("<redacted>"), "{printed}");
        let c = load_str(
            &t("      type: s3\n      bucket: b-1\n      accessKey: a\n"),
            &[("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__SECRET_KEY", "from-env")],
        )
        .unwrap();
        assert_eq!(c.storage.tiering.object_store.secret_key, "from-env");
    }

    #[test]
    fn otlp_metrics_push_is_checked() {
        let mut c = Config::default();
        c.metrics.otlp_endpoint = "collector:4317".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("metrics.otlpEndpoint"), "{e}");
        c.metrics.otlp_endpoint = "http://collector:4317".into();
        c.metrics.otlp_interval = Duration::from_millis(10);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("metrics.otlpInterval"), "{e}");
        c.metrics.otlp_interval = Duration::from_secs(1);
        assert!(c.validate().is_ok());
    }
}
