//! `cachemanager`: the User API over the CacheManager cache layer.
//!
//! `cachemanager [--config FILE]`: serves with the settings from the defaults,
//! the file, and the environment (see README.md). A bad setting prints one
//! line and exits with status 2.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use app::{Application, Settings, shutdown_signal, telemetry};

const USAGE: &str = "usage: cachemanager [--config FILE]";

/// Writes one line to stderr. Logging is not set up yet (its format is itself
/// a setting), and a person at a terminal must see why the service did not start.
fn fail(code: u8, message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "cachemanager: {message}");
    ExitCode::from(code)
}

fn parse_args(args: &[String]) -> Result<Option<PathBuf>, String> {
    match args {
        [] => Ok(None),
        [flag, path] if flag == "--config" => Ok(Some(PathBuf::from(path))),
        [flag] if flag.starts_with("--config=") => {
            Ok(Some(PathBuf::from(&flag["--config=".len()..])))
        }
        [flag] if flag == "--help" || flag == "-h" => Err(USAGE.to_owned()),
        _ => Err(format!("unexpected arguments; {USAGE}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse_args(&args) {
        Ok(config) => config,
        Err(message) => return fail(2, &message),
    };
    // Only variables that are valid Unicode; others cannot be settings.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let settings = match Settings::load(config.as_deref(), &env) {
        Ok(settings) => settings,
        Err(error) => return fail(2, &error.to_string()),
    };
    telemetry::init(&settings.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("cannot start the async runtime: {error}")),
    };
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
