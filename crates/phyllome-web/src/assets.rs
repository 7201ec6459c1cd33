//! The web UI's files. Phyllome's own (a few kilobytes) are built into the
//! binary; noVNC (from the npm package `@novnc/novnc`, installed by
//! scripts/setup.sh) is served from disk, from the first of these that
//! holds `core/rfb.js`:
//!
//! 1. `--novnc-dir DIR`;
//! 2. `/usr/share/phyllome/novnc` (where a package puts it);
//! 3. `web/vendor/node_modules/@novnc/novnc` in this source tree (a build
//!    from the repository, as in CI).

use std::path::{Path, PathBuf};

pub const INDEX_HTML: &str = include_str!("../web/index.html");
pub const APP_JS: &str = include_str!("../web/app.js");
pub const APP_CSS: &str = include_str!("../web/app.css");
pub const FAVICON: &str = include_str!("../web/favicon.svg");

/// The public shell: what a browser needs to show the login form. It holds
/// no data; everything else needs a session.
pub fn shell(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        "/favicon.svg" => Some(("image/svg+xml", FAVICON)),
        _ => None,
    }
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
    fn the_shell_is_only_the_login_page() {
        assert!(shell("/").is_some() && shell("/app.js").is_some());
        assert!(shell("/api/v1/vms").is_none() && shell("/vendor/novnc/core/rfb.js").is_none());
        // Names are set with textContent, never parsed as HTML.
        assert!(
            !APP_JS.contains("innerHTML") && !APP_JS.contains("outerHTML") && !APP_JS.contains("insertAdjacentHTML")
        );
        assert!(!INDEX_HTML.contains("<script>"), "inline scripts would need a weaker CSP");
    }
}
