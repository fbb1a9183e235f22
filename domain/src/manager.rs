//! The cache manager: the Rust form of the seed's `CacheManager` singleton.
//! Built once at start-up and handed to its users by dependency injection.

use ports::{BackendError, CachePolicy, SharedBackend, TypedCache, WriteBatch};

use crate::caches::{IdToUuid, IdToUuidCache, UuidToId, UuidToIdCache};

/// Holds the backend and every typed cache built on it.
///
/// A new cache is one field here, built in [`CacheManager::new`] with
/// `typed(&backend, policy)` (see docs/DEVELOPER-GUIDE.md).
#[derive(Clone)]
pub struct CacheManager {
    backend: SharedBackend,
    uuid_to_id: UuidToIdCache,
    id_to_uuid: IdToUuidCache,
}

impl std::fmt::Debug for CacheManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheManager")
            .field("backend", &self.backend.name())
            .field("uuid_to_id", &self.uuid_to_id)
            .field("id_to_uuid", &self.id_to_uuid)
            .finish()
    }
}

/// A typed cache over `backend` with the TTL the policy gives it.
fn typed<D: ports::CacheDefinition>(
    backend: &SharedBackend,
    policy: &CachePolicy,
) -> TypedCache<D> {
    TypedCache::with_policy(backend.clone(), policy)
}

impl CacheManager {
    /// Builds every cache over `backend`, with TTLs and limits from `policy`.
    pub fn new(backend: SharedBackend, policy: &CachePolicy) -> Self {
        Self {
            uuid_to_id: typed::<UuidToId>(&backend, policy),
            id_to_uuid: typed::<IdToUuid>(&backend, policy),
            backend,
        }
    }

    /// The uuid-to-id cache.
    pub fn uuid_to_id(&self) -> &UuidToIdCache {
        &self.uuid_to_id
    }

    /// The id-to-uuid cache.
    pub fn id_to_uuid(&self) -> &IdToUuidCache {
        &self.id_to_uuid
    }

    /// A batch that writes entries of several caches in one round trip.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new(self.backend.clone())
    }

    /// Asks the backend whether it answers. Unbounded: the caller sets a timeout.
    ///
    /// # Errors
    /// What the backend reports.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.backend.ping().await
    }
}
