//! Authentication: a wrong password is a clear error, never shown, and the
//! service keeps serving.

use std::time::Duration;

use adapters::Secret;
use adapters::backend::{RedisBackend, RedisConfig, RedisSetupError};
use tests::{TestRedis, spawn_app};

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_that_never_shows_the_password() {
    let redis = TestRedis::start().await;
    let wrong = "wrong-password-4f2a";
    let config = RedisConfig {
        password: Some(Secret::new(wrong)),
        ..redis.config()
    };
    let error = RedisBackend::connect(&config).await.unwrap_err();
    assert!(
        matches!(error, RedisSetupError::Unauthorized { .. }),
        "{error:?}"
    );
    let text = format!("{error} {error:?}");
    assert!(text.contains("authentication"), "{text}");
    assert!(
        !text.contains(wrong) && !text.contains(&redis.password),
        "{text}"
    );
}

#[tokio::test]
async fn no_password_against_a_protected_redis_is_refused() {
    let redis = TestRedis::start().await;
    let config = RedisConfig {
        password: None,
        ..redis.config()
    };
    let error = RedisBackend::connect(&config).await.unwrap_err();
    assert!(
        matches!(error, RedisSetupError::Unauthorized { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn with_a_wrong_password_the_service_still_serves_and_health_says_503() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let app = spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", "wrong-password-9c1e"),
    ])
    .await;
    let response = app.get("/users/550e8400-e29b-41d4-a716-446655440003").await;
    assert_eq!(response.status(), 200);
    let user: serde_json::Value = response.json().await.unwrap();
    assert_eq!(user["email"], "bob.johnson@example.com");

    // Not merely "not checked yet": the check ran and names the refusal.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let body = loop {
        let response = app.get("/health").await;
        let status = response.status();
        let body = response.text().await.unwrap();
        if status == 503 && body.contains("authentication") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/health never named the refused login: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!body.contains("wrong-password-9c1e"), "{body}");
    assert!(!body.contains("not checked yet"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_without_hanging() {
    let config = RedisConfig {
        url: format!("redis://127.0.0.1:{}", tests::free_port()),
        connect_timeout: Duration::from_millis(300),
        ..RedisConfig::default()
    };
    let started = std::time::Instant::now();
    let error = RedisBackend::connect(&config).await.unwrap_err();
    assert!(
        matches!(error, RedisSetupError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
