//! Message trace lookup end to end: the gateway binary (short invisibility, one retry before
//! the DLQ) driven by the protocol-level client for precise control of nacks; the lifecycle
//! read back through the admin API (`/api/v1/messages/{id}`, `/trace`, `?topic=&key=`) and the
//! `rmq-gateway admin message trace` CLI. Needs the binary (`cargo build --bin rmq-gateway`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration_tests::client::{self, request, resource};
use integration_tests::gateway_process::{Gateway, gateway_binary};
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use serde_json::Value;
use tonic::transport::Channel;

/// The client id `client::request` sends.
const CLIENT: &str = "integration-test@1";

fn start() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_with(
        dir.path(),
        &[
            ("RMQ_GATEWAY_CONSUMER__MIN_INVISIBLE_TIME", "1s"),
            ("RMQ_GATEWAY_CONSUMER__MIN_LONG_POLLING_TIMEOUT", "1s"),
            // Two attempts, then the DLQ.
            ("RMQ_GATEWAY_CONSUMER__RETRY_MAX_TIMES", "1"),
            ("RMQ_GATEWAY_CONSUMER__RETRY_BACKOFF", "1s"),
        ],
    )
    .expect("start the gateway binary (cargo build --bin rmq-gateway)");
    (dir, gateway)
}

async fn connect(g: &Gateway) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{}", g.endpoint())).await.expect("connect to the gateway")
}

fn unique_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{tag}{nanos:028X}")
}

async fn send(c: &mut MessagingServiceClient<Channel>, topic: &str, id: &str, key: &str) {
    let mut m = client::tagged_message(topic, id, "TagT", b"trace me".to_vec());
    if let Some(sp) = m.system_properties.as_mut() {
        sp.keys = vec![key.to_string()];
    }
    let r = c.send_message(request(proto::SendMessageRequest { messages: vec![m] })).await.expect("send").into_inner();
    assert_eq!(r.status.map(|s| s.code), Some(Code::Ok as i32), "send");
}

async fn receive(c: &mut MessagingServiceClient<Channel>, topic: &str, group: &str) -> Vec<proto::Message> {
    let mut r = request(client::receive_request(topic, group, Some(Duration::from_secs(1)), Duration::from_secs(1)));
    r.set_timeout(Duration::from_secs(10));
    let mut stream = c.receive_message(r).await.expect("receive").into_inner();
    let mut out = Vec::new();
    while let Some(frame) = stream.message().await.expect("receive stream") {
        if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
            out.push(m);
        }
    }
    out
}

/// Receives until a message comes (bounded).
async fn receive_one(c: &mut MessagingServiceClient<Channel>, topic: &str, group: &str) -> proto::Message {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = receive(c, topic, group).await.into_iter().next() {
            return m;
        }
        assert!(Instant::now() < until, "no message for {group} on {topic} within 30 s");
    }
}

fn handle(m: &proto::Message) -> String {
    m.system_properties.as_ref().and_then(|sp| sp.receipt_handle.clone()).expect("receipt handle")
}

fn attempt(m: &proto::Message) -> i32 {
    m.system_properties.as_ref().and_then(|sp| sp.delivery_attempt).unwrap_or(0)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = client::http(addr, "GET", path, None).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status} not JSON ({e}): {body}"));
    (status, json)
}

fn types(trace: &Value) -> Vec<String> {
    trace["events"].as_array().expect("events").iter().map(|e| e["type"].as_str().unwrap_or("").to_string()).collect()
}

fn http_addr(g: &Gateway) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], g.http_port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_then_acked_message_has_its_whole_lifecycle() {
    let (_dir, g) = start();
    let mut c = connect(&g).await;
    let (topic, group, id) = ("TraceTopicA", "TraceGroupA", unique_id("A"));
    send(&mut c, topic, &id, "order-1").await;

    // Attempt 1, nacked (ChangeInvisibleDuration to a short delay, as a PushConsumer does).
    let first = receive_one(&mut c, topic, group).await;
    assert_eq!(attempt(&first), 1);
    let nack = c
        .change_invisible_duration(request(proto::ChangeInvisibleDurationRequest {
            group: resource(group),
            topic: resource(topic),
            receipt_handle: handle(&first),
            invisible_duration: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
            message_id: id.clone(),
            lite_topic: None,
            suspend: None,
        }))
        .await
        .expect("change invisible")
        .into_inner();
    assert_eq!(nack.status.map(|s| s.code), Some(Code::Ok as i32));
    // Attempt 2, acked.
    let second = receive_one(&mut c, topic, group).await;
    assert_eq!(attempt(&second), 2);
    let acked = c
        .ack_message(request(proto::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries: vec![proto::AckMessageEntry {
                message_id: id.clone(),
                receipt_handle: handle(&second),
                lite_topic: None,
            }],
        }))
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(acked.status.map(|s| s.code), Some(Code::Ok as i32));

    let addr = http_addr(&g);
    let (status, trace) = get(addr, &format!("/api/v1/messages/{id}/trace")).await;
    assert_eq!(status, 200, "{trace}");
    assert_eq!(types(&trace), ["STORED", "DELIVERED", "INVISIBILITY_CHANGED", "DELIVERED", "ACKED"], "{trace:#}");
    let events = trace["events"].as_array().expect("events");
    let times: Vec<i64> = events.iter().map(|e| e["time"].as_i64().expect("time")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time-ordered: {times:?}");
    assert_eq!(events[0]["topic"], topic);
    for (i, attempt) in [(1, 1), (2, 1), (3, 2)] {
        assert_eq!(events[i]["group"], group, "{trace:#}");
        assert_eq!(events[i]["client"], CLIENT, "{trace:#}");
        assert_eq!(events[i]["attempt"], attempt, "{trace:#}");
    }
    assert_eq!(events[4]["group"], group);
    assert_eq!(events[4]["deadLettered"], false);
    let groups = trace["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{trace:#}");
    assert_eq!((groups[0]["group"].as_str(), groups[0]["status"].as_str()), (Some(group), Some("CONSUMED")));
    assert_eq!((groups[0]["deliveries"].as_u64(), groups[0]["lastAttempt"].as_u64()), (Some(2), Some(2)));
    assert_eq!(trace["truncated"], false);
    assert_eq!(trace["message"]["tag"], "TagT");
    assert_eq!(trace["message"]["body"]["data"], "trace me");

    // By key, the message itself, unknown and malformed ids.
    let (status, found) = get(addr, &format!("/api/v1/messages?topic={topic}&key=order-1")).await;
    assert_eq!(status, 200);
    assert!(found.as_array().expect("list").iter().any(|m| m["messageId"] == id.as_str()), "{found:#}");
    let (status, m) = get(addr, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(m["stored"][0]["role"], "MESSAGE");
    assert_eq!(m["keys"][0], "order-1");
    let (status, e) = get(addr, "/api/v1/messages/00000000000000000000000000000000").await;
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].as_str().is_some_and(|s| s.contains("no message")), "{e}");
    let (status, _) = get(addr, "/api/v1/messages/a%20b/trace").await;
    assert_eq!(status, 400);

    // The CLI, against the running gateway.
    let out = std::process::Command::new(gateway_binary().expect("binary"))
        .args(["admin", "message", "trace", &id, "--server", &format!("http://{addr}")])
        .output()
        .expect("run rmq-gateway admin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "CLI failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(stdout.contains(&format!("Message   {id}")), "{stdout}");
    let line = |kind: &str, attempt: &str| {
        stdout.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(1) == Some(&kind) && cells.get(2) == Some(&group) && cells.get(4) == Some(&attempt)
        })
    };
    assert!(line("DELIVERED", "1") && line("DELIVERED", "2"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("ACKED") && l.contains(group)), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with(group) && l.contains("CONSUMED")), "{stdout}");
    let missing = std::process::Command::new(gateway_binary().expect("binary"))
        .args(["admin", "message", "get", "00000000000000000000000000000000", "--server", &format!("http://{addr}")])
        .output()
        .expect("run rmq-gateway admin");
    assert_eq!(missing.status.code(), Some(1), "an unknown id fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_message_shows_the_dlq_move_and_its_copy() {
    let (_dir, g) = start();
    let mut c = connect(&g).await;
    let (topic, group, id) = ("TraceTopicB", "TraceGroupB", unique_id("B"));
    send(&mut c, topic, &id, "order-2").await;
    // Never acked: attempt 1 and 2 time out (1 s invisibility), then the DLQ.
    let first = receive_one(&mut c, topic, group).await;
    assert_eq!(attempt(&first), 1);
    let second = receive_one(&mut c, topic, group).await;
    assert_eq!(attempt(&second), 2);
    let addr = http_addr(&g);
    let until = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        // A receive after the last deadline moves the message to the DLQ.
        let more = receive(&mut c, topic, group).await;
        assert!(more.is_empty(), "no third attempt: {more:?}");
        let (status, trace) = get(addr, &format!("/api/v1/messages/{id}/trace")).await;
        assert_eq!(status, 200, "{trace}");
        if types(&trace).iter().any(|t| t == "DLQ") {
            break trace;
        }
        assert!(Instant::now() < until, "no DLQ move within 30 s: {trace:#}");
    };
    assert_eq!(types(&trace), ["STORED", "DELIVERED", "DELIVERED", "DLQ", "ACKED"], "{trace:#}");
    let events = trace["events"].as_array().expect("events");
    assert_eq!((events[1]["attempt"].as_u64(), events[2]["attempt"].as_u64()), (Some(1), Some(2)));
    assert_eq!(events[2]["client"], CLIENT);
    let dlq_topic = format!("%DLQ%{group}");
    assert_eq!(events[3]["group"], group);
    assert_eq!(events[3]["dlqTopic"], dlq_topic.as_str());
    assert_eq!(events[4]["deadLettered"], true);
    let groups = trace["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{trace:#}");
    assert_eq!(groups[0]["status"], "DLQ");
    assert_eq!(groups[0]["dlqTopic"], dlq_topic.as_str());

    // The DLQ copy is found by the original id, with Apache's origin properties.
    let (status, m) = get(addr, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    let stored = m["stored"].as_array().expect("stored");
    let copy = stored.iter().find(|s| s["role"] == "DLQ").unwrap_or_else(|| panic!("no DLQ record: {m:#}"));
    assert_eq!(copy["topic"], dlq_topic.as_str());
    assert_eq!(m["topic"], topic, "the message's own topic stays the original");
    // The copy is in the DLQ topic's key index too.
    let (status, found) = get(addr, &format!("/api/v1/messages?topic=%25DLQ%25{group}&key=order-2")).await;
    assert_eq!(status, 200, "{found}");
    let found = found.as_array().expect("list");
    assert!(found.iter().any(|f| f["messageId"] == id.as_str()), "{found:?}");
}
