//! The metadata conformance suite: one set of behaviours every [`MetadataStore`] must show,
//! run on SQLite by the unit tests and on SQLite and a real PostgreSQL by
//! `integration-tests/tests/metadata_conformance.rs`. Each check takes a fresh, empty store and
//! panics (assertions) on a difference; store errors are returned.
//!
//! Compiled for tests and with the `conformance` feature (the integration tests enable it).

use std::future::Future;
use std::sync::Arc;

use super::{
    Durability, GroupRecord, MetadataResult, MetadataStore, ProgressRecord, SegmentQueue, SegmentRecord, TopicRecord,
    TopicType,
};

/// The checks, by name, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "topics",
    "groups",
    "progress",
    "large_progress_batch",
    "delete_progress",
    "secrets",
    "segment_manifest",
    "concurrent_creation",
];

/// Runs every check on a fresh store from `fresh` (the argument is the check's name, e.g. to
/// name a database after it).
pub async fn run_all<F, Fut>(fresh: F) -> MetadataResult<()>
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = MetadataResult<Arc<dyn MetadataStore>>>,
{
    for name in CHECKS {
        let store = fresh(name).await?;
        run(name, store.as_ref()).await?;
        store.close().await;
    }
    Ok(())
}

/// Runs the check `name` of [`CHECKS`].
pub async fn run(name: &str, store: &dyn MetadataStore) -> MetadataResult<()> {
    match name {
        "topics" => topics(store).await,
        "groups" => groups(store).await,
        "progress" => progress(store).await,
        "large_progress_batch" => large_progress_batch(store).await,
        "delete_progress" => delete_progress(store).await,
        "secrets" => secrets(store).await,
        "segment_manifest" => segment_manifest(store).await,
        "concurrent_creation" => concurrent_creation(store).await,
        other => panic!("no conformance check `{other}`"),
    }
}

fn group(name: &str) -> GroupRecord {
    GroupRecord {
        name: name.into(),
        fifo: true,
        retry_max_times: 3,
        retry_backoff: None,
        broadcast: false,
        auto_created: false,
    }
}

fn progress_record(group: &str, topic: &str, queue_id: u32, ack_floor: u64, acked_above: Vec<u8>) -> ProgressRecord {
    ProgressRecord { group: group.into(), topic: topic.into(), queue_id, ack_floor, acked_above }
}

fn sorted(mut v: Vec<ProgressRecord>) -> Vec<ProgressRecord> {
    v.sort_by(|a, b| (&a.group, &a.topic, a.queue_id).cmp(&(&b.group, &b.topic, b.queue_id)));
    v
}

/// Create keeps the first record, lists are ordered by name (byte order), delete says whether
/// something was deleted.
pub async fn topics(store: &dyn MetadataStore) -> MetadataResult<()> {
    let t = TopicRecord {
        name: "t1".into(),
        queue_nums: 4,
        topic_type: TopicType::Fifo,
        durability: Durability::ObjectStore,
    };
    assert_eq!(store.create_topic(&t).await?, t);
    let again =
        TopicRecord { queue_nums: 8, topic_type: TopicType::Normal, durability: Durability::Local, ..t.clone() };
    assert_eq!(store.create_topic(&again).await?, t, "creating again keeps the original");
    assert_eq!(store.topic("t1").await?, Some(t.clone()));
    assert_eq!(store.topic("nope").await?, None);
    let mut all = vec![t.clone()];
    for (name, kind) in
        [("B", TopicType::Delay), ("a", TopicType::Transaction), ("Z_", TopicType::Priority), ("m%n", TopicType::Mixed)]
    {
        let rec = TopicRecord {
            name: name.into(),
            queue_nums: u32::MAX >> 1,
            topic_type: kind,
            durability: Durability::Local,
        };
        store.create_topic(&rec).await?;
        all.push(rec);
    }
    all.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    assert_eq!(store.list_topics().await?, all);
    assert!(store.delete_topic("t1").await?);
    assert!(!store.delete_topic("t1").await?);
    assert!(store.topic("t1").await?.is_none());
    assert_eq!(store.list_topics().await?.len(), 4);
    Ok(())
}

/// Create keeps what exists, put replaces it, only auto-created groups are retired.
pub async fn groups(store: &dyn MetadataStore) -> MetadataResult<()> {
    let g = group("g");
    assert_eq!(store.create_group(&g).await?, g);
    assert_eq!(store.group("g").await?, Some(g.clone()));
    assert_eq!(store.group("none").await?, None);
    let changed = GroupRecord {
        fifo: false,
        retry_max_times: 5,
        retry_backoff: Some("1s 2s".into()),
        broadcast: true,
        ..g.clone()
    };
    assert_eq!(store.create_group(&changed).await?, g, "create keeps what exists");
    store.put_group(&changed).await?;
    assert_eq!(store.list_groups().await?, vec![changed.clone()]);
    // put creates too.
    let put_new = GroupRecord { name: "p".into(), retry_max_times: -1, ..changed.clone() };
    store.put_group(&put_new).await?;
    assert_eq!(store.group("p").await?, Some(put_new.clone()));
    // Only an auto-created group is retired.
    assert!(!store.retire_group("g").await?);
    assert!(!store.retire_group("missing").await?);
    let auto = GroupRecord { name: "a".into(), auto_created: true, ..changed.clone() };
    assert_eq!(store.create_group(&auto).await?, auto);
    assert_eq!(store.list_groups().await?, vec![auto.clone(), changed.clone(), put_new.clone()]);
    assert!(store.retire_group("a").await?);
    assert!(!store.retire_group("a").await?);
    // A group put back to explicit is no longer retired.
    let auto2 = GroupRecord { name: "b".into(), auto_created: true, ..g.clone() };
    store.create_group(&auto2).await?;
    store.put_group(&GroupRecord { auto_created: false, ..auto2.clone() }).await?;
    assert!(!store.retire_group("b").await?);
    assert_eq!(store.list_groups().await?.len(), 3);
    Ok(())
}

/// Batches upsert, the last record of a key in a batch wins, the journal checkpoint never moves
/// backwards, an empty batch only moves the checkpoint.
pub async fn progress(store: &dyn MetadataStore) -> MetadataResult<()> {
    assert_eq!(store.load_progress().await?, (vec![], 0));
    let p = progress_record("g", "t", 2, 10, vec![1, 2]);
    store.save_progress(std::slice::from_ref(&p), 7).await?;
    assert_eq!(store.load_progress().await?, (vec![p.clone()], 7));
    let p2 = ProgressRecord { ack_floor: 12, acked_above: vec![], ..p.clone() };
    let other = progress_record("g", "t", 3, 1, vec![0xff; 300]);
    store.save_progress(&[p2.clone(), other.clone()], 9).await?;
    assert_eq!(store.load_progress().await?, (sorted(vec![p2.clone(), other.clone()]), 9));
    // The journal checkpoint never moves backwards.
    store.save_progress(&[], 3).await?;
    assert_eq!(store.load_progress().await?.1, 9);
    // The same key twice in one batch: the last one wins.
    let first = progress_record("h", "t", 0, 5, vec![5]);
    let last = progress_record("h", "t", 0, 6, vec![6]);
    store.save_progress(&[first, last.clone()], 11).await?;
    let (all, offset) = store.load_progress().await?;
    assert_eq!(offset, 11);
    assert_eq!(sorted(all), sorted(vec![p2, other, last]));
    // Positions near the top of the range survive.
    let high = progress_record("g", "t", 2, (i64::MAX - 1) as u64, vec![]);
    store.save_progress(std::slice::from_ref(&high), (i64::MAX - 2) as u64).await?;
    let (all, offset) = store.load_progress().await?;
    assert_eq!(offset, (i64::MAX - 2) as u64);
    assert!(all.contains(&high));
    Ok(())
}

/// A batch of 20,000 records (many groups, topics and queues) is stored whole; saving it again
/// with new floors replaces every row, and rows do not multiply.
pub async fn large_progress_batch(store: &dyn MetadataStore) -> MetadataResult<()> {
    let batch: Vec<ProgressRecord> = (0..20_000u32)
        .map(|i| {
            progress_record(
                &format!("g{}", i % 50),
                &format!("topic-{}", i / 50 % 40),
                i / 2000,
                u64::from(i),
                vec![(i % 251) as u8; 16],
            )
        })
        .collect();
    store.save_progress(&batch, 100).await?;
    let (loaded, offset) = store.load_progress().await?;
    assert_eq!(offset, 100);
    assert_eq!(sorted(loaded), sorted(batch.clone()));
    let moved: Vec<ProgressRecord> =
        batch.iter().map(|p| ProgressRecord { ack_floor: p.ack_floor + 1, acked_above: vec![], ..p.clone() }).collect();
    store.save_progress(&moved, 200).await?;
    let (loaded, offset) = store.load_progress().await?;
    assert_eq!(offset, 200);
    assert_eq!(sorted(loaded), sorted(moved));
    Ok(())
}

/// Forgetting a consumer's progress removes its rows on every topic and queue, only its own.
pub async fn delete_progress(store: &dyn MetadataStore) -> MetadataResult<()> {
    let keep = progress_record("keep", "t", 0, 1, vec![]);
    store
        .save_progress(
            &[
                progress_record("gone", "t", 0, 1, vec![]),
                progress_record("gone", "t", 1, 2, vec![]),
                progress_record("gone", "u", 0, 3, vec![1]),
                keep.clone(),
            ],
            4,
        )
        .await?;
    assert_eq!(store.delete_progress("gone").await?, 3);
    assert_eq!(store.delete_progress("gone").await?, 0);
    assert_eq!(store.load_progress().await?, (vec![keep], 4));
    Ok(())
}

/// The first stored value of a secret wins.
pub async fn secrets(store: &dyn MetadataStore) -> MetadataResult<()> {
    assert_eq!(store.secret("receipt", b"abc").await?, b"abc");
    assert_eq!(store.secret("receipt", b"xyz").await?, b"abc");
    let binary: Vec<u8> = (0..=255).collect();
    assert_eq!(store.secret("other", &binary).await?, binary);
    Ok(())
}

/// The tiering manifest: ordered by base, per log, recording again replaces the row and its
/// queues, delete says whether the row existed.
pub async fn segment_manifest(store: &dyn MetadataStore) -> MetadataResult<()> {
    let q = |topic: &str, queue_id, first_offset, end_offset, index_pos| SegmentQueue {
        topic: topic.into(),
        queue_id,
        first_offset,
        end_offset,
        index_pos,
    };
    let seg = |base: u64, queues| SegmentRecord {
        log_id: "n1".into(),
        base,
        size: 1000,
        object_key: format!("ab/n1/{base:020}"),
        object_size: 1064,
        first_store_ms: 5,
        last_store_ms: 9,
        uploaded_at_ms: 10,
        queues,
    };
    let s2 = seg(2048, vec![q("a", 0, 7, 9, 1000)]);
    // Queues come back ordered by (topic bytes, queue id), whatever the order given.
    let s1 = seg(0, vec![q("a", 1, 0, 2, 1100), q("B", 3, 0, 1, 1224), q("a", 0, 0, 7, 1000)]);
    let s1_ordered = seg(0, vec![q("B", 3, 0, 1, 1224), q("a", 0, 0, 7, 1000), q("a", 1, 0, 2, 1100)]);
    store.put_segment(&s2, None).await?;
    store.put_segment(&s1, None).await?;
    assert_eq!(store.list_segments("n1").await?, vec![s1_ordered.clone(), s2.clone()]);
    assert_eq!(store.list_segments("n2").await?, vec![]);
    // The same base in another log is another segment.
    let other_log = SegmentRecord { log_id: "n2".into(), ..s2.clone() };
    store.put_segment(&other_log, None).await?;
    assert_eq!(store.list_segments("n2").await?, vec![other_log]);
    // Recording again replaces the row and its queues.
    let s1b = SegmentRecord { queues: vec![q("c", 1, 4, 6, 1000)], size: 999, ..s1.clone() };
    store.put_segment(&s1b, None).await?;
    store.put_segment(&s1b, None).await?;
    assert_eq!(store.list_segments("n1").await?, vec![s1b.clone(), s2.clone()]);
    // A segment without queues.
    let empty = seg(4096, vec![]);
    store.put_segment(&empty, None).await?;
    assert_eq!(store.list_segments("n1").await?, vec![s1b, s2.clone(), empty.clone()]);
    assert!(store.delete_segment("n1", 0).await?);
    assert!(!store.delete_segment("n1", 0).await?);
    assert_eq!(store.list_segments("n1").await?, vec![s2.clone(), empty]);
    // Deleting a row takes its queues: recording the base again starts from none.
    assert!(store.delete_segment("n1", 2048).await?);
    let s2_again = seg(2048, vec![q("z", 9, 1, 2, 3)]);
    store.put_segment(&s2_again, None).await?;
    assert_eq!(store.list_segments("n1").await?[0], s2_again);
    // A merged row replaces the chunks that start inside its range, atomically; the rows
    // before and after it stay.
    let chunk = |base: u64, size: u64, first: u64, end: u64| SegmentRecord {
        size,
        queues: vec![q("m", 0, first, end, size)],
        ..seg(base, vec![])
    };
    let (c1, c2, c3, after) =
        (chunk(10_000, 100, 0, 4), chunk(10_100, 50, 4, 6), chunk(10_150, 50, 6, 9), chunk(10_200, 10, 9, 10));
    for c in [&c1, &c2, &c3, &after] {
        store.put_segment(c, None).await?;
    }
    let merged = SegmentRecord { object_key: "ab/n1/merged".into(), ..chunk(10_000, 200, 0, 9) };
    store.put_segment(&merged, None).await?;
    let rows: Vec<SegmentRecord> = store.list_segments("n1").await?.into_iter().filter(|r| r.base >= 10_000).collect();
    assert_eq!(rows, vec![merged.clone(), after.clone()]);
    store.put_segment(&merged, None).await?;
    assert_eq!(store.list_segments("n1").await?.into_iter().filter(|r| r.base >= 10_000).count(), 2, "idempotent");
    Ok(())
}

/// Concurrent creation of the same topic, group or secret yields one record, the same for every
/// caller.
pub async fn concurrent_creation(store: &dyn MetadataStore) -> MetadataResult<()> {
    let topics: Vec<TopicRecord> = (1..=16)
        .map(|i| TopicRecord {
            name: "race".into(),
            queue_nums: i,
            topic_type: TopicType::Normal,
            durability: Durability::Local,
        })
        .collect();
    let created = futures::future::join_all(topics.iter().map(|t| store.create_topic(t))).await;
    let created = created.into_iter().collect::<MetadataResult<Vec<_>>>()?;
    assert!(created.iter().all(|t| *t == created[0]), "every creator sees the one record: {created:?}");
    assert_eq!(store.list_topics().await?, vec![created[0].clone()]);

    let groups: Vec<GroupRecord> = (0..16).map(|i| GroupRecord { retry_max_times: i, ..group("race") }).collect();
    let created = futures::future::join_all(groups.iter().map(|g| store.create_group(g))).await;
    let created = created.into_iter().collect::<MetadataResult<Vec<_>>>()?;
    assert!(created.iter().all(|g| *g == created[0]), "every creator sees the one group: {created:?}");
    assert_eq!(store.list_groups().await?.len(), 1);

    let candidates: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 32]).collect();
    let secrets = futures::future::join_all(candidates.iter().map(|c| store.secret("race", c))).await;
    let secrets = secrets.into_iter().collect::<MetadataResult<Vec<_>>>()?;
    assert!(secrets.iter().all(|s| *s == secrets[0]), "every caller sees the one secret");
    Ok(())
}

/// Two stores on one database with different `StoreOptions::node_id`s (`a` and `b`, both
/// fresh): each keeps its own journal offset, the progress rows are shared.
pub async fn per_node_journal_offsets(a: &dyn MetadataStore, b: &dyn MetadataStore) -> MetadataResult<()> {
    let pa = progress_record("g", "t", 0, 5, vec![]);
    a.save_progress(std::slice::from_ref(&pa), 40).await?;
    assert_eq!(b.load_progress().await?, (vec![pa.clone()], 0), "b sees a's progress, not a's journal offset");
    let pb = progress_record("g", "t", 1, 7, vec![1]);
    b.save_progress(std::slice::from_ref(&pb), 3).await?;
    let (all, offset) = a.load_progress().await?;
    assert_eq!((sorted(all), offset), (sorted(vec![pa.clone(), pb.clone()]), 40));
    let (all, offset) = b.load_progress().await?;
    assert_eq!((sorted(all), offset), (sorted(vec![pa, pb]), 3));
    // Still monotonic per node.
    b.save_progress(&[], 2).await?;
    assert_eq!(b.load_progress().await?.1, 3);
    Ok(())
}

/// What was written is there after closing and opening the store again (`open` opens the same
/// database each time).
pub async fn reopen_keeps_data<F, Fut>(open: F) -> MetadataResult<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = MetadataResult<Arc<dyn MetadataStore>>>,
{
    let t =
        TopicRecord { name: "x".into(), queue_nums: 2, topic_type: TopicType::Normal, durability: Durability::Local };
    let g = GroupRecord { auto_created: true, ..group("g") };
    let p = progress_record("g", "x", 1, 42, vec![9, 9]);
    let s = SegmentRecord {
        log_id: String::new(),
        base: 0,
        size: 1,
        object_key: "k".into(),
        object_size: 2,
        first_store_ms: 3,
        last_store_ms: 4,
        uploaded_at_ms: 5,
        queues: vec![SegmentQueue { topic: "x".into(), queue_id: 1, first_offset: 0, end_offset: 1, index_pos: 1 }],
    };
    {
        let store = open().await?;
        store.create_topic(&t).await?;
        store.create_group(&g).await?;
        store.save_progress(std::slice::from_ref(&p), 77).await?;
        store.put_segment(&s, None).await?;
        store.secret("k", b"v").await?;
        store.close().await;
    }
    let store = open().await?;
    assert_eq!(store.topic("x").await?, Some(t));
    assert_eq!(store.group("g").await?, Some(g));
    assert_eq!(store.load_progress().await?, (vec![p], 77));
    assert_eq!(store.list_segments("").await?, vec![s]);
    assert_eq!(store.secret("k", b"other").await?, b"v");
    store.close().await;
    Ok(())
}
