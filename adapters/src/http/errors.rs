//! The one error body of the API, and the conversions that make every error
//! (including poem's own: a bad query, malformed JSON, an unknown path) JSON.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::Object;
use poem_openapi::payload::Json;
use serde::Serialize;

/// An error: a stable machine-readable `error` code and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Object, Serialize)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `invalid_uuid`, `too_many_uuids`,
    /// `duplicate_uuids`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `timeout`, `internal`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(error: &str, message: impl Into<String>) -> Self {
        Self {
            error: error.to_owned(),
            message: message.into(),
        }
    }

    /// The body of a 500: says nothing of the cause, which is logged instead.
    pub fn internal() -> Self {
        Self::new(
            "internal",
            "internal error; the cause is in the service's logs",
        )
    }
}

/// Response types whose 400 variant carries an [`ErrorBody`]; lets one
/// `bad_request_handler` serve them all.
pub trait WithBadRequest {
    /// The 400 response.
    fn bad_request(body: Json<ErrorBody>) -> Self;
}

/// poem-openapi's parse errors (query, path, JSON body, content type) as a JSON 400.
pub fn bad_request<T: WithBadRequest>(error: poem::Error) -> T {
    T::bad_request(Json(ErrorBody::new("bad_request", error.to_string())))
}

/// Guards every request: a body over `max_body_bytes` is refused with 413
/// before any handler reads it (by its declared length, or while reading a
/// chunked body), and a request that takes longer than `limit`, its body's
/// arrival included, is answered 503 `timeout`: a client trickling a chunked
/// body cannot hold a connection longer than any other request.
pub async fn guard<E: poem::Endpoint>(
    endpoint: std::sync::Arc<E>,
    request: poem::Request,
    max_body_bytes: usize,
    limit: std::time::Duration,
) -> poem::Result<Response> {
    match crate::deadline::within(limit, guarded(endpoint, request, max_body_bytes)).await {
        Some(result) => result,
        None => {
            tracing::warn!(?limit, "request timed out");
            let body = ErrorBody::new("timeout", format!("the request took longer than {limit:?}"));
            Ok(Json(body)
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .into_response())
        }
    }
}

async fn guarded<E: poem::Endpoint>(
    endpoint: std::sync::Arc<E>,
    mut request: poem::Request,
    max_body_bytes: usize,
) -> poem::Result<Response> {
    let too_large = || {
        let body = ErrorBody::new(
            "payload_too_large",
            format!("the request body exceeds {max_body_bytes} bytes"),
        );
        Json(body)
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .into_response()
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
                    let body = ErrorBody::new(
                        "bad_request",
                        format!("cannot read the request body: {error}"),
                    );
                    return Ok(Json(body)
                        .with_status(StatusCode::BAD_REQUEST)
                        .into_response());
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
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = if status.is_server_error() {
        tracing::error!(%error, %status, "request failed");
        ErrorBody::internal()
    } else {
        ErrorBody::new(code, error.to_string())
    };
    Json(body).with_status(status).into_response()
}
