//! A store decorator that adds a fixed delay to every query: what a real
//! database's round trip costs, for benchmarks and demos of what the cache
//! saves while the users live in memory (`users.latency_ms`, 0 by default).

use std::time::Duration;

use async_trait::async_trait;
use domain::{
    NewUser, Page, RepositoryError, User, UserChanges, UserId, UserRepository, UserUuid, Version,
};

/// `inner`, each query answered `latency` later (no delay when zero).
#[derive(Debug, Clone)]
pub struct Latent<R> {
    inner: R,
    latency: Duration,
}

impl<R> Latent<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, latency: Duration) -> Self {
        Self { inner, latency }
    }

    async fn pause(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[async_trait]
impl<R: UserRepository> UserRepository for Latent<R> {
    async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
        self.pause().await;
        self.inner.by_uuid(uuid).await
    }
    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError> {
        self.pause().await;
        self.inner.by_id(id).await
    }
    async fn list(&self, page: Page) -> Result<Vec<User>, RepositoryError> {
        self.pause().await;
        self.inner.list(page).await
    }
    async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError> {
        self.pause().await;
        self.inner.by_uuids(uuids).await
    }
    async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError> {
        self.pause().await;
        self.inner.by_ids(ids).await
    }
    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, RepositoryError> {
        self.pause().await;
        self.inner.list_after(after, limit).await
    }
    async fn count(&self) -> Result<u64, RepositoryError> {
        self.pause().await;
        self.inner.count().await
    }
    async fn create(&self, user: NewUser) -> Result<User, RepositoryError> {
        self.pause().await;
        self.inner.create(user).await
    }
    async fn update(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        self.pause().await;
        self.inner.update(uuid, changes, expected).await
    }
    async fn delete(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        self.pause().await;
        self.inner.delete(uuid, expected).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::InMemoryUserRepository;

    #[tokio::test(start_paused = true)]
    async fn every_query_waits_the_latency_then_answers_as_the_store_does() {
        let store = Latent::new(InMemoryUserRepository::sample(), Duration::from_millis(5));
        let started = tokio::time::Instant::now();
        let john = UserUuid::parse("550e8400-e29b-41d4-a716-446655440001").unwrap();
        let user = store.by_uuid(john).await.unwrap().unwrap();
        assert_eq!(user.email().as_str(), "john.doe@example.com");
        assert_eq!(started.elapsed(), Duration::from_millis(5));
    }
}
