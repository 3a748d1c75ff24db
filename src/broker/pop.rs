//! Receiving (POP with long polling), acks, visibility changes, the dead-letter hand-off and
//! batched persistence of consumer progress.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::attempts::{AttemptKey, CachedReceive};
use super::consumer::{Due, HandleProblem, Inflight, QueueState, group_key};
use super::error::{BrokerError, BrokerResult};
use super::filter::Filter;
use super::journal::{AckRecord, Delivery, DeliveryRecord, JOURNAL_TOPIC, JournalRecord};
use super::message::DeliveredMessage;
use super::receipt::{self, Receipt};
use super::spans;
use super::{Broker, REMOTE_FETCH_ROUNDS, TopicEntry, TopicKind, lock, validate};
use crate::metadata::GroupRecord;
use crate::storage::{AppendMessage, StorageError, StoredMessage, record::keys};

/// A record failed its checks on read: it is never served; the group moves past it.
fn skip_damaged(group: &str, topic: &str, queue_id: u32, offset: u64, e: &StorageError) {
    tracing::error!(group, topic, queue_id, offset, error = %e, "skipping a damaged message for this consumer group");
}

/// What a delivery journal record waits for before the consumer hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journaled {
    /// Its write: under SYNC_FLUSH a machine crash before the next group commit may lose it
    /// (the message then comes back before its deadline, at least once).
    Written,
    /// Its group commit, as an ack waits for.
    Synced,
}

/// Most body bytes returned by one receive (at least one message is always returned).
const MAX_RECEIVE_BYTES: usize = 8 * 1024 * 1024;
/// Longest time auto-renewal keeps a message invisible (Apache `renewMaxTimeMillis`).
const RENEW_MAX_MS: i64 = 3 * 3600 * 1000;
/// Retry delay when moving a message to the dead-letter queue failed.
const DEAD_LETTER_RETRY_MS: i64 = 30_000;
/// Orderly groups: most messages per queue passed over while their message group is busy
/// (beyond it the scan pauses until groups drain).
const MAX_WAITING: usize = 10_000;
/// A message whose attempts are used up, for the dead-letter queue: (queue id, (message,
/// deliveries made)).
type DeadLetter = (u32, (StoredMessage, u32));
/// Priority topics: one message competing for delivery: (score, offset, the attempt and the
/// message when it is a retry).
type Candidate = (i64, u64, Option<(u32, StoredMessage)>);
/// Priority topics: new messages per queue that compete by priority (beyond them, queue order).
const PRIORITY_WINDOW: usize = 1024;
/// Priority topics: a waiting message gains one priority level per this much waiting.
const PRIORITY_AGING_MS: i64 = 1000;
/// Separates a broadcast group's name from a client id in the name of that client's own
/// consumer (`group@@client`): group names cannot contain `@`.
const BROADCAST_SEP: &str = "@@";

/// The configured group a consumer name belongs to (itself, or a broadcast group's).
pub(super) fn base_group(consumer: &str) -> &str {
    consumer.split_once(BROADCAST_SEP).map_or(consumer, |(group, _)| group)
}

/// Most index entries one receive passes over for a tag filter before it reads records again.
const TAG_SKIP_MAX: usize = 64 * 1024;
/// Index entries asked for at a time while passing over rejected messages.
const TAG_SKIP_CHUNK: usize = 256;
/// Long polls re-check at least this often (deliveries whose invisibility ends are not
/// announced by an append).
const RECHECK: Duration = Duration::from_millis(500);

/// A ReceiveMessage call in domain terms.
#[derive(Debug, Clone)]
pub struct ReceiveRequest {
    pub client_id: String,
    pub group: String,
    pub topic: String,
    pub filter: Filter,
    /// 0 means the configured default.
    pub batch_size: usize,
    /// Required unless `auto_renew`.
    pub invisible_duration: Option<Duration>,
    pub auto_renew: bool,
    /// What the client asked for (`long_polling_timeout`), if anything.
    pub long_polling_timeout: Option<Duration>,
    /// Time left before the client's own deadline, if it sent one.
    pub deadline_remaining: Option<Duration>,
    /// The client's id for this receive; a retry with the same id after a lost response gets
    /// the same messages back (Java PushConsumer).
    pub attempt_id: Option<String>,
}

impl Broker {
    /// The name progress, receipts and the journal use for `group` as seen by `client_id`:
    /// the group itself, or for a BROADCASTING group the client's own consumer of it.
    pub(super) fn consumer_key(&self, group: &str, client_id: &str) -> String {
        let broadcast =
            self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).get(group).is_some_and(|g| g.broadcast);
        if broadcast { format!("{group}{BROADCAST_SEP}{client_id}") } else { group.to_string() }
    }

    pub(super) fn next_serial(&self) -> u64 {
        self.inner.serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// How long this receive may wait for messages.
    fn polling_time(&self, req: &ReceiveRequest) -> Duration {
        self.long_polling_time(req.long_polling_timeout, req.deadline_remaining)
    }

    /// Receives up to `batch_size` messages, waiting up to the polling time for some to arrive.
    pub async fn receive(&self, req: ReceiveRequest) -> BrokerResult<Vec<DeliveredMessage>> {
        let c = &self.inner.settings.consumer;
        validate::validate_group(&req.group)?;
        let invisible = if req.auto_renew {
            c.default_invisible_time
        } else {
            let d = req.invisible_duration.ok_or_else(|| {
                BrokerError::IllegalInvisibleTime("invisible_duration is required unless auto_renew is set".into())
            })?;
            if d < c.min_invisible_time || d > c.max_invisible_time {
                return Err(BrokerError::IllegalInvisibleTime(format!(
                    "invisible duration {} is outside [{}, {}]",
                    humantime::format_duration(d),
                    humantime::format_duration(c.min_invisible_time),
                    humantime::format_duration(c.max_invisible_time)
                )));
            }
            d
        };
        let topic = self.client_topic(&req.topic).await?;
        let mut group = self.group(&req.group).await?;
        if group.broadcast {
            // Every client of a broadcast group consumes on its own.
            group.name = self.consumer_key(&group.name, &req.client_id);
            lock(&self.inner.broadcast_seen).insert(group.name.clone(), self.now_ms());
        }
        let gone = self.client_receiving(&req.client_id);
        let max = match req.batch_size {
            0 => c.receive_batch_size as usize,
            n => n.min(c.receive_batch_size as usize),
        };
        let attempt = req
            .attempt_id
            .as_ref()
            .filter(|a| !a.is_empty())
            .map(|a| (req.client_id.clone(), group.name.clone(), topic.record.name.clone(), a.clone()));
        if let Some(key) = &attempt {
            let again = self.replay_attempt(key, &req, invisible);
            if !again.is_empty() {
                tracing::debug!(
                    client_id = req.client_id,
                    attempt_id = key.3,
                    count = again.len(),
                    "receive retried: same messages again"
                );
                self.remember_attempt(key.clone(), &again, invisible);
                if req.auto_renew {
                    self.renewing_for(&gone, &key.1, &key.2, again.iter().map(|m| m.queue_id));
                }
                return Ok(again);
            }
        }
        let deadline = Instant::now() + self.polling_time(&req);
        let shutdown = self.inner.shutdown.clone();
        loop {
            let notified = topic.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.pop(&topic, &group, &req, max, invisible).await?;
            if !got.is_empty() {
                if req.auto_renew {
                    self.renewing_for(&gone, &group.name, &topic.record.name, got.iter().map(|m| m.queue_id));
                }
                spans::delivered(&got, &group.name, &req.client_id);
                let auto_renew_client = req.auto_renew.then(|| req.client_id.clone());
                // A FIFO delivery holds its message group: journaled durably before it is
                // sent, so a crash cannot hand the group to a second consumer early. Other
                // receives are answered once their record is written (`append_written`): a
                // machine crash before the next sync then costs only an early redelivery.
                let durable = if group.fifo { Journaled::Synced } else { Journaled::Written };
                self.journal_deliveries(
                    &group.name,
                    &topic,
                    (auto_renew_client, Some(req.client_id.clone()), false),
                    // Handles issued by this receive: read back, not verified again.
                    got.iter().filter_map(|m| receipt::read_issued(&m.receipt_handle)),
                    durable,
                )
                .await;
                if let Some(key) = attempt {
                    self.remember_attempt(key, &got, invisible);
                }
                if group.fifo && self.clustered() {
                    // Cluster: a FIFO delivery is in the shared store before the consumer sees
                    // it, so a node taking the queue over after a crash or a partition keeps
                    // the message group locked (concurrent receives share one write). Failing
                    // that, the receive fails: a retry with the same attempt id gets the same
                    // messages, else they come back at their deadline.
                    self.flush_progress().await?;
                }
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline.min(now + RECHECK)) => {}
                _ = shutdown.cancelled() => return Ok(Vec::new()),
                _ = gone.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Journals deliveries (their receipts) before the consumer sees them, so a
    /// restart keeps them invisible until their deadline with their attempt count and serial
    /// (after a machine crash only if the record was synced: `durable`).
    /// A failed journal write only costs that guarantee (the message may come back early after
    /// a crash), so it is logged, not returned.
    async fn journal_deliveries(
        &self,
        group: &str,
        topic: &TopicEntry,
        (auto_renew_client, receiver, invisible_change): (Option<String>, Option<String>, bool),
        receipts: impl Iterator<Item = Receipt>,
        durable: Journaled,
    ) {
        let deliveries: Vec<Delivery> = receipts
            .map(|r| Delivery {
                queue_id: r.queue_id,
                offset: r.offset,
                serial: r.serial,
                attempt: r.attempt,
                visible_at_ms: r.deadline_ms,
            })
            .collect();
        let record = DeliveryRecord {
            group: group.to_string(),
            topic: topic.record.name.clone(),
            auto_renew_client,
            receiver,
            invisible_change,
            deliveries,
        };
        let append = vec![record.to_append(self.now_ms())];
        let appended = match durable {
            Journaled::Synced => self.inner.log.append(append).await,
            Journaled::Written => self.inner.log.append_written(append).await,
        };
        if let Err(e) = appended {
            tracing::warn!(group, topic = topic.record.name, error = %e, "journaling deliveries failed; after a crash they may be delivered again early");
        }
    }

    fn remember_attempt(&self, key: AttemptKey, messages: &[DeliveredMessage], invisible: Duration) {
        let now = self.now_ms();
        let expires_ms = now + invisible.as_millis() as i64;
        lock(&self.inner.attempts).insert(key, CachedReceive { expires_ms, messages: messages.to_vec() }, now);
    }

    /// The messages of an earlier receive with the same attempt id that are still held for
    /// this consumer (not acked, not delivered to anyone else since), taken back under the
    /// same receipt handles.
    fn replay_attempt(&self, key: &AttemptKey, req: &ReceiveRequest, invisible: Duration) -> Vec<DeliveredMessage> {
        let Some(cached) = lock(&self.inner.attempts).take(key) else { return Vec::new() };
        let now = self.now_ms();
        if cached.expires_ms <= now {
            return Vec::new();
        }
        let (group, topic) = (&key.1, &key.2);
        let Some(entry) = self.cached_topic(topic) else { return Vec::new() };
        let renew: Option<Arc<str>> = req.auto_renew.then(|| Arc::from(req.client_id.as_str()));
        let visible_at = now + invisible.as_millis() as i64;
        cached
            .messages
            .into_iter()
            .filter(|m| {
                self.decode_receipt(group, &entry, &m.receipt_handle).is_ok_and(|r| {
                    lock(&self.queue_state_at(group, topic, r.queue_id, now)).reclaim(
                        r.offset,
                        r.serial,
                        visible_at,
                        renew.clone(),
                    )
                })
            })
            .collect()
    }

    /// One pass over the topic's queues, starting at a rotating queue for fairness.
    async fn pop(
        &self,
        topic: &TopicEntry,
        group: &GroupRecord,
        req: &ReceiveRequest,
        max: usize,
        invisible: Duration,
    ) -> BrokerResult<Vec<DeliveredMessage>> {
        let n = topic.record.queue_nums;
        let start = topic.round_robin.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = Vec::new();
        let mut dead = Vec::new();
        let mut bytes = 0usize;
        // Cold data: a queue whose next messages are in the object store and not cached yet
        // ends its pass; when the whole pass found nothing, the fetches are awaited here,
        // outside every lock, and the pass runs again.
        for round in 0..=REMOTE_FETCH_ROUNDS {
            // One reading of the clock per pass (each queue's deadlines and last use), read
            // again after a fetch was awaited.
            let now = self.now_ms();
            let mut fetch = Vec::new();
            for i in 0..n {
                if out.len() >= max || bytes >= MAX_RECEIVE_BYTES {
                    break;
                }
                let queue_id = (start.wrapping_add(i)) % n;
                if !self.owns(&topic.record.name, queue_id) {
                    continue;
                }
                match self.pop_queue(topic, group, req, queue_id, now, max, invisible, &mut out, &mut bytes, &mut dead)
                {
                    Ok(()) => {}
                    Err(BrokerError::RemoteNotCached { topic, queue_id, offset }) => {
                        fetch.push((topic, queue_id, offset))
                    }
                    Err(e) => return Err(e),
                }
            }
            if !out.is_empty() || fetch.is_empty() || round == REMOTE_FETCH_ROUNDS {
                break;
            }
            for (t, q, offset) in fetch {
                self.inner.log.fetch_remote(&t, q, offset, MAX_RECEIVE_BYTES).await?;
            }
        }
        for (queue_id, message) in dead {
            let offset = message.0.queue_offset;
            if let Err(e) = self.dead_letter(&group.name, &topic.record.name, queue_id, message).await {
                tracing::warn!(group = group.name, topic = topic.record.name, queue_id, offset, error = %e, "dead-letter move failed; will retry");
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn pop_queue(
        &self,
        topic: &TopicEntry,
        group: &GroupRecord,
        req: &ReceiveRequest,
        queue_id: u32,
        now: i64,
        max: usize,
        invisible: Duration,
        out: &mut Vec<DeliveredMessage>,
        bytes: &mut usize,
        dead: &mut Vec<DeadLetter>,
    ) -> BrokerResult<()> {
        let log = &self.inner.log;
        let name = topic.record.name.as_str();
        let state = self.queue_state_at(&group.name, name, queue_id, now);
        let mut st = lock(&state);
        let range = log.queue_range(name, queue_id);
        st.trim_to(range.start);
        let alive = |c: &str| self.client_alive(c);
        let orderly = group.fifo;
        if orderly {
            self.resolve_group_keys(name, queue_id, &mut st)?;
        }
        let max_attempts = (group.retry_max_times + 1).max(1) as u32;
        let auto_renew_client: Option<Arc<str>> = req.auto_renew.then(|| Arc::from(req.client_id.as_str()));
        let invisible_ms = invisible.as_millis() as i64;
        let deliver = |st: &mut QueueState,
                       m: StoredMessage,
                       attempt: u32,
                       out: &mut Vec<DeliveredMessage>,
                       bytes: &mut usize| {
            let serial = self.next_serial();
            let deadline_ms = now + invisible_ms;
            let receipt = Receipt { queue_id, offset: m.queue_offset, serial, attempt, deadline_ms, node: 0 };
            let handle = self.inner.receipts.encode(&receipt, &group.name, name);
            st.deliver(
                m.queue_offset,
                Inflight {
                    visible_at_ms: deadline_ms,
                    attempt,
                    serial,
                    auto_renew_client: auto_renew_client.clone(),
                    first_delivery_ms: now,
                    group_key: Some(group_key(m.properties.get(keys::SHARDING_KEY))),
                },
            );
            tracing::debug!(
                group = group.name,
                topic = name,
                queue_id,
                offset = m.queue_offset,
                attempt,
                serial,
                message_group = m.properties.get(keys::SHARDING_KEY),
                client_id = req.client_id,
                "handing out"
            );
            *bytes += m.body.len();
            out.push(DeliveredMessage::from_stored(m, handle, attempt));
        };
        if topic.record.topic_type == TopicKind::Priority && !orderly {
            let limits = (max, max_attempts, now);
            return self.pop_by_priority(&group.name, name, queue_id, &mut st, req, limits, &deliver, out, bytes, dead);
        }

        // 1. Deliveries whose invisibility ended: again, or to the DLQ once attempts are used up.
        //    For orderly groups each is the head of its message group (only heads are in flight).
        for due in st.take_due(now, max - out.len(), max_attempts, &alive, RENEW_MAX_MS) {
            if let Some((attempt, m)) = self.due_message(&group.name, name, queue_id, &mut st, due, req, now, dead)? {
                deliver(&mut st, m, attempt, out, bytes);
            }
        }
        // Orderly groups: a message group with a delivery in flight gets nothing more until it
        // is acked or dead-lettered; other groups of the queue go on (no head-of-line blocking).
        let mut busy = if orderly { st.busy_groups() } else { HashSet::new() };

        // 2. Orderly groups: messages passed over earlier whose group is free now, oldest first.
        if orderly {
            let waiting: Vec<(u64, u64)> = st.waiting.iter().map(|(&o, &g)| (o, g)).collect();
            for (offset, key) in waiting {
                if out.len() >= max || *bytes >= MAX_RECEIVE_BYTES {
                    return Ok(());
                }
                if busy.contains(&key) {
                    continue;
                }
                busy.insert(key);
                // Read before leaving `waiting`: a failed read must not drop the offset.
                match self.read_one(&group.name, name, queue_id, offset)? {
                    Some(m) if req.filter.matches(&m) => {
                        st.waiting.remove(&offset);
                        deliver(&mut st, m, 1, out, bytes);
                    }
                    _ => st.complete(offset),
                }
            }
        }

        // 3. New messages from `next` on.
        let wanted_tags = req.filter.tag_hashes();
        'scan: while out.len() < max && *bytes < MAX_RECEIVE_BYTES && st.next < range.end {
            // Acked ranges (after a restart, or past a long-held message) are not read again.
            st.next = st.skip_acked(st.next);
            if st.next >= range.end {
                break;
            }
            // A tag filter passes over what it rejects from the queue index alone: those
            // messages are acknowledged for the group without reading their records.
            if let Some(wanted) = &wanted_tags {
                st.next = self.skip_unwanted_tags(name, queue_id, &mut st, wanted, range.end);
                if st.next >= range.end {
                    break;
                }
            }
            let batch = match log.read(name, queue_id, st.next, max - out.len(), MAX_RECEIVE_BYTES - *bytes) {
                Ok(batch) => batch,
                Err(e @ StorageError::Corrupted { .. }) => {
                    // The damaged record is the first one asked for: skip it for this group
                    // rather than wedge the queue forever.
                    let offset = st.next;
                    skip_damaged(&group.name, name, queue_id, offset, &e);
                    st.complete(offset);
                    st.next = offset + 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(last) = batch.last().map(|m| m.queue_offset) else {
                break;
            };
            for m in batch {
                let offset = m.queue_offset;
                if st.is_acked(offset) || st.inflight.contains_key(&offset) || st.waiting.contains_key(&offset) {
                    continue;
                }
                // Like Apache: a message the filter rejects is acknowledged for this group.
                let Some(m) = self.admit(m, &req.filter)? else {
                    st.complete(offset);
                    continue;
                };
                if orderly {
                    let key = group_key(m.properties.get(keys::SHARDING_KEY));
                    if !busy.insert(key) {
                        if st.waiting.len() >= MAX_WAITING {
                            // Bounded memory: stop here; the scan resumes once groups drain.
                            st.next = offset;
                            break 'scan;
                        }
                        st.waiting.insert(offset, key);
                        continue;
                    }
                }
                deliver(&mut st, m, 1, out, bytes);
            }
            st.next = st.next.max(last + 1);
        }
        Ok(())
    }

    /// From `st.next` on, completes (for the group) the messages whose tag hash `wanted` does
    /// not hold, as read from the queue index — no record read — up to the first one it may
    /// hold (checked in full by the caller: hashes can collide) or [`TAG_SKIP_MAX`] entries;
    /// returns where the scan goes on. In-flight or waiting offsets are left alone.
    fn skip_unwanted_tags(
        &self,
        topic: &str,
        queue_id: u32,
        st: &mut QueueState,
        wanted: &HashSet<u64>,
        end: u64,
    ) -> u64 {
        let from = st.next;
        let mut next = from;
        // In chunks: when the first entries are wanted (the common case for a filter that
        // accepts most messages) only a chunk of the index is looked at, not TAG_SKIP_MAX.
        while next < end && next - from < TAG_SKIP_MAX as u64 {
            // An index the log cannot answer from is left to the record read (which handles damage).
            let Ok(entries) = self.inner.log.tag_hashes(topic, queue_id, next, TAG_SKIP_CHUNK) else { break };
            let chunk_start = next;
            for (offset, hash) in entries {
                if offset != next || offset >= end || wanted.contains(&hash) {
                    return next;
                }
                if !st.is_acked(offset) && !st.inflight.contains_key(&offset) && !st.waiting.contains_key(&offset) {
                    st.complete(offset);
                }
                next = offset + 1;
            }
            if next - chunk_start < TAG_SKIP_CHUNK as u64 {
                break; // the index ended (or could not answer) within the chunk
            }
        }
        next
    }

    /// A queue of a PRIORITY topic: the deliveries due again and the next
    /// [`PRIORITY_WINDOW`] new messages compete; the highest effective priority goes first
    /// (a message's priority plus one level per [`PRIORITY_AGING_MS`] it has been waiting, so
    /// the lowest is never starved; ties in offset order). A retry keeps its message's priority
    /// instead of jumping the queue or falling behind it.
    #[allow(clippy::too_many_arguments)]
    fn pop_by_priority(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        st: &mut QueueState,
        req: &ReceiveRequest,
        (max, max_attempts, now): (usize, u32, i64),
        deliver: &impl Fn(&mut QueueState, StoredMessage, u32, &mut Vec<DeliveredMessage>, &mut usize),
        out: &mut Vec<DeliveredMessage>,
        bytes: &mut usize,
        dead: &mut Vec<DeadLetter>,
    ) -> BrokerResult<()> {
        let alive = |c: &str| self.client_alive(c);
        let priority_of =
            |m: &StoredMessage| m.properties.get(keys::PRIORITY).and_then(|p| p.parse().ok()).unwrap_or(0);
        let score =
            |priority: i32, waiting_since: i64| i64::from(priority) + (now - waiting_since).max(0) / PRIORITY_AGING_MS;
        let mut candidates: Vec<Candidate> = Vec::new();
        for due in st.take_due(now, PRIORITY_WINDOW, max_attempts, &alive, RENEW_MAX_MS) {
            let offset = due.offset();
            let since = st.inflight.get(&offset).map_or(now, |e| e.visible_at_ms);
            if let Some((attempt, m)) = self.due_message(group, topic, queue_id, st, due, req, now, dead)? {
                candidates.push((score(priority_of(&m), since), offset, Some((attempt, m))));
            }
        }
        let range = self.inner.log.queue_range(topic, queue_id);
        while st.ranked.len() < PRIORITY_WINDOW && st.next < range.end {
            st.next = st.skip_acked(st.next);
            if st.next >= range.end {
                break;
            }
            let batch = match self.inner.log.read(topic, queue_id, st.next, PRIORITY_WINDOW, MAX_RECEIVE_BYTES) {
                Ok(batch) => batch,
                Err(e @ StorageError::Corrupted { .. }) => {
                    let offset = st.next;
                    skip_damaged(group, topic, queue_id, offset, &e);
                    st.complete(offset);
                    st.next = offset + 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in batch {
                let offset = m.queue_offset;
                if st.is_acked(offset) || st.inflight.contains_key(&offset) {
                    continue;
                }
                if req.filter.matches(&m) {
                    // Waiting since now by the broker's clock (the first pop that saw it).
                    st.ranked.insert(offset, (priority_of(&m), now));
                } else {
                    st.complete(offset);
                }
            }
            st.next = st.next.max(last + 1);
        }
        candidates.extend(st.ranked.iter().map(|(&offset, &(p, stored))| (score(p, stored), offset, None)));
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, offset, retry) in candidates {
            if out.len() >= max || *bytes >= MAX_RECEIVE_BYTES {
                break;
            }
            match retry {
                Some((attempt, m)) => deliver(st, m, attempt, out, bytes),
                None => match self.read_one(group, topic, queue_id, offset)? {
                    Some(m) => {
                        st.ranked.remove(&offset);
                        deliver(st, m, 1, out, bytes);
                    }
                    None => st.complete(offset),
                },
            }
        }
        Ok(())
    }

    /// A delivery whose invisibility ended: the message to deliver again with its next attempt,
    /// or `None` when there is nothing to deliver — it is gone or filtered out (completed), or its
    /// attempts are used up (queued in `dead` for the DLQ; invisible meanwhile).
    #[allow(clippy::too_many_arguments)]
    fn due_message(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        st: &mut QueueState,
        due: Due,
        req: &ReceiveRequest,
        now: i64,
        dead: &mut Vec<DeadLetter>,
    ) -> BrokerResult<Option<(u32, StoredMessage)>> {
        let offset = due.offset();
        match (self.read_one(group, topic, queue_id, offset)?, due) {
            (None, _) => st.complete(offset),
            (Some(m), Due::DeadLetter { .. }) => {
                let mut attempts = 0;
                if let Some(e) = st.inflight.get_mut(&offset) {
                    e.visible_at_ms = now + DEAD_LETTER_RETRY_MS;
                    e.auto_renew_client = None;
                    attempts = e.attempt;
                }
                dead.push((queue_id, (m, attempts)));
            }
            (Some(m), Due::Redeliver { .. }) if !req.filter.matches(&m) => st.complete(offset),
            (Some(m), Due::Redeliver { attempt, .. }) => return Ok(Some((attempt, m))),
        }
        Ok(None)
    }

    /// One message of a queue (references resolved), or `None` if retention deleted it or it
    /// is damaged (logged; the caller moves past it).
    fn read_one(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> BrokerResult<Option<StoredMessage>> {
        match self.inner.log.read(topic, queue_id, offset, 1, usize::MAX) {
            Ok(batch) => match batch.into_iter().find(|m| m.queue_offset == offset) {
                Some(m) => self.resolve(m),
                None => Ok(None),
            },
            Err(e @ StorageError::Corrupted { .. }) => {
                skip_damaged(group, topic, queue_id, offset, &e);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Orderly groups need the message group of every delivery in flight; deliveries restored
    /// after a restart do not know it yet: read it from the log.
    fn resolve_group_keys(&self, topic: &str, queue_id: u32, st: &mut QueueState) -> BrokerResult<()> {
        let unknown: Vec<u64> = st.inflight.iter().filter(|(_, e)| e.group_key.is_none()).map(|(&o, _)| o).collect();
        for offset in unknown {
            let key = match self.inner.log.read(topic, queue_id, offset, 1, usize::MAX) {
                Ok(batch) => batch
                    .into_iter()
                    .find(|m| m.queue_offset == offset)
                    .map_or(0, |m| group_key(m.properties.get(keys::SHARDING_KEY))),
                Err(StorageError::Corrupted { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
            if let Some(e) = st.inflight.get_mut(&offset) {
                e.group_key = Some(key);
            }
        }
        Ok(())
    }

    /// Moves a message whose attempts are exhausted (`attempts` deliveries made) to
    /// `%DLQ%{group}`, then acks it. The copy keeps the message id, body and properties and
    /// gets Apache's: `DLQ_ORIGIN_TOPIC`/`RETRY_TOPIC` (the topic it came from),
    /// `DLQ_ORIGIN_MESSAGE_ID`/`ORIGIN_MESSAGE_ID`, `RECONSUME_TIME` (deliveries made) and
    /// `MAX_RECONSUME_TIMES` (the group's limit).
    async fn dead_letter(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        (m, attempts): (StoredMessage, u32),
    ) -> BrokerResult<()> {
        let dlq_name = format!("%DLQ%{}", base_group(group));
        let dlq = match self.cached_topic(&dlq_name) {
            Some(t) => t,
            None => {
                self.create_topic(&dlq_name, Some(1), TopicKind::Mixed).await?;
                self.cached_topic(&dlq_name).ok_or_else(|| BrokerError::TopicNotFound(dlq_name.clone()))?
            }
        };
        let max = self
            .inner
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(base_group(group))
            .map(|g| g.retry_max_times);
        let id = m.properties.get(keys::UNIQ_KEY).unwrap_or_default().to_string();
        let mut properties = m.properties.clone();
        for key in [
            keys::DLQ_ORIGIN_TOPIC,
            keys::DLQ_ORIGIN_MESSAGE_ID,
            keys::RETRY_TOPIC,
            keys::ORIGIN_MESSAGE_ID,
            keys::RECONSUME_TIME,
            keys::MAX_RECONSUME_TIMES,
        ] {
            properties.remove(key);
        }
        properties.push(keys::DLQ_ORIGIN_TOPIC, topic);
        properties.push(keys::DLQ_ORIGIN_MESSAGE_ID, &id);
        properties.push(keys::RETRY_TOPIC, topic);
        properties.push(keys::ORIGIN_MESSAGE_ID, &id);
        properties.push(keys::RECONSUME_TIME, attempts.to_string());
        if let Some(max) = max {
            properties.push(keys::MAX_RECONSUME_TIMES, max.to_string());
        }
        let append = AppendMessage {
            topic: Arc::from(dlq_name.as_str()),
            queue_id: 0,
            born_timestamp_ms: m.born_timestamp_ms,
            flags: m.flags,
            tag_hash: m.tag_hash,
            properties,
            body: m.body.clone(),
        };
        // The copy and the ack in one all-or-nothing append: never both lost, never one twice.
        let record = AckRecord { group: group.to_string(), topic: topic.to_string(), queue_id, offset: m.queue_offset };
        let mut span = spans::stored_event(
            "dlq",
            "send",
            topic,
            &m,
            vec![
                opentelemetry::KeyValue::new(crate::observability::tracing::attr::DLQ_TOPIC, dlq_name.clone()),
                opentelemetry::KeyValue::new(
                    crate::observability::tracing::attr::CONSUMER_GROUP,
                    base_group(group).to_string(),
                ),
                opentelemetry::KeyValue::new(crate::observability::tracing::attr::ATTEMPT, i64::from(attempts)),
            ],
        );
        if let Err(e) = self.inner.log.append(vec![append, record.to_append(self.now_ms())]).await {
            let e = BrokerError::from(e);
            span.fail(&spans::error_type(&e), &e.to_string());
            return Err(e);
        }
        drop(span);
        lock(&self.queue_state(group, topic, queue_id)).complete(m.queue_offset);
        dlq.arrivals.notify_waiters();
        if let Some(t) = self.cached_topic(topic) {
            self.group_moved_on(group, &t);
        }
        if let Some(metrics) = crate::observability::metrics::global() {
            metrics.dlq_move(topic, group);
        }
        tracing::info!(group, topic, queue_id, offset = m.queue_offset, "moved message to {dlq_name}");
        Ok(())
    }

    /// ForwardMessageToDeadLetterQueue: the client gives up on a delivery it holds.
    pub async fn forward_to_dead_letter(
        &self,
        client_id: &str,
        group: &str,
        topic: &str,
        handle: &str,
    ) -> BrokerResult<()> {
        validate::validate_group(group)?;
        let topic = self.client_topic(topic).await?;
        self.touch_client(client_id);
        let group = &self.consumer_key(group, client_id);
        let r = self.decode_receipt(group, &topic, handle)?;
        let name = topic.record.name.as_str();
        let state = self.queue_state(group, name, r.queue_id);
        let checked = lock(&state).verify(&r, self.now_ms());
        match checked {
            Ok(()) => {}
            // Already handled (e.g. a retry of this call after a lost response).
            Err(HandleProblem::AlreadyAcked) => return Ok(()),
            Err(p) => return Err(self.handle_problem(p, &r)),
        }
        let m = self.read_one(group, name, r.queue_id, r.offset)?.ok_or_else(|| {
            BrokerError::InvalidReceiptHandle("the message no longer exists (retention deleted it)".into())
        })?;
        self.dead_letter(group, name, r.queue_id, (m, r.attempt)).await
    }

    fn decode_receipt(&self, group: &str, topic: &TopicEntry, handle: &str) -> BrokerResult<Receipt> {
        let r = self
            .inner
            .receipts
            .decode(handle, group, &topic.record.name)
            .map_err(|e| BrokerError::InvalidReceiptHandle(e.to_string()))?;
        if r.queue_id >= topic.record.queue_nums {
            return Err(BrokerError::InvalidReceiptHandle(format!(
                "receipt handle names queue {} but topic `{}` has {} queues",
                r.queue_id, topic.record.name, topic.record.queue_nums
            )));
        }
        Ok(r)
    }

    fn handle_problem(&self, p: HandleProblem, r: &Receipt) -> BrokerError {
        BrokerError::InvalidReceiptHandle(match p {
            HandleProblem::Stale => {
                "receipt handle is stale: the message was delivered again after it was issued".into()
            }
            HandleProblem::Expired => format!(
                "receipt handle expired {} ms ago; the message will be delivered again",
                self.now_ms().saturating_sub(r.deadline_ms)
            ),
            HandleProblem::AlreadyAcked => "the message was already acknowledged".into(),
            HandleProblem::Reset => "receipt handle predates a reset of the group's offset: it no longer \
                                     acknowledges or changes the message, which is delivered again"
                .into(),
        })
    }

    /// Acknowledges one delivery.
    pub async fn ack(&self, client_id: &str, group: &str, topic: &str, handle: &str) -> BrokerResult<()> {
        self.ack_many(client_id, group, topic, &[handle]).await?.pop().unwrap_or(Ok(()))
    }

    /// Acknowledges the deliveries of one AckMessage request (one group, one topic): each
    /// entry gets its own result, and the acks are journaled with one log append (one group
    /// commit under SYNC_FLUSH, not one per entry). The outer error is the request's own
    /// (bad group or topic).
    pub async fn ack_many(
        &self,
        client_id: &str,
        group: &str,
        topic: &str,
        handles: &[&str],
    ) -> BrokerResult<Vec<BrokerResult<()>>> {
        validate::validate_group(group)?;
        let topic = self.client_topic(topic).await?;
        self.touch_client(client_id);
        let group = &self.consumer_key(group, client_id);
        // An offset reset waits for acks under way, so their journal records precede its own.
        let _journal_order = self.reset_gate(group, &topic.record.name).read().await;
        let now = self.now_ms();
        let mut results = Vec::with_capacity(handles.len());
        let mut records = Vec::with_capacity(handles.len());
        for handle in handles {
            let r = match self.decode_receipt(group, &topic, handle) {
                Ok(r) => r,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let state = self.queue_state_at(group, &topic.record.name, r.queue_id, now);
            let result = lock(&state).ack(&r, now);
            tracing::debug!(
                group,
                topic = topic.record.name,
                queue_id = r.queue_id,
                offset = r.offset,
                serial = r.serial,
                client_id,
                ?result,
                "ack"
            );
            let result = result.map_err(|p| self.handle_problem(p, &r));
            let traced = result.as_ref().map(|_| ());
            spans::settled("ack", group, &topic.record.name, client_id, r.queue_id, r.offset, None, traced);
            if result.is_ok() {
                // Durable before the client hears OK (also for repeated acks, so a client that
                // retries an ack whose journal write failed gets it journaled).
                let record = AckRecord {
                    group: group.to_string(),
                    topic: topic.record.name.clone(),
                    queue_id: r.queue_id,
                    offset: r.offset,
                };
                records.push(record.to_append(now));
            }
            results.push(result);
        }
        if !records.is_empty() {
            if let Err(e) = self.inner.log.append(records).await {
                let e = BrokerError::from(e);
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
            }
            self.group_moved_on(group, &topic);
        }
        Ok(results)
    }

    /// An orderly group's message group may have its next message ready now: wake its long
    /// polls instead of letting them wait for the periodic re-check.
    fn group_moved_on(&self, group: &str, topic: &TopicEntry) {
        let orderly =
            self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).get(base_group(group)).is_some_and(|g| g.fifo);
        if orderly {
            topic.arrivals.notify_waiters();
        }
    }

    /// Makes a delivery visible again after `delay` (a nack with backoff, or an extension),
    /// returning the new receipt handle.
    pub async fn change_invisible_duration(
        &self,
        client_id: &str,
        group: &str,
        topic: &str,
        handle: &str,
        delay: Duration,
    ) -> BrokerResult<String> {
        validate::validate_group(group)?;
        let max = self.inner.settings.consumer.max_invisible_time;
        if delay > max {
            return Err(BrokerError::IllegalInvisibleTime(format!(
                "invisible duration {} exceeds the limit of {}",
                humantime::format_duration(delay),
                humantime::format_duration(max)
            )));
        }
        let topic = self.client_topic(topic).await?;
        self.touch_client(client_id);
        let group = &self.consumer_key(group, client_id);
        let r = self.decode_receipt(group, &topic, handle)?;
        let state = self.queue_state(group, &topic.record.name, r.queue_id);
        let now = self.now_ms();
        let visible_at = now + delay.as_millis() as i64;
        let serial = self.next_serial();
        let changed = lock(&state).change_invisible(&r, now, visible_at, serial);
        let entry = changed.map_err(|p| self.handle_problem(p, &r));
        let traced = entry.as_ref().map(|_| ());
        spans::settled("nack", group, &topic.record.name, client_id, r.queue_id, r.offset, Some(delay), traced);
        let entry = entry?;
        let new = Receipt { serial: entry.serial, deadline_ms: entry.visible_at_ms, ..r };
        let handle = self.inner.receipts.encode(&new, group, &topic.record.name);
        let by = (None, Some(client_id.to_string()), true);
        // Synced before the client hears of it, like an ack: the new deadline is what it asked for.
        self.journal_deliveries(group, &topic, by, std::iter::once(new), Journaled::Synced).await;
        Ok(handle)
    }

    /// Loads the last progress snapshot, then replays the acks journaled after it.
    pub(super) async fn restore_progress(&self) -> BrokerResult<()> {
        let (records, journal_offset) = self.inner.meta.load_progress().await?;
        for p in records {
            let state = QueueState::restore(p.ack_floor, &p.acked_above);
            self.restore_queue_state((Arc::from(p.group.as_str()), Arc::from(p.topic.as_str()), p.queue_id), state);
        }
        let range = self.inner.log.queue_range(JOURNAL_TOPIC, 0);
        let mut next = journal_offset.max(range.start);
        let mut replayed = 0u64;
        while next < range.end {
            let batch = self
                .with_remote_fetch(REMOTE_FETCH_ROUNDS, || {
                    Ok(self.inner.log.read(JOURNAL_TOPIC, 0, next, 1024, 4 * 1024 * 1024)?)
                })
                .await?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in &batch {
                match JournalRecord::decode(m) {
                    Some(JournalRecord::Ack(a)) => {
                        lock(&self.queue_state(&a.group, &a.topic, a.queue_id)).complete(a.offset);
                    }
                    Some(JournalRecord::Reset(r)) => {
                        for q in &r.queues {
                            lock(&self.queue_state(&r.group, &r.topic, q.queue_id))
                                .reset_to(q.offset, q.serial_watermark);
                        }
                    }
                    Some(JournalRecord::Deliveries(d)) => {
                        let client: Option<Arc<str>> = d.auto_renew_client.as_deref().map(Arc::from);
                        if let Some(c) = &client {
                            self.note_renewals(c, &d.group, &d.topic, d.deliveries.iter().map(|x| x.queue_id));
                        }
                        for x in d.deliveries {
                            let entry = Inflight {
                                visible_at_ms: x.visible_at_ms,
                                attempt: x.attempt,
                                serial: x.serial,
                                auto_renew_client: client.clone(),
                                first_delivery_ms: m.born_timestamp_ms,
                                group_key: None,
                            };
                            lock(&self.queue_state(&d.group, &d.topic, x.queue_id)).restore_delivery(x.offset, entry);
                        }
                    }
                    None => continue,
                }
                replayed += 1;
            }
            next = last + 1;
        }
        // Scan again from each floor: orderly groups find the messages that were waiting for
        // their message group (acked and in-flight offsets are skipped).
        let renewals_end = self.now_ms() + self.inner.settings.consumer.default_invisible_time.as_millis() as i64;
        for state in self.live_states() {
            let mut st = lock(&state);
            st.rescan();
            st.end_renewals(renewals_end);
        }
        // Broadcast clients' own consumers count as seen now (retired if they never come back).
        let now = self.now_ms();
        let mut seen = lock(&self.inner.broadcast_seen);
        for group in self.inner.states.groups() {
            if group.contains(BROADCAST_SEP) {
                seen.entry(group.to_string()).or_insert(now);
            }
        }
        drop(seen);
        self.inner.journal_saved.store(journal_offset, std::sync::atomic::Ordering::Relaxed);
        if replayed > 0 {
            tracing::info!(
                replayed,
                from = journal_offset,
                "replayed journaled acks and deliveries newer than the last progress snapshot"
            );
        }
        Ok(())
    }

    /// Flushes progress every `consumer.progressFlushInterval`, and retires the progress of
    /// departed broadcast clients, until shutdown.
    pub async fn run_progress_flusher(&self) {
        let c = &self.inner.settings.consumer;
        let retire_check = (c.broadcast_retire_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::join!(
            self.flush_progress_with_backoff(c.progress_flush_interval),
            self.every(retire_check, "retiring departed broadcast clients", || self.retire_broadcast_consumers()),
        );
    }

    /// Broadcast groups: forgets the own progress (in memory and in the metadata store) of
    /// every client that has not received for `consumer.broadcastRetireAfter`. A client that
    /// comes back later starts again per `consumeFromWhere`.
    pub(super) async fn retire_broadcast_consumers(&self) -> BrokerResult<()> {
        let cutoff = self.now_ms() - self.inner.settings.consumer.broadcast_retire_after.as_millis() as i64;
        let retired: Vec<(String, i64)> = {
            let mut seen = lock(&self.inner.broadcast_seen);
            let old: Vec<(String, i64)> =
                seen.iter().filter(|&(_, &t)| t < cutoff).map(|(k, &t)| (k.clone(), t)).collect();
            for (key, _) in &old {
                seen.remove(key);
            }
            old
        };
        for (key, last) in retired {
            self.inner.states.forget_group(&key);
            if let Err(e) = self.inner.meta.delete_progress(&key).await {
                lock(&self.inner.broadcast_seen).entry(key).or_insert(last);
                return Err(e.into());
            }
            tracing::info!(consumer = key, "retired the progress of a broadcast client that stopped receiving");
        }
        Ok(())
    }

    /// Flushes progress every `period` until shutdown. While the metadata store fails, the
    /// progress stays dirty and the wait doubles up to `meta_health::MAX_RETRY_DELAY`; the
    /// degradation is recorded for `/readyz` (see `meta_health.rs`).
    async fn flush_progress_with_backoff(&self, period: Duration) {
        let shutdown = self.inner.shutdown.clone();
        let mut delay = period;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            match self.flush_progress().await {
                Ok(()) => {
                    self.metadata_succeeded();
                    delay = period;
                }
                Err(e) => {
                    self.metadata_failed(&e.to_string());
                    delay = super::meta_health::next_delay(delay, period);
                }
            }
        }
    }

    /// Runs `work` every `period` until shutdown; a failure is logged and retried next time.
    pub(super) async fn every<F: std::future::Future<Output = BrokerResult<()>>>(
        &self,
        period: Duration,
        what: &str,
        work: impl Fn() -> F,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = work().await {
                        tracing::warn!(error = %e, "{what} failed; will retry");
                    }
                }
            }
        }
    }
}
