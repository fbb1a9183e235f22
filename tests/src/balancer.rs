//! HAProxy in front of several service instances: a container of the
//! official `haproxy:2.8-alpine` when present, else `cachemanager/haproxy:local`
//! (`cargo xtask test-images`, built from Debian's haproxy), on the host's network
//! so that it reaches instances served by the test process on 127.0.0.1.
//!
//! Its configuration is what a rolling restart without lost requests needs:
//! an active health check of `/health/ready` every 100 ms (an instance that
//! starts shutting down answers 503 there and is taken out after one check;
//! a new one is put in after two good ones), and a request whose connection
//! fails or is closed before any answer is tried again on another instance.

use std::time::Duration;

use testcontainers::core::{AccessMode, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::{PID_LABEL, free_port};

/// The official image, used when present.
pub const OFFICIAL_HAPROXY: (&str, &str) = ("haproxy", "2.8-alpine");
/// The image `cargo xtask test-images` builds from Debian's haproxy.
pub const LOCAL_HAPROXY: (&str, &str) = ("cachemanager/haproxy", "local");

/// A load balancer over instances on 127.0.0.1, removed when dropped.
pub struct TestBalancer {
    /// `http://127.0.0.1:{port}`: the service, through the balancer.
    pub address: String,
    /// The statistics page (`/stats;csv`): each instance's state.
    stats: String,
    /// Where its configuration lives on the host (removed on drop).
    config: std::path::PathBuf,
    _container: ContainerAsync<GenericImage>,
}

impl TestBalancer {
    /// HAProxy over `instances` (ports on 127.0.0.1), round robin; returns
    /// once it answers.
    ///
    /// # Panics
    /// When no image exists or it does not start.
    pub async fn start(instances: &[u16]) -> Self {
        let (name, tag) = image();
        let (port, stats_port) = (free_port(), free_port());
        let servers: String = instances
            .iter()
            .enumerate()
            .map(|(index, p)| format!("    server i{index} 127.0.0.1:{p} check\n"))
            .collect();
        let text = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 500ms\n    timeout client 30s\n    timeout server 30s\n    timeout http-keep-alive 10s\n    retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response\n\
             frontend service\n    bind 127.0.0.1:{port}\n    default_backend instances\n\
             backend instances\n    balance roundrobin\n    option httpchk GET /health/ready\n    http-check expect status 200\n    default-server inter 100ms fall 1 rise 2\n{servers}\
             listen stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /stats\n"
        );
        let config = std::env::temp_dir()
            .join("cachemanager-tests")
            .join(format!("haproxy-{}.cfg", uuid::Uuid::new_v4().simple()));
        if let Some(dir) = config.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&config, text).expect("the HAProxy configuration is written");
        let mount = Mount::bind_mount(
            config.display().to_string(),
            "/usr/local/etc/haproxy/haproxy.cfg",
        )
        .with_access_mode(AccessMode::ReadOnly);
        let container = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::Nothing)
            .with_network("host")
            .with_mount(mount)
            .with_cmd(["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"])
            .with_label(PID_LABEL, std::process::id().to_string())
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start HAProxy: {e}"));
        let balancer = Self {
            address: format!("http://127.0.0.1:{port}"),
            stats: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            config,
            _container: container,
        };
        crate::eventually(
            "HAProxy answers its statistics",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async { !balancer.states().await.is_empty() },
        )
        .await;
        balancer
    }

    /// Each instance's state as HAProxy sees it (`UP`, `DOWN`, ...), in the
    /// order they were given; empty while it does not answer.
    pub async fn states(&self) -> Vec<String> {
        let Ok(response) = reqwest::get(&self.stats).await else {
            return Vec::new();
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with("instances,i"))
            .filter_map(|line| line.split(',').nth(17).map(ToOwned::to_owned))
            .collect()
    }

    /// Waits until every instance is `UP` (within 15 s).
    ///
    /// # Panics
    /// When they are not.
    pub async fn wait_all_up(&self) -> Duration {
        crate::eventually(
            "every instance UP behind HAProxy",
            Duration::from_secs(15),
            Duration::from_millis(20),
            || async {
                let states = self.states().await;
                !states.is_empty() && states.iter().all(|s| s.starts_with("UP"))
            },
        )
        .await
    }
}

impl Drop for TestBalancer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The HAProxy image to run.
///
/// # Panics
/// With one line saying how to fix it, when none exists.
fn image() -> (String, String) {
    for (name, tag) in [OFFICIAL_HAPROXY, LOCAL_HAPROXY] {
        let found = std::process::Command::new("docker")
            .args(["image", "inspect", &format!("{name}:{tag}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return (name.to_owned(), tag.to_owned());
        }
    }
    panic!(
        "no HAProxy image: run `cargo xtask test-images` (every image the suite runs: \
         haproxy:2.8-alpine, or cachemanager/haproxy:local built from Debian's haproxy; \
         Redis and PostgreSQL the same way) and run the suite again"
    )
}
