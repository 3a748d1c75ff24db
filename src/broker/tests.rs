//! Broker tests on an in-memory log and SQLite metadata.

/// The `MessageLog` methods a test log wrapper passes straight to its `inner` log.
macro_rules! delegate_to_inner {
    () => {
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
    };
}

mod bounded;
mod meta_outage;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::settings::{
    CheckMaxAction, ConsumeFromWhere, ConsumerSettings, LimitSettings, TimerSettings, TopicSettings,
    TransactionSettings,
};
use super::*;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::storage::memory::MemoryLog;
use crate::storage::{AppendMessage, AppendResult, QueueRange, StorageError, StorageResult, StoredMessage};

/// A log whose record at one offset of every queue fails its checks on read.
struct DamagedAt {
    inner: MemoryLog,
    offset: u64,
}

#[async_trait]
impl MessageLog for DamagedAt {
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
        if offset == self.offset {
            return Err(StorageError::Corrupted { position: 42, reason: "crc mismatch".into() });
        }
        let mut batch = self.inner.read(topic, queue_id, offset, max, bytes)?;
        // Like the commit log: a damaged record ends the batch early.
        batch.retain(|m| m.queue_offset < self.offset || offset > self.offset);
        Ok(batch)
    }

    delegate_to_inner!();

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}

/// The configuration defaults (`config/gateway.yaml`), except where noted.
fn test_settings() -> BrokerSettings {
    let secs = Duration::from_secs;
    BrokerSettings {
        topics: TopicSettings { auto_create_topic_enable: true, default_topic_queue_nums: 1, create: Vec::new() },
        limits: LimitSettings {
            max_message_size: 4 * 1024 * 1024,
            max_user_property_size: 16 * 1024,
            user_property_max_num: 128,
            max_message_group_size: 64,
            max_delay_time: secs(40 * 24 * 3600),
            max_batch_messages: 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_inflight_bytes_per_connection: 64 * 1024 * 1024,
            inflight_wait_time: Duration::from_millis(200),
        },
        consumer: ConsumerSettings {
            consume_from_where: ConsumeFromWhere::LastOffset,
            retry_max_times: 16,
            default_invisible_time: secs(60),
            min_invisible_time: Duration::from_millis(100),
            max_invisible_time: secs(12 * 3600),
            // Receives return at once when nothing is there.
            min_long_polling_timeout: Duration::ZERO,
            max_long_polling_timeout: secs(20),
            long_polling_reserve: Duration::from_millis(800),
            receive_batch_size: 32,
            retry_backoff: Backoff::Customized(
                [1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200]
                    .map(secs)
                    .to_vec(),
            ),
            progress_flush_interval: Duration::from_millis(200),
            broadcast_retire_after: Duration::from_secs(3600),
            auto_create_subscription_group: true,
            max_auto_created_groups: 10_000,
            queue_state_idle_time: secs(120),
            groups: Vec::new(),
        },
        timer: TimerSettings { timer_precision: Duration::from_millis(100) },
        transaction: TransactionSettings {
            transaction_timeout: secs(6),
            transaction_check_interval: secs(30),
            transaction_check_max: 15,
            transaction_check_max_action: CheckMaxAction::Discard,
        },
        clients: super::settings::ClientSettings { channel_expired_timeout: secs(120) },
    }
}

/// Stores that outlive broker restarts, and the clock the tests move.
pub(super) struct Harness {
    log: Arc<dyn MessageLog>,
    meta: Arc<dyn MetadataStore>,
    timer_dir: tempfile::TempDir,
    pub(super) clock: Arc<crate::clock::ManualClock>,
}

impl Harness {
    pub(super) async fn new(log: Arc<dyn MessageLog>) -> Harness {
        Harness {
            log,
            meta: Arc::new(SqliteMetadataStore::in_memory().await.unwrap()),
            timer_dir: tempfile::tempdir().unwrap(),
            clock: crate::clock::ManualClock::new(1_700_000_000_000),
        }
    }

    /// A broker on these stores (again after a "crash": the previous one is just dropped).
    pub(super) async fn start(&self) -> Broker {
        self.start_with(test_settings()).await
    }

    /// [`Harness::start`] with other settings.
    pub(super) async fn start_with(&self, settings: BrokerSettings) -> Broker {
        let timers = crate::storage::BucketFiles::open(self.timer_dir.path(), 1000).unwrap();
        let stores = Stores { log: self.log.clone(), meta: self.meta.clone(), timers: Arc::new(timers) };
        Broker::start(settings, stores, self.clock.clone()).await.unwrap()
    }
}

async fn broker_with(log: Arc<dyn MessageLog>) -> Broker {
    Harness::new(log).await.start().await
}

pub(super) fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: "T".into(),
        message_id: id.into(),
        born_timestamp_ms: 1,
        body: Bytes::from(id.to_string()),
        ..Default::default()
    }
}

pub(super) fn receive_request() -> ReceiveRequest {
    ReceiveRequest {
        client_id: "c".into(),
        group: "G".into(),
        topic: "T".into(),
        filter: Filter::All,
        batch_size: 32,
        invisible_duration: Some(Duration::from_secs(30)),
        auto_renew: false,
        long_polling_timeout: Some(Duration::ZERO),
        deadline_remaining: None,
        attempt_id: None,
    }
}

#[tokio::test]
async fn a_damaged_record_is_skipped_not_served_and_does_not_wedge_the_queue() {
    let broker = broker_with(Arc::new(DamagedAt { inner: MemoryLog::new(), offset: 1 })).await;
    for id in ["m0", "m1", "m2"] {
        broker.send(vec![message(id)]).await.unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(broker.receive(receive_request()).await.unwrap().into_iter().map(|m| m.message_id));
    }
    assert_eq!(ids, vec!["m0", "m2"]);
}

#[tokio::test]
async fn filtered_out_messages_are_acknowledged_for_the_group() {
    let broker = broker_with(Arc::new(MemoryLog::new())).await;
    let mut a = message("a");
    a.tag = Some("A".into());
    let mut b = message("b");
    b.tag = Some("B".into());
    broker.send(vec![a]).await.unwrap();
    broker.send(vec![b]).await.unwrap();
    let mut req = receive_request();
    req.filter = Filter::tags("B || C").unwrap();
    let got: Vec<_> = broker.receive(req.clone()).await.unwrap().into_iter().map(|m| m.message_id).collect();
    assert_eq!(got, vec!["b"]);
    assert!(broker.receive(req).await.unwrap().is_empty());
}

#[tokio::test]
async fn receipts_are_bound_to_group_and_topic() {
    let broker = broker_with(Arc::new(MemoryLog::new())).await;
    broker.send(vec![message("x")]).await.unwrap();
    let m = broker.receive(receive_request()).await.unwrap().remove(0);
    let other_group = broker.ack("c", "OtherGroup", "T", &m.receipt_handle).await;
    assert!(matches!(other_group, Err(BrokerError::InvalidReceiptHandle(_))));
    broker.ack("c", "G", "T", &m.receipt_handle).await.unwrap();
}

#[tokio::test]
async fn a_terminated_client_has_its_long_polls_ended() {
    let broker = broker_with(Arc::new(MemoryLog::new())).await;
    broker.send(vec![message("m0")]).await.unwrap();
    let mut first = receive_request();
    first.batch_size = 1;
    assert_eq!(broker.receive(first).await.unwrap().len(), 1);
    // Now the queue is empty: a 20 s long poll waits…
    let mut req = receive_request();
    req.long_polling_timeout = Some(Duration::from_secs(20));
    let polling = tokio::spawn({
        let broker = broker.clone();
        async move { broker.receive(req).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!polling.is_finished());
    // …until the client says goodbye.
    broker.client_terminated("c");
    let got = tokio::time::timeout(Duration::from_secs(2), polling).await.expect("long poll ended").unwrap().unwrap();
    assert!(got.is_empty());
}

/// Deliveries in flight survive a crash (the broker is dropped without a progress flush) and a
/// restart from a snapshot alike: still invisible until their deadline, the handle the consumer
/// holds still acks, and the next delivery continues the attempt count.
#[tokio::test]
async fn deliveries_in_flight_survive_a_restart() {
    for snapshot in [false, true] {
        let h = Harness::new(Arc::new(MemoryLog::new())).await;
        let broker = h.start().await;
        for id in ["m0", "m1", "m2"] {
            broker.send(vec![message(id)]).await.unwrap();
        }
        let mut first = receive_request();
        first.invisible_duration = Some(Duration::from_secs(60));
        let got = broker.receive(first).await.unwrap();
        assert_eq!(got.len(), 3);
        // m2 gets a short invisibility through ChangeInvisibleDuration (a nack with backoff).
        let m2 = broker
            .change_invisible_duration("c", "G", "T", &got[2].receipt_handle, Duration::from_millis(300))
            .await
            .unwrap();
        broker.ack("c", "G", "T", &got[0].receipt_handle).await.unwrap();
        if snapshot {
            broker.flush_progress().await.unwrap();
        }
        drop(broker);

        let broker = h.start().await;
        assert!(
            broker.receive(receive_request()).await.unwrap().is_empty(),
            "snapshot={snapshot}: all still invisible"
        );
        broker.ack("c", "G", "T", &got[1].receipt_handle).await.expect("the pre-restart handle acks");
        h.clock.advance(350);
        let again = broker.receive(receive_request()).await.unwrap();
        assert_eq!(again.len(), 1, "snapshot={snapshot}: only m2 comes back, after its deadline");
        assert_eq!((again[0].message_id.as_str(), again[0].delivery_attempt), ("m2", 2));
        assert!(broker.ack("c", "G", "T", &m2).await.is_err(), "the handle before the redelivery is stale");
        broker.ack("c", "G", "T", &again[0].receipt_handle).await.unwrap();
    }
}

fn fifo_message(id: &str, group: &str) -> OutgoingMessage {
    OutgoingMessage { message_group: Some(group.into()), ..message(id) }
}

fn ids(got: &[DeliveredMessage]) -> Vec<&str> {
    got.iter().map(|m| m.message_id.as_str()).collect()
}

/// Orderly groups: one message per message group in flight, the others of the queue go on;
/// a group waits for its head through redelivery and a broker restart.
#[tokio::test]
async fn orderly_groups_lock_message_groups_not_queues() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    broker.put_group("G", true, (Some(3), None), None).await.unwrap();
    // One queue: both message groups share it.
    for (id, g) in [("a0", "A"), ("b0", "B"), ("a1", "A"), ("b1", "B"), ("a2", "A")] {
        broker.send(vec![fifo_message(id, g)]).await.unwrap();
    }
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["a0", "b0"], "one head per group");
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "both groups busy");
    // B moves on while A's head is still in flight (no head-of-line blocking).
    broker.ack("c", "G", "T", &got[1].receipt_handle).await.unwrap();
    let b1 = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&b1), vec!["b1"]);
    // A's head fails (nack with a short backoff): it comes back first, attempt 2, before a1.
    broker.change_invisible_duration("c", "G", "T", &got[0].receipt_handle, Duration::from_millis(100)).await.unwrap();
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
    h.clock.advance(100);
    let again = broker.receive(receive_request()).await.unwrap();
    assert_eq!((ids(&again), again[0].delivery_attempt), (vec!["a0"], 2));

    // Crash with a0 (attempt 2) and b1 in flight: after the restart the groups stay locked.
    drop(broker);
    let broker = h.start().await;
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "a0 and b1 still in flight");
    broker.ack("c", "G", "T", &again[0].receipt_handle).await.expect("the handle from before the crash acks");
    let next = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&next), vec!["a1"], "A's next message, in order");
    // b1's invisibility (30 s from its delivery, 100 ms before a1's) ends: redelivered with
    // attempt 2, while a1 is still invisible.
    h.clock.advance(29_900);
    let b1_again = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&b1_again), vec!["b1"]);
    assert_eq!(b1_again[0].delivery_attempt, 2);
}

/// After the last attempt an orderly group's head goes to the DLQ and its group moves on.
#[tokio::test]
async fn an_exhausted_fifo_head_is_dead_lettered_and_its_group_moves_on() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    broker.put_group("G", true, (Some(1), None), None).await.unwrap();
    for id in ["x0", "x1"] {
        broker.send(vec![fifo_message(id, "X")]).await.unwrap();
    }
    for attempt in 1..=2 {
        let got = broker.receive(receive_request()).await.unwrap();
        assert_eq!((ids(&got), got[0].delivery_attempt), (vec!["x0"], attempt));
        h.clock.advance(30_000);
    }
    // This receive moves x0 to the DLQ (and wakes long polls); the next one gets x1.
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["x1"], "x0 went to the DLQ after 2 attempts");
    let mut dlq = receive_request();
    dlq.topic = "%DLQ%G".into();
    dlq.group = "ops".into();
    assert_eq!(ids(&broker.receive(dlq).await.unwrap()), vec!["x0"]);
    // The copy carries Apache's dead-letter properties.
    let copy = h.log.read("%DLQ%G", 0, 0, 1, usize::MAX).unwrap().remove(0);
    let p = |k: &str| copy.properties.get(k).map(str::to_string);
    assert_eq!(p("DLQ_ORIGIN_TOPIC").as_deref(), Some("T"));
    assert_eq!(p("RETRY_TOPIC").as_deref(), Some("T"));
    assert_eq!(p("DLQ_ORIGIN_MESSAGE_ID").as_deref(), Some("x0"));
    assert_eq!(p("ORIGIN_MESSAGE_ID").as_deref(), Some("x0"));
    assert_eq!(p("RECONSUME_TIME").as_deref(), Some("2"), "delivered twice");
    assert_eq!(p("MAX_RECONSUME_TIMES").as_deref(), Some("1"));
    assert_eq!(p("UNIQ_KEY").as_deref(), Some("x0"), "the message id is kept");
}

fn delayed(id: &str, at: i64) -> OutgoingMessage {
    OutgoingMessage { delivery_timestamp_ms: Some(at), ..message(id) }
}

/// Timers fire at their time, never before, survive a crash before and after firing without
/// firing twice, and a recalled message never fires.
#[tokio::test]
async fn scheduled_messages_fire_on_time_once_and_survive_restarts() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    let now = h.clock.now_ms();
    let r = broker.send(vec![delayed("d5", now + 5_000)]).await.unwrap();
    broker.send(vec![delayed("d9", now + 9_000)]).await.unwrap();
    let recall = broker.send(vec![delayed("gone", now + 7_000)]).await.unwrap();
    broker.send(vec![delayed("past", now - 1_000)]).await.unwrap();
    assert!(r[0].recall_handle.is_some());
    assert_eq!(ids(&broker.receive(receive_request()).await.unwrap()), vec!["past"], "due in the past: at once");
    broker.index_timers().unwrap();
    h.clock.advance(4_999);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 0, "not a millisecond early");
    h.clock.advance(1);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["d5"]);
    assert_eq!((got[0].message_type, got[0].delivery_timestamp_ms), (MessageType::Delay, Some(now + 5_000)));
    assert_eq!(got[0].body, Bytes::from("d5"), "the body comes from the one stored copy");
    let handle = recall[0].recall_handle.clone().unwrap();
    assert_eq!(broker.recall("T", &handle).await.unwrap(), "gone");

    // Crash (no checkpoint written): d5 must not fire again, d9 must still fire, the recall
    // holds.
    drop(broker);
    let broker = h.start().await;
    h.clock.advance(10_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
    assert_eq!(ids(&broker.receive(receive_request()).await.unwrap()), vec!["d9"]);
    // A clean restart with a checkpoint: nothing left.
    broker.checkpoint_timers().unwrap();
    drop(broker);
    let broker = h.start().await;
    h.clock.advance(100_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 0);
    assert!(broker.recall("T", &handle).await.is_err(), "due time passed");
}

/// Cluster: a message falling due while no queue of its topic is this node's does not fail
/// the firing (which would hold up every later timer of the node); it is tried again and fires
/// once, as a full copy, when a queue of its topic is here again.
#[tokio::test]
async fn a_due_message_without_a_local_queue_waits_and_holds_nothing_up() {
    struct Switch(std::sync::atomic::AtomicBool);
    impl QueueOwnership for Switch {
        fn owns(&self, topic: &str, _queue_id: u32) -> bool {
            topic != "T" || self.0.load(Ordering::SeqCst)
        }
    }
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    let owned = Arc::new(Switch(std::sync::atomic::AtomicBool::new(true)));
    broker.set_ownership(owned.clone());
    let now = h.clock.now_ms();
    broker.send(vec![delayed("d1", now + 1_000)]).await.unwrap();
    broker.index_timers().unwrap();
    owned.0.store(false, Ordering::SeqCst);
    h.clock.advance(1_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1, "handled (scheduled again), not an error");
    owned.0.store(true, Ordering::SeqCst);
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "not delivered yet");
    broker.index_timers().unwrap();
    h.clock.advance(1_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["d1"]);
    assert_eq!(got[0].body, Bytes::from("d1"));
    h.clock.advance(10_000);
    broker.index_timers().unwrap();
    assert_eq!(broker.fire_due_timers().await.unwrap(), 0, "fired once");
}

#[tokio::test]
async fn delivery_times_beyond_the_limit_are_refused_without_overflow() {
    let broker = broker_with(Arc::new(MemoryLog::new())).await;
    for at in [i64::MAX, broker.now_ms() + 41 * 24 * 3600 * 1000] {
        let e = broker.send(vec![delayed("far", at)]).await.unwrap_err();
        assert!(matches!(e, BrokerError::IllegalDeliveryTime(_)), "{e}");
    }
    let fine = broker.now_ms() + 39 * 24 * 3600 * 1000;
    assert!(broker.send(vec![delayed("ok", fine)]).await.is_ok());
}

fn transactional(id: &str) -> OutgoingMessage {
    OutgoingMessage { transactional: true, ..message(id) }
}

/// Cluster: a message due, or a transaction committed, on a node serving no queue of its topic
/// is handed to a node serving one (here a second broker, which stores it like a send). The
/// firing is recorded only once the hand-over succeeded: a failed one is tried again.
#[tokio::test]
async fn due_and_committed_messages_without_a_local_queue_are_handed_over() {
    struct Switch(std::sync::atomic::AtomicBool);
    impl QueueOwnership for Switch {
        fn owns(&self, topic: &str, _queue_id: u32) -> bool {
            (topic != "T" && topic != "X") || self.0.load(Ordering::SeqCst)
        }
    }
    struct ToOther {
        broker: Broker,
        calls: std::sync::atomic::AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }
    #[async_trait]
    impl QueueHandOver for ToOther {
        async fn hand_over(&self, topic: &str, queue_nums: u32, messages: Vec<AppendMessage>) -> BrokerResult<()> {
            assert!(topic == "T" || topic == "X", "{topic}");
            assert!(queue_nums >= 1);
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(BrokerError::NotOwner("the owner is unreachable".into()));
            }
            self.broker.accept_handed_over(topic, messages).await.map(|_| ())
        }
    }
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    let other = broker_with(Arc::new(MemoryLog::new())).await;
    other.send(vec![message("seed")]).await.unwrap();
    let tx = |id: &str| OutgoingMessage { topic: "X".into(), ..transactional(id) };
    other.send(vec![tx("seed-x")]).await.unwrap();
    let owned = Arc::new(Switch(std::sync::atomic::AtomicBool::new(true)));
    broker.set_ownership(owned.clone());
    let to_other = Arc::new(ToOther {
        broker: other.clone(),
        calls: Default::default(),
        down: std::sync::atomic::AtomicBool::new(true),
    });
    broker.set_queue_hand_over(to_other.clone());
    let now = h.clock.now_ms();
    broker.send(vec![delayed("d1", now + 1_000)]).await.unwrap();
    broker.send(vec![tx("tx1")]).await.unwrap();
    broker.index_timers().unwrap();
    owned.0.store(false, Ordering::SeqCst);

    // The owner unreachable: the commit fails (the producer retries), the timer waits.
    let e = broker.end_transaction("X", "tx1", Resolution::Commit, ResolutionSource::Client).await.unwrap_err();
    assert!(matches!(e, BrokerError::NotOwner(_)), "{e}");
    h.clock.advance(1_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1, "handled (scheduled again), not an error");
    assert_eq!(to_other.calls.load(Ordering::SeqCst), 2);

    // Reachable again: both stored there, once, as full copies with their ids and bodies.
    to_other.down.store(false, Ordering::SeqCst);
    broker.end_transaction("X", "tx1", Resolution::Commit, ResolutionSource::Client).await.unwrap();
    h.clock.advance(1_000);
    broker.index_timers().unwrap();
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
    h.clock.advance(10_000);
    broker.index_timers().unwrap();
    assert_eq!(broker.fire_due_timers().await.unwrap(), 0, "fired once");
    let got = other.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["seed", "d1"]);
    assert_eq!((got[1].body.clone(), got[1].message_type), (Bytes::from("d1"), MessageType::Delay));
    let got = other.receive(ReceiveRequest { topic: "X".into(), ..receive_request() }).await.unwrap();
    assert_eq!(ids(&got), vec!["tx1"], "the half message seed-x was never committed there");
    assert_eq!((got[0].body.clone(), got[0].message_type), (Bytes::from("tx1"), MessageType::Transaction));
}

/// Cluster: an orphan with no producer of its topic connected here goes to the relay (the
/// other nodes); with one connected here, the relay is not used.
#[tokio::test]
async fn orphan_checks_without_a_local_producer_are_relayed() {
    struct Recorded(std::sync::Mutex<Vec<(String, String)>>);
    impl OrphanCheckRelay for Recorded {
        fn relay_orphan_check(&self, topic: &str, command: ClientCommand) {
            if let ClientCommand::RecoverOrphanedTransaction { transaction_id, .. } = command {
                self.0.lock().unwrap().push((topic.to_string(), transaction_id));
            }
        }
    }
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    let relay = Arc::new(Recorded(std::sync::Mutex::new(Vec::new())));
    broker.set_orphan_check_relay(relay.clone());
    broker.send(vec![transactional("orphan")]).await.unwrap();
    h.clock.advance(6_000);
    broker.check_transactions().await.unwrap();
    assert_eq!(*relay.0.lock().unwrap(), vec![("T".to_string(), "orphan".to_string())]);

    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    broker.register_client("p1", ClientKind::Producer, None, vec!["T".into()]);
    broker.attach_client_channel("p1", tx);
    h.clock.advance(30_000);
    broker.check_transactions().await.unwrap();
    assert!(matches!(rx.try_recv(), Ok(ClientCommand::RecoverOrphanedTransaction { .. })));
    assert_eq!(relay.0.lock().unwrap().len(), 1, "a local producer is asked first");
    // A check relayed from another node goes to the local producer as is.
    assert!(broker.push_relayed_check("T", Bytes::from_static(b"encoded")));
    assert!(matches!(rx.try_recv(), Ok(ClientCommand::Relayed { payload }) if payload == "encoded"));
    assert!(!broker.push_relayed_check("U", Bytes::from_static(b"encoded")), "no producer of U here");
}

/// Half messages stay invisible until committed; rollbacks discard; orphans are checked with
/// a connected producer of the topic on schedule, again after a crash, and given up after the
/// last check.
#[tokio::test]
async fn transactions_commit_roll_back_and_get_checked_on_schedule() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    for id in ["commit", "rollback", "orphan"] {
        broker.send(vec![transactional(id)]).await.unwrap();
    }
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "nothing before the commit");
    broker.end_transaction("T", "commit", Resolution::Commit, ResolutionSource::Client).await.unwrap();
    broker.end_transaction("T", "commit", Resolution::Commit, ResolutionSource::Client).await.expect("a retry is fine");
    broker.end_transaction("T", "rollback", Resolution::Rollback, ResolutionSource::Client).await.unwrap();
    assert!(broker.end_transaction("T", "rollback", Resolution::Commit, ResolutionSource::Client).await.is_err());
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!((ids(&got), got[0].message_type), (vec!["commit"], MessageType::Transaction));
    broker.ack("c", "G", "T", &got[0].receipt_handle).await.unwrap();

    // The orphan: checked through a connected producer of T after 6 s, then every 30 s.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    broker.register_client("p1", ClientKind::Producer, None, vec!["T".into()]);
    broker.attach_client_channel("p1", tx);
    h.clock.advance(5_999);
    broker.check_transactions().await.unwrap();
    assert!(rx.try_recv().is_err(), "not before the transaction timeout");
    h.clock.advance(1);
    broker.check_transactions().await.unwrap();
    match rx.try_recv() {
        Ok(ClientCommand::RecoverOrphanedTransaction { transaction_id, message }) => {
            assert_eq!((transaction_id.as_str(), &*message.topic), ("orphan", "T"));
        }
        other => panic!("expected a check, got {other:?}"),
    }
    h.clock.advance(29_999);
    broker.check_transactions().await.unwrap();
    assert!(rx.try_recv().is_err(), "the next check waits for the interval");

    // Crash: the orphan is open again and its overdue check goes out at once.
    drop(broker);
    let broker = h.start().await;
    assert_eq!(broker.open_transactions(), 1);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    broker.register_client("p2", ClientKind::Producer, None, vec!["T".into()]);
    broker.attach_client_channel("p2", tx);
    broker.check_transactions().await.unwrap();
    assert!(matches!(rx.try_recv(), Ok(ClientCommand::RecoverOrphanedTransaction { .. })));
    // 15 checks, then it is given up (discarded by default).
    for _ in 0..15 {
        h.clock.advance(30_000);
        broker.check_transactions().await.unwrap();
    }
    assert_eq!(broker.open_transactions(), 0);
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
    // Resolutions survive a crash too: nothing reopens, the commit is not delivered again.
    drop(broker);
    let broker = h.start().await;
    assert_eq!(broker.open_transactions(), 0);
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
}

fn prioritized(id: &str, priority: i32) -> OutgoingMessage {
    OutgoingMessage { topic: "P".into(), priority: Some(priority), ..message(id) }
}

/// Priority topics: higher first within a queue, retries keep their priority, and a waiting
/// low-priority message ages past newer high-priority ones (no starvation).
#[tokio::test]
async fn priority_messages_go_first_without_starving_the_rest() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    broker.create_topic("P", Some(1), TopicKind::Priority).await.unwrap();
    for (id, p) in [("low1", 0), ("low2", 0), ("high1", 9), ("mid", 5), ("high2", 9)] {
        broker.send(vec![prioritized(id, p)]).await.unwrap();
    }
    let mut req = receive_request();
    req.topic = "P".into();
    req.batch_size = 2;
    let first = broker.receive(req.clone()).await.unwrap();
    assert_eq!(ids(&first), vec!["high1", "high2"]);
    assert_eq!(first[0].priority, Some(9));
    assert_eq!(first[0].message_type, MessageType::Priority);
    // high1 fails: its retry competes with priority 9, ahead of mid and the lows.
    broker
        .change_invisible_duration("c", "G", "P", &first[0].receipt_handle, Duration::from_millis(100))
        .await
        .unwrap();
    h.clock.advance(100);
    let next = broker.receive(req.clone()).await.unwrap();
    assert_eq!(ids(&next), vec!["high1", "mid"]);
    assert_eq!(next[0].delivery_attempt, 2);
    // The lows have waited 12 s: older than any new priority-9 message's lead.
    h.clock.advance(12_000);
    broker.send(vec![prioritized("high3", 9)]).await.unwrap();
    req.batch_size = 1;
    assert_eq!(ids(&broker.receive(req.clone()).await.unwrap()), vec!["low1"]);
    let e = broker.send(vec![prioritized("negative", -1)]).await.unwrap_err();
    assert!(matches!(e, BrokerError::BadRequest(_)), "{e}");
    let e = broker.send(vec![message("plain")]).await;
    assert!(e.is_ok(), "another topic");
    let mut normal_on_priority = message("n");
    normal_on_priority.topic = "P".into();
    assert!(matches!(broker.send(vec![normal_on_priority]).await, Err(BrokerError::MessageTypeConflict(_))));
}

#[tokio::test]
async fn a_group_has_its_own_retry_policy() {
    let secs = Duration::from_secs;
    let broker = broker_with(Arc::new(MemoryLog::new())).await;
    broker.put_group("G", true, (Some(2), Some("2s 4s")), None).await.unwrap();
    let p = broker.group_policy("G").await.unwrap();
    assert_eq!((p.fifo, p.max_attempts), (true, 3));
    assert_eq!(p.retry_backoff, Backoff::Customized(vec![secs(2), secs(4)]));
    assert_eq!([1, 2, 3, 9].map(|a| p.retry_backoff.delay(a)), [secs(2), secs(4), secs(4), secs(4)]);
    // Absent keeps it; "" returns to the gateway default.
    broker.put_group("G", true, (None, None), None).await.unwrap();
    assert_eq!(broker.group_policy("G").await.unwrap().retry_backoff, p.retry_backoff);
    broker.put_group("G", true, (None, Some("")), None).await.unwrap();
    assert_eq!(broker.group_policy("G").await.unwrap().retry_backoff.delay(18), secs(7200));
    broker.put_group("G", false, (None, Some("exponential 1s 2 5s")), None).await.unwrap();
    let exp = broker.group_policy("G").await.unwrap().retry_backoff;
    assert_eq!([1, 2, 3, 4, 40].map(|a| exp.delay(a)), [secs(1), secs(2), secs(4), secs(5), secs(5)]);
    for bad in ["soon", "exponential 1s", "exponential 1s 0.5 5s", "exponential 5s 2 1s", "exponential 0s 2 1s"] {
        let e = broker.put_group("G", true, (None, Some(bad)), None).await.unwrap_err();
        assert!(matches!(e, BrokerError::BadRequest(_)), "{bad}: {e}");
    }
}

/// A damaged timer checkpoint does not stop the gateway: the timer queues are re-indexed from
/// the log and what already fired (per the fired marks) does not fire again.
#[tokio::test]
async fn a_damaged_timer_checkpoint_is_rebuilt_from_the_log() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    let now = h.clock.now_ms();
    broker.send(vec![delayed("first", now + 1_000)]).await.unwrap();
    broker.send(vec![delayed("second", now + 5_000)]).await.unwrap();
    broker.index_timers().unwrap();
    h.clock.advance(1_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
    broker.checkpoint_timers().unwrap();
    drop(broker);
    std::fs::write(h.timer_dir.path().join("checkpoint"), b"garbage").unwrap();
    let broker = h.start().await;
    h.clock.advance(10_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1, "only the second fires");
    assert_eq!(ids(&broker.receive(receive_request()).await.unwrap()), vec!["first", "second"]);
}

/// Receipt handles by message id, as a consumer keeps them.
fn keep(held: &mut HashMap<String, String>, got: Vec<DeliveredMessage>) -> Vec<String> {
    got.into_iter()
        .map(|m| {
            held.insert(m.message_id.clone(), m.receipt_handle.clone());
            m.message_id
        })
        .collect()
}

/// The run of `go::fifo_order_across_sigterm` that lost a message, replayed: four message
/// groups round-robin on one queue, their heads moving on at different times, a restart
/// (graceful, or a crash) while every group's head is held; after it a consumer acks (or
/// nacks) a later head *before any receive scanned the queue again* — that used to move the
/// scan past D's second message, which then was never delivered (until the next restart). Now
/// each group resumes at its next message.
#[tokio::test]
async fn an_orderly_group_resumes_at_its_next_message_after_a_restart() {
    for snapshot in [true, false] {
        let h = Harness::new(Arc::new(MemoryLog::new())).await;
        let broker = h.start().await;
        broker.create_topic("T", Some(1), TopicKind::Fifo).await.unwrap();
        broker.put_group("G", true, (Some(3), None), None).await.unwrap();
        for seq in 0..6 {
            for g in ["A", "B", "C", "D"] {
                broker.send(vec![fifo_message(&format!("{g}{seq}"), g)]).await.unwrap();
            }
        }
        let mut held = HashMap::new();
        assert_eq!(keep(&mut held, broker.receive(receive_request()).await.unwrap()), ["A0", "B0", "C0", "D0"]);
        for (done, next) in [("A0", "A1"), ("B0", "B1"), ("A1", "A2"), ("C0", "C1"), ("B1", "B2")] {
            broker.ack("c", "G", "T", &held[done]).await.unwrap();
            assert_eq!(keep(&mut held, broker.receive(receive_request()).await.unwrap()), [next], "after {done}");
        }
        if snapshot {
            broker.shutdown().await.unwrap();
        }
        drop(broker);
        let broker = h.start().await;
        // B2 fails and comes back later (a nack), A2 is acked: both before any receive.
        let b2 = broker.change_invisible_duration("c", "G", "T", &held["B2"], Duration::from_secs(5)).await.unwrap();
        broker.ack("c", "G", "T", &held["A2"]).await.unwrap();
        assert_eq!(keep(&mut held, broker.receive(receive_request()).await.unwrap()), ["A3"]);
        broker.ack("c", "G", "T", &b2).await.unwrap();
        assert_eq!(keep(&mut held, broker.receive(receive_request()).await.unwrap()), ["B3"]);
        for (done, next) in [("D0", "D1"), ("C1", "C2"), ("D1", "D2")] {
            let handle = held[done].clone();
            broker.ack("c", "G", "T", &handle).await.expect("a handle from before the restart acks");
            let got = keep(&mut held, broker.receive(receive_request()).await.unwrap());
            assert_eq!(got, [next], "snapshot={snapshot}: after {done}");
        }
    }
}

/// BROADCASTING groups: every client gets every message with its own progress (acks, retries
/// and restarts independent of the others); a client's handle is its own; a client gone for
/// `broadcastRetireAfter` has its progress dropped.
#[tokio::test]
async fn broadcast_groups_give_every_client_every_message() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    broker.put_group("B", false, (None, None), Some(true)).await.unwrap();
    assert!(broker.list_groups()[0].broadcast);
    for id in ["m0", "m1", "m2"] {
        broker.send(vec![message(id)]).await.unwrap();
    }
    let receive = |client: &str| {
        let mut r = receive_request();
        r.group = "B".into();
        r.client_id = client.into();
        r
    };
    let mut got = HashMap::new();
    for c in ["c1", "c2", "c3"] {
        let mine = broker.receive(receive(c)).await.unwrap();
        assert_eq!(ids(&mine), ["m0", "m1", "m2"], "{c} gets every message");
        got.insert(c, mine);
    }
    // c1 acks everything; c2's handle is not c1's to ack.
    assert!(broker.ack("c2", "B", "T", &got["c1"][0].receipt_handle).await.is_err(), "another client's handle");
    for m in &got["c1"] {
        broker.ack("c1", "B", "T", &m.receipt_handle).await.unwrap();
    }
    broker.ack("c2", "B", "T", &got["c2"][0].receipt_handle).await.unwrap();
    broker.flush_progress().await.unwrap();
    drop(broker);
    let broker = h.start().await;
    h.clock.advance(31_000);
    assert!(broker.receive(receive("c1")).await.unwrap().is_empty(), "c1 is done, across the restart");
    let again = broker.receive(receive("c2")).await.unwrap();
    assert_eq!((ids(&again), again[0].delivery_attempt), (vec!["m1", "m2"], 2), "c2 retries its own");
    // c3 stops receiving: after broadcastRetireAfter (1 h here) its progress is dropped.
    h.clock.advance(3_600_000);
    broker.receive(receive("c1")).await.unwrap();
    broker.retire_broadcast_consumers().await.unwrap();
    let (rows, _) = h.meta.load_progress().await.unwrap();
    assert!(rows.iter().all(|p| !p.group.ends_with("@@c3")), "c3's progress is gone");
    assert!(rows.iter().any(|p| p.group.ends_with("@@c1")), "c1 (still receiving) keeps its own");
    assert_eq!(ids(&broker.receive(receive("c3")).await.unwrap()), ["m0", "m1", "m2"], "a returning c3 starts over");
    // A reset of the group resets every client's own progress.
    broker.reset_offsets("B", "T", ResetTarget::Earliest).await.unwrap();
    assert_eq!(ids(&broker.receive(receive("c1")).await.unwrap()), ["m0", "m1", "m2"], "c1 again after the reset");
}

/// SQL92 filters see all of a message's properties, also for fired timers and committed
/// transactions (delivered through reference records that carry only the tag and keys);
/// what they reject is acknowledged for the group, other groups still get everything.
#[tokio::test]
async fn sql_filters_see_the_properties_of_fired_timers_and_commits_too() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    broker.create_topic("T", Some(1), TopicKind::Mixed).await.unwrap();
    let with = |mut m: OutgoingMessage, n: &str| {
        m.user_properties = vec![("n".into(), n.into())];
        m.tag = Some("t".into());
        m
    };
    let now = h.clock.now_ms();
    for m in [
        with(message("plain5"), "5"),
        with(message("plain1"), "1"),
        with(delayed("timer7", now + 1_000), "7"),
        with(delayed("timer2", now + 1_000), "2"),
        with(transactional("tx9"), "9"),
        with(transactional("tx0"), "0"),
    ] {
        broker.send(vec![m]).await.unwrap();
    }
    for tx in ["tx9", "tx0"] {
        broker.end_transaction("T", tx, Resolution::Commit, ResolutionSource::Client).await.unwrap();
    }
    broker.index_timers().unwrap();
    h.clock.advance(1_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 2);
    let mut req = receive_request();
    req.filter = Filter::sql("n > 3 AND TAGS = 't'").unwrap();
    let mut got: Vec<String> = broker.receive(req.clone()).await.unwrap().into_iter().map(|m| m.message_id).collect();
    got.sort();
    assert_eq!(got, vec!["plain5", "timer7", "tx9"]);
    assert!(broker.receive(req).await.unwrap().is_empty(), "the rest was acknowledged for the group");
    let mut all = receive_request();
    all.group = "G2".into();
    assert_eq!(broker.receive(all).await.unwrap().len(), 6);
    assert!(matches!(Filter::sql("n >"), Err(BrokerError::IllegalFilterExpression(m)) if m.contains("at column 4")));
}

/// A PushConsumer's auto-renewed delivery across a restart: the client reconnects (alive), but
/// the gateway cannot know whether the receive's response reached it before the stop, so the
/// renewal ends: the message comes back one invisible period (60 s here) after the restart,
/// not after the 3 h renewal cap.
#[tokio::test]
async fn a_restart_ends_server_side_renewals() {
    for snapshot in [false, true] {
        let h = Harness::new(Arc::new(MemoryLog::new())).await;
        let broker = h.start().await;
        broker.send(vec![message("m0")]).await.unwrap();
        let mut push = receive_request();
        push.auto_renew = true;
        push.invisible_duration = None;
        assert_eq!(ids(&broker.receive(push.clone()).await.unwrap()), ["m0"]);
        h.clock.advance(120_000);
        assert!(broker.receive(push.clone()).await.unwrap().is_empty(), "renewed while the client lives");
        if snapshot {
            broker.shutdown().await.unwrap();
        }
        drop(broker);
        let broker = h.start().await;
        broker.heartbeat("c", ClientKind::PushConsumer, Some("G")).await.unwrap();
        h.clock.advance(59_000);
        assert!(broker.receive(push.clone()).await.unwrap().is_empty(), "snapshot={snapshot}: not before 60 s");
        h.clock.advance(1_000);
        let again = broker.receive(push).await.unwrap();
        assert_eq!((ids(&again), again[0].delivery_attempt), (vec!["m0"], 2), "snapshot={snapshot}");
    }
}

/// A log that records where each record read started.
struct ReadsRecorded {
    inner: MemoryLog,
    reads: std::sync::Mutex<Vec<(String, u64)>>,
}

#[async_trait]
impl MessageLog for ReadsRecorded {
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
        self.reads.lock().unwrap().push((topic.to_string(), offset));
        self.inner.read(topic, queue_id, offset, max, bytes)
    }

    /// Like an index: answers without a record read.
    fn tag_hashes(&self, topic: &str, queue_id: u32, offset: u64, max: usize) -> StorageResult<Vec<(u64, u64)>> {
        let batch = self.inner.read(topic, queue_id, offset, max, usize::MAX)?;
        Ok(batch.into_iter().map(|m| (m.queue_offset, m.tag_hash)).collect())
    }

    delegate_to_inner!();

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}

/// A tag filter passes over the messages it rejects from the index: 1000 messages tagged B,
/// then one tagged A; a consumer of A gets it with its first record read starting at A's
/// offset, and the B run is acknowledged for its group (the floor moves past it at A's ack).
#[tokio::test]
async fn a_tag_filter_skips_rejected_messages_without_reading_them() {
    let log = Arc::new(ReadsRecorded { inner: MemoryLog::new(), reads: Default::default() });
    let h = Harness::new(log.clone()).await;
    let broker = h.start().await;
    broker.create_topic("T", Some(1), TopicKind::Normal).await.unwrap();
    for i in 0..1000 {
        broker.send(vec![OutgoingMessage { tag: Some("B".into()), ..message(&format!("b{i}")) }]).await.unwrap();
    }
    broker.send(vec![OutgoingMessage { tag: Some("A".into()), ..message("a") }]).await.unwrap();
    log.reads.lock().unwrap().clear();
    let mut req = receive_request();
    req.filter = Filter::tags("A").unwrap();
    let got = broker.receive(req).await.unwrap();
    assert_eq!(ids(&got), ["a"]);
    let reads: Vec<u64> = log.reads.lock().unwrap().iter().filter(|(t, _)| t == "T").map(|&(_, o)| o).collect();
    assert_eq!(reads, [1000], "no record of the skipped run was read");
    broker.ack("c", "G", "T", &got[0].receipt_handle).await.unwrap();
    let progress = broker.group_offsets("G", Some("T")).await.unwrap();
    assert_eq!(progress[0].queues[0].consumer_offset, Some(1001));
}

/// A log that counts appends of journal records (`rmq_sys_pop_journal`).
struct JournalCounting {
    inner: MemoryLog,
    /// Appends that wait for their sync (`append`).
    journal_appends: std::sync::atomic::AtomicUsize,
    /// Appends answered once written (`append_written`).
    written_journal_appends: std::sync::atomic::AtomicUsize,
}

impl JournalCounting {
    fn new() -> Self {
        Self {
            inner: MemoryLog::new(),
            journal_appends: Default::default(),
            written_journal_appends: Default::default(),
        }
    }

    /// (synced, written) journal appends so far.
    fn counts(&self) -> (usize, usize) {
        (self.journal_appends.load(Ordering::SeqCst), self.written_journal_appends.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl MessageLog for JournalCounting {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        if messages.iter().any(|m| &*m.topic == "rmq_sys_pop_journal") {
            self.journal_appends.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.append(messages).await
    }

    async fn append_written(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        assert!(messages.iter().all(|m| &*m.topic == "rmq_sys_pop_journal"), "only journal records skip the sync");
        self.written_journal_appends.fetch_add(1, Ordering::SeqCst);
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
        self.inner.read(topic, queue_id, offset, max, bytes)
    }

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }

    delegate_to_inner!();
}

/// One AckMessage request of many entries is journaled with one log append (one group commit
/// under SYNC_FLUSH), each entry keeps its own result, and the acks survive a restart.
#[tokio::test]
async fn an_ack_request_of_many_entries_is_one_journal_append() {
    let log = Arc::new(JournalCounting::new());
    let h = Harness::new(log.clone()).await;
    let broker = h.start().await;
    let sent: Vec<OutgoingMessage> = (0..5).map(|i| message(&format!("m{i}"))).collect();
    broker.send(sent).await.unwrap();
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(got.len(), 5);
    let mut handles: Vec<&str> = got.iter().map(|m| m.receipt_handle.as_str()).collect();
    handles.push("not a receipt handle");
    handles.push(got[0].receipt_handle.as_str());
    let before = log.journal_appends.load(Ordering::SeqCst);
    let results = broker.ack_many("c", "G", "T", &handles).await.unwrap();
    assert_eq!(log.journal_appends.load(Ordering::SeqCst) - before, 1, "one journal append for the request");
    assert_eq!(results.len(), 7);
    assert!(results[..5].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(results[5], Err(BrokerError::InvalidReceiptHandle(_))), "{:?}", results[5]);
    assert!(results[6].is_ok(), "a repeated ack is fine: {:?}", results[6]);
    assert!(broker.ack_many("c", "bad group!", "T", &handles).await.is_err(), "a bad group fails the request");

    // After a "crash": none of the five is delivered again.
    drop(broker);
    let broker = h.start().await;
    h.clock.advance(60_000);
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "acks were journaled");
}

/// What each journal record waits for: a receive of a concurrent group only for its write
/// (`append_written`: a machine crash may redeliver early), a FIFO group's receive, an ack and
/// a ChangeInvisibleDuration for their sync; and a receive's record still replays after a
/// restart.
#[tokio::test]
async fn only_concurrent_receives_skip_the_journal_sync() {
    let log = Arc::new(JournalCounting::new());
    let h = Harness::new(log.clone()).await;
    let broker = h.start().await;
    broker.send(vec![message("m0"), message("m1"), message("m2")]).await.unwrap();
    let before = log.counts();
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(log.counts(), (before.0, before.1 + 1), "a receive: written");
    broker.change_invisible_duration("c", "G", "T", &got[0].receipt_handle, Duration::from_secs(5)).await.unwrap();
    assert_eq!(log.counts(), (before.0 + 1, before.1 + 1), "a ChangeInvisibleDuration: synced");
    broker.ack("c", "G", "T", &got[1].receipt_handle).await.unwrap();
    assert_eq!(log.counts(), (before.0 + 2, before.1 + 1), "an ack: synced");

    // After a restart m0 stays invisible until its (changed) deadline, and m2, of which only
    // the receive's record speaks, until the receive's: 30 s.
    drop(broker);
    let broker = h.start().await;
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "m0, m2 in flight, m1 acked");
    h.clock.advance(5_000);
    assert_eq!(ids(&broker.receive(receive_request()).await.unwrap()), vec!["m0"]);
    h.clock.advance(20_000);
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "m2 in flight for 30 s");
    h.clock.advance(5_000);
    assert_eq!(ids(&broker.receive(receive_request()).await.unwrap()), vec!["m2"]);

    broker.put_group("F", true, (Some(3), None), None).await.unwrap();
    broker.send(vec![OutgoingMessage { topic: "TF".into(), ..fifo_message("f0", "A") }]).await.unwrap();
    let before = log.counts();
    let request = ReceiveRequest { group: "F".into(), topic: "TF".into(), ..receive_request() };
    let fifo = broker.receive(request).await.unwrap();
    assert_eq!(ids(&fifo), vec!["f0"]);
    assert_eq!(log.counts(), (before.0 + 1, before.1), "a FIFO group's receive: synced");
}

/// Cluster: a dead node's pending scheduled and half messages are adopted by another node from
/// its log (what fired, was recalled or resolved stays behind); the adopter fires and resolves
/// them, honours the dead node's recall handles, and adopting again takes nothing twice. When
/// the dead node comes back it gives up what was adopted (nothing fires or commits twice) and
/// keeps serving what lies past the cut.
#[tokio::test]
async fn a_dead_nodes_scheduled_and_half_messages_are_adopted_once() {
    use crate::metadata::HomeCut;
    let hx = Harness::new(Arc::new(MemoryLog::new())).await;
    let x = hx.start().await;
    x.create_topic("T", Some(1), TopicKind::Mixed).await.unwrap();
    let now = hx.clock.now_ms();
    x.send(vec![delayed("fired", now + 1_000)]).await.unwrap();
    x.send(vec![delayed("d1", now + 5_000)]).await.unwrap();
    x.send(vec![delayed("d2", now + 6_000)]).await.unwrap();
    let gone = x.send(vec![delayed("gone", now + 7_000)]).await.unwrap();
    let later = x.send(vec![delayed("later", now + 60_000)]).await.unwrap();
    for id in ["t-open", "t-commit", "t-rollback"] {
        x.send(vec![transactional(id)]).await.unwrap();
    }
    x.end_transaction("T", "t-commit", Resolution::Commit, ResolutionSource::Client).await.unwrap();
    x.end_transaction("T", "t-rollback", Resolution::Rollback, ResolutionSource::Client).await.unwrap();
    x.recall("T", gone[0].recall_handle.as_deref().unwrap()).await.unwrap();
    x.index_timers().unwrap();
    hx.clock.advance(1_000);
    assert_eq!(x.fire_due_timers().await.unwrap(), 1);
    let got = x.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["t-commit", "fired"]);
    for m in &got {
        x.ack("c", "G", "T", &m.receipt_handle).await.unwrap();
    }
    drop(x);

    // Node A adopts X's log (as read from the bucket; here the same log).
    let ha = Harness::new(Arc::new(MemoryLog::new())).await;
    let a = ha.start().await;
    a.create_topic("T", Some(1), TopicKind::Mixed).await.unwrap();
    ha.clock.advance(1_000);
    a.send(vec![message("a-own")]).await.unwrap();
    assert_eq!(ids(&a.receive(receive_request()).await.unwrap()), vec!["a-own"]);
    let adopted = a.adopt_home("x", &*hx.log, HomeCut::default(), &[], 0).await.unwrap();
    assert_eq!((adopted.scheduled, adopted.half), (3, 1), "d1, d2, later; t-open");
    assert_eq!(adopted.cut, HomeCut { scheduled: 5, half: 3 });
    let again = a.adopt_home("x", &*hx.log, adopted.cut, &[], 0).await.unwrap();
    assert_eq!((again.scheduled, again.half, again.cut), (0, 0, adopted.cut), "nothing twice");
    assert_eq!(a.open_transactions(), 1);
    // X's recall handle works on the adopter.
    assert_eq!(a.recall("T", later[0].recall_handle.as_deref().unwrap()).await.unwrap(), "later");
    ha.clock.advance(5_000);
    assert_eq!(a.fire_due_timers().await.unwrap(), 2);
    a.end_transaction("T", "t-open", Resolution::Commit, ResolutionSource::Client).await.unwrap();
    let mut got = ids(&a.receive(receive_request()).await.unwrap()).into_iter().map(String::from).collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, vec!["d1", "d2", "t-open"]);
    ha.clock.advance(100_000);
    assert_eq!(a.fire_due_timers().await.unwrap(), 0, "the recalled one stays recalled");

    // X comes back with its disk: it gives up the adopted ones, keeps what came after.
    let x = hx.start().await;
    x.set_ownership(Arc::new(EveryQueue));
    let now = hx.clock.now_ms();
    x.send(vec![delayed("after-cut", now + 2_000)]).await.unwrap();
    assert_eq!(x.apply_home_cut(adopted.cut).await.unwrap(), (3, 1));
    x.set_adopted_cut(adopted.cut);
    assert_eq!(x.open_transactions(), 0);
    // Requests naming adopted messages are refused here, to be passed on to the adopter.
    let e = x.recall("T", later[0].recall_handle.as_deref().unwrap()).await.unwrap_err();
    assert!(matches!(e, BrokerError::AdoptedElsewhere(_)), "{e:?}");
    let e = x.end_transaction("T", "t-open", Resolution::Commit, ResolutionSource::Client).await.unwrap_err();
    assert!(matches!(e, BrokerError::AdoptedElsewhere(_)), "{e:?}");
    // One resolved before the node died is not open anywhere (after a restart this node has
    // no memory of the resolution either): refused, wherever it goes.
    assert!(x.end_transaction("T", "t-commit", Resolution::Rollback, ResolutionSource::Client).await.is_err());
    hx.clock.advance(100_000);
    assert_eq!(x.fire_due_timers().await.unwrap(), 1);
    assert_eq!(ids(&x.receive(receive_request()).await.unwrap()), vec!["after-cut"]);
    // And after a crash, still nothing of the adopted ones.
    drop(x);
    let x = hx.start().await;
    assert_eq!(x.open_transactions(), 0);
    hx.clock.advance(100_000);
    let n = x.fire_due_timers().await.unwrap();
    assert_eq!(n, 0, "{:?}", ids(&x.receive(receive_request()).await.unwrap()));
}

/// A recalled message whose due time has passed (the batch around it fired) stays recalled
/// when a crash makes the node re-index its timer queues from the log.
#[tokio::test]
async fn a_recall_holds_after_its_due_time_and_a_crash() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start().await;
    let now = h.clock.now_ms();
    let gone = broker.send(vec![delayed("gone", now + 2_000)]).await.unwrap();
    broker.send(vec![delayed("kept", now + 3_000)]).await.unwrap();
    broker.recall("T", gone[0].recall_handle.as_deref().unwrap()).await.unwrap();
    h.clock.advance(5_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 1);
    assert_eq!(ids(&broker.receive(receive_request()).await.unwrap()), vec!["kept"]);
    drop(broker);
    std::fs::remove_dir_all(h.timer_dir.path()).unwrap();
    std::fs::create_dir_all(h.timer_dir.path()).unwrap();
    let broker = h.start().await;
    h.clock.advance(5_000);
    assert_eq!(broker.fire_due_timers().await.unwrap(), 0, "neither fires again");
}

/// Cluster mode on a node that serves every queue (and its home log).
struct EveryQueue;

impl QueueOwnership for EveryQueue {
    fn owns(&self, _topic: &str, _queue_id: u32) -> bool {
        true
    }
}

/// A cluster node's log in miniature: system topics in the node's own `home` log, the rest in
/// a log `shared` with the other nodes (as shard logs are, through the bucket).
struct SplitLog {
    home: MemoryLog,
    shared: Arc<MemoryLog>,
}

impl SplitLog {
    fn of(topic: &str) -> bool {
        topic.starts_with("rmq_sys_")
    }

    fn log(&self, topic: &str) -> &MemoryLog {
        if Self::of(topic) { &self.home } else { &self.shared }
    }
}

#[async_trait]
impl MessageLog for SplitLog {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let log = self.log(&m.topic);
            out.extend(log.append(vec![m]).await?);
        }
        Ok(out)
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
        bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        self.log(topic).read(topic, queue_id, offset, max, bytes)
    }

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        self.log(topic).queue_range(topic, queue_id)
    }

    fn find_by_message_id(&self, id: &str) -> StorageResult<Vec<StoredMessage>> {
        let mut found = self.shared.find_by_message_id(id)?;
        found.extend(self.home.find_by_message_id(id)?);
        Ok(found)
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        self.log(topic).find_by_key(topic, key, max)
    }

    fn hold_retention(&self, _holder: &'static str, _position: Option<u64>) {}

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}

/// Cluster: a queue handed over gracefully keeps its orderly groups locked on the new owner:
/// the message in flight is neither delivered again nor overtaken by the next of its group
/// until it is acked (through the new owner) or its invisibility ends.
#[tokio::test]
async fn a_handed_over_queue_keeps_its_fifo_groups_locked() {
    let shared = Arc::new(MemoryLog::new());
    let h = Harness::new(Arc::new(SplitLog { home: MemoryLog::new(), shared: shared.clone() })).await;
    let old = h.start().await;
    old.put_group("G", true, (Some(3), None), None).await.unwrap();
    for (id, g) in [("a0", "A"), ("a1", "A"), ("b0", "B")] {
        old.send(vec![fifo_message(id, g)]).await.unwrap();
    }
    let got = old.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["a0", "b0"]);
    old.ack("c", "G", "T", &got[1].receipt_handle).await.unwrap();
    let t = |topic: &str, _q: u32| topic == "T";
    old.release_queues(&t).await.unwrap();

    // The new owner: its own home log (journal), the same shared queues and metadata.
    let h2 = Harness {
        log: Arc::new(SplitLog { home: MemoryLog::new(), shared }),
        meta: h.meta.clone(),
        timer_dir: tempfile::tempdir().unwrap(),
        clock: h.clock.clone(),
    };
    let new = h2.start().await;
    new.adopt_queues(&t).await.unwrap();
    assert!(new.receive(receive_request()).await.unwrap().is_empty(), "a0 in flight: A stays locked");
    new.ack("c", "G", "T", &got[0].receipt_handle).await.expect("the old owner's handle acks on the new one");
    assert_eq!(ids(&new.receive(receive_request()).await.unwrap()), vec!["a1"]);
}

/// Cluster: a FIFO delivery is in the shared store before the consumer gets it, so a node
/// taking the queue over after the owner crashed (no hand-over, no periodic flush yet) keeps
/// the message group locked.
#[tokio::test]
async fn fifo_groups_stay_locked_when_the_owner_crashes() {
    let shared = Arc::new(MemoryLog::new());
    let h = Harness::new(Arc::new(SplitLog { home: MemoryLog::new(), shared: shared.clone() })).await;
    let mut settings = test_settings();
    // No periodic flush during the test: only the delivery's own write can reach the store.
    settings.consumer.progress_flush_interval = Duration::from_secs(3600);
    let old = h.start_with(settings.clone()).await;
    old.set_ownership(Arc::new(EveryQueue));
    old.put_group("G", true, (Some(3), None), None).await.unwrap();
    for (id, g) in [("a0", "A"), ("a1", "A")] {
        old.send(vec![fifo_message(id, g)]).await.unwrap();
    }
    let got = old.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), vec!["a0"]);
    drop(old);

    let h2 = Harness {
        log: Arc::new(SplitLog { home: MemoryLog::new(), shared }),
        meta: h.meta.clone(),
        timer_dir: tempfile::tempdir().unwrap(),
        clock: h.clock.clone(),
    };
    let new = h2.start_with(settings).await;
    new.set_ownership(Arc::new(EveryQueue));
    new.adopt_queues(&|topic: &str, _q: u32| topic == "T").await.unwrap();
    assert!(new.receive(receive_request()).await.unwrap().is_empty(), "a0 in flight: A stays locked");
    new.ack("c", "G", "T", &got[0].receipt_handle).await.unwrap();
    assert_eq!(ids(&new.receive(receive_request()).await.unwrap()), vec!["a1"]);
}

/// Cluster: a home log that lost its disk resumes its journal and half queue past what the
/// node's saved progress covers (the acks of its transaction group may be ahead of its last
/// upload), never at offsets that progress already counts as resolved.
#[test]
fn a_resumed_home_log_starts_past_its_saved_progress() {
    let mut tx = super::consumer::QueueState::restore(5, &[]);
    for o in [5, 6, 9] {
        tx.complete(o);
    }
    let progress = vec![crate::metadata::ProgressRecord {
        group: "rmq_sys_trans".into(),
        topic: "rmq_sys_trans_half".into(),
        queue_id: 0,
        ack_floor: tx.floor,
        acked_above: tx.encode(),
    }];
    let floors = home_resume_floors(&progress, 42);
    assert!(floors.contains(&("rmq_sys_pop_journal".to_string(), 0, 42)), "{floors:?}");
    assert!(floors.contains(&("rmq_sys_trans_half".to_string(), 0, 10)), "{floors:?}");
    assert_eq!(home_resume_floors(&[], 0), vec![("rmq_sys_pop_journal".to_string(), 0, 0)]);
}

#[tokio::test]
async fn a_cached_topic_a_client_may_not_name_is_still_refused() {
    // Topics the gateway itself creates are cached like any other; a send skips validating
    // the name of a cached topic only when that name passed validation when it was cached.
    let broker = broker_with(Arc::new(MemoryLog::new())).await;
    for name in ["rmq_sys_own", "TBW102"] {
        broker.create_topic(name, None, TopicKind::Normal).await.unwrap();
        for _ in 0..2 {
            let e = broker.send(vec![OutgoingMessage { topic: name.into(), ..message("m") }]).await.unwrap_err();
            assert!(matches!(e, BrokerError::IllegalTopic(_)), "{name}: {e:?}");
        }
    }
    broker.create_topic("T", None, TopicKind::Normal).await.unwrap();
    for id in ["a", "b"] {
        broker.send(vec![message(id)]).await.unwrap();
    }
    let e = broker.send(vec![OutgoingMessage { topic: "bad topic".into(), ..message("c") }]).await.unwrap_err();
    assert!(matches!(e, BrokerError::IllegalTopic(_)), "{e:?}");
}
