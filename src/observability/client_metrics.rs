//! The SDKs' own metrics (`metrics.clientMetrics`): OTLP data points the clients export to the
//! endpoint announced in `Settings.metric`, folded into series with bounded labels and rendered
//! on `/metrics` under a `rocketmq_client_` prefix.
//!
//! Folding: only the labels `topic`, `consumer_group` and `invocation_status` are kept (the
//! client id and any other per-client label are dropped, so series are summed over clients).
//! Cumulative points are turned into deltas against the last point of the same source (metric,
//! all attributes, resource and start time) before being added; delta points are added as they
//! are; gauges keep the last value. New series beyond the cap (`metrics.maxSeries`) are folded
//! under `_other_` label values (or dropped if their metric is unknown, counted).
//! Imports only the OTLP message types (prost), no tonic.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, HistogramDataPoint, metric, number_data_point};

/// Labels kept from a client's data points.
const KEPT: &[&str] = &["topic", "consumer_group", "invocation_status"];
const OTHER: &str = super::metrics::OTHER;

static GLOBAL: OnceLock<ClientMetrics> = OnceLock::new();

/// Turns the receiver's store on (once per process).
pub fn init(max_series: usize) -> &'static ClientMetrics {
    GLOBAL.get_or_init(|| ClientMetrics::new(max_series))
}

/// The store, if `metrics.clientMetrics` is on.
pub fn global() -> Option<&'static ClientMetrics> {
    GLOBAL.get()
}

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidMetrics {
    #[error("metric without a name")]
    NoName,
    #[error("metric {0}: a number data point without a value")]
    NoValue(String),
    #[error("metric {0}: a non-finite value")]
    NotFinite(String),
    #[error("metric {0}: histogram bucket counts do not match its bounds")]
    Buckets(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Agg {
    Counter(f64),
    Gauge(f64),
    Histogram { bounds: Vec<f64>, counts: Vec<u64>, sum: f64, count: u64 },
}

impl Agg {
    fn kind(&self) -> &'static str {
        match self {
            Agg::Counter(_) => "counter",
            Agg::Gauge(_) => "gauge",
            Agg::Histogram { .. } => "histogram",
        }
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Inner {
    series: BTreeMap<(String, Labels), Agg>,
    /// Last cumulative point per source.
    last: HashMap<String, Agg>,
    /// Points whose series was dropped (cap reached on an unknown metric) or did not fit.
    dropped: u64,
    /// Data points received.
    received: u64,
}

/// The folded client series.
#[derive(Debug)]
pub struct ClientMetrics {
    cap: usize,
    inner: Mutex<Inner>,
}

/// What one request gave.
#[derive(Debug, Default, PartialEq)]
pub struct Folded {
    pub accepted: u64,
    /// Data points not kept (unsupported type, cap, bounds changed).
    pub rejected: u64,
}

impl ClientMetrics {
    pub fn new(cap: usize) -> ClientMetrics {
        ClientMetrics { cap, inner: Mutex::new(Inner::default()) }
    }

    /// Checks a whole request, then folds its data points.
    pub fn export(&self, req: &ExportMetricsServiceRequest) -> Result<Folded, InvalidMetrics> {
        validate(req)?;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Folded::default();
        for rm in &req.resource_metrics {
            let resource = rm.resource.as_ref().map(|r| attrs_key(&r.attributes)).unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let Some(data) = &m.data else { continue };
                    let points = self.points(&m.name, data, &resource);
                    for (source, name, labels, point, cumulative) in points {
                        let ok = match point {
                            Some(p) => inner.fold(self.cap, &source, name, labels, p, cumulative),
                            None => false,
                        };
                        inner.received += 1;
                        if ok {
                            out.accepted += 1;
                        } else {
                            inner.dropped += 1;
                            out.rejected += 1;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// (source key, series name, kept labels, point, cumulative?) of one metric.
    #[allow(clippy::type_complexity)]
    fn points(
        &self,
        raw: &str,
        data: &metric::Data,
        resource: &str,
    ) -> Vec<(String, String, Labels, Option<Agg>, bool)> {
        let base = series_name(raw);
        let cumulative = |t: i32| t != AggregationTemporality::Delta as i32;
        let source = |attrs: &[KeyValue], start: u64| format!("{raw}|{resource}|{}|{start}", attrs_key(attrs));
        match data {
            metric::Data::Sum(s) => {
                let name = if s.is_monotonic && !base.ends_with("_total") { format!("{base}_total") } else { base };
                s.data_points
                    .iter()
                    .map(|p| {
                        let v = number(p.value.as_ref());
                        let agg = if s.is_monotonic { Agg::Counter(v) } else { Agg::Gauge(v) };
                        let cum = s.is_monotonic && cumulative(s.aggregation_temporality);
                        (
                            source(&p.attributes, p.start_time_unix_nano),
                            name.clone(),
                            kept(&p.attributes),
                            Some(agg),
                            cum,
                        )
                    })
                    .collect()
            }
            metric::Data::Gauge(g) => g
                .data_points
                .iter()
                .map(|p| {
                    let agg = Agg::Gauge(number(p.value.as_ref()));
                    (String::new(), base.clone(), kept(&p.attributes), Some(agg), false)
                })
                .collect(),
            metric::Data::Histogram(h) => h
                .data_points
                .iter()
                .map(|p| {
                    (
                        source(&p.attributes, p.start_time_unix_nano),
                        base.clone(),
                        kept(&p.attributes),
                        Some(histogram(p)),
                        cumulative(h.aggregation_temporality),
                    )
                })
                .collect(),
            // Not folded (the SDKs send explicit-bucket histograms): counted as rejected.
            metric::Data::ExponentialHistogram(h) => {
                h.data_points.iter().map(|_| (String::new(), base.clone(), Vec::new(), None, false)).collect()
            }
            metric::Data::Summary(s) => {
                s.data_points.iter().map(|_| (String::new(), base.clone(), Vec::new(), None, false)).collect()
            }
        }
    }

    /// Appends the series in the Prometheus text format.
    pub fn render(&self, o: &mut String) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = "";
        for ((name, labels), agg) in &inner.series {
            if name != current {
                let _ = writeln!(o, "# HELP {name} Reported by the clients (OTLP), summed over clients.");
                let _ = writeln!(o, "# TYPE {name} {}", agg.kind());
                current = name;
            }
            let l = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect::<Vec<_>>().join(",");
            match agg {
                Agg::Counter(v) | Agg::Gauge(v) => {
                    let braces = if l.is_empty() { String::new() } else { format!("{{{l}}}") };
                    let _ = writeln!(o, "{name}{braces} {v}");
                }
                Agg::Histogram { bounds, counts, sum, count } => {
                    let sep = if l.is_empty() { "" } else { "," };
                    let mut acc = 0;
                    for (i, c) in counts.iter().enumerate() {
                        acc += c;
                        let le = bounds.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                        let _ = writeln!(o, "{name}_bucket{{{l}{sep}le=\"{le}\"}} {acc}");
                    }
                    let braces = if l.is_empty() { String::new() } else { format!("{{{l}}}") };
                    let _ = writeln!(o, "{name}_sum{braces} {sum}");
                    let _ = writeln!(o, "{name}_count{braces} {count}");
                }
            }
        }
        let _ = writeln!(
            o,
            "# HELP rocketmq_gateway_client_metric_points_total Client OTLP data points received.\n# TYPE rocketmq_gateway_client_metric_points_total counter\nrocketmq_gateway_client_metric_points_total {}",
            inner.received
        );
        let _ = writeln!(
            o,
            "# HELP rocketmq_gateway_client_metric_points_dropped_total Client data points not kept (unsupported type, series cap, changed bounds).\n# TYPE rocketmq_gateway_client_metric_points_dropped_total counter\nrocketmq_gateway_client_metric_points_dropped_total {}",
            inner.dropped
        );
    }
}

impl Inner {
    /// Adds one point; false if it was not kept.
    fn fold(&mut self, cap: usize, source: &str, name: String, labels: Labels, point: Agg, cumulative: bool) -> bool {
        let delta = if cumulative {
            let prev = self.last.get(source);
            if prev.is_none() && self.last.len() >= cap.saturating_mul(8).max(64) {
                // Too many sources remembered: cannot tell a delta, do not double count.
                return false;
            }
            let d = diff(&point, prev);
            self.last.insert(source.to_string(), point);
            d
        } else {
            point
        };
        let mut key = (name, labels);
        if !self.series.contains_key(&key) && self.series.len() >= cap {
            let other: Labels = key.1.iter().map(|(k, _)| (*k, OTHER.to_string())).collect();
            let known = self.series.keys().any(|(n, _)| *n == key.0);
            if !known {
                return false;
            }
            key.1 = other;
        }
        match self.series.get_mut(&key) {
            None => {
                let fresh = match delta {
                    Agg::Counter(v) => Agg::Counter(v.max(0.0)),
                    other => other,
                };
                self.series.insert(key, fresh);
                true
            }
            Some(agg) => add(agg, delta),
        }
    }
}

/// `point − prev` of a cumulative source (the whole point on a first sight or a reset).
fn diff(point: &Agg, prev: Option<&Agg>) -> Agg {
    match (point, prev) {
        (Agg::Counter(v), Some(Agg::Counter(p))) if v >= p => Agg::Counter(v - p),
        (
            Agg::Histogram { bounds, counts, sum, count },
            Some(Agg::Histogram { bounds: pb, counts: pc, sum: ps, count: pn }),
        ) if bounds == pb && counts.len() == pc.len() && count >= pn && counts.iter().zip(pc).all(|(a, b)| a >= b) => {
            Agg::Histogram {
                bounds: bounds.clone(),
                counts: counts.iter().zip(pc).map(|(a, b)| a - b).collect(),
                sum: sum - ps,
                count: count - pn,
            }
        }
        (p, _) => p.clone(),
    }
}

/// Adds a delta into a series; false if they do not fit (other kind, other bounds).
fn add(agg: &mut Agg, delta: Agg) -> bool {
    match (agg, delta) {
        (Agg::Counter(v), Agg::Counter(d)) => {
            *v += d.max(0.0);
            true
        }
        (Agg::Gauge(v), Agg::Gauge(d)) => {
            *v = d;
            true
        }
        (
            Agg::Histogram { bounds, counts, sum, count },
            Agg::Histogram { bounds: db, counts: dc, sum: ds, count: dn },
        ) if *bounds == db && counts.len() == dc.len() => {
            for (c, d) in counts.iter_mut().zip(dc) {
                *c += d;
            }
            *sum += ds;
            *count += dn;
            true
        }
        (Agg::Counter(_) | Agg::Gauge(_) | Agg::Histogram { .. }, _) => false,
    }
}

fn validate(req: &ExportMetricsServiceRequest) -> Result<(), InvalidMetrics> {
    for m in req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics) {
        if m.name.trim().is_empty() {
            return Err(InvalidMetrics::NoName);
        }
        let numbers = match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.as_slice(),
            Some(metric::Data::Gauge(g)) => g.data_points.as_slice(),
            Some(metric::Data::Histogram(h)) => {
                for p in &h.data_points {
                    let bounds_ok = p.explicit_bounds.iter().all(|b| b.is_finite())
                        && p.explicit_bounds.windows(2).all(|w| w[0] < w[1]);
                    if !bounds_ok || p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
                        return Err(InvalidMetrics::Buckets(m.name.clone()));
                    }
                    if p.sum.is_some_and(|s| !s.is_finite()) {
                        return Err(InvalidMetrics::NotFinite(m.name.clone()));
                    }
                }
                &[]
            }
            Some(metric::Data::ExponentialHistogram(_) | metric::Data::Summary(_)) | None => &[],
        };
        for p in numbers {
            match p.value {
                None => return Err(InvalidMetrics::NoValue(m.name.clone())),
                Some(number_data_point::Value::AsDouble(v)) if !v.is_finite() => {
                    return Err(InvalidMetrics::NotFinite(m.name.clone()));
                }
                Some(number_data_point::Value::AsDouble(_) | number_data_point::Value::AsInt(_)) => {}
            }
        }
    }
    Ok(())
}

fn number(v: Option<&number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => 0.0,
    }
}

fn histogram(p: &HistogramDataPoint) -> Agg {
    Agg::Histogram {
        bounds: p.explicit_bounds.clone(),
        counts: p.bucket_counts.clone(),
        sum: p.sum.unwrap_or(0.0),
        count: p.count,
    }
}

/// `rocketmq_client_` + the SDK's name (without its own `rocketmq_`), in Prometheus' alphabet.
fn series_name(raw: &str) -> String {
    let rest = raw.strip_prefix("rocketmq_").unwrap_or(raw);
    let clean: String = rest.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("rocketmq_client_{clean}")
}

/// The kept labels, in `KEPT` order.
fn kept(attrs: &[KeyValue]) -> Labels {
    KEPT.iter().filter_map(|k| attrs.iter().find(|a| a.key == *k).map(|a| (*k, value(a.value.as_ref())))).collect()
}

fn attrs_key(attrs: &[KeyValue]) -> String {
    let mut v: Vec<String> = attrs.iter().map(|a| format!("{}={}", a.key, value(a.value.as_ref()))).collect();
    v.sort();
    v.join(",")
}

fn value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(
            any_value::Value::ArrayValue(_)
            | any_value::Value::KvlistValue(_)
            | any_value::Value::BytesValue(_)
            | any_value::Value::StringValueStrindex(_),
        )
        | None => String::new(),
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn hist(
        client: &str,
        counts: Vec<u64>,
        sum: f64,
        temporality: AggregationTemporality,
    ) -> ExportMetricsServiceRequest {
        let count = counts.iter().sum();
        let p = HistogramDataPoint {
            attributes: vec![kv("topic", "t"), kv("client_id", client), kv("invocation_status", "success")],
            start_time_unix_nano: 1,
            count,
            sum: Some(sum),
            bucket_counts: counts,
            explicit_bounds: vec![1.0, 5.0],
            ..Default::default()
        };
        let m = Metric {
            name: "rocketmq_send_cost_time".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![p],
                aggregation_temporality: temporality as i32,
            })),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics: vec![m], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn cumulative_histograms_are_summed_over_clients_without_client_id() {
        let c = ClientMetrics::new(100);
        let cum = AggregationTemporality::Cumulative;
        c.export(&hist("a", vec![1, 0, 0], 0.5, cum)).unwrap();
        c.export(&hist("a", vec![2, 1, 0], 3.5, cum)).unwrap(); // cumulative: +1, +1
        c.export(&hist("b", vec![0, 0, 1], 9.0, cum)).unwrap();
        c.export(&hist("b", vec![0, 0, 1], 9.0, AggregationTemporality::Delta)).unwrap();
        let mut o = String::new();
        c.render(&mut o);
        let l = "topic=\"t\",invocation_status=\"success\"";
        assert!(o.contains("# TYPE rocketmq_client_send_cost_time histogram"), "{o}");
        assert!(o.contains(&format!("rocketmq_client_send_cost_time_bucket{{{l},le=\"1\"}} 2")), "{o}");
        assert!(o.contains(&format!("rocketmq_client_send_cost_time_bucket{{{l},le=\"+Inf\"}} 5")), "{o}");
        assert!(o.contains(&format!("rocketmq_client_send_cost_time_count{{{l}}} 5")), "{o}");
        assert!(o.contains(&format!("rocketmq_client_send_cost_time_sum{{{l}}} 21.5")), "{o}");
        assert!(!o.contains("client_id"), "{o}");
    }

    #[test]
    fn counters_get_total_and_the_cap_folds_into_other() {
        let c = ClientMetrics::new(1);
        let req = |topic: &str, v: i64| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "sent".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                attributes: vec![kv("topic", topic)],
                                value: Some(number_data_point::Value::AsInt(v)),
                                ..Default::default()
                            }],
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        c.export(&req("a", 2)).unwrap();
        c.export(&req("b", 3)).unwrap();
        c.export(&req("c", 4)).unwrap();
        let mut o = String::new();
        c.render(&mut o);
        assert!(o.contains("rocketmq_client_sent_total{topic=\"a\"} 2"), "{o}");
        assert!(o.contains("rocketmq_client_sent_total{topic=\"_other_\"} 7"), "{o}");
    }

    #[test]
    fn garbage_is_refused() {
        let c = ClientMetrics::new(10);
        let mut bad = hist("a", vec![1, 0], 0.5, AggregationTemporality::Cumulative);
        assert!(matches!(c.export(&bad), Err(InvalidMetrics::Buckets(_))));
        bad.resource_metrics[0].scope_metrics[0].metrics[0].name = String::new();
        assert_eq!(c.export(&bad), Err(InvalidMetrics::NoName));
    }
}
