//! The users store on a SQL database (sqlx): SQLite, embedded, by default
//! (a file created on first start, nothing to install), PostgreSQL in
//! production. One implementation: the statements are the same on both, and
//! each is bound by the statement timeout, so a slow or dead database is a
//! clear [`RepositoryError::Unavailable`] within a bound, never a hang.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    Email, Name, NewUser, Page, RepositoryError, User, UserChanges, UserId, UserRepository,
    UserUuid, Version,
};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Database, QueryBuilder, Row};
use thiserror::Error;
use uuid::Uuid;

use crate::Secret;
use crate::backend::redact_url;

mod migrations;
mod reuse;

use migrations::Embedded;
use reuse::Connections;

/// Settings of the users store (the `[store]` settings).
#[derive(Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created on first start) or `postgres://user@host/db`.
    /// `DATABASE_URL` sets it too.
    pub url: String,
    /// The database password, kept apart from the URL and never logged;
    /// it takes precedence over one in the URL. Ignored by SQLite.
    pub password: Option<Secret>,
    /// The most connections the pool opens.
    #[serde(deserialize_with = "crate::serde_ms::positive_count")]
    pub max_connections: u32,
    /// Bound on getting a connection from the pool, connecting one included.
    #[serde(
        rename = "acquire_timeout_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub acquire_timeout: Duration,
    /// Bound on every statement as the service sees it (PostgreSQL also
    /// cancels it server-side; SQLite waits at most this long for a lock).
    #[serde(
        rename = "statement_timeout_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub statement_timeout: Duration,
    /// A connection idle at least this long is pinged before it is used
    /// (0: before every use). One used more recently is trusted: a ping on
    /// every use would be a second round trip per query for nothing. The
    /// window HikariCP bypasses (500 ms) by default.
    #[serde(
        rename = "ping_idle_after_ms",
        deserialize_with = "crate::serde_ms::non_negative"
    )]
    pub ping_idle_after: Duration,
    /// Apply the schema migrations at start (`cachemanager migrate` does it
    /// on demand).
    pub migrate: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/cachemanager.db".into(),
            password: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(2),
            ping_idle_after: Duration::from_millis(500),
            migrate: true,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ping_idle_after", &self.ping_idle_after)
            .field("migrate", &self.migrate)
            .finish()
    }
}

/// Which database a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `sqlite:...`: a file (or `sqlite::memory:`).
    Sqlite,
    /// `postgres://...` or `postgresql://...`.
    Postgres,
}

impl StoreConfig {
    /// The database the URL names.
    ///
    /// # Errors
    /// [`StoreSetupError::UnknownScheme`] for any other URL.
    pub fn kind(&self) -> Result<StoreKind, StoreSetupError> {
        if self.url.starts_with("sqlite:") {
            Ok(StoreKind::Sqlite)
        } else if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Ok(StoreKind::Postgres)
        } else {
            Err(StoreSetupError::UnknownScheme(redact_url(&self.url)))
        }
    }
}

/// Why the store could not be set up. Never shows a password.
#[derive(Debug, Error)]
pub enum StoreSetupError {
    /// Neither `sqlite:` nor `postgres://`.
    #[error("store.url must start with sqlite:// or postgres://, got {0}")]
    UnknownScheme(String),
    /// The URL does not parse.
    #[error("store.url {url} is not usable: {reason}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// The database could not be opened or reached.
    #[error("cannot open the database {url}: {reason}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// The schema could not be brought up to date.
    #[error("cannot apply the database migrations to {url}: {reason}")]
    Migrate {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
    /// Users could not be imported.
    #[error("cannot import users into {url}: {reason}")]
    Import {
        /// The URL, password removed.
        url: String,
        /// Why.
        reason: String,
    },
}

#[derive(Clone)]
enum Pool {
    Sqlite(Connections<sqlx::Sqlite>),
    Postgres(Connections<sqlx::Postgres>),
}

/// The users store on SQLite or PostgreSQL. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    statement_timeout: Duration,
    target: String,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("target", &self.target)
            .finish()
    }
}

/// Runs `$body` with `$pool` bound to the store's [`Connections`], whichever
/// database it is: each arm is type-checked for its own driver.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs one statement, `$body`, on a connection `$connection` (a `&mut` to
/// the driver's connection), bounded by the statement timeout, the wait for
/// a connection included. A statement that finished keeps its connection
/// for the next one, without sqlx's release ping (see [`reuse`]); one that
/// failed or timed out gives it back to the pool, which checks it.
/// `$pool` is the arm's pool of [`on_pool!`].
macro_rules! statement {
    ($store:expr, $pool:ident, $connection:ident => $body:expr) => {
        $store
            .bounded(async {
                let mut checkout = $pool.take().await?;
                let $connection = &mut *checkout;
                let value = $body.await?;
                checkout.done();
                Ok(value)
            })
            .await
    };
}

const SELECT: &str = "SELECT id, uuid, first_name, last_name, email, version FROM users";
const RETURNING: &str = "RETURNING id, uuid, first_name, last_name, email, version";

/// A user from a row of `SELECT`/`RETURNING`'s columns, validated as a
/// stored user (`Name::from_store`): a row that breaks a rule is a store
/// failure, not a bad user.
fn user_from<'r, R>(row: &'r R) -> Result<User, RepositoryError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let bad =
        |e: &dyn std::fmt::Display| RepositoryError::Unavailable(format!("bad user row: {e}"));
    let id: i64 = row.try_get(0).map_err(|e| bad(&e))?;
    let uuid: Uuid = row.try_get(1).map_err(|e| bad(&e))?;
    let first: String = row.try_get(2).map_err(|e| bad(&e))?;
    let last: String = row.try_get(3).map_err(|e| bad(&e))?;
    let email: String = row.try_get(4).map_err(|e| bad(&e))?;
    let version: i64 = row.try_get(5).map_err(|e| bad(&e))?;
    Ok(User::new(
        UserId::new(id).map_err(|e| bad(&e))?,
        UserUuid::new(uuid),
        Name::from_store("first_name", &first).map_err(|e| bad(&e))?,
        Name::from_store("last_name", &last).map_err(|e| bad(&e))?,
        Email::from_store(&email).map_err(|e| bad(&e))?,
    )
    .with_version(Version::new(u64::try_from(version).unwrap_or(0))))
}

fn users_from<R>(rows: &[R]) -> Result<Vec<User>, RepositoryError>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Uuid: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter().map(user_from).collect()
}

/// `SELECT ... WHERE {column} IN ($1, $2, ...)` over `values`.
fn select_in<'a, DB, T>(column: &str, values: impl IntoIterator<Item = T>) -> QueryBuilder<'a, DB>
where
    DB: Database,
    T: 'a + sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new(format!("{SELECT} WHERE {column} IN ("));
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    query.push(")");
    query
}

/// What a statement failed with, before the caller names it.
enum Failure {
    /// A unique constraint (the e-mail address).
    Unique,
    /// Anything else: the store failed.
    Store(RepositoryError),
}

impl From<Failure> for RepositoryError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unique => RepositoryError::Unavailable("unexpected unique violation".into()),
            Failure::Store(error) => error,
        }
    }
}

/// The uuid of synthetic user `id` (see [`SqlStore::generate`]): a valid
/// version 4 layout, so a benchmark can name any user without asking.
pub fn synthetic_uuid(id: i64) -> Uuid {
    Uuid::from_u128(
        0x5eed_0000_0000_4000_8000_0000_0000_0000
            | u128::from(id.unsigned_abs() & 0xffff_ffff_ffff),
    )
}

/// The pool's options on either database: its size, its acquire bound, and
/// a ping before use only for a connection idle at least
/// `ping_idle_after`. sqlx's own test before acquire pings every time. (The
/// ping sqlx sends when a connection returns to the pool is skipped for
/// statements that finished: [`reuse`].)
fn pool_options<DB: Database>(config: &StoreConfig) -> sqlx::pool::PoolOptions<DB> {
    let ping_idle_after = config.ping_idle_after;
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |connection, meta| {
            Box::pin(async move {
                if meta.idle_for < ping_idle_after {
                    return Ok(true);
                }
                // An error closes the connection, and the pool takes another.
                sqlx::Connection::ping(connection).await.map(|()| true)
            })
        })
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqlStore {
    /// Opens the store `config` names. SQLite: the file is created (with
    /// its directory) if missing. PostgreSQL: connects lazily, so the
    /// service can start (and serve from the cache) while it is down.
    ///
    /// # Errors
    /// [`StoreSetupError`] for a bad URL or an SQLite file that cannot be opened.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreSetupError> {
        let target = redact_url(&config.url);
        let bad_url = |reason: String| StoreSetupError::BadUrl {
            url: target.clone(),
            reason,
        };
        let pool = match config.kind()? {
            StoreKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(&config.url)
                    .map_err(|e| bad_url(e.to_string()))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(config.statement_timeout);
                let file = options.get_filename();
                if let Some(directory) = file.parent().filter(|d| !d.as_os_str().is_empty())
                    && file.as_os_str() != ":memory:"
                {
                    std::fs::create_dir_all(directory).map_err(|e| StoreSetupError::Connect {
                        url: target.clone(),
                        reason: format!("cannot create {}: {e}", directory.display()),
                    })?;
                }
                let pool: SqlitePool =
                    pool_options(config)
                        .connect_with(options)
                        .await
                        .map_err(|e| StoreSetupError::Connect {
                            url: target.clone(),
                            reason: e.to_string(),
                        })?;
                Pool::Sqlite(Connections::new(
                    pool,
                    config.max_connections,
                    config.acquire_timeout,
                    config.ping_idle_after,
                ))
            }
            StoreKind::Postgres => {
                let mut options =
                    PgConnectOptions::from_str(&config.url).map_err(|e| bad_url(e.to_string()))?;
                if let Some(password) = &config.password {
                    options = options.password(password.expose());
                }
                let timeout_ms = config.statement_timeout.as_millis().to_string();
                options = options
                    .application_name("cachemanager")
                    .options([("statement_timeout", timeout_ms.as_str())]);
                let pool: PgPool = pool_options(config).connect_lazy_with(options);
                Pool::Postgres(Connections::new(
                    pool,
                    config.max_connections,
                    config.acquire_timeout,
                    config.ping_idle_after,
                ))
            }
        };
        Ok(Self {
            pool,
            statement_timeout: config.statement_timeout,
            target,
        })
    }

    /// Where the store is (URL without its password), for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Which database it is.
    pub fn kind(&self) -> StoreKind {
        match self.pool {
            Pool::Sqlite(_) => StoreKind::Sqlite,
            Pool::Postgres(_) => StoreKind::Postgres,
        }
    }

    /// The pool's connections: `(in_use, idle)`, for metrics.
    pub fn pool_connections(&self) -> (u64, u64) {
        let (size, idle) = on_pool!(self, pool => pool.counts());
        let idle = idle as u64;
        (u64::from(size).saturating_sub(idle), idle)
    }

    /// Brings the schema up to date (sqlx migrations, embedded in the binary;
    /// applied ones are recorded in `_sqlx_migrations` and never re-run).
    ///
    /// # Errors
    /// [`StoreSetupError::Migrate`], with the database's reason.
    pub async fn migrate(&self) -> Result<(), StoreSetupError> {
        let result: Result<(), MigrateError> = async {
            let source = match self.kind() {
                StoreKind::Sqlite => migrations::SQLITE,
                StoreKind::Postgres => migrations::POSTGRES,
            };
            let migrator = Migrator::new(Embedded(source)).await?;
            on_pool!(self, pool => {
                let mut checkout = pool.take().await?;
                migrator.run(&mut *checkout).await?;
                checkout.done();
                Ok(())
            })
        }
        .await;
        result.map_err(|e| StoreSetupError::Migrate {
            url: self.target.clone(),
            reason: e.to_string(),
        })
    }

    /// Checks that the database answers, within the statement timeout.
    ///
    /// # Errors
    /// [`RepositoryError::Unavailable`].
    pub async fn ping(&self) -> Result<(), RepositoryError> {
        on_pool!(self, pool => statement!(self, pool, connection =>
            sqlx::query("SELECT 1").execute(connection))
        .map(|_| ()))
        .map_err(RepositoryError::from)
    }

    /// Imports `users` with their ids, uuids and versions, in batches inside
    /// one transaction; users whose id, uuid or e-mail is already there are
    /// skipped. Returns how many were added.
    ///
    /// # Errors
    /// [`StoreSetupError::Import`].
    pub async fn import(&self, users: &[User]) -> Result<u64, StoreSetupError> {
        let failed = |e: sqlx::Error| StoreSetupError::Import {
            url: self.target.clone(),
            reason: e.to_string(),
        };
        // Six parameters a row: 5,000 rows stay under both databases' limits.
        const ROWS: usize = 5_000;
        let mut added = 0;
        on_pool!(self, pool => {
            let mut checkout = pool.take().await.map_err(failed)?;
            let mut tx = sqlx::Connection::begin(&mut *checkout).await.map_err(failed)?;
            for chunk in users.chunks(ROWS) {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO users (id, uuid, first_name, last_name, email, version) ",
                );
                insert.push_values(chunk, |mut row, user| {
                    row.push_bind(user.id().get())
                        .push_bind(user.uuid().get())
                        .push_bind(user.first_name().as_str().to_owned())
                        .push_bind(user.last_name().as_str().to_owned())
                        .push_bind(user.email().as_str().to_owned())
                        .push_bind(i64_of(user.version().get()));
                });
                insert.push(" ON CONFLICT DO NOTHING");
                added += insert.build().execute(&mut *tx).await.map_err(failed)?.rows_affected();
            }
            if self.kind() == StoreKind::Postgres {
                // Explicit ids leave the identity behind: move it past them.
                // On an empty table: 1, not yet used, so the next id is 1.
                sqlx::query(
                    "SELECT setval(pg_get_serial_sequence('users', 'id'), \
                     COALESCE((SELECT MAX(id) FROM users), 1), \
                     (SELECT MAX(id) FROM users) IS NOT NULL)",
                )
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            }
            tx.commit().await.map_err(failed)?;
            checkout.done();
        });
        Ok(added)
    }

    /// Adds `n` synthetic users after the last id (for benchmarks and demos),
    /// in batches, each its own transaction. User `id` has the uuid
    /// [`synthetic_uuid`]`(id)` and the address `user{id}@seed.example.com`.
    /// Returns the first and last id added.
    ///
    /// # Errors
    /// [`StoreSetupError::Import`].
    pub async fn generate(&self, n: u64) -> Result<(i64, i64), StoreSetupError> {
        let failed = |e: &dyn std::fmt::Display| StoreSetupError::Import {
            url: self.target.clone(),
            reason: e.to_string(),
        };
        let last: Option<i64> = on_pool!(self, pool => statement!(self, pool, connection =>
            sqlx::query_scalar("SELECT MAX(id) FROM users").fetch_one(connection)))
        .map_err(|e| failed(&RepositoryError::from(e)))?;
        let first = last.unwrap_or(0) + 1;
        let end = first + i64_of(n);
        let mut next = first;
        const ROWS: i64 = 5_000;
        while next < end {
            let stop = (next + ROWS).min(end);
            let batch: Vec<User> = (next..stop)
                .filter_map(|id| {
                    Some(User::new(
                        UserId::new(id).ok()?,
                        UserUuid::new(synthetic_uuid(id)),
                        Name::new("first_name", "Seed").ok()?,
                        Name::new("last_name", &format!("User{id}")).ok()?,
                        Email::new(&format!("user{id}@seed.example.com")).ok()?,
                    ))
                })
                .collect();
            self.import(&batch).await?;
            next = stop;
        }
        Ok((first, end - 1))
    }

    /// `statement`, cut at the statement timeout; its error classified.
    async fn bounded<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.statement_timeout, statement).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(sqlx::Error::Database(error))) if error.is_unique_violation() => {
                Err(Failure::Unique)
            }
            Ok(Err(error)) => Err(Failure::Store(RepositoryError::Unavailable(
                error.to_string(),
            ))),
            Err(_) => Err(Failure::Store(RepositoryError::Unavailable(format!(
                "no answer from the database within {} ms",
                self.statement_timeout.as_millis()
            )))),
        }
    }

    /// After a conditional write touched no row: whether the user is
    /// missing (`Ok(None)`) or at another version.
    async fn missing_or_moved(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
        let current: Option<i64> = on_pool!(self, pool => statement!(self, pool, connection =>
            sqlx::query_scalar("SELECT version FROM users WHERE uuid = $1")
                .bind(uuid.get())
                .fetch_optional(connection)))?;
        match current {
            None => Ok(None),
            Some(version) => Err(RepositoryError::VersionMismatch {
                current: Version::new(u64::try_from(version).unwrap_or(0)),
            }),
        }
    }
}

#[async_trait]
impl UserRepository for SqlStore {
    async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
        on_pool!(self, pool => {
            let sql = format!("{SELECT} WHERE uuid = $1");
            let row = statement!(self, pool, connection =>
                sqlx::query(&sql).bind(uuid.get()).fetch_optional(connection))?;
            row.as_ref().map(user_from).transpose()
        })
    }

    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError> {
        on_pool!(self, pool => {
            let sql = format!("{SELECT} WHERE id = $1");
            let row = statement!(self, pool, connection =>
                sqlx::query(&sql).bind(id.get()).fetch_optional(connection))?;
            row.as_ref().map(user_from).transpose()
        })
    }

    async fn list(&self, page: Page) -> Result<Vec<User>, RepositoryError> {
        on_pool!(self, pool => {
            let sql = format!("{SELECT} ORDER BY id LIMIT $1 OFFSET $2");
            let rows = statement!(self, pool, connection => sqlx::query(&sql)
                .bind(i64::from(page.limit()))
                .bind(i64::from(page.offset()))
                .fetch_all(connection))?;
            users_from(&rows)
        })
    }

    async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError> {
        if uuids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut query = select_in("uuid", uuids.iter().map(|u| u.get()));
            let rows = statement!(self, pool, connection => query.build().fetch_all(connection))?;
            users_from(&rows)
        })
    }

    async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut query = select_in("id", ids.iter().map(|id| id.get()));
            let rows = statement!(self, pool, connection => query.build().fetch_all(connection))?;
            users_from(&rows)
        })
    }

    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, RepositoryError> {
        let after = after.map_or(0, UserId::get);
        on_pool!(self, pool => {
            // The primary key's index: page 10,000 costs what page 1 costs.
            let sql = format!("{SELECT} WHERE id > $1 ORDER BY id LIMIT $2");
            let rows = statement!(self, pool, connection =>
                sqlx::query(&sql).bind(after).bind(i64::from(limit)).fetch_all(connection))?;
            users_from(&rows)
        })
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        let count: i64 = on_pool!(self, pool => statement!(self, pool, connection =>
            sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(connection)))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn create(&self, user: NewUser) -> Result<User, RepositoryError> {
        let uuid = Uuid::new_v4();
        let email = user.email.as_str().to_owned();
        let result = on_pool!(self, pool => {
            let sql = format!(
                "INSERT INTO users (uuid, first_name, last_name, email) VALUES ($1, $2, $3, $4) {RETURNING}"
            );
            statement!(self, pool, connection => sqlx::query(&sql)
                .bind(uuid)
                .bind(user.first_name.as_str())
                .bind(user.last_name.as_str())
                .bind(user.email.as_str())
                .fetch_one(connection))
            .map(|row| user_from(&row))
        });
        match result {
            Ok(user) => user,
            Err(Failure::Unique) => Err(RepositoryError::DuplicateEmail(email)),
            Err(Failure::Store(error)) => Err(error),
        }
    }

    async fn update(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        let email = changes.email.as_ref().map(|e| e.as_str().to_owned());
        let expected = expected.map(|v| i64_of(v.get()));
        let result = on_pool!(self, pool => {
            let sql = format!(
                "UPDATE users SET first_name = COALESCE($2, first_name), \
                 last_name = COALESCE($3, last_name), email = COALESCE($4, email), \
                 version = version + 1, updated_at = CURRENT_TIMESTAMP \
                 WHERE uuid = $1 AND ($5 IS NULL OR version = $5) {RETURNING}"
            );
            statement!(self, pool, connection => sqlx::query(&sql)
                .bind(uuid.get())
                .bind(changes.first_name.as_ref().map(|n| n.as_str().to_owned()))
                .bind(changes.last_name.as_ref().map(|n| n.as_str().to_owned()))
                .bind(email.clone())
                .bind(expected)
                .fetch_optional(connection))
            .map(|row| row.as_ref().map(user_from).transpose())
        });
        match result {
            Ok(Ok(Some(user))) => Ok(Some(user)),
            Ok(Ok(None)) => self.missing_or_moved(uuid).await,
            Ok(Err(error)) => Err(error),
            Err(Failure::Unique) => Err(RepositoryError::DuplicateEmail(email.unwrap_or_default())),
            Err(Failure::Store(error)) => Err(error),
        }
    }

    async fn delete(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        let expected = expected.map(|v| i64_of(v.get()));
        let row = on_pool!(self, pool => {
            let sql = format!(
                "DELETE FROM users WHERE uuid = $1 AND ($2 IS NULL OR version = $2) {RETURNING}"
            );
            statement!(self, pool, connection => sqlx::query(&sql)
                .bind(uuid.get())
                .bind(expected)
                .fetch_optional(connection))?
            .as_ref()
            .map(user_from)
            .transpose()
        })?;
        match row {
            Some(user) => Ok(Some(user)),
            None => self.missing_or_moved(uuid).await,
        }
    }
}

impl crate::health::StoreProbe for SqlStore {
    fn kind(&self) -> &'static str {
        match self.kind() {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }

    fn check(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.ping().await.map_err(|e| e.to_string()) })
    }
}
