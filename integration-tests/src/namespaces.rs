//! Namespace isolation end to end through an official SDK's driver (issue #9 item 8): every
//! client of a driver run is in the namespace of `--namespace NS` (Java
//! `ClientConfiguration.setNamespace`, Go `rmq.Config.NameSpace`), which the SDK sends as
//! `Resource.resource_namespace` and the `x-mq-namespace` header.
//!
//! [`messages`]: the same topic and group names in two namespaces and outside any are three
//! separate topics and groups: each namespace's consumer of the group gets exactly its
//! namespace's messages (a client without namespace gets neither namespace's).
//! [`group_config`]: a group's configuration in one namespace (retryMaxTimes, retry delays,
//! through the admin API) does not reach the same group name in the other (drivers with the
//! `retry-run` mode: Java, Go). Gateway only (Apache 5 does not isolate namespaces on its gRPC
//! path). Prints `[namespaces]` figures lines on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use rmq_gateway::proto::{self, Code};
use serde_json::Value;
use tonic::transport::Channel;

use crate::client;
use crate::scenario::unique;
use crate::sdk::Sdk;
use crate::types::{Driver, Target, TypesCtx};

/// The two namespaces (one with `-`, one with `_`: both are allowed).
const NS_A: &str = "tenant-a";
const NS_B: &str = "tenant_b";
/// Messages each producer sends.
const N: usize = 20;

fn figures(sdk: Sdk, text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "[namespaces] {:<6} {text}", sdk.name());
}

/// `--namespace ns` (nothing for "").
fn ns_args(ns: &str) -> Vec<&str> {
    if ns.is_empty() { Vec::new() } else { vec!["--namespace", ns] }
}

/// `?namespace=ns` (nothing for "").
fn ns_query(ns: &str) -> String {
    if ns.is_empty() { String::new() } else { format!("?namespace={ns}") }
}

/// `r` with the `x-mq-namespace` header (if `ns` is not empty).
fn with_ns<T>(mut r: tonic::Request<T>, ns: &str) -> tonic::Request<T> {
    if !ns.is_empty()
        && let Ok(v) = ns.parse()
    {
        r.metadata_mut().insert("x-mq-namespace", v);
    }
    r
}

/// A raw gRPC reader in namespace `ns` (resource field and header): receives `topic` with
/// `group` until a receive comes back empty, acking everything. Returns the first non-OK,
/// non-empty status code (e.g. TOPIC_NOT_FOUND) and the messages.
async fn drain(endpoint: &str, ns: &str, topic: &str, group: &str) -> anyhow::Result<(i32, Vec<proto::Message>)> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))?.connect().await?;
    let mut c = proto::messaging_service_client::MessagingServiceClient::new(channel);
    let resource = |name: &str| Some(proto::Resource { resource_namespace: ns.into(), name: name.into() });
    let mut out = Vec::new();
    loop {
        let mut r = client::receive_request(topic, group, Some(Duration::from_secs(60)), Duration::from_secs(2));
        r.group = resource(group);
        if let Some(q) = r.message_queue.as_mut() {
            q.topic = resource(topic);
        }
        let mut stream = c.receive_message(with_ns(client::request(r), ns)).await?.into_inner();
        let (mut status, mut got) = (Code::Ok as i32, Vec::new());
        while let Some(frame) = stream.message().await? {
            match frame.content {
                Some(proto::receive_message_response::Content::Message(m)) => got.push(m),
                Some(proto::receive_message_response::Content::Status(s)) => status = s.code,
                _ => {}
            }
        }
        if got.is_empty() {
            let code = if status == Code::MessageNotFound as i32 { Code::Ok as i32 } else { status };
            return Ok((code, out));
        }
        for m in &got {
            let sp = m.system_properties.clone().unwrap_or_default();
            let ack = proto::AckMessageRequest {
                group: resource(group),
                topic: resource(topic),
                entries: vec![proto::AckMessageEntry {
                    message_id: sp.message_id,
                    receipt_handle: sp.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                }],
            };
            let answer = c.ack_message(with_ns(client::request(ack), ns)).await?.into_inner();
            let code = answer.status.map(|s| s.code).unwrap_or(-1);
            anyhow::ensure!(
                code == Code::Ok as i32,
                "ack of {} in {ns:?}: code {code}",
                m.topic.clone().unwrap_or_default().name
            );
        }
        out.extend(got);
    }
}

fn body(m: &proto::Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// The attempts of each body's deliveries in a `retry-run` RESULT (`deliveries`).
fn attempts(d: &Driver) -> BTreeMap<String, Vec<i64>> {
    let Some(Value::Object(map)) = d.fields.get("deliveries") else { return BTreeMap::new() };
    map.iter()
        .map(|(body, list)| {
            let list =
                list.as_array().map(|l| l.iter().filter_map(|p| p.get(0)?.as_i64()).collect()).unwrap_or_default();
            (body.clone(), list)
        })
        .collect()
}

/// A gateway for `test` (`None`: skipped, the SDK is missing, or `RMQ_TYPES_TARGET=apache`:
/// Apache 5 does not isolate namespaces on its gRPC path, there is nothing to compare).
fn start(test: &'static str, sdk: Sdk) -> Option<TypesCtx> {
    if Target::from_env() == Target::Apache {
        figures(sdk, &format!("{test}: skipped on Apache (gateway-only behaviour)"));
        return None;
    }
    TypesCtx::start(test, sdk)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Producers in namespaces A, B and none send N messages each to the same topic name; a
/// consumer of the same group name in each (a PushConsumer in A, SimpleConsumers in B and
/// none) gets exactly its namespace's N; a raw reader of each namespace finds exactly those.
pub fn messages(test: &'static str, sdk: Sdk) {
    let Some(ctx) = start(test, sdk) else {
        return;
    };
    let rt = runtime();
    let (topic, group) = (unique("topic", test), unique("group", test));
    // (namespace, body prefix): the same topic and group names in each.
    let spaces = [(NS_A, "in-a"), (NS_B, "in-b"), ("", "in-none")];
    for (ns, _) in spaces {
        let path = format!("/api/v1/topics/{topic}{}", ns_query(ns));
        let (status, answer) = ctx.admin("PUT", &path, Some(r#"{"messageType":"NORMAL","queueNums":2}"#));
        assert_eq!(status, 200, "{test}: PUT {path}: {answer}");
    }

    // 1. A producer per namespace sends N messages to the same topic name.
    let t0 = Instant::now();
    let producers: Vec<_> = spaces
        .iter()
        .map(|(ns, prefix)| ctx.spawn("produce", &topic, &group, prefix, N, Duration::from_secs(60), &ns_args(ns)))
        .collect();
    let produced: Vec<Driver> = producers.into_iter().map(|p| ctx.finish(p)).collect();
    for ((ns, _), d) in spaces.iter().zip(&produced) {
        if !d.ok() || d.num("sent") as usize != N {
            ctx.fail(&format!("producer in {ns:?} sent {} of {N}: {:?}", d.num("sent"), d.strings("errors")), &[d]);
        }
    }
    let produce_ms = t0.elapsed().as_millis();

    // 2. A consumer of the group per namespace (a PushConsumer in A, SimpleConsumers in B and
    //    outside) gets exactly its namespace's N messages, nothing of the others.
    let t0 = Instant::now();
    let modes = ["push-consume", "simple-consume", "simple-consume"];
    let consumers: Vec<_> = spaces
        .iter()
        .zip(modes)
        .map(|((ns, prefix), mode)| ctx.spawn(mode, &topic, &group, prefix, N, Duration::from_secs(60), &ns_args(ns)))
        .collect();
    let consumed: Vec<Driver> = consumers.into_iter().map(|c| ctx.finish(c)).collect();
    let mut problems = Vec::new();
    for (((ns, _), mode), d) in spaces.iter().zip(modes).zip(&consumed) {
        let unexpected = d.strings("unexpected");
        if !d.ok() || d.num("received") as usize != N || !unexpected.is_empty() || !d.strings("duplicates").is_empty() {
            problems.push(format!(
                "{mode} in {ns:?}: ok={} received {} of {N}, other namespaces' (unexpected) {unexpected:?}, \
                 duplicates {:?}, errors {:?}",
                d.ok(),
                d.num("received"),
                d.strings("duplicates"),
                d.strings("errors")
            ));
        }
    }
    let refs: Vec<&Driver> = produced.iter().chain(&consumed).collect();
    if !problems.is_empty() {
        ctx.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &refs);
    }
    // The same over the raw protocol with a fresh group: each namespace's topic holds exactly
    // its producer's messages, named as that namespace's clients name them.
    for (ns, prefix) in spaces {
        let (code, got) = rt
            .block_on(drain(&ctx.endpoint(), ns, &topic, "raw-reader"))
            .unwrap_or_else(|e| ctx.fail(&format!("raw read in {ns:?}: {e:#}"), &refs));
        let mut bodies: Vec<String> = got.iter().map(body).collect();
        bodies.sort();
        let mut want: Vec<String> = (0..N).map(|i| format!("{prefix}-{i}")).collect();
        want.sort();
        let wrong_topic =
            got.iter().any(|m| m.topic != Some(proto::Resource { resource_namespace: ns.into(), name: topic.clone() }));
        if code != Code::Ok as i32 || bodies != want || wrong_topic {
            ctx.fail(
                &format!("raw read in {ns:?}: code {code}, bodies {bodies:?} (topic ok: {})", !wrong_topic),
                &refs,
            );
        }
    }
    let consume_ms = t0.elapsed().as_millis();
    figures(
        sdk,
        &format!(
            "isolation: 3 × {N} messages, same topic/group names in {NS_A:?}, {NS_B:?} and none: each consumer \
             got exactly its own (produce {produce_ms} ms, consume + raw check {consume_ms} ms)"
        ),
    );
}

/// Group configuration is per namespace (see the comment below).
pub fn group_config(test: &'static str, sdk: Sdk) {
    let Some(ctx) = start(test, sdk) else {
        return;
    };
    let rt = runtime();
    // Group configuration is per namespace: in A the group allows 1 retry after 1 s (2
    // attempts, then the DLQ); the same group name in B keeps the defaults (16 retries, after
    // 1 s, 5 s, 10 s, …): its poison messages get a 3rd attempt and stay out of any DLQ.
    let (topic2, group2) = (unique("topic", test), unique("group", test));
    let path = format!("/api/v1/groups/{group2}{}", ns_query(NS_A));
    let (status, answer) = ctx.admin("PUT", &path, Some(r#"{"retryMaxTimes":1,"retryBackoff":"1s"}"#));
    assert_eq!(status, 200, "{test}: PUT {path}: {answer}");
    let t0 = Instant::now();
    let (count, poison) = (4usize, 2usize);
    let run = |ns: &str, max_attempts: usize| {
        let args =
            ["--poison", &poison.to_string(), "--max-attempts", &max_attempts.to_string(), "--linger-ms", "3000"];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(ns_args(ns));
        ctx.spawn("retry-run", &topic2, &group2, ns, count, Duration::from_secs(60), &args)
    };
    let (in_a, in_b) = (run(NS_A, 2), run(NS_B, 3));
    let (in_a, in_b) = (ctx.finish(in_a), ctx.finish(in_b));
    let mut problems = Vec::new();
    // (namespace, driver, at least / at most this many attempts of a poison message): in B the
    // driver waits for 3 and stops soon after; later attempts seen while it shuts down are
    // within the defaults (17).
    for (ns, d, (least, most)) in [(NS_A, &in_a, (2, 2)), (NS_B, &in_b, (3, 17))] {
        if !d.ok() {
            problems.push(format!("retry-run in {ns:?} did not reach its goal: {:?}", d.strings("errors")));
        }
        let seen = attempts(d);
        if seen.len() != count {
            problems.push(format!("retry-run in {ns:?}: deliveries of {} bodies, expected {count}", seen.len()));
        }
        for (body, got) in &seen {
            let (least, most) = if body.contains("|poison|") { (least, most) } else { (1, 1) };
            let in_order = got.iter().enumerate().all(|(i, &a)| a == i as i64 + 1);
            if !in_order || !(least..=most).contains(&got.len()) {
                problems.push(format!("{ns:?} {body}: attempts {got:?}, expected 1, 2, … ({least} to {most} of them)"));
            }
        }
    }
    // A's poison messages are in A's DLQ (`%DLQ%group` to A's clients), with the origin topic
    // as they name it; B has no DLQ for the group at all.
    let dlq = format!("%DLQ%{group2}");
    let (code, in_dlq) = rt
        .block_on(drain(&ctx.endpoint(), NS_A, &dlq, "dlq-reader"))
        .unwrap_or_else(|e| ctx.fail(&format!("{e:#}"), &[]));
    let mut found: Vec<(String, String)> = in_dlq
        .iter()
        .map(|m| (body(m), m.system_properties.clone().unwrap_or_default().dead_letter_queue.unwrap_or_default().topic))
        .collect();
    found.sort();
    let want: Vec<(String, String)> = (0..poison).map(|i| (format!("{NS_A}|poison|{i}"), topic2.clone())).collect();
    if code != Code::Ok as i32 || found != want {
        problems.push(format!("{dlq} in {NS_A:?}: code {code}, holds {found:?}, expected {want:?}"));
    }
    let (code, in_b_dlq) = rt
        .block_on(drain(&ctx.endpoint(), NS_B, &dlq, "dlq-reader"))
        .unwrap_or_else(|e| ctx.fail(&format!("{e:#}"), &[]));
    if code != Code::TopicNotFound as i32 || !in_b_dlq.is_empty() {
        problems.push(format!("{dlq} in {NS_B:?}: code {code}, {} messages; expected no such topic", in_b_dlq.len()));
    }
    let (_, shown) = ctx.admin("GET", &format!("/api/v1/groups/{group2}{}", ns_query(NS_B)), None);
    if !shown.contains(r#""retryMaxTimes":16"#) || shown.contains("retryBackoff") {
        problems.push(format!("the group in {NS_B:?} is not at the defaults: {shown}"));
    }
    if !problems.is_empty() {
        ctx.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &[&in_a, &in_b]);
    }
    let most = |d: &Driver| attempts(d).iter().filter(|(b, _)| b.contains("|poison|")).map(|(_, a)| a.len()).max();
    figures(
        sdk,
        &format!(
            "group config: retryMaxTimes 1 in {NS_A:?}: poison delivered {:?} times, then in its DLQ; defaults for \
             the same name in {NS_B:?}: {:?} attempts seen, no DLQ ({} ms)",
            most(&in_a).unwrap_or(0),
            most(&in_b).unwrap_or(0),
            t0.elapsed().as_millis()
        ),
    );
}
