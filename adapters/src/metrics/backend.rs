//! A decorator that counts and times every operation of a cache backend.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining, SharedBackend};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::LatencyHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OperationLabels {
    backend: &'static str,
    operation: &'static str,
    /// `ok`, or the kind of error (see [`outcome`]).
    outcome: &'static str,
}

type Durations = Family<OperationLabels, LatencyHistogram>;

/// The backend families of a registry.
#[derive(Clone)]
pub(super) struct BackendFamilies {
    durations: Durations,
}

impl BackendFamilies {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let durations: Durations = Family::default();
        registry.register_with_unit(
            "backend_operation_duration",
            "Cache backend operations, by backend, operation and outcome (ok, timeout, \
             unavailable, unauthorized, wrong_type, rejected, circuit_open, error); the \
             _count is the number of operations",
            Unit::Seconds,
            durations.clone(),
        );
        Self { durations }
    }
}

/// The label of a result: `ok` or the error's kind. A short fixed set.
fn outcome<T>(result: &Result<T, BackendError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(BackendError::Timeout(_)) => "timeout",
        Err(BackendError::Unavailable(_)) => "unavailable",
        Err(BackendError::Unauthorized(_)) => "unauthorized",
        Err(BackendError::WrongType(_)) => "wrong_type",
        Err(BackendError::Rejected(_)) => "rejected",
        Err(BackendError::CircuitOpen) => "circuit_open",
        Err(BackendError::Unknown(_)) => "error",
    }
}

/// Wraps any backend (the outermost decorator: it sees what callers see,
/// breaker refusals included) and records each operation's latency and
/// outcome. `ping` is recorded too: it is what the health monitor sees.
pub struct MeteredBackend {
    inner: SharedBackend,
    name: &'static str,
    families: BackendFamilies,
    /// `get` and `mget` that succeed: the hit path, resolved once.
    get_ok: LatencyHistogram,
    mget_ok: LatencyHistogram,
}

impl MeteredBackend {
    pub(super) fn new(inner: SharedBackend, families: BackendFamilies) -> Self {
        let name = inner.name();
        let ok = |operation| OperationLabels {
            backend: name,
            operation,
            outcome: "ok",
        };
        Self {
            get_ok: families.durations.get_or_create_owned(&ok("get")),
            mget_ok: families.durations.get_or_create_owned(&ok("mget")),
            inner,
            name,
            families,
        }
    }

    fn record<T>(&self, operation: &'static str, result: &Result<T, BackendError>, took: Duration) {
        match (operation, result) {
            ("get", Ok(_)) => self.get_ok.observe(took),
            ("mget", Ok(_)) => self.mget_ok.observe(took),
            _ => self
                .families
                .durations
                .get_or_create(&OperationLabels {
                    backend: self.name,
                    operation,
                    outcome: outcome(result),
                })
                .observe(took),
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let started = Instant::now();
        let result = op.await;
        self.record(operation, &result, started.elapsed());
        result
    }
}

#[async_trait]
impl CacheBackend for MeteredBackend {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.timed("get", self.inner.get(key)).await
    }
    /// Recorded as the `get` it stands for (when it answers).
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        let started = Instant::now();
        let found = self.inner.get_now(key)?;
        self.get_ok.observe(started.elapsed());
        Some(found)
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.timed("set", self.inner.set(key, value, ttl)).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.timed("delete", self.inner.delete(key)).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.timed(
            "compare_and_delete",
            self.inner.compare_and_delete(key, expected),
        )
        .await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.timed("mget", self.inner.mget(keys)).await
    }
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        self.timed("mget", self.inner.mget_with_ttl(keys)).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.timed("mset", self.inner.mset(entries)).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.timed("ping", self.inner.ping()).await
    }
}
