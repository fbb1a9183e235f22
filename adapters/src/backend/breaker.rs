//! A circuit breaker that wraps any backend: when the backend keeps failing,
//! stop asking it, answer at once, and find out in the background when it is
//! back, letting a few trial requests decide before everyone returns.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining, SharedBackend};

use super::status::{Circuit, StatusSignal};

/// Settings of [`CircuitBreaker`] (the `[cache.breaker]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive backend failures (errors or timeouts) that open the circuit.
    #[serde(deserialize_with = "crate::serde_ms::positive_count")]
    pub failure_threshold: u32,
    /// While open, how often the background probe pings the backend. Each
    /// time trial requests fail and the circuit opens again, the interval
    /// doubles, up to `max_probe_interval`; it resets when the circuit closes.
    #[serde(
        rename = "probe_interval_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub probe_interval: Duration,
    /// The longest interval between probes.
    #[serde(
        rename = "max_probe_interval_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub max_probe_interval: Duration,
    /// How long one probe waits for the ping: the operation timeout, so a
    /// backend too slow for requests is too slow for the probe too. Set from
    /// `cache.operation_timeout_ms`.
    #[serde(skip)]
    pub probe_timeout: Duration,
    /// Half-open: how many trial requests must succeed to close the circuit.
    #[serde(deserialize_with = "crate::serde_ms::positive_count")]
    pub trial_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            probe_interval: Duration::from_millis(500),
            max_probe_interval: Duration::from_secs(8),
            probe_timeout: Duration::from_millis(100),
            trial_requests: 3,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

fn circuit(state: u8) -> Circuit {
    match state {
        OPEN => Circuit::Open,
        HALF_OPEN => Circuit::HalfOpen,
        _ => Circuit::Closed,
    }
}

struct Shared {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// Half-open: trial requests still allowed in.
    trial_permits: AtomicU32,
    /// Half-open: trial requests that succeeded.
    trial_successes: AtomicU32,
    /// Times trial requests failed since the circuit last closed (backoff).
    reopens: AtomicU32,
    status: StatusSignal,
}

/// Decorates a backend with a circuit breaker.
///
/// - **Closed**: every call goes through; a success resets the failure count;
///   a backend failure ([`BackendError::is_backend_failure`]: unreachable,
///   timed out, refused login) counts. At `failure_threshold` consecutive
///   failures it opens, and says so once.
/// - **Open**: every call returns [`BackendError::CircuitOpen`] at once,
///   without touching the network (the typed cache makes that a miss or a
///   no-op). A background task pings the backend every probe interval, each
///   ping bounded by `probe_timeout` like an operation. An answer makes it
///   half-open.
/// - **Half-open**: `trial_requests` calls go through, the rest still answer
///   `CircuitOpen`. When they all succeed it closes; the first backend failure
///   opens it again and doubles the probe interval (up to
///   `max_probe_interval`), so a backend that answers only sometimes costs at
///   most one open/close pair per interval, never a flapping `/health`.
///
/// No user request ever waits on a probe. Its state is published to the
/// stack's [`StatusSignal`].
pub struct CircuitBreaker {
    inner: SharedBackend,
    config: BreakerConfig,
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// Wraps `inner`, with its own status signal.
    pub fn new(inner: SharedBackend, config: BreakerConfig) -> Self {
        Self::with_status(inner, config, StatusSignal::new())
    }

    /// Wraps `inner`, publishing the circuit's state into `status`.
    pub fn with_status(inner: SharedBackend, config: BreakerConfig, status: StatusSignal) -> Self {
        status.set_circuit(Circuit::Closed);
        Self {
            inner,
            config,
            shared: Arc::new(Shared {
                state: AtomicU8::new(CLOSED),
                consecutive_failures: AtomicU32::new(0),
                trial_permits: AtomicU32::new(0),
                trial_successes: AtomicU32::new(0),
                reopens: AtomicU32::new(0),
                status,
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> Circuit {
        circuit(self.shared.state.load(Ordering::Acquire))
    }

    /// The status signal the breaker publishes into.
    pub fn status(&self) -> &StatusSignal {
        &self.shared.status
    }

    async fn call<T, F>(&self, operation: impl FnOnce() -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        match self.shared.state.load(Ordering::Acquire) {
            CLOSED => {
                let result = operation().await;
                match &result {
                    Ok(_) => {
                        if self.shared.consecutive_failures.load(Ordering::Relaxed) != 0 {
                            self.shared.consecutive_failures.store(0, Ordering::Relaxed);
                        }
                    }
                    Err(error) if error.is_backend_failure() => self.record_failure(error),
                    // A wrong-type key or a refused command: the backend is fine.
                    Err(_) => {}
                }
                result
            }
            HALF_OPEN => self.trial(operation).await,
            _ => Err(BackendError::CircuitOpen),
        }
    }

    /// Half-open: lets the call through if a trial permit is left.
    async fn trial<T, F>(&self, operation: impl FnOnce() -> F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        let taken =
            self.shared
                .trial_permits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if taken.is_err() {
            return Err(BackendError::CircuitOpen);
        }
        // A trial cancelled by its caller gives its permit back.
        let mut permit = Permit {
            shared: &self.shared,
            used: false,
        };
        let result = operation().await;
        permit.used = true;
        match &result {
            Err(error) if error.is_backend_failure() => self.reopen(error),
            _ => {
                let successes = self.shared.trial_successes.fetch_add(1, Ordering::AcqRel) + 1;
                if successes >= self.config.trial_requests.max(1) {
                    self.close();
                }
            }
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
        // Only the caller that flips the state opens the circuit and starts the probe.
        if self
            .shared
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        tracing::warn!(
            backend = self.inner.name(),
            failures,
            %error,
            "circuit opened: requests are served without the cache until the backend answers again"
        );
        self.shared.status.set_cause(error.to_string());
        self.shared.status.set_circuit(Circuit::Open);
        self.spawn_probe(self.config.probe_interval);
    }

    /// A trial failed: open again, and probe less often.
    fn reopen(&self, error: &BackendError) {
        if self
            .shared
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let reopens = self.shared.reopens.fetch_add(1, Ordering::AcqRel) + 1;
        let interval = backoff(&self.config, reopens);
        tracing::warn!(
            backend = self.inner.name(),
            %error,
            next_probe_ms = interval.as_millis() as u64,
            "circuit opened again: a trial request failed"
        );
        self.shared.status.set_cause(error.to_string());
        self.shared.status.set_circuit(Circuit::Open);
        self.spawn_probe(interval);
    }

    fn close(&self) {
        if self
            .shared
            .state
            .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        self.shared.consecutive_failures.store(0, Ordering::Relaxed);
        self.shared.reopens.store(0, Ordering::Relaxed);
        self.shared.status.set_circuit(Circuit::Closed);
        tracing::info!(
            backend = self.inner.name(),
            "circuit closed: trial requests succeeded, the backend is used again"
        );
    }

    fn spawn_probe(&self, interval: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to probe from: let trials decide rather than stay open forever.
            half_open(&self.shared, self.config.trial_requests);
            return;
        };
        let inner = self.inner.clone();
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        let config = self.config;
        runtime.spawn(async move {
            let opened = Instant::now();
            let mut probes: u32 = 0;
            loop {
                tokio::time::sleep(interval).await;
                // The breaker is gone: nobody needs the answer.
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                probes += 1;
                match tokio::time::timeout(config.probe_timeout, inner.ping()).await {
                    Ok(Ok(())) => {
                        half_open(&shared, config.trial_requests);
                        tracing::info!(
                            backend = inner.name(),
                            open_for_ms = opened.elapsed().as_millis() as u64,
                            probes,
                            "circuit half-open: the backend answers; trying a few requests"
                        );
                        return;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, probes, "circuit probe failed");
                        shared.status.set_cause(error.to_string());
                    }
                    Err(_) => {
                        tracing::debug!(probes, "circuit probe timed out");
                        shared.status.set_cause(format!(
                            "no answer to a probe within {:?}",
                            config.probe_timeout
                        ));
                    }
                }
            }
        });
    }
}

/// The probe interval after `reopens` failed trials.
fn backoff(config: &BreakerConfig, reopens: u32) -> Duration {
    let factor = 2u32.saturating_pow(reopens.min(16));
    config
        .probe_interval
        .saturating_mul(factor)
        .min(config.max_probe_interval.max(config.probe_interval))
}

fn half_open(shared: &Shared, trials: u32) {
    shared.trial_successes.store(0, Ordering::Release);
    shared.trial_permits.store(trials.max(1), Ordering::Release);
    shared.state.store(HALF_OPEN, Ordering::Release);
    shared.status.set_circuit(Circuit::HalfOpen);
}

/// A half-open trial in flight; gives its permit back if dropped unanswered.
struct Permit<'a> {
    shared: &'a Shared,
    used: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.used && self.shared.state.load(Ordering::Acquire) == HALF_OPEN {
            self.shared.trial_permits.fetch_add(1, Ordering::AcqRel);
        }
    }
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
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        self.call(|| self.inner.mget_with_ttl(keys)).await
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
    use std::sync::atomic::AtomicBool;

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
            max_probe_interval: Duration::from_millis(800),
            probe_timeout: Duration::from_millis(50),
            trial_requests: 3,
        }
    }

    async fn open(breaker: &CircuitBreaker) {
        for _ in 0..3 {
            let _ = breaker.get("k").await;
        }
        assert_eq!(breaker.state(), Circuit::Open);
    }

    /// Waits (virtual time) until the circuit is `wanted`, at most `limit`.
    async fn wait_for(breaker: &CircuitBreaker, wanted: Circuit, limit: Duration) {
        let mut status = breaker.status().subscribe();
        let reached = tokio::time::timeout(limit, status.wait_for(|s| s.circuit == wanted)).await;
        assert!(
            reached.is_ok(),
            "the circuit did not become {wanted:?} within {limit:?}"
        );
    }

    #[tokio::test]
    async fn it_opens_after_the_threshold_and_then_never_touches_the_backend() {
        let mut mock = MockCacheBackend::new();
        mock.expect_name().return_const("mock");
        mock.expect_get().times(3).returning(|_| Err(down()));
        mock.expect_ping().returning(|| Err(down()));
        let breaker = CircuitBreaker::new(Arc::new(mock), config());
        open(&breaker).await;
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
        assert_eq!(breaker.state(), Circuit::Closed);
    }

    #[tokio::test]
    async fn refused_commands_do_not_count() {
        let mut mock = MockCacheBackend::new();
        mock.expect_get()
            .returning(|_| Err(BackendError::WrongType("list".into())));
        mock.expect_set()
            .returning(|_, _, _| Err(BackendError::Rejected("OOM command not allowed".into())));
        let breaker = CircuitBreaker::new(Arc::new(mock), config());
        for _ in 0..10 {
            let _ = breaker.get("k").await;
            let _ = breaker.set("k", Bytes::new(), None).await;
        }
        assert_eq!(breaker.state(), Circuit::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_probe_lets_trials_through_and_their_success_closes_it() {
        let flaky = StubBackend::new().down();
        let healthy = flaky.switch();
        let breaker = CircuitBreaker::new(Arc::new(flaky), config());
        open(&breaker).await;

        // Probes keep failing: still open a while later.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(breaker.state(), Circuit::Open);

        healthy.store(true, Ordering::SeqCst);
        wait_for(&breaker, Circuit::HalfOpen, Duration::from_secs(1)).await;
        // Two trials succeed: not closed yet; the third closes it.
        assert_eq!(breaker.get("k").await, Ok(None));
        assert_eq!(breaker.get("k").await, Ok(None));
        assert_eq!(breaker.state(), Circuit::HalfOpen);
        assert_eq!(breaker.get("k").await, Ok(None));
        assert_eq!(breaker.state(), Circuit::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_only_the_trial_requests_through() {
        let stub = StubBackend::new().down();
        let up = stub.switch();
        let breaker = Arc::new(CircuitBreaker::new(
            Arc::new(stub.op_delay(Duration::from_millis(10))),
            config(),
        ));
        open(&breaker).await;
        up.store(true, Ordering::SeqCst);
        wait_for(&breaker, Circuit::HalfOpen, Duration::from_secs(1)).await;
        // Ten concurrent calls: three trials reach the backend, seven answer at once.
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let breaker = breaker.clone();
                tokio::spawn(async move { breaker.get("k").await })
            })
            .collect();
        let mut passed = 0;
        let mut refused = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => passed += 1,
                Err(BackendError::CircuitOpen) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!((passed, refused), (3, 7));
        assert_eq!(breaker.state(), Circuit::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_it_again_and_doubles_the_probe_interval() {
        let stub = StubBackend::new().down();
        let up = stub.switch();
        let breaker = CircuitBreaker::new(Arc::new(stub), config());
        open(&breaker).await;
        up.store(true, Ordering::SeqCst);
        wait_for(&breaker, Circuit::HalfOpen, Duration::from_secs(1)).await;
        up.store(false, Ordering::SeqCst);
        assert!(matches!(
            breaker.get("k").await,
            Err(BackendError::Unavailable(_))
        ));
        assert_eq!(breaker.state(), Circuit::Open);

        // The next probe comes after 200 ms (2 x 100), not 100.
        up.store(true, Ordering::SeqCst);
        let reopened = tokio::time::Instant::now();
        wait_for(&breaker, Circuit::HalfOpen, Duration::from_secs(1)).await;
        assert_eq!(reopened.elapsed(), Duration::from_millis(200));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let config = config();
        let intervals: Vec<u128> = (0..6).map(|n| backoff(&config, n).as_millis()).collect();
        assert_eq!(intervals, [100, 200, 400, 800, 800, 800]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_slower_than_the_probe_bound_keeps_it_open_without_flapping() {
        // Answers every ping and operation in 80 ms; the probe waits 50 ms,
        // like an operation would.
        let stub = StubBackend::new()
            .down()
            .ping_delay(Duration::from_millis(80))
            .op_delay(Duration::from_millis(80));
        let up = stub.switch();
        let breaker = CircuitBreaker::new(Arc::new(stub), config());
        open(&breaker).await;
        up.store(true, Ordering::SeqCst);
        let flapped = Arc::new(AtomicBool::new(false));
        let mut status = breaker.status().subscribe();
        let watcher = {
            let flapped = flapped.clone();
            tokio::spawn(async move {
                while status.changed().await.is_ok() {
                    if status.borrow().circuit != Circuit::Open {
                        flapped.store(true, Ordering::SeqCst);
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(breaker.state(), Circuit::Open);
        assert!(!flapped.load(Ordering::SeqCst), "the circuit left open");
        watcher.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_trial_gives_its_permit_back() {
        let stub = StubBackend::new().down();
        let up = stub.switch();
        let breaker =
            CircuitBreaker::new(Arc::new(stub.op_delay(Duration::from_millis(10))), config());
        open(&breaker).await;
        up.store(true, Ordering::SeqCst);
        wait_for(&breaker, Circuit::HalfOpen, Duration::from_secs(1)).await;
        // Three trials abandoned by their callers before the answer.
        for _ in 0..3 {
            let abandoned = tokio::time::timeout(Duration::from_millis(1), breaker.get("k")).await;
            assert!(abandoned.is_err());
        }
        // The permits came back: three more trials go through and close it.
        for _ in 0..3 {
            assert_eq!(breaker.get("k").await, Ok(None));
        }
        assert_eq!(breaker.state(), Circuit::Closed);
    }
}
