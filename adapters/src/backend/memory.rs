//! The in-memory backend: moka's concurrent cache, with per-entry TTL and a
//! capacity bounded in bytes.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use foldhash::quality::RandomState;
use moka::Expiry;
use moka::future::Cache;
use ports::{BackendError, CacheBackend, Entry};
use tokio::sync::Mutex;

/// Settings of [`MemoryBackend`] (the `[memory]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The most bytes (keys plus values) kept; least useful entries go first.
    #[serde(deserialize_with = "crate::serde_ms::positive_count")]
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

/// How many locks the writes of all keys are spread over.
const WRITE_LOCKS: usize = 64;

/// Serialises the writes of each key (a key always maps to the same lock), so
/// that `compare_and_delete`'s read and remove are atomic with respect to
/// `set`: it can never remove a value written after it compared.
///
/// moka's own per-key `and_compute_with` gives the same guarantee but costs
/// 2.7 times a plain insert (`cargo bench -p adapters -- memory/set`); an
/// uncontended lock costs a few tens of nanoseconds. Reads take no lock.
struct WriteLocks {
    hasher: RandomState,
    locks: [Mutex<()>; WRITE_LOCKS],
}

impl WriteLocks {
    fn new() -> Self {
        Self {
            hasher: RandomState::default(),
            locks: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    fn of(&self, key: &str) -> &Mutex<()> {
        // The modulo keeps the index below WRITE_LOCKS, so indexing cannot fail.
        let index = (self.hasher.hash_one(key) % WRITE_LOCKS as u64) as usize;
        &self.locks[index]
    }
}

/// An in-process cache with the same observable semantics as Redis for every
/// operation of the port. Needs no server: the default backend.
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Cache<String, Stored, RandomState>,
    write_locks: Arc<WriteLocks>,
    /// Lets a test pause `compare_and_delete` between its comparison and its
    /// removal, to make the race it must win happen every time.
    #[cfg(test)]
    pause_after_compare: Arc<tests::Pause>,
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
            // foldhash instead of SipHash: a quarter of the cost of hashing a
            // key, still seeded per process so keys cannot be chosen to collide.
            .build_with_hasher(RandomState::default());
        Self {
            cache,
            write_locks: Arc::new(WriteLocks::new()),
            #[cfg(test)]
            pause_after_compare: Arc::default(),
        }
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
        let _write = self.write_locks.of(key).lock().await;
        self.cache
            .insert(key.to_owned(), Stored { value, ttl })
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
        let _write = self.write_locks.of(key).lock().await;
        match self.cache.get(key).await {
            Some(current) if current.value.as_ref() == expected => {
                #[cfg(test)]
                self.pause_after_compare.wait().await;
                self.cache.invalidate(key).await;
                Ok(true)
            }
            _ => Ok(false),
        }
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
            if entry.only_if_absent {
                // Under the key's write lock, so no write lands between the
                // check and the insert (Redis `SET NX` is atomic too).
                let _write = self.write_locks.of(&entry.key).lock().await;
                if self.cache.get(&entry.key).await.is_none() {
                    let stored = Stored {
                        value: entry.value.clone(),
                        ttl: entry.ttl,
                    };
                    self.cache.insert(entry.key.clone(), stored).await;
                }
            } else {
                self.put(&entry.key, entry.value.clone(), entry.ttl).await;
            }
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

    /// A gate `compare_and_delete` stops at when armed: it says it has
    /// compared, then waits to be let go.
    #[derive(Default)]
    pub(super) struct Pause {
        armed: std::sync::atomic::AtomicBool,
        compared: tokio::sync::Notify,
        go_on: tokio::sync::Notify,
    }

    impl Pause {
        pub(super) async fn wait(&self) {
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.compared.notify_one();
                self.go_on.notified().await;
            }
        }
    }

    #[tokio::test]
    async fn compare_and_delete_never_removes_a_value_written_while_it_ran() {
        let backend = MemoryBackend::default();
        backend
            .set("k", Bytes::from_static(b"corrupt"), None)
            .await
            .unwrap();
        let pause = backend.pause_after_compare.clone();
        pause.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let deleter = backend.clone();
        let delete = tokio::spawn(async move { deleter.compare_and_delete("k", b"corrupt").await });
        // The deleter has compared and matched; now a valid value is written.
        pause.compared.notified().await;
        let writer = backend.clone();
        let mut write =
            tokio::spawn(async move { writer.set("k", Bytes::from_static(b"valid"), None).await });
        // The write must wait for the deleter (it holds the key's lock)...
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut write).await;
        assert!(
            waited.is_err(),
            "the write did not wait for compare-and-delete"
        );
        // ...and lands after its removal.
        pause.go_on.notify_one();
        assert_eq!(delete.await.unwrap(), Ok(true));
        assert_eq!(write.await.unwrap(), Ok(()));
        assert_eq!(
            backend.get("k").await.unwrap().as_deref(),
            Some(&b"valid"[..])
        );
    }

    #[test]
    fn debug_shows_size_not_contents() {
        let text = format!("{:?}", MemoryBackend::default());
        assert!(text.contains("entries"), "{text}");
    }
}
