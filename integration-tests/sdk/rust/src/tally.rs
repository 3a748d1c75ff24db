//! Bookkeeping for received messages: distinct bodies, duplicates, unexpected bodies.

use std::collections::{BTreeMap, BTreeSet};

/// What a consumer has seen so far, checked against the expected bodies `<prefix>-0..count`.
#[derive(Debug, Default)]
pub struct Tally {
    prefix: String,
    count: usize,
    /// body index → message id of its first delivery
    pub received: BTreeMap<usize, String>,
    /// message ids delivered more than once (same id or same body again)
    pub duplicates: Vec<String>,
    /// bodies that are not `<prefix>-<i>` with `i < count`
    pub unexpected: Vec<String>,
    seen_ids: BTreeSet<String>,
}

impl Tally {
    pub fn new(prefix: &str, count: usize) -> Self {
        Tally { prefix: prefix.to_string(), count, ..Tally::default() }
    }

    /// Records one delivery; returns true if it was a new, expected message.
    pub fn record(&mut self, message_id: &str, body: &[u8]) -> bool {
        let text = String::from_utf8_lossy(body);
        let index = text
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.count);
        let Some(index) = index else {
            self.unexpected.push(truncate(&text));
            return false;
        };
        let fresh_id = self.seen_ids.insert(message_id.to_string());
        if !fresh_id || self.received.contains_key(&index) {
            self.duplicates.push(message_id.to_string());
            return false;
        }
        self.received.insert(index, message_id.to_string());
        true
    }

    pub fn complete(&self) -> bool {
        self.received.len() == self.count
    }

    /// Indices of expected bodies not received yet.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.count).filter(|i| !self.received.contains_key(i)).collect()
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_duplicate_and_unexpected() {
        let mut t = Tally::new("p", 2);
        assert!(t.record("a", b"p-0"));
        assert!(!t.record("a", b"p-0"));
        assert!(!t.record("x", b"p-7"));
        assert!(!t.record("y", b"other"));
        assert_eq!(t.missing(), vec![1]);
        assert!(t.record("b", b"p-1"));
        assert!(t.complete());
        assert_eq!(t.duplicates, vec!["a".to_string()]);
        assert_eq!(t.unexpected.len(), 2);
    }
}
