//! The user caches: the seed's two, byte-compatible with the Python original
//! (`user:uuid-to-id:{uuid} -> "42"` and `user:id-to-uuid:42 -> "{uuid}"`),
//! and the user record by uuid, ours alone.

use ports::{CacheDefinition, JsonCodec, TextCodec, Ttl, TypedCache};

use crate::user::{User, UserId, UserUuid};

/// The whole user record by uuid: a warm hit costs one cache round trip and
/// no store query. A namespace of its own (`user:record:{uuid}`), which the
/// Python service never reads. Unknown uuids are remembered for 30 s in this
/// process (negative caching), so a flood of them stops reaching the store.
/// Being ours alone, its keys may be grouped in hash-tag buckets on a Redis
/// Cluster (`user:record:{<b>}:<uuid>`), so a lookup of 100 users is a few
/// `MGET`s, not one per user.
pub struct UserRecords;

impl CacheDefinition for UserRecords {
    type Key = UserUuid;
    type Value = User;
    type Codec = JsonCodec;
    const NAMESPACE: &'static str = "user:record";
    const DEFAULT_TTL: Ttl = Ttl::from_secs(600);
    const NEGATIVE_TTL: Option<Ttl> = Some(Ttl::from_secs(30));
    const KEY_BUCKETS: bool = true;
}

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

/// The user record cache.
pub type UserRecordCache = TypedCache<UserRecords>;
/// The uuid-to-id cache.
pub type UuidToIdCache = TypedCache<UuidToId>;
/// The id-to-uuid cache.
pub type IdToUuidCache = TypedCache<IdToUuid>;
