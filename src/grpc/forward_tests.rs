//! Forwarding end to end: two gateways (`a`, `b`) in this process, each a real broker on an
//! in-memory log behind the real MessagingService on a loopback port, with hand-built cluster
//! views in which `b` owns every queue. A client talks to `a` only; what `b` receives is
//! recorded by an interceptor (headers copied, forwarded mark, no second hop).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::forward::FORWARDED_BY;
use super::{GrpcSettings, MessagingServiceImpl, ProducerBackoff};
use crate::broker::{Broker, BrokerSettings, Stores, TopicKind};
use crate::cluster::{ClusterView, NodeInfo};
use crate::config::Config;
use crate::proto::messaging_service_client::MessagingServiceClient;
use crate::proto::{self, Code};

const SHARDS: u32 = 4;

struct Node {
    broker: Broker,
    service: MessagingServiceImpl,
    addr: String,
    /// Headers of every request this node received.
    seen: Arc<Mutex<Vec<MetadataMap>>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn info(id: &str, addr: &str) -> NodeInfo {
    NodeInfo { node_id: id.into(), advertised: addr.into(), peer: addr.into() }
}

async fn broker() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores {
        log: Arc::new(crate::storage::memory::MemoryLog::new()),
        meta: Arc::new(crate::metadata::sqlite::SqliteMetadataStore::in_memory().await.unwrap()),
        timers: Arc::new(crate::storage::BucketFiles::open(dir.path(), 1000).unwrap()),
    };
    let settings = BrokerSettings::from(&Config::default());
    let broker = Broker::start(settings, stores, Arc::new(crate::clock::SystemClock)).await.unwrap();
    broker.create_topic("T", Some(4), TopicKind::Mixed).await.unwrap();
    (broker, dir)
}

fn settings() -> GrpcSettings {
    GrpcSettings {
        grpc_server_port: 0,
        advertised_address: String::new(),
        broker_name: "rmq-gateway".into(),
        grpc_max_inbound_message_size: 4 << 20,
        max_body_size: 4 << 20,
        producer: ProducerBackoff {
            max_attempts: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            backoff_multiplier: 2.0,
        },
        client_metrics: false,
        md5_digests_only: false,
    }
}

/// Starts a node on `listener` with `view`.
async fn start(listener: tokio::net::TcpListener, view: Arc<ClusterView>) -> Node {
    let addr = listener.local_addr().unwrap().to_string();
    let (broker, dir) = broker().await;
    let service = MessagingServiceImpl::new(broker.clone(), settings()).with_cluster(
        view,
        Duration::from_secs(5),
        Default::default(),
    );
    let peer = service.peer_server();
    let kept = service.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let intercepted = InterceptedService::new(service.into_server(), move |req: tonic::Request<()>| {
        record.lock().unwrap().push(req.metadata().clone());
        Ok(req)
    });
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(intercepted)
            .add_service(peer)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), token.cancelled_owned())
            .await
    });
    Node { broker, service: kept, addr, seen, stop, _dir: dir }
}

/// `a` and `b`; `b` owns (and has open) every shard.
async fn cluster() -> (Node, Node) {
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (aa, ab) = (la.local_addr().unwrap().to_string(), lb.local_addr().unwrap().to_string());
    let owners = vec![Some("b".to_string()); SHARDS as usize];
    let va = ClusterView::new(info("a", &aa), SHARDS);
    va.set_membership(vec![info("b", &ab)], owners.clone());
    let vb = ClusterView::new(info("b", &ab), SHARDS);
    vb.set_membership(vec![info("a", &aa)], owners);
    for s in 0..SHARDS {
        vb.set_local(s, true);
    }
    (start(la, va).await, start(lb, vb).await)
}

async fn client(addr: &str) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap()
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let md = req.metadata_mut();
    md.insert("x-mq-client-id", "client-1".parse().unwrap());
    md.insert("x-mq-language", "JAVA".parse().unwrap());
    md.insert(
        "authorization",
        "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, Signature=00".parse().unwrap(),
    );
    req
}

fn topic() -> Option<proto::Resource> {
    Some(proto::Resource { resource_namespace: String::new(), name: "T".into() })
}

fn message(id: &str, kind: proto::MessageType) -> proto::Message {
    proto::Message {
        topic: topic(),
        user_properties: Default::default(),
        system_properties: Some(proto::SystemProperties {
            message_id: id.into(),
            message_type: kind as i32,
            body_encoding: proto::Encoding::Identity as i32,
            ..Default::default()
        }),
        body: bytes::Bytes::from_static(b"hello"),
    }
}

fn code(s: &Option<proto::Status>) -> i32 {
    s.as_ref().map_or(-1, |s| s.code)
}

/// Requests `b` received from `a` (marked forwarded by `a`).
fn forwarded_to(node: &Node) -> Vec<MetadataMap> {
    node.seen.lock().unwrap().iter().filter(|md| md.get(FORWARDED_BY).is_some_and(|v| v == "a")).cloned().collect()
}

#[tokio::test]
async fn requests_are_forwarded_to_the_owner() {
    let (a, b) = cluster().await;
    let mut c = client(&a.addr).await;

    // Routes name the owner.
    let route = c.query_route(request(proto::QueryRouteRequest { topic: topic(), endpoints: None })).await.unwrap();
    let queues = route.into_inner().message_queues;
    assert_eq!(queues.len(), 4);
    for q in &queues {
        let broker = q.broker.as_ref().unwrap();
        let ep = &broker.endpoints.as_ref().unwrap().addresses[0];
        assert_eq!((broker.name.as_str(), format!("{}:{}", ep.host, ep.port)), ("b", b.addr.clone()));
    }

    // Push consumers get one assignment per owner, at the owner.
    let assignment = c
        .query_assignment(request(proto::QueryAssignmentRequest {
            topic: topic(),
            group: Some(proto::Resource { resource_namespace: String::new(), name: "G".into() }),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&assignment.status), Code::Ok as i32, "{assignment:?}");
    assert_eq!(assignment.assignments.len(), 1, "{assignment:?}");
    let mq = assignment.assignments[0].message_queue.as_ref().unwrap();
    assert!(mq.id >= 0);
    assert_eq!(mq.broker.as_ref().unwrap().name, "b");

    // A send through `a` is stored by `b`, with the client's headers.
    let sent = c
        .send_message(request(proto::SendMessageRequest { messages: vec![message("M1", proto::MessageType::Normal)] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&sent.status), Code::Ok as i32, "{sent:?}");
    assert!(sent.entries[0].transaction_id.starts_with("b/"), "ids carry the node that accepted the message");
    let seen = forwarded_to(&b);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].get("x-mq-client-id").unwrap(), "client-1");
    assert_eq!(seen[0].get("x-mq-language").unwrap(), "JAVA");
    assert!(seen[0].get("authorization").unwrap().to_str().unwrap().starts_with("MQv2-HMAC-SHA1"));
    assert_eq!(a.broker.route("T").await.unwrap().queue_nums, 4);

    // A streaming receive through `a` comes from `b`.
    let receive = proto::ReceiveMessageRequest {
        group: Some(proto::Resource { resource_namespace: String::new(), name: "G".into() }),
        message_queue: Some(proto::MessageQueue { topic: topic(), id: -1, ..Default::default() }),
        filter_expression: None,
        batch_size: 8,
        invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
        attempt_id: None,
    };
    let mut stream = c.receive_message(request(receive)).await.unwrap().into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        frames.push(frame.content.unwrap());
    }
    use proto::receive_message_response::Content;
    let delivered: Vec<&proto::Message> =
        frames.iter().filter_map(|f| if let Content::Message(m) = f { Some(m) } else { None }).collect();
    assert_eq!(delivered.len(), 1, "{frames:?}");
    assert!(matches!(frames.first(), Some(Content::Status(s)) if s.code == Code::Ok as i32));
    assert!(matches!(frames.last(), Some(Content::DeliveryTimestamp(_))));
    let sp = delivered[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.message_id, "M1");

    // The ack goes to the owner of the receipt's queue.
    let ack = proto::AckMessageRequest {
        group: Some(proto::Resource { resource_namespace: String::new(), name: "G".into() }),
        topic: topic(),
        entries: vec![proto::AckMessageEntry {
            message_id: "M1".into(),
            receipt_handle: sp.receipt_handle.clone().unwrap(),
            ..Default::default()
        }],
    };
    let acked = c.ack_message(request(ack)).await.unwrap().into_inner();
    assert_eq!(code(&acked.status), Code::Ok as i32, "{acked:?}");
    assert_eq!(acked.entries.len(), 1);
    assert_eq!(forwarded_to(&b).len(), 3, "send, receive and ack forwarded");

    // Telemetry and heartbeats stay here; a transactional message goes to a node owning a
    // queue of its topic (its half message lives there until it is committed).
    let hb = c.heartbeat(request(proto::HeartbeatRequest { group: None, client_type: 1 })).await.unwrap().into_inner();
    assert_eq!(code(&hb.status), Code::Ok as i32);
    let tx = c
        .send_message(request(proto::SendMessageRequest {
            messages: vec![message("TX1", proto::MessageType::Transaction)],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&tx.status), Code::Ok as i32, "{tx:?}");
    assert_eq!(tx.entries[0].transaction_id, "b/TX1", "the half message is held by an owner of the topic");
    assert_eq!(forwarded_to(&b).len(), 4);

    // EndTransaction through `a` reaches `b`, which holds the half message.
    let end = proto::EndTransactionRequest {
        topic: topic(),
        message_id: "TX1".into(),
        transaction_id: tx.entries[0].transaction_id.clone(),
        resolution: proto::TransactionResolution::Commit as i32,
        source: proto::TransactionSource::SourceClient as i32,
        trace_context: String::new(),
    };
    let ended = c.end_transaction(request(end)).await.unwrap().into_inner();
    assert_eq!(code(&ended.status), Code::Ok as i32, "{ended:?}");
    assert_eq!(b.broker.open_transactions(), 0);

    a.stop.cancel();
    b.stop.cancel();
}

#[tokio::test]
async fn a_forwarded_request_is_not_forwarded_again() {
    let (a, b) = cluster().await;
    let mut c = client(&a.addr).await;
    let mut req = request(proto::SendMessageRequest { messages: vec![message("M1", proto::MessageType::Normal)] });
    req.metadata_mut().insert(FORWARDED_BY, "c".parse().unwrap());
    let sent = c.send_message(req).await.unwrap().into_inner();
    assert_eq!(code(&sent.status), Code::HaNotAvailable as i32, "{sent:?}");
    assert_eq!(code(&sent.entries[0].status), Code::HaNotAvailable as i32);
    assert!(b.seen.lock().unwrap().is_empty(), "nothing reached b");

    // A peer that cannot be reached: HA_NOT_AVAILABLE, within the forward timeout.
    b.stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = c
        .send_message(request(proto::SendMessageRequest { messages: vec![message("M2", proto::MessageType::Normal)] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&sent.status), Code::HaNotAvailable as i32, "{sent:?}");
    a.stop.cancel();
}

#[tokio::test]
async fn orphan_checks_reach_a_producer_connected_to_another_node() {
    use crate::broker::{ClientCommand, ClientKind, DeliveredMessage, OrphanCheckRelay};
    let (a, b) = cluster().await;
    // A producer of T connected to `b` only.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    b.broker.register_client("p1", ClientKind::Producer, None, vec!["T".into()]);
    b.broker.attach_client_channel("p1", tx);

    // `a` holds an orphan and has no producer of T: the check goes through `b`.
    let forwarder = a.service.cluster.clone().unwrap();
    let relay = super::peer::PeerRelay::new(forwarder);
    let message = DeliveredMessage {
        topic: Arc::from("T"),
        queue_id: 0,
        queue_offset: 0,
        message_id: "TX9".into(),
        tag: None,
        keys: vec![],
        message_group: None,
        delivery_timestamp_ms: None,
        message_type: crate::broker::MessageType::Transaction,
        born_timestamp_ms: 1,
        born_host: String::new(),
        store_timestamp_ms: 1,
        trace_context: None,
        user_properties: vec![],
        body: bytes::Bytes::from_static(b"x"),
        gzip: false,
        receipt_handle: String::new(),
        delivery_attempt: 1,
        priority: None,
        dead_letter: None,
    };
    relay.relay_orphan_check(
        "T",
        ClientCommand::RecoverOrphanedTransaction { message: Box::new(message), transaction_id: "TX9".into() },
    );
    let cmd = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    let ClientCommand::Relayed { payload } = cmd else { panic!("expected a relayed command, got {cmd:?}") };
    let out = super::telemetry::outbound(ClientCommand::Relayed { payload }, "", Some("b")).unwrap();
    match out.command {
        Some(proto::telemetry_command::Command::RecoverOrphanedTransactionCommand(c)) => {
            assert_eq!(c.transaction_id, "a/TX9", "the producer's answer goes back to `a`");
            assert_eq!(c.message.unwrap().system_properties.unwrap().message_id, "TX9");
        }
        other => panic!("expected an orphan check, got {other:?}"),
    }
    // No producer of another topic anywhere: not delivered.
    assert!(!relay.relay("U", bytes::Bytes::from_static(b"")).await);
    a.stop.cancel();
    b.stop.cancel();
}
