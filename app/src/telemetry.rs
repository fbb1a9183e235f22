//! Logging with `tracing`: text or JSON lines, filtered by `RUST_LOG` or the
//! `log.filter` setting.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

pub mod batch;

/// Keeps the log writer's thread alive; dropping it writes what is queued.
/// Hold it until the process ends.
pub type LogGuard = batch::BatchGuard<std::io::Stderr>;

/// Installs the global subscriber. Call once, at start-up; a second call is
/// a no-op (tests may build several applications in one process).
///
/// Lines are written to stderr in batches by a background thread
/// ([`batch`]): a request never waits on the terminal or the pipe, and does
/// not wake another thread per line. Measured with the request log on, 64
/// connections, memory hits (`cargo xtask bench`, `hit/memory+reqlog`):
/// writing on the request's thread cost 21 % of the throughput. Past 8 MiB
/// buffered a line waits for room rather than being lost.
///
/// # Errors
///
/// The writer thread cannot be started.
pub fn init(settings: &LogSettings) -> std::io::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = batch::batched(std::io::stderr())?;
    // Colours only for a person at a terminal, never in a file or a collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    // try_init: an error only means a subscriber is already set.
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(guard)
}
