//! `cargo xtask bench [--quick] [--runs N] [--only CASES] [--redis-url URL]`: the service measured side by
//! side with the ceiling of the same binary, with wrk.
//!
//! Cases, each at 8 and 64 connections, each run interleaved with the ceiling
//! (`GET /health/live`: no I/O) so drift hits both, median of the runs:
//! - `hit/<backend>`: `GET /users/{uuid}` over 10 warm users, for memory, redis, noop;
//!   `hit/memory+accept-gzip` the same from a client that accepts compression;
//! - `metrics cost`: `hit/memory` with metrics on (the default) and off,
//!   beside a second service with metrics off (the noise alone), their runs
//!   rotated, the cost the median of the per-round ratios (see `metrics_cost`);
//! - `pg/*`: the store cases on PostgreSQL with a million users (see `store_cases`);
//! - `miss/redis`: `GET /users/{uuid}` over 50,000 users, each asked once per run,
//!   Redis flushed before each run: every request is a GET miss, a store read
//!   and one pipelined write of both directions;
//! - `lookup100/redis`: `POST /users/lookup` with 100 warm uuids;
//! - `hit/near`: `hit/redis` with the near cache on (`cache.near.enabled`);
//! - `near lag`: the near cache's invalidation lag between two instances
//!   (`benches/src/bin/near_lag.rs`, see `near_lag`);
//! - `reference: bare GET`: the same requests answered by a bare poem handler
//!   doing one Redis GET (`benches/src/bin/bare_redis_get.rs`), the floor
//!   under what hit/redis can cost; its ratio is to the service's ceiling.
//! - with `--redis-mode cluster`: `hit/cluster`, `miss/cluster` and
//!   `lookup100/cluster`, the hit, miss and lookup cases over a Redis Cluster
//!   of three masters and three replicas on this host (`BenchCluster`,
//!   flushed before each miss run), and their ratio to the same cases over
//!   one Redis in the same run; `lookup100/cluster-plain-keys` is the lookup
//!   with the record's keys not in hash-tag buckets (what they save).
//!
//! Every hit and lookup run also measures CPU per request: the service's,
//! its ceiling's, and the Redis containers' (one server or every node).
//!
//! Writes `target/bench/results.json` and prints a markdown table.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{chart, images};

const MISS_USERS: u32 = 50_000;
/// The reference case: `benches/src/bin/bare_redis_get.rs`, a bare poem
/// handler doing one Redis GET, on the keys hit/redis cached.
const BARE_CASE: &str = "reference: bare GET";
/// `hit/memory` with the request log on, as the service runs by default.
const REQUEST_LOG_CASE: &str = "hit/memory+reqlog";
/// What metrics cost on the hit path (`metrics_cost`).
const METRICS_COST_CASE: &str = "hit/memory metrics on/off";
/// `hit/redis` with the near cache on.
const NEAR_CASE: &str = "hit/near";
/// The setting that turns the near cache on, for the cases that measure it.
const NEAR_ON: (&str, &str) = ("CACHEMANAGER__CACHE__NEAR__ENABLED", "true");
/// The near cache's invalidation lag (`near_lag`).
const NEAR_LAG_CASE: &str = "near lag";
/// `hit/redis`, `lookup100/redis` and `miss/redis` over a Redis Cluster
/// (`--redis-mode cluster`).
const HIT_CLUSTER_CASE: &str = "hit/cluster";
const LOOKUP_CLUSTER_CASE: &str = "lookup100/cluster";
const MISS_CLUSTER_CASE: &str = "miss/cluster";
/// `lookup100/cluster` with plain record keys (`cache.cluster_key_buckets`
/// 0): one `MGET` per uuid's slot, what the key buckets save.
const LOOKUP_CLUSTER_PLAIN_CASE: &str = "lookup100/cluster-plain-keys";
const PLAIN_KEYS: (&str, &str) = ("CACHEMANAGER__CACHE__CLUSTER_KEY_BUCKETS", "0");
const CONNECTIONS: [u32; 2] = [8, 64];

struct Options {
    quick: bool,
    redis_url: Option<String>,
    /// `--redis-mode cluster`: the cluster cases too.
    cluster: bool,
    /// Only the cases whose name starts with one of these
    /// (`--only hit/redis,hit/cluster`).
    only: Option<Vec<String>>,
    /// `--runs N`: runs per case (3 unless given), for ratios that need
    /// more samples than three to stand out of the noise.
    runs: Option<usize>,
    /// `--against REV`: each case also run by the binary of that commit,
    /// turn about with this tree's, in the same run.
    against: Option<String>,
    /// `--set section.key=value`: a setting of every service the bench
    /// starts (`CACHEMANAGER__SECTION__KEY`), e.g. to compare one setting's
    /// two values in two runs.
    set: Vec<(String, String)>,
}

/// The `--set` settings, as variables; set once, before any service starts.
static SETTINGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// What a report says about the `--set` settings its services ran with: a
/// table measured with a setting changed must say so wherever it is copied.
fn settings_note() -> String {
    let set: Vec<String> = SETTINGS
        .get()
        .into_iter()
        .flatten()
        .map(|(variable, value)| format!("`{variable}={value}`"))
        .collect();
    if set.is_empty() {
        "settings: each case's own, the rest the defaults".to_owned()
    } else {
        format!(
            "settings: each case's own, {} (--set), the rest the defaults",
            set.join(", ")
        )
    }
}

fn options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        quick: false,
        redis_url: None,
        cluster: false,
        only: None,
        runs: None,
        against: None,
        set: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--runs" => {
                let runs = args.next().context("--runs needs a number")?;
                options.runs = Some(
                    runs.parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--runs needs a positive number, not {runs}"))?,
                );
            }
            "--against" => {
                options.against = Some(
                    args.next()
                        .context("--against needs a commit (a hash, a branch, HEAD~3)")?
                        .clone(),
                )
            }
            "--redis-url" => {
                options.redis_url = Some(args.next().context("--redis-url needs a URL")?.clone())
            }
            "--redis-mode" => match args.next().map(String::as_str) {
                Some("cluster") => options.cluster = true,
                Some("standalone") => options.cluster = false,
                _ => bail!("--redis-mode needs standalone or cluster"),
            },
            "--only" => {
                options.only = Some(
                    args.next()
                        .context("--only needs case name prefixes (a whole name ends in $)")?
                        .split(',')
                        .map(ToOwned::to_owned)
                        .collect(),
                )
            }
            "--set" => {
                let pair = args.next().context("--set needs section.key=value")?;
                let (key, value) = pair
                    .split_once('=')
                    .filter(|(key, _)| key.contains('.'))
                    .with_context(|| format!("--set needs section.key=value, not {pair}"))?;
                let variable = format!(
                    "CACHEMANAGER__{}",
                    key.replace('.', "__").to_ascii_uppercase()
                );
                options.set.push((variable, value.to_owned()));
            }
            other => bail!("unknown bench option {other}"),
        }
    }
    Ok(options)
}

impl Options {
    /// Whether the case `name` is asked for: a prefix of it, or the whole
    /// name ending in `$` (`hit/memory$` without `hit/memory+reqlog`).
    fn wants(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|prefixes| {
            prefixes.iter().any(|p| match p.strip_suffix('$') {
                Some(exact) => name == exact,
                None => name.starts_with(p.as_str()),
            })
        })
    }

    /// Whether any case of the group whose names start with `group` is
    /// asked for.
    fn wants_group(&self, group: &str) -> bool {
        self.only.as_ref().is_none_or(|prefixes| {
            prefixes
                .iter()
                .any(|p| p.starts_with(group) || group.starts_with(p.as_str()))
        })
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A container of the Redis image on the host's network, listening on
/// 127.0.0.1:`port` with `password`, nothing persisted, `extra` arguments
/// after; its id. The host's network, not a published port: a published port
/// goes through docker-proxy, a userland copy of every byte that would
/// compete with the service for the 2 cores and is no part of it.
fn redis_container(port: u16, password: &str, extra: &[&str]) -> Result<String> {
    let image = images::ensure_redis(false)?;
    let output = Command::new("docker")
        .args(["run", "-d", "--rm", "--network", "host", image])
        .args(["redis-server", "--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args([
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .output()
        .context("cannot run docker")?;
    if !output.status.success() {
        bail!(
            "cannot start Redis: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A Redis for the bench: the given URL, or a container removed on drop.
pub(crate) struct BenchRedis {
    pub(crate) url: String,
    pub(crate) password: Option<String>,
    container: Option<String>,
}

impl BenchRedis {
    pub(crate) fn start(url: Option<String>) -> Result<Self> {
        if let Some(url) = url {
            return Ok(Self {
                url,
                password: std::env::var("REDIS_PASSWORD").ok(),
                container: None,
            });
        }
        let port = free_port()?;
        let password = "bench-password".to_owned();
        let id = redis_container(port, &password, &[])?;
        let redis = Self {
            url: format!("redis://127.0.0.1:{port}"),
            password: Some(password),
            container: Some(id),
        };
        redis.wait_for_pong()?;
        Ok(redis)
    }

    /// Waits (20 s at most) until it answers PING.
    fn wait_for_pong(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .command("PING")
            .map_or(true, |a| !a.starts_with("+PONG"))
        {
            if Instant::now() > deadline {
                bail!("the bench Redis at {} did not answer", self.address());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// `host:port` of the URL, without credentials or database.
    fn address(&self) -> String {
        let host = self
            .url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or_default();
        host.rsplit('@').next().unwrap_or_default().to_owned()
    }

    /// One inline command on a fresh connection; the first line of the answer.
    fn command(&self, command: &str) -> Result<String> {
        let mut stream = TcpStream::connect(self.address())?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut payload = String::new();
        if let Some(password) = &self.password {
            let _ = write!(payload, "AUTH {password}\r\n");
        }
        let _ = write!(payload, "{command}\r\n");
        stream.write_all(payload.as_bytes())?;
        let mut answer = vec![0u8; 4096];
        let mut text = String::new();
        let expected = if self.password.is_some() { 2 } else { 1 };
        while text.matches("\r\n").count() < expected {
            let n = stream.read(&mut answer)?;
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&answer[..n]));
        }
        Ok(text.lines().last().unwrap_or_default().to_owned())
    }
}

impl BenchRedis {
    /// How many SET commands Redis has run (`INFO commandstats`).
    fn set_calls(&self) -> Result<u64> {
        let mut stream = TcpStream::connect(self.address())?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut payload = String::new();
        if let Some(password) = &self.password {
            let _ = write!(payload, "AUTH {password}\r\n");
        }
        payload.push_str("INFO commandstats\r\nQUIT\r\n");
        stream.write_all(payload.as_bytes())?;
        let mut text = String::new();
        // QUIT makes Redis close the connection: read to the end.
        stream.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_set:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        if let Some(id) = &self.container {
            let _ = Command::new("docker")
                .args(["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A Redis Cluster for the bench: three masters and three replicas, each a
/// container of the Redis image on the host's network (the addresses the
/// nodes announce are the ones the service reaches), removed on drop.
struct BenchCluster {
    ports: Vec<u16>,
    containers: Vec<String>,
    password: String,
    env: [(&'static str, String); 3],
}

impl BenchCluster {
    fn start() -> Result<Self> {
        let password = "bench-cluster-password".to_owned();
        let mut cluster = Self {
            ports: Vec::new(),
            containers: Vec::new(),
            password: password.clone(),
            env: Default::default(),
        };
        for _ in 0..6 {
            let port = free_port()?;
            let bus = free_port()?;
            let bus = bus.to_string();
            let id = redis_container(
                port,
                &password,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-announce-ip",
                    "127.0.0.1",
                    "--masterauth",
                    &password,
                ],
            )?;
            cluster.containers.push(id);
            cluster.ports.push(port);
        }
        let node = |port: u16| BenchRedis {
            url: format!("redis://127.0.0.1:{port}"),
            password: Some(password.clone()),
            container: None,
        };
        for &port in &cluster.ports {
            node(port).wait_for_pong()?;
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("docker")
            .args(["exec", &cluster.containers[0], "redis-cli", "-a", &password])
            .args(["--no-auth-warning", "--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("cannot run redis-cli --cluster create")?;
        if !created.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for &port in &cluster.ports {
            while !cluster_ok(&node(port)) {
                if Instant::now() > deadline {
                    bail!("the bench cluster did not form within 60 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster.env = [
            ("CACHEMANAGER__REDIS__MODE", "cluster".to_owned()),
            ("CACHEMANAGER__REDIS__NODES", nodes.join(",")),
            ("REDIS_PASSWORD", password),
        ];
        Ok(cluster)
    }

    /// The service's settings for this cluster.
    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    /// Empties the cluster: `FLUSHALL` on every master (a replica refuses it
    /// as read-only, and follows its master).
    fn flush(&self) -> Result<()> {
        for &port in &self.ports {
            let node = BenchRedis {
                url: format!("redis://127.0.0.1:{port}"),
                password: Some(self.password.clone()),
                container: None,
            };
            let answer = node.command("FLUSHALL")?;
            if !answer.starts_with("+OK") && !answer.starts_with("-READONLY") {
                bail!("FLUSHALL on the cluster node :{port} failed: {answer}");
            }
        }
        Ok(())
    }
}

/// `CLUSTER INFO` on a node says `cluster_state:ok` with six nodes known.
fn cluster_ok(node: &BenchRedis) -> bool {
    let Ok(mut stream) = TcpStream::connect(node.address()) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let payload = format!(
        "AUTH {}\r\nCLUSTER INFO\r\nQUIT\r\n",
        node.password.as_deref().unwrap_or_default()
    );
    if stream.write_all(payload.as_bytes()).is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.contains("cluster_state:ok") && text.contains("cluster_known_nodes:6")
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new("docker")
                .args(["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The cluster cases against the same cases over one Redis, in this run:
/// each one's median ratio to the ceiling, and the cluster's as a share of
/// the standalone one.
fn cluster_versus_standalone(results: &[CaseResult]) -> String {
    let ratio = |name: &str, connections: u32| {
        results
            .iter()
            .find(|r| r.name == name && r.connections == connections)
            .map(|r| {
                median(
                    r.runs
                        .iter()
                        .map(|(run, ceiling)| run.rps / ceiling.rps.max(1.0))
                        .collect(),
                )
                .0
            })
    };
    // CPU per request, service + every Redis process, medians of the runs.
    let cpu = |name: &str, connections: u32| {
        results
            .iter()
            .find(|r| r.name == name && r.connections == connections && !r.cpu.is_empty())
            .map(|r| median(r.cpu.iter().map(|c| c.total()).collect()).0)
    };
    let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let mut text = String::from(
        "Redis Cluster (3 masters, 3 replicas, all on this host) against one Redis, same run\n\n| case | conns | standalone % of ceiling | cluster % of ceiling | cluster / standalone | CPU us/request standalone | cluster |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (standalone, cluster) in [
        ("hit/redis", HIT_CLUSTER_CASE),
        ("miss/redis", MISS_CLUSTER_CASE),
        ("lookup100/redis", LOOKUP_CLUSTER_CASE),
        ("lookup100/redis", LOOKUP_CLUSTER_PLAIN_CASE),
    ] {
        for connections in CONNECTIONS {
            if let (Some(a), Some(b)) =
                (ratio(standalone, connections), ratio(cluster, connections))
            {
                let _ = writeln!(
                    text,
                    "| {cluster} | {connections} | {:.0} % | {:.0} % | {:.0} % | {} | {} |",
                    a * 100.0,
                    b * 100.0,
                    100.0 * b / a.max(f64::EPSILON),
                    shown(cpu(standalone, connections)),
                    shown(cpu(cluster, connections)),
                );
            }
        }
    }
    text
}

/// A running service process, killed on drop.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    /// `request_log`: the service's default logging (info, one line per
    /// request), written to /dev/null; otherwise warnings only, shown.
    fn start(
        binary: &Path,
        backend: &str,
        redis: &BenchRedis,
        users_file: Option<&Path>,
        request_log: bool,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(binary);
        command.env_clear();
        if !extra.iter().any(|(k, _)| *k == "DATABASE_URL") {
            // A database of its own, made afresh (and filled from the users file).
            let file = crate::target_dir().join(format!("bench/store-{port}.db"));
            crate::remove_sqlite(&file);
            // The ecosystem's variable rather than ours: a baseline from
            // before the store (`--against`) ignores it, where it would
            // refuse an unknown CACHEMANAGER__ key.
            command.env("DATABASE_URL", format!("sqlite://{}", file.display()));
        }
        command
            .env("CACHEMANAGER__SERVER__PORT", port.to_string())
            .env("CACHEMANAGER__CACHE__BACKEND", backend)
            .env("REDIS_URL", &redis.url)
            .env("RUST_LOG", if request_log { "info" } else { "warn" })
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(if request_log {
                Stdio::null()
            } else {
                Stdio::inherit()
            });
        if let Some(password) = &redis.password {
            command.env("REDIS_PASSWORD", password);
        }
        if let Some(file) = users_file {
            command.env("CACHEMANAGER__USERS__FILE", file);
        }
        // Then `--set`; last, the case's own settings win (a cluster's nodes
        // and password).
        command.envs(SETTINGS.get().into_iter().flatten().map(|(k, v)| (k, v)));
        command.envs(extra.iter().copied());
        let service = Self {
            child: command.spawn().context("cannot start the service")?,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(port, "/health/live").map_or(true, |s| s != 200) {
            if Instant::now() > deadline {
                bail!("the {backend} service did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(service)
    }

    /// The peak resident set size so far (VmHWM), in MB.
    fn peak_rss_mb(&self) -> f64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on the service at `port`: its status.
pub(crate) fn get(port: u16, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP answer")
}

fn uuid(n: u32) -> String {
    format!("550e8400-e29b-41d4-a716-4466554400{n:02}")
}

fn miss_uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The Lua that wrk runs: requests, and one parseable summary line.
fn script(dir: &Path, name: &str, request: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.lua"));
    let text = format!(
        r#"-- generated by cargo xtask bench
local threads = 0
setup = function(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local i = 0
{request}
done = function(summary, latency, requests)
  local e = summary.errors
  -- os.clock(): this wrk process's CPU time so far, every thread (C's clock()).
  io.write(string.format("CMBENCH requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p99_us=%d p999_us=%d cpu_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), math.floor(os.clock() * 1e6)))
end
"#
    );
    fs::write(&path, text)?;
    Ok(path)
}

#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    /// wrk's own CPU time over the run, in microseconds (the load
    /// generator shares this machine's cores with the servers).
    client_cpu_us: f64,
}

fn wrk(port: u16, script: &Path, connections: u32, seconds: u32) -> Result<Run> {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("CMBENCH"))
        .context("wrk printed no summary")?;
    let field = |name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let seconds = field("duration_us") / 1e6;
    Ok(Run {
        rps: if seconds > 0.0 {
            field("requests") / seconds
        } else {
            0.0
        },
        requests: field("requests"),
        p50_ms: field("p50_us") / 1e3,
        p99_ms: field("p99_us") / 1e3,
        p999_ms: field("p999_us") / 1e3,
        errors: (field("errors") + field("non2xx")) as u64,
        client_cpu_us: field("cpu_us"),
    })
}

struct CaseResult {
    name: String,
    connections: u32,
    runs: Vec<(Run, Run)>, // (case, ceiling right before it)
    peak_rss_mb: f64,
    /// CPU per request of each run, where measured.
    cpu: Vec<CpuPerRequest>,
    /// The service's CPU per request of each ceiling run paired with the
    /// case's, where measured (the hit and lookup cases).
    ceiling_cpu: Vec<f64>,
}

/// CPU time per request of one run, in microseconds, by process: the
/// service, Redis, PostgreSQL (user and system time, threads and backends
/// included). On a machine whose cores the load generator and the servers
/// share, this is what a request costs whatever the neighbours do, where
/// requests per second move with them.
#[derive(Clone, Copy)]
struct CpuPerRequest {
    service: f64,
    redis: f64,
    store: f64,
    /// wrk, the load generator, on the same cores.
    client: f64,
}

impl CpuPerRequest {
    /// The servers': the service, Redis and PostgreSQL.
    fn total(self) -> f64 {
        self.service + self.redis + self.store
    }

    /// Everything a request costs this machine, the load generator included:
    /// where the cores are saturated, requests per second are about the
    /// cores over this.
    fn with_client(self) -> f64 {
        self.total() + self.client
    }
}

/// CPU time used so far, in microseconds, by the service process and by the
/// Redis and PostgreSQL containers (their cgroups: every process, exited
/// backends too).
struct CpuMeter<'a> {
    pid: u32,
    /// The Redis containers (one server, or every node of a cluster).
    redis: Vec<&'a str>,
    /// The PostgreSQL container, for the store cases.
    store: Option<&'a str>,
}

impl CpuMeter<'_> {
    fn sample(&self) -> Option<CpuPerRequest> {
        let mut redis = 0.0;
        for id in &self.redis {
            redis += container_cpu_us(id)?;
        }
        Some(CpuPerRequest {
            service: process_cpu_us(self.pid)?,
            redis,
            store: match self.store {
                Some(id) => container_cpu_us(id)?,
                None => 0.0,
            },
            client: 0.0,
        })
    }

    /// Runs `work` (a wrk run) and returns its CPU per request, or `None`
    /// where this machine's `/proc` or cgroups do not tell.
    fn measure(&self, work: impl FnOnce() -> Result<Run>) -> Result<(Run, Option<CpuPerRequest>)> {
        let before = self.sample();
        let run = work()?;
        let after = self.sample();
        let cpu = before
            .zip(after)
            .filter(|_| run.requests > 0.0)
            .map(|(b, a)| CpuPerRequest {
                service: (a.service - b.service) / run.requests,
                redis: (a.redis - b.redis) / run.requests,
                store: (a.store - b.store) / run.requests,
                client: run.client_cpu_us / run.requests,
            });
        Ok((run, cpu))
    }
}

/// User and system time of a process and all its threads, in microseconds
/// (`/proc/PID/stat`, in clock ticks of 1/100 s: Linux's fixed `USER_HZ`).
fn process_cpu_us(pid: u32) -> Option<f64> {
    stat_cpu_us(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime` + `stime` of a `/proc/PID/stat` line, in microseconds.
fn stat_cpu_us(stat: &str) -> Option<f64> {
    // The command name, in parentheses, may hold spaces and parentheses:
    // count the fields after its last closing one.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10_000.0)
}

/// CPU time of a container's cgroup, in microseconds: cgroup v2
/// (`cpu.stat`, `usage_usec`) or v1 (`cpuacct.usage`, nanoseconds), under
/// Docker's cgroupfs or systemd layouts.
fn container_cpu_us(id: &str) -> Option<f64> {
    let v2 = [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ];
    for path in &v2 {
        if let Ok(text) = fs::read_to_string(path) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    let v1 = [
        format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpuacct/system.slice/docker-{id}.scope/cpuacct.usage"),
    ];
    v1.iter()
        .find_map(|path| fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .map(|ns| ns / 1000.0)
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    (values[n / 2], values[0], values[n - 1])
}

/// Runs `cargo xtask bench`.
pub fn bench(args: &[String]) -> Result<()> {
    let options = options(args)?;
    for (variable, value) in &options.set {
        println!("==> every service started with {variable}={value}");
    }
    let _ = SETTINGS.set(options.set.clone());
    let (runs, seconds) = if options.quick {
        (1, 1)
    } else {
        (options.runs.unwrap_or(3), 8)
    };
    // wrk, and what the local Redis and PostgreSQL images are built from:
    // on a fresh machine the bench installs what it needs, as `ci` does.
    crate::setup::ensure_tools()?;
    crate::release_build()?;
    let target = crate::target_dir();
    let binary = target.join("release/cachemanager");
    let bare = target.join("release/bare_redis_get");
    let near_lag_binary = target.join("release/near_lag");
    let dir = target.join("bench");
    fs::create_dir_all(&dir)?;

    // 50,000 users for the miss case: each run asks each at most once.
    let users_file = dir.join("users-50k.json");
    let mut users = String::from("[");
    for n in 1..=MISS_USERS {
        let _ = write!(
            users,
            r#"{}{{"id":{n},"uuid":"{}","first_name":"Load","last_name":"User","email":"load.user{n}@example.com"}}"#,
            if n == 1 { "" } else { "," },
            miss_uuid(n)
        );
    }
    users.push(']');
    fs::write(&users_file, users)?;

    let hit_paths: Vec<String> = (1..=10)
        .map(|n| format!("\"/users/{}\"", uuid(n)))
        .collect();
    let hit = script(
        &dir,
        "hit",
        &format!(
            "local paths = {{{}}}\nrequest = function()\n  i = i + 1\n  return wrk.format(nil, paths[(i % #paths) + 1])\nend",
            hit_paths.join(",")
        ),
    )?;
    // The same requests from a client that accepts compression: what the
    // negotiation costs on the hit path (a user's body is below the
    // compression threshold, so only the check and the body's read remain).
    let hit_gzip = script(
        &dir,
        "hit-gzip",
        &format!(
            "local paths = {{{}}}\nlocal headers = {{[\"Accept-Encoding\"] = \"gzip, br\"}}\nrequest = function()\n  i = i + 1\n  return wrk.format(nil, paths[(i % #paths) + 1], headers)\nend",
            hit_paths.join(",")
        ),
    )?;
    let ceiling = script(
        &dir,
        "ceiling",
        "request = function()\n  return wrk.format(nil, \"/health/live\")\nend",
    )?;
    let miss = script(
        &dir,
        "miss",
        &format!(
            "request = function()\n  i = i + 1\n  local n = (tid * {half} + i) % {total} + 1\n  return wrk.format(nil, string.format(\"/users/00000000-0000-4000-8000-%012d\", n))\nend",
            half = MISS_USERS / 2,
            total = MISS_USERS
        ),
    )?;
    let body = format!(
        r#"{{"uuids":[{}]}}"#,
        (1..=100)
            .map(|n| format!("\"{}\"", miss_uuid(n)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lookup = script(
        &dir,
        "lookup100",
        &format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{body}'\nrequest = function()\n  return wrk.format(nil, \"/users/lookup\")\nend"
        ),
    )?;

    let baseline = options
        .against
        .as_deref()
        .map(crate::against::baseline)
        .transpose()?;
    let redis = BenchRedis::start(options.redis_url.clone())?;
    let cluster = if options.cluster {
        Some(BenchCluster::start()?)
    } else {
        None
    };
    let cluster_env = cluster.as_ref().map(BenchCluster::env);
    let mut results: Vec<CaseResult> = Vec::new();
    let mut cases: Vec<(&str, &str, &PathBuf, bool)> = vec![
        ("hit/memory", "memory", &hit, false),
        ("hit/memory+accept-gzip", "memory", &hit_gzip, false),
        // The same with the default request log (a line per request, at info).
        (REQUEST_LOG_CASE, "memory", &hit, false),
        ("hit/redis", "redis", &hit, false),
        (NEAR_CASE, "redis", &hit, false),
        // Right after hit/redis, whose keys it reads: the bare handler.
        (BARE_CASE, "redis", &hit, false),
        ("hit/noop", "noop", &hit, false),
        ("miss/redis", "redis", &miss, true),
        ("lookup100/redis", "redis", &lookup, true),
    ];
    if cluster.is_some() {
        cases.push((HIT_CLUSTER_CASE, "redis", &hit, false));
        cases.push((MISS_CLUSTER_CASE, "redis", &miss, true));
        cases.push((LOOKUP_CLUSTER_CASE, "redis", &lookup, true));
        cases.push((LOOKUP_CLUSTER_PLAIN_CASE, "redis", &lookup, true));
    }
    let plain_keys_env: Vec<(&str, &str)> = cluster_env
        .iter()
        .flatten()
        .copied()
        .chain([PLAIN_KEYS])
        .collect();
    let chosen = cases.into_iter().filter(|(name, ..)| options.wants(name));
    for (name, backend, case_script, big) in chosen {
        let extra: &[(&str, &str)] = match (name, &cluster_env) {
            (NEAR_CASE, _) => &[NEAR_ON],
            (HIT_CLUSTER_CASE | MISS_CLUSTER_CASE | LOOKUP_CLUSTER_CASE, Some(env)) => {
                env.as_slice()
            }
            (LOOKUP_CLUSTER_PLAIN_CASE, Some(_)) => plain_keys_env.as_slice(),
            _ => &[],
        };
        let start = |binary: &Path| {
            let service = Service::start(
                binary,
                backend,
                &redis,
                big.then_some(users_file.as_path()),
                name == REQUEST_LOG_CASE,
                extra,
            )?;
            // Warm the cache (and the connection) for the hit and lookup cases.
            for n in 1..=10 {
                let _ = get(service.port, &format!("/users/{}", uuid(n)));
            }
            if name.starts_with("lookup") {
                for n in 1..=100 {
                    let _ = get(service.port, &format!("/users/{}", miss_uuid(n)));
                }
            }
            anyhow::Ok(service)
        };
        let service = start(&binary)?;
        // The same case served by the baseline's binary, measured turn about
        // with this tree's (not the bare reference: it is no service).
        let base = match &baseline {
            Some(b) if name != BARE_CASE => match start(&b.binary) {
                Ok(service) => Some(service),
                Err(error) => {
                    println!(
                        "  {name}: the baseline {} cannot serve it ({error:#}); this tree alone",
                        b.label
                    );
                    None
                }
            },
            _ => None,
        };
        // The reference answers the case's requests; the ceiling stays the
        // service's own, so its ratio reads like the others.
        let reference = if name == BARE_CASE {
            Some(Service::start(&bare, backend, &redis, None, false, &[])?)
        } else {
            None
        };
        let target = reference.as_ref().map_or(service.port, |r| r.port);
        if target != service.port {
            for n in 1..=10 {
                let status = get(target, &format!("/users/{}", uuid(n)))?;
                if status != 200 {
                    bail!("the reference answered {status}: the hit/redis keys are missing");
                }
            }
        }
        // CPU per request: the process that answers, and the Redis
        // containers of ours it talks to (none for memory and noop).
        let containers: Vec<&str> = match (backend, name, &cluster) {
            (
                "redis",
                HIT_CLUSTER_CASE
                | MISS_CLUSTER_CASE
                | LOOKUP_CLUSTER_CASE
                | LOOKUP_CLUSTER_PLAIN_CASE,
                Some(c),
            ) => c.containers.iter().map(String::as_str).collect(),
            ("redis", ..) => redis.container.as_deref().into_iter().collect(),
            _ => Vec::new(),
        };
        let answering = reference.as_ref().unwrap_or(&service).child.id();
        let meter = CpuMeter {
            pid: answering,
            redis: containers,
            store: None,
        };
        let ceiling_meter = CpuMeter {
            pid: service.child.id(),
            redis: Vec::new(),
            store: None,
        };
        // This tree's service, and the baseline's (if any), each measured
        // as (port, the case's meter, the ceiling's meter, results' name).
        let base_name = baseline
            .as_ref()
            .map(|b| format!("{name} {}", b.label))
            .unwrap_or_default();
        let mut measured = vec![(target, meter, ceiling_meter, name.to_owned())];
        if let Some(base) = &base {
            measured.push((
                base.port,
                CpuMeter {
                    pid: base.child.id(),
                    redis: measured[0].1.redis.clone(),
                    store: None,
                },
                CpuMeter {
                    pid: base.child.id(),
                    redis: Vec::new(),
                    store: None,
                },
                base_name.clone(),
            ));
        }
        let ceiling_port = |index: usize| match (index, &base) {
            (1, Some(base)) => base.port,
            _ => service.port,
        };
        for connections in CONNECTIONS {
            let mut pairs = vec![Vec::new(); measured.len()];
            let mut cpu = vec![Vec::new(); measured.len()];
            let mut ceiling_cpu = vec![Vec::new(); measured.len()];
            for _ in 0..runs {
                for (index, (port, meter, ceiling_meter, _)) in measured.iter().enumerate() {
                    let (base, used) = ceiling_meter
                        .measure(|| wrk(ceiling_port(index), &ceiling, connections, seconds))?;
                    ceiling_cpu[index].extend(used.map(|c| c.service));
                    match (name, &cluster) {
                        (MISS_CLUSTER_CASE, Some(cluster)) => cluster.flush()?,
                        _ if name.starts_with("miss") => {
                            let answer = redis.command("FLUSHDB")?;
                            if !answer.starts_with("+OK") {
                                bail!("FLUSHDB failed: {answer}");
                            }
                        }
                        _ => {}
                    }
                    let (run, used) =
                        meter.measure(|| wrk(*port, case_script, connections, seconds))?;
                    cpu[index].extend(used);
                    pairs[index].push((run, base));
                }
            }
            for (index, (.., label)) in measured.iter().enumerate() {
                println!(
                    "  {label:<16} c={connections:<3} {:>9.0} req/s",
                    median(pairs[index].iter().map(|(r, _)| r.rps).collect()).0
                );
                results.push(CaseResult {
                    name: label.clone(),
                    connections,
                    runs: std::mem::take(&mut pairs[index]),
                    peak_rss_mb: 0.0,
                    cpu: std::mem::take(&mut cpu[index]),
                    ceiling_cpu: std::mem::take(&mut ceiling_cpu[index]),
                });
            }
        }
        let rss = reference.as_ref().unwrap_or(&service).peak_rss_mb();
        for result in results.iter_mut().filter(|r| r.name == name) {
            result.peak_rss_mb = rss;
        }
        if let Some(base) = &base {
            let rss = base.peak_rss_mb();
            for result in results.iter_mut().filter(|r| r.name == base_name) {
                result.peak_rss_mb = rss;
            }
        }
    }
    let cost = if options.wants(METRICS_COST_CASE) {
        let rounds = if options.quick { 1 } else { 10 };
        metrics_cost(&binary, &redis, &hit, (rounds, seconds.min(5)))?
    } else {
        String::new()
    };
    if options.wants_group("pg/") {
        store_cases(
            &binary,
            &redis,
            &ceiling,
            &dir,
            (runs, seconds, options.quick),
            &|name: &str| options.wants(name),
            &mut results,
        )?;
    }
    report(&results, &dir, runs, seconds, options.quick)?;
    if let Some(baseline) = &baseline {
        let versus = against_table(&results, &baseline.label);
        println!("{versus}");
        fs::write(dir.join("against.md"), &versus)?;
    }
    if cluster.is_some() {
        let versus = cluster_versus_standalone(&results);
        println!("{versus}");
        fs::write(dir.join("cluster.md"), &versus)?;
    }
    if !cost.is_empty() {
        println!("{cost}");
        fs::write(dir.join("metrics-cost.md"), &cost)?;
    }
    if options.wants(NEAR_LAG_CASE) {
        let writes = if options.quick { 300 } else { 2000 };
        let lag = near_lag(&near_lag_binary, &redis, writes, runs)?;
        println!("{lag}");
        fs::write(dir.join("near-lag.md"), &lag)?;
    }
    if options.wants("storm") {
        storm(&binary, &redis, &users_file, &dir, runs)?;
    }
    Ok(())
}

/// Each case against the same case served by the baseline's binary
/// (`--against`): the median of the per-run ratios of requests per second
/// (runs taken turn about), each binary's ratio to its own ceiling, and the
/// service's CPU per request.
fn against_table(results: &[CaseResult], label: &str) -> String {
    let mut table = format!(
        "This tree against the baseline {label}, same run, turn about\n\n| case | conns | req/s this / baseline | % of ceiling, this | baseline | service CPU us/request, this | baseline |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    let ratio = |r: &CaseResult| {
        median(
            r.runs
                .iter()
                .map(|(run, ceiling)| 100.0 * run.rps / ceiling.rps.max(f64::MIN_POSITIVE))
                .collect(),
        )
        .0
    };
    let cpu = |r: &CaseResult| median(r.cpu.iter().map(|c| c.service).collect()).0;
    for base in results.iter().filter(|r| r.name.ends_with(label)) {
        let name = base.name.trim_end_matches(label).trim_end();
        let Some(this) = results
            .iter()
            .find(|r| r.name == name && r.connections == base.connections)
        else {
            continue;
        };
        let versus = median(
            this.runs
                .iter()
                .zip(&base.runs)
                .map(|((a, _), (b, _))| a.rps / b.rps.max(f64::MIN_POSITIVE))
                .collect(),
        );
        let _ = writeln!(
            table,
            "| {name} | {} | {:.2}x ({:.2}–{:.2}) | {:.0} % | {:.0} % | {:.1} | {:.1} |",
            base.connections,
            versus.0,
            versus.1,
            versus.2,
            ratio(this),
            ratio(base),
            cpu(this),
            cpu(base)
        );
    }
    table
}

/// The near cache's invalidation lag (`benches/src/bin/near_lag.rs`): two
/// instances under read load, one writing 500 times a second, the other
/// reading each written key until it sees the new value. One line per run
/// (p50, p99, max from the write's acknowledgement), and the medians.
fn near_lag(binary: &Path, redis: &BenchRedis, writes: u32, runs: usize) -> Result<String> {
    let mut rows = Vec::new();
    let mut p99s = Vec::new();
    for _ in 0..runs.max(1) {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("REDIS_URL", &redis.url)
            .env("NEAR_LAG_WRITES", writes.to_string())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit());
        if let Some(password) = &redis.password {
            command.env("REDIS_PASSWORD", password);
        }
        let output = command.output().context("cannot run near_lag")?;
        if !output.status.success() {
            bail!(
                "near_lag failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let field = |name: &str| -> Result<u64> {
            line.split(&format!("\"{name}\":"))
                .nth(1)
                .and_then(|rest| rest.split([',', '}']).next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no {name} in near_lag's output: {line}"))
        };
        let (p50, p99, max) = (field("p50_us")?, field("p99_us")?, field("max_us")?);
        let kept = field("kept_before")?;
        p99s.push(p99 as f64);
        rows.push(format!(
            "| {writes} | {kept} | {:.2} | {:.2} | {:.2} |",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            max as f64 / 1000.0
        ));
    }
    let (median_p99, ..) = median(p99s);
    let mut out = format!(
        "### {NEAR_LAG_CASE}: from a write's acknowledgement on instance A to the first read on instance B that sees it\n\n\
         Two near caches (own connections each), 4 readers each on 16 keys; A writes 500 times a second.\n\
         Target: p99 <= 10 ms on loopback. Median p99 over {} runs: {:.2} ms.\n\n\
         | writes | old value kept in B before the write | p50 ms | p99 ms | max ms |\n| ---: | ---: | ---: | ---: | ---: |\n",
        rows.len(),
        median_p99 / 1000.0
    );
    for row in rows {
        out.push_str(&row);
        out.push('\n');
    }
    Ok(out)
}

/// A PostgreSQL for the bench: a container on the host's network, removed on drop.
pub(crate) struct BenchPostgres {
    pub(crate) url: String,
    pub(crate) password: String,
    container: String,
}

impl BenchPostgres {
    pub(crate) fn start() -> Result<Self> {
        let image = images::ensure_postgres(false)?;
        let port = free_port()?;
        let password = "bench-password".to_owned();
        let output = Command::new("docker")
            .args(["run", "-d", "--rm", "--network", "host"])
            .args(["-e", &format!("POSTGRES_PASSWORD={password}"), image])
            .args([
                "-c",
                &format!("port={port}"),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .output()
            .context("cannot run docker")?;
        if !output.status.success() {
            bail!(
                "cannot start PostgreSQL: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let container = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let postgres = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            password,
            container,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new("docker")
                .args([
                    "exec",
                    &postgres.container,
                    "pg_isready",
                    "-q",
                    "-h",
                    "127.0.0.1",
                ])
                .args(["-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(postgres);
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn env(&self) -> [(&str, &str); 2] {
        [
            ("DATABASE_URL", self.url.as_str()),
            ("CACHEMANAGER__STORE__PASSWORD", self.password.as_str()),
        ]
    }
}

impl Drop for BenchPostgres {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Fills the store `env` names with `users` synthetic users with the service's
/// own `import --generate`; how long it took.
pub(crate) fn seed(binary: &Path, env: &[(&str, &str)], users: u64) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new(binary)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .args(["import", "--generate", &users.to_string()])
        .current_dir(std::env::temp_dir())
        .status()
        .context("cannot run cachemanager import")?;
    if !status.success() {
        bail!("cachemanager import --generate {users} failed ({status})");
    }
    Ok(started.elapsed())
}

/// The users a store case reads: the first `hot` are warm, any of `total` is
/// a likely miss.
const HOT_USERS: u64 = 1000;

/// The store cases, on PostgreSQL with a million users (20,000 with
/// `--quick`): a warm hit over Redis, the same with the near cache on (a hit
/// served in process, for comparison), a miss over Redis (Redis flushed before
/// each run; random users), no cache at all (`noop`, random users), and
/// `PATCH` of random users over Redis. Then the issue's targets, checked
/// against this run's medians.
fn store_cases(
    binary: &Path,
    redis: &BenchRedis,
    ceiling: &Path,
    dir: &Path,
    (runs, seconds, quick): (usize, u32, bool),
    wanted: &dyn Fn(&str) -> bool,
    results: &mut Vec<CaseResult>,
) -> Result<()> {
    let total: u64 = if quick { 20_000 } else { 1_000_000 };
    let postgres = BenchPostgres::start()?;
    let env = postgres.env();
    let took = seed(binary, &env, total)?;
    println!(
        "  seeded {total} users into PostgreSQL in {:.1} s ({:.0} users/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    let random_get = format!(
        "init = function(args)\n  math.randomseed(tid * 7919 + 17)\nend\nrequest = function()\n  return wrk.format(nil, string.format(\"/users/5eed0000-0000-4000-8000-%012x\", math.random(1, {total})))\nend"
    );
    let hot_get = format!(
        "request = function()\n  i = i + 1\n  return wrk.format(nil, string.format(\"/users/5eed0000-0000-4000-8000-%012x\", (tid * 500 + i) % {HOT_USERS} + 1))\nend"
    );
    let patch = format!(
        "init = function(args)\n  math.randomseed(tid * 7919 + 29)\nend\nlocal headers = {{[\"Content-Type\"] = \"application/json\"}}\nrequest = function()\n  i = i + 1\n  local body = string.format('{{\"last_name\":\"Patched%d\"}}', i)\n  return wrk.format(\"PATCH\", string.format(\"/users/5eed0000-0000-4000-8000-%012x\", math.random(1, {total})), headers, body)\nend"
    );
    let hot = script(dir, "pg-hit", &hot_get)?;
    let scripts = [
        ("pg/hit/redis", "redis", hot.clone()),
        ("pg/hit/near", "redis", hot),
        (
            "pg/miss/redis",
            "redis",
            script(dir, "pg-miss", &random_get)?,
        ),
        ("pg/noop", "noop", script(dir, "pg-noop", &random_get)?),
        ("pg/patch/redis", "redis", script(dir, "pg-patch", &patch)?),
    ];
    for (name, backend, case_script) in &scripts {
        if !wanted(name) {
            continue;
        }
        let settings: Vec<(&str, &str)> = if name.ends_with("/near") {
            env.iter().copied().chain([NEAR_ON]).collect()
        } else {
            env.to_vec()
        };
        let service = Service::start(binary, backend, redis, None, false, &settings)?;
        if name.starts_with("pg/hit") {
            for n in 1..=HOT_USERS {
                let path = format!("/users/5eed0000-0000-4000-8000-{n:012x}");
                let status = get(service.port, &path)?;
                if status != 200 {
                    bail!("{path} answered {status}: the store was not seeded");
                }
            }
        }
        // CPU per request by process, where the Redis is a container of ours.
        let meter = redis.container.as_deref().map(|redis| CpuMeter {
            pid: service.child.id(),
            redis: vec![redis],
            store: Some(&postgres.container),
        });
        for connections in CONNECTIONS {
            let mut pairs = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..runs {
                let base = wrk(service.port, ceiling, connections, seconds)?;
                if name.starts_with("pg/miss") {
                    let answer = redis.command("FLUSHDB")?;
                    if !answer.starts_with("+OK") {
                        bail!("FLUSHDB failed: {answer}");
                    }
                }
                let work = || wrk(service.port, case_script, connections, seconds);
                let run = match &meter {
                    Some(meter) => {
                        let (run, used) = meter.measure(work)?;
                        cpu.extend(used);
                        run
                    }
                    None => work()?,
                };
                pairs.push((run, base));
            }
            println!(
                "  {name:<16} c={connections:<3} {:>9.0} req/s",
                median(pairs.iter().map(|(r, _)| r.rps).collect()).0
            );
            results.push(CaseResult {
                name: (*name).to_owned(),
                connections,
                runs: pairs,
                peak_rss_mb: 0.0,
                cpu,
                ceiling_cpu: Vec::new(),
            });
        }
        let rss = service.peak_rss_mb();
        for result in results.iter_mut().filter(|r| r.name == *name) {
            result.peak_rss_mb = rss;
        }
    }
    store_targets(results, dir, total, took)
}

/// The store issue's targets against this run's medians, written to
/// `store-targets.md` and printed. Reported, not enforced: timings on a
/// shared 2-core machine are evidence, not a test.
fn store_targets(results: &[CaseResult], dir: &Path, total: u64, seeding: Duration) -> Result<()> {
    let find = |name: &str, connections: u32| {
        results
            .iter()
            .find(|r| r.name == name && r.connections == connections)
    };
    let rps = |r: &CaseResult| median(r.runs.iter().map(|(run, _)| run.rps).collect()).0;
    let mut lines = vec![format!(
        "PostgreSQL with {total} users (seeded in {:.1} s); {}; medians of this run\n",
        seeding.as_secs_f64(),
        settings_note()
    )];
    lines.push("| target | connections | measured | met |".into());
    lines.push("| --- | ---: | ---: | :---: |".into());
    for connections in CONNECTIONS {
        if let (Some(hit), Some(noop)) = (
            find("pg/hit/redis", connections),
            find("pg/noop", connections),
        ) {
            let ratio = rps(hit) / rps(noop).max(1.0);
            lines.push(format!(
                "| warm hit >= 3x no cache | {connections} | {ratio:.2}x | {} |",
                if ratio >= 3.0 { "yes" } else { "no" }
            ));
        }
        if let (Some(near), Some(noop)) = (
            find("pg/hit/near", connections),
            find("pg/noop", connections),
        ) {
            // Not the target's case (a hit there is one Redis round trip):
            // what the near cache adds on the same store.
            let ratio = rps(near) / rps(noop).max(1.0);
            lines.push(format!(
                "| (near cache on: warm hit vs no cache) | {connections} | {ratio:.2}x | |"
            ));
        }
        if let (Some(miss), Some(noop)) = (
            find("pg/miss/redis", connections),
            find("pg/noop", connections),
        ) {
            let cost = rps(noop) / rps(miss).max(1.0);
            lines.push(format!(
                "| miss costs <= 1.25x no cache | {connections} | {cost:.2}x | {} |",
                if cost <= 1.25 { "yes" } else { "no" }
            ));
        }
    }
    if let Some(hit) = find("pg/hit/redis", 64) {
        let p99 = median(hit.runs.iter().map(|(r, _)| r.p99_ms).collect()).0;
        lines.push(format!(
            "| warm hit p99 < 5 ms | 64 | {p99:.2} ms | {} |",
            if p99 < 5.0 { "yes" } else { "no" }
        ));
    }
    for connections in CONNECTIONS {
        if let Some(patch) = find("pg/patch/redis", connections) {
            let errors: u64 = patch.runs.iter().map(|(r, _)| r.errors).sum();
            let writes = rps(patch);
            lines.push(format!(
                "| PATCH >= 2,000/s, 0 errors | {connections} | {writes:.0}/s, {errors} errors | {} |",
                if writes >= 2000.0 && errors == 0 { "yes" } else { "no" }
            ));
        }
    }
    let peak = results
        .iter()
        .filter(|r| r.name.starts_with("pg/"))
        .map(|r| r.peak_rss_mb)
        .fold(0.0, f64::max);
    lines.push(format!(
        "| peak RSS < 64 MB | all | {peak:.1} MB | {} |",
        if peak < 64.0 { "yes" } else { "no" }
    ));
    lines.extend(cpu_table(results));
    let table = lines.join("\n") + "\n";
    println!("\n{table}");
    fs::write(dir.join("store-targets.md"), table)?;
    Ok(())
}

/// The store cases' CPU per request by process (medians of the runs), and
/// what a warm hit saves against no cache: empty where it was not measured.
fn cpu_table(results: &[CaseResult]) -> Vec<String> {
    let medians = |r: &CaseResult| {
        let of = |part: fn(&CpuPerRequest) -> f64| median(r.cpu.iter().map(part).collect()).0;
        CpuPerRequest {
            service: of(|c| c.service),
            redis: of(|c| c.redis),
            store: of(|c| c.store),
            client: of(|c| c.client),
        }
    };
    let measured: Vec<&CaseResult> = results
        .iter()
        .filter(|r| r.name.starts_with("pg/") && !r.cpu.is_empty())
        .collect();
    if measured.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![
        String::new(),
        "CPU per request, microseconds (medians of the runs; user and system time of the service process, of the Redis and PostgreSQL containers, and of wrk, the load generator on the same cores)\n".into(),
        "| case | connections | service | Redis | PostgreSQL | servers | wrk | all |".into(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into(),
    ];
    for r in &measured {
        let m = medians(r);
        lines.push(format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.name,
            r.connections,
            m.service,
            m.redis,
            m.store,
            m.total(),
            m.client,
            m.with_client()
        ));
    }
    for connections in CONNECTIONS {
        let find = |name: &str| {
            measured
                .iter()
                .find(|r| r.name == name && r.connections == connections)
                .map(|r| medians(r))
        };
        let share = |a: CpuPerRequest, b: CpuPerRequest| {
            (
                100.0 * a.total() / b.total().max(f64::MIN_POSITIVE),
                100.0 * a.with_client() / b.with_client().max(f64::MIN_POSITIVE),
            )
        };
        if let (Some(hit), Some(noop)) = (find("pg/hit/redis"), find("pg/noop")) {
            let (servers, all) = share(hit, noop);
            lines.push(format!(
                "\nAt {connections} connections a warm hit uses {servers:.0} % of the servers' CPU of a request with no cache ({all:.0} % with wrk's): with every core busy, at most {:.2}x the requests per second.",
                noop.with_client() / hit.with_client().max(f64::MIN_POSITIVE)
            ));
        }
        if let (Some(miss), Some(noop)) = (find("pg/miss/redis"), find("pg/noop")) {
            let (servers, all) = share(miss, noop);
            lines.push(format!(
                "At {connections} connections a miss uses {servers:.0} % of the servers' CPU of a request with no cache ({all:.0} % with wrk's)."
            ));
        }
    }
    lines
}

/// CPU per request of the hit and lookup cases (medians of the runs): the
/// service and the Redis containers it talks to, and the service's CPU per
/// request of the ceiling runs paired with them. Steadier than requests per
/// second on a machine whose cores wrk and the servers share: a case's
/// service CPU against its ceiling's is what the case's own work costs.
fn service_cpu_table(results: &[CaseResult]) -> String {
    let measured: Vec<&CaseResult> = results
        .iter()
        .filter(|r| !r.name.starts_with("pg/") && !r.cpu.is_empty())
        .collect();
    if measured.is_empty() {
        return String::new();
    }
    let mut table = String::from(
        "\nCPU per request, microseconds (medians of the runs; user and system time of the service process, of the Redis containers: one server, or every node of the cluster, and of wrk)\n\n| case | conns | service | Redis | total | wrk | ceiling (service) | service / ceiling |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in measured {
        let service = median(r.cpu.iter().map(|c| c.service).collect()).0;
        let redis = median(r.cpu.iter().map(|c| c.redis).collect()).0;
        let total = median(r.cpu.iter().map(|c| c.total()).collect()).0;
        let client = median(r.cpu.iter().map(|c| c.client).collect()).0;
        let ceiling = median(r.ceiling_cpu.clone()).0;
        let _ = writeln!(
            table,
            "| {} | {} | {service:.1} | {redis:.1} | {total:.1} | {client:.1} | {ceiling:.1} | {:.2}x |",
            r.name,
            r.connections,
            service / ceiling.max(f64::MIN_POSITIVE)
        );
    }
    table
}

/// What the store pays per query in the storm case: a database's round trip.
const STORM_STORE_LATENCY_MS: &str = "5";

/// The storm case: one cold key hit by 64 connections at once for a second,
/// over Redis, with a store that answers in 5 ms (`users.latency_ms`), with
/// and without single-flight. Each load writes its record and both mappings
/// in one pipeline of 3 SETs, so Redis's SET count / 3 is the number of store
/// loads in that second.
fn storm(
    binary: &Path,
    redis: &BenchRedis,
    users_file: &Path,
    dir: &Path,
    runs: usize,
) -> Result<()> {
    let key = format!("/users/{}", miss_uuid(1));
    let script = script(
        dir,
        "storm",
        &format!("request = function()\n  return wrk.format(nil, \"{key}\")\nend"),
    )?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for single_flight in ["true", "false"] {
        let service = Service::start(
            binary,
            "redis",
            redis,
            Some(users_file),
            false,
            &[
                ("CACHEMANAGER__USERS__LATENCY_MS", STORM_STORE_LATENCY_MS),
                ("CACHEMANAGER__CACHE__SINGLE_FLIGHT", single_flight),
            ],
        )?;
        let mut loads = Vec::new();
        let mut p99s = Vec::new();
        for _ in 0..runs {
            let answer = redis.command("FLUSHDB")?;
            if !answer.starts_with("+OK") {
                bail!("FLUSHDB failed: {answer}");
            }
            let before = redis.set_calls()?;
            let run = wrk(service.port, &script, 64, 1)?;
            let after = redis.set_calls()?;
            loads.push(after.saturating_sub(before) as f64 / 3.0);
            p99s.push(run.p99_ms);
        }
        drop(service);
        let (loads, loads_min, loads_max) = median(loads);
        let (p99, _, _) = median(p99s);
        println!(
            "  storm single_flight={single_flight:<5} {loads:>5.0} store loads in the first second, p99 {p99:.2} ms"
        );
        rows.push(format!(
            "| storm/redis, single-flight {} | 64 | {loads:.0} ({loads_min:.0}–{loads_max:.0}) | {p99:.2} |",
            if single_flight == "true" { "on" } else { "off" }
        ));
        json.push(format!(
            "  {{\"case\": \"storm/redis\", \"single_flight\": {single_flight}, \"connections\": 64, \"store_loads_first_second\": {loads:.1}, \"p99_ms\": {p99:.3}, \"runs\": {runs}}}"
        ));
    }
    let table = format!(
        "| case | conns | store loads in the first second | p99 ms of that second |\n| --- | ---: | ---: | ---: |\n{}\n",
        rows.join("\n")
    );
    println!("\n{table}");
    fs::write(
        dir.join("storm.json"),
        format!("[\n{}\n]\n", json.join(",\n")),
    )?;
    Ok(())
}

/// Redraws the chart of an earlier run from its `results.json`:
/// `cargo xtask bench-chart [results.json]`.
pub fn chart_from_json(args: &[String]) -> Result<()> {
    let json = args.first().map_or_else(
        || crate::target_dir().join("bench/results.json"),
        PathBuf::from,
    );
    let png = chart_of(&json)?;
    println!("chart: {}", png.display());
    Ok(())
}

/// Draws the chart of the run in `json` beside it (same name, `.png`).
fn chart_of(json: &Path) -> Result<PathBuf> {
    let text =
        fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bench result", json.display()))?;
    let bars: Vec<chart::Bar> = rows
        .iter()
        .map(|row| chart::Bar {
            label: format!(
                "{} · {} conns",
                row["case"].as_str().unwrap_or("?"),
                row["connections"]
            ),
            rps: row["rps"].as_f64().unwrap_or(0.0),
            ceiling_rps: row["ceiling_rps"].as_f64().unwrap_or(0.0),
            percent_of_ceiling: 100.0 * row["ratio_to_ceiling"].as_f64().unwrap_or(0.0),
        })
        .collect();
    let first = rows.first().context("no rows in the results")?;
    let title = format!(
        "cargo xtask bench{}: {} run(s) of {} s per case, medians",
        if first["quick"].as_bool() == Some(true) {
            " --quick"
        } else {
            ""
        },
        first["runs"],
        first["seconds"]
    );
    let png = json.with_extension("png");
    chart::draw(&bars, &title, &png)?;
    Ok(png)
}

/// What metrics cost on the hit path: three memory services, warmed alike:
/// metrics on, metrics off, and a second one with metrics off (the null
/// case: two identical services, what the machine's noise alone makes of a
/// comparison). At each connection count, `rounds` rounds run each service
/// once, the order rotating from round to round so drift favours none; the
/// cost is the median of the per-round ratios on/off, beside the median of
/// off/off (a round shares its seconds of machine noise, which separate
/// ceilings did not: ratios to two ceilings differed by more than the bound
/// from run to run).
fn metrics_cost(
    binary: &Path,
    redis: &BenchRedis,
    hit: &Path,
    (rounds, seconds): (usize, u32),
) -> Result<String> {
    let off_env = [("CACHEMANAGER__METRICS__ENABLED", "false")];
    let services = [
        Service::start(binary, "memory", redis, None, false, &[])?,
        Service::start(binary, "memory", redis, None, false, &off_env)?,
        Service::start(binary, "memory", redis, None, false, &off_env)?,
    ];
    for service in &services {
        for n in 1..=10 {
            let _ = get(service.port, &format!("/users/{}", uuid(n)))?;
        }
    }
    let mut out = String::new();
    for connections in CONNECTIONS {
        let (mut cost, mut null) = (Vec::new(), Vec::new());
        let mut rps = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            let mut this = [0.0; 3];
            for step in 0..3 {
                let which = (round + step) % 3;
                let run = wrk(services[which].port, hit, connections, seconds)?;
                if run.errors > 0 {
                    bail!("requests failed while measuring what metrics cost");
                }
                this[which] = run.rps;
                rps[which].push(run.rps);
            }
            if this[1] > 0.0 {
                cost.push(this[0] / this[1]);
                null.push(this[2] / this[1]);
            }
        }
        let (cost, null) = (median(cost), median(null));
        let percent = |r: f64| 100.0 * (r - 1.0);
        let line = format!(
            "{METRICS_COST_CASE}, c={connections}: {:.0} req/s with metrics, {:.0} without; cost {:+.1} % ({:+.1} to {:+.1}); the same comparison of two services without metrics: {:+.1} % ({:+.1} to {:+.1}); medians of {rounds} rounds; bound -3 %",
            median(rps[0].clone()).0,
            median(rps[1].clone()).0,
            percent(cost.0),
            percent(cost.1),
            percent(cost.2),
            percent(null.0),
            percent(null.1),
            percent(null.2),
        );
        println!("  {line}");
        let _ = writeln!(out, "\n{line}");
    }
    Ok(out)
}

fn report(
    results: &[CaseResult],
    dir: &Path,
    runs: usize,
    seconds: u32,
    quick: bool,
) -> Result<()> {
    let mut json = String::from("[\n");
    let mut table = format!(
        "{} run(s) of {seconds} s per case, each after a run of the ceiling (GET /health/live); {}; median (min to max)\n\n",
        runs,
        settings_note()
    );
    table.push_str("| case | conns | req/s | % of ceiling | p50 ms | p99 ms | p99.9 ms | errors | peak RSS MB |\n");
    table.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (index, result) in results.iter().enumerate() {
        let rps = median(result.runs.iter().map(|(r, _)| r.rps).collect());
        let ratio = median(
            result
                .runs
                .iter()
                .map(|(r, c)| {
                    if c.rps > 0.0 {
                        100.0 * r.rps / c.rps
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        let ceiling = median(result.runs.iter().map(|(_, c)| c.rps).collect());
        let p50 = median(result.runs.iter().map(|(r, _)| r.p50_ms).collect());
        let p99 = median(result.runs.iter().map(|(r, _)| r.p99_ms).collect());
        let p999 = median(result.runs.iter().map(|(r, _)| r.p999_ms).collect());
        let errors: u64 = result.runs.iter().map(|(r, c)| r.errors + c.errors).sum();
        let _ = writeln!(
            table,
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.0} % ({:.0}–{:.0}) | {:.2} | {:.2} | {:.2} | {} | {:.1} |",
            result.name,
            result.connections,
            rps.0,
            rps.1,
            rps.2,
            ratio.0,
            ratio.1,
            ratio.2,
            p50.0,
            p99.0,
            p999.0,
            errors,
            result.peak_rss_mb
        );
        let _ = writeln!(
            json,
            "  {{\"case\": \"{}\", \"connections\": {}, \"rps\": {:.1}, \"rps_min\": {:.1}, \"rps_max\": {:.1}, \"ceiling_rps\": {:.1}, \"ratio_to_ceiling\": {:.4}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"errors\": {}, \"peak_rss_mb\": {:.1}, \"runs\": {}, \"seconds\": {}, \"quick\": {}}}{}",
            result.name,
            result.connections,
            rps.0,
            rps.1,
            rps.2,
            ceiling.0,
            ratio.0 / 100.0,
            p50.0,
            p99.0,
            p999.0,
            errors,
            result.peak_rss_mb,
            runs,
            seconds,
            quick,
            if index + 1 == results.len() { "" } else { "," }
        );
    }
    json.push(']');
    table.push_str(&service_cpu_table(results));
    fs::write(dir.join("results.json"), json)?;
    fs::write(dir.join("results.md"), &table)?;
    println!(
        "\n{table}\nwritten to {}",
        dir.join("results.json").display()
    );
    // The chart is for people; a run that cannot draw it still reports.
    match chart_of(&dir.join("results.json")) {
        Ok(png) => println!("chart: {}", png.display()),
        Err(error) => println!("chart not drawn: {error:#}"),
    }
    let failed: u64 = results
        .iter()
        .flat_map(|r| r.runs.iter())
        .map(|(r, c)| r.errors + c.errors)
        .sum();
    if failed > 0 {
        bail!("{failed} requests failed during the bench");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_a_stat_line_is_user_plus_system_time_whatever_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let line =
            "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 125 0 0 20 0 3 0";
        assert_eq!(stat_cpu_us(line), Some(3_750_000.0));
        assert_eq!(stat_cpu_us("4242 (cut"), None);
    }

    #[test]
    fn cpu_of_this_process_is_read_and_grows_with_work() {
        let before = process_cpu_us(std::process::id()).expect("this process's /proc stat");
        let started = Instant::now();
        let mut x = 0_u64;
        while started.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = process_cpu_us(std::process::id()).expect("this process's /proc stat");
        assert!(after > before, "{before} -> {after}");
    }
}
