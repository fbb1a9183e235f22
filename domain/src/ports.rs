//! The user ports: where users come from, and what may be asked of the domain.

use async_trait::async_trait;

use crate::error::{RepositoryError, UserError};
use crate::service::Lookup;
use crate::user::{NewUser, Page, User, UserChanges, UserId, UserUuid, Version};

/// The store of record for users (a database in production; a file or the
/// sample set here).
///
/// Boxed futures (`async_trait`) so the store can be picked at start-up and
/// mocked with mockall.
///
/// # Contract (every implementation, checked by the contract suite in `tests`)
/// - Absence is `Ok(None)` or a shorter `Vec`, never an error.
/// - `by_uuids`/`by_ids` return each found user once, in any order.
/// - A write is committed when it returns `Ok`; each write of a user raises
///   its [`Version`] by one, and `expected` makes it conditional on the
///   version the store holds ([`RepositoryError::VersionMismatch`] if not).
/// - E-mail addresses are unique: [`RepositoryError::DuplicateEmail`].
/// - Ids are never reused: a deleted user's id is never given to another,
///   so a seed id mapping a racing fill put back after a delete points at
///   that user or at nothing, never at someone else.
/// - [`RepositoryError::Unavailable`] means the store itself failed or did
///   not answer within its bound; nothing is known to have been written.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    /// The user with this UUID.
    async fn by_uuid(&self, uuid: UserUuid) -> Result<Option<User>, RepositoryError>;
    /// The user with this id.
    async fn by_id(&self, id: UserId) -> Result<Option<User>, RepositoryError>;
    /// Users ordered by id, `page.limit()` of them from `page.offset()`.
    async fn list(&self, page: Page) -> Result<Vec<User>, RepositoryError>;
    /// The users among `uuids` that exist, in one call.
    async fn by_uuids(&self, uuids: &[UserUuid]) -> Result<Vec<User>, RepositoryError>;
    /// The users among `ids` that exist, in one call.
    async fn by_ids(&self, ids: &[UserId]) -> Result<Vec<User>, RepositoryError>;
    /// Up to `limit` users with an id above `after` (from the first without
    /// it), ordered by id: a keyset page, as cheap deep in the table as at
    /// its start.
    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, RepositoryError>;
    /// How many users there are.
    async fn count(&self) -> Result<u64, RepositoryError>;
    /// Creates a user with a new id and uuid, at [`Version::FIRST`].
    async fn create(&self, user: NewUser) -> Result<User, RepositoryError>;
    /// Applies `changes` to the user with `uuid` (if at `expected`, when
    /// given); the user as written, or `None` when there is no such user.
    async fn update(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError>;
    /// Deletes the user with `uuid` (if at `expected`, when given); the user
    /// as it was, or `None` when there is no such user.
    async fn delete(
        &self,
        uuid: UserUuid,
        expected: Option<Version>,
    ) -> Result<Option<User>, RepositoryError>;
}

/// What the inbound adapters (HTTP) may ask of the user domain.
///
/// Boxed futures (`async_trait`) so the HTTP adapter can be tested against a mock.
///
/// # Contract
/// A cache failure never makes a call fail: only the store's failures and the
/// caller's own mistakes do.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserQueries: Send + Sync + 'static {
    /// The user with this UUID, or [`UserError::NotFoundByUuid`].
    async fn user_by_uuid(&self, uuid: UserUuid) -> Result<User, UserError>;
    /// The user with this id, or [`UserError::NotFoundById`].
    async fn user_by_id(&self, id: UserId) -> Result<User, UserError>;
    /// A page of users ordered by id.
    async fn list_users(&self, page: Page) -> Result<Vec<User>, UserError>;
    /// Up to `limit` users after the one with id `after`, ordered by id.
    async fn list_users_after(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, UserError>;
    /// How many users there are.
    async fn count_users(&self) -> Result<u64, UserError>;
    /// Up to [`crate::MAX_LOOKUP`] users by UUID; duplicates are answered once.
    /// More is [`UserError::TooManyUuids`].
    async fn lookup(&self, uuids: &[UserUuid]) -> Result<Lookup, UserError>;
}

/// The writes the inbound adapters (HTTP) may ask of the user domain.
///
/// # Contract
/// When a call returns, the write is committed and no later read, on this
/// instance or another sharing the cache, is answered with the user as it
/// was before (see docs/ARCHITECTURE.md, "Writes and the caches").
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserCommands: Send + Sync + 'static {
    /// Creates a user; [`UserError::DuplicateEmail`] if its address is taken.
    async fn create_user(&self, user: NewUser) -> Result<User, UserError>;
    /// Changes a user (only if at `if_match`, when given): the user as
    /// written, [`UserError::NotFoundByUuid`], [`UserError::VersionMismatch`]
    /// or [`UserError::DuplicateEmail`]. No changes at all: the user as it
    /// is (still checked against `if_match`).
    async fn update_user(
        &self,
        uuid: UserUuid,
        changes: UserChanges,
        if_match: Option<Version>,
    ) -> Result<User, UserError>;
    /// Deletes a user (only if at `if_match`, when given), or
    /// [`UserError::NotFoundByUuid`] / [`UserError::VersionMismatch`].
    async fn delete_user(&self, uuid: UserUuid, if_match: Option<Version>)
    -> Result<(), UserError>;
}
