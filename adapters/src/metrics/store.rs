//! A decorator that counts and times every query of the users store.

use std::future::Future;
use std::time::Instant;

use async_trait::async_trait;
use domain::{
    NewUser, Page, RepositoryError, User, UserChanges, UserId, UserRepository, UserUuid, Version,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::LatencyHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueryLabels {
    operation: &'static str,
    /// `ok`, `unavailable`, `duplicate_email` or `version_mismatch`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ConnectionLabel {
    /// `in_use` or `idle`.
    pub(super) state: &'static str,
}

type Durations = Family<QueryLabels, LatencyHistogram>;

/// The store families of a registry.
#[derive(Clone)]
pub(super) struct StoreFamilies {
    durations: Durations,
    pub(super) connections: Family<ConnectionLabel, Gauge>,
}

impl StoreFamilies {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let durations: Durations = Family::default();
        let connections = Family::<ConnectionLabel, Gauge>::default();
        registry.register_with_unit(
            "store_query_duration",
            "Users store queries, by operation and outcome (ok, unavailable, duplicate_email, \
             version_mismatch); the _count is the number of queries",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register(
            "store_connections",
            "Connections of the users store's pool, by state (in_use, idle)",
            connections.clone(),
        );
        Self {
            durations,
            connections,
        }
    }
}

fn outcome<T>(result: &Result<T, RepositoryError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(RepositoryError::Unavailable(_)) => "unavailable",
        Err(RepositoryError::DuplicateEmail(_)) => "duplicate_email",
        Err(RepositoryError::VersionMismatch { .. }) => "version_mismatch",
    }
}

/// `inner`, each query timed and counted.
#[derive(Clone)]
pub struct MeteredStore<R> {
    inner: R,
    families: StoreFamilies,
}

impl<R> std::fmt::Debug for MeteredStore<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl<R> MeteredStore<R> {
    pub(super) fn new(inner: R, families: StoreFamilies) -> Self {
        Self { inner, families }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        query: impl Future<Output = Result<T, RepositoryError>>,
    ) -> Result<T, RepositoryError> {
        let started = Instant::now();
        let result = query.await;
        self.families
            .durations
            .get_or_create(&QueryLabels {
                operation,
                outcome: outcome(&result),
            })
            .observe(started.elapsed());
        result
    }
}

#[async_trait]
impl<R: UserRepository> UserRepository for MeteredStore<R> {
    async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
        self.timed("by_uuid", self.inner.by_uuid(uuid)).await
    }
    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError> {
        self.timed("by_id", self.inner.by_id(id)).await
    }
    async fn list(&self, page: Page) -> Result<Vec<User>, RepositoryError> {
        self.timed("list", self.inner.list(page)).await
    }
    async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError> {
        self.timed("by_uuids", self.inner.by_uuids(uuids)).await
    }
    async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError> {
        self.timed("by_ids", self.inner.by_ids(ids)).await
    }
    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, RepositoryError> {
        self.timed("list_after", self.inner.list_after(after, limit))
            .await
    }
    async fn count(&self) -> Result<u64, RepositoryError> {
        self.timed("count", self.inner.count()).await
    }
    async fn create(&self, user: NewUser) -> Result<User, RepositoryError> {
        self.timed("create", self.inner.create(user)).await
    }
    async fn update(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        self.timed("update", self.inner.update(uuid, changes, expected))
            .await
    }
    async fn delete(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        self.timed("delete", self.inner.delete(uuid, expected))
            .await
    }
}
