//! End-to-end tests with the official RocketMQ SDKs (Rust `rocketmq` 5.0.0, Python
//! `rocketmq-python-client` 5.1.2, Node `rocketmq-client-nodejs` 1.0.8) against the real
//! `rmq-gateway` binary: send N, receive and ack all N, nothing lost; and restarts
//! (SIGTERM and SIGKILL) between sending and consuming.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` first. A test
//! whose prerequisites are missing is skipped with a banner on stderr, or fails when
//! `RMQ_E2E_REQUIRED=1` (as `make test` sets). Env: `RMQ_E2E_COUNT` (N, default 50),
//! `RMQ_E2E_KEEP=1` (keep the temp dirs with all logs), `RMQ_GATEWAY_BIN`.

use integration_tests::gateway_process::Stop;
use integration_tests::scenario::{produce_then_consume, restart_between_send_and_consume};
use integration_tests::sdk::{Mode, Sdk};

#[test]
fn rust_producer_and_simple_consumer() {
    produce_then_consume("rust_simple", Sdk::Rust, &[], Sdk::Rust, Mode::SimpleConsume);
}

#[test]
fn python_producer_and_simple_consumer_with_change_invisible() {
    produce_then_consume("python_simple", Sdk::Python, &[], Sdk::Python, Mode::SimpleConsume);
}

#[test]
fn python_producer_and_push_consumer() {
    produce_then_consume("python_push", Sdk::Python, &[], Sdk::Python, Mode::PushConsume);
}

#[test]
fn node_producer_and_simple_consumer_with_change_invisible() {
    produce_then_consume("node_simple", Sdk::Node, &[], Sdk::Node, Mode::SimpleConsume);
}

#[test]
fn node_producer_and_push_consumer() {
    produce_then_consume("node_push", Sdk::Node, &[], Sdk::Node, Mode::PushConsume);
}

#[test]
fn restart_graceful_sigterm_keeps_messages_and_acks() {
    restart_between_send_and_consume("restart_sigterm", Stop::Graceful, Sdk::Rust, Sdk::Python);
}

#[test]
fn restart_after_sigkill_keeps_sent_messages() {
    restart_between_send_and_consume("restart_sigkill", Stop::Kill, Sdk::Python, Sdk::Node);
}

#[test]
fn node_producer_to_rust_simple_consumer() {
    produce_then_consume("cross_node_rust", Sdk::Node, &[], Sdk::Rust, Mode::SimpleConsume);
}
