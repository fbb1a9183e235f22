//! A typed cache seen from outside its types: what an operator (the admin
//! API) may read of it and do to it, whatever its key and value types.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BackendError;
use crate::key::bucketed_key;
use crate::policy::Ttl;
use crate::typed::{CacheDefinition, TypedCache};

/// What a cache is configured with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheInfo {
    /// Its namespace (the prefix of its keys).
    pub namespace: &'static str,
    /// The TTL of its writes (before jitter).
    pub ttl: Ttl,
    /// The fraction of the TTL each write may be shortened by.
    pub ttl_jitter: f64,
    /// How long a loader's "no such entry" is remembered here (`None`: never).
    pub negative_ttl: Option<Duration>,
    /// The hash-tag buckets its keys are grouped in (0: plain keys).
    pub key_buckets: u16,
}

/// A typed cache, erased: for operators, not for the request path.
///
/// Boxed futures (`async_trait`): caches of different types live side by
/// side behind `Arc<dyn ManagedCache>`.
///
/// # Contract
/// - `remove` takes keys as their text inside the namespace (a uuid, a
///   number, a string): each is escaped exactly as a string key is
///   ([`crate::CacheKey`]), so no text can name an entry outside the cache's
///   namespace, and never a pattern (no wildcard is ever expanded).
/// - A removed key is gone from the backend and from what this process
///   remembers of it (a negative entry), and a load of it in flight will not
///   be shared by later readers.
/// - Unlike the request path, `remove` reports a backend failure: an
///   operator must know an invalidation did not happen.
#[async_trait]
pub trait ManagedCache: Send + Sync {
    /// What the cache is configured with.
    fn info(&self) -> CacheInfo;

    /// Removes the entries of `keys`; how many of them held a value.
    ///
    /// # Errors
    /// The first backend failure (the other keys were still tried).
    async fn remove(&self, keys: &[String]) -> Result<usize, BackendError>;
}

#[async_trait]
impl<D: CacheDefinition> ManagedCache for TypedCache<D> {
    fn info(&self) -> CacheInfo {
        CacheInfo {
            namespace: D::NAMESPACE,
            ttl: self.ttl(),
            ttl_jitter: self.loading.ttl_jitter,
            negative_ttl: self.loading.negative_ttl,
            key_buckets: self.key_buckets(),
        }
    }

    async fn remove(&self, keys: &[String]) -> Result<usize, BackendError> {
        let removals = keys.iter().map(|key| {
            let full = bucketed_key(D::NAMESPACE, key.as_str(), self.key_buckets());
            self.negatives.forget(&full);
            self.flights.detach(&full);
            async move { self.backend().delete(&full).await }
        });
        let mut removed = 0;
        let mut first_error = None;
        for result in futures::future::join_all(removals).await {
            match result {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::testing::MapBackend;
    use crate::{JsonCodec, SharedBackend, Ttl};

    use super::*;

    struct Names;
    impl CacheDefinition for Names {
        type Key = String;
        type Value = String;
        type Codec = JsonCodec;
        const NAMESPACE: &'static str = "names";
        const DEFAULT_TTL: Ttl = Ttl::from_secs(60);
    }

    #[tokio::test]
    async fn remove_deletes_the_named_entries_and_counts_those_that_held_a_value() {
        let map = Arc::new(MapBackend::default());
        let backend: SharedBackend = map.clone();
        let cache = TypedCache::<Names>::new(backend);
        cache.set(&"a".into(), &"1".into()).await.unwrap();
        cache.set(&"b".into(), &"2".into()).await.unwrap();
        let removed = cache
            .remove(&["a".into(), "b".into(), "c".into()])
            .await
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!(cache.get(&"a".into()).await, None);
        assert_eq!(cache.get(&"b".into()).await, None);
    }

    #[tokio::test]
    async fn a_key_cannot_name_an_entry_outside_the_namespace() {
        let map = Arc::new(MapBackend::default());
        let backend: SharedBackend = map.clone();
        let other = TypedCache::<Names>::new(backend.clone());
        other.set(&"x".into(), &"kept".into()).await.unwrap();
        backend
            .set("names:x:y", bytes::Bytes::from_static(b"\"kept\""), None)
            .await
            .unwrap();
        let cache = TypedCache::<Names>::new(backend.clone());
        // `x:y` is escaped (`x%3Ay`), `*` is never a pattern.
        assert_eq!(cache.remove(&["x:y".into(), "*".into()]).await.unwrap(), 0);
        assert!(backend.get("names:x:y").await.unwrap().is_some());
        assert_eq!(other.get(&"x".into()).await.as_deref(), Some("kept"));
    }

    #[tokio::test]
    async fn remove_reports_a_backend_failure() {
        let map = Arc::new(MapBackend::default());
        let backend: SharedBackend = map.clone();
        let cache = TypedCache::<Names>::new(backend);
        map.set_down(true);
        assert!(cache.remove(&["a".into()]).await.is_err());
    }

    #[test]
    fn info_reports_the_configured_ttl_and_jitter() {
        let backend: SharedBackend = Arc::new(MapBackend::default());
        let cache = TypedCache::<Names>::new(backend)
            .with_ttl_jitter(0.2)
            .with_negative_ttl(Some(Duration::from_secs(5)));
        let info = cache.info();
        assert_eq!(info.namespace, "names");
        assert_eq!(info.ttl, Ttl::from_secs(60));
        assert!((info.ttl_jitter - 0.2).abs() < f64::EPSILON);
        assert_eq!(info.negative_ttl, Some(Duration::from_secs(5)));
    }
}
