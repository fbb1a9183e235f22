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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    default: Option<Ttl>,
    per_namespace: BTreeMap<String, Ttl>,
    max_value_bytes: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            default: None,
            per_namespace: BTreeMap::new(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
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
