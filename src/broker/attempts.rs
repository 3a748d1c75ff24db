//! Recent receives by attempt id, so a consumer that retries a receive whose response it lost
//! (same `attempt_id`) gets the same messages back. Kept per client, so a departed client's
//! entries go with it (no scan), and bounded in number.

use std::collections::HashMap;

use super::message::DeliveredMessage;

/// Most receives remembered for `attempt_id` retries; beyond it new ones are not remembered.
const MAX_REMEMBERED_ATTEMPTS: usize = 16 * 1024;

/// (client id, group, topic, attempt id).
pub(super) type AttemptKey = (String, String, String, String);

/// A receive's messages, kept for a retry with the same `attempt_id`.
pub(super) struct CachedReceive {
    pub expires_ms: i64,
    pub messages: Vec<DeliveredMessage>,
}

/// The cache: client → (group, topic, attempt id) → receive.
#[derive(Default)]
pub(super) struct AttemptCache {
    by_client: HashMap<String, HashMap<(String, String, String), CachedReceive>>,
    len: usize,
}

impl AttemptCache {
    /// Remembers a receive unless the cache is full of unexpired ones.
    pub fn insert(&mut self, key: AttemptKey, cached: CachedReceive, now_ms: i64) {
        if self.len >= MAX_REMEMBERED_ATTEMPTS {
            // Rare (only when full): drop what expired.
            for receives in self.by_client.values_mut() {
                receives.retain(|_, c| c.expires_ms > now_ms);
            }
            self.by_client.retain(|_, receives| !receives.is_empty());
            self.len = self.by_client.values().map(HashMap::len).sum();
        }
        if self.len >= MAX_REMEMBERED_ATTEMPTS {
            return;
        }
        let (client, group, topic, attempt) = key;
        if self.by_client.entry(client).or_default().insert((group, topic, attempt), cached).is_none() {
            self.len += 1;
        }
    }

    /// Takes the receive remembered under `key`.
    pub fn take(&mut self, key: &AttemptKey) -> Option<CachedReceive> {
        let (client, group, topic, attempt) = key;
        let receives = self.by_client.get_mut(client)?;
        let taken = receives.remove(&(group.clone(), topic.clone(), attempt.clone()));
        if taken.is_some() {
            self.len -= 1;
        }
        if receives.is_empty() {
            self.by_client.remove(client);
        }
        taken
    }

    /// Forgets everything remembered for a client.
    pub fn forget_client(&mut self, client: &str) {
        if let Some(receives) = self.by_client.remove(client) {
            self.len -= receives.len();
        }
    }

    /// Gives back memory once the cache is mostly empty after a peak.
    pub fn shrink(&mut self) {
        super::shrink_if_sparse(&mut self.by_client);
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str, attempt: &str) -> AttemptKey {
        (client.into(), "g".into(), "t".into(), attempt.into())
    }

    #[test]
    fn entries_go_with_their_client_and_the_cache_is_bounded() {
        let mut c = AttemptCache::default();
        c.insert(key("c1", "a"), CachedReceive { expires_ms: 10, messages: vec![] }, 0);
        c.insert(key("c1", "b"), CachedReceive { expires_ms: 10, messages: vec![] }, 0);
        c.insert(key("c2", "a"), CachedReceive { expires_ms: 10, messages: vec![] }, 0);
        assert_eq!(c.len(), 3);
        assert!(c.take(&key("c1", "a")).is_some());
        assert!(c.take(&key("c1", "a")).is_none());
        c.forget_client("c1");
        assert_eq!(c.len(), 1);
        for i in 0..MAX_REMEMBERED_ATTEMPTS + 10 {
            c.insert(key("c3", &i.to_string()), CachedReceive { expires_ms: 5, messages: vec![] }, 0);
        }
        assert_eq!(c.len(), MAX_REMEMBERED_ATTEMPTS);
        // Once they expired, room is made.
        c.insert(key("c4", "x"), CachedReceive { expires_ms: 50, messages: vec![] }, 20);
        assert_eq!(c.len(), 1);
    }
}
