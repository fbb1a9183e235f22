//! One Redis Cluster per test binary: three masters and three replicas, each
//! node a container of the local Redis image on the host's network (so the
//! addresses the nodes announce, `127.0.0.1:<port>`, are the ones the test
//! process reaches), made into a cluster with `redis-cli --cluster create`.
//!
//! Started on first use by a thread of its own that holds the containers for
//! the life of the process (each `#[tokio::test]` has its own runtime), with
//! the [`crate::PID_LABEL`] so a later run, and `cargo xtask ci`, remove them.
//! Handed out once every node sees the whole cluster and every replica is in
//! sync with its master (so a failover test can promote one at once).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use adapters::Secret;
use adapters::backend::{RedisConfig, RedisMode};
use testcontainers::core::{ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::{PID_LABEL, free_port, redis_image};

/// Nodes: three masters, each with one replica.
pub const NODES: usize = 6;

/// The shared cluster: its nodes' ports and the password of every node.
#[derive(Debug, Clone)]
pub struct TestCluster {
    /// Client ports of the nodes on 127.0.0.1.
    pub ports: Vec<u16>,
    /// `requirepass` (and `masterauth`) of every node.
    pub password: String,
    /// The nodes' container ids, in the order of `ports` (to stop one).
    pub containers: Vec<String>,
}

impl TestCluster {
    /// The cluster of this test binary, started on first use.
    ///
    /// # Panics
    /// With one line saying why, when the cluster cannot be made.
    pub fn shared() -> &'static TestCluster {
        static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
        let cluster = CLUSTER.get_or_init(|| {
            crate::postgres::remove_orphans();
            crate::hold_for_process("the Redis Cluster", start)
        });
        match cluster {
            Ok(cluster) => cluster,
            Err(message) => panic!("{message}"),
        }
    }

    /// Backend settings for this cluster (seed nodes: all of them).
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            mode: RedisMode::Cluster,
            nodes: self
                .ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
            password: Some(Secret::new(self.password.clone())),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        }
    }

    /// A counter of `INFO <section>` on each node, in the order of `ports`:
    /// `field` is `keyspace_hits` (`keyspace_hits:N`) or a command's stats
    /// (`cmdstat_mget`: its `calls=N`); absent from a node's answer, 0;
    /// `None` for a node that does not answer (stopped).
    pub async fn counters(&self, section: &str, field: &str) -> Vec<Option<u64>> {
        let mut counts = Vec::new();
        for port in &self.ports {
            let url = format!("redis://:{}@127.0.0.1:{port}", self.password);
            let info = async {
                let client = redis::Client::open(url).ok()?;
                let mut node = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("INFO")
                    .arg(section)
                    .query_async::<String>(&mut node)
                    .await
                    .ok()
            };
            let info = tokio::time::timeout(Duration::from_secs(1), info)
                .await
                .ok()
                .flatten();
            counts.push(info.map(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix(field))
                    .and_then(|rest| {
                        let rest = rest.trim_start_matches(':').trim_start_matches("calls=");
                        rest.split(',').next()?.trim().parse().ok()
                    })
                    .unwrap_or(0)
            }));
        }
        counts
    }

    /// A raw connection to one node.
    pub async fn node(&self, index: usize) -> redis::aio::MultiplexedConnection {
        let url = format!("redis://:{}@127.0.0.1:{}", self.password, self.ports[index]);
        let client = redis::Client::open(url).expect("a valid node URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to a cluster node")
    }
}

async fn start() -> Result<(TestCluster, Vec<ContainerAsync<GenericImage>>), String> {
    let (name, tag) = redis_image();
    let password = format!("cluster-pw-{}", uuid::Uuid::new_v4().simple());
    let mut ports = Vec::new();
    let mut containers = Vec::new();
    for _ in 0..NODES {
        let port = free_port();
        let bus = free_port();
        let command: Vec<String> = [
            "redis-server",
            "--port",
            &port.to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-announce-ip",
            "127.0.0.1",
            "--requirepass",
            &password,
            "--masterauth",
            &password,
            "--save",
            "",
            "--appendonly",
            "no",
            // Replicas sync at once, without a file (a new replica's first
            // full sync otherwise races the tests' first failover).
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let container = GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_network("host")
            .with_cmd(command)
            .with_label(PID_LABEL, std::process::id().to_string())
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .map_err(|e| format!("cannot start a cluster node: {e}"))?;
        ports.push(port);
        containers.push(container);
    }
    let mut create = vec![
        "redis-cli".to_owned(),
        "-a".to_owned(),
        password.clone(),
        "--no-auth-warning".to_owned(),
        "--cluster".to_owned(),
        "create".to_owned(),
    ];
    create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    create.extend(
        ["--cluster-replicas", "1", "--cluster-yes"]
            .iter()
            .map(ToString::to_string),
    );
    let mut created = containers[0]
        .exec(ExecCommand::new(create))
        .await
        .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
    let out = created.stdout_to_vec().await.unwrap_or_default();
    let cluster = TestCluster {
        ports,
        password,
        containers: containers.iter().map(|c| c.id().to_owned()).collect(),
    };
    // Every node sees the whole cluster, every slot served.
    let started = Instant::now();
    for index in 0..NODES {
        loop {
            let mut node = cluster.node(index).await;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut node)
                .await
                .unwrap_or_default();
            let replication: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut node)
                .await
                .unwrap_or_default();
            // A replica counts once it is in sync with its master.
            let synced = replication.contains("role:master")
                || replication.contains("master_link_status:up");
            if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6") && synced
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "the cluster did not form within 60 s: {}",
                    String::from_utf8_lossy(&out)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((cluster, containers))
}
