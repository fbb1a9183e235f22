//! The near cache: an in-process copy (L1) of what Redis holds, kept coherent
//! by Redis itself, so that a hit costs no round trip.
//!
//! # How it stays coherent
//!
//! - **Invalidations come from Redis.** A dedicated RESP3 connection runs
//!   `CLIENT TRACKING ON BCAST PREFIX <namespace>:...`: Redis pushes the name
//!   of every key under our prefixes that changes, whoever changed it (another
//!   instance, the Python service, `redis-cli`), and when a key expires or is
//!   evicted; `FLUSHDB`/`FLUSHALL` push a nil, which empties L1. The push is
//!   applied in the connection's reader, before the next reply is read.
//! - **No stale insert.** A read that misses L1 registers its key as pending
//!   before it is sent; an invalidation of that key while it is in flight
//!   re-stamps the pending entry, and the answer is put into L1 only if the
//!   stamp is unchanged. Stamp checks, inserts and invalidations take one
//!   lock, so an invalidation either lands before the insert (which is then
//!   refused) or after it (and removes the entry).
//! - **Disconnect = distrust.** Entries belong to the tracking connection's
//!   epoch. When that connection closes, stops answering its periodic ping
//!   within the deadline, or is replaced, the epoch ends: L1 is emptied (or,
//!   with fail-safe on, its entries may only be served while Redis fails),
//!   reads go to Redis and nothing is put into L1 until tracking is armed
//!   again on a new connection, which empties L1 once more.
//! - **Lifetimes.** An entry lives no longer than the TTL Redis reported for
//!   it (read atomically with the value, less the round trip) nor than the
//!   configured cap; L1 is bounded in bytes.
//!
//! The staleness bound that follows, and what breaks it, are in
//! docs/ARCHITECTURE.md ("The near cache").

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining, SharedBackend};
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use super::bounded::{BoundedCache, Weighed, bounded};
use super::redis::{
    Protocol, RedisConfig, RedisMode, RedisSetupError, build_client, cluster_node_client, node_url,
};
use super::status::{NearStatus, StatusSignal};
use crate::metrics::{LatencyHistogram, ShardedCounter};

/// Settings of [`NearCache`] (the `[cache.near]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NearConfig {
    /// Whether the near cache runs (over the Redis backend only).
    pub enabled: bool,
    /// The most bytes (keys plus values) kept in the process.
    #[serde(deserialize_with = "crate::serde_ms::positive_count")]
    pub max_bytes: u64,
    /// The longest an entry is kept, whatever its TTL in Redis.
    #[serde(
        rename = "ttl_cap_secs",
        deserialize_with = "crate::serde_ms::positive_secs"
    )]
    pub ttl_cap: Duration,
    /// While Redis fails, entries kept from before may still be served for
    /// this long after tracking was lost (0: never). Trades coherence for
    /// availability: off by default.
    #[serde(rename = "fail_safe_secs", deserialize_with = "crate::serde_ms::secs")]
    pub fail_safe: Duration,
    /// How often the tracking connection is pinged.
    #[serde(
        rename = "ping_interval_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub ping_interval: Duration,
    /// How long a ping (and arming tracking) may take before the tracking
    /// connection counts as lost.
    #[serde(
        rename = "ping_timeout_ms",
        deserialize_with = "crate::serde_ms::positive"
    )]
    pub ping_timeout: Duration,
}

impl Default for NearConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_bytes: 64 * 1024 * 1024,
            ttl_cap: Duration::from_secs(300),
            fail_safe: Duration::ZERO,
            ping_interval: Duration::from_millis(500),
            ping_timeout: Duration::from_millis(250),
        }
    }
}

impl NearConfig {
    /// How long a change by another writer may go unseen when the tracking
    /// connection dies silently (a black-holed path): until a ping misses its
    /// deadline. While the connection is up, invalidations arrive as soon as
    /// Redis sends them.
    pub fn silent_loss_bound(&self) -> Duration {
        self.ping_interval + self.ping_timeout
    }
}

/// What the near cache has counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearCounts {
    /// Reads answered from the process.
    pub hits: u64,
    /// Reads of tracked keys that went to Redis.
    pub misses: u64,
    /// Keys invalidated by Redis's pushes.
    pub invalidations: u64,
    /// Times L1 was emptied because tracking was lost.
    pub flushes_disconnect: u64,
    /// Times L1 was emptied because Redis was flushed (`FLUSHALL`, `FLUSHDB`).
    pub flushes_server: u64,
    /// Answers not put into L1 because their key changed while they were in flight.
    pub stale_inserts_prevented: u64,
    /// Entries served while Redis failed, under fail-safe.
    pub fail_safe_served: u64,
    /// Writes whose invalidation did not come back within `ping_timeout`.
    pub echo_timeouts: u64,
}

#[derive(Default)]
struct Counters {
    /// Bumped by every hit, from every worker: a count per thread.
    hits: ShardedCounter,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes_disconnect: AtomicU64,
    flushes_server: AtomicU64,
    stale_inserts_prevented: AtomicU64,
    fail_safe_served: AtomicU64,
    echo_timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One entry of L1: the value, the tracking epoch it was read in, and when
/// it stops being served.
#[derive(Clone)]
struct Local {
    value: Bytes,
    epoch: u64,
    expires: Instant,
}

impl Local {
    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }
}

impl Weighed for Local {
    fn bytes(&self) -> &Bytes {
        &self.value
    }
}

/// L1: expiry is checked on read (`Local::expires`).
type L1 = BoundedCache<Local>;

/// A read of a key in flight: its stamp is changed by any invalidation of the
/// key meanwhile.
struct Pending {
    stamp: u64,
    readers: u32,
}

/// What the lock guards: the epoch, whether tracking is armed, and the reads
/// in flight.
struct Coherence {
    /// Advances when tracking is armed and when it is lost.
    epoch: u64,
    armed: bool,
    /// When tracking was last lost (the fail-safe window starts there).
    lost_at: Option<Instant>,
    cause: Option<String>,
    /// The last stamp handed out.
    stamp: u64,
    pending: HashMap<String, Pending>,
}

/// A read's claim to fill L1: valid while its epoch and stamp are unchanged.
#[derive(Clone, Copy)]
struct Ticket {
    epoch: u64,
    stamp: u64,
}

struct Core {
    l1: L1,
    coherence: Mutex<Coherence>,
    /// The epoch whose entries are served; 0 while tracking is not armed.
    /// Read without the lock on the hit path.
    trusted: AtomicU64,
    prefixes: Vec<String>,
    config: NearConfig,
    counters: Counters,
    /// Time from the start of one of our writes to the arrival of its
    /// invalidation: how late Redis's pushes are.
    lag: LatencyHistogram,
    /// Our writes whose invalidation has not come back yet.
    writes: Mutex<HashMap<String, Vec<Echo>>>,
    writes_len: AtomicUsize,
    status: StatusSignal,
}

/// Keys of our own writes awaiting their invalidation, at most (more means
/// invalidations are not arriving: the map is emptied).
const ECHOES: usize = 1024;

/// One of our writes, waiting for Redis's invalidation of its key to come
/// back on our tracking connection.
struct Echo {
    started: Instant,
    done: tokio::sync::oneshot::Sender<()>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Coherence> {
        // Nothing done under the lock can leave it half-written.
        self.coherence.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tracked(&self, key: &str) -> bool {
        self.prefixes.iter().any(|prefix| key.starts_with(prefix))
    }

    /// The value of `key` if L1 holds it from the current epoch.
    fn hit(&self, key: &str) -> Option<Bytes> {
        let trusted = self.trusted.load(Ordering::Acquire);
        if trusted == 0 {
            return None;
        }
        let local = self.l1.get(key)?;
        if local.epoch != trusted {
            return None;
        }
        let now = Instant::now();
        if local.live(now) {
            Some(local.value)
        } else {
            self.l1.remove_if(key, |local| !local.live(now));
            None
        }
    }

    fn begin(&self, key: &str) -> Option<Ticket> {
        let mut coherence = self.lock();
        if !coherence.armed {
            return None;
        }
        let stamp = coherence.stamp;
        let epoch = coherence.epoch;
        let pending = coherence
            .pending
            .entry(key.to_owned())
            .or_insert(Pending { stamp, readers: 0 });
        pending.readers += 1;
        Some(Ticket {
            epoch,
            stamp: pending.stamp,
        })
    }

    /// Ends a read: puts `value` into L1 if nothing changed `key` since the
    /// read began, and tracking held throughout.
    fn finish(&self, key: &str, ticket: Ticket, value: Option<(Bytes, Duration)>) {
        let mut coherence = self.lock();
        let current = match coherence.pending.get_mut(key) {
            Some(pending) => {
                pending.readers = pending.readers.saturating_sub(1);
                let current = pending.stamp == ticket.stamp;
                if pending.readers == 0 {
                    coherence.pending.remove(key);
                }
                current
            }
            None => false,
        };
        let Some((value, lifetime)) = value else {
            return;
        };
        if current && coherence.armed && coherence.epoch == ticket.epoch {
            if !lifetime.is_zero() {
                let local = Local {
                    value,
                    epoch: ticket.epoch,
                    expires: Instant::now() + lifetime,
                };
                self.l1.insert(key.to_owned(), local);
            }
        } else {
            bump(&self.counters.stale_inserts_prevented);
        }
    }

    /// Drops `key` from L1, and spoils the reads of it in flight.
    fn invalidate(&self, key: &str) {
        let mut coherence = self.lock();
        coherence.stamp += 1;
        let stamp = coherence.stamp;
        if let Some(pending) = coherence.pending.get_mut(key) {
            pending.stamp = stamp;
        }
        self.l1.remove(key);
    }

    /// Empties L1 and spoils every read in flight (Redis was flushed).
    fn invalidate_all(&self) {
        let mut coherence = self.lock();
        coherence.stamp += 1;
        let stamp = coherence.stamp;
        for pending in coherence.pending.values_mut() {
            pending.stamp = stamp;
        }
        self.l1.clear();
        bump(&self.counters.flushes_server);
        self.publish(&coherence);
    }

    /// What Redis pushed on the tracking connection.
    fn apply(&self, push: &PushInfo) {
        if push.kind != PushKind::Invalidate {
            return;
        }
        match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    let key = match key {
                        Value::BulkString(bytes) => String::from_utf8_lossy(bytes),
                        Value::SimpleString(text) => text.as_str().into(),
                        _ => continue,
                    };
                    self.invalidate(&key);
                    bump(&self.counters.invalidations);
                    self.written_seen(&key);
                }
            }
            // FLUSHALL, FLUSHDB: a nil instead of keys.
            Some(Value::Nil) => {
                tracing::info!("redis was flushed: the near cache is emptied");
                self.invalidate_all();
            }
            _ => {}
        }
    }

    /// Tracking is armed on a new connection: start a new epoch, empty.
    fn arm(&self) {
        let mut coherence = self.lock();
        self.l1.clear();
        coherence.epoch += 1;
        coherence.armed = true;
        coherence.lost_at = None;
        coherence.cause = None;
        self.trusted.store(coherence.epoch, Ordering::Release);
        self.publish(&coherence);
    }

    /// Tracking is lost: nothing kept so far is served as a hit any more.
    fn distrust(&self, cause: &str) {
        let mut coherence = self.lock();
        if !coherence.armed {
            if coherence.cause.as_deref() != Some(cause) {
                coherence.cause = Some(cause.to_owned());
                self.publish(&coherence);
            }
            return;
        }
        self.trusted.store(0, Ordering::Release);
        coherence.epoch += 1;
        coherence.armed = false;
        coherence.cause = Some(cause.to_owned());
        if self.config.fail_safe.is_zero() {
            self.l1.clear();
        } else {
            coherence.lost_at = Some(Instant::now());
        }
        bump(&self.counters.flushes_disconnect);
        self.publish(&coherence);
        drop(coherence);
        self.forget_all_echoes();
        tracing::warn!(
            cause,
            "near cache distrusted: tracking lost, reads go to redis"
        );
    }

    fn publish(&self, coherence: &Coherence) {
        let near = NearStatus {
            tracking: coherence.armed,
            flushes: self.counters.flushes_disconnect.load(Ordering::Relaxed)
                + self.counters.flushes_server.load(Ordering::Relaxed),
            cause: coherence.cause.clone(),
        };
        self.status.update(|status| {
            let changed = status.near.as_ref() != Some(&near);
            status.near = Some(near);
            changed
        });
    }

    /// A kept entry of `key` that fail-safe allows to serve now: tracking was
    /// lost less than `fail_safe` ago.
    fn fail_safe(&self, key: &str) -> Option<Bytes> {
        if self.config.fail_safe.is_zero() {
            return None;
        }
        let within = {
            let coherence = self.lock();
            !coherence.armed
                && coherence
                    .lost_at
                    .is_some_and(|lost| lost.elapsed() < self.config.fail_safe)
        };
        if !within {
            return None;
        }
        let local = self
            .l1
            .get(key)
            .filter(|local| local.live(Instant::now()))?;
        bump(&self.counters.fail_safe_served);
        Some(local.value)
    }

    fn lifetime(&self, remaining: Remaining, elapsed: Duration) -> Duration {
        let cap = self.config.ttl_cap;
        match remaining {
            Remaining::For(ttl) => ttl.saturating_sub(elapsed).min(cap),
            Remaining::Forever | Remaining::Unknown => cap,
        }
    }

    /// One of our writes to `key` starts: what fires when Redis's
    /// invalidation of it comes back (`None` while not tracking: nothing will).
    fn writing(&self, key: &str) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if self.trusted.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (done, echoed) = tokio::sync::oneshot::channel();
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if writes.len() >= ECHOES {
            writes.clear();
        }
        writes.entry(key.to_owned()).or_default().push(Echo {
            started: Instant::now(),
            done,
        });
        self.writes_len.store(writes.len(), Ordering::Relaxed);
        Some(echoed)
    }

    /// Redis invalidated `key`: our writes of it waiting for that are done.
    fn written_seen(&self, key: &str) {
        if self.writes_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        for echo in writes.remove(key).unwrap_or_default() {
            self.lag.observe(echo.started.elapsed());
            let _ = echo.done.send(());
        }
        self.writes_len.store(writes.len(), Ordering::Relaxed);
    }

    /// Drops the echoes of `key` nobody waits for any more (a write that
    /// changed nothing, or gave up waiting).
    fn forget_echoes(&self, key: &str) {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(echoes) = writes.get_mut(key) {
            echoes.retain(|echo| !echo.done.is_closed());
            if echoes.is_empty() {
                writes.remove(key);
            }
        }
        self.writes_len.store(writes.len(), Ordering::Relaxed);
    }

    /// Tracking is lost: no echo will come; writers waiting stop at once.
    fn forget_all_echoes(&self) {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        writes.clear();
        self.writes_len.store(0, Ordering::Relaxed);
    }

    fn counts(&self) -> NearCounts {
        let c = &self.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NearCounts {
            hits: c.hits.get(),
            misses: read(&c.misses),
            invalidations: read(&c.invalidations),
            flushes_disconnect: read(&c.flushes_disconnect),
            flushes_server: read(&c.flushes_server),
            stale_inserts_prevented: read(&c.stale_inserts_prevented),
            fail_safe_served: read(&c.fail_safe_served),
            echo_timeouts: read(&c.echo_timeouts),
        }
    }
}

/// Ends a read that registered as pending, also when its future is dropped.
struct Read<'a> {
    core: &'a Core,
    key: &'a str,
    ticket: Option<Ticket>,
}

impl Read<'_> {
    fn fill(mut self, value: Option<(Bytes, Duration)>) {
        if let Some(ticket) = self.ticket.take() {
            self.core.finish(self.key, ticket, value);
        }
    }
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.core.finish(self.key, ticket, None);
        }
    }
}

/// A [`CacheBackend`] decorator over the Redis stack that keeps hot entries in
/// the process, coherent with every writer through Redis's client tracking.
/// Cheap to clone; the tracking task stops when the last clone is dropped.
#[derive(Clone)]
pub struct NearCache {
    inner: SharedBackend,
    core: Arc<Core>,
    _tracker: Arc<Tracker>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("prefixes", &self.core.prefixes)
            .field("entries", &self.core.l1.len())
            .finish_non_exhaustive()
    }
}

/// Aborts the tracking task when dropped.
struct Tracker(tokio::task::JoinHandle<()>);

impl Drop for Tracker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where invalidations come from.
enum Source {
    /// Tracking connections to this Redis, or to every node of this cluster.
    Redis {
        tracking: Box<Tracking>,
        connect_timeout: Duration,
    },
    /// Tests feed invalidations and arm tracking themselves.
    #[cfg(test)]
    Manual,
}

impl NearCache {
    /// A near cache over `inner` (the Redis stack), keeping keys that start
    /// with one of `prefixes` (e.g. `user:uuid-to-id:`; an empty prefix keeps
    /// every key), with invalidations from a tracking connection to the Redis
    /// that `redis` describes. Connects in the background: until tracking is
    /// armed, every read goes to `inner`. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// When the Redis settings cannot be used (see [`RedisSetupError`]).
    pub fn new(
        inner: SharedBackend,
        redis: &RedisConfig,
        prefixes: &[String],
        config: NearConfig,
        status: StatusSignal,
    ) -> Result<Self, RedisSetupError> {
        let tracking = match redis.mode {
            RedisMode::Standalone => {
                let (client, target) = build_client(redis, Protocol::Resp3)?;
                tracing::info!(%target, prefixes = ?prefixes, "near cache configured (tracking connects in the background)");
                Tracking::Server(Box::new(client))
            }
            RedisMode::Cluster => {
                let seeds = redis
                    .nodes
                    .iter()
                    .map(|node| cluster_node_client(redis, &node_url(node), Protocol::Resp3))
                    .collect::<Result<Vec<_>, _>>()?;
                tracing::info!(seeds = seeds.len(), prefixes = ?prefixes, "near cache configured over a cluster (tracking on every node, connects in the background)");
                Tracking::Cluster {
                    seeds,
                    template: Box::new(redis.clone()),
                }
            }
        };
        let source = Source::Redis {
            tracking: Box::new(tracking),
            connect_timeout: redis.connect_timeout,
        };
        Ok(Self::start(inner, prefixes, config, status, source))
    }

    fn start(
        inner: SharedBackend,
        prefixes: &[String],
        config: NearConfig,
        status: StatusSignal,
        source: Source,
    ) -> Self {
        let l1 = bounded(config.max_bytes);
        let core = Arc::new(Core {
            l1,
            coherence: Mutex::new(Coherence {
                epoch: 0,
                armed: false,
                lost_at: None,
                cause: Some("tracking not armed yet".into()),
                stamp: 0,
                pending: HashMap::new(),
            }),
            trusted: AtomicU64::new(0),
            prefixes: disjoint(prefixes),
            config,
            counters: Counters::default(),
            lag: LatencyHistogram::default(),
            writes: Mutex::new(HashMap::new()),
            writes_len: AtomicUsize::new(0),
            status,
        });
        core.publish(&core.lock());
        let task = match source {
            Source::Redis {
                tracking,
                connect_timeout,
            } => tokio::spawn(track(Arc::downgrade(&core), *tracking, connect_timeout)),
            #[cfg(test)]
            Source::Manual => tokio::spawn(async {}),
        };
        Self {
            inner,
            core,
            _tracker: Arc::new(Tracker(task)),
        }
    }

    /// What it has counted so far.
    pub fn counts(&self) -> NearCounts {
        self.core.counts()
    }

    /// Time from the start of one of our writes to the arrival of its
    /// invalidation from Redis.
    pub fn invalidation_lag(&self) -> LatencyHistogram {
        self.core.lag.clone()
    }

    /// Whether tracking is armed (entries are served from the process).
    pub fn tracking(&self) -> bool {
        self.core.trusted.load(Ordering::Acquire) != 0
    }

    /// What a read of `key` would be answered from the process right now,
    /// without counting it or asking Redis (for tests and diagnostics).
    pub fn peek(&self, key: &str) -> Option<Bytes> {
        self.core.hit(key)
    }

    /// Entries and weighted bytes held now (expired entries included until
    /// they are read or evicted).
    pub fn size(&self) -> (u64, u64) {
        (self.core.l1.len() as u64, self.core.l1.weight())
    }

    /// Reads `keys` (all missing from L1) from Redis with their TTLs, and
    /// puts what comes back into L1 unless it changed meanwhile.
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        let core = &*self.core;
        let mut reads: Vec<Read<'_>> = keys
            .iter()
            .map(|key| {
                let ticket = if core.tracked(key) {
                    bump(&core.counters.misses);
                    core.begin(key)
                } else {
                    None
                };
                Read { core, key, ticket }
            })
            .collect();
        if reads.iter().all(|read| read.ticket.is_none()) {
            return self.inner.mget(keys).await;
        }
        let started = Instant::now();
        let answers = self.inner.mget_with_ttl(keys).await?;
        let elapsed = started.elapsed();
        let mut values = Vec::with_capacity(answers.len());
        for (read, answer) in reads.drain(..).zip(answers) {
            match answer {
                Some((value, remaining)) => {
                    read.fill(Some((value.clone(), core.lifetime(remaining, elapsed))));
                    values.push(Some(value));
                }
                None => {
                    read.fill(None);
                    values.push(None);
                }
            }
        }
        Ok(values)
    }

    /// Runs a write of `keys`: each is dropped from L1 before (readers go to
    /// Redis) and after (a read that raced with the write cannot keep the old
    /// value), so that once the write returns, this instance never serves
    /// what it replaced.
    ///
    /// Then, when the write changed the keys marked `true` (`changed` says
    /// from its answer), it waits, at most `ping_timeout`, until Redis's
    /// invalidation of each has come back on our tracking connection. Redis
    /// sends the invalidations to every tracking client in the same turn of
    /// its event loop as the write's reply, so once ours is here, every other
    /// instance's has been sent too: a client that reads through another
    /// instance after our write returned finds the old value dropped there,
    /// unless that instance is slower to read its socket than we were.
    async fn write<T, F>(
        &self,
        keys: &[(&str, bool)],
        changed: impl FnOnce(&T) -> bool,
        write: F,
    ) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        let core = &*self.core;
        let tracked = || keys.iter().filter(|(key, _)| core.tracked(key));
        let mut echoes = Vec::new();
        for (key, echoed) in tracked() {
            core.invalidate(key);
            if *echoed && let Some(echo) = core.writing(key) {
                echoes.push(echo);
            }
        }
        let result = write.await;
        for (key, _) in tracked() {
            core.invalidate(key);
        }
        if !echoes.is_empty() {
            if result.as_ref().is_ok_and(changed) {
                let deadline = tokio::time::Instant::now() + core.config.ping_timeout;
                for echo in echoes {
                    if tokio::time::timeout_at(deadline, echo).await.is_err() {
                        bump(&core.counters.echo_timeouts);
                        break;
                    }
                }
            } else {
                drop(echoes);
            }
            for (key, _) in tracked() {
                core.forget_echoes(key);
            }
        }
        result
    }
}

/// The prefixes, without any that another one covers (Redis refuses
/// overlapping `BCAST` prefixes), sorted.
fn disjoint(prefixes: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = prefixes.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut kept: Vec<String> = Vec::new();
    for prefix in sorted {
        if !kept
            .iter()
            .any(|shorter| prefix.starts_with(shorter.as_str()))
        {
            kept.push(prefix);
        }
    }
    kept
}

/// Retries of the tracking connection are spaced from this, doubling to the max.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What tracking connections are made to.
enum Tracking {
    /// One Redis server.
    Server(Box<redis::Client>),
    /// Every node of a Redis Cluster (masters and replicas, discovered from
    /// the seeds): a key changes on its master, and a replica promoted by a
    /// failover is already tracked. The topology is checked with each ping:
    /// any change of nodes or roles re-arms all of them.
    Cluster {
        seeds: Vec<redis::Client>,
        /// The settings every node's client is made from (credentials, TLS).
        template: Box<RedisConfig>,
    },
}

/// Tracking connections armed together, watched together: one to a server,
/// or one to each node of a cluster (with the topology they were armed on).
struct Armed {
    connections: Vec<redis::aio::MultiplexedConnection>,
    /// A message when any of them closes.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Cluster: the topology (see [`topology`]) when armed.
    topology: Option<String>,
}

/// Keeps tracking armed for as long as the near cache lives.
async fn track(core: Weak<Core>, tracking: Tracking, connect_timeout: Duration) {
    let mut retry = RETRY_MIN;
    // Failed attempts since tracking was last armed: the first is a warning
    // (an ACL user without CLIENT, a proxy without RESP3 push: the near cache
    // would never serve, and every read would go to Redis), the rest debug.
    let mut failures = 0u32;
    loop {
        let Some(strong) = core.upgrade() else { return };
        let config = strong.config;
        let prefixes = strong.prefixes.clone();
        drop(strong);
        match arm(&core, &tracking, connect_timeout, &config, &prefixes).await {
            Ok(mut armed) => {
                retry = RETRY_MIN;
                failures = 0;
                let cause = watch(&mut armed, &config).await;
                let Some(strong) = core.upgrade() else { return };
                strong.distrust(&cause);
            }
            Err(cause) => {
                let Some(strong) = core.upgrade() else { return };
                strong.distrust(&cause);
                if failures == 0 {
                    tracing::warn!(
                        cause,
                        "near cache tracking not armed: reads go to redis until it is; retrying"
                    );
                } else {
                    tracing::debug!(cause, failures, "near cache tracking not armed; retrying");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Arms tracking on every connection `tracking` names, then trusts L1 anew.
async fn arm(
    core: &Weak<Core>,
    tracking: &Tracking,
    connect_timeout: Duration,
    config: &NearConfig,
    prefixes: &[String],
) -> Result<Armed, String> {
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    let (connections, topology) = match tracking {
        Tracking::Server(client) => {
            let connection =
                connect_tracking(core, client, &closed_tx, connect_timeout, config, prefixes)
                    .await?;
            (vec![connection], None)
        }
        Tracking::Cluster { seeds, template } => {
            let (nodes, topology) = discover(seeds, connect_timeout, config).await?;
            let scheme = if template.nodes.iter().any(|n| n.starts_with("rediss://")) {
                "rediss"
            } else {
                "redis"
            };
            let mut connections = Vec::with_capacity(nodes.len());
            for node in &nodes {
                let client =
                    cluster_node_client(template, &format!("{scheme}://{node}"), Protocol::Resp3)
                        .map_err(|e| format!("cluster node {node}: {e}"))?;
                let connection =
                    connect_tracking(core, &client, &closed_tx, connect_timeout, config, prefixes)
                        .await
                        .map_err(|e| format!("cluster node {node}: {e}"))?;
                connections.push(connection);
            }
            (connections, Some(topology))
        }
    };
    let Some(strong) = core.upgrade() else {
        return Err("near cache dropped".into());
    };
    strong.arm();
    tracing::info!(prefixes = ?prefixes, connections = connections.len(), "near cache tracking armed");
    Ok(Armed {
        connections,
        closed,
        topology,
    })
}

/// Opens a RESP3 connection whose pushes reach `core` (a disconnection is
/// sent to `closed`), and arms tracking on it.
async fn connect_tracking(
    core: &Weak<Core>,
    client: &redis::Client,
    closed: &tokio::sync::mpsc::UnboundedSender<()>,
    connect_timeout: Duration,
    config: &NearConfig,
    prefixes: &[String],
) -> Result<redis::aio::MultiplexedConnection, String> {
    let closed_tx = closed.clone();
    let pushes = core.clone();
    let on_push = move |push: PushInfo| -> Result<(), ()> {
        if push.kind == PushKind::Disconnection {
            let _ = closed_tx.send(());
        } else if let Some(core) = pushes.upgrade() {
            core.apply(&push);
        }
        Ok(())
    };
    let connection_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(config.ping_timeout))
        .set_push_sender(on_push);
    let connecting = client.get_multiplexed_async_connection_with_config(&connection_config);
    let mut connection = match tokio::time::timeout(connect_timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return Err(format!("tracking connection failed: {error}")),
        Err(_) => {
            return Err(format!(
                "tracking connection not made within {connect_timeout:?}"
            ));
        }
    };
    let mut command = redis::cmd("CLIENT");
    command.arg("TRACKING").arg("ON").arg("BCAST");
    for prefix in prefixes {
        command.arg("PREFIX").arg(prefix);
    }
    let mut name = redis::cmd("CLIENT");
    name.arg("SETNAME")
        .arg(format!("cachemanager-near-{}", std::process::id()));
    let arming = async {
        name.query_async::<()>(&mut connection).await?;
        command.query_async::<()>(&mut connection).await
    };
    match tokio::time::timeout(config.ping_timeout, arming).await {
        Ok(Ok(())) => Ok(connection),
        Ok(Err(error)) => Err(format!("CLIENT TRACKING refused: {error}")),
        Err(_) => Err(format!(
            "CLIENT TRACKING not answered within {:?}",
            config.ping_timeout
        )),
    }
}

/// The cluster's nodes (`host:port`, every node not failing, masters and
/// replicas) and its topology, from the first seed that answers.
async fn discover(
    seeds: &[redis::Client],
    connect_timeout: Duration,
    config: &NearConfig,
) -> Result<(Vec<String>, String), String> {
    let mut last = String::from("no seed node");
    for seed in seeds {
        let asked = async {
            let mut connection =
                tokio::time::timeout(connect_timeout, seed.get_multiplexed_async_connection())
                    .await
                    .map_err(|_| format!("not connected within {connect_timeout:?}"))?
                    .map_err(|e| e.to_string())?;
            tokio::time::timeout(
                config.ping_timeout,
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async::<String>(&mut connection),
            )
            .await
            .map_err(|_| {
                format!(
                    "CLUSTER NODES not answered within {:?}",
                    config.ping_timeout
                )
            })?
            .map_err(|e| e.to_string())
        };
        match asked.await {
            Ok(nodes) => {
                let (addresses, topology) = topology(&nodes);
                if addresses.is_empty() {
                    last = "CLUSTER NODES named no live node".into();
                    continue;
                }
                return Ok((addresses, topology));
            }
            Err(error) => last = format!("cluster discovery failed: {error}"),
        }
    }
    Err(last)
}

/// From `CLUSTER NODES`: the live nodes' addresses, and a fingerprint of the
/// topology that matters to tracking (each node's id, address and role, not
/// its slots: a slot that moves between tracked masters changes nothing).
fn topology(nodes: &str) -> (Vec<String>, String) {
    let mut entries = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 8 {
            continue;
        }
        let flags = fields[2];
        if flags.contains("fail") || flags.contains("handshake") || flags.contains("noaddr") {
            continue;
        }
        let address = fields[1].split('@').next().unwrap_or_default();
        if address.is_empty() || address.starts_with(':') {
            continue;
        }
        let role = if flags.contains("master") {
            "master"
        } else {
            "replica"
        };
        entries.push((
            address.to_owned(),
            format!("{} {address} {role}", fields[0]),
        ));
    }
    entries.sort();
    let fingerprint = entries
        .iter()
        .map(|(_, entry)| entry.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (
        entries.into_iter().map(|(address, _)| address).collect(),
        fingerprint,
    )
}

/// Pings every tracking connection until one closes, misses a deadline or,
/// on a cluster, the topology changes; why.
async fn watch(armed: &mut Armed, config: &NearConfig) -> String {
    loop {
        tokio::select! {
            _ = armed.closed.recv() => return "tracking connection closed".into(),
            () = tokio::time::sleep(config.ping_interval) => {
                let pings = armed.connections.iter_mut().map(|connection| async move {
                    let command = redis::cmd("PING");
                    let ping = command.query_async::<Value>(connection);
                    match tokio::time::timeout(config.ping_timeout, ping).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(error)) => Err(format!("tracking connection failed a ping: {error}")),
                        Err(_) => Err(format!(
                            "tracking connection did not answer a ping within {:?}",
                            config.ping_timeout
                        )),
                    }
                });
                if let Err(cause) = futures::future::try_join_all(pings).await {
                    return cause;
                }
                if let (Some(armed_on), Some(connection)) =
                    (&armed.topology, armed.connections.first_mut())
                {
                    let mut command = redis::cmd("CLUSTER");
                    command.arg("NODES");
                    let asked = command.query_async::<String>(connection);
                    match tokio::time::timeout(config.ping_timeout, asked).await {
                        Ok(Ok(nodes)) if topology(&nodes).1 == *armed_on => {}
                        Ok(Ok(_)) => return "the cluster's topology changed".into(),
                        Ok(Err(error)) => return format!("CLUSTER NODES failed: {error}"),
                        Err(_) => {
                            return format!(
                                "CLUSTER NODES not answered within {:?}",
                                config.ping_timeout
                            );
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl CacheBackend for NearCache {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        if let Some(found) = self.get_now(key) {
            return Ok(found);
        }
        if !self.core.tracked(key) {
            return self.inner.get(key).await;
        }
        let keys = [key.to_owned()];
        match self.load(&keys).await {
            Ok(mut values) => Ok(values.pop().flatten()),
            Err(error) => match self.core.fail_safe(key) {
                Some(value) => Ok(Some(value)),
                None => Err(error),
            },
        }
    }

    /// A hit in L1; anything else needs Redis.
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        let value = self.core.hit(key)?;
        self.core.counters.hits.inc();
        Some(Some(value))
    }

    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.write(&[(key, true)], |()| true, self.inner.set(key, value, ttl))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.write(&[(key, true)], |removed| *removed, self.inner.delete(key))
            .await
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.write(
            &[(key, true)],
            |removed| *removed,
            self.inner.compare_and_delete(key, expected),
        )
        .await
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        let mut values: Vec<Option<Bytes>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<usize> = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            match self.core.hit(key) {
                Some(value) => {
                    self.core.counters.hits.inc();
                    values.push(Some(value));
                }
                None => {
                    missing.push(index);
                    values.push(None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(values);
        }
        let wanted: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
        match self.load(&wanted).await {
            Ok(found) => {
                for (index, value) in missing.into_iter().zip(found) {
                    values[index] = value;
                }
                Ok(values)
            }
            Err(error) => {
                if self.core.config.fail_safe.is_zero() {
                    return Err(error);
                }
                // Fail-safe serves what it may; the rest is missing, as on a
                // miss (never a partial error: the port has none).
                for index in missing {
                    values[index] = self.core.fail_safe(&keys[index]);
                }
                if values.iter().any(Option::is_some) {
                    Ok(values)
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        // What L1 holds has no exact TTL left to report: ask Redis.
        self.inner.mget_with_ttl(keys).await
    }

    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        // A fill (`only_if_absent`) may change nothing: only the others wait.
        let keys: Vec<(&str, bool)> = entries
            .iter()
            .map(|entry| (entry.key.as_str(), !entry.only_if_absent))
            .collect();
        self.write(&keys, |()| true, self.inner.mset(entries)).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests;
