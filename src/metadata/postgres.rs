//! [`MetadataStore`] on PostgreSQL through sqlx (`postgres://user:pass@host:port/db`): the
//! production store, shared by gateway nodes. Migrations live in `migrations/postgres/` and are
//! embedded in the binary; TLS (`sslmode=require`/`verify-full`) is rustls on ring.
//!
//! Batches are a few statements whatever their size: progress and segment queues are written
//! with `UNNEST` over arrays. Errors never carry the URL's password ([`redact_url`]).
//!
//! In cluster mode (a non-empty node id) progress rows are shared by the nodes, except those of
//! the gateway's own groups (`rmq_sys_*`, e.g. the transaction resolutions on the half queue):
//! each node has its own system queues in its own log, so their rows are stored per node, as
//! `<group>@<node id>`.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

use crate::clock::now_ms;

use super::cluster::{ClusterStore, HomeCut, HomeEntry, HomeRecord, LeaseRecord, NodeRecord};
use super::{
    Durability, Fence, GroupRecord, MetadataError, MetadataResult, MetadataStore, ProgressRecord, SegmentQueue,
    SegmentRecord, StoreOptions, TopicRecord, TopicType, redact_url,
};
use crate::cluster::parse_shard_log_id;

/// Rows per `UNNEST` statement of a progress batch (bounds one statement's arrays).
const PROGRESS_CHUNK: usize = 5000;

/// Groups of the gateway itself (`rmq_sys_*`); in cluster mode their progress is per node.
const SYSTEM_GROUP_PREFIX: &str = "rmq_sys_";

/// The suffix of `node_id`'s rows of system groups (`@<node id>`).
fn system_group_suffix(node_id: &str) -> String {
    format!("@{node_id}")
}

/// The columns of a [`HomeRecord`] ([`home_from_row`]); `claimed_by` only while the claim is
/// live. A macro: statements are literals (`concat!`).
macro_rules! home_columns {
    () => {
        "node_id, cut_scheduled, cut_half, adopted_by, unapplied, dirty, \
         CASE WHEN claim_expires_at > now() THEN claimed_by END AS claimed_by"
    };
}

pub struct PostgresMetadataStore {
    pool: PgPool,
    /// Keys this node's journal offset and, when not empty (cluster mode), its rows of system
    /// groups' progress ([`StoreOptions::node_id`]).
    node_id: String,
}

fn query_err(e: sqlx::Error) -> MetadataError {
    match e {
        sqlx::Error::Database(db) => MetadataError::Query(db.to_string()),
        // Connection-level failures: the server is away or the pool is exhausted.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => MetadataError::Unavailable(e.to_string()),
        // sqlx::Error is non-exhaustive: decoding, configuration and row errors.
        other => MetadataError::Query(other.to_string()),
    }
}

fn to_i64(what: &str, v: u64) -> MetadataResult<i64> {
    i64::try_from(v).map_err(|_| MetadataError::Invalid(format!("{what} {v} exceeds the BIGINT range")))
}

fn to_u64(what: &str, v: i64) -> MetadataResult<u64> {
    u64::try_from(v).map_err(|_| MetadataError::Invalid(format!("stored {what} {v} is negative")))
}

fn to_u32(what: &str, v: i64) -> MetadataResult<u32> {
    u32::try_from(v).map_err(|_| MetadataError::Invalid(format!("stored {what} {v} is out of range")))
}

impl PostgresMetadataStore {
    /// The group name under which this node stores `group`'s progress: `<group>@<node id>` for
    /// a system group in cluster mode, else `group`.
    fn stored_group<'a>(&self, group: &'a str) -> Cow<'a, str> {
        if !self.node_id.is_empty() && group.starts_with(SYSTEM_GROUP_PREFIX) {
            Cow::Owned(format!("{group}{}", system_group_suffix(&self.node_id)))
        } else {
            Cow::Borrowed(group)
        }
    }

    /// Connects to `url` (`postgres://` or `postgresql://`) and runs the migrations. The first
    /// connection and the migrations must finish within `options.connect_timeout`.
    pub async fn open(url: &str, options: &StoreOptions) -> MetadataResult<Self> {
        let shown = redact_url(url);
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| MetadataError::Unavailable(format!("bad postgres url `{shown}`: {}", redact_err(&e, url))))?
            .application_name("rmq-gateway");
        if !options.statement_timeout.is_zero() {
            let ms = options.statement_timeout.as_millis().to_string();
            connect = connect.options([("statement_timeout", ms.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            // A connection broken by a server restart is noticed before it is handed out.
            .test_before_acquire(true)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(connect);
        // A database that is not up yet (e.g. started with the gateway) is waited for, up to
        // the connect timeout; any other failure ends the open at once.
        let mut last_error = String::from("no answer");
        let setup = async {
            loop {
                match sqlx::migrate!("./migrations/postgres").run(&pool).await {
                    Ok(()) => return Ok(()),
                    Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::Io(e))) => {
                        last_error = e.to_string();
                        tracing::warn!(url = %shown, error = %e, "metadata store not reachable yet; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(sqlx::migrate::MigrateError::Execute(sqlx::Error::PoolTimedOut)) => {
                        last_error = "pool timed out while connecting".into();
                        tracing::warn!(url = %shown, "metadata store not reachable yet (pool timed out); retrying");
                    }
                    Err(e) => {
                        return Err(MetadataError::Unavailable(format!(
                            "migrations failed on `{shown}`: {}",
                            redact_err(&e, url)
                        )));
                    }
                }
            }
        };
        match tokio::time::timeout(options.connect_timeout, setup).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(MetadataError::Unavailable(format!(
                    "cannot reach `{shown}` within {:?} (metadata.connectTimeout): {}",
                    options.connect_timeout,
                    redact_err(&last_error, url)
                )));
            }
        }
        Ok(Self { pool, node_id: options.node_id.clone() })
    }

    /// Runs an `INSERT INTO consumer_groups … VALUES ($1..$7)` statement.
    async fn insert_group(&self, group: &GroupRecord, sql: &'static str) -> MetadataResult<()> {
        sqlx::query(sql)
            .bind(&group.name)
            .bind(group.fifo)
            .bind(group.retry_max_times)
            .bind(group.retry_backoff.as_deref())
            .bind(group.broadcast)
            .bind(group.auto_created)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        Ok(())
    }
}

/// An error message with the URL's password (if it appears) masked.
fn redact_err(e: &dyn std::fmt::Display, url: &str) -> String {
    let text = e.to_string();
    match url_password(url) {
        Some(pw) if !pw.is_empty() => text.replace(pw, "***"),
        _ => text,
    }
}

fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1)
}

fn topic_from_row(row: &PgRow) -> MetadataResult<TopicRecord> {
    let name: String = row.try_get("name").map_err(query_err)?;
    let queue_nums: i64 = row.try_get("queue_nums").map_err(query_err)?;
    let kind: String = row.try_get("topic_type").map_err(query_err)?;
    let topic_type = TopicType::parse(&kind)
        .ok_or_else(|| MetadataError::Invalid(format!("topic `{name}` has unknown type `{kind}`")))?;
    let queue_nums = u32::try_from(queue_nums)
        .map_err(|_| MetadataError::Invalid(format!("topic `{name}` has {queue_nums} queues")))?;
    let durability: String = row.try_get("durability").map_err(query_err)?;
    let durability = Durability::parse(&durability)
        .ok_or_else(|| MetadataError::Invalid(format!("topic `{name}` has unknown durability `{durability}`")))?;
    Ok(TopicRecord { name, queue_nums, topic_type, durability })
}

fn group_from_row(row: &PgRow) -> MetadataResult<GroupRecord> {
    Ok(GroupRecord {
        name: row.try_get("name").map_err(query_err)?,
        fifo: row.try_get("fifo").map_err(query_err)?,
        retry_max_times: row.try_get("retry_max_times").map_err(query_err)?,
        retry_backoff: row.try_get("retry_backoff").map_err(query_err)?,
        broadcast: row.try_get("broadcast").map_err(query_err)?,
        auto_created: row.try_get("auto_created").map_err(query_err)?,
    })
}

/// Locks the lease row of the shard `log_id` names (`FOR SHARE`: an acquisition, which
/// updates the row, waits for this transaction) and checks that `fence` still holds it.
async fn check_fence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    log_id: &str,
    fence: &Fence,
) -> MetadataResult<()> {
    let shard = parse_shard_log_id(log_id)
        .and_then(|s| i32::try_from(s).ok())
        .ok_or_else(|| MetadataError::Invalid(format!("a fenced manifest write names `{log_id}`, not a shard log")))?;
    let row = sqlx::query("SELECT owner, epoch FROM shard_leases WHERE shard = $1 FOR SHARE")
        .bind(shard)
        .fetch_optional(&mut **tx)
        .await
        .map_err(query_err)?;
    let Some(row) = row else {
        return Err(MetadataError::Fenced(format!("no lease row for shard {shard} (`{log_id}`)")));
    };
    let owner: Option<String> = row.try_get("owner").map_err(query_err)?;
    let epoch: i64 = row.try_get("epoch").map_err(query_err)?;
    if owner.as_deref() == Some(fence.node_id.as_str()) && epoch == fence.epoch {
        return Ok(());
    }
    Err(MetadataError::Fenced(format!(
        "node `{}` epoch {} no longer holds `{log_id}` (lease: owner {}, epoch {epoch}); manifest row not written",
        fence.node_id,
        fence.epoch,
        owner.as_deref().map_or_else(|| "none".to_string(), |o| format!("`{o}`")),
    )))
}

fn ttl_ms(ttl: Duration) -> MetadataResult<i64> {
    i64::try_from(ttl.as_millis()).map_err(|_| MetadataError::Invalid(format!("lease ttl {ttl:?} is too long")))
}

fn shard_i32(shard: u32) -> MetadataResult<i32> {
    i32::try_from(shard).map_err(|_| MetadataError::Invalid(format!("shard {shard} exceeds the INTEGER range")))
}

fn node_from_row(row: &PgRow) -> MetadataResult<NodeRecord> {
    Ok(NodeRecord {
        node_id: row.try_get("node_id").map_err(query_err)?,
        advertised: row.try_get("advertised").map_err(query_err)?,
        peer: row.try_get("peer").map_err(query_err)?,
        leaving: row.try_get("leaving").map_err(query_err)?,
    })
}

/// A progress row whose `group_name` is `group`.
fn progress_from_row(row: &PgRow, group: String) -> MetadataResult<ProgressRecord> {
    Ok(ProgressRecord {
        group,
        topic: row.try_get("topic").map_err(query_err)?,
        queue_id: to_u32("queue id", row.try_get("queue_id").map_err(query_err)?)?,
        ack_floor: to_u64("ack floor", row.try_get("ack_floor").map_err(query_err)?)?,
        acked_above: row.try_get("acked_above").map_err(query_err)?,
    })
}

/// `group` of a system group's row of `node_id` without its `@<node id>` suffix.
fn unscoped_group(group: &str, node_id: &str) -> MetadataResult<String> {
    group
        .strip_suffix(system_group_suffix(node_id).as_str())
        .map(str::to_owned)
        .ok_or_else(|| MetadataError::Invalid(format!("progress row `{group}` is not node `{node_id}`'s")))
}

fn home_from_row(row: &PgRow) -> MetadataResult<HomeRecord> {
    Ok(HomeRecord {
        node_id: row.try_get("node_id").map_err(query_err)?,
        cut: HomeCut {
            scheduled: to_u64("scheduled cut", row.try_get("cut_scheduled").map_err(query_err)?)?,
            half: to_u64("half cut", row.try_get("cut_half").map_err(query_err)?)?,
        },
        adopted_by: row.try_get("adopted_by").map_err(query_err)?,
        unapplied: row.try_get("unapplied").map_err(query_err)?,
        dirty: row.try_get("dirty").map_err(query_err)?,
        claimed_by: row.try_get("claimed_by").map_err(query_err)?,
    })
}

#[async_trait]
impl ClusterStore for PostgresMetadataStore {
    async fn ensure_shards(&self, shards: u32) -> MetadataResult<()> {
        if shards == 0 {
            return Err(MetadataError::Invalid("a cluster needs at least one shard".into()));
        }
        let wanted = shard_i32(shards)?;
        let mut tx = self.pool.begin().await.map_err(query_err)?;
        sqlx::query("INSERT INTO cluster_settings (id, shards) VALUES (0, $1) ON CONFLICT (id) DO NOTHING")
            .bind(wanted)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        let stored: i32 = sqlx::query_scalar("SELECT shards FROM cluster_settings WHERE id = 0")
            .fetch_one(&mut *tx)
            .await
            .map_err(query_err)?;
        if stored != wanted {
            return Err(MetadataError::Invalid(format!(
                "the cluster in this metadata store has {stored} shards, this node is configured with {wanted} \
                 (cluster.shards must be the same on every node and never change)"
            )));
        }
        sqlx::query(
            "INSERT INTO shard_leases (shard, owner, epoch, expires_at) \
             SELECT s, NULL, 0, NULL FROM generate_series(0, $1 - 1) AS s ON CONFLICT (shard) DO NOTHING",
        )
        .bind(wanted)
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
        tx.commit().await.map_err(query_err)
    }

    async fn heartbeat(&self, node: &NodeRecord) -> MetadataResult<()> {
        sqlx::query(
            "INSERT INTO cluster_nodes (node_id, advertised, peer, leaving, heartbeat_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (node_id) DO UPDATE SET advertised = excluded.advertised, peer = excluded.peer, \
             leaving = excluded.leaving, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&node.node_id)
        .bind(&node.advertised)
        .bind(&node.peer)
        .bind(node.leaving)
        .execute(&self.pool)
        .await
        .map_err(query_err)?;
        Ok(())
    }

    async fn live_nodes(&self, ttl: Duration) -> MetadataResult<Vec<NodeRecord>> {
        let rows = sqlx::query(
            "SELECT node_id, advertised, peer, leaving FROM cluster_nodes \
             WHERE heartbeat_at > now() - $1 * interval '1 millisecond' ORDER BY node_id COLLATE \"C\"",
        )
        .bind(ttl_ms(ttl)?)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err)?;
        rows.iter().map(node_from_row).collect()
    }

    async fn remove_node(&self, node_id: &str) -> MetadataResult<bool> {
        let done = sqlx::query("DELETE FROM cluster_nodes WHERE node_id = $1")
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn leases(&self) -> MetadataResult<Vec<LeaseRecord>> {
        let rows = sqlx::query(
            "SELECT shard, owner, epoch, \
             (owner IS NOT NULL AND expires_at > now()) AS live, \
             COALESCE(FLOOR(EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT, 0) AS remaining_ms \
             FROM shard_leases ORDER BY shard",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err)?;
        rows.iter()
            .map(|row| {
                let shard: i32 = row.try_get("shard").map_err(query_err)?;
                Ok(LeaseRecord {
                    shard: u32::try_from(shard)
                        .map_err(|_| MetadataError::Invalid(format!("stored shard {shard} is negative")))?,
                    owner: row.try_get("owner").map_err(query_err)?,
                    epoch: row.try_get("epoch").map_err(query_err)?,
                    live: row.try_get("live").map_err(query_err)?,
                    remaining_ms: row.try_get("remaining_ms").map_err(query_err)?,
                })
            })
            .collect()
    }

    async fn acquire(&self, shard: u32, node_id: &str, ttl: Duration) -> MetadataResult<Option<i64>> {
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE shard_leases SET owner = $2, epoch = epoch + 1, expires_at = now() + $3 * interval '1 millisecond' \
             WHERE shard = $1 AND (owner IS NULL OR owner = $2 OR expires_at IS NULL OR expires_at <= now()) \
             RETURNING epoch",
        )
        .bind(shard_i32(shard)?)
        .bind(node_id)
        .bind(ttl_ms(ttl)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err)?;
        Ok(epoch)
    }

    async fn renew(&self, node_id: &str, held: &[(u32, i64)], ttl: Duration) -> MetadataResult<Vec<u32>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let shards = held.iter().map(|(s, _)| shard_i32(*s)).collect::<MetadataResult<Vec<_>>>()?;
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
        let renewed: Vec<i32> = sqlx::query_scalar(
            "UPDATE shard_leases AS l SET expires_at = now() + $2 * interval '1 millisecond' \
             FROM UNNEST($3::integer[], $4::bigint[]) AS h(shard, epoch) \
             WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1 AND l.expires_at > now() \
             RETURNING l.shard",
        )
        .bind(node_id)
        .bind(ttl_ms(ttl)?)
        .bind(&shards)
        .bind(&epochs)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err)?;
        let mut renewed: Vec<u32> = renewed.into_iter().filter_map(|s| u32::try_from(s).ok()).collect();
        renewed.sort_unstable();
        Ok(renewed)
    }

    async fn release(&self, shard: u32, node_id: &str, epoch: i64) -> MetadataResult<bool> {
        let done = sqlx::query(
            "UPDATE shard_leases SET owner = NULL, expires_at = NULL WHERE shard = $1 AND owner = $2 AND epoch = $3",
        )
        .bind(shard_i32(shard)?)
        .bind(node_id)
        .bind(epoch)
        .execute(&self.pool)
        .await
        .map_err(query_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn enter_home(&self, node_id: &str) -> MetadataResult<HomeEntry> {
        let mut tx = self.pool.begin().await.map_err(query_err)?;
        sqlx::query("INSERT INTO home_logs (node_id) VALUES ($1) ON CONFLICT (node_id) DO NOTHING")
            .bind(node_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        // Locked: a claim being made waits for this transaction, or this one for the claim.
        let row = sqlx::query(
            "SELECT CASE WHEN claim_expires_at > now() THEN claimed_by END AS claimed_by \
             FROM home_logs WHERE node_id = $1 FOR UPDATE",
        )
        .bind(node_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err)?;
        let claimer: Option<String> = row.try_get("claimed_by").map_err(query_err)?;
        if let Some(claimer) = claimer.filter(|c| c != node_id) {
            tx.commit().await.map_err(query_err)?;
            return Ok(HomeEntry::Claimed(claimer));
        }
        // An expired claim is void: cleared, so its holder can no longer finish the adoption.
        let row = sqlx::query(concat!(
            "UPDATE home_logs SET dirty = TRUE, claimed_by = NULL, claim_expires_at = NULL \
             WHERE node_id = $1 RETURNING ",
            home_columns!()
        ))
        .bind(node_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err)?;
        let record = home_from_row(&row)?;
        tx.commit().await.map_err(query_err)?;
        Ok(HomeEntry::Entered(record))
    }

    async fn home_cut_applied(&self, node_id: &str, cut: HomeCut) -> MetadataResult<()> {
        sqlx::query(
            "UPDATE home_logs SET unapplied = FALSE WHERE node_id = $1 AND cut_scheduled = $2 AND cut_half = $3",
        )
        .bind(node_id)
        .bind(to_i64("scheduled cut", cut.scheduled)?)
        .bind(to_i64("half cut", cut.half)?)
        .execute(&self.pool)
        .await
        .map_err(query_err)?;
        Ok(())
    }

    async fn homes(&self) -> MetadataResult<Vec<HomeRecord>> {
        let rows = sqlx::query(concat!("SELECT ", home_columns!(), " FROM home_logs ORDER BY node_id COLLATE \"C\""))
            .fetch_all(&self.pool)
            .await
            .map_err(query_err)?;
        rows.iter().map(home_from_row).collect()
    }

    async fn claim_home(
        &self,
        node_id: &str,
        adopter: &str,
        dead_after: Duration,
        claim_ttl: Duration,
    ) -> MetadataResult<Option<HomeRecord>> {
        // A node never adopts its own home log.
        if node_id == adopter {
            return Ok(None);
        }
        let dead_after = ttl_ms(dead_after)?;
        let claim_ttl = ttl_ms(claim_ttl)?;
        let mut tx = self.pool.begin().await.map_err(query_err)?;
        // The row is locked before the heartbeat is read: a node that heartbeats and then
        // enters its home log either waits here for the claim (and sees it) or has its fresh
        // heartbeat read below (and the claim fails).
        let row = sqlx::query(
            "SELECT dirty, (claimed_by IS NOT NULL AND claimed_by <> $2 AND claim_expires_at > now()) AS claimed \
             FROM home_logs WHERE node_id = $1 FOR UPDATE",
        )
        .bind(node_id)
        .bind(adopter)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_err)?;
        let Some(row) = row else { return Ok(None) };
        let dirty: bool = row.try_get("dirty").map_err(query_err)?;
        let claimed: bool = row.try_get("claimed").map_err(query_err)?;
        if !dirty || claimed {
            return Ok(None);
        }
        let alive: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cluster_nodes WHERE node_id = $1 \
             AND heartbeat_at > now() - $2 * interval '1 millisecond')",
        )
        .bind(node_id)
        .bind(dead_after)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err)?;
        if alive {
            return Ok(None);
        }
        let row = sqlx::query(concat!(
            "UPDATE home_logs SET claimed_by = $2, claim_expires_at = now() + $3 * interval '1 millisecond' \
             WHERE node_id = $1 RETURNING ",
            home_columns!()
        ))
        .bind(node_id)
        .bind(adopter)
        .bind(claim_ttl)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err)?;
        let record = home_from_row(&row)?;
        tx.commit().await.map_err(query_err)?;
        Ok(Some(record))
    }

    async fn finish_adoption(&self, node_id: &str, adopter: &str, cut: HomeCut) -> MetadataResult<bool> {
        let done = sqlx::query(
            "UPDATE home_logs SET cut_scheduled = GREATEST(cut_scheduled, $3), cut_half = GREATEST(cut_half, $4), \
             adopted_by = $2, unapplied = TRUE, dirty = FALSE, claimed_by = NULL, claim_expires_at = NULL \
             WHERE node_id = $1 AND claimed_by = $2 AND claim_expires_at > now()",
        )
        .bind(node_id)
        .bind(adopter)
        .bind(to_i64("scheduled cut", cut.scheduled)?)
        .bind(to_i64("half cut", cut.half)?)
        .execute(&self.pool)
        .await
        .map_err(query_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn drop_claim(&self, node_id: &str, adopter: &str) -> MetadataResult<()> {
        sqlx::query(
            "UPDATE home_logs SET claimed_by = NULL, claim_expires_at = NULL WHERE node_id = $1 AND claimed_by = $2",
        )
        .bind(node_id)
        .bind(adopter)
        .execute(&self.pool)
        .await
        .map_err(query_err)?;
        Ok(())
    }

    async fn node_system_progress(&self, node_id: &str) -> MetadataResult<(Vec<ProgressRecord>, u64)> {
        let suffix = system_group_suffix(node_id);
        // Compared with left()/right(), not LIKE: the node id is not a pattern.
        let rows = sqlx::query(
            "SELECT group_name, topic, queue_id, ack_floor, acked_above FROM consumer_progress \
             WHERE left(group_name, length($1)) = $1 AND right(group_name, length($2)) = $2 \
             ORDER BY group_name COLLATE \"C\", topic COLLATE \"C\", queue_id",
        )
        .bind(SYSTEM_GROUP_PREFIX)
        .bind(&suffix)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err)?;
        let records = rows
            .iter()
            .map(|row| {
                let group: String = row.try_get("group_name").map_err(query_err)?;
                progress_from_row(row, unscoped_group(&group, node_id)?)
            })
            .collect::<MetadataResult<Vec<_>>>()?;
        let journal_offset: Option<i64> =
            sqlx::query_scalar("SELECT journal_offset FROM journal_offsets WHERE node_id = $1")
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_err)?;
        Ok((records, to_u64("journal offset", journal_offset.unwrap_or(0))?))
    }
}

#[async_trait]
impl MetadataStore for PostgresMetadataStore {
    async fn create_topic(&self, topic: &TopicRecord) -> MetadataResult<TopicRecord> {
        sqlx::query(
            "INSERT INTO topics (name, queue_nums, topic_type, created_at, durability) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&topic.name)
        .bind(i64::from(topic.queue_nums))
        .bind(topic.topic_type.as_str())
        .bind(now_ms())
        .bind(topic.durability.as_str())
        .execute(&self.pool)
        .await
        .map_err(query_err)?;
        self.topic(&topic.name)
            .await?
            .ok_or_else(|| MetadataError::Query(format!("topic `{}` vanished after insert", topic.name)))
    }

    async fn topic(&self, name: &str) -> MetadataResult<Option<TopicRecord>> {
        let row = sqlx::query("SELECT name, queue_nums, topic_type, durability FROM topics WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err)?;
        row.as_ref().map(topic_from_row).transpose()
    }

    async fn list_topics(&self) -> MetadataResult<Vec<TopicRecord>> {
        let rows =
            sqlx::query("SELECT name, queue_nums, topic_type, durability FROM topics ORDER BY name COLLATE \"C\"")
                .fetch_all(&self.pool)
                .await
                .map_err(query_err)?;
        rows.iter().map(topic_from_row).collect()
    }

    async fn delete_topic(&self, name: &str) -> MetadataResult<bool> {
        let done = sqlx::query("DELETE FROM topics WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_group(&self, group: &GroupRecord) -> MetadataResult<GroupRecord> {
        self.insert_group(
            group,
            "INSERT INTO consumer_groups (name, fifo, retry_max_times, retry_backoff, broadcast, auto_created, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .await?;
        self.group(&group.name)
            .await?
            .ok_or_else(|| MetadataError::Query(format!("group `{}` vanished after insert", group.name)))
    }

    async fn put_group(&self, group: &GroupRecord) -> MetadataResult<()> {
        self.insert_group(
            group,
            "INSERT INTO consumer_groups (name, fifo, retry_max_times, retry_backoff, broadcast, auto_created, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET fifo = excluded.fifo, \
             retry_max_times = excluded.retry_max_times, retry_backoff = excluded.retry_backoff, \
             broadcast = excluded.broadcast, auto_created = excluded.auto_created",
        )
        .await
    }

    async fn retire_group(&self, name: &str) -> MetadataResult<bool> {
        let done = sqlx::query("DELETE FROM consumer_groups WHERE name = $1 AND auto_created")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn group(&self, name: &str) -> MetadataResult<Option<GroupRecord>> {
        let row = sqlx::query(
            "SELECT name, fifo, retry_max_times, retry_backoff, broadcast, auto_created FROM consumer_groups WHERE name = $1",
        )
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err)?;
        row.as_ref().map(group_from_row).transpose()
    }

    async fn list_groups(&self) -> MetadataResult<Vec<GroupRecord>> {
        let rows = sqlx::query(
            "SELECT name, fifo, retry_max_times, retry_backoff, broadcast, auto_created FROM consumer_groups \
             ORDER BY name COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err)?;
        rows.iter().map(group_from_row).collect()
    }

    /// In cluster mode the rows of system groups (`rmq_sys_*`) are this node's only, stored as
    /// `<group>@<node id>` and returned without the suffix; other nodes' (and unscoped) system
    /// rows are left out.
    async fn load_progress(&self) -> MetadataResult<(Vec<ProgressRecord>, u64)> {
        let journal_offset: Option<i64> =
            sqlx::query_scalar("SELECT journal_offset FROM journal_offsets WHERE node_id = $1")
                .bind(&self.node_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_err)?;
        let suffix = system_group_suffix(&self.node_id);
        // Compared with left()/right(), not LIKE: the node id is not a pattern.
        let rows = sqlx::query(
            "SELECT group_name, topic, queue_id, ack_floor, acked_above FROM consumer_progress \
             WHERE $1 = '' OR left(group_name, length($2)) <> $2 OR right(group_name, length($3)) = $3",
        )
        .bind(&self.node_id)
        .bind(SYSTEM_GROUP_PREFIX)
        .bind(&suffix)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err)?;
        let records = rows
            .iter()
            .map(|row| {
                let group: String = row.try_get("group_name").map_err(query_err)?;
                let group = if !self.node_id.is_empty() && group.starts_with(SYSTEM_GROUP_PREFIX) {
                    unscoped_group(&group, &self.node_id)?
                } else {
                    group
                };
                progress_from_row(row, group)
            })
            .collect::<MetadataResult<Vec<_>>>()?;
        Ok((records, journal_offset.unwrap_or(0).max(0) as u64))
    }

    /// In cluster mode the rows of system groups (`rmq_sys_*`) are stored as
    /// `<group>@<node id>`: each node has its own system queues, in its own log.
    async fn save_progress(&self, batch: &[ProgressRecord], journal_offset: u64) -> MetadataResult<()> {
        // ON CONFLICT cannot touch one row twice in a statement: the last record of a key wins.
        let mut latest: std::collections::HashMap<(Cow<'_, str>, &str, u32), &ProgressRecord> =
            std::collections::HashMap::with_capacity(batch.len());
        for p in batch {
            latest.insert((self.stored_group(&p.group), p.topic.as_str(), p.queue_id), p);
        }
        let mut rows: Vec<((Cow<'_, str>, &str, u32), &ProgressRecord)> = latest.into_iter().collect();
        // Rows locked in key order: two writers of overlapping batches cannot deadlock.
        rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        let journal_offset = to_i64("journal offset", journal_offset)?;
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(query_err)?;
        for chunk in rows.chunks(PROGRESS_CHUNK) {
            let mut groups = Vec::with_capacity(chunk.len());
            let mut topics = Vec::with_capacity(chunk.len());
            let mut queues = Vec::with_capacity(chunk.len());
            let mut floors = Vec::with_capacity(chunk.len());
            let mut above = Vec::with_capacity(chunk.len());
            for ((group, _, _), p) in chunk {
                groups.push(&**group);
                topics.push(p.topic.as_str());
                queues.push(i64::from(p.queue_id));
                floors.push(to_i64("ack floor", p.ack_floor)?);
                above.push(p.acked_above.as_slice());
            }
            sqlx::query(
                "INSERT INTO consumer_progress (group_name, topic, queue_id, ack_floor, acked_above, updated_at) \
                 SELECT g, t, q, f, a, $6 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[]) \
                 AS u(g, t, q, f, a) \
                 ON CONFLICT (group_name, topic, queue_id) DO UPDATE SET ack_floor = excluded.ack_floor, \
                 acked_above = excluded.acked_above, updated_at = excluded.updated_at",
            )
            .bind(&groups)
            .bind(&topics)
            .bind(&queues)
            .bind(&floors)
            .bind(&above)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        }
        sqlx::query(
            "INSERT INTO journal_offsets (node_id, journal_offset) VALUES ($1, $2) \
             ON CONFLICT (node_id) DO UPDATE SET journal_offset = GREATEST(journal_offsets.journal_offset, excluded.journal_offset)",
        )
        .bind(&self.node_id)
        .bind(journal_offset)
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
        tx.commit().await.map_err(query_err)
    }

    /// A system group's rows are this node's only in cluster mode (see `save_progress`).
    async fn delete_progress(&self, group: &str) -> MetadataResult<u64> {
        let stored = self.stored_group(group);
        let done = sqlx::query("DELETE FROM consumer_progress WHERE group_name = $1")
            .bind(&*stored)
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        Ok(done.rows_affected())
    }

    async fn put_segment(&self, seg: &SegmentRecord, fence: Option<&Fence>) -> MetadataResult<()> {
        let base = to_i64("segment base", seg.base)?;
        let mut topics = Vec::with_capacity(seg.queues.len());
        let mut queue_ids = Vec::with_capacity(seg.queues.len());
        let mut firsts = Vec::with_capacity(seg.queues.len());
        let mut ends = Vec::with_capacity(seg.queues.len());
        let mut index_pos = Vec::with_capacity(seg.queues.len());
        for q in &seg.queues {
            topics.push(q.topic.as_str());
            queue_ids.push(i64::from(q.queue_id));
            firsts.push(to_i64("first offset", q.first_offset)?);
            ends.push(to_i64("end offset", q.end_offset)?);
            index_pos.push(to_i64("index position", q.index_pos)?);
        }
        let mut tx = self.pool.begin().await.map_err(query_err)?;
        if let Some(fence) = fence {
            check_fence(&mut tx, &seg.log_id, fence).await?;
        }
        sqlx::query(
            "INSERT INTO tiered_segments (log_id, base, size, object_key, object_size, first_store_ms, last_store_ms, uploaded_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (log_id, base) DO UPDATE SET size = excluded.size, \
             object_key = excluded.object_key, object_size = excluded.object_size, first_store_ms = excluded.first_store_ms, \
             last_store_ms = excluded.last_store_ms, uploaded_at_ms = excluded.uploaded_at_ms",
        )
        .bind(&seg.log_id)
        .bind(base)
        .bind(to_i64("segment size", seg.size)?)
        .bind(&seg.object_key)
        .bind(to_i64("object size", seg.object_size)?)
        .bind(seg.first_store_ms)
        .bind(seg.last_store_ms)
        .bind(seg.uploaded_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(query_err)?;
        sqlx::query("DELETE FROM tiered_segment_queues WHERE log_id = $1 AND base = $2")
            .bind(&seg.log_id)
            .bind(base)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        // The chunks a merged row replaces (their queues go with them: ON DELETE CASCADE).
        sqlx::query("DELETE FROM tiered_segments WHERE log_id = $1 AND base > $2 AND base < $3")
            .bind(&seg.log_id)
            .bind(base)
            .bind(to_i64("segment end", seg.base.saturating_add(seg.size))?)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        if !seg.queues.is_empty() {
            sqlx::query(
                "INSERT INTO tiered_segment_queues (log_id, base, topic, queue_id, first_offset, end_offset, index_pos) \
                 SELECT $1, $2, t, q, f, e, i FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[]) \
                 AS u(t, q, f, e, i)",
            )
            .bind(&seg.log_id)
            .bind(base)
            .bind(&topics)
            .bind(&queue_ids)
            .bind(&firsts)
            .bind(&ends)
            .bind(&index_pos)
            .execute(&mut *tx)
            .await
            .map_err(query_err)?;
        }
        tx.commit().await.map_err(query_err)
    }

    async fn list_segments(&self, log_id: &str) -> MetadataResult<Vec<SegmentRecord>> {
        // One snapshot for both reads: an upload (or a merge) committing between them must
        // not leave queue rows without their segment, or a segment without its queues.
        let mut tx = self.pool.begin().await.map_err(query_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.map_err(query_err)?;
        let rows = sqlx::query(
            "SELECT base, size, object_key, object_size, first_store_ms, last_store_ms, uploaded_at_ms \
             FROM tiered_segments WHERE log_id = $1 ORDER BY base",
        )
        .bind(log_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_err)?;
        let mut segments = rows
            .iter()
            .map(|row| {
                Ok(SegmentRecord {
                    log_id: log_id.to_owned(),
                    base: to_u64("segment base", row.try_get("base").map_err(query_err)?)?,
                    size: to_u64("segment size", row.try_get("size").map_err(query_err)?)?,
                    object_key: row.try_get("object_key").map_err(query_err)?,
                    object_size: to_u64("object size", row.try_get("object_size").map_err(query_err)?)?,
                    first_store_ms: row.try_get("first_store_ms").map_err(query_err)?,
                    last_store_ms: row.try_get("last_store_ms").map_err(query_err)?,
                    uploaded_at_ms: row.try_get("uploaded_at_ms").map_err(query_err)?,
                    queues: Vec::new(),
                })
            })
            .collect::<MetadataResult<Vec<_>>>()?;
        // Ordered by the text's bytes, as SQLite's BINARY collation does.
        let rows = sqlx::query(
            "SELECT base, topic, queue_id, first_offset, end_offset, index_pos FROM tiered_segment_queues \
             WHERE log_id = $1 ORDER BY base, topic COLLATE \"C\", queue_id",
        )
        .bind(log_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_err)?;
        for row in &rows {
            let base = to_u64("segment base", row.try_get("base").map_err(query_err)?)?;
            let queue = SegmentQueue {
                topic: row.try_get("topic").map_err(query_err)?,
                queue_id: to_u32("queue id", row.try_get("queue_id").map_err(query_err)?)?,
                first_offset: to_u64("first offset", row.try_get("first_offset").map_err(query_err)?)?,
                end_offset: to_u64("end offset", row.try_get("end_offset").map_err(query_err)?)?,
                index_pos: to_u64("index position", row.try_get("index_pos").map_err(query_err)?)?,
            };
            match segments.binary_search_by_key(&base, |s| s.base) {
                Ok(i) => segments[i].queues.push(queue),
                Err(_) => {
                    return Err(MetadataError::Invalid(format!("segment queue row without a segment at base {base}")));
                }
            }
        }
        tx.commit().await.map_err(query_err)?;
        Ok(segments)
    }

    async fn delete_segment(&self, log_id: &str, base: u64) -> MetadataResult<bool> {
        // The queues go with the row (ON DELETE CASCADE).
        let done = sqlx::query("DELETE FROM tiered_segments WHERE log_id = $1 AND base = $2")
            .bind(log_id)
            .bind(to_i64("segment base", base)?)
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> MetadataResult<Vec<u8>> {
        sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .execute(&self.pool)
            .await
            .map_err(query_err)?;
        let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(query_err)?;
        row.try_get("value").map_err(query_err)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password_of_a_url() {
        assert_eq!(url_password("postgres://u:s3cr%40t@h:5432/db?sslmode=require"), Some("s3cr%40t"));
        assert_eq!(url_password("postgres://u@h/db"), None);
        assert_eq!(url_password("postgres://h/db"), None);
    }
}
