//! The deferred fills' metrics, read from `DeferredFills` at each scrape (a
//! collector over its own atomics). Absent from the exposition when fills
//! are written on the request's path (no Redis, or `cache.fill_linger_ms = 0`).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::near::{counter, gauge};
use crate::backend::DeferredFills;

/// Where the collector finds the deferred fills once the application has them.
#[derive(Clone, Default)]
pub(super) struct FillSlot(Arc<Mutex<Option<DeferredFills>>>);

impl std::fmt::Debug for FillSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FillSlot")
    }
}

impl FillSlot {
    pub(super) fn set(&self, fills: DeferredFills) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(fills);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl Collector for FillSlot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(fills) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let counts = fills.counts();
        let mut family = encoder.encode_descriptor(
            "deferred_fills",
            "Read-through fills written behind the answer: written, or dropped (queue full, write failed, deadline passed, or a write of their key came first)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in [("written", counts.written), ("dropped", counts.dropped)] {
            ConstCounter::new(value).encode(family.encode_family(&OutcomeLabel { outcome })?)?;
        }
        counter(
            &mut encoder,
            "deferred_fill_writes",
            "Pipelined writes that carried deferred fills (each one or more)",
            counts.writes,
        )?;
        gauge(
            &mut encoder,
            "deferred_fills_pending",
            "Fills accepted and not yet written or dropped (queued, or in a write in flight)",
            None,
            i64::try_from(fills.pending()).unwrap_or(i64::MAX),
        )
    }
}
