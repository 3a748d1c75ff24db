//! Delay/timer messages. A message due later is stored once, in queue 0 of the system topic
//! `rmq_sys_timer`, and indexed by due time in the on-disk [`TimerIndex`] (time buckets; only
//! the buckets of the near future are held in memory by the [`Wheel`]). When it is due, the
//! timer task appends a small reference record to a queue of its real topic, which consumers
//! read as the message (see `message::reference`); the body is never copied. (In a cluster
//! it appends a full copy, and hands the message to a node serving a queue of the topic when
//! this node serves none: `handover.rs`.)
//!
//! Durability without a write per message to SQL or fsync of the index:
//! - the scheduled message is durable in the log before the producer hears OK;
//! - queue 1 of the timer topic holds control records: recalls, and after every fired batch a
//!   mark listing the offsets it fired, appended in the same all-or-nothing log append as the
//!   batch's reference records (so a crash can neither lose nor repeat a firing);
//! - the index checkpoint says how far both queues are indexed; at start the task re-indexes
//!   what lies past it, skipping what the marks say has fired.
//!
//! Ordering: entries fire in (due, offset) order and the wheel remembers the last key fired
//! (the watermark); an entry indexed after its due time (the index lags the send by a few
//! ms) is moved just past the watermark so it fires at once and the watermark stays exact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{BrokerError, BrokerResult};
use super::message::{self, referenced};
use super::{Broker, lock};

use crate::storage::record::keys;
use crate::storage::{AppendMessage, Properties, StoredMessage, TimerEntry, TimerIndex};

/// The system topic of scheduled messages (queue 0) and timer control records (queue 1).
pub(crate) const TIMER_TOPIC: &str = "rmq_sys_timer";
/// Cluster: a message due while no queue of its topic is this node's, and that could not be
/// handed over to a node owning one, is tried again after this.
const NOT_OWNER_RETRY_MS: i64 = 1000;
const SCHEDULED: u32 = 0;
const CONTROL: u32 = 1;
const KIND_CANCEL: u8 = 1;
const KIND_FIRED: u8 = 2;
/// Most messages fired by one log append.
const FIRE_BATCH: usize = 1024;
/// Most entries held in memory: loading more buckets waits until these fired.
const NEAR_MAX: usize = 2_000_000;
/// How often the index checkpoint is written when something changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The key entries fire in.
type Key = (i64, u64);
/// A due message to hand over (cluster): as scheduled, and its copy for its topic.
type Handed = (StoredMessage, AppendMessage);

/// The near future of the timer index, in memory, and what has fired.
#[derive(Debug)]
pub(crate) struct Wheel {
    bucket_ms: i64,
    /// Entries due before this are in `near` (or fired); later ones only on disk.
    loaded_until: i64,
    /// (due, offset) → log position.
    near: BTreeMap<Key, u64>,
    /// Recalled offsets (with their due time, to forget them once long past).
    cancelled: HashMap<u64, i64>,
    /// Every entry with a key up to this has fired.
    fired: Key,
    /// Buckets with entries not fired yet → lowest log position among them (retention hold).
    pending: BTreeMap<i64, u64>,
}

/// What a recall found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recall {
    /// It will not fire.
    Cancelled,
    /// It fired already (or is firing now).
    TooLate,
}

impl Wheel {
    pub fn new(bucket_ms: i64, fired: Key, loaded_until: i64) -> Wheel {
        Wheel {
            bucket_ms,
            loaded_until,
            near: BTreeMap::new(),
            cancelled: HashMap::new(),
            fired,
            pending: BTreeMap::new(),
        }
    }

    fn bucket_of(&self, due: i64) -> i64 {
        due.div_euclid(self.bucket_ms)
    }

    /// Schedules an entry (already in the log); returns the entry to write to the index,
    /// with its due time moved past the watermark if it is already behind it.
    pub fn schedule(&mut self, mut e: TimerEntry) -> TimerEntry {
        if (e.due_ms, e.offset) <= self.fired {
            e.due_ms = self.fired.0.saturating_add(1);
        }
        let bucket = self.bucket_of(e.due_ms);
        let min = self.pending.entry(bucket).or_insert(e.log_position);
        *min = (*min).min(e.log_position);
        if e.due_ms < self.loaded_until && !self.cancelled.contains_key(&e.offset) {
            self.near.insert((e.due_ms, e.offset), e.log_position);
        }
        e
    }

    /// Recalls the entry at `offset` first due at `due_ms` (it may have been moved later, never
    /// earlier). Entries taken for firing are no longer in memory: too late for them.
    pub fn cancel(&mut self, offset: u64, due_ms: i64) -> Recall {
        let found = self.near.range((due_ms, 0)..).find(|(k, _)| k.1 == offset).map(|(k, _)| *k);
        match found {
            Some(key) => {
                self.near.remove(&key);
            }
            // Not loaded yet: remembered until its bucket loads.
            None if due_ms >= self.loaded_until => {}
            None => return Recall::TooLate,
        }
        self.cancelled.insert(offset, due_ms);
        Recall::Cancelled
    }

    /// Whether the entry at `offset` is recalled.
    pub fn is_cancelled(&self, offset: u64) -> bool {
        self.cancelled.contains_key(&offset)
    }

    /// Loads buckets from disk until `until` (or until memory holds `NEAR_MAX` entries).
    pub fn load(&mut self, index: &dyn TimerIndex, until: i64) -> BrokerResult<()> {
        while self.loaded_until <= until && self.near.len() < NEAR_MAX {
            let bucket = self.bucket_of(self.loaded_until);
            let entries = index.bucket(bucket)?;
            for e in entries.iter().filter(|e| e.cancel) {
                self.cancelled.insert(e.offset, e.due_ms);
            }
            for e in entries.iter().filter(|e| !e.cancel) {
                let key = (e.due_ms, e.offset);
                if key > self.fired && !self.cancelled.contains_key(&e.offset) {
                    self.near.insert(key, e.log_position);
                    let min = self.pending.entry(bucket).or_insert(e.log_position);
                    *min = (*min).min(e.log_position);
                }
            }
            self.loaded_until = (bucket + 1).saturating_mul(self.bucket_ms);
        }
        Ok(())
    }

    /// Takes the entries due at `now`, at most `max`, in key order: the (offset, log position)
    /// of those to fire and the last key taken (recalled ones are skipped but count).
    pub fn take_due(&mut self, now: i64, max: usize) -> (Vec<(Key, u64)>, Option<Key>) {
        let mut out = Vec::new();
        let mut last = None;
        while out.len() < max {
            let Some((&key, &pos)) = self.near.first_key_value() else { break };
            if key.0 > now {
                break;
            }
            self.near.remove(&key);
            last = Some(key);
            if self.cancelled.remove(&key.1).is_none() {
                out.push((key, pos));
            }
        }
        (out, last)
    }

    /// A fire failed: its entries go back.
    pub fn untake(&mut self, entries: &[(Key, u64)]) {
        for &(key, pos) in entries {
            self.near.insert(key, pos);
        }
    }

    /// The entries up to `last` fired: move the watermark; returns the buckets now fully
    /// fired (their files can go).
    pub fn fired(&mut self, last: Key) -> Vec<i64> {
        self.fired = self.fired.max(last);
        let done_below = self.bucket_of(self.fired.0);
        let done: Vec<i64> = self.pending.range(..done_below).map(|(&b, _)| b).collect();
        for b in &done {
            self.pending.remove(b);
        }
        let horizon = self.fired.0.saturating_sub(2 * self.bucket_ms);
        self.cancelled.retain(|_, due| *due >= horizon);
        done
    }

    /// Lowest log position a pending entry needs.
    pub fn hold(&self) -> Option<u64> {
        self.pending.values().min().copied()
    }

    /// Entries in memory (metrics, tests).
    pub fn near_len(&self) -> usize {
        self.near.len()
    }
}

/// Checkpoint of the timer index: how far both timer queues are indexed, the watermark, the
/// recalls still relevant and the pending buckets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Checkpoint {
    scheduled: u64,
    control: u64,
    fired: Key,
    cancelled: Vec<(u64, i64)>,
    pending: Vec<(i64, u64)>,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u64_le(self.scheduled);
        b.put_u64_le(self.control);
        b.put_i64_le(self.fired.0);
        b.put_u64_le(self.fired.1);
        b.put_u32_le(self.cancelled.len() as u32);
        for &(o, d) in &self.cancelled {
            b.put_u64_le(o);
            b.put_i64_le(d);
        }
        b.put_u32_le(self.pending.len() as u32);
        for &(bucket, pos) in &self.pending {
            b.put_i64_le(bucket);
            b.put_u64_le(pos);
        }
        let crc = crc32c::crc32c(&b);
        b.put_u32_le(crc);
        b.to_vec()
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut b = body;
        if b.remaining() < 37 || b.get_u8() != 1 {
            return None;
        }
        let mut c = Checkpoint {
            scheduled: b.get_u64_le(),
            control: b.get_u64_le(),
            fired: (b.get_i64_le(), b.get_u64_le()),
            ..Default::default()
        };
        let n = b.get_u32_le() as usize;
        if b.remaining() < n.checked_mul(16)? + 4 {
            return None;
        }
        c.cancelled = (0..n).map(|_| (b.get_u64_le(), b.get_i64_le())).collect();
        let n = b.get_u32_le() as usize;
        if b.remaining() != n.checked_mul(16)? {
            return None;
        }
        c.pending = (0..n).map(|_| (b.get_i64_le(), b.get_u64_le())).collect();
        Some(c)
    }
}

/// A control record of the timer topic.
enum Control {
    Cancel {
        offset: u64,
        due_ms: i64,
    },
    /// A batch fired: the last key taken and the offsets fired.
    Fired {
        last: Key,
        offsets: Vec<u64>,
    },
}

impl Control {
    fn to_append(&self, now_ms: i64) -> AppendMessage {
        let mut body = BytesMut::new();
        match self {
            Control::Cancel { offset, due_ms } => {
                body.put_u8(KIND_CANCEL);
                body.put_u64_le(*offset);
                body.put_i64_le(*due_ms);
            }
            Control::Fired { last, offsets } => {
                body.put_u8(KIND_FIRED);
                body.put_i64_le(last.0);
                body.put_u64_le(last.1);
                for o in offsets {
                    body.put_u64_le(*o);
                }
            }
        }
        AppendMessage {
            topic: Arc::from(TIMER_TOPIC),
            queue_id: CONTROL,
            born_timestamp_ms: now_ms,
            flags: 0,
            tag_hash: 0,
            properties: Properties::new(),
            body: body.freeze(),
        }
    }

    fn decode(m: &StoredMessage) -> Option<Control> {
        let mut b: Bytes = m.body.clone();
        match *b.first()? {
            KIND_CANCEL if b.len() == 17 => {
                b.advance(1);
                Some(Control::Cancel { offset: b.get_u64_le(), due_ms: b.get_i64_le() })
            }
            KIND_FIRED if b.len() >= 17 && (b.len() - 17).is_multiple_of(8) => {
                b.advance(1);
                let last = (b.get_i64_le(), b.get_u64_le());
                Some(Control::Fired { last, offsets: (0..b.len() / 8).map(|_| b.get_u64_le()).collect() })
            }
            _ => None,
        }
    }
}

/// The timer service's state: the wheel and how far the timer queues are indexed.
pub(crate) struct Timers {
    index: Arc<dyn TimerIndex>,
    state: std::sync::Mutex<TimerState>,
    /// Woken by sends and recalls.
    pub(crate) wake: tokio::sync::Notify,
}

struct TimerState {
    wheel: Wheel,
    scheduled_next: u64,
    control_next: u64,
    changed: bool,
}

/// A recall handle: what a producer gets for a scheduled message and gives back to cancel it.
/// `base64url("v1 {topic} {offset} {due_ms} {message_id}")` (opaque to clients; checked against
/// the stored message on use).
pub(crate) fn recall_handle(topic: &str, offset: u64, due_ms: i64, message_id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1 {topic} {offset} {due_ms} {message_id}"))
}

fn parse_recall_handle(handle: &str) -> Option<(String, u64, i64, String)> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(handle.trim_end_matches('=')).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split(' ');
    if parts.next()? != "v1" {
        return None;
    }
    let topic = parts.next()?.to_string();
    let offset = parts.next()?.parse().ok()?;
    let due = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_string();
    parts.next().is_none().then_some((topic, offset, due, id))
}

impl Timers {
    /// Loads the checkpoint; [`Broker::recover_timers`] then re-indexes what lies past it.
    pub fn open(index: Arc<dyn TimerIndex>, now_ms: i64) -> BrokerResult<Timers> {
        let checkpoint = match index.load_checkpoint()? {
            Some(bytes) => match Checkpoint::decode(&bytes) {
                Some(c) => c,
                None => {
                    // Re-index both timer queues from their start: the fired marks in the log
                    // say what already fired (where retention kept them; beyond that a
                    // scheduled message may fire again: at-least-once, never lost).
                    tracing::error!(
                        "the timer index checkpoint is damaged; re-indexing scheduled messages from the log"
                    );
                    Checkpoint { fired: (i64::MIN, 0), ..Default::default() }
                }
            },
            None => Checkpoint { fired: (i64::MIN, 0), ..Default::default() },
        };
        let bucket_ms = index.bucket_ms();
        // Load from the oldest bucket still on disk (entries may be overdue after downtime).
        let first = index.buckets()?.first().map_or(now_ms, |b| b.saturating_mul(bucket_ms));
        let start = first.min(now_ms).div_euclid(bucket_ms).saturating_mul(bucket_ms);
        let mut wheel = Wheel::new(bucket_ms, checkpoint.fired, start);
        wheel.cancelled = checkpoint.cancelled.iter().copied().collect();
        wheel.pending = checkpoint.pending.iter().copied().collect();
        Ok(Timers {
            index,
            state: std::sync::Mutex::new(TimerState {
                wheel,
                scheduled_next: checkpoint.scheduled,
                control_next: checkpoint.control,
                changed: true,
            }),
            wake: tokio::sync::Notify::new(),
        })
    }
}

/// The offsets of the scheduled queue of `log` that fired or were recalled, as its control
/// queue records them (all of it that retention kept: a mark is always later in the log than
/// the messages it names, so retention never keeps a message and drops its mark).
pub(super) async fn settled_timer_offsets(log: &dyn crate::storage::MessageLog) -> BrokerResult<HashSet<u64>> {
    let range = log.queue_range(TIMER_TOPIC, CONTROL);
    let mut done = HashSet::new();
    let mut next = range.start;
    while next < range.end {
        let batch = super::adoption::read_fetching(log, TIMER_TOPIC, CONTROL, next).await?;
        let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
        for m in &batch {
            match Control::decode(m) {
                Some(Control::Cancel { offset, .. }) => {
                    done.insert(offset);
                }
                Some(Control::Fired { offsets, .. }) => done.extend(offsets),
                None => {}
            }
        }
        next = last + 1;
    }
    Ok(done)
}

/// A scheduled message's due time, as stored.
pub(super) fn due_of(m: &StoredMessage) -> i64 {
    m.properties.get(keys::TIMER_DELIVER_MS).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The record that recalls the scheduled message at `offset` of this node's timer queue.
pub(super) fn cancel_record(offset: u64, due_ms: i64, now_ms: i64) -> AppendMessage {
    Control::Cancel { offset, due_ms }.to_append(now_ms)
}

impl Broker {
    fn timers(&self) -> &Timers {
        &self.inner.timers
    }

    /// Wakes the timer task (new entries indexed).
    pub(super) fn timers_wake(&self) {
        self.timers().wake.notify_one();
    }

    /// Timer entries held in memory and not fired yet (`/metrics`).
    pub(super) fn timers_loaded(&self) -> u64 {
        lock(&self.timers().state).wheel.near.len() as u64
    }

    /// Stores messages due later in the timer queue; one `(offset, recall handle)` each.
    pub(super) async fn schedule(
        &self,
        topic: &super::TopicEntry,
        appends: Vec<AppendMessage>,
        due: &[i64],
        ids: &[String],
    ) -> BrokerResult<Vec<(u64, String)>> {
        self.require_home("take scheduled messages")?;
        let topic_record = &topic.record;
        let topic = topic_record.name.as_str();
        let appends = appends
            .into_iter()
            .map(|mut a| {
                a.properties.push(keys::REAL_TOPIC, topic);
                a.topic = Arc::from(TIMER_TOPIC);
                a.queue_id = SCHEDULED;
                a
            })
            .collect();
        let results = self.inner.log.append(appends).await?;
        self.timers().wake.notify_one();
        if topic_record.durability == crate::metadata::Durability::ObjectStore {
            // Acknowledged only once this node's log has it in the object store: a node lost
            // with its disk leaves it to the node that adopts its timers.
            self.inner.log.persist_remote(&results).await?;
        }
        Ok(results
            .iter()
            .zip(due.iter().zip(ids))
            .map(|(r, (&d, id))| (r.queue_offset, recall_handle(topic, r.queue_offset, d, id)))
            .collect())
    }

    /// RecallMessage: cancels a scheduled message; returns its message id.
    pub async fn recall(&self, topic: &str, handle: &str) -> BrokerResult<String> {
        let t = self.client_topic(topic).await?;
        if !message::MessageType::Delay.accepted_by(t.record.topic_type) {
            return Err(BrokerError::MessageTypeConflict(format!(
                "topic `{topic}` is a {} topic; only DELAY (or MIXED) topics have scheduled messages to recall",
                t.record.topic_type.as_str()
            )));
        }
        let (handle_topic, offset, due_ms, id) =
            parse_recall_handle(handle).ok_or_else(|| BrokerError::BadRequest("recall handle is malformed".into()))?;
        if handle_topic != topic {
            return Err(BrokerError::BadRequest(format!("recall handle is for topic `{handle_topic}`, not `{topic}`")));
        }
        self.require_home("recall scheduled messages")?;
        // (A failed read is a miss: the lookup by message id below may still find it.)
        let mut stored = super::adoption::read_fetching(&*self.inner.log, TIMER_TOPIC, SCHEDULED, offset)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.queue_offset == offset)
            .filter(|m| m.properties.get(keys::UNIQ_KEY) == Some(id.as_str()));
        if stored.is_none() {
            // Cluster: a message adopted from a dead node's log is at another offset here.
            stored = self.inner.log.find_by_message_id(&id)?.into_iter().rev().find(|m| {
                m.topic.as_ref() == TIMER_TOPIC
                    && m.queue_id == SCHEDULED
                    && m.properties.get(keys::REAL_TOPIC) == Some(topic)
            });
        }
        let Some(stored) = stored else {
            return Err(BrokerError::MessageNotFound(format!(
                "no scheduled message `{id}` for this recall handle (unknown, or removed by retention)"
            )));
        };
        let offset = stored.queue_offset;
        if self.adopted(Some(offset), None) {
            return Err(BrokerError::AdoptedElsewhere(format!(
                "scheduled message `{id}` was adopted by another node while this one was gone"
            )));
        }
        if due_ms <= self.now_ms() {
            return Err(BrokerError::BadRequest(format!(
                "message `{id}` was due at {due_ms} and has been delivered; it can no longer be recalled"
            )));
        }
        // Durable first, then applied by indexing the control record like any other (a crash
        // after the append still cancels at restart).
        let control = Control::Cancel { offset, due_ms: due_of(&stored).min(due_ms) };
        let results = self.inner.log.append(vec![control.to_append(self.now_ms())]).await?;
        self.index_timers()?;
        if t.record.durability == crate::metadata::Durability::ObjectStore {
            // Answered once the recall is in the bucket: a node adopting this node's timers
            // after its loss must not fire the message.
            self.inner.log.persist_remote(&results).await?;
        }
        if lock(&self.timers().state).wheel.is_cancelled(offset) {
            Ok(id)
        } else {
            Err(BrokerError::BadRequest(format!(
                "message `{id}` is being delivered or was delivered; it can no longer be recalled"
            )))
        }
    }

    /// Indexes what the timer queues hold past the indexed offsets. At start (`recovering`),
    /// entries the fired marks name are skipped; later every new entry is scheduled.
    fn index_timers_from(&self, recovering: bool) -> BrokerResult<usize> {
        let timers = self.timers();
        let mut st = lock(&timers.state);
        let log = &self.inner.log;
        let mut fired_offsets = HashSet::new();
        let mut entries = Vec::new();
        // Control records first: recovery must know what fired before re-indexing. A failed
        // read (e.g. tiered data not fetched yet: the caller fetches and calls again) rescans
        // the control records from where this call started, so no fired mark is missed.
        let end = log.queue_range(TIMER_TOPIC, CONTROL).end;
        let control_start = st.control_next;
        while st.control_next < end {
            let batch = match log.read(TIMER_TOPIC, CONTROL, st.control_next, 1024, 8 << 20) {
                Ok(batch) => batch,
                Err(e) => {
                    st.control_next = control_start;
                    return Err(e.into());
                }
            };
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in &batch {
                match Control::decode(m) {
                    Some(Control::Cancel { offset, due_ms }) => {
                        st.wheel.cancel(offset, due_ms);
                        entries.push(TimerEntry { due_ms, offset, log_position: 0, cancel: true });
                        // A recalled message is never scheduled again, also when its due time
                        // is behind the watermark (the wheel forgets such recalls, and fired
                        // marks do not name recalled messages).
                        fired_offsets.insert(offset);
                    }
                    Some(Control::Fired { last, offsets }) if recovering => {
                        st.wheel.fired = st.wheel.fired.max(last);
                        fired_offsets.extend(offsets);
                    }
                    Some(Control::Fired { .. }) | None => {}
                }
            }
            st.control_next = last + 1;
        }
        let end = log.queue_range(TIMER_TOPIC, SCHEDULED).end;
        // A failed read keeps what was indexed before it (the scan goes on from there).
        let mut failed = None;
        while st.scheduled_next < end {
            let batch = match log.read(TIMER_TOPIC, SCHEDULED, st.scheduled_next, 1024, 8 << 20) {
                Ok(batch) => batch,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in &batch {
                if fired_offsets.contains(&m.queue_offset) {
                    continue;
                }
                let due_ms = m.properties.get(keys::TIMER_DELIVER_MS).and_then(|v| v.parse().ok()).unwrap_or(0);
                let e = TimerEntry { due_ms, offset: m.queue_offset, log_position: m.log_position, cancel: false };
                entries.push(st.wheel.schedule(e));
            }
            st.scheduled_next = last + 1;
        }
        if !entries.is_empty() {
            timers.index.add(&entries)?;
            st.changed = true;
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(entries.len()),
        }
    }

    pub(super) fn index_timers(&self) -> BrokerResult<usize> {
        self.index_timers_from(false)
    }

    /// At start: re-indexes the timer queues past the checkpoint.
    pub(super) fn recover_timers(&self) -> BrokerResult<()> {
        let n = self.index_timers_from(true)?;
        // Bucket files wholly behind the watermark whose removal a crash interrupted.
        let fired = lock(&self.timers().state).wheel.fired.0;
        let index = &self.timers().index;
        for b in index.buckets()? {
            if b.saturating_add(1).saturating_mul(index.bucket_ms()) <= fired {
                index.remove_bucket(b)?;
            }
        }
        if n > 0 {
            tracing::info!(entries = n, "re-indexed scheduled messages newer than the timer checkpoint");
        }
        Ok(())
    }

    /// Fires what is due now: reads each message, appends its reference record to its topic
    /// and the fired mark in one append. Returns how many fired.
    pub(super) async fn fire_due_timers(&self) -> BrokerResult<usize> {
        // Cluster: not while another node may be adopting this node's timers.
        if !self.home_writable() {
            return Ok(0);
        }
        let now = self.now_ms();
        let precision = self.inner.settings.timer.timer_precision.as_millis() as i64;
        let mut total = 0;
        loop {
            // Again before every batch: the home log may lapse while firing.
            if !self.home_writable() {
                return Ok(total);
            }
            let (due, last) = {
                let mut st = lock(&self.timers().state);
                let bucket_ms = st.wheel.bucket_ms;
                st.wheel.load(self.timers().index.as_ref(), now.saturating_add(precision).saturating_add(bucket_ms))?;
                st.wheel.take_due(now, FIRE_BATCH)
            };
            let Some(last) = last else { return Ok(total) };
            match self.fire(&due, last, now).await {
                Ok(topics) => {
                    let done = {
                        let mut st = lock(&self.timers().state);
                        st.changed = true;
                        st.wheel.fired(last)
                    };
                    for b in done {
                        self.timers().index.remove_bucket(b)?;
                    }
                    for t in topics {
                        t.arrivals.notify_waiters();
                    }
                    total += due.len();
                    if let Some(metrics) = crate::observability::metrics::global() {
                        metrics.timers_fired(due.len() as u64);
                    }
                }
                Err(e) => {
                    lock(&self.timers().state).wheel.untake(&due);
                    return Err(e);
                }
            }
        }
    }

    async fn fire(&self, due: &[(Key, u64)], last: Key, now: i64) -> BrokerResult<Vec<Arc<super::TopicEntry>>> {
        let mut appends = Vec::with_capacity(due.len() + 1);
        let mut fired = Vec::with_capacity(due.len());
        let mut topics: HashMap<String, Arc<super::TopicEntry>> = HashMap::new();
        // Cluster: due messages of topics with no queue here, by topic.
        let mut elsewhere: HashMap<String, (Arc<super::TopicEntry>, Vec<Handed>)> = HashMap::new();
        for &((_, offset), _) in due {
            fired.push(offset);
            let Some(m) = self
                .inner
                .log
                .read(TIMER_TOPIC, SCHEDULED, offset, 1, usize::MAX)?
                .into_iter()
                .find(|m| m.queue_offset == offset)
            else {
                tracing::error!(offset, "scheduled message is gone (retention?); it cannot be delivered");
                continue;
            };
            let Some(real) = m.properties.get(keys::REAL_TOPIC).map(str::to_string) else { continue };
            let topic = match topics.get(&real) {
                Some(t) => t.clone(),
                None => match self.existing_topic(&real).await {
                    Ok(Some(t)) => {
                        topics.insert(real.clone(), t.clone());
                        t
                    }
                    _ => {
                        tracing::warn!(topic = real, offset, "scheduled message's topic no longer exists; dropped");
                        continue;
                    }
                },
            };
            let queue_id = match self.pick_queue(&topic, None) {
                Ok(q) => q,
                // Cluster: no queue of the topic is this node's any more (its shards moved):
                // handed over to a node owning one, below.
                Err(BrokerError::NotOwner(_)) => {
                    let copy = message::copy(&m, Arc::from(real.as_str()), 0);
                    elsewhere.entry(real).or_insert_with(|| (topic, Vec::new())).1.push((m, copy));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let at = (TIMER_TOPIC, SCHEDULED, offset);
            appends.push(self.deliverable(&m, Arc::from(real.as_str()), queue_id, at));
            let queue =
                opentelemetry::KeyValue::new(crate::observability::tracing::attr::PARTITION, queue_id.to_string());
            super::spans::stored_event("timer_fire", "send", &real, &m, vec![queue]).end();
        }
        for (real, (topic, messages)) in elsewhere {
            let (originals, copies): (Vec<_>, Vec<_>) = messages.into_iter().unzip();
            if let Err(e) = self.hand_over(&topic, copies).await {
                // Scheduled again a moment later instead of failing the batch (which would
                // hold up every later timer of this node).
                tracing::debug!(topic = real, error = %e, "due messages could not be handed over; retried");
                for m in originals {
                    let mut again = message::copy(&m, Arc::from(TIMER_TOPIC), SCHEDULED);
                    again.properties.remove(keys::TIMER_DELIVER_MS);
                    again.properties.push(keys::TIMER_DELIVER_MS, (now + NOT_OWNER_RETRY_MS).to_string());
                    appends.push(again);
                }
            }
        }
        appends.push(Control::Fired { last, offsets: fired }.to_append(now));
        self.inner.log.append(appends).await?;
        Ok(topics.into_values().collect())
    }

    /// The record that makes `original` (stored once at `at` in this node's own log)
    /// deliverable on a queue: a reference to it, or in a cluster a full copy (the queue may
    /// move to a node that cannot read this node's log).
    pub(super) fn deliverable(
        &self,
        original: &StoredMessage,
        topic: Arc<str>,
        queue_id: u32,
        at: (&str, u32, u64),
    ) -> crate::storage::AppendMessage {
        if self.clustered() {
            message::copy(original, topic, queue_id)
        } else {
            message::reference(original, topic, queue_id, at)
        }
    }

    /// The message a record stands for: itself, or for a reference record the message stored
    /// once elsewhere; `None` if that is gone.
    pub(super) fn resolve(&self, m: StoredMessage) -> BrokerResult<Option<StoredMessage>> {
        let Some((topic, queue_id, offset)) = referenced(&m) else { return Ok(Some(m)) };
        let original = self
            .inner
            .log
            .read(&topic, queue_id, offset, 1, usize::MAX)?
            .into_iter()
            .find(|o| o.queue_offset == offset);
        match original {
            Some(o) => Ok(Some(message::dereference(m, o))),
            None => {
                tracing::error!(topic, queue_id, offset, "referenced message is gone (retention?); skipped");
                Ok(None)
            }
        }
    }

    /// Writes the timer checkpoint if something changed, and updates the retention hold.
    pub(super) fn checkpoint_timers(&self) -> BrokerResult<()> {
        let (checkpoint, hold) = {
            let mut st = lock(&self.timers().state);
            if !st.changed {
                return Ok(());
            }
            st.changed = false;
            let w = &st.wheel;
            (
                Checkpoint {
                    scheduled: st.scheduled_next,
                    control: st.control_next,
                    fired: w.fired,
                    cancelled: w.cancelled.iter().map(|(&o, &d)| (o, d)).collect(),
                    pending: w.pending.iter().map(|(&b, &p)| (b, p)).collect(),
                },
                w.hold(),
            )
        };
        // Hold first: the checkpoint may drop buckets whose messages retention must keep.
        self.inner.log.hold_retention("timers", hold);
        if let Err(e) = self.timers().index.checkpoint(&checkpoint.encode()) {
            lock(&self.timers().state).changed = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Scheduled messages held in memory, and how many stored ones are not indexed yet
    /// (admin, benchmarks).
    pub fn timer_stats(&self) -> (usize, u64) {
        let end = self.inner.log.queue_range(TIMER_TOPIC, SCHEDULED).end;
        let st = lock(&self.timers().state);
        (st.wheel.near_len(), end.saturating_sub(st.scheduled_next))
    }

    /// Runs the timers until shutdown: indexes new scheduled messages, fires due ones every
    /// `timer.timerPrecision / 2`, checkpoints the index every second.
    pub async fn run_timers(&self) {
        let tick = (self.inner.settings.timer.timer_precision / 2).max(Duration::from_millis(1));
        let shutdown = self.inner.shutdown.clone();
        let mut last_checkpoint = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.index_timers() {
                tracing::warn!(error = %e, "indexing scheduled messages failed; will retry");
            }
            match self.fire_due_timers().await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "firing scheduled messages failed; will retry"),
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                last_checkpoint = tokio::time::Instant::now();
                if let Err(e) = self.checkpoint_timers() {
                    tracing::warn!(error = %e, "timer checkpoint failed; will retry");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.timers().wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
        if let Err(e) = self.checkpoint_timers() {
            tracing::warn!(error = %e, "final timer checkpoint failed; the next start re-indexes more");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::BucketFiles;

    fn sched(due_ms: i64, offset: u64) -> TimerEntry {
        TimerEntry { due_ms, offset, log_position: offset, cancel: false }
    }

    #[test]
    fn fires_in_due_order_and_never_early() {
        let dir = tempfile::tempdir().unwrap();
        let index = BucketFiles::open(dir.path(), 1000).unwrap();
        let mut w = Wheel::new(1000, (i64::MIN, 0), 0);
        let entries: Vec<TimerEntry> =
            [(2500, 1), (1200, 2), (90_000, 3), (1200, 4)].iter().map(|&(d, o)| w.schedule(sched(d, o))).collect();
        index.add(&entries).unwrap();
        w.load(&index, 3000).unwrap();
        assert_eq!(w.near_len(), 3, "the 90 s entry stays on disk");
        let (due, last) = w.take_due(1199, 10);
        assert!(due.is_empty() && last.is_none(), "nothing before its time");
        let (due, last) = w.take_due(1200, 10);
        assert_eq!(due.iter().map(|(k, _)| k.1).collect::<Vec<_>>(), vec![2, 4]);
        w.fired(last.unwrap());
        let (due, last) = w.take_due(2600, 10);
        assert_eq!(due.iter().map(|(k, _)| k.1).collect::<Vec<_>>(), vec![1]);
        assert_eq!(w.fired(last.unwrap()), vec![1], "bucket 1 is done; 2 is not yet");
        w.load(&index, 91_000).unwrap();
        assert_eq!(w.take_due(90_000, 10).0.len(), 1);
    }

    #[test]
    fn late_entries_move_past_the_watermark() {
        let mut w = Wheel::new(1000, (5000, 9), 6000);
        let e = w.schedule(sched(4000, 10));
        assert_eq!(e.due_ms, 5001);
        assert_eq!(w.take_due(5001, 10).0.len(), 1);
    }

    #[test]
    fn recall_before_and_after_loading() {
        let dir = tempfile::tempdir().unwrap();
        let index = BucketFiles::open(dir.path(), 1000).unwrap();
        let mut w = Wheel::new(1000, (i64::MIN, 0), 0);
        let e = [w.schedule(sched(500, 1)), w.schedule(sched(5000, 2)), w.schedule(sched(5000, 3))];
        index.add(&e).unwrap();
        w.load(&index, 999).unwrap();
        assert_eq!(w.cancel(1, 500), Recall::Cancelled, "loaded: removed from memory");
        assert_eq!(w.cancel(2, 5000), Recall::Cancelled, "on disk: remembered");
        index.add(&[TimerEntry { cancel: true, ..sched(5000, 2) }]).unwrap();
        w.load(&index, 6000).unwrap();
        let (due, last) = w.take_due(6000, 10);
        assert_eq!(due.iter().map(|(k, _)| k.1).collect::<Vec<_>>(), vec![3]);
        w.fired(last.unwrap());
        assert_eq!(w.cancel(3, 5000), Recall::TooLate);
    }

    #[test]
    fn an_entry_being_fired_cannot_be_recalled() {
        let mut w = Wheel::new(1000, (i64::MIN, 0), 10_000);
        w.schedule(sched(100, 1));
        let (due, _) = w.take_due(100, 10);
        assert_eq!(w.cancel(1, 100), Recall::TooLate);
        assert!(!w.is_cancelled(1));
        w.untake(&due);
        assert_eq!(w.cancel(1, 100), Recall::Cancelled, "the fire failed: still recallable");
        assert!(w.is_cancelled(1));
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let c = Checkpoint {
            scheduled: 5,
            control: 7,
            fired: (123, 4),
            cancelled: vec![(9, 1000)],
            pending: vec![(3, 77), (4, 70)],
        };
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(c));
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert_eq!(Checkpoint::decode(&bad), None);
        assert_eq!(Checkpoint::decode(&bytes[..10]), None);
    }

    #[test]
    fn recall_handles_round_trip() {
        let h = recall_handle("T", 42, 1_700_000_000_000, "ID1");
        assert_eq!(parse_recall_handle(&h), Some(("T".into(), 42, 1_700_000_000_000, "ID1".into())));
        assert_eq!(parse_recall_handle("garbage!"), None);
    }
}
