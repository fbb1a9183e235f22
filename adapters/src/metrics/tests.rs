use std::sync::Arc;
use std::time::Duration;

use ports::{BackendError, CacheEvent, CacheObserver, MockCacheBackend, SharedBackend};

use super::*;
use crate::backend::{Circuit, StatusSignal};

/// The value of the sample `series` (name and labels exactly) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn events_are_counted_by_namespace_known_or_not() {
    let metrics = Metrics::new(&["a"]);
    let observer = metrics.cache_observer();
    observer.observe("a", CacheEvent::Hit);
    observer.observe("a", CacheEvent::Hit);
    observer.observe("a", CacheEvent::Miss);
    observer.observe(
        "a",
        CacheEvent::Loaded {
            elapsed: Duration::from_millis(3),
            found: false,
        },
    );
    observer.observe(
        "a",
        CacheEvent::LoadFailed {
            elapsed: Duration::from_millis(5),
        },
    );
    observer.observe("b", CacheEvent::CorruptRemoved);
    let counts = metrics.cache_counts("a");
    assert_eq!((counts.hits, counts.misses), (2, 1));
    assert_eq!((counts.loads, counts.load_failures), (2, 1));
    let text = metrics.encode(false);
    assert_eq!(
        sample(&text, "cachemanager_cache_hits_total{namespace=\"a\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "cachemanager_cache_loads_total{namespace=\"a\",result=\"absent\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "cachemanager_cache_load_duration_seconds_count{namespace=\"a\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "cachemanager_cache_corrupt_removed_total{namespace=\"b\"}"
        ),
        Some(1.0),
        "an unknown namespace is counted too: {text}"
    );
}

#[tokio::test]
async fn backend_operations_are_labelled_with_their_outcome() {
    let mut mock = MockCacheBackend::new();
    mock.expect_name().return_const("redis");
    mock.expect_get()
        .returning(|_| Err(BackendError::Timeout(Duration::from_millis(100))));
    mock.expect_set()
        .returning(|_, _, _| Err(BackendError::CircuitOpen));
    mock.expect_ping().returning(|| Ok(()));
    let inner: SharedBackend = Arc::new(mock);
    let metrics = Metrics::new(&[]);
    let backend = metrics.backend(inner);
    assert!(backend.get("k").await.is_err());
    assert!(
        backend
            .set("k", bytes::Bytes::from_static(b"v"), None)
            .await
            .is_err()
    );
    assert!(backend.ping().await.is_ok());
    let text = metrics.encode(false);
    let count = |op: &str, outcome: &str| {
        sample(
            &text,
            &format!(
                "cachemanager_backend_operation_duration_seconds_count{{backend=\"redis\",operation=\"{op}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(count("get", "timeout"), Some(1.0), "{text}");
    assert_eq!(count("set", "circuit_open"), Some(1.0), "{text}");
    assert_eq!(count("ping", "ok"), Some(1.0), "{text}");
}

#[tokio::test]
async fn the_breaker_gauge_transitions_and_rebuilds_follow_the_status_signal() {
    let signal = StatusSignal::new();
    let metrics = Metrics::new(&[]);
    metrics.watch_status(&signal);
    signal.set_circuit(Circuit::Open);
    tokio::task::yield_now().await;
    signal.set_circuit(Circuit::HalfOpen);
    tokio::task::yield_now().await;
    signal.set_circuit(Circuit::Closed);
    signal.update(|status| {
        status.rebuilds = 2;
        true
    });
    let text = after_the_watcher_ran(&metrics).await;
    assert_eq!(transitions(&text, "open"), Some(1.0), "{text}");
    assert_eq!(transitions(&text, "half_open"), Some(1.0), "{text}");
    assert_eq!(transitions(&text, "closed"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "cachemanager_breaker_state{state=\"closed\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "cachemanager_breaker_state{state=\"open\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "cachemanager_backend_connection_rebuilds_total"),
        Some(2.0)
    );
}

#[tokio::test]
async fn breaker_flips_between_two_reads_of_the_signal_are_all_counted() {
    let signal = StatusSignal::new();
    let metrics = Metrics::new(&[]);
    metrics.watch_status(&signal);
    // Open, then a trial that fails, then one that succeeds, faster than the
    // watcher wakes (no yield in between).
    for circuit in [
        Circuit::Open,
        Circuit::HalfOpen,
        Circuit::Open,
        Circuit::HalfOpen,
        Circuit::Closed,
    ] {
        signal.set_circuit(circuit);
    }
    let text = after_the_watcher_ran(&metrics).await;
    assert_eq!(transitions(&text, "open"), Some(2.0), "{text}");
    assert_eq!(transitions(&text, "half_open"), Some(2.0), "{text}");
    assert_eq!(transitions(&text, "closed"), Some(1.0), "{text}");
}

/// The exposition once the status watcher, which runs on this runtime, has
/// seen every change.
async fn after_the_watcher_ran(metrics: &Metrics) -> String {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    metrics.encode(false)
}

/// `cachemanager_breaker_transitions_total` for `state`, in `text`.
fn transitions(text: &str, state: &str) -> Option<f64> {
    sample(
        text,
        &format!("cachemanager_breaker_transitions_total{{state=\"{state}\"}}"),
    )
}

#[test]
fn the_two_formats_differ_as_their_specifications_say() {
    let metrics = Metrics::new(&["a"]);
    let open = metrics.encode(true);
    let text = metrics.encode(false);
    assert!(open.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
    // Every family has help text.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap_or_default();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help"
        );
    }
}
