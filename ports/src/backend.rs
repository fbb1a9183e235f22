//! The byte-level backend port: what a storage technology must offer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BackendError;

/// A backend shared by every typed cache, chosen at run time by configuration.
pub type SharedBackend = Arc<dyn CacheBackend>;

/// One entry of a multi-set: the full (namespaced) key, the encoded value,
/// its time to live (`None` = never expires), and whether it may replace a
/// value already there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key, namespace included (see [`crate::full_key`]).
    pub key: String,
    /// The encoded value.
    pub value: Bytes,
    /// How long the entry lives; `None` means it never expires.
    pub ttl: Option<Duration>,
    /// Store only where the key holds nothing (Redis `SET ... NX`): how a
    /// read-through fill never overwrites what a writer put there since the
    /// load began (a newer value or a write fence).
    pub only_if_absent: bool,
}

impl Entry {
    /// An entry that replaces whatever `key` holds.
    pub fn new(key: String, value: Bytes, ttl: Option<Duration>) -> Self {
        Self {
            key,
            value,
            ttl,
            only_if_absent: false,
        }
    }

    /// The same entry, stored only where `key` holds nothing.
    #[must_use]
    pub fn if_absent(mut self) -> Self {
        self.only_if_absent = true;
        self
    }
}

/// What a backend knows of a stored entry's remaining time to live, as
/// [`CacheBackend::mget_with_ttl`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// The backend cannot tell (the default of the port: a caller that needs
    /// a bound must supply its own).
    Unknown,
    /// The entry never expires.
    Forever,
    /// The entry expires after this long, counted from when the backend
    /// answered.
    For(Duration),
}

/// A byte-level key-value store with expiry: the outbound port of every cache.
///
/// Boxed futures (`async_trait`) because the backend is chosen by
/// configuration and decorators wrap one another behind `Arc<dyn CacheBackend>`.
///
/// # Contract (every implementation, checked by the contract suite in `tests`)
/// - Keys are opaque strings; values are opaque bytes. A backend never
///   interprets, trims or re-encodes either.
/// - Every method may fail with a [`BackendError`]; none panics on any input.
/// - An expired entry is indistinguishable from an absent one.
/// - Methods are safe to call concurrently from many tasks.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// A short, stable name for logs and `/health` (`"redis"`, `"memory"`, `"noop"`).
    fn name(&self) -> &'static str;

    /// Returns the value stored at `key`, or `Ok(None)` when there is none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError>;

    /// [`CacheBackend::get`] answered at once, where this backend can: it
    /// holds the entry, or knows it is absent, in the process (the memory
    /// backend; a near cache's copy). `None` when it cannot (it would have
    /// to wait, for Redis say): then ask `get`. A `Some` is what `get` would
    /// answer at this moment; it never waits, does no I/O and cannot fail.
    ///
    /// The provided implementation answers `None`, which is always right. A
    /// decorator forwards it, doing for it what it does for a successful
    /// `get` (counting, timing), or nothing where it only bounds waiting.
    /// Why it exists: a hit served from memory through the stack's boxed
    /// `get` futures cost more than the lookup itself (docs/PERFORMANCE.md,
    /// "Cutting the hit path again").
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        let _ = key;
        None
    }

    /// Stores `value` at `key`, replacing any previous value and its expiry.
    /// `ttl = None` stores the entry without expiry.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>)
    -> Result<(), BackendError>;

    /// Removes `key`. Returns whether an entry was removed.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;

    /// Removes `key` only if it still holds exactly `expected`, atomically.
    /// Returns whether an entry was removed. Used to drop a corrupt entry
    /// without deleting a valid value written meanwhile by someone else.
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError>;

    /// Returns the values of `keys` in the same order, `None` where absent,
    /// in ONE round trip. The result has exactly `keys.len()` elements.
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError>;

    /// Stores every entry, each with its own TTL, in ONE (pipelined) round
    /// trip. An entry marked [`Entry::only_if_absent`] is stored only if its
    /// key holds no (unexpired) value at that moment, atomically per key.
    /// Not atomic across entries: on error, some entries may have been stored.
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError>;

    /// Stores a read-through fill: the entries a load from the store of
    /// record produced (the value `only_if_absent`, and its companions),
    /// which must not reach the backend after `not_after` (when a write's
    /// fence may have expired; see `TypedCache::fence`).
    ///
    /// Unlike [`CacheBackend::mset`], `Ok` means *accepted*: a backend or a
    /// decorator may write the fill after returning, coalesced with other
    /// fills into fewer round trips, and then drops any not written by
    /// `not_after` (a fill is a luxury: losing one costs a later miss). A
    /// read right after `fill` returns may not see it yet.
    ///
    /// The provided implementation writes at once with `mset` (the check
    /// against `not_after` is the caller's, made just before). Only a
    /// decorator that defers fills overrides it; the others need not forward
    /// it, so such a decorator goes outermost.
    async fn fill(&self, entries: Vec<Entry>, not_after: Instant) -> Result<(), BackendError> {
        let _ = not_after;
        self.mset(&entries).await
    }

    /// Like [`CacheBackend::mget`], with each found entry's remaining time to
    /// live, read atomically with its value. What a near cache needs, so that
    /// a copy kept in the process never outlives the entry it copies.
    ///
    /// The provided implementation calls `mget` and reports
    /// [`Remaining::Unknown`]; a backend that knows better overrides it, and a
    /// decorator forwards it to the backend it wraps (else the TTLs are lost).
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        Ok(self
            .mget(keys)
            .await?
            .into_iter()
            .map(|value| value.map(|value| (value, Remaining::Unknown)))
            .collect())
    }

    /// Checks that the backend answers. Not bounded by the per-operation
    /// timeout decorator: the caller (the health check) sets its own bound.
    async fn ping(&self) -> Result<(), BackendError>;
}
