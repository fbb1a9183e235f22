//! The user service: the seed's cache-aside flows over a repository and the
//! user caches.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use ports::MAX_BATCH;

use crate::error::UserError;
use crate::manager::CacheManager;
use crate::ports::{UserQueries, UserRepository};
use crate::user::{Page, User, UserId, UserUuid};

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

/// Cache-aside access to users, generic over where they are stored.
///
/// The uuid-to-id and id-to-uuid caches let the store be asked by its cheap
/// key; a miss asks the store by the key we were given and fills both caches
/// in one round trip. A cache that fails or lies (a stale mapping) never
/// changes the answer, only its cost.
#[derive(Debug, Clone)]
pub struct UserService<R> {
    repository: R,
    caches: CacheManager,
}

impl<R: UserRepository> UserService<R> {
    /// A service over `repository` and the caches of `caches`.
    pub fn new(repository: R, caches: CacheManager) -> Self {
        Self { repository, caches }
    }

    /// Writes both directions of every user's mapping in one round trip.
    async fn remember(&self, users: &[&User]) {
        let mut batch = self.caches.batch();
        for user in users {
            let written = batch
                .put(self.caches.uuid_to_id(), &user.uuid(), &user.id())
                .and_then(|b| b.put(self.caches.id_to_uuid(), &user.id(), &user.uuid()));
            if let Err(error) = written {
                // Text-encoded ids and UUIDs cannot fail to encode; should a
                // future codec fail, the user is still served uncached.
                tracing::error!(%error, uuid = %user.uuid(), "could not encode user mapping");
            }
        }
        batch.commit().await;
    }
}

#[async_trait]
impl<R: UserRepository> UserQueries for UserService<R> {
    #[tracing::instrument(level = "debug", skip(self), fields(%uuid))]
    async fn user_by_uuid(&self, uuid: UserUuid) -> Result<User, UserError> {
        if let Some(id) = self.caches.uuid_to_id().get(&uuid).await {
            match self.repository.by_id(id).await? {
                Some(user) if user.uuid() == uuid => return Ok(user),
                _ => {
                    tracing::info!(%id, "stale uuid-to-id entry; invalidating");
                    self.caches.uuid_to_id().invalidate(&uuid).await;
                }
            }
        }
        let user = self
            .repository
            .by_uuid(uuid)
            .await?
            .ok_or(UserError::NotFoundByUuid(uuid))?;
        self.remember(&[&user]).await;
        Ok(user)
    }

    #[tracing::instrument(level = "debug", skip(self), fields(%id))]
    async fn user_by_id(&self, id: UserId) -> Result<User, UserError> {
        if let Some(uuid) = self.caches.id_to_uuid().get(&id).await {
            match self.repository.by_uuid(uuid).await? {
                Some(user) if user.id() == id => return Ok(user),
                _ => {
                    tracing::info!(%uuid, "stale id-to-uuid entry; invalidating");
                    self.caches.id_to_uuid().invalidate(&id).await;
                }
            }
        }
        let user = self
            .repository
            .by_id(id)
            .await?
            .ok_or(UserError::NotFoundById(id))?;
        self.remember(&[&user]).await;
        Ok(user)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_users(&self, page: Page) -> Result<Vec<User>, UserError> {
        Ok(self.repository.list(page).await?)
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

        // One MGET: which UUIDs do we already know the id of?
        let cached = self
            .caches
            .uuid_to_id()
            .mget(&unique)
            .await
            .unwrap_or_else(|error| {
                // Unreachable while MAX_LOOKUP <= MAX_BATCH; a miss for all is still correct.
                tracing::error!(%error, "uuid-to-id mget refused; treating all as misses");
                vec![None; unique.len()]
            });
        let mut hits: HashMap<UserId, UserUuid> = HashMap::new();
        let mut misses: Vec<UserUuid> = Vec::new();
        for (uuid, id) in unique.iter().zip(cached) {
            match id {
                // Two uuids cached under one id: at most one is right, so the
                // second is asked for by uuid rather than dropped.
                Some(id) if !hits.contains_key(&id) => {
                    hits.insert(id, *uuid);
                }
                _ => misses.push(*uuid),
            }
        }

        let mut found: HashMap<UserUuid, User> = HashMap::with_capacity(unique.len());
        if !hits.is_empty() {
            let ids: Vec<UserId> = hits.keys().copied().collect();
            for user in self.repository.by_ids(&ids).await? {
                if hits.get(&user.id()) == Some(&user.uuid()) {
                    hits.remove(&user.id());
                    found.insert(user.uuid(), user);
                }
            }
            // What is left was a stale mapping: drop it and ask by UUID.
            for (id, uuid) in hits {
                tracing::info!(%id, %uuid, "stale uuid-to-id entry; invalidating");
                self.caches.uuid_to_id().invalidate(&uuid).await;
                misses.push(uuid);
            }
        }

        if !misses.is_empty() {
            let loaded = self.repository.by_uuids(&misses).await?;
            let wanted: HashSet<UserUuid> = misses.iter().copied().collect();
            let loaded: Vec<User> = loaded
                .into_iter()
                .filter(|u| wanted.contains(&u.uuid()))
                .collect();
            self.remember(&loaded.iter().collect::<Vec<_>>()).await;
            found.extend(loaded.into_iter().map(|u| (u.uuid(), u)));
        }

        let mut lookup = Lookup::default();
        for uuid in unique {
            match found.remove(&uuid) {
                Some(user) => lookup.users.push(user),
                None => lookup.missing.push(uuid),
            }
        }
        Ok(lookup)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use mockall::predicate::eq;
    use ports::{BackendError, CachePolicy, MockCacheBackend};

    use super::*;
    use crate::error::RepositoryError;
    use crate::ports::MockUserRepository;
    use crate::user::{Email, Name};

    fn uuid(n: u32) -> UserUuid {
        UserUuid::parse(&format!("550e8400-e29b-41d4-a716-4466554400{n:02}")).unwrap()
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

    fn service(
        repo: MockUserRepository,
        cache: MockCacheBackend,
    ) -> UserService<MockUserRepository> {
        UserService::new(
            repo,
            CacheManager::new(Arc::new(cache), &CachePolicy::new()),
        )
    }

    fn text(s: String) -> Option<Bytes> {
        Some(Bytes::from(s))
    }

    #[tokio::test]
    async fn uuid_hit_asks_the_repository_by_id_and_never_by_uuid() {
        let mut cache = MockCacheBackend::new();
        cache
            .expect_get()
            .with(eq("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001"))
            .times(1)
            .returning(|_| Ok(text("1".into())));
        cache.expect_mset().never();
        let mut repo = MockUserRepository::new();
        repo.expect_by_id()
            .with(eq(UserId::new(1).unwrap()))
            .times(1)
            .returning(|_| Ok(Some(user(1))));
        repo.expect_by_uuid().never();

        let found = service(repo, cache).user_by_uuid(uuid(1)).await.unwrap();
        assert_eq!(found, user(1));
    }

    #[tokio::test]
    async fn uuid_miss_asks_by_uuid_and_writes_both_directions_in_one_round_trip() {
        let mut cache = MockCacheBackend::new();
        cache.expect_get().times(1).returning(|_| Ok(None));
        cache
            .expect_mset()
            .withf(|entries| {
                entries.len() == 2
                    && entries[0].key == "user:uuid-to-id:550e8400-e29b-41d4-a716-446655440003"
                    && &entries[0].value[..] == b"3"
                    && entries[1].key == "user:id-to-uuid:3"
                    && &entries[1].value[..] == b"550e8400-e29b-41d4-a716-446655440003"
            })
            .times(1)
            .returning(|_| Ok(()));
        let mut repo = MockUserRepository::new();
        repo.expect_by_uuid()
            .times(1)
            .returning(|_| Ok(Some(user(3))));
        repo.expect_by_id().never();

        assert_eq!(
            service(repo, cache).user_by_uuid(uuid(3)).await.unwrap(),
            user(3)
        );
    }

    #[tokio::test]
    async fn a_broken_cache_still_returns_the_user() {
        let mut cache = MockCacheBackend::new();
        cache
            .expect_get()
            .returning(|_| Err(BackendError::Unavailable("down".into())));
        cache
            .expect_mset()
            .returning(|_| Err(BackendError::Unavailable("down".into())));
        let mut repo = MockUserRepository::new();
        repo.expect_by_uuid()
            .times(1)
            .returning(|_| Ok(Some(user(2))));

        assert_eq!(
            service(repo, cache).user_by_uuid(uuid(2)).await.unwrap(),
            user(2)
        );
    }

    #[tokio::test]
    async fn unknown_uuid_is_not_found_and_caches_nothing() {
        let mut cache = MockCacheBackend::new();
        cache.expect_get().returning(|_| Ok(None));
        cache.expect_mset().never();
        let mut repo = MockUserRepository::new();
        repo.expect_by_uuid().returning(|_| Ok(None));

        let error = service(repo, cache)
            .user_by_uuid(uuid(99))
            .await
            .unwrap_err();
        assert_eq!(error, UserError::NotFoundByUuid(uuid(99)));
    }

    #[tokio::test]
    async fn a_stale_mapping_is_invalidated_and_the_user_found_by_uuid() {
        let mut cache = MockCacheBackend::new();
        // The cache claims uuid 4 is id 9, but id 9 is someone else.
        cache.expect_get().returning(|_| Ok(text("9".into())));
        cache
            .expect_delete()
            .with(eq("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440004"))
            .times(1)
            .returning(|_| Ok(true));
        cache.expect_mset().times(1).returning(|_| Ok(()));
        let mut repo = MockUserRepository::new();
        repo.expect_by_id().returning(|_| Ok(Some(user(9))));
        repo.expect_by_uuid()
            .times(1)
            .returning(|_| Ok(Some(user(4))));

        assert_eq!(
            service(repo, cache).user_by_uuid(uuid(4)).await.unwrap(),
            user(4)
        );
    }

    #[tokio::test]
    async fn a_repository_failure_is_reported_not_hidden() {
        let mut cache = MockCacheBackend::new();
        cache.expect_get().returning(|_| Ok(None));
        let mut repo = MockUserRepository::new();
        repo.expect_by_uuid()
            .returning(|_| Err(RepositoryError::Unavailable("db down".into())));

        let error = service(repo, cache)
            .user_by_uuid(uuid(1))
            .await
            .unwrap_err();
        assert!(matches!(error, UserError::Repository(_)));
    }

    #[tokio::test]
    async fn id_hit_asks_the_repository_by_uuid_and_never_by_id() {
        let mut cache = MockCacheBackend::new();
        cache
            .expect_get()
            .with(eq("user:id-to-uuid:5"))
            .returning(|_| Ok(text(uuid(5).to_string())));
        cache.expect_mset().never();
        let mut repo = MockUserRepository::new();
        repo.expect_by_uuid()
            .with(eq(uuid(5)))
            .times(1)
            .returning(|_| Ok(Some(user(5))));
        repo.expect_by_id().never();

        assert_eq!(
            service(repo, cache)
                .user_by_id(UserId::new(5).unwrap())
                .await
                .unwrap(),
            user(5)
        );
    }

    #[tokio::test]
    async fn id_miss_asks_by_id_and_writes_both_directions() {
        let mut cache = MockCacheBackend::new();
        cache.expect_get().returning(|_| Ok(None));
        cache
            .expect_mset()
            .withf(|e| e.len() == 2)
            .times(1)
            .returning(|_| Ok(()));
        let mut repo = MockUserRepository::new();
        repo.expect_by_id()
            .times(1)
            .returning(|_| Ok(Some(user(6))));

        assert_eq!(
            service(repo, cache)
                .user_by_id(UserId::new(6).unwrap())
                .await
                .unwrap(),
            user(6)
        );
    }

    #[tokio::test]
    async fn lookup_uses_one_mget_one_call_per_kind_and_one_mset() {
        let mut cache = MockCacheBackend::new();
        // uuid 1 is cached (id 1); 2 and 3 are not; 3 does not exist.
        cache.expect_mget().times(1).returning(|keys| {
            assert_eq!(keys.len(), 3);
            Ok(vec![text("1".into()), None, None])
        });
        cache
            .expect_mset()
            .withf(|entries| entries.len() == 2 && entries[1].key == "user:id-to-uuid:2")
            .times(1)
            .returning(|_| Ok(()));
        let mut repo = MockUserRepository::new();
        repo.expect_by_ids()
            .times(1)
            .returning(|_| Ok(vec![user(1)]));
        repo.expect_by_uuids()
            .withf(|uuids| uuids == [uuid(2), uuid(3)])
            .times(1)
            .returning(|_| Ok(vec![user(2)]));

        let lookup = service(repo, cache)
            .lookup(&[uuid(1), uuid(2), uuid(3), uuid(1)])
            .await
            .unwrap();
        assert_eq!(lookup.users, vec![user(1), user(2)]);
        assert_eq!(lookup.missing, vec![uuid(3)]);
    }

    #[tokio::test]
    async fn lookup_with_two_uuids_cached_under_one_id_still_finds_both() {
        let mut cache = MockCacheBackend::new();
        // A corrupt cache claims uuid 1 and uuid 2 are both id 1.
        cache
            .expect_mget()
            .returning(|_| Ok(vec![text("1".into()), text("1".into())]));
        cache.expect_mset().returning(|_| Ok(()));
        let mut repo = MockUserRepository::new();
        repo.expect_by_ids().returning(|_| Ok(vec![user(1)]));
        repo.expect_by_uuids()
            .withf(|uuids| uuids == [uuid(2)])
            .times(1)
            .returning(|_| Ok(vec![user(2)]));

        let lookup = service(repo, cache)
            .lookup(&[uuid(1), uuid(2)])
            .await
            .unwrap();
        assert_eq!(lookup.users, vec![user(1), user(2)]);
        assert!(lookup.missing.is_empty(), "{:?}", lookup.missing);
    }

    #[tokio::test]
    async fn lookup_of_101_uuids_is_refused_before_any_io() {
        let mut cache = MockCacheBackend::new();
        cache.expect_mget().never();
        let repo = MockUserRepository::new();
        let uuids: Vec<UserUuid> = (0..101).map(|_| uuid(1)).collect();
        let error = service(repo, cache).lookup(&uuids).await.unwrap_err();
        assert_eq!(
            error,
            UserError::TooManyUuids {
                requested: 101,
                max: 100
            }
        );
    }

    #[tokio::test]
    async fn lookup_of_nothing_touches_nothing() {
        let mut cache = MockCacheBackend::new();
        cache.expect_mget().never();
        let lookup = service(MockUserRepository::new(), cache)
            .lookup(&[])
            .await
            .unwrap();
        assert_eq!(lookup, Lookup::default());
    }

    #[tokio::test]
    async fn lookup_with_a_broken_cache_still_answers_from_the_store() {
        let mut cache = MockCacheBackend::new();
        cache
            .expect_mget()
            .returning(|_| Err(BackendError::Timeout(std::time::Duration::from_millis(50))));
        cache
            .expect_mset()
            .returning(|_| Err(BackendError::Unavailable("down".into())));
        let mut repo = MockUserRepository::new();
        repo.expect_by_ids().never();
        repo.expect_by_uuids()
            .times(1)
            .returning(|_| Ok(vec![user(7), user(8)]));

        let lookup = service(repo, cache)
            .lookup(&[uuid(7), uuid(8)])
            .await
            .unwrap();
        assert_eq!(lookup.users, vec![user(7), user(8)]);
        assert!(lookup.missing.is_empty());
    }
}
