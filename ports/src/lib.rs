//! # ports — the generic cache core
//!
//! This crate holds what every cache in the service shares and nothing that is
//! specific to users, to a runtime or to a driver:
//!
//! - [`CacheBackend`]: the byte-level port every storage adapter implements
//!   (Redis, in-memory, no-op) and every decorator wraps (timeout, circuit
//!   breaker, near cache, fills written behind, metrics), each stacking on the
//!   port without its callers knowing.
//! - [`CacheDefinition`]: binds a key type, a value type, a namespace, a default
//!   TTL and a codec at compile time, so two caches can never be confused.
//! - [`TypedCache`]: the Rust form of the seed's `AsyncCacheBase[K, V]`, with
//!   its "cache is a luxury" semantics: backend failures are logged and become
//!   misses, corrupt entries are removed, only encoding errors reach the caller.
//! - Read-through loading ([`TypedCache::get_or_load`], [`TypedCache::mget_or_load`]):
//!   single-flight, the write fence against stale fills, and one seam
//!   ([`CacheObserver`]) where every outcome can be observed.
//! - [`WriteBatch`]: writes to several typed caches in one round trip.

mod backend;
mod batch;
mod codec;
mod error;
mod key;
mod limiter;
mod load;
mod managed;
mod memo;
mod policy;
mod redact;
#[cfg(any(test, feature = "mocks"))]
pub mod testing;
mod typed;

#[cfg(any(test, feature = "mocks"))]
pub use backend::MockCacheBackend;
pub use backend::{CacheBackend, Entry, Remaining, SharedBackend};
pub use batch::WriteBatch;
pub use codec::{Codec, JsonCodec, TextCodec};
pub use error::{BackendError, CacheError, CodecError};
pub use key::{CacheKey, bucketed_key, full_key, key_bucket};
pub use limiter::LogLimiter;
pub use load::{CacheEvent, CacheObserver, LoadError, Timer};
pub use managed::{CacheInfo, ManagedCache};
pub use memo::MemoTable;
pub use policy::{
    CachePolicy, DEFAULT_DECODE_MEMO_ENTRIES, DEFAULT_LOAD_TIMEOUT, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_TTL_JITTER, DEFAULT_WRITE_FENCE, Ttl,
};
pub use redact::{LoggedKey, show_keys_in_logs};
pub use typed::{CacheDefinition, Companions, LOG_WINDOW, MAX_BATCH, TypedCache, WRITE_FENCE};
