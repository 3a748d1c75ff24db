//! Tiered storage end to end, on a real gateway process: small (1 MiB) segments tiered to an
//! object store; once every sealed segment is uploaded and every local sealed segment dropped
//! (short local `fileReservedTime`), a consumer group reset to offset 0 through the admin API
//! reads every message back from the object store with a raw gRPC client: in order per queue,
//! intact (body checksums), with far fewer GETs than messages. Then remote retention (restart
//! with a short remote `fileReservedTime`) deletes every object and its manifest row.
//!
//! The object store is a directory by default. For an S3-compatible server, set
//! `RMQ_E2E_TIERING_S3_ENDPOINT` (and `RMQ_E2E_TIERING_S3_BUCKET`, `..._ACCESS_KEY`,
//! `..._SECRET_KEY`, `..._REGION`): the same test runs against it (the bucket must exist and
//! be empty under the test's prefix).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::client;
use integration_tests::gateway_process::{Gateway, Stop};
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

/// Configuration overrides for the object store under test (directory unless S3 is given).
fn object_store_overrides(prefix: &str) -> Vec<(String, String)> {
    let mut o = vec![("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__PREFIX".to_string(), prefix.to_string())];
    if let Ok(endpoint) = std::env::var("RMQ_E2E_TIERING_S3_ENDPOINT") {
        let env = |k: &str, d: &str| std::env::var(format!("RMQ_E2E_TIERING_S3_{k}")).unwrap_or_else(|_| d.into());
        for (k, v) in [
            ("TYPE", "s3".to_string()),
            ("ENDPOINT", endpoint),
            ("BUCKET", env("BUCKET", "rmq-tiering")),
            ("REGION", env("REGION", "us-east-1")),
            ("ACCESS_KEY", env("ACCESS_KEY", "test")),
            ("SECRET_KEY", env("SECRET_KEY", "test")),
            ("PATH_STYLE", "true".to_string()),
        ] {
            o.push((format!("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__{k}"), v));
        }
    }
    o
}

fn start(dir: &Path, extra: &[(&str, &str)]) -> anyhow::Result<Gateway> {
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
    o.extend(object_store_overrides(&format!("e2e-{}", std::process::id())));
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

/// Sends every message (batches of one topic); returns id → offset.
async fn produce(endpoint: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut c = connect(endpoint).await?;
    let mut acked = BTreeMap::new();
    for b in 0..MESSAGES / BATCH {
        let ids: Vec<String> = (0..BATCH).map(|i| format!("m{:06}", b * BATCH + i)).collect();
        let messages = ids.iter().map(|id| client::message(TOPIC, id, body_of(id))).collect();
        let r = c.send_message(request(proto::SendMessageRequest { messages })).await?.into_inner();
        assert_eq!(r.entries.len(), BATCH);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_reset_to_zero_reads_everything_back_from_the_object_store_then_remote_retention_deletes_it()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut g = start(dir.path(), &[])?;
    let endpoint = g.endpoint();

    let addr = format!("127.0.0.1:{}", g.http_port).parse()?;
    let body = format!(r#"{{"queueNums":{QUEUES},"messageType":"NORMAL"}}"#);
    let (status, text) = client::http(addr, "PUT", &format!("/api/v1/topics/{TOPIC}"), Some(&body)).await;
    assert_eq!(status, 200, "creating the topic: {text}");
    let (status, text) = client::http(addr, "PUT", &format!("/api/v1/groups/{GROUP}"), Some("{}")).await;
    assert_eq!(status, 200, "creating the group: {text}");
    let acked = produce(&endpoint).await?;
    assert_eq!(acked.len(), MESSAGES);

    // Everything sealed goes up; local retention then drops every sealed segment.
    let s = wait_for(&g, "upload and local drop", |s, local| {
        let t = &s["tiering"];
        t["waitingSegments"] == 0 && t["remoteSegments"].as_u64().unwrap_or(0) >= 8 && local == 1
    })
    .await;
    let remote_segments = s["tiering"]["remoteSegments"].as_u64().unwrap_or(0);
    let gets_before = s["tiering"]["coldGets"].as_u64().unwrap_or(0);

    // Reset to offset 0 on every queue: below the local start, in the object store only.
    let offsets: Vec<String> = (0..QUEUES).map(|q| format!("\"{q}\":0")).collect();
    let body = format!(r#"{{"topic":"{TOPIC}","offsets":{{{}}}}}"#, offsets.join(","));
    let (status, text) = client::http(addr, "POST", &format!("/api/v1/groups/{GROUP}/reset-offset"), Some(&body)).await;
    assert_eq!(status, 200, "reset: {text}");

    let got = consume(&endpoint).await?;
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
    assert_eq!(got.len(), MESSAGES, "every message read back once");
    for (q, seen) in &per_queue {
        let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "queue {q}: in order from 0");
        assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "queue {q}: not in send order");
    }
    let s = stats(&g).await;
    let gets = s["tiering"]["coldGets"].as_u64().unwrap_or(0) - gets_before;
    eprintln!(
        "[tiering] {MESSAGES} messages, {remote_segments} segments tiered, read back with {gets} GETs ({} bytes)",
        s["tiering"]["coldGetBytes"]
    );
    assert!(gets > 0, "nothing was read from the object store");
    assert!(gets < MESSAGES as u64 / 10, "{gets} GETs for {MESSAGES} messages");

    // Remote retention: a short remote fileReservedTime removes objects and rows.
    g.stop(Stop::Graceful)?;
    let g = start(
        dir.path(),
        &[
            ("RMQ_GATEWAY_STORAGE__TIERING__FILE_RESERVED_TIME", "1s"),
            ("RMQ_GATEWAY_STORAGE__TIERING__REMOTE_RETENTION_INTERVAL", "1s"),
        ],
    )?;
    let s = wait_for(&g, "remote retention", |s, _| s["tiering"]["remoteSegments"] == 0).await;
    assert!(s["tiering"]["remoteSegmentsExpired"].as_u64().unwrap_or(0) >= remote_segments);
    if std::env::var("RMQ_E2E_TIERING_S3_ENDPOINT").is_err() {
        let objects = g.data_dir().join("objects");
        let left = count_files(&objects);
        assert_eq!(left, 0, "objects left in {}", objects.display());
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}
