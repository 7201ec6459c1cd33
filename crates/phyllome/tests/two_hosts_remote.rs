//! Commands aimed at another host (`--connect URI` of a second libvirtd in its own
//! mount namespace, scripts/second-host.sh) act on that host's files only, through
//! its libvirt, and never on this machine's: the disk, the direct-boot copies and
//! the UEFI variable store of a VM made, started, deleted or moved there are that
//! host's, and a VM of the same name here is left alone. What cannot work through
//! libvirt alone is refused before anything is made.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `phyllome --connect URI ARGS`.
fn on(uri: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--connect", uri];
    all.extend_from_slice(args);
    phyllome(&all)
}

/// The create arguments of the test guest, as `&str`s.
fn create_args(name: &str, cmdline: &str, extra: &[&str]) -> Vec<String> {
    create_guest_args(name, cmdline, extra)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// This machine's files of VM `vm`: its disk, boot-file copies and UEFI variable store.
fn here(vm: &str) -> [PathBuf; 3] {
    [
        PathBuf::from(volume_path(vm)),
        PathBuf::from(format!("/var/lib/phyllome/boot/{vm}")),
        PathBuf::from(format!("/var/lib/libvirt/qemu/nvram/{vm}_VARS.qcow2")),
    ]
}

/// The same files of the second host, as this machine sees them (its folders under its base).
fn there(h: &SecondHost, vm: &str) -> [PathBuf; 3] {
    [
        h.base().join(format!("lib/images/phyllome/{vm}.qcow2")),
        h.base().join(format!("boot/{vm}")),
        h.base().join(format!("lib/qemu/nvram/{vm}_VARS.qcow2")),
    ]
}

fn nothing_here(vm: &str) {
    for p in here(vm) {
        assert!(!p.exists(), "{} was made on this machine", p.display());
    }
    assert!(!virsh_ok(&["secret-list"]).contains(&volume_path(vm)), "a key was made on this machine");
    assert!(!virsh(&["dominfo", vm]).status.success(), "a domain was made on this machine");
}

#[test]
fn a_create_aimed_at_another_host_makes_its_disk_boot_files_and_uefi_variables_there() {
    require_libvirt();
    let h = SecondHost::start("rcreate", &[]);
    let vm = TestVm::new("remote-create");
    ok(on(&h.uri, &refs(&create_args(&vm.0, "phyllome.test=write-marker:there", &["--start"]))));
    // It runs there: its encrypted disk opens with that host's key, and the guest writes to it.
    h.wait_serial(&vm.0, "PHYLLOME-WROTE", 240);
    let [disk, boot, nvram] = there(&h, &vm.0);
    let head = std::fs::read(&disk).unwrap();
    assert!(head.windows(6).any(|w| w == b"LUKS\xba\xbe"), "the disk there is not LUKS");
    for f in ["vmlinuz", "initrd.img"] {
        let (copy, orig) = (std::fs::read(boot.join(f)).unwrap(), std::fs::read(Path::new(GUEST).join(f)).unwrap());
        assert!(copy == orig, "{f} there is not the test guest's");
    }
    assert_eq!(image_format(nvram.to_str().unwrap()), "qcow2");
    assert!(h.virsh_ok(&["secret-list"]).contains(&volume_path(&vm.0)), "no key there");
    nothing_here(&vm.0);
    assert!(
        !Path::new("/var/lib/libvirt/images/phyllome").join(format!("{}.qcow2", vm.0)).exists(),
        "the disk was written here"
    );
    // So a VM of that name can be made here too.
    ok(phyllome(&refs(&create_args(&vm.0, "phyllome.test=write-marker:here", &[]))));
    assert!(Path::new(&volume_path(&vm.0)).exists() && vm.exists());
    assert!(h.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0), "the one there is gone");
}

/// What a create made there, by name: a domain, a key, a disk, boot copies, a variable store.
fn left_there(h: &SecondHost, vm: &str) -> Vec<String> {
    let mut left: Vec<String> = there(h, vm).iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
    if h.virsh_ok(&["list", "--all", "--name"]).contains(vm) {
        left.push("domain".into());
    }
    if h.virsh_ok(&["secret-list"]).contains(&volume_path(vm)) {
        left.push("key".into());
    }
    left
}

#[test]
fn a_create_aimed_at_another_host_that_fails_or_is_killed_leaves_nothing_there_or_here() {
    require_libvirt();
    let h = SecondHost::start("rfail", &[]);
    // A failure at each step that makes something: what was made there is removed there, by its key.
    for step in ["volume", "boot-files", "define", "nvram", "finish"] {
        let vm = TestVm::new(&format!("remote-fail-{step}"));
        let mut args = vec!["--connect".to_string(), h.uri.clone()];
        args.extend(create_args(&vm.0, "phyllome.test=poweroff", &[]));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_TEST_FAIL_AT", step)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("injected failure at step {step}")), "{step}: {err}");
        assert_eq!(left_there(&h, &vm.0), Vec::<String>::new(), "there, after a failure at {step}");
        nothing_here(&vm.0);
    }
    // kill -9 once everything is made: the next command through that connection removes it there.
    let vm = TestVm::new("remote-kill9");
    let mut args = vec!["--connect".to_string(), h.uri.clone()];
    args.extend(create_args(&vm.0, "phyllome.test=poweroff", &[]));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_TEST_PAUSE_AT", "finish")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while left_there(&h, &vm.0).len() < 5 {
        assert!(
            std::time::Instant::now() < until,
            "the create never made everything there: {:?}",
            left_there(&h, &vm.0)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // This host's own libvirt leaves another host's record alone.
    ok(phyllome(&["list"]));
    assert_eq!(left_there(&h, &vm.0).len(), 5, "recovered through the wrong connection");
    ok(on(&h.uri, &["list"]));
    assert_eq!(left_there(&h, &vm.0), Vec::<String>::new(), "there, after kill -9 and a list there");
    nothing_here(&vm.0);
}

#[test]
fn a_delete_aimed_at_another_host_removes_its_files_there_and_leaves_this_hosts_vm() {
    require_libvirt();
    let h = SecondHost::start("rdelete", &[]);
    let vm = TestVm::new("remote-delete");
    ok(phyllome(&refs(&create_args(&vm.0, "phyllome.test=write-marker:here", &[]))));
    ok(on(&h.uri, &refs(&create_args(&vm.0, "phyllome.test=write-marker:there", &[]))));
    for p in there(&h, &vm.0) {
        assert!(p.exists(), "{} was not made there", p.display());
    }
    let before: Vec<_> = here(&vm.0).iter().map(|p| p.exists()).collect();
    assert_eq!(before, [true, true, true], "the VM here lacks a file");

    ok(on(&h.uri, &["delete", &vm.0]));
    for p in there(&h, &vm.0) {
        assert!(!p.exists(), "{} stays there", p.display());
    }
    assert!(!h.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0), "the domain stays there");
    assert!(!h.virsh_ok(&["secret-list"]).contains(&volume_path(&vm.0)), "the key stays there");
    // This host's VM of that name is whole, and boots.
    for p in here(&vm.0) {
        assert!(p.exists(), "{} of this host's VM was removed", p.display());
    }
    assert!(Path::new(&format!("/var/lib/phyllome/boot/{}/vmlinuz", vm.0)).exists());
    ok(phyllome(&["start", &vm.0]));
    wait_for_serial(&vm.0, "PHYLLOME-WROTE", 240);
}

#[test]
fn a_start_aimed_at_another_host_makes_the_uefi_variable_store_there() {
    require_libvirt();
    let h = SecondHost::start("rstart", &[]);
    let vm = TestVm::new("remote-start");
    ok(on(&h.uri, &refs(&create_args(&vm.0, "phyllome.test=write-marker:there", &[]))));
    let [_, _, nvram] = there(&h, &vm.0);
    // Made there by the create, private and owned like libvirt's own stores (the folder's owner).
    let (m, folder) = (std::fs::metadata(&nvram).unwrap(), std::fs::metadata(nvram.parent().unwrap()).unwrap());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!((m.uid(), m.gid()), (folder.uid(), folder.gid()), "not owned like the NVRAM folder");
    // Lost since: the start makes it again, there.
    std::fs::remove_file(&nvram).unwrap();
    ok(on(&h.uri, &["start", &vm.0]));
    h.wait_serial(&vm.0, "PHYLLOME-WROTE", 240);
    assert_eq!(image_format(nvram.to_str().unwrap()), "qcow2");
    nothing_here(&vm.0);
}

#[test]
fn a_move_from_another_host_reads_the_vms_files_there() {
    require_libvirt();
    let from = SecondHost::start("rfrom", &[]);
    let to = SecondHost::start("rto", &[]);
    let vm = TestVm::new("remote-move");
    ok(on(&from.uri, &refs(&create_args(&vm.0, "phyllome.test=write-marker:moved", &[]))));
    let out = ok(on(&from.uri, &["migrate", &vm.0, "--to", &to.uri, "--offline", "--copy-storage", "--json"]));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["mode"], "offline", "{m}");
    // It is on the destination with its boot files and variable store, and gone from the source.
    for p in there(&to, &vm.0) {
        assert!(p.exists(), "{} is not on the destination", p.display());
    }
    for p in there(&from, &vm.0) {
        assert!(!p.exists(), "{} stays on the source", p.display());
    }
    assert!(!from.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0));
    nothing_here(&vm.0);
    to.virsh_ok(&["start", &vm.0]);
    to.wait_serial(&vm.0, "PHYLLOME-WROTE", 240);
}

#[test]
fn what_needs_this_hosts_files_is_refused_for_another_host_before_anything_is_made() {
    require_libvirt();
    let h = SecondHost::start("rrefuse", &[]);
    let vm = TestVm::new("remote-refuse");
    ok(on(&h.uri, &refs(&create_args(&vm.0, "phyllome.test=write-marker:x", &[]))));
    let uuid = h.virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    let listing = |h: &SecondHost| {
        (h.virsh_ok(&["list", "--all", "--name"]), h.virsh_ok(&["secret-list"]), h.virsh_ok(&["vol-list", "phyllome"]))
    };
    let before = listing(&h);
    let clone = format!("{}-c", vm.0);
    let share = std::env::temp_dir().join(format!("{PREFIX}share-{}", std::process::id()));
    std::fs::create_dir_all(&share).unwrap();
    let iso_vm = format!("{}-iso", vm.0);
    let iso = format!("{GUEST}/vmlinuz");
    let bundle = std::env::temp_dir().join(format!("{PREFIX}bundle-{}.phyllome", std::process::id()));
    for (args, says) in [
        (vec!["snapshot", "create", &vm.0, "s1"], "snapshots"),
        (vec!["snapshot", "list", &vm.0], "snapshots"),
        (vec!["clone", &vm.0, &clone], "clone"),
        (vec!["export", &vm.0, "-o", bundle.to_str().unwrap(), "--passphrase-stdin"], "export"),
        (vec!["share", "add", &vm.0, share.to_str().unwrap()], "sharing a folder"),
        (vec!["create", &iso_vm, "--os", "linux", "--iso", &iso, "--network", "none"], "install ISO"),
        (vec!["iso", "list"], "ISO folder"),
        (vec!["check"], "phyllome check"),
    ] {
        let mut all = vec!["--connect", h.uri.as_str()];
        all.extend_from_slice(&args);
        all.push("--json");
        let (code, kind, msg) = refused(phyllome_stdin(&all, "a passphrase for the bundle\n"));
        assert_eq!((code, kind.as_str()), (6, "unsupported"), "{args:?}: {msg}");
        assert!(msg.contains(says) && msg.contains("run phyllome on that host"), "{args:?}: {msg}");
    }
    // Nothing was made there or here.
    assert_eq!(listing(&h), before, "something was made there");
    assert!(!Path::new(&format!("/var/lib/phyllome/snapshots/{uuid}")).exists(), "a snapshot folder here");
    assert!(!bundle.exists(), "a bundle was written");
    for name in [&vm.0, &clone, &iso_vm] {
        nothing_here(name);
    }
    let _ = std::fs::remove_dir_all(&share);
}
