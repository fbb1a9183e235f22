//! Images made without a registry: a root filesystem of host binaries and the
//! libraries they link, imported with `docker import`.
//!
//! - Redis (`cachemanager/redis:local`): the host's Debian `redis-server` and
//!   `redis-cli`, plus busybox for `sh` and `grep` (the compose healthcheck
//!   needs them), for when the official `redis:7-alpine` cannot be had.
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
/// The app image built from the host's release binary.
pub const LOCAL_APP: &str = "cachemanager/app:local";

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
    require_docker()?;
    if !force {
        if image_exists(OFFICIAL_REDIS) {
            return Ok(OFFICIAL_REDIS);
        }
        if local_image_is_current(LOCAL_REDIS) {
            return Ok(LOCAL_REDIS);
        }
        let pulled = Command::new("docker")
            .args(["pull", "--quiet", OFFICIAL_REDIS])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if pulled {
            return Ok(OFFICIAL_REDIS);
        }
        println!(
            "{OFFICIAL_REDIS} cannot be pulled (no registry); building {LOCAL_REDIS} from the host's redis-server"
        );
    }
    build_redis()?;
    Ok(LOCAL_REDIS)
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
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            bail!("/bin/busybox not found: install it with `apt-get install -y busybox-static`");
        }
        self.copy(busybox, Path::new("/bin/busybox"))?;
        for tool in ["sh", "grep"] {
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

/// `cachemanager/app:local` from a release build of the host's binary.
pub fn build_app() -> Result<&'static str> {
    require_docker()?;
    crate::run(
        "cargo",
        &["build", "--release", "--locked", "-p", "app"],
        &[],
    )?;
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
    fs::create_dir_all(rootfs.root.join("home/nonroot"))?;
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
