//! End-to-end tests with the official RocketMQ **Go** SDK
//! (`github.com/apache/rocketmq-clients/golang/v5` 5.1.4, the newest the Go module proxy serves)
//! against the real `rmq-gateway` binary: Producer (`Send` and `SendAsync`, keys and tags) and
//! SimpleConsumer (with ChangeInvisibleDuration) in plaintext and over TLS (the SDK's
//! default); the PushConsumer with a listener that fails every 5th message once; a gateway
//! SIGKILL while a Go PushConsumer is consuming, and one between sending and consuming; and
//! the Go SDK against the Python and Node.js SDKs (the PushConsumer there over TLS).
//!
//! The Go driver (`sdk/go`) watches the SDK's own gRPC calls, so the checks see what the SDK
//! hides: whether each Ack was answered OK (the SDK's `SimpleConsumer.Ack` returns nil on a
//! non-OK status, and the PushConsumer acks on its own), the transport actually used, and
//! each received body's digest.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (its `go` step
//! builds the driver into `sdk/.work/go-bin/`). A missing prerequisite skips with a banner, or
//! fails under `RMQ_E2E_REQUIRED=1`.

use std::collections::BTreeSet;

use integration_tests::gateway_process::Stop;
use integration_tests::scenario::{
    Ctx, Expect, assert_once_each, count, push_problems, restart_between_send_and_consume,
};
use integration_tests::sdk::{self, Mode, Report, Sdk};

/// Go producer and SimpleConsumer, plaintext (`rmq_client.EnableSsl = false`).
#[test]
fn go_producer_and_simple_consumer_plaintext() {
    let test = "go_simple_plain";
    let Some(ctx) = Ctx::start(test, &[Sdk::Go]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = produce(&ctx, &topic, "m", false);
    let report = ctx.consume(Sdk::Go, Mode::SimpleConsume, &topic, &group, Expect::exactly("m", &ids));
    assert_simple_details(test, &report, false);
}

/// The same over TLS, the Go SDK's default (the gateway serves TLS and h2c on one port).
#[test]
fn go_producer_and_simple_consumer_tls() {
    let test = "go_simple_tls";
    let Some(ctx) = Ctx::start(test, &[Sdk::Go]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = produce(&ctx, &topic, "m", true);
    let expect = Expect::exactly("m", &ids);
    let report = ctx.consume_with(Sdk::Go, Mode::SimpleConsume, &topic, &group, expect, &["--tls"]);
    assert_simple_details(test, &report, true);
}

/// PushConsumer whose listener returns FAILURE on the first delivery of every 5th message:
/// exactly those come back (attempt >= 2) and then succeed; every other message is delivered
/// once, with attempt 1; every message is acked; none is lost.
#[test]
fn go_push_consumer_with_failing_listener() {
    let test = "go_push_fail";
    let Some(ctx) = Ctx::start(test, &[Sdk::Go]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = produce(&ctx, &topic, "m", false);
    // The Go driver sees the PushConsumer's acks (it watches the SDK's gRPC calls).
    ctx.push_consume_failing_listener(Sdk::Go, &topic, &group, "m", &ids, true);
}

/// N messages are sent; a Go PushConsumer (one consumption thread, 100 ms per message)
/// starts; once it has consumed some but not all, the gateway is SIGKILLed and restarted on
/// the same data dir and ports. The same consumer process must then consume every message
/// and get an OK answer to an Ack for each (the SDK retries failed acks). Redeliveries of
/// messages whose ack the crash lost are allowed; nothing may be lost.
#[test]
fn go_push_consumer_survives_gateway_sigkill() {
    let test = "go_restart_during";
    let Some(mut ctx) = Ctx::start(test, &[Sdk::Go]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = produce(&ctx, &topic, "r", false);
    let extra = ["--pause-ms", "100", "--threads", "1"];
    let expect = Expect::at_least_once("r", &ids);
    let (outcome, report) = ctx.consume_across_kill(Sdk::Go, Mode::PushConsume, &topic, &group, expect, &extra);
    // Go: every Ack must have been answered OK in the end (the SDK retries failed acks).
    if report.ack_failed != 0 {
        ctx.fail(&outcome, &format!("{} acks never answered OK across the restart", report.ack_failed));
    }
}

/// Go producer sends batch a, Go SimpleConsumer consumes and acks it, batch b is sent, the
/// gateway is SIGKILLed and restarted; the Go SimpleConsumer (same group) gets all of b.
#[test]
fn go_restart_after_sigkill_between_send_and_consume() {
    restart_between_send_and_consume("go_restart_between", Stop::Kill, Sdk::Go, Sdk::Go);
}

/// Go producer (TLS) → Python SimpleConsumer (with ChangeInvisibleDuration).
#[test]
fn go_producer_to_python_simple_consumer() {
    let test = "cross_go_python";
    let Some(ctx) = Ctx::start(test, &[Sdk::Go, Sdk::Python]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = produce(&ctx, &topic, "x", true);
    ctx.consume(Sdk::Python, Mode::SimpleConsume, &topic, &group, Expect::exactly("x", &ids));
}

/// Node producer → Go PushConsumer over TLS: every message once, attempt 1, acked.
#[test]
fn node_producer_to_go_push_consumer() {
    let test = "cross_node_go";
    let Some(ctx) = Ctx::start(test, &[Sdk::Go, Sdk::Node]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    let ids = ctx.produce(Sdk::Node, &topic, "y");
    let expect = Expect::exactly("y", &ids);
    let report = ctx.consume_with(Sdk::Go, Mode::PushConsume, &topic, &group, expect, &["--tls"]);
    let mut problems = push_problems(&report, &BTreeSet::new(), true);
    if report.transport.as_deref() != Some("tls") {
        problems.push(format!("transport {:?}, expected tls", report.transport));
    }
    assert!(problems.is_empty(), "{test}: {problems:#?}\nreport: {report:?}");
}

/// Runs the Go producer and checks its report: N sent (half with `Send`, half with
/// `SendAsync`), over the transport asked for. Returns the ids in body order.
fn produce(ctx: &Ctx, topic: &str, prefix: &str, tls: bool) -> Vec<String> {
    let extra: &[&str] = if tls { &["--tls"] } else { &[] };
    let outcome = ctx.run_with(Sdk::Go, Mode::Produce, topic, "", prefix, extra);
    let Some(report) = outcome.report().cloned() else { ctx.fail(&outcome, "producer printed no RESULT") };
    ctx.check_version(&outcome, &report);
    let n = count();
    if !report.ok || report.sent != n || report.ids.len() != n || report.ids.iter().collect::<BTreeSet<_>>().len() != n
    {
        ctx.fail(&outcome, &format!("sent {} of {n} messages (distinct ids required)", report.sent));
    }
    let sent_async = outcome
        .result_line
        .as_deref()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("sent_async")?.as_u64());
    if sent_async != Some((n - n / 2) as u64) {
        ctx.fail(&outcome, &format!("SendAsync sent {sent_async:?}, expected {}", n - n / 2));
    }
    check_transport(ctx, &outcome, &report, tls);
    report.ids
}

fn check_transport(ctx: &Ctx, outcome: &sdk::Outcome, report: &Report, tls: bool) {
    let want = if tls { "tls" } else { "plaintext" };
    if report.tls != Some(tls) || report.transport.as_deref() != Some(want) {
        ctx.fail(outcome, &format!("transport {:?} (tls={:?}), expected {want}", report.transport, report.tls));
    }
}

/// Checks a Go SimpleConsumer report beyond [`Ctx::consume`]: [`assert_once_each`] (TLS as
/// asked, every message acked, each delivered exactly once with attempt 1), the transport
/// gRPC actually used, an OK answer to every Ack, the tag and keys the producer set.
fn assert_simple_details(test: &str, report: &Report, tls: bool) {
    assert_once_each(test, report, tls);
    let want = if tls { "tls" } else { "plaintext" };
    assert_eq!(report.transport.as_deref(), Some(want), "{test}: transport seen by gRPC: {report:?}");
    assert_eq!(report.acked, Some(count()), "{test}: acked: {report:?}");
    assert!(report.property_mismatches.is_empty(), "{test}: tag/keys: {:?}", report.property_mismatches);
}
