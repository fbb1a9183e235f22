//! The repository contract, written once and run against every
//! `UserRepository`: SQLite, PostgreSQL (one server per test binary, a
//! database per test) and the in-memory store the unit tests use. What the
//! domain may rely on from any store of record; the SQL stores' own
//! operations (import, migrations, synthetic users) beside it.

use std::time::Duration;

use adapters::Secret;
use adapters::users::{InMemoryUserRepository, SqlStore, StoreConfig};
use domain::{
    Email, Name, NewUser, Page, RepositoryError, UserChanges, UserId, UserRepository, UserUuid,
    Version,
};
use tests::{SqliteFile, TestPostgres};

fn new_user(n: u32) -> NewUser {
    NewUser {
        first_name: Name::new("first_name", "Test").unwrap(),
        last_name: Name::new("last_name", &format!("User{n}")).unwrap(),
        email: Email::new(&format!("user{n}@example.com")).unwrap(),
    }
}

fn renamed(last: &str) -> UserChanges {
    UserChanges {
        last_name: Some(Name::new("last_name", last).unwrap()),
        ..UserChanges::default()
    }
}

/// An empty in-memory store (nothing to remove).
pub async fn memory_store() -> (InMemoryUserRepository, ()) {
    (InMemoryUserRepository::default(), ())
}

/// A store over a fresh SQLite file; the guard removes it.
pub async fn sqlite_store() -> (SqlStore, SqliteFile) {
    let file = SqliteFile::new();
    let config = StoreConfig {
        url: file.url(),
        ..StoreConfig::default()
    };
    let store = SqlStore::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    (store, file)
}

/// A store over a fresh database of the shared PostgreSQL.
pub async fn postgres_store() -> (SqlStore, ()) {
    postgres_store_with(|_| {}).await
}

/// [`postgres_store`] with its configuration changed by `change`.
pub async fn postgres_store_with(change: impl FnOnce(&mut StoreConfig)) -> (SqlStore, ()) {
    let server = TestPostgres::shared();
    let mut config = StoreConfig {
        url: server.fresh_database().await,
        password: Some(Secret::new(server.password.clone())),
        ..StoreConfig::default()
    };
    change(&mut config);
    let store = SqlStore::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    (store, ())
}

mod bodies {
    use super::*;

    pub async fn a_created_user_is_found_by_every_read<S: UserRepository + Clone>(s: S) {
        let created = s.create(new_user(1)).await.unwrap();
        assert_eq!(created.version(), Version::FIRST);
        assert_eq!(created.last_name().as_str(), "User1");
        assert_eq!(
            s.by_uuid(created.uuid()).await.unwrap(),
            Some(created.clone())
        );
        assert_eq!(s.by_id(created.id()).await.unwrap(), Some(created.clone()));
        assert_eq!(
            s.by_uuids(&[created.uuid()]).await.unwrap(),
            vec![created.clone()]
        );
        assert_eq!(s.by_ids(&[created.id()]).await.unwrap(), vec![created]);
    }

    pub async fn absence_is_none_or_shorter_never_an_error<S: UserRepository + Clone>(s: S) {
        let unknown = UserUuid::new(uuid::Uuid::new_v4());
        assert_eq!(s.by_uuid(unknown).await.unwrap(), None);
        assert_eq!(s.by_id(UserId::new(999_999).unwrap()).await.unwrap(), None);
        let known = s.create(new_user(1)).await.unwrap();
        let found = s.by_uuids(&[unknown, known.uuid()]).await.unwrap();
        assert_eq!(found, vec![known]);
        assert!(s.by_uuids(&[]).await.unwrap().is_empty());
        assert!(s.by_ids(&[]).await.unwrap().is_empty());
        assert_eq!(s.update(unknown, renamed("X"), None).await.unwrap(), None);
        assert_eq!(s.delete(unknown, None).await.unwrap(), None);
    }

    pub async fn pages_by_offset_and_by_keyset_agree<S: UserRepository + Clone>(s: S) {
        let mut ids = Vec::new();
        for n in 0..7 {
            ids.push(s.create(new_user(n)).await.unwrap().id());
        }
        let by_offset: Vec<UserId> = s
            .list(Page::new(3, 2).unwrap())
            .await
            .unwrap()
            .iter()
            .map(|u| u.id())
            .collect();
        assert_eq!(by_offset, ids[2..5].to_vec());
        let after: Vec<UserId> = s
            .list_after(Some(ids[1]), 3)
            .await
            .unwrap()
            .iter()
            .map(|u| u.id())
            .collect();
        assert_eq!(after, by_offset, "the same page either way");
        let first = s.list_after(None, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|u| u.id()).collect::<Vec<_>>(),
            ids[..2].to_vec()
        );
        assert!(s.list_after(Some(ids[6]), 10).await.unwrap().is_empty());
        assert_eq!(s.count().await.unwrap(), 7);
    }

    pub async fn each_write_raises_the_version_and_if_match_guards_it<S: UserRepository + Clone>(
        s: S,
    ) {
        let user = s.create(new_user(1)).await.unwrap();
        let changed = s
            .update(user.uuid(), renamed("Second"), Some(Version::FIRST))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(changed.version(), Version::new(2));
        assert_eq!(changed.last_name().as_str(), "Second");
        assert_eq!(
            changed.first_name(),
            user.first_name(),
            "untouched fields kept"
        );
        let stale = s
            .update(user.uuid(), renamed("Third"), Some(Version::FIRST))
            .await;
        assert_eq!(
            stale,
            Err(RepositoryError::VersionMismatch {
                current: Version::new(2)
            })
        );
        let stale_delete = s.delete(user.uuid(), Some(Version::FIRST)).await;
        assert_eq!(
            stale_delete,
            Err(RepositoryError::VersionMismatch {
                current: Version::new(2)
            })
        );
        assert_eq!(s.by_uuid(user.uuid()).await.unwrap(), Some(changed.clone()));
        let deleted = s.delete(user.uuid(), Some(Version::new(2))).await.unwrap();
        assert_eq!(deleted, Some(changed));
        assert_eq!(s.by_uuid(user.uuid()).await.unwrap(), None);
    }

    pub async fn email_addresses_are_unique<S: UserRepository + Clone>(s: S) {
        let first = s.create(new_user(1)).await.unwrap();
        let second = s.create(new_user(2)).await.unwrap();
        assert_eq!(
            s.create(new_user(1)).await,
            Err(RepositoryError::DuplicateEmail("user1@example.com".into()))
        );
        let taking = UserChanges {
            email: Some(first.email().clone()),
            ..UserChanges::default()
        };
        assert_eq!(
            s.update(second.uuid(), taking, None).await,
            Err(RepositoryError::DuplicateEmail("user1@example.com".into()))
        );
        assert_eq!(s.count().await.unwrap(), 2);
    }

    /// The seed's id mappings (`user:id-to-uuid:<id>`, the Python service's
    /// too) may outlive a delete by a racing fill: they are only harmless
    /// if no other user ever gets that id.
    pub async fn a_deleted_users_id_is_never_given_to_another<S: UserRepository + Clone>(s: S) {
        s.create(new_user(1)).await.unwrap();
        let last = s.create(new_user(2)).await.unwrap();
        s.delete(last.uuid(), None).await.unwrap().unwrap();
        let next = s.create(new_user(3)).await.unwrap();
        assert!(
            next.id() > last.id(),
            "the deleted user's id {} was given to a new user ({})",
            last.id(),
            next.id()
        );
    }

    pub async fn an_import_keeps_ids_and_uuids_and_new_users_come_after(s: SqlStore) {
        let sample = InMemoryUserRepository::sample().users();
        assert_eq!(s.import(&sample).await.unwrap(), 10);
        assert_eq!(s.import(&sample).await.unwrap(), 0, "imported once");
        let john = s.by_uuid(sample[0].uuid()).await.unwrap().unwrap();
        assert_eq!(john, sample[0]);
        let created = s.create(new_user(1)).await.unwrap();
        assert_eq!(
            created.id().get(),
            11,
            "ids continue after the imported ones"
        );
        let (first, last) = s.generate(3).await.unwrap();
        assert_eq!((first, last), (12, 14));
        let generated = s
            .by_uuid(UserUuid::new(adapters::users::synthetic_uuid(13)))
            .await
            .unwrap();
        assert_eq!(generated.map(|u| u.id().get()), Some(13));
    }

    pub async fn an_empty_import_leaves_the_first_id_at_one(s: SqlStore) {
        assert_eq!(s.import(&[]).await.unwrap(), 0);
        assert_eq!(s.create(new_user(1)).await.unwrap().id().get(), 1);
    }

    pub async fn migrations_apply_once_and_again_without_harm(s: SqlStore) {
        s.migrate().await.unwrap();
        s.migrate().await.unwrap();
        s.ping().await.unwrap();
    }

    pub async fn concurrent_conditional_writes_let_exactly_one_win<S: UserRepository + Clone>(
        s: S,
    ) {
        let uuid = s.create(new_user(1)).await.unwrap().uuid();
        let mut tasks = Vec::new();
        for n in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.update(uuid, renamed(&format!("Writer{n}")), Some(Version::FIRST))
                    .await
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Some(_)) => won += 1,
                Err(RepositoryError::VersionMismatch { current }) => {
                    assert_eq!(current, Version::new(2));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            won, 1,
            "one writer of version 1 wins, the others see version 2"
        );
    }
}

macro_rules! store_suite {
    ($name:ident, $make:expr $(, $sql:ident)?) => {
        mod $name {
            use super::*;
            store_suite!(@tests $make;
                a_created_user_is_found_by_every_read, absence_is_none_or_shorter_never_an_error,
                pages_by_offset_and_by_keyset_agree, each_write_raises_the_version_and_if_match_guards_it,
                email_addresses_are_unique, concurrent_conditional_writes_let_exactly_one_win,
                a_deleted_users_id_is_never_given_to_another);
            $(store_suite!(@$sql $make);)?
        }
    };
    // What only the SQL stores do.
    (@sql $make:expr) => {
        store_suite!(@tests $make;
            an_import_keeps_ids_and_uuids_and_new_users_come_after,
            migrations_apply_once_and_again_without_harm, an_empty_import_leaves_the_first_id_at_one);
    };
    (@tests $make:expr; $($body:ident),*) => {$(
        #[tokio::test]
        async fn $body() {
            #[allow(clippy::redundant_closure_call)]
            let (store, _guard) = ($make)().await;
            bodies::$body(store).await;
        }
    )*};
}

store_suite!(memory, memory_store);
store_suite!(sqlite, sqlite_store, sql);
store_suite!(postgres, postgres_store, sql);

/// A store over a fresh database of the shared PostgreSQL with one pooled
/// connection, opened by a first query; the store and its URL.
async fn one_connection_store(ping_idle_after: Duration) -> (SqlStore, String) {
    let server = TestPostgres::shared();
    let url = server.fresh_database().await;
    let config = StoreConfig {
        url: url.clone(),
        password: Some(Secret::new(server.password.clone())),
        max_connections: 1,
        ping_idle_after,
        ..StoreConfig::default()
    };
    let store = SqlStore::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.by_id(UserId::new(1).unwrap()).await, Ok(None));
    (store, url)
}

/// A restart, a failover or `idle_session_timeout` closes the pool's idle
/// connections: one idle past `store.ping_idle_after_ms` is pinged before
/// use, found closed and replaced, so the query still answers.
#[tokio::test]
async fn a_connection_the_database_closed_while_idle_is_replaced_before_use() {
    let (store, url) = one_connection_store(Duration::from_millis(50)).await;
    let closed = TestPostgres::shared().terminate_connections(&url).await;
    assert_eq!(closed, 1, "the pool's one connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.by_id(UserId::new(1).unwrap()).await, Ok(None));
}

/// The other side of not pinging every time: a connection used within the
/// window is trusted, so if the database closed it meanwhile its next query
/// fails once, as 503 `store_unavailable` would, and the pool replaces it.
#[tokio::test]
async fn a_connection_closed_within_the_ping_window_fails_one_query_and_is_replaced() {
    let (store, url) = one_connection_store(Duration::from_secs(3600)).await;
    let closed = TestPostgres::shared().terminate_connections(&url).await;
    assert_eq!(closed, 1, "the pool's one connection");
    let first = store.by_id(UserId::new(1).unwrap()).await;
    assert!(
        matches!(first, Err(RepositoryError::Unavailable(_))),
        "{first:?}"
    );
    assert_eq!(store.by_id(UserId::new(1).unwrap()).await, Ok(None));
}

#[tokio::test]
async fn a_database_that_does_not_answer_is_unavailable_within_the_statement_timeout() {
    let server = TestPostgres::shared();
    let (proxy, url) = server.fresh_database_behind_proxy().await;
    let config = StoreConfig {
        url,
        password: Some(Secret::new(server.password.clone())),
        statement_timeout: Duration::from_millis(300),
        ..StoreConfig::default()
    };
    let store = SqlStore::connect(&config).await.unwrap();
    store.migrate().await.unwrap();
    proxy.set_latency(Duration::from_secs(30));
    let started = std::time::Instant::now();
    let answer = store.by_id(UserId::new(1).unwrap()).await;
    let took = started.elapsed();
    assert!(
        matches!(answer, Err(RepositoryError::Unavailable(_))),
        "{answer:?}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    proxy.set_latency(Duration::ZERO);
}

/// The database stops answering under a running service over Redis.
#[tokio::test]
async fn while_the_database_does_not_answer_warm_hits_serve_and_the_rest_is_503_within_the_bound() {
    let server = TestPostgres::shared();
    let (proxy, url) = server.fresh_database_behind_proxy().await;
    let redis = tests::TestRedis::start().await;
    let app = tests::spawn_app_on_redis(
        &redis,
        &[
            ("CACHEMANAGER__STORE__URL", url.as_str()),
            ("CACHEMANAGER__STORE__PASSWORD", server.password.as_str()),
            ("CACHEMANAGER__STORE__STATEMENT_TIMEOUT_MS", "500"),
            ("CACHEMANAGER__STORE__ACQUIRE_TIMEOUT_MS", "500"),
            ("CACHEMANAGER__HEALTH__TIMEOUT_MS", "300"),
            ("CACHEMANAGER__HEALTH__SLOW_MS", "200"),
            ("CACHEMANAGER__HEALTH__DOWN_INTERVAL_MS", "100"),
            ("CACHEMANAGER__HEALTH__INTERVAL_MS", "100"),
        ],
    )
    .await;
    let warm = "/users/550e8400-e29b-41d4-a716-446655440001";
    assert_eq!(app.get(warm).await.status(), 200);
    app.fills_settled().await;
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["store"]["status"], "up", "{health}");

    proxy.set_latency(Duration::from_secs(30));
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(
            app.get(warm).await.status(),
            200,
            "a warm hit needs no database"
        );
        assert!(started.elapsed() < Duration::from_millis(300));
    }
    let started = std::time::Instant::now();
    let miss = app.get("/users/550e8400-e29b-41d4-a716-446655440002").await;
    let took = started.elapsed();
    assert_eq!(miss.status(), 503);
    let body: serde_json::Value = miss.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
    assert!(
        took < Duration::from_millis(1500),
        "a miss answered after {took:?}"
    );
    let patch = app
        .client
        .patch(format!("{}{warm}", app.address))
        .json(&serde_json::json!({"last_name": "Down"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 503);
    let mut reported = false;
    for _ in 0..50 {
        let health = app.get("/health").await;
        if health.status() == 503 {
            let body: serde_json::Value = health.json().await.unwrap();
            assert_eq!(body["store"]["status"], "down", "{body}");
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reported, "/health did not report the store down");
    assert_eq!(
        app.get("/health/ready").await.status(),
        200,
        "still ready: hits are served"
    );

    proxy.set_latency(Duration::ZERO);
    let mut recovered = false;
    for _ in 0..50 {
        if app
            .get("/users/550e8400-e29b-41d4-a716-446655440002")
            .await
            .status()
            == 200
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "misses are served again once the database answers"
    );
}

/// PostgreSQL cannot store a NUL in text, where SQLite can: such a name is
/// the client's mistake, answered 400 on every store, and never reaches the
/// database to come back as a 503 that reads as an outage.
#[tokio::test]
async fn a_control_character_in_a_field_is_400_over_postgres_and_writes_nothing() {
    let server = TestPostgres::shared();
    let url = server.fresh_database().await;
    let app = tests::spawn_app(&[
        ("CACHEMANAGER__STORE__URL", url.as_str()),
        ("CACHEMANAGER__STORE__PASSWORD", server.password.as_str()),
    ])
    .await;
    let john = "/users/550e8400-e29b-41d4-a716-446655440001";
    let before: serde_json::Value = app.get(john).await.json().await.unwrap();
    for body in [
        serde_json::json!({"first_name": "A\0da", "last_name": "L", "email": "ada@example.com"}),
        serde_json::json!({"first_name": "Ada", "last_name": "L\u{7}", "email": "ada@example.com"}),
        serde_json::json!({"first_name": "Ada", "last_name": "L", "email": "a\0da@example.com"}),
    ] {
        let created = app.post_json("/users", &body).await;
        assert_eq!(created.status(), 400, "{body}");
        let error: serde_json::Value = created.json().await.unwrap();
        assert_eq!(error["error"], "invalid_field", "{body}: {error}");
        let patched = app
            .client
            .patch(format!("{}{john}", app.address))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 400, "{body}");
    }
    let list: serde_json::Value = app.get("/users?count=true").await.json().await.unwrap();
    assert_eq!(list["total"], 10, "nothing created: {list}");
    let after: serde_json::Value = app.get(john).await.json().await.unwrap();
    assert_eq!(after, before, "nothing changed");
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["store"]["status"], "up", "{health}");
}

/// With migrations left to a deploy step, the service starts while its
/// database does not answer, and says so per request (503), not by dying.
#[tokio::test]
async fn without_migrations_at_start_the_service_starts_while_the_database_does_not_answer() {
    let server = TestPostgres::shared();
    let (proxy, url) = server.fresh_database_behind_proxy().await;
    proxy.set_latency(Duration::from_secs(30));
    let app = tests::spawn_app(&[
        ("CACHEMANAGER__STORE__URL", url.as_str()),
        ("CACHEMANAGER__STORE__PASSWORD", server.password.as_str()),
        ("CACHEMANAGER__STORE__MIGRATE", "false"),
        ("CACHEMANAGER__STORE__STATEMENT_TIMEOUT_MS", "300"),
        ("CACHEMANAGER__STORE__ACQUIRE_TIMEOUT_MS", "300"),
    ])
    .await;
    assert_eq!(app.get("/health/ready").await.status(), 200);
    let answer = app.get("/users/550e8400-e29b-41d4-a716-446655440001").await;
    assert_eq!(answer.status(), 503);
    proxy.set_latency(Duration::ZERO);
}
