//! The VMs: the list (and its event stream), create (as a job), a VM's page,
//! its lifecycle (start, stop, kill, pause, resume; the cheap ones on any
//! host with `?host=`), delete, clone, autostart and its manifest.

use super::media::media_file;
use crate::auth::Principal;
use crate::http::{
    blocking, blocking_on, still_valid, who_did, who_did_on, ApiError, ApiResult, ErrorBody, HostQuery, JsonBody, Name,
    Ok_,
};
use crate::job::Job;
use crate::ws::vnc_target;
use crate::App;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use phyllome_engine::remotes::LOCAL;
use phyllome_engine::vm::{self, Created, Deleted, Details, VmError, VmSpec};
use phyllome_model::build::Encryption;
use phyllome_model::catalog::{self, Bus};
use phyllome_model::domain::DirectBoot;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

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
pub(super) async fn list_vms(State(app): State<Arc<App>>) -> Response {
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

/// Create a VM (disk encrypted by default), optionally starting it. With
/// `Accept: text/event-stream` the answer is a stream of `progress` events
/// (StepEvent) ending with one `created` (Created) or `error` (ErrorBody) event.
#[utoipa::path(post, operation_id = "createVm", path = "/api/v1/vms", tag = "vms", request_body = CreateBody,
    responses((status = 201, body = Created),
        (status = 404, description = "no such network or storage pool", body = ErrorBody),
        (status = 422, description = "this host cannot run it (UEFI, TPM, secure-boot firmware...)", body = ErrorBody),
        (status = 200, description = "with Accept: text/event-stream: progress, then created or error",
         content_type = "text/event-stream", body = String)))]
pub(super) async fn create_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBody, 65536>,
) -> ApiResult<Response> {
    let (spec, passphrase) = spec_from(&app, &body)?;
    let start = body.start.unwrap_or(false);
    who_did(&who, "create", &body.name);
    let name = body.name.clone();
    Job::create(&body.name)
        .run(&app, &headers, move |lv, report| Ok(vm::create(lv, &name, &spec, passphrase.as_deref(), start, report)?))
        .await
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
pub(super) async fn get_vm(
    State(app): State<Arc<App>>,
    Name(name): Name,
    Query(h): Query<HostQuery>,
) -> ApiResult<Json<VmPage>> {
    let host = h.name();
    let local = host == LOCAL;
    let page = blocking_on(&app, host, move |_, lv| {
        let details = vm::details(lv, &name)?;
        if !local {
            // Another host's display and host facts are not this server's to open or read.
            return Ok(VmPage { details, console: false, choices: vec![] });
        }
        let console = lv.xml(&name).ok().is_some_and(|x| vnc_target(&x).is_ok());
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
pub(super) async fn delete_vm(
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
pub(super) async fn start_vm(
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
pub(super) async fn stop_vm(
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
pub(super) async fn kill_vm(
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
pub(super) async fn pause_vm(
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
pub(super) async fn resume_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    Query(h): Query<HostQuery>,
) -> ApiResult<Json<Action>> {
    simple(app, who, name, h.name(), "resume").await
}

/// Server-sent events: `vms` with the whole VM list (every host's) whenever a
/// VM changes (each host's libvirt lifecycle events), `status` (Status) when
/// this host's libvirtd goes away or comes back, `hosts` (HostState list) when
/// any host does, and `logout` when the session ends.
#[utoipa::path(get, operation_id = "events", path = "/api/v1/events", tag = "vms",
    responses((status = 200, description = "an event stream", content_type = "text/event-stream", body = String)))]
pub(super) async fn events(State(app): State<Arc<App>>, Extension(who): Extension<Principal>) -> Response {
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

// ---- clone, autostart, manifest -----------------------------------------------

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
pub(super) async fn clone_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Name(name): Name,
    JsonBody(b): JsonBody<CloneBody>,
) -> ApiResult<Response> {
    who_did(&who, "clone", &name);
    let new = b.name.clone();
    let from = name.clone();
    let r = Job::copying(b.name, StatusCode::CREATED)
        .run(&app, &headers, move |lv, report| {
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
pub(super) async fn set_autostart(
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
pub(super) async fn vm_manifest(State(app): State<Arc<App>>, Name(name): Name) -> ApiResult<Json<ManifestOut>> {
    let (m, notes) = blocking(&app, move |_, lv| Ok(phyllome_engine::manifest::of_vm(lv, &name)?)).await?;
    Ok(Json(ManifestOut { toml: m.to_toml(&notes), notes }))
}
