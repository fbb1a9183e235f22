//! Faults the driver does not heal by itself, against real Redis: a refused
//! login that is fixed later, a black-holed connection, a steadily slow
//! Redis, and commands Redis refuses while it keeps serving reads (`OOM`,
//! `READONLY`, `NOPERM`). Each test prints what it measured; the figures are
//! in docs/RESILIENCE.md. Deadlines here only bound a wait (a regression fails
//! instead of hanging); they are not the targets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::proxy::FaultProxy;
use tests::{LogCapture, TestApp, TestRedis, spawn_app, spawn_app_on_redis};

const JOHN: &str = "550e8400-e29b-41d4-a716-446655440001";
const JANE: &str = "550e8400-e29b-41d4-a716-446655440002";

/// Longest any wait below may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `condition` every 50 ms until it holds; how long that took.
async fn eventually<F, Fut>(what: &str, condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tests::eventually(what, PATIENCE, Duration::from_millis(50), condition).await
}

async fn health(app: &TestApp) -> (u16, Value) {
    let response = app.get("/health").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Whether the service reads John through the cache: two requests, and
/// Redis counts a hit for the second (once the first's fill, written behind
/// its answer if it missed, has been written or dropped).
async fn served_from_cache(app: &TestApp, redis: &TestRedis) -> bool {
    if app.get(&format!("/users/{JOHN}")).await.status() != 200 {
        return false;
    }
    app.fills_settled().await;
    let before = redis.keyspace_hits().await;
    if app.get(&format!("/users/{JOHN}")).await.status() != 200 {
        return false;
    }
    redis.keyspace_hits().await > before
}

/// The service starts with credentials Redis refuses; `fix` makes Redis
/// accept them. Returns how long after the fix the cache was used again.
async fn heals_after(
    redis: &mut TestRedis,
    vars: &[(&str, &str)],
    fix: &[&[&str]],
    new_password: Option<&str>,
) -> Duration {
    let app = spawn_app(vars).await;
    // Refused: requests are still served, and the health check says so.
    assert_eq!(app.get(&format!("/users/{JOHN}")).await.status(), 200);
    app.wait_for_health(503).await;
    assert!(!served_from_cache(&app, redis).await);

    let mut raw = redis.raw().await;
    for command in fix {
        let (name, args) = command.split_first().unwrap();
        let _: redis::Value = redis::cmd(name)
            .arg(args)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    if let Some(password) = new_password {
        redis.password = password.to_owned();
    }
    let fixed = Instant::now();
    eventually("the cache is used again, with no restart", || {
        served_from_cache(&app, redis)
    })
    .await;
    let healed = fixed.elapsed();
    let ready = eventually("/health answers 200 again", || async {
        health(&app).await.0 == 200
    })
    .await;
    println!(
        "healed: cache used again {:.2} s after Redis accepted the login; /health 200 {:.2} s after that",
        healed.as_secs_f64(),
        ready.as_secs_f64()
    );
    app.stop().await;
    healed
}

#[tokio::test]
async fn a_refused_password_heals_without_a_restart_once_redis_accepts_it() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let later = "password-set-later-7c1d";
    heals_after(
        &mut redis,
        &[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("REDIS_URL", url.as_str()),
            ("REDIS_PASSWORD", later),
        ],
        &[&["CONFIG", "SET", "requirepass", later]],
        Some(later),
    )
    .await;
}

#[tokio::test]
async fn an_acl_user_created_after_start_is_used_without_a_restart() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    heals_after(
        &mut redis,
        &[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("REDIS_URL", url.as_str()),
            ("CACHEMANAGER__REDIS__USERNAME", "late-user"),
            ("REDIS_PASSWORD", "late-user-pw"),
        ],
        &[&[
            "ACL",
            "SETUSER",
            "late-user",
            "on",
            ">late-user-pw",
            "~user:*",
            "+@all",
        ]],
        None,
    )
    .await;
}

#[tokio::test]
async fn a_refused_select_heals_once_the_user_may_select() {
    // The user may do everything but SELECT; the service wants database 1.
    let mut redis = TestRedis::start_with(
        None,
        &[
            "--user",
            "selector",
            "on",
            ">selector-pw",
            "~user:*",
            "+@all",
            "-select",
        ],
    )
    .await;
    let url = redis.url();
    heals_after(
        &mut redis,
        &[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("REDIS_URL", url.as_str()),
            ("CACHEMANAGER__REDIS__USERNAME", "selector"),
            ("REDIS_PASSWORD", "selector-pw"),
            ("CACHEMANAGER__REDIS__DB", "1"),
        ],
        &[&["ACL", "SETUSER", "selector", "+select"]],
        None,
    )
    .await;
}

#[tokio::test]
async fn a_black_holed_connection_is_replaced_and_no_request_fails() {
    let redis = TestRedis::start().await;
    let proxy = FaultProxy::start(redis.socket_address()).await;
    let url = proxy.url();
    let app = Arc::new(
        spawn_app(&[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("REDIS_URL", url.as_str()),
            ("REDIS_PASSWORD", redis.password.as_str()),
        ])
        .await,
    );
    app.wait_for_health(200).await;
    assert!(served_from_cache(&app, &redis).await);

    // Eight clients for 6 s; the path goes dark after 2 s.
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (app, failed, served) = (app.clone(), failed.clone(), served.clone());
            tokio::spawn(async move {
                let mut n = c;
                while Instant::now() < stop_at {
                    let uuid = format!("550e8400-e29b-41d4-a716-4466554400{:02}", n % 10 + 1);
                    let ok = app.get(&format!("/users/{uuid}")).await.status() == 200;
                    let counter = if ok { &served } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connections_before = proxy.accepted();
    let hits_before = redis.keyspace_hits().await;
    proxy.black_hole_existing();
    let dark = Instant::now();
    // Frozen connections deliver nothing: any new hit came over a new one.
    let back = eventually("cache hits over a new connection", || async {
        redis.keyspace_hits().await > hits_before
    })
    .await;
    for client in clients {
        client.await.unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "black hole: cache hits back {:.2} s after the path went dark; {} requests served, {failed} failed; {} new connections",
        back.as_secs_f64(),
        served.load(Ordering::Relaxed),
        proxy.accepted() - connections_before,
    );
    assert_eq!(failed, 0, "requests failed while the path was dark");
    assert!(proxy.accepted() > connections_before);
    assert!(dark.elapsed() >= back);
}

#[tokio::test]
async fn a_steadily_slow_redis_keeps_the_circuit_open_instead_of_flapping() {
    let redis = TestRedis::start().await;
    let proxy = FaultProxy::start(redis.socket_address()).await;
    let url = proxy.url();
    let app = spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", redis.password.as_str()),
        // Probes are frequent, so flapping would show within the run.
        ("CACHEMANAGER__CACHE__BREAKER__PROBE_INTERVAL_MS", "200"),
    ])
    .await;
    app.wait_for_health(200).await;
    // Every answer now takes 150 ms; operations are cut at 100 ms.
    proxy.set_latency(Duration::from_millis(150));
    app.wait_for_health(503).await;

    let mut statuses = Vec::new();
    let mut latencies = Vec::new();
    let run = Instant::now();
    while run.elapsed() < Duration::from_secs(6) {
        let started = Instant::now();
        assert_eq!(app.get(&format!("/users/{JANE}")).await.status(), 200);
        latencies.push(started.elapsed());
        statuses.push(health(&app).await.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let changes = statuses.windows(2).filter(|w| w[0] != w[1]).count();
    println!(
        "steady 150 ms Redis: {} checks of /health, {changes} changes; p99 of requests {:.1} ms",
        statuses.len(),
        p99.as_secs_f64() * 1000.0
    );
    assert_eq!(changes, 0, "/health flapped: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 503));
    // Bounded by the 100 ms operation timeout (plus the request's own work),
    // never by the 150 ms Redis.
    assert!(p99 < Duration::from_millis(150), "p99 {p99:?}");

    // Fast again: the probe succeeds, trials pass, the circuit closes.
    proxy.set_latency(Duration::ZERO);
    app.wait_for_health(200).await;
    app.stop().await;
}

/// Refused writes must not open the circuit: reads keep hitting, `/health`
/// says degraded and why, and the log has no line per request.
async fn refused_writes_keep_reads(redis: &TestRedis, app: TestApp, code: &str, logs: &LogCapture) {
    // John's mappings are in Redis already (written before the refusal).
    assert!(
        served_from_cache(&app, redis).await,
        "reads hit before the test"
    );
    let hits_before = redis.keyspace_hits().await;
    // Forty requests whose cache writes are refused: single SETs (a miss by
    // uuid) and pipelined writes (a lookup).
    for n in 2..=10 {
        let uuid = format!("550e8400-e29b-41d4-a716-4466554400{n:02}");
        for _ in 0..2 {
            assert_eq!(app.get(&format!("/users/{uuid}")).await.status(), 200);
        }
        let lookup = serde_json::json!({"uuids": [uuid]});
        assert_eq!(app.post_json("/users/lookup", &lookup).await.status(), 200);
    }
    // The circuit stayed closed: John is still read from Redis.
    assert!(
        served_from_cache(&app, redis).await,
        "reads stopped hitting"
    );
    assert!(redis.keyspace_hits().await > hits_before);
    let reason = eventually("/health says degraded and why", || async {
        let (status, body) = health(&app).await;
        status == 200
            && body["status"] == "degraded"
            && body["cache"]["status"] == "refusing"
            && body["cache"]["error"]
                .as_str()
                .is_some_and(|e| e.contains(code))
    })
    .await;
    let text = logs.text();
    let refused_lines = text
        .lines()
        .filter(|l| l.contains("cache command refused"))
        .count();
    println!(
        "{code}: degraded after {:.2} s; {refused_lines} log lines for ~40 refused writes",
        reason.as_secs_f64()
    );
    assert!(refused_lines <= 2, "a log line per request:\n{text}");
    assert!(!text.contains("circuit opened"), "{text}");
    app.stop().await;
}

/// John read once, and his record and mappings written to Redis (the fill
/// goes behind the answer).
async fn warm_john(app: &TestApp) {
    assert_eq!(app.get(&format!("/users/{JOHN}")).await.status(), 200);
    app.fills_settled().await;
}

#[tokio::test(flavor = "current_thread")]
async fn under_oom_reads_keep_hitting_and_health_says_why() {
    let logs = LogCapture::default();
    let _guard = logs.start();
    let redis = TestRedis::start_with(None, &["--maxmemory-policy", "noeviction"]).await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    app.wait_for_health(200).await;
    warm_john(&app).await;
    // Fill Redis past a maxmemory set below what it holds: every write is OOM.
    let mut raw = redis.raw().await;
    let filler = vec![b'x'; 4 * 1024 * 1024];
    let _: () = redis::AsyncCommands::set(&mut raw, "filler", filler)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1mb")
        .query_async(&mut raw)
        .await
        .unwrap();
    refused_writes_keep_reads(&redis, app, "OOM", &logs).await;
}

#[tokio::test(flavor = "current_thread")]
async fn on_a_read_only_replica_reads_keep_hitting_and_health_says_why() {
    let logs = LogCapture::default();
    let _guard = logs.start();
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;
    app.wait_for_health(200).await;
    warm_john(&app).await;
    // A replica of a master that does not answer: it serves its data, and
    // refuses writes with READONLY.
    let mut raw = redis.raw().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg("9")
        .query_async(&mut raw)
        .await
        .unwrap();
    refused_writes_keep_reads(&redis, app, "READONLY", &logs).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_acl_user_that_may_only_read_keeps_hitting_and_health_says_why() {
    let logs = LogCapture::default();
    let _guard = logs.start();
    let redis = TestRedis::start_with(
        None,
        &[
            "--user",
            "reader",
            "on",
            ">reader-pw",
            "~user:*",
            "+get",
            "+mget",
            "+ping",
            "+select",
        ],
    )
    .await;
    // John's record and mappings, written by someone who may write.
    let mut raw = redis.raw().await;
    let record = format!(
        r#"{{"id":1,"uuid":"{JOHN}","first_name":"John","last_name":"Doe","email":"john.doe@example.com","version":1}}"#
    );
    let _: () = redis::AsyncCommands::set(&mut raw, format!("user:record:{JOHN}"), record)
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::set(&mut raw, format!("user:uuid-to-id:{JOHN}"), "1")
        .await
        .unwrap();
    let _: () = redis::AsyncCommands::set(&mut raw, "user:id-to-uuid:1", JOHN)
        .await
        .unwrap();
    let url = redis.url();
    let app = spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("CACHEMANAGER__REDIS__USERNAME", "reader"),
        ("REDIS_PASSWORD", "reader-pw"),
    ])
    .await;
    app.wait_for_health(200).await;
    refused_writes_keep_reads(&redis, app, "NOPERM", &logs).await;
}

/// The driver keeps no timer of its own per command (one bound per command
/// is cheaper): the backend cuts every command at the smaller of the
/// operation bound and `response_timeout`, so a long operation bound never
/// lets a command wait past the response timeout.
#[tokio::test]
async fn no_command_waits_past_the_response_timeout_under_a_longer_operation_bound() {
    use ports::{BackendError, CacheBackend};

    let redis = TestRedis::start().await;
    let proxy = FaultProxy::start(redis.socket_address()).await;
    let backend = tests::connected_backend(&adapters::backend::RedisConfig {
        url: proxy.url(),
        response_timeout: Duration::from_millis(300),
        operation_timeout: Duration::from_secs(600),
        ..redis.config()
    })
    .await;
    backend
        .set("faults:slow", bytes::Bytes::from_static(b"v"), None)
        .await
        .expect("a set before the fault");
    proxy.set_latency(Duration::from_secs(600));
    let started = Instant::now();
    let answer = tokio::time::timeout(PATIENCE, backend.get("faults:slow"))
        .await
        .expect("the get waited for the 600 s operation bound");
    let waited = started.elapsed();
    println!(
        "a command over a 600 s stall, response timeout 300 ms: {answer:?} after {:.0} ms",
        waited.as_secs_f64() * 1000.0
    );
    assert!(
        matches!(answer, Err(BackendError::Timeout(bound)) if bound == Duration::from_millis(300)),
        "{answer:?}"
    );
    assert!(waited >= Duration::from_millis(300), "cut before the bound");
    // The ping (the health check's) has the same bound.
    let ping = tokio::time::timeout(PATIENCE, backend.ping())
        .await
        .expect("the ping waited for the stall");
    assert!(matches!(ping, Err(BackendError::Timeout(_))), "{ping:?}");
}
