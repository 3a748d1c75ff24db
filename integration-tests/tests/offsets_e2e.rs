//! Offset resets with the official SDKs (Java 5.2.0, Go 5.1.4) against the real `rmq-gateway`
//! binary: a SimpleConsumer or PushConsumer that keeps running gets the messages stored after
//! the reset's time again, exactly once each, and nothing older; a reset survives a SIGKILL right
//! after it. Scenarios in `integration_tests::offsets`; each prints an `[offsets]` line on stderr.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (java, go); a
//! missing SDK skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`.

use integration_tests::offsets::{Consumer, reset_survives_a_crash, reset_while_consuming};
use integration_tests::sdk::Sdk;

#[test]
fn java_simple_consumer_gets_the_messages_after_the_reset_time_again() {
    reset_while_consuming("off_java_simple", Sdk::Java, Consumer::Simple);
}

#[test]
fn java_push_consumer_gets_the_messages_after_the_reset_time_again() {
    reset_while_consuming("off_java_push", Sdk::Java, Consumer::Push);
}

#[test]
fn go_simple_consumer_gets_the_messages_after_the_reset_time_again() {
    reset_while_consuming("off_go_simple", Sdk::Go, Consumer::Simple);
}

#[test]
fn go_push_consumer_gets_the_messages_after_the_reset_time_again() {
    reset_while_consuming("off_go_push", Sdk::Go, Consumer::Push);
}

#[test]
fn java_reset_survives_a_gateway_crash() {
    reset_survives_a_crash("off_java_crash", Sdk::Java, Consumer::Simple);
}

#[test]
fn go_reset_survives_a_gateway_crash() {
    reset_survives_a_crash("off_go_crash", Sdk::Go, Consumer::Push);
}
