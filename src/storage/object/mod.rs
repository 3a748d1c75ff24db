//! Object stores: where sealed log segments go when they are tiered ([`ObjectStore`]). Two
//! implementations share the contract: [`dir::DirStore`] (a local directory: `make run`, tests)
//! and the S3 client (`s3`, AWS S3 and S3-compatible servers).
//!
//! Contract of an `ObjectStore`:
//! - `put` stores the concatenation of `parts` under `key`, replacing any object there, and
//!   returns only once the whole object is durable and readable. A failed `put` leaves either
//!   nothing or a complete older object under the key, never a partial one (large objects go
//!   up as multipart uploads, aborted on failure).
//! - `get_range` returns exactly the bytes `[range.start, range.end)` of the object, or an
//!   error; a range past the end of the object is [`ObjectError::Permanent`].
//! - `delete` of a missing key succeeds (deletes are retried after crashes).
//! - `list` returns every object whose key starts with `prefix`, in key order.
//! - [`ObjectError::Transient`] (timeouts, throttling, 5xx, connection failures) is worth
//!   retrying with backoff; the callers (the tiering tasks) do that and never treat it as fatal.
//!
//! This module must not import protocol (tonic/prost), HTTP-server or SQL crates.

pub mod dir;
pub mod s3;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::ObjectStoreConfig;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Last modification, in milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No object under the key.
    #[error("object `{0}` not found")]
    NotFound(String),
    /// Worth retrying: timeouts, throttling (503 SlowDown), server errors, connection failures.
    #[error("object store temporarily unavailable: {0}")]
    Transient(String),
    /// Retrying will not help: bad credentials, missing bucket, invalid range, local I/O errors
    /// that are not about availability.
    #[error("object store request failed: {0}")]
    Permanent(String),
}

pub type ObjectResult<T> = Result<T, ObjectError>;

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores the concatenation of `parts` under `key` (see the module contract).
    async fn put(&self, key: &str, parts: Vec<Bytes>) -> ObjectResult<()>;
    /// Bytes `[range.start, range.end)` of the object under `key`.
    async fn get_range(&self, key: &str, range: Range<u64>) -> ObjectResult<Bytes>;
    /// Deletes the object under `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> ObjectResult<()>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> ObjectResult<Vec<ObjectMeta>>;
    /// Where the objects go, for logs and readiness (`s3://bucket/prefix`, `file:///dir`).
    fn describe(&self) -> String;
}

/// The object store `cfg` names: `dir` (`cfg.dir`, default `<data_dir>/objects`, with `cfg.prefix`
/// as a subdirectory) or `s3`. Bad configuration is [`ObjectError::Permanent`] with the key at
/// fault; nothing is sent to an S3 server here.
pub async fn open(cfg: &ObjectStoreConfig, data_dir: &Path) -> ObjectResult<Arc<dyn ObjectStore>> {
    match cfg.kind.as_str() {
        "dir" => {
            let root = if cfg.dir.as_os_str().is_empty() { data_dir.join("objects") } else { cfg.dir.clone() };
            let prefix = cfg.prefix.trim_matches('/');
            let root = if prefix.is_empty() { root } else { root.join(prefix) };
            Ok(Arc::new(dir::DirStore::open(root)?))
        }
        "s3" => Ok(Arc::new(s3::S3Store::connect(cfg).await?)),
        other => Err(ObjectError::Permanent(format!(
            "storage.tiering.objectStore.type: `{other}` is not an object store type (dir or s3)"
        ))),
    }
}
