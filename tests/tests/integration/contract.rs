//! The backend contract, written once and run against every backend:
//! memory and Redis share every observable behaviour; no-op where it applies.

use std::sync::Arc;
use std::time::Duration;

use adapters::backend::{MemoryBackend, NearConfig, NoopBackend, RedisBackend};
use bytes::Bytes;
use ports::{BackendError, CacheBackend, Entry, Remaining, SharedBackend};
use tests::{TestCluster, TestRedis};

/// The bodies: each takes a fresh, empty backend.
mod bodies {
    use super::*;

    pub async fn set_then_get_returns_the_bytes(b: SharedBackend) {
        b.set("c:k", Bytes::from_static(b"v1"), None).await.unwrap();
        assert_eq!(b.get("c:k").await.unwrap(), Some(Bytes::from_static(b"v1")));
    }

    pub async fn a_missing_key_is_none(b: SharedBackend) {
        assert_eq!(b.get("c:absent").await.unwrap(), None);
    }

    pub async fn binary_and_empty_values_round_trip(b: SharedBackend) {
        let binary = Bytes::from_static(b"\x00\xff\xfe\n\r:*");
        b.set("c:bin", binary.clone(), None).await.unwrap();
        b.set("c:empty", Bytes::new(), None).await.unwrap();
        assert_eq!(b.get("c:bin").await.unwrap(), Some(binary));
        assert_eq!(
            b.get("c:empty").await.unwrap(),
            Some(Bytes::new()),
            "empty is not absent"
        );
    }

    pub async fn set_overwrites_the_value(b: SharedBackend) {
        b.set("c:k", Bytes::from_static(b"old"), None)
            .await
            .unwrap();
        b.set("c:k", Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        assert_eq!(
            b.get("c:k").await.unwrap(),
            Some(Bytes::from_static(b"new"))
        );
    }

    pub async fn an_entry_expires_after_its_ttl(b: SharedBackend) {
        b.set(
            "c:short",
            Bytes::from_static(b"v"),
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        b.set(
            "c:long",
            Bytes::from_static(b"v"),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
        assert!(b.get("c:short").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.get("c:short").await.unwrap(), None);
        assert!(b.get("c:long").await.unwrap().is_some());
    }

    pub async fn overwriting_without_ttl_removes_the_expiry(b: SharedBackend) {
        b.set(
            "c:k",
            Bytes::from_static(b"v"),
            Some(Duration::from_millis(200)),
        )
        .await
        .unwrap();
        b.set("c:k", Bytes::from_static(b"v2"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.get("c:k").await.unwrap(), Some(Bytes::from_static(b"v2")));
    }

    pub async fn delete_reports_whether_it_removed(b: SharedBackend) {
        b.set("c:k", Bytes::from_static(b"v"), None).await.unwrap();
        assert!(b.delete("c:k").await.unwrap());
        assert!(!b.delete("c:k").await.unwrap());
        assert_eq!(b.get("c:k").await.unwrap(), None);
    }

    pub async fn compare_and_delete_removes_only_the_expected_value(b: SharedBackend) {
        b.set("c:k", Bytes::from_static(b"current"), None)
            .await
            .unwrap();
        assert!(!b.compare_and_delete("c:k", b"stale").await.unwrap());
        assert_eq!(
            b.get("c:k").await.unwrap(),
            Some(Bytes::from_static(b"current"))
        );
        assert!(b.compare_and_delete("c:k", b"current").await.unwrap());
        assert_eq!(b.get("c:k").await.unwrap(), None);
        assert!(!b.compare_and_delete("c:absent", b"x").await.unwrap());
    }

    pub async fn mget_answers_in_order_with_none_for_misses(b: SharedBackend) {
        b.set("c:1", Bytes::from_static(b"one"), None)
            .await
            .unwrap();
        b.set("c:3", Bytes::from_static(b"three"), None)
            .await
            .unwrap();
        let keys: Vec<String> = ["c:1", "c:2", "c:3", "c:1"]
            .iter()
            .map(ToString::to_string)
            .collect();
        let values = b.mget(&keys).await.unwrap();
        assert_eq!(
            values,
            vec![
                Some(Bytes::from_static(b"one")),
                None,
                Some(Bytes::from_static(b"three")),
                Some(Bytes::from_static(b"one"))
            ]
        );
        assert_eq!(b.mget(&[]).await.unwrap(), Vec::<Option<Bytes>>::new());
    }

    pub async fn mset_stores_every_entry_with_its_own_ttl(b: SharedBackend) {
        let entries = vec![
            Entry::new(
                "c:a".into(),
                Bytes::from_static(b"a"),
                Some(Duration::from_millis(200)),
            ),
            Entry::new("c:b".into(), Bytes::from_static(b"b"), None),
            Entry::new(
                "c:c".into(),
                Bytes::from_static(b"c"),
                Some(Duration::from_secs(60)),
            ),
        ];
        b.mset(&entries).await.unwrap();
        let keys: Vec<String> = entries.iter().map(|e| e.key.clone()).collect();
        assert!(b.mget(&keys).await.unwrap().iter().all(Option::is_some));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let values = b.mget(&keys).await.unwrap();
        assert_eq!(values[0], None, "the 200 ms entry expired");
        assert!(values[1].is_some() && values[2].is_some());
        b.mset(&[]).await.unwrap();
    }

    pub async fn many_concurrent_writers_and_readers_agree(b: SharedBackend) {
        let mut tasks = Vec::new();
        for n in 0..50_u32 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("c:n{n}");
                b.set(&key, Bytes::from(n.to_string()), None).await.unwrap();
                b.get(&key).await.unwrap()
            }));
        }
        for (n, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), Some(Bytes::from(n.to_string())));
        }
    }

    pub async fn mset_if_absent_never_replaces_a_value(b: SharedBackend) {
        b.set("c:taken", Bytes::from_static(b"writer"), None)
            .await
            .unwrap();
        b.mset(&[
            Entry::new("c:taken".into(), Bytes::from_static(b"fill"), None).if_absent(),
            Entry::new(
                "c:free".into(),
                Bytes::from_static(b"fill"),
                Some(Duration::from_secs(60)),
            )
            .if_absent(),
        ])
        .await
        .unwrap();
        let keys = vec!["c:taken".to_owned(), "c:free".to_owned()];
        assert_eq!(
            b.mget(&keys).await.unwrap(),
            vec![
                Some(Bytes::from_static(b"writer")),
                Some(Bytes::from_static(b"fill"))
            ]
        );
        // An expired entry is absent: a fill may take its place.
        b.set(
            "c:old",
            Bytes::from_static(b"old"),
            Some(Duration::from_millis(100)),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.mset(&[Entry::new("c:old".into(), Bytes::from_static(b"new"), None).if_absent()])
            .await
            .unwrap();
        assert_eq!(
            b.get("c:old").await.unwrap(),
            Some(Bytes::from_static(b"new"))
        );
    }

    pub async fn ping_answers(b: SharedBackend) {
        b.ping().await.unwrap();
    }

    /// `get_now` may decline (`None`), but when it answers it says what
    /// `get` says: after a write, after a read that a near cache keeps, after
    /// a delete, for a key never written, for an expired key.
    pub async fn get_now_answers_what_get_would(b: SharedBackend) {
        let agrees = |answer: Option<Option<Bytes>>, expected: Option<&'static [u8]>| {
            answer.is_none_or(|found| found.as_deref() == expected)
        };
        b.set("c:k", Bytes::from_static(b"v1"), None).await.unwrap();
        assert!(agrees(b.get_now("c:k"), Some(b"v1")));
        assert_eq!(b.get("c:k").await.unwrap().as_deref(), Some(&b"v1"[..]));
        assert!(agrees(b.get_now("c:k"), Some(b"v1")));
        b.set("c:k", Bytes::from_static(b"v2"), None).await.unwrap();
        assert!(agrees(b.get_now("c:k"), Some(b"v2")));
        b.get("c:k").await.unwrap();
        assert!(agrees(b.get_now("c:k"), Some(b"v2")));
        b.delete("c:k").await.unwrap();
        assert!(agrees(b.get_now("c:k"), None));
        assert!(agrees(b.get_now("c:never"), None));
        b.set(
            "c:brief",
            Bytes::from_static(b"v"),
            Some(Duration::from_millis(100)),
        )
        .await
        .unwrap();
        b.get("c:brief").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(agrees(b.get_now("c:brief"), None));
    }
}

/// Runs every body against the backend that `$make` (an async expression
/// giving `(SharedBackend, guard)`) builds, one fresh backend per test.
macro_rules! contract_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            contract_suite!(@tests $make;
                set_then_get_returns_the_bytes, a_missing_key_is_none, binary_and_empty_values_round_trip,
                set_overwrites_the_value, an_entry_expires_after_its_ttl, overwriting_without_ttl_removes_the_expiry,
                delete_reports_whether_it_removed, compare_and_delete_removes_only_the_expected_value,
                mget_answers_in_order_with_none_for_misses, mset_stores_every_entry_with_its_own_ttl,
                many_concurrent_writers_and_readers_agree, mset_if_absent_never_replaces_a_value,
                ping_answers, get_now_answers_what_get_would);
        }
    };
    (@tests $make:expr; $($body:ident),*) => {$(
        #[tokio::test]
        async fn $body() {
            #[allow(clippy::redundant_closure_call)]
            let (backend, _guard) = ($make)().await;
            bodies::$body(backend).await;
        }
    )*};
}

contract_suite!(memory, || async {
    (Arc::new(MemoryBackend::default()) as SharedBackend, ())
});
contract_suite!(redis, || async {
    let redis = TestRedis::start().await;
    (Arc::new(redis.backend().await) as SharedBackend, redis)
});

// The near cache over Redis, armed: what it keeps in the process must not
// change a single observable behaviour.
contract_suite!(near, || async {
    let redis = TestRedis::start().await;
    let near = tests::armed_near_cache(
        Arc::new(redis.backend().await),
        &redis.config(),
        &["c:".to_owned()],
        NearConfig::default(),
    )
    .await;
    (Arc::new(near) as SharedBackend, redis)
});

/// One Redis Cluster serves every test of the binary: each test's keys get a
/// prefix of their own, so the bodies run unchanged side by side.
struct Namespaced {
    inner: SharedBackend,
    prefix: String,
}

impl Namespaced {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
    fn keys(&self, keys: &[String]) -> Vec<String> {
        keys.iter().map(|key| self.key(key)).collect()
    }
}

#[async_trait::async_trait]
impl CacheBackend for Namespaced {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.inner.get(&self.key(key)).await
    }
    fn get_now(&self, key: &str) -> Option<Option<Bytes>> {
        self.inner.get_now(&self.key(key))
    }
    async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.inner.set(&self.key(key), value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(&self.key(key)).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.inner
            .compare_and_delete(&self.key(key), expected)
            .await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.inner.mget(&self.keys(keys)).await
    }
    async fn mget_with_ttl(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<(Bytes, Remaining)>>, BackendError> {
        self.inner.mget_with_ttl(&self.keys(keys)).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        let entries: Vec<Entry> = entries
            .iter()
            .map(|entry| Entry {
                key: self.key(&entry.key),
                ..entry.clone()
            })
            .collect();
        self.inner.mset(&entries).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }
}

// Redis Cluster (3 masters, 3 replicas): the same contract, keys spread over
// the masters' slots.
contract_suite!(cluster, || async {
    let cluster = TestCluster::shared();
    let backend = RedisBackend::new(&cluster.config()).unwrap();
    let namespaced = Namespaced {
        inner: Arc::new(backend),
        prefix: format!("t{}:", uuid::Uuid::new_v4().simple()),
    };
    (Arc::new(namespaced) as SharedBackend, ())
});

// The near cache over Redis Cluster, armed on every node.
contract_suite!(near_cluster, || async {
    let cluster = TestCluster::shared();
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let near = tests::armed_near_cache(
        Arc::new(RedisBackend::new(&cluster.config()).unwrap()),
        &cluster.config(),
        std::slice::from_ref(&prefix),
        NearConfig::default(),
    )
    .await;
    let namespaced = Namespaced {
        inner: Arc::new(near),
        prefix,
    };
    (Arc::new(namespaced) as SharedBackend, ())
});

/// The stack the service runs, as `app::build_backend` composes it from
/// settings `vars`: each decorator must keep the contract, and so must they
/// all together. Its keys go under the users' record namespace, which the
/// near cache (when on) tracks; tracking is armed before the body runs.
async fn service_stack(vars: &[(&str, &str)]) -> SharedBackend {
    let env: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    let built = app::build_backend(&tests::settings(&env))
        .unwrap_or_else(|error| panic!("the stack was not built: {error}"));
    if let Some(near) = &built.near {
        tests::until_armed(near).await;
    }
    let prefix = format!(
        "{}:t{}:",
        domain::CacheManager::NAMESPACES[0],
        uuid::Uuid::new_v4().simple()
    );
    Arc::new(Namespaced {
        inner: built.backend,
        prefix,
    })
}

// Over Redis: fills written behind, metered, the near cache armed, the
// breaker, Redis.
contract_suite!(service_stack_redis, || async {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let backend = service_stack(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("CACHEMANAGER__CACHE__NEAR__ENABLED", "true"),
        ("CACHEMANAGER__METRICS__ENABLED", "true"),
        ("CACHEMANAGER__CACHE__FILL_LINGER_MS", "1"),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", redis.password.as_str()),
    ])
    .await;
    (backend, redis)
});

// In memory: metered, the timeout, the memory backend.
contract_suite!(service_stack_memory, || async {
    let backend = service_stack(&[
        ("CACHEMANAGER__CACHE__BACKEND", "memory"),
        ("CACHEMANAGER__METRICS__ENABLED", "true"),
    ])
    .await;
    (backend, ())
});

/// The no-op backend: the parts of the contract that apply to a backend that
/// stores nothing.
mod noop {
    use super::*;

    #[tokio::test]
    async fn every_read_misses_and_every_write_succeeds() {
        let b: SharedBackend = Arc::new(NoopBackend);
        b.set("c:k", Bytes::from_static(b"v"), None).await.unwrap();
        assert_eq!(b.get("c:k").await.unwrap(), None);
        assert!(!b.delete("c:k").await.unwrap());
        assert!(!b.compare_and_delete("c:k", b"v").await.unwrap());
        b.mset(&[Entry::new("c:k".into(), Bytes::new(), None)])
            .await
            .unwrap();
        let keys = vec!["c:a".to_owned(), "c:b".to_owned()];
        assert_eq!(
            b.mget(&keys).await.unwrap(),
            vec![None, None],
            "one answer per key"
        );
        bodies::a_missing_key_is_none(b.clone()).await;
        bodies::ping_answers(b).await;
    }
}
