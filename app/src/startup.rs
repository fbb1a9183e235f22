//! Building the application from settings (dependency injection) and running it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use adapters::backend::{
    MemoryBackend, MemoryConfig, NoopBackend, RedisBackend, RedisConfig, RedisSetupError,
    TimeoutBackend,
};
use adapters::http::{HttpConfig, routes};
use adapters::users::{InMemoryUserRepository, UserStoreError};
use domain::{CacheManager, UserService};
use poem::endpoint::BoxEndpoint;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{EndpointExt, Server};
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

/// Builds the configured backend, bounded by the per-operation timeout.
/// The Redis backend connects lazily: the service starts while Redis is down.
///
/// # Errors
/// [`StartupError::Redis`] when the Redis settings cannot be used.
pub fn build_backend(settings: &Settings) -> Result<SharedBackend, StartupError> {
    let backend: SharedBackend = match settings.cache.backend {
        BackendKind::Memory => Arc::new(MemoryBackend::new(MemoryConfig {
            max_bytes: settings.memory.max_bytes,
        })),
        BackendKind::Noop => Arc::new(NoopBackend),
        BackendKind::Redis => {
            let redis = &settings.redis;
            let backend = RedisBackend::new(&RedisConfig {
                url: redis.url.clone(),
                username: redis.username.clone(),
                password: redis.password.clone(),
                db: redis.db,
                connect_timeout: redis.connect_timeout,
                response_timeout: redis.response_timeout,
            })?;
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
            Arc::new(backend)
        }
    };
    Ok(match settings.cache.backend {
        BackendKind::Noop => backend,
        _ => Arc::new(TimeoutBackend::new(
            backend,
            settings.cache.operation_timeout,
        )),
    })
}

/// The service, built and bound, ready to run.
pub struct Application {
    acceptor: TcpAcceptor,
    address: SocketAddr,
    endpoint: BoxEndpoint<'static>,
    settings: Settings,
}

impl Application {
    /// Wires every adapter into the domain and binds the listener.
    ///
    /// # Errors
    /// [`StartupError`]: unusable Redis settings, a bad users file, a port in use.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let backend = build_backend(&settings)?;
        let users = match &settings.users.file {
            Some(path) => InMemoryUserRepository::from_json_file(path)?,
            None => InMemoryUserRepository::sample(),
        };
        let caches = CacheManager::new(backend.clone(), &settings.cache.policy);
        let service = Arc::new(UserService::new(users, caches));
        let endpoint = routes(
            service,
            backend,
            HttpConfig {
                health_timeout: settings.health.timeout,
            },
        )
        .boxed();

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
        tracing::info!(%address, backend = ?settings.cache.backend, "cachemanager listening");
        Ok(Self {
            acceptor,
            address,
            endpoint,
            settings,
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

    /// Serves until `shutdown` completes, then lets in-flight requests finish
    /// (for at most `server.shutdown_grace`).
    ///
    /// # Errors
    /// An I/O error of the server.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                self.endpoint,
                shutdown,
                Some(self.settings.server.shutdown_grace),
            )
            .await
    }
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
