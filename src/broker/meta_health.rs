//! How the metadata store is doing, as the progress flusher sees it: degraded from the first
//! failed progress write until one succeeds again. While degraded, consumed progress stays in
//! memory (dirty states) and in the consumer journal of the message log, and the flusher
//! retries with capped exponential backoff; sends and acks go on (they need the log, not the
//! store). Read by `/readyz` and `/api/v1/stats`.

use std::sync::Mutex;
use std::time::Duration;

use super::{Broker, lock};

/// The store is failing: since when, how often, the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataDegraded {
    pub error: String,
    /// Broker clock, milliseconds.
    pub since_ms: i64,
    pub failures: u64,
}

/// What `/readyz` reports about the metadata store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataHealth {
    /// `None`: the last progress write succeeded.
    pub degraded: Option<MetadataDegraded>,
    /// Consumer states whose progress waits for the next write.
    pub waiting: usize,
}

#[derive(Default)]
pub(super) struct HealthCell {
    state: Mutex<Option<MetadataDegraded>>,
    /// When a warning was last logged (broker clock), to log at most every [`WARN_EVERY`].
    last_warned_ms: Mutex<i64>,
}

/// How often a still-failing store is logged again.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// The longest wait between two attempts while the store fails.
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The next wait after a failure: doubled, between `period` and [`MAX_RETRY_DELAY`] (or `period`
/// if that is longer).
pub(super) fn next_delay(current: Duration, period: Duration) -> Duration {
    (current * 2).clamp(period, MAX_RETRY_DELAY.max(period))
}

impl Broker {
    pub fn metadata_health(&self) -> MetadataHealth {
        MetadataHealth { degraded: lock(&self.inner.meta_health.state).clone(), waiting: self.progress_waiting() }
    }

    /// Records a failed progress write; logs a warning on the first and then every 30 s.
    pub(super) fn metadata_failed(&self, error: &str) {
        let now = self.now_ms();
        let failures = {
            let mut state = lock(&self.inner.meta_health.state);
            let entry =
                state.get_or_insert_with(|| MetadataDegraded { error: String::new(), since_ms: now, failures: 0 });
            entry.error = error.to_string();
            entry.failures += 1;
            entry.failures
        };
        let mut last = lock(&self.inner.meta_health.last_warned_ms);
        if failures == 1 || now - *last >= WARN_EVERY.as_millis() as i64 {
            *last = now;
            let waiting = self.progress_waiting();
            tracing::warn!(
                error,
                failures,
                waiting,
                "metadata store unavailable: consumer progress is kept in memory and in the consumer journal, \
                 and written with backoff when the store is back; sends and acks go on"
            );
        }
    }

    /// Records a successful progress write; logs the recovery after a degradation.
    pub(super) fn metadata_succeeded(&self) {
        let was = lock(&self.inner.meta_health.state).take();
        if let Some(d) = was {
            tracing::info!(
                failures = d.failures,
                degraded_ms = self.now_ms() - d.since_ms,
                "metadata store reachable again: consumer progress caught up"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let p = Duration::from_millis(200);
        assert_eq!(next_delay(p, p), Duration::from_millis(400));
        assert_eq!(next_delay(Duration::from_secs(4), p), MAX_RETRY_DELAY);
        assert_eq!(next_delay(MAX_RETRY_DELAY, p), MAX_RETRY_DELAY);
        // A flush interval above the cap is kept.
        assert_eq!(next_delay(Duration::from_secs(10), Duration::from_secs(10)), Duration::from_secs(10));
    }
}
