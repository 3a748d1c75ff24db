//! A metadata store that fails (PostgreSQL restarting): sends, receives and acks go on, the
//! progress waits (dirty, reported by `metadata_health`) and is written once the store is back.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::metadata::{Fence, GroupRecord, MetadataError, MetadataResult, ProgressRecord, SegmentRecord, TopicRecord};

/// SQLite that answers "unavailable" to everything while `down` is set.
struct FlakyMeta {
    inner: SqliteMetadataStore,
    down: AtomicBool,
}

impl FlakyMeta {
    fn check(&self) -> MetadataResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(MetadataError::Unavailable("connection refused (test)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl MetadataStore for FlakyMeta {
    async fn create_topic(&self, topic: &TopicRecord) -> MetadataResult<TopicRecord> {
        self.check()?;
        self.inner.create_topic(topic).await
    }
    async fn topic(&self, name: &str) -> MetadataResult<Option<TopicRecord>> {
        self.check()?;
        self.inner.topic(name).await
    }
    async fn list_topics(&self) -> MetadataResult<Vec<TopicRecord>> {
        self.check()?;
        self.inner.list_topics().await
    }
    async fn delete_topic(&self, name: &str) -> MetadataResult<bool> {
        self.check()?;
        self.inner.delete_topic(name).await
    }
    async fn create_group(&self, group: &GroupRecord) -> MetadataResult<GroupRecord> {
        self.check()?;
        self.inner.create_group(group).await
    }
    async fn put_group(&self, group: &GroupRecord) -> MetadataResult<()> {
        self.check()?;
        self.inner.put_group(group).await
    }
    async fn retire_group(&self, name: &str) -> MetadataResult<bool> {
        self.check()?;
        self.inner.retire_group(name).await
    }
    async fn group(&self, name: &str) -> MetadataResult<Option<GroupRecord>> {
        self.check()?;
        self.inner.group(name).await
    }
    async fn list_groups(&self) -> MetadataResult<Vec<GroupRecord>> {
        self.check()?;
        self.inner.list_groups().await
    }
    async fn load_progress(&self) -> MetadataResult<(Vec<ProgressRecord>, u64)> {
        self.check()?;
        self.inner.load_progress().await
    }
    async fn save_progress(&self, batch: &[ProgressRecord], journal_offset: u64) -> MetadataResult<()> {
        self.check()?;
        self.inner.save_progress(batch, journal_offset).await
    }
    async fn delete_progress(&self, group: &str) -> MetadataResult<u64> {
        self.check()?;
        self.inner.delete_progress(group).await
    }
    async fn put_segment(&self, segment: &SegmentRecord, fence: Option<&Fence>) -> MetadataResult<()> {
        self.check()?;
        self.inner.put_segment(segment, fence).await
    }
    async fn list_segments(&self, log_id: &str) -> MetadataResult<Vec<SegmentRecord>> {
        self.check()?;
        self.inner.list_segments(log_id).await
    }
    async fn delete_segment(&self, log_id: &str, base: u64) -> MetadataResult<bool> {
        self.check()?;
        self.inner.delete_segment(log_id, base).await
    }
    async fn secret(&self, name: &str, candidate: &[u8]) -> MetadataResult<Vec<u8>> {
        self.check()?;
        self.inner.secret(name, candidate).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// Polls `cond` every 20 ms for at most 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test]
async fn sends_and_acks_go_on_while_the_store_is_down_and_progress_catches_up() {
    let flaky =
        Arc::new(FlakyMeta { inner: SqliteMetadataStore::in_memory().await.unwrap(), down: AtomicBool::new(false) });
    let h = Harness {
        log: Arc::new(MemoryLog::new()),
        meta: flaky.clone(),
        timer_dir: tempfile::tempdir().unwrap(),
        clock: crate::clock::ManualClock::new(1_700_000_000_000),
    };
    let broker = h.start().await;
    broker.send(vec![message("m0"), message("m1")]).await.unwrap();
    // Group G and topic T are known (in memory) before the outage.
    assert_eq!(broker.receive(receive_request()).await.unwrap().len(), 2);
    broker.flush_progress().await.unwrap();
    let flusher = tokio::spawn({
        let b = broker.clone();
        async move { b.run_progress_flusher().await }
    });
    assert_eq!(broker.metadata_health().degraded, None);

    flaky.down.store(true, Ordering::SeqCst);
    broker.send(vec![message("m2")]).await.unwrap();
    h.clock.advance(31_000);
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(got.len(), 3, "the two redelivered and the new one");
    for m in &got {
        broker.ack("c", "G", "T", &m.receipt_handle).await.unwrap();
    }
    eventually("degraded", || broker.metadata_health().degraded.is_some()).await;
    let health = broker.metadata_health();
    assert!(health.waiting >= 1, "{health:?}");
    assert!(health.degraded.as_ref().is_some_and(|d| d.error.contains("connection refused")), "{health:?}");

    flaky.down.store(false, Ordering::SeqCst);
    eventually("recovered", || broker.metadata_health().degraded.is_none()).await;
    assert_eq!(broker.metadata_health().waiting, 0);
    let (rows, _) = flaky.inner.load_progress().await.unwrap();
    let acked: u64 = rows.iter().filter(|p| p.group == "G").map(|p| p.ack_floor).sum();
    assert_eq!(acked, 3, "every ack reached the store: {rows:?}");
    flusher.abort();
    // And a restart on that store redelivers nothing.
    drop(broker);
    let broker = h.start().await;
    h.clock.advance(31_000);
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
}
