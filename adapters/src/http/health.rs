//! `/health` (is the cache backend answering?) and `/health/live` (is the
//! process serving?).

use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::Serialize;

use super::json::JsonBody;

use crate::health::{HealthMonitor, HealthStatus};

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
}

/// The service's health.
#[derive(Debug, Clone, Object, Serialize)]
pub struct HealthBody {
    /// `healthy`, `degraded` (the cache answers slowly, or refuses some
    /// commands) or `unhealthy`.
    pub status: String,
    /// The cache backend.
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
    /// Readiness: 200 when the cache backend answered its last ping within
    /// the bound (2 s by default), 503 when it did not or its circuit is open.
    /// Answers from the health monitor's last check: it never touches the
    /// backend, so any number of probes costs Redis nothing.
    #[oai(path = "/health", method = "get", tag = "Tag::Health")]
    async fn health(&self) -> HealthResponse {
        let snapshot = self.monitor.snapshot();
        let (status, cache_status) = match snapshot.status {
            HealthStatus::Healthy => ("healthy", "up"),
            HealthStatus::Degraded => ("degraded", "slow"),
            HealthStatus::Refusing => ("degraded", "refusing"),
            HealthStatus::Down => ("unhealthy", "down"),
        };
        let body = HealthBody {
            status: status.into(),
            cache: CacheHealth {
                backend: snapshot.backend.into(),
                status: cache_status.into(),
                since_secs: snapshot.since.elapsed().as_secs_f64(),
                latency_ms: snapshot.latency.map(|l| l.as_secs_f64() * 1000.0),
                error: snapshot.error,
            },
        };
        if snapshot.status == HealthStatus::Down {
            HealthResponse::Unhealthy(JsonBody(body))
        } else {
            HealthResponse::Healthy(JsonBody(body))
        }
    }

    /// Liveness: 200 while the process serves requests. Touches nothing.
    #[oai(path = "/health/live", method = "get", tag = "Tag::Health")]
    async fn live(&self) -> JsonBody<LiveBody> {
        JsonBody(LiveBody {
            status: "alive".into(),
        })
    }
}
