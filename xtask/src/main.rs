//! Project automation, reached as `cargo xtask <command>`.
//!
//! - `ci`: exactly what CI runs: installs what the machine lacks (or names
//!   it in one line), then fmt, clippy, unit tests, the integration suite
//!   against real containers, and the rest `cargo xtask help` lists. One
//!   summary line per step.
//! - `test-images`: makes sure every image the integration suite runs exists
//!   (Redis, PostgreSQL, HAProxy): each official image if present or
//!   pullable, otherwise a local one built from the host's Debian packages
//!   (`redis-image` and `postgres-image` do one each).

// xtask talks to a person at a terminal: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod against;
mod api;
mod bench;
mod chart;
mod compose;
mod coverage;
mod images;
mod k8s;
mod microbench;
mod setup;

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <command>

commands:
  ci                    setup, test-images and Prometheus's image, then fmt, clippy,
                        unit tests, integration tests (real Redis, Redis Cluster,
                        PostgreSQL, HAProxy), outage tests (alone), compose smoke,
                        k8s-check, api-check, bench --quick (with a cluster),
                        microbench --quick, docs
  setup                 install what the test command needs and the machine lacks
                        (apt-get), or name it in one line
  redis-image [--force] make sure a Redis image exists for the integration suite
                        (official redis:7-alpine, else build cachemanager/redis:local)
  postgres-image [--force]
                        make sure a PostgreSQL image exists (official postgres:16-alpine,
                        else build cachemanager/postgres:local from Debian's PostgreSQL 15)
  test-images [--force] every image the integration suite runs: the Redis and PostgreSQL
                        images above and HAProxy (official haproxy:2.8-alpine, else
                        cachemanager/haproxy:local from Debian's); after `setup`, all
                        `cargo test --workspace` needs
  images [--force]      the test images, Prometheus (official prom/prometheus, else
                        cachemanager/prometheus:local from Debian's), and
                        cachemanager/app:local from a release build of the host's
                        binary (no registry needed)
  bench [--quick] [--redis-url URL] [--redis-mode cluster] [--only PREFIX,...]
        [--runs N] [--against REV] [--set section.key=value ...]
                        the service under wrk, each case beside the ceiling of the
                        same binary; JSON in target/bench/, a markdown table printed;
                        --against REV also runs each case with the binary of that
                        commit, turn about (target/bench/against.md); --set gives
                        every service started a setting
  bench-chart [FILE]    redraw the chart of a run from its results.json
  seed-db --users N [--url URL]
                        add N synthetic users to a store (URL, else DATABASE_URL, else
                        the default SQLite file data/cachemanager.db); the password
                        from CACHEMANAGER__STORE__PASSWORD
  microbench [--quick] [--redis-url URL]
                        criterion benchmarks of the cache core (codecs, keys, typed
                        cache against raw moka and a raw Redis GET), with a table
  coverage              line coverage per crate of the unit and integration suites
                        (cargo-llvm-cov, installed if missing; not in ci)
  api-check [--random]  the service against its OpenAPI document (schemathesis
                        from PyPI: allowed requests accepted, answers documented),
                        over SQLite, then over PostgreSQL and Redis (Docker)
  k8s-check             validate docs/kubernetes/*.yaml against the Kubernetes
                        schemas (kubernetes-validate from PyPI, strict)
  compose-smoke         bring docker-compose.yml up with those images and check it
                        end to end (lookups, keys in Redis, writes, the admin API,
                        Prometheus scraping the app, Redis stop and start)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("redis-image") => {
            images::ensure_redis(args.iter().any(|a| a == "--force")).map(|image| {
                println!("redis image for the integration suite: {image}");
            })
        }
        Some("postgres-image") => {
            images::ensure_postgres(args.iter().any(|a| a == "--force")).map(|image| {
                println!("postgres image for the integration suite: {image}");
            })
        }
        Some("test-images") => images::ensure_test_images(args.iter().any(|a| a == "--force"))
            .map(|names| println!("images for the integration suite: {}", names.join(", "))),
        Some("images") => {
            let force = args.iter().any(|a| a == "--force");
            images::ensure_test_images(force).and_then(|test| {
                let prometheus = images::ensure_prometheus(force)?;
                let app = images::build_app()?;
                println!("images: {}, {prometheus} and {app}", test.join(", "));
                Ok(())
            })
        }
        Some("compose-smoke") => compose::smoke(),
        Some("k8s-check") => k8s::check(),
        Some("api-check") => api::check(&args[1..]),
        Some("coverage") => coverage::coverage(),
        Some("setup") => setup::ensure_components()
            .and_then(|()| setup::ensure_docker())
            .and_then(|()| setup::ensure_tools()),
        Some("bench") => bench::bench(&args[1..]),
        Some("bench-chart") => bench::chart_from_json(&args[1..]),
        Some("seed-db") => seed_db(&args[1..]),
        Some("microbench") => microbench::microbench(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => {
            eprint!("unknown command '{other}'\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask seed-db --users N [--url URL]`: the service's own
/// `import --generate N` (batched inserts, one transaction per 5,000 users)
/// from a release build, timed.
fn seed_db(args: &[String]) -> Result<()> {
    let mut users: Option<u64> = None;
    let mut url = std::env::var("DATABASE_URL").ok();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--users" => {
                users = Some(
                    rest.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .context("--users needs a positive number")?,
                );
            }
            "--url" => url = Some(rest.next().context("--url needs a URL")?.clone()),
            other => bail!("unknown seed-db option {other}"),
        }
    }
    let users = users.context("seed-db needs --users N")?;
    release_build()?;
    let binary = target_dir().join("release/cachemanager");
    let root = workspace_root();
    let url =
        url.unwrap_or_else(|| format!("sqlite://{}", root.join("data/cachemanager.db").display()));
    let password = std::env::var("CACHEMANAGER__STORE__PASSWORD").unwrap_or_default();
    let env = [
        ("CACHEMANAGER__STORE__URL", url.as_str()),
        ("CACHEMANAGER__STORE__PASSWORD", password.as_str()),
    ];
    let took = bench::seed(&binary, &env, users)?;
    println!(
        "{users} users added in {:.1} s ({:.0} users/s)",
        took.as_secs_f64(),
        users as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// Removes the containers the integration suite keeps for a whole test
/// binary (its PostgreSQL, its Redis Cluster): labelled with the test
/// process's pid.
pub(crate) fn remove_test_containers() -> Result<()> {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=cachemanager.test.pid"])
        .output()
        .context("cannot run docker ps")?;
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let mut args = vec!["rm".to_owned(), "-f".to_owned()];
        args.extend(ids);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("docker", &args, &[])?;
    }
    Ok(())
}

/// Removes the SQLite database at `file` with its `-wal` and `-shm` files,
/// so a service made to use it starts on an empty store.
pub(crate) fn remove_sqlite(file: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
}

/// Runs `program args...` from the workspace root with `envs`, streaming its output.
pub(crate) fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    run_in(&workspace_root(), program, args, envs)
}

/// [`run`] from the directory `dir`.
pub(crate) fn run_in(
    dir: &std::path::Path,
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The release build every command here makes before it runs a binary: the
/// service and the measurement programs (`benches`) in one cargo invocation,
/// so one resolution of features. The compose smoke, the bench and the
/// microbench then share one set of compiled dependencies; a different
/// package set (`-p app` alone, or a crate's examples with its
/// dev-dependencies) resolves other features and rebuilds everything above
/// the crates they touch.
pub(crate) fn release_build() -> Result<()> {
    run(
        "cargo",
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "app",
            "-p",
            "benches",
        ],
        &[],
    )
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/`.
pub(crate) fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    // xtask/ sits one level below the root.
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

struct Step {
    name: &'static str,
    action: Box<dyn Fn() -> Result<()>>,
}

fn step(name: &'static str, action: impl Fn() -> Result<()> + 'static) -> Step {
    Step {
        name,
        action: Box::new(action),
    }
}

fn cargo(args: &'static [&'static str]) -> impl Fn() -> Result<()> {
    move || run("cargo", args, &[])
}

/// `cargo args...` with clippy's lints, as errors, on the workspace's crates.
///
/// `cargo clippy` is `cargo check` with `clippy-driver` (rustc with clippy's
/// lints) as the workspace's compiler wrapper and its arguments in
/// `CLIPPY_ARGS`; set on a test build, the same driver lints the crates it
/// compiles. A separate `cargo clippy` compiled every dependency once more,
/// in check mode (a check and a build share nothing). On a 2-core machine:
/// clippy 240 s and the test build 257 s before, 320 s for both now; the
/// docs step, which reused part of clippy's check, went from 61 to 114 s.
/// Every cargo call that reuses this build must pass the same wrapper, or
/// the workspace's crates are built again.
/// (The driver turns MIR optimisations off, as it does for `cargo clippy`;
/// the test build is unoptimised anyway.)
fn linted(args: &'static [&'static str]) -> impl Fn() -> Result<()> {
    move || {
        let sysroot = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .context("cannot run rustc")?;
        let sysroot = String::from_utf8_lossy(&sysroot.stdout);
        let driver = std::path::Path::new(sysroot.trim()).join("bin/clippy-driver");
        if !driver.is_file() {
            bail!(
                "{} is missing; install it and run again: rustup component add clippy",
                driver.display()
            );
        }
        let driver = driver.to_string_lossy().into_owned();
        run(
            "cargo",
            args,
            &[
                ("RUSTC_WORKSPACE_WRAPPER", driver.as_str()),
                // cargo-clippy's encoding of `-- -D warnings`.
                (
                    "CLIPPY_ARGS",
                    "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
                ),
            ],
        )
    }
}

fn ci() -> Result<()> {
    // What a fresh machine lacks is installed first, or named in one line.
    println!("\n==> xtask ci: setup");
    setup::ensure_components()?;
    setup::ensure_docker()?;
    setup::ensure_tools()?;
    let steps = [
        step("fmt", cargo(&["fmt", "--all", "--", "--check"])),
        step("images", || {
            images::ensure_test_images(false)?;
            images::ensure_prometheus(false).map(drop)
        }),
        // Clippy's lints run inside the test build (see `linted`): every
        // target clippy would check is compiled once, linted and built.
        step(
            "clippy + test build",
            linted(&[
                "test",
                "--workspace",
                "--all-targets",
                "--locked",
                "--no-run",
            ]),
        ),
        // The unit tests and the integration suite in one cargo invocation:
        // one resolution of features, so one build. Apart (`--exclude
        // tests`, then `-p tests`), each resolved what the other's
        // dependencies enable (tokio's test-util and the mocks on one side,
        // testcontainers' and reqwest's features of tokio, hyper and syn on
        // the other) and rebuilt tokio, the proc macros and all above them.
        // `outage::` names only the suite's outage module.
        step(
            "unit+integration",
            linted(&[
                "test",
                "--workspace",
                "--locked",
                "--",
                "--skip",
                "outage::",
            ]),
        ),
        // Alone and one at a time: their latency bounds must not measure other
        // tests. `--workspace` again, for the same build.
        step(
            "outage tests",
            linted(&[
                "test",
                "--workspace",
                "--locked",
                "--test",
                "integration",
                "--",
                "outage::",
                "--test-threads=1",
                "--show-output",
            ]),
        ),
        step("test containers removed", remove_test_containers),
        step("compose smoke", compose::smoke),
        step("k8s manifests", k8s::check),
        step("api contract", || api::check(&[])),
        // Short runs, so the harness cannot rot; figures are reported, not enforced.
        step("bench (quick)", || {
            bench::bench(&[
                "--quick".to_owned(),
                "--redis-mode".to_owned(),
                "cluster".to_owned(),
            ])
        }),
        step("microbench (quick)", || {
            microbench::microbench(&["--quick".to_owned()])
        }),
        step("docs", || {
            run(
                "cargo",
                &["doc", "--workspace", "--no-deps", "--locked"],
                &[("RUSTDOCFLAGS", "-D warnings")],
            )
        }),
    ];
    let mut summary = Vec::new();
    let mut failed = 0;
    for step in &steps {
        println!("\n==> xtask ci: {}", step.name);
        let started = Instant::now();
        let outcome = (step.action)();
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => summary.push(format!("  ok    {:<18} {seconds:>7.1} s", step.name)),
            Err(error) => {
                failed += 1;
                summary.push(format!(
                    "  FAIL  {:<18} {seconds:>7.1} s  {error:#}",
                    step.name
                ));
            }
        }
    }
    println!("\nxtask ci summary:");
    for line in &summary {
        println!("{line}");
    }
    if failed > 0 {
        bail!("{failed} of {} steps failed", steps.len());
    }
    println!("all {} steps passed", steps.len());
    Ok(())
}
