//! The cache manager: the Rust form of the seed's `CacheManager` singleton.
//! Built once at start-up and handed to its users by dependency injection.

use std::sync::Arc;

use ports::{
    BackendError, CacheObserver, CachePolicy, Entry, ManagedCache, SharedBackend, Timer,
    TypedCache, WriteBatch,
};

use crate::User;
use crate::caches::{
    IdToUuid, IdToUuidCache, UserRecordCache, UserRecords, UuidToId, UuidToIdCache,
};

/// Holds the backend and every typed cache built on it.
///
/// A new cache is one field here, built in [`CacheManager::new`] with
/// `typed(&backend, policy)` (see docs/DEVELOPER-GUIDE.md).
#[derive(Clone)]
pub struct CacheManager {
    backend: SharedBackend,
    records: UserRecordCache,
    uuid_to_id: UuidToIdCache,
    id_to_uuid: IdToUuidCache,
}

impl std::fmt::Debug for CacheManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheManager")
            .field("backend", &self.backend.name())
            .field("records", &self.records)
            .field("uuid_to_id", &self.uuid_to_id)
            .field("id_to_uuid", &self.id_to_uuid)
            .finish()
    }
}

/// A typed cache over `backend` with what the policy gives it, its loads
/// bounded by `timer` when there is one.
fn typed<D: ports::CacheDefinition>(
    backend: &SharedBackend,
    policy: &CachePolicy,
    timer: Option<&Arc<dyn Timer>>,
) -> TypedCache<D> {
    let cache = TypedCache::with_policy(backend.clone(), policy);
    match timer {
        Some(timer) => cache.with_timer(timer.clone()),
        None => cache,
    }
}

impl CacheManager {
    /// Builds every cache over `backend`, with TTLs and limits from `policy`;
    /// read-through loads are not bounded (see [`CacheManager::with_timer`]).
    pub fn new(backend: SharedBackend, policy: &CachePolicy) -> Self {
        Self::build(backend, policy, None)
    }

    /// Like [`CacheManager::new`], each read-through load cut at the
    /// policy's load timeout by `timer` (the service's runtime).
    pub fn with_timer(backend: SharedBackend, policy: &CachePolicy, timer: Arc<dyn Timer>) -> Self {
        Self::build(backend, policy, Some(&timer))
    }

    fn build(backend: SharedBackend, policy: &CachePolicy, timer: Option<&Arc<dyn Timer>>) -> Self {
        let uuid_to_id = typed::<UuidToId>(&backend, policy, timer);
        let id_to_uuid = typed::<IdToUuid>(&backend, policy, timer);
        // Every record a load stores brings the seed's two mappings along, in
        // the same round trip, byte-compatible: the Python service sharing the
        // Redis gets hits from what we load.
        let mappings = {
            let (uuid_to_id, id_to_uuid) = (uuid_to_id.clone(), id_to_uuid.clone());
            move |user: &User| {
                [
                    uuid_to_id.entry(&user.uuid(), &user.id()),
                    id_to_uuid.entry(&user.id(), &user.uuid()),
                ]
                .into_iter()
                .filter_map(Result::ok)
                .collect::<Vec<Entry>>()
            }
        };
        Self {
            // The record is the one value whose decode costs more than a
            // clone (JSON, every part validated): a hit on bytes decoded
            // before skips it.
            records: typed::<UserRecords>(&backend, policy, timer)
                .with_companions(Arc::new(mappings))
                .with_decode_memo(policy.decode_memo_entries()),
            uuid_to_id,
            id_to_uuid,
            backend,
        }
    }

    /// The same caches reporting every outcome to `observer` (metrics).
    pub fn observed_by(mut self, observer: Arc<dyn CacheObserver>) -> Self {
        self.records = self.records.with_observer(observer.clone());
        self.uuid_to_id = self.uuid_to_id.with_observer(observer.clone());
        self.id_to_uuid = self.id_to_uuid.with_observer(observer);
        self
    }

    /// The namespace of every cache, for observers that resolve them once.
    pub const NAMESPACES: [&'static str; 3] = [
        <UserRecords as ports::CacheDefinition>::NAMESPACE,
        <UuidToId as ports::CacheDefinition>::NAMESPACE,
        <IdToUuid as ports::CacheDefinition>::NAMESPACE,
    ];

    /// Every cache, erased, for operators (the admin API): what each is
    /// configured with, and removing entries.
    pub fn managed(&self) -> Vec<Arc<dyn ManagedCache>> {
        vec![
            Arc::new(self.records.clone()),
            Arc::new(self.uuid_to_id.clone()),
            Arc::new(self.id_to_uuid.clone()),
        ]
    }

    /// The user record cache.
    pub fn records(&self) -> &UserRecordCache {
        &self.records
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
