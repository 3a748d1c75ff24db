//! Hash maps looked up on every send and receive (topics, queues, per-connection admission,
//! metric label sets, consumer states), hashed with foldhash instead of the standard library's
//! SipHash-1-3.
//!
//! Their keys are names and socket addresses: SipHash took ≈ 90 instructions a lookup there,
//! about 26 lookups and 2 400 instructions per 1 KiB send in a callgrind profile of the gateway
//! (docs/benchmarks.md, "Instructions per send"). foldhash is the default hasher of hashbrown
//! (already in the dependency tree). Its `RandomState` is seeded from a random per-process seed,
//! so a client that chooses names (topics a producer creates with `autoCreateTopicEnable`)
//! cannot compute in advance which of them share a bucket. Unlike SipHash it is not a keyed
//! cryptographic hash, which would also hold against an attacker timing many lookups to find
//! collisions; in maps of this size (topics, queues, connections, and label sets bounded by
//! `metrics.maxSeries`) such an attack buys little.

/// A `HashMap` with foldhash's per-process random seed. Make one with `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The same on hashbrown, for maps looked up by a borrowed form of a composite key
/// (`hashbrown::Equivalent`, which the standard map lacks): the consumer states, found once per
/// queue a receive looks at (`broker/states.rs`).
pub type FastBorrowMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
