//! The HTTP adapter (inbound): the REST API, its OpenAPI spec and Swagger UI,
//! with poem and poem-openapi.
//!
//! Request and response types live here only and convert at the edge; every
//! error body is `{"error": code, "message": text}` and is in the spec.

mod errors;
mod health;
mod json;
mod root;
mod users;

use std::sync::Arc;
use std::time::Duration;

use domain::UserQueries;
use poem::middleware::{NormalizePath, TrailingSlash};
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

use crate::health::HealthMonitor;

pub use errors::ErrorBody;
pub use health::HealthApi;
pub use json::JsonBody;
pub use root::RootApi;
pub use users::UsersApi;

/// Settings of the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// The largest request body accepted; larger is a 413.
    pub max_body_bytes: usize,
    /// The longest a request may take; longer is a 503.
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The OpenAPI service: every operation, for the routes and for the spec.
pub fn api<S: UserQueries>(
    service: Arc<S>,
    monitor: HealthMonitor,
) -> OpenApiService<(RootApi, UsersApi<S>, HealthApi), ()> {
    OpenApiService::new(
        (RootApi, UsersApi::new(service), HealthApi::new(monitor)),
        "CacheManager User API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A reference User API over CacheManager, a type-safe async cache layer. \
         Lookups are cache-aside: the cache speeds them up, and never makes them fail.",
    )
}

/// Every route: the API at `/`, Swagger UI at `/docs`, the spec at
/// `/openapi.json`; a trailing slash is ignored (`/users/` is `/users`, as
/// the seed served it); bodies over `max_body_bytes` are refused (413),
/// requests are cut at `request_timeout` (503), and every error is JSON.
pub fn routes<S: UserQueries>(
    service: Arc<S>,
    monitor: HealthMonitor,
    config: HttpConfig,
) -> impl Endpoint<Output = poem::Response> + 'static {
    let api = api(service, monitor);
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    Route::new()
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .nest("/", api)
        .around(move |endpoint, request| {
            errors::guard(
                endpoint,
                request,
                config.max_body_bytes,
                config.request_timeout,
            )
        })
        .catch_all_error(errors::json_error)
        .with(NormalizePath::new(TrailingSlash::Trim))
        .map_to_response()
}

#[cfg(test)]
mod tests;
