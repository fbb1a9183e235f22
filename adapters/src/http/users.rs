//! `/users`: list, get by UUID, and batch lookup.

use std::sync::Arc;

use domain::{MAX_LOOKUP, Page, User, UserError, UserQueries, UserUuid};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use serde::Serialize;
use uuid::Uuid;

use super::errors::{ErrorBody, ErrorCode, WithBadRequest, bad_request};
use super::json::JsonBody;
use super::types::{UuidList, UuidText};

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
    /// The offset applied.
    pub offset: u32,
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

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum ListResponse {
    /// A page of users.
    #[oai(status = 200)]
    Ok(JsonBody<UserList>),
    /// A bad `limit` or `offset`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The user store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
enum GetResponse {
    /// The user.
    #[oai(status = 200)]
    Ok(JsonBody<UserDto>),
    /// Not a UUID (`invalid_uuid`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No user has this UUID (`not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The user store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
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
    /// The user store failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
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
with_bad_request!(ListResponse, GetResponse, LookupResponse);

/// Which response a domain error becomes.
enum Failure {
    BadRequest(ErrorBody),
    NotFound(ErrorBody),
    Internal,
}

impl From<UserError> for Failure {
    fn from(error: UserError) -> Self {
        match error {
            UserError::NotFoundByUuid(_) | UserError::NotFoundById(_) => {
                Failure::NotFound(ErrorBody::new(ErrorCode::NotFound, error.to_string()))
            }
            UserError::TooManyUuids { .. } => {
                Failure::BadRequest(ErrorBody::new(ErrorCode::TooManyUuids, error.to_string()))
            }
            UserError::Invalid(ref invalid) => {
                let code = match invalid {
                    domain::ValidationError::MalformedUuid(_) => ErrorCode::InvalidUuid,
                    _ => ErrorCode::BadRequest,
                };
                Failure::BadRequest(ErrorBody::new(code, error.to_string()))
            }
            UserError::Repository(cause) => {
                tracing::error!(error = %cause, "user store failed");
                Failure::Internal
            }
        }
    }
}

fn default_limit() -> u32 {
    Page::DEFAULT_LIMIT
}

/// The users operations, generic over the domain's inbound port.
pub struct UsersApi<S> {
    service: Arc<S>,
}

impl<S> UsersApi<S> {
    /// The API over `service`.
    pub fn new(service: Arc<S>) -> Self {
        Self { service }
    }
}

#[OpenApi]
impl<S: UserQueries> UsersApi<S> {
    /// List users, ordered by id (`limit` 1 to 1000, default 100; `offset` default 0).
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
        /// How many users to skip, in id order.
        #[oai(
            default,
            validator(minimum(value = "0"), maximum(value = "4294967295"))
        )]
        offset: Query<u32>,
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
        match self.service.list_users(page).await {
            Ok(users) => ListResponse::Ok(JsonBody(UserList {
                users: users.into_iter().map(UserDto::from).collect(),
                limit: page.limit(),
                offset: page.offset(),
            })),
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => ListResponse::BadRequest(Json(body)),
                Failure::NotFound(_) | Failure::Internal => {
                    ListResponse::Internal(Json(ErrorBody::internal()))
                }
            },
        }
    }

    /// Get one user by UUID. Cache-aside: a cached UUID-to-id mapping lets
    /// the store be read by id; a miss reads it by UUID and fills both caches.
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
    ) -> GetResponse {
        let uuid = match UserUuid::parse(&uuid.0.0) {
            Ok(uuid) => uuid,
            Err(invalid) => {
                return GetResponse::BadRequest(Json(ErrorBody::new(
                    ErrorCode::InvalidUuid,
                    invalid.to_string(),
                )));
            }
        };
        match self.service.user_by_uuid(uuid).await {
            Ok(user) => GetResponse::Ok(JsonBody(UserDto::from(user))),
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => GetResponse::BadRequest(Json(body)),
                Failure::NotFound(body) => GetResponse::NotFound(Json(body)),
                Failure::Internal => GetResponse::Internal(Json(ErrorBody::internal())),
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
                Err(invalid) => {
                    return LookupResponse::BadRequest(Json(ErrorBody::new(
                        ErrorCode::InvalidUuid,
                        invalid.to_string(),
                    )));
                }
            }
        }
        match self.service.lookup(&uuids).await {
            Ok(found) => LookupResponse::Ok(JsonBody(LookupResponseBody {
                users: found.users.into_iter().map(UserDto::from).collect(),
                missing: found.missing.iter().map(|uuid| uuid.get()).collect(),
            })),
            Err(error) => match Failure::from(error) {
                Failure::BadRequest(body) => LookupResponse::BadRequest(Json(body)),
                Failure::NotFound(_) | Failure::Internal => {
                    LookupResponse::Internal(Json(ErrorBody::internal()))
                }
            },
        }
    }
}
