//! The `cachemanager` binary as a user runs it: bad settings, a clean start,
//! a graceful stop.

// A failed unwrap in a test helper is a failed test, with its cause.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cachemanager");

fn run_with(vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(std::env::temp_dir());
    for (k, v) in vars {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn a_bad_setting_prints_one_line_naming_the_key_and_exits_2() {
    let cases = [
        ("CACHEMANAGER__CACHE__BACKEND", "memcached", "cache.backend"),
        ("CACHEMANAGER__SERVER__PORT", "99999", "server.port"),
        ("REDIS_URL", "http://nope", "redis.url"),
        ("CACHE_DEFAULT_TTL", "-1", "cache.default_ttl_secs"),
        (
            "CACHEMANAGER__USERS__FILE",
            "/nonexistent/users.json",
            "users.file",
        ),
        ("CACHEMANAGER__CACHE__TLL", "60", "cache.tll"),
        ("CACHEMANAGER__LOG__FILTER", "app=notalevel", "log.filter"),
    ];
    for (var, value, key) in cases {
        let output = run_with(&[(var, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn help_and_version_print_to_stdout_and_exit_0() {
    for flag in ["--help", "-h"] {
        let output = Command::new(BIN).arg(flag).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{flag}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("usage") && stdout.contains("healthcheck"),
            "{stdout}"
        );
        assert!(output.stderr.is_empty());
    }
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("cachemanager {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_arguments_exit_2_with_usage() {
    let output = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[cfg(unix)]
#[test]
fn serves_the_sample_users_with_no_redis_then_stops_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CACHEMANAGER__SERVER__PORT", port.to_string())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        if let Some(response) = get(port, "/users/550e8400-e29b-41d4-a716-446655440001") {
            break response;
        }
        assert!(Instant::now() < deadline, "the service did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("john.doe@example.com"), "{response}");
    let health = get(port, "/health").unwrap();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"memory\""),
        "{health}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
#[test]
fn on_sigterm_it_turns_unready_and_keeps_serving_for_the_shutdown_delay() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CACHEMANAGER__SERVER__PORT", port.to_string())
        .env("CACHEMANAGER__SERVER__SHUTDOWN_DELAY_MS", "1500")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        if let Some(response) = get(port, "/health/ready") {
            break response;
        }
        assert!(Instant::now() < deadline, "the service did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Within the delay: not ready, and still answering requests.
    std::thread::sleep(Duration::from_millis(300));
    let ready = get(port, "/health/ready").unwrap_or_default();
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("stopping"),
        "{ready}"
    );
    let user = get(port, "/users/550e8400-e29b-41d4-a716-446655440001").unwrap_or_default();
    assert!(user.starts_with("HTTP/1.1 200"), "{user}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop after the delay");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn healthcheck_exits_1_when_nothing_listens() {
    let port = free_port();
    let output = Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .env("CACHEMANAGER__SERVER__PORT", port.to_string())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unhealthy"));
}

#[cfg(unix)]
#[test]
fn healthcheck_exits_0_against_a_live_instance() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CACHEMANAGER__SERVER__HOST", "0.0.0.0")
        .env("CACHEMANAGER__SERVER__PORT", port.to_string())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let status = Command::new(BIN)
            .arg("healthcheck")
            .env_clear()
            .env("CACHEMANAGER__SERVER__HOST", "0.0.0.0")
            .env("CACHEMANAGER__SERVER__PORT", port.to_string())
            .current_dir(std::env::temp_dir())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() || Instant::now() > deadline {
            break status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(live, "healthcheck never succeeded against a live instance");
}
