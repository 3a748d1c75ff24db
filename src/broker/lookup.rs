//! Message trace lookup (read-only): finds a message by id or key and assembles its
//! lifecycle from what the gateway already stores — the message's records (stored, scheduled
//! in the timer topic, prepared in the half topic, fired or committed into its topic, copied to
//! a `%DLQ%group` topic) and the consumer journal (deliveries with attempt, deadline and
//! client; ChangeInvisibleDuration; acks; offset resets) — plus each group's current progress.
//!
//! Limits, by design: the message index covers local log data only (tiered-away segments are
//! not indexed), and the journal is scanned from the message's store time on, at most a
//! bounded number of records (`truncated` says when the cap was hit). Retries are redeliveries
//! of the same record (attempt + 1), not copies into `%RETRY%group` topics, so a retry shows
//! as a DELIVERED event with `attempt > 1`. Journal records written before the receiver and
//! change-invisible marks existed have no client, and their change-invisible calls are
//! inferred (a second record with the same attempt).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::error::{BrokerError, BrokerResult};
use super::journal::{JOURNAL_TOPIC, JournalRecord};
use super::message::{MessageType, referenced};
use super::namespace::DLQ_PREFIX;
use super::timer::TIMER_TOPIC;
use super::transaction::{HALF_TOPIC, TX_GROUP};
use super::{Broker, REMOTE_FETCH_BYTES, validate};
use crate::storage::record::keys;
use crate::storage::{StorageError, StoredMessage};

/// Journal records scanned by default for one trace.
pub const DEFAULT_MAX_JOURNAL_RECORDS: usize = 200_000;
/// The most journal records one trace may scan, whatever it asks.
pub const MAX_JOURNAL_RECORDS: usize = 2_000_000;
/// The most messages a lookup by key returns.
pub const MAX_KEY_RESULTS: usize = 64;
/// The journal scan starts this long before the message's first store time (clock steps).
const JOURNAL_SLACK_MS: i64 = 1_000;
/// Journal records read at a time.
const JOURNAL_BATCH: usize = 1024;
/// Fetches from the object store one trace may await while scanning the journal.
const JOURNAL_FETCH_ROUNDS: usize = 16;

/// What one stored record of a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRole {
    /// The message in its topic, stored by the send.
    Message,
    /// A delay message waiting in the timer topic.
    Scheduled,
    /// A transaction's half message.
    Prepared,
    /// A fired delay message in its topic (a reference to, or copy of, the scheduled record).
    Fired,
    /// A committed transactional message in its topic.
    Committed,
    /// The copy in a dead-letter topic.
    DeadLetter,
}

impl RecordRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordRole::Message => "MESSAGE",
            RecordRole::Scheduled => "SCHEDULED",
            RecordRole::Prepared => "PREPARED",
            RecordRole::Fired => "FIRED",
            RecordRole::Committed => "COMMITTED",
            RecordRole::DeadLetter => "DLQ",
        }
    }

    /// A record consumers receive as the message (its deliveries are traced).
    fn deliverable(self) -> bool {
        matches!(self, RecordRole::Message | RecordRole::Fired | RecordRole::Committed)
    }
}

/// Where one record of the message lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    pub role: RecordRole,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub log_position: u64,
    pub store_timestamp_ms: i64,
}

/// A message as the lookup finds it.
#[derive(Debug, Clone)]
pub struct FoundMessage {
    pub message_id: String,
    /// The topic consumers get it from (a scheduled or half message's real topic).
    pub topic: String,
    pub message_type: MessageType,
    pub tag: Option<String>,
    pub keys: Vec<String>,
    pub born_host: Option<String>,
    pub born_timestamp_ms: i64,
    /// Delay messages: when it is (was) due.
    pub deliver_at_ms: Option<i64>,
    /// All stored properties (system ones included), in order.
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
    /// Every record of the message, oldest first.
    pub stored: Vec<StoredAt>,
}

/// One step of a message's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    Stored {
        topic: String,
        queue_id: u32,
        offset: u64,
    },
    Scheduled {
        deliver_at_ms: Option<i64>,
    },
    Prepared,
    TimerFired {
        topic: String,
        queue_id: u32,
        offset: u64,
    },
    Committed {
        topic: String,
        queue_id: u32,
        offset: u64,
    },
    RolledBack,
    Delivered {
        group: String,
        client: Option<String>,
        attempt: u32,
        invisible_until_ms: i64,
    },
    /// ChangeInvisibleDuration on a delivery: a nack (the message comes back after the new
    /// deadline with the next attempt) or an extension.
    InvisibilityChanged {
        group: String,
        client: Option<String>,
        attempt: u32,
        invisible_until_ms: i64,
    },
    /// `dead_lettered`: the gateway's own ack of a message it moved to the DLQ.
    Acked {
        group: String,
        dead_lettered: bool,
    },
    OffsetReset {
        group: String,
        offset: u64,
    },
    DeadLettered {
        group: String,
        dlq_topic: String,
        queue_id: u32,
        offset: u64,
    },
}

impl TraceEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            TraceEvent::Stored { .. } => "STORED",
            TraceEvent::Scheduled { .. } => "SCHEDULED",
            TraceEvent::Prepared => "PREPARED",
            TraceEvent::TimerFired { .. } => "TIMER_FIRED",
            TraceEvent::Committed { .. } => "COMMITTED",
            TraceEvent::RolledBack => "ROLLED_BACK",
            TraceEvent::Delivered { .. } => "DELIVERED",
            TraceEvent::InvisibilityChanged { .. } => "INVISIBILITY_CHANGED",
            TraceEvent::Acked { .. } => "ACKED",
            TraceEvent::OffsetReset { .. } => "OFFSET_RESET",
            TraceEvent::DeadLettered { .. } => "DLQ",
        }
    }
}

/// An event and when it happened (epoch ms, the gateway's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedEvent {
    pub time_ms: i64,
    pub event: TraceEvent,
}

/// Where a group is with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// Acked (or below the group's consumer offset).
    Consumed,
    /// Delivered and invisible until a deadline in the future.
    InFlight,
    /// Delivered, its deadline passed, not acked: the next receive delivers it again.
    AwaitingRedelivery,
    /// Moved to the group's dead-letter topic.
    DeadLettered,
    /// Not delivered to this group yet.
    NotConsumed,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Consumed => "CONSUMED",
            GroupStatus::InFlight => "IN_FLIGHT",
            GroupStatus::AwaitingRedelivery => "AWAITING_REDELIVERY",
            GroupStatus::DeadLettered => "DLQ",
            GroupStatus::NotConsumed => "NOT_CONSUMED",
        }
    }
}

/// One consumer group's view of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: String,
    pub status: GroupStatus,
    /// Deliveries seen in the journal.
    pub deliveries: u32,
    pub last_attempt: u32,
    /// The group's consumer offset on the message's queue (everything below is consumed).
    pub consumer_offset: Option<u64>,
    pub dlq_topic: Option<String>,
}

/// A message's lifecycle.
#[derive(Debug, Clone)]
pub struct MessageTrace {
    pub message: FoundMessage,
    /// Time-ordered (ties keep the order they were recorded in).
    pub events: Vec<TimedEvent>,
    pub groups: Vec<GroupSummary>,
    /// Journal records read.
    pub journal_scanned: usize,
    /// The scan stopped at its cap before the journal's end: later events may be missing.
    pub truncated: bool,
}

/// A group's current progress at the message's offset: (consumer offset, acked, in flight
/// (attempt, visible at)).
pub(crate) type Progress = (u64, bool, Option<(u32, i64)>);

/// Validates a message id given to the lookup.
fn validate_id(id: &str) -> BrokerResult<()> {
    if id.trim().is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BrokerError::IllegalMessageId(format!(
            "`{}` is not a message id (1 to 128 bytes, no spaces or control characters)",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// The role of each record (with `UNIQ_KEY` = the id) and the records that matter.
pub(crate) fn classify(records: Vec<StoredMessage>) -> Vec<(RecordRole, StoredMessage)> {
    let scheduled = records.iter().any(|m| &*m.topic == TIMER_TOPIC && m.queue_id == 0);
    let prepared = records.iter().any(|m| &*m.topic == HALF_TOPIC);
    let mut out: Vec<(RecordRole, StoredMessage)> = records
        .into_iter()
        .filter_map(|m| {
            let topic = &*m.topic;
            let role = if topic == TIMER_TOPIC {
                // Queue 1 holds control records.
                (m.queue_id == 0).then_some(RecordRole::Scheduled)?
            } else if topic == HALF_TOPIC {
                RecordRole::Prepared
            } else if topic.starts_with(DLQ_PREFIX) {
                RecordRole::DeadLetter
            } else if topic.starts_with(validate::SYSTEM_PREFIX) {
                return None;
            } else {
                match referenced(&m) {
                    Some((t, _, _)) if t == TIMER_TOPIC => RecordRole::Fired,
                    Some((t, _, _)) if t == HALF_TOPIC => RecordRole::Committed,
                    // Clustered: copies, not references.
                    _ if scheduled => RecordRole::Fired,
                    _ if prepared => RecordRole::Committed,
                    _ => RecordRole::Message,
                }
            };
            Some((role, m))
        })
        .collect();
    out.sort_by_key(|(_, m)| (m.store_timestamp_ms, m.log_position));
    out
}

/// The message of classified records (content from a record that has the body).
pub(crate) fn found_message(id: &str, records: &[(RecordRole, StoredMessage)]) -> Option<FoundMessage> {
    let content = records
        .iter()
        .find(|(r, m)| !matches!(r, RecordRole::DeadLetter) && referenced(m).is_none())
        .or_else(|| records.first())
        .map(|(_, m)| m)?;
    let p = &content.properties;
    let topic = records
        .iter()
        .find(|(r, _)| r.deliverable())
        .map(|(_, m)| m.topic.to_string())
        .or_else(|| p.get(keys::REAL_TOPIC).map(str::to_string))
        .or_else(|| p.get(keys::DLQ_ORIGIN_TOPIC).map(str::to_string))
        .unwrap_or_else(|| content.topic.to_string());
    Some(FoundMessage {
        message_id: id.to_string(),
        topic,
        message_type: MessageType::from_flags(content.flags),
        tag: p.get(keys::TAGS).map(str::to_string),
        keys: p
            .get(keys::KEYS)
            .map(|k| k.split(' ').filter(|k| !k.is_empty()).map(str::to_string).collect())
            .unwrap_or_default(),
        born_host: p.get(keys::BORN_HOST).map(str::to_string),
        born_timestamp_ms: content.born_timestamp_ms,
        deliver_at_ms: p.get(keys::TIMER_DELIVER_MS).and_then(|v| v.parse().ok()),
        properties: p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: content.body.clone(),
        stored: records
            .iter()
            .map(|(role, m)| StoredAt {
                role: *role,
                topic: m.topic.to_string(),
                queue_id: m.queue_id,
                queue_offset: m.queue_offset,
                log_position: m.log_position,
                store_timestamp_ms: m.store_timestamp_ms,
            })
            .collect(),
    })
}

/// Whether a journal record concerns the message (deliverable positions, half offset).
fn relevant(record: &JournalRecord, positions: &BTreeSet<(String, u32, u64)>, half: Option<u64>) -> bool {
    // Compared in place: this runs for every journal record scanned.
    let at = |topic: &str, queue_id: u32, offset: u64| {
        positions.iter().any(|(t, q, o)| *q == queue_id && *o == offset && t == topic)
    };
    match record {
        JournalRecord::Deliveries(d) => d.deliveries.iter().any(|x| at(&d.topic, x.queue_id, x.offset)),
        JournalRecord::Ack(a) => {
            at(&a.topic, a.queue_id, a.offset)
                || (a.group == TX_GROUP && a.topic == HALF_TOPIC && Some(a.offset) == half)
        }
        JournalRecord::Reset(r) => {
            positions.iter().any(|(t, q, _)| *t == r.topic && r.queues.iter().any(|x| x.queue_id == *q))
        }
    }
}

/// Assembles the lifecycle of classified records from the relevant journal records (with
/// their store times and log positions, in journal order) and each group's current progress.
pub(crate) fn assemble(
    records: &[(RecordRole, StoredMessage)],
    journal: &[(i64, u64, JournalRecord)],
    progress: &BTreeMap<String, Progress>,
    now_ms: i64,
) -> (Vec<TimedEvent>, Vec<GroupSummary>) {
    // With log positions: same-millisecond events keep the log's order.
    let mut events: Vec<(u64, TimedEvent)> = Vec::new();
    let positions: BTreeSet<(String, u32, u64)> = records
        .iter()
        .filter(|(r, _)| r.deliverable())
        .map(|(_, m)| (m.topic.to_string(), m.queue_id, m.queue_offset))
        .collect();
    let committed = records.iter().any(|(r, _)| *r == RecordRole::Committed);
    let mut dlq: BTreeMap<String, (String, (i64, u64))> = BTreeMap::new();
    for (role, m) in records {
        let at = (m.topic.to_string(), m.queue_id, m.queue_offset);
        let event = match role {
            RecordRole::Message => TraceEvent::Stored { topic: at.0, queue_id: at.1, offset: at.2 },
            RecordRole::Scheduled => {
                let event = TraceEvent::Stored { topic: at.0, queue_id: at.1, offset: at.2 };
                events.push((m.log_position, TimedEvent { time_ms: m.store_timestamp_ms, event }));
                let deliver_at_ms = m.properties.get(keys::TIMER_DELIVER_MS).and_then(|v| v.parse().ok());
                TraceEvent::Scheduled { deliver_at_ms }
            }
            RecordRole::Prepared => {
                let event = TraceEvent::Stored { topic: at.0, queue_id: at.1, offset: at.2 };
                events.push((m.log_position, TimedEvent { time_ms: m.store_timestamp_ms, event }));
                TraceEvent::Prepared
            }
            RecordRole::Fired => TraceEvent::TimerFired { topic: at.0, queue_id: at.1, offset: at.2 },
            RecordRole::Committed => TraceEvent::Committed { topic: at.0, queue_id: at.1, offset: at.2 },
            RecordRole::DeadLetter => {
                let group = m.topic.strip_prefix(DLQ_PREFIX).unwrap_or(&m.topic).to_string();
                dlq.insert(group.clone(), (m.topic.to_string(), (m.store_timestamp_ms, m.log_position)));
                TraceEvent::DeadLettered { group, dlq_topic: at.0, queue_id: at.1, offset: at.2 }
            }
        };
        events.push((m.log_position, TimedEvent { time_ms: m.store_timestamp_ms, event }));
    }
    // Per group: deliveries, last attempt, acked.
    let mut seen: BTreeMap<String, (u32, u32, bool)> = BTreeMap::new();
    for (time_ms, position, record) in journal {
        match record {
            JournalRecord::Deliveries(d) => {
                for x in &d.deliveries {
                    if !positions.contains(&(d.topic.clone(), x.queue_id, x.offset)) {
                        continue;
                    }
                    let entry = seen.entry(d.group.clone()).or_insert((0, 0, false));
                    // A record of an attempt already delivered is a ChangeInvisibleDuration
                    // (marked so since the lookup exists; inferred for older records).
                    let changed = d.invisible_change || (entry.0 > 0 && x.attempt <= entry.1);
                    let (group, client, attempt) = (d.group.clone(), d.receiver.clone(), x.attempt);
                    let invisible_until_ms = x.visible_at_ms;
                    let event = if changed {
                        TraceEvent::InvisibilityChanged { group, client, attempt, invisible_until_ms }
                    } else {
                        entry.0 += 1;
                        entry.2 = false;
                        TraceEvent::Delivered { group, client, attempt, invisible_until_ms }
                    };
                    entry.1 = entry.1.max(x.attempt);
                    events.push((*position, TimedEvent { time_ms: *time_ms, event }));
                }
            }
            JournalRecord::Ack(a) if a.group == TX_GROUP && a.topic == HALF_TOPIC => {
                if !committed {
                    events.push((*position, TimedEvent { time_ms: *time_ms, event: TraceEvent::RolledBack }));
                }
            }
            JournalRecord::Ack(a) => {
                seen.entry(a.group.clone()).or_insert((0, 0, false)).2 = true;
                let dead_lettered =
                    dlq.get(super::pop::base_group(&a.group)).is_some_and(|(_, at)| *at <= (*time_ms, *position));
                let event = TraceEvent::Acked { group: a.group.clone(), dead_lettered };
                events.push((*position, TimedEvent { time_ms: *time_ms, event }));
            }
            JournalRecord::Reset(r) => {
                for q in &r.queues {
                    if positions.iter().any(|(t, qid, _)| *t == r.topic && *qid == q.queue_id) {
                        let event = TraceEvent::OffsetReset { group: r.group.clone(), offset: q.offset };
                        events.push((*position, TimedEvent { time_ms: *time_ms, event }));
                    }
                }
            }
        }
    }
    events.sort_by_key(|(position, e)| (e.time_ms, *position));
    let events: Vec<TimedEvent> = events.into_iter().map(|(_, e)| e).collect();
    let offset = positions.iter().next().map(|p| p.2);
    let names: BTreeSet<&String> = seen.keys().chain(progress.keys()).chain(dlq.keys()).collect();
    let groups = names
        .into_iter()
        .map(|group| {
            let (deliveries, last_attempt, acked_in_journal) = seen.get(group).copied().unwrap_or((0, 0, false));
            let now = progress.get(group).copied();
            let last_deadline = events.iter().rev().find_map(|e| match &e.event {
                TraceEvent::Delivered { group: g, invisible_until_ms, .. }
                | TraceEvent::InvisibilityChanged { group: g, invisible_until_ms, .. }
                    if g == group =>
                {
                    Some(*invisible_until_ms)
                }
                _ => None,
            });
            let dlq_topic = dlq.get(super::pop::base_group(group)).map(|(t, _)| t.clone());
            let status = if dlq_topic.is_some() {
                GroupStatus::DeadLettered
            } else if now.is_some_and(|p| p.1) || acked_in_journal || now.zip(offset).is_some_and(|(p, o)| o < p.0) {
                GroupStatus::Consumed
            } else if let Some((_, until)) = now.and_then(|p| p.2) {
                if until > now_ms { GroupStatus::InFlight } else { GroupStatus::AwaitingRedelivery }
            } else if let Some(until) = last_deadline {
                if until > now_ms { GroupStatus::InFlight } else { GroupStatus::AwaitingRedelivery }
            } else {
                GroupStatus::NotConsumed
            };
            GroupSummary {
                group: group.clone(),
                status,
                deliveries,
                last_attempt: last_attempt.max(now.and_then(|p| p.2).map_or(0, |i| i.0)),
                consumer_offset: now.map(|p| p.0),
                dlq_topic,
            }
        })
        .collect();
    (events, groups)
}

impl Broker {
    /// The records whose message id is `id`, classified; `MessageNotFound` when none.
    fn message_records(&self, id: &str) -> BrokerResult<Vec<(RecordRole, StoredMessage)>> {
        validate_id(id)?;
        let records = classify(self.inner.log.find_by_message_id(id)?);
        if records.is_empty() {
            return Err(BrokerError::MessageNotFound(format!(
                "no message with id `{id}` in the local log (the index covers local data only)"
            )));
        }
        Ok(records)
    }

    /// A message by id: its content and every record of it.
    pub fn find_message(&self, id: &str) -> BrokerResult<FoundMessage> {
        let records = self.message_records(id)?;
        found_message(id, &records).ok_or_else(|| BrokerError::MessageNotFound(id.to_string()))
    }

    /// Messages of `topic` with `key` among their keys, oldest first, at most `max` (capped by
    /// [`MAX_KEY_RESULTS`]).
    pub fn find_messages_by_key(&self, topic: &str, key: &str, max: usize) -> BrokerResult<Vec<FoundMessage>> {
        validate::validate_topic(topic)?;
        if key.is_empty() {
            return Err(BrokerError::IllegalMessageKey("the key is empty".into()));
        }
        let max = max.clamp(1, MAX_KEY_RESULTS);
        let mut ids: Vec<String> = Vec::new();
        for m in self.inner.log.find_by_key(topic, key, max)? {
            if let Some(id) = m.properties.get(keys::UNIQ_KEY)
                && !ids.iter().any(|i| i == id)
            {
                ids.push(id.to_string());
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.find_message(&id) {
                Ok(m) => out.push(m),
                // An id the key index knows but the id index does not (malformed id): skip.
                Err(BrokerError::MessageNotFound(_) | BrokerError::IllegalMessageId(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The lifecycle of a message: its records, the journal from its store time on (at most
    /// `max_journal_records`, default [`DEFAULT_MAX_JOURNAL_RECORDS`]) and each group's progress.
    pub async fn message_trace(&self, id: &str, max_journal_records: Option<usize>) -> BrokerResult<MessageTrace> {
        let records = self.message_records(id)?;
        let message = found_message(id, &records).ok_or_else(|| BrokerError::MessageNotFound(id.to_string()))?;
        let cap = max_journal_records.unwrap_or(DEFAULT_MAX_JOURNAL_RECORDS).clamp(1, MAX_JOURNAL_RECORDS);
        let positions: BTreeSet<(String, u32, u64)> = records
            .iter()
            .filter(|(r, _)| r.deliverable())
            .map(|(_, m)| (m.topic.to_string(), m.queue_id, m.queue_offset))
            .collect();
        let half = records.iter().find(|(r, _)| *r == RecordRole::Prepared).map(|(_, m)| m.queue_offset);
        let since = records.iter().map(|(_, m)| m.store_timestamp_ms).min().unwrap_or(0) - JOURNAL_SLACK_MS;
        let (journal, scanned, truncated) = self.scan_journal(since, cap, &positions, half).await?;
        let mut progress = BTreeMap::new();
        for (topic, queue_id, offset) in &positions {
            for key in self.inner.states.keys_on(topic) {
                if key.2 != *queue_id {
                    continue;
                }
                if let Some(p) = self.inner.states.progress_at(&key, *offset) {
                    progress.entry(key.0.to_string()).or_insert(p);
                }
            }
        }
        let (events, groups) = assemble(&records, &journal, &progress, self.now_ms());
        Ok(MessageTrace { message, events, groups, journal_scanned: scanned, truncated })
    }

    /// The relevant journal records stored from `since_ms` on, with their store times (a DLQ
    /// copy and its ack, appended together, keep their order), at most `cap` read.
    async fn scan_journal(
        &self,
        since_ms: i64,
        cap: usize,
        positions: &BTreeSet<(String, u32, u64)>,
        half: Option<u64>,
    ) -> BrokerResult<(Vec<(i64, u64, JournalRecord)>, usize, bool)> {
        let end = self.inner.log.queue_range(JOURNAL_TOPIC, 0).end;
        let mut next =
            self.with_remote_fetch(JOURNAL_FETCH_ROUNDS, || self.offset_at(JOURNAL_TOPIC, 0, since_ms)).await?;
        let (mut out, mut scanned, mut fetches) = (Vec::new(), 0usize, 0usize);
        while next < end && scanned < cap {
            let want = JOURNAL_BATCH.min(cap - scanned);
            let batch = match self.inner.log.read(JOURNAL_TOPIC, 0, next, want, 8 << 20) {
                Ok(b) => b,
                Err(StorageError::RemoteNotCached { .. }) if fetches < JOURNAL_FETCH_ROUNDS => {
                    fetches += 1;
                    self.inner.log.fetch_remote(JOURNAL_TOPIC, 0, next, REMOTE_FETCH_BYTES).await?;
                    continue;
                }
                // A damaged record: step over it.
                Err(StorageError::Corrupted { .. }) => {
                    next += 1;
                    scanned += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(last) = batch.last() else { break };
            next = last.queue_offset + 1;
            scanned += batch.len();
            for m in &batch {
                if let Some(record) = JournalRecord::decode(m)
                    && relevant(&record, positions, half)
                {
                    out.push((m.store_timestamp_ms, m.log_position, record));
                }
            }
        }
        Ok((out, scanned, next < end))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::journal::{AckRecord, Delivery, DeliveryRecord};
    use crate::storage::Properties;

    fn record(topic: &str, queue_id: u32, offset: u64, stored: i64, props: &[(&str, &str)]) -> StoredMessage {
        let mut properties = Properties::new();
        properties.push(keys::UNIQ_KEY, "ID1");
        for (k, v) in props {
            properties.push(k.to_string(), *v);
        }
        StoredMessage {
            topic: Arc::from(topic),
            queue_id,
            queue_offset: offset,
            log_position: stored as u64,
            store_timestamp_ms: stored,
            born_timestamp_ms: stored - 1,
            flags: 1,
            tag_hash: 0,
            properties,
            body: Bytes::from_static(b"hello"),
        }
    }

    fn delivery(group: &str, attempt: u32, until: i64, change: bool) -> JournalRecord {
        JournalRecord::Deliveries(DeliveryRecord {
            group: group.into(),
            topic: "T".into(),
            auto_renew_client: None,
            receiver: Some("client-1".into()),
            invisible_change: change,
            deliveries: vec![Delivery { queue_id: 2, offset: 7, serial: 1, attempt, visible_at_ms: until }],
        })
    }

    fn ack(group: &str) -> JournalRecord {
        JournalRecord::Ack(AckRecord { group: group.into(), topic: "T".into(), queue_id: 2, offset: 7 })
    }

    fn kinds(events: &[TimedEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.event.kind()).collect()
    }

    #[test]
    fn retried_then_acked() {
        let records = classify(vec![record("T", 2, 7, 100, &[(keys::TAGS, "a"), (keys::KEYS, "k1 k2")])]);
        let m = found_message("ID1", &records).unwrap();
        assert_eq!((m.topic.as_str(), m.tag.as_deref(), m.keys.len()), ("T", Some("a"), 2));
        let journal = vec![
            (110, 110, delivery("G", 1, 1110, false)),
            // Not for this message: another offset.
            (111, 111, JournalRecord::Ack(AckRecord { group: "G".into(), topic: "T".into(), queue_id: 2, offset: 8 })),
            (120, 120, delivery("G", 1, 125, true)),
            (130, 130, delivery("G", 2, 2130, false)),
            (140, 140, ack("G")),
        ];
        let journal: Vec<_> = journal
            .into_iter()
            .filter(|(_, _, r)| relevant(r, &BTreeSet::from([("T".to_string(), 2, 7)]), None))
            .collect();
        let (events, groups) = assemble(&records, &journal, &BTreeMap::new(), 1000);
        assert_eq!(kinds(&events), ["STORED", "DELIVERED", "INVISIBILITY_CHANGED", "DELIVERED", "ACKED"]);
        assert!(
            matches!(&events[3].event, TraceEvent::Delivered { attempt: 2, client: Some(c), .. } if c == "client-1")
        );
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].status, groups[0].deliveries, groups[0].last_attempt), (GroupStatus::Consumed, 2, 2));
    }

    #[test]
    fn dead_lettered_and_in_flight_groups() {
        let dlq = record("%DLQ%G", 0, 0, 300, &[(keys::DLQ_ORIGIN_TOPIC, "T"), (keys::DLQ_ORIGIN_MESSAGE_ID, "ID1")]);
        let records = classify(vec![dlq, record("T", 2, 7, 100, &[])]);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [RecordRole::Message, RecordRole::DeadLetter]);
        let m = found_message("ID1", &records).unwrap();
        assert_eq!(m.topic, "T");
        let journal = vec![
            (110, 110, delivery("G", 1, 150, false)),
            (200, 200, delivery("G", 2, 250, false)),
            (300, 300, ack("G")),
            (310, 310, delivery("H", 1, 5000, false)),
        ];
        let (events, groups) = assemble(&records, &journal, &BTreeMap::new(), 1000);
        assert_eq!(kinds(&events), ["STORED", "DELIVERED", "DELIVERED", "DLQ", "ACKED", "DELIVERED"]);
        assert!(matches!(&events[4].event, TraceEvent::Acked { dead_lettered: true, .. }));
        let g = &groups[0];
        assert_eq!(
            (g.group.as_str(), g.status, g.dlq_topic.as_deref()),
            ("G", GroupStatus::DeadLettered, Some("%DLQ%G"))
        );
        assert_eq!((groups[1].group.as_str(), groups[1].status), ("H", GroupStatus::InFlight));
    }

    #[test]
    fn progress_decides_without_journal() {
        let records = classify(vec![record("T", 2, 7, 100, &[])]);
        assert!(found_message("ID1", &records).is_some());
        let progress = BTreeMap::from([
            ("below".to_string(), (8, true, None)),
            ("waiting".to_string(), (5, false, Some((3, 50)))),
            ("fresh".to_string(), (5, false, None)),
        ]);
        let (_, groups) = assemble(&records, &[], &progress, 1000);
        let status: Vec<_> = groups.iter().map(|g| (g.group.as_str(), g.status)).collect();
        assert_eq!(
            status,
            [
                ("below", GroupStatus::Consumed),
                ("fresh", GroupStatus::NotConsumed),
                ("waiting", GroupStatus::AwaitingRedelivery)
            ]
        );
    }

    #[test]
    fn scheduled_and_transactions() {
        let timer = record(TIMER_TOPIC, 0, 3, 100, &[(keys::TIMER_DELIVER_MS, "500"), (keys::REAL_TOPIC, "T")]);
        let mut fired = record("T", 2, 7, 500, &[]);
        fired.flags |= crate::broker::message::FLAG_REF;
        fired.properties.push(keys::REF_TOPIC, TIMER_TOPIC);
        fired.properties.push(keys::REF_QUEUE_ID, "0");
        fired.properties.push(keys::REF_OFFSET, "3");
        let records = classify(vec![fired, timer]);
        let m = found_message("ID1", &records).unwrap();
        assert_eq!((m.topic.as_str(), m.deliver_at_ms, &m.body[..]), ("T", Some(500), &b"hello"[..]));
        let (events, _) = assemble(&records, &[], &BTreeMap::new(), 1000);
        assert_eq!(kinds(&events), ["STORED", "SCHEDULED", "TIMER_FIRED"]);

        let half = record(HALF_TOPIC, 0, 4, 100, &[(keys::REAL_TOPIC, "T")]);
        let records = classify(vec![half]);
        let m = found_message("ID1", &records).unwrap();
        assert_eq!(m.topic, "T");
        let rollback =
            JournalRecord::Ack(AckRecord { group: TX_GROUP.into(), topic: HALF_TOPIC.into(), queue_id: 0, offset: 4 });
        assert!(relevant(&rollback, &BTreeSet::new(), Some(4)));
        let (events, _) = assemble(&records, &[(200, 200, rollback)], &BTreeMap::new(), 1000);
        assert_eq!(kinds(&events), ["STORED", "PREPARED", "ROLLED_BACK"]);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for id in ["", " ", "a b", &"x".repeat(129)] {
            assert!(matches!(validate_id(id), Err(BrokerError::IllegalMessageId(_))), "{id:?}");
        }
        assert!(validate_id("0A0B0C0D0E0F").is_ok());
    }

    /// Through a real broker (memory log): a delay message fired, received, nacked, received
    /// again and acked; a rolled-back transaction; a message dead-lettered after its attempts.
    #[tokio::test]
    async fn through_the_broker() {
        use crate::broker::tests::{Harness, message, receive_request};
        use crate::broker::{OutgoingMessage, Resolution, ResolutionSource};
        use crate::clock::Clock;
        use crate::storage::memory::MemoryLog;
        use std::time::Duration;

        let h = Harness::new(Arc::new(MemoryLog::new())).await;
        let broker = h.start().await;
        broker.create_topic("T", None, crate::broker::TopicKind::Mixed).await.unwrap();
        let now = h.clock.now_ms();
        let delayed = OutgoingMessage { delivery_timestamp_ms: Some(now + 1_000), ..message("D1") };
        broker.send(vec![delayed]).await.unwrap();
        broker.index_timers().unwrap();
        h.clock.advance(1_000);
        assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
        let got = broker.receive(receive_request()).await.unwrap();
        let handle =
            broker.change_invisible_duration("c", "G", "T", &got[0].receipt_handle, Duration::ZERO).await.unwrap();
        assert!(!handle.is_empty());
        let again = broker.receive(receive_request()).await.unwrap();
        assert_eq!(again[0].delivery_attempt, 2);
        broker.ack("c", "G", "T", &again[0].receipt_handle).await.unwrap();
        let t = broker.message_trace("D1", None).await.unwrap();
        assert_eq!(
            kinds(&t.events),
            ["STORED", "SCHEDULED", "TIMER_FIRED", "DELIVERED", "INVISIBILITY_CHANGED", "DELIVERED", "ACKED"]
        );
        assert_eq!((t.message.topic.as_str(), t.message.message_type), ("T", MessageType::Delay));
        assert_eq!(&t.message.body[..], b"D1");
        assert!(matches!(&t.events[3].event, TraceEvent::Delivered { client: Some(c), attempt: 1, .. } if c == "c"));
        assert_eq!(
            t.groups.iter().map(|g| (g.group.as_str(), g.status)).collect::<Vec<_>>(),
            [("G", GroupStatus::Consumed)]
        );
        assert!(!t.truncated);

        broker.send(vec![OutgoingMessage { transactional: true, ..message("TX1") }]).await.unwrap();
        broker.end_transaction("T", "TX1", Resolution::Rollback, ResolutionSource::Client).await.unwrap();
        let t = broker.message_trace("TX1", None).await.unwrap();
        assert_eq!(kinds(&t.events), ["STORED", "PREPARED", "ROLLED_BACK"]);

        broker.put_group("G", false, (Some(0), None), None).await.unwrap();
        broker.send(vec![message("X1")]).await.unwrap();
        let got = broker.receive(receive_request()).await.unwrap();
        assert_eq!(got.len(), 1);
        h.clock.advance(60_000);
        assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "one attempt only");
        let t = broker.message_trace("X1", Some(3)).await.unwrap();
        assert!(t.truncated || kinds(&t.events).contains(&"DLQ"));
        let t = broker.message_trace("X1", None).await.unwrap();
        assert_eq!(kinds(&t.events), ["STORED", "DELIVERED", "DLQ", "ACKED"]);
        assert_eq!(t.groups[0].dlq_topic.as_deref(), Some("%DLQ%G"));
        assert!(t.message.stored.iter().any(|s| s.role == RecordRole::DeadLetter));
        assert!(matches!(broker.find_message("nope"), Err(BrokerError::MessageNotFound(_))));
        assert_eq!(broker.find_messages_by_key("T", "k", 10).unwrap().len(), 0);
    }
}
