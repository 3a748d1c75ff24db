//! Namespace isolation through the official SDKs (issue #9 item 8): producers and consumers in
//! two namespaces and outside any use the same topic and group names and never see each
//! other's messages; a group configured in one namespace does not change the same group name
//! in the other (scenarios in `integration_tests::namespaces`). Against the real `rmq-gateway`
//! binary; needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (a missing
//! SDK skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`). Each test prints
//! `[namespaces]` figures lines on stderr.

use integration_tests::namespaces;
use integration_tests::sdk::Sdk;

#[test]
fn java_messages_stay_in_their_namespace() {
    namespaces::messages("java_ns", Sdk::Java);
}

#[test]
fn java_group_config_stays_in_its_namespace() {
    namespaces::group_config("java_ns_group", Sdk::Java);
}

#[test]
fn go_messages_stay_in_their_namespace() {
    namespaces::messages("go_ns", Sdk::Go);
}

#[test]
fn go_group_config_stays_in_its_namespace() {
    namespaces::group_config("go_ns_group", Sdk::Go);
}

#[test]
fn python_messages_stay_in_their_namespace() {
    namespaces::messages("python_ns", Sdk::Python);
}

#[test]
fn node_messages_stay_in_their_namespace() {
    namespaces::messages("node_ns", Sdk::Node);
}
