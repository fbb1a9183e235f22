//! Images made without a registry: a root filesystem of host binaries and the
//! libraries they link, imported with `docker import`.
//!
//! - Redis (`cachemanager/redis:local`): the host's Debian `redis-server` and
//!   `redis-cli`, plus busybox for `sh` and `grep` (the compose healthcheck
//!   needs them), for when the official `redis:7-alpine` cannot be had.
//! - PostgreSQL (`cachemanager/postgres:local`): the host's Debian
//!   PostgreSQL 15 server (`/usr/lib/postgresql/15`, its `share/`, the
//!   libraries `ldd` names) and busybox for the `sh` initdb needs, behind an
//!   entry script that initialises a cluster on first start the way the
//!   official `postgres:16-alpine` does (`POSTGRES_PASSWORD`, `POSTGRES_USER`,
//!   `POSTGRES_DB`, data in `/var/lib/postgresql/data/pgdata`).
//! - HAProxy (`cachemanager/haproxy:local`): Debian's `haproxy` and the
//!   libraries `ldd` names, for the several-instances test behind a load
//!   balancer, when the official `haproxy:2.8-alpine` cannot be had.
//! - The app (`cachemanager/app:local`): the host's release binary, run as a
//!   non-root user, as the Dockerfile's image would run it.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// What users with a registry run.
pub const OFFICIAL_REDIS: &str = "redis:7-alpine";
/// The Redis we build when the official image cannot be had.
pub const LOCAL_REDIS: &str = "cachemanager/redis:local";
/// What users with a registry run.
pub const OFFICIAL_POSTGRES: &str = "postgres:16-alpine";
/// The PostgreSQL we build when the official image cannot be had.
pub const LOCAL_POSTGRES: &str = "cachemanager/postgres:local";
/// The app image built from the host's release binary.
pub const LOCAL_APP: &str = "cachemanager/app:local";
/// What the compose file's `observability` profile names by default.
pub const OFFICIAL_PROMETHEUS: &str = "prom/prometheus:v2.53.0";
/// Built from Debian's `prometheus` package when no registry is reachable.
pub const LOCAL_PROMETHEUS: &str = "cachemanager/prometheus:local";

/// What users with a registry run in front of several instances.
pub const OFFICIAL_HAPROXY: &str = "haproxy:2.8-alpine";
/// Built from Debian's `haproxy` package when no registry is reachable.
pub const LOCAL_HAPROXY: &str = "cachemanager/haproxy:local";

/// Bumped when what goes into a local image changes, so older ones are rebuilt.
const IMAGE_VERSION: &str = "2";
const VERSION_LABEL: &str = "cachemanager.image-version";

fn docker_output(args: &[&str]) -> Option<String> {
    let output = Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn image_exists(image: &str) -> bool {
    docker_output(&["image", "inspect", "--format", "{{.Id}}", image]).is_some()
}

fn local_image_is_current(image: &str) -> bool {
    let format = format!("{{{{ index .Config.Labels \"{VERSION_LABEL}\" }}}}");
    docker_output(&["image", "inspect", "--format", &format, image])
        .is_some_and(|v| v == IMAGE_VERSION)
}

/// Fails with a clear line unless the Docker daemon answers.
pub fn require_docker() -> Result<()> {
    let output = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .context(
            "docker is not installed: install Docker (apt-get install -y docker.io) and start it",
        )?;
    if !output.status.success() {
        bail!(
            "Docker is not reachable: start the Docker daemon (and check access to /var/run/docker.sock)"
        );
    }
    Ok(())
}

/// Makes sure a Redis image exists and returns its name: the official image
/// if present or pullable, else the local one (built if missing or stale, or
/// rebuilt with `force`).
pub fn ensure_redis(force: bool) -> Result<&'static str> {
    ensure_image(
        force,
        OFFICIAL_REDIS,
        LOCAL_REDIS,
        "the host's redis-server",
        build_redis,
    )
}

/// The official image if present or pullable (unless `force`), else the
/// local one, built by `build` when missing, stale or forced.
fn ensure_image(
    force: bool,
    official: &'static str,
    local: &'static str,
    from: &str,
    build: fn() -> Result<()>,
) -> Result<&'static str> {
    require_docker()?;
    if !force {
        if image_exists(official) {
            return Ok(official);
        }
        if local_image_is_current(local) {
            return Ok(local);
        }
        let pulled = Command::new("docker")
            .args(["pull", "--quiet", official])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if pulled {
            return Ok(official);
        }
        println!("{official} cannot be pulled (no registry); building {local} from {from}");
    }
    build()?;
    Ok(local)
}

/// The shared libraries `binary` loads, with the dynamic loader, from `ldd`.
fn libraries(binary: &Path) -> Result<BTreeSet<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    if !output.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut found = BTreeSet::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            found.insert(PathBuf::from(path));
        }
    }
    Ok(found)
}

/// A root filesystem being assembled under `target/xtask/<name>-rootfs`.
struct Rootfs {
    root: PathBuf,
    libraries: BTreeSet<PathBuf>,
}

impl Rootfs {
    fn new(name: &str) -> Result<Self> {
        let root = crate::target_dir()
            .join("xtask")
            .join(format!("{name}-rootfs"));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        for dir in ["tmp", "etc", "data"] {
            fs::create_dir_all(root.join(dir))?;
        }
        // /tmp: world-writable with the sticky bit, as programs expect.
        fs::set_permissions(
            root.join("tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )?;
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nredis:x:999:999:redis:/data:/bin/false\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/false\n",
        )?;
        fs::write(
            root.join("etc/group"),
            "root:x:0:\nredis:x:999:\nnonroot:x:65532:\n",
        )?;
        Ok(Self {
            root,
            libraries: BTreeSet::new(),
        })
    }

    /// Copies `source` to `target` inside the image (following symlinks).
    fn copy(&self, source: &Path, target: &Path) -> Result<()> {
        let destination = self.root.join(target.strip_prefix("/").unwrap_or(target));
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(source, &destination)
            .with_context(|| format!("cannot copy {} into the image", source.display()))?;
        Ok(())
    }

    /// Copies a dynamically linked binary and remembers its libraries.
    fn binary(&mut self, source: &Path, target: &str) -> Result<()> {
        self.copy(source, Path::new(target))?;
        self.libraries.extend(libraries(source)?);
        Ok(())
    }

    /// Busybox (static) as `/bin/busybox`, with `sh` and `grep` links.
    fn busybox(&self) -> Result<()> {
        self.busybox_with(&["sh", "grep"])
    }

    /// Busybox (static) as `/bin/busybox`, linked as each of `tools`.
    fn busybox_with(&self, tools: &[&str]) -> Result<()> {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            bail!("/bin/busybox not found: install it with `apt-get install -y busybox-static`");
        }
        self.copy(busybox, Path::new("/bin/busybox"))?;
        for tool in tools {
            std::os::unix::fs::symlink("busybox", self.root.join("bin").join(tool))?;
        }
        Ok(())
    }

    /// Copies the remembered libraries and imports the tree as `tag`.
    fn import(self, tag: &str, changes: &[&str]) -> Result<()> {
        for lib in &self.libraries {
            self.copy(lib, lib)?;
        }
        let mut tar = Command::new("tar")
            .args(["--owner=0", "--group=0", "-C"])
            .arg(&self.root)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run tar")?;
        let tar_out = tar.stdout.take().context("tar has no stdout")?;
        let label = format!("LABEL {VERSION_LABEL}={IMAGE_VERSION}");
        let mut args = vec!["import", "--change", label.as_str()];
        for change in changes {
            args.extend(["--change", change]);
        }
        args.extend(["-", tag]);
        let status = Command::new("docker")
            .args(&args)
            .stdin(tar_out)
            .stdout(Stdio::null())
            .status()
            .context("cannot run docker import")?;
        let tar_status = tar.wait()?;
        if !tar_status.success() || !status.success() {
            bail!("building {tag} failed (tar: {tar_status}, docker import: {status})");
        }
        let size = docker_output(&["image", "inspect", "--format", "{{.Size}}", tag])
            .and_then(|s| s.parse::<f64>().ok())
            .map_or_else(|| "?".into(), |bytes| format!("{:.1} MB", bytes / 1e6));
        println!(
            "built {tag} ({} libraries from the host, {size})",
            self.libraries.len()
        );
        Ok(())
    }
}

/// `cachemanager/redis:local`. On Debian `/usr/bin/redis-server` is a symlink
/// to `redis-check-rdb`, and the binary picks its mode from the name it runs
/// as, so it is copied under the name `redis-server`.
fn build_redis() -> Result<()> {
    let server = fs::canonicalize("/usr/bin/redis-server").context(
        "/usr/bin/redis-server not found: install it with `apt-get install -y redis-server`",
    )?;
    let mut rootfs = Rootfs::new("redis")?;
    rootfs.binary(&server, "/usr/local/bin/redis-server")?;
    let cli = Path::new("/usr/bin/redis-cli");
    if !cli.exists() {
        bail!("/usr/bin/redis-cli not found: install it with `apt-get install -y redis-tools`");
    }
    rootfs.binary(cli, "/usr/local/bin/redis-cli")?;
    rootfs.busybox()?;
    rootfs.import(
        LOCAL_REDIS,
        &[
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "WORKDIR /data",
            "EXPOSE 6379",
            r#"CMD ["redis-server"]"#,
        ],
    )
}

/// Makes sure a PostgreSQL image exists and returns its name: the official
/// image if present or pullable, else the local one (built if missing or
/// stale, or rebuilt with `force`).
pub fn ensure_postgres(force: bool) -> Result<&'static str> {
    ensure_image(
        force,
        OFFICIAL_POSTGRES,
        LOCAL_POSTGRES,
        "the host's PostgreSQL 15",
        build_postgres,
    )
}

/// The entry script of the local PostgreSQL image: initialise on first start
/// (as the official image does), then run the server in the foreground.
const POSTGRES_ENTRY: &str = r#"#!/bin/sh
set -e
bin=/usr/lib/postgresql/15/bin
export PGDATA="${PGDATA:-/var/lib/postgresql/data/pgdata}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "$POSTGRES_PASSWORD" ]; then
        echo "POSTGRES_PASSWORD must be set" >&2
        exit 1
    fi
    user="${POSTGRES_USER:-postgres}"
    mkdir -p "$PGDATA"
    printf '%s
' "$POSTGRES_PASSWORD" > /tmp/pwfile
    "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile --auth=scram-sha-256         --encoding=UTF8 --locale=C > /dev/null
    rm -f /tmp/pwfile
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    db="${POSTGRES_DB:-$user}"
    if [ "$db" != "postgres" ]; then
        echo "CREATE DATABASE "$db" OWNER "$user"" | "$bin/postgres" --single -D "$PGDATA" postgres > /dev/null
    fi
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp     -c jit=off -c timezone=UTC -c log_timezone=UTC "$@"
"#;

/// `cachemanager/postgres:local` from Debian's PostgreSQL 15.
fn build_postgres() -> Result<()> {
    let home = Path::new("/usr/lib/postgresql/15");
    if !home.join("bin/postgres").exists() {
        bail!(
            "/usr/lib/postgresql/15/bin/postgres not found: install it with `apt-get install -y postgresql-15`"
        );
    }
    let mut rootfs = Rootfs::new("postgres")?;
    for tool in ["postgres", "initdb", "pg_isready"] {
        let path = home.join("bin").join(tool);
        rootfs.binary(&path, &path.to_string_lossy())?;
    }
    // The procedural language and the text search dictionaries initdb loads.
    for module in ["plpgsql.so", "dict_snowball.so"] {
        let path = home.join("lib").join(module);
        rootfs.binary(&path, &path.to_string_lossy())?;
    }
    for tree in ["/usr/share/postgresql/15", "/usr/share/zoneinfo"] {
        copy_tree(&rootfs, Path::new(tree))?;
    }
    rootfs.busybox_with(&["sh", "mkdir", "rm", "cat"])?;
    let entry = rootfs.root.join("usr/local/bin/postgres-entry");
    fs::create_dir_all(entry.parent().context("entry has a parent")?)?;
    fs::write(&entry, POSTGRES_ENTRY)?;
    fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut passwd = fs::read_to_string(rootfs.root.join("etc/passwd"))?;
    passwd.push_str("postgres:x:70:70:postgres:/var/lib/postgresql:/bin/sh\n");
    fs::write(rootfs.root.join("etc/passwd"), passwd)?;
    let mut group = fs::read_to_string(rootfs.root.join("etc/group"))?;
    group.push_str("postgres:x:70:\n");
    fs::write(rootfs.root.join("etc/group"), group)?;
    // Writable by the server's user whatever owns it (the image's files are
    // root's); initdb makes the data directory itself below it, 0700.
    let data = rootfs.root.join("var/lib/postgresql/data");
    fs::create_dir_all(&data)?;
    for dir in [data.as_path(), &rootfs.root.join("var/lib/postgresql")] {
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    }
    rootfs.import(
        LOCAL_POSTGRES,
        &[
            "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/bin",
            "ENV TZ=UTC",
            "USER 70:70",
            "EXPOSE 5432",
            r#"ENTRYPOINT ["/usr/local/bin/postgres-entry"]"#,
        ],
    )
}

/// Copies the tree at `source` into the image at the same path.
fn copy_tree(rootfs: &Rootfs, source: &Path) -> Result<()> {
    for entry in
        fs::read_dir(source).with_context(|| format!("cannot read {}", source.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            copy_tree(rootfs, &path)?;
        } else if path.is_file() {
            rootfs.copy(&path, &path)?;
        }
    }
    Ok(())
}

/// Makes sure a Prometheus image exists and returns its name: the official
/// image if present or pullable, else the local one (built if missing or
/// stale, or rebuilt with `force`).
pub fn ensure_prometheus(force: bool) -> Result<&'static str> {
    ensure_image(
        force,
        OFFICIAL_PROMETHEUS,
        LOCAL_PROMETHEUS,
        "the host's prometheus",
        build_prometheus,
    )
}

/// `cachemanager/prometheus:local`: Debian's Prometheus binary (Go, libc
/// only), its data in `/prometheus`; like the official image, the entry
/// point is the binary and the command its flags.
fn build_prometheus() -> Result<()> {
    let binary = Path::new("/usr/bin/prometheus");
    if !binary.exists() {
        bail!("/usr/bin/prometheus not found: install it with `apt-get install -y prometheus`");
    }
    let mut rootfs = Rootfs::new("prometheus")?;
    rootfs.binary(binary, "/bin/prometheus")?;
    rootfs.busybox_with(&["sh", "wget"])?;
    let data = rootfs.root.join("prometheus");
    fs::create_dir_all(&data)?;
    fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    fs::create_dir_all(rootfs.root.join("etc/prometheus"))?;
    rootfs.import(
        LOCAL_PROMETHEUS,
        &[
            "EXPOSE 9090",
            "WORKDIR /prometheus",
            r#"ENTRYPOINT ["/bin/prometheus"]"#,
            r#"CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]"#,
        ],
    )
}

/// Makes sure every image the integration suite runs exists (Redis,
/// PostgreSQL, HAProxy for the load-balanced instances), and returns their
/// names in that order.
pub fn ensure_test_images(force: bool) -> Result<Vec<&'static str>> {
    Ok(vec![
        ensure_redis(force)?,
        ensure_postgres(force)?,
        ensure_haproxy(force)?,
    ])
}

/// Makes sure an HAProxy image exists and returns its name: the official
/// image if present or pullable, else the local one (built if missing or
/// stale, or rebuilt with `force`).
pub fn ensure_haproxy(force: bool) -> Result<&'static str> {
    ensure_image(
        force,
        OFFICIAL_HAPROXY,
        LOCAL_HAPROXY,
        "the host's haproxy",
        build_haproxy,
    )
}

/// `cachemanager/haproxy:local`: Debian's HAProxy and its libraries; like
/// the official image, the configuration is read from
/// `/usr/local/etc/haproxy/haproxy.cfg` (mounted by whoever runs it).
fn build_haproxy() -> Result<()> {
    let binary = Path::new("/usr/sbin/haproxy");
    if !binary.exists() {
        bail!("/usr/sbin/haproxy not found: install it with `apt-get install -y haproxy`");
    }
    let mut rootfs = Rootfs::new("haproxy")?;
    rootfs.binary(binary, "/usr/local/sbin/haproxy")?;
    rootfs.busybox()?;
    fs::create_dir_all(rootfs.root.join("usr/local/etc/haproxy"))?;
    fs::create_dir_all(rootfs.root.join("var/lib/haproxy"))?;
    rootfs.import(
        LOCAL_HAPROXY,
        &[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/bin:/bin",
            r#"CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]"#,
        ],
    )
}

/// `cachemanager/app:local` from a release build of the host's binary.
pub fn build_app() -> Result<&'static str> {
    require_docker()?;
    crate::release_build()?;
    let binary = crate::target_dir().join("release/cachemanager");
    let mut rootfs = Rootfs::new("app")?;
    rootfs.binary(&binary, "/usr/local/bin/cachemanager")?;
    // As the Dockerfile does: the release profile keeps line tables for
    // profiling on the host; the image does not need them.
    let copied = rootfs.root.join("usr/local/bin/cachemanager");
    let stripped = Command::new("strip")
        .arg(&copied)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        println!("strip is not available; the app image keeps its debug line tables");
    }
    // The embedded SQLite store's directory (data/) is made here at first
    // start, by the non-root user: the home must be writable to it.
    let home = rootfs.root.join("home/nonroot");
    fs::create_dir_all(&home)?;
    fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    rootfs.import(
        LOCAL_APP,
        &[
            "ENV CACHEMANAGER__SERVER__HOST=0.0.0.0",
            "EXPOSE 8000",
            "USER 65532:65532",
            "WORKDIR /home/nonroot",
            r#"ENTRYPOINT ["/usr/local/bin/cachemanager"]"#,
        ],
    )?;
    Ok(LOCAL_APP)
}
