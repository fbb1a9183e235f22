//! The cache core's [`ports::Timer`] port, on Tokio: what bounds a
//! read-through load.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Sleeps on the Tokio runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTimer;

impl ports::Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}
