//! A latency histogram without a lock.
//!
//! prometheus-client's `Histogram` takes a mutex per observation; on the hit
//! path three of them (the request, the backend read) were taken by every
//! request, from every worker thread, and the paired bench measured metrics
//! at -4.6 % of the hit path's throughput. Here an observation is two relaxed
//! atomic additions: its bucket, and the sum in nanoseconds (an integer, so
//! no compare-and-swap loop), on counts of the observing thread's own (see
//! `sharded.rs`: a count every core writes is a cache line every core waits
//! for). The count is the buckets' total, read at scrape time, so `_count`
//! always equals the `+Inf` bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sharded::PerThread;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Bucket upper bounds in seconds: 100 µs to 10 s.
pub(crate) const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The same bounds in nanoseconds, to place an observation without floats.
const BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// One thread's observations.
#[derive(Default)]
struct Counts {
    /// One count per bound, and a last one for above every bound (`+Inf`).
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Counts {
    fn bucket(&self, index: usize) -> u64 {
        self.buckets[index].load(Ordering::Relaxed)
    }
}

/// Durations in 16 buckets from 100 µs to 10 s (100 µs, 250 µs, 500 µs,
/// 1 ms, ... 10 s). Cheap to clone: clones share their counts.
#[derive(Clone, Default)]
pub struct LatencyHistogram(Arc<PerThread<Counts>>);

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish()
    }
}

impl LatencyHistogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(BOUNDS.len());
        let mine = self.0.mine();
        mine.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        mine.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets().iter().sum()
    }

    /// Each bucket's count (not accumulated), `+Inf` last: every thread's,
    /// added up.
    fn buckets(&self) -> [u64; BOUNDS.len() + 1] {
        let mut totals = [0; BOUNDS.len() + 1];
        for counts in self.0.all() {
            for (index, total) in totals.iter_mut().enumerate() {
                *total += counts.bucket(index);
            }
        }
        totals
    }

    /// The sum of the durations, in nanoseconds.
    fn sum_nanos(&self) -> u64 {
        self.0
            .all()
            .map(|counts| counts.sum_nanos.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.buckets();
        let count = counts.iter().sum();
        // Per bucket (the encoder accumulates), +Inf last.
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts)
            .collect();
        let sum = self.sum_nanos() as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_seconds_and_nanoseconds_agree() {
        for (seconds, nanos) in BOUNDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn an_observation_lands_in_the_first_bucket_that_holds_it() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(100)); // on the first bound
        histogram.observe(Duration::from_micros(101)); // just above it
        histogram.observe(Duration::from_secs(60)); // above every bound
        let counts = histogram.buckets();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[BOUNDS.len()], 1);
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.sum_nanos(), 100_000 + 101_000 + 60_000_000_000);
    }

    #[test]
    fn observations_from_many_threads_add_up() {
        let histogram = LatencyHistogram::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        histogram.observe(Duration::from_millis(1));
                    }
                });
            }
        });
        assert_eq!(histogram.count(), 2000);
        assert_eq!(histogram.buckets()[3], 2000, "1 ms is the 1 ms bucket's");
        assert_eq!(histogram.sum_nanos(), 2_000_000_000);
    }
}
