//! SQL92 message filters, as Apache RocketMQ 5 evaluates them (its `filter` module:
//! `SelectorParser.jj`, `ComparisonExpression`, `LogicExpression`, `UnaryExpression`), over a
//! message's properties. Responsible for parsing an expression once ([`compile`], cached by
//! text) and deciding per message whether it matches ([`SqlFilter::matches`]).
//!
//! # What an expression sees
//!
//! Every property of the stored message, by its exact (case-sensitive) name: the user
//! properties, and the system properties Apache keeps in the same map: `TAGS` (the tag),
//! `KEYS` (the keys joined by a space), `UNIQ_KEY` (the message id), `__SHARDINGKEY` (the
//! message group), `TIMER_DELIVER_MS`, `TRACE_CONTEXT`, `__BORNHOST`, ... All values are
//! strings; a property that is not set is NULL. Identifiers are ASCII letters, digits, `_`
//! and `$` (not starting with a digit); keywords (`AND`, `IN`, `TRUE`, ...) are reserved.
//!
//! # Syntax
//!
//! `=`, `<>` (and `!=`), `>`, `>=`, `<`, `<=`, `[NOT] BETWEEN a AND b`, `[NOT] IN ('x', ...)`
//! (strings only), `IS [NOT] NULL`, `[NOT] CONTAINS 'x'`, `[NOT] STARTSWITH 'x'`,
//! `[NOT] ENDSWITH 'x'`, `AND`, `OR`, `NOT`, parentheses, unary `+`/`-`; literals `'text'`
//! (`''` is a quote), integers (optional `L` suffix), floats (`1.5`, `.5`, `5.`, `1e3`),
//! `TRUE`, `FALSE`, `NULL`; keywords in any case; `--` and `/* */` comments. Precedence,
//! lowest first: `OR`; `AND`; `=` `<>` `IS`; `>` `>=` `<` `<=` `BETWEEN` `IN` `CONTAINS`...;
//! unary `NOT` `-` `+`. **`NOT` binds to the operand right after it**, as in Apache:
//! `NOT a = 1` is `(NOT a) = 1` (which never matches); write `NOT (a = 1)` or `a <> 1`.
//!
//! # Semantics (Apache's, with properties as strings)
//!
//! * A message matches when the expression is TRUE; FALSE, unknown (NULL) and a failed
//!   evaluation do not match.
//! * Three-valued logic: a comparison with a missing property is unknown; `NOT unknown` is
//!   unknown; `AND` is FALSE if any operand is FALSE, else unknown if any is unknown; `OR` is
//!   TRUE if any operand is TRUE, else unknown if any is unknown. So `a <> 1`, `a NOT IN (..)`,
//!   `a NOT BETWEEN ..` do not match a message without `a`.
//! * Exceptions: `IS NULL` is TRUE for a missing property; `x = y` with both missing is TRUE;
//!   `CONTAINS`/`STARTSWITH`/`ENDSWITH` (and their `NOT` forms) are FALSE, never unknown, for a
//!   missing property or an empty search string.
//! * Comparing a property (a string) with a number converts the string to the number's type
//!   with Java's rules: `Integer.valueOf` for an integer literal that fits 32 bits (so
//!   `a = 5` and `a > 5` fail for `a = '5.0'`, `' 5'` or `'x'`), `Long.valueOf` for a larger
//!   one, `Double.valueOf` for a float literal (`a > 4.5` reads `'5'`, `' 5 '`, `'1e1'`,
//!   `'NaN'`, which is above every number). A string that does not convert **fails the whole
//!   expression** (even inside an `OR` that another operand would make TRUE: Apache throws;
//!   operands are evaluated left to right and `AND`/`OR` stop at the first deciding one).
//! * Two properties compared with `>`-like operators are both read as doubles (or fail);
//!   with `=` they compare as strings. A string literal cannot be used with `>`-like
//!   operators (refused when parsed).
//! * `a = TRUE` is TRUE when `a` is `true` in any case, FALSE for any other value (so
//!   `a = FALSE` matches `'no'`), unknown when `a` is missing; `TRUE = a` fails (Apache casts
//!   the wrong way round). A property alone as a condition (`WHERE a`) is FALSE
//!   when set (its value is a string, not a boolean) and unknown when missing.
//! * `IN` lists hold strings only and compare exactly; `IN` needs a property on its left.
//! * Refused when parsed, as Apache refuses them: `= NULL` (use `IS NULL`), string or
//!   boolean literals with `>`-like operators and BETWEEN, BETWEEN with constant bounds in
//!   the wrong order, integer literals beyond 64 bits, float literals that are infinite or
//!   below 4.9E-324 (so `0.0`: write `0`), a value where a condition is needed (`a AND 1`).
//!
//! # Where this gateway differs from Apache
//!
//! * Extra input after a complete expression is refused (Apache ignores it: `a = 1 b` is
//!   `a = 1` there); `!=` is accepted as `<>`; a `--` comment may end the expression without
//!   a line break.
//! * Expressions are limited to [`MAX_LEN`] bytes and [`MAX_DEPTH`] levels of nesting.
//! * Non-ASCII digits and hexadecimal floats in property values, which Java's number parsing
//!   accepts, are not numbers here.

mod eval;
mod lex;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub use eval::Lookup;

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting accepted (parentheses, unary operators, and operators applied to the
/// result of other operators).
pub const MAX_DEPTH: usize = 64;
/// Parsed expressions remembered by text (as Apache's parser cache: receives repeat the same
/// few expressions).
const CACHE_SIZE: usize = 256;

/// A refused expression: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// Byte offset of the problem in the expression.
    pub offset: usize,
    /// 1-based line and column (in characters) of the problem.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl SqlError {
    pub(crate) fn at(src: &str, offset: usize, message: impl Into<String>) -> SqlError {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line_start = before.rfind(['\n', '\r']).map_or(0, |i| i + 1);
        let line = 1 + before.matches('\n').count() + before.matches('\r').count() - before.matches("\r\n").count();
        let column = 1 + before[line_start..].chars().count();
        SqlError { offset, line, column, message: message.into() }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 1 {
            write!(f, "at line {}, column {}: {}", self.line, self.column, self.message)
        } else {
            write!(f, "at column {}: {}", self.column, self.message)
        }
    }
}

/// A parsed SQL92 filter.
#[derive(Debug)]
pub struct SqlFilter {
    text: String,
    expr: parse::Expr,
}

impl SqlFilter {
    /// The expression as the client sent it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether a message with these properties matches.
    pub fn matches(&self, properties: &dyn Lookup) -> bool {
        eval::matches(&self.expr, properties)
    }
}

/// Parses `text` without the cache.
pub fn parse(text: &str) -> Result<SqlFilter, SqlError> {
    if text.len() > MAX_LEN {
        let message = format!("the expression is {} bytes long, more than the limit of {MAX_LEN}", text.len());
        return Err(SqlError::at(text, MAX_LEN, message));
    }
    Ok(SqlFilter { text: text.to_string(), expr: parse::parse(text)? })
}

type Cache = Mutex<HashMap<String, Result<Arc<SqlFilter>, SqlError>>>;

/// Parses `text`, or returns the filter (or the error) parsed earlier from the same text.
pub fn compile(text: &str) -> Result<Arc<SqlFilter>, SqlError> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    if text.len() > MAX_LEN {
        return parse(text).map(Arc::new);
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(text) {
        return hit.clone();
    }
    let parsed = parse(text).map(Arc::new);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_SIZE {
        c.clear();
    }
    c.insert(text.to_string(), parsed.clone());
    parsed
}
