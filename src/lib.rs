//! rmq-gateway: a RocketMQ 5.x gRPC gateway with its own storage.
//!
//! Layers (see `../shared/DESIGN.md` and README "Architecture"):
//! - [`grpc`] and [`admin`] are protocol edges; they call the [`broker`] domain only and use
//!   its types (no metadata or storage types).
//! - [`broker`] sees storage and metadata only through the [`storage::MessageLog`] and
//!   [`metadata::MetadataStore`] traits, and is configured by [`broker::BrokerSettings`], not
//!   by [`config`].
//! - [`server`] is the only place that names concrete backends, and builds the broker's and
//!   the gRPC service's settings from the [`config::Config`].

pub mod storage;

pub mod proto {
    //! Generated `apache.rocketmq.v2` protocol types (from `apis/`).
    #![allow(clippy::all)]
    tonic::include_proto!("apache.rocketmq.v2");
}
pub mod admin;
#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod fast_map;
pub mod grpc;
pub mod io_threads;
pub mod metadata;
pub mod observability;
pub mod server;
pub mod tls;
