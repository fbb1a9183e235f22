//! The seed's integration cases: typed caches over a real, password-protected
//! Redis, one server per test (`standalone::`), and the same bodies, unchanged,
//! over the binary's Redis Cluster (`cluster::`, one test at a time on the
//! seed's namespaces).

use std::sync::Arc;
use std::time::Duration;

use adapters::backend::{RedisBackend, RedisConfig};
use domain::{CacheManager, IdToUuid, UserId, UserUuid, UuidToId};
use ports::{CacheBackend, CacheError, CachePolicy, SharedBackend, Ttl, TypedCache};
use redis::AsyncCommands;
use tests::{TestCluster, TestRedis};

const OP_TIMEOUT: Duration = Duration::from_millis(500);

fn uuid(n: u32) -> UserUuid {
    UserUuid::parse(&format!("550e8400-e29b-41d4-a716-4466554400{n:02}")).unwrap()
}

fn id(n: i64) -> UserId {
    UserId::new(n).unwrap()
}

/// Where a body runs: a Redis of its own, or the shared cluster while the
/// test holds its seed namespaces.
pub enum Target {
    Redis(Box<TestRedis>),
    Cluster(
        &'static TestCluster,
        #[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>,
    ),
}

impl Target {
    async fn standalone() -> Self {
        Self::Redis(Box::new(TestRedis::start().await))
    }

    async fn cluster() -> Self {
        let cluster = TestCluster::shared();
        let guard = cluster.exclusive().await;
        Self::Cluster(cluster, guard)
    }

    fn config(&self) -> RedisConfig {
        match self {
            Self::Redis(redis) => redis.config(),
            Self::Cluster(cluster, _) => cluster.config(),
        }
    }

    /// A connected Redis backend.
    async fn backend(&self) -> RedisBackend {
        tests::connected_backend(&self.config()).await
    }

    /// A connected Redis backend whose operations are cut at `op_timeout`.
    async fn shared_backend(&self, op_timeout: Duration) -> SharedBackend {
        Arc::new(
            tests::connected_backend(&RedisConfig {
                operation_timeout: op_timeout,
                ..self.config()
            })
            .await,
        )
    }

    /// A raw connection, to read and write keys as another client would.
    async fn raw(&self) -> Raw {
        match self {
            Self::Redis(redis) => Raw::Node(redis.raw().await),
            Self::Cluster(cluster, _) => Raw::Cluster(cluster.raw().await),
        }
    }
}

/// A raw connection to one server or to the cluster.
pub enum Raw {
    Node(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Raw {
    fn req_packed_command<'a>(
        &'a mut self,
        command: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Node(connection) => connection.req_packed_command(command),
            Self::Cluster(connection) => connection.req_packed_command(command),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Node(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

async fn caches(target: &Target) -> (SharedBackend, TypedCache<UuidToId>, TypedCache<IdToUuid>) {
    let backend = target.shared_backend(OP_TIMEOUT).await;
    (
        backend.clone(),
        TypedCache::new(backend.clone()),
        TypedCache::new(backend),
    )
}

/// The bodies, each run on every target.
mod bodies {
    use super::*;

    pub async fn set_then_get_round_trips(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        uuid_to_id.set(&uuid(1), &id(1)).await.unwrap();
        assert_eq!(uuid_to_id.get(&uuid(1)).await, Some(id(1)));
    }

    pub async fn get_of_a_missing_key_is_none(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        assert_eq!(uuid_to_id.get(&uuid(42)).await, None);
    }

    pub async fn entries_expire_after_their_ttl(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        uuid_to_id
            .set_with_ttl(&uuid(1), &id(1), Ttl::new(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(uuid_to_id.get(&uuid(1)).await, Some(id(1)));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(uuid_to_id.get(&uuid(1)).await, None);
    }

    pub async fn zero_ttl_stores_without_expiry(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        uuid_to_id
            .set_with_ttl(&uuid(1), &id(1), Ttl::NEVER)
            .await
            .unwrap();
        let mut raw = target.raw().await;
        let ttl: i64 = raw
            .ttl("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001")
            .await
            .unwrap();
        assert_eq!(ttl, -1, "-1 means the key has no expiry");
    }

    pub async fn invalidate_removes_the_entry(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        uuid_to_id.set(&uuid(1), &id(1)).await.unwrap();
        uuid_to_id.invalidate(&uuid(1)).await;
        assert_eq!(uuid_to_id.get(&uuid(1)).await, None);
    }

    pub async fn keys_and_values_are_in_the_seeds_format_with_a_600_second_ttl(target: &Target) {
        let (_, uuid_to_id, id_to_uuid) = caches(target).await;
        uuid_to_id.set(&uuid(1), &id(42)).await.unwrap();
        id_to_uuid.set(&id(42), &uuid(1)).await.unwrap();

        let mut raw = target.raw().await;
        let value: String = raw
            .get("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001")
            .await
            .unwrap();
        assert_eq!(value, "42");
        let value: String = raw.get("user:id-to-uuid:42").await.unwrap();
        assert_eq!(value, "550e8400-e29b-41d4-a716-446655440001");
        let ttl: i64 = raw.ttl("user:id-to-uuid:42").await.unwrap();
        assert!((595..=600).contains(&ttl), "ttl {ttl}");
    }

    pub async fn values_written_by_the_python_seed_are_read(target: &Target) {
        let (_, uuid_to_id, id_to_uuid) = caches(target).await;
        let mut raw = target.raw().await;
        // What redis.asyncio's setex(key, 600, str(value)) leaves behind.
        let _: () = raw
            .set_ex(
                "user:uuid-to-id:550e8400-e29b-41d4-a716-446655440007",
                "7",
                600,
            )
            .await
            .unwrap();
        let _: () = raw
            .set_ex(
                "user:id-to-uuid:7",
                "550e8400-e29b-41d4-a716-446655440007",
                600,
            )
            .await
            .unwrap();
        assert_eq!(uuid_to_id.get(&uuid(7)).await, Some(id(7)));
        assert_eq!(id_to_uuid.get(&id(7)).await, Some(uuid(7)));
    }

    pub async fn mget_returns_values_in_order_with_misses(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        uuid_to_id.set(&uuid(1), &id(1)).await.unwrap();
        uuid_to_id.set(&uuid(3), &id(3)).await.unwrap();
        let values = uuid_to_id.mget(&[uuid(1), uuid(2), uuid(3)]).await.unwrap();
        assert_eq!(values, vec![Some(id(1)), None, Some(id(3))]);
    }

    pub async fn mset_stores_every_entry_with_the_ttl(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        let entries: Vec<(UserUuid, UserId)> =
            (1..=10).map(|n| (uuid(n), id(i64::from(n)))).collect();
        uuid_to_id.mset(&entries).await.unwrap();
        let keys: Vec<UserUuid> = (1..=10).map(uuid).collect();
        let values = uuid_to_id.mget(&keys).await.unwrap();
        assert!(
            values.iter().zip(1..).all(|(v, n)| *v == Some(id(n))),
            "{values:?}"
        );
        let mut raw = target.raw().await;
        let ttl: i64 = raw
            .ttl("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440010")
            .await
            .unwrap();
        assert!((595..=600).contains(&ttl), "ttl {ttl}");
    }

    pub async fn batches_over_100_are_refused_and_write_nothing(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        let keys: Vec<UserUuid> = (0..101)
            .map(|_| UserUuid::new(uuid::Uuid::new_v4()))
            .collect();
        let error = uuid_to_id.mget(&keys).await.unwrap_err();
        assert_eq!(
            error,
            CacheError::BatchTooLarge {
                requested: 101,
                max: 100
            }
        );
        let entries: Vec<(UserUuid, UserId)> = keys.iter().map(|k| (*k, id(1))).collect();
        let error = uuid_to_id.mset(&entries).await.unwrap_err();
        assert_eq!(
            error,
            CacheError::BatchTooLarge {
                requested: 101,
                max: 100
            }
        );
        let mut raw = target.raw().await;
        for key in &keys {
            let exists: i64 = raw.exists(format!("user:uuid-to-id:{key}")).await.unwrap();
            assert_eq!(exists, 0, "nothing of the refused batch was written");
        }
    }

    pub async fn id_and_uuid_map_both_ways_through_the_manager(target: &Target) {
        let backend = target.shared_backend(OP_TIMEOUT).await;
        let manager = CacheManager::new(backend, &CachePolicy::new());
        let mut batch = manager.batch();
        batch.put(manager.uuid_to_id(), &uuid(5), &id(5)).unwrap();
        batch.put(manager.id_to_uuid(), &id(5), &uuid(5)).unwrap();
        batch.commit().await;
        assert_eq!(manager.uuid_to_id().get(&uuid(5)).await, Some(id(5)));
        assert_eq!(manager.id_to_uuid().get(&id(5)).await, Some(uuid(5)));
    }

    pub async fn corrupt_data_is_a_miss_and_is_removed(target: &Target) {
        let (_, uuid_to_id, id_to_uuid) = caches(target).await;
        let mut raw = target.raw().await;
        let _: () = raw
            .set(
                "user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001",
                "not-a-number",
            )
            .await
            .unwrap();
        let _: () = raw.set("user:id-to-uuid:9", "not-a-uuid").await.unwrap();
        assert_eq!(uuid_to_id.get(&uuid(1)).await, None);
        assert_eq!(id_to_uuid.mget(&[id(9)]).await.unwrap(), vec![None]);
        let left: Option<String> = raw
            .get("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001")
            .await
            .unwrap();
        assert_eq!(left, None);
        let left: Option<String> = raw.get("user:id-to-uuid:9").await.unwrap();
        assert_eq!(left, None);
    }

    pub async fn mget_invalidates_only_the_corrupt_entries(target: &Target) {
        let (_, uuid_to_id, _) = caches(target).await;
        uuid_to_id.set(&uuid(1), &id(1)).await.unwrap();
        let mut raw = target.raw().await;
        let _: () = raw
            .set(
                "user:uuid-to-id:550e8400-e29b-41d4-a716-446655440002",
                "garbage",
            )
            .await
            .unwrap();
        let values = uuid_to_id.mget(&[uuid(1), uuid(2)]).await.unwrap();
        assert_eq!(values, vec![Some(id(1)), None]);
        let exists: i64 = raw
            .exists("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001")
            .await
            .unwrap();
        assert_eq!(exists, 1, "the valid entry survives");
    }

    pub async fn a_value_rewritten_meanwhile_survives_the_corrupt_entry_cleanup(target: &Target) {
        let backend = target.backend().await;
        let mut raw = target.raw().await;
        let _: () = raw
            .set("user:id-to-uuid:3", "550e8400-e29b-41d4-a716-446655440003")
            .await
            .unwrap();
        // Someone read "garbage" earlier; the key now holds a valid value.
        let removed = backend
            .compare_and_delete("user:id-to-uuid:3", b"garbage")
            .await
            .unwrap();
        assert!(!removed);
        let value: String = raw.get("user:id-to-uuid:3").await.unwrap();
        assert_eq!(value, "550e8400-e29b-41d4-a716-446655440003");
    }

    pub async fn the_backend_is_usable_through_an_arc_dyn(target: &Target) {
        let backend: Arc<dyn CacheBackend> = Arc::new(target.backend().await);
        assert_eq!(backend.name(), "redis");
        backend.ping().await.unwrap();
    }
}

/// Runs every body against the target `$make` gives, one per test.
macro_rules! typed_cache_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            typed_cache_suite!(@tests $make; set_then_get_round_trips, get_of_a_missing_key_is_none, entries_expire_after_their_ttl, zero_ttl_stores_without_expiry, invalidate_removes_the_entry, keys_and_values_are_in_the_seeds_format_with_a_600_second_ttl, values_written_by_the_python_seed_are_read, mget_returns_values_in_order_with_misses, mset_stores_every_entry_with_the_ttl, batches_over_100_are_refused_and_write_nothing, id_and_uuid_map_both_ways_through_the_manager, corrupt_data_is_a_miss_and_is_removed, mget_invalidates_only_the_corrupt_entries, a_value_rewritten_meanwhile_survives_the_corrupt_entry_cleanup, the_backend_is_usable_through_an_arc_dyn);
        }
    };
    (@tests $make:expr; $($body:ident),*) => {$(
        #[tokio::test]
        async fn $body() {
            #[allow(clippy::redundant_closure_call)]
            let target = ($make)().await;
            bodies::$body(&target).await;
        }
    )*};
}

typed_cache_suite!(standalone, Target::standalone);
// Redis Cluster (3 masters, 3 replicas): keys in the seed's format spread
// over the masters' slots; no hash tag added.
typed_cache_suite!(cluster, Target::cluster);

/// A fault of one server (stopped, restarted empty); the cluster's is its
/// failover test (`outage::a_cluster_master_killed_under_load_fails_no_request`).
#[tokio::test]
async fn the_manager_connects_serves_misses_while_redis_is_down_and_reconnects() {
    let port = tests::free_port();
    let redis = TestRedis::start_with(Some(port), &[]).await;
    let backend = redis.shared_backend(Duration::from_millis(200)).await;
    let manager = CacheManager::new(backend, &CachePolicy::new());
    manager.ping().await.unwrap();
    manager.uuid_to_id().set(&uuid(1), &id(1)).await.unwrap();
    // A typed set swallows backend errors: check Redis really holds it.
    let mut raw = redis.raw().await;
    let stored: Option<String> = raw
        .get(format!("user:uuid-to-id:{}", uuid(1)))
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("1"));

    redis.container.stop().await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        manager.uuid_to_id().get(&uuid(1)).await,
        None,
        "a dead Redis is a miss"
    );
    // Not an error for the caller: a dead Redis makes the write a no-op.
    assert_eq!(manager.uuid_to_id().set(&uuid(2), &id(2)).await, Ok(()));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bounded by the op timeout: {:?}",
        started.elapsed()
    );

    redis.container.start().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        manager.uuid_to_id().set(&uuid(3), &id(3)).await.unwrap();
        if manager.uuid_to_id().get(&uuid(3)).await == Some(id(3)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnection within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted Redis is empty: the entry from before is gone, not stale,
    // and the write made while it was down never landed.
    assert_eq!(manager.uuid_to_id().get(&uuid(1)).await, None);
    assert_eq!(manager.uuid_to_id().get(&uuid(2)).await, None);
}
