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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use integration_tests::gateway_process::Stop;
use integration_tests::scenario::{Ctx, DRIVER_SLACK, DRIVER_TIMEOUT, Expect, count, shout, unique};
use integration_tests::sdk::{self, Mode, Report, Run, Sdk};

/// Every 5th message (body index i with (i + 1) % 5 == 0) fails once in the push test.
const FAIL_EVERY: usize = 5;

/// Java producer (sync + sendAsync + burst) and SimpleConsumer, plaintext h2c.
#[test]
fn java_producer_and_simple_consumer_plaintext() {
    let test = "java_simple_plain";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce_with(Sdk::Java, &topic, "m", &["--batch", "burst"]);
    let report = ctx.consume(Sdk::Java, Mode::SimpleConsume, &topic, &group, Expect::exactly("m", &ids));
    assert_consumer_details(test, &report, false);
}

/// The same over TLS (the Java SDK's default), with the batch part sent as one
/// SendMessageRequest per 10 messages (the SDK's internal batch path).
#[test]
fn java_producer_and_simple_consumer_tls() {
    let test = "java_simple_tls";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce_with(Sdk::Java, &topic, "m", &["--tls", "--batch", "wire"]);
    let expect = Expect::exactly("m", &ids);
    let report = ctx.consume_with(Sdk::Java, Mode::SimpleConsume, &topic, &group, expect, &["--tls"]);
    assert_consumer_details(test, &report, true);
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
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce(Sdk::Java, &topic, "m");
    // Redeliveries of the failed messages are expected: duplicates are allowed here and
    // checked precisely below.
    let expect = Expect { prefix: "m", sent_ids: &ids, allow_unexpected: false, allow_duplicates: true };
    let fail_every = FAIL_EVERY.to_string();
    let report = ctx.consume_with(Sdk::Java, Mode::PushConsume, &topic, &group, expect, &["--fail-every", &fail_every]);

    // The ids whose body index is a multiple of FAIL_EVERY (minus one): the producer's ids
    // are in body order.
    let want_failed: BTreeSet<&str> =
        ids.iter().enumerate().filter(|(i, _)| (i + 1) % FAIL_EVERY == 0).map(|(_, id)| id.as_str()).collect();
    let failed: BTreeSet<&str> = report.failed_on_purpose.keys().map(|s| s.as_str()).collect();
    let problems = push_problems(&report, &want_failed);
    assert!(
        problems.is_empty() && failed == want_failed,
        "{test}: failed on purpose {failed:?}, expected {want_failed:?}; problems: {problems:#?}\nreport: {report:?}"
    );
    assert!(report.max_delivery_attempt >= 2, "{test}: no redelivery seen: {report:?}");
    shout(&format!(
        "{test}: {} of {} messages failed once and were redelivered (max attempt {}), {} deliveries in all",
        failed.len(),
        count(),
        report.max_delivery_attempt,
        report.attempts.values().map(Vec::len).sum::<usize>()
    ));
}

/// rocketmq-client-java 5.0.7: send and receive, plaintext then TLS, on one gateway.
#[test]
fn java_507_send_receive_plaintext_and_tls() {
    let test = "java507";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java507]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce(Sdk::Java507, &topic, "plain");
    let report = ctx.consume(Sdk::Java507, Mode::SimpleConsume, &topic, &group, Expect::exactly("plain", &ids));
    assert_consumer_details(test, &report, false);
    let ids = ctx.produce_with(Sdk::Java507, &topic, "tls", &["--tls"]);
    let expect = Expect::exactly("tls", &ids);
    let report = ctx.consume_with(Sdk::Java507, Mode::SimpleConsume, &topic, &group, expect, &["--tls"]);
    assert_consumer_details(test, &report, true);
}

/// N messages are sent; a Java SimpleConsumer (slowed down to ~5 messages/s) starts; once it
/// has some but not all of them, the gateway is SIGKILLed and restarted on the same data dir
/// and ports. The same consumer process must then get every message and ack each at least
/// once. Redeliveries (of messages whose ack the crash lost) are allowed.
#[test]
fn java_simple_consumer_survives_gateway_sigkill() {
    let extra = ["--progress", "--pause-ms", "200", "--receive-batch", "4", "--invisible-secs", "10"];
    consumer_survives_gateway_sigkill("java_restart_simple", Mode::SimpleConsume, &extra);
}

/// The same with a PushConsumer (one consumption thread, ~5 messages/s): its long polls and
/// Telemetry stream break with the gateway and must recover on their own.
#[test]
fn java_push_consumer_survives_gateway_sigkill() {
    let extra = ["--progress", "--pause-ms", "200", "--threads", "1"];
    consumer_survives_gateway_sigkill("java_restart_push", Mode::PushConsume, &extra);
}

fn consumer_survives_gateway_sigkill(test: &'static str, mode: Mode, extra: &[&str]) {
    let Some(mut ctx) = Ctx::start(test, &[Sdk::Java]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce(Sdk::Java, &topic, "r");

    let mut running = spawn(&ctx, Sdk::Java, mode, &topic, &group, "r", extra);
    let n = count();
    let wait_until = Instant::now() + Duration::from_secs(45);
    let mut exited = false;
    while running.progress() < n / 4 && Instant::now() < wait_until {
        if running.exited() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
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
    if !report.unacked.is_empty() || report.corrupted != 0 || !report.unexpected.is_empty() {
        ctx.fail(&outcome, "messages never acked, corrupted, or unexpected bodies after the restart");
    }
    shout(&format!(
        "{test}: {} messages after the restart; {} redeliveries (max attempt {}), {} receive errors, {} ack failures (retried)",
        report.received - before.min(report.received),
        report.duplicates.len(),
        report.max_delivery_attempt,
        report.receive_errors,
        report.ack_failed
    ));
}

/// Java producer (TLS) → Python SimpleConsumer (with ChangeInvisibleDuration).
#[test]
fn java_producer_to_python_simple_consumer() {
    let test = "cross_java_python";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java, Sdk::Python]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce_with(Sdk::Java, &topic, "x", &["--tls"]);
    ctx.consume(Sdk::Python, Mode::SimpleConsume, &topic, &group, Expect::exactly("x", &ids));
}

/// Python producer → Java PushConsumer (plaintext), every message once.
#[test]
fn python_producer_to_java_push_consumer() {
    let test = "cross_python_java";
    let Some(ctx) = Ctx::start(test, &[Sdk::Java, Sdk::Python]) else {
        return;
    };
    let (topic, group) = (unique("topic", test), unique("group", test));
    let ids = ctx.produce(Sdk::Python, &topic, "y");
    let report = ctx.consume(Sdk::Java, Mode::PushConsume, &topic, &group, Expect::exactly("y", &ids));
    let problems = push_problems(&report, &BTreeSet::new());
    assert!(problems.is_empty(), "{test}: {problems:#?}\nreport: {report:?}");
}

/// Checks a Java SimpleConsumer report beyond [`Ctx::consume`]: TLS as asked, every message
/// acked, each delivered once with attempt 1.
fn assert_consumer_details(test: &str, report: &Report, tls: bool) {
    assert_eq!(report.tls, Some(tls), "{test}: driver TLS setting: {report:?}");
    assert!(report.unacked.is_empty(), "{test}: never acked: {:?}", report.unacked);
    assert_eq!(report.attempts.len(), count(), "{test}: deliveries per id: {:?}", report.attempts);
    let odd: BTreeMap<&String, &Vec<i64>> = report.attempts.iter().filter(|(_, a)| a.as_slice() != [1]).collect();
    assert!(odd.is_empty(), "{test}: messages not delivered exactly once with attempt 1: {odd:?}");
}

/// What is wrong with a PushConsumer's deliveries when exactly `want_failed` were failed by
/// the listener once: those must have been delivered first with attempt 1, then again with a
/// higher attempt and succeeded there; every other message must have been delivered
/// exactly once, with attempt 1.
fn push_problems(report: &Report, want_failed: &BTreeSet<&str>) -> Vec<String> {
    let mut problems = Vec::new();
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
    // duplicates = deliveries after the first; only the failed ids may have them
    for id in &report.duplicates {
        if !want_failed.contains(id.as_str()) {
            problems.push(format!("{id} delivered again although its listener call succeeded"));
        }
    }
    problems
}

/// Starts a driver without waiting for it (for a restart while it runs).
fn spawn(ctx: &Ctx, sdk: Sdk, mode: Mode, topic: &str, group: &str, prefix: &str, extra: &[&str]) -> sdk::Running {
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let run = Run {
        sdk,
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
