//! Per-cache counters: the observer every typed cache reports to.

use ports::{CacheEvent, CacheObserver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::{LatencyHistogram, ShardedCounter};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Namespace {
    namespace: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    namespace: &'static str,
    /// `found`, `absent` (the loader said there is no such entry) or `failed`.
    result: &'static str,
}

type Histograms = Family<Namespace, LatencyHistogram>;

/// The families, by event.
#[derive(Clone)]
struct Families {
    hits: Family<Namespace, ShardedCounter>,
    misses: Family<Namespace, ShardedCounter>,
    negative_hits: Family<Namespace, ShardedCounter>,
    loads: Family<LoadLabels, ShardedCounter>,
    coalesced: Family<Namespace, ShardedCounter>,
    corrupt: Family<Namespace, ShardedCounter>,
    writes: Family<Namespace, ShardedCounter>,
    backend_errors: Family<Namespace, ShardedCounter>,
    load_duration: Histograms,
}

/// One namespace's handles, resolved once.
#[derive(Clone)]
struct Handles {
    hits: ShardedCounter,
    misses: ShardedCounter,
    negative_hits: ShardedCounter,
    found: ShardedCounter,
    absent: ShardedCounter,
    failed: ShardedCounter,
    coalesced: ShardedCounter,
    corrupt: ShardedCounter,
    writes: ShardedCounter,
    backend_errors: ShardedCounter,
    load_duration: LatencyHistogram,
}

impl Families {
    fn handles(&self, namespace: &'static str) -> Handles {
        let label = Namespace { namespace };
        let load = |result| LoadLabels { namespace, result };
        Handles {
            hits: self.hits.get_or_create_owned(&label),
            misses: self.misses.get_or_create_owned(&label),
            negative_hits: self.negative_hits.get_or_create_owned(&label),
            found: self.loads.get_or_create_owned(&load("found")),
            absent: self.loads.get_or_create_owned(&load("absent")),
            failed: self.loads.get_or_create_owned(&load("failed")),
            coalesced: self.coalesced.get_or_create_owned(&label),
            corrupt: self.corrupt.get_or_create_owned(&label),
            writes: self.writes.get_or_create_owned(&label),
            backend_errors: self.backend_errors.get_or_create_owned(&label),
            load_duration: self.load_duration.get_or_create_owned(&label),
        }
    }
}

/// What one cache has counted since start; the admin API sends it as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, poem_openapi::Object, serde::Serialize)]
pub struct CacheCounts {
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Reads answered by a remembered absence.
    pub negative_hits: u64,
    /// Loads run (found, absent or failed).
    pub loads: u64,
    /// Loads that failed or timed out.
    pub load_failures: u64,
    /// Callers that waited for another caller's load.
    pub coalesced_waits: u64,
    /// Stored values that did not decode and were removed.
    pub corrupt_removed: u64,
    /// Values written.
    pub writes: u64,
    /// Backend errors swallowed.
    pub backend_errors: u64,
}

/// Counts every outcome of the typed caches it observes, by namespace.
pub struct CacheMetrics {
    families: Families,
    /// The application's namespaces, resolved at start: no lookup per event.
    known: Vec<(&'static str, Handles)>,
}

impl CacheMetrics {
    pub(super) fn register(registry: &mut Registry, namespaces: &[&'static str]) -> Self {
        let families = Families {
            hits: Family::default(),
            misses: Family::default(),
            negative_hits: Family::default(),
            loads: Family::default(),
            coalesced: Family::default(),
            corrupt: Family::default(),
            writes: Family::default(),
            backend_errors: Family::default(),
            load_duration: Family::default(),
        };
        let counters: [(&str, &str, &Family<Namespace, ShardedCounter>); 7] = [
            (
                "cache_hits",
                "Cache reads that found a value",
                &families.hits,
            ),
            (
                "cache_misses",
                "Cache reads that found nothing (a failing backend reads as a miss)",
                &families.misses,
            ),
            (
                "cache_negative_hits",
                "Cache reads answered by a remembered absence (negative caching)",
                &families.negative_hits,
            ),
            (
                "cache_coalesced_waits",
                "Callers that waited for a load another caller started (single-flight)",
                &families.coalesced,
            ),
            (
                "cache_corrupt_removed",
                "Stored values that did not decode and were removed",
                &families.corrupt,
            ),
            (
                "cache_writes",
                "Values written to the cache",
                &families.writes,
            ),
            (
                "cache_backend_errors",
                "Backend errors the cache swallowed (the read became a miss, the write a no-op)",
                &families.backend_errors,
            ),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "cache_loads",
            "Read-through loads, by result: found, absent (no such entry) or failed (error or timeout)",
            families.loads.clone(),
        );
        registry.register_with_unit(
            "cache_load_duration",
            "How long read-through loads took",
            Unit::Seconds,
            families.load_duration.clone(),
        );
        let known = namespaces
            .iter()
            .map(|namespace| (*namespace, families.handles(namespace)))
            .collect();
        Self { families, known }
    }

    fn with_handles(&self, namespace: &'static str, f: impl FnOnce(&Handles)) {
        match self.known.iter().find(|(known, _)| *known == namespace) {
            Some((_, handles)) => f(handles),
            None => f(&self.families.handles(namespace)),
        }
    }

    /// What `namespace`'s cache has counted so far (zeros for a namespace
    /// the application does not have).
    pub fn counts(&self, namespace: &str) -> CacheCounts {
        let Some((_, h)) = self.known.iter().find(|(known, _)| *known == namespace) else {
            return CacheCounts::default();
        };
        let failed = h.failed.get();
        CacheCounts {
            hits: h.hits.get(),
            misses: h.misses.get(),
            negative_hits: h.negative_hits.get(),
            loads: h.found.get() + h.absent.get() + failed,
            load_failures: failed,
            coalesced_waits: h.coalesced.get(),
            corrupt_removed: h.corrupt.get(),
            writes: h.writes.get(),
            backend_errors: h.backend_errors.get(),
        }
    }
}

impl CacheObserver for CacheMetrics {
    fn observe(&self, namespace: &'static str, event: CacheEvent) {
        self.with_handles(namespace, |h| match event {
            CacheEvent::Hit => {
                h.hits.inc();
            }
            CacheEvent::Miss => {
                h.misses.inc();
            }
            CacheEvent::NegativeHit => {
                h.negative_hits.inc();
            }
            CacheEvent::Loaded { elapsed, found } => {
                if found { &h.found } else { &h.absent }.inc();
                h.load_duration.observe(elapsed);
            }
            CacheEvent::LoadFailed { elapsed } => {
                h.failed.inc();
                h.load_duration.observe(elapsed);
            }
            CacheEvent::Coalesced => {
                h.coalesced.inc();
            }
            CacheEvent::CorruptRemoved => {
                h.corrupt.inc();
            }
            CacheEvent::Written => {
                h.writes.inc();
            }
            CacheEvent::BackendError => {
                h.backend_errors.inc();
            }
        });
    }
}
