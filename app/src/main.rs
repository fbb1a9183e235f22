//! `cachemanager`: the User API over the CacheManager cache layer.
//!
//! `cachemanager [--config FILE]`: serves with the settings from the defaults,
//! the file, and the environment (see README.md). A bad setting prints one
//! line and exits with status 2.
//!
//! `cachemanager healthcheck [--config FILE]`: asks a running instance (same
//! settings) for `/health/live`; exits 0 when it answers 200, 1 otherwise.
//! For container healthchecks in images that have no curl.
//!
//! `cachemanager migrate`: applies the store's schema migrations and exits.
//! `cachemanager import FILE`: imports a JSON array of users into the store.
//! `cachemanager import --generate N`: adds N synthetic users (benchmarks).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use app::{Application, Settings, shutdown_signal, telemetry};

/// The allocator: mimalloc, not glibc's `malloc`. With two tokio workers, a
/// buffer allocated on one (the Redis driver's task reads a reply) is often
/// freed on the other (the request's task drops it), and glibc then takes
/// the owning arena's lock: perf put 96 % of the service's `futex` calls
/// under Redis hits in `malloc`/`free` lock waits and wakes (about one per
/// request). mimalloc frees to the owning thread's page without a lock.
/// Measured on hit/redis (`wrk -t2 -c64`, six alternating rounds, medians):
/// 44,261 requests/s and 24.5 µs of the service's CPU each, against 38,087
/// and 29.6 µs with glibc. The price is memory (its per-thread segments):
/// peak RSS 54 MB against 29 serving hits, 95 against 68 serving misses;
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` in the environment gives some of it
/// back. See docs/PERFORMANCE.md, "The allocator".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: cachemanager [healthcheck | migrate | import FILE | import --generate N] [--config FILE] | --help | --version";

const HELP: &str = "\
cachemanager: the User API over the CacheManager cache layer.

usage:
  cachemanager [--config FILE]              serve (settings: defaults, FILE or
                                            config/default.toml, then the environment)
  cachemanager healthcheck [--config FILE]  exit 0 when a running instance answers
                                            /health/live, 1 otherwise
  cachemanager migrate [--config FILE]      apply the store's schema migrations
  cachemanager import FILE [--config FILE]  import a JSON array of users into the store
                                            (id, uuid, first_name, last_name, email)
  cachemanager import --generate N          add N synthetic users (benchmarks, demos)
  cachemanager --help | -h                  this text
  cachemanager --version | -V               the version

Settings are keys such as cache.backend, set in the file or as
CACHEMANAGER__CACHE__BACKEND; the seed's REDIS_URL, REDIS_PASSWORD and
CACHE_DEFAULT_TTL work too. Every key and its default: config/default.toml.
A bad setting prints one line naming the key and exits with status 2.";

/// Writes one line to stderr. Logging is not set up yet (its format is itself
/// a setting), and a person at a terminal must see why the service did not start.
fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "cachemanager: {message}");
    ExitCode::from(code)
}

/// The multi-threaded runtime, with `server.worker_threads` workers (0: one
/// per core the process may use) and tokio's LIFO slot as `server.lifo_slot`
/// says. The slot runs the task a worker last woke before any other: the
/// Redis connection's writer, woken by the request that queued a command,
/// then runs before the other requests ready on that worker have queued
/// theirs, and each write carries one command. Without it, they share writes
/// (docs/PERFORMANCE.md, "The scheduler's LIFO slot"). Turning it off is an
/// unstable tokio option, compiled only with `--cfg tokio_unstable`.
fn runtime(lifo_slot: bool, worker_threads: usize) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    #[cfg(tokio_unstable)]
    if !lifo_slot {
        builder.disable_lifo_slot();
        tracing::debug!("tokio's LIFO slot is off (server.lifo_slot = false)");
    }
    #[cfg(not(tokio_unstable))]
    if !lifo_slot {
        tracing::warn!(
            "server.lifo_slot = false is not honoured: this build lacks --cfg tokio_unstable \
             (set by .cargo/config.toml; a RUSTFLAGS variable replaces it), so tokio keeps its LIFO slot"
        );
    }
    builder
}

/// What the command line asks for.
struct Command {
    action: Action,
    config: Option<PathBuf>,
}

/// The subcommand.
enum Action {
    Serve,
    Healthcheck,
    Migrate,
    Import(PathBuf),
    Generate(u64),
}

/// What to do, from the command line.
enum Invocation {
    Run(Command),
    /// Print this to stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

fn parse_invocation(args: &[String]) -> Result<Invocation, String> {
    match args {
        [flag] if flag == "--help" || flag == "-h" => Ok(Invocation::Print(HELP.to_owned())),
        [flag] if flag == "--version" || flag == "-V" => Ok(Invocation::Print(format!(
            "cachemanager {}",
            env!("CARGO_PKG_VERSION")
        ))),
        _ => parse_args(args).map(Invocation::Run),
    }
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let (action, rest) = match args {
        [first, rest @ ..] if first == "healthcheck" => (Action::Healthcheck, rest),
        [first, rest @ ..] if first == "migrate" => (Action::Migrate, rest),
        [first, flag, n, rest @ ..] if first == "import" && flag == "--generate" => {
            let n =
                n.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("--generate takes a positive number of users, got '{n}'")
                })?;
            (Action::Generate(n), rest)
        }
        [first, file, rest @ ..] if first == "import" && !file.starts_with("--") => {
            (Action::Import(PathBuf::from(file)), rest)
        }
        [first, ..] if first == "import" => {
            return Err(format!("import needs a FILE or --generate N; {USAGE}"));
        }
        _ => (Action::Serve, args),
    };
    parse_config(rest).map(|config| Command { action, config })
}

fn parse_config(args: &[String]) -> Result<Option<PathBuf>, String> {
    match args {
        [] => Ok(None),
        [flag, path] if flag == "--config" => Ok(Some(PathBuf::from(path))),
        [flag] if flag.starts_with("--config=") => {
            Ok(Some(PathBuf::from(&flag["--config=".len()..])))
        }
        _ => Err(format!("unexpected arguments; {USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_invocation(&args) {
        Ok(Invocation::Run(command)) => command,
        Ok(Invocation::Print(text)) => {
            // The one place the binary writes to stdout: what was asked for.
            return match writeln!(std::io::stdout(), "{text}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
        Err(message) => return fail(2, &message),
    };
    // Only variables that are valid Unicode; others cannot be settings.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let settings = match Settings::load(command.config.as_deref(), &env) {
        Ok(settings) => settings,
        Err(error) => return fail(2, &error.to_string()),
    };
    if matches!(command.action, Action::Healthcheck) {
        return match app::probe_liveness(&settings, std::time::Duration::from_secs(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => fail(1, &format!("unhealthy: {reason}")),
        };
    }
    // Held to the end of main: dropping it flushes the queued log lines.
    let _logs = match telemetry::init(&settings.log) {
        Ok(guard) => guard,
        Err(error) => return fail(1, &format!("cannot start the log writer: {error}")),
    };

    let runtime = match runtime(settings.server.lifo_slot, settings.server.worker_threads).build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("cannot start the async runtime: {error}")),
    };
    tracing::debug!(
        workers = runtime.metrics().num_workers(),
        "the runtime's worker threads (server.worker_threads)"
    );
    let maintenance = match command.action {
        Action::Migrate => Some(app::Maintenance::Migrate),
        Action::Import(file) => Some(app::Maintenance::Import(file)),
        Action::Generate(n) => Some(app::Maintenance::Generate(n)),
        Action::Serve | Action::Healthcheck => None,
    };
    if let Some(task) = maintenance {
        return runtime.block_on(async {
            match app::maintain(&settings, task).await {
                Ok(done) => {
                    tracing::info!("{done}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    tracing::error!(%error, "failed");
                    fail(1, &error.to_string())
                }
            }
        });
    }
    runtime.block_on(async {
        let application = match Application::build(settings).await {
            Ok(application) => application,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return fail(1, &error.to_string());
            }
        };
        match application.run_until_stopped(shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
