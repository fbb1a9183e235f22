//! # app — the composition root
//!
//! Reads the [`Settings`], builds the chosen cache backend and every adapter,
//! injects them into the domain, and serves HTTP until told to stop.
//! Nothing else in the workspace knows which backend runs.

mod probe;
mod settings;
mod startup;
pub mod telemetry;

pub use probe::probe_liveness;
pub use settings::{
    BackendKind, CacheSettings, DEFAULT_CLUSTER_KEY_BUCKETS, DEFAULT_FILE, LogFormat, LogSettings,
    MAX_TTL_SECS, ServerSettings, Settings, SettingsError, UsersSettings,
};
pub use startup::{
    Application, BuiltBackend, Maintenance, StartupError, build_backend, maintain, open_store,
    shutdown_signal,
};
