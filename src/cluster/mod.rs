//! Several gateways as one cluster on one PostgreSQL and one bucket. The queues of every
//! topic are spread over a fixed number of shards ([`shard_of`]); each shard is a message log
//! of its own (`log_id` [`shard_log_id`], tiered to the shared bucket) owned by one node at a
//! time through a lease in PostgreSQL that carries a fencing epoch:
//!
//! - **Membership** (`membership.rs`): nodes heartbeat a row; shards are spread evenly over
//!   the live nodes and move when nodes join or leave. A node acquires a free or expired
//!   shard lease (the epoch goes up), renews the ones it holds, and hands a shard over by
//!   stopping its writes, uploading its tail and releasing the lease.
//! - **Fencing**: a node stops writing to a shard when its own lease deadline passes (before
//!   any other node may take it), and every manifest row it writes names its epoch, checked
//!   by the store in the same transaction (`MetadataStore::put_segment` with a `Fence`), so a
//!   slow or partitioned node can neither append to nor record data for a shard it lost.
//! - **The view** ([`ClusterView`]): who owns which shard and where every node is, as this
//!   node last saw it; the gRPC layer routes and forwards with it, the broker asks it which
//!   queues are local ([`crate::broker::QueueOwnership`]).
//!
//! The node-local system queues (POP journal, timers, half messages) stay in the node's own
//! *home log* (`rmq_sys_*` topics, log id `node-<id>`), not in shards. A node serves its home
//! log only while its heartbeat is fresh and it has *entered* it in the store; when it is dead
//! for longer than the lease TTL another node adopts its pending scheduled and half messages
//! from the object store (`membership.rs`, `broker::adoption`), and requests naming it (its
//! transaction ids, recall handles) go to that adopter.

pub mod membership;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

/// Index of a shard, `0..shards`.
pub type ShardId = u32;

/// The shard a queue belongs to: consecutive queues of a topic go to consecutive shards, so a
/// topic's queues spread evenly over the shards (and, shards being spread evenly, over the
/// nodes).
pub fn shard_of(topic: &str, queue_id: u32, shards: u32) -> ShardId {
    let shards = shards.max(1);
    (crc32c::crc32c(topic.as_bytes()) % shards).wrapping_add(queue_id % shards) % shards
}

/// The `log_id` of a shard's log in the manifest and in object keys (and the key of its
/// lease row).
pub fn shard_log_id(shard: ShardId) -> String {
    format!("shard-{shard:04}")
}

/// The `log_id` of a node's home log (its POP journal, timers and half messages).
pub fn home_log_id(node_id: &str) -> String {
    format!("node-{node_id}")
}

/// The shard a `log_id` names, if it is a shard log.
pub fn parse_shard_log_id(log_id: &str) -> Option<ShardId> {
    log_id.strip_prefix("shard-")?.parse().ok()
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    /// `host:port` clients are given in routes for the queues this node owns (may be a load
    /// balancer's address shared by every node).
    pub advertised: String,
    /// `host:port` other nodes forward requests to (this node's own gRPC port).
    pub peer: String,
}

#[derive(Debug, Default)]
struct ViewState {
    /// Owner of each shard (`None`: no live owner, e.g. being taken over).
    owners: Vec<Option<Arc<NodeInfo>>>,
    /// Shards open for writing on this node (lease held and the shard's log open).
    local: Vec<bool>,
    nodes: HashMap<String, Arc<NodeInfo>>,
    /// Node → the node that last adopted its home log (as last read).
    adopted: HashMap<String, String>,
}

/// Who owns what, as this node last saw it. Cheap to query (a read lock); updated by the
/// membership loop and by the shard hand-over itself.
#[derive(Debug)]
pub struct ClusterView {
    local: Arc<NodeInfo>,
    shards: u32,
    state: RwLock<ViewState>,
    /// This node may serve its home log until then (`None`: not entered).
    home_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ClusterView {
    pub fn new(local: NodeInfo, shards: u32) -> Arc<ClusterView> {
        let shards = shards.max(1);
        let local = Arc::new(local);
        let mut nodes = HashMap::new();
        nodes.insert(local.node_id.clone(), local.clone());
        Arc::new(ClusterView {
            local,
            shards,
            state: RwLock::new(ViewState {
                owners: vec![None; shards as usize],
                local: vec![false; shards as usize],
                nodes,
                adopted: HashMap::new(),
            }),
            home_until: std::sync::Mutex::new(None),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn local_node(&self) -> &Arc<NodeInfo> {
        &self.local
    }

    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    pub fn shard_of(&self, topic: &str, queue_id: u32) -> ShardId {
        shard_of(topic, queue_id, self.shards)
    }

    /// The node owning `shard`, as last seen.
    pub fn owner(&self, shard: ShardId) -> Option<Arc<NodeInfo>> {
        self.read().owners.get(shard as usize).cloned().flatten()
    }

    /// The node owning the shard of a queue, as last seen.
    pub fn owner_of(&self, topic: &str, queue_id: u32) -> Option<Arc<NodeInfo>> {
        self.owner(self.shard_of(topic, queue_id))
    }

    /// Whether `shard` is open for writing here.
    pub fn is_local_shard(&self, shard: ShardId) -> bool {
        self.read().local.get(shard as usize).copied().unwrap_or(false)
    }

    /// Whether the queue's shard is open for writing here. System topics (`rmq_sys_*`) are
    /// always local.
    pub fn is_local(&self, topic: &str, queue_id: u32) -> bool {
        topic.starts_with(SYSTEM_TOPIC_PREFIX) || self.is_local_shard(self.shard_of(topic, queue_id))
    }

    /// The shards open here.
    pub fn local_shards(&self) -> Vec<ShardId> {
        self.read().local.iter().enumerate().filter(|(_, l)| **l).map(|(i, _)| i as ShardId).collect()
    }

    /// Every live node (this one included), by id.
    pub fn nodes(&self) -> Vec<Arc<NodeInfo>> {
        let mut v: Vec<_> = self.read().nodes.values().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    pub fn node(&self, node_id: &str) -> Option<Arc<NodeInfo>> {
        self.read().nodes.get(node_id).cloned()
    }

    /// Replaces the membership and ownership seen in the store (membership loop).
    pub fn set_membership(&self, nodes: Vec<NodeInfo>, owners: Vec<Option<String>>) {
        let mut st = self.write();
        let mut map: HashMap<String, Arc<NodeInfo>> =
            nodes.into_iter().map(|n| (n.node_id.clone(), Arc::new(n))).collect();
        map.insert(self.local.node_id.clone(), self.local.clone());
        st.owners = (0..self.shards as usize)
            .map(|i| owners.get(i).cloned().flatten().and_then(|id| map.get(&id).cloned()))
            .collect();
        st.nodes = map;
    }

    /// The node now holding what `node_id` held in its home log: itself while it is live, else
    /// the live node that adopted it (following adoptions of adopters), else `None`.
    pub fn home_holder(&self, node_id: &str) -> Option<Arc<NodeInfo>> {
        let st = self.read();
        let mut at = node_id;
        for _ in 0..8 {
            if let Some(n) = st.nodes.get(at) {
                return Some(n.clone());
            }
            at = st.adopted.get(at)?;
        }
        None
    }

    /// The live node now holding what was adopted from `node_id`'s home log (`None`: nothing
    /// was, or its adopter is gone too and nobody adopted that one).
    pub fn adopter_of(&self, node_id: &str) -> Option<Arc<NodeInfo>> {
        let by = self.read().adopted.get(node_id)?.clone();
        self.home_holder(&by)
    }

    /// Replaces who adopted whose home log (membership loop).
    pub fn set_adopted(&self, adopted: HashMap<String, String>) {
        self.write().adopted = adopted;
    }

    /// This node may serve its home log until `until` (`None`: not any more).
    pub fn set_home_until(&self, until: Option<std::time::Instant>) {
        *self.home_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Whether this node may serve its home log now.
    pub fn home_writable(&self) -> bool {
        self.home_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|d| std::time::Instant::now() < d)
    }

    /// Marks `shard` open (or closed) for writing here, and its owner accordingly.
    pub fn set_local(&self, shard: ShardId, open: bool) {
        let mut st = self.write();
        let i = shard as usize;
        if i >= st.local.len() {
            return;
        }
        st.local[i] = open;
        if open {
            st.owners[i] = Some(self.local.clone());
        } else if st.owners[i].as_ref().is_some_and(|o| o.node_id == self.local.node_id) {
            st.owners[i] = None;
        }
    }
}

/// Topics of node-local system queues (POP journal, timers, half messages): they stay in the
/// node's own log and are always local.
pub const SYSTEM_TOPIC_PREFIX: &str = "rmq_sys_";

impl crate::broker::QueueOwnership for ClusterView {
    fn owns(&self, topic: &str, queue_id: u32) -> bool {
        self.is_local(topic, queue_id)
    }

    fn home_writable(&self) -> bool {
        ClusterView::home_writable(self)
    }
}

/// What the membership loop asks the rest of the node to do when shards change hands.
/// Implemented by the server wiring (open/close the shard's log, load/drop the consumer
/// progress of its queues, update the view).
#[async_trait]
pub trait ShardHandler: Send + Sync + 'static {
    /// The lease of `shard` was acquired with `epoch`: open the shard (continuing from the
    /// manifest) and start serving it. An error releases the lease again.
    async fn acquire(&self, shard: ShardId, epoch: i64) -> anyhow::Result<()>;
    /// Hand `shard` over gracefully: stop writes, bring its tail to the object store, flush
    /// its consumer progress, close it. The lease is released after this returns.
    async fn release(&self, shard: ShardId) -> anyhow::Result<()>;
    /// The lease of `shard` was lost (not renewed in time, or taken): stop writing at once;
    /// nothing more of it may reach the manifest.
    async fn lost(&self, shard: ShardId);
    /// This node enters its home log; other nodes adopted its scheduled and half messages
    /// below `cut` (all zero: none ever). `unapplied`: the last adoption happened while it
    /// was gone: give those messages up before serving the home log again.
    async fn enter_home(&self, cut: crate::metadata::HomeCut, unapplied: bool) -> anyhow::Result<()>;
    /// Adopt the pending scheduled and half messages of dead node `node_id`'s home log past
    /// `from` (what earlier adoptions took), from the object store; returns the new cut.
    async fn adopt_home(
        &self,
        node_id: &str,
        from: crate::metadata::HomeCut,
    ) -> anyhow::Result<crate::metadata::HomeCut>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_of_a_topic_spread_over_shards() {
        let shards = 12;
        let mut seen = std::collections::HashSet::new();
        for q in 0..12 {
            seen.insert(shard_of("TopicA", q, shards));
        }
        assert_eq!(seen.len(), 12);
        assert_eq!(parse_shard_log_id(&shard_log_id(7)), Some(7));
        assert_eq!(parse_shard_log_id("node-a"), None);
    }
}
