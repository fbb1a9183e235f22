//! The spans of cache operations, as a log subscriber sees them. A test
//! binary of its own: a subscriber installed here enables the spans' call
//! sites for the whole process, which other tests (mocks that do not expect
//! the backend's name to be asked) must not share.

// A failed unwrap in a test is a failed test, with its cause.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use ports::testing::MapBackend;
use ports::{CacheDefinition, TextCodec, TypedCache};

struct Squares;
impl CacheDefinition for Squares {
    type Key = i64;
    type Value = i64;
    type Codec = TextCodec;
    const NAMESPACE: &'static str = "test:squares";
}

/// What the fmt layer writes, spans' closes included.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Written {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn operations_run_in_cache_spans_with_their_outcome_and_no_key() {
    let written = Written::default();
    let writer = written.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let map = Arc::new(MapBackend::default());
    let cache = TypedCache::<Squares>::new(map.clone());
    cache.set(&7, &49).await.unwrap();
    assert_eq!(cache.get(&7).await, Some(49));
    assert_eq!(cache.get(&8).await, None);
    assert_eq!(cache.mget(&[7, 8]).await.unwrap(), vec![Some(49), None]);
    map.set_down(true);
    cache.invalidate(&7).await;

    let text = String::from_utf8_lossy(&written.0.lock().unwrap()).into_owned();
    let closed: Vec<&str> = text.lines().filter(|l| l.contains(" close ")).collect();
    let has = |operation: &str, outcome: &str| {
        closed.iter().any(|l| {
            l.contains("cache.namespace=\"test:squares\"")
                && l.contains(&format!("cache.operation=\"{operation}\""))
                && l.contains(&format!("cache.outcome=\"{outcome}\""))
                && l.contains("db.system=\"map\"")
        })
    };
    assert!(has("set", "ok"), "{text}");
    assert!(has("get", "hit"), "{text}");
    assert!(has("get", "miss"), "{text}");
    assert!(has("mget", "partial"), "{text}");
    assert!(has("invalidate", "backend_error"), "{text}");
    assert!(
        !text.contains("test:squares:7"),
        "a key reached the logs: {text}"
    );
}
