//! A circuit breaker that wraps any backend: when the backend keeps failing,
//! stop asking it, answer at once, and find out in the background when it is
//! back.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, SharedBackend};
use tokio::sync::watch;

/// Settings of [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive backend failures (errors or timeouts) that open the circuit.
    pub failure_threshold: u32,
    /// While open, how often the background probe pings the backend.
    pub probe_interval: Duration,
    /// How long one probe waits for the ping.
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(500),
        }
    }
}

/// Whether calls go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls reach the backend.
    Closed,
    /// Calls fail at once with [`BackendError::CircuitOpen`]; a background
    /// probe pings the backend until it answers.
    Open,
}

struct Shared {
    consecutive_failures: AtomicU32,
    open: AtomicBool,
    state: watch::Sender<BreakerState>,
}

/// Decorates a backend with a circuit breaker.
///
/// Closed: every call goes through; a success resets the failure count; a
/// backend failure ([`BackendError::is_backend_failure`]: unreachable, timed
/// out, refused credentials) counts. At `failure_threshold` consecutive
/// failures it opens and logs that once. Open: every call returns
/// [`BackendError::CircuitOpen`] at once, without touching the network (the
/// typed cache makes that a miss or a no-op). A background task pings the
/// backend every `probe_interval`; the first answer closes the circuit and is
/// logged once. No user request ever waits on a probe.
pub struct CircuitBreaker {
    inner: SharedBackend,
    config: BreakerConfig,
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// Wraps `inner`.
    pub fn new(inner: SharedBackend, config: BreakerConfig) -> Self {
        let (state, _) = watch::channel(BreakerState::Closed);
        Self {
            inner,
            config,
            shared: Arc::new(Shared {
                consecutive_failures: AtomicU32::new(0),
                open: AtomicBool::new(false),
                state,
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        if self.shared.open.load(Ordering::Acquire) {
            BreakerState::Open
        } else {
            BreakerState::Closed
        }
    }

    /// A receiver that sees every transition (the health monitor listens).
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.shared.state.subscribe()
    }

    async fn call<T, F>(&self, operation: impl FnOnce() -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        if self.shared.open.load(Ordering::Acquire) {
            return Err(BackendError::CircuitOpen);
        }
        let result = operation().await;
        match &result {
            Ok(_) => self.shared.consecutive_failures.store(0, Ordering::Relaxed),
            Err(error) if error.is_backend_failure() => self.record_failure(error),
            // A wrong-type key or a refused command: the backend is fine.
            Err(_) => {}
        }
        result
    }

    fn record_failure(&self, error: &BackendError) {
        let failures = self
            .shared
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures < self.config.failure_threshold {
            return;
        }
        // Only the caller that flips the flag opens the circuit and starts the probe.
        if self.shared.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            backend = self.inner.name(),
            failures,
            %error,
            "circuit opened: requests are served without the cache until the backend answers again"
        );
        self.shared.state.send_replace(BreakerState::Open);
        self.spawn_probe();
    }

    fn spawn_probe(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to probe from: close again rather than stay open forever.
            close(&self.shared);
            return;
        };
        let inner = self.inner.clone();
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        let config = self.config;
        runtime.spawn(async move {
            let opened = Instant::now();
            let mut probes: u32 = 0;
            loop {
                tokio::time::sleep(config.probe_interval).await;
                // The breaker is gone: nobody needs the answer.
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                probes += 1;
                match tokio::time::timeout(config.probe_timeout, inner.ping()).await {
                    Ok(Ok(())) => {
                        close(&shared);
                        tracing::info!(
                            backend = inner.name(),
                            open_for_ms = opened.elapsed().as_millis() as u64,
                            probes,
                            "circuit closed: the backend answers again"
                        );
                        return;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, probes, "circuit probe failed"),
                    Err(_) => tracing::debug!(probes, "circuit probe timed out"),
                }
            }
        });
    }
}

fn close(shared: &Shared) {
    shared.consecutive_failures.store(0, Ordering::Relaxed);
    shared.open.store(false, Ordering::Release);
    shared.state.send_replace(BreakerState::Closed);
}

#[async_trait]
impl CacheBackend for CircuitBreaker {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.call(|| self.inner.get(key)).await
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.call(|| self.inner.set(key, value, ttl)).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.call(|| self.inner.delete(key)).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.call(|| self.inner.compare_and_delete(key, expected))
            .await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.call(|| self.inner.mget(keys)).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.call(|| self.inner.mset(entries)).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.call(|| self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use ports::MockCacheBackend;

    use crate::backend::stub::StubBackend;

    use super::*;

    fn down() -> BackendError {
        BackendError::Unavailable("connection refused".into())
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn it_opens_after_the_threshold_and_then_never_touches_the_backend() {
        let mut mock = MockCacheBackend::new();
        mock.expect_name().return_const("mock");
        mock.expect_get().times(3).returning(|_| Err(down()));
        mock.expect_ping().returning(|| Err(down()));
        let breaker = CircuitBreaker::new(Arc::new(mock), config());
        for _ in 0..3 {
            assert_eq!(breaker.get("k").await, Err(down()));
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        // 100 more calls: none reaches the mock (it allows exactly 3 gets).
        for _ in 0..100 {
            assert_eq!(breaker.get("k").await, Err(BackendError::CircuitOpen));
        }
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        let mut mock = MockCacheBackend::new();
        let mut calls = 0;
        mock.expect_get().returning(move |_| {
            calls += 1;
            // fail, fail, succeed, fail, fail: never 3 in a row.
            if calls % 3 == 0 {
                Ok(None)
            } else {
                Err(down())
            }
        });
        let breaker = CircuitBreaker::new(Arc::new(mock), config());
        for _ in 0..5 {
            let _ = breaker.get("k").await;
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn command_errors_do_not_count() {
        let mut mock = MockCacheBackend::new();
        mock.expect_get()
            .returning(|_| Err(BackendError::WrongType("list".into())));
        let breaker = CircuitBreaker::new(Arc::new(mock), config());
        for _ in 0..10 {
            let _ = breaker.get("k").await;
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_closes_it_once_the_backend_answers() {
        let flaky = StubBackend::new().down();
        let healthy = flaky.switch();
        let breaker = CircuitBreaker::new(Arc::new(flaky), config());
        let mut transitions = breaker.subscribe();
        for _ in 0..3 {
            let _ = breaker.get("k").await;
        }
        assert_eq!(*transitions.borrow_and_update(), BreakerState::Open);

        // Probes keep failing: still open a while later.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(breaker.state(), BreakerState::Open);

        healthy.store(true, Ordering::SeqCst);
        transitions.changed().await.unwrap();
        assert_eq!(*transitions.borrow(), BreakerState::Closed);
        assert_eq!(breaker.get("k").await, Ok(None));
    }
}
