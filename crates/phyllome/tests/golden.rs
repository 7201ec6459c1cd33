//! Golden files: every guest OS profile on every recorded host.
//!
//! Inputs: `fixtures/hosts/HOST/{host.json,domcaps.xml}`. Expected output:
//! `fixtures/golden/HOST/OS.xml` (or `OS.err` when the host cannot run that
//! OS), plus `OS.explain` with the choices and warnings. Regenerate on purpose
//! with `PHYLLOME_REGENERATE_GOLDEN=1 cargo test --test golden`; the diff then
//! shows every change to generated output in review.

use phyllome_engine::model::build::{build, NetworkChoice, Request};
use phyllome_engine::model::catalog;
use phyllome_engine::vm::disk_ref;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn hosts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/hosts"))
        .expect("fixtures/hosts")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("host.json").exists())
        .collect();
    v.sort();
    v
}

/// The request every golden file is made from: defaults, an installer ISO,
/// an encrypted disk in Phyllome's pool, the default network.
pub fn golden_request(os: &str) -> Request {
    let name = format!("golden-{os}");
    let mut req = Request {
        os: os.to_string(),
        name: name.clone(),
        iso: Some("/var/lib/phyllome/iso/installer & <setup>.iso".into()),
        network: NetworkChoice::Default,
        disk: Some(disk_ref(
            &name,
            phyllome_engine::POOL,
            phyllome_engine::paths::POOL_PATH,
            phyllome_engine::model::Encryption::Secret,
        )),
        version: "golden".into(),
        ..Default::default()
    };
    if os == "macos" {
        req.opencore = Some("/var/lib/phyllome/opencore/OpenCore.qcow2".into());
        req.osk = Some("x".repeat(64));
    }
    req
}

fn render(os: &str, host_dir: &Path) -> (String, String) {
    let host = phyllome_host::fixture::load(host_dir).unwrap();
    match build(&golden_request(os), &host) {
        Ok(plan) => {
            let mut explain = String::new();
            for c in &plan.choices {
                explain.push_str(&format!("{}: {}\n    why: {}\n", c.item, c.choice, c.why));
            }
            for w in &plan.warnings {
                explain.push_str(&format!("warning: {w}\n"));
            }
            (plan.domain.to_xml(), explain)
        }
        Err(e) => (String::new(), format!("{e}\n")),
    }
}

fn regenerate() -> bool {
    std::env::var_os("PHYLLOME_REGENERATE_GOLDEN").is_some()
}

#[test]
fn golden_files_match_for_every_profile_on_every_recorded_host() {
    let hosts = hosts();
    assert!(hosts.len() >= 4, "expected at least 4 recorded hosts, found {}", hosts.len());
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for host in &hosts {
        let hname = host.file_name().unwrap().to_string_lossy().to_string();
        let dir = root().join("fixtures/golden").join(&hname);
        for os in catalog::ids() {
            let (xml, explain) = render(os, host);
            let (xml_path, err_path, explain_path) =
                (dir.join(format!("{os}.xml")), dir.join(format!("{os}.err")), dir.join(format!("{os}.explain")));
            if regenerate() {
                std::fs::create_dir_all(&dir).unwrap();
                for p in [&xml_path, &err_path, &explain_path] {
                    let _ = std::fs::remove_file(p);
                }
                if xml.is_empty() {
                    std::fs::write(&err_path, &explain).unwrap();
                } else {
                    std::fs::write(&xml_path, &xml).unwrap();
                    std::fs::write(&explain_path, &explain).unwrap();
                }
                continue;
            }
            let expected = |p: &Path| std::fs::read_to_string(p).ok();
            let pairs = if xml.is_empty() {
                vec![(err_path.clone(), explain.clone())]
            } else {
                vec![(xml_path.clone(), xml.clone()), (explain_path.clone(), explain.clone())]
            };
            for (path, got) in pairs {
                compared += 1;
                match expected(&path) {
                    Some(want) if want == got => {}
                    Some(want) => {
                        mismatches.push(format!("{} differs:\n--- expected\n{want}\n+++ got\n{got}", path.display()))
                    }
                    None => mismatches.push(format!("{} is missing (got:\n{got})", path.display())),
                }
            }
            if xml.is_empty() && xml_path.exists() {
                mismatches.push(format!("{} exists but the build now fails: {explain}", xml_path.display()));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} golden files differ (PHYLLOME_REGENERATE_GOLDEN=1 to accept):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Every golden XML validates against libvirt's own RelaxNG schema.
#[test]
fn golden_xml_validates_against_libvirt_schema() {
    let schema = Path::new("/usr/share/libvirt/schemas/domain.rng");
    assert!(schema.exists(), "{} missing: run scripts/setup.sh", schema.display());
    let mut files = Vec::new();
    for host in hosts() {
        let dir = root().join("fixtures/golden").join(host.file_name().unwrap());
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "xml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 20, "expected golden XML files, found {}", files.len());
    files.sort();
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(schema)
        .args(&files)
        .output()
        .expect("xmllint (libxml2-utils) must be installed: run scripts/setup.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = stderr.lines().filter(|l| l.ends_with(" validates")).count();
    assert!(out.status.success() && ok == files.len(), "{ok} of {} validate:\n{stderr}", files.len());
}

/// The hosts the issue asks for are among the recorded ones, and they differ where it matters.
#[test]
fn recorded_hosts_cover_kvm_tcg_intel_amd_and_missing_pieces() {
    use phyllome_engine::model::host::{CpuVendor, KvmState};
    let loaded: Vec<_> = hosts().iter().map(|h| phyllome_host::fixture::load(h).unwrap()).collect();
    assert!(loaded.iter().any(|h| h.facts.kvm != KvmState::Usable && h.caps.virt_type == "qemu"));
    assert!(loaded
        .iter()
        .any(|h| h.caps.is_kvm() && h.facts.cpu_vendor == CpuVendor::Intel && !h.facts.render_nodes.is_empty()));
    assert!(loaded.iter().any(|h| h.caps.is_kvm() && h.facts.cpu_vendor == CpuVendor::Amd));
    assert!(loaded.iter().any(|h| !h.facts.swtpm || !h.facts.firmware.iter().any(|f| f.has("secure-boot"))));
}
