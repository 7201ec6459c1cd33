//! This host and this server: the guest OS catalog, libvirt's networks, the
//! host check and its devices, what the running VMs use (the server's samples,
//! also as `/metrics`), and the API's own document.

use crate::http::{blocking, ApiError, ApiResult, Name};
use crate::App;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use phyllome_engine::host_facts;
use phyllome_host::check;
use phyllome_model::catalog;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use utoipa::ToSchema;

/// This document.
#[utoipa::path(get, operation_id = "getOpenApi", path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, body = Object, content_type = "application/json")))]
pub(super) async fn openapi(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], app.openapi.clone()).into_response()
}

// ---- the guest OS catalog ------------------------------------------------------

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
pub(super) async fn list_os() -> Json<Vec<OsRow>> {
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
pub(super) async fn get_os(Name(id): Name) -> ApiResult<Response> {
    match catalog::profile(&id) {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown OS id {id:?}"))),
    }
}

// ---- this host ------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct NetworkRow {
    name: String,
    active: bool,
    /// `nat`, `route`, `bridge`...; null for an isolated network.
    forward: Option<String>,
}

/// libvirt's networks, and which are active (create offers those only).
#[utoipa::path(get, operation_id = "listNetworks", path = "/api/v1/networks", tag = "host", responses((status = 200, body = Vec<NetworkRow>)))]
pub(super) async fn list_networks(State(app): State<Arc<App>>) -> ApiResult<Json<Vec<NetworkRow>>> {
    let v = blocking(&app, |_, lv| {
        Ok(lv.networks()?.into_iter().map(|(name, active, forward)| NetworkRow { name, active, forward }).collect())
    })
    .await?;
    Ok(Json(v))
}

/// Is this host ready to run guests well (the `phyllome check` report).
#[utoipa::path(get, operation_id = "hostCheck", path = "/api/v1/host/check", tag = "host", responses((status = 200, body = Object)))]
pub(super) async fn host_check(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let report = blocking(&app, |app, lv| {
        let inputs = host_facts::check_inputs(Ok(lv), &app.config.uri);
        Ok(check::run(Path::new("/"), &inputs))
    })
    .await?;
    Ok(Json(report).into_response())
}

/// PCI and USB devices and whether each can be passed through (`phyllome devices`).
#[utoipa::path(get, operation_id = "listDevices", path = "/api/v1/devices", tag = "host", responses((status = 200, body = Object)))]
pub(super) async fn list_devices() -> ApiResult<Json<serde_json::Value>> {
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

// ---- what the VMs use -------------------------------------------------------------

const NO_STATS: &str =
    "no current statistics: the first sample comes within seconds of the start, and none while libvirtd does not answer";

/// What the running VMs use now, and the host's load (`phyllome stats --json`),
/// from the server's latest sample (taken every second).
#[utoipa::path(get, operation_id = "getStats", path = "/api/v1/stats", tag = "stats",
    responses((status = 200, body = phyllome_engine::stats::StatsReport)))]
pub(super) async fn host_stats(State(app): State<Arc<App>>) -> ApiResult<Response> {
    match app.stats.report() {
        Some(r) => Ok(Json(&*r).into_response()),
        None => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NO_STATS)),
    }
}

/// One VM's last ten minutes, a point a second (the UI's charts), and its figures now.
#[utoipa::path(get, operation_id = "getVmStats", path = "/api/v1/vms/{name}/stats", tag = "stats",
    params(("name" = String, Path)), responses((status = 200, body = crate::stats::History)))]
pub(super) async fn vm_stats(State(app): State<Arc<App>>, Name(name): Name) -> ApiResult<Response> {
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
