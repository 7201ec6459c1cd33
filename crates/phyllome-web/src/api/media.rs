//! The host's ISO folder: the files create may use (with the OS each ISO
//! holds), uploads into it (streamed to disk) and removals. A web user names
//! a file of the folder, never a host path.

use crate::auth::Principal;
use crate::http::{blocking, who_did, ApiError, ApiResult, ErrorBody, Name};
use crate::App;
use axum::extract::State;
use axum::http::header::{self, HeaderMap};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use utoipa::ToSchema;

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

/// What an ISO of the folder holds (`isodir::describe`), read once per
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
pub(super) async fn list_media(State(app): State<Arc<App>>) -> ApiResult<Json<MediaList>> {
    let dir = app.config.media_dir.clone();
    let v = tokio::task::spawn_blocking(move || read_media(&dir))
        .await
        .map_err(|_| ApiError::internal("listing failed"))?;
    Ok(Json(v))
}

/// Upload an ISO into the host's ISO folder: the raw image as the body
/// (`Content-Length` required), streamed to disk with constant memory. Refused
/// before a byte is written when the name is taken or the disk lacks space; the
/// image must be an ISO once complete, and lands under its name only then.
#[utoipa::path(put, operation_id = "uploadMedia", path = "/api/v1/media/{name}", tag = "host",
    params(("name" = String, Path, description = "The file name (made safe; must end in .iso)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = phyllome_engine::media::iso_dir::Added), (status = 411, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub(super) async fn upload_media(
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
pub(super) async fn delete_media(
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
    fn media_kinds() {
        assert_eq!(media_kind("debian.iso"), "iso");
        assert_eq!(media_kind("vmlinuz"), "kernel");
        assert_eq!(media_kind("initrd.img"), "initrd");
        assert_eq!(media_kind("STAMP"), "other");
    }
}
