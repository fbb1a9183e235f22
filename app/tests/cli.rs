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
        ("CACHEMANAGER__ADMIN__TOKEN", "short", "admin.token"),
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

/// Starts the binary on a free port with `vars`; returns it and the port.
fn start(vars: &[(&str, &str)]) -> (std::process::Child, u16) {
    spawn(vars, Stdio::null())
}

/// Starts the binary on a free port with `vars`, its log to `stderr`.
fn spawn(vars: &[(&str, &str)], stderr: Stdio) -> (std::process::Child, u16) {
    let port = free_port();
    let child = Command::new(BIN)
        .env_clear()
        .env("CACHEMANAGER__SERVER__PORT", port.to_string())
        .envs(vars.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    (child, port)
}

/// Polls `GET path` until `done` holds for the answer (10 s at most).
fn get_until(port: u16, path: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(response) = get(port, path)
            && done(&response)
        {
            return response;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (10 s at most) for the process to exit 0.
#[cfg(unix)]
fn exits_cleanly(mut child: std::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
#[test]
fn serves_the_sample_users_with_no_redis_then_stops_on_sigterm() {
    let (child, port) = start(&[]);
    let response = get_until(
        port,
        "/users/550e8400-e29b-41d4-a716-446655440001",
        "the service answers",
        |_| true,
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("john.doe@example.com"), "{response}");
    let health = get(port, "/health").unwrap();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"memory\""),
        "{health}"
    );
    sigterm(&child);
    exits_cleanly(child, "did not stop on SIGTERM");
}

#[cfg(unix)]
#[test]
fn on_sigterm_it_turns_unready_and_keeps_serving_for_the_shutdown_delay() {
    let (child, port) = start(&[("CACHEMANAGER__SERVER__SHUTDOWN_DELAY_MS", "3000")]);
    let ready = get_until(port, "/health/ready", "the service answers", |_| true);
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    sigterm(&child);
    // Within the delay: not ready, and still answering requests.
    let ready = get_until(port, "/health/ready", "readiness turns 503", |r| {
        r.starts_with("HTTP/1.1 503")
    });
    assert!(ready.contains("stopping"), "{ready}");
    let user = get(port, "/users/550e8400-e29b-41d4-a716-446655440001").unwrap_or_default();
    assert!(user.starts_with("HTTP/1.1 200"), "{user}");
    exits_cleanly(child, "did not stop after the delay");
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

/// One raw request; the whole answer.
fn request(port: u16, head: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{head}\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[cfg(unix)]
#[test]
fn json_logs_carry_the_request_span_and_never_the_admin_token() {
    let token = "json-log-test-token-0123456789";
    let (child, port) = start_logging(&[
        ("CACHEMANAGER__LOG__FORMAT", "json"),
        ("CACHEMANAGER__ADMIN__TOKEN", token),
    ]);
    let user = "550e8400-e29b-41d4-a716-446655440001";
    let _ = get(port, &format!("/users/{user}"));
    let refused = request(
        port,
        &format!("DELETE /admin/caches/user:record/keys/{user} HTTP/1.1\r\nAuthorization: Bearer not-{token}"),
    )
    .unwrap();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let answer = request(
        port,
        &format!(
            "DELETE /admin/caches/user:record/keys/{user} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nX-Request-Id: span-test-1"
        ),
    )
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let stderr = stop_logging(child);
    let removed: serde_json::Value = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "cache entries removed by an operator")
        .unwrap_or_else(|| panic!("no removal line in:\n{stderr}"));
    // Logged inside the request: the request span's fields come with it.
    let span = &removed["span"];
    assert_eq!(span["request_id"], "span-test-1", "{removed}");
    assert_eq!(
        span["http.route"], "/admin/caches/{namespace}/keys/{key}",
        "{removed}"
    );
    assert_eq!(span["http.request.method"], "DELETE", "{removed}");
    // Every admin call is logged with its outcome, the refused one too.
    let calls: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "admin call")
        .collect();
    let statuses: Vec<u64> = calls
        .iter()
        .filter_map(|c| c["http.response.status_code"].as_u64())
        .collect();
    assert_eq!(statuses, [401, 200], "{stderr}");
    assert!(!stderr.contains(token), "the token was logged");
}

/// Starts the binary on a free port with `vars`, its log piped, and waits
/// until it answers; returns it and the port.
#[cfg(unix)]
fn start_logging(vars: &[(&str, &str)]) -> (std::process::Child, u16) {
    let (child, port) = spawn(vars, Stdio::piped());
    get_until(port, "/health/live", "the service answers", |_| true);
    (child, port)
}

/// Stops a binary started by `start_logging`; returns what it logged.
#[cfg(unix)]
fn stop_logging(mut child: std::process::Child) -> String {
    sigterm(&child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = child.wait();
    stderr
}

/// What the binary logs at debug level from its start to its stop.
#[cfg(unix)]
fn startup_log(vars: &[(&str, &str)]) -> String {
    let mut vars = vars.to_vec();
    vars.push(("RUST_LOG", "debug"));
    let (child, _) = start_logging(&vars);
    stop_logging(child)
}

/// The LIFO slot is off by default where the build can turn it off (the
/// workspace's `.cargo/config.toml` sets `--cfg tokio_unstable`, which this
/// test is compiled with too), and a build that cannot says so.
#[cfg(unix)]
#[test]
fn the_lifo_slot_is_off_by_default_or_the_build_says_why_not() {
    let off = "tokio's LIFO slot is off";
    let not_honoured = "server.lifo_slot = false is not honoured";
    let default = startup_log(&[]);
    if cfg!(tokio_unstable) {
        assert!(default.contains(off), "{default}");
        assert!(!default.contains(not_honoured), "{default}");
    } else {
        assert!(default.contains(not_honoured), "{default}");
    }
    let kept = startup_log(&[("CACHEMANAGER__SERVER__LIFO_SLOT", "true")]);
    assert!(
        !kept.contains(off) && !kept.contains(not_honoured),
        "{kept}"
    );
}

/// `server.worker_threads` sizes the runtime, as the runtime itself counts
/// its workers; 0 (the default) leaves tokio's one per core.
#[cfg(unix)]
#[test]
fn the_runtime_has_as_many_workers_as_server_worker_threads_says() {
    let workers = |log: &str| -> Option<usize> {
        let line = log
            .lines()
            .find(|line| line.contains("the runtime's worker threads"))?;
        let (_, rest) = line.split_once("workers=")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for n in [1, 3] {
        let log = startup_log(&[("CACHEMANAGER__SERVER__WORKER_THREADS", &n.to_string())]);
        assert_eq!(workers(&log), Some(n), "{log}");
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let log = startup_log(&[]);
    assert_eq!(workers(&log), Some(cores), "{log}");
}
