//! The Telemetry bidi stream: answers every client `Settings` at once with status OK and the
//! complete server-side settings the SDKs need (producers: exponential backoff and
//! `max_body_size`; consumers: batch size, long-polling timeout, FIFO flag, retry policy),
//! fails the stream on Settings it cannot accept, writes the broker's server-initiated
//! commands (stack trace, verify message) to the client and hands its replies back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status as GrpcStatus, Streaming};

use super::convert::{BodyDigest, delivered, proto_duration};
use super::status::{code_of, ok, status};
use super::{BoxStream, Context, GrpcSettings, client_kind};
use crate::broker::{
    Backoff, Broker, BrokerError, ClientCommand, ClientKind, ClientReply, Filter, VerifyOutcome, validate,
};
use crate::proto::{self, Code, settings::PubSub, telemetry_command::Command};

type Outbound = mpsc::Sender<Result<proto::TelemetryCommand, GrpcStatus>>;

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

/// Settings that cannot be accepted fail the stream, as the Apache proxy does: gRPC
/// `INVALID_ARGUMENT` for a client error (4xxxx), `UNIMPLEMENTED` for what this gateway does
/// not support, `INTERNAL` otherwise. The SDKs report the stream error with its message; a
/// status-only reply is logged by Java as an unrecognized command and its start-up then times
/// out without saying why.
fn settings_refused(e: &BrokerError) -> GrpcStatus {
    let code = code_of(e);
    let message = format!("{} ({}): {e}", code.as_str_name(), code as i32);
    match code as i32 / 10_000 {
        4 => GrpcStatus::invalid_argument(message),
        _ if matches!(code, Code::Unsupported | Code::NotImplemented) => GrpcStatus::unimplemented(message),
        _ => GrpcStatus::internal(message),
    }
}

/// What a server-initiated command looks like on the wire. In a cluster (`node`: this node's
/// id) transaction ids carry the node holding the half message. `None`: a relayed command
/// that does not decode (dropped).
pub(super) fn outbound(cmd: ClientCommand, store_host: &str, node: Option<&str>) -> Option<proto::TelemetryCommand> {
    let c = match cmd {
        ClientCommand::PrintThreadStackTrace { nonce } => {
            Command::PrintThreadStackTraceCommand(proto::PrintThreadStackTraceCommand { nonce })
        }
        ClientCommand::VerifyMessage { nonce, message } => Command::VerifyMessageCommand(proto::VerifyMessageCommand {
            nonce,
            message: Some(delivered(*message, store_host, BodyDigest::Md5)),
        }),
        ClientCommand::RecoverOrphanedTransaction { message, transaction_id } => {
            let mut message = delivered(*message, store_host, BodyDigest::Md5);
            // A check carries the message as sent: no receipt handle, no delivery attempt.
            if let Some(sp) = message.system_properties.as_mut() {
                sp.receipt_handle = None;
                sp.delivery_attempt = None;
            }
            let transaction_id = match node {
                Some(node) => super::forward::tag(node, &transaction_id),
                None => transaction_id,
            };
            Command::RecoverOrphanedTransactionCommand(proto::RecoverOrphanedTransactionCommand {
                message: Some(message),
                transaction_id,
            })
        }
        ClientCommand::Relayed { payload } => {
            use prost::Message as _;
            return match proto::TelemetryCommand::decode(payload) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "relayed command does not decode; dropped");
                    None
                }
            };
        }
    };
    Some(proto::TelemetryCommand { status: None, command: Some(c) })
}

pub(super) fn serve(
    broker: Broker,
    config: Arc<GrpcSettings>,
    ctx: Context,
    node: Option<String>,
    mut inbound: Streaming<proto::TelemetryCommand>,
) -> BoxStream<proto::TelemetryCommand> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if let Err(s) = ctx.require_client_id() {
            let _ = tx.send(Ok(command(s, None))).await;
            return;
        }
        let (cmd_tx, mut commands) = mpsc::channel(16);
        let mut attachment = broker.attach_client_channel(&ctx.client_id, cmd_tx);
        // The command channel went away while this stream is open: a newer stream of this client
        // took over (this one then carries no more commands), or the client's session expired.
        let mut superseded = false;
        let store_host = ctx.local_addr.map(|a| a.to_string()).unwrap_or_default();
        let shutdown = broker.shutdown_token();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(cmd)) => {
                        broker.touch_client(&ctx.client_id);
                        match handle(&broker, &config, &ctx, cmd, &tx).await {
                            Ok(None) => {}
                            Ok(Some(reply)) => {
                                if tx.send(Ok(reply)).await.is_err() {
                                    break;
                                }
                            }
                            Err(refused) => {
                                tracing::info!(client_id = ctx.client_id, error = %refused.message(), "settings refused; failing the telemetry stream");
                                let _ = tx.send(Err(refused)).await;
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client_id = ctx.client_id, error = %e, "telemetry stream broken");
                        break;
                    }
                },
                cmd = commands.recv(), if !superseded => match cmd {
                    Some(cmd) => {
                        let Some(out) = outbound(cmd, &store_host, node.as_deref()) else { continue };
                        if tx.send(Ok(out)).await.is_err() {
                            break;
                        }
                    }
                    None if broker.client_connected(&ctx.client_id) => superseded = true,
                    None => {
                        // Expired while the stream stayed open: commands can reach it again.
                        let (cmd_tx, rx) = mpsc::channel(16);
                        commands = rx;
                        attachment = broker.attach_client_channel(&ctx.client_id, cmd_tx);
                    }
                },
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
            }
        }
        broker.detach_client_channel(&ctx.client_id, attachment);
    });
    Box::pin(ReceiverStream::new(rx))
}

async fn handle(
    broker: &Broker,
    config: &GrpcSettings,
    ctx: &Context,
    cmd: proto::TelemetryCommand,
    tx: &Outbound,
) -> Result<Option<proto::TelemetryCommand>, GrpcStatus> {
    let client_status = cmd.status.unwrap_or_else(ok);
    match cmd.command {
        Some(Command::Settings(settings)) => {
            let merged =
                settings_reply(broker, config, ctx, settings.clone()).await.map_err(|e| settings_refused(&e))?;
            let reply = command(ok(), Some(Command::Settings(merged)));
            if wants_settings_repeat(ctx, &settings) {
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
            Ok(Some(reply))
        }
        Some(Command::ThreadStackTrace(t)) => {
            let outcome = if client_status.code == Code::Ok as i32 {
                Ok(t.thread_stack_trace.unwrap_or_default())
            } else {
                Err(format!("{} ({})", client_status.message, client_status.code))
            };
            broker.client_reply(ClientReply::ThreadStackTrace { nonce: t.nonce, outcome });
            Ok(None)
        }
        Some(Command::VerifyMessageResult(v)) => {
            let outcome = match Code::try_from(client_status.code) {
                Ok(Code::Ok) => VerifyOutcome::Consumed,
                Ok(Code::FailedToConsumeMessage) => VerifyOutcome::FailedToConsume,
                Ok(Code::MessageCorrupted) => VerifyOutcome::Corrupted,
                Ok(_) | Err(_) => {
                    VerifyOutcome::Refused { code: client_status.code, message: client_status.message.clone() }
                }
            };
            broker.client_reply(ClientReply::VerifyMessageResult { nonce: v.nonce, outcome });
            Ok(None)
        }
        Some(
            Command::RecoverOrphanedTransactionCommand(_)
            | Command::PrintThreadStackTraceCommand(_)
            | Command::VerifyMessageCommand(_)
            | Command::ReconnectEndpointsCommand(_)
            | Command::NotifyUnsubscribeLiteCommand(_),
        ) => {
            Ok(Some(command(status(Code::BadRequest, "this telemetry command is sent by servers, not clients"), None)))
        }
        None => Ok(None),
    }
}

/// The client's settings merged with the server's (what the Apache proxy replies).
async fn settings_reply(
    broker: &Broker,
    config: &GrpcSettings,
    ctx: &Context,
    mut s: proto::Settings,
) -> Result<proto::Settings, BrokerError> {
    match s.pub_sub.as_mut() {
        Some(PubSub::Publishing(p)) => {
            let mut topics = Vec::with_capacity(p.topics.len());
            for t in &p.topics {
                let name = ctx.topic(Some(t))?;
                validate::validate_topic(&name)?;
                topics.push(name);
            }
            broker.register_client(&ctx.client_id, ClientKind::Producer, None, topics);
            p.max_body_size = config.max_body_size.min(i32::MAX as usize) as i32;
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
            let group = ctx.group(sub.group.as_ref())?;
            let simple = s.client_type == Some(proto::ClientType::SimpleConsumer as i32);
            for entry in &sub.subscriptions {
                let topic = ctx.topic(entry.topic.as_ref())?;
                validate::validate_topic(&topic)?;
                if let Some(e) = entry.expression.as_ref() {
                    match proto::FilterType::try_from(e.r#type) {
                        Ok(proto::FilterType::Tag | proto::FilterType::Unspecified) => {
                            Filter::tags(&e.expression)?;
                        }
                        // A bad expression fails a push consumer's start-up (its receives run
                        // in the background, where an error is only logged). A SimpleConsumer
                        // meets it on every receive instead, as ILLEGAL_FILTER_EXPRESSION with
                        // the position: the Java SDK's start-up failure would not show the
                        // reason (it retries and ends with "Stream is already completed"), and
                        // Apache does not check SQL92 expressions in Settings at all.
                        Ok(proto::FilterType::Sql) => {
                            if let Err(err) = Filter::sql(&e.expression) {
                                if simple {
                                    tracing::info!(client_id = ctx.client_id, topic, error = %err, "SimpleConsumer subscribed with a bad SQL92 expression; its receives will be refused");
                                } else {
                                    return Err(match err {
                                        BrokerError::IllegalFilterExpression(m) => {
                                            BrokerError::IllegalFilterExpression(format!(
                                                "subscription to `{topic}`: {m}"
                                            ))
                                        }
                                        other => other,
                                    });
                                }
                            }
                        }
                        Err(_) => {
                            return Err(BrokerError::IllegalFilterExpression(format!(
                                "unknown filter expression type {}",
                                e.r#type
                            )));
                        }
                    }
                }
            }
            let policy = broker.group_policy(&group).await?;
            let kind = s.client_type.map(client_kind).unwrap_or(ClientKind::Other);
            broker.register_client(&ctx.client_id, kind, Some(group), Vec::new());
            sub.fifo = Some(policy.fifo);
            sub.receive_batch_size = Some(policy.receive_batch_size);
            sub.long_polling_timeout = Some(proto_duration(policy.long_polling_timeout));
            let node = s.user_agent.as_ref().is_some_and(|ua| ua.language == proto::Language::NodeJs as i32);
            let exponential = |initial, max, multiplier: f64| {
                proto::retry_policy::Strategy::ExponentialBackoff(proto::ExponentialBackoff {
                    initial: Some(proto_duration(initial)),
                    max: Some(proto_duration(max)),
                    multiplier: multiplier as f32,
                })
            };
            let strategy = match policy.retry_backoff {
                Backoff::Exponential { initial, multiplier, max } => exponential(initial, max, multiplier),
                // The Node.js SDK (1.0.x) ignores a customized backoff and then gives a failed
                // FIFO message no retry at all (straight to the DLQ): it gets the same delays as
                // an exponential policy (first delay, doubling, capped at the last).
                Backoff::Customized(next) if node => {
                    let first = next.first().copied().unwrap_or(Duration::from_secs(1));
                    exponential(first, next.last().copied().unwrap_or(first), 2.0)
                }
                Backoff::Customized(next) => {
                    proto::retry_policy::Strategy::CustomizedBackoff(proto::CustomizedBackoff {
                        next: next.into_iter().map(proto_duration).collect(),
                    })
                }
            };
            s.backoff_policy = Some(proto::RetryPolicy { max_attempts: policy.max_attempts, strategy: Some(strategy) });
        }
        None => {
            return Err(BrokerError::BadRequest("settings carry neither publishing nor subscription".into()));
        }
    }
    // Client metrics on: the SDKs export their OTLP metrics to our own gRPC endpoint.
    let on = config.client_metrics;
    s.metric =
        Some(proto::Metric { on, endpoints: on.then(|| super::endpoints_at(config, &config.advertised_address, ctx)) });
    Ok(s)
}
