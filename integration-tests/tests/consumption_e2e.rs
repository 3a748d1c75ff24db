//! Consumption through the official SDKs (issue #9): broadcast groups (three clients each get
//! every message), and retries with the group's backoff (a customized list for Java, an
//! exponential policy for Go) ending in the dead-letter queue after exactly the allowed
//! attempts. Scenarios: `integration_tests::consumption`.

use integration_tests::consumption;
use integration_tests::sdk::Sdk;

#[test]
fn java_retries_follow_the_customized_backoff_then_dead_letter() {
    consumption::retries_end_in_the_dead_letter_queue("java_retry_dlq", Sdk::Java, "1s 3s 2s", &[1000, 3000, 2000]);
}

#[test]
fn go_retries_follow_the_exponential_backoff_then_dead_letter() {
    consumption::retries_end_in_the_dead_letter_queue(
        "go_retry_dlq",
        Sdk::Go,
        "exponential 1s 2 3s",
        &[1000, 2000, 3000],
    );
}

#[test]
fn java_broadcast_reaches_three_clients() {
    consumption::broadcast_to_three_clients("java_broadcast", Sdk::Java);
}

#[test]
fn go_broadcast_reaches_three_clients() {
    consumption::broadcast_to_three_clients("go_broadcast", Sdk::Go);
}
