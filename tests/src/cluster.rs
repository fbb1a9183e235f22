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

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use adapters::Secret;
use adapters::backend::{RedisConfig, RedisMode};
use testcontainers::core::{ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::{PID_LABEL, free_port, redis_image};

/// Nodes: three masters, each with one replica.
pub const NODES: usize = 6;

/// The key of a user's record on a cluster, as a service with the default
/// settings builds it: in one of `cache.cluster_key_buckets` hash-tag
/// buckets (`user:record:{<b>}:<uuid>`).
pub fn record_key(uuid: &str) -> String {
    ports::bucketed_key("user:record", uuid, app::DEFAULT_CLUSTER_KEY_BUCKETS)
}

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

    /// The cluster for one test at a time among those that take this: the
    /// tests that write the seed's namespaces (the typed-cache suite and the
    /// service tests share the sample users' keys) and those that disturb
    /// other clients (killing this process's tracking connections). Each
    /// holds the guard for its whole body, and starts with no key under
    /// `user:` (deleted on every master; other tests' keys, e.g. the
    /// contract suite's prefixes, are untouched).
    pub async fn exclusive(&self) -> tokio::sync::OwnedMutexGuard<()> {
        static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
        let guard = LOCK
            .get_or_init(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
            .lock_owned()
            .await;
        for index in 0..self.ports.len() {
            let mut node = self.node(index).await;
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut node)
                .await
                .expect("ROLE");
            if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                continue;
            }
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("user:*")
                .query_async(&mut node)
                .await
                .expect("KEYS user:*");
            for key in keys {
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut node)
                    .await
                    .expect("DEL on the key's master");
            }
        }
        guard
    }

    /// A raw connection to the whole cluster (the redis crate's
    /// `cluster_async`, routing each command by its key's slot), to read
    /// and write keys as another client would.
    pub async fn raw(&self) -> redis::cluster_async::ClusterConnection {
        let client = redis::cluster::ClusterClientBuilder::new(
            self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")),
        )
        .password(self.password.clone())
        .build()
        .expect("a valid cluster client");
        client
            .get_async_connection()
            .await
            .expect("a connection to the cluster")
    }

    /// The master serving `slot` (its index in `ports`), as node `ask` sees
    /// it in `CLUSTER NODES`; `None` when no live master serves it there.
    pub async fn master_of(&self, slot: u16, ask: usize) -> Option<usize> {
        let mut node = self.node(ask).await;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut node)
            .await
            .ok()?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port: u16 = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return self.ports.iter().position(|&p| p == port);
            }
        }
        None
    }

    /// Whether node `index` answers as a master.
    pub async fn is_master(&self, index: usize) -> bool {
        let mut node = self.node(index).await;
        let role: redis::RedisResult<Vec<redis::Value>> =
            redis::cmd("ROLE").query_async(&mut node).await;
        matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master")
    }

    /// The hash slot of `key`.
    pub async fn slot(&self, key: &str) -> u16 {
        let mut node = self.node(0).await;
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut node)
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// A slot migration, as `redis-cli --cluster reshard` makes one, in its
    /// three stages: [`Migration::begin`], [`Migration::move_keys`],
    /// [`Migration::finish`].
    pub async fn migration(&self, slot: u16, source: usize, target: usize) -> Migration<'_> {
        let id = |index: usize| async move {
            let mut node = self.node(index).await;
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async::<String>(&mut node)
                .await
                .expect("CLUSTER MYID")
        };
        Migration {
            cluster: self,
            slot,
            source,
            target,
            source_id: id(source).await,
            target_id: id(target).await,
        }
    }

    /// A raw connection to one node.
    pub async fn node(&self, index: usize) -> redis::aio::MultiplexedConnection {
        self.try_node(index)
            .await
            .expect("a connection to a cluster node")
    }

    /// A raw connection to one node, or why there is none (a node killed or
    /// still starting refuses it).
    pub async fn try_node(
        &self,
        index: usize,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let url = format!("redis://:{}@127.0.0.1:{}", self.password, self.ports[index]);
        let client = redis::Client::open(url).expect("a valid node URL");
        client.get_multiplexed_async_connection().await
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

/// One slot moving from one master to another (see [`TestCluster::migration`]).
pub struct Migration<'a> {
    cluster: &'a TestCluster,
    slot: u16,
    source: usize,
    target: usize,
    source_id: String,
    target_id: String,
}

impl Migration<'_> {
    /// `SETSLOT IMPORTING` on the target, `MIGRATING` on the source: the
    /// source serves the keys it holds and answers `ASK` for the others.
    pub async fn begin(&self) {
        let mut target = self.cluster.node(self.target).await;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot)
            .arg("IMPORTING")
            .arg(&self.source_id)
            .query_async::<()>(&mut target)
            .await
            .expect("SETSLOT IMPORTING");
        let mut source = self.cluster.node(self.source).await;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(self.slot)
            .arg("MIGRATING")
            .arg(&self.target_id)
            .query_async::<()>(&mut source)
            .await
            .expect("SETSLOT MIGRATING");
    }

    /// `MIGRATE` of every key of the slot to the target; how many moved.
    pub async fn move_keys(&self) -> usize {
        let mut source = self.cluster.node(self.source).await;
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(self.slot)
            .arg(10_000)
            .query_async(&mut source)
            .await
            .expect("GETKEYSINSLOT");
        if !keys.is_empty() {
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.cluster.ports[self.target])
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("AUTH")
                .arg(&self.cluster.password)
                .arg("KEYS")
                .arg(&keys)
                .query_async::<()>(&mut source)
                .await
                .expect("MIGRATE");
        }
        keys.len()
    }

    /// `SETSLOT NODE` on the target, the source, then every other node
    /// (replicas refuse it; they learn it from the cluster bus).
    pub async fn finish(&self) {
        let others =
            (0..self.cluster.ports.len()).filter(|&i| i != self.target && i != self.source);
        for index in [self.target, self.source].into_iter().chain(others) {
            let mut node = self.cluster.node(index).await;
            let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&self.target_id)
                .query_async(&mut node)
                .await;
        }
    }
}
