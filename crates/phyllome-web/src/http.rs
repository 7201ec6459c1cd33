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
//!
//! Here too is what every handler (the `api` modules) shares: the error type
//! and its statuses ([`ApiError`]), the body and path extractors ([`JsonBody`],
//! [`Name`]), libvirt calls on the blocking pool ([`blocking`]), which host a
//! VM route acts on (`?host=`, [`host_param`]), and the log's who-did-what.

use crate::auth::Principal;
use crate::{assets, App};
use axum::body::Body;
use axum::extract::{FromRequest, MatchedPath, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phyllome_engine::errors::{Classify, ErrorKind};
use phyllome_engine::remotes::LOCAL;
use phyllome_libvirt::Libvirt;
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
        check_path_names(&[&v])?;
        Ok(Name(v))
    }
}

/// Names from a route's path (`{name}`, `{snapshot}`...): any string libvirt
/// could hold, never an empty one, one over 1024 bytes or one with control characters.
pub fn check_path_names(values: &[&str]) -> Result<(), ApiError> {
    if values.iter().any(|v| v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control)) {
        return Err(ApiError::bad("not a valid name: it is empty, too long, or holds control characters"));
    }
    Ok(())
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

// ---- what the handlers share -------------------------------------------------

pub type ApiResult<T> = Result<T, ApiError>;

/// Runs `f` with the libvirt connection on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App, &Libvirt) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking_on(app, LOCAL.to_string(), f).await
}

/// [`blocking`] with the connection to host `host` (`local`: this host's).
pub async fn blocking_on<T: Send + 'static>(
    app: &Arc<App>,
    host: String,
    f: impl FnOnce(&App, &Libvirt) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || {
        let lv = app.libvirt_on(&host)?;
        f(&app, &lv)
    })
    .await
    .map_err(|_| ApiError::internal("the request's worker failed"))?
}

/// A host name no configured host has (404).
pub fn no_such_host(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no host named {} (GET /api/v1/hosts lists them)", shown(name)))
}

/// `?host=NAME`: which host's VM a route acts on.
#[derive(serde::Deserialize, utoipa::IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct HostQuery {
    /// The VM's host: `local` (the default) or a name from GET /api/v1/hosts.
    host: Option<String>,
}

impl HostQuery {
    pub fn name(&self) -> String {
        self.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| LOCAL.to_string())
    }
}

/// The VM routes that act on another host's VM too (`?host=NAME`): the ones
/// that are libvirt calls only. The others read or write this host's files
/// (NVRAM, boot files, the journal, the ISO folder) and stay `local`.
pub const ON_ANY_HOST: &[(&str, &str)] = &[
    ("GET", "/api/v1/vms/{name}"),
    ("POST", "/api/v1/vms/{name}/stop"),
    ("POST", "/api/v1/vms/{name}/kill"),
    ("POST", "/api/v1/vms/{name}/pause"),
    ("POST", "/api/v1/vms/{name}/resume"),
];

/// A route layer: `?host=` names a configured host (else 404), and a VM
/// route not in [`ON_ANY_HOST`] refuses any host but `local` (422).
pub async fn host_param(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let host = Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.get("host").cloned())
        .filter(|h| !h.is_empty() && h != LOCAL);
    let Some(host) = host else { return next.run(req).await };
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let route = route.unwrap_or_default();
    if !route.starts_with("/api/v1/vms/{name}") {
        return next.run(req).await;
    }
    if app.host_uri(&host).is_none() {
        return no_such_host(&host).into_response();
    }
    if !ON_ANY_HOST.iter().any(|(m, p)| req.method().as_str() == *m && route == *p) {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "this acts on this host's VMs only (host=local): on host {} the API offers the VM's page, stop, \
                 kill, pause and resume; migrate a VM here to do more",
                shown(&host)
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Who did what, in the server's log.
pub fn who_did(who: &Principal, what: &str, name: &str) {
    tracing::info!("{}: {what} {}", shown(&who.user), shown(name));
}

/// [`who_did`] on host `host` (named in the log unless it is `local`).
pub fn who_did_on(who: &Principal, what: &str, name: &str, host: &str) {
    if host == LOCAL {
        who_did(who, what, name);
    } else {
        tracing::info!("{}: {what} {} on host {}", shown(&who.user), shown(name), shown(host));
    }
}

/// Whether the principal's session or token still holds; `touch` restarts a session's idle time.
pub fn still_valid(app: &App, who: &Principal, touch: bool) -> bool {
    match (&who.session, &who.token) {
        (Some(key), _) => app.auth.sessions.get_key(key, touch).is_some(),
        (None, Some(id)) => app.auth.token_exists(id),
        (None, None) => false,
    }
}

// The answer of a change that has nothing more to say (a plain comment: the API document names it only).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Ok_ {
    pub ok: bool,
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

    #[test]
    fn engine_errors_map_to_statuses() {
        let s = |e: phyllome_engine::vm::VmError| ApiError::from(e).status;
        assert_eq!(s(VmError::NoSuchVm("x".into())), StatusCode::NOT_FOUND);
        assert_eq!(s(VmError::Running("x".into())), StatusCode::CONFLICT);
        assert_eq!(s(VmError::NetworkInactive("default".into())), StatusCode::CONFLICT);
        assert_eq!(s(VmError::EmptyPassphrase), StatusCode::BAD_REQUEST);
        use phyllome_engine::bundle::BundleError as B;
        use phyllome_engine::vm::VmError;
        let b = |e: B| ApiError::from(e);
        assert_eq!(
            (b(B::WrongPassphrase).status, b(B::WrongPassphrase).kind),
            (StatusCode::BAD_REQUEST, "invalid-input")
        );
        assert_eq!(b(B::Truncated("disk.qcow2 ends early".into())).status, StatusCode::BAD_REQUEST);
        assert_eq!(b(B::Refused("x is running".into())).status, StatusCode::CONFLICT);
        assert_eq!(b(B::Vm(VmError::NameBusy("x".into()))).status, StatusCode::CONFLICT);
        assert_eq!(b(B::Vm(VmError::NoSuchVm("x".into()))).status, StatusCode::NOT_FOUND);
        assert_eq!(b(B::CannotHere("two disks".into())).status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b(B::Io { path: "p".into(), why: "w".into() }).status, StatusCode::INTERNAL_SERVER_ERROR);
        // Out of space is 507 with a kind of its own, whichever operation refuses.
        let full = b(B::NoSpace("pool phyllome has 3 MiB free".into()));
        assert_eq!((full.status, full.kind), (StatusCode::INSUFFICIENT_STORAGE, "no-space"));
        use phyllome_engine::media::iso_dir::IsoDirError as I;
        let iso = ApiError::from(I::NoSpace { name: "a.iso".into(), need: 1, free: 64, spare: 64, held: 0 });
        assert_eq!((iso.status, iso.kind), (StatusCode::INSUFFICIENT_STORAGE, "no-space"));
        let mid = ApiError::from(I::Full("a.iso".into()));
        assert_eq!((mid.status, mid.kind), (StatusCode::INSUFFICIENT_STORAGE, "no-space"));
        assert!(!mid.message.contains(".part"), "{}", mid.message);
        use phyllome_engine::snapshot::SnapshotError as S;
        let snap = ApiError::from(S::NoSpace { path: "/x".into(), what: "for the snapshot", need_mib: 9, free_mib: 1 });
        assert_eq!((snap.status, snap.kind), (StatusCode::INSUFFICIENT_STORAGE, "no-space"));
        let down =
            phyllome_libvirt::Error { op: "cannot connect to qemu:///system".into(), message: "x".into(), code: 38 };
        assert_eq!(ApiError::from(down).status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
