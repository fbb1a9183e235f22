//! Counts kept per thread and added up when read.
//!
//! A counter that every request bumps, from every worker thread, is one
//! cache line written by every core: each write waits for the line to come
//! over from the core that wrote it last (on this 2-core machine about 30 ns
//! against 9 ns for a line of the thread's own, `cargo run` of a two-thread
//! loop; docs/PERFORMANCE.md). Here each thread writes a line of its own
//! (per-object thread-local storage, padded so that two threads' counts
//! never share a line), and a scrape adds them up: writes get cheaper,
//! reads (a scrape, an admin call) a little dearer.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use thread_local::ThreadLocal;

/// One thread's part, alone on its cache lines (128 bytes: a line and the
/// one prefetched with it).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// Each thread's `T`, made on the thread's first write.
pub(crate) struct PerThread<T: Send>(ThreadLocal<Padded<T>>);

impl<T: Send + Default> Default for PerThread<T> {
    fn default() -> Self {
        Self(ThreadLocal::new())
    }
}

impl<T: Send + Default> PerThread<T> {
    /// This thread's part.
    #[inline]
    pub(crate) fn mine(&self) -> &T {
        &self.0.get_or_default().0
    }
}

impl<T: Send + Sync> PerThread<T> {
    /// Every thread's part, to add up.
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|padded| &padded.0)
    }
}

/// A monotonic counter, its count per thread. Cheap to clone: clones share
/// their counts.
#[derive(Clone, Default)]
pub struct ShardedCounter(Arc<PerThread<AtomicU64>>);

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl ShardedCounter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.mine().fetch_add(1, Ordering::Relaxed);
    }

    /// The count: every thread's, added up.
    pub fn get(&self) -> u64 {
        self.0
            .all()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge that goes up and down, its changes per thread: a thread may take
/// down what another put up (a request that moved between workers), so one
/// thread's part can be negative; the sum is the value.
#[derive(Clone, Default)]
pub struct ShardedGauge(Arc<PerThread<AtomicI64>>);

impl std::fmt::Debug for ShardedGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedGauge").field(&self.get()).finish()
    }
}

impl ShardedGauge {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.mine().fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    #[inline]
    pub fn dec(&self) {
        self.0.mine().fetch_sub(1, Ordering::Relaxed);
    }

    /// The value: every thread's changes, added up.
    pub fn get(&self) -> i64 {
        self.0.all().map(|part| part.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ShardedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = ShardedCounter::default();
        let gauge = ShardedGauge::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.inc();
                        gauge.inc();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 8000);
        assert_eq!(gauge.get(), 8000);
        // Taken down elsewhere than where it went up: the sum still holds.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..8000 {
                    gauge.dec();
                }
            });
        });
        assert_eq!(gauge.get(), 0);
        assert_eq!(counter.clone().get(), 8000, "clones share their counts");
    }

    #[test]
    fn two_threads_parts_never_share_a_cache_line() {
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 128);
        assert!(std::mem::size_of::<Padded<AtomicU64>>() >= 128);
    }
}
