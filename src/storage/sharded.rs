//! [`ShardedLog`]: the [`MessageLog`] the broker sees in cluster mode. It dispatches every call
//! to the node's home log (its own system queues, `rmq_sys_*` topics) or to the log of the
//! queue's shard ([`cluster::shard_of`]), and opens and closes shard logs as leases come and
//! go:
//!
//! - A shard log is a [`CommitLog`] in `<dir>/shard-NNNN/` wrapped in a [`TieredLog`] with
//!   `log_id` [`cluster::shard_log_id`], tiered to the shared bucket, whose manifest writes are
//!   fenced with this node's lease epoch.
//! - **Take-over** ([`ShardedLog::open_shard`]): a local directory whose `EPOCH` file names the
//!   epoch just before the new one was this node's own log a moment ago and is kept (unless
//!   the manifest reaches past it); any other one is wiped and the log *resumes* from the
//!   manifest: its first segment starts at the segment boundary after the last manifest row,
//!   each queue continues at its manifest end offset, and older data is read from the object
//!   store. (Starting at the *next* boundary keeps the new owner's object keys clear of a
//!   previous owner's upload still in flight into the segment it was writing.)
//! - **Salvage**: a directory of this node's from an earlier epoch (it lost the shard to a
//!   crash or a partition, another node owned it since) may hold messages it acknowledged but
//!   never uploaded. The directory is moved aside (`shard-NNNN.stale`), the records past what
//!   the manifest covers of it are appended again to the resumed log (new offsets), and only
//!   then is it deleted (a salvage cut short by a crash resumes at the next open), so a `local`
//!   durability topic loses nothing a node acknowledged as long as its disk comes back.
//! - **Hand-over** ([`ShardedLog::close_shard`]): refuse new appends (`NotOwner`), wait for the
//!   appends in flight, upload the whole tail, close. **Lease lost**
//!   ([`ShardedLog::abandon_shard`]): refuse at once, stop uploads, close.
//! - **Positions**: a shard log's positions carry `shard + 1` in their top 12 bits (home log
//!   positions are left as they are), so `hold_retention` and `persist_remote` route by them.
//! - Appends and reads of a queue whose shard is not open here fail with
//!   [`StorageError::NotOwner`]; `queue_range` of such a queue is empty. Appends also fail so
//!   once the shard's local lease deadline ([`ShardedLog::set_lease_deadline`]) has passed.
//!
//! This module must not import protocol (tonic/prost), HTTP or SQL crates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;

use super::object::ObjectStore;
use super::tiered::{TieredLog, TieringSettings, TieringStats};
use super::{
    AppendMessage, AppendResult, CommitLog, MessageLog, QueueRange, ResumePoint, ResumeQueue, StorageConfig,
    StorageError, StorageResult, StoredMessage,
};
use crate::cluster::{self, ShardId};
use crate::metadata::{Fence, MetadataStore, SegmentRecord};

/// Topics with this prefix are the node's own system queues: always in the home log.
pub const SYSTEM_TOPIC_PREFIX: &str = "rmq_sys_";
/// Shard log positions keep the shard (plus one) above this bit.
const SHARD_SHIFT: u32 = 52;
const LOCAL_MASK: u64 = (1 << SHARD_SHIFT) - 1;
/// The file in a shard directory naming the lease epoch its log was last opened under.
const EPOCH_FILE: &str = "EPOCH";
/// How long `close` gives each shard's graceful hand-over before abandoning it.
const CLOSE_HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The position the broker sees for `local` of shard `shard`'s log.
pub fn shard_position(shard: ShardId, local: u64) -> u64 {
    ((u64::from(shard) + 1) << SHARD_SHIFT) | (local & LOCAL_MASK)
}

/// Which log a position belongs to (`None`: the home log) and its position in that log.
pub fn split_position(position: u64) -> (Option<ShardId>, u64) {
    match position >> SHARD_SHIFT {
        0 => (None, position),
        n => (Some((n - 1) as ShardId), position & LOCAL_MASK),
    }
}

/// What a [`ShardedLog`] is built from.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// Number of shards (`cluster.shards`).
    pub shards: u32,
    /// Parent of the shard directories (`<dataDir>/shards`).
    pub dir: PathBuf,
    /// Template of every shard's commit log (`dir` and `resume` are set per shard).
    pub storage: StorageConfig,
    /// Template of every shard's tiering (`log_id` and `fence` are set per shard; set
    /// `tail_upload_interval` here).
    pub tiering: TieringSettings,
    /// This node (named in the fence of every manifest write).
    pub node_id: String,
}

/// Figures of one open shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: ShardId,
    pub epoch: i64,
    /// Still taking appends (not being handed over).
    pub accepting: bool,
    /// Appends in flight.
    pub inflight: u64,
    /// Local positions: what is published, and what of it is in the manifest.
    pub published_position: u64,
    pub covered_position: u64,
    pub fenced: bool,
    pub tiering: TieringStats,
}

/// A dead node's home log, opened read-only from the object store
/// ([`ShardedLog::open_foreign_home`]).
pub struct ForeignHome {
    log: Arc<TieredLog>,
    dir: PathBuf,
}

impl ForeignHome {
    pub fn log(&self) -> &dyn MessageLog {
        &*self.log
    }

    /// Closes it and deletes its local directory.
    pub async fn close(self) {
        if let Err(e) = self.log.close().await {
            tracing::warn!(error = %e, "closing an adopted home log failed");
        }
        let dir = self.dir.clone();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(dir = %self.dir.display(), error = %e, "cannot delete an adoption directory"),
            Err(e) => tracing::warn!(error = %e, "deleting an adoption directory panicked"),
        }
    }
}

/// Where a queue's messages live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Home,
    Shard(ShardId),
}

struct OpenShard {
    log: Arc<TieredLog>,
    epoch: i64,
    accepting: AtomicBool,
    inflight: AtomicU64,
    /// Appends are refused from this instant on (the local lease deadline), if set.
    deadline: Mutex<Option<std::time::Instant>>,
}

impl OpenShard {
    fn past_deadline(&self) -> bool {
        self.deadline.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|d| std::time::Instant::now() >= d)
    }
}

/// Counts an append in flight on a shard while alive.
struct Inflight<'a>(&'a OpenShard);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The message log of a cluster node: its home log plus the shards it owns. Build with
/// [`ShardedLog::new`].
pub struct ShardedLog {
    home: Arc<dyn MessageLog>,
    /// The home log's remote tier, when it has one: its tail goes up at close.
    home_tiered: Option<Arc<TieredLog>>,
    store: Arc<dyn ObjectStore>,
    meta: Arc<dyn MetadataStore>,
    settings: ShardSettings,
    shards: RwLock<HashMap<ShardId, Arc<OpenShard>>>,
    /// Opening and closing a shard, one at a time per shard.
    transitions: Mutex<HashMap<ShardId, Arc<tokio::sync::Mutex<()>>>>,
    /// Which log each retention holder holds.
    holds: Mutex<HashMap<&'static str, Target>>,
}

impl std::fmt::Debug for ShardedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedLog").field("dir", &self.settings.dir).field("open", &self.open_shards()).finish()
    }
}

fn not_owner(topic: &str, queue_id: u32) -> StorageError {
    StorageError::NotOwner { topic: topic.to_string(), queue_id }
}

fn io(context: impl Into<String>, source: std::io::Error) -> StorageError {
    StorageError::Io { context: context.into(), source }
}

/// Where a log taking a shard over from the manifest starts: at the segment boundary after the
/// manifest's end (0 for a shard never written), each queue at its manifest end offset.
pub fn resume_point(rows: &[SegmentRecord], segment_size: u64, epoch: i64) -> ResumePoint {
    let end = rows.iter().map(|r| r.base + r.size).max().unwrap_or(0);
    let position =
        if rows.is_empty() && epoch <= 1 { 0 } else { (end / segment_size.max(1)).saturating_add(1) * segment_size };
    let mut queues: HashMap<(&str, u32), u64> = HashMap::new();
    for q in rows.iter().flat_map(|r| &r.queues) {
        let e = queues.entry((q.topic.as_str(), q.queue_id)).or_default();
        *e = (*e).max(q.end_offset);
    }
    let mut queues: Vec<ResumeQueue> = queues
        .into_iter()
        .map(|((topic, queue_id), next_offset)| ResumeQueue { topic: topic.to_string(), queue_id, next_offset })
        .collect();
    queues.sort_by(|a, b| (&a.topic, a.queue_id).cmp(&(&b.topic, b.queue_id)));
    ResumePoint { position, queues }
}

/// Makes `dir` an empty directory (deleting what it held), off the async threads.
async fn empty_dir(dir: &Path, what: &str) -> StorageResult<()> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)
    })
    .await
    .map_err(|e| io(format!("{what} {}", dir.display()), std::io::Error::other(e.to_string())))?
    .map_err(|e| io(format!("{what} {}", dir.display()), e))
}

fn read_epoch(dir: &Path) -> Option<i64> {
    std::fs::read_to_string(dir.join(EPOCH_FILE)).ok()?.trim().parse().ok()
}

fn write_epoch(dir: &Path, epoch: i64) -> std::io::Result<()> {
    super::local::write_file_atomically(&dir.join(EPOCH_FILE), epoch.to_string().as_bytes())
}

impl ShardedLog {
    pub fn new(
        home: Arc<dyn MessageLog>,
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn MetadataStore>,
        settings: ShardSettings,
    ) -> Arc<ShardedLog> {
        ShardedLog::build(home, None, store, meta, settings)
    }

    /// [`ShardedLog::new`] with a tiered home log, whose tail is uploaded at close (a node
    /// leaving for good leaves its scheduled and half messages to the node that adopts them).
    pub fn with_tiered_home(
        home: Arc<TieredLog>,
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn MetadataStore>,
        settings: ShardSettings,
    ) -> Arc<ShardedLog> {
        ShardedLog::build(home.clone(), Some(home), store, meta, settings)
    }

    fn build(
        home: Arc<dyn MessageLog>,
        home_tiered: Option<Arc<TieredLog>>,
        store: Arc<dyn ObjectStore>,
        meta: Arc<dyn MetadataStore>,
        settings: ShardSettings,
    ) -> Arc<ShardedLog> {
        Arc::new(ShardedLog {
            home,
            home_tiered,
            store,
            meta,
            settings,
            shards: RwLock::new(HashMap::new()),
            transitions: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
        })
    }

    fn transition(&self, shard: ShardId) -> Arc<tokio::sync::Mutex<()>> {
        self.transitions.lock().unwrap_or_else(|e| e.into_inner()).entry(shard).or_default().clone()
    }

    fn shard_dir(&self, shard: ShardId) -> PathBuf {
        self.settings.dir.join(format!("shard-{shard:04}"))
    }

    fn target(&self, topic: &str, queue_id: u32) -> Target {
        if topic.starts_with(SYSTEM_TOPIC_PREFIX) {
            Target::Home
        } else {
            Target::Shard(cluster::shard_of(topic, queue_id, self.settings.shards))
        }
    }

    fn shard(&self, shard: ShardId) -> Option<Arc<OpenShard>> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).get(&shard).cloned()
    }

    fn all_open(&self) -> Vec<(ShardId, Arc<OpenShard>)> {
        let mut v: Vec<_> =
            self.shards.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Whether the shard's log is open here (it may be refusing appends while handed over).
    pub fn is_open(&self, shard: ShardId) -> bool {
        self.shard(shard).is_some()
    }

    /// The shards open here, in order.
    pub fn open_shards(&self) -> Vec<ShardId> {
        self.all_open().into_iter().map(|(k, _)| k).collect()
    }

    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.all_open()
            .into_iter()
            .map(|(shard, s)| ShardStats {
                shard,
                epoch: s.epoch,
                accepting: s.accepting.load(Ordering::Acquire),
                inflight: s.inflight.load(Ordering::Acquire),
                published_position: s.log.local().published_position(),
                covered_position: s.log.covered_position(),
                fenced: s.log.is_fenced(),
                tiering: s.log.stats(),
            })
            .collect()
    }

    /// Opens the shard's log under lease `epoch` (a take-over, see the module docs). Opening a
    /// shard already open under another epoch hands it over to itself first.
    pub async fn open_shard(&self, shard: ShardId, epoch: i64) -> StorageResult<()> {
        if shard >= self.settings.shards {
            return Err(StorageError::Io {
                context: format!("opening shard {shard}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("there are only {} shards", self.settings.shards),
                ),
            });
        }
        let _one = self.transition(shard).lock_owned().await;
        if let Some(open) = self.shard(shard) {
            if open.epoch == epoch {
                return Ok(());
            }
            self.close_open(shard, &open, true).await?;
        }
        let log_id = cluster::shard_log_id(shard);
        let rows = self
            .meta
            .list_segments(&log_id)
            .await
            .map_err(|e| StorageError::Remote(format!("listing the manifest of {log_id}: {e}")))?;
        let manifest_end = rows.iter().map(|r| r.base + r.size).max().unwrap_or(0);
        let dir = self.shard_dir(shard);
        let previous = read_epoch(&dir);
        let mut keep = previous == Some(epoch - 1);
        let mut local = None;
        if keep {
            let log = self.open_local(&dir, None).await?;
            if log.published_position() < manifest_end {
                tracing::warn!(
                    shard,
                    local_end = log.published_position(),
                    manifest_end,
                    "the local log of the shard is behind its manifest (a lost local tail); resuming from the manifest"
                );
                log.close().await?;
                keep = false;
            } else {
                local = Some(log);
            }
        }
        // A directory of ours from an earlier epoch that another node took over since: what
        // this node acknowledged there but never brought to the object store (a crash or a
        // partition before its tail upload) is published again below, not dropped.
        // The directory is moved aside first and deleted only once its messages are appended
        // again (durably) to the new log; a salvage cut short by a crash resumes at the next
        // open (some of its messages may then be published twice: at least once).
        let stale = self.settings.dir.join(format!("shard-{shard:04}.stale"));
        if local.is_none() && previous.is_some() && dir.exists() && !stale.exists() {
            let (from, to) = (dir.clone(), stale.clone());
            tokio::task::spawn_blocking(move || std::fs::rename(from, to))
                .await
                .map_err(|e| io("moving a stale shard directory", std::io::Error::other(e.to_string())))?
                .map_err(|e| io(format!("moving {} aside", dir.display()), e))?;
        }
        let salvaged = if stale.exists() { self.salvage(shard, &stale, &rows).await } else { Vec::new() };
        let local = match local {
            Some(l) => l,
            None => {
                let resume = resume_point(&rows, self.settings.storage.segment_size, epoch);
                empty_dir(&dir, "wiping").await?;
                self.open_local(&dir, Some(resume)).await?
            }
        };
        let d = dir.clone();
        tokio::task::spawn_blocking(move || write_epoch(&d, epoch))
            .await
            .map_err(|e| io("writing the shard epoch", std::io::Error::other(e.to_string())))?
            .map_err(|e| io(format!("writing {}", dir.join(EPOCH_FILE).display()), e))?;
        let tiering = TieringSettings {
            log_id: log_id.clone(),
            fence: Some(Fence { node_id: self.settings.node_id.clone(), epoch }),
            ..self.settings.tiering.clone()
        };
        let log = match TieredLog::open(local.clone(), self.store.clone(), self.meta.clone(), tiering).await {
            Ok(log) => log,
            Err(e) => {
                let _ = local.close().await;
                return Err(e);
            }
        };
        if !salvaged.is_empty() {
            let n = salvaged.len();
            for batch in salvaged.chunks(256) {
                if let Err(e) = log.append(batch.to_vec()).await {
                    let _ = log.close().await;
                    return Err(e);
                }
            }
            tracing::warn!(
                shard,
                epoch,
                previous_epoch = ?previous,
                messages = n,
                "published again the messages this node had acknowledged in an earlier epoch of the shard \
                 but never uploaded (at new offsets; consumers may see some twice)"
            );
        }
        if stale.exists() {
            let d = stale.clone();
            match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(shard, dir = %stale.display(), error = %e, "cannot delete a salvaged shard directory")
                }
                Err(e) => tracing::warn!(shard, error = %e, "deleting a salvaged shard directory panicked"),
            }
        }
        tracing::info!(
            shard,
            epoch,
            kept_local_dir = keep,
            previous_epoch = ?previous,
            start = local.log_start(),
            manifest_rows = rows.len(),
            "shard opened"
        );
        let open = Arc::new(OpenShard {
            log,
            epoch,
            accepting: AtomicBool::new(true),
            inflight: AtomicU64::new(0),
            deadline: Mutex::new(None),
        });
        self.shards.write().unwrap_or_else(|e| e.into_inner()).insert(shard, open);
        Ok(())
    }

    /// The messages of a stale local directory of `shard` (from an earlier epoch of this
    /// node) that lie past what the manifest covers of it: acknowledged by this node, never
    /// uploaded, unknown to the owners since. Best effort: a directory that cannot be read
    /// yields what could be read, with a warning.
    async fn salvage(&self, shard: ShardId, dir: &Path, rows: &[SegmentRecord]) -> Vec<AppendMessage> {
        let log = match self.open_local(dir, None).await {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot open the stale shard directory to salvage it");
                return Vec::new();
            }
        };
        let end = log.published_position();
        let covered = rows.iter().filter(|r| r.base < end).map(|r| r.base + r.size).max().unwrap_or(0);
        let mut out = Vec::new();
        let mut pos = covered.max(log.log_start());
        while pos < end {
            let Some((_, seg_end, _)) = log.segment_span(pos) else { break };
            match log.scan_range(pos, end) {
                Ok(Some(scan)) => {
                    for r in &scan.records {
                        let at = (r.log_position - scan.base) as usize;
                        match super::local::decode_message(&scan.data.slice(at..), r.log_position) {
                            Ok(m) => out.push(AppendMessage {
                                topic: m.topic,
                                queue_id: m.queue_id,
                                born_timestamp_ms: m.born_timestamp_ms,
                                flags: m.flags,
                                tag_hash: m.tag_hash,
                                properties: m.properties,
                                body: m.body,
                            }),
                            Err(e) => {
                                tracing::warn!(shard, position = r.log_position, error = %e, "unreadable record in a stale shard directory skipped")
                            }
                        }
                    }
                    let next = scan.base + scan.data.len() as u64;
                    pos = if next > pos { next } else { seg_end };
                    if pos < seg_end && scan.records.is_empty() {
                        pos = seg_end;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(shard, position = pos, error = %e, "salvaging a stale shard directory stopped early");
                    break;
                }
            }
        }
        if let Err(e) = log.close().await {
            tracing::warn!(shard, error = %e, "closing the stale shard directory failed");
        }
        out
    }

    /// Opens dead node `node_id`'s home log from its manifest and the object store, to read
    /// (adoption): an empty local log in `<dir>/adopt-<node>` that continues past the
    /// manifest, so every read goes to the bucket. Nothing is appended to it.
    pub async fn open_foreign_home(&self, node_id: &str) -> StorageResult<ForeignHome> {
        let log_id = cluster::home_log_id(node_id);
        let rows = self
            .meta
            .list_segments(&log_id)
            .await
            .map_err(|e| StorageError::Remote(format!("listing the manifest of {log_id}: {e}")))?;
        let dir = self.settings.dir.join(format!("adopt-{node_id}"));
        empty_dir(&dir, "preparing").await?;
        // Any epoch above 1: start past the manifest even when it is empty.
        let local = self.open_local(&dir, Some(resume_point(&rows, self.settings.storage.segment_size, 2))).await?;
        let tiering = TieringSettings {
            log_id,
            fence: None,
            tail_upload_interval: None,
            read_only: true,
            ..self.settings.tiering.clone()
        };
        match TieredLog::open(local.clone(), self.store.clone(), self.meta.clone(), tiering).await {
            Ok(log) => Ok(ForeignHome { log, dir }),
            Err(e) => {
                let _ = local.close().await;
                Err(e)
            }
        }
    }

    async fn open_local(&self, dir: &Path, resume: Option<ResumePoint>) -> StorageResult<Arc<CommitLog>> {
        let config = StorageConfig { dir: dir.to_path_buf(), resume, ..self.settings.storage.clone() };
        tokio::task::spawn_blocking(move || CommitLog::open(config))
            .await
            .map_err(|e| io("opening a shard log", std::io::Error::other(e.to_string())))?
    }

    /// Appends to the shard are refused (`NotOwner`) from `deadline` on, until it is moved:
    /// the membership loop sets it to the local lease deadline at every renewal, so a node
    /// whose renewals stop stops writing before any other node may take the shard, even if
    /// `abandon_shard` comes late. `None`: no deadline. An append already past the check
    /// completes.
    pub fn set_lease_deadline(&self, shard: ShardId, deadline: Option<std::time::Instant>) {
        if let Some(open) = self.shard(shard) {
            *open.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        }
    }

    /// Graceful hand-over: refuses new appends (`NotOwner`), waits for the appends in flight,
    /// uploads the whole tail (fenced), then closes the shard's log. Reads are served until
    /// the tail is up. An error (fenced, closing) means the tail may not all be in the object
    /// store; the log is closed anyway.
    pub async fn close_shard(&self, shard: ShardId) -> StorageResult<()> {
        let _one = self.transition(shard).lock_owned().await;
        let Some(open) = self.shard(shard) else { return Ok(()) };
        self.close_open(shard, &open, true).await
    }

    /// The lease was lost: refuses appends at once, stops uploads, closes the shard's log.
    pub async fn abandon_shard(&self, shard: ShardId) -> StorageResult<()> {
        let Some(open) = self.shard(shard) else { return Ok(()) };
        open.accepting.store(false, Ordering::SeqCst);
        // At once, even if an open or hand-over of the shard holds the transition lock.
        open.log.halt();
        let _one = self.transition(shard).lock_owned().await;
        self.close_open(shard, &open, false).await
    }

    async fn close_open(&self, shard: ShardId, open: &Arc<OpenShard>, graceful: bool) -> StorageResult<()> {
        open.accepting.store(false, Ordering::SeqCst);
        let mut uploaded = Ok(());
        if graceful {
            while open.inflight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            uploaded = open.log.upload_all().await;
        }
        {
            let mut shards = self.shards.write().unwrap_or_else(|e| e.into_inner());
            if shards.get(&shard).is_some_and(|s| Arc::ptr_eq(s, open)) {
                shards.remove(&shard);
            }
        }
        let closed = if graceful { open.log.close().await } else { open.log.abandon().await };
        tracing::info!(shard, epoch = open.epoch, graceful, tail_uploaded = uploaded.is_ok(), "shard closed");
        uploaded.and(closed)
    }

    async fn append_to_shard(&self, shard: ShardId, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        let refuse =
            |m: &[AppendMessage]| m.first().map_or_else(|| not_owner("", 0), |m| not_owner(&m.topic, m.queue_id));
        let Some(open) = self.shard(shard) else { return Err(refuse(&messages)) };
        if !open.accepting.load(Ordering::Acquire) || open.past_deadline() {
            return Err(refuse(&messages));
        }
        // SeqCst with the hand-over's store of `accepting` and load of `inflight`: either it
        // sees this append in flight and waits for it, or this append sees it and refuses.
        open.inflight.fetch_add(1, Ordering::SeqCst);
        let _inflight = Inflight(&open);
        if !open.accepting.load(Ordering::SeqCst) {
            return Err(refuse(&messages));
        }
        let mut results = open.log.append(messages).await?;
        for r in &mut results {
            r.log_position = shard_position(shard, r.log_position);
        }
        Ok(results)
    }

    fn shard_for_read(&self, topic: &str, queue_id: u32) -> StorageResult<Option<(ShardId, Arc<OpenShard>)>> {
        match self.target(topic, queue_id) {
            Target::Home => Ok(None),
            Target::Shard(s) => self.shard(s).map(|o| Some((s, o))).ok_or_else(|| not_owner(topic, queue_id)),
        }
    }

    fn translated(shard: ShardId, mut messages: Vec<StoredMessage>) -> Vec<StoredMessage> {
        for m in &mut messages {
            m.log_position = shard_position(shard, m.log_position);
        }
        messages
    }

    /// Every open log (home first), with the shard its positions belong to.
    fn every_log(&self) -> Vec<(Option<ShardId>, Arc<dyn MessageLog>)> {
        let mut v: Vec<(Option<ShardId>, Arc<dyn MessageLog>)> = vec![(None, self.home.clone())];
        for (s, open) in self.all_open() {
            v.push((Some(s), open.log.clone()));
        }
        v
    }
}

#[async_trait]
impl MessageLog for ShardedLog {
    /// Splits the batch by log and appends the parts concurrently. All-or-nothing per log
    /// only: when one part fails the call fails, but parts stored in other logs stay stored
    /// (a retried send may then duplicate them: at-least-once).
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        let n = messages.len();
        let mut groups: Vec<(Target, Vec<usize>, Vec<AppendMessage>)> = Vec::new();
        for (i, m) in messages.into_iter().enumerate() {
            let t = self.target(&m.topic, m.queue_id);
            match groups.iter_mut().find(|g| g.0 == t) {
                Some(g) => {
                    g.1.push(i);
                    g.2.push(m);
                }
                None => groups.push((t, vec![i], vec![m])),
            }
        }
        if groups.len() == 1
            && let Some((t, _, msgs)) = groups.pop()
        {
            return match t {
                Target::Home => self.home.append(msgs).await,
                Target::Shard(s) => self.append_to_shard(s, msgs).await,
            };
        }
        let (indexes, futures): (Vec<Vec<usize>>, Vec<_>) = groups
            .into_iter()
            .map(|(t, idx, msgs)| {
                let fut = async move {
                    match t {
                        Target::Home => self.home.append(msgs).await,
                        Target::Shard(s) => self.append_to_shard(s, msgs).await,
                    }
                };
                (idx, fut)
            })
            .unzip();
        let outcomes = futures::future::join_all(futures).await;
        let mut out: Vec<Option<AppendResult>> = vec![None; n];
        for (idx, outcome) in indexes.into_iter().zip(outcomes) {
            for (i, r) in idx.into_iter().zip(outcome?) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                r.ok_or_else(|| StorageError::Corrupted { position: 0, reason: "an append result is missing".into() })
            })
            .collect()
    }

    /// System topics (the consumer journal) live in the home log: answered once written
    /// there. Anything bound for a shard waits for its sync as with `append`.
    async fn append_written(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        if messages.iter().all(|m| self.target(&m.topic, m.queue_id) == Target::Home) {
            return self.home.append_written(messages).await;
        }
        self.append(messages).await
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        match self.shard_for_read(topic, queue_id)? {
            None => self.home.read(topic, queue_id, offset, max_messages, max_bytes),
            Some((s, open)) => {
                Ok(Self::translated(s, open.log.read(topic, queue_id, offset, max_messages, max_bytes)?))
            }
        }
    }

    fn tag_hashes(&self, topic: &str, queue_id: u32, offset: u64, max: usize) -> StorageResult<Vec<(u64, u64)>> {
        match self.shard_for_read(topic, queue_id)? {
            None => self.home.tag_hashes(topic, queue_id, offset, max),
            Some((_, open)) => open.log.tag_hashes(topic, queue_id, offset, max),
        }
    }

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        match self.shard_for_read(topic, queue_id) {
            Ok(None) => self.home.queue_range(topic, queue_id),
            Ok(Some((_, open))) => open.log.queue_range(topic, queue_id),
            Err(_) => QueueRange::default(),
        }
    }

    fn find_by_message_id(&self, message_id: &str) -> StorageResult<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for (shard, log) in self.every_log() {
            let found = log.find_by_message_id(message_id)?;
            out.extend(match shard {
                Some(s) => Self::translated(s, found),
                None => found,
            });
        }
        Ok(out)
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        let mut out = Vec::new();
        for (shard, log) in self.every_log() {
            let found = log.find_by_key(topic, key, max)?;
            out.extend(match shard {
                Some(s) => Self::translated(s, found),
                None => found,
            });
        }
        out.sort_by_key(|m| m.store_timestamp_ms);
        let skip = out.len().saturating_sub(max);
        Ok(out.split_off(skip))
    }

    fn hold_retention(&self, holder: &'static str, position: Option<u64>) {
        let target = position.map(|p| match split_position(p) {
            (None, local) => (Target::Home, local),
            (Some(s), local) => (Target::Shard(s), local),
        });
        let previous = {
            let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
            match target {
                Some((t, _)) => holds.insert(holder, t),
                None => holds.remove(holder),
            }
        };
        let log_of = |t: Target| -> Option<Arc<dyn MessageLog>> {
            match t {
                Target::Home => Some(self.home.clone()),
                Target::Shard(s) => self.shard(s).map(|o| o.log.clone() as Arc<dyn MessageLog>),
            }
        };
        if let Some(prev) = previous
            && target.is_none_or(|(t, _)| t != prev)
            && let Some(log) = log_of(prev)
        {
            log.hold_retention(holder, None);
        }
        if let Some((t, local)) = target {
            match log_of(t) {
                Some(log) => log.hold_retention(holder, Some(local)),
                None => tracing::debug!(holder, ?t, "retention hold on a shard not open here ignored"),
            }
        }
    }

    async fn fetch_remote(&self, topic: &str, queue_id: u32, offset: u64, max_bytes: usize) -> StorageResult<()> {
        match self.shard_for_read(topic, queue_id)? {
            None => self.home.fetch_remote(topic, queue_id, offset, max_bytes).await,
            Some((_, open)) => open.log.fetch_remote(topic, queue_id, offset, max_bytes).await,
        }
    }

    async fn persist_remote(&self, results: &[AppendResult]) -> StorageResult<()> {
        let mut by_log: HashMap<Option<ShardId>, Vec<AppendResult>> = HashMap::new();
        for r in results {
            let (shard, local) = split_position(r.log_position);
            by_log.entry(shard).or_default().push(AppendResult { log_position: local, ..*r });
        }
        for (shard, rs) in by_log {
            match shard {
                None => self.home.persist_remote(&rs).await?,
                Some(s) => match self.shard(s) {
                    Some(open) => open.log.persist_remote(&rs).await?,
                    None => {
                        return Err(StorageError::Fenced(format!(
                            "shard {s} is no longer open on this node; its records may not be in the object store"
                        )));
                    }
                },
            }
        }
        Ok(())
    }

    fn tiering_stats(&self) -> Option<TieringStats> {
        let mut all =
            self.home.tiering_stats().into_iter().chain(self.all_open().into_iter().map(|(_, o)| o.log.stats()));
        let mut sum = all.next()?;
        for s in all {
            sum.waiting_segments += s.waiting_segments;
            sum.waiting_bytes += s.waiting_bytes;
            sum.remote_segments += s.remote_segments;
            sum.remote_bytes += s.remote_bytes;
            sum.uploaded_segments += s.uploaded_segments;
            sum.uploaded_bytes += s.uploaded_bytes;
            sum.upload_failures += s.upload_failures;
            sum.orphans_removed += s.orphans_removed;
            sum.remote_segments_expired += s.remote_segments_expired;
            sum.merged_chunks += s.merged_chunks;
            sum.cold_gets += s.cold_gets;
            sum.cold_get_bytes += s.cold_get_bytes;
            sum.cache_bytes += s.cache_bytes;
            if sum.object_store.is_empty() {
                sum.object_store = s.object_store;
            }
        }
        Some(sum)
    }

    /// Hands every open shard over (bounded: a shard whose tail cannot be uploaded within
    /// 30 s is abandoned), uploads the home log's tail (bounded the same), then closes it.
    async fn close(&self) -> StorageResult<()> {
        let mut first_error = None;
        for shard in self.open_shards() {
            let res = match tokio::time::timeout(CLOSE_HANDOVER_TIMEOUT, self.close_shard(shard)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(shard, "shard hand-over timed out at close; abandoning it");
                    self.abandon_shard(shard).await
                }
            };
            if let Err(e) = res {
                tracing::warn!(shard, error = %e, "closing a shard failed");
                first_error.get_or_insert(e);
            }
        }
        if let Some(home) = &self.home_tiered {
            match tokio::time::timeout(CLOSE_HANDOVER_TIMEOUT, home.upload_all()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "uploading the home log's tail at close failed"),
                Err(_) => tracing::warn!("uploading the home log's tail at close timed out"),
            }
        }
        let home = self.home.close().await;
        match first_error {
            Some(e) => Err(e),
            None => home,
        }
    }
}

#[cfg(test)]
mod tests;
