//! The `apache.rocketmq.v2.MessagingService` gRPC service: reads request headers, converts
//! proto ⇄ domain, calls the [`Broker`], and maps errors to RocketMQ status codes. Business
//! errors travel in the response `Status` with gRPC OK; gRPC status codes are used only for
//! unimplemented RPCs and broken streams.
//!
//! In a cluster ([`MessagingServiceImpl::with_cluster`]) routes name each queue's owner and
//! requests for queues or state of another node are forwarded to it (`forward.rs`).

mod convert;
pub mod forward;
#[cfg(test)]
mod forward_tests;
pub mod metered;
mod namespace;
pub mod otlp;
pub mod peer;
mod pull;
pub mod status;
mod telemetry;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use crate::broker::{
    Broker, BrokerError, ClientKind, Connection, MessageType, ReceiveRequest, Resolution, ResolutionSource,
};
use crate::cluster::{ClusterView, NodeInfo};
use crate::proto::messaging_service_server::{MessagingService, MessagingServiceServer};
use crate::proto::{self, Code};
use forward::{Forwarder, SendKind, Target};
use status::{from_error, ok, status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send + 'static>>;

/// What every request carries in its headers.
struct Context {
    client_id: String,
    namespace: String,
    language: String,
    /// Time left before the client's deadline (`grpc-timeout`).
    deadline: Option<Duration>,
    local_addr: Option<SocketAddr>,
    /// The client's end of the connection (tells connections apart for the in-flight bounds).
    remote_addr: Option<SocketAddr>,
    /// `x-mq-request-id` (the Java SDK sends one per request), for logs.
    request_id: String,
}

impl Context {
    fn of<T>(req: &Request<T>) -> Context {
        // One pass over the headers (a dozen or so) instead of five hashed look-ups; the first
        // value of a repeated header counts, as with `get`. Names arrive lower-cased (HTTP/2).
        let [mut client_id, mut namespace, mut language, mut timeout, mut request_id] = [None; 5];
        for entry in req.metadata().iter() {
            let KeyAndValueRef::Ascii(key, value) = entry else { continue };
            let slot = match key.as_str() {
                "x-mq-client-id" => &mut client_id,
                "x-mq-namespace" => &mut namespace,
                "x-mq-language" => &mut language,
                "grpc-timeout" => &mut timeout,
                "x-mq-request-id" => &mut request_id,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.to_str().ok());
            }
        }
        let get = |v: Option<Option<&str>>| v.flatten().unwrap_or_default().trim().to_string();
        Context {
            client_id: get(client_id),
            namespace: get(namespace),
            language: get(language),
            deadline: timeout.flatten().and_then(parse_grpc_timeout),
            local_addr: req.local_addr(),
            remote_addr: req.remote_addr(),
            request_id: get(request_id),
        }
    }

    fn require_client_id(&self) -> Result<(), proto::Status> {
        if self.client_id.is_empty() {
            Err(status(Code::ClientIdRequired, "x-mq-client-id header is required"))
        } else {
            Ok(())
        }
    }
}

/// Parses the gRPC `grpc-timeout` header (`<digits><unit>`).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What the gRPC service is configured with, besides the broker's own settings.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// The gRPC port, advertised when the connection's own address is unknown.
    pub grpc_server_port: u16,
    /// Host (and optional port) advertised in routes. Empty: the address the client reached.
    pub advertised_address: String,
    /// Name of the (single) broker in routes.
    pub broker_name: String,
    /// Largest gRPC request accepted (bytes).
    pub grpc_max_inbound_message_size: usize,
    /// `max_body_size` sent to producers in Settings (the broker's `limits.maxMessageSize`).
    pub max_body_size: usize,
    /// Retry policy sent to producers in Settings.
    pub producer: ProducerBackoff,
    /// `metrics.clientMetrics`: Settings announce our gRPC endpoint as the SDKs' OTLP metrics
    /// endpoint (`Settings.metric.on`).
    pub client_metrics: bool,
    /// `server.bodyDigest: md5`: delivered messages carry an MD5 whatever the client's language.
    pub md5_digests_only: bool,
}

/// Exponential backoff of producer send retries.
#[derive(Debug, Clone)]
pub struct ProducerBackoff {
    /// Send attempts.
    pub max_attempts: i32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub backoff_multiplier: f32,
}

/// Endpoints for `host[:port]` (empty: the address this connection arrived on).
fn endpoints_at(server: &GrpcSettings, advertised: &str, ctx: &Context) -> proto::Endpoints {
    let port = i32::from(server.grpc_server_port);
    let (host, port) = if !advertised.is_empty() {
        match advertised.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
                (h.trim_matches(['[', ']']).to_string(), p.parse::<i32>().unwrap_or(port))
            }
            _ => (advertised.trim_matches(['[', ']']).to_string(), port),
        }
    } else if let Some(local) = ctx.local_addr {
        (local.ip().to_string(), i32::from(local.port()))
    } else {
        ("127.0.0.1".to_string(), port)
    };
    let scheme = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => proto::AddressScheme::IPv4,
        Ok(std::net::IpAddr::V6(_)) => proto::AddressScheme::IPv6,
        Err(_) => proto::AddressScheme::DomainName,
    };
    proto::Endpoints { scheme: scheme as i32, addresses: vec![proto::Address { host, port }] }
}

/// The MessagingService implementation.
#[derive(Clone)]
pub struct MessagingServiceImpl {
    broker: Broker,
    settings: Arc<GrpcSettings>,
    /// Cluster mode: routes by ownership and forwards. `None`: a single gateway.
    cluster: Option<Arc<Forwarder>>,
}

impl MessagingServiceImpl {
    pub fn new(broker: Broker, settings: GrpcSettings) -> Self {
        Self { broker, settings: Arc::new(settings), cluster: None }
    }

    /// Cluster mode: routes name the owner of each queue as `view` sees it, requests for
    /// another node's queues (or its transactions and scheduled messages) are forwarded to it
    /// within `forward_timeout`, and the broker's orphan transaction checks reach producers
    /// connected to other nodes (serve [`MessagingServiceImpl::peer_server`] beside it).
    pub fn with_cluster(
        mut self,
        view: Arc<ClusterView>,
        forward_timeout: Duration,
        security: forward::PeerSecurity,
    ) -> Self {
        let forwarder = Arc::new(Forwarder::with_security(view, forward_timeout, security));
        self.broker.set_orphan_check_relay(Arc::new(peer::PeerRelay::new(forwarder.clone())));
        self.broker.set_queue_hand_over(Arc::new(peer::PeerHandOver::new(forwarder.clone())));
        self.cluster = Some(forwarder);
        self
    }

    /// The internal peer service (cluster mode), served on the same port.
    pub fn peer_server(&self) -> peer::pb::peer_server::PeerServer<peer::PeerService> {
        let secret = self.cluster.as_ref().and_then(|f| f.secret().cloned());
        peer::PeerService::new(self.broker.clone(), secret).into_server()
    }

    /// Cluster: the live node that adopted this node's scheduled and half messages while it
    /// was gone, for a request not forwarded already (a transaction id or recall handle of
    /// this node naming one of those is passed on there, re-tagged with the adopter's id).
    fn adopter(&self, md: &MetadataMap) -> Option<(&Arc<Forwarder>, Arc<NodeInfo>)> {
        let fwd = self.cluster.as_ref()?;
        if forward::forwarded_by(md).is_some() {
            return None;
        }
        let local = &fwd.view().local_node().node_id;
        let node = fwd.view().adopter_of(local)?;
        (node.node_id != *local).then_some((fwd, node))
    }

    /// The request's headers, kept in cluster mode (to forward it).
    fn headers<T>(&self, request: &Request<T>) -> MetadataMap {
        if self.cluster.is_some() { request.metadata().clone() } else { MetadataMap::new() }
    }

    /// Cluster mode: where a request about queue `queue_id` of `topic` is served.
    fn queue_target(&self, md: &MetadataMap, topic: &str, queue_id: Option<u32>) -> Option<(&Arc<Forwarder>, Target)> {
        let fwd = self.cluster.as_ref()?;
        let target = match queue_id {
            Some(q) => forward::queue_target(fwd.view(), topic, q),
            None => Target::Local,
        };
        Some((fwd, target.settle(forward::forwarded_by(md).as_deref())))
    }

    /// Queues of a topic (None: unknown here; the local broker answers with the error).
    async fn queue_nums(&self, topic: &str) -> Option<u32> {
        self.broker.route(topic).await.ok().map(|r| r.queue_nums)
    }

    /// Cluster mode: the id handed out for node-local state (transaction ids, recall
    /// handles), tagged with this node's id.
    fn tag_local(&self, id: String) -> String {
        match &self.cluster {
            Some(fwd) if !id.is_empty() => forward::tag(&fwd.view().local_node().node_id, &id),
            Some(_) | None => id,
        }
    }

    /// Cluster mode: where a tagged id's state lives, and the id the broker knows.
    fn tagged_target<'a>(&self, md: &MetadataMap, tagged: &'a str) -> (Option<(&Arc<Forwarder>, Target)>, &'a str) {
        let Some(fwd) = self.cluster.as_ref() else {
            return (None, tagged);
        };
        match forward::untag(tagged) {
            Some((node, id)) => {
                let target = forward::node_target(fwd.view(), node).settle(forward::forwarded_by(md).as_deref());
                (Some((fwd, target)), id)
            }
            None => (None, tagged),
        }
    }

    pub fn into_server(self) -> MessagingServiceServer<Self> {
        let max = self.settings.grpc_max_inbound_message_size;
        MessagingServiceServer::new(self).max_decoding_message_size(max).max_encoding_message_size(usize::MAX)
    }

    /// The endpoints clients should use: the configured advertised address, else the address
    /// and port this connection arrived on (reachable by the client: it just used it). The
    /// address the client says it dialled is not echoed: behind a port forward or a proxy
    /// it names something else.
    fn endpoints(&self, ctx: &Context) -> proto::Endpoints {
        self.endpoints_at(&self.settings.advertised_address, ctx)
    }

    /// The endpoints of a node of the cluster: its advertised address (this node's own
    /// endpoints when it advertises none).
    fn node_endpoints(&self, node: &NodeInfo, ctx: &Context) -> proto::Endpoints {
        let local = self.cluster.as_ref().is_some_and(|f| f.view().local_node().node_id == node.node_id);
        match (node.advertised.is_empty(), local) {
            (false, _) => self.endpoints_at(&node.advertised, ctx),
            (true, true) => self.endpoints(ctx),
            (true, false) => self.endpoints_at(&node.peer, ctx),
        }
    }

    /// Endpoints for `host[:port]` (empty: the address this connection arrived on).
    fn endpoints_at(&self, advertised: &str, ctx: &Context) -> proto::Endpoints {
        endpoints_at(&self.settings, advertised, ctx)
    }

    fn message_queue(
        &self,
        topic: &str,
        id: i32,
        accepts: &[MessageType],
        endpoints: &proto::Endpoints,
    ) -> proto::MessageQueue {
        self.message_queue_of(topic, id, accepts, &self.settings.broker_name, endpoints)
    }

    fn message_queue_of(
        &self,
        topic: &str,
        id: i32,
        accepts: &[MessageType],
        broker_name: &str,
        endpoints: &proto::Endpoints,
    ) -> proto::MessageQueue {
        proto::MessageQueue {
            topic: Some(convert::resource(topic)),
            id,
            permission: proto::Permission::ReadWrite as i32,
            broker: Some(proto::Broker { name: broker_name.to_string(), id: 0, endpoints: Some(endpoints.clone()) }),
            accept_message_types: accepts.iter().map(|t| convert::message_type(*t) as i32).collect(),
        }
    }

    fn store_host(&self, ctx: &Context) -> String {
        ctx.local_addr.map(|a| a.to_string()).unwrap_or_default()
    }

    /// The owner of each queue (this node when unknown): queues `0..n`, each with broker name
    /// = the owner's node id and its advertised endpoints.
    fn cluster_route(
        &self,
        view: &ClusterView,
        ctx: &Context,
        route: &crate::broker::Route,
    ) -> Vec<proto::MessageQueue> {
        (0..route.queue_nums)
            .map(|q| {
                let owner = view.owner_of(&route.topic, q).unwrap_or_else(|| view.local_node().clone());
                let endpoints = self.node_endpoints(&owner, ctx);
                self.message_queue_of(&route.topic, q as i32, route.accepts, &owner.node_id, &endpoints)
            })
            .collect()
    }

    /// Orderly groups: one assignment per queue, at its owner. Others: one per node owning a
    /// queue of the topic (naming a queue it owns), so that push consumers poll every owner;
    /// this node with "any queue" when no owner is known.
    fn cluster_assignments(&self, ctx: &Context, route: &crate::broker::Route, fifo: bool) -> Vec<proto::Assignment> {
        let Some(fwd) = &self.cluster else {
            return Vec::new();
        };
        let view = fwd.view();
        let assignment = |id: u32, owner: &NodeInfo| proto::Assignment {
            message_queue: Some(self.message_queue_of(
                &route.topic,
                id as i32,
                &[],
                &owner.node_id,
                &self.node_endpoints(owner, ctx),
            )),
        };
        if fifo {
            return (0..route.queue_nums)
                .map(|q| assignment(q, &view.owner_of(&route.topic, q).unwrap_or_else(|| view.local_node().clone())))
                .collect();
        }
        let mut owners: Vec<(u32, Arc<NodeInfo>)> = Vec::new();
        for q in 0..route.queue_nums {
            if let Some(owner) = view.owner_of(&route.topic, q)
                && !owners.iter().any(|(_, o)| o.node_id == owner.node_id)
            {
                owners.push((q, owner));
            }
        }
        if owners.is_empty() {
            let local = view.local_node().clone();
            let mq = self.message_queue_of(&route.topic, -1, &[], &local.node_id, &self.node_endpoints(&local, ctx));
            return vec![proto::Assignment { message_queue: Some(mq) }];
        }
        owners.iter().map(|(q, owner)| assignment(*q, owner)).collect()
    }

    /// Cluster mode: where a SendMessage is served.
    async fn send_target(
        &self,
        md: &MetadataMap,
        ctx: &Context,
        req: &proto::SendMessageRequest,
    ) -> Option<(&Arc<Forwarder>, Target)> {
        let fwd = self.cluster.as_ref()?;
        let first = req.messages.first()?;
        let topic = ctx.topic(first.topic.as_ref()).ok()?;
        let queue_nums = self.queue_nums(&topic).await?;
        let now = crate::broker::now_ms();
        let node_local = req.messages.iter().any(|m| {
            m.system_properties.as_ref().is_some_and(|sp| {
                sp.message_type == proto::MessageType::Transaction as i32
                    || sp.delivery_timestamp.as_ref().and_then(convert::timestamp_ms).is_some_and(|t| t > now)
            })
        });
        let group =
            first.system_properties.as_ref().and_then(|sp| sp.message_group.as_deref()).filter(|g| !g.is_empty());
        let kind = match (node_local, group) {
            (true, _) => SendKind::NodeLocal,
            (false, Some(g)) => SendKind::Fifo(g),
            (false, None) => SendKind::Plain,
        };
        let target = forward::send_target(fwd.view(), &topic, queue_nums, kind, fwd.pick());
        Some((fwd, target.settle(forward::forwarded_by(md).as_deref())))
    }

    /// Cluster mode: where a ReceiveMessage is served.
    async fn receive_target(&self, md: &MetadataMap, topic: &str, queue_id: i32) -> Option<(&Arc<Forwarder>, Target)> {
        let fwd = self.cluster.as_ref()?;
        let queue_nums = self.queue_nums(topic).await?;
        let target = forward::receive_target(fwd.view(), topic, queue_nums, queue_id, fwd.pick());
        Some((fwd, target.settle(forward::forwarded_by(md).as_deref())))
    }

    /// Cluster mode: where the queue named by a receipt handle is served (here when the
    /// handle does not decode: the broker refuses it).
    fn receipt_target(&self, md: &MetadataMap, topic: &str, handle: &str) -> Option<(&Arc<Forwarder>, Target)> {
        self.queue_target(md, topic, crate::broker::receipt::peek_queue_id(handle))
    }
}

impl MessagingServiceImpl {
    /// The `body_digest` this request's client gets on delivered messages.
    fn body_digest(&self, ctx: &Context) -> convert::BodyDigest {
        if self.settings.md5_digests_only {
            convert::BodyDigest::Md5
        } else {
            convert::BodyDigest::for_language(&ctx.language)
        }
    }

    /// The frames of a receive that found messages: OK, the messages, the delivery time.
    fn delivery_frames(
        &self,
        ctx: &Context,
        messages: Vec<crate::broker::DeliveredMessage>,
    ) -> Vec<Result<proto::ReceiveMessageResponse, GrpcStatus>> {
        use proto::receive_message_response::Content;
        let frame = |c: Content| Ok(proto::ReceiveMessageResponse { content: Some(c) });
        let store_host = self.store_host(ctx);
        let digest = self.body_digest(ctx);
        let mut frames = Vec::with_capacity(messages.len() + 2);
        frames.push(frame(Content::Status(ok())));
        frames
            .extend(messages.into_iter().map(|m| frame(Content::Message(convert::delivered(m, &store_host, digest)))));
        frames.push(frame(Content::DeliveryTimestamp(convert::now_timestamp())));
        frames
    }

    /// Cluster mode, a client's receive: before long-polling the node it was routed to, asks
    /// every node owning queues of the topic, without waiting, for messages (here directly and
    /// first, the others through a forwarded receive marked not to wait, from a rotating
    /// start). A client behind one address then gets messages from whichever node has them at
    /// once, instead of waiting out a long poll on a node whose queues are empty. `None`:
    /// nothing anywhere (or a single owner); the caller long-polls as usual.
    async fn sweep_owners(
        &self,
        fwd: &Arc<Forwarder>,
        md: &MetadataMap,
        req: &proto::ReceiveMessageRequest,
        receive: &ReceiveRequest,
        ctx: &Context,
    ) -> Option<Vec<Result<proto::ReceiveMessageResponse, GrpcStatus>>> {
        use futures::StreamExt as _;
        use proto::receive_message_response::Content;
        let queue_nums = self.queue_nums(&receive.topic).await?;
        let owners = forward::topic_owners(fwd.view(), &receive.topic, queue_nums);
        if owners.len() < 2 {
            return None;
        }
        // This node first (when it owns queues of the topic: no extra request while it has
        // messages), then the others from a rotating start.
        let local = fwd.view().local_node().node_id.clone();
        let (mut order, others): (Vec<_>, Vec<_>) = owners.into_iter().partition(|n| n.node_id == local);
        let start = if others.is_empty() { 0 } else { fwd.pick() % others.len() };
        order.extend(others[start..].iter().chain(&others[..start]).cloned());
        for node in &order {
            if node.node_id == local {
                let quick = ReceiveRequest { deadline_remaining: Some(Duration::ZERO), ..receive.clone() };
                match self.broker.receive(quick).await {
                    Ok(messages) if !messages.is_empty() => return Some(self.delivery_frames(ctx, messages)),
                    Ok(_) | Err(_) => continue,
                }
            }
            let mut quick_md = md.clone();
            quick_md.insert(forward::RECEIVE_NO_WAIT, tonic::metadata::MetadataValue::from_static("1"));
            // Any queue of that node's (the one asked for may be another node's).
            let mut quick = req.clone();
            if let Some(q) = quick.message_queue.as_mut() {
                q.id = -1;
            }
            let Ok(stream) =
                fwd.server_stream(node, &quick_md, quick, Duration::ZERO, |mut c, r| async move {
                    c.receive_message(r).await
                })
                .await
            else {
                continue;
            };
            let frames: Vec<_> = stream.collect().await;
            let found = frames.iter().any(|f| matches!(f, Ok(r) if matches!(r.content, Some(Content::Message(_)))));
            if found {
                return Some(frames);
            }
        }
        None
    }
}

impl MessagingServiceImpl {
    /// Cluster mode: where a request about one queue (`message_queue`) is served; `None`
    /// (served here) for a single gateway or a request the local handler refuses anyway.
    fn queue_request_target<T>(
        &self,
        md: &MetadataMap,
        request: &Request<T>,
        mq: Option<&proto::MessageQueue>,
    ) -> Option<(&Arc<Forwarder>, Target)> {
        self.cluster.as_ref()?;
        let mq = mq?;
        let topic = Context::of(request).topic(mq.topic.as_ref()).ok()?;
        let queue_id = u32::try_from(mq.id).ok()?;
        self.queue_target(md, &topic, Some(queue_id))
    }
}

/// The error a refused or failed forward is answered with.
fn not_owner(why: String) -> BrokerError {
    BrokerError::NotOwner(why)
}

fn client_kind(t: i32) -> ClientKind {
    match proto::ClientType::try_from(t) {
        Ok(proto::ClientType::Producer) => ClientKind::Producer,
        Ok(proto::ClientType::PushConsumer) => ClientKind::PushConsumer,
        Ok(proto::ClientType::SimpleConsumer) => ClientKind::SimpleConsumer,
        Ok(proto::ClientType::PullConsumer) => ClientKind::PullConsumer,
        Ok(_) | Err(_) => ClientKind::Other,
    }
}

fn unimplemented(rpc: &str) -> GrpcStatus {
    GrpcStatus::unimplemented(format!("{rpc} is not implemented by rmq-gateway yet"))
}

impl MessagingServiceImpl {
    /// SendMessage: the trait method delegates here, and so does the metrics wrapper (one boxed
    /// future per call, not two).
    pub(super) async fn send(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        // Exactly one entry per message, even on failure (Python asserts it, Rust indexes [0]).
        let ids: Vec<String> = req
            .messages
            .iter()
            .map(|m| m.system_properties.as_ref().map(|s| s.message_id.clone()).unwrap_or_default())
            .collect();
        let fail = |s: proto::Status| proto::SendMessageResponse {
            entries: ids
                .iter()
                .map(|id| proto::SendResultEntry {
                    status: Some(s.clone()),
                    message_id: id.clone(),
                    ..Default::default()
                })
                .collect(),
            status: Some(s),
        };
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(fail(s)));
        }
        // Cluster mode only, and boxed: the forwarding call's state would otherwise sit in every
        // send's future beside the local send's, and be copied with it.
        if self.cluster.is_some() {
            match Box::pin(self.send_target(&md, &ctx, &req)).await {
                None | Some((_, Target::Local)) => {}
                Some((fwd, Target::Remote(node))) => {
                    let forwarded =
                        Box::pin(fwd.unary(&node, &md, req, |mut c, r| async move { c.send_message(r).await })).await;
                    return Ok(Response::new(forwarded.unwrap_or_else(|e| fail(from_error(&e)))));
                }
                Some((_, Target::Refuse(why))) => return Ok(Response::new(fail(from_error(&not_owner(why))))),
            }
        }
        let messages: Result<Vec<_>, BrokerError> =
            req.messages.into_iter().map(|m| convert::outgoing(m, &ctx.namespace)).collect();
        let result = match messages {
            Ok(messages) => {
                // Without a peer address (not over TCP), each client id counts as a connection.
                let connection = ctx
                    .remote_addr
                    .map_or_else(|| Connection::Client(Arc::from(ctx.client_id.as_str())), Connection::Peer);
                self.broker.send_from(Some(&connection), messages).await
            }
            Err(e) => Err(e),
        };
        let reply = match result {
            Ok(receipts) => proto::SendMessageResponse {
                status: Some(ok()),
                entries: receipts
                    .into_iter()
                    .map(|r| proto::SendResultEntry {
                        status: Some(ok()),
                        message_id: r.message_id,
                        transaction_id: self.tag_local(r.transaction_id),
                        offset: r.offset as i64,
                        recall_handle: self.tag_local(r.recall_handle.unwrap_or_default()),
                    })
                    .collect(),
            },
            Err(e) => {
                tracing::debug!(client_id = ctx.client_id, request_id = ctx.request_id, error = %e, "send refused");
                fail(from_error(&e))
            }
        };
        Ok(Response::new(reply))
    }

    /// ReceiveMessage: the trait method delegates here, and so does the metrics wrapper (one boxed
    /// future per call, not two).
    pub(super) async fn receive(
        &self,
        request: Request<proto::ReceiveMessageRequest>,
    ) -> Result<Response<BoxStream<proto::ReceiveMessageResponse>>, GrpcStatus> {
        use proto::receive_message_response::Content;
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        let frame = |c: Content| Ok(proto::ReceiveMessageResponse { content: Some(c) });
        let done = |s: proto::Status| -> BoxStream<proto::ReceiveMessageResponse> {
            Box::pin(futures::stream::iter(vec![
                frame(Content::Status(s)),
                frame(Content::DeliveryTimestamp(convert::now_timestamp())),
            ]))
        };
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(done(s)));
        }
        let names = ctx.topic_and_group(req.message_queue.as_ref().and_then(|q| q.topic.as_ref()), req.group.as_ref());
        let (topic, group) = match names {
            Ok(names) => names,
            Err(e) => return Ok(Response::new(done(from_error(&e)))),
        };
        let queue_id = req.message_queue.as_ref().map_or(-1, |q| q.id);
        let filter = match pull::filter_of(req.filter_expression.as_ref()) {
            Ok(f) => f,
            Err(e) => return Ok(Response::new(done(from_error(&e)))),
        };
        let invisible_duration = match req.invisible_duration.as_ref().map(convert::duration) {
            Some(None) => {
                return Ok(Response::new(done(status(Code::IllegalInvisibleTime, "invisible duration is negative"))));
            }
            Some(Some(d)) => Some(d),
            None => None,
        };
        let mut receive = ReceiveRequest {
            client_id: ctx.client_id.clone(),
            group,
            topic: topic.clone(),
            filter,
            batch_size: req.batch_size.max(0) as usize,
            invisible_duration,
            auto_renew: req.auto_renew,
            long_polling_timeout: req.long_polling_timeout.as_ref().and_then(convert::duration),
            deadline_remaining: ctx.deadline,
            attempt_id: req.attempt_id.clone(),
        };
        if md.get(forward::RECEIVE_NO_WAIT).is_some() {
            // One node's part of another node's sweep: answer at once.
            receive.deadline_remaining = Some(Duration::ZERO);
        }
        // Cluster mode only, and boxed (as in SendMessage).
        if self.cluster.is_some() {
            let target = Box::pin(self.receive_target(&md, &topic, queue_id)).await;
            if let Some((fwd, _)) = &target
                && forward::forwarded_by(&md).is_none()
                && let Some(frames) = Box::pin(self.sweep_owners(fwd, &md, &req, &receive, &ctx)).await
            {
                return Ok(Response::new(Box::pin(futures::stream::iter(frames))));
            }
            match target {
                None | Some((_, Target::Local)) => {}
                Some((fwd, Target::Remote(node))) => {
                    let long_poll = req.long_polling_timeout.as_ref().and_then(convert::duration).unwrap_or_default();
                    let forwarded = Box::pin(fwd.server_stream(&node, &md, req, long_poll, |mut c, r| async move {
                        c.receive_message(r).await
                    }))
                    .await;
                    return Ok(Response::new(forwarded.unwrap_or_else(|e| done(from_error(&e)))));
                }
                Some((_, Target::Refuse(why))) => return Ok(Response::new(done(from_error(&not_owner(why))))),
            }
        }
        tracing::trace!(?receive, "receive");
        let stream: BoxStream<proto::ReceiveMessageResponse> = match self.broker.receive(receive).await {
            Ok(messages) if messages.is_empty() => done(status(Code::MessageNotFound, "no new message")),
            Ok(messages) => Box::pin(futures::stream::iter(self.delivery_frames(&ctx, messages))),
            Err(e) => done(from_error(&e)),
        };
        Ok(Response::new(stream))
    }

    /// AckMessage: the trait method delegates here, and so does the metrics wrapper (one boxed
    /// future per call, not two).
    pub(super) async fn ack(
        &self,
        request: Request<proto::AckMessageRequest>,
    ) -> Result<Response<proto::AckMessageResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        let result = |s: &proto::Status, e: &proto::AckMessageEntry| proto::AckMessageResultEntry {
            message_id: e.message_id.clone(),
            receipt_handle: e.receipt_handle.clone(),
            status: Some(s.clone()),
        };
        if let Err(s) = ctx.require_client_id() {
            let entries = req.entries.iter().map(|e| result(&s, e)).collect();
            return Ok(Response::new(proto::AckMessageResponse { status: Some(s), entries }));
        }
        if req.entries.is_empty() {
            return Ok(Response::new(proto::AckMessageResponse {
                status: Some(status(Code::BadRequest, "ack request has no entries")),
                entries: vec![],
            }));
        }
        let (topic, group) = match ctx.topic_and_group(req.topic.as_ref(), req.group.as_ref()) {
            Ok(names) => names,
            Err(e) => {
                let s = from_error(&e);
                let entries = req.entries.iter().map(|e| result(&s, e)).collect();
                return Ok(Response::new(proto::AckMessageResponse { status: Some(s), entries }));
            }
        };
        // Cluster: entries of queues served elsewhere go to their owners, one request per
        // owner; the results are merged back in order.
        let targets: Vec<Target> = req
            .entries
            .iter()
            .map(|e| self.receipt_target(&md, &topic, &e.receipt_handle).map_or(Target::Local, |(_, t)| t))
            .collect();
        let mut forwarded: Vec<Option<proto::Status>> = vec![None; req.entries.len()];
        if let Some(fwd) = &self.cluster {
            let mut by_node: Vec<(Arc<NodeInfo>, Vec<usize>)> = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                if let Target::Remote(node) = t {
                    match by_node.iter_mut().find(|(n, _)| n.node_id == node.node_id) {
                        Some((_, idx)) => idx.push(i),
                        None => by_node.push((node.clone(), vec![i])),
                    }
                }
            }
            let calls = by_node.into_iter().map(|(node, idx)| {
                let part = proto::AckMessageRequest {
                    group: req.group.clone(),
                    topic: req.topic.clone(),
                    entries: idx.iter().map(|&i| req.entries[i].clone()).collect(),
                };
                let md = &md;
                async move {
                    let r = fwd.unary(&node, md, part, |mut c, r| async move { c.ack_message(r).await }).await;
                    (idx, r)
                }
            });
            for (idx, r) in futures::future::join_all(calls).await {
                match r {
                    Ok(resp) => {
                        for (k, i) in idx.into_iter().enumerate() {
                            forwarded[i] =
                                resp.entries.get(k).and_then(|e| e.status.clone()).or_else(|| resp.status.clone());
                        }
                    }
                    Err(e) => {
                        for i in idx {
                            forwarded[i] = Some(from_error(&e));
                        }
                    }
                }
            }
        }
        // The local entries in one broker call: one journal append for the request.
        let local: Vec<&str> = req
            .entries
            .iter()
            .zip(&targets)
            .filter(|(_, t)| matches!(t, Target::Local))
            .map(|(e, _)| e.receipt_handle.as_str())
            .collect();
        let mut local_results = if local.is_empty() {
            Vec::new()
        } else {
            match self.broker.ack_many(&ctx.client_id, &group, &topic, &local).await {
                Ok(results) => results.into_iter().map(|r| r.map_or_else(|e| from_error(&e), |()| ok())).collect(),
                Err(e) => vec![from_error(&e); local.len()],
            }
        }
        .into_iter();
        let mut entries = Vec::with_capacity(req.entries.len());
        // The request's own strings go back in the answer: moved, not copied.
        for ((e, target), forwarded) in req.entries.into_iter().zip(targets).zip(forwarded) {
            let s = match target {
                Target::Local => local_results
                    .next()
                    .unwrap_or_else(|| status(Code::InternalServerError, "no result for this entry")),
                Target::Remote(node) => forwarded.unwrap_or_else(|| {
                    status(Code::InternalServerError, format!("node `{}` gave no result for this entry", node.node_id))
                }),
                Target::Refuse(why) => from_error(&not_owner(why)),
            };
            entries.push(proto::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(s),
            });
        }
        let first = entries[0].status.as_ref().map(|s| s.code).unwrap_or_default();
        let top = if entries.iter().all(|e| e.status.as_ref().map(|s| s.code) == Some(first)) {
            entries[0].status.clone()
        } else {
            Some(status(Code::MultipleResults, "entries have different results"))
        };
        Ok(Response::new(proto::AckMessageResponse { status: top, entries }))
    }
}

#[tonic::async_trait]
impl MessagingService for MessagingServiceImpl {
    async fn query_route(
        &self,
        request: Request<proto::QueryRouteRequest>,
    ) -> Result<Response<proto::QueryRouteResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::QueryRouteResponse { status: Some(s), message_queues: vec![] }));
        }
        let route = match ctx.topic(req.topic.as_ref()) {
            Ok(topic) => self.broker.route(&topic).await,
            Err(e) => Err(e),
        };
        let reply = match route {
            Ok(route) => {
                let queues = match &self.cluster {
                    Some(fwd) => self.cluster_route(fwd.view(), &ctx, &route),
                    None => {
                        let endpoints = self.endpoints(&ctx);
                        (0..route.queue_nums as i32)
                            .map(|id| self.message_queue(&route.topic, id, route.accepts, &endpoints))
                            .collect()
                    }
                };
                proto::QueryRouteResponse { status: Some(ok()), message_queues: queues }
            }
            Err(e) => proto::QueryRouteResponse { status: Some(from_error(&e)), message_queues: vec![] },
        };
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::HeartbeatResponse { status: Some(s) }));
        }
        let result = match req.group.as_ref().map(|g| ctx.group(Some(g))).transpose() {
            Ok(group) => self.broker.heartbeat(&ctx.client_id, client_kind(req.client_type), group.as_deref()).await,
            Err(e) => Err(e),
        };
        let s = match result {
            Ok(()) => ok(),
            Err(e) => from_error(&e),
        };
        Ok(Response::new(proto::HeartbeatResponse { status: Some(s) }))
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, GrpcStatus> {
        self.send(request).await
    }

    async fn query_assignment(
        &self,
        request: Request<proto::QueryAssignmentRequest>,
    ) -> Result<Response<proto::QueryAssignmentResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::QueryAssignmentResponse { status: Some(s), assignments: vec![] }));
        }
        self.broker.touch_client(&ctx.client_id);
        let assignment = match ctx.topic_and_group(req.topic.as_ref(), req.group.as_ref()) {
            Ok((topic, group)) => self.broker.assignment(&topic, &group).await,
            Err(e) => Err(e),
        };
        let reply = match assignment {
            Ok((route, fifo)) if self.cluster.is_some() => {
                let assignments = self.cluster_assignments(&ctx, &route, fifo);
                proto::QueryAssignmentResponse { status: Some(ok()), assignments }
            }
            Ok((route, fifo)) => {
                let endpoints = self.endpoints(&ctx);
                // Like Apache: orderly groups get one assignment per queue; others one per
                // broker with queue id -1 ("any queue").
                let ids: Vec<i32> = if fifo { (0..route.queue_nums as i32).collect() } else { vec![-1] };
                let assignments = ids
                    .into_iter()
                    .map(|id| {
                        let mq = self.message_queue(&route.topic, id, &[], &endpoints);
                        proto::Assignment { message_queue: Some(mq) }
                    })
                    .collect();
                proto::QueryAssignmentResponse { status: Some(ok()), assignments }
            }
            Err(e) => proto::QueryAssignmentResponse { status: Some(from_error(&e)), assignments: vec![] },
        };
        Ok(Response::new(reply))
    }

    type ReceiveMessageStream = BoxStream<proto::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<proto::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, GrpcStatus> {
        self.receive(request).await
    }

    async fn ack_message(
        &self,
        request: Request<proto::AckMessageRequest>,
    ) -> Result<Response<proto::AckMessageResponse>, GrpcStatus> {
        self.ack(request).await
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<proto::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<proto::ForwardMessageToDeadLetterQueueResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::ForwardMessageToDeadLetterQueueResponse { status: Some(s) }));
        }
        let names = ctx.topic_and_group(req.topic.as_ref(), req.group.as_ref());
        if let Ok((topic, _)) = &names {
            match self.receipt_target(&md, topic, &req.receipt_handle) {
                None | Some((_, Target::Local)) => {}
                Some((fwd, Target::Remote(node))) => {
                    let forwarded =
                        fwd.unary(&node, &md, req, |mut c, r| async move {
                            c.forward_message_to_dead_letter_queue(r).await
                        })
                        .await;
                    let reply = forwarded.unwrap_or_else(|e| proto::ForwardMessageToDeadLetterQueueResponse {
                        status: Some(from_error(&e)),
                    });
                    return Ok(Response::new(reply));
                }
                Some((_, Target::Refuse(why))) => {
                    let s = from_error(&not_owner(why));
                    return Ok(Response::new(proto::ForwardMessageToDeadLetterQueueResponse { status: Some(s) }));
                }
            }
        }
        let forwarded = match names {
            Ok((topic, group)) => {
                self.broker.forward_to_dead_letter(&ctx.client_id, &group, &topic, &req.receipt_handle).await
            }
            Err(e) => Err(e),
        };
        let s = match forwarded {
            Ok(()) => ok(),
            Err(e) => from_error(&e),
        };
        Ok(Response::new(proto::ForwardMessageToDeadLetterQueueResponse { status: Some(s) }))
    }

    type PullMessageStream = BoxStream<proto::PullMessageResponse>;

    async fn pull_message(
        &self,
        request: Request<proto::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, GrpcStatus> {
        use proto::pull_message_response::Content;
        let md = self.headers(&request);
        let failed = |e: BrokerError| -> Self::PullMessageStream {
            let frame = proto::PullMessageResponse { content: Some(Content::Status(from_error(&e))) };
            Box::pin(futures::stream::iter(vec![Ok(frame)]))
        };
        match self.queue_request_target(&md, &request, request.get_ref().message_queue.as_ref()) {
            None | Some((_, Target::Local)) => self.pull(request).await,
            Some((fwd, Target::Remote(node))) => {
                let req = request.into_inner();
                let long_poll = req.long_polling_timeout.as_ref().and_then(convert::duration).unwrap_or_default();
                let forwarded = fwd
                    .server_stream(&node, &md, req, long_poll, |mut c, r| async move { c.pull_message(r).await })
                    .await;
                Ok(Response::new(forwarded.unwrap_or_else(failed)))
            }
            Some((_, Target::Refuse(why))) => Ok(Response::new(failed(not_owner(why)))),
        }
    }

    async fn update_offset(
        &self,
        request: Request<proto::UpdateOffsetRequest>,
    ) -> Result<Response<proto::UpdateOffsetResponse>, GrpcStatus> {
        let md = self.headers(&request);
        let failed = |e: BrokerError| proto::UpdateOffsetResponse { status: Some(from_error(&e)) };
        match self.queue_request_target(&md, &request, request.get_ref().message_queue.as_ref()) {
            None | Some((_, Target::Local)) => self.update_offset_rpc(request).await,
            Some((fwd, Target::Remote(node))) => {
                let forwarded = fwd
                    .unary(&node, &md, request.into_inner(), |mut c, r| async move { c.update_offset(r).await })
                    .await;
                Ok(Response::new(forwarded.unwrap_or_else(failed)))
            }
            Some((_, Target::Refuse(why))) => Ok(Response::new(failed(not_owner(why)))),
        }
    }

    async fn get_offset(
        &self,
        request: Request<proto::GetOffsetRequest>,
    ) -> Result<Response<proto::GetOffsetResponse>, GrpcStatus> {
        let md = self.headers(&request);
        let failed = |e: BrokerError| proto::GetOffsetResponse { status: Some(from_error(&e)), offset: 0 };
        match self.queue_request_target(&md, &request, request.get_ref().message_queue.as_ref()) {
            None | Some((_, Target::Local)) => self.get_offset_rpc(request).await,
            Some((fwd, Target::Remote(node))) => {
                let forwarded =
                    fwd.unary(&node, &md, request.into_inner(), |mut c, r| async move { c.get_offset(r).await }).await;
                Ok(Response::new(forwarded.unwrap_or_else(failed)))
            }
            Some((_, Target::Refuse(why))) => Ok(Response::new(failed(not_owner(why)))),
        }
    }

    async fn query_offset(
        &self,
        request: Request<proto::QueryOffsetRequest>,
    ) -> Result<Response<proto::QueryOffsetResponse>, GrpcStatus> {
        let md = self.headers(&request);
        let failed = |e: BrokerError| proto::QueryOffsetResponse { status: Some(from_error(&e)), offset: 0 };
        match self.queue_request_target(&md, &request, request.get_ref().message_queue.as_ref()) {
            None | Some((_, Target::Local)) => self.query_offset_rpc(request).await,
            Some((fwd, Target::Remote(node))) => {
                let forwarded = fwd
                    .unary(&node, &md, request.into_inner(), |mut c, r| async move { c.query_offset(r).await })
                    .await;
                Ok(Response::new(forwarded.unwrap_or_else(failed)))
            }
            Some((_, Target::Refuse(why))) => Ok(Response::new(failed(not_owner(why)))),
        }
    }

    async fn end_transaction(
        &self,
        request: Request<proto::EndTransactionRequest>,
    ) -> Result<Response<proto::EndTransactionResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::EndTransactionResponse { status: Some(s) }));
        }
        // Cluster: the half message is held by the node named in the transaction id.
        let (target, transaction_id) = self.tagged_target(&md, &req.transaction_id);
        let transaction_id = transaction_id.to_string();
        match target {
            None | Some((_, Target::Local)) => {}
            Some((fwd, Target::Remote(node))) => {
                let forwarded = fwd.unary(&node, &md, req, |mut c, r| async move { c.end_transaction(r).await }).await;
                let reply =
                    forwarded.unwrap_or_else(|e| proto::EndTransactionResponse { status: Some(from_error(&e)) });
                return Ok(Response::new(reply));
            }
            Some((_, Target::Refuse(why))) => {
                return Ok(Response::new(proto::EndTransactionResponse { status: Some(from_error(&not_owner(why))) }));
            }
        }
        let topic = match ctx.topic(req.topic.as_ref()) {
            Ok(topic) => topic,
            Err(e) => return Ok(Response::new(proto::EndTransactionResponse { status: Some(from_error(&e)) })),
        };
        let resolution = match proto::TransactionResolution::try_from(req.resolution) {
            Ok(proto::TransactionResolution::Commit) => Resolution::Commit,
            Ok(proto::TransactionResolution::Rollback) => Resolution::Rollback,
            Ok(proto::TransactionResolution::Unspecified) | Err(_) => Resolution::Unknown,
        };
        let source = match proto::TransactionSource::try_from(req.source) {
            Ok(proto::TransactionSource::SourceServerCheck) => ResolutionSource::ServerCheck,
            Ok(proto::TransactionSource::SourceClient | proto::TransactionSource::SourceUnspecified) | Err(_) => {
                ResolutionSource::Client
            }
        };
        self.broker.touch_client(&ctx.client_id);
        let s = match self.broker.end_transaction(&topic, &transaction_id, resolution, source).await {
            Ok(()) => ok(),
            Err(e @ BrokerError::AdoptedElsewhere(_)) => match self.adopter(&md) {
                Some((fwd, node)) => {
                    let req = proto::EndTransactionRequest {
                        transaction_id: forward::tag(&node.node_id, &transaction_id),
                        ..req.clone()
                    };
                    let forwarded =
                        fwd.unary(&node, &md, req, |mut c, r| async move { c.end_transaction(r).await }).await;
                    let reply =
                        forwarded.unwrap_or_else(|e| proto::EndTransactionResponse { status: Some(from_error(&e)) });
                    return Ok(Response::new(reply));
                }
                None => from_error(&e),
            },
            Err(e) => from_error(&e),
        };
        Ok(Response::new(proto::EndTransactionResponse { status: Some(s) }))
    }

    type TelemetryStream = BoxStream<proto::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<proto::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, GrpcStatus> {
        let ctx = Context::of(&request);
        let node = self.cluster.as_ref().map(|f| f.view().local_node().node_id.clone());
        let stream = telemetry::serve(self.broker.clone(), self.settings.clone(), ctx, node, request.into_inner());
        Ok(Response::new(stream))
    }

    async fn notify_client_termination(
        &self,
        request: Request<proto::NotifyClientTerminationRequest>,
    ) -> Result<Response<proto::NotifyClientTerminationResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::NotifyClientTerminationResponse { status: Some(s) }));
        }
        self.broker.client_terminated(&ctx.client_id);
        Ok(Response::new(proto::NotifyClientTerminationResponse { status: Some(ok()) }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<proto::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<proto::ChangeInvisibleDurationResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        // On failure the old handle is echoed: Python and Node replace their handle with the
        // response's even before looking at the status.
        let failed = |s: proto::Status| proto::ChangeInvisibleDurationResponse {
            status: Some(s),
            receipt_handle: req.receipt_handle.clone(),
        };
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(failed(s)));
        }
        let Some(delay) = req.invisible_duration.as_ref().map_or(Some(Duration::ZERO), convert::duration) else {
            return Ok(Response::new(failed(status(Code::IllegalInvisibleTime, "invisible duration is negative"))));
        };
        let (topic, group) = match ctx.topic_and_group(req.topic.as_ref(), req.group.as_ref()) {
            Ok(names) => names,
            Err(e) => return Ok(Response::new(failed(from_error(&e)))),
        };
        match self.receipt_target(&md, &topic, &req.receipt_handle) {
            None | Some((_, Target::Local)) => {}
            Some((fwd, Target::Remote(node))) => {
                let forwarded = fwd
                    .unary(&node, &md, req.clone(), |mut c, r| async move { c.change_invisible_duration(r).await })
                    .await;
                return Ok(Response::new(forwarded.unwrap_or_else(|e| failed(from_error(&e)))));
            }
            Some((_, Target::Refuse(why))) => return Ok(Response::new(failed(from_error(&not_owner(why))))),
        }
        let reply = match self
            .broker
            .change_invisible_duration(&ctx.client_id, &group, &topic, &req.receipt_handle, delay)
            .await
        {
            Ok(handle) => proto::ChangeInvisibleDurationResponse { status: Some(ok()), receipt_handle: handle },
            Err(e) => failed(from_error(&e)),
        };
        Ok(Response::new(reply))
    }

    async fn recall_message(
        &self,
        request: Request<proto::RecallMessageRequest>,
    ) -> Result<Response<proto::RecallMessageResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let md = self.headers(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::RecallMessageResponse { status: Some(s), message_id: String::new() }));
        }
        // Cluster: the scheduled message is held by the node named in the handle.
        let (target, handle) = self.tagged_target(&md, &req.recall_handle);
        let handle = handle.to_string();
        match target {
            None | Some((_, Target::Local)) => {}
            Some((fwd, Target::Remote(node))) => {
                let forwarded = fwd.unary(&node, &md, req, |mut c, r| async move { c.recall_message(r).await }).await;
                let reply = forwarded.unwrap_or_else(|e| proto::RecallMessageResponse {
                    status: Some(from_error(&e)),
                    message_id: String::new(),
                });
                return Ok(Response::new(reply));
            }
            Some((_, Target::Refuse(why))) => {
                let s = from_error(&not_owner(why));
                return Ok(Response::new(proto::RecallMessageResponse { status: Some(s), message_id: String::new() }));
            }
        }
        let recalled = match ctx.topic(req.topic.as_ref()) {
            Ok(topic) => self.broker.recall(&topic, &handle).await,
            Err(e) => Err(e),
        };
        let reply = match recalled {
            Ok(message_id) => proto::RecallMessageResponse { status: Some(ok()), message_id },
            Err(e @ BrokerError::AdoptedElsewhere(_)) => match self.adopter(&md) {
                Some((fwd, node)) => {
                    let req = proto::RecallMessageRequest {
                        recall_handle: forward::tag(&node.node_id, &handle),
                        ..req.clone()
                    };
                    let forwarded =
                        fwd.unary(&node, &md, req, |mut c, r| async move { c.recall_message(r).await }).await;
                    forwarded.unwrap_or_else(|e| proto::RecallMessageResponse {
                        status: Some(from_error(&e)),
                        message_id: String::new(),
                    })
                }
                None => proto::RecallMessageResponse { status: Some(from_error(&e)), message_id: String::new() },
            },
            Err(e) => proto::RecallMessageResponse { status: Some(from_error(&e)), message_id: String::new() },
        };
        Ok(Response::new(reply))
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<proto::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<proto::SyncLiteSubscriptionResponse>, GrpcStatus> {
        Err(unimplemented("SyncLiteSubscription"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("40000m"), Some(Duration::from_secs(40)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("99999999999999999999H"), None);
    }

    #[test]
    fn request_context_from_headers() {
        let mut request = Request::new(());
        let md = request.metadata_mut();
        md.insert("x-mq-client-id", " client-1 ".parse().unwrap());
        md.append("x-mq-namespace", "ns".parse().unwrap());
        md.append("x-mq-namespace", "other".parse().unwrap());
        md.insert("grpc-timeout", "3S".parse().unwrap());
        md.insert("x-mq-language", "JAVA".parse().unwrap());
        md.insert_bin("x-mq-request-id-bin", tonic::metadata::MetadataValue::from_bytes(b"\x01"));
        md.insert("user-agent", "grpc-java".parse().unwrap());
        let ctx = Context::of(&request);
        assert_eq!(ctx.client_id, "client-1", "trimmed");
        assert_eq!(ctx.namespace, "ns", "the first value of a repeated header");
        assert_eq!(ctx.language, "JAVA");
        assert_eq!(ctx.deadline, Some(Duration::from_secs(3)));
        assert_eq!(ctx.request_id, "", "absent (a binary header of another name does not count)");
        let empty = Context::of(&Request::new(()));
        assert_eq!((empty.client_id.as_str(), empty.namespace.as_str(), empty.deadline), ("", "", None));
    }
}
