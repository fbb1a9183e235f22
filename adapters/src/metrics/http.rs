//! HTTP server metrics, with OpenTelemetry's names: requests by method,
//! route template and status, their duration, and requests in flight.

use std::sync::Arc;
use std::time::Duration;

use poem::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::{LatencyHistogram, ShardedGauge};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    http_request_method: &'static str,
    /// The route template (`/users/{uuid}`), or `unmatched`: never a raw path.
    http_route: Arc<str>,
    http_response_status_code: u16,
}

type Durations = Family<RequestLabels, LatencyHistogram>;

/// Records each request; cheap to clone.
#[derive(Clone)]
pub struct HttpMetrics {
    durations: Durations,
    active: ShardedGauge,
    unmatched: Arc<str>,
    /// Tells this recorder's handles apart in the per-thread cache (never
    /// reused, unlike an address).
    id: u64,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

/// A request in flight: counted until dropped (also when the client goes
/// away and the request is cancelled).
#[derive(Debug)]
pub struct InFlight<'a>(&'a ShardedGauge);

impl Drop for InFlight<'_> {
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

/// A handle resolved recently on this thread, by recorder, method, status
/// and route.
struct Recent {
    id: u64,
    method: &'static str,
    status: u16,
    route: Arc<str>,
    histogram: LatencyHistogram,
}

/// How many handles each thread keeps (the routes, methods and statuses a
/// service mostly answers fit in it).
const RECENT: usize = 16;

thread_local! {
    /// Handles resolved on this thread: a request finds its series here
    /// without the family's lock and hash (a read lock taken by every
    /// request from every worker was a shared cache line).
    static HANDLES: std::cell::RefCell<Vec<Recent>> = const { std::cell::RefCell::new(Vec::new()) };
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let durations: Durations = Family::default();
        let active = ShardedGauge::default();
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
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.active.inc();
        InFlight(&self.active)
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
        let method = method_label(method);
        let route = route.unwrap_or(&self.unmatched);
        HANDLES.with_borrow_mut(|recent| {
            let found = recent.iter().find(|r| {
                r.id == self.id && r.status == status && r.method == method && r.route == *route
            });
            if let Some(found) = found {
                found.histogram.observe(elapsed);
                return;
            }
            let histogram = self.durations.get_or_create_owned(&RequestLabels {
                http_request_method: method,
                http_route: route.clone(),
                http_response_status_code: status,
            });
            histogram.observe(elapsed);
            if recent.len() == RECENT {
                recent.remove(0);
            }
            recent.push(Recent {
                id: self.id,
                method,
                status,
                route: route.clone(),
                histogram,
            });
        });
    }
}
