//! The service over a Redis Cluster (3 masters, 3 replicas; one per test
//! binary): the same answers as over one server, by configuration only, and
//! batches that cost one round trip per node, counted by each node.

use serde_json::json;
use tests::{TestCluster, spawn_app};

/// The seed's sample users (the store is filled with them on first start).
const SAMPLE: [&str; 3] = [
    "550e8400-e29b-41d4-a716-446655440001",
    "550e8400-e29b-41d4-a716-446655440002",
    "550e8400-e29b-41d4-a716-446655440003",
];

async fn service(cluster: &TestCluster) -> tests::TestApp {
    let nodes = cluster.config().nodes.join(",");
    spawn_app(&[
        ("CACHEMANAGER__CACHE__BACKEND", "redis"),
        ("CACHEMANAGER__REDIS__MODE", "cluster"),
        ("CACHEMANAGER__REDIS__NODES", nodes.as_str()),
        ("REDIS_PASSWORD", cluster.password.as_str()),
    ])
    .await
}

/// A counter of `INFO` on every node (all answer here), per node.
async fn per_node(cluster: &TestCluster, section: &str, field: &str) -> Vec<u64> {
    let counts = cluster.counters(section, field).await;
    counts
        .into_iter()
        .map(|n| n.expect("every node answers"))
        .collect()
}

#[tokio::test]
async fn the_service_answers_from_a_cluster_as_from_one_server() {
    let cluster = TestCluster::shared();
    let app = service(cluster).await;
    let before: u64 = per_node(cluster, "stats", "keyspace_hits")
        .await
        .iter()
        .sum();
    for _ in 0..3 {
        for uuid in SAMPLE {
            let response = app.get(&format!("/users/{uuid}")).await;
            assert_eq!(response.status(), 200);
        }
    }
    let after: u64 = per_node(cluster, "stats", "keyspace_hits")
        .await
        .iter()
        .sum();
    assert!(
        after >= before + 6,
        "the second and third reads of each user were cluster hits ({before} -> {after})"
    );
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["cache"]["status"], "up", "{health}");
}

/// Redis refuses an `MGET` across slots (`CROSSSLOT`), even on one node, so
/// a lookup's batch is one `MGET` per slot its keys fall in: the driver sends
/// each to the node that owns the slot, all at once (one round trip per node,
/// pipelined on that node's connection). Counted by the nodes: exactly one
/// `MGET` per distinct slot, on the master that owns it, and nothing more
/// (no retry, no redirect, nothing on replicas).
#[tokio::test]
async fn a_lookup_costs_one_mget_per_slot_on_the_owning_master_and_nothing_more() {
    let cluster = TestCluster::shared();
    let app = service(cluster).await;
    let uuids: Vec<String> = (1..=10)
        .map(|n| format!("550e8400-e29b-41d4-a716-4466554400{n:02}"))
        .collect();
    let body = json!({ "uuids": uuids });
    // Warm: every user cached.
    let warm = app.post_json("/users/lookup", &body).await;
    assert_eq!(warm.status(), 200);
    // Which node should serve which keys: the slot of each record key, and
    // the node that owns it.
    let mut node = cluster.node(0).await;
    let mut slots = std::collections::BTreeSet::new();
    for uuid in &uuids {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("user:record:{uuid}"))
            .query_async(&mut node)
            .await
            .unwrap();
        slots.insert(slot);
    }
    let before = per_node(cluster, "commandstats", "cmdstat_mget").await;
    let answer = app.post_json("/users/lookup", &body).await;
    assert_eq!(answer.status(), 200);
    let after = per_node(cluster, "commandstats", "cmdstat_mget").await;
    let calls: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!(
        "a lookup of 10 cached users: MGET calls per node {calls:?}, {} distinct slots",
        slots.len()
    );
    assert_eq!(
        calls.iter().sum::<u64>(),
        slots.len() as u64,
        "one MGET per slot, no retry: {calls:?}"
    );
    for (index, &count) in calls.iter().enumerate() {
        let mut node = cluster.node(index).await;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut node).await.unwrap();
        let master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
        if !master {
            assert_eq!(count, 0, "a replica served an MGET");
        }
    }
}
