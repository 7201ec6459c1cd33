//! A VM's shared folders (virtiofs): list, add, remove.

use crate::auth::Principal;
use crate::http::{blocking, check_path_names, who_did, ApiResult, JsonBody, Name};
use crate::App;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// A VM's shared folders (virtiofs), as its definition has them.
#[utoipa::path(get, operation_id = "listShares", path = "/api/v1/vms/{name}/shares", tag = "vms",
    params(("name" = String, Path)), responses((status = 200, body = Vec<phyllome_engine::share::ShareRow>)))]
pub(super) async fn list_shares(
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
pub(super) async fn add_share(
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
pub(super) async fn remove_share(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    axum::extract::Path((name, tag)): axum::extract::Path<(String, String)>,
) -> ApiResult<Json<phyllome_engine::share::ShareChange>> {
    check_path_names(&[&name, &tag])?;
    who_did(&who, "stop sharing a folder with", &name);
    let c = blocking(&app, move |_, lv| Ok(phyllome_engine::share::remove(lv, &name, &tag)?)).await?;
    Ok(Json(c))
}
