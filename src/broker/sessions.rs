//! Client sessions: who is connected (kind, group, the topics a producer publishes to), when
//! each was last seen, and what a client leaves behind when it goes — by saying goodbye
//! (NotifyClientTermination) or by falling silent for `server.channelExpiredTimeout` (SDK
//! processes pick a new client id at every start, and a killed one never says goodbye).
//! Either way its long polls end, its auto-renewed messages are released, and its relay
//! channel and remembered receives are dropped. The periodic housekeeping that expires
//! sessions also prunes idle consumer state and retires unused auto-created groups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::{Broker, ClientInfo, ClientKind, lock, shrink_if_sparse, validate};

/// One client as the gateway knows it.
pub(super) struct ClientSession {
    /// Tells this session from a later one of the same client id.
    id: u64,
    kind: ClientKind,
    group: Option<String>,
    /// Producers: the topics they publish to (orphan transaction checks go to them).
    topics: Vec<String>,
    /// Broker-clock time of its last request.
    last_seen_ms: i64,
    /// Receives (long polls) running: the client is there while they last.
    active_receives: u32,
    /// Cancelled when the client says goodbye or expires: ends its long polls at once.
    gone: CancellationToken,
}

/// Sessions and what was done with them.
#[derive(Default)]
pub(super) struct Sessions {
    pub clients: std::sync::Mutex<HashMap<String, ClientSession>>,
    next_id: AtomicU64,
    expired: AtomicU64,
}

/// A receive in progress: keeps its client alive until it ends (then counts as seen), and
/// tells the receive when the client is gone.
pub(crate) struct Presence {
    broker: Broker,
    client_id: String,
    session: u64,
    gone: CancellationToken,
}

impl Presence {
    /// Completes when the client says goodbye or expires.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.gone.cancelled()
    }
}

impl Broker {
    /// A receive handed out deliveries its client auto-renews: index them for the client's
    /// departure (released at once if it already said goodbye meanwhile).
    pub(super) fn renewing_for(
        &self,
        presence: &Presence,
        group: &str,
        topic: &str,
        queue_ids: impl Iterator<Item = u32>,
    ) {
        self.note_renewals(&presence.client_id, group, topic, queue_ids);
        if presence.gone.is_cancelled() {
            self.release_client_deliveries(&presence.client_id);
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let now = self.broker.now_ms();
        if let Some(s) = lock(&self.broker.inner.sessions.clients).get_mut(&self.client_id)
            && s.id == self.session
        {
            s.active_receives = s.active_receives.saturating_sub(1);
            s.last_seen_ms = now;
        }
    }
}

/// Counts for the admin API.
#[derive(Debug, Clone, Default)]
pub struct SessionStats {
    /// Sessions held (expired ones not reaped yet included).
    pub clients: usize,
    /// Sessions ended by expiry since start.
    pub expired: u64,
    /// Telemetry command channels attached.
    pub relay_channels: usize,
    /// Receives remembered for attempt-id retries.
    pub remembered_receives: usize,
}

impl Broker {
    fn expiry_ms(&self) -> i64 {
        self.inner.settings.clients.channel_expired_timeout.as_millis() as i64
    }

    fn new_session(&self, kind: ClientKind, group: Option<String>) -> ClientSession {
        ClientSession {
            id: self.inner.sessions.next_id.fetch_add(1, Ordering::Relaxed),
            kind,
            group,
            topics: Vec::new(),
            last_seen_ms: self.now_ms(),
            active_receives: 0,
            gone: CancellationToken::new(),
        }
    }

    fn is_alive(&self, s: &ClientSession, now: i64) -> bool {
        s.active_receives > 0 || now - s.last_seen_ms < self.expiry_ms()
    }

    /// Records (or refreshes) a client from its Settings: its kind, consumer group, and the
    /// topics a producer publishes to.
    pub fn register_client(&self, client_id: &str, kind: ClientKind, group: Option<String>, topics: Vec<String>) {
        let now = self.now_ms();
        let mut clients = lock(&self.inner.sessions.clients);
        let session = clients.entry(client_id.to_string()).or_insert_with(|| self.new_session(kind, None));
        session.kind = kind;
        session.group = group;
        session.topics = topics;
        session.last_seen_ms = now;
    }

    /// A live producer of `topic` with a Telemetry stream here, to check an orphan with
    /// (a different one each time when there are several).
    pub(super) fn transaction_checker(&self, topic: &str) -> Option<String> {
        let now = self.now_ms();
        let candidates: Vec<String> = lock(&self.inner.sessions.clients)
            .iter()
            .filter(|(_, s)| s.kind == ClientKind::Producer && self.is_alive(s, now))
            .filter(|(_, s)| s.topics.iter().any(|t| t == topic))
            .map(|(id, _)| id.clone())
            .collect();
        let candidates: Vec<String> = candidates.into_iter().filter(|id| self.client_connected(id)).collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.next_serial() as usize % candidates.len();
        candidates.into_iter().nth(i)
    }

    /// A receive starts: marks the client alive for as long as it runs (a receive may come
    /// before any heartbeat: the session is created then).
    pub(crate) fn client_receiving(&self, client_id: &str) -> Presence {
        let now = self.now_ms();
        let mut clients = lock(&self.inner.sessions.clients);
        let session = clients.entry(client_id.to_string()).or_insert_with(|| self.new_session(ClientKind::Other, None));
        session.last_seen_ms = now;
        session.active_receives += 1;
        Presence {
            broker: self.clone(),
            client_id: client_id.to_string(),
            session: session.id,
            gone: session.gone.clone(),
        }
    }

    /// Marks a client alive (every consumer RPC and Telemetry message).
    pub fn touch_client(&self, client_id: &str) {
        let now = self.now_ms();
        if let Some(s) = lock(&self.inner.sessions.clients).get_mut(client_id) {
            s.last_seen_ms = now;
        }
    }

    pub async fn heartbeat(&self, client_id: &str, kind: ClientKind, group: Option<&str>) -> super::BrokerResult<()> {
        if let Some(g) = group.filter(|g| !g.is_empty()) {
            validate::validate_group(g)?;
        }
        let now = self.now_ms();
        let mut clients = lock(&self.inner.sessions.clients);
        let session = clients
            .entry(client_id.to_string())
            .or_insert_with(|| self.new_session(kind, group.filter(|g| !g.is_empty()).map(str::to_string)));
        session.last_seen_ms = now;
        if session.kind == ClientKind::Other {
            session.kind = kind;
        }
        Ok(())
    }

    /// Clients seen within the expiry time, by id.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let now = self.now_ms();
        let mut out: Vec<ClientInfo> = lock(&self.inner.sessions.clients)
            .iter()
            .filter(|(_, s)| self.is_alive(s, now))
            .map(|(id, s)| ClientInfo {
                client_id: id.clone(),
                kind: s.kind,
                group: s.group.clone(),
                last_seen_ms_ago: (now - s.last_seen_ms).max(0) as u64,
                connected: false,
            })
            .collect();
        for c in &mut out {
            c.connected = self.client_connected(&c.client_id);
        }
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    pub(crate) fn client_alive(&self, client_id: &str) -> bool {
        let now = self.now_ms();
        lock(&self.inner.sessions.clients).get(client_id).is_some_and(|s| self.is_alive(s, now))
    }

    /// Consumer groups named by a live session.
    pub(super) fn groups_in_use(&self) -> std::collections::HashSet<String> {
        lock(&self.inner.sessions.clients).values().filter_map(|s| s.group.clone()).collect()
    }

    /// A client shut down: forget it, end its long polls (so nothing is handed to a client
    /// that is gone, and its shutdown does not wait for them) and let its auto-renewed
    /// messages be delivered again soon.
    pub fn client_terminated(&self, client_id: &str) {
        let session = lock(&self.inner.sessions.clients).remove(client_id);
        if let Some(s) = &session {
            s.gone.cancel();
            tracing::debug!(client_id, kind = ?s.kind, group = ?s.group, "client terminated");
        }
        self.forget_client(client_id);
    }

    /// Drops what a departed client left: its relay channel, remembered receives and the hold
    /// of its auto-renewed deliveries.
    fn forget_client(&self, client_id: &str) {
        self.drop_client_channel(client_id);
        lock(&self.inner.attempts).forget_client(client_id);
        self.release_client_deliveries(client_id);
    }

    /// Ends the sessions of clients not seen for `server.channelExpiredTimeout` (and with no
    /// receive running), as if they had said goodbye; returns how many.
    pub fn expire_clients(&self) -> usize {
        let now = self.now_ms();
        let expired: Vec<(String, ClientSession)> = {
            let mut clients = lock(&self.inner.sessions.clients);
            let ids: Vec<String> =
                clients.iter().filter(|(_, s)| !self.is_alive(s, now)).map(|(id, _)| id.clone()).collect();
            ids.into_iter().filter_map(|id| clients.remove(&id).map(|s| (id, s))).collect()
        };
        for (client_id, s) in &expired {
            s.gone.cancel();
            tracing::debug!(client_id, kind = ?s.kind, group = ?s.group, "client expired");
            self.forget_client(client_id);
        }
        if !expired.is_empty() {
            self.inner.sessions.expired.fetch_add(expired.len() as u64, Ordering::Relaxed);
            tracing::info!(count = expired.len(), "expired silent clients (server.channelExpiredTimeout)");
        }
        expired.len()
    }

    /// Maps keyed by client grow with a crowd of clients and keep their size after it left:
    /// shrink them once they are mostly empty.
    fn shrink_client_maps(&self) {
        shrink_if_sparse(&mut lock(&self.inner.sessions.clients));
        self.shrink_client_channels();
        self.shrink_renewals();
        lock(&self.inner.attempts).shrink();
        shrink_if_sparse(&mut lock(&self.inner.auto_groups));
    }

    pub fn session_stats(&self) -> SessionStats {
        SessionStats {
            clients: lock(&self.inner.sessions.clients).len(),
            expired: self.inner.sessions.expired.load(Ordering::Relaxed),
            relay_channels: self.client_channel_count(),
            remembered_receives: lock(&self.inner.attempts).len(),
        }
    }

    /// Expires silent clients, prunes idle consumer state and retires unused auto-created
    /// groups, until shutdown. Runs often enough that a session outlives its expiry by at most
    /// a quarter of it (and 5 s).
    pub async fn run_housekeeping(&self) {
        let expiry = self.inner.settings.clients.channel_expired_timeout;
        let every = (expiry / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let prune_every = (self.inner.settings.consumer.queue_state_idle_time / 4).min(Duration::from_secs(30));
        let mut last_prune = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.expire_clients();
            self.shrink_client_maps();
            if last_prune.elapsed() >= prune_every {
                last_prune = tokio::time::Instant::now();
                let pruned = self.prune_idle_states();
                if pruned > 0 {
                    tracing::debug!(pruned, "idle consumer states left memory");
                }
            }
            if let Err(e) = self.retire_idle_groups().await {
                tracing::warn!(error = %e, "retiring unused auto-created groups failed; will retry");
            }
        }
    }
}
