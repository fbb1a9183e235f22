//! `cachemanager healthcheck`: a liveness probe that needs no curl, for
//! container images that have nothing but the binary.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::settings::Settings;

/// Asks the instance these settings describe for `GET /health/live`.
///
/// A wildcard bind address (`0.0.0.0`, `::`) is probed on loopback.
///
/// # Errors
/// Why the instance is not live: no connection, no answer in `timeout`, or a
/// status other than 200.
pub fn probe_liveness(settings: &Settings, timeout: Duration) -> Result<(), String> {
    let host = match settings.server.host {
        host if host.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        host => host,
    };
    let address = SocketAddr::new(host, settings.server.port);
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send to {address}: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("no answer from {address}: {e}"))?;
    match &head {
        b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(()),
        other => Err(format!(
            "{address} answered {}",
            String::from_utf8_lossy(other)
        )),
    }
}
