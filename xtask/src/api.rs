//! `cargo xtask api-check [--random]`: the running service against its own
//! OpenAPI document, with schemathesis (PyPI, pinned, in a virtual
//! environment under the target directory).
//!
//! It generates requests from the document and checks every answer: a
//! request the document allows is never refused, every status and body is
//! documented, a 405 carries `Allow`, nothing answers 500. It does so twice:
//! over SQLite with the in-memory cache, and over PostgreSQL with Redis and
//! the near cache (containers of the local images, removed after). The seed
//! is fixed so CI is repeatable; `--random` explores with a new one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// What schemathesis may take as an answer to a request the document allows:
/// its defaults, and 412, what a conditional write (`If-Match`) at another
/// version must answer (RFC 9110) however well-formed the request.
///
/// For the two conditional writes, the warning that reads "the API mostly
/// refused valid data" as a schema that is too loose (`validation_mismatch`)
/// is off: a tag schemathesis invents names no version a user is at, so
/// those writes rightly answer 412, which the warning counts as a refusal.
/// `missing_test_data` must be left out with it (schemathesis asks whether
/// either is on for the operation before it picks one); the other warnings
/// stay on.
const CONFIG: &str = r#"[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]

[[operations]]
include-operation-id = ["updateUser", "deleteUser"]
warnings = ["missing_auth", "base_url_mismatch", "missing_deserializer", "unused_openapi_auth",
  "unsupported_regex", "method_not_allowed", "constants_extraction", "unmatched_filter",
  "unresolvable_reference", "low_valid_rate", "rate_limited", "dictionary_mismatch",
  "timeout_units"]
"#;
const SEED: &str = "20261124";
/// The admin token of the instance under test (a throwaway).
const ADMIN_TOKEN: &str = "api-check-admin-token-0123456789";

/// Stops the service when dropped.
struct Service(std::process::Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shape of the service a pass checks.
#[derive(Clone, Copy)]
enum Shape {
    /// The default: SQLite, the in-memory cache.
    Embedded,
    /// Production's: PostgreSQL, Redis with the near cache.
    Production,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "SQLite, in-memory cache",
            Self::Production => "PostgreSQL, Redis and the near cache",
        }
    }
}

/// Runs schemathesis against a fresh instance of the service in each shape:
/// the embedded default, and PostgreSQL with Redis, whose answers to the same
/// requests can differ (PostgreSQL refuses text SQLite stores, Redis is a
/// second process to time out).
pub fn check(args: &[String]) -> Result<()> {
    let random = args.iter().any(|a| a == "--random");
    let st = crate::setup::python_tool("schemathesis-venv", SCHEMATHESIS, "st")?;
    // The release binary, as users run it; in CI the compose smoke has
    // built it already (a debug build of `-p app` alone would resolve other
    // features than the test build and compile tokio and all above it again).
    crate::release_build()?;
    let config = crate::target_dir().join("xtask/schemathesis.toml");
    std::fs::write(&config, CONFIG)?;
    for shape in [Shape::Embedded, Shape::Production] {
        check_shape(&st, &config, shape, random)?;
    }
    Ok(())
}

fn check_shape(
    st: &std::path::Path,
    config: &std::path::Path,
    shape: Shape,
    random: bool,
) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let binary = crate::target_dir().join("release/cachemanager");
    let mut env: Vec<(String, String)> = Vec::new();
    // Each pass on a database of its own, made afresh (generated writes must
    // not pile up); the containers are removed when the pass ends.
    let (_postgres, _redis) = match shape {
        Shape::Embedded => {
            let database = crate::target_dir().join("xtask/api-check.db");
            crate::remove_sqlite(&database);
            env.push((
                "CACHEMANAGER__STORE__URL".into(),
                format!("sqlite://{}", database.display()),
            ));
            (None, None)
        }
        Shape::Production => {
            let postgres = crate::bench::BenchPostgres::start()?;
            let redis = crate::bench::BenchRedis::start(None)?;
            env.extend(
                postgres
                    .env()
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            env.push(("CACHEMANAGER__CACHE__BACKEND".into(), "redis".into()));
            env.push(("REDIS_URL".into(), redis.url.clone()));
            if let Some(password) = &redis.password {
                env.push(("REDIS_PASSWORD".into(), password.clone()));
            }
            env.push(("CACHEMANAGER__CACHE__NEAR__ENABLED".into(), "true".into()));
            (Some(postgres), Some(redis))
        }
    };
    let name = shape.name();
    println!("==> api-check: the service over {name}");
    let _service = Service(
        Command::new(&binary)
            .env_clear()
            .envs(env)
            .env("CACHEMANAGER__SERVER__PORT", port.to_string())
            .env("CACHEMANAGER__LOG__REQUESTS", "false")
            // The admin API on, and its token given to schemathesis: its
            // operations are checked too (with and without the token).
            .env("CACHEMANAGER__ADMIN__TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::bench::get(port, "/health/live").map_or(true, |status| status != 200) {
        if Instant::now() > deadline {
            bail!("the service did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}/openapi.json");
    let config = config.display().to_string();
    let authorization = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let mut st_args = vec![
        "--config-file",
        config.as_str(),
        "run",
        url.as_str(),
        "--checks",
        "all",
        "--max-examples",
        "50",
        "--header",
        authorization.as_str(),
    ];
    if !random {
        st_args.extend(["--seed", SEED]);
    }
    // Run from the target directory: schemathesis keeps a cache of what it
    // found (`.schemathesis/`) in its working directory.
    crate::run_in(
        &crate::target_dir().join("xtask"),
        &st.display().to_string(),
        &st_args,
        &[("NO_COLOR", "1")],
    )
    .with_context(|| {
        format!("schemathesis found the service over {name} answering against its document")
    })
}
