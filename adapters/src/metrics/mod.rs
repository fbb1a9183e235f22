//! Prometheus metrics: one registry per application, the handles that feed
//! it (a cache observer, a backend decorator, a store decorator, the HTTP
//! guard's recorder, samplers read at scrape time), and its exposition in the
//! Prometheus text format or OpenMetrics.
//!
//! Built on `prometheus-client` (the Prometheus project's own crate): no
//! global registry (each application, and each test, owns one), typed label
//! sets, and both exposition formats. Names follow Prometheus conventions
//! (base units, `_seconds`, counters exported with `_total`); every label is
//! bounded: namespaces and operations are code constants, routes are
//! templates (never a raw path, which would carry a uuid), statuses and
//! outcomes are small enums.
//!
//! The hot path (a cache hit) pays for a few relaxed atomic additions and one
//! histogram observation: counter handles of the known namespaces are
//! resolved once, not per event.

mod backend;
mod cache;
mod fills;
mod histogram;
mod http;
mod near;
mod sharded;
mod store;

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use backend::MeteredBackend;
pub use cache::{CacheCounts, CacheMetrics};
pub use http::{HttpMetrics, InFlight};
pub use store::MeteredStore;

use crate::backend::{Circuit, CircuitEntries, StatusSignal};
use crate::health::{HealthMonitor, HealthStatus};

pub use histogram::LatencyHistogram;
pub use sharded::{ShardedCounter, ShardedGauge};

/// The media type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The media type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Sampler = Box<dyn Fn() + Send + Sync>;

/// The metrics of one application. Cheap to clone: every clone feeds the
/// same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    cache: Arc<CacheMetrics>,
    backend: backend::BackendFamilies,
    http: HttpMetrics,
    store: store::StoreFamilies,
    status: StatusFamilies,
    near: near::NearSlot,
    fills: fills::FillSlot,
    /// Read just before each exposition (gauges of state kept elsewhere).
    samplers: Mutex<Vec<Sampler>>,
}

/// Gauges and counters fed by the backend stack's status signal and the
/// health monitor.
#[derive(Clone, Default)]
struct StatusFamilies {
    circuit: Family<StateLabel, Gauge>,
    transitions: Family<StateLabel, prometheus_client::metrics::counter::Counter>,
    rebuilds: prometheus_client::metrics::counter::Counter,
    health: Family<HealthLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct HealthLabels {
    component: &'static str,
    status: &'static str,
}

const CIRCUITS: [(Circuit, &str); 3] = [
    (Circuit::Closed, "closed"),
    (Circuit::HalfOpen, "half_open"),
    (Circuit::Open, "open"),
];

const STATUSES: [(HealthStatus, &str); 4] = [
    (HealthStatus::Healthy, "up"),
    (HealthStatus::Degraded, "slow"),
    (HealthStatus::Refusing, "refusing"),
    (HealthStatus::Down, "down"),
];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// A registry with every family registered. `namespaces` are the caches
    /// the application has: their counters are resolved now, so that an event
    /// costs no lookup (any other namespace still works, through a lookup).
    pub fn new(namespaces: &[&'static str]) -> Self {
        let mut root = Registry::default();
        // HTTP metrics carry OpenTelemetry's names, without our prefix.
        let http = HttpMetrics::register(root.sub_registry_with_prefix("http_server"));
        let registry = root.sub_registry_with_prefix("cachemanager");
        let cache = Arc::new(CacheMetrics::register(registry, namespaces));
        let backend = backend::BackendFamilies::register(registry);
        let store = store::StoreFamilies::register(registry);
        let status = StatusFamilies::default();
        registry.register(
            "breaker_state",
            "1 for the circuit breaker's current state (closed, half_open, open), 0 for the others",
            status.circuit.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Times the circuit breaker entered each state",
            status.transitions.clone(),
        );
        registry.register(
            "backend_connection_rebuilds",
            "Times the cache backend's connection was replaced (it stopped answering)",
            status.rebuilds.clone(),
        );
        registry.register(
            "health_status",
            "1 for each component's current health status (up, slow, refusing, down), 0 for the others",
            status.health.clone(),
        );
        let near = near::NearSlot::default();
        registry.register_collector(Box::new(near.clone()));
        let fills = fills::FillSlot::default();
        registry.register_collector(Box::new(fills.clone()));
        Self {
            inner: Arc::new(Inner {
                near,
                fills,
                registry: root,
                cache,
                backend,
                http,
                store,
                status,
                samplers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The observer to attach to typed caches.
    pub fn cache_observer(&self) -> Arc<CacheMetrics> {
        self.inner.cache.clone()
    }

    /// What `namespace`'s cache has counted so far.
    pub fn cache_counts(&self, namespace: &str) -> CacheCounts {
        self.inner.cache.counts(namespace)
    }

    /// `backend` with each operation counted and timed (labels: `backend`,
    /// `operation`, `outcome`). Wrap the outermost decorator: what callers see.
    pub fn backend(&self, backend: ports::SharedBackend) -> ports::SharedBackend {
        Arc::new(MeteredBackend::new(backend, self.inner.backend.clone()))
    }

    /// `store` with each query counted and timed (labels: `operation`, `outcome`).
    pub fn store<R>(&self, store: R) -> MeteredStore<R> {
        MeteredStore::new(store, self.inner.store.clone())
    }

    /// The HTTP recorder for the guard.
    pub fn http(&self) -> HttpMetrics {
        self.inner.http.clone()
    }

    /// Adds `sampler`, run before each exposition (to copy state kept
    /// elsewhere into gauges).
    pub fn add_sampler(&self, sampler: impl Fn() + Send + Sync + 'static) {
        self.samplers().push(Box::new(sampler));
    }

    /// Connections of the store's pool: `in_use` and `idle`, read at each scrape.
    pub fn watch_pool(&self, pool: impl Fn() -> (u64, u64) + Send + Sync + 'static) {
        let gauge = self.inner.store.connections.clone();
        self.add_sampler(move || {
            let (in_use, idle) = pool();
            set_gauge(&gauge, store::ConnectionLabel { state: "in_use" }, in_use);
            set_gauge(&gauge, store::ConnectionLabel { state: "idle" }, idle);
        });
    }

    /// The near cache's counters, tracking state, size and invalidation lag
    /// (`cachemanager_near_*`), read from it at each scrape.
    pub fn watch_near(&self, near: &crate::backend::NearCache) {
        self.inner.near.set(near.clone());
    }

    /// The deferred fills' counters and queue (`cachemanager_deferred_fill*`),
    /// read from them at each scrape.
    pub fn watch_fills(&self, fills: &crate::backend::DeferredFills) {
        self.inner.fills.set(fills.clone());
    }

    /// Health status gauges (`component` = `cache` or `store`), read from
    /// the monitor at each scrape.
    pub fn watch_health(&self, monitor: HealthMonitor) {
        let health = self.inner.status.health.clone();
        self.add_sampler(move || {
            let cache = monitor.snapshot().status;
            state_set(&health, "cache", cache);
            if let Some(store) = monitor.store_snapshot() {
                state_set(&health, "store", store.status);
            }
        });
    }

    /// Follows the backend stack's status signal: the breaker's state gauge,
    /// its transitions and the connection rebuilds. Runs until the signal's
    /// last sender is gone.
    pub fn watch_status(&self, signal: &StatusSignal) {
        let families = self.inner.status.clone();
        let mut receiver = signal.subscribe();
        let first = receiver.borrow_and_update().clone();
        set_circuit(&families, first.circuit);
        // Every series from zero, so that rate() sees the first transition.
        for (_, state) in CIRCUITS {
            drop(
                families
                    .transitions
                    .get_or_create_owned(&StateLabel { state }),
            );
        }
        families.rebuilds.inc_by(first.rebuilds);
        count_entries(&families, &CircuitEntries::default(), &first.entered);
        let (mut circuit, mut entered, mut rebuilds) =
            (first.circuit, first.entered, first.rebuilds);
        tokio::spawn(async move {
            while receiver.changed().await.is_ok() {
                let now = receiver.borrow_and_update().clone();
                if now.circuit != circuit {
                    circuit = now.circuit;
                    set_circuit(&families, circuit);
                }
                // Entries as the signal counted them: a flip and back
                // between two wake-ups of this task (a failed trial) still
                // counts twice.
                if now.entered != entered {
                    count_entries(&families, &entered, &now.entered);
                    entered = now.entered;
                }
                if now.rebuilds > rebuilds {
                    families.rebuilds.inc_by(now.rebuilds - rebuilds);
                    rebuilds = now.rebuilds;
                }
            }
        });
    }

    /// The exposition: OpenMetrics when `openmetrics`, else the Prometheus
    /// text format (what the scraper's `Accept` asked for).
    pub fn encode(&self, openmetrics: bool) -> String {
        for sampler in self.samplers().iter() {
            sampler();
        }
        let mut out = String::with_capacity(16 * 1024);
        let written = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)
        };
        if let Err(error) = written {
            // Writing into a String does not fail; say so if it ever does.
            tracing::error!(%error, "cannot encode the metrics");
        }
        out
    }

    fn samplers(&self) -> std::sync::MutexGuard<'_, Vec<Sampler>> {
        self.inner
            .samplers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Adds to the transitions counters the entries `to` counts beyond `from`.
fn count_entries(families: &StatusFamilies, from: &CircuitEntries, to: &CircuitEntries) {
    for (circuit, state) in CIRCUITS {
        let entered = to.of(circuit).saturating_sub(from.of(circuit));
        if entered > 0 {
            families
                .transitions
                .get_or_create(&StateLabel { state })
                .inc_by(entered);
        }
    }
}

fn set_circuit(families: &StatusFamilies, circuit: Circuit) {
    for (state, name) in CIRCUITS {
        families
            .circuit
            .get_or_create(&StateLabel { state: name })
            .set(i64::from(state == circuit));
    }
}

fn state_set(family: &Family<HealthLabels, Gauge>, component: &'static str, now: HealthStatus) {
    for (status, name) in STATUSES {
        family
            .get_or_create(&HealthLabels {
                component,
                status: name,
            })
            .set(i64::from(status == now));
    }
}

fn set_gauge<L>(family: &Family<L, Gauge>, label: L, value: u64)
where
    L: Clone + std::hash::Hash + Eq + prometheus_client::encoding::EncodeLabelSet,
{
    family
        .get_or_create(&label)
        .set(i64::try_from(value).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests;
