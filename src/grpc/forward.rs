//! Cluster routing of client requests: which node serves a request (the decision table, pure
//! functions over the [`ClusterView`]) and the [`Forwarder`] that passes a request on to that
//! node over gRPC (one lazily connected channel per peer address, bounded by
//! `cluster.forwardTimeout`), copying the client's headers and marking the request forwarded
//! so that it is never forwarded a second time.
//!
//! Node-local state (half messages, scheduled messages) is found again through the node id
//! this layer writes into the ids it hands out: transaction ids and recall handles become
//! `<nodeId>/<id>` in a cluster ([`tag`], [`untag`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::BoxStream;
use crate::broker::BrokerError;
use crate::cluster::{ClusterView, NodeInfo};
use crate::proto::messaging_service_client::MessagingServiceClient;

/// Header a node adds to a request it forwards, with its node id: the receiving node serves
/// it itself (or refuses it with HA_NOT_AVAILABLE), never forwards it again.
pub const FORWARDED_BY: &str = "x-rmq-gateway-forwarded-by";

/// Header of every call a node makes to another (forwarded requests, the peer service) with
/// `cluster.secret`, when one is set: the peer service refuses calls without it.
pub const CLUSTER_SECRET: &str = "x-rmq-gateway-cluster-secret";

/// Headers of the client's request not copied to a forwarded one: transport-level headers the
/// forwarding channel sets itself (compression, deadline, content type), and the node headers
/// (a client cannot pass for a node).
const NOT_COPIED: [&str; 10] = [
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "content-type",
    "content-length",
    "te",
    "user-agent",
    "host",
    FORWARDED_BY,
    CLUSTER_SECRET,
];

/// Where a request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Here.
    Local,
    /// By that node.
    Remote(Arc<NodeInfo>),
    /// Nowhere reachable from here: answered with HA_NOT_AVAILABLE (the client retries).
    Refuse(String),
}

impl Target {
    /// A request already forwarded once is never forwarded again: a node it does not belong
    /// to refuses it (ownership moved; the client retries with a fresh route).
    pub fn settle(self, forwarded_by: Option<&str>) -> Target {
        match (self, forwarded_by) {
            (Target::Remote(node), Some(from)) => Target::Refuse(format!(
                "request forwarded by node `{from}` belongs to node `{}`; not forwarded twice",
                node.node_id
            )),
            (t, _) => t,
        }
    }
}

/// What kind of message a send carries, for where it may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind<'a> {
    /// FIFO: the queue of its message group ([`crate::broker::fifo_queue`]).
    Fifo(&'a str),
    /// Any queue of the topic.
    Plain,
    /// Transactional or scheduled: kept in the accepting node's own log until it is committed
    /// or due, then copied into a queue of the topic that node owns, so accepted by a node
    /// owning one (here when it does, like `Plain`).
    NodeLocal,
}

/// The node serving one queue: here when its shard is open here, else its owner as last
/// seen (here again when the owner is unknown: the broker refuses if it is not open by then).
pub fn queue_target(view: &ClusterView, topic: &str, queue_id: u32) -> Target {
    if view.is_local(topic, queue_id) {
        return Target::Local;
    }
    match view.owner_of(topic, queue_id) {
        Some(node) if node.node_id != view.local_node().node_id => Target::Remote(node),
        Some(_) | None => Target::Local,
    }
}

/// Whether any queue of the topic is open here.
fn owns_any(view: &ClusterView, topic: &str, queue_nums: u32) -> bool {
    (0..queue_nums).any(|q| view.is_local(topic, q))
}

/// Some node owning a queue of the topic (the `pick`-th of the distinct owners, so that
/// successive requests spread over them); here when no owner is known.
fn some_owner(view: &ClusterView, topic: &str, queue_nums: u32, pick: usize) -> Target {
    let mut owners: Vec<Arc<NodeInfo>> = Vec::new();
    for q in 0..queue_nums {
        if let Some(node) = view.owner_of(topic, q)
            && !owners.iter().any(|o| o.node_id == node.node_id)
        {
            owners.push(node);
        }
    }
    if owners.is_empty() {
        return Target::Local;
    }
    let node = owners.swap_remove(pick % owners.len());
    if node.node_id == view.local_node().node_id { Target::Local } else { Target::Remote(node) }
}

/// SendMessage: FIFO to its group's queue's owner; others (transactional and scheduled ones
/// included: they become deliverable in a queue of the node that accepted them) here when a
/// queue of the topic is open here, else to some owner of one.
pub fn send_target(view: &ClusterView, topic: &str, queue_nums: u32, kind: SendKind<'_>, pick: usize) -> Target {
    match kind {
        SendKind::Fifo(group) => queue_target(view, topic, crate::broker::fifo_queue(queue_nums, group)),
        SendKind::Plain | SendKind::NodeLocal if owns_any(view, topic, queue_nums) => Target::Local,
        SendKind::Plain | SendKind::NodeLocal => some_owner(view, topic, queue_nums, pick),
    }
}

/// ReceiveMessage: a named queue (id ≥ 0) to its owner unless it is open here; a request
/// naming no queue (id < 0) here when a queue of the topic is open here, else to some owner.
pub fn receive_target(view: &ClusterView, topic: &str, queue_nums: u32, queue_id: i32, pick: usize) -> Target {
    match u32::try_from(queue_id) {
        Ok(q) if q < queue_nums => queue_target(view, topic, q),
        Ok(_) | Err(_) if owns_any(view, topic, queue_nums) => Target::Local,
        Ok(_) | Err(_) => some_owner(view, topic, queue_nums, pick),
    }
}

/// Every node owning a queue of the topic (this one included when it does), each once.
pub fn topic_owners(view: &ClusterView, topic: &str, queue_nums: u32) -> Vec<Arc<NodeInfo>> {
    let mut owners: Vec<Arc<NodeInfo>> = Vec::new();
    for q in 0..queue_nums {
        if let Some(node) = view.owner_of(topic, q)
            && !owners.iter().any(|o| o.node_id == node.node_id)
        {
            owners.push(node);
        }
    }
    owners
}

/// Header of a receive forwarded as part of another node's sweep over the owners: answer
/// without long-polling.
pub const RECEIVE_NO_WAIT: &str = "x-rmq-receive-no-wait";

/// A request about state one node holds (a half message, a scheduled message).
pub fn node_target(view: &ClusterView, node_id: &str) -> Target {
    if node_id == view.local_node().node_id {
        return Target::Local;
    }
    match view.home_holder(node_id) {
        Some(node) if node.node_id == view.local_node().node_id => Target::Local,
        Some(node) => Target::Remote(node),
        None => Target::Refuse(format!(
            "node `{node_id}` that holds it is not a live member of the cluster, and no live node adopted its \
             messages yet"
        )),
    }
}

/// `id` marked with the node holding what it names.
pub fn tag(node_id: &str, id: &str) -> String {
    format!("{node_id}/{id}")
}

/// The node and inner id of a [`tag`]ged id; `None` for an id without a node (node ids are
/// letters, digits, `-` and `_`).
pub fn untag(tagged: &str) -> Option<(&str, &str)> {
    let (node, id) = tagged.split_once('/')?;
    let valid = !node.is_empty() && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some((node, id))
}

/// Connects to a peer over TCP, then TLS (the name checked is the address's host).
fn tls_connector(
    tls: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<
        Output = std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    > + Send,
> + Clone
+ Send {
    let connector = tokio_rustls::TlsConnector::from(tls);
    tower::service_fn(move |uri: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::other(format!("peer host `{host}` is not a TLS name: {e}")))?;
            Ok(hyper_util::rt::TokioIo::new(connector.connect(name, tcp).await?))
        }
    })
}

/// The node id a request was forwarded by, if it was.
pub fn forwarded_by(md: &MetadataMap) -> Option<String> {
    md.get(FORWARDED_BY).and_then(|v| v.to_str().ok()).map(|s| s.to_string())
}

/// How a node calls the others: over TLS (`cluster.peerTls`), with the cluster secret.
#[derive(Clone, Default)]
pub struct PeerSecurity {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub secret: Option<Arc<str>>,
}

/// Whether `md` carries the cluster secret `secret` (compared in constant time).
pub fn has_secret(md: &MetadataMap, secret: &str) -> bool {
    let Some(given) = md.get(CLUSTER_SECRET).map(|v| v.as_bytes()) else { return false };
    let want = secret.as_bytes();
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Passes requests on to other nodes.
pub struct Forwarder {
    view: Arc<ClusterView>,
    timeout: Duration,
    security: PeerSecurity,
    /// One channel per peer address (a channel reconnects by itself).
    channels: Mutex<HashMap<String, Channel>>,
    /// Spreads requests that any of several owners can serve.
    next: AtomicUsize,
}

impl Forwarder {
    pub fn new(view: Arc<ClusterView>, timeout: Duration) -> Forwarder {
        Forwarder::with_security(view, timeout, PeerSecurity::default())
    }

    pub fn with_security(view: Arc<ClusterView>, timeout: Duration, security: PeerSecurity) -> Forwarder {
        Forwarder { view, timeout, security, channels: Mutex::new(HashMap::new()), next: AtomicUsize::new(0) }
    }

    /// The cluster secret calls to this node must carry, if one is set.
    pub fn secret(&self) -> Option<&Arc<str>> {
        self.security.secret.as_ref()
    }

    /// A request to another node's peer service, with the cluster secret and `bound`.
    pub fn peer_request<T>(&self, message: T, bound: Duration) -> Request<T> {
        let mut req = Request::new(message);
        self.add_secret(req.metadata_mut());
        req.set_timeout(bound);
        req
    }

    fn add_secret(&self, md: &mut MetadataMap) {
        if let Some(v) = self.security.secret.as_deref().and_then(|s| MetadataValue::try_from(s).ok()) {
            md.insert(CLUSTER_SECRET, v);
        }
    }

    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A fresh pick for requests any of several nodes can serve.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The channel to a peer address, connected on first use.
    pub fn channel(&self, peer: &str) -> Result<Channel, BrokerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(peer) {
            return Ok(c.clone());
        }
        let uri = if peer.contains("://") { peer.to_string() } else { format!("http://{peer}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| BrokerError::NotOwner(format!("peer address `{peer}` is not valid: {e}")))?
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true);
        let channel = match &self.security.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(tls_connector(tls.clone())),
        };
        channels.insert(peer.to_string(), channel.clone());
        Ok(channel)
    }

    fn client(&self, node: &NodeInfo) -> Result<MessagingServiceClient<Channel>, BrokerError> {
        Ok(MessagingServiceClient::new(self.channel(&node.peer)?).max_decoding_message_size(usize::MAX))
    }

    /// `bound`, or the client's own deadline (`grpc-timeout`) when that is sooner.
    fn within_client_deadline(md: &MetadataMap, bound: Duration) -> Duration {
        let client = md.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(super::parse_grpc_timeout);
        client.map_or(bound, |d| d.min(bound))
    }

    /// The request to send on: the client's headers (client id, namespace, language,
    /// authorization …) plus [`FORWARDED_BY`], with a deadline of `bound`.
    pub fn outgoing<T>(&self, md: &MetadataMap, message: T, bound: Duration) -> Request<T> {
        let mut req = Request::new(message);
        let mut copied = md.clone();
        for k in NOT_COPIED {
            copied.remove(k);
        }
        if let Ok(v) = MetadataValue::try_from(self.view.local_node().node_id.as_str()) {
            copied.insert(FORWARDED_BY, v);
        }
        self.add_secret(&mut copied);
        *req.metadata_mut() = copied;
        req.set_timeout(bound);
        req
    }

    fn failed(node: &NodeInfo, e: impl std::fmt::Display) -> BrokerError {
        BrokerError::NotOwner(format!("forwarding to node `{}` at {} failed: {e}", node.node_id, node.peer))
    }

    /// Forwards a unary request to `node`, bounded by `cluster.forwardTimeout`.
    pub async fn unary<T, R, F, Fut>(
        &self,
        node: &NodeInfo,
        md: &MetadataMap,
        message: T,
        call: F,
    ) -> Result<R, BrokerError>
    where
        F: FnOnce(MessagingServiceClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, GrpcStatus>>,
    {
        let bound = Self::within_client_deadline(md, self.timeout);
        let client = self.client(node)?;
        let req = self.outgoing(md, message, bound);
        match tokio::time::timeout(bound, call(client, req)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(Self::failed(node, status.message())),
            Err(_) => Err(Self::failed(node, format!("no answer within {}", humantime::format_duration(bound)))),
        }
    }

    /// Forwards a server-streaming request (ReceiveMessage, PullMessage) to `node`; its
    /// responses are passed back as they come. `long_poll` (how long the request may wait for
    /// messages) is added to the bound.
    pub async fn server_stream<T, R, F, Fut>(
        &self,
        node: &NodeInfo,
        md: &MetadataMap,
        message: T,
        long_poll: Duration,
        call: F,
    ) -> Result<BoxStream<R>, BrokerError>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(MessagingServiceClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<Streaming<R>>, GrpcStatus>>,
    {
        let bound = Self::within_client_deadline(md, self.timeout + long_poll);
        let client = self.client(node)?;
        let req = self.outgoing(md, message, bound);
        let started = tokio::time::Instant::now();
        let stream = match tokio::time::timeout(bound, call(client, req)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return Err(Self::failed(node, status.message())),
            Err(_) => {
                return Err(Self::failed(node, format!("no answer within {}", humantime::format_duration(bound))));
            }
        };
        let deadline = tokio::time::sleep_until(started + bound);
        Ok(Box::pin(stream.take_until(deadline)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo { node_id: id.into(), advertised: format!("{id}:8081"), peer: format!("{id}:8081") }
    }

    /// Node `a`'s view of 3 nodes and 3 shards: shard n owned by node n (a, b, c), shard 0
    /// open here.
    fn view() -> Arc<ClusterView> {
        let v = ClusterView::new(node("a"), 3);
        v.set_membership(
            vec![node("a"), node("b"), node("c")],
            vec![Some("a".into()), Some("b".into()), Some("c".into())],
        );
        v.set_local(0, true);
        v
    }

    /// A queue of `topic` in `shard`.
    fn queue_in(v: &ClusterView, topic: &str, shard: u32) -> u32 {
        (0..3).find(|q| v.shard_of(topic, *q) == shard).unwrap()
    }

    fn remote(t: &Target) -> &str {
        match t {
            Target::Remote(n) => &n.node_id,
            other => panic!("expected a remote target, got {other:?}"),
        }
    }

    #[test]
    fn queues_go_to_their_owner() {
        let v = view();
        assert_eq!(queue_target(&v, "T", queue_in(&v, "T", 0)), Target::Local);
        assert_eq!(remote(&queue_target(&v, "T", queue_in(&v, "T", 1))), "b");
        assert_eq!(remote(&queue_target(&v, "T", queue_in(&v, "T", 2))), "c");
        assert_eq!(queue_target(&v, "rmq_sys_x", 1), Target::Local, "system queues are local");
        // Unknown owner: here (the broker decides).
        let lone = ClusterView::new(node("a"), 3);
        assert_eq!(queue_target(&lone, "T", 1), Target::Local);
        // Owned here as seen, but not open yet: here too.
        let opening = view();
        opening.set_local(0, false);
        opening.set_membership(vec![node("a"), node("b")], vec![Some("a".into()), Some("b".into()), None]);
        assert_eq!(queue_target(&opening, "T", queue_in(&opening, "T", 0)), Target::Local);
    }

    #[test]
    fn sends() {
        let v = view();
        // FIFO: the owner of the group's queue, whatever is open here.
        for g in ["g1", "g2", "g3", "g4", "g5", "g6"] {
            let q = crate::broker::fifo_queue(3, g);
            assert_eq!(send_target(&v, "T", 3, SendKind::Fifo(g), 0), queue_target(&v, "T", q), "group {g}");
        }
        // Plain: here while a queue of the topic is open here.
        assert_eq!(send_target(&v, "T", 3, SendKind::Plain, 7), Target::Local);
        // None open here: spread over the owners.
        let only = ClusterView::new(node("a"), 3);
        only.set_membership(vec![node("b"), node("c")], vec![Some("b".into()), Some("c".into()), Some("c".into())]);
        let picked: std::collections::BTreeSet<String> =
            (0..4).map(|p| remote(&send_target(&only, "T", 3, SendKind::Plain, p)).to_string()).collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec!["b", "c"]);
        // Transactional and scheduled: to a node owning a queue of the topic, like the others.
        assert!(matches!(send_target(&only, "T", 3, SendKind::NodeLocal, 0), Target::Remote(_)));
        assert_eq!(send_target(&v, "T", 3, SendKind::NodeLocal, 0), Target::Local);
        // A one-queue topic whose queue is elsewhere.
        let q0_shard = v.shard_of("T", 0);
        let expected = if q0_shard == 0 { Target::Local } else { queue_target(&v, "T", 0) };
        assert_eq!(send_target(&v, "T", 1, SendKind::Plain, 0), expected);
    }

    #[test]
    fn receives() {
        let v = view();
        let (here, b) = (queue_in(&v, "T", 0) as i32, queue_in(&v, "T", 1) as i32);
        assert_eq!(receive_target(&v, "T", 3, here, 0), Target::Local);
        assert_eq!(remote(&receive_target(&v, "T", 3, b, 0)), "b", "a named queue goes to its owner");
        assert_eq!(receive_target(&v, "T", 3, -1, 0), Target::Local, "any queue: one is open here");
        assert_eq!(receive_target(&v, "T", 3, 99, 0), Target::Local, "no such queue: any queue");
        let only = ClusterView::new(node("a"), 3);
        only.set_membership(vec![node("b")], vec![Some("b".into()), Some("b".into()), Some("b".into())]);
        assert_eq!(remote(&receive_target(&only, "T", 3, -1, 5)), "b");
    }

    #[test]
    fn forwarded_requests_are_not_forwarded_again() {
        let v = view();
        let b = queue_in(&v, "T", 1);
        assert_eq!(queue_target(&v, "T", b).settle(None), queue_target(&v, "T", b));
        assert!(matches!(queue_target(&v, "T", b).settle(Some("c")), Target::Refuse(_)));
        assert_eq!(queue_target(&v, "T", queue_in(&v, "T", 0)).settle(Some("c")), Target::Local);
    }

    #[test]
    fn node_tags() {
        let v = view();
        let id = tag("b", "0A1B2C");
        assert_eq!(untag(&id), Some(("b", "0A1B2C")));
        assert_eq!(remote(&node_target(&v, "b")), "b");
        assert_eq!(node_target(&v, "a"), Target::Local);
        assert!(matches!(node_target(&v, "gone"), Target::Refuse(_)));
        assert_eq!(untag("0A1B2C"), None);
        assert_eq!(untag("/x"), None);
        assert_eq!(untag("a b/x"), None);
        // Recall handles are base64url: the first '/' is the tag's.
        assert_eq!(untag("n-1/djEgVCA0MiAx"), Some(("n-1", "djEgVCA0MiAx")));
    }

    #[test]
    fn the_cluster_secret_is_the_nodes_not_the_clients() {
        let secret = PeerSecurity { tls: None, secret: Some(Arc::from("s3cr3t")) };
        let f = Forwarder::with_security(view(), Duration::from_secs(3), secret);
        let mut md = MetadataMap::new();
        md.insert(CLUSTER_SECRET, MetadataValue::from_static("guess"));
        assert!(!has_secret(&md, "s3cr3t") && has_secret(&md, "guess"));
        assert!(has_secret(f.outgoing(&md, (), Duration::from_secs(1)).metadata(), "s3cr3t"));
        assert!(has_secret(f.peer_request((), Duration::from_secs(1)).metadata(), "s3cr3t"));
        let open = Forwarder::new(view(), Duration::from_secs(3));
        let passed = open.outgoing(&md, (), Duration::from_secs(1));
        assert!(passed.metadata().get(CLUSTER_SECRET).is_none(), "a client's copy is never passed on");
        assert!(!has_secret(&MetadataMap::new(), ""), "no header is no secret");
    }

    #[test]
    fn forwarded_headers() {
        let f = Forwarder::new(view(), Duration::from_secs(3));
        let mut md = MetadataMap::new();
        md.insert("x-mq-client-id", MetadataValue::from_static("cid"));
        md.insert("authorization", MetadataValue::from_static("MQv2-HMAC-SHA1 Credential=ak"));
        md.insert("grpc-encoding", MetadataValue::from_static("gzip"));
        md.insert(FORWARDED_BY, MetadataValue::from_static("spoofed"));
        md.insert("grpc-timeout", MetadataValue::from_static("1500m"));
        assert_eq!(Forwarder::within_client_deadline(&md, Duration::from_secs(3)), Duration::from_millis(1500));
        assert_eq!(Forwarder::within_client_deadline(&md, Duration::from_secs(1)), Duration::from_secs(1));
        let req = f.outgoing(&md, (), Duration::from_secs(3));
        let got = req.metadata();
        assert_eq!(got.get("x-mq-client-id").unwrap(), "cid");
        assert_eq!(got.get("authorization").unwrap(), "MQv2-HMAC-SHA1 Credential=ak");
        assert!(got.get("grpc-encoding").is_none());
        assert_eq!(got.get(FORWARDED_BY).unwrap(), "a");
        assert_eq!(forwarded_by(got).as_deref(), Some("a"));
    }
}
