//! The health monitor: a background task that pings the cache backend (and
//! one that pings the store of record, when there is one), keeps their
//! state, feeds `/health`, and logs each transition once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ports::{BackendError, SharedBackend};
use tokio::sync::watch;

use crate::backend::{NearStatus, StackStatus, StatusSignal};

/// A command refusal (`OOM`, `READONLY`, `NOPERM`) keeps the backend
/// `Degraded` for this long after it was last seen.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// The cache backend's state, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// It answered the last ping quickly.
    Healthy,
    /// It answered the last ping, but slower than `slow_ping`.
    Degraded,
    /// It answers, but refused some commands recently (`OOM` refuses writes
    /// under `maxmemory`, `READONLY` on a replica, `NOPERM` for an ACL user):
    /// reads still hit, writes are lost until it is fixed.
    Refusing,
    /// It did not answer the last ping in time, or the circuit is open.
    /// Requests are still served, without the cache.
    Down,
}

/// What the last check found.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSnapshot {
    /// The backend's name.
    pub backend: &'static str,
    /// Its state.
    pub status: HealthStatus,
    /// How long the last answered ping took.
    pub latency: Option<Duration>,
    /// Why it is down or degraded (never a secret: backend errors carry none).
    pub error: Option<String>,
    /// The near cache's coherence, when the stack has one (from the stack's
    /// status signal, as the circuit's state is).
    pub near: Option<NearStatus>,
    /// When the state last changed.
    pub since: Instant,
    /// Whether at least one check has run.
    pub checked: bool,
}

/// Settings of [`HealthMonitor`] (the `[health]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Between pings while healthy.
    #[serde(rename = "interval_ms", deserialize_with = "crate::serde_ms::positive")]
    pub interval: Duration,
    /// Between pings while degraded or down: recovery is noticed sooner.
    #[serde(
        rename = "down_interval_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub down_interval: Duration,
    /// How long a ping may take before the backend counts as down (the seed's 2 s).
    #[serde(rename = "timeout_ms", deserialize_with = "crate::serde_ms::positive")]
    pub ping_timeout: Duration,
    /// A ping slower than this makes the backend degraded; at most `ping_timeout`.
    #[serde(rename = "slow_ms", deserialize_with = "crate::serde_ms::positive")]
    pub slow_ping: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            down_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(2),
            slow_ping: Duration::from_millis(200),
        }
    }
}

/// Whether the service takes traffic: what `/health/ready` answers. The cache
/// plays no part in it (a service without its cache still answers every
/// request); only starting and stopping do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Built, not serving yet.
    Starting,
    /// Serving.
    Ready,
    /// Shutting down: finishing in-flight requests; a load balancer should
    /// send no more.
    Stopping,
}

/// A store of record the monitor pings beside the cache.
pub trait StoreProbe: Send + Sync + 'static {
    /// What it is (`sqlite`, `postgres`).
    fn kind(&self) -> &'static str;
    /// Answers `Ok` when the store answers a trivial query; the reason (never
    /// a secret) when it does not.
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The store's state, as `/health` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSnapshot {
    /// What the store is.
    pub kind: &'static str,
    /// Healthy, Degraded (slow) or Down (no answer in time, or an error).
    pub status: HealthStatus,
    /// How long the last answered check took.
    pub latency: Option<Duration>,
    /// Why it is down.
    pub error: Option<String>,
    /// When the state last changed.
    pub since: Instant,
}

/// A handle on the monitor task. Cheap to clone; the task stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct HealthMonitor {
    snapshot: watch::Receiver<HealthSnapshot>,
    readiness: std::sync::Arc<watch::Sender<Readiness>>,
    store: Option<watch::Receiver<StoreSnapshot>>,
}

impl HealthMonitor {
    /// Starts monitoring `backend` (the outermost decorator, so that pings see
    /// what requests see). `status` is the stack's status signal: any change
    /// in it (the circuit opening or closing, a refused command) makes the
    /// monitor check at once instead of waiting for its next ping.
    pub fn spawn(backend: SharedBackend, status: StatusSignal, config: MonitorConfig) -> Self {
        let (sender, snapshot) = watch::channel(HealthSnapshot {
            backend: backend.name(),
            status: HealthStatus::Down,
            latency: None,
            error: Some("not checked yet".into()),
            near: status.get().near,
            since: Instant::now(),
            checked: false,
        });
        tokio::spawn(run(backend, status.subscribe(), config, sender));
        let (readiness, _) = watch::channel(Readiness::Starting);
        Self {
            snapshot,
            readiness: std::sync::Arc::new(readiness),
            store: None,
        }
    }

    /// The same monitor, also checking `store` (with the same intervals and
    /// bounds as the cache). A store that is down makes `/health` unhealthy
    /// but never the service unready: every instance shares the store, and
    /// taking them all out would also stop the reads the cache still answers.
    pub fn with_store(mut self, store: Arc<dyn StoreProbe>, config: MonitorConfig) -> Self {
        let (sender, receiver) = watch::channel(StoreSnapshot {
            kind: store.kind(),
            status: HealthStatus::Down,
            latency: None,
            error: Some("not checked yet".into()),
            since: Instant::now(),
        });
        tokio::spawn(run_store(store, config, sender));
        self.store = Some(receiver);
        self
    }

    /// What the last check of the store found, when there is a store.
    pub fn store_snapshot(&self) -> Option<StoreSnapshot> {
        self.store.as_ref().map(|s| s.borrow().clone())
    }

    /// Whether the service takes traffic.
    pub fn readiness(&self) -> Readiness {
        *self.readiness.borrow()
    }

    /// Says the service takes traffic, or no longer does.
    pub fn set_readiness(&self, readiness: Readiness) {
        self.readiness.send_replace(readiness);
    }

    /// What the last check found. Never waits and never touches the backend,
    /// so a flood of health checks cannot load it.
    pub fn snapshot(&self) -> HealthSnapshot {
        self.snapshot.borrow().clone()
    }

    /// Waits at most `limit` until a snapshot satisfies `condition`; `None`
    /// when it did not in time (for tests and start-up: never waits forever).
    pub async fn wait_for(
        &self,
        limit: Duration,
        condition: impl FnMut(&HealthSnapshot) -> bool,
    ) -> Option<HealthSnapshot> {
        let mut receiver = self.snapshot.clone();
        match tokio::time::timeout(limit, receiver.wait_for(condition)).await {
            Ok(Ok(snapshot)) => Some(snapshot.clone()),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

async fn check(
    backend: &SharedBackend,
    stack: &StackStatus,
    timeout: Duration,
    slow: Duration,
) -> (HealthStatus, Option<Duration>, Option<String>) {
    let started = Instant::now();
    match tokio::time::timeout(timeout, backend.ping()).await {
        Ok(Ok(())) => {
            let latency = started.elapsed();
            let refusal = stack
                .refusal
                .as_ref()
                .filter(|refusal| refusal.at.elapsed() < REFUSAL_MEMORY);
            if let Some(refusal) = refusal {
                let why = format!("the backend refuses some commands: {}", refusal.reason);
                (HealthStatus::Refusing, Some(latency), Some(why))
            } else if latency > slow {
                (HealthStatus::Degraded, Some(latency), None)
            } else {
                (HealthStatus::Healthy, Some(latency), None)
            }
        }
        Ok(Err(BackendError::CircuitOpen)) => {
            let why = match &stack.cause {
                Some(cause) => format!("circuit open: {cause}"),
                None => "circuit open: the backend kept failing".into(),
            };
            (HealthStatus::Down, None, Some(why))
        }
        Ok(Err(error)) => (HealthStatus::Down, None, Some(error.to_string())),
        Err(_) => (
            HealthStatus::Down,
            None,
            Some(format!("no answer to ping within {timeout:?}")),
        ),
    }
}

async fn run(
    backend: SharedBackend,
    mut stack: watch::Receiver<StackStatus>,
    config: MonitorConfig,
    sender: watch::Sender<HealthSnapshot>,
) {
    loop {
        let current = stack.borrow_and_update().clone();
        let (status, latency, error) =
            check(&backend, &current, config.ping_timeout, config.slow_ping).await;
        let previous = sender.borrow().clone();
        if previous.status != status || !previous.checked {
            match status {
                HealthStatus::Healthy => {
                    tracing::info!(backend = backend.name(), "cache backend healthy")
                }
                HealthStatus::Degraded => tracing::warn!(
                    backend = backend.name(),
                    latency_ms = latency.map(|l| l.as_millis() as u64),
                    "cache backend degraded: slow answers"
                ),
                HealthStatus::Refusing => tracing::warn!(
                    backend = backend.name(),
                    reason = error.as_deref().unwrap_or(""),
                    "cache backend degraded: it refuses some commands"
                ),
                HealthStatus::Down => tracing::error!(
                    backend = backend.name(),
                    error = error.as_deref().unwrap_or(""),
                    "cache backend down: serving without the cache"
                ),
            }
        }
        let since = if previous.status == status && previous.checked {
            previous.since
        } else {
            Instant::now()
        };
        let snapshot = HealthSnapshot {
            backend: backend.name(),
            status,
            latency,
            error,
            near: current.near.clone(),
            since,
            checked: true,
        };
        sender.send_replace(snapshot);

        let pause = if status == HealthStatus::Healthy {
            config.interval
        } else {
            config.down_interval
        };
        let stack_changed = async {
            if stack.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stack_changed => {}
            // Every handle is gone: stop.
            () = sender.closed() => return,
        }
    }
}

async fn run_store(
    store: Arc<dyn StoreProbe>,
    config: MonitorConfig,
    sender: watch::Sender<StoreSnapshot>,
) {
    let mut first = true;
    loop {
        let started = Instant::now();
        let (status, latency, error) =
            match tokio::time::timeout(config.ping_timeout, store.check()).await {
                Ok(Ok(())) if started.elapsed() > config.slow_ping => {
                    (HealthStatus::Degraded, Some(started.elapsed()), None)
                }
                Ok(Ok(())) => (HealthStatus::Healthy, Some(started.elapsed()), None),
                Ok(Err(error)) => (HealthStatus::Down, None, Some(error)),
                Err(_) => (
                    HealthStatus::Down,
                    None,
                    Some(format!("no answer within {:?}", config.ping_timeout)),
                ),
            };
        let previous = sender.borrow().clone();
        let changed = first || previous.status != status;
        if changed {
            match status {
                HealthStatus::Down => tracing::error!(
                    store = store.kind(),
                    error = error.as_deref().unwrap_or(""),
                    "user store down: cache hits are still served, misses and writes answer 503"
                ),
                HealthStatus::Degraded => tracing::warn!(store = store.kind(), "user store slow"),
                _ => tracing::info!(store = store.kind(), "user store healthy"),
            }
        }
        sender.send_replace(StoreSnapshot {
            kind: store.kind(),
            status,
            latency,
            error,
            since: if changed {
                Instant::now()
            } else {
                previous.since
            },
        });
        first = false;
        let pause = if status == HealthStatus::Healthy {
            config.interval
        } else {
            config.down_interval
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = sender.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use ports::MockCacheBackend;

    use super::*;
    use crate::backend::stub::{FOREVER, StubBackend};
    use crate::backend::{Circuit, Refusal};

    fn quick() -> MonitorConfig {
        MonitorConfig {
            interval: Duration::from_secs(60),
            down_interval: Duration::from_millis(20),
            ping_timeout: Duration::from_millis(100),
            slow_ping: Duration::from_millis(50),
        }
    }

    /// Far below the 60 s healthy interval: only a reaction explains an answer in time.
    const SOON: Duration = Duration::from_secs(5);

    async fn first_check(monitor: &HealthMonitor) -> HealthSnapshot {
        monitor
            .wait_for(SOON, |s| s.checked)
            .await
            .expect("a first check within 5 s")
    }

    #[tokio::test]
    async fn a_backend_that_answers_is_healthy() {
        let mut mock = MockCacheBackend::new();
        mock.expect_name().return_const("mock");
        mock.expect_ping().returning(|| Ok(()));
        let monitor = HealthMonitor::spawn(Arc::new(mock), StatusSignal::new(), quick());
        let snapshot = first_check(&monitor).await;
        assert_eq!(snapshot.status, HealthStatus::Healthy);
        assert!(snapshot.latency.is_some());
    }

    #[tokio::test]
    async fn a_backend_that_fails_is_down_with_the_reason() {
        let mut mock = MockCacheBackend::new();
        mock.expect_name().return_const("mock");
        mock.expect_ping()
            .returning(|| Err(BackendError::Unavailable("refused".into())));
        let monitor = HealthMonitor::spawn(Arc::new(mock), StatusSignal::new(), quick());
        let snapshot = first_check(&monitor).await;
        assert_eq!(snapshot.status, HealthStatus::Down);
        assert!(snapshot.error.unwrap().contains("refused"));
    }

    #[tokio::test]
    async fn a_slow_answer_is_degraded_and_no_answer_is_down() {
        let slow = StubBackend::new().ping_delay(Duration::from_millis(70));
        let monitor = HealthMonitor::spawn(Arc::new(slow), StatusSignal::new(), quick());
        assert_eq!(first_check(&monitor).await.status, HealthStatus::Degraded);
        let hung = StubBackend::new().ping_delay(FOREVER);
        let monitor = HealthMonitor::spawn(Arc::new(hung), StatusSignal::new(), quick());
        let snapshot = first_check(&monitor).await;
        assert_eq!(snapshot.status, HealthStatus::Down);
        assert!(snapshot.error.unwrap().contains("no answer"));
    }

    #[tokio::test]
    async fn recovery_is_noticed_at_the_faster_down_interval() {
        let backend = StubBackend::new().down();
        let up = backend.switch();
        let monitor = HealthMonitor::spawn(Arc::new(backend), StatusSignal::new(), quick());
        assert_eq!(first_check(&monitor).await.status, HealthStatus::Down);
        up.store(true, Ordering::SeqCst);
        // The healthy interval is 60 s: only the 20 ms down interval explains this.
        let healthy = monitor
            .wait_for(SOON, |s| s.status == HealthStatus::Healthy)
            .await;
        assert!(
            healthy.is_some(),
            "still down 5 s after the backend came back"
        );
    }

    #[tokio::test]
    async fn a_change_in_the_stack_status_triggers_a_check_at_once() {
        let backend = StubBackend::new();
        let up = backend.switch();
        let status = StatusSignal::new();
        let monitor = HealthMonitor::spawn(Arc::new(backend), status.clone(), quick());
        assert_eq!(first_check(&monitor).await.status, HealthStatus::Healthy);
        up.store(false, Ordering::SeqCst);
        status.set_circuit(Circuit::Open);
        let down = monitor
            .wait_for(SOON, |s| s.status == HealthStatus::Down)
            .await;
        assert!(
            down.is_some(),
            "not noticed before the 60 s healthy interval"
        );
    }

    #[tokio::test]
    async fn a_recent_refusal_makes_it_degraded_with_the_reason() {
        let status = StatusSignal::new();
        let monitor = HealthMonitor::spawn(Arc::new(StubBackend::new()), status.clone(), quick());
        assert_eq!(first_check(&monitor).await.status, HealthStatus::Healthy);
        status.update(|s| {
            s.refusal = Some(Refusal {
                reason: "OOM command not allowed when used memory > 'maxmemory'".into(),
                at: Instant::now(),
            });
            true
        });
        let degraded = monitor
            .wait_for(SOON, |s| s.status == HealthStatus::Refusing)
            .await
            .expect("refusing at once");
        assert!(degraded.error.unwrap().contains("OOM"));
    }

    #[tokio::test]
    async fn wait_for_gives_up_at_its_limit() {
        let monitor =
            HealthMonitor::spawn(Arc::new(StubBackend::new()), StatusSignal::new(), quick());
        let never = monitor
            .wait_for(Duration::from_millis(50), |s| s.backend == "another")
            .await;
        assert!(never.is_none());
    }
}
