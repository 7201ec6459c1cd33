//! The parts of the capability record ([`phyllome_model::Platform`]) that are
//! not libvirt's versions: the host capabilities' `<externalSnapshot/>`,
//! swtpm's features and the virtiofs daemon libvirt would run.
//!
//! Parsers are pure; [`swtpm`] and [`virtiofsd`] ask the programs themselves
//! (each answers at once and exits).

use crate::facts::at;
use phyllome_model::platform::{Swtpm, Virtiofsd};
use std::path::Path;
use std::process::{Command, Stdio};

/// Where libvirt looks for vhost-user daemon descriptors, lowest priority first
/// (a file in a later folder masks one of the same name in an earlier one).
const VHOST_USER_DIRS: [&str; 2] = ["usr/share/qemu/vhost-user", "etc/qemu/vhost-user"];
/// Where distributions install virtiofsd without a descriptor.
const VIRTIOFSD_PLACES: [&str; 4] =
    ["usr/libexec/virtiofsd", "usr/lib/qemu/virtiofsd", "usr/local/libexec/virtiofsd", "usr/local/bin/virtiofsd"];

/// Whether `virsh capabilities` lists `<externalSnapshot/>` for a guest
/// (libvirt ≥ 9.9: external snapshots can be reverted).
pub fn parse_external_snapshot(capabilities_xml: &str) -> bool {
    roxmltree::Document::parse(capabilities_xml)
        .map(|d| d.descendants().any(|n| n.has_tag_name("externalSnapshot")))
        .unwrap_or(false)
}

/// `swtpm socket --print-capabilities` (a JSON object with `features` and, since 0.7, `version`).
pub fn parse_swtpm(json: &str) -> Option<Swtpm> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let features = v.get("features")?.as_array()?.iter().filter_map(|f| f.as_str().map(str::to_string)).collect();
    let version = v.get("version").and_then(|x| x.as_str()).unwrap_or_default().to_string();
    Some(Swtpm { version, features })
}

/// The daemon a vhost-user descriptor of type `fs` names, if it is one.
fn descriptor_binary(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    (v.get("type")?.as_str()? == "fs").then(|| v.get("binary")?.as_str().map(str::to_string)).flatten()
}

/// The virtiofs daemon libvirt would run: the first `fs` vhost-user descriptor
/// (by file name, as libvirt orders them) whose binary exists, else a daemon at a
/// usual place (libvirt then needs `<binary path=…>`). Read through `root`.
pub fn find_virtiofsd(root: &Path) -> Option<String> {
    described_virtiofsd(root)
        .or_else(|| VIRTIOFSD_PLACES.iter().find(|p| at(root, p).is_file()).map(|p| format!("/{p}")))
}

/// The daemon the first `fs` vhost-user descriptor names, when its binary exists:
/// the one libvirt runs without `<binary path=…>`.
pub fn described_virtiofsd(root: &Path) -> Option<String> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in VHOST_USER_DIRS {
        let Ok(rd) = std::fs::read_dir(at(root, dir)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") {
                by_name.insert(name, std::fs::read_to_string(e.path()).ok().and_then(|t| descriptor_binary(&t)));
            }
        }
    }
    by_name.into_values().flatten().find(|bin| at(root, bin).is_file())
}

/// What a virtiofsd says of itself: `--version` (the Rust daemon: `virtiofsd 1.14.0`),
/// `--print-capabilities` (JSON features) and whether `--help` lists `--readonly`.
pub fn parse_virtiofsd(path: &str, version_out: &str, capabilities_json: &str, help: &str) -> Virtiofsd {
    let version = version_out
        .lines()
        .find_map(|l| l.strip_prefix("virtiofsd ").filter(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let features = serde_json::from_str::<serde_json::Value>(capabilities_json)
        .ok()
        .and_then(|v| v.get("features").and_then(|f| f.as_array()).cloned())
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Virtiofsd { path: path.to_string(), version, features, readonly: help.contains("--readonly") }
}

/// Runs `program args` and returns its standard output (and error, for `--help`), or "".
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        .unwrap_or_default()
}

fn swtpm_binary(root: &Path) -> Option<String> {
    ["usr/bin/swtpm", "usr/local/bin/swtpm"].into_iter().find(|p| at(root, p).is_file()).map(|p| format!("/{p}"))
}

/// swtpm on this host, as it describes itself; `None` when it is not installed.
pub fn swtpm(root: &Path) -> Option<Swtpm> {
    parse_swtpm(&output(&swtpm_binary(root)?, &["socket", "--print-capabilities"]))
}

/// The virtiofs daemon libvirt would run on this host, as it describes itself.
pub fn virtiofsd(root: &Path) -> Option<Virtiofsd> {
    let path = find_virtiofsd(root)?;
    Some(parse_virtiofsd(
        &path,
        &output(&path, &["--version"]),
        &output(&path, &["--print-capabilities"]),
        &output(&path, &["--help"]),
    ))
}

/// Where [`tools`] keeps its answers for this boot.
pub const TOOLS_CACHE: &str = "/run/phyllome/platform-tools.json";

/// Identifies a binary by path, inode, size and modification time: an upgrade changes the key.
fn binary_key(path: Option<&str>) -> String {
    use std::os::unix::fs::MetadataExt;
    match path.and_then(|p| std::fs::metadata(p).ok().map(|m| (p, m))) {
        Some((p, m)) => format!("{p}:{}:{}:{}", m.ino(), m.size(), m.mtime()),
        None => "-".into(),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedTools {
    key: String,
    swtpm: Option<Swtpm>,
    virtiofsd: Option<Virtiofsd>,
}

/// swtpm and virtiofsd as they describe themselves, asked once per boot and
/// binary (four short process runs that every `phyllome xml` or `create` would otherwise pay).
pub fn tools(root: &Path) -> (Option<Swtpm>, Option<Virtiofsd>) {
    let live = root == Path::new("/");
    let key = format!("{} {}", binary_key(swtpm_binary(root).as_deref()), binary_key(find_virtiofsd(root).as_deref()));
    if live {
        let cached =
            std::fs::read_to_string(TOOLS_CACHE).ok().and_then(|t| serde_json::from_str::<CachedTools>(&t).ok());
        if let Some(c) = cached.filter(|c| c.key == key) {
            return (c.swtpm, c.virtiofsd);
        }
    }
    let (swtpm, virtiofsd) = (swtpm(root), virtiofsd(root));
    if live {
        let c = CachedTools { key, swtpm: swtpm.clone(), virtiofsd: virtiofsd.clone() };
        let _ = std::fs::create_dir_all("/run/phyllome");
        let _ = std::fs::write(TOOLS_CACHE, serde_json::to_string(&c).expect("serializes"));
    }
    (swtpm, virtiofsd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_snapshot_from_host_capabilities() {
        let new = "<capabilities><guest><features><disksnapshot default='on' toggle='no'/><externalSnapshot/></features></guest></capabilities>";
        let old =
            "<capabilities><guest><features><disksnapshot default='on' toggle='no'/></features></guest></capabilities>";
        assert!(parse_external_snapshot(new));
        assert!(!parse_external_snapshot(old));
        assert!(!parse_external_snapshot("not xml"));
    }

    #[test]
    fn swtpm_capabilities() {
        let json = r#"{ "type": "swtpm", "features": [ "tpm-1.2", "tpm-2.0", "cmdarg-pwd-fd" ], "version": "0.7.1" }"#;
        let s = parse_swtpm(json).unwrap();
        assert_eq!(s.version, "0.7.1");
        assert!(s.features.iter().any(|f| f == "tpm-2.0"));
        assert!(parse_swtpm("{}").is_none());
    }

    #[test]
    fn virtiofsd_self_description() {
        let rust = parse_virtiofsd(
            "/usr/local/libexec/virtiofsd",
            "virtiofsd 1.14.0\n",
            r#"{"type":"fs","features":["migrate-precopy","separate-options"]}"#,
            "Options:\n      --readonly  Mount the shared directory read-only\n",
        );
        assert_eq!(rust.version, "1.14.0");
        assert!(rust.readonly && rust.features.contains(&"migrate-precopy".to_string()));
        // QEMU 7.2's C daemon: a FUSE banner, no version line, no --readonly.
        let c = parse_virtiofsd(
            "/usr/lib/qemu/virtiofsd",
            "using FUSE kernel interface version 7.31\n",
            r#"{"type": "fs"}"#,
            "usage: virtiofsd [options]\n    -o source=PATH\n",
        );
        assert_eq!((c.version.as_str(), c.readonly, c.features.len()), ("", false, 0));
    }

    #[test]
    fn virtiofsd_found_through_descriptors_first() {
        let root = std::env::temp_dir().join(format!("phyllome-vfs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(find_virtiofsd(&root), None);
        // A daemon at a usual place, no descriptor.
        std::fs::create_dir_all(root.join("usr/lib/qemu")).unwrap();
        std::fs::write(root.join("usr/lib/qemu/virtiofsd"), "").unwrap();
        assert_eq!(find_virtiofsd(&root).as_deref(), Some("/usr/lib/qemu/virtiofsd"));
        // A descriptor wins; one naming a missing binary, or another device type, is skipped.
        std::fs::create_dir_all(root.join("usr/share/qemu/vhost-user")).unwrap();
        std::fs::create_dir_all(root.join("usr/local/libexec")).unwrap();
        std::fs::write(root.join("usr/local/libexec/virtiofsd"), "").unwrap();
        let d = |bin: &str, ty: &str| format!(r#"{{"description":"x","type":"{ty}","binary":"{bin}"}}"#);
        std::fs::write(root.join("usr/share/qemu/vhost-user/10-gpu.json"), d("/usr/lib/qemu/virtiofsd", "gpu"))
            .unwrap();
        std::fs::write(root.join("usr/share/qemu/vhost-user/20-missing.json"), d("/nowhere/virtiofsd", "fs")).unwrap();
        std::fs::write(root.join("usr/share/qemu/vhost-user/50-fs.json"), d("/usr/local/libexec/virtiofsd", "fs"))
            .unwrap();
        assert_eq!(find_virtiofsd(&root).as_deref(), Some("/usr/local/libexec/virtiofsd"));
        // An empty file in /etc masks the one of the same name.
        std::fs::create_dir_all(root.join("etc/qemu/vhost-user")).unwrap();
        std::fs::write(root.join("etc/qemu/vhost-user/50-fs.json"), "").unwrap();
        assert_eq!(find_virtiofsd(&root).as_deref(), Some("/usr/lib/qemu/virtiofsd"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
