//! `phyllome host setup` and `phyllome image kickstart`, as a user runs them.

use crate::common::phyllome;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("phyllome-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                m.insert(p.clone(), None);
                stack.push(p);
            } else {
                m.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    m
}

fn text(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn dry_run_shows_the_golden_plan_and_writes_nothing() {
    for name in ["debian-grub", "fedora-grubby"] {
        let dir = scratch(&format!("dry-{name}"));
        let root = dir.join("root");
        copy_tree(&repo().join("fixtures/setup-roots").join(name), &root);
        let before = snapshot(&root);
        let out = phyllome(&["host", "setup", "--dry-run", "--root", root.to_str().unwrap()]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let golden = std::fs::read_to_string(repo().join("fixtures/golden/setup").join(name).join("plan.txt")).unwrap();
        assert!(stdout.contains("(dry run: nothing is changed)"), "{stdout}");
        assert!(stdout.ends_with(&golden), "{name}: output differs from plan.txt:\n{stdout}");
        assert_eq!(snapshot(&root), before, "{name}: --dry-run wrote something");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn setup_applies_once_then_has_nothing_to_do() {
    let dir = scratch("apply");
    let root = dir.join("root");
    copy_tree(&repo().join("fixtures/setup-roots/fedora-grubby"), &root);
    let out = phyllome(&["host", "setup", "--root", root.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("applying:") && stdout.contains("not run on a --root tree: run grubby"), "{stdout}");
    assert!(root.join("etc/modules-load.d/phyllome-vfio.conf").exists());
    let golden_entry = repo().join(
        "fixtures/golden/setup/fedora-grubby/tree/boot/loader/entries/4c2f0a7e5b1d4e0c9a3f6b8d2e1c7a90-0-rescue.conf",
    );
    assert_eq!(
        std::fs::read_to_string(root.join("boot/loader/entries/4c2f0a7e5b1d4e0c9a3f6b8d2e1c7a90-0-rescue.conf"))
            .unwrap(),
        std::fs::read_to_string(golden_entry).unwrap()
    );
    let again = phyllome(&["host", "setup", "--root", root.to_str().unwrap()]);
    let (stdout, _) = text(&again);
    assert!(again.status.success() && stdout.contains("no changes: this host is set up"), "{stdout}");
    assert!(!stdout.contains("applying:"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn setup_refuses_a_missing_root() {
    let out = phyllome(&["host", "setup", "--dry-run", "--root", "/nonexistent/phyllome-root"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("--root /nonexistent/phyllome-root: No such file or directory"));
}

#[test]
fn kickstart_to_a_file_and_bad_options() {
    let dir = scratch("ks");
    let file = dir.join("headless.ks");
    let out = phyllome(&[
        "image",
        "kickstart",
        "--edition",
        "headless",
        "--encrypted",
        "--bootloader",
        "systemd-boot",
        "--fedora",
        "43",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let ks = std::fs::read_to_string(&file).unwrap();
    assert!(ks.starts_with("# Phyllome OS, headless edition: a Fedora 43 Remix"));
    assert!(ks.contains("--encrypted --luks-version=luks2") && ks.contains("bootloader --sdboot"));
    let stdout = phyllome(&["image", "kickstart", "--edition", "desktop"]);
    assert!(text(&stdout).0.contains("virt-manager\n"));

    let old = phyllome(&["image", "kickstart", "--edition", "desktop", "--fedora", "30"]);
    assert_eq!(old.status.code(), Some(1));
    assert!(text(&old).1.contains("Fedora 30 is not supported: use 40 or newer"), "{}", text(&old).1);
    let bad = phyllome(&["image", "kickstart", "--edition", "kiosk"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("possible values: desktop, headless"), "{}", text(&bad).1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hidden_packaging_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = phyllome(&["completions", shell]);
        assert!(out.status.success() && text(&out).0.contains("kickstart"), "{shell}");
    }
    let man = phyllome(&["manpage"]);
    assert!(text(&man).0.starts_with(".ie \\n(.g .ds Aq") && text(&man).0.contains("phyllome\\-host(1)"));
    let help = text(&phyllome(&["--help"])).0;
    assert!(!help.contains("completions") && !help.contains("manpage"), "hidden from --help:\n{help}");
    assert!(help.contains("image"));
}
