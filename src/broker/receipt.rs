//! Receipt handles: self-describing and verifiable. A handle names the queue, offset,
//! delivery serial, delivery attempt and visibility deadline of one delivery, plus the node that
//! issued it, and carries a MAC over those fields *and* the group and topic it was issued for.
//! Any node holding the cluster secret can verify it; a restart does not invalidate it.
//!
//! Wire form: base64url (no padding) of
//! `version u8 | queue_id u32 | offset u64 | serial u64 | attempt u32 | deadline_ms i64 | node u16 | mac [u8; 12]`
//! (big endian), where `mac = HMAC-SHA256(secret, fields ‖ group ‖ 0x00 ‖ topic)[..12]`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

const VERSION: u8 = 1;
const FIELDS_LEN: usize = 1 + 4 + 8 + 8 + 4 + 8 + 2;
const MAC_LEN: usize = 12;
const ENCODED_LEN: usize = FIELDS_LEN + MAC_LEN;

/// The decoded content of a receipt handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub queue_id: u32,
    pub offset: u64,
    /// Unique per delivery (and per ChangeInvisibleDuration); a handle whose serial is not the
    /// message's current one is stale.
    pub serial: u64,
    pub attempt: u32,
    /// When the message becomes visible again unless acked (epoch ms).
    pub deadline_ms: i64,
    pub node: u16,
}

/// Why a handle was refused (becomes INVALID_RECEIPT_HANDLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt handle is not valid base64url")]
    Encoding,
    #[error("receipt handle has the wrong length or version")]
    Format,
    #[error("receipt handle was not issued for this consumer group and topic, or was altered")]
    Signature,
}

/// Signs and verifies handles with the cluster secret.
pub struct ReceiptCodec {
    key: hmac::Key,
}

impl ReceiptCodec {
    pub fn new(secret: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    fn mac(&self, fields: &[u8], group: &str, topic: &str) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(fields);
        ctx.update(group.as_bytes());
        ctx.update(&[0]);
        ctx.update(topic.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }

    pub fn encode(&self, r: &Receipt, group: &str, topic: &str) -> String {
        let mut buf = Vec::with_capacity(ENCODED_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&r.queue_id.to_be_bytes());
        buf.extend_from_slice(&r.offset.to_be_bytes());
        buf.extend_from_slice(&r.serial.to_be_bytes());
        buf.extend_from_slice(&r.attempt.to_be_bytes());
        buf.extend_from_slice(&r.deadline_ms.to_be_bytes());
        buf.extend_from_slice(&r.node.to_be_bytes());
        let mac = self.mac(&buf, group, topic);
        buf.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(buf)
    }

    pub fn decode(&self, handle: &str, group: &str, topic: &str) -> Result<Receipt, ReceiptError> {
        let raw = raw(handle)?;
        let (fields, mac) = raw.split_at(FIELDS_LEN);
        let expected = self.mac(fields, group, topic);
        // Constant-time comparison of the truncated MAC.
        if expected.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(ReceiptError::Signature);
        }
        Ok(parse(fields))
    }
}

/// The handle's bytes, of the right length and version.
fn raw(handle: &str) -> Result<Vec<u8>, ReceiptError> {
    if handle.len() > 2 * ENCODED_LEN {
        return Err(ReceiptError::Format);
    }
    let raw = URL_SAFE_NO_PAD.decode(handle.trim()).map_err(|_| ReceiptError::Encoding)?;
    if raw.len() != ENCODED_LEN || raw[0] != VERSION {
        return Err(ReceiptError::Format);
    }
    Ok(raw)
}

/// The fields of a handle's bytes (at least [`FIELDS_LEN`] of them, checked by [`raw`]).
fn parse(fields: &[u8]) -> Receipt {
    let u32_at = |i: usize| u32::from_be_bytes([fields[i], fields[i + 1], fields[i + 2], fields[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&fields[i..i + 8]);
        u64::from_be_bytes(b)
    };
    Receipt {
        queue_id: u32_at(1),
        offset: u64_at(5),
        serial: u64_at(13),
        attempt: u32_at(21),
        deadline_ms: u64_at(25) as i64,
        node: u16::from_be_bytes([fields[33], fields[34]]),
    }
}

/// The fields of a handle this node has just issued ([`ReceiptCodec::encode`]), read back
/// without checking its MAC: what the journal records of a delivery. Never for a handle a
/// client sent (those go through [`ReceiptCodec::decode`]).
pub fn read_issued(handle: &str) -> Option<Receipt> {
    raw(handle).ok().map(|raw| parse(&raw))
}

/// The queue id a handle names, read without verifying it (no secret, group or topic needed):
/// where to route a request carrying it. The node serving the queue verifies it.
pub fn peek_queue_id(handle: &str) -> Option<u32> {
    raw(handle).ok().map(|raw| parse(&raw).queue_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(queue_id: u32, offset: u64, serial: u64, attempt: u32, deadline_ms: i64, node: u16,
                      group in "[a-zA-Z0-9_%-]{1,20}", topic in "[a-zA-Z0-9_%-]{1,20}") {
            let codec = ReceiptCodec::new(b"secret");
            let r = Receipt { queue_id, offset, serial, attempt, deadline_ms, node };
            let h = codec.encode(&r, &group, &topic);
            prop_assert_eq!(codec.decode(&h, &group, &topic), Ok(r));
            prop_assert_eq!(peek_queue_id(&h), Some(queue_id));
            prop_assert_eq!(read_issued(&h), Some(r));
            // Bound to its group and topic.
            let other_group = format!("{group}x");
            prop_assert_eq!(codec.decode(&h, &other_group, &topic), Err(ReceiptError::Signature));
        }

        #[test]
        fn garbage_is_refused(s in ".{0,120}") {
            let codec = ReceiptCodec::new(b"secret");
            prop_assert!(codec.decode(&s, "g", "t").is_err());
        }

        #[test]
        fn tampering_is_detected(byte in 0usize..ENCODED_LEN, bit in 0u8..8) {
            let codec = ReceiptCodec::new(b"secret");
            let r = Receipt { queue_id: 1, offset: 2, serial: 3, attempt: 1, deadline_ms: 4, node: 0 };
            let mut raw = URL_SAFE_NO_PAD.decode(codec.encode(&r, "g", "t")).unwrap();
            raw[byte] ^= 1 << bit;
            prop_assert!(codec.decode(&URL_SAFE_NO_PAD.encode(raw), "g", "t").is_err());
        }
    }

    #[test]
    fn other_secret_is_refused() {
        let r = Receipt { queue_id: 1, offset: 2, serial: 3, attempt: 1, deadline_ms: 4, node: 0 };
        let h = ReceiptCodec::new(b"a").encode(&r, "g", "t");
        assert_eq!(ReceiptCodec::new(b"b").decode(&h, "g", "t"), Err(ReceiptError::Signature));
    }
}
