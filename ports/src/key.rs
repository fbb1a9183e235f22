//! Key building: `{namespace}:{segment}`, where no segment can escape its namespace.

use std::fmt::Write as _;

/// A type that can name an entry inside a cache's namespace.
///
/// # Contract
/// `write_segment` appends a segment that is the same for equal keys, differs
/// for different keys, and contains none of the characters that carry meaning
/// to a key-value store: `:` (namespace separator), glob characters
/// (`*`, `?`, `[`, `]`), `{`/`}` (Redis Cluster hash tags), `%`, `\`,
/// whitespace and control characters. Numbers and UUIDs never contain them;
/// strings are percent-encoded.
pub trait CacheKey {
    /// Appends this key's segment to `out`.
    fn write_segment(&self, out: &mut String);
}

/// Builds the full key `{namespace}:{segment}` for `key`.
pub fn full_key<K: CacheKey + ?Sized>(namespace: &str, key: &K) -> String {
    let mut out = String::with_capacity(namespace.len() + 40);
    out.push_str(namespace);
    out.push(':');
    key.write_segment(&mut out);
    out
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_segment(&self, out: &mut String) {
                // itoa: the same decimal form as Display, without the
                // formatting machinery (a third of the key's cost).
                out.push_str(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
integer_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

/// Whether `c` must be percent-encoded in a string key segment.
fn needs_escape(c: char) -> bool {
    matches!(c, ':' | '*' | '?' | '[' | ']' | '{' | '}' | '%' | '\\')
        || c.is_whitespace()
        || c.is_control()
}

impl CacheKey for str {
    fn write_segment(&self, out: &mut String) {
        let mut utf8 = [0u8; 4];
        for c in self.chars() {
            if needs_escape(c) {
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "%{byte:02X}");
                }
            } else {
                out.push(c);
            }
        }
    }
}

impl CacheKey for String {
    fn write_segment(&self, out: &mut String) {
        self.as_str().write_segment(out);
    }
}

impl<T: CacheKey + ?Sized> CacheKey for &T {
    fn write_segment(&self, out: &mut String) {
        (**self).write_segment(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_are_written_in_decimal() {
        assert_eq!(full_key("user:id-to-uuid", &42_i64), "user:id-to-uuid:42");
        assert_eq!(full_key("n", &-7_i32), "n:-7");
    }

    #[test]
    fn string_keys_cannot_escape_their_namespace() {
        let key = full_key("ns", "a:b*c d\ne{f}%");
        assert_eq!(key, "ns:a%3Ab%2Ac%20d%0Ae%7Bf%7D%25");
        // Exactly one separator: the namespace's.
        assert_eq!(key.matches(':').count(), 1);
    }

    #[test]
    fn distinct_strings_give_distinct_keys() {
        // "%3A" literally and ":" must not collide.
        assert_ne!(full_key("ns", "%3A"), full_key("ns", ":"));
    }

    #[test]
    fn plain_strings_are_kept_as_they_are() {
        assert_eq!(full_key("ns", "hello-world_1.2@x"), "ns:hello-world_1.2@x");
        assert_eq!(full_key("ns", "café"), "ns:café");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_string_key_stays_inside_its_namespace(key in any::<String>()) {
            let full = full_key("ns", key.as_str());
            prop_assert!(full.starts_with("ns:"));
            let segment = &full["ns:".len()..];
            prop_assert!(!segment.contains(':'));
            let forbidden = |c: char| c.is_whitespace() || c.is_control() || ['*', '?', '[', ']', '{', '}', '\\'].contains(&c);
            prop_assert!(!segment.chars().any(forbidden), "{}", segment);
        }

        #[test]
        fn distinct_string_keys_never_collide(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(full_key("ns", a.as_str()), full_key("ns", b.as_str()));
        }

        #[test]
        fn integer_keys_are_their_decimal_form(n in any::<i64>()) {
            prop_assert_eq!(full_key("ns", &n), format!("ns:{n}"));
        }
    }
}
