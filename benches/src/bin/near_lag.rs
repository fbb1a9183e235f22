//! The near cache's invalidation lag, for `cargo xtask bench`: two instances
//! (each a `NearCache` over its own Redis connections, as two services would
//! have) under read load on the same keys; instance A writes one key at a
//! steady rate, and for each write an observer on instance B reads that key
//! until it sees the new value. Reported: the time from the write's
//! acknowledgement to that first read (p50, p99, max, in microseconds), and
//! how many of the writes found the old value kept in B (the ones that
//! measure the invalidation, not a miss).
//!
//! Reads `REDIS_URL`, `REDIS_PASSWORD`; `NEAR_LAG_WRITES` (default 1000) and
//! `NEAR_LAG_INTERVAL_US` (default 2000: 500 writes a second). Prints one
//! JSON line.

#![allow(missing_docs)]
// Its one line of output is what the bench reads.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adapters::Secret;
use adapters::backend::{NearCache, NearConfig, RedisBackend, RedisConfig, StatusSignal};
use bytes::Bytes;
use ports::CacheBackend;

const KEYS: usize = 16;
const READERS_PER_INSTANCE: usize = 4;
/// Reads per reader between pauses of a millisecond.
const READ_BURST: usize = 50;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn instance(config: &RedisConfig) -> Result<NearCache, String> {
    let backend = RedisBackend::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    let near = NearCache::new(
        Arc::new(backend),
        config,
        &["lag:".to_owned()],
        NearConfig::default(),
        StatusSignal::new(),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    while !near.tracking() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("tracking not armed within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(near)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), String> {
    let config = RedisConfig {
        url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        password: std::env::var("REDIS_PASSWORD").ok().map(Secret::new),
        operation_timeout: Duration::from_secs(1),
        ..RedisConfig::default()
    };
    let writes = setting("NEAR_LAG_WRITES", 1000);
    let interval = Duration::from_micros(setting("NEAR_LAG_INTERVAL_US", 2000));
    let a = instance(&config).await?;
    let b = instance(&config).await?;
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|k| format!("lag:{k}")).collect());
    for key in keys.iter() {
        a.set(
            key,
            Bytes::from_static(b"start"),
            Some(Duration::from_secs(600)),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    // Read load on both instances, over every key.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for near in [&a, &b] {
        for reader in 0..READERS_PER_INSTANCE {
            let (near, keys, stop) = (near.clone(), keys.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                // Bursts of reads with a pause between: a service's read
                // load, not a spin that takes every core from Redis.
                let mut i = reader;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..READ_BURST {
                        let _ = near.get(&keys[i % KEYS]).await;
                        i += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lags = Vec::with_capacity(writes as usize);
    let mut kept_before = 0u64;
    let mut next = Instant::now();
    for n in 0..writes {
        let key = &keys[n as usize % KEYS];
        let value = format!("v{n}");
        if b.peek(key).is_some() {
            kept_before += 1;
        }
        a.set(
            key,
            Bytes::from(value.clone()),
            Some(Duration::from_secs(600)),
        )
        .await
        .map_err(|e| e.to_string())?;
        let acknowledged = Instant::now();
        loop {
            if let Ok(Some(seen)) = b.get(key).await
                && seen.as_ref() == value.as_bytes()
            {
                break;
            }
            if acknowledged.elapsed() > Duration::from_secs(5) {
                return Err(format!("B never saw write {n} of {key}"));
            }
            tokio::task::yield_now().await;
        }
        lags.push(u64::try_from(acknowledged.elapsed().as_micros()).unwrap_or(u64::MAX));
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    lags.sort_unstable();
    let counts = b.counts();
    println!(
        r#"{{"writes":{writes},"kept_before":{kept_before},"p50_us":{},"p99_us":{},"max_us":{},"b_hits":{},"b_misses":{},"b_invalidations":{},"b_stale_inserts_prevented":{}}}"#,
        percentile(&lags, 50.0),
        percentile(&lags, 99.0),
        lags.last().copied().unwrap_or(0),
        counts.hits,
        counts.misses,
        counts.invalidations,
        counts.stale_inserts_prevented,
    );
    Ok(())
}
