//! Offset resets, the timestamp search and the pull-consumer calls, on an in-memory log with
//! SQLite metadata (the broker tests' [`Harness`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::broker::tests::{Harness, message, receive_request};
use crate::broker::{Broker, BrokerError, DeliveredMessage, TopicKind};
use crate::storage::memory::MemoryLog;
use crate::storage::{AppendMessage, AppendResult, MessageLog, StorageResult, StoredMessage};

/// Store times come from the system clock (the in-memory log stamps them): a pause makes the
/// messages before and after a point in time distinct.
fn pause() {
    std::thread::sleep(Duration::from_millis(20));
}

fn tagged(id: &str, tag: &str) -> crate::broker::OutgoingMessage {
    crate::broker::OutgoingMessage { tag: Some(tag.into()), ..message(id) }
}

/// Sends `ids` one by one; returns (id, queue, offset) per message.
async fn send_all(broker: &Broker, ids: &[&str]) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    for id in ids {
        let r = broker.send(vec![message(id)]).await.unwrap().remove(0);
        out.push((id.to_string(), r.queue_id, r.offset));
    }
    out
}

/// Receives until nothing more comes; acks everything when `ack`.
async fn drain(broker: &Broker, ack: bool) -> Vec<DeliveredMessage> {
    let mut all = Vec::new();
    loop {
        let got = broker.receive(receive_request()).await.unwrap();
        if got.is_empty() {
            return all;
        }
        for m in &got {
            if ack {
                broker.ack("c", "G", "T", &m.receipt_handle).await.unwrap();
            }
        }
        all.extend(got);
    }
}

fn ids(got: &[DeliveredMessage]) -> BTreeSet<String> {
    got.iter().map(|m| m.message_id.clone()).collect()
}

fn pull_request(offset: i64, filter: Filter, poll: Duration) -> PullRequest {
    PullRequest {
        client_id: "puller".into(),
        group: "G".into(),
        topic: "T".into(),
        queue_id: 0,
        offset,
        batch_size: 32,
        filter,
        long_polling_timeout: Some(poll),
        deadline_remaining: None,
    }
}

/// A consumer waiting in a long poll gets the messages stored from the reset's time on, at once,
/// and only those; the reset reports the old and new offset of every queue.
#[tokio::test]
async fn a_reset_to_a_time_redelivers_from_there_to_a_waiting_consumer() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    broker.create_topic("T", Some(2), TopicKind::Normal).await.unwrap();
    let before = send_all(&broker, &["a0", "a1", "a2", "a3", "a4"]).await;
    pause();
    let at = crate::clock::now_ms();
    pause();
    let after = send_all(&broker, &["b0", "b1", "b2"]).await;
    assert_eq!(drain(&broker, true).await.len(), 8);

    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move {
            let mut r = receive_request();
            r.long_polling_timeout = Some(Duration::from_secs(20));
            broker.receive(r).await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let changes = broker.reset_offsets("G", "T", ResetTarget::Timestamp(at)).await.unwrap();
    for q in 0..2u32 {
        let c = changes.iter().find(|c| c.queue_id == q).expect("every queue is reported");
        let end = before.iter().chain(&after).filter(|m| m.1 == q).count() as u64;
        let first_after = after.iter().filter(|m| m.1 == q).map(|m| m.2).min().unwrap_or(end);
        assert_eq!((c.previous, c.offset, c.min_offset, c.max_offset), (Some(end), first_after, 0, end), "queue {q}");
    }
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken by the reset").unwrap();
    let mut again = woken.unwrap();
    again.extend(drain(&broker, false).await);
    assert_eq!(ids(&again), ["b0", "b1", "b2"].map(String::from).into());
    assert_eq!(again.len(), 3, "each once");
    assert!(again.iter().all(|m| m.delivery_attempt == 1));
}

/// Handles issued before a reset no longer act on messages at or above the new offset (they
/// come again, with new handles); below it, an ack is a harmless no-op.
#[tokio::test]
async fn handles_issued_before_a_reset_do_not_corrupt_progress() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    send_all(&broker, &["m0", "m1", "m2"]).await;
    let first = drain(&broker, false).await;
    assert_eq!(first.len(), 3);
    let changes = broker.reset_offsets("G", "T", ResetTarget::Earliest).await.unwrap();
    assert_eq!((changes[0].previous, changes[0].offset), (Some(0), 0));
    let refused = broker.ack("c", "G", "T", &first[0].receipt_handle).await;
    assert!(matches!(&refused, Err(BrokerError::InvalidReceiptHandle(m)) if m.contains("reset")), "{refused:?}");
    let nack = broker.change_invisible_duration("c", "G", "T", &first[1].receipt_handle, Duration::from_secs(1)).await;
    assert!(matches!(nack, Err(BrokerError::InvalidReceiptHandle(_))), "{nack:?}");
    let second = drain(&broker, true).await;
    assert_eq!(ids(&second), ids(&first), "everything again, despite the refused ack");
    assert!(second.iter().all(|m| m.delivery_attempt == 1));

    let changes = broker.reset_offsets("G", "T", ResetTarget::Offsets(BTreeMap::from([(0, 2)]))).await.unwrap();
    assert_eq!((changes[0].previous, changes[0].offset), (Some(3), 2));
    broker.ack("c", "G", "T", &second[0].receipt_handle).await.expect("below the new offset: already done");
    let third = drain(&broker, true).await;
    assert_eq!(third.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), ["m2"]);
    broker.reset_offsets("G", "T", ResetTarget::Latest).await.unwrap();
    send_all(&broker, &["m3"]).await;
    assert_eq!(drain(&broker, true).await.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), ["m3"]);
}

/// A crash right after a reset keeps it, whether the last progress snapshot was taken before
/// or after it (or never): the journal replays acks, deliveries and the reset in order, and a
/// handle issued before the reset stays refused.
#[tokio::test]
async fn a_reset_survives_a_crash() {
    for snapshot in ["never", "before", "after"] {
        let h = Harness::new(Arc::new(MemoryLog::new())).await;
        let broker = h.start().await;
        send_all(&broker, &["m0", "m1", "m2"]).await;
        assert_eq!(drain(&broker, true).await.len(), 3);
        send_all(&broker, &["m3"]).await;
        let held = drain(&broker, false).await.remove(0);
        if snapshot == "before" {
            broker.flush_progress().await.unwrap();
        }
        broker.reset_offsets("G", "T", ResetTarget::Earliest).await.unwrap();
        if snapshot == "after" {
            broker.flush_progress().await.unwrap();
        }
        drop(broker);

        // Same clock: the serials of the new broker start where the old ones did.
        let broker = h.start().await;
        let refused = broker.ack("c", "G", "T", &held.receipt_handle).await;
        assert!(matches!(refused, Err(BrokerError::InvalidReceiptHandle(_))), "snapshot {snapshot}: {refused:?}");
        let again = drain(&broker, true).await;
        assert_eq!(ids(&again), ["m0", "m1", "m2", "m3"].map(String::from).into(), "snapshot {snapshot}");
        drop(broker);
        let broker = h.start().await;
        assert!(drain(&broker, false).await.is_empty(), "snapshot {snapshot}: the acks after the reset hold");
    }
}

#[tokio::test]
async fn bad_resets_are_refused() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    send_all(&broker, &["m0"]).await;
    drain(&broker, true).await;
    let reset = |group: &'static str, topic: &'static str, target| {
        let broker = broker.clone();
        async move { broker.reset_offsets(group, topic, target).await }
    };
    assert!(matches!(reset("Nope", "T", ResetTarget::Earliest).await, Err(BrokerError::GroupNotFound(_))));
    assert!(matches!(reset("G", "Nope", ResetTarget::Earliest).await, Err(BrokerError::TopicNotFound(_))));
    assert!(matches!(reset("G", "T", ResetTarget::Timestamp(-1)).await, Err(BrokerError::BadRequest(_))));
    let offsets = |o: &[(u32, u64)]| ResetTarget::Offsets(o.iter().copied().collect());
    assert!(matches!(reset("G", "T", offsets(&[])).await, Err(BrokerError::BadRequest(_))));
    assert!(matches!(reset("G", "T", offsets(&[(1, 0)])).await, Err(BrokerError::BadRequest(_))));
    assert!(matches!(reset("G", "T", offsets(&[(0, 2)])).await, Err(BrokerError::IllegalOffset(_))));
    let progress = broker.group_offsets("G", Some("T")).await.unwrap();
    assert_eq!(progress[0].queues[0].consumer_offset, Some(1), "nothing changed");
}

/// The timestamp search and QueryOffset's policies; GET offsets' view of a group.
#[tokio::test]
async fn offsets_by_time_and_policy() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    send_all(&broker, &["m0", "m1", "m2"]).await;
    pause();
    let at = crate::clock::now_ms();
    pause();
    send_all(&broker, &["m3", "m4"]).await;
    let query = |p| broker.query_offset("T", 0, p);
    assert_eq!(query(OffsetPolicy::Beginning).await.unwrap(), 0);
    assert_eq!(query(OffsetPolicy::End).await.unwrap(), 5);
    assert_eq!(query(OffsetPolicy::Timestamp(0)).await.unwrap(), 0);
    assert_eq!(query(OffsetPolicy::Timestamp(at)).await.unwrap(), 3);
    assert_eq!(query(OffsetPolicy::Timestamp(at + 3_600_000)).await.unwrap(), 5);
    assert!(matches!(query(OffsetPolicy::Timestamp(-5)).await, Err(BrokerError::BadRequest(_))));
    assert!(matches!(broker.query_offset("T", 1, OffsetPolicy::End).await, Err(BrokerError::BadRequest(_))));
    assert!(matches!(broker.query_offset("T", -1, OffsetPolicy::End).await, Err(BrokerError::BadRequest(_))));
    assert!(matches!(broker.query_offset("Nope", 0, OffsetPolicy::End).await, Err(BrokerError::TopicNotFound(_))));
    for n in 0..40u64 {
        // Every queue length, every point: the first offset stored at or after it.
        let log = Arc::new(MemoryLog::new());
        let b = Harness::new(log).await.start().await;
        let mut times = Vec::new();
        for i in 0..n {
            b.send(vec![message(&format!("x{i}"))]).await.unwrap();
            times.push(b.inner.log.read("T", 0, i, 1, 1).unwrap()[0].store_timestamp_ms);
        }
        for probe in times.iter().flat_map(|&t| [t - 1, t, t + 1]) {
            let want = times.iter().position(|&t| t >= probe).unwrap_or(times.len()) as u64;
            assert_eq!(b.offset_at("T", 0, probe).unwrap(), want, "n={n} probe={probe}");
        }
    }

    assert!(matches!(broker.group_offsets("G", None).await, Err(BrokerError::GroupNotFound(_))));
    broker.receive(receive_request()).await.unwrap();
    let all = broker.group_offsets("G", None).await.unwrap();
    assert_eq!(all.len(), 1);
    let q = &all[0].queues[0];
    assert_eq!((q.consumer_offset, q.in_flight, q.max_offset, q.lag()), (Some(0), 5, 5, Some(5)));
}

/// PullMessage reads from the client's offset (filter, batch, illegal offsets, long polling
/// woken by a matching send) and changes no progress; UpdateOffset/GetOffset share the group's
/// POP offset.
#[tokio::test]
async fn pull_and_committed_offsets() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    for (id, tag) in [("a", "A"), ("b", "B"), ("c", "A")] {
        broker.send(vec![tagged(id, tag)]).await.unwrap();
    }
    let pull = |offset: i64, filter: Filter| broker.pull(pull_request(offset, filter, Duration::ZERO));
    let names = |r: &PullResult| r.messages.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>();
    let all = pull(0, Filter::All).await.unwrap();
    assert_eq!(
        (all.status, names(&all), all.next_offset),
        (PullStatus::Found, vec!["a".into(), "b".into(), "c".into()], 3)
    );
    assert!(all.messages.iter().all(|m| m.receipt_handle.is_empty()));
    assert_eq!(all.messages.iter().map(|m| m.queue_offset).collect::<Vec<_>>(), [0, 1, 2]);
    let b = pull(0, Filter::tags("B").unwrap()).await.unwrap();
    assert_eq!((b.status, names(&b), b.next_offset), (PullStatus::Found, vec!["b".into()], 3), "scanned to the end");
    let none = pull(2, Filter::tags("B").unwrap()).await.unwrap();
    assert_eq!((none.status, none.next_offset), (PullStatus::NoNewMessage, 3), "filtered out up to the end");
    let end = pull(3, Filter::All).await.unwrap();
    assert_eq!((end.status, end.next_offset), (PullStatus::NoNewMessage, 3));
    let low = pull(-1, Filter::All).await.unwrap();
    assert_eq!((low.status, low.next_offset), (PullStatus::IllegalOffset, 0));
    let high = pull(9, Filter::All).await.unwrap();
    assert_eq!((high.status, high.next_offset), (PullStatus::IllegalOffset, 3));
    let two = broker.pull(PullRequest { batch_size: 2, ..pull_request(0, Filter::All, Duration::ZERO) }).await.unwrap();
    assert_eq!((names(&two), two.next_offset), (vec!["a".into(), "b".into()], 2));
    for bad in [
        PullRequest { batch_size: -1, ..pull_request(0, Filter::All, Duration::ZERO) },
        PullRequest { queue_id: 1, ..pull_request(0, Filter::All, Duration::ZERO) },
    ] {
        assert!(matches!(broker.pull(bad).await, Err(BrokerError::BadRequest(_))));
    }

    // A long poll at the end: a send the filter rejects does not end it, a matching one does.
    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move { broker.pull(pull_request(3, Filter::tags("B").unwrap(), Duration::from_secs(20))).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.send(vec![tagged("d", "A")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "a rejected message does not answer the pull");
    broker.send(vec![tagged("e", "B")]).await.unwrap();
    let got =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken by the send").unwrap().unwrap();
    assert_eq!((names(&got), got.next_offset), (vec!["e".into()], 5));

    // Offsets: none until committed; a commit is the group's POP offset too.
    let get = |group: &'static str| broker.get_offset("puller", group, "T", 0);
    assert!(matches!(get("G").await, Err(BrokerError::OffsetNotFound(_))), "pulls commit nothing");
    assert!(matches!(get("Other").await, Err(BrokerError::OffsetNotFound(_))));
    broker.update_offset("puller", "G", "T", 0, 2).await.unwrap();
    assert_eq!(get("G").await.unwrap(), 2);
    broker.update_offset("puller", "G", "T", 0, 2).await.unwrap();
    let popped = drain(&broker, true).await;
    assert_eq!(popped.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), ["c", "d", "e"]);
    assert_eq!(get("G").await.unwrap(), 5);
    for bad in [-1, 6] {
        let e = broker.update_offset("puller", "G", "T", 0, bad).await;
        assert!(matches!(e, Err(BrokerError::IllegalOffset(_))), "{bad}: {e:?}");
    }
    assert!(matches!(broker.update_offset("puller", "G", "T", 3, 0).await, Err(BrokerError::BadRequest(_))));
    assert!(matches!(broker.get_offset("puller", "G", "Nope", 0).await, Err(BrokerError::TopicNotFound(_))));
}

/// A log whose user-topic records are "in the object store": a read of an offset not fetched
/// yet fails with `RemoteNotCached` (a cold read's cache miss); `fetch_remote` brings two
/// offsets from there into the "cache".
struct ColdLog {
    inner: MemoryLog,
    cached: std::sync::Mutex<BTreeSet<(String, u32, u64)>>,
    fetches: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl MessageLog for ColdLog {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        self.inner.append(messages).await
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
        bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        if topic.starts_with("rmq_sys_") {
            return self.inner.read(topic, queue_id, offset, max, bytes);
        }
        let mut batch = self.inner.read(topic, queue_id, offset, max, bytes)?;
        let cached = self.cached.lock().unwrap();
        let warm = batch.iter().take_while(|m| cached.contains(&(topic.to_string(), queue_id, m.queue_offset))).count();
        if warm == 0 && !batch.is_empty() {
            return Err(StorageError::RemoteNotCached { topic: topic.into(), queue_id, offset: batch[0].queue_offset });
        }
        batch.truncate(warm);
        Ok(batch)
    }

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        self.inner.queue_range(topic, queue_id)
    }

    fn find_by_message_id(&self, id: &str) -> StorageResult<Vec<StoredMessage>> {
        self.inner.find_by_message_id(id)
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        self.inner.find_by_key(topic, key, max)
    }

    fn hold_retention(&self, _holder: &'static str, _position: Option<u64>) {}

    async fn fetch_remote(&self, topic: &str, queue_id: u32, offset: u64, _max_bytes: usize) -> StorageResult<()> {
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cached = self.cached.lock().unwrap();
        for o in offset..offset + 2 {
            cached.insert((topic.to_string(), queue_id, o));
        }
        Ok(())
    }

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}

/// Receives and pulls that meet data still in the object store await its fetch (outside the
/// broker's locks) and deliver it, in order, instead of failing or coming back empty.
#[tokio::test]
async fn receives_and_pulls_await_cold_data_from_the_object_store() {
    let cold = Arc::new(ColdLog {
        inner: MemoryLog::new(),
        cached: std::sync::Mutex::new(BTreeSet::new()),
        fetches: std::sync::atomic::AtomicU64::new(0),
    });
    let h = Harness::new(cold.clone()).await;
    let broker = h.start().await;
    let names: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
    let sent = send_all(&broker, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(sent.iter().all(|(_, q, _)| *q == 0));

    let pulled = broker.pull(pull_request(0, Filter::All, Duration::ZERO)).await.unwrap();
    assert_eq!(pulled.status, PullStatus::Found);
    assert_eq!(pulled.messages.iter().map(|m| m.queue_offset).collect::<Vec<_>>(), [0, 1]);
    cold.cached.lock().unwrap().clear();

    let mut got = Vec::new();
    for _ in 0..20 {
        let batch = broker.receive(receive_request()).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|m| m.message_id));
    }
    assert_eq!(got, names);
    assert!(cold.fetches.load(std::sync::atomic::Ordering::Relaxed) >= 4);
}
