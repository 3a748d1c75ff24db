//! Control data: topics, consumer groups, consumed progress, cluster secrets and the manifest
//! of log segments tiered to the object store, behind the [`MetadataStore`] trait. SQLite
//! ([`sqlite::SqliteMetadataStore`]) is the embedded default, PostgreSQL
//! ([`postgres::PostgresMetadataStore`]) the production store; [`open`] picks one by URL scheme.
//! Both pass the same [`conformance`] suite.
//!
//! Progress is written in batches ([`MetadataStore::save_progress`]), never once per message.
//! This module must not import protocol or HTTP crates.

pub mod cluster;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use cluster::{ClusterStore, HomeCut, HomeEntry, HomeRecord, LeaseRecord, NodeRecord};

/// The message type a topic accepts (RocketMQ topic attribute `message.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicType {
    Normal,
    Fifo,
    Delay,
    Transaction,
    /// Priority messages (RIP-80): higher priority delivered first within a queue.
    Priority,
    /// Accepts every type.
    Mixed,
}

impl TopicType {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicType::Normal => "NORMAL",
            TopicType::Fifo => "FIFO",
            TopicType::Delay => "DELAY",
            TopicType::Transaction => "TRANSACTION",
            TopicType::Priority => "PRIORITY",
            TopicType::Mixed => "MIXED",
        }
    }

    /// Parses RocketMQ's names, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "NORMAL" => Some(TopicType::Normal),
            "FIFO" => Some(TopicType::Fifo),
            "DELAY" => Some(TopicType::Delay),
            "TRANSACTION" => Some(TopicType::Transaction),
            "PRIORITY" => Some(TopicType::Priority),
            "MIXED" => Some(TopicType::Mixed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub queue_nums: u32,
    pub topic_type: TopicType,
    /// When a send to this topic is acknowledged.
    pub durability: Durability,
}

/// When a send is acknowledged (a per-topic option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// After the local flush (`storage.flushDiskType`): the data survives a process crash
    /// and, once uploaded, the loss of the node.
    #[default]
    Local,
    /// After the data is also in the object store and recorded in the manifest: survives the
    /// loss of the node's disk.
    ObjectStore,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::ObjectStore => "s3",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Some(Durability::Local),
            "s3" | "object_store" | "objectstore" => Some(Durability::ObjectStore),
            _ => None,
        }
    }
}

/// The writer of a manifest row in a cluster: the node and the epoch of its lease on the
/// shard whose log (`SegmentRecord::log_id`) the row belongs to. A row is recorded only if
/// that lease is still this node's with this epoch ([`MetadataError::Fenced`] otherwise), so
/// a node that lost a shard can no longer add to it, however slow or partitioned it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub node_id: String,
    pub epoch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: String,
    /// Orderly consumption (RocketMQ `consumeMessageOrderly`).
    pub fifo: bool,
    /// Retries before the DLQ (RocketMQ `retryMaxTimes`).
    pub retry_max_times: i32,
    /// The group's own retry delays (space-separated durations); `None`: the gateway default.
    pub retry_backoff: Option<String>,
    /// BROADCASTING: every consumer client gets every message (its own progress).
    pub broadcast: bool,
    /// Created on first use by a client (not by configuration or the admin API).
    pub auto_created: bool,
}

/// Consumed progress of one group on one queue: everything below `ack_floor` is done, plus
/// what lies above it — acknowledged offsets and deliveries in flight — encoded by the broker
/// (`acked_above`, opaque here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressRecord {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub ack_floor: u64,
    pub acked_above: Vec<u8>,
}

/// One sealed log segment kept in the object store: a row of the tiering manifest. The row is
/// the truth: an object without a row is an orphan (a crash between upload and record) and is
/// removed; a row is written only after its object is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// The message log the segment belongs to (one per gateway node; `""` for a single node).
    pub log_id: String,
    /// Log position of the segment's first byte.
    pub base: u64,
    /// Bytes of log data in the object (the segment's used length).
    pub size: u64,
    /// The object's key in the bucket.
    pub object_key: String,
    /// Size of the whole object (log data, then the index slices).
    pub object_size: u64,
    /// Store timestamps of the segment's first and last record.
    pub first_store_ms: i64,
    pub last_store_ms: i64,
    pub uploaded_at_ms: i64,
    /// The queues with messages in the segment, ordered by (topic, queue id).
    pub queues: Vec<SegmentQueue>,
}

/// The messages one queue has in a tiered segment: offsets `[first_offset, end_offset)`, whose
/// queue-index entries lie contiguously in the object from byte `index_pos` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentQueue {
    pub topic: String,
    pub queue_id: u32,
    pub first_offset: u64,
    pub end_offset: u64,
    pub index_pos: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store query failed: {0}")]
    Query(String),
    #[error("stored metadata is invalid: {0}")]
    Invalid(String),
    /// A fenced write from a node that no longer holds the lease it names.
    #[error("fenced: {0}")]
    Fenced(String),
}

pub type MetadataResult<T> = Result<T, MetadataError>;

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Creates the topic if absent; returns the stored record (the existing one if present).
    async fn create_topic(&self, topic: &TopicRecord) -> MetadataResult<TopicRecord>;
    async fn topic(&self, name: &str) -> MetadataResult<Option<TopicRecord>>;
    async fn list_topics(&self) -> MetadataResult<Vec<TopicRecord>>;
    /// Returns whether a topic was deleted.
    async fn delete_topic(&self, name: &str) -> MetadataResult<bool>;

    /// Creates the group if absent; returns the stored record.
    async fn create_group(&self, group: &GroupRecord) -> MetadataResult<GroupRecord>;
    /// Creates the group or replaces its configuration (`auto_created` included).
    async fn put_group(&self, group: &GroupRecord) -> MetadataResult<()>;
    /// Deletes the group if it is still auto-created; returns whether it was deleted.
    async fn retire_group(&self, name: &str) -> MetadataResult<bool>;
    async fn group(&self, name: &str) -> MetadataResult<Option<GroupRecord>>;
    async fn list_groups(&self) -> MetadataResult<Vec<GroupRecord>>;

    /// All stored progress (read once at start), and the consumer-journal offset it covers
    /// (this node's: [`StoreOptions::node_id`]). Progress rows are shared by every node,
    /// except those of the node-local system groups (`rmq_sys_*`, e.g. the transaction
    /// resolutions on the node's own half queue), which each node of a cluster keeps apart.
    async fn load_progress(&self) -> MetadataResult<(Vec<ProgressRecord>, u64)>;
    /// Upserts a batch of progress records and the journal offset they cover (this node's),
    /// atomically.
    async fn save_progress(&self, batch: &[ProgressRecord], journal_offset: u64) -> MetadataResult<()>;
    /// Forgets the progress of a consumer (`group` as stored in progress records) on every
    /// topic and queue; returns the rows removed.
    async fn delete_progress(&self, group: &str) -> MetadataResult<u64>;

    /// Records a tiered segment (after its object is complete). Idempotent: recording the same
    /// `(log_id, base)` again replaces the row and its queues atomically. The rows of the log
    /// that start inside the new row's range (`base < b < base + size`: the chunks a merged
    /// object replaces) are deleted in the same transaction.
    ///
    /// With a `fence` (cluster mode), the row is recorded only if the lease of the shard
    /// named by `segment.log_id` is held by `fence.node_id` with `fence.epoch`, checked in the
    /// same transaction; else [`MetadataError::Fenced`] and nothing is written. Stores that do
    /// not run clusters (SQLite) refuse every fenced write.
    async fn put_segment(&self, segment: &SegmentRecord, fence: Option<&Fence>) -> MetadataResult<()>;
    /// The tiered segments of a log, ordered by `base`.
    async fn list_segments(&self, log_id: &str) -> MetadataResult<Vec<SegmentRecord>>;
    /// Removes a segment's row (and its queues); returns whether it existed.
    async fn delete_segment(&self, log_id: &str, base: u64) -> MetadataResult<bool>;

    /// Returns the secret stored under `name`, storing `candidate` first if there is none.
    async fn secret(&self, name: &str, candidate: &[u8]) -> MetadataResult<Vec<u8>>;

    async fn close(&self);
}

/// Pool and timeout settings of a networked store (`metadata.*` in the configuration).
/// SQLite ignores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Names this node's per-node data (the journal offset of `load_progress` /
    /// `save_progress`, and the progress of its `rmq_sys_*` system groups): the nodes of a
    /// cluster share one store and differ here. Empty: the single-node rows.
    pub node_id: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Bound on opening the store at start: first connection and migrations.
    pub connect_timeout: Duration,
    /// How long a query waits for a pooled connection (and its connect) before failing.
    pub acquire_timeout: Duration,
    /// Server-side bound on one statement (`statement_timeout`); zero: none.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// The kind of store a metadata URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    /// `sqlite:…` → SQLite, `postgres://…`/`postgresql://…` → PostgreSQL, anything else `None`.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(StoreKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(StoreKind::Postgres)
        } else {
            None
        }
    }
}

/// Opens the store `url` names, running its migrations.
pub async fn open(url: &str, options: &StoreOptions) -> MetadataResult<Arc<dyn MetadataStore>> {
    match StoreKind::of_url(url) {
        Some(StoreKind::Sqlite) => {
            Ok(Arc::new(sqlite::SqliteMetadataStore::open(url).await?.with_node_id(&options.node_id)))
        }
        Some(StoreKind::Postgres) => Ok(Arc::new(postgres::PostgresMetadataStore::open(url, options).await?)),
        None => Err(unsupported_url(url)),
    }
}

/// [`open`], plus the same store as a [`ClusterStore`] when it can run a cluster
/// (PostgreSQL; `None` for SQLite).
pub async fn open_with_cluster(
    url: &str,
    options: &StoreOptions,
) -> MetadataResult<(Arc<dyn MetadataStore>, Option<Arc<dyn ClusterStore>>)> {
    match StoreKind::of_url(url) {
        Some(StoreKind::Postgres) => {
            let store = Arc::new(postgres::PostgresMetadataStore::open(url, options).await?);
            Ok((store.clone(), Some(store)))
        }
        Some(StoreKind::Sqlite) => Ok((open(url, options).await?, None)),
        None => Err(unsupported_url(url)),
    }
}

fn unsupported_url(url: &str) -> MetadataError {
    MetadataError::Unavailable(format!(
        "unsupported metadata url `{}`: expected sqlite://, postgres:// or postgresql://",
        redact_url(url)
    ))
}

/// `url` with the password of its user info replaced by `***` (for logs and errors).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_store_and_hide_passwords() {
        assert_eq!(StoreKind::of_url("sqlite:///tmp/m.db"), Some(StoreKind::Sqlite));
        assert_eq!(StoreKind::of_url("postgres://u@h/db"), Some(StoreKind::Postgres));
        assert_eq!(StoreKind::of_url("postgresql://u@h/db"), Some(StoreKind::Postgres));
        assert_eq!(StoreKind::of_url("mysql://u@h/db"), None);
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("sqlite:///x/meta.db"), "sqlite:///x/meta.db");
    }
}
