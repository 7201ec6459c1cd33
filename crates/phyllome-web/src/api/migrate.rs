//! Several hosts: which answer, moving a VM of this host to another one
//! (checked first, then as a job with progress events), and settling moves
//! that were cut short. Hosts are named as configured; the browser never
//! sends a URI, and answers never show one.

use crate::auth::Principal;
use crate::http::{blocking, no_such_host, shown, who_did, ApiError, ApiResult, ErrorBody, JsonBody, Name};
use crate::job::Job;
use crate::App;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use phyllome_engine::remotes::LOCAL;
use phyllome_engine::vm::VmError;
use phyllome_libvirt::Libvirt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// The hosts whose VMs the list shows (`local` first, then `phyllome host list`'s, as they were when the server
/// started) and whether each answers now.
#[utoipa::path(get, operation_id = "listHosts", path = "/api/v1/hosts", tag = "hosts",
    responses((status = 200, body = Vec<crate::inventory::HostState>)))]
pub(super) async fn list_hosts(State(app): State<Arc<App>>) -> Response {
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
    app.host_uri(to).map(str::to_string).ok_or_else(|| no_such_host(to))
}

/// What a move of this host's VM to another host needs, item by item (`phyllome migrate --dry-run`); changes
/// nothing. `ok` says whether it can move.
#[utoipa::path(post, operation_id = "checkMigration", path = "/api/v1/vms/{name}/migrate/check", tag = "hosts",
    params(("name" = String, Path)), request_body = MigrateBody,
    responses((status = 200, body = phyllome_engine::migrate::Checked)))]
pub(super) async fn migrate_check(
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
pub(super) async fn migrate_vm(
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
    Job::copying(name, StatusCode::OK)
        .run(&app, &headers, move |lv, report| {
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
pub(super) async fn clean_host(
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
