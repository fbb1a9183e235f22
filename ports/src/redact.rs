//! Whether cache keys appear in logs and spans. Keys may carry personal data
//! (an e-mail address as a key, a user's uuid), so by default a log line
//! names the key's namespace only.
//!
//! One switch for the process, like the log subscriber it serves: set it once
//! at start-up ([`show_keys_in_logs`]), from the `log.keys` setting.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static SHOW_KEYS: AtomicBool = AtomicBool::new(false);

/// Lets (or stops) whole keys appear in logs and spans.
pub fn show_keys_in_logs(on: bool) {
    SHOW_KEYS.store(on, Ordering::Relaxed);
}

/// Whether whole keys may appear in logs and spans.
pub(crate) fn keys_shown() -> bool {
    SHOW_KEYS.load(Ordering::Relaxed)
}

/// A key as logs show it: whole when keys may be logged, else its namespace
/// followed by `:<redacted>`.
#[derive(Debug, Clone, Copy)]
pub struct LoggedKey<'a>(pub &'a str);

impl fmt::Display for LoggedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if SHOW_KEYS.load(Ordering::Relaxed) {
            return f.write_str(self.0);
        }
        // A segment never contains `:` (it is escaped), so the namespace is
        // everything before the last one.
        match self.0.rsplit_once(':') {
            Some((namespace, _)) => write!(f, "{namespace}:<redacted>"),
            None => f.write_str("<redacted>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_shows_its_namespace_only_unless_keys_are_allowed() {
        // One test flips the switch: tests run in parallel threads.
        assert_eq!(
            LoggedKey("user:uuid-to-id:550e8400-e29b-41d4-a716-446655440001").to_string(),
            "user:uuid-to-id:<redacted>"
        );
        assert_eq!(LoggedKey("bare").to_string(), "<redacted>");
        show_keys_in_logs(true);
        let shown = LoggedKey("user:uuid-to-id:42").to_string();
        show_keys_in_logs(false);
        assert_eq!(shown, "user:uuid-to-id:42");
    }
}
