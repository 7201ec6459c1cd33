//! Every edition × `--encrypted` × `--bootloader` kickstart passes pykickstart's
//! `ksvalidator` for current Fedora releases, with no warning.
//!
//! `ksvalidator` comes from PyPI's pykickstart (scripts/setup.sh installs it).

use phyllome_system::kickstart::{all_combinations, render, Edition, Recipe};
use std::path::PathBuf;
use std::process::Command;

/// The Fedora releases the recipes are validated for: the default and its neighbours.
const FEDORA: [u32; 3] = [43, 44, 45];

fn out_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("phyllome-kickstart-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs ksvalidator once on `files`: whether it passed without a word, and what it said.
fn run_ksvalidator(version: u32, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("ksvalidator")
        .arg("-v")
        .arg(format!("F{version}"))
        .args(files)
        .output()
        .expect("ksvalidator (PyPI pykickstart) must be installed: run scripts/setup.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // It always says which file it checks; anything else is a warning or an error.
    let complaints: Vec<&str> =
        text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("Checking kickstart file")).collect();
    (out.status.success() && complaints.is_empty(), complaints.join("\n"))
}

/// Validates all files in one process (Python's start-up dominates); when that
/// fails, again one by one to say which file has which problem.
fn ksvalidator(version: u32, files: &[PathBuf]) -> (bool, String) {
    if run_ksvalidator(version, files).0 {
        return (true, String::new());
    }
    let mut report = String::new();
    for f in files {
        let (ok, text) = run_ksvalidator(version, std::slice::from_ref(f));
        if !ok {
            report.push_str(&format!("F{version} {}:\n{text}\n", f.display()));
        }
    }
    (false, report)
}

#[test]
fn every_combination_passes_ksvalidator_for_current_fedora() {
    let listed = Command::new("ksvalidator")
        .arg("-l")
        .output()
        .expect("ksvalidator (PyPI pykickstart) must be installed: run scripts/setup.sh");
    let versions = String::from_utf8_lossy(&listed.stdout).to_string();
    let dir = out_dir("combinations");
    let mut failures = String::new();
    let mut validated = 0;
    for fedora in FEDORA {
        assert!(
            versions.split_whitespace().any(|v| v == format!("F{fedora}")),
            "this pykickstart does not know F{fedora}: upgrade it (pip install -U pykickstart)"
        );
        let mut files = Vec::new();
        for r in all_combinations(fedora) {
            let name =
                format!("f{fedora}-{}{}-{}.ks", r.edition, if r.encrypted { "-encrypted" } else { "" }, r.bootloader);
            let path = dir.join(name);
            std::fs::write(&path, render(&r).unwrap()).unwrap();
            files.push(path);
        }
        assert_eq!(files.len(), 8);
        validated += files.len();
        let (ok, report) = ksvalidator(fedora, &files);
        if !ok {
            failures.push_str(&report);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "ksvalidator complained:\n{failures}");
    assert_eq!(validated, 24);
}

#[test]
fn unattended_admin_and_single_disk_pass_ksvalidator() {
    let dir = out_dir("options");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for edition in [Edition::Desktop, Edition::Headless] {
        let mut r = Recipe::new(edition);
        r.encrypted = true;
        r.admin = "ops".into();
        r.admin_password_hash = Some("$6$rounds=4096$salt$0123456789abcdefABCDEF./".into());
        r.ssh_keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKexample ops@laptop".into()];
        r.disk = Some("disk/by-id/nvme-Example_SSD_123".into());
        r.phyllome_repo = "https://example.invalid/phyllome/fedora-$releasever/".into();
        let path = dir.join(format!("{edition}.ks"));
        std::fs::write(&path, render(&r).unwrap()).unwrap();
        files.push(path);
    }
    let (ok, report) = ksvalidator(phyllome_system::kickstart::DEFAULT_FEDORA, &files);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "ksvalidator complained:\n{report}");
}

/// The check above would see a broken recipe: ksvalidator's complaints name the file.
#[test]
fn a_broken_kickstart_is_caught_and_named() {
    let dir = out_dir("broken");
    let good = dir.join("good.ks");
    let bad = dir.join("bad.ks");
    std::fs::write(&good, render(&Recipe::new(Edition::Headless)).unwrap()).unwrap();
    std::fs::write(
        &bad,
        render(&Recipe::new(Edition::Headless)).unwrap().replace("selinux --enforcing", "selinux --strict"),
    )
    .unwrap();
    let (ok, report) = ksvalidator(phyllome_system::kickstart::DEFAULT_FEDORA, &[good.clone(), bad.clone()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(report.contains("bad.ks") && !report.contains("good.ks") && report.contains("--strict"), "{report}");
}
