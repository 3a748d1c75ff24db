//! End-to-end tests with Spring Boot: the app in `integration-tests/sdk/spring` (Spring Boot
//! 3.5.7, `rocketmq-v5-client-spring-boot-starter` 2.3.1 with rocketmq-client-java 5.0.7),
//! configured only through its `application.yml`, against the real `rmq-gateway` binary:
//! `RocketMQClientTemplate` sends N messages (tag, key, a user property) and a
//! `@RocketMQMessageListener` push consumer receives them; and the listener receives what the
//! Python SDK sent. The starter's push consumer always uses TLS (2.3.1 has no switch), the
//! template's producer by default too; one case turns the producer's TLS off, so plaintext and
//! TLS share the gRPC port in one app.
//!
//! Needs `cargo build --bin rmq-gateway` and `integration-tests/sdk/setup.sh` (steps `spring`,
//! and `python` for the cross-SDK case). Missing prerequisites skip with a banner, or fail
//! under `RMQ_E2E_REQUIRED=1`. Env: `RMQ_E2E_COUNT` (N, default 50), `RMQ_E2E_KEEP=1`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration_tests::scenario::{Ctx, Expect, count, note_shutdown};
use integration_tests::sdk::{Mode, Report, Sdk};

/// The rocketmq-client-java release the starter 2.3.1 brings.
const CLIENT_JAVA: &str = "5.0.7";

/// Creates a NORMAL topic through the admin API (`PUT /api/v1/topics/{name}`), as an operator
/// would before deploying the app (clients must not depend on auto-creation).
fn create_topic(ctx: &Ctx, topic: &str) {
    let port = ctx.gateway.http_port;
    let body = r#"{"messageType":"NORMAL"}"#;
    let request = format!(
        "PUT /api/v1/topics/{topic} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set_read_timeout");
    stream.write_all(request.as_bytes()).expect("send PUT");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{}: creating topic {topic} failed:\n{response}", ctx.test);
}

/// The checks every Spring run must pass beyond the shared ones: no error at all (this
/// includes a wrong tag, key or user property on a delivered message), each message
/// delivered once with attempt 1, the starter's own client-java underneath, TLS as expected.
fn spring_problems(report: &Report, tls: bool) -> Option<String> {
    if report.sdk_version.as_deref() != Sdk::Spring.version() {
        return Some(format!("starter {:?}, expected {:?}", report.sdk_version, Sdk::Spring.version()));
    }
    if report.client_java_version.as_deref() != Some(CLIENT_JAVA) {
        return Some(format!(
            "rocketmq-client-java {:?} under the starter, expected {CLIENT_JAVA}",
            report.client_java_version
        ));
    }
    if !report.errors.is_empty() {
        return Some(format!("the app reported errors: {:?}", report.errors));
    }
    if report.max_delivery_attempt != 1 {
        return Some(format!("max delivery attempt {} (expected 1: nothing failed)", report.max_delivery_attempt));
    }
    if report.tls != Some(tls) {
        return Some(format!("producer TLS {:?}, expected {tls}", report.tls));
    }
    if !report.ok {
        return Some("the app did not reach its goal (ok=false)".into());
    }
    None
}

/// The app sends N with the template and receives them with its listener (one process).
fn template_to_listener(test: &'static str, extra: &[&str], tls: bool) {
    let Some(ctx) = Ctx::start(test, &[Sdk::Spring]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    create_topic(&ctx, &topic);
    let outcome = ctx.run_with(Sdk::Spring, Mode::ProduceAndConsume, &topic, &group, "s", extra);
    let Some(report) = outcome.report().cloned() else { ctx.fail(&outcome, "the app printed no RESULT") };
    let n = count();
    if report.sent != n || report.failed != 0 || report.sent_ids.len() != n {
        ctx.fail(&outcome, &format!("sent {} of {n} ({} failed)", report.sent, report.failed));
    }
    let sent: BTreeSet<&str> = report.sent_ids.iter().map(|s| s.as_str()).collect();
    if sent.len() != n {
        ctx.fail(&outcome, "the template got the same message id twice");
    }
    if report.received != n || !report.missing.is_empty() {
        ctx.fail(&outcome, &format!("received {} of {n} ({} lost)", report.received, report.missing.len()));
    }
    let received: BTreeSet<&str> = report.ids.iter().map(|s| s.as_str()).collect();
    if received != sent {
        ctx.fail(&outcome, "received message ids differ from the ids the template got");
    }
    if !report.duplicates.is_empty() || !report.unexpected.is_empty() {
        ctx.fail(&outcome, "duplicate or unexpected deliveries");
    }
    if report.ack_failed != 0 || report.corrupted != 0 {
        ctx.fail(&outcome, "failed acks or corrupted (digest mismatch) messages in the client log");
    }
    if let Some(problem) = spring_problems(&report, tls) {
        ctx.fail(&outcome, &problem);
    }
    note_shutdown(ctx.test, &report);
}

#[test]
fn spring_template_sends_and_listener_receives() {
    template_to_listener("spring_template_listener", &[], true);
}

/// `rocketmq.producer.ssl-enabled=false`: the template's producer speaks plaintext h2c while
/// the listener (always TLS in 2.3.1) uses TLS, on the same port.
#[test]
fn spring_plaintext_template_and_tls_listener() {
    template_to_listener("spring_plaintext_producer", &["--rocketmq.producer.ssl-enabled=false"], false);
}

/// The Python SDK sends N (tag, keys); the Spring listener receives all of them.
#[test]
fn spring_listener_receives_python_messages() {
    let test = "spring_listener_from_python";
    let Some(ctx) = Ctx::start(test, &[Sdk::Python, Sdk::Spring]) else {
        return;
    };
    let (topic, group) = ctx.topic_and_group();
    create_topic(&ctx, &topic);
    let ids = ctx.produce(Sdk::Python, &topic, "p");
    // the shared consumer checks: N distinct bodies, ids equal to the producer's, no
    // duplicates or foreign messages, no failed ack or digest mismatch
    let report = ctx.consume(Sdk::Spring, Mode::PushConsume, &topic, &group, Expect::exactly("p", &ids));
    if let Some(problem) = spring_problems(&report, true) {
        panic!("{test}: {problem}\nreport: {report:?}\n--- gateway log (tail):\n{}", ctx.gateway.log_tail(40));
    }
}
