//! Protocol-level end-to-end tests: an in-process gateway on loopback driven by a raw tonic
//! client, checking RocketMQ status codes for good and bad input.

use std::time::Duration;

use integration_tests::client::{self, request, resource};
use integration_tests::in_process::Gateway;
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use tonic::Request;
use tonic::transport::Channel;

fn req<T>(msg: T) -> Request<T> {
    request(msg)
}

fn message(topic: &str, id: &str, body: &[u8]) -> proto::Message {
    client::tagged_message(topic, id, "TagA", body.to_vec())
}

async fn send(c: &mut MessagingServiceClient<Channel>, msgs: Vec<proto::Message>) -> proto::SendMessageResponse {
    c.send_message(req(proto::SendMessageRequest { messages: msgs })).await.unwrap().into_inner()
}

fn code(s: &Option<proto::Status>) -> i32 {
    s.as_ref().map(|s| s.code).unwrap_or(-1)
}

struct Received {
    status: proto::Status,
    messages: Vec<proto::Message>,
}

async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    invisible: Option<Duration>,
) -> Received {
    receive_with(c, topic, group, invisible, |_| {}).await
}

/// [`receive`] with the request adjusted (attempt id, auto renew…).
async fn receive_with(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    invisible: Option<Duration>,
    tweak: impl FnOnce(&mut proto::ReceiveMessageRequest),
) -> Received {
    let mut r = client::receive_request(topic, group, invisible, Duration::from_secs(1));
    tweak(&mut r);
    let mut request = req(r);
    request.set_timeout(Duration::from_secs(10));
    let mut stream = c.receive_message(request).await.unwrap().into_inner();
    let mut status = None;
    let mut messages = Vec::new();
    let mut saw_timestamp = false;
    while let Some(frame) = stream.message().await.unwrap() {
        match frame.content.expect("every frame has content") {
            proto::receive_message_response::Content::Status(s) => {
                assert!(status.is_none() && messages.is_empty(), "status comes first, once");
                status = Some(s);
            }
            proto::receive_message_response::Content::Message(m) => messages.push(m),
            proto::receive_message_response::Content::DeliveryTimestamp(_) => saw_timestamp = true,
        }
    }
    assert!(saw_timestamp, "stream ends with delivery_timestamp");
    Received { status: status.expect("stream has a status"), messages }
}

async fn ack(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    m: &proto::Message,
) -> proto::AckMessageResponse {
    let sp = m.system_properties.as_ref().unwrap();
    c.ack_message(req(proto::AckMessageRequest {
        group: resource(group),
        topic: resource(topic),
        entries: vec![proto::AckMessageEntry {
            message_id: sp.message_id.clone(),
            receipt_handle: sp.receipt_handle.clone().unwrap(),
            lite_topic: None,
        }],
    }))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn route_send_receive_ack() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    let route = c
        .query_route(req(proto::QueryRouteRequest {
            topic: resource("TopicA"),
            endpoints: Some(proto::Endpoints {
                scheme: proto::AddressScheme::IPv4 as i32,
                addresses: vec![proto::Address { host: "127.0.0.1".into(), port: g.addrs.grpc.port() as i32 }],
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::Ok as i32);
    assert_eq!(route.message_queues.len(), 8);
    let q0 = &route.message_queues[0];
    assert_eq!(q0.id, 0);
    assert_eq!(q0.permission, proto::Permission::ReadWrite as i32);
    // Not created yet: the first send decides the type, so every type is accepted.
    assert_eq!(q0.accept_message_types.len(), 4);
    let b = q0.broker.as_ref().unwrap();
    assert_eq!(b.id, 0);
    assert_eq!(b.endpoints.as_ref().unwrap().addresses[0].port, g.addrs.grpc.port() as i32);

    let n = 50;
    for i in 0..n {
        let r = send(&mut c, vec![message("TopicA", &format!("ID{i}"), format!("body-{i}").as_bytes())]).await;
        assert_eq!(code(&r.status), Code::Ok as i32, "{:?}", r.status);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].message_id, format!("ID{i}"));
    }
    // A batch gets one entry per message.
    let batch = send(&mut c, vec![message("TopicA", "B1", b"b1"), message("TopicA", "B2", b"b2")]).await;
    assert_eq!(batch.entries.len(), 2);
    // The first (NORMAL) send created it as a NORMAL topic.
    let route = c
        .query_route(req(proto::QueryRouteRequest { topic: resource("TopicA"), endpoints: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.message_queues[0].accept_message_types, vec![proto::MessageType::Normal as i32]);

    let mut got = std::collections::BTreeSet::new();
    while got.len() < n + 2 {
        let r = receive(&mut c, "TopicA", "GroupA", Some(Duration::from_secs(30))).await;
        assert_eq!(r.status.code, Code::Ok as i32, "{:?}", r.status);
        for m in &r.messages {
            let sp = m.system_properties.as_ref().unwrap();
            assert_eq!(sp.delivery_attempt, Some(1));
            let digest = sp.body_digest.as_ref().unwrap();
            assert_eq!(digest.r#type, proto::DigestType::Md5 as i32);
            let md5 = hex::encode_upper(<md5::Md5 as md5::Digest>::digest(&m.body));
            assert_eq!(digest.checksum, md5, "body digest is the upper-hex MD5 of the body");
            assert!(sp.queue_offset.is_some() && sp.born_timestamp.is_some());
            assert_eq!(sp.tag.as_deref(), Some("TagA"));
            let a = ack(&mut c, "TopicA", "GroupA", m).await;
            assert_eq!(code(&a.status), Code::Ok as i32, "{:?}", a.status);
            assert_eq!(a.entries.len(), 1);
            assert!(got.insert(sp.message_id.clone()), "duplicate {}", sp.message_id);
        }
    }
    // Nothing left, and the long poll ends with MESSAGE_NOT_FOUND.
    let r = receive(&mut c, "TopicA", "GroupA", Some(Duration::from_secs(30))).await;
    assert_eq!(r.status.code, Code::MessageNotFound as i32);
    g.stop().await;
}

/// A delivered message's `body_digest` is a CRC32 in the form the client's SDK compares (by
/// its `x-mq-language`), MD5 for any other client, and MD5 for all with `server.bodyDigest: md5`.
#[tokio::test]
async fn body_digests_follow_the_client_language() {
    // CRC32("body-0") = 0x060BB6A6: Java and Go drop the leading zero, Python keeps it.
    const MD5: &str = "0FF85A33EE8C8AA4F59A843D5199909F";
    let crc32 = proto::DigestType::Crc32 as i32;
    let md5 = proto::DigestType::Md5 as i32;
    for md5_only in [false, true] {
        let g = Gateway::start(|c| {
            if md5_only {
                c.server.body_digest = rmq_gateway::config::BodyDigestPolicy::Md5;
            }
        })
        .await;
        let mut c = g.client().await;
        let cases = [
            ("JAVA", crc32, "60BB6A6"),
            ("GO", crc32, "60BB6A6"),
            ("PYTHON", crc32, "060BB6A6"),
            ("HTTP", md5, MD5),
            ("", md5, MD5),
        ];
        for (i, (language, kind, checksum)) in cases.into_iter().enumerate() {
            let topic = format!("TopicDigest{i}");
            send(&mut c, vec![message(&topic, &format!("D{i}"), b"body-0")]).await;
            let mut r = req(client::receive_request(
                &topic,
                "GroupDigest",
                Some(Duration::from_secs(30)),
                Duration::from_secs(5),
            ));
            if !language.is_empty() {
                r.metadata_mut().insert("x-mq-language", language.parse().unwrap());
            }
            let mut stream = c.receive_message(r).await.unwrap().into_inner();
            let mut digest = None;
            while let Some(frame) = stream.message().await.unwrap() {
                if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
                    digest = m.system_properties.and_then(|sp| sp.body_digest);
                }
            }
            let digest = digest.unwrap_or_else(|| panic!("{language}: no message delivered"));
            let want = if md5_only { (md5, MD5) } else { (kind, checksum) };
            assert_eq!(
                (digest.r#type, digest.checksum.as_str()),
                want,
                "x-mq-language {language:?}, md5 only: {md5_only}"
            );
        }
        g.stop().await;
    }
}

#[tokio::test]
async fn unacked_messages_come_back_with_the_next_attempt() {
    let g = Gateway::start(|c| c.consumer.min_invisible_time = Duration::from_secs(1)).await;
    let mut c = g.client().await;
    send(&mut c, vec![message("TopicR", "R1", b"x")]).await;
    let first = receive(&mut c, "TopicR", "GroupR", Some(Duration::from_secs(1))).await;
    assert_eq!(first.messages.len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = receive(&mut c, "TopicR", "GroupR", Some(Duration::from_secs(10))).await;
    assert_eq!(second.messages.len(), 1);
    let sp = second.messages[0].system_properties.as_ref().unwrap();
    assert_eq!(sp.delivery_attempt, Some(2));
    // The first handle is stale now.
    let stale = ack(&mut c, "TopicR", "GroupR", &first.messages[0]).await;
    assert_eq!(code(&stale.status), Code::InvalidReceiptHandle as i32);
    // ChangeInvisibleDuration returns a new handle; the old one stops working.
    let changed = c
        .change_invisible_duration(req(proto::ChangeInvisibleDurationRequest {
            group: resource("GroupR"),
            topic: resource("TopicR"),
            receipt_handle: sp.receipt_handle.clone().unwrap(),
            invisible_duration: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            message_id: sp.message_id.clone(),
            lite_topic: None,
            suspend: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&changed.status), Code::Ok as i32);
    assert_ne!(changed.receipt_handle, *sp.receipt_handle.as_ref().unwrap());
    let old = ack(&mut c, "TopicR", "GroupR", &second.messages[0]).await;
    assert_eq!(code(&old.status), Code::InvalidReceiptHandle as i32);
    let mut m = second.messages[0].clone();
    m.system_properties.as_mut().unwrap().receipt_handle = Some(changed.receipt_handle);
    assert_eq!(code(&ack(&mut c, "TopicR", "GroupR", &m).await.status), Code::Ok as i32);
    g.stop().await;
}

#[tokio::test]
async fn bad_input_gets_rocketmq_codes() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;

    let mut big = message("TopicB", "X1", &vec![b'x'; 4 * 1024 * 1024 + 1]);
    let r = send(&mut c, vec![big.clone()]).await;
    assert_eq!(code(&r.status), Code::MessageBodyTooLarge as i32, "{:?}", r.status);
    assert_eq!(r.entries.len(), 1, "one entry per message even on failure");
    big.body = vec![b'x'; 4 * 1024 * 1024].into();
    assert_eq!(code(&send(&mut c, vec![big]).await.status), Code::Ok as i32, "exactly the limit passes");

    let mut many = message("TopicB", "X2", b"x");
    for i in 0..129 {
        many.user_properties.insert(format!("k{i}"), "v".into());
    }
    assert_eq!(code(&send(&mut c, vec![many]).await.status), Code::MessagePropertiesTooLarge as i32);

    let mut reserved = message("TopicB", "X3", b"x");
    reserved.user_properties.insert("UNIQ_KEY".into(), "v".into());
    let r = send(&mut c, vec![reserved]).await;
    assert_eq!(code(&r.status), Code::IllegalMessagePropertyKey as i32);
    assert!(r.status.unwrap().message.contains("UNIQ_KEY"));

    let r = send(&mut c, vec![message("bad topic!", "X4", b"x")]).await;
    assert_eq!(code(&r.status), Code::IllegalTopic as i32);

    assert_eq!(code(&send(&mut c, vec![message("TopicB", "X5", b"")]).await.status), Code::MessageBodyEmpty as i32);
    assert_eq!(code(&send(&mut c, vec![message("TopicB", "", b"x")]).await.status), Code::IllegalMessageId as i32);
    assert_eq!(code(&send(&mut c, vec![]).await.status), Code::MessageCorrupted as i32);

    let mut group = message("TopicB", "X6", b"x");
    group.system_properties.as_mut().unwrap().message_group = Some("g".repeat(64));
    assert_eq!(code(&send(&mut c, vec![group]).await.status), Code::IllegalMessageGroup as i32);

    // A FIFO message on a NORMAL topic.
    let mut fifo = message("TopicB", "X7", b"x");
    fifo.system_properties.as_mut().unwrap().message_group = Some("g".into());
    assert_eq!(code(&send(&mut c, vec![fifo]).await.status), Code::MessagePropertyConflictWithType as i32);

    // Garbage receipt handle.
    let mut m = message("TopicB", "X8", b"x");
    m.system_properties.as_mut().unwrap().receipt_handle = Some("not-a-handle".into());
    let a = ack(&mut c, "TopicB", "GroupB", &m).await;
    assert_eq!(code(&a.status), Code::InvalidReceiptHandle as i32);
    assert_eq!(a.entries.len(), 1);

    // Invisible duration out of range.
    let r = receive(&mut c, "TopicB", "GroupB", Some(Duration::from_secs(1))).await;
    assert_eq!(r.status.code, Code::IllegalInvisibleTime as i32);
    let r = receive(&mut c, "TopicB", "GroupB", Some(Duration::from_secs(13 * 3600))).await;
    assert_eq!(r.status.code, Code::IllegalInvisibleTime as i32);
    let r = receive(&mut c, "TopicB", "GroupB", None).await;
    assert_eq!(r.status.code, Code::IllegalInvisibleTime as i32);

    // Missing client id.
    let r = c
        .send_message(Request::new(proto::SendMessageRequest { messages: vec![message("TopicB", "X9", b"x")] }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired as i32);

    // An empty EndTransaction names no topic (Apache answers the same).
    let e = c.end_transaction(req(proto::EndTransactionRequest::default())).await.unwrap().into_inner();
    assert_eq!(code(&e.status), Code::IllegalTopic as i32);
    // Unimplemented RPCs say so with the gRPC status.
    let e = c.sync_lite_subscription(req(proto::SyncLiteSubscriptionRequest::default())).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    g.stop().await;
}

#[tokio::test]
async fn unknown_topic_without_auto_create() {
    let g = Gateway::start(|c| c.topics.auto_create_topic_enable = false).await;
    let mut c = g.client().await;
    let r = c
        .query_route(req(proto::QueryRouteRequest { topic: resource("Nope"), endpoints: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::TopicNotFound as i32);
    assert_eq!(code(&send(&mut c, vec![message("Nope", "Y1", b"x")]).await.status), Code::TopicNotFound as i32);
    g.stop().await;
}

#[tokio::test]
async fn telemetry_answers_settings() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    let settings = proto::Settings {
        client_type: Some(proto::ClientType::Producer as i32),
        pub_sub: Some(proto::settings::PubSub::Publishing(proto::Publishing {
            topics: vec![resource("TopicT").unwrap()],
            max_body_size: 0,
            validate_message_type: true,
        })),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::TelemetryCommand {
        status: None,
        command: Some(proto::telemetry_command::Command::Settings(settings)),
    })
    .await
    .unwrap();
    let mut stream = c.telemetry(req(tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let reply = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(code(&reply.status), Code::Ok as i32);
    let Some(proto::telemetry_command::Command::Settings(s)) = reply.command else { panic!("no settings") };
    let Some(proto::settings::PubSub::Publishing(p)) = s.pub_sub else { panic!("no publishing") };
    assert_eq!(p.max_body_size, 4 * 1024 * 1024);
    let policy = s.backoff_policy.unwrap();
    assert!(matches!(policy.strategy, Some(proto::retry_policy::Strategy::ExponentialBackoff(_))));
    drop(tx);
    g.stop().await;
}

#[tokio::test]
async fn restart_keeps_messages_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let short = |c: &mut rmq_gateway::config::Config| c.consumer.min_invisible_time = Duration::from_secs(1);
    let g = Gateway::start_in(dir.path(), short).await;
    let mut c = g.client().await;
    for i in 0..20 {
        send(&mut c, vec![message("TopicP", &format!("P{i}"), format!("{i}").as_bytes())]).await;
    }
    // Receive all, ack a quarter; the rest stays in flight (invisible for 2 s) across the restart.
    let mut delivered = Vec::new();
    while delivered.len() < 20 {
        let r = receive(&mut c, "TopicP", "GroupP", Some(Duration::from_secs(2))).await;
        assert_eq!(r.status.code, Code::Ok as i32, "{:?}", r.status);
        delivered.extend(r.messages);
    }
    let mut acked = std::collections::BTreeSet::new();
    for m in delivered.iter().take(5) {
        assert_eq!(code(&ack(&mut c, "TopicP", "GroupP", m).await.status), Code::Ok as i32);
        acked.insert(m.system_properties.as_ref().unwrap().message_id.clone());
    }
    drop(c);
    g.stop().await;

    let g = Gateway::start_in(dir.path(), short).await;
    let mut c = g.client().await;
    // A handle issued before the restart still acks.
    let held = &delivered[5];
    assert_eq!(code(&ack(&mut c, "TopicP", "GroupP", held).await.status), Code::Ok as i32);
    acked.insert(held.system_properties.as_ref().unwrap().message_id.clone());
    // The others come back once their deadline passed, as their second attempt.
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let r = receive(&mut c, "TopicP", "GroupP", Some(Duration::from_secs(30))).await;
        if r.messages.is_empty() {
            break;
        }
        for m in &r.messages {
            let sp = m.system_properties.as_ref().unwrap();
            let id = sp.message_id.clone();
            assert!(!acked.contains(&id), "acked message {id} delivered again after restart");
            assert_eq!(sp.delivery_attempt, Some(2), "{id}: the attempt count continues across the restart");
            assert_eq!(code(&ack(&mut c, "TopicP", "GroupP", m).await.status), Code::Ok as i32);
            seen.insert(id);
        }
    }
    assert_eq!(seen.len() + acked.len(), 20, "every message is consumed exactly once across the restart");
    g.stop().await;
}

#[tokio::test]
async fn exhausted_messages_go_to_the_dead_letter_queue() {
    let g = Gateway::start(|c| {
        c.consumer.min_invisible_time = Duration::from_secs(1);
        c.consumer.retry_max_times = 1;
    })
    .await;
    let mut c = g.client().await;
    send(&mut c, vec![message("TopicD", "D1", b"poison")]).await;
    for attempt in 1..=2 {
        let r = receive(&mut c, "TopicD", "GroupD", Some(Duration::from_secs(1))).await;
        assert_eq!(r.messages.len(), 1, "attempt {attempt}");
        assert_eq!(r.messages[0].system_properties.as_ref().unwrap().delivery_attempt, Some(attempt));
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Attempts exhausted: not delivered again, but found in %DLQ%GroupD with its origin.
    let r = receive(&mut c, "TopicD", "GroupD", Some(Duration::from_secs(1))).await;
    assert_eq!(r.status.code, Code::MessageNotFound as i32);
    let dlq = receive(&mut c, "%DLQ%GroupD", "DlqReader", Some(Duration::from_secs(30))).await;
    assert_eq!(dlq.messages.len(), 1);
    let sp = dlq.messages[0].system_properties.as_ref().unwrap();
    let origin = sp.dead_letter_queue.as_ref().expect("dead_letter_queue is set");
    assert_eq!((origin.topic.as_str(), origin.message_id.as_str()), ("TopicD", "D1"));
    assert_eq!(&dlq.messages[0].body[..], b"poison");

    // A client can also give up explicitly.
    send(&mut c, vec![message("TopicD", "D2", b"bad")]).await;
    let r = receive(&mut c, "TopicD", "GroupD", Some(Duration::from_secs(30))).await;
    let sp = r.messages[0].system_properties.as_ref().unwrap();
    let forward = proto::ForwardMessageToDeadLetterQueueRequest {
        group: resource("GroupD"),
        topic: resource("TopicD"),
        receipt_handle: sp.receipt_handle.clone().unwrap(),
        message_id: sp.message_id.clone(),
        delivery_attempt: 1,
        max_delivery_attempts: 2,
        lite_topic: None,
    };
    let f = c.forward_message_to_dead_letter_queue(req(forward.clone())).await.unwrap().into_inner();
    assert_eq!(code(&f.status), Code::Ok as i32, "{:?}", f.status);
    // Retrying the call is harmless.
    let f = c.forward_message_to_dead_letter_queue(req(forward)).await.unwrap().into_inner();
    assert_eq!(code(&f.status), Code::Ok as i32);
    let dlq = receive(&mut c, "%DLQ%GroupD", "DlqReader", Some(Duration::from_secs(30))).await;
    assert_eq!(dlq.messages.len(), 1);
    assert_eq!(dlq.messages[0].system_properties.as_ref().unwrap().message_id, "D2");
    g.stop().await;
}

/// Delay, transactional and priority messages over the raw protocol: the fields each one
/// carries on the wire (recall handle, delivery timestamp, message type, priority) and that a
/// scheduled message waits for its time and a half message for its commit. (FIFO, delay and
/// transactions through the official SDKs: `types_e2e`.)
#[tokio::test]
async fn delay_transaction_and_priority_messages_over_the_protocol() {
    let g = Gateway::start(|c| {
        for (name, kind) in [("TopicMixed", "MIXED"), ("TopicPrio", "PRIORITY")] {
            c.topics.create.push(rmq_gateway::config::TopicSpec {
                name: name.into(),
                queue_nums: Some(1),
                message_type: kind.into(),
                durability: "local".into(),
            });
        }
    })
    .await;
    let mut c = g.client().await;
    fn sp(m: &mut proto::Message) -> &mut proto::SystemProperties {
        m.system_properties.as_mut().unwrap()
    }

    // Delay: due in 1.5 s; nothing before, then the message with its delivery timestamp.
    let due_ms = client::now_secs() * 1000 + 1500;
    let mut delay = message("TopicMixed", "DL1", b"later");
    sp(&mut delay).delivery_timestamp =
        Some(prost_types::Timestamp { seconds: due_ms / 1000, nanos: ((due_ms % 1000) * 1_000_000) as i32 });
    let r = send(&mut c, vec![delay]).await;
    assert_eq!(code(&r.status), Code::Ok as i32, "{:?}", r.status);
    assert!(!r.entries[0].recall_handle.is_empty(), "a scheduled message has a recall handle");
    // The long poll (at least consumer.minLongPollingTimeout, 5 s) ends when the timer fires.
    let got = receive(&mut c, "TopicMixed", "GroupTypes", Some(Duration::from_secs(30))).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(now_ms >= due_ms, "received {} ms before its time", due_ms - now_ms);
    assert_eq!(got.messages.len(), 1, "{:?}", got.status);
    let p = got.messages[0].system_properties.as_ref().unwrap();
    assert_eq!((p.message_id.as_str(), p.message_type), ("DL1", proto::MessageType::Delay as i32));
    assert_eq!(p.delivery_timestamp.as_ref().map(|t| t.seconds), Some(due_ms / 1000));
    assert_eq!(got.messages[0].body, b"later".to_vec());

    // Transaction: invisible until EndTransaction COMMIT, which a retry may repeat.
    let mut tx = message("TopicMixed", "TX1", b"half");
    sp(&mut tx).message_type = proto::MessageType::Transaction as i32;
    let r = send(&mut c, vec![tx]).await;
    assert_eq!(code(&r.status), Code::Ok as i32, "{:?}", r.status);
    let transaction_id = r.entries[0].transaction_id.clone();
    let none = receive(&mut c, "TopicMixed", "GroupTypes", Some(Duration::from_secs(30))).await;
    assert!(none.messages.is_empty(), "a half message is invisible (a 5 s long poll got nothing)");
    for _ in 0..2 {
        let end = c
            .end_transaction(req(proto::EndTransactionRequest {
                topic: resource("TopicMixed"),
                message_id: "TX1".into(),
                transaction_id: transaction_id.clone(),
                resolution: proto::TransactionResolution::Commit as i32,
                source: proto::TransactionSource::SourceClient as i32,
                trace_context: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&end.status), Code::Ok as i32, "{:?}", end.status);
    }
    let got = receive(&mut c, "TopicMixed", "GroupTypes", Some(Duration::from_secs(30))).await;
    assert_eq!(got.messages.len(), 1);
    let p = got.messages[0].system_properties.as_ref().unwrap();
    assert_eq!((p.message_id.as_str(), p.message_type), ("TX1", proto::MessageType::Transaction as i32));

    // Priority: the highest first, with its priority on delivery.
    for (id, priority) in [("P1", 1), ("P9", 9), ("P5", 5)] {
        let mut m = message("TopicPrio", id, b"p");
        sp(&mut m).priority = Some(priority);
        sp(&mut m).message_type = proto::MessageType::Priority as i32;
        assert_eq!(code(&send(&mut c, vec![m]).await.status), Code::Ok as i32);
    }
    let got = receive(&mut c, "TopicPrio", "GroupTypes", Some(Duration::from_secs(30))).await;
    let order: Vec<(String, Option<i32>)> = got
        .messages
        .iter()
        .map(|m| m.system_properties.as_ref().map(|p| (p.message_id.clone(), p.priority)).unwrap())
        .collect();
    assert_eq!(order, vec![("P9".into(), Some(9)), ("P5".into(), Some(5)), ("P1".into(), Some(1))]);
    // A NORMAL message on a PRIORITY topic is a type conflict, as Apache answers.
    let plain = send(&mut c, vec![message("TopicPrio", "N1", b"x")]).await;
    assert_eq!(code(&plain.status), Code::MessagePropertyConflictWithType as i32);
    g.stop().await;
}

#[tokio::test]
async fn a_receive_retried_with_the_same_attempt_id_gets_the_same_messages() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    send(&mut c, vec![message("TopicI", "I1", b"one"), message("TopicI", "I2", b"two")]).await;
    // Like the Java PushConsumer: auto renew, an attempt id reused after a lost response.
    let push = |attempt: &'static str| {
        move |r: &mut proto::ReceiveMessageRequest| {
            r.auto_renew = true;
            r.invisible_duration = None;
            r.attempt_id = Some(attempt.into());
        }
    };
    let first = receive_with(&mut c, "TopicI", "GroupI", None, push("attempt-1")).await;
    assert_eq!(first.messages.len(), 2, "{:?}", first.status);
    let handles = |r: &Received| -> Vec<(String, String, Option<i32>)> {
        r.messages
            .iter()
            .map(|m| {
                let sp = m.system_properties.as_ref().unwrap();
                (sp.message_id.clone(), sp.receipt_handle.clone().unwrap(), sp.delivery_attempt)
            })
            .collect()
    };
    let retry = receive_with(&mut c, "TopicI", "GroupI", None, push("attempt-1")).await;
    assert_eq!(handles(&retry), handles(&first), "same messages, same handles, same attempt");
    // A new attempt id gets nothing: both are in flight.
    let other = receive_with(&mut c, "TopicI", "GroupI", None, push("attempt-2")).await;
    assert_eq!(other.status.code, Code::MessageNotFound as i32);
    for m in &first.messages {
        assert_eq!(code(&ack(&mut c, "TopicI", "GroupI", m).await.status), Code::Ok as i32);
    }
    // Acked messages are not replayed, even for the old attempt id.
    let after = receive_with(&mut c, "TopicI", "GroupI", None, push("attempt-1")).await;
    assert_eq!(after.status.code, Code::MessageNotFound as i32);
    g.stop().await;
}

async fn route(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    dialled: Option<(&str, i32)>,
) -> proto::QueryRouteResponse {
    let endpoints = dialled.map(|(host, port)| proto::Endpoints {
        scheme: proto::AddressScheme::DomainName as i32,
        addresses: vec![proto::Address { host: host.into(), port }],
    });
    c.query_route(req(proto::QueryRouteRequest { topic: resource(topic), endpoints })).await.unwrap().into_inner()
}

#[tokio::test]
async fn query_route_never_creates_topics() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    // A consumer's typo: a route comes back (auto-create is on) but nothing is created.
    let r = route(&mut c, "TypoTopic", None).await;
    assert_eq!(code(&r.status), Code::Ok as i32);
    let r = receive(&mut c, "TypoTopic", "GroupTypo", Some(Duration::from_secs(30))).await;
    assert_eq!(r.status.code, Code::TopicNotFound as i32, "{:?}", r.status);
    let (status, body) = client::http(g.addrs.http, "GET", "/api/v1/topics/TypoTopic", None).await;
    assert_eq!(status, 404, "{body}");
    // A FIFO producer's first send creates a FIFO topic (a consumer did not make it NORMAL).
    let mut fifo = message("TypoTopic", "F1", b"x");
    fifo.system_properties.as_mut().unwrap().message_group = Some("order-1".into());
    assert_eq!(code(&send(&mut c, vec![fifo]).await.status), Code::Ok as i32);
    let r = route(&mut c, "TypoTopic", None).await;
    assert_eq!(r.message_queues[0].accept_message_types, vec![proto::MessageType::Fifo as i32]);
    let (status, body) = client::http(g.addrs.http, "GET", "/api/v1/topics/TypoTopic", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"FIFO\""), "{body}");
    g.stop().await;
}

#[tokio::test]
async fn route_endpoints_are_the_address_the_connection_arrived_on() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    // What the client says it dialled (a name behind a port forward, say) is not echoed.
    let r = route(&mut c, "TopicE", Some(("gateway.example", 9999))).await;
    let e = r.message_queues[0].broker.as_ref().unwrap().endpoints.as_ref().unwrap();
    assert_eq!(e.scheme, proto::AddressScheme::IPv4 as i32);
    assert_eq!(e.addresses, vec![proto::Address { host: "127.0.0.1".into(), port: g.addrs.grpc.port() as i32 }]);
    g.stop().await;

    // A configured advertised address wins.
    let g = Gateway::start(|c| c.server.advertised_address = "mq.example.com:18081".into()).await;
    let mut c = g.client().await;
    let r = route(&mut c, "TopicE", Some(("127.0.0.1", 1))).await;
    let e = r.message_queues[0].broker.as_ref().unwrap().endpoints.as_ref().unwrap();
    assert_eq!(e.scheme, proto::AddressScheme::DomainName as i32);
    assert_eq!(e.addresses, vec![proto::Address { host: "mq.example.com".into(), port: 18081 }]);
    g.stop().await;
}

/// Opens a Telemetry stream and sends `settings` first.
async fn telemetry(
    c: &mut MessagingServiceClient<Channel>,
    settings: proto::Settings,
) -> (tokio::sync::mpsc::Sender<proto::TelemetryCommand>, tonic::Streaming<proto::TelemetryCommand>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first =
        proto::TelemetryCommand { status: None, command: Some(proto::telemetry_command::Command::Settings(settings)) };
    tx.send(first).await.unwrap();
    let stream = c.telemetry(req(tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    (tx, stream)
}

fn subscription(group: &str, topic: &str, filter: proto::FilterType, expression: &str) -> proto::Settings {
    proto::Settings {
        client_type: Some(proto::ClientType::PushConsumer as i32),
        pub_sub: Some(proto::settings::PubSub::Subscription(proto::Subscription {
            group: resource(group),
            subscriptions: vec![proto::SubscriptionEntry {
                topic: resource(topic),
                expression: Some(proto::FilterExpression { r#type: filter as i32, expression: expression.into() }),
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn settings_that_cannot_be_accepted_fail_the_stream_with_the_reason() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    let cases = [
        (proto::Settings::default(), tonic::Code::InvalidArgument, "neither publishing nor subscription"),
        (
            subscription("bad group!", "TopicS", proto::FilterType::Tag, "*"),
            tonic::Code::InvalidArgument,
            "ILLEGAL_CONSUMER_GROUP",
        ),
        (
            subscription("GroupS", "TopicS", proto::FilterType::Tag, "||"),
            tonic::Code::InvalidArgument,
            "ILLEGAL_FILTER_EXPRESSION",
        ),
        (
            subscription("GroupS", "TopicS", proto::FilterType::Sql, "a > 'x'"),
            tonic::Code::InvalidArgument,
            "ILLEGAL_FILTER_EXPRESSION (40010): subscription to `TopicS`: invalid SQL92 filter expression \"a > 'x'\": \
             at column 5: `'x'` cannot be compared with >",
        ),
    ];
    for (settings, want, says) in cases {
        let (_tx, mut stream) = telemetry(&mut c, settings).await;
        let got = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("answered in time");
        let e = got.expect_err("the stream fails");
        assert_eq!(e.code(), want, "{e:?}");
        assert!(e.message().contains(says), "{:?} should say {says}", e.message());
    }
    // Valid TAG and SQL92 subscriptions are answered with settings; so is a SimpleConsumer's
    // bad SQL92 expression (its receives say what is wrong).
    let mut simple = subscription("GroupS", "TopicS", proto::FilterType::Sql, "a >");
    simple.client_type = Some(proto::ClientType::SimpleConsumer as i32);
    for settings in [
        subscription("GroupS", "TopicS", proto::FilterType::Tag, "a||b"),
        subscription("GroupS", "TopicS", proto::FilterType::Sql, "a > 1 OR TAGS IS NULL"),
        simple,
    ] {
        let (_tx, mut stream) = telemetry(&mut c, settings.clone()).await;
        let reply = stream.message().await.unwrap().unwrap();
        assert_eq!(code(&reply.status), Code::Ok as i32, "{settings:?}");
    }
    g.stop().await;
}

/// ReceiveMessage with a SQL92 filter gets the matching messages only (the others are
/// acknowledged for the group); a bad expression gets ILLEGAL_FILTER_EXPRESSION saying where.
#[tokio::test]
async fn sql92_filters_on_receive() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    let sql = |expression: &str| {
        let expression = expression.to_string();
        move |r: &mut proto::ReceiveMessageRequest| {
            r.filter_expression = Some(proto::FilterExpression { r#type: proto::FilterType::Sql as i32, expression });
        }
    };
    let mut msgs = Vec::new();
    for (i, price) in ["5", "50", "500", "x"].iter().enumerate() {
        let mut m = message("TopicSql", &format!("sql-{i}"), format!("body-{i}").as_bytes());
        m.user_properties.insert("price".into(), price.to_string());
        msgs.push(m);
    }
    msgs.push(message("TopicSql", "sql-none", b"no price"));
    assert_eq!(code(&send(&mut c, msgs).await.status), Code::Ok as i32);
    let invisible = Some(Duration::from_secs(30));
    let got = receive_with(&mut c, "TopicSql", "GroupSql", invisible, sql("price BETWEEN 10 AND 1000")).await;
    assert_eq!(got.status.code, Code::Ok as i32, "{:?}", got.status);
    let mut bodies: Vec<_> = got.messages.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["body-1", "body-2"]);
    // A missing property: IS NULL matches, a comparison does not.
    let got = receive_with(&mut c, "TopicSql", "GroupSqlNull", invisible, sql("price IS NULL")).await;
    assert_eq!(got.messages.iter().map(|m| m.body.to_vec()).collect::<Vec<_>>(), vec![b"no price".to_vec()]);

    for (expression, says) in [
        ("price > ", "at column 9: expected a value, a property or `(`, found the end of the expression"),
        ("price = 1 AND (tag = 'a' OR)", "at column 28: expected a value, a property or `(`, found `)`"),
        ("price IN (1, 2)", "at column 11: expected a string in single quotes after `(`"),
        ("", "at column 1: the expression is empty"),
    ] {
        let got = receive_with(&mut c, "TopicSql", "GroupSqlBad", invisible, sql(expression)).await;
        assert_eq!(got.status.code, Code::IllegalFilterExpression as i32, "{expression}: {:?}", got.status);
        assert!(got.status.message.contains(says), "{expression}: {:?} should say {says}", got.status.message);
        assert!(got.messages.is_empty());
    }
    g.stop().await;
}

#[tokio::test]
async fn stack_trace_and_verify_message_are_relayed_to_the_client() {
    use proto::telemetry_command::Command;
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    send(&mut c, vec![message("TopicV", "V1", b"verify me")]).await;
    let (tx, mut stream) = telemetry(&mut c, subscription("GroupV", "TopicV", proto::FilterType::Tag, "*")).await;
    assert_eq!(code(&stream.message().await.unwrap().unwrap().status), Code::Ok as i32);
    let (status, body) = client::http(g.addrs.http, "GET", "/api/v1/clients", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"clientId\":\"integration-test@1\"") && body.contains("\"connected\":true"), "{body}");

    let http = g.addrs.http;
    let asked = tokio::spawn(async move {
        client::http(http, "POST", "/api/v1/clients/integration-test@1/stack-trace", None).await
    });
    let cmd = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let Some(Command::PrintThreadStackTraceCommand(p)) = cmd.command else {
        panic!("expected a stack trace command: {cmd:?}")
    };
    let answer = proto::ThreadStackTrace { nonce: p.nonce, thread_stack_trace: Some("\"main\" RUNNABLE".into()) };
    tx.send(proto::TelemetryCommand {
        status: Some(proto::Status { code: Code::Ok as i32, message: "OK".into() }),
        command: Some(Command::ThreadStackTrace(answer)),
    })
    .await
    .unwrap();
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("RUNNABLE"), "{body}");

    let asked = tokio::spawn(async move {
        let body = r#"{"topic":"TopicV","messageId":"V1"}"#;
        client::http(http, "POST", "/api/v1/clients/integration-test@1/verify-message", Some(body)).await
    });
    let cmd = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let Some(Command::VerifyMessageCommand(v)) = cmd.command else { panic!("expected a verify command: {cmd:?}") };
    let m = v.message.unwrap();
    assert_eq!((m.system_properties.unwrap().message_id.as_str(), &m.body[..]), ("V1", &b"verify me"[..]));
    let failed = proto::Status { code: Code::FailedToConsumeMessage as i32, message: "listener failed".into() };
    tx.send(proto::TelemetryCommand {
        status: Some(failed),
        command: Some(Command::VerifyMessageResult(proto::VerifyMessageResult { nonce: v.nonce })),
    })
    .await
    .unwrap();
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("FAILED_TO_CONSUME"), "{body}");

    // Unknown clients and messages are 404s.
    let (status, _) = client::http(http, "POST", "/api/v1/clients/nobody/stack-trace", None).await;
    assert_eq!(status, 404);
    let body = r#"{"topic":"TopicV","messageId":"nope"}"#;
    let (status, _) = client::http(http, "POST", "/api/v1/clients/integration-test@1/verify-message", Some(body)).await;
    assert_eq!(status, 404);
    drop(tx);
    g.stop().await;
}

async fn assignment(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
) -> proto::QueryAssignmentResponse {
    c.query_assignment(req(proto::QueryAssignmentRequest {
        topic: resource(topic),
        group: resource(group),
        endpoints: None,
    }))
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn consumer_groups_are_configured_through_config_and_the_admin_api() {
    let g = Gateway::start(|c| {
        c.consumer.groups.push(rmq_gateway::config::GroupSpec {
            name: "OrderlyFromConfig".into(),
            consume_message_orderly: true,
            retry_max_times: Some(2),
            retry_backoff: None,
            message_model: Default::default(),
        });
    })
    .await;
    let mut c = g.client().await;
    send(&mut c, vec![message("TopicG", "G1", b"x")]).await;

    // From the config file: orderly, 3 attempts, told to the consumer in Settings.
    let (_tx, mut stream) =
        telemetry(&mut c, subscription("OrderlyFromConfig", "TopicG", proto::FilterType::Tag, "*")).await;
    let reply = stream.message().await.unwrap().unwrap();
    let Some(proto::telemetry_command::Command::Settings(s)) = reply.command else { panic!("no settings") };
    let Some(proto::settings::PubSub::Subscription(sub)) = s.pub_sub else { panic!("no subscription") };
    assert_eq!(sub.fifo, Some(true));
    assert_eq!(s.backoff_policy.unwrap().max_attempts, 3);
    // Orderly groups get one assignment per queue, like Apache.
    assert_eq!(assignment(&mut c, "TopicG", "OrderlyFromConfig").await.assignments.len(), 8);

    // Through the admin API, like `mqadmin updateSubGroup -o true -r 5`.
    assert_eq!(assignment(&mut c, "TopicG", "Later").await.assignments.len(), 1, "new groups are not orderly");
    let (status, body) = client::http(
        g.addrs.http,
        "PUT",
        "/api/v1/groups/Later",
        Some(r#"{"consumeMessageOrderly":true,"retryMaxTimes":5,"retryBackoff":"2s 4s"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(assignment(&mut c, "TopicG", "Later").await.assignments.len(), 8);
    let (_, body) = client::http(g.addrs.http, "GET", "/api/v1/groups/Later", None).await;
    assert!(body.contains(r#""consumeMessageOrderly":true"#) && body.contains(r#""retryMaxTimes":5"#), "{body}");
    assert!(body.contains(r#""retryBackoff":"2s 4s""#), "{body}");
    let (status, _) = client::http(g.addrs.http, "PUT", "/api/v1/groups/bad%20group", Some("{}")).await;
    assert_eq!(status, 400);
    g.stop().await;

    // Without autoCreateSubscriptionGroup an unknown group is refused.
    let g = Gateway::start(|c| c.consumer.auto_create_subscription_group = false).await;
    let mut c = g.client().await;
    send(&mut c, vec![message("TopicG", "G1", b"x")]).await;
    let r = receive(&mut c, "TopicG", "NoSuchGroup", Some(Duration::from_secs(30))).await;
    assert_eq!(r.status.code, Code::ConsumerGroupNotFound as i32, "{:?}", r.status);
    g.stop().await;
}

// ------------------------------------------------------------------ pull consumers and offsets

/// What one PullMessage stream carried, in order.
struct Pulled {
    status: proto::Status,
    messages: Vec<proto::Message>,
    next_offset: Option<i64>,
}

fn pull_request(
    topic: &str,
    group: &str,
    queue: i32,
    offset: i64,
    tags: &str,
    poll_ms: i32,
) -> proto::PullMessageRequest {
    proto::PullMessageRequest {
        group: resource(group),
        message_queue: Some(proto::MessageQueue { topic: resource(topic), id: queue, ..Default::default() }),
        offset,
        batch_size: 32,
        filter_expression: Some(proto::FilterExpression {
            r#type: proto::FilterType::Tag as i32,
            expression: tags.into(),
        }),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: i64::from(poll_ms / 1000),
            nanos: (poll_ms % 1000) * 1_000_000,
        }),
    }
}

/// Pulls, checking the stream's shape: one status first, then messages, then at most one
/// next_offset, last.
async fn pull(c: &mut MessagingServiceClient<Channel>, r: proto::PullMessageRequest) -> Pulled {
    let mut request = req(r);
    request.set_timeout(Duration::from_secs(30));
    let mut stream = c.pull_message(request).await.unwrap().into_inner();
    let (mut status, mut messages, mut next_offset) = (None, Vec::new(), None);
    while let Some(frame) = stream.message().await.unwrap() {
        assert!(next_offset.is_none(), "next_offset is the last frame");
        match frame.content.expect("every frame has content") {
            proto::pull_message_response::Content::Status(s) => {
                assert!(status.is_none(), "one status, first");
                status = Some(s);
            }
            proto::pull_message_response::Content::Message(m) => {
                assert!(status.is_some(), "the status comes before the messages");
                messages.push(m);
            }
            proto::pull_message_response::Content::NextOffset(o) => next_offset = Some(o),
        }
    }
    Pulled { status: status.expect("a status"), messages, next_offset }
}

fn offsets_of(p: &Pulled) -> Vec<i64> {
    p.messages.iter().map(|m| m.system_properties.as_ref().and_then(|s| s.queue_offset).unwrap_or(-1)).collect()
}

fn mq(topic: &str, queue: i32) -> Option<proto::MessageQueue> {
    Some(proto::MessageQueue { topic: resource(topic), id: queue, ..Default::default() })
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

async fn query_offset(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    queue: i32,
    policy: proto::QueryOffsetPolicy,
    at: Option<i64>,
) -> proto::QueryOffsetResponse {
    let r = proto::QueryOffsetRequest {
        message_queue: mq(topic, queue),
        query_offset_policy: policy as i32,
        timestamp: at.map(timestamp),
    };
    c.query_offset(req(r)).await.unwrap().into_inner()
}

async fn get_offset(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    queue: i32,
) -> proto::GetOffsetResponse {
    let r = proto::GetOffsetRequest { group: resource(group), message_queue: mq(topic, queue) };
    c.get_offset(req(r)).await.unwrap().into_inner()
}

async fn update_offset(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    queue: i32,
    offset: i64,
) -> proto::UpdateOffsetResponse {
    let r = proto::UpdateOffsetRequest { group: resource(group), message_queue: mq(topic, queue), offset };
    c.update_offset(req(r)).await.unwrap().into_inner()
}

/// No official SDK release has a pull consumer (rocketmq-client-java 5.2.0 and the Go SDK
/// 5.1.4 do not call these RPCs), so they are tested here: PullMessage from the beginning, with
/// a tag filter, at the end (long poll, woken by a matching send), out of range; UpdateOffset,
/// GetOffset and QueryOffset with their error codes; the committed offset is the group's POP
/// offset too.
#[tokio::test]
async fn pull_consumer_rpcs() {
    let g = Gateway::start(|c| c.consumer.min_long_polling_timeout = Duration::ZERO).await;
    let mut c = g.client().await;
    let (status, body) =
        client::http(g.addrs.http, "PUT", "/api/v1/topics/TopicP", Some(r#"{"queueNums":1,"messageType":"NORMAL"}"#))
            .await;
    assert_eq!(status, 200, "{body}");
    for (i, tag) in ["TagA", "TagB", "TagA"].iter().enumerate() {
        let r = send(&mut c, vec![client::tagged_message("TopicP", &format!("P{i}"), tag, vec![b'p'; 3])]).await;
        assert_eq!(code(&r.status), Code::Ok as i32, "{:?}", r.status);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let middle = now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    send(&mut c, vec![client::tagged_message("TopicP", "P3", "TagC", b"late".to_vec())]).await;

    // From the beginning: everything, no receipt handles, next_offset after the last.
    let all = pull(&mut c, pull_request("TopicP", "GroupP", 0, 0, "*", 0)).await;
    assert_eq!(all.status.code, Code::Ok as i32, "{:?}", all.status);
    assert_eq!((offsets_of(&all), all.next_offset), (vec![0, 1, 2, 3], Some(4)));
    for m in &all.messages {
        let sp = m.system_properties.as_ref().unwrap();
        assert_eq!(sp.receipt_handle, None, "pulled messages are not acked");
        assert_eq!((sp.queue_id, sp.delivery_attempt), (0, Some(1)));
    }
    let mut two = pull_request("TopicP", "GroupP", 0, 1, "*", 0);
    two.batch_size = 2;
    let two = pull(&mut c, two).await;
    assert_eq!((offsets_of(&two), two.next_offset), (vec![1, 2], Some(3)));
    // A tag filter; next_offset skips what it rejected.
    let b = pull(&mut c, pull_request("TopicP", "GroupP", 0, 0, "TagB", 0)).await;
    assert_eq!((b.status.code, offsets_of(&b), b.next_offset), (Code::Ok as i32, vec![1], Some(4)));
    let none = pull(&mut c, pull_request("TopicP", "GroupP", 0, 2, "TagB", 0)).await;
    assert_eq!((none.status.code, none.messages.len(), none.next_offset), (Code::MessageNotFound as i32, 0, Some(4)));
    // Out of range: ILLEGAL_OFFSET with the nearest valid offset.
    for (offset, nearest) in [(-3, 0), (5, 4), (i64::MAX, 4)] {
        let p = pull(&mut c, pull_request("TopicP", "GroupP", 0, offset, "*", 0)).await;
        assert_eq!((p.status.code, p.next_offset), (Code::IllegalOffset as i32, Some(nearest)), "offset {offset}");
    }
    // Bad requests: only a status.
    let cases: [(proto::PullMessageRequest, Code); 5] = [
        (pull_request("TopicP", "GroupP", 1, 0, "*", 0), Code::BadRequest),
        (pull_request("TopicP", "GroupP", -1, 0, "*", 0), Code::BadRequest),
        (pull_request("NoTopic", "GroupP", 0, 0, "*", 0), Code::TopicNotFound),
        (pull_request("TopicP", "bad group!", 0, 0, "*", 0), Code::IllegalConsumerGroup),
        (
            proto::PullMessageRequest { batch_size: -1, ..pull_request("TopicP", "GroupP", 0, 0, "*", 0) },
            Code::BadRequest,
        ),
    ];
    for (r, want) in cases {
        let p = pull(&mut c, r).await;
        assert_eq!((p.status.code, p.next_offset), (want as i32, None), "{:?}", p.status);
    }
    let p = pull(
        &mut c,
        proto::PullMessageRequest { message_queue: None, ..pull_request("TopicP", "GroupP", 0, 0, "*", 0) },
    )
    .await;
    assert_eq!(p.status.code, Code::BadRequest as i32);
    let mut e =
        c.pull_message(Request::new(pull_request("TopicP", "GroupP", 0, 0, "*", 0))).await.unwrap().into_inner();
    let first = e.message().await.unwrap().unwrap();
    assert!(
        matches!(first.content, Some(proto::pull_message_response::Content::Status(s)) if s.code == Code::ClientIdRequired as i32)
    );

    // At the end: a long poll that a send the filter rejects does not end, a matching one does.
    let mut other = g.client().await;
    let started = std::time::Instant::now();
    let waiting =
        tokio::spawn(async move { pull(&mut other, pull_request("TopicP", "GroupP", 0, 4, "TagB", 15_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut c, vec![client::tagged_message("TopicP", "P4", "TagA", b"x".to_vec())]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a message the filter rejects does not answer the pull");
    send(&mut c, vec![client::tagged_message("TopicP", "P5", "TagB", b"y".to_vec())]).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the send wakes the pull").unwrap();
    eprintln!(
        "[protocol] pull long poll answered {} ms after it started (send at ~600 ms)",
        started.elapsed().as_millis()
    );
    assert_eq!((woken.status.code, offsets_of(&woken), woken.next_offset), (Code::Ok as i32, vec![5], Some(6)));

    // QueryOffset.
    use proto::QueryOffsetPolicy::{Beginning, End, Timestamp};
    let q = |r: proto::QueryOffsetResponse| (r.status.map(|s| s.code).unwrap_or(-1), r.offset);
    let ok = Code::Ok as i32;
    assert_eq!(q(query_offset(&mut c, "TopicP", 0, Beginning, None).await), (ok, 0));
    assert_eq!(q(query_offset(&mut c, "TopicP", 0, End, None).await), (ok, 6));
    assert_eq!(q(query_offset(&mut c, "TopicP", 0, Timestamp, Some(middle)).await), (ok, 3));
    assert_eq!(q(query_offset(&mut c, "TopicP", 0, Timestamp, Some(0)).await), (ok, 0));
    assert_eq!(q(query_offset(&mut c, "TopicP", 0, Timestamp, Some(now_ms() + 3_600_000)).await), (ok, 6));
    assert_eq!(q(query_offset(&mut c, "TopicP", 0, Timestamp, None).await).0, Code::BadRequest as i32);
    assert_eq!(q(query_offset(&mut c, "TopicP", 3, End, None).await).0, Code::BadRequest as i32);
    assert_eq!(q(query_offset(&mut c, "NoTopic", 0, End, None).await).0, Code::TopicNotFound as i32);
    let bad_policy =
        proto::QueryOffsetRequest { message_queue: mq("TopicP", 0), query_offset_policy: 7, timestamp: None };
    let r = c.query_offset(req(bad_policy)).await.unwrap().into_inner();
    assert_eq!(q(r).0, Code::BadRequest as i32);

    // GetOffset / UpdateOffset: nothing committed yet (pulls commit nothing), then 2.
    let got = get_offset(&mut c, "TopicP", "GroupP", 0).await;
    assert_eq!(code(&got.status), Code::OffsetNotFound as i32, "{:?}", got.status);
    assert_eq!(code(&update_offset(&mut c, "TopicP", "GroupP", 0, 2).await.status), ok);
    let got = get_offset(&mut c, "TopicP", "GroupP", 0).await;
    assert_eq!((code(&got.status), got.offset), (ok, 2));
    for (topic, queue, offset, want) in [
        ("TopicP", 0, -1, Code::IllegalOffset),
        ("TopicP", 0, 7, Code::IllegalOffset),
        ("TopicP", 9, 0, Code::BadRequest),
        ("NoTopic", 0, 0, Code::TopicNotFound),
    ] {
        let r = update_offset(&mut c, topic, "GroupP", queue, offset).await;
        assert_eq!(code(&r.status), want as i32, "{topic} {queue} {offset}: {:?}", r.status);
    }
    assert_eq!(code(&get_offset(&mut c, "TopicP", "GroupP", 9).await.status), Code::BadRequest as i32);
    assert_eq!(code(&get_offset(&mut c, "TopicP", "bad group!", 0).await.status), Code::IllegalConsumerGroup as i32);

    // One offset per group and queue: the group's POP consumers go on from the committed one.
    let r = receive(&mut c, "TopicP", "GroupP", Some(Duration::from_secs(30))).await;
    let popped: Vec<i64> =
        r.messages.iter().map(|m| m.system_properties.as_ref().unwrap().queue_offset.unwrap()).collect();
    assert_eq!(popped, vec![2, 3, 4, 5]);
    for m in &r.messages {
        assert_eq!(code(&ack(&mut c, "TopicP", "GroupP", m).await.status), ok);
    }
    let got = get_offset(&mut c, "TopicP", "GroupP", 0).await;
    assert_eq!((code(&got.status), got.offset), (ok, 6));
    let (status, body) = client::http(g.addrs.http, "GET", "/api/v1/groups/GroupP/offsets?topic=TopicP", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""consumerOffset":6"#) && body.contains(r#""lag":0"#), "{body}");
    g.stop().await;
}

/// `POST /api/v1/groups/{g}/reset-offset` and `GET /api/v1/groups/{g}/offsets`: by time, to
/// the earliest and latest message, to given offsets; the answer per queue; a receive waiting
/// in a long poll gets the messages at once; 404 and 400 for what is unknown or malformed.
#[tokio::test]
async fn reset_offset_admin_api() {
    let g = Gateway::start(|_| {}).await;
    let http = g.addrs.http;
    let mut c = g.client().await;
    let (status, body) =
        client::http(http, "PUT", "/api/v1/topics/TopicO", Some(r#"{"queueNums":1,"messageType":"NORMAL"}"#)).await;
    assert_eq!(status, 200, "{body}");
    for i in 0..4 {
        send(&mut c, vec![message("TopicO", &format!("O{i}"), b"old")]).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let middle = now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    for i in 4..6 {
        send(&mut c, vec![message("TopicO", &format!("O{i}"), b"new")]).await;
    }
    let mut seen = 0;
    while seen < 6 {
        let r = receive(&mut c, "TopicO", "GroupO", Some(Duration::from_secs(30))).await;
        for m in &r.messages {
            assert_eq!(code(&ack(&mut c, "TopicO", "GroupO", m).await.status), Code::Ok as i32);
        }
        seen += r.messages.len();
    }
    let (status, body) = client::http(http, "GET", "/api/v1/groups/GroupO/offsets", None).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["topics"][0]["topic"], "TopicO", "{body}");
    assert_eq!(
        (v["topics"][0]["queues"][0]["consumerOffset"].as_i64(), v["topics"][0]["lag"].as_i64()),
        (Some(6), Some(0))
    );

    // A consumer waiting in a long poll; the reset by time wakes it with the two newer messages.
    let mut other = g.client().await;
    let waiting = tokio::spawn(async move {
        let mut r = client::receive_request("TopicO", "GroupO", Some(Duration::from_secs(30)), Duration::from_secs(15));
        r.batch_size = 32;
        let mut request = req(r);
        request.set_timeout(Duration::from_secs(30));
        let mut stream = other.receive_message(request).await.unwrap().into_inner();
        let mut ids = Vec::new();
        while let Some(frame) = stream.message().await.unwrap() {
            if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
                ids.push(m.system_properties.unwrap().message_id);
            }
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = "/api/v1/groups/GroupO/reset-offset";
    let body = format!(r#"{{"topic":"TopicO","timestamp":{middle}}}"#);
    let started = std::time::Instant::now();
    let (status, answer) = client::http(http, "POST", path, Some(&body)).await;
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let q0 = &v["queues"][0];
    assert_eq!(
        (q0["queueId"].as_i64(), q0["previousOffset"].as_i64(), q0["offset"].as_i64(), q0["maxOffset"].as_i64()),
        (Some(0), Some(6), Some(4), Some(6)),
        "{answer}"
    );
    let ids =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the reset wakes the receive").unwrap();
    eprintln!(
        "[protocol] a waiting receive got the reset's messages {} ms after the reset",
        started.elapsed().as_millis()
    );
    assert_eq!(ids, vec!["O4", "O5"]);

    let reset = |body: &'static str| async move {
        let (status, answer) = client::http(http, "POST", path, Some(body)).await;
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        (status, v["queues"][0]["offset"].as_i64(), answer)
    };
    let (status, offset, answer) = reset(r#"{"topic":"TopicO","timestamp":"earliest"}"#).await;
    assert_eq!((status, offset), (200, Some(0)), "{answer}");
    assert_eq!(reset(r#"{"topic":"TopicO","timestamp":"latest"}"#).await.1, Some(6));
    assert_eq!(reset(r#"{"topic":"TopicO","offsets":{"0":5}}"#).await.1, Some(5));
    assert_eq!(reset(r#"{"topic":"TopicO","timestamp":"2001-01-01T00:00:00Z"}"#).await.1, Some(0));
    let r = receive(&mut c, "TopicO", "GroupO", Some(Duration::from_secs(30))).await;
    assert_eq!(r.messages.len(), 6, "everything again after the reset to 2001");

    for (body, want) in [
        (r#"{"topic":"TopicO","timestamp":"yesterday"}"#, 400),
        (r#"{"topic":"TopicO","timestamp":-5}"#, 400),
        (r#"{"topic":"TopicO"}"#, 400),
        (r#"{"topic":"TopicO","timestamp":1,"offsets":{"0":1}}"#, 400),
        (r#"{"topic":"TopicO","offsets":{"7":1}}"#, 400),
        (r#"{"topic":"TopicO","offsets":{"zero":1}}"#, 400),
        (r#"{"topic":"TopicO","offsets":{"0":99}}"#, 400),
        (r#"{"topic":"TopicO","timestamp":1,"extra":true}"#, 400),
        (r#"not json"#, 400),
        (r#"{"topic":"NoTopic","timestamp":"earliest"}"#, 404),
    ] {
        let (status, _, answer) = reset(body).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer.contains("error"), "{body}: {answer}");
    }
    let (status, _) =
        client::http(http, "POST", "/api/v1/groups/NoGroup/reset-offset", Some(r#"{"topic":"TopicO","timestamp":0}"#))
            .await;
    assert_eq!(status, 404);
    let (status, _) = client::http(http, "GET", "/api/v1/groups/NoGroup/offsets", None).await;
    assert_eq!(status, 404);
    let (status, _) = client::http(http, "GET", "/api/v1/groups/GroupO/offsets?topic=NoTopic", None).await;
    assert_eq!(status, 404);
    let (status, _) = client::http(http, "GET", "/api/v1/groups/GroupO/offsets?queue=1", None).await;
    assert_eq!(status, 400);
    g.stop().await;
}

// ------------------------------------------------------------------------------- namespaces

/// A resource in namespace `ns` ("" for none).
fn ns_resource(ns: &str, name: &str) -> Option<proto::Resource> {
    Some(proto::Resource { resource_namespace: ns.into(), name: name.into() })
}

/// A request with the `x-mq-namespace` header (if `header` is not empty).
fn req_ns<T>(msg: T, header: &str) -> Request<T> {
    let mut r = req(msg);
    if !header.is_empty() {
        r.metadata_mut().insert("x-mq-namespace", header.parse().unwrap());
    }
    r
}

/// A message for topic `name` in namespace `ns` (resource field).
fn ns_message(ns: &str, topic: &str, id: &str, body: &[u8]) -> proto::Message {
    let mut m = message(topic, id, body);
    m.topic = ns_resource(ns, topic);
    m
}

async fn ns_send(c: &mut MessagingServiceClient<Channel>, header: &str, m: proto::Message) -> proto::Status {
    let r = c.send_message(req_ns(proto::SendMessageRequest { messages: vec![m] }, header)).await.unwrap();
    r.into_inner().status.unwrap()
}

/// Receives (1 s long poll) with the topic and group in namespace `ns`, plus the `header`.
async fn ns_receive(
    c: &mut MessagingServiceClient<Channel>,
    (ns, header): (&str, &str),
    topic: &str,
    group: &str,
) -> Received {
    let mut r = client::receive_request(topic, group, Some(Duration::from_secs(30)), Duration::from_secs(1));
    r.group = ns_resource(ns, group);
    r.message_queue.as_mut().unwrap().topic = ns_resource(ns, topic);
    let mut request = req_ns(r, header);
    request.set_timeout(Duration::from_secs(10));
    let mut stream = c.receive_message(request).await.unwrap().into_inner();
    let (mut status, mut messages) = (None, Vec::new());
    while let Some(frame) = stream.message().await.unwrap() {
        match frame.content.expect("every frame has content") {
            proto::receive_message_response::Content::Status(s) => status = Some(s),
            proto::receive_message_response::Content::Message(m) => messages.push(m),
            proto::receive_message_response::Content::DeliveryTimestamp(_) => {}
        }
    }
    Received { status: status.expect("stream has a status"), messages }
}

fn bodies(r: &Received) -> Vec<String> {
    let mut v: Vec<String> = r.messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    v.sort();
    v
}

/// Settings of a subscription in namespace `ns`.
fn ns_subscription(ns: &str, group: &str, topic: &str) -> proto::Settings {
    let mut s = subscription(group, topic, proto::FilterType::Tag, "*");
    if let Some(proto::settings::PubSub::Subscription(sub)) = s.pub_sub.as_mut() {
        sub.group = ns_resource(ns, group);
        sub.subscriptions[0].topic = ns_resource(ns, topic);
    }
    s
}

/// The Settings reply of a subscription: (fifo, max attempts).
async fn ns_settings(c: &mut MessagingServiceClient<Channel>, ns: &str, group: &str, topic: &str) -> (bool, i32) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let settings = proto::telemetry_command::Command::Settings(ns_subscription(ns, group, topic));
    tx.send(proto::TelemetryCommand { status: None, command: Some(settings) }).await.unwrap();
    let mut stream =
        c.telemetry(req_ns(tokio_stream::wrappers::ReceiverStream::new(rx), ns)).await.unwrap().into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(proto::telemetry_command::Command::Settings(s)) = reply.command else { panic!("no settings: {reply:?}") };
    let Some(proto::settings::PubSub::Subscription(sub)) = s.pub_sub else { panic!("no subscription") };
    // The subscription comes back as the client sent it (namespace included).
    assert_eq!(sub.group, ns_resource(ns, group));
    (sub.fifo.unwrap_or_default(), s.backoff_policy.unwrap().max_attempts)
}

/// The same topic and group names in namespaces A, B and none are three separate topics and
/// groups: routes, sends, receives, acks and group configuration never cross.
#[tokio::test]
async fn namespaces_isolate_topics_and_groups() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    for (ns, n) in [("A", 3), ("B", 2), ("", 1)] {
        for i in 0..n {
            let body = format!("{}-{i}", if ns.is_empty() { "none" } else { ns });
            let s = ns_send(&mut c, ns, ns_message(ns, "Orders", &format!("{ns}ID{i}"), body.as_bytes())).await;
            assert_eq!(s.code, Code::Ok as i32, "{s:?}");
        }
    }
    // Routes echo the namespace.
    let r = c
        .query_route(req_ns(proto::QueryRouteRequest { topic: ns_resource("A", "Orders"), endpoints: None }, "A"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok as i32);
    assert!(r.message_queues.iter().all(|q| q.topic == ns_resource("A", "Orders")), "{:?}", r.message_queues[0]);

    // Each namespace's consumer of group `Billing` gets exactly its namespace's messages.
    let want = [("A", vec!["A-0", "A-1", "A-2"]), ("B", vec!["B-0", "B-1"]), ("", vec!["none-0"])];
    let mut held = Vec::new();
    for (ns, want) in &want {
        let got = ns_receive(&mut c, (ns, ns), "Orders", "Billing").await;
        assert_eq!(bodies(&got), *want, "namespace {ns:?}: {:?}", got.status);
        for m in &got.messages {
            assert_eq!(m.topic, ns_resource(ns, "Orders"), "a delivered message names its topic as the client does");
        }
        held.push(got);
    }
    // An ack with another namespace's names is refused; with its own it is accepted.
    let a0 = &held[0].messages[0];
    let handle = a0.system_properties.as_ref().unwrap().receipt_handle.clone().unwrap();
    let ack_in = |ns: &str| proto::AckMessageRequest {
        group: ns_resource(ns, "Billing"),
        topic: ns_resource(ns, "Orders"),
        entries: vec![proto::AckMessageEntry {
            message_id: a0.system_properties.as_ref().unwrap().message_id.clone(),
            receipt_handle: handle.clone(),
            lite_topic: None,
        }],
    };
    let wrong = c.ack_message(req_ns(ack_in("B"), "B")).await.unwrap().into_inner();
    assert_ne!(code(&wrong.status), Code::Ok as i32, "B acked A's message: {:?}", wrong.status);
    let right = c.ack_message(req_ns(ack_in("A"), "A")).await.unwrap().into_inner();
    assert_eq!(code(&right.status), Code::Ok as i32, "{:?}", right.status);

    // The admin API shows them as `ns%name`, filters by namespace, and configures a group of
    // one namespace without touching the same name elsewhere.
    let (status, body) = client::http(g.addrs.http, "GET", "/api/v1/topics?namespace=A", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"A%Orders","namespace":"A""#), "{body}");
    assert!(!body.contains("B%Orders") && !body.contains(r#""name":"Orders""#), "{body}");
    let (_, body) = client::http(g.addrs.http, "GET", "/api/v1/topics?namespace=", None).await;
    assert!(body.contains(r#""name":"Orders","namespace":"""#) && !body.contains("%Orders"), "{body}");
    let (_, body) = client::http(g.addrs.http, "GET", "/api/v1/topics/B%25Orders", None).await;
    assert!(body.contains(r#""namespace":"B""#), "{body}");
    let put = r#"{"consumeMessageOrderly":true,"retryMaxTimes":7}"#;
    let (status, body) = client::http(g.addrs.http, "PUT", "/api/v1/groups/Billing?namespace=A", Some(put)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"A%Billing","namespace":"A""#), "{body}");
    let assigned = |r: proto::QueryAssignmentResponse| r.assignments.len();
    for (ns, queues, settings) in [("A", 8, (true, 8)), ("B", 1, (false, 17)), ("", 1, (false, 17))] {
        let request = proto::QueryAssignmentRequest {
            topic: ns_resource(ns, "Orders"),
            group: ns_resource(ns, "Billing"),
            endpoints: None,
        };
        let r = c.query_assignment(req_ns(request, ns)).await.unwrap().into_inner();
        assert_eq!(code(&r.status), Code::Ok as i32);
        assert!(r.assignments.iter().all(|a| a.message_queue.as_ref().unwrap().topic == ns_resource(ns, "Orders")));
        assert_eq!(assigned(r), queues, "namespace {ns:?}: orderly only in A");
        assert_eq!(ns_settings(&mut c, ns, "Billing", "Orders").await, settings, "namespace {ns:?}");
    }
    let (_, body) = client::http(g.addrs.http, "GET", "/api/v1/groups?namespace=B", None).await;
    assert!(body.contains(r#""name":"B%Billing","namespace":"B","consumeMessageOrderly":false"#), "{body}");
    // Topic creation in a namespace through the admin API; bad names are 400s.
    let (status, body) =
        client::http(g.addrs.http, "PUT", "/api/v1/topics/Fifo?namespace=A", Some(r#"{"messageType":"FIFO"}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"A%Fifo","namespace":"A""#), "{body}");
    for bad in ["/api/v1/topics/x%25y%25z", "/api/v1/topics/%25x", "/api/v1/topics/t?namespace=a%20b"] {
        let (status, body) = client::http(g.addrs.http, "PUT", bad, Some("{}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    g.stop().await;
}

/// Where the namespace comes from: the resource field, else the header (Node sends most
/// resources without namespace); both set and different, a bad namespace, or a `%` in a name
/// are refused with their codes.
#[tokio::test]
async fn namespace_from_the_resource_or_the_header() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    // Header only (Node), resource only (Rust), both: all the same topic A%T.
    assert_eq!(ns_send(&mut c, "A", ns_message("", "T", "H1", b"header-only")).await.code, Code::Ok as i32);
    assert_eq!(ns_send(&mut c, "", ns_message("A", "T", "R1", b"resource-only")).await.code, Code::Ok as i32);
    assert_eq!(ns_send(&mut c, "A", ns_message("A", "T", "B1", b"both")).await.code, Code::Ok as i32);
    let got = ns_receive(&mut c, ("", "A"), "T", "G").await;
    assert_eq!(bodies(&got), ["both", "header-only", "resource-only"], "{:?}", got.status);
    // Delivered messages carry the namespace even if the request had it in the header only.
    assert!(got.messages.iter().all(|m| m.topic == ns_resource("A", "T")));
    let none = ns_receive(&mut c, ("", ""), "T", "G").await;
    assert_eq!(none.status.code, Code::TopicNotFound as i32, "no topic T outside the namespace: {:?}", none.status);

    // Conflicts and bad namespaces: BAD_REQUEST; `%` in a name: ILLEGAL_TOPIC/ILLEGAL_CONSUMER_GROUP.
    let s = ns_send(&mut c, "B", ns_message("A", "T", "X1", b"x")).await;
    assert_eq!(s.code, Code::BadRequest as i32, "{s:?}");
    assert!(s.message.contains("x-mq-namespace"), "{s:?}");
    let s = ns_send(&mut c, "", ns_message("a b", "T", "X2", b"x")).await;
    assert_eq!(s.code, Code::BadRequest as i32, "{s:?}");
    assert!(s.message.contains("namespace"), "{s:?}");
    // A client without namespace cannot reach A's topic by spelling it.
    let s = ns_send(&mut c, "", ns_message("", "A%T", "X3", b"x")).await;
    assert_eq!(s.code, Code::IllegalTopic as i32, "{s:?}");
    let r = ns_receive(&mut c, ("", ""), "A%T", "G").await;
    assert_eq!(r.status.code, Code::IllegalTopic as i32, "{:?}", r.status);
    let r = ns_receive(&mut c, ("A", "B"), "T", "G").await;
    assert_eq!(r.status.code, Code::BadRequest as i32, "{:?}", r.status);
    let mut bad_group = client::receive_request("T", "A%G", None, Duration::from_secs(1));
    bad_group.message_queue.as_mut().unwrap().topic = ns_resource("A", "T");
    let r = c.receive_message(req(bad_group)).await.unwrap().into_inner().message().await.unwrap().unwrap();
    let Some(proto::receive_message_response::Content::Status(s)) = r.content else { panic!("{r:?}") };
    assert_eq!(s.code, Code::IllegalConsumerGroup as i32, "{s:?}");
    let route = c
        .query_route(req_ns(proto::QueryRouteRequest { topic: ns_resource("A", "T"), endpoints: None }, "B"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::BadRequest as i32);
    // Settings with a conflict fail the stream with the reason.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let settings = proto::telemetry_command::Command::Settings(ns_subscription("A", "G", "T"));
    tx.send(proto::TelemetryCommand { status: None, command: Some(settings) }).await.unwrap();
    let mut stream =
        c.telemetry(req_ns(tokio_stream::wrappers::ReceiverStream::new(rx), "B")).await.unwrap().into_inner();
    let e = stream.message().await.expect_err("the stream fails");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("BAD_REQUEST") && e.message().contains("x-mq-namespace"), "{e:?}");
    g.stop().await;
}

/// A namespaced group's dead letters go to `%DLQ%ns%group`, which a client of the namespace
/// reads as `%DLQ%group` (with the origin topic as it knows it) and nobody else can read.
#[tokio::test]
async fn namespaced_dead_letter_queue() {
    let g = Gateway::start(|_| {}).await;
    let mut c = g.client().await;
    assert_eq!(ns_send(&mut c, "A", ns_message("A", "TD", "D1", b"poison")).await.code, Code::Ok as i32);
    let r = ns_receive(&mut c, ("A", "A"), "TD", "GD").await;
    assert_eq!(r.messages.len(), 1, "{:?}", r.status);
    let sp = r.messages[0].system_properties.as_ref().unwrap();
    let forward = proto::ForwardMessageToDeadLetterQueueRequest {
        group: ns_resource("A", "GD"),
        topic: ns_resource("A", "TD"),
        receipt_handle: sp.receipt_handle.clone().unwrap(),
        message_id: sp.message_id.clone(),
        delivery_attempt: 1,
        max_delivery_attempts: 2,
        lite_topic: None,
    };
    let f = c.forward_message_to_dead_letter_queue(req_ns(forward, "A")).await.unwrap().into_inner();
    assert_eq!(code(&f.status), Code::Ok as i32, "{:?}", f.status);
    let (_, body) = client::http(g.addrs.http, "GET", "/api/v1/topics?namespace=A", None).await;
    assert!(body.contains(r#""name":"%DLQ%A%GD","namespace":"A""#), "{body}");

    let dlq = ns_receive(&mut c, ("A", "A"), "%DLQ%GD", "DlqReader").await;
    assert_eq!(dlq.messages.len(), 1, "{:?}", dlq.status);
    let m = &dlq.messages[0];
    assert_eq!(m.topic, ns_resource("A", "%DLQ%GD"));
    let origin = m.system_properties.as_ref().unwrap().dead_letter_queue.as_ref().expect("dead_letter_queue");
    assert_eq!((origin.topic.as_str(), origin.message_id.as_str()), ("TD", "D1"));
    for (ns, header) in [("", ""), ("B", "B")] {
        let r = ns_receive(&mut c, (ns, header), "%DLQ%GD", "DlqReader").await;
        assert_eq!(r.status.code, Code::TopicNotFound as i32, "namespace {ns:?}: {:?}", r.status);
    }
    g.stop().await;
}

/// The orphaned-transaction check of a namespaced topic goes to a producer of that namespace
/// (not to one of the same topic name in another), with the topic as that producer names it;
/// its answer with the same names commits the message.
#[tokio::test]
async fn orphaned_transaction_check_in_a_namespace() {
    use proto::telemetry_command::Command;
    let g = Gateway::start(|c| {
        c.transaction.transaction_timeout = Duration::from_millis(500);
        c.transaction.transaction_check_interval = Duration::from_millis(200);
    })
    .await;
    let mut c = g.client().await;
    // Two producers of topic TX: one in B (registered first), one in A.
    let mut streams = Vec::new();
    for (ns, client_id) in [("B", "producer-b@1"), ("A", "producer-a@1")] {
        let settings = proto::Settings {
            client_type: Some(proto::ClientType::Producer as i32),
            pub_sub: Some(proto::settings::PubSub::Publishing(proto::Publishing {
                topics: vec![ns_resource(ns, "TX").unwrap()],
                ..Default::default()
            })),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(proto::TelemetryCommand { status: None, command: Some(Command::Settings(settings)) }).await.unwrap();
        let mut r = req_ns(tokio_stream::wrappers::ReceiverStream::new(rx), ns);
        r.metadata_mut().insert("x-mq-client-id", client_id.parse().unwrap());
        let mut stream = c.telemetry(r).await.unwrap().into_inner();
        assert_eq!(code(&stream.message().await.unwrap().unwrap().status), Code::Ok as i32);
        streams.push((tx, stream));
    }
    let mut half = ns_message("A", "TX", "TXA1", b"half");
    half.system_properties.as_mut().unwrap().message_type = proto::MessageType::Transaction as i32;
    let sent = c.send_message(req_ns(proto::SendMessageRequest { messages: vec![half] }, "A")).await.unwrap();
    let sent = sent.into_inner();
    assert_eq!(code(&sent.status), Code::Ok as i32, "{:?}", sent.status);
    let transaction_id = sent.entries[0].transaction_id.clone();

    let (_, a_stream) = &mut streams[1];
    let cmd = tokio::time::timeout(Duration::from_secs(20), a_stream.message()).await.expect("checked in time");
    let cmd = cmd.unwrap().unwrap();
    let Some(Command::RecoverOrphanedTransactionCommand(check)) = cmd.command else { panic!("{cmd:?}") };
    let m = check.message.unwrap();
    assert_eq!(m.topic, ns_resource("A", "TX"), "the check names the topic as the producer does");
    assert_eq!(check.transaction_id, transaction_id);
    // The producer of B was not asked.
    let (_, b_stream) = &mut streams[0];
    let nothing = tokio::time::timeout(Duration::from_millis(500), b_stream.message()).await;
    assert!(nothing.is_err(), "producer B got {nothing:?}");

    let end = proto::EndTransactionRequest {
        topic: m.topic.clone(),
        message_id: "TXA1".into(),
        transaction_id,
        resolution: proto::TransactionResolution::Commit as i32,
        source: proto::TransactionSource::SourceServerCheck as i32,
        trace_context: String::new(),
    };
    let end = c.end_transaction(req_ns(end, "A")).await.unwrap().into_inner();
    assert_eq!(code(&end.status), Code::Ok as i32, "{:?}", end.status);
    let got = ns_receive(&mut c, ("A", "A"), "TX", "G").await;
    assert_eq!(bodies(&got), ["half"], "{:?}", got.status);
    drop(streams);
    g.stop().await;
}
