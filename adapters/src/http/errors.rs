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
    /// `not_found`, `method_not_allowed`, `internal`.
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
