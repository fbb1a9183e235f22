//! `cargo xtask compose-smoke`: brings `docker-compose.yml` up with images made
//! on this machine (no registry), checks it end to end, and tears it down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::images;

const PROJECT: &str = "cachemanager-smoke";
const JOHN: &str = "550e8400-e29b-41d4-a716-446655440001";

/// `docker compose` (v2) or `docker-compose` (v1), whichever the machine has.
struct Compose {
    program: &'static str,
    prefix: Vec<&'static str>,
    env: Vec<(String, String)>,
}

impl Compose {
    fn detect(env: Vec<(String, String)>) -> Result<Self> {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works("docker", &["compose", "version"]) {
            return Ok(Self {
                program: "docker",
                prefix: vec!["compose"],
                env,
            });
        }
        if works("docker-compose", &["version"]) {
            return Ok(Self {
                program: "docker-compose",
                prefix: vec![],
                env,
            });
        }
        bail!(
            "neither `docker compose` nor `docker-compose` is installed (apt-get install -y docker-compose)"
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.program);
        command
            .args(&self.prefix)
            .args(["-p", PROJECT, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(crate::workspace_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let status = self.command(args).status().context("cannot run compose")?;
        if !status.success() {
            bail!("compose {} failed ({status})", args.join(" "));
        }
        Ok(())
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        let output = self
            .command(args)
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run compose")?;
        if !output.status.success() {
            bail!("compose {} failed ({})", args.join(" "), output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn container(&self, service: &str) -> Result<String> {
        let id = self.output(&["ps", "-q", service])?;
        if id.is_empty() {
            bail!("no container for service {service}");
        }
        Ok(id)
    }
}

fn inspect(container: &str, format: &str) -> String {
    Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    http_with(port, method, path, None).map(|(status, _, body)| (status, body))
}

/// One HTTP/1.1 request with a bearer token: (status, head, body).
fn http_with_auth(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
) -> Result<(u16, String, String)> {
    request(
        port,
        method,
        path,
        &format!("Authorization: Bearer {token}\r\n"),
        "",
    )
}

/// One HTTP/1.1 request with an optional JSON body: (status, head, body).
fn http_with(
    port: u16,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, String, String)> {
    let body = json.unwrap_or("");
    let content = if json.is_some() {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    request(port, method, path, &content, body)
}

/// One HTTP/1.1 request with these header lines and body: (status, head, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    content: &str,
    body: &str,
) -> Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{content}\r\n{body}"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP answer")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    Ok((status, head, body))
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what}: not within {limit:?}")
}

/// [`wait_until`] for a check that says why it fails: the last reason is
/// in the error when time runs out.
fn wait_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    let mut last = String::new();
    wait_until(what, limit, || match check() {
        Ok(()) => true,
        Err(error) => {
            last = error.to_string();
            false
        }
    })
    .with_context(|| format!("last attempt: {last}"))
}

fn check(label: &str, ok: bool, detail: impl std::fmt::Display) -> Result<()> {
    if !ok {
        bail!("{label}: {detail}");
    }
    println!("  ok  {label}");
    Ok(())
}

/// A lookup of John that must answer 200 whatever Redis is doing.
fn john_answers(app_port: u16) -> Result<()> {
    let (status, body) = http(app_port, "GET", &format!("/users/{JOHN}"))?;
    if status != 200 || !body.contains("john.doe@example.com") {
        bail!("GET /users/{JOHN} answered {status}: {body}");
    }
    Ok(())
}

fn health(app_port: u16) -> u16 {
    http(app_port, "GET", "/health")
        .map(|(status, _)| status)
        .unwrap_or(0)
}

/// The `Location` header of a response head, or "" without one.
fn location_of(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// A user created, read through the cache, changed, and deleted, over
/// PostgreSQL and Redis.
fn writes(get: &dyn Fn(&str) -> Result<String>, app_port: u16) -> Result<()> {
    let (status, head, body) = http_with(
        app_port,
        "POST",
        "/users",
        Some(r#"{"first_name":"Ada","last_name":"Lovelace","email":"ada@smoke.example.com"}"#),
    )?;
    let location = location_of(&head);
    check(
        "POST /users creates a user: 201 with Location",
        status == 201 && location.starts_with("/users/"),
        format!("{status} {location:?} {body}"),
    )?;
    let uuid = location.trim_start_matches("/users/").to_owned();
    for _ in 0..2 {
        let (status, body) = http(app_port, "GET", &location)?;
        check(
            "GET reads the new user",
            status == 200 && body.contains("Lovelace"),
            format!("{status} {body}"),
        )?;
    }
    let record = get(&format!("user:record:{uuid}"))?;
    check(
        "the read went through the cache (user:record:<uuid> in Redis)",
        record.contains("Lovelace"),
        format!("found {record:?}"),
    )?;
    let (status, _, body) = http_with(
        app_port,
        "PATCH",
        &location,
        Some(r#"{"last_name":"King"}"#),
    )?;
    check(
        "PATCH changes it",
        status == 200 && body.contains("King"),
        format!("{status} {body}"),
    )?;
    let (status, body) = http(app_port, "GET", &location)?;
    check(
        "the next GET sees the change",
        status == 200 && body.contains("King"),
        format!("{status} {body}"),
    )?;
    let (status, _) = http(app_port, "DELETE", &location)?;
    check("DELETE answers 204", status == 204, status)?;
    let (status, _) = http(app_port, "GET", &location)?;
    check("the deleted user is gone (404)", status == 404, status)?;
    Ok(())
}

/// Brings the stack up, checks it, and always takes it down again.
pub fn smoke() -> Result<()> {
    let redis_image = images::ensure_redis(false)?;
    let postgres_image = images::ensure_postgres(false)?;
    let prometheus_image = images::ensure_prometheus(false)?;
    let haproxy_image = images::ensure_haproxy(false)?;
    let app_image = images::build_app()?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let password = format!("smoke-{}-{nanos}", std::process::id());
    let (app_port, redis_port, prometheus_port, lb_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let admin_token = format!("admin-{password}");
    let env = vec![
        ("REDIS_IMAGE".to_owned(), redis_image.to_owned()),
        ("POSTGRES_IMAGE".to_owned(), postgres_image.to_owned()),
        ("POSTGRES_PASSWORD".to_owned(), format!("pg-{password}")),
        ("APP_IMAGE".to_owned(), app_image.to_owned()),
        ("REDIS_PASSWORD".to_owned(), password.clone()),
        ("APP_PORT".to_owned(), app_port.to_string()),
        ("REDIS_PORT".to_owned(), redis_port.to_string()),
        ("PROMETHEUS_IMAGE".to_owned(), prometheus_image.to_owned()),
        ("PROMETHEUS_PORT".to_owned(), prometheus_port.to_string()),
        ("HAPROXY_IMAGE".to_owned(), haproxy_image.to_owned()),
        ("LB_PORT".to_owned(), lb_port.to_string()),
        (
            "COMPOSE_PROFILES".to_owned(),
            "observability,scale".to_owned(),
        ),
        ("ADMIN_TOKEN".to_owned(), admin_token.clone()),
    ];
    let compose = Compose::detect(env)?;
    println!(
        "compose smoke: {redis_image} + {postgres_image} + {app_image} x 3 + {prometheus_image} + {haproxy_image}, API on :{app_port}, balancer on :{lb_port}"
    );
    let ports = Ports {
        app: app_port,
        redis: redis_port,
        prometheus: prometheus_port,
        balancer: lb_port,
    };
    let outcome = checks(&compose, &password, &admin_token, &ports);
    if outcome.is_err() {
        let _ = compose.run(&["logs", "--tail", "50"]);
    }
    let down = compose.run(&["down", "-v", "--remove-orphans"]);
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let mut leftovers = Vec::new();
    for kind in ["container", "network", "volume"] {
        let mut args = vec![kind, "ls", "-q", "--filter", label.as_str()];
        if kind == "container" {
            args.push("--all");
        }
        let found = Command::new("docker")
            .args(&args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if let Ok(found) = found.as_deref()
            && !found.is_empty()
        {
            leftovers.push(format!("{kind}s: {}", found.replace('\n', " ")));
        }
    }
    outcome?;
    down?;
    check(
        "down -v leaves no container, network or volume",
        leftovers.is_empty(),
        leftovers.join("; "),
    )?;
    println!("compose smoke passed");
    Ok(())
}

/// The host ports of the stack.
struct Ports {
    app: u16,
    redis: u16,
    prometheus: u16,
    /// HAProxy in front of the three instances (the `scale` profile).
    balancer: u16,
}

/// The observability profile: the admin API answers with the token, and
/// Prometheus scrapes the app (target `up`) and has seen its cache hits.
fn observability(app_port: u16, prometheus_port: u16, token: &str) -> Result<()> {
    // Hits for Prometheus to see: John is cached by now.
    john_answers(app_port)?;
    john_answers(app_port)?;
    let (status, _, body) = http_with_auth(app_port, "GET", "/admin/caches", token)?;
    check(
        "GET /admin/caches with the token: 200, the caches listed",
        status == 200 && body.contains("user:record"),
        format!("{status} {body}"),
    )?;
    let (status, _) = http(app_port, "GET", "/admin/caches")?;
    check(
        "GET /admin/caches without the token: 401",
        status == 401,
        status,
    )?;
    let took = wait_until(
        "Prometheus reports the app's target up",
        Duration::from_secs(60),
        || {
            http(prometheus_port, "GET", "/api/v1/targets")
                .is_ok_and(|(status, body)| status == 200 && body.contains("\"health\":\"up\""))
        },
    )?;
    check("Prometheus: target app:8000 up", true, format!("{took:?}"))?;
    // A scrape after the hits above (every 5 s) shows them.
    let query = "/api/v1/query?query=sum(cachemanager_cache_hits_total)";
    let mut last = String::new();
    let took = wait_until(
        "Prometheus has a non-zero hit counter",
        Duration::from_secs(60),
        || {
            let Ok((_, body)) = http(prometheus_port, "GET", query) else {
                return false;
            };
            last = body;
            hits_in(&last).is_some_and(|hits| hits > 0.0)
        },
    )
    .with_context(|| format!("last answer: {last}"))?;
    check(
        "Prometheus: sum(cachemanager_cache_hits_total) > 0",
        true,
        format!("{} after {took:?}", hits_in(&last).unwrap_or(0.0)),
    )?;
    dashboard_queries(prometheus_port)
}

/// Every query of the shipped Grafana dashboard is valid PromQL: Prometheus
/// evaluates it (`$__rate_interval` as Grafana would set it, here 1m).
fn dashboard_queries(prometheus_port: u16) -> Result<()> {
    let path = crate::workspace_root().join("docs/observability/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    let mut count = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let query = percent_encode(&expr.replace("$__rate_interval", "1m"));
            let (status, body) = http(
                prometheus_port,
                "GET",
                &format!("/api/v1/query?query={query}"),
            )?;
            if status != 200 || !body.contains("\"status\":\"success\"") {
                bail!(
                    "the dashboard's query {expr:?} ({}): Prometheus answered {status}: {body}",
                    panel["title"]
                );
            }
            count += 1;
        }
    }
    check(
        "Prometheus evaluates every query of the Grafana dashboard",
        count > 10,
        format!("{count} queries"),
    )
}

/// `text` with every byte but the unreserved ones percent-encoded (a URL's query).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The value of a one-sample instant-query answer:
/// `{"data":{"result":[{"value":[<time>,"<value>"]}]}}`.
fn hits_in(body: &str) -> Option<f64> {
    let after = body.split("\"value\":[").nth(1)?;
    let value = after.split(',').nth(1)?;
    value
        .trim_matches(|c| c == '"' || c == ']' || c == '}')
        .parse()
        .ok()
}

/// The instances HAProxy names in `X-Served-By`.
const INSTANCES: [&str; 3] = ["app-1", "app-2", "app-3"];

/// One request through the balancer: (status, the instance that answered, body).
fn balanced(
    port: u16,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> Result<(u16, String, String)> {
    let (status, head, body) = http_with(port, method, path, json)?;
    let served_by = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-served-by")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, served_by, body))
}

/// Six `GET`s of `path` through the balancer (two rounds of its round
/// robin): fails unless every answer is `status` with `needle` in its body,
/// and all three instances answered.
fn read_everywhere(lb_port: u16, path: &str, status: u16, needle: &str) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (got, served_by, body) = balanced(lb_port, "GET", path, None)?;
        if got != status || !body.contains(needle) {
            bail!("GET {path} through {served_by:?} answered {got}: {body}");
        }
        seen.insert(served_by);
    }
    if !INSTANCES.iter().all(|instance| seen.contains(*instance)) {
        bail!("GET {path}: answered by {seen:?}, not by all of {INSTANCES:?}");
    }
    Ok(())
}

/// The `scale` profile: three instances behind HAProxy over one Redis and
/// one PostgreSQL. Requests through the balancer reach all three, and a
/// write through any instance is read at once through every other (the
/// shared cache was invalidated, not merely expired).
fn scale(app_port: u16, lb_port: u16) -> Result<()> {
    let john = format!("/users/{JOHN}");
    let took = wait_for(
        "HAProxy answers through all three instances",
        Duration::from_secs(60),
        || read_everywhere(lb_port, &john, 200, "john.doe@example.com"),
    )?;
    check(
        "scale: HAProxy spreads GETs over app-1, app-2 and app-3",
        true,
        format!("{took:?}"),
    )?;
    // Created through app-1 directly, read through all three.
    let (status, head, body) = http_with(
        app_port,
        "POST",
        "/users",
        Some(r#"{"first_name":"Grace","last_name":"Hopper","email":"grace@smoke.example.com"}"#),
    )?;
    let location = location_of(&head);
    if status != 201 || !location.starts_with("/users/") {
        bail!("POST /users through app-1 answered {status} {location:?}: {body}");
    }
    read_everywhere(lb_port, &location, 200, "Hopper")?;
    check(
        "scale: a user created through app-1 is read through all three",
        true,
        "",
    )?;
    // Each instance has it cached now; changed through one of them.
    let (status, served_by, body) = balanced(
        lb_port,
        "PATCH",
        &location,
        Some(r#"{"last_name":"Murray"}"#),
    )?;
    if status != 200 || !body.contains("Murray") {
        bail!("PATCH {location} through {served_by:?} answered {status}: {body}");
    }
    read_everywhere(lb_port, &location, 200, "Murray")?;
    check(
        "scale: a change through one instance is read at once through all three",
        true,
        format!("changed through {served_by}"),
    )?;
    let (status, _) = http(app_port, "DELETE", &location)?;
    if status != 204 {
        bail!("DELETE {location} through app-1 answered {status}");
    }
    read_everywhere(lb_port, &location, 404, "not_found")?;
    check(
        "scale: a user deleted through app-1 is gone through all three (404)",
        true,
        "",
    )
}

/// A restart of `app-2` under a steady client through the balancer: no
/// request fails (the instance drains with `/health/ready` at 503 before
/// its listener closes, HAProxy takes it out and retries a refused
/// connection elsewhere), and `app-2` serves again afterwards.
fn restart_behind_balancer(compose: &Compose, lb_port: u16) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let john = format!("/users/{JOHN}");
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (done, john) = (Arc::clone(&done), john.clone());
        std::thread::spawn(move || {
            let (mut answered, mut failed) = (0_u32, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match balanced(lb_port, "GET", &john, None) {
                    Ok((200, ..)) => answered += 1,
                    Ok((status, served_by, body)) => {
                        failed.push(format!("{status} from {served_by:?}: {body}"));
                    }
                    Err(error) => failed.push(error.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (answered, failed)
        })
    };
    let started = Instant::now();
    let restarted = compose.run(&["restart", "app-2"]);
    let back = restarted.and_then(|()| {
        wait_for(
            "app-2 answers through the balancer again",
            Duration::from_secs(60),
            || read_everywhere(lb_port, &john, 200, "john.doe@example.com"),
        )
    });
    done.store(true, Ordering::Relaxed);
    let (answered, failed) = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?;
    back?;
    check(
        "scale: app-2 restarted under a steady client: no request failed, app-2 serves again",
        failed.is_empty() && answered > 0,
        format!(
            "{} of {} requests failed: {:?}",
            failed.len(),
            answered as usize + failed.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        ),
    )?;
    println!(
        "      {answered} requests answered in {:.1} s, none failed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn checks(compose: &Compose, password: &str, token: &str, ports: &Ports) -> Result<()> {
    let (app_port, redis_port) = (ports.app, ports.redis);
    // A run killed half-way may have left the project behind: start clean.
    compose.run(&["down", "-v", "--remove-orphans"])?;
    compose.run(&["up", "-d", "--no-build"])?;
    let (redis, app) = (compose.container("redis")?, compose.container("app")?);
    let postgres = compose.container("postgres")?;
    let others = [compose.container("app-2")?, compose.container("app-3")?];
    let took = wait_until(
        "every healthcheck healthy",
        Duration::from_secs(120),
        || {
            [&redis, &postgres, &app, &others[0], &others[1]]
                .iter()
                .all(|c| inspect(c, "{{.State.Health.Status}}") == "healthy")
        },
    )?;
    check(
        "redis, postgres, app, app-2 and app-3 report healthy",
        true,
        format!("{took:?}"),
    )?;

    john_answers(app_port)?;
    check("GET /users/{uuid} answers 200 over Redis", true, "")?;

    let get = |key: &str| {
        compose.output(&[
            "exec",
            "-T",
            "redis",
            "redis-cli",
            "--no-auth-warning",
            "-a",
            password,
            "GET",
            key,
        ])
    };
    let id = get(&format!("user:uuid-to-id:{JOHN}"))?;
    check(
        "user:uuid-to-id:<uuid> holds \"1\" (the seed's format)",
        id == "1",
        format!("found {id:?}"),
    )?;
    let uuid = get("user:id-to-uuid:1")?;
    check(
        "user:id-to-uuid:1 holds the uuid",
        uuid == JOHN,
        format!("found {uuid:?}"),
    )?;

    writes(&get, app_port)?;
    scale(app_port, ports.balancer)?;
    restart_behind_balancer(compose, ports.balancer)?;
    observability(app_port, ports.prometheus, token)?;

    let mut raw = TcpStream::connect(("127.0.0.1", redis_port))?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    raw.write_all(b"GET user:id-to-uuid:1\r\n")?;
    let mut answer = [0u8; 64];
    let n = raw.read(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    check(
        "Redis refuses a client without the password",
        answer.starts_with("-NOAUTH"),
        answer.trim(),
    )?;

    let started_at = inspect(&app, "{{.State.StartedAt}}");
    compose.run(&["stop", "redis"])?;
    let took = wait_until(
        "/health 503 with Redis stopped",
        Duration::from_secs(30),
        || john_answers(app_port).is_ok() && health(app_port) == 503,
    )?;
    john_answers(app_port)?;
    check(
        "Redis stopped: /health 503, /users/{uuid} still 200",
        true,
        format!("{took:?}"),
    )?;

    compose.run(&["start", "redis"])?;
    let took = wait_until(
        "/health 200 with Redis back",
        Duration::from_secs(60),
        || {
            let _ = john_answers(app_port);
            health(app_port) == 200
        },
    )?;
    let same_process = inspect(&app, "{{.State.StartedAt}}") == started_at
        && inspect(&app, "{{.RestartCount}}") == "0";
    check(
        "Redis back: /health 200 again, app not restarted",
        same_process,
        format!("after {took:?}"),
    )?;
    Ok(())
}
