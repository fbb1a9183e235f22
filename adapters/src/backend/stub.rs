//! A configurable backend for the adapters' own tests: up or down (switchable
//! while in use), and as slow as asked, for pings and for operations apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry};

/// Stores nothing; every call waits its delay, then succeeds while `up`
/// holds, or fails as an unreachable backend.
pub(crate) struct StubBackend {
    up: Arc<AtomicBool>,
    ping_delay: Duration,
    op_delay: Duration,
}

/// Long enough to stand for "never answers" in any test.
pub(crate) const FOREVER: Duration = Duration::from_secs(24 * 3600);

impl StubBackend {
    /// Up, answering at once.
    pub(crate) fn new() -> Self {
        Self {
            up: Arc::new(AtomicBool::new(true)),
            ping_delay: Duration::ZERO,
            op_delay: Duration::ZERO,
        }
    }

    /// Starts down (see [`StubBackend::switch`] to bring it up).
    pub(crate) fn down(self) -> Self {
        self.up.store(false, Ordering::SeqCst);
        self
    }

    /// Every ping waits `delay` first.
    pub(crate) fn ping_delay(mut self, delay: Duration) -> Self {
        self.ping_delay = delay;
        self
    }

    /// Every other operation waits `delay` first.
    pub(crate) fn op_delay(mut self, delay: Duration) -> Self {
        self.op_delay = delay;
        self
    }

    /// The switch: `true` is up.
    pub(crate) fn switch(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    async fn answer<T>(&self, delay: Duration, value: T) -> Result<T, BackendError> {
        tokio::time::sleep(delay).await;
        if self.up.load(Ordering::SeqCst) {
            Ok(value)
        } else {
            Err(BackendError::Unavailable("stub is down".into()))
        }
    }
}

#[async_trait]
impl CacheBackend for StubBackend {
    fn name(&self) -> &'static str {
        "stub"
    }
    async fn get(&self, _: &str) -> Result<Option<Bytes>, BackendError> {
        self.answer(self.op_delay, None).await
    }
    async fn set(&self, _: &str, _: Bytes, _: Option<Duration>) -> Result<(), BackendError> {
        self.answer(self.op_delay, ()).await
    }
    async fn delete(&self, _: &str) -> Result<bool, BackendError> {
        self.answer(self.op_delay, false).await
    }
    async fn compare_and_delete(&self, _: &str, _: &[u8]) -> Result<bool, BackendError> {
        self.answer(self.op_delay, false).await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.answer(self.op_delay, vec![None; keys.len()]).await
    }
    async fn mset(&self, _: &[Entry]) -> Result<(), BackendError> {
        self.answer(self.op_delay, ()).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.answer(self.ping_delay, ()).await
    }
}
