//! Embeds the UI's own files (crates/phyllome-web/web/, without the npm
//! vendor folder) into the binary: one table of URL path and bytes.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "vendor" || name == "node_modules" {
            continue;
        }
        if p.is_dir() {
            walk(&p, root, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("html" | "js" | "mjs" | "css" | "svg")) {
            let rel = p.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/");
            out.push((format!("/{rel}"), p));
        }
    }
}

fn main() {
    // Read when the script runs, not baked in when it is compiled: cargo may run one build of it for
    // another checkout of this crate (a second worktree sharing the target folder).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("web");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    for (_, p) in &files {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let mut code =
        String::from("/// The UI's files: URL path and contents.\npub static UI_FILES: &[(&str, &[u8])] = &[\n");
    for (url, p) in &files {
        code.push_str(&format!("    ({url:?}, include_bytes!({:?})),\n", p.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("ui_files.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
