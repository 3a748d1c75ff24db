//! Tests of the whole commit log: round trips, restarts, corruption of the tail, failed writes
//! and fsyncs, retention, concurrency. The process-level crash test is in `crash_test.rs`.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::storage::Properties;

pub(crate) fn test_config(dir: &Path) -> StorageConfig {
    StorageConfig {
        segment_size: 64 * 1024,
        // Deterministic tests: checkpoints and retention only when a test asks.
        checkpoint_interval: Duration::from_secs(3600),
        retention_interval: Duration::from_secs(3600),
        queue_index_entries_per_file: 1024,
        key_index_memtable_entries: 64,
        ..StorageConfig::new(dir)
    }
}

pub(crate) fn message(topic: &str, queue_id: u32, body: impl Into<Bytes>, id: &str, keys: &str) -> AppendMessage {
    let mut properties = Properties::new();
    properties.push(keys::UNIQ_KEY, id);
    if !keys.is_empty() {
        properties.push(keys::KEYS, keys);
    }
    properties.push(keys::TAGS, "tagA");
    AppendMessage {
        topic: topic.into(),
        queue_id,
        born_timestamp_ms: 1_700_000_000_000,
        flags: 5,
        tag_hash: 99,
        properties,
        body: body.into(),
    }
}

fn body_for(queue_id: u32, i: u64, len: usize) -> Bytes {
    let mut b = format!("q{queue_id}-m{i}-").into_bytes();
    while b.len() < len {
        b.push(b'a' + (b.len() % 26) as u8);
    }
    Bytes::from(b)
}

async fn append_one(log: &CommitLog, m: AppendMessage) -> StorageResult<AppendResult> {
    let mut r = log.append(vec![m]).await?;
    Ok(r.remove(0))
}

/// Spawns one task per offset in `ids`, each appending a 100-byte message (id `m<i>`) to queue
/// `t`/0.
fn spawn_appends(
    log: &Arc<CommitLog>,
    ids: std::ops::Range<u64>,
) -> Vec<tokio::task::JoinHandle<StorageResult<AppendResult>>> {
    ids.map(|i| {
        let log = log.clone();
        tokio::spawn(async move { append_one(&log, message("t", 0, body_for(0, i, 100), &format!("m{i}"), "")).await })
    })
    .collect()
}

/// The queue offsets the appending tasks got, in order.
async fn sorted_offsets(tasks: Vec<tokio::task::JoinHandle<StorageResult<AppendResult>>>) -> Vec<u64> {
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap().unwrap().queue_offset);
    }
    offsets.sort_unstable();
    offsets
}

fn read_all(log: &CommitLog, topic: &str, queue_id: u32) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut offset = log.queue_range(topic, queue_id).start;
    loop {
        let batch = log.read(topic, queue_id, offset, 7, 1 << 20).unwrap();
        if batch.is_empty() {
            return out;
        }
        offset = batch.last().unwrap().queue_offset + 1;
        out.extend(batch);
    }
}

/// Queues 0–3 of topic `t` hold exactly the appended `(queue, offset, body)`s, in offset order.
fn assert_queues_hold(log: &CommitLog, appended: &[(u32, u64, Bytes)]) {
    for q in 0..4u32 {
        let stored = read_all(log, "t", q);
        let mut mine: Vec<_> = appended.iter().filter(|(qq, _, _)| *qq == q).collect();
        mine.sort_by_key(|(_, o, _)| *o);
        assert_eq!(stored.len(), mine.len());
        for (s, (_, o, b)) in stored.iter().zip(mine) {
            assert_eq!((s.queue_offset, &s.body), (*o, b));
        }
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// The segment file holding a log position and the offset inside it.
fn locate(dir: &Path, position: u64) -> (PathBuf, u64) {
    for p in segment_files(dir).into_iter().rev() {
        let base = segment::parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
        if base <= position {
            return (p, position - base);
        }
    }
    panic!("no segment for {position}");
}

#[tokio::test]
async fn append_read_and_lookups_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    assert_eq!(log.queue_range("t", 0), QueueRange { start: 0, end: 0 });
    let mut batch = Vec::new();
    for i in 0..10u64 {
        batch.push(message(
            "t",
            (i % 2) as u32,
            body_for((i % 2) as u32, i, 100),
            &format!("id-{i}"),
            &format!("k{i} shared"),
        ));
    }
    let results = log.append(batch).await.unwrap();
    assert_eq!(results.len(), 10);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.queue_offset, i as u64 / 2);
    }
    assert_eq!(log.queue_range("t", 0), QueueRange { start: 0, end: 5 });
    assert_eq!(log.queue_range("t", 1), QueueRange { start: 0, end: 5 });
    let q0 = read_all(&log, "t", 0);
    assert_eq!(q0.len(), 5);
    for (n, m) in q0.iter().enumerate() {
        let i = n as u64 * 2;
        assert_eq!(m.queue_offset, n as u64);
        assert_eq!(m.body, body_for(0, i, 100));
        assert_eq!(m.properties.get(keys::UNIQ_KEY), Some(format!("id-{i}").as_str()));
        assert_eq!((m.flags, m.tag_hash, m.born_timestamp_ms), (5, 99, 1_700_000_000_000));
        assert_eq!(m.log_position, results[i as usize].log_position);
        assert_eq!(m.store_timestamp_ms, results[i as usize].store_timestamp_ms);
    }
    // max_bytes: at least one message, then stop before exceeding.
    assert_eq!(log.read("t", 0, 0, 100, 1).unwrap().len(), 1);
    assert_eq!(log.read("t", 0, 0, 100, 250).unwrap().len(), 2);
    assert!(log.read("t", 0, 5, 100, 1 << 20).unwrap().is_empty());
    assert!(log.read("nope", 0, 0, 100, 1 << 20).unwrap().is_empty());

    let found = log.find_by_message_id("id-3").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].queue_id, found[0].queue_offset), (1, 1));
    assert!(log.find_by_message_id("id-x").unwrap().is_empty());
    let shared = log.find_by_key("t", "shared", 3).unwrap();
    assert_eq!(
        shared.iter().map(|m| m.properties.get(keys::UNIQ_KEY).unwrap()).collect::<Vec<_>>(),
        ["id-7", "id-8", "id-9"],
        "newest last, at most max"
    );
    assert_eq!(log.find_by_key("t", "k4", 10).unwrap().len(), 1);
    assert!(log.find_by_key("other-topic", "k4", 10).unwrap().is_empty());
    log.close().await.unwrap();
    assert!(matches!(log.append(vec![message("t", 0, "x", "y", "")]).await, Err(StorageError::ShuttingDown)));
}

#[tokio::test]
async fn bodies_are_zero_copy_slices_of_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    append_one(&log, message("t", 0, vec![7u8; 1000], "a", "")).await.unwrap();
    append_one(&log, message("t", 0, vec![8u8; 1000], "b", "")).await.unwrap();
    let msgs = log.read("t", 0, 0, 2, 1 << 20).unwrap();
    let (a, b) = (msgs[0].body.as_ptr() as usize, msgs[1].body.as_ptr() as usize);
    // Both point into the same mapping, one record apart.
    assert_eq!(b - a, msgs[1].log_position as usize - msgs[0].log_position as usize);
}

#[tokio::test]
async fn restart_after_close_and_after_crash_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected: HashMap<u32, Vec<Bytes>> = HashMap::new();
    for round in 0..3u64 {
        let log = CommitLog::open(test_config(dir.path())).unwrap();
        for q in 0..3u32 {
            let have = expected.get(&q).map_or(0, |v| v.len()) as u64;
            assert_eq!(log.queue_range("t", q), QueueRange { start: 0, end: have });
        }
        // Enough data to roll over several 64 KiB segments.
        for i in 0..150u64 {
            let q = (i % 3) as u32;
            let body = body_for(q, round * 1000 + i, 700);
            let r = append_one(&log, message("t", q, body.clone(), &format!("r{round}-{i}"), "")).await.unwrap();
            let v = expected.entry(q).or_default();
            assert_eq!(r.queue_offset, v.len() as u64);
            v.push(body);
        }
        if round == 1 {
            log.close().await.unwrap();
        }
        // round 0 and 2: dropped without close = crash after the last acknowledged append.
        drop(log);
    }
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    assert!(segment_files(dir.path()).len() > 3);
    for (q, bodies) in &expected {
        let got = read_all(&log, "t", *q);
        assert_eq!(got.len(), bodies.len());
        for (i, (m, b)) in got.iter().zip(bodies).enumerate() {
            assert_eq!(m.queue_offset, i as u64);
            assert_eq!(&m.body, b);
        }
    }
    assert_eq!(log.find_by_message_id("r0-42").unwrap().len(), 1);
    assert_eq!(log.find_by_message_id("r2-149").unwrap().len(), 1);
}

#[tokio::test]
async fn checkpoint_bounds_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    for i in 0..50u64 {
        append_one(&log, message("t", 0, body_for(0, i, 500), &format!("id{i}"), "")).await.unwrap();
    }
    log.checkpoint().unwrap();
    let ckpt = Checkpoint::load(dir.path()).unwrap().unwrap();
    assert_eq!(ckpt.log_position, log.stats().durable_position);
    for i in 50..60u64 {
        append_one(&log, message("t", 0, body_for(0, i, 500), &format!("id{i}"), "")).await.unwrap();
    }
    drop(log);
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    assert_eq!(log.queue_range("t", 0).end, 60);
    assert_eq!(read_all(&log, "t", 0).len(), 60);
    for i in [0u64, 49, 50, 59] {
        assert_eq!(log.find_by_message_id(&format!("id{i}")).unwrap().len(), 1, "id{i}");
    }
}

/// Appends 20 messages, crashes, damages the tail with `damage`, reopens: the log must end at
/// the last good record, and appends must continue right after it.
async fn tail_damage_case(damage: impl FnOnce(&Path, &[AppendResult]), expect_survivors: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    {
        let log = CommitLog::open(test_config(dir.path())).unwrap();
        for i in 0..20u64 {
            results.push(append_one(&log, message("t", 0, body_for(0, i, 300), &format!("id{i}"), "")).await.unwrap());
        }
    } // crash: no checkpoint past the start
    damage(dir.path(), &results);
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    assert_eq!(log.queue_range("t", 0), QueueRange { start: 0, end: expect_survivors as u64 });
    let got = read_all(&log, "t", 0);
    assert_eq!(got.len(), expect_survivors);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.body, body_for(0, i as u64, 300));
    }
    assert!(log.find_by_message_id(&format!("id{}", expect_survivors)).unwrap().is_empty());
    // Appends continue at the next offset, at the cut position.
    let r = append_one(&log, message("t", 0, body_for(0, 1000, 300), "new", "")).await.unwrap();
    assert_eq!(r.queue_offset, expect_survivors as u64);
    // At the cut (or in the next segment if the cut file became too short).
    assert!(r.log_position >= results[expect_survivors].log_position);
    drop(log);
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    let got = read_all(&log, "t", 0);
    assert_eq!(got.len(), expect_survivors + 1);
    assert_eq!(got.last().unwrap().body, body_for(0, 1000, 300));
}

#[tokio::test]
async fn truncated_last_record_is_cut() {
    tail_damage_case(
        |dir, results| {
            let (path, off) = locate(dir, results[19].log_position);
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(off + 100).unwrap(); // half a record, and the file is shorter
        },
        19,
    )
    .await;
}

#[tokio::test]
async fn flipped_byte_in_the_tail_is_cut() {
    tail_damage_case(
        |dir, results| {
            let (path, off) = locate(dir, results[17].log_position);
            let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off + 150).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], off + 150).unwrap();
        },
        17,
    )
    .await;
}

#[tokio::test]
async fn zero_filled_tail_is_cut() {
    tail_damage_case(
        |dir, results| {
            let (path, off) = locate(dir, results[15].log_position);
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(&vec![0u8; 5 * 400], off).unwrap();
        },
        15,
    )
    .await;
}

#[tokio::test]
async fn zeroed_gap_with_valid_records_after_it_is_cut_too() {
    // A torn multi-page write: a middle page never reached the disk, later ones did.
    tail_damage_case(
        |dir, results| {
            let (path, off) = locate(dir, results[12].log_position);
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(&[0u8; 50], off).unwrap();
        },
        12,
    )
    .await;
}

#[tokio::test]
async fn corruption_below_the_checkpoint_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    let mut results = Vec::new();
    for i in 0..10u64 {
        results.push(append_one(&log, message("t", 0, body_for(0, i, 300), &format!("id{i}"), "")).await.unwrap());
    }
    // Bit rot under a running log: the read path checks CRCs.
    let (path, off) = locate(dir.path(), results[4].log_position);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    f.write_all_at(b"X", off + 200).unwrap();
    let first = log.read("t", 0, 0, 10, 1 << 20).unwrap();
    assert_eq!(first.len(), 4, "stops before the damaged record");
    assert!(matches!(log.read("t", 0, 4, 10, 1 << 20), Err(StorageError::Corrupted { .. })));
    assert_eq!(log.read("t", 0, 5, 10, 1 << 20).unwrap().len(), 5);
    assert!(log.find_by_message_id("id4").unwrap().is_empty());
    log.close().await.unwrap();
    // Below the checkpoint recovery does not rescan; reads keep refusing the bad record.
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    assert!(matches!(log.read("t", 0, 4, 10, 1 << 20), Err(StorageError::Corrupted { .. })));
    assert_eq!(log.queue_range("t", 0).end, 10);
}

/// `Sync` mode with segments big enough for the zeroer (`zero_ahead.rs`) to run.
fn zeroing_config(dir: &Path) -> StorageConfig {
    StorageConfig { segment_size: 8 << 20, flush: FlushMode::Sync, zero_ahead_bytes: 2 << 20, ..test_config(dir) }
}

/// Fails unless the zeroer runs (ext4 or XFS under `TMPDIR`), then waits until it has zeroed
/// a stretch ahead of the log's end.
async fn zeroer_running(log: &CommitLog) {
    let z = log.shared.zero_ahead.as_ref().unwrap_or_else(|| {
        panic!(
            "the zeroer did not start: {} is not on ext4 or XFS (set TMPDIR to a directory that is)",
            log.shared.config.dir.display()
        )
    });
    let end = log.shared.written.load(Ordering::Acquire);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while z.zeroed_to() < end + zero_ahead::GAP + zero_ahead::PIECE as u64 {
        assert!(std::time::Instant::now() < deadline, "nothing zeroed ahead of {end} after 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn failed_writes_fail_the_batch_and_leave_no_trace() {
    failed_writes_case(test_config, false).await;
    failed_writes_case(zeroing_config, true).await;
}

async fn failed_writes_case(config: fn(&Path) -> StorageConfig, zeroing: bool) {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(config(dir.path())).unwrap();
    append_one(&log, message("t", 0, "a", "a", "")).await.unwrap();
    if zeroing {
        zeroer_running(&log).await;
    }
    log.faults().disk_full.store(true, Ordering::SeqCst);
    log.faults().fail_writes.store(1, Ordering::SeqCst);
    let err = log.append(vec![message("t", 0, "b", "b", ""), message("t", 1, "b1", "b1", "")]).await.unwrap_err();
    assert!(matches!(err, StorageError::DiskFull(_)), "{err}");
    assert_eq!(log.queue_range("t", 0).end, 1);
    assert_eq!(log.queue_range("t", 1).end, 0);
    log.faults().disk_full.store(false, Ordering::SeqCst);
    log.faults().fail_writes.store(1, Ordering::SeqCst);
    assert!(matches!(append_one(&log, message("t", 0, "c", "c", "")).await, Err(StorageError::Io { .. })));
    // Space is back: appends succeed, offsets are dense.
    let r = append_one(&log, message("t", 0, "d", "d", "")).await.unwrap();
    assert_eq!(r.queue_offset, 1);
    assert_eq!(append_one(&log, message("t", 1, "e", "e", "")).await.unwrap().queue_offset, 0);
    assert!(log.find_by_message_id("b").unwrap().is_empty());
    drop(log);
    let log = CommitLog::open(config(dir.path())).unwrap();
    let bodies: Vec<_> = read_all(&log, "t", 0).into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, [Bytes::from("a"), Bytes::from("d")]);
    assert_eq!(read_all(&log, "t", 1).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_fails_every_unsynced_append_and_recovers() {
    failed_fsync_case(test_config, false).await;
    failed_fsync_case(zeroing_config, true).await;
}

async fn failed_fsync_case(config: fn(&Path) -> StorageConfig, zeroing: bool) {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(config(dir.path())).unwrap();
    for i in 0..5u64 {
        append_one(&log, message("t", 0, body_for(0, i, 100), &format!("ok{i}"), "")).await.unwrap();
    }
    if zeroing {
        zeroer_running(&log).await;
    }
    log.faults().fail_syncs.store(1, Ordering::SeqCst);
    // Concurrent appends: some land in the batch whose fsync fails, some in batches after it.
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            append_one(&log, message("t", 0, body_for(0, 100 + i, 100), &format!("c{i}"), "")).await
        }));
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => ok.push(r),
            Err(StorageError::Io { .. }) => failed += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(failed >= 1);
    // Every success has a distinct offset, and offsets stay dense.
    let mut offsets: Vec<u64> = ok.iter().map(|r| r.queue_offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (5..5 + ok.len() as u64).collect::<Vec<_>>());
    let r = append_one(&log, message("t", 0, "after", "after", "")).await.unwrap();
    assert_eq!(r.queue_offset, 5 + ok.len() as u64);
    let check = |log: &CommitLog| {
        let all = read_all(log, "t", 0);
        assert_eq!(all.len(), 6 + ok.len());
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.queue_offset, i as u64);
        }
        for r in &ok {
            assert_eq!(all[r.queue_offset as usize].log_position, r.log_position);
        }
    };
    check(&log);
    drop(log);
    let log = CommitLog::open(config(dir.path())).unwrap();
    check(&log);
}

/// `append_written` (the consumer journal's receive records) is answered after the write,
/// before the group commit's `fdatasync`: a batch whose sync fails was already answered OK,
/// and the rollback still drops it; an `append` after it covers it by its own sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_written_is_answered_before_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig { flush: FlushMode::Sync, ..test_config(dir.path()) };
    let log = CommitLog::open(config.clone()).unwrap();
    log.faults().fail_syncs.store(1, Ordering::SeqCst);
    let written = log.append_written(vec![message("t", 0, "journal", "w0", "")]).await.unwrap();
    assert_eq!(written[0].queue_offset, 0);
    // The batch's sync failed after the answer: rolled back, offset 0 is taken again.
    let r = append_one(&log, message("t", 0, "after a failed sync", "s0", "")).await.unwrap();
    assert_eq!(r.queue_offset, 0);
    assert_eq!(log.faults().fail_syncs.load(Ordering::SeqCst), 0);

    let w = log.append_written(vec![message("t", 0, "journal", "w1", "")]).await.unwrap();
    assert_eq!(w[0].queue_offset, 1);
    let r = append_one(&log, message("t", 0, "synced after it", "s1", "")).await.unwrap();
    assert_eq!(r.queue_offset, 2);
    let bodies = |log: &CommitLog| read_all(log, "t", 0).iter().map(|m| m.body.clone()).collect::<Vec<_>>();
    let expected = vec![Bytes::from("after a failed sync"), Bytes::from("journal"), Bytes::from("synced after it")];
    assert_eq!(bodies(&log), expected);
    drop(log);
    let log = CommitLog::open(config).unwrap();
    assert_eq!(bodies(&log), expected);
}

#[tokio::test]
async fn oversized_records_are_rejected_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    let big = message("t", 0, vec![0u8; 70 * 1024], "big", "");
    let small = message("t", 0, "small", "small", "");
    let (a, b) = tokio::join!(log.append(vec![big]), log.append(vec![small]));
    assert!(matches!(a, Err(StorageError::RecordTooLarge { .. })));
    assert_eq!(b.unwrap()[0].queue_offset, 0);
    // Properties the encoding cannot represent are refused, not cut.
    let mut odd = message("t", 0, "x", "odd", "");
    odd.properties.push("k".repeat(70_000), "v");
    assert!(matches!(log.append(vec![odd]).await, Err(StorageError::Io { .. })));
    // A record that nearly fills a segment still fits (in a fresh one).
    append_one(&log, message("t", 0, vec![1u8; 60 * 1024], "fits", "")).await.unwrap();
    assert_eq!(read_all(&log, "t", 0).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_dense_offsets_and_their_own_bodies() {
    concurrent_appenders(FlushMode::Sync).await;
    concurrent_appenders(FlushMode::Async { interval: Duration::from_millis(5) }).await;
}

async fn concurrent_appenders(flush: FlushMode) {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(StorageConfig { flush, ..test_config(dir.path()) }).unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..40u64 {
                let q = (t + i as u32) % 4;
                let body = body_for(q, u64::from(t) * 1000 + i, 200);
                let r = append_one(&log, message("t", q, body.clone(), &format!("{t}-{i}"), "")).await.unwrap();
                mine.push((q, r.queue_offset, body));
                // Readers run alongside the writer.
                let _ = log.read("t", q, 0, 16, 1 << 20).unwrap();
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_queues_hold(&log, &all);
    let stats = log.stats();
    match flush {
        FlushMode::Sync => assert_eq!(stats.inline_batches, 0, "Sync mode: every append goes to the writer thread"),
        FlushMode::Async { .. } => assert!(stats.inline_batches > 0, "Async mode: no append was written inline"),
    }
    assert!(stats.batches_written >= stats.inline_batches);
}

/// On a single-threaded runtime (as on the gRPC I/O threads) the appends its tasks make in one
/// scheduler pass form one batch: in `Async` mode written on the runtime, in `Sync` mode handed
/// to the writer thread as one message (one `fdatasync`). Each is answered with its own offsets,
/// readable and durable across a restart like appends written alone.
#[tokio::test]
async fn appends_of_one_scheduler_pass_are_written_as_one_batch() {
    coalesce::dedicate_thread();
    for flush in [FlushMode::Async { interval: Duration::from_millis(5) }, FlushMode::Sync] {
        one_pass_one_batch(flush).await;
    }
}

async fn one_pass_one_batch(flush: FlushMode) {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig { flush, ..test_config(dir.path()) };
    let log = CommitLog::open(config.clone()).unwrap();
    // Spawned before any runs: all 40 are ready in the same pass.
    let tasks: Vec<_> = (0..40u64)
        .map(|i| {
            let log = log.clone();
            let q = (i % 4) as u32;
            tokio::spawn(async move {
                let body = body_for(q, i, 300);
                let r = append_one(&log, message("t", q, body.clone(), &format!("m{i}"), "")).await.unwrap();
                (q, r.queue_offset, body)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    // Both modes write the pass on the runtime; in `Sync` mode the writer thread syncs it.
    let stats = log.stats();
    assert!(stats.batches_written <= 2, "{flush:?}: {} batches for 40 appends of one pass", stats.batches_written);
    assert_eq!(
        stats.inline_batches, stats.batches_written,
        "{flush:?}: written on the runtime, not by the writer thread"
    );
    if matches!(flush, FlushMode::Sync) {
        assert!(
            stats.fsyncs <= stats.batches_written,
            "{flush:?}: {} fsyncs for {} batches",
            stats.fsyncs,
            stats.batches_written
        );
        assert_eq!(stats.durable_position, stats.published_position, "answered only once synced");
    }
    let check = |log: &CommitLog| {
        for q in 0..4u32 {
            let mut mine: Vec<_> = all.iter().filter(|(qq, _, _)| *qq == q).collect();
            mine.sort_by_key(|(_, o, _)| *o);
            let stored = read_all(log, "t", q);
            assert_eq!(stored.iter().map(|s| s.queue_offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
            for (s, (_, _, b)) in stored.iter().zip(mine) {
                assert_eq!(&s.body, b);
            }
        }
    };
    check(&log);
    log.close().await.unwrap();
    drop(log);
    check(&CommitLog::open(config).unwrap());
}

/// A pass's batch that finds the writer held by another thread goes to the writer thread,
/// whose answers come back to this runtime; without [`coalesce::dedicate_thread`] the same
/// appends are written one by one.
#[tokio::test]
#[allow(clippy::await_holding_lock)] // On purpose: the writer stays held while the appends queue.
async fn a_pass_that_finds_the_writer_busy_goes_to_the_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let flush = FlushMode::Async { interval: Duration::from_millis(5) };
    let log = CommitLog::open(StorageConfig { flush, ..test_config(dir.path()) }).unwrap();
    // Not a dedicated thread: each append is written alone, at once.
    for t in spawn_appends(&log, 0..10) {
        t.await.unwrap().unwrap();
    }
    assert_eq!((log.stats().batches_written, log.stats().inline_batches), (10, 10));
    coalesce::dedicate_thread();
    let held = log.hold_writer();
    let tasks = spawn_appends(&log, 10..20);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tasks.iter().all(|t| !t.is_finished()), "an append finished while the writer was held");
    drop(held);
    assert_eq!(sorted_offsets(tasks).await, (10..20).collect::<Vec<_>>());
    let stats = log.stats();
    assert_eq!(stats.inline_batches, 10, "the held writer's pass went to its thread");
    assert!(stats.batches_written <= 12, "{} batches", stats.batches_written);
    assert_eq!(read_all(&log, "t", 0).len(), 20);
}

/// A scheduler pass's batch bigger than `max_batch_bytes` is written in several writes of about
/// that size (the writer thread's bound), every append answered with its own offset: on the
/// runtime in `Async` mode, letting its other tasks run between two writes, and by the writer
/// thread from one hand-over in `Sync` mode.
#[tokio::test]
async fn a_large_pass_is_written_in_bounded_batches() {
    coalesce::dedicate_thread();
    for flush in [FlushMode::Async { interval: Duration::from_millis(5) }, FlushMode::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let log = CommitLog::open(StorageConfig { flush, max_batch_bytes: 4096, ..test_config(dir.path()) }).unwrap();
        let tasks: Vec<_> = (0..30u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    append_one(&log, message("t", 0, body_for(0, i, 1000), &format!("m{i}"), "")).await
                })
            })
            .collect();
        // Queued behind the pass's writing task once it has yielded: runs between two of its
        // writes, not after all of them.
        let probe = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                log.stats().batches_written
            })
        };
        assert_eq!(sorted_offsets(tasks).await, (0..30).collect::<Vec<_>>());
        let seen_by_probe = probe.await.unwrap();
        let stats = log.stats();
        let batches = stats.batches_written;
        assert!(seen_by_probe < batches, "{flush:?}: the I/O thread ran nothing else during {batches} writes");
        assert!((8..30).contains(&batches), "{flush:?}: {batches} writes for 30 appends of ≈ 1.1 KiB");
        assert_eq!(stats.inline_batches, batches, "{flush:?}");
        let mut stored: Vec<Bytes> = read_all(&log, "t", 0).into_iter().map(|m| m.body).collect();
        let mut sent: Vec<Bytes> = (0..30u64).map(|i| body_for(0, i, 1000)).collect();
        stored.sort();
        sent.sort();
        assert_eq!(stored, sent);
    }
}

/// `Sync` mode: the writer thread does not hold the writer during its `fdatasync`, so a pass
/// of an I/O thread writes its records meanwhile; the next group commit syncs and answers them.
/// A failed sync fails those too (the roll-back to the durable position removes them), and
/// nothing of either pass is left after a restart.
#[tokio::test]
async fn sync_mode_writes_the_next_pass_while_the_last_one_syncs() {
    coalesce::dedicate_thread();
    for fail in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig { flush: FlushMode::Sync, ..test_config(dir.path()) };
        let log = CommitLog::open(config.clone()).unwrap();
        log.faults().sync_delay_ms.store(600, Ordering::SeqCst);
        if fail {
            log.faults().fail_syncs.store(1, Ordering::SeqCst);
        }
        let a = spawn_appends(&log, 0..5);
        // Pass `a` is written and its sync under way (600 ms): pass `b` finds the writer free.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.stats().inline_batches, 1, "fail={fail}: the first pass was written on this thread");
        let b = spawn_appends(&log, 5..10);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = log.stats();
        assert_eq!(stats.inline_batches, 2, "fail={fail}: the second pass was written during the first one's sync");
        assert_eq!(stats.published_position, 0, "fail={fail}: nothing is readable before its sync");
        assert!(a.iter().chain(&b).all(|t| !t.is_finished()), "fail={fail}: an append was answered before its sync");
        log.faults().sync_delay_ms.store(0, Ordering::SeqCst);
        let mut answers = Vec::new();
        for t in a.into_iter().chain(b) {
            answers.push(t.await.unwrap());
        }
        if fail {
            assert!(answers.iter().all(|r| matches!(r, Err(StorageError::Io { .. }))), "fail={fail}: {answers:?}");
            let r = append_one(&log, message("t", 0, "after", "after", "")).await.unwrap();
            assert_eq!(r.queue_offset, 0, "the failed passes were rolled back");
        } else {
            let offsets: Vec<u64> = answers.iter().map(|r| r.as_ref().unwrap().queue_offset).collect();
            assert_eq!(offsets, (0..10).collect::<Vec<_>>());
            assert_eq!(log.stats().fsyncs, 2, "one group commit per pass");
        }
        let expected = if fail { 1 } else { 10 };
        let stats = log.stats();
        assert_eq!(stats.durable_position, stats.published_position);
        assert_eq!(read_all(&log, "t", 0).len(), expected, "fail={fail}");
        log.close().await.unwrap();
        drop(log);
        assert_eq!(read_all(&CommitLog::open(config).unwrap(), "t", 0).len(), expected, "fail={fail}: after a restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // On purpose: the writer stays held while the appends queue.
async fn appends_wait_for_a_busy_writer_and_are_batched_by_its_thread() {
    for flush in [FlushMode::Sync, FlushMode::Async { interval: Duration::from_millis(5) }] {
        let dir = tempfile::tempdir().unwrap();
        let log = CommitLog::open(StorageConfig { flush, ..test_config(dir.path()) }).unwrap();
        append_one(&log, message("t", 0, "first", "first", "")).await.unwrap();
        let inline = u64::from(matches!(flush, FlushMode::Async { .. }));
        assert_eq!(log.stats().inline_batches, inline, "{flush:?}");
        let held = log.hold_writer();
        let tasks: Vec<_> = (0..20u64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    append_one(&log, message("t", 0, body_for(0, i, 100), &format!("m{i}"), "")).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(tasks.iter().all(|t| !t.is_finished()), "{flush:?}: an append finished while the writer was held");
        drop(held);
        assert_eq!(sorted_offsets(tasks).await, (1..21).collect::<Vec<_>>(), "{flush:?}");
        let stats = log.stats();
        assert_eq!(stats.inline_batches, inline, "{flush:?}: the held writer's appends went to its thread");
        assert!(stats.batches_written < 21, "{flush:?}: {} batches for 21 appends", stats.batches_written);
        log.close().await.unwrap();
        assert!(matches!(append_one(&log, message("t", 0, "late", "late", "")).await, Err(StorageError::ShuttingDown)));
        drop(log);
        let log = CommitLog::open(StorageConfig { flush, ..test_config(dir.path()) }).unwrap();
        assert_eq!(read_all(&log, "t", 0).len(), 21, "{flush:?}");
    }
}

#[tokio::test]
async fn async_mode_round_trips_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        StorageConfig { flush: FlushMode::Async { interval: Duration::from_millis(5) }, ..test_config(dir.path()) };
    let log = CommitLog::open(config.clone()).unwrap();
    for i in 0..200u64 {
        append_one(&log, message("t", 0, body_for(0, i, 500), &format!("id{i}"), "")).await.unwrap();
    }
    assert_eq!(read_all(&log, "t", 0).len(), 200);
    log.close().await.unwrap();
    let stats_dir = dir.path().to_path_buf();
    drop(log);
    let log = CommitLog::open(StorageConfig { dir: stats_dir, ..config }).unwrap();
    assert_eq!(read_all(&log, "t", 0).len(), 200);
    assert_eq!(log.stats().durable_position, log.stats().published_position);
}

#[tokio::test]
async fn retention_deletes_old_segments_and_moves_queue_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig { file_reserved_time: Duration::ZERO, ..test_config(dir.path()) };
    let log = CommitLog::open(config.clone()).unwrap();
    for i in 0..300u64 {
        append_one(&log, message("t", (i % 2) as u32, body_for(0, i, 700), &format!("id{i}"), "")).await.unwrap();
    }
    let segments_before = segment_files(dir.path()).len();
    assert!(segments_before >= 4);
    // Held back by the tiering hook.
    log.checkpoint().unwrap();
    log.set_retention_limit(Some(0));
    log.run_retention();
    assert_eq!(segment_files(dir.path()).len(), segments_before);
    log.set_retention_limit(None);
    std::thread::sleep(Duration::from_millis(20));
    log.run_retention();
    // Everything but the active segment is gone.
    assert_eq!(segment_files(dir.path()).len(), 1);
    let range = log.queue_range("t", 0);
    assert!(range.start > 0 && range.end == 150, "{range:?}");
    let first = log.read("t", 0, 0, 1, 1 << 20).unwrap();
    assert_eq!(first[0].queue_offset, range.start, "reads below the start are clamped");
    assert!(log.find_by_message_id("id0").unwrap().is_empty());
    // Offsets continue after a restart, and the start stays.
    drop(log);
    let log = CommitLog::open(config).unwrap();
    assert_eq!(log.queue_range("t", 0), range);
    assert_eq!(append_one(&log, message("t", 0, "x", "x", "")).await.unwrap().queue_offset, 150);
}

#[tokio::test]
async fn disk_high_water_mark_deletes_unexpired_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig { disk_max_used_ratio: 1e-9, ..test_config(dir.path()) };
    let log = CommitLog::open(config).unwrap();
    for i in 0..200u64 {
        append_one(&log, message("t", 0, body_for(0, i, 700), &format!("id{i}"), "")).await.unwrap();
    }
    log.checkpoint().unwrap();
    log.run_retention();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(log.queue_range("t", 0).start > 0);
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = CommitLog::open(test_config(dir.path())).unwrap();
    assert!(CommitLog::open(test_config(dir.path())).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Cut the log at a random byte after a crash: what survives is a prefix of every queue,
    /// and appends continue right after it.
    #[test]
    fn random_truncation_recovers_a_prefix(cut_frac in 0.0f64..1.0, n in 1u64..60) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut sent: Vec<(u32, Bytes, AppendResult)> = Vec::new();
            {
                let log = CommitLog::open(test_config(dir.path())).unwrap();
                for i in 0..n {
                    let q = (i % 3) as u32;
                    let body = body_for(q, i, 50 + (i as usize * 37) % 900);
                    let r = append_one(&log, message("t", q, body.clone(), &format!("id{i}"), "")).await.unwrap();
                    sent.push((q, body, r));
                }
            }
            let end = sent.last().unwrap().2.log_position + 2000;
            let cut = (end as f64 * cut_frac) as u64;
            // Zero everything from `cut` on, across segments.
            for p in segment_files(dir.path()) {
                let base = segment::parse_segment_file_name(p.file_name().unwrap().to_str().unwrap()).unwrap();
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                let len = f.metadata().unwrap().len();
                if base + len > cut {
                    let from = cut.saturating_sub(base);
                    f.write_all_at(&vec![0u8; (len - from) as usize], from).unwrap();
                }
            }
            let log = CommitLog::open(test_config(dir.path())).unwrap();
            for q in 0..3u32 {
                let got = read_all(&log, "t", q);
                let want: Vec<_> = sent.iter().filter(|(qq, _, _)| *qq == q).collect();
                prop_assert!(got.len() <= want.len());
                for (g, w) in got.iter().zip(&want) {
                    prop_assert_eq!(&g.body, &w.1);
                    prop_assert!(g.log_position < cut);
                }
                let fully_before_cut = want.iter().take_while(|(_, _, r)| r.log_position + 2000 < cut).count();
                prop_assert!(got.len() >= fully_before_cut);
                let r = append_one(&log, message("t", q, "next", "next", "")).await.unwrap();
                prop_assert_eq!(r.queue_offset, got.len() as u64);
            }
            Ok(())
        })?;
    }
}

/// Real ENOSPC (not injected): runs when `RMQ_STORAGE_TEST_SMALL_FS` names a directory on a
/// small, otherwise empty file system, e.g. `mount -t tmpfs -o size=3m tmpfs /mnt/small`.
#[tokio::test]
async fn disk_full_on_a_real_small_filesystem() {
    let Ok(root) = std::env::var("RMQ_STORAGE_TEST_SMALL_FS") else {
        eprintln!("skipped: set RMQ_STORAGE_TEST_SMALL_FS to a small file system to run");
        return;
    };
    let dir = tempfile::tempdir_in(root).unwrap();
    let filler = dir.path().join("filler");
    let config =
        StorageConfig { segment_size: 1 << 20, disk_max_used_ratio: 1.0, ..test_config(&dir.path().join("log")) };
    let log = CommitLog::open(config.clone()).unwrap();
    std::fs::write(&filler, vec![1u8; 1 << 20]).unwrap();
    let mut acked = Vec::new();
    let err = loop {
        let i = acked.len() as u64;
        match append_one(&log, message("t", 0, body_for(0, i, 4000), &format!("id{i}"), "")).await {
            Ok(r) => acked.push(r),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "the file system never filled up");
    };
    assert!(matches!(err, StorageError::DiskFull(_)), "{err}");
    assert!(acked.len() > 100, "filled after {} appends", acked.len());
    // Still up: appends keep failing cleanly while the disk is full (one may still fit in what a
    // failed batch's roll-back freed: the bytes it wrote, the index blocks reserved ahead), and
    // everything acknowledged stays readable.
    let mut refused = 0;
    for _ in 0..10 {
        let i = acked.len() as u64;
        match append_one(&log, message("t", 0, body_for(0, i, 4000), &format!("id{i}"), "")).await {
            Ok(r) => acked.push(r),
            Err(StorageError::DiskFull(_)) => refused += 1,
            Err(e) => panic!("not a clean refusal: {e}"),
        }
    }
    assert!(refused >= 8, "{refused} of 10 appends refused on a full disk");
    assert_eq!(read_all(&log, "t", 0).len(), acked.len());
    // Space comes back: appends continue at the next offset.
    std::fs::remove_file(&filler).unwrap();
    let r = append_one(&log, message("t", 0, body_for(0, 99_999, 4000), "after", "")).await.unwrap();
    assert_eq!(r.queue_offset, acked.len() as u64);
    drop(log);
    let log = CommitLog::open(config).unwrap();
    let all = read_all(&log, "t", 0);
    assert_eq!(all.len(), acked.len() + 1);
    for (i, m) in all.iter().take(acked.len()).enumerate() {
        assert_eq!(m.body, body_for(0, i as u64, 4000));
    }
}

/// Tag hashes come from the queue index, consecutive from the asked offset (clamped to the
/// queue's start), at most `max`, nothing past the end.
#[tokio::test]
async fn tag_hashes_come_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = CommitLog::open(test_config(dir.path())).unwrap();
    let batch: Vec<AppendMessage> = (0..6u64)
        .map(|i| AppendMessage { tag_hash: 1000 + i, ..message("t", 0, body_for(0, i, 10), &format!("id-{i}"), "") })
        .collect();
    log.append(batch).await.unwrap();
    assert_eq!(log.tag_hashes("t", 0, 2, 3).unwrap(), vec![(2, 1002), (3, 1003), (4, 1004)]);
    assert_eq!(log.tag_hashes("t", 0, 4, 100).unwrap(), vec![(4, 1004), (5, 1005)]);
    assert!(log.tag_hashes("t", 0, 6, 100).unwrap().is_empty());
    assert!(log.tag_hashes("nope", 0, 0, 100).unwrap().is_empty());
    log.close().await.unwrap();
}

#[tokio::test]
async fn resume_point_starts_the_log_and_queues_there_and_survives_a_restart() {
    use crate::storage::{ResumePoint, ResumeQueue};
    let dir = tempfile::tempdir().unwrap();
    let resume = ResumePoint {
        position: 5 * 64 * 1024,
        queues: vec![
            ResumeQueue { topic: "A".into(), queue_id: 0, next_offset: 70 },
            ResumeQueue { topic: "B".into(), queue_id: 3, next_offset: 2000 },
        ],
    };
    let config = StorageConfig { resume: Some(resume.clone()), ..test_config(dir.path()) };
    let log = CommitLog::open(config.clone()).unwrap();
    assert_eq!(log.log_start(), resume.position);
    assert_eq!(log.queue_range("A", 0), QueueRange { start: 70, end: 70 });
    assert_eq!(log.queue_range("B", 3), QueueRange { start: 2000, end: 2000 });
    let r = log.append(vec![message("A", 0, "a", "id-a", "")]).await.unwrap();
    assert_eq!((r[0].queue_offset, r[0].log_position), (70, resume.position));
    let r = log.append(vec![message("C", 1, "c", "id-c", "")]).await.unwrap();
    assert_eq!(r[0].queue_offset, 0);
    assert_eq!(log.read("A", 0, 0, 10, 1 << 20).unwrap()[0].queue_offset, 70);
    log.close().await.unwrap();
    drop(log);
    // Reopened (resume ignored: the directory holds a log): B still starts at 2000.
    let log = CommitLog::open(config).unwrap();
    assert_eq!(log.queue_range("A", 0), QueueRange { start: 70, end: 71 });
    assert_eq!(log.queue_range("B", 3), QueueRange { start: 2000, end: 2000 });
    let r = log.append(vec![message("B", 3, "b", "id-b", "")]).await.unwrap();
    assert_eq!(r[0].queue_offset, 2000);
    log.close().await.unwrap();
}

/// `Sync` mode with the zeroer (`zero_ahead.rs`) on a real file system: concurrent appends
/// across several segments, small ones and records bigger than the zeroer's gap (whose writes
/// reach into the stretch being zeroed and wait for the piece in progress), come back intact;
/// the zeroer did allocate the active segment's blocks ahead of the log end; and a restart finds
/// the same log (zeros past the end are the end) and continues it. Needs ext4 or XFS under
/// `TMPDIR`, where the zeroer runs; elsewhere it fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroing_ahead_never_touches_records_and_leaves_recovery_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let config = zeroing_config(dir.path());
    let log = CommitLog::open(config.clone()).unwrap();
    append_one(&log, message("t", 0, "first", "first", "")).await.unwrap();
    zeroer_running(&log).await;
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..60u64 {
                let q = t % 4;
                // Every 15th append of half the tasks is 1.1–3 MiB: more than the gap.
                let len = if t % 2 == 0 && i % 15 == 7 {
                    zero_ahead::GAP as usize + 100_000 + (i as usize * 131_071 % (2 << 20))
                } else {
                    1024 + (i as usize * 37 % 7000)
                };
                let body = body_for(q, u64::from(t) * 1000 + i, len);
                let r = append_one(&log, message("t", q, body.clone(), &format!("{t}-{i}"), "")).await.unwrap();
                mine.push((q, r.queue_offset, body));
                if i % 10 == 0 {
                    // Let the zeroer catch up now and then, so big writes meet it mid-piece.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            mine
        }));
    }
    let mut all = vec![(0u32, 0u64, Bytes::from("first"))];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_queues_hold(&log, &all);
    assert!(segment_files(dir.path()).len() >= 4, "the appends should span several segments");
    // The active segment has blocks past the log end: zeros the zeroer wrote.
    zeroer_running(&log).await;
    let end = log.stats().published_position;
    let (path, in_segment) = locate(dir.path(), end);
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).unwrap().blocks() * 512
    };
    assert!(
        allocated >= in_segment + zero_ahead::PIECE as u64,
        "{} has {allocated} bytes allocated, {in_segment} written: nothing zeroed ahead",
        path.display()
    );
    log.close().await.unwrap();
    drop(log);
    let log = CommitLog::open(config).unwrap();
    assert_eq!(log.stats().published_position, end, "recovery moved the end of the log");
    assert_queues_hold(&log, &all);
    let next = append_one(&log, message("t", 0, "after", "after", "")).await.unwrap();
    assert_eq!(next.log_position, end);
    log.close().await.unwrap();
}

/// Pages of `path` in the page cache, one flag per page (`mincore` on a fresh mapping).
fn resident_pages(path: &Path) -> Vec<bool> {
    let file = std::fs::File::open(path).unwrap();
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let page = super::fs::page_size() as usize;
    let mut flags = vec![0u8; map.len().div_ceil(page)];
    let rc = unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), map.len(), flags.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    flags.iter().map(|f| f & 1 == 1).collect()
}

/// The page-cache window (`maintenance::release_page_cache`): after a pass, no page of the log
/// more than the window behind the fsynced end is cached, also pages readers had mapped, while
/// the newest stays cached; every message still reads back intact (from the disk), and the next
/// pass continues where this one stopped. Needs a disk file system under `TMPDIR` (tmpfs keeps
/// its pages); elsewhere it fails saying so.
#[tokio::test]
async fn old_log_pages_leave_the_page_cache_and_read_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let window = 128 * 1024;
    let config = StorageConfig { flush: FlushMode::Sync, page_cache_window: window, ..test_config(dir.path()) };
    let log = CommitLog::open(config).unwrap();
    let mut all = Vec::new();
    for i in 0..40u64 {
        let body = body_for(0, i, 16 * 1024);
        let r = append_one(&log, message("t", 0, body.clone(), &format!("m{i}"), "")).await.unwrap();
        all.push((0u32, r.queue_offset, body));
    }
    // Readers map every page of the log.
    assert_queues_hold(&log, &all);
    let synced = log.shared.synced.load(Ordering::Acquire);
    maintenance::release_page_cache(&log.shared);
    let to = synced - window;
    assert_eq!(log.shared.page_cache_released.load(Ordering::Acquire), to);
    let page = super::fs::page_size();
    let mut dropped = 0;
    for path in segment_files(dir.path()) {
        let base = segment::parse_segment_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
        for (i, cached) in resident_pages(&path).into_iter().enumerate() {
            let (start, end) = (base + i as u64 * page, base + (i as u64 + 1) * page);
            if end <= to {
                assert!(
                    !cached,
                    "{} page {i} (log {start}..{end}) is still cached, {to} and below should be dropped \
                     (is TMPDIR on tmpfs? the page cache of a disk file system is needed)",
                    path.display()
                );
                dropped += 1;
            }
        }
    }
    assert!(dropped >= 8, "only {dropped} pages below {to}: the test wrote too little");
    let (last, at) = locate(dir.path(), synced - 1);
    assert!(resident_pages(&last)[(at / page) as usize], "the newest page of the log was dropped");
    assert_queues_hold(&log, &all);
    // Nothing new: the next pass has nothing to do; more appends move it on from `to`.
    maintenance::release_page_cache(&log.shared);
    assert_eq!(log.shared.page_cache_released.load(Ordering::Acquire), to);
    for i in 40..50u64 {
        let body = body_for(0, i, 16 * 1024);
        let r = append_one(&log, message("t", 0, body.clone(), &format!("m{i}"), "")).await.unwrap();
        all.push((0u32, r.queue_offset, body));
    }
    maintenance::release_page_cache(&log.shared);
    let synced = log.shared.synced.load(Ordering::Acquire);
    assert_eq!(log.shared.page_cache_released.load(Ordering::Acquire), synced - window);
    assert_queues_hold(&log, &all);
    log.close().await.unwrap();
}
