//! # adapters — the technologies behind the ports
//!
//! - [`backend`]: cache backends ([`backend::RedisBackend`],
//!   [`backend::MemoryBackend`], [`backend::NoopBackend`]) and the decorators
//!   that wrap any of them ([`backend::TimeoutBackend`],
//!   [`backend::CircuitBreaker`], [`backend::NearCache`],
//!   [`backend::DeferredFills`]).
//! - [`health`]: the health monitor that feeds `/health`.
//! - [`users`]: the users store: [`users::SqlStore`] (SQLite or PostgreSQL,
//!   on sqlx) and [`users::InMemoryUserRepository`] for unit tests.
//! - [`http`]: the poem-openapi HTTP API (inbound adapter).
//! - [`metrics`]: Prometheus metrics (`prometheus-client`) and the decorators
//!   and observer that feed them.
//! - [`Secret`]: a string that never shows itself in logs or `Debug`.

pub mod backend;
mod deadline;
pub mod health;
pub mod http;
pub mod metrics;
mod secret;
pub mod serde_ms;
mod timer;
pub mod users;

pub use secret::Secret;
pub use timer::TokioTimer;
