//! QEMU itself opens the images we write: `qemu-img check` finds a clean
//! qcow2 with LUKS, and data written through QEMU with the passphrase reads
//! back, while the file never holds it in clear and a wrong passphrase fails.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("phyllome-disk-{}-{name}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Runs a QEMU tool with the passphrase on stdin (secret object file=/dev/stdin).
fn qemu(tool: &str, args: &[&str], pass: &[u8]) -> Output {
    let mut c = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} (qemu-utils) must be installed: {e}"));
    c.stdin.take().unwrap().write_all(pass).unwrap();
    c.wait_with_output().unwrap()
}

fn opts(path: &std::path::Path) -> String {
    format!("driver=qcow2,file.filename={},encrypt.key-secret=sec0", path.display())
}

#[test]
fn qemu_checks_writes_and_reads_our_encrypted_qcow2() {
    let path = tmp("rw");
    let pass = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    phyllome_disk::create(&path, 1 << 30, pass, phyllome_disk::Cost::RANDOM_KEY).unwrap();

    let info = Command::new("qemu-img").args(["info", "--output=json"]).arg(&path).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"encrypted\": true") && info.contains("\"format\": \"luks\""), "{info}");
    assert!(info.contains("\"virtual-size\": 1073741824"), "{info}");

    let secret = ["--object", "secret,id=sec0,file=/dev/stdin"];
    let o = opts(&path);
    let check = qemu("qemu-img", &[&["check"][..], &secret, &["--image-opts", &o]].concat(), pass);
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let w = qemu(
        "qemu-io",
        &[&secret[..], &["--image-opts", &o, "-c", "write -P 0x5a 1M 64k", "-c", "write -P 0x41 0 4k"]].concat(),
        pass,
    );
    assert!(w.status.success(), "qemu-io write: {}", String::from_utf8_lossy(&w.stderr));
    let r = qemu(
        "qemu-io",
        &[&secret[..], &["--image-opts", &o, "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x41 0 4k"]].concat(),
        pass,
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && !out.contains("Pattern verification failed"), "qemu-io read: {out}");
    let data = std::fs::read(&path).unwrap();
    assert!(!data.windows(4096).any(|w| w.iter().all(|b| *b == 0x41)), "data stored in clear");

    let bad = qemu("qemu-io", &[&secret[..], &["--image-opts", &o, "-c", "read 0 4k"]].concat(), b"wrong");
    assert!(!bad.status.success(), "a wrong passphrase opened the image");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn create_refuses_to_overwrite() {
    let path = tmp("exists");
    std::fs::write(&path, b"user data").unwrap();
    let e = phyllome_disk::create(&path, 1 << 30, b"k", phyllome_disk::Cost::RANDOM_KEY).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"user data");
    let _ = std::fs::remove_file(&path);
}
