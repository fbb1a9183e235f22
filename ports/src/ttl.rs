//! Time to live: per-cache defaults, and the policy that lets configuration
//! override them.

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

/// Which TTL each cache gets: a per-namespace override beats a global
/// default, which beats the cache definition's own default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TtlPolicy {
    default: Option<Ttl>,
    per_namespace: BTreeMap<String, Ttl>,
}

impl TtlPolicy {
    /// A policy that overrides nothing: every cache uses its definition's TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a TTL for every cache that has no override of its own.
    pub fn with_default(mut self, ttl: Ttl) -> Self {
        self.default = Some(ttl);
        self
    }

    /// Sets the TTL of the cache whose namespace is `namespace`.
    pub fn with_override(mut self, namespace: impl Into<String>, ttl: Ttl) -> Self {
        self.per_namespace.insert(namespace.into(), ttl);
        self
    }

    /// The TTL for the cache `namespace`, whose definition asks for `declared`.
    pub fn resolve(&self, namespace: &str, declared: Ttl) -> Ttl {
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
        let policy = TtlPolicy::new();
        assert_eq!(policy.resolve("a", declared), declared);
        let policy = policy.with_default(Ttl::from_secs(60));
        assert_eq!(policy.resolve("a", declared), Ttl::from_secs(60));
        let policy = policy.with_override("a", Ttl::from_secs(5));
        assert_eq!(policy.resolve("a", declared), Ttl::from_secs(5));
        assert_eq!(policy.resolve("b", declared), Ttl::from_secs(60));
    }
}
