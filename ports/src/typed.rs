//! The typed cache: the seed's `AsyncCacheBase[K, V]`, bound at compile time.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Entry, SharedBackend};
use crate::codec::Codec;
use crate::error::BackendError;
use crate::error::CacheError;
use crate::key::{CacheKey, bucketed_key, full_key};
use crate::limiter::LogLimiter;
use crate::load::{CacheEvent, CacheObserver, Flights, Negatives, Timer};
use crate::memo::DecodeMemo;
use crate::policy::{CachePolicy, DEFAULT_MAX_VALUE_BYTES, Ttl};
use crate::redact::LoggedKey;

/// The most entries one `mget` or `mset` may carry (the seed's limit): it makes
/// callers think about batch sizes and keeps one request from flooding Redis.
pub const MAX_BATCH: usize = 100;

/// What [`TypedCache::fence`] stores: a NUL byte no JSON or text value
/// starts with, then a name that says what it is to whoever reads the key
/// with `redis-cli`. Reads see it as a miss, never as a corrupt entry.
pub const WRITE_FENCE: &[u8] = b"\x00cachemanager:write-fence";

/// The most fences one cache remembers while the backend refuses them.
const MAX_PENDING_FENCES: usize = 10_000;

/// Fences the backend could not store (it was failing). Until each is
/// written, its key is a miss here and is never filled; the first read after
/// the outage writes them all, so every instance stops serving the old
/// values as soon as this one touches the cache again.
#[derive(Default)]
struct PendingFences {
    any: std::sync::atomic::AtomicBool,
    keys: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl PendingFences {
    fn keys(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any fence waits: one relaxed load on every read.
    #[inline]
    fn any(&self) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, key: String) -> bool {
        let mut keys = self.keys();
        if keys.len() >= MAX_PENDING_FENCES {
            return false;
        }
        keys.insert(key);
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        true
    }

    fn contains(&self, key: &str) -> bool {
        self.any() && self.keys().contains(key)
    }

    fn remove(&self, key: &str) {
        let mut keys = self.keys();
        keys.remove(key);
        if keys.is_empty() {
            self.any.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Everything that defines one cache, fixed at compile time.
///
/// A new cache is a zero-sized type and one impl:
///
/// ```
/// use ports::{CacheDefinition, TextCodec, Ttl};
///
/// /// Maps a session token to the id of its account.
/// pub struct SessionToAccount;
///
/// impl CacheDefinition for SessionToAccount {
///     type Key = String;
///     type Value = u64;
///     type Codec = TextCodec;
///     const NAMESPACE: &'static str = "session:to-account";
///     const DEFAULT_TTL: Ttl = Ttl::from_secs(300);
/// }
/// ```
///
/// `TypedCache<SessionToAccount>` then only accepts `String` keys and `u64`
/// values, and can never be mixed up with another cache.
pub trait CacheDefinition: Send + Sync + 'static {
    /// The key type; its segment follows `{NAMESPACE}:` in the full key.
    type Key: CacheKey + Send + Sync;
    /// The value type.
    type Value: Send + Sync + 'static;
    /// How values are stored.
    type Codec: Codec<Self::Value>;
    /// The namespace: the prefix of every key of this cache. Must be unique.
    const NAMESPACE: &'static str;
    /// The TTL used unless configuration overrides it (see [`crate::CachePolicy`]).
    const DEFAULT_TTL: Ttl = Ttl::DEFAULT;
    /// How long a loader's "no such entry" is remembered (in this process),
    /// unless configuration overrides it; `None`: not remembered. Off by
    /// default: only a cache whose absent keys are requested in floods (and
    /// whose entries appear rarely) should ask for it.
    const NEGATIVE_TTL: Option<Ttl> = None;
    /// Whether configuration may group this cache's keys in hash-tag
    /// buckets (`<NAMESPACE>:{<b>}:<key>`, see [`crate::bucketed_key`] and
    /// [`CachePolicy::with_key_buckets`]), so a batch on a Redis Cluster is
    /// a few commands instead of one per key. Buckets change every key: only
    /// for a namespace that no other program reads by key. Never for one
    /// shared with another service's format (the seed's namespaces).
    const KEY_BUCKETS: bool = false;
}

/// How a typed cache loads and writes; runtime parts (the timer) included.
#[derive(Clone)]
pub(crate) struct Loading {
    pub(crate) single_flight: bool,
    pub(crate) load_timeout: Option<Duration>,
    pub(crate) timer: Option<Arc<dyn Timer>>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) ttl_jitter: f64,
    pub(crate) write_fence: Duration,
}

impl Default for Loading {
    fn default() -> Self {
        Self {
            single_flight: true,
            load_timeout: None,
            timer: None,
            negative_ttl: None,
            ttl_jitter: 0.0,
            write_fence: crate::policy::DEFAULT_WRITE_FENCE,
        }
    }
}

/// A cache of `D::Key -> D::Value` over a shared byte-level backend.
///
/// "Cache is a luxury": backend failures are logged and become misses or
/// no-ops; the only errors a caller sees are its own (a batch too large, a
/// value that cannot be encoded). Cheap to clone.
pub struct TypedCache<D: CacheDefinition> {
    backend: SharedBackend,
    ttl: Ttl,
    max_value_bytes: usize,
    pub(crate) loading: Loading,
    /// Loads in flight and remembered absences: shared by clones.
    pub(crate) flights: Arc<Flights<D::Value>>,
    pub(crate) negatives: Arc<Negatives>,
    /// Fences the backend refused (an outage): written before anything is served again.
    pending: Arc<PendingFences>,
    observer: Option<Arc<dyn CacheObserver>>,
    companions: Option<Companions<D::Value>>,
    /// Values decoded lately, by their bytes (see [`TypedCache::with_decode_memo`]).
    memo: Option<Arc<DecodeMemo<D::Value>>>,
    /// Hash-tag buckets of every key (0: plain keys).
    key_buckets: u16,
    _definition: PhantomData<fn() -> D>,
}

/// Entries of other caches written with each loaded value, in the same
/// round trip (see [`TypedCache::with_companions`]).
pub type Companions<V> = Arc<dyn Fn(&V) -> Vec<Entry> + Send + Sync>;

impl<D: CacheDefinition> Clone for TypedCache<D> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            ttl: self.ttl,
            max_value_bytes: self.max_value_bytes,
            loading: self.loading.clone(),
            flights: self.flights.clone(),
            negatives: self.negatives.clone(),
            pending: self.pending.clone(),
            observer: self.observer.clone(),
            companions: self.companions.clone(),
            memo: self.memo.clone(),
            key_buckets: self.key_buckets,
            _definition: PhantomData,
        }
    }
}

impl<D: CacheDefinition> fmt::Debug for TypedCache<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCache")
            .field("namespace", &D::NAMESPACE)
            .field("backend", &self.backend.name())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<D: CacheDefinition> TypedCache<D> {
    /// A cache over `backend` with the definition's default TTL and the
    /// default value limit (1 MiB).
    ///
    /// Single-flight on, no TTL jitter, the definition's negative TTL, and
    /// no bound on loads (no timer): see the `with_*` builders.
    pub fn new(backend: SharedBackend) -> Self {
        Self {
            backend,
            ttl: D::DEFAULT_TTL,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            loading: Loading {
                negative_ttl: D::NEGATIVE_TTL.and_then(Ttl::expiry),
                ..Loading::default()
            },
            flights: Arc::default(),
            negatives: Arc::default(),
            pending: Arc::default(),
            observer: None,
            companions: None,
            memo: None,
            key_buckets: 0,
            _definition: PhantomData,
        }
    }

    /// A cache over `backend` with the TTL, value limit, TTL jitter,
    /// negative TTL, single-flight and load bound `policy` gives it.
    pub fn with_policy(backend: SharedBackend, policy: &CachePolicy) -> Self {
        let mut cache = Self::new(backend)
            .with_ttl(policy.resolve_ttl(D::NAMESPACE, D::DEFAULT_TTL))
            .with_max_value_bytes(policy.max_value_bytes())
            .with_ttl_jitter(policy.ttl_jitter());
        cache.loading.negative_ttl = policy
            .resolve_negative_ttl(D::NAMESPACE, D::NEGATIVE_TTL)
            .and_then(Ttl::expiry);
        cache.loading.single_flight = policy.single_flight();
        cache.loading.load_timeout = Some(policy.load_timeout());
        cache.loading.write_fence = policy.write_fence();
        cache.with_key_buckets(policy.key_buckets())
    }

    /// The same cache with its keys in `buckets` hash-tag buckets (0: plain
    /// keys), if its definition allows it ([`CacheDefinition::KEY_BUCKETS`]);
    /// otherwise unchanged, so a namespace shared with another program keeps
    /// its format whatever is configured.
    pub fn with_key_buckets(mut self, buckets: u16) -> Self {
        if D::KEY_BUCKETS {
            self.key_buckets = buckets;
        }
        self
    }

    /// The same cache fencing written keys for `fence` (see [`TypedCache::fence`]).
    pub fn with_write_fence(mut self, fence: Duration) -> Self {
        self.loading.write_fence = fence;
        self
    }

    /// The same cache bounding its loads with `timer` (the policy's load
    /// timeout; 5 s unless set).
    pub fn with_timer(mut self, timer: Arc<dyn Timer>) -> Self {
        self.loading.timer = Some(timer);
        if self.loading.load_timeout.is_none() {
            self.loading.load_timeout = Some(crate::policy::DEFAULT_LOAD_TIMEOUT);
        }
        self
    }

    /// The same cache cutting each load at `bound` (needs a timer).
    pub fn with_load_timeout(mut self, bound: Duration) -> Self {
        self.loading.load_timeout = Some(bound);
        self
    }

    /// The same cache writing, with each value a read-through load stores,
    /// the entries `companions` makes of it (other caches' entries, e.g.
    /// index mappings), all in one pipelined round trip. Companion entries
    /// replace what their keys hold (they are not fills: see
    /// [`TypedCache::fence`] for why the cache's own entry is).
    pub fn with_companions(mut self, companions: Companions<D::Value>) -> Self {
        self.companions = Some(companions);
        self
    }

    /// The same cache reporting every outcome to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn CacheObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The same cache with single-flight on or off (on by default; off only
    /// to measure what it saves).
    pub fn with_single_flight(mut self, on: bool) -> Self {
        self.loading.single_flight = on;
        self
    }

    /// The same cache remembering a loader's "no such entry" for `ttl`
    /// (`None`: never).
    pub fn with_negative_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.loading.negative_ttl = ttl.filter(|t| !t.is_zero());
        self
    }

    /// The same cache remembering the values it decoded lately, each beside
    /// the bytes it came from, in `entries` slots (0: none): a read that gets
    /// the very same bytes again (compared in full) takes a clone of the
    /// value instead of decoding them. Worth it where decoding costs more
    /// than a clone (a JSON record: parse and validate every part), not for
    /// an integer; memory is bounded by `entries` times the largest entry.
    /// Outcomes do not change: the backend still decides on every read which
    /// bytes a key holds, and bytes that do not decode are never remembered.
    pub fn with_decode_memo(mut self, entries: usize) -> Self
    where
        D::Value: Clone,
    {
        self.memo = DecodeMemo::new(entries).map(Arc::new);
        self
    }

    /// The same cache shortening each write's TTL by a random amount of up to
    /// `fraction` of it (0 to 1; 0.1 is 10 %), so keys written together do not
    /// expire together. Never longer than the TTL; no effect on "no expiry".
    pub fn with_ttl_jitter(mut self, fraction: f64) -> Self {
        self.loading.ttl_jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Reports `event` to the observer, if any: the one place every outcome
    /// passes through.
    #[inline]
    pub(crate) fn observe(&self, event: CacheEvent) {
        if let Some(observer) = &self.observer {
            observer.observe(D::NAMESPACE, event);
        }
    }

    /// The expiry of one write: the TTL shortened by the jitter.
    pub(crate) fn write_expiry(&self) -> Option<Duration> {
        jittered(self.ttl.expiry(), self.loading.ttl_jitter, fastrand::f64())
    }

    /// The same cache refusing encoded values larger than `bytes`.
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The same cache with another default TTL (0 = no expiry).
    pub fn with_ttl(mut self, ttl: Ttl) -> Self {
        self.ttl = ttl;
        self
    }

    /// The TTL that `set` and `mset` use.
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// The backend it stores into.
    pub(crate) fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// The hash-tag buckets of its keys (0: plain keys).
    pub fn key_buckets(&self) -> u16 {
        self.key_buckets
    }

    /// This cache's namespace.
    pub fn namespace(&self) -> &'static str {
        D::NAMESPACE
    }

    /// The full backend key of `key`: `{namespace}:{key}`, or
    /// `<namespace>:{<b>}:<key>` with hash-tag buckets.
    pub fn key(&self, key: &D::Key) -> String {
        if self.key_buckets > 1 {
            bucketed_key(D::NAMESPACE, key, self.key_buckets)
        } else {
            full_key(D::NAMESPACE, key)
        }
    }

    /// Encodes one entry with this cache's TTL, for a cross-cache
    /// [`crate::WriteBatch`].
    ///
    /// # Errors
    /// [`CacheError::Serialization`] when the value cannot be encoded;
    /// [`CacheError::ValueTooLarge`] when it is over the limit.
    pub fn entry(&self, key: &D::Key, value: &D::Value) -> Result<Entry, CacheError> {
        Ok(Entry::new(
            self.key(key),
            self.encode(value)?,
            self.write_expiry(),
        ))
    }

    fn encode(&self, value: &D::Value) -> Result<Bytes, CacheError> {
        let bytes = D::Codec::encode(value).map_err(|source| CacheError::Serialization {
            namespace: D::NAMESPACE,
            source,
        })?;
        if bytes.len() > self.max_value_bytes {
            return Err(CacheError::ValueTooLarge {
                namespace: D::NAMESPACE,
                size: bytes.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(bytes)
    }

    /// Returns the value at `key`, or `None` on a miss.
    ///
    /// A backend error is logged and is a miss. A stored value that does not
    /// decode is removed (only if it is still the same bytes), logged, and is a
    /// miss; so is a key holding another kind of value (Redis `WRONGTYPE`).
    pub async fn get(&self, key: &D::Key) -> Option<D::Value> {
        self.read(&self.key(key)).await
    }

    /// [`TypedCache::get`] by full key, observed.
    ///
    /// Runs in a `cache` span at debug (`cache.namespace`, `cache.operation`,
    /// `cache.outcome`, `db.system` the backend, `cache.key` only when keys
    /// may be logged); no cost but a check when debug is off.
    pub(crate) async fn read(&self, key: &str) -> Option<D::Value> {
        let span = cache_span(D::NAMESPACE, "get", &self.backend, key);
        let value = if span.is_disabled() {
            self.read_unobserved(key).await
        } else {
            use tracing::Instrument as _;
            let value = self.read_unobserved(key).instrument(span.clone()).await;
            span.record(
                "cache.outcome",
                if value.is_some() { "hit" } else { "miss" },
            );
            value
        };
        self.observe(if value.is_some() {
            CacheEvent::Hit
        } else {
            CacheEvent::Miss
        });
        value
    }

    async fn read_unobserved(&self, key: &str) -> Option<D::Value> {
        if self.pending.any() {
            self.write_pending_fences().await;
            if self.pending.contains(key) {
                return None;
            }
        }
        let answer = match self.backend.get_now(key) {
            Some(found) => Ok(found),
            None => self.backend.get(key).await,
        };
        match answer {
            Ok(Some(raw)) if raw.as_ref() == WRITE_FENCE => None,
            Ok(Some(raw)) => self.decode_or_invalidate(key, raw).await,
            Ok(None) => None,
            Err(BackendError::WrongType(reason)) => {
                tracing::warn!(namespace = D::NAMESPACE, key = %LoggedKey(key), %reason, "cache key holds the wrong kind of value; invalidating");
                self.observe(CacheEvent::CorruptRemoved);
                // A plain delete: such a value cannot be compared. Should a
                // valid value land in between, it costs one later miss.
                if let Err(error) = self.backend.delete(key).await {
                    self.swallowed("invalidate", key, &error);
                }
                None
            }
            Err(error) => {
                self.swallowed("get", key, &error);
                None
            }
        }
    }

    /// A backend error that becomes a miss or a no-op: logged (rate-limited)
    /// and observed.
    fn swallowed(&self, operation: &'static str, key: &str, error: &BackendError) {
        self.observe(CacheEvent::BackendError);
        log_backend_error(D::NAMESPACE, operation, key, error);
    }

    /// Whether a value loaded since `started` may still be filled: not once
    /// the load has lasted as long as a write fence holds (a write that
    /// committed after the load read the store may have fenced the key, and
    /// that fence may be gone by now).
    fn may_fill(&self, started: std::time::Instant, key: &str) -> bool {
        if self.pending.contains(key) {
            return false;
        }
        let fresh = started.elapsed() < self.loading.write_fence;
        if !fresh {
            tracing::debug!(namespace = D::NAMESPACE, key = %LoggedKey(key), "load outlasted the write fence; not cached");
        }
        fresh
    }

    /// Fills `key` (full) with a value loaded since `started`: only where
    /// the key holds nothing (a write fence or a writer's value wins), with
    /// the jittered TTL and the companions, in one round trip. Companions are
    /// written as they are (replacing what is there, whatever its type): they
    /// are index entries of unfenced caches, facts that do not change while
    /// their value exists. Never fails: a
    /// value that cannot be encoded is logged and not stored.
    pub(crate) async fn store(&self, key: &str, value: &D::Value, started: std::time::Instant) {
        let bytes = match self.encode(value) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(namespace = D::NAMESPACE, key = %LoggedKey(key), %error, "loaded value not cached");
                return;
            }
        };
        if !self.may_fill(started, key) {
            return;
        }
        self.observe(CacheEvent::Written);
        let mut entries = vec![Entry::new(key.to_owned(), bytes, self.write_expiry()).if_absent()];
        if let Some(companions) = &self.companions {
            entries.extend(companions(value));
        }
        if let Err(error) = self
            .backend
            .fill(entries, self.fill_deadline(started))
            .await
        {
            self.swallowed("set", key, &error);
        }
    }

    /// The last moment a fill of a load started at `started` may be written:
    /// as long as a write fence set after the load began still lives.
    fn fill_deadline(&self, started: std::time::Instant) -> std::time::Instant {
        started + self.loading.write_fence
    }

    /// Fills values loaded since `started` (by full key), with their
    /// companions, in one pipelined round trip; each only where its key holds
    /// nothing (see [`TypedCache::fence`]).
    pub(crate) async fn store_many(
        &self,
        values: &std::collections::HashMap<String, D::Value>,
        started: std::time::Instant,
    ) {
        if values.is_empty() {
            return;
        }
        if !self.may_fill(started, "(batch)") {
            return;
        }
        let mut entries = Vec::with_capacity(values.len());
        for (key, value) in values {
            if self.pending.contains(key) {
                continue;
            }
            match self.encode(value) {
                Ok(bytes) => {
                    entries.push(Entry::new(key.clone(), bytes, self.write_expiry()).if_absent());
                    if let Some(companions) = &self.companions {
                        entries.extend(companions(value));
                    }
                }
                Err(error) => {
                    tracing::error!(namespace = D::NAMESPACE, key = %LoggedKey(key), %error, "loaded value not cached");
                }
            }
        }
        // Values come from one batch load of at most MAX_BATCH keys: one
        // pipelined round trip, companions included.
        if entries.is_empty() {
            return;
        }
        self.observe(CacheEvent::Written);
        if let Err(error) = self
            .backend
            .fill(entries, self.fill_deadline(started))
            .await
        {
            self.swallowed("mset", "(batch)", &error);
        }
    }

    /// Fills `key` with `value`, loaded from the store of record since
    /// `started`, the way a read-through load does: only where the key holds
    /// nothing, not once the load has outlasted the write fence, companions
    /// included. For a loader that finds a value of this cache while loading
    /// another (e.g. a record while resolving an id).
    pub async fn fill(&self, key: &D::Key, value: &D::Value, started: std::time::Instant) {
        let full = self.key(key);
        self.negatives.forget(&full);
        self.store(&full, value, started).await;
    }

    /// Forgets a remembered "no such entry" for `key` (after creating it).
    pub fn forget_absence(&self, key: &D::Key) {
        self.negatives.forget(&self.key(key));
    }

    /// Marks `key` as just written in the store of record, after the write
    /// committed: any value there is replaced by a write fence that lives
    /// for the cache's write fence (6 s unless set), and this process stops
    /// sharing a load of `key` that started before.
    ///
    /// A fence reads as a miss. Read-through fills never replace it (they
    /// write only where a key holds nothing), and a fill whose load lasted as
    /// long as a fence is dropped: so a reader that loaded the old value
    /// before the write cannot put it back after the write, however its
    /// steps interleave with the writer's. The next reads load the new value
    /// from the store; once the fence expires, a fill caches it.
    ///
    /// Only for caches whose values the codec never encodes as [`WRITE_FENCE`]
    /// and that no other program reads (the seed's namespaces must only ever
    /// hold values the Python service can parse: invalidate those instead).
    pub async fn fence(&self, key: &D::Key) {
        let full = self.key(key);
        self.negatives.forget(&full);
        self.flights.detach(&full);
        self.observe(CacheEvent::Written);
        let fence = Bytes::from_static(WRITE_FENCE);
        let write = self
            .backend
            .set(&full, fence, Some(self.loading.write_fence));
        if let Err(error) = self.traced_write("fence", &full, write).await {
            self.swallowed("fence", &full, &error);
            if self.pending.add(full.clone()) {
                tracing::warn!(namespace = D::NAMESPACE, key = %LoggedKey(&full), "write fence not stored; written before this cache serves again");
            } else {
                tracing::error!(namespace = D::NAMESPACE, key = %LoggedKey(&full), "write fence lost: too many pending; the old value may be served until its TTL");
            }
        }
    }

    /// Writes the fences the backend refused earlier; stops at the first
    /// that fails again (still down).
    async fn write_pending_fences(&self) {
        let keys: Vec<String> = self.pending.keys().iter().cloned().collect();
        for key in keys {
            let fence = Bytes::from_static(WRITE_FENCE);
            match self
                .backend
                .set(&key, fence, Some(self.loading.write_fence))
                .await
            {
                Ok(()) => self.pending.remove(&key),
                Err(_) => return,
            }
        }
    }

    /// Stores `value` at `key` with this cache's TTL (jittered, see
    /// [`TypedCache::with_ttl_jitter`]).
    ///
    /// # Errors
    /// Only [`CacheError::Serialization`]; backend errors are logged and swallowed.
    pub async fn set(&self, key: &D::Key, value: &D::Value) -> Result<(), CacheError> {
        self.write(key, value, self.write_expiry()).await
    }

    /// Stores `value` at `key` with exactly `ttl` (0 = no expiry): the
    /// caller's choice, not jittered.
    ///
    /// # Errors
    /// Only [`CacheError::Serialization`]; backend errors are logged and swallowed.
    pub async fn set_with_ttl(
        &self,
        key: &D::Key,
        value: &D::Value,
        ttl: Ttl,
    ) -> Result<(), CacheError> {
        self.write(key, value, ttl.expiry()).await
    }

    async fn write(
        &self,
        key: &D::Key,
        value: &D::Value,
        expiry: Option<Duration>,
    ) -> Result<(), CacheError> {
        let bytes = self.encode(value)?;
        let key = self.key(key);
        self.observe(CacheEvent::Written);
        let write = self.backend.set(&key, bytes, expiry);
        if let Err(error) = self.traced_write("set", &key, write).await {
            self.swallowed("set", &key, &error);
        }
        Ok(())
    }

    /// Removes `key`. Never fails its caller: a backend error is logged.
    pub async fn invalidate(&self, key: &D::Key) {
        let key = self.key(key);
        self.negatives.forget(&key);
        let delete = self.backend.delete(&key);
        if let Err(error) = self.traced_write("invalidate", &key, delete).await {
            self.swallowed("invalidate", &key, &error);
        }
    }

    /// Returns the values of `keys`, in order, `None` for each miss, in one
    /// backend round trip. Empty input returns at once without a round trip.
    ///
    /// A failing backend makes every key a miss; only the entries that do not
    /// decode are invalidated.
    ///
    /// # Errors
    /// [`CacheError::BatchTooLarge`] for more than [`MAX_BATCH`] keys.
    ///
    /// Runs in a `cache` span at debug (`cache.operation = "mget"`,
    /// `cache.outcome` = `hit`, `miss` or `partial`).
    pub async fn mget(&self, keys: &[D::Key]) -> Result<Vec<Option<D::Value>>, CacheError> {
        let span = cache_span(D::NAMESPACE, "mget", &self.backend, "");
        if span.is_disabled() {
            return self.mget_unspanned(keys).await;
        }
        use tracing::Instrument as _;
        let result = self.mget_unspanned(keys).instrument(span.clone()).await;
        if let Ok(values) = &result {
            let hits = values.iter().filter(|v| v.is_some()).count();
            let outcome = match hits {
                0 => "miss",
                n if n == values.len() => "hit",
                _ => "partial",
            };
            span.record("cache.outcome", outcome);
        }
        result
    }

    async fn mget_unspanned(&self, keys: &[D::Key]) -> Result<Vec<Option<D::Value>>, CacheError> {
        check_batch(keys.len())?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full_keys: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        if self.pending.any() {
            self.write_pending_fences().await;
        }
        let raw = match self.backend.mget(&full_keys).await {
            Ok(raw) if raw.len() == full_keys.len() => raw,
            Ok(raw) => {
                tracing::error!(
                    namespace = D::NAMESPACE,
                    asked = full_keys.len(),
                    got = raw.len(),
                    "cache mget answered the wrong number of values; treated as misses"
                );
                return Ok(misses(keys.len()));
            }
            Err(error) => {
                self.swallowed("mget", &full_keys[0], &error);
                for _ in keys {
                    self.observe(CacheEvent::Miss);
                }
                return Ok(misses(keys.len()));
            }
        };
        let mut values = Vec::with_capacity(raw.len());
        for (key, stored) in full_keys.iter().zip(raw) {
            let value = match stored {
                _ if self.pending.contains(key) => None,
                Some(bytes) if bytes.as_ref() == WRITE_FENCE => None,
                Some(bytes) => self.decode_or_invalidate(key, bytes).await,
                None => None,
            };
            self.observe(if value.is_some() {
                CacheEvent::Hit
            } else {
                CacheEvent::Miss
            });
            values.push(value);
        }
        Ok(values)
    }

    /// Stores every `(key, value)` pair with this cache's TTL in one pipelined
    /// round trip. Every value is encoded before anything is written, so an
    /// encoding error writes nothing. Empty input returns at once.
    ///
    /// # Errors
    /// [`CacheError::BatchTooLarge`] for more than [`MAX_BATCH`] entries;
    /// [`CacheError::Serialization`] when a value cannot be encoded.
    /// Backend errors are logged and swallowed.
    pub async fn mset(&self, entries: &[(D::Key, D::Value)]) -> Result<(), CacheError> {
        check_batch(entries.len())?;
        if entries.is_empty() {
            return Ok(());
        }
        let encoded = entries
            .iter()
            .map(|(key, value)| self.entry(key, value))
            .collect::<Result<Vec<_>, _>>()?;
        self.observe(CacheEvent::Written);
        let write = self.backend.mset(&encoded);
        if let Err(error) = self.traced_write("mset", "", write).await {
            self.swallowed("mset", &encoded[0].key, &error);
        }
        Ok(())
    }

    /// Runs one backend write in a `cache` span at debug (`cache.outcome`:
    /// `ok`, or `backend_error` for what the caller then swallows).
    async fn traced_write<T>(
        &self,
        operation: &'static str,
        key: &str,
        write: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let span = cache_span(D::NAMESPACE, operation, &self.backend, key);
        if span.is_disabled() {
            return write.await;
        }
        use tracing::Instrument as _;
        let result = write.instrument(span.clone()).await;
        span.record(
            "cache.outcome",
            if result.is_ok() {
                "ok"
            } else {
                "backend_error"
            },
        );
        result
    }

    async fn decode_or_invalidate(&self, key: &str, raw: Bytes) -> Option<D::Value> {
        if let Some(value) = self.memo.as_ref().and_then(|memo| memo.get(&raw)) {
            return Some(value);
        }
        match D::Codec::decode(&raw) {
            Ok(value) => Some(match &self.memo {
                Some(memo) => memo.remember(&raw, value),
                None => value,
            }),
            Err(error) => {
                tracing::warn!(namespace = D::NAMESPACE, key = %LoggedKey(key), %error, len = raw.len(), "corrupt cache entry; invalidating");
                self.observe(CacheEvent::CorruptRemoved);
                // Compare-and-delete: a valid value written meanwhile survives.
                if let Err(error) = self.backend.compare_and_delete(key, &raw).await {
                    self.swallowed("invalidate", key, &error);
                }
                None
            }
        }
    }
}

/// The span of one cache operation (debug level), with OpenTelemetry-style
/// field names; `cache.outcome` is recorded when it is known. The key (none
/// for a batch: `""`) is recorded only when keys may be logged
/// ([`crate::show_keys_in_logs`]).
pub(crate) fn cache_span(
    namespace: &'static str,
    operation: &'static str,
    backend: &SharedBackend,
    key: &str,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "cache",
        cache.namespace = namespace,
        cache.operation = operation,
        cache.outcome = tracing::field::Empty,
        db.system = tracing::field::Empty,
        cache.key = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("db.system", backend.name());
        if crate::redact::keys_shown() && !key.is_empty() {
            span.record("cache.key", key);
        }
    }
    span
}

/// Logs a swallowed backend error, at most once per [`LOG_WINDOW`] for each
/// kind of error, with the count of those left out: a failing backend must
/// never produce a log line per request. An open circuit is logged at debug:
/// the breaker reports its own transitions once.
pub(crate) fn log_backend_error(
    namespace: &str,
    operation: &'static str,
    key: &str,
    error: &BackendError,
) {
    static LIMITERS: [LogLimiter; BackendError::KINDS] =
        [const { LogLimiter::new(LOG_WINDOW) }; BackendError::KINDS];
    if matches!(error, BackendError::CircuitOpen) {
        tracing::debug!(namespace, operation, key = %LoggedKey(key), "cache skipped: circuit open");
        return;
    }
    let Some(suppressed) = LIMITERS[error.kind_index()].allow() else {
        return;
    };
    if error.is_backend_failure() {
        tracing::error!(namespace, operation, key = %LoggedKey(key), %error, suppressed, "cache operation failed; served without the cache");
    } else {
        tracing::warn!(namespace, operation, key = %LoggedKey(key), %error, suppressed, "cache command refused; served without the cache");
    }
}

/// How often the same kind of swallowed backend error may be logged.
pub const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// `ttl` shortened by up to `fraction` of it, `unit` (0 to 1) saying how far:
/// never longer than `ttl`, never shorter than `ttl * (1 - fraction)`, and
/// at least a millisecond. `None` (no expiry) stays `None`.
pub(crate) fn jittered(ttl: Option<Duration>, fraction: f64, unit: f64) -> Option<Duration> {
    let ttl = ttl?;
    if fraction <= 0.0 {
        return Some(ttl);
    }
    let cut = ttl.mul_f64((fraction * unit).clamp(0.0, 1.0));
    Some(
        ttl.saturating_sub(cut)
            .max(Duration::from_millis(1))
            .min(ttl),
    )
}

pub(crate) fn check_batch(requested: usize) -> Result<(), CacheError> {
    if requested > MAX_BATCH {
        return Err(CacheError::BatchTooLarge {
            requested,
            max: MAX_BATCH,
        });
    }
    Ok(())
}

fn misses<V>(n: usize) -> Vec<Option<V>> {
    std::iter::repeat_with(|| None).take(n).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use mockall::predicate::{always, eq};
    use serde::{Serialize, Serializer};

    use super::*;
    use crate::backend::MockCacheBackend;
    use crate::codec::{JsonCodec, TextCodec};
    use crate::error::{BackendError, CodecError};

    /// A backend mock that never answers a read at once (as Redis): every
    /// read goes to its `get`.
    fn remote() -> MockCacheBackend {
        let mut mock = MockCacheBackend::new();
        mock.expect_get_now().returning(|_| None);
        mock
    }

    struct IdCache;
    impl CacheDefinition for IdCache {
        type Key = i64;
        type Value = i64;
        type Codec = TextCodec;
        const NAMESPACE: &'static str = "test:ids";
    }

    /// A value whose serialization always fails, for the error paths.
    #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
    struct Unencodable;
    impl Serialize for Unencodable {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses to serialize"))
        }
    }

    struct BadCache;
    impl CacheDefinition for BadCache {
        type Key = i64;
        type Value = Unencodable;
        type Codec = JsonCodec;
        const NAMESPACE: &'static str = "test:bad";
    }

    fn cache(mock: MockCacheBackend) -> TypedCache<IdCache> {
        TypedCache::new(Arc::new(mock))
    }

    fn down() -> BackendError {
        BackendError::Unavailable("connection refused".into())
    }

    fn some(s: &'static str) -> Option<Bytes> {
        Some(Bytes::from_static(s.as_bytes()))
    }

    // --- get -----------------------------------------------------------------

    #[tokio::test]
    async fn get_hit_decodes_the_stored_value() {
        let mut mock = remote();
        mock.expect_get()
            .with(eq("test:ids:1"))
            .times(1)
            .returning(|_| Ok(some("42")));
        assert_eq!(cache(mock).get(&1).await, Some(42));
    }

    #[tokio::test]
    async fn a_read_the_backend_answers_at_once_never_waits_on_get() {
        let mut mock = MockCacheBackend::new();
        mock.expect_get_now()
            .with(eq("test:ids:7"))
            .times(1)
            .returning(|_| Some(Some(Bytes::from_static(b"42"))));
        mock.expect_get().never();
        let cache = TypedCache::<IdCache>::new(Arc::new(mock));
        assert_eq!(cache.get(&7).await, Some(42));
    }

    #[tokio::test]
    async fn get_miss_returns_none() {
        let mut mock = remote();
        mock.expect_get().times(1).returning(|_| Ok(None));
        assert_eq!(cache(mock).get(&1).await, None);
    }

    #[tokio::test]
    async fn get_with_backend_error_is_a_miss() {
        let mut mock = remote();
        mock.expect_get().times(1).returning(|_| Err(down()));
        mock.expect_compare_and_delete().never();
        assert_eq!(cache(mock).get(&1).await, None);
    }

    #[tokio::test]
    async fn get_corrupt_value_is_a_miss_and_is_removed_only_if_unchanged() {
        let mut mock = remote();
        mock.expect_get().returning(|_| Ok(some("not-a-number")));
        mock.expect_compare_and_delete()
            .withf(|key, expected| key == "test:ids:1" && expected == b"not-a-number")
            .times(1)
            .returning(|_, _| Ok(true));
        assert_eq!(cache(mock).get(&1).await, None);
    }

    #[tokio::test]
    async fn get_corrupt_value_whose_removal_fails_is_still_a_miss() {
        let mut mock = remote();
        mock.expect_get().returning(|_| Ok(some("\u{fffd}")));
        mock.expect_compare_and_delete()
            .times(1)
            .returning(|_, _| Err(down()));
        assert_eq!(cache(mock).get(&1).await, None);
    }

    // --- the decode memo -----------------------------------------------------

    /// Text, counting its decodes.
    struct CountingCodec;
    static DECODES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    impl Codec<i64> for CountingCodec {
        fn encode(value: &i64) -> Result<Bytes, CodecError> {
            TextCodec::encode(value)
        }
        fn decode(bytes: &[u8]) -> Result<i64, CodecError> {
            DECODES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            TextCodec::decode(bytes)
        }
    }
    struct CountedCache;
    impl CacheDefinition for CountedCache {
        type Key = i64;
        type Value = i64;
        type Codec = CountingCodec;
        const NAMESPACE: &'static str = "test:counted";
    }

    #[tokio::test]
    async fn the_decode_memo_decodes_equal_bytes_once_and_changed_or_corrupt_bytes_every_time() {
        let answers = Arc::new(std::sync::Mutex::new(
            ["42", "42", "42", "43", "bad", "bad", "43"]
                .map(|s| s.to_owned())
                .to_vec(),
        ));
        let mut mock = remote();
        let next = answers.clone();
        mock.expect_get()
            .times(7)
            // A fresh buffer each time, as a network read gives.
            .returning(move |_| Ok(Some(Bytes::from(next.lock().unwrap().remove(0)))));
        mock.expect_compare_and_delete()
            .withf(|_, expected| expected == b"bad")
            .times(2)
            .returning(|_, _| Ok(true));
        let cache = TypedCache::<CountedCache>::new(Arc::new(mock)).with_decode_memo(16);
        let before = DECODES.load(std::sync::atomic::Ordering::SeqCst);
        let mut read = Vec::new();
        for _ in 0..7 {
            read.push(cache.get(&1).await);
        }
        assert_eq!(
            read,
            [Some(42), Some(42), Some(42), Some(43), None, None, Some(43)]
        );
        // "42" once, "43" once, "bad" twice (never remembered, so it evicts
        // nothing), "43" again from the memo. Whether "42" would still be
        // there depends on its slot (the hash is seeded per memo): the
        // direct-mapped replacement is memo.rs's own test.
        assert_eq!(
            DECODES.load(std::sync::atomic::Ordering::SeqCst) - before,
            4
        );
    }

    // --- set -----------------------------------------------------------------

    #[tokio::test]
    async fn set_uses_the_default_ttl_of_600_seconds() {
        let mut mock = remote();
        mock.expect_set()
            .withf(|key, value, ttl| {
                key == "test:ids:7" && &value[..] == b"99" && *ttl == Some(Duration::from_secs(600))
            })
            .times(1)
            .returning(|_, _, _| Ok(()));
        assert_eq!(cache(mock).set(&7, &99).await, Ok(()));
    }

    #[tokio::test]
    async fn set_with_explicit_ttl_passes_it_through() {
        let mut mock = remote();
        mock.expect_set()
            .withf(|_, _, ttl| *ttl == Some(Duration::from_secs(30)))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let result = cache(mock).set_with_ttl(&7, &99, Ttl::from_secs(30)).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn set_with_zero_ttl_stores_without_expiry() {
        let mut mock = remote();
        mock.expect_set()
            .withf(|_, _, ttl| ttl.is_none())
            .times(1)
            .returning(|_, _, _| Ok(()));
        let typed = cache(mock).with_ttl(Ttl::NEVER);
        assert_eq!(typed.set(&7, &99).await, Ok(()));
    }

    #[tokio::test]
    async fn set_serialization_error_reaches_the_caller_and_writes_nothing() {
        let mut mock = remote();
        mock.expect_set().never();
        let typed: TypedCache<BadCache> = TypedCache::new(Arc::new(mock));
        let result = typed.set(&1, &Unencodable).await;
        assert!(matches!(
            result,
            Err(CacheError::Serialization {
                namespace: "test:bad",
                source: CodecError::Encode(_)
            })
        ));
    }

    #[tokio::test]
    async fn set_with_backend_error_is_swallowed() {
        let mut mock = remote();
        mock.expect_set().times(1).returning(|_, _, _| Err(down()));
        assert_eq!(cache(mock).set(&1, &2).await, Ok(()));
    }

    // --- invalidate ----------------------------------------------------------

    #[tokio::test]
    async fn invalidate_deletes_the_namespaced_key() {
        let mut mock = remote();
        mock.expect_delete()
            .with(eq("test:ids:5"))
            .times(1)
            .returning(|_| Ok(true));
        cache(mock).invalidate(&5).await;
    }

    /// A cache whose keys are ours alone: it allows hash-tag buckets.
    struct BucketedCache;
    impl CacheDefinition for BucketedCache {
        type Key = i64;
        type Value = i64;
        type Codec = TextCodec;
        const NAMESPACE: &'static str = "test:bucketed";
        const KEY_BUCKETS: bool = true;
    }

    #[tokio::test]
    async fn a_cache_that_allows_buckets_writes_reads_and_removes_bucketed_keys() {
        let backend = Arc::new(crate::testing::MapBackend::default());
        let policy = CachePolicy::new().with_key_buckets(16);
        let cache = TypedCache::<BucketedCache>::with_policy(backend.clone(), &policy);
        let key = format!("test:bucketed:{{{}}}:5", crate::key_bucket("5", 16));
        assert_eq!(cache.key(&5), key);
        cache.set(&5, &50).await.unwrap();
        assert_eq!(backend.text(&key).as_deref(), Some("50"));
        assert_eq!(cache.get(&5).await, Some(50));
        assert_eq!(cache.mget(&[5, 6]).await.unwrap(), vec![Some(50), None]);
        // The admin API's removal by text finds the same key.
        let removed = crate::ManagedCache::remove(&cache, &["5".to_owned()]).await;
        assert_eq!(removed.unwrap(), 1);
        assert_eq!(backend.text(&key), None);
        assert_eq!(crate::ManagedCache::info(&cache).key_buckets, 16);
    }

    #[test]
    fn a_cache_that_does_not_allow_buckets_keeps_plain_keys_whatever_the_policy() {
        // The seed's namespaces are shared with the Python service by key:
        // configuration can never change them.
        let policy = CachePolicy::new().with_key_buckets(16);
        let cache = TypedCache::<IdCache>::with_policy(Arc::new(remote()), &policy);
        assert_eq!(cache.key(&5), "test:ids:5");
        assert_eq!(cache.with_key_buckets(8).key(&5), "test:ids:5");
    }

    #[tokio::test]
    async fn invalidate_with_backend_error_does_not_fail() {
        let mut mock = remote();
        mock.expect_delete().times(1).returning(|_| Err(down()));
        // Returns (), and does not panic: the error was logged.
        cache(mock).invalidate(&5).await;
    }

    // --- mget ----------------------------------------------------------------

    #[tokio::test]
    async fn mget_returns_values_in_order_in_one_round_trip() {
        let mut mock = remote();
        mock.expect_mget()
            .withf(|keys| keys == ["test:ids:1", "test:ids:2", "test:ids:3"])
            .times(1)
            .returning(|_| Ok(vec![some("10"), None, some("30")]));
        let values = cache(mock).mget(&[1, 2, 3]).await.unwrap();
        assert_eq!(values, vec![Some(10), None, Some(30)]);
    }

    #[tokio::test]
    async fn mget_with_all_keys_missing_returns_all_none() {
        let mut mock = remote();
        mock.expect_mget()
            .times(1)
            .returning(|keys| Ok(vec![None; keys.len()]));
        assert_eq!(cache(mock).mget(&[1, 2]).await.unwrap(), vec![None, None]);
    }

    #[tokio::test]
    async fn mget_of_101_keys_is_refused_with_the_count_and_the_limit() {
        let mut mock = remote();
        mock.expect_mget().never();
        let keys: Vec<i64> = (0..101).collect();
        let error = cache(mock).mget(&keys).await.unwrap_err();
        assert_eq!(
            error,
            CacheError::BatchTooLarge {
                requested: 101,
                max: 100
            }
        );
        assert!(error.to_string().contains("split"), "{error}");
    }

    #[tokio::test]
    async fn mget_of_exactly_100_keys_is_allowed() {
        let mut mock = remote();
        mock.expect_mget()
            .times(1)
            .returning(|keys| Ok(vec![None; keys.len()]));
        let keys: Vec<i64> = (0..100).collect();
        assert_eq!(cache(mock).mget(&keys).await.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn mget_of_nothing_returns_at_once_without_the_backend() {
        let mut mock = remote();
        mock.expect_mget().never();
        assert!(cache(mock).mget(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn mget_with_backend_error_makes_every_key_a_miss() {
        let mut mock = remote();
        mock.expect_mget().times(1).returning(|_| Err(down()));
        assert_eq!(cache(mock).mget(&[1, 2]).await.unwrap(), vec![None, None]);
    }

    #[tokio::test]
    async fn mget_with_a_short_answer_makes_every_key_a_miss() {
        let mut mock = remote();
        mock.expect_mget()
            .times(1)
            .returning(|_| Ok(vec![some("1")]));
        assert_eq!(cache(mock).mget(&[1, 2]).await.unwrap(), vec![None, None]);
    }

    #[tokio::test]
    async fn mget_invalidates_only_the_corrupt_entries() {
        let mut mock = remote();
        mock.expect_mget()
            .returning(|_| Ok(vec![some("10"), some("garbage"), some("30")]));
        mock.expect_compare_and_delete()
            .withf(|key, expected| key == "test:ids:2" && expected == b"garbage")
            .times(1)
            .returning(|_, _| Ok(true));
        let values = cache(mock).mget(&[1, 2, 3]).await.unwrap();
        assert_eq!(values, vec![Some(10), None, Some(30)]);
    }

    // --- mset ----------------------------------------------------------------

    #[tokio::test]
    async fn mset_writes_every_entry_with_the_ttl_in_one_call() {
        let mut mock = remote();
        mock.expect_mset()
            .withf(|entries| {
                entries.len() == 2
                    && entries[0].key == "test:ids:1"
                    && &entries[0].value[..] == b"10"
                    && entries[1].key == "test:ids:2"
                    && entries
                        .iter()
                        .all(|e| e.ttl == Some(Duration::from_secs(600)))
            })
            .times(1)
            .returning(|_| Ok(()));
        assert_eq!(cache(mock).mset(&[(1, 10), (2, 20)]).await, Ok(()));
    }

    #[tokio::test]
    async fn mset_of_101_entries_is_refused() {
        let mut mock = remote();
        mock.expect_mset().never();
        let entries: Vec<(i64, i64)> = (0..101).map(|i| (i, i)).collect();
        assert_eq!(
            cache(mock).mset(&entries).await,
            Err(CacheError::BatchTooLarge {
                requested: 101,
                max: 100
            })
        );
    }

    #[tokio::test]
    async fn mset_of_nothing_returns_at_once_without_the_backend() {
        let mut mock = remote();
        mock.expect_mset().never();
        assert_eq!(cache(mock).mset(&[]).await, Ok(()));
    }

    #[tokio::test]
    async fn mset_serialization_error_writes_nothing() {
        let mut mock = remote();
        mock.expect_mset().never();
        let typed: TypedCache<BadCache> = TypedCache::new(Arc::new(mock));
        let result = typed.mset(&[(1, Unencodable)]).await;
        assert!(matches!(result, Err(CacheError::Serialization { .. })));
    }

    #[tokio::test]
    async fn mset_with_backend_error_is_swallowed() {
        let mut mock = remote();
        mock.expect_mset()
            .with(always())
            .times(1)
            .returning(|_| Err(down()));
        assert_eq!(cache(mock).mset(&[(1, 10)]).await, Ok(()));
    }

    #[tokio::test]
    async fn a_value_over_the_limit_is_refused_and_not_stored() {
        let mut mock = remote();
        // Only the 2-byte value is written.
        mock.expect_set()
            .withf(|_, value, _| value.len() == 2)
            .times(1)
            .returning(|_, _, _| Ok(()));
        mock.expect_mset().never();
        let typed = cache(mock).with_max_value_bytes(3);
        assert_eq!(typed.set(&1, &12).await, Ok(()), "2 bytes fit");
        let error = typed.set(&1, &12345).await.unwrap_err();
        assert_eq!(
            error,
            CacheError::ValueTooLarge {
                namespace: "test:ids",
                size: 5,
                max: 3
            }
        );
        assert!(error.to_string().contains("not stored"), "{error}");
        assert!(matches!(
            typed.mset(&[(1, 1), (2, 12345)]).await,
            Err(CacheError::ValueTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_key_of_the_wrong_kind_is_a_miss_and_is_deleted() {
        let mut mock = remote();
        mock.expect_get()
            .returning(|_| Err(BackendError::WrongType("WRONGTYPE list".into())));
        mock.expect_delete()
            .with(eq("test:ids:1"))
            .times(1)
            .returning(|_| Ok(true));
        assert_eq!(cache(mock).get(&1).await, None);
    }

    #[tokio::test]
    async fn an_open_circuit_is_a_miss_and_a_no_op() {
        let mut mock = remote();
        mock.expect_get()
            .returning(|_| Err(BackendError::CircuitOpen));
        mock.expect_set()
            .returning(|_, _, _| Err(BackendError::CircuitOpen));
        mock.expect_delete().never();
        let typed = cache(mock);
        assert_eq!(typed.get(&1).await, None);
        assert_eq!(typed.set(&1, &1).await, Ok(()));
    }

    #[test]
    fn the_policy_sets_ttl_and_value_limit() {
        let policy = CachePolicy::new()
            .with_ttl_override("test:ids", Ttl::from_secs(9))
            .with_max_value_bytes(10);
        let typed: TypedCache<IdCache> = TypedCache::with_policy(Arc::new(remote()), &policy);
        assert_eq!(typed.ttl(), Ttl::from_secs(9));
        assert_eq!(typed.max_value_bytes, 10);
    }

    #[test]
    fn debug_shows_namespace_backend_and_ttl() {
        let mut mock = remote();
        mock.expect_name().return_const("mock");
        let text = format!("{:?}", cache(mock));
        assert!(text.contains("test:ids") && text.contains("mock"), "{text}");
    }
}
