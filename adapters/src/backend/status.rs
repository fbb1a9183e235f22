//! The one status signal of a backend stack: what the decorators and the
//! backend report about themselves (the circuit, commands the server refuses,
//! connection rebuilds), for the health monitor and `/health`.
//!
//! Every part of a stack publishes into the same [`StatusSignal`]; readers
//! subscribe to it and never import a particular decorator's state type, so a
//! decorator can be added or removed without touching what watches the stack.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

/// Whether requests currently reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Requests reach the backend (also: the stack has no breaker).
    Closed,
    /// Requests are answered at once without the backend; it is probed in the
    /// background.
    Open,
    /// The backend answered a probe: a few trial requests go through, and
    /// decide whether the circuit closes or opens again.
    HalfOpen,
}

/// The backend answers, but refuses some commands (for Redis: `OOM` under
/// `maxmemory`, `READONLY` on a replica, `NOPERM` for an ACL user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The server's reason, never a secret.
    pub reason: String,
    /// When it was last seen.
    pub at: Instant,
}

/// The near cache's coherence, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearStatus {
    /// Whether Redis is tracking our keys for us right now: only then are
    /// entries kept in the process served.
    pub tracking: bool,
    /// Times the near cache was emptied whole (a lost tracking connection, a
    /// `FLUSHALL`).
    pub flushes: u64,
    /// While not tracking: why (never a secret).
    pub cause: Option<String>,
}

/// What a backend stack reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackStatus {
    /// The circuit's state.
    pub circuit: Circuit,
    /// While the circuit is not closed: the last failure that kept it open
    /// (never a secret), so `/health` can say why.
    pub cause: Option<String>,
    /// The last command the backend refused, if any.
    pub refusal: Option<Refusal>,
    /// How often the backend's connection has been rebuilt.
    pub rebuilds: u64,
    /// The near cache's state, when the stack has one.
    pub near: Option<NearStatus>,
}

impl Default for StackStatus {
    fn default() -> Self {
        Self {
            circuit: Circuit::Closed,
            cause: None,
            refusal: None,
            rebuilds: 0,
            near: None,
        }
    }
}

/// The shared status of one backend stack. Cheap to clone; every clone
/// publishes into and reads from the same state.
#[derive(Clone, Debug)]
pub struct StatusSignal {
    sender: Arc<watch::Sender<StackStatus>>,
}

impl Default for StatusSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusSignal {
    /// A signal with a closed circuit, no refusal and no rebuild.
    pub fn new() -> Self {
        let (sender, _) = watch::channel(StackStatus::default());
        Self {
            sender: Arc::new(sender),
        }
    }

    /// The current status.
    pub fn get(&self) -> StackStatus {
        self.sender.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<StackStatus> {
        self.sender.subscribe()
    }

    /// Changes the status; `change` returns whether it changed anything, and
    /// only then are subscribers woken.
    pub fn update(&self, change: impl FnOnce(&mut StackStatus) -> bool) {
        self.sender.send_if_modified(change);
    }

    /// Publishes the circuit's state; a closed circuit forgets its cause.
    pub fn set_circuit(&self, circuit: Circuit) {
        self.update(|status| {
            let changed = status.circuit != circuit;
            status.circuit = circuit;
            if circuit == Circuit::Closed {
                status.cause = None;
            }
            changed
        });
    }

    /// Publishes why the circuit is open (subscribers are woken only when
    /// the cause changes).
    pub fn set_cause(&self, cause: String) {
        self.update(|status| {
            let changed = status.cause.as_ref() != Some(&cause);
            status.cause = Some(cause);
            changed
        });
    }
}
