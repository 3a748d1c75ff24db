//! What the broker is configured with: [`BrokerSettings`], plain values the broker reads while
//! it runs. `server.rs` builds them from the gateway configuration; the broker never sees the
//! configuration file's types. Field names follow the configuration keys they come from.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub topics: TopicSettings,
    pub limits: LimitSettings,
    pub consumer: ConsumerSettings,
    pub timer: TimerSettings,
    pub transaction: TransactionSettings,
    pub clients: ClientSettings,
}

/// Client sessions.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// A client not seen for this long is forgotten, as if it had said goodbye (Apache
    /// `channelExpiredTimeout`).
    pub channel_expired_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TopicSettings {
    /// Create unknown topics on a producer's first send (`autoCreateTopicEnable`).
    pub auto_create_topic_enable: bool,
    /// Queue count of auto-created topics, and of created topics that do not give one.
    pub default_topic_queue_nums: u32,
    /// Topics created at start if missing.
    pub create: Vec<TopicSpec>,
}

/// A topic to create at start.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    /// `default_topic_queue_nums` when absent.
    pub queue_nums: Option<u32>,
    /// NORMAL, FIFO, DELAY, TRANSACTION or MIXED (see [`super::TopicKind::parse`]).
    pub message_type: String,
    /// When a send to it is acknowledged.
    pub durability: crate::metadata::Durability,
}

/// Limits a message must keep to.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Largest message body (bytes); exactly this size passes.
    pub max_message_size: usize,
    /// Σ UTF-8 bytes of user property keys + values + tag + keys.
    pub max_user_property_size: usize,
    /// Most user properties per message.
    pub user_property_max_num: usize,
    /// Message group must be shorter than this (bytes).
    pub max_message_group_size: usize,
    /// Furthest delivery time a delay message may ask for.
    pub max_delay_time: Duration,
    /// Most messages in one send.
    pub max_batch_messages: usize,
    /// Most bytes of sends on their way to the message log, gateway-wide.
    pub max_inflight_bytes: usize,
    /// Most bytes of sends on their way to the message log per client connection.
    pub max_inflight_bytes_per_connection: usize,
    /// How long a send over a bound waits for room before it is refused.
    pub inflight_wait_time: Duration,
}

/// Where a consumer group starts on a queue it has never consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFromWhere {
    /// At the queue tail, except on queues never trimmed by retention, which are read from
    /// offset 0 (as Apache RocketMQ does while a young queue is in memory).
    LastOffset,
    /// At the oldest retained message.
    FirstOffset,
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub consume_from_where: ConsumeFromWhere,
    /// Retries before the DLQ of groups that do not set their own.
    pub retry_max_times: i32,
    /// Invisible time for auto-renewed (PushConsumer) receives.
    pub default_invisible_time: Duration,
    pub min_invisible_time: Duration,
    pub max_invisible_time: Duration,
    pub min_long_polling_timeout: Duration,
    pub max_long_polling_timeout: Duration,
    /// Time kept back from the client's deadline so a long poll answers before it expires.
    pub long_polling_reserve: Duration,
    /// Most messages returned by one receive; also sent to consumers in Settings.
    pub receive_batch_size: i32,
    /// Retry delays sent to consumers (groups without their own).
    pub retry_backoff: Backoff,
    /// How often consumed progress is written to the metadata store.
    pub progress_flush_interval: Duration,
    /// Broadcast groups: a client's progress is dropped after it has not received for this long.
    pub broadcast_retire_after: Duration,
    /// Create an unknown consumer group on first use; otherwise it is not found.
    pub auto_create_subscription_group: bool,
    /// Most auto-created groups at once (explicitly created ones do not count).
    pub max_auto_created_groups: usize,
    /// A group's state on a queue with nothing in flight, unused this long, leaves memory (its
    /// position is kept in a compact map).
    pub queue_state_idle_time: Duration,
    /// Consumer groups created or updated at start.
    pub groups: Vec<GroupSpec>,
}

/// How long a consumer waits before the next delivery of a message it failed (a group's retry
/// policy, sent to its consumers in Settings; the SDKs nack with it).
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// One delay per attempt; the last one repeats (`"1s 5s 30s"`).
    Customized(Vec<Duration>),
    /// `initial × multiplier^(attempt − 1)`, capped at `max` (`"exponential 1s 2 1m"`).
    Exponential { initial: Duration, multiplier: f64, max: Duration },
}

impl Backoff {
    /// Parses `"1s 5s 30s"` (customized) or `"exponential <initial> <multiplier> <max>"`.
    pub fn parse(text: &str) -> Result<Backoff, String> {
        let duration = |d: &str| humantime::parse_duration(d).map_err(|e| format!("`{d}`: {e}"));
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            [] => Err("needs at least one delay".into()),
            ["exponential", initial, multiplier, max] => {
                let (initial, max) = (duration(initial)?, duration(max)?);
                let multiplier: f64 = multiplier
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m >= 1.0)
                    .ok_or_else(|| format!("multiplier `{multiplier}` must be a number >= 1"))?;
                if initial.is_zero() || max < initial {
                    return Err(format!("needs 0 < initial ({initial:?}) <= max ({max:?})"));
                }
                Ok(Backoff::Exponential { initial, multiplier, max })
            }
            ["exponential", ..] => {
                Err("exponential takes <initial> <multiplier> <max>, e.g. `exponential 1s 2 1m`".into())
            }
            delays => Ok(Backoff::Customized(delays.iter().map(|d| duration(d)).collect::<Result<_, _>>()?)),
        }
    }

    /// The wait after the failed delivery `attempt` (1-based), as the SDKs compute it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let attempt = attempt.max(1);
        match self {
            Backoff::Customized(next) => {
                let i = (attempt as usize).min(next.len()).saturating_sub(1);
                next.get(i).copied().unwrap_or_default()
            }
            Backoff::Exponential { initial, multiplier, max } => {
                let factor = multiplier.powi(attempt.saturating_sub(1).min(64) as i32);
                Duration::from_secs_f64((initial.as_secs_f64() * factor).min(max.as_secs_f64()))
            }
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Customized(vec![Duration::from_secs(1)])
    }
}

/// A consumer group to create or update at start.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: String,
    /// Orderly (FIFO) consumption.
    pub consume_message_orderly: bool,
    /// `retry_max_times` of [`ConsumerSettings`] when absent.
    pub retry_max_times: Option<i32>,
    /// Retry delays of this group ([`Backoff::parse`]); the consumer default when absent.
    pub retry_backoff: Option<String>,
    /// BROADCASTING: every consumer client gets every message.
    pub broadcast: bool,
}

#[derive(Debug, Clone)]
pub struct TimerSettings {
    /// A scheduled message is delivered within this after its time (never before it).
    pub timer_precision: Duration,
}

/// What happens to a half message after its last orphan check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMaxAction {
    /// Rolled back.
    Discard,
    /// Moved to `rmq_sys_trans_check_max` for an operator.
    Keep,
}

#[derive(Debug, Clone)]
pub struct TransactionSettings {
    /// First orphan check this long after the half message, unless its producer asked for
    /// another time.
    pub transaction_timeout: Duration,
    pub transaction_check_interval: Duration,
    /// Checks before giving up on a transaction.
    pub transaction_check_max: u32,
    pub transaction_check_max_action: CheckMaxAction,
}
