//! The Telemetry bidi stream: answers every client `Settings` at once with status OK and the
//! complete server-side settings the SDKs need (producers: exponential backoff and
//! `max_body_size`; consumers: batch size, long-polling timeout, FIFO flag, retry policy), and
//! keeps one outbound channel per client id for server-initiated commands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status as GrpcStatus, Streaming};

use super::convert::{proto_duration, resource_name};
use super::status::{from_error, ok, status};
use super::{BoxStream, Context, client_kind};
use crate::broker::{Broker, BrokerError, ClientKind, Filter, validate};
use crate::proto::{self, Code, settings::PubSub, telemetry_command::Command};

type Outbound = mpsc::Sender<Result<proto::TelemetryCommand, GrpcStatus>>;

/// Open Telemetry streams by client id (for server-initiated commands such as transaction
/// checks).
#[derive(Default)]
pub struct TelemetryRegistry {
    streams: Mutex<HashMap<String, Outbound>>,
}

impl TelemetryRegistry {
    fn insert(&self, client_id: &str, tx: Outbound) {
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).insert(client_id.to_string(), tx);
    }

    fn remove(&self, client_id: &str, tx: &Outbound) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.get(client_id).is_some_and(|t| t.same_channel(tx)) {
            streams.remove(client_id);
        }
    }
}

fn command(status: proto::Status, cmd: Option<Command>) -> proto::TelemetryCommand {
    proto::TelemetryCommand { status: Some(status), command: cmd }
}

/// Node.js clients can miss a Settings reply that arrives while their startup is still
/// fetching routes, and then wait minutes for the next one; repeat it for them.
fn wants_settings_repeat(ctx: &Context, settings: &proto::Settings) -> bool {
    ctx.language.eq_ignore_ascii_case("HTTP")
        || ctx.language.eq_ignore_ascii_case("NODE_JS")
        || settings.user_agent.as_ref().is_some_and(|ua| ua.language == proto::Language::NodeJs as i32)
}

pub(super) fn serve(
    broker: Broker,
    registry: std::sync::Arc<TelemetryRegistry>,
    ctx: Context,
    mut inbound: Streaming<proto::TelemetryCommand>,
) -> BoxStream<proto::TelemetryCommand> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(s) = ctx.require_client_id() {
            let _ = tx.send(Ok(command(s, None))).await;
            return;
        }
        registry.insert(&ctx.client_id, tx.clone());
        let shutdown = broker.shutdown_token();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(cmd)) => {
                        broker.touch_client(&ctx.client_id);
                        if let Some(reply) = handle(&broker, &ctx, cmd, &tx).await
                            && tx.send(Ok(reply)).await.is_err()
                        {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client_id = ctx.client_id, error = %e, "telemetry stream broken");
                        break;
                    }
                },
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
            }
        }
        registry.remove(&ctx.client_id, &tx);
    });
    Box::pin(ReceiverStream::new(rx))
}

async fn handle(
    broker: &Broker,
    ctx: &Context,
    cmd: proto::TelemetryCommand,
    tx: &Outbound,
) -> Option<proto::TelemetryCommand> {
    match cmd.command {
        Some(Command::Settings(settings)) => {
            let reply = match settings_reply(broker, ctx, settings.clone()).await {
                Ok(merged) => command(ok(), Some(Command::Settings(merged))),
                Err(e) => command(from_error(&e), None),
            };
            if wants_settings_repeat(ctx, &settings) && reply.command.is_some() {
                let (tx, again) = (tx.clone(), reply.clone());
                tokio::spawn(async move {
                    for delay in [Duration::from_secs(1), Duration::from_secs(3)] {
                        tokio::time::sleep(delay).await;
                        if tx.send(Ok(again.clone())).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Some(reply)
        }
        // Replies to commands the gateway does not send yet; nothing to do.
        Some(Command::ThreadStackTrace(_)) | Some(Command::VerifyMessageResult(_)) => None,
        Some(
            Command::RecoverOrphanedTransactionCommand(_)
            | Command::PrintThreadStackTraceCommand(_)
            | Command::VerifyMessageCommand(_)
            | Command::ReconnectEndpointsCommand(_)
            | Command::NotifyUnsubscribeLiteCommand(_),
        ) => Some(command(status(Code::BadRequest, "this telemetry command is sent by servers, not clients"), None)),
        None => None,
    }
}

/// The client's settings merged with the server's (what the Apache proxy replies).
async fn settings_reply(
    broker: &Broker,
    ctx: &Context,
    mut s: proto::Settings,
) -> Result<proto::Settings, BrokerError> {
    let config = broker.config();
    match s.pub_sub.as_mut() {
        Some(PubSub::Publishing(p)) => {
            for t in &p.topics {
                validate::validate_topic(&resource_name(Some(t), &ctx.namespace))?;
            }
            broker.register_client(&ctx.client_id, ClientKind::Producer, None);
            p.max_body_size = config.limits.max_message_size.min(i32::MAX as usize) as i32;
            p.validate_message_type = true;
            let pc = &config.producer;
            s.backoff_policy = Some(proto::RetryPolicy {
                max_attempts: pc.max_attempts,
                strategy: Some(proto::retry_policy::Strategy::ExponentialBackoff(proto::ExponentialBackoff {
                    initial: Some(proto_duration(pc.backoff_initial)),
                    max: Some(proto_duration(pc.backoff_max)),
                    multiplier: pc.backoff_multiplier,
                })),
            });
        }
        Some(PubSub::Subscription(sub)) => {
            let group = resource_name(sub.group.as_ref(), &ctx.namespace);
            for entry in &sub.subscriptions {
                validate::validate_topic(&resource_name(entry.topic.as_ref(), &ctx.namespace))?;
                if let Some(e) = entry.expression.as_ref().filter(|e| e.r#type == proto::FilterType::Tag as i32) {
                    Filter::tags(&e.expression)?;
                }
            }
            let policy = broker.group_policy(&group).await?;
            let kind = s.client_type.map(client_kind).unwrap_or(ClientKind::Other);
            broker.register_client(&ctx.client_id, kind, Some(group));
            sub.fifo = Some(policy.fifo);
            sub.receive_batch_size = Some(policy.receive_batch_size);
            sub.long_polling_timeout = Some(proto_duration(policy.long_polling_timeout));
            s.backoff_policy = Some(proto::RetryPolicy {
                max_attempts: policy.max_attempts,
                strategy: Some(proto::retry_policy::Strategy::CustomizedBackoff(proto::CustomizedBackoff {
                    next: policy.retry_backoff.into_iter().map(proto_duration).collect(),
                })),
            });
        }
        None => {
            return Err(BrokerError::BadRequest("settings carry neither publishing nor subscription".into()));
        }
    }
    s.metric = Some(proto::Metric { on: false, endpoints: None });
    Ok(s)
}
