//! Tests of [`ShardedLog`] on real commit logs, a `DirStore` and the SQLite manifest wrapped in
//! a store that enforces fences from an in-memory lease map (as PostgreSQL does in a cluster):
//! take-over from the manifest, fencing of the old owner, `persist_remote`, hand-over, and a
//! re-open by the same node keeping its local directory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::metadata::{GroupRecord, MetadataError, MetadataResult, ProgressRecord, SegmentRecord, TopicRecord};
use crate::storage::Properties;
use crate::storage::memory::MemoryLog;
use crate::storage::object::dir::DirStore;

/// SQLite, with fenced `put_segment`s checked against `leases` (log id → (node, epoch)).
struct Fencing {
    inner: SqliteMetadataStore,
    leases: Mutex<HashMap<String, (String, i64)>>,
}

impl Fencing {
    fn lease(&self, shard: ShardId, node: &str, epoch: i64) {
        self.leases.lock().unwrap().insert(cluster::shard_log_id(shard), (node.to_string(), epoch));
    }
}

#[async_trait]
impl MetadataStore for Fencing {
    async fn create_topic(&self, topic: &TopicRecord) -> MetadataResult<TopicRecord> {
        self.inner.create_topic(topic).await
    }
    async fn topic(&self, name: &str) -> MetadataResult<Option<TopicRecord>> {
        self.inner.topic(name).await
    }
    async fn list_topics(&self) -> MetadataResult<Vec<TopicRecord>> {
        self.inner.list_topics().await
    }
    async fn delete_topic(&self, name: &str) -> MetadataResult<bool> {
        self.inner.delete_topic(name).await
    }
    async fn create_group(&self, group: &GroupRecord) -> MetadataResult<GroupRecord> {
        self.inner.create_group(group).await
    }
    async fn put_group(&self, group: &GroupRecord) -> MetadataResult<()> {
        self.inner.put_group(group).await
    }
    async fn retire_group(&self, name: &str) -> MetadataResult<bool> {
        self.inner.retire_group(name).await
    }
    async fn group(&self, name: &str) -> MetadataResult<Option<GroupRecord>> {
        self.inner.group(name).await
    }
    async fn list_groups(&self) -> MetadataResult<Vec<GroupRecord>> {
        self.inner.list_groups().await
    }
    async fn load_progress(&self) -> MetadataResult<(Vec<ProgressRecord>, u64)> {
        self.inner.load_progress().await
    }
    async fn save_progress(&self, batch: &[ProgressRecord], journal_offset: u64) -> MetadataResult<()> {
        self.inner.save_progress(batch, journal_offset).await
    }
    async fn delete_progress(&self, group: &str) -> MetadataResult<u64> {
        self.inner.delete_progress(group).await
    }
    async fn put_segment(&self, segment: &SegmentRecord, fence: Option<&Fence>) -> MetadataResult<()> {
        if let Some(f) = fence {
            let held = self.leases.lock().unwrap().get(&segment.log_id).cloned();
            if held != Some((f.node_id.clone(), f.epoch)) {
                return Err(MetadataError::Fenced(format!("{} is held by {held:?}, not {f:?}", segment.log_id)));
            }
        }
        self.inner.put_segment(segment, None).await
    }
    async fn list_segments(&self, log_id: &str) -> MetadataResult<Vec<SegmentRecord>> {
        self.inner.list_segments(log_id).await
    }
    async fn delete_segment(&self, log_id: &str, base: u64) -> MetadataResult<bool> {
        self.inner.delete_segment(log_id, base).await
    }
    async fn secret(&self, name: &str, candidate: &[u8]) -> MetadataResult<Vec<u8>> {
        self.inner.secret(name, candidate).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

const SHARDS: u32 = 4;
const SEGMENT: u64 = 64 * 1024;

struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<DirStore>,
    meta: Arc<Fencing>,
}

impl Cluster {
    async fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::open(dir.path().join("bucket")).unwrap());
        let meta = Arc::new(Fencing {
            inner: SqliteMetadataStore::in_memory().await.unwrap(),
            leases: Mutex::new(HashMap::new()),
        });
        Cluster { dir, store, meta }
    }

    fn node(&self, node_id: &str) -> Arc<ShardedLog> {
        let storage = StorageConfig {
            segment_size: SEGMENT,
            checkpoint_interval: Duration::from_secs(3600),
            retention_interval: Duration::from_secs(3600),
            queue_index_entries_per_file: 1024,
            ..StorageConfig::new(self.dir.path())
        };
        let tiering = TieringSettings {
            prefix: "tier".into(),
            // Tail uploads only when asked (persist_remote, hand-over): deterministic tests.
            upload_interval: Duration::from_secs(3600),
            tail_upload_interval: Some(Duration::from_secs(3600)),
            remote_retention_interval: Duration::from_secs(3600),
            retry_min_backoff: Duration::from_millis(5),
            retry_max_backoff: Duration::from_millis(20),
            read_ahead_bytes: 16 * 1024,
            ..TieringSettings::default()
        };
        let settings = ShardSettings {
            shards: SHARDS,
            dir: self.dir.path().join(node_id).join("shards"),
            storage,
            tiering,
            node_id: node_id.to_string(),
        };
        ShardedLog::new(Arc::new(MemoryLog::new()), self.store.clone(), self.meta.clone(), settings)
    }
}

/// A queue of topic `T` in `shard`.
fn queue_in(shard: ShardId) -> u32 {
    (0..64).find(|&q| cluster::shard_of("T", q, SHARDS) == shard).unwrap()
}

fn msg(topic: &str, queue_id: u32, n: u64) -> AppendMessage {
    let mut properties = Properties::default();
    properties.push("UNIQ_KEY", format!("{topic}-{queue_id}-{n}"));
    AppendMessage {
        topic: Arc::from(topic),
        queue_id,
        born_timestamp_ms: 1,
        flags: 0,
        tag_hash: 0,
        properties,
        body: Bytes::from(format!("body {n} ").repeat(40)),
    }
}

async fn send(log: &ShardedLog, topic: &str, queue_id: u32, from: u64, count: u64) -> Vec<AppendResult> {
    let mut out = Vec::new();
    for n in from..from + count {
        out.extend(log.append(vec![msg(topic, queue_id, n)]).await.unwrap());
    }
    out
}

/// Every message of a queue from `from`, awaiting cold fetches as the broker does.
async fn read_all(log: &ShardedLog, topic: &str, queue_id: u32, from: u64) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut next = from;
    for _ in 0..10_000 {
        match log.read(topic, queue_id, next, 32, 1 << 20) {
            Ok(batch) if batch.is_empty() => return out,
            Ok(batch) => {
                next = batch.last().unwrap().queue_offset + 1;
                out.extend(batch);
            }
            Err(StorageError::RemoteNotCached { offset, .. }) => {
                log.fetch_remote(topic, queue_id, offset, 1 << 20).await.unwrap();
            }
            Err(e) => panic!("read {topic}/{queue_id}@{next}: {e}"),
        }
    }
    panic!("read loop does not progress");
}

fn body_of(m: &StoredMessage) -> String {
    String::from_utf8(m.body.to_vec()).unwrap()
}

fn covers(rows: &[SegmentRecord], local_position: u64) -> bool {
    rows.iter().any(|r| r.base <= local_position && local_position < r.base + r.size)
}

#[test]
fn positions_carry_the_shard() {
    assert_eq!(split_position(12345), (None, 12345));
    let p = shard_position(7, 99);
    assert_eq!(split_position(p), (Some(7), 99));
    assert_eq!(split_position(shard_position(0, 0)), (Some(0), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_continues_from_the_manifest_and_fences_the_old_owner() {
    let c = Cluster::new().await;
    let (shard, q) = (1, queue_in(1));
    let log_id = cluster::shard_log_id(shard);
    let a = c.node("a");
    c.meta.lease(shard, "a", 1);
    a.open_shard(shard, 1).await.unwrap();
    assert_eq!(a.open_shards(), vec![shard]);

    // Not open here: refused; system topics go to the home log.
    let other = queue_in(2);
    assert!(matches!(a.append(vec![msg("T", other, 0)]).await, Err(StorageError::NotOwner { .. })));
    assert!(matches!(a.read("T", other, 0, 1, 1), Err(StorageError::NotOwner { .. })));
    let home = a.append(vec![msg("rmq_sys_journal", 0, 0)]).await.unwrap();
    assert_eq!(split_position(home[0].log_position).0, None);

    // 120 messages (several segments), all in the manifest once persist_remote returns.
    let sent = send(&a, "T", q, 0, 120).await;
    assert_eq!(sent.last().unwrap().queue_offset, 119);
    assert!(sent.iter().all(|r| split_position(r.log_position).0 == Some(shard)));
    a.persist_remote(&sent).await.unwrap();
    let rows = c.meta.list_segments(&log_id).await.unwrap();
    for r in &sent {
        assert!(covers(&rows, split_position(r.log_position).1), "position {} not in the manifest", r.log_position);
    }
    // Five more, acknowledged locally only: lost with node a.
    send(&a, "T", q, 120, 5).await;

    // Node b takes the shard over (a did not notice: partitioned).
    c.meta.lease(shard, "b", 2);
    let b = c.node("b");
    b.open_shard(shard, 2).await.unwrap();
    assert_eq!(b.queue_range("T", q), QueueRange { start: 0, end: 120 });
    let new = send(&b, "T", q, 1000, 3).await;
    assert_eq!(new.iter().map(|r| r.queue_offset).collect::<Vec<_>>(), vec![120, 121, 122]);
    let manifest_end = rows.iter().map(|r| r.base + r.size).max().unwrap();
    assert!(split_position(new[0].log_position).1 > manifest_end);
    // Old data from the object store, new data locally.
    let all = read_all(&b, "T", q, 0).await;
    assert_eq!(all.len(), 123);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.queue_offset, i as u64);
        let n = if i < 120 { i } else { 1000 + i - 120 };
        assert_eq!(body_of(m), format!("body {n} ").repeat(40));
        assert_eq!(split_position(m.log_position).0, Some(shard));
    }
    assert!(b.tiering_stats().unwrap().cold_gets > 0);

    // b's persist_remote returns only once the row exists.
    let before = c.meta.list_segments(&log_id).await.unwrap();
    assert!(!covers(&before, split_position(new[2].log_position).1));
    b.persist_remote(&new).await.unwrap();
    let after = c.meta.list_segments(&log_id).await.unwrap();
    assert!(covers(&after, split_position(new[2].log_position).1));

    // Node a's late upload is refused (fenced), and so are its appends from then on.
    let late = send(&a, "T", q, 125, 1).await;
    assert!(matches!(a.persist_remote(&late).await, Err(StorageError::Fenced(_))));
    assert!(matches!(a.append(vec![msg("T", q, 126)]).await, Err(StorageError::Fenced(_))));
    assert_eq!(c.meta.list_segments(&log_id).await.unwrap().len(), after.len());
    a.abandon_shard(shard).await.unwrap();
    assert!(!a.is_open(shard));
    assert!(matches!(a.append(vec![msg("T", q, 127)]).await, Err(StorageError::NotOwner { .. })));

    // b still reads exactly its 123 messages.
    assert_eq!(read_all(&b, "T", q, 0).await.len(), 123);
    b.close().await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_uploads_the_tail_and_the_same_node_keeps_its_dir() {
    let c = Cluster::new().await;
    let (shard, q) = (3, queue_in(3));
    let log_id = cluster::shard_log_id(shard);
    let a = c.node("a");
    c.meta.lease(shard, "a", 1);
    a.open_shard(shard, 1).await.unwrap();
    let sent = send(&a, "T", q, 0, 30).await;
    assert!(c.meta.list_segments(&log_id).await.unwrap().is_empty());

    // Hand-over: the whole tail goes up, then appends are refused.
    a.close_shard(shard).await.unwrap();
    let rows = c.meta.list_segments(&log_id).await.unwrap();
    for r in &sent {
        assert!(covers(&rows, split_position(r.log_position).1));
    }
    assert!(matches!(a.append(vec![msg("T", q, 30)]).await, Err(StorageError::NotOwner { .. })));
    assert!(a.shard_stats().is_empty());

    // The same node again, at the next epoch: its local directory is kept (reads are local).
    c.meta.lease(shard, "a", 2);
    a.open_shard(shard, 2).await.unwrap();
    assert_eq!(a.queue_range("T", q), QueueRange { start: 0, end: 30 });
    let first = a.read("T", q, 0, 30, usize::MAX).unwrap();
    assert_eq!(first.len(), 30, "read locally, no cold fetch");
    assert_eq!(a.tiering_stats().unwrap().cold_gets, 0);
    let more = send(&a, "T", q, 30, 2).await;
    assert_eq!(more[0].queue_offset, 30);
    assert!(more[0].log_position > sent[29].log_position);
    let stats = a.shard_stats();
    assert_eq!((stats[0].shard, stats[0].epoch, stats[0].accepting), (shard, 2, true));

    // Another node's epoch in between: the directory is stale and wiped; data comes back
    // from the manifest.
    a.close_shard(shard).await.unwrap();
    c.meta.lease(shard, "a", 4);
    a.open_shard(shard, 4).await.unwrap();
    assert_eq!(a.queue_range("T", q), QueueRange { start: 0, end: 32 });
    assert!(matches!(a.read("T", q, 0, 1, usize::MAX), Err(StorageError::RemoteNotCached { .. })));
    assert_eq!(read_all(&a, "T", q, 0).await.len(), 32);
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_during_a_hand_over_is_left_out_of_the_manifest() {
    let c = Cluster::new().await;
    let (shard, q) = (2, queue_in(2));
    let log_id = cluster::shard_log_id(shard);
    let a = c.node("a");
    c.meta.lease(shard, "a", 1);
    a.open_shard(shard, 1).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..200u64 {
                match a.append(vec![msg("T", q, t * 1000 + n)]).await {
                    Ok(r) => acked.extend(r),
                    Err(StorageError::NotOwner { .. }) => break,
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    a.close_shard(shard).await.unwrap();
    let rows = c.meta.list_segments(&log_id).await.unwrap();
    let mut total = 0;
    for t in tasks {
        for r in t.await.unwrap() {
            assert!(covers(&rows, split_position(r.log_position).1), "acknowledged {r:?} is not in the manifest");
            total += 1;
        }
    }
    // The next owner sees every acknowledged message.
    c.meta.lease(shard, "b", 2);
    let b = c.node("b");
    b.open_shard(shard, 2).await.unwrap();
    assert_eq!(b.queue_range("T", q), QueueRange { start: 0, end: total });
    assert_eq!(read_all(&b, "T", q, 0).await.len() as u64, total);
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_over_several_logs_is_split_and_joined_in_order() {
    let c = Cluster::new().await;
    let a = c.node("a");
    for s in 0..SHARDS {
        c.meta.lease(s, "a", 1);
        a.open_shard(s, 1).await.unwrap();
    }
    let batch: Vec<AppendMessage> =
        (0..12u32).map(|i| if i % 3 == 0 { msg("rmq_sys_x", 0, i.into()) } else { msg("T", i, i.into()) }).collect();
    let targets: Vec<Option<ShardId>> = batch
        .iter()
        .map(|m| (!m.topic.starts_with("rmq_sys_")).then(|| cluster::shard_of(&m.topic, m.queue_id, SHARDS)))
        .collect();
    let results = a.append(batch).await.unwrap();
    assert_eq!(results.len(), 12);
    for (r, t) in results.iter().zip(&targets) {
        assert_eq!(split_position(r.log_position).0, *t);
    }
    let found = a.find_by_message_id("T-4-4").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].log_position, results[4].log_position);
    // A part for a shard not open here fails the call; the other parts stay stored.
    a.close_shard(cluster::shard_of("T", 1, SHARDS)).await.unwrap();
    let err = a.append(vec![msg("rmq_sys_x", 0, 100), msg("T", 1, 100)]).await;
    assert!(matches!(err, Err(StorageError::NotOwner { .. })));
    assert_eq!(a.queue_range("rmq_sys_x", 0).end, 5);
    a.close().await.unwrap();
}

#[tokio::test]
async fn appends_stop_at_the_local_lease_deadline() {
    let c = Cluster::new().await;
    let (shard, q) = (0, queue_in(0));
    let a = c.node("a");
    c.meta.lease(shard, "a", 1);
    a.open_shard(shard, 1).await.unwrap();
    a.set_lease_deadline(shard, Some(std::time::Instant::now() + Duration::from_secs(3600)));
    send(&a, "T", q, 0, 1).await;
    a.set_lease_deadline(shard, Some(std::time::Instant::now()));
    assert!(matches!(a.append(vec![msg("T", q, 1)]).await, Err(StorageError::NotOwner { .. })));
    assert_eq!(a.read("T", q, 0, 10, usize::MAX).unwrap().len(), 1, "reads go on");
    a.set_lease_deadline(shard, None);
    send(&a, "T", q, 1, 1).await;
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_partitioned_owner_acknowledged_but_never_uploaded_is_published_again_when_it_gets_the_shard_back() {
    salvage_case(false).await;
}

/// The same, when a crash cut the salvage short after the directory was moved aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salvage_cut_short_by_a_crash_resumes_at_the_next_open() {
    salvage_case(true).await;
}

async fn salvage_case(crashed_mid_salvage: bool) {
    let c = Cluster::new().await;
    let (shard, q) = (1, queue_in(1));
    let a = c.node("a");
    c.meta.lease(shard, "a", 1);
    a.open_shard(shard, 1).await.unwrap();
    let sent = send(&a, "T", q, 0, 40).await;
    a.persist_remote(&sent).await.unwrap();
    // Acknowledged locally (local durability), never uploaded: a is cut off, then loses the lease.
    send(&a, "T", q, 500, 5).await;
    a.abandon_shard(shard).await.unwrap();

    // b owns it meanwhile and hands it back gracefully.
    c.meta.lease(shard, "b", 2);
    let b = c.node("b");
    b.open_shard(shard, 2).await.unwrap();
    send(&b, "T", q, 1000, 3).await;
    b.close_shard(shard).await.unwrap();

    let shards_dir = c.dir.path().join("a").join("shards");
    if crashed_mid_salvage {
        std::fs::rename(shards_dir.join("shard-0001"), shards_dir.join("shard-0001.stale")).unwrap();
    }
    // a again, two epochs later: its directory is stale, its five messages come back once.
    c.meta.lease(shard, "a", 3);
    a.open_shard(shard, 3).await.unwrap();
    let all = read_all(&a, "T", q, 0).await;
    let bodies: Vec<String> = all.iter().map(body_of).collect();
    assert_eq!(all.len(), 48, "40 uploaded by a, 3 by b, 5 salvaged");
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.queue_offset, i as u64);
    }
    for n in (0..40).chain(1000..1003).chain(500..505) {
        let body = format!("body {n} ").repeat(40);
        assert_eq!(bodies.iter().filter(|b| **b == body).count(), 1, "message {n} once");
    }
    // Salvaged ones come after b's, at new offsets; the stale directory is gone.
    assert_eq!(bodies[43], "body 500 ".repeat(40));
    assert!(!shards_dir.join("shard-0001.stale").exists());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// System topics (the consumer journal) live in the home log, and their receive records
/// (`append_written`) reach its early answer: with the home log's next `fdatasync` failing,
/// `append_written` is answered where `append` reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_written_of_system_topics_is_forwarded_to_the_home_log() {
    let cluster = Cluster::new().await;
    let config =
        StorageConfig { flush: crate::storage::FlushMode::Sync, ..StorageConfig::new(cluster.dir.path().join("home")) };
    let home = crate::storage::local::CommitLog::open(config).unwrap();
    let settings = ShardSettings {
        shards: SHARDS,
        dir: cluster.dir.path().join("a").join("shards"),
        storage: StorageConfig::new(cluster.dir.path().join("unused")),
        tiering: TieringSettings { prefix: "tier".into(), ..TieringSettings::default() },
        node_id: "a".to_string(),
    };
    let log = ShardedLog::new(home.clone(), cluster.store.clone(), cluster.meta.clone(), settings);
    home.assert_answers_written_early(log.as_ref(), |n| msg(&format!("{SYSTEM_TOPIC_PREFIX}journal"), 0, n)).await;
}
