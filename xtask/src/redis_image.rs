//! The Redis image of the integration suite, made without a registry when
//! there is none: the host's Debian `redis-server` binary and the libraries it
//! links, imported as a root filesystem.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// What users with a registry run.
pub const OFFICIAL: &str = "redis:7-alpine";
/// What we build when the official image cannot be had.
pub const LOCAL: &str = "cachemanager/redis:local";

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure an image exists and returns its name: the official image if it
/// is present or can be pulled, else the local one (built if missing, or
/// rebuilt with `force`).
pub fn ensure(force: bool) -> Result<&'static str> {
    let docker = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .context(
            "docker is not installed: install Docker (apt-get install -y docker.io) and start it",
        )?;
    if !docker.status.success() {
        bail!(
            "Docker is not reachable: start the Docker daemon (and check access to /var/run/docker.sock)"
        );
    }
    if !force {
        if image_exists(OFFICIAL) {
            return Ok(OFFICIAL);
        }
        if image_exists(LOCAL) {
            return Ok(LOCAL);
        }
        let pulled = Command::new("docker")
            .args(["pull", "--quiet", OFFICIAL])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if pulled {
            return Ok(OFFICIAL);
        }
        println!(
            "{OFFICIAL} cannot be pulled (no registry); building {LOCAL} from the host's redis-server"
        );
    }
    build_local()?;
    Ok(LOCAL)
}

/// The real `redis-server` binary. On Debian `/usr/bin/redis-server` is a
/// symlink to `redis-check-rdb`, and the binary picks its mode from the name
/// it is run as, so it is copied under the name `redis-server`.
fn redis_binary() -> Result<PathBuf> {
    let link = Path::new("/usr/bin/redis-server");
    let real = fs::canonicalize(link).context(
        "/usr/bin/redis-server not found: install it with `apt-get install -y redis-server`",
    )?;
    Ok(real)
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

fn copy_into(root: &Path, source: &Path, target: &Path) -> Result<()> {
    let destination = root.join(target.strip_prefix("/").unwrap_or(target));
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent)?;
    }
    // fs::copy follows symlinks: the file lands under the link's name.
    fs::copy(source, &destination)
        .with_context(|| format!("cannot copy {} into the image", source.display()))?;
    Ok(())
}

fn build_local() -> Result<()> {
    let server = redis_binary()?;
    let cli = Path::new("/usr/bin/redis-cli");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/redis-rootfs");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;

    copy_into(&root, &server, Path::new("/usr/local/bin/redis-server"))?;
    let mut libs = libraries(&server)?;
    if cli.exists() {
        copy_into(&root, cli, Path::new("/usr/local/bin/redis-cli"))?;
        libs.extend(libraries(cli)?);
    }
    for lib in &libs {
        copy_into(&root, lib, lib)?;
    }
    for dir in ["tmp", "data", "etc"] {
        fs::create_dir_all(root.join(dir))?;
    }
    // /tmp must be world-writable with the sticky bit, as programs expect.
    fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nredis:x:999:999:redis:/data:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nredis:x:999:\n")?;

    let mut tar = Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&root)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let status = Command::new("docker")
        .args([
            "import",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "--change",
            "WORKDIR /data",
            "--change",
            "EXPOSE 6379",
            "--change",
            r#"CMD ["redis-server"]"#,
            "--message",
            "Debian redis-server for CacheManager's integration suite",
            "-",
            LOCAL,
        ])
        .stdin(tar_out)
        .stdout(Stdio::null())
        .status()
        .context("cannot run docker import")?;
    let tar_status = tar.wait()?;
    if !tar_status.success() || !status.success() {
        bail!("building {LOCAL} failed (tar: {tar_status}, docker import: {status})");
    }
    println!("built {LOCAL} ({} libraries from the host)", libs.len());
    Ok(())
}
