//! Re-tuning on import, on recorded hosts: one VM exported from the Intel KVM
//! host with a render node, imported on every recorded host. Golden files
//! `fixtures/golden/import/OS/HOST.xml` (the domain that host gets) and
//! `HOST.explain` (what changed against the exporting host, and why), or
//! `HOST.err` when the host cannot run it (with the package to install).
//! Regenerate on purpose with `PHYLLOME_REGENERATE_GOLDEN=1 cargo test -p phyllome-engine --test import_golden`.

use phyllome_engine::manifest::Manifest;
use phyllome_engine::retune::{changes, plan_on, render_changes, request_for, SavedChoice};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

const EXPORTED_ON: &str = "intel-kvm-rendernode";

/// The manifests exported: a desktop Linux guest and a Windows 11 one, as `phyllome manifest` writes them.
fn manifests() -> Vec<(&'static str, Manifest)> {
    let linux = "version = 1\nname = \"desk\"\nos = \"linux\"\nos_name = \"Linux\"\nmemory = \"4G\"\n\
        encryption = \"secret\"\nnetwork = \"default\"\nautostart = true\n";
    let windows = "version = 1\nname = \"w11\"\nos = \"windows11\"\ncpus = 4\nmemory = \"8G\"\n\
        encryption = \"secret\"\nnetwork = \"default\"\n[media]\niso = \"Win11_24H2.iso\"\n";
    vec![
        ("linux", Manifest::parse(linux, "linux.toml").unwrap()),
        ("windows11", Manifest::parse(windows, "windows11.toml").unwrap()),
    ]
}

fn hosts() -> Vec<(String, phyllome_engine::model::Host)> {
    let mut v: Vec<_> = std::fs::read_dir(root().join("fixtures/hosts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("host.json").exists())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), phyllome_host::fixture::load(&p).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn one_bundle_is_retuned_for_every_recorded_host() {
    let hosts = hosts();
    let from = &hosts.iter().find(|(n, _)| n == EXPORTED_ON).expect("the exporting host is recorded").1;
    let regenerate = std::env::var_os("PHYLLOME_REGENERATE_GOLDEN").is_some();
    let mut mismatches = vec![];
    let mut xmls = vec![];
    for (os, m) in manifests() {
        let spec = request_for(&m, 64 << 30, None);
        let exported: Vec<SavedChoice> =
            plan_on(&m.name, &spec, from, vec![]).unwrap().choices.iter().map(SavedChoice::from).collect();
        let source = phyllome_engine::retune::SourceHost::of(from);
        let dir = root().join("fixtures/golden/import").join(os);
        for (host_name, host) in &hosts {
            let (files, got): (Vec<PathBuf>, Vec<String>) = match plan_on(&m.name, &spec, host, vec![]) {
                Ok(plan) => {
                    let c = changes(&exported, &plan.choices);
                    let mut explain = render_changes(&source, &phyllome_engine::retune::SourceHost::of(host), &c);
                    for w in &plan.warnings {
                        explain.push_str(&format!("warning: {w}\n"));
                    }
                    let xml = plan.domain.to_xml();
                    (
                        vec![dir.join(format!("{host_name}.xml")), dir.join(format!("{host_name}.explain"))],
                        vec![xml, explain],
                    )
                }
                Err(e) => (vec![dir.join(format!("{host_name}.err"))], vec![format!("{e}\n")]),
            };
            for path in &files {
                if path.extension().is_some_and(|x| x == "xml") {
                    xmls.push(path.clone());
                }
                if regenerate {
                    std::fs::create_dir_all(&dir).unwrap();
                    for ext in ["xml", "explain", "err"] {
                        let _ = std::fs::remove_file(dir.join(format!("{host_name}.{ext}")));
                    }
                }
            }
            for (path, text) in files.iter().zip(&got) {
                if regenerate {
                    std::fs::write(path, text).unwrap();
                    continue;
                }
                match std::fs::read_to_string(path) {
                    Ok(want) if &want == text => {}
                    Ok(want) => {
                        mismatches.push(format!("{} differs:\n--- expected\n{want}\n+++ got\n{text}", path.display()))
                    }
                    Err(_) => mismatches.push(format!("{} is missing (got:\n{text})", path.display())),
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden files differ (PHYLLOME_REGENERATE_GOLDEN=1 to accept):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // What the issue names, seen in the files themselves.
    let read = |p: &str| std::fs::read_to_string(root().join("fixtures/golden/import").join(p)).unwrap();
    let tcg = read("linux/debian12-backports-tcg.explain");
    assert!(tcg.contains("changed virt-type") || tcg.contains("changed cpu"), "TCG re-chooses the CPU: {tcg}");
    assert!(read("linux/intel-kvm-rendernode.explain").contains("changed: nothing"));
    let w11 = read("windows11/intel-kvm-no-secboot-no-swtpm.err");
    assert!(w11.contains("apt install ovmf"), "{w11}");
    // Every re-tuned definition validates against libvirt's schema.
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg("/usr/share/libvirt/schemas/domain.rng")
        .args(&xmls)
        .output()
        .expect("xmllint (libxml2-utils): run scripts/setup.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
