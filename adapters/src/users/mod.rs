//! The users store: an in-memory repository, seeded with the seed's ten sample
//! users or loaded from a JSON file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use domain::{
    Email, Name, NewUser, Page, RepositoryError, User, UserChanges, UserId, UserRepository,
    UserUuid, Version,
};
use serde::Deserialize;
use thiserror::Error;

mod latent;
mod sql;

pub use latent::Latent;
pub use sql::{SqlStore, StoreConfig, StoreKind, StoreSetupError, synthetic_uuid};

/// Why a users file could not be loaded. Names the file and the record.
#[derive(Debug, Error)]
pub enum UserStoreError {
    /// The file could not be read.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a JSON array of users.
    #[error("users file {path} is not a JSON array of users: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The JSON error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A record breaks a rule.
    #[error("users file {path}, record {index}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The 0-based index of the record.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    id: i64,
    uuid: String,
    first_name: String,
    last_name: String,
    email: String,
}

impl UserRecord {
    fn into_user(self) -> Result<User, String> {
        Ok(User::new(
            UserId::new(self.id).map_err(|e| e.to_string())?,
            UserUuid::parse(&self.uuid).map_err(|e| e.to_string())?,
            Name::new("first_name", &self.first_name).map_err(|e| e.to_string())?,
            Name::new("last_name", &self.last_name).map_err(|e| e.to_string())?,
            Email::new(&self.email).map_err(|e| e.to_string())?,
        ))
    }
}

/// The seed's ten sample users: ids 1 to 10, UUIDs `550e8400-...-4466554400NN`.
const SAMPLE: [(&str, &str); 10] = [
    ("John", "Doe"),
    ("Jane", "Smith"),
    ("Bob", "Johnson"),
    ("Alice", "Williams"),
    ("Charlie", "Brown"),
    ("Diana", "Davis"),
    ("Edward", "Miller"),
    ("Fiona", "Wilson"),
    ("George", "Moore"),
    ("Hannah", "Taylor"),
];

/// Users held in memory, indexed by id and by UUID: for unit tests and
/// demos (the service itself runs on [`SqlStore`]). Clones share the users.
#[derive(Debug, Clone, Default)]
pub struct InMemoryUserRepository {
    state: Arc<RwLock<Users>>,
}

#[derive(Debug)]
struct Users {
    by_id: BTreeMap<UserId, User>,
    id_of: HashMap<UserUuid, UserId>,
    /// Above every id this store ever held: a deleted user's id is never
    /// given to another (as the SQL stores' sequences do).
    next_id: i64,
}

impl Default for Users {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            id_of: HashMap::new(),
            next_id: 1,
        }
    }
}

impl Users {
    fn by_uuid(&self, uuid: &UserUuid) -> Option<&User> {
        self.id_of.get(uuid).and_then(|id| self.by_id.get(id))
    }

    fn email_taken(&self, email: &Email, by_other_than: Option<UserUuid>) -> bool {
        self.by_id
            .values()
            .any(|u| u.email() == email && Some(u.uuid()) != by_other_than)
    }

    /// The user with `uuid`, checked against `expected`.
    fn current(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        let Some(user) = self.by_uuid(&uuid) else {
            return Ok(None);
        };
        match expected {
            Some(version) if version != user.version() => Err(RepositoryError::VersionMismatch {
                current: user.version(),
            }),
            _ => Ok(Some(user.clone())),
        }
    }
}

impl InMemoryUserRepository {
    /// A store holding `users`.
    ///
    /// # Errors
    /// A message naming the first duplicate id, UUID or e-mail address (each
    /// is unique in a store, so a file with two would lose a user on import).
    pub fn new(users: impl IntoIterator<Item = User>) -> Result<Self, String> {
        Self::indexed(users).map_err(|(index, reason)| format!("user {index}: {reason}"))
    }

    /// [`Self::new`], its error with the 0-based index of the user that
    /// repeats an earlier one.
    fn indexed(users: impl IntoIterator<Item = User>) -> Result<Self, (usize, String)> {
        let mut store = Users::default();
        let mut emails = std::collections::HashSet::new();
        for (index, user) in users.into_iter().enumerate() {
            if store.by_id.contains_key(&user.id()) {
                return Err((index, format!("duplicate id {}", user.id())));
            }
            if store.id_of.insert(user.uuid(), user.id()).is_some() {
                return Err((index, format!("duplicate uuid {}", user.uuid())));
            }
            if !emails.insert(user.email().as_str().to_owned()) {
                return Err((
                    index,
                    format!("duplicate e-mail address {}", user.email().as_str()),
                ));
            }
            store.next_id = store.next_id.max(user.id().get().saturating_add(1));
            store.by_id.insert(user.id(), user);
        }
        Ok(Self {
            state: Arc::new(RwLock::new(store)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Users> {
        // Writers leave the maps consistent at every step; a poisoned lock
        // still holds a usable state.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Users> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every user, ordered by id (to import them elsewhere).
    pub fn users(&self) -> Vec<User> {
        self.read().by_id.values().cloned().collect()
    }

    /// The seed's ten sample users.
    pub fn sample() -> Self {
        let users = SAMPLE
            .iter()
            .zip(1_i64..)
            .map(|((first, last), id)| UserRecord {
                id,
                uuid: format!("550e8400-e29b-41d4-a716-4466554400{id:02}"),
                first_name: (*first).to_owned(),
                last_name: (*last).to_owned(),
                email: format!(
                    "{}.{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
            });
        let users = users.filter_map(|record| record.into_user().ok());
        // The sample is constant and valid; a test checks all ten load.
        Self::new(users).unwrap_or_default()
    }

    /// Users from a JSON file: an array of
    /// `{"id", "uuid", "first_name", "last_name", "email"}`.
    ///
    /// # Errors
    /// [`UserStoreError`], naming the file and, for a bad record, its index.
    pub fn from_json_file(path: &Path) -> Result<Self, UserStoreError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UserStoreError::Read {
            path: shown.clone(),
            source,
        })?;
        let records: Vec<UserRecord> =
            serde_json::from_str(&text).map_err(|source| UserStoreError::Parse {
                path: shown.clone(),
                source,
            })?;
        let mut users = Vec::with_capacity(records.len());
        for (index, record) in records.into_iter().enumerate() {
            let user = record
                .into_user()
                .map_err(|reason| UserStoreError::Invalid {
                    path: shown.clone(),
                    index,
                    reason,
                })?;
            users.push(user);
        }
        Self::indexed(users).map_err(|(index, reason)| UserStoreError::Invalid {
            path: shown,
            index,
            reason,
        })
    }

    /// How many users the store holds.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.read().by_id.is_empty()
    }
}

#[async_trait]
impl UserRepository for InMemoryUserRepository {
    async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError> {
        Ok(self.read().by_uuid(&uuid).cloned())
    }

    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError> {
        Ok(self.read().by_id.get(&id).cloned())
    }

    async fn list(&self, page: Page) -> Result<Vec<User>, RepositoryError> {
        let offset = usize::try_from(page.offset()).unwrap_or(usize::MAX);
        let limit = usize::try_from(page.limit()).unwrap_or(usize::MAX);
        Ok(self
            .read()
            .by_id
            .values()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError> {
        let users = self.read();
        Ok(uuids
            .iter()
            .filter_map(|uuid| users.by_uuid(uuid))
            .cloned()
            .collect())
    }

    async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError> {
        let users = self.read();
        Ok(ids
            .iter()
            .filter_map(|id| users.by_id.get(id))
            .cloned()
            .collect())
    }

    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, RepositoryError> {
        let users = self.read();
        let range = match after {
            Some(id) => users
                .by_id
                .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded)),
            None => users.by_id.range(..),
        };
        Ok(range.take(limit as usize).map(|(_, u)| u.clone()).collect())
    }

    async fn count(&self) -> Result<u64, RepositoryError> {
        Ok(self.read().by_id.len() as u64)
    }

    async fn create(&self, user: NewUser) -> Result<User, RepositoryError> {
        let mut users = self.write();
        if users.email_taken(&user.email, None) {
            return Err(RepositoryError::DuplicateEmail(user.email.into_string()));
        }
        let next = users.next_id;
        let id = UserId::new(next).map_err(|e| RepositoryError::Unavailable(e.to_string()))?;
        users.next_id = next.saturating_add(1);
        let uuid = UserUuid::new(uuid::Uuid::new_v4());
        let created = User::new(id, uuid, user.first_name, user.last_name, user.email);
        users.id_of.insert(uuid, id);
        users.by_id.insert(id, created.clone());
        Ok(created)
    }

    async fn update(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        let mut users = self.write();
        let Some(user) = users.current(uuid, expected)? else {
            return Ok(None);
        };
        if let Some(email) = &changes.email
            && users.email_taken(email, Some(uuid))
        {
            return Err(RepositoryError::DuplicateEmail(email.as_str().to_owned()));
        }
        let version = Version::new(user.version().get() + 1);
        let (id, uuid, first, last, email) = user.into_parts();
        let changed = User::new(
            id,
            uuid,
            changes.first_name.unwrap_or(first),
            changes.last_name.unwrap_or(last),
            changes.email.unwrap_or(email),
        )
        .with_version(version);
        users.by_id.insert(id, changed.clone());
        Ok(Some(changed))
    }

    async fn delete(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError> {
        let mut users = self.write();
        let Some(user) = users.current(uuid, expected)? else {
            return Ok(None);
        };
        users.id_of.remove(&uuid);
        users.by_id.remove(&user.id());
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn uuid(n: u32) -> UserUuid {
        UserUuid::parse(&format!("550e8400-e29b-41d4-a716-4466554400{n:02}")).unwrap()
    }

    #[tokio::test]
    async fn the_sample_holds_the_seeds_ten_users() {
        let store = InMemoryUserRepository::sample();
        assert_eq!(store.len(), 10);
        let john = store.by_uuid(uuid(1)).await.unwrap().unwrap();
        assert_eq!((john.id().get(), john.first_name().as_str()), (1, "John"));
        assert_eq!(john.email().as_str(), "john.doe@example.com");
        let hannah = store
            .by_id(UserId::new(10).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hannah.uuid(), uuid(10));
        assert_eq!(hannah.email().as_str(), "hannah.taylor@example.com");
    }

    #[tokio::test]
    async fn list_pages_by_id() {
        let store = InMemoryUserRepository::sample();
        let page = store.list(Page::new(3, 2).unwrap()).await.unwrap();
        let ids: Vec<i64> = page.iter().map(|u| u.id().get()).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert!(
            store
                .list(Page::new(5, 100).unwrap())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn batch_reads_return_only_what_exists() {
        let store = InMemoryUserRepository::sample();
        let found = store.by_uuids(&[uuid(2), uuid(42)]).await.unwrap();
        assert_eq!(found.len(), 1);
        let ids = [UserId::new(3).unwrap(), UserId::new(99).unwrap()];
        assert_eq!(store.by_ids(&ids).await.unwrap().len(), 1);
    }

    fn file_with(text: &str) -> tempfile_lite::TempFile {
        tempfile_lite::TempFile::with(text)
    }

    #[test]
    fn a_json_file_loads_its_users() {
        let file = file_with(
            r#"[{"id": 7, "uuid": "00000000-0000-4000-8000-000000000007",
                 "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org"}]"#,
        );
        let store = InMemoryUserRepository::from_json_file(file.path()).unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_bad_file_is_a_clear_error_naming_file_and_record() {
        let missing = InMemoryUserRepository::from_json_file(Path::new("/nonexistent/users.json"));
        assert!(matches!(missing, Err(UserStoreError::Read { .. })));

        let not_json = file_with("{ nope");
        let error = InMemoryUserRepository::from_json_file(not_json.path()).unwrap_err();
        assert!(matches!(error, UserStoreError::Parse { .. }), "{error}");

        let bad_email = file_with(
            r#"[{"id": 1, "uuid": "00000000-0000-4000-8000-000000000001",
                 "first_name": "A", "last_name": "B", "email": "not-an-email"}]"#,
        );
        let error = InMemoryUserRepository::from_json_file(bad_email.path()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("record 0") && text.contains("e-mail"),
            "{text}"
        );

        // A record that repeats an earlier one is named by its own index.
        // A second address, imported as it was, would be skipped as "there
        // already".
        let first = r#"{"id": 1, "uuid": "00000000-0000-4000-8000-000000000001", "first_name": "A", "last_name": "B", "email": "a@b.co"}"#;
        for (second, expected) in [
            (
                r#"{"id": 1, "uuid": "00000000-0000-4000-8000-000000000002", "first_name": "C", "last_name": "D", "email": "c@d.co"}"#,
                "record 1: duplicate id 1",
            ),
            (
                r#"{"id": 2, "uuid": "00000000-0000-4000-8000-000000000002", "first_name": "C", "last_name": "D", "email": "a@b.co"}"#,
                "record 1: duplicate e-mail address a@b.co",
            ),
        ] {
            let file = file_with(&format!("[{first}, {second}]"));
            let error = InMemoryUserRepository::from_json_file(file.path()).unwrap_err();
            assert!(error.to_string().contains(expected), "{expected}: {error}");
        }
    }

    /// A file in the temp dir, removed on drop (no extra dependency needed).
    mod tempfile_lite {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        static NEXT: AtomicU32 = AtomicU32::new(0);

        pub struct TempFile(PathBuf);
        impl TempFile {
            pub fn with(text: &str) -> Self {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("cm-users-{}-{n}.json", std::process::id()));
                let mut file = std::fs::File::create(&path).unwrap();
                super::Write::write_all(&mut file, text.as_bytes()).unwrap();
                Self(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
