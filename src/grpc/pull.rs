//! The pull-consumer RPCs (protocol ≥ 2.0.3, reference: Apache commit 5a8b9868
//! `PullMessageActivity` / `PullMessageResponseStreamWriter` and `OffsetActivity`):
//! PullMessage, UpdateOffset, GetOffset and QueryOffset, on one `MessageQueue` (topic and
//! queue id) each. Converts proto ⇄ domain and calls the broker (`broker/offsets.rs`).
//!
//! PullMessage answers with a stream: `{status OK}`, one `{message}` per message (without a
//! receipt handle: pulled messages are not acked), `{next_offset}`; or `{status
//! MESSAGE_NOT_FOUND}`, `{next_offset}` when nothing (accepted by the filter) came within the
//! polling time; or `{status ILLEGAL_OFFSET}`, `{next_offset}` (the nearest valid offset) for
//! an offset below the queue's start or beyond its end; or only `{status}` for an error.

use tonic::{Request, Response, Status as GrpcStatus};

use super::convert;
use super::status::{from_error, ok, status};
use super::{BoxStream, Context, MessagingServiceImpl};
use crate::broker::{BrokerError, Filter, OffsetPolicy, PullRequest, PullStatus};
use crate::proto::{self, Code};

/// The filter of a request (TAG when no type is given).
pub(super) fn filter_of(f: Option<&proto::FilterExpression>) -> Result<Filter, BrokerError> {
    let Some(f) = f else { return Ok(Filter::All) };
    match proto::FilterType::try_from(f.r#type) {
        Ok(proto::FilterType::Tag) | Ok(proto::FilterType::Unspecified) => Filter::tags(&f.expression),
        Ok(proto::FilterType::Sql) => Filter::sql(&f.expression),
        Err(_) => Err(BrokerError::IllegalFilterExpression(format!("unknown filter type {}", f.r#type))),
    }
}

/// The queue id of a request's `message_queue` (its topic is read separately).
fn queue_id(q: Option<&proto::MessageQueue>) -> Result<i32, BrokerError> {
    q.map(|q| q.id).ok_or_else(|| BrokerError::BadRequest("message_queue is required".into()))
}

fn pull_frame(c: proto::pull_message_response::Content) -> Result<proto::PullMessageResponse, GrpcStatus> {
    Ok(proto::PullMessageResponse { content: Some(c) })
}

impl MessagingServiceImpl {
    pub(super) async fn pull(
        &self,
        request: Request<proto::PullMessageRequest>,
    ) -> Result<Response<BoxStream<proto::PullMessageResponse>>, GrpcStatus> {
        use proto::pull_message_response::Content;
        let ctx = Context::of(&request);
        let req = request.into_inner();
        let failed = |s: proto::Status| -> BoxStream<proto::PullMessageResponse> {
            Box::pin(futures::stream::iter(vec![pull_frame(Content::Status(s))]))
        };
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(failed(s)));
        }
        let mq = req.message_queue.as_ref();
        let parsed = filter_of(req.filter_expression.as_ref()).and_then(|f| {
            let (topic, group) = ctx.topic_and_group(mq.and_then(|q| q.topic.as_ref()), req.group.as_ref())?;
            Ok((f, queue_id(mq)?, topic, group))
        });
        let (filter, queue_id, topic, group) = match parsed {
            Ok(p) => p,
            Err(e) => return Ok(Response::new(failed(from_error(&e)))),
        };
        let pull = PullRequest {
            client_id: ctx.client_id.clone(),
            group,
            topic,
            queue_id,
            offset: req.offset,
            batch_size: req.batch_size,
            filter,
            long_polling_timeout: req.long_polling_timeout.as_ref().and_then(convert::duration),
            deadline_remaining: ctx.deadline,
        };
        tracing::trace!(?pull, "pull");
        let result = match self.broker.pull(pull).await {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(failed(from_error(&e)))),
        };
        let mut frames = Vec::with_capacity(result.messages.len() + 2);
        frames.push(pull_frame(Content::Status(match result.status {
            PullStatus::Found => ok(),
            PullStatus::NoNewMessage => status(Code::MessageNotFound, "no new message"),
            PullStatus::IllegalOffset => status(
                Code::IllegalOffset,
                format!("offset {} is outside the queue; next_offset is the nearest valid one", req.offset),
            ),
        })));
        let store_host = self.store_host(&ctx);
        let digest = self.body_digest(&ctx);
        frames.extend(result.messages.into_iter().map(|m| {
            let mut m = convert::delivered(m, &store_host, digest);
            if let Some(sp) = m.system_properties.as_mut() {
                sp.receipt_handle = None;
            }
            pull_frame(Content::Message(m))
        }));
        frames.push(pull_frame(Content::NextOffset(result.next_offset.min(i64::MAX as u64) as i64)));
        Ok(Response::new(Box::pin(futures::stream::iter(frames))))
    }

    pub(super) async fn update_offset_rpc(
        &self,
        request: Request<proto::UpdateOffsetRequest>,
    ) -> Result<Response<proto::UpdateOffsetResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::UpdateOffsetResponse { status: Some(s) }));
        }
        let mq = req.message_queue.as_ref();
        let names = ctx.topic_and_group(mq.and_then(|q| q.topic.as_ref()), req.group.as_ref());
        let result = match names.and_then(|n| Ok((n, queue_id(mq)?))) {
            Ok(((topic, group), q)) => self.broker.update_offset(&ctx.client_id, &group, &topic, q, req.offset).await,
            Err(e) => Err(e),
        };
        let s = match result {
            Ok(()) => ok(),
            Err(e) => from_error(&e),
        };
        Ok(Response::new(proto::UpdateOffsetResponse { status: Some(s) }))
    }

    pub(super) async fn get_offset_rpc(
        &self,
        request: Request<proto::GetOffsetRequest>,
    ) -> Result<Response<proto::GetOffsetResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::GetOffsetResponse { status: Some(s), offset: 0 }));
        }
        let mq = req.message_queue.as_ref();
        let names = ctx.topic_and_group(mq.and_then(|q| q.topic.as_ref()), req.group.as_ref());
        let result = match names.and_then(|n| Ok((n, queue_id(mq)?))) {
            Ok(((topic, group), q)) => self.broker.get_offset(&ctx.client_id, &group, &topic, q).await,
            Err(e) => Err(e),
        };
        let reply = match result {
            Ok(offset) => proto::GetOffsetResponse { status: Some(ok()), offset: offset.min(i64::MAX as u64) as i64 },
            Err(e) => proto::GetOffsetResponse { status: Some(from_error(&e)), offset: 0 },
        };
        Ok(Response::new(reply))
    }

    pub(super) async fn query_offset_rpc(
        &self,
        request: Request<proto::QueryOffsetRequest>,
    ) -> Result<Response<proto::QueryOffsetResponse>, GrpcStatus> {
        let ctx = Context::of(&request);
        let req = request.into_inner();
        if let Err(s) = ctx.require_client_id() {
            return Ok(Response::new(proto::QueryOffsetResponse { status: Some(s), offset: 0 }));
        }
        let mq = req.message_queue.as_ref();
        let topic = ctx.topic(mq.and_then(|q| q.topic.as_ref()));
        let policy = match proto::QueryOffsetPolicy::try_from(req.query_offset_policy) {
            Ok(proto::QueryOffsetPolicy::Beginning) => Ok(OffsetPolicy::Beginning),
            Ok(proto::QueryOffsetPolicy::End) => Ok(OffsetPolicy::End),
            Ok(proto::QueryOffsetPolicy::Timestamp) => match req.timestamp.as_ref() {
                None => {
                    Err(BrokerError::BadRequest("timestamp is required when query_offset_policy is TIMESTAMP".into()))
                }
                Some(t) => convert::timestamp_ms(t)
                    .map(OffsetPolicy::Timestamp)
                    .ok_or_else(|| BrokerError::BadRequest(format!("timestamp {}s is invalid", t.seconds))),
            },
            Err(_) => {
                Err(BrokerError::BadRequest(format!("unrecognized query_offset_policy {}", req.query_offset_policy)))
            }
        };
        let result = match (topic, policy, queue_id(mq)) {
            (Ok(topic), Ok(p), Ok(q)) => self.broker.query_offset(&topic, q, p).await,
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        self.broker.touch_client(&ctx.client_id);
        let reply = match result {
            Ok(offset) => proto::QueryOffsetResponse { status: Some(ok()), offset: offset.min(i64::MAX as u64) as i64 },
            Err(e) => proto::QueryOffsetResponse { status: Some(from_error(&e)), offset: 0 },
        };
        Ok(Response::new(reply))
    }
}
