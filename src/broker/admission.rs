//! Backpressure on sends: bounds the bytes on their way to the message log, gateway-wide
//! (`limits.maxInflightBytes`) and per client connection (`limits.maxInflightBytesPerConnection`).
//! A send over a bound waits up to `limits.inflightWaitTime` for room (flow control), then is
//! refused with TOO_MANY_REQUESTS naming the bound; the SDKs that retry sends (Java, Go,
//! Node.js) back off on that code. Sends waiting for room are bounded too (as many bytes as
//! the gateway-wide bound), so neither the log's queue nor the waiters grow without limit.
//! A send larger than a bound on its own is let through when nothing else is in flight on
//! that bound, so every valid message can be stored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::error::{BrokerError, BrokerResult};
use super::lock;
use crate::fast_map::FastMap;

/// Where a send came from, for `limits.maxInflightBytesPerConnection`: the client's TCP peer,
/// or (not over TCP) its client id. Cheap to compare and copy: sends on a busy connection
/// neither format nor allocate a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Connection {
    Peer(SocketAddr),
    Client(Arc<str>),
}

#[derive(Default)]
struct Usage {
    total: usize,
    peak: usize,
    /// Bytes of sends waiting for room.
    waiting: usize,
    per_connection: FastMap<Connection, usize>,
}

/// The bounds and what is in flight.
pub(super) struct Admission {
    max_total: usize,
    max_per_connection: usize,
    wait: Duration,
    usage: Mutex<Usage>,
    released: Notify,
    waited: AtomicU64,
    refused: AtomicU64,
}

/// Room for one send; given back when dropped.
pub(super) struct Permit<'a> {
    admission: &'a Admission,
    connection: Option<Connection>,
    bytes: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut usage = lock(&self.admission.usage);
            usage.total -= self.bytes;
            if let Some(c) = &self.connection
                && let Some(used) = usage.per_connection.get_mut(c)
            {
                *used -= self.bytes;
                if *used == 0 {
                    usage.per_connection.remove(c);
                }
            }
            usage.waiting > 0
        };
        // A send counts itself as waiting (under this lock) only after registering for the
        // wake-up and before looking at the usage again, which then includes this release.
        if waiters {
            self.admission.released.notify_waiters();
        }
    }
}

/// A send registered as waiting; unregistered when dropped (also when the caller gives up).
struct Waiting<'a> {
    admission: &'a Admission,
    bytes: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Zero once admitted (accounted under the lock already held then).
        if self.bytes > 0 {
            lock(&self.admission.usage).waiting -= self.bytes;
        }
    }
}

/// What the admin API shows.
#[derive(Debug, Clone, Default)]
pub struct AdmissionStats {
    pub inflight_bytes: usize,
    pub peak_inflight_bytes: usize,
    pub waiting_bytes: usize,
    pub connections: usize,
    pub max_inflight_bytes: usize,
    pub max_inflight_bytes_per_connection: usize,
    /// Sends that had to wait for room.
    pub waited: u64,
    /// Sends refused with TOO_MANY_REQUESTS.
    pub refused: u64,
}

impl Admission {
    pub fn new(max_total: usize, max_per_connection: usize, wait: Duration) -> Self {
        Admission {
            max_total,
            max_per_connection,
            wait,
            usage: Mutex::new(Usage::default()),
            released: Notify::new(),
            waited: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Room for `bytes` more from `connection` (`None`: only the gateway-wide bound applies),
    /// waiting for it up to the configured time.
    pub async fn admit(&self, connection: Option<&Connection>, bytes: usize) -> BrokerResult<Permit<'_>> {
        // Room at once (the usual case): no waiter registered, no clock read.
        if self.try_take(&mut lock(&self.usage), connection, bytes).is_ok() {
            return Ok(Permit { admission: self, connection: connection.cloned(), bytes });
        }
        let deadline = Instant::now() + self.wait;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Registered before looking at the usage, so a release after the look wakes it.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let over = {
                let mut usage = lock(&self.usage);
                let Err((used, connection_fits)) = self.try_take(&mut usage, connection, bytes) else {
                    if let Some(mut w) = waiting.take() {
                        usage.waiting -= w.bytes;
                        w.bytes = 0;
                    }
                    return Ok(Permit { admission: self, connection: connection.cloned(), bytes });
                };
                let over = if connection_fits {
                    format!(
                        "the gateway has {} bytes of sends in flight to the message log; this send ({bytes} bytes) \
                         would exceed limits.maxInflightBytes ({})",
                        usage.total, self.max_total
                    )
                } else {
                    format!(
                        "this connection has {used} bytes of sends in flight to the message log; this send \
                         ({bytes} bytes) would exceed limits.maxInflightBytesPerConnection ({})",
                        self.max_per_connection
                    )
                };
                if waiting.is_none() {
                    if self.wait.is_zero() || usage.waiting + bytes > self.max_total {
                        drop(usage);
                        return Err(self.refuse(over));
                    }
                    usage.waiting += bytes;
                    waiting = Some(Waiting { admission: self, bytes });
                    self.waited.fetch_add(1, Ordering::Relaxed);
                }
                over
            };
            if Instant::now() >= deadline {
                drop(waiting);
                return Err(self.refuse(format!("{over}; still over after waiting {:?}", self.wait)));
            }
            tokio::select! {
                _ = &mut released => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Takes room for `bytes` if both bounds allow it; else what the connection has in flight
    /// and whether the connection's bound (not the gateway's) allowed it.
    fn try_take(&self, usage: &mut Usage, connection: Option<&Connection>, bytes: usize) -> Result<(), (usize, bool)> {
        let used = connection.and_then(|c| usage.per_connection.get(c)).copied().unwrap_or(0);
        let total_fits = usage.total == 0 || usage.total + bytes <= self.max_total;
        let connection_fits = used == 0 || used + bytes <= self.max_per_connection;
        if !(total_fits && connection_fits) {
            return Err((used, connection_fits));
        }
        usage.total += bytes;
        usage.peak = usage.peak.max(usage.total);
        if let Some(c) = connection {
            *usage.per_connection.entry(c.clone()).or_default() += bytes;
        }
        Ok(())
    }

    fn refuse(&self, why: String) -> BrokerError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        BrokerError::TooManyRequests(format!("send refused, try again later: {why}"))
    }

    pub fn stats(&self) -> AdmissionStats {
        let usage = lock(&self.usage);
        AdmissionStats {
            inflight_bytes: usage.total,
            peak_inflight_bytes: usage.peak,
            waiting_bytes: usage.waiting,
            connections: usage.per_connection.len(),
            max_inflight_bytes: self.max_total,
            max_inflight_bytes_per_connection: self.max_per_connection,
            waited: self.waited.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(name: &str) -> Connection {
        Connection::Client(name.into())
    }

    #[tokio::test]
    async fn bounds_wait_then_refuse() {
        let a = Admission::new(100, 60, Duration::from_millis(50));
        let p1 = a.admit(Some(&conn("c1")), 50).await.unwrap();
        // Per connection: 50 + 20 > 60.
        let e = a.admit(Some(&conn("c1")), 20).await.err().unwrap();
        assert!(matches!(e, BrokerError::TooManyRequests(_)), "{e}");
        assert!(e.to_string().contains("limits.maxInflightBytesPerConnection"), "{e}");
        // Another connection fits the gateway bound (50 + 40 <= 100) but not 50 + 60.
        let p2 = a.admit(Some(&conn("c2")), 40).await.unwrap();
        let e = a.admit(Some(&conn("c3")), 60).await.err().unwrap();
        assert!(e.to_string().contains("limits.maxInflightBytes ("), "{e}");
        // A waiter gets in once room is given back.
        let c3 = conn("c3");
        let waiter = a.admit(Some(&c3), 60);
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(p1);
        };
        let (got, ()) = tokio::join!(waiter, release);
        let p3 = got.unwrap();
        let s = a.stats();
        assert_eq!((s.inflight_bytes, s.waiting_bytes, s.connections), (100, 0, 2));
        assert!(s.waited >= 2 && s.refused == 2, "{s:?}");
        drop((p2, p3));
        // Larger than a bound on its own: admitted when nothing else is in flight.
        let big = a.admit(Some(&conn("c1")), 500).await.unwrap();
        assert_eq!(a.stats().peak_inflight_bytes, 500);
        drop(big);
        assert_eq!(a.stats().inflight_bytes, 0);
    }

    #[tokio::test]
    async fn a_release_wakes_the_waiters_at_once() {
        // The bound's wait is long: a waiter admitted well before it was woken by a release,
        // also one that registered while the first was waiting.
        let a = Admission::new(100, 100, Duration::from_secs(30));
        let held = a.admit(None, 100).await.unwrap();
        let first = a.admit(None, 50);
        let second = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            a.admit(None, 50).await
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        };
        let joined = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(first, second, release) });
        let (first, second, ()) = joined.await.expect("the waiters were not woken by the release");
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(a.stats().inflight_bytes, 100);
        assert_eq!(a.stats().waiting_bytes, 0);
        drop((first, second));
        // Nobody waits: a release notifies no one, and the next send is admitted at once.
        drop(a.admit(None, 100).await.unwrap());
        assert_eq!(a.stats().inflight_bytes, 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_no_trace() {
        let a = Admission::new(10, 10, Duration::from_secs(5));
        let _p = a.admit(None, 10).await.unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(20), a.admit(None, 5)).await;
        assert!(gave_up.is_err());
        assert_eq!(a.stats().waiting_bytes, 0);
    }
}
