//! The integration harness: a real Redis in a container, and the whole
//! service started on port 0.
//!
//! - [`TestRedis`]: a password-protected Redis container, removed on drop.
//!   The image is the official `redis:7-alpine` when present, else
//!   `cachemanager/redis:local` (`cargo xtask test-images` makes it, with the
//!   PostgreSQL and HAProxy images). Without Docker or an image the suite
//!   fails with one line that says how to fix it.
//! - [`spawn_app`]: the service on a free port, over the backend asked for.
//!
//! Each test starts its own container: tests share no connection and no keys.

pub mod balancer;
pub mod cluster;
mod postgres;
pub mod proxy;

pub use balancer::TestBalancer;
pub use cluster::TestCluster;
pub use postgres::{PID_LABEL, TestPostgres};

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use adapters::Secret;
use adapters::backend::{RedisBackend, RedisConfig};
use app::{Application, Settings};
use ports::SharedBackend;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The official image, used when present.
pub const OFFICIAL_IMAGE: (&str, &str) = ("redis", "7-alpine");
/// The image `cargo xtask redis-image` builds from Debian's redis-server.
pub const LOCAL_IMAGE: (&str, &str) = ("cachemanager/redis", "local");
/// Overrides the choice: `name:tag`.
pub const IMAGE_VARIABLE: &str = "CACHEMANAGER_TEST_REDIS_IMAGE";

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Redis image to run, chosen once per test binary.
///
/// # Panics
/// With one line saying how to fix it, when Docker is unreachable or no image
/// exists: the suite is never skipped silently.
pub fn redis_image() -> (String, String) {
    static CHOICE: OnceLock<Result<(String, String), String>> = OnceLock::new();
    let choice = CHOICE.get_or_init(|| {
        let docker_up = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !docker_up {
            return Err("Docker is not reachable: the integration suite needs a running Docker daemon \
                        (start it, or run `cargo test --workspace --exclude tests` for unit tests only)"
                .into());
        }
        if let Ok(image) = std::env::var(IMAGE_VARIABLE) {
            let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
            return Ok((name.to_owned(), tag.to_owned()));
        }
        for (name, tag) in [OFFICIAL_IMAGE, LOCAL_IMAGE] {
            if image_exists(&format!("{name}:{tag}")) {
                return Ok((name.to_owned(), tag.to_owned()));
            }
        }
        Err("no Redis image: run `cargo xtask test-images` (every image the suite runs: \
             redis:7-alpine, or cachemanager/redis:local built from Debian's redis-server; \
             PostgreSQL and HAProxy the same way) and run the suite again"
            .into())
    });
    match choice {
        Ok(image) => image.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// A password unique to one container.
fn fresh_password() -> String {
    format!("test-pw-{}", uuid::Uuid::new_v4().simple())
}

/// Runs `start` on a thread of its own, in a runtime of its own, and keeps
/// what it must hold (containers) for the life of the process: each
/// `#[tokio::test]` has its own runtime, and a container must not outlive the
/// runtime it was made in. Returns what `start` made for the tests, or why
/// it failed (`what` names it).
pub(crate) fn hold_for_process<T, H, F, Fut>(what: &str, start: F) -> Result<T, String>
where
    T: Send + 'static,
    H: 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(T, H), String>>,
{
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = sender.send(Err(format!("no runtime: {error}")));
                return;
            }
        };
        runtime.block_on(async move {
            match start().await {
                Ok((made, held)) => {
                    let _ = sender.send(Ok(made));
                    // Held until the process ends.
                    std::future::pending::<()>().await;
                    drop(held);
                }
                Err(error) => {
                    let _ = sender.send(Err(error));
                }
            }
        });
    });
    receiver
        .recv()
        .map_err(|_| format!("the thread holding {what} died"))?
}

/// Polls `condition` every `every` until it holds, and returns how long that
/// took; fails the test, naming `what`, when it has not held within `within`.
///
/// # Panics
/// When `condition` does not hold in time.
pub async fn eventually<F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut condition: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(every).await;
    }
}

/// A Redis backend for `config` (one server or a cluster), connected.
///
/// # Panics
/// When it cannot connect.
pub async fn connected_backend(config: &RedisConfig) -> RedisBackend {
    match RedisBackend::connect(config).await {
        Ok(backend) => backend,
        Err(error) => panic!("cannot connect to the test Redis: {error}"),
    }
}

/// A near cache over `inner` tracking `prefixes` with invalidations from the
/// Redis (or cluster) `tracking` describes; returned once tracking is armed
/// (on every node of a cluster).
///
/// # Panics
/// When the settings are refused or tracking is not armed within 5 s.
pub async fn armed_near_cache(
    inner: SharedBackend,
    tracking: &RedisConfig,
    prefixes: &[String],
    config: adapters::backend::NearConfig,
) -> adapters::backend::NearCache {
    let near = adapters::backend::NearCache::new(
        inner,
        tracking,
        prefixes,
        config,
        adapters::backend::StatusSignal::new(),
    )
    .unwrap_or_else(|e| panic!("near cache refused: {e}"));
    until_armed(&near).await;
    near
}

/// Waits (at most 5 s) until `near` tracks its keys on every node.
pub async fn until_armed(near: &adapters::backend::NearCache) {
    let armed = || {
        let near = near.clone();
        async move { near.tracking() }
    };
    eventually(
        "near cache tracking armed",
        Duration::from_secs(5),
        Duration::from_millis(5),
        armed,
    )
    .await;
}

/// A free TCP port on the host (for a container that must keep its address
/// across a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A password-protected Redis in a container, removed when dropped.
pub struct TestRedis {
    /// The container, to stop, start, pause or inspect it.
    pub container: ContainerAsync<GenericImage>,
    /// The host port mapped to 6379.
    pub port: u16,
    /// The `requirepass` password.
    pub password: String,
}

impl TestRedis {
    /// A Redis with a fresh password on a random host port.
    pub async fn start() -> Self {
        Self::start_with(None, &[]).await
    }

    /// A Redis with a fresh password; `host_port` fixes the host port (so a
    /// stopped and restarted container keeps its address); `extra` are more
    /// `redis-server` arguments.
    pub async fn start_with(host_port: Option<u16>, extra: &[&str]) -> Self {
        Self::start_custom(host_port, extra, None).await
    }

    /// Like [`TestRedis::start_with`], with a host folder bind-mounted
    /// read-only into the container (`(host, container)`), e.g. TLS files.
    pub async fn start_custom(
        host_port: Option<u16>,
        extra: &[&str],
        mount: Option<(&std::path::Path, &str)>,
    ) -> Self {
        let (name, tag) = redis_image();
        let password = fresh_password();
        let mut cmd: Vec<String> = [
            "redis-server",
            "--requirepass",
            &password,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        cmd.extend(extra.iter().map(ToString::to_string));
        let image = GenericImage::new(name, tag)
            .with_exposed_port(ContainerPort::Tcp(6379))
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"));
        let mut request = image
            .with_cmd(cmd)
            .with_startup_timeout(Duration::from_secs(60));
        if let Some(port) = host_port {
            request = request.with_mapped_port(port, ContainerPort::Tcp(6379));
        }
        if let Some((host, inside)) = mount {
            let mount = testcontainers::core::Mount::bind_mount(host.display().to_string(), inside)
                .with_access_mode(testcontainers::core::AccessMode::ReadOnly);
            request = request.with_mount(mount);
        }
        let container = match request.start().await {
            Ok(container) => container,
            Err(error) => panic!("cannot start the Redis container: {error}"),
        };
        let port = match container.get_host_port_ipv4(6379).await {
            Ok(port) => port,
            Err(error) => panic!("the Redis container has no mapped port: {error}"),
        };
        Self {
            container,
            port,
            password,
        }
    }

    /// `redis://127.0.0.1:{port}`, without the password.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Backend settings with the right password.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            url: self.url(),
            password: Some(Secret::new(self.password.clone())),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            // Generous: debug builds and busy CI machines; tests that need a
            // tight bound set their own.
            operation_timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        }
    }

    /// A connected Redis backend.
    pub async fn backend(&self) -> RedisBackend {
        connected_backend(&self.config()).await
    }

    /// A connected Redis backend whose operations are cut at `op_timeout`.
    pub async fn shared_backend(&self, op_timeout: Duration) -> SharedBackend {
        Arc::new(
            connected_backend(&RedisConfig {
                operation_timeout: op_timeout,
                ..self.config()
            })
            .await,
        )
    }

    /// `127.0.0.1:{port}`, for a proxy in front of it.
    pub fn socket_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Redis's `keyspace_hits` counter: how many reads found their key.
    pub async fn keyspace_hits(&self) -> u64 {
        let mut raw = self.raw().await;
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut raw)
            .await
            .expect("INFO stats");
        info.lines()
            .find_map(|line| line.strip_prefix("keyspace_hits:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("keyspace_hits in INFO stats")
    }

    /// A raw connection with the redis crate, to read what the service wrote.
    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let url = format!("redis://:{}@127.0.0.1:{}", self.password, self.port);
        let client = redis::Client::open(url).expect("a valid test URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("a raw connection to the test Redis")
    }
}

/// Every log line, at every level, captured in memory for assertions.
///
/// Use it with a current-thread runtime (`#[tokio::test(flavor =
/// "current_thread")]`): the subscriber is the thread's, so every task of the
/// service must run on that thread for its logs to be seen.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing on this thread, at TRACE level, until the guard drops.
    pub fn start(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Installs a subscriber when `TEST_LOG` is set; silent otherwise.
pub fn init_test_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
                .with_test_writer()
                .try_init();
        }
    });
}

/// The running service.
pub struct TestApp {
    /// `http://127.0.0.1:{port}`.
    pub address: String,
    /// A client for it.
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The SQLite file made for it, removed on drop.
    _database: Option<SqliteFile>,
}

/// A fresh SQLite database path in the temp dir; the file (with its `-wal`
/// and `-shm`) is removed on drop.
pub struct SqliteFile(pub std::path::PathBuf);

impl SqliteFile {
    /// A path no other test uses.
    pub fn new() -> Self {
        Self(
            std::env::temp_dir()
                .join("cachemanager-tests")
                .join(format!("{}.db", uuid::Uuid::new_v4().simple())),
        )
    }

    /// `sqlite://{path}`.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Default for SqliteFile {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.as_os_str().to_owned();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl TestApp {
    /// `GET {path}`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the service answers")
    }

    /// `POST {path}` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .expect("the service answers")
    }

    /// Polls `/health` until it answers `status` (within 15 s), sending a user
    /// lookup between polls so the cache sees traffic. Returns how long it took.
    ///
    /// # Panics
    /// When `/health` does not reach `status` in time.
    pub async fn wait_for_health(&self, status: u16) -> Duration {
        let started = std::time::Instant::now();
        loop {
            let _ = self
                .get("/users/550e8400-e29b-41d4-a716-446655440001")
                .await;
            if self.get("/health").await.status().as_u16() == status {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "/health did not answer {status} within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of a service served elsewhere (e.g. through a load
    /// balancer) at `address` (`http://host:port`).
    pub fn at(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
            stop: None,
            server: None,
            _database: None,
        }
    }

    /// Returns once every read-through fill the service accepted so far has
    /// been written to Redis or dropped (fills are written behind the
    /// answer: `cachemanager_deferred_fills_pending` falls to 0). At once
    /// where fills are not deferred (the metric is absent).
    pub async fn fills_settled(&self) {
        eventually(
            "the fills written or dropped",
            Duration::from_secs(5),
            Duration::from_millis(2),
            || async {
                let text = self.get("/metrics").await.text().await.unwrap_or_default();
                let pending = text.lines().find_map(|line| {
                    line.strip_prefix("cachemanager_deferred_fills_pending ")
                        .and_then(|value| value.trim().parse::<f64>().ok())
                });
                pending.is_none_or(|n| n < 0.5)
            },
        )
        .await;
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The settings these variables give (as if they were the environment), or
/// a panic naming what was rejected.
pub fn settings(env: &HashMap<String, String>) -> Settings {
    match Settings::load(None, env) {
        Ok(settings) => settings,
        Err(error) => panic!("test settings rejected: {error}"),
    }
}

/// Starts the service on a free port with these settings variables (on top of
/// `CACHEMANAGER__SERVER__PORT=0`), e.g. `[("CACHEMANAGER__CACHE__BACKEND", "redis")]`.
/// Unless the variables name a store, it gets a fresh SQLite file of its own.
pub async fn spawn_app(vars: &[(&str, &str)]) -> TestApp {
    init_test_logging();
    let mut env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.entry("CACHEMANAGER__SERVER__PORT".into())
        .or_insert_with(|| "0".into());
    let mut database = None;
    if !env.contains_key("CACHEMANAGER__STORE__URL") && !env.contains_key("DATABASE_URL") {
        let file = SqliteFile::new();
        env.insert("CACHEMANAGER__STORE__URL".into(), file.url());
        database = Some(file);
    }
    let settings = settings(&env);
    let application = match Application::build(settings).await {
        Ok(application) => application,
        Err(error) => panic!("the service did not start: {error}"),
    };
    let address = format!("http://{}", application.address());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client"),
        stop: Some(stop),
        server: Some(server),
        _database: database,
    }
}

/// [`spawn_app`] over the Redis Cluster `cluster` (its nodes as seeds).
pub async fn spawn_app_on_cluster(cluster: &TestCluster, extra: &[(&str, &str)]) -> TestApp {
    let nodes = cluster.config().nodes.join(",");
    let mut vars = vec![
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("CACHEMANAGER__REDIS__MODE", "cluster"),
        ("CACHEMANAGER__REDIS__NODES", nodes.as_str()),
        ("REDIS_PASSWORD", cluster.password.as_str()),
    ];
    vars.extend_from_slice(extra);
    spawn_app(&vars).await
}

/// [`spawn_app`] over the Redis of `redis`.
pub async fn spawn_app_on_redis(redis: &TestRedis, extra: &[(&str, &str)]) -> TestApp {
    let url = redis.url();
    let mut vars = vec![
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", redis.password.as_str()),
    ];
    vars.extend_from_slice(extra);
    spawn_app(&vars).await
}
