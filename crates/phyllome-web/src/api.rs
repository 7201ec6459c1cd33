//! The API's handlers. Each calls the same engine functions as the CLI
//! (`phyllome_engine::vm`, the catalog, `phyllome_host::check` and
//! `::devices`); the web layer adds only what a remote caller needs: files
//! come from the ISO folder by name (never a host path), and a passphrase
//! comes in the body.
//!
//! Each handler's `#[utoipa::path]` and its types' `ToSchema` make the
//! OpenAPI document ([`crate::openapi`]); `utoipa_axum::routes!` registers
//! the handler and its document entry together, so neither exists without
//! the other.

use crate::auth::{LoginError, Principal};
use crate::http::{shown, ApiError, ErrorBody, JsonBody, Name};
use crate::{ws, App};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use phyllome_engine::host_facts;
use phyllome_engine::op::progress::Progress;
use phyllome_engine::remotes::LOCAL;
use phyllome_engine::vm::{self, Created, Deleted, Details, VmError, VmSpec};
use phyllome_host::check;
use phyllome_libvirt::Libvirt;
use phyllome_model::build::Encryption;
use phyllome_model::catalog::{self, Bus};
use phyllome_model::domain::DirectBoot;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type ApiResult<T> = Result<T, ApiError>;

/// Every API route, with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(session))
        .routes(routes!(openapi))
        .routes(routes!(events))
        .routes(routes!(list_vms, create_vm))
        .routes(routes!(get_vm, delete_vm))
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(kill_vm))
        .routes(routes!(pause_vm))
        .routes(routes!(resume_vm))
        .routes(routes!(ws::console))
        .routes(routes!(ws::serial))
        .routes(routes!(list_os))
        .routes(routes!(get_os))
        .routes(routes!(list_media))
        .routes(routes!(list_networks))
        .routes(routes!(host_check))
        .routes(routes!(list_devices))
        .routes(routes!(list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(host_stats))
        .routes(routes!(vm_stats))
        .routes(routes!(delete_media))
        .routes(routes!(list_shares, add_share))
        .routes(routes!(remove_share))
        .routes(routes!(list_snapshots, create_snapshot))
        .routes(routes!(delete_snapshot))
        .routes(routes!(revert_snapshot))
        .routes(routes!(clone_vm))
        .routes(routes!(set_autostart))
        .routes(routes!(vm_manifest))
        .routes(routes!(crate::bundle::export_vm))
        .routes(routes!(crate::bundle::download_export))
        .routes(routes!(list_hosts))
        .routes(routes!(migrate_check))
        .routes(routes!(migrate_vm))
        .routes(routes!(clean_host))
}

/// The routes whose bodies may be large (uploads: media, bundles): outside the 64 KiB body limit.
pub fn upload_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(upload_media)).routes(routes!(crate::bundle::import_vm))
}

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

/// `?host=NAME`: which host's VM a route acts on.
#[derive(Deserialize, IntoParams, Default)]
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
pub async fn host_param(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.get("host").cloned())
        .filter(|h| !h.is_empty() && h != LOCAL);
    let Some(host) = host else { return next.run(req).await };
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string());
    let route = route.unwrap_or_default();
    if !route.starts_with("/api/v1/vms/{name}") {
        return next.run(req).await;
    }
    if app.host_uri(&host).is_none() {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no host named {} (GET /api/v1/hosts lists them)", shown(&host)),
        )
        .into_response();
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

pub(crate) fn who_did(who: &Principal, what: &str, name: &str) {
    tracing::info!("{}: {what} {}", shown(&who.user), shown(name));
}

// ---- session ---------------------------------------------------------------

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

#[derive(Serialize, ToSchema)]
pub struct Ok_ {
    ok: bool,
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
async fn login(
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
async fn logout(State(app): State<Arc<App>>, Extension(who): Extension<Principal>) -> Response {
    if let Some(key) = who.session {
        app.auth.sessions.remove(&key);
    }
    let mut r = Json(Ok_ { ok: true }).into_response();
    r.headers_mut().insert(header::SET_COOKIE, cookie_header(&app, app.cookie_name(), "", Some(Duration::ZERO)));
    r
}

/// Who is logged in, and the CSRF token to send in X-CSRF-Token.
#[utoipa::path(get, operation_id = "getSession", path = "/api/v1/session", tag = "session", responses((status = 200, body = SessionInfo)))]
async fn session(State(app): State<Arc<App>>, Extension(who): Extension<Principal>) -> Json<SessionInfo> {
    Json(SessionInfo { user: who.user, csrf: who.csrf, idle_timeout_secs: app.auth.sessions.idle().as_secs() })
}

/// This document.
#[utoipa::path(get, operation_id = "getOpenApi", path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, body = Object, content_type = "application/json")))]
async fn openapi(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], app.openapi.clone()).into_response()
}

// ---- VMs -------------------------------------------------------------------

/// While libvirtd cannot be reached: the last list read, marked stale.
#[derive(Serialize, ToSchema)]
pub struct StaleList {
    error: String,
    kind: String,
    stale: bool,
    /// Since when libvirtd is unreachable (UNIX seconds).
    since: Option<u64>,
    vms: Vec<crate::inventory::ListedVm>,
}

/// List the VMs of every host (this one, `local`, first), each with its host; the VMs of a host that does
/// not answer are its last rows read, marked `unreachable`.
#[utoipa::path(get, operation_id = "listVms", path = "/api/v1/vms", tag = "vms",
    responses((status = 200, body = Vec<crate::inventory::ListedVm>), (status = 503, body = StaleList,
        description = "this host's libvirtd cannot be reached: the last list read, marked stale")))]
async fn list_vms(State(app): State<Arc<App>>) -> Response {
    let status = app.inventory.status();
    let list = app.inventory.current();
    if status.stale {
        let vms: serde_json::Value = serde_json::from_slice(&list).unwrap_or_default();
        let body = serde_json::json!({
            "error": "libvirtd cannot be reached: this is the last VM list read, and may be out of date",
            "kind": "unavailable", "stale": true, "since": status.since, "vms": vms,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], list).into_response()
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// 1-64 of letters, digits, '.', '_' and '-'.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    name: String,
    /// An id from GET /api/v1/os; empty or absent: detected from `iso`.
    #[serde(default)]
    os: String,
    /// With a unit: `4GiB`, `512MiB` (GB = 10^9 bytes).
    #[schema(example = "4GiB")]
    memory: Option<String>,
    cpus: Option<u32>,
    #[schema(example = "64GiB")]
    disk_size: Option<String>,
    /// An installer ISO: a file name from GET /api/v1/media.
    iso: Option<String>,
    /// Windows driver ISO: a file name from GET /api/v1/media.
    drivers: Option<String>,
    /// Direct kernel boot: a file name from GET /api/v1/media.
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    /// `none`, `user`, `default` or a libvirt network (GET /api/v1/networks).
    network: Option<String>,
    /// `virtio` or `sata`.
    disk_bus: Option<String>,
    secure_boot: Option<bool>,
    /// `secret` (the default), `prompt` or `none`.
    encryption: Option<String>,
    /// With encryption=prompt.
    passphrase: Option<String>,
    start: Option<bool>,
    /// Below the OS's minimum disk size: create anyway.
    force: Option<bool>,
}

/// Empty form fields mean "not given".
fn given(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_string)
}

/// A file in the ISO folder, by its name (never a path: a web user picks from the folder).
pub fn media_file(dir: &Path, what: &str, name: &str) -> Result<String, ApiError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(char::is_control)
        && name.len() <= 255;
    if !ok {
        return Err(ApiError::bad(format!("{what} must be a file name from GET /api/v1/media, not a path")));
    }
    let path = dir.join(name);
    if !path.is_file() {
        return Err(ApiError::bad(format!("{what} {name:?} is not in the ISO folder {}", dir.display())));
    }
    Ok(path.to_string_lossy().into_owned())
}

fn spec_from(app: &App, b: &CreateBody) -> Result<(VmSpec, Option<Vec<u8>>), ApiError> {
    phyllome_model::input::validate_name(&b.name).map_err(|e| ApiError::bad(e.to_string()))?;
    let os = b.os.trim();
    // Empty: the engine reads the OS from the ISO (and refuses without one).
    if !os.is_empty() && catalog::profile(os).is_none() {
        return Err(ApiError::bad(format!("unknown OS id {:?}; known ids: {}", b.os, catalog::ids().join(", "))));
    }
    let dir = &app.config.media_dir;
    let file = |what: &str, v: &Option<String>| given(v).map(|n| media_file(dir, what, &n)).transpose();
    let kernel = file("kernel", &b.kernel)?;
    let initrd = file("initrd", &b.initrd)?;
    let cmdline = given(&b.cmdline);
    if kernel.is_none() && (initrd.is_some() || cmdline.is_some()) {
        return Err(ApiError::bad("initrd and cmdline go with kernel (direct kernel boot)"));
    }
    let encryption = match given(&b.encryption) {
        None => Encryption::Secret,
        Some(e) => Encryption::parse(&e).ok_or_else(|| ApiError::bad("encryption must be secret, prompt or none"))?,
    };
    let passphrase = match (encryption, b.passphrase.as_deref()) {
        (Encryption::Prompt, Some(p)) if !p.is_empty() => Some(p.as_bytes().to_vec()),
        (Encryption::Prompt, _) => return Err(ApiError::bad("encryption=prompt needs a passphrase")),
        (_, Some(_)) => return Err(ApiError::bad("a passphrase goes with encryption=prompt only")),
        (_, None) => None,
    };
    let disk_bus = match given(&b.disk_bus).as_deref() {
        None => None,
        Some("virtio") => Some(Bus::Virtio),
        Some("sata") => Some(Bus::Sata),
        Some(_) => return Err(ApiError::bad("disk_bus must be virtio or sata")),
    };
    let spec = VmSpec {
        request: phyllome_model::Request {
            os: os.to_string(),
            memory: given(&b.memory),
            cpus: b.cpus,
            disk_size: given(&b.disk_size),
            iso: file("iso", &b.iso)?,
            drivers: file("drivers", &b.drivers)?,
            secure_boot: b.secure_boot.unwrap_or(false),
            disk_bus,
            direct_boot: kernel.map(|kernel| DirectBoot { kernel, initrd, cmdline }),
            force: b.force.unwrap_or(false),
            ..Default::default()
        },
        network: given(&b.network).unwrap_or_else(|| "default".into()),
        encryption: Some(encryption),
        pool: None,
        shares: Vec::new(),
        share_force: false,
    };
    Ok((spec, passphrase))
}

fn wants_events(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"))
}

/// A create step as an event (`progress`).
#[derive(Serialize, ToSchema)]
pub struct StepEvent {
    /// The step that begins (`claim`, `pool`, `secret`, `volume`, `boot-files`, `define`, `nvram`, `start`, `finish`),
    /// or null for a note.
    step: Option<&'static str>,
    message: String,
}

/// Create a VM (disk encrypted by default), optionally starting it. With
/// `Accept: text/event-stream` the answer is a stream of `progress` events
/// (StepEvent) ending with one `created` (Created) or `error` (ErrorBody) event.
#[utoipa::path(post, operation_id = "createVm", path = "/api/v1/vms", tag = "vms", request_body = CreateBody,
    responses((status = 201, body = Created),
        (status = 404, description = "no such network or storage pool", body = ErrorBody),
        (status = 422, description = "this host cannot run it (UEFI, TPM, secure-boot firmware...)", body = ErrorBody),
        (status = 200, description = "with Accept: text/event-stream: progress, then created or error",
         content_type = "text/event-stream", body = String)))]
async fn create_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBody, 65536>,
) -> ApiResult<Response> {
    let (spec, passphrase) = spec_from(&app, &body)?;
    let start = body.start.unwrap_or(false);
    who_did(&who, "create", &body.name);
    let name = body.name.clone();
    if !wants_events(&headers) {
        let created = blocking(&app, move |app, lv| {
            let r = vm::create(lv, &name, &spec, passphrase.as_deref(), start, &log_progress(&name));
            app.inventory.refresh(&name);
            Ok(r?)
        })
        .await?;
        return Ok((StatusCode::CREATED, Json(created)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let app2 = Arc::clone(&app);
    tokio::task::spawn_blocking(move || {
        let lv = match app2.libvirt() {
            Ok(lv) => lv,
            Err(e) => {
                let _ = tx.send(error_event(&ApiError::from(e)));
                return;
            }
        };
        let logged = log_progress(&name);
        let report = |p: Progress<'_>| {
            logged(p);
            let (step, message) = match p {
                Progress::Step { step } => (Some(step), String::new()),
                Progress::Note { message } => (None, message.to_string()),
                // Create copies nothing byte by byte.
                Progress::Bytes { .. } => return,
            };
            let e = Event::default().event("progress").json_data(StepEvent { step, message });
            if let Ok(e) = e {
                let _ = tx.send(e);
            }
        };
        let r = vm::create(&lv, &name, &spec, passphrase.as_deref(), start, &report);
        app2.inventory.refresh(&name);
        let last = match r {
            Ok(c) => Event::default().event("created").json_data(&c).unwrap_or_default(),
            Err(e) => error_event(&ApiError::from(e)),
        };
        let _ = tx.send(last);
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(stream).into_response())
}

fn error_event(e: &ApiError) -> Event {
    Event::default()
        .event("error")
        .json_data(ErrorBody { error: e.message.clone(), kind: e.kind.to_string() })
        .unwrap_or_default()
}

/// Create's notes in the server's log.
fn log_progress(name: &str) -> impl Fn(Progress<'_>) + '_ {
    move |p| {
        if let Progress::Note { message } = p {
            tracing::info!(vm = %shown(name), "create: {message}");
        }
    }
}

/// A device choice and why it was made.
#[derive(Serialize, ToSchema)]
pub struct DeviceWhy {
    item: &'static str,
    choice: String,
    why: String,
}

/// One VM's page.
#[derive(Serialize, ToSchema)]
pub struct VmPage {
    #[serde(flatten)]
    details: Details,
    /// Whether its display can be opened in the browser now.
    console: bool,
    /// Why each device is what it is (`phyllome xml --explain` for its OS on this host).
    choices: Vec<DeviceWhy>,
}

/// Details of one VM.
#[utoipa::path(get, operation_id = "getVm", path = "/api/v1/vms/{name}", tag = "vms", params(("name" = String, Path), HostQuery),
    responses((status = 200, body = VmPage)))]
async fn get_vm(State(app): State<Arc<App>>, Name(name): Name, Query(h): Query<HostQuery>) -> ApiResult<Json<VmPage>> {
    let host = h.name();
    let local = host == LOCAL;
    let page = blocking_on(&app, host, move |_, lv| {
        let details = vm::details(lv, &name)?;
        if !local {
            // Another host's display and host facts are not this server's to open or read.
            return Ok(VmPage { details, console: false, choices: vec![] });
        }
        let console = lv.xml(&name).ok().is_some_and(|x| ws::vnc_target(&x).is_ok());
        // An explanation that cannot be made (host facts unreadable) leaves the page without it.
        let choices = vm::explain(lv, &name)
            .unwrap_or_default()
            .into_iter()
            .map(|c| DeviceWhy { item: c.item, choice: c.choice, why: c.why })
            .collect();
        Ok(VmPage { details, console, choices })
    })
    .await?;
    Ok(Json(page))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Keep the disk volume and its secret.
    keep_disk: Option<bool>,
}

/// Delete a stopped VM with its disk and secrets (keep_disk=true keeps the disk).
#[utoipa::path(delete, operation_id = "deleteVm", path = "/api/v1/vms/{name}", tag = "vms", params(("name" = String, Path), DeleteQuery),
    responses((status = 200, body = Deleted)))]
async fn delete_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<Deleted>> {
    who_did(&who, "delete", &name);
    let keep_disk = q.keep_disk.unwrap_or(false);
    let deleted = blocking(&app, move |app, lv| {
        let r = vm::delete(lv, &name, keep_disk);
        app.inventory.refresh(&name);
        Ok(r?)
    })
    .await?;
    Ok(Json(deleted))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// For a disk encrypted with encryption=prompt.
    passphrase: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    /// How long to wait for the guest (at most 600).
    #[schema(default = 60, maximum = 600)]
    timeout_secs: Option<u64>,
    /// Power off when the timeout passes.
    force: Option<bool>,
}

/// What an action did.
#[derive(Serialize, ToSchema)]
pub struct Action {
    name: String,
    result: String,
    /// The VM's state afterwards.
    state: Option<String>,
}

fn action(app: &App, name: &str, result: &str) -> Action {
    action_on(app, LOCAL, name, result)
}

fn action_on(app: &App, host: &str, name: &str, result: &str) -> Action {
    let list: Vec<serde_json::Value> = serde_json::from_slice(&app.inventory.current()).unwrap_or_default();
    let state = list
        .iter()
        .find(|r| r["name"] == name && r["host"] == host)
        .and_then(|r| r["state"].as_str())
        .map(str::to_string);
    Action { name: name.to_string(), result: result.to_string(), state }
}

/// Start a VM (a passphrase-locked disk needs `passphrase`).
#[utoipa::path(post, operation_id = "startVm", path = "/api/v1/vms/{name}/start", tag = "vms", params(("name" = String, Path)),
    request_body(content = StartBody, description = "optional"), responses((status = 200, body = Action)))]
async fn start_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    JsonBody(body): JsonBody<StartBody>,
) -> ApiResult<Json<Action>> {
    who_did(&who, "start", &name);
    let a = blocking(&app, move |app, lv| {
        let pass = body.passphrase.clone();
        let n = name.clone();
        let r = vm::start(lv, &name, &move || {
            pass.clone().map(String::into_bytes).ok_or_else(|| VmError::NeedPassphrase(n.clone()))
        });
        app.inventory.refresh(&name);
        let started = r?;
        Ok(action(app, &name, if started { "started" } else { "already running" }))
    })
    .await?;
    Ok(Json(a))
}

/// Shut a VM down gracefully (ACPI, then the guest agent); `force` powers off at the timeout.
#[utoipa::path(post, operation_id = "stopVm", path = "/api/v1/vms/{name}/stop", tag = "vms", params(("name" = String, Path), HostQuery),
    request_body(content = StopBody, description = "optional"), responses((status = 200, body = Action)))]
async fn stop_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(h): Query<HostQuery>,
    JsonBody(body): JsonBody<StopBody>,
) -> ApiResult<Json<Action>> {
    let timeout = Duration::from_secs(body.timeout_secs.unwrap_or(60).min(600));
    let force = body.force.unwrap_or(false);
    let host = h.name();
    who_did_on(&who, "stop", &name, &host);
    let a = blocking_on(&app, host.clone(), move |app, lv| {
        let r = vm::stop(lv, &name, timeout, force, &phyllome_engine::op::progress::quiet);
        app.inventory.refresh_on(&host, &name);
        let how = match r? {
            vm::Stopped::AlreadyOff => "already shut off",
            vm::Stopped::PowerButton => "shut down (ACPI power button)",
            vm::Stopped::GuestAgent => "shut down (guest agent)",
            vm::Stopped::Forced => "powered off after the timeout (force)",
        };
        Ok(action_on(app, &host, &name, how))
    })
    .await?;
    Ok(Json(a))
}

/// [`who_did`] on host `host` (named in the log unless it is `local`).
fn who_did_on(who: &Principal, what: &str, name: &str, host: &str) {
    if host == LOCAL {
        who_did(who, what, name);
    } else {
        tracing::info!("{}: {what} {} on host {}", shown(&who.user), shown(name), shown(host));
    }
}

async fn simple(
    app: Arc<App>,
    who: Principal,
    name: String,
    host: String,
    what: &'static str,
) -> ApiResult<Json<Action>> {
    who_did_on(&who, what, &name, &host);
    let a = blocking_on(&app, host.clone(), move |app, lv| {
        let (r, done) = match what {
            "kill" => (vm::kill(lv, &name), "powered off"),
            "pause" => (vm::pause(lv, &name), "paused"),
            _ => (vm::resume(lv, &name), "resumed"),
        };
        app.inventory.refresh_on(&host, &name);
        r?;
        Ok(action_on(app, &host, &name, done))
    })
    .await?;
    Ok(Json(a))
}

/// Power a VM off at once.
#[utoipa::path(post, operation_id = "killVm", path = "/api/v1/vms/{name}/kill", tag = "vms", params(("name" = String, Path), HostQuery),
    responses((status = 200, body = Action)))]
async fn kill_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(h): Query<HostQuery>,
) -> ApiResult<Json<Action>> {
    simple(app, who, name, h.name(), "kill").await
}

/// Pause a running VM.
#[utoipa::path(post, operation_id = "pauseVm", path = "/api/v1/vms/{name}/pause", tag = "vms", params(("name" = String, Path), HostQuery),
    responses((status = 200, body = Action)))]
async fn pause_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(h): Query<HostQuery>,
) -> ApiResult<Json<Action>> {
    simple(app, who, name, h.name(), "pause").await
}

/// Resume a paused VM.
#[utoipa::path(post, operation_id = "resumeVm", path = "/api/v1/vms/{name}/resume", tag = "vms", params(("name" = String, Path), HostQuery),
    responses((status = 200, body = Action)))]
async fn resume_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(h): Query<HostQuery>,
) -> ApiResult<Json<Action>> {
    simple(app, who, name, h.name(), "resume").await
}

/// Whether the principal's session or token still holds; `touch` restarts a session's idle time.
pub fn still_valid(app: &App, who: &Principal, touch: bool) -> bool {
    match (&who.session, &who.token) {
        (Some(key), _) => app.auth.sessions.get_key(key, touch).is_some(),
        (None, Some(id)) => app.auth.token_exists(id),
        (None, None) => false,
    }
}

/// Server-sent events: `vms` with the whole VM list (every host's) whenever a
/// VM changes (each host's libvirt lifecycle events), `status` (Status) when
/// this host's libvirtd goes away or comes back, `hosts` (HostState list) when
/// any host does, and `logout` when the session ends.
#[utoipa::path(get, operation_id = "events", path = "/api/v1/events", tag = "vms",
    responses((status = 200, description = "an event stream", content_type = "text/event-stream", body = String)))]
async fn events(State(app): State<Arc<App>>, Extension(who): Extension<Principal>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    let mut list = app.inventory.subscribe();
    let mut status = app.inventory.subscribe_status();
    let mut hosts = app.inventory.subscribe_hosts();
    tokio::spawn(async move {
        let vms = |b: &bytes::Bytes| Event::default().event("vms").data(String::from_utf8_lossy(b));
        let hs = |b: &bytes::Bytes| Event::default().event("hosts").data(String::from_utf8_lossy(b));
        let st = |s: &crate::inventory::Status| Event::default().event("status").json_data(s).unwrap_or_default();
        let first = vms(&list.borrow_and_update());
        let first_status = st(&status.borrow_and_update());
        let first_hosts = hs(&hosts.borrow_and_update());
        if tx.send(first).await.is_err() || tx.send(first_status).await.is_err() || tx.send(first_hosts).await.is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            let e = tokio::select! {
                changed = list.changed() => match changed {
                    Ok(()) => vms(&list.borrow_and_update()),
                    Err(_) => return,
                },
                changed = status.changed() => match changed {
                    Ok(()) => st(&status.borrow_and_update()),
                    Err(_) => return,
                },
                changed = hosts.changed() => match changed {
                    Ok(()) => hs(&hosts.borrow_and_update()),
                    Err(_) => return,
                },
                _ = tick.tick() => {
                    if !still_valid(&app, &who, false) {
                        let _ = tx.send(Event::default().event("logout").data("{}")).await;
                        return;
                    }
                    Event::default().comment("keep-alive")
                }
                _ = tx.closed() => return,
            };
            if tx.send(e).await.is_err() {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    let mut r = Sse::new(stream).into_response();
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

// ---- catalog and host ------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct OsRow {
    id: &'static str,
    name: &'static str,
    family: String,
    description: &'static str,
    recommended_memory_mib: u64,
    recommended_disk_gib: u64,
    min_cpus: u32,
    /// `uefi` or `bios`.
    firmware: &'static str,
    /// With UEFI: `required` (always on), `preferred` (on when the host has the firmware) or `off`
    /// (off unless create's `secure_boot` asks); null with BIOS, which has none.
    secure_boot: Option<&'static str>,
    /// Why, in the catalog's words.
    firmware_why: &'static str,
}

/// The guest OS catalog.
#[utoipa::path(get, operation_id = "listOs", path = "/api/v1/os", tag = "catalog", responses((status = 200, body = Vec<OsRow>)))]
async fn list_os() -> Json<Vec<OsRow>> {
    Json(
        catalog::profiles()
            .iter()
            .map(|p| OsRow {
                id: p.id,
                name: p.name,
                family: serde_json::to_value(p.family)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                description: p.description,
                recommended_memory_mib: p.resources.recommended_memory_mib,
                recommended_disk_gib: p.resources.recommended_disk_gib,
                min_cpus: p.resources.min_cpus,
                firmware: match p.firmware.value {
                    catalog::FirmwarePolicy::Bios => "bios",
                    catalog::FirmwarePolicy::Uefi { .. } => "uefi",
                },
                secure_boot: match p.firmware.value {
                    catalog::FirmwarePolicy::Bios => None,
                    catalog::FirmwarePolicy::Uefi { secure_boot: catalog::SecureBoot::Required } => Some("required"),
                    catalog::FirmwarePolicy::Uefi { secure_boot: catalog::SecureBoot::Preferred } => Some("preferred"),
                    catalog::FirmwarePolicy::Uefi { secure_boot: catalog::SecureBoot::Off } => Some("off"),
                },
                firmware_why: p.firmware.why,
            })
            .collect(),
    )
}

/// One guest OS model: its devices and why.
#[utoipa::path(get, operation_id = "getOs", path = "/api/v1/os/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = Object)))]
async fn get_os(Name(id): Name) -> ApiResult<Response> {
    match catalog::profile(&id) {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown OS id {id:?}"))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct MediaFile {
    name: String,
    size: u64,
    /// `iso`, `kernel`, `initrd` or `other`.
    kind: &'static str,
    /// For an ISO: the profile detected from it (create's default OS).
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<String>,
    /// For an ISO: the OS in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    os_name: Option<String>,
    /// For an ISO: whether it boots BIOS and UEFI.
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<phyllome_engine::media::iso::Boot>,
    /// For an ISO: a virtio-win driver disc (found by its content).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    virtio_win: bool,
}

#[derive(Serialize, ToSchema)]
pub struct MediaList {
    dir: String,
    exists: bool,
    files: Vec<MediaFile>,
}

fn media_kind(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    if n.ends_with(".iso") {
        "iso"
    } else if n.starts_with("vmlinuz") || n.starts_with("bzimage") || n.starts_with("kernel") {
        "kernel"
    } else if n.starts_with("initrd") || n.starts_with("initramfs") {
        "initrd"
    } else {
        "other"
    }
}

/// What an ISO of the folder holds (`iso_dir::describe`), read once per
/// (path, size, mtime): an unknown ISO costs a pass over osinfo-db, and the
/// create dialog lists media every time it opens. Bounded: the cache starts
/// over past 256 files.
fn iso_facts(path: &Path, meta: &std::fs::Metadata) -> phyllome_engine::media::iso_dir::IsoFile {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (std::path::PathBuf, u64, Option<std::time::SystemTime>);
    static CACHE: Mutex<Option<HashMap<Key, phyllome_engine::media::iso_dir::IsoFile>>> = Mutex::new(None);
    let key: Key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(hit) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return hit.clone();
    }
    let facts = phyllome_engine::media::iso_dir::describe(path);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if map.len() >= 256 {
        map.clear();
    }
    map.insert(key, facts.clone());
    facts
}

fn read_media(dir: &Path) -> MediaList {
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Follows symlinks: a link in the folder to media elsewhere is offered too.
            if let Ok(m) = std::fs::metadata(e.path()) {
                if m.is_file() {
                    let kind = media_kind(&name);
                    let mut f =
                        MediaFile { name, size: m.len(), kind, os: None, os_name: None, boot: None, virtio_win: false };
                    if kind == "iso" {
                        let i = iso_facts(&e.path(), &m);
                        (f.os, f.os_name, f.boot, f.virtio_win) = (i.os, i.os_name, i.boot, i.virtio_win);
                    }
                    files.push(f);
                }
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    MediaList { dir: dir.display().to_string(), exists: dir.is_dir(), files }
}

/// Files in the host's ISO folder (installer ISOs, kernels, initrds) that create may use.
#[utoipa::path(get, operation_id = "listMedia", path = "/api/v1/media", tag = "host", responses((status = 200, body = MediaList)))]
async fn list_media(State(app): State<Arc<App>>) -> ApiResult<Json<MediaList>> {
    let dir = app.config.media_dir.clone();
    let v = tokio::task::spawn_blocking(move || read_media(&dir))
        .await
        .map_err(|_| ApiError::internal("listing failed"))?;
    Ok(Json(v))
}

#[derive(Serialize, ToSchema)]
pub struct NetworkRow {
    name: String,
    active: bool,
    /// `nat`, `route`, `bridge`...; null for an isolated network.
    forward: Option<String>,
}

/// libvirt's networks, and which are active (create offers those only).
#[utoipa::path(get, operation_id = "listNetworks", path = "/api/v1/networks", tag = "host", responses((status = 200, body = Vec<NetworkRow>)))]
async fn list_networks(State(app): State<Arc<App>>) -> ApiResult<Json<Vec<NetworkRow>>> {
    let v = blocking(&app, |_, lv| {
        Ok(lv.networks()?.into_iter().map(|(name, active, forward)| NetworkRow { name, active, forward }).collect())
    })
    .await?;
    Ok(Json(v))
}

/// Is this host ready to run guests well (the `phyllome check` report).
#[utoipa::path(get, operation_id = "hostCheck", path = "/api/v1/host/check", tag = "host", responses((status = 200, body = Object)))]
async fn host_check(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let report = blocking(&app, |app, lv| {
        let inputs = host_facts::check_inputs(Ok(lv), &app.config.uri);
        Ok(check::run(Path::new("/"), &inputs))
    })
    .await?;
    Ok(Json(report).into_response())
}

/// PCI and USB devices and whether each can be passed through (`phyllome devices`).
#[utoipa::path(get, operation_id = "listDevices", path = "/api/v1/devices", tag = "host", responses((status = 200, body = Object)))]
async fn list_devices() -> ApiResult<Json<serde_json::Value>> {
    let v = tokio::task::spawn_blocking(|| {
        let inv = phyllome_host::devices::read_devices(Path::new("/"));
        let mut v = serde_json::to_value(&inv).unwrap_or_default();
        if let Some(list) = v["pci"].as_array_mut() {
            for (item, dev) in list.iter_mut().zip(&inv.pci) {
                item["detail"] = dev.verdict_detail().into();
            }
        }
        v
    })
    .await
    .map_err(|_| ApiError::internal("reading devices failed"))?;
    Ok(Json(v))
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
async fn list_tokens(
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
async fn revoke_token(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_names_are_names() {
        let dir = std::env::temp_dir().join(format!("phyllome-media-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.iso"), b"x").unwrap();
        assert!(media_file(&dir, "iso", "a.iso").unwrap().ends_with("/a.iso"));
        for bad in ["../a.iso", "/etc/passwd", ".hidden", "", "b.iso", "x/../a.iso"] {
            assert!(media_file(&dir, "iso", bad).is_err(), "{bad}");
        }
        let listed = read_media(&dir);
        assert_eq!(listed.files[0].kind, "iso");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let s = |e: VmError| ApiError::from(e).status;
        assert_eq!(s(VmError::NoSuchVm("x".into())), StatusCode::NOT_FOUND);
        assert_eq!(s(VmError::Running("x".into())), StatusCode::CONFLICT);
        assert_eq!(s(VmError::NetworkInactive("default".into())), StatusCode::CONFLICT);
        assert_eq!(s(VmError::EmptyPassphrase), StatusCode::BAD_REQUEST);
        use phyllome_engine::bundle::BundleError as B;
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

    #[test]
    fn media_kinds() {
        assert_eq!(media_kind("debian.iso"), "iso");
        assert_eq!(media_kind("vmlinuz"), "kernel");
        assert_eq!(media_kind("initrd.img"), "initrd");
        assert_eq!(media_kind("STAMP"), "other");
    }
}

const NO_STATS: &str =
    "no current statistics: the first sample comes within seconds of the start, and none while libvirtd does not answer";

/// What the running VMs use now, and the host's load (`phyllome stats --json`),
/// from the server's latest sample (taken every second).
#[utoipa::path(get, operation_id = "getStats", path = "/api/v1/stats", tag = "stats",
    responses((status = 200, body = phyllome_engine::stats::StatsReport)))]
async fn host_stats(State(app): State<Arc<App>>) -> ApiResult<Response> {
    match app.stats.report() {
        Some(r) => Ok(Json(&*r).into_response()),
        None => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NO_STATS)),
    }
}

/// One VM's last ten minutes, a point a second (the UI's charts), and its figures now.
#[utoipa::path(get, operation_id = "getVmStats", path = "/api/v1/vms/{name}/stats", tag = "stats",
    params(("name" = String, Path)), responses((status = 200, body = crate::stats::History)))]
async fn vm_stats(State(app): State<Arc<App>>, Name(name): Name) -> ApiResult<Response> {
    if let Some(h) = app.stats.history(&name) {
        return Ok(Json(h).into_response());
    }
    // Not seen running: it may exist all the same.
    let exists = blocking(&app, move |_, lv| Ok(lv.exists(&name)?)).await?;
    if !exists {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such VM"));
    }
    Ok(Json(app.stats.empty()).into_response())
}

/// `GET /metrics`: the latest sample in the Prometheus text format, for an
/// API token or a metrics token (`phyllome user token --metrics`). OpenMetrics
/// when the scraper asks for it (Prometheus does), else the classic 0.0.4 text.
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(text) = app.stats.metrics() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NO_STATS).into_response();
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        let ctype = HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
        ([(header::CONTENT_TYPE, ctype)], text).into_response()
    } else {
        let ctype = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
        ([(header::CONTENT_TYPE, ctype)], crate::stats::classic_text(&text)).into_response()
    }
}

/// Upload an ISO into the host's ISO folder: the raw image as the body
/// (`Content-Length` required), streamed to disk with constant memory. Refused
/// before a byte is written when the name is taken or the disk lacks space; the
/// image must be an ISO once complete, and lands under its name only then.
#[utoipa::path(put, operation_id = "uploadMedia", path = "/api/v1/media/{name}", tag = "host",
    params(("name" = String, Path, description = "The file name (made safe; must end in .iso)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = phyllome_engine::media::iso_dir::Added), (status = 411, body = ErrorBody), (status = 507, body = ErrorBody)))]
async fn upload_media(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    use futures_util::TryStreamExt;
    let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    else {
        return Err(ApiError::new(StatusCode::LENGTH_REQUIRED, "send the image with a Content-Length"));
    };
    who_did(&who, "upload", &name);
    let dir = app.config.media_dir.clone();
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let handle = tokio::runtime::Handle::current();
    let added = tokio::task::spawn_blocking(move || {
        let mut sync = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle);
        let never = std::sync::atomic::AtomicBool::new(false);
        phyllome_engine::media::iso_dir::receive(
            &dir,
            &name,
            Some(len),
            &mut sync,
            &never,
            &phyllome_engine::op::progress::quiet,
        )
    })
    .await
    .map_err(|_| ApiError::internal("the upload's worker failed"))??;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

/// Remove an ISO no VM uses from the host's ISO folder.
#[utoipa::path(delete, operation_id = "deleteMedia", path = "/api/v1/media/{name}", tag = "host",
    params(("name" = String, Path)), responses((status = 200, body = Object)))]
async fn delete_media(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
) -> ApiResult<Json<serde_json::Value>> {
    who_did(&who, "remove medium", &name);
    let path =
        blocking(&app, move |app, lv| Ok(phyllome_engine::media::iso_dir::remove(lv, &app.config.media_dir, &name)?))
            .await?;
    Ok(Json(serde_json::json!({ "removed": path })))
}

/// A VM's shared folders (virtiofs), as its definition has them.
#[utoipa::path(get, operation_id = "listShares", path = "/api/v1/vms/{name}/shares", tag = "vms",
    params(("name" = String, Path)), responses((status = 200, body = Vec<phyllome_engine::share::ShareRow>)))]
async fn list_shares(
    State(app): State<Arc<App>>,
    Name(name): Name,
) -> ApiResult<Json<Vec<phyllome_engine::share::ShareRow>>> {
    Ok(Json(blocking(&app, move |_, lv| Ok(phyllome_engine::share::list(lv, &name)?)).await?))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareBody {
    /// The host folder (absolute). The host's critical folders and folders holding a VM's disk are refused
    /// (the CLI's `share add --force` can share them; the API cannot).
    dir: String,
    /// The name the guest mounts it by (default: the folder's name).
    tag: Option<String>,
    /// Let the guest write (default: read-only).
    writable: Option<bool>,
}

/// Share a host folder with a VM over virtiofs; says whether it applies now or at the next boot.
#[utoipa::path(post, operation_id = "addShare", path = "/api/v1/vms/{name}/shares", tag = "vms",
    params(("name" = String, Path)), request_body = ShareBody,
    responses((status = 200, body = phyllome_engine::share::ShareChange)))]
async fn add_share(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    JsonBody(b): JsonBody<ShareBody>,
) -> ApiResult<Json<phyllome_engine::share::ShareChange>> {
    who_did(&who, "share a folder with", &name);
    let c = blocking(&app, move |_, lv| {
        Ok(phyllome_engine::share::add(lv, &name, &b.dir, b.tag.as_deref(), b.writable.unwrap_or(false), false)?)
    })
    .await?;
    Ok(Json(c))
}

/// Stop sharing a folder with a VM.
#[utoipa::path(delete, operation_id = "removeShare", path = "/api/v1/vms/{name}/shares/{tag}", tag = "vms",
    params(("name" = String, Path), ("tag" = String, Path)),
    responses((status = 200, body = phyllome_engine::share::ShareChange)))]
async fn remove_share(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    axum::extract::Path((name, tag)): axum::extract::Path<(String, String)>,
) -> ApiResult<Json<phyllome_engine::share::ShareChange>> {
    if [&name, &tag].iter().any(|v| v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control)) {
        return Err(ApiError::bad("not a valid name: it is empty, too long, or holds control characters"));
    }
    who_did(&who, "stop sharing a folder with", &name);
    let c = blocking(&app, move |_, lv| Ok(phyllome_engine::share::remove(lv, &name, &tag)?)).await?;
    Ok(Json(c))
}

// ---- snapshots -------------------------------------------------------------

/// A VM's snapshots, oldest first.
#[utoipa::path(get, operation_id = "listSnapshots", path = "/api/v1/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path)), responses((status = 200, body = Vec<phyllome_engine::snapshot::SnapshotInfo>)))]
async fn list_snapshots(
    State(app): State<Arc<App>>,
    Name(name): Name,
) -> ApiResult<Json<Vec<phyllome_engine::snapshot::SnapshotInfo>>> {
    Ok(Json(blocking(&app, move |_, lv| Ok(phyllome_engine::snapshot::list(lv, &name)?)).await?))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// Its name (default: snap1, snap2...): letters, digits, '.', '_' and '-'.
    name: Option<String>,
    /// Also save the RAM, so a revert resumes the VM where it was (the VM must run).
    memory: Option<bool>,
    description: Option<String>,
}

/// The bytes a snapshot step copied (`progress` events carry them too).
#[derive(Serialize, ToSchema)]
pub struct SnapshotProgress {
    /// The step that begins, or null for a note or a byte count.
    step: Option<&'static str>,
    message: String,
    done: Option<u64>,
    total: Option<u64>,
}

/// Runs a long snapshot operation: JSON at the end, or with `Accept: text/event-stream`
/// `progress` events (SnapshotProgress) then one `done` or `error` event.
async fn snapshot_job<T: Serialize + Send + 'static>(
    app: &Arc<App>,
    headers: &HeaderMap,
    vm: String,
    ok: StatusCode,
    f: impl FnOnce(&Libvirt, &dyn Fn(Progress<'_>)) -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<Response> {
    if !wants_events(headers) {
        let r = blocking(app, move |app, lv| {
            let r = f(lv, &phyllome_engine::op::progress::quiet);
            app.inventory.refresh(&vm);
            r
        })
        .await?;
        return Ok((ok, Json(r)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let app2 = Arc::clone(app);
    tokio::task::spawn_blocking(move || {
        let lv = match app2.libvirt() {
            Ok(lv) => lv,
            Err(e) => {
                let _ = tx.send(error_event(&ApiError::from(e)));
                return;
            }
        };
        let last_bytes = std::cell::Cell::new(std::time::Instant::now() - Duration::from_secs(1));
        let report = |p: Progress<'_>| {
            let body = match p {
                Progress::Step { step } => {
                    SnapshotProgress { step: Some(step), message: String::new(), done: None, total: None }
                }
                Progress::Note { message } => {
                    SnapshotProgress { step: None, message: message.to_string(), done: None, total: None }
                }
                Progress::Bytes { done, total } => {
                    // At most four byte counts a second reach the page.
                    if last_bytes.get().elapsed() < Duration::from_millis(250) && (done < total || total == 0) {
                        return;
                    }
                    last_bytes.set(std::time::Instant::now());
                    SnapshotProgress { step: None, message: String::new(), done: Some(done), total: Some(total) }
                }
            };
            if let Ok(e) = Event::default().event("progress").json_data(body) {
                let _ = tx.send(e);
            }
        };
        let r = f(&lv, &report);
        app2.inventory.refresh(&vm);
        let last = match r {
            Ok(v) => Event::default().event("done").json_data(&v).unwrap_or_default(),
            Err(e) => error_event(&e),
        };
        let _ = tx.send(last);
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(stream).into_response())
}

/// Take a snapshot: disks, UEFI variables, TPM state, and the RAM with `memory`.
/// With `Accept: text/event-stream`: `progress` events, then `done` (SnapshotInfo) or `error`.
#[utoipa::path(post, operation_id = "createSnapshot", path = "/api/v1/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path)), request_body = SnapshotBody,
    responses((status = 201, body = phyllome_engine::snapshot::SnapshotInfo),
        (status = 200, description = "with Accept: text/event-stream: progress, then done or error",
         content_type = "text/event-stream", body = String),
        (status = 507, description = "not enough space for the snapshot", body = ErrorBody)))]
async fn create_snapshot(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Name(name): Name,
    JsonBody(b): JsonBody<SnapshotBody>,
) -> ApiResult<Response> {
    who_did(&who, "snapshot", &name);
    let req = phyllome_engine::snapshot::SnapshotRequest {
        name: b.name,
        memory: b.memory.unwrap_or(false),
        description: b.description,
    };
    let vm = name.clone();
    snapshot_job(&app, &headers, name, StatusCode::CREATED, move |lv, report| {
        Ok(phyllome_engine::snapshot::create(lv, &vm, &req, report)?)
    })
    .await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertBody {
    /// Start the VM afterwards (a memory snapshot resumes it anyway).
    start: Option<bool>,
    /// Power a running VM off first (what it did since the snapshot is lost); without it a running VM is refused (409).
    force: Option<bool>,
}

/// Put a VM back as it was at a snapshot.
/// With `Accept: text/event-stream`: `progress` events, then `done` (Reverted) or `error`.
#[utoipa::path(post, operation_id = "revertSnapshot", path = "/api/v1/vms/{name}/snapshots/{snapshot}/revert",
    tag = "snapshots", params(("name" = String, Path), ("snapshot" = String, Path)), request_body = RevertBody,
    responses((status = 200, body = phyllome_engine::snapshot::Reverted)))]
async fn revert_snapshot(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    axum::extract::Path((name, snap)): axum::extract::Path<(String, String)>,
    JsonBody(b): JsonBody<RevertBody>,
) -> ApiResult<Response> {
    check_path_names(&[&name, &snap])?;
    who_did(&who, "revert", &name);
    let vm = name.clone();
    snapshot_job(&app, &headers, name, StatusCode::OK, move |lv, report| {
        let ask = || Err(phyllome_engine::vm::VmError::NeedPassphrase(vm.clone()));
        Ok(phyllome_engine::snapshot::revert(
            lv,
            &vm,
            &snap,
            b.start.unwrap_or(false),
            b.force.unwrap_or(false),
            &ask,
            report,
        )?)
    })
    .await
}

/// Delete a snapshot (the VM is not touched).
#[utoipa::path(delete, operation_id = "deleteSnapshot", path = "/api/v1/vms/{name}/snapshots/{snapshot}",
    tag = "snapshots", params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 200, body = Ok_)))]
async fn delete_snapshot(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    axum::extract::Path((name, snap)): axum::extract::Path<(String, String)>,
) -> ApiResult<Json<Ok_>> {
    check_path_names(&[&name, &snap])?;
    who_did(&who, "delete a snapshot of", &name);
    blocking(&app, move |app, lv| {
        phyllome_engine::snapshot::delete(lv, &name, &snap)?;
        app.inventory.refresh(&name);
        Ok(())
    })
    .await?;
    Ok(Json(Ok_ { ok: true }))
}

fn check_path_names(values: &[&String]) -> Result<(), ApiError> {
    if values.iter().any(|v| v.is_empty() || v.len() > 1024 || v.chars().any(char::is_control)) {
        return Err(ApiError::bad("not a valid name: it is empty, too long, or holds control characters"));
    }
    Ok(())
}

// ---- clone, autostart, manifest ---------------------------------------------

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneBody {
    /// The clone's name.
    name: String,
    /// Copy the TPM state too (default: a fresh TPM, since a copied one clones the guest's sealed secrets).
    keep_tpm: Option<bool>,
}

/// Clone a stopped VM: a new UUID and MAC, the disk re-encrypted under its own key, the NVRAM copied,
/// a fresh TPM unless `keep_tpm`. With `Accept: text/event-stream`: `progress` events, then `done` (Cloned) or `error`.
#[utoipa::path(post, operation_id = "cloneVm", path = "/api/v1/vms/{name}/clone", tag = "vms",
    params(("name" = String, Path)), request_body = CloneBody,
    responses((status = 201, body = phyllome_engine::clone::Cloned),
        (status = 200, description = "with Accept: text/event-stream: progress, then done or error",
         content_type = "text/event-stream", body = String)))]
async fn clone_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Name(name): Name,
    JsonBody(b): JsonBody<CloneBody>,
) -> ApiResult<Response> {
    who_did(&who, "clone", &name);
    let new = b.name.clone();
    let from = name.clone();
    let r = snapshot_job(&app, &headers, b.name, StatusCode::CREATED, move |lv, report| {
        Ok(phyllome_engine::clone::clone(lv, &from, &new, b.keep_tpm.unwrap_or(false), report)?)
    })
    .await;
    app.inventory.refresh(&name);
    r
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutostartBody {
    /// Start the VM when the host boots (libvirt's autostart).
    on: bool,
}

/// Turn a VM's autostart on or off.
#[utoipa::path(put, operation_id = "setAutostart", path = "/api/v1/vms/{name}/autostart", tag = "vms",
    params(("name" = String, Path)), request_body = AutostartBody, responses((status = 200, body = Ok_)))]
async fn set_autostart(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    JsonBody(b): JsonBody<AutostartBody>,
) -> ApiResult<Json<Ok_>> {
    who_did(&who, if b.on { "turn autostart on for" } else { "turn autostart off for" }, &name);
    blocking(&app, move |app, lv| {
        phyllome_engine::vm::set_autostart(lv, &name, b.on)?;
        app.inventory.refresh(&name);
        Ok(())
    })
    .await?;
    Ok(Json(Ok_ { ok: true }))
}

/// A VM's manifest (docs/manifest.md) and the notes on what could not be told.
#[derive(Serialize, ToSchema)]
pub struct ManifestOut {
    /// The manifest as TOML, as `phyllome manifest` prints it.
    toml: String,
    notes: Vec<String>,
}

/// A VM's manifest: what was chosen for it, never host paths or host-derived devices.
#[utoipa::path(get, operation_id = "vmManifest", path = "/api/v1/vms/{name}/manifest", tag = "vms",
    params(("name" = String, Path)), responses((status = 200, body = ManifestOut)))]
async fn vm_manifest(State(app): State<Arc<App>>, Name(name): Name) -> ApiResult<Json<ManifestOut>> {
    let (m, notes) = blocking(&app, move |_, lv| Ok(phyllome_engine::manifest::of_vm(lv, &name)?)).await?;
    Ok(Json(ManifestOut { toml: m.to_toml(&notes), notes }))
}

// ---- hosts and migration ------------------------------------------------------

/// The hosts whose VMs the list shows (`local` first, then `phyllome host list`'s, as they were when the server
/// started) and whether each answers now.
#[utoipa::path(get, operation_id = "listHosts", path = "/api/v1/hosts", tag = "hosts",
    responses((status = 200, body = Vec<crate::inventory::HostState>)))]
async fn list_hosts(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], app.inventory.hosts()).into_response()
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateBody {
    /// The destination: a host's name from GET /api/v1/hosts (not `local`).
    to: String,
    /// Move it running (true) or stopped (false); default: running VMs live, shut-off ones offline.
    live: Option<bool>,
}

/// The destination's URI and the move's request for a VM of this host; the mode follows its state unless given.
fn migrate_request(
    app: &App,
    lv: &Libvirt,
    name: &str,
    b: &MigrateBody,
) -> Result<phyllome_engine::migrate::MoveRequest, ApiError> {
    let uri = destination(app, &b.to)?;
    let live = match b.live {
        Some(l) => l,
        None => {
            let st = lv.state(name).map_err(|e| {
                if e.is_no_domain() {
                    ApiError::from(VmError::NoSuchVm(name.to_string()))
                } else {
                    ApiError::from(e)
                }
            })?;
            st != phyllome_libvirt::State::Shutoff
        }
    };
    // Phyllome's disks are volumes of each host's own pool: a move always copies the disk.
    Ok(phyllome_engine::migrate::MoveRequest { to: uri, live, copy_storage: true })
}

/// A configured host other than this one, by name (the browser never gives a URI).
fn destination(app: &App, to: &str) -> Result<String, ApiError> {
    if to == LOCAL {
        return Err(ApiError::bad("the VM is on this host (local) already: choose another host as the destination"));
    }
    app.host_uri(to).map(str::to_string).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no host named {} (GET /api/v1/hosts lists them)", shown(to)))
    })
}

/// What a move of this host's VM to another host needs, item by item (`phyllome migrate --dry-run`); changes
/// nothing. `ok` says whether it can move.
#[utoipa::path(post, operation_id = "checkMigration", path = "/api/v1/vms/{name}/migrate/check", tag = "hosts",
    params(("name" = String, Path)), request_body = MigrateBody,
    responses((status = 200, body = phyllome_engine::migrate::Checked)))]
async fn migrate_check(
    State(app): State<Arc<App>>,
    Name(name): Name,
    JsonBody(b): JsonBody<MigrateBody>,
) -> ApiResult<Json<phyllome_engine::migrate::Checked>> {
    destination(&app, &b.to)?;
    let c = blocking(&app, move |app, lv| {
        let req = migrate_request(app, lv, &name, &b)?;
        let dst = app.libvirt_on(&b.to)?;
        let mut c = phyllome_engine::migrate::check(lv, &dst, &name, &req)?;
        c.to = b.to.clone();
        Ok(c)
    })
    .await?;
    Ok(Json(c))
}

/// Move a VM of this host to another host with libvirt's migration (checked first; the disk copied and
/// re-encrypted there under a new key; TPM and UEFI variables with it; removed here once it is there).
/// With `Accept: text/event-stream`: `progress` events (SnapshotProgress: steps, bytes), then `done` (Migrated)
/// or `error`.
#[utoipa::path(post, operation_id = "migrateVm", path = "/api/v1/vms/{name}/migrate", tag = "hosts",
    params(("name" = String, Path)), request_body = MigrateBody,
    responses((status = 200, body = phyllome_engine::migrate::Migrated),
        (status = 422, body = ErrorBody, description = "the check failed: the error names the failed items")))]
async fn migrate_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Name(name): Name,
    JsonBody(b): JsonBody<MigrateBody>,
) -> ApiResult<Response> {
    destination(&app, &b.to)?;
    let Ok(permit) = Arc::clone(&app.migrations).try_acquire_owned() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "another migration runs: one at a time"));
    };
    tracing::info!("{}: migrate {} to host {}", shown(&who.user), shown(&name), shown(&b.to));
    let vm = name.clone();
    let app2 = Arc::clone(&app);
    snapshot_job(&app, &headers, name, StatusCode::OK, move |lv, report| {
        let _permit = permit;
        let req = migrate_request(&app2, lv, &vm, &b)?;
        use phyllome_engine::migrate::MigrateError as E;
        // The answer names the destination by its host name, as the request did.
        let r = phyllome_engine::migrate::migrate(lv, &vm, &req, report).map_err(|e| match e {
            E::Refused { vm, why, .. } => E::Refused { vm, to: b.to.clone(), why },
            E::Unreachable { why, .. } => E::Unreachable { uri: format!("host {}", b.to), why },
            e => e,
        });
        app2.inventory.refresh_on(&b.to, &vm);
        let mut m = r?;
        m.to = b.to.clone();
        m.check.to = b.to.clone();
        Ok(m)
    })
    .await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CleanQuery {
    /// Only say what would be done.
    dry_run: Option<bool>,
}

/// What a clean did (or, with `dry_run`, would do), move by move.
#[derive(Serialize, ToSchema)]
pub struct Cleaned {
    host: String,
    dry_run: bool,
    moves: Vec<phyllome_engine::op::moves::Settled>,
}

/// Settle the migrations of this host's VMs to host `name` that were cut short (`phyllome host clean NAME`): a
/// move that got there is finished (the VM's copy here removed), one that did not is undone (what it made
/// there removed); one still under way, or a VM defined on both hosts and running here, is only said.
#[utoipa::path(post, operation_id = "cleanHost", path = "/api/v1/hosts/{name}/clean", tag = "hosts",
    params(("name" = String, Path), CleanQuery), responses((status = 200, body = Cleaned)))]
async fn clean_host(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(q): Query<CleanQuery>,
) -> ApiResult<Json<Cleaned>> {
    let uri = destination(&app, &name)?;
    let dry_run = q.dry_run.unwrap_or(false);
    who_did(
        &who,
        if dry_run { "look at migrations cut short to host" } else { "clean migrations cut short to host" },
        &name,
    );
    let c = blocking(&app, move |app, lv| {
        let dst = app.libvirt_on(&name)?;
        let mut moves = phyllome_engine::migrate::clean(lv, &dst, &uri, dry_run);
        // Answers name the host, never its URI.
        for m in &mut moves {
            m.to = name.clone();
        }
        Ok(Cleaned { host: name, dry_run, moves })
    })
    .await?;
    Ok(Json(c))
}
