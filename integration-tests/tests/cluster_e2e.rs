//! Three `rmq-gateway` processes as one cluster (one PostgreSQL, one moto S3 server, a fault
//! proxy per node in front of PostgreSQL, a round-robin TCP load balancer in front of the
//! gRPC ports: `integration_tests::cluster`), driven by the official Java SDK (and Go):
//!
//! - every message sent is received, through the load balancer (routes advertise it: every
//!   request a non-owner gets is forwarded) and through QueryRoute routes (advertised = each
//!   node); at-least-once: duplicates are counted and printed, not failed;
//! - SIGKILL of one gateway under load: the time until all its shards are owned by the others
//!   and until sends succeed again is printed; on a `durability: s3` topic the dead node's data
//!   dir is deleted, and every acknowledged message is still received;
//! - a gateway cut off from PostgreSQL under load loses its shards to the others; after healing,
//!   the stored data shows that no queue had two writers (per queue, offsets dense and none
//!   holding two messages) and that every acknowledged message is there;
//! - a rolling restart (SIGTERM, wait ready, next) of all three under load: no send fails
//!   (the SDK's own retries count as success), every acknowledged message is received.
//!
//! Leases are short (4 s, renewed every 1 s) so that each test takes well under two minutes.
//! The tests run one at a time (each starts three gateways and two JVMs on a small machine).
//! Needs `cargo build --bin rmq-gateway`, `integration-tests/sdk/setup.sh` (java, go, s3,
//! postgres); a missing prerequisite skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::cluster::{Cluster, ClusterOpts, Stored, TopicDef};
use integration_tests::gateway_process::gateway_binary;
use integration_tests::scenario::{shout, unique};
use integration_tests::sdk::{self, Mode, Outcome, Report, Run, Running, Sdk};

/// One cluster test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Messages per second of the load producers, and how long their load lasts.
const RATE: u32 = 100;
/// How long failover may take before the test fails (the bound is 15 s; the test's
/// leases are shorter than the default ones).
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// The SDK consumer stops after this long without a new message.
const DRAIN_IDLE_SECS: u32 = 25;
/// Hard limit of one driver process.
const DRIVER_LIMIT: Duration = Duration::from_secs(100);

fn required() -> bool {
    std::env::var("RMQ_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// The cluster, or `None` (skip, or a panic under `RMQ_E2E_REQUIRED=1`) without the Java SDK,
/// the gateway binary, PostgreSQL or the S3 server.
fn start(test: &str, sdks: &[Sdk], opts: ClusterOpts) -> Option<Cluster> {
    let mut missing: Vec<String> = sdks.iter().filter_map(|s| s.missing()).collect();
    if let Err(e) = gateway_binary() {
        missing.push(e.to_string());
    }
    if !missing.is_empty() {
        let text = format!("SKIPPED {test}: {}", missing.join("; "));
        if required() {
            panic!("{text} (RMQ_E2E_REQUIRED=1)");
        }
        shout(&text);
        return None;
    }
    let started = Instant::now();
    let cluster = Cluster::start_or_skip(test, 3, opts)?.unwrap_or_else(|e| panic!("{test}: cluster: {e:#}"));
    eprintln!("{test}: 3 gateways ready in {:.1} s, LB {}", started.elapsed().as_secs_f64(), cluster.lb_endpoint());
    Some(cluster)
}

fn run(sdk: Sdk, mode: Mode, endpoint: &str, topic: &str, group: &str, prefix: &str, count: usize) -> Run {
    Run {
        sdk,
        mode,
        endpoint: endpoint.to_string(),
        topic: topic.to_string(),
        group: group.to_string(),
        count,
        prefix: prefix.to_string(),
        tag: "e2e".to_string(),
        timeout: DRIVER_LIMIT - Duration::from_secs(20),
        kill_after: DRIVER_LIMIT,
        extra_args: Vec::new(),
    }
}

/// A Java `load-produce` of `count` messages at [`RATE`]/s, started (not waited for).
fn load(c: &Cluster, endpoint: &str, topic: &str, prefix: &str, count: usize) -> Running {
    let mut r = run(Sdk::Java, Mode::Named("load-produce"), endpoint, topic, "", prefix, count);
    r.extra_args = vec!["--rate".into(), RATE.to_string(), "--inflight".into(), "16".into()];
    sdk::spawn(&r, c.path()).unwrap_or_else(|e| panic!("load-produce: {e:#}"))
}

/// A Java `drain-consume` of the topic with a fresh group, run to completion.
fn drain(c: &Cluster, endpoint: &str, topic: &str, prefix: &str, count: usize) -> Outcome {
    let mut r = run(Sdk::Java, Mode::Named("drain-consume"), endpoint, topic, &unique("group", "drain"), prefix, count);
    r.extra_args = vec!["--idle-secs".into(), DRAIN_IDLE_SECS.to_string()];
    sdk::spawn(&r, c.path()).and_then(Running::wait).unwrap_or_else(|e| panic!("drain-consume: {e:#}"))
}

fn fail(c: &Cluster, outcome: &Outcome, what: &str) -> ! {
    panic!("{what}\n{}\n{}", outcome.describe(), c.logs(30))
}

fn report<'a>(c: &Cluster, outcome: &'a Outcome) -> &'a Report {
    outcome.report().unwrap_or_else(|| fail(c, outcome, "the driver printed no RESULT"))
}

/// Waits until a running load producer has `k` acks (or has exited), bounded.
fn wait_progress(running: &mut Running, k: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while running.progress() < k && !running.exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One send of `load-produce`: index, start and end (epoch ms), acknowledged.
#[derive(Debug, Clone, Copy)]
struct Send {
    #[allow(dead_code)]
    index: usize,
    start: i64,
    end: i64,
    ok: bool,
    /// The queue the SDK picked and the offset the gateway answered (-1: unknown). Not
    /// checked: the answer names no queue, and a gateway may store a send in another one.
    #[allow(dead_code)]
    queue: i64,
    #[allow(dead_code)]
    offset: i64,
}

fn sends(r: &Report) -> Vec<Send> {
    let Some(rows) = r.extra.get("sends").and_then(|v| v.as_array()) else { return Vec::new() };
    rows.iter()
        .filter_map(|row| {
            let a = row.as_array()?;
            Some(Send {
                index: usize::try_from(a.first()?.as_i64()?).ok()?,
                start: a.get(1)?.as_i64()?,
                end: a.get(2)?.as_i64()?,
                ok: a.get(3)?.as_i64()? == 1,
                queue: a.get(4).and_then(|v| v.as_i64()).unwrap_or(-1),
                offset: a.get(5).and_then(|v| v.as_i64()).unwrap_or(-1),
            })
        })
        .collect()
}

/// The acknowledged message ids of a `load-produce` report.
fn acked(r: &Report) -> BTreeSet<String> {
    r.ids.iter().filter(|id| !id.is_empty()).cloned().collect()
}

/// One delivery of `drain-consume` (the SDK's queue is the one it asked, not where the
/// message is stored: the stored positions come from [`Cluster::read_stored`]).
#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Delivery {
    id: String,
    index: i64,
    queue: i64,
    offset: i64,
}

fn deliveries(r: &Report) -> Vec<Delivery> {
    let Some(rows) = r.extra.get("deliveries").and_then(|v| v.as_array()) else { return Vec::new() };
    rows.iter()
        .filter_map(|row| {
            let a = row.as_array()?;
            Some(Delivery {
                id: a.first()?.as_str()?.to_string(),
                index: a.get(1)?.as_i64()?,
                queue: a.get(2)?.as_i64()?,
                offset: a.get(3)?.as_i64()?,
            })
        })
        .collect()
}

/// What the consumed and the stored data say.
#[derive(Debug, Default)]
struct Audit {
    /// acknowledged ids the SDK consumer never received
    lost: Vec<String>,
    /// deliveries beyond the first of a message id (redeliveries)
    redelivered: usize,
    /// stored: body indexes stored under more than one offset (a send stored twice)
    stored_twice: usize,
    /// stored: acknowledged ids in no queue
    not_stored: Vec<String>,
    /// stored: `queue: offset -> two messages` (two writers)
    offset_conflicts: Vec<String>,
    /// stored: `queue: offsets a..b missing` (a gap: data lost or written past)
    gaps: Vec<String>,
    queues: usize,
    stored: usize,
}

impl Audit {
    fn of(acked: &BTreeSet<String>, ds: &[Delivery], stored: Option<&[Stored]>, prefix: &str) -> Audit {
        let mut a = Audit::default();
        let received: BTreeSet<&str> = ds.iter().map(|d| d.id.as_str()).collect();
        a.lost = acked.iter().filter(|id| !received.contains(id.as_str())).cloned().collect();
        a.redelivered = ds.len() - received.len();
        let Some(stored) = stored else { return a };
        a.stored = stored.len();
        let ids: BTreeSet<&str> = stored.iter().map(|m| m.id.as_str()).collect();
        a.not_stored = acked.iter().filter(|id| !ids.contains(id.as_str())).cloned().collect();
        let mut offsets_of_body: BTreeMap<&[u8], usize> = BTreeMap::new();
        let mut at: BTreeMap<i32, BTreeMap<i64, Vec<&str>>> = BTreeMap::new();
        for m in stored {
            if m.body.starts_with(prefix.as_bytes()) {
                *offsets_of_body.entry(&m.body).or_default() += 1;
            }
            at.entry(m.queue).or_default().entry(m.offset).or_default().push(&m.id);
        }
        a.stored_twice = offsets_of_body.values().filter(|&&n| n > 1).count();
        a.queues = at.len();
        for (queue, offsets) in &at {
            for (offset, ids) in offsets {
                if ids.len() > 1 || *offset < 0 {
                    a.offset_conflicts.push(format!("queue {queue} offset {offset}: {ids:?}"));
                }
            }
            let mut prev: Option<i64> = None;
            for &offset in offsets.keys() {
                if let Some(p) = prev
                    && offset != p + 1
                {
                    a.gaps.push(format!("queue {queue}: offsets {}..{} missing", p + 1, offset - 1));
                }
                prev = Some(offset);
            }
        }
        a
    }

    fn print(&self, test: &str, acked: usize) {
        eprintln!(
            "{test}: {acked} acknowledged, {} not received, {} redeliveries; stored: {} messages in {} queues, \
             {} acknowledged not stored, {} sends stored twice, {} offset \
             conflicts, {} gaps",
            self.lost.len(),
            self.redelivered,
            self.stored,
            self.queues,
            self.not_stored.len(),
            self.stored_twice,
            self.offset_conflicts.len(),
            self.gaps.len()
        );
    }
}

/// Consumes the topic with the Java SDK (fresh group) and checks that every acknowledged id
/// is received; with `offsets`, also reads what every queue stores (PullMessage at each queue's
/// owner) and checks that each queue's offsets are dense, each holds one message, and every
/// acknowledged id is stored: one writer per queue, nothing acknowledged lost.
fn consume_and_audit(
    c: &Cluster,
    test: &str,
    endpoint: &str,
    topic: &str,
    prefix: &str,
    producer: &Report,
    offsets: bool,
) -> Audit {
    let ids = acked(producer);
    let outcome = drain(c, endpoint, topic, prefix, producer.count);
    let r = report(c, &outcome);
    let ds = deliveries(r);
    let stored = offsets.then(|| {
        c.read_stored(endpoint, topic)
            .unwrap_or_else(|e| fail(c, &outcome, &format!("{test}: reading the queues: {e:#}")))
    });
    let audit = Audit::of(&ids, &ds, stored.as_deref(), &format!("{prefix}-"));
    audit.print(test, ids.len());
    if offsets && (!audit.not_stored.is_empty() || !audit.offset_conflicts.is_empty() || !audit.gaps.is_empty()) {
        let first: Vec<&String> = audit.not_stored.iter().take(10).collect();
        fail(
            c,
            &outcome,
            &format!(
                "{test}: two writers or lost data: acknowledged not stored {first:?}, conflicts {:?}, gaps {:?}",
                audit.offset_conflicts, audit.gaps
            ),
        );
    }
    if !audit.lost.is_empty() {
        let first: Vec<&String> = audit.lost.iter().take(10).collect();
        fail(
            c,
            &outcome,
            &format!(
                "{test}: {} acknowledged messages not received by the SDK consumer within {DRAIN_IDLE_SECS} s of \
                 quiet (stored: {}), e.g. {first:?}",
                audit.lost.len(),
                if offsets { "yes, every one" } else { "not checked" }
            ),
        );
    }
    audit
}

/// Waits for a load producer and returns its report.
fn finish_load(c: &Cluster, running: Running) -> (Outcome, Report) {
    let outcome = running.wait().unwrap_or_else(|e| panic!("load-produce: {e:#}"));
    let r = report(c, &outcome).clone();
    (outcome, r)
}

/// a) Through the single address: routes advertise the load balancer, so requests land on any
/// node and non-owners forward them. Java load plus a Go producer and consumer.
#[test]
fn cluster_every_message_through_the_load_balancer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "cluster_lb";
    let opts = ClusterOpts { advertise_lb: true, ..ClusterOpts::default() };
    let Some(c) = start(test, &[Sdk::Java, Sdk::Go], opts) else { return };
    let lb = c.lb_endpoint();
    let topic = unique("topic", test);
    let n = 600;
    let (outcome, r) = finish_load(&c, load(&c, &lb, &topic, "lb", n));
    if r.failed > 0 {
        fail(&c, &outcome, &format!("{test}: {} of {n} sends failed", r.failed));
    }
    consume_and_audit(&c, test, &lb, &topic, "lb", &r, true);
    // Go through the same address.
    let go_topic = unique("topic", "cluster_lb_go");
    let produced = sdk::spawn(&run(Sdk::Go, Mode::Produce, &lb, &go_topic, "", "go", 60), c.path())
        .and_then(Running::wait)
        .unwrap_or_else(|e| panic!("go produce: {e:#}"));
    let pr = report(&c, &produced).clone();
    if !pr.ok || pr.sent != 60 {
        fail(&c, &produced, &format!("{test}: go sent {} of 60", pr.sent));
    }
    let group = unique("group", "cluster_lb_go");
    let consumed = sdk::spawn(&run(Sdk::Go, Mode::SimpleConsume, &lb, &go_topic, &group, "go", 60), c.path())
        .and_then(Running::wait)
        .unwrap_or_else(|e| panic!("go consume: {e:#}"));
    let cr = report(&c, &consumed);
    let got: BTreeSet<&String> = cr.ids.iter().collect();
    let lost: Vec<&String> = pr.ids.iter().filter(|id| !got.contains(id)).collect();
    if !lost.is_empty() {
        fail(&c, &consumed, &format!("{test}: go: {} acknowledged messages not received: {lost:?}", lost.len()));
    }
    eprintln!("{test}: go: 60 sent, {} received, {} duplicates", cr.received, cr.duplicates.len());
}

/// a) Through QueryRoute routes: each queue advertised at its owner's own address; the
/// producer starts from one node, the consumer from another.
#[test]
fn cluster_every_message_through_routes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "cluster_routes";
    let Some(c) = start(test, &[Sdk::Java], ClusterOpts::default()) else { return };
    let topic = unique("topic", test);
    let n = 600;
    let (outcome, r) = finish_load(&c, load(&c, &c.endpoint(0), &topic, "rt", n));
    if r.failed > 0 {
        fail(&c, &outcome, &format!("{test}: {} of {n} sends failed", r.failed));
    }
    consume_and_audit(&c, test, &c.endpoint(2), &topic, "rt", &r, true);
}

/// b) SIGKILL one gateway under load on a `durability: s3` topic, then delete its data dir:
/// its shards move to the others (time printed), sends succeed again (time printed), and every
/// acknowledged message is received.
#[test]
fn cluster_sigkill_failover_with_s3_durability() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "cluster_kill9";
    let topic = unique("topic", test);
    let opts = ClusterOpts {
        topics: vec![TopicDef { name: topic.clone(), queues: 12, durability: "s3" }],
        ..ClusterOpts::default()
    };
    let Some(mut c) = start(test, &[Sdk::Java], opts) else { return };
    let victim = 1;
    let before = c.owned_by(victim).unwrap_or_default();
    let n = (RATE * 25) as usize;
    let mut running = load(&c, &c.lb_endpoint(), &topic, "k9", n);
    wait_progress(&mut running, (RATE * 5) as usize, Duration::from_secs(40));
    let killed_at = now_ms();
    c.kill9(victim).unwrap_or_else(|e| panic!("{test}: kill: {e:#}"));
    c.wipe_data_dir(victim).unwrap_or_else(|e| panic!("{test}: wipe: {e:#}"));
    let moved =
        c.wait_owned_by_others(victim, FAILOVER_LIMIT).unwrap_or_else(|e| panic!("{test}: {e:#}\n{}", c.logs(40)));
    eprintln!(
        "{test}: node n{victim} owned shards {before:?}; all owned by others {:.1} s after SIGKILL",
        moved.as_secs_f64()
    );
    let (outcome, r) = finish_load(&c, running);
    let timeline = sends(&r);
    // Sends to the dead node's queues fail or stall until its shards moved: the last send
    // begun after the kill that failed or took over a second marks when sending was whole again.
    let disturbed: Vec<&Send> =
        timeline.iter().filter(|s| s.start >= killed_at - 1000 && (!s.ok || s.end - s.start > 1000)).collect();
    let recovered_ms = disturbed.iter().map(|s| s.end - killed_at).max().unwrap_or(0);
    eprintln!(
        "{test}: sends whole again {:.1} s after SIGKILL ({} sends disturbed, {} failed of {})",
        recovered_ms as f64 / 1000.0,
        disturbed.len(),
        r.failed,
        timeline.len()
    );
    if r.sent == 0 {
        fail(&c, &outcome, &format!("{test}: nothing was acknowledged"));
    }
    consume_and_audit(&c, test, &c.lb_endpoint(), &topic, "k9", &r, true);
}

/// c) Cut one gateway off from PostgreSQL under load (a topic with the default `local`
/// durability; `RMQ_E2E_CLUSTER_PARTITION_DURABILITY=s3` for an `s3` one): the others take its
/// shards over; it must stop writing to them. After healing, the stored data shows one writer
/// per queue and every acknowledged message.
#[test]
fn cluster_partitioned_node_stops_writing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "cluster_partition";
    let topic = unique("topic", test);
    // `local` (default): acks after the local flush. What the cut node acknowledged after its
    // last recorded upload is in no manifest; it publishes it again when it gets the shard
    // back (the audit below finds every acknowledged message). `s3`: an ack waits for the
    // fenced manifest write, so a cut node cannot acknowledge what its successor will not see.
    let durability = match std::env::var("RMQ_E2E_CLUSTER_PARTITION_DURABILITY").as_deref() {
        Ok("s3") => "s3",
        _ => "local",
    };
    let opts =
        ClusterOpts { topics: vec![TopicDef { name: topic.clone(), queues: 8, durability }], ..ClusterOpts::default() };
    let Some(mut c) = start(test, &[Sdk::Java], opts) else { return };
    eprintln!("{test}: topic durability {durability}");
    let victim = 2;
    let n = (RATE * 30) as usize;
    let mut running = load(&c, &c.lb_endpoint(), &topic, "pt", n);
    wait_progress(&mut running, (RATE * 5) as usize, Duration::from_secs(40));
    c.cut_db(victim);
    let cut_at = Instant::now();
    let moved =
        c.wait_owned_by_others(victim, FAILOVER_LIMIT).unwrap_or_else(|e| panic!("{test}: {e:#}\n{}", c.logs(40)));
    eprintln!("{test}: n{victim} cut from PostgreSQL; its shards owned by others after {:.1} s", moved.as_secs_f64());
    // Keep the partition while the load goes on (the cut node still takes requests).
    std::thread::sleep(Duration::from_secs(8).saturating_sub(cut_at.elapsed()));
    c.heal_db(victim);
    let rejoined = c.wait_ready(victim).unwrap_or_else(|e| panic!("{test}: rejoin: {e:#}"));
    eprintln!("{test}: healed; n{victim} back with every shard owned after {:.1} s", rejoined.as_secs_f64());
    let (_outcome, r) = finish_load(&c, running);
    eprintln!("{test}: {} of {n} sends acknowledged, {} failed", r.sent, r.failed);
    // What the cut-off node acknowledged but could not upload (local durability) comes back
    // when it gets its shards again.
    let salvaged: Vec<String> = c.log_lines_with(victim, "published again");
    eprintln!("{test}: n{victim} published again its unuploaded acknowledged messages of {} shards", salvaged.len());
    for l in &salvaged {
        eprintln!("{test}:   {}", l.split_whitespace().filter(|w| w.contains('=')).collect::<Vec<_>>().join(" "));
    }
    consume_and_audit(&c, test, &c.lb_endpoint(), &topic, "pt", &r, true);
}

/// d) Rolling restart of all three (SIGTERM, wait ready, next) under load: no send fails.
#[test]
fn cluster_rolling_restart_loses_no_send() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "cluster_rolling";
    let Some(mut c) = start(test, &[Sdk::Java], ClusterOpts::default()) else { return };
    let topic = unique("topic", test);
    let rate_secs = 50;
    let n = (RATE * rate_secs) as usize;
    let mut running = load(&c, &c.lb_endpoint(), &topic, "rr", n);
    wait_progress(&mut running, (RATE * 3) as usize, Duration::from_secs(40));
    for i in 0..3 {
        let stopped = c.terminate(i).unwrap_or_else(|e| panic!("{test}: SIGTERM n{i}: {e:#}\n{}", c.logs(40)));
        c.restart(i).unwrap_or_else(|e| panic!("{test}: restart n{i}: {e:#}"));
        let ready = c.wait_ready(i).unwrap_or_else(|e| panic!("{test}: n{i} ready: {e:#}"));
        eprintln!(
            "{test}: n{i} stopped in {:.1} s, ready again {:.1} s later",
            stopped.took.as_secs_f64(),
            ready.as_secs_f64()
        );
    }
    let (outcome, r) = finish_load(&c, running);
    if r.failed > 0 || r.sent != n {
        let failures = r.extra.get("failures").cloned().unwrap_or_default();
        fail(
            &c,
            &outcome,
            &format!("{test}: {} of {n} sends failed during the rolling restart: {failures}", n - r.sent),
        );
    }
    consume_and_audit(&c, test, &c.lb_endpoint(), &topic, "rr", &r, true);
}
