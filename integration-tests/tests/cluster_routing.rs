//! Cluster routing end to end: two `rmq-gateway serve` processes on one throwaway PostgreSQL
//! and one shared bucket directory. Routes name both nodes; a client that talks to one node
//! only receives (queue by queue, as the SDKs do) and acks everything sent through either
//! node: what belongs to the other node is forwarded there.
//!
//! Needs PostgreSQL (`integration-tests/services/postgres.sh`; skipped without it unless
//! `RMQ_E2E_REQUIRED=1`) and the gateway binary (`cargo build --bin rmq-gateway`).

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::client::{self, message, request, resource};
use integration_tests::gateway_process::Gateway;
use integration_tests::postgres::Postgres;
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use tonic::transport::Channel;

const TOPIC: &str = "RoutedTopic";
const GROUP: &str = "RoutedGroup";

fn start(dir: &Path, node: &str, pg: &Postgres, bucket: &Path) -> anyhow::Result<Gateway> {
    let bucket = bucket.display().to_string();
    Gateway::start_with(
        dir,
        &[
            ("RMQ_GATEWAY_METADATA__URL", pg.url()),
            ("RMQ_GATEWAY_SERVER__ADVERTISED_ADDRESS", "127.0.0.1"),
            ("RMQ_GATEWAY_CLUSTER__ENABLED", "true"),
            ("RMQ_GATEWAY_CLUSTER__NODE_ID", node),
            ("RMQ_GATEWAY_CLUSTER__SHARDS", "4"),
            ("RMQ_GATEWAY_CLUSTER__LEASE_TTL", "3s"),
            ("RMQ_GATEWAY_CLUSTER__RENEW_INTERVAL", "500ms"),
            ("RMQ_GATEWAY_CLUSTER__FORWARD_TIMEOUT", "10s"),
            ("RMQ_GATEWAY_STORAGE__TIERING__ENABLED", "true"),
            ("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__DIR", bucket.as_str()),
            ("RMQ_GATEWAY_CONSUMER__MIN_LONG_POLLING_TIMEOUT", "1s"),
            ("RMQ_GATEWAY_LOG__LEVEL", "info"),
        ],
    )
}

async fn connect(g: &Gateway) -> anyhow::Result<MessagingServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{}", g.endpoint()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(MessagingServiceClient::new(channel))
}

fn code(s: &Option<proto::Status>) -> i32 {
    s.as_ref().map_or(-1, |s| s.code)
}

/// Broker names (node ids) of the route's queues.
async fn route(c: &mut MessagingServiceClient<Channel>) -> anyhow::Result<Vec<proto::MessageQueue>> {
    let r = c.query_route(request(proto::QueryRouteRequest { topic: resource(TOPIC), endpoints: None })).await?;
    let r = r.into_inner();
    anyhow::ensure!(code(&r.status) == Code::Ok as i32, "route: {:?}", r.status);
    Ok(r.message_queues)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_serves_a_client_for_the_whole_cluster() -> anyhow::Result<()> {
    let Some(pg) = Postgres::start_or_skip("cluster_routing") else { return Ok(()) };
    let (bucket, da, db) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start(da.path(), "node-a", &pg, bucket.path())?;
    let b = start(db.path(), "node-b", &pg, bucket.path())?;
    let mut c = connect(&a).await?;

    // The topic (auto-created by the first send), then routes naming both nodes once the
    // shards are spread.
    // (HA_NOT_AVAILABLE until the node holds shards: retried, as the SDKs do.)
    let started = Instant::now();
    loop {
        let first = c
            .send_message(request(proto::SendMessageRequest { messages: vec![message(TOPIC, "M-0", "0")] }))
            .await?
            .into_inner();
        if code(&first.status) == Code::Ok as i32 {
            break;
        }
        anyhow::ensure!(code(&first.status) == Code::HaNotAvailable as i32, "first send: {first:?}");
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no shard ever came to node-a: {first:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let started = Instant::now();
    let queues = loop {
        let queues = route(&mut c).await?;
        let owners: BTreeSet<String> =
            queues.iter().filter_map(|q| q.broker.as_ref().map(|b| b.name.clone())).collect();
        if owners.len() == 2 {
            break queues;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "routes never named both nodes: {owners:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ports: HashSet<i32> = queues
        .iter()
        .filter_map(|q| q.broker.as_ref()?.endpoints.as_ref()?.addresses.first().map(|a| a.port))
        .collect();
    assert_eq!(ports, HashSet::from([i32::from(a.grpc_port), i32::from(b.grpc_port)]), "owners' own endpoints");

    // Sends through `a`: stored in `a`'s own queues.
    let mut sent = HashSet::from(["M-0".to_string()]);
    for i in 1..40 {
        let id = format!("M-{i}");
        let r = c
            .send_message(request(proto::SendMessageRequest { messages: vec![message(TOPIC, &id, id.clone())] }))
            .await?
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok as i32, "send {id}: {r:?}");
        sent.insert(id);
    }

    // And some through `b`: they land in `b`'s queues, which `a` reaches by forwarding.
    let mut cb = connect(&b).await?;
    for i in 40..60 {
        let id = format!("M-{i}");
        let r = cb
            .send_message(request(proto::SendMessageRequest { messages: vec![message(TOPIC, &id, id.clone())] }))
            .await?
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok as i32, "send {id} through b: {r:?}");
        sent.insert(id);
    }

    // Receive queue by queue through `a` (as the SDKs do with a route), ack each message.
    let mut received = HashSet::new();
    let started = Instant::now();
    while received.len() < sent.len() && started.elapsed() < Duration::from_secs(60) {
        for q in &queues {
            let mut req = integration_tests::client::receive_request(
                TOPIC,
                GROUP,
                Some(Duration::from_secs(30)),
                Duration::from_secs(1),
            );
            req.message_queue = Some(q.clone());
            let mut stream = c.receive_message(request(req)).await?.into_inner();
            let mut acks = Vec::new();
            while let Some(frame) = stream.message().await? {
                if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
                    let sp = m.system_properties.unwrap_or_default();
                    received.insert(sp.message_id.clone());
                    acks.push(proto::AckMessageEntry {
                        message_id: sp.message_id,
                        receipt_handle: sp.receipt_handle.unwrap_or_default(),
                        ..Default::default()
                    });
                }
            }
            if acks.is_empty() {
                continue;
            }
            let n = acks.len();
            let acked = c
                .ack_message(request(proto::AckMessageRequest {
                    group: resource(GROUP),
                    topic: resource(TOPIC),
                    entries: acks,
                }))
                .await?
                .into_inner();
            assert_eq!(acked.entries.len(), n);
            assert_eq!(code(&acked.status), Code::Ok as i32, "ack: {acked:?}");
        }
    }
    assert_eq!(received, sent, "every message sent through `a` received through `a`");
    drop((a, b));
    Ok(())
}

/// One single-queue MIXED topic per shard (of 4), so that some of them are certain to move
/// when a second node joins.
/// The `topics:` YAML creating `topics` (one queue each, MIXED) with `durability`.
fn topics_yaml(topics: &[String], durability: &str) -> String {
    topics
        .iter()
        .map(|t| format!("  - name: {t}\n    queueNums: 1\n    messageType: MIXED\n    durability: {durability}\n"))
        .fold(String::from("  create:\n"), |acc, t| acc + &t)
}

/// A cluster node with 4 shards and short leases (3 s), on fresh ports.
fn start_node(dir: &Path, node: &str, pg: &Postgres, bucket: &Path, topics_yaml: &str) -> anyhow::Result<Gateway> {
    start_node_with(dir, node, pg, bucket, topics_yaml, &[])
}

/// [`start_node`] with more configuration overrides.
fn start_node_with(
    dir: &Path,
    node: &str,
    pg: &Postgres,
    bucket: &Path,
    topics_yaml: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Gateway> {
    let grpc = integration_tests::gateway_process::free_port()?;
    let mut overrides: Vec<(String, String)> = [
        ("RMQ_GATEWAY_METADATA__URL", pg.url().to_string()),
        ("RMQ_GATEWAY_SERVER__ADVERTISED_ADDRESS", "127.0.0.1".into()),
        ("RMQ_GATEWAY_CLUSTER__ENABLED", "true".into()),
        ("RMQ_GATEWAY_CLUSTER__NODE_ID", node.into()),
        ("RMQ_GATEWAY_CLUSTER__PEER_ADDRESS", format!("127.0.0.1:{grpc}")),
        ("RMQ_GATEWAY_CLUSTER__SHARDS", "4".into()),
        ("RMQ_GATEWAY_CLUSTER__LEASE_TTL", "3s".into()),
        ("RMQ_GATEWAY_CLUSTER__RENEW_INTERVAL", "500ms".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__ENABLED", "true".into()),
        ("RMQ_GATEWAY_STORAGE__TIERING__OBJECT_STORE__DIR", bucket.display().to_string()),
        ("RMQ_GATEWAY_CONSUMER__MIN_LONG_POLLING_TIMEOUT", "1s".into()),
        ("RMQ_GATEWAY_LOG__LEVEL", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let http = integration_tests::gateway_process::free_port()?;
    Gateway::start_on(dir, grpc, http, &overrides, topics_yaml)
}

/// A message of `topic` due at `due_ms` (whole seconds).
fn delayed(topic: &str, id: &str, due_ms: i64) -> proto::Message {
    let mut m = message(topic, id, id.to_string());
    let sp = m.system_properties.as_mut().expect("system properties");
    sp.message_type = proto::MessageType::Delay as i32;
    sp.delivery_timestamp = Some(prost_types::Timestamp { seconds: due_ms / 1000, nanos: 0 });
    m
}

/// A transactional (half) message of `topic`.
fn half(topic: &str, id: &str) -> proto::Message {
    let mut m = message(topic, id, id.to_string());
    m.system_properties.as_mut().expect("system properties").message_type = proto::MessageType::Transaction as i32;
    m
}

/// Sends one message; HA_NOT_AVAILABLE (no shard of the topic served yet, a hand-over) is
/// retried for up to a minute, as the SDKs do.
async fn send_retrying(
    c: &mut MessagingServiceClient<Channel>,
    m: proto::Message,
) -> anyhow::Result<proto::SendMessageResponse> {
    let started = Instant::now();
    loop {
        let r = c.send_message(request(proto::SendMessageRequest { messages: vec![m.clone()] })).await?.into_inner();
        if code(&r.status) == Code::Ok as i32 {
            return Ok(r);
        }
        anyhow::ensure!(code(&r.status) == Code::HaNotAvailable as i32, "send: {r:?}");
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "never accepted: {r:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Commits a transaction; HA_NOT_AVAILABLE is retried within `limit`, as the SDKs do.
async fn commit_retrying(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    id: &str,
    transaction_id: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let end = c
            .end_transaction(request(proto::EndTransactionRequest {
                topic: resource(topic),
                message_id: id.to_string(),
                transaction_id: transaction_id.to_string(),
                resolution: proto::TransactionResolution::Commit as i32,
                source: proto::TransactionSource::SourceClient as i32,
                trace_context: String::new(),
            }))
            .await?
            .into_inner();
        if code(&end.status) == Code::Ok as i32 {
            return Ok(());
        }
        anyhow::ensure!(code(&end.status) == Code::HaNotAvailable as i32, "commit {id}: {end:?}");
        anyhow::ensure!(started.elapsed() < limit, "commit {id} never succeeded: {end:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Receives and acks (group `group`, every topic of `topics` in turn) until `done` says so
/// for what was received (ids in order, repeats included) or `limit` passed.
async fn receive_all(
    c: &mut MessagingServiceClient<Channel>,
    topics: &[String],
    group: &str,
    limit: Duration,
    done: impl Fn(&[String]) -> bool,
) -> anyhow::Result<Vec<String>> {
    let mut received = Vec::new();
    let started = Instant::now();
    while !done(&received) && started.elapsed() < limit {
        for t in topics {
            let req = integration_tests::client::receive_request(
                t,
                group,
                Some(Duration::from_secs(30)),
                Duration::from_secs(1),
            );
            let mut stream = c.receive_message(request(req)).await?.into_inner();
            let mut acks = Vec::new();
            while let Some(frame) = stream.message().await? {
                if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
                    let sp = m.system_properties.unwrap_or_default();
                    assert_eq!(m.body, sp.message_id.as_bytes().to_vec(), "body of {}", sp.message_id);
                    received.push(sp.message_id.clone());
                    acks.push(proto::AckMessageEntry {
                        message_id: sp.message_id,
                        receipt_handle: sp.receipt_handle.unwrap_or_default(),
                        ..Default::default()
                    });
                }
            }
            if !acks.is_empty() {
                let acked = c
                    .ack_message(request(proto::AckMessageRequest {
                        group: resource(group),
                        topic: resource(t),
                        entries: acks,
                    }))
                    .await?
                    .into_inner();
                anyhow::ensure!(code(&acked.status) == Code::Ok as i32, "ack: {acked:?}");
            }
        }
    }
    Ok(received)
}

fn one_topic_per_shard() -> Vec<String> {
    let mut topics: Vec<Option<String>> = vec![None; 4];
    for i in 0.. {
        let name = format!("Handed-{i}");
        let shard = rmq_gateway::cluster::shard_of(&name, 0, 4) as usize;
        if topics[shard].is_none() {
            topics[shard] = Some(name);
        }
        if topics.iter().all(Option::is_some) {
            break;
        }
    }
    topics.into_iter().flatten().collect()
}

/// Scheduled and half messages stay in the log of the node that accepted them. When their
/// topic's only queue has moved to another node by the time they are due or committed, that
/// node stores them (handed over through the peer service): every one is delivered, with its
/// id and body, and none waits for its old node to own the queue again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_and_committed_messages_follow_their_topic_to_its_new_owner() -> anyhow::Result<()> {
    let Some(pg) = Postgres::start_or_skip("cluster_routing_handover") else { return Ok(()) };
    let (bucket, da, db) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let topics = one_topic_per_shard();
    let yaml = topics_yaml(&topics, "local");
    let start_node = |dir: &Path, node: &str| start_node(dir, node, &pg, bucket.path(), &yaml);
    let a = start_node(da.path(), "node-a")?;
    let mut c = connect(&a).await?;

    // Alone, node-a owns every shard: scheduled (due in 12 s) and half messages of each topic
    // are accepted there.
    let due_ms = client::now_secs() * 1000 + 12_000;
    let mut expected = BTreeSet::new();
    let mut halves = Vec::new();
    for t in &topics {
        for i in 0..5 {
            let id = format!("{t}-D{i}");
            send_retrying(&mut c, delayed(t, &id, due_ms)).await?;
            expected.insert(id);
            let id = format!("{t}-T{i}");
            let r = send_retrying(&mut c, half(t, &id)).await?;
            halves.push((t.clone(), id.clone(), r.entries[0].transaction_id.clone()));
            expected.insert(id);
        }
    }

    // node-b joins and takes half of the shards: some topics' only queue is now on node-b.
    let b = start_node(db.path(), "node-b")?;
    let started = Instant::now();
    let moved = loop {
        let mut moved = Vec::new();
        for t in &topics {
            let r = c.query_route(request(proto::QueryRouteRequest { topic: resource(t), endpoints: None })).await?;
            let owner = r.into_inner().message_queues.first().and_then(|q| q.broker.as_ref().map(|b| b.name.clone()));
            if owner.as_deref() == Some("node-b") {
                moved.push(t.clone());
            }
        }
        if !moved.is_empty() && moved.len() < topics.len() {
            break moved;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no topic ever moved to node-b");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Commits through node-a (which holds the half messages), before the timers are due.
    for (t, id, transaction_id) in &halves {
        commit_retrying(&mut c, t, id, transaction_id, Duration::from_secs(30)).await?;
    }

    // Everything is delivered, through node-a (forwarded to node-b for the moved topics).
    let received: BTreeSet<String> =
        receive_all(&mut c, &topics, "HandedGroup", Duration::from_secs(60), |got| got.len() >= expected.len())
            .await?
            .into_iter()
            .collect();
    let missing: Vec<_> = expected.difference(&received).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?} (moved topics: {moved:?})\n{}", a.log_tail(40));
    let handed = a.log_lines_with("handed over to a node serving the topic");
    assert!(!handed.is_empty(), "node-a handed nothing over although {moved:?} moved to node-b");
    drop((a, b));
    Ok(())
}

/// A node gone for good: its scheduled and half messages (acknowledged with `durability: s3`,
/// so in the bucket) are adopted by the surviving node once the dead node's heartbeat is older
/// than the lease TTL, although the dead node's data dir is deleted. They fire at their time
/// and commit through the surviving node (the transaction ids name the dead node: they are
/// routed to its adopter); a recalled one never fires. When the dead node comes back with its
/// old disk it gives up what was adopted: nothing is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_scheduled_and_half_messages_are_adopted() -> anyhow::Result<()> {
    let Some(pg) = Postgres::start_or_skip("cluster_routing_adoption") else { return Ok(()) };
    let (bucket, da, db, backup) =
        (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let topics = one_topic_per_shard();
    let yaml = topics_yaml(&topics, "s3");
    let mut a = start_node(da.path(), "node-a", &pg, bucket.path(), &yaml)?;
    let mut c = connect(&a).await?;

    // Alone, node-a owns every shard and takes every scheduled (due in 20 s) and half message.
    let due_ms = client::now_secs() * 1000 + 20_000;
    let mut expected = BTreeSet::new();
    let mut halves = Vec::new();
    let mut recalled = Vec::new();
    let mut late = Vec::new();
    for t in &topics {
        for i in 0..3 {
            let id = format!("{t}-D{i}");
            send_retrying(&mut c, delayed(t, &id, due_ms)).await?;
            expected.insert(id);
            let id = format!("{t}-T{i}");
            let r = send_retrying(&mut c, half(t, &id)).await?;
            halves.push((t.clone(), id.clone(), r.entries[0].transaction_id.clone()));
            expected.insert(id);
        }
        // Due much later: recalled through node-a once it is back.
        let id = format!("{t}-late");
        let r = send_retrying(&mut c, delayed(t, &id, due_ms + 100_000)).await?;
        late.push((t.clone(), id, r.entries[0].recall_handle.clone()));
        let id = format!("{t}-recalled");
        let r = send_retrying(&mut c, delayed(t, &id, due_ms)).await?;
        let handle = r.entries[0].recall_handle.clone();
        let r = c
            .recall_message(request(proto::RecallMessageRequest { topic: resource(t), recall_handle: handle }))
            .await?
            .into_inner();
        anyhow::ensure!(code(&r.status) == Code::Ok as i32, "recall {id}: {r:?}");
        recalled.push(id);
    }

    // node-b joins; then node-a dies with its disk (a copy is kept for its return).
    let b = start_node(db.path(), "node-b", &pg, bucket.path(), &yaml)?;
    let mut cb = connect(&b).await?;
    let started = Instant::now();
    while b.log_lines_with("home log entered").is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "node-b never entered its home log\n{}",
            b.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop(integration_tests::gateway_process::Stop::Kill)?;
    let killed = Instant::now();
    let status = std::process::Command::new("cp").arg("-a").arg(a.data_dir()).arg(backup.path()).status()?;
    anyhow::ensure!(status.success(), "copying node-a's data dir");
    a.wipe_data_dir()?;

    // node-b adopts node-a's messages from the bucket.
    while b.log_lines_with("home log adopted").is_empty() {
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "node-b never adopted node-a's home log\n{}",
            b.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let adopted_after = killed.elapsed();
    let line = b.log_lines_with("home log adopted").join("\n");
    println!("node-a's home log adopted by node-b {adopted_after:?} after the SIGKILL (lease TTL 3 s): {line}");
    anyhow::ensure!(line.contains("scheduled=16") && line.contains("half=12"), "adopted: {line}");

    // Commits through node-b: the ids name node-a; its adopter serves them. The last half
    // message of each topic waits for node-a to come back.
    let (now_halves, later_halves): (Vec<_>, Vec<_>) = halves.iter().partition(|(_, id, _)| !id.ends_with("-T2"));
    for (t, id, transaction_id) in &now_halves {
        anyhow::ensure!(transaction_id.starts_with("node-a/"), "{transaction_id}");
        commit_retrying(&mut cb, t, id, transaction_id, Duration::from_secs(30)).await?;
    }
    let later_ids: BTreeSet<String> = later_halves.iter().map(|(_, id, _)| id.clone()).collect();
    let expected: BTreeSet<String> = expected.difference(&later_ids).cloned().collect();
    let received =
        receive_all(&mut cb, &topics, "AdoptedGroup", Duration::from_secs(60), |got| got.len() >= expected.len())
            .await?;
    let got: BTreeSet<String> = received.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    anyhow::ensure!(missing.is_empty(), "never delivered: {missing:?}\n{}", b.log_tail(40));
    anyhow::ensure!(received.len() == expected.len(), "delivered twice: {received:?}");
    anyhow::ensure!(!recalled.iter().any(|r| got.contains(r)), "a recalled message was delivered: {received:?}");

    // node-a comes back with its old disk: it gives the adopted messages up.
    std::fs::remove_dir_all(a.data_dir()).ok();
    let status =
        std::process::Command::new("cp").arg("-a").arg(backup.path().join("data")).arg(a.data_dir()).status()?;
    anyhow::ensure!(status.success(), "restoring node-a's data dir");
    a.restart()?;
    let started = Instant::now();
    while a.log_lines_with("home log entered").len() < 2 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "node-a never entered its home log again\n{}",
            a.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let given_up = a.log_lines_with("left to them").join("\n");
    anyhow::ensure!(
        given_up.contains("scheduled=16") && given_up.contains("half=12"),
        "node-a gave up: {given_up:?}\n{}",
        a.log_tail(40)
    );
    // The ids node-a handed out still work through node-a: it passes what was adopted on to
    // node-b (commits and recalls alike).
    let mut c = connect(&a).await?;
    for (t, id, transaction_id) in &later_halves {
        commit_retrying(&mut c, t, id, transaction_id, Duration::from_secs(30)).await?;
    }
    for (t, id, handle) in &late {
        anyhow::ensure!(handle.starts_with("node-a/"), "{handle}");
        let r = c
            .recall_message(request(proto::RecallMessageRequest { topic: resource(t), recall_handle: handle.clone() }))
            .await?
            .into_inner();
        anyhow::ensure!(code(&r.status) == Code::Ok as i32 && r.message_id == *id, "recall {id} through node-a: {r:?}");
    }
    // Only those commits are delivered now: nothing of what was adopted comes again.
    let again = receive_all(&mut cb, &topics, "AdoptedGroup", Duration::from_secs(8), |_| false).await?;
    let again_ids: BTreeSet<String> = again.iter().cloned().collect();
    anyhow::ensure!(again.len() == later_ids.len() && again_ids == later_ids, "after node-a came back: {again:?}");
    drop((a, b));
    Ok(())
}

/// TLS between nodes: two nodes with `server.tls.mode: enforcing` (plaintext refused),
/// `cluster.peerTls` and a cluster secret. A client of one node sends to and receives from the
/// queues of both (what belongs to the other is forwarded, over TLS); the peer service refuses
/// calls without the secret or with another one, and takes them with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_tls_and_the_peer_service_wants_the_secret() -> anyhow::Result<()> {
    use rmq_gateway::grpc::peer::pb::{RelayCommandRequest, peer_client::PeerClient};
    let Some(pg) = Postgres::start_or_skip("cluster_routing_tls") else { return Ok(()) };
    let (bucket, da, db) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let topics = one_topic_per_shard();
    let yaml = topics_yaml(&topics, "local");
    let secure = [
        ("RMQ_GATEWAY_SERVER__TLS__MODE", "enforcing"),
        ("RMQ_GATEWAY_CLUSTER__PEER_TLS", "true"),
        ("RMQ_GATEWAY_CLUSTER__SECRET", "s3cr3t"),
    ];
    let a = start_node_with(da.path(), "node-a", &pg, bucket.path(), &yaml, &secure)?;
    let b = start_node_with(db.path(), "node-b", &pg, bucket.path(), &yaml, &secure)?;
    let addr = |g: &Gateway| std::net::SocketAddr::from(([127, 0, 0, 1], g.grpc_port));
    let plain = Channel::from_shared(format!("http://{}", a.endpoint()))?.connect_timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(ch) => MessagingServiceClient::new(ch)
            .query_route(request(proto::QueryRouteRequest { topic: resource(&topics[0]), endpoints: None }))
            .await
            .is_err(),
    };
    anyhow::ensure!(refused, "node-a answered a plaintext client with server.tls.mode enforcing");
    let mut c = integration_tests::client::tls_client(addr(&a)).await?;

    // Both nodes own shards: some topics' queue is on node-b.
    let started = Instant::now();
    loop {
        let mut owners = BTreeSet::new();
        for t in &topics {
            let r = c.query_route(request(proto::QueryRouteRequest { topic: resource(t), endpoints: None })).await?;
            let r = r.into_inner();
            owners.extend(r.message_queues.iter().filter_map(|q| q.broker.as_ref().map(|b| b.name.clone())));
        }
        if owners.len() == 2 {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "routes never named both nodes: {owners:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut expected = BTreeSet::new();
    for t in &topics {
        for i in 0..5 {
            let id = format!("{t}-S{i}");
            send_retrying(&mut c, message(t, &id, id.clone())).await?;
            expected.insert(id);
        }
    }
    let got: BTreeSet<String> =
        receive_all(&mut c, &topics, "TlsGroup", Duration::from_secs(60), |got| got.len() >= expected.len())
            .await?
            .into_iter()
            .collect();
    anyhow::ensure!(got == expected, "received {got:?}, sent {expected:?}\n{}", b.log_tail(30));

    // The peer service: the secret or nothing.
    let mut peer = PeerClient::new(integration_tests::client::tls_channel(addr(&b)).await?);
    let relay = |secret: Option<&str>| {
        let mut req = tonic::Request::new(RelayCommandRequest {
            topic: topics[0].clone(),
            telemetry_command: Default::default(),
            from_node: "intruder".into(),
        });
        if let Some(s) = secret {
            req.metadata_mut().insert(rmq_gateway::grpc::forward::CLUSTER_SECRET, s.parse().expect("ascii"));
        }
        req
    };
    for secret in [None, Some("guess")] {
        let e = peer.relay_command(relay(secret)).await.expect_err("a call without the secret");
        anyhow::ensure!(e.code() == tonic::Code::Unauthenticated, "{secret:?}: {e:?}");
    }
    let ok = peer.relay_command(relay(Some("s3cr3t"))).await?.into_inner();
    anyhow::ensure!(!ok.delivered, "no producer is connected");
    drop((a, b));
    Ok(())
}

/// A node that leaves for good gracefully (SIGTERM, then its disk is gone): the scheduled
/// messages it accepted just before (topics with `local` durability) reach the bucket with the
/// home log's tail uploads during its shutdown (and the final one at its close), and are adopted
/// by the other node once the leaving node's heartbeat is older than the lease TTL (its row
/// stays, marked leaving): every one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_for_good_leaves_its_timers_to_the_others() -> anyhow::Result<()> {
    let Some(pg) = Postgres::start_or_skip("cluster_routing_leave") else { return Ok(()) };
    let (bucket, da, db) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let topics = one_topic_per_shard();
    let yaml = topics_yaml(&topics, "local");
    let mut a = start_node(da.path(), "node-a", &pg, bucket.path(), &yaml)?;
    let b = start_node(db.path(), "node-b", &pg, bucket.path(), &yaml)?;
    let mut c = connect(&a).await?;
    let started = Instant::now();
    while b.log_lines_with("home log entered").is_empty() || a.log_lines_with("home log entered").is_empty() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the nodes never entered their home logs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Scheduled messages through node-a (kept by whichever node owns a queue of the topic),
    // then at once a graceful stop of node-a and the loss of its disk.
    let due_ms = client::now_secs() * 1000 + 12_000;
    let mut expected = BTreeSet::new();
    for t in &topics {
        for i in 0..4 {
            let id = format!("{t}-L{i}");
            send_retrying(&mut c, delayed(t, &id, due_ms)).await?;
            expected.insert(id);
        }
    }
    a.stop(integration_tests::gateway_process::Stop::Graceful)?;
    a.wipe_data_dir()?;
    let mut cb = connect(&b).await?;
    let received =
        receive_all(&mut cb, &topics, "LeaveGroup", Duration::from_secs(60), |got| got.len() >= expected.len()).await?;
    let got: BTreeSet<String> = received.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    anyhow::ensure!(missing.is_empty(), "never delivered: {missing:?}\n{}", b.log_tail(40));
    let adopted = b.log_lines_with("home log adopted").join("\n");
    anyhow::ensure!(adopted.contains("node-a"), "node-b adopted nothing of node-a: {adopted}");
    println!("{adopted}");
    drop((a, b));
    Ok(())
}
