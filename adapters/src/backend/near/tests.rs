//! The near cache's coherence rules, each with the race it must win made to
//! happen every time: a Redis stand-in whose reads can be held at a gate while
//! a test delivers invalidations, loses tracking or writes.

use std::sync::atomic::AtomicBool;

use tokio::sync::oneshot;

use super::*;
use crate::backend::MemoryBackend;

/// Redis as the near cache sees it: a memory backend that counts reads,
/// reports a chosen TTL, can fail, and can hold the next read at a gate.
struct Upstream {
    memory: MemoryBackend,
    reads: AtomicU64,
    up: AtomicBool,
    remaining: Mutex<Remaining>,
    gate: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

/// A held read: `reached` fires when Redis has answered and the answer is on
/// its way back; `release` lets it arrive.
struct Gate {
    reached: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

/// A read held after Redis answered it (see [`Upstream::held_read`]).
struct HeldRead {
    release: oneshot::Sender<()>,
    reader: tokio::task::JoinHandle<Result<Option<Bytes>, BackendError>>,
}

impl HeldRead {
    /// Lets the answer arrive, and waits for the read to end.
    async fn finish(self) {
        self.release.send(()).unwrap();
        let _ = self.reader.await.unwrap().unwrap();
    }
}

impl Upstream {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            memory: MemoryBackend::default(),
            reads: AtomicU64::new(0),
            up: AtomicBool::new(true),
            remaining: Mutex::new(Remaining::Unknown),
            gate: Mutex::new(None),
        })
    }

    fn hold_next_read(&self) -> Gate {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.gate.lock().unwrap() = Some((reached_tx, release_rx));
        Gate { reached, release }
    }

    /// Starts a read of `key` through `near` and returns once Redis has
    /// answered it and the answer is held on its way back.
    async fn held_read(&self, near: &NearCache, key: &'static str) -> HeldRead {
        let gate = self.hold_next_read();
        let reader = tokio::spawn({
            let near = near.clone();
            async move { near.get(key).await }
        });
        gate.reached.await.unwrap();
        HeldRead {
            release: gate.release,
            reader,
        }
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    async fn put(&self, key: &str, value: &'static str) {
        self.memory
            .set(key, Bytes::from_static(value.as_bytes()), None)
            .await
            .unwrap();
    }
}

#[async_trait]
impl CacheBackend for Upstream {
    fn name(&self) -> &'static str {
        "upstream"
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        Ok(self
            .mget_with_ttl(&[key.to_owned()])
            .await?
            .pop()
            .flatten()
            .map(|(value, _)| value))
    }
    async fn set(&self, k: &str, v: Bytes, ttl: Option<Duration>) -> Result<(), BackendError> {
        self.memory.set(k, v, ttl).await
    }
    async fn delete(&self, k: &str) -> Result<bool, BackendError> {
        self.memory.delete(k).await
    }
    async fn compare_and_delete(&self, k: &str, v: &[u8]) -> Result<bool, BackendError> {
        self.memory.compare_and_delete(k, v).await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("upstream is down".into()));
        }
        self.memory.mget(keys).await
    }
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("upstream is down".into()));
        }
        let remaining = *self.remaining.lock().unwrap();
        // Redis answers now; the answer is held on its way back.
        let answer = self
            .memory
            .mget(keys)
            .await?
            .into_iter()
            .map(|value| value.map(|value| (value, remaining)))
            .collect();
        let gate = self.gate.lock().unwrap().take();
        if let Some((reached, release)) = gate {
            let _ = reached.send(());
            let _ = release.await;
        }
        Ok(answer)
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.memory.mset(entries).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

fn near_with(upstream: &Arc<Upstream>, config: NearConfig) -> NearCache {
    let near = NearCache::start(
        upstream.clone(),
        &["n:".to_owned()],
        config,
        StatusSignal::new(),
        Source::Manual,
    );
    near.core.arm();
    near
}

/// No tracking connection here echoes our writes: they wait `ping_timeout`
/// for it, kept short.
fn near(upstream: &Arc<Upstream>) -> NearCache {
    near_with(
        upstream,
        NearConfig {
            ping_timeout: Duration::from_millis(20),
            ..NearConfig::default()
        },
    )
}

fn invalidation(keys: &[&str]) -> PushInfo {
    PushInfo {
        kind: PushKind::Invalidate,
        data: vec![Value::Array(
            keys.iter()
                .map(|key| Value::BulkString(key.as_bytes().to_vec()))
                .collect(),
        )],
    }
}

fn flush() -> PushInfo {
    PushInfo {
        kind: PushKind::Invalidate,
        data: vec![Value::Nil],
    }
}

fn text(value: Option<Bytes>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

#[tokio::test]
async fn a_hit_is_served_from_the_process_without_reaching_redis() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v1").await;
    let near = near(&upstream);
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("v1".into()));
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("v1".into()));
    assert_eq!(upstream.reads(), 1, "the second read was a hit");
    assert_eq!(near.counts().hits, 1);
    assert_eq!(near.counts().misses, 1);
}

#[tokio::test]
async fn only_a_hit_is_answered_at_once() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v1").await;
    let near = near(&upstream);
    assert_eq!(near.get_now("n:k"), None, "not kept yet: ask Redis");
    near.get("n:k").await.unwrap();
    assert_eq!(near.get_now("n:k").map(text), Some(Some("v1".into())));
    near.core.invalidate("n:k");
    assert_eq!(near.get_now("n:k"), None, "invalidated: ask Redis");
    assert_eq!(near.get_now("n:absent"), None);
    assert_eq!(upstream.reads(), 1, "answering at once never reads Redis");
}

#[tokio::test]
async fn an_invalidation_during_a_read_keeps_its_answer_out_of_the_process() {
    let upstream = Upstream::new();
    upstream.put("n:k", "old").await;
    let near = near(&upstream);
    let held = upstream.held_read(&near, "n:k").await;
    // The read has left; another writer changes the key and Redis says so
    // before the read's (old) answer is handled.
    upstream.put("n:k", "new").await;
    near.core.apply(&invalidation(&["n:k"]));
    held.finish().await;
    assert_eq!(near.counts().stale_inserts_prevented, 1);
    assert_eq!(
        text(near.get("n:k").await.unwrap()),
        Some("new".into()),
        "the old answer was not kept: the next read asked Redis"
    );
    assert_eq!(upstream.reads(), 2);
}

#[tokio::test]
async fn a_flush_during_a_read_keeps_its_answer_out_of_the_process() {
    let upstream = Upstream::new();
    upstream.put("n:k", "old").await;
    let near = near(&upstream);
    let held = upstream.held_read(&near, "n:k").await;
    upstream.memory.delete("n:k").await.unwrap();
    near.core.apply(&flush());
    held.finish().await;
    assert_eq!(near.get("n:k").await.unwrap(), None, "flushed means gone");
    assert_eq!(near.counts().flushes_server, 1);
}

#[tokio::test]
async fn an_invalidation_of_another_key_does_not_spoil_a_read() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    let near = near(&upstream);
    let held = upstream.held_read(&near, "n:k").await;
    near.core.apply(&invalidation(&["n:other"]));
    held.finish().await;
    let _ = near.get("n:k").await.unwrap();
    assert_eq!(upstream.reads(), 1, "kept, then a hit");
}

#[tokio::test]
async fn an_invalidation_drops_a_kept_entry() {
    let upstream = Upstream::new();
    upstream.put("n:k", "old").await;
    let near = near(&upstream);
    let _ = near.get("n:k").await.unwrap();
    upstream.put("n:k", "new").await;
    near.core.apply(&invalidation(&["n:k"]));
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("new".into()));
    assert_eq!(near.counts().invalidations, 1);
}

#[tokio::test]
async fn losing_tracking_empties_the_process_and_spoils_reads_in_flight() {
    let upstream = Upstream::new();
    upstream.put("n:a", "a1").await;
    upstream.put("n:b", "b1").await;
    let near = near(&upstream);
    let _ = near.get("n:a").await.unwrap();
    let held = upstream.held_read(&near, "n:b").await;
    near.core.distrust("test: connection lost");
    held.finish().await;
    assert!(!near.tracking());
    // While distrusted, every read asks Redis and nothing is kept.
    upstream.put("n:a", "a2").await;
    assert_eq!(text(near.get("n:a").await.unwrap()), Some("a2".into()));
    let before = upstream.reads();
    let _ = near.get("n:b").await.unwrap();
    let _ = near.get("n:b").await.unwrap();
    assert_eq!(
        upstream.reads(),
        before + 2,
        "no read is served from the process"
    );
    // Re-armed on a new connection: a new epoch, kept again.
    near.core.arm();
    let _ = near.get("n:b").await.unwrap();
    let _ = near.get("n:b").await.unwrap();
    assert_eq!(upstream.reads(), before + 3);
    assert_eq!(near.counts().flushes_disconnect, 1);
}

#[tokio::test]
async fn a_read_that_began_before_a_reconnect_is_not_kept_after_it() {
    let upstream = Upstream::new();
    upstream.put("n:k", "old").await;
    let near = near(&upstream);
    let held = upstream.held_read(&near, "n:k").await;
    // Lost and re-armed while the read was out: a write in the gap was never
    // announced, so the read's answer may be from before it.
    near.core.distrust("test: connection lost");
    near.core.arm();
    held.finish().await;
    let _ = near.get("n:k").await.unwrap();
    assert_eq!(
        upstream.reads(),
        2,
        "the answer from the old epoch was not kept"
    );
    assert_eq!(near.counts().stale_inserts_prevented, 1);
}

#[tokio::test]
async fn until_tracking_is_armed_every_read_goes_to_redis() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    let near = NearCache::start(
        upstream.clone(),
        &["n:".to_owned()],
        NearConfig::default(),
        StatusSignal::new(),
        Source::Manual,
    );
    for _ in 0..3 {
        let _ = near.get("n:k").await.unwrap();
    }
    assert_eq!(upstream.reads(), 3);
}

#[tokio::test]
async fn keys_outside_the_prefixes_are_never_kept() {
    let upstream = Upstream::new();
    upstream.put("other:k", "v").await;
    let near = near(&upstream);
    let _ = near.get("other:k").await.unwrap();
    let _ = near.mget(&["other:k".to_owned()]).await.unwrap();
    let _ = near.get("other:k").await.unwrap();
    assert_eq!(upstream.reads(), 3);
    assert_eq!(
        near.counts().misses,
        0,
        "untracked keys are not counted as misses"
    );
}

#[tokio::test]
async fn a_write_through_this_instance_drops_the_entry_before_it_returns() {
    let upstream = Upstream::new();
    upstream.put("n:k", "old").await;
    let near = near(&upstream);
    let _ = near.get("n:k").await.unwrap();
    near.set("n:k", Bytes::from_static(b"new"), None)
        .await
        .unwrap();
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("new".into()));
    near.mset(&[Entry::new("n:k".into(), Bytes::from_static(b"newer"), None)])
        .await
        .unwrap();
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("newer".into()));
    assert!(near.delete("n:k").await.unwrap());
    assert_eq!(near.get("n:k").await.unwrap(), None);
}

#[tokio::test]
async fn a_read_racing_with_our_own_write_is_not_kept() {
    let upstream = Upstream::new();
    upstream.put("n:k", "old").await;
    let near = near(&upstream);
    let held = upstream.held_read(&near, "n:k").await;
    near.set("n:k", Bytes::from_static(b"new"), None)
        .await
        .unwrap();
    held.finish().await;
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("new".into()));
}

#[tokio::test]
async fn mget_serves_hits_from_the_process_and_asks_redis_once_for_the_rest() {
    let upstream = Upstream::new();
    upstream.put("n:a", "a").await;
    upstream.put("n:b", "b").await;
    let near = near(&upstream);
    let _ = near.get("n:a").await.unwrap();
    let keys: Vec<String> = ["n:a", "n:b", "n:c"].map(String::from).to_vec();
    let values = near.mget(&keys).await.unwrap();
    assert_eq!(
        values.into_iter().map(text).collect::<Vec<_>>(),
        vec![Some("a".into()), Some("b".into()), None]
    );
    assert_eq!(upstream.reads(), 2, "one read for a, one for b and c");
    let _ = near.mget(&keys).await.unwrap();
    assert_eq!(
        upstream.reads(),
        3,
        "a and b are hits; the absent c is asked again"
    );
}

#[tokio::test]
async fn an_entry_never_outlives_the_ttl_redis_reported() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    *upstream.remaining.lock().unwrap() = Remaining::For(Duration::from_millis(150));
    let near = near(&upstream);
    let _ = near.get("n:k").await.unwrap();
    let _ = near.get("n:k").await.unwrap();
    assert_eq!(upstream.reads(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = near.get("n:k").await.unwrap();
    assert_eq!(upstream.reads(), 2, "expired with Redis's TTL");
}

#[tokio::test]
async fn an_entry_never_outlives_the_cap() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    *upstream.remaining.lock().unwrap() = Remaining::Forever;
    let config = NearConfig {
        ttl_cap: Duration::from_millis(150),
        ..NearConfig::default()
    };
    let near = near_with(&upstream, config);
    let _ = near.get("n:k").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = near.get("n:k").await.unwrap();
    assert_eq!(upstream.reads(), 2);
}

#[tokio::test]
async fn a_cancelled_read_leaves_nothing_pending() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    let near = near(&upstream);
    let held = upstream.held_read(&near, "n:k").await;
    held.reader.abort();
    let _ = held.reader.await;
    assert!(near.core.lock().pending.is_empty());
    drop(held.release);
}

#[tokio::test]
async fn without_fail_safe_nothing_is_served_while_redis_fails() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    let near = near(&upstream);
    let _ = near.get("n:k").await.unwrap();
    near.core.distrust("test: connection lost");
    upstream.up.store(false, Ordering::SeqCst);
    assert!(near.get("n:k").await.is_err());
    assert_eq!(near.counts().fail_safe_served, 0);
}

#[tokio::test]
async fn fail_safe_serves_kept_entries_while_redis_fails_within_its_window_only() {
    let upstream = Upstream::new();
    upstream.put("n:k", "v").await;
    let config = NearConfig {
        fail_safe: Duration::from_millis(300),
        ..NearConfig::default()
    };
    let near = near_with(&upstream, config);
    let _ = near.get("n:k").await.unwrap();
    near.core.distrust("test: connection lost");
    // Redis answers: its answer, never the kept entry.
    upstream.put("n:k", "v2").await;
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("v2".into()));
    upstream.up.store(false, Ordering::SeqCst);
    assert_eq!(text(near.get("n:k").await.unwrap()), Some("v".into()));
    assert_eq!(
        text(near.mget(&["n:k".to_owned()]).await.unwrap().remove(0)),
        Some("v".into())
    );
    assert_eq!(near.counts().fail_safe_served, 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(near.get("n:k").await.is_err(), "the window has passed");
}

#[tokio::test]
async fn the_status_signal_reports_tracking_and_flushes() {
    let upstream = Upstream::new();
    let status = StatusSignal::new();
    let near = NearCache::start(
        upstream.clone(),
        &["n:".to_owned()],
        NearConfig::default(),
        status.clone(),
        Source::Manual,
    );
    let near_status = || status.get().near.unwrap();
    assert!(!near_status().tracking);
    near.core.arm();
    assert!(near_status().tracking);
    assert_eq!(near_status().cause, None);
    near.core.distrust("test: connection lost");
    assert!(!near_status().tracking);
    assert_eq!(near_status().flushes, 1);
    assert_eq!(
        near_status().cause.as_deref(),
        Some("test: connection lost")
    );
}

#[tokio::test]
async fn a_write_returns_once_its_invalidation_came_back_and_measures_the_lag() {
    let upstream = Upstream::new();
    let near = near_with(&upstream, NearConfig::default());
    let writer = tokio::spawn({
        let near = near.clone();
        async move { near.set("n:k", Bytes::from_static(b"v"), None).await }
    });
    // The write waits for Redis's invalidation of its key.
    while near.core.writes_len.load(Ordering::Relaxed) == 0 || !upstream_has(&upstream, "n:k").await
    {
        tokio::task::yield_now().await;
    }
    assert!(!writer.is_finished(), "the write waits for its echo");
    near.core.apply(&invalidation(&["n:k"]));
    writer.await.unwrap().unwrap();
    assert_eq!(near.invalidation_lag().count(), 1);
    assert_eq!(near.counts().echo_timeouts, 0);
    near.core.apply(&invalidation(&["n:k"]));
    assert_eq!(near.invalidation_lag().count(), 1, "one write, one sample");
}

async fn upstream_has(upstream: &Upstream, key: &str) -> bool {
    upstream.memory.get(key).await.unwrap().is_some()
}

#[tokio::test]
async fn a_write_whose_invalidation_never_comes_back_waits_no_longer_than_the_ping_timeout() {
    let upstream = Upstream::new();
    let near = near(&upstream);
    let started = Instant::now();
    near.set("n:k", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(near.counts().echo_timeouts, 1);
    assert_eq!(
        near.core.writes_len.load(Ordering::Relaxed),
        0,
        "nothing left waiting"
    );
}

#[tokio::test]
async fn a_write_that_changed_nothing_does_not_wait() {
    let upstream = Upstream::new();
    let near = near(&upstream);
    assert!(!near.delete("n:absent").await.unwrap());
    assert!(!near.compare_and_delete("n:absent", b"v").await.unwrap());
    near.mset(&[Entry::new("n:fill".into(), Bytes::from_static(b"v"), None).if_absent()])
        .await
        .unwrap();
    assert_eq!(near.counts().echo_timeouts, 0);
    assert_eq!(near.core.writes_len.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn losing_tracking_releases_writes_waiting_for_their_invalidation() {
    let upstream = Upstream::new();
    let near = near_with(&upstream, NearConfig::default());
    let writer = tokio::spawn({
        let near = near.clone();
        async move { near.set("n:k", Bytes::from_static(b"v"), None).await }
    });
    while near.core.writes_len.load(Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    near.core.distrust("test: connection lost");
    writer.await.unwrap().unwrap();
    assert_eq!(near.counts().echo_timeouts, 0, "released, not timed out");
}

#[test]
fn overlapping_prefixes_are_reduced_to_the_shortest() {
    let given = ["user:record:", "user:", "user:", "other:"].map(String::from);
    assert_eq!(
        disjoint(&given),
        vec!["other:".to_owned(), "user:".to_owned()]
    );
}
