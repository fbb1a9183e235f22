//! The user ports: where users come from, and what may be asked of the domain.

use async_trait::async_trait;

use crate::error::{RepositoryError, UserError};
use crate::service::Lookup;
use crate::user::{Page, User, UserId, UserUuid};

/// The store of record for users (a database in production; a file or the
/// sample set here).
///
/// Boxed futures (`async_trait`) so the store can be picked at start-up and
/// mocked with mockall.
///
/// # Contract
/// - Absence is `Ok(None)` or a shorter `Vec`, never an error.
/// - `by_uuids`/`by_ids` return each found user once, in any order.
/// - Errors mean the store itself failed.
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
    /// Up to [`crate::MAX_LOOKUP`] users by UUID; duplicates are answered once.
    /// More is [`UserError::TooManyUuids`].
    async fn lookup(&self, uuids: &[UserUuid]) -> Result<Lookup, UserError>;
}
