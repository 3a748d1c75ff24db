//! Cluster: a dead node's pending scheduled and half messages live in its home log (log id
//! `node-<id>`, tiered to the shared bucket), which no shard hand-over moves. Another node
//! *adopts* them: it reads that log from the object store, copies every scheduled message
//! that neither fired nor was recalled, and every half message not resolved, into its own
//! home log (one all-or-nothing append per batch), and from then on fires and resolves them
//! as its own. The cluster store records the *cut*: the offsets of the dead node's timer and
//! half queues below which their messages were adopted. A node that comes back applies the
//! cut to its own log before it serves it again ([`Broker::apply_home_cut`]): it recalls its
//! adopted scheduled messages and settles its adopted half messages, so nothing fires or
//! commits twice; what lies past the cut (acknowledged, never uploaded) is still its own.
//!
//! The claim, the cut and the liveness checks are the membership's (`cluster::membership`);
//! this module only reads one log and writes the broker's own.

use std::sync::Arc;

use super::error::BrokerResult;
use super::journal::JournalRecord;
use super::message;
use super::timer::{self, TIMER_TOPIC};
use super::transaction::{HALF_TOPIC, TX_GROUP};
use super::{Broker, REMOTE_FETCH_BYTES, REMOTE_FETCH_ROUNDS};
use crate::metadata::{HomeCut, ProgressRecord};
use crate::storage::record::keys;
use crate::storage::{AppendMessage, MessageLog, StorageError, StoredMessage};

/// Queue of the timer topic holding the scheduled messages.
const SCHEDULED: u32 = 0;
/// Messages copied per log append.
const BATCH: usize = 512;

/// What an adoption took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// The dead node's queues are adopted below these offsets now.
    pub cut: HomeCut,
    pub scheduled: usize,
    pub half: usize,
}

/// Reads a batch of a queue of `log` at `offset`, fetching cold data from the object store.
pub(super) async fn read_fetching(
    log: &dyn MessageLog,
    topic: &str,
    queue_id: u32,
    offset: u64,
) -> BrokerResult<Vec<StoredMessage>> {
    let mut round = 0;
    loop {
        match log.read(topic, queue_id, offset, 1024, 8 << 20) {
            Err(StorageError::RemoteNotCached { topic, queue_id, offset }) if round < REMOTE_FETCH_ROUNDS => {
                round += 1;
                log.fetch_remote(&topic, queue_id, offset, REMOTE_FETCH_BYTES).await?;
            }
            other => return Ok(other?),
        }
    }
}

/// Cluster: where the queues of a home log that lost its disk (resumed past its manifest) must
/// start at least, beyond the manifest: the node's saved system progress may already cover
/// offsets its last tail upload did not (the transaction group's acks, the journal offset its
/// progress snapshot covers); reusing those offsets would count new half messages as resolved
/// and skip journal records. `(topic, queue, next offset)`.
pub fn home_resume_floors(progress: &[ProgressRecord], journal_offset: u64) -> Vec<(String, u32, u64)> {
    let mut floors = vec![(super::journal::JOURNAL_TOPIC.to_string(), 0, journal_offset)];
    if let Some(p) = progress.iter().find(|p| p.group == TX_GROUP && p.topic == HALF_TOPIC && p.queue_id == 0) {
        let state = super::consumer::QueueState::restore(p.ack_floor, &p.acked_above);
        let above = state.acked.iter().map(|r| r.end).max().unwrap_or(0);
        let inflight = state.inflight.keys().next_back().map_or(0, |o| o + 1);
        floors.push((HALF_TOPIC.to_string(), 0, state.floor.max(above).max(inflight)));
    }
    floors
}

impl Broker {
    /// Adopts the pending scheduled and half messages of `node_id`'s home log `foreign` (opened
    /// from the object store) past `from` (what earlier adoptions took). `progress` and
    /// `journal_offset` are that node's system progress as it last saved it
    /// (`ClusterStore::node_system_progress`): with its journal they say which half messages
    /// it resolved. Returns the new cut (the ends of both queues as `foreign` has them).
    pub async fn adopt_home(
        &self,
        node_id: &str,
        foreign: &dyn MessageLog,
        from: HomeCut,
        progress: &[ProgressRecord],
        journal_offset: u64,
    ) -> BrokerResult<Adopted> {
        let scheduled_range = foreign.queue_range(TIMER_TOPIC, SCHEDULED);
        let half_range = foreign.queue_range(HALF_TOPIC, 0);
        let cut = HomeCut { scheduled: scheduled_range.end.max(from.scheduled), half: half_range.end.max(from.half) };

        // Everything is read (and filtered) before anything is appended: a read that fails
        // (the object store) leaves this node's log as it was, for the next try.
        // Scheduled messages: those the control queue names neither as fired nor recalled.
        let settled = timer::settled_timer_offsets(foreign).await?;
        let mut timers: Vec<AppendMessage> = Vec::new();
        let mut next = from.scheduled.max(scheduled_range.start);
        while next < scheduled_range.end {
            let batch = read_fetching(foreign, TIMER_TOPIC, SCHEDULED, next).await?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            timers.extend(
                batch
                    .iter()
                    .filter(|m| !settled.contains(&m.queue_offset) && m.properties.get(keys::REAL_TOPIC).is_some())
                    .map(|m| message::copy(m, Arc::from(TIMER_TOPIC), SCHEDULED)),
            );
            next = last + 1;
        }
        // Half messages: those the system group did not ack (its saved progress, then the
        // acks journaled after it).
        let mut resolved =
            match progress.iter().find(|p| p.group == TX_GROUP && p.topic == HALF_TOPIC && p.queue_id == 0) {
                Some(p) => super::consumer::QueueState::restore(p.ack_floor, &p.acked_above),
                None => super::consumer::QueueState::restore(0, &[]),
            };
        let journal = foreign.queue_range(super::journal::JOURNAL_TOPIC, 0);
        let mut next = journal_offset.max(journal.start);
        while next < journal.end {
            let batch = read_fetching(foreign, super::journal::JOURNAL_TOPIC, 0, next).await?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            for m in &batch {
                if let Some(JournalRecord::Ack(a)) = JournalRecord::decode(m)
                    && a.group == TX_GROUP
                    && a.topic == HALF_TOPIC
                    && a.queue_id == 0
                {
                    resolved.complete(a.offset);
                }
            }
            next = last + 1;
        }
        let mut halves: Vec<StoredMessage> = Vec::new();
        let mut next = from.half.max(half_range.start).max(resolved.floor);
        while next < half_range.end {
            let batch = read_fetching(foreign, HALF_TOPIC, 0, next).await?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            halves.extend(batch.into_iter().filter(|m| {
                !resolved.is_acked(m.queue_offset)
                    && m.properties.get(keys::UNIQ_KEY).is_some()
                    && m.properties.get(keys::REAL_TOPIC).is_some()
            }));
            next = last + 1;
        }

        let scheduled = timers.len();
        for chunk in timers.chunks(BATCH) {
            self.inner.log.append(chunk.to_vec()).await?;
        }
        if scheduled > 0 {
            self.index_timers()?;
            self.timers_wake();
        }
        let half = halves.len();
        for chunk in halves.chunks(BATCH) {
            let copies = chunk.iter().map(|m| message::copy(m, Arc::from(HALF_TOPIC), 0)).collect();
            let results = self.inner.log.append(copies).await?;
            let adopted = chunk
                .iter()
                .zip(&results)
                .filter_map(|(m, r)| {
                    let id = m.properties.get(keys::UNIQ_KEY)?.to_string();
                    let topic = m.properties.get(keys::REAL_TOPIC)?.to_string();
                    let check = m.properties.get(keys::CHECK_AT).and_then(|v| v.parse().ok()).unwrap_or(0);
                    Some((id, r.queue_offset, topic, check))
                })
                .collect();
            self.open_adopted(adopted);
        }
        tracing::warn!(
            node = node_id,
            scheduled,
            half,
            cut_scheduled = cut.scheduled,
            cut_half = cut.half,
            "adopted the pending scheduled and half messages of a dead node"
        );
        Ok(Adopted { cut, scheduled, half })
    }

    /// Cluster: other nodes adopted this node's scheduled and half messages below `cut` (as the
    /// store says each time the node enters its home log): a recall or an EndTransaction for
    /// one of them is refused here with `BrokerError::AdoptedElsewhere`, which the gRPC layer
    /// passes on to the adopter.
    pub fn set_adopted_cut(&self, cut: HomeCut) {
        *super::lock(&self.inner.adopted_cut) = cut;
    }

    /// Whether this node's scheduled message at `offset` (of its timer queue) or half message
    /// at `half_offset` was adopted by another node.
    pub(super) fn adopted(&self, scheduled_offset: Option<u64>, half_offset: Option<u64>) -> bool {
        let cut = *super::lock(&self.inner.adopted_cut);
        scheduled_offset.is_some_and(|o| o < cut.scheduled) || half_offset.is_some_and(|o| o < cut.half)
    }

    /// This node is back after other nodes adopted its scheduled and half messages below
    /// `cut`: recalls the scheduled ones that are still pending here and settles the half
    /// ones, so that only their adopters deliver them. Call before the node serves its home
    /// log again. Returns how many of each it gave up.
    pub async fn apply_home_cut(&self, cut: HomeCut) -> BrokerResult<(usize, usize)> {
        let log: &dyn MessageLog = &*self.inner.log;
        let settled = timer::settled_timer_offsets(log).await?;
        let range = log.queue_range(TIMER_TOPIC, SCHEDULED);
        let end = range.end.min(cut.scheduled);
        let mut recalls = Vec::new();
        let mut next = range.start;
        while next < end {
            let batch = read_fetching(log, TIMER_TOPIC, SCHEDULED, next).await?;
            let Some(last) = batch.last().map(|m| m.queue_offset) else { break };
            let now = self.now_ms();
            recalls.extend(
                batch
                    .iter()
                    .filter(|m| m.queue_offset < end && !settled.contains(&m.queue_offset))
                    .map(|m| timer::cancel_record(m.queue_offset, timer::due_of(m), now)),
            );
            next = last + 1;
        }
        let scheduled = recalls.len();
        for chunk in recalls.chunks(BATCH) {
            self.inner.log.append(chunk.to_vec()).await?;
        }
        if scheduled > 0 {
            self.index_timers()?;
        }
        let half = self.settle_adopted_halves(cut.half).await?;
        if scheduled + half > 0 {
            tracing::warn!(
                scheduled,
                half,
                "other nodes adopted these scheduled and half messages of this node while it was gone; left to them"
            );
        }
        Ok((scheduled, half))
    }
}
