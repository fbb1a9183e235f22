//! `/health` (is the cache backend answering?) and `/health/live` (is the
//! process serving?).

use std::time::{Duration, Instant};

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use ports::SharedBackend;

#[derive(Tags)]
enum Tag {
    /// Probes for load balancers and orchestrators.
    Health,
}

/// The cache backend's state.
#[derive(Debug, Clone, Object)]
pub struct CacheHealth {
    /// Which backend is configured: `redis`, `memory` or `noop`.
    pub backend: String,
    /// `up` or `down`.
    pub status: String,
    /// How long the ping took, in milliseconds (absent when it got no answer).
    #[oai(skip_serializing_if_is_none)]
    pub latency_ms: Option<f64>,
    /// Why the backend is down (never contains a secret).
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

/// The service's health.
#[derive(Debug, Clone, Object)]
pub struct HealthBody {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// The cache backend.
    pub cache: CacheHealth,
}

/// The process is serving.
#[derive(Debug, Clone, Object)]
pub struct LiveBody {
    /// Always `alive`.
    pub status: String,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// The cache backend answered a ping in time.
    #[oai(status = 200)]
    Healthy(Json<HealthBody>),
    /// The cache backend did not answer a ping in time. Requests are still
    /// served (from the store), only slower.
    #[oai(status = 503)]
    Unhealthy(Json<HealthBody>),
}

/// The health probes.
pub struct HealthApi {
    backend: SharedBackend,
    timeout: Duration,
}

impl HealthApi {
    /// Probes `backend`, waiting at most `timeout` for its ping.
    pub fn new(backend: SharedBackend, timeout: Duration) -> Self {
        Self { backend, timeout }
    }
}

#[OpenApi]
impl HealthApi {
    /// Readiness: 200 when the cache backend answers a ping within the bound
    /// (2 s by default), 503 otherwise.
    #[oai(path = "/health", method = "get", tag = "Tag::Health")]
    async fn health(&self) -> HealthResponse {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, self.backend.ping()).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let backend = self.backend.name().to_owned();
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no answer to ping within {:?}", self.timeout)),
        };
        match error {
            None => HealthResponse::Healthy(Json(HealthBody {
                status: "healthy".into(),
                cache: CacheHealth {
                    backend,
                    status: "up".into(),
                    latency_ms: Some(latency_ms),
                    error: None,
                },
            })),
            Some(error) => {
                tracing::warn!(%backend, %error, "health check: cache backend down");
                HealthResponse::Unhealthy(Json(HealthBody {
                    status: "unhealthy".into(),
                    cache: CacheHealth {
                        backend,
                        status: "down".into(),
                        latency_ms: None,
                        error: Some(error),
                    },
                }))
            }
        }
    }

    /// Liveness: 200 while the process serves requests. Touches nothing.
    #[oai(path = "/health/live", method = "get", tag = "Tag::Health")]
    async fn live(&self) -> Json<LiveBody> {
        Json(LiveBody {
            status: "alive".into(),
        })
    }
}
