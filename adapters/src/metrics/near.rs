//! The near cache's metrics, read from it at each scrape (a collector): its
//! counters are the near cache's own atomics, so the hit path pays nothing
//! more for being measured. Absent from the exposition when no near cache runs.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::backend::NearCache;

/// Where the collector finds the near cache once the application has one.
#[derive(Debug, Default, Clone)]
pub(super) struct NearSlot(Arc<Mutex<Option<NearCache>>>);

impl NearSlot {
    pub(super) fn set(&self, near: NearCache) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(near);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

pub(super) fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

pub(super) fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for NearSlot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(near) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let counts = near.counts();
        let e = &mut encoder;
        counter(
            e,
            "near_hits",
            "Reads answered from the near cache (no Redis round trip)",
            counts.hits,
        )?;
        counter(
            e,
            "near_misses",
            "Reads of tracked keys the near cache sent to Redis",
            counts.misses,
        )?;
        counter(
            e,
            "near_invalidations",
            "Keys Redis said changed (any writer, expiry, eviction), dropped from the near cache",
            counts.invalidations,
        )?;
        let mut flushes = e.encode_descriptor(
            "near_flushes",
            "Times the near cache was emptied whole: tracking lost (disconnect) or Redis flushed (server)",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in [
            ("disconnect", counts.flushes_disconnect),
            ("server", counts.flushes_server),
        ] {
            ConstCounter::new(value).encode(flushes.encode_family(&ReasonLabel { reason })?)?;
        }
        counter(
            e,
            "near_stale_inserts_prevented",
            "Answers from Redis not kept because their key changed while they were in flight",
            counts.stale_inserts_prevented,
        )?;
        counter(
            e,
            "near_fail_safe_served",
            "Kept entries served while Redis failed, under cache.near.fail_safe_secs",
            counts.fail_safe_served,
        )?;
        counter(
            e,
            "near_echo_timeouts",
            "Our writes whose invalidation did not come back on the tracking connection in time",
            counts.echo_timeouts,
        )?;
        gauge(
            e,
            "near_tracking",
            "1 while Redis tracks our keys for the near cache (entries are served), 0 otherwise",
            None,
            i64::from(near.tracking()),
        )?;
        let (entries, bytes) = near.size();
        gauge(
            e,
            "near_entries",
            "Entries the near cache holds",
            None,
            i64::try_from(entries).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "near",
            "Bytes (keys, values and overhead) the near cache holds",
            Some(&Unit::Bytes),
            i64::try_from(bytes).unwrap_or(i64::MAX),
        )?;
        let lag = near.invalidation_lag();
        let metric = e.encode_descriptor(
            "near_invalidation_lag",
            "From the start of one of our writes to the arrival of its invalidation from Redis",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        lag.encode(metric)
    }
}
