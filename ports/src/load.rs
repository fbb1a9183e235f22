//! Read-through caching: `get_or_load` and `mget_or_load`, with single-flight
//! (concurrent misses for one key share one load), negative caching, a bound
//! on every load, and the observer seam every outcome passes through.
//!
//! Runtime-free: a shared future (`futures::future::Shared`) carries a load
//! to every waiter, a `std` mutex guards the table of loads in flight, and
//! the bound on a load comes from a [`Timer`] port that the application
//! implements with its runtime.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tracing::Instrument as _;

use crate::error::CacheError;
use crate::typed::{CacheDefinition, TypedCache, check_batch};

/// Sleeps: the one thing the cache core needs from a runtime, to bound loads.
///
/// Boxed future: implementations live behind `Arc<dyn Timer>`.
pub trait Timer: Send + Sync {
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// What happened in a typed cache, for an observer (metrics, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// A read found a value.
    Hit,
    /// A read found nothing (or the backend failed: see `BackendError`).
    Miss,
    /// A read found a remembered "no such entry" (negative caching).
    NegativeHit,
    /// A loader ran; `found` is whether it returned a value.
    Loaded {
        /// How long the load took.
        elapsed: Duration,
        /// Whether it found a value.
        found: bool,
    },
    /// A loader failed or timed out; nothing was cached.
    LoadFailed {
        /// How long until it failed.
        elapsed: Duration,
    },
    /// A caller waited for a load another caller started (single-flight).
    Coalesced,
    /// A stored value did not decode and was removed.
    CorruptRemoved,
    /// A value was written.
    Written,
    /// A backend error was swallowed (the operation became a miss or a no-op).
    BackendError,
}

/// Sees every outcome of the typed caches it is attached to.
///
/// Called inline on the request path: keep it cheap (counters). No observer
/// attached costs one branch.
pub trait CacheObserver: Send + Sync {
    /// `namespace` is the cache's; `event` what happened.
    fn observe(&self, namespace: &'static str, event: CacheEvent);
}

/// How a read-through load failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError<E> {
    /// The loader failed; every waiter gets its error, and nothing is cached.
    #[error("loading failed: {0}")]
    Loader(E),
    /// The load took longer than its bound; nothing is cached.
    #[error("loading took longer than {0:?}")]
    TimedOut(Duration),
    /// The caller asked for something the cache refuses (a batch over 100).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A load started with another error type failed (a programming slip:
    /// two loaders of different kinds for one cache); its message.
    #[error("loading failed: {0}")]
    Other(String),
}

/// The outcome every waiter of one load shares.
#[derive(Clone)]
enum Failure {
    Loader {
        error: Arc<dyn Any + Send + Sync>,
        message: String,
    },
    TimedOut(Duration),
}

impl Failure {
    fn into_load_error<E: Clone + 'static>(self) -> LoadError<E> {
        match self {
            Failure::Loader { error, message } => match error.downcast_ref::<E>() {
                Some(error) => LoadError::Loader(error.clone()),
                None => LoadError::Other(message),
            },
            Failure::TimedOut(bound) => LoadError::TimedOut(bound),
        }
    }
}

type SharedLoad<V> = Shared<BoxFuture<'static, Result<Option<V>, Failure>>>;
/// One batch load, shared by the share of each of its keys.
type SharedBatch<V> = Shared<BoxFuture<'static, Result<Arc<HashMap<String, V>>, Failure>>>;

/// The loads in flight of one typed cache, by full key.
pub(crate) struct Flights<V> {
    table: Mutex<HashMap<String, (u64, SharedLoad<V>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<V> Flights<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, SharedLoad<V>)>> {
        // A panic while holding it leaves a consistent map (inserts and removes).
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes `key`'s load if it is still load `id` (not a newer one).
    fn finish(&self, key: &str, id: u64) {
        let mut table = self.lock();
        if table.get(key).is_some_and(|(current, _)| *current == id) {
            table.remove(key);
        }
    }

    /// Stops sharing the load of `key` in flight, if any: later callers
    /// start a new one (after a write). Its waiters still get its answer.
    pub(crate) fn detach(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Loads in flight (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Remembered "no such entry" answers, in this process only, until they expire.
///
/// In-process on purpose: a marker written to Redis would sit in the seed's
/// namespaces, where the Python service would read a value it cannot parse.
pub(crate) struct Negatives {
    table: Mutex<HashMap<String, Instant>>,
}

/// The most negative entries one cache keeps; past it, new ones are not
/// remembered until old ones expire (a flood of unknown keys cannot grow it).
const MAX_NEGATIVES: usize = 10_000;

impl Default for Negatives {
    fn default() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
        }
    }
}

impl Negatives {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn contains(&self, key: &str) -> bool {
        let mut table = self.lock();
        match table.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                table.remove(key);
                false
            }
            None => false,
        }
    }

    fn remember(&self, key: String, ttl: Duration) {
        let now = Instant::now();
        let mut table = self.lock();
        if table.len() >= MAX_NEGATIVES {
            table.retain(|_, until| *until > now);
            if table.len() >= MAX_NEGATIVES {
                return;
            }
        }
        table.insert(key, now + ttl);
    }

    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

impl<D: CacheDefinition> TypedCache<D>
where
    D::Value: Clone,
{
    /// Returns the value at `key`; on a miss, runs `loader` and stores what
    /// it returns (with this cache's TTL, jittered).
    ///
    /// - `loader` answers `Ok(Some(value))`, `Ok(None)` ("there is no such
    ///   entry": remembered in this process for the cache's negative TTL, if it
    ///   has one), or `Err(e)` (reaches every waiter, cached nowhere).
    /// - Single-flight: concurrent callers for the same missing key in this
    ///   process share one call of `loader` and get the same result. A caller
    ///   that is dropped (its request cancelled) does not stop the load for
    ///   the others.
    /// - Every load is cut at the cache's load bound (when a [`Timer`] is
    ///   given): [`LoadError::TimedOut`], nothing cached, no waiter waits longer.
    /// - A backend failure is a miss, as for [`TypedCache::get`]; a value that
    ///   cannot be stored is still returned.
    ///
    /// ```
    /// # use ports::{CacheDefinition, TextCodec, TypedCache, LoadError};
    /// # struct Squares;
    /// # impl CacheDefinition for Squares {
    /// #     type Key = i64; type Value = i64; type Codec = TextCodec;
    /// #     const NAMESPACE: &'static str = "squares";
    /// # }
    /// #[derive(Debug, Clone, thiserror::Error)]
    /// #[error("the store is down")]
    /// struct StoreDown;
    ///
    /// async fn square(cache: &TypedCache<Squares>, n: i64) -> Result<Option<i64>, LoadError<StoreDown>> {
    ///     // A hit returns the cached value; a miss runs the loader once for
    ///     // every concurrent caller, and caches what it finds.
    ///     cache.get_or_load(&n, move || async move { Ok(Some(n * n)) }).await
    /// }
    /// ```
    ///
    /// # Errors
    /// [`LoadError::Loader`] with the loader's error; [`LoadError::TimedOut`].
    pub async fn get_or_load<E, F, Fut>(
        &self,
        key: &D::Key,
        loader: F,
    ) -> Result<Option<D::Value>, LoadError<E>>
    where
        E: std::error::Error + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<D::Value>, E>> + Send + 'static,
    {
        let full = self.key(key);
        if let Some(value) = self.read(&full).await {
            return Ok(Some(value));
        }
        if self.negatives.contains(&full) {
            self.observe(crate::CacheEvent::NegativeHit);
            return Ok(None);
        }
        let load = self.start_or_join(full, || {
            loader()
                .map(|result| result.map_err(|error| wrap(&error)))
                .boxed()
        });
        load.await.map_err(Failure::into_load_error)
    }

    /// Returns the values of `keys` in order (`None` where there is none),
    /// loading the misses: one MGET; keys another caller is loading already
    /// are awaited; the rest go to `batch_loader` in one call, and what it
    /// returns is written in one pipelined round trip. Keys `batch_loader`
    /// does not return are "no such entry" (remembered per the negative TTL).
    ///
    /// # Errors
    /// [`LoadError::Cache`] for more than [`crate::MAX_BATCH`] keys;
    /// [`LoadError::Loader`] / [`LoadError::TimedOut`] when a load the answer
    /// depends on failed.
    pub async fn mget_or_load<E, F, Fut>(
        &self,
        keys: &[D::Key],
        batch_loader: F,
    ) -> Result<Vec<Option<D::Value>>, LoadError<E>>
    where
        D::Key: Clone + Send + 'static,
        E: std::error::Error + Clone + Send + Sync + 'static,
        F: FnOnce(Vec<D::Key>) -> Fut,
        Fut: Future<Output = Result<Vec<(D::Key, D::Value)>, E>> + Send + 'static,
    {
        check_batch(keys.len())?;
        let cached = self.mget(keys).await?;
        let full_keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        let mut answers: Vec<Option<D::Value>> = Vec::with_capacity(keys.len());
        let mut waiting: Vec<(usize, SharedLoad<D::Value>)> = Vec::new();
        let mut to_load: Vec<(usize, D::Key, String)> = Vec::new();
        for (index, (found, (key, full))) in cached
            .into_iter()
            .zip(keys.iter().zip(&full_keys))
            .enumerate()
        {
            answers.push(None);
            match found {
                Some(value) => answers[index] = Some(value),
                None if self.negatives.contains(full) => {
                    self.observe(crate::CacheEvent::NegativeHit);
                }
                None => to_load.push((index, key.clone(), full.clone())),
            }
        }
        if !to_load.is_empty() {
            // Keys being loaded already are joined; the others form one batch.
            let mut mine: Vec<(usize, D::Key, String)> = Vec::new();
            if self.loading.single_flight {
                let table = self.flights.lock();
                for (index, key, full) in to_load {
                    match table.get(&full) {
                        Some((_, load)) => {
                            self.observe(crate::CacheEvent::Coalesced);
                            waiting.push((index, load.clone()));
                        }
                        None => mine.push((index, key, full)),
                    }
                }
            } else {
                mine = to_load;
            }
            if !mine.is_empty() {
                for (index, load) in self.start_batch(mine, batch_loader) {
                    waiting.push((index, load));
                }
            }
        }
        let results = futures::future::join_all(
            waiting
                .into_iter()
                .map(|(index, load)| load.map(move |result| (index, result))),
        )
        .await;
        for (index, result) in results {
            answers[index] = result.map_err(Failure::into_load_error)?;
        }
        Ok(answers)
    }

    /// Joins the load of `full` in flight, or starts one with `make`.
    fn start_or_join(
        &self,
        full: String,
        make: impl FnOnce() -> BoxFuture<'static, Result<Option<D::Value>, Failure>>,
    ) -> SharedLoad<D::Value> {
        if !self.loading.single_flight {
            return self.load_future(full, None, make());
        }
        let mut table = self.flights.lock();
        if let Some((_, load)) = table.get(&full) {
            self.observe(crate::CacheEvent::Coalesced);
            return load.clone();
        }
        let id = self
            .flights
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let load = self.load_future(full.clone(), Some(id), make());
        table.insert(full, (id, load.clone()));
        load
    }

    /// The shared future of one load: bounded, stores what it found,
    /// remembers an absence, observes, and leaves the table of flights.
    fn load_future(
        &self,
        full: String,
        id: Option<u64>,
        loader: BoxFuture<'static, Result<Option<D::Value>, Failure>>,
    ) -> SharedLoad<D::Value> {
        let cache = self.clone();
        let flights: Weak<Flights<D::Value>> = Arc::downgrade(&self.flights);
        // The load's span: a child of the request that started it.
        let span = crate::typed::cache_span(D::NAMESPACE, "load", self.backend(), &full);
        let traced = span.clone();
        async move {
            let started = Instant::now();
            let result = cache.bounded(loader).await;
            if !span.is_disabled() {
                span.record(
                    "cache.outcome",
                    match &result {
                        Ok(Some(_)) => "found",
                        Ok(None) => "absent",
                        Err(_) => "failed",
                    },
                );
            }
            match &result {
                Ok(Some(value)) => {
                    cache.observe(crate::CacheEvent::Loaded {
                        elapsed: started.elapsed(),
                        found: true,
                    });
                    cache.store(&full, value, started).await;
                }
                Ok(None) => {
                    cache.observe(crate::CacheEvent::Loaded {
                        elapsed: started.elapsed(),
                        found: false,
                    });
                    if let Some(ttl) = cache.loading.negative_ttl {
                        cache.negatives.remember(full.clone(), ttl);
                    }
                }
                Err(_) => cache.observe(crate::CacheEvent::LoadFailed {
                    elapsed: started.elapsed(),
                }),
            }
            if let (Some(id), Some(flights)) = (id, flights.upgrade()) {
                flights.finish(&full, id);
            }
            result
        }
        .instrument(traced)
        .boxed()
        .shared()
    }

    /// Starts one batch load for `mine`; returns each key's share of it.
    fn start_batch<E, F, Fut>(
        &self,
        mine: Vec<(usize, D::Key, String)>,
        batch_loader: F,
    ) -> Vec<(usize, SharedLoad<D::Value>)>
    where
        D::Key: Clone + Send + 'static,
        E: std::error::Error + Clone + Send + Sync + 'static,
        F: FnOnce(Vec<D::Key>) -> Fut,
        Fut: Future<Output = Result<Vec<(D::Key, D::Value)>, E>> + Send + 'static,
    {
        let keys: Vec<D::Key> = mine.iter().map(|(_, key, _)| key.clone()).collect();
        let fulls: Vec<String> = mine.iter().map(|(_, _, full)| full.clone()).collect();
        let loader = batch_loader(keys).map(|result| result.map_err(|error| wrap(&error)));
        let cache = self.clone();
        let batch_fulls = fulls.clone();
        let batch: SharedBatch<D::Value> = async move {
            let started = Instant::now();
            let result = cache.bounded(loader.boxed()).await;
            let result = result.map(|found| {
                found
                    .into_iter()
                    .map(|(key, value)| (cache.key(&key), value))
                    .collect::<HashMap<String, D::Value>>()
            });
            match &result {
                Ok(found) => {
                    cache.observe(crate::CacheEvent::Loaded {
                        elapsed: started.elapsed(),
                        found: !found.is_empty(),
                    });
                    cache.store_many(found, started).await;
                    if let Some(ttl) = cache.loading.negative_ttl {
                        for full in batch_fulls.iter().filter(|f| !found.contains_key(*f)) {
                            cache.negatives.remember(full.clone(), ttl);
                        }
                    }
                }
                Err(_) => cache.observe(crate::CacheEvent::LoadFailed {
                    elapsed: started.elapsed(),
                }),
            }
            result.map(Arc::new)
        }
        .boxed()
        .shared();
        let mut shares = Vec::with_capacity(mine.len());
        let mut table = self.flights.lock();
        for ((index, _, _), full) in mine.into_iter().zip(fulls) {
            let id = self
                .flights
                .next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let flights: Weak<Flights<D::Value>> = Arc::downgrade(&self.flights);
            let single_flight = self.loading.single_flight;
            let key = full.clone();
            let share: SharedLoad<D::Value> = batch
                .clone()
                .map(move |result| {
                    if let Some(flights) = flights.upgrade() {
                        flights.finish(&key, id);
                    }
                    result.map(|found| found.get(&key).cloned())
                })
                .boxed()
                .shared();
            if single_flight {
                table.insert(full, (id, share.clone()));
            }
            shares.push((index, share));
        }
        shares
    }

    /// `loader`, cut at the load bound when there is a timer.
    async fn bounded<T>(
        &self,
        loader: BoxFuture<'static, Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let (Some(timer), Some(bound)) = (&self.loading.timer, self.loading.load_timeout) else {
            return loader.await;
        };
        let sleep = timer.sleep(bound);
        futures::pin_mut!(sleep);
        match futures::future::select(loader, sleep).await {
            futures::future::Either::Left((result, _)) => result,
            futures::future::Either::Right(((), _)) => Err(Failure::TimedOut(bound)),
        }
    }
}

fn wrap<E: std::error::Error + Clone + Send + Sync + 'static>(error: &E) -> Failure {
    Failure::Loader {
        message: error.to_string(),
        error: Arc::new(error.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::backend::Entry;
    use crate::codec::TextCodec;
    use crate::testing::MapBackend;
    use crate::typed::{WRITE_FENCE, jittered};

    struct Squares;
    impl CacheDefinition for Squares {
        type Key = i64;
        type Value = i64;
        type Codec = TextCodec;
        const NAMESPACE: &'static str = "test:squares";
    }

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("the store is down")]
    struct StoreDown;

    struct TokioTimer;
    impl Timer for TokioTimer {
        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            tokio::time::sleep(duration).boxed()
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<CacheEvent>>);
    impl CacheObserver for Events {
        fn observe(&self, _: &'static str, event: CacheEvent) {
            self.0.lock().unwrap().push(event);
        }
    }
    impl Events {
        fn count(&self, wanted: fn(&CacheEvent) -> bool) -> usize {
            self.0.lock().unwrap().iter().filter(|e| wanted(e)).count()
        }
    }

    fn cache(backend: &Arc<MapBackend>) -> TypedCache<Squares> {
        TypedCache::new(backend.clone() as crate::SharedBackend)
    }

    /// Another instance's cache over the same backend (its own flights,
    /// negatives and pending fences).
    fn cache_of(backend: &Arc<MapBackend>) -> TypedCache<Squares> {
        cache(backend)
    }

    /// A loader that counts its calls and answers once `gate` opens.
    fn gated_loader(
        calls: &Arc<AtomicUsize>,
        gate: &Arc<tokio::sync::Notify>,
        answer: Result<Option<i64>, StoreDown>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Option<i64>, StoreDown>> + use<> {
        let (calls, gate) = (calls.clone(), gate.clone());
        move || {
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                answer
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_key_share_one_load() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let (cache, loader) = (cache.clone(), gated_loader(&calls, &gate, Ok(Some(49))));
                tokio::spawn(async move { cache.get_or_load(&7, loader).await })
            })
            .collect();
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Ok(Some(49)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&7).await, Some(49), "the loaded value is cached");
        assert_eq!(cache.flights.len(), 0, "the flight is over");
    }

    #[tokio::test]
    async fn a_loader_error_reaches_every_waiter_and_is_not_cached() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (cache, loader) = (cache.clone(), gated_loader(&calls, &gate, Err(StoreDown)));
                tokio::spawn(async move { cache.get_or_load(&3, loader).await })
            })
            .collect();
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Err(LoadError::Loader(StoreDown)));
        }
        // Not cached: the next call loads again.
        let again = cache
            .get_or_load(&3, || async { Ok::<_, StoreDown>(Some(9)) })
            .await;
        assert_eq!(again, Ok(Some(9)));
    }

    #[tokio::test]
    async fn a_cancelled_first_caller_does_not_stop_the_load_for_the_others() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (cache, loader) = (cache.clone(), gated_loader(&calls, &gate, Ok(Some(16))));
            tokio::spawn(async move { cache.get_or_load(&4, loader).await })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let second = {
            let (cache, loader) = (cache.clone(), gated_loader(&calls, &gate, Ok(Some(-1))));
            tokio::spawn(async move { cache.get_or_load(&4, loader).await })
        };
        tokio::task::yield_now().await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        gate.notify_waiters();
        assert_eq!(
            second.await.unwrap(),
            Ok(Some(16)),
            "the first load, finished"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_longer_than_its_bound_times_out_for_every_waiter() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend)
            .with_timer(Arc::new(TokioTimer))
            .with_load_timeout(Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let result = cache
            .get_or_load(&5, || {
                std::future::pending::<Result<Option<i64>, StoreDown>>()
            })
            .await;
        assert_eq!(result, Err(LoadError::TimedOut(Duration::from_millis(300))));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(cache.get(&5).await, None, "nothing cached");
        assert_eq!(cache.flights.len(), 0);
    }

    #[tokio::test]
    async fn without_single_flight_every_miss_loads() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend).with_single_flight(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (cache, loader) = (cache.clone(), gated_loader(&calls, &gate, Ok(Some(1))));
                tokio::spawn(async move { cache.get_or_load(&1, loader).await })
            })
            .collect();
        while calls.load(Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for waiter in waiters {
            assert_eq!(waiter.await.unwrap(), Ok(Some(1)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn no_such_entry_is_remembered_for_the_negative_ttl_then_asked_again() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend).with_negative_ttl(Some(Duration::from_millis(80)));
        let calls = Arc::new(AtomicUsize::new(0));
        let load = || {
            let calls = calls.clone();
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, StoreDown>(None)
            }
        };
        for _ in 0..5 {
            assert_eq!(cache.get_or_load(&404, load()).await, Ok(None));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "repeats within the TTL stay home"
        );
        assert!(backend.is_empty(), "nothing written to the backend");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(cache.get_or_load(&404, load()).await, Ok(None));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "asked again after it expired"
        );
        // Off by default: every miss asks.
        let plain = self::cache(&backend);
        for _ in 0..3 {
            assert_eq!(plain.get_or_load(&405, load()).await, Ok(None));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn mget_or_load_asks_the_batch_loader_once_for_the_misses_and_writes_once() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        cache.set(&1, &1).await.unwrap();
        cache.set(&2, &4).await.unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let loader = {
            let asked = asked.clone();
            move |keys: Vec<i64>| async move {
                asked.lock().unwrap().push(keys.clone());
                // 13 does not exist.
                Ok::<_, StoreDown>(
                    keys.into_iter()
                        .filter(|k| *k != 13)
                        .map(|k| (k, k * k))
                        .collect(),
                )
            }
        };
        let values = cache.mget_or_load(&[1, 2, 3, 13, 5], loader).await;
        assert_eq!(values, Ok(vec![Some(1), Some(4), Some(9), None, Some(25)]));
        assert_eq!(*asked.lock().unwrap(), vec![vec![3, 13, 5]]);
        assert_eq!(backend.mgets(), 1);
        assert_eq!(backend.msets(), 1);
        assert_eq!(cache.get(&5).await, Some(25));
    }

    #[tokio::test]
    async fn mget_or_load_waits_for_keys_another_caller_is_loading() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let single = {
            let (cache, loader) = (cache.clone(), gated_loader(&calls, &gate, Ok(Some(36))));
            tokio::spawn(async move { cache.get_or_load(&6, loader).await })
        };
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let asked = Arc::new(Mutex::new(Vec::new()));
        let batch = {
            let (cache, asked) = (cache.clone(), asked.clone());
            tokio::spawn(async move {
                cache
                    .mget_or_load(&[6, 7], move |keys: Vec<i64>| async move {
                        asked.lock().unwrap().push(keys.clone());
                        Ok::<_, StoreDown>(keys.into_iter().map(|k| (k, k * k)).collect())
                    })
                    .await
            })
        };
        while asked.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        assert_eq!(batch.await.unwrap(), Ok(vec![Some(36), Some(49)]));
        assert_eq!(single.await.unwrap(), Ok(Some(36)));
        assert_eq!(
            *asked.lock().unwrap(),
            vec![vec![7]],
            "6 was awaited, not loaded twice"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn every_outcome_passes_through_the_observer() {
        let backend = Arc::new(MapBackend::default());
        let events = Arc::new(Events::default());
        let cache = cache(&backend)
            .with_observer(events.clone())
            .with_negative_ttl(Some(Duration::from_secs(60)));
        let _ = cache
            .get_or_load(&2, || async { Ok::<_, StoreDown>(Some(4)) })
            .await;
        let _ = cache
            .get_or_load(&2, || async { Ok::<_, StoreDown>(Some(4)) })
            .await;
        let _ = cache
            .get_or_load(&3, || async { Ok::<_, StoreDown>(None) })
            .await;
        let _ = cache
            .get_or_load(&3, || async { Ok::<_, StoreDown>(None) })
            .await;
        let _ = cache
            .get_or_load(&4, || async { Err::<Option<i64>, _>(StoreDown) })
            .await;
        assert_eq!(events.count(|e| *e == CacheEvent::Hit), 1);
        // A negative hit is a cache miss first: 2, 3, 3 again, 4.
        assert_eq!(events.count(|e| *e == CacheEvent::Miss), 4);
        assert_eq!(events.count(|e| *e == CacheEvent::NegativeHit), 1);
        assert_eq!(
            events.count(|e| matches!(e, CacheEvent::Loaded { found: true, .. })),
            1
        );
        assert_eq!(
            events.count(|e| matches!(e, CacheEvent::Loaded { found: false, .. })),
            1
        );
        assert_eq!(
            events.count(|e| matches!(e, CacheEvent::LoadFailed { .. })),
            1
        );
        assert_eq!(events.count(|e| *e == CacheEvent::Written), 1);
    }

    #[tokio::test]
    async fn a_loaded_value_goes_out_with_its_companions_in_one_round_trip() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend).with_companions(Arc::new(|value: &i64| {
            vec![Entry::new(
                format!("test:roots:{value}"),
                Bytes::from_static(b"root"),
                None,
            )]
        }));
        let loaded = cache
            .get_or_load(&3, || async { Ok::<_, StoreDown>(Some(9)) })
            .await;
        assert_eq!(loaded, Ok(Some(9)));
        assert_eq!(backend.msets(), 1);
        assert_eq!(backend.text("test:squares:3").as_deref(), Some("9"));
        assert!(backend.raw("test:roots:9").is_some());
    }

    #[tokio::test]
    async fn a_fill_may_not_be_written_later_than_a_fence_set_after_its_load_began_lives() {
        let fence = Duration::from_millis(800);
        let mut mock = crate::MockCacheBackend::new();
        mock.expect_get_now().returning(|_| None);
        mock.expect_get().returning(|_| Ok(None));
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let seen = deadlines.clone();
        mock.expect_fill().returning(move |_, not_after| {
            seen.lock().unwrap().push(not_after);
            Ok(())
        });
        mock.expect_name().return_const("mock");
        let cache = TypedCache::<Squares>::new(Arc::new(mock)).with_write_fence(fence);
        let before = std::time::Instant::now();
        let loaded = cache
            .get_or_load(&3, || async { Ok::<_, StoreDown>(Some(9)) })
            .await;
        let after = std::time::Instant::now();
        assert_eq!(loaded, Ok(Some(9)));
        let deadlines = deadlines.lock().unwrap();
        assert_eq!(deadlines.len(), 1, "one fill");
        assert!(
            deadlines[0] >= before + fence && deadlines[0] <= after + fence,
            "the load's start plus the fence"
        );
    }

    /// Starts `get_or_load(7)` with a gated loader answering `value`, and
    /// returns once the loader has read "the store".
    async fn load_paused_after_reading(
        cache: &TypedCache<Squares>,
        calls: &Arc<AtomicUsize>,
        gate: &Arc<tokio::sync::Notify>,
        value: i64,
    ) -> tokio::task::JoinHandle<Result<Option<i64>, LoadError<StoreDown>>> {
        let before = calls.load(Ordering::SeqCst);
        let (reader, loader) = (cache.clone(), gated_loader(calls, gate, Ok(Some(value))));
        let handle = tokio::spawn(async move { reader.get_or_load(&7, loader).await });
        while calls.load(Ordering::SeqCst) == before {
            tokio::task::yield_now().await;
        }
        handle
    }

    #[tokio::test]
    async fn a_value_loaded_before_a_write_is_not_filled_after_its_fence() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        let (calls, gate) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Notify::new()),
        );
        // The reader has read the old value (48) and is paused before its fill.
        let reader = load_paused_after_reading(&cache, &calls, &gate, 48).await;
        // The write commits (49) and fences the key.
        cache.fence(&7).await;
        gate.notify_one();
        assert_eq!(
            reader.await.unwrap(),
            Ok(Some(48)),
            "its own caller overlapped the write"
        );
        assert_eq!(
            backend.raw("test:squares:7").as_deref(),
            Some(WRITE_FENCE),
            "the fence held"
        );
        assert_eq!(cache.get(&7).await, None, "a fence reads as a miss");
        let after = cache
            .get_or_load(&7, || async { Ok::<_, StoreDown>(Some(49)) })
            .await;
        assert_eq!(after, Ok(Some(49)), "the next read loads the new value");
    }

    #[tokio::test]
    async fn a_fence_is_a_miss_not_a_corrupt_entry() {
        let backend = Arc::new(MapBackend::default());
        let events = Arc::new(Events::default());
        let cache = cache(&backend).with_observer(events.clone());
        cache.set(&7, &49).await.unwrap();
        cache.fence(&7).await;
        assert_eq!(cache.get(&7).await, None);
        assert_eq!(cache.mget(&[7]).await, Ok(vec![None]));
        assert_eq!(events.count(|e| *e == CacheEvent::CorruptRemoved), 0);
        assert_eq!(
            backend.raw("test:squares:7").as_deref(),
            Some(WRITE_FENCE),
            "not removed"
        );
    }

    #[tokio::test]
    async fn a_load_started_before_a_fence_is_not_joined_after_it() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        let (calls, gate) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Notify::new()),
        );
        let before_write = load_paused_after_reading(&cache, &calls, &gate, 48).await;
        cache.fence(&7).await;
        // A request that starts after the write returned runs a load of its own.
        let after_write = cache
            .get_or_load(&7, || async { Ok::<_, StoreDown>(Some(49)) })
            .await;
        assert_eq!(after_write, Ok(Some(49)));
        gate.notify_one();
        assert_eq!(before_write.await.unwrap(), Ok(Some(48)));
    }

    #[tokio::test]
    async fn a_load_that_outlasts_the_fence_is_not_filled() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend).with_write_fence(Duration::from_millis(20));
        let (calls, gate) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Notify::new()),
        );
        let reader = load_paused_after_reading(&cache, &calls, &gate, 48).await;
        cache.fence(&7).await;
        // The fence expires while the reader is still paused (the map backend
        // keeps no TTL: remove it as Redis would after 20 ms).
        std::thread::sleep(Duration::from_millis(25));
        backend.remove("test:squares:7");
        gate.notify_one();
        assert_eq!(reader.await.unwrap(), Ok(Some(48)));
        assert_eq!(
            backend.raw("test:squares:7"),
            None,
            "the stale value was not filled"
        );
    }

    #[tokio::test]
    async fn a_fence_lost_to_an_outage_is_written_before_the_cache_serves_again() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        cache.set(&7, &48).await.unwrap();
        backend.set_down(true);
        cache.fence(&7).await;
        backend.set_down(false);
        // The old value is still stored; this cache must not serve it, and
        // its first read writes the fence every other instance will see.
        assert_eq!(cache.get(&7).await, None);
        assert_eq!(backend.raw("test:squares:7").as_deref(), Some(WRITE_FENCE));
        let another_instance = cache_of(&backend);
        assert_eq!(another_instance.get(&7).await, None);
        // Once written, loads fill again after the fence as usual.
        backend.remove("test:squares:7");
        let loaded = cache
            .get_or_load(&7, || async { Ok::<_, StoreDown>(Some(49)) })
            .await;
        assert_eq!(loaded, Ok(Some(49)));
        assert_eq!(backend.text("test:squares:7").as_deref(), Some("49"));
    }

    #[tokio::test]
    async fn mget_or_load_fills_only_keys_that_hold_nothing() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend);
        cache.fence(&2).await;
        let answers = cache
            .mget_or_load(&[1, 2], |keys: Vec<i64>| async move {
                Ok::<_, StoreDown>(keys.into_iter().map(|k| (k, k * k)).collect())
            })
            .await;
        assert_eq!(answers, Ok(vec![Some(1), Some(4)]));
        assert_eq!(backend.text("test:squares:1").as_deref(), Some("1"));
        assert_eq!(backend.raw("test:squares:2").as_deref(), Some(WRITE_FENCE));
    }

    #[tokio::test]
    async fn writes_are_jittered_below_the_ttl() {
        let backend = Arc::new(MapBackend::default());
        let cache = cache(&backend).with_ttl_jitter(0.1);
        for n in 0..200 {
            cache.set(&n, &n).await.unwrap();
        }
        let ttls = backend.set_ttls();
        let ttl = Duration::from_secs(600);
        assert!(
            ttls.iter()
                .all(|t| t.is_some_and(|t| t <= ttl && t >= ttl.mul_f64(0.9)))
        );
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(distinct.len() > 100, "keys written together expire apart");
    }

    proptest! {
        #[test]
        fn a_jittered_ttl_is_never_longer_than_the_ttl_nor_shorter_than_the_fraction_allows(
            secs in 1u64..10_000_000,
            fraction in 0.0f64..=1.0,
            unit in 0.0f64..=1.0,
        ) {
            let ttl = Duration::from_secs(secs);
            let got = jittered(Some(ttl), fraction, unit).unwrap();
            prop_assert!(got <= ttl);
            prop_assert!(got >= ttl.mul_f64(1.0 - fraction).saturating_sub(Duration::from_millis(1)).max(Duration::from_millis(1)).min(ttl));
            prop_assert_eq!(jittered(None, fraction, unit), None);
        }
    }
}
