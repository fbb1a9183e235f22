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

/// How often the circuit entered each state since the stack was built.
/// Counted where the state changes, so a trial that fails before anyone
/// reads the signal (half-open, then open again, within a round trip) is
/// still two entries: a reader that compared states would see none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CircuitEntries {
    /// Times it closed.
    pub closed: u64,
    /// Times it opened (again after a failed trial included).
    pub open: u64,
    /// Times it went half-open.
    pub half_open: u64,
}

impl CircuitEntries {
    /// Times the circuit entered `circuit`.
    pub fn of(&self, circuit: Circuit) -> u64 {
        match circuit {
            Circuit::Closed => self.closed,
            Circuit::Open => self.open,
            Circuit::HalfOpen => self.half_open,
        }
    }

    fn count(&mut self, circuit: Circuit) {
        let entries = match circuit {
            Circuit::Closed => &mut self.closed,
            Circuit::Open => &mut self.open,
            Circuit::HalfOpen => &mut self.half_open,
        };
        *entries = entries.saturating_add(1);
    }
}

/// What a backend stack reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackStatus {
    /// The circuit's state.
    pub circuit: Circuit,
    /// How often it entered each state.
    pub entered: CircuitEntries,
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
            entered: CircuitEntries::default(),
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

    /// Publishes the circuit's state, counting the entry when it changes; a
    /// closed circuit forgets its cause.
    pub fn set_circuit(&self, circuit: Circuit) {
        self.update(|status| {
            let changed = status.circuit != circuit;
            if changed {
                status.entered.count(circuit);
            }
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
