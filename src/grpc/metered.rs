//! The metrics side of the gRPC layer: [`Metered`] wraps the MessagingService and records, per
//! call, `rocketmq_rpc_latency{request_code=<RPC>,response_code=<RocketMQ Code>}` (the code of
//! the answer's `Status`, or `GRPC_<code>` when the call failed at the gRPC level), and per
//! message `rocketmq_messages_in_total` / `rocketmq_throughput_in_total` (sends the answer
//! says were stored) and `rocketmq_messages_out_total` / `rocketmq_throughput_out_total`
//! (messages in Receive/Pull answers). Cluster mode: messages are counted by the node the client
//! called, not again by the owner a request was forwarded to. With metrics off it only
//! delegates.

use std::sync::LazyLock;
use std::time::Instant;

use futures::StreamExt;
use smallvec::SmallVec;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap};
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::{BoxStream, MessagingServiceImpl, forward};
use crate::broker::namespace::NameKind;
use crate::observability::metrics::{self, Metrics};
use crate::proto::messaging_service_server::{MessagingService, MessagingServiceServer};
use crate::proto::{self, Code, MessageType};

/// The service with metrics recorded around each call.
#[derive(Clone)]
pub struct Metered {
    inner: MessagingServiceImpl,
}

impl MessagingServiceImpl {
    /// The gRPC server of this service, with `/metrics` recording around it.
    pub fn into_metered_server(self) -> MessagingServiceServer<Metered> {
        let max = self.settings.grpc_max_inbound_message_size;
        MessagingServiceServer::new(Metered { inner: self })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
    }
}

impl Metered {
    /// Whether another node of the cluster forwarded this request (it was counted there). A
    /// single node has no peers: the header means nothing and is not looked up.
    fn forwarded<T>(&self, request: &Request<T>) -> bool {
        self.inner.cluster.is_some() && forward::forwarded_by(request.metadata()).is_some()
    }
}

/// The RocketMQ code's name (`OK`, `MESSAGE_NOT_FOUND`, …).
fn code_name(code: i32) -> &'static str {
    Code::try_from(code).map_or("UNKNOWN_CODE", |c| c.as_str_name())
}

/// A call that failed at the gRPC level.
fn grpc_code_name(s: &GrpcStatus) -> &'static str {
    use tonic::Code as G;
    match s.code() {
        G::Ok => "GRPC_OK",
        G::Cancelled => "GRPC_CANCELLED",
        G::Unknown => "GRPC_UNKNOWN",
        G::InvalidArgument => "GRPC_INVALID_ARGUMENT",
        G::DeadlineExceeded => "GRPC_DEADLINE_EXCEEDED",
        G::NotFound => "GRPC_NOT_FOUND",
        G::AlreadyExists => "GRPC_ALREADY_EXISTS",
        G::PermissionDenied => "GRPC_PERMISSION_DENIED",
        G::ResourceExhausted => "GRPC_RESOURCE_EXHAUSTED",
        G::FailedPrecondition => "GRPC_FAILED_PRECONDITION",
        G::Aborted => "GRPC_ABORTED",
        G::OutOfRange => "GRPC_OUT_OF_RANGE",
        G::Unimplemented => "GRPC_UNIMPLEMENTED",
        G::Internal => "GRPC_INTERNAL",
        G::Unavailable => "GRPC_UNAVAILABLE",
        G::DataLoss => "GRPC_DATA_LOSS",
        G::Unauthenticated => "GRPC_UNAUTHENTICATED",
    }
}

/// `message_type` label values (RocketMQ's lower-case `getMetricsValue`).
fn type_name(t: i32) -> &'static str {
    match MessageType::try_from(t) {
        Ok(MessageType::Normal) | Ok(MessageType::Unspecified) | Err(_) => "normal",
        Ok(MessageType::Fifo) => "fifo",
        Ok(MessageType::Delay) => "delay",
        Ok(MessageType::Transaction) => "transaction",
        Ok(MessageType::Lite) => "lite",
        Ok(MessageType::Priority) => "priority",
    }
}

/// A resource as the broker names it (`ns%name` in a namespace, from its `resource_namespace`
/// or the request's `x-mq-namespace` header, as the handlers resolve it), so that the
/// per-message counters and the scrape-time gauges (keyed by broker-side names) agree. A
/// request the handler will refuse keeps the plain name (its message count is zero anyway).
fn resource_name(r: Option<&proto::Resource>, md: &MetadataMap, kind: NameKind) -> String {
    // Parsed once: a look-up by `&str` validates and lower-cases the name each time.
    static NAMESPACE: LazyLock<MetadataKey<Ascii>> = LazyLock::new(|| MetadataKey::from_static("x-mq-namespace"));
    let header = md.get(&*NAMESPACE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    super::namespace::internal_name(r, header, kind).unwrap_or_else(|_| r.map(|r| r.name.clone()).unwrap_or_default())
}

/// Records a unary call whose answer carries a `Status`.
fn unary<T>(
    m: Option<&Metrics>,
    rpc: &'static str,
    started: Instant,
    result: &Result<Response<T>, GrpcStatus>,
    status: impl Fn(&T) -> Option<&proto::Status>,
) {
    let Some(m) = m else { return };
    let code = match result {
        Ok(r) => status(r.get_ref()).map_or("UNKNOWN_CODE", |s| code_name(s.code)),
        Err(s) => grpc_code_name(s),
    };
    m.rpc_latency(rpc, code, started.elapsed());
}

/// Wraps a Receive/Pull answer: the latency is recorded at its status frame, each message
/// counts out for (topic, group) unless `count` is false (a part of another node's answer:
/// counted there, where the client called).
fn streamed<T: Send + 'static>(
    m: &'static Metrics,
    rpc: &'static str,
    started: Instant,
    (topic, group, count): (String, String, bool),
    result: Result<Response<BoxStream<T>>, GrpcStatus>,
    content: fn(&T) -> (Option<&proto::Status>, Option<&proto::Message>),
) -> Result<Response<BoxStream<T>>, GrpcStatus> {
    match result {
        Ok(r) => {
            let stream = r.into_inner().inspect(move |frame| {
                if let Ok(frame) = frame {
                    match content(frame) {
                        (Some(s), _) => m.rpc_latency(rpc, code_name(s.code), started.elapsed()),
                        (None, Some(msg)) if count => m.messages_out(&topic, &group, 1, msg.body.len() as u64),
                        (None, Some(_)) => {}
                        (None, None) => {}
                    }
                }
            });
            let boxed: BoxStream<T> = Box::pin(stream);
            Ok(Response::new(boxed))
        }
        Err(s) => {
            m.rpc_latency(rpc, grpc_code_name(&s), started.elapsed());
            Err(s)
        }
    }
}

/// The body of a unary delegation: time it, record it with the answer's code.
macro_rules! timed {
    ($self:ident, $name:ident, $rpc:literal, $request:ident) => {{
        let started = Instant::now();
        let result = $self.inner.$name($request).await;
        unary(metrics::global(), $rpc, started, &result, |r| r.status.as_ref());
        result
    }};
}

#[tonic::async_trait]
impl MessagingService for Metered {
    type ReceiveMessageStream = BoxStream<proto::ReceiveMessageResponse>;
    type PullMessageStream = BoxStream<proto::PullMessageResponse>;
    type TelemetryStream = BoxStream<proto::TelemetryCommand>;

    async fn query_route(
        &self,
        request: Request<proto::QueryRouteRequest>,
    ) -> Result<Response<proto::QueryRouteResponse>, GrpcStatus> {
        timed!(self, query_route, "QueryRoute", request)
    }
    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, GrpcStatus> {
        timed!(self, heartbeat, "Heartbeat", request)
    }
    async fn query_assignment(
        &self,
        request: Request<proto::QueryAssignmentRequest>,
    ) -> Result<Response<proto::QueryAssignmentResponse>, GrpcStatus> {
        timed!(self, query_assignment, "QueryAssignment", request)
    }
    async fn ack_message(
        &self,
        request: Request<proto::AckMessageRequest>,
    ) -> Result<Response<proto::AckMessageResponse>, GrpcStatus> {
        timed!(self, ack, "AckMessage", request)
    }
    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<proto::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<proto::ForwardMessageToDeadLetterQueueResponse>, GrpcStatus> {
        timed!(self, forward_message_to_dead_letter_queue, "ForwardMessageToDeadLetterQueue", request)
    }
    async fn update_offset(
        &self,
        request: Request<proto::UpdateOffsetRequest>,
    ) -> Result<Response<proto::UpdateOffsetResponse>, GrpcStatus> {
        timed!(self, update_offset, "UpdateOffset", request)
    }
    async fn get_offset(
        &self,
        request: Request<proto::GetOffsetRequest>,
    ) -> Result<Response<proto::GetOffsetResponse>, GrpcStatus> {
        timed!(self, get_offset, "GetOffset", request)
    }
    async fn query_offset(
        &self,
        request: Request<proto::QueryOffsetRequest>,
    ) -> Result<Response<proto::QueryOffsetResponse>, GrpcStatus> {
        timed!(self, query_offset, "QueryOffset", request)
    }
    async fn end_transaction(
        &self,
        request: Request<proto::EndTransactionRequest>,
    ) -> Result<Response<proto::EndTransactionResponse>, GrpcStatus> {
        timed!(self, end_transaction, "EndTransaction", request)
    }
    async fn notify_client_termination(
        &self,
        request: Request<proto::NotifyClientTerminationRequest>,
    ) -> Result<Response<proto::NotifyClientTerminationResponse>, GrpcStatus> {
        timed!(self, notify_client_termination, "NotifyClientTermination", request)
    }
    async fn change_invisible_duration(
        &self,
        request: Request<proto::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<proto::ChangeInvisibleDurationResponse>, GrpcStatus> {
        timed!(self, change_invisible_duration, "ChangeInvisibleDuration", request)
    }
    async fn recall_message(
        &self,
        request: Request<proto::RecallMessageRequest>,
    ) -> Result<Response<proto::RecallMessageResponse>, GrpcStatus> {
        timed!(self, recall_message, "RecallMessage", request)
    }
    async fn sync_lite_subscription(
        &self,
        request: Request<proto::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<proto::SyncLiteSubscriptionResponse>, GrpcStatus> {
        timed!(self, sync_lite_subscription, "SyncLiteSubscription", request)
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, GrpcStatus> {
        let Some(m) = metrics::global() else {
            return self.inner.send(request).await;
        };
        let started = Instant::now();
        let forwarded = self.forwarded(&request);
        let msgs = &request.get_ref().messages;
        // One topic and one kind of message per request: the broker refuses every entry of a
        // request that mixes them, so the first message's topic and type label all that are
        // stored. Body bytes per message, in request order (the answer's entries are in that
        // order).
        let first = msgs.first();
        let topic = resource_name(first.and_then(|msg| msg.topic.as_ref()), request.metadata(), NameKind::Topic);
        let kind = type_name(first.and_then(|msg| msg.system_properties.as_ref()).map_or(0, |s| s.message_type));
        let sizes: SmallVec<[u64; 4]> = msgs.iter().map(|msg| msg.body.len() as u64).collect();
        let result = self.inner.send(request).await;
        unary(Some(m), "SendMessage", started, &result, |r| r.status.as_ref());
        // A send forwarded from another node was counted there (the node the client called).
        if let (Ok(r), false) = (&result, forwarded) {
            let (count, bytes) = r
                .get_ref()
                .entries
                .iter()
                .zip(&sizes)
                .filter(|(entry, _)| entry.status.as_ref().is_some_and(|s| s.code == Code::Ok as i32))
                .fold((0, 0), |(n, total), (_, bytes)| (n + 1, total + bytes));
            if count > 0 {
                m.messages_in(&topic, kind, count, bytes);
            }
        }
        result
    }

    async fn receive_message(
        &self,
        request: Request<proto::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, GrpcStatus> {
        let Some(m) = metrics::global() else {
            return self.inner.receive(request).await;
        };
        let started = Instant::now();
        let req = request.get_ref();
        let md = request.metadata();
        let topic = resource_name(req.message_queue.as_ref().and_then(|q| q.topic.as_ref()), md, NameKind::Topic);
        let group = resource_name(req.group.as_ref(), md, NameKind::Group);
        let count = !self.forwarded(&request);
        let result = self.inner.receive(request).await;
        streamed(m, "ReceiveMessage", started, (topic, group, count), result, |f: &proto::ReceiveMessageResponse| {
            use proto::receive_message_response::Content;
            match &f.content {
                Some(Content::Status(s)) => (Some(s), None),
                Some(Content::Message(msg)) => (None, Some(msg)),
                Some(Content::DeliveryTimestamp(_)) | None => (None, None),
            }
        })
    }

    async fn pull_message(
        &self,
        request: Request<proto::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, GrpcStatus> {
        let Some(m) = metrics::global() else {
            return self.inner.pull_message(request).await;
        };
        let started = Instant::now();
        let req = request.get_ref();
        let md = request.metadata();
        let topic = resource_name(req.message_queue.as_ref().and_then(|q| q.topic.as_ref()), md, NameKind::Topic);
        let group = resource_name(req.group.as_ref(), md, NameKind::Group);
        let count = !self.forwarded(&request);
        let result = self.inner.pull_message(request).await;
        streamed(m, "PullMessage", started, (topic, group, count), result, |f: &proto::PullMessageResponse| {
            use proto::pull_message_response::Content;
            match &f.content {
                Some(Content::Status(s)) => (Some(s), None),
                Some(Content::Message(msg)) => (None, Some(msg)),
                Some(Content::NextOffset(_)) | None => (None, None),
            }
        })
    }

    /// A long-lived stream: not timed.
    async fn telemetry(
        &self,
        request: Request<Streaming<proto::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, GrpcStatus> {
        self.inner.telemetry(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values() {
        assert_eq!(code_name(Code::Ok as i32), "OK");
        assert_eq!(code_name(Code::MessageNotFound as i32), "MESSAGE_NOT_FOUND");
        assert_eq!(code_name(-7), "UNKNOWN_CODE");
        assert_eq!(type_name(MessageType::Fifo as i32), "fifo");
        assert_eq!(type_name(0), "normal");
        let none = tonic::metadata::MetadataMap::new();
        let r = proto::Resource { resource_namespace: "ns".into(), name: "t".into() };
        assert_eq!(resource_name(Some(&r), &none, NameKind::Topic), "ns%t");
        // The namespace from the header, as the handlers resolve it (Node sends only that).
        let mut header = tonic::metadata::MetadataMap::new();
        header.insert("x-mq-namespace", "ns".parse().unwrap());
        let plain = proto::Resource { resource_namespace: String::new(), name: "g".into() };
        assert_eq!(resource_name(Some(&plain), &header, NameKind::Group), "ns%g");
        assert_eq!(resource_name(Some(&plain), &none, NameKind::Group), "g");
    }
}
