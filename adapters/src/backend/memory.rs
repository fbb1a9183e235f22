//! The in-memory backend: quick_cache's concurrent cache, with per-entry
//! TTL and a capacity bounded in bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry};
use quick_cache::sync::{EntryAction, EntryResult};

use super::bounded::{BoundedCache, Weighed, bounded};

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
    /// When it stops existing (`None`: never), as Redis's expiry.
    expires: Option<Instant>,
}

impl Stored {
    fn new(value: Bytes, ttl: Option<Duration>) -> Self {
        Self {
            value,
            // A TTL too large for the clock never expires in practice.
            expires: ttl.and_then(|ttl| Instant::now().checked_add(ttl)),
        }
    }

    /// Whether it still exists at `now`: an expired entry is absent to every
    /// operation, as in Redis, until it is removed.
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| now < expires)
    }
}

impl Weighed for Stored {
    fn bytes(&self) -> &Bytes {
        &self.value
    }
}

/// Every write of a key, and compare-and-delete's read-then-remove, happen
/// under that key's shard lock, so each is atomic against the others.
type Store = BoundedCache<Stored>;

/// An in-process cache with the same observable semantics as Redis for every
/// operation of the port. Needs no server: the default backend. Expiry is
/// checked when an entry is touched; an expired entry weighs on the capacity
/// until then or until it is evicted.
#[derive(Clone)]
pub struct MemoryBackend {
    store: Arc<Store>,
    /// Lets a test pause `compare_and_delete` between its comparison and its
    /// removal, to make the race it must win happen every time.
    #[cfg(test)]
    pause_after_compare: Arc<tests::Pause>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.store.len())
            .field("weighted_bytes", &self.store.weight())
            .finish()
    }
}

impl MemoryBackend {
    /// An empty cache bounded by `config.max_bytes`.
    pub fn new(config: MemoryConfig) -> Self {
        let store = bounded(config.max_bytes);
        Self {
            store: Arc::new(store),
            #[cfg(test)]
            pause_after_compare: Arc::default(),
        }
    }

    /// The number of entries held (expired ones included until touched).
    pub fn entry_count(&self) -> u64 {
        self.store.len() as u64
    }

    fn read(&self, key: &str) -> Option<Bytes> {
        let stored = self.store.get(key)?;
        let now = Instant::now();
        if stored.live(now) {
            Some(stored.value)
        } else {
            self.store.remove_if(key, |stored| !stored.live(now));
            None
        }
    }

    /// Stores `stored` at `key` unless the key holds a live value (`SET NX`),
    /// atomically: a concurrent write of the key either lands first (and
    /// this one is refused) or after.
    fn put_if_absent(&self, key: &str, stored: Stored) {
        let now = Instant::now();
        let vacant = self.store.entry(key, None, |_, held| {
            if held.live(now) {
                EntryAction::Retain(())
            } else {
                EntryAction::ReplaceWithGuard
            }
        });
        let guard = match vacant {
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => guard,
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => return,
        };
        // Refused only when a plain write of the key landed meanwhile: that
        // write is then the later one, as it would be in Redis.
        let _ = guard.insert(stored);
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
        Ok(self.read(key))
    }

    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        Some(self.read(key))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.store.insert(key.to_owned(), Stored::new(value, ttl));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self
            .store
            .remove(key)
            .is_some_and(|(_, stored)| stored.live(now)))
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let now = Instant::now();
        let removed = self.store.remove_if(key, |current| {
            let matches = current.live(now) && current.value.as_ref() == expected;
            #[cfg(test)]
            if matches {
                self.pause_after_compare.wait();
            }
            matches
        });
        Ok(removed.is_some())
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        Ok(keys.iter().map(|key| self.read(key)).collect())
    }

    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        for entry in entries {
            let stored = Stored::new(entry.value.clone(), entry.ttl);
            if entry.only_if_absent {
                self.put_if_absent(&entry.key, stored);
            } else {
                self.store.insert(entry.key.clone(), stored);
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
    use std::sync::mpsc;

    #[tokio::test]
    async fn capacity_is_bounded_in_bytes() {
        let backend = MemoryBackend::new(MemoryConfig { max_bytes: 10_000 });
        for i in 0..1000 {
            let value = Bytes::from(vec![b'x'; 100]);
            backend.set(&format!("k{i}"), value, None).await.unwrap();
        }
        // Each entry weighs about 170 bytes: at most ~60 fit.
        assert!(
            backend.entry_count() <= 60,
            "{} entries kept",
            backend.entry_count()
        );
        assert!(backend.entry_count() > 0);
    }

    #[tokio::test]
    async fn every_read_is_answered_at_once() {
        let backend = MemoryBackend::default();
        assert_eq!(backend.get_now("k"), Some(None));
        backend
            .set("k", Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        assert_eq!(backend.get_now("k"), Some(Some(Bytes::from_static(b"v"))));
    }

    #[tokio::test]
    async fn an_expired_entry_is_absent_to_every_operation() {
        let backend = MemoryBackend::default();
        let short = Some(Duration::from_millis(20));
        backend
            .set("k", Bytes::from_static(b"v"), short)
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(backend.get_now("k"), Some(None));
        assert_eq!(backend.get("k").await.unwrap(), None);
        backend
            .set("d", Bytes::from_static(b"v"), short)
            .await
            .unwrap();
        backend
            .set("c", Bytes::from_static(b"v"), short)
            .await
            .unwrap();
        backend
            .set("n", Bytes::from_static(b"old"), short)
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(backend.delete("d").await, Ok(false));
        assert_eq!(backend.compare_and_delete("c", b"v").await, Ok(false));
        let fill = Entry {
            only_if_absent: true,
            ..Entry::new("n".into(), Bytes::from_static(b"new"), None)
        };
        backend.mset(&[fill]).await.unwrap();
        assert_eq!(
            backend.get("n").await.unwrap().as_deref(),
            Some(&b"new"[..]),
            "an expired value does not block SET NX"
        );
    }

    /// A gate `compare_and_delete` stops at when armed, inside its
    /// comparison: it says it has compared, then waits to be let go.
    #[derive(Default)]
    pub(super) struct Pause {
        gate: std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl Pause {
        /// Arms the gate: the next matching comparison sends on `compared`
        /// and waits for `go_on`.
        fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (compared_tx, compared_rx) = mpsc::channel();
            let (go_on_tx, go_on_rx) = mpsc::channel();
            *self.gate.lock().unwrap() = Some((compared_tx, go_on_rx));
            (compared_rx, go_on_tx)
        }

        pub(super) fn wait(&self) {
            let gate = self.gate.lock().unwrap().take();
            if let Some((compared, go_on)) = gate {
                compared.send(()).unwrap();
                go_on.recv().unwrap();
            }
        }
    }

    /// Runs one operation to its end on this thread (the test's threads
    /// each stand for a request).
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn compare_and_delete_never_removes_a_value_written_while_it_ran() {
        let backend = MemoryBackend::default();
        block_on(backend.set("k", Bytes::from_static(b"corrupt"), None)).unwrap();
        let (compared, go_on) = backend.pause_after_compare.arm();
        let deleter = backend.clone();
        let delete =
            std::thread::spawn(move || block_on(deleter.compare_and_delete("k", b"corrupt")));
        // The deleter has compared and matched; now a valid value is written.
        compared.recv().unwrap();
        let writer = backend.clone();
        let (written_tx, written) = mpsc::channel();
        let write = std::thread::spawn(move || {
            let result = block_on(writer.set("k", Bytes::from_static(b"valid"), None));
            written_tx.send(()).unwrap();
            result
        });
        // The write must wait for the deleter (it holds the key's shard)...
        assert!(
            written.recv_timeout(Duration::from_millis(50)).is_err(),
            "the write did not wait for compare-and-delete"
        );
        // ...and lands after its removal.
        go_on.send(()).unwrap();
        assert_eq!(delete.join().unwrap(), Ok(true));
        assert_eq!(write.join().unwrap(), Ok(()));
        assert_eq!(
            block_on(backend.get("k")).unwrap().as_deref(),
            Some(&b"valid"[..])
        );
    }

    #[test]
    fn debug_shows_size_not_contents() {
        let text = format!("{:?}", MemoryBackend::default());
        assert!(text.contains("entries"), "{text}");
    }
}
