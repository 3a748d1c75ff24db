//! Cross-cutting observability: OpenTelemetry spans of each message's life ([`tracing`]).
//! The broker and the gRPC layer call into it; it imports no tonic/axum types itself
//! (the OTLP exporter crate brings its own tonic client).

pub mod tracing;
