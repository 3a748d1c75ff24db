//! OTLP metrics over gRPC: the `MetricsService/Export` receiver the SDKs push their own metrics
//! to (`metrics.clientMetrics`, announced in `Settings.metric`), and the periodic push of the
//! gateway's own metrics to `metrics.otlpEndpoint`. Neither touches messaging: a refused or
//! failed export only shows in counters and one log line.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::observability::client_metrics::{ClientMetrics, InvalidMetrics};

/// The receiver of the SDKs' OTLP metrics.
pub struct ClientMetricsReceiver {
    store: &'static ClientMetrics,
}

impl ClientMetricsReceiver {
    pub fn server(store: &'static ClientMetrics) -> MetricsServiceServer<ClientMetricsReceiver> {
        MetricsServiceServer::new(ClientMetricsReceiver { store })
    }
}

#[tonic::async_trait]
impl MetricsService for ClientMetricsReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        match self.store.export(request.get_ref()) {
            Ok(f) if f.rejected == 0 => Ok(Response::new(ExportMetricsServiceResponse { partial_success: None })),
            Ok(f) => Ok(Response::new(ExportMetricsServiceResponse {
                partial_success: Some(ExportMetricsPartialSuccess {
                    rejected_data_points: i64::try_from(f.rejected).unwrap_or(i64::MAX),
                    error_message: "unsupported type, series cap reached or histogram bounds changed".into(),
                }),
            })),
            Err(
                e @ (InvalidMetrics::NoName
                | InvalidMetrics::NoValue(_)
                | InvalidMetrics::NotFinite(_)
                | InvalidMetrics::Buckets(_)),
            ) => Err(Status::invalid_argument(e.to_string())),
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Every `interval`, renders the registry with `snapshot` and exports it to `endpoint`
/// (`http://host:4317`) until `stop`. The first failure after a success is logged (warn), the
/// rest counted.
pub async fn push_loop<F>(
    endpoint: String,
    interval: Duration,
    service_name: String,
    snapshot: F,
    stop: CancellationToken,
) where
    F: Fn() -> Option<String> + Send + Sync + Clone + 'static,
{
    let start = unix_nanos();
    let mut client: Option<MetricsServiceClient<tonic::transport::Channel>> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let snap = snapshot.clone();
        let Ok(Some(text)) = tokio::task::spawn_blocking(snap).await else { continue };
        let req = crate::observability::otlp_metrics::from_exposition(&text, &service_name, start, unix_nanos());
        let result = async {
            if client.is_none() {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                client = Some(MetricsServiceClient::new(channel));
            }
            match client.as_mut() {
                Some(c) => c.export(req).await.map(|_| ()).map_err(|s| s.to_string()),
                None => Err("no client".to_string()),
            }
        }
        .await;
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(endpoint, "OTLP metrics push works again");
                }
                failing = false;
            }
            Err(e) => {
                crate::observability::otlp_metrics::PUSH_FAILURES.fetch_add(1, Ordering::Relaxed);
                client = None;
                if !failing {
                    tracing::warn!(endpoint, error = %e, "OTLP metrics push failed (counted, retried every interval)");
                }
                failing = true;
            }
        }
    }
}
