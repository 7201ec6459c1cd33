//! Who is asking: log in and out, the session, and your API tokens.

use crate::auth::{LoginError, Principal};
use crate::http::{shown, ApiError, ApiResult, ErrorBody, JsonBody, Name, Ok_};
use crate::App;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// A session: who, and the CSRF token to send in `X-CSRF-Token`.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    user: String,
    /// Absent for API tokens (nothing ambient to forge).
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
    idle_timeout_secs: u64,
}

fn cookie_header(app: &App, name: &'static str, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let mut c = cookie::Cookie::build((name, value.to_string()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(app.tls);
    if let Some(age) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
    }
    HeaderValue::from_str(&c.build().to_string()).expect("cookie values are hex")
}

/// Log in: sets the session cookie and returns the CSRF token.
#[utoipa::path(post, operation_id = "login", path = "/api/v1/login", tag = "session", security(()),
    request_body = LoginBody,
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody,
        description = "too many failed logins: retry after Retry-After seconds")))]
pub(super) async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginBody>,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        // Also keeps HTML forms on other sites from posting here.
        return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json").into_response();
    }
    let user = if crate::auth::validate_user_name(&body.username).is_ok() {
        body.username.clone()
    } else {
        "(not a valid user name)".into()
    };
    let ip = peer.ip();
    let device = crate::http::cookie(&headers, app.device_cookie_name());
    match app.auth.login(&body.username, &body.password, ip, device.as_deref()).await {
        Ok(done) => {
            tracing::info!("{user} logged in from {ip}");
            let info = SessionInfo {
                user: done.principal.user,
                csrf: done.principal.csrf,
                idle_timeout_secs: app.auth.sessions.idle().as_secs(),
            };
            let mut r = Json(info).into_response();
            let h = r.headers_mut();
            h.append(header::SET_COOKIE, cookie_header(&app, app.cookie_name(), &done.session_id, None));
            h.append(
                header::SET_COOKIE,
                cookie_header(&app, app.device_cookie_name(), &done.device, Some(crate::auth::DEVICE_MAX_AGE)),
            );
            r
        }
        Err(LoginError::Throttled(wait)) => {
            tracing::warn!("login for {user} from {ip} refused: throttled");
            let secs = wait.as_secs().max(1);
            let mut r =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("too many failed logins: try again in {secs} s"))
                    .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Err(LoginError::Busy) => {
            tracing::warn!("login for {user} from {ip} refused: every password check slot is busy");
            let mut r =
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many logins at once: try again in a moment")
                    .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
            r
        }
        Err(LoginError::Refused) => {
            tracing::warn!("failed login for {user} from {ip}");
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password").into_response()
        }
    }
}

/// End this session.
#[utoipa::path(post, operation_id = "logout", path = "/api/v1/logout", tag = "session", responses((status = 200, body = Ok_)))]
pub(super) async fn logout(State(app): State<Arc<App>>, Extension(who): Extension<Principal>) -> Response {
    if let Some(key) = who.session {
        app.auth.sessions.remove(&key);
    }
    let mut r = Json(Ok_ { ok: true }).into_response();
    r.headers_mut().insert(header::SET_COOKIE, cookie_header(&app, app.cookie_name(), "", Some(Duration::ZERO)));
    r
}

/// Who is logged in, and the CSRF token to send in X-CSRF-Token.
#[utoipa::path(get, operation_id = "getSession", path = "/api/v1/session", tag = "session", responses((status = 200, body = SessionInfo)))]
pub(super) async fn session(State(app): State<Arc<App>>, Extension(who): Extension<Principal>) -> Json<SessionInfo> {
    Json(SessionInfo { user: who.user, csrf: who.csrf, idle_timeout_secs: app.auth.sessions.idle().as_secs() })
}

// ---- API tokens ------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct TokenRow {
    id: String,
    /// UNIX seconds.
    created: u64,
    /// UNIX seconds, to the minute; null when never used.
    last_used: Option<u64>,
}

/// Your API tokens, with when each was made and last used.
#[utoipa::path(get, operation_id = "listTokens", path = "/api/v1/tokens", tag = "session", responses((status = 200, body = Vec<TokenRow>)))]
pub(super) async fn list_tokens(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<TokenRow>>> {
    let rows = tokio::task::spawn_blocking(move || {
        app.auth
            .tokens_of(&who.user)
            .into_iter()
            .map(|t| TokenRow { id: t.id, created: t.created, last_used: t.last_used })
            .collect()
    })
    .await
    .map_err(|_| ApiError::internal("listing tokens failed"))?;
    Ok(Json(rows))
}

/// Revoke one of your API tokens.
#[utoipa::path(delete, operation_id = "revokeToken", path = "/api/v1/tokens/{id}", tag = "session", params(("id" = String, Path)),
    responses((status = 200, body = Ok_)))]
pub(super) async fn revoke_token(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(id): Name,
) -> ApiResult<Json<Ok_>> {
    let user = who.user.clone();
    tracing::info!(user = %shown(&user), token = %shown(&id), "revoke token");
    tokio::task::spawn_blocking(move || app.auth.revoke(&user, &id))
        .await
        .map_err(|_| ApiError::internal("revoking failed"))?
        .map_err(|e| match e {
            crate::auth::AuthError::NoToken(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            e => ApiError::internal(e.to_string()),
        })?;
    Ok(Json(Ok_ { ok: true }))
}
