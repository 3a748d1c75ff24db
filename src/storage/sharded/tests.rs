//! Tests of ShardedLog.
