//! The seed's two user caches, byte-compatible with the Python original:
//! `user:uuid-to-id:{uuid} -> "42"` and `user:id-to-uuid:42 -> "{uuid}"`.

use ports::{CacheDefinition, TextCodec, Ttl, TypedCache};

use crate::user::{UserId, UserUuid};

/// Maps a user's UUID to its numeric id.
pub struct UuidToId;

impl CacheDefinition for UuidToId {
    type Key = UserUuid;
    type Value = UserId;
    type Codec = TextCodec;
    const NAMESPACE: &'static str = "user:uuid-to-id";
    const DEFAULT_TTL: Ttl = Ttl::from_secs(600);
}

/// Maps a user's numeric id to its UUID.
pub struct IdToUuid;

impl CacheDefinition for IdToUuid {
    type Key = UserId;
    type Value = UserUuid;
    type Codec = TextCodec;
    const NAMESPACE: &'static str = "user:id-to-uuid";
    const DEFAULT_TTL: Ttl = Ttl::from_secs(600);
}

/// The uuid-to-id cache.
pub type UuidToIdCache = TypedCache<UuidToId>;
/// The id-to-uuid cache.
pub type IdToUuidCache = TypedCache<IdToUuid>;
