//! The OpenAPI document as the server behaves, and the route table read from
//! it.
//!
//! poem-openapi writes each operation's own responses. A few answers come
//! from the guard around every operation instead (a 503 `timeout`, a 413 on a
//! body, a 405 with `Allow`), so they are added here, in the one place that
//! mirrors the one place that produces them. The same paths give the route
//! table: which methods a path accepts (for `Allow`) and its template (for
//! logs, where a raw path would carry a uuid).

use poem::http::Method;
use serde_json::{Map, Value, json};

/// One path of the API: its template and the methods it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteInfo {
    /// `/users/{uuid}` (shared: it is a metrics label value).
    template: std::sync::Arc<str>,
    /// The template's segments; `None` for a parameter.
    segments: Vec<Option<String>>,
    methods: Vec<Method>,
}

/// Every path of the API, to match a request path against.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<RouteInfo>,
}

impl RouteTable {
    /// The route a path belongs to: literal segments win over parameters,
    /// as the router decides.
    fn find(&self, path: &str) -> Option<&RouteInfo> {
        /// More segments than any route has (a longer path matches none).
        const MOST: usize = 16;
        // The path split once (it is looked up on every request).
        let mut parts = [""; MOST];
        let mut count = 0;
        for part in path.trim_end_matches('/').split('/') {
            *parts.get_mut(count)? = part;
            count += 1;
        }
        let parts = &parts[..count];
        self.routes
            .iter()
            .filter(|route| {
                route.segments.len() == count
                    && route
                        .segments
                        .iter()
                        .zip(parts)
                        .all(|(segment, part)| segment.as_deref().is_none_or(|s| s == *part))
            })
            .max_by_key(|route| route.segments.iter().filter(|s| s.is_some()).count())
    }

    /// The template of the route `path` belongs to (`/users/{uuid}`), or
    /// `None` for a path outside the API. Never the raw path: it may carry
    /// personal data, and each uuid would be a new label or log value.
    pub fn template(&self, path: &str) -> Option<&str> {
        self.route(path).map(|template| &**template)
    }

    /// The same template, shared (for a label value without a copy).
    pub fn route(&self, path: &str) -> Option<&std::sync::Arc<str>> {
        self.find(path).map(|route| &route.template)
    }

    /// The `Allow` header for `path`: the methods it accepts (HEAD with GET).
    pub fn allow(&self, path: &str) -> Option<String> {
        let route = self.find(path)?;
        let mut methods: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
        if route.methods.contains(&Method::GET) {
            methods.push("HEAD");
        }
        Some(methods.join(", "))
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn error_content() -> Value {
    json!({"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
}

/// The document poem-openapi generated, completed with what the guard
/// answers, and the route table of its paths.
///
/// # Errors
/// When `generated` is not an OpenAPI document (a bug, caught by tests).
pub fn complete(generated: &str) -> Result<(String, RouteTable), serde_json::Error> {
    let mut document: Value = serde_json::from_str(generated)?;
    let mut table = RouteTable::default();
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (template, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            let mut methods = Vec::new();
            for name in METHODS {
                let Some(operation) = item.get_mut(name).and_then(Value::as_object_mut) else {
                    continue;
                };
                if let Ok(method) = name.to_ascii_uppercase().parse::<Method>() {
                    methods.push(method);
                }
                let has_body = operation.contains_key("requestBody");
                let responses = operation
                    .entry("responses")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(responses) = responses.as_object_mut() {
                    add_guard_responses(responses, has_body);
                }
            }
            let segments = template
                .trim_end_matches('/')
                .split('/')
                .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                .collect();
            table.routes.push(RouteInfo {
                template: std::sync::Arc::from(template.as_str()),
                segments,
                methods,
            });
        }
    }
    Ok((document.to_string(), table))
}

fn add_guard_responses(responses: &mut Map<String, Value>, has_body: bool) {
    responses.entry("405").or_insert_with(|| {
        json!({
            "description": "The path does not accept this method (`method_not_allowed`); the `Allow` header lists the methods it does.",
            "headers": {"Allow": {"description": "The methods this path accepts.", "required": true, "schema": {"type": "string"}}},
            "content": error_content(),
        })
    });
    if has_body {
        responses.entry("413").or_insert_with(|| {
            json!({
                "description": "The body is larger than the server accepts (`payload_too_large`, 64 KiB by default).",
                "content": error_content(),
            })
        });
        responses.entry("415").or_insert_with(|| {
            json!({
                "description": "The body is not sent as `content-type: application/json` (`bad_request`).",
                "content": error_content(),
            })
        });
    }
    let timeout =
        "The request took longer than the server's request timeout (`timeout`, 10 s by default).";
    match responses.get_mut("503").and_then(Value::as_object_mut) {
        // The operation has its own 503 (the health checks): either body.
        Some(existing) => {
            let description = existing
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            existing.insert(
                "description".into(),
                Value::String(format!("{description} Or: {timeout}")),
            );
            if let Some(content) = existing.get_mut("content").and_then(Value::as_object_mut) {
                for media in content.values_mut() {
                    if let Some(schema) = media.get("schema").cloned() {
                        media["schema"] =
                            json!({"oneOf": [schema, {"$ref": "#/components/schemas/ErrorBody"}]});
                    }
                }
            }
        }
        None => {
            responses.insert(
                "503".into(),
                json!({"description": timeout, "content": error_content()}),
            );
        }
    }
}

/// poem-openapi's Swagger UI page with `document` in place of the one it
/// embedded (`let spec = {...};`), so the page shows what `/openapi.json`
/// serves. The embedded document is found by parsing one JSON value where it
/// starts; the page is returned unchanged if it is not there.
pub fn swagger_with(html: &str, document: &str) -> String {
    const MARK: &str = "let spec = ";
    let Some(start) = html.find(MARK).map(|i| i + MARK.len()) else {
        return html.to_owned();
    };
    let mut values = serde_json::Deserializer::from_str(&html[start..]).into_iter::<Value>();
    match values.next() {
        Some(Ok(_)) => {
            let end = start + values.byte_offset();
            format!("{}{document}{}", &html[..start], &html[end..])
        }
        _ => html.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let spec = json!({"paths": {
            "/users": {"get": {"responses": {}}},
            "/users/{uuid}": {"get": {"responses": {}}},
            "/users/lookup": {"post": {"requestBody": {}, "responses": {}}},
        }});
        complete(&spec.to_string()).unwrap().1
    }

    #[test]
    fn a_path_maps_to_its_template_with_literals_first() {
        let table = table();
        assert_eq!(table.template("/users"), Some("/users"));
        assert_eq!(
            table.template("/users/550e8400-e29b-41d4-a716-446655440001"),
            Some("/users/{uuid}")
        );
        assert_eq!(table.template("/users/lookup"), Some("/users/lookup"));
        assert_eq!(table.template("/nowhere/at/all"), None);
        assert_eq!(table.template("/users/"), Some("/users"));
        assert_eq!(table.template(&"/users".repeat(40)), None);
        let root = complete(&json!({"paths": {"/": {"get": {}}}}).to_string())
            .unwrap()
            .1;
        assert_eq!(root.template("/"), Some("/"));
        assert_eq!(root.allow("/").as_deref(), Some("GET, HEAD"));
    }

    #[test]
    fn allow_lists_the_methods_of_the_path_and_head_with_get() {
        let table = table();
        assert_eq!(table.allow("/users").as_deref(), Some("GET, HEAD"));
        assert_eq!(table.allow("/users/lookup").as_deref(), Some("POST"));
    }

    #[test]
    fn the_swagger_page_embeds_the_completed_document() {
        let html = "<script>\n    let spec = {\"a\": [1, \"};\"]};\n    ui(spec);</script>";
        let page = swagger_with(html, "{\"b\":2}");
        assert_eq!(
            page,
            "<script>\n    let spec = {\"b\":2};\n    ui(spec);</script>"
        );
        assert_eq!(swagger_with("no spec here", "{}"), "no spec here");
    }

    #[test]
    fn every_operation_gets_the_guards_answers() {
        let spec = json!({"paths": {
            "/a": {"get": {"responses": {"200": {}}}},
            "/b": {"post": {"requestBody": {}, "responses": {"503": {
                "description": "Down.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/X"}}}
            }}}},
        }});
        let (document, _) = complete(&spec.to_string()).unwrap();
        let document: Value = serde_json::from_str(&document).unwrap();
        let a = &document["paths"]["/a"]["get"]["responses"];
        assert!(a["405"]["headers"]["Allow"].is_object());
        assert!(
            a["503"]["description"]
                .as_str()
                .unwrap()
                .contains("timeout")
        );
        assert!(a.get("413").is_none(), "no body, no 413");
        let b = &document["paths"]["/b"]["post"]["responses"];
        assert!(b["413"].is_object());
        assert!(
            b["415"].is_object(),
            "a body sent as another type is refused"
        );
        assert_eq!(
            b["503"]["content"]["application/json"]["schema"]["oneOf"][1]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert!(
            b["503"]["description"]
                .as_str()
                .unwrap()
                .starts_with("Down.")
        );
    }
}
