//! Consumer progress of one group on one queue, POP style: everything below `floor` is done;
//! offsets in `[floor, next)` are either in flight (invisible until a deadline) or acked.
//! Deliveries whose deadline passed are delivered again with `attempt + 1`; after
//! `max_attempts` they are handed back for the dead-letter queue.
//!
//! Bounded whatever consumers do: acked offsets above the floor are kept as *ranges*, so a
//! message retried for hours while millions after it are acked costs one in-flight entry and
//! two ranges, not a set entry per later ack. Memory per queue is proportional to the messages
//! in flight (and, for orderly groups, the bounded `waiting` set), never to the lag behind the
//! oldest of them; scans jump over acked ranges instead of re-reading them.
//!
//! Durable form ([`QueueState::encode`]): `floor` plus the acked ranges above it and the
//! deliveries in flight (deadline, attempt, serial, auto-renewing client), so after a restart an
//! invisible message stays invisible until its deadline, its attempt count continues and the
//! handle its consumer holds still acks. Deliveries made after the last snapshot come back from
//! the consumer journal; one whose journal record was lost is delivered again (at-least-once).
//!
//! An offset reset ([`QueueState::reset_to`], `broker/offsets.rs`) moves `floor` and forgets
//! everything above it; handles issued before it (serial below `reset_serial`) no longer act.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rangemap::RangeSet;

use super::receipt::Receipt;

/// One delivery that has not been acked yet.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub visible_at_ms: i64,
    pub attempt: u32,
    pub serial: u64,
    /// Renewed server-side while this client is alive (PushConsumer `auto_renew`).
    pub auto_renew_client: Option<Arc<str>>,
    pub first_delivery_ms: i64,
    /// Hash of the message group ([`group_key`]); `None` until known (deliveries restored
    /// after a restart). Orderly groups never have two deliveries of one key in flight.
    pub group_key: Option<u64>,
}

/// The ordering key of a message for orderly groups: its message group, or one shared key for
/// messages without a group (those keep queue order among themselves).
pub(crate) fn group_key(message_group: Option<&str>) -> u64 {
    match message_group {
        Some(g) if !g.is_empty() => u64::from(crc32c::crc32c(g.as_bytes())) | (1 << 32),
        _ => 0,
    }
}

/// Why an ack or visibility change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandleProblem {
    /// The message was delivered again since this handle was issued.
    Stale,
    /// The handle's deadline passed and the gateway holds no delivery for it.
    Expired,
    /// The message was already acknowledged.
    AlreadyAcked,
    /// The group's offset was reset after this handle was issued.
    Reset,
}

#[derive(Debug, Default)]
pub(crate) struct QueueState {
    pub floor: u64,
    pub next: u64,
    pub inflight: BTreeMap<u64, Inflight>,
    /// Acked offsets above `floor`, as ranges (adjacent acks merge).
    pub acked: RangeSet<u64>,
    /// Orderly groups: offsets below `next` passed over because an earlier message of their
    /// message group was in flight, with their group key. In memory only: after a restart
    /// `next` starts at `floor` again and the scan finds them.
    pub waiting: BTreeMap<u64, u64>,
    /// Priority topics: undelivered messages below `next` that compete by priority, with
    /// their priority and when a receive first saw them. In memory only, rebuilt by the scan
    /// after a restart.
    pub ranked: BTreeMap<u64, (i32, i64)>,
    /// Changed since the last progress flush.
    pub dirty: bool,
    /// Serial watermark of the last offset reset: deliveries with a lower serial were made
    /// before it and their handles no longer ack or change anything (0: never reset).
    pub reset_serial: u64,
}

/// What [`QueueState::take_due`] found.
pub(crate) enum Due {
    /// Deliver again with this attempt number.
    Redeliver { offset: u64, attempt: u32 },
    /// Attempts exhausted: move to the dead-letter queue, then ack.
    DeadLetter { offset: u64 },
}

impl Due {
    pub fn offset(&self) -> u64 {
        match *self {
            Due::Redeliver { offset, .. } | Due::DeadLetter { offset } => offset,
        }
    }
}

impl QueueState {
    pub fn new(floor: u64) -> Self {
        Self { floor, next: floor, dirty: true, ..Default::default() }
    }

    /// Restores from stored progress ([`QueueState::encode`]; also the older acked-only form).
    pub fn restore(floor: u64, stored: &[u8]) -> Self {
        let mut s = Self::new(floor);
        match stored.split_first() {
            // The forms with deliveries start with 0x00: then RANGES_MARK (acked ranges, the
            // current form) or a count (acked offsets one by one); the oldest acked-only form
            // never starts with 0x00 (its first varint is a delta of at least 1).
            Some((0, rest)) => {
                let (form, rest) = match rest.strip_prefix(RANGES_MARK) {
                    Some(rest) => (1, rest),
                    None => (0, rest),
                };
                let mut r = Reader(rest);
                let n = r.varint().unwrap_or(0);
                let mut prev = floor;
                for _ in 0..n {
                    let Some(delta) = r.varint() else { break };
                    prev = prev.saturating_add(delta);
                    let len = if form == 0 { Some(1) } else { r.varint() };
                    let end = prev.saturating_add(len.unwrap_or(0));
                    if end <= prev {
                        break;
                    }
                    s.acked.insert(prev..end);
                    if form == 1 {
                        prev = end;
                    }
                }
                let n = r.varint().unwrap_or(0);
                let mut whole = true;
                for _ in 0..n {
                    let Some((offset, entry)) = r.inflight(floor) else {
                        whole = false;
                        break;
                    };
                    s.restore_delivery(offset, entry);
                }
                // Written only after a reset (absent in older snapshots).
                if whole && let Some(watermark) = r.varint() {
                    s.reset_serial = watermark;
                }
            }
            _ => {
                for o in decode_offsets(floor, stored).into_iter().filter(|&o| o < u64::MAX) {
                    s.acked.insert(o..o + 1);
                }
            }
        }
        s.dirty = false;
        s.advance_floor();
        s
    }

    /// Re-instates a delivery known from the journal or a snapshot, unless the message was
    /// acked since or a later delivery (higher serial) is already known.
    pub fn restore_delivery(&mut self, offset: u64, entry: Inflight) {
        if self.is_acked(offset)
            || entry.serial < self.reset_serial
            || self.inflight.get(&offset).is_some_and(|e| e.serial >= entry.serial)
        {
            return;
        }
        self.deliver(offset, entry);
    }

    fn is_renewed(e: &Inflight, now_ms: i64, alive: &dyn Fn(&str) -> bool, renew_max_ms: i64) -> bool {
        e.auto_renew_client.as_deref().is_some_and(alive) && now_ms - e.first_delivery_ms < renew_max_ms
    }

    /// Group keys with a delivery in flight (visible again or not: until it is acked or
    /// dead-lettered its group waits). Deliveries of unknown key must be resolved first.
    pub fn busy_groups(&self) -> std::collections::HashSet<u64> {
        self.inflight.values().filter_map(|e| e.group_key).collect()
    }

    /// Starts the next scan at `floor` (after a restart; acked and in-flight offsets are
    /// skipped, the others are delivered or wait for their group).
    pub fn rescan(&mut self) {
        self.next = self.floor;
        self.waiting.clear();
        self.ranked.clear();
    }

    /// The first offset at or after `offset` that is not acked (scans jump over acked ranges
    /// instead of reading them).
    pub fn skip_acked(&self, offset: u64) -> u64 {
        if offset < self.floor {
            return self.floor;
        }
        self.acked.get(&offset).map_or(offset, |r| r.end)
    }

    /// Deliveries whose invisibility ended, lowest offsets first, at most `max`.
    pub fn take_due(
        &self,
        now_ms: i64,
        max: usize,
        max_attempts: u32,
        alive: &dyn Fn(&str) -> bool,
        renew_max_ms: i64,
    ) -> Vec<Due> {
        self.inflight
            .iter()
            .filter(|(_, e)| e.visible_at_ms <= now_ms && !Self::is_renewed(e, now_ms, alive, renew_max_ms))
            .take(max)
            .map(|(&offset, e)| {
                if e.attempt >= max_attempts {
                    Due::DeadLetter { offset }
                } else {
                    Due::Redeliver { offset, attempt: e.attempt + 1 }
                }
            })
            .collect()
    }

    /// Records a delivery of `offset`.
    ///
    /// Neither this nor [`QueueState::complete`] moves `next`: only the scan does, once it has
    /// looked at every offset below. An ack or nack of a later offset arriving before the scan
    /// (after a restart `next` is back at the floor) must not make it jump over messages it
    /// never saw: those would be delivered to no one until the next restart.
    pub fn deliver(&mut self, offset: u64, entry: Inflight) {
        self.inflight.insert(offset, entry);
        self.dirty = true;
    }

    /// Marks `offset` done without a delivery (acked, filtered out, gone, or dead-lettered).
    pub fn complete(&mut self, offset: u64) {
        if offset < self.floor {
            return;
        }
        self.inflight.remove(&offset);
        self.waiting.remove(&offset);
        self.ranked.remove(&offset);
        self.acked.insert(offset..offset + 1);
        self.dirty = true;
        self.advance_floor();
    }

    /// Moves the group to `offset` (an offset reset): everything below it is done, nothing at
    /// or above it is, nothing is in flight; deliveries with a serial below `serial_watermark`
    /// were made before the reset and their handles no longer act.
    pub fn reset_to(&mut self, offset: u64, serial_watermark: u64) {
        self.floor = offset;
        self.next = offset;
        self.inflight.clear();
        self.acked.clear();
        self.waiting.clear();
        self.ranked.clear();
        self.reset_serial = self.reset_serial.max(serial_watermark);
        self.dirty = true;
    }

    /// Skips offsets that retention deleted.
    pub fn trim_to(&mut self, start: u64) {
        if self.floor < start {
            self.floor = start;
            self.next = self.next.max(start);
            self.inflight = self.inflight.split_off(&start);
            self.acked.remove(0..start); // start > floor >= 0: never empty
            self.waiting = self.waiting.split_off(&start);
            self.ranked = self.ranked.split_off(&start);
            self.dirty = true;
            self.advance_floor();
        }
    }

    fn advance_floor(&mut self) {
        if let Some(r) = self.acked.get(&self.floor).cloned() {
            self.floor = r.end;
            self.acked.remove(r);
        }
        self.next = self.next.max(self.floor);
    }

    /// Nothing in flight, acked above the floor, waiting or ranked: the floor is all there is
    /// (such a state may leave memory and come back from its floor).
    pub fn is_settled(&self) -> bool {
        // A reset's watermark must stay: it refuses handles issued before the reset.
        self.inflight.is_empty()
            && self.acked.is_empty()
            && self.waiting.is_empty()
            && self.ranked.is_empty()
            && self.reset_serial == 0
    }

    pub fn is_acked(&self, offset: u64) -> bool {
        offset < self.floor || self.acked.contains(&offset)
    }

    /// Whether `r` names the current delivery of an unacked message.
    pub fn verify(&self, r: &Receipt, now_ms: i64) -> Result<(), HandleProblem> {
        if self.is_acked(r.offset) {
            return Err(HandleProblem::AlreadyAcked);
        }
        if r.serial < self.reset_serial {
            return Err(HandleProblem::Reset);
        }
        match self.inflight.get(&r.offset) {
            Some(e) if e.serial == r.serial => Ok(()),
            Some(_) => Err(HandleProblem::Stale),
            // No delivery recorded (the gateway restarted since): trust the signed deadline.
            None if r.deadline_ms > now_ms => Ok(()),
            None => Err(HandleProblem::Expired),
        }
    }

    /// Acknowledges the delivery `r` names. Acking twice is harmless and succeeds, like the
    /// Apache broker.
    pub fn ack(&mut self, r: &Receipt, now_ms: i64) -> Result<(), HandleProblem> {
        match self.verify(r, now_ms) {
            Ok(()) => {
                self.complete(r.offset);
                Ok(())
            }
            Err(HandleProblem::AlreadyAcked) => Ok(()),
            Err(p) => Err(p),
        }
    }

    /// Moves the delivery `r` names to a new deadline under a new serial.
    pub fn change_invisible(
        &mut self,
        r: &Receipt,
        now_ms: i64,
        visible_at_ms: i64,
        serial: u64,
    ) -> Result<Inflight, HandleProblem> {
        self.verify(r, now_ms)?;
        let current = self.inflight.get(&r.offset);
        let first_delivery_ms = current.map_or(now_ms, |e| e.first_delivery_ms);
        let group_key = current.and_then(|e| e.group_key);
        let entry = Inflight {
            visible_at_ms,
            attempt: r.attempt,
            serial,
            auto_renew_client: None,
            first_delivery_ms,
            group_key,
        };
        self.deliver(r.offset, entry.clone());
        Ok(entry)
    }

    /// After a restart: auto-renewed deliveries are no longer renewed; each stays invisible
    /// until `visible_at_ms` at least (one invisible period from the restart), then comes back.
    /// Whether the client got them is unknown — a stop may cut a receive's response after the
    /// delivery was journaled (the Go SDK even drops every call of a connection on which one
    /// call failed) — and a delivery the client never saw must not be renewed on its behalf for
    /// hours. Apache's proxy likewise loses its renewals when it restarts.
    pub fn end_renewals(&mut self, visible_at_ms: i64) {
        for e in self.inflight.values_mut() {
            if e.auto_renew_client.take().is_some() {
                e.visible_at_ms = e.visible_at_ms.max(visible_at_ms);
                self.dirty = true;
            }
        }
    }

    /// Makes the auto-renewed deliveries of a departed client visible at `visible_at_ms`.
    pub fn release_client(&mut self, client: &str, visible_at_ms: i64) {
        for e in self.inflight.values_mut() {
            if e.auto_renew_client.as_deref() == Some(client) {
                e.auto_renew_client = None;
                e.visible_at_ms = e.visible_at_ms.min(visible_at_ms);
                self.dirty = true;
            }
        }
    }

    /// The consumer retried a receive (same `attempt_id`) whose response it never got: the
    /// delivery with `serial`, if still current, is handed out again under the same handle and
    /// stays invisible until at least `visible_at_ms`. False if it was acked or delivered again.
    pub fn reclaim(
        &mut self,
        offset: u64,
        serial: u64,
        visible_at_ms: i64,
        auto_renew_client: Option<Arc<str>>,
    ) -> bool {
        match self.inflight.get_mut(&offset) {
            Some(e) if e.serial == serial => {
                e.auto_renew_client = auto_renew_client;
                e.visible_at_ms = e.visible_at_ms.max(visible_at_ms);
                true
            }
            _ => false,
        }
    }

    /// The durable form: `0x00`, [`RANGES_MARK`], the acked ranges above `floor` (count, then
    /// per range the gap since the previous range's end and the length), the deliveries in
    /// flight (count, then offset − floor, serial, attempt, deadline, first delivery,
    /// auto-renewing client) and, once the group was reset on this queue, the reset's serial
    /// watermark; all varints. Its size follows the in-flight messages, not the lag behind the
    /// oldest one.
    pub fn encode(&self) -> Vec<u8> {
        let ranges: Vec<_> = self.acked.overlapping(self.floor..u64::MAX).collect();
        let mut out = Vec::with_capacity(3 + 10 + ranges.len() * 4 + self.inflight.len() * 24);
        out.push(0);
        out.extend_from_slice(RANGES_MARK);
        put_varint(&mut out, ranges.len() as u64);
        let mut prev = self.floor;
        for r in ranges {
            let start = r.start.max(self.floor);
            put_varint(&mut out, start - prev);
            put_varint(&mut out, r.end - start);
            prev = r.end;
        }
        let inflight = self.inflight.range(self.floor..);
        put_varint(&mut out, inflight.clone().count() as u64);
        for (&offset, e) in inflight {
            put_varint(&mut out, offset - self.floor);
            put_varint(&mut out, e.serial);
            put_varint(&mut out, u64::from(e.attempt));
            put_varint(&mut out, e.visible_at_ms.max(0) as u64);
            put_varint(&mut out, e.first_delivery_ms.max(0) as u64);
            let client = e.auto_renew_client.as_deref().unwrap_or("");
            put_varint(&mut out, client.len() as u64);
            out.extend_from_slice(client.as_bytes());
        }
        if self.reset_serial > 0 {
            put_varint(&mut out, self.reset_serial);
        }
        out
    }
}

/// Marks the acked-ranges form after its leading 0x00: a non-canonical varint 0, which the
/// form with acked offsets one by one (0x00, then a canonical count) never starts with.
const RANGES_MARK: &[u8] = &[0x80, 0x00];

/// Reads varints and in-flight entries of [`QueueState::encode`]; `None` once malformed.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn inflight(&mut self, floor: u64) -> Option<(u64, Inflight)> {
        let offset = floor.checked_add(self.varint()?)?;
        let serial = self.varint()?;
        let attempt = u32::try_from(self.varint()?).ok()?;
        let visible_at_ms = i64::try_from(self.varint()?).ok()?;
        let first_delivery_ms = i64::try_from(self.varint()?).ok()?;
        let len = usize::try_from(self.varint()?).ok()?;
        let client = self.0.get(..len)?;
        self.0 = &self.0[len..];
        let client = std::str::from_utf8(client).ok()?;
        let auto_renew_client = (!client.is_empty()).then(|| Arc::from(client));
        Some((
            offset,
            Inflight { visible_at_ms, attempt, serial, auto_renew_client, first_delivery_ms, group_key: None },
        ))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Offsets above `floor` as ascending varint deltas (the oldest stored form).
#[cfg(test)]
fn encode_offsets(floor: u64, offsets: &BTreeSet<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(offsets.len() * 2);
    let mut prev = floor;
    for &o in offsets.range(floor..) {
        put_varint(&mut out, o - prev);
        prev = o;
    }
    out
}

/// Inverse of [`encode_offsets`]; stops at the first malformed varint.
fn decode_offsets(floor: u64, bytes: &[u8]) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    let mut prev = floor;
    let mut value = 0u64;
    let mut shift = 0u32;
    for &b in bytes {
        if shift >= 64 {
            break;
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            prev = prev.saturating_add(value);
            set.insert(prev);
            value = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn never_alive(_: &str) -> bool {
        false
    }

    fn entry(visible_at_ms: i64, attempt: u32, serial: u64) -> Inflight {
        Inflight { visible_at_ms, attempt, serial, auto_renew_client: None, first_delivery_ms: 0, group_key: None }
    }

    fn receipt(offset: u64, serial: u64, deadline_ms: i64) -> Receipt {
        Receipt { queue_id: 0, offset, serial, attempt: 1, deadline_ms, node: 0 }
    }

    #[test]
    fn floor_advances_over_contiguous_acks() {
        let mut q = QueueState::new(0);
        for o in 0..3 {
            q.deliver(o, entry(100, 1, o + 10));
        }
        assert!(q.ack(&receipt(1, 11, 100), 0).is_ok());
        assert_eq!(q.floor, 0);
        assert!(q.ack(&receipt(0, 10, 100), 0).is_ok());
        assert_eq!(q.floor, 2);
        assert!(q.ack(&receipt(0, 10, 100), 0).is_ok(), "second ack is harmless");
    }

    #[test]
    fn stale_and_expired_handles_are_refused() {
        let mut q = QueueState::new(0);
        q.deliver(0, entry(100, 1, 1));
        assert_eq!(q.ack(&receipt(0, 99, 100), 0), Err(HandleProblem::Stale));
        // Unknown delivery (after a restart): the signed deadline decides.
        assert_eq!(q.ack(&receipt(5, 1, 10), 20), Err(HandleProblem::Expired));
        assert_eq!(q.ack(&receipt(5, 1, 30), 20), Ok(()));
    }

    #[test]
    fn due_deliveries_and_dead_letters() {
        let mut q = QueueState::new(0);
        q.deliver(0, entry(10, 1, 1));
        q.deliver(1, entry(10, 3, 2));
        q.deliver(2, entry(50, 1, 3));
        let due = q.take_due(20, 10, 3, &never_alive, i64::MAX);
        assert!(matches!(due[..], [Due::Redeliver { offset: 0, attempt: 2 }, Due::DeadLetter { offset: 1 }]));
        assert!(q.inflight.contains_key(&2));
    }

    #[test]
    fn auto_renewed_deliveries_stay_invisible_while_the_client_lives() {
        let mut q = QueueState::new(0);
        let mut e = entry(10, 1, 1);
        e.auto_renew_client = Some(Arc::from("c1"));
        q.deliver(0, e);
        let alive = |c: &str| c == "c1";
        assert!(q.take_due(20, 10, 16, &alive, i64::MAX).is_empty());
        assert_eq!(q.take_due(20, 10, 16, &alive, 5).len(), 1, "renewal is capped");
        q.release_client("c1", 15);
        assert_eq!(q.take_due(20, 10, 16, &alive, i64::MAX).len(), 1);
    }

    #[test]
    fn change_invisible_issues_a_new_serial() {
        let mut q = QueueState::new(0);
        q.deliver(0, entry(100, 1, 1));
        let e = q.change_invisible(&receipt(0, 1, 100), 0, 500, 2).unwrap();
        assert_eq!((e.serial, e.visible_at_ms), (2, 500));
        assert_eq!(q.ack(&receipt(0, 1, 100), 0), Err(HandleProblem::Stale));
        assert_eq!(q.ack(&receipt(0, 2, 500), 0), Ok(()));
        assert_eq!(q.change_invisible(&receipt(0, 2, 500), 0, 600, 3).unwrap_err(), HandleProblem::AlreadyAcked);
    }

    #[test]
    fn a_retried_receive_reclaims_only_current_deliveries() {
        let mut q = QueueState::new(0);
        q.deliver(0, entry(100, 1, 7));
        assert!(!q.reclaim(0, 99, 5_000, None), "another delivery's serial");
        assert!(q.reclaim(0, 7, 5_000, Some(Arc::from("c1"))));
        assert!(q.take_due(200, 10, 3, &never_alive, i64::MAX).is_empty(), "invisible again until 5000");
        assert_eq!(q.ack(&receipt(0, 7, 100), 300), Ok(()), "the original handle still acks");
        assert!(!q.reclaim(0, 7, 5_000, None), "acked meanwhile");
    }

    #[test]
    fn deliveries_in_flight_survive_a_snapshot() {
        let mut q = QueueState::new(10);
        q.deliver(10, entry(5_000, 3, 77));
        let mut renewed = entry(9_000, 1, 78);
        renewed.auto_renew_client = Some(Arc::from("client-1"));
        renewed.first_delivery_ms = 1_234;
        q.deliver(12, renewed);
        q.complete(11);
        let r = QueueState::restore(10, &q.encode());
        assert_eq!(r.acked, q.acked);
        let e = &r.inflight[&12];
        assert_eq!((e.visible_at_ms, e.attempt, e.serial, e.first_delivery_ms), (9_000, 1, 78, 1_234));
        assert_eq!(e.auto_renew_client.as_deref(), Some("client-1"));
        assert_eq!((r.inflight[&10].attempt, r.inflight[&10].serial), (3, 77));
        // Still invisible until the deadline; the handle issued before acks; the attempt goes on.
        assert!(r.take_due(4_999, 10, 16, &never_alive, i64::MAX).is_empty());
        assert!(matches!(
            r.take_due(5_000, 10, 16, &never_alive, i64::MAX)[..],
            [Due::Redeliver { offset: 10, attempt: 4 }]
        ));
        let mut r = r;
        assert_eq!(r.ack(&receipt(12, 78, 9_000), 0), Ok(()));
        // An older delivery never replaces a newer one; an acked message is not re-instated.
        r.restore_delivery(10, entry(1, 1, 5));
        assert_eq!(r.inflight[&10].serial, 77);
        r.restore_delivery(12, entry(1, 1, 99));
        assert!(!r.inflight.contains_key(&12));
    }

    #[test]
    fn a_reset_forgets_what_lies_above_and_refuses_older_handles() {
        let mut q = QueueState::new(0);
        for o in 0..6 {
            q.deliver(o, entry(100, 1, o + 10));
        }
        assert!(q.ack(&receipt(4, 14, 100), 0).is_ok());
        q.reset_to(2, 20);
        assert_eq!((q.floor, q.next), (2, 2));
        assert!(q.inflight.is_empty() && q.acked.is_empty());
        assert_eq!(q.ack(&receipt(0, 10, 100), 0), Ok(()), "below the new offset: already done");
        assert_eq!(q.ack(&receipt(3, 13, 100), 0), Err(HandleProblem::Reset));
        assert!(!q.is_acked(3), "a pre-reset handle changes nothing");
        assert_eq!(q.change_invisible(&receipt(5, 15, 100), 0, 500, 30).unwrap_err(), HandleProblem::Reset);
        // A delivery journaled before the reset but replayed after it is ignored.
        q.restore_delivery(3, entry(100, 1, 19));
        assert!(q.inflight.is_empty());
        // Deliveries after the reset work as usual, and the watermark survives a snapshot.
        q.deliver(2, entry(100, 1, 21));
        let r = QueueState::restore(q.floor, &q.encode());
        assert_eq!((r.floor, r.reset_serial, r.inflight[&2].serial), (2, 20, 21));
        let mut r = r;
        assert_eq!(r.ack(&receipt(3, 13, 100), 0), Err(HandleProblem::Reset));
        assert_eq!(r.ack(&receipt(2, 21, 100), 0), Ok(()));
        assert_eq!(r.floor, 3);
    }

    #[test]
    fn garbage_state_never_panics() {
        for bytes in [&[0u8][..], &[0, 5], &[0, 1, 1, 9], &[0, 0, 1, 0xff, 0xff], &[0, 0, 1, 1, 1, 1, 1, 1, 200]] {
            let _ = QueueState::restore(3, bytes);
        }
    }

    /// One message held (retried for hours, or invisible for 12 h) while a million later ones
    /// are acked: the state stays one range and the snapshot a few bytes.
    #[test]
    fn a_held_message_does_not_keep_later_acks() {
        let mut q = QueueState::new(0);
        q.deliver(0, entry(i64::MAX, 5, 1));
        for o in 1..1_000_000 {
            q.complete(o);
        }
        assert_eq!((q.floor, q.acked.len()), (0, 1));
        assert!(q.encode().len() < 32);
        assert_eq!(q.skip_acked(1), 1_000_000, "a scan jumps over the acked range");
        assert!(q.ack(&receipt(0, 1, i64::MAX), 0).is_ok());
        assert_eq!((q.floor, q.acked.len()), (1_000_000, 0));
    }

    #[test]
    fn every_stored_form_reads() {
        // The oldest form may start with 0x01 (floor + 1 acked); the ranges form starts 0x00 0x80 0x00.
        let legacy: BTreeSet<u64> = [11, 12, 15].into();
        let old = QueueState::restore(10, &encode_offsets(10, &legacy));
        assert_eq!(old.acked.iter().cloned().collect::<Vec<_>>(), vec![11..13, 15..16]);
        let mut q = QueueState::new(10);
        for o in [11, 12, 15] {
            q.complete(o);
        }
        assert_eq!(&q.encode()[..3], &[0, 0x80, 0]);
        assert_eq!(QueueState::restore(10, &q.encode()).acked, old.acked);
    }

    #[test]
    fn trim_skips_deleted_offsets() {
        let mut q = QueueState::new(0);
        q.deliver(0, entry(100, 1, 1));
        q.trim_to(5);
        assert_eq!((q.floor, q.next), (5, 5));
        assert!(q.inflight.is_empty());
    }

    proptest! {
        #[test]
        fn progress_round_trips(floor in 0u64..1_000_000, acked in proptest::collection::btree_set(0u64..5_000_000, 0..200)) {
            let mut q = QueueState::new(floor);
            let above: BTreeSet<u64> = acked.range(floor + 1..).copied().collect();
            for &o in &above {
                q.complete(o);
            }
            let restored = QueueState::restore(q.floor, &q.encode());
            prop_assert_eq!(restored.floor, q.floor);
            prop_assert_eq!(&restored.acked, &q.acked);
            // The forms written by earlier versions still read: acked offsets one by one, with
            // a 0x00 marker, or alone.
            let old = QueueState::restore(q.floor, &encode_offsets(q.floor, &above));
            prop_assert_eq!(&old.acked, &q.acked);
            let mut marked = vec![0u8];
            put_varint(&mut marked, above.len() as u64);
            marked.extend(encode_offsets(q.floor, &above));
            marked.push(0);
            let old = QueueState::restore(q.floor, &marked);
            prop_assert_eq!(&old.acked, &q.acked);
        }

        /// Whatever order acks come in, the state holds one range per gap run, and the floor
        /// ends where the first unacked offset is.
        #[test]
        fn acks_collapse_into_ranges(order in Just((0u64..300).collect::<Vec<_>>()).prop_shuffle(), held in 0u64..300) {
            let mut q = QueueState::new(0);
            for &o in order.iter().filter(|&&o| o != held) {
                q.complete(o);
            }
            prop_assert_eq!(q.floor, held);
            prop_assert!(q.acked.len() <= 1);
            prop_assert_eq!(q.skip_acked(held + 1), 300);
            prop_assert!(q.encode().len() < 16, "snapshot stays small: {} bytes", q.encode().len());
        }

        #[test]
        fn garbage_progress_never_panics(floor: u64, bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = QueueState::restore(floor, &bytes);
        }
    }
}
