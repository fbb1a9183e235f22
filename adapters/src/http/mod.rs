//! The HTTP adapter (inbound): the REST API, its OpenAPI spec and Swagger UI,
//! with poem and poem-openapi.
//!
//! Request and response types live here only and convert at the edge; every
//! error body is `{"error": code, "message": text}` and is in the spec.

mod compress;
mod cors;
mod errors;
mod health;
mod json;
mod ops;
mod rendered;
mod root;
pub mod spec;
mod types;
mod users;

use std::sync::Arc;
use std::time::Duration;

use domain::{UserCommands, UserQueries};
use poem::{EndpointExt, IntoEndpoint};
use poem_openapi::OpenApiService;

use crate::health::HealthMonitor;
use crate::metrics::Metrics;

pub use errors::{ErrorBody, ErrorCode};
pub use health::HealthApi;
pub use json::JsonBody;
pub use ops::{Admin, OpsApi};
pub use root::RootApi;
pub use users::UsersApi;

/// Settings of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The largest request body accepted; larger is a 413.
    pub max_body_bytes: usize,
    /// The longest a request may take; longer is a 503.
    pub request_timeout: Duration,
    /// One log line per request at info (method, route template, status,
    /// latency, request id).
    pub log_requests: bool,
    /// The `Cache-Control` sent with a user (`no-cache`: clients may keep
    /// it, and revalidate with its `ETag` before using it).
    pub cache_control: String,
    /// Origins a browser may call the API from (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// Bodies from this many bytes are compressed (gzip or br, as the
    /// client accepts); 0 turns compression off.
    pub compress_from_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            log_requests: true,
            cache_control: "no-cache".into(),
            cors_origins: Vec::new(),
            compress_from_bytes: 1024,
        }
    }
}

/// What operators get beside the API: metrics and the admin API, each
/// off when `None`.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    /// `/metrics`, and the HTTP metrics recorded by the guard.
    pub metrics: Option<Metrics>,
    /// `/admin/...`; without it every admin path answers 404.
    pub admin: Option<Admin>,
}

/// The OpenAPI service: every operation, for the routes and for the spec.
pub fn api<Q: UserQueries, C: UserCommands>(
    queries: Arc<Q>,
    commands: Arc<C>,
    monitor: HealthMonitor,
    cache_control: String,
    operations: Operations,
) -> OpenApiService<(RootApi, UsersApi<Q, C>, HealthApi, OpsApi), ()> {
    OpenApiService::new(
        (
            RootApi,
            UsersApi::new(queries, commands, cache_control),
            HealthApi::new(monitor),
            OpsApi::new(operations.metrics, operations.admin),
        ),
        "CacheManager User API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A reference User API over CacheManager, a type-safe async cache layer. \
         Lookups are cache-aside: the cache speeds them up, and never makes them fail.",
    )
}

/// Every route: the API at `/`, Swagger UI at `/docs`, the document at
/// `/openapi.json` (completed with what the guard answers, see [`spec`]); a
/// trailing slash is ignored (`/users/` is `/users`, as the seed served it).
/// The guard around every operation refuses bodies over `max_body_bytes`
/// (413), cuts requests at `request_timeout` (503), answers a 405 with
/// `Allow`, tags each request with an `x-request-id` and logs it; every
/// error is JSON. Bodies of `compress_from_bytes` or more are compressed as
/// the client accepts; with `cors_origins`, browsers on those origins may
/// call the API (preflights answered, `ETag` and `Location` exposed).
pub fn routes<Q: UserQueries, C: UserCommands>(
    queries: Arc<Q>,
    commands: Arc<C>,
    monitor: HealthMonitor,
    config: HttpConfig,
    operations: Operations,
) -> poem::endpoint::BoxEndpoint<'static, poem::Response> {
    let http_metrics = operations.metrics.as_ref().map(Metrics::http);
    let admin_on = operations.admin.is_some();
    let api = api(
        queries,
        commands,
        monitor,
        config.cache_control.clone(),
        operations,
    );
    let generated = api.spec();
    let (document, table) = match spec::complete(&generated) {
        Ok(completed) => completed,
        Err(error) => {
            // Unreachable with poem-openapi's output; serve what it made.
            tracing::error!(%error, "cannot complete the OpenAPI document");
            (generated.clone(), spec::RouteTable::default())
        }
    };
    let swagger = spec::swagger_with(&api.swagger_ui_html(), &document);
    let guard = Arc::new(
        errors::Guard::new(config, table)
            .with_metrics(http_metrics)
            .with_admin(admin_on),
    );
    let endpoint = Documented {
        api: api.into_endpoint().boxed(),
        document: poem::get(poem::endpoint::make_sync(move |_| {
            poem::Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(document.clone())
        }))
        .boxed(),
        swagger: poem::get(poem::endpoint::make_sync(move |_| {
            poem::web::Html(swagger.clone())
        }))
        .boxed(),
    }
    .around(move |endpoint, request| {
        let guard = guard.clone();
        async move { guard.call(endpoint, request).await }
    })
    .catch_all_error(errors::json_error)
    .map_to_response();
    endpoint.boxed()
}

/// The API, and beside it the OpenAPI document and Swagger UI at their two
/// exact paths. Not a `Route` nesting the API at `/`: a nest matches the
/// whole path as a wildcard (percent-decoding it) and builds a new URI for
/// the API's own router (a copy, parsed again), on every request; for a
/// `GET /users/{uuid}` hit, and for the ceiling, that was about 6,000
/// instructions (docs/PERFORMANCE.md, "Cutting the hit path again").
struct Documented {
    api: poem::endpoint::BoxEndpoint<'static>,
    document: poem::endpoint::BoxEndpoint<'static>,
    swagger: poem::endpoint::BoxEndpoint<'static>,
}

impl poem::Endpoint for Documented {
    type Output = poem::Response;

    async fn call(&self, request: poem::Request) -> poem::Result<Self::Output> {
        match request.uri().path() {
            "/openapi.json" => self.document.call(request).await,
            "/docs" => self.swagger.call(request).await,
            _ => self.api.call(request).await,
        }
    }
}

#[cfg(test)]
mod tests;
