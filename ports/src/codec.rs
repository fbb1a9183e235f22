//! Codecs: how a value becomes bytes in the backend and back.
//!
//! A codec is a zero-sized type chosen in a [`crate::CacheDefinition`], so the
//! wire format of a cache is fixed at compile time.

use std::fmt::{Display, Write as _};
use std::str::FromStr;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// Turns values of `T` into bytes and back.
///
/// # Contract
/// `decode(encode(v)) == v` for every `v` that encodes. `decode` never panics,
/// whatever the bytes: garbage is a [`CodecError::Decode`].
pub trait Codec<T>: Send + Sync + 'static {
    /// Encodes `value`.
    fn encode(value: &T) -> Result<Bytes, CodecError>;
    /// Decodes stored bytes.
    fn decode(bytes: &[u8]) -> Result<T, CodecError>;
}

/// Plain text: the value's `Display` form, read back with `FromStr`.
///
/// The seed's format: an id is stored as `42`, a UUID as its hyphenated
/// lowercase string, so this service and the Python original can share a Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextCodec;

impl<T> Codec<T> for TextCodec
where
    T: Display + FromStr,
    T::Err: Display,
{
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        let mut text = String::new();
        write!(text, "{value}").map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(Bytes::from(text))
    }

    fn decode(bytes: &[u8]) -> Result<T, CodecError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| CodecError::Decode(format!("not UTF-8: {e}")))?;
        text.parse()
            .map_err(|e: T::Err| CodecError::Decode(e.to_string()))
    }
}

/// JSON through serde: for structured values.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<T> Codec<T> for JsonCodec
where
    T: Serialize + DeserializeOwned,
{
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn text_codec_stores_integers_as_the_seed_does() {
        let bytes = <TextCodec as Codec<i64>>::encode(&42).unwrap();
        assert_eq!(&bytes[..], b"42");
        assert_eq!(<TextCodec as Codec<i64>>::decode(b"42").unwrap(), 42);
    }

    #[test]
    fn text_codec_stores_uuids_hyphenated_lowercase() {
        let id = uuid::Uuid::parse_str("550E8400-E29B-41D4-A716-446655440001").unwrap();
        let bytes = <TextCodec as Codec<uuid::Uuid>>::encode(&id).unwrap();
        assert_eq!(&bytes[..], b"550e8400-e29b-41d4-a716-446655440001");
    }

    #[test]
    fn text_codec_rejects_garbage_without_panicking() {
        for garbage in [
            &b""[..],
            b"abc",
            b"\xff\xfe",
            b"4 2",
            b"99999999999999999999999",
        ] {
            assert!(matches!(
                <TextCodec as Codec<i64>>::decode(garbage),
                Err(CodecError::Decode(_))
            ));
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        name: String,
        score: u32,
    }

    #[test]
    fn json_codec_round_trips_structs() {
        let p = Profile {
            name: "Ada".into(),
            score: 7,
        };
        let bytes = <JsonCodec as Codec<Profile>>::encode(&p).unwrap();
        assert_eq!(<JsonCodec as Codec<Profile>>::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn json_codec_reports_a_wrong_shape_as_a_decode_error() {
        assert!(matches!(
            <JsonCodec as Codec<Profile>>::decode(br#"{"name": 1}"#),
            Err(CodecError::Decode(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn text_round_trips_every_integer(n in any::<i64>()) {
            let bytes = <TextCodec as Codec<i64>>::encode(&n).unwrap();
            prop_assert_eq!(<TextCodec as Codec<i64>>::decode(&bytes).unwrap(), n);
        }

        #[test]
        fn text_round_trips_every_uuid(raw in any::<u128>()) {
            let id = uuid::Uuid::from_u128(raw);
            let bytes = <TextCodec as Codec<uuid::Uuid>>::encode(&id).unwrap();
            prop_assert_eq!(<TextCodec as Codec<uuid::Uuid>>::decode(&bytes).unwrap(), id);
        }

        #[test]
        fn json_round_trips_structured_values(v in proptest::collection::btree_map(any::<String>(), any::<(i32, bool, Option<String>)>(), 0..8)) {
            let bytes = <JsonCodec as Codec<BTreeMap<String, (i32, bool, Option<String>)>>>::encode(&v).unwrap();
            prop_assert_eq!(<JsonCodec as Codec<BTreeMap<String, (i32, bool, Option<String>)>>>::decode(&bytes).unwrap(), v);
        }

        #[test]
        fn garbage_never_panics_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = <TextCodec as Codec<i64>>::decode(&bytes);
            let _ = <TextCodec as Codec<uuid::Uuid>>::decode(&bytes);
            let _ = <JsonCodec as Codec<BTreeMap<String, i32>>>::decode(&bytes);
        }
    }
}
