//! The reference for `cargo xtask bench`: a bare poem handler that answers
//! `GET /users/{uuid}` with one Redis GET over one multiplexed connection, and
//! nothing else (no typed cache, no decorators, no domain, no store, no
//! OpenAPI). What our hit path over Redis costs is read against it in the
//! same run.
//!
//! Reads what the service reads: `CACHEMANAGER__SERVER__PORT`, `REDIS_URL`,
//! `REDIS_PASSWORD`. The keys are the service's (`user:uuid-to-id:{uuid}`),
//! so it answers from what the service cached.

#![allow(missing_docs)]

use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::{Data, Path};
use poem::{EndpointExt, IntoResponse, Response, Route, Server, get, handler};
use redis::IntoConnectionInfo;
use redis::aio::ConnectionManager;

#[handler]
fn live() -> Response {
    Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(r#"{"status":"alive"}"#)
}

#[handler]
async fn user(Path(uuid): Path<String>, redis: Data<&ConnectionManager>) -> Response {
    let mut connection = redis.0.clone();
    let value: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(format!("user:uuid-to-id:{uuid}"))
        .query_async(&mut connection)
        .await;
    match value {
        Ok(Some(id)) => Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(format!(r#"{{"id":{id},"uuid":"{uuid}"}}"#)),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::var("CACHEMANAGER__SERVER__PORT").unwrap_or_else(|_| "8080".into());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut info = url.as_str().into_connection_info()?;
    if let Ok(password) = std::env::var("REDIS_PASSWORD") {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let redis = ConnectionManager::new(redis::Client::open(info)?).await?;
    let app = Route::new()
        .at("/health/live", get(live))
        .at("/users/:uuid", get(user))
        .data(redis);
    Server::new(TcpListener::bind(format!("127.0.0.1:{port}")))
        .run(app)
        .await?;
    Ok(())
}
