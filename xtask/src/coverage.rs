//! `cargo xtask coverage`: line coverage of the unit and integration suites
//! (the outage tests aside: they measure latency and run alone in CI), per
//! crate, with cargo-llvm-cov (source-based coverage from rustc itself).
//! It prepares the machine as `cargo xtask ci` does (tools, Docker, the
//! integration suite's images) before the instrumented run.
//!
//! Installs what it lacks: the `llvm-tools` rustup component and
//! `cargo-llvm-cov` from crates.io. Not part of `cargo xtask ci`: an
//! instrumented build of the whole workspace doubles its time. The figures go
//! to docs/COVERAGE.md by hand, with their date.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

fn ensure_tools() -> Result<()> {
    crate::run("rustup", &["component", "add", "llvm-tools-preview"], &[])
        .context("cannot add the llvm-tools component: rustup component add llvm-tools-preview")?;
    if !crate::setup::succeeds("cargo", &["llvm-cov", "--version"]) {
        println!("installing cargo-llvm-cov from crates.io");
        crate::run("cargo", &["install", "--locked", "cargo-llvm-cov"], &[])
            .context("cannot install cargo-llvm-cov: cargo install --locked cargo-llvm-cov")?;
    }
    Ok(())
}

/// Runs the suites under coverage and prints lines covered per crate.
pub fn coverage() -> Result<()> {
    ensure_tools()?;
    // What the suites need, as `cargo xtask ci` prepares it: promtool and
    // the other tools, Docker, and every image the integration suite runs.
    crate::setup::ensure_docker()?;
    crate::setup::ensure_tools()?;
    crate::images::ensure_test_images(false)?;
    let report = crate::target_dir().join("coverage.json");
    let report_text = report.display().to_string();
    let ran = crate::run(
        "cargo",
        &[
            "llvm-cov",
            "--workspace",
            "--exclude",
            "xtask",
            "--locked",
            "--json",
            "--summary-only",
            "--output-path",
            &report_text,
            "--",
            "--skip",
            "outage::",
        ],
        &[],
    );
    // The containers a test binary shares (its PostgreSQL and Redis
    // Cluster) outlive it, as after `cargo test`: removed as `ci` does.
    crate::remove_test_containers()?;
    ran?;
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report).with_context(|| format!("cannot read {report_text}"))?,
    )?;
    let Some(files) = json["data"][0]["files"].as_array() else {
        bail!("no files in {report_text}");
    };
    let root = crate::workspace_root().display().to_string();
    // crate -> (lines covered, lines)
    let mut per_crate: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for file in files {
        let name = file["filename"].as_str().unwrap_or_default();
        let Some(relative) = name.strip_prefix(&root) else {
            continue;
        };
        let krate = relative
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let lines = &file["summary"]["lines"];
        let entry = per_crate.entry(krate).or_default();
        entry.0 += lines["covered"].as_u64().unwrap_or(0);
        entry.1 += lines["count"].as_u64().unwrap_or(0);
    }
    println!("\n| crate | lines covered | lines | % |\n| --- | ---: | ---: | ---: |");
    let (mut covered, mut total) = (0, 0);
    for (krate, (c, t)) in &per_crate {
        covered += c;
        total += t;
        println!("| {krate} | {c} | {t} | {:.1} |", percent(*c, *t));
    }
    println!(
        "| all | {covered} | {total} | {:.1} |",
        percent(covered, total)
    );
    Ok(())
}

fn percent(covered: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    covered as f64 * 100.0 / total as f64
}
