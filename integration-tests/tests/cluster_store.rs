//! Cluster membership on a real PostgreSQL (services/postgres.sh): the lease store (acquire,
//! renew, expiry, take-over, release, epochs, the shard count check, heartbeats), fenced
//! manifest writes refused for a stale epoch and for a non-owner, the per-node journal offset,
//! the adoption protocol of a dead node's home log (claims, their expiry, cuts), the per-node
//! progress of system groups, and three `Membership` loops with a recording shard handler: an even spread, a node cut off
//! from the store losing its shards to the others, a graceful leave handing its shards over,
//! and never two holders of a shard at once (checked from the recorded events and epochs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use integration_tests::postgres::Postgres;
use rmq_gateway::cluster::membership::{Membership, MembershipHandle, MembershipSettings};
use rmq_gateway::cluster::{ClusterView, NodeInfo, ShardHandler, ShardId, shard_log_id};
use rmq_gateway::metadata::postgres::PostgresMetadataStore;
use rmq_gateway::metadata::{
    ClusterStore, Fence, HomeCut, HomeEntry, HomeRecord, LeaseRecord, MetadataError, MetadataResult, MetadataStore,
    NodeRecord, ProgressRecord, SegmentRecord, StoreOptions, conformance,
};

fn options(node_id: &str) -> StoreOptions {
    StoreOptions {
        node_id: node_id.into(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(20),
        acquire_timeout: Duration::from_secs(3),
        statement_timeout: Duration::from_secs(20),
    }
}

async fn open(url: &str, node_id: &str) -> Arc<PostgresMetadataStore> {
    Arc::new(PostgresMetadataStore::open(url, &options(node_id)).await.unwrap())
}

fn node(id: &str, leaving: bool) -> NodeRecord {
    NodeRecord { node_id: id.into(), advertised: format!("{id}:8081"), peer: format!("{id}:9081"), leaving }
}

fn segment(log_id: &str, base: u64) -> SegmentRecord {
    SegmentRecord {
        log_id: log_id.into(),
        base,
        size: 10,
        object_key: format!("k/{log_id}/{base}"),
        object_size: 12,
        first_store_ms: 1,
        last_store_ms: 2,
        uploaded_at_ms: 3,
        queues: vec![],
    }
}

fn lease(leases: &[LeaseRecord], shard: u32) -> &LeaseRecord {
    leases.iter().find(|l| l.shard == shard).unwrap()
}

#[tokio::test]
async fn leases_epochs_and_fenced_manifest_writes() {
    let Some(pg) = Postgres::start_or_skip("leases_epochs_and_fenced_manifest_writes") else { return };
    tokio::time::timeout(Duration::from_secs(120), async {
        let store = open(pg.url(), "").await;
        let ttl = Duration::from_secs(10);
        // The shard count is fixed once set.
        store.ensure_shards(12).await.unwrap();
        store.ensure_shards(12).await.unwrap();
        let err = store.ensure_shards(8).await.unwrap_err();
        assert!(matches!(err, MetadataError::Invalid(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("12 shards") && text.contains("configured with 8"), "{text}");
        let leases = store.leases().await.unwrap();
        assert_eq!(leases.len(), 12);
        assert!(leases.iter().all(|l| l.owner.is_none() && l.epoch == 0 && !l.live));

        // Acquire: only when free, expired or already ours; the epoch goes up every time.
        assert_eq!(store.acquire(0, "a", ttl).await.unwrap(), Some(1));
        assert_eq!(store.acquire(0, "b", ttl).await.unwrap(), None);
        assert_eq!(store.acquire(0, "a", ttl).await.unwrap(), Some(2));
        let l = store.leases().await.unwrap();
        let l0 = lease(&l, 0);
        assert_eq!((l0.owner.as_deref(), l0.epoch, l0.live), (Some("a"), 2, true));
        assert!(l0.remaining_ms > 5_000 && l0.remaining_ms <= 10_000, "{l0:?}");

        // Renew: only the holder with the current epoch.
        assert_eq!(store.renew("a", &[(0, 2)], ttl).await.unwrap(), vec![0]);
        assert_eq!(store.renew("a", &[(0, 1)], ttl).await.unwrap(), Vec::<u32>::new(), "stale epoch");
        assert_eq!(store.renew("b", &[(0, 2)], ttl).await.unwrap(), Vec::<u32>::new(), "not the owner");
        assert_eq!(store.renew("a", &[], ttl).await.unwrap(), Vec::<u32>::new());

        // Expiry (database clock) and take-over.
        let short = Duration::from_millis(300);
        assert_eq!(store.acquire(1, "a", short).await.unwrap(), Some(1));
        assert_eq!(store.acquire(1, "b", ttl).await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!lease(&store.leases().await.unwrap(), 1).live);
        assert_eq!(store.renew("a", &[(1, 1)], ttl).await.unwrap(), Vec::<u32>::new(), "expired: not renewed");
        assert_eq!(store.acquire(1, "b", ttl).await.unwrap(), Some(2));
        let l1 = store.leases().await.unwrap();
        assert_eq!((lease(&l1, 1).owner.as_deref(), lease(&l1, 1).epoch), (Some("b"), 2));

        // Release: only the holder with the current epoch; the epoch stays, the next acquisition raises it.
        assert!(!store.release(1, "a", 1).await.unwrap());
        assert!(!store.release(1, "b", 1).await.unwrap());
        assert!(store.release(1, "b", 2).await.unwrap());
        let l1 = store.leases().await.unwrap();
        assert_eq!((lease(&l1, 1).owner.as_deref(), lease(&l1, 1).epoch, lease(&l1, 1).live), (None, 2, false));
        assert_eq!(store.acquire(1, "a", ttl).await.unwrap(), Some(3));

        // Fenced manifest writes: the holder with its epoch only, checked in the transaction.
        let fence = |n: &str, epoch| Fence { node_id: n.into(), epoch };
        store.put_segment(&segment(&shard_log_id(1), 0), Some(&fence("a", 3))).await.unwrap();
        let stale = store.put_segment(&segment(&shard_log_id(1), 100), Some(&fence("a", 1))).await.unwrap_err();
        assert!(matches!(stale, MetadataError::Fenced(_)), "{stale:?}");
        println!("stale epoch: {stale}");
        let other = store.put_segment(&segment(&shard_log_id(1), 100), Some(&fence("b", 2))).await.unwrap_err();
        assert!(matches!(other, MetadataError::Fenced(_)), "{other:?}");
        assert!(other.to_string().contains("`b` epoch 2") && other.to_string().contains("owner `a`"), "{other}");
        let other = store.put_segment(&segment(&shard_log_id(1), 100), Some(&fence("b", 3))).await.unwrap_err();
        assert!(matches!(other, MetadataError::Fenced(_)), "non-owner with the current epoch: {other:?}");
        // Released: nobody's fence passes.
        assert!(store.release(1, "a", 3).await.unwrap());
        let freed = store.put_segment(&segment(&shard_log_id(1), 100), Some(&fence("a", 3))).await.unwrap_err();
        assert!(matches!(freed, MetadataError::Fenced(_)), "{freed:?}");
        let bad = store.put_segment(&segment("node-a", 0), Some(&fence("a", 3))).await.unwrap_err();
        assert!(matches!(bad, MetadataError::Invalid(_)), "{bad:?}");
        let missing = store.put_segment(&segment(&shard_log_id(99), 0), Some(&fence("a", 1))).await.unwrap_err();
        assert!(matches!(missing, MetadataError::Fenced(_)), "{missing:?}");
        // Nothing refused was written; unfenced writes are untouched.
        let rows = store.list_segments(&shard_log_id(1)).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.base).collect::<Vec<_>>(), vec![0]);
        store.put_segment(&segment("node-a", 0), None).await.unwrap();

        // Racing acquisitions of one shard: exactly one wins.
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.acquire(5, &format!("n{i}"), ttl).await.unwrap() })
            })
            .collect();
        let mut won = Vec::new();
        for r in racers {
            won.extend(r.await.unwrap());
        }
        assert_eq!(won, vec![1], "one winner, epoch 1");

        // Heartbeats, by the database clock.
        store.heartbeat(&node("a", false)).await.unwrap();
        store.heartbeat(&node("b", false)).await.unwrap();
        store.heartbeat(&node("c", false)).await.unwrap();
        let live = store.live_nodes(ttl).await.unwrap();
        assert_eq!(live.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert_eq!(live[0], node("a", false));
        tokio::time::sleep(Duration::from_millis(700)).await;
        store.heartbeat(&node("a", true)).await.unwrap();
        store.heartbeat(&node("b", false)).await.unwrap();
        let live = store.live_nodes(Duration::from_millis(500)).await.unwrap();
        assert_eq!(live, vec![node("a", true), node("b", false)], "c's heartbeat is too old");
        assert!(store.remove_node("a").await.unwrap());
        assert!(!store.remove_node("a").await.unwrap());
        assert_eq!(store.live_nodes(ttl).await.unwrap().len(), 2);
        store.close().await;

        // The journal offset is per node; progress rows are shared.
        let url = pg.create_database("per_node").unwrap();
        let (a, b) = (open(&url, "a").await, open(&url, "b").await);
        conformance::per_node_journal_offsets(a.as_ref(), b.as_ref()).await.unwrap();
        assert_eq!(open(&url, "").await.load_progress().await.unwrap().1, 0, "the single-node row is apart");
    })
    .await
    .expect("took longer than 120 s");
}

fn home(node_id: &str, cut: HomeCut, adopted_by: Option<&str>, unapplied: bool, dirty: bool) -> HomeRecord {
    HomeRecord {
        node_id: node_id.into(),
        cut,
        adopted_by: adopted_by.map(Into::into),
        unapplied,
        dirty,
        claimed_by: None,
    }
}

fn entered(entry: HomeEntry) -> HomeRecord {
    match entry {
        HomeEntry::Entered(record) => record,
        HomeEntry::Claimed(by) => panic!("entered expected, the home log is claimed by `{by}`"),
    }
}

#[tokio::test]
async fn home_log_adoption_protocol() {
    let Some(pg) = Postgres::start_or_skip("home_log_adoption_protocol") else { return };
    tokio::time::timeout(Duration::from_secs(120), async {
        let store = open(pg.url(), "").await;
        let dead_after = Duration::from_secs(1);
        let claim_ttl = Duration::from_secs(30);
        let zero = HomeCut::default();

        // n1 heartbeats and enters its home log: created, dirty.
        store.heartbeat(&node("n1", false)).await.unwrap();
        assert_eq!(store.claim_home("n1", "n2", dead_after, claim_ttl).await.unwrap(), None, "no home log yet");
        let r = entered(store.enter_home("n1").await.unwrap());
        assert_eq!(r, home("n1", zero, None, false, true));
        assert_eq!(store.homes().await.unwrap(), vec![r.clone()]);

        // Not claimed while n1's heartbeat is fresh; never by n1 itself.
        assert_eq!(store.claim_home("n1", "n2", dead_after, claim_ttl).await.unwrap(), None, "n1 is alive");
        assert_eq!(store.claim_home("n1", "n1", Duration::ZERO, claim_ttl).await.unwrap(), None, "its own");
        assert_eq!(store.claim_home("nx", "n2", Duration::ZERO, claim_ttl).await.unwrap(), None, "no such home");

        // n1 dies: n2 claims its home log.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let claimed = store.claim_home("n1", "n2", dead_after, claim_ttl).await.unwrap().expect("n1 is dead");
        assert_eq!(claimed, HomeRecord { claimed_by: Some("n2".into()), ..home("n1", zero, None, false, true) });
        // n1 comes back while n2 adopts: it must wait.
        assert_eq!(store.enter_home("n1").await.unwrap(), HomeEntry::Claimed("n2".into()));
        // A second adopter is refused while n2's claim is live; n2 may claim again (extends it).
        assert_eq!(store.claim_home("n1", "n3", dead_after, claim_ttl).await.unwrap(), None, "claimed by n2");
        assert_eq!(store.claim_home("n1", "n1", Duration::ZERO, claim_ttl).await.unwrap(), None, "its own");
        assert!(store.claim_home("n1", "n2", dead_after, claim_ttl).await.unwrap().is_some(), "n2 again");
        let homes = store.homes().await.unwrap();
        assert_eq!(homes[0].claimed_by.as_deref(), Some("n2"));

        // Only the claimer finishes the adoption.
        let cut = HomeCut { scheduled: 5, half: 7 };
        assert!(!store.finish_adoption("n1", "n3", cut).await.unwrap(), "n3 holds no claim");
        assert!(store.finish_adoption("n1", "n2", cut).await.unwrap());
        assert_eq!(store.homes().await.unwrap(), vec![home("n1", cut, Some("n2"), true, false)]);
        assert!(!store.finish_adoption("n1", "n2", cut).await.unwrap(), "the claim is gone");
        // Nothing new to adopt until n1 serves its home log again.
        assert_eq!(store.claim_home("n1", "n3", dead_after, claim_ttl).await.unwrap(), None, "not dirty");

        // n1 is back: it gets the cut to apply.
        store.heartbeat(&node("n1", false)).await.unwrap();
        let r = entered(store.enter_home("n1").await.unwrap());
        assert_eq!(r, home("n1", cut, Some("n2"), true, true));
        let moved = HomeCut { scheduled: cut.scheduled + 1, ..cut };
        store.home_cut_applied("n1", moved).await.unwrap();
        assert!(store.homes().await.unwrap()[0].unapplied, "another cut than the one applied stays unapplied");
        store.home_cut_applied("n1", cut).await.unwrap();
        assert_eq!(store.homes().await.unwrap(), vec![home("n1", cut, Some("n2"), false, true)]);

        // A claim that expires (database clock): the adoption is not recorded.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let short = Duration::from_millis(400);
        assert!(store.claim_home("n1", "n3", dead_after, short).await.unwrap().is_some());
        assert_eq!(store.homes().await.unwrap()[0].claimed_by.as_deref(), Some("n3"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(store.homes().await.unwrap()[0].claimed_by, None, "expired");
        assert!(!store.finish_adoption("n1", "n3", HomeCut { scheduled: 9, half: 9 }).await.unwrap());
        assert_eq!(store.homes().await.unwrap(), vec![home("n1", cut, Some("n2"), false, true)], "nothing written");

        // An expired claim does not stop another adopter; drop_claim drops only the own claim.
        assert!(store.claim_home("n1", "n2", dead_after, claim_ttl).await.unwrap().is_some());
        store.drop_claim("n1", "n3").await.unwrap();
        assert_eq!(store.homes().await.unwrap()[0].claimed_by.as_deref(), Some("n2"), "not n3's claim");
        store.drop_claim("n1", "n2").await.unwrap();
        assert_eq!(store.homes().await.unwrap()[0].claimed_by, None);
        assert!(!store.finish_adoption("n1", "n2", cut).await.unwrap(), "dropped");
        assert_eq!(entered(store.enter_home("n1").await.unwrap()).claimed_by, None, "no claim left");

        // n1 entering after a claim expired voids it: its holder cannot finish any more.
        assert!(store.claim_home("n1", "n3", dead_after, short).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(800)).await;
        let r = entered(store.enter_home("n1").await.unwrap());
        assert_eq!(r, home("n1", cut, Some("n2"), false, true));
        assert!(!store.finish_adoption("n1", "n3", HomeCut { scheduled: 9, half: 9 }).await.unwrap());

        // Cuts only grow; a home without a node row (never heartbeated, or removed) is dead.
        assert!(store.claim_home("n1", "n3", dead_after, claim_ttl).await.unwrap().is_some());
        assert!(store.finish_adoption("n1", "n3", HomeCut { scheduled: 3, half: 9 }).await.unwrap());
        let big = Duration::from_secs(3600);
        entered(store.enter_home("n4").await.unwrap());
        let claimed = store.claim_home("n4", "n1", big, claim_ttl).await.unwrap().expect("no node row: dead");
        assert_eq!(claimed.claimed_by.as_deref(), Some("n1"));
        assert_eq!(
            store.homes().await.unwrap(),
            vec![
                home("n1", HomeCut { scheduled: 5, half: 9 }, Some("n3"), true, false),
                HomeRecord { claimed_by: Some("n1".into()), ..home("n4", zero, None, false, true) },
            ]
        );
        // n1's claim on n4 stands against other adopters; n1 never claims its own home log.
        store.heartbeat(&node("n4", false)).await.unwrap();
        assert_eq!(store.claim_home("n4", "n2", big, claim_ttl).await.unwrap(), None, "claimed by n1");
        assert_eq!(store.claim_home("n1", "n1", Duration::ZERO, claim_ttl).await.unwrap(), None);

        // A node entering its home log while adopters race for it: every claim made after its
        // entry fails (its heartbeat is fresh); one claim at most succeeds before it.
        store.drop_claim("n4", "n1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let racers: Vec<_> = (0..6)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.claim_home("n4", &format!("a{i}"), dead_after, claim_ttl).await })
            })
            .collect();
        store.heartbeat(&node("n4", false)).await.unwrap();
        let entry = store.enter_home("n4").await.unwrap();
        let mut won = Vec::new();
        for r in racers {
            won.extend(r.await.unwrap().unwrap().and_then(|r| r.claimed_by));
        }
        assert!(won.len() <= 1, "one claim at most: {won:?}");
        match entry {
            HomeEntry::Claimed(by) => assert_eq!(won, vec![by], "n4 saw the one claim"),
            HomeEntry::Entered(_) => assert!(won.is_empty(), "n4 entered: no claim succeeded before"),
        }
        println!("n4 entering against 6 racing claims: {:?} won", won);
        assert_eq!(store.claim_home("n4", "a9", dead_after, claim_ttl).await.unwrap(), None, "n4 is alive");
    })
    .await
    .expect("took longer than 120 s");
}

fn progress(group: &str, topic: &str, queue_id: u32, ack_floor: u64) -> ProgressRecord {
    ProgressRecord {
        group: group.into(),
        topic: topic.into(),
        queue_id,
        ack_floor,
        acked_above: vec![ack_floor as u8, 1],
    }
}

fn by_key(mut rows: Vec<ProgressRecord>) -> Vec<ProgressRecord> {
    rows.sort_by(|a, b| (&a.group, &a.topic, a.queue_id).cmp(&(&b.group, &b.topic, b.queue_id)));
    rows
}

/// `load_progress`, its rows by key.
async fn loaded(store: &PostgresMetadataStore) -> (Vec<ProgressRecord>, u64) {
    let (rows, offset) = store.load_progress().await.unwrap();
    (by_key(rows), offset)
}

#[tokio::test]
async fn system_progress_is_per_node() {
    let Some(pg) = Postgres::start_or_skip("system_progress_is_per_node") else { return };
    tokio::time::timeout(Duration::from_secs(120), async {
        let (n1, n2) = (open(pg.url(), "n1").await, open(pg.url(), "n2").await);
        let sys = |floor| progress("rmq_sys_trans", "rmq_sys_trans_half", 0, floor);
        let shared = progress("g", "t", 0, 3);

        n1.save_progress(&[sys(10), shared.clone()], 40).await.unwrap();
        n2.save_progress(&[sys(20)], 50).await.unwrap();
        // Each node its own system row (without the suffix); the group's row is shared.
        assert_eq!(loaded(&n1).await, (by_key(vec![shared.clone(), sys(10)]), 40));
        assert_eq!(loaded(&n2).await, (by_key(vec![shared.clone(), sys(20)]), 50));
        // The same key again, in one batch: the last record wins, under the node's name.
        n1.save_progress(&[sys(11), sys(12)], 41).await.unwrap();
        assert_eq!(loaded(&n1).await, (by_key(vec![shared.clone(), sys(12)]), 41));

        // Another node reads a node's system progress (adopting its home log).
        assert_eq!(n2.node_system_progress("n1").await.unwrap(), (vec![sys(12)], 41));
        assert_eq!(n1.node_system_progress("n2").await.unwrap(), (vec![sys(20)], 50));
        assert_eq!(n1.node_system_progress("n3").await.unwrap(), (vec![], 0));
        // Node ids are not patterns: `n_` is not `n1`.
        assert_eq!(n1.node_system_progress("n_").await.unwrap(), (vec![], 0));
        assert_eq!(n1.node_system_progress("%").await.unwrap(), (vec![], 0));

        // A single gateway (no node id) is unchanged: its system rows are unscoped and it sees
        // every row as stored; the nodes skip its unscoped system rows.
        let single = open(pg.url(), "").await;
        single.save_progress(&[sys(5)], 1).await.unwrap();
        let (rows, offset) = loaded(&single).await;
        let groups: Vec<_> = rows.into_iter().map(|r| (r.group, r.ack_floor)).collect();
        assert_eq!(
            (groups, offset),
            (
                vec![
                    ("g".to_string(), 3),
                    ("rmq_sys_trans".to_string(), 5),
                    ("rmq_sys_trans@n1".to_string(), 12),
                    ("rmq_sys_trans@n2".to_string(), 20),
                ],
                1
            )
        );
        assert_eq!(loaded(&n1).await, (by_key(vec![shared.clone(), sys(12)]), 41));
        assert_eq!(n2.node_system_progress("n1").await.unwrap(), (vec![sys(12)], 41));

        // Deleting a system group's progress deletes the node's own rows only.
        assert_eq!(n1.delete_progress("rmq_sys_trans").await.unwrap(), 1);
        assert_eq!(loaded(&n1).await, (vec![shared.clone()], 41));
        assert_eq!(loaded(&n2).await, (by_key(vec![shared.clone(), sys(20)]), 50));
        assert_eq!(single.load_progress().await.unwrap().0.len(), 3, "g, rmq_sys_trans, rmq_sys_trans@n2");
    })
    .await
    .expect("took longer than 120 s");
}

/// What the handlers of every node did, in order.
#[derive(Debug, Clone)]
enum Event {
    Acquire { node: String, shard: ShardId },
    Release { node: String, shard: ShardId },
    Lost { node: String, shard: ShardId },
}

#[derive(Default)]
struct Record {
    events: Vec<Event>,
    /// Who holds each shard now (from acquire until release/lost).
    holders: HashMap<ShardId, (String, i64)>,
    last_epoch: HashMap<ShardId, i64>,
    violations: Vec<String>,
    /// When each shard was last released, and the longest release → next acquisition gap.
    released_at: HashMap<ShardId, Instant>,
    longest_gap: Duration,
    /// Home logs adopted: (adopter, dead node).
    adoptions: Vec<(String, String)>,
}

type Recorder = Arc<Mutex<Record>>;

struct RecordingHandler {
    node: String,
    view: Arc<ClusterView>,
    rec: Recorder,
}

#[async_trait]
impl ShardHandler for RecordingHandler {
    async fn acquire(&self, shard: ShardId, epoch: i64) -> anyhow::Result<()> {
        {
            let mut r = self.rec.lock().unwrap();
            if let Some((holder, e)) = r.holders.get(&shard) {
                let v =
                    format!("{} acquired shard {shard} (epoch {epoch}) while {holder} holds it (epoch {e})", self.node);
                r.violations.push(v);
            }
            if let Some(last) = r.last_epoch.get(&shard).copied().filter(|last| epoch <= *last) {
                r.violations.push(format!("shard {shard}: epoch {epoch} after {last}"));
            }
            if let Some(at) = r.released_at.remove(&shard) {
                r.longest_gap = r.longest_gap.max(at.elapsed());
            }
            r.holders.insert(shard, (self.node.clone(), epoch));
            r.last_epoch.insert(shard, epoch);
            r.events.push(Event::Acquire { node: self.node.clone(), shard });
        }
        self.view.set_local(shard, true);
        Ok(())
    }

    async fn release(&self, shard: ShardId) -> anyhow::Result<()> {
        self.view.set_local(shard, false);
        // A tail upload.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut r = self.rec.lock().unwrap();
        if r.holders.get(&shard).is_some_and(|(n, _)| *n == self.node) {
            r.holders.remove(&shard);
        } else {
            r.violations.push(format!("{} released shard {shard} it did not hold", self.node));
        }
        r.events.push(Event::Release { node: self.node.clone(), shard });
        r.released_at.insert(shard, Instant::now());
        Ok(())
    }

    async fn lost(&self, shard: ShardId) {
        self.view.set_local(shard, false);
        let mut r = self.rec.lock().unwrap();
        if r.holders.get(&shard).is_some_and(|(n, _)| *n == self.node) {
            r.holders.remove(&shard);
        }
        r.events.push(Event::Lost { node: self.node.clone(), shard });
    }

    /// No scheduled or half messages here: nothing to give up.
    async fn enter_home(&self, _cut: HomeCut, _unapplied: bool) -> anyhow::Result<()> {
        Ok(())
    }

    /// Nothing to adopt: the cut stays.
    async fn adopt_home(&self, node_id: &str, from: HomeCut) -> anyhow::Result<HomeCut> {
        self.rec.lock().unwrap().adoptions.push((self.node.clone(), node_id.to_owned()));
        Ok(from)
    }
}

/// The store, or "unavailable" for everything while `cut` (a node cut off from PostgreSQL).
struct Cuttable {
    inner: Arc<PostgresMetadataStore>,
    cut: AtomicBool,
}

impl Cuttable {
    fn check(&self) -> MetadataResult<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(MetadataError::Unavailable("cut off (test)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl ClusterStore for Cuttable {
    async fn ensure_shards(&self, shards: u32) -> MetadataResult<()> {
        self.check()?;
        self.inner.ensure_shards(shards).await
    }
    async fn heartbeat(&self, node: &NodeRecord) -> MetadataResult<()> {
        self.check()?;
        self.inner.heartbeat(node).await
    }
    async fn live_nodes(&self, ttl: Duration) -> MetadataResult<Vec<NodeRecord>> {
        self.check()?;
        self.inner.live_nodes(ttl).await
    }
    async fn remove_node(&self, node_id: &str) -> MetadataResult<bool> {
        self.check()?;
        self.inner.remove_node(node_id).await
    }
    async fn leases(&self) -> MetadataResult<Vec<LeaseRecord>> {
        self.check()?;
        self.inner.leases().await
    }
    async fn acquire(&self, shard: u32, node_id: &str, ttl: Duration) -> MetadataResult<Option<i64>> {
        self.check()?;
        self.inner.acquire(shard, node_id, ttl).await
    }
    async fn renew(&self, node_id: &str, held: &[(u32, i64)], ttl: Duration) -> MetadataResult<Vec<u32>> {
        self.check()?;
        self.inner.renew(node_id, held, ttl).await
    }
    async fn release(&self, shard: u32, node_id: &str, epoch: i64) -> MetadataResult<bool> {
        self.check()?;
        self.inner.release(shard, node_id, epoch).await
    }
    async fn enter_home(&self, node_id: &str) -> MetadataResult<HomeEntry> {
        self.check()?;
        self.inner.enter_home(node_id).await
    }
    async fn home_cut_applied(&self, node_id: &str, cut: HomeCut) -> MetadataResult<()> {
        self.check()?;
        self.inner.home_cut_applied(node_id, cut).await
    }
    async fn homes(&self) -> MetadataResult<Vec<HomeRecord>> {
        self.check()?;
        self.inner.homes().await
    }
    async fn claim_home(
        &self,
        node_id: &str,
        adopter: &str,
        dead_after: Duration,
        claim_ttl: Duration,
    ) -> MetadataResult<Option<HomeRecord>> {
        self.check()?;
        self.inner.claim_home(node_id, adopter, dead_after, claim_ttl).await
    }
    async fn finish_adoption(&self, node_id: &str, adopter: &str, cut: HomeCut) -> MetadataResult<bool> {
        self.check()?;
        self.inner.finish_adoption(node_id, adopter, cut).await
    }
    async fn drop_claim(&self, node_id: &str, adopter: &str) -> MetadataResult<()> {
        self.check()?;
        self.inner.drop_claim(node_id, adopter).await
    }
    async fn node_system_progress(&self, node_id: &str) -> MetadataResult<(Vec<ProgressRecord>, u64)> {
        self.check()?;
        self.inner.node_system_progress(node_id).await
    }
}

struct Member {
    view: Arc<ClusterView>,
    store: Arc<Cuttable>,
    handle: Option<MembershipHandle>,
}

async fn member(
    pg_store: &Arc<PostgresMetadataStore>,
    id: &str,
    rec: &Recorder,
    settings: MembershipSettings,
) -> Member {
    let view = ClusterView::new(
        NodeInfo { node_id: id.into(), advertised: format!("{id}:8081"), peer: format!("{id}:9081") },
        12,
    );
    let store = Arc::new(Cuttable { inner: pg_store.clone(), cut: AtomicBool::new(false) });
    let handler = Arc::new(RecordingHandler { node: id.into(), view: view.clone(), rec: rec.clone() });
    let handle = Membership::start(store.clone(), view.clone(), handler, settings).await.unwrap();
    Member { view, store, handle: Some(handle) }
}

fn held_by(rec: &Recorder) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for (n, _) in rec.lock().unwrap().holders.values() {
        *by.entry(n.clone()).or_insert(0) += 1;
    }
    by
}

/// Polls `cond` every 50 ms up to `bound`; returns how long it took.
async fn wait_for(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn three_members_spread_fail_over_and_hand_over() {
    let Some(pg) = Postgres::start_or_skip("three_members_spread_fail_over_and_hand_over") else { return };
    tokio::time::timeout(Duration::from_secs(150), async {
        let settings =
            MembershipSettings { lease_ttl: Duration::from_secs(2), renew_interval: Duration::from_millis(400) };
        let pg_store = open(pg.url(), "").await;
        let rec: Recorder = Arc::default();
        let (a, b, c) = tokio::join!(
            member(&pg_store, "a", &rec, settings),
            member(&pg_store, "b", &rec, settings),
            member(&pg_store, "c", &rec, settings)
        );
        let mut members = [a, b, c];

        // Spread 4/4/4.
        let took = wait_for("an even spread", Duration::from_secs(30), || {
            let by = held_by(&rec);
            ["a", "b", "c"].iter().all(|n| by.get(*n) == Some(&4))
        })
        .await;
        println!("12 shards spread 4/4/4 over 3 nodes {took:?} after start");
        for m in &members {
            assert_eq!(m.view.local_shards().len(), 4);
        }
        // The view of every node agrees on the owners (once a round has read them).
        wait_for("views agree", Duration::from_secs(10), || {
            (0..12).all(|s| {
                let owners: Vec<_> = members.iter().map(|m| m.view.owner(s).map(|o| o.node_id.clone())).collect();
                owners[0].is_some() && owners.iter().all(|o| *o == owners[0])
            })
        })
        .await;
        // The status shows the leases as its node last read them: its own acquisitions appear
        // after its next round.
        let handle = members[0].handle.as_ref().unwrap();
        let started = Instant::now();
        let status = loop {
            let status = handle.status();
            let all_owned = status.shards.iter().all(|s| s.owner.is_some() && s.epoch >= 1);
            if all_owned || started.elapsed() > Duration::from_secs(10) {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.nodes.len(), 3);
        assert_eq!(status.local_shards.len(), 4);
        assert!(status.shards.iter().all(|s| s.owner.is_some() && s.epoch >= 1), "{status:?}");

        // c is cut off from PostgreSQL: it stops at its local deadline, the others take its shards.
        let c_shards = members[2].view.local_shards();
        let cut_at = Instant::now();
        members[2].store.cut.store(true, Ordering::SeqCst);
        let failover = wait_for("c's shards taken over", Duration::from_secs(30), || {
            let r = rec.lock().unwrap();
            c_shards.iter().all(|s| r.holders.get(s).is_some_and(|(n, _)| n != "c"))
        })
        .await;
        println!(
            "fail-over: c's {} shards held by a/b {failover:?} after c was cut off (lease TTL {:?}, renew {:?})",
            c_shards.len(),
            settings.lease_ttl,
            settings.renew_interval
        );
        {
            let r = rec.lock().unwrap();
            let lost: Vec<ShardId> = r
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::Lost { node, shard } if node == "c" => Some(*shard),
                    _ => None,
                })
                .collect();
            let mut sorted = lost.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, c_shards, "c was told it lost each of its shards");
        }
        assert!(members[2].view.local_shards().is_empty());
        wait_for("a and b hold 6 each", Duration::from_secs(30), || {
            let by = held_by(&rec);
            by.get("a") == Some(&6) && by.get("b") == Some(&6)
        })
        .await;
        println!("a/b hold all 12 shards {:?} after the cut", cut_at.elapsed());
        members[2].handle.take().unwrap().abort();

        // b leaves gracefully: a gets everything, each release before a's acquisition.
        let left_at = Instant::now();
        let mark = rec.lock().unwrap().events.len();
        rec.lock().unwrap().longest_gap = Duration::ZERO;
        members[1].handle.take().unwrap().leave().await.unwrap();
        wait_for("a holds everything", Duration::from_secs(30), || held_by(&rec).get("a") == Some(&12)).await;
        println!(
            "hand-over: b left, a holds all 12 shards {:?} later; longest gap between b's release and a's acquisition of a shard: {:?}",
            left_at.elapsed(),
            rec.lock().unwrap().longest_gap
        );
        {
            let r = rec.lock().unwrap();
            let after = &r.events[mark..];
            let mut released = 0;
            for (i, e) in after.iter().enumerate() {
                if let Event::Release { node, shard } = e {
                    assert_eq!(node, "b");
                    released += 1;
                    let next = after[i..]
                        .iter()
                        .position(|e| matches!(e, Event::Acquire { node, shard: s } if node == "a" && s == shard));
                    assert!(next.is_some(), "a acquired shard {shard} after b released it");
                }
                if let Event::Acquire { node, shard } = e {
                    assert_eq!(node, "a", "a leaving node acquires nothing");
                    let released_before = after[..i]
                        .iter()
                        .any(|e| matches!(e, Event::Release { node, shard: s } if node == "b" && s == shard));
                    assert!(released_before, "a acquired shard {shard} before b released it");
                }
                assert!(!matches!(e, Event::Lost { .. }), "a graceful leave loses nothing: {e:?}");
            }
            assert_eq!(released, 6, "b handed over its 6 shards");
        }
        let live = pg_store.live_nodes(Duration::from_secs(60)).await.unwrap();
        // b's row stays, marked leaving, until its heartbeat expires (its home log is adopted then).
        assert!(live.iter().all(|n| n.node_id != "b" || n.leaving), "b is marked leaving: {live:?}");
        let leases = pg_store.leases().await.unwrap();
        assert!(leases.iter().all(|l| l.owner.as_deref() == Some("a") && l.live), "{leases:?}");

        // a leaves too: every lease is free.
        members[0].handle.take().unwrap().leave().await.unwrap();
        let leases = pg_store.leases().await.unwrap();
        assert!(leases.iter().all(|l| l.owner.is_none()), "{leases:?}");

        let r = rec.lock().unwrap();
        assert!(r.violations.is_empty(), "two holders at once or epochs going back: {:#?}", r.violations);
        println!("{} handler events, no shard ever had two holders; home logs adopted: {:?}", r.events.len(), r.adoptions);
    })
    .await
    .expect("took longer than 150 s");
}

#[tokio::test]
async fn a_crashed_member_is_replaced_and_the_shard_count_is_checked() {
    let Some(pg) = Postgres::start_or_skip("a_crashed_member_is_replaced_and_the_shard_count_is_checked") else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let settings =
            MembershipSettings { lease_ttl: Duration::from_secs(2), renew_interval: Duration::from_millis(400) };
        let pg_store = open(pg.url(), "").await;
        let rec: Recorder = Arc::default();
        let (a, b) = tokio::join!(member(&pg_store, "a", &rec, settings), member(&pg_store, "b", &rec, settings));
        let mut members = [a, b];
        wait_for("an even spread", Duration::from_secs(30), || {
            let by = held_by(&rec);
            by.get("a") == Some(&6) && by.get("b") == Some(&6)
        })
        .await;
        let status = serde_json::to_value(members[0].handle.as_ref().unwrap().status()).unwrap();
        assert_eq!(status["nodeId"], "a");
        assert_eq!(status["shards"].as_array().unwrap().len(), 12);
        assert_eq!(status["shards"][3]["logId"], "shard-0003");
        assert_eq!(status["localShards"].as_array().unwrap().len(), 6);

        // A node configured with another shard count is refused.
        let view = ClusterView::new(NodeInfo { node_id: "x".into(), advertised: "x:1".into(), peer: "x:2".into() }, 8);
        let handler = Arc::new(RecordingHandler { node: "x".into(), view: view.clone(), rec: Arc::default() });
        let err = Membership::start(pg_store.clone(), view, handler, settings).await.err().expect("8 shards refused");
        assert!(err.to_string().contains("12 shards"), "{err:#}");

        // b crashes (its tasks are dropped; nothing is handed over or released): a takes
        // everything once b's leases expire.
        members[1].handle.take().unwrap().abort();
        // The process is gone, and with it whatever it held.
        rec.lock().unwrap().holders.retain(|_, (n, _)| n != "b");
        let took =
            wait_for("a holds everything", Duration::from_secs(30), || held_by(&rec).get("a") == Some(&12)).await;
        println!(
            "crash: a holds all 12 shards {took:?} after b stopped (lease TTL {:?}, renew {:?})",
            settings.lease_ttl, settings.renew_interval
        );
        let leases = pg_store.leases().await.unwrap();
        assert!(leases.iter().all(|l| l.owner.as_deref() == Some("a")), "{leases:?}");
        // Every shard b had went up an epoch.
        assert!(leases.iter().all(|l| l.epoch >= 1));
        members[0].handle.take().unwrap().leave().await.unwrap();
        let r = rec.lock().unwrap();
        assert!(r.violations.is_empty(), "{:#?}", r.violations);
    })
    .await
    .expect("took longer than 120 s");
}
