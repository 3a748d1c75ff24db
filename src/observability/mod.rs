//! Cross-cutting observability the broker, storage and protocol layers call into: the metrics
//! registry (`metrics`). Imports no tonic or axum; the layers above expose what it holds.

pub mod metrics;
