//! The internal `rmq.gateway.cluster.v1.Peer` service nodes of one cluster call each other
//! on (served on the client gRPC port), and the broker hook that uses it: an orphan
//! transaction check of a half message held by a node with no producer of the topic
//! connected is pushed by another node on a producer connected there
//! ([`PeerRelay`] → `RelayCommand` → [`PeerService`]). The producer's EndTransaction carries
//! the holder's node id in its transaction id and is forwarded back to the holder.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tonic::{Request, Response, Status as GrpcStatus};

use super::forward::Forwarder;
use crate::broker::{Broker, BrokerError, BrokerResult, ClientCommand, OrphanCheckRelay, QueueHandOver};
use crate::storage::{AppendMessage, Properties};

/// Generated `rmq.gateway.cluster.v1` types (from `apis/rmq/gateway/cluster/v1/peer.proto`).
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("rmq.gateway.cluster.v1");
}

use pb::peer_client::PeerClient;
use pb::peer_server::{Peer, PeerServer};

/// Serves `RelayCommand` and `HandOver` with the local broker, to callers with the cluster
/// secret when one is set (`cluster.secret`; UNAUTHENTICATED otherwise).
#[derive(Clone)]
pub struct PeerService {
    broker: Broker,
    secret: Option<Arc<str>>,
}

impl PeerService {
    pub fn new(broker: Broker, secret: Option<Arc<str>>) -> PeerService {
        PeerService { broker, secret }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), GrpcStatus> {
        match &self.secret {
            Some(secret) if !super::forward::has_secret(request.metadata(), secret) => {
                Err(GrpcStatus::unauthenticated(
                    "the peer service takes calls from the nodes of this cluster only (cluster.secret)",
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn relay_command(
        &self,
        request: Request<pb::RelayCommandRequest>,
    ) -> Result<Response<pb::RelayCommandResponse>, GrpcStatus> {
        self.authorize(&request)?;
        let req = request.into_inner();
        // Refuse what a client's stream could not decode rather than break its stream.
        if crate::proto::TelemetryCommand::decode(req.telemetry_command.as_ref()).is_err() {
            return Err(GrpcStatus::invalid_argument("telemetry_command is not an encoded TelemetryCommand"));
        }
        let delivered = self.broker.push_relayed_check(&req.topic, req.telemetry_command);
        tracing::debug!(topic = req.topic, from = req.from_node, delivered, "relayed command");
        Ok(Response::new(pb::RelayCommandResponse { delivered }))
    }

    async fn hand_over(
        &self,
        request: Request<pb::HandOverRequest>,
    ) -> Result<Response<pb::HandOverResponse>, GrpcStatus> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in req.messages {
            let properties = Properties::decode(m.properties)
                .map_err(|e| GrpcStatus::invalid_argument(format!("handed-over message properties: {e}")))?;
            messages.push(AppendMessage {
                topic: std::sync::Arc::from(req.topic.as_str()),
                queue_id: 0,
                born_timestamp_ms: m.born_timestamp_ms,
                flags: m.flags,
                tag_hash: m.tag_hash,
                properties,
                body: m.body,
            });
        }
        match self.broker.accept_handed_over(&req.topic, messages).await {
            Ok(stored) => {
                tracing::debug!(topic = req.topic, from = req.from_node, stored, "handed-over messages stored");
                Ok(Response::new(pb::HandOverResponse { stored: u32::try_from(stored).unwrap_or(u32::MAX) }))
            }
            Err(e) => Err(GrpcStatus::unavailable(format!("{:?}: {e}", super::status::code_of(&e)))),
        }
    }
}

/// Longest wait for one node to store handed-over messages.
const HAND_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The broker's [`QueueHandOver`] in a cluster: stores due messages on a node serving a queue of
/// their topic, trying each such node once.
#[derive(Clone)]
pub struct PeerHandOver {
    forwarder: Arc<Forwarder>,
}

impl PeerHandOver {
    pub fn new(forwarder: Arc<Forwarder>) -> PeerHandOver {
        PeerHandOver { forwarder }
    }
}

#[tonic::async_trait]
impl QueueHandOver for PeerHandOver {
    async fn hand_over(&self, topic: &str, queue_nums: u32, messages: Vec<AppendMessage>) -> BrokerResult<()> {
        let view = self.forwarder.view();
        let local = view.local_node().node_id.clone();
        let mut owners: Vec<_> =
            super::forward::topic_owners(view, topic, queue_nums).into_iter().filter(|n| n.node_id != local).collect();
        if owners.is_empty() {
            return Err(BrokerError::NotOwner(format!("no node serves a queue of topic `{topic}`")));
        }
        let start = self.forwarder.pick() % owners.len();
        owners.rotate_left(start);
        let handed: Vec<pb::HandedMessage> = messages
            .into_iter()
            .map(|m| {
                let mut properties = bytes::BytesMut::with_capacity(m.properties.encoded_len());
                m.properties.encode(&mut properties);
                pb::HandedMessage {
                    born_timestamp_ms: m.born_timestamp_ms,
                    flags: m.flags,
                    tag_hash: m.tag_hash,
                    properties: properties.freeze(),
                    body: m.body,
                }
            })
            .collect();
        let mut last = String::new();
        for node in owners {
            let channel = match self.forwarder.channel(&node.peer) {
                Ok(c) => c,
                Err(e) => {
                    last = format!("node `{}`: {e}", node.node_id);
                    continue;
                }
            };
            // Bounded tighter than a forwarded request: the timer task waits for it.
            let bound = self.forwarder.timeout().min(HAND_OVER_TIMEOUT);
            let req = self.forwarder.peer_request(
                pb::HandOverRequest { topic: topic.to_string(), messages: handed.clone(), from_node: local.clone() },
                bound,
            );
            let mut client = PeerClient::new(channel);
            match tokio::time::timeout(bound, client.hand_over(req)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) => last = format!("node `{}`: {}", node.node_id, status.message()),
                Err(_) => last = format!("node `{}`: no answer in time", node.node_id),
            }
        }
        Err(BrokerError::NotOwner(format!("handing messages of topic `{topic}` over failed ({last})")))
    }
}

/// The broker's [`OrphanCheckRelay`] in a cluster: asks the other live nodes, one after the
/// other, to push the check on a producer of the topic connected to them.
#[derive(Clone)]
pub struct PeerRelay {
    forwarder: Arc<Forwarder>,
}

impl PeerRelay {
    pub fn new(forwarder: Arc<Forwarder>) -> PeerRelay {
        PeerRelay { forwarder }
    }

    /// Offers `payload` to the other nodes until one delivers it; false if none did.
    pub async fn relay(&self, topic: &str, payload: Bytes) -> bool {
        let view = self.forwarder.view();
        let local = view.local_node().node_id.clone();
        let mut nodes: Vec<_> = view.nodes().into_iter().filter(|n| n.node_id != local).collect();
        if nodes.is_empty() {
            return false;
        }
        let start = self.forwarder.pick() % nodes.len();
        nodes.rotate_left(start);
        for node in nodes {
            let channel = match self.forwarder.channel(&node.peer) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(node = node.node_id, error = %e, "no channel to relay an orphan check");
                    continue;
                }
            };
            let req = self.forwarder.peer_request(
                pb::RelayCommandRequest {
                    topic: topic.to_string(),
                    telemetry_command: payload.clone(),
                    from_node: local.clone(),
                },
                self.forwarder.timeout(),
            );
            let mut client = PeerClient::new(channel);
            match tokio::time::timeout(self.forwarder.timeout(), client.relay_command(req)).await {
                Ok(Ok(resp)) if resp.get_ref().delivered => {
                    tracing::debug!(node = node.node_id, topic, "orphan check relayed");
                    return true;
                }
                Ok(Ok(_)) => {}
                Ok(Err(status)) => tracing::debug!(node = node.node_id, error = %status.message(), "relay refused"),
                Err(_) => tracing::debug!(node = node.node_id, "relay timed out"),
            }
        }
        false
    }
}

impl OrphanCheckRelay for PeerRelay {
    fn relay_orphan_check(&self, topic: &str, command: ClientCommand) {
        let node = self.forwarder.view().local_node().node_id.clone();
        let Some(encoded) = super::telemetry::outbound(command, "", Some(&node)) else {
            return;
        };
        let payload = Bytes::from(encoded.encode_to_vec());
        let relay = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            if !relay.relay(&topic, payload).await {
                tracing::debug!(topic, "no node has a producer of the topic connected to check an orphan with");
            }
        });
    }
}
