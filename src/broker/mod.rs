//! The broker domain: topics and routes (namespaced names), sending with backpressure,
//! POP-style receiving with invisibility, TAG and SQL92 filters, acks and redelivery, orderly
//! (FIFO) and broadcast groups, delay/timer and transactional messages, consumer progress and
//! offsets (resets, pull consumers) and client sessions.
//!
//! [`Broker`] is the one entry point of the protocol (`grpc/`) and admin (`admin/`) layers. It
//! sees storage and metadata only through [`MessageLog`] and [`MetadataStore`]; it never imports
//! tonic, axum or sqlx, and proto types never reach it. Time comes from an injected
//! [`Clock`], so timers and checks are tested without sleeping.

mod admission;
mod adoption;
mod attempts;
mod catalog;
pub mod consumer;
pub mod error;
pub mod filter;
mod handover;
mod journal;
pub mod message;
// After `message` (not in order) to keep clear of a neighbouring change on main.
pub mod lookup;
mod meta_health;
pub mod namespace;
mod observe;
mod offsets;
mod pop;
pub mod receipt;
mod relay;
mod sessions;
pub mod settings;
mod spans;
mod states;
mod timer;
mod transaction;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use admission::{AdmissionStats, Connection};
pub use adoption::{Adopted, home_resume_floors};
pub use meta_health::{MetadataDegraded, MetadataHealth};
pub use sessions::SessionStats;
pub use states::StateStats;

pub use catalog::{GroupInfo, TopicInfo, TopicKind};
pub use error::{BrokerError, BrokerResult};
pub use filter::Filter;
pub use handover::QueueHandOver;
pub use message::{DeliveredMessage, MessageType, OutgoingMessage};
pub use offsets::{
    OffsetChange, OffsetPolicy, PullRequest, PullResult, PullStatus, QueueProgress, ResetTarget, TopicProgress,
};
pub use pop::ReceiveRequest;
pub use relay::{ClientCommand, ClientReply, VerifyOutcome};
pub use settings::{Backoff, BrokerSettings};
pub use transaction::OrphanCheckRelay;
pub use transaction::{Resolution, ResolutionSource};

// The message trace lookup.
pub use lookup::{FoundMessage, GroupStatus, GroupSummary, MessageTrace, RecordRole, StoredAt, TimedEvent, TraceEvent};

use crate::clock::Clock;
use crate::fast_map::FastMap;
pub use crate::metadata::Durability;
use crate::metadata::{GroupRecord, MetadataStore, TopicRecord};
use crate::storage::{AppendMessage, MessageLog, TimerIndex};
use receipt::ReceiptCodec;

/// A topic as the broker knows it.
pub struct TopicEntry {
    pub record: TopicInfo,
    /// Woken after every append to the topic (long polling).
    arrivals: Notify,
    round_robin: AtomicU32,
    /// The name passes [`validate::validate_topic`] (checked once, when cached): a send to a
    /// cached topic need not check its name again.
    client_named: bool,
}

/// A topic's route as clients see it.
#[derive(Debug, Clone)]
pub struct Route {
    pub topic: String,
    pub queue_nums: u32,
    /// Message types the topic accepts. A topic that does not exist yet but would be created
    /// by the first send (autoCreateTopicEnable) accepts every type: the first message decides.
    pub accepts: &'static [MessageType],
}

/// What a producer gets back per message.
#[derive(Debug, Clone)]
pub struct SendReceipt {
    pub message_id: String,
    pub transaction_id: String,
    pub queue_id: u32,
    /// Queue offset; for a scheduled message its offset in the timer queue, for a half
    /// message its offset in the half queue (as Apache reports them).
    pub offset: u64,
    /// Scheduled messages: the handle RecallMessage takes.
    pub recall_handle: Option<String>,
}

/// Which queues this node serves. In a cluster each queue belongs to one node at a time; the
/// broker sends to, pops from and records progress of only the queues it owns. A single
/// gateway owns every queue ([`AllQueues`]).
pub trait QueueOwnership: Send + Sync + 'static {
    fn owns(&self, topic: &str, queue_id: u32) -> bool;

    /// Whether this node may serve its own system queues now: fire its timers, resolve and
    /// check its transactions, take new scheduled and half messages. In a cluster, only while
    /// its heartbeat is fresh and it has entered its home log (no other node may be adopting
    /// it: `adoption.rs`). Always for a single gateway.
    fn home_writable(&self) -> bool {
        true
    }
}

/// A single gateway: every queue is local.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllQueues;

impl QueueOwnership for AllQueues {
    fn owns(&self, _topic: &str, _queue_id: u32) -> bool {
        true
    }
}

/// The queue of `queue_nums` a FIFO message group goes to.
pub fn fifo_queue(queue_nums: u32, message_group: &str) -> u32 {
    crc32c::crc32c(message_group.as_bytes()) % queue_nums.max(1)
}

/// What the broker stores into.
pub struct Stores {
    pub log: Arc<dyn MessageLog>,
    pub meta: Arc<dyn MetadataStore>,
    pub timers: Arc<dyn TimerIndex>,
}

/// The kind of a connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Producer,
    PushConsumer,
    SimpleConsumer,
    PullConsumer,
    Other,
}

/// Consumption policy of a group, sent to its consumers in Settings.
#[derive(Debug, Clone)]
pub struct GroupPolicy {
    pub fifo: bool,
    pub max_attempts: i32,
    pub retry_backoff: settings::Backoff,
    pub receive_batch_size: i32,
    pub long_polling_timeout: Duration,
}

/// A client as the admin API lists it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: String,
    pub kind: ClientKind,
    pub group: Option<String>,
    pub last_seen_ms_ago: u64,
    /// Has a Telemetry stream open here (can be sent commands).
    pub connected: bool,
}

/// Counts of what the gateway holds in memory per client, group and queue, and of its send
/// backpressure (admin API `GET /api/v1/stats`).
#[derive(Debug, Clone)]
pub struct BrokerStats {
    pub sessions: SessionStats,
    pub states: StateStats,
    pub admission: AdmissionStats,
    pub groups: usize,
    pub auto_created_groups: usize,
    pub groups_retired: u64,
    /// The remote tier of the message log, if it has one.
    pub tiering: Option<crate::storage::tiered::TieringStats>,
}

/// (group, topic, queue id).
type QueueKey = (Arc<str>, Arc<str>, u32);

pub(crate) struct Inner {
    /// The broker's settings.
    settings: BrokerSettings,
    clock: Arc<dyn Clock>,
    log: Arc<dyn MessageLog>,
    meta: Arc<dyn MetadataStore>,
    timers: timer::Timers,
    transactions: transaction::Transactions,
    topics: RwLock<FastMap<String, Arc<TopicEntry>>>,
    groups: RwLock<HashMap<String, GroupRecord>>,
    /// Auto-created groups and when each was last used (broker clock).
    auto_groups: Mutex<HashMap<String, i64>>,
    groups_retired: AtomicU64,
    states: states::States,
    sessions: sessions::Sessions,
    /// Recent receives by attempt id, for retries after a lost response.
    attempts: Mutex<attempts::AttemptCache>,
    /// Bounds on the bytes of sends in flight to the log.
    admission: admission::Admission,
    /// Broadcast groups: when each client's own consumer (`group@@client`) last received.
    broadcast_seen: Mutex<HashMap<String, i64>>,
    /// Command channels to connected clients and replies awaited.
    relay: relay::Relay,
    receipts: ReceiptCodec,
    serial: AtomicU64,
    /// Journal offset covered by the last saved progress snapshot.
    journal_saved: AtomicU64,
    /// One progress flush at a time: a flush that returns has written every change made
    /// before it was called (a concurrent flush may have taken it; it is waited for).
    flush_lock: tokio::sync::Mutex<()>,
    /// Cluster: this node's scheduled and half messages below these offsets were adopted by
    /// another node (`adoption.rs`).
    adopted_cut: std::sync::Mutex<crate::metadata::HomeCut>,
    /// Orders offset resets after the acks under way (`offsets.rs`).
    reset_gates: offsets::ResetGates,
    /// Whether progress writes to the metadata store are failing (`meta_health.rs`).
    meta_health: meta_health::HealthCell,
    /// Which queues this node serves ([`AllQueues`] unless clustered).
    ownership: RwLock<Arc<dyn QueueOwnership>>,
    /// Clustered: messages that become deliverable later (fired timers, committed
    /// transactions) are copied into their queue instead of referenced, since the queue may
    /// move to a node that cannot read this node's own log.
    clustered: std::sync::atomic::AtomicBool,
    /// Clustered: where messages due here for topics with no queue here go (`handover.rs`).
    hand_over: std::sync::OnceLock<Arc<dyn QueueHandOver>>,
    shutdown: CancellationToken,
}

/// Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

pub use crate::clock::now_ms;

/// Fetches a receive or pull awaits from the object store before it answers with what it has.
pub(super) const REMOTE_FETCH_ROUNDS: usize = 4;
/// Fetches a start-up scan (timers, transactions) may await: it reads on from where it is.
const STARTUP_FETCH_ROUNDS: usize = 100_000;
/// Bytes asked for per fetch (the log reads ahead by its own setting).
pub(super) const REMOTE_FETCH_BYTES: usize = 8 << 20;

/// Something [`lock`] can lock: a mutex, or a consumer state (whose guard records changes
/// for the next progress flush).
pub(crate) trait Lock {
    type Guard<'a>
    where
        Self: 'a;
    fn acquire(&self) -> Self::Guard<'_>;
}

impl<T> Lock for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;

    fn acquire(&self) -> MutexGuard<'_, T> {
        // Nothing panics while holding these locks except on a bug; keep serving if one did.
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<L: Lock + ?Sized> Lock for Arc<L> {
    type Guard<'a>
        = L::Guard<'a>
    where
        Self: 'a;

    fn acquire(&self) -> L::Guard<'_> {
        (**self).acquire()
    }
}

fn lock<L: Lock + ?Sized>(m: &L) -> L::Guard<'_> {
    m.acquire()
}

/// Gives back a map's memory after a peak (maps never shrink on their own): once it is at most
/// a quarter full, down to twice what it holds.
fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

impl Broker {
    /// Loads topics, groups, progress, open transactions, the timer index and the receipt
    /// secret, and creates configured topics. The background work ([`Broker::run_timers`],
    /// [`Broker::run_transaction_checker`], [`Broker::run_progress_flusher`]) is the caller's
    /// to spawn.
    pub async fn start(settings: BrokerSettings, stores: Stores, clock: Arc<dyn Clock>) -> BrokerResult<Broker> {
        let Stores { log, meta, timers } = stores;
        let candidate: [u8; 32] = rand::random();
        let secret = meta.secret("receipt-handle-hmac", &candidate).await?;
        let inner = Arc::new(Inner {
            timers: timer::Timers::open(timers, clock.now_ms())?,
            transactions: transaction::Transactions::default(),
            receipts: ReceiptCodec::new(&secret),
            // Serials only need to differ from every serial issued before a restart.
            serial: AtomicU64::new((clock.now_ms() as u64) << 20),
            topics: RwLock::new(FastMap::default()),
            groups: RwLock::new(HashMap::new()),
            auto_groups: Mutex::new(HashMap::new()),
            groups_retired: AtomicU64::new(0),
            states: states::States::default(),
            sessions: sessions::Sessions::default(),
            attempts: Mutex::new(attempts::AttemptCache::default()),
            admission: admission::Admission::new(
                settings.limits.max_inflight_bytes,
                settings.limits.max_inflight_bytes_per_connection,
                settings.limits.inflight_wait_time,
            ),
            broadcast_seen: Mutex::new(HashMap::new()),
            relay: relay::Relay::default(),
            journal_saved: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            adopted_cut: std::sync::Mutex::new(crate::metadata::HomeCut::default()),
            reset_gates: offsets::ResetGates::default(),
            meta_health: meta_health::HealthCell::default(),
            ownership: RwLock::new(Arc::new(AllQueues)),
            clustered: std::sync::atomic::AtomicBool::new(false),
            hand_over: std::sync::OnceLock::new(),
            shutdown: CancellationToken::new(),
            settings,
            clock,
            log,
            meta,
        });
        let broker = Broker { inner };
        for spec in &broker.inner.settings.topics.create {
            validate::validate_topic(&spec.name)?;
            let topic_type = TopicKind::parse(&spec.message_type).ok_or_else(|| {
                BrokerError::BadRequest(format!(
                    "topic `{}`: unknown messageType `{}` (NORMAL, FIFO, DELAY, TRANSACTION, PRIORITY or MIXED)",
                    spec.name, spec.message_type
                ))
            })?;
            broker.create_topic_with(&spec.name, spec.queue_nums, topic_type, spec.durability).await?;
        }
        for t in broker.inner.meta.list_topics().await? {
            broker.cache_topic(t.into());
        }
        let now = broker.now_ms();
        for g in broker.inner.meta.list_groups().await? {
            if g.auto_created {
                lock(&broker.inner.auto_groups).insert(g.name.clone(), now);
            }
            broker.inner.groups.write().unwrap_or_else(|e| e.into_inner()).insert(g.name.clone(), g);
        }
        for spec in &broker.inner.settings.consumer.groups {
            let retry = (spec.retry_max_times, spec.retry_backoff.as_deref());
            broker.put_group(&spec.name, spec.consume_message_orderly, retry, Some(spec.broadcast)).await?;
        }
        // Start-up scans may start in tiered (object-store) data: fetched as they go.
        broker.restore_progress().await?;
        broker.serials_past_resets();
        broker.with_remote_fetch(STARTUP_FETCH_ROUNDS, || broker.recover_timers()).await?;
        broker.with_remote_fetch(STARTUP_FETCH_ROUNDS, || broker.recover_transactions()).await?;
        Ok(broker)
    }

    /// Serves only the queues `ownership` says are this node's (cluster mode). Set once, right
    /// after start, before any request.
    pub fn set_ownership(&self, ownership: Arc<dyn QueueOwnership>) {
        *self.inner.ownership.write().unwrap_or_else(|e| e.into_inner()) = ownership;
        self.inner.clustered.store(true, Ordering::Relaxed);
    }

    /// Whether this node serves the queue.
    pub fn owns(&self, topic: &str, queue_id: u32) -> bool {
        self.inner.ownership.read().unwrap_or_else(|e| e.into_inner()).owns(topic, queue_id)
    }

    /// See [`QueueOwnership::home_writable`].
    fn home_writable(&self) -> bool {
        self.inner.ownership.read().unwrap_or_else(|e| e.into_inner()).home_writable()
    }

    /// Refuses work on this node's own system queues while it may not serve them.
    fn require_home(&self, what: &str) -> BrokerResult<()> {
        if self.home_writable() {
            return Ok(());
        }
        Err(BrokerError::NotOwner(format!(
            "this node cannot {what} right now: its home log is not confirmed in the cluster store \
             (store unreachable, or another node is adopting it); retry"
        )))
    }

    fn clustered(&self) -> bool {
        self.inner.clustered.load(Ordering::Relaxed)
    }

    /// Now, by the broker's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Runs `f` (which reads the log, possibly under locks) again while it fails only because
    /// data lies in the object store and is not cached yet, awaiting that fetch in between,
    /// outside every lock; at most `rounds` fetches.
    pub(super) async fn with_remote_fetch<T>(
        &self,
        rounds: usize,
        mut f: impl FnMut() -> BrokerResult<T>,
    ) -> BrokerResult<T> {
        let mut round = 0;
        loop {
            match f() {
                Err(BrokerError::RemoteNotCached { topic, queue_id, offset }) if round < rounds => {
                    round += 1;
                    self.inner.log.fetch_remote(&topic, queue_id, offset, REMOTE_FETCH_BYTES).await?;
                }
                other => return other,
            }
        }
    }

    /// Stops long polls and background work; flushes consumer progress.
    pub async fn shutdown(&self) -> BrokerResult<()> {
        self.inner.shutdown.cancel();
        self.flush_progress().await
    }

    /// Cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    fn cache_topic(&self, record: TopicInfo) -> Arc<TopicEntry> {
        let client_named = validate::validate_topic(&record.name).is_ok();
        let entry =
            Arc::new(TopicEntry { record, arrivals: Notify::new(), round_robin: AtomicU32::new(0), client_named });
        let mut topics = self.inner.topics.write().unwrap_or_else(|e| e.into_inner());
        topics.entry(entry.record.name.clone()).or_insert(entry).clone()
    }

    fn cached_topic(&self, name: &str) -> Option<Arc<TopicEntry>> {
        self.inner.topics.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Creates a topic (or returns the existing one unchanged), with `topics.defaultTopicQueueNums`
    /// queues unless `queue_nums` says otherwise.
    pub async fn create_topic(
        &self,
        name: &str,
        queue_nums: Option<u32>,
        topic_type: TopicKind,
    ) -> BrokerResult<TopicInfo> {
        self.create_topic_with(name, queue_nums, topic_type, Durability::Local).await
    }

    /// [`Broker::create_topic`] with the topic's durability (when its sends are acknowledged).
    pub async fn create_topic_with(
        &self,
        name: &str,
        queue_nums: Option<u32>,
        topic_type: TopicKind,
        durability: Durability,
    ) -> BrokerResult<TopicInfo> {
        let queue_nums = queue_nums.unwrap_or(self.inner.settings.topics.default_topic_queue_nums);
        if !(1..=1024).contains(&queue_nums) {
            return Err(BrokerError::BadRequest(format!("queue count {queue_nums} is outside 1..=1024")));
        }
        let record = TopicRecord { name: name.to_string(), queue_nums, topic_type: topic_type.into(), durability };
        let known = self.cached_topic(name).is_some();
        let record = self.inner.meta.create_topic(&record).await?;
        if !known {
            tracing::info!(topic = name, queue_nums = record.queue_nums, "topic created (or loaded)");
        }
        Ok(self.cache_topic(record.into()).record.clone())
    }

    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let mut v: Vec<TopicInfo> =
            self.inner.topics.read().unwrap_or_else(|e| e.into_inner()).values().map(|t| t.record.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// An existing topic a client names (validated).
    async fn existing_topic(&self, name: &str) -> BrokerResult<Option<Arc<TopicEntry>>> {
        validate::validate_topic(name)?;
        self.stored_topic(name).await
    }

    /// A topic by a name already validated: from the cache, else from the metadata store.
    async fn stored_topic(&self, name: &str) -> BrokerResult<Option<Arc<TopicEntry>>> {
        if let Some(t) = self.cached_topic(name) {
            return Ok(Some(t));
        }
        Ok(self.inner.meta.topic(name).await?.map(|record| self.cache_topic(record.into())))
    }

    /// A topic a client names; it must exist (consumers never create topics).
    async fn client_topic(&self, name: &str) -> BrokerResult<Arc<TopicEntry>> {
        self.existing_topic(name).await?.ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    /// The topic a producer sends to, created on first use when autoCreateTopicEnable is on,
    /// with the type of the message that creates it (like Apache, only the producer's path
    /// creates topics; a consumer's typo creates nothing). `name` is validated by the caller.
    async fn send_topic(&self, name: &str, kind: MessageType) -> BrokerResult<Arc<TopicEntry>> {
        if let Some(t) = self.stored_topic(name).await? {
            return Ok(t);
        }
        let topics = &self.inner.settings.topics;
        if !topics.auto_create_topic_enable {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        let topic_type = match kind {
            MessageType::Normal => TopicKind::Normal,
            MessageType::Fifo => TopicKind::Fifo,
            MessageType::Delay => TopicKind::Delay,
            MessageType::Transaction => TopicKind::Transaction,
            MessageType::Priority => TopicKind::Priority,
        };
        let record = self.create_topic(name, None, topic_type).await?;
        tracing::info!(
            topic = name,
            queue_nums = record.queue_nums,
            r#type = topic_type.as_str(),
            "auto-created topic"
        );
        self.cached_topic(name).ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    /// The route of a topic. Never creates it: with autoCreateTopicEnable an unknown topic
    /// gets the route it will have once a producer's first send creates it.
    pub async fn route(&self, topic: &str) -> BrokerResult<Route> {
        match self.existing_topic(topic).await? {
            Some(t) => Ok(Route {
                topic: t.record.name.clone(),
                queue_nums: t.record.queue_nums,
                accepts: message::accepted_types(t.record.topic_type),
            }),
            None if self.inner.settings.topics.auto_create_topic_enable => Ok(Route {
                topic: topic.to_string(),
                queue_nums: self.inner.settings.topics.default_topic_queue_nums,
                accepts: message::accepted_types(TopicKind::Mixed),
            }),
            None => Err(BrokerError::TopicNotFound(topic.to_string())),
        }
    }

    /// A consumer group, created on first use with the configured defaults unless
    /// `consumer.autoCreateSubscriptionGroup` is off or `consumer.maxAutoCreatedGroups` are
    /// there already.
    async fn group(&self, name: &str) -> BrokerResult<GroupRecord> {
        validate::validate_group(name)?;
        let found = self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        if let Some(g) = found {
            if g.auto_created
                && let Some(used) = lock(&self.inner.auto_groups).get_mut(name)
            {
                *used = self.now_ms();
            }
            return Ok(g);
        }
        let c = &self.inner.settings.consumer;
        if !c.auto_create_subscription_group {
            return Err(BrokerError::GroupNotFound(name.to_string()));
        }
        {
            // Reserved before the (slow) store write so concurrent first uses cannot overshoot.
            let mut auto = lock(&self.inner.auto_groups);
            if !auto.contains_key(name) && auto.len() >= c.max_auto_created_groups {
                return Err(BrokerError::GroupLimitReached(format!(
                    "consumer group `{name}` does not exist and was not created: the gateway holds {} \
                     auto-created groups, the limit (consumer.maxAutoCreatedGroups); create it explicitly \
                     (consumer.groups or PUT /api/v1/groups/{name}) or raise the limit",
                    auto.len()
                )));
            }
            auto.insert(name.to_string(), self.now_ms());
        }
        let record = GroupRecord {
            name: name.to_string(),
            fifo: false,
            retry_max_times: c.retry_max_times,
            retry_backoff: None,
            broadcast: false,
            auto_created: true,
        };
        let stored = match self.inner.meta.create_group(&record).await {
            Ok(stored) => stored,
            Err(e) => {
                lock(&self.inner.auto_groups).remove(name);
                return Err(e.into());
            }
        };
        if !stored.auto_created {
            // Created explicitly meanwhile.
            lock(&self.inner.auto_groups).remove(name);
        }
        self.inner.groups.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), stored.clone());
        if stored.auto_created {
            tracing::info!(group = name, retry_max_times = stored.retry_max_times, "auto-created consumer group");
        }
        Ok(stored)
    }

    /// Retires auto-created groups unused for `server.channelExpiredTimeout` that no client
    /// session names and that never had a state on any queue (so no position is lost: a
    /// group that ever received keeps its record). Such groups come from clients that
    /// announced a group and went away; one that comes back is created again.
    async fn retire_idle_groups(&self) -> BrokerResult<()> {
        let now = self.now_ms();
        let expiry = self.inner.settings.clients.channel_expired_timeout.as_millis() as i64;
        let idle: Vec<String> = lock(&self.inner.auto_groups)
            .iter()
            .filter(|(_, used)| now - **used >= expiry)
            .map(|(name, _)| name.clone())
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        let in_use = self.groups_in_use();
        for name in idle {
            if in_use.contains(&name) || self.group_has_state(&name) {
                continue;
            }
            if self.inner.meta.retire_group(&name).await? {
                self.inner.groups.write().unwrap_or_else(|e| e.into_inner()).remove(&name);
                self.inner.groups_retired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(group = name, "retired an unused auto-created consumer group");
            }
            lock(&self.inner.auto_groups).remove(&name);
        }
        Ok(())
    }

    /// Creates a consumer group or changes its configuration: orderly consumption, the retry
    /// policy (`retryMaxTimes`; retry delays, `""` for the gateway default) and the message
    /// model (`broadcast`). An absent setting keeps the current value (the default for a new
    /// group). Takes effect for the next receive; consumers see it in Settings when they next
    /// sync.
    pub async fn put_group(
        &self,
        name: &str,
        fifo: bool,
        (retry_max_times, retry_backoff): (Option<i32>, Option<&str>),
        broadcast: Option<bool>,
    ) -> BrokerResult<GroupInfo> {
        validate::validate_group(name)?;
        if retry_max_times.is_some_and(|r| r < 0) {
            return Err(BrokerError::BadRequest(format!("group `{name}`: retryMaxTimes must not be negative")));
        }
        if let Some(b) = retry_backoff.filter(|b| !b.trim().is_empty()) {
            settings::Backoff::parse(b)
                .map_err(|e| BrokerError::BadRequest(format!("group `{name}`: retryBackoff {e}")))?;
        }
        let current = self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        let retry_backoff = match retry_backoff {
            Some(b) if b.trim().is_empty() => None,
            Some(b) => Some(b.trim().to_string()),
            None => current.as_ref().and_then(|g| g.retry_backoff.clone()),
        };
        let broadcast = broadcast.or(current.as_ref().map(|g| g.broadcast)).unwrap_or(false);
        let retry_max_times = retry_max_times
            .or(current.map(|g| g.retry_max_times))
            .unwrap_or(self.inner.settings.consumer.retry_max_times);
        let record = GroupRecord {
            name: name.to_string(),
            fifo,
            retry_max_times,
            retry_backoff,
            broadcast,
            auto_created: false,
        };
        self.inner.meta.put_group(&record).await?;
        self.inner.groups.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), record.clone());
        tracing::info!(group = name, fifo, retry_max_times, broadcast, "consumer group created or updated");
        lock(&self.inner.auto_groups).remove(name);
        Ok(record.into())
    }

    /// Every known consumer group, by name.
    pub fn list_groups(&self) -> Vec<GroupInfo> {
        let mut v: Vec<GroupInfo> =
            self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).values().cloned().map(Into::into).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub async fn group_policy(&self, group: &str) -> BrokerResult<GroupPolicy> {
        let g = self.group(group).await?;
        let c = &self.inner.settings.consumer;
        let retry_backoff = match g.retry_backoff.as_deref().map(settings::Backoff::parse) {
            Some(Ok(own)) => own,
            Some(Err(_)) | None => c.retry_backoff.clone(),
        };
        Ok(GroupPolicy {
            fifo: g.fifo,
            max_attempts: g.retry_max_times + 1,
            retry_backoff,
            receive_batch_size: c.receive_batch_size,
            long_polling_timeout: c.max_long_polling_timeout,
        })
    }

    /// Route and whether the group consumes it in order (QueryAssignment).
    pub async fn assignment(&self, topic: &str, group: &str) -> BrokerResult<(Route, bool)> {
        let t = self.client_topic(topic).await?;
        let g = self.group(group).await?;
        let route = Route {
            topic: t.record.name.clone(),
            queue_nums: t.record.queue_nums,
            accepts: message::accepted_types(t.record.topic_type),
        };
        Ok((route, g.fifo))
    }

    /// Validates and stores messages; one receipt per message, in order. Only the gateway-wide
    /// in-flight bound applies (see [`Broker::send_from`]).
    pub async fn send(&self, messages: Vec<OutgoingMessage>) -> BrokerResult<Vec<SendReceipt>> {
        self.send_from(None, messages).await
    }

    /// [`Broker::send`] for a client connection (its TCP peer, or its client id): the
    /// bytes it has in flight to the log are bounded as well as the gateway's. Over a bound
    /// the send waits a little for room, then fails with TOO_MANY_REQUESTS.
    pub async fn send_from(
        &self,
        connection: Option<&Connection>,
        messages: Vec<OutgoingMessage>,
    ) -> BrokerResult<Vec<SendReceipt>> {
        // Tracing: one `send` span per message (none when off), ended with its receipt.
        let mut spans = spans::send_spans(&messages);
        let mut messages = messages;
        spans::carry_context(&mut messages, &spans);
        let result = self.send_traced(connection, messages, &spans).await;
        match &result {
            Ok(receipts) => {
                for (span, r) in spans.iter_mut().zip(receipts) {
                    span.set(crate::observability::tracing::attr::PARTITION, r.queue_id.to_string());
                    span.set(crate::observability::tracing::attr::QUEUE_OFFSET, r.offset as i64);
                }
            }
            Err(e) => spans.iter_mut().for_each(|s| s.fail(&spans::error_type(e), &e.to_string())),
        }
        result
    }

    async fn send_traced(
        &self,
        connection: Option<&Connection>,
        messages: Vec<OutgoingMessage>,
        spans: &[crate::observability::tracing::MessageSpan],
    ) -> BrokerResult<Vec<SendReceipt>> {
        let limits = &self.inner.settings.limits;
        let Some(first) = messages.first() else {
            return Err(BrokerError::MessageCorrupted("no message to send".into()));
        };
        if messages.len() > limits.max_batch_messages {
            return Err(BrokerError::BadRequest(format!(
                "request carries {} messages, the limit is {} (limits.maxBatchMessages)",
                messages.len(),
                limits.max_batch_messages
            )));
        }
        let topic_name = first.topic.as_str();
        let cached = self.cached_topic(topic_name).filter(|t| t.client_named);
        if cached.is_none() {
            validate::validate_topic(topic_name)?;
        }
        if let Some(m) = messages.iter().find(|m| m.topic != topic_name) {
            return Err(BrokerError::MessageCorrupted(format!(
                "all messages of one request must have the same topic, found `{topic_name}` and `{}`",
                m.topic
            )));
        }
        let now = self.now_ms();
        for m in &messages {
            validate::validate_message(m, limits, now)?;
        }
        let kind = first.message_type();
        let topic = match cached {
            Some(t) => t,
            None => self.send_topic(topic_name, kind).await?,
        };
        for m in &messages {
            let k = m.message_type();
            if !k.accepted_by(topic.record.topic_type) {
                return Err(BrokerError::MessageTypeConflict(format!(
                    "topic `{topic_name}` accepts {} messages, but this message is {}",
                    topic.record.topic_type.as_str(),
                    k.as_str()
                )));
            }
            if k != kind {
                return Err(BrokerError::MessageTypeConflict(format!(
                    "all messages of one request must have the same type, found {} and {}",
                    kind.as_str(),
                    k.as_str()
                )));
            }
        }
        let group = first.message_group.as_deref();
        if let Some(m) = messages.iter().find(|m| m.message_group.as_deref() != group) {
            return Err(BrokerError::MessageCorrupted(format!(
                "all FIFO messages of one request must have the same message group, found `{}` and `{}`",
                group.unwrap_or_default(),
                m.message_group.as_deref().unwrap_or_default()
            )));
        }
        let bytes = messages.iter().map(OutgoingMessage::approx_size).sum();
        let _room = self.inner.admission.admit(connection, bytes).await?;
        let queue_id = self.pick_queue(&topic, group)?;
        let topic_arc: Arc<str> = Arc::from(topic_name);
        let appends: Vec<AppendMessage> = messages
            .iter()
            .map(|m| AppendMessage {
                topic: topic_arc.clone(),
                queue_id,
                born_timestamp_ms: m.born_timestamp_ms,
                flags: m.flags(),
                tag_hash: message::tag_hash(m.tag.as_deref()),
                properties: m.stored_properties(),
                body: m.body.clone(),
            })
            .collect();
        let ids = || -> Vec<String> { messages.iter().map(|m| m.message_id.clone()).collect() };
        let receipt = |id: String, queue_id: u32, offset: u64, recall_handle: Option<String>| SendReceipt {
            transaction_id: id.clone(),
            message_id: id,
            queue_id,
            offset,
            recall_handle,
        };
        // Tracing: the durable append, flush wait included (ended when this returns).
        let _appending: Vec<_> = spans.iter().map(|s| s.child("append", topic_name)).collect();
        if kind == MessageType::Transaction {
            let ids = ids();
            let offsets = self.prepare(&topic, appends, &ids).await?;
            return Ok(ids.into_iter().zip(offsets).map(|(id, o)| receipt(id, 0, o, None)).collect());
        }
        // Due later: scheduled (a time in the past is delivered at once, like Apache).
        if messages.iter().all(|m| m.delivery_timestamp_ms.is_some())
            && messages.iter().any(|m| m.delivery_timestamp_ms.is_some_and(|d| d > now))
        {
            let due: Vec<i64> = messages.iter().filter_map(|m| m.delivery_timestamp_ms).collect();
            let ids = ids();
            let scheduled = self.schedule(&topic, appends, &due, &ids).await?;
            if let Some(metrics) = crate::observability::metrics::global() {
                metrics.timers_scheduled(scheduled.len() as u64);
            }
            return Ok(ids.into_iter().zip(scheduled).map(|(id, (o, h))| receipt(id, 0, o, Some(h))).collect());
        }
        let results = self.inner.log.append(appends).await?;
        topic.arrivals.notify_waiters();
        if topic.record.durability == crate::metadata::Durability::ObjectStore {
            // Acknowledged only once in the object store (survives the loss of this disk).
            self.inner.log.persist_remote(&results).await?;
        }
        Ok(messages
            .into_iter()
            .zip(results)
            .map(|(m, r)| receipt(m.message_id, queue_id, r.queue_offset, None))
            .collect())
    }

    /// FIFO messages go to [`fifo_queue`] (never the client's choice, since SDKs hash groups
    /// differently); others round-robin over the queues this node serves. A queue served
    /// elsewhere is [`BrokerError::NotOwner`] (the gRPC layer forwards before it gets here).
    fn pick_queue(&self, topic: &TopicEntry, message_group: Option<&str>) -> BrokerResult<u32> {
        let n = topic.record.queue_nums.max(1);
        let name = &topic.record.name;
        match message_group {
            Some(group) => {
                let q = fifo_queue(n, group);
                if self.owns(name, q) {
                    Ok(q)
                } else {
                    Err(BrokerError::NotOwner(format!("queue {q} of topic `{name}` is served by another node")))
                }
            }
            None => {
                for _ in 0..n {
                    let q = topic.round_robin.fetch_add(1, Ordering::Relaxed) % n;
                    if self.owns(name, q) {
                        return Ok(q);
                    }
                }
                Err(BrokerError::NotOwner(format!("no queue of topic `{name}` is served by this node")))
            }
        }
    }

    /// What the gateway holds in memory and its send backpressure (admin API).
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            sessions: self.session_stats(),
            states: self.state_stats(),
            admission: self.inner.admission.stats(),
            groups: self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).len(),
            auto_created_groups: lock(&self.inner.auto_groups).len(),
            groups_retired: self.inner.groups_retired.load(Ordering::Relaxed),
            tiering: self.inner.log.tiering_stats(),
        }
    }
}
