//! The typed cache against the raw store underneath it, so the cost of our
//! layers (key building, codec, dynamic dispatch, decorators) is measured, not
//! guessed. `cargo bench -p benches --bench typed_cache`; `cargo xtask microbench` also starts a
//! Redis for the redis group.
//!
//! - memory: `TypedCache` over `MemoryBackend` (bare, and as the service
//!   composes it: behind `TimeoutBackend`) against a raw moka
//!   `future::Cache<String, Bytes>` holding the same bytes under the same keys:
//!   `get` (and `get_or_load` on a hit), `set`, and `mget` of 100 (100 raw
//!   gets).
//! - redis: `TypedCache` over `RedisBackend` (bare, and as the service composes
//!   it: timeout and circuit breaker) against a raw `ConnectionManager` GET of
//!   the same key on the same Redis. Needs `CACHEMANAGER_BENCH_REDIS_URL` (and
//!   `CACHEMANAGER_BENCH_REDIS_PASSWORD` if it asks for one); the group says
//!   so and is left out without it.

#![allow(missing_docs, clippy::print_stderr)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use adapters::Secret;
use adapters::backend::{
    BreakerConfig, CircuitBreaker, MemoryBackend, MemoryConfig, RedisBackend, RedisConfig,
    TimeoutBackend,
};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ports::{CacheDefinition, CacheKey, Codec, SharedBackend, TextCodec, Ttl, TypedCache};
use redis::IntoConnectionInfo;
use uuid::Uuid;

/// A UUID key, as the domain's `UserUuid` writes it (hyphenated, lowercase).
struct Key(Uuid);

impl CacheKey for Key {
    fn write_segment(&self, out: &mut String) {
        out.push_str(self.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    }
}

/// Shaped like the service's `user:uuid-to-id` cache: the one a
/// `GET /users/{uuid}` hit reads.
struct UuidToId;

impl CacheDefinition for UuidToId {
    type Key = Key;
    type Value = i64;
    type Codec = TextCodec;
    const NAMESPACE: &'static str = "bench:uuid-to-id";
    const DEFAULT_TTL: Ttl = Ttl::from_secs(600);
}

/// A loader's error that no benchmark should ever see: `get_or_load` on a
/// hit never calls its loader.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the loader ran on a hit")]
struct LoaderNeverRuns;

const ENTRIES: u128 = 100;
/// The service's default operation bound.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(100);

fn key(n: u128) -> Key {
    Key(Uuid::from_u128(
        0x550e_8400_e29b_41d4_a716_0000_0000_0000 + n,
    ))
}

fn value(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX) + 1_000_000
}

fn full_key(n: u128) -> String {
    ports::full_key(UuidToId::NAMESPACE, &key(n))
}

fn encoded(n: u128) -> Bytes {
    <TextCodec as Codec<i64>>::encode(&value(n)).expect("an i64 encodes")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let raw: moka::future::Cache<String, Bytes> = moka::future::Cache::builder()
        .max_capacity(32 * 1024 * 1024)
        .weigher(|key: &String, value: &Bytes| {
            u32::try_from(key.len() + value.len() + 64).unwrap_or(u32::MAX)
        })
        .time_to_live(Duration::from_secs(600))
        .build();
    let backend = Arc::new(MemoryBackend::new(MemoryConfig::default()));
    let untyped: SharedBackend = backend.clone();
    let bare = TypedCache::<UuidToId>::new(backend.clone());
    let composed =
        TypedCache::<UuidToId>::new(Arc::new(TimeoutBackend::new(backend, OPERATION_TIMEOUT)));
    let keys: Vec<Key> = (0..ENTRIES).map(key).collect();
    let raw_keys: Vec<String> = (0..ENTRIES).map(full_key).collect();
    let hit = key(7);
    rt.block_on(async {
        for n in 0..ENTRIES {
            raw.insert(full_key(n), encoded(n)).await;
            bare.set(&key(n), &value(n)).await.expect("an i64 encodes");
        }
    });

    let mut group = c.benchmark_group("memory/get");
    group.bench_function("raw moka", |b| {
        b.to_async(&rt)
            .iter(|| async { raw.get(black_box(raw_keys[7].as_str())).await })
    });
    group.bench_function("MemoryBackend (bytes, no key or codec)", |b| {
        b.to_async(&rt)
            .iter(|| async { untyped.get(black_box(raw_keys[7].as_str())).await })
    });
    group.bench_function("typed", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.get(black_box(&hit)).await })
    });
    group.bench_function("typed (timeout)", |b| {
        b.to_async(&rt)
            .iter(|| async { composed.get(black_box(&hit)).await })
    });
    // The read-through API on a hit: what `get` does, and nothing more (the
    // loader is never called).
    group.bench_function("typed get_or_load (hit)", |b| {
        b.to_async(&rt).iter(|| async {
            bare.get_or_load(black_box(&hit), || async {
                Err::<Option<i64>, LoaderNeverRuns>(LoaderNeverRuns)
            })
            .await
        })
    });
    group.finish();

    let mut group = c.benchmark_group("memory/set");
    let stored = value(7);
    let bytes = encoded(7);
    group.bench_function("raw moka", |b| {
        b.to_async(&rt).iter(|| async {
            raw.insert(black_box(raw_keys[7].clone()), black_box(bytes.clone()))
                .await
        })
    });
    group.bench_function("typed", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.set(black_box(&hit), black_box(&stored)).await })
    });
    group.bench_function("typed (timeout)", |b| {
        b.to_async(&rt)
            .iter(|| async { composed.set(black_box(&hit), black_box(&stored)).await })
    });
    group.finish();

    let mut group = c.benchmark_group("memory/mget 100");
    group.bench_function("raw moka", |b| {
        b.to_async(&rt).iter(|| async {
            let mut values = Vec::with_capacity(raw_keys.len());
            for key in &raw_keys {
                values.push(raw.get(key.as_str()).await);
            }
            values
        })
    });
    group.bench_function("typed", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.mget(black_box(&keys)).await })
    });
    group.bench_function("typed (timeout)", |b| {
        b.to_async(&rt)
            .iter(|| async { composed.mget(black_box(&keys)).await })
    });
    group.finish();
}

fn redis(c: &mut Criterion) {
    let Ok(url) = std::env::var("CACHEMANAGER_BENCH_REDIS_URL") else {
        eprintln!(
            "redis group left out: set CACHEMANAGER_BENCH_REDIS_URL, or run `cargo xtask microbench`, which starts a Redis"
        );
        return;
    };
    let password = std::env::var("CACHEMANAGER_BENCH_REDIS_PASSWORD").ok();
    let rt = runtime();
    let config = RedisConfig {
        url: url.clone(),
        password: password.clone().map(Secret::new),
        ..RedisConfig::default()
    };
    let (raw, backend) = rt.block_on(async {
        let mut info = url.as_str().into_connection_info().expect("a Redis URL");
        if let Some(password) = &password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).expect("a Redis URL");
        let raw = redis::aio::ConnectionManager::new(client)
            .await
            .expect("Redis answers");
        let backend = RedisBackend::connect(&config).await.expect("Redis answers");
        (raw, backend)
    });
    let backend = Arc::new(backend);
    let bare = TypedCache::<UuidToId>::new(backend.clone());
    let bounded: SharedBackend = Arc::new(TimeoutBackend::new(backend, OPERATION_TIMEOUT));
    let composed = rt.block_on(async {
        // The breaker spawns its probe on the runtime it is made in.
        TypedCache::<UuidToId>::new(Arc::new(CircuitBreaker::new(
            bounded,
            BreakerConfig::default(),
        )))
    });
    let hit = key(7);
    rt.block_on(async { bare.set(&hit, &value(7)).await.expect("an i64 encodes") });
    let key = full_key(7);

    let mut group = c.benchmark_group("redis/get");
    group.bench_function("raw ConnectionManager GET", |b| {
        b.to_async(&rt).iter_batched(
            || raw.clone(),
            |mut connection| {
                let key = &key;
                async move {
                    let value: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(black_box(key.as_str()))
                        .query_async(&mut connection)
                        .await
                        .expect("Redis answers");
                    value
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("typed", |b| {
        b.to_async(&rt)
            .iter(|| async { bare.get(black_box(&hit)).await })
    });
    group.bench_function("typed (timeout, breaker)", |b| {
        b.to_async(&rt)
            .iter(|| async { composed.get(black_box(&hit)).await })
    });
    group.finish();
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
