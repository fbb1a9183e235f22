//! The near cache on a real Redis: every writer's change reaches every
//! instance, a read in flight never puts an old value back, and a lost
//! tracking connection (killed, black-holed, Redis paused or restarted empty)
//! never leaves a value from before the loss being served. Conditions and
//! counts, not timings: each wait has a generous bound, and the lag itself is
//! measured by `cargo xtask bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::backend::{NearCache, NearConfig, RedisConfig};
use bytes::Bytes;
use ports::{CacheBackend, SharedBackend};
use serde_json::json;
use testcontainers::core::ExecCommand;
use tests::proxy::FaultProxy;
use tests::{TestRedis, spawn_app_on_redis};

/// Every condition here is met in well under a second; this bounds a broken
/// build's wait.
const BOUND: Duration = Duration::from_secs(5);

/// A near cache over its own Redis backend (its own connections), tracking
/// `n:` keys, with invalidations from `tracking` (the same Redis, or a
/// proxy in front of it); returned once tracking is armed.
async fn near_cache(redis: &TestRedis, tracking: &RedisConfig, config: NearConfig) -> NearCache {
    let backend: SharedBackend = Arc::new(redis.backend().await);
    tests::armed_near_cache(backend, tracking, &["n:".to_owned()], config).await
}

async fn instance(redis: &TestRedis) -> NearCache {
    near_cache(redis, &redis.config(), NearConfig::default()).await
}

async fn wait_until<F, Fut>(what: &str, condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tests::eventually(what, BOUND, Duration::from_millis(5), condition).await
}

fn text(value: Option<Bytes>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

async fn read(near: &NearCache, key: &str) -> Option<String> {
    text(near.get(key).await.unwrap())
}

/// Reads `key` through `near` until it answers `expected`; every answer on
/// the way must be `before` (nothing older, nothing else).
async fn sees(near: &NearCache, key: &str, before: Option<&str>, expected: Option<&str>) {
    let started = Instant::now();
    loop {
        let seen = read(near, key).await;
        if seen.as_deref() == expected {
            return;
        }
        assert_eq!(seen.as_deref(), before, "an answer neither old nor new");
        assert!(
            started.elapsed() < BOUND,
            "{key}: still {before:?}, not {expected:?}, after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads `key` until a read is served from the process: the value is kept.
/// (A read that began before the invalidation of an earlier write arrived is
/// rightly not kept, so the first fill may not take.)
async fn kept(near: &NearCache, key: &str) -> Option<String> {
    let value = read(near, key).await;
    let started = Instant::now();
    loop {
        let hits = near.counts().hits;
        assert_eq!(read(near, key).await, value);
        if near.counts().hits > hits {
            return value;
        }
        assert!(
            started.elapsed() < BOUND,
            "{key} was never kept in the process"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn raw_set(redis: &TestRedis, key: &str, value: &str) {
    let mut raw = redis.raw().await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut raw)
        .await
        .unwrap();
}

async fn redis_cli(redis: &TestRedis, args: &[&str]) {
    let mut command = vec!["redis-cli", "-a", &redis.password, "--no-auth-warning"];
    command.extend_from_slice(args);
    let mut run = redis
        .container
        .exec(ExecCommand::new(command))
        .await
        .unwrap();
    let out = run.stdout_to_vec().await.unwrap();
    assert!(
        !out.starts_with(b"(error)"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn a_change_by_any_writer_reaches_the_other_instance() {
    let redis = TestRedis::start().await;
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    a.set("n:k", Bytes::from_static(b"v0"), None).await.unwrap();
    assert_eq!(kept(&b, "n:k").await.as_deref(), Some("v0"));

    // Through instance A.
    a.set("n:k", Bytes::from_static(b"v1"), None).await.unwrap();
    sees(&b, "n:k", Some("v0"), Some("v1")).await;
    kept(&b, "n:k").await;
    // Through redis-cli.
    redis_cli(&redis, &["SET", "n:k", "v2"]).await;
    sees(&b, "n:k", Some("v1"), Some("v2")).await;
    kept(&b, "n:k").await;
    // As the Python service writes (SET with EX, its JSON as text).
    let mut raw = redis.raw().await;
    let () = redis::cmd("SET")
        .arg("n:k")
        .arg(r#"{"id": 3}"#)
        .arg("EX")
        .arg(600)
        .query_async(&mut raw)
        .await
        .unwrap();
    sees(&b, "n:k", Some("v2"), Some(r#"{"id": 3}"#)).await;
    kept(&b, "n:k").await;
    // A delete by another client.
    redis_cli(&redis, &["DEL", "n:k"]).await;
    sees(&b, "n:k", Some(r#"{"id": 3}"#), None).await;
    assert!(b.counts().invalidations >= 4);
    assert_eq!(b.counts().flushes_disconnect, 0);
}

#[tokio::test]
async fn flushall_empties_every_instance() {
    let redis = TestRedis::start().await;
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    a.set("n:k", Bytes::from_static(b"v"), None).await.unwrap();
    kept(&a, "n:k").await;
    kept(&b, "n:k").await;
    redis_cli(&redis, &["FLUSHALL"]).await;
    sees(&a, "n:k", Some("v"), None).await;
    sees(&b, "n:k", Some("v"), None).await;
    assert!(a.counts().flushes_server >= 1);
    assert!(b.counts().flushes_server >= 1);
}

#[tokio::test]
async fn an_entry_expires_from_every_instance_with_its_ttl_in_redis() {
    let redis = TestRedis::start().await;
    let a = instance(&redis).await;
    let b = instance(&redis).await;
    a.set(
        "n:k",
        Bytes::from_static(b"v"),
        Some(Duration::from_millis(400)),
    )
    .await
    .unwrap();
    kept(&b, "n:k").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b.peek("n:k"),
        None,
        "the kept copy expired with Redis's TTL"
    );
    assert_eq!(read(&b, "n:k").await, None);
}

/// The property redis-rs's own client cache fails: readers on two instances
/// race a writer on one key; once the writes stop and a round trip passes,
/// what each instance would serve from the process is what Redis holds.
#[tokio::test]
async fn racing_readers_and_a_writer_leave_every_instance_agreeing_with_redis() {
    let redis = TestRedis::start().await;
    let instances = Arc::new([instance(&redis).await, instance(&redis).await]);
    let writer = instance(&redis).await;
    let mut raw = redis.raw().await;
    let mut disagreements = 0;
    for trial in 0..30 {
        let key = format!("n:race{trial}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for reader in 0..8 {
            let instances = instances.clone();
            let key = key.clone();
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let near = &instances[reader % 2];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = near.get(&key).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for version in 0..50 {
            let value = Bytes::from(format!("v{version}"));
            if version % 2 == 0 {
                writer.set(&key, value, None).await.unwrap();
            } else {
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg(value.as_ref())
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
        }
        // One round trip after the last write.
        let () = redis::cmd("PING")
            .query_async::<String>(&mut raw)
            .await
            .map(drop)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        for near in instances.iter() {
            if near.peek(&key).is_some_and(|kept| kept.as_ref() != b"v49") {
                disagreements += 1;
            }
        }
    }
    assert_eq!(
        disagreements, 0,
        "instances kept an old value after the writes stopped"
    );
    let prevented: u64 = instances
        .iter()
        .map(|near| near.counts().stale_inserts_prevented)
        .sum();
    println!("near race: 30 trials, 0 disagreements, {prevented} stale inserts prevented");
}

/// The ids of the near caches' tracking connections (found by their name,
/// `cachemanager-near-<pid>`) in a `CLIENT LIST`.
fn tracking_ids(client_list: &str) -> Vec<String> {
    client_list
        .lines()
        .filter(|line| line.contains(" name=cachemanager-near-"))
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// The tracking connection's id, found by its name.
async fn tracking_client_ids(redis: &TestRedis) -> Vec<String> {
    let mut raw = redis.raw().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut raw)
        .await
        .unwrap();
    tracking_ids(&list)
}

#[tokio::test]
async fn a_killed_tracking_connection_empties_the_process_and_tracking_comes_back() {
    let redis = TestRedis::start().await;
    let b = instance(&redis).await;
    raw_set(&redis, "n:k", "v1").await;
    kept(&b, "n:k").await;
    let ids = tracking_client_ids(&redis).await;
    assert_eq!(ids.len(), 1, "one tracking connection");
    let mut raw = redis.raw().await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&ids[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    // Written while no invalidation can reach B.
    raw_set(&redis, "n:k", "v2").await;
    sees(&b, "n:k", Some("v1"), Some("v2")).await;
    wait_until("tracking armed again on a new connection", || {
        let b = b.clone();
        async move { b.tracking() && b.counts().flushes_disconnect == 1 }
    })
    .await;
    kept(&b, "n:k").await;
    raw_set(&redis, "n:k", "v3").await;
    sees(&b, "n:k", Some("v2"), Some("v3")).await;
}

#[tokio::test]
async fn a_black_holed_tracking_connection_is_found_by_its_ping_and_distrusted() {
    let redis = TestRedis::start().await;
    let proxy = FaultProxy::start(redis.socket_address()).await;
    let through_proxy = RedisConfig {
        url: proxy.url(),
        ..redis.config()
    };
    let config = NearConfig::default();
    let b = near_cache(&redis, &through_proxy, config).await;
    raw_set(&redis, "n:k", "v1").await;
    kept(&b, "n:k").await;
    // The path to the tracking connection goes silent: no FIN, no RST, no
    // invalidation. Data reads go straight to Redis.
    proxy.black_hole_existing();
    raw_set(&redis, "n:k", "v2").await;
    let took = wait_until("the silent connection is distrusted", || {
        let b = b.clone();
        async move { b.counts().flushes_disconnect == 1 }
    })
    .await;
    println!(
        "black hole found in {took:?} (bound: ping interval + timeout = {:?})",
        config.silent_loss_bound()
    );
    sees(&b, "n:k", Some("v1"), Some("v2")).await;
    wait_until("tracking armed on a new path", || {
        let b = b.clone();
        async move { b.tracking() }
    })
    .await;
    kept(&b, "n:k").await;
    raw_set(&redis, "n:k", "v3").await;
    sees(&b, "n:k", Some("v2"), Some("v3")).await;
}

#[tokio::test]
async fn a_paused_redis_is_distrusted_and_tracking_comes_back_after_it() {
    let redis = TestRedis::start().await;
    let b = instance(&redis).await;
    raw_set(&redis, "n:k", "v1").await;
    kept(&b, "n:k").await;
    redis.container.pause().await.unwrap();
    wait_until("a paused Redis is distrusted", || {
        let b = b.clone();
        async move { !b.tracking() }
    })
    .await;
    assert_eq!(b.peek("n:k"), None, "nothing from before is served");
    redis.container.unpause().await.unwrap();
    wait_until("tracking armed again", || {
        let b = b.clone();
        async move { b.tracking() }
    })
    .await;
    raw_set(&redis, "n:k", "v2").await;
    sees(&b, "n:k", Some("v1"), Some("v2")).await;
    kept(&b, "n:k").await;
}

#[tokio::test]
async fn a_redis_restarted_empty_serves_nothing_from_before() {
    let redis = TestRedis::start_with(Some(tests::free_port()), &[]).await;
    let b = instance(&redis).await;
    raw_set(&redis, "n:k", "v1").await;
    kept(&b, "n:k").await;
    redis.container.stop().await.unwrap();
    wait_until("a stopped Redis is distrusted", || {
        let b = b.clone();
        async move { !b.tracking() }
    })
    .await;
    assert!(
        b.get("n:k").await.is_err(),
        "no fail-safe: Redis's error, not v1"
    );
    redis.container.start().await.unwrap();
    wait_until("tracking armed on the new server", || {
        let b = b.clone();
        async move { b.tracking() }
    })
    .await;
    // The data connection heals on its own schedule (its last reconnect
    // failed while Redis was down, and the driver returns that error until
    // the next attempt): an answer may still be an error for a moment, but
    // never v1.
    wait_until("the restarted, empty Redis answers", || {
        let b = b.clone();
        async move {
            match b.get("n:k").await {
                Ok(value) => {
                    assert_eq!(text(value), None, "the restarted Redis is empty");
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await;
}

/// Two services with the near cache on (one without single-flight), over one
/// Redis and one store: a write through one is read through the other, and
/// the near cache's state and counters are reported.
#[tokio::test]
async fn two_services_with_the_near_cache_see_each_others_writes() {
    let redis = TestRedis::start().await;
    let database = tests::SqliteFile::new();
    let url = database.url();
    let vars = [
        ("CACHEMANAGER__CACHE__NEAR__ENABLED", "true"),
        ("CACHEMANAGER__STORE__URL", url.as_str()),
    ];
    let a = spawn_app_on_redis(&redis, &vars).await;
    // The near cache works with and without single-flight.
    let b = spawn_app_on_redis(
        &redis,
        &[
            vars[0],
            vars[1],
            ("CACHEMANAGER__CACHE__SINGLE_FLIGHT", "false"),
        ],
    )
    .await;
    for app in [&a, &b] {
        wait_until("/health reports tracking", || async {
            let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
            health["cache"]["near"]["status"] == "tracking"
        })
        .await;
    }
    let created = a
        .post_json(
            "/users",
            &json!({"first_name": "Ada", "last_name": "Lovelace", "email": "near@example.com"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    for app in [&a, &b, &a, &b] {
        assert_eq!(app.get(&location).await.status(), 200);
    }
    let patched = a
        .client
        .patch(format!("{}{location}", a.address))
        .json(&json!({"last_name": "King"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    wait_until("B reads the new name", || async {
        let seen: serde_json::Value = b.get(&location).await.json().await.unwrap();
        assert!(
            seen["last_name"] == "Lovelace" || seen["last_name"] == "King",
            "{seen}"
        );
        seen["last_name"] == "King"
    })
    .await;
    for _ in 0..5 {
        let seen: serde_json::Value = b.get(&location).await.json().await.unwrap();
        assert_eq!(seen["last_name"], "King", "never the old record again");
    }
    let metrics = b.get("/metrics").await.text().await.unwrap();
    let hits = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cachemanager_near_hits_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("cachemanager_near_hits_total exposed");
    assert!(hits > 0, "B answered some reads from the process");
    assert!(metrics.contains("cachemanager_near_tracking 1"));
}

/// The near cache over the binary's Redis Cluster: tracking on every node,
/// the same coherence as over one server. Each test tracks a prefix of its
/// own (the cluster is shared), its keys spread over the masters' slots.
mod on_a_cluster {
    use super::*;
    use tests::TestCluster;

    /// A near cache over its own cluster backend, tracking `prefix`;
    /// returned once tracking is armed on every node.
    async fn instance(cluster: &TestCluster, prefix: &str) -> NearCache {
        let backend: SharedBackend = Arc::new(tests::connected_backend(&cluster.config()).await);
        tests::armed_near_cache(
            backend,
            &cluster.config(),
            &[prefix.to_owned()],
            NearConfig::default(),
        )
        .await
    }

    fn prefix() -> String {
        format!("n{}:", uuid::Uuid::new_v4().simple())
    }

    async fn raw(cluster: &TestCluster, command: &redis::Cmd) {
        let mut raw = cluster.raw().await;
        let () = command.query_async(&mut raw).await.unwrap();
    }

    #[tokio::test]
    async fn a_change_by_any_writer_reaches_the_other_instance_on_every_master() {
        let cluster = TestCluster::shared();
        // Not while another test kills tracking connections.
        let _turn = cluster.exclusive().await;
        let prefix = prefix();
        let a = instance(cluster, &prefix).await;
        let b = instance(cluster, &prefix).await;
        // Keys on every master (ten slots).
        let keys: Vec<String> = (0..10).map(|n| format!("{prefix}{n}")).collect();
        for key in &keys {
            a.set(key, Bytes::from_static(b"v0"), None).await.unwrap();
            assert_eq!(kept(&b, key).await.as_deref(), Some("v0"));
        }
        for key in &keys {
            // Through instance A.
            a.set(key, Bytes::from_static(b"v1"), None).await.unwrap();
            sees(&b, key, Some("v0"), Some("v1")).await;
            kept(&b, key).await;
            // Through another client, as the Python service writes.
            raw(
                cluster,
                redis::cmd("SET")
                    .arg(key)
                    .arg(r#"{"id": 3}"#)
                    .arg("EX")
                    .arg(600),
            )
            .await;
            sees(&b, key, Some("v1"), Some(r#"{"id": 3}"#)).await;
            kept(&b, key).await;
            // A delete by another client.
            let mut raw = cluster.raw().await;
            let _: i64 = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            sees(&b, key, Some(r#"{"id": 3}"#), None).await;
        }
        assert!(b.counts().invalidations >= 30);
        assert_eq!(b.counts().flushes_disconnect, 0);
    }

    /// The tracking connections of this process's near caches on node
    /// `index` (the name carries the process id).
    async fn tracking_ids_on(cluster: &TestCluster, index: usize) -> Vec<String> {
        let mut node = cluster.node(index).await;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut node)
            .await
            .unwrap();
        let mine = format!(" name=cachemanager-near-{} ", std::process::id());
        let list: String = list
            .lines()
            .filter(|line| line.contains(&mine))
            .collect::<Vec<_>>()
            .join("\n");
        tracking_ids(&list)
    }

    /// One node's tracking connection is killed: the process is emptied,
    /// tracking is re-armed on every node, and a write made in the gap is
    /// what the next reads answer. (Other near caches of this test process
    /// on that node lose theirs too, and re-arm the same way: the tests that
    /// count disconnects take turns with this one.)
    #[tokio::test]
    async fn a_killed_node_connection_re_arms_tracking_on_every_node() {
        let cluster = TestCluster::shared();
        let _turn = cluster.exclusive().await;
        let prefix = prefix();
        let b = instance(cluster, &prefix).await;
        let key = format!("{prefix}k");
        raw(cluster, redis::cmd("SET").arg(&key).arg("v1")).await;
        kept(&b, &key).await;
        let master = cluster
            .master_of(cluster.slot(&key).await, 0)
            .await
            .expect("a master");
        let ids = tracking_ids_on(cluster, master).await;
        assert!(!ids.is_empty(), "a tracking connection on the key's master");
        let mut node = cluster.node(master).await;
        for id in &ids {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut node)
                .await;
        }
        // Written while no invalidation can reach B from that node.
        raw(cluster, redis::cmd("SET").arg(&key).arg("v2")).await;
        sees(&b, &key, Some("v1"), Some("v2")).await;
        wait_until("tracking armed again on every node", || {
            let b = b.clone();
            async move { b.tracking() && b.counts().flushes_disconnect >= 1 }
        })
        .await;
        kept(&b, &key).await;
        raw(cluster, redis::cmd("SET").arg(&key).arg("v3")).await;
        sees(&b, &key, Some("v2"), Some("v3")).await;
    }
}
