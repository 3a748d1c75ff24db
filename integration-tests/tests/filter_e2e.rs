//! SQL92 filters with the official SDKs (Java and Go): one producer sends messages with typed
//! user properties, tags and keys; one SimpleConsumer per expression of a matrix receives what
//! its SQL92 subscription lets through, checked against an oracle evaluated in the test; bad
//! expressions must reach the application as ILLEGAL_FILTER_EXPRESSION with the position,
//! at start-up (Settings) and on receive. Scenario and oracle: `integration_tests::filters`.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh`; a missing SDK
//! skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`. With `RMQ_TYPES_TARGET=apache`
//! the same matrix runs against Apache RocketMQ 5.5.0 (SQL92 enabled), to hold the oracle
//! against the reference.

use integration_tests::filters;
use integration_tests::sdk::Sdk;

#[test]
fn java_sql92_filters() {
    filters::sql92_matrix("java_sql92", Sdk::Java);
}

#[test]
fn go_sql92_filters() {
    filters::sql92_matrix("go_sql92", Sdk::Go);
}
