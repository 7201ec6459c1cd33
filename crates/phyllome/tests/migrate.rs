//! `phyllome migrate` between two libvirt hosts on this one machine: the main
//! libvirtd and a second one in its own mount namespace (scripts/second-host.sh),
//! with the test guest under TCG (LUKS disk, qcow2 NVRAM, swtpm TPM):
//! - live with --copy-storage: the guest's serial counter goes on there with no
//!   reboot; its disk marker, EFI variable and TPM NV index are there at the
//!   next boot; the source holds nothing of it afterwards;
//! - offline: a stopped VM moves and boots there;
//! - the check refuses a destination without swtpm, and a wrong URI is a clear error;
//! - killing the destination libvirtd mid-migration leaves the VM running here and nothing
//!   there (removed by the failed migration, or by the next one when that host stayed away).

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
    assert_eq!(m["retuned"], false, "a live move keeps the running definition: {m}");
    assert!(m["stats"]["data_processed"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["stats"]["downtime_ms"].as_u64().is_some(), "{m}");
    let before = last_count(&serial_log(&vm.0));
    assert!(before >= 3);
    // It keeps counting there, with no reboot (the destination's log has no kernel boot).
    assert_eq!(host.state(&vm.0), "running");
    let log = host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", before + 3), 120);
    assert!(!log.contains("Linux version"), "the guest rebooted there:\n{log}");
    gone_from_source(&vm, &uuid);
    // There, what it was tuned to is recorded, and `xml --vm` says what a cold boot would change.
    let nb = ok(phyllome(&["--connect", &host.uri, "xml", "--vm", &vm.0, "--json"]));
    let nb: serde_json::Value = serde_json::from_str(&nb).unwrap();
    assert!(nb["tuned_on"]["libvirt"].as_str().is_some_and(|v| !v.is_empty()), "{nb}");
    assert!(nb["changes"].is_array() && !nb["choices"].as_array().unwrap().is_empty(), "{nb}");
    assert!(nb["xml"].as_str().unwrap().contains(&format!("<uuid>{uuid}</uuid>")), "{nb}");
    let text = ok(phyllome(&["--connect", &host.uri, "xml", "--vm", &vm.0, "--explain"]));
    assert!(text.contains("tuned on:") && text.contains("changes:"), "{text}");
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
    let mac = virsh_ok(&["domiflist", &vm.0]);
    // A hand-made touch Phyllome's model never writes: gone once the definition is rebuilt there.
    virsh_ok(&["desc", &vm.0, "--config", "phyllome-test-handmade"]);
    assert!(virsh_ok(&["dumpxml", "--inactive", &vm.0]).contains("phyllome-test-handmade"));
    // Never moved: nothing recorded; `xml --vm` shows what this host chooses.
    let nb: serde_json::Value = serde_json::from_str(&ok(phyllome(&["xml", "--vm", &vm.0, "--json"]))).unwrap();
    assert!(nb["tuned_on"].is_null() && nb["changes"].as_array().unwrap().is_empty(), "{nb}");
    let (code, kind, msg) = refused(phyllome(&["xml", "--vm", "phyllome-test-nosuch", "--json"]));
    assert_eq!((code, kind.as_str()), (4, "not-found"), "{msg}");
    let out = ok(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--copy-storage", "--json"]));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["mode"], "offline");
    assert_eq!(m["retuned"], true, "{m}");
    assert!(m["changes"].is_array(), "{m}");
    assert_eq!(host.state(&vm.0), "shut off", "it stays off there, as it was");
    let there = host.virsh_ok(&["dumpxml", "--inactive", &vm.0]);
    assert!(!there.contains("phyllome-test-handmade"), "not rebuilt from the manifest there:\n{there}");
    assert!(there.contains(&format!("<uuid>{uuid}</uuid>")), "the UUID changed:\n{there}");
    assert_eq!(host.virsh_ok(&["domiflist", &vm.0]), mac, "the MAC addresses changed");
    let nb = ok(phyllome(&["--connect", &host.uri, "xml", "--vm", &vm.0, "--json"]));
    let nb: serde_json::Value = serde_json::from_str(&nb).unwrap();
    assert!(nb["tuned_on"].is_object(), "re-tuned there, and recorded: {nb}");
    assert_eq!(nb["changes"], serde_json::json!([]), "just re-tuned there: nothing changes at a cold boot");
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

/// `phyllome migrate` started in the background, with its pending-migration records in `records`.
fn migrate_child(vm: &str, to: &str, records: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .env("PHYLLOME_TEST_PENDING_MIGRATIONS", records)
        .args(["migrate", vm, "--to", to, "--live", "--copy-storage", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the destination runs the incoming side of the migration (its QEMU is
/// started), so the kill lands mid-migration.
fn wait_incoming(host: &SecondHost, vm: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !host.virsh(&["list", "--name"]).stdout.windows(vm.len()).any(|w| w == vm.as_bytes()) {
        assert!(std::time::Instant::now() < until, "the migration never reached the destination");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
}

fn second_host(cmd: &str, host: &SecondHost) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/second-host.sh");
    let out = std::process::Command::new(script).arg(cmd).arg(&host.name).output().unwrap();
    assert!(out.status.success(), "second-host {cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Nothing of `vm` on the destination: no domain, key, disk, UEFI variables or pool.
fn nothing_there(host: &SecondHost, vm: &str) {
    assert!(!host.virsh_ok(&["list", "--all", "--name"]).contains(vm), "a domain is left there");
    assert!(!host.virsh_ok(&["secret-list"]).contains(vm), "a key is left there");
    let images = host.base().join("lib/images/phyllome");
    assert!(!images.join(format!("{vm}.qcow2")).exists(), "the disk is left there");
    assert!(!images.exists(), "the pool's folder is left there");
    assert!(!host.virsh_ok(&["pool-list", "--all", "--name"]).contains("phyllome"), "the pool is left there");
    let nvram = host.base().join(format!("lib/qemu/nvram/{vm}_VARS.qcow2"));
    assert!(!nvram.exists(), "the UEFI variables are left there");
}

#[test]
fn killing_the_destination_libvirtd_mid_migration_leaves_the_vm_running_here_and_nothing_there() {
    require_libvirt();
    let host = SecondHost::start("crash", &[]);
    let vm = TestVm::new("mig-crash");
    let records = std::env::temp_dir().join(format!("{PREFIX}pending-{}", std::process::id()));
    let args = create_guest_args(&vm.0, "phyllome.test=counter", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-COUNT: 3", 240);
    // 1 MiB/s: libvirt gives the same bound to the disk copy and the memory stream, so the
    // move lasts long enough to be cut.
    virsh_ok(&["migrate-setspeed", &vm.0, "1"]);

    // 1. The destination's libvirtd dies and is back within the wait (as systemd restarts it):
    // the failed migration removes all it made there itself.
    let child = migrate_child(&vm.0, &host.uri, &records);
    wait_incoming(&host, &vm.0);
    second_host("crash", &host);
    std::thread::sleep(std::time::Duration::from_secs(2));
    second_host("restart", &host);
    let out = child.wait_with_output().unwrap();
    let (code, kind, msg) = refused(out);
    assert_eq!((code, kind.as_str()), (1, "failed"), "{msg}");
    assert!(msg.contains("it stays on this host, and what was made on the destination was removed"), "{msg}");
    assert_eq!(vm.state(), "running", "the VM no longer runs here");
    let at = last_count(&serial_log(&vm.0));
    wait_for_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", at + 2), 60);
    assert!(serial_log(&vm.0).matches("Linux version").nth(1).is_none(), "the guest rebooted here");
    nothing_there(&host, &vm.0);
    assert!(std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0) == 0, "a record stayed");

    // 2. It stays away past the wait: what is left there is recorded, said, and removed by
    // the next migration to that host, which then moves the VM.
    let child = migrate_child(&vm.0, &host.uri, &records);
    wait_incoming(&host, &vm.0);
    second_host("crash", &host);
    let out = child.wait_with_output().unwrap();
    let (code, _, msg) = refused(out);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("the next phyllome migrate to it removes them"), "{msg}");
    assert!(msg.contains(&format!("volume phyllome/{}.qcow2", vm.0)), "{msg}");
    assert_eq!(vm.state(), "running");
    let recorded: Vec<_> = std::fs::read_dir(&records).unwrap().flatten().collect();
    assert_eq!(recorded.len(), 1, "one record of what is left there");
    second_host("restart", &host);
    assert!(host.base().join(format!("lib/images/phyllome/{}.qcow2", vm.0)).exists(), "the leftover disk");
    // The dry run's check knows the leftover disk is removed first.
    let dry = phyllome_stdin_env(
        &["migrate", &vm.0, "--to", &host.uri, "--live", "--copy-storage", "--dry-run", "--json"],
        "",
        &[("PHYLLOME_TEST_PENDING_MIGRATIONS", records.to_str().unwrap())],
    );
    let c: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(c["ok"], true, "{c}");
    virsh_ok(&["migrate-setspeed", &vm.0, "100000"]);
    let out = ok(phyllome_stdin_env(
        &["migrate", &vm.0, "--to", &host.uri, "--live", "--copy-storage", "--json"],
        "",
        &[("PHYLLOME_TEST_PENDING_MIGRATIONS", records.to_str().unwrap())],
    ));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(m["notes"].to_string().contains("removed what an interrupted migration"), "{m}");
    assert_eq!(host.state(&vm.0), "running");
    let before = last_count(&serial_log(&vm.0));
    host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", before + 2), 120);
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0, "the record was removed");
    let _ = std::fs::remove_dir_all(&records);
}

#[test]
fn a_host_read_over_libvirt_only_matches_the_local_reading() {
    require_libvirt();
    let host = SecondHost::start("facts", &[]);
    let here: serde_json::Value = serde_json::from_str(&ok(phyllome(&["host", "facts", "--json"]))).unwrap();
    let out = ok(phyllome(&["--connect", &host.uri, "host", "facts", "--via-libvirt", "--json"]));
    let there: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The same machine, read through its files and through the second libvirtd alone.
    for key in ["firmware", "cpus", "swtpm", "kvm", "cpu_vendor"] {
        assert_eq!(there["facts"][key], here["facts"][key], "{key}");
    }
    // libvirt's node memory (what its own placement uses) may be below /proc/meminfo's total.
    let (m_there, m_here) =
        (there["facts"]["memory_mib"].as_u64().unwrap(), here["facts"]["memory_mib"].as_u64().unwrap());
    assert!(m_there > 0 && m_there <= m_here, "memory: {m_there} MiB over libvirt, {m_here} MiB here");
    assert!(!there["facts"]["firmware"].as_array().unwrap().is_empty(), "no firmware descriptor read over libvirt");
    for key in ["libvirt", "qemu", "external_snapshot"] {
        assert_eq!(there["facts"]["platform"][key], here["facts"]["platform"][key], "{key}");
    }
    assert_eq!(there["domcaps"], here["domcaps"]);
    // The capability record decides alike, but for the virtiofs daemon: a program on that host,
    // which libvirt neither names nor runs for a reader (taken as absent, and said).
    let by_feature = |v: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["feature"].as_str().unwrap().to_string(), f["supported"].clone()))
            .collect()
    };
    for ((name, t), (_, h)) in by_feature(&there).into_iter().zip(by_feature(&here)) {
        if name.contains("virtiofs") {
            assert_eq!(t, false, "{name} over libvirt");
        } else {
            assert_eq!(t, h, "{name}");
        }
    }
    // The transient pools it read through are gone.
    assert!(!host.virsh_ok(&["pool-list", "--all", "--name"]).contains("phyllome-read"));
}
