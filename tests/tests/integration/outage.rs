//! Redis fails under load, and nobody notices but the logs: the outage tests.
//!
//! 32 clients call `GET /users/{uuid}` and `POST /users/lookup` for 20 s over
//! the Redis backend. After 6 s, Redis is stopped (or frozen: paused, so its
//! connections hang instead of failing) for 6 s, then brought back, empty
//! when restarted. Asserted: no request fails or answers wrong; p99 latency
//! during the fault stays under the 100 ms operation timeout, so fewer than
//! 1 % of requests waited on the dead Redis (without the circuit breaker, a
//! frozen Redis makes every request wait that long); cache hits
//! resume within 3 s of Redis answering; `/health` says 503 during and 200
//! after. Each run prints what it measured and writes it to
//! `target/outage/<fault>.md`.
//!
//! Over Redis Cluster, a master is killed under the same load: no request
//! fails, its replica is promoted, and hits resume within seconds of it.
//!
//! These tests run alone (`cargo xtask ci` runs them after the rest, one at a
//! time), so that their latencies are not another test's noise.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{TestApp, TestCluster, TestRedis, spawn_app, spawn_app_on_redis};
use tokio::sync::Mutex;

const CLIENTS: usize = 32;
const RUN: Duration = Duration::from_secs(20);
const FAULT_AT: Duration = Duration::from_secs(6);
const FAULT_FOR: Duration = Duration::from_secs(6);
const THINK: Duration = Duration::from_millis(5);
/// The service's `cache.operation_timeout_ms`, set explicitly: a request
/// that waited on the dead Redis took at least this long.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(100);
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Fault {
    /// `docker stop`, then `docker start`: connections fail, Redis comes back empty.
    Stop,
    /// `docker pause`, then `docker unpause`: connections hang, data survives.
    Freeze,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Stop => "stopped",
            Fault::Freeze => "frozen",
        }
    }
}

struct Sample {
    at: Duration,
    latency: Duration,
    ok: bool,
}

fn uuid(n: u32) -> String {
    format!("550e8400-e29b-41d4-a716-4466554400{n:02}")
}

const FIRST_NAMES: [&str; 10] = [
    "John", "Jane", "Bob", "Alice", "Charlie", "Diana", "Edward", "Fiona", "George", "Hannah",
];

/// One request, checked: status 200 and the body it must be.
async fn one_request(app: &TestApp, n: u64) -> bool {
    let user = u32::try_from(n % 10).unwrap_or(0) + 1;
    if n.is_multiple_of(2) {
        let Ok(response) = app
            .client
            .get(format!("{}/users/{}", app.address, uuid(user)))
            .send()
            .await
        else {
            return false;
        };
        if response.status() != 200 {
            return false;
        }
        let Ok(body) = response.json::<Value>().await else {
            return false;
        };
        body["uuid"] == uuid(user) && body["first_name"] == FIRST_NAMES[user as usize - 1]
    } else {
        let wanted: Vec<u32> = (0..3).map(|i| (user + i * 3 - 1) % 10 + 1).collect();
        let request = json!({"uuids": wanted.iter().map(|n| uuid(*n)).collect::<Vec<_>>()});
        let Ok(response) = app
            .client
            .post(format!("{}/users/lookup", app.address))
            .json(&request)
            .send()
            .await
        else {
            return false;
        };
        if response.status() != 200 {
            return false;
        }
        let Ok(body) = response.json::<Value>().await else {
            return false;
        };
        let names: Vec<&str> = body["users"]
            .as_array()
            .map(|u| u.iter().filter_map(|u| u["first_name"].as_str()).collect())
            .unwrap_or_default();
        let expected: Vec<&str> = wanted
            .iter()
            .map(|n| FIRST_NAMES[*n as usize - 1])
            .collect();
        names == expected && body["missing"].as_array().is_some_and(Vec::is_empty)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Phase {
    requests: usize,
    errors: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn phase(samples: &[Sample], from: Duration, to: Duration) -> Phase {
    let mut latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .map(|s| s.latency)
        .collect();
    latencies.sort();
    Phase {
        requests: latencies.len(),
        errors: samples
            .iter()
            .filter(|s| s.at >= from && s.at < to && !s.ok)
            .count(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

/// A markdown table of the phases, one row each.
fn table(phases: &[(&str, &Phase)]) -> String {
    let mut table = String::from(
        "| phase | requests | errors | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (name, p) in phases {
        let _ = writeln!(
            table,
            "| {name} | {} | {} | {:.2} | {:.2} | {:.1} |",
            p.requests,
            p.errors,
            p.p50.as_secs_f64() * 1e3,
            p.p99.as_secs_f64() * 1e3,
            p.max.as_secs_f64() * 1e3
        );
    }
    table
}

/// Prints what a run measured and keeps it in `target/outage/{name}.md`.
fn publish(name: &str, report: &str) {
    println!("\n{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/outage");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.md")), report);
}

async fn keyspace_hits(redis: &TestRedis) -> Option<u64> {
    let client = redis::Client::open(format!(
        "redis://:{}@127.0.0.1:{}",
        redis.password, redis.port
    ))
    .ok()?;
    let connect = client.get_multiplexed_async_connection();
    let mut connection = tokio::time::timeout(Duration::from_millis(200), connect)
        .await
        .ok()?
        .ok()?;
    let info: String = tokio::time::timeout(
        Duration::from_millis(200),
        redis::cmd("INFO").arg("stats").query_async(&mut connection),
    )
    .await
    .ok()?
    .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("keyspace_hits:"))
        .and_then(|v| v.trim().parse().ok())
}

type Samples = Arc<Mutex<Vec<Sample>>>;

/// [`CLIENTS`] clients calling the service until `run` after `started`; each
/// adds what it saw to the samples when it ends.
fn load(
    app: &Arc<TestApp>,
    started: Instant,
    run: Duration,
) -> (Vec<tokio::task::JoinHandle<()>>, Samples) {
    let samples: Samples = Arc::new(Mutex::new(Vec::with_capacity(200_000)));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (app, samples) = (app.clone(), samples.clone());
        clients.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = client as u64;
            while started.elapsed() < run {
                let at = started.elapsed();
                let t = Instant::now();
                let ok = one_request(&app, n).await;
                mine.push(Sample {
                    at,
                    latency: t.elapsed(),
                    ok,
                });
                n += CLIENTS as u64;
                tokio::time::sleep(THINK).await;
            }
            samples.lock().await.extend(mine);
        }));
    }
    (clients, samples)
}

/// `probe`'s answer about the service every `every` from `started` until
/// `done` is set, each with when it was taken.
fn sample<T, F, Fut>(
    app: &Arc<TestApp>,
    started: Instant,
    every: Duration,
    probe: F,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<(Duration, T)>>)
where
    T: Send + 'static,
    F: Fn(Arc<TestApp>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let done = Arc::new(AtomicBool::new(false));
    let (app, stop) = (app.clone(), done.clone());
    let samples = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let value = probe(app.clone()).await;
            seen.push((started.elapsed(), value));
            tokio::time::sleep(every).await;
        }
        seen
    });
    (done, samples)
}

/// `/health`'s status every 100 ms from `started` until `done` is set.
fn watch_health(
    app: &Arc<TestApp>,
    started: Instant,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Vec<(Duration, u16)>>,
) {
    sample(app, started, Duration::from_millis(100), |app| async move {
        app.get("/health").await.status().as_u16()
    })
}

async fn run(fault: Fault) {
    let redis = TestRedis::start_with(Some(tests::free_port()), &[]).await;
    let operation_timeout = OPERATION_TIMEOUT.as_millis().to_string();
    let app = Arc::new(
        spawn_app_on_redis(
            &redis,
            &[(
                "CACHEMANAGER__CACHE__OPERATION_TIMEOUT_MS",
                &operation_timeout,
            )],
        )
        .await,
    );
    app.wait_for_health(200).await;
    for n in 0..20 {
        assert!(one_request(&app, n).await, "warm-up request {n} failed");
    }

    let started = Instant::now();
    let (clients, samples) = load(&app, started, RUN);
    let (done, health) = watch_health(&app, started);

    // The fault.
    tokio::time::sleep(FAULT_AT.saturating_sub(started.elapsed())).await;
    let fault_start = started.elapsed();
    match fault {
        Fault::Stop => redis.container.stop().await.unwrap(),
        Fault::Freeze => redis.container.pause().await.unwrap(),
    }
    tokio::time::sleep((fault_start + FAULT_FOR).saturating_sub(started.elapsed())).await;
    match fault {
        Fault::Stop => redis.container.start().await.unwrap(),
        Fault::Freeze => redis.container.unpause().await.unwrap(),
    }
    // Redis answers again, measured from outside the service. Hits are counted
    // from that first answer on: commands queued in a frozen Redis are served
    // the moment it resumes and must not pass for the service's recovery.
    let mut redis_back = None;
    let mut baseline = None;
    let mut hits_back = None;
    while started.elapsed() < RUN + Duration::from_secs(5) && hits_back.is_none() {
        if let Some(hits) = keyspace_hits(&redis).await {
            redis_back.get_or_insert(started.elapsed());
            match baseline {
                None => baseline = Some(hits),
                Some(first) if hits > first => hits_back = Some(started.elapsed()),
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for client in clients {
        client.await.unwrap();
    }
    let healthy_after = app.wait_for_health(200).await;
    done.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    let samples = samples.lock().await;

    let redis_back = redis_back.expect("Redis never answered again");
    let hits_back = hits_back.expect("cache hits never resumed");
    let recovery = hits_back.saturating_sub(redis_back);
    let before = phase(&samples, Duration::ZERO, fault_start);
    let during = phase(&samples, fault_start, redis_back);
    let after = phase(&samples, redis_back, RUN + Duration::from_secs(60));
    let total = phase(&samples, Duration::ZERO, RUN + Duration::from_secs(60));
    let unhealthy_during = health
        .iter()
        .filter(|(at, s)| *at >= fault_start && *at < redis_back && *s == 503)
        .count();
    let waited = samples
        .iter()
        .filter(|s| s.at >= fault_start && s.at < redis_back && s.latency >= OPERATION_TIMEOUT)
        .count();
    let first_503 = health
        .iter()
        .find(|(at, s)| *at >= fault_start && *s == 503)
        .map(|(at, _)| at.saturating_sub(fault_start));

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Redis {} for {:.1} s under {CLIENTS} clients, {:.0} s run",
        fault.name(),
        (redis_back - fault_start).as_secs_f64(),
        RUN.as_secs_f64()
    );
    report.push_str(&table(&[
        ("before", &before),
        ("during", &during),
        ("after", &after),
        ("total", &total),
    ]));
    let _ = writeln!(
        report,
        "{waited} requests during the fault took the operation timeout ({} ms) or longer",
        OPERATION_TIMEOUT.as_millis()
    );
    let _ = writeln!(
        report,
        "cache hits resumed {:.2} s after Redis answered; /health: first 503 {} after the fault, {unhealthy_during} of its polls 503 during, 200 again {:.2} s after the run",
        recovery.as_secs_f64(),
        first_503.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        healthy_after.as_secs_f64(),
    );
    publish(fault.name(), &report);

    assert_eq!(total.errors, 0, "failed or wrong answers\n{report}");
    assert!(
        during.requests > 1000,
        "too little load during the fault to judge\n{report}"
    );
    assert!(
        during.p99 < OPERATION_TIMEOUT,
        "over 1 % of the requests during the fault waited the operation timeout ({OPERATION_TIMEOUT:?}) on the dead Redis\n{report}"
    );
    assert!(
        recovery < RECOVERY_BOUND,
        "cache hits took {recovery:?} to resume\n{report}"
    );
    assert!(
        unhealthy_during > 0,
        "/health never said 503 during the fault\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_under_load_fails_no_request() {
    run(Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_under_load_fails_no_request() {
    run(Fault::Freeze).await;
}

/// `keyspace_hits` summed over the nodes that answer.
async fn cluster_hits(cluster: &TestCluster) -> u64 {
    let hits = cluster.counters("stats", "keyspace_hits").await;
    hits.into_iter().flatten().sum()
}

/// Redis Cluster: a master is killed under load. No request fails; the
/// replica is promoted and cache hits on its slots resume; the killed node
/// comes back as a replica afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_load_fails_no_request() {
    const KILL_AT: Duration = Duration::from_secs(4);
    const CLUSTER_RUN: Duration = Duration::from_secs(16);
    let cluster = TestCluster::shared();
    let app = Arc::new(tests::spawn_app_on_cluster(cluster, &[]).await);
    app.wait_for_health(200).await;
    for n in 0..20 {
        assert!(one_request(&app, n).await, "warm-up request {n} failed");
    }
    // The master of user 1's record.
    let slot = cluster.slot(&tests::cluster::record_key(&uuid(1))).await;
    let victim = cluster
        .master_of(slot, 0)
        .await
        .expect("a master for the slot");
    let ask = (victim + 1) % cluster.ports.len();

    let started = Instant::now();
    let (clients, samples) = load(&app, started, CLUSTER_RUN);
    let (done, health) = watch_health(&app, started);
    tokio::time::sleep(KILL_AT.saturating_sub(started.elapsed())).await;
    let opened_before = breaker_entries(&app, "open").await;
    let killed_at = started.elapsed();
    let killed = std::process::Command::new("docker")
        .args(["kill", &cluster.containers[victim]])
        .output()
        .unwrap();
    assert!(killed.status.success(), "docker kill failed");
    // Promotion: another master serves the slot.
    let mut promoted_at = None;
    while started.elapsed() < CLUSTER_RUN + Duration::from_secs(20) {
        if let Some(master) = cluster.master_of(slot, ask).await
            && master != victim
        {
            promoted_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(promoted_at) = promoted_at else {
        let mut node = cluster.node(ask).await;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut node)
            .await
            .unwrap_or_default();
        panic!("no replica was promoted; CLUSTER NODES from node {ask}:\n{nodes}");
    };
    let opened_until_promoted = breaker_entries(&app, "open")
        .await
        .saturating_sub(opened_before);
    // Hits resume: the live nodes count new hits.
    let baseline = cluster_hits(cluster).await;
    let mut hits_at = None;
    while started.elapsed() < CLUSTER_RUN + Duration::from_secs(20) {
        if cluster_hits(cluster).await > baseline {
            hits_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for client in clients {
        client.await.unwrap();
    }
    let healthy_after = app.wait_for_health(200).await;
    done.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    let unhealthy = |from: Duration, to: Duration| {
        health
            .iter()
            .filter(|(at, status)| *at >= from && *at < to && *status == 503)
            .count()
    };
    let (unhealthy_until_promoted, unhealthy_after_promoted) = (
        unhealthy(killed_at, promoted_at),
        unhealthy(promoted_at, CLUSTER_RUN + Duration::from_secs(60)),
    );
    // Bring the node back (it rejoins as a replica of its promoted one).
    let _ = std::process::Command::new("docker")
        .args(["start", &cluster.containers[victim]])
        .output();
    let samples = samples.lock().await;
    let total = phase(
        &samples,
        Duration::ZERO,
        CLUSTER_RUN + Duration::from_secs(60),
    );
    let during = phase(&samples, killed_at, promoted_at);
    let hits_again = match hits_at {
        Some(at) => format!("{:.2} s after the kill", (at - killed_at).as_secs_f64()),
        None => "never".to_owned(),
    };
    let report = format!(
        "Redis Cluster: master {victim} killed at {:.1} s under {CLIENTS} clients for {:.0} s; a replica serves its slots {:.2} s later (cluster-node-timeout 2 s); cache hits counted again: {hits_again}; circuit openings until the promotion: {opened_until_promoted}; /health 503 in {unhealthy_until_promoted} samples until the promotion, {unhealthy_after_promoted} after (every 100 ms), 200 again {:.2} s after the load ended\n{}",
        killed_at.as_secs_f64(),
        CLUSTER_RUN.as_secs_f64(),
        (promoted_at - killed_at).as_secs_f64(),
        healthy_after.as_secs_f64(),
        table(&[("until promoted", &during), ("total", &total)]),
    );
    publish("cluster-failover", &report);
    assert_eq!(total.errors, 0, "failed or wrong answers\n{report}");
    // Open once, and kept open while a master is down: a probe that said
    // the cluster answers let trial requests in, those for the lost
    // master's slots failed, and each failure doubled the probe interval,
    // so the cache stayed off for seconds after the promotion.
    assert!(
        opened_until_promoted <= 1,
        "the circuit opened again while the master was down (failed trials)\n{report}"
    );
    let hits_at =
        hits_at.unwrap_or_else(|| panic!("cache hits never resumed after the promotion\n{report}"));
    assert!(
        hits_at.saturating_sub(promoted_at) < Duration::from_secs(6),
        "hits took more than 6 s after the promotion to resume\n{report}"
    );
    // As for one Redis: the breaker opens and /health says so while the
    // master is down (and 200 after: waited for above).
    assert!(
        unhealthy_until_promoted > 0,
        "/health never said 503 while a master was down\n{report}"
    );
}

/// How often the service's circuit breaker entered `state` (its
/// `cachemanager_breaker_transitions_total`, which must be exposed).
async fn breaker_entries(app: &TestApp, state: &str) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap_or_default();
    let series = format!("cachemanager_breaker_transitions_total{{state=\"{state}\"}} ");
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse::<f64>().ok());
    match value {
        Some(value) => value as u64,
        None => panic!("no {series}in /metrics:\n{text}"),
    }
}

/// The failed backend operations the service counted (every outcome of
/// `cachemanager_backend_operation_duration_seconds` but `ok`): how many, and
/// the samples (operation and outcome).
async fn backend_failures(app: &TestApp) -> (u64, Vec<String>) {
    let text = app.get("/metrics").await.text().await.unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .filter(|line| {
            line.starts_with("cachemanager_backend_operation_duration_seconds_count{")
                && !line.contains("outcome=\"ok\"")
        })
        .map(ToOwned::to_owned)
        .collect();
    let count = lines
        .iter()
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    (count, lines)
}

/// Redis Cluster resharding under load: every slot that holds the service's
/// keys on one master is moved to another, the way `redis-cli --cluster
/// reshard` moves it (`SETSLOT IMPORTING` on the target, `MIGRATING` on the
/// source, `MIGRATE` of its keys, `SETSLOT NODE` everywhere), each stage held
/// for a while under 32 clients. No request fails and the backend counts no
/// failed operation: the driver follows `ASK` while a slot moves and `MOVED`
/// after; the new owner serves the hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_load_fail_no_request_and_no_cache_operation() {
    const MOVE_AT: Duration = Duration::from_secs(3);
    const STAGE: Duration = Duration::from_millis(1500);
    const RESHARD_RUN: Duration = Duration::from_secs(12);
    let cluster = TestCluster::shared();
    // A cluster that another test changed (a failover, its killed master
    // started again) has settled: every node answers and says ok.
    tests::eventually(
        "every cluster node answers and says the cluster is ok",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let mut ok = true;
            for index in 0..cluster.ports.len() {
                // A node restarted by another test may not listen yet.
                let Ok(mut node) = cluster.try_node(index).await else {
                    return false;
                };
                let info: redis::RedisResult<String> = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut node)
                    .await;
                ok &= info.is_ok_and(|info| info.contains("cluster_state:ok"));
            }
            ok
        },
    )
    .await;
    // Operations bounded at 1 s, not the default 100 ms: what is counted is
    // then what the move does (a redirect not followed, a refused command,
    // requests held back for a second), not how a 2-core machine running six
    // nodes, the service and 32 clients schedules them. At 100 ms, slower
    // machines counted 1 to 10 timeouts a run, as many before and after the
    // move as during it; the table still shows the latency while moving.
    let app = Arc::new(
        tests::spawn_app_on_cluster(
            cluster,
            &[("CACHEMANAGER__CACHE__OPERATION_TIMEOUT_MS", "1000")],
        )
        .await,
    );
    app.wait_for_health(200).await;
    for n in 0..20 {
        assert!(one_request(&app, n).await, "warm-up request {n} failed");
    }
    // The service's keys, by slot and master; the source is the master that
    // holds most of those slots, the target another master.
    let mut slots_of: std::collections::BTreeMap<usize, std::collections::BTreeSet<u16>> =
        std::collections::BTreeMap::new();
    for n in 1..=10 {
        for key in [
            tests::cluster::record_key(&uuid(n)),
            format!("user:uuid-to-id:{}", uuid(n)),
        ] {
            let slot = cluster.slot(&key).await;
            let master = cluster.master_of(slot, 0).await.expect("a master");
            slots_of.entry(master).or_default().insert(slot);
        }
    }
    let (&source, slots) = slots_of
        .iter()
        .max_by_key(|(_, slots)| slots.len())
        .expect("slots");
    let slots: Vec<u16> = slots.iter().copied().collect();
    let mut target = None;
    for index in 0..cluster.ports.len() {
        if index != source && cluster.is_master(index).await {
            target = Some(index);
            break;
        }
    }
    let target = target.expect("a second master");
    let mut migrations = Vec::new();
    for &slot in &slots {
        migrations.push(cluster.migration(slot, source, target).await);
    }
    let (failures_before, _) = backend_failures(&app).await;
    let slot_refreshes = || async {
        cluster
            .counters("commandstats", "cmdstat_cluster|slots")
            .await
            .into_iter()
            .flatten()
            .sum::<u64>()
    };
    let refreshes_before = slot_refreshes().await;

    let started = Instant::now();
    let (clients, samples) = load(&app, started, RESHARD_RUN);
    // The failed backend operations counted, every 20 ms.
    let (failures_done, failure_counts) =
        sample(&app, started, Duration::from_millis(20), |app| async move {
            backend_failures(&app).await.0
        });
    tokio::time::sleep(MOVE_AT.saturating_sub(started.elapsed())).await;
    let moving_at = started.elapsed();
    for migration in &migrations {
        migration.begin().await;
    }
    // Migrating, keys still on the source.
    tokio::time::sleep(STAGE).await;
    let migrating_at = started.elapsed();
    let mut moved_keys = 0;
    for migration in &migrations {
        moved_keys += migration.move_keys().await;
    }
    // Keys on the target, the slots still migrating: reads are asked there.
    tokio::time::sleep(STAGE).await;
    let finishing_at = started.elapsed();
    for migration in &migrations {
        migration.finish().await;
    }
    let moved_at = started.elapsed();
    let target_hits = |cluster: &'static TestCluster| async move {
        cluster.counters("stats", "keyspace_hits").await[target].unwrap_or(0)
    };
    let hits_at_move = target_hits(cluster).await;
    for client in clients {
        client.await.unwrap();
    }
    let hits_after = target_hits(cluster).await;
    failures_done.store(true, Ordering::Relaxed);
    // When the count rose, and by how much.
    let mut failure_rises = Vec::new();
    let mut last = failures_before;
    for (at, count) in failure_counts.await.unwrap() {
        if count > last {
            failure_rises.push((at, count - last));
            last = count;
        }
    }
    let (failures_after, failed) = backend_failures(&app).await;
    let failures = failures_after - failures_before;
    let refreshes = slot_refreshes().await - refreshes_before;
    for &slot in &slots {
        assert_eq!(
            cluster.master_of(slot, source).await,
            Some(target),
            "slot {slot} now served by the target"
        );
    }
    let samples = samples.lock().await;
    let during = phase(&samples, moving_at, moved_at);
    let total = phase(
        &samples,
        Duration::ZERO,
        RESHARD_RUN + Duration::from_secs(60),
    );
    let report = format!(
        "Redis Cluster resharding under {CLIENTS} clients: {} slots ({moved_keys} keys) moved from master {source} to master {target} between {:.2} s and {:.2} s (importing/migrating from {:.2} s, keys migrated at {:.2} s, ASK until SETSLOT NODE at {:.2} s); CLUSTER SLOTS served: {refreshes}; failed backend operations: {failures} {failed:?}, rises seen at {} (sampled every 20 ms); hits on the new owner after the move: {}\n{}",
        slots.len(),
        moving_at.as_secs_f64(),
        moved_at.as_secs_f64(),
        moving_at.as_secs_f64(),
        migrating_at.as_secs_f64(),
        finishing_at.as_secs_f64(),
        if failure_rises.is_empty() {
            "none".to_owned()
        } else {
            failure_rises
                .iter()
                .map(|(at, rise)| format!("{:.2} s (+{rise})", at.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        },
        hits_after - hits_at_move,
        table(&[("while moving", &during), ("total", &total)]),
    );
    publish("cluster-reshard", &report);
    assert!(
        moved_keys > 0,
        "the moved slots held the service's keys\n{report}"
    );
    assert_eq!(total.errors, 0, "failed or wrong answers\n{report}");
    assert_eq!(failures, 0, "the backend saw failed operations\n{report}");
    assert!(
        hits_after > hits_at_move,
        "the new owner served no hit after the move\n{report}"
    );
}

/// Three instances behind HAProxy over one Redis and one PostgreSQL, 32
/// clients through the balancer; each instance in turn is stopped the way
/// an orchestrator stops it (its `/health/ready` answers 503 for
/// `server.shutdown_delay` while it keeps serving, then it stops accepting
/// and finishes what is in flight) and started again on its port. No
/// request fails, and each restarted instance serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_instances_behind_a_load_balancer_loses_no_request() {
    const RESTART_AT: Duration = Duration::from_secs(2);
    const ROLLING_RUN: Duration = Duration::from_secs(14);
    let redis = TestRedis::start().await;
    let postgres = tests::TestPostgres::shared();
    let database = postgres.fresh_database().await;
    let redis_url = redis.url();
    let ports: Vec<u16> = (0..3).map(|_| tests::free_port()).collect();
    let port_texts: Vec<String> = ports.iter().map(ToString::to_string).collect();
    let start = |index: usize| {
        let vars = [
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("REDIS_URL", redis_url.as_str()),
            ("REDIS_PASSWORD", redis.password.as_str()),
            ("DATABASE_URL", database.as_str()),
            ("CACHEMANAGER__STORE__PASSWORD", postgres.password.as_str()),
            ("CACHEMANAGER__SERVER__PORT", port_texts[index].as_str()),
            // Longer than the balancer takes to see the 503 (one check, 100 ms).
            ("CACHEMANAGER__SERVER__SHUTDOWN_DELAY_MS", "500"),
        ];
        async move { spawn_app(&vars).await }
    };
    // One after the other: the first imports the sample users.
    let mut instances = Vec::new();
    for index in 0..3 {
        let instance = start(index).await;
        instance.wait_for_health(200).await;
        instances.push(Some(instance));
    }
    let balancer = tests::TestBalancer::start(&ports).await;
    balancer.wait_all_up().await;
    let through = Arc::new(TestApp::at(&balancer.address));
    for n in 0..20 {
        assert!(one_request(&through, n).await, "warm-up request {n} failed");
    }

    let started = Instant::now();
    let (clients, samples) = load(&through, started, ROLLING_RUN);
    tokio::time::sleep(RESTART_AT.saturating_sub(started.elapsed())).await;
    let mut restarts = Vec::new();
    for (index, slot) in instances.iter_mut().enumerate() {
        let stopping = started.elapsed();
        if let Some(instance) = slot.take() {
            instance.stop().await;
        }
        let stopped = started.elapsed();
        let instance = start(index).await;
        instance.wait_for_health(200).await;
        balancer.wait_all_up().await;
        let back = started.elapsed();
        *slot = Some(instance);
        restarts.push((stopping, stopped, back));
        // Traffic on the new instance before the next one goes.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarted_at = started.elapsed();
    for client in clients {
        client.await.unwrap();
    }
    // Each new instance served requests (its own request counter).
    let mut served = Vec::new();
    for instance in instances.iter().flatten() {
        let metrics = instance
            .get("/metrics")
            .await
            .text()
            .await
            .unwrap_or_default();
        let count: f64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("http_server_request_duration_seconds_count{")
                    && line.contains("/users")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        served.push(count as u64);
    }
    let samples = samples.lock().await;
    let during = phase(&samples, RESTART_AT, restarted_at);
    let total = phase(
        &samples,
        Duration::ZERO,
        ROLLING_RUN + Duration::from_secs(60),
    );
    let mut report = format!(
        "Rolling restart of 3 instances behind HAProxy under {CLIENTS} clients (Redis + PostgreSQL): instance stopped (503 on /health/ready for 500 ms, then drained), started again, back in the balancer:\n"
    );
    for (index, (stopping, stopped, back)) in restarts.iter().enumerate() {
        let _ = writeln!(
            report,
            "- instance {index}: stop at {:.2} s, stopped {:.2} s later, serving through the balancer {:.2} s after that",
            stopping.as_secs_f64(),
            (*stopped - *stopping).as_secs_f64(),
            (*back - *stopped).as_secs_f64()
        );
    }
    let _ = write!(
        report,
        "requests served by each new instance afterwards: {served:?}\n{}",
        table(&[("while restarting", &during), ("total", &total)]),
    );
    publish("rolling-restart", &report);
    assert_eq!(total.errors, 0, "failed or wrong answers\n{report}");
    assert!(
        served.iter().all(|&n| n > 0),
        "a restarted instance served nothing\n{report}"
    );
}
