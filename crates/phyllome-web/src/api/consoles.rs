//! The consoles in the browser: WebSockets to a VM's VNC display and to its
//! serial console, for this host's running VMs (how the bytes move: [`crate::ws`]).

use crate::auth::Principal;
use crate::http::{blocking, still_valid, ApiError, Name};
use crate::ws::{configure, proxy, serial_proxy, vnc_target, VncLookup, VncTarget, CHECK};
use crate::App;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use std::sync::Arc;

fn upgrade_required() -> ApiError {
    ApiError::new(StatusCode::UPGRADE_REQUIRED, "this is a WebSocket (version 13) endpoint")
}

enum Vnc {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// WebSocket to the VM's VNC display (RFB over binary frames). Browsers send
/// the CSRF token as the subprotocol `phyllome-csrf.TOKEN` next to `binary`.
#[utoipa::path(get, operation_id = "console", path = "/api/v1/vms/{name}/console", tag = "vms", params(("name" = String, Path)),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 409, body = crate::http::ErrorBody, description = "the VM is not running, or has no display it can reach")))]
pub(super) async fn console(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|_| upgrade_required())?;
    let target = match app.config.console_override {
        Some(addr) => VncTarget::Tcp(addr),
        None => {
            blocking(&app, move |_, lv| {
                phyllome_engine::vm::summary(lv, &name)?;
                let xml = lv.xml(&name)?;
                vnc_target(&xml).map_err(|e| match e {
                    VncLookup::None => {
                        ApiError::new(StatusCode::CONFLICT, format!("{name} is not running (or has no VNC display)"))
                    }
                    VncLookup::NotLoopback(a) => ApiError::new(
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
    let vnc = match &target {
        VncTarget::Tcp(a) => tokio::net::TcpStream::connect(a).await.map(|s| {
            let _ = s.set_nodelay(true);
            Vnc::Tcp(s)
        }),
        VncTarget::Unix(p) => tokio::net::UnixStream::connect(p).await.map(Vnc::Unix),
    }
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("cannot reach the display: {e}")))?;
    Ok(configure(ws).on_upgrade(move |socket| async move {
        let alive = |active: bool| still_valid(&app, &who, active);
        let _ = match vnc {
            Vnc::Tcp(v) => proxy(socket, v, CHECK, alive).await,
            Vnc::Unix(v) => proxy(socket, v, CHECK, alive).await,
        };
    }))
}

/// WebSocket to the VM's serial console (raw bytes in binary frames both
/// ways). Browsers send the CSRF token as the subprotocol `phyllome-csrf.TOKEN`.
#[utoipa::path(get, operation_id = "serial", path = "/api/v1/vms/{name}/serial", tag = "vms", params(("name" = String, Path)),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 409, body = crate::http::ErrorBody, description = "the VM is not running")))]
pub(super) async fn serial(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|_| upgrade_required())?;
    let n = name.clone();
    blocking(&app, move |_, lv| {
        let row = phyllome_engine::vm::row(lv, &n)?;
        if row.state != "running" && row.state != "paused" {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("{n} is not running")));
        }
        Ok(())
    })
    .await?;
    Ok(configure(ws).on_upgrade(move |socket| async move {
        let alive = |active: bool| still_valid(&app, &who, active);
        let _ = serial_proxy(Arc::clone(&app), name, socket, alive).await;
    }))
}
