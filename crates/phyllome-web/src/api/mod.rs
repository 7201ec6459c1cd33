//! The API's handlers, one module per resource. Each calls the same engine
//! functions as the CLI (`phyllome_engine::vm`, the catalog,
//! `phyllome_host::check` and `::devices`); the web layer adds only what a
//! remote caller needs: files come from the ISO folder by name (never a host
//! path), and a passphrase comes in the body.
//!
//! Each handler's `#[utoipa::path]` and its types' `ToSchema` make the
//! OpenAPI document ([`crate::openapi`]); `utoipa_axum::routes!` registers
//! the handler and its document entry together, so neither exists without
//! the other, and [`routes`] lists every route in one place. What the modules
//! share (errors, extractors, the blocking pool, `?host=`) is in
//! [`crate::http`], and the runner of long operations in [`crate::job`].

pub mod bundle;
pub mod consoles;
pub mod host;
pub mod media;
pub mod migrate;
pub mod session;
pub mod shares;
pub mod snapshots;
pub mod vms;

use crate::App;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use host::metrics;

/// Every API route, with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(session::session))
        .routes(routes!(host::openapi))
        .routes(routes!(vms::events))
        .routes(routes!(vms::list_vms, vms::create_vm))
        .routes(routes!(vms::get_vm, vms::delete_vm))
        .routes(routes!(vms::start_vm))
        .routes(routes!(vms::stop_vm))
        .routes(routes!(vms::kill_vm))
        .routes(routes!(vms::pause_vm))
        .routes(routes!(vms::resume_vm))
        .routes(routes!(consoles::console))
        .routes(routes!(consoles::serial))
        .routes(routes!(host::list_os))
        .routes(routes!(host::get_os))
        .routes(routes!(media::list_media))
        .routes(routes!(host::list_networks))
        .routes(routes!(host::host_check))
        .routes(routes!(host::list_devices))
        .routes(routes!(session::list_tokens))
        .routes(routes!(session::revoke_token))
        .routes(routes!(host::host_stats))
        .routes(routes!(host::vm_stats))
        .routes(routes!(media::delete_media))
        .routes(routes!(shares::list_shares, shares::add_share))
        .routes(routes!(shares::remove_share))
        .routes(routes!(snapshots::list_snapshots, snapshots::create_snapshot))
        .routes(routes!(snapshots::delete_snapshot))
        .routes(routes!(snapshots::revert_snapshot))
        .routes(routes!(vms::clone_vm))
        .routes(routes!(vms::set_autostart))
        .routes(routes!(vms::vm_manifest))
        .routes(routes!(bundle::export_vm))
        .routes(routes!(bundle::download_export))
        .routes(routes!(migrate::list_hosts))
        .routes(routes!(migrate::migrate_check))
        .routes(routes!(migrate::migrate_vm))
        .routes(routes!(migrate::clean_host))
}

/// The routes whose bodies may be large (uploads: media, bundles): outside the 64 KiB body limit.
pub fn upload_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().routes(routes!(media::upload_media)).routes(routes!(bundle::import_vm))
}
