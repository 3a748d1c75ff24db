//! Which messages a consumer wants: TAG expressions (`*`, `a || b`) and SQL92 expressions
//! ([`sql92`]), parsed once per receive, and how the receive path applies them to a stored
//! record (a SQL filter sees the message a reference record points to, a tag filter decides
//! on the reference itself).

pub mod sql92;

use std::collections::HashSet;
use std::sync::Arc;

use super::Broker;
use super::error::{BrokerError, BrokerResult};
use crate::storage::{StoredMessage, record::keys};

/// Which messages a consumer wants.
#[derive(Debug, Clone)]
pub enum Filter {
    All,
    /// Tags joined by `||` in the expression.
    Tags(HashSet<String>),
    /// A SQL92 expression over the message's properties.
    Sql(Arc<sql92::SqlFilter>),
}

/// `text` for an error message, shortened.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("\"{}...\"", &text[..cut]),
        None => format!("\"{text}\""),
    }
}

impl Filter {
    /// Parses a TAG expression: `*` or empty means all, otherwise tags split on `||`.
    pub fn tags(expression: &str) -> BrokerResult<Filter> {
        let e = expression.trim();
        if e.is_empty() || e == "*" {
            return Ok(Filter::All);
        }
        let tags: HashSet<String> =
            e.split("||").map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
        if tags.is_empty() {
            return Err(BrokerError::IllegalFilterExpression(format!("tag expression `{e}` names no tag")));
        }
        Ok(Filter::Tags(tags))
    }

    /// Parses a SQL92 expression (cached by text), refusing a bad one with where it is wrong.
    pub fn sql(expression: &str) -> BrokerResult<Filter> {
        sql92::compile(expression).map(Filter::Sql).map_err(|e| {
            BrokerError::IllegalFilterExpression(format!("invalid SQL92 filter expression {}: {e}", quoted(expression)))
        })
    }

    /// A tag filter's accepted tag hashes (as the queue index stores them): a message whose
    /// hash is not among them is rejected without reading it. `None` for other filters.
    pub(super) fn tag_hashes(&self) -> Option<HashSet<u64>> {
        match self {
            Filter::Tags(tags) => Some(tags.iter().map(|t| super::message::tag_hash(Some(t))).collect()),
            Filter::All | Filter::Sql(_) => None,
        }
    }

    /// Whether the consumer wants `m` (for a SQL filter, `m` must not be a reference record:
    /// see [`Broker::admit`]).
    pub(super) fn matches(&self, m: &StoredMessage) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => m.properties.get(keys::TAGS).is_some_and(|t| tags.contains(t)),
            Filter::Sql(sql) => sql.matches(&m.properties),
        }
    }
}

impl Broker {
    /// A record read from a queue as a consumer with `filter` gets it: the message (a
    /// reference resolved), or `None` if the filter rejects it or the referenced message is
    /// gone. A tag filter decides on the record itself (a reference carries the tag), so a
    /// rejected reference costs no read of the message; a SQL filter needs all the message's
    /// properties, so it sees the resolved message.
    pub(super) fn admit(&self, m: StoredMessage, filter: &Filter) -> BrokerResult<Option<StoredMessage>> {
        let sql = matches!(filter, Filter::Sql(_));
        if !sql && !filter.matches(&m) {
            return Ok(None);
        }
        let Some(m) = self.resolve(m)? else { return Ok(None) };
        Ok((!sql || filter.matches(&m)).then_some(m))
    }
}
