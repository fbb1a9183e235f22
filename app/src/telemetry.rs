//! Logging with `tracing`: text or JSON lines, filtered by `RUST_LOG` or the
//! `log.filter` setting.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// Keeps the log writer's thread alive; dropping it flushes what is queued.
/// Hold it until the process ends.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. Call once, at start-up; a second call is
/// a no-op (tests may build several applications in one process).
///
/// Lines are written to stderr by a background thread (tracing-appender's
/// non-blocking writer): a request never waits on the terminal or the pipe,
/// and many requests do not contend for stderr's lock. Measured with the
/// request log on, 64 connections, memory hits (`cargo xtask bench`,
/// `hit/memory+reqlog`): writing on the request's thread cost 21 % of the
/// throughput. The queue holds 128k lines; past that a line waits for room
/// rather than being lost.
pub fn init(settings: &LogSettings) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
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
    guard
}
