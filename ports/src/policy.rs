//! Time to live and value limits: per-cache defaults, and the policy that
//! lets configuration override them.

use std::collections::BTreeMap;
use std::time::Duration;

/// How long an entry lives. Zero means "never expires", as in the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ttl(Duration);

impl Ttl {
    /// The seed's default: 10 minutes.
    pub const DEFAULT: Ttl = Ttl(Duration::from_secs(600));
    /// Entries never expire.
    pub const NEVER: Ttl = Ttl(Duration::ZERO);

    /// A TTL of `secs` seconds; 0 means never expires.
    pub const fn from_secs(secs: u64) -> Self {
        Ttl(Duration::from_secs(secs))
    }

    /// A TTL of `duration`; zero means never expires.
    pub const fn new(duration: Duration) -> Self {
        Ttl(duration)
    }

    /// The expiry to hand to a backend: `None` when the entry never expires.
    pub fn expiry(self) -> Option<Duration> {
        if self.0.is_zero() { None } else { Some(self.0) }
    }
}

/// The largest encoded value a cache stores by default: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// What configuration decides for every cache: which TTL each gets (a
/// per-namespace override beats a global default, which beats the cache
/// definition's own), and the largest value a cache accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    default: Option<Ttl>,
    per_namespace: BTreeMap<String, Ttl>,
    max_value_bytes: usize,
    ttl_jitter: f64,
    negative_per_namespace: BTreeMap<String, Ttl>,
    single_flight: bool,
    load_timeout: Duration,
    write_fence: Duration,
    decode_memo_entries: usize,
    key_buckets: u16,
}

/// Each write's TTL is shortened by a random amount of up to this fraction.
pub const DEFAULT_TTL_JITTER: f64 = 0.1;
/// The bound on one read-through load.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write fence holds a key (see [`crate::TypedCache::fence`]):
/// the load bound, and a second more for the fill that follows a load.
pub const DEFAULT_WRITE_FENCE: Duration = Duration::from_secs(6);
/// How many decoded values a cache that asks for a memo keeps by their
/// bytes (see [`crate::TypedCache::with_decode_memo`]).
pub const DEFAULT_DECODE_MEMO_ENTRIES: usize = 1024;

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            default: None,
            per_namespace: BTreeMap::new(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            ttl_jitter: DEFAULT_TTL_JITTER,
            negative_per_namespace: BTreeMap::new(),
            single_flight: true,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            write_fence: DEFAULT_WRITE_FENCE,
            decode_memo_entries: DEFAULT_DECODE_MEMO_ENTRIES,
            key_buckets: 0,
        }
    }
}

impl CachePolicy {
    /// A policy that overrides no TTL and allows values up to 1 MiB.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses to store encoded values larger than `bytes`.
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The largest encoded value a cache stores.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// Sets a TTL for every cache that has no override of its own.
    pub fn with_default_ttl(mut self, ttl: Ttl) -> Self {
        self.default = Some(ttl);
        self
    }

    /// Sets the TTL of the cache whose namespace is `namespace`.
    pub fn with_ttl_override(mut self, namespace: impl Into<String>, ttl: Ttl) -> Self {
        self.per_namespace.insert(namespace.into(), ttl);
        self
    }

    /// The same policy with another TTL jitter (a fraction, 0 to 1).
    pub fn with_ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction;
        self
    }

    /// The TTL jitter: each write's TTL is shortened by up to this fraction.
    pub fn ttl_jitter(&self) -> f64 {
        self.ttl_jitter
    }

    /// The same policy remembering "no such entry" for `ttl` in `namespace`
    /// (0: never), whatever the cache's definition asks for.
    pub fn with_negative_ttl_override(mut self, namespace: impl Into<String>, ttl: Ttl) -> Self {
        self.negative_per_namespace.insert(namespace.into(), ttl);
        self
    }

    /// The negative TTL of `namespace`: its override, else what its
    /// definition declares.
    pub fn resolve_negative_ttl(&self, namespace: &str, declared: Option<Ttl>) -> Option<Ttl> {
        self.negative_per_namespace
            .get(namespace)
            .copied()
            .or(declared)
    }

    /// The same policy with single-flight loading on or off.
    pub fn with_single_flight(mut self, on: bool) -> Self {
        self.single_flight = on;
        self
    }

    /// Whether concurrent loads of one key share one loader call.
    pub fn single_flight(&self) -> bool {
        self.single_flight
    }

    /// The same policy with another bound on loads.
    pub fn with_load_timeout(mut self, bound: Duration) -> Self {
        self.load_timeout = bound;
        self
    }

    /// The bound on one read-through load.
    pub fn load_timeout(&self) -> Duration {
        self.load_timeout
    }

    /// The same policy with another write fence (see [`crate::TypedCache::fence`]).
    pub fn with_write_fence(mut self, fence: Duration) -> Self {
        self.write_fence = fence;
        self
    }

    /// How long a write fence holds a key.
    pub fn write_fence(&self) -> Duration {
        self.write_fence
    }

    /// The same policy with another size of decode memo (0: none).
    pub fn with_decode_memo_entries(mut self, entries: usize) -> Self {
        self.decode_memo_entries = entries;
        self
    }

    /// How many decoded values a cache that asks for a memo keeps by their
    /// bytes (see [`crate::TypedCache::with_decode_memo`]).
    pub fn decode_memo_entries(&self) -> usize {
        self.decode_memo_entries
    }

    /// The same policy grouping the keys of every cache that allows it
    /// ([`crate::CacheDefinition::KEY_BUCKETS`]) in `buckets` hash-tag
    /// buckets (0: none; see [`crate::bucketed_key`]). For a Redis Cluster,
    /// where a batch's keys then fall in at most `buckets` slots, so an
    /// `MGET` of 100 keys is at most `buckets` commands instead of one per
    /// key. Every instance reading those caches must use the same number:
    /// it is part of every key.
    pub fn with_key_buckets(mut self, buckets: u16) -> Self {
        self.key_buckets = buckets;
        self
    }

    /// The hash-tag buckets of the caches that allow them (0: none).
    pub fn key_buckets(&self) -> u16 {
        self.key_buckets
    }

    /// The TTL for the cache `namespace`, whose definition asks for `declared`.
    pub fn resolve_ttl(&self, namespace: &str, declared: Ttl) -> Ttl {
        self.per_namespace
            .get(namespace)
            .copied()
            .or(self.default)
            .unwrap_or(declared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ttl_means_no_expiry() {
        assert_eq!(Ttl::from_secs(0).expiry(), None);
        assert_eq!(Ttl::from_secs(5).expiry(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn namespace_override_beats_default_which_beats_declared() {
        let declared = Ttl::from_secs(600);
        let policy = CachePolicy::new();
        assert_eq!(policy.resolve_ttl("a", declared), declared);
        let policy = policy.with_default_ttl(Ttl::from_secs(60));
        assert_eq!(policy.resolve_ttl("a", declared), Ttl::from_secs(60));
        let policy = policy.with_ttl_override("a", Ttl::from_secs(5));
        assert_eq!(policy.resolve_ttl("a", declared), Ttl::from_secs(5));
        assert_eq!(policy.resolve_ttl("b", declared), Ttl::from_secs(60));
    }
}
