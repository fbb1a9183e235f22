//! `/users`: list, get by UUID, batch lookup, and the writes (create,
//! change, delete), with entity tags for conditional requests.

use std::sync::Arc;

use domain::{
    Email, MAX_LOOKUP, Name, NewUser, Page, User, UserChanges, UserCommands, UserError, UserId,
    UserQueries, UserUuid, ValidationError, Version,
};
use poem::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_MATCH};
use poem::http::{HeaderMap, HeaderValue};
use poem::{IntoResponse, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use serde::Serialize;
use uuid::Uuid;

use super::errors::{ErrorBody, ErrorCode, WithBadRequest, bad_request};
use super::json::JsonBody;
use super::rendered::{Rendering, Renderings};
use super::types::{
    CursorText, EmailChange, EmailText, EntityTagsText, NameChange, NameText, UuidList, UuidText,
};

#[derive(Tags)]
enum Tag {
    /// Users, served cache-aside.
    Users,
}

/// A user. The internal numeric id is not part of it: the uuid is the public
/// identifier (as in the seed), and a sequential id would invite enumeration.
#[derive(Debug, Clone, PartialEq, Eq, Object, Serialize)]
#[oai(example)]
pub struct UserDto {
    /// Public identifier (hyphenated lowercase UUID).
    pub uuid: Uuid,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// E-mail address.
    pub email: String,
}

/// A user's body from its parts: the JSON of the [`UserDto`] they make (a
/// test holds the two equal), written by hand for the hit path, from the
/// cached user it borrows. serde_json checks every byte of every string
/// against its escape table one at a time, while names and addresses almost
/// never need an escape (about 1,000 instructions of a hit's;
/// docs/PERFORMANCE.md, "Cutting the shared hit path").
fn user_json(uuid: Uuid, first_name: &str, last_name: &str, email: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + first_name.len() + last_name.len() + email.len());
    out.extend_from_slice(b"{\"uuid\":\"");
    out.extend_from_slice(
        uuid.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"first_name\":");
    json_string(&mut out, first_name);
    out.extend_from_slice(b",\"last_name\":");
    json_string(&mut out, last_name);
    out.extend_from_slice(b",\"email\":");
    json_string(&mut out, email);
    out.push(b'}');
    out
}

/// `text` as a JSON string: copied whole when nothing in it needs an
/// escape, else written by serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, text).is_err() {
        // Writing a string into a Vec cannot fail; never reached.
        out.extend_from_slice(b"\"\"");
    }
}

/// Whether any byte is a control character, `"` or `\\` (what a JSON string
/// must escape), eight bytes at a time: each test below is exact for "any
/// byte of the word" (a borrow can only spill past a byte that already
/// matched).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let any_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
        if below_space
            || any_zero(word ^ (ONES * u64::from(b'"')))
            || any_zero(word ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

impl From<User> for UserDto {
    /// Moves the user's text into the body: no copies on the hit path.
    fn from(user: User) -> Self {
        let (_id, uuid, first_name, last_name, email) = user.into_parts();
        Self {
            uuid: uuid.get(),
            first_name: first_name.into_string(),
            last_name: last_name.into_string(),
            email: email.into_string(),
        }
    }
}

impl Example for UserDto {
    fn example() -> Self {
        Self {
            uuid: Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440001),
            first_name: "John".into(),
            last_name: "Doe".into(),
            email: "john.doe@example.com".into(),
        }
    }
}

/// A page of users.
#[derive(Debug, Object, Serialize)]
pub struct UserList {
    /// The users, ordered by id.
    pub users: Vec<UserDto>,
    /// The limit applied.
    pub limit: u32,
    /// The offset applied (0 when paging by cursor).
    pub offset: u32,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many users there are, when asked for with `count=true`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// A user to create.
#[derive(Debug, Object)]
#[oai(example)]
pub struct CreateUser {
    /// First name: 1 to 100 characters, not blank (trimmed).
    pub first_name: NameText,
    /// Last name: 1 to 100 characters, not blank (trimmed).
    pub last_name: NameText,
    /// E-mail address, unique among users: `local@domain.tld`, at most 254
    /// characters, no spaces.
    pub email: EmailText,
}

impl Example for CreateUser {
    fn example() -> Self {
        Self {
            first_name: NameText("Ada".into()),
            last_name: NameText("Lovelace".into()),
            email: EmailText("ada.lovelace@example.com".into()),
        }
    }
}

/// A change to a user (a JSON merge patch): the fields given are replaced,
/// the others (absent or `null`) kept; `{}` changes nothing and answers the
/// user as it is.
#[derive(Debug, Object)]
#[oai(example)]
pub struct UpdateUser {
    /// A new first name: 1 to 100 characters, not blank.
    pub first_name: Option<NameChange>,
    /// A new last name: 1 to 100 characters, not blank.
    pub last_name: Option<NameChange>,
    /// A new e-mail address, unique among users.
    pub email: Option<EmailChange>,
}

impl Example for UpdateUser {
    fn example() -> Self {
        Self {
            first_name: None,
            last_name: Some(NameChange("King".into())),
            email: None,
        }
    }
}

/// A batch lookup: up to 100 UUIDs.
#[derive(Debug, Object)]
#[oai(example)]
pub struct LookupRequest {
    /// The UUIDs to look up: at most 100, each once.
    pub uuids: UuidList,
}

impl Example for LookupRequest {
    /// Two sample users and one unknown uuid: works as pre-filled in Swagger UI.
    fn example() -> Self {
        Self {
            uuids: UuidList(vec![
                "550e8400-e29b-41d4-a716-446655440001".into(),
                "550e8400-e29b-41d4-a716-446655440002".into(),
                "550e8400-e29b-41d4-a716-446655440099".into(),
            ]),
        }
    }
}

/// The answer to a batch lookup.
#[derive(Debug, Object, Serialize)]
pub struct LookupResponseBody {
    /// The users found, in the order asked.
    pub users: Vec<UserDto>,
    /// The UUIDs with no user, in the order asked.
    pub missing: Vec<Uuid>,
}

/// The entity tag of a user at `version`: strong (the same bytes for the
/// same version: a user body is never compressed, being small).
fn etag(version: Version) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(version.get());
    let mut tag = String::with_capacity(digits.len() + 2);
    tag.push('"');
    tag.push_str(digits);
    tag.push('"');
    tag
}

/// The same entity tag as a header value (the text moved, not copied).
fn etag_value(version: Version) -> HeaderValue {
    // Digits between quotes: always a valid header value.
    HeaderValue::try_from(etag(version)).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// A user's body with its `ETag` and `Cache-Control`, set by their typed
/// names: poem-openapi's header fields (`#[oai(header = ...)]`) parse each
/// header's name and value on every response, about 1,500 instructions of a
/// hit's (docs/PERFORMANCE.md, "Cutting the shared hit path"). The headers
/// are documented on the response variant, so the spec is the same.
pub struct TaggedUser {
    rendering: Rendering,
}

impl Payload for TaggedUser {
    const CONTENT_TYPE: &'static str = <JsonBody<UserDto> as Payload>::CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        <JsonBody<UserDto> as Payload>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <JsonBody<UserDto> as Payload>::register(registry);
    }
}

impl IntoResponse for TaggedUser {
    fn into_response(self) -> Response {
        let mut response = Response::from(poem::Body::from_bytes(self.rendering.body));
        *response.headers_mut() = self.rendering.headers;
        response
    }
}

/// What a 200 of `user` carries: its body, and its headers with
/// `cache_control` (if any).
fn render(user: &User, cache_control: Option<&HeaderValue>) -> Rendering {
    /// Parsed once, not on every response as a `&str` value would be.
    const JSON: HeaderValue =
        HeaderValue::from_static(<JsonBody<UserDto> as Payload>::CONTENT_TYPE);
    // Room for the request id the guard adds.
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(CONTENT_TYPE, JSON);
    headers.insert(ETAG, etag_value(user.version()));
    if let Some(cache_control) = cache_control {
        headers.insert(CACHE_CONTROL, cache_control.clone());
    }
    Rendering {
        body: user_json(
            user.uuid().get(),
            user.first_name().as_str(),
            user.last_name().as_str(),
            user.email().as_str(),
        )
        .into(),
        headers,
    }
}

/// How a header's weak tags compare (RFC 9110, 8.8.3.2): weakly for
/// `If-None-Match`, strongly for `If-Match`, where a weak tag matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Weak,
    Strong,
}

/// An entity tag as a client sent it (RFC 9110, 8.8.3): `"opaque"`, or
/// `W/"opaque"` when `weak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// The entity tags of an `If-Match` or `If-None-Match` field: `Some(None)`
/// for `*`, `Some(Some(tags))` for a list (empty elements are allowed and
/// skipped, RFC 9110, 5.6.1.2), `None` when the field is neither. Scanned,
/// not split on commas: a comma is a valid character inside a tag.
fn entity_tags(field: &str) -> Option<Option<Vec<EntityTag<'_>>>> {
    const OWS: [char; 2] = [' ', '\t'];
    let mut rest = field.trim_matches(OWS);
    if rest == "*" {
        return Some(None);
    }
    let mut tags = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(',') {
            rest = after.trim_start_matches(OWS);
            continue;
        }
        let (weak, quoted) = rest
            .strip_prefix("W/")
            .map_or((false, rest), |after| (true, after));
        let (opaque, after) = quoted.strip_prefix('"')?.split_once('"')?;
        if !opaque
            .bytes()
            .all(|b| b == b'!' || (b'#'..=b'~').contains(&b))
        {
            return None;
        }
        tags.push(EntityTag { weak, opaque });
        rest = after.trim_start_matches(OWS);
        if !rest.is_empty() {
            rest = rest.strip_prefix(',')?.trim_start_matches(OWS);
        }
    }
    Some(Some(tags))
}

/// The versions a field's tags name: `None` for `*`; a tag this service did
/// not make is version 0, which no user ever has; with [`Compare::Strong`]
/// weak tags are left out, so a field of only those names no version. A
/// field that is not a list of tags names no version either.
fn tags(field: &str, compare: Compare) -> Option<Vec<Version>> {
    entity_tags(field).map_or(Some(Vec::new()), |tags| versions(tags, compare))
}

/// The versions parsed tags name (see [`tags`]).
fn versions(tags: Option<Vec<EntityTag<'_>>>, compare: Compare) -> Option<Vec<Version>> {
    tags.map(|tags| {
        tags.into_iter()
            .filter(|tag| !(tag.weak && compare == Compare::Strong))
            .map(|tag| {
                tag.opaque
                    .parse::<u64>()
                    .map_or(Version::new(0), Version::new)
            })
            .collect()
    })
}

/// A cursor: the position after the last user of a page. Opaque to clients
/// (`u` and a hexadecimal number); only ever made by this service.
fn cursor_of(id: UserId) -> String {
    format!("u{:x}", id.get())
}

/// The position a cursor names: `Some(None)` is the start (`u0`).
fn cursor_from(text: &str) -> Option<Option<UserId>> {
    let hex = text.strip_prefix('u')?;
    if hex.is_empty() || hex.len() > 15 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match i64::from_str_radix(hex, 16).ok()? {
        0 => Some(None),
        n => UserId::new(n).ok().map(Some),
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum ListResponse {
    /// A page of users.
    #[oai(status = 200)]
    Ok(JsonBody<UserList>),
    /// A bad `limit`, `offset` or `cursor` (`invalid_cursor`). With a
    /// cursor, `offset` is ignored.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The user store is down or too slow (`store_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum GetResponse {
    /// The user, with its entity tag.
    #[oai(
        status = 200,
        header(
            name = "ETag",
            ty = "String",
            description = "The user's version, for `If-None-Match` and `If-Match`."
        ),
        header(
            name = "Cache-Control",
            ty = "String",
            description = "How clients and proxies may keep it (`http.cache_control`)."
        )
    )]
    Ok(TaggedUser),
    /// `If-None-Match` names the current version: the client's copy is current.
    #[oai(status = 304)]
    NotModified(
        /// The user's version.
        #[oai(header = "ETag")]
        String,
        /// How clients and proxies may keep it.
        #[oai(header = "Cache-Control")]
        String,
    ),
    /// Not a UUID (`invalid_uuid`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No user has this UUID (`not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The user is not cached and the user store is down or too slow
    /// (`store_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum LookupResponse {
    /// Users found and UUIDs missing.
    #[oai(status = 200)]
    Ok(JsonBody<LookupResponseBody>),
    /// More than 100 UUIDs (`too_many_uuids`), a malformed UUID
    /// (`invalid_uuid`), a UUID given twice (`duplicate_uuids`), or a body
    /// that is not the documented JSON (`bad_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Some users are not cached and the user store is down or too slow
    /// (`store_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum CreateResponse {
    /// Created: the user, where it lives, and its entity tag.
    #[oai(status = 201)]
    Created(
        JsonBody<UserDto>,
        /// `/users/{uuid}` of the new user.
        #[oai(header = "Location")]
        String,
        /// The user's version.
        #[oai(header = "ETag")]
        String,
    ),
    /// A field breaks a rule (`invalid_field`) or the body is not the
    /// documented JSON (`bad_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Another user has this e-mail address (`conflict`).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The user store is down or too slow (`store_unavailable`); nothing was created.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum UpdateResponse {
    /// The user as changed, with its new entity tag.
    #[oai(status = 200)]
    Ok(
        JsonBody<UserDto>,
        /// The user's new version.
        #[oai(header = "ETag")]
        String,
    ),
    /// Not a UUID (`invalid_uuid`), a field that breaks a rule
    /// (`invalid_field`), a body that is not the documented JSON, or an
    /// `If-Match` that is not `*` or a list of entity tags (`bad_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No user has this UUID (`not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// Another user has this e-mail address (`conflict`).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// `If-Match` names another version (`precondition_failed`): someone
    /// changed the user since it was read. Nothing was changed.
    #[oai(status = 412)]
    PreconditionFailed(Json<ErrorBody>),
    /// The user store is down or too slow (`store_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum DeleteResponse {
    /// Deleted.
    #[oai(status = 204)]
    Deleted,
    /// Not a UUID (`invalid_uuid`), or an `If-Match` that is not `*` or a
    /// list of entity tags (`bad_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No user has this UUID (`not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// `If-Match` names another version (`precondition_failed`).
    #[oai(status = 412)]
    PreconditionFailed(Json<ErrorBody>),
    /// The user store is down or too slow (`store_unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

macro_rules! with_bad_request {
    ($($t:ty),*) => {$(
        impl WithBadRequest for $t {
            fn bad_request(body: Json<ErrorBody>) -> Self {
                Self::BadRequest(body)
            }
        }
    )*};
}
with_bad_request!(
    ListResponse,
    GetResponse,
    LookupResponse,
    CreateResponse,
    UpdateResponse,
    DeleteResponse
);

/// Which response a domain error becomes.
enum Failure {
    BadRequest(ErrorBody),
    NotFound(ErrorBody),
    Conflict(ErrorBody),
    PreconditionFailed(ErrorBody),
    Unavailable(ErrorBody),
}

impl From<UserError> for Failure {
    fn from(error: UserError) -> Self {
        let message = error.to_string();
        match error {
            UserError::NotFoundByUuid(_) | UserError::NotFoundById(_) => {
                Failure::NotFound(ErrorBody::new(ErrorCode::NotFound, message))
            }
            UserError::TooManyUuids { .. } => {
                Failure::BadRequest(ErrorBody::new(ErrorCode::TooManyUuids, message))
            }
            UserError::Invalid(ValidationError::MalformedUuid(_)) => {
                Failure::BadRequest(ErrorBody::new(ErrorCode::InvalidUuid, message))
            }
            UserError::Invalid(ValidationError::BadLimit { .. }) => {
                Failure::BadRequest(ErrorBody::new(ErrorCode::BadRequest, message))
            }
            UserError::Invalid(_) => {
                Failure::BadRequest(ErrorBody::new(ErrorCode::InvalidField, message))
            }
            UserError::DuplicateEmail(_) => {
                Failure::Conflict(ErrorBody::new(ErrorCode::Conflict, message))
            }
            UserError::VersionMismatch { .. } => {
                Failure::PreconditionFailed(ErrorBody::new(ErrorCode::PreconditionFailed, message))
            }
            UserError::StoreUnavailable(cause) => {
                tracing::error!(error = %cause, "user store failed");
                Failure::Unavailable(ErrorBody::new(
                    ErrorCode::StoreUnavailable,
                    "the user store is unavailable; retry later",
                ))
            }
        }
    }
}

/// The answer to a failure for an operation that cannot fail that way (a
/// list never finds "no such user"): a 503 says the truth without a cause.
fn unexpected(body: &ErrorBody) -> ErrorBody {
    tracing::error!(?body, "unexpected failure for this operation");
    ErrorBody::new(
        ErrorCode::StoreUnavailable,
        "the user store is unavailable; retry later",
    )
}

fn default_limit() -> u32 {
    Page::DEFAULT_LIMIT
}

fn invalid_uuid(invalid: ValidationError) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidUuid, invalid.to_string())
}

fn invalid_field(invalid: ValidationError) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidField, invalid.to_string())
}

/// The users operations, generic over the domain's inbound ports.
pub struct UsersApi<Q, C> {
    queries: Arc<Q>,
    commands: Arc<C>,
    cache_control: String,
    /// The same, parsed once (`None` if it cannot be a header value).
    cache_control_value: Option<HeaderValue>,
    /// The 200s of users answered lately.
    renderings: Renderings,
}

/// Users whose 200 is remembered (a few hundred kilobytes at most).
const RENDERINGS: usize = 1024;

impl<Q, C> UsersApi<Q, C> {
    /// The API over `queries` and `commands`; `cache_control` is sent with
    /// every user.
    pub fn new(queries: Arc<Q>, commands: Arc<C>, cache_control: String) -> Self {
        Self {
            queries,
            commands,
            cache_control_value: HeaderValue::from_str(&cache_control).ok(),
            cache_control,
            renderings: Renderings::new(RENDERINGS),
        }
    }
}

/// The versions an `If-Match` allows a write at: `None` for none or `*`;
/// else each strong tag's version (a header of only weak or foreign tags
/// allows no version, and the write answers 412). Every `If-Match` line
/// counts, as one list (RFC 9110, 5.3). A field that is not `*` or a list of
/// entity tags is the client's mistake, not a stale version: it answers 400
/// (`bad_request`) rather than a 412 that would send the client to fetch the
/// user again and repeat it. Read from the raw headers because poem-openapi's
/// `Header` drops a value that is not ASCII text, which would turn a
/// conditional write into a blind one.
fn if_match(headers: &HeaderMap) -> Result<Option<Vec<Version>>, ErrorBody> {
    let mut lines = headers.get_all(IF_MATCH).iter().peekable();
    if lines.peek().is_none() {
        return Ok(None);
    }
    let malformed = |shown: &str| {
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!(
                "If-Match must be * or a comma-separated list of entity tags such as \"3\" \
                 (the ETag of a read), not {shown}"
            ),
        )
    };
    let mut field = String::new();
    for line in lines {
        let text = line
            .to_str()
            .map_err(|_| malformed("a value that is not ASCII text"))?;
        if !field.is_empty() {
            field.push_str(", ");
        }
        field.push_str(text);
    }
    match entity_tags(&field) {
        Some(tags) => Ok(versions(tags, Compare::Strong)),
        None => Err(malformed(&format!("{field:?}"))),
    }
}

/// Runs `write` once without a condition, or once per version `allowed`
/// until one is at the version the store holds: each attempt is atomic in
/// the store, so the write happens only at a version the client named.
async fn conditionally<T, F, Fut>(allowed: Option<Vec<Version>>, write: F) -> Result<T, UserError>
where
    F: Fn(Option<Version>) -> Fut,
    Fut: std::future::Future<Output = Result<T, UserError>>,
{
    let Some(versions) = allowed else {
        return write(None).await;
    };
    let mut outcome = Err(UserError::VersionMismatch {
        current: Version::new(0),
    });
    for version in if versions.is_empty() {
        vec![Version::new(0)]
    } else {
        versions
    } {
        outcome = write(Some(version)).await;
        if !matches!(outcome, Err(UserError::VersionMismatch { .. })) {
            break;
        }
    }
    outcome
}

#[OpenApi]
impl<Q: UserQueries, C: UserCommands> UsersApi<Q, C> {
    /// List users, ordered by id: `limit` (1 to 1000, default 100) from
    /// `offset`, or after `cursor` (the `next_cursor` of the previous page:
    /// as cheap deep in the list as at its start). `count=true` adds the total.
    #[oai(
        path = "/users",
        method = "get",
        tag = "Tag::Users",
        operation_id = "listUsers"
    )]
    async fn list(
        &self,
        /// How many users, at most.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u32>,
        /// How many users to skip, in id order (ignored with `cursor`).
        #[oai(
            default,
            validator(minimum(value = "0"), maximum(value = "4294967295"))
        )]
        offset: Query<u32>,
        /// Where the previous page ended: its `next_cursor`.
        cursor: Query<Option<CursorText>>,
        /// Whether to count every user (`total`); costs a scan of the table.
        #[oai(default)]
        count: Query<bool>,
    ) -> ListResponse {
        let page = match Page::new(limit.0, offset.0) {
            Ok(page) => page,
            Err(invalid) => {
                return ListResponse::BadRequest(Json(ErrorBody::new(
                    ErrorCode::BadRequest,
                    invalid.to_string(),
                )));
            }
        };
        let listed = match cursor.0.as_ref().map(|c| c.0.as_str()) {
            None => self.queries.list_users(page).await,
            Some(text) => match cursor_from(text) {
                Some(after) => self.queries.list_users_after(after, page.limit()).await,
                None => {
                    return ListResponse::BadRequest(Json(ErrorBody::new(
                        ErrorCode::InvalidCursor,
                        "cursor is not one this service made; pass a page's next_cursor as it is",
                    )));
                }
            },
        };
        let total = if count.0 {
            match self.queries.count_users().await {
                Ok(total) => Some(total),
                Err(error) => return list_failed(error),
            }
        } else {
            None
        };
        match listed {
            Ok(users) => {
                let full = users.len() == page.limit() as usize;
                let next_cursor = users.last().filter(|_| full).map(|u| cursor_of(u.id()));
                ListResponse::Ok(JsonBody(UserList {
                    users: users.into_iter().map(UserDto::from).collect(),
                    limit: page.limit(),
                    offset: if cursor.0.is_some() { 0 } else { page.offset() },
                    next_cursor,
                    total,
                }))
            }
            Err(error) => list_failed(error),
        }
    }

    /// Get one user by UUID, with its `ETag`. Read-through: a warm hit is one
    /// cache round trip and no store query. `If-None-Match` with the current
    /// tag is answered 304 without a body.
    #[oai(
        path = "/users/:uuid",
        method = "get",
        tag = "Tag::Users",
        operation_id = "getUser"
    )]
    async fn get(
        &self,
        /// The user's uuid.
        uuid: Path<UuidText>,
        /// Entity tags of copies the client holds.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> GetResponse {
        let uuid = match UserUuid::parse(&uuid.0.0) {
            Ok(uuid) => uuid,
            Err(invalid) => return GetResponse::BadRequest(Json(invalid_uuid(invalid))),
        };
        match self.queries.user_by_uuid(uuid).await {
            Ok(user) => {
                let version = user.version();
                let current = match if_none_match.0.as_deref().map(|h| tags(h, Compare::Weak)) {
                    Some(None) => true,
                    Some(Some(held)) => held.contains(&version),
                    None => false,
                };
                if current {
                    GetResponse::NotModified(etag(version), self.cache_control.clone())
                } else {
                    GetResponse::Ok(TaggedUser {
                        rendering: self.renderings.of(&user, |user| {
                            render(user, self.cache_control_value.as_ref())
                        }),
                    })
                }
            }
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => GetResponse::BadRequest(Json(body)),
                Failure::NotFound(body) => GetResponse::NotFound(Json(body)),
                Failure::Unavailable(body) => GetResponse::Unavailable(Json(body)),
                Failure::Conflict(body) | Failure::PreconditionFailed(body) => {
                    GetResponse::Unavailable(Json(unexpected(&body)))
                }
            },
        }
    }

    /// Create a user. The service gives it its uuid; `Location` says where
    /// it lives.
    #[oai(
        path = "/users",
        method = "post",
        tag = "Tag::Users",
        operation_id = "createUser"
    )]
    async fn create(&self, body: Json<CreateUser>) -> CreateResponse {
        let body = body.0;
        let user = match new_user(&body) {
            Ok(user) => user,
            Err(invalid) => return CreateResponse::BadRequest(Json(invalid_field(invalid))),
        };
        match self.commands.create_user(user).await {
            Ok(user) => {
                let location = format!("/users/{}", user.uuid());
                let tag = etag(user.version());
                CreateResponse::Created(JsonBody(UserDto::from(user)), location, tag)
            }
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => CreateResponse::BadRequest(Json(body)),
                Failure::Conflict(body) => CreateResponse::Conflict(Json(body)),
                Failure::Unavailable(body) => CreateResponse::Unavailable(Json(body)),
                Failure::NotFound(body) | Failure::PreconditionFailed(body) => {
                    CreateResponse::Unavailable(Json(unexpected(&body)))
                }
            },
        }
    }

    /// Change a user: the fields given are replaced. With `If-Match` (the
    /// `ETag` you read), only if nobody changed it since: 412 otherwise.
    /// Every instance serves the new version once this returns.
    #[oai(
        path = "/users/:uuid",
        method = "patch",
        tag = "Tag::Users",
        operation_id = "updateUser"
    )]
    async fn update(
        &self,
        /// The user's uuid.
        uuid: Path<UuidText>,
        /// The `ETag` of the version the change is based on.
        #[oai(name = "If-Match")]
        _if_match: Header<Option<EntityTagsText>>,
        // What `If-Match` is read from (see [`if_match`]); the parameter
        // above documents it.
        headers: &HeaderMap,
        body: Json<UpdateUser>,
    ) -> UpdateResponse {
        let uuid = match UserUuid::parse(&uuid.0.0) {
            Ok(uuid) => uuid,
            Err(invalid) => return UpdateResponse::BadRequest(Json(invalid_uuid(invalid))),
        };
        let allowed = match if_match(headers) {
            Ok(allowed) => allowed,
            Err(malformed) => return UpdateResponse::BadRequest(Json(malformed)),
        };
        let changes = match changes(&body.0) {
            Ok(changes) => changes,
            Err(invalid) => return UpdateResponse::BadRequest(Json(invalid_field(invalid))),
        };
        let written = conditionally(allowed, |expected| {
            self.commands.update_user(uuid, changes.clone(), expected)
        })
        .await;
        match written {
            Ok(user) => {
                let tag = etag(user.version());
                UpdateResponse::Ok(JsonBody(UserDto::from(user)), tag)
            }
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => UpdateResponse::BadRequest(Json(body)),
                Failure::NotFound(body) => UpdateResponse::NotFound(Json(body)),
                Failure::Conflict(body) => UpdateResponse::Conflict(Json(body)),
                Failure::PreconditionFailed(body) => UpdateResponse::PreconditionFailed(Json(body)),
                Failure::Unavailable(body) => UpdateResponse::Unavailable(Json(body)),
            },
        }
    }

    /// Delete a user (with `If-Match`, only at that version). Every instance
    /// answers 404 for it once this returns.
    #[oai(
        path = "/users/:uuid",
        method = "delete",
        tag = "Tag::Users",
        operation_id = "deleteUser"
    )]
    async fn delete(
        &self,
        /// The user's uuid.
        uuid: Path<UuidText>,
        /// The `ETag` of the version to delete.
        #[oai(name = "If-Match")]
        _if_match: Header<Option<EntityTagsText>>,
        // What `If-Match` is read from (see [`if_match`]).
        headers: &HeaderMap,
    ) -> DeleteResponse {
        let uuid = match UserUuid::parse(&uuid.0.0) {
            Ok(uuid) => uuid,
            Err(invalid) => return DeleteResponse::BadRequest(Json(invalid_uuid(invalid))),
        };
        let allowed = match if_match(headers) {
            Ok(allowed) => allowed,
            Err(malformed) => return DeleteResponse::BadRequest(Json(malformed)),
        };
        let deleted = conditionally(allowed, |expected| {
            self.commands.delete_user(uuid, expected)
        })
        .await;
        match deleted {
            Ok(()) => DeleteResponse::Deleted,
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => DeleteResponse::BadRequest(Json(body)),
                Failure::NotFound(body) => DeleteResponse::NotFound(Json(body)),
                Failure::PreconditionFailed(body) => DeleteResponse::PreconditionFailed(Json(body)),
                Failure::Unavailable(body) => DeleteResponse::Unavailable(Json(body)),
                Failure::Conflict(body) => DeleteResponse::Unavailable(Json(unexpected(&body))),
            },
        }
    }

    /// Look up to 100 users by UUID in one request: one cache MGET, one store
    /// call for the misses, one cache write for what was found.
    #[oai(
        path = "/users/lookup",
        method = "post",
        tag = "Tag::Users",
        operation_id = "lookupUsers"
    )]
    async fn lookup(&self, body: Json<LookupRequest>) -> LookupResponse {
        let asked = &body.0.uuids.0;
        if asked.len() > MAX_LOOKUP {
            let error = UserError::TooManyUuids {
                requested: asked.len(),
                max: MAX_LOOKUP,
            };
            return LookupResponse::BadRequest(Json(ErrorBody::new(
                ErrorCode::TooManyUuids,
                error.to_string(),
            )));
        }
        let mut uuids = Vec::with_capacity(asked.len());
        let mut seen = std::collections::HashSet::with_capacity(asked.len());
        for text in asked {
            match UserUuid::parse(text) {
                Ok(uuid) if !seen.insert(uuid) => {
                    // A duplicate is almost always a client bug: say so rather than guess.
                    let message =
                        format!("uuid {uuid} appears more than once; send each uuid once");
                    return LookupResponse::BadRequest(Json(ErrorBody::new(
                        ErrorCode::DuplicateUuids,
                        message,
                    )));
                }
                Ok(uuid) => uuids.push(uuid),
                Err(invalid) => return LookupResponse::BadRequest(Json(invalid_uuid(invalid))),
            }
        }
        match self.queries.lookup(&uuids).await {
            Ok(found) => LookupResponse::Ok(JsonBody(LookupResponseBody {
                users: found.users.into_iter().map(UserDto::from).collect(),
                missing: found.missing.iter().map(|uuid| uuid.get()).collect(),
            })),
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => LookupResponse::BadRequest(Json(body)),
                Failure::Unavailable(body) => LookupResponse::Unavailable(Json(body)),
                Failure::NotFound(body)
                | Failure::Conflict(body)
                | Failure::PreconditionFailed(body) => {
                    LookupResponse::Unavailable(Json(unexpected(&body)))
                }
            },
        }
    }
}

fn list_failed(error: UserError) -> ListResponse {
    match Failure::from(error) {
        Failure::BadRequest(body) => ListResponse::BadRequest(Json(body)),
        Failure::Unavailable(body) => ListResponse::Unavailable(Json(body)),
        Failure::NotFound(body) | Failure::Conflict(body) | Failure::PreconditionFailed(body) => {
            ListResponse::Unavailable(Json(unexpected(&body)))
        }
    }
}

fn new_user(body: &CreateUser) -> Result<NewUser, ValidationError> {
    Ok(NewUser {
        first_name: Name::new("first_name", &body.first_name.0)?,
        last_name: Name::new("last_name", &body.last_name.0)?,
        email: Email::new(&body.email.0)?,
    })
}

fn changes(body: &UpdateUser) -> Result<UserChanges, ValidationError> {
    Ok(UserChanges {
        first_name: body
            .first_name
            .as_ref()
            .map(|n| Name::new("first_name", &n.0))
            .transpose()?,
        last_name: body
            .last_name
            .as_ref()
            .map(|n| Name::new("last_name", &n.0))
            .transpose()?,
        email: body.email.as_ref().map(|e| Email::new(&e.0)).transpose()?,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    /// Headers holding one `If-Match` line.
    fn field(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(IF_MATCH, HeaderValue::from_str(value).expect("test value"));
        headers
    }

    #[test]
    fn if_match_takes_star_and_lists_of_tags_and_refuses_anything_else() {
        for valid in [
            "*",
            " * ",
            "\"3\"",
            "W/\"3\"",
            "\"3\", W/\"4\",\t\"x!#~\"",
            "\"\"",
            "",
            " , ,\"3\",",
        ] {
            assert!(if_match(&field(valid)).is_ok(), "{valid:?} is valid");
        }
        for malformed in [
            "3",
            "\"3",
            "\"3\" \"4\"",
            "W/3",
            "w/\"3\"",
            "\"a b\"",
            "*, \"3\"",
            "\"3\"x",
        ] {
            let refused = if_match(&field(malformed)).expect_err(malformed);
            assert_eq!(refused.error, ErrorCode::BadRequest, "{malformed:?}");
        }
        assert_eq!(
            if_match(&field(" , ")),
            Ok(Some(vec![])),
            "an empty list names no version: the write answers 412 (RFC 9110, 13.1.1)"
        );
    }

    #[test]
    fn if_match_reads_every_line_and_refuses_a_value_that_is_not_text() {
        let mut lines = field("\"3\"");
        lines.append(IF_MATCH, HeaderValue::from_static("W/\"4\", \"5\""));
        assert_eq!(
            if_match(&lines),
            Ok(Some(vec![Version::new(3), Version::new(5)]))
        );
        let mut star_and_tag = field("*");
        star_and_tag.append(IF_MATCH, HeaderValue::from_static("\"3\""));
        assert!(if_match(&star_and_tag).is_err(), "* stands alone");
        let mut not_text = HeaderMap::new();
        not_text.insert(
            IF_MATCH,
            HeaderValue::from_bytes(b"\xc2\x84").expect("obs-text is a valid header value"),
        );
        let refused = if_match(&not_text).expect_err("not ASCII");
        assert_eq!(refused.error, ErrorCode::BadRequest);
    }

    #[test]
    fn entity_tags_parse_strong_weak_lists_and_star() {
        let weak = Compare::Weak;
        assert_eq!(tags("\"3\"", weak), Some(vec![Version::new(3)]));
        assert_eq!(
            tags("W/\"3\", \"4\"", weak),
            Some(vec![Version::new(3), Version::new(4)])
        );
        assert_eq!(tags("*", weak), None);
        assert_eq!(
            tags("\"abc\"", weak),
            Some(vec![Version::new(0)]),
            "never matches"
        );
        assert_eq!(
            tags("W/\"3\", \"4\"", Compare::Strong),
            Some(vec![Version::new(4)]),
            "If-Match compares strongly"
        );
        assert_eq!(if_match(&field("W/\"3\"")), Ok(Some(vec![])));
        assert_eq!(if_match(&field("*")), Ok(None));
        assert_eq!(if_match(&HeaderMap::new()), Ok(None));
        assert_eq!(
            tags("\"a,b\", \"5\"", weak),
            Some(vec![Version::new(0), Version::new(5)]),
            "a comma inside a tag does not split it"
        );
        assert_eq!(etag(Version::new(7)), "\"7\"");
        assert_eq!(etag_value(Version::new(1234)), "\"1234\"");
    }

    #[test]
    fn needs_escape_finds_every_escaped_byte_at_every_place_of_a_word() {
        for len in [1, 7, 8, 9, 17] {
            for place in 0..len {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[place] = byte;
                    let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                    assert_eq!(
                        needs_escape(&text),
                        expected,
                        "{byte:#x} at {place} of {len}"
                    );
                }
            }
        }
        assert!(!needs_escape("Zoë Ünicode ✓ 😀 0123456789".as_bytes()));
        assert!(!needs_escape(b""));
    }

    #[test]
    fn a_user_body_written_by_hand_is_what_serde_writes() {
        for (first, last, email) in [
            ("John", "Doe", "john.doe@example.com"),
            ("Zoë", "O\"Brien\\", "a@b.c"),
            ("tab\there", "new\nline \u{1}\u{7f}", "\u{1F600}@x.io"),
            ("", "</script>", "x@y.z"),
        ] {
            let dto = UserDto {
                uuid: Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440001),
                first_name: first.into(),
                last_name: last.into(),
                email: email.into(),
            };
            assert_eq!(
                String::from_utf8(user_json(
                    dto.uuid,
                    &dto.first_name,
                    &dto.last_name,
                    &dto.email
                ))
                .unwrap(),
                serde_json::to_string(&dto).unwrap()
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let id = UserId::new(1_000_000).unwrap();
        assert_eq!(cursor_from(&cursor_of(id)), Some(Some(id)));
        assert_eq!(cursor_from("u0"), Some(None), "the start");
        for bad in ["", "u", "x10", "u-1", "u+1", "uzz", "u1234567890123456"] {
            assert_eq!(cursor_from(bad), None, "{bad:?}");
        }
    }
}
