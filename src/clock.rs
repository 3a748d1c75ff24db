//! Wall-clock time in epoch milliseconds: the one place every layer reads it (store and born
//! timestamps, visibility deadlines, receipt-handle expiry, metadata rows).

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
