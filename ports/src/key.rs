//! Key building: `{namespace}:{segment}`, where no segment can escape its
//! namespace, or `<namespace>:{<b>}:<segment>` with a hash-tag bucket `b`
//! (Redis Cluster; the braces are the hash tag).

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

/// Builds the key of `key` in one of `buckets` hash-tag buckets:
/// `<namespace>:{<b>}:<segment>` (the braces are the hash tag), where `b`
/// is [`key_bucket`] of the segment.
/// On a Redis Cluster only the tag (`b`) decides the slot, so a batch of
/// keys from one namespace falls in at most `buckets` slots, whatever its
/// size. `buckets` 0 or 1: the plain [`full_key`].
///
/// Every program reading the namespace must build its keys the same way
/// (the same `buckets`): see `CachePolicy::with_key_buckets`.
pub fn bucketed_key<K: CacheKey + ?Sized>(namespace: &str, key: &K, buckets: u16) -> String {
    if buckets <= 1 {
        return full_key(namespace, key);
    }
    let mut segment = String::with_capacity(40);
    key.write_segment(&mut segment);
    let bucket = key_bucket(&segment, buckets);
    let mut out = String::with_capacity(namespace.len() + segment.len() + 10);
    out.push_str(namespace);
    out.push_str(":{");
    out.push_str(itoa::Buffer::new().format(bucket));
    out.push_str("}:");
    out.push_str(&segment);
    out
}

/// The bucket of a key segment: 64-bit FNV-1a of its bytes, modulo
/// `buckets` (at least 1). Fixed by this contract, not by the build: every
/// version and every instance puts a key in the same bucket.
pub fn key_bucket(segment: &str, buckets: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = segment.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // The remainder is below `buckets`, a u16.
    (hash % u64::from(buckets.max(1))) as u16
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
    fn a_bucketed_key_keeps_its_namespace_prefix_and_tags_its_bucket() {
        let key = bucketed_key("user:record", "550e8400-e29b-41d4-a716-446655440001", 16);
        let bucket = key_bucket("550e8400-e29b-41d4-a716-446655440001", 16);
        assert_eq!(
            key,
            format!("user:record:{{{bucket}}}:550e8400-e29b-41d4-a716-446655440001")
        );
        // The prefix a near cache tracks, and a SCAN pattern, still match.
        assert!(key.starts_with("user:record:"));
    }

    #[test]
    fn key_buckets_are_fixed_by_the_contract() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; of "" the offset basis.
        assert_eq!(key_bucket("a", 16), (0xaf63_dc4c_8601_ec8c_u64 % 16) as u16);
        assert_eq!(key_bucket("", 7), (0xcbf2_9ce4_8422_2325_u64 % 7) as u16);
        assert_eq!(key_bucket("anything", 1), 0);
    }

    #[test]
    fn no_buckets_is_the_plain_key() {
        assert_eq!(bucketed_key("ns", &42_u32, 0), full_key("ns", &42_u32));
        assert_eq!(bucketed_key("ns", &42_u32, 1), full_key("ns", &42_u32));
    }

    #[test]
    fn many_keys_spread_over_every_bucket() {
        let mut counts = [0_u32; 16];
        for n in 0..16_000_u32 {
            let uuid = format!("550e8400-e29b-41d4-a716-{n:012}");
            counts[usize::from(key_bucket(&uuid, 16))] += 1;
        }
        // 1,000 expected in each; a bucket outside 800..1,200 would mean a
        // skewed hash, not noise (sd ~31).
        assert!(
            counts.iter().all(|&c| (800..1_200).contains(&c)),
            "{counts:?}"
        );
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
        fn a_bucketed_key_is_the_plain_key_with_its_segments_tag(
            key in any::<String>(),
            buckets in 2_u16..,
        ) {
            let plain = full_key("user:record", key.as_str());
            let segment = &plain["user:record:".len()..];
            let tag = key_bucket(segment, buckets);
            prop_assert_eq!(
                bucketed_key("user:record", key.as_str(), buckets),
                format!("user:record:{{{tag}}}:{segment}")
            );
        }

        #[test]
        fn integer_keys_are_their_decimal_form(n in any::<i64>()) {
            prop_assert_eq!(full_key("ns", &n), format!("ns:{n}"));
        }
    }
}
