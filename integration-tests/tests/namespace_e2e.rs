//! Namespace isolation through the official SDKs (issue #9 item 8): producers and consumers in
//! two namespaces and outside any use the same topic and group names and never see each
//! other's messages; a group configured in one namespace does not change the same group name
//! in the other (scenario in `integration_tests::namespaces`). Against the real `rmq-gateway`
//! binary; needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (a missing
//! SDK skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`). Each test prints
//! `[namespaces]` figures lines on stderr.

use integration_tests::namespaces;
use integration_tests::sdk::Sdk;

#[test]
fn java_namespaces_are_isolated() {
    namespaces::isolation("java_ns", Sdk::Java);
}

#[test]
fn go_namespaces_are_isolated() {
    namespaces::isolation("go_ns", Sdk::Go);
}
