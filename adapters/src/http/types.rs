//! Request types whose document states the rule and whose parser lets the
//! handler enforce it: a uuid path parameter, a list of uuids, names, an
//! e-mail address and a page cursor.
//!
//! poem-openapi enforces what a schema declares (`format: uuid`, `maxItems`,
//! `uniqueItems`) with its own generic 400. These types declare the same rules
//! in the document but accept any string (any array of strings), so the
//! handler answers with the precise code the API promises (`invalid_uuid`,
//! `too_many_uuids`, `duplicate_uuids`) naming the offending value.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

/// A uuid as the client wrote it: documented as `format: uuid`, checked by
/// the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidText(pub String);

fn uuid_schema() -> MetaSchema {
    MetaSchema {
        example: Some(Value::String("550e8400-e29b-41d4-a716-446655440001".into())),
        ..MetaSchema::new_with_format("string", "uuid")
    }
}

impl Type for UuidText {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_uuid".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(uuid_schema()))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for UuidText {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

impl ParseFromJSON for UuidText {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for UuidText {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// Up to [`UuidList::MAX`] uuids, each once: documented as `maxItems` and
/// `uniqueItems` of `format: uuid` strings, checked by the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuidList(pub Vec<String>);

impl UuidList {
    /// The most uuids one lookup may name.
    pub const MAX: usize = 100;
}

impl Type for UuidList {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "array_uuid_unique_max100".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            items: Some(Box::new(MetaSchemaRef::Inline(Box::new(uuid_schema())))),
            max_items: Some(Self::MAX),
            unique_items: Some(true),
            ..MetaSchema::new("array")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for UuidList {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        let Some(Value::Array(items)) = value else {
            return Err(ParseError::expected_type(value.unwrap_or_default()));
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(ParseError::expected_type(other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl ToJSON for UuidList {
    fn to_json(&self) -> Option<Value> {
        Some(Value::Array(
            self.0.iter().cloned().map(Value::String).collect(),
        ))
    }
}

/// A JSON string field whose document states its rule (lengths, a pattern)
/// and whose parser takes any string and nothing else (poem-openapi's own
/// `String` would take `false` as `"false"`): the domain checks the rule and
/// answers `invalid_field` naming it.
macro_rules! text_field {
    ($name:ident, $schema:literal, $min:expr, $max:expr, $pattern:expr, $example:literal) => {
        text_field!(@ $name, $schema, Some($min), Some($max), $pattern, $example, false);
    };
    ($name:ident, $schema:literal, $min:expr, $max:expr, $pattern:expr, $example:literal, $nullable:expr) => {
        text_field!(@ $name, $schema, Some($min), Some($max), $pattern, $example, $nullable);
    };
    ($name:ident, $schema:literal, $pattern:expr, $example:literal) => {
        text_field!(@ $name, $schema, None, None, $pattern, $example, false);
    };
    (@ $name:ident, $schema:literal, $min:expr, $max:expr, $pattern:expr, $example:literal, $nullable:expr) => {
        #[doc = concat!("A `", $schema, "` as the client wrote it; checked by the domain or the handler.")]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $schema.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    min_length: $min,
                    max_length: $max,
                    pattern: Some($pattern.into()),
                    example: Some(Value::String($example.into())),
                    nullable: $nullable,
                    ..MetaSchema::new("string")
                }))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::String(text)) => Ok(Self(text)),
                    other => Err(ParseError::expected_type(other.unwrap_or_default())),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }

        impl ParseFromParameter for $name {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                Ok(Self(value.to_owned()))
            }
        }
    };
}

// A cache key as the admin API takes it: any text of 1 to 512 characters
// (escaped into its namespace by the cache, never a pattern).
text_field!(
    CacheKeyText,
    "string_cache_key",
    1,
    512,
    "^[\\s\\S]+$",
    "550e8400-e29b-41d4-a716-446655440001"
);

// A page cursor: what a page's `next_cursor` holds.
text_field!(
    CursorText,
    "string_cursor",
    2,
    16,
    "^u[0-9a-f]{1,15}$",
    "u2a"
);

// An `If-Match` field: `*`, or a comma-separated list of entity tags
// (RFC 9110, 13.1.1 and 8.8.3: `"opaque"` or `W/"opaque"`, empty elements
// allowed); the handler answers `bad_request` to anything else.
text_field!(
    EntityTagsText,
    "string_entity_tags",
    r#"^[ \t]*(\*|((W/)?"[!#-~]*")?([ \t]*,[ \t]*((W/)?"[!#-~]*")?)*)[ \t]*$"#,
    "\"3\""
);

/// What the domain counts as white space (Unicode's White_Space, as
/// `char::is_whitespace`), spelled out for the document's patterns so a
/// client's validator and the service agree on every character.
macro_rules! white_space {
    () => {
        r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}

/// What the domain counts as a control character (Unicode's Cc, as
/// `char::is_control`), for the same patterns.
macro_rules! control {
    () => {
        r"\u0000-\u001f\u007f-\u009f"
    };
}

/// The document's pattern for a name: white space around (trimmed), and
/// between the first and the last character that is not, no control
/// character.
macro_rules! name_pattern {
    () => {
        concat!(
            "^[",
            white_space!(),
            "]*[^",
            white_space!(),
            control!(),
            "]([^",
            control!(),
            "]*[^",
            white_space!(),
            control!(),
            "])?[",
            white_space!(),
            "]*$"
        )
    };
}

// A name: 1 to 100 characters, at least one not white space, no control
// character between the first and the last that is not.
text_field!(NameText, "string_name", 1, 100, name_pattern!(), "Ada");
// The same in a change, where `null` keeps the name.
text_field!(
    NameChange,
    "string_name_or_null",
    1,
    100,
    name_pattern!(),
    "Ada",
    true
);
/// The document's pattern for an e-mail address: one `@`, text before it, a
/// dotted domain after it that neither starts nor ends with a dot, no white
/// space and no control character (the domain's `Email` rule).
macro_rules! email_pattern {
    () => {
        concat!(
            "^[^@",
            white_space!(),
            control!(),
            "]+@[^@.",
            white_space!(),
            control!(),
            "][^@",
            white_space!(),
            control!(),
            "]*\\.[^@",
            white_space!(),
            control!(),
            "]*[^@.",
            white_space!(),
            control!(),
            "]$"
        )
    };
}

// An e-mail address, at most 254 characters.
text_field!(
    EmailText,
    "string_email",
    3,
    254,
    email_pattern!(),
    "ada.lovelace@example.com"
);
// The same in a change, where `null` keeps the address.
text_field!(
    EmailChange,
    "string_email_or_null",
    3,
    254,
    email_pattern!(),
    "ada.lovelace@example.com",
    true
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::LazyLock;

    use domain::{Email, Name};
    use poem_openapi::types::Type;
    use proptest::prelude::*;

    use super::*;

    /// What the document says of a text field: its pattern, compiled as a
    /// client would, and its lengths in characters.
    struct Documented {
        pattern: regex::Regex,
        min: Option<usize>,
        max: Option<usize>,
    }

    impl Documented {
        fn of<T: Type>() -> Self {
            let MetaSchemaRef::Inline(schema) = T::schema_ref() else {
                unreachable!("text fields are inline");
            };
            Self {
                pattern: regex::Regex::new(&schema.pattern.unwrap()).unwrap(),
                min: schema.min_length,
                max: schema.max_length,
            }
        }

        /// Whether the document admits `text`.
        fn admits(&self, text: &str) -> bool {
            let length = text.chars().count();
            self.pattern.is_match(text)
                && self.min.is_none_or(|min| length >= min)
                && self.max.is_none_or(|max| length <= max)
        }
    }

    static NAME: LazyLock<Documented> = LazyLock::new(Documented::of::<NameText>);
    static NAME_CHANGE: LazyLock<Documented> = LazyLock::new(Documented::of::<NameChange>);
    static EMAIL: LazyLock<Documented> = LazyLock::new(Documented::of::<EmailText>);
    static EMAIL_CHANGE: LazyLock<Documented> = LazyLock::new(Documented::of::<EmailChange>);

    /// Texts made of what the rules turn on: letters, `@`, dots, white
    /// space that is and is not a control character, control characters
    /// that are not white space, and text beyond ASCII.
    fn texts(longest: usize) -> impl Strategy<Value = String> {
        let alphabet = vec![
            "a", "Z", "é", "@", ".", " ", "\t", "\n", "\r", "\u{b}", "\u{85}", "\u{a0}",
            "\u{3000}", "\0", "\u{1}", "\u{1b}", "\u{7f}", "\u{9f}",
        ];
        // Mostly a plain letter, so that texts near the rules' edges (one
        // odd character in an otherwise good name) are common.
        let character = prop_oneof![2 => Just("a"), 1 => proptest::sample::select(alphabet)];
        proptest::collection::vec(character, 0..longest).prop_map(|parts| parts.concat())
    }

    /// Texts near 100 characters: a short text padded with white space on
    /// either side, or a letter repeated.
    fn long_texts() -> impl Strategy<Value = String> {
        let padding = proptest::sample::select(vec![" ", "\u{85}", "\t", "\u{3000}"]);
        (texts(4), 95..106usize, padding, 0..3u8).prop_map(|(text, length, pad, side)| {
            let fill = length.saturating_sub(text.chars().count());
            match side {
                0 => format!("{}{text}", pad.repeat(fill)),
                1 => format!("{text}{}", pad.repeat(fill)),
                _ => format!("{text}{}", "a".repeat(fill)),
            }
        })
    }

    /// Texts of the shape `local@domain.tld`, each part one of [`texts`],
    /// the same near 254 characters, and any text: most are not addresses,
    /// many nearly are.
    fn addresses() -> impl Strategy<Value = String> {
        prop_oneof![
            texts(12),
            (texts(4), texts(4), texts(4))
                .prop_map(|(local, domain, tld)| format!("{local}@{domain}.{tld}")),
            (texts(4), 250..258usize).prop_map(|(local, length)| {
                let domain = "example.com";
                let fill = length.saturating_sub(local.chars().count() + 1 + domain.len());
                format!("{}{local}@{domain}", "a".repeat(fill))
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A client that validates against the document (its pattern and
        /// lengths) and the service agree on every name.
        #[test]
        fn the_documents_name_schema_is_the_domains_rule(text in prop_oneof![texts(12), long_texts()]) {
            let admitted = NAME.admits(&text);
            prop_assert_eq!(admitted, NAME_CHANGE.admits(&text));
            prop_assert_eq!(admitted, Name::new("first_name", &text).is_ok(), "{:?}", text);
        }

        /// The same for e-mail addresses.
        #[test]
        fn the_documents_email_schema_is_the_domains_rule(text in addresses()) {
            let admitted = EMAIL.admits(&text);
            prop_assert_eq!(admitted, EMAIL_CHANGE.admits(&text));
            prop_assert_eq!(admitted, Email::new(&text).is_ok(), "{:?}", text);
        }
    }
}
