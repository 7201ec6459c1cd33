//! A VM's snapshots: take (as a job, with progress events), list, revert, delete.

use crate::auth::Principal;
use crate::http::{blocking, check_path_names, who_did, ApiResult, ErrorBody, JsonBody, Name, Ok_};
use crate::job::Job;
use crate::App;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// A VM's snapshots, oldest first.
#[utoipa::path(get, operation_id = "listSnapshots", path = "/api/v1/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path)), responses((status = 200, body = Vec<phyllome_engine::snapshot::SnapshotInfo>)))]
pub(super) async fn list_snapshots(
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

/// Take a snapshot: disks, UEFI variables, TPM state, and the RAM with `memory`.
/// With `Accept: text/event-stream`: `progress` events, then `done` (SnapshotInfo) or `error`.
#[utoipa::path(post, operation_id = "createSnapshot", path = "/api/v1/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path)), request_body = SnapshotBody,
    responses((status = 201, body = phyllome_engine::snapshot::SnapshotInfo),
        (status = 200, description = "with Accept: text/event-stream: progress, then done or error",
         content_type = "text/event-stream", body = String),
        (status = 507, description = "not enough space for the snapshot", body = ErrorBody)))]
pub(super) async fn create_snapshot(
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
    Job::copying(name, StatusCode::CREATED)
        .run(&app, &headers, move |lv, report| Ok(phyllome_engine::snapshot::create(lv, &vm, &req, report)?))
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
pub(super) async fn revert_snapshot(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    axum::extract::Path((name, snap)): axum::extract::Path<(String, String)>,
    JsonBody(b): JsonBody<RevertBody>,
) -> ApiResult<Response> {
    check_path_names(&[&name, &snap])?;
    who_did(&who, "revert", &name);
    let vm = name.clone();
    Job::copying(name, StatusCode::OK)
        .run(&app, &headers, move |lv, report| {
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
pub(super) async fn delete_snapshot(
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
