//! The Redis backend: one multiplexed connection per process, managed by the
//! redis crate's `ConnectionManager` (reconnects by itself after an I/O
//! error), made lazily so the service starts and serves while Redis is down.
//!
//! The driver does not heal every fault by itself, so this backend does:
//! - a refused login (`WRONGPASS`, `NOAUTH`, a failed `SELECT`) is kept by the
//!   connection manager until an I/O error, so after a run of failures the
//!   whole connection is rebuilt from the client (no I/O until the next use);
//! - a timed-out command never makes the driver reconnect, so a connection
//!   that stops answering (a black-holed path, a moved server) is replaced
//!   after a short run of consecutive timeouts; TCP keepalive and
//!   `TCP_USER_TIMEOUT` make the kernel give up on it too.
//!
//! Rebuilds are spaced (250 ms, doubling to 1 s while they keep failing), so a
//! Redis that stays down costs one lazy reconnect a second at most.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::{TcpSettings, socket2};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, Script};
use thiserror::Error;

use super::status::{Refusal, StatusSignal};
use slots::{SlotMap, Slots};

mod slots;
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
///
/// Deserialized straight from the `[redis]` settings; every default is
/// written once, in [`Default`].
#[derive(Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One server (`url`) or a Redis Cluster (`nodes`).
    pub mode: RedisMode,
    /// `redis://host:port[/db]`. A password in the URL works, but
    /// [`RedisConfig::password`] takes precedence and is the recommended way.
    pub url: String,
    /// Cluster mode: seed nodes (`host:port` or `redis://host:port`; a
    /// comma-separated string in the environment). The rest of the cluster
    /// is discovered from them.
    #[serde(deserialize_with = "node_list")]
    pub nodes: Vec<String>,
    /// ACL user name (Redis 6+); `None` for the default user.
    pub username: Option<String>,
    /// Password (`requirepass` or the ACL user's).
    pub password: Option<Secret>,
    /// Database index; `None` keeps the URL's (default 0).
    pub db: Option<i64>,
    /// Bound on establishing a connection (the seed's 2 s).
    #[serde(
        rename = "connect_timeout_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub connect_timeout: Duration,
    /// Bound on one command's answer (the seed's 5 s).
    #[serde(
        rename = "response_timeout_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub response_timeout: Duration,
    /// Bound on every cache operation as the service sees it: a slower one is
    /// a [`BackendError::Timeout`] (a miss for the typed cache). Timeouts are
    /// counted here, where they happen, to replace a connection that stopped
    /// answering. Set from `cache.operation_timeout_ms`, not in `[redis]`.
    #[serde(skip)]
    pub operation_timeout: Duration,
    /// Consecutive failed operations (timeouts, refused logins, lost
    /// connections) after which the connection is rebuilt.
    #[serde(skip)]
    pub rebuild_after_failures: u32,
    /// For `rediss://` URLs: a PEM file of the certificate authority that
    /// signed the server's certificate. `None` trusts the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Which Redis deployment the backend talks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a proxy in front of several), at `redis.url`.
    #[default]
    Standalone,
    /// Redis Cluster: commands routed by their key's slot, from `redis.nodes`.
    Cluster,
}

/// Seed nodes as a list (a settings file) or one comma-separated string (the
/// environment); blanks dropped.
fn node_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Nodes {
        One(String),
        Many(Vec<String>),
    }
    let nodes = match <Nodes as serde::Deserialize>::deserialize(deserializer)? {
        Nodes::One(text) => text.split(',').map(str::to_owned).collect(),
        Nodes::Many(list) => list,
    };
    Ok(nodes
        .into_iter()
        .map(|node| node.trim().to_owned())
        .filter(|node| !node.is_empty())
        .collect())
}

/// `node` as a URL: `host:port` becomes `redis://host:port`.
pub(crate) fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("url", &redact_url(&self.url))
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("rebuild_after_failures", &self.rebuild_after_failures)
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
            mode: RedisMode::Standalone,
            url: "redis://127.0.0.1:6379".into(),
            nodes: Vec::new(),
            username: None,
            password: None,
            db: None,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_millis(100),
            rebuild_after_failures: 3,
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
    shared: Arc<Shared>,
}

struct Shared {
    /// What a rebuild starts from (no I/O until the next use).
    connector: Connector,
    /// The connection in use; replaced whole by a rebuild. In-flight
    /// commands keep the clone they took.
    connection: RwLock<Link>,
    compare_and_delete: Script,
    target: String,
    response_timeout: Duration,
    operation_timeout: Duration,
    healing: Healing,
    status: StatusSignal,
    /// Cluster: which node serves each slot (a hint for batches).
    slots: Slots,
}

/// What makes a connection: one server's client, or a cluster's.
enum Connector {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        /// A client for each seed node on its own, with the cluster's
        /// credentials: asked why when no node can be reached through the
        /// cluster client (its error says only that it has no connection).
        seeds: Vec<redis::Client>,
    },
}

impl Connector {
    /// A fresh connection that connects on first use.
    fn connect(&self) -> Result<Link, RedisError> {
        match self {
            Self::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Link::Single)
            }
            Self::Cluster { client, .. } => Ok(Link::Cluster(
                client.get_pending_async_connection_with_config(ClusterConfig::new()),
            )),
        }
    }
}

/// The connection commands run on: one server's managed connection, or a
/// cluster connection (routes each command by its key's slot and refreshes
/// the slot map; redirects are followed by [`Link::query`]).
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// One node's answers to a batch: per slot group (its index), the values.
type NodeAnswers = Vec<(usize, Vec<Option<Vec<u8>>>)>;

/// Redirects (and `TRYAGAIN` waits) one cluster command may follow.
const MAX_REDIRECTS: usize = 3;
/// The wait before trying again a multi-key command refused with `TRYAGAIN`
/// (its keys are split between two nodes while their slot migrates).
const TRY_AGAIN_AFTER: Duration = Duration::from_millis(5);

/// Where a cluster command goes next.
enum Hop {
    /// By its key's slot, on the driver's slot map.
    BySlot,
    /// `MOVED`: the node that now owns the slot.
    Moved { host: String, port: u16 },
    /// `ASK`: the node importing the slot, with `ASKING` in the same write.
    Ask { host: String, port: u16 },
}

impl Link {
    /// One command about one slot's keys, its answer as `T`.
    ///
    /// On a cluster, redirects are followed here, not by the driver (whose
    /// retries are off, see `build_cluster_client`): `MOVED` goes to the node
    /// named (the driver refreshes its slot map meanwhile); `ASK` sends
    /// `ASKING` and the command to the node named **in one write**. The
    /// driver sends `ASKING` as a request of its own and the command after
    /// its answer, so on the node's shared connection another request can
    /// take the one-shot flag in between; the importing node then answers
    /// `MOVED` back to the source, the source `ASK` again, and the command
    /// fails once the retries are spent (measured: 1,673 of 3,200 concurrent
    /// reads of a migrating slot failed that way, with a slot-map refresh per
    /// `MOVED`). `TRYAGAIN` (a multi-key command whose keys are split by a
    /// migration) is tried again after a few milliseconds.
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let connection = match self {
            Self::Single(connection) => return command.query_async(connection).await,
            Self::Cluster(connection) => connection,
        };
        redirected(connection, |mut connection, hop| async move {
            match hop {
                Hop::BySlot => {
                    redis::aio::ConnectionLike::req_packed_command(&mut connection, command).await
                }
                Hop::Moved { host, port } => {
                    let route = SingleNodeRoutingInfo::ByAddress { host, port };
                    connection
                        .route_command(command.clone(), RoutingInfo::SingleNode(route))
                        .await
                }
                Hop::Ask { host, port } => {
                    let mut asking = redis::pipe();
                    asking.cmd("ASKING").add_command(command.clone());
                    let route = SingleNodeRoutingInfo::ByAddress { host, port };
                    last_answer(connection.route_pipeline(asking, 1, 1, route).await)
                }
            }
        })
        .await
    }
}

/// The last answer of a pipeline routed with an offset (the command after
/// `ASKING`, or `EXEC`).
fn last_answer(answers: redis::RedisResult<Vec<redis::Value>>) -> redis::RedisResult<redis::Value> {
    answers.and_then(|mut answers| {
        answers
            .pop()
            .ok_or_else(|| RedisError::from((ErrorKind::Client, "no answer from the node")))
    })
}

/// Sends with `send` (to where the slot map routes, then wherever an answer
/// redirects), at most [`MAX_REDIRECTS`] redirects; the answer as `T`.
async fn redirected<T, F, Fut>(connection: &ClusterConnection, send: F) -> redis::RedisResult<T>
where
    T: redis::FromRedisValue,
    F: Fn(ClusterConnection, Hop) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<redis::Value>>,
{
    let mut hop = Hop::BySlot;
    let mut hops = 0;
    loop {
        let answer = send(connection.clone(), hop)
            .await
            .and_then(redis::Value::extract_error);
        let error = match answer {
            Ok(value) => return redis::from_redis_value(value).map_err(RedisError::from),
            Err(error) if hops < MAX_REDIRECTS => error,
            Err(error) => return Err(error),
        };
        hops += 1;
        hop = match next_hop(&error).await {
            Some(next) => next,
            None => return Err(error),
        };
    }
}

impl Link {
    /// `commands` as one transaction (`MULTI` ... `EXEC`) about one slot's
    /// keys: the answer of each. On a cluster it goes to the slot's master,
    /// and redirects are followed as by [`Link::query`]: after `ASK`, one
    /// `ASKING` before `MULTI` suffices for the whole transaction.
    async fn transaction(
        &mut self,
        slot: u16,
        commands: &[redis::Cmd],
    ) -> redis::RedisResult<Vec<redis::Value>> {
        let transaction = |asking: bool| {
            let mut pipeline = redis::pipe();
            if asking {
                pipeline.cmd("ASKING");
            }
            pipeline.cmd("MULTI");
            for command in commands {
                pipeline.add_command(command.clone());
            }
            pipeline.cmd("EXEC");
            pipeline
        };
        let connection = match self {
            Self::Single(connection) => {
                let mut pipeline = redis::pipe();
                pipeline.atomic();
                for command in commands {
                    pipeline.add_command(command.clone());
                }
                return pipeline.query_async(connection).await;
            }
            Self::Cluster(connection) => connection,
        };
        redirected(connection, |mut connection, hop| {
            let (pipeline, skip, route) = match hop {
                Hop::BySlot => (
                    transaction(false),
                    commands.len() + 1,
                    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)),
                ),
                Hop::Moved { host, port } => (
                    transaction(false),
                    commands.len() + 1,
                    SingleNodeRoutingInfo::ByAddress { host, port },
                ),
                Hop::Ask { host, port } => (
                    transaction(true),
                    commands.len() + 2,
                    SingleNodeRoutingInfo::ByAddress { host, port },
                ),
            };
            async move { last_answer(connection.route_pipeline(pipeline, skip, 1, route).await) }
        })
        .await
    }
}

/// Where a cluster command refused with `error` goes next, if anywhere
/// (after the short wait a `TRYAGAIN` asks for).
async fn next_hop(error: &RedisError) -> Option<Hop> {
    match (error.retry_method(), error.redirect_node()) {
        (redis::RetryMethod::AskRedirect, Some((node, _))) => {
            split_node(node).map(|(host, port)| Hop::Ask { host, port })
        }
        (redis::RetryMethod::MovedRedirect, Some((node, _))) => {
            split_node(node).map(|(host, port)| Hop::Moved { host, port })
        }
        _ if server_error(error).is_some_and(|(code, _)| code == "TRYAGAIN") => {
            tokio::time::sleep(TRY_AGAIN_AFTER).await;
            Some(Hop::BySlot)
        }
        _ => None,
    }
}

/// The slot map, as a random node's `CLUSTER SLOTS` says.
async fn load_slot_map(connection: &mut ClusterConnection) -> redis::RedisResult<SlotMap> {
    let mut command = redis::cmd("CLUSTER");
    command.arg("SLOTS");
    let answer = connection
        .route_command(
            command,
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    SlotMap::parse(answer)
        .ok_or_else(|| RedisError::from((ErrorKind::Client, "CLUSTER SLOTS not understood")))
}

/// `host:port` (the address in a `MOVED` or `ASK`), split.
fn split_node(node: &str) -> Option<(String, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        command: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(command),
            Self::Cluster(connection) => connection.req_packed_command(command),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The bookkeeping behind rebuilds.
struct Healing {
    rebuild_after: u32,
    consecutive_failures: AtomicU32,
    /// Rebuilds since the last success: spaces the next one.
    failed_rebuilds: AtomicU32,
    /// When the last rebuild happened (ms since `epoch`, 0: never).
    last_rebuild_ms: AtomicU64,
    /// When a refusal was last published (ms since `epoch`, 0: never).
    last_refusal_ms: AtomicU64,
    rebuilds: AtomicU64,
    epoch: Instant,
}

/// The first rebuild after a success waits at least this long after the
/// previous one; each further rebuild without a success in between doubles
/// it, up to [`MAX_REBUILD_SPACING`].
const MIN_REBUILD_SPACING: Duration = Duration::from_millis(250);
const MAX_REBUILD_SPACING: Duration = Duration::from_secs(1);
/// A refusal is published to the status signal at most this often.
const REFUSAL_PUBLISH_SPACING: Duration = Duration::from_secs(1);

impl Healing {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.shared.target)
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
        Self::with_status(config, StatusSignal::new())
    }

    /// Like [`RedisBackend::new`], publishing refusals and rebuilds into
    /// `status` (the stack's one status signal).
    ///
    /// # Errors
    /// [`RedisSetupError::InvalidUrl`] when the URL does not parse.
    pub fn with_status(
        config: &RedisConfig,
        status: StatusSignal,
    ) -> Result<Self, RedisSetupError> {
        let (connector, target) = match config.mode {
            RedisMode::Standalone => {
                let (client, target) = build_client(config, Protocol::Resp2)?;
                // No per-command timer in the driver: every command is
                // bounded once, by `run` (the operation bound, never beyond
                // `response_timeout`) or by `ping`. The second timer cost
                // a hit's typed read about 1,200 instructions, the whole
                // request 300 to 400 (callgrind, docs/PERFORMANCE.md, "One
                // timer per Redis command").
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(None)
                    // Few, short retries: a cache fails fast and heals in the background.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                (Connector::Single { client, config }, target)
            }
            RedisMode::Cluster => build_cluster_client(config)?,
        };
        let connection = connector
            .connect()
            .map_err(|e| RedisSetupError::InvalidUrl(redact(&e.to_string(), config)))?;
        tracing::info!(%target, "redis backend configured (connects on first use)");
        Ok(Self {
            shared: Arc::new(Shared {
                connector,
                connection: RwLock::new(connection),
                compare_and_delete: Script::new(COMPARE_AND_DELETE),
                target,
                response_timeout: config.response_timeout,
                operation_timeout: config.operation_timeout.min(config.response_timeout),
                healing: Healing {
                    rebuild_after: config.rebuild_after_failures.max(1),
                    consecutive_failures: AtomicU32::new(0),
                    failed_rebuilds: AtomicU32::new(0),
                    last_rebuild_ms: AtomicU64::new(0),
                    last_refusal_ms: AtomicU64::new(0),
                    rebuilds: AtomicU64::new(0),
                    epoch: Instant::now(),
                },
                slots: Slots::default(),
                status,
            }),
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
                target: self.shared.target.clone(),
                reason,
            }),
            Err(other) => Err(RedisSetupError::Unreachable {
                target: self.shared.target.clone(),
                reason: other.to_string(),
            }),
        }
    }

    /// `host:port/db` of the server, for logs.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The indices of `keys` grouped so that each group can go in one
    /// pipeline: all of them at once on one server, by hash slot on a
    /// cluster (in order of first appearance).
    fn by_slot<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
        if !matches!(self.shared.connector, Connector::Cluster { .. }) {
            return vec![keys.enumerate().map(|(i, _)| i).collect()];
        }
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (index, key) in keys.enumerate() {
            let slot = slot(key.as_bytes());
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, group)) => group.push(index),
                None => groups.push((slot, vec![index])),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    }

    /// Cluster: the slot map, loaded if none is held and a load may start
    /// (see [`Slots`]); `None` on one server, or when it cannot be had now.
    async fn slot_map(&self) -> Option<Arc<SlotMap>> {
        // Held only on a cluster: the common case costs one read lock.
        if let Some(map) = self.shared.slots.current() {
            return Some(map);
        }
        let Link::Cluster(mut connection) = self.connection() else {
            return None;
        };
        if !self.shared.slots.may_load() {
            return None;
        }
        let asked = load_slot_map(&mut connection);
        let map = crate::deadline::within(self.shared.operation_timeout, asked)
            .await?
            .ok()?;
        Some(self.shared.slots.store(map))
    }

    /// Cluster: `PING` to every master the slot map names, all at once; the
    /// map is loaded first if none is held, and dropped when a master does
    /// not answer (the next ping asks `CLUSTER SLOTS` again, which names the
    /// replica once it is promoted).
    ///
    /// Not the driver's `PING`: it goes to the masters it holds a
    /// connection to and leaves out one it could not reconnect, so with a
    /// master down it answered `PONG`. The breaker's probe then let trial
    /// requests in, those for the lost master's slots failed, and each
    /// failed trial doubled the probe interval: the whole cache stayed off
    /// for up to `max_probe_interval` after the replica was promoted.
    async fn ping_masters(&self, connection: &mut ClusterConnection) -> redis::RedisResult<()> {
        let map = match self.shared.slots.current() {
            Some(map) => map,
            None => match load_slot_map(connection).await {
                Ok(map) => self.shared.slots.store(map),
                Err(error) => return Err(self.why_no_node_answers(error).await),
            },
        };
        // A cluster that serves no slot answers no key (`CLUSTERDOWN`).
        if map.masters().next().is_none() {
            self.shared.slots.forget();
            return Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master serves a slot",
            )));
        }
        let pings = map.masters().map(|(host, port)| {
            let mut connection = connection.clone();
            let route = SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            };
            async move {
                connection
                    .route_command(redis::cmd("PING"), RoutingInfo::SingleNode(route))
                    .await
                    .and_then(redis::Value::extract_error)
            }
        });
        if let Err(error) = futures::future::try_join_all(pings).await {
            self.shared.slots.forget();
            return Err(error);
        }
        Ok(())
    }

    /// No node answered `CLUSTER SLOTS` through the cluster client, whose
    /// `error` then says only that it holds no connection, also when the
    /// reason is a refused login. The seeds are asked on their own, all at
    /// once: a refused login is returned instead, so that it reads as one,
    /// as on one server (and heals by a rebuild); otherwise `error`.
    async fn why_no_node_answers(&self, error: RedisError) -> RedisError {
        let Connector::Cluster { seeds, .. } = &self.shared.connector else {
            return error;
        };
        let asked = seeds.iter().map(|seed| async move {
            let mut connection = seed.get_multiplexed_async_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        });
        futures::future::join_all(asked)
            .await
            .into_iter()
            .filter_map(Result::err)
            .find(|refused| {
                matches!(
                    classify(refused, Duration::ZERO),
                    BackendError::Unauthorized(_)
                )
            })
            .unwrap_or(error)
    }

    /// A cluster `mget` of keys in several slots: to each node, one pipeline
    /// of the `MGET`s of the slots the map says it serves (one request per
    /// node, all at once). A node's pipeline that fails (a `MOVED`, an `ASK`
    /// while a slot migrates, a node down or replaced) drops the map and is
    /// sent again slot by slot, each `MGET` following its own redirect.
    async fn mget_by_node(
        &self,
        keys: &[String],
        groups: &[Vec<usize>],
        map: &SlotMap,
    ) -> Result<Vec<Option<Bytes>>, BackendError> {
        let mget = |group: &Vec<usize>| mget_of(keys, group);
        // The groups each node serves (a group whose slot the map does not
        // cover goes alone, by slot).
        let mut by_node: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for (index, group) in groups.iter().enumerate() {
            let node = map.node_of(slot(keys[group[0]].as_bytes()));
            match by_node
                .iter_mut()
                .find(|(n, _)| node.is_some() && *n == node)
            {
                Some((_, members)) => members.push(index),
                None => by_node.push((node, vec![index])),
            }
        }
        let slots = &self.shared.slots;
        let answers: Vec<NodeAnswers> = self
            .run(|connection| async move {
                let sent = by_node.iter().map(|(node, members)| {
                    let mut connection = connection.clone();
                    async move {
                        let address = node.and_then(|node| map.address(node));
                        if let (Some((host, port)), Link::Cluster(cluster)) =
                            (address, &mut connection)
                        {
                            let mut pipeline = redis::pipe();
                            for &member in members {
                                pipeline.add_command(mget(&groups[member]));
                            }
                            let route = SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            };
                            match cluster
                                .route_pipeline(pipeline, 0, members.len(), route)
                                .await
                            {
                                Ok(values) if values.len() == members.len() => {
                                    let mut answers = Vec::with_capacity(members.len());
                                    for (&member, value) in members.iter().zip(values) {
                                        let value = value.extract_error()?;
                                        answers.push((member, redis::from_redis_value(value)?));
                                    }
                                    return Ok(answers);
                                }
                                // A moved slot, a dead or replaced node: the map
                                // is not to be trusted until loaded again.
                                Ok(_) | Err(_) => slots.forget(),
                            }
                        }
                        // Slot by slot, all at once, each following its own
                        // redirect. One after the other, a lookup of three
                        // slots moved by a resharding paid three chains of
                        // `MOVED`, a slot-map refresh by the driver (which
                        // holds every request back while it runs) and the
                        // hop to the new owner, and could pass its operation
                        // bound on a loaded machine.
                        let sent = members.iter().map(|&member| {
                            let mut connection = connection.clone();
                            async move {
                                let answer = connection.query(&mget(&groups[member])).await?;
                                Ok::<_, RedisError>((member, answer))
                            }
                        });
                        futures::future::try_join_all(sent).await
                    }
                });
                futures::future::try_join_all(sent).await
            })
            .await?;
        in_key_order(
            keys.len(),
            answers
                .into_iter()
                .flatten()
                .map(|(member, answer)| (groups[member].as_slice(), answer)),
        )
    }

    /// How often the connection has been rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.shared.healing.rebuilds.load(Ordering::Relaxed)
    }

    fn connection(&self) -> Link {
        match self.shared.connection.read() {
            Ok(connection) => connection.clone(),
            // A panic while replacing it cannot leave it half-written.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Runs one command on the current connection within the operation
    /// bound, and keeps the healing bookkeeping.
    async fn run<T, F>(&self, command: impl FnOnce(Link) -> F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<T, RedisError>>,
    {
        let limit = self.shared.operation_timeout;
        match crate::deadline::within(limit, command(self.connection())).await {
            Some(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Some(Err(error)) => {
                let error = classify(&error, self.shared.response_timeout);
                self.failed(&error);
                Err(error)
            }
            None => {
                let error = BackendError::Timeout(limit);
                self.failed(&error);
                Err(error)
            }
        }
    }

    fn succeeded(&self) {
        let healing = &self.shared.healing;
        // Read before writing: no shared cache line is dirtied on the hit path.
        if healing.consecutive_failures.load(Ordering::Relaxed) != 0 {
            healing.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if healing.failed_rebuilds.load(Ordering::Relaxed) != 0 {
            healing.failed_rebuilds.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, error: &BackendError) {
        let healing = &self.shared.healing;
        match error {
            // One key holds a list: the connection is fine.
            BackendError::WrongType(_) => {}
            BackendError::Rejected(reason) => {
                self.publish_refusal(reason);
                self.count_failure();
            }
            // A stored refused login never heals by itself: rebuild at once.
            BackendError::Unauthorized(_) => {
                healing.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                self.rebuild("redis refused the login");
            }
            _ => self.count_failure(),
        }
    }

    fn count_failure(&self) {
        let healing = &self.shared.healing;
        let failures = healing.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= healing.rebuild_after {
            self.rebuild("consecutive failed operations");
        }
    }

    fn publish_refusal(&self, reason: &str) {
        let healing = &self.shared.healing;
        let now = healing.now_ms();
        let last = healing.last_refusal_ms.load(Ordering::Relaxed);
        let spacing = REFUSAL_PUBLISH_SPACING.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < spacing {
            return;
        }
        if healing
            .last_refusal_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let reason = reason.to_owned();
        self.shared.status.update(|status| {
            status.refusal = Some(Refusal {
                reason,
                at: Instant::now(),
            });
            true
        });
    }

    /// Replaces the connection with a fresh lazy one, unless the last
    /// rebuild was too recent.
    fn rebuild(&self, why: &'static str) {
        let healing = &self.shared.healing;
        let now = healing.now_ms();
        let last = healing.last_rebuild_ms.load(Ordering::Relaxed);
        let attempt = healing.failed_rebuilds.load(Ordering::Relaxed).min(8);
        let spacing = (MIN_REBUILD_SPACING * 2u32.pow(attempt)).min(MAX_REBUILD_SPACING);
        if last != 0 && now.saturating_sub(last) < spacing.as_millis() as u64 {
            return;
        }
        // One caller wins; the others go on with the connection it installs.
        if healing
            .last_rebuild_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let fresh = match self.shared.connector.connect() {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, "cannot rebuild the redis connection");
                return;
            }
        };
        match self.shared.connection.write() {
            Ok(mut connection) => *connection = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        healing.consecutive_failures.store(0, Ordering::Relaxed);
        let failed_before = healing.failed_rebuilds.fetch_add(1, Ordering::Relaxed);
        let rebuilds = healing.rebuilds.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.status.update(|status| {
            status.rebuilds = rebuilds;
            true
        });
        if failed_before == 0 {
            tracing::warn!(target = %self.shared.target, why, rebuilds, "redis connection rebuilt");
        } else {
            tracing::debug!(target = %self.shared.target, why, rebuilds, "redis connection rebuilt again");
        }
    }
}

/// Which protocol a client speaks: RESP2 for commands (what every server and
/// proxy understands), RESP3 where server pushes are needed (client tracking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Resp2,
    Resp3,
}

/// A client for `config` (credentials, database, TCP settings, TLS) and the
/// `host:port/db` it reaches, without any I/O.
pub(crate) fn build_client(
    config: &RedisConfig,
    protocol: Protocol,
) -> Result<(redis::Client, String), RedisSetupError> {
    let info = config.url.as_str().into_connection_info().map_err(|e| {
        // The driver's message may quote the URL, which may hold a password.
        RedisSetupError::InvalidUrl(redact(&e.to_string(), config))
    })?;
    let mut settings = info.redis_settings().clone();
    if protocol == Protocol::Resp3 {
        settings = settings.set_protocol(redis::ProtocolVersion::RESP3);
    }
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
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings(config));
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
    Ok((client, target))
}

/// A client for one node of the cluster `config` (`redis://host:port`) on
/// its own, with the cluster's credentials and TLS, without I/O.
pub(crate) fn cluster_node_client(
    config: &RedisConfig,
    url: &str,
    protocol: Protocol,
) -> Result<redis::Client, RedisSetupError> {
    let node = RedisConfig {
        mode: RedisMode::Standalone,
        url: url.to_owned(),
        nodes: Vec::new(),
        db: None,
        ..config.clone()
    };
    build_client(&node, protocol).map(|(client, _)| client)
}

/// A cluster client for `config.nodes` (credentials, timeouts, TCP settings,
/// TLS from `rediss://` nodes and `ca_file`) and a name for logs, without I/O.
fn build_cluster_client(config: &RedisConfig) -> Result<(Connector, String), RedisSetupError> {
    if config.nodes.is_empty() {
        return Err(RedisSetupError::InvalidUrl(
            "cluster mode needs at least one seed node (redis.nodes)".into(),
        ));
    }
    for node in &config.nodes {
        check_redis_node(node).map_err(RedisSetupError::InvalidUrl)?;
    }
    let urls: Vec<String> = config.nodes.iter().map(|node| node_url(node)).collect();
    let mut builder = ClusterClient::builder(urls.clone())
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        .tcp_settings(tcp_settings(config))
        // No retries by the driver: `Link::query` follows MOVED and ASK
        // itself (the driver's ASK is unsafe under concurrency), and any
        // other failure is a miss at once (a cache fails fast; the breaker
        // and the driver's reconnections heal in the background).
        .retries(0);
    if let Some(username) = &config.username {
        builder = builder.username(username);
    }
    if let Some(password) = &config.password {
        builder = builder.password(password.expose());
    }
    if let Some(path) = &config.ca_file {
        let root_cert = std::fs::read(path).map_err(|e| {
            RedisSetupError::Tls(format!("cannot read CA file {}: {e}", path.display()))
        })?;
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    let client = builder
        .build()
        .map_err(|e| RedisSetupError::InvalidUrl(redact(&e.to_string(), config)))?;
    let target = format!(
        "cluster({})",
        urls.iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(",")
    );
    let seeds = urls
        .iter()
        .map(|url| cluster_node_client(config, url, Protocol::Resp2))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Connector::Cluster { client, seeds }, target))
}

/// Nodelay (a cache answers small requests; Nagle would hold them back),
/// keepalive probes after 10 s idle, and `TCP_USER_TIMEOUT`: data unacknowledged
/// for this long (a black-holed path) makes the kernel drop the connection,
/// which the driver sees as an I/O error and reconnects.
fn tcp_settings(config: &RedisConfig) -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(config.response_timeout.max(Duration::from_secs(1)));
    #[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
    let _ = config;
    settings
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

/// Checks that `node` (a cluster seed: `host:port` or a Redis URL) can be
/// used, without any I/O. The message never quotes a password in it.
///
/// # Errors
/// Why the node's address does not parse.
pub fn check_redis_node(node: &str) -> Result<(), String> {
    check_redis_url(&node_url(node))
}

/// Maps a driver error to the port's error kinds. A server error means the
/// same whether it came alone or inside a pipeline (where the driver reports
/// it as a list of per-command errors):
///
/// | server says | means | kind | opens the circuit |
/// | --- | --- | --- | --- |
/// | `NOAUTH`, `WRONGPASS` | our login is refused | `Unauthorized` | yes |
/// | `LOADING`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN` | Redis cannot serve now | `Unavailable` | yes |
/// | `OOM` | writes refused under `maxmemory`; reads work | `Rejected` | no |
/// | `READONLY` | a replica: writes refused; reads work | `Rejected` | no |
/// | `NOPERM` | the ACL user may not run this command or key | `Rejected` | no |
/// | `NOSCRIPT`, `EXECABORT`, `ERR`, anything else | this command failed | `Rejected` | no |
/// | `WRONGTYPE` | the key holds a list, a hash... | `WrongType` | no |
fn classify(error: &RedisError, response_timeout: Duration) -> BackendError {
    if error.is_timeout() {
        return BackendError::Timeout(response_timeout);
    }
    if error.kind() == ErrorKind::AuthenticationFailed {
        return BackendError::Unauthorized(error.to_string());
    }
    if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        return BackendError::Unavailable(error.to_string());
    }
    let Some((code, text)) = server_error(error) else {
        return BackendError::Unknown(error.to_string());
    };
    match code.as_str() {
        "NOAUTH" | "WRONGPASS" => BackendError::Unauthorized(text),
        "LOADING" | "BUSY" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" => {
            BackendError::Unavailable(text)
        }
        "WRONGTYPE" => BackendError::WrongType(text),
        _ => BackendError::Rejected(text),
    }
}

/// The server's error code and its message as Redis wrote it (`OOM command
/// not allowed...`), for a single command or the first failed command of a
/// pipeline (where the driver's own `code()` knows only the codes it names).
fn server_error(error: &RedisError) -> Option<(String, String)> {
    let errors = error.clone().into_server_errors()?;
    let (_, first) = errors.first()?;
    let code = first.code().to_owned();
    let text = match first.details() {
        Some(details) => format!("{code} {details}"),
        None => code.clone(),
    };
    Some((code, text))
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
        let mut command = redis::cmd("GET");
        command.arg(key);
        let value: Option<Vec<u8>> = self
            .run(|mut connection| async move { connection.query(&command).await })
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value.as_ref());
        if let Some(ttl) = ttl {
            command.arg("PX").arg(ttl_millis(ttl));
        }
        self.run(|mut connection| async move { connection.query::<()>(&command).await })
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let mut command = redis::cmd("DEL");
        command.arg(key);
        let removed: i64 = self
            .run(|mut connection| async move { connection.query(&command).await })
            .await?;
        Ok(removed > 0)
    }

    /// One server: the script by its digest (`EVALSHA`, loaded on first
    /// `NOSCRIPT`). A cluster: the script's text (`EVAL`), so that a node
    /// reached by a redirect, which may never have loaded it, runs it too.
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let script = &self.shared.compare_and_delete;
        let removed: i64 = self
            .run(|mut connection| async move {
                match connection {
                    Link::Single(_) => {
                        script
                            .key(key)
                            .arg(expected)
                            .invoke_async(&mut connection)
                            .await
                    }
                    Link::Cluster(_) => {
                        let mut command = redis::cmd("EVAL");
                        command
                            .arg(COMPARE_AND_DELETE)
                            .arg(1)
                            .arg(key)
                            .arg(expected);
                        connection.query(&command).await
                    }
                }
            })
            .await?;
        Ok(removed > 0)
    }

    /// One server: one `MGET`. A cluster: one `MGET` per hash slot (Redis
    /// refuses an `MGET` across slots), all sent at once; the driver writes a
    /// node's together on its connection.
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.by_slot(keys.iter().map(String::as_str));
        if groups.len() > 1
            && let Some(map) = self.slot_map().await
        {
            return self.mget_by_node(keys, &groups, &map).await;
        }
        let commands: Vec<redis::Cmd> = groups.iter().map(|group| mget_of(keys, group)).collect();
        let answers: Vec<Vec<Option<Vec<u8>>>> = self
            .run(|connection| async move {
                let sent = commands.iter().map(|command| {
                    let mut connection = connection.clone();
                    async move { connection.query(command).await }
                });
                futures::future::try_join_all(sent).await
            })
            .await?;
        in_key_order(keys.len(), groups.iter().map(Vec::as_slice).zip(answers))
    }

    /// One atomic transaction (`MULTI`, `MGET`, a `PTTL` per key, `EXEC`):
    /// each value comes with the TTL it had when it was read, never another
    /// writer's. On a cluster, one such transaction per slot (a transaction
    /// cannot span slots), all sent at once.
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.by_slot(keys.iter().map(String::as_str));
        let transactions: Vec<(u16, Vec<redis::Cmd>)> = groups
            .iter()
            .map(|indices| {
                let group: Vec<&String> = indices.iter().map(|&i| &keys[i]).collect();
                let mut commands = Vec::with_capacity(group.len() + 1);
                let mut mget = redis::cmd("MGET");
                mget.arg(&group);
                commands.push(mget);
                for key in &group {
                    let mut pttl = redis::cmd("PTTL");
                    pttl.arg(*key);
                    commands.push(pttl);
                }
                (slot(group[0].as_bytes()), commands)
            })
            .collect();
        let answers: Vec<Vec<redis::Value>> = self
            .run(|connection| async move {
                let sent = transactions.iter().map(|(slot, commands)| {
                    let mut connection = connection.clone();
                    async move { connection.transaction(*slot, commands).await }
                });
                futures::future::try_join_all(sent).await
            })
            .await?;
        let mut found: Vec<Option<(Bytes, Remaining)>> = vec![None; keys.len()];
        for (indices, answer) in groups.iter().zip(answers) {
            for (&index, value) in indices.iter().zip(with_ttls(answer, indices.len())?) {
                found[index] = value;
            }
        }
        Ok(found)
    }

    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        if matches!(self.shared.connector, Connector::Cluster { .. }) {
            // One `SET` per entry, all sent at once (the driver writes a
            // node's together on its connection): each follows its own
            // redirect while its slot migrates. A pipeline would not: the
            // driver resends a whole pipeline to where one command was
            // redirected, writing on the importing node keys that the
            // source still holds (the migration then stops on BUSYKEY).
            let commands: Vec<redis::Cmd> = entries.iter().map(set_command).collect();
            return self
                .run(|connection| async move {
                    let sent = commands.iter().map(|command| {
                        let mut connection = connection.clone();
                        async move { connection.query::<()>(command).await }
                    });
                    futures::future::try_join_all(sent).await.map(drop)
                })
                .await;
        }
        // One pipeline, one round trip; each entry keeps its own TTL, which
        // MSET cannot express.
        let groups = self.by_slot(entries.iter().map(|entry| entry.key.as_str()));
        let pipelines: Vec<redis::Pipeline> = groups
            .iter()
            .map(|indices| {
                let mut pipeline = redis::pipe();
                for entry in indices.iter().map(|&i| &entries[i]) {
                    pipeline.add_command(set_command(entry)).ignore();
                }
                pipeline
            })
            .collect();
        self.run(|connection| async move {
            let sent = pipelines.iter().map(|pipeline| {
                let mut connection = connection.clone();
                async move { pipeline.query_async::<()>(&mut connection).await }
            });
            futures::future::try_join_all(sent).await.map(drop)
        })
        .await
    }

    /// Not cut at the operation bound: the health monitor measures how slow
    /// Redis is with its own, longer bound; this one's is `response_timeout`.
    /// A ping abandoned by its caller's bound still counts as a timeout
    /// toward a rebuild, so probes heal a stuck connection even when no
    /// request reaches it.
    async fn ping(&self) -> Result<(), BackendError> {
        let mut guard = Abandoned {
            backend: self,
            answered: false,
        };
        let connection = self.connection();
        let bound = self.shared.response_timeout;
        let pinged = async move {
            match connection {
                Link::Single(mut connection) => redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(drop),
                Link::Cluster(mut connection) => self.ping_masters(&mut connection).await,
            }
        };
        let result = crate::deadline::within(bound, pinged).await;
        guard.answered = true;
        let error = match result {
            Some(Ok(_)) => {
                self.succeeded();
                return Ok(());
            }
            Some(Err(error)) => classify(&error, bound),
            None => BackendError::Timeout(bound),
        };
        self.failed(&error);
        Err(error)
    }
}

/// Counts a ping dropped before its answer as a timed-out operation.
struct Abandoned<'a> {
    backend: &'a RedisBackend,
    answered: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.backend.failed(&BackendError::Timeout(
                self.backend.shared.operation_timeout,
            ));
        }
    }
}

/// `MGET` of the keys at `indices`.
fn mget_of(keys: &[String], indices: &[usize]) -> redis::Cmd {
    let mut command = redis::cmd("MGET");
    for &index in indices {
        command.arg(&keys[index]);
    }
    command
}

/// The answers of per-slot `MGET`s (each with the indices of its keys) put
/// back in the order of the `len` keys asked.
fn in_key_order<'a>(
    len: usize,
    answers: impl IntoIterator<Item = (&'a [usize], Vec<Option<Vec<u8>>>)>,
) -> Result<Vec<Option<Bytes>>, BackendError> {
    let mut found: Vec<Option<Bytes>> = vec![None; len];
    for (indices, answer) in answers {
        if answer.len() != indices.len() {
            return Err(BackendError::Unknown(format!(
                "MGET answered {} values for {} keys",
                answer.len(),
                indices.len()
            )));
        }
        for (&index, value) in indices.iter().zip(answer) {
            found[index] = value.map(Bytes::from);
        }
    }
    Ok(found)
}

/// `SET key value [PX ttl] [NX]` for one entry.
fn set_command(entry: &Entry) -> redis::Cmd {
    let mut command = redis::cmd("SET");
    command.arg(&entry.key).arg(entry.value.as_ref());
    if let Some(ttl) = entry.ttl {
        command.arg("PX").arg(ttl_millis(ttl));
    }
    if entry.only_if_absent {
        command.arg("NX");
    }
    command
}

/// The answer of one `MULTI MGET PTTL... EXEC` for `n` keys: each value with
/// its remaining TTL.
fn with_ttls(
    mut answers: Vec<redis::Value>,
    n: usize,
) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
    let malformed = |e: redis::ParsingError| BackendError::Unknown(format!("MGET with PTTL: {e}"));
    // MGET's answer, then one integer per key.
    let ttls = answers.split_off(1.min(answers.len()));
    let values: Vec<Option<Vec<u8>>> = match answers.pop() {
        Some(values) => redis::FromRedisValue::from_redis_value(values).map_err(malformed)?,
        None => Vec::new(),
    };
    let ttls = ttls
        .into_iter()
        .map(redis::FromRedisValue::from_redis_value)
        .collect::<Result<Vec<i64>, _>>()
        .map_err(malformed)?;
    if values.len() != n || ttls.len() != n {
        return Err(BackendError::Unknown(format!(
            "MGET with PTTL answered {} values and {} TTLs for {n} keys",
            values.len(),
            ttls.len(),
        )));
    }
    Ok(values
        .into_iter()
        .zip(ttls)
        .map(|(value, ttl)| {
            value.map(|value| {
                let remaining = match u64::try_from(ttl) {
                    Ok(ms) => Remaining::For(Duration::from_millis(ms)),
                    // -1: no expiry; -2 (gone between MGET and PTTL) cannot
                    // happen in a transaction, and reads as unknown.
                    Err(_) if ttl == -1 => Remaining::Forever,
                    Err(_) => Remaining::Unknown,
                };
                (Bytes::from(value), remaining)
            })
        })
        .collect())
}

/// Redis Cluster's hash slot of `key`: CRC16 (XMODEM) of the key, or of its
/// hash tag (the part between the first `{` and the next `}`, when not
/// empty), modulo 16384.
fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
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

    #[test]
    fn keys_map_to_redis_clusters_hash_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        // CRC16-XMODEM of "123456789" is 0x31C3, below 16384.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "an empty tag hashes the whole key"
        );
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn seed_nodes_come_from_a_list_or_a_comma_separated_string() {
        let from_env: RedisConfig =
            serde_json::from_str(r#"{"mode": "cluster", "nodes": " a:7000, b:7001 ,,"}"#).unwrap();
        assert_eq!(from_env.mode, RedisMode::Cluster);
        assert_eq!(from_env.nodes, vec!["a:7000", "b:7001"]);
        let from_file: RedisConfig =
            serde_json::from_str(r#"{"nodes": ["redis://a:7000"]}"#).unwrap();
        assert_eq!(from_file.nodes, vec!["redis://a:7000"]);
        assert_eq!(node_url("a:7000"), "redis://a:7000");
    }

    #[tokio::test]
    async fn a_cluster_without_nodes_is_refused_and_creating_one_does_no_io() {
        let mut config = RedisConfig {
            mode: RedisMode::Cluster,
            ..RedisConfig::default()
        };
        assert!(matches!(
            RedisBackend::new(&config),
            Err(RedisSetupError::InvalidUrl(_))
        ));
        config.nodes = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
        let backend = RedisBackend::new(&config).unwrap();
        assert_eq!(
            backend.target(),
            "cluster(redis://127.0.0.1:1,redis://127.0.0.1:2)"
        );
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

    /// The error the driver makes of a server's error reply.
    fn server_error(reply: &str) -> RedisError {
        let value = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).unwrap();
        value.extract_error().unwrap_err()
    }

    /// (A pipeline's per-command errors cannot be built outside the driver;
    /// the OOM fault test sends real pipelines: `faults::under_oom...`.)
    #[test]
    fn server_errors_are_classified_by_their_code() {
        let timeout = Duration::from_secs(5);
        let cases = [
            ("NOAUTH Authentication required.", "Unauthorized"),
            ("WRONGPASS invalid username-password pair", "Unauthorized"),
            (
                "LOADING Redis is loading the dataset in memory",
                "Unavailable",
            ),
            ("BUSY Redis is busy running a script", "Unavailable"),
            ("MASTERDOWN Link with MASTER is down", "Unavailable"),
            ("CLUSTERDOWN The cluster is down", "Unavailable"),
            (
                "TRYAGAIN Multiple keys request during rehashing",
                "Unavailable",
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                "Rejected",
            ),
            (
                "READONLY You can't write against a read only replica.",
                "Rejected",
            ),
            (
                "NOPERM User reader has no permissions to run the 'set' command",
                "Rejected",
            ),
            ("NOSCRIPT No matching script.", "Rejected"),
            ("ERR unknown command", "Rejected"),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                "WrongType",
            ),
        ];
        for (reply, kind) in cases {
            let error = classify(&server_error(reply), timeout);
            let name = format!("{error:?}");
            assert!(name.starts_with(kind), "{reply}: {name}");
            // Redis's own words, code first, whatever the driver's Display says.
            let code = reply.split(' ').next().unwrap();
            assert!(error.to_string().contains(code), "{reply}: {error}");
            assert_eq!(
                error.is_backend_failure(),
                matches!(kind, "Unauthorized" | "Unavailable"),
                "{reply}"
            );
        }
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
