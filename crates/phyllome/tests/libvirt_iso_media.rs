//! Install media: the OS read from an ISO's own volume descriptor, the boot
//! firmware its El Torito catalog offers, driver discs known by content, the
//! ISO folder, and real bootable media: a hybrid BIOS + UEFI ISO of the test
//! guest made with grub-mkrescue, booted through OVMF and through SeaBIOS.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder QEMU's user can read (world-executable parents, 0755).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let d = Path::new("/var/tmp").join(format!("{PREFIX}{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An ISO of one small file with these identifiers (and, optionally, a BIOS or UEFI boot entry).
fn xorriso_iso(out: &Path, volume: &str, publisher: &str, boot: Option<&str>, dirs: &[&str]) {
    let tree = out.with_extension("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("README.TXT"), "hello\n").unwrap();
    std::fs::write(tree.join("boot.img"), vec![0u8; 2048]).unwrap();
    for d in dirs {
        std::fs::create_dir_all(tree.join(d)).unwrap();
        std::fs::write(tree.join(d).join("x.inf"), "driver\n").unwrap();
    }
    let mut c = Command::new("xorriso");
    c.args(["-as", "mkisofs", "-quiet", "-V", volume, "-sysid", "LINUX"]);
    if !publisher.is_empty() {
        c.args(["-publisher", publisher]);
    }
    match boot {
        Some("bios") => c.args(["-b", "boot.img", "-no-emul-boot", "-boot-load-size", "4"]),
        Some("uefi") => c.args(["-e", "boot.img", "-no-emul-boot"]),
        _ => &mut c,
    };
    run(c.arg("-o").arg(out).arg(&tree));
    std::fs::remove_dir_all(&tree).unwrap();
}

fn bootable_iso(out: &Path, volume: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-iso.sh");
    run(Command::new("bash").arg(script).arg(out).arg(volume));
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn inspect(iso: &Path) -> serde_json::Value {
    json(&run(Command::new(env!("CARGO_BIN_EXE_phyllome")).args(["iso", "inspect", "--json"]).arg(iso)))
}

fn err_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stderr).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn isos_of_windows_11_debian_12_and_fedora_are_detected_and_firmware_mismatches_refused() {
    let s = Scratch::new("iso-detect");
    let cases = [
        ("win11.iso", "CCCOMA_X64FRE_EN-US_DV9", "MICROSOFT CORPORATION", "windows11", "volume_id"),
        ("debian.iso", "Debian 12.8.0 amd64 n", "", "linux", "volume_id"),
        ("fedora.iso", "Fedora-WS-Live-42-1-1", "", "linux", "volume_id"),
    ];
    for (file, volume, publisher, os, field) in cases {
        xorriso_iso(&s.path(file), volume, publisher, None, &[]);
        let v = inspect(&s.path(file));
        assert_eq!(v["volume_id"], volume, "{v}");
        assert_eq!(v["detected"]["os"], os, "{file}: {v}");
        assert_eq!(v["detected"]["field"], field, "{v}");
    }
    assert_eq!(inspect(&s.path("debian.iso"))["detected"]["name"], "Debian 12");

    // El Torito: BIOS only, UEFI only, both; and a profile refuses what its firmware cannot boot.
    xorriso_iso(&s.path("bios.iso"), "CCCOMA_X64FRE_EN-US_DV9", "MICROSOFT CORPORATION", Some("bios"), &[]);
    xorriso_iso(&s.path("uefi.iso"), "DATA", "", Some("uefi"), &[]);
    bootable_iso(&s.path("hybrid.iso"), "PHYLLOME_TEST");
    assert_eq!(inspect(&s.path("bios.iso"))["boot"], serde_json::json!({"bios": true, "uefi": false}));
    assert_eq!(inspect(&s.path("uefi.iso"))["boot"], serde_json::json!({"bios": false, "uefi": true}));
    assert_eq!(inspect(&s.path("hybrid.iso"))["boot"], serde_json::json!({"bios": true, "uefi": true}));
    let xml = |os: Option<&str>, iso: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phyllome"));
        c.env("PHYLLOME_CONNECT", URI).args(["xml", "--name", "phyllome-test-x", "--json", "--iso"]).arg(s.path(iso));
        if let Some(os) = os {
            c.args(["--os", os]);
        }
        c.output().unwrap()
    };
    let out = xml(None, "bios.iso");
    assert_eq!(out.status.code(), Some(3), "a BIOS-only ISO for the UEFI-only windows11 profile");
    let e = err_json(&out)["error"].as_str().unwrap().to_string();
    assert!(e.contains("boots BIOS only") && e.contains("windows11 starts from UEFI"), "{e}");
    let out = xml(Some("legacy"), "uefi.iso");
    assert!(err_json(&out)["error"].as_str().unwrap().contains("boots UEFI only"), "{out:?}");
    for os in ["windows11", "legacy", "linux"] {
        let out = xml(Some(os), "hybrid.iso");
        assert!(out.status.success(), "{os} takes an ISO that boots both: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Detected, the choice is explained.
    let out = xml(None, "debian.iso");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert_eq!(v["os"], "linux");
    let why = v["choices"].as_array().unwrap().iter().find(|c| c["item"] == "os").unwrap();
    assert!(why["why"].as_str().unwrap().contains("volume id \"Debian 12.8.0 amd64 n\""), "{why}");

    // An ISO nobody knows: a clear error with the --os choices, and create makes nothing.
    let vm = TestVm::new("iso-unknown");
    let out = Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .args(["create", &vm.0, "--network", "none", "--json", "--iso"])
        .arg(s.path("uefi.iso"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let e = err_json(&out);
    assert_eq!(e["kind"], "invalid-input");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("volume id \"DATA\"") && msg.contains("choose the OS (linux, windows11"), "{msg}");
    assert!(!vm.exists());
    assert!(!Path::new(&volume_path(&vm.0)).exists());
}

#[test]
fn a_driver_disc_in_the_iso_folder_is_found_by_its_content() {
    let folder = Path::new("/var/lib/phyllome/isos");
    std::fs::create_dir_all(folder).unwrap();
    // Named like nothing in particular: its viostor and NetKVM folders make it a driver disc.
    let disc = folder.join(format!("{PREFIX}misc-{}.iso", std::process::id()));
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _guard = Remove(&disc);
    xorriso_iso(&disc, "MISC", "", None, &["viostor", "NetKVM", "vioscsi"]);
    assert_eq!(inspect(&disc)["virtio_win"], true);
    let s = Scratch::new("iso-win");
    xorriso_iso(&s.path("win.iso"), "CCCOMA_X64FRE_EN-US_DV9", "MICROSOFT CORPORATION", None, &[]);
    let out = run(Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .args(["xml", "--name", "phyllome-test-w", "--iso"])
        .arg(s.path("win.iso")));
    let xml = String::from_utf8_lossy(&out.stdout);
    let found = xml.contains(&disc.display().to_string());
    let other_disc = std::fs::read_dir(folder).unwrap().flatten().any(|e| {
        e.path() != disc
            && e.file_name().to_string_lossy() < disc.file_name().unwrap().to_string_lossy()
            && inspect_ok(&e.path())
    });
    assert!(found || other_disc, "the driver disc is attached for Windows:\n{xml}");
    // Not for Linux.
    let out = run(Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .args(["xml", "--os", "linux", "--name", "phyllome-test-l", "--iso"])
        .arg(s.path("win.iso")));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&disc.display().to_string()));
}

/// Whether a file of the folder is itself a virtio-win disc (another one may come first).
fn inspect_ok(p: &Path) -> bool {
    Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .args(["iso", "inspect", "--json"])
        .arg(p)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| json(&o)["virtio_win"] == true)
}

#[test]
fn a_real_hybrid_iso_boots_the_guest_through_ovmf_and_through_seabios_and_the_folder_keeps_it() {
    require_libvirt();
    let s = Scratch::new("iso-boot");
    // Detected as Debian from its volume id: no --os, no --kernel.
    let iso = s.path("guest.iso");
    bootable_iso(&iso, "Debian 12.8.0 amd64 n");
    let (uefi, bios) = (TestVm::new("iso-uefi"), TestVm::new("iso-bios"));
    let create = |vm: &TestVm, os: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phyllome"));
        c.env("PHYLLOME_CONNECT", URI).args(["create", &vm.0, "--memory", "512M", "--disk-size", "4G"]);
        c.args(["--network", "none", "--start", "--json", "--iso"]).arg(&iso);
        if let Some(os) = os {
            c.args(["--os", os]);
        }
        json(&run(&mut c))
    };
    let made = create(&uefi, None);
    assert_eq!(made["os"], "linux", "{made}");
    assert!(made["detected"].as_str().unwrap().contains("Debian 12"), "{made}");
    let made = create(&bios, Some("legacy"));
    assert_eq!(made["os"], "legacy");
    let xml_of = |vm: &TestVm| virsh_ok(&["dumpxml", &vm.0]);
    assert!(xml_of(&uefi).contains("<loader") && !xml_of(&uefi).contains("<kernel>"), "OVMF, no direct boot");
    assert!(!xml_of(&bios).contains("<loader") && !xml_of(&bios).contains("<kernel>"), "SeaBIOS, no direct boot");
    wait_for_serial(&uefi.0, "PHYLLOME-READY", 240);
    wait_for_serial(&bios.0, "PHYLLOME-READY", 240);

    // The ISO folder: add (SHA-256 as sha256sum says), list, refuse to remove what a VM uses, remove.
    let folder = s.path("isos");
    let bin = env!("CARGO_BIN_EXE_phyllome");
    let added = json(&run(Command::new(bin).args(["iso", "add", "--json", "--dir"]).arg(&folder).arg(&iso)));
    let sum = run(Command::new("sha256sum").arg(&iso));
    assert_eq!(
        added["sha256"].as_str().unwrap(),
        String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap()
    );
    assert_eq!(added["os"], "linux");
    let listed = json(&run(Command::new(bin).args(["iso", "list", "--json", "--dir"]).arg(&folder)));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "guest.iso");
    assert_eq!(listed[0]["boot"], serde_json::json!({"bios": true, "uefi": true}));
    let again = Command::new(bin).args(["iso", "add", "--json", "--dir"]).arg(&folder).arg(&iso).output().unwrap();
    assert_eq!(err_json(&again)["kind"], "conflict", "a name is never overwritten");
    let not_iso = s.path("notes.iso");
    std::fs::write(&not_iso, vec![1u8; 100_000]).unwrap();
    let out = Command::new(bin).args(["iso", "add", "--json", "--dir"]).arg(&folder).arg(&not_iso).output().unwrap();
    assert_eq!(err_json(&out)["kind"], "invalid-input");
    let names: Vec<_> = std::fs::read_dir(&folder).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 1, "nothing left by a refused add: {names:?}");

    // A VM using the folder's copy keeps it from removal.
    let user = TestVm::new("iso-user");
    let out = Command::new(bin)
        .env("PHYLLOME_CONNECT", URI)
        .args([
            "create",
            &user.0,
            "--os",
            "linux",
            "--memory",
            "512M",
            "--disk-size",
            "4G",
            "--network",
            "none",
            "--iso",
        ])
        .arg(folder.join("guest.iso"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(bin)
        .env("PHYLLOME_CONNECT", URI)
        .args(["iso", "remove", "guest.iso", "--json", "--dir"])
        .arg(&folder)
        .output()
        .unwrap();
    assert_eq!(err_json(&out)["kind"], "conflict", "{out:?}");
    assert!(folder.join("guest.iso").exists());
    run(Command::new(bin).env("PHYLLOME_CONNECT", URI).args(["delete", &user.0]));
    run(Command::new(bin).env("PHYLLOME_CONNECT", URI).args(["iso", "remove", "guest.iso", "--dir"]).arg(&folder));
    assert!(!folder.join("guest.iso").exists());
    let out = Command::new(bin)
        .env("PHYLLOME_CONNECT", URI)
        .args(["iso", "remove", "../guest.iso", "--json", "--dir"])
        .arg(&folder)
        .output()
        .unwrap();
    assert_eq!(err_json(&out)["kind"], "invalid-input", "no path may leave the folder");
}

#[test]
fn a_fifo_is_refused_at_once_and_a_missing_file_is_not_found_everywhere() {
    let s = Scratch::new("iso-kinds");
    let bin = env!("CARGO_BIN_EXE_phyllome");
    let fifo = s.path("pipe.iso");
    run(Command::new("mkfifo").arg(&fifo));
    let folder = s.path("isos");
    // A FIFO with no writer: opening it for reading would wait forever. Both are refused at once.
    for args in [vec!["iso", "inspect", "--json"], vec!["iso", "add", "--json", "--dir", folder.to_str().unwrap()]] {
        let started = std::time::Instant::now();
        let mut child = Command::new(bin)
            .args(&args)
            .arg(&fifo)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() && started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} on a FIFO still waits after 10 s");
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let e = err_json(&out);
        assert_eq!(e["kind"], "invalid-input", "{e}");
        assert!(e["error"].as_str().unwrap().contains("not a regular file"), "{e}");
    }
    // A missing file: not found (4), from inspect, add and create alike.
    let missing = s.path("none.iso");
    let inspect = Command::new(bin).args(["iso", "inspect", "--json"]).arg(&missing).output().unwrap();
    let add = Command::new(bin).args(["iso", "add", "--json", "--dir"]).arg(&folder).arg(&missing).output().unwrap();
    let vm = TestVm::new("iso-missing");
    let create = Command::new(bin)
        .env("PHYLLOME_CONNECT", URI)
        .args(["create", &vm.0, "--os", "linux", "--network", "none", "--json", "--iso"])
        .arg(&missing)
        .output()
        .unwrap();
    for (what, out) in [("iso inspect", &inspect), ("iso add", &add), ("create --iso", &create)] {
        assert_eq!(out.status.code(), Some(4), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(err_json(out)["kind"], "not-found", "{what}");
        assert!(err_json(out)["error"].as_str().unwrap().contains("does not exist"), "{what}: {:?}", err_json(out));
    }
    assert!(!vm.exists());
    assert!(!folder.exists() || std::fs::read_dir(&folder).unwrap().next().is_none(), "nothing was added");
}
