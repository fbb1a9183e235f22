//! CORS (the Fetch standard's protocol) for the origins `server.cors_origins`
//! names, answered inside the guard.
//!
//! The server only says which origin may read an answer; the browser
//! enforces it. So a request from an origin not on the list is served as it
//! would be without CORS, with no `Access-Control-*` header: a browser keeps
//! the answer from a script of that origin, and a same-origin request (which
//! browsers also send with `Origin` when it is not a GET, e.g. from this
//! service's own Swagger UI) is served. (poem's `Cors` answered it 403, in
//! plain text outside the API's error format.) Every answer carries
//! `Vary: origin` while CORS is on, since whether it carries
//! `Access-Control-Allow-Origin` depends on that header: a shared cache must
//! not hand one origin's copy to another.

use poem::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use poem::http::{HeaderMap, HeaderValue, Method, StatusCode};
use poem::{Request, Response};

/// The methods a page of another origin may use.
const METHODS: &str = "GET, HEAD, POST, PATCH, DELETE";
/// The request headers it may send (beyond those the standard always allows).
const HEADERS: &str = "content-type, if-match, if-none-match, x-request-id";
/// The response headers its scripts may read (beyond the standard's).
const EXPOSED: &str = "etag, location, x-request-id";
/// How long, in seconds, a browser may keep a preflight's answer.
const MAX_AGE: &str = "600";

/// CORS for a list of origins.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    origins: Vec<String>,
}

impl Cors {
    /// CORS for `origins`: `None` when there are none (CORS off, no
    /// header added to any answer).
    pub(crate) fn new(origins: &[String]) -> Option<Self> {
        (!origins.is_empty()).then(|| Self {
            origins: origins.to_vec(),
        })
    }

    /// The `Origin` a request names, when it is on the list (compared
    /// without regard to case, as scheme and host are).
    pub(crate) fn allowed<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(text))
            .then_some(origin)
    }

    /// The answer to a preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), `None` for any other request: 204,
    /// with the methods, headers and lifetime allowed when the origin is on
    /// the list, and without any `Access-Control-*` header when it is not
    /// (the browser then refuses the request it asked about). The browser
    /// checks the method and headers it wants against the lists. Its `Vary`
    /// names the headers it depends on.
    pub(crate) fn preflight(&self, request: &Request) -> Option<Response> {
        let headers = request.headers();
        if request.method() != Method::OPTIONS
            || !headers.contains_key(ORIGIN)
            || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(
                VARY,
                "origin, access-control-request-method, access-control-request-headers",
            )
            .finish();
        if let Some(origin) = self.allowed(headers) {
            let out = response.headers_mut();
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            out.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(METHODS),
            );
            out.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(HEADERS),
            );
            out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        }
        Some(response)
    }

    /// Adds to an answer (not a preflight's) what CORS asks: `Vary: origin`
    /// always, and when `origin` (the request's, if on the list) is given,
    /// the origin allowed to read it and the headers it may read.
    pub(crate) fn decorate(&self, origin: Option<HeaderValue>, response: &mut Response) {
        let headers = response.headers_mut();
        headers.append(VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(&["https://app.example.com".to_owned()]).expect("one origin")
    }

    fn request(method: Method, origin: Option<&str>, asks: Option<&str>) -> Request {
        let mut builder = Request::builder().method(method).uri_str("/users");
        if let Some(origin) = origin {
            builder = builder.header(ORIGIN, origin);
        }
        if let Some(asks) = asks {
            builder = builder.header(ACCESS_CONTROL_REQUEST_METHOD, asks);
        }
        builder.finish()
    }

    #[test]
    fn no_origins_is_no_cors() {
        assert!(Cors::new(&[]).is_none());
    }

    #[test]
    fn a_listed_origin_matches_in_any_case_and_nothing_else_does() {
        let cors = cors();
        let listed = request(Method::GET, Some("https://APP.example.com"), None);
        assert!(cors.allowed(listed.headers()).is_some());
        for other in [
            "https://evil.example",
            "https://app.example.com.evil.example",
            "http://app.example.com",
            "null",
        ] {
            let request = request(Method::GET, Some(other), None);
            assert!(cors.allowed(request.headers()).is_none(), "{other}");
        }
        assert!(
            cors.allowed(request(Method::GET, None, None).headers())
                .is_none()
        );
    }

    #[test]
    fn a_preflight_is_answered_with_the_lists_only_for_a_listed_origin() {
        let cors = cors();
        let listed = cors
            .preflight(&request(
                Method::OPTIONS,
                Some("https://app.example.com"),
                Some("PATCH"),
            ))
            .expect("a preflight");
        assert_eq!(listed.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            listed.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            listed.headers().get(ACCESS_CONTROL_ALLOW_METHODS).unwrap(),
            METHODS
        );
        let stranger = cors
            .preflight(&request(
                Method::OPTIONS,
                Some("https://evil.example"),
                Some("PATCH"),
            ))
            .expect("a preflight");
        assert_eq!(stranger.status(), StatusCode::NO_CONTENT);
        assert!(
            stranger
                .headers()
                .get(ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
        assert!(
            stranger
                .headers()
                .get(ACCESS_CONTROL_ALLOW_METHODS)
                .is_none()
        );
        // Not preflights: an OPTIONS without either header, another method.
        assert!(
            cors.preflight(&request(Method::OPTIONS, None, Some("PATCH")))
                .is_none()
        );
        assert!(
            cors.preflight(&request(
                Method::OPTIONS,
                Some("https://app.example.com"),
                None
            ))
            .is_none()
        );
        assert!(
            cors.preflight(&request(
                Method::POST,
                Some("https://app.example.com"),
                Some("PATCH")
            ))
            .is_none()
        );
    }

    #[test]
    fn an_answer_varies_on_origin_and_keeps_its_other_vary() {
        let cors = cors();
        let mut response = Response::builder().header(VARY, "accept-encoding").finish();
        cors.decorate(None, &mut response);
        let vary: Vec<_> = response.headers().get_all(VARY).iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
        assert!(
            response
                .headers()
                .get(ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
        );
        let mut allowed = Response::builder().finish();
        cors.decorate(
            Some(HeaderValue::from_static("https://app.example.com")),
            &mut allowed,
        );
        assert_eq!(
            allowed
                .headers()
                .get(ACCESS_CONTROL_EXPOSE_HEADERS)
                .unwrap(),
            EXPOSED
        );
    }
}
