//! Hash maps looked up on every send and receive (topics, queues, per-connection admission,
//! metric label sets), hashed with foldhash instead of the standard library's SipHash-1-3.
//!
//! Their keys are names and socket addresses: SipHash took ≈ 90 instructions a lookup there,
//! about 26 lookups and 2 300 instructions per 1 KiB send in a callgrind profile of the gateway
//! (docs/benchmarks.md, "Instructions per send"). foldhash is the default hasher of hashbrown
//! (already in the dependency tree) and is seeded per process, so keys a client chooses do not
//! collide predictably; none of these maps is keyed by anything a client can create without
//! bound (topics and groups are created by the operator or bounded by configuration, and
//! connections by the listener).

/// A `HashMap` with foldhash's per-process random seed. Make one with `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
