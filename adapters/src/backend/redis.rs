//! The Redis backend: one multiplexed connection per process, managed by the
//! redis crate's `ConnectionManager` (reconnects by itself), made lazily so the
//! service starts and serves while Redis is down.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, Script};
use thiserror::Error;

use crate::secret::Secret;

/// Deletes KEYS[1] only while it still holds ARGV[1]: a corrupt value is
/// dropped, a valid value written meanwhile by another instance survives.
const COMPARE_AND_DELETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// How to reach Redis. The password is kept apart from the URL so that it can
/// come from a secret store, and never shows in `Debug` or logs (nor does a
/// password written into the URL).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`. A password in the URL works, but
    /// [`RedisConfig::password`] takes precedence and is the recommended way.
    pub url: String,
    /// ACL user name (Redis 6+); `None` for the default user.
    pub username: Option<String>,
    /// Password (`requirepass` or the ACL user's).
    pub password: Option<Secret>,
    /// Database index; `None` keeps the URL's (default 0).
    pub db: Option<i64>,
    /// Bound on establishing a connection (the seed's 2 s).
    pub connect_timeout: Duration,
    /// Bound on one command's answer (the seed's 5 s).
    pub response_timeout: Duration,
    /// For `rediss://` URLs: a PEM file of the certificate authority that
    /// signed the server's certificate. `None` trusts the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Where the credentials of `url` are: between `://` and the last `@`.
fn credentials(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let at = url.rfind('@')?;
    (at > start).then_some(start..at)
}

/// `url` with any credentials in it replaced by `***`, for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    match credentials(url) {
        Some(range) => format!("{}***{}", &url[..range.start], &url[range.end..]),
        None => url.to_owned(),
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            username: None,
            password: None,
            db: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

/// Why a [`RedisBackend`] could not be set up. Messages never carry a secret.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RedisSetupError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    /// Redis answered but refused the credentials.
    #[error("Redis at {target} refused authentication ({reason}); check the username and password")]
    Unauthorized {
        /// `host:port/db` of the server.
        target: String,
        /// Redis's reason (`WRONGPASS`, `NOAUTH`), without the secret.
        reason: String,
    },
    /// The TLS settings cannot be used (an unreadable CA file).
    #[error("Redis TLS: {0}")]
    Tls(String),
    /// Redis did not answer.
    #[error("Redis at {target} is unreachable: {reason}")]
    Unreachable {
        /// `host:port/db` of the server.
        target: String,
        /// What failed.
        reason: String,
    },
}

/// A [`CacheBackend`] over Redis. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisBackend {
    connection: ConnectionManager,
    compare_and_delete: Script,
    target: String,
    response_timeout: Duration,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.target)
            .finish()
    }
}

impl RedisBackend {
    /// A backend that connects on first use and reconnects by itself; no I/O
    /// happens here, so the service can start while Redis is down. Must be
    /// called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`RedisSetupError::InvalidUrl`] when the URL does not parse.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisSetupError> {
        let info = config.url.as_str().into_connection_info().map_err(|e| {
            // The driver's message may quote the URL, which may hold a password.
            RedisSetupError::InvalidUrl(redact(&e.to_string(), config))
        })?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &config.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        if let Some(db) = config.db {
            settings = settings.set_db(db);
        }
        let target = format!("{}/{}", info.addr(), settings.db());
        let info = info.set_redis_settings(settings);
        let client = match &config.ca_file {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    RedisSetupError::Tls(format!("cannot read CA file {}: {e}", path.display()))
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(info, certificates)
                    .map_err(|e| RedisSetupError::Tls(redact(&e.to_string(), config)))?
            }
            None => redis::Client::open(info)
                .map_err(|e| RedisSetupError::InvalidUrl(redact(&e.to_string(), config)))?,
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            // Few, short retries: a cache fails fast and heals in the background.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| RedisSetupError::InvalidUrl(redact(&e.to_string(), config)))?;
        tracing::info!(%target, "redis backend configured (connects on first use)");
        Ok(Self {
            connection,
            compare_and_delete: Script::new(COMPARE_AND_DELETE),
            target,
            response_timeout: config.response_timeout,
        })
    }

    /// Like [`RedisBackend::new`], then pings once, so a wrong password or an
    /// unreachable server is reported at once, with a clear message.
    ///
    /// # Errors
    /// Every [`RedisSetupError`].
    pub async fn connect(config: &RedisConfig) -> Result<Self, RedisSetupError> {
        let backend = Self::new(config)?;
        backend.check().await?;
        Ok(backend)
    }

    /// Pings once and classifies a failure for an operator.
    ///
    /// # Errors
    /// [`RedisSetupError::Unauthorized`] or [`RedisSetupError::Unreachable`].
    pub async fn check(&self) -> Result<(), RedisSetupError> {
        match self.ping().await {
            Ok(()) => Ok(()),
            Err(BackendError::Unauthorized(reason)) => Err(RedisSetupError::Unauthorized {
                target: self.target.clone(),
                reason,
            }),
            Err(other) => Err(RedisSetupError::Unreachable {
                target: self.target.clone(),
                reason: other.to_string(),
            }),
        }
    }

    /// `host:port/db` of the server, for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn error(&self, error: RedisError) -> BackendError {
        classify(&error, self.response_timeout)
    }
}

/// Checks that `url` is a Redis URL (`redis://`, `rediss://`, `unix://`),
/// without any I/O. The message never quotes a password held in the URL.
///
/// # Errors
/// Why the URL does not parse.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    url.into_connection_info().map(drop).map_err(|e| {
        let config = RedisConfig {
            url: url.to_owned(),
            ..RedisConfig::default()
        };
        redact(&e.to_string(), &config)
    })
}

/// Maps a driver error to the port's error kinds.
fn classify(error: &RedisError, response_timeout: Duration) -> BackendError {
    let text = error.to_string();
    if error.is_timeout() {
        return BackendError::Timeout(response_timeout);
    }
    if error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        return BackendError::Unauthorized(text);
    }
    if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        return BackendError::Unavailable(text);
    }
    if error.code() == Some("WRONGTYPE") {
        return BackendError::WrongType(text);
    }
    if error.code().is_some() {
        return BackendError::Rejected(text);
    }
    BackendError::Unknown(text)
}

/// Removes every trace of the configured secrets from a message.
fn redact(message: &str, config: &RedisConfig) -> String {
    let mut text = message.to_owned();
    if let Some(password) = &config.password
        && !password.expose().is_empty()
    {
        text = text.replace(password.expose(), "***");
    }
    // Credentials inside the URL.
    if let Some(range) = credentials(&config.url) {
        text = text.replace(&config.url[range], "***");
    }
    text
}

#[async_trait]
impl CacheBackend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        let mut connection = self.connection.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(value.map(Bytes::from))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value.as_ref());
        if let Some(ttl) = ttl {
            command.arg("PX").arg(ttl_millis(ttl));
        }
        command
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.error(e))
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let mut connection = self.connection.clone();
        let removed: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(removed > 0)
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let mut connection = self.connection.clone();
        let removed: i64 = self
            .compare_and_delete
            .key(key)
            .arg(expected)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(removed > 0)
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        // One pipeline, one round trip; each entry keeps its own TTL, which
        // MSET cannot express.
        let mut pipeline = redis::pipe();
        for entry in entries {
            let command = pipeline
                .cmd("SET")
                .arg(&entry.key)
                .arg(entry.value.as_ref());
            if let Some(ttl) = entry.ttl {
                command.arg("PX").arg(ttl_millis(ttl));
            }
            command.ignore();
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.error(e))
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }
}

/// Redis wants a positive integer of milliseconds.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_url_is_refused_without_quoting_its_password() {
        let config = RedisConfig {
            url: "redis://admin:s3cr3t-pw@[bad-host:notaport".into(),
            ..RedisConfig::default()
        };
        let error = RedisBackend::new(&config).unwrap_err();
        assert!(matches!(error, RedisSetupError::InvalidUrl(_)));
        assert!(!error.to_string().contains("s3cr3t-pw"), "{error}");
    }

    #[tokio::test]
    async fn creating_the_backend_does_no_io() {
        // Nothing listens on port 1; a lazy backend is still created at once.
        let config = RedisConfig {
            url: "redis://127.0.0.1:1".into(),
            ..RedisConfig::default()
        };
        let backend = RedisBackend::new(&config).unwrap();
        assert_eq!(backend.target(), "127.0.0.1:1/0");
        assert_eq!(backend.name(), "redis");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported_as_unavailable_not_a_panic() {
        let config = RedisConfig {
            url: "redis://127.0.0.1:1".into(),
            password: Some(Secret::new("pw-never-shown")),
            connect_timeout: Duration::from_millis(200),
            ..RedisConfig::default()
        };
        let backend = RedisBackend::new(&config).unwrap();
        let error = backend.get("k").await.unwrap_err();
        assert!(
            matches!(
                error,
                BackendError::Unavailable(_) | BackendError::Timeout(_)
            ),
            "{error:?}"
        );
        let setup = backend.check().await.unwrap_err();
        assert!(
            matches!(setup, RedisSetupError::Unreachable { .. }),
            "{setup:?}"
        );
        assert!(!format!("{setup} {setup:?} {backend:?} {config:?}").contains("pw-never-shown"));
    }

    #[test]
    fn credentials_in_the_url_never_show_in_debug() {
        let config = RedisConfig {
            url: "redis://admin:url-secret@cache:6379/1".into(),
            ..RedisConfig::default()
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("url-secret") && !text.contains("admin"),
            "{text}"
        );
        assert!(text.contains("redis://***@cache:6379/1"), "{text}");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn ttls_are_sent_as_at_least_one_millisecond() {
        assert_eq!(ttl_millis(Duration::from_secs(600)), 600_000);
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
    }

    #[test]
    fn the_db_setting_overrides_the_url() {
        let config = RedisConfig {
            url: "redis://h:6380/3".into(),
            db: Some(5),
            ..RedisConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let backend = runtime
            .block_on(async { RedisBackend::new(&config) })
            .unwrap();
        assert_eq!(backend.target(), "h:6380/5");
    }
}
