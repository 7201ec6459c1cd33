//! The API's handlers. Each calls the same core functions as the CLI
//! (`phyllome_engine::vm`, the catalog, `phyllome_host::check` and `::devices`); the
//! web layer adds only what a remote caller needs: files come from the
//! ISO folder by name (never a host path), and a passphrase comes in the body.

use crate::auth::LoginError;
use crate::http::{error, json, json_bytes, read_json, Body};
use crate::routes::{Op, Route};
use crate::{log, ws, App};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use phyllome_engine::hostinfo;
use phyllome_engine::vm::{self, VmError, VmSpec};
use phyllome_host::check;
use phyllome_libvirt::Libvirt;
use phyllome_model::build::Encryption;
use phyllome_model::catalog::{self, Bus};
use phyllome_model::domain::DirectBoot;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A failed request: status and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> ApiError {
        use VmError::*;
        let status = match &e {
            NoSuchVm(_) => StatusCode::NOT_FOUND,
            NameBusy(_) | VolumeExists { .. } | SecretExists(_) | Running(_) | NotRunning(_) => StatusCode::CONFLICT,
            Journal(phyllome_engine::journal::JournalError::Busy(_)) => StatusCode::CONFLICT,
            Build(_) | File(_) | BadNetwork(_) | NoNetwork(_) | NetworkInactive(_) | NoPool(_) | EmptyPassphrase
            | WrongPassphrase(_) | NeedPassphrase(_) => StatusCode::BAD_REQUEST,
            StopTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<phyllome_libvirt::Error> for ApiError {
    fn from(e: phyllome_libvirt::Error) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

/// Runs `f` with the libvirt connection on the blocking pool.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App, &Libvirt) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || {
        let lv = app.libvirt()?;
        f(&app, &lv)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the request's worker failed"))?
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

fn set_cookie(app: &App, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{}={value}; Path=/; HttpOnly; SameSite=Strict", app.cookie_name());
    if app.tls {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).expect("cookie values are hex")
}

/// `POST /api/v1/login`: the one public route.
pub async fn login(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        // Also keeps HTML forms on other sites from posting here.
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json");
    }
    let body: LoginBody = match read_json(req, 8 * 1024).await {
        Ok(b) => b,
        Err((status, why)) => return error(status, &why),
    };
    let Ok(_slot) = app.login_slots.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let shown = if crate::auth::validate_user_name(&body.username).is_ok() {
        body.username.clone()
    } else {
        "(not a valid user name)".into()
    };
    let a = Arc::clone(app);
    let ip = peer.ip();
    let result = tokio::task::spawn_blocking(move || a.auth.login(&body.username, &body.password, ip)).await;
    match result {
        Ok(Ok((who, id))) => {
            log(&format!("{} logged in from {ip}", who.user));
            let mut r = json(
                StatusCode::OK,
                &json!({ "user": who.user, "csrf": who.csrf, "idle_timeout_secs": app.auth.sessions.idle().as_secs() }),
            );
            r.headers_mut().insert(header::SET_COOKIE, set_cookie(app, &id, None));
            r
        }
        Ok(Err(LoginError::Throttled(wait))) => {
            log(&format!("login for {shown} from {ip} refused: throttled"));
            let secs = wait.as_secs().max(1);
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, &format!("too many failed logins: try again in {secs} s"));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Ok(Err(LoginError::Refused)) => {
            log(&format!("failed login for {shown} from {ip}"));
            error(StatusCode::UNAUTHORIZED, "wrong user name or password")
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the login check failed"),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    os: String,
    memory: Option<String>,
    cpus: Option<u32>,
    disk_size: Option<String>,
    iso: Option<String>,
    drivers: Option<String>,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    network: Option<String>,
    disk_bus: Option<String>,
    secure_boot: Option<bool>,
    encryption: Option<String>,
    passphrase: Option<String>,
    start: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    passphrase: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    timeout_secs: Option<u64>,
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
    if catalog::profile(&b.os).is_none() {
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
            os: b.os.clone(),
            memory: given(&b.memory),
            cpus: b.cpus,
            disk_size: given(&b.disk_size),
            iso: file("iso", &b.iso)?,
            drivers: file("drivers", &b.drivers)?,
            secure_boot: b.secure_boot.unwrap_or(false),
            disk_bus,
            direct_boot: kernel.map(|kernel| DirectBoot { kernel, initrd, cmdline }),
            ..Default::default()
        },
        network: given(&b.network).unwrap_or_else(|| "default".into()),
        encryption: Some(encryption),
        pool: None,
    };
    Ok((spec, passphrase))
}

fn action(name: &str, result: &str, app: &App) -> Response<Body> {
    let state = current_state(app, name);
    json(StatusCode::OK, &json!({ "name": name, "result": result, "state": state }))
}

/// The state the published list shows for `name`.
fn current_state(app: &App, name: &str) -> Option<String> {
    let list: Vec<serde_json::Value> = serde_json::from_slice(&app.inventory.current()).unwrap_or_default();
    list.iter().find(|r| r["name"] == name).and_then(|r| r["state"].as_str()).map(str::to_string)
}

fn details(lv: &Libvirt, name: &str) -> Result<serde_json::Value, ApiError> {
    let mut v = serde_json::to_value(vm::details(lv, name)?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    v["console"] = json!(lv.xml(name).ok().is_some_and(|x| ws::vnc_target(&x).is_ok()));
    Ok(v)
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

fn list_media(dir: &Path) -> serde_json::Value {
    let mut files = Vec::new();
    let exists = dir.is_dir();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            // Follows symlinks: a link in the folder to media elsewhere is offered too.
            if let Ok(m) = std::fs::metadata(e.path()) {
                if m.is_file() {
                    files.push(json!({ "name": name, "size": m.len(), "kind": media_kind(&name) }));
                }
            }
        }
    }
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({ "dir": dir.display().to_string(), "exists": exists, "files": files })
}

fn who_did(who: &crate::auth::Principal, what: &str) {
    log(&format!("{}: {what}", who.user));
}

pub async fn handle(
    app: &Arc<App>,
    route: &'static Route,
    params: Vec<String>,
    who: crate::auth::Principal,
    req: Request<Incoming>,
) -> Response<Body> {
    match dispatch(app, route, params, who, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                log(&format!("{} {}: {}", route.method, route.path, e.message));
            }
            error(e.status, &e.message)
        }
    }
}

async fn dispatch(
    app: &Arc<App>,
    route: &'static Route,
    params: Vec<String>,
    who: crate::auth::Principal,
    req: Request<Incoming>,
) -> ApiResult {
    let name = params.first().cloned().unwrap_or_default();
    match route.op {
        Op::Login => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "login is routed before this")),
        Op::Logout => {
            if let Some(key) = who.session {
                app.auth.sessions.remove(&key);
            }
            let mut r = json(StatusCode::OK, &json!({ "ok": true }));
            r.headers_mut().insert(header::SET_COOKIE, set_cookie(app, "", Some(0)));
            Ok(r)
        }
        Op::Session => Ok(json(
            StatusCode::OK,
            &json!({ "user": who.user, "csrf": who.csrf, "idle_timeout_secs": app.auth.sessions.idle().as_secs() }),
        )),
        Op::OpenApi => Ok(json_bytes(StatusCode::OK, app.openapi.clone())),
        Op::Events => Ok(events(app, who)),
        Op::ListVms => Ok(json_bytes(StatusCode::OK, app.inventory.current())),
        Op::CreateVm => {
            let body: CreateBody = read_json(req, 64 * 1024).await.map_err(to_api)?;
            let (spec, passphrase) = spec_from(app, &body)?;
            let start = body.start.unwrap_or(false);
            who_did(&who, &format!("create {}", body.name));
            let name = body.name.clone();
            let created = blocking(app, move |app, lv| {
                let progress = |msg: &str| log(&format!("create {name}: {msg}"));
                let r = vm::create(lv, &name, &spec, passphrase.as_deref(), start, &progress);
                app.inventory.refresh(&name);
                Ok(r?)
            })
            .await?;
            Ok(json(StatusCode::CREATED, &created))
        }
        Op::GetVm => {
            let v = blocking(app, move |_, lv| details(lv, &name)).await?;
            Ok(json(StatusCode::OK, &v))
        }
        Op::DeleteVm => {
            let keep_disk =
                req.uri().query().unwrap_or("").split('&').any(|kv| kv == "keep_disk=true" || kv == "keep_disk=1");
            who_did(&who, &format!("delete {name}"));
            let deleted = blocking(app, move |app, lv| {
                let r = vm::delete(lv, &name, keep_disk);
                app.inventory.refresh(&name);
                Ok(r?)
            })
            .await?;
            Ok(json(StatusCode::OK, &deleted))
        }
        Op::StartVm => {
            let body: StartBody = read_json(req, 8 * 1024).await.map_err(to_api)?;
            who_did(&who, &format!("start {name}"));
            blocking(app, move |app, lv| {
                let pass = body.passphrase.clone();
                let n = name.clone();
                let r = vm::start(lv, &name, &move || {
                    pass.clone().map(String::into_bytes).ok_or_else(|| VmError::NeedPassphrase(n.clone()))
                });
                app.inventory.refresh(&name);
                let started = r?;
                Ok(action(&name, if started { "started" } else { "already running" }, app))
            })
            .await
        }
        Op::StopVm => {
            let body: StopBody = read_json(req, 8 * 1024).await.map_err(to_api)?;
            let timeout = Duration::from_secs(body.timeout_secs.unwrap_or(60).min(600));
            let force = body.force.unwrap_or(false);
            who_did(&who, &format!("stop {name}"));
            blocking(app, move |app, lv| {
                let r = vm::stop(lv, &name, timeout, force, &|_| {});
                app.inventory.refresh(&name);
                let how = match r? {
                    vm::Stopped::AlreadyOff => "already shut off",
                    vm::Stopped::PowerButton => "shut down (ACPI power button)",
                    vm::Stopped::GuestAgent => "shut down (guest agent)",
                    vm::Stopped::Forced => "powered off after the timeout (force)",
                };
                Ok(action(&name, how, app))
            })
            .await
        }
        Op::KillVm | Op::PauseVm | Op::ResumeVm => {
            let op = route.op;
            who_did(&who, &format!("{} {name}", route.id.trim_end_matches("Vm")));
            blocking(app, move |app, lv| {
                let (r, done) = match op {
                    Op::KillVm => (vm::kill(lv, &name), "powered off"),
                    Op::PauseVm => (vm::pause(lv, &name), "paused"),
                    _ => (vm::resume(lv, &name), "resumed"),
                };
                app.inventory.refresh(&name);
                r?;
                Ok(action(&name, done, app))
            })
            .await
        }
        Op::Console => console(app, who, name, req).await,
        Op::ListOs => {
            let list: Vec<_> = catalog::profiles()
                .iter()
                .map(|p| {
                    json!({ "id": p.id, "name": p.name, "family": p.family, "description": p.description,
                            "recommended_memory_mib": p.resources.recommended_memory_mib,
                            "recommended_disk_gib": p.resources.recommended_disk_gib,
                            "min_cpus": p.resources.min_cpus })
                })
                .collect();
            Ok(json(StatusCode::OK, &list))
        }
        Op::GetOs => match catalog::profile(&name) {
            Some(p) => Ok(json(StatusCode::OK, &p)),
            None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown OS id {name:?}"))),
        },
        Op::ListMedia => {
            let dir = app.config.media_dir.clone();
            let v = tokio::task::spawn_blocking(move || list_media(&dir))
                .await
                .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"))?;
            Ok(json(StatusCode::OK, &v))
        }
        Op::HostCheck => {
            let report = blocking(app, |app, lv| {
                let inputs = hostinfo::check_inputs(Ok(lv), &app.config.uri);
                Ok(check::run(Path::new("/"), &inputs))
            })
            .await?;
            Ok(json(StatusCode::OK, &report))
        }
        Op::Devices => {
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
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reading devices failed"))?;
            Ok(json(StatusCode::OK, &v))
        }
    }
}

fn to_api((status, message): (StatusCode, String)) -> ApiError {
    ApiError::new(status, message)
}

/// Whether the principal's session or token still holds; `touch` restarts a session's idle time.
fn still_valid(app: &App, who: &crate::auth::Principal, touch: bool) -> bool {
    match (&who.session, &who.token) {
        (Some(key), _) => app.auth.sessions.get_key(key, touch).is_some(),
        (None, Some(id)) => app.auth.token_exists(id),
        (None, None) => false,
    }
}

/// A body that sends what a channel carries (for server-sent events).
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

fn sse_event(list: &[u8]) -> bytes::Bytes {
    let mut e = Vec::with_capacity(list.len() + 20);
    e.extend_from_slice(b"event: vms\ndata: ");
    e.extend_from_slice(list);
    e.extend_from_slice(b"\n\n");
    e.into()
}

/// `GET /api/v1/events`: the VM list now, then again at every change.
fn events(app: &Arc<App>, who: crate::auth::Principal) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut list = app.inventory.subscribe();
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let first = sse_event(&list.borrow_and_update());
        if tx.send(first).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                changed = list.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let e = sse_event(&list.borrow_and_update());
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if !still_valid(&app, &who, false) {
                        let _ = tx.send(bytes::Bytes::from_static(b"event: logout\ndata: {}\n\n")).await;
                        return;
                    }
                    if tx.send(bytes::Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    let mut r = Response::new(http_body_util::BodyExt::boxed(ChannelBody(rx)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// `GET /api/v1/vms/{name}/console`: the WebSocket to the VM's VNC display.
async fn console(app: &Arc<App>, who: crate::auth::Principal, name: String, req: Request<Incoming>) -> ApiResult {
    let h = req.headers();
    let get = |k: header::HeaderName| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let upgrade = get(header::UPGRADE).eq_ignore_ascii_case("websocket")
        && get(header::CONNECTION).split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && get(header::SEC_WEBSOCKET_VERSION) == "13";
    let key = get(header::SEC_WEBSOCKET_KEY).to_string();
    if !upgrade || key.is_empty() {
        return Err(ApiError::new(StatusCode::UPGRADE_REQUIRED, "this is a WebSocket (version 13) endpoint"));
    }
    let binary = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "binary");
    let target = match app.config.console_override {
        Some(addr) => ws::VncTarget::Tcp(addr),
        None => {
            blocking(app, move |_, lv| {
                vm::summary(lv, &name)?;
                let xml = lv.xml(&name)?;
                ws::vnc_target(&xml).map_err(|e| match e {
                    ws::VncLookup::None => {
                        ApiError::new(StatusCode::CONFLICT, format!("{name} is not running (or has no VNC display)"))
                    }
                    ws::VncLookup::NotLoopback(a) => ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "{name}'s display listens on {a}; phyllome proxies loopback and unix-socket displays only"
                        ),
                    ),
                })
            })
            .await?
        }
    };
    enum Vnc {
        Tcp(tokio::net::TcpStream),
        Unix(tokio::net::UnixStream),
    }
    let vnc = match &target {
        ws::VncTarget::Tcp(a) => tokio::net::TcpStream::connect(a).await.map(|s| {
            let _ = s.set_nodelay(true);
            Vnc::Tcp(s)
        }),
        ws::VncTarget::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Vnc::Unix),
    }
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("cannot reach the display: {e}")))?;

    let mut resp = Response::new(crate::http::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = resp.headers_mut();
    rh.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    rh.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    rh.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&ws::accept_key(&key)).expect("base64 is a valid header value"),
    );
    if binary {
        rh.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("binary"));
    }
    let app = Arc::clone(app);
    tokio::spawn(async move {
        use hyper_util::rt::TokioIo;
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let alive = |active: bool| still_valid(&app, &who, active);
        let check = Duration::from_secs(2);
        let _ = match vnc {
            // Plain TCP on both sides (no TLS): the zero-copy proxy.
            Vnc::Tcp(v) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                Ok(parts) => ws::proxy_tcp(parts.io.into_inner(), parts.read_buf, v, check, alive).await,
                Err(upgraded) => ws::proxy(TokioIo::new(upgraded), v, check, alive).await,
            },
            Vnc::Unix(v) => ws::proxy(TokioIo::new(upgraded), v, check, alive).await,
        };
    });
    Ok(resp)
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
        let listed = list_media(&dir);
        assert_eq!(listed["files"][0]["kind"], "iso");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn vm_errors_map_to_statuses() {
        assert_eq!(ApiError::from(VmError::NoSuchVm("x".into())).status, StatusCode::NOT_FOUND);
        assert_eq!(ApiError::from(VmError::Running("x".into())).status, StatusCode::CONFLICT);
        assert_eq!(ApiError::from(VmError::EmptyPassphrase).status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn media_kinds() {
        assert_eq!(media_kind("debian.iso"), "iso");
        assert_eq!(media_kind("vmlinuz"), "kernel");
        assert_eq!(media_kind("initrd.img"), "initrd");
        assert_eq!(media_kind("STAMP"), "other");
    }
}
