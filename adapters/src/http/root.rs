//! `GET /`: what this service is and where its docs are.

use poem_openapi::{Object, OpenApi, Tags};
use serde::Serialize;

use super::json::JsonBody;

#[derive(Tags)]
enum Tag {
    /// The service itself.
    Service,
}

/// Name, version and links.
#[derive(Debug, Object, Serialize)]
pub struct ServiceInfo {
    /// The service's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Swagger UI.
    pub docs: String,
    /// The OpenAPI document.
    pub openapi: String,
    /// The health check.
    pub health: String,
}

/// The root operation.
pub struct RootApi;

#[OpenApi]
impl RootApi {
    /// What this service is, and links to its docs.
    #[oai(
        path = "/",
        method = "get",
        tag = "Tag::Service",
        operation_id = "getServiceInfo"
    )]
    async fn index(&self) -> JsonBody<ServiceInfo> {
        JsonBody(ServiceInfo {
            name: "CacheManager User API".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            docs: "/docs".into(),
            openapi: "/openapi.json".into(),
            health: "/health".into(),
        })
    }
}
