//! The hit path's own work, without sockets: `GET /users/{uuid}` over the
//! seed's ten users and the ceiling `GET /health/live`, through the service's
//! own endpoint (routers, guard, metrics, typed cache, backend stack), one
//! request at a time, in process.
//!
//! Over a socket, callgrind's counts move by several hundred instructions
//! per request from one run to the next (how often workers park and wake);
//! here they do not, so two builds compare to within a few instructions.
//! Settings come from the environment as for the binary (the memory
//! backend by default; `CACHEMANAGER__CACHE__BACKEND=redis REDIS_URL=...
//! CACHEMANAGER__CACHE__NEAR__ENABLED=true` for the near cache). The recipe
//! is in docs/PERFORMANCE.md, "Profiles":
//!
//! ```bash
//! cargo build --release -p app --example hit_profile
//! for n in 10000 20000; do
//!   valgrind --tool=callgrind --toggle-collect='*requests*' \
//!     target/release/examples/hit_profile users $n
//! done
//! ```
//!
//! Only what runs inside `requests` is counted (the background tasks are
//! not); the difference of the two totals over 10,000 is one request's
//! count (the warm-up cancels out). The same with `live` for the ceiling.

#![allow(missing_docs, clippy::print_stderr)]

use std::collections::HashMap;

use app::{Application, Settings};
use poem::endpoint::BoxEndpoint;
use poem::http::{StatusCode, Uri};
use poem::{Endpoint, Request};

/// The seed's ten sample users (the default SQLite store imports them).
fn user_paths() -> Vec<bytes::Bytes> {
    (1..=10)
        .map(|n| format!("/users/550e8400-e29b-41d4-a716-4466554400{n:02}").into())
        .collect()
}

/// `n` requests for `paths` in turn, each answered in full (its body read);
/// how many answered 200. Each URI is parsed from its text here, as hyper
/// parses a request line.
async fn requests(endpoint: &BoxEndpoint<'static>, paths: &[bytes::Bytes], n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let Ok(uri) = Uri::from_maybe_shared(paths[i % paths.len()].clone()) else {
            continue;
        };
        let Ok(response) = endpoint.call(Request::builder().uri(uri).finish()).await else {
            continue;
        };
        let good = response.status() == StatusCode::OK;
        if response.into_body().into_bytes().await.is_ok() && good {
            ok += 1;
        }
    }
    ok
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (which, n) = match args.as_slice() {
        [which, n] => (which.as_str(), n.parse::<usize>()?),
        _ => anyhow::bail!("usage: hit_profile users|live N"),
    };
    let paths = match which {
        "users" => user_paths(),
        "live" => vec![bytes::Bytes::from_static(b"/health/live")],
        other => anyhow::bail!("unknown case {other}: users or live"),
    };
    let mut env: HashMap<String, String> = std::env::vars().collect();
    env.entry("CACHEMANAGER__SERVER__PORT".into())
        .or_insert_with(|| "0".into());
    env.entry("RUST_LOG".into())
        .or_insert_with(|| "warn".into());
    let settings = Settings::load(None, &env)?;
    // One worker, as deterministic as a runtime gets; the service's
    // background tasks run on it too, outside `measured`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let application = Application::build(settings).await?;
        let endpoint = application.endpoint();
        // Warm: every user read once (cached), the near cache armed.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        requests(endpoint, &user_paths(), 30).await;
        let ok = requests(endpoint, &paths, n).await;
        eprintln!("{which}: {ok} of {n} requests answered 200");
        anyhow::Ok(())
    })
}
