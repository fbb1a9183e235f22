//! Several instances over one Redis and one PostgreSQL, behind a load
//! balancer (HAProxy, `tests::TestBalancer`): what one instance writes,
//! every other instance and the balancer read at once. Its rolling restart
//! under load is an outage test (`outage::a_rolling_restart_...`).

use serde_json::{Value, json};
use tests::{TestApp, TestBalancer, TestPostgres, TestRedis, spawn_app_on_redis};

#[tokio::test]
async fn writes_through_one_of_three_instances_are_read_through_the_others_and_the_balancer() {
    let redis = TestRedis::start().await;
    let server = TestPostgres::shared();
    let url = server.fresh_database().await;
    let vars = [
        ("CACHEMANAGER__STORE__URL", url.as_str()),
        ("CACHEMANAGER__STORE__PASSWORD", server.password.as_str()),
    ];
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(spawn_app_on_redis(&redis, &vars).await);
    }
    let ports: Vec<u16> = instances
        .iter()
        .map(|i| {
            i.address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap()
        })
        .collect();
    let balancer = TestBalancer::start(&ports).await;
    balancer.wait_all_up().await;
    let through = TestApp::at(&balancer.address);
    let readers = |writer: usize| {
        let mut readers: Vec<&TestApp> = (0..3)
            .filter(|&i| i != writer)
            .map(|i| &instances[i])
            .collect();
        // Round robin over three: three reads reach every instance.
        readers.extend([&through, &through, &through]);
        readers
    };

    let created = instances[0]
        .post_json(
            "/users",
            &json!({"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.com"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    for reader in readers(0) {
        let read = reader.get(&location).await;
        assert_eq!(read.status(), 200, "created through instance 0");
    }

    // Every instance has read (and cached) version 1: a change through
    // instance 1 is what all of them answer next.
    let patched = instances[1]
        .client
        .patch(format!("{}{location}", instances[1].address))
        .json(&json!({"last_name": "Murray"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    for reader in readers(1) {
        let seen: Value = reader.get(&location).await.json().await.unwrap();
        assert_eq!(seen["last_name"], "Murray", "changed through instance 1");
    }

    let deleted = instances[2]
        .client
        .delete(format!("{}{location}", instances[2].address))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    for reader in readers(2) {
        assert_eq!(
            reader.get(&location).await.status(),
            404,
            "deleted through instance 2"
        );
    }
}
