//! A decorator that bounds every cache operation of any backend.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining, SharedBackend};

/// Wraps a backend so that no operation takes longer than `limit`: a hung
/// backend (a frozen Redis, a half-open connection) costs a request at most
/// `limit`, then the typed cache treats it as a miss.
///
/// `ping` is not bounded here: the health check sets its own, longer bound.
pub struct TimeoutBackend {
    inner: SharedBackend,
    limit: Duration,
}

impl TimeoutBackend {
    /// Bounds every operation of `inner` by `limit`.
    pub fn new(inner: SharedBackend, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        crate::deadline::within(self.limit, op)
            .await
            .unwrap_or(Err(BackendError::Timeout(self.limit)))
    }
}

#[async_trait]
impl CacheBackend for TimeoutBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.bounded(self.inner.get(key)).await
    }
    /// Nothing waits: nothing to bound.
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        self.inner.get_now(key)
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.bounded(self.inner.set(key, value, ttl)).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.bounded(self.inner.delete(key)).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.bounded(self.inner.compare_and_delete(key, expected))
            .await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.bounded(self.inner.mget(keys)).await
    }
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        self.bounded(self.inner.mget_with_ttl(keys)).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.bounded(self.inner.mset(entries)).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ports::MockCacheBackend;

    use crate::backend::stub::{FOREVER, StubBackend};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hung_backend_times_out_after_the_limit() {
        let limit = Duration::from_millis(50);
        // Operations that never complete, like a frozen Redis.
        let hung = StubBackend::new().op_delay(FOREVER);
        let backend = TimeoutBackend::new(Arc::new(hung), limit);
        let started = tokio::time::Instant::now();
        assert_eq!(backend.get("k").await, Err(BackendError::Timeout(limit)));
        assert_eq!(
            backend.mget(&["k".into()]).await,
            Err(BackendError::Timeout(limit))
        );
        assert_eq!(backend.mset(&[]).await, Err(BackendError::Timeout(limit)));
        assert_eq!(backend.delete("k").await, Err(BackendError::Timeout(limit)));
        assert_eq!(
            backend.compare_and_delete("k", b"x").await,
            Err(BackendError::Timeout(limit))
        );
        assert_eq!(
            backend.set("k", Bytes::new(), None).await,
            Err(BackendError::Timeout(limit))
        );
        // Six operations, each cut at the limit (virtual time).
        assert_eq!(started.elapsed(), limit * 6);
    }

    #[tokio::test]
    async fn a_fast_backend_answers_through_the_decorator() {
        let mut mock = MockCacheBackend::new();
        mock.expect_get()
            .returning(|_| Ok(Some(Bytes::from_static(b"v"))));
        mock.expect_name().return_const("mock");
        let backend = TimeoutBackend::new(Arc::new(mock), Duration::from_secs(1));
        assert_eq!(backend.get("k").await, Ok(Some(Bytes::from_static(b"v"))));
        assert_eq!(backend.name(), "mock");
    }
}
