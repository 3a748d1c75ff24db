//! Bounded state under misbehaving clients: session expiry, the auto-created group bound and
//! retirement, progress flushed only where it changed, idle states pruned without losing their
//! position, and the in-flight bound on sends.

use super::*;

fn settings_with(change: impl FnOnce(&mut BrokerSettings)) -> BrokerSettings {
    let mut s = test_settings();
    change(&mut s);
    s
}

fn auto_renew_request(client: &str, attempt: &str) -> ReceiveRequest {
    ReceiveRequest {
        client_id: client.into(),
        invisible_duration: None,
        auto_renew: true,
        attempt_id: Some(attempt.into()),
        ..receive_request()
    }
}

#[tokio::test]
async fn a_silent_client_expires_and_its_auto_renewed_messages_come_back() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start_with(settings_with(|s| s.clients.channel_expired_timeout = Duration::from_secs(10))).await;
    broker.send(vec![message("m0")]).await.unwrap();
    let got = broker.receive(auto_renew_request("push-1", "a1")).await.unwrap();
    assert_eq!(ids(&got), ["m0"]);
    let s = broker.stats();
    assert_eq!((s.sessions.clients, s.sessions.remembered_receives, s.states.renewing_clients), (1, 1, 1));

    // Auto-renewed while the client lives, however long.
    h.clock.advance(9_000);
    assert_eq!(broker.expire_clients(), 0);
    h.clock.advance(61_000);
    broker.touch_client("push-1");
    assert!(broker.receive(receive_request()).await.unwrap().is_empty(), "still held for push-1");

    // Silent past the expiry: forgotten, as if it had said goodbye.
    h.clock.advance(10_000);
    assert_eq!(broker.expire_clients(), 2, "push-1 and the receiving client `c`");
    let s = broker.stats();
    assert_eq!((s.sessions.clients, s.sessions.expired), (0, 2));
    assert_eq!((s.sessions.remembered_receives, s.states.renewing_clients), (0, 0));
    assert!(broker.clients().is_empty());
    // Its message is released (visible a second later) and goes to another consumer.
    h.clock.advance(1_000);
    let again = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&again), ["m0"]);
    assert_eq!(again[0].delivery_attempt, 2);
}

#[tokio::test]
async fn a_client_in_a_long_poll_does_not_expire() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let broker = h.start_with(settings_with(|s| s.clients.channel_expired_timeout = Duration::from_secs(10))).await;
    broker.create_topic("T", None, TopicKind::Normal).await.unwrap();
    let mut req = receive_request();
    req.client_id = "poller".into();
    req.long_polling_timeout = Some(Duration::from_millis(300));
    let polling = tokio::spawn({
        let broker = broker.clone();
        async move { broker.receive(req).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.clock.advance(60_000);
    assert_eq!(broker.expire_clients(), 0, "a long poll is running");
    assert!(polling.await.unwrap().unwrap().is_empty(), "the poll ran its course");
    // Seen when the poll ended.
    h.clock.advance(9_000);
    assert_eq!(broker.expire_clients(), 0);
    h.clock.advance(1_000);
    assert_eq!(broker.expire_clients(), 1);
}

#[tokio::test]
async fn auto_created_groups_are_bounded_and_unused_ones_retired() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let settings = settings_with(|s| {
        s.consumer.max_auto_created_groups = 2;
        s.clients.channel_expired_timeout = Duration::from_secs(10);
    });
    let broker = h.start_with(settings.clone()).await;
    broker.send(vec![message("m0")]).await.unwrap();
    broker.group_policy("G").await.unwrap();
    broker.group_policy("B").await.unwrap();
    let e = broker.group_policy("C").await.unwrap_err();
    assert!(matches!(e, BrokerError::GroupLimitReached(_)), "{e}");
    assert!(e.to_string().contains("consumer.maxAutoCreatedGroups"), "{e}");
    // Explicitly created groups do not count; known groups keep working.
    broker.put_group("D", false, (None, None), None).await.unwrap();
    broker.group_policy("G").await.unwrap();
    let auto: Vec<_> = broker.list_groups().into_iter().filter(|g| g.auto_created).map(|g| g.name).collect();
    assert_eq!(auto, ["B", "G"]);

    // G received (it has a position); B is only named by a client.
    assert_eq!(broker.receive(receive_request()).await.unwrap().len(), 1);
    broker.register_client("x", ClientKind::SimpleConsumer, Some("B".into()), Vec::new());
    h.clock.advance(11_000);
    broker.retire_idle_groups().await.unwrap();
    assert_eq!(broker.stats().groups_retired, 0, "B is still named by a session");
    broker.expire_clients();
    broker.retire_idle_groups().await.unwrap();
    let s = broker.stats();
    assert_eq!((s.groups_retired, s.auto_created_groups), (1, 1));
    let names: Vec<_> = broker.list_groups().into_iter().map(|g| g.name).collect();
    assert_eq!(names, ["D", "G"], "G keeps its record: it has a position");
    // Room again; and the flag survives a restart.
    broker.group_policy("C").await.unwrap();
    drop(broker);
    let broker = h.start_with(settings).await;
    assert_eq!(broker.stats().auto_created_groups, 2);
    assert!(matches!(broker.group_policy("E").await, Err(BrokerError::GroupLimitReached(_))));
}

#[tokio::test]
async fn only_changed_states_are_flushed_and_idle_ones_leave_memory_keeping_their_position() {
    let h = Harness::new(Arc::new(MemoryLog::new())).await;
    let settings = settings_with(|s| s.consumer.queue_state_idle_time = Duration::from_secs(5));
    let broker = h.start_with(settings.clone()).await;
    for id in ["m0", "m1", "m2"] {
        broker.send(vec![message(id)]).await.unwrap();
    }
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(broker.stats().states.dirty >= 1);
    for m in &got {
        broker.ack("c", "G", "T", &m.receipt_handle).await.unwrap();
    }
    broker.flush_progress().await.unwrap();
    assert_eq!(broker.stats().states.dirty, 0, "nothing left to write");
    // Reading a state does not queue it.
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
    assert_eq!(broker.stats().states.dirty, 0);
    let (stored, _) = h.meta.load_progress().await.unwrap();
    assert!(stored.iter().any(|p| p.group == "G" && p.topic == "T" && p.ack_floor == 3), "{stored:?}");

    // Idle long enough: out of memory, its floor kept.
    let before = broker.stats().states;
    h.clock.advance(6_000);
    assert!(broker.prune_idle_states() >= 1);
    let after = broker.stats().states;
    assert!(after.live < before.live && after.idle >= 1, "{before:?} → {after:?}");
    // Back on next use at the same position: m0..m2 are not delivered again (a new state at
    // the configured start would read this young queue from 0).
    broker.send(vec![message("m3")]).await.unwrap();
    let got = broker.receive(receive_request()).await.unwrap();
    assert_eq!(ids(&got), ["m3"]);
    broker.ack("c", "G", "T", &got[0].receipt_handle).await.unwrap();
    broker.flush_progress().await.unwrap();
    drop(broker);
    let broker = h.start_with(settings).await;
    assert!(broker.receive(receive_request()).await.unwrap().is_empty());
}

/// A log whose appends wait until the test lets them through.
struct GatedLog {
    inner: MemoryLog,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl MessageLog for GatedLog {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        if !messages.iter().any(|m| m.topic.starts_with("rmq_sys_")) {
            self.gate.acquire().await.map_err(|_| StorageError::ShuttingDown)?.forget();
        }
        self.inner.append(messages).await
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
        bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        self.inner.read(topic, queue_id, offset, max, bytes)
    }

    delegate_to_inner!();

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn sends_beyond_the_in_flight_bound_wait_then_get_too_many_requests() {
    let log = Arc::new(GatedLog { inner: MemoryLog::new(), gate: tokio::sync::Semaphore::new(0) });
    let h = Harness::new(log.clone()).await;
    let broker = h
        .start_with(settings_with(|s| {
            s.limits.max_inflight_bytes = 3_000;
            s.limits.max_inflight_bytes_per_connection = 2_000;
            s.limits.inflight_wait_time = Duration::from_millis(100);
        }))
        .await;
    let big = |id: &str| OutgoingMessage { body: Bytes::from(vec![b'x'; 1_000]), ..message(id) };
    let first = tokio::spawn({
        let broker = broker.clone();
        let m = big("a1");
        async move { broker.send_from(Some(&Connection::Client("conn-a".into())), vec![m]).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The same connection is over its own bound; another is over the gateway's.
    let e = broker.send_from(Some(&Connection::Client("conn-a".into())), vec![big("a2")]).await.unwrap_err();
    assert!(matches!(e, BrokerError::TooManyRequests(_)), "{e}");
    assert!(e.to_string().contains("limits.maxInflightBytesPerConnection"), "{e}");
    let second = tokio::spawn({
        let broker = broker.clone();
        let m = big("b1");
        async move { broker.send_from(Some(&Connection::Client("conn-b".into())), vec![m]).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = broker.send_from(Some(&Connection::Client("conn-c".into())), vec![big("c1")]).await.unwrap_err();
    assert!(e.to_string().contains("limits.maxInflightBytes ("), "{e}");
    let s = broker.stats().admission;
    assert_eq!((s.connections, s.refused), (2, 2));
    assert!(s.inflight_bytes > 2_000 && s.inflight_bytes <= 3_000, "{s:?}");
    // Flow control: a waiting send goes through once room is made in time.
    let waiting = tokio::spawn({
        let broker = broker.clone();
        let m = big("c2");
        async move { broker.send_from(Some(&Connection::Client("conn-c".into())), vec![m]).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.gate.add_permits(3);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    waiting.await.unwrap().unwrap();
    let s = broker.stats().admission;
    assert_eq!((s.inflight_bytes, s.waiting_bytes, s.connections), (0, 0, 0));
    assert!(s.peak_inflight_bytes <= 3_000, "{s:?}");
}

#[test]
fn maps_give_memory_back_after_a_crowd_left() {
    let mut m: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
    let peak = m.capacity();
    shrink_if_sparse(&mut m);
    assert_eq!(m.capacity(), peak, "full: kept");
    m.retain(|&k, _| k < 100);
    shrink_if_sparse(&mut m);
    assert!(m.capacity() < peak / 10 && m.len() == 100, "{} of {peak}", m.capacity());
}
