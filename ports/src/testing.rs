//! Test doubles for other crates' tests (feature `mocks`): a backend over a
//! map that counts its round trips.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{CacheBackend, Entry};
use crate::error::BackendError;

/// Stores in a map (TTLs recorded, never applied); counts MGETs and MSETs.
#[derive(Debug, Default)]
pub struct MapBackend {
    map: Mutex<HashMap<String, Bytes>>,
    mgets: AtomicUsize,
    msets: AtomicUsize,
    ttls: Mutex<Vec<Option<Duration>>>,
    down: AtomicBool,
}

impl MapBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value at `key`, as text.
    pub fn text(&self, key: &str) -> Option<String> {
        self.lock()
            .get(key)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The raw value at `key`.
    pub fn raw(&self, key: &str) -> Option<Bytes> {
        self.lock().get(key).cloned()
    }

    /// Stores `value` at `key` behind the cache's back (what another writer does).
    pub fn put(&self, key: &str, value: &str) {
        self.lock()
            .insert(key.to_owned(), Bytes::from(value.to_owned()));
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// MGET round trips so far.
    pub fn mgets(&self) -> usize {
        self.mgets.load(Ordering::SeqCst)
    }

    /// Every operation fails (`true`) or works again (`false`): an outage.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn up(&self) -> Result<(), BackendError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("the map is down".into()));
        }
        Ok(())
    }

    /// Removes `key` (as its expiry would).
    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// MSET (pipelined write) round trips so far.
    pub fn msets(&self) -> usize {
        self.msets.load(Ordering::SeqCst)
    }

    /// The TTL of every single `set`, in order.
    pub fn set_ttls(&self) -> Vec<Option<Duration>> {
        self.ttls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl CacheBackend for MapBackend {
    fn name(&self) -> &'static str {
        "map"
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.up()?;
        Ok(self.lock().get(key).cloned())
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.up()?;
        self.ttls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ttl);
        self.lock().insert(key.to_owned(), value);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.up()?;
        Ok(self.lock().remove(key).is_some())
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let mut map = self.lock();
        if map.get(key).is_some_and(|v| v.as_ref() == expected) {
            map.remove(key);
            return Ok(true);
        }
        Ok(false)
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.up()?;
        self.mgets.fetch_add(1, Ordering::SeqCst);
        let map = self.lock();
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.up()?;
        self.msets.fetch_add(1, Ordering::SeqCst);
        let mut map = self.lock();
        for entry in entries {
            if entry.only_if_absent && map.contains_key(&entry.key) {
                continue;
            }
            map.insert(entry.key.clone(), entry.value.clone());
        }
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
