//! Transactional messages. A half message is stored once, in the system topic
//! `rmq_sys_trans_half`, invisible to consumers. EndTransaction COMMIT appends a reference
//! record to the real topic (the message becomes deliverable there) together with the
//! resolution in one all-or-nothing log append; ROLLBACK appends only the resolution. The
//! resolutions are acks of the system group `rmq_sys_trans` on the half queue, so they ride
//! the consumer journal and progress snapshots: no SQL write per message, nothing lost or
//! committed twice after a SIGKILL. At start the half queue is scanned from that group's floor
//! and every unresolved half message is open again. In a cluster, a commit on a node that no
//! longer serves any queue of the topic stores the message on a node that does first
//! (`handover.rs`).
//!
//! Orphans (no decision in time) are checked through a connected producer of the topic with
//! `RecoverOrphanedTransactionCommand`: first after the producer's
//! `orphaned_transaction_recovery_duration` or `transaction.transactionTimeout`, then every
//! `transaction.transactionCheckInterval`, at most `transaction.transactionCheckMax` times;
//! then the message is discarded or kept in `rmq_sys_trans_check_max` as configured. Checks
//! that fell due while the gateway was down happen right after it starts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::error::{BrokerError, BrokerResult};
use super::journal::AckRecord;
use super::message::{self, DeliveredMessage};
use super::relay::ClientCommand;
use super::settings::CheckMaxAction;
use super::{Broker, lock};
use crate::storage::AppendMessage;
use crate::storage::record::keys;

/// Half messages, one queue.
pub(crate) const HALF_TOPIC: &str = "rmq_sys_trans_half";
/// The system group whose acks on the half queue are the resolutions.
pub(crate) const TX_GROUP: &str = "rmq_sys_trans";
/// Half messages given up after the last check, when `transactionCheckMaxAction` is `keep`.
pub(crate) const CHECK_MAX_TOPIC: &str = "rmq_sys_trans_check_max";
/// Resolutions remembered for EndTransaction retries after a lost response.
const REMEMBERED: usize = 16 * 1024;

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Commit,
    Rollback,
    /// The producer does not know yet (a checker's UNKNOWN): nothing changes.
    Unknown,
}

/// Who ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolutionSource {
    Client,
    ServerCheck,
}

/// An open transaction.
#[derive(Debug, Clone)]
struct Open {
    offset: u64,
    topic: String,
    checks: u32,
    next_check_ms: i64,
}

/// Cluster: where an orphan check goes when no producer of the topic is connected to this
/// node (the protocol layer asks the other nodes to push it on a producer connected there;
/// the producer's EndTransaction then comes back to this node). Fire and forget.
pub trait OrphanCheckRelay: Send + Sync + 'static {
    /// `command` is a [`ClientCommand::RecoverOrphanedTransaction`] for a producer of `topic`.
    fn relay_orphan_check(&self, topic: &str, command: ClientCommand);
}

/// Open transactions and recent resolutions.
#[derive(Default)]
pub(crate) struct Transactions {
    /// Cluster: orphan checks without a local producer go there.
    relay: OnceLock<Arc<dyn OrphanCheckRelay>>,
    open: std::sync::Mutex<HashMap<String, Open>>,
    /// transaction id → resolution, for retried EndTransaction calls (bounded: the oldest ids
    /// are forgotten first).
    resolved: std::sync::Mutex<(HashMap<String, Resolution>, VecDeque<String>)>,
    /// Orphan checks sent, and transactions given up after the last check.
    pub checks_sent: AtomicU64,
    pub given_up: AtomicU64,
}

impl Broker {
    fn transactions(&self) -> &Transactions {
        &self.inner.transactions
    }

    /// Open transactions per topic and orphan checks sent (`/metrics`).
    pub(super) fn transaction_gauges(&self) -> (Vec<(String, u64)>, u64) {
        let mut per_topic: HashMap<String, u64> = HashMap::new();
        for o in lock(&self.transactions().open).values() {
            *per_topic.entry(o.topic.clone()).or_default() += 1;
        }
        let mut rows: Vec<_> = per_topic.into_iter().collect();
        rows.sort();
        (rows, self.transactions().checks_sent.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Cluster: orphan checks that find no producer of their topic connected here go to
    /// `relay` (set once, at start; later calls are ignored).
    pub fn set_orphan_check_relay(&self, relay: Arc<dyn OrphanCheckRelay>) {
        let _ = self.transactions().relay.set(relay);
    }

    /// Cluster: another node asks to push an orphan check (already encoded by its protocol
    /// layer) on a producer of `topic` connected here. False: none is connected here.
    pub fn push_relayed_check(&self, topic: &str, payload: bytes::Bytes) -> bool {
        let Some(client) = self.transaction_checker(topic) else {
            return false;
        };
        let sent = self.send_client_command(&client, ClientCommand::Relayed { payload });
        if sent {
            tracing::debug!(topic, client, "orphan check relayed from another node sent");
        }
        sent
    }

    /// Stores half messages; the transaction ids are the message ids.
    pub(super) async fn prepare(
        &self,
        topic: &super::TopicEntry,
        appends: Vec<AppendMessage>,
        ids: &[String],
    ) -> BrokerResult<Vec<u64>> {
        self.require_home("take transactional messages")?;
        let topic_record = &topic.record;
        let topic = topic_record.name.as_str();
        let now = self.now_ms();
        let first_checks: Vec<i64> = appends.iter().map(|a| now + self.first_check_delay_ms(a)).collect();
        let appends = appends
            .into_iter()
            .zip(&first_checks)
            .map(|(mut a, check_at)| {
                a.properties.push(keys::REAL_TOPIC, topic);
                a.properties.push(keys::CHECK_AT, check_at.to_string());
                a.topic = Arc::from(HALF_TOPIC);
                a.queue_id = 0;
                a
            })
            .collect();
        let results = self.inner.log.append(appends).await?;
        {
            let mut open = lock(&self.transactions().open);
            for ((r, id), next_check_ms) in results.iter().zip(ids).zip(first_checks) {
                open.insert(
                    id.clone(),
                    Open { offset: r.queue_offset, topic: topic.to_string(), checks: 0, next_check_ms },
                );
            }
        }
        if let Some(metrics) = crate::observability::metrics::global() {
            metrics.transaction(topic, "half", results.len() as u64);
        }
        if topic_record.durability == crate::metadata::Durability::ObjectStore {
            // Acknowledged only once this node's log has it in the object store: a node lost
            // with its disk leaves it to the node that adopts its transactions.
            self.inner.log.persist_remote(&results).await?;
        }
        Ok(results.iter().map(|r| r.queue_offset).collect())
    }

    fn first_check_delay_ms(&self, a: &AppendMessage) -> i64 {
        let t = &self.inner.settings.transaction;
        let asked = a.properties.get(keys::CHECK_IMMUNITY_TIME).and_then(|s| s.parse::<u64>().ok());
        match asked {
            // Like the Apache proxy: at most an hour.
            Some(secs) => (secs.min(3600) * 1000) as i64,
            None => t.transaction_timeout.as_millis() as i64,
        }
    }

    /// EndTransaction: commits or rolls back a transaction (from any connection; the id is
    /// enough). Ending it again the same way succeeds; the other way is refused.
    pub async fn end_transaction(
        &self,
        topic: &str,
        transaction_id: &str,
        resolution: Resolution,
        source: ResolutionSource,
    ) -> BrokerResult<()> {
        super::validate::validate_topic(topic)?;
        if transaction_id.trim().is_empty() {
            return Err(BrokerError::InvalidTransactionId("transaction_id is empty".into()));
        }
        if resolution == Resolution::Unknown {
            return Ok(());
        }
        self.require_home("end transactions")?;
        let taken = lock(&self.transactions().open).remove(transaction_id);
        let Some(open) = taken else {
            let previous = lock(&self.transactions().resolved).0.get(transaction_id).copied();
            return match previous {
                Some(r) if r == resolution => Ok(()),
                Some(r) => Err(BrokerError::BadRequest(format!(
                    "transaction `{transaction_id}` was already ended with {r:?}; it cannot be ended with {resolution:?}"
                ))),
                None if self.half_adopted(transaction_id)? => Err(BrokerError::AdoptedElsewhere(format!(
                    "transaction `{transaction_id}` was adopted by another node while this one was gone"
                ))),
                None => Err(BrokerError::InvalidTransactionId(format!(
                    "no open transaction `{transaction_id}` (unknown id, or ended long ago)"
                ))),
            };
        };
        if open.topic != topic {
            let found = open.topic.clone();
            lock(&self.transactions().open).insert(transaction_id.to_string(), open);
            return Err(BrokerError::BadRequest(format!(
                "transaction `{transaction_id}` belongs to topic `{found}`, not `{topic}`"
            )));
        }
        match self.resolve_half(&open, resolution).await {
            Ok(persist) => {
                if source == ResolutionSource::ServerCheck {
                    tracing::info!(transaction_id, topic, ?resolution, "transaction resolved by an orphan check");
                } else {
                    tracing::debug!(transaction_id, ?resolution, ?source, "transaction ended");
                }
                if let Some(metrics) = crate::observability::metrics::global() {
                    let outcome = if resolution == Resolution::Commit { "commit" } else { "rollback" };
                    metrics.transaction(topic, outcome, 1);
                }
                self.remember_resolution(transaction_id, resolution);
                if let Some(results) = persist {
                    // `s3` durability: answered once the outcome is in the bucket (a retry
                    // of a failed wait finds the resolution remembered).
                    self.inner.log.persist_remote(&results).await?;
                }
                Ok(())
            }
            Err(e) => {
                lock(&self.transactions().open).insert(transaction_id.to_string(), open);
                Err(e)
            }
        }
    }

    /// Cluster: whether the half message of `transaction_id` in this node's half queue is one
    /// another node adopted.
    fn half_adopted(&self, transaction_id: &str) -> BrokerResult<bool> {
        if !self.clustered() {
            return Ok(false);
        }
        let found = self.inner.log.find_by_message_id(transaction_id)?;
        Ok(found.iter().any(|m| m.topic.as_ref() == HALF_TOPIC && self.adopted(None, Some(m.queue_offset))))
    }

    fn remember_resolution(&self, transaction_id: &str, resolution: Resolution) {
        let mut guard = lock(&self.transactions().resolved);
        let (by_id, order) = &mut *guard;
        if by_id.insert(transaction_id.to_string(), resolution).is_none() {
            order.push_back(transaction_id.to_string());
        }
        while order.len() > REMEMBERED {
            if let Some(oldest) = order.pop_front() {
                by_id.remove(&oldest);
            }
        }
    }

    /// Appends the outcome of a half message (with its reference record when committed, or
    /// kept) and the resolution together, then records the resolution in memory. Returns
    /// where they landed when the topic has `s3` durability (the caller waits for the bucket
    /// before acknowledging).
    async fn resolve_half(
        &self,
        open: &Open,
        resolution: Resolution,
    ) -> BrokerResult<Option<Vec<crate::storage::AppendResult>>> {
        let mut appends = Vec::with_capacity(2);
        let mut woken = None;
        let durable_remote = matches!(
            self.existing_topic(&open.topic).await,
            Ok(Some(t)) if t.record.durability == crate::metadata::Durability::ObjectStore
        );
        let mut span = crate::observability::tracing::MessageSpan::default();
        if crate::observability::tracing::enabled()
            && resolution == Resolution::Rollback
            && let Ok(half) = self.read_half(open.offset)
        {
            span = super::spans::stored_event("rollback", "settle", &open.topic, &half, Vec::new());
        }
        if resolution == Resolution::Commit {
            let half = self.read_half(open.offset)?;
            span = super::spans::stored_event("commit", "send", &open.topic, &half, Vec::new());
            let topic = self.client_topic(&open.topic).await?;
            match self.pick_queue(&topic, None) {
                Ok(queue_id) => {
                    let at = (HALF_TOPIC, 0, open.offset);
                    appends.push(self.deliverable(&half, Arc::from(open.topic.as_str()), queue_id, at));
                    woken = Some(topic);
                }
                // Cluster: the topic's queues are all served elsewhere now; the committed
                // message is stored there before the resolution is recorded here.
                Err(BrokerError::NotOwner(_)) => {
                    let copy = message::copy(&half, Arc::from(open.topic.as_str()), 0);
                    self.hand_over(&topic, vec![copy]).await?;
                }
                Err(e) => return Err(e),
            }
        }
        let record = AckRecord { group: TX_GROUP.into(), topic: HALF_TOPIC.into(), queue_id: 0, offset: open.offset };
        appends.push(record.to_append(self.now_ms()));
        // Again right before the append: the home log may have lapsed meanwhile.
        self.require_home("end transactions")?;
        let results = match self.inner.log.append(appends).await {
            Ok(results) => results,
            Err(e) => {
                let e = BrokerError::from(e);
                span.fail(&super::spans::error_type(&e), &e.to_string());
                return Err(e);
            }
        };
        span.end();
        lock(&self.queue_state(TX_GROUP, HALF_TOPIC, 0)).complete(open.offset);
        if let Some(t) = woken {
            t.arrivals.notify_waiters();
        }
        Ok(durable_remote.then_some(results))
    }

    fn read_half(&self, offset: u64) -> BrokerResult<crate::storage::StoredMessage> {
        self.inner
            .log
            .read(HALF_TOPIC, 0, offset, 1, usize::MAX)?
            .into_iter()
            .find(|m| m.queue_offset == offset)
            .ok_or_else(|| BrokerError::MessageNotFound(format!("half message at {offset} is gone (retention)")))
    }

    /// At start (after consumer progress is restored): every half message the system group
    /// has not resolved is open again, its first check due at its usual time (at once if that
    /// passed while the gateway was down).
    pub(super) fn recover_transactions(&self) -> BrokerResult<()> {
        let state = self.queue_state(TX_GROUP, HALF_TOPIC, 0);
        let range = self.inner.log.queue_range(HALF_TOPIC, 0);
        let mut next = lock(&state).floor.max(range.start);
        let mut open = lock(&self.transactions().open);
        while next < range.end {
            let batch = self.inner.log.read(HALF_TOPIC, 0, next, 1024, 8 << 20)?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in batch {
                if lock(&state).is_acked(m.queue_offset) {
                    continue;
                }
                let (Some(id), Some(topic)) = (m.properties.get(keys::UNIQ_KEY), m.properties.get(keys::REAL_TOPIC))
                else {
                    continue;
                };
                let next_check_ms = m.properties.get(keys::CHECK_AT).and_then(|v| v.parse().ok()).unwrap_or(0);
                let entry = Open { offset: m.queue_offset, topic: topic.to_string(), checks: 0, next_check_ms };
                open.insert(id.to_string(), entry);
            }
            next = last + 1;
        }
        if !open.is_empty() {
            tracing::info!(open = open.len(), "open transactions restored");
        }
        Ok(())
    }

    /// Sends the orphan checks that are due; gives up on transactions checked too often.
    pub(super) async fn check_transactions(&self) -> BrokerResult<()> {
        // Cluster: not while another node may be adopting this node's transactions.
        if !self.home_writable() {
            return Ok(());
        }
        let now = self.now_ms();
        let t = &self.inner.settings.transaction;
        let due: Vec<(String, Open)> = {
            let mut open = lock(&self.transactions().open);
            let mut due = Vec::new();
            for (id, o) in open.iter_mut().filter(|(_, o)| o.next_check_ms <= now) {
                o.checks += 1;
                o.next_check_ms = now + t.transaction_check_interval.as_millis() as i64;
                due.push((id.clone(), o.clone()));
            }
            due
        };
        for (id, o) in due {
            if o.checks > t.transaction_check_max {
                self.give_up(&id, &o).await?;
                continue;
            }
            let half = match self.read_half(o.offset) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(transaction_id = id, error = %e, "orphan check skipped");
                    continue;
                }
            };
            let mut message = DeliveredMessage::from_stored(half, String::new(), 1);
            message.topic = Arc::from(o.topic.as_str());
            let command =
                ClientCommand::RecoverOrphanedTransaction { message: Box::new(message), transaction_id: id.clone() };
            let Some(client) = self.transaction_checker(&o.topic) else {
                match self.transactions().relay.get() {
                    Some(relay) => {
                        relay.relay_orphan_check(&o.topic, command);
                        self.transactions().checks_sent.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            transaction_id = id,
                            topic = o.topic,
                            "orphan check relayed to the other nodes"
                        );
                    }
                    None => {
                        tracing::debug!(
                            transaction_id = id,
                            topic = o.topic,
                            "no connected producer to check an orphan with"
                        )
                    }
                }
                continue;
            };
            if self.send_client_command(&client, command) {
                self.transactions().checks_sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(transaction_id = id, client, check = o.checks, "orphan check sent");
            }
        }
        Ok(())
    }

    async fn give_up(&self, id: &str, o: &Open) -> BrokerResult<()> {
        if lock(&self.transactions().open).remove(id).is_none() {
            return Ok(());
        }
        let action = self.inner.settings.transaction.transaction_check_max_action;
        let result = match action {
            CheckMaxAction::Discard => self.resolve_half(o, Resolution::Rollback).await.map(|_| ()),
            CheckMaxAction::Keep => self.keep_half(o).await,
        };
        if let Err(e) = result {
            lock(&self.transactions().open).insert(id.to_string(), o.clone());
            return Err(e);
        }
        self.transactions().given_up.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            transaction_id = id,
            topic = o.topic,
            checks = o.checks - 1,
            ?action,
            "transaction never resolved; given up"
        );
        Ok(())
    }

    /// Keeps a given-up half message in `rmq_sys_trans_check_max` for an operator.
    async fn keep_half(&self, o: &Open) -> BrokerResult<()> {
        let half = self.read_half(o.offset)?;
        if self.cached_topic(CHECK_MAX_TOPIC).is_none() {
            self.create_topic(CHECK_MAX_TOPIC, Some(1), super::TopicKind::Mixed).await?;
        }
        let at = (HALF_TOPIC, 0, o.offset);
        let kept = message::reference(&half, Arc::from(CHECK_MAX_TOPIC), 0, at);
        let record = AckRecord { group: TX_GROUP.into(), topic: HALF_TOPIC.into(), queue_id: 0, offset: o.offset };
        self.inner.log.append(vec![kept, record.to_append(self.now_ms())]).await?;
        lock(&self.queue_state(TX_GROUP, HALF_TOPIC, 0)).complete(o.offset);
        Ok(())
    }

    /// Cluster: half messages adopted from a dead node's log, stored in this node's half queue
    /// at `offset`, are open here: `(transaction id, offset, topic, next check)`.
    pub(super) fn open_adopted(&self, adopted: Vec<(String, u64, String, i64)>) {
        let mut open = lock(&self.transactions().open);
        for (id, offset, topic, next_check_ms) in adopted {
            open.insert(id, Open { offset, topic, checks: 0, next_check_ms });
        }
    }

    /// Cluster: another node adopted this node's half messages below `below` (while this node
    /// was gone); they are settled here without an outcome (an ack of the system group, like a
    /// rollback: the adopter commits or rolls them back). Returns how many were open.
    pub(super) async fn settle_adopted_halves(&self, below: u64) -> BrokerResult<usize> {
        let adopted: Vec<(String, Open)> = {
            let open = lock(&self.transactions().open);
            open.iter().filter(|(_, o)| o.offset < below).map(|(id, o)| (id.clone(), o.clone())).collect()
        };
        let now = self.now_ms();
        for chunk in adopted.chunks(512) {
            let records = chunk
                .iter()
                .map(|(_, o)| {
                    AckRecord { group: TX_GROUP.into(), topic: HALF_TOPIC.into(), queue_id: 0, offset: o.offset }
                        .to_append(now)
                })
                .collect();
            self.inner.log.append(records).await?;
            let state = self.queue_state(TX_GROUP, HALF_TOPIC, 0);
            let mut open = lock(&self.transactions().open);
            for (id, o) in chunk {
                open.remove(id);
                lock(&state).complete(o.offset);
            }
        }
        Ok(adopted.len())
    }

    /// Open transactions (admin, tests).
    pub fn open_transactions(&self) -> usize {
        lock(&self.transactions().open).len()
    }

    /// Checks orphans every second until shutdown.
    pub async fn run_transaction_checker(&self) {
        let second = std::time::Duration::from_secs(1);
        self.every(second, "checking orphan transactions", || self.check_transactions()).await;
    }
}
