//! Where consumer groups' per-queue states ([`QueueState`]) live in memory, and the
//! bookkeeping that keeps the work on them proportional to what changed:
//!
//! - **Dirty queue.** A state is locked through [`StateGuard`]; when the guard is dropped on
//!   a state that changed since the last flush, its key joins the dirty queue (once). The
//!   progress flush writes only the states in that queue instead of scanning every state.
//! - **Auto-renewal index.** For each client, the states holding deliveries it auto-renews, so
//!   a client's departure (goodbye or expiry) releases them without scanning every state.
//! - **Idle pruning.** A state with nothing in flight, nothing acked above its floor, nobody
//!   using it and unused for `consumer.queueStateIdleTime` leaves memory; its floor (all that
//!   is left of it) stays in a compact map and the state comes back from it on next use, so
//!   no progress is lost and the group does not start over at the configured start position.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::consumer::QueueState;
use super::error::BrokerResult;
use super::journal::JOURNAL_TOPIC;
use super::settings::ConsumeFromWhere;
use super::{Broker, Lock, QueueKey, lock, validate};
use crate::fast_map::FastBorrowMap;
use crate::metadata::ProgressRecord;

/// A departed client's auto-renewed messages become visible after this (Apache
/// `invisibleTimeMillisWhenClear`).
const RELEASE_DELAY_MS: i64 = 1000;

/// One group's state on one queue, with what the bookkeeping needs.
pub(crate) struct StateCell {
    key: QueueKey,
    state: Mutex<QueueState>,
    /// In the dirty queue (or about to be).
    queued: AtomicBool,
    /// Broker-clock time of the last [`Broker::queue_state`] that returned this cell.
    last_used_ms: AtomicI64,
    dirty: Arc<Mutex<Vec<QueueKey>>>,
}

/// A locked [`StateCell`]: derefs to the [`QueueState`]; queues the state for the next
/// progress flush when it is dropped dirty.
pub(crate) struct StateGuard<'a> {
    cell: &'a StateCell,
    guard: MutexGuard<'a, QueueState>,
}

impl Deref for StateGuard<'_> {
    type Target = QueueState;

    fn deref(&self) -> &QueueState {
        &self.guard
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut QueueState {
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        // Still under the state's lock: a flush that takes the key from the queue clears
        // `queued` before it locks the state, so a change made after it read the state is
        // queued again and one made before is seen by it.
        if self.guard.dirty && !self.cell.queued.swap(true, Ordering::AcqRel) {
            lock(&self.cell.dirty).push(self.cell.key.clone());
        }
    }
}

impl Lock for StateCell {
    type Guard<'a> = StateGuard<'a>;

    fn acquire(&self) -> StateGuard<'_> {
        StateGuard { cell: self, guard: lock(&self.state) }
    }
}

/// A [`QueueKey`] borrowed for a lookup: it hashes and compares as the key it stands for, so
/// finding a live state (several times per receive, once per queue looked at) allocates
/// nothing.
#[derive(Hash)]
struct QueueKeyRef<'a>(&'a str, &'a str, u32);

impl hashbrown::Equivalent<QueueKey> for QueueKeyRef<'_> {
    fn equivalent(&self, key: &QueueKey) -> bool {
        *key.0 == *self.0 && *key.1 == *self.1 && key.2 == self.2
    }
}

#[derive(Default)]
struct Table {
    live: FastBorrowMap<QueueKey, Arc<StateCell>>,
    /// Pruned states: their floor (nothing was in flight or acked above it).
    idle: HashMap<QueueKey, u64>,
    /// Groups with a state on some queue (live or idle): they have a position to keep.
    groups: HashSet<Arc<str>>,
}

/// The states and their bookkeeping (see the module documentation).
#[derive(Default)]
pub(super) struct States {
    table: Mutex<Table>,
    dirty: Arc<Mutex<Vec<QueueKey>>>,
    /// Client → states where it has (or had) auto-renewed deliveries.
    renewals: Mutex<HashMap<Arc<str>, HashSet<QueueKey>>>,
}

/// Counts of the consumer-state bookkeeping, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct StateStats {
    /// States in memory.
    pub live: usize,
    /// States pruned to their floor.
    pub idle: usize,
    /// Deliveries in flight, over all live states.
    pub inflight: usize,
    /// Ranges of acked offsets above the floor (one per run of acks past a gap), over all live
    /// states: what the ack bookkeeping holds.
    pub acked_above_floor: usize,
    /// The most acked ranges above the floor of one state.
    pub max_acked_above_floor: usize,
    /// States waiting for the next progress flush.
    pub dirty: usize,
    /// Clients in the auto-renewal index.
    pub renewing_clients: usize,
}

impl States {
    /// Every consumer (group, or a broadcast client's own consumer) with a state on some queue.
    pub(super) fn groups(&self) -> Vec<Arc<str>> {
        lock(&self.table).groups.iter().cloned().collect()
    }

    /// The keys of the states (live or pruned) of every consumer on `topic`.
    pub(super) fn keys_on(&self, topic: &str) -> Vec<QueueKey> {
        let table = lock(&self.table);
        table.live.keys().chain(table.idle.keys()).filter(|k| &*k.1 == topic).cloned().collect()
    }

    /// Read-only (message trace lookup): a consumer's floor on a queue, whether `offset` is
    /// acked, and its delivery in flight (attempt, visible at); `None` without a state.
    pub(super) fn progress_at(&self, key: &QueueKey, offset: u64) -> Option<super::lookup::Progress> {
        let cell = {
            let table = lock(&self.table);
            match table.live.get(key) {
                Some(cell) => cell.clone(),
                None => return table.idle.get(key).map(|&floor| (floor, offset < floor, None)),
            }
        };
        let st = lock(&cell.state);
        let inflight = st.inflight.get(&offset).map(|i| (i.attempt, i.visible_at_ms));
        Some((st.floor, st.is_acked(offset), inflight))
    }

    /// The keys of the states (live or pruned) of `group` on every topic.
    pub(super) fn keys_of(&self, group: &str) -> Vec<QueueKey> {
        let table = lock(&self.table);
        table.live.keys().chain(table.idle.keys()).filter(|k| &*k.0 == group).cloned().collect()
    }

    /// Forgets every state (live or pruned) of `group`: a retired broadcast client's own
    /// consumer. Its progress in the metadata store is the caller's to delete.
    pub(super) fn forget_group(&self, group: &str) {
        let mut table = lock(&self.table);
        table.live.retain(|k, _| &*k.0 != group);
        table.idle.retain(|k, _| &*k.0 != group);
        table.groups.remove(group);
    }

    /// Whether `key` has a state (live, or pruned to its floor).
    pub(super) fn has(&self, key: &QueueKey) -> bool {
        let table = lock(&self.table);
        table.live.contains_key(key) || table.idle.contains_key(key)
    }
}

/// What is stored of one group's state on one queue.
fn progress_record(key: &QueueKey, st: &QueueState) -> ProgressRecord {
    let (group, topic, queue_id) = key;
    ProgressRecord {
        group: group.to_string(),
        topic: topic.to_string(),
        queue_id: *queue_id,
        ack_floor: st.floor,
        acked_above: st.encode(),
    }
}

impl Broker {
    /// The state of `group` on a queue: the live one, else the pruned one brought back from its
    /// floor, else a new one at the configured start position.
    pub(super) fn queue_state(&self, group: &str, topic: &str, queue_id: u32) -> Arc<StateCell> {
        self.queue_state_at(group, topic, queue_id, self.now_ms())
    }

    /// [`Broker::queue_state`] with the time already read (a receive's pass over the queues
    /// and an ack's entries read the clock once, not once per queue or entry).
    pub(super) fn queue_state_at(&self, group: &str, topic: &str, queue_id: u32, now: i64) -> Arc<StateCell> {
        let states = &self.inner.states;
        let mut table = lock(&states.table);
        if let Some(cell) = table.live.get(&QueueKeyRef(group, topic, queue_id)) {
            cell.last_used_ms.store(now, Ordering::Relaxed);
            return cell.clone();
        }
        let key: QueueKey = (Arc::from(group), Arc::from(topic), queue_id);
        let state = match table.idle.remove(&key) {
            // Nothing above the floor: the stored progress is exactly this.
            Some(floor) => QueueState::restore(floor, &[]),
            None => {
                let range = self.inner.log.queue_range(topic, queue_id);
                let system = group.starts_with(validate::SYSTEM_PREFIX);
                let floor = match self.inner.settings.consumer.consume_from_where {
                    // The gateway's own groups (transaction resolutions) see everything.
                    _ if system => range.start,
                    ConsumeFromWhere::FirstOffset => range.start,
                    // Like Apache with initPopOffsetByCheckMsgInMem: a young queue is read from 0.
                    ConsumeFromWhere::LastOffset if range.start == 0 => 0,
                    ConsumeFromWhere::LastOffset => range.end,
                };
                tracing::debug!(group, topic, queue_id, floor, "consumer group starts on queue");
                QueueState::new(floor)
            }
        };
        let cell = Arc::new(StateCell {
            key: key.clone(),
            state: Mutex::new(state),
            queued: AtomicBool::new(false),
            last_used_ms: AtomicI64::new(now),
            dirty: states.dirty.clone(),
        });
        table.groups.insert(key.0.clone());
        table.live.insert(key, cell.clone());
        cell
    }

    /// A state restored at start (stored progress): replaces any state of that key.
    pub(super) fn restore_queue_state(&self, key: QueueKey, state: QueueState) {
        let states = &self.inner.states;
        self.index_renewals(&key, &state);
        let cell = Arc::new(StateCell {
            key: key.clone(),
            state: Mutex::new(state),
            queued: AtomicBool::new(false),
            last_used_ms: AtomicI64::new(self.now_ms()),
            dirty: states.dirty.clone(),
        });
        let mut table = lock(&states.table);
        table.idle.remove(&key);
        table.groups.insert(key.0.clone());
        table.live.insert(key, cell);
    }

    /// Every live state (start-up work only: this is a scan).
    pub(super) fn live_states(&self) -> Vec<Arc<StateCell>> {
        lock(&self.inner.states.table).live.values().cloned().collect()
    }

    /// Records the states where deliveries auto-renewed for `client` are held.
    pub(super) fn note_renewals(&self, client: &str, group: &str, topic: &str, queue_ids: impl Iterator<Item = u32>) {
        let mut renewals = lock(&self.inner.states.renewals);
        let keys = match renewals.get_mut(client) {
            Some(keys) => keys,
            None => renewals.entry(Arc::from(client)).or_default(),
        };
        let (group, topic): (Arc<str>, Arc<str>) = (Arc::from(group), Arc::from(topic));
        for queue_id in queue_ids {
            keys.insert((group.clone(), topic.clone(), queue_id));
        }
    }

    /// Indexes the auto-renewed deliveries of a state restored at start.
    pub(super) fn index_renewals(&self, key: &QueueKey, state: &QueueState) {
        let clients: HashSet<&str> = state.inflight.values().filter_map(|e| e.auto_renew_client.as_deref()).collect();
        for client in clients {
            self.note_renewals(client, &key.0, &key.1, std::iter::once(key.2));
        }
    }

    /// A client left (goodbye or expiry): its auto-renewed messages become visible soon.
    /// Touches only the states where it had such deliveries.
    pub(super) fn release_client_deliveries(&self, client_id: &str) {
        let Some(keys) = lock(&self.inner.states.renewals).remove(client_id) else { return };
        let at = self.now_ms() + RELEASE_DELAY_MS;
        for key in keys {
            // A pruned state had nothing in flight.
            let cell = lock(&self.inner.states.table).live.get(&key).cloned();
            if let Some(cell) = cell {
                lock(&*cell).release_client(client_id, at);
            }
        }
    }

    pub(super) fn shrink_renewals(&self) {
        super::shrink_if_sparse(&mut lock(&self.inner.states.renewals));
    }

    /// Whether `group` has a state on some queue (a position worth keeping).
    pub(super) fn group_has_state(&self, group: &str) -> bool {
        lock(&self.inner.states.table).groups.contains(group)
    }

    /// Moves idle states out of memory (see the module documentation); returns how many.
    pub(super) fn prune_idle_states(&self) -> usize {
        let idle_ms = self.inner.settings.consumer.queue_state_idle_time.as_millis() as i64;
        let now = self.now_ms();
        let mut table = lock(&self.inner.states.table);
        let candidates: Vec<QueueKey> = table
            .live
            .iter()
            // Only the table holds it: nobody can be using it or about to (new users go
            // through the table, which is locked).
            .filter(|(_, c)| Arc::strong_count(c) == 1)
            .filter(|(_, c)| now - c.last_used_ms.load(Ordering::Relaxed) >= idle_ms)
            .filter(|(_, c)| !c.queued.load(Ordering::Acquire))
            .map(|(k, _)| k.clone())
            .collect();
        let mut pruned = 0;
        for key in candidates {
            let Some(cell) = table.live.get(&key) else { continue };
            let floor = {
                let Ok(st) = cell.state.try_lock() else { continue };
                if st.dirty || !st.is_settled() {
                    continue;
                }
                st.floor
            };
            table.live.remove(&key);
            table.idle.insert(key, floor);
            pruned += 1;
        }
        pruned
    }

    /// Consumer states whose progress waits for the next flush.
    pub(super) fn progress_waiting(&self) -> usize {
        lock(&self.inner.states.dirty).len()
    }

    /// Writes the progress of the states changed since the last flush, in one batch.
    pub async fn flush_progress(&self) -> BrokerResult<()> {
        let _one_at_a_time = self.inner.flush_lock.lock().await;
        // Read before the snapshot: every ack journaled below this offset was applied in memory
        // before its journal write finished, so the snapshot includes it.
        let journal_end = self.inner.log.queue_range(JOURNAL_TOPIC, 0).end;
        let keys = std::mem::take(&mut *lock(&self.inner.states.dirty));
        let cells: Vec<Arc<StateCell>> = {
            let table = lock(&self.inner.states.table);
            keys.iter().filter_map(|k| table.live.get(k).cloned()).collect()
        };
        let mut batch = Vec::with_capacity(cells.len());
        for cell in &cells {
            // Before reading: a change after this read queues the state again.
            cell.queued.store(false, Ordering::Release);
            // A queue served by another node: its owner writes its progress (this state is
            // stale, e.g. replayed from the journal after the queue moved; it is dropped or
            // reloaded when the queue comes back).
            if !self.owns(&cell.key.1, cell.key.2) {
                continue;
            }
            let mut st = lock(&**cell);
            if st.dirty {
                st.dirty = false;
                batch.push(progress_record(&cell.key, &st));
            }
        }
        let saved = self.inner.journal_saved.load(Ordering::Relaxed);
        if batch.is_empty() && journal_end <= saved {
            return Ok(());
        }
        if let Err(e) = self.inner.meta.save_progress(&batch, journal_end).await {
            // Dirty again (and queued) so the next flush retries.
            for cell in &cells {
                let (group, topic, queue_id) = &cell.key;
                if batch.iter().any(|p| p.group == **group && p.topic == **topic && p.queue_id == *queue_id) {
                    lock(&**cell).dirty = true;
                }
            }
            return Err(e.into());
        }
        self.inner.journal_saved.fetch_max(journal_end, Ordering::Relaxed);
        Ok(())
    }

    /// Cluster: queues matching `adopted` became this node's. Every state of them held here
    /// is stale (the previous owner moved on): drop them and load the stored progress. Deliveries
    /// the previous owner had in flight become deliverable again (at least once).
    pub async fn adopt_queues(&self, adopted: &(dyn Fn(&str, u32) -> bool + Sync)) -> BrokerResult<usize> {
        let (records, _) = self.inner.meta.load_progress().await?;
        self.drop_states(adopted);
        let mut n = 0;
        for p in records {
            if !adopted(&p.topic, p.queue_id) {
                continue;
            }
            let mut state = QueueState::restore(p.ack_floor, &p.acked_above);
            // Orderly groups find the messages waiting for their message group again.
            state.rescan();
            self.restore_queue_state((Arc::from(p.group.as_str()), Arc::from(p.topic.as_str()), p.queue_id), state);
            n += 1;
        }
        Ok(n)
    }

    /// Cluster: queues matching `released` are handed to another node: write their progress
    /// now (changed or not: the new owner loads exactly this), then forget them.
    pub async fn release_queues(&self, released: &(dyn Fn(&str, u32) -> bool + Sync)) -> BrokerResult<usize> {
        let cells: Vec<Arc<StateCell>> = {
            let table = lock(&self.inner.states.table);
            table.live.iter().filter(|(k, _)| released(&k.1, k.2)).map(|(_, c)| c.clone()).collect()
        };
        let mut batch = Vec::with_capacity(cells.len());
        for cell in &cells {
            let mut st = lock(&**cell);
            st.dirty = false;
            batch.push(progress_record(&cell.key, &st));
        }
        let saved = self.inner.journal_saved.load(Ordering::Relaxed);
        if !batch.is_empty() {
            self.inner.meta.save_progress(&batch, saved).await?;
        }
        self.drop_states(released);
        Ok(batch.len())
    }

    /// Cluster: queues matching `lost` were taken by another node without a hand-over (this
    /// node's lease ran out): forget their states without writing them (the new owner's
    /// progress is the truth now).
    pub fn forget_queues(&self, lost: &(dyn Fn(&str, u32) -> bool + Sync)) {
        self.drop_states(lost);
    }

    /// Forgets the live and idle states of the matching queues.
    fn drop_states(&self, which: &(dyn Fn(&str, u32) -> bool + Sync)) {
        let mut table = lock(&self.inner.states.table);
        table.live.retain(|k, _| !which(&k.1, k.2));
        table.idle.retain(|k, _| !which(&k.1, k.2));
    }

    /// Per (topic, group) lag, ready and inflight counts over the states held here (live and
    /// pruned), for `/metrics` at scrape time.
    pub(super) fn consumer_gauges(&self) -> Vec<crate::observability::metrics::ConsumerGauge> {
        let (cells, idle) = {
            let table = lock(&self.inner.states.table);
            let cells: Vec<_> = table.live.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
            let idle: Vec<_> = table.idle.iter().map(|(k, f)| (k.clone(), *f)).collect();
            (cells, idle)
        };
        let mut sums: HashMap<(Arc<str>, Arc<str>), crate::observability::metrics::ConsumerGauge> = HashMap::new();
        let mut add = |key: &QueueKey, floor: u64, next: u64, inflight: u64| {
            let range = self.inner.log.queue_range(&key.1, key.2);
            let g = sums.entry((key.1.clone(), key.0.clone())).or_insert_with(|| {
                crate::observability::metrics::ConsumerGauge {
                    topic: key.1.to_string(),
                    group: key.0.to_string(),
                    ..Default::default()
                }
            });
            g.lag += range.end.saturating_sub(floor.max(range.start));
            g.ready += range.end.saturating_sub(next.max(range.start));
            g.inflight += inflight;
        };
        for (key, cell) in &cells {
            let (floor, next, inflight) = {
                let st = lock(&cell.state);
                (st.floor, st.next.max(st.floor), st.inflight.len() as u64)
            };
            add(key, floor, next, inflight);
        }
        for (key, floor) in &idle {
            add(key, *floor, *floor, 0);
        }
        let mut out: Vec<_> = sums.into_values().collect();
        out.sort_by(|a, b| (&a.topic, &a.group).cmp(&(&b.topic, &b.group)));
        out
    }

    /// Counts for the admin API (a scan of the live states: on request only).
    pub fn state_stats(&self) -> StateStats {
        let (cells, idle) = {
            let table = lock(&self.inner.states.table);
            (table.live.values().cloned().collect::<Vec<_>>(), table.idle.len())
        };
        let mut stats = StateStats { live: cells.len(), idle, ..Default::default() };
        for cell in cells {
            let st = lock(&cell.state);
            stats.inflight += st.inflight.len();
            stats.acked_above_floor += st.acked.len();
            stats.max_acked_above_floor = stats.max_acked_above_floor.max(st.acked.len());
        }
        stats.dirty = lock(&self.inner.states.dirty).len();
        stats.renewing_clients = lock(&self.inner.states.renewals).len();
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::consumer::Inflight;

    /// A borrowed key finds exactly the state of the owned key it names: the two hash alike.
    #[test]
    fn a_borrowed_key_finds_its_state() {
        let mut live: FastBorrowMap<QueueKey, u32> = Default::default();
        for (i, (g, t)) in [("g", "t"), ("g", "t2"), ("g2", "t"), ("gt", ""), ("", "gt")].into_iter().enumerate() {
            for q in 0..4 {
                live.insert((Arc::from(g), Arc::from(t), q), i as u32 * 10 + q);
            }
        }
        assert_eq!(live.get(&QueueKeyRef("g", "t", 3)), Some(&3));
        assert_eq!(live.get(&QueueKeyRef("g2", "t", 0)), Some(&20));
        assert_eq!(live.get(&QueueKeyRef("gt", "", 1)), Some(&31));
        assert_eq!(live.get(&QueueKeyRef("", "gt", 2)), Some(&42));
        assert_eq!(live.get(&QueueKeyRef("g", "t", 4)), None);
        assert_eq!(live.get(&QueueKeyRef("g", "", 0)), None);
        assert_eq!(live.get(&QueueKeyRef("t", "g", 0)), None);
    }

    fn cell(key: QueueKey, dirty: &Arc<Mutex<Vec<QueueKey>>>) -> StateCell {
        StateCell {
            key,
            state: Mutex::new(QueueState::restore(0, &[])),
            queued: AtomicBool::new(false),
            last_used_ms: AtomicI64::new(0),
            dirty: dirty.clone(),
        }
    }

    #[test]
    fn a_changed_state_is_queued_once_until_flushed() {
        let dirty = Arc::new(Mutex::new(Vec::new()));
        let key: QueueKey = (Arc::from("g"), Arc::from("t"), 3);
        let c = cell(key.clone(), &dirty);
        // Reading leaves the queue alone.
        assert!(!lock(&c).is_acked(5));
        assert!(lock(&dirty).is_empty());
        lock(&c).complete(0);
        lock(&c).complete(1);
        assert_eq!(*lock(&dirty), vec![key.clone()], "queued once");
        // A flush takes the key, clears `queued`, then reads and cleans the state.
        lock(&dirty).clear();
        c.queued.store(false, Ordering::Release);
        lock(&c).dirty = false;
        assert!(lock(&dirty).is_empty());
        let entry = Inflight {
            visible_at_ms: 1,
            attempt: 1,
            serial: 1,
            auto_renew_client: None,
            first_delivery_ms: 0,
            group_key: None,
        };
        lock(&c).deliver(9, entry);
        assert_eq!(*lock(&dirty), vec![key], "changed again after the flush: queued again");
    }
}
