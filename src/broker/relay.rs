//! Server-initiated commands to connected clients and the replies they answer with, matched
//! by nonce: a client's thread stack trace, and "consume this message directly" (what
//! RocketMQ's dashboard offers per consumer). The protocol layer attaches one command channel
//! per client Telemetry stream; the admin API asks through [`Broker`]. Orphan transaction
//! checks travel the same way, without a reply (the producer answers with EndTransaction).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::error::{BrokerError, BrokerResult};
use super::message::DeliveredMessage;
use super::{Broker, lock};

/// How long a client has to answer a relayed command (Apache
/// `grpcProxyRelayRequestTimeoutInSeconds`).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A command for one client, written to its Telemetry stream.
#[derive(Debug, Clone)]
pub enum ClientCommand {
    PrintThreadStackTrace {
        nonce: String,
    },
    VerifyMessage {
        nonce: String,
        message: Box<DeliveredMessage>,
    },
    /// "What became of this transaction?" (answered by an EndTransaction call).
    RecoverOrphanedTransaction {
        message: Box<DeliveredMessage>,
        transaction_id: String,
    },
    /// A command another node of the cluster encoded for one of the clients connected here
    /// (an orphan check of a half message that node holds): written to the stream as is.
    Relayed {
        payload: bytes::Bytes,
    },
}

/// A client's answer to a [`ClientCommand`].
#[derive(Debug, Clone)]
pub enum ClientReply {
    /// `Err` carries the client's status message.
    ThreadStackTrace {
        nonce: String,
        outcome: Result<String, String>,
    },
    VerifyMessageResult {
        nonce: String,
        outcome: VerifyOutcome,
    },
}

/// What a client did with a message it was asked to consume directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// Its listener consumed the message successfully.
    Consumed,
    /// Its listener failed (Apache `CR_LATER`).
    FailedToConsume,
    /// The message failed its digest check on the client (Apache `CR_RETURN_NULL`).
    Corrupted,
    /// Any other status the client answered with (e.g. a simple consumer: not implemented).
    Refused { code: i32, message: String },
}

/// Attached command channels and replies awaited.
#[derive(Default)]
pub(super) struct Relay {
    channels: Mutex<HashMap<String, (u64, mpsc::Sender<ClientCommand>)>>,
    pending: Mutex<HashMap<String, oneshot::Sender<ClientReply>>>,
    next: AtomicU64,
}

impl ClientReply {
    fn nonce(&self) -> &str {
        match self {
            ClientReply::ThreadStackTrace { nonce, .. } | ClientReply::VerifyMessageResult { nonce, .. } => nonce,
        }
    }
}

impl Broker {
    /// A client's Telemetry stream opened: commands for it go to `tx`. Returns the attachment
    /// id to detach with (a reconnecting client may attach its new stream first).
    pub fn attach_client_channel(&self, client_id: &str, tx: mpsc::Sender<ClientCommand>) -> u64 {
        let relay = &self.inner.relay;
        let id = relay.next.fetch_add(1, Ordering::Relaxed);
        lock(&relay.channels).insert(client_id.to_string(), (id, tx));
        id
    }

    /// The stream `attachment` ended.
    pub fn detach_client_channel(&self, client_id: &str, attachment: u64) {
        let mut channels = lock(&self.inner.relay.channels);
        if channels.get(client_id).is_some_and(|(id, _)| *id == attachment) {
            channels.remove(client_id);
        }
    }

    /// A departed client: its command channel goes (a Telemetry stream still open attaches a
    /// new one, so commands reach a client that was only quiet).
    pub(super) fn drop_client_channel(&self, client_id: &str) {
        lock(&self.inner.relay.channels).remove(client_id);
    }

    pub(super) fn shrink_client_channels(&self) {
        super::shrink_if_sparse(&mut lock(&self.inner.relay.channels));
    }

    /// Command channels attached.
    pub(super) fn client_channel_count(&self) -> usize {
        lock(&self.inner.relay.channels).len()
    }

    /// Whether a client has a Telemetry stream open.
    pub fn client_connected(&self, client_id: &str) -> bool {
        lock(&self.inner.relay.channels).contains_key(client_id)
    }

    /// A client answered a relayed command; unknown or late nonces are ignored.
    pub fn client_reply(&self, reply: ClientReply) {
        let waiter = lock(&self.inner.relay.pending).remove(reply.nonce());
        match waiter {
            Some(w) => {
                let _ = w.send(reply);
            }
            None => tracing::debug!(nonce = reply.nonce(), "reply to no pending command (late or unknown)"),
        }
    }

    /// Queues a command that expects no reply, without waiting: false if the client has no
    /// stream here or its stream is backed up (a stuck client must not hold up the caller).
    pub(super) fn send_client_command(&self, client_id: &str, command: ClientCommand) -> bool {
        let tx = lock(&self.inner.relay.channels).get(client_id).map(|(_, tx)| tx.clone());
        tx.is_some_and(|tx| tx.try_send(command).is_ok())
    }

    async fn relay(&self, client_id: &str, make: impl FnOnce(String) -> ClientCommand) -> BrokerResult<ClientReply> {
        let relay = &self.inner.relay;
        let tx = lock(&relay.channels).get(client_id).map(|(_, tx)| tx.clone());
        let Some(tx) = tx else {
            return Err(BrokerError::ClientNotConnected(format!(
                "client `{client_id}` has no open Telemetry stream on this gateway"
            )));
        };
        let nonce = relay.next.fetch_add(1, Ordering::Relaxed).to_string();
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&relay.pending).insert(nonce.clone(), reply_tx);
        let outcome = async {
            tx.send(make(nonce.clone())).await.map_err(|_| {
                BrokerError::ClientNotConnected(format!(
                    "client `{client_id}` disconnected before the command was sent"
                ))
            })?;
            match tokio::time::timeout(REPLY_TIMEOUT, reply_rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) | Err(_) => Err(BrokerError::ClientTimeout(format!(
                    "client `{client_id}` did not answer within {}",
                    humantime::format_duration(REPLY_TIMEOUT)
                ))),
            }
        }
        .await;
        lock(&relay.pending).remove(&nonce);
        outcome
    }

    /// Asks a connected client for the stack traces of its threads.
    pub async fn client_thread_stack_trace(&self, client_id: &str) -> BrokerResult<String> {
        match self.relay(client_id, |nonce| ClientCommand::PrintThreadStackTrace { nonce }).await? {
            ClientReply::ThreadStackTrace { outcome: Ok(text), .. } => Ok(text),
            ClientReply::ThreadStackTrace { outcome: Err(why), .. } => {
                Err(BrokerError::BadRequest(format!("client `{client_id}` refused: {why}")))
            }
            ClientReply::VerifyMessageResult { .. } => {
                Err(BrokerError::BadRequest(format!("client `{client_id}` answered with the wrong reply")))
            }
        }
    }

    /// Hands a stored message to a connected consumer's listener ("consume directly") and
    /// reports what it did. Consumer progress is not touched.
    pub async fn verify_message(&self, client_id: &str, topic: &str, message_id: &str) -> BrokerResult<VerifyOutcome> {
        let stored = self
            .inner
            .log
            .find_by_message_id(message_id)?
            .into_iter()
            .find(|m| &*m.topic == topic)
            .ok_or_else(|| BrokerError::MessageNotFound(format!("no message `{message_id}` in topic `{topic}`")))?;
        let message = Box::new(DeliveredMessage::from_stored(stored, String::new(), 1));
        match self.relay(client_id, |nonce| ClientCommand::VerifyMessage { nonce, message }).await? {
            ClientReply::VerifyMessageResult { outcome, .. } => Ok(outcome),
            ClientReply::ThreadStackTrace { .. } => {
                Err(BrokerError::BadRequest(format!("client `{client_id}` answered with the wrong reply")))
            }
        }
    }
}
