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
