//! HTTP server metrics, with OpenTelemetry's names: requests by method,
//! route template and status, their duration, and requests in flight.

use std::sync::Arc;
use std::time::Duration;

use poem::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::LATENCY_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    http_request_method: &'static str,
    /// The route template (`/users/{uuid}`), or `unmatched`: never a raw path.
    http_route: Arc<str>,
    http_response_status_code: u16,
}

type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Records each request; cheap to clone.
#[derive(Clone)]
pub struct HttpMetrics {
    durations: Durations,
    active: Gauge,
    unmatched: Arc<str>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

/// A request in flight: counted until dropped (also when the client goes
/// away and the request is cancelled).
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The method as a label: the standard ones, `_OTHER` for the rest (a client
/// must not be able to add label values).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let durations: Durations = Family::new_with_constructor(latency_histogram);
        let active = Gauge::default();
        registry.register_with_unit(
            "request_duration",
            "HTTP requests, by method, route template and status; the _count is the number \
             of requests",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register(
            "active_requests",
            "HTTP requests being served",
            active.clone(),
        );
        Self {
            durations,
            active,
            unmatched: Arc::from("unmatched"),
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(&self) -> InFlight {
        self.active.inc();
        InFlight(self.active.clone())
    }

    /// Records a request answered with `status` after `elapsed`; `route` is
    /// its template, `None` for a path outside the API.
    pub fn record(
        &self,
        method: &Method,
        route: Option<&Arc<str>>,
        status: u16,
        elapsed: Duration,
    ) {
        self.durations
            .get_or_create(&RequestLabels {
                http_request_method: method_label(method),
                http_route: route.unwrap_or(&self.unmatched).clone(),
                http_response_status_code: status,
            })
            .observe(elapsed.as_secs_f64());
    }
}
