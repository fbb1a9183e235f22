//! What operators use: `/metrics` (Prometheus) and the admin API
//! (`/admin/...`, behind a bearer token).

use std::sync::Arc;

use poem::{IntoResponse, Response};
use poem_openapi::auth::Bearer;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaSchema, MetaSchemaRef};
use poem_openapi::{ApiResponse, Object, OpenApi, ResponseContent, SecurityScheme, Tags};
use ports::{MAX_BATCH, ManagedCache};
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use super::errors::{ErrorBody, ErrorCode};
use super::types::CacheKeyText;
use crate::Secret;
use crate::backend::{Circuit, StatusSignal};
use crate::metrics::{CacheCounts, Metrics, OPENMETRICS_TEXT, PROMETHEUS_TEXT};

#[derive(Tags)]
enum Tag {
    /// Metrics for Prometheus.
    Metrics,
    /// Operating the caches (off unless `admin.token` is set; bearer token).
    Admin,
}

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus does when
/// it prefers it); anything else gets the Prometheus text format.
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        super::errors::accepted(accept)
            .any(|name| name.eq_ignore_ascii_case("application/openmetrics-text"))
    })
}

/// The metrics exposition, in the format the client asked for.
pub struct Exposition {
    body: String,
    openmetrics: bool,
}

impl IntoResponse for Exposition {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type(if self.openmetrics {
                OPENMETRICS_TEXT
            } else {
                PROMETHEUS_TEXT
            })
            .body(self.body)
    }
}

impl ResponseContent for Exposition {
    fn media_types() -> Vec<MetaMediaType> {
        let text = || MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")));
        vec![
            MetaMediaType {
                content_type: PROMETHEUS_TEXT,
                schema: text(),
            },
            MetaMediaType {
                content_type: OPENMETRICS_TEXT,
                schema: text(),
            },
        ]
    }
}

#[derive(ApiResponse)]
enum MetricsResponse {
    /// Every metric family: the Prometheus text format, or OpenMetrics when
    /// `Accept` asks for `application/openmetrics-text`.
    #[oai(status = 200)]
    Ok(Exposition),
    /// Metrics are off (`metrics.enabled = false`).
    #[oai(status = 404)]
    Off(Json<ErrorBody>),
}

/// The admin API's bearer token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
struct AdminToken(Bearer);

/// One cache, as the admin API shows it.
#[derive(Debug, Clone, Object, Serialize)]
pub struct CacheView {
    /// Its namespace (the prefix of its keys).
    pub namespace: String,
    /// The TTL of its writes, in seconds (0: no expiry).
    pub ttl_secs: u64,
    /// The fraction of the TTL each write may be shortened by.
    pub ttl_jitter: f64,
    /// How long a "no such entry" is remembered in this process, in seconds
    /// (absent: never).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_ttl_secs: Option<f64>,
    /// The hash-tag buckets its keys are grouped in on a Redis Cluster
    /// (`<namespace>:{<b>}:<key>`; absent: plain keys).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_buckets: Option<u16>,
    /// What it counted since start (absent when metrics are off).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<CacheCounts>,
}

/// Every cache, and the backend they share.
#[derive(Debug, Clone, Object, Serialize)]
pub struct CachesBody {
    /// `redis`, `memory` or `noop`.
    pub backend: String,
    /// The circuit breaker: `closed`, `half_open` or `open` (`closed` when
    /// the backend has no breaker).
    pub circuit: String,
    /// The caches.
    pub caches: Vec<CacheView>,
}

/// Keys to remove from one cache.
#[derive(Debug, Clone, Object)]
pub struct InvalidateRequest {
    /// Keys as they appear after the namespace (a uuid, a number), 1 to 100,
    /// each 1 to 512 characters.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub keys: Vec<CacheKeyText>,
}

/// What an invalidation removed.
#[derive(Debug, Clone, Object, Serialize)]
pub struct Removed {
    /// How many of the keys held a value (the others were already absent).
    pub removed: u64,
}

#[derive(ApiResponse)]
enum CachesResponse {
    /// Every cache with its settings and counters.
    #[oai(status = 200)]
    Ok(Json<CachesBody>),
    /// No token, or not the configured one.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The admin API is off (`admin.token` is not set; the guard answers).
    #[oai(status = 404)]
    #[allow(dead_code)]
    Off(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum RemoveResponse {
    /// Removed (or already absent).
    #[oai(status = 200)]
    Ok(Json<Removed>),
    /// More than 100 keys, none, or a key of more than 512 characters.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No token, or not the configured one.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// No cache has this namespace, or the admin API is off.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The cache backend failed: the entries may still be there.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// What the admin API acts on.
#[derive(Clone)]
pub struct Admin {
    token: Secret,
    caches: Vec<Arc<dyn ManagedCache>>,
    backend: &'static str,
    status: StatusSignal,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin API over `caches` (all on `backend`, whose stack reports
    /// into `status`), open to requests bearing `token`.
    pub fn new(
        token: Secret,
        caches: Vec<Arc<dyn ManagedCache>>,
        backend: &'static str,
        status: StatusSignal,
    ) -> Self {
        Self {
            token,
            caches,
            backend,
            status,
        }
    }

    /// Whether `offered` is the token, compared in constant time (only its
    /// length may be learned from timing).
    fn accepts(&self, offered: &str) -> bool {
        bool::from(offered.as_bytes().ct_eq(self.token.expose().as_bytes()))
    }

    fn cache(&self, namespace: &str) -> Option<&Arc<dyn ManagedCache>> {
        self.caches
            .iter()
            .find(|cache| cache.info().namespace == namespace)
    }
}

/// `/metrics` and `/admin/...`.
pub struct OpsApi {
    metrics: Option<Metrics>,
    admin: Option<Admin>,
}

impl OpsApi {
    /// Metrics when `metrics` is set; the admin API when `admin` is.
    pub fn new(metrics: Option<Metrics>, admin: Option<Admin>) -> Self {
        Self { metrics, admin }
    }

    /// The admin API when it is on and `token` is its token.
    fn authorized(&self, token: &AdminToken) -> Option<&Admin> {
        self.admin
            .as_ref()
            .filter(|admin| admin.accepts(&token.0.token))
    }
}

/// The longest key the admin API takes, in characters.
const MAX_KEY_CHARS: usize = 512;

fn key_fits(key: &str) -> bool {
    !key.is_empty() && key.chars().count() <= MAX_KEY_CHARS
}

fn unauthorized() -> (Json<ErrorBody>, String) {
    (
        Json(ErrorBody::new(
            ErrorCode::Unauthorized,
            "this needs `Authorization: Bearer <admin.token>`",
        )),
        "Bearer".to_owned(),
    )
}

fn no_cache(namespace: &str) -> RemoveResponse {
    RemoveResponse::NotFound(Json(ErrorBody::new(
        ErrorCode::NotFound,
        format!("no cache has the namespace `{namespace}` (see GET /admin/caches)"),
    )))
}

async fn remove(admin: &Admin, namespace: &str, keys: &[String]) -> RemoveResponse {
    let Some(cache) = admin.cache(namespace) else {
        return no_cache(namespace);
    };
    match cache.remove(keys).await {
        Ok(removed) => {
            tracing::info!(
                cache.namespace = namespace,
                keys = keys.len(),
                removed,
                "cache entries removed by an operator"
            );
            RemoveResponse::Ok(Json(Removed {
                removed: removed as u64,
            }))
        }
        Err(error) => RemoveResponse::Unavailable(Json(ErrorBody::new(
            ErrorCode::CacheUnavailable,
            format!("the cache backend failed; the entries may still be there: {error}"),
        ))),
    }
}

#[OpenApi]
impl OpsApi {
    /// Metrics in the Prometheus text format (OpenMetrics when `Accept`
    /// asks for it): caches, backend operations, the circuit breaker,
    /// health, HTTP requests and the users store.
    #[oai(
        path = "/metrics",
        method = "get",
        tag = "Tag::Metrics",
        operation_id = "getMetrics"
    )]
    async fn metrics(&self, accept: Header<Option<String>>) -> MetricsResponse {
        match &self.metrics {
            Some(metrics) => {
                let openmetrics = wants_openmetrics(accept.0.as_deref());
                MetricsResponse::Ok(Exposition {
                    body: metrics.encode(openmetrics),
                    openmetrics,
                })
            }
            None => MetricsResponse::Off(Json(ErrorBody::new(
                ErrorCode::NotFound,
                "metrics are off (metrics.enabled = false)",
            ))),
        }
    }

    /// Every cache: its TTL, jitter, negative TTL and counters; the backend
    /// and its circuit breaker's state.
    #[oai(
        path = "/admin/caches",
        method = "get",
        tag = "Tag::Admin",
        operation_id = "listCaches"
    )]
    async fn caches(&self, token: AdminToken) -> CachesResponse {
        let Some(admin) = self.authorized(&token) else {
            let (body, challenge) = unauthorized();
            return CachesResponse::Unauthorized(body, challenge);
        };
        let circuit = match admin.status.get().circuit {
            Circuit::Closed => "closed",
            Circuit::HalfOpen => "half_open",
            Circuit::Open => "open",
        };
        let caches = admin
            .caches
            .iter()
            .map(|cache| {
                let info = cache.info();
                CacheView {
                    namespace: info.namespace.to_owned(),
                    ttl_secs: info.ttl.expiry().map_or(0, |ttl| ttl.as_secs()),
                    ttl_jitter: info.ttl_jitter,
                    negative_ttl_secs: info.negative_ttl.map(|ttl| ttl.as_secs_f64()),
                    key_buckets: (info.key_buckets > 1).then_some(info.key_buckets),
                    counters: self
                        .metrics
                        .as_ref()
                        .map(|metrics| metrics.cache_counts(info.namespace)),
                }
            })
            .collect();
        CachesResponse::Ok(Json(CachesBody {
            backend: admin.backend.to_owned(),
            circuit: circuit.to_owned(),
            caches,
        }))
    }

    /// Removes one entry. `key` is its text after the namespace (for
    /// `user:uuid-to-id`, a uuid); it is escaped as a string key is, so it
    /// can never name an entry of another cache, and it is never a pattern.
    #[oai(
        path = "/admin/caches/:namespace/keys/:key",
        method = "delete",
        tag = "Tag::Admin",
        operation_id = "removeCacheKey"
    )]
    async fn remove_key(
        &self,
        token: AdminToken,
        namespace: Path<String>,
        /// The key's text after the namespace, 1 to 512 characters.
        #[oai(validator(min_length = 1, max_length = 512))]
        key: Path<String>,
    ) -> RemoveResponse {
        let Some(admin) = self.authorized(&token) else {
            let (body, challenge) = unauthorized();
            return RemoveResponse::Unauthorized(body, challenge);
        };
        if !key_fits(&key.0) {
            return RemoveResponse::BadRequest(Json(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("a key holds 1 to {MAX_KEY_CHARS} characters"),
            )));
        }
        remove(admin, &namespace.0, std::slice::from_ref(&key.0)).await
    }

    /// Removes up to 100 entries of one cache at once.
    #[oai(
        path = "/admin/caches/:namespace/invalidate",
        method = "post",
        tag = "Tag::Admin",
        operation_id = "invalidateCacheKeys"
    )]
    async fn invalidate(
        &self,
        token: AdminToken,
        namespace: Path<String>,
        body: Json<InvalidateRequest>,
    ) -> RemoveResponse {
        let Some(admin) = self.authorized(&token) else {
            let (body, challenge) = unauthorized();
            return RemoveResponse::Unauthorized(body, challenge);
        };
        let keys: Vec<String> = body.0.keys.into_iter().map(|key| key.0).collect();
        if keys.is_empty() || keys.len() > MAX_BATCH || keys.iter().any(|k| !key_fits(k)) {
            return RemoveResponse::BadRequest(Json(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("`keys` holds 1 to {MAX_BATCH} keys of 1 to {MAX_KEY_CHARS} characters"),
            )));
        }
        remove(admin, &namespace.0, &keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_chosen_only_when_accept_asks_for_it() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
    }
}
