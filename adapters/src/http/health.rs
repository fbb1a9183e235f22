//! `/health` (is the cache backend answering?) and `/health/live` (is the
//! process serving?).

use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::Serialize;

use super::json::JsonBody;

use crate::health::{HealthMonitor, HealthSnapshot, HealthStatus, Readiness, StoreSnapshot};

#[derive(Tags)]
enum Tag {
    /// Probes for load balancers and orchestrators.
    Health,
}

/// The cache backend's state.
#[derive(Debug, Clone, Object, Serialize)]
pub struct CacheHealth {
    /// Which backend is configured: `redis`, `memory` or `noop`.
    pub backend: String,
    /// `up`, `slow` (answers, slowly), `refusing` (answers, but refuses some
    /// commands, e.g. writes under `OOM`: see `error`) or `down`.
    pub status: String,
    /// Seconds since the status last changed.
    pub since_secs: f64,
    /// How long the last ping took, in milliseconds (absent when it got no answer).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Why the backend is down (never contains a secret).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The near cache over Redis, when it is on.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub near: Option<NearHealth>,
}

/// The near cache's coherence. It never makes the service unhealthy: without
/// tracking, reads go to Redis (slower, still correct).
#[derive(Debug, Clone, Object, Serialize)]
pub struct NearHealth {
    /// `tracking` (Redis tells us of every change: kept entries are served)
    /// or `lost` (every read goes to Redis until tracking is armed again).
    pub status: String,
    /// Times it was emptied whole (tracking lost, Redis flushed).
    pub flushes: u64,
    /// Why tracking is lost (never a secret).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The service's health.
#[derive(Debug, Clone, Object, Serialize)]
pub struct HealthBody {
    /// `healthy`, `degraded` (the cache or the store answers slowly, or the
    /// cache refuses some commands) or `unhealthy` (the cache or the store
    /// does not answer).
    pub status: String,
    /// The cache backend.
    pub cache: CacheHealth,
    /// The user store.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreHealth>,
}

/// The user store, as the health monitor last found it.
#[derive(Debug, Clone, Object, Serialize)]
pub struct StoreHealth {
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// `up`, `slow` or `down`.
    pub status: String,
    /// Seconds since the status last changed.
    pub since_secs: f64,
    /// How long the last check took, in milliseconds (absent without an answer).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Why it is down (never a secret).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn store_health(snapshot: StoreSnapshot) -> StoreHealth {
    let status = match snapshot.status {
        HealthStatus::Healthy => "up",
        HealthStatus::Degraded | HealthStatus::Refusing => "slow",
        HealthStatus::Down => "down",
    };
    StoreHealth {
        kind: snapshot.kind.into(),
        status: status.into(),
        since_secs: snapshot.since.elapsed().as_secs_f64(),
        latency_ms: snapshot.latency.map(|l| l.as_secs_f64() * 1000.0),
        error: snapshot.error,
    }
}

/// Whether the service takes traffic.
#[derive(Debug, Clone, Object, Serialize)]
pub struct ReadyBody {
    /// `ready` (serving, with its cache), `degraded` (serving without or with
    /// a slow cache: still ready), `starting` or `stopping`.
    pub status: String,
    /// The cache backend, for information: it never makes the service unready.
    pub cache: CacheHealth,
}

/// The process is serving.
#[derive(Debug, Clone, Object, Serialize)]
pub struct LiveBody {
    /// Always `alive`.
    pub status: String,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// The cache backend answered its last ping in time (perhaps slowly).
    #[oai(status = 200)]
    Healthy(JsonBody<HealthBody>),
    /// The cache backend did not answer a ping in time. Requests are still
    /// served (from the store), only slower.
    #[oai(status = 503)]
    Unhealthy(JsonBody<HealthBody>),
}

#[derive(ApiResponse)]
enum ReadyResponse {
    /// The service answers requests, with or without its cache.
    #[oai(status = 200)]
    Ready(JsonBody<ReadyBody>),
    /// The service is starting or shutting down: send it no traffic.
    #[oai(status = 503)]
    NotReady(JsonBody<ReadyBody>),
}

fn cache_health(snapshot: HealthSnapshot) -> CacheHealth {
    let status = match snapshot.status {
        HealthStatus::Healthy => "up",
        HealthStatus::Degraded => "slow",
        HealthStatus::Refusing => "refusing",
        HealthStatus::Down => "down",
    };
    CacheHealth {
        backend: snapshot.backend.into(),
        status: status.into(),
        since_secs: snapshot.since.elapsed().as_secs_f64(),
        latency_ms: snapshot.latency.map(|l| l.as_secs_f64() * 1000.0),
        error: snapshot.error,
        near: snapshot.near.map(|near| NearHealth {
            status: if near.tracking { "tracking" } else { "lost" }.into(),
            flushes: near.flushes,
            error: near.cause,
        }),
    }
}

/// The health probes.
pub struct HealthApi {
    monitor: HealthMonitor,
}

impl HealthApi {
    /// Reports what `monitor` finds.
    pub fn new(monitor: HealthMonitor) -> Self {
        Self { monitor }
    }
}

#[OpenApi]
impl HealthApi {
    /// The cache's and the store's health, as the seed's `/health`: 200 when
    /// the cache backend and the user store answered their last checks
    /// within the bound (2 s by default), 503 when either did not (or the
    /// cache's circuit is open). Requests are served either
    /// way: use `/health/ready` for a readiness probe, not this. Answers from
    /// the health monitor's last check: it never touches the backend, so any
    /// number of probes costs Redis nothing.
    #[oai(
        path = "/health",
        method = "get",
        tag = "Tag::Health",
        operation_id = "getHealth"
    )]
    async fn health(&self) -> HealthResponse {
        let snapshot = self.monitor.snapshot();
        let store = self.monitor.store_snapshot();
        let store_status = store.as_ref().map_or(HealthStatus::Healthy, |s| s.status);
        let down = snapshot.status == HealthStatus::Down || store_status == HealthStatus::Down;
        let status = match (snapshot.status, store_status) {
            _ if down => "unhealthy",
            (HealthStatus::Healthy, HealthStatus::Healthy) => "healthy",
            _ => "degraded",
        };
        let body = HealthBody {
            status: status.into(),
            cache: cache_health(snapshot),
            store: store.map(store_health),
        };
        if down {
            HealthResponse::Unhealthy(JsonBody(body))
        } else {
            HealthResponse::Healthy(JsonBody(body))
        }
    }

    /// Readiness, for a load balancer or an orchestrator: 200 while the
    /// service answers requests, with or without its cache (a cache outage
    /// must not take every replica out of service: the cache is a luxury);
    /// 503 only while it is starting or shutting down.
    #[oai(
        path = "/health/ready",
        method = "get",
        tag = "Tag::Health",
        operation_id = "getReadiness"
    )]
    async fn ready(&self) -> ReadyResponse {
        let snapshot = self.monitor.snapshot();
        let cache_ok = snapshot.status == HealthStatus::Healthy;
        let cache = cache_health(snapshot);
        match self.monitor.readiness() {
            Readiness::Ready => ReadyResponse::Ready(JsonBody(ReadyBody {
                status: if cache_ok { "ready" } else { "degraded" }.into(),
                cache,
            })),
            Readiness::Starting => ReadyResponse::NotReady(JsonBody(ReadyBody {
                status: "starting".into(),
                cache,
            })),
            Readiness::Stopping => ReadyResponse::NotReady(JsonBody(ReadyBody {
                status: "stopping".into(),
                cache,
            })),
        }
    }

    /// Liveness: 200 while the process serves requests. Touches nothing.
    #[oai(
        path = "/health/live",
        method = "get",
        tag = "Tag::Health",
        operation_id = "getLiveness"
    )]
    async fn live(&self) -> JsonBody<LiveBody> {
        JsonBody(LiveBody {
            status: "alive".into(),
        })
    }
}
