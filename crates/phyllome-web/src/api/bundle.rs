//! Export and import of VM bundles (`phyllome_engine::bundle`) over HTTP.
//!
//! - Export is two requests, so that a browser's own download manager can save
//!   a bundle of any size to disk with a plain link: `POST
//!   /api/v1/vms/{name}/export` (CSRF-protected, like every change) checks the
//!   VM can be exported and answers a one-time download ticket; `GET
//!   /api/v1/exports/{token}` runs the export and streams the bundle. The
//!   ticket holds the passphrase in memory only (zeroed when dropped), is
//!   bound to the user and the session or API token that asked, works once
//!   and for [`TICKET_TTL`]; a user has at most [`MAX_TICKETS`] outstanding.
//!   The GET needs no CSRF token: it can only be made with a token that only
//!   the same-origin POST's answer holds, and the guard refuses cross-site
//!   requests before it anyway.
//! - The export writes into a bounded channel of [`CHUNK`]-byte chunks
//!   (constant memory), and the answer starts with the first chunk, or is the
//!   usual JSON error when the export fails before one; a failure after that
//!   aborts the body, so a download never ends silently truncated.
//! - Import takes the raw bundle as the body (`Content-Length` required,
//!   outside the 64 KiB body limit like the media upload) and the passphrase
//!   in the `X-Phyllome-Passphrase` header, percent-encoded UTF-8 (a header
//!   value is ASCII; `encodeURIComponent` gives it). One import at a time per
//!   server: the engine stages an import in a folder named by the process. A
//!   refusal found before the end of the body is answered once the rest is
//!   read, since browsers lose an answer that arrives while they upload.
//!
//! No passphrase or token reaches the log or an error's text: requests are
//! logged by route template and user (see `lib.rs`), never headers or paths.

use crate::auth::Principal;
use crate::http::{blocking, shown, who_did, ApiError, ErrorBody, JsonBody, Name};
use crate::App;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use phyllome_engine::bundle::{self, ImportOptions, Imported};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};
use zeroize::Zeroizing;

/// How long a download ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Download tickets a user may hold at once.
pub const MAX_TICKETS: usize = 4;
/// The size of the pieces the export streams in...
const CHUNK: usize = 1 << 20;
/// ...and how many wait for the client at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// The longest passphrase header taken (percent-encoded).
const MAX_PASSPHRASE_HEADER: usize = 4096;
pub const PASSPHRASE_HEADER: &str = "x-phyllome-passphrase";

struct Ticket {
    vm: String,
    user: String,
    /// The session (SHA-256 of its id, hex) or API token id that asked.
    credential: String,
    passphrase: Zeroizing<Vec<u8>>,
    expires: Instant,
}

/// The outstanding download tickets, keyed by the SHA-256 of their token
/// (the token itself is kept nowhere, as for sessions).
#[derive(Default)]
pub struct Tickets {
    map: Mutex<HashMap<String, Ticket>>,
}

fn credential(who: &Principal) -> String {
    match (&who.session, &who.token) {
        (Some(s), _) => format!("session:{}", hex::encode(s)),
        (None, Some(t)) => format!("token:{t}"),
        (None, None) => String::new(),
    }
}

fn key_of(token: &str) -> String {
    hex::encode(crate::crypto::sha256(token.as_bytes()))
}

impl Tickets {
    /// A new ticket for `who` to download `vm` with `passphrase`: its token,
    /// or None when `who` holds [`MAX_TICKETS`] already.
    fn issue(&self, who: &Principal, vm: &str, passphrase: Zeroizing<Vec<u8>>) -> Option<String> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, t| t.expires > now);
        if map.values().filter(|t| t.user == who.user).count() >= MAX_TICKETS {
            return None;
        }
        let token = crate::crypto::random_secret();
        let ticket = Ticket {
            vm: vm.to_string(),
            user: who.user.clone(),
            credential: credential(who),
            passphrase,
            expires: now + TICKET_TTL,
        };
        map.insert(key_of(&token), ticket);
        Some(token)
    }

    /// Takes `who`'s live ticket with this token (once). Another user's ticket stays theirs.
    fn take(&self, token: &str, who: &Principal) -> Option<Ticket> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, t| t.expires > now);
        let key = key_of(token);
        let mine = map.get(&key).is_some_and(|t| {
            t.user == who.user && crate::crypto::ct_eq(t.credential.as_bytes(), credential(who).as_bytes())
        });
        if mine {
            map.remove(&key)
        } else {
            None
        }
    }

    pub fn outstanding(&self) -> usize {
        let now = Instant::now();
        self.map.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|t| t.expires > now).count()
    }
}

// ---- export ----------------------------------------------------------------

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportBody {
    /// The passphrase that will open the bundle (never logged or kept on disk).
    #[schema(min_length = 1)]
    passphrase: String,
}

/// Where to download the bundle: once, within `expires_in_secs`, with the same session or token.
#[derive(Serialize, ToSchema)]
pub struct ExportTicket {
    #[schema(example = "/api/v1/exports/0123abcd...")]
    download: String,
    expires_in_secs: u64,
}

/// Ask to export a shut-off VM as one encrypted bundle: checks at once that it can be
/// (409 while it runs), then answers a one-time download link for the same user (GET it within a minute).
#[utoipa::path(post, operation_id = "exportVm", path = "/api/v1/vms/{name}/export", tag = "vms",
    params(("name" = String, Path)), request_body = ExportBody,
    responses((status = 201, body = ExportTicket),
        (status = 422, description = "this VM cannot be exported (several disks, a typed passphrase...)", body = ErrorBody),
        (status = 429, description = "too many download links outstanding: use one or wait a minute", body = ErrorBody)))]
pub(super) async fn export_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(name): Name,
    JsonBody(b): JsonBody<ExportBody>,
) -> Result<Response, ApiError> {
    let passphrase = Zeroizing::new(b.passphrase.into_bytes());
    if passphrase.is_empty() {
        return Err(phyllome_engine::vm::VmError::EmptyPassphrase.into());
    }
    who_did(&who, "ask for an export of", &name);
    let vm = name.clone();
    blocking(&app, move |_, lv| Ok(bundle::check_exportable(lv, &vm)?)).await?;
    let Some(token) = app.exports.issue(&who, &name, passphrase) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("you have {MAX_TICKETS} export downloads waiting: start one, or wait a minute for them to expire"),
        ));
    };
    let t = ExportTicket { download: format!("/api/v1/exports/{token}"), expires_in_secs: TICKET_TTL.as_secs() };
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

enum Chunk {
    Data(bytes::Bytes),
    Failed(ApiError),
}

/// The export's output: 1 MiB chunks into a bounded channel (the writer
/// blocks while the client is slow); an error once the client is gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Chunk>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Chunk::Data(full.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the download was closed"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

/// A VM name as a download's file name: `NAME.phyllome`, characters a header or a file system could trip on as '_'.
fn file_name(vm: &str) -> String {
    let safe: String =
        vm.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    format!("{}.phyllome", safe.trim_start_matches('.'))
}

/// Download an export (the link from POST /api/v1/vms/{name}/export; once, same user and session or token):
/// the bundle as a stream, `NAME.phyllome`. The answer starts once the disk is re-encrypted (seconds); a failure
/// before that is the usual JSON error, one after it aborts the body (the download fails, never truncated).
#[utoipa::path(get, operation_id = "downloadExport", path = "/api/v1/exports/{token}", tag = "vms",
    params(("token" = String, Path, description = "The ticket's token")),
    responses((status = 200, description = "the bundle (a tar stream)", content_type = "application/octet-stream",
        body = Vec<u8>),
        (status = 507, description = "no space in the pool to stage the re-encrypted disk", body = ErrorBody)))]
pub(super) async fn download_export(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    Name(token): Name,
) -> Result<Response, ApiError> {
    let Some(ticket) = app.exports.take(&token, &who) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such export download: a link works once, within a minute, for whoever asked for it",
        ));
    };
    who_did(&who, "export", &ticket.vm);
    let disposition = format!("attachment; filename=\"{}\"", file_name(&ticket.vm));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let app2 = Arc::clone(&app);
    tokio::task::spawn_blocking(move || {
        let lv = match app2.libvirt() {
            Ok(lv) => lv,
            Err(e) => {
                let _ = tx.blocking_send(Chunk::Failed(e.into()));
                return;
            }
        };
        let mut out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let r = bundle::export(&lv, &ticket.vm, &ticket.passphrase, &mut out, &phyllome_engine::op::progress::quiet);
        app2.inventory.refresh(&ticket.vm);
        match r {
            Ok(e) => tracing::info!(vm = %shown(&ticket.vm), bytes = e.bytes, "export sent"),
            Err(e) => {
                tracing::warn!(vm = %shown(&ticket.vm), "export failed: {e}");
                let _ = tx.blocking_send(Chunk::Failed(e.into()));
            }
        }
        // The ticket, and with it the passphrase (zeroed), goes here.
    });
    let first = match rx.recv().await {
        Some(Chunk::Data(b)) => b,
        Some(Chunk::Failed(e)) => return Err(e),
        None => return Err(ApiError::internal("the export ended before it wrote anything")),
    };
    let stream = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        if let Some(b) = first {
            return Some((Ok(b), (None, rx)));
        }
        match rx.recv().await {
            Some(Chunk::Data(b)) => Some((Ok(b), (None, rx))),
            // An error item makes hyper abort the body: the client sees a failed download.
            Some(Chunk::Failed(e)) => Some((Err(std::io::Error::other(e.message)), (None, rx))),
            None => None,
        }
    });
    let mut r = axum::body::Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("an ASCII file name"));
    Ok(r)
}

// ---- import ----------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// The VM's name here (default: the one in the bundle).
    name: Option<String>,
    /// Read and check the whole bundle and say what this host would make of it; make nothing.
    dry_run: Option<bool>,
    /// Share the host folders the bundle names even where adding the share would be refused
    /// (the host's own folders, a folder holding a VM's disk).
    force: Option<bool>,
}

/// Percent-decoding (`%XX`); None for a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The passphrase from its header, percent-decoded.
fn passphrase_of(headers: &HeaderMap) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let missing = || {
        ApiError::bad(
            "send the bundle's passphrase in the X-Phyllome-Passphrase header, percent-encoded UTF-8 \
             (what encodeURIComponent gives)",
        )
    };
    let v = headers.get(PASSPHRASE_HEADER).ok_or_else(missing)?;
    if v.len() > MAX_PASSPHRASE_HEADER {
        return Err(ApiError::bad("the X-Phyllome-Passphrase header is too long"));
    }
    let text = v.to_str().map_err(|_| missing())?;
    let bytes = Zeroizing::new(percent_decode(text).ok_or_else(|| {
        ApiError::bad("the X-Phyllome-Passphrase header is not percent-encoded (a % must be sent as %25)")
    })?);
    if std::str::from_utf8(&bytes).is_err() {
        return Err(ApiError::bad("the passphrase in X-Phyllome-Passphrase is not UTF-8 once percent-decoded"));
    }
    Ok(bytes)
}

/// Import a bundle (from an export) as a new VM, rebuilt for this host: the raw bundle as the body
/// (`Content-Length` required, streamed: constant memory), the passphrase in `X-Phyllome-Passphrase`
/// (percent-encoded UTF-8). All or nothing: every part is checked before anything is made. Answers what
/// this host decides differently from the exporting one and why (`changes`), and the warnings;
/// `dry_run=true` makes nothing. One import at a time per server (409 meanwhile).
#[utoipa::path(post, operation_id = "importVm", path = "/api/v1/import", tag = "vms",
    params(ImportQuery,
        ("X-Phyllome-Passphrase" = String, Header, description = "The bundle's passphrase, percent-encoded UTF-8",
            min_length = 1, max_length = 4096)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the bundle"),
    responses((status = 201, description = "made", body = Imported),
        (status = 200, description = "dry run: what would be made, nothing was", body = Imported),
        (status = 411, body = ErrorBody),
        (status = 422, description = "this host cannot run the VM (firmware, TPM...)", body = ErrorBody),
        (status = 507, description = "no space to stage the bundle", body = ErrorBody)))]
pub(super) async fn import_vm(
    State(app): State<Arc<App>>,
    Extension(who): Extension<Principal>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use futures_util::TryStreamExt;
    let Query(q) = query.map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text())))?;
    let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    else {
        return Err(ApiError::new(StatusCode::LENGTH_REQUIRED, "send the bundle with a Content-Length"));
    };
    let passphrase = passphrase_of(&headers)?;
    let name = q.name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    let dry_run = q.dry_run.unwrap_or(false);
    let force = q.force.unwrap_or(false);
    // Held by the import's worker, so it lasts as long as the import even when the client goes.
    let Ok(permit) = Arc::clone(&app.imports).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "another import is under way on this server: try again once it has finished",
        ));
    };
    who_did(
        &who,
        if dry_run { "import (dry run) a bundle as" } else { "import a bundle as" },
        name.as_deref().unwrap_or("(its own name)"),
    );
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let handle = tokio::runtime::Handle::current();
    let app2 = Arc::clone(&app);
    let imported = tokio::task::spawn_blocking(move || {
        let mut input = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle);
        let r = (|| {
            let lv = app2.libvirt()?;
            let opts = ImportOptions { name, passphrase: &passphrase, dry_run, host: None, force };
            let r = bundle::import(&lv, &mut input, len, &opts, &phyllome_engine::op::progress::quiet);
            if let Ok(i) = &r {
                if !i.dry_run {
                    app2.inventory.refresh(&i.name);
                }
            }
            Ok::<_, ApiError>(r?)
        })();
        drop(permit);
        if r.is_err() {
            // Refused before the end of the body (a taken name, a host that cannot run it): read the rest,
            // so that the client, still sending, gets the answer (browsers lose an answer that comes
            // while they upload, when the server closes on them). Ends when the client goes.
            let _ = std::io::copy(&mut input, &mut std::io::sink());
        }
        r
    })
    .await
    .map_err(|_| ApiError::internal("the import's worker failed"))??;
    if !imported.dry_run {
        tracing::info!("{}: imported {}", shown(&who.user), shown(&imported.name));
    }
    let status = if imported.dry_run { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(imported)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, session: u8) -> Principal {
        Principal { user: user.into(), csrf: None, session: Some([session; 32]), token: None, metrics_only: false }
    }

    #[test]
    fn tickets_work_once_for_whoever_asked() {
        let t = Tickets::default();
        let alice = who("alice", 1);
        let token = t.issue(&alice, "vm", Zeroizing::new(b"pass".to_vec())).unwrap();
        assert_eq!(token.len(), 64);
        // Another user, or the same user in another session, gets nothing, and the ticket stays.
        assert!(t.take(&token, &who("bob", 1)).is_none());
        assert!(t.take(&token, &who("alice", 2)).is_none());
        let got = t.take(&token, &alice).unwrap();
        assert_eq!((got.vm.as_str(), got.passphrase.as_slice()), ("vm", b"pass".as_slice()));
        assert!(t.take(&token, &alice).is_none(), "a ticket works once");
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn a_user_holds_a_handful_of_tickets_and_they_expire() {
        let t = Tickets::default();
        let alice = who("alice", 1);
        let tokens: Vec<_> =
            (0..MAX_TICKETS).map(|_| t.issue(&alice, "vm", Zeroizing::new(b"p".to_vec())).unwrap()).collect();
        assert!(t.issue(&alice, "vm", Zeroizing::new(b"p".to_vec())).is_none());
        assert!(t.issue(&who("bob", 3), "vm", Zeroizing::new(b"p".to_vec())).is_some(), "bob is not held up by alice");
        // Expired: gone at the next look.
        for ticket in t.map.lock().unwrap().values_mut() {
            ticket.expires = Instant::now() - Duration::from_secs(1);
        }
        assert!(t.take(&tokens[0], &alice).is_none());
        assert_eq!(t.outstanding(), 0);
        assert!(t.issue(&alice, "vm", Zeroizing::new(b"p".to_vec())).is_some());
    }

    #[test]
    fn passphrase_header_is_percent_decoded_utf8() {
        let mut h = HeaderMap::new();
        assert!(passphrase_of(&h).is_err());
        h.insert(PASSPHRASE_HEADER, HeaderValue::from_static("correct horse"));
        assert_eq!(passphrase_of(&h).unwrap().as_slice(), b"correct horse");
        h.insert(PASSPHRASE_HEADER, HeaderValue::from_static("caf%C3%A9%2025%25"));
        assert_eq!(passphrase_of(&h).unwrap().as_slice(), "café 25%".as_bytes());
        for bad in ["100%", "%zz", "%C3", "%+1"] {
            h.insert(PASSPHRASE_HEADER, HeaderValue::from_static(bad));
            let e = passphrase_of(&h).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(!e.message.contains(bad), "the error repeats the passphrase: {}", e.message);
        }
    }

    #[test]
    fn download_names_are_plain() {
        assert_eq!(file_name("w11"), "w11.phyllome");
        assert_eq!(file_name("a\"b/c\n"), "a_b_c_.phyllome");
        assert_eq!(file_name("..x"), "x.phyllome");
    }

    #[test]
    fn the_writer_sends_whole_chunks_and_the_rest_on_flush() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let mut w = ChannelWriter { tx, buf: Vec::new() };
        w.write_all(&vec![7u8; CHUNK + 10]).unwrap();
        w.flush().unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| match rx.try_recv() {
            Ok(Chunk::Data(b)) => Some(b.len()),
            _ => None,
        })
        .collect();
        assert_eq!(sizes, [CHUNK, 10]);
        drop(rx);
        let e = w.write_all(&vec![0u8; CHUNK]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
