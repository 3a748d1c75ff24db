//! An in-memory [`MessageLog`] for unit tests of the broker. Not durable; never used by
//! `serve`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{AppendMessage, AppendResult, MessageLog, QueueRange, StorageResult, StoredMessage, record::keys};

#[derive(Default)]
struct Inner {
    queues: HashMap<(Arc<str>, u32), Vec<StoredMessage>>,
    next_position: u64,
}

/// Messages kept in per-queue vectors.
#[derive(Default)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock can only come from a bug in this file; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl MessageLog for MemoryLog {
    async fn append(&self, messages: Vec<AppendMessage>) -> StorageResult<Vec<AppendResult>> {
        let mut inner = self.lock();
        let now = crate::clock::now_ms();
        let mut results = Vec::with_capacity(messages.len());
        for m in messages {
            let position = inner.next_position;
            inner.next_position += 1;
            let queue = inner.queues.entry((m.topic.clone(), m.queue_id)).or_default();
            let queue_offset = queue.len() as u64;
            queue.push(StoredMessage {
                topic: m.topic,
                queue_id: m.queue_id,
                queue_offset,
                log_position: position,
                store_timestamp_ms: now,
                born_timestamp_ms: m.born_timestamp_ms,
                flags: m.flags,
                tag_hash: m.tag_hash,
                properties: m.properties,
                body: m.body,
            });
            results.push(AppendResult { queue_offset, log_position: position, store_timestamp_ms: now });
        }
        Ok(results)
    }

    fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> StorageResult<Vec<StoredMessage>> {
        let inner = self.lock();
        let Some(queue) = inner.queues.get(&(Arc::from(topic), queue_id)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for m in queue.iter().skip(offset as usize).take(max_messages) {
            if !out.is_empty() && bytes + m.body.len() > max_bytes {
                break;
            }
            bytes += m.body.len();
            out.push(m.clone());
        }
        Ok(out)
    }

    fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        let inner = self.lock();
        let end = inner.queues.get(&(Arc::from(topic), queue_id)).map_or(0, |q| q.len() as u64);
        QueueRange { start: 0, end }
    }

    fn find_by_message_id(&self, message_id: &str) -> StorageResult<Vec<StoredMessage>> {
        let inner = self.lock();
        Ok(inner
            .queues
            .values()
            .flatten()
            .filter(|m| m.properties.get(keys::UNIQ_KEY) == Some(message_id))
            .cloned()
            .collect())
    }

    fn find_by_key(&self, topic: &str, key: &str, max: usize) -> StorageResult<Vec<StoredMessage>> {
        let inner = self.lock();
        let mut found: Vec<StoredMessage> = inner
            .queues
            .iter()
            .filter(|((t, _), _)| t.as_ref() == topic)
            .flat_map(|(_, q)| q.iter())
            .filter(|m| m.properties.get(keys::KEYS).is_some_and(|ks| ks.split(' ').any(|k| k == key)))
            .cloned()
            .collect();
        found.sort_by_key(|m| m.log_position);
        let skip = found.len().saturating_sub(max);
        Ok(found.split_off(skip))
    }

    fn hold_retention(&self, _holder: &'static str, _position: Option<u64>) {}

    async fn close(&self) -> StorageResult<()> {
        Ok(())
    }
}
