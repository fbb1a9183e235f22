//! `cargo xtask bench --against REV`: the service binary of another commit,
//! built once and kept, so that the bench can run each case for both
//! binaries in the same run, turn about (a ratio between two runs minutes or
//! days apart says more about the machine than about the code).

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The baseline: the binary of one commit, and how results name it.
pub struct Baseline {
    pub binary: PathBuf,
    /// `@` and the commit's short hash.
    pub label: String,
}

/// The release `cachemanager` of `rev` (a commit, branch or tag of this
/// repository): built in a worktree of its own under
/// `target/bench/against/` (a target directory of its own, shared by every
/// baseline so that a second one builds incrementally), then kept as
/// `cachemanager-<hash>` and reused.
pub fn baseline(rev: &str) -> Result<Baseline> {
    let root = crate::workspace_root();
    let output = Command::new("git")
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .current_dir(&root)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!("--against {rev}: not a commit of this repository");
    }
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let short = sha.get(..10).unwrap_or(&sha).to_owned();
    let dir = crate::target_dir().join("bench/against");
    fs::create_dir_all(&dir)?;
    let binary = dir.join(format!("cachemanager-{short}"));
    let label = format!("@{short}");
    if binary.exists() {
        return Ok(Baseline { binary, label });
    }
    let tree = dir.join(format!("tree-{short}"));
    if !tree.join("Cargo.toml").exists() {
        let _ = fs::remove_dir_all(&tree);
        let _ = Command::new("git")
            .args(["worktree", "prune"])
            .current_dir(&root)
            .status();
        let tree_arg = tree.to_string_lossy().into_owned();
        crate::run(
            "git",
            &["worktree", "add", "--detach", "--force", &tree_arg, &sha],
            &[],
        )?;
    }
    println!(
        "==> building the baseline {label} ({rev}) in {}",
        tree.display()
    );
    let manifest = tree.join("Cargo.toml").to_string_lossy().into_owned();
    let target = dir.join("target").to_string_lossy().into_owned();
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "app",
            "--manifest-path",
            &manifest,
        ],
        &[("CARGO_TARGET_DIR", &target)],
    )?;
    fs::copy(dir.join("target/release/cachemanager"), &binary)
        .context("the baseline build left no cachemanager binary")?;
    let tree_arg = tree.to_string_lossy().into_owned();
    let _ = crate::run("git", &["worktree", "remove", "--force", &tree_arg], &[]);
    Ok(Baseline { binary, label })
}
