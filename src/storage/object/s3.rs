//! [`ObjectStore`] on AWS S3 or an S3-compatible server (MinIO, s3s-fs, moto), with aws-sdk-s3
//! over hyper 1 + rustls/ring. Responsible for: building the client from
//! `storage.tiering.objectStore` (endpoint, region, path-style, static credentials or the AWS
//! credential chain), single PUTs for small objects and bounded-parallel multipart uploads for
//! large ones (aborted on failure, so no partial object and no dangling upload is left), range
//! GETs with length checks, paged listings, and the classification of every SDK failure into
//! [`ObjectError::NotFound`] / [`ObjectError::Transient`] / [`ObjectError::Permanent`].
//! Secret keys are never logged ([`S3Store::describe`] names the bucket and endpoint only).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};

use super::{ObjectError, ObjectMeta, ObjectResult, ObjectStore};
use crate::config::ObjectStoreConfig;

/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// S3's smallest part (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Tuning of [`S3Store`]; the defaults suit AWS S3 and local servers alike.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Objects larger than this go up as multipart uploads.
    pub multipart_threshold: u64,
    /// Size of each part but the last (at least [`MIN_PART_SIZE`]; grown when an object would
    /// need more than 10 000 parts).
    pub part_size: u64,
    /// Parts of one object uploaded at once.
    pub upload_concurrency: usize,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt of a request without a large body; requests carrying or
    /// returning `n` bytes get `n / min_throughput` seconds more.
    pub request_timeout: Duration,
    /// Slowest transfer rate (bytes/s) accepted before a body transfer counts as stalled.
    pub min_throughput: u64,
    /// Attempts per request inside the SDK (1 = no SDK retry). Callers retry with backoff too.
    pub max_attempts: u32,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
            upload_concurrency: 4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            min_throughput: 1024 * 1024,
            max_attempts: 3,
        }
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix inside the bucket, empty or ending in `/`.
    prefix: String,
    opts: S3Options,
    described: String,
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Normalised key prefix: no leading `/`, a trailing `/` unless empty.
fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() { String::new() } else { format!("{p}/") }
}

impl S3Store {
    /// A store for `cfg` (type `s3`) with the default [`S3Options`].
    pub async fn connect(cfg: &ObjectStoreConfig) -> ObjectResult<S3Store> {
        S3Store::connect_with(cfg, S3Options::default()).await
    }

    /// A store for `cfg` (type `s3`). Nothing is sent to the server here: bad credentials or a
    /// missing bucket show up as [`ObjectError::Permanent`] on the first request.
    pub async fn connect_with(cfg: &ObjectStoreConfig, opts: S3Options) -> ObjectResult<S3Store> {
        let bad = |what: String| Err(ObjectError::Permanent(format!("storage.tiering.objectStore: {what}")));
        if cfg.bucket.is_empty() {
            return bad("bucket is required for type s3".into());
        }
        if cfg.access_key.is_empty() != cfg.secret_key.is_empty() {
            return bad("accessKey and secretKey must be set together".into());
        }
        if !cfg.endpoint.is_empty() && !is_http_url(&cfg.endpoint) {
            return bad(format!("endpoint `{}` must start with http:// or https://", cfg.endpoint));
        }
        if opts.upload_concurrency == 0 || opts.max_attempts == 0 || opts.min_throughput == 0 {
            return bad("upload concurrency, attempts and minimum throughput must be at least 1".into());
        }
        let opts = S3Options { part_size: opts.part_size.max(MIN_PART_SIZE), ..opts };

        // hyper 1 + rustls with ring, built by hand (the SDK's default client would pull aws-lc).
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(opts.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout)
                    .operation_attempt_timeout(opts.request_timeout)
                    .build(),
            );
        // Region from the config, else the loader's default chain (environment, profile, IMDS;
        // built with the HTTP client above), else us-east-1 (below).
        if !cfg.region.is_empty() {
            loader = loader.region(Region::new(cfg.region.clone()));
        }
        if !cfg.access_key.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                cfg.access_key.clone(),
                cfg.secret_key.clone(),
                None,
                None,
                "rmq-gateway-config",
            ));
        }
        let shared = loader.load().await;
        let region = shared.region().cloned().unwrap_or_else(|| Region::from_static("us-east-1"));
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared).region(region.clone()).force_path_style(cfg.path_style);
        if !cfg.endpoint.is_empty() {
            s3 = s3.endpoint_url(cfg.endpoint.clone());
        }
        let client = Client::from_conf(s3.build());
        let prefix = normalise_prefix(&cfg.prefix);
        let region_name = region.to_string();
        let described = if cfg.endpoint.is_empty() {
            format!("s3://{}/{prefix} (region {region_name})", cfg.bucket)
        } else {
            format!("s3://{}/{prefix} at {} (region {region_name})", cfg.bucket, cfg.endpoint)
        };
        Ok(S3Store { client, bucket: cfg.bucket.clone(), prefix, opts, described })
    }

    /// The SDK client (benchmarks measure the server's raw throughput with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full key in the bucket of `key`.
    pub fn full_key(&self, key: &str) -> ObjectResult<String> {
        if key.is_empty() || key.starts_with('/') {
            return Err(ObjectError::Permanent(format!("invalid object key `{key}`")));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// Attempt timeout for a request moving `bytes` bytes.
    fn timeout_for(&self, bytes: u64) -> Duration {
        self.opts.request_timeout + Duration::from_secs(bytes / self.opts.min_throughput)
    }

    fn timeout_override(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::new().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(self.opts.connect_timeout)
                .operation_attempt_timeout(self.timeout_for(bytes))
                .build(),
        )
    }

    async fn put_single(&self, full: &str, parts: Vec<Bytes>, total: u64) -> ObjectResult<()> {
        let body = concat(&parts, 0, total);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .content_length(total as i64)
            .body(ByteStream::from(body))
            .customize()
            .config_override(self.timeout_override(total))
            .send()
            .await
            .map_err(|e| classify("PutObject", full, e))?;
        Ok(())
    }

    async fn put_multipart(&self, full: &str, parts: Vec<Bytes>, total: u64) -> ObjectResult<()> {
        let part_size = self.opts.part_size.max(total.div_ceil(MAX_PARTS));
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| classify("CreateMultipartUpload", full, e))?;
        let Some(upload_id) = created.upload_id else {
            return Err(ObjectError::Permanent(format!("CreateMultipartUpload `{full}`: no upload id returned")));
        };
        let parts = Arc::new(parts);
        let count = total.div_ceil(part_size);
        let uploads = futures::stream::iter(0..count)
            .map(|i| {
                let parts = Arc::clone(&parts);
                let upload_id = upload_id.as_str();
                async move {
                    let start = i * part_size;
                    let len = part_size.min(total - start);
                    let body = concat(&parts, start, len);
                    let number = (i + 1) as i32;
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32)
                        .body(ByteStream::from(body))
                        .customize()
                        .config_override(self.timeout_override(len))
                        .send()
                        .await
                        .map_err(|e| classify("UploadPart", full, e))?;
                    Ok::<_, ObjectError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag)
                            .set_checksum_crc32(out.checksum_crc32)
                            .build(),
                    )
                }
            })
            .buffer_unordered(self.opts.upload_concurrency)
            .try_collect::<Vec<_>>()
            .await;
        let result = match uploads {
            Ok(mut done) => {
                done.sort_by_key(|p| p.part_number());
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                    .customize()
                    .config_override(self.timeout_override(total / 16))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify("CompleteMultipartUpload", full, e))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.abort(full, &upload_id, e).await;
        }
        result
    }

    /// Aborts a failed multipart upload so that no parts are left behind (several tries over a
    /// few seconds: the failure that got us here may still be going on). A bucket lifecycle rule
    /// (AbortIncompleteMultipartUpload) cleans up whatever an abort that never got through leaves.
    async fn abort(&self, full: &str, upload_id: &str, cause: &ObjectError) {
        // 200 ms, 400 ms, … 3.2 s apart: about 6 s in all, past a brief outage.
        const TRIES: u32 = 5;
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=TRIES {
            let sent =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(upload_id).send().await;
            match sent {
                Ok(_) => return,
                Err(e) => {
                    let err = classify("AbortMultipartUpload", full, e);
                    if let ObjectError::NotFound(_) = err {
                        return;
                    }
                    if attempt == TRIES {
                        tracing::warn!(key = full, upload_id, %cause, error = %err, "could not abort a failed multipart upload");
                        return;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// The length of an object (HeadObject).
    async fn size_of(&self, full: &str) -> ObjectResult<u64> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| classify("HeadObject", full, e))?;
        Ok(out.content_length.unwrap_or(0).max(0) as u64)
    }
}

/// Bytes `[start, start + len)` of the concatenation of `parts`: a slice (no copy) when they lie in
/// one part, else a copy.
fn concat(parts: &[Bytes], start: u64, len: u64) -> Bytes {
    let mut offset = 0u64;
    let mut out: Option<BytesMut> = None;
    let end = start + len;
    for part in parts {
        let (p_start, p_end) = (offset, offset + part.len() as u64);
        offset = p_end;
        if p_end <= start || p_start >= end {
            continue;
        }
        let from = (start.max(p_start) - p_start) as usize;
        let to = (end.min(p_end) - p_start) as usize;
        if out.is_none() && p_start <= start && p_end >= end {
            return part.slice(from..to);
        }
        out.get_or_insert_with(|| BytesMut::with_capacity(len as usize)).extend_from_slice(&part[from..to]);
    }
    out.map(BytesMut::freeze).unwrap_or_default()
}

/// The class of an SDK failure of `op` on `key`.
fn classify<E>(op: &str, key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let what = format!("{op} `{key}`: {}", DisplayErrorContext(&err));
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            classify_service(status.unwrap_or(0), code, what)
        }
        SdkError::TimeoutError(_) => ObjectError::Transient(what),
        SdkError::DispatchFailure(failure) if failure.is_user() => ObjectError::Permanent(what),
        SdkError::DispatchFailure(_) => ObjectError::Transient(what),
        // A response that could not be read or parsed: a broken connection or a proxy's error
        // page; only a server error is worth retrying.
        SdkError::ResponseError(_) => match status {
            Some(s) if s < 500 && s != 429 && s != 408 => ObjectError::Permanent(what),
            _ => ObjectError::Transient(what),
        },
        SdkError::ConstructionFailure(_) => ObjectError::Permanent(what),
        // `SdkError` is non-exhaustive: an unknown kind of failure is not assumed retryable.
        _ => ObjectError::Permanent(what),
    }
}

/// The class of an S3 error response (HTTP status and S3 error code).
fn classify_service(status: u16, code: &str, what: String) -> ObjectError {
    match code {
        "NoSuchKey" | "NotFound" => return ObjectError::NotFound(what),
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestTimeout"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeTooSkewed" => return ObjectError::Transient(what),
        "NoSuchBucket"
        | "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "InvalidRange"
        | "NoSuchUpload"
        | "InvalidBucketName"
        | "EntityTooSmall"
        | "InvalidPart" => {
            return ObjectError::Permanent(what);
        }
        _ => {}
    }
    match status {
        404 => ObjectError::NotFound(what),
        408 | 429 => ObjectError::Transient(what),
        s if s >= 500 => ObjectError::Transient(what),
        _ => ObjectError::Permanent(what),
    }
}

/// The object length from a `Content-Range: bytes a-b/total` header.
fn total_from_content_range(content_range: Option<&str>) -> Option<u64> {
    content_range?.rsplit('/').next()?.trim().parse().ok()
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, parts: Vec<Bytes>) -> ObjectResult<()> {
        let full = self.full_key(key)?;
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if total > self.opts.multipart_threshold {
            self.put_multipart(&full, parts, total).await
        } else {
            self.put_single(&full, parts, total).await
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> ObjectResult<Bytes> {
        let full = self.full_key(key)?;
        if range.start > range.end {
            return Err(ObjectError::Permanent(format!("invalid range {}..{} of `{full}`", range.start, range.end)));
        }
        let len = range.end - range.start;
        if len == 0 {
            // HTTP cannot ask for zero bytes; the object must exist and reach `start`.
            let size = self.size_of(&full).await?;
            if range.start > size {
                return Err(ObjectError::Permanent(format!(
                    "range {}..{} is outside object `{full}` of {size} bytes",
                    range.start, range.end
                )));
            }
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| classify("GetObject", &full, e))?;
        let object_len = total_from_content_range(out.content_range.as_deref());
        let body = tokio::time::timeout(self.timeout_for(len), out.body.collect())
            .await
            .map_err(|_| ObjectError::Transient(format!("GetObject `{full}`: body not received in time")))?
            .map_err(|e| ObjectError::Transient(format!("GetObject `{full}`: reading the body: {e}")))?
            .into_bytes();
        if body.len() as u64 == len && (object_len.is_some() || range.start == 0) {
            return Ok(body);
        }
        match object_len {
            // The server ignored the Range header and sent the whole object.
            None if body.len() as u64 >= range.end => Ok(body.slice(range.start as usize..range.end as usize)),
            None if (body.len() as u64) < range.end => Err(ObjectError::Permanent(format!(
                "range {}..{} is outside object `{full}` of {} bytes",
                range.start,
                range.end,
                body.len()
            ))),
            Some(size) if size < range.end => Err(ObjectError::Permanent(format!(
                "range {}..{} is outside object `{full}` of {size} bytes",
                range.start, range.end
            ))),
            _ => Err(ObjectError::Transient(format!(
                "GetObject `{full}`: {} bytes received for range {}..{}",
                body.len(),
                range.start,
                range.end
            ))),
        }
    }

    async fn delete(&self, key: &str) -> ObjectResult<()> {
        let full = self.full_key(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify("DeleteObject", &full, e) {
                ObjectError::NotFound(_) => Ok(()),
                err @ (ObjectError::Transient(_) | ObjectError::Permanent(_)) => Err(err),
            },
        }
    }

    async fn list(&self, prefix: &str) -> ObjectResult<Vec<ObjectMeta>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ListObjectsV2", &full_prefix, e))?;
            for object in page.contents.unwrap_or_default() {
                let Some(key) = object.key.as_deref().and_then(|k| k.strip_prefix(&self.prefix)) else { continue };
                out.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size.unwrap_or(0).max(0) as u64,
                    modified_ms: object.last_modified.and_then(|t| t.to_millis().ok()).unwrap_or(0),
                });
            }
            match page.next_continuation_token {
                Some(next) if page.is_truncated == Some(true) => token = Some(next),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn describe(&self) -> String {
        self.described.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_slices_and_copies() {
        let parts = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg"), Bytes::from_static(b"h")];
        assert_eq!(concat(&parts, 0, 8), Bytes::from_static(b"abcdefgh"));
        assert_eq!(concat(&parts, 3, 4), Bytes::from_static(b"defg"));
        assert_eq!(concat(&parts, 2, 3), Bytes::from_static(b"cde"));
        assert_eq!(concat(&parts, 7, 1), Bytes::from_static(b"h"));
        assert_eq!(concat(&parts, 0, 0), Bytes::new());
    }

    #[test]
    fn service_errors_are_classified() {
        let c = |status, code: &str| classify_service(status, code, String::new());
        assert!(matches!(c(503, "SlowDown"), ObjectError::Transient(_)));
        assert!(matches!(c(500, "InternalError"), ObjectError::Transient(_)));
        assert!(matches!(c(502, ""), ObjectError::Transient(_)));
        assert!(matches!(c(429, ""), ObjectError::Transient(_)));
        assert!(matches!(c(404, "NoSuchKey"), ObjectError::NotFound(_)));
        assert!(matches!(c(404, "NoSuchBucket"), ObjectError::Permanent(_)));
        assert!(matches!(c(403, "AccessDenied"), ObjectError::Permanent(_)));
        assert!(matches!(c(400, "InvalidArgument"), ObjectError::Permanent(_)));
        assert!(matches!(c(416, "InvalidRange"), ObjectError::Permanent(_)));
    }

    #[test]
    fn prefixes_and_content_ranges() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/a/b/"), "a/b/");
        assert_eq!(normalise_prefix("tier"), "tier/");
        assert_eq!(total_from_content_range(Some("bytes 10-19/15")), Some(15));
        assert_eq!(total_from_content_range(None), None);
    }
}
