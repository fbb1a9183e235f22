//! One PostgreSQL per test binary, a fresh database per test.
//!
//! The container is started (testcontainers) on first use by a thread of its
//! own that holds it for the life of the process: each `#[tokio::test]` has
//! its own runtime, and a container or a pool must not outlive the runtime it
//! was made in. Each test gets its own database (`CREATE DATABASE`), so
//! tests share the server, never data. Containers carry the label
//! [`PID_LABEL`] with the test process's pid: a later run removes those whose
//! process is gone, and `cargo xtask ci` removes them after the suite.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::Connection;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The official image, used when present.
pub const OFFICIAL_POSTGRES: (&str, &str) = ("postgres", "16-alpine");
/// The image `cargo xtask postgres-image` builds from Debian's PostgreSQL.
pub const LOCAL_POSTGRES: (&str, &str) = ("cachemanager/postgres", "local");
/// Overrides the choice: `name:tag`.
pub const POSTGRES_IMAGE_VARIABLE: &str = "CACHEMANAGER_TEST_POSTGRES_IMAGE";
/// The label naming the test process that started a container.
pub const PID_LABEL: &str = "cachemanager.test.pid";

/// The shared server: where it listens and its superuser's password.
#[derive(Debug, Clone)]
pub struct TestPostgres {
    /// The host port mapped to 5432.
    pub port: u16,
    /// The `postgres` user's password.
    pub password: String,
}

fn postgres_image() -> Result<(String, String), String> {
    if let Ok(image) = std::env::var(POSTGRES_IMAGE_VARIABLE) {
        let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
        return Ok((name.to_owned(), tag.to_owned()));
    }
    for (name, tag) in [OFFICIAL_POSTGRES, LOCAL_POSTGRES] {
        let present = Command::new("docker")
            .args(["image", "inspect", &format!("{name}:{tag}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if present {
            return Ok((name.to_owned(), tag.to_owned()));
        }
    }
    Err(
        "no PostgreSQL image: run `cargo xtask test-images` (every image the suite runs: \
         postgres:16-alpine, or cachemanager/postgres:local built from Debian's PostgreSQL 15; \
         Redis and HAProxy the same way) and run the suite again"
            .into(),
    )
}

/// Removes containers of earlier test processes that are gone.
pub(crate) fn remove_orphans() {
    let format = format!("{{{{.ID}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
    let Ok(output) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={PID_LABEL}"),
            "--format",
            &format,
        ])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((id, pid)) = line.split_once(' ') else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("docker")
                .args(["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts the server; the container is what must be held.
async fn start(
    name: String,
    tag: String,
) -> Result<(TestPostgres, ContainerAsync<GenericImage>), String> {
    let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
    let container = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(5432))
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_PASSWORD", &password)
        .with_label(PID_LABEL, std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(60))
        .start()
        .await
        .map_err(|error| format!("cannot start PostgreSQL: {error}"))?;
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .map_err(|error| format!("the PostgreSQL container has no mapped port: {error}"))?;
    Ok((TestPostgres { port, password }, container))
}

impl TestPostgres {
    /// The server of this test binary, started on first use.
    ///
    /// # Panics
    /// With one line saying how to fix it, when no image exists or the
    /// server does not start.
    pub fn shared() -> &'static TestPostgres {
        static SERVER: OnceLock<Result<TestPostgres, String>> = OnceLock::new();
        let server = SERVER.get_or_init(|| {
            remove_orphans();
            let (name, tag) = postgres_image()?;
            crate::hold_for_process("PostgreSQL", move || start(name, tag))
        });
        match server {
            Ok(server) => server,
            Err(message) => panic!("{message}"),
        }
    }

    /// The URL of database `name` on this server (the password apart).
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// A connection to the server's `postgres` database as its superuser.
    ///
    /// # Panics
    /// When the server refuses.
    async fn admin(&self) -> sqlx::PgConnection {
        let admin = format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        );
        sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"))
    }

    /// A new, empty database of its own; its URL (without the password).
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn fresh_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut connection = self.admin().await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let _ = connection.close().await;
        self.url_of(&name)
    }

    /// Closes, from the server's side, every connection to the database of
    /// `url` (what a restart, a failover or `idle_session_timeout` does to a
    /// pool's idle connections), and waits until they are gone; how many
    /// there were.
    ///
    /// # Panics
    /// When the server refuses, or the connections outlive 5 s.
    pub async fn terminate_connections(&self, url: &str) -> usize {
        let name = url.rsplit('/').next().unwrap_or_default();
        let mut connection = self.admin().await;
        // The pids first, then each terminated: in one statement the planner
        // may call pg_terminate_backend before it filters by database.
        let pids: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(name)
                .fetch_all(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("cannot list the connections: {e}"));
        for &pid in &pids {
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("cannot terminate connection {pid}: {e}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                    .bind(name)
                    .fetch_one(&mut connection)
                    .await
                    .unwrap_or_else(|e| panic!("cannot count the connections: {e}"));
            if left == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} connections to {name} outlived their termination"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = connection.close().await;
        pids.len()
    }

    /// A new, empty database reached through a fault proxy (to stall or
    /// black-hole it): the proxy, and the database's URL through it.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn fresh_database_behind_proxy(&self) -> (crate::proxy::FaultProxy, String) {
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let proxy = crate::proxy::FaultProxy::start(upstream).await;
        let url = self.fresh_database().await.replace(
            &format!(":{}/", self.port),
            &format!(":{}/", proxy.address.port()),
        );
        (proxy, url)
    }
}
