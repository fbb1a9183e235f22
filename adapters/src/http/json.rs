//! [`JsonBody`]: a JSON response payload written straight from the value with
//! serde.
//!
//! poem-openapi's `Json<T>` first builds a `serde_json::Value` tree of the
//! body (a map, a `String` per key and per value), then serialises that tree
//! and drops it. On the hit path of `GET /users/{uuid}` that was the largest
//! cost of the handler after the socket writes (perf, 64 connections: about
//! 6 % of the service's CPU, against 1 % for the cache lookup). `JsonBody<T>`
//! documents the same schema (`T`'s poem-openapi `Type`) and writes the same
//! JSON with one pass of serde. A test per body type checks that both forms
//! agree, so the spec cannot drift from what is sent.

use poem::http::StatusCode;
use poem::http::header::CONTENT_TYPE;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::Serialize;

use super::errors::ErrorBody;

const CONTENT_TYPE_JSON: &str = "application/json; charset=utf-8";

/// A JSON response body of `T`, documented by `T`'s OpenAPI schema and
/// serialised by `T`'s `Serialize` (which must write the same fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE_JSON;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Serialize + Send> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder()
                .header(CONTENT_TYPE, CONTENT_TYPE_JSON)
                .body(body),
            Err(error) => {
                // Only a map with non-string keys or a failing custom
                // Serialize can get here; none of our bodies has either.
                tracing::error!(%error, "cannot serialise a response body");
                Json(ErrorBody::internal())
                    .with_status(StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response()
            }
        }
    }
}

impl<T: Type + Serialize + Send> ApiResponse for JsonBody<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

#[cfg(test)]
pub(crate) mod agreement {
    //! The serde form of a body must be the form its schema documents.

    use poem_openapi::types::ToJSON;
    use serde::Serialize;

    /// Panics unless serde and poem-openapi write `value` as the same JSON.
    pub(crate) fn assert_same_json<T: ToJSON + Serialize>(value: &T) {
        let documented = value.to_json();
        let sent = serde_json::to_value(value).ok();
        assert_eq!(
            sent, documented,
            "the sent JSON differs from the documented one"
        );
    }
}

#[cfg(test)]
mod tests {
    use poem::IntoResponse;

    use super::JsonBody;

    #[tokio::test]
    async fn a_body_that_cannot_be_serialised_is_a_json_500() {
        // JSON object keys must be strings: a tuple key cannot be written.
        let body = std::collections::HashMap::from([((1, 2), 3)]);
        let response = JsonBody(body).into_response();
        assert_eq!(
            response.status(),
            poem::http::StatusCode::INTERNAL_SERVER_ERROR
        );
        let text = response.into_body().into_string().await.unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["error"], "internal");
    }
}
