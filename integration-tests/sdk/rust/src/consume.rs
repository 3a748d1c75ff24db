//! `simple-consume` mode: a SimpleConsumer receives and acks until all `count` expected
//! bodies were seen (or the timeout), reporting duplicates and unexpected bodies.

use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::SimpleConsumer;
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::args::Args;
use crate::tally::Tally;

/// Long-polling time requested per receive. The Rust SDK uses it as the gRPC deadline too.
const LONG_POLL: Duration = Duration::from_secs(10);
/// How long received messages stay invisible before redelivery.
const INVISIBLE: Duration = Duration::from_secs(30);
const BATCH: i32 = 16;

/// Runs the consumer; returns (all received and acked, JSON report).
pub async fn run(args: &Args) -> (bool, Value) {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut tally = Tally::new(&args.prefix, args.count);
    let mut errors: Vec<String> = Vec::new();
    let (mut acked, mut ack_failed, mut receive_calls, mut receive_errors) = (0, 0, 0, 0);
    let mut max_attempt = 0;
    let mut shutdown_error = Value::Null;

    let mut option = SimpleConsumerOption::default();
    option.set_topics(vec![args.topic.clone()]);
    option.set_consumer_group(args.group.clone());
    let mut client = ClientOption::default();
    client.set_access_url(args.endpoint.clone());
    client.set_long_polling_timeout(LONG_POLL);

    match start(option, client, args.timeout).await {
        Err(e) => errors.push(format!("start: {e}")),
        Ok(consumer) => {
            let filter = FilterExpression::new(FilterType::Tag, args.tag.clone());
            while !tally.complete() && Instant::now() < deadline {
                receive_calls += 1;
                let left = deadline.saturating_duration_since(Instant::now());
                let call = consumer.receive_with(args.topic.clone(), &filter, BATCH, INVISIBLE);
                let messages = match timeout(left + Duration::from_secs(1), call).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        receive_errors += 1;
                        errors.push(format!("receive: {e}"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(_) => break,
                };
                for message in messages {
                    max_attempt = max_attempt.max(message.delivery_attempt());
                    tally.record(message.message_id(), message.body());
                    match consumer.ack(&message).await {
                        Ok(()) => acked += 1,
                        Err(e) => {
                            ack_failed += 1;
                            errors.push(format!("ack {}: {e}", message.message_id()));
                        }
                    }
                }
            }
            match timeout(Duration::from_secs(10), consumer.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => shutdown_error = json!(e.to_string()),
                Err(_) => shutdown_error = json!("shutdown timed out after 10s"),
            }
        }
    }
    errors.truncate(20);
    let ok = tally.complete() && ack_failed == 0;
    let ids: Vec<&String> = tally.received.values().collect();
    let report = json!({
        "sdk": "rust", "mode": "simple-consume", "ok": ok,
        "topic": args.topic, "group": args.group, "count": args.count,
        "received": tally.received.len(), "acked": acked, "ack_failed": ack_failed,
        "duplicates": tally.duplicates, "unexpected": tally.unexpected,
        "missing": tally.missing(), "ids": ids, "max_delivery_attempt": max_attempt,
        "receive_calls": receive_calls, "receive_errors": receive_errors,
        "errors": errors, "shutdown_error": shutdown_error,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    (ok, report)
}

async fn start(option: SimpleConsumerOption, client: ClientOption, limit: Duration) -> Result<SimpleConsumer, String> {
    let mut consumer = SimpleConsumer::new(option, client).map_err(|e| e.to_string())?;
    match timeout(limit, consumer.start()).await {
        Ok(Ok(())) => Ok(consumer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("consumer.start() did not return within {limit:?}")),
    }
}
