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

use integration_tests::client::{message, request, resource};
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
