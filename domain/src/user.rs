//! The user model: newtypes with validating constructors.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ports::CacheKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;

/// The numeric id of a user: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(i64);

impl UserId {
    /// A user id.
    ///
    /// # Errors
    /// [`ValidationError::NonPositiveId`] for zero or a negative number.
    pub fn new(id: i64) -> Result<Self, ValidationError> {
        if id > 0 {
            Ok(Self(id))
        } else {
            Err(ValidationError::NonPositiveId(id))
        }
    }

    /// The number.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for UserId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: i64 = s
            .parse()
            .map_err(|e| format!("'{s}' is not an integer: {e}"))?;
        Self::new(n).map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl CacheKey for UserId {
    fn write_segment(&self, out: &mut String) {
        self.0.write_segment(out);
    }
}

/// The public identifier of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserUuid(Uuid);

impl UserUuid {
    /// Wraps a UUID.
    pub fn new(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// Parses any form the `uuid` crate accepts (hyphenated, simple, braced, URN).
    ///
    /// # Errors
    /// [`ValidationError::MalformedUuid`], quoting at most 64 characters of the input.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        Uuid::parse_str(text)
            .map(Self)
            .map_err(|_| ValidationError::MalformedUuid(text.chars().take(64).collect()))
    }

    /// The UUID.
    pub fn get(self) -> Uuid {
        self.0
    }
}

impl fmt::Display for UserUuid {
    /// Hyphenated lowercase: the seed's cache format (Python's `str(uuid)`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for UserUuid {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl CacheKey for UserUuid {
    fn write_segment(&self, out: &mut String) {
        let mut buf = Uuid::encode_buffer();
        out.push_str(self.0.hyphenated().encode_lower(&mut buf));
    }
}

/// A first or last name: at most 100 characters as sent, trimmed, not
/// blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    const MAX: usize = 100;

    /// A name from input; `field` names it in the error.
    ///
    /// # Errors
    /// [`ValidationError::BadName`] for a blank name, one over 100
    /// characters before it is trimmed (the API document's `maxLength`), or
    /// one that holds a control character once trimmed (`char::is_control`:
    /// a NUL, a tab or a line break inside a name is never meant, and
    /// PostgreSQL cannot store a NUL at all).
    pub fn new(field: &'static str, text: &str) -> Result<Self, ValidationError> {
        if text.chars().count() > Self::MAX {
            return Err(ValidationError::BadName { field });
        }
        let name = Self::from_store(field, text)?;
        if name.0.chars().any(char::is_control) {
            return Err(ValidationError::BadName { field });
        }
        Ok(name)
    }

    /// A name as a store of record or a cache holds it: trimmed, not blank,
    /// at most 100 characters. The rules of [`Name::new`] less the two it
    /// gained later (control characters, the length before trimming), so
    /// that a row an earlier release accepted stays readable.
    ///
    /// # Errors
    /// [`ValidationError::BadName`] for a blank or over-long name.
    pub fn from_store(field: &'static str, text: &str) -> Result<Self, ValidationError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > Self::MAX {
            return Err(ValidationError::BadName { field });
        }
        Ok(Self(text.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// An e-mail address: `local@domain`, at most 254 characters, no white
/// space and no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    const MAX: usize = 254;

    /// An e-mail address from input.
    ///
    /// # Errors
    /// [`ValidationError::BadEmail`] unless it has one `@` with text on both
    /// sides, a dot in the domain, no white space, no control character,
    /// and at most 254 characters.
    pub fn new(text: &str) -> Result<Self, ValidationError> {
        if text.chars().any(char::is_control) {
            return Err(Self::bad(text));
        }
        Self::from_store(text)
    }

    /// An e-mail address as a store of record or a cache holds it: the
    /// rules of [`Email::new`] but the one on control characters (see
    /// [`Name::from_store`]).
    ///
    /// # Errors
    /// [`ValidationError::BadEmail`] as [`Email::new`] does.
    pub fn from_store(text: &str) -> Result<Self, ValidationError> {
        if text.chars().count() > Self::MAX || text.chars().any(char::is_whitespace) {
            return Err(Self::bad(text));
        }
        match text.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@') =>
            {
                Ok(Self(text.to_owned()))
            }
            _ => Err(Self::bad(text)),
        }
    }

    /// The error for `text`, quoting its first 64 characters.
    fn bad(text: &str) -> ValidationError {
        ValidationError::BadEmail(text.chars().take(64).collect())
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A user of the reference API. Its JSON form (`{id, uuid, first_name,
/// last_name, email, version}`) is the record cache's; reading it back
/// validates every part, so a tampered record is a decode error (a miss),
/// never a bad user.
///
/// Its parts are shared: a clone is a reference count, not three copies of
/// its text. The record cache hands out clones of what it decoded, and a hit
/// took three allocations and three frees for them (docs/PERFORMANCE.md,
/// "Cutting the hit path again").
#[derive(Clone, PartialEq, Eq)]
pub struct User(Arc<UserData>);

#[derive(Clone, PartialEq, Eq, Serialize)]
struct UserData {
    id: UserId,
    uuid: UserUuid,
    first_name: Name,
    last_name: Name,
    email: Email,
    version: Version,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = &*self.0;
        f.debug_struct("User")
            .field("id", &data.id)
            .field("uuid", &data.uuid)
            .field("first_name", &data.first_name)
            .field("last_name", &data.last_name)
            .field("email", &data.email)
            .field("version", &data.version)
            .finish()
    }
}

impl Serialize for User {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// How many times a user has been written: 1 when created, one more with
/// each change. HTTP's entity tag is made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// The version of a user just created.
    pub const FIRST: Version = Version(1);

    /// A version number (as stored).
    pub fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user to create: the store gives it its id, uuid and first version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// First name.
    pub first_name: Name,
    /// Last name.
    pub last_name: Name,
    /// E-mail address (unique among users).
    pub email: Email,
}

/// A change to a user: the parts to replace (`None`: kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    /// A new first name.
    pub first_name: Option<Name>,
    /// A new last name.
    pub last_name: Option<Name>,
    /// A new e-mail address (unique among users).
    pub email: Option<Email>,
}

impl UserChanges {
    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.first_name.is_none() && self.last_name.is_none() && self.email.is_none()
    }
}

impl User {
    /// A user from already validated parts.
    pub fn new(
        id: UserId,
        uuid: UserUuid,
        first_name: Name,
        last_name: Name,
        email: Email,
    ) -> Self {
        Self(Arc::new(UserData {
            id,
            uuid,
            first_name,
            last_name,
            email,
            version: Version::FIRST,
        }))
    }

    /// The same user at `version`.
    #[must_use]
    pub fn with_version(mut self, version: Version) -> Self {
        Arc::make_mut(&mut self.0).version = version;
        self
    }

    /// How many times it has been written.
    pub fn version(&self) -> Version {
        self.0.version
    }

    /// The numeric id.
    pub fn id(&self) -> UserId {
        self.0.id
    }
    /// The public UUID.
    pub fn uuid(&self) -> UserUuid {
        self.0.uuid
    }
    /// The first name.
    pub fn first_name(&self) -> &Name {
        &self.0.first_name
    }
    /// The last name.
    pub fn last_name(&self) -> &Name {
        &self.0.last_name
    }
    /// The e-mail address.
    pub fn email(&self) -> &Email {
        &self.0.email
    }

    /// Whether both handles share one set of parts (and so are equal): a
    /// clone does, a user decoded or built again does not. Lets an adapter
    /// remember what it made of a user by the user's identity.
    pub fn shares_parts_with(&self, other: &User) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Takes the user apart, for an adapter that maps it to its own type:
    /// (id, uuid, first name, last name, e-mail). Its text is moved out when
    /// this is the only handle on it, and copied when others share it.
    pub fn into_parts(self) -> (UserId, UserUuid, Name, Name, Email) {
        let data = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
        (
            data.id,
            data.uuid,
            data.first_name,
            data.last_name,
            data.email,
        )
    }
}

/// A user as stored, before validation. Its text borrows from the input
/// where it can (no escapes): each part is copied once, into the `User`.
#[derive(Deserialize)]
struct UserParts<'a> {
    id: i64,
    #[serde(borrow)]
    uuid: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    first_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    last_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    email: std::borrow::Cow<'a, str>,
    /// Records cached before versions existed read as the first version.
    #[serde(default = "first_version")]
    version: u64,
}

fn first_version() -> u64 {
    Version::FIRST.get()
}

impl TryFrom<UserParts<'_>> for User {
    type Error = ValidationError;
    fn try_from(parts: UserParts<'_>) -> Result<Self, ValidationError> {
        Ok(User::new(
            UserId::new(parts.id)?,
            UserUuid::parse(&parts.uuid)?,
            Name::from_store("first_name", &parts.first_name)?,
            Name::from_store("last_name", &parts.last_name)?,
            Email::from_store(&parts.email)?,
        )
        .with_version(Version::new(parts.version)))
    }
}

/// Every part validated (see [`User`]); a rule broken is a decode error.
impl<'de> Deserialize<'de> for User {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parts = UserParts::deserialize(deserializer)?;
        User::try_from(parts).map_err(serde::de::Error::custom)
    }
}

/// A window of a list: `limit` items from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    limit: u32,
    offset: u32,
}

impl Page {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;
    /// The page size when none is asked for.
    pub const DEFAULT_LIMIT: u32 = 100;

    /// A page.
    ///
    /// # Errors
    /// [`ValidationError::BadLimit`] unless `1 <= limit <= MAX_LIMIT`.
    pub fn new(limit: u32, offset: u32) -> Result<Self, ValidationError> {
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(ValidationError::BadLimit {
                got: limit,
                max: Self::MAX_LIMIT,
            });
        }
        Ok(Self { limit, offset })
    }

    /// How many items at most.
    pub fn limit(self) -> u32 {
        self.limit
    }
    /// How many items to skip.
    pub fn offset(self) -> u32 {
        self.offset
    }
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: Self::DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_must_be_positive() {
        assert!(UserId::new(1).is_ok());
        assert_eq!(UserId::new(0), Err(ValidationError::NonPositiveId(0)));
        assert!("-3".parse::<UserId>().is_err());
        assert!("abc".parse::<UserId>().is_err());
        assert_eq!("42".parse::<UserId>().map(UserId::get), Ok(42));
    }

    #[test]
    fn uuid_displays_hyphenated_lowercase_like_python() {
        let uuid = UserUuid::parse("550E8400E29B41D4A716446655440001").unwrap();
        assert_eq!(uuid.to_string(), "550e8400-e29b-41d4-a716-446655440001");
        let mut key = String::new();
        uuid.write_segment(&mut key);
        assert_eq!(key, "550e8400-e29b-41d4-a716-446655440001");
    }

    #[test]
    fn malformed_uuid_is_rejected_and_quoted_briefly() {
        let long = "x".repeat(10_000);
        match UserUuid::parse(&long) {
            Err(ValidationError::MalformedUuid(quoted)) => assert_eq!(quoted.len(), 64),
            other => panic!("expected MalformedUuid, got {other:?}"),
        }
    }

    #[test]
    fn names_are_trimmed_and_must_not_be_blank() {
        assert_eq!(Name::new("first_name", "  Ada ").unwrap().as_str(), "Ada");
        assert!(Name::new("first_name", "   ").is_err());
        assert!(Name::new("first_name", &"a".repeat(101)).is_err());
        let padded = format!("{}Ada", " ".repeat(98));
        assert!(
            Name::new("first_name", &padded).is_err(),
            "101 characters as sent, as the document counts them"
        );
        assert!(
            Name::from_store("first_name", &padded).is_ok(),
            "three once trimmed"
        );
    }

    #[test]
    fn control_characters_inside_a_name_are_refused_on_input_and_read_from_a_store() {
        assert_eq!(
            Name::new("first_name", "\tAda\r\n").unwrap().as_str(),
            "Ada",
            "trimmed away first"
        );
        for bad in [
            "A\0da",
            "Ada\tLovelace",
            "Ada\nLovelace",
            "Ada\u{7f}",
            "Ada\u{85}x",
        ] {
            assert_eq!(
                Name::new("last_name", bad),
                Err(ValidationError::BadName { field: "last_name" }),
                "{bad:?} accepted"
            );
            assert!(
                Name::from_store("last_name", bad).is_ok(),
                "{bad:?}: a stored row must stay readable"
            );
        }
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert!(Email::new("john.doe@example.com").is_ok());
        for bad in [
            "",
            "john",
            "@example.com",
            "john@",
            "john@example",
            "a b@c.d",
            "a@b@c.d",
            "a@.com",
            "a\0b@c.d",
            "ab@c.d\u{7f}",
        ] {
            assert!(Email::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            Email::from_store("a\0b@c.d").is_ok(),
            "a stored address stays readable"
        );
    }

    #[test]
    fn a_record_decodes_with_and_without_escapes_and_a_broken_rule_is_an_error() {
        let plain = r#"{"id":1,"uuid":"550e8400-e29b-41d4-a716-446655440001","first_name":"Jo","last_name":"Doe","email":"jo@example.com","version":3}"#;
        let user: User = serde_json::from_str(plain).unwrap();
        assert_eq!(
            (user.first_name().as_str(), user.version()),
            ("Jo", Version::new(3))
        );
        let escaped = plain.replace("\"Jo\"", "\"Jo\\u00e3o\"");
        let user: User = serde_json::from_str(&escaped).unwrap();
        assert_eq!(user.first_name().as_str(), "Jo\u{e3}o");
        let old = plain.replace(",\"version\":3", "");
        let user: User = serde_json::from_str(&old).unwrap();
        assert_eq!(
            user.version(),
            Version::FIRST,
            "records from before versions"
        );
        let blank = plain.replace("\"Jo\"", "\"  \"");
        assert!(serde_json::from_str::<User>(&blank).is_err());
        let control = plain.replace("\"Jo\"", "\"J\\u0000o\"");
        let user: User = serde_json::from_str(&control).unwrap();
        assert_eq!(
            user.first_name().as_str(),
            "J\0o",
            "what a store held is read as it is"
        );
    }

    #[test]
    fn page_limit_is_bounded() {
        assert!(Page::new(0, 0).is_err());
        assert!(Page::new(1001, 0).is_err());
        assert_eq!(
            Page::new(10, 5).map(|p| (p.limit(), p.offset())),
            Ok((10, 5))
        );
    }
}
