//! `server.ioThreads`: connections spread over I/O threads (each on its own runtime) and on the
//! main runtime (`0`) behave the same: a long poll on one connection is woken by a send on
//! another, TLS works on an I/O thread, and shutdown ends long polls, drains every thread and
//! ends them. With `server.ioThreadAffinity` each thread runs on one CPU of the process's set.

use std::time::Duration;

use integration_tests::client::{http, message, receive_request, request, resource, tls_client};
use integration_tests::in_process::Gateway;
use rmq_gateway::config::{IoThreadAffinity, TlsMode};
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use tonic::transport::Channel;

const TOPIC: &str = "IoThreadsTopic";
const GROUP: &str = "IoThreadsGroup";
/// Concurrent sends from every connection: a group commit answers several appends waiting on
/// one I/O thread at once (`storage/local/delivery.rs`).
const BURST_TOPIC: &str = "IoThreadsBurst";

/// Long-polls until a message comes; its body and receipt handle.
async fn receive_one(c: &mut MessagingServiceClient<Channel>) -> (Vec<u8>, String) {
    let mut r = request(receive_request(TOPIC, GROUP, Some(Duration::from_secs(30)), Duration::from_secs(10)));
    r.set_timeout(Duration::from_secs(15));
    let mut stream = c.receive_message(r).await.expect("ReceiveMessage").into_inner();
    let mut got = None;
    while let Some(frame) = stream.message().await.expect("receive frame") {
        match frame.content {
            Some(proto::receive_message_response::Content::Message(m)) => {
                let handle = m.system_properties.and_then(|sp| sp.receipt_handle).expect("receipt handle");
                got.get_or_insert((m.body.to_vec(), handle));
            }
            Some(proto::receive_message_response::Content::Status(s)) => {
                assert_eq!(s.code, Code::Ok as i32, "receive status: {}", s.message)
            }
            _ => {}
        }
    }
    got.expect("a message within the long poll")
}

async fn send(c: &mut MessagingServiceClient<Channel>, id: &str, body: &'static [u8]) {
    let reply = c
        .send_message(request(proto::SendMessageRequest { messages: vec![message(TOPIC, id, body)] }))
        .await
        .expect("SendMessage")
        .into_inner();
    assert_eq!(reply.status.map(|s| s.code), Some(Code::Ok as i32));
}

/// Threads of this process named like the gateway's I/O threads.
fn io_thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("rmq-grpc-io-"))
        .count()
}

/// A `Cpus_allowed_list` ("0-3,6") as CPU numbers.
fn cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse::<usize>().expect("cpu"));
    }
    cpus
}

/// The CPUs a thread (a `/proc/self/task/<tid>` or `/proc/self`) may run on.
fn allowed_cpus(dir: &std::path::Path) -> Vec<usize> {
    let status = std::fs::read_to_string(dir.join("status")).expect("status");
    let line = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list");
    cpu_list(line)
}

/// The CPUs of each I/O thread, by its index (`rmq-grpc-io-<i>`).
fn io_thread_cpus() -> Vec<(usize, Vec<usize>)> {
    let mut threads: Vec<_> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let i = name.trim().strip_prefix("rmq-grpc-io-")?.parse().ok()?;
            Some((i, allowed_cpus(&dir)))
        })
        .collect();
    threads.sort();
    threads
}

async fn exercise(io_threads: usize, affinity: IoThreadAffinity) {
    let gateway = Gateway::start(|c| {
        c.server.io_threads = io_threads;
        c.server.io_thread_affinity = affinity;
        c.server.tls.mode = TlsMode::Permissive;
        c.storage.mapped_file_size_commit_log = 16 * 1024 * 1024;
        // Longer than `Gateway::stop` waits (20 s): a server that did not drain fails the test.
        c.server.shutdown_timeout = Duration::from_secs(60);
    })
    .await;
    for topic in [TOPIC, BURST_TOPIC] {
        let path = format!("/api/v1/topics/{topic}");
        let (status, body) =
            http(gateway.addrs.http, "PUT", &path, Some(r#"{"queueNums":4,"messageType":"NORMAL"}"#)).await;
        assert!((200..300).contains(&status), "creating {topic}: {status} {body}");
    }
    assert_eq!(io_thread_count(), io_threads, "I/O threads running");
    let process = allowed_cpus(std::path::Path::new("/proc/self"));
    let pinned = match affinity {
        IoThreadAffinity::On => true,
        IoThreadAffinity::Auto => process.len() == io_threads,
        IoThreadAffinity::Off => false,
    };
    for (i, cpus) in io_thread_cpus() {
        let expected = if pinned { vec![process[i % process.len()]] } else { process.clone() };
        assert_eq!(cpus, expected, "CPUs of rmq-grpc-io-{i} ({affinity:?}, process on {process:?})");
    }
    // More connections than threads, so some share a thread and some do not.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(gateway.client().await);
    }
    clients.push(tls_client(gateway.addrs.grpc).await.expect("TLS connection"));
    for (i, c) in clients.iter_mut().enumerate() {
        let mut r = request(proto::QueryRouteRequest { topic: resource(TOPIC), endpoints: None });
        r.set_timeout(Duration::from_secs(5));
        let reply = c.query_route(r).await.expect("QueryRoute").into_inner();
        assert_eq!(reply.status.map(|s| s.code), Some(Code::Ok as i32), "connection {i}");
    }
    // Every connection waits in turn while the next one sends: the wake-up crosses threads.
    let n = clients.len();
    for i in 0..n {
        let mut consumer = clients[i].clone();
        let waiting = tokio::spawn(async move { receive_one(&mut consumer).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = format!("io-{io_threads}-{i}");
        send(&mut clients[(i + 1) % n], &id, b"across threads").await;
        let (body, handle) = tokio::time::timeout(Duration::from_secs(15), waiting)
            .await
            .expect("long poll woken by the send")
            .expect("receiver task");
        assert_eq!(body, b"across threads");
        let ack = clients[i]
            .ack_message(request(proto::AckMessageRequest {
                group: resource(GROUP),
                topic: resource(TOPIC),
                entries: vec![proto::AckMessageEntry { message_id: id, receipt_handle: handle, lite_topic: None }],
            }))
            .await
            .expect("AckMessage")
            .into_inner();
        assert_eq!(ack.status.map(|s| s.code), Some(Code::Ok as i32));
    }
    // Many sends in flight on every connection (the gateway flushes synchronously by default):
    // each gets its own answer.
    let mut burst = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        for j in 0..16 {
            let mut c = c.clone();
            let id = format!("burst-{io_threads}-{i}-{j}");
            burst.spawn(async move {
                let mut r = request(proto::SendMessageRequest {
                    messages: vec![message(BURST_TOPIC, &id, b"burst".as_slice())],
                });
                r.set_timeout(Duration::from_secs(10));
                let reply = c.send_message(r).await.expect("SendMessage").into_inner();
                assert_eq!(reply.status.map(|s| s.code), Some(Code::Ok as i32), "{id}");
                assert_eq!(reply.entries.len(), 1, "{id}");
                assert_eq!(reply.entries[0].message_id, id, "each send gets its own answer");
            });
        }
    }
    while let Some(done) = burst.join_next().await {
        done.expect("burst send");
    }
    // A long poll still open at shutdown ends, and every thread drains: `stop` fails after 20 s,
    // and the server would wait up to its 60 s shutdown timeout for a connection that did not.
    let mut last = clients[0].clone();
    let pending = tokio::spawn(async move {
        let mut r = request(receive_request(TOPIC, GROUP, None, Duration::from_secs(20)));
        r.set_timeout(Duration::from_secs(25));
        last.receive_message(r).await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gateway.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("the pending long poll ended");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while io_thread_count() > 0 {
        assert!(std::time::Instant::now() < deadline, "{} I/O threads still running after shutdown", io_thread_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// One test, one after the other: the thread count is read from the whole process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_io_threads_and_on_the_main_runtime() {
    exercise(3, IoThreadAffinity::On).await;
    exercise(0, IoThreadAffinity::Off).await;
    // As many threads as CPUs: `auto` pins them; one more thread than CPUs: it does not.
    let cpus = allowed_cpus(std::path::Path::new("/proc/self")).len();
    exercise(cpus, IoThreadAffinity::Auto).await;
    exercise(cpus + 1, IoThreadAffinity::Auto).await;
}
