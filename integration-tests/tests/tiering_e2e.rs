//! Tiered storage end to end, on a real gateway process: small (1 MiB) segments tiered to an
//! object store; once every sealed segment is uploaded and every local sealed segment dropped
//! (short local `fileReservedTime`), a consumer group reset to offset 0 through the admin API
//! reads every message back from the object store with a raw gRPC client: in order per queue,
//! intact (body checksums), with far fewer GETs than messages. Then remote retention (restart
//! with a short remote `fileReservedTime`) deletes every object and its manifest row.
//!
//! The scenario runs on a directory, on a real S3-compatible server (moto, started by the
//! test), and on S3 with the metadata (the manifest with it) in a real PostgreSQL. A third test puts a fault-injecting proxy between the gateway and moto and makes S3
//! unavailable (refused, then black-holed, then answering 503 SlowDown) under load: sends keep
//! succeeding, the waiting segments stay on local disk, uploads catch up once S3 is back, and
//! every message is read back from S3 afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::client;
use integration_tests::fault_proxy::{Fault, FaultProxy};
use integration_tests::gateway_process::{Gateway, Stop};
use integration_tests::postgres::Postgres;
use integration_tests::s3::{Kind, S3Server};
use rmq_gateway::config::ObjectStoreConfig;
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use serde_json::Value;
use tonic::transport::Channel;

const TOPIC: &str = "TierTopic";
const GROUP: &str = "tier-readers";
const QUEUES: u32 = 8;
/// Messages and their body sizes (1 – 4 KiB): about 12 MiB, a dozen 1 MiB segments.
const MESSAGES: usize = 5000;
const BATCH: usize = 25;
/// Bound of every wait for background work (uploads, local and remote retention).
const WAIT: Duration = Duration::from_secs(120);

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = client::request(msg);
    r.set_timeout(Duration::from_secs(30));
    r
}

fn fnv(b: &[u8]) -> u32 {
    b.iter().fold(2166136261u32, |h, x| (h ^ u32::from(*x)).wrapping_mul(16777619))
}

fn body_of(id: &str) -> Vec<u8> {
    let len = 1024 + (fnv(id.as_bytes()) as usize % 3072);
    let mut seed = fnv(id.as_bytes());
    (0..len)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        })
        .collect()
}

async fn connect(endpoint: &str) -> anyhow::Result<MessagingServiceClient<Channel>> {
    let channel =
        Channel::from_shared(format!("http://{endpoint}"))?.connect_timeout(Duration::from_secs(5)).connect().await?;
    Ok(MessagingServiceClient::new(channel))
}

/// Where the gateway under test puts its objects.
#[derive(Clone)]
enum Target {
    Dir,
    /// `storage.tiering.objectStore` of an S3 server (its prefix is replaced per gateway).
    S3(ObjectStoreConfig),
}

/// Configuration overrides for the object store under test.
fn object_store_overrides(target: &Target, prefix: &str) -> Vec<(String, String)> {
    let mut o = vec![("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__PREFIX".to_string(), prefix.to_string())];
    if let Target::S3(c) = target {
        for (k, v) in [
            ("TYPE", "s3".to_string()),
            ("ENDPOINT", c.endpoint.clone()),
            ("BUCKET", c.bucket.clone()),
            ("REGION", c.region.clone()),
            ("ACCESS_KEY", c.access_key.clone()),
            ("SECRET_KEY", c.secret_key.clone()),
            ("PATH_STYLE", c.path_style.to_string()),
        ] {
            o.push((format!("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__{k}"), v));
        }
    }
    o
}

fn start(dir: &Path, target: &Target, extra: &[(&str, &str)]) -> anyhow::Result<Gateway> {
    let mut o: Vec<(String, String)> = vec![
        ("RMQ_GATEWAY_STORAGE__MAPPED_FILE_SIZE_COMMIT_LOG".into(), "1048576".into()),
        ("RMQ_GATEWAY_LIMITS__MAX_MESSAGE_SIZE".into(), "65536".into()),
        ("RMQ_GATEWAY_STORAGE__FILE_RESERVED_TIME".into(), "1s".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__ENABLED".into(), "true".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__LOG_ID".into(), "e2e".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__UPLOAD_INTERVAL".into(), "500ms".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__READ_AHEAD_BYTES".into(), "1048576".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__READ_CACHE_BYTES".into(), "8388608".into()),
    ];
    o.extend(object_store_overrides(target, &format!("e2e-{}", std::process::id())));
    o.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let refs: Vec<(&str, &str)> = o.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Gateway::start_with(dir, &refs)
}

async fn stats(g: &Gateway) -> Value {
    let addr = format!("127.0.0.1:{}", g.http_port).parse().expect("address");
    let (status, body) = client::http(addr, "GET", "/api/v1/stats", None).await;
    assert_eq!(status, 200, "GET /api/v1/stats: {body}");
    serde_json::from_str(&body).expect("stats JSON")
}

fn local_segments(g: &Gateway) -> usize {
    std::fs::read_dir(g.data_dir().join("store/commitlog"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".log")).count())
        .unwrap_or(0)
}

/// Waits until `done(stats, local segment files)` holds; fails with the last figures.
async fn wait_for(g: &Gateway, what: &str, done: impl Fn(&Value, usize) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let s = stats(g).await;
        let local = local_segments(g);
        if done(&s, local) {
            return s;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: not within {WAIT:?}; tiering {} with {local} local segment files; log:\n{}",
            s["tiering"],
            g.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends messages `from..to` (batches of one topic); every send must succeed. Returns id → offset.
async fn produce(endpoint: &str, ids: std::ops::Range<usize>) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut c = connect(endpoint).await?;
    let mut acked = BTreeMap::new();
    for first in ids.clone().step_by(BATCH) {
        let ids: Vec<String> = (first..(first + BATCH).min(ids.end)).map(|i| format!("m{i:06}")).collect();
        let messages = ids.iter().map(|id| client::message(TOPIC, id, body_of(id))).collect();
        let r = c.send_message(request(proto::SendMessageRequest { messages })).await?.into_inner();
        assert_eq!(r.entries.len(), ids.len());
        for (id, e) in ids.iter().zip(&r.entries) {
            assert_eq!(e.status.as_ref().map(|s| s.code), Some(Code::Ok as i32), "send {id}: {:?}", e.status);
            acked.insert(id.clone(), e.offset);
        }
    }
    Ok(acked)
}

/// Receives until a receive comes back empty: (id, queue, offset, body) in delivery order.
async fn consume(endpoint: &str) -> anyhow::Result<Vec<(String, i32, i64, Vec<u8>)>> {
    let mut c = connect(endpoint).await?;
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let r = client::receive_request(TOPIC, GROUP, Some(Duration::from_secs(600)), Duration::from_secs(2));
        let mut stream = match c.receive_message(request(r)).await {
            Ok(s) => s.into_inner(),
            Err(e) => anyhow::bail!("receive failed: {e}"),
        };
        let mut got = 0;
        while let Some(frame) = stream.message().await? {
            match frame.content {
                Some(proto::receive_message_response::Content::Message(m)) => {
                    let sp = m.system_properties.expect("system properties");
                    out.push((sp.message_id, sp.queue_id, sp.queue_offset.expect("offset"), m.body.to_vec()));
                    got += 1;
                }
                Some(proto::receive_message_response::Content::Status(s)) => {
                    // Cold data on its way is retriable; anything else is a failure.
                    let ok = [Code::Ok as i32, Code::MessageNotFound as i32, Code::InternalServerError as i32];
                    assert!(ok.contains(&s.code), "receive status {s:?}");
                }
                _ => {}
            }
        }
        empty = if got == 0 { empty + 1 } else { 0 };
    }
    Ok(out)
}

/// Creates the topic and the group through the admin API.
async fn create_topic_and_group(g: &Gateway) -> anyhow::Result<()> {
    let addr = format!("127.0.0.1:{}", g.http_port).parse()?;
    let body = format!(r#"{{"queueNums":{QUEUES},"messageType":"NORMAL"}}"#);
    let (status, text) = client::http(addr, "PUT", &format!("/api/v1/topics/{TOPIC}"), Some(&body)).await;
    assert_eq!(status, 200, "creating the topic: {text}");
    let (status, text) = client::http(addr, "PUT", &format!("/api/v1/groups/{GROUP}"), Some("{}")).await;
    assert_eq!(status, 200, "creating the group: {text}");
    Ok(())
}

/// Waits until every sealed segment is uploaded and dropped locally (at least `min_remote`
/// segments in the manifest); returns the stats then.
async fn wait_until_tiered(g: &Gateway, min_remote: u64) -> Value {
    wait_for(g, "upload and local drop", |s, local| {
        let t = &s["tiering"];
        t["waitingSegments"] == 0 && t["remoteSegments"].as_u64().unwrap_or(0) >= min_remote && local == 1
    })
    .await
}

/// Resets the group to offset 0 on every queue (below the local start: in the object store
/// only), consumes everything and checks it against what was acknowledged: each message once,
/// at its offset, intact, in order per queue. Returns the GETs the read-back took.
async fn read_back_from_zero(g: &Gateway, acked: &BTreeMap<String, i64>) -> anyhow::Result<u64> {
    let addr = format!("127.0.0.1:{}", g.http_port).parse()?;
    let gets_before = stats(g).await["tiering"]["coldGets"].as_u64().unwrap_or(0);
    let offsets: Vec<String> = (0..QUEUES).map(|q| format!("\"{q}\":0")).collect();
    let body = format!(r#"{{"topic":"{TOPIC}","offsets":{{{}}}}}"#, offsets.join(","));
    let (status, text) = client::http(addr, "POST", &format!("/api/v1/groups/{GROUP}/reset-offset"), Some(&body)).await;
    assert_eq!(status, 200, "reset: {text}");

    let got = consume(&g.endpoint()).await?;
    let mut per_queue: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let mut bad = Vec::new();
    for (id, queue, offset, body) in &got {
        if acked.get(id) != Some(offset) {
            bad.push(format!("{id} at {queue}/{offset}, acknowledged at offset {:?}", acked.get(id)));
        }
        if body != &body_of(id) {
            bad.push(format!("{id}: body differs ({} bytes)", body.len()));
        }
        per_queue.entry(*queue).or_default().push((*offset, id.clone()));
    }
    assert!(bad.is_empty(), "{} damaged deliveries, first: {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert_eq!(got.len(), acked.len(), "every message read back once");
    for (q, seen) in &per_queue {
        let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "queue {q}: in order from 0");
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "queue {q}: not in send order");
    }
    let gets = stats(g).await["tiering"]["coldGets"].as_u64().unwrap_or(0) - gets_before;
    assert!(gets > 0, "nothing was read from the object store");
    assert!(gets < acked.len() as u64 / 10, "{gets} GETs for {} messages", acked.len());
    Ok(gets)
}

/// Upload, local drop, read-back from zero, then remote retention, on `target`.
/// `extra`: more configuration overrides (e.g. the metadata store).
async fn tier_read_back_and_expire(target: Target, extra: &[(&str, &str)]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut g = start(dir.path(), &target, extra)?;
    if extra.iter().any(|(k, v)| *k == "RMQ_GATEWAY_METADATA__URL" && v.starts_with("postgres://")) {
        let log = g.log_tail(200);
        assert!(
            log.lines().any(|l| l.contains("metadata store open") && l.contains("postgres://")),
            "the gateway did not open PostgreSQL:\n{log}"
        );
    }
    create_topic_and_group(&g).await?;
    let acked = produce(&g.endpoint(), 0..MESSAGES).await?;
    assert_eq!(acked.len(), MESSAGES);

    let s = wait_until_tiered(&g, 8).await;
    let remote_segments = s["tiering"]["remoteSegments"].as_u64().unwrap_or(0);
    let gets = read_back_from_zero(&g, &acked).await?;
    eprintln!(
        "[tiering] {}: {MESSAGES} messages, {remote_segments} segments tiered, read back with {gets} GETs",
        s["tiering"]["objectStore"]
    );

    // Remote retention: a short remote fileReservedTime removes objects and rows.
    g.stop(Stop::Graceful)?;
    let mut overrides = vec![
        ("RMQ_GATEWAY_STORAGE__TIERING__FILE_RESERVED_TIME", "1s"),
        ("RMQ_GATEWAY_STORAGE__TIERING__REMOTE_RETENTION_INTERVAL", "1s"),
    ];
    overrides.extend_from_slice(extra);
    let g = start(dir.path(), &target, &overrides)?;
    let s = wait_for(&g, "remote retention", |s, _| s["tiering"]["remoteSegments"] == 0).await;
    assert!(s["tiering"]["remoteSegmentsExpired"].as_u64().unwrap_or(0) >= remote_segments);
    let left = match &target {
        Target::Dir => count_files(&g.data_dir().join("objects")),
        Target::S3(c) => {
            let store = rmq_gateway::storage::object::open(c, dir.path()).await?;
            store.list(&format!("e2e-{}", std::process::id())).await?.len()
        }
    };
    assert_eq!(left, 0, "objects left after remote retention");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_directory_a_group_reset_to_zero_reads_everything_back_then_remote_retention_deletes_it()
-> anyhow::Result<()> {
    tier_read_back_and_expire(Target::Dir, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_a_group_reset_to_zero_reads_everything_back_then_remote_retention_deletes_it() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start_or_skip("tiering_e2e::on_s3", Kind::Moto) else { return Ok(()) };
    tier_read_back_and_expire(Target::S3(s3.store_config("")), &[]).await
}

/// The production shape: metadata (and so the tiering manifest) in PostgreSQL, segments in S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_with_metadata_in_postgres_a_group_reset_to_zero_reads_everything_back() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start_or_skip("tiering_e2e::on_s3_with_postgres", Kind::Moto) else { return Ok(()) };
    let Some(pg) = Postgres::start_or_skip("tiering_e2e::on_s3_with_postgres") else { return Ok(()) };
    let url = pg.create_database("tiering")?;
    tier_read_back_and_expire(Target::S3(s3.store_config("")), &[("RMQ_GATEWAY_METADATA__URL", &url)]).await
}

/// S3 away under load: refused, then black-holed, then throttled with 503 SlowDown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_unavailable_under_load_sends_keep_succeeding_uploads_catch_up_nothing_lost() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start_or_skip("tiering_e2e::s3_unavailable", Kind::Moto) else { return Ok(()) };
    let proxy = FaultProxy::start(s3.addr()).await?;
    let dir = tempfile::tempdir()?;
    let target = Target::S3(s3.store_config_via(&proxy.endpoint(), ""));
    let g = start(dir.path(), &target, &[("RMQ_GATEWAY_STORAGE__TIERING__RETRY_MAX_BACKOFF", "1s")])?;
    create_topic_and_group(&g).await?;
    let endpoint = g.endpoint();

    // A first part goes up normally.
    let mut acked = produce(&endpoint, 0..MESSAGES / 5).await?;
    wait_until_tiered(&g, 2).await;

    // S3 away while the producer goes on: every send succeeds and nothing waiting is dropped.
    let phase = MESSAGES / 5;
    let mut next = MESSAGES / 5;
    for fault in [Fault::Refuse, Fault::Stall, Fault::SlowDown] {
        proxy.set(fault);
        acked.extend(produce(&endpoint, next..next + phase).await?);
        next += phase;
        let s = wait_for(&g, "uploads failing", |s, _| s["tiering"]["uploadFailures"].as_u64().unwrap_or(0) > 0).await;
        eprintln!("[tiering] S3 {fault:?}: tiering {}", s["tiering"]);
    }
    let s = stats(&g).await;
    let waiting = s["tiering"]["waitingSegments"].as_u64().unwrap_or(0);
    assert!(waiting > 0, "segments sealed during the outage must be waiting: {}", s["tiering"]);
    let local = local_segments(&g) as u64;
    assert!(local > waiting, "{waiting} segments waiting but only {local} local segment files");
    let log = g.log_tail(400);
    assert!(log.contains("Segments waiting for upload stay on local disk"), "no warning in the log:\n{log}");

    // S3 back: uploads catch up, local copies go, and everything reads back from S3.
    proxy.set(Fault::Pass);
    acked.extend(produce(&endpoint, next..MESSAGES).await?);
    let s = wait_until_tiered(&g, 8).await;
    eprintln!("[tiering] S3 back: tiering {}", s["tiering"]);
    assert_eq!(acked.len(), MESSAGES);
    let gets = read_back_from_zero(&g, &acked).await?;
    eprintln!("[tiering] after the outage: {MESSAGES} messages read back from S3 with {gets} GETs");
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}
