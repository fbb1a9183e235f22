//! Writes to several typed caches in one backend round trip.

use crate::backend::{Entry, SharedBackend};
use crate::error::CacheError;
use crate::typed::{CacheDefinition, TypedCache};

/// Collects entries for several typed caches (each with its own namespace and
/// TTL) and writes them with one `mset`: one pipelined round trip.
///
/// The cache-aside miss path uses it to fill both directions of a mapping at
/// once, where the seed made two separate round trips.
pub struct WriteBatch {
    backend: SharedBackend,
    entries: Vec<Entry>,
}

impl WriteBatch {
    /// An empty batch that will be written to `backend`.
    pub fn new(backend: SharedBackend) -> Self {
        Self {
            backend,
            entries: Vec::new(),
        }
    }

    /// Adds `key -> value` for `cache`, encoded now with the cache's codec and TTL.
    ///
    /// # Errors
    /// [`CacheError::Serialization`] when the value cannot be encoded; the
    /// batch is unchanged.
    pub fn put<D: CacheDefinition>(
        &mut self,
        cache: &TypedCache<D>,
        key: &D::Key,
        value: &D::Value,
    ) -> Result<&mut Self, CacheError> {
        self.entries.push(cache.entry(key, value)?);
        Ok(self)
    }

    /// How many entries the batch holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes every entry in one round trip. An empty batch makes none.
    /// Never fails its caller: a backend error is logged.
    pub async fn commit(self) {
        if self.entries.is_empty() {
            return;
        }
        if let Err(error) = self.backend.mset(&self.entries).await {
            // Same rule as the typed caches: an open circuit is not news.
            crate::typed::log_backend_error("batch", "mset", &self.entries[0].key, &error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::backend::MockCacheBackend;
    use crate::codec::TextCodec;
    use crate::error::BackendError;
    use crate::policy::Ttl;

    struct A;
    impl CacheDefinition for A {
        type Key = i64;
        type Value = String;
        type Codec = TextCodec;
        const NAMESPACE: &'static str = "a";
    }
    struct B;
    impl CacheDefinition for B {
        type Key = String;
        type Value = i64;
        type Codec = TextCodec;
        const NAMESPACE: &'static str = "b";
        const DEFAULT_TTL: Ttl = Ttl::from_secs(5);
    }

    #[tokio::test]
    async fn entries_of_two_caches_go_out_in_one_mset_with_their_own_ttls() {
        let mut mock = MockCacheBackend::new();
        mock.expect_mset()
            .withf(|entries| {
                entries.len() == 2
                    && entries[0].key == "a:1"
                    && entries[0].ttl == Some(Duration::from_secs(600))
                    && entries[1].key == "b:x"
                    && &entries[1].value[..] == b"1"
                    && entries[1].ttl == Some(Duration::from_secs(5))
            })
            .times(1)
            .returning(|_| Ok(()));
        let backend: SharedBackend = Arc::new(mock);
        let (a, b) = (
            TypedCache::<A>::new(backend.clone()),
            TypedCache::<B>::new(backend.clone()),
        );
        let mut batch = WriteBatch::new(backend);
        batch.put(&a, &1, &"x".to_string()).unwrap();
        batch.put(&b, &"x".to_string(), &1).unwrap();
        assert_eq!(batch.len(), 2);
        batch.commit().await;
    }

    #[tokio::test]
    async fn an_empty_batch_makes_no_round_trip() {
        let mut mock = MockCacheBackend::new();
        mock.expect_mset().never();
        WriteBatch::new(Arc::new(mock)).commit().await;
    }

    #[tokio::test]
    async fn a_failing_backend_does_not_fail_the_commit() {
        let mut mock = MockCacheBackend::new();
        mock.expect_mset()
            .times(1)
            .returning(|_| Err(BackendError::Timeout(Duration::from_millis(5))));
        let backend: SharedBackend = Arc::new(mock);
        let a = TypedCache::<A>::new(backend.clone());
        let mut batch = WriteBatch::new(backend);
        batch.put(&a, &1, &"x".to_string()).unwrap();
        batch.commit().await;
    }
}
