//! Cache backends (implementations of [`ports::CacheBackend`]) and decorators.

mod bounded;
mod breaker;
mod deferred;
mod memory;
mod near;
mod noop;
mod redis;
mod status;
#[cfg(test)]
pub(crate) mod stub;
mod timeout;

pub use breaker::{BreakerConfig, CircuitBreaker};
pub use deferred::{DeferredFills, FILL_QUEUE_CAPACITY, FILLS_PER_WRITE, FillCounts};
pub use memory::{MemoryBackend, MemoryConfig};
pub use near::{NearCache, NearConfig, NearCounts};
pub use noop::NoopBackend;
pub use redis::{
    RedisBackend, RedisConfig, RedisMode, RedisSetupError, check_redis_node, check_redis_url,
    redact_url,
};
pub use status::{Circuit, CircuitEntries, NearStatus, Refusal, StackStatus, StatusSignal};
pub use timeout::TimeoutBackend;
