//! Tests of the tiering engine on a real commit log, a `DirStore` (wrapped in a double that
//! injects transient failures and counts requests) and the SQLite manifest.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::upload::{merged_object_key, object_key, parse_object_key};
use super::*;
use crate::metadata::sqlite::SqliteMetadataStore;
use crate::storage::object::dir::DirStore;
use crate::storage::object::{ObjectMeta, ObjectResult};
use crate::storage::{Properties, StorageConfig};

/// A `DirStore` that fails `put`s (Transient) while `fail_puts` is set and counts GETs.
struct Flaky {
    inner: DirStore,
    fail_puts: AtomicBool,
    puts: AtomicU64,
    gets: AtomicU64,
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put(&self, key: &str, parts: Vec<Bytes>) -> ObjectResult<()> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        if self.fail_puts.load(Ordering::Relaxed) {
            return Err(ObjectError::Transient("503 SlowDown (injected)".into()));
        }
        self.inner.put(key, parts).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> ObjectResult<Bytes> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(key, range).await
    }
    async fn delete(&self, key: &str) -> ObjectResult<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> ObjectResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    log: Arc<CommitLog>,
    store: Arc<Flaky>,
    meta: Arc<SqliteMetadataStore>,
    objects: std::path::PathBuf,
}

const QUEUES: u32 = 3;

async fn setup(messages: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path().join("store"));
    config.segment_size = 64 * 1024;
    config.file_reserved_time = Duration::ZERO;
    config.retention_interval = Duration::from_secs(3600);
    let log = CommitLog::open(config).unwrap();
    // Nothing may go before the tiered log takes over (as server.rs does).
    log.set_retention_limit(Some(0));
    for i in 0..messages {
        let mut properties = Properties::default();
        properties.push("UNIQ_KEY", format!("id-{i}"));
        let body = Bytes::from(format!("message {i:06} ").repeat(1 + (i as usize % 40)));
        let m = AppendMessage {
            topic: Arc::from(format!("T{}", i % 2).as_str()),
            queue_id: i % QUEUES,
            born_timestamp_ms: 1_000 + i64::from(i),
            flags: i,
            tag_hash: u64::from(i % 5),
            properties,
            body,
        };
        log.append(vec![m]).await.unwrap();
    }
    let objects = dir.path().join("objects");
    let store = Arc::new(Flaky {
        inner: DirStore::open(&objects).unwrap(),
        fail_puts: AtomicBool::new(false),
        puts: AtomicU64::new(0),
        gets: AtomicU64::new(0),
    });
    let meta = Arc::new(SqliteMetadataStore::in_memory().await.unwrap());
    Setup { _dir: dir, log, store, meta, objects }
}

fn settings() -> TieringSettings {
    TieringSettings {
        log_id: "node-a".into(),
        prefix: "tier".into(),
        upload_interval: Duration::from_secs(3600),
        remote_retention_interval: Duration::from_secs(3600),
        retry_min_backoff: Duration::from_millis(5),
        retry_max_backoff: Duration::from_millis(50),
        orphan_grace: Duration::ZERO,
        read_ahead_bytes: 256 * 1024,
        ..TieringSettings::default()
    }
}

async fn tiered(s: &Setup, settings: TieringSettings) -> Arc<TieredLog> {
    TieredLog::open(s.log.clone(), s.store.clone(), s.meta.clone(), settings).await.unwrap()
}

/// Everything of a queue from `from`, awaiting remote fetches as the broker does.
async fn read_all(log: &TieredLog, topic: &str, queue_id: u32, from: u64) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut next = from;
    let mut fetches = 0;
    loop {
        match log.read(topic, queue_id, next, 64, 1 << 20) {
            Ok(batch) if batch.is_empty() => return out,
            Ok(batch) => {
                next = batch.last().unwrap().queue_offset + 1;
                out.extend(batch);
            }
            Err(StorageError::RemoteNotCached { offset, .. }) => {
                fetches += 1;
                assert!(fetches < 10_000, "fetch loop does not progress");
                log.fetch_remote(topic, queue_id, offset, 1 << 20).await.unwrap();
            }
            Err(e) => panic!("read {topic}/{queue_id}@{next}: {e}"),
        }
    }
}

fn same(a: &StoredMessage, b: &StoredMessage) {
    assert_eq!(
        (
            &a.topic,
            a.queue_id,
            a.queue_offset,
            a.log_position,
            a.store_timestamp_ms,
            a.born_timestamp_ms,
            a.flags,
            a.tag_hash
        ),
        (
            &b.topic,
            b.queue_id,
            b.queue_offset,
            b.log_position,
            b.store_timestamp_ms,
            b.born_timestamp_ms,
            b.flags,
            b.tag_hash
        )
    );
    assert_eq!(a.body, b.body);
    assert_eq!(a.properties.iter().collect::<Vec<_>>(), b.properties.iter().collect::<Vec<_>>());
}

fn drop_local(log: &CommitLog) {
    log.checkpoint().unwrap();
    log.run_retention();
}

#[tokio::test]
async fn uploaded_segments_are_read_back_from_the_object_store_byte_for_byte() {
    let s = setup(3000).await;
    let queues: Vec<(String, u32)> = (0..2).flat_map(|t| (0..QUEUES).map(move |q| (format!("T{t}"), q))).collect();
    let mut expected = Vec::new();
    for (t, q) in &queues {
        expected.push(read_all_local(&s.log, t, *q));
    }
    let sealed = s.log.sealed_segments();
    assert!(sealed.len() >= 10, "only {} sealed segments", sealed.len());

    let log = tiered(&s, settings()).await;
    log.upload_now().await;
    let rows = s.meta.list_segments("node-a").await.unwrap();
    assert_eq!(rows.iter().map(|r| r.base).collect::<Vec<_>>(), sealed.iter().map(|s| s.base).collect::<Vec<_>>());
    for r in &rows {
        assert_eq!(r.object_key, object_key("tier", "node-a", r.base));
        let len = std::fs::metadata(s.objects.join(&r.object_key)).unwrap().len();
        assert_eq!(len, r.object_size);
        assert!(r.first_store_ms <= r.last_store_ms);
    }
    assert_eq!(log.stats().waiting_segments, 0);

    drop_local(&s.log);
    let local_start = s.log.log_start();
    assert_eq!(local_start, sealed.last().map(|s| s.base + s.file_size).unwrap(), "local copies not dropped");
    assert_eq!(s.log.stats().segments, 1);

    let gets_before = s.store.gets.load(Ordering::Relaxed);
    let mut total = 0;
    for ((t, q), want) in queues.iter().zip(&expected) {
        assert_eq!(log.queue_range(t, *q).start, 0, "{t}/{q} start");
        assert!(s.log.queue_range(t, *q).start > 0, "{t}/{q} still local");
        let got = read_all(&log, t, *q, 0).await;
        assert_eq!(got.len(), want.len(), "{t}/{q}");
        for (a, b) in got.iter().zip(want) {
            same(a, b);
        }
        total += got.len();
    }
    assert_eq!(total, 3000);
    let gets = s.store.gets.load(Ordering::Relaxed) - gets_before;
    // Segments (64 KiB) are smaller than the read-ahead (256 KiB): one index GET and one data
    // GET per queue and segment, far below one per message.
    let bound = 2 * (rows.len() * queues.len()) as u64;
    eprintln!("cold read: {total} messages, {} segments, {gets} GETs", rows.len());
    assert!(gets <= bound, "{gets} GETs for {total} messages (bound {bound})");
    assert!(gets < total as u64 / 5, "{gets} GETs for {total} messages");
    // No byte is fetched twice: ranges are aligned blocks, and concurrent misses share a GET.
    let fetched = log.stats().cold_get_bytes;
    let objects: u64 = rows.iter().map(|r| r.object_size).sum();
    assert!(fetched <= objects, "fetched {fetched} bytes of {objects} bytes of objects");
    log.close().await.unwrap();
}

fn read_all_local(log: &CommitLog, topic: &str, queue_id: u32) -> Vec<StoredMessage> {
    let mut out: Vec<StoredMessage> = Vec::new();
    loop {
        let next = out.last().map_or(0, |m| m.queue_offset + 1);
        let batch = log.read(topic, queue_id, next, 256, usize::MAX).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

#[tokio::test]
async fn a_failing_store_is_retried_and_nothing_unuploaded_is_dropped_locally() {
    let s = setup(1500).await;
    s.store.fail_puts.store(true, Ordering::Relaxed);
    let log = tiered(&s, settings()).await;
    let sealed = s.log.sealed_segments();
    let uploader = {
        let log = log.clone();
        tokio::spawn(async move { log.upload_now().await })
    };
    // Wait until the uploader retried a few times.
    while s.store.puts.load(Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(s.meta.list_segments("node-a").await.unwrap().is_empty(), "a row without its object");
    let stats = log.stats();
    assert_eq!(stats.waiting_segments, sealed.len() as u64);
    assert!(stats.waiting_bytes >= sealed.len() as u64 * 64 * 1024);
    assert!(stats.upload_failures >= 4);
    drop_local(&s.log);
    assert_eq!(s.log.log_start(), 0, "local retention dropped a segment not uploaded");
    assert_eq!(s.log.stats().segments, sealed.len() + 1);

    s.store.fail_puts.store(false, Ordering::Relaxed);
    uploader.await.unwrap();
    assert_eq!(s.meta.list_segments("node-a").await.unwrap().len(), sealed.len());
    assert_eq!(log.stats().waiting_segments, 0);
    drop_local(&s.log);
    assert_eq!(s.log.stats().segments, 1);
    assert_eq!(read_all(&log, "T1", 1, 0).await.len(), 250);
    log.close().await.unwrap();
}

#[tokio::test]
async fn orphans_are_swept_and_recorded_objects_kept() {
    let s = setup(600).await;
    let orphan = object_key("tier", "node-a", 999 * 65536);
    let other_log = object_key("tier", "node-b", 0);
    s.store.inner.put(&orphan, vec![Bytes::from_static(b"half")]).await.unwrap();
    s.store.inner.put(&other_log, vec![Bytes::from_static(b"theirs")]).await.unwrap();
    let log = tiered(&s, settings()).await;
    log.upload_now().await;
    log.remote_retention_now().await;
    let keys: Vec<String> = s.store.list("tier/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert!(!keys.contains(&orphan), "orphan kept");
    assert!(keys.contains(&other_log), "another log's object deleted");
    let rows = s.meta.list_segments("node-a").await.unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        assert!(keys.contains(&r.object_key), "recorded object deleted");
    }
    assert_eq!(log.stats().orphans_removed, 1);
    log.close().await.unwrap();
}

#[tokio::test]
async fn remote_retention_deletes_rows_and_objects_and_moves_queue_starts() {
    let s = setup(1200).await;
    let log = tiered(&s, TieringSettings { remote_reserved_time: Duration::ZERO, ..settings() }).await;
    log.upload_now().await;
    // Still local: remote retention leaves it (a segment is never in neither place).
    log.remote_retention_now().await;
    assert!(!s.meta.list_segments("node-a").await.unwrap().is_empty());
    drop_local(&s.log);
    tokio::time::sleep(Duration::from_millis(5)).await;
    log.remote_retention_now().await;
    assert!(s.meta.list_segments("node-a").await.unwrap().is_empty());
    assert!(s.store.list("tier/").await.unwrap().is_empty());
    for q in 0..QUEUES {
        assert_eq!(log.queue_range("T0", q), s.log.queue_range("T0", q));
        let first = log.read("T0", q, 0, 1, 1 << 20).unwrap();
        assert_eq!(first.first().map(|m| m.queue_offset), Some(s.log.queue_range("T0", q).start));
    }
    assert!(log.stats().remote_segments_expired > 0);
    log.close().await.unwrap();
}

#[tokio::test]
async fn the_read_cache_stays_within_its_bound() {
    let s = setup(2000).await;
    let bound = 300 * 1024;
    let log = tiered(&s, TieringSettings { read_cache_bytes: bound, read_ahead_bytes: 64 * 1024, ..settings() }).await;
    log.upload_now().await;
    drop_local(&s.log);
    for q in 0..QUEUES {
        let n = read_all(&log, "T0", q, 0).await.len();
        assert!(n > 300);
        assert!(log.stats().cache_bytes <= bound as u64, "{} cached", log.stats().cache_bytes);
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_restart_keeps_the_manifest_and_uploads_nothing_twice() {
    let s = setup(800).await;
    let log = tiered(&s, settings()).await;
    log.upload_now().await;
    let puts = s.store.puts.load(Ordering::Relaxed);
    drop(log);
    let log = tiered(&s, settings()).await;
    log.upload_now().await;
    assert_eq!(s.store.puts.load(Ordering::Relaxed), puts);
    assert_eq!(log.manifest().len(), s.log.sealed_segments().len());
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_chunks_cover_the_active_segment_and_persist_remote_waits_for_them() {
    let s = setup(1500).await;
    let queues: Vec<(String, u32)> = (0..2).flat_map(|t| (0..QUEUES).map(move |q| (format!("T{t}"), q))).collect();
    let settings = TieringSettings { tail_upload_interval: Some(Duration::from_millis(20)), ..settings() };
    let log = tiered(&s, settings).await;
    // The task uploads sealed segments and the published tail by itself.
    let target = s.log.published_position();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.covered_position() < target {
        assert!(std::time::Instant::now() < deadline, "tail not uploaded in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Concurrent waiters: each resolves only once its record is in the manifest.
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let m = AppendMessage {
                topic: Arc::from("T0"),
                queue_id: i % QUEUES,
                born_timestamp_ms: 5,
                flags: 0,
                tag_hash: 0,
                properties: Properties::default(),
                body: Bytes::from(format!("late {i}")),
            };
            let r = log.append(vec![m]).await.unwrap();
            log.persist_remote(&r).await.unwrap();
            r[0].log_position
        }));
    }
    let rows_for = |rows: &[SegmentRecord], p: u64| rows.iter().any(|r| r.base <= p && p < r.base + r.size);
    for t in tasks {
        let p = t.await.unwrap();
        let rows = s.meta.list_segments("node-a").await.unwrap();
        assert!(rows_for(&rows, p), "position {p} acknowledged before its row exists");
    }
    // Ranges are contiguous within a segment, and some start inside one (chunks).
    let rows = s.meta.list_segments("node-a").await.unwrap();
    assert!(rows.iter().any(|r| r.base % (64 * 1024) != 0), "no chunk of a segment was uploaded");
    // Local retention drops the covered sealed segments; everything reads back the same.
    let mut expected = Vec::new();
    for (t, q) in &queues {
        expected.push(read_all_local(&s.log, t, *q));
    }
    let sealed_before = s.log.sealed_segments().len();
    assert!(sealed_before > 0);
    drop_local(&s.log);
    assert!(s.log.sealed_segments().len() < sealed_before, "covered segments not dropped");
    for ((t, q), want) in queues.iter().zip(&expected) {
        let got = read_all(&log, t, *q, 0).await;
        assert_eq!(got.len(), want.len(), "{t}/{q}");
        for (a, b) in got.iter().zip(want) {
            same(a, b);
        }
    }
    // More traffic, in steps the tail uploads see one by one, until the chunked segment seals.
    let chunked_segment = s.log.published_position() / (64 * 1024);
    let mut i = 0u32;
    let mut steps = Vec::new();
    while s.log.published_position() / (64 * 1024) < chunked_segment + 2 {
        let m = AppendMessage {
            topic: Arc::from("T1"),
            queue_id: i % QUEUES,
            born_timestamp_ms: 6,
            flags: 0,
            tag_hash: 0,
            properties: Properties::default(),
            body: Bytes::from(format!("step {i:05} ").repeat(40)),
        };
        let body = m.body.clone();
        let r = log.append(vec![m]).await.unwrap();
        steps.push((i % QUEUES, r[0].queue_offset, body));
        i += 1;
        if i.is_multiple_of(20) {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    // Once sealed and wholly up, a segment's chunks are merged into one object and one row.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = s.meta.list_segments("node-a").await.unwrap();
        let split = s
            .log
            .sealed_segments()
            .iter()
            .filter(|g| rows.iter().filter(|r| r.base >= g.base && r.base < g.base + g.file_size).count() > 1)
            .count();
        if split == 0 {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "{split} sealed segments still in chunks");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(log.stats().merged_chunks > 1, "nothing was merged");
    let merged = rows.iter().filter(|r| r.object_key == merged_object_key("tier", "node-a", r.base, r.base + r.size));
    assert!(merged.count() > 0);
    for r in &rows {
        let plain = object_key("tier", "node-a", r.base);
        assert!(r.object_key == plain || r.object_key == merged_object_key("tier", "node-a", r.base, r.base + r.size));
        assert_eq!(std::fs::metadata(s.objects.join(&r.object_key)).unwrap().len(), r.object_size);
    }
    // The chunk objects have no row now: the sweep deletes them (grace 0 here); every row's
    // object stays.
    // Quiet first: the tail is all up (nothing more is appended), so no upload is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.covered_position() < s.log.published_position() {
        assert!(std::time::Instant::now() < deadline, "tail not uploaded in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = s.meta.list_segments("node-a").await.unwrap();
    log.sweep_now().await;
    let mut objects = Vec::new();
    let mut stack = vec![s.objects.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                objects.push(e.path().strip_prefix(&s.objects).unwrap().display().to_string());
            }
        }
    }
    for r in &rows {
        assert!(objects.contains(&r.object_key), "the object of row {} is gone", r.object_key);
    }
    for m in rows.iter().filter(|r| r.object_key == merged_object_key("tier", "node-a", r.base, r.base + r.size)) {
        for o in &objects {
            let inside = parse_object_key("tier", "node-a", o).is_some_and(|b| b >= m.base && b < m.base + m.size);
            assert!(
                !inside || *o == m.object_key,
                "chunk object {o} of merged segment {} left after the sweep",
                m.object_key
            );
        }
    }
    // Local copies go; the merged objects serve every read.
    drop_local(&s.log);
    let cold_gets = log.stats().cold_gets;
    for q in 0..QUEUES {
        let want: Vec<&(u32, u64, Bytes)> = steps.iter().filter(|(sq, _, _)| *sq == q).collect();
        let got = read_all(&log, "T1", q, want[0].1).await;
        assert_eq!(got.len(), want.len(), "T1/{q}");
        for (m, (_, offset, body)) in got.iter().zip(want) {
            assert_eq!((m.queue_offset, &m.body), (*offset, body));
        }
    }
    assert!(log.stats().cold_gets > cold_gets, "read from the object store");
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_fenced_manifest_write_fences_the_log() {
    struct Refusing(SqliteMetadataStore);
    #[async_trait]
    impl MetadataStore for Refusing {
        async fn create_topic(
            &self,
            t: &crate::metadata::TopicRecord,
        ) -> crate::metadata::MetadataResult<crate::metadata::TopicRecord> {
            self.0.create_topic(t).await
        }
        async fn topic(&self, n: &str) -> crate::metadata::MetadataResult<Option<crate::metadata::TopicRecord>> {
            self.0.topic(n).await
        }
        async fn list_topics(&self) -> crate::metadata::MetadataResult<Vec<crate::metadata::TopicRecord>> {
            self.0.list_topics().await
        }
        async fn delete_topic(&self, n: &str) -> crate::metadata::MetadataResult<bool> {
            self.0.delete_topic(n).await
        }
        async fn create_group(
            &self,
            g: &crate::metadata::GroupRecord,
        ) -> crate::metadata::MetadataResult<crate::metadata::GroupRecord> {
            self.0.create_group(g).await
        }
        async fn put_group(&self, g: &crate::metadata::GroupRecord) -> crate::metadata::MetadataResult<()> {
            self.0.put_group(g).await
        }
        async fn retire_group(&self, n: &str) -> crate::metadata::MetadataResult<bool> {
            self.0.retire_group(n).await
        }
        async fn group(&self, n: &str) -> crate::metadata::MetadataResult<Option<crate::metadata::GroupRecord>> {
            self.0.group(n).await
        }
        async fn list_groups(&self) -> crate::metadata::MetadataResult<Vec<crate::metadata::GroupRecord>> {
            self.0.list_groups().await
        }
        async fn load_progress(&self) -> crate::metadata::MetadataResult<(Vec<crate::metadata::ProgressRecord>, u64)> {
            self.0.load_progress().await
        }
        async fn save_progress(
            &self,
            b: &[crate::metadata::ProgressRecord],
            o: u64,
        ) -> crate::metadata::MetadataResult<()> {
            self.0.save_progress(b, o).await
        }
        async fn delete_progress(&self, g: &str) -> crate::metadata::MetadataResult<u64> {
            self.0.delete_progress(g).await
        }
        async fn put_segment(&self, _: &SegmentRecord, fence: Option<&Fence>) -> crate::metadata::MetadataResult<()> {
            Err(crate::metadata::MetadataError::Fenced(format!("{fence:?} is not the lease holder")))
        }
        async fn list_segments(&self, l: &str) -> crate::metadata::MetadataResult<Vec<SegmentRecord>> {
            self.0.list_segments(l).await
        }
        async fn delete_segment(&self, l: &str, b: u64) -> crate::metadata::MetadataResult<bool> {
            self.0.delete_segment(l, b).await
        }
        async fn secret(&self, n: &str, c: &[u8]) -> crate::metadata::MetadataResult<Vec<u8>> {
            self.0.secret(n, c).await
        }
        async fn close(&self) {
            self.0.close().await
        }
    }
    let s = setup(10).await;
    let meta = Arc::new(Refusing(SqliteMetadataStore::in_memory().await.unwrap()));
    let settings = TieringSettings { fence: Some(Fence { node_id: "a".into(), epoch: 1 }), ..settings() };
    let log = TieredLog::open(s.log.clone(), s.store.clone(), meta, settings).await.unwrap();
    let r = log
        .append(vec![AppendMessage {
            topic: Arc::from("T0"),
            queue_id: 0,
            born_timestamp_ms: 5,
            flags: 0,
            tag_hash: 0,
            properties: Properties::default(),
            body: Bytes::from_static(b"x"),
        }])
        .await
        .unwrap();
    assert!(matches!(log.persist_remote(&r).await, Err(StorageError::Fenced(_))));
    assert!(log.is_fenced());
    assert!(matches!(log.append(Vec::new()).await, Err(StorageError::Fenced(_))));
    assert!(matches!(log.upload_all().await, Err(StorageError::Fenced(_))));
    log.close().await.unwrap();
}

/// The consumer journal's receive records (`append_written`) reach the local log's early
/// answer through the tiered log, not `append`'s wait for the sync: with the next group
/// commit's `fdatasync` failing, `append_written` is answered (the local log rolls the batch
/// back, its own test shows) where `append` reports the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_written_is_forwarded_to_the_local_logs_early_answer() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        StorageConfig { flush: crate::storage::FlushMode::Sync, ..StorageConfig::new(dir.path().join("store")) };
    let local = CommitLog::open(config).unwrap();
    let store = Arc::new(DirStore::open(dir.path().join("objects")).unwrap());
    let meta = Arc::new(SqliteMetadataStore::in_memory().await.unwrap());
    let log = TieredLog::open(local.clone(), store, meta, settings()).await.unwrap();
    let record = |n: u64| AppendMessage {
        topic: Arc::from("rmq_sys_journal"),
        queue_id: 0,
        born_timestamp_ms: 1,
        flags: 0,
        tag_hash: 0,
        properties: Properties::default(),
        body: Bytes::from(format!("record {n}")),
    };
    local.assert_answers_written_early(log.as_ref(), record).await;
    log.close().await.unwrap();
}
