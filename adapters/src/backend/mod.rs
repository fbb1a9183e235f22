//! Cache backends (implementations of [`ports::CacheBackend`]) and decorators.

mod breaker;
mod memory;
mod noop;
mod redis;
#[cfg(test)]
pub(crate) mod stub;
mod timeout;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use memory::{MemoryBackend, MemoryConfig};
pub use noop::NoopBackend;
pub use redis::{RedisBackend, RedisConfig, RedisSetupError, check_redis_url, redact_url};
pub use timeout::TimeoutBackend;
