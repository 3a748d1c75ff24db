//! Client sessions over the protocol (in-process gateway, raw gRPC): a Telemetry stream that
//! stays open across its session's expiry still gets relayed commands, and an unknown group
//! beyond `consumer.maxAutoCreatedGroups` gets CONSUMER_GROUP_NOT_FOUND on receive.

use std::time::Duration;

use integration_tests::client::{self, request};
use integration_tests::in_process::Gateway;
use rmq_gateway::proto::{self, Code, telemetry_command::Command};

fn subscription(group: &str, topic: &str) -> proto::Settings {
    client::subscription_settings(proto::ClientType::PushConsumer, group, topic)
}

#[tokio::test]
async fn an_open_telemetry_stream_outlives_its_session_expiry() {
    let g = Gateway::start(|c| c.server.channel_expired_timeout = Duration::from_secs(1)).await;
    let mut c = g.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(proto::TelemetryCommand {
        status: None,
        command: Some(Command::Settings(subscription("GroupE", "TopicE"))),
    })
    .await
    .unwrap();
    let mut stream = c.telemetry(request(tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some(), "settings answered");

    // Silent past the expiry: the session goes (and with it the relay channel, which the open
    // stream attaches again).
    let http = g.addrs.http;
    let started = std::time::Instant::now();
    loop {
        let (_, body) = client::http(http, "GET", "/api/v1/stats", None).await;
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        if stats["clients"]["expired"] == 1 {
            assert_eq!(stats["clients"]["relayChannels"], 1, "{stats}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the session did not expire: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let asked = tokio::spawn(async move {
        client::http(http, "POST", "/api/v1/clients/integration-test@1/stack-trace", None).await
    });
    let cmd = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let Some(Command::PrintThreadStackTraceCommand(p)) = cmd.command else { panic!("expected a command: {cmd:?}") };
    let answer = proto::ThreadStackTrace { nonce: p.nonce, thread_stack_trace: Some("alive".into()) };
    tx.send(proto::TelemetryCommand {
        status: Some(proto::Status { code: Code::Ok as i32, message: "OK".into() }),
        command: Some(Command::ThreadStackTrace(answer)),
    })
    .await
    .unwrap();
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alive"), "{body}");
    drop(tx);
    g.stop().await;
}

#[tokio::test]
async fn groups_beyond_the_auto_created_limit_are_not_found() {
    let g = Gateway::start(|c| c.consumer.max_auto_created_groups = 1).await;
    let mut c = g.client().await;
    let m = client::message("TopicL", "L1", b"x".to_vec());
    let r = c.send_message(request(proto::SendMessageRequest { messages: vec![m] })).await.unwrap().into_inner();
    assert_eq!(r.status.unwrap().code, Code::Ok as i32);
    let receive = |group: &str| {
        let mut c = c.clone();
        let r = client::receive_request("TopicL", group, Some(Duration::from_secs(30)), Duration::from_secs(1));
        async move {
            let mut stream = c.receive_message(request(r)).await.unwrap().into_inner();
            match stream.message().await.unwrap().unwrap().content.unwrap() {
                proto::receive_message_response::Content::Status(s) => s,
                other => panic!("status first: {other:?}"),
            }
        }
    };
    assert_eq!(receive("FirstGroup").await.code, Code::Ok as i32);
    let s = receive("SecondGroup").await;
    assert_eq!(s.code, Code::ConsumerGroupNotFound as i32, "{s:?}");
    assert!(s.message.contains("consumer.maxAutoCreatedGroups"), "{s:?}");
    // Created explicitly, it works.
    let (status, _) = client::http(g.addrs.http, "PUT", "/api/v1/groups/SecondGroup", Some("{}")).await;
    assert_eq!(status, 200);
    assert_eq!(receive("SecondGroup").await.code, Code::Ok as i32);
    g.stop().await;
}
