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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use integration_tests::gateway_process::Stop;
use integration_tests::scenario::{
    Ctx, DRIVER_SLACK, DRIVER_TIMEOUT, Expect, count, restart_between_send_and_consume, shout, unique,
};
use integration_tests::sdk::{self, Mode, Report, Run, Sdk};

/// Every 5th message (body index i with (i + 1) % 5 == 0) fails once in the push test.
const FAIL_EVERY: usize = 5;

/// Go producer and SimpleConsumer, plaintext (`rmq_client.EnableSsl = false`).
#[test]
fn go_producer_and_simple_consumer_plaintext() {
    let test = "go_simple_plain";
    let Some(ctx) = Ctx::start(test, &[Sdk::Go]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
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
    let (topic, group) = (unique("topic", test), unique("group", test));
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
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = produce(&ctx, &topic, "m", false);
    // The driver counts a delivery as a duplicate only if the listener had already
    // succeeded on it; the failed first deliveries are in `attempts` / `failed_on_purpose`.
    let expect = Expect { prefix: "m", sent_ids: &ids, allow_unexpected: false, allow_duplicates: true };
    let fail_every = FAIL_EVERY.to_string();
    let report = ctx.consume_with(Sdk::Go, Mode::PushConsume, &topic, &group, expect, &["--fail-every", &fail_every]);

    // The producer's ids are in body order (the driver keeps them by body index).
    let want_failed: BTreeSet<&str> =
        ids.iter().enumerate().filter(|(i, _)| (i + 1) % FAIL_EVERY == 0).map(|(_, id)| id.as_str()).collect();
    let failed: BTreeSet<&str> = report.failed_on_purpose.keys().map(|s| s.as_str()).collect();
    let mut problems = push_problems(&report, &want_failed);
    if failed != want_failed {
        problems.push(format!("failed on purpose {failed:?}, expected {want_failed:?}"));
    }
    if !report.unacked.is_empty() {
        problems.push(format!("never acked: {:?}", report.unacked));
    }
    if report.max_delivery_attempt < 2 {
        problems.push(format!("max delivery attempt {}", report.max_delivery_attempt));
    }
    assert!(problems.is_empty(), "{test}: {problems:#?}\nreport: {report:?}");
    shout(&format!(
        "{test}: {} of {} messages failed once and were redelivered (max attempt {}), {} deliveries in all",
        failed.len(),
        count(),
        report.max_delivery_attempt,
        report.attempts.values().map(Vec::len).sum::<usize>()
    ));
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
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = produce(&ctx, &topic, "r", false);

    let extra = ["--progress", "--pause-ms", "100", "--threads", "1"];
    let mut running = spawn(&ctx, Mode::PushConsume, &topic, &group, "r", &extra);
    let n = count();
    let wait_until = Instant::now() + Duration::from_secs(45);
    let mut exited = false;
    while running.progress() < n / 4 && Instant::now() < wait_until {
        if running.exited() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = running.progress();
    assert!(
        !exited && before >= n / 4 && before < n,
        "{test}: the consumer should be mid-run before the kill (got {before} of {n}, exited {exited}); stdout:\n{}",
        running.stdout()
    );
    let stopped = ctx.gateway.stop(Stop::Kill).unwrap_or_else(|e| panic!("{test}: stop: {e:#}"));
    shout(&format!("{test}: gateway SIGKILLed with the consumer at {before}/{n} ({})", stopped.status));
    ctx.gateway.restart().unwrap_or_else(|e| panic!("{test}: restart: {e:#}"));

    let outcome = running.wait().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let Some(report) = outcome.report().cloned() else { ctx.fail(&outcome, "consumer printed no RESULT") };
    ctx.check_version(&outcome, &report);
    let got: BTreeSet<&str> = report.ids.iter().map(|s| s.as_str()).collect();
    let want: BTreeSet<&str> = ids.iter().map(|s| s.as_str()).collect();
    if report.received != n || !report.missing.is_empty() || got != want {
        ctx.fail(&outcome, &format!("received {} of {n} across the restart, or other ids", report.received));
    }
    if !report.unacked.is_empty() || report.ack_failed != 0 || report.corrupted != 0 || !report.unexpected.is_empty() {
        ctx.fail(&outcome, "messages never acked, corrupted, or unexpected bodies after the restart");
    }
    if !report.property_mismatches.is_empty() {
        ctx.fail(&outcome, "tag or keys of a delivery differ from what the producer set");
    }
    shout(&format!(
        "{test}: {} messages after the restart; {} redeliveries (max attempt {})",
        n - before,
        report.duplicates.len(),
        report.max_delivery_attempt
    ));
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
    let (topic, group) = (unique("topic", test), unique("group", test));
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
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce(Sdk::Node, &topic, "y");
    let expect = Expect::exactly("y", &ids);
    let report = ctx.consume_with(Sdk::Go, Mode::PushConsume, &topic, &group, expect, &["--tls"]);
    let mut problems = push_problems(&report, &BTreeSet::new());
    if !report.unacked.is_empty() {
        problems.push(format!("never acked: {:?}", report.unacked));
    }
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

/// Checks a Go SimpleConsumer report beyond [`Ctx::consume`]: the transport asked for, every
/// message acked with an OK answer, each delivered exactly once with attempt 1.
fn assert_simple_details(test: &str, report: &Report, tls: bool) {
    let want = if tls { "tls" } else { "plaintext" };
    assert_eq!(report.tls, Some(tls), "{test}: driver TLS setting: {report:?}");
    assert_eq!(report.transport.as_deref(), Some(want), "{test}: transport seen by gRPC: {report:?}");
    assert!(report.unacked.is_empty(), "{test}: never acked: {:?}", report.unacked);
    assert_eq!(report.acked, Some(count()), "{test}: acked: {report:?}");
    assert!(report.property_mismatches.is_empty(), "{test}: tag/keys: {:?}", report.property_mismatches);
    assert_eq!(report.attempts.len(), count(), "{test}: deliveries per id: {:?}", report.attempts);
    let odd: BTreeMap<&String, &Vec<i64>> = report.attempts.iter().filter(|(_, a)| a.as_slice() != [1]).collect();
    assert!(odd.is_empty(), "{test}: messages not delivered exactly once with attempt 1: {odd:?}");
}

/// What is wrong with a PushConsumer's deliveries when exactly `want_failed` were failed by
/// the listener once: those must have been delivered first with attempt 1, then again with a
/// higher attempt, and succeeded there; every other message must have been delivered exactly
/// once, with attempt 1; no message may be consumed successfully twice except a failed one.
fn push_problems(report: &Report, want_failed: &BTreeSet<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if !report.property_mismatches.is_empty() {
        problems.push(format!("tag/keys differ: {:?}", report.property_mismatches));
    }
    if report.attempts.len() != count() {
        problems.push(format!("{} distinct ids delivered, expected {}", report.attempts.len(), count()));
    }
    for (id, attempts) in &report.attempts {
        if want_failed.contains(id.as_str()) {
            let first_then_higher = attempts.first() == Some(&1) && attempts.len() >= 2 && attempts[1] >= 2;
            let strictly_growing = attempts.windows(2).all(|w| w[1] > w[0]);
            if !first_then_higher || !strictly_growing {
                problems.push(format!("{id} (failed once): attempts {attempts:?}"));
            }
            match report.succeeded_after_failure.get(id) {
                Some(&a) if a >= 2 => {}
                other => problems.push(format!("{id} (failed once): succeeded at attempt {other:?}")),
            }
        } else if attempts.as_slice() != [1] {
            problems.push(format!("{id}: attempts {attempts:?}, expected one delivery with attempt 1"));
        }
    }
    for id in &report.duplicates {
        if !want_failed.contains(id.as_str()) {
            problems.push(format!("{id} consumed again although its listener call had succeeded"));
        }
    }
    problems
}

/// Starts the Go driver without waiting for it (for a restart while it runs).
fn spawn(ctx: &Ctx, mode: Mode, topic: &str, group: &str, prefix: &str, extra: &[&str]) -> sdk::Running {
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let run = Run {
        sdk: Sdk::Go,
        mode,
        endpoint: ctx.gateway.endpoint(),
        topic: topic.to_string(),
        group: group.to_string(),
        count: count(),
        prefix: prefix.to_string(),
        tag: "e2e".to_string(),
        timeout: DRIVER_TIMEOUT.min(left.saturating_sub(DRIVER_SLACK)).max(Duration::from_secs(5)),
        kill_after: left.max(Duration::from_secs(5)),
        extra_args: extra.iter().map(|a| a.to_string()).collect(),
    };
    sdk::spawn(&run, ctx.path()).unwrap_or_else(|e| panic!("{}: {e:#}", ctx.test))
}
