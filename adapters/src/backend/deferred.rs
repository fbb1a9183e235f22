//! A decorator that writes read-through fills behind the answer, coalesced.
//!
//! A miss over Redis costs two round trips: the `GET` that misses, then the
//! fill (the record `SET NX` and the seed's two mappings, one pipeline). The
//! fill's round trip is paid by the request that loaded, in CPU as much as
//! in time: the service's system calls and wake-ups, and Redis reading and
//! answering a pipeline of three commands. [`DeferredFills`] takes fills off
//! the request's path: [`CacheBackend::fill`] queues them and returns, and
//! one task writes what the queue holds every `linger`, as one `mset`, so a
//! burst of misses pays one round trip for many fills
//! (docs/PERFORMANCE.md, "Fills written behind").
//!
//! What it keeps of the typed cache's contract (docs/ARCHITECTURE.md,
//! "Writes and the caches"):
//! - a fill is still `SET NX`: a write fence set before it lands wins;
//! - a fill is never written after its `not_after` (the load's start plus
//!   the write fence), so it cannot outlive a fence it should have met;
//! - in this process, a write of a key (`set`, `delete`, `mset`) drops the
//!   queued fills of that key: they hold what was read before the write;
//! - nothing waits on Redis for a fill: a full queue drops the new fill, a
//!   failed `mset` drops its batch (both counted, logged at debug level),
//!   and the next miss loads again.
//!
//! What it changes: a read right after a miss may miss too (the fill is up to
//! `linger` plus a round trip away) and load again; single-flight still
//! shares the loads that overlap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining, SharedBackend};
use tokio::sync::Notify;

/// At most this many fills wait in the queue; a fill beyond is dropped.
pub const FILL_QUEUE_CAPACITY: usize = 10_000;

/// At most this many fills go out in one `mset` (a fill is a record and its
/// companions: three entries for a user).
pub const FILLS_PER_WRITE: usize = 100;

/// What happened to deferred fills since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FillCounts {
    /// Fills sent to the backend (in an `mset` that succeeded).
    pub written: u64,
    /// `mset`s sent (each carries one or more fills).
    pub writes: u64,
    /// Fills dropped: the queue was full, the `mset` failed, the fill's
    /// `not_after` passed, or a write of its key came after it.
    pub dropped: u64,
}

struct Fill {
    entries: Vec<Entry>,
    not_after: Instant,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Fill>>,
    /// Wakes the writer when the queue stops being empty, or to stop.
    wake: Notify,
    /// Cuts the writer's linger short when the decorator goes.
    closing: Notify,
    /// Held while a batch is taken and written, so [`DeferredFills::flush`]
    /// returns only after every fill queued before it was written or dropped.
    writing: tokio::sync::Mutex<()>,
    closed: std::sync::atomic::AtomicBool,
    /// Fills accepted and not yet written or dropped: queued, or in a write
    /// in flight.
    pending: AtomicUsize,
    written: AtomicU64,
    writes: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Fill>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `count` accepted fills as dropped.
    fn drop_fills(&self, count: usize) {
        self.dropped.fetch_add(count as u64, Ordering::Relaxed);
        self.pending.fetch_sub(count, Ordering::Release);
    }

    /// Removes the queued fills holding a key `written` says was written.
    fn forget(&self, written: impl Fn(&str) -> bool) {
        let mut queue = self.queue();
        if queue.is_empty() {
            return;
        }
        let before = queue.len();
        queue.retain(|fill| !fill.entries.iter().any(|entry| written(&entry.key)));
        let removed = before - queue.len();
        drop(queue);
        if removed > 0 {
            self.drop_fills(removed);
        }
    }

    /// Takes every queued fill and writes those still in time, as `mset`s of
    /// at most [`FILLS_PER_WRITE`] fills, one after the other. Returns
    /// whether it took any.
    async fn write_queued(&self, inner: &SharedBackend) -> bool {
        let taken = std::mem::take(&mut *self.queue());
        if taken.is_empty() {
            return false;
        }
        let now = Instant::now();
        let (in_time, late): (Vec<Fill>, Vec<Fill>) =
            taken.into_iter().partition(|fill| now < fill.not_after);
        if !late.is_empty() {
            self.drop_fills(late.len());
            tracing::debug!(
                late = late.len(),
                "fills past their deadline dropped unwritten"
            );
        }
        let mut in_time = in_time.into_iter();
        loop {
            // The fills move into the write: nothing is copied.
            let batch: Vec<Fill> = in_time.by_ref().take(FILLS_PER_WRITE).collect();
            if batch.is_empty() {
                break;
            }
            let fills = batch.len();
            let entries: Vec<Entry> = batch.into_iter().flat_map(|fill| fill.entries).collect();
            self.writes.fetch_add(1, Ordering::Relaxed);
            match inner.mset(&entries).await {
                Ok(()) => {
                    self.written.fetch_add(fills as u64, Ordering::Relaxed);
                    self.pending.fetch_sub(fills, Ordering::Release);
                }
                Err(error) => {
                    self.drop_fills(fills);
                    tracing::debug!(fills, %error, "deferred fills not written");
                }
            }
        }
        true
    }
}

/// Queues read-through fills ([`CacheBackend::fill`]) and writes them in
/// batches behind the answer; every other operation goes straight to the
/// backend it wraps. Goes outermost in a stack (the decorators below it see
/// the batches as `mset`s). A `linger` of zero writes each fill at once, on
/// the caller's path, as without it.
#[derive(Clone)]
pub struct DeferredFills {
    inner: SharedBackend,
    shared: Arc<Shared>,
    linger: Duration,
    _writer: Arc<WriterGuard>,
}

/// Stops the writer task when the last clone of the decorator goes, after it
/// has written what is queued.
struct WriterGuard(Arc<Shared>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.wake.notify_one();
        self.0.closing.notify_one();
    }
}

impl DeferredFills {
    /// Wraps `inner`; fills wait up to `linger` to be written together.
    /// Spawns the writer task: call within a tokio runtime.
    pub fn new(inner: SharedBackend, linger: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        if !linger.is_zero() {
            tokio::spawn(write_behind(inner.clone(), shared.clone(), linger));
        }
        Self {
            inner,
            _writer: Arc::new(WriterGuard(shared.clone())),
            shared,
            linger,
        }
    }

    /// What happened to the fills so far.
    pub fn counts(&self) -> FillCounts {
        FillCounts {
            written: self.shared.written.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// How many fills were accepted and are not yet written or dropped
    /// (queued, or in a write in flight). Zero right after a request means
    /// its fill went out or was dropped.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// Writes every queued fill now, and returns once each fill queued before
    /// the call has been written or dropped (for shutdown, and for tests that
    /// read the backend right after a miss).
    pub async fn flush(&self) {
        let _writing = self.shared.writing.lock().await;
        while self.shared.write_queued(&self.inner).await {}
    }
}

/// The writer: waits for a first fill, lets more gather for `linger`, then
/// writes what gathered (in `mset`s of at most [`FILLS_PER_WRITE`] fills);
/// once the decorator is gone, writes what is left and ends.
async fn write_behind(inner: SharedBackend, shared: Arc<Shared>, linger: Duration) {
    loop {
        let closed = shared.closed.load(Ordering::Acquire);
        if shared.queue().is_empty() {
            if closed {
                return;
            }
            // A fill queued after the check leaves a permit: no wake is lost.
            shared.wake.notified().await;
            continue;
        }
        if !closed {
            tokio::select! {
                () = tokio::time::sleep(linger) => {}
                () = shared.closing.notified() => {}
            }
        }
        // What gathered in the linger; fills that come meanwhile wait for
        // the next one.
        let _writing = shared.writing.lock().await;
        shared.write_queued(&inner).await;
    }
}

#[async_trait]
impl CacheBackend for DeferredFills {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.inner.get(key).await
    }
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        self.inner.get_now(key)
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.shared.forget(|queued| queued == key);
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.shared.forget(|queued| queued == key);
        self.inner.delete(key).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.inner.compare_and_delete(key, expected).await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.inner.mget(keys).await
    }
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        self.inner.mget_with_ttl(keys).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.shared
            .forget(|queued| entries.iter().any(|entry| entry.key == queued));
        self.inner.mset(entries).await
    }
    async fn fill(&self, entries: Vec<Entry>, not_after: Instant) -> Result<(), BackendError> {
        if self.linger.is_zero() {
            return self.inner.fill(entries, not_after).await;
        }
        let was_empty = {
            let mut queue = self.shared.queue();
            if queue.len() >= FILL_QUEUE_CAPACITY {
                drop(queue);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("fill queue full; fill dropped");
                return Ok(());
            }
            let was_empty = queue.is_empty();
            queue.push_back(Fill { entries, not_after });
            self.shared.pending.fetch_add(1, Ordering::Release);
            was_empty
        };
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(())
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use ports::testing::MapBackend;

    use crate::backend::stub::{FOREVER, StubBackend};

    use super::*;

    const LINGER: Duration = Duration::from_millis(5);

    /// A fill as the typed cache makes it: the value `NX`, and a companion.
    fn fill(key: &str, value: &str) -> Vec<Entry> {
        vec![
            Entry::new(key.to_owned(), Bytes::from(value.to_owned()), None).if_absent(),
            Entry::new(format!("{key}:companion"), Bytes::from_static(b"c"), None),
        ]
    }

    fn in_time() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn deferred(map: &Arc<MapBackend>, linger: Duration) -> DeferredFills {
        DeferredFills::new(map.clone(), linger)
    }

    #[tokio::test(start_paused = true)]
    async fn fills_queued_within_the_linger_go_out_together_in_one_mset_after_it() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        for i in 0..3 {
            fills
                .fill(fill(&format!("k{i}"), "v"), in_time())
                .await
                .unwrap();
        }
        tokio::time::sleep(LINGER - Duration::from_millis(1)).await;
        assert_eq!(map.msets(), 0, "nothing is written before the linger");
        assert_eq!(map.text("k0"), None);
        assert_eq!(fills.pending(), 3);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(map.msets(), 1, "three fills, one round trip");
        assert_eq!(fills.pending(), 0);
        for i in 0..3 {
            assert_eq!(map.text(&format!("k{i}")).as_deref(), Some("v"));
            assert_eq!(map.text(&format!("k{i}:companion")).as_deref(), Some("c"));
        }
        assert_eq!(
            fills.counts(),
            FillCounts {
                written: 3,
                writes: 1,
                dropped: 0
            }
        );
    }

    /// The map, each `mset` taking `delay`: a write in flight for a while.
    struct SlowWrites {
        map: Arc<MapBackend>,
        delay: Duration,
    }

    #[async_trait]
    impl CacheBackend for SlowWrites {
        fn name(&self) -> &'static str {
            "slow"
        }
        async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
            self.map.get(key).await
        }
        async fn set(&self, k: &str, v: Bytes, t: Option<Duration>) -> Result<(), BackendError> {
            self.map.set(k, v, t).await
        }
        async fn delete(&self, key: &str) -> Result<bool, BackendError> {
            self.map.delete(key).await
        }
        async fn compare_and_delete(&self, k: &str, e: &[u8]) -> Result<bool, BackendError> {
            self.map.compare_and_delete(k, e).await
        }
        async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
            self.map.mget(keys).await
        }
        async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
            tokio::time::sleep(self.delay).await;
            self.map.mset(entries).await
        }
        async fn ping(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fill_queued_while_a_write_is_in_flight_lingers_for_the_next_write() {
        let map = Arc::new(MapBackend::default());
        let slow = Arc::new(SlowWrites {
            map: map.clone(),
            delay: Duration::from_millis(2),
        });
        let fills = DeferredFills::new(slow, LINGER);
        let ms = Duration::from_millis;
        fills.fill(fill("a", "v"), in_time()).await.unwrap();
        // t = 5: a's write goes out, in flight until 7; b comes at 6.
        tokio::time::sleep(ms(6)).await;
        fills.fill(fill("b", "v"), in_time()).await.unwrap();
        // b lingers from 7 to 12; c, at 10, joins it.
        tokio::time::sleep(ms(4)).await;
        fills.fill(fill("c", "v"), in_time()).await.unwrap();
        tokio::time::sleep(ms(1)).await;
        assert_eq!(map.text("a").as_deref(), Some("v"));
        assert_eq!(map.text("b"), None, "t = 11: b still lingers");
        // Their write: 12 to 14.
        tokio::time::sleep(ms(4)).await;
        assert_eq!(map.text("b").as_deref(), Some("v"));
        assert_eq!(map.text("c").as_deref(), Some("v"));
        assert_eq!(map.msets(), 2, "a, then b with c");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fill_never_waits_for_the_backend() {
        let hung = Arc::new(StubBackend::new().op_delay(FOREVER));
        let fills = DeferredFills::new(hung, LINGER);
        let started = tokio::time::Instant::now();
        fills.fill(fill("k", "v"), in_time()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_linger_a_fill_is_written_before_fill_returns() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, Duration::ZERO);
        fills.fill(fill("k", "v"), in_time()).await.unwrap();
        assert_eq!(map.text("k").as_deref(), Some("v"));
        assert_eq!(map.msets(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fill_past_its_deadline_is_dropped_unwritten() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        // Its load started a write fence ago: a fence may have expired.
        fills
            .fill(fill("late", "old"), Instant::now())
            .await
            .unwrap();
        fills.fill(fill("k", "v"), in_time()).await.unwrap();
        fills.flush().await;
        assert_eq!(map.text("late"), None);
        assert_eq!(map.text("late:companion"), None);
        assert_eq!(map.text("k").as_deref(), Some("v"));
        assert_eq!(fills.counts().dropped, 1);
        assert_eq!(fills.counts().written, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_of_a_key_drops_the_fills_of_it_queued_before() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        fills.fill(fill("set", "old"), in_time()).await.unwrap();
        fills.fill(fill("deleted", "old"), in_time()).await.unwrap();
        fills.fill(fill("msets", "old"), in_time()).await.unwrap();
        fills.fill(fill("kept", "v"), in_time()).await.unwrap();
        // A writer's fence, a delete of a companion, a writer's mset.
        fills
            .set("set", Bytes::from_static(b"fence"), None)
            .await
            .unwrap();
        fills.delete("deleted:companion").await.unwrap();
        fills
            .mset(&[Entry::new("msets".into(), Bytes::from_static(b"new"), None)])
            .await
            .unwrap();
        fills.flush().await;
        assert_eq!(map.text("set").as_deref(), Some("fence"));
        assert_eq!(map.text("deleted"), None);
        assert_eq!(map.text("deleted:companion"), None);
        assert_eq!(map.text("msets").as_deref(), Some("new"));
        assert_eq!(map.text("kept").as_deref(), Some("v"));
        assert_eq!(fills.counts().dropped, 3);
        assert_eq!(fills.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_fill_never_replaces_what_another_writer_put_there() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        fills.fill(fill("k", "old"), in_time()).await.unwrap();
        // Another instance's fence, written while the fill waited.
        map.put("k", "fence");
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(map.text("k").as_deref(), Some("fence"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_drops_its_fills_and_later_fills_go_out() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        map.set_down(true);
        fills.fill(fill("lost", "v"), in_time()).await.unwrap();
        tokio::time::sleep(LINGER * 2).await;
        map.set_down(false);
        fills.fill(fill("k", "v"), in_time()).await.unwrap();
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(map.text("lost"), None, "a failed fill is not retried");
        assert_eq!(fills.pending(), 0);
        assert_eq!(map.text("k").as_deref(), Some("v"));
        assert_eq!(
            fills.counts(),
            FillCounts {
                written: 1,
                writes: 2,
                dropped: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_the_new_fill() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, FOREVER);
        for i in 0..=FILL_QUEUE_CAPACITY {
            fills
                .fill(fill(&format!("k{i}"), "v"), in_time())
                .await
                .unwrap();
        }
        assert_eq!(fills.counts().dropped, 1);
        assert_eq!(fills.pending(), FILL_QUEUE_CAPACITY);
        fills.flush().await;
        assert_eq!(fills.pending(), 0);
        assert_eq!(fills.counts().written, FILL_QUEUE_CAPACITY as u64);
        assert_eq!(map.text(&format!("k{FILL_QUEUE_CAPACITY}")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_queue_goes_out_in_writes_of_at_most_fills_per_write() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        for i in 0..(FILLS_PER_WRITE * 2 + 1) {
            fills
                .fill(fill(&format!("k{i}"), "v"), in_time())
                .await
                .unwrap();
        }
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(map.msets(), 3);
        assert_eq!(map.len(), (FILLS_PER_WRITE * 2 + 1) * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_decorator_writes_what_is_queued() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, FOREVER);
        fills.fill(fill("k", "v"), in_time()).await.unwrap();
        // The writer is in its (endless) linger when the decorator goes.
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(fills);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(map.text("k").as_deref(), Some("v"));
    }

    #[tokio::test(start_paused = true)]
    async fn every_other_operation_reaches_the_backend_at_once() {
        let map = Arc::new(MapBackend::default());
        let fills = deferred(&map, LINGER);
        fills
            .set("a", Bytes::from_static(b"1"), None)
            .await
            .unwrap();
        assert_eq!(fills.get("a").await, Ok(Some(Bytes::from_static(b"1"))));
        fills
            .mset(&[Entry::new("b".into(), Bytes::from_static(b"2"), None)])
            .await
            .unwrap();
        assert_eq!(
            fills.mget(&["a".into(), "b".into()]).await,
            Ok(vec![
                Some(Bytes::from_static(b"1")),
                Some(Bytes::from_static(b"2"))
            ])
        );
        assert_eq!(fills.delete("a").await, Ok(true));
        assert_eq!(fills.compare_and_delete("b", b"2").await, Ok(true));
        assert_eq!(fills.name(), "map");
        assert_eq!(fills.ping().await, Ok(()));
    }
}
