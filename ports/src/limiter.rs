//! Rate-limited logging: a failure that repeats on every request is logged
//! once per window, with a count of what was left out, never once per request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Allows one event per window and counts the ones it holds back.
///
/// Lock-free and `const`-constructible, so it can live in a `static` next to
/// the log line it guards. The time base is the first use in the process.
#[derive(Debug)]
pub struct LogLimiter {
    window_ms: u64,
    /// Milliseconds since the time base of the last allowed event, plus one
    /// (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let elapsed = BASE.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

impl LogLimiter {
    /// One event per `window`.
    pub const fn new(window: Duration) -> Self {
        // `as` in a const fn: windows are seconds, far below u64::MAX ms.
        Self {
            window_ms: window.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were held
    /// back since the last one; `None` when it must not be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms().saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.window_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One caller wins the window; the others count as held back.
        match self
            .last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_passes_and_repeats_within_the_window_are_counted() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow(), Some(0));
        for _ in 0..99 {
            assert_eq!(limiter.allow(), None);
        }
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 99);
    }

    #[test]
    fn after_the_window_the_next_event_passes_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_millis(20));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(limiter.allow(), Some(2));
    }
}
