//! Message properties as stored in the log: an ordered list of string pairs with a compact,
//! length-prefixed binary encoding (no separator characters, so any UTF-8 is safe).
//!
//! Encoding: `u16 count`, then per pair `u16 key_len, key, u32 value_len, value` (little endian).

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Well-known property keys, named as in Apache RocketMQ (`MessageConst`).
pub mod keys {
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    pub const TAGS: &str = "TAGS";
    pub const KEYS: &str = "KEYS";
    pub const SHARDING_KEY: &str = "__SHARDINGKEY";
    pub const BORN_HOST: &str = "__BORNHOST";
    pub const TRACE_CONTEXT: &str = "TRACE_CONTEXT";
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    /// Dead-letter copies: the topic the message was consumed from (Apache `RETRY_TOPIC`).
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// Dead-letter copies: the id of the message they copy (Apache `ORIGIN_MESSAGE_ID`).
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// Dead-letter copies: the most delivery attempts the group allowed.
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
    pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
    pub const BODY_ENCODING: &str = "BODY_ENCODING";
    pub const MSG_TYPE: &str = "MSG_TYPE";
    /// The topic a scheduled or half message will be delivered to.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// Seconds before a half message's first orphan check, as its producer asked.
    pub const CHECK_IMMUNITY_TIME: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
    /// Priority of a priority message (RIP-80).
    pub const PRIORITY: &str = "__PRIORITY";
    /// When a half message's first orphan check is due (epoch ms, the broker's clock).
    pub const CHECK_AT: &str = "__CHECK_AT";
    /// A reference record: the message lives at (topic, queue, offset) and was stored once.
    pub const REF_TOPIC: &str = "__REF_TOPIC";
    pub const REF_QUEUE_ID: &str = "__REF_QID";
    pub const REF_OFFSET: &str = "__REF_OFFSET";

    /// The keys above: a decoded key equal to one of them borrows it instead of allocating.
    pub(super) const KNOWN: &[&str] = &[
        UNIQ_KEY,
        TAGS,
        KEYS,
        SHARDING_KEY,
        BORN_HOST,
        TRACE_CONTEXT,
        TIMER_DELIVER_MS,
        RECONSUME_TIME,
        RETRY_TOPIC,
        ORIGIN_MESSAGE_ID,
        MAX_RECONSUME_TIMES,
        DLQ_ORIGIN_TOPIC,
        DLQ_ORIGIN_MESSAGE_ID,
        BODY_ENCODING,
        MSG_TYPE,
        REAL_TOPIC,
        CHECK_IMMUNITY_TIME,
        PRIORITY,
        CHECK_AT,
        REF_TOPIC,
        REF_QUEUE_ID,
        REF_OFFSET,
    ];
}

/// Error decoding a property block.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed property block: {0}")]
pub struct PropertiesError(&'static str);

/// Ordered key/value properties of a message. Keys are mostly the well-known constants
/// (borrowed, not copied, on the send and read paths); others are owned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(Vec<(Cow<'static, str>, String)>);

impl Properties {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub fn push(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// Removes every value stored under `key`.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Size of [`Properties::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        2 + self.0.iter().map(|(k, v)| 2 + k.len() + 4 + v.len()).sum::<usize>()
    }

    /// Appends the binary encoding to `out`. Keys longer than `u16::MAX` bytes are a caller
    /// bug (the broker limits property sizes far below that) and are truncated to the limit.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_u16_le(self.0.len().min(u16::MAX as usize) as u16);
        for (k, v) in self.0.iter().take(u16::MAX as usize) {
            let k = &k.as_bytes()[..k.len().min(u16::MAX as usize)];
            out.put_u16_le(k.len() as u16);
            out.put_slice(k);
            out.put_u32_le(v.len() as u32);
            out.put_slice(v.as_bytes());
        }
    }

    /// Decodes a block produced by [`Properties::encode`].
    pub fn decode(mut buf: Bytes) -> Result<Self, PropertiesError> {
        if buf.remaining() < 2 {
            return Err(PropertiesError("missing pair count"));
        }
        let count = buf.get_u16_le() as usize;
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            if buf.remaining() < 2 {
                return Err(PropertiesError("truncated key length"));
            }
            let klen = buf.get_u16_le() as usize;
            if buf.remaining() < klen + 4 {
                return Err(PropertiesError("truncated key"));
            }
            let k = buf.split_to(klen);
            let vlen = buf.get_u32_le() as usize;
            if buf.remaining() < vlen {
                return Err(PropertiesError("truncated value"));
            }
            let v = buf.split_to(vlen);
            let k = match keys::KNOWN.iter().find(|known| known.as_bytes() == &k[..]) {
                Some(known) => Cow::Borrowed(*known),
                None => Cow::Owned(String::from_utf8(k.to_vec()).map_err(|_| PropertiesError("key is not utf-8"))?),
            };
            let v = String::from_utf8(v.to_vec()).map_err(|_| PropertiesError("value is not utf-8"))?;
            pairs.push((k, v));
        }
        if buf.has_remaining() {
            return Err(PropertiesError("trailing bytes"));
        }
        Ok(Self(pairs))
    }
}

impl FromIterator<(String, String)> for Properties {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self(iter.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_keys_decode_borrowed_and_others_owned() {
        let mut p = Properties::new();
        p.push(keys::UNIQ_KEY, "id");
        p.push("color", "blue");
        p.push(keys::TAGS.to_string(), "TagA");
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        let back = Properties::decode(buf.freeze()).unwrap();
        assert_eq!(back, p);
        let borrowed: Vec<bool> = back.0.iter().map(|(k, _)| matches!(k, Cow::Borrowed(_))).collect();
        assert_eq!(borrowed, [true, false, true]);
        assert_eq!(back.get("color"), Some("blue"));
    }

    proptest! {
        #[test]
        fn round_trips(pairs in proptest::collection::vec((".{0,40}", ".{0,200}"), 0..20)) {
            let props: Properties = pairs.into_iter().collect();
            let mut buf = BytesMut::new();
            props.encode(&mut buf);
            prop_assert_eq!(buf.len(), props.encoded_len());
            prop_assert_eq!(Properties::decode(buf.freeze()).unwrap(), props);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Properties::decode(Bytes::from(bytes));
        }
    }
}
