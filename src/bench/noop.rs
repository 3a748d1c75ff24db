//! The ceiling: a tonic `MessagingService` on the same generated code, I/O threads, accept loop
//! and size limits as the gateway, whose SendMessage decodes the request and answers OK with one
//! entry per message (the gateway's response shape) — and does nothing else. Throughput
//! against it is what gRPC alone costs with the same client, concurrency and payload.

use std::net::SocketAddr;
use std::pin::Pin;

use clap::Args;
use futures::Stream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::TlsMode;
use crate::io_threads::IoThreads;
use crate::proto::messaging_service_server::{MessagingService, MessagingServiceServer};
use crate::proto::{self, Code};
use crate::tls;

/// `rmq-gateway bench noop-server`.
#[derive(Debug, Args)]
pub struct NoopArgs {
    /// Address to listen on (port 0 picks one; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// The no-op service.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopService;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ok() -> Option<proto::Status> {
    Some(proto::Status { code: Code::Ok as i32, message: "OK".into() })
}

fn unimplemented() -> Status {
    Status::unimplemented("the no-op benchmark server only implements SendMessage and QueryRoute")
}

#[tonic::async_trait]
impl MessagingService for NoopService {
    async fn query_route(
        &self,
        _request: Request<proto::QueryRouteRequest>,
    ) -> Result<Response<proto::QueryRouteResponse>, Status> {
        Ok(Response::new(proto::QueryRouteResponse { status: ok(), message_queues: vec![] }))
    }

    async fn heartbeat(
        &self,
        _request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        Ok(Response::new(proto::HeartbeatResponse { status: ok() }))
    }

    async fn send_message(
        &self,
        request: Request<proto::SendMessageRequest>,
    ) -> Result<Response<proto::SendMessageResponse>, Status> {
        let req = request.into_inner();
        let entries = req
            .messages
            .iter()
            .map(|m| proto::SendResultEntry {
                status: ok(),
                message_id: m.system_properties.as_ref().map(|s| s.message_id.clone()).unwrap_or_default(),
                transaction_id: String::new(),
                offset: 0,
                recall_handle: String::new(),
            })
            .collect();
        Ok(Response::new(proto::SendMessageResponse { status: ok(), entries }))
    }

    async fn query_assignment(
        &self,
        _request: Request<proto::QueryAssignmentRequest>,
    ) -> Result<Response<proto::QueryAssignmentResponse>, Status> {
        Err(unimplemented())
    }

    type ReceiveMessageStream = BoxStream<proto::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        _request: Request<proto::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        Err(unimplemented())
    }

    async fn ack_message(
        &self,
        _request: Request<proto::AckMessageRequest>,
    ) -> Result<Response<proto::AckMessageResponse>, Status> {
        Err(unimplemented())
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        _request: Request<proto::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<proto::ForwardMessageToDeadLetterQueueResponse>, Status> {
        Err(unimplemented())
    }

    type PullMessageStream = BoxStream<proto::PullMessageResponse>;

    async fn pull_message(
        &self,
        _request: Request<proto::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        Err(unimplemented())
    }

    async fn update_offset(
        &self,
        _request: Request<proto::UpdateOffsetRequest>,
    ) -> Result<Response<proto::UpdateOffsetResponse>, Status> {
        Err(unimplemented())
    }

    async fn get_offset(
        &self,
        _request: Request<proto::GetOffsetRequest>,
    ) -> Result<Response<proto::GetOffsetResponse>, Status> {
        Err(unimplemented())
    }

    async fn query_offset(
        &self,
        _request: Request<proto::QueryOffsetRequest>,
    ) -> Result<Response<proto::QueryOffsetResponse>, Status> {
        Err(unimplemented())
    }

    async fn end_transaction(
        &self,
        _request: Request<proto::EndTransactionRequest>,
    ) -> Result<Response<proto::EndTransactionResponse>, Status> {
        Err(unimplemented())
    }

    type TelemetryStream = BoxStream<proto::TelemetryCommand>;

    async fn telemetry(
        &self,
        _request: Request<Streaming<proto::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        Err(unimplemented())
    }

    async fn notify_client_termination(
        &self,
        _request: Request<proto::NotifyClientTerminationRequest>,
    ) -> Result<Response<proto::NotifyClientTerminationResponse>, Status> {
        Ok(Response::new(proto::NotifyClientTerminationResponse { status: ok() }))
    }

    async fn change_invisible_duration(
        &self,
        _request: Request<proto::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<proto::ChangeInvisibleDurationResponse>, Status> {
        Err(unimplemented())
    }

    async fn recall_message(
        &self,
        _request: Request<proto::RecallMessageRequest>,
    ) -> Result<Response<proto::RecallMessageResponse>, Status> {
        Err(unimplemented())
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<proto::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<proto::SyncLiteSubscriptionResponse>, Status> {
        Err(unimplemented())
    }
}

/// Serves the no-op service on `listener` until `stop` is cancelled, with the gateway's default
/// server settings ([`crate::server::grpc_server`], message size limits) and connection
/// handling: its accept loop (`TCP_NODELAY`) and its I/O threads (`server.ioThreads`).
pub async fn serve(listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    let defaults = crate::config::Config::default().server;
    let service = MessagingServiceServer::new(NoopService)
        .max_decoding_message_size(defaults.grpc_max_inbound_message_size)
        .max_encoding_message_size(usize::MAX);
    let router = crate::server::grpc_server(&defaults).add_service(service);
    let mut threads = IoThreads::start(
        defaults.io_threads,
        defaults.io_thread_affinity,
        router,
        None,
        TlsMode::Disabled,
        stop.clone(),
    )?;
    let served = threads.served();
    let accept = tokio::spawn(tls::accept_loop(listener, defaults.max_connections, threads.dispatcher(), stop));
    let result = served.await;
    let _ = accept.await;
    threads.release();
    Ok(result?)
}

/// `rmq-gateway bench noop-server`: prints `listening on <addr>` and serves until SIGINT or
/// SIGTERM.
pub async fn main(args: NoopArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let stop = CancellationToken::new();
    crate::server::cancel_on_signals(stop.clone());
    serve(listener, stop).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messaging_service_client::MessagingServiceClient;

    #[tokio::test]
    async fn answers_one_entry_per_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, stop.clone()));
        let mut c = MessagingServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let m = |id: &str| proto::Message {
            system_properties: Some(proto::SystemProperties { message_id: id.into(), ..Default::default() }),
            ..Default::default()
        };
        let r =
            c.send_message(proto::SendMessageRequest { messages: vec![m("a"), m("b")] }).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, Code::Ok as i32);
        let ids: Vec<_> = r.entries.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
