//! The cluster side of the metadata store ([`ClusterStore`]): node heartbeats, the fixed shard
//! count and the shard leases with their fencing epochs. Every time in it is the database's
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
}
