//! `phyllome clone` and `phyllome autostart` in the real libvirtd: the clone
//! boots and reads the original's marker, its disk is encrypted under another
//! key (the same plaintext sector is other ciphertext), it has its own UUID, a
//! fresh TPM unless --keep-tpm, and outlives the original.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// The 512 bytes a qcow2 image stores for guest sector 0 (header → L1 → L2 → data cluster).
fn stored_sector0(path: &str) -> Vec<u8> {
    let f = std::fs::read(path).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
    let mask = 0x00ff_ffff_ffff_fe00u64;
    let l2 = (be64(be64(40) as usize) & mask) as usize;
    let data = (be64(l2) & mask) as usize;
    assert!(l2 != 0 && data != 0, "{path}: guest sector 0 is not allocated");
    f[data..data + 512].to_vec()
}

fn boot_read_marker(name: &str) -> String {
    redefine_cmdline(name, "phyllome.test=read-marker");
    ok(phyllome(&["start", name]));
    let log = wait_for_serial(name, "PHYLLOME-MARKER", 240);
    wait_state(name, "shut off", 120);
    log
}

#[test]
fn a_clone_boots_the_originals_data_under_its_own_key_and_outlives_it() {
    require_libvirt();
    let src = TestVm::new("clone-src");
    let dst = TestVm::new("clone-dst");
    let kept = TestVm::new("clone-tpm");
    let args = create_guest_args(&src.0, "phyllome.test=state:cloned", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&src.0, "PHYLLOME-STATE-WRITTEN", 240);
    wait_state(&src.0, "shut off", 120);
    let src_uuid = virsh_ok(&["domuuid", &src.0]).trim().to_string();

    ok(phyllome(&["autostart", &src.0, "on"]));
    let c = json(phyllome(&["clone", &src.0, &dst.0, "--json"]));
    assert_eq!((c["from"].as_str(), c["kept_tpm"].as_bool()), (Some(src.0.as_str()), Some(false)));
    assert_ne!(c["uuid"].as_str().unwrap(), src_uuid);
    assert_eq!(src.state(), "shut off", "the source was left running");
    // Autostart is the source's own: the clone does not start with the host unless asked.
    let list = json(phyllome(&["list", "--json"]));
    let row = |n: &str| list.as_array().unwrap().iter().find(|r| r["name"] == n).cloned().unwrap();
    assert_eq!((row(&src.0)["autostart"].as_bool(), row(&dst.0)["autostart"].as_bool()), (Some(true), Some(false)));
    assert!(virsh_ok(&["dominfo", &src.0]).contains("Autostart:      enable"));
    ok(phyllome(&["autostart", &src.0, "off"]));
    assert!(virsh_ok(&["dominfo", &src.0]).contains("Autostart:      disable"));

    // Same plaintext, other ciphertext: the two disks do not share a key.
    let (a, b) = (stored_sector0(&volume_path(&src.0)), stored_sector0(&volume_path(&dst.0)));
    assert!(a.iter().any(|x| *x != 0) && b.iter().any(|x| *x != 0));
    assert_ne!(a, b, "the clone's disk holds the same ciphertext: the same key");
    assert!(!String::from_utf8_lossy(&std::fs::read(volume_path(&dst.0)).unwrap()).contains("PHYLLOME-MARKER"));
    // The NVRAM (the guest's EFI variable) came along, the TPM did not.
    let dst_uuid = c["uuid"].as_str().unwrap();
    assert!(!Path::new(&format!("/var/lib/libvirt/swtpm/{dst_uuid}/tpm2/tpm2-00.permall")).exists());

    redefine_cmdline(&dst.0, "phyllome.test=state:again");
    ok(phyllome(&["start", &dst.0]));
    let log = wait_for_serial(&dst.0, "PHYLLOME-STATE-WRITTEN", 240);
    wait_state(&dst.0, "shut off", 120);
    assert!(log.contains("marker=cloned efivar=cloned tpm=missing"), "{log}");

    // --keep-tpm copies the TPM state byte for byte.
    let k = json(phyllome(&["clone", &src.0, &kept.0, "--keep-tpm", "--json"]));
    assert_eq!(k["kept_tpm"], true);
    let tpm = |u: &str| std::fs::read(format!("/var/lib/libvirt/swtpm/{u}/tpm2/tpm2-00.permall")).unwrap();
    assert_eq!(tpm(k["uuid"].as_str().unwrap()), tpm(&src_uuid));

    // Refusals: a taken name, an unknown VM, a bad name; nothing made.
    for (args, code) in [
        (vec!["clone", src.0.as_str(), dst.0.as_str()], 5),
        (vec!["clone", "phyllome-test-no-such-vm", "phyllome-test-x"], 4),
        (vec!["clone", src.0.as_str(), "bad/name"], 3),
    ] {
        let out = phyllome(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // Deleting the original leaves the clone whole (its disk has what its own boot wrote).
    ok(phyllome(&["delete", &src.0]));
    let log = boot_read_marker(&dst.0);
    assert!(log.contains("PHYLLOME-MARKER:again"), "{log}");
}

#[test]
fn a_failed_clone_leaves_nothing_and_the_source_off() {
    require_libvirt();
    let src = TestVm::new("clone-fail-src");
    let dst = TestVm::new("clone-fail-dst");
    let args = create_guest_args(&src.0, "", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    // Its manifest: what was asked (memory, disk size), not what the host chose (vCPUs), and no host path.
    let m = ok(phyllome(&["manifest", &src.0]));
    for want in [
        "version = 1",
        "os = \"linux\"",
        "memory = \"512M\"",
        "disk_size = \"4G\"",
        "network = \"none\"",
        "kernel = \"vmlinuz\"",
    ] {
        assert!(m.contains(want), "{want} missing in {m}");
    }
    assert!(!m.contains("cpus") && !m.contains("/var/lib"), "{m}");
    let secrets = || String::from_utf8_lossy(&virsh(&["secret-list"]).stdout).into_owned();
    for step in ["nvram", "define", "finish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_CONNECT", URI)
            .env("PHYLLOME_TEST_FAIL_AT", step)
            .args(["clone", &src.0, &dst.0])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{step}");
        assert!(!dst.exists(), "{step}: the clone's domain is left");
        assert!(!Path::new(&volume_path(&dst.0)).exists(), "{step}: the clone's disk is left");
        assert!(!secrets().contains(&volume_path(&dst.0)), "{step}: the clone's key is left");
        assert!(!Path::new(&format!("/var/lib/libvirt/qemu/nvram/{}_VARS.qcow2", dst.0)).exists(), "{step}");
        assert!(!Path::new(&format!("/var/lib/phyllome/boot/{}", dst.0)).exists(), "{step}: boot files left");
        assert_eq!(src.state(), "shut off", "{step}: the source was left running");
    }
    ok(phyllome(&["clone", &src.0, &dst.0]));
    assert!(dst.exists());
}

/// The exit code and message of a refused command (`--json`: with its kind).
fn refusal(args: &[&str]) -> (i32, String, String) {
    refused(phyllome_stdin(args, "export passphrase\n"))
}

#[test]
fn a_clone_holds_its_source_and_other_operations_on_it_are_refused_as_busy() {
    require_libvirt();
    let src = TestVm::new("clone-busy-src");
    let dst = TestVm::new("clone-busy-dst");
    let args = create_guest_args(&src.0, "", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let uuid = virsh_ok(&["domuuid", &src.0]).trim().to_string();
    let lock = format!("/var/lib/phyllome/operations/{uuid}.json");
    // Held after its disk copy (the source was started paused and is off again) for 20 s.
    let child = Background::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_CONNECT", URI)
            .env("PHYLLOME_TEST_PAUSE_AT", "boot-files")
            .env("PHYLLOME_TEST_PAUSE_SECS", "20")
            .args(["clone", &src.0, &dst.0])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !Path::new(&volume_path(&dst.0)).exists() || src.state() != "shut off" {
        assert!(std::time::Instant::now() < deadline, "the clone never copied the disk");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(std::fs::read_to_string(&lock).unwrap().contains("\"op\":\"clone\""), "the clone holds no lock");
    let export = std::env::temp_dir().join(format!("{}.phyllome", src.0));
    let export = export.to_str().unwrap();
    let snap = format!("{}-snap", src.0);
    for args in [
        vec!["snapshot", "create", src.0.as_str(), snap.as_str(), "--json"],
        vec!["export", src.0.as_str(), "-o", export, "--passphrase-stdin", "--json"],
        vec!["start", src.0.as_str()],
        vec!["delete", src.0.as_str()],
    ] {
        let (code, kind, msg) = refusal(&args);
        assert_eq!(code, 5, "{args:?}: {msg}");
        assert!(kind == "conflict" || !args.contains(&"--json"), "{args:?}: {kind}");
        let want = format!("busy: {} is being cloned by phyllome pid {}", src.0, child.id());
        assert!(msg.contains(&want), "{args:?}: {msg}");
    }
    assert!(!Path::new(export).exists(), "the refused export wrote a file");
    assert_eq!(src.state(), "shut off");
    let out = child.wait_with_output();
    assert!(out.status.success(), "the clone failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dst.exists());
    assert!(!Path::new(&lock).exists(), "the clone's lock outlived it");
    // Free again.
    ok(phyllome(&["snapshot", "create", &src.0, &snap]));
}

#[test]
fn a_clone_killed_while_copying_leaves_nothing_and_the_same_clone_then_succeeds() {
    require_libvirt();
    let src = TestVm::new("clone-kill-src");
    let dst = TestVm::new("clone-kill-dst");
    let args = create_guest_args(&src.0, "", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let mut child = Background::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_CONNECT", URI)
            .args(["clone", &src.0, &dst.0])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Killed while QEMU copies into the new volume, once libvirt's pool lists it (another command refreshed it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !(src.state() == "paused" && Path::new(&volume_path(&dst.0)).exists()) {
        assert!(std::time::Instant::now() < deadline, "the clone never started its copy");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    virsh_ok(&["pool-refresh", "phyllome"]);
    child.kill();
    // The next command (this same clone) undoes the dead one and succeeds.
    let c = json(phyllome(&["clone", &src.0, &dst.0, "--json"]));
    assert_eq!(c["name"], dst.0.as_str());
    assert_eq!(src.state(), "shut off", "the source was left paused");
    ok(phyllome(&["delete", &dst.0]));
    let vols = virsh_ok(&["vol-list", "phyllome"]);
    assert!(!vols.contains(&format!("{}.qcow2", dst.0)), "libvirt still lists the deleted clone's volume: {vols}");
}
