//! Connections and the request pipeline. Every request goes through the
//! same steps, in this order:
//!
//! 0. over plain HTTP (loopback only), a Host that is not a loopback name is refused (DNS rebinding);
//! 1. the public shell (`/`, `/app.js`, `/app.css`, `/favicon.svg`: the login page, no data);
//! 2. same-origin policy: a request whose `Origin` (or `Sec-Fetch-Site`)
//!    says another site is refused (403), whatever it carries;
//! 3. `POST /api/v1/login`, the one public route (throttled);
//! 4. authentication: a live session cookie or an API token, else 401
//!    (before routing, so unknown paths are not revealed either);
//! 5. routing through the route table (404/405);
//! 6. CSRF: a cookie-authenticated state-changing request (or console)
//!    must carry the session's CSRF token, else 403;
//! 7. the handler.
//!
//! Every response carries a strict Content-Security-Policy and friends.

use crate::routes::{self, Kind, NoRoute};
use crate::{api, assets, auth::Principal, log, App};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

pub fn respond(status: StatusCode, content_type: &'static str, data: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(data));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json_bytes(status: StatusCode, data: impl Into<Bytes>) -> Response<Body> {
    respond(status, "application/json", data)
}

pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    json_bytes(status, serde_json::to_vec(value).expect("serializable"))
}

pub fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn harden(headers: &mut HeaderMap, tls: bool) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    set(headers, "cache-control", "no-store");
    if tls {
        set(headers, "strict-transport-security", "max-age=31536000");
    }
}

/// Connections served at once (event streams and consoles included).
pub const MAX_CONNECTIONS: usize = 1024;

/// Accepts connections until SIGINT or SIGTERM.
pub async fn run(app: Arc<App>, listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stop = async move {
        match term.as_mut() {
            Some(t) => {
                tokio::select! {
                    _ = t.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    // Account changes (`phyllome user remove`) take effect within seconds, sessions included.
    let reloader = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let app = Arc::clone(&app);
                let _ = tokio::task::spawn_blocking(move || app.auth.reload()).await;
            }
        })
    };
    let _stop_reloader = AbortOnDrop(reloader);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut stop => {
                log("stopping");
                return;
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(_) => {
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the limit a connection is closed at once (file descriptors stay for the rest).
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else { continue };
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tls {
                        Some(acceptor) => {
                            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                serve_connection(app, TokioIo::new(s), peer).await;
                            }
                        }
                        None => serve_connection(app, TokioIo::new(stream), peer).await,
                    }
                });
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_connection<I>(app: Arc<App>, io: I, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(handle(app, req, peer).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(20))
        .max_buf_size(64 * 1024)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let tls = app.tls;
    let mut resp = pipeline(app, req, peer).await;
    harden(resp.headers_mut(), tls);
    resp
}

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

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who is asking: a live session (touched), or an API token.
fn authenticate(app: &App, h: &HeaderMap) -> Option<Principal> {
    if let Some(auth) = header_str(h, header::AUTHORIZATION) {
        let (scheme, token) = auth.split_once(' ')?;
        return if scheme.eq_ignore_ascii_case("bearer") { app.auth.token(token.trim()) } else { None };
    }
    let id = cookie(h, app.cookie_name())?;
    app.auth.sessions.get(id, true)
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

async fn pipeline(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let get = method == "GET" || method == "HEAD";
    if !host_allowed(req.headers(), app.tls) {
        return error(
            StatusCode::FORBIDDEN,
            "this server answers to loopback names only (localhost, 127.0.0.1, [::1])",
        );
    }

    if get {
        if let Some((ctype, body)) = assets::shell(&path) {
            let mut r = respond(StatusCode::OK, ctype, body);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return r;
        }
    }
    if let Err(why) = same_origin(req.headers(), app.tls) {
        return error(StatusCode::FORBIDDEN, why);
    }
    if path == "/api/v1/login" {
        if method != "POST" {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        return api::login(&app, req, peer).await;
    }
    let Some(who) = authenticate(&app, req.headers()) else {
        let mut r = error(StatusCode::UNAUTHORIZED, "log in first (no valid session or API token)");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"phyllome\""));
        return r;
    };
    if let Some(rel) = path.strip_prefix("/vendor/novnc/") {
        if !get {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        }
        return novnc(&app, rel).await;
    }
    if !path.starts_with(routes::PREFIX) {
        return error(StatusCode::NOT_FOUND, "no such page");
    }
    let (route, params) = match routes::find(&method, &path) {
        Ok(found) => found,
        Err(NoRoute::NotFound) => return error(StatusCode::NOT_FOUND, "no such API route"),
        Err(NoRoute::Method(allowed)) => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            return r;
        }
    };
    let websocket = route.kind == Kind::WebSocket;
    if let Some(expected) = who.csrf.as_deref() {
        // Cookie sessions: browsers always send Origin on WebSockets; require it.
        if websocket && req.headers().get(header::ORIGIN).is_none() {
            return error(StatusCode::FORBIDDEN, "a WebSocket with a session cookie needs an Origin header");
        }
        if route.csrf() {
            let ok = csrf_token(req.headers(), websocket)
                .is_some_and(|t| crate::crypto::ct_eq(t.as_bytes(), expected.as_bytes()));
            if !ok {
                return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token (X-CSRF-Token)");
            }
        }
    }
    api::handle(&app, route, params, who, req).await
}

async fn novnc(app: &App, rel: &str) -> Response<Body> {
    let Some(dir) = app.novnc.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "noVNC is not installed: the phyllome package ships it in /usr/share/phyllome/novnc; or start phyllome serve with --novnc-dir",
        );
    };
    let Some(file) = assets::novnc_file(dir, rel) else {
        return error(StatusCode::NOT_FOUND, "no such file");
    };
    match tokio::task::spawn_blocking(move || std::fs::read(file)).await {
        Ok(Ok(data)) => {
            let mut r = respond(StatusCode::OK, "text/javascript; charset=utf-8", data);
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
            r
        }
        _ => error(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// Reads a JSON request body of at most `limit` bytes; an empty body is `T::default()`.
/// Err carries the status and the reason.
pub async fn read_json<T: serde::de::DeserializeOwned + Default>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, (StatusCode, String)> {
    let h = req.headers();
    let has_body = match header_str(h, header::CONTENT_LENGTH) {
        Some(len) => len.trim() != "0",
        None => h.contains_key(header::TRANSFER_ENCODING),
    };
    let json_type = header_str(h, header::CONTENT_TYPE)
        .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !has_body {
        return Ok(T::default());
    }
    if !json_type {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json".into()));
    }
    let body = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large".to_string()))?
        .to_bytes();
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
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
        assert_eq!(cookie(&h, "phyllome_session"), Some("abc"));
        assert_eq!(cookie(&h, "phyllome"), None);
        let h = headers(&[("sec-websocket-protocol", "binary, phyllome-csrf.tok")]);
        assert_eq!(csrf_token(&h, true), Some("tok"));
        assert_eq!(csrf_token(&h, false), None);
    }
}
