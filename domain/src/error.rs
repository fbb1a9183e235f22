//! Errors of the user domain.

use thiserror::Error;

use crate::user::{UserId, UserUuid, Version};

/// A value that does not satisfy a domain rule.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ValidationError {
    /// A user id must be a positive integer.
    #[error("user id must be a positive integer, got {0}")]
    NonPositiveId(i64),
    /// Not a UUID.
    #[error("'{0}' is not a valid UUID")]
    MalformedUuid(String),
    /// A name must be 1 to 100 characters, not blank, with no control
    /// characters (inside its trimmed text).
    #[error("{field} must be 1 to 100 characters, not blank, with no control characters")]
    BadName {
        /// Which name field.
        field: &'static str,
    },
    /// An e-mail address must look like `local@domain`.
    #[error("'{0}' is not a valid e-mail address")]
    BadEmail(String),
    /// A page must have a limit of 1 to [`crate::Page::MAX_LIMIT`].
    #[error("limit must be between 1 and {max}, got {got}")]
    BadLimit {
        /// What was asked.
        got: u32,
        /// The largest accepted limit.
        max: u32,
    },
}

/// A failure of the store behind [`crate::UserRepository`].
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RepositoryError {
    /// The store could not be reached, failed, or did not answer in time.
    #[error("user store unavailable: {0}")]
    Unavailable(String),
    /// Another user has this e-mail address.
    #[error("another user has the e-mail address {0}")]
    DuplicateEmail(String),
    /// A conditional write found the user at another version.
    #[error("the user is at version {current}, not the version expected")]
    VersionMismatch {
        /// The version the store holds.
        current: Version,
    },
}

/// What a [`crate::UserQueries`] call can fail with.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum UserError {
    /// No user has this UUID.
    #[error("no user with uuid {0}")]
    NotFoundByUuid(UserUuid),
    /// No user has this id.
    #[error("no user with id {0}")]
    NotFoundById(UserId),
    /// A lookup asked for more users than one request may.
    #[error(
        "a lookup takes at most {max} uuids, got {requested}; split it into batches of at most {max}"
    )]
    TooManyUuids {
        /// How many were asked for.
        requested: usize,
        /// The most allowed.
        max: usize,
    },
    /// The request was invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Another user has this e-mail address.
    #[error("another user has the e-mail address {0}")]
    DuplicateEmail(String),
    /// The write was conditional on a version the user is no longer at.
    #[error("the user is at version {current}; fetch it again and retry")]
    VersionMismatch {
        /// The version the store holds.
        current: Version,
    },
    /// The user store failed; the cache cannot stand in for it.
    #[error("user store unavailable: {0}")]
    StoreUnavailable(String),
}

impl From<RepositoryError> for UserError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Unavailable(reason) => UserError::StoreUnavailable(reason),
            RepositoryError::DuplicateEmail(email) => UserError::DuplicateEmail(email),
            RepositoryError::VersionMismatch { current } => UserError::VersionMismatch { current },
        }
    }
}
