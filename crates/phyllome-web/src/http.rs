//! The request pipeline, as axum middleware around the router. Every
//! request goes through the same steps, in this order:
//!
//! 0. over plain HTTP (loopback only), a Host that is not a loopback name is refused (DNS rebinding);
//! 1. the public files (the login page's shell and its libraries: no data);
//! 2. same-origin policy: a request whose `Origin` (or `Sec-Fetch-Site`)
//!    says another site is refused (403), whatever it carries;
//! 3. `POST /api/v1/login`, the one public route (throttled);
//! 4. authentication: a live session cookie or an API token, else 401
//!    (before routing, so unknown paths are not revealed either);
//! 5. routing (404/405);
//! 6. CSRF ([`needs_csrf`]): a cookie-authenticated state-changing request
//!    (or console) must carry the session's CSRF token, else 403;
//! 7. the handler.
//!
//! Every response carries a strict Content-Security-Policy and friends
//! (tower-http's header layers, in [`crate::router`]); a span per request
//! (tower-http's trace layer) records method, route template, status,
//! duration and user.

use crate::auth::Principal;
use crate::{assets, App};
use axum::body::Body;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phyllome_engine::errors::{Classify, ErrorKind};
use std::sync::Arc;

/// A failed request: status, a message for people and the error's class
/// (the same classes as the CLI's `--json` errors).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Its class: `failed`, `invalid-input`, `not-found`, `conflict`,
    /// `unsupported`, `unavailable`, `no-space`, `interrupted`, or for the server's own
    /// refusals `unauthorized`, `forbidden`, `throttled`, `busy`.
    pub kind: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not-found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::TOO_MANY_REQUESTS => "throttled",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::INSUFFICIENT_STORAGE => "no-space",
            s if s.is_client_error() => "invalid-input",
            _ => "failed",
        };
        ApiError { status, message: message.into(), kind }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// An engine error, by its class: the client's fault is a 4xx, an
    /// unreachable libvirtd a 503, and only a real failure a 500.
    pub fn from_engine(e: &dyn Classify) -> ApiError {
        let kind = e.kind();
        let status = status_of(kind);
        let message = match kind {
            ErrorKind::Unavailable => format!("libvirtd cannot be reached now: {e}"),
            _ => e.to_string(),
        };
        ApiError { status, message, kind: kind.name() }
    }
}

/// The HTTP status of each class of engine error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::Usage => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unsupported => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Unavailable | ErrorKind::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<phyllome_engine::vm::VmError> for ApiError {
    fn from(e: phyllome_engine::vm::VmError) -> ApiError {
        ApiError::from_engine(&e)
    }
}

impl From<phyllome_engine::share::ShareError> for ApiError {
    fn from(e: phyllome_engine::share::ShareError) -> ApiError {
        ApiError::from_engine(&e)
    }
}

impl From<phyllome_engine::media::iso_dir::IsoDirError> for ApiError {
    fn from(e: phyllome_engine::media::iso_dir::IsoDirError) -> ApiError {
        ApiError::from_engine(&e)
    }
}

impl From<phyllome_engine::snapshot::SnapshotError> for ApiError {
    fn from(e: phyllome_engine::snapshot::SnapshotError) -> ApiError {
        ApiError::from_engine(&e)
    }
}

/// A bundle's errors by their class (`BundleError::kind`): a bad or damaged bundle and a wrong
/// passphrase 400, a running VM or a taken name 409, what this host cannot do 422.
impl From<phyllome_engine::bundle::BundleError> for ApiError {
    fn from(e: phyllome_engine::bundle::BundleError) -> ApiError {
        ApiError::from_engine(&e)
    }
}

impl From<phyllome_engine::migrate::MigrateError> for ApiError {
    fn from(e: phyllome_engine::migrate::MigrateError) -> ApiError {
        ApiError::from_engine(&e)
    }
}

impl From<phyllome_libvirt::Error> for ApiError {
    fn from(e: phyllome_libvirt::Error) -> ApiError {
        ApiError::from_engine(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = ?self.message, "request failed");
        }
        let body = ErrorBody { error: self.message, kind: self.kind.to_string() };
        (self.status, axum::Json(body)).into_response()
    }
}

pub fn error(status: StatusCode, message: &str) -> Response {
    ApiError::new(status, message).into_response()
}

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn header_str(h: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Over plain HTTP (loopback only) the Host must be a loopback name too: a
/// page whose DNS name was rebound to 127.0.0.1 is refused before anything.
pub fn host_allowed(h: &HeaderMap, tls: bool) -> bool {
    if tls {
        return true;
    }
    let Some(host) = header_str(h, header::HOST) else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses requests another site made a browser send.
pub fn same_origin(h: &HeaderMap, tls: bool) -> Result<(), &'static str> {
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = header_str(h, header::HOST).ok_or("no Host header")?;
        let scheme = if tls { "https://" } else { "http://" };
        let origin = origin.to_str().map_err(|_| "bad Origin header")?;
        let same = origin.len() == scheme.len() + host.len()
            && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
            && origin[scheme.len()..].eq_ignore_ascii_case(host);
        if !same {
            return Err("cross-origin request refused");
        }
    }
    if let Some(site) = header_str(h, "sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err("cross-site request refused");
        }
    }
    Ok(())
}

/// A cookie's value, parsed by the `cookie` crate.
pub fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// Who is asking: a live session (touched), or an API token.
fn authenticate(app: &App, h: &HeaderMap) -> Option<Principal> {
    if let Some(auth) = header_str(h, header::AUTHORIZATION) {
        let (scheme, token) = auth.split_once(' ')?;
        return if scheme.eq_ignore_ascii_case("bearer") { app.auth.token(token.trim()) } else { None };
    }
    let id = cookie(h, app.cookie_name())?;
    app.auth.sessions.get(&id, true)
}

/// The CSRF token a request carries: the `X-CSRF-Token` header, or for a
/// WebSocket the subprotocol `phyllome-csrf.TOKEN` (browsers cannot set headers there).
fn csrf_token(h: &HeaderMap, websocket: bool) -> Option<&str> {
    if websocket {
        h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix("phyllome-csrf."))
    } else {
        header_str(h, "x-csrf-token")
    }
}

/// Routes that are WebSockets (route templates).
pub const WEBSOCKETS: &[&str] = &["/api/v1/vms/{name}/console", "/api/v1/vms/{name}/serial"];

/// Whether a cookie-authenticated request to this route must carry the
/// session's CSRF token: every state-changing method, and the consoles
/// (keyboard input). The OpenAPI document's `x-phyllome-csrf` comes from here too.
pub fn needs_csrf(method: &Method, route: &str) -> bool {
    route != "/api/v1/login" && (method != Method::GET || WEBSOCKETS.contains(&route))
}

/// A name that is safe to write into the log as it is (else it is escaped).
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    let plain = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':'));
    if plain {
        s.into()
    } else {
        format!("{s:?}").into()
    }
}

/// Steps 0 to 4 of the pipeline (see the module documentation).
pub async fn guard(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    if !host_allowed(req.headers(), app.tls) {
        return error(
            StatusCode::FORBIDDEN,
            "this server answers to loopback names only (localhost, 127.0.0.1, [::1])",
        );
    }
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    if get && assets::is_public(path) {
        return next.run(req).await;
    }
    if let Err(why) = same_origin(req.headers(), app.tls) {
        return error(StatusCode::FORBIDDEN, why);
    }
    if path == "/api/v1/login" {
        return next.run(req).await;
    }
    let Some(who) = authenticate(&app, req.headers()) else {
        let mut r = error(StatusCode::UNAUTHORIZED, "log in first (no valid session or API token)");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"phyllome\""));
        return r;
    };
    if who.metrics_only && path != "/metrics" {
        return error(StatusCode::FORBIDDEN, "a metrics token reads /metrics only");
    }
    // Validated names only (they come from the account files).
    tracing::Span::current().record("user", tracing::field::display(shown(&who.user)));
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// Step 6, after routing: knows the route template.
pub async fn csrf(State(_app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    tracing::Span::current().record("route", tracing::field::display(&route));
    let websocket = WEBSOCKETS.contains(&route.as_str());
    if let Some(expected) = req.extensions().get::<Principal>().and_then(|p| p.csrf.clone()) {
        // Cookie sessions: browsers always send Origin on WebSockets; require it.
        if websocket && req.headers().get(header::ORIGIN).is_none() {
            return error(StatusCode::FORBIDDEN, "a WebSocket with a session cookie needs an Origin header");
        }
        if needs_csrf(req.method(), &route) {
            let ok = csrf_token(req.headers(), websocket)
                .is_some_and(|t| crate::crypto::ct_eq(t.as_bytes(), expected.as_bytes()));
            if !ok {
                return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token (X-CSRF-Token)");
            }
        }
    }
    next.run(req).await
}

/// A JSON request body of at most `LIMIT` bytes; an empty body is
/// `T::default()`. Refusals are JSON errors like every other.
pub struct JsonBody<T, const LIMIT: usize = 8192>(pub T);

impl<S, T, const LIMIT: usize> FromRequest<S> for JsonBody<T, LIMIT>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let h = req.headers();
        let has_body = match header_str(h, header::CONTENT_LENGTH) {
            Some(len) => len.trim() != "0",
            None => h.contains_key(header::TRANSFER_ENCODING),
        };
        let json_type = header_str(h, header::CONTENT_TYPE)
            .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
        if !has_body {
            return Ok(JsonBody(T::default()));
        }
        if !json_type {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"));
        }
        let body = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"))?;
        if body.is_empty() {
            return Ok(JsonBody(T::default()));
        }
        serde_json::from_slice(&body).map(JsonBody).map_err(|e| ApiError::bad(format!("bad JSON body: {e}")))
    }
}

/// The route's `{name}` (or `{id}`): any string libvirt could hold, never
/// one with NUL or other control characters in it.
pub struct Name(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<String>::from_request_parts(parts, s)
            .await
            .map_err(|_| ApiError::bad("the name in the path is not valid UTF-8"))?;
        if v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(ApiError::bad("not a valid name: it is empty, too long, or holds control characters"));
        }
        Ok(Name(v))
    }
}

/// Unknown paths (after authentication).
pub async fn not_found(req: Request<Body>) -> Response {
    if req.uri().path().starts_with("/api/") {
        error(StatusCode::NOT_FOUND, "no such API route")
    } else {
        error(StatusCode::NOT_FOUND, "no such page")
    }
}

pub async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_rules() {
        assert!(same_origin(&headers(&[("host", "h:1")]), false).is_ok());
        assert!(same_origin(&headers(&[("host", "h:1"), ("origin", "http://h:1")]), false).is_ok());
        assert!(same_origin(&headers(&[("host", "h:1"), ("origin", "https://h:1")]), false).is_err());
        assert!(same_origin(&headers(&[("host", "h:1"), ("origin", "http://h:2")]), false).is_err());
        assert!(same_origin(&headers(&[("host", "h:1"), ("origin", "null")]), false).is_err());
        assert!(same_origin(&headers(&[("host", "h:1"), ("origin", "https://h:1")]), true).is_ok());
        assert!(same_origin(&headers(&[("host", "h:1"), ("sec-fetch-site", "cross-site")]), false).is_err());
        assert!(same_origin(&headers(&[("host", "h:1"), ("sec-fetch-site", "same-site")]), false).is_err());
        assert!(same_origin(&headers(&[("host", "h:1"), ("sec-fetch-site", "same-origin")]), false).is_ok());
    }

    #[test]
    fn plain_http_answers_loopback_names_only() {
        for ok in ["127.0.0.1:7440", "localhost:7440", "LOCALHOST", "[::1]:7440", "127.0.0.2:1"] {
            assert!(host_allowed(&headers(&[("host", ok)]), false), "{ok}");
        }
        for bad in ["evil.example:7440", "192.168.1.2:7440", "localhost.evil.example", "[::2]:1"] {
            assert!(!host_allowed(&headers(&[("host", bad)]), false), "{bad}");
            assert!(host_allowed(&headers(&[("host", bad)]), true), "{bad} over TLS");
        }
        assert!(!host_allowed(&HeaderMap::new(), false));
    }

    #[test]
    fn cookies_and_csrf_tokens_are_found() {
        let h = headers(&[("cookie", "a=1; phyllome_session=abc; b=2")]);
        assert_eq!(cookie(&h, "phyllome_session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "phyllome"), None);
        let h = headers(&[("sec-websocket-protocol", "binary, phyllome-csrf.tok")]);
        assert_eq!(csrf_token(&h, true), Some("tok"));
        assert_eq!(csrf_token(&h, false), None);
    }

    #[test]
    fn csrf_covers_every_change_and_the_consoles() {
        assert!(needs_csrf(&Method::POST, "/api/v1/vms"));
        assert!(needs_csrf(&Method::DELETE, "/api/v1/tokens/{id}"));
        assert!(needs_csrf(&Method::GET, "/api/v1/vms/{name}/serial"));
        assert!(!needs_csrf(&Method::GET, "/api/v1/vms"));
        assert!(!needs_csrf(&Method::POST, "/api/v1/login"));
        // Export: the ticket is a change; its download is a GET (the token is the credential, and
        // only the same-origin POST's answer holds it). Import is a change.
        assert!(needs_csrf(&Method::POST, "/api/v1/vms/{name}/export"));
        assert!(!needs_csrf(&Method::GET, "/api/v1/exports/{token}"));
        assert!(needs_csrf(&Method::POST, "/api/v1/import"));
    }

    #[test]
    fn log_values_are_plain_or_escaped() {
        assert_eq!(shown("admin"), "admin");
        assert_eq!(shown("a\nphyllome serve: root logged in"), "\"a\\nphyllome serve: root logged in\"");
        assert_eq!(shown("\u{1b}[31mred"), "\"\\u{1b}[31mred\"");
        assert_eq!(shown("\u{202e}x"), "\"\u{202e}x\"".replace('\u{202e}', "\\u{202e}"));
    }
}
