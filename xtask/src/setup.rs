//! What the test command needs on the machine, installed where it can be.
//!
//! `cargo xtask ci` on a fresh machine with Rust and Docker must pass by
//! itself: every tool below is checked first, the missing ones are installed
//! with apt-get in one go (when this is a Debian-like machine and we are root,
//! or sudo works without a password), and otherwise the command stops at once
//! with one line naming what to install.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

/// A tool the test command needs, how to tell it is there, and its package.
struct Need {
    /// What needs it, for the message.
    why: &'static str,
    /// Debian's package.
    package: &'static str,
    present: fn() -> bool,
}

/// Whether `program args...` runs and exits 0 (its output discarded).
pub(crate) fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python tool from PyPI, pinned, in its own virtual environment under
/// the target directory (made on first use); returns the path of `binary`.
pub(crate) fn python_tool(
    venv: &str,
    requirement: &str,
    binary: &str,
) -> Result<std::path::PathBuf> {
    let venv = crate::target_dir().join("xtask").join(venv);
    let tool = venv.join("bin").join(binary);
    if !tool.exists() {
        let venv_text = venv.display().to_string();
        crate::run("python3", &["-m", "venv", &venv_text], &[]).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}; cannot make a Python virtual environment (apt-get install -y python3-venv)"
            )
        })?;
        let pip = venv.join("bin/pip").display().to_string();
        crate::run(&pip, &["install", "--quiet", requirement], &[])
            .map_err(|e| anyhow::anyhow!("{e:#}; cannot install {requirement} from PyPI"))?;
    }
    Ok(tool)
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn file(path: &str) -> bool {
    Path::new(path).exists()
}

fn compose_present() -> bool {
    succeeds("docker", &["compose", "version"]) || on_path("docker-compose")
}

const NEEDS: &[Need] = &[
    Need {
        why: "the local HAProxy image (several instances behind a load balancer)",
        package: "haproxy",
        present: || file("/usr/sbin/haproxy"),
    },
    Need {
        why: "the local Redis image (no registry)",
        package: "redis-server",
        present: || file("/usr/bin/redis-server"),
    },
    Need {
        why: "the local Redis image and the compose smoke test",
        package: "redis-tools",
        present: || file("/usr/bin/redis-cli"),
    },
    Need {
        why: "sh and grep inside the local Redis image",
        package: "busybox-static",
        present: || file("/bin/busybox"),
    },
    Need {
        why: "the local PostgreSQL image (no registry)",
        package: "postgresql-15",
        present: || file("/usr/lib/postgresql/15/bin/postgres"),
    },
    Need {
        why: "the TLS tests' throwaway CA",
        package: "openssl",
        present: || on_path("openssl"),
    },
    Need {
        why: "the compose smoke test",
        package: "docker-compose",
        present: compose_present,
    },
    Need {
        why: "promtool (the metrics check) and the observability profile's Prometheus image",
        package: "prometheus",
        present: || on_path("promtool") && file("/usr/bin/prometheus"),
    },
    Need {
        why: "the load generator of `cargo xtask bench`",
        package: "wrk",
        present: || on_path("wrk"),
    },
    Need {
        why: "the bench chart's font",
        package: "fonts-dejavu-core",
        present: || file("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    },
    Need {
        why: "a small app image",
        package: "binutils",
        present: || on_path("strip"),
    },
    Need {
        why: "the Kubernetes manifests' schema check",
        package: "python3-venv",
        present: python_venv_present,
    },
];

fn python_venv_present() -> bool {
    succeeds("python3", &["-c", "import venv, ensurepip"])
}

/// How apt-get can be run here: directly as root, through sudo, or not at all.
fn apt_prefix() -> Option<Vec<&'static str>> {
    if !on_path("apt-get") {
        return None;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        return Some(Vec::new());
    }
    succeeds("sudo", &["-n", "true"]).then(|| vec!["sudo", "-n"])
}

fn apt(prefix: &[&str], args: &[&str]) -> Result<()> {
    let (program, rest) = match prefix.split_first() {
        Some((sudo, flags)) => (*sudo, [flags, &["apt-get"][..], args].concat()),
        None => ("apt-get", args.to_vec()),
    };
    crate::run(program, &rest, &[("DEBIAN_FRONTEND", "noninteractive")])
}

/// Installs whatever the test command lacks, or fails with one line naming it.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|need| !(need.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|need| need.package).collect();
    let Some(prefix) = apt_prefix() else {
        bail!(
            "missing tools; install them and run again: apt-get install -y {}",
            packages.join(" ")
        );
    };
    for need in &missing {
        println!("installing {} (for {})", need.package, need.why);
    }
    apt(&prefix, &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&packages);
    apt(&prefix, &args).map_err(|error| {
        anyhow::anyhow!(
            "cannot install the missing tools ({error:#}); install them and run again: apt-get install -y {}",
            packages.join(" ")
        )
    })?;
    let still: Vec<&str> = NEEDS
        .iter()
        .filter(|need| !(need.present)())
        .map(|need| need.package)
        .collect();
    if !still.is_empty() {
        bail!(
            "still missing after apt-get: install them and run again: apt-get install -y {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// Makes sure the Docker daemon answers, starting it when it is installed but
/// not running (a fresh machine where nothing started it).
pub fn ensure_docker() -> Result<()> {
    let answers = || succeeds("docker", &["info"]);
    if !on_path("docker") {
        bail!(
            "docker is not installed: install Docker (apt-get install -y docker.io) and start it"
        );
    }
    if answers() {
        return Ok(());
    }
    println!("the Docker daemon does not answer; starting it");
    if !succeeds("service", &["docker", "start"]) {
        let _ = Command::new("sh")
            .args(["-c", "dockerd >/tmp/dockerd.log 2>&1 &"])
            .status();
    }
    for _ in 0..30 {
        if answers() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    bail!("the Docker daemon did not start: start it (service docker start) and run again")
}

/// rustfmt and clippy (its driver lints the test build), which the first
/// steps use: added with rustup where they are missing.
pub fn ensure_components() -> Result<()> {
    let has = |tool: &str| succeeds("cargo", &[tool, "--version"]);
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(tool, _)| !has(tool))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["component", "add"];
    args.extend(&missing);
    crate::run("rustup", &args, &[]).map_err(|error| {
        anyhow::anyhow!(
            "{error:#}; install them and run again: rustup component add {}",
            missing.join(" ")
        )
    })
}
