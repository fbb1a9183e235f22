//! The one error body of the API, and the conversions that make every error
//! (including poem's own: a bad query, malformed JSON, an unknown path) JSON.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{Enum, Object};
use serde::Serialize;

use super::compress::{Coding, compressed};

/// The stable, machine-readable code of an error: a client switches on this,
/// never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A parameter or body the document does not allow.
    BadRequest,
    /// A path parameter or lookup item that is not a UUID.
    InvalidUuid,
    /// A lookup of more than 100 uuids.
    TooManyUuids,
    /// A lookup that names a uuid twice.
    DuplicateUuids,
    /// No such user, or no such path.
    NotFound,
    /// The path exists, but not with this method (see the `Allow` header).
    MethodNotAllowed,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// The request took longer than the server's request timeout.
    Timeout,
    /// A field of the body breaks a rule (names 1 to 100 characters, an
    /// e-mail address `local@domain.tld`), or a change changes nothing.
    InvalidField,
    /// A cursor this service did not make.
    InvalidCursor,
    /// Another user has this e-mail address.
    Conflict,
    /// `If-Match` names a version the user is no longer at.
    PreconditionFailed,
    /// The user store is down or too slow; retry later.
    StoreUnavailable,
    /// No bearer token, or not the configured one (admin API).
    Unauthorized,
    /// The cache backend failed an operator's request (admin API).
    CacheUnavailable,
    /// A failure inside the service; the cause is in its logs.
    Internal,
}

/// An error: a stable machine-readable `error` code and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Object, Serialize)]
#[oai(example)]
pub struct ErrorBody {
    /// The code.
    pub error: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl Example for ErrorBody {
    fn example() -> Self {
        Self::new(
            ErrorCode::NotFound,
            "no user with uuid 550e8400-e29b-41d4-a716-446655440099",
        )
    }
}

impl ErrorBody {
    /// An error body.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
        }
    }

    /// The body of a 500: says nothing of the cause, which is logged instead.
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "internal error; the cause is in the service's logs",
        )
    }
}

/// An error answered as JSON with `status`.
pub(crate) fn error_response(
    status: StatusCode,
    code: ErrorCode,
    message: impl Into<String>,
) -> Response {
    Json(ErrorBody::new(code, message))
        .with_status(status)
        .into_response()
}

/// Response types whose 400 variant carries an [`ErrorBody`]; lets one
/// `bad_request_handler` serve them all.
pub trait WithBadRequest {
    /// The 400 response.
    fn bad_request(body: Json<ErrorBody>) -> Self;
}

/// poem-openapi's parse errors (query, path, JSON body, content type) as a
/// JSON 400 that names what was wrong and what is accepted, in our words:
/// the parser's own text ("failed to parse \"integer(uint32)\"...") is not
/// for the client.
pub fn bad_request<T: WithBadRequest>(error: poem::Error) -> T {
    T::bad_request(Json(ErrorBody::new(
        ErrorCode::BadRequest,
        parse_failure(&error),
    )))
}

/// What each parameter accepts, as the document states it.
const ACCEPTED: [(&str, &str); 4] = [
    ("limit", "an integer from 1 to 1000 (default 100)"),
    ("offset", "an integer from 0 to 4294967295 (default 0)"),
    ("count", "true or false"),
    ("cursor", "the next_cursor of a previous page"),
];

fn parse_failure(error: &poem::Error) -> String {
    use poem_openapi::error::{ContentTypeError, ParseParamError, ParseRequestPayloadError};
    if let Some(param) = error.downcast_ref::<ParseParamError>() {
        let accepted = ACCEPTED
            .iter()
            .find(|(name, _)| *name == param.name)
            .map_or("a value of the documented type", |(_, what)| what);
        return format!(
            "invalid query parameter `{}`: it must be {accepted}",
            param.name
        );
    }
    if error.is::<ParseRequestPayloadError>() {
        return "the body is not JSON of the documented shape (see /openapi.json)".into();
    }
    if error.is::<ContentTypeError>() {
        return "the body must be sent as `content-type: application/json`".into();
    }
    "the request does not match the API document (see /openapi.json)".into()
}

/// What every request passes through: body limit, deadline, request id,
/// `Allow` on a 405, the request's span, metrics and log line.
pub struct Guard {
    config: super::HttpConfig,
    routes: super::spec::RouteTable,
    ids: RequestIds,
    metrics: Option<crate::metrics::HttpMetrics>,
    /// Whether `/admin/...` is served; off, it answers 404.
    admin: bool,
    /// CORS, when `cors_origins` names any origin.
    cors: Option<super::cors::Cors>,
}

/// The request id header, taken from the request or made, and echoed.
pub const REQUEST_ID: &str = "x-request-id";

/// Request ids made here: a per-process random prefix and a counter; unique
/// across instances, and cheaper than a random uuid per request.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: random[..12].to_owned(),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn make(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}

/// A client's request id is kept when it is 1 to 128 visible ASCII
/// characters (what a header and a log line can carry safely).
fn acceptable_id(value: &poem::http::HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    (!text.is_empty() && text.len() <= 128 && text.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .then_some(text)
}

impl Guard {
    /// A guard with these settings over these routes.
    pub fn new(config: super::HttpConfig, routes: super::spec::RouteTable) -> Self {
        Self {
            cors: super::cors::Cors::new(&config.cors_origins),
            config,
            routes,
            ids: RequestIds::new(),
            metrics: None,
            admin: false,
        }
    }

    /// The same guard serving the admin API (`admin.token` is set) or
    /// answering 404 on every admin path (it is not).
    pub fn with_admin(mut self, on: bool) -> Self {
        self.admin = on;
        self
    }

    /// The same guard recording each request into `metrics`.
    pub fn with_metrics(mut self, metrics: Option<crate::metrics::HttpMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Guards one request: a body over `max_body_bytes` is refused with 413
    /// before any handler reads it (by its declared length, or while reading
    /// a chunked body), and a request that takes longer than the request
    /// timeout, its body's arrival included, is answered 503 `timeout`: a
    /// client trickling a chunked body cannot hold a connection longer than
    /// any other request.
    ///
    /// Each request runs in a span (`request`, at info) carrying
    /// OpenTelemetry's field names: `http.request.method`, `http.route` (the
    /// template, never the raw path), `http.response.status_code`, and the
    /// `request_id` and `latency_ms`; what is logged while serving it (JSON
    /// logs) carries them.
    pub async fn call<E: poem::Endpoint>(
        &self,
        endpoint: std::sync::Arc<E>,
        mut request: poem::Request,
    ) -> poem::Result<Response> {
        use tracing::Instrument as _;
        let started = std::time::Instant::now();
        let _in_flight = self
            .metrics
            .as_ref()
            .map(crate::metrics::HttpMetrics::start);
        trim_trailing_slash(&mut request);
        let method = request.method().clone();
        // HEAD is answered as GET without the body, so that its headers
        // (content-length first) are exactly GET's (RFC 9110, 9.3.2).
        if method == poem::http::Method::HEAD {
            request.set_method(poem::http::Method::GET);
        }
        let id = match request.headers().get(REQUEST_ID).and_then(acceptable_id) {
            Some(id) => id.to_owned(),
            None => self.ids.make(),
        };
        let path = request.uri().path().to_owned();
        let route = self.routes.route(&path);
        let span = tracing::info_span!(
            "request",
            otel.kind = "server",
            http.request.method = %method,
            http.route = route.map_or("(unknown)", |r| &**r),
            http.response.status_code = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            request_id = %id,
        );
        let coding = match self.config.compress_from_bytes {
            0 => None,
            _ => Coding::accepted_by(request.headers()),
        };
        // A preflight is answered here; any other request from a listed
        // origin is told so on its answer.
        let preflight = self.cors.as_ref().and_then(|cors| cors.preflight(&request));
        let cors_origin = self
            .cors
            .as_ref()
            .and_then(|cors| cors.allowed(request.headers()).cloned());
        let is_preflight = preflight.is_some();
        let limit = self.config.request_timeout;
        // Boxed: the endpoint's future is several kilobytes, and moving it
        // through each layer's state was a memcpy of that size per request
        // (callgrind: half the instructions of `/health/live`).
        let guarded = Box::pin(guarded(endpoint, request, self.config.max_body_bytes));
        let admin_off = !self.admin && route.is_some_and(|r| r.starts_with("/admin/"));
        let answer = async {
            if let Some(preflight) = preflight {
                return Some(Ok(preflight));
            }
            if admin_off {
                return Some(Ok(error_response(
                    StatusCode::NOT_FOUND,
                    ErrorCode::NotFound,
                    "the admin API is off (admin.token is not set)",
                )));
            }
            crate::deadline::within(limit, guarded).await
        };
        let mut response = match answer.instrument(span.clone()).await {
            Some(Ok(response)) => response,
            Some(Err(error)) => json_error(error).await,
            None => {
                tracing::warn!(?limit, request_id = %id, "request timed out");
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Timeout,
                    format!("the request took longer than {limit:?}"),
                )
            }
        };
        if response.status() == StatusCode::METHOD_NOT_ALLOWED
            && let Some(allow) = self.routes.allow(&path)
            && let Ok(value) = poem::http::HeaderValue::from_str(&allow)
        {
            response
                .headers_mut()
                .insert(poem::http::header::ALLOW, value);
        }
        if let Some(coding) = coding {
            response = compressed(response, coding, self.config.compress_from_bytes).await;
        }
        if let Some(cors) = &self.cors
            && !is_preflight
        {
            cors.decorate(cors_origin, &mut response);
        }
        if method == poem::http::Method::HEAD {
            let length = response
                .take_body()
                .into_bytes()
                .await
                .map_or(0, |b| b.len());
            response
                .headers_mut()
                .insert(poem::http::header::CONTENT_LENGTH, length.into());
        }
        if let Ok(value) = poem::http::HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.record(&method, route, status, elapsed);
        }
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if !span.is_disabled() {
            span.record("http.response.status_code", status);
            span.record("latency_ms", latency_ms);
        }
        // Both lines outside the span: they carry its fields themselves.
        if self.config.log_requests {
            tracing::info!(
                http.request.method = %method,
                http.route = route.map_or("(unknown)", |r| &**r),
                http.response.status_code = status,
                latency_ms,
                request_id = %id,
                "request"
            );
        }
        if route.is_some_and(|r| r.starts_with("/admin")) {
            // Every admin call, with its outcome (never its token).
            tracing::info!(
                http.request.method = %method,
                http.route = route.map_or("(unknown)", |r| &**r),
                http.response.status_code = status,
                request_id = %id,
                "admin call"
            );
        }
        Ok(response)
    }
}

/// The names an `Accept`-style header (`Accept`, `Accept-Encoding`) lists,
/// trimmed, without their parameters, leaving out those refused with `q=0`
/// (`Q=0` too: the weight's name is case-insensitive, RFC 9110 12.4.2).
/// Names keep their case; callers compare them case-insensitively.
pub(crate) fn accepted(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').filter_map(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.get(..2)
                .filter(|name| name.eq_ignore_ascii_case("q="))
                .and_then(|_| p.get(2..))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (!refused).then_some(name)
    })
}

/// `/users/` is `/users` (the seed's path): trailing slashes are trimmed
/// before routing. Costs nothing for a path without one (poem's
/// `NormalizePath` ran a regex and made two strings on every request).
fn trim_trailing_slash(request: &mut poem::Request) {
    let path = request.uri().path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let rebuilt = match request.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(path_and_query) = rebuilt.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = poem::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

async fn guarded<E: poem::Endpoint>(
    endpoint: std::sync::Arc<E>,
    mut request: poem::Request,
    max_body_bytes: usize,
) -> poem::Result<Response> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds {max_body_bytes} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max_body_bytes as u64 => return Ok(too_large()),
        Some(_) => {}
        // No declared length: a chunked body, or one from a client that sent
        // none. Read it with a cap (GET and HEAD carry none: skip the read).
        None if !matches!(
            *request.method(),
            poem::http::Method::GET | poem::http::Method::HEAD
        ) =>
        {
            match request.take_body().into_bytes_limit(max_body_bytes).await {
                Ok(bytes) => request.set_body(bytes),
                Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large()),
                Err(error) => {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadRequest,
                        format!("cannot read the request body: {error}"),
                    ));
                }
            }
        }
        None => {}
    }
    endpoint
        .call(request)
        .await
        .map(IntoResponse::into_response)
}

/// Errors raised outside any operation (unknown path, wrong method) as JSON.
pub async fn json_error(error: poem::Error) -> Response {
    let status = error.status();
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let body = match code {
        ErrorCode::Internal => {
            tracing::error!(%error, %status, "request failed");
            ErrorBody::internal()
        }
        ErrorCode::NotFound => ErrorBody::new(code, "no such path (see /openapi.json)"),
        ErrorCode::MethodNotAllowed => ErrorBody::new(
            code,
            "this path does not accept this method; the Allow header lists those it does",
        ),
        ErrorCode::PayloadTooLarge => ErrorBody::new(code, error.to_string()),
        ErrorCode::Unauthorized => {
            let mut response = Json(ErrorBody::new(
                code,
                "this needs `Authorization: Bearer <admin.token>`",
            ))
            .with_status(status)
            .into_response();
            response.headers_mut().insert(
                poem::http::header::WWW_AUTHENTICATE,
                poem::http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        _ => ErrorBody::new(code, parse_failure(&error)),
    };
    Json(body).with_status(status).into_response()
}
