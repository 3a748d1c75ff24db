//! The `apache.rocketmq.v2.MessagingService` gRPC service: reads request headers, converts
//! proto ⇄ domain, calls the [`Broker`], and maps errors to RocketMQ status codes. Business
//! errors travel in the response `Status` with gRPC OK; gRPC status codes are used only for
//! unimplemented RPCs and broken streams.

mod convert;
mod namespace;
mod pull;
pub mod status;
mod telemetry;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use crate::broker::{Broker, BrokerError, ClientKind, MessageType, ReceiveRequest, Resolution, ResolutionSource};
use crate::proto::messaging_service_server::{MessagingService, MessagingServiceServer};
use crate::proto::{self, Code};
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
}

impl Context {
    fn of<T>(req: &Request<T>) -> Context {
        let md = req.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().trim().to_string();
        Context {
            client_id: get("x-mq-client-id"),
            namespace: get("x-mq-namespace"),
            language: get("x-mq-language"),
            deadline: md.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout),
            local_addr: req.local_addr(),
            remote_addr: req.remote_addr(),
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

/// The MessagingService implementation.
#[derive(Clone)]
pub struct MessagingServiceImpl {
    broker: Broker,
    settings: Arc<GrpcSettings>,
}

impl MessagingServiceImpl {
    pub fn new(broker: Broker, settings: GrpcSettings) -> Self {
        Self { broker, settings: Arc::new(settings) }
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
        let server = &*self.settings;
        let port = i32::from(server.grpc_server_port);
        let (host, port) = if !server.advertised_address.is_empty() {
            match server.advertised_address.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => {
                    (h.trim_matches(['[', ']']).to_string(), p.parse::<i32>().unwrap_or(port))
                }
                _ => (server.advertised_address.trim_matches(['[', ']']).to_string(), port),
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

    fn message_queue(
        &self,
        topic: &str,
        id: i32,
        accepts: &[MessageType],
        endpoints: &proto::Endpoints,
    ) -> proto::MessageQueue {
        proto::MessageQueue {
            topic: Some(convert::resource(topic)),
            id,
            permission: proto::Permission::ReadWrite as i32,
            broker: Some(proto::Broker {
                name: self.settings.broker_name.clone(),
                id: 0,
                endpoints: Some(endpoints.clone()),
            }),
            accept_message_types: accepts.iter().map(|t| convert::message_type(*t) as i32).collect(),
        }
    }

    fn store_host(&self, ctx: &Context) -> String {
        ctx.local_addr.map(|a| a.to_string()).unwrap_or_default()
    }
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
                let endpoints = self.endpoints(&ctx);
                let queues = (0..route.queue_nums as i32)
                    .map(|id| self.message_queue(&route.topic, id, route.accepts, &endpoints))
                    .collect();
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
        let ctx = Context::of(&request);
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
        let messages: Result<Vec<_>, BrokerError> =
            req.messages.into_iter().map(|m| convert::outgoing(m, &ctx.namespace)).collect();
        let result = match messages {
            Ok(messages) => {
                // Without a peer address (not over TCP), each client id counts as a connection.
                let connection = ctx.remote_addr.map_or_else(|| format!("client:{}", ctx.client_id), |a| a.to_string());
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
                        transaction_id: r.transaction_id,
                        offset: r.offset as i64,
                        recall_handle: r.recall_handle.unwrap_or_default(),
                    })
                    .collect(),
            },
            Err(e) => {
                tracing::debug!(client_id = ctx.client_id, error = %e, "send refused");
                fail(from_error(&e))
            }
        };
        Ok(Response::new(reply))
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
        use proto::receive_message_response::Content;
        let ctx = Context::of(&request);
        let req = request.into_inner();
        let frame = |c: Content| Ok(proto::ReceiveMessageResponse { content: Some(c) });
        let done = |s: proto::Status| -> Self::ReceiveMessageStream {
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
        let receive = ReceiveRequest {
            client_id: ctx.client_id.clone(),
            group,
            topic,
            filter,
            batch_size: req.batch_size.max(0) as usize,
            invisible_duration,
            auto_renew: req.auto_renew,
            long_polling_timeout: req.long_polling_timeout.as_ref().and_then(convert::duration),
            deadline_remaining: ctx.deadline,
            attempt_id: req.attempt_id.clone(),
        };
        tracing::trace!(?receive, "receive");
        let stream: Self::ReceiveMessageStream = match self.broker.receive(receive).await {
            Ok(messages) if messages.is_empty() => done(status(Code::MessageNotFound, "no new message")),
            Ok(messages) => {
                let store_host = self.store_host(&ctx);
                let mut frames = Vec::with_capacity(messages.len() + 2);
                frames.push(frame(Content::Status(ok())));
                frames
                    .extend(messages.into_iter().map(|m| frame(Content::Message(convert::delivered(m, &store_host)))));
                frames.push(frame(Content::DeliveryTimestamp(convert::now_timestamp())));
                Box::pin(futures::stream::iter(frames))
            }
            Err(e) => done(from_error(&e)),
        };
        Ok(Response::new(stream))
    }

    async fn ack_message(
        &self,
        request: Request<proto::AckMessageRequest>,
    ) -> Result<Response<proto::AckMessageResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
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
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            let s = match self.broker.ack(&ctx.client_id, &group, &topic, &e.receipt_handle).await {
                Ok(()) => ok(),
                Err(err) => from_error(&err),
            };
            entries.push(result(&s, e));
        }
        let first = entries[0].status.as_ref().map(|s| s.code).unwrap_or_default();
        let top = if entries.iter().all(|e| e.status.as_ref().map(|s| s.code) == Some(first)) {
            entries[0].status.clone()
        } else {
            Some(status(Code::MultipleResults, "entries have different results"))
        };
        Ok(Response::new(proto::AckMessageResponse { status: top, entries }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<proto::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<proto::ForwardMessageToDeadLetterQueueResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::ForwardMessageToDeadLetterQueueResponse { status: Some(s) }));
        }
        let forwarded = match ctx.topic_and_group(req.topic.as_ref(), req.group.as_ref()) {
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
        self.pull(request).await
    }

    async fn update_offset(
        &self,
        request: Request<proto::UpdateOffsetRequest>,
    ) -> Result<Response<proto::UpdateOffsetResponse>, GrpcStatus> {
        self.update_offset_rpc(request).await
    }

    async fn get_offset(
        &self,
        request: Request<proto::GetOffsetRequest>,
    ) -> Result<Response<proto::GetOffsetResponse>, GrpcStatus> {
        self.get_offset_rpc(request).await
    }

    async fn query_offset(
        &self,
        request: Request<proto::QueryOffsetRequest>,
    ) -> Result<Response<proto::QueryOffsetResponse>, GrpcStatus> {
        self.query_offset_rpc(request).await
    }

    async fn end_transaction(
        &self,
        request: Request<proto::EndTransactionRequest>,
    ) -> Result<Response<proto::EndTransactionResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::EndTransactionResponse { status: Some(s) }));
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
        let s = match self.broker.end_transaction(&topic, &req.transaction_id, resolution, source).await {
            Ok(()) => ok(),
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
        let stream = telemetry::serve(self.broker.clone(), self.settings.clone(), ctx, request.into_inner());
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
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::RecallMessageResponse { status: Some(s), message_id: String::new() }));
        }
        let recalled = match ctx.topic(req.topic.as_ref()) {
            Ok(topic) => self.broker.recall(&topic, &req.recall_handle).await,
            Err(e) => Err(e),
        };
        let reply = match recalled {
            Ok(message_id) => proto::RecallMessageResponse { status: Some(ok()), message_id },
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
}
