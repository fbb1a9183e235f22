//! A concurrent map of byte values bounded by bytes: the memory backend's
//! store and the near cache's L1.
//!
//! quick_cache (S3-FIFO eviction, bounded by weight, one lock per shard)
//! rather than moka: a read is a shard's read lock and a hash lookup, where
//! moka's also records the access for its policy: 1,236 instructions a
//! lookup against 282 (callgrind, a 150-byte value; docs/PERFORMANCE.md,
//! "Cutting the hit path again"). Neither user lets quick_cache expire
//! anything: each entry carries its own deadline, checked when touched.

use bytes::Bytes;
use foldhash::quality::RandomState;
use quick_cache::sync::Cache;

/// An entry whose weight is its key and its bytes.
pub(super) trait Weighed {
    /// The value's bytes.
    fn bytes(&self) -> &Bytes;
}

/// What an entry weighs against the bound: its key, its value and a rough
/// per-entry overhead.
#[derive(Clone)]
pub(super) struct ByBytes;

/// The overhead counted for each entry beside its key and value.
const ENTRY_OVERHEAD: usize = 64;

/// Entries of this weight are expected, to size the tables and the record
/// of recently evicted keys.
const TYPICAL_ENTRY_BYTES: u64 = 256;

impl<V: Weighed> quick_cache::Weighter<String, V> for ByBytes {
    fn weight(&self, key: &String, value: &V) -> u64 {
        (key.len() + value.bytes().len() + ENTRY_OVERHEAD) as u64
    }
}

/// Values by key, at most `max_bytes` of them (keys, values and overhead).
pub(super) type BoundedCache<V> = Cache<String, V, ByBytes, RandomState>;

/// An empty cache of at most `max_bytes`. Keys are hashed with foldhash
/// instead of SipHash: a quarter of the cost of hashing a key, still seeded
/// per process so keys cannot be chosen to collide.
pub(super) fn bounded<V: Weighed + Clone>(max_bytes: u64) -> BoundedCache<V> {
    let typical = usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES).unwrap_or(usize::MAX);
    Cache::with(
        typical.max(1),
        max_bytes,
        ByBytes,
        RandomState::default(),
        Default::default(),
    )
}
