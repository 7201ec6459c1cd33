//! The web UI's files.
//!
//! - Phyllome's own (crates/phyllome-web/web/, a few kilobytes) are built
//!   into the binary (build.rs makes the table). They are the login page's
//!   shell and hold no data, so they are public.
//! - Third-party browser code comes from npm (`web/vendor/package.json`,
//!   installed by scripts/setup.sh) and is served from disk, from the first
//!   of these that holds it: `--vendor-dir DIR` (noVNC: `--novnc-dir`),
//!   `/usr/share/phyllome/vendor` (where a package puts it), or
//!   `web/vendor/node_modules` in this source tree.
//!   - The UI's libraries (`/vendor/lib/...`: Preact with htm, xterm.js) are
//!     public: the login page needs them. Only the files in [`LIB_FILES`].
//!   - noVNC (`/vendor/novnc/...`) needs a session, as the console does.

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));

/// The third-party files the UI loads, as `/vendor/lib/PACKAGE/PATH`: nothing else there is served.
pub const LIB_FILES: &[&str] = &[
    "htm/preact/standalone.module.js",
    "@xterm/xterm/lib/xterm.mjs",
    "@xterm/xterm/css/xterm.css",
    "@xterm/addon-fit/lib/addon-fit.mjs",
    "uplot/dist/uPlot.esm.js",
    "uplot/dist/uPlot.min.css",
];

pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// A file of Phyllome's own UI, by URL path (`/` is the index).
pub fn ui_file(path: &str) -> Option<&'static [u8]> {
    let path = if path == "/" { "/index.html" } else { path };
    UI_FILES.iter().find(|(p, _)| *p == path).map(|(_, b)| *b)
}

/// What anyone may fetch: the UI's own files and its libraries (no data).
pub fn is_public(path: &str) -> bool {
    ui_file(path).is_some() || path.strip_prefix("/vendor/lib/").is_some_and(|rel| LIB_FILES.contains(&rel))
}

/// The npm folder (`node_modules`), if anywhere.
pub fn find_vendor(configured: Option<&Path>) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(c) = configured {
        candidates.push(c.to_path_buf());
    }
    candidates.push(PathBuf::from("/usr/share/phyllome/vendor"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("web/vendor/node_modules"));
    candidates.into_iter().find(|d| d.join(LIB_FILES[0]).is_file())
}

/// Where noVNC is, if anywhere.
pub fn find_novnc(configured: Option<&Path>) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(c) = configured {
        candidates.push(c.to_path_buf());
    }
    candidates.push(PathBuf::from("/usr/share/phyllome/novnc"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("web/vendor/node_modules/@novnc/novnc"));
    candidates.into_iter().find(|d| d.join("core/rfb.js").is_file())
}

/// The file a `/vendor/novnc/REL` request may read: JavaScript under
/// `core/` or `vendor/`, with plain path segments only.
pub fn novnc_file(dir: &Path, rel: &str) -> Option<PathBuf> {
    let ok_segment = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let mut segments = rel.split('/');
    let top = segments.next()?;
    if !matches!(top, "core" | "vendor") || !rel.ends_with(".js") || !rel.split('/').all(ok_segment) {
        return None;
    }
    Some(dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn novnc_paths_stay_inside() {
        let d = Path::new("/n");
        assert_eq!(novnc_file(d, "core/rfb.js"), Some(PathBuf::from("/n/core/rfb.js")));
        assert_eq!(
            novnc_file(d, "vendor/pako/lib/zlib/inflate.js"),
            Some(PathBuf::from("/n/vendor/pako/lib/zlib/inflate.js"))
        );
        for bad in [
            "../x.js",
            "core/../../etc/passwd",
            "core/.hidden.js",
            "package.json",
            "core/rfb.js/",
            "core//a.js",
            "docs/a.js",
        ] {
            assert_eq!(novnc_file(d, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_public_files_are_the_shell_and_its_libraries() {
        assert!(is_public("/") && is_public("/app.js") && is_public("/vendor/lib/htm/preact/standalone.module.js"));
        for private in
            ["/api/v1/vms", "/vendor/novnc/core/rfb.js", "/vendor/lib/preact/package.json", "/vendor/lib/../x"]
        {
            assert!(!is_public(private), "{private}");
        }
        for (path, body) in UI_FILES {
            let text = String::from_utf8_lossy(body);
            // Names are rendered as text (htm/Preact, textContent), never parsed as HTML.
            for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "dangerouslySetInnerHTML", "document.write"] {
                assert!(!text.contains(sink), "{path} uses {sink}");
            }
            if path.ends_with(".html") {
                assert!(!text.contains("<script>"), "{path}: inline scripts would need a weaker CSP");
                assert!(!text.contains("style="), "{path}: inline styles would need a weaker CSP");
            }
        }
    }
}
