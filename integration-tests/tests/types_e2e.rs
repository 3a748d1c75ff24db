//! FIFO, delay/timer, recall, transactional and priority messages with the official SDKs, through their
//! drivers' message-type modes (`sdk/MESSAGE_TYPES.md`), against the real `rmq-gateway` binary,
//! or against Apache RocketMQ 5.5.0 with `RMQ_TYPES_TARGET=apache` (the scenarios and their
//! checks are in `integration_tests::types`). Each test prints a `[types]` figures line on stderr.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh`; a missing SDK
//! skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`. Against Apache, run them one at a
//! time or not: they take turns on one Apache per test process, e.g.
//! `RMQ_TYPES_TARGET=apache cargo test -p integration-tests --test types_e2e -- --nocapture`
//! (`RMQ_TYPES_APACHE_DIR=<run dir>` reuses an Apache started by `reference/apache.sh`).

/// Every message-type scenario for one SDK, as a module of tests named after it. Another SDK
/// whose driver implements the modes joins with one line: `types_tests!(go, Sdk::Go);`.
macro_rules! types_tests {
    ($name:ident, $sdk:expr) => {
        mod $name {
            use integration_tests::gateway_process::Stop;
            use integration_tests::sdk::Sdk;
            use integration_tests::types;

            const SDK: Sdk = $sdk;

            #[test]
            fn fifo_order_with_failing_listener() {
                types::fifo_order(concat!(stringify!($name), "_fifo"), SDK);
            }

            #[test]
            fn fifo_poison_group_does_not_block_others() {
                types::fifo_head_of_line(concat!(stringify!($name), "_fifo_hol"), SDK);
            }

            #[test]
            fn delay_messages_arrive_on_time() {
                types::delay(concat!(stringify!($name), "_delay"), SDK);
            }

            #[test]
            fn recalled_message_never_arrives() {
                types::recall(concat!(stringify!($name), "_recall"), SDK);
            }

            #[test]
            fn transactions_commit_and_rollback() {
                types::transactions_commit_rollback(concat!(stringify!($name), "_tx"), SDK);
            }

            #[test]
            fn orphaned_transaction_is_checked_by_another_producer() {
                types::transactions_orphan(concat!(stringify!($name), "_tx_orphan"), SDK);
            }

            #[test]
            fn fifo_order_across_sigterm() {
                types::fifo_across_restart(concat!(stringify!($name), "_fifo_term"), SDK, Stop::Graceful);
            }

            #[test]
            fn fifo_order_across_sigkill() {
                types::fifo_across_restart(concat!(stringify!($name), "_fifo_kill"), SDK, Stop::Kill);
            }

            #[test]
            fn delay_across_sigterm() {
                types::delay_across_restart(concat!(stringify!($name), "_delay_term"), SDK, Stop::Graceful);
            }

            #[test]
            fn delay_across_sigkill() {
                types::delay_across_restart(concat!(stringify!($name), "_delay_kill"), SDK, Stop::Kill);
            }

            #[test]
            fn orphaned_transaction_across_sigterm() {
                types::orphan_across_restart(concat!(stringify!($name), "_tx_orphan_term"), SDK, Stop::Graceful);
            }

            #[test]
            fn orphaned_transaction_across_sigkill() {
                types::orphan_across_restart(concat!(stringify!($name), "_tx_orphan_kill"), SDK, Stop::Kill);
            }
        }
    };
}

types_tests!(java, Sdk::Java);

/// rocketmq-client-java 5.0.7 has no recall API: the driver says so and sends nothing.
#[test]
fn java_507_recall_unsupported() {
    integration_tests::types::recall("java507_recall", integration_tests::sdk::Sdk::Java507);
}

/// Priority messages (RIP-80): the highest priority is received first. Java only (the other
/// drivers have no `priority-produce` yet); skipped on Apache, which has no PRIORITY topics.
#[test]
fn java_priority_messages_go_first() {
    integration_tests::types::priority("java_priority", integration_tests::sdk::Sdk::Java);
}

types_tests!(go, Sdk::Go);
types_tests!(python, Sdk::Python);
types_tests!(node, Sdk::Node);
