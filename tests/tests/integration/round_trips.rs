//! Redis round trips, counted: a hit is one GET, a miss one GET plus one
//! pipelined write of both directions, a lookup of 100 one MGET plus at most
//! one pipelined write. Counts, not timings: these are real tests.
//!
//! Redis's `INFO commandstats` counts the commands it ran; a counting
//! decorator around the backend counts the round trips the service asked for
//! (the Redis adapter sends each `mset` as one pipeline).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use adapters::backend::DeferredFills;
use adapters::users::InMemoryUserRepository;
use async_trait::async_trait;
use bytes::Bytes;
use domain::{CacheManager, Email, Name, User, UserId, UserQueries, UserService, UserUuid};
use ports::{BackendError, CacheBackend, CachePolicy, Entry, SharedBackend};
use tests::TestRedis;

/// Counts every call that reaches the backend: one call, one round trip.
struct Counting {
    inner: SharedBackend,
    calls: AtomicU64,
}

#[async_trait]
impl CacheBackend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.compare_and_delete(key, expected).await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.mget(keys).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.mset(entries).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }
}

/// Calls per command since Redis started, from `INFO commandstats`.
async fn commandstats(redis: &TestRedis) -> HashMap<String, u64> {
    let mut raw = redis.raw().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// What ran between two snapshots, for the commands a cache uses.
fn ran(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> [(String, u64); 4] {
    ["get", "set", "mget", "del"].map(|cmd| {
        let delta = after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
        (cmd.to_owned(), delta)
    })
}

fn counts(pairs: &[(&str, u64)]) -> [(String, u64); 4] {
    ["get", "set", "mget", "del"].map(|cmd| {
        (
            cmd.to_owned(),
            pairs.iter().find(|(c, _)| *c == cmd).map_or(0, |(_, n)| *n),
        )
    })
}

fn user(n: u32) -> User {
    User::new(
        UserId::new(i64::from(n)).unwrap(),
        UserUuid::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap(),
        Name::new("first_name", "Load").unwrap(),
        Name::new("last_name", &format!("User{n}")).unwrap(),
        Email::new(&format!("load.user{n}@example.com")).unwrap(),
    )
}

#[tokio::test]
async fn a_hit_is_one_get_a_miss_two_round_trips() {
    let redis = TestRedis::start().await;
    let counting = Arc::new(Counting {
        inner: redis.shared_backend(Duration::from_secs(1)).await,
        calls: AtomicU64::new(0),
    });
    let service = UserService::new(
        InMemoryUserRepository::sample(),
        CacheManager::new(counting.clone(), &CachePolicy::new()),
    );
    let john = UserUuid::parse("550e8400-e29b-41d4-a716-446655440001").unwrap();

    let before = commandstats(&redis).await;
    counting.calls.store(0, Ordering::SeqCst);
    service.user_by_uuid(john).await.unwrap();
    let after = commandstats(&redis).await;
    // The record's GET; then (the store asked by uuid) one pipelined write
    // of the record and both seed mappings.
    assert_eq!(
        ran(&before, &after),
        counts(&[("get", 1), ("set", 3)]),
        "a miss"
    );
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        2,
        "a miss: the GET, then one pipelined write"
    );

    let before = commandstats(&redis).await;
    counting.calls.store(0, Ordering::SeqCst);
    service.user_by_uuid(john).await.unwrap();
    let after = commandstats(&redis).await;
    assert_eq!(ran(&before, &after), counts(&[("get", 1)]), "a hit");
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "a hit: one round trip"
    );
}

#[tokio::test]
async fn a_lookup_of_100_is_one_mget_warm_and_two_round_trips_cold() {
    let redis = TestRedis::start().await;
    let counting = Arc::new(Counting {
        inner: redis.shared_backend(Duration::from_secs(1)).await,
        calls: AtomicU64::new(0),
    });
    let users: Vec<User> = (1..=100).map(user).collect();
    let uuids: Vec<UserUuid> = users.iter().map(User::uuid).collect();
    let service = UserService::new(
        InMemoryUserRepository::new(users).unwrap(),
        CacheManager::new(counting.clone(), &CachePolicy::new()),
    );

    // Cold: every uuid misses; the records' MGET, then the 100 records and
    // both directions of each go out in one write.
    let before = commandstats(&redis).await;
    counting.calls.store(0, Ordering::SeqCst);
    let found = service.lookup(&uuids).await.unwrap();
    let after = commandstats(&redis).await;
    assert_eq!(found.users.len(), 100);
    assert_eq!(
        ran(&before, &after),
        counts(&[("mget", 1), ("set", 300)]),
        "a cold lookup"
    );
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        2,
        "one MGET, one pipelined write"
    );

    // Warm: every uuid hits; nothing is written.
    let before = commandstats(&redis).await;
    counting.calls.store(0, Ordering::SeqCst);
    let found = service.lookup(&uuids).await.unwrap();
    let after = commandstats(&redis).await;
    assert_eq!(found.users.len(), 100);
    assert_eq!(
        ran(&before, &after),
        counts(&[("mget", 1)]),
        "a warm lookup"
    );
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1, "one MGET");
}

#[tokio::test]
async fn misses_within_a_linger_share_one_pipelined_write() {
    let redis = TestRedis::start().await;
    let counting = Arc::new(Counting {
        inner: redis.shared_backend(Duration::from_secs(1)).await,
        calls: AtomicU64::new(0),
    });
    // As the service stacks it over Redis: fills written behind, outermost;
    // a linger longer than the test, so that only `flush` writes.
    let fills = DeferredFills::new(counting.clone(), Duration::from_secs(600));
    let users: Vec<User> = (1..=10).map(|n| user(200 + n)).collect();
    let uuids: Vec<UserUuid> = users.iter().map(User::uuid).collect();
    let service = Arc::new(UserService::new(
        InMemoryUserRepository::new(users).unwrap(),
        CacheManager::new(Arc::new(fills.clone()), &CachePolicy::new()),
    ));

    let before = commandstats(&redis).await;
    counting.calls.store(0, Ordering::SeqCst);
    let misses: Vec<_> = uuids
        .iter()
        .map(|uuid| {
            let (service, uuid) = (service.clone(), *uuid);
            tokio::spawn(async move { service.user_by_uuid(uuid).await })
        })
        .collect();
    for miss in misses {
        miss.await.unwrap().unwrap();
    }
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        10,
        "ten answers, ten GETs, no write yet"
    );
    fills.flush().await;
    let after = commandstats(&redis).await;
    assert_eq!(
        ran(&before, &after),
        counts(&[("get", 10), ("set", 30)]),
        "ten misses"
    );
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        11,
        "the ten GETs, then one pipelined write of every fill"
    );
}
