//! An in-process TCP proxy that injects faults between the service and Redis:
//! added latency, and a black hole (a path that stops forwarding without
//! closing, as a dropped route or a moved server looks to a client).
//!
//! There is no `tc netem` in this kernel and no toxiproxy package; a proxy in
//! the test process is enough for what these faults need, and each
//! connection can be treated apart: `black_hole_existing` freezes the
//! connections open now while new ones go through, which is a failover to a
//! new path as the client sees it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Default)]
struct State {
    /// Added to every answer from the server, in microseconds.
    latency_us: AtomicU64,
    /// Connections numbered below this forward nothing any more.
    frozen_below: AtomicU64,
    /// The next connection's number (also: how many were accepted).
    accepted: AtomicU64,
}

/// A fault-injecting proxy to one upstream address; stops when dropped.
pub struct FaultProxy {
    /// Where clients connect.
    pub address: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port for the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State::default());
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let state = accepting.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        forward(id, client, server, state).await;
                    }
                });
            }
        });
        Self {
            address,
            state,
            accept,
        }
    }

    /// `redis://127.0.0.1:{port}` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// Every answer from the server arrives `latency` later (0: none).
    /// Answers keep their order and are not serialized behind one another.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.state.latency_us.store(micros, Ordering::SeqCst);
    }

    /// The connections open now stop forwarding in both directions, and stay
    /// open (no FIN, no RST): what a black-holed path looks like. New
    /// connections forward normally.
    pub fn black_hole_existing(&self) {
        let next = self.state.accepted.load(Ordering::SeqCst);
        self.state.frozen_below.store(next, Ordering::SeqCst);
    }

    /// How many connections the proxy has accepted.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

fn frozen(state: &State, id: u64) -> bool {
    id < state.frozen_below.load(Ordering::SeqCst)
}

async fn forward(id: u64, client: TcpStream, server: TcpStream, state: Arc<State>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream_state = state.clone();
    let upstream = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let Ok(n) = client_read.read(&mut buffer).await else {
                return;
            };
            if n == 0 {
                return;
            }
            if frozen(&upstream_state, id) {
                // Swallow everything from now on, keep the socket open.
                std::future::pending::<()>().await;
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    // Answers go through a queue stamped with when each may be delivered, so
    // added latency delays every answer by the same amount without queueing
    // one behind the other's delay.
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader_state = state.clone();
    let read_answers = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let Ok(n) = server_read.read(&mut buffer).await else {
                return;
            };
            if n == 0 {
                return;
            }
            let latency = Duration::from_micros(reader_state.latency_us.load(Ordering::SeqCst));
            if queue
                .send((Instant::now() + latency, buffer[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let write_answers = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if frozen(&state, id) {
                std::future::pending::<()>().await;
            }
            if client_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The connection lives until one side closes; the other halves follow.
    tokio::select! {
        () = upstream => {}
        () = async { tokio::join!(read_answers, write_answers); } => {}
    }
}
