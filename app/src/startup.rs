//! Building the application from settings (dependency injection) and running it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use adapters::backend::{
    CircuitBreaker, DeferredFills, MemoryBackend, NearCache, NoopBackend, RedisBackend,
    RedisSetupError, StatusSignal, TimeoutBackend,
};
use adapters::health::{HealthMonitor, Readiness};
use adapters::http::{Admin, Operations, routes};
use adapters::metrics::Metrics;
use adapters::users::{InMemoryUserRepository, Latent, SqlStore, StoreSetupError, UserStoreError};
use domain::UserRepository;
use domain::{CacheManager, UserService};
use poem::Server;
use poem::endpoint::BoxEndpoint;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use ports::SharedBackend;
use thiserror::Error;

use crate::settings::{BackendKind, Settings};

/// Why the application could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    /// The Redis settings are unusable.
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    /// The users file is unusable.
    #[error(transparent)]
    Users(#[from] UserStoreError),
    /// The users store cannot be opened, migrated or filled.
    #[error(transparent)]
    Store(#[from] StoreSetupError),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The cache backend as requests see it, and its one status signal.
pub struct BuiltBackend {
    /// The outermost decorator: what typed caches and the health monitor use.
    pub backend: SharedBackend,
    /// What every layer of the stack reports (circuit, refusals, rebuilds,
    /// the near cache's tracking).
    pub status: StatusSignal,
    /// The near cache, when it is on (for its metrics).
    pub near: Option<NearCache>,
    /// The metrics the stack reports into, when `metrics.enabled`.
    pub metrics: Option<Metrics>,
    /// The fills written behind the answer, when they are (Redis with a
    /// `cache.fill_linger`): flushed at shutdown.
    pub fills: Option<DeferredFills>,
}

/// Builds the configured backend with its decorators, all publishing into one
/// [`StatusSignal`]:
/// - Redis: `CircuitBreaker(RedisBackend)`, under `NearCache` when
///   `cache.near.enabled` (outside the breaker, so that fail-safe can serve
///   kept entries while the circuit is open). The Redis backend bounds each
///   operation itself (`cache.operation_timeout_ms`), because that is where a
///   run of timeouts is seen and a stuck connection replaced; the breaker's
///   probe has the same bound. It connects lazily: the service starts while
///   Redis is down.
/// - Memory: `TimeoutBackend(MemoryBackend)`.
/// - No-op: the bare `NoopBackend`.
///
/// Over that, when `metrics.enabled`, `Metered` (it sees what callers see,
/// breaker refusals too), and outermost, over Redis with a non-zero
/// `cache.fill_linger`, `DeferredFills` (the layers below see each batch of
/// fills as one `mset`: counted, timed, refused by the breaker). This is the
/// stack the service runs; the backend contract suite runs on it too.
/// Spawns its background tasks (probes, watchers, the fill writer): call
/// within a tokio runtime.
///
/// # Errors
/// [`StartupError::Redis`] when the Redis settings cannot be used.
pub fn build_backend(settings: &Settings) -> Result<BuiltBackend, StartupError> {
    let timeout = settings.cache.operation_timeout;
    let status = StatusSignal::new();
    let mut near_cache = None;
    let backend: SharedBackend = match settings.cache.backend() {
        BackendKind::Noop => Arc::new(NoopBackend),
        BackendKind::Memory => {
            let memory = MemoryBackend::new(settings.memory);
            Arc::new(TimeoutBackend::new(Arc::new(memory), timeout))
        }
        BackendKind::Redis => {
            let backend = RedisBackend::with_status(&settings.redis, status.clone())?;
            // Say early, once, whether Redis is usable (a wrong password, a
            // wrong host) without delaying start-up or failing it.
            let probe = backend.clone();
            tokio::spawn(async move {
                match probe.check().await {
                    Ok(()) => tracing::info!(target = probe.target(), "redis answers"),
                    Err(error) => {
                        tracing::error!(%error, "redis is not usable; serving without the cache until it is")
                    }
                }
            });
            let breaker: SharedBackend = Arc::new(CircuitBreaker::with_status(
                Arc::new(backend),
                settings.cache.breaker,
                status.clone(),
            ));
            if settings.cache.near.enabled {
                let prefixes: Vec<String> = CacheManager::NAMESPACES
                    .iter()
                    .map(|namespace| format!("{namespace}:"))
                    .collect();
                let near = NearCache::new(
                    breaker,
                    &settings.redis,
                    &prefixes,
                    settings.cache.near,
                    status.clone(),
                )?;
                near_cache = Some(near.clone());
                Arc::new(near)
            } else {
                breaker
            }
        }
    };
    let metrics = settings
        .metrics
        .enabled
        .then(|| Metrics::new(&CacheManager::NAMESPACES));
    let backend = match &metrics {
        Some(metrics) => {
            metrics.watch_status(&status);
            if let Some(near) = &near_cache {
                metrics.watch_near(near);
            }
            metrics.backend(backend)
        }
        None => backend,
    };
    // In memory a fill costs no round trip to share.
    let fills = (settings.cache.backend() == BackendKind::Redis
        && !settings.cache.fill_linger.is_zero())
    .then(|| DeferredFills::new(backend.clone(), settings.cache.fill_linger));
    let backend: SharedBackend = match &fills {
        Some(fills) => {
            if let Some(metrics) = &metrics {
                metrics.watch_fills(fills);
            }
            Arc::new(fills.clone())
        }
        None => backend,
    };
    Ok(BuiltBackend {
        backend,
        status,
        near: near_cache,
        metrics,
        fills,
    })
}

/// Opens the users store, applies the migrations (unless `store.migrate` is
/// off) and, when it holds no user, imports `users.file` or the seed's ten
/// sample users. With migrations off, a database that does not answer is
/// logged and the service starts anyway (what the cache holds is served).
///
/// # Errors
/// [`StartupError::Store`] or [`StartupError::Users`].
pub async fn open_store(settings: &Settings) -> Result<SqlStore, StartupError> {
    let store = SqlStore::connect(&settings.store).await?;
    if settings.store.migrate {
        store.migrate().await?;
    }
    let empty = match store.count().await {
        Ok(count) => count == 0,
        // Without migrations at start, a database that is down does not stop
        // the service: it serves what the cache holds and answers the rest 503.
        Err(error) if !settings.store.migrate => {
            tracing::warn!(%error, store = store.target(), "users store unreachable at start; serving what the cache holds");
            false
        }
        Err(error) => {
            return Err(StoreSetupError::Connect {
                url: store.target().to_owned(),
                reason: error.to_string(),
            }
            .into());
        }
    };
    if empty {
        let (users, from) = match &settings.users.file {
            Some(path) => (
                InMemoryUserRepository::from_json_file(path)?,
                path.display().to_string(),
            ),
            None => (InMemoryUserRepository::sample(), "the sample".to_owned()),
        };
        let added = store.import(&users.users()).await?;
        tracing::info!(
            added,
            from,
            store = store.target(),
            "empty users store filled"
        );
    }
    tracing::info!(store = store.target(), "users store open");
    Ok(store)
}

/// A store task run by a subcommand instead of serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maintenance {
    /// Apply the schema migrations.
    Migrate,
    /// Import a JSON file of users.
    Import(std::path::PathBuf),
    /// Add this many synthetic users.
    Generate(u64),
}

/// Runs `task` on the configured store (migrations applied first); what was
/// done, in one line.
///
/// # Errors
/// [`StartupError::Store`] or [`StartupError::Users`].
pub async fn maintain(settings: &Settings, task: Maintenance) -> Result<String, StartupError> {
    let store = SqlStore::connect(&settings.store).await?;
    store.migrate().await?;
    let target = store.target().to_owned();
    Ok(match task {
        Maintenance::Migrate => format!("{target}: schema up to date"),
        Maintenance::Import(path) => {
            let users = InMemoryUserRepository::from_json_file(&path)?;
            let added = store.import(&users.users()).await?;
            format!(
                "{target}: {added} of {} users imported from {} (the others were there already)",
                users.len(),
                path.display()
            )
        }
        Maintenance::Generate(n) => {
            let (first, last) = store.generate(n).await?;
            format!("{target}: {n} synthetic users added, ids {first} to {last}")
        }
    })
}

/// The service, built and bound, ready to run.
pub struct Application {
    acceptor: TcpAcceptor,
    address: SocketAddr,
    endpoint: BoxEndpoint<'static>,
    settings: Settings,
    /// Readiness is set here: ready when serving, stopping on shutdown.
    probes: HealthMonitor,
    /// Fills written behind the answer, flushed once the server has stopped.
    fills: Option<DeferredFills>,
}

impl Application {
    /// Wires every adapter into the domain and binds the listener.
    ///
    /// # Errors
    /// [`StartupError`]: unusable Redis settings, a bad users file, a port in use.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        ports::show_keys_in_logs(settings.log.keys);
        let BuiltBackend {
            backend,
            status,
            near: _,
            metrics,
            fills,
        } = build_backend(&settings)?;
        let users = open_store(&settings).await?;
        let monitor = HealthMonitor::spawn(backend.clone(), status.clone(), settings.health)
            .with_store(Arc::new(users.clone()), settings.health);
        let probes = monitor.clone();
        let mut caches = CacheManager::with_timer(
            backend.clone(),
            &settings.cache_policy(),
            Arc::new(adapters::TokioTimer),
        );
        if let Some(metrics) = &metrics {
            caches = caches.observed_by(metrics.cache_observer());
            metrics.watch_health(monitor.clone());
            let pool = users.clone();
            metrics.watch_pool(move || pool.pool_connections());
        }
        let admin = settings
            .admin
            .token
            .clone()
            .map(|token| Admin::new(token, caches.managed(), backend.name(), status.clone()));
        let store = Latent::new(users, settings.users.latency);
        let http = settings.http();
        let endpoint = match metrics.clone() {
            Some(meter) => serve(
                UserService::new(meter.store(store), caches),
                monitor,
                http,
                Operations {
                    metrics: Some(meter),
                    admin,
                },
            ),
            None => serve(
                UserService::new(store, caches),
                monitor,
                http,
                Operations {
                    metrics: None,
                    admin,
                },
            ),
        };

        let address = SocketAddr::new(settings.server.host, settings.server.port);
        let acceptor = TcpListener::bind(address)
            .into_acceptor()
            .await
            .map_err(|source| StartupError::Bind { address, source })?;
        let address = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(address);
        tracing::info!(%address, backend = ?settings.cache.backend(), "cachemanager listening");
        Ok(Self {
            acceptor,
            address,
            endpoint,
            settings,
            probes,
            fills,
        })
    }

    /// The address the server is bound to (useful with port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The endpoint it serves, to call in process without a socket (the hit
    /// path's profile, `app/examples/hit_profile.rs`).
    pub fn endpoint(&self) -> &BoxEndpoint<'static> {
        &self.endpoint
    }

    /// Serves until `shutdown` completes. Then `/health/ready` answers 503
    /// while the service keeps serving for `server.shutdown_delay` (time for
    /// a load balancer to take it out), then it stops accepting connections
    /// and lets in-flight requests finish (for at most `server.shutdown_grace`).
    ///
    /// # Errors
    /// An I/O error of the server.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let probes = self.probes.clone();
        let delay = self.settings.server.shutdown_delay;
        let draining = async move {
            shutdown.await;
            probes.set_readiness(Readiness::Stopping);
            if !delay.is_zero() {
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "not ready: still serving while the load balancer takes this instance out"
                );
                tokio::time::sleep(delay).await;
            }
        };
        self.probes.set_readiness(Readiness::Ready);
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                self.endpoint,
                draining,
                Some(self.settings.server.shutdown_grace),
            )
            .await;
        if let Some(fills) = self.fills {
            // What the last requests loaded, so the next instance hits it.
            let bound = self.settings.cache.operation_timeout;
            if tokio::time::timeout(bound * 2, fills.flush())
                .await
                .is_err()
            {
                tracing::debug!("fills still queued at exit dropped");
            }
        }
        served
    }
}

/// The HTTP endpoint over `service` (generic: the store is metered or not).
fn serve<R: UserRepository>(
    service: UserService<R>,
    monitor: HealthMonitor,
    http: adapters::http::HttpConfig,
    operations: Operations,
) -> BoxEndpoint<'static> {
    let service = Arc::new(service);
    routes(service.clone(), service, monitor, http, operations)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; finishing in-flight requests"),
        () = terminate => tracing::info!("SIGTERM received; finishing in-flight requests"),
    }
}
