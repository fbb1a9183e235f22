//! Layered, validated settings: built-in defaults, then a TOML file, then the
//! seed's environment variables, then `CACHEMANAGER__*` variables.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adapters::Secret;
use adapters::backend::RedisConfig;
use config::{Config, Environment, File, FileFormat};
use ports::{CachePolicy, Ttl};
use serde::Deserialize;
use thiserror::Error;

/// The default settings file, read when present.
pub const DEFAULT_FILE: &str = "config/default.toml";

/// A setting that cannot be used. Its `Display` is one line naming the key
/// and what is accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// A key holds a value outside what it accepts.
    #[error("invalid setting `{key}`: {problem}")]
    Invalid {
        /// The dotted key, e.g. `cache.backend`.
        key: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The file or the environment could not be read as settings.
    #[error("cannot read settings: {0}")]
    Source(String),
}

fn invalid(key: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Which cache backend serves the typed caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In-process (moka): no server needed. The default.
    Memory,
    /// Redis: shared between instances.
    Redis,
    /// No caching at all.
    Noop,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Where the HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// The address to bind.
    pub host: IpAddr,
    /// The port (0 picks a free one).
    pub port: u16,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// On shutdown, how long to keep serving with `/health/ready` at 503
    /// before closing the listener (0: close at once).
    pub shutdown_delay: Duration,
    /// The longest one request may take (503 after).
    pub request_timeout: Duration,
    /// The largest request body (413 above).
    pub max_body_bytes: usize,
}

/// The cache layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The backend.
    pub backend: BackendKind,
    /// TTLs (a global default and per-namespace overrides) and the value limit.
    pub policy: CachePolicy,
    /// The bound on every cache operation.
    pub operation_timeout: Duration,
    /// Consecutive backend failures that open the circuit.
    pub breaker_failure_threshold: u32,
    /// While the circuit is open, how often the backend is probed.
    pub breaker_probe_interval: Duration,
}

/// The in-memory backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySettings {
    /// Capacity in bytes.
    pub max_bytes: u64,
}

/// Where the users come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersSettings {
    /// A JSON file of users; `None` serves the seed's ten sample users.
    pub file: Option<PathBuf>,
}

/// The health monitor behind `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// How long a ping may take before the backend counts as down.
    pub timeout: Duration,
    /// Between pings while healthy.
    pub interval: Duration,
    /// Between pings while degraded or down.
    pub down_interval: Duration,
    /// A ping slower than this makes the backend degraded.
    pub slow: Duration,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `app=debug,info`); `RUST_LOG` wins over it.
    pub filter: String,
    /// One line per request at info.
    pub requests: bool,
}

/// Every setting, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Cache layer.
    pub cache: CacheSettings,
    /// Redis backend: the adapter's own configuration (its `Debug` hides
    /// the password and any credentials in the URL).
    pub redis: RedisConfig,
    /// Memory backend.
    pub memory: MemorySettings,
    /// Users store.
    pub users: UsersSettings,
    /// Health check.
    pub health: HealthSettings,
    /// Logging.
    pub log: LogSettings,
}

// --- what the sources hold, before validation --------------------------------

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawServer {
    host: String,
    port: i64,
    shutdown_grace_ms: i64,
    shutdown_delay_ms: i64,
    request_timeout_ms: i64,
    max_body_bytes: i64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            shutdown_grace_ms: 10_000,
            shutdown_delay_ms: 0,
            request_timeout_ms: 10_000,
            max_body_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawBreaker {
    failure_threshold: i64,
    probe_interval_ms: i64,
}

impl Default for RawBreaker {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            probe_interval_ms: 500,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawCache {
    backend: Option<String>,
    default_ttl_secs: Option<i64>,
    ttl_secs: BTreeMap<String, i64>,
    operation_timeout_ms: i64,
    max_value_bytes: i64,
    breaker: RawBreaker,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            backend: None,
            default_ttl_secs: None,
            ttl_secs: BTreeMap::new(),
            operation_timeout_ms: 100,
            max_value_bytes: 1024 * 1024,
            breaker: RawBreaker::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawRedis {
    url: String,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
    connect_timeout_ms: i64,
    response_timeout_ms: i64,
    ca_file: Option<String>,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            username: None,
            password: None,
            db: None,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawMemory {
    max_bytes: i64,
}

impl Default for RawMemory {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawUsers {
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawHealth {
    timeout_ms: i64,
    interval_ms: i64,
    down_interval_ms: i64,
    slow_ms: i64,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            timeout_ms: 2_000,
            interval_ms: 10_000,
            down_interval_ms: 1_000,
            slow_ms: 200,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawLog {
    format: String,
    filter: String,
    requests: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            filter: "info".into(),
            requests: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSettings {
    server: RawServer,
    cache: RawCache,
    redis: RawRedis,
    memory: RawMemory,
    users: RawUsers,
    health: RawHealth,
    log: RawLog,
}

/// The seed's variables and the keys they set.
const SEED_VARIABLES: [(&str, &str); 3] = [
    ("REDIS_URL", "REDIS__URL"),
    ("REDIS_PASSWORD", "REDIS__PASSWORD"),
    ("CACHE_DEFAULT_TTL", "CACHE__DEFAULT_TTL_SECS"),
];

impl Settings {
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
        let raw: RawSettings = builder
            .add_source(Environment::default().separator("__").source(Some(seed)))
            .add_source(
                Environment::with_prefix("CACHEMANAGER")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(ours)),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| SettingsError::Source(scrub(&e.to_string(), env)))?;
        // As in the seed's compose and k8s files: a REDIS_URL alone means Redis.
        let implied = if env.contains_key("REDIS_URL") {
            BackendKind::Redis
        } else {
            BackendKind::Memory
        };
        raw.validate(implied)
    }
}

/// Keeps a secret out of an error message (the config crate may quote values).
fn scrub(message: &str, env: &HashMap<String, String>) -> String {
    let mut text = message.to_owned();
    for key in ["REDIS_PASSWORD", "CACHEMANAGER__REDIS__PASSWORD"] {
        if let Some(secret) = env.get(key).filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

fn millis(key: &'static str, value: i64) -> Result<Duration, SettingsError> {
    match u64::try_from(value) {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(invalid(
            key,
            format!("{value} is not accepted (a positive number of milliseconds)"),
        )),
    }
}

fn ttl(key: &'static str, value: i64) -> Result<Ttl, SettingsError> {
    u64::try_from(value).map(Ttl::from_secs).map_err(|_| {
        invalid(
            key,
            format!("{value} is not accepted (seconds >= 0; 0 means no expiry)"),
        )
    })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl RawSettings {
    /// `implied`: the backend when `cache.backend` is not set.
    fn validate(self, implied: BackendKind) -> Result<Settings, SettingsError> {
        let host = match self.server.host.as_str() {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            other => other.parse().map_err(|_| {
                invalid("server.host", format!("'{other}' is not accepted (an IP address such as 127.0.0.1 or 0.0.0.0, or localhost)"))
            })?,
        };
        let port = u16::try_from(self.server.port).map_err(|_| {
            invalid(
                "server.port",
                format!("{} is not accepted (0 to 65535)", self.server.port),
            )
        })?;

        let backend = match self
            .cache
            .backend
            .map(|b| b.to_ascii_lowercase())
            .as_deref()
        {
            None => implied,
            Some("memory") => BackendKind::Memory,
            Some("redis") => BackendKind::Redis,
            Some("noop") => BackendKind::Noop,
            Some(other) => {
                return Err(invalid(
                    "cache.backend",
                    format!("'{other}' is not accepted (memory, redis, noop)"),
                ));
            }
        };
        let max_value_bytes = usize::try_from(self.cache.max_value_bytes)
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                invalid(
                    "cache.max_value_bytes",
                    format!(
                        "{} is not accepted (a positive number of bytes)",
                        self.cache.max_value_bytes
                    ),
                )
            })?;
        let mut policy = CachePolicy::new().with_max_value_bytes(max_value_bytes);
        if let Some(secs) = self.cache.default_ttl_secs {
            policy = policy.with_default_ttl(ttl("cache.default_ttl_secs", secs)?);
        }
        for (namespace, secs) in self.cache.ttl_secs {
            policy = policy.with_ttl_override(namespace, ttl("cache.ttl_secs", secs)?);
        }

        adapters::backend::check_redis_url(&self.redis.url)
            .map_err(|e| invalid("redis.url", format!("{e} (accepted: redis://[user[:password]@]host[:port][/db], rediss://..., unix://...)")))?;
        if let Some(db) = self.redis.db
            && db < 0
        {
            return Err(invalid(
                "redis.db",
                format!("{db} is not accepted (a database index >= 0)"),
            ));
        }
        let max_bytes = u64::try_from(self.memory.max_bytes)
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                invalid(
                    "memory.max_bytes",
                    format!(
                        "{} is not accepted (a positive number of bytes)",
                        self.memory.max_bytes
                    ),
                )
            })?;
        let failure_threshold = u32::try_from(self.cache.breaker.failure_threshold)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "cache.breaker.failure_threshold",
                    format!(
                        "{} is not accepted (a positive count)",
                        self.cache.breaker.failure_threshold
                    ),
                )
            })?;
        let max_body_bytes = usize::try_from(self.server.max_body_bytes)
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                invalid(
                    "server.max_body_bytes",
                    format!(
                        "{} is not accepted (a positive number of bytes)",
                        self.server.max_body_bytes
                    ),
                )
            })?;
        let format = match self.log.format.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("'{other}' is not accepted (text, json)"),
                ));
            }
        };

        Ok(Settings {
            server: ServerSettings {
                host,
                port,
                shutdown_grace: millis("server.shutdown_grace_ms", self.server.shutdown_grace_ms)?,
                shutdown_delay: u64::try_from(self.server.shutdown_delay_ms)
                    .map(Duration::from_millis)
                    .map_err(|_| {
                        invalid(
                            "server.shutdown_delay_ms",
                            format!(
                                "{} is not accepted (milliseconds >= 0)",
                                self.server.shutdown_delay_ms
                            ),
                        )
                    })?,
                request_timeout: millis(
                    "server.request_timeout_ms",
                    self.server.request_timeout_ms,
                )?,
                max_body_bytes,
            },
            cache: CacheSettings {
                backend,
                policy,
                operation_timeout: millis(
                    "cache.operation_timeout_ms",
                    self.cache.operation_timeout_ms,
                )?,
                breaker_failure_threshold: failure_threshold,
                breaker_probe_interval: millis(
                    "cache.breaker.probe_interval_ms",
                    self.cache.breaker.probe_interval_ms,
                )?,
            },
            redis: RedisConfig {
                url: self.redis.url,
                username: non_empty(self.redis.username),
                password: non_empty(self.redis.password).map(Secret::new),
                db: self.redis.db,
                connect_timeout: millis("redis.connect_timeout_ms", self.redis.connect_timeout_ms)?,
                response_timeout: millis(
                    "redis.response_timeout_ms",
                    self.redis.response_timeout_ms,
                )?,
                ca_file: non_empty(self.redis.ca_file).map(PathBuf::from),
                operation_timeout: millis(
                    "cache.operation_timeout_ms",
                    self.cache.operation_timeout_ms,
                )?,
                ..RedisConfig::default()
            },
            memory: MemorySettings { max_bytes },
            users: UsersSettings {
                file: non_empty(self.users.file).map(PathBuf::from),
            },
            health: HealthSettings {
                timeout: millis("health.timeout_ms", self.health.timeout_ms)?,
                interval: millis("health.interval_ms", self.health.interval_ms)?,
                down_interval: millis("health.down_interval_ms", self.health.down_interval_ms)?,
                slow: millis("health.slow_ms", self.health.slow_ms)?,
            },
            log: LogSettings {
                format,
                filter: self.log.filter,
                requests: self.log.requests,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

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

    fn key_of(error: SettingsError) -> &'static str {
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
        assert_eq!(settings.cache.backend, BackendKind::Memory);
        assert_eq!(settings.cache.policy, CachePolicy::new());
        assert_eq!(settings.redis.connect_timeout, Duration::from_secs(2));
        assert_eq!(settings.redis.response_timeout, Duration::from_secs(5));
        assert_eq!(settings.health.timeout, Duration::from_secs(2));
        assert_eq!(settings.health.interval, Duration::from_secs(10));
        assert_eq!(settings.cache.operation_timeout, Duration::from_millis(100));
        assert_eq!(settings.cache.breaker_failure_threshold, 3);
        assert_eq!(settings.cache.policy.max_value_bytes(), 1024 * 1024);
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
        ])
        .unwrap();
        assert_eq!(
            settings.cache.breaker_probe_interval,
            Duration::from_millis(250)
        );
        assert_eq!(settings.cache.backend, BackendKind::Redis);
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
            settings.cache.policy.resolve_ttl("any", Ttl::DEFAULT),
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
        assert_eq!(settings.cache.backend, BackendKind::Noop);
        assert_eq!(
            settings
                .cache
                .policy
                .resolve_ttl("user:uuid-to-id", Ttl::DEFAULT),
            Ttl::from_secs(60)
        );
        assert_eq!(
            settings
                .cache
                .policy
                .resolve_ttl("user:id-to-uuid", Ttl::DEFAULT),
            Ttl::DEFAULT
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_seeds_redis_url_alone_selects_redis_unless_a_backend_is_set() {
        let settings = load(&[("REDIS_URL", "redis://seed:6379")]).unwrap();
        assert_eq!(settings.cache.backend, BackendKind::Redis);
        let settings = load(&[
            ("REDIS_URL", "redis://seed:6379"),
            ("CACHEMANAGER__CACHE__BACKEND", "memory"),
        ])
        .unwrap();
        assert_eq!(settings.cache.backend, BackendKind::Memory);
        // Our own variable is explicit configuration of Redis, not a choice of backend.
        let settings = load(&[("CACHEMANAGER__REDIS__URL", "redis://ours:6379")]).unwrap();
        assert_eq!(settings.cache.backend, BackendKind::Memory);
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let result = Settings::load(Some(Path::new("/nonexistent/cm.toml")), &HashMap::new());
        assert!(matches!(result, Err(SettingsError::Source(_))));
    }

    #[test]
    fn bad_values_name_their_key_and_what_is_accepted() {
        let cases: [(&str, &str, &str); 11] = [
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
