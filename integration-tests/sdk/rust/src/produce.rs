//! `produce` mode: start a Producer, send `count` messages with bodies `<prefix>-<i>`.

use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption};
use rocketmq::model::message::MessageBuilder;
use rocketmq::Producer;
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::args::Args;

/// Runs the producer; returns (all sent, JSON report).
pub async fn run(args: &Args) -> (bool, Value) {
    let started = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();

    let mut option = ProducerOption::default();
    option.set_topics(vec![args.topic.clone()]);
    let mut client = ClientOption::default();
    client.set_access_url(args.endpoint.clone());

    let producer = match start(option, client, args.timeout).await {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(format!("start: {e}"));
            None
        }
    };
    let mut failed = 0usize;
    let mut shutdown_error = Value::Null;
    if let Some(producer) = producer {
        let deadline = started + args.timeout;
        for i in 0..args.count {
            let body = format!("{}-{i}", args.prefix).into_bytes();
            let message = MessageBuilder::builder()
                .set_topic(args.topic.clone())
                .set_tag(args.tag.clone())
                .set_keys(vec![format!("{}-key-{i}", args.prefix)])
                .set_body(body)
                .build();
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    failed += 1;
                    errors.push(format!("build #{i}: {e}"));
                    continue;
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left.max(Duration::from_millis(1)), producer.send(message)).await {
                Ok(Ok(receipt)) => ids.push(receipt.message_id().to_string()),
                Ok(Err(e)) => {
                    failed += 1;
                    errors.push(format!("send #{i}: {e}"));
                }
                Err(_) => {
                    failed += args.count - i;
                    errors.push(format!("timed out after {} of {} sends", i, args.count));
                    break;
                }
            }
        }
        match timeout(Duration::from_secs(10), producer.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shutdown_error = json!(e.to_string()),
            Err(_) => shutdown_error = json!("shutdown timed out after 10s"),
        }
    } else {
        failed = args.count;
    }
    errors.truncate(20);
    let ok = ids.len() == args.count;
    let report = json!({
        "sdk": "rust", "mode": "produce", "ok": ok,
        "topic": args.topic, "count": args.count,
        "sent": ids.len(), "failed": failed, "ids": ids,
        "errors": errors, "shutdown_error": shutdown_error,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    (ok, report)
}

async fn start(option: ProducerOption, client: ClientOption, limit: Duration) -> Result<Producer, String> {
    let mut producer = Producer::new(option, client).map_err(|e| e.to_string())?;
    match timeout(limit, producer.start()).await {
        Ok(Ok(())) => Ok(producer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("producer.start() did not return within {limit:?}")),
    }
}
