//! Broker tests on an in-memory log and SQLite metadata.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::storage::memory::MemoryLog;
use crate::storage::{AppendResult, QueueRange, StorageError, StorageResult, StoredMessage};

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

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        self.inner.queue_range(topic, queue_id)
    }

    fn find_by_message_id(&self, id: &str) -> StorageResult<Vec<StoredMessage>> {
        self.inner.find_by_message_id(id)
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        self.inner.find_by_key(topic, key, max)
    }

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}

fn test_config() -> Arc<Config> {
    let mut config = Config::default();
    config.topics.auto_create_topic_enable = true;
    config.topics.default_topic_queue_nums = 1;
    // Receives return at once when nothing is there.
    config.consumer.min_long_polling_timeout = Duration::ZERO;
    config.consumer.min_invisible_time = Duration::from_millis(100);
    Arc::new(config)
}

async fn broker_with(log: Arc<dyn MessageLog>) -> Broker {
    let meta = Arc::new(SqliteMetadataStore::in_memory().await.unwrap());
    Broker::start(test_config(), log, meta).await.unwrap()
}

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        topic: "T".into(),
        message_id: id.into(),
        born_timestamp_ms: 1,
        body: Bytes::from(id.to_string()),
        ..Default::default()
    }
}

fn receive_request() -> ReceiveRequest {
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
        let log: Arc<dyn MessageLog> = Arc::new(MemoryLog::new());
        let meta: Arc<dyn MetadataStore> = Arc::new(SqliteMetadataStore::in_memory().await.unwrap());
        let broker = Broker::start(test_config(), log.clone(), meta.clone()).await.unwrap();
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

        let broker = Broker::start(test_config(), log.clone(), meta.clone()).await.unwrap();
        assert!(
            broker.receive(receive_request()).await.unwrap().is_empty(),
            "snapshot={snapshot}: all still invisible"
        );
        broker.ack("c", "G", "T", &got[1].receipt_handle).await.expect("the pre-restart handle acks");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let again = broker.receive(receive_request()).await.unwrap();
        assert_eq!(again.len(), 1, "snapshot={snapshot}: only m2 comes back, after its deadline");
        assert_eq!((again[0].message_id.as_str(), again[0].delivery_attempt), ("m2", 2));
        assert!(broker.ack("c", "G", "T", &m2).await.is_err(), "the handle before the redelivery is stale");
        broker.ack("c", "G", "T", &again[0].receipt_handle).await.unwrap();
    }
}
