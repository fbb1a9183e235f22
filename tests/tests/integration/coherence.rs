//! Writes keep every cache coherent: after a write returns, no read on any
//! instance is answered with the old record. The classic race is made to
//! happen every time: a reader loads the old row, is held between its load
//! and its fill while a write commits and fences, then fills. Run on every
//! cache backend, over a real store.

use std::sync::Arc;
use std::time::Duration;

use adapters::backend::{DeferredFills, MemoryBackend, NoopBackend};
use adapters::users::SqlStore;
use async_trait::async_trait;
use bytes::Bytes;
use domain::{
    CacheManager, Name, NewUser, Page, RepositoryError, User, UserChanges, UserCommands, UserError,
    UserId, UserQueries, UserRepository, UserService, UserUuid, Version,
};
use ports::{BackendError, CacheBackend, CachePolicy, Entry, SharedBackend, WRITE_FENCE};
use serde_json::json;
use tests::{TestPostgres, TestRedis, spawn_app_on_redis};

use crate::store::{postgres_store, sqlite_store};

/// Holds the next read after it has read, until let go.
#[derive(Default)]
struct Pause {
    armed: std::sync::atomic::AtomicBool,
    read: tokio::sync::Notify,
    go_on: tokio::sync::Notify,
}

impl Pause {
    async fn after_read(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.read.notify_one();
            self.go_on.notified().await;
        }
    }
}

/// A store whose reads can be held between reading and answering.
struct Paused {
    inner: SqlStore,
    pause: Arc<Pause>,
}

#[async_trait]
impl UserRepository for Paused {
    async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
        let found = self.inner.by_uuid(uuid).await;
        self.pause.after_read().await;
        found
    }
    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError> {
        let found = self.inner.by_id(id).await;
        self.pause.after_read().await;
        found
    }
    async fn list(&self, page: Page) -> Result<Vec<User>, RepositoryError> {
        self.inner.list(page).await
    }
    async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError> {
        let found = self.inner.by_uuids(uuids).await;
        self.pause.after_read().await;
        found
    }
    async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError> {
        let found = self.inner.by_ids(ids).await;
        self.pause.after_read().await;
        found
    }
    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, RepositoryError> {
        self.inner.list_after(after, limit).await
    }
    async fn count(&self) -> Result<u64, RepositoryError> {
        self.inner.count().await
    }
    async fn create(&self, user: NewUser) -> Result<User, RepositoryError> {
        self.inner.create(user).await
    }
    async fn update(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        self.inner.update(uuid, changes, expected).await
    }
    async fn delete(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        self.inner.delete(uuid, expected).await
    }
}

/// Two instances over one cache backend and one store: `reader` reads
/// through a store it can hold, `writer` writes. Each has its own caches
/// (its own in-process flights and negative entries), as two processes do.
struct Instances {
    reader: Arc<UserService<Paused>>,
    writer: Arc<UserService<SqlStore>>,
    pause: Arc<Pause>,
    store: SqlStore,
    backend: SharedBackend,
}

fn instances(backend: SharedBackend, store: SqlStore) -> Instances {
    let pause = Arc::new(Pause::default());
    let policy = CachePolicy::new();
    let paused = Paused {
        inner: store.clone(),
        pause: pause.clone(),
    };
    Instances {
        reader: Arc::new(UserService::new(
            paused,
            CacheManager::new(backend.clone(), &policy),
        )),
        writer: Arc::new(UserService::new(
            store.clone(),
            CacheManager::new(backend.clone(), &policy),
        )),
        pause,
        store,
        backend,
    }
}

impl Instances {
    /// A third instance, started after everything happened.
    fn newcomer(&self) -> UserService<SqlStore> {
        UserService::new(
            self.store.clone(),
            CacheManager::new(self.backend.clone(), &CachePolicy::new()),
        )
    }

    /// Starts a read of `uuid` on the reader, and returns once it has read
    /// the store and is held before its fill.
    async fn read_held(&self, uuid: UserUuid) -> tokio::task::JoinHandle<Result<User, UserError>> {
        self.pause
            .armed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let reader = self.reader.clone();
        let read = tokio::spawn(async move { reader.user_by_uuid(uuid).await });
        tokio::time::timeout(Duration::from_secs(5), self.pause.read.notified())
            .await
            .expect("the reader reached the store");
        read
    }
}

async fn seeded(store: &SqlStore) -> User {
    let user = NewUser {
        first_name: Name::new("first_name", "Ada").unwrap(),
        last_name: Name::new("last_name", "Lovelace").unwrap(),
        email: domain::Email::new(&format!("{}@example.com", uuid::Uuid::new_v4().simple()))
            .unwrap(),
    };
    store.create(user).await.unwrap()
}

fn renamed(last: &str) -> UserChanges {
    UserChanges {
        last_name: Some(Name::new("last_name", last).unwrap()),
        ..UserChanges::default()
    }
}

/// The record key holds a fence, the new record or nothing: never the old one.
async fn never_the_old_record(backend: &SharedBackend, uuid: UserUuid, old: &User) {
    let stored = backend.get(&format!("user:record:{uuid}")).await.unwrap();
    if let Some(bytes) = stored
        && bytes.as_ref() != WRITE_FENCE
    {
        let cached: User = serde_json::from_slice(&bytes).unwrap();
        assert_ne!(
            cached.version(),
            old.version(),
            "the old record was cached after the write"
        );
    }
}

async fn an_update_racing_a_reader_never_leaves_the_old_record(
    backend: SharedBackend,
    store: SqlStore,
) {
    let at = instances(backend, store);
    let old = seeded(&at.store).await;
    let read = at.read_held(old.uuid()).await;
    let new = at
        .writer
        .update_user(old.uuid(), renamed("Byron"), None)
        .await
        .unwrap();
    at.pause.go_on.notify_one();
    assert_eq!(
        read.await.unwrap().unwrap(),
        old,
        "the held read overlapped the write"
    );
    never_the_old_record(&at.backend, old.uuid(), &old).await;
    for _ in 0..3 {
        assert_eq!(at.reader.user_by_uuid(old.uuid()).await.unwrap(), new);
        assert_eq!(at.writer.user_by_uuid(old.uuid()).await.unwrap(), new);
        assert_eq!(at.newcomer().user_by_uuid(old.uuid()).await.unwrap(), new);
        assert_eq!(at.reader.user_by_id(old.id()).await.unwrap(), new);
    }
}

async fn a_delete_racing_a_reader_leaves_no_user_behind(backend: SharedBackend, store: SqlStore) {
    let at = instances(backend, store);
    let old = seeded(&at.store).await;
    let read = at.read_held(old.uuid()).await;
    at.writer.delete_user(old.uuid(), None).await.unwrap();
    at.pause.go_on.notify_one();
    assert_eq!(read.await.unwrap().unwrap(), old);
    never_the_old_record(&at.backend, old.uuid(), &old).await;
    let gone = Err(UserError::NotFoundByUuid(old.uuid()));
    assert_eq!(at.reader.user_by_uuid(old.uuid()).await, gone);
    assert_eq!(at.writer.user_by_uuid(old.uuid()).await, gone);
    assert_eq!(at.newcomer().user_by_uuid(old.uuid()).await, gone);
    assert_eq!(
        at.reader.user_by_id(old.id()).await,
        Err(UserError::NotFoundById(old.id()))
    );
    let lookup = at.newcomer().lookup(&[old.uuid()]).await.unwrap();
    assert_eq!(lookup.missing, vec![old.uuid()]);
}

macro_rules! race_suite {
    ($name:ident, $backend:expr, $store:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn an_update_racing_a_reader_never_leaves_the_old_record() {
                #[allow(clippy::redundant_closure_call)]
                let (backend, _redis) = ($backend)().await;
                let (store, _guard) = ($store)().await;
                super::an_update_racing_a_reader_never_leaves_the_old_record(backend, store).await;
            }

            #[tokio::test]
            async fn a_delete_racing_a_reader_leaves_no_user_behind() {
                #[allow(clippy::redundant_closure_call)]
                let (backend, _redis) = ($backend)().await;
                let (store, _guard) = ($store)().await;
                super::a_delete_racing_a_reader_leaves_no_user_behind(backend, store).await;
            }
        }
    };
}

race_suite!(
    memory_sqlite,
    || async {
        (
            Arc::new(MemoryBackend::default()) as SharedBackend,
            None::<TestRedis>,
        )
    },
    sqlite_store
);
race_suite!(
    noop_sqlite,
    || async { (Arc::new(NoopBackend) as SharedBackend, None::<TestRedis>) },
    sqlite_store
);
race_suite!(
    redis_postgres,
    || async {
        let redis = TestRedis::start().await;
        (
            Arc::new(redis.backend().await) as SharedBackend,
            Some(redis),
        )
    },
    postgres_store
);

race_suite!(
    redis_fills_behind_postgres,
    || async {
        let redis = TestRedis::start().await;
        let inner: SharedBackend = Arc::new(redis.backend().await);
        // A linger longer than the test: a fill is written only when a read
        // comes, so every read sees what the queued fills did to Redis.
        let fills = DeferredFills::new(inner, Duration::from_secs(600));
        (
            Arc::new(FlushedBeforeReads(fills)) as SharedBackend,
            Some(redis),
        )
    },
    postgres_store
);

/// Fills written behind the answer, as the service stacks them over Redis,
/// whose reads first write every fill queued before them: the race tests
/// then read the backend as it is once the held reader's fill went out.
struct FlushedBeforeReads(DeferredFills);

#[async_trait]
impl CacheBackend for FlushedBeforeReads {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BackendError> {
        self.0.flush().await;
        self.0.get(key).await
    }
    async fn set(&self, k: &str, v: Bytes, t: Option<Duration>) -> Result<(), BackendError> {
        self.0.set(k, v, t).await
    }
    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.0.delete(key).await
    }
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.0.compare_and_delete(key, expected).await
    }
    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, BackendError> {
        self.0.flush().await;
        self.0.mget(keys).await
    }
    async fn mset(&self, entries: &[Entry]) -> Result<(), BackendError> {
        self.0.mset(entries).await
    }
    async fn fill(
        &self,
        entries: Vec<Entry>,
        not_after: std::time::Instant,
    ) -> Result<(), BackendError> {
        self.0.fill(entries, not_after).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.0.ping().await
    }
}

/// Two service instances over one Redis and one PostgreSQL, end to end.
mod over_http {
    use super::*;

    async fn two_instances(redis: &TestRedis) -> (tests::TestApp, tests::TestApp) {
        let server = TestPostgres::shared();
        let url = server.fresh_database().await;
        let vars = [
            ("CACHEMANAGER__STORE__URL", url.as_str()),
            ("CACHEMANAGER__STORE__PASSWORD", server.password.as_str()),
        ];
        let first = spawn_app_on_redis(redis, &vars).await;
        let second = spawn_app_on_redis(redis, &vars).await;
        (first, second)
    }

    #[tokio::test]
    async fn a_write_through_one_instance_is_read_through_the_other() {
        let redis = TestRedis::start().await;
        let (a, b) = two_instances(&redis).await;
        let created = a
            .post_json(
                "/users",
                &json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}),
            )
            .await;
        assert_eq!(created.status(), 201);
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        // Both instances read it, and cache it.
        for app in [&a, &b, &a, &b] {
            let read = app.get(&location).await;
            assert_eq!(read.status(), 200);
            assert_eq!(read.headers()["etag"], "\"1\"");
        }
        let patched = a
            .client
            .patch(format!("{}{location}", a.address))
            .header("if-match", "\"1\"")
            .json(&json!({"last_name": "King"}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
        let seen: serde_json::Value = b.get(&location).await.json().await.unwrap();
        assert_eq!(
            seen["last_name"], "King",
            "the other instance's next read sees the change"
        );
        let stale = b
            .client
            .patch(format!("{}{location}", b.address))
            .header("if-match", "\"1\"")
            .json(&json!({"last_name": "Blind"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            stale.status(),
            412,
            "a second editor of version 1 is refused"
        );
        let deleted = b
            .client
            .delete(format!("{}{location}", b.address))
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 204);
        assert_eq!(a.get(&location).await.status(), 404);
        assert_eq!(b.get(&location).await.status(), 404);
    }

    #[tokio::test]
    async fn many_writers_and_readers_on_one_user_end_with_every_cache_agreeing_with_the_database()
    {
        let redis = TestRedis::start().await;
        let (a, b) = two_instances(&redis).await;
        let created = a
            .post_json(
                "/users",
                &json!({"first_name": "Ada", "last_name": "W0", "email": "w@example.com"}),
            )
            .await;
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let apps = Arc::new([a, b]);
        let mut tasks = Vec::new();
        for worker in 0..16_usize {
            let apps = apps.clone();
            let location = location.clone();
            tasks.push(tokio::spawn(async move {
                let app = &apps[worker % 2];
                for round in 0..10 {
                    if worker % 4 == 0 {
                        let response = app
                            .client
                            .patch(format!("{}{location}", app.address))
                            .json(&json!({"last_name": format!("W{worker}x{round}")}))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), 200);
                    } else {
                        assert_eq!(app.get(&location).await.status(), 200);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // 4 writers x 10 writes: version 41. Every instance answers it now.
        for app in apps.iter() {
            for _ in 0..3 {
                let read = app.get(&location).await;
                assert_eq!(
                    read.headers()["etag"],
                    "\"41\"",
                    "a stale version was served after the last write"
                );
            }
        }
    }
}
