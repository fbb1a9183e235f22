//! HTTP tests with poem's `TestClient`: every endpoint and status code, over
//! mocks of the domain and of the cache backend.

use std::sync::Arc;
use std::time::Duration;

use domain::{
    Email, Lookup, MockUserQueries, Name, RepositoryError, User, UserError, UserId, UserUuid,
};
use poem::http::StatusCode;
use poem::test::TestClient;
use ports::{BackendError, MockCacheBackend, SharedBackend};
use serde_json::{Value, json};

use super::{HttpConfig, routes};

fn uuid(n: u32) -> UserUuid {
    UserUuid::parse(&format!("550e8400-e29b-41d4-a716-4466554400{n:02}")).unwrap()
}

fn user(n: u32) -> User {
    User::new(
        UserId::new(i64::from(n)).unwrap(),
        uuid(n),
        Name::new("first_name", "John").unwrap(),
        Name::new("last_name", "Doe").unwrap(),
        Email::new("john.doe@example.com").unwrap(),
    )
}

fn healthy_backend() -> SharedBackend {
    let mut backend = MockCacheBackend::new();
    backend.expect_ping().returning(|| Ok(()));
    backend.expect_name().return_const("mock");
    Arc::new(backend)
}

fn client(queries: MockUserQueries, backend: SharedBackend) -> TestClient<impl poem::Endpoint> {
    let config = HttpConfig {
        health_timeout: Duration::from_millis(200),
    };
    TestClient::new(routes(Arc::new(queries), backend, config))
}

fn client_with(queries: MockUserQueries) -> TestClient<impl poem::Endpoint> {
    client(queries, healthy_backend())
}

async fn json_of(response: poem::test::TestResponse) -> Value {
    serde_json::from_str(&response.0.into_body().into_string().await.unwrap()).unwrap()
}

async fn assert_error(response: poem::test::TestResponse, status: StatusCode, code: &str) -> Value {
    response.assert_status(status);
    response.assert_content_type("application/json; charset=utf-8");
    let body = json_of(response).await;
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn root_names_the_service_and_links_the_docs() {
    let response = client_with(MockUserQueries::new()).get("/").send().await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(body["docs"], "/docs");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn get_user_answers_200_with_the_user() {
    let mut queries = MockUserQueries::new();
    queries
        .expect_user_by_uuid()
        .withf(|u| *u == uuid(1))
        .returning(|_| Ok(user(1)));
    let response = client_with(queries)
        .get("/users/550e8400-e29b-41d4-a716-446655440001")
        .send()
        .await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(
        body,
        json!({"id": 1, "uuid": "550e8400-e29b-41d4-a716-446655440001",
               "first_name": "John", "last_name": "Doe", "email": "john.doe@example.com"})
    );
}

#[tokio::test]
async fn get_unknown_user_answers_404_naming_the_uuid() {
    let mut queries = MockUserQueries::new();
    queries
        .expect_user_by_uuid()
        .returning(|u| Err(UserError::NotFoundByUuid(u)));
    let response = client_with(queries)
        .get("/users/550e8400-e29b-41d4-a716-446655440099")
        .send()
        .await;
    let body = assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("550e8400-e29b-41d4-a716-446655440099")
    );
}

#[tokio::test]
async fn get_malformed_uuid_answers_400_without_asking_the_domain() {
    let mut queries = MockUserQueries::new();
    queries.expect_user_by_uuid().never();
    let response = client_with(queries).get("/users/not-a-uuid").send().await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_uuid").await;
}

#[tokio::test]
async fn a_store_failure_answers_500_without_its_cause() {
    let mut queries = MockUserQueries::new();
    queries.expect_user_by_uuid().returning(|_| {
        Err(UserError::Repository(RepositoryError::Unavailable(
            "db at 10.0.0.5 down".into(),
        )))
    });
    let response = client_with(queries)
        .get("/users/550e8400-e29b-41d4-a716-446655440001")
        .send()
        .await;
    let body = assert_error(response, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    assert!(!body.to_string().contains("10.0.0.5"));
}

#[tokio::test]
async fn list_users_applies_limit_and_offset() {
    let mut queries = MockUserQueries::new();
    queries
        .expect_list_users()
        .withf(|page| page.limit() == 2 && page.offset() == 1)
        .returning(|_| Ok(vec![user(2), user(3)]));
    let response = client_with(queries)
        .get("/users")
        .query("limit", &2)
        .query("offset", &1)
        .send()
        .await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(body["users"].as_array().unwrap().len(), 2);
    assert_eq!(body["limit"], 2);
}

#[tokio::test]
async fn list_users_with_a_bad_limit_answers_400_json() {
    let client = client_with(MockUserQueries::new());
    assert_error(
        client.get("/users").query("limit", &0).send().await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_error(
        client.get("/users").query("limit", &"abc").send().await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn lookup_answers_users_and_missing() {
    let mut queries = MockUserQueries::new();
    queries
        .expect_lookup()
        .withf(|u| u == [uuid(1), uuid(99)])
        .returning(|_| {
            Ok(Lookup {
                users: vec![user(1)],
                missing: vec![uuid(99)],
            })
        });
    let response = client_with(queries)
        .post("/users/lookup")
        .body_json(&json!({"uuids": ["550e8400-e29b-41d4-a716-446655440001", "550e8400-e29b-41d4-a716-446655440099"]}))
        .send()
        .await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(body["users"][0]["id"], 1);
    assert_eq!(
        body["missing"],
        json!(["550e8400-e29b-41d4-a716-446655440099"])
    );
}

#[tokio::test]
async fn lookup_of_101_uuids_answers_400_naming_the_limit() {
    let mut queries = MockUserQueries::new();
    queries.expect_lookup().never();
    let uuids: Vec<String> = (0..101).map(|_| uuid(1).to_string()).collect();
    let response = client_with(queries)
        .post("/users/lookup")
        .body_json(&json!({ "uuids": uuids }))
        .send()
        .await;
    let body = assert_error(response, StatusCode::BAD_REQUEST, "too_many_uuids").await;
    assert!(body["message"].as_str().unwrap().contains("100"), "{body}");
}

#[tokio::test]
async fn lookup_with_a_malformed_uuid_or_body_answers_400_json() {
    let client = client_with(MockUserQueries::new());
    let response = client
        .post("/users/lookup")
        .body_json(&json!({"uuids": ["nope"]}))
        .send()
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_uuid").await;
    let response = client
        .post("/users/lookup")
        .content_type("application/json")
        .body("{not json")
        .send()
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    let response = client
        .post("/users/lookup")
        .body_json(&json!({"ids": []}))
        .send()
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
}

#[tokio::test]
async fn health_is_200_when_the_backend_answers() {
    let response = client_with(MockUserQueries::new())
        .get("/health")
        .send()
        .await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["cache"]["backend"], "mock");
    assert_eq!(body["cache"]["status"], "up");
    assert!(body["cache"]["latency_ms"].as_f64().is_some());
}

#[tokio::test]
async fn health_is_503_with_a_json_body_when_the_backend_fails() {
    let mut backend = MockCacheBackend::new();
    backend
        .expect_ping()
        .returning(|| Err(BackendError::Unavailable("connection refused".into())));
    backend.expect_name().return_const("redis");
    let response = client(MockUserQueries::new(), Arc::new(backend))
        .get("/health")
        .send()
        .await;
    response.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(response).await;
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["cache"]["status"], "down");
    assert!(body["cache"]["error"].as_str().unwrap().contains("refused"));
}

/// A backend whose ping never answers.
struct Silent;
#[async_trait::async_trait]
impl ports::CacheBackend for Silent {
    fn name(&self) -> &'static str {
        "silent"
    }
    async fn get(&self, _: &str) -> Result<Option<bytes::Bytes>, BackendError> {
        Ok(None)
    }
    async fn set(&self, _: &str, _: bytes::Bytes, _: Option<Duration>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn delete(&self, _: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn compare_and_delete(&self, _: &str, _: &[u8]) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<bytes::Bytes>>, BackendError> {
        Ok(vec![None; keys.len()])
    }
    async fn mset(&self, _: &[ports::Entry]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn health_is_503_when_the_ping_does_not_answer_in_time() {
    let started = std::time::Instant::now();
    let response = client(MockUserQueries::new(), Arc::new(Silent))
        .get("/health")
        .send()
        .await;
    response.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    // Bounded by the configured 200 ms, not hung.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn liveness_is_200_whatever_the_backend() {
    let response = client(MockUserQueries::new(), Arc::new(Silent))
        .get("/health/live")
        .send()
        .await;
    response.assert_status_is_ok();
    assert_eq!(json_of(response).await["status"], "alive");
}

#[tokio::test]
async fn the_spec_parses_and_lists_every_path() {
    let response = client_with(MockUserQueries::new())
        .get("/openapi.json")
        .send()
        .await;
    response.assert_status_is_ok();
    let spec = json_of(response).await;
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/",
        "/users",
        "/users/{uuid}",
        "/users/lookup",
        "/health",
        "/health/live",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    // Error bodies are documented.
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let get_user = &spec["paths"]["/users/{uuid}"]["get"]["responses"];
    for status in ["200", "400", "404", "500"] {
        assert!(get_user[status].is_object(), "status {status} undocumented");
    }
}

#[tokio::test]
async fn swagger_ui_is_served_at_docs() {
    let response = client_with(MockUserQueries::new())
        .get("/docs")
        .send()
        .await;
    response.assert_status_is_ok();
    let html = response.0.into_body().into_string().await.unwrap();
    assert!(html.contains("swagger"), "not the Swagger UI");
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let client = client_with(MockUserQueries::new());
    assert_error(
        client.get("/nope").send().await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        client.delete("/users").send().await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}
