//! `phyllome migrate` between two libvirt hosts on this one machine: the main
//! libvirtd and a second one in its own mount namespace (scripts/second-host.sh),
//! with the test guest under TCG (LUKS disk, qcow2 NVRAM, swtpm TPM):
//! - live with --copy-storage: the guest's serial counter goes on there with no
//!   reboot; its disk marker, EFI variable and TPM NV index are there at the
//!   next boot; the source holds nothing of it afterwards;
//! - offline: a stopped VM moves and boots there;
//! - the check refuses a destination without swtpm, and a wrong URI is a clear error.

mod common;
use common::*;
use std::path::Path;

fn last_count(log: &str) -> u64 {
    log.lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("PHYLLOME-COUNT: "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Nothing of the VM is left on this host: domain, disk, key, NVRAM, TPM state.
fn gone_from_source(vm: &TestVm, uuid: &str) {
    assert!(!vm.exists(), "the domain is still here");
    assert!(!Path::new(&volume_path(&vm.0)).exists(), "the disk is still here");
    assert!(!virsh_ok(&["secret-list"]).contains(&volume_path(&vm.0)), "the key is still here");
    assert!(
        !Path::new(&format!("/var/lib/libvirt/qemu/nvram/{}_VARS.qcow2", vm.0)).exists(),
        "the NVRAM is still here"
    );
    assert!(!Path::new(&format!("/var/lib/libvirt/swtpm/{uuid}")).exists(), "the TPM state is still here");
}

#[test]
fn a_running_vm_moves_live_with_its_disk_tpm_and_uefi_variables() {
    require_libvirt();
    let host = SecondHost::start("live", &[]);
    let vm = TestVm::new("mig-live");
    // First boot: marker, EFI variable and TPM NV index written; then the counter, running.
    let args = create_guest_args(&vm.0, "phyllome.test=state:one", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-STATE-WRITTEN", 240);
    wait_state(&vm.0, "shut off", 120);
    let uuid = virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    redefine_cmdline(&vm.0, "phyllome.test=counter");
    ok(phyllome(&["start", &vm.0]));
    wait_for_serial(&vm.0, "PHYLLOME-COUNT: 3", 240);

    let dry = ok(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--copy-storage", "--dry-run", "--json"]));
    let c: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(vm.state(), "running", "a dry run changes nothing");
    assert!(!host.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0));

    let out = ok(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--live", "--copy-storage", "--json"]));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["mode"], "live");
    assert!(m["stats"]["data_processed"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["stats"]["downtime_ms"].as_u64().is_some(), "{m}");
    let before = last_count(&serial_log(&vm.0));
    assert!(before >= 3);
    // It keeps counting there, with no reboot (the destination's log has no kernel boot).
    assert_eq!(host.state(&vm.0), "running");
    let log = host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", before + 3), 120);
    assert!(!log.contains("Linux version"), "the guest rebooted there:\n{log}");
    gone_from_source(&vm, &uuid);
    // The disk there is LUKS-encrypted under the destination's own new key.
    let there = host.base().join(format!("lib/images/phyllome/{}.qcow2", vm.0));
    let head = std::fs::read(&there).unwrap();
    assert!(head.windows(6).any(|w| w == b"LUKS\xba\xbe"), "the disk there is not LUKS");

    // At its next boot there, it finds its marker, EFI variable and TPM NV index.
    host.virsh_ok(&["destroy", &vm.0]);
    host.boot_with(&vm.0, "state:two");
    let log = host.wait_serial(&vm.0, "PHYLLOME-STATE-WRITTEN", 240);
    let line = log.lines().find(|l| l.contains("PHYLLOME-STATE:")).unwrap_or_default().to_string();
    assert!(line.contains("marker=one efivar=one tpm=present"), "there: {log}");
}

#[test]
fn a_stopped_vm_moves_offline_and_boots_there() {
    require_libvirt();
    let host = SecondHost::start("off", &[]);
    let vm = TestVm::new("mig-off");
    let args = create_guest_args(&vm.0, "phyllome.test=write-marker:offline", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-WROTE", 240);
    wait_state(&vm.0, "shut off", 120);
    let uuid = virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    let out = ok(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--copy-storage", "--json"]));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["mode"], "offline");
    assert_eq!(host.state(&vm.0), "shut off", "it stays off there, as it was");
    gone_from_source(&vm, &uuid);
    host.boot_with(&vm.0, "read-marker");
    let log = host.wait_serial(&vm.0, "PHYLLOME-MARKER", 240);
    assert!(log.contains("PHYLLOME-MARKER:offline"), "{log}");
}

#[test]
fn the_check_refuses_a_destination_without_swtpm_and_a_bad_uri_is_clear() {
    require_libvirt();
    let host = SecondHost::start("noswtpm", &["--no-swtpm"]);
    let vm = TestVm::new("mig-refused");
    let args = create_guest_args(&vm.0, "phyllome.test=write-marker:x", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let out = phyllome(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--copy-storage", "--dry-run", "--json"]);
    let c: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(c["ok"], false, "{c}");
    let tpm = c["items"].as_array().unwrap().iter().find(|i| i["what"] == "tpm").cloned().unwrap_or_default();
    assert_eq!(tpm["ok"], false, "{c}");
    assert!(tpm["detail"].as_str().unwrap().contains("apt install swtpm"), "{tpm}");
    let (code, kind, msg) =
        refused(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--copy-storage", "--json"]));
    assert_eq!((code, kind.as_str()), (6, "unsupported"), "{msg}");
    assert!(msg.contains("no swtpm there"), "{msg}");
    // Nothing was made there, and the VM is here as it was.
    assert!(!host.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0));
    assert!(!host.virsh_ok(&["secret-list"]).contains(&vm.0));
    assert_eq!(vm.state(), "shut off");
    // Without --copy-storage the check says why.
    let out = phyllome(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--dry-run", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("give --copy-storage"));
    // A URI that answers nothing.
    let (code, kind, msg) = refused(phyllome(&[
        "migrate",
        &vm.0,
        "--to",
        "qemu+unix:///system?socket=/nonexistent/phyllome-test-sock",
        "--copy-storage",
        "--json",
    ]));
    assert_eq!((code, kind.as_str()), (7, "unavailable"), "{msg}");
    assert!(msg.contains("cannot reach the destination"), "{msg}");
    assert!(vm.exists());
}
