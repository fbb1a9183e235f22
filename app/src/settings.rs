//! Layered, validated settings: built-in defaults, then a TOML file, then the
//! seed's environment variables, then `CACHEMANAGER__*` variables.
//!
//! Settings deserialize (serde) straight into the adapters' own config types
//! ([`RedisConfig`], [`MemoryConfig`], [`BreakerConfig`], [`MonitorConfig`]):
//! each default is written once, in that type's `Default`, and
//! `config/default.toml` only documents them (a test holds it to them). An
//! unknown key, in the file or in a `CACHEMANAGER__` variable, is refused: a
//! typo must not be silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adapters::backend::{BreakerConfig, MemoryConfig, NearConfig, RedisConfig, RedisMode};
use adapters::health::MonitorConfig;
use adapters::http::HttpConfig;
use adapters::users::StoreConfig;
use adapters::{Secret, serde_ms};
use config::{Config, Environment, File, FileFormat};
use ports::{
    CachePolicy, DEFAULT_DECODE_MEMO_ENTRIES, DEFAULT_LOAD_TIMEOUT, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_TTL_JITTER, DEFAULT_WRITE_FENCE, Ttl,
};
use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// The default settings file, read when present.
pub const DEFAULT_FILE: &str = "config/default.toml";

/// The longest TTL Redis accepts: `SET ... PX` takes milliseconds that, added
/// to the server's clock, must fit a signed 64-bit integer. Kept well inside
/// it (the clock until the year 2286).
pub const MAX_TTL_SECS: u64 = i64::MAX as u64 / 1000 - 10_000_000_000;

/// A setting that cannot be used. Its `Display` is one line naming the key
/// and what is accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// A key holds a value outside what it accepts, or is not a key at all.
    #[error("invalid setting `{key}`: {problem}")]
    Invalid {
        /// The dotted key, e.g. `cache.backend`.
        key: String,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The file could not be read or parsed as settings.
    #[error("cannot read settings: {0}")]
    Source(String),
}

fn invalid(key: &str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// The config crate's error, as one line naming the key when it names one
/// ("... for key `cache.backend`"). An unknown key inside a section is named
/// in full (`cache.tll`), with the keys the section accepts.
fn from_config(error: &config::ConfigError, env: &HashMap<String, String>) -> SettingsError {
    let text = one_line(&scrub(&error.to_string(), env));
    let Some((problem, rest)) = text.rsplit_once(" for key `") else {
        return match text.strip_prefix("unknown field `") {
            // A top-level section that does not exist.
            Some(rest) => {
                let (name, accepted) = rest.split_once('`').unwrap_or((rest, ""));
                invalid(name, format!("not a setting{accepted}"))
            }
            None => SettingsError::Source(text),
        };
    };
    let section = rest.split('`').next().unwrap_or(rest);
    // The key named is the section; the field it did not know is in the text.
    if let Some(field) = problem
        .strip_prefix("unknown field `")
        .and_then(|f| f.split('`').next())
    {
        let accepted = problem.split_once(", expected").map_or("", |(_, a)| a);
        return invalid(
            &format!("{section}.{field}"),
            format!("not a setting (expected{accepted})"),
        );
    }
    invalid(section, problem.to_owned())
}

/// Which cache backend serves the typed caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In-process (moka): no server needed. The default without `REDIS_URL`.
    Memory,
    /// Redis: shared between instances.
    Redis,
    /// No caching at all.
    Noop,
}

impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            "noop" => Ok(Self::Noop),
            other => Err(serde::de::Error::custom(format!(
                "'{other}' is not accepted (memory, redis, noop)"
            ))),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(serde::de::Error::custom(format!(
                "'{other}' is not accepted (text, json)"
            ))),
        }
    }
}

fn host<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    match text.as_str() {
        "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
        other => other.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "'{other}' is not accepted (an IP address such as 127.0.0.1 or 0.0.0.0, or localhost)"
            ))
        }),
    }
}

fn port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(deserializer)?;
    u16::try_from(n)
        .map_err(|_| serde::de::Error::custom(format!("{n} is not accepted (0 to 65535)")))
}

fn ttl_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let n = i64::deserialize(deserializer)?;
    match u64::try_from(n) {
        Ok(secs) if secs <= MAX_TTL_SECS => Ok(secs),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not accepted (seconds from 0 to {MAX_TTL_SECS}, the most Redis accepts; 0 means no expiry)"
        ))),
    }
}

fn fraction<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "{value} is not accepted (a fraction from 0 to 1; 0.1 is 10 %)"
        )))
    }
}

fn optional_ttl_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    ttl_secs(deserializer).map(Some)
}

fn ttl_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, u64>, D::Error> {
    #[derive(Deserialize)]
    struct Secs(#[serde(deserialize_with = "ttl_secs")] u64);
    let map = BTreeMap::<String, Secs>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(k, Secs(v))| (k, v)).collect())
}

/// Where the HTTP server listens, and how it treats requests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// The address to bind.
    #[serde(deserialize_with = "host")]
    pub host: IpAddr,
    /// The port (0 picks a free one).
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(rename = "shutdown_grace_ms", deserialize_with = "serde_ms::positive")]
    pub shutdown_grace: Duration,
    /// On shutdown, how long to keep serving with `/health/ready` at 503
    /// before closing the listener (0: close at once).
    #[serde(
        rename = "shutdown_delay_ms",
        deserialize_with = "serde_ms::non_negative"
    )]
    pub shutdown_delay: Duration,
    /// The longest one request may take (503 after).
    #[serde(rename = "request_timeout_ms", deserialize_with = "serde_ms::positive")]
    pub request_timeout: Duration,
    /// The largest request body (413 above).
    #[serde(deserialize_with = "serde_ms::positive_count")]
    pub max_body_bytes: usize,
    /// The `Cache-Control` header sent with a user.
    pub cache_control: String,
    /// Origins browsers may call the API from (CORS), comma-separated;
    /// empty: none.
    pub cors_origins: String,
    /// Response bodies of this many bytes or more are compressed (gzip or
    /// br, as the client accepts); 0: never.
    pub compress_from_bytes: usize,
    /// Whether tokio's scheduler runs the task a worker last woke before any
    /// other (its LIFO slot). Off by default: with it, the Redis connection's
    /// writer runs right after each request that hands it a command and
    /// sends commands one at a time instead of pipelining them
    /// (docs/PERFORMANCE.md, "The scheduler's LIFO slot"). Takes effect
    /// only in a build with `--cfg tokio_unstable` (the workspace's
    /// `.cargo/config.toml`); other builds keep tokio's default and say so.
    pub lifo_slot: bool,
    /// The runtime's worker threads (0: one per core the process may use,
    /// tokio's default, which honours a container's CPU quota).
    pub worker_threads: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        let http = HttpConfig::default();
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8000,
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            request_timeout: http.request_timeout,
            max_body_bytes: http.max_body_bytes,
            cache_control: http.cache_control,
            cors_origins: String::new(),
            compress_from_bytes: http.compress_from_bytes,
            lifo_slot: false,
            worker_threads: 0,
        }
    }
}

/// The most worker threads `server.worker_threads` accepts: far above any
/// machine's cores, far below what the system would refuse to start.
const MAX_WORKER_THREADS: usize = 1024;

/// The cache layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// The backend; unset: Redis when `REDIS_URL` is set, else memory
    /// (resolved by [`Settings::load`]).
    backend: Option<BackendKind>,
    /// Overrides every cache's own TTL (seconds, 0 = no expiry).
    #[serde(deserialize_with = "optional_ttl_secs")]
    default_ttl_secs: Option<u64>,
    /// Per-namespace TTLs, in seconds.
    #[serde(deserialize_with = "ttl_map")]
    ttl_secs: BTreeMap<String, u64>,
    /// The bound on every cache operation.
    #[serde(
        rename = "operation_timeout_ms",
        deserialize_with = "serde_ms::positive"
    )]
    pub operation_timeout: Duration,
    /// Encoded values above this are refused.
    #[serde(deserialize_with = "serde_ms::positive_count")]
    max_value_bytes: usize,
    /// Each write's TTL is shortened by a random amount up to this fraction
    /// of it (0 to 1), so keys written together do not expire together.
    #[serde(deserialize_with = "fraction")]
    ttl_jitter: f64,
    /// Per-namespace negative TTLs, in seconds: how long a loader's "no such
    /// entry" is remembered in this process (0: never).
    #[serde(deserialize_with = "ttl_map")]
    negative_ttl_secs: BTreeMap<String, u64>,
    /// Whether concurrent misses of one key share one load (turn off only to
    /// measure what it saves).
    single_flight: bool,
    /// The bound on one read-through load.
    #[serde(rename = "load_timeout_ms", deserialize_with = "serde_ms::positive")]
    load_timeout: Duration,
    /// How long a written user's record stays fenced: reads load it from the
    /// store meanwhile, and a load that started before the write can never
    /// put the old record back. Longer than a load may take.
    #[serde(rename = "write_fence_ms", deserialize_with = "serde_ms::positive")]
    write_fence: Duration,
    /// How many decoded user records are remembered beside their bytes, so
    /// a hit on the same bytes skips the decode (0: none).
    decode_memo_entries: usize,
    /// Over Redis, how long read-through fills may wait to be written
    /// together, behind the answer (0: each fill written on its request's
    /// path). See `adapters::backend::DeferredFills`.
    #[serde(rename = "fill_linger_ms", deserialize_with = "serde_ms::non_negative")]
    pub fill_linger: Duration,
    /// On a Redis Cluster (`redis.mode = cluster`), the caches whose keys
    /// are ours alone (the user record, never the seed's two) group them in
    /// this many hash-tag buckets (`user:record:{<b>}:<uuid>`), so a lookup of
    /// 100 users is at most this many `MGET`s instead of one per user (0 or
    /// 1: plain keys). Every instance on one cluster must use the same
    /// number. Not used over one Redis.
    cluster_key_buckets: u16,
    /// The circuit breaker over Redis.
    pub breaker: BreakerConfig,
    /// The near cache over Redis (off by default).
    pub near: NearConfig,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            backend: None,
            default_ttl_secs: None,
            ttl_secs: BTreeMap::new(),
            operation_timeout: RedisConfig::default().operation_timeout,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            ttl_jitter: DEFAULT_TTL_JITTER,
            negative_ttl_secs: BTreeMap::new(),
            single_flight: true,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            write_fence: DEFAULT_WRITE_FENCE,
            decode_memo_entries: DEFAULT_DECODE_MEMO_ENTRIES,
            fill_linger: DEFAULT_FILL_LINGER,
            cluster_key_buckets: DEFAULT_CLUSTER_KEY_BUCKETS,
            breaker: BreakerConfig::default(),
            near: NearConfig::default(),
        }
    }
}

impl CacheSettings {
    /// The backend that serves the typed caches.
    pub fn backend(&self) -> BackendKind {
        self.backend.unwrap_or(BackendKind::Memory)
    }

    /// TTLs (a global default and per-namespace overrides) and the value limit.
    pub fn policy(&self) -> CachePolicy {
        let mut policy = CachePolicy::new()
            .with_max_value_bytes(self.max_value_bytes)
            .with_ttl_jitter(self.ttl_jitter)
            .with_single_flight(self.single_flight)
            .with_load_timeout(self.load_timeout)
            .with_write_fence(self.write_fence)
            .with_decode_memo_entries(self.decode_memo_entries);
        for (namespace, secs) in &self.negative_ttl_secs {
            policy = policy.with_negative_ttl_override(namespace.clone(), Ttl::from_secs(*secs));
        }
        if let Some(secs) = self.default_ttl_secs {
            policy = policy.with_default_ttl(Ttl::from_secs(secs));
        }
        for (namespace, secs) in &self.ttl_secs {
            policy = policy.with_ttl_override(namespace.clone(), Ttl::from_secs(*secs));
        }
        policy
    }
}

/// How long fills wait to be written together by default: one tick of
/// tokio's timer, during which a burst of misses gathers its fills into one
/// round trip (docs/PERFORMANCE.md, "Fills written behind").
pub const DEFAULT_FILL_LINGER: Duration = Duration::from_millis(1);

/// Hash-tag buckets of the user record's keys on a Redis Cluster: a lookup
/// of 100 users touches about 16 slots (16 `MGET`s) instead of about 100,
/// and the records still spread over 16 slots, enough for the masters of a
/// small cluster to share them (see docs/SCALING.md).
pub const DEFAULT_CLUSTER_KEY_BUCKETS: u16 = 16;

/// Where the users come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersSettings {
    /// A JSON file of users imported into an empty store on first start;
    /// `None` imports the seed's ten sample users.
    pub file: Option<PathBuf>,
    /// A delay added to every store query: what a database round trip would
    /// cost, for benchmarks and demos (0: none).
    #[serde(rename = "latency_ms", deserialize_with = "serde_ms::non_negative")]
    pub latency: Duration,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `app=debug,info`); `RUST_LOG` wins over it.
    pub filter: String,
    /// One line per request at info.
    pub requests: bool,
    /// Whether whole cache keys appear in logs and spans; off, only their
    /// namespace does (keys may carry personal data).
    pub keys: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
            requests: true,
            keys: false,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `GET /metrics`, and the counters and histograms behind it.
    pub enabled: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// The bearer token that opens `/admin/...`; unset, the admin API is
    /// off (every admin path answers 404). A secret: never logged.
    pub token: Option<Secret>,
}

/// The shortest admin token accepted: a guessable token would open the caches.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Every setting, validated.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Cache layer.
    pub cache: CacheSettings,
    /// Redis backend: the adapter's own configuration (its `Debug` hides
    /// the password and any credentials in the URL).
    pub redis: RedisConfig,
    /// Memory backend.
    pub memory: MemoryConfig,
    /// The users store (its `Debug` hides the password).
    pub store: StoreConfig,
    /// What fills an empty store, and a delay for benchmarks.
    pub users: UsersSettings,
    /// Health monitor.
    pub health: MonitorConfig,
    /// Logging.
    pub log: LogSettings,
    /// Metrics.
    pub metrics: MetricsSettings,
    /// The admin API (its `Debug` hides the token).
    pub admin: AdminSettings,
}

/// The seed's variables and the keys they set.
/// (And the ecosystem's `DATABASE_URL`.)
const SEED_VARIABLES: [(&str, &str); 4] = [
    ("REDIS_URL", "REDIS__URL"),
    ("REDIS_PASSWORD", "REDIS__PASSWORD"),
    ("CACHE_DEFAULT_TTL", "CACHE__DEFAULT_TTL_SECS"),
    ("DATABASE_URL", "STORE__URL"),
];

impl Settings {
    /// What the typed caches are built with: [`CacheSettings::policy`],
    /// and on a Redis Cluster the key buckets.
    pub fn cache_policy(&self) -> CachePolicy {
        let policy = self.cache.policy();
        if self.cache.backend() == BackendKind::Redis && self.redis.mode == RedisMode::Cluster {
            policy.with_key_buckets(self.cache.cluster_key_buckets)
        } else {
            policy
        }
    }

    /// Loads the settings: defaults, then `file` (or [`DEFAULT_FILE`] when it
    /// exists), then the seed's `REDIS_URL`, `REDIS_PASSWORD` and
    /// `CACHE_DEFAULT_TTL`, then `CACHEMANAGER__SECTION__KEY` variables.
    /// `env` is the environment (passed in so tests need not mutate the process's).
    ///
    /// # Errors
    /// [`SettingsError`] naming the first bad key.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let mut builder = Config::builder();
        builder = match file {
            Some(path) => {
                builder.add_source(File::from(path).format(FileFormat::Toml).required(true))
            }
            None => builder.add_source(File::new(DEFAULT_FILE, FileFormat::Toml).required(false)),
        };
        let seed: config::Map<String, String> = SEED_VARIABLES
            .iter()
            .filter_map(|(var, key)| {
                env.get(*var)
                    .map(|value| ((*key).to_owned(), value.clone()))
            })
            .collect();
        let ours: config::Map<String, String> = env
            .iter()
            .filter(|(key, _)| key.starts_with("CACHEMANAGER__"))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let mut settings: Settings = builder
            .add_source(Environment::default().separator("__").source(Some(seed)))
            .add_source(
                Environment::with_prefix("CACHEMANAGER")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(ours)),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| from_config(&e, env))?;
        // As in the seed's compose and k8s files: a REDIS_URL alone means Redis.
        if settings.cache.backend.is_none() && env.contains_key("REDIS_URL") {
            settings.cache.backend = Some(BackendKind::Redis);
        }
        settings.validate(env)?;
        Ok(settings)
    }

    /// What the HTTP adapter needs.
    pub fn http(&self) -> HttpConfig {
        HttpConfig {
            max_body_bytes: self.server.max_body_bytes,
            request_timeout: self.server.request_timeout,
            log_requests: self.log.requests,
            cache_control: self.server.cache_control.clone(),
            cors_origins: self
                .server
                .cors_origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
            compress_from_bytes: self.server.compress_from_bytes,
        }
    }

    /// The checks that span keys or touch the file system; also fills what
    /// one key sets for several adapters.
    fn validate(&mut self, env: &HashMap<String, String>) -> Result<(), SettingsError> {
        // An empty variable means "not set".
        let redis = &mut self.redis;
        redis.username = redis.username.take().filter(|u| !u.is_empty());
        redis.password = redis.password.take().filter(|p| !p.expose().is_empty());
        redis.ca_file = redis.ca_file.take().filter(|p| !p.as_os_str().is_empty());
        self.users.file = self.users.file.take().filter(|p| !p.as_os_str().is_empty());

        adapters::backend::check_redis_url(&redis.url).map_err(|e| {
            invalid("redis.url", format!("{e} (accepted: redis://[user[:password]@]host[:port][/db], rediss://..., unix://...)"))
        })?;
        if redis.url.contains("#insecure") {
            return Err(invalid(
                "redis.url",
                "'#insecure' is not accepted: it turns off certificate checks; trust a private CA with redis.ca_file instead",
            ));
        }
        if let Some(ca_file) = &redis.ca_file {
            if !redis.url.starts_with("rediss://") {
                return Err(invalid(
                    "redis.ca_file",
                    "is only used with a rediss:// URL; set redis.url to rediss://... or remove it",
                ));
            }
            readable("redis.ca_file", ca_file)?;
        }
        if redis.mode == RedisMode::Cluster {
            if redis.nodes.is_empty() {
                return Err(invalid(
                    "redis.nodes",
                    "cluster mode needs seed nodes (host:port, comma-separated)",
                ));
            }
            for node in &redis.nodes {
                adapters::backend::check_redis_node(node).map_err(|e| {
                    invalid(
                        "redis.nodes",
                        format!("{e} (accepted: host:port or redis://host:port, comma-separated)"),
                    )
                })?;
            }
            if redis.db.is_some_and(|db| db != 0) {
                return Err(invalid("redis.db", "Redis Cluster has only database 0"));
            }
        }
        if let Some(db) = redis.db
            && db < 0
        {
            return Err(invalid(
                "redis.db",
                format!("{db} is not accepted (a database index >= 0)"),
            ));
        }
        // One bound for every cache operation, the Redis backend's and the probe's.
        redis.operation_timeout = self.cache.operation_timeout;
        self.cache.breaker.probe_timeout = self.cache.operation_timeout;

        if let Some(file) = &self.users.file {
            readable("users.file", file)?;
        }
        self.store.password = self
            .store
            .password
            .take()
            .filter(|p| !p.expose().is_empty());
        self.store.kind().map_err(|e| {
            invalid(
                "store.url",
                format!("{e} (accepted: sqlite://PATH, postgres://user@host[:port]/db)"),
            )
        })?;
        self.admin.token = self.admin.token.take().filter(|t| !t.expose().is_empty());
        if let Some(token) = &self.admin.token
            && (token.expose().len() < MIN_ADMIN_TOKEN
                || !token.expose().bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "admin.token",
                format!(
                    "not accepted: at least {MIN_ADMIN_TOKEN} visible ASCII characters (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        if self.server.cache_control.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "server.cache_control",
                "control characters cannot be sent in a header",
            ));
        }
        for origin in self.server.cors_origins.split(',').map(str::trim) {
            if !origin.is_empty() && !is_origin(origin) {
                return Err(invalid(
                    "server.cors_origins",
                    format!(
                        "'{origin}' is not an origin (https://host[:port] as a browser sends it: \
                         no path, not even a trailing /; comma-separated)"
                    ),
                ));
            }
        }
        if self.cache.near.enabled && self.cache.backend() != BackendKind::Redis {
            return Err(invalid(
                "cache.near.enabled",
                "needs cache.backend = \"redis\" (the memory backend is in the process already)",
            ));
        }
        if self.server.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "server.worker_threads",
                format!(
                    "{} is not accepted (accepted: 0 for one per core, or 1 to {MAX_WORKER_THREADS})",
                    self.server.worker_threads
                ),
            ));
        }
        if self.cache.fill_linger >= self.cache.write_fence {
            return Err(invalid(
                "cache.fill_linger_ms",
                format!(
                    "{} ms is not accepted: not below cache.write_fence_ms ({} ms), every fill would pass its deadline before it is written",
                    self.cache.fill_linger.as_millis(),
                    self.cache.write_fence.as_millis()
                ),
            ));
        }
        if self.health.slow_ping > self.health.ping_timeout {
            return Err(invalid(
                "health.slow_ms",
                format!(
                    "{} ms is not accepted: above health.timeout_ms ({} ms), a ping could never be slow",
                    self.health.slow_ping.as_millis(),
                    self.health.ping_timeout.as_millis()
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter).map_err(|e| {
            invalid(
                "log.filter",
                format!(
                    "'{}' is not accepted ({e}; e.g. info, or app=debug,info)",
                    self.log.filter
                ),
            )
        })?;
        if let Some(rust_log) = env.get("RUST_LOG") {
            tracing_subscriber::EnvFilter::try_new(rust_log)
                .map_err(|e| invalid("RUST_LOG", format!("'{rust_log}' is not accepted ({e})")))?;
        }
        Ok(())
    }
}

fn readable(key: &str, path: &Path) -> Result<(), SettingsError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Keeps a secret out of an error message (the config crate may quote values).
fn scrub(message: &str, env: &HashMap<String, String>) -> String {
    let mut text = message.to_owned();
    for key in [
        "REDIS_PASSWORD",
        "CACHEMANAGER__REDIS__PASSWORD",
        "CACHEMANAGER__STORE__PASSWORD",
    ] {
        if let Some(secret) = env.get(key).filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

/// An error message on one line (a TOML parse error spans several).
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `text` is a web origin as a browser sends it in `Origin`:
/// `http://` or `https://`, then a host and perhaps a port, and nothing
/// after them (a path, even `/`, would never match a request's `Origin`).
fn is_origin(text: &str) -> bool {
    let authority = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    authority.is_some_and(|authority| {
        !authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/?#@".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use adapters::Secret;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        // An explicit empty file, so a config/default.toml in the cwd cannot interfere.
        let path = std::env::temp_dir().join(format!("cm-empty-{}.toml", std::process::id()));
        std::fs::write(&path, "").unwrap();
        Settings::load(Some(&path), &env(pairs))
    }

    fn key_of(error: SettingsError) -> String {
        match error {
            SettingsError::Invalid { key, .. } => key,
            SettingsError::Source(text) => panic!("expected an invalid key, got: {text}"),
        }
    }

    #[test]
    fn defaults_serve_the_memory_backend_on_localhost_8000() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.server.host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(settings.server.port, 8000);
        assert_eq!(settings.cache.backend(), BackendKind::Memory);
        assert_eq!(settings.cache.policy(), CachePolicy::new());
        assert_eq!(settings.redis.connect_timeout, Duration::from_secs(2));
        assert_eq!(settings.redis.response_timeout, Duration::from_secs(5));
        assert_eq!(settings.health.ping_timeout, Duration::from_secs(2));
        assert_eq!(settings.health.interval, Duration::from_secs(10));
        assert_eq!(settings.cache.operation_timeout, Duration::from_millis(100));
        assert_eq!(settings.cache.breaker.failure_threshold, 3);
        assert_eq!(settings.cache.policy().max_value_bytes(), 1024 * 1024);
        assert_eq!(settings.server.max_body_bytes, 64 * 1024);
        assert!(settings.redis.password.is_none());
    }

    #[test]
    fn prefixed_variables_set_nested_keys() {
        let settings = load(&[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("CACHEMANAGER__SERVER__PORT", "9000"),
            ("CACHEMANAGER__REDIS__URL", "redis://cache:6380/2"),
            ("CACHEMANAGER__CACHE__OPERATION_TIMEOUT_MS", "40"),
            ("CACHEMANAGER__CACHE__BREAKER__PROBE_INTERVAL_MS", "250"),
            ("CACHEMANAGER__STORE__PING_IDLE_AFTER_MS", "0"),
            ("CACHEMANAGER__SERVER__WORKER_THREADS", "1"),
        ])
        .unwrap();
        assert_eq!(settings.server.worker_threads, 1);
        assert_eq!(settings.store.ping_idle_after, Duration::ZERO);
        assert_eq!(
            settings.cache.breaker.probe_interval,
            Duration::from_millis(250)
        );
        assert_eq!(settings.cache.backend(), BackendKind::Redis);
        assert_eq!(settings.server.port, 9000);
        assert_eq!(settings.redis.url, "redis://cache:6380/2");
        assert_eq!(settings.cache.operation_timeout, Duration::from_millis(40));
    }

    #[test]
    fn the_seeds_variables_are_honoured_and_prefixed_ones_win() {
        let settings = load(&[
            ("REDIS_URL", "redis://seed:6379"),
            ("REDIS_PASSWORD", "dev_redis_password_2024"),
            ("CACHE_DEFAULT_TTL", "300"),
        ])
        .unwrap();
        assert_eq!(settings.redis.url, "redis://seed:6379");
        assert_eq!(
            settings.redis.password.as_ref().map(Secret::expose),
            Some("dev_redis_password_2024")
        );
        assert_eq!(
            settings.cache.policy().resolve_ttl("any", Ttl::DEFAULT),
            Ttl::from_secs(300)
        );

        let settings = load(&[
            ("REDIS_URL", "redis://seed:6379"),
            ("CACHEMANAGER__REDIS__URL", "redis://ours:6379"),
        ])
        .unwrap();
        assert_eq!(settings.redis.url, "redis://ours:6379");
    }

    #[test]
    fn a_file_sets_values_and_the_environment_overrides_it() {
        let path = std::env::temp_dir().join(format!("cm-settings-{}.toml", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(
            file,
            "[server]\nport = 7000\n[cache]\nbackend = \"noop\"\n[cache.ttl_secs]\n\"user:uuid-to-id\" = 60"
        )
        .unwrap();
        let settings =
            Settings::load(Some(&path), &env(&[("CACHEMANAGER__SERVER__PORT", "7001")])).unwrap();
        assert_eq!(settings.server.port, 7001);
        assert_eq!(settings.cache.backend(), BackendKind::Noop);
        assert_eq!(
            settings
                .cache
                .policy()
                .resolve_ttl("user:uuid-to-id", Ttl::DEFAULT),
            Ttl::from_secs(60)
        );
        assert_eq!(
            settings
                .cache
                .policy()
                .resolve_ttl("user:id-to-uuid", Ttl::DEFAULT),
            Ttl::DEFAULT
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_seeds_redis_url_alone_selects_redis_unless_a_backend_is_set() {
        let settings = load(&[("REDIS_URL", "redis://seed:6379")]).unwrap();
        assert_eq!(settings.cache.backend(), BackendKind::Redis);
        let settings = load(&[
            ("REDIS_URL", "redis://seed:6379"),
            ("CACHEMANAGER__CACHE__BACKEND", "memory"),
        ])
        .unwrap();
        assert_eq!(settings.cache.backend(), BackendKind::Memory);
        // Our own variable is explicit configuration of Redis, not a choice of backend.
        let settings = load(&[("CACHEMANAGER__REDIS__URL", "redis://ours:6379")]).unwrap();
        assert_eq!(settings.cache.backend(), BackendKind::Memory);
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let result = Settings::load(Some(Path::new("/nonexistent/cm.toml")), &HashMap::new());
        assert!(matches!(result, Err(SettingsError::Source(_))));
    }

    #[test]
    fn bad_values_name_their_key_and_what_is_accepted() {
        let cases: [(&str, &str, &str); 14] = [
            ("CACHEMANAGER__CACHE__TTL_JITTER", "1.5", "cache.ttl_jitter"),
            (
                "CACHEMANAGER__CACHE__LOAD_TIMEOUT_MS",
                "0",
                "cache.load_timeout_ms",
            ),
            ("CACHEMANAGER__CACHE__BACKEND", "memcached", "cache.backend"),
            ("CACHEMANAGER__SERVER__PORT", "70000", "server.port"),
            ("CACHEMANAGER__SERVER__PORT", "-1", "server.port"),
            ("CACHEMANAGER__REDIS__URL", "http://not-redis", "redis.url"),
            ("CACHE_DEFAULT_TTL", "-5", "cache.default_ttl_secs"),
            ("CACHEMANAGER__SERVER__HOST", "not an ip", "server.host"),
            (
                "CACHEMANAGER__CACHE__OPERATION_TIMEOUT_MS",
                "0",
                "cache.operation_timeout_ms",
            ),
            ("CACHEMANAGER__LOG__FORMAT", "xml", "log.format"),
            (
                "CACHEMANAGER__CACHE__BREAKER__FAILURE_THRESHOLD",
                "0",
                "cache.breaker.failure_threshold",
            ),
            (
                "CACHEMANAGER__SERVER__MAX_BODY_BYTES",
                "-1",
                "server.max_body_bytes",
            ),
            (
                "CACHEMANAGER__CACHE__MAX_VALUE_BYTES",
                "0",
                "cache.max_value_bytes",
            ),
            (
                "CACHEMANAGER__STORE__PING_IDLE_AFTER_MS",
                "-1",
                "store.ping_idle_after_ms",
            ),
        ];
        for (var, value, key) in cases {
            let error = load(&[(var, value)]).unwrap_err();
            let line = error.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains("accepted"), "{line}");
            assert_eq!(key_of(error), key, "{var}={value}");
        }
    }

    #[test]
    fn what_redis_or_the_machine_would_refuse_later_is_refused_at_start() {
        let missing = "/nonexistent/cachemanager-test.pem";
        let cases: [(&[(&str, &str)], &str); 17] = [
            (
                &[("CACHE_DEFAULT_TTL", "10000000000000000")],
                "cache.default_ttl_secs",
            ),
            (
                &[("REDIS_URL", "rediss://cache:6380#insecure")],
                "redis.url",
            ),
            (
                &[
                    ("REDIS_URL", "redis://cache:6379"),
                    ("CACHEMANAGER__REDIS__CA_FILE", "/etc/hostname"),
                ],
                "redis.ca_file",
            ),
            (
                &[
                    ("REDIS_URL", "rediss://cache:6380"),
                    ("CACHEMANAGER__REDIS__CA_FILE", missing),
                ],
                "redis.ca_file",
            ),
            (&[("CACHEMANAGER__USERS__FILE", missing)], "users.file"),
            (
                &[("CACHEMANAGER__LOG__FILTER", "app=notalevel")],
                "log.filter",
            ),
            (
                &[
                    ("CACHEMANAGER__HEALTH__SLOW_MS", "3000"),
                    ("CACHEMANAGER__HEALTH__TIMEOUT_MS", "2000"),
                ],
                "health.slow_ms",
            ),
            (
                &[("CACHEMANAGER__CACHE__FILL_LINGER_MS", "6000")],
                "cache.fill_linger_ms",
            ),
            (
                &[("CACHEMANAGER__SERVER__WORKER_THREADS", "100000")],
                "server.worker_threads",
            ),
            (
                // A browser's Origin never ends in a path, so this would
                // never match one.
                &[(
                    "CACHEMANAGER__SERVER__CORS_ORIGINS",
                    "https://a.example, https://app.example.com/",
                )],
                "server.cors_origins",
            ),
            (&[("CACHEMANAGER__REDIS__MODE", "cluster")], "redis.nodes"),
            (
                &[
                    ("CACHEMANAGER__REDIS__MODE", "cluster"),
                    ("CACHEMANAGER__REDIS__NODES", "node-a:7000,node-b:x"),
                ],
                "redis.nodes",
            ),
            (
                &[
                    ("CACHEMANAGER__REDIS__MODE", "cluster"),
                    ("CACHEMANAGER__REDIS__NODES", "node-a:7000"),
                    ("CACHEMANAGER__REDIS__DB", "1"),
                ],
                "redis.db",
            ),
            (&[("CACHEMANAGER__REDIS__DB", "-1")], "redis.db"),
            (&[("DATABASE_URL", "mysql://db/users")], "store.url"),
            (&[("CACHEMANAGER__ADMIN__TOKEN", "short")], "admin.token"),
            (
                &[("CACHEMANAGER__SERVER__CACHE_CONTROL", "no-cache\tx")],
                "server.cache_control",
            ),
        ];
        for (vars, key) in cases {
            let error = load(vars).unwrap_err();
            let line = error.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(key_of(error), key, "{vars:?}: {line}");
        }
        for origin in [
            "https://app.example.com",
            "http://localhost:3000",
            "https://[::1]:8443",
        ] {
            assert!(is_origin(origin), "{origin}");
        }
        for not in [
            "app.example.com",
            "https://",
            "https://a.example/x",
            "https://u@a.example",
            "https://a b",
        ] {
            assert!(!is_origin(not), "{not}");
        }
        // The largest TTL Redis accepts is accepted.
        let max = MAX_TTL_SECS.to_string();
        assert!(load(&[("CACHE_DEFAULT_TTL", max.as_str())]).is_ok());
        // A linger is judged against the fence it must stay below.
        assert!(
            load(&[
                ("CACHEMANAGER__CACHE__FILL_LINGER_MS", "6000"),
                ("CACHEMANAGER__CACHE__WRITE_FENCE_MS", "7000"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it_wherever_it_comes_from() {
        let error = load(&[("CACHEMANAGER__CACHE__TLL", "5")]).unwrap_err();
        assert_eq!(key_of(error.clone()), "cache.tll", "{error}");
        assert!(
            error.to_string().contains("default_ttl_secs"),
            "names what is accepted: {error}"
        );
        let error = load(&[("CACHEMANAGER__CAHCE__BACKEND", "redis")]).unwrap_err();
        assert_eq!(key_of(error.clone()), "cahce", "{error}");

        let path = std::env::temp_dir().join(format!("cm-typo-{}.toml", std::process::id()));
        std::fs::write(&path, "[redis]\nurll = \"redis://x\"\n").unwrap();
        let error = Settings::load(Some(&path), &HashMap::new()).unwrap_err();
        assert_eq!(key_of(error.clone()), "redis.urll", "{error}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_near_cache_is_set_by_its_variables_and_only_over_redis() {
        let settings = load(&[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("CACHEMANAGER__CACHE__NEAR__ENABLED", "true"),
            ("CACHEMANAGER__CACHE__NEAR__FAIL_SAFE_SECS", "30"),
        ])
        .unwrap();
        assert!(settings.cache.near.enabled);
        assert_eq!(settings.cache.near.fail_safe, Duration::from_secs(30));
        let error = load(&[("CACHEMANAGER__CACHE__NEAR__ENABLED", "true")]).unwrap_err();
        assert_eq!(key_of(error), "cache.near.enabled");
        let error = load(&[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("CACHEMANAGER__CACHE__NEAR__TTL_CAP_SECS", "0"),
        ])
        .unwrap_err();
        assert_eq!(key_of(error), "cache.near.ttl_cap_secs");
    }

    #[test]
    fn user_record_keys_are_bucketed_on_a_cluster_only() {
        let cluster = [
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("CACHEMANAGER__REDIS__MODE", "cluster"),
            ("CACHEMANAGER__REDIS__NODES", "node-1:6379,node-2:6379"),
        ];
        let settings = load(&cluster).unwrap();
        assert_eq!(
            settings.cache_policy().key_buckets(),
            DEFAULT_CLUSTER_KEY_BUCKETS
        );
        let settings = load(
            &[
                cluster.as_slice(),
                &[("CACHEMANAGER__CACHE__CLUSTER_KEY_BUCKETS", "0")],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(settings.cache_policy().key_buckets(), 0);
        // One Redis, or no Redis at all: plain keys, whatever is set.
        let standalone = load(&[
            ("CACHEMANAGER__CACHE__BACKEND", "redis"),
            ("CACHEMANAGER__CACHE__CLUSTER_KEY_BUCKETS", "32"),
        ])
        .unwrap();
        assert_eq!(standalone.cache_policy().key_buckets(), 0);
        assert_eq!(load(&[]).unwrap().cache_policy(), CachePolicy::new());
    }

    #[test]
    fn the_default_file_documents_exactly_the_built_in_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
        let documented = Settings::load(Some(&file), &HashMap::new()).unwrap();
        let built_in = load(&[]).unwrap();
        assert_eq!(format!("{documented:?}"), format!("{built_in:?}"));
    }

    #[test]
    fn the_password_never_shows_in_debug_or_errors() {
        let settings = load(&[("REDIS_PASSWORD", "hunter2-secret")]).unwrap();
        assert!(!format!("{settings:?}").contains("hunter2-secret"));
        let settings = load(&[("REDIS_URL", "redis://:in-url-secret@cache:6379")]).unwrap();
        assert!(!format!("{settings:?}").contains("in-url-secret"));
        let error = load(&[
            ("REDIS_PASSWORD", "hunter2-secret"),
            ("CACHEMANAGER__SERVER__PORT", "hunter2-secret"),
        ])
        .unwrap_err();
        assert!(!error.to_string().contains("hunter2-secret"), "{error}");
    }
}
