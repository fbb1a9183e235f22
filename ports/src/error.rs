//! Errors of the cache core: what a backend reports, what a codec reports,
//! and the few errors a typed cache lets reach its caller.

use std::time::Duration;

use thiserror::Error;

/// A failure of the storage behind a cache. Typed caches log these and turn
/// them into misses and no-ops ("cache is a luxury"); decorators such as the
/// timeout and, later, the circuit breaker count them.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BackendError {
    /// The backend could not be reached (connection refused, dropped, DNS),
    /// or answered that it cannot serve at all right now (for Redis:
    /// `LOADING`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`).
    #[error("cache backend unavailable: {0}")]
    Unavailable(String),
    /// The backend refused our credentials. Never carries the secret.
    #[error("cache backend refused authentication: {0}")]
    Unauthorized(String),
    /// The operation did not complete within its bound.
    #[error("cache operation timed out after {0:?}")]
    Timeout(Duration),
    /// The key holds a value of another kind than the backend's plain
    /// values (for Redis: a list or a hash where a string belongs, `WRONGTYPE`).
    #[error("cache key holds the wrong kind of value: {0}")]
    WrongType(String),
    /// A circuit breaker is open: the backend has been failing, so it was not
    /// tried. Returned at once; the breaker logs its transitions, not each call.
    #[error("cache backend not tried: circuit open")]
    CircuitOpen,
    /// The backend answered, but refused this command while it keeps serving
    /// others (for Redis: `OOM` refuses writes while reads work, `READONLY` on a
    /// replica, `NOPERM` for what an ACL user may not do, `NOSCRIPT`, `ERR`).
    #[error("cache backend rejected the command: {0}")]
    Rejected(String),
    /// Anything else the driver reported.
    #[error("cache backend error: {0}")]
    Unknown(String),
}

/// A value that could not be turned into bytes, or bytes that could not be
/// read back as a value.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// The stored bytes are not a valid value of the expected type.
    #[error("cannot decode stored value: {0}")]
    Decode(String),
}

/// The errors a typed cache returns to its caller. Backend failures are never
/// among them: those are logged and swallowed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CacheError {
    /// A batch operation was given more entries than allowed.
    #[error(
        "batch of {requested} entries exceeds the maximum of {max}; split it into batches of at most {max} entries"
    )]
    BatchTooLarge {
        /// How many entries the caller passed.
        requested: usize,
        /// The most a single batch may hold.
        max: usize,
    },
    /// An encoded value is larger than the cache accepts; it is not stored.
    #[error(
        "value of {size} bytes for cache '{namespace}' exceeds the limit of {max} bytes; it was not stored"
    )]
    ValueTooLarge {
        /// The namespace of the cache that was written.
        namespace: &'static str,
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A value could not be encoded for the cache `namespace`: a bug or bad
    /// data on the caller's side, which the caller must handle.
    #[error("cannot serialize a value for cache '{namespace}': {source}")]
    Serialization {
        /// The namespace of the cache that was written.
        namespace: &'static str,
        /// What the codec reported.
        #[source]
        source: CodecError,
    },
}

impl BackendError {
    /// How many kinds of error there are (see [`BackendError::kind_index`]).
    pub const KINDS: usize = 7;

    /// A distinct index in `0..KINDS` for each variant, e.g. to rate-limit
    /// logs per kind.
    pub fn kind_index(&self) -> usize {
        match self {
            Self::Unavailable(_) => 0,
            Self::Unauthorized(_) => 1,
            Self::Timeout(_) => 2,
            Self::WrongType(_) => 3,
            Self::CircuitOpen => 4,
            Self::Rejected(_) => 5,
            Self::Unknown(_) => 6,
        }
    }

    /// Whether this error says the backend itself is unwell (unreachable,
    /// slow, refusing us), as opposed to one command or one key being wrong.
    /// Circuit breakers count only these. A refused command ([`Self::Rejected`])
    /// does not count: under `OOM` reads keep working, so opening the circuit
    /// would throw away every hit for nothing.
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Unauthorized(_) | Self::Timeout(_) | Self::Unknown(_)
        )
    }
}
