//! Cluster: messages that become deliverable on a node owning no queue of their topic. A
//! scheduled message is kept in the log of the node that accepted it, and a half message too;
//! when it is due or committed, the queues of its topic may have moved to other nodes (a node
//! joined, left, or took shards over). Such a message is handed, as a full copy, to a node that
//! owns a queue of the topic ([`QueueHandOver`], the protocol layer's peer call), which stores it
//! like a send ([`Broker::accept_handed_over`]). The giving node records the firing or the
//! commit only after the owner stored the copy, so a crash in between delivers it twice, never
//! zero times (at least once, like a producer's retried send).

use std::sync::Arc;

use async_trait::async_trait;

use super::error::{BrokerError, BrokerResult};
use super::{Broker, TopicEntry};
use crate::storage::AppendMessage;

/// Where messages go that are due on a node owning no queue of their topic.
#[async_trait]
pub trait QueueHandOver: Send + Sync + 'static {
    /// Stores `messages` (full copies; `topic` and `queue_id` are chosen by the receiver) in
    /// queues of `topic` (internal name, `queue_nums` queues) on a node owning one. `Ok` once
    /// that node stored them as durably as its sends.
    async fn hand_over(&self, topic: &str, queue_nums: u32, messages: Vec<AppendMessage>) -> BrokerResult<()>;
}

impl Broker {
    /// Cluster: where due messages of topics with no queue here go (set once, at start).
    pub fn set_queue_hand_over(&self, hand_over: Arc<dyn QueueHandOver>) {
        let _ = self.inner.hand_over.set(hand_over);
    }

    /// Hands `messages` of `topic` over to a node owning one of its queues; `NotOwner` when
    /// there is no way to (not clustered, no such node reachable).
    pub(super) async fn hand_over(&self, topic: &TopicEntry, messages: Vec<AppendMessage>) -> BrokerResult<()> {
        let Some(target) = self.inner.hand_over.get() else {
            return Err(BrokerError::NotOwner(format!(
                "no queue of topic `{}` is served by this node",
                topic.record.name
            )));
        };
        let n = messages.len();
        target.hand_over(&topic.record.name, topic.record.queue_nums.max(1), messages).await?;
        tracing::info!(topic = %topic.record.name, messages = n, "due messages handed over to a node serving the topic");
        Ok(())
    }

    /// Another node hands over messages of `topic` that became deliverable there (fired timers,
    /// committed transactions): stored in queues of the topic served here, as a send would be.
    /// Returns how many were stored. `NotOwner` when no queue of the topic is served here (the
    /// giver tries another node or later).
    pub async fn accept_handed_over(&self, topic: &str, messages: Vec<AppendMessage>) -> BrokerResult<usize> {
        let entry = self.client_topic(topic).await?;
        let mut appends = Vec::with_capacity(messages.len());
        for mut m in messages {
            m.queue_id = self.pick_queue(&entry, None)?;
            m.topic = Arc::from(entry.record.name.as_str());
            appends.push(m);
        }
        if appends.is_empty() {
            return Ok(0);
        }
        let results = self.inner.log.append(appends).await?;
        entry.arrivals.notify_waiters();
        if entry.record.durability == crate::metadata::Durability::ObjectStore {
            self.inner.log.persist_remote(&results).await?;
        }
        Ok(results.len())
    }
}
