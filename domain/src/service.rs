//! The user service: read-through flows over a repository and the user
//! caches, with single-flight loading everywhere.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use ports::{LoadError, MAX_BATCH};

use crate::error::{RepositoryError, UserError};
use crate::manager::CacheManager;
use crate::ports::{UserCommands, UserQueries, UserRepository};
use crate::user::{NewUser, Page, User, UserChanges, UserId, UserUuid, Version};

/// The most UUIDs one lookup may carry: one `mget` of the cache.
pub const MAX_LOOKUP: usize = MAX_BATCH;

/// The answer to a batch lookup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lookup {
    /// The users found, in the order they were asked for (each once).
    pub users: Vec<User>,
    /// The UUIDs with no user, in the order they were asked for (each once).
    pub missing: Vec<UserUuid>,
}

/// Read-through access to users, generic over where they are stored.
///
/// Every read goes through the user record cache (`user:record:{uuid}`):
/// a warm hit is one cache round trip and no store query. A miss is loaded
/// once per process however many requests ask at once (single-flight), and an
/// unknown uuid is remembered for a while in this process (negative caching).
/// A load asks the store by uuid (an indexed column) and fills the record and
/// the seed's two mappings in one round trip, so a Python service sharing the
/// Redis gets hits from what we load; by id, the seed's id-to-uuid mapping
/// (ours or the Python service's) resolves the uuid. A cache that fails or
/// lies (a stale mapping) never changes the answer, only its cost. Writes
/// fence the record after they commit (see [`UserCommands`]).
#[derive(Debug)]
pub struct UserService<R> {
    repository: Arc<R>,
    caches: CacheManager,
}

impl<R> Clone for UserService<R> {
    fn clone(&self) -> Self {
        Self {
            repository: self.repository.clone(),
            caches: self.caches.clone(),
        }
    }
}

/// A load's failure as the service reports it.
fn load_failed(error: LoadError<RepositoryError>) -> UserError {
    match error {
        LoadError::Loader(error) => UserError::from(error),
        LoadError::TimedOut(bound) => {
            UserError::StoreUnavailable(format!("no answer from the user store within {bound:?}"))
        }
        LoadError::Cache(error) => UserError::StoreUnavailable(error.to_string()),
        LoadError::Other(message) => UserError::StoreUnavailable(message),
    }
}

impl<R: UserRepository + 'static> UserService<R> {
    /// A service over `repository` and the caches of `caches`.
    pub fn new(repository: R, caches: CacheManager) -> Self {
        Self {
            repository: Arc::new(repository),
            caches,
        }
    }

    /// Loads the users of `uuids` from the store in one query by uuid (an
    /// indexed column: a mapping read first would cost a cache round trip
    /// on every miss and save the store nothing). The one place users are
    /// loaded by uuid; the record cache then writes each record with both
    /// seed mappings in one round trip.
    async fn load_by_uuids(
        repository: Arc<R>,
        uuids: Vec<UserUuid>,
    ) -> Result<Vec<(UserUuid, User)>, RepositoryError> {
        let wanted: HashSet<UserUuid> = uuids.iter().copied().collect();
        Ok(repository
            .by_uuids(&uuids)
            .await?
            .into_iter()
            .filter(|user| wanted.contains(&user.uuid()))
            .map(|user| (user.uuid(), user))
            .collect())
    }
}

#[async_trait]
impl<R: UserRepository + 'static> UserQueries for UserService<R> {
    #[tracing::instrument(level = "debug", skip(self), fields(%uuid))]
    async fn user_by_uuid(&self, uuid: UserUuid) -> Result<User, UserError> {
        // The store is cloned only when the loader runs (a miss): on a hit
        // that is one shared reference count fewer bounced between cores.
        let user = self
            .caches
            .records()
            .get_or_load(&uuid, || {
                let repository = self.repository.clone();
                async move {
                    let mut found = Self::load_by_uuids(repository, vec![uuid]).await?;
                    Ok(found.pop().map(|(_, user)| user))
                }
            })
            .await
            .map_err(load_failed)?;
        user.ok_or(UserError::NotFoundByUuid(uuid))
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%id))]
    async fn user_by_id(&self, id: UserId) -> Result<User, UserError> {
        // id -> uuid through the seed's mapping (loaded once per process on a
        // miss), then the record by uuid: the same path as by uuid.
        for attempt in 0..2 {
            let repository = self.repository.clone();
            let records = self.caches.records().clone();
            let uuid = self
                .caches
                .id_to_uuid()
                .get_or_load(&id, move || async move {
                    let started = std::time::Instant::now();
                    let Some(user) = repository.by_id(id).await? else {
                        return Ok(None);
                    };
                    let uuid = user.uuid();
                    // The record with both mappings, in one round trip, the
                    // way the record cache fills (never over a write fence).
                    records.fill(&uuid, &user, started).await;
                    Ok(Some(uuid))
                })
                .await
                .map_err(load_failed)?
                .ok_or(UserError::NotFoundById(id))?;
            match self.user_by_uuid(uuid).await {
                Ok(user) if user.id() == id => return Ok(user),
                Ok(_) | Err(UserError::NotFoundByUuid(_)) if attempt == 0 => {
                    tracing::info!(%uuid, "stale id-to-uuid entry; invalidating");
                    self.caches.id_to_uuid().invalidate(&id).await;
                }
                Ok(_) | Err(UserError::NotFoundByUuid(_)) => break,
                Err(error) => return Err(error),
            }
        }
        Err(UserError::NotFoundById(id))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_users(&self, page: Page) -> Result<Vec<User>, UserError> {
        Ok(self.repository.list(page).await?)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_users_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, UserError> {
        Page::new(limit, 0)?;
        Ok(self.repository.list_after(after, limit).await?)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn count_users(&self) -> Result<u64, UserError> {
        Ok(self.repository.count().await?)
    }

    #[tracing::instrument(skip(self, uuids), fields(requested = uuids.len()))]
    async fn lookup(&self, uuids: &[UserUuid]) -> Result<Lookup, UserError> {
        if uuids.len() > MAX_LOOKUP {
            return Err(UserError::TooManyUuids {
                requested: uuids.len(),
                max: MAX_LOOKUP,
            });
        }
        let mut seen = HashSet::with_capacity(uuids.len());
        let unique: Vec<UserUuid> = uuids.iter().copied().filter(|u| seen.insert(*u)).collect();
        if unique.is_empty() {
            return Ok(Lookup::default());
        }
        let found = self
            .caches
            .records()
            .mget_or_load(&unique, |missing| {
                Self::load_by_uuids(self.repository.clone(), missing)
            })
            .await
            .map_err(load_failed)?;
        let mut lookup = Lookup::default();
        for (uuid, user) in unique.into_iter().zip(found) {
            match user {
                Some(user) => lookup.users.push(user),
                None => lookup.missing.push(uuid),
            }
        }
        Ok(lookup)
    }
}

/// Writes commit in the store first, then make the caches forget the user:
/// the record cache is fenced (see [`ports::TypedCache::fence`]: a reader
/// that loaded the old record before the write cannot put it back), and on
/// delete the seed's two mappings are removed (they are facts about an id
/// that is never reused, so they are removed, not fenced: a fence in the
/// seed's namespaces would be a value the Python service cannot parse).
#[async_trait]
impl<R: UserRepository + 'static> UserCommands for UserService<R> {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_user(&self, user: NewUser) -> Result<User, UserError> {
        let created = self.repository.create(user).await?;
        self.caches.records().forget_absence(&created.uuid());
        Ok(created)
    }

    #[tracing::instrument(level = "debug", skip(self, changes), fields(%uuid))]
    async fn update_user(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        if_match: Option<Version>,
    ) -> Result<User, UserError> {
        if changes.is_empty() {
            // A merge patch of nothing: the user as the store holds it,
            // still subject to `if_match`.
            let user = self
                .repository
                .by_uuid(uuid)
                .await?
                .ok_or(UserError::NotFoundByUuid(uuid))?;
            if let Some(expected) = if_match
                && expected != user.version()
            {
                return Err(UserError::VersionMismatch {
                    current: user.version(),
                });
            }
            return Ok(user);
        }
        let written = self.repository.update(uuid, changes, if_match).await;
        // Fence even when the write failed: a timed-out write may still have
        // committed, and a fence costs one reload.
        match written {
            Ok(Some(user)) => {
                self.caches.records().fence(&uuid).await;
                Ok(user)
            }
            Ok(None) => Err(UserError::NotFoundByUuid(uuid)),
            Err(error @ RepositoryError::Unavailable(_)) => {
                self.caches.records().fence(&uuid).await;
                Err(error.into())
            }
            Err(error) => Err(error.into()),
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%uuid))]
    async fn delete_user(
        &self,
        uuid: UserUuid,
        if_match: Option<Version>,
    ) -> Result<(), UserError> {
        let deleted = self.repository.delete(uuid, if_match).await;
        match deleted {
            Ok(Some(user)) => {
                self.caches.records().fence(&uuid).await;
                self.caches.uuid_to_id().invalidate(&uuid).await;
                self.caches.id_to_uuid().invalidate(&user.id()).await;
                Ok(())
            }
            Ok(None) => Err(UserError::NotFoundByUuid(uuid)),
            Err(error @ RepositoryError::Unavailable(_)) => {
                self.caches.records().fence(&uuid).await;
                Err(error.into())
            }
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ports::testing::MapBackend;
    use ports::{BackendError, CachePolicy, MockCacheBackend};

    use super::*;
    use crate::user::{Email, Name};

    fn uuid(n: u32) -> UserUuid {
        UserUuid::parse(&format!("550e8400-e29b-41d4-a716-{n:012}")).unwrap()
    }

    fn user(n: u32) -> User {
        User::new(
            UserId::new(i64::from(n)).unwrap(),
            uuid(n),
            Name::new("first_name", "Test").unwrap(),
            Name::new("last_name", &format!("User{n}")).unwrap(),
            Email::new(&format!("test.user{n}@example.com")).unwrap(),
        )
    }

    /// A store of users 1 to 1000 that counts every query and can hold each
    /// one until `gate` opens (so concurrent requests pile up on a miss).
    /// Writes change `written`; `pause` holds the next read after it has
    /// read (to make a reader race a write).
    #[derive(Default)]
    struct CountingStore {
        by_uuid: AtomicUsize,
        by_id: AtomicUsize,
        by_uuids: AtomicUsize,
        by_ids: AtomicUsize,
        uuids_asked: AtomicUsize,
        gate: Option<Arc<tokio::sync::Notify>>,
        fail: bool,
        written: std::sync::Mutex<std::collections::HashMap<u128, Option<User>>>,
        pause: std::sync::Mutex<Option<Pause>>,
    }

    /// Holds one read between reading and answering.
    struct Pause {
        read: Arc<tokio::sync::Notify>,
        go_on: Arc<tokio::sync::Notify>,
    }

    impl CountingStore {
        async fn wait(&self) -> Result<(), RepositoryError> {
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            if self.fail {
                return Err(RepositoryError::Unavailable("the store is down".into()));
            }
            Ok(())
        }
        /// Answers `read` of the users as they are now, held first if a
        /// pause is armed.
        async fn answer<T>(&self, read: impl FnOnce(&Self) -> T) -> T {
            let answer = read(self);
            let pause = self.pause.lock().unwrap().take();
            if let Some(pause) = pause {
                pause.read.notify_one();
                pause.go_on.notified().await;
            }
            answer
        }
        fn known(&self, n: u128) -> Option<User> {
            if let Some(written) = self.written.lock().unwrap().get(&n) {
                return written.clone();
            }
            (1..=1000).contains(&n).then(|| user(n as u32))
        }
        /// The n of `uuid(n)`: its last twelve digits, read as decimal.
        fn number(uuid: UserUuid) -> u128 {
            uuid.to_string()[24..].parse().unwrap_or(0)
        }
        fn queries(&self) -> usize {
            self.by_uuid.load(Ordering::SeqCst)
                + self.by_id.load(Ordering::SeqCst)
                + self.by_uuids.load(Ordering::SeqCst)
                + self.by_ids.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl UserRepository for CountingStore {
        async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
            self.by_uuid.fetch_add(1, Ordering::SeqCst);
            self.wait().await?;
            Ok(self.answer(|s| s.known(Self::number(uuid))).await)
        }
        async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError> {
            self.by_id.fetch_add(1, Ordering::SeqCst);
            self.wait().await?;
            Ok(self.answer(|s| s.known(id.get() as u128)).await)
        }
        async fn list(&self, _: Page) -> Result<Vec<User>, RepositoryError> {
            Ok(vec![])
        }
        async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError> {
            self.by_uuids.fetch_add(1, Ordering::SeqCst);
            self.uuids_asked.fetch_add(uuids.len(), Ordering::SeqCst);
            self.wait().await?;
            Ok(self
                .answer(|s| {
                    uuids
                        .iter()
                        .filter_map(|u| s.known(Self::number(*u)))
                        .collect()
                })
                .await)
        }
        async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError> {
            self.by_ids.fetch_add(1, Ordering::SeqCst);
            self.wait().await?;
            Ok(self
                .answer(|s| {
                    ids.iter()
                        .filter_map(|id| s.known(id.get() as u128))
                        .collect()
                })
                .await)
        }
        async fn list_after(
            &self,
            after: Option<UserId>,
            limit: u32,
        ) -> Result<Vec<User>, RepositoryError> {
            let from = after.map_or(1, |id| id.get() as u128 + 1);
            Ok((from..=1000)
                .filter_map(|n| self.known(n))
                .take(limit as usize)
                .collect())
        }
        async fn count(&self) -> Result<u64, RepositoryError> {
            Ok(1000)
        }
        async fn create(&self, _: NewUser) -> Result<User, RepositoryError> {
            Err(RepositoryError::Unavailable("not in this test".into()))
        }
        async fn update(
            &self,
            uuid: UserUuid,
            changes: UserChanges,
            expected: Option<Version>,
        ) -> Result<Option<User>, RepositoryError> {
            self.wait().await?;
            let n = Self::number(uuid);
            let Some(user) = self.known(n) else {
                return Ok(None);
            };
            if expected.is_some_and(|v| v != user.version()) {
                return Err(RepositoryError::VersionMismatch {
                    current: user.version(),
                });
            }
            let (id, uuid, first, last, email) = user.clone().into_parts();
            let changed = User::new(
                id,
                uuid,
                changes.first_name.unwrap_or(first),
                changes.last_name.unwrap_or(last),
                changes.email.unwrap_or(email),
            )
            .with_version(Version::new(user.version().get() + 1));
            self.written
                .lock()
                .unwrap()
                .insert(n, Some(changed.clone()));
            Ok(Some(changed))
        }
        async fn delete(
            &self,
            uuid: UserUuid,
            _: Option<Version>,
        ) -> Result<Option<User>, RepositoryError> {
            self.wait().await?;
            let n = Self::number(uuid);
            let user = self.known(n);
            self.written.lock().unwrap().insert(n, None);
            Ok(user)
        }
    }

    struct Fixture {
        service: UserService<CountingStore>,
        backend: Arc<MapBackend>,
    }

    impl Fixture {
        fn store(&self) -> &CountingStore {
            &self.service.repository
        }
    }

    fn fixture(store: CountingStore) -> Fixture {
        let backend = Arc::new(MapBackend::default());
        let caches = CacheManager::new(backend.clone(), &CachePolicy::new());
        Fixture {
            service: UserService::new(store, caches),
            backend,
        }
    }

    fn record_key(n: u32) -> String {
        format!("user:record:{}", uuid(n))
    }

    #[tokio::test]
    async fn a_miss_loads_once_and_fills_the_record_and_both_seed_mappings() {
        let f = fixture(CountingStore::default());
        assert_eq!(f.service.user_by_uuid(uuid(3)).await, Ok(user(3)));
        assert_eq!(f.store().by_uuids.load(Ordering::SeqCst), 1);
        assert!(
            f.backend
                .text(&record_key(3))
                .unwrap()
                .contains("test.user3@example.com")
        );
        // The seed's format, for the Python service sharing the Redis.
        assert_eq!(
            f.backend
                .text(&format!("user:uuid-to-id:{}", uuid(3)))
                .as_deref(),
            Some("3")
        );
        assert_eq!(
            f.backend.text("user:id-to-uuid:3"),
            Some(uuid(3).to_string())
        );
    }

    #[tokio::test]
    async fn a_warm_hit_costs_no_store_query() {
        let f = fixture(CountingStore::default());
        f.service.user_by_uuid(uuid(4)).await.unwrap();
        let before = f.store().queries();
        for _ in 0..10 {
            assert_eq!(f.service.user_by_uuid(uuid(4)).await, Ok(user(4)));
        }
        assert_eq!(f.store().queries(), before);
    }

    #[tokio::test]
    async fn a_miss_by_uuid_is_one_store_query_by_uuid_and_reads_no_mapping() {
        let f = fixture(CountingStore::default());
        f.backend.put(&format!("user:uuid-to-id:{}", uuid(5)), "5");
        assert_eq!(f.service.user_by_uuid(uuid(5)).await, Ok(user(5)));
        assert_eq!(f.store().by_uuids.load(Ordering::SeqCst), 1);
        assert_eq!(f.store().queries(), 1);
        assert_eq!(f.backend.mgets(), 0, "no mapping read on the miss path");
    }

    #[tokio::test]
    async fn a_mapping_written_by_the_python_service_is_used_by_id() {
        let f = fixture(CountingStore::default());
        f.backend.put("user:id-to-uuid:5", &uuid(5).to_string());
        let id = UserId::new(5).unwrap();
        assert_eq!(f.service.user_by_id(id).await, Ok(user(5)));
        assert_eq!(
            f.store().by_id.load(Ordering::SeqCst),
            0,
            "the id was resolved by the cache"
        );
        assert_eq!(f.store().by_uuids.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_mapping_does_not_matter_to_a_read_by_uuid_and_is_repaired() {
        let f = fixture(CountingStore::default());
        // uuid 6 mapped to user 7's id.
        f.backend.put(&format!("user:uuid-to-id:{}", uuid(6)), "7");
        assert_eq!(f.service.user_by_uuid(uuid(6)).await, Ok(user(6)));
        assert_eq!(f.store().by_uuids.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.backend
                .text(&format!("user:uuid-to-id:{}", uuid(6)))
                .as_deref(),
            Some("6")
        );
    }

    #[tokio::test]
    async fn an_unknown_uuid_is_not_found_caches_nothing_and_is_remembered_in_process() {
        let f = fixture(CountingStore::default());
        let unknown = uuid(5000);
        for _ in 0..5 {
            assert_eq!(
                f.service.user_by_uuid(unknown).await,
                Err(UserError::NotFoundByUuid(unknown))
            );
        }
        assert_eq!(
            f.store().queries(),
            1,
            "repeats within the negative TTL stay home"
        );
        assert!(f.backend.is_empty(), "nothing written to the cache");
    }

    #[tokio::test]
    async fn a_store_failure_is_reported_not_hidden_and_not_cached() {
        let f = fixture(CountingStore {
            fail: true,
            ..CountingStore::default()
        });
        let error = f.service.user_by_uuid(uuid(1)).await.unwrap_err();
        assert!(matches!(error, UserError::StoreUnavailable(_)), "{error:?}");
        assert!(f.backend.is_empty());
    }

    #[tokio::test]
    async fn a_broken_cache_still_returns_the_user() {
        let mut cache = MockCacheBackend::new();
        let down = || BackendError::Unavailable("down".into());
        cache.expect_get_now().returning(|_| None);
        cache.expect_get().returning(move |_| Err(down()));
        cache.expect_mget().returning(move |_| Err(down()));
        cache.expect_set().returning(move |_, _, _| Err(down()));
        cache.expect_mset().returning(move |_| Err(down()));
        cache.expect_fill().returning(move |_, _| Err(down()));
        cache.expect_delete().returning(move |_| Err(down()));
        cache.expect_name().return_const("mock");
        let service = UserService::new(
            CountingStore::default(),
            CacheManager::new(Arc::new(cache), &CachePolicy::new()),
        );
        assert_eq!(service.user_by_uuid(uuid(2)).await, Ok(user(2)));
        assert_eq!(
            service.user_by_id(UserId::new(2).unwrap()).await,
            Ok(user(2))
        );
        let lookup = service.lookup(&[uuid(1), uuid(5000)]).await.unwrap();
        assert_eq!(lookup.users, vec![user(1)]);
        assert_eq!(lookup.missing, vec![uuid(5000)]);
    }

    #[tokio::test]
    async fn by_id_loads_once_then_reads_the_record() {
        let f = fixture(CountingStore::default());
        let id = UserId::new(8).unwrap();
        assert_eq!(f.service.user_by_id(id).await, Ok(user(8)));
        assert_eq!(f.store().by_id.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.store().queries(),
            1,
            "the record was filled by the by-id load"
        );
        assert_eq!(f.service.user_by_id(id).await, Ok(user(8)));
        assert_eq!(f.service.user_by_uuid(uuid(8)).await, Ok(user(8)));
        assert_eq!(f.store().queries(), 1);
        assert_eq!(
            f.service.user_by_id(UserId::new(5000).unwrap()).await,
            Err(UserError::NotFoundById(UserId::new(5000).unwrap()))
        );
    }

    #[tokio::test]
    async fn a_stale_id_mapping_is_invalidated_and_the_user_found_by_id() {
        let f = fixture(CountingStore::default());
        // id 9 mapped to user 10's uuid.
        f.backend.put("user:id-to-uuid:9", &uuid(10).to_string());
        assert_eq!(
            f.service.user_by_id(UserId::new(9).unwrap()).await,
            Ok(user(9))
        );
        assert_eq!(
            f.backend.text("user:id-to-uuid:9"),
            Some(uuid(9).to_string())
        );
    }

    #[tokio::test]
    async fn lookup_is_one_mget_one_load_for_the_misses_and_answers_in_order() {
        let f = fixture(CountingStore::default());
        f.service.user_by_uuid(uuid(1)).await.unwrap();
        let mgets = f.backend.mgets();
        let asked = [uuid(3), uuid(1), uuid(5000), uuid(2), uuid(3)];
        let lookup = f.service.lookup(&asked).await.unwrap();
        assert_eq!(lookup.users, vec![user(3), user(1), user(2)]);
        assert_eq!(lookup.missing, vec![uuid(5000)]);
        // One MGET of records; the load reads no mapping.
        assert_eq!(f.backend.mgets() - mgets, 1);
        assert_eq!(
            f.store().by_uuids.load(Ordering::SeqCst),
            2,
            "one for the warm-up, one here"
        );
        assert_eq!(f.store().uuids_asked.load(Ordering::SeqCst), 1 + 3);
        // Warm now: one MGET, no store query.
        let queries = f.store().queries();
        let again = f.service.lookup(&[uuid(2), uuid(3)]).await.unwrap();
        assert_eq!(again.users, vec![user(2), user(3)]);
        assert_eq!(f.store().queries(), queries);
    }

    #[tokio::test]
    async fn lookup_with_two_uuids_cached_under_one_id_still_finds_both() {
        let f = fixture(CountingStore::default());
        f.backend
            .put(&format!("user:uuid-to-id:{}", uuid(11)), "11");
        f.backend
            .put(&format!("user:uuid-to-id:{}", uuid(12)), "11");
        let lookup = f.service.lookup(&[uuid(11), uuid(12)]).await.unwrap();
        assert_eq!(lookup.users, vec![user(11), user(12)]);
        assert!(lookup.missing.is_empty());
    }

    #[tokio::test]
    async fn lookup_of_101_uuids_is_refused_and_of_none_touches_nothing() {
        let f = fixture(CountingStore::default());
        let many: Vec<UserUuid> = (1..=101).map(uuid).collect();
        assert_eq!(
            f.service.lookup(&many).await,
            Err(UserError::TooManyUuids {
                requested: 101,
                max: 100
            })
        );
        assert_eq!(f.service.lookup(&[]).await, Ok(Lookup::default()));
        assert_eq!(f.store().queries(), 0);
        assert_eq!(f.backend.mgets(), 0);
    }

    /// Starts `n` concurrent calls of `call`, lets the store answer once
    /// they have all piled up, and waits for them.
    async fn stampede<T: Send + 'static>(
        f: &Fixture,
        gate: &Arc<tokio::sync::Notify>,
        n: usize,
        call: impl Fn(UserService<CountingStore>, usize) -> tokio::task::JoinHandle<T>,
    ) -> Vec<T> {
        let handles: Vec<_> = (0..n).map(|i| call(f.service.clone(), i)).collect();
        // Every task runs up to its first wait before the store answers.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        let mut results = Vec::with_capacity(n);
        for handle in handles {
            results.push(handle.await.unwrap());
        }
        results
    }

    #[tokio::test]
    async fn a_thousand_concurrent_requests_for_one_cold_user_reach_the_store_once() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let f = fixture(CountingStore {
            gate: Some(gate.clone()),
            ..CountingStore::default()
        });
        let results = stampede(&f, &gate, 1000, |service, _| {
            tokio::spawn(async move { service.user_by_uuid(uuid(42)).await })
        })
        .await;
        assert!(results.iter().all(|r| *r == Ok(user(42))));
        assert_eq!(
            f.store().queries(),
            1,
            "single-flight: one store query for 1,000 requests"
        );
    }

    #[tokio::test]
    async fn a_thousand_unknown_uuids_reach_the_store_at_most_once_each_and_repeats_not_at_all() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let f = fixture(CountingStore {
            gate: Some(gate.clone()),
            ..CountingStore::default()
        });
        let results = stampede(&f, &gate, 1000, |service, i| {
            tokio::spawn(async move { service.user_by_uuid(uuid(10_000 + i as u32)).await })
        })
        .await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(UserError::NotFoundByUuid(_))))
        );
        assert!(
            f.store().queries() <= 1000,
            "{} queries",
            f.store().queries()
        );
        let before = f.store().queries();
        let again = stampede(&f, &gate, 1000, |service, i| {
            tokio::spawn(async move { service.user_by_uuid(uuid(10_000 + i as u32)).await })
        })
        .await;
        assert!(
            again
                .iter()
                .all(|r| matches!(r, Err(UserError::NotFoundByUuid(_))))
        );
        assert_eq!(
            f.store().queries(),
            before,
            "within the negative TTL, none reaches the store"
        );
    }

    fn renamed(last: &str) -> UserChanges {
        UserChanges {
            last_name: Some(Name::new("last_name", last).unwrap()),
            ..UserChanges::default()
        }
    }

    /// Arms the store to hold the next read after it has read.
    fn pause_next_read(
        store: &CountingStore,
    ) -> (Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>) {
        let (read, go_on) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        *store.pause.lock().unwrap() = Some(Pause {
            read: read.clone(),
            go_on: go_on.clone(),
        });
        (read, go_on)
    }

    #[tokio::test]
    async fn a_reader_that_loaded_before_an_update_does_not_cache_the_old_record() {
        let f = fixture(CountingStore::default());
        let (read, go_on) = pause_next_read(f.store());
        let reader = {
            let service = f.service.clone();
            tokio::spawn(async move { service.user_by_uuid(uuid(7)).await })
        };
        // The reader has read version 1 and is held before it fills.
        read.notified().await;
        let updated = f
            .service
            .update_user(uuid(7), renamed("Renamed"), None)
            .await
            .unwrap();
        assert_eq!(updated.version(), Version::new(2));
        go_on.notify_one();
        let old = reader.await.unwrap().unwrap();
        assert_eq!(
            old.version(),
            Version::FIRST,
            "its own request overlapped the write"
        );
        // Every read after the write returned sees the new record, however
        // often it is asked, cache or no cache.
        for _ in 0..3 {
            let now = f.service.user_by_uuid(uuid(7)).await.unwrap();
            assert_eq!(now.last_name().as_str(), "Renamed");
            assert_eq!(now.version(), Version::new(2));
        }
        assert_eq!(
            f.backend.raw(&record_key(7)).as_deref(),
            Some(ports::WRITE_FENCE)
        );
    }

    #[tokio::test]
    async fn an_update_replaces_a_cached_record_for_every_later_read() {
        let f = fixture(CountingStore::default());
        assert_eq!(
            f.service.user_by_uuid(uuid(8)).await.unwrap().version(),
            Version::FIRST
        );
        f.service
            .update_user(uuid(8), renamed("Later"), None)
            .await
            .unwrap();
        let by_uuid = f.service.user_by_uuid(uuid(8)).await.unwrap();
        let by_id = f.service.user_by_id(UserId::new(8).unwrap()).await.unwrap();
        assert_eq!(by_uuid.last_name().as_str(), "Later");
        assert_eq!(by_id, by_uuid);
    }

    #[tokio::test]
    async fn a_deleted_user_is_gone_from_every_read_path() {
        let f = fixture(CountingStore::default());
        f.service.user_by_uuid(uuid(9)).await.unwrap();
        f.service.delete_user(uuid(9), None).await.unwrap();
        assert_eq!(
            f.backend
                .text("user:uuid-to-id:550e8400-e29b-41d4-a716-000000000009"),
            None
        );
        assert_eq!(f.backend.text("user:id-to-uuid:9"), None);
        assert_eq!(
            f.service.user_by_uuid(uuid(9)).await,
            Err(UserError::NotFoundByUuid(uuid(9)))
        );
        let id = UserId::new(9).unwrap();
        assert_eq!(
            f.service.user_by_id(id).await,
            Err(UserError::NotFoundById(id))
        );
        let found = f.service.lookup(&[uuid(9)]).await.unwrap();
        assert_eq!(found.missing, vec![uuid(9)]);
        assert_eq!(
            f.service.delete_user(uuid(9), None).await,
            Err(UserError::NotFoundByUuid(uuid(9)))
        );
    }

    #[tokio::test]
    async fn a_stale_if_match_is_refused_and_changes_nothing() {
        let f = fixture(CountingStore::default());
        f.service
            .update_user(uuid(5), renamed("First"), Some(Version::FIRST))
            .await
            .unwrap();
        let refused = f
            .service
            .update_user(uuid(5), renamed("Second"), Some(Version::FIRST))
            .await;
        assert_eq!(
            refused,
            Err(UserError::VersionMismatch {
                current: Version::new(2)
            })
        );
        assert_eq!(
            f.service
                .user_by_uuid(uuid(5))
                .await
                .unwrap()
                .last_name()
                .as_str(),
            "First"
        );
        let unchanged = f
            .service
            .update_user(uuid(5), UserChanges::default(), None)
            .await;
        assert_eq!(
            unchanged.map(|u| u.version()),
            Ok(Version::new(2)),
            "an empty change changes nothing"
        );
        assert_eq!(
            f.service
                .update_user(uuid(5), UserChanges::default(), Some(Version::FIRST))
                .await,
            Err(UserError::VersionMismatch {
                current: Version::new(2)
            })
        );
    }
}
