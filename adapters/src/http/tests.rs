//! HTTP tests with poem's `TestClient`: every endpoint and status code, over
//! mocks of the domain and of the cache backend.

use std::sync::Arc;
use std::time::Duration;

use domain::{
    Email, Lookup, MockUserCommands, MockUserQueries, Name, NewUser, User, UserChanges, UserError,
    UserId, UserUuid, Version,
};
use poem::http::StatusCode;
use poem::test::TestClient;
use ports::{BackendError, MockCacheBackend, SharedBackend};

use crate::backend::StatusSignal;
use crate::backend::stub::{FOREVER, StubBackend};
use crate::health::{HealthMonitor, MonitorConfig, Readiness};
use futures::StreamExt;
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

async fn client(
    queries: MockUserQueries,
    backend: SharedBackend,
) -> TestClient<impl poem::Endpoint> {
    client_and_monitor(queries, backend).await.0
}

async fn client_and_monitor(
    queries: MockUserQueries,
    backend: SharedBackend,
) -> (TestClient<impl poem::Endpoint>, HealthMonitor) {
    client_of(
        queries,
        MockUserCommands::new(),
        backend,
        HttpConfig::default(),
    )
    .await
}

/// A client over mocks of both domain ports, with `config` (its body limit
/// and timeout lowered for the tests).
async fn client_of(
    queries: MockUserQueries,
    commands: MockUserCommands,
    backend: SharedBackend,
    config: HttpConfig,
) -> (TestClient<impl poem::Endpoint>, HealthMonitor) {
    let monitor = HealthMonitor::spawn(
        backend,
        StatusSignal::new(),
        MonitorConfig {
            ping_timeout: Duration::from_millis(200),
            ..MonitorConfig::default()
        },
    );
    monitor
        .wait_for(Duration::from_secs(5), |s| s.checked)
        .await
        .expect("a first health check within 5 s");
    let config = HttpConfig {
        max_body_bytes: 16 * 1024,
        request_timeout: Duration::from_secs(5),
        ..config
    };
    (
        TestClient::new(routes(
            Arc::new(queries),
            Arc::new(commands),
            monitor.clone(),
            config,
            super::Operations::default(),
        )),
        monitor,
    )
}

async fn client_with(queries: MockUserQueries) -> TestClient<impl poem::Endpoint> {
    client(queries, healthy_backend()).await
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
    let response = client_with(MockUserQueries::new())
        .await
        .get("/")
        .send()
        .await;
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
        .await
        .get("/users/550e8400-e29b-41d4-a716-446655440001")
        .send()
        .await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(
        body,
        json!({"uuid": "550e8400-e29b-41d4-a716-446655440001",
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
        .await
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
    let response = client_with(queries)
        .await
        .get("/users/not-a-uuid")
        .send()
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_uuid").await;
}

/// Every operation that reaches the store answers its failure the same way:
/// 503 `store_unavailable`, documented for each, and never the cause.
#[tokio::test]
async fn every_operation_answers_a_store_failure_with_503_store_unavailable() {
    let down = || UserError::StoreUnavailable("db at 10.0.0.5 down".into());
    let mut queries = MockUserQueries::new();
    queries
        .expect_user_by_uuid()
        .returning(move |_| Err(down()));
    queries.expect_list_users().returning(move |_| Err(down()));
    queries
        .expect_list_users_after()
        .returning(move |_, _| Err(down()));
    queries.expect_lookup().returning(move |_| Err(down()));
    let mut commands = MockUserCommands::new();
    commands
        .expect_create_user()
        .returning(move |_| Err(down()));
    commands
        .expect_update_user()
        .returning(move |_, _, _| Err(down()));
    commands
        .expect_delete_user()
        .returning(move |_, _| Err(down()));
    let (client, _monitor) =
        client_of(queries, commands, healthy_backend(), HttpConfig::default()).await;
    let one = "/users/550e8400-e29b-41d4-a716-446655440001";
    let answers = [
        ("GET one", client.get(one).send().await),
        ("GET list", client.get("/users").send().await),
        (
            "GET list by cursor",
            client.get("/users?cursor=u1").send().await,
        ),
        (
            "POST lookup",
            client
                .post("/users/lookup")
                .body_json(&json!({"uuids": ["550e8400-e29b-41d4-a716-446655440001"]}))
                .send()
                .await,
        ),
        (
            "POST",
            client
                .post("/users")
                .body_json(&json!({"first_name": "A", "last_name": "B", "email": "a@b.co"}))
                .send()
                .await,
        ),
        (
            "PATCH",
            client
                .patch(one)
                .body_json(&json!({"last_name": "C"}))
                .send()
                .await,
        ),
        ("DELETE", client.delete(one).send().await),
    ];
    for (operation, response) in answers {
        assert_eq!(
            response.0.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{operation}"
        );
        let body = json_of(response).await;
        assert_eq!(body["error"], "store_unavailable", "{operation}: {body}");
        assert!(
            !body.to_string().contains("10.0.0.5"),
            "{operation}: {body}"
        );
    }
}

#[tokio::test]
async fn list_users_applies_limit_and_offset() {
    let mut queries = MockUserQueries::new();
    queries
        .expect_list_users()
        .withf(|page| page.limit() == 2 && page.offset() == 1)
        .returning(|_| Ok(vec![user(2), user(3)]));
    let response = client_with(queries)
        .await
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
async fn the_seeds_path_with_a_trailing_slash_lists_users_too() {
    let mut queries = MockUserQueries::new();
    queries
        .expect_list_users()
        .times(2)
        .returning(|_| Ok(vec![user(1)]));
    let client = client_with(queries).await;
    for path in ["/users", "/users/"] {
        let response = client.get(path).send().await;
        response.assert_status_is_ok();
        let body = json_of(response).await;
        assert_eq!(body["users"][0]["first_name"], "John", "{path}");
    }
    client.get("/docs/").send().await.assert_status_is_ok();
}

#[tokio::test]
async fn list_users_with_a_bad_limit_answers_400_json() {
    let client = client_with(MockUserQueries::new()).await;
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
        .await
        .post("/users/lookup")
        .body_json(&json!({"uuids": ["550e8400-e29b-41d4-a716-446655440001", "550e8400-e29b-41d4-a716-446655440099"]}))
        .send()
        .await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(
        body["users"][0]["uuid"],
        "550e8400-e29b-41d4-a716-446655440001"
    );
    assert!(
        body["users"][0].get("id").is_none(),
        "the internal id is private"
    );
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
        .await
        .post("/users/lookup")
        .body_json(&json!({ "uuids": uuids }))
        .send()
        .await;
    let body = assert_error(response, StatusCode::BAD_REQUEST, "too_many_uuids").await;
    assert!(body["message"].as_str().unwrap().contains("100"), "{body}");
}

#[tokio::test]
async fn lookup_with_a_malformed_uuid_or_body_answers_400_json() {
    let client = client_with(MockUserQueries::new()).await;
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
        .await
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
        .await
        .get("/health")
        .send()
        .await;
    response.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(response).await;
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["cache"]["status"], "down");
    assert!(body["cache"]["error"].as_str().unwrap().contains("refused"));
}

#[tokio::test]
async fn ready_is_200_degraded_while_the_cache_is_down_and_503_only_when_starting_or_stopping() {
    let mut backend = MockCacheBackend::new();
    backend
        .expect_ping()
        .returning(|| Err(BackendError::Unavailable("connection refused".into())));
    backend.expect_name().return_const("redis");
    let (client, monitor) = client_and_monitor(MockUserQueries::new(), Arc::new(backend)).await;

    let response = client.get("/health/ready").send().await;
    response.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(response).await["status"], "starting");

    monitor.set_readiness(Readiness::Ready);
    let response = client.get("/health/ready").send().await;
    response.assert_status_is_ok();
    let body = json_of(response).await;
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["cache"]["status"], "down");
    // The seed's /health still says the cache is down.
    client
        .get("/health")
        .send()
        .await
        .assert_status(StatusCode::SERVICE_UNAVAILABLE);

    monitor.set_readiness(Readiness::Stopping);
    let response = client.get("/health/ready").send().await;
    response.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(response).await["status"], "stopping");
}

#[tokio::test]
async fn ready_is_200_ready_with_a_healthy_cache() {
    let (client, monitor) = client_and_monitor(MockUserQueries::new(), healthy_backend()).await;
    monitor.set_readiness(Readiness::Ready);
    let response = client.get("/health/ready").send().await;
    response.assert_status_is_ok();
    assert_eq!(json_of(response).await["status"], "ready");
}

#[tokio::test]
async fn health_is_503_when_the_ping_does_not_answer_in_time() {
    let started = std::time::Instant::now();
    let response = client(
        MockUserQueries::new(),
        Arc::new(StubBackend::new().ping_delay(FOREVER)),
    )
    .await
    .get("/health")
    .send()
    .await;
    response.assert_status(StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(response).await;
    assert!(
        body["cache"]["error"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{body}"
    );
    // Bounded by the configured 200 ms, not hung.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn health_checks_never_touch_the_backend() {
    let mut backend = MockCacheBackend::new();
    backend.expect_name().return_const("mock");
    // One ping: the monitor's first check. A hundred probes add none.
    backend.expect_ping().times(1).returning(|| Ok(()));
    let client = client(MockUserQueries::new(), Arc::new(backend)).await;
    for _ in 0..100 {
        client.get("/health").send().await.assert_status_is_ok();
    }
}

#[tokio::test]
async fn lookup_with_a_duplicate_uuid_answers_400_naming_it() {
    let mut queries = MockUserQueries::new();
    queries.expect_lookup().never();
    let one = uuid(1).to_string();
    let response = client_with(queries)
        .await
        .post("/users/lookup")
        .body_json(&json!({"uuids": [one, one]}))
        .send()
        .await;
    let body = assert_error(response, StatusCode::BAD_REQUEST, "duplicate_uuids").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&uuid(1).to_string())
    );
}

#[tokio::test]
async fn a_body_over_the_limit_answers_413_json() {
    let client = client_with(MockUserQueries::new()).await;
    let huge = format!("{{\"uuids\": [\"{}\"]}}", "x".repeat(20 * 1024));
    let response = client
        .post("/users/lookup")
        .content_type("application/json")
        .body(huge)
        .send()
        .await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_answers_413_json() {
    let client = client_with(MockUserQueries::new()).await;
    let huge = format!("{{\"uuids\": [\"{}\"]}}", "x".repeat(20 * 1024));
    let response = client
        .post("/users/lookup")
        .content_type("application/json")
        .header("transfer-encoding", "chunked")
        .body(poem::Body::from_bytes_stream(futures::stream::once(
            async move { Ok::<_, std::io::Error>(bytes::Bytes::from(huge)) },
        )))
        .send()
        .await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn a_chunked_body_that_trickles_is_cut_at_the_request_timeout() {
    let client = slow_client();
    // One byte, then nothing more, ever: the connection must not be held.
    let trickle = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from("{")) })
        .chain(futures::stream::pending());
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .post("/users/lookup")
            .content_type("application/json")
            .header("transfer-encoding", "chunked")
            .body(poem::Body::from_bytes_stream(trickle))
            .send(),
    )
    .await
    .expect("answered, not held open");
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "timeout").await;
}

#[tokio::test]
async fn a_wrong_content_type_answers_400_json() {
    let client = client_with(MockUserQueries::new()).await;
    let response = client
        .post("/users/lookup")
        .content_type("text/plain")
        .body("uuids=1")
        .send()
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
}

#[tokio::test]
async fn a_very_long_path_answers_a_json_4xx() {
    let client = client_with(MockUserQueries::new()).await;
    let response = client
        .get(format!("/users/{}", "a".repeat(8 * 1024)))
        .send()
        .await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_uuid").await;
}

/// A client of routes over [`SlowQueries`] whose requests are cut at 100 ms.
fn slow_client() -> TestClient<impl poem::Endpoint> {
    let monitor = HealthMonitor::spawn(
        healthy_backend(),
        StatusSignal::new(),
        MonitorConfig::default(),
    );
    let config = HttpConfig {
        max_body_bytes: 1024,
        request_timeout: Duration::from_millis(100),
        ..HttpConfig::default()
    };
    TestClient::new(routes(
        Arc::new(SlowQueries),
        Arc::new(MockUserCommands::new()),
        monitor,
        config,
        super::Operations::default(),
    ))
}

/// A domain that takes 5 s to list users.
struct SlowQueries;
#[async_trait::async_trait]
impl domain::UserQueries for SlowQueries {
    async fn user_by_uuid(&self, uuid: UserUuid) -> Result<User, UserError> {
        Err(UserError::NotFoundByUuid(uuid))
    }
    async fn user_by_id(&self, id: UserId) -> Result<User, UserError> {
        Err(UserError::NotFoundById(id))
    }
    async fn list_users(&self, _: domain::Page) -> Result<Vec<User>, UserError> {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(vec![])
    }
    async fn lookup(&self, _: &[UserUuid]) -> Result<Lookup, UserError> {
        Ok(Lookup::default())
    }
    async fn list_users_after(&self, _: Option<UserId>, _: u32) -> Result<Vec<User>, UserError> {
        Ok(vec![])
    }
    async fn count_users(&self) -> Result<u64, UserError> {
        Ok(0)
    }
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_answers_503_json() {
    let client = slow_client();
    let started = std::time::Instant::now();
    let response = client.get("/users").send().await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn any_user_queries() -> MockUserQueries {
        let mut queries = MockUserQueries::new();
        queries
            .expect_user_by_uuid()
            .returning(|u| Err(UserError::NotFoundByUuid(u)));
        queries.expect_lookup().returning(|u| {
            Ok(Lookup {
                users: vec![],
                missing: u.to_vec(),
            })
        });
        queries
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        // (An empty segment is `/users/`, the list: tested on its own.)
        fn no_path_segment_makes_the_service_fail(segment in "\\PC{1,300}") {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let status = runtime.block_on(async {
                let client = client_with(any_user_queries()).await;
                let encoded: String = segment.bytes().map(|b| format!("%{b:02X}")).collect();
                client.get(format!("/users/{encoded}")).send().await.0.status()
            });
            prop_assert!(status.is_client_error(), "{status} for {segment:?}");
        }

        #[test]
        fn no_lookup_body_makes_the_service_fail(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let status = runtime.block_on(async {
                let client = client_with(any_user_queries()).await;
                client.post("/users/lookup").content_type("application/json").body(body.clone()).send().await.0.status()
            });
            prop_assert!(status.is_client_error() || status.is_success(), "{status}");
        }
    }
}

#[test]
fn every_body_is_sent_as_its_schema_documents_it() {
    use super::health::{CacheHealth, HealthBody, LiveBody, NearHealth, StoreHealth};
    use super::json::agreement::assert_same_json;
    use super::root::ServiceInfo;
    use super::users::{LookupResponseBody, UserDto, UserList};

    let dto = UserDto::from(user(1));
    assert_same_json(&dto);
    assert_same_json(&UserList {
        users: vec![dto.clone(), UserDto::from(user(2))],
        limit: 100,
        offset: 0,
        next_cursor: Some("u2".into()),
        total: Some(2),
    });
    assert_same_json(&UserList {
        users: vec![],
        limit: 100,
        offset: 0,
        next_cursor: None,
        total: None,
    });
    assert_same_json(&LookupResponseBody {
        users: vec![dto],
        missing: vec![uuid(3).get()],
    });
    for (latency_ms, error) in [(Some(0.4), None), (None, Some("refused".to_owned()))] {
        let near = error.clone().map(|error| NearHealth {
            status: "lost".into(),
            flushes: 2,
            error: Some(error),
        });
        assert_same_json(&HealthBody {
            status: "healthy".into(),
            cache: CacheHealth {
                backend: "redis".into(),
                status: "up".into(),
                since_secs: 12.5,
                latency_ms,
                error: error.clone(),
                near,
            },
            store: Some(StoreHealth {
                kind: "postgres".into(),
                status: "down".into(),
                since_secs: 1.0,
                latency_ms,
                error,
            }),
        });
    }
    assert_same_json(&LiveBody {
        status: "alive".into(),
    });
    assert_same_json(&ServiceInfo {
        name: "n".into(),
        version: "v".into(),
        docs: "/docs".into(),
        openapi: "/openapi.json".into(),
        health: "/health".into(),
    });
}

#[tokio::test]
async fn json_bodies_carry_the_json_content_type() {
    let mut queries = MockUserQueries::new();
    queries.expect_user_by_uuid().returning(|_| Ok(user(1)));
    let client = client_with(queries).await;
    for path in [
        "/users/550e8400-e29b-41d4-a716-446655440001",
        "/health/live",
        "/",
    ] {
        let response = client.get(path).send().await;
        response.assert_status_is_ok();
        response.assert_header("content-type", "application/json; charset=utf-8");
    }
}

mod contract {
    //! The HTTP contract: what the document states is what the server does.

    use super::*;

    async fn document() -> Value {
        let client = client_with(MockUserQueries::new()).await;
        let response = client.get("/openapi.json").send().await;
        response.assert_status_is_ok();
        json_of(response).await
    }

    fn operations(document: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        found
    }

    #[tokio::test]
    async fn every_operation_has_an_operation_id_and_the_guards_answers() {
        let document = document().await;
        let operations = operations(&document);
        assert!(operations.len() >= 7, "{operations:?}");
        for (path, method, operation) in &operations {
            assert!(operation["operationId"].is_string(), "{method} {path}");
            let responses = &operation["responses"];
            assert!(
                responses["405"]["headers"]["Allow"].is_object(),
                "{method} {path}"
            );
            let timeout = responses["503"]["description"].as_str().unwrap_or_default();
            assert!(timeout.contains("timeout"), "{method} {path}: {timeout}");
        }
        let lookup = &document["paths"]["/users/lookup"]["post"]["responses"];
        assert!(lookup["413"].is_object());
        assert!(lookup["400"].is_object());
    }

    #[tokio::test]
    async fn the_document_states_the_rules_the_server_enforces() {
        let document = document().await;
        let get = &document["paths"]["/users/{uuid}"]["get"];
        let uuid = &get["parameters"][0]["schema"];
        assert_eq!(uuid["format"], "uuid", "{get}");
        assert!(uuid["example"].is_string());
        assert!(get["responses"]["404"].is_object());

        let list = &document["paths"]["/users"]["get"]["parameters"];
        let param = |name: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["schema"]
                .clone()
        };
        let limit = param("limit");
        assert_eq!(
            (limit["minimum"].as_f64(), limit["maximum"].as_f64()),
            (Some(1.0), Some(1000.0)),
            "{limit}"
        );
        assert_eq!(limit["default"], 100);
        assert_eq!(param("offset")["default"], 0);
        assert_eq!(param("offset")["minimum"].as_f64(), Some(0.0));

        let schemas = &document["components"]["schemas"];
        let uuids = &schemas["LookupRequest"]["properties"]["uuids"];
        assert_eq!(uuids["maxItems"], 100, "{uuids}");
        assert_eq!(uuids["uniqueItems"], true);
        assert_eq!(uuids["items"]["format"], "uuid");
        assert!(schemas["LookupRequest"]["example"]["uuids"].is_array());
        assert!(schemas["UserDto"]["example"]["email"].is_string());
        assert!(schemas["UserDto"]["properties"].get("id").is_none());

        let codes = serde_json::to_string(&schemas["ErrorCode"]["enum"]).unwrap();
        for code in [
            "invalid_uuid",
            "too_many_uuids",
            "duplicate_uuids",
            "not_found",
            "method_not_allowed",
            "payload_too_large",
            "timeout",
            "internal",
            "bad_request",
        ] {
            assert!(codes.contains(code), "{code} missing from {codes}");
        }
    }

    #[tokio::test]
    async fn swagger_ui_shows_the_completed_document() {
        let client = client_with(MockUserQueries::new()).await;
        let response = client.get("/docs").send().await;
        response.assert_status_is_ok();
        let html = response.0.into_body().into_string().await.unwrap();
        assert!(
            html.contains("the `Allow` header lists the methods it does"),
            "the page embeds the generated document"
        );
    }

    #[tokio::test]
    async fn the_documented_example_lookup_is_accepted() {
        let document = document().await;
        let example = document["components"]["schemas"]["LookupRequest"]["example"].clone();
        let mut queries = MockUserQueries::new();
        queries.expect_lookup().returning(|uuids| {
            Ok(Lookup {
                users: vec![],
                missing: uuids.to_vec(),
            })
        });
        let client = client_with(queries).await;
        let response = client
            .post("/users/lookup")
            .body_json(&example)
            .send()
            .await;
        response.assert_status_is_ok();
    }

    #[tokio::test]
    async fn a_wrong_method_answers_405_with_allow() {
        let client = client_with(MockUserQueries::new()).await;
        let response = client.delete("/users").send().await;
        response.assert_status(StatusCode::METHOD_NOT_ALLOWED);
        response.assert_header("allow", "GET, POST, HEAD");
        assert_error(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
        let response = client.get("/users/lookup").send().await;
        if response.0.status() == StatusCode::METHOD_NOT_ALLOWED {
            response.assert_header("allow", "POST");
        }
    }

    #[tokio::test]
    async fn head_answers_carry_content_length() {
        let mut queries = MockUserQueries::new();
        queries.expect_list_users().returning(|_| Ok(vec![user(1)]));
        let client = client_with(queries).await;
        let get = client.get("/users").send().await;
        let body = get.0.into_body().into_bytes().await.unwrap();
        let head = client.head("/users").send().await;
        head.assert_status_is_ok();
        head.assert_header("content-length", body.len().to_string());
    }

    #[tokio::test]
    async fn parse_errors_name_the_parameter_without_parser_internals() {
        let client = client_with(MockUserQueries::new()).await;
        for query in [
            "limit=-1",
            "limit=0",
            "limit=1001",
            "limit=abc",
            "offset=-3",
        ] {
            let response = client.get(format!("/users?{query}")).send().await;
            let body = assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
            let message = body["message"].as_str().unwrap();
            let name = query.split('=').next().unwrap();
            assert!(
                message.contains(name) && message.contains("must be"),
                "{query}: {message}"
            );
            assert!(
                !message.contains("failed to parse") && !message.contains("uint32"),
                "{query}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_id_is_echoed_or_made() {
        let client = client_with(MockUserQueries::new()).await;
        let response = client
            .get("/health/live")
            .header("x-request-id", "abc-123")
            .send()
            .await;
        response.assert_header("x-request-id", "abc-123");
        let first = client.get("/health/live").send().await;
        let second = client.get("/health/live").send().await;
        let id = |r: &poem::test::TestResponse| {
            r.0.headers()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_ne!(id(&first), id(&second));
        // A hostile id (control characters, too long) is replaced, not echoed.
        let long = "x".repeat(200);
        let response = client
            .get("/health/live")
            .header("x-request-id", long.as_str())
            .send()
            .await;
        assert_ne!(id(&response), long);
    }
}

mod writes {
    use super::*;

    async fn writer(commands: MockUserCommands) -> TestClient<impl poem::Endpoint> {
        client_of(
            MockUserQueries::new(),
            commands,
            healthy_backend(),
            HttpConfig::default(),
        )
        .await
        .0
    }

    fn header(response: &poem::test::TestResponse, name: &str) -> Option<String> {
        response
            .0
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn post_creates_a_user_answering_201_with_location_and_etag() {
        let mut commands = MockUserCommands::new();
        commands
            .expect_create_user()
            .withf(|u: &NewUser| {
                u.email.as_str() == "ada@example.com" && u.first_name.as_str() == "Ada"
            })
            .returning(|_| Ok(user(11)));
        let response = writer(commands)
            .await
            .post("/users")
            .body_json(&json!({"first_name": " Ada ", "last_name": "Lovelace", "email": "ada@example.com"}))
            .send()
            .await;
        response.assert_status(StatusCode::CREATED);
        assert_eq!(
            header(&response, "location").as_deref(),
            Some("/users/550e8400-e29b-41d4-a716-446655440011")
        );
        assert_eq!(header(&response, "etag").as_deref(), Some("\"1\""));
        let body = json_of(response).await;
        assert!(
            body.get("id").is_none(),
            "the internal id stays inside: {body}"
        );
    }

    #[tokio::test]
    async fn post_with_a_bad_field_is_400_naming_it_and_a_taken_email_is_409() {
        let mut commands = MockUserCommands::new();
        commands
            .expect_create_user()
            .returning(|u| Err(UserError::DuplicateEmail(u.email.into_string())));
        let client = writer(commands).await;
        let bad = client
            .post("/users")
            .body_json(&json!({"first_name": "Ada", "last_name": "L", "email": "no-at-sign"}))
            .send()
            .await;
        let body = assert_error(bad, StatusCode::BAD_REQUEST, "invalid_field").await;
        assert!(
            body["message"].as_str().unwrap().contains("e-mail"),
            "{body}"
        );
        let blank = client
            .post("/users")
            .body_json(&json!({"first_name": "   ", "last_name": "L", "email": "a@b.co"}))
            .send()
            .await;
        assert_error(blank, StatusCode::BAD_REQUEST, "invalid_field").await;
        let taken = client
            .post("/users")
            .body_json(&json!({"first_name": "Ada", "last_name": "L", "email": "a@b.co"}))
            .send()
            .await;
        assert_error(taken, StatusCode::CONFLICT, "conflict").await;
    }

    #[tokio::test]
    async fn patch_passes_if_match_and_answers_the_new_etag_or_412() {
        let mut commands = MockUserCommands::new();
        commands
            .expect_update_user()
            .withf(|_, c: &UserChanges, v| {
                c.last_name.is_some() && c.first_name.is_none() && *v == Some(Version::new(1))
            })
            .returning(|_, _, _| Ok(user(1).with_version(Version::new(2))));
        commands
            .expect_update_user()
            .withf(|_, _, v| *v == Some(Version::new(7)))
            .returning(|_, _, _| {
                Err(UserError::VersionMismatch {
                    current: Version::new(2),
                })
            });
        let client = writer(commands).await;
        let ok = client
            .patch("/users/550e8400-e29b-41d4-a716-446655440001")
            .header("if-match", "\"1\"")
            .body_json(&json!({"last_name": "King"}))
            .send()
            .await;
        ok.assert_status_is_ok();
        assert_eq!(header(&ok, "etag").as_deref(), Some("\"2\""));
        let stale = client
            .patch("/users/550e8400-e29b-41d4-a716-446655440001")
            .header("if-match", "\"7\"")
            .body_json(&json!({"last_name": "King"}))
            .send()
            .await;
        assert_error(
            stale,
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
        )
        .await;
    }

    #[tokio::test]
    async fn patch_with_a_bad_field_type_or_a_bad_uuid_is_400() {
        let mut commands = MockUserCommands::new();
        commands.expect_update_user().never();
        let client = writer(commands).await;
        let not_text = client
            .patch("/users/550e8400-e29b-41d4-a716-446655440001")
            .body_json(&json!({"last_name": false}))
            .send()
            .await;
        assert_error(not_text, StatusCode::BAD_REQUEST, "bad_request").await;
        let bad = client
            .patch("/users/nope")
            .body_json(&json!({"last_name": "King"}))
            .send()
            .await;
        assert_error(bad, StatusCode::BAD_REQUEST, "invalid_uuid").await;
    }

    #[tokio::test]
    async fn if_match_with_several_tags_writes_at_any_of_them_and_only_weak_ones_never() {
        let mut commands = MockUserCommands::new();
        commands
            .expect_delete_user()
            .withf(|_, v| *v == Some(Version::new(3)))
            .returning(|_, _| {
                Err(UserError::VersionMismatch {
                    current: Version::new(4),
                })
            });
        commands
            .expect_delete_user()
            .withf(|_, v| *v == Some(Version::new(4)))
            .returning(|_, _| Ok(()));
        commands
            .expect_delete_user()
            .withf(|_, v| *v == Some(Version::new(0)))
            .returning(|_, _| {
                Err(UserError::VersionMismatch {
                    current: Version::new(4),
                })
            });
        let client = writer(commands).await;
        let path = "/users/550e8400-e29b-41d4-a716-446655440001";
        let listed = client
            .delete(path)
            .header("if-match", "\"3\", W/\"9\", \"4\"")
            .send()
            .await;
        listed.assert_status(StatusCode::NO_CONTENT);
        let weak = client
            .delete(path)
            .header("if-match", "W/\"4\"")
            .send()
            .await;
        assert_error(weak, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    }

    #[tokio::test]
    async fn a_malformed_if_match_is_400_and_writes_nothing() {
        let mut commands = MockUserCommands::new();
        commands.expect_update_user().never();
        commands.expect_delete_user().never();
        let client = writer(commands).await;
        let path = "/users/550e8400-e29b-41d4-a716-446655440001";
        // The last is not ASCII text: poem-openapi's `Header` would drop
        // it, and the write would go through without its condition.
        let malformed = [&b"3"[..], b"\"3", b"\"3\" \"4\"", b"\xc2\x84"]
            .map(|bytes| poem::http::HeaderValue::from_bytes(bytes).expect("a header value"));
        for value in malformed {
            let patched = client
                .patch(path)
                .header("if-match", value.clone())
                .body_json(&json!({"last_name": "King"}))
                .send()
                .await;
            assert_error(patched, StatusCode::BAD_REQUEST, "bad_request").await;
            let deleted = client.delete(path).header("if-match", value).send().await;
            assert_error(deleted, StatusCode::BAD_REQUEST, "bad_request").await;
        }
    }

    #[tokio::test]
    async fn delete_answers_204_then_404() {
        let mut commands = MockUserCommands::new();
        let mut calls = 0;
        commands.expect_delete_user().returning(move |uuid, _| {
            calls += 1;
            if calls == 1 {
                Ok(())
            } else {
                Err(UserError::NotFoundByUuid(uuid))
            }
        });
        let client = writer(commands).await;
        let path = "/users/550e8400-e29b-41d4-a716-446655440001";
        client
            .delete(path)
            .send()
            .await
            .assert_status(StatusCode::NO_CONTENT);
        assert_error(
            client.delete(path).send().await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }

    #[tokio::test]
    async fn get_answers_304_when_if_none_match_names_the_current_version() {
        let mut queries = MockUserQueries::new();
        queries
            .expect_user_by_uuid()
            .returning(|_| Ok(user(1).with_version(Version::new(3))));
        let client = client_with(queries).await;
        let path = "/users/550e8400-e29b-41d4-a716-446655440001";
        let current = client
            .get(path)
            .header("if-none-match", "W/\"2\", \"3\"")
            .send()
            .await;
        current.assert_status(StatusCode::NOT_MODIFIED);
        assert_eq!(header(&current, "etag").as_deref(), Some("\"3\""));
        assert_eq!(
            header(&current, "cache-control").as_deref(),
            Some("no-cache")
        );
        assert!(current.0.into_body().into_bytes().await.unwrap().is_empty());
        let old = client
            .get(path)
            .header("if-none-match", "\"2\"")
            .send()
            .await;
        old.assert_status_is_ok();
        assert_eq!(header(&old, "etag").as_deref(), Some("\"3\""));
        // A client that accepts a coding: the 304 sends the `Vary` its 200
        // sends (RFC 9110, 15.4.5): none, a user is never compressed.
        for if_none_match in ["\"2\"", "\"3\""] {
            let answer = client
                .get(path)
                .header("accept-encoding", "gzip")
                .header("if-none-match", if_none_match)
                .send()
                .await;
            assert_eq!(
                header(&answer, "vary"),
                None,
                "If-None-Match: {if_none_match}"
            );
        }
    }

    #[tokio::test]
    async fn lists_page_by_cursor_and_count_on_request() {
        let mut queries = MockUserQueries::new();
        queries
            .expect_list_users()
            .returning(|_| Ok(vec![user(1), user(2)]));
        queries
            .expect_list_users_after()
            .withf(|after, limit| *after == Some(UserId::new(2).unwrap()) && *limit == 2)
            .returning(|_, _| Ok(vec![user(3)]));
        queries.expect_count_users().returning(|| Ok(3));
        let client = client_with(queries).await;
        let first = json_of(client.get("/users?limit=2&count=true").send().await).await;
        assert_eq!(first["total"], 3);
        let cursor = first["next_cursor"].as_str().unwrap().to_owned();
        let second = json_of(
            client
                .get(format!("/users?limit=2&cursor={cursor}"))
                .send()
                .await,
        )
        .await;
        assert_eq!(second["users"].as_array().unwrap().len(), 1);
        assert!(
            second.get("next_cursor").is_none(),
            "the last page: {second}"
        );
        let forged = client.get("/users?cursor=42").send().await;
        assert_error(forged, StatusCode::BAD_REQUEST, "invalid_cursor").await;
        let both = client
            .get(format!("/users?offset=1&limit=2&cursor={cursor}"))
            .send()
            .await;
        let both = json_of(both).await;
        assert_eq!(both["offset"], 0, "a cursor wins over an offset: {both}");
    }

    #[tokio::test]
    async fn large_bodies_are_compressed_as_accepted_and_a_user_never_is() {
        let mut queries = MockUserQueries::new();
        queries
            .expect_list_users()
            .returning(|_| Ok((1..=50).map(user).collect()));
        queries.expect_user_by_uuid().returning(|_| Ok(user(1)));
        let client = client_with(queries).await;
        let list = client
            .get("/users")
            .header("accept-encoding", "gzip, br;q=0")
            .send()
            .await;
        list.assert_status_is_ok();
        assert_eq!(header(&list, "content-encoding").as_deref(), Some("gzip"));
        assert_eq!(header(&list, "vary").as_deref(), Some("accept-encoding"));
        let plain = client.get("/users").send().await;
        assert_eq!(header(&plain, "content-encoding"), None);
        let one = client
            .get("/users/550e8400-e29b-41d4-a716-446655440001")
            .header("accept-encoding", "br, gzip")
            .send()
            .await;
        assert_eq!(
            header(&one, "content-encoding"),
            None,
            "small: sent as it is"
        );
    }

    #[tokio::test]
    async fn a_user_is_never_compressed_even_when_large_so_its_strong_etag_names_one_body() {
        // About the largest a user can be: 100 four-byte characters in each
        // name, an address of 251 characters (254 at most).
        let wide = "\u{1D54F}".repeat(100);
        let large = User::new(
            UserId::new(1).unwrap(),
            uuid(1),
            Name::new("first_name", &wide).unwrap(),
            Name::new("last_name", &wide).unwrap(),
            Email::new(&format!(
                "{}@{}.{}.{}.com",
                "a".repeat(64),
                "b".repeat(60),
                "c".repeat(60),
                "d".repeat(60)
            ))
            .unwrap(),
        );
        let mut queries = MockUserQueries::new();
        queries
            .expect_user_by_uuid()
            .returning(move |_| Ok(large.clone()));
        let client = client_with(queries).await;
        let path = "/users/550e8400-e29b-41d4-a716-446655440001";
        let plain = client.get(path).send().await;
        let plain_tag = header(&plain, "etag");
        let plain_body = plain.0.into_body().into_bytes().await.unwrap();
        assert!(plain_body.len() > 1024, "{} bytes", plain_body.len());
        for coding in ["br", "gzip"] {
            let answer = client
                .get(path)
                .header("accept-encoding", coding)
                .send()
                .await;
            answer.assert_status_is_ok();
            assert_eq!(header(&answer, "content-encoding"), None, "{coding}");
            assert_eq!(header(&answer, "etag"), plain_tag, "{coding}");
            assert_eq!(header(&answer, "vary"), None, "{coding}");
            let body = answer.0.into_body().into_bytes().await.unwrap();
            assert_eq!(body, plain_body, "{coding}: the tag's one body");
        }
    }

    #[tokio::test]
    async fn cors_speaks_only_to_listed_origins_and_serves_every_origin_varying_on_it() {
        let config = HttpConfig {
            cors_origins: vec!["https://app.example.com".into()],
            ..HttpConfig::default()
        };
        let (client, _) = client_of(
            MockUserQueries::new(),
            MockUserCommands::new(),
            healthy_backend(),
            config,
        )
        .await;
        let preflight = client
            .options("/users/550e8400-e29b-41d4-a716-446655440001")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "PATCH")
            .header("access-control-request-headers", "if-match, content-type")
            .send()
            .await;
        assert!(preflight.0.status().is_success(), "a preflight is ok");
        assert_eq!(
            header(&preflight, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        let allowed = header(&preflight, "access-control-allow-headers").unwrap_or_default();
        assert!(
            ["if-match", "content-type"]
                .iter()
                .all(|asked| allowed.split(", ").any(|h| h == *asked)),
            "{allowed}"
        );
        let stranger = client
            .options("/users")
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await;
        assert_eq!(header(&stranger, "access-control-allow-origin"), None);
        stranger.assert_status(StatusCode::NO_CONTENT);
        // A listed origin's answers say so; every answer varies on Origin.
        let read = client
            .get("/")
            .header("origin", "https://app.example.com")
            .header("accept-encoding", "gzip")
            .send()
            .await;
        read.assert_status_is_ok();
        assert_eq!(
            header(&read, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            header(&read, "access-control-expose-headers").as_deref(),
            Some("etag, location, x-request-id")
        );
        let vary: Vec<_> = read.0.headers().get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
        // Another origin is served without CORS headers, as a same-origin
        // request is (a browser sends Origin on a same-origin POST, e.g.
        // from /docs): the browser, not a 403, keeps it from a foreign page.
        let other = client
            .post("/users/lookup")
            .header("origin", "http://127.0.0.1:8000")
            .body_json(&json!({"uuids": ["not-a-uuid"]}))
            .send()
            .await;
        assert_eq!(header(&other, "access-control-allow-origin"), None);
        assert_error(other, StatusCode::BAD_REQUEST, "invalid_uuid").await;
        let off = client_with(MockUserQueries::new()).await;
        let response = off
            .get("/")
            .header("origin", "https://app.example.com")
            .send()
            .await;
        assert_eq!(header(&response, "access-control-allow-origin"), None);
    }
}
