//! Validation of names and messages, with Apache RocketMQ 5's limits and codes (topic ≤ 127
//! chars of `[%|a-zA-Z0-9_-]`, group ≤ 120, body ≤ maxMessageSize, ≤ 128 user properties and
//! ≤ 16 KiB of properties, reserved property keys, message group < 64 bytes, …); a `%` in a
//! name only as `namespace%name` ([`super::namespace`]).

use super::error::{BrokerError, BrokerResult};
use super::message::OutgoingMessage;
use super::namespace::{self, NameKind};
use super::settings::LimitSettings;

pub const MAX_TOPIC_LEN: usize = 127;
pub const MAX_GROUP_LEN: usize = 120;

/// Topics clients may not use directly (`TopicValidator.SYSTEM_TOPIC_SET`).
const SYSTEM_TOPICS: &[&str] = &[
    "TBW102",
    "SCHEDULE_TOPIC_XXXX",
    "BenchmarkTest",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRACE_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
    "CHECKPOINT_TOPIC",
];

/// Property keys reserved by RocketMQ (`MessageConst.STRING_HASH_SET`).
pub const RESERVED_PROPERTY_KEYS: &[&str] = &[
    "TRACE_ON",
    "MSG_REGION",
    "KEYS",
    "TAGS",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "BUYER_ID",
    "ORIGIN_MESSAGE_ID",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "RECONSUME_TIME",
    "UNIQ_KEY",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "POP_CK",
    "POP_CK_OFFSET",
    "1ST_POP_TIME",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "DUP_INFO",
    "EXTEND_UNIQ_INFO",
    "INSTANCE_ID",
    "CORRELATION_ID",
    "REPLY_TO_CLIENT",
    "TTL",
    "ARRIVE_TIME",
    "PUSH_REPLY_TIME",
    "CLUSTER",
    "MSG_TYPE",
    "INNER_MULTI_QUEUE_OFFSET",
    "TIMER_DELAY_MS",
    "TIMER_DELAY_SEC",
    "TIMER_DELIVER_MS",
    "TIMER_ENQUEUE_MS",
    "TIMER_DEQUEUE_MS",
    "TIMER_ROLL_TIMES",
    "TIMER_OUT_MS",
    "TIMER_DEL_UNIQKEY",
    "TIMER_DELAY_LEVEL",
    "__BORNHOST",
    "BORN_TIMESTAMP",
    "DLQ_ORIGIN_TOPIC",
    "DLQ_ORIGIN_MESSAGE_ID",
    "__CRC32#",
];

fn valid_name_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-'))
}

/// Whether `s` holds a control character (`char::is_control`: U+0000–U+001F, U+007F–U+009F),
/// read off the UTF-8 bytes: it runs over every property of every sent message. U+0080–U+009F
/// are the two bytes 0xC2 0x80–0x9F. The first pass has no early exit, so the compiler
/// vectorises it; only a string with a suspect byte is looked at again.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    let suspect = b.iter().fold(false, |any, &x| any | (x < 0x20) | (x == 0x7f) | (x == 0xc2));
    suspect
        && b.iter()
            .enumerate()
            .any(|(i, &x)| x < 0x20 || x == 0x7f || (x == 0xc2 && b.get(i + 1).is_some_and(|&n| n < 0xa0)))
}

/// Names of the gateway's own topics and groups start with this; clients cannot use them.
pub const SYSTEM_PREFIX: &str = "rmq_sys_";

/// Validates a topic a client names (not the internal retry/DLQ topics).
pub fn validate_topic(name: &str) -> BrokerResult<()> {
    let err = |m: String| Err(BrokerError::IllegalTopic(m));
    if name.trim().is_empty() {
        return err("topic name is empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return err(format!("topic name is {} characters, the limit is {MAX_TOPIC_LEN}", name.len()));
    }
    if !valid_name_chars(name) {
        return err(format!("topic `{name}` contains characters outside [%|a-zA-Z0-9_-]"));
    }
    if is_system_topic(name) {
        return err(format!("topic `{name}` is a system topic and cannot be accessed"));
    }
    namespace::check_shape(name, NameKind::Topic)
}

/// RocketMQ's system topics and the gateway's own (`rmq_sys_*`).
pub fn is_system_topic(name: &str) -> bool {
    SYSTEM_TOPICS.contains(&name) || name.starts_with(SYSTEM_PREFIX)
}

/// RocketMQ's system groups (`CID_RMQ_SYS_*`) and the gateway's own (`rmq_sys_*`).
pub fn is_system_group(name: &str) -> bool {
    name.starts_with("CID_RMQ_SYS_") || name.starts_with(SYSTEM_PREFIX)
}

pub fn validate_group(name: &str) -> BrokerResult<()> {
    let err = |m: String| Err(BrokerError::IllegalConsumerGroup(m));
    if name.trim().is_empty() {
        return err("consumer group name is empty".into());
    }
    if name.len() > MAX_GROUP_LEN {
        return err(format!("consumer group name is {} characters, the limit is {MAX_GROUP_LEN}", name.len()));
    }
    if !valid_name_chars(name) {
        return err(format!("consumer group `{name}` contains characters outside [%|a-zA-Z0-9_-]"));
    }
    if is_system_group(name) {
        return err(format!("consumer group `{name}` is a system group and cannot be used"));
    }
    namespace::check_shape(name, NameKind::Group)
}

/// Checks one message against the limits, in the order the Apache proxy does.
pub fn validate_message(m: &OutgoingMessage, limits: &LimitSettings, now_ms: i64) -> BrokerResult<()> {
    if m.body.is_empty() {
        return Err(BrokerError::BodyEmpty);
    }
    if m.body.len() > limits.max_message_size {
        return Err(BrokerError::BodyTooLarge { size: m.body.len(), limit: limits.max_message_size });
    }
    if m.user_properties.len() > limits.user_property_max_num {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "message has {} user properties, the limit is {}",
            m.user_properties.len(),
            limits.user_property_max_num
        )));
    }
    let mut size = 0usize;
    for (k, v) in &m.user_properties {
        if k.is_empty() {
            return Err(BrokerError::IllegalPropertyKey("user property key is empty".into()));
        }
        if RESERVED_PROPERTY_KEYS.contains(&k.as_str()) {
            return Err(BrokerError::IllegalPropertyKey(format!("property `{k}` is used by the system")));
        }
        if has_control(k) || has_control(v) {
            return Err(BrokerError::IllegalPropertyKey(format!(
                "property `{}` contains control characters in its key or value",
                k.escape_debug()
            )));
        }
        size += k.len() + v.len();
    }
    if let Some(tag) = &m.tag {
        if !tag.is_empty() && tag.trim().is_empty() {
            return Err(BrokerError::IllegalMessageTag("tag is only whitespace".into()));
        }
        if tag.contains('|') {
            return Err(BrokerError::IllegalMessageTag(format!("tag `{tag}` contains `|`")));
        }
        if has_control(tag) {
            return Err(BrokerError::IllegalMessageTag("tag contains control characters".into()));
        }
        size += tag.len();
    }
    for key in &m.keys {
        if !key.is_empty() && key.trim().is_empty() {
            return Err(BrokerError::IllegalMessageKey("message key is only whitespace".into()));
        }
        if has_control(key) {
            return Err(BrokerError::IllegalMessageKey("message key contains control characters".into()));
        }
        size += key.len();
    }
    if size > limits.max_user_property_size {
        return Err(BrokerError::PropertiesTooLarge(format!(
            "user properties, tag and keys take {size} bytes, the limit is {}",
            limits.max_user_property_size
        )));
    }
    if m.message_id.trim().is_empty() {
        return Err(BrokerError::IllegalMessageId("message id is empty".into()));
    }
    if m.message_id.len() > 128 || has_control(&m.message_id) {
        return Err(BrokerError::IllegalMessageId(
            "message id is longer than 128 bytes or has control characters".into(),
        ));
    }
    if let Some(at) = m.delivery_timestamp_ms {
        // Saturating: a timestamp near i64::MAX must be refused, not overflow (Apache #5376).
        let max = i64::try_from(limits.max_delay_time.as_millis()).unwrap_or(i64::MAX);
        let ahead = at.saturating_sub(now_ms);
        if ahead > max {
            return Err(BrokerError::IllegalDeliveryTime(format!(
                "delivery time is {} ahead, the limit is {} (limits.maxDelayTime)",
                humantime::format_duration(std::time::Duration::from_millis(ahead as u64)),
                humantime::format_duration(limits.max_delay_time)
            )));
        }
    }
    if m.transactional && (m.delivery_timestamp_ms.is_some() || m.message_group.is_some() || m.priority.is_some()) {
        return Err(BrokerError::MessageTypeConflict(
            "a transactional message cannot also have a delivery timestamp, a message group or a priority".into(),
        ));
    }
    if m.priority.is_some_and(|p| p < 0) {
        return Err(BrokerError::BadRequest(format!(
            "priority {} is negative; priorities are 0 (lowest) and up",
            m.priority.unwrap_or_default()
        )));
    }
    if let Some(group) = &m.message_group {
        if group.trim().is_empty() {
            return Err(BrokerError::IllegalMessageGroup("message group is empty or only whitespace".into()));
        }
        if group.len() >= limits.max_message_group_size {
            return Err(BrokerError::IllegalMessageGroup(format!(
                "message group is {} bytes, it must be shorter than {}",
                group.len(),
                limits.max_message_group_size
            )));
        }
        if has_control(group) {
            return Err(BrokerError::IllegalMessageGroup("message group contains control characters".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-level check agrees with `char::is_control` on every character, alone and
    /// between others.
    #[test]
    fn control_characters_as_char_is_control_says() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let alone = c.to_string();
            assert_eq!(has_control(&alone), c.is_control(), "{c:?}");
            assert_eq!(has_control(&format!("a{c}\u{a0}z")), c.is_control(), "{c:?} between others");
        }
        assert!(!has_control("plain ASCII, é, \u{a0}, \u{c2a0}, 日本"));
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("TopicTest_1-%|").is_ok());
        assert!(matches!(validate_topic(""), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(validate_topic("a b"), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(validate_topic(&"x".repeat(128)), Err(BrokerError::IllegalTopic(_))));
        assert!(validate_topic(&"x".repeat(127)).is_ok());
        assert!(matches!(validate_topic("TBW102"), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(validate_topic("rmq_sys_x"), Err(BrokerError::IllegalTopic(_))));
        // a `%` only separates a namespace from a name (after a %DLQ%/%RETRY% prefix)
        assert!(validate_topic("ns%t").is_ok());
        assert!(validate_topic("%DLQ%ns%g").is_ok());
        for bad in ["%t", "a%b%c", "ns%", "%DLQ%a%b%c"] {
            assert!(matches!(validate_topic(bad), Err(BrokerError::IllegalTopic(_))), "{bad}");
        }
    }

    #[test]
    fn group_names() {
        assert!(validate_group("GID_test").is_ok());
        assert!(matches!(validate_group(&"g".repeat(121)), Err(BrokerError::IllegalConsumerGroup(_))));
        assert!(matches!(validate_group("CID_RMQ_SYS_x"), Err(BrokerError::IllegalConsumerGroup(_))));
        assert!(validate_group("ns%g").is_ok());
        assert!(matches!(validate_group("%DLQ%g"), Err(BrokerError::IllegalConsumerGroup(_))));
    }
}
