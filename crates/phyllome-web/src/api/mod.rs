//! The API's handlers, one module per resource. Each calls the same engine
//! functions as the CLI (`phyllome_engine::vm`, the catalog,
//! `phyllome_host::check` and `::devices`); the web layer adds only what a
//! remote caller needs: files come from the ISO folder by name (never a host
//! path), and a passphrase comes in the body.
//!
//! Each handler's `#[utoipa::path]` and its types' `ToSchema` make the
//! OpenAPI document ([`crate::openapi`]); `utoipa_axum::routes!` registers
//! the handler and its document entry together, so neither exists without
//! the other. Each module lists its own routes; what they share (errors,
//! extractors, the blocking pool, `?host=`) is in [`crate::http`], and the
//! runner of long operations in [`crate::job`].

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

pub use host::metrics;

/// Every API route, with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .merge(session::routes())
        .merge(vms::routes())
        .merge(consoles::routes())
        .merge(host::routes())
        .merge(media::routes())
        .merge(shares::routes())
        .merge(snapshots::routes())
        .merge(bundle::routes())
        .merge(migrate::routes())
}

/// The routes whose bodies may be large (uploads: media, bundles): outside the 64 KiB body limit.
pub fn upload_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new().merge(media::upload_routes()).merge(bundle::upload_routes())
}
