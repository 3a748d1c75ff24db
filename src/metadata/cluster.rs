//! The cluster side of the metadata store ([`ClusterStore`]): node heartbeats, the fixed shard
//! count, the shard leases with their fencing epochs, and the adoption of a dead node's home
//! log (its pending scheduled and half messages) by another node. Every time in it is the database's
//! clock (`now()`), never a node's: nodes only send durations (a lease's time to live, the
//! heartbeat window). Only PostgreSQL implements it (cluster mode needs a store every node
//! shares); the SQL lives in [`super::postgres`].

use std::time::Duration;

use async_trait::async_trait;

use super::MetadataResult;

/// A node's row: where it is and whether it is leaving (handing its shards over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    /// `host:port` clients are given for the queues this node owns.
    pub advertised: String,
    /// `host:port` other nodes forward requests to.
    pub peer: String,
    /// Shutting down gracefully: gets no shards, hands over the ones it has.
    pub leaving: bool,
}

/// A shard's lease as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub shard: u32,
    /// The holder (`None`: released, or never taken).
    pub owner: Option<String>,
    /// Raised by every acquisition; the fencing token of the holder's manifest writes.
    pub epoch: i64,
    /// Held and not expired by the database clock.
    pub live: bool,
    /// Milliseconds until it expires by the database clock (negative: expired; 0 without
    /// an owner).
    pub remaining_ms: i64,
}

/// Offsets of a node's home log below which its scheduled messages (queue 0 of the timer
/// topic) and half messages (the half queue) belong to the nodes that adopted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HomeCut {
    pub scheduled: u64,
    pub half: u64,
}

/// A node's home log as the store has it (table `home_logs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeRecord {
    pub node_id: String,
    /// What other nodes adopted so far (cumulative).
    pub cut: HomeCut,
    /// The node that adopted last, if any.
    pub adopted_by: Option<String>,
    /// The last adoption is not applied to the node's own log yet (it must before it fires
    /// timers or resolves transactions again).
    pub unapplied: bool,
    /// The node served its home log since the last adoption: there may be work to adopt.
    pub dirty: bool,
    /// A node adopting it right now (its claim not expired by the database clock).
    pub claimed_by: Option<String>,
}

/// What [`ClusterStore::enter_home`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeEntry {
    /// Another node is adopting the home log right now: try again later.
    Claimed(String),
    /// The node may serve its home log (after applying `record.cut` if `record.unapplied`).
    Entered(HomeRecord),
}

#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// Creates the lease rows of `shards` shards if missing. A cluster whose store already
    /// has another shard count is refused ([`super::MetadataError::Invalid`]): the count is
    /// fixed for the life of the cluster.
    async fn ensure_shards(&self, shards: u32) -> MetadataResult<()>;

    /// Upserts the node's row with `heartbeat_at = now()`.
    async fn heartbeat(&self, node: &NodeRecord) -> MetadataResult<()>;
    /// Nodes whose last heartbeat is within `ttl` (database clock), by id.
    async fn live_nodes(&self, ttl: Duration) -> MetadataResult<Vec<NodeRecord>>;
    /// Removes the node's row (after a graceful leave); returns whether it existed.
    async fn remove_node(&self, node_id: &str) -> MetadataResult<bool>;

    /// Every shard's lease, by shard.
    async fn leases(&self) -> MetadataResult<Vec<LeaseRecord>>;
    /// Takes the lease of `shard` for `node_id` for `ttl` if it is free, expired or already
    /// the node's; the epoch goes up by one every time. `None`: another node holds it.
    async fn acquire(&self, shard: u32, node_id: &str, ttl: Duration) -> MetadataResult<Option<i64>>;
    /// Extends by `ttl` the leases among `held` (shard, epoch) still held by `node_id` with
    /// that epoch and not expired; returns the shards renewed (the others are lost).
    async fn renew(&self, node_id: &str, held: &[(u32, i64)], ttl: Duration) -> MetadataResult<Vec<u32>>;
    /// Frees the lease if `node_id` still holds it with `epoch`; returns whether it did.
    async fn release(&self, shard: u32, node_id: &str, epoch: i64) -> MetadataResult<bool>;

    /// The node itself, after a heartbeat and before it serves its home log (fires timers,
    /// resolves transactions): locks the node's `home_logs` row (creating it), and unless
    /// another node's claim on it is live, marks it dirty and returns it.
    async fn enter_home(&self, node_id: &str) -> MetadataResult<HomeEntry>;
    /// The node applied the adoption with cut `cut` to its own log: `unapplied` is cleared
    /// unless the cut moved since (a newer adoption, which the node must apply too).
    async fn home_cut_applied(&self, node_id: &str, cut: HomeCut) -> MetadataResult<()>;
    /// Every home log, by node id.
    async fn homes(&self) -> MetadataResult<Vec<HomeRecord>>;
    /// Claims `node_id`'s home log for `adopter` for `claim_ttl`, if it is dirty, not claimed
    /// (or the claim expired) and the node's last heartbeat is older than `dead_after` (or it
    /// has no node row); all checked with the row locked, so a node entering its home log at
    /// the same time either sees the claim or makes the claim fail. Returns the record as
    /// claimed (its `cut`: what earlier adoptions took).
    async fn claim_home(
        &self,
        node_id: &str,
        adopter: &str,
        dead_after: Duration,
        claim_ttl: Duration,
    ) -> MetadataResult<Option<HomeRecord>>;
    /// Records an adoption: the new cut, `adopted_by`, unapplied, not dirty, the claim
    /// cleared; only if `adopter` still holds a live claim (false otherwise: nothing written).
    async fn finish_adoption(&self, node_id: &str, adopter: &str, cut: HomeCut) -> MetadataResult<bool>;
    /// Drops `adopter`'s claim without adopting (the adoption failed).
    async fn drop_claim(&self, node_id: &str, adopter: &str) -> MetadataResult<()>;
    /// The node-local system progress of `node_id` (groups `rmq_sys_*`, as that node's
    /// broker names them) and the consumer-journal offset it covers.
    async fn node_system_progress(&self, node_id: &str) -> MetadataResult<(Vec<super::ProgressRecord>, u64)>;
}
