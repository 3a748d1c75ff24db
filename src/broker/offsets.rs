//! Consumer offsets: where a group stands on each queue of a topic, moving it while its
//! consumers run (offset reset to a point in time, to the earliest or latest message, or to
//! given offsets), finding the offset of a point in time, and the pull-consumer RPCs
//! (PullMessage, UpdateOffset, GetOffset, QueryOffset).
//!
//! **One offset per (group, topic, queue).** A group's offset on a queue is the floor of its POP
//! progress ([`QueueState::floor`]: everything below is done). A pull consumer's committed
//! offset is that same number, as Apache shares its consumer offset table between pull and POP
//! consumers of a group: GetOffset reads it, UpdateOffset moves it (a reset of one queue), and
//! PullMessage itself reads from the offset the client gives and changes no progress.
//!
//! **What a reset does.** On each queue the group's floor becomes the new offset: messages
//! below it count as consumed, those at or above it are delivered again (delivery attempt 1),
//! FIFO and priority bookkeeping starts over there. Deliveries in flight are forgotten: a
//! receipt handle issued before the reset acks (as a no-op) a message below the new offset,
//! and is refused with INVALID_RECEIPT_HANDLE for one at or above it (it neither acks nor
//! changes the invisibility of the message, which comes again): handles carry their
//! delivery's serial, and the queue remembers the serial watermark of its last reset
//! ([`QueueState::reset_serial`]). Long polls of the group's consumers are woken, so running
//! SimpleConsumers and PushConsumers get the messages at once.
//!
//! **Durability.** The reset is applied in memory, then journaled (a [`ResetRecord`] in the
//! consumer journal) before the call returns; acks under way finish first (the reset waits on
//! [`Broker::reset_gate`], which every ack holds across its check and its journal write), so
//! a replay after a crash applies acks and the reset in the order they took effect, and the
//! next progress snapshot carries the new floor and the watermark. A restart bumps the serial
//! counter past every watermark, so new deliveries are never mistaken for pre-reset ones. Two
//! races are left, both at-least-once: a message being moved to the dead-letter queue as the
//! reset happens stays there (it is not delivered again), and a delivery made just after a
//! reset whose journal record lands before the reset's is forgotten by a crash (delivered again
//! early).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::error::{BrokerError, BrokerResult};
use super::filter::Filter;
use super::journal::{QueueReset, ResetRecord};
use super::message::DeliveredMessage;
use super::states::StateCell;
use super::{Broker, REMOTE_FETCH_ROUNDS, TopicEntry, lock, validate};
use crate::storage::{QueueRange, StorageError};

/// Independent reset gates; a group and topic always map to the same one.
const RESET_GATES: usize = 64;
/// Most body bytes returned by one PullMessage (at least one message is always returned).
const MAX_PULL_BYTES: usize = 8 * 1024 * 1024;
/// Most records one PullMessage looks at (a filter may reject them all): the client continues
/// from the `next_offset` it gets.
const MAX_PULL_SCAN: usize = 16 * 1024;
/// Records read at once while scanning.
const SCAN_CHUNK: usize = 256;
/// Long polls re-check at least this often.
const RECHECK: Duration = Duration::from_millis(500);
/// Damaged records the timestamp search steps over before giving up.
const MAX_DAMAGED_PROBES: u64 = 64;

/// Where a reset moves a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTarget {
    /// Per queue, the first message stored at or after this time (epoch ms); the end of the
    /// queue if none is.
    Timestamp(i64),
    /// The oldest message still stored.
    Earliest,
    /// The end: only messages stored from now on are delivered.
    Latest,
    /// These offsets on these queues (the other queues keep theirs).
    Offsets(BTreeMap<u32, u64>),
}

/// What a reset did on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetChange {
    pub queue_id: u32,
    /// The group's offset before (`None`: it had none on this queue).
    pub previous: Option<u64>,
    pub offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// A group's progress on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    pub queue_id: u32,
    /// Oldest offset still stored.
    pub min_offset: u64,
    /// The queue's end (the offset the next message gets).
    pub max_offset: u64,
    /// Everything below is consumed (`None`: the group never consumed or committed here).
    pub consumer_offset: Option<u64>,
    /// Deliveries not acked yet.
    pub in_flight: usize,
    /// Messages above the consumer offset already acked (out of order).
    pub acked_above: usize,
}

impl QueueProgress {
    /// Messages stored at or above the consumer offset (Apache's "diff"); `None` without one.
    pub fn lag(&self) -> Option<u64> {
        self.consumer_offset.map(|o| self.max_offset.saturating_sub(o.max(self.min_offset)))
    }
}

/// A group's progress on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicProgress {
    pub topic: String,
    pub queues: Vec<QueueProgress>,
}

/// QueryOffset's policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetPolicy {
    /// The oldest offset still stored.
    Beginning,
    /// The queue's end.
    End,
    /// The first message stored at or after this time (epoch ms).
    Timestamp(i64),
}

/// A PullMessage call in domain terms.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub client_id: String,
    pub group: String,
    pub topic: String,
    /// As the client sent it (checked here).
    pub queue_id: i32,
    /// As the client sent it: below the queue's start or above its end is ILLEGAL_OFFSET.
    pub offset: i64,
    /// 0: the configured `consumer.receiveBatchSize`; more is capped to it.
    pub batch_size: i32,
    pub filter: Filter,
    pub long_polling_timeout: Option<Duration>,
    pub deadline_remaining: Option<Duration>,
}

/// How a pull ended (Apache's FOUND, NO_NEW_MSG/NO_MATCHED_MSG, OFFSET_ILLEGAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    Found,
    /// Nothing (left) that the filter accepts up to `next_offset`.
    NoNewMessage,
    /// The offset is below the queue's start or beyond its end; `next_offset` is the nearest
    /// valid one.
    IllegalOffset,
}

#[derive(Debug, Clone)]
pub struct PullResult {
    pub status: PullStatus,
    /// In queue order, without receipt handles (pulls are not acked).
    pub messages: Vec<DeliveredMessage>,
    /// Where the next pull continues.
    pub next_offset: u64,
}

/// The reset gates: an ack holds its gate (shared) across its check and journal write, a reset
/// holds it (exclusive) across its change and journal write.
pub(super) struct ResetGates(Vec<tokio::sync::RwLock<()>>);

impl Default for ResetGates {
    fn default() -> Self {
        ResetGates((0..RESET_GATES).map(|_| tokio::sync::RwLock::new(())).collect())
    }
}

/// The queue a client names, checked against the topic's queue count.
fn queue_of(topic: &TopicEntry, queue_id: i32) -> BrokerResult<u32> {
    let n = topic.record.queue_nums;
    u32::try_from(queue_id).ok().filter(|&q| q < n).ok_or_else(|| {
        BrokerError::BadRequest(format!(
            "queue {queue_id} does not exist: topic `{}` has {n} queues (0 to {})",
            topic.record.name,
            n.saturating_sub(1)
        ))
    })
}

impl Broker {
    /// The gate of a group's progress on a topic.
    pub(super) fn reset_gate(&self, group: &str, topic: &str) -> &tokio::sync::RwLock<()> {
        let mut h = crc32c::crc32c(group.as_bytes());
        h = crc32c::crc32c_append(h, &[0]);
        h = crc32c::crc32c_append(h, topic.as_bytes());
        let gates = &self.inner.reset_gates.0;
        &gates[h as usize % gates.len()]
    }

    /// How long a long poll may wait: what the client asked for (the maximum if nothing)
    /// within the configured bounds, and short of the client's own deadline.
    pub(super) fn long_polling_time(&self, asked: Option<Duration>, deadline_remaining: Option<Duration>) -> Duration {
        let c = &self.inner.settings.consumer;
        let asked =
            asked.unwrap_or(c.max_long_polling_timeout).clamp(c.min_long_polling_timeout, c.max_long_polling_timeout);
        match deadline_remaining {
            Some(left) => asked.min(left.saturating_sub(c.long_polling_reserve)),
            None => asked,
        }
    }

    /// After the progress is restored: the serial counter moves past every reset watermark
    /// (serials start from the clock, which may have gone back).
    pub(super) fn serials_past_resets(&self) {
        let highest = self.live_states().iter().map(|s| lock(s).reset_serial).max().unwrap_or(0);
        self.inner.serial.fetch_max(highest.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The state of a group on a queue, if it has one (never creates it; a pruned one comes
    /// back from its floor).
    fn existing_state(&self, group: &str, topic: &str, queue_id: u32) -> Option<Arc<StateCell>> {
        let key = (Arc::from(group), Arc::from(topic), queue_id);
        self.inner.states.has(&key).then(|| self.queue_state(group, topic, queue_id))
    }

    /// Whether the consumer group exists (never creates it).
    async fn group_exists(&self, name: &str) -> BrokerResult<bool> {
        validate::validate_group(name)?;
        if self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).contains_key(name) {
            return Ok(true);
        }
        match self.inner.meta.group(name).await? {
            Some(g) => {
                self.inner.groups.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), g);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn existing_group(&self, name: &str) -> BrokerResult<()> {
        if self.group_exists(name).await? { Ok(()) } else { Err(BrokerError::GroupNotFound(name.to_string())) }
    }

    /// The first offset of a queue whose message was stored at or after `timestamp_ms` (the
    /// queue's end if none was), by binary search over the store times (which grow along a
    /// queue); damaged records are stepped over.
    pub fn offset_at(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> BrokerResult<u64> {
        let range = self.inner.log.queue_range(topic, queue_id);
        let (mut lo, mut hi) = (range.start, range.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.store_time_from(topic, queue_id, mid, hi)? {
                Some((offset, stored)) if stored < timestamp_ms => lo = offset + 1,
                // At or after the time, or nothing readable in [mid, hi).
                Some(_) | None => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The first readable record of `[from, until)`: its offset and store time.
    fn store_time_from(&self, topic: &str, queue_id: u32, from: u64, until: u64) -> BrokerResult<Option<(u64, i64)>> {
        let mut at = from;
        while at < until && at - from < MAX_DAMAGED_PROBES {
            match self.inner.log.read(topic, queue_id, at, 1, 1) {
                Ok(batch) => {
                    return Ok(batch
                        .first()
                        .filter(|m| m.queue_offset < until)
                        .map(|m| (m.queue_offset, m.store_timestamp_ms)));
                }
                Err(StorageError::Corrupted { .. }) => at += 1,
                Err(e) => return Err(e.into()),
            }
        }
        if at < until {
            return Err(BrokerError::DataCorrupted(format!(
                "queue {queue_id} of `{topic}`: {MAX_DAMAGED_PROBES} damaged records in a row from offset {from}"
            )));
        }
        Ok(None)
    }

    /// Moves a group's offsets on a topic (all queues, or those [`ResetTarget::Offsets`] names),
    /// for consumers that are running too; see the module documentation. The group and the topic
    /// must exist.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        target: ResetTarget,
    ) -> BrokerResult<Vec<OffsetChange>> {
        self.existing_group(group).await?;
        let t = self.client_topic(topic).await?;
        let name = t.record.name.as_str();
        let range = |q: u32| self.inner.log.queue_range(name, q);
        let targets: Vec<(u32, u64, QueueRange)> = match &target {
            ResetTarget::Timestamp(ms) if *ms < 0 => {
                return Err(BrokerError::BadRequest(format!("timestamp {ms} is before 1970")));
            }
            ResetTarget::Timestamp(ms) => (0..t.record.queue_nums)
                .map(|q| Ok((q, self.offset_at(name, q, *ms)?, range(q))))
                .collect::<BrokerResult<_>>()?,
            ResetTarget::Earliest => (0..t.record.queue_nums).map(|q| (q, range(q).start, range(q))).collect(),
            ResetTarget::Latest => (0..t.record.queue_nums).map(|q| (q, range(q).end, range(q))).collect(),
            ResetTarget::Offsets(offsets) if offsets.is_empty() => {
                return Err(BrokerError::BadRequest("no queue offsets given".into()));
            }
            ResetTarget::Offsets(offsets) => {
                let mut v = Vec::with_capacity(offsets.len());
                for (&q, &offset) in offsets {
                    let q = queue_of(&t, i32::try_from(q).unwrap_or(i32::MAX))?;
                    let r = range(q);
                    if offset > r.end {
                        return Err(BrokerError::IllegalOffset(format!(
                            "offset {offset} is beyond the end of queue {q} of `{name}` ({})",
                            r.end
                        )));
                    }
                    // Below the start: retention deleted those, start at the oldest kept.
                    v.push((q, offset.max(r.start), r));
                }
                v
            }
        };
        // A broadcast group: every client's own consumer of the topic is reset.
        let broadcast =
            self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).get(group).is_some_and(|g| g.broadcast);
        let consumers: Vec<String> = if broadcast {
            let prefix = format!("{group}@@");
            let mut v: Vec<String> = self
                .inner
                .states
                .keys_on(name)
                .into_iter()
                .filter(|k| k.0.starts_with(&prefix))
                .map(|k| k.0.to_string())
                .collect();
            v.sort();
            v.dedup();
            v
        } else {
            vec![group.to_string()]
        };
        let mut previous = vec![None; targets.len()];
        for (i, consumer) in consumers.iter().enumerate() {
            let p = self.apply_reset(consumer, &t, targets.iter().map(|&(q, o, _)| (q, o)).collect()).await?;
            if i == 0 {
                previous = p;
            }
        }
        let changes: Vec<OffsetChange> = targets
            .into_iter()
            .zip(previous)
            .map(|((queue_id, offset, r), previous)| OffsetChange {
                queue_id,
                previous,
                offset,
                min_offset: r.start,
                max_offset: r.end,
            })
            .collect();
        tracing::info!(group, topic = name, ?target, queues = ?changes.iter().map(|c| (c.queue_id, c.previous, c.offset)).collect::<Vec<_>>(), "consumer offsets reset");
        Ok(changes)
    }

    /// Resets the group's state on each `(queue, offset)` under the gate, journals it and wakes
    /// the topic's long polls; returns the previous offsets.
    async fn apply_reset(
        &self,
        group: &str,
        topic: &TopicEntry,
        targets: Vec<(u32, u64)>,
    ) -> BrokerResult<Vec<Option<u64>>> {
        let name = topic.record.name.as_str();
        let gate = self.reset_gate(group, name).write().await;
        let mut previous = Vec::with_capacity(targets.len());
        let mut queues = Vec::with_capacity(targets.len());
        for (queue_id, offset) in targets {
            let existed = self.existing_state(group, name, queue_id).is_some();
            let state = self.queue_state(group, name, queue_id);
            let mut st = lock(&state);
            previous.push(existed.then_some(st.floor));
            // Taken under the queue's lock, like every delivery's serial: what was delivered
            // before has a lower one, what is delivered after a higher one.
            let serial_watermark = self.next_serial();
            st.reset_to(offset, serial_watermark);
            queues.push(QueueReset { queue_id, offset, serial_watermark });
        }
        let record = ResetRecord { group: group.to_string(), topic: name.to_string(), queues };
        let journaled = self.inner.log.append(vec![record.to_append(self.now_ms())]).await;
        drop(gate);
        topic.arrivals.notify_waiters();
        journaled.map_err(|e| {
            BrokerError::StorageUnavailable(format!(
                "the offset reset took effect but could not be journaled ({e}); the next progress flush saves it"
            ))
        })?;
        Ok(previous)
    }

    /// A group's progress per queue of `topic`, or of every topic it has progress on.
    pub async fn group_offsets(&self, group: &str, topic: Option<&str>) -> BrokerResult<Vec<TopicProgress>> {
        self.existing_group(group).await?;
        let topics: Vec<Arc<TopicEntry>> = match topic {
            Some(t) => vec![self.client_topic(t).await?],
            None => {
                let mut names: Vec<Arc<str>> = self.inner.states.keys_of(group).into_iter().map(|k| k.1).collect();
                names.sort();
                names.dedup();
                names.iter().filter_map(|n| self.cached_topic(n)).collect()
            }
        };
        Ok(topics
            .iter()
            .map(|t| {
                let name = t.record.name.as_str();
                let queues = (0..t.record.queue_nums)
                    .map(|queue_id| {
                        let range = self.inner.log.queue_range(name, queue_id);
                        let state = self.existing_state(group, name, queue_id);
                        let (consumer_offset, in_flight, acked_above) = match state {
                            Some(s) => {
                                let st = lock(&s);
                                (Some(st.floor), st.inflight.len(), st.acked.len())
                            }
                            None => (None, 0, 0),
                        };
                        QueueProgress {
                            queue_id,
                            min_offset: range.start,
                            max_offset: range.end,
                            consumer_offset,
                            in_flight,
                            acked_above,
                        }
                    })
                    .collect();
                TopicProgress { topic: name.to_string(), queues }
            })
            .collect())
    }

    /// QueryOffset: an offset of a queue by policy.
    pub async fn query_offset(&self, topic: &str, queue_id: i32, policy: OffsetPolicy) -> BrokerResult<u64> {
        let t = self.client_topic(topic).await?;
        let q = queue_of(&t, queue_id)?;
        let range = self.inner.log.queue_range(&t.record.name, q);
        match policy {
            OffsetPolicy::Beginning => Ok(range.start),
            OffsetPolicy::End => Ok(range.end),
            OffsetPolicy::Timestamp(ms) if ms < 0 => {
                Err(BrokerError::BadRequest(format!("timestamp {ms} is before 1970")))
            }
            OffsetPolicy::Timestamp(ms) => self.offset_at(&t.record.name, q, ms),
        }
    }

    /// GetOffset: the group's committed offset on a queue; OFFSET_NOT_FOUND if it never
    /// consumed or committed there.
    pub async fn get_offset(&self, client_id: &str, group: &str, topic: &str, queue_id: i32) -> BrokerResult<u64> {
        let t = self.client_topic(topic).await?;
        let q = queue_of(&t, queue_id)?;
        self.touch_client(client_id);
        if !self.group_exists(group).await? && !self.inner.settings.consumer.auto_create_subscription_group {
            return Err(BrokerError::GroupNotFound(group.to_string()));
        }
        match self.existing_state(group, &t.record.name, q) {
            Some(s) => Ok(lock(&s).floor),
            None => Err(BrokerError::OffsetNotFound(format!(
                "consumer group `{group}` has no offset on queue {q} of `{}`",
                t.record.name
            ))),
        }
    }

    /// UpdateOffset: commits the group's offset on a queue (a reset of that queue; nothing is
    /// written when it is already there with nothing above it).
    pub async fn update_offset(
        &self,
        client_id: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
        offset: i64,
    ) -> BrokerResult<()> {
        validate::validate_group(group)?;
        let t = self.client_topic(topic).await?;
        let q = queue_of(&t, queue_id)?;
        self.touch_client(client_id);
        self.group(group).await?;
        let name = t.record.name.as_str();
        let end = self.inner.log.queue_range(name, q).end;
        let offset =
            u64::try_from(offset).map_err(|_| BrokerError::IllegalOffset(format!("offset {offset} is negative")))?;
        if offset > end {
            return Err(BrokerError::IllegalOffset(format!(
                "offset {offset} is beyond the end of queue {q} of `{name}` ({end})"
            )));
        }
        if let Some(s) = self.existing_state(group, name, q) {
            let st = lock(&s);
            if st.floor == offset && st.acked.is_empty() && st.inflight.is_empty() {
                return Ok(());
            }
        }
        self.apply_reset(group, &t, vec![(q, offset)]).await?;
        Ok(())
    }

    /// PullMessage: up to a batch of messages of one queue from the client's offset, waiting
    /// up to the polling time when the client has read everything. Changes no progress.
    pub async fn pull(&self, req: PullRequest) -> BrokerResult<PullResult> {
        validate::validate_group(&req.group)?;
        let topic = self.client_topic(&req.topic).await?;
        let queue_id = queue_of(&topic, req.queue_id)?;
        self.group(&req.group).await?;
        let most = self.inner.settings.consumer.receive_batch_size.max(1) as usize;
        let max = match req.batch_size {
            n if n < 0 => return Err(BrokerError::BadRequest(format!("batch size {n} is negative"))),
            0 => most,
            n => (n as usize).min(most),
        };
        let gone = self.client_receiving(&req.client_id);
        let deadline = Instant::now() + self.long_polling_time(req.long_polling_timeout, req.deadline_remaining);
        let shutdown = self.inner.shutdown.clone();
        let mut offset = req.offset;
        loop {
            let notified = topic.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (result, caught_up) = self
                .with_remote_fetch(REMOTE_FETCH_ROUNDS, || {
                    self.pull_once(&req.group, &topic, queue_id, offset, max, &req.filter)
                })
                .await?;
            let now = Instant::now();
            if !caught_up || now >= deadline {
                return Ok(result);
            }
            offset = result.next_offset as i64;
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline.min(now + RECHECK)) => {}
                _ = shutdown.cancelled() => return Ok(result),
                _ = gone.cancelled() => return Ok(result),
            }
        }
    }

    /// One read of a pull, and whether it found nothing because the queue has nothing more
    /// (then the pull may wait for messages).
    fn pull_once(
        &self,
        group: &str,
        topic: &TopicEntry,
        queue_id: u32,
        offset: i64,
        max: usize,
        filter: &Filter,
    ) -> BrokerResult<(PullResult, bool)> {
        let name = topic.record.name.as_str();
        let range = self.inner.log.queue_range(name, queue_id);
        let illegal =
            |next_offset| (PullResult { status: PullStatus::IllegalOffset, messages: Vec::new(), next_offset }, false);
        let Ok(offset) = u64::try_from(offset) else { return Ok(illegal(range.start)) };
        if offset < range.start {
            return Ok(illegal(range.start));
        }
        if offset > range.end {
            return Ok(illegal(range.end));
        }
        let mut messages = Vec::new();
        let (mut cursor, mut bytes, mut scanned) = (offset, 0usize, 0usize);
        'scan: while cursor < range.end && scanned < MAX_PULL_SCAN && messages.len() < max && bytes < MAX_PULL_BYTES {
            let batch = match self.inner.log.read(
                name,
                queue_id,
                cursor,
                SCAN_CHUNK,
                MAX_PULL_BYTES.saturating_sub(bytes),
            ) {
                Ok(batch) => batch,
                Err(e @ StorageError::Corrupted { .. }) => {
                    tracing::error!(group, topic = name, queue_id, offset = cursor, error = %e, "pull skips a damaged message");
                    cursor += 1;
                    scanned += 1;
                    continue;
                }
                // Cold data not fetched yet: answer with what was read (the caller awaits the
                // fetch when that is nothing).
                Err(StorageError::RemoteNotCached { .. }) if !messages.is_empty() => break,
                Err(e) => return Err(e.into()),
            };
            if batch.is_empty() {
                break;
            }
            for m in batch {
                if messages.len() >= max || bytes >= MAX_PULL_BYTES || scanned >= MAX_PULL_SCAN {
                    break 'scan;
                }
                cursor = m.queue_offset + 1;
                scanned += 1;
                if let Some(m) = self.admit(m, filter)? {
                    bytes += m.body.len();
                    messages.push(DeliveredMessage::from_stored(m, String::new(), 1));
                }
            }
        }
        let caught_up = messages.is_empty() && cursor >= range.end;
        let status = if messages.is_empty() { PullStatus::NoNewMessage } else { PullStatus::Found };
        Ok((PullResult { status, messages, next_offset: cursor }, caught_up))
    }
}

#[cfg(test)]
#[path = "offsets_tests.rs"]
mod tests;
