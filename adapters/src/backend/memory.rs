//! The in-memory backend: moka's concurrent cache, with per-entry TTL and a
//! capacity bounded in bytes.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use ports::{BackendError, CacheBackend, Entry};

/// Settings of [`MemoryBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// The most bytes (keys plus values) kept; least useful entries go first.
    pub max_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Clone)]
struct Stored {
    value: Bytes,
    ttl: Option<Duration>,
}

/// Each entry expires after its own TTL; an overwrite restarts it (as Redis SET does).
struct PerEntryTtl;

impl Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, stored: &Stored, _: Instant) -> Option<Duration> {
        stored.ttl
    }
    fn expire_after_update(
        &self,
        _: &String,
        stored: &Stored,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        stored.ttl
    }
}

/// An in-process cache with the same observable semantics as Redis for every
/// operation of the port. Needs no server: the default backend.
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Cache<String, Stored>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl MemoryBackend {
    /// An empty cache bounded by `config.max_bytes`.
    pub fn new(config: MemoryConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, stored: &Stored| {
                // Key, value and a rough per-entry overhead, saturating at u32::MAX.
                u32::try_from(key.len() + stored.value.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self { cache }
    }

    /// Runs moka's pending maintenance (evictions, expirations) now.
    /// Tests use it to observe capacity bounds deterministically.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// The number of entries, after pending maintenance.
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Option<Duration>) {
        // Writes go through the same per-key serialisation as
        // compare_and_delete, so that one can never remove a newer value.
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|_| async move { Op::Put(Stored { value, ttl }) })
            .await;
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        Ok(self.cache.get(key).await.map(|stored| stored.value))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.put(key, value, ttl).await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.cache.remove(key).await.is_some())
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                match current {
                    Some(entry) if entry.value().value.as_ref() == expected => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
        Ok(matches!(result, moka::ops::compute::CompResult::Removed(_)))
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.cache.get(key).await.map(|stored| stored.value));
        }
        Ok(values)
    }

    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        for entry in entries {
            self.put(&entry.key, entry.value.clone(), entry.ttl).await;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capacity_is_bounded_in_bytes() {
        let backend = MemoryBackend::new(MemoryConfig { max_bytes: 10_000 });
        for i in 0..1000 {
            let value = Bytes::from(vec![b'x'; 100]);
            backend.set(&format!("k{i}"), value, None).await.unwrap();
        }
        backend.run_pending_tasks().await;
        // Each entry weighs about 170 bytes: at most ~60 fit.
        assert!(
            backend.entry_count() <= 60,
            "{} entries kept",
            backend.entry_count()
        );
        assert!(backend.entry_count() > 0);
    }

    #[test]
    fn debug_shows_size_not_contents() {
        let text = format!("{:?}", MemoryBackend::default());
        assert!(text.contains("entries"), "{text}");
    }
}
