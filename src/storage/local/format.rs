//! On-disk formats of the local log, in one place: commit-log record framing, the per-queue
//! index entry, and the stable hash used by the key index.
//!
//! Every multi-byte integer is little endian. Any change here is a format change: bump
//! [`RECORD_VERSION`] (or the index/key-index versions), keep decoding the old version, and
//! update the property tests at the bottom.
//!
//! # Commit-log record (version 1)
//!
//! ```text
//! off  size  field
//!   0     4  total_len        whole record, this field included
//!   4     4  crc32c           CRC32C of bytes [8, total_len)
//!   8     1  version          1
//!   9     1  kind             1 = message, 2 = end of segment (the rest of the segment is unused)
//!  10     2  topic_len
//!  12     4  queue_id
//!  16     8  log_position     global log position of this record (guards against stale bytes)
//!  24     8  queue_offset
//!  32     8  store_timestamp_ms
//!  40     8  born_timestamp_ms
//!  48     4  flags
//!  52     4  properties_len
//!  56     8  tag_hash
//!  64     4  body_len
//!  68     …  topic, properties (see `record.rs`), body
//! ```
//!
//! A zero `total_len` means "no more records in this segment" (segments are pre-sized sparse
//! files, so unwritten space reads as zeros). An end-of-segment record is a bare header.
//!
//! # Queue-index entry (32 bytes, RocketMQ ConsumeQueue-style)
//!
//! ```text
//!   0  8  log_position   8  4  size   12  8  tag_hash   20  8  store_timestamp_ms   28  4  crc32c of [0, 28)
//! ```
//!
//! An all-zero entry (never written) fails its CRC and reads as "absent".

use bytes::{BufMut, Bytes};

use crate::storage::Properties;

/// Version byte written into every record.
pub const RECORD_VERSION: u8 = 1;
/// Size of the fixed record header.
pub const HEADER_LEN: usize = 68;
/// Size of one queue-index entry.
pub const INDEX_ENTRY_LEN: usize = 32;

const KIND_MESSAGE: u8 = 1;
const KIND_END_OF_SEGMENT: u8 = 2;

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("no record here (zero length)")]
    Empty,
    #[error("record length {0} is impossible")]
    BadLength(u32),
    #[error("record is truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("crc mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc { stored: u32, computed: u32 },
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record claims log position {found}, expected {expected}")]
    WrongPosition { found: u64, expected: u64 },
    #[error("field lengths do not add up to the record length")]
    Inconsistent,
    #[error("topic is not utf-8")]
    TopicNotUtf8,
    #[error("{0}")]
    Properties(#[from] crate::storage::record::PropertiesError),
}

impl FrameError {
    /// Whether the version is from a newer binary: recovery must refuse to start instead of
    /// truncating data it does not understand.
    pub fn is_unsupported_version(&self) -> bool {
        matches!(self, FrameError::UnsupportedVersion(_))
    }
}

/// The fields of a message record other than its topic, properties and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub queue_id: u32,
    pub log_position: u64,
    pub queue_offset: u64,
    pub store_timestamp_ms: i64,
    pub born_timestamp_ms: i64,
    pub flags: u32,
    pub tag_hash: u64,
}

/// A decoded frame. `Message` borrows nothing: topic, properties and body are slices of
/// the input [`Bytes`] (zero copy when the input is a mapped segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Message {
        header: RecordHeader,
        topic: Bytes,
        properties: Bytes,
        body: Bytes,
        /// Total encoded length.
        len: usize,
    },
    /// End of segment: continue at the next segment.
    EndOfSegment,
}

/// Encoded length of a message record.
pub fn record_len(topic_len: usize, properties_len: usize, body_len: usize) -> usize {
    HEADER_LEN + topic_len + properties_len + body_len
}

/// Appends one message record to `out`. `encoded_properties` is the output of
/// [`Properties::encode`]. The caller has checked that the lengths fit their fields
/// (`topic` < 64 KiB; the record fits a segment, so lengths fit in `u32`).
pub fn encode_record(out: &mut Vec<u8>, header: &RecordHeader, topic: &str, encoded_properties: &[u8], body: &[u8]) {
    let start = out.len();
    let len = record_len(topic.len(), encoded_properties.len(), body.len());
    out.reserve(len);
    out.put_u32_le(len as u32);
    out.put_u32_le(0); // crc, patched below
    out.put_u8(RECORD_VERSION);
    out.put_u8(KIND_MESSAGE);
    out.put_u16_le(topic.len() as u16);
    out.put_u32_le(header.queue_id);
    out.put_u64_le(header.log_position);
    out.put_u64_le(header.queue_offset);
    out.put_i64_le(header.store_timestamp_ms);
    out.put_i64_le(header.born_timestamp_ms);
    out.put_u32_le(header.flags);
    out.put_u32_le(encoded_properties.len() as u32);
    out.put_u64_le(header.tag_hash);
    out.put_u32_le(body.len() as u32);
    out.put_slice(topic.as_bytes());
    out.put_slice(encoded_properties);
    out.put_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends an end-of-segment marker for `log_position` to `out`.
pub fn encode_end_of_segment(out: &mut Vec<u8>, log_position: u64) {
    let start = out.len();
    out.put_u32_le(HEADER_LEN as u32);
    out.put_u32_le(0);
    out.put_u8(RECORD_VERSION);
    out.put_u8(KIND_END_OF_SEGMENT);
    out.put_u16_le(0);
    out.put_u32_le(0);
    out.put_u64_le(log_position);
    out.put_bytes(0, HEADER_LEN - 24);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the frame at the start of `buf`, which was found at global `expected_position`.
/// Verifies length, CRC, version and position; never panics on arbitrary input.
pub fn decode_frame(buf: &Bytes, expected_position: u64) -> Result<Frame, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Truncated { needed: 4, available: buf.len() });
    }
    let len = u32_at(buf, 0);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if (len as usize) < HEADER_LEN {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Err(FrameError::Truncated { needed: len, available: buf.len() });
    }
    let b = &buf[..len];
    let stored = u32_at(b, 4);
    let computed = crc32c::crc32c(&b[8..]);
    if stored != computed {
        return Err(FrameError::Crc { stored, computed });
    }
    let version = b[8];
    if version != RECORD_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let position = u64_at(b, 16);
    if position != expected_position {
        return Err(FrameError::WrongPosition { found: position, expected: expected_position });
    }
    match b[9] {
        KIND_END_OF_SEGMENT => {
            if len != HEADER_LEN {
                return Err(FrameError::Inconsistent);
            }
            Ok(Frame::EndOfSegment)
        }
        KIND_MESSAGE => {
            let topic_len = u16_at(b, 10) as usize;
            let properties_len = u32_at(b, 52) as usize;
            let body_len = u32_at(b, 64) as usize;
            if record_len(topic_len, properties_len, body_len) != len {
                return Err(FrameError::Inconsistent);
            }
            let header = RecordHeader {
                queue_id: u32_at(b, 12),
                log_position: position,
                queue_offset: u64_at(b, 24),
                store_timestamp_ms: u64_at(b, 32) as i64,
                born_timestamp_ms: u64_at(b, 40) as i64,
                flags: u32_at(b, 48),
                tag_hash: u64_at(b, 56),
            };
            let topic_start = HEADER_LEN;
            let properties_start = topic_start + topic_len;
            let body_start = properties_start + properties_len;
            let topic = buf.slice(topic_start..properties_start);
            if std::str::from_utf8(&topic).is_err() {
                return Err(FrameError::TopicNotUtf8);
            }
            Ok(Frame::Message {
                header,
                topic,
                properties: buf.slice(properties_start..body_start),
                body: buf.slice(body_start..len),
                len,
            })
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Decodes a property block from a frame, mapping errors into [`FrameError`].
pub fn decode_properties(raw: Bytes) -> Result<Properties, FrameError> {
    Ok(Properties::decode(raw)?)
}

/// One queue-index entry: where the message with a given queue offset lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub log_position: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub store_timestamp_ms: i64,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut out = [0u8; INDEX_ENTRY_LEN];
        out[0..8].copy_from_slice(&self.log_position.to_le_bytes());
        out[8..12].copy_from_slice(&self.size.to_le_bytes());
        out[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        out[20..28].copy_from_slice(&self.store_timestamp_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` when the bytes are not a valid entry (never written, torn or corrupted).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < INDEX_ENTRY_LEN {
            return None;
        }
        if crc32c::crc32c(&b[..28]) != u32_at(b, 28) {
            return None;
        }
        Some(Self {
            log_position: u64_at(b, 0),
            size: u32_at(b, 8),
            tag_hash: u64_at(b, 12),
            store_timestamp_ms: u64_at(b, 20) as i64,
        })
    }
}

/// FNV-1a, 64 bit: a hash that is stable across Rust versions and platforms, which the
/// persisted key index needs (`std`'s `DefaultHasher` makes no such promise).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Key-index hash of a message id (`UNIQ_KEY`).
pub fn message_id_hash(message_id: &str) -> u64 {
    fnv1a(&[b"id", message_id.as_bytes()])
}

/// Key-index hash of one of a message's `KEYS` within its topic.
pub fn message_key_hash(topic: &str, key: &str) -> u64 {
    fnv1a(&[b"key", topic.as_bytes(), key.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn header(position: u64) -> RecordHeader {
        RecordHeader {
            queue_id: 3,
            log_position: position,
            queue_offset: 42,
            store_timestamp_ms: 1_700_000_000_000,
            born_timestamp_ms: 1_699_999_999_000,
            flags: 7,
            tag_hash: 0xdead_beef,
        }
    }

    fn encode(position: u64, topic: &str, props: &Properties, body: &[u8]) -> Vec<u8> {
        let mut p = BytesMut::new();
        props.encode(&mut p);
        let mut out = Vec::new();
        encode_record(&mut out, &header(position), topic, &p, body);
        out
    }

    #[test]
    fn zeroed_index_entry_is_absent() {
        assert_eq!(IndexEntry::decode(&[0u8; INDEX_ENTRY_LEN]), None);
    }

    #[test]
    fn zero_length_is_empty_and_end_of_segment_round_trips() {
        assert_eq!(decode_frame(&Bytes::from(vec![0u8; 100]), 0), Err(FrameError::Empty));
        let mut out = Vec::new();
        encode_end_of_segment(&mut out, 99);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(decode_frame(&Bytes::from(out.clone()), 99), Ok(Frame::EndOfSegment));
        assert!(matches!(decode_frame(&Bytes::from(out), 98), Err(FrameError::WrongPosition { .. })));
    }

    #[test]
    fn newer_version_is_reported_as_such() {
        let mut rec = encode(0, "t", &Properties::new(), b"x");
        rec[8] = 2;
        let crc = crc32c::crc32c(&rec[8..]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        let err = decode_frame(&Bytes::from(rec), 0).unwrap_err();
        assert!(err.is_unsupported_version());
    }

    #[test]
    fn hashes_are_stable() {
        // Persisted in key-index files: these values must never change.
        assert_eq!(message_id_hash("abc"), message_id_hash("abc"));
        assert_ne!(message_key_hash("ab", "c"), message_key_hash("a", "bc"));
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(message_id_hash("7F0000010001"), 1_410_462_389_604_990_133);
    }

    fn arb_props() -> impl Strategy<Value = Properties> {
        proptest::collection::vec(("[A-Z_]{1,12}", ".{0,30}"), 0..6).prop_map(|pairs| pairs.into_iter().collect())
    }

    proptest! {
        #[test]
        fn record_round_trips(
            position in any::<u64>(),
            topic in "[%|a-zA-Z0-9_-]{1,127}",
            props in arb_props(),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            queue_id in any::<u32>(),
            queue_offset in any::<u64>(),
            flags in any::<u32>(),
            tag_hash in any::<u64>(),
            store in any::<i64>(),
            born in any::<i64>(),
        ) {
            let h = RecordHeader {
                queue_id, log_position: position, queue_offset,
                store_timestamp_ms: store, born_timestamp_ms: born, flags, tag_hash,
            };
            let mut p = BytesMut::new();
            props.encode(&mut p);
            let mut out = Vec::new();
            encode_record(&mut out, &h, &topic, &p, &body);
            prop_assert_eq!(out.len(), record_len(topic.len(), p.len(), body.len()));
            // Trailing bytes after the record must not matter.
            out.extend_from_slice(&[0xAB; 17]);
            let frame = decode_frame(&Bytes::from(out), position).unwrap();
            match frame {
                Frame::Message { header, topic: t, properties, body: b, len } => {
                    prop_assert_eq!(header, h);
                    prop_assert_eq!(&t[..], topic.as_bytes());
                    prop_assert_eq!(decode_properties(properties).unwrap(), props);
                    prop_assert_eq!(&b[..], &body[..]);
                    prop_assert_eq!(len, record_len(topic.len(), p.len(), body.len()));
                }
                Frame::EndOfSegment => prop_assert!(false, "decoded a message as end of segment"),
            }
        }

        /// Cutting a record anywhere never yields a record.
        #[test]
        fn truncation_never_decodes(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            cut in any::<prop::sample::Index>(),
        ) {
            let rec = encode(1000, "topic", &Properties::new(), &body);
            let cut = cut.index(rec.len());
            let res = decode_frame(&Bytes::from(rec[..cut].to_vec()), 1000);
            prop_assert!(res.is_err());
        }

        /// Flipping any bit of a record is detected (CRC32C catches all 1-bit errors; the
        /// length field is covered because a changed length moves the CRC window).
        #[test]
        fn bit_flips_are_detected(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut rec = encode(77, "topic", &Properties::new(), &body);
            rec.extend_from_slice(&[0u8; 64]);
            let at = at.index(record_len(5, 2, body.len()));
            rec[at] ^= 1 << bit;
            prop_assert!(decode_frame(&Bytes::from(rec), 77).is_err());
        }

        /// Arbitrary bytes never panic, and whatever decodes is self-consistent.
        #[test]
        fn garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            position in any::<u64>(),
        ) {
            if let Ok(Frame::Message { len, topic, properties, body, .. }) =
                decode_frame(&Bytes::from(bytes.clone()), position)
            {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(HEADER_LEN + topic.len() + properties.len() + body.len(), len);
            }
        }

        #[test]
        fn index_entry_round_trips(
            log_position in any::<u64>(),
            size in any::<u32>(),
            tag_hash in any::<u64>(),
            store_timestamp_ms in any::<i64>(),
        ) {
            let e = IndexEntry { log_position, size, tag_hash, store_timestamp_ms };
            prop_assert_eq!(IndexEntry::decode(&e.encode()), Some(e));
        }

        #[test]
        fn index_entry_corruption_is_detected(
            log_position in any::<u64>(),
            size in any::<u32>(),
            at in 0usize..INDEX_ENTRY_LEN,
            bit in 0u8..8,
        ) {
            let e = IndexEntry { log_position, size, tag_hash: 1, store_timestamp_ms: 2 };
            let mut raw = e.encode();
            raw[at] ^= 1 << bit;
            prop_assert_eq!(IndexEntry::decode(&raw), None);
        }

        #[test]
        fn index_entry_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = IndexEntry::decode(&bytes);
        }
    }
}
