//! # domain — users and their read-through flows
//!
//! - [`User`] and its validated parts ([`UserId`], [`UserUuid`], [`Name`], [`Email`]).
//! - The user ports: [`UserRepository`] (outbound: where users live),
//!   [`UserQueries`] and [`UserCommands`] (inbound: what the HTTP adapter may
//!   ask and change).
//! - The caches: the user record ([`UserRecords`]), and the seed's two
//!   mappings ([`UuidToId`], [`IdToUuid`]), byte-compatible with the Python
//!   original's Redis keys and values.
//! - [`CacheManager`]: built once at start-up, holds the backend and the caches.
//! - [`UserService`]: the read-through flows and the writes that keep the
//!   caches coherent, generic over the repository.

mod caches;
mod error;
mod manager;
mod ports;
mod service;
mod user;

pub use caches::{IdToUuid, IdToUuidCache, UserRecordCache, UserRecords, UuidToId, UuidToIdCache};
pub use error::{RepositoryError, UserError, ValidationError};
pub use manager::CacheManager;
#[cfg(any(test, feature = "mocks"))]
pub use ports::{MockUserCommands, MockUserQueries, MockUserRepository};
pub use ports::{UserCommands, UserQueries, UserRepository};
pub use service::{Lookup, MAX_LOOKUP, UserService};
pub use user::{Email, Name, NewUser, Page, User, UserChanges, UserId, UserUuid, Version};
