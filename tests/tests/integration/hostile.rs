//! Bad data in the cache, against a real Redis: every kind is invalidated and
//! the request still answers correctly.

use std::time::Duration;

use domain::{IdToUuid, UserId, UuidToId};
use ports::{CacheError, TypedCache};
use redis::AsyncCommands;
use serde_json::Value;
use tests::{TestRedis, spawn_app_on_redis};

const JOHN: &str = "550e8400-e29b-41d4-a716-446655440001";
const JOHN_RECORD: &str = "user:record:550e8400-e29b-41d4-a716-446655440001";
const JOHN_KEY: &str = "user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001";

/// Puts `garbage` where John's id belongs, asks the service for John, and
/// checks the answer is right and the garbage is gone (replaced by the truth).
async fn survives(
    redis: &TestRedis,
    app: &tests::TestApp,
    label: &str,
    plant: impl AsyncFnOnce(&mut redis::aio::MultiplexedConnection),
) {
    let mut raw = redis.raw().await;
    // A cold record, so that the request reads the planted mapping.
    let _: () = raw.del(&[JOHN_KEY, JOHN_RECORD][..]).await.unwrap();
    plant(&mut raw).await;
    let response = app.get(&format!("/users/{JOHN}")).await;
    assert_eq!(response.status(), 200, "{label}");
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "john.doe@example.com", "{label}");
    app.fills_settled().await;
    let kind: String = redis::cmd("TYPE")
        .arg(JOHN_KEY)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(kind, "string", "{label}: the bad value is still there");
    let value: String = raw.get(JOHN_KEY).await.unwrap();
    assert_eq!(value, "1", "{label}: the mapping was not repaired");
}

#[tokio::test]
async fn every_kind_of_bad_value_is_invalidated_and_the_answer_stays_right() {
    let redis = TestRedis::start().await;
    let app = spawn_app_on_redis(&redis, &[]).await;

    let random: Vec<u8> = (0..=255u8).rev().cycle().take(4096).collect();
    survives(&redis, &app, "random bytes", async |raw| {
        let _: () = raw.set(JOHN_KEY, random.as_slice()).await.unwrap();
    })
    .await;
    survives(&redis, &app, "invalid UTF-8", async |raw| {
        let _: () = raw.set(JOHN_KEY, &b"\xff\xfe\xfd"[..]).await.unwrap();
    })
    .await;
    survives(&redis, &app, "a uuid where an id belongs", async |raw| {
        let _: () = raw.set(JOHN_KEY, JOHN).await.unwrap();
    })
    .await;
    survives(&redis, &app, "an empty value", async |raw| {
        let _: () = raw.set(JOHN_KEY, "").await.unwrap();
    })
    .await;
    survives(&redis, &app, "a negative id", async |raw| {
        let _: () = raw.set(JOHN_KEY, "-1").await.unwrap();
    })
    .await;
    survives(&redis, &app, "10 MB of garbage", async |raw| {
        let _: () = raw
            .set(JOHN_KEY, vec![b'7'; 10 * 1024 * 1024])
            .await
            .unwrap();
    })
    .await;
    survives(&redis, &app, "a list (WRONGTYPE)", async |raw| {
        let _: () = raw.rpush(JOHN_KEY, "1").await.unwrap();
    })
    .await;
    survives(&redis, &app, "a hash (WRONGTYPE)", async |raw| {
        let _: () = raw.hset(JOHN_KEY, "id", "1").await.unwrap();
    })
    .await;
    survives(
        &redis,
        &app,
        "a stale mapping to another user",
        async |raw| {
            let _: () = raw.set(JOHN_KEY, "7").await.unwrap();
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_wrongly_typed_key_read_by_a_typed_cache_is_removed() {
    let redis = TestRedis::start().await;
    let backend = redis.shared_backend(Duration::from_millis(500)).await;
    let id_to_uuid: TypedCache<IdToUuid> = TypedCache::new(backend);
    let mut raw = redis.raw().await;
    let _: () = raw.rpush("user:id-to-uuid:3", "x").await.unwrap();
    let _: () = raw.set("user:id-to-uuid:4", "42").await.unwrap();
    assert_eq!(id_to_uuid.get(&UserId::new(3).unwrap()).await, None);
    assert_eq!(
        id_to_uuid.get(&UserId::new(4).unwrap()).await,
        None,
        "a number where a uuid belongs"
    );
    let left: i64 = raw
        .exists(&["user:id-to-uuid:3", "user:id-to-uuid:4"])
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_value_over_the_size_limit_is_refused_and_not_stored() {
    let redis = TestRedis::start().await;
    let backend = redis.shared_backend(Duration::from_millis(500)).await;
    let uuid_to_id: TypedCache<UuidToId> = TypedCache::new(backend).with_max_value_bytes(1);
    let uuid = domain::UserUuid::parse(JOHN).unwrap();
    let error = uuid_to_id
        .set(&uuid, &UserId::new(42).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CacheError::ValueTooLarge {
                size: 2,
                max: 1,
                ..
            }
        ),
        "{error:?}"
    );
    let mut raw = redis.raw().await;
    let exists: i64 = raw.exists(JOHN_KEY).await.unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn string_keys_cannot_reach_outside_their_namespace_in_redis() {
    struct Notes;
    impl ports::CacheDefinition for Notes {
        type Key = String;
        type Value = String;
        type Codec = ports::TextCodec;
        const NAMESPACE: &'static str = "notes";
    }
    let redis = TestRedis::start().await;
    let backend = redis.shared_backend(Duration::from_millis(500)).await;
    let notes: TypedCache<Notes> = TypedCache::new(backend);
    let mut raw = redis.raw().await;
    let _: () = raw.set("user:uuid-to-id:x", "victim").await.unwrap();

    for hostile in ["x:../user:uuid-to-id:x", "*", "a b\nc", "{tag}", "%3A"] {
        notes
            .set(&hostile.to_owned(), &"note".to_owned())
            .await
            .unwrap();
        assert_eq!(
            notes.get(&hostile.to_owned()).await.as_deref(),
            Some("note"),
            "{hostile:?}"
        );
    }
    let mut keys: Vec<String> = raw.keys("*").await.unwrap();
    keys.sort();
    assert!(
        keys.iter()
            .filter(|k| *k != "user:uuid-to-id:x")
            .all(|k| k.starts_with("notes:") && k.matches(':').count() == 1),
        "{keys:?}"
    );
    let victim: String = raw.get("user:uuid-to-id:x").await.unwrap();
    assert_eq!(victim, "victim");
}
