//! OTLP metrics in both directions:
//! - `metrics.clientMetrics: true`: the official Java SDK (rocketmq-client-java 5.2.0) gets
//!   `Settings.metric.on` with the gateway's own endpoint, exports its OTLP metrics there
//!   (`ClientMeterManager`: over TLS with an insecure trust manager, every 60 s and once more
//!   when the client shuts down), and `/metrics` shows `rocketmq_client_send_cost_time…` with
//!   the test's topic and no `client_id` label. Garbage is refused with INVALID_ARGUMENT; with
//!   the option off the service is not served.
//! - `metrics.otlpEndpoint`: a `MetricsService/Export` receiver started by the test (tonic,
//!   from the `opentelemetry-proto` protobufs) gets `rocketmq_messages_in_total` for the
//!   test's topic with the number of messages the Java producer sent.
//!
//! Needs `cargo build --bin rmq-gateway` and the Java driver (`SDK_ONLY=java sdk/setup.sh`).
//! A missing part skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::scenario::{Ctx, Metadata, count, shout};
use integration_tests::sdk::Sdk;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};

fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP answer: {text}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or_default()));
    }
    Ok(body.to_string())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn java_sdk_metrics_reach_slash_metrics_without_client_id() {
    let test = "client-metrics";
    let Some(ctx) = Ctx::start_configured(
        test,
        &[Sdk::Java],
        Metadata::from_env(),
        &[("RMQ_GATEWAY_METRICS__CLIENT_METRICS", "true")],
    ) else {
        return;
    };
    let (topic, _) = ctx.topic_and_group();
    ctx.produce(Sdk::Java, &topic, "m");

    // The SDK exports every 60 s and when it shuts down (the driver closes its producer).
    let deadline = Instant::now() + Duration::from_secs(90);
    let needle = format!("rocketmq_client_send_cost_time_count{{topic=\"{topic}\"");
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(ctx.gateway.http_port, "/metrics").unwrap_or_default();
        if text.contains(&needle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let client: Vec<&str> = text.lines().filter(|l| l.starts_with("rocketmq_client_")).collect();
    eprintln!("client series on /metrics:\n{}", client.join("\n"));
    assert!(
        text.contains(&needle),
        "{needle} not on /metrics; client series:\n{}\n--- gateway log:\n{}",
        client.join("\n"),
        ctx.gateway.log_tail(40)
    );
    assert!(!client.iter().any(|l| l.contains("client_id")), "{}", client.join("\n"));
    let line = client.iter().find(|l| l.starts_with(&needle)).unwrap();
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, count() as f64, "{line}");
    assert!(text.contains("# TYPE rocketmq_client_send_cost_time histogram"));

    // Garbage (bucket counts not matching the bounds) is refused.
    let endpoint = format!("http://127.0.0.1:{}", ctx.gateway.grpc_port);
    let bad = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "rocketmq_send_cost_time".into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            bucket_counts: vec![1],
                            explicit_bounds: vec![1.0, 2.0],
                            count: 1,
                            ..Default::default()
                        }],
                        aggregation_temporality: 2,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let status = rt().block_on(async {
        let mut c = MetricsServiceClient::connect(endpoint).await.unwrap();
        c.export(bad).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[test]
fn client_metrics_off_serves_no_metrics_service() {
    let Some(ctx) = Ctx::start_configured("client-metrics-off", &[], Metadata::Sqlite, &[]) else {
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", ctx.gateway.grpc_port);
    let status = rt().block_on(async {
        let mut c = MetricsServiceClient::connect(endpoint).await.unwrap();
        c.export(ExportMetricsServiceRequest::default()).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.got.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// `rocketmq_messages_in_total` for `topic` in one pushed request (summed over message types).
fn messages_in(req: &ExportMetricsServiceRequest, topic: &str) -> Option<(f64, String)> {
    let rm = req.resource_metrics.first()?;
    let service = rm
        .resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref()?.value.clone());
    let service = match service {
        Some(any_value::Value::StringValue(s)) => s,
        _ => String::new(),
    };
    let m = rm.scope_metrics.iter().flat_map(|s| &s.metrics).find(|m| m.name == "rocketmq_messages_in_total")?;
    let Some(metric::Data::Sum(sum)) = &m.data else { return None };
    assert!(sum.is_monotonic && sum.aggregation_temporality == 2, "{sum:?}");
    let mut total = None;
    for p in &sum.data_points {
        let is_topic = p.attributes.iter().any(|a| {
            a.key == "topic"
                && matches!(a.value.as_ref().and_then(|v| v.value.as_ref()), Some(any_value::Value::StringValue(t)) if t == topic)
        });
        if is_topic {
            let v = match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                None => 0.0,
            };
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total.map(|t| (t, service))
}

#[test]
fn own_metrics_are_pushed_with_otlp() {
    let rt = rt();
    let receiver = Receiver::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = receiver.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let endpoint = format!("http://{addr}");
    let Some(ctx) = Ctx::start_configured(
        "otlp-push",
        &[Sdk::Java],
        Metadata::from_env(),
        &[("RMQ_GATEWAY_METRICS__OTLP_ENDPOINT", endpoint.as_str()), ("RMQ_GATEWAY_METRICS__OTLP_INTERVAL", "1s")],
    ) else {
        return;
    };
    let (topic, _) = ctx.topic_and_group();
    ctx.produce(Sdk::Java, &topic, "p");
    let want = count() as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = receiver.got.lock().unwrap().iter().rev().find_map(|r| messages_in(r, &topic));
        if last.as_ref().is_some_and(|(v, _)| *v == want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let pushes = receiver.got.lock().unwrap().len();
    assert_eq!(
        last.as_ref().map(|l| l.0),
        Some(want),
        "{pushes} pushes received; gateway log:\n{}",
        ctx.gateway.log_tail(30)
    );
    assert_eq!(last.map(|l| l.1).as_deref(), Some("rmq-gateway"));
    if pushes == 0 {
        shout("no push received");
    }
}

/// The push target is down: sends still succeed, the failures are counted on `/metrics`.
#[test]
fn push_to_a_dead_collector_leaves_messaging_alone() {
    let dead = integration_tests::gateway_process::free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{dead}");
    let Some(ctx) = Ctx::start_configured(
        "otlp-push-down",
        &[Sdk::Java],
        Metadata::from_env(),
        &[("RMQ_GATEWAY_METRICS__OTLP_ENDPOINT", endpoint.as_str()), ("RMQ_GATEWAY_METRICS__OTLP_INTERVAL", "1s")],
    ) else {
        return;
    };
    let (topic, _) = ctx.topic_and_group();
    let ids = ctx.produce(Sdk::Java, &topic, "d");
    assert_eq!(ids.len(), count());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0.0;
    while Instant::now() < deadline && failures < 1.0 {
        let text = http_get(ctx.gateway.http_port, "/metrics").unwrap_or_default();
        failures = text
            .lines()
            .find_map(|l| l.strip_prefix("rocketmq_gateway_otlp_push_failures_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(failures >= 1.0, "no push failure counted; gateway log:\n{}", ctx.gateway.log_tail(30));
    let warned = ctx.gateway.log_lines_with("OTLP metrics push failed");
    assert_eq!(warned.len(), 1, "logged once: {warned:?}");
}
