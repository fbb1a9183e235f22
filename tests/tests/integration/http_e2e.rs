//! The HTTP service end to end over each backend.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use tests::{LogCapture, TestRedis, spawn_app, spawn_app_on_redis};

const JOHN: &str = "550e8400-e29b-41d4-a716-446655440001";

#[tokio::test]
async fn a_lookup_over_redis_leaves_both_directions_in_the_seeds_format() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;

    let response = app.get(&format!("/users/{JOHN}")).await;
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["first_name"], "John");
    app.fills_settled().await;

    let mut raw = redis.raw().await;
    let id: String = raw.get(format!("user:uuid-to-id:{JOHN}")).await.unwrap();
    assert_eq!(id, "1");
    let uuid: String = raw.get("user:id-to-uuid:1").await.unwrap();
    assert_eq!(uuid, JOHN);

    // The second request is a hit and answers the same.
    let again: Value = app
        .get(&format!("/users/{JOHN}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, user);
    app.stop().await;
}

#[tokio::test]
async fn batch_lookup_over_redis_answers_users_and_missing_and_caches_them() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    let body = json!({"uuids": [
        "550e8400-e29b-41d4-a716-446655440002",
        "550e8400-e29b-41d4-a716-446655440099",
        "550e8400-e29b-41d4-a716-446655440010"
    ]});
    let response = app.post_json("/users/lookup", &body).await;
    assert_eq!(response.status(), 200);
    let found: Value = response.json().await.unwrap();
    let names: Vec<&str> = found["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["first_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Jane", "Hannah"]);
    assert_eq!(
        found["missing"],
        json!(["550e8400-e29b-41d4-a716-446655440099"])
    );

    app.fills_settled().await;
    let mut raw = redis.raw().await;
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut raw).await.unwrap();
    assert_eq!(size, 6, "two users: their records and both directions");

    let again: Value = app
        .post_json("/users/lookup", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, found);
    app.stop().await;
}

#[tokio::test]
async fn health_names_the_redis_backend() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    app.wait_for_health(200).await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["cache"]["backend"], "redis");
    assert_eq!(body["cache"]["status"], "up");
    app.stop().await;
}

#[tokio::test]
async fn health_turns_503_when_redis_stops_while_users_are_still_served() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    app.wait_for_health(200).await;
    redis.container.stop().await.unwrap();
    // The circuit opens after a few failed lookups, and the monitor follows at once.
    let noticed = app.wait_for_health(503).await;
    assert!(noticed < Duration::from_secs(5), "took {noticed:?}");
    let response = app.get(&format!("/users/{JOHN}")).await;
    assert_eq!(response.status(), 200);
    // Still ready: a cache outage must not take the instance out of service.
    let response = app.get("/health/ready").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["cache"]["status"], "down");
    app.stop().await;
}

#[tokio::test]
async fn the_memory_and_noop_backends_serve_the_same_answers() {
    for backend in ["memory", "noop"] {
        let app = spawn_app(&[("CACHEMANAGER__CACHE__BACKEND", backend)]).await;
        let first: Value = app
            .get(&format!("/users/{JOHN}"))
            .await
            .json()
            .await
            .unwrap();
        let second: Value = app
            .get(&format!("/users/{JOHN}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(first["email"], "john.doe@example.com", "{backend}");
        assert_eq!(first, second, "{backend}");
        let list: Value = app.get("/users?limit=3").await.json().await.unwrap();
        assert_eq!(list["users"].as_array().unwrap().len(), 3, "{backend}");
        let health: Value = app.get("/health").await.json().await.unwrap();
        assert_eq!(health["cache"]["backend"], backend);
        app.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_outage_is_logged_once_not_once_per_request() {
    let captured = LogCapture::default();
    let _guard = captured.start();
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    app.wait_for_health(200).await;
    redis.container.stop().await.unwrap();
    for n in 0..300 {
        let response = if n % 2 == 0 {
            app.get(&format!("/users/{JOHN}")).await
        } else {
            app.post_json("/users/lookup", &json!({"uuids": [JOHN]}))
                .await
        };
        assert_eq!(response.status(), 200);
    }
    app.stop().await;

    let logs = captured.text();
    let count = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("circuit opened"), 1, "{logs}");
    assert_eq!(count("cache backend down"), 1, "{logs}");
    // Above INFO: only the few failures that opened the circuit, the
    // transitions, and the start-up probe's verdict. Nothing per request.
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(
        loud.len() <= 12,
        "{} error and warning lines for 300 requests:\n{}",
        loud.len(),
        loud.join("\n")
    );
}
