//! The integration suite: one binary, real Redis, PostgreSQL and HAProxy in
//! containers.
//!
//! Needs Docker, their images (`cargo xtask test-images`) and `promtool`
//! (`cargo xtask setup`); fails with one line saying so otherwise.
//! `TEST_LOG=1` shows the service's logs.

// A failed unwrap in a test helper is a failed test, with its cause.
#![allow(clippy::unwrap_used)]
// The outage tests print what they measured.
#![allow(clippy::print_stdout)]

mod auth;
mod cluster;
mod coherence;
mod contract;
mod faults;
mod hostile;
mod http_e2e;
mod near;
mod observability;
mod outage;
mod round_trips;
mod scale;
mod security;
mod store;
mod tls;
mod typed_cache;
