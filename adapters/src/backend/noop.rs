//! The no-op backend: caching switched off without touching any caller.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry};

/// Every read misses, every write succeeds and is forgotten, always healthy.
/// Useful to measure the service without a cache, or to switch caching off.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopBackend;

#[async_trait]
impl CacheBackend for NoopBackend {
    fn name(&self) -> &'static str {
        "noop"
    }
    async fn get(&self, _key: &str) -> Result<Option<Bytes>, BackendError> {
        Ok(None)
    }
    fn get_now(&self, _key: &str) -> Option<Option<Bytes>> {
        Some(None)
    }
    async fn set(&self, _: &str, _: Bytes, _: Option<Duration>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn delete(&self, _key: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn compare_and_delete(&self, _: &str, _: &[u8]) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        Ok(vec![None; keys.len()])
    }
    async fn mset(&self, _entries: &[Entry]) -> Result<(), BackendError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
