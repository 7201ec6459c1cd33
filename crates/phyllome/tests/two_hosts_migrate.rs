//! `phyllome migrate` between two libvirt hosts on this one machine: the main
//! libvirtd and a second one in its own mount namespace (scripts/second-host.sh),
//! with the test guest under TCG (LUKS disk, qcow2 NVRAM, swtpm TPM):
//! - live with --copy-storage: the guest's serial counter goes on there with no
//!   reboot; its disk marker, EFI variable and TPM NV index are there at the
//!   next boot; the source holds nothing of it afterwards;
//! - offline: a stopped VM moves and boots there;
//! - the check refuses a destination without swtpm, and a wrong URI is a clear error;
//! - killing the destination libvirtd mid-migration leaves the VM running here and nothing
//!   there (removed by the failed migration, or by `phyllome host clean` once that host is back);
//! - killing phyllome itself (kill -9) during the copy or after libvirt completed the move
//!   never leaves the VM able to run on both hosts: `start` refuses it while the move is not
//!   settled, and the next command finishes the move (or undoes it);
//! - a running VM with shared folders is refused a live move (virtiofs hands over open files,
//!   not the files) and moves offline;
//! - the disk copy's bytes are reported, and no migration socket or empty folder is left.

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

/// `phyllome ARGS` with its pending-migration records in `records`.
fn ph(args: &[&str], records: &Path) -> std::process::Output {
    phyllome_stdin_env(args, "", &[("PHYLLOME_TEST_PENDING_MIGRATIONS", records.to_str().unwrap())])
}

/// `phyllome ARGS` run to its end, and its process id (which names its migration sockets).
fn ph_pid(args: &[&str], records: &Path) -> (std::process::Output, u32) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .env("PHYLLOME_TEST_PENDING_MIGRATIONS", records)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

/// No unix socket of the migration streams of process `pid` is left in /tmp.
fn no_sockets_of(pid: u32) {
    for s in [format!("/tmp/phyllome-migrate-{pid}.sock"), format!("/tmp/phyllome-migrate-{pid}-nbd.sock")] {
        assert!(!Path::new(&s).exists(), "{s} is left behind");
    }
}

/// A private folder for a test's pending-migration records, removed on drop.
struct Records(std::path::PathBuf);

impl Records {
    fn new(tag: &str) -> Records {
        let d = std::env::temp_dir().join(format!("{PREFIX}pending-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Records(d)
    }
    fn count(&self) -> usize {
        std::fs::read_dir(&self.0).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The item `what` of a migration check.
fn item(c: &serde_json::Value, what: &str) -> serde_json::Value {
    c["items"].as_array().unwrap().iter().find(|i| i["what"] == what).cloned().unwrap_or_default()
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
    // The destination's memory is counted as what it can give (a second host is reached through its
    // libvirt only: before libvirt 12.3 that is its free memory plus buffers and page cache), and said so.
    let memory = item(&c, "memory")["detail"].as_str().unwrap_or_default().to_string();
    assert!(memory.contains("MiB available there (") && memory.ends_with(" for 512 MiB"), "{c}");
    assert!(memory.contains("MemAvailable") || memory.contains("plus buffers and page cache"), "{c}");
    assert_eq!(vm.state(), "running", "a dry run changes nothing");
    assert!(!host.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0));

    let records = Records::new("live");
    let (out, pid) = ph_pid(&["migrate", &vm.0, "--to", &host.uri, "--live", "--copy-storage", "--json"], &records.0);
    let m: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(m["mode"], "live");
    assert_eq!(m["retuned"], false, "a live move keeps the running definition: {m}");
    assert!(m["stats"]["data_processed"].as_u64().unwrap_or(0) > 0, "{m}");
    assert!(m["stats"]["downtime_ms"].as_u64().is_some(), "{m}");
    // The disk copy (NBD) is most of the move: its bytes are there, the disk's 4 GiB at least.
    let (disk_total, disk_done) =
        (m["stats"]["disk_total"].as_u64().unwrap_or(0), m["stats"]["disk_processed"].as_u64().unwrap_or(0));
    assert!(disk_total >= 4 << 30 && disk_done >= disk_total, "{m}");
    no_sockets_of(pid);
    assert_eq!(records.count(), 0, "the record stayed after the move");
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
    // That host's /var/lib/phyllome/boot: the folder the kernel and initrd went into is gone too.
    assert!(!host.base().join(format!("boot/{vm}")).exists(), "the boot folder is left there");
}

#[test]
fn killing_the_destination_libvirtd_mid_migration_leaves_the_vm_running_here_and_nothing_there() {
    require_libvirt();
    let host = SecondHost::start("crash", &[]);
    let vm = TestVm::new("mig-crash");
    let guard = Records::new("crash");
    let records = guard.0.clone();
    let args = create_guest_args(&vm.0, "phyllome.test=counter", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-COUNT: 3", 240);
    // 1 MiB/s: libvirt gives the same bound to the disk copy and the memory stream, so the
    // move lasts long enough to be cut.
    virsh_ok(&["migrate-setspeed", &vm.0, "1"]);

    // 1. The destination's libvirtd dies and is back within the wait (as systemd restarts it):
    // the failed migration removes all it made there itself, its boot folder and sockets too.
    let child = migrate_child(&vm.0, &host.uri, &records);
    let pid = child.id();
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
    no_sockets_of(pid);
    assert!(std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0) == 0, "a record stayed");

    // 2. It stays away past the wait: what is left there is recorded, said, listed by `check`,
    // and removed by `phyllome host clean` once that host is back; then the VM moves.
    let child = migrate_child(&vm.0, &host.uri, &records);
    let pid = child.id();
    wait_incoming(&host, &vm.0);
    second_host("crash", &host);
    let out = child.wait_with_output().unwrap();
    let (code, _, msg) = refused(out);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("the next phyllome command removes them once"), "{msg}");
    assert!(msg.contains(&format!("phyllome host clean {}", host.uri)), "{msg}");
    assert!(msg.contains(&format!("volume phyllome/{}.qcow2", vm.0)), "{msg}");
    assert_eq!(vm.state(), "running");
    no_sockets_of(pid);
    let recorded: Vec<_> = std::fs::read_dir(&records).unwrap().flatten().collect();
    assert_eq!(recorded.len(), 1, "one record of what is left there");
    let check: serde_json::Value =
        serde_json::from_slice(&ph(&["check", "--json"], &records).stdout).expect("check --json");
    let mig = check["checks"].as_array().unwrap().iter().find(|c| c["id"] == "migrations").cloned().unwrap();
    assert_eq!(mig["status"], "warn", "{mig}");
    assert!(mig["summary"].as_str().unwrap().contains(&vm.0), "{mig}");
    assert!(mig["fix"].as_str().unwrap().contains("phyllome host clean"), "{mig}");
    let (code, kind, msg) = refused(ph(&["host", "clean", &host.uri, "--json"], &records));
    assert_eq!((code, kind.as_str()), (7, "unavailable"), "{msg}");
    second_host("restart", &host);
    let leftover = host.base().join(format!("lib/images/phyllome/{}.qcow2", vm.0));
    assert!(leftover.exists(), "the leftover disk");
    // The dry run's check knows the leftover disk is removed first.
    let dry = ph(&["migrate", &vm.0, "--to", &host.uri, "--live", "--copy-storage", "--dry-run", "--json"], &records);
    let c: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(item(&c, "earlier move")["ok"], true, "{c}");
    // `host clean --dry-run` says what it would remove, and removes nothing.
    let out = ok(ph(&["host", "clean", &host.uri, "--dry-run", "--json"], &records));
    let cl: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mv = &cl["moves"][0];
    assert_eq!((mv["vm"].as_str(), mv["outcome"].as_str()), (Some(vm.0.as_str()), Some("undone")), "{cl}");
    assert!(mv["removed"].to_string().contains(&format!("volume phyllome/{}.qcow2", vm.0)), "{cl}");
    assert!(leftover.exists() && recorded_count(&records) == 1, "a dry run removed something");
    // `host clean` removes it, by identity, and the record with it.
    let out = ok(ph(&["host", "clean", &host.uri, "--json"], &records));
    let cl: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cl["moves"][0]["outcome"], "undone", "{cl}");
    assert_eq!(cl["moves"][0]["left"], serde_json::json!([]), "{cl}");
    nothing_there(&host, &vm.0);
    assert_eq!(recorded_count(&records), 0, "the record was removed");
    assert_eq!(vm.state(), "running");
    virsh_ok(&["migrate-setspeed", &vm.0, "100000"]);
    let out = ok(ph(&["migrate", &vm.0, "--to", &host.uri, "--live", "--copy-storage", "--json"], &records));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["mode"], "live", "{m}");
    assert_eq!(host.state(&vm.0), "running");
    let before = last_count(&serial_log(&vm.0));
    host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", before + 2), 120);
    assert_eq!(recorded_count(&records), 0, "the record was removed");
}

fn recorded_count(records: &Path) -> usize {
    std::fs::read_dir(records).map(|d| d.count()).unwrap_or(0)
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

/// `phyllome migrate` (live) started in the background with `env` too.
fn migrate_child_env(vm: &str, to: &str, records: &Path, env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .env("PHYLLOME_TEST_PENDING_MIGRATIONS", records)
        .envs(env.iter().copied())
        .args(["migrate", vm, "--to", to, "--live", "--copy-storage", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The row of `vm` in `phyllome list --json` (through `records`), if it is listed.
fn listed(vm: &str, records: &Path) -> Option<serde_json::Value> {
    let rows: serde_json::Value = serde_json::from_str(&ok(ph(&["list", "--json"], records))).unwrap();
    rows.as_array().unwrap().iter().find(|r| r["name"] == vm).cloned()
}

/// It runs on exactly one of the two hosts (the other may hold it paused for an incoming
/// migration, or shut off).
fn runs_on_one_side(vm: &TestVm, host: &SecondHost) {
    let (here, there) = (vm.state(), host.state(&vm.0));
    assert!(
        (here == "running") != (there == "running"),
        "here {here:?}, there {there:?}: it must run on exactly one host"
    );
}

#[test]
fn killing_phyllome_after_libvirt_moved_the_vm_never_lets_it_start_here_and_the_next_command_finishes_the_move() {
    require_libvirt();
    let host = SecondHost::start("kill-done", &[]);
    let vm = TestVm::new("mig-kill-done");
    let records = Records::new("kill-done");
    let args = create_guest_args(&vm.0, "phyllome.test=counter", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-COUNT: 3", 240);
    ok(phyllome(&["autostart", &vm.0, "on"]));
    let uuid = virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    // Held just after libvirt completed the move, and killed there.
    let mut child = migrate_child_env(
        &vm.0,
        &host.uri,
        &records.0,
        &[("PHYLLOME_TEST_PAUSE_AT", "migrated"), ("PHYLLOME_TEST_PAUSE_SECS", "300")],
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !(host.state(&vm.0) == "running" && vm.state() == "shut off") {
        assert!(std::time::Instant::now() < until, "the move never completed");
        assert!(child.try_wait().unwrap().is_none(), "phyllome migrate ended before its pause");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    runs_on_one_side(&vm, &host);
    assert!(!virsh_ok(&["dominfo", &vm.0]).contains("Autostart:      enable"), "autostart stayed on while it moved");
    let at = last_count(&host.serial(&vm.0));
    host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", at + 2), 60);
    // The check (a dry run settles nothing) sees it there, and never offers to remove its disk.
    let dry =
        ph(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--copy-storage", "--dry-run", "--json"], &records.0);
    let c: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(c["ok"], false, "{c}");
    assert!(!c.to_string().contains("removed before the move"), "it offers to remove the running VM's disk: {c}");
    let volume = item(&c, "volume");
    assert_eq!(volume["ok"], false, "{c}");
    assert!(volume["detail"].as_str().unwrap().contains(&format!("is the disk of VM {} there", vm.0)), "{c}");
    let earlier = item(&c, "earlier move");
    assert!(earlier["detail"].as_str().unwrap().contains("had reached"), "{c}");
    // While that host does not answer: listed with a warning, and `start` refuses, saying why and how.
    second_host("crash", &host);
    let row = listed(&vm.0, &records.0).expect("still listed here");
    assert_eq!((row["state"].as_str(), row["state_reason"].as_str()), (Some("shut off"), Some("unfinished migration")));
    let (code, kind, msg) = refused(ph(&["start", &vm.0], &records.0));
    assert_eq!(code, 5, "{msg}");
    assert!(kind.is_empty() || kind == "conflict", "{kind}");
    assert!(msg.contains("may run there") && msg.contains("phyllome host clean"), "{msg}");
    let (code, _, msg) = refused(ph(&["autostart", &vm.0, "on"], &records.0));
    assert_eq!(code, 5, "autostart is a start too: {msg}");
    assert_eq!(vm.state(), "shut off");
    assert_eq!(records.count(), 1);
    // Back: the next command (any) finishes the move, removing the copy here as a move does.
    second_host("restart", &host);
    assert!(listed(&vm.0, &records.0).is_none(), "the copy here was not removed");
    gone_from_source(&vm, &uuid);
    assert_eq!(records.count(), 0, "the record stayed");
    assert_eq!(host.state(&vm.0), "running");
    assert!(host.virsh_ok(&["dominfo", &vm.0]).contains("Autostart:      enable"), "its autostart did not follow it");
    let at = last_count(&host.serial(&vm.0));
    host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", at + 2), 60);
}

#[test]
fn killing_phyllome_mid_copy_leaves_the_vm_running_on_one_side_and_the_next_command_settles_it() {
    require_libvirt();
    let host = SecondHost::start("kill-copy", &[]);
    let vm = TestVm::new("mig-kill-copy");
    let records = Records::new("kill-copy");
    let args = create_guest_args(&vm.0, "phyllome.test=counter", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-COUNT: 3", 240);
    let uuid = virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    // 1 MiB/s for the disk copy and the memory stream: killed while the disk is copied.
    virsh_ok(&["migrate-setspeed", &vm.0, "1"]);
    let mut child = migrate_child_env(&vm.0, &host.uri, &records.0, &[]);
    let pid = child.id();
    wait_incoming(&host, &vm.0);
    child.kill().unwrap();
    child.wait().unwrap();
    // libvirt goes on with the move: the VM runs here, and waits paused there.
    runs_on_one_side(&vm, &host);
    assert_eq!(host.state(&vm.0), "paused");
    let row = listed(&vm.0, &records.0).expect("listed here");
    assert_eq!(row["state_reason"], "unfinished migration", "{row}");
    assert_eq!(records.count(), 1, "the move is not settled while libvirt moves it");
    runs_on_one_side(&vm, &host);
    // The rest of the move at full speed (the disk copy is a block job of its own).
    virsh_ok(&["blockjob", &vm.0, "vda", "--bandwidth", "100000"]);
    virsh_ok(&["migrate-setspeed", &vm.0, "100000"]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while vm.state() != "shut off" {
        assert!(std::time::Instant::now() < until, "the move never completed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    runs_on_one_side(&vm, &host);
    // The next command settles it: the move got there, so the copy here goes.
    assert!(listed(&vm.0, &records.0).is_none(), "the copy here was not removed");
    gone_from_source(&vm, &uuid);
    assert_eq!(records.count(), 0, "the record stayed");
    no_sockets_of(pid);
    let at = last_count(&host.serial(&vm.0));
    host.wait_serial(&vm.0, &format!("PHYLLOME-COUNT: {}", at + 2), 60);
}

/// Folders made for a test, removed on drop.
struct Dirs(Vec<std::path::PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn a_running_vm_with_shares_is_refused_a_live_move_and_moves_offline() {
    require_libvirt();
    let host = SecondHost::start("shares", &[]);
    let vm = TestVm::new("mig-shares");
    let pid = std::process::id();
    // /var/tmp is the same folder for both hosts here; /var/cache/libvirt is the second host's own.
    let both = std::path::PathBuf::from(format!("/var/tmp/{PREFIX}mig-share-{pid}"));
    let here_only = std::path::PathBuf::from(format!("/var/cache/libvirt/{PREFIX}mig-share-{pid}"));
    let _dirs = Dirs(vec![both.clone(), here_only.clone()]);
    for d in [&both, &here_only] {
        std::fs::create_dir_all(d).unwrap();
        std::process::Command::new("chmod").args(["a+rx"]).arg(d).status().unwrap();
    }
    let share = format!("{}:data", both.display());
    let args = create_guest_args(&vm.0, "phyllome.test=counter", &["--share", &share, "--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-COUNT: 3", 240);
    // Live: refused by the check, naming what it would need and the way that works.
    let dry = phyllome(&["migrate", &vm.0, "--to", &host.uri, "--copy-storage", "--dry-run", "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!((c["ok"].as_bool(), c["mode"].as_str()), (Some(false), Some("live")), "{c}");
    let shares = item(&c, "shares");
    assert_eq!(shares["ok"], false, "{c}");
    let detail = shares["detail"].as_str().unwrap();
    for needed in ["libvirt ≥ 10.5.0", "QEMU ≥ 8.2.0", "virtiofsd", "same folders", "--offline", "share remove"] {
        assert!(detail.contains(needed), "{needed:?} missing: {detail}");
    }
    let (code, kind, msg) = refused(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--copy-storage", "--json"]));
    assert_eq!((code, kind.as_str()), (6, "unsupported"), "{msg}");
    assert!(msg.contains("--offline"), "{msg}");
    assert_eq!(vm.state(), "running");
    assert!(!host.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0), "a refused move left the VM there");
    // Offline: every shared folder must be there too (libvirt runs a virtiofsd there for each).
    ok(phyllome(&["share", "add", &vm.0, &here_only.display().to_string(), "--tag", "local"]));
    ok(phyllome(&["kill", &vm.0]));
    let dry = phyllome(&["migrate", &vm.0, "--to", &host.uri, "--copy-storage", "--dry-run", "--json"]);
    let c: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let shares = item(&c, "shares");
    assert_eq!((c["mode"].as_str(), shares["ok"].as_bool()), (Some("offline"), Some(false)), "{c}");
    assert!(shares["detail"].as_str().unwrap().contains("not on the destination"), "{c}");
    ok(phyllome(&["share", "remove", &vm.0, "local"]));
    // Then it moves offline; the summary names the disk copy's bytes.
    let out = ok(phyllome(&["migrate", &vm.0, "--to", &host.uri, "--offline", "--copy-storage"]));
    assert!(out.contains("disk: 4.0G of 4.0G copied"), "{out}");
    assert_eq!(host.state(&vm.0), "shut off");
    assert!(!vm.exists(), "the copy here stayed");
}
