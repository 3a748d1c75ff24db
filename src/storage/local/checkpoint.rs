//! The checkpoint file (`<dir>/checkpoint`): how far the derived data is durable, so recovery
//! replays only the log written since, and start-up time does not grow with the data size.
//!
//! Format (40 bytes, little endian):
//!
//! ```text
//!  0  8  magic "RMQCKPT\0"     8  4  version (1)      12  4  reserved (0)
//! 16  8  log_position: every record below it is fsynced and its queue-index entry is fsynced
//! 24  8  key_position: every key of a record below it is in a durable key-index run
//! 32  4  reserved (0)         36  4  crc32c of [0, 36)
//! ```
//!
//! Written atomically (temp file, fsync, rename, directory fsync). A missing file means "replay
//! from the start of the log"; an unreadable one is reported and treated the same way.

use std::io;
use std::path::Path;

use super::fs::write_file_atomically;

const MAGIC: &[u8; 8] = b"RMQCKPT\0";
const VERSION: u32 = 1;
const LEN: usize = 40;
pub const FILE_NAME: &str = "checkpoint";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_position: u64,
    pub key_position: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_position.to_le_bytes());
        b[24..32].copy_from_slice(&self.key_position.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() != LEN {
            return Err("wrong size");
        }
        if &b[..8] != MAGIC {
            return Err("bad magic");
        }
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[36..40]);
        if crc32c::crc32c(&b[..36]) != u32::from_le_bytes(crc) {
            return Err("crc mismatch");
        }
        let mut version = [0u8; 4];
        version.copy_from_slice(&b[8..12]);
        if u32::from_le_bytes(version) != VERSION {
            return Err("unsupported version");
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[16..24]);
        let log_position = u64::from_le_bytes(a);
        a.copy_from_slice(&b[24..32]);
        let key_position = u64::from_le_bytes(a);
        Ok(Self { log_position, key_position })
    }

    /// Reads the checkpoint in `dir`; `None` if there is none or it cannot be trusted.
    pub fn load(dir: &Path) -> io::Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => match Self::decode(&bytes) {
                Ok(c) => Ok(Some(c)),
                Err(reason) => {
                    tracing::warn!(file = %path.display(), reason, "ignoring unreadable checkpoint; replaying the whole log");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn store(&self, dir: &Path) -> io::Result<()> {
        write_file_atomically(&dir.join(FILE_NAME), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let c = Checkpoint { log_position: 1 << 33, key_position: 5 };
        c.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(c));
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
    }

    proptest! {
        #[test]
        fn round_trips_and_detects_flips(log in any::<u64>(), key in any::<u64>(), at in 0usize..LEN, bit in 0u8..8) {
            let c = Checkpoint { log_position: log, key_position: key };
            let mut b = c.encode();
            prop_assert_eq!(Checkpoint::decode(&b), Ok(c));
            b[at] ^= 1 << bit;
            // Reserved bytes are covered by the CRC too.
            prop_assert!(Checkpoint::decode(&b).is_err());
        }
    }
}
