//! What an operator sees: `/metrics` after known traffic (exact counts,
//! validated by `promtool`), the admin API with and without its token, and
//! the hostile input it must refuse.

use std::io::Write as _;
use std::process::{Command, Stdio};

use redis::AsyncCommands;
use tests::{LogCapture, TestRedis, spawn_app, spawn_app_on_redis};

const USER: &str = "550e8400-e29b-41d4-a716-446655440001";
const TOKEN: &str = "test-admin-token-0123456789";

/// The value of the sample whose name and labels are exactly `series`
/// (`name{label="v",...}`), or `None` when the exposition has no such line.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn scrape(app: &tests::TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = content_type(&response);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// Runs `promtool check metrics` on `exposition`: its errors, or `Ok`.
fn promtool(exposition: &str) -> Result<(), String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => panic!(
            "promtool cannot run ({error}): install it with `cargo xtask setup` (Debian's prometheus package)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[tokio::test]
async fn three_requests_for_one_user_over_a_cold_cache_count_one_miss_and_two_hits() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    assert_eq!(app.get(&format!("/users/{USER}")).await.status(), 200);
    // The miss's fill is written behind the answer: the next two are hits
    // once it is.
    let written = "cachemanager_deferred_fills_total{outcome=\"written\"}";
    tests::eventually(
        "the fill written",
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(5),
        || async { sample(&scrape(&app).await, written) == Some(1.0) },
    )
    .await;
    for _ in 0..2 {
        assert_eq!(app.get(&format!("/users/{USER}")).await.status(), 200);
    }
    let metrics = scrape(&app).await;
    assert_eq!(
        sample(
            &metrics,
            "cachemanager_deferred_fills_total{outcome=\"dropped\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cachemanager_deferred_fill_writes_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cachemanager_deferred_fills_pending"),
        Some(0.0),
        "{metrics}"
    );
    let record = |name: &str| sample(&metrics, &format!("{name}{{namespace=\"user:record\"}}"));
    assert_eq!(
        record("cachemanager_cache_misses_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        record("cachemanager_cache_hits_total"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "cachemanager_cache_loads_total{namespace=\"user:record\",result=\"found\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "cachemanager_cache_load_duration_seconds_count{namespace=\"user:record\"}"
        ),
        Some(1.0)
    );
    // Every read reached Redis once; one load reached the store once.
    assert_eq!(
        sample(
            &metrics,
            "cachemanager_backend_operation_duration_seconds_count{backend=\"redis\",operation=\"get\",outcome=\"ok\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    let store_queries: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cachemanager_store_query_duration_seconds_count{"))
        .filter(|l| !l.contains("operation=\"count\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(store_queries, 1.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_route=\"/users/{uuid}\",http_response_status_code=\"200\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    // Labels are templates, never raw paths: no uuid becomes a label value.
    assert!(!metrics.contains(USER), "{metrics}");
    assert_eq!(
        sample(&metrics, "cachemanager_breaker_state{state=\"closed\"}"),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn the_whole_exposition_passes_promtool_and_openmetrics_is_served_when_asked() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    // Traffic of every kind: hits, a miss of an unknown user, a bad uuid, a write.
    let _ = app.get(&format!("/users/{USER}")).await;
    let _ = app.get(&format!("/users/{USER}")).await;
    let _ = app.get("/users/550e8400-e29b-41d4-a716-4466554400ff").await;
    let _ = app.get("/users/not-a-uuid").await;
    let _ = app.get("/no/such/path").await;
    let created = app
        .post_json(
            "/users",
            &serde_json::json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let text = scrape(&app).await;
    if let Err(problems) = promtool(&text) {
        panic!("promtool check metrics failed:\n{problems}\n--- exposition ---\n{text}");
    }
    assert!(
        text.contains("http_route=\"unmatched\""),
        "a path outside the API is one label value: {text}"
    );

    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    let content_type = content_type(&response);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let open = response.text().await.unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# UNIT cachemanager_cache_load_duration_seconds seconds"));
    app.stop().await;
}

#[tokio::test]
async fn metrics_off_answers_404_and_keeps_serving() {
    let app = spawn_app(&[("CACHEMANAGER__METRICS__ENABLED", "false")]).await;
    assert_eq!(app.get("/metrics").await.status(), 404);
    assert_eq!(app.get(&format!("/users/{USER}")).await.status(), 200);
    app.stop().await;
}

async fn admin(
    app: &tests::TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app.client.request(method, format!("{}{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "current_thread")]
async fn the_admin_api_refuses_without_its_token_and_works_with_it() {
    let logs = LogCapture::default();
    let _guard = logs.start();
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[("CACHEMANAGER__ADMIN__TOKEN", TOKEN)]).await;
    let get = reqwest::Method::GET;
    let delete = reqwest::Method::DELETE;

    let (status, body) = admin(&app, get.clone(), "/admin/caches", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let wrong = "test-admin-token-0123456780";
    let (status, _) = admin(&app, get.clone(), "/admin/caches", Some(wrong), None).await;
    assert_eq!(status, 401);
    let (status, _) = admin(
        &app,
        delete.clone(),
        &format!("/admin/caches/user:record/keys/{USER}"),
        Some(wrong),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Fill the record cache, then list: its settings and counters.
    let _ = app.get(&format!("/users/{USER}")).await;
    app.fills_settled().await;
    let _ = app.get(&format!("/users/{USER}")).await;
    let (status, body) = admin(&app, get.clone(), "/admin/caches", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "redis");
    assert_eq!(body["circuit"], "closed");
    let record = body["caches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["namespace"] == "user:record")
        .unwrap()
        .clone();
    assert_eq!(record["ttl_secs"], 600);
    assert_eq!(record["counters"]["hits"], 1, "{record}");
    assert_eq!(record["counters"]["misses"], 1, "{record}");

    // Remove the record: gone from Redis, and the next read is a miss.
    let mut raw = redis.raw().await;
    let key = format!("user:record:{USER}");
    assert!(raw.exists::<_, bool>(&key).await.unwrap());
    let (status, body) = admin(
        &app,
        delete.clone(),
        &format!("/admin/caches/user:record/keys/{USER}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
    assert!(!raw.exists::<_, bool>(&key).await.unwrap());
    let _ = app.get(&format!("/users/{USER}")).await;
    let (_, body) = admin(&app, get, "/admin/caches", Some(TOKEN), None).await;
    let misses = body["caches"][0]["counters"]["misses"].as_u64();
    assert_eq!(misses, Some(2), "{body}");

    // A batch of keys at once, once the read's fill has reached Redis (a
    // miss's fill is written after the linger, not before the answer).
    let _ = app.get(&format!("/users/{USER}")).await;
    app.fills_settled().await;
    let (status, body) = admin(
        &app,
        reqwest::Method::POST,
        "/admin/caches/user:record/invalidate",
        Some(TOKEN),
        Some(serde_json::json!({"keys": [USER, "550e8400-e29b-41d4-a716-4466554400ff"]})),
    )
    .await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");

    // That every admin call is logged is checked on the binary's own JSON
    // logs (app/tests/cli.rs): a capture on this thread can miss a line
    // whose call site another test's thread registered at the same moment.
    let text = logs.text();
    assert!(!text.contains(TOKEN), "the token was logged");
    assert!(!text.contains(wrong), "an offered token was logged");
    app.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_hostile_input() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[("CACHEMANAGER__ADMIN__TOKEN", TOKEN)]).await;
    let mut raw = redis.raw().await;
    let delete = reqwest::Method::DELETE;
    let post = reqwest::Method::POST;

    // Unknown namespaces.
    let (status, body) = admin(
        &app,
        delete.clone(),
        "/admin/caches/nope/keys/1",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = admin(
        &app,
        post.clone(),
        "/admin/caches/user/invalidate",
        Some(TOKEN),
        Some(serde_json::json!({"keys": ["record:x"]})),
    )
    .await;
    assert_eq!(status, 404);

    // A key cannot reach outside its namespace, and is never a pattern.
    let _: () = raw.set("user:uuid-to-id:a:b", "1").await.unwrap();
    let _: () = raw.set("user:uuid-to-id:7", "7").await.unwrap();
    for key in ["a:b", "a%3Ab", "*", "?", "[a]"] {
        let path = format!(
            "/admin/caches/user:uuid-to-id/keys/{}",
            key.replace('%', "%25").replace('?', "%3F")
        );
        let (status, body) = admin(&app, delete.clone(), &path, Some(TOKEN), None).await;
        assert_eq!(
            (status, body["removed"].as_u64()),
            (200, Some(0)),
            "{key}: {body}"
        );
    }
    let (_, body) = admin(
        &app,
        post.clone(),
        "/admin/caches/user:uuid-to-id/invalidate",
        Some(TOKEN),
        Some(serde_json::json!({"keys": ["*", "a:b"]})),
    )
    .await;
    assert_eq!(body["removed"].as_u64(), Some(0), "{body}");
    assert!(raw.exists::<_, bool>("user:uuid-to-id:a:b").await.unwrap());
    assert!(raw.exists::<_, bool>("user:uuid-to-id:7").await.unwrap());

    // Batches: empty and over 100 are refused; 100 is accepted.
    let keys =
        |n: usize| serde_json::json!({"keys": (0..n).map(|i| i.to_string()).collect::<Vec<_>>()});
    for (n, expected) in [(0, 400), (101, 400), (100, 200)] {
        let (status, body) = admin(
            &app,
            post.clone(),
            "/admin/caches/user:uuid-to-id/invalidate",
            Some(TOKEN),
            Some(keys(n)),
        )
        .await;
        assert_eq!(status, expected, "{n} keys: {body}");
    }
    assert!(!raw.exists::<_, bool>("user:uuid-to-id:7").await.unwrap());
    app.stop().await;
}

#[tokio::test]
async fn without_a_token_setting_every_admin_path_answers_404() {
    let app = spawn_app(&[]).await;
    for path in ["/admin/caches", "/admin/caches/user:record/keys/1"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let (status, _) = admin(
        &app,
        reqwest::Method::DELETE,
        "/admin/caches/user:record/keys/1",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// The dashboard shipped in docs/ queries only metrics a running service
/// exposes: a renamed family must not leave a panel silently empty.
#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exposed_by_a_running_service() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../../docs/observability/grafana-dashboard.json"
    ))
    .unwrap();
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    let _ = app.get(&format!("/users/{USER}")).await;
    let _ = app.get(&format!("/users/{USER}")).await;
    let text = scrape(&app).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for word in
                words.filter(|w| w.starts_with("cachemanager_") || w.starts_with("http_server_"))
            {
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                assert!(
                    families.contains(&family),
                    "panel {} queries {word}, which the service does not expose:\n{text}",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried > 10, "the dashboard queries {queried} metrics");
    app.stop().await;
}
