//! Crash test: a real gateway process under concurrent SYNC_FLUSH send load is killed with
//! SIGKILL again and again; after every restart each acknowledged message must be readable
//! exactly once, at the offset it was acknowledged with, with its body intact, and each queue's
//! offsets must be dense and in send order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::client;
use integration_tests::gateway_process::{Gateway, Stop};
use rmq_gateway::proto::messaging_service_client::MessagingServiceClient;
use rmq_gateway::proto::{self, Code};
use tonic::transport::Channel;

const CYCLES: usize = 20;
const SENDERS: usize = 8;
const TOPIC: &str = "CrashTopic";

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = client::request(msg);
    r.set_timeout(Duration::from_secs(10));
    r
}

/// Body derived from the id, with a size that varies per message (64 B – 8 KiB).
fn body_of(id: &str) -> Vec<u8> {
    let len = 64 + (crc(id.as_bytes()) as usize % 8192);
    id.as_bytes().iter().copied().cycle().take(len).collect()
}

fn crc(b: &[u8]) -> u32 {
    b.iter().fold(2166136261u32, |h, x| (h ^ u32::from(*x)).wrapping_mul(16777619))
}

async fn connect(endpoint: &str) -> anyhow::Result<MessagingServiceClient<Channel>> {
    let channel =
        Channel::from_shared(format!("http://{endpoint}"))?.connect_timeout(Duration::from_secs(5)).connect().await?;
    Ok(MessagingServiceClient::new(channel))
}

/// Sends until the gateway dies; records every acknowledged (id → offset).
async fn sender(endpoint: String, cycle: usize, task: usize, acked: Arc<Mutex<HashMap<String, i64>>>) {
    let Ok(mut client) = connect(&endpoint).await else { return };
    for seq in 0.. {
        let id = format!("c{cycle:02}-t{task}-{seq:06}");
        let body = body_of(&id);
        let message = client::message(TOPIC, &id, body);
        match client.send_message(request(proto::SendMessageRequest { messages: vec![message] })).await {
            Ok(r) => {
                let r = r.into_inner();
                let entry = &r.entries[0];
                if entry.status.as_ref().map(|s| s.code) == Some(Code::Ok as i32) {
                    acked.lock().expect("lock").insert(id, entry.offset);
                } else {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Reads the whole topic with a fresh consumer group: id → (queue, offset, body).
async fn read_all(endpoint: &str, group: &str) -> anyhow::Result<Vec<(String, i32, i64, Vec<u8>)>> {
    let mut client = connect(endpoint).await?;
    let mut out = Vec::new();
    loop {
        let r = client::receive_request(TOPIC, group, Some(Duration::from_secs(300)), Duration::from_secs(1));
        let mut stream = client.receive_message(request(r)).await?.into_inner();
        let mut got = 0;
        while let Some(frame) = stream.message().await? {
            if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
                let sp = m.system_properties.expect("system properties");
                out.push((sp.message_id, sp.queue_id, sp.queue_offset.expect("offset"), m.body.to_vec()));
                got += 1;
            }
        }
        if got == 0 {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_send_load_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut gateway = Gateway::start(dir.path())?;
    let acked: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    for cycle in 0..CYCLES {
        let endpoint = gateway.endpoint();
        let before = acked.lock().expect("lock").len();
        let senders: Vec<_> =
            (0..SENDERS).map(|t| tokio::spawn(sender(endpoint.clone(), cycle, t, acked.clone()))).collect();
        // A cycle counts only if sends were acknowledged before the kill: wait for the first.
        let started = std::time::Instant::now();
        while acked.lock().expect("lock").len() == before {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cycle {cycle}: no send was acknowledged within 30 s of the gateway starting"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Kill at a different moment each cycle, while sends are in flight.
        let delay = 150 + (crc(&cycle.to_le_bytes()) % 350) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        gateway.stop(Stop::Kill)?;
        for s in senders {
            let _ = tokio::time::timeout(Duration::from_secs(15), s).await;
        }
        gateway.restart()?;

        let stored = read_all(&gateway.endpoint(), &format!("verify-{cycle}")).await?;
        let acked = acked.lock().expect("lock").clone();
        let this_cycle = acked.keys().filter(|id| id.starts_with(&format!("c{cycle:02}-"))).count();
        assert!(acked.len() > before && this_cycle > 0, "cycle {cycle}: no message acknowledged in this cycle");
        let mut seen: HashMap<&str, (i32, i64)> = HashMap::new();
        let mut per_queue: BTreeMap<i32, Vec<(i64, &str)>> = BTreeMap::new();
        for (id, queue, offset, body) in &stored {
            assert!(seen.insert(id, (*queue, *offset)).is_none(), "cycle {cycle}: {id} stored twice");
            assert_eq!(body, &body_of(id), "cycle {cycle}: body of {id} corrupted");
            per_queue.entry(*queue).or_default().push((*offset, id));
        }
        for (id, offset) in &acked {
            let Some((_, at)) = seen.get(id.as_str()) else {
                panic!(
                    "cycle {cycle}: acknowledged message {id} lost ({} acked, {} stored)",
                    acked.len(),
                    stored.len()
                );
            };
            assert_eq!(at, offset, "cycle {cycle}: {id} acknowledged at offset {offset} but stored at {at}");
        }
        for (queue, mut entries) in per_queue {
            entries.sort();
            for (i, (offset, _)) in entries.iter().enumerate() {
                assert_eq!(*offset, i as i64, "cycle {cycle}: queue {queue} offsets are not dense");
            }
            // Per sender, sequence numbers grow with the offset.
            let mut last: HashMap<&str, &str> = HashMap::new();
            for (_, id) in &entries {
                let (sender_key, seq) = id.rsplit_once('-').expect("id format");
                if let Some(prev) = last.insert(sender_key, seq) {
                    assert!(prev < seq, "cycle {cycle}: queue {queue} has {sender_key} out of order");
                }
            }
        }
        eprintln!(
            "cycle {cycle}: {this_cycle} acknowledged in this cycle, {} so far, {} stored, all intact",
            acked.len(),
            stored.len()
        );
    }
    gateway.stop(Stop::Graceful)?;
    Ok(())
}

/// Receives from `topic` for `group` (invisible `invisible`, polling ≤ 1 s): every message of
/// one receive call.
async fn receive_once(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    invisible: Duration,
) -> anyhow::Result<Vec<proto::Message>> {
    let r = client::receive_request(topic, group, Some(invisible), Duration::from_secs(1));
    let mut stream = c.receive_message(request(r)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(frame) = stream.message().await? {
        if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
            out.push(m);
        }
    }
    Ok(out)
}

fn sp(m: &proto::Message) -> &proto::SystemProperties {
    m.system_properties.as_ref().expect("system properties")
}

fn handle(m: &proto::Message) -> String {
    sp(m).receipt_handle.clone().expect("receipt handle")
}

/// A consumer in the middle of retries when the gateway is SIGKILLed: after the restart an
/// invisible message is not delivered before its deadline (nacked ones with their backoff,
/// held ones with their invisible time), its attempt count continues, the handle its consumer
/// got before the kill still acks, and an acked message never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_retries_keeps_deadlines_attempts_and_handles() -> anyhow::Result<()> {
    const T: &str = "RetryKillTopic";
    const G: &str = "RetryKillGroup";
    let dir = tempfile::tempdir()?;
    let mut gateway = Gateway::start(dir.path())?;
    let mut c = connect(&gateway.endpoint()).await?;
    for i in 0..6 {
        let m = client::message(T, &format!("R{i}"), format!("retry-{i}"));
        let r = c.send_message(request(proto::SendMessageRequest { messages: vec![m] })).await?.into_inner();
        assert_eq!(r.status.map(|s| s.code), Some(Code::Ok as i32));
    }
    // Attempt 1 of all six, nacked with a 1 s backoff (what a PushConsumer does on FAILURE).
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend(receive_once(&mut c, T, G, Duration::from_secs(10)).await?);
    }
    for m in &got {
        assert_eq!(sp(m).delivery_attempt, Some(1));
        let nack = proto::ChangeInvisibleDurationRequest {
            group: client::resource(G),
            topic: client::resource(T),
            receipt_handle: handle(m),
            invisible_duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            message_id: sp(m).message_id.clone(),
            lite_topic: None,
            suspend: None,
        };
        let r = c.change_invisible_duration(request(nack)).await?.into_inner();
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(Code::Ok as i32), "{:?}", r.status);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Attempt 2: two are acked, two held 10 s, two nacked again with a 20 s backoff.
    // Deadlines are set after this instant (10 s for the held ones, 20 s for the nacked ones).
    let before_second = std::time::Instant::now();
    let mut second = Vec::new();
    while second.len() < 6 {
        second.extend(receive_once(&mut c, T, G, Duration::from_secs(10)).await?);
    }
    let received_at = std::time::Instant::now();
    second.sort_by_key(|m| sp(m).message_id.clone());
    assert!(second.iter().all(|m| sp(m).delivery_attempt == Some(2)), "the nacked messages come back as attempt 2");
    for m in &second[..2] {
        let ack = proto::AckMessageRequest {
            group: client::resource(G),
            topic: client::resource(T),
            entries: vec![proto::AckMessageEntry {
                message_id: sp(m).message_id.clone(),
                receipt_handle: handle(m),
                lite_topic: None,
            }],
        };
        let r = c.ack_message(request(ack)).await?.into_inner();
        assert_eq!(r.status.map(|s| s.code), Some(Code::Ok as i32));
    }
    for m in &second[4..] {
        let nack = proto::ChangeInvisibleDurationRequest {
            group: client::resource(G),
            topic: client::resource(T),
            receipt_handle: handle(m),
            invisible_duration: Some(prost_types::Duration { seconds: 20, nanos: 0 }),
            message_id: sp(m).message_id.clone(),
            lite_topic: None,
            suspend: None,
        };
        let r = c.change_invisible_duration(request(nack)).await?.into_inner();
        assert_eq!(r.status.map(|s| s.code), Some(Code::Ok as i32));
    }
    drop(c);
    gateway.stop(Stop::Kill)?;
    gateway.restart()?;
    let away = received_at.elapsed();
    let mut c = connect(&gateway.endpoint()).await?;

    // The holder of R2 acks it with the handle it got before the kill.
    let held = &second[2];
    let ack = proto::AckMessageRequest {
        group: client::resource(G),
        topic: client::resource(T),
        entries: vec![proto::AckMessageEntry {
            message_id: sp(held).message_id.clone(),
            receipt_handle: handle(held),
            lite_topic: None,
        }],
    };
    let r = c.ack_message(request(ack)).await?.into_inner();
    assert_eq!(r.status.as_ref().map(|s| s.code), Some(Code::Ok as i32), "pre-kill handle: {:?}", r.status);

    // Nothing before the deadlines (10 s for R3, 20 s for R4/R5, from the second receive).
    let mut back: BTreeMap<String, (i32, Duration)> = BTreeMap::new();
    while received_at.elapsed() < Duration::from_secs(45) && back.len() < 3 {
        for m in receive_once(&mut c, T, G, Duration::from_secs(30)).await? {
            let at = before_second.elapsed();
            let id = sp(&m).message_id.clone();
            let attempt = sp(&m).delivery_attempt.unwrap_or(0);
            let due = if id == "R3" { Duration::from_secs(10) } else { Duration::from_secs(20) };
            assert!(!["R0", "R1", "R2"].contains(&id.as_str()), "acked {id} delivered again after the kill");
            assert!(at >= due, "{id} delivered {at:?} after its receive, before its deadline {due:?}");
            assert_eq!(attempt, 3, "{id}: the attempt count continues across the kill");
            assert!(back.insert(id.clone(), (attempt, at)).is_none(), "{id} delivered twice");
        }
    }
    eprintln!("[retries] sigkill mid-retry: away {away:?}; redelivered after the kill: {back:?}");
    assert_eq!(back.keys().cloned().collect::<Vec<_>>(), ["R3", "R4", "R5"], "the unacked messages come back");
    Ok(())
}
