//! Redis AUTH with an ACL user, and secrets that never leak.

use adapters::Secret;
use adapters::backend::{RedisBackend, RedisConfig, RedisSetupError};
use serde_json::Value;
use tests::{LogCapture, TestRedis, spawn_app};

const ACL_USER: &str = "cachemanager";
const ACL_PASSWORD: &str = "acl-pw-5b7d1e";

async fn redis_with_acl_user() -> TestRedis {
    // Only this user may run commands on user:* keys; the default user keeps
    // the container's requirepass.
    let rule = format!(">{ACL_PASSWORD}");
    TestRedis::start_with(None, &["--user", ACL_USER, "on", &rule, "~user:*", "+@all"]).await
}

#[tokio::test]
async fn an_acl_user_with_its_password_is_accepted() {
    let redis = redis_with_acl_user().await;
    let config = RedisConfig {
        username: Some(ACL_USER.into()),
        password: Some(Secret::new(ACL_PASSWORD)),
        ..redis.config()
    };
    let backend = RedisBackend::connect(&config).await.unwrap();
    ports::CacheBackend::set(
        &backend,
        "user:acl:1",
        bytes::Bytes::from_static(b"1"),
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_acl_user_with_a_wrong_password_is_refused_clearly() {
    let redis = redis_with_acl_user().await;
    let config = RedisConfig {
        username: Some(ACL_USER.into()),
        password: Some(Secret::new("not-the-acl-pw")),
        ..redis.config()
    };
    let error = RedisBackend::connect(&config).await.unwrap_err();
    assert!(
        matches!(error, RedisSetupError::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("not-the-acl-pw"));
}

#[tokio::test]
async fn the_service_runs_as_an_acl_user() {
    let redis = redis_with_acl_user().await;
    let url = redis.url();
    let app = spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("CACHEMANAGER__REDIS__USERNAME", ACL_USER),
        ("REDIS_PASSWORD", ACL_PASSWORD),
    ])
    .await;
    app.wait_for_health(200).await;
    let user: Value = app
        .get("/users/550e8400-e29b-41d4-a716-446655440004")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["first_name"], "Alice");
    app.fills_settled().await;
    let mut raw = redis.raw().await;
    let id: String = redis::AsyncCommands::get(
        &mut raw,
        "user:uuid-to-id:550e8400-e29b-41d4-a716-446655440004",
    )
    .await
    .unwrap();
    assert_eq!(id, "4");
    app.stop().await;
}

// Current-thread runtime: every task of the service runs on this thread, so
// the thread's subscriber sees all of their logs.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_password_appears_in_no_log_error_health_body_or_debug_output() {
    let redis = TestRedis::start().await;
    let wrong = "leak-canary-7f3a9c";
    let captured = LogCapture::default();
    let _guard = captured.start();

    // Through the whole service: settings, start-up probe, requests, health.
    let url = format!("redis://:{wrong}@127.0.0.1:{}", redis.port);
    let app = spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", wrong),
    ])
    .await;
    let mut seen = String::new();
    for _ in 0..5 {
        let response = app.get("/users/550e8400-e29b-41d4-a716-446655440001").await;
        assert_eq!(response.status(), 200);
        seen.push_str(&response.text().await.unwrap());
    }
    let health = app.get("/health").await;
    assert_eq!(health.status(), 503);
    seen.push_str(&health.text().await.unwrap());
    app.stop().await;

    // Directly: the setup error, its Debug, and the config's Debug.
    let config = RedisConfig {
        url,
        password: Some(Secret::new(wrong)),
        ..redis.config()
    };
    let error = RedisBackend::connect(&config).await.unwrap_err();
    seen.push_str(&format!("{error} {error:?} {config:?}"));
    let settings = app::Settings::load(
        None,
        &[("REDIS_PASSWORD".to_owned(), wrong.to_owned())].into(),
    )
    .unwrap();
    seen.push_str(&format!("{settings:?}"));

    let logs = captured.text();
    assert!(
        logs.contains("refused authentication") || logs.contains("WRONGPASS"),
        "the failure was not logged:\n{logs}"
    );
    assert!(
        !logs.contains(wrong),
        "the password is in the logs:\n{logs}"
    );
    assert!(
        !seen.contains(wrong),
        "the password is in an answer or a Debug:\n{seen}"
    );
}
