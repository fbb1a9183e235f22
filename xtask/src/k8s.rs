//! `cargo xtask k8s-check`: the example Kubernetes manifests in
//! docs/kubernetes/ validated against the Kubernetes API's own schemas,
//! strictly (an unknown or misspelt field fails), offline.
//!
//! The validator is `kubernetes-validate` from PyPI (it carries the schemas),
//! pinned, in a virtual environment under the target directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The validator and the Kubernetes version it checks against.
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
const KUBERNETES_VERSION: &str = "1.37.0";

fn manifests() -> Result<Vec<PathBuf>> {
    let folder = crate::workspace_root().join("docs/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .with_context(|| format!("cannot read {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no manifests in {}", folder.display());
    }
    Ok(files)
}

/// Validates every manifest; fails naming the first field that is wrong.
pub fn check() -> Result<()> {
    let validator = crate::setup::python_tool("k8s-venv", VALIDATOR, "kubernetes-validate")?;
    let files: Vec<String> = manifests()?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["--strict", "--kubernetes-version", KUBERNETES_VERSION];
    args.extend(files.iter().map(String::as_str));
    crate::run(&validator.display().to_string(), &args, &[])?;
    // The probes must name the routes that mean what they are used for.
    let deployment =
        std::fs::read_to_string(crate::workspace_root().join("docs/kubernetes/deployment.yaml"))?;
    for (probe, path) in [
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
    ] {
        let section = deployment
            .split(&format!("{probe}:"))
            .nth(1)
            .and_then(|rest| rest.lines().find(|l| l.trim_start().starts_with("path:")));
        if !section.is_some_and(|line| line.trim_end().ends_with(path)) {
            bail!("deployment.yaml: {probe} must use {path}");
        }
    }
    println!(
        "{} manifests valid against Kubernetes {KUBERNETES_VERSION}",
        files.len()
    );
    Ok(())
}
