//! Cross-cutting observability the broker, storage and protocol layers call into: the metrics
//! registry ([`metrics`]), the SDKs' own OTLP metrics folded with bounded labels
//! ([`client_metrics`]), the registry as an OTLP request for the push ([`otlp_metrics`]) and
//! OpenTelemetry spans of each message's life ([`tracing`]), and in test builds the live heap
//! ([`heap`]). Imports
//! no tonic or axum types itself (the OTLP exporter crate brings its own tonic client); the
//! layers above expose what it holds.

pub mod client_metrics;
pub mod heap;
pub mod metrics;
pub mod otlp_metrics;
pub mod tracing;
