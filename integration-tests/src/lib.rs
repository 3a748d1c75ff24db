//! Shared helpers for the end-to-end tests.
//!
//! - [`apache`]: Apache RocketMQ 5 itself on loopback (reference/apache.sh), for differential tests.
//! - [`cluster`]: several gateways as one cluster (one PostgreSQL, one S3 server, a fault proxy
//!   per node in front of PostgreSQL, a round-robin TCP load balancer), with per-node faults.
//! - [`client`]: raw gRPC request helpers for protocol-level tests.
//! - [`filters`]: SQL92 filter scenarios through the SDK drivers, checked against an oracle.
//! - [`in_process`]: the gateway in the test process (`server::run` on a tokio task) with a
//!   `Config` tweak, on free loopback ports and a temp dir.
//! - [`gateway_process`]: run the real `rmq-gateway` binary as a child process
//!   (free loopback ports, temp data dir, `/readyz`, SIGTERM/SIGKILL, restart).
//! - [`sdk`]: run the official-SDK driver programs under `integration-tests/sdk/`
//!   with a hard timeout and parse their `RESULT {json}` line.
//! - [`namespaces`]: namespace isolation through the SDK drivers (`--namespace`).
//! - [`scenario`]: one gateway + temp dir per test, driver runs within a time budget, the
//!   checks a consumer's report must pass, and the scenarios several SDKs' tests share.
//! - [`postgres`]: a throwaway PostgreSQL (services/postgres.sh) on loopback, with outages.
//! - [`offsets`]: offset resets seen by running SDK consumers (and across a gateway crash).
//! - [`s3`]: a throwaway S3-compatible server (moto or s3s-fs, `services/s3.sh`).
//! - [`fault_proxy`]: a TCP proxy in front of a server that can refuse, stall or answer 503
//!   SlowDown on demand (outage tests).

pub mod apache;
pub mod client;
pub mod cluster;
pub mod consumption;
pub mod fault_proxy;
pub mod filters;
pub mod gateway_process;
pub mod in_process;
pub mod namespaces;
pub mod offsets;
pub mod postgres;
pub mod s3;
pub mod scenario;
pub mod sdk;
pub mod types;
