//! Request types whose document states the rule and whose parser lets the
//! handler enforce it: a uuid path parameter and a list of uuids.
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
