//! What the broker hands to `/metrics` at scrape time: consumer lag, ready and inflight counts,
//! open transactions, timers held, the tiering backlog and catalog sizes — read from the state
//! it keeps anyway, never maintained per message.

use super::Broker;
use crate::observability::metrics::{Gauges, TieringBacklog};

impl Broker {
    /// The state gauges of `/metrics`.
    pub fn metrics_gauges(&self) -> Gauges {
        let (half_messages, transaction_checks) = self.transaction_gauges();
        Gauges {
            consumers: self.consumer_gauges(),
            half_messages,
            transaction_checks,
            timers_loaded: self.timers_loaded(),
            tiering: self.inner.log.tiering_stats().map(|t| TieringBacklog {
                waiting_segments: t.waiting_segments,
                waiting_bytes: t.waiting_bytes,
                remote_bytes: t.remote_bytes,
                upload_failures: t.upload_failures,
            }),
            topics: self.inner.topics.read().unwrap_or_else(|e| e.into_inner()).len(),
            groups: self.inner.groups.read().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::broker::tests::{Harness, message, receive_request};
    use crate::observability::metrics::ConsumerGauge;
    use crate::storage::memory::MemoryLog;

    /// Lag counts what is not acked in order, ready what is not delivered, inflight what is
    /// delivered and not acked.
    #[tokio::test]
    async fn consumer_gauges_follow_receives_and_acks() {
        let broker = Harness::new(Arc::new(MemoryLog::new())).await.start().await;
        for i in 0..5 {
            broker.send(vec![message(&format!("m{i}"))]).await.unwrap();
        }
        let mut req = receive_request();
        req.batch_size = 2;
        let got = broker.receive(req).await.unwrap();
        assert_eq!(got.len(), 2);
        let gauge = |broker: &crate::broker::Broker| {
            broker.metrics_gauges().consumers.into_iter().find(|c| c.topic == "T" && c.group == "G").unwrap()
        };
        let want = |lag, ready, inflight| ConsumerGauge { topic: "T".into(), group: "G".into(), lag, ready, inflight };
        assert_eq!(gauge(&broker), want(5, 3, 2));
        for m in &got {
            broker.ack("c", "G", "T", &m.receipt_handle).await.unwrap();
        }
        assert_eq!(gauge(&broker), want(3, 3, 0));
    }
}
