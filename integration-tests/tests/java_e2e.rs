//! End-to-end tests with the official RocketMQ **Java** SDK (`rocketmq-client-java` 5.2.0,
//! the newest 5.x on Maven Central, and 5.0.7 for the basic scenario) against the real
//! `rmq-gateway` binary: plaintext (`enableSsl(false)`) and TLS (the SDK's default), the
//! Producer's sync/async/batch sends, the SimpleConsumer with ChangeInvisibleDuration, the
//! PushConsumer with a listener that fails every 5th message once, a gateway SIGKILL while a
//! Java consumer keeps running, and a Java producer feeding the Python SDK.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (its `java`
//! step: JDK 17 + Maven, drivers built into `sdk/.work/java/<version>/`). A missing
//! prerequisite skips with a banner, or fails under `RMQ_E2E_REQUIRED=1`.

use std::collections::BTreeSet;

use integration_tests::scenario::{Ctx, Expect, assert_once_each, produce_then_consume, push_problems};
use integration_tests::sdk::{Mode, Sdk};

/// Java producer (sync + sendAsync + burst) and SimpleConsumer, plaintext h2c.
#[test]
fn java_producer_and_simple_consumer_plaintext() {
    let test = "java_simple_plain";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce_with(Sdk::Java, &topic, "m", &["--batch", "burst"]);
    let report = ctx.consume(Sdk::Java, Mode::SimpleConsume, &topic, &group, Expect::exactly("m", &ids));
    assert_once_each(test, &report, false);
}

/// The same over TLS (the Java SDK's default), with the batch part sent as one
/// SendMessageRequest per 10 messages (the SDK's internal batch path).
#[test]
fn java_producer_and_simple_consumer_tls() {
    let test = "java_simple_tls";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce_with(Sdk::Java, &topic, "m", &["--tls", "--batch", "wire"]);
    let expect = Expect::exactly("m", &ids);
    let report = ctx.consume_with(Sdk::Java, Mode::SimpleConsume, &topic, &group, expect, &["--tls"]);
    assert_once_each(test, &report, true);
}

/// PushConsumer whose listener returns FAILURE on the first delivery of every 5th message:
/// exactly those come back (attempt >= 2) and then succeed; every other message is
/// delivered once, with attempt 1; none is lost.
#[test]
fn java_push_consumer_with_failing_listener() {
    let test = "java_push_fail";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce(Sdk::Java, &topic, "m");
    // The Java driver cannot see the PushConsumer's acks (the SDK sends them itself).
    ctx.push_consume_failing_listener(Sdk::Java, &topic, &group, "m", &ids, false);
}

/// rocketmq-client-java 5.0.7: send and receive, plaintext then TLS, on one gateway.
#[test]
fn java_507_send_receive_plaintext_and_tls() {
    let test = "java507";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java507]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce(Sdk::Java507, &topic, "plain");
    let report = ctx.consume(Sdk::Java507, Mode::SimpleConsume, &topic, &group, Expect::exactly("plain", &ids));
    assert_once_each(test, &report, false);
    let ids = ctx.produce_with(Sdk::Java507, &topic, "tls", &["--tls"]);
    let expect = Expect::exactly("tls", &ids);
    let report = ctx.consume_with(Sdk::Java507, Mode::SimpleConsume, &topic, &group, expect, &["--tls"]);
    assert_once_each(test, &report, true);
}

/// N messages are sent; a Java SimpleConsumer (slowed down to ~5 messages/s) starts; once it
/// has some but not all of them, the gateway is SIGKILLed and restarted on the same data dir
/// and ports. The same consumer process must then get every message and ack each at least
/// once. Redeliveries (of messages whose ack the crash lost) are allowed.
#[test]
fn java_simple_consumer_survives_gateway_sigkill() {
    let extra = ["--pause-ms", "200", "--receive-batch", "4", "--invisible-secs", "10"];
    consumer_survives_gateway_sigkill("java_restart_simple", Mode::SimpleConsume, &extra);
}

/// The same with a PushConsumer (one consumption thread, ~5 messages/s): its long polls and
/// Telemetry stream break with the gateway and must recover on their own.
#[test]
fn java_push_consumer_survives_gateway_sigkill() {
    let extra = ["--pause-ms", "200", "--threads", "1"];
    consumer_survives_gateway_sigkill("java_restart_push", Mode::PushConsume, &extra);
}

fn consumer_survives_gateway_sigkill(test: &'static str, mode: Mode, extra: &[&str]) {
    let Some(mut ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce(Sdk::Java, &topic, "r");
    // Ack failures while the gateway is down are allowed: the SDK retries them.
    ctx.consume_across_kill(Sdk::Java, mode, &topic, &group, Expect::at_least_once("r", &ids), extra);
}

/// Java producer (TLS) → Python SimpleConsumer (with ChangeInvisibleDuration).
#[test]
fn java_producer_to_python_simple_consumer() {
    produce_then_consume("cross_java_python", Sdk::Java, &["--tls"], Sdk::Python, Mode::SimpleConsume);
}

/// Python producer → Java PushConsumer (plaintext), every message once.
#[test]
fn python_producer_to_java_push_consumer() {
    let test = "cross_python_java";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java, Sdk::Python]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce(Sdk::Python, &topic, "y");
    let report = ctx.consume(Sdk::Java, Mode::PushConsume, &topic, &group, Expect::exactly("y", &ids));
    let problems = push_problems(&report, &BTreeSet::new(), false);
    assert!(problems.is_empty(), "{test}: {problems:#?}\nreport: {report:?}");
}
