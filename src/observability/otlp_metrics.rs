//! Our own metrics as an OTLP `ExportMetricsServiceRequest` (`metrics.otlpEndpoint` push):
//! built from the registry's Prometheus exposition (the one snapshot every series goes
//! through), counters as cumulative monotonic sums, gauges as gauges, histograms as cumulative
//! explicit-bucket histograms, under a resource with `service.name`. Pure conversion (prost
//! types only); the sender lives with the other gRPC clients in the protocol layer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

type Labels = Vec<(String, String)>;

/// The push is configured (`metrics.otlpEndpoint`): its failure counter is rendered.
pub static PUSH_ENABLED: AtomicBool = AtomicBool::new(false);
/// Pushes that failed since start.
pub static PUSH_FAILURES: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Hist {
    /// (le, cumulative count), in exposition order.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

/// Converts a text exposition (Prometheus 0.0.4, as `Metrics::render` writes it).
pub fn from_exposition(
    text: &str,
    service_name: &str,
    start_unix_nano: u64,
    now_unix_nano: u64,
) -> ExportMetricsServiceRequest {
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut numbers: BTreeMap<String, Vec<(Labels, f64)>> = BTreeMap::new();
    let mut hists: BTreeMap<String, BTreeMap<Labels, Hist>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                if !kinds.contains_key(name) {
                    order.push(name.to_string());
                }
                kinds.insert(name.to_string(), kind.trim().to_string());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ') {
                helps.insert(name.to_string(), help.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else { continue };
        let hist_of = |suffix: &str| {
            name.strip_suffix(suffix).filter(|b| kinds.get(*b).is_some_and(|k| k == "histogram")).map(str::to_string)
        };
        if let Some(base) = hist_of("_bucket") {
            let (le, rest): (Vec<_>, Vec<_>) = labels.into_iter().partition(|(k, _)| k == "le");
            let bound = le.first().map_or(f64::INFINITY, |(_, v)| v.parse::<f64>().unwrap_or(f64::INFINITY));
            hists.entry(base).or_default().entry(rest).or_default().buckets.push((bound, value as u64));
        } else if let Some(base) = hist_of("_sum") {
            hists.entry(base).or_default().entry(labels).or_default().sum = value;
        } else if let Some(base) = hist_of("_count") {
            hists.entry(base).or_default().entry(labels).or_default().count = value as u64;
        } else {
            numbers.entry(name).or_default().push((labels, value));
        }
    }

    let mut metrics = Vec::new();
    for name in order {
        let kind = kinds.get(&name).map_or("gauge", String::as_str);
        let description = helps.get(&name).cloned().unwrap_or_default();
        let data = match kind {
            "histogram" => {
                let Some(series) = hists.remove(&name) else { continue };
                let data_points = series
                    .into_iter()
                    .map(|(labels, h)| {
                        let mut counts = Vec::with_capacity(h.buckets.len());
                        let mut bounds = Vec::new();
                        let mut prev = 0;
                        for (le, c) in &h.buckets {
                            counts.push(c.saturating_sub(prev));
                            prev = *c;
                            if le.is_finite() {
                                bounds.push(*le);
                            }
                        }
                        if h.buckets.last().is_none_or(|(le, _)| le.is_finite()) {
                            counts.push(h.count.saturating_sub(prev));
                        }
                        HistogramDataPoint {
                            attributes: attributes(&labels),
                            start_time_unix_nano: start_unix_nano,
                            time_unix_nano: now_unix_nano,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: counts,
                            explicit_bounds: bounds,
                            ..Default::default()
                        }
                    })
                    .collect();
                metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })
            }
            _ => {
                let Some(series) = numbers.remove(&name) else { continue };
                let counter = kind == "counter";
                let data_points = series
                    .into_iter()
                    .map(|(labels, v)| NumberDataPoint {
                        attributes: attributes(&labels),
                        start_time_unix_nano: if counter { start_unix_nano } else { 0 },
                        time_unix_nano: now_unix_nano,
                        value: Some(number_data_point::Value::AsDouble(v)),
                        ..Default::default()
                    })
                    .collect();
                if counter {
                    metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                } else {
                    metric::Data::Gauge(Gauge { data_points })
                }
            }
        };
        metrics.push(Metric { name, description, data: Some(data), ..Default::default() });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", service_name)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "rmq-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn string_kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string_kv(k, v)).collect()
}

/// `name{k="v",…} value` → parts (label values unescaped).
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().ok()?,
    };
    let Some(open) = head.find('{') else {
        return Some((head.to_string(), Vec::new(), value));
    };
    let name = head[..open].to_string();
    let body = head[open + 1..].strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut v = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_string(), v));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::metrics::{Gauges, Metrics};
    use std::time::Duration;

    #[test]
    fn exposition_becomes_otlp_sums_gauges_and_histograms() {
        let m = Metrics::new(100, None);
        m.messages_in("t,\"x\"", "normal", 3, 30);
        m.rpc_latency("SendMessage", "OK", Duration::from_millis(2));
        m.rpc_latency("SendMessage", "OK", Duration::from_millis(2000));
        let req = from_exposition(&m.render(&Gauges::default()), "gw", 1, 2);
        let rm = &req.resource_metrics[0];
        assert_eq!(rm.resource.as_ref().unwrap().attributes[0].key, "service.name");
        let metrics = &rm.scope_metrics[0].metrics;
        let find = |n: &str| metrics.iter().find(|m| m.name == n).unwrap_or_else(|| panic!("{n} missing"));
        let Some(metric::Data::Sum(s)) = &find("rocketmq_messages_in_total").data else { panic!("not a sum") };
        assert!(s.is_monotonic);
        let p = &s.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(3.0)));
        let topic = p.attributes.iter().find(|a| a.key == "topic").unwrap();
        assert_eq!(topic.value.as_ref().unwrap().value, Some(any_value::Value::StringValue("t,\"x\"".into())));
        let Some(metric::Data::Histogram(h)) = &find("rocketmq_rpc_latency").data else { panic!("not a histogram") };
        let p = &h.data_points[0];
        assert_eq!(p.count, 2);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(p.attributes.len(), 3);
        assert!(matches!(find("rocketmq_topic_number").data, Some(metric::Data::Gauge(_))));
    }
}
