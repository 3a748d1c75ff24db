//! Consumption scenarios run through the official SDKs' drivers (issue #9): retries with the
//! group's backoff ending in the dead-letter queue after exactly the allowed attempts, and
//! broadcast groups.
//!
//! The driver contract is `sdk/MESSAGE_TYPES.md` § "Consumption (retries)". Timing is
//! reported (measured delay per retry against the configured one) and only checked with a
//! generous bound: a retry must never come early, and not more than [`LATE_MS`] late.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use rmq_gateway::proto;
use serde_json::Value;
use tonic::transport::Channel;

use crate::apache::TopicType;
use crate::client;
use crate::sdk::Sdk;
use crate::types::TypesCtx;

/// A retry may come this much later than its delay (long-poll wake-ups, the SDK's own queue).
pub const LATE_MS: i64 = 5000;
/// A retry may come this much earlier than its delay (clock reads on two sides of a nack).
const EARLY_MS: i64 = 100;

/// Every message of `topic` for `group` (a fresh group reads the whole topic), acked.
async fn drain(endpoint: &str, topic: &str, group: &str) -> anyhow::Result<Vec<proto::Message>> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))?.connect().await?;
    let mut c = proto::messaging_service_client::MessagingServiceClient::new(channel);
    let mut out = Vec::new();
    loop {
        let r = client::receive_request(topic, group, Some(Duration::from_secs(60)), Duration::from_secs(2));
        let mut stream = c.receive_message(client::request(r)).await?.into_inner();
        let mut got = Vec::new();
        while let Some(frame) = stream.message().await? {
            if let Some(proto::receive_message_response::Content::Message(m)) = frame.content {
                got.push(m);
            }
        }
        if got.is_empty() {
            return Ok(out);
        }
        for m in &got {
            let sp = m.system_properties.clone().unwrap_or_default();
            let ack = proto::AckMessageRequest {
                group: client::resource(group),
                topic: client::resource(topic),
                entries: vec![proto::AckMessageEntry {
                    message_id: sp.message_id,
                    receipt_handle: sp.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                }],
            };
            c.ack_message(client::request(ack)).await?;
        }
        out.extend(got);
    }
}

/// (attempt, received at ms) per delivery, per body, from a `retry-run` RESULT.
fn deliveries(fields: &serde_json::Map<String, Value>) -> BTreeMap<String, Vec<(i64, i64)>> {
    let Some(Value::Object(map)) = fields.get("deliveries") else { return BTreeMap::new() };
    map.iter()
        .map(|(body, list)| {
            let pairs = list
                .as_array()
                .map(|l| l.iter().filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_i64()?))).collect::<Vec<_>>())
                .unwrap_or_default();
            (body.clone(), pairs)
        })
        .collect()
}

/// Retries with the group's own backoff (`backoff`, whose delays after attempts 1, 2, … are
/// `delays_ms`) and `delays_ms.len()` retries: a PushConsumer fails every delivery of 3 of
/// 10 messages. Each of those is delivered exactly `delays_ms.len() + 1` times, attempt 1, 2,
/// …, each retry after its delay (never early; reported), then lands in `%DLQ%{group}` with
/// its origin; the 7 others are consumed once.
pub fn retries_end_in_the_dead_letter_queue(test: &'static str, sdk: Sdk, backoff: &str, delays_ms: &[i64]) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let (n, poison) = (10usize, 3usize);
    let max_attempts = delays_ms.len() + 1;
    let topic = ctx.topic(TopicType::Normal, 2);
    let group = ctx.group_with_backoff(false, Some(delays_ms.len() as i32), Some(backoff));
    let budget: i64 = delays_ms.iter().sum::<i64>() + LATE_MS * max_attempts as i64 + 20_000;
    let args = ["--poison", &poison.to_string(), "--max-attempts", &max_attempts.to_string(), "--linger-ms", "3000"];
    let run = ctx.run("retry-run", &topic, &group, "rt", n, Duration::from_millis(budget as u64), &args);
    let mut problems = Vec::new();
    if !run.ok() {
        problems.push(format!("the driver did not reach its goal (errors {:?})", run.strings("errors")));
    }
    let sent = run.texts("sent");
    let seen = deliveries(&run.fields);
    let mut gaps: Vec<Vec<i64>> = vec![Vec::new(); delays_ms.len()];
    for body in sent.keys() {
        let got = seen.get(body).cloned().unwrap_or_default();
        let attempts: Vec<i64> = got.iter().map(|&(a, _)| a).collect();
        if !body.contains("|poison|") {
            if attempts != [1] {
                problems.push(format!("{body}: attempts {attempts:?}, expected one delivery"));
            }
            continue;
        }
        let want: Vec<i64> = (1..=max_attempts as i64).collect();
        if attempts != want {
            problems.push(format!("{body}: attempts {attempts:?}, expected {want:?} (max attempts {max_attempts})"));
        }
        for (k, pair) in got.windows(2).enumerate().take(delays_ms.len()) {
            let gap = pair[1].1 - pair[0].1;
            gaps[k].push(gap);
            let want = delays_ms[k];
            if gap < want - EARLY_MS || gap > want + LATE_MS {
                problems.push(format!("{body}: retry {} after {gap} ms, configured {want} ms", k + 1));
            }
        }
    }
    // The exhausted ones are in the group's dead-letter queue, with their origin.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dlq_topic = format!("%DLQ%{group}");
    let dlq = rt.block_on(drain(&ctx.endpoint(), &dlq_topic, "dlq-reader")).unwrap_or_else(|e| {
        problems.push(format!("reading {dlq_topic}: {e:#}"));
        Vec::new()
    });
    let mut in_dlq: Vec<(String, String, String)> = dlq
        .iter()
        .map(|m| {
            let sp = m.system_properties.clone().unwrap_or_default();
            let origin = sp.dead_letter_queue.unwrap_or_default();
            (String::from_utf8_lossy(&m.body).into_owned(), origin.topic, origin.message_id)
        })
        .collect();
    in_dlq.sort();
    let want_dlq: Vec<(String, String, String)> = sent
        .iter()
        .filter(|(b, _)| b.contains("|poison|"))
        .map(|(b, id)| (b.clone(), topic.clone(), id.clone()))
        .collect();
    if in_dlq != want_dlq {
        problems.push(format!("{dlq_topic} holds {in_dlq:?}, expected {want_dlq:?}"));
    }
    let measured: Vec<String> = gaps
        .iter()
        .zip(delays_ms)
        .map(|(g, want)| {
            let (lo, hi) = (g.iter().min().copied().unwrap_or(0), g.iter().max().copied().unwrap_or(0));
            format!("{want}→[{lo}..{hi}]")
        })
        .collect();
    let _ = writeln!(
        std::io::stderr().lock(),
        "[retries] {:<6} backoff \"{backoff}\": retry delays ms configured→[measured min..max] {}; \
         {} poison × {max_attempts} attempts, {} in {dlq_topic}",
        sdk.name(),
        measured.join(" "),
        poison,
        in_dlq.len()
    );
    if !problems.is_empty() {
        ctx.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &[&run]);
    }
}

/// Broadcast consumption: a BROADCASTING group, 20 messages, three SimpleConsumer clients of
/// the group (three processes, three client ids), each of which must receive every message
/// exactly once (and acks it); a CLUSTERING group would have split them.
pub fn broadcast_to_three_clients(test: &'static str, sdk: Sdk) {
    let Some(ctx) = TypesCtx::start(test, sdk) else {
        return;
    };
    let n = 20;
    let topic = ctx.topic(TopicType::Normal, 2);
    let group = ctx.broadcast_group();
    let produced = ctx.run("produce", &topic, "", "bc", n, Duration::from_secs(60), &[]);
    let sent: std::collections::BTreeSet<String> = produced.strings("ids").into_iter().collect();
    if !produced.ok() || sent.len() != n {
        ctx.fail(&format!("sent {} of {n}", sent.len()), &[&produced]);
    }
    let clients: Vec<_> =
        (0..3).map(|_| ctx.spawn("simple-consume", &topic, &group, "bc", n, Duration::from_secs(60), &[])).collect();
    let results: Vec<_> = clients.into_iter().map(|c| ctx.finish(c)).collect();
    let mut problems = Vec::new();
    let mut figures = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let got: Vec<String> = r.strings("ids");
        let distinct: std::collections::BTreeSet<String> = got.iter().cloned().collect();
        figures.push(format!("client {i}: {} received, {} distinct", got.len(), distinct.len()));
        if !r.ok() || distinct != sent {
            let missing: Vec<_> = sent.difference(&distinct).collect();
            problems.push(format!("client {i}: ok={} missing {missing:?}", r.ok()));
        }
        if !r.strings("duplicates").is_empty() {
            problems.push(format!("client {i}: duplicates {:?}", r.strings("duplicates")));
        }
    }
    let _ = writeln!(std::io::stderr().lock(), "[broadcast] {:<6} {n} messages: {}", sdk.name(), figures.join("; "));
    if !problems.is_empty() {
        let drivers: Vec<&crate::types::Driver> = results.iter().collect();
        ctx.fail(&format!("{} problem(s):\n  {}", problems.len(), problems.join("\n  ")), &drivers);
    }
}
