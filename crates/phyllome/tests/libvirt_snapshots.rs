//! Whole-VM snapshots in the real libvirtd, with the test guest under TCG
//! (OVMF from a qcow2 NVRAM, swtpm, a LUKS-encrypted disk):
//! - a shut-off VM: disk marker, EFI variable and TPM NV index all come back
//!   as they were at the snapshot, seen by the guest; the TPM state file is
//!   byte-identical to the snapshot's;
//! - a running VM (disk only): marker A written before, B after; A after revert;
//!   a running VM is not reverted without --force;
//! - --memory: a counter on the serial console goes on from the snapshot's value;
//! - nothing in a snapshot is plaintext: no marker, no counter text, no key;
//! - bad input, a full disk, an injected failure and a kill -9 leave the VM as
//!   it was and no half snapshot.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SNAPSHOTS: &str = "/var/lib/phyllome/snapshots";
const PENDING: &str = "/var/lib/phyllome/operations";

/// The two memory tests one at a time: the kill test leaves a dead phyllome's tmpfs
/// mounted until its next command, which the other would see as left behind.
static MEMORY_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn memory_test() -> std::sync::MutexGuard<'static, ()> {
    MEMORY_TESTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// Exit code and the `--json` error's kind.
fn refused(out: Output) -> (i32, String, String) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let kind = serde_json::from_str::<serde_json::Value>(err.trim())
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_string))
        .unwrap_or_default();
    (out.status.code().unwrap_or(-1), kind, err)
}

fn create(vm: &TestVm, action: &str, start: bool) {
    let args = create_guest_args(&vm.0, &format!("phyllome.test={action}"), if start { &["--start"] } else { &[] });
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
}

fn uuid(vm: &TestVm) -> String {
    virsh_ok(&["domuuid", &vm.0]).trim().to_string()
}

/// Boots the guest with `action` and returns its serial log once it powered off.
fn boot(vm: &TestVm, action: &str, until: &str) -> String {
    redefine_cmdline(&vm.0, &format!("phyllome.test={action}"));
    ok(phyllome(&["start", &vm.0]));
    let log = wait_for_serial(&vm.0, until, 240);
    wait_state(&vm.0, "shut off", 120);
    log
}

fn state_line(log: &str) -> String {
    log.lines().find(|l| l.contains("PHYLLOME-STATE:")).map(|l| l.trim().to_string()).unwrap_or_else(|| panic!("{log}"))
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn tpm_state(uuid: &str) -> Vec<u8> {
    std::fs::read(format!("/var/lib/libvirt/swtpm/{uuid}/tpm2/tpm2-00.permall")).unwrap()
}

/// Nothing half-made: no `.part` folder and no pending record for the VM.
fn nothing_half_made(uuid: &str) {
    let dir = Path::new(SNAPSHOTS).join(uuid);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let left: Vec<_> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect();
        assert!(left.is_empty(), "half snapshots left: {left:?}");
    }
    assert!(!Path::new(PENDING).join(format!("{uuid}.json")).exists(), "a pending record is left");
    // A memory tmpfs is named by the pid of the phyllome that mounted it: none of a finished one is left.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if let Some(pid) = m.strip_prefix("/run/phyllome/snapshot-memory/") {
            assert!(Path::new("/proc").join(pid).exists(), "a memory tmpfs is left mounted: {m}");
        }
    }
}

#[test]
fn a_shut_off_snapshot_brings_back_disk_uefi_variables_and_tpm() {
    require_libvirt();
    let vm = TestVm::new("snap-off");
    create(&vm, "state:one", true);
    wait_for_serial(&vm.0, "PHYLLOME-STATE-WRITTEN", 240);
    wait_state(&vm.0, "shut off", 120);
    let first = state_line(&serial_log(&vm.0));
    assert!(first.contains("marker=MISSING efivar=MISSING tpm=missing"), "{first}");
    let id = uuid(&vm);
    let tpm_then = tpm_state(&id);

    let s = json(phyllome(&["snapshot", "create", &vm.0, "before", "--description", "after state one", "--json"]));
    assert_eq!(
        (s["name"].as_str(), s["state"].as_str(), s["memory"].as_bool()),
        (Some("before"), Some("shut off"), Some(false))
    );
    assert_eq!(s["consistency"], "shut off");
    let dir = Path::new(SNAPSHOTS).join(&id).join("before");
    assert_eq!(std::fs::read(dir.join("tpm/tpm2-00.permall")).unwrap(), tpm_then, "the TPM copy differs");

    // After the snapshot the guest changes all three.
    let second = state_line(&boot(&vm, "state:two", "PHYLLOME-STATE-WRITTEN"));
    assert!(second.contains("marker=one efivar=one tpm=present"), "{second}");
    assert_ne!(tpm_state(&id), tpm_then, "the guest's TPM write changed nothing");

    let r = json(phyllome(&["snapshot", "revert", &vm.0, "before", "--json"]));
    assert_eq!((r["state"].as_str(), r["forced_off"].as_bool()), (Some("shut off"), Some(false)));
    assert_eq!(tpm_state(&id), tpm_then, "the TPM state is not the snapshot's, byte for byte");
    // Without the revert the guest would see marker=two efivar=two tpm=missing.
    let third = state_line(&boot(&vm, "state:three", "PHYLLOME-STATE-WRITTEN"));
    assert!(third.contains("marker=one efivar=one tpm=present"), "after revert: {third}");

    // Encrypted at rest: the marker the guest wrote is nowhere in the snapshot's files.
    for (path, data) in files_under(&dir) {
        assert!(!contains(&data, b"PHYLLOME-MARKER:one"), "{} holds the disk marker in plaintext", path.display());
    }
    let list = json(phyllome(&["snapshot", "list", &vm.0, "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["current"], true);
    assert!(list[0]["size_bytes"].as_u64().unwrap() > 0);
    let info = json(phyllome(&["info", &vm.0, "--json"]));
    assert_eq!(info["snapshots"], 1);

    // Deleting the VM deletes its snapshots.
    ok(phyllome(&["delete", &vm.0]));
    assert!(!Path::new(SNAPSHOTS).join(&id).exists(), "the VM's snapshots outlived it");
}

#[test]
fn a_running_vms_disk_snapshot_comes_back_without_what_was_written_after() {
    require_libvirt();
    let vm = TestVm::new("snap-run");
    create(&vm, "marker-pair:alpha:beta", true);
    wait_for_serial(&vm.0, "PHYLLOME-WROTE-A", 240);
    let id = uuid(&vm);
    let s = json(phyllome(&["snapshot", "create", &vm.0, "--json"]));
    assert_eq!(s["name"], "snap1", "the default name");
    assert_eq!((s["state"].as_str(), s["memory"].as_bool()), (Some("running"), Some(false)));
    assert!(s["consistency"].as_str().unwrap().contains("crash-consistent"), "{s}");
    assert_eq!(vm.state(), "running", "the VM did not run on");
    nothing_half_made(&id);

    // A running VM is not reverted without --force, and nothing changes.
    let disk = volume_path(&vm.0);
    let before = std::fs::metadata(&disk).unwrap();
    let (code, kind, err) = refused(phyllome(&["snapshot", "revert", &vm.0, "snap1", "--json"]));
    assert_eq!((code, kind.as_str()), (5, "conflict"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(vm.state(), "running");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&disk).unwrap().ino(), before.ino(), "the disk was replaced");

    // Marker B after the snapshot (the power button tells the guest), then the revert.
    virsh_ok(&["shutdown", &vm.0]);
    wait_for_serial(&vm.0, "PHYLLOME-WROTE-B", 120);
    wait_state(&vm.0, "shut off", 120);
    ok(phyllome(&["snapshot", "revert", &vm.0, "snap1"]));
    let log = boot(&vm, "read-marker", "PHYLLOME-MARKER");
    assert!(log.contains("PHYLLOME-MARKER:alpha"), "{log}");
    assert!(!log.contains("PHYLLOME-MARKER:beta"), "{log}");
    for (path, data) in files_under(&Path::new(SNAPSHOTS).join(&id).join("snap1")) {
        assert!(!contains(&data, b"PHYLLOME-MARKER:alpha"), "{} holds the marker in plaintext", path.display());
    }
}

/// The last `PHYLLOME-COUNT: N` in a log.
fn last_count(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| l.split("PHYLLOME-COUNT: ").nth(1)?.trim().parse().ok())
}

fn first_count(log: &str) -> Option<u64> {
    log.lines().filter_map(|l| l.split("PHYLLOME-COUNT: ").nth(1)?.trim().parse().ok()).next()
}

/// The first count of the current QEMU's log (libvirt rewrites it at each start, restores too).
fn wait_first_count(vm: &TestVm) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(n) = first_count(&serial_log(&vm.0)) {
            return n;
        }
        assert!(Instant::now() < deadline, "no count: {}", serial_log(&vm.0));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_count(vm: &TestVm, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(n) = last_count(&serial_log(&vm.0)).filter(|n| *n >= at_least) {
            return n;
        }
        assert!(Instant::now() < deadline, "the counter never reached {at_least}: {}", serial_log(&vm.0));
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_memory_snapshot_resumes_the_guest_where_it_was() {
    require_libvirt();
    let _one = memory_test();
    let vm = TestVm::new("snap-mem");
    create(&vm, "counter", true);
    wait_count(&vm, 5);
    let id = uuid(&vm);
    let s = json(phyllome(&["snapshot", "create", &vm.0, "live", "--memory", "--json"]));
    assert_eq!((s["memory"].as_bool(), s["state"].as_str()), (Some(true), Some("running")));
    // The snapshot restored the VM: it counts on (the log restarted with the restore).
    let at_snapshot = wait_first_count(&vm);
    assert_eq!(vm.state(), "running");
    nothing_half_made(&id);
    let later = wait_count(&vm, at_snapshot + 20);

    let r = json(phyllome(&["snapshot", "revert", &vm.0, "live", "--force", "--json"]));
    assert_eq!((r["state"].as_str(), r["forced_off"].as_bool()), (Some("running"), Some(true)));
    let resumed = wait_first_count(&vm);
    // It goes on from the snapshot's value: no reboot (that would count from 1), not from where it was.
    assert!(
        resumed > 1 && resumed <= at_snapshot + 2 && resumed < later,
        "snapshot {at_snapshot}, later {later}, resumed {resumed}"
    );
    let log = serial_log(&vm.0);
    assert!(!log.contains("PHYLLOME-BOOT"), "the guest rebooted: {log}");
    wait_count(&vm, resumed + 4);
    nothing_half_made(&id);

    // The memory state is encrypted: no console text, no key, in any file.
    let dir = Path::new(SNAPSHOTS).join(&id).join("live");
    let files = files_under(&dir);
    assert!(files.iter().any(|(p, _)| p.ends_with("memory.age")));
    let secret = String::from_utf8_lossy(&virsh(&["secret-list"]).stdout)
        .lines()
        .find(|l| l.contains(&dir.display().to_string()))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .expect("the memory key's secret");
    let key = ok(Command::new("virsh").args(["-c", URI, "secret-get-value", &secret]).output().unwrap());
    let key = String::from_utf8_lossy(&base64_decode(key.trim())).into_owned();
    assert!(key.starts_with("AGE-SECRET-KEY-1"), "not an age identity");
    for (path, data) in &files {
        assert!(!contains(data, b"PHYLLOME-COUNT"), "{} holds the guest's console text", path.display());
        assert!(!contains(data, key.as_bytes()), "{} holds the memory key", path.display());
    }
    // Deleting the snapshot removes its key.
    ok(phyllome(&["snapshot", "delete", &vm.0, "live"]));
    assert!(!virsh(&["secret-dumpxml", &secret]).status.success(), "the memory key outlived its snapshot");
    assert!(!dir.exists());
}

fn base64_decode(s: &str) -> Vec<u8> {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut child = out.unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[test]
fn bad_input_and_failures_leave_the_vm_as_it_was() {
    require_libvirt();
    let vm = TestVm::new("snap-bad");
    create(&vm, "poweroff", false);
    let id = uuid(&vm);
    let missing = format!("{PREFIX}no-such-vm-{}", std::process::id());
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["snapshot", "create", &missing, "--json"], 4, "not-found"),
        (vec!["snapshot", "revert", &vm.0, "nope", "--json"], 4, "not-found"),
        (vec!["snapshot", "delete", &vm.0, "nope", "--json"], 4, "not-found"),
        (vec!["snapshot", "create", &vm.0, "../x", "--json"], 3, "invalid-input"),
        (vec!["snapshot", "create", &vm.0, "--memory", "--json"], 3, "invalid-input"),
    ];
    for (args, code, kind) in cases {
        let (c, k, err) = refused(phyllome(&args));
        assert_eq!((c, k.as_str()), (code, kind), "{args:?}: {err}");
    }
    ok(phyllome(&["snapshot", "create", &vm.0, "one"]));
    let (c, k, err) = refused(phyllome(&["snapshot", "create", &vm.0, "one", "--json"]));
    assert_eq!((c, k.as_str()), (5, "conflict"), "{err}");

    // A failure at the last step, then an interrupted copy: no half snapshot, the VM unchanged.
    let fail = Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .env("PHYLLOME_TEST_FAIL_AT", "finish")
        .args(["snapshot", "create", &vm.0, "two"])
        .output()
        .unwrap();
    assert!(!fail.status.success() && String::from_utf8_lossy(&fail.stderr).contains("injected failure"));
    assert!(!Path::new(SNAPSHOTS).join(&id).join("two").exists());
    nothing_half_made(&id);
    assert_eq!(vm.state(), "shut off");

    // A full disk: refused before anything is written (a 4 MiB tmpfs over the VM's snapshot folder).
    let dir = Path::new(SNAPSHOTS).join(&id);
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&dir).status().unwrap();
    assert!(mounted.success());
    let (c, k, err) = refused(phyllome(&["snapshot", "create", &vm.0, "full", "--json"]));
    let listing: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    Command::new("umount").arg(&dir).status().unwrap();
    assert_eq!((c, k.as_str()), (8, "no-space"), "{err}");
    assert!(err.contains("not enough space"), "{err}");
    assert!(listing.is_empty(), "a full disk left {listing:?}");
    nothing_half_made(&id);

    // A passed-through device: refused, with why.
    let xml = virsh_ok(&["dumpxml", "--inactive", &vm.0]);
    let hostdev = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x00' slot='0x1f' function='0x7'/></source></hostdev></devices>";
    let file = std::env::temp_dir().join(format!("{}-hostdev.xml", vm.0));
    std::fs::write(&file, xml.replace("</devices>", hostdev)).unwrap();
    virsh_ok(&["define", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let (c, k, err) = refused(phyllome(&["snapshot", "create", &vm.0, "pt", "--json"]));
    assert_eq!((c, k.as_str()), (3, "invalid-input"), "{err}");
    assert!(err.contains("passed-through"), "{err}");
    virsh_ok(&["define", &{
        let f = std::env::temp_dir().join(format!("{}-plain.xml", vm.0));
        std::fs::write(&f, &xml).unwrap();
        f.to_string_lossy().into_owned()
    }]);
    let list = json(phyllome(&["snapshot", "list", &vm.0, "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

/// A `snapshot create --memory` of the VM, its process kept for a kill (`pause`: the test hook's step).
fn memory_snapshot(vm: &TestVm, pause: Option<&str>) -> Background {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phyllome"));
    cmd.env("PHYLLOME_CONNECT", URI).args(["snapshot", "create", &vm.0, "killed", "--memory"]);
    if let Some(step) = pause {
        cmd.env("PHYLLOME_TEST_PAUSE_AT", step);
    }
    Background::new(cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// After a killed memory snapshot and the next command: the VM runs and its counter goes on,
/// restored from the saved state (a new log, past 1, no boot) or never stopped (past `before`).
fn counts_on(vm: &TestVm, before: u64, phase: &str) {
    assert_eq!(vm.state(), "running", "{phase}: the VM was not left running: {}", serial_log(&vm.0));
    let log = serial_log(&vm.0);
    if log.contains("PHYLLOME-BOOT") {
        assert!(last_count(&log).unwrap_or(0) >= before, "{phase}: the counter went back: {log}");
    } else {
        let first = wait_first_count(vm);
        assert!(first > 1 && first + 2 >= before, "{phase}: restored at {first}, {before} before the kill: {log}");
    }
    let now = last_count(&serial_log(&vm.0)).unwrap_or(0);
    wait_count(vm, now + 3);
}

#[test]
fn kills_before_during_and_after_a_memory_save_leave_the_vm_running_and_no_snapshot() {
    require_libvirt();
    let _one = memory_test();
    let vm = TestVm::new("snap-kill");
    create(&vm, "counter", true);
    wait_count(&vm, 3);
    let id = uuid(&vm);
    let lock = Path::new(PENDING).join(format!("{id}.json"));
    // The memory keys of this VM's snapshots (their usage is the snapshot's folder): other tests make keys too.
    let keys_of = format!("{SNAPSHOTS}/{id}/");
    let secrets =
        || String::from_utf8_lossy(&virsh(&["secret-list"]).stdout).lines().filter(|l| l.contains(&keys_of)).count();
    let secrets_before = secrets();
    let killed = |child: &mut Background, phase: &str, before: u64| {
        child.kill();
        // The next phyllome command finds the dead snapshot and puts the VM back.
        ok(phyllome(&["snapshot", "list", &vm.0]));
        counts_on(&vm, before, phase);
        assert!(!Path::new(SNAPSHOTS).join(&id).join("killed").exists(), "{phase}: a snapshot is left");
        nothing_half_made(&id);
        assert_eq!(secrets(), secrets_before, "{phase}: the memory key of the dead snapshot is left");
    };

    // Before the save: the intent is recorded, libvirt not asked yet.
    let before = last_count(&serial_log(&vm.0)).unwrap();
    let mut child = memory_snapshot(&vm, Some("save"));
    wait_until("the save's record", 120, || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("\"saved\":false"))
    });
    killed(&mut child, "before the save", before);

    // During the save: killed as soon as libvirt made the save file; libvirt goes on without the caller.
    let before = last_count(&serial_log(&vm.0)).unwrap();
    let mut child = memory_snapshot(&vm, None);
    let file = format!("/run/phyllome/snapshot-memory/{}/memory.save", child.id());
    wait_until("the save file", 120, || Path::new(&file).exists());
    child.kill();
    // libvirt was saving (it pauses the guest, then writes the file): the kill landed during the save.
    let state = virsh_ok(&["domstate", &vm.0]).trim().to_string();
    assert_ne!(state, "running", "the kill landed before the save");
    killed(&mut child, "during the save", before);

    // After the save: the VM is off, its RAM only in the tmpfs.
    let before = last_count(&serial_log(&vm.0)).unwrap();
    let mut child = memory_snapshot(&vm, Some("memory"));
    wait_until("the save", 120, || vm.state() == "shut off");
    std::thread::sleep(Duration::from_millis(500));
    killed(&mut child, "after the save", before);
}

#[test]
fn a_passphrase_vm_is_snapshotted_stopped_and_no_snapshot_holds_its_key() {
    require_libvirt();
    let vm = TestVm::new("snap-pass");
    let pass = format!("snapshot-pass-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let args = create_guest_args(&vm.0, "phyllome.test=counter", &["--passphrase-prompt"]);
    ok(phyllome_stdin(&args.iter().map(String::as_str).collect::<Vec<_>>(), &format!("{pass}\n{pass}\n")));
    let id = uuid(&vm);
    ok(phyllome(&["snapshot", "create", &vm.0, "stopped"]));
    for (path, data) in files_under(&Path::new(SNAPSHOTS).join(&id).join("stopped")) {
        assert!(!contains(&data, pass.as_bytes()), "{} holds the disk passphrase", path.display());
    }
    // Running, its key lives nowhere Phyllome could encrypt a copy or a memory state with: refused, with why.
    ok(phyllome_stdin(&["start", &vm.0], &format!("{pass}\n")));
    wait_count(&vm, 2);
    for args in [vec!["snapshot", "create", &vm.0, "--json"], vec!["snapshot", "create", &vm.0, "--memory", "--json"]] {
        let (c, k, err) = refused(phyllome(&args));
        assert_eq!((c, k.as_str()), (3, "invalid-input"), "{args:?}: {err}");
        assert!(err.contains("passphrase"), "{err}");
    }
    assert_eq!(vm.state(), "running");
    nothing_half_made(&id);
    // A forced revert to the stopped snapshot, started again with the passphrase.
    let r =
        phyllome_stdin(&["snapshot", "revert", &vm.0, "stopped", "--force", "--start", "--json"], &format!("{pass}\n"));
    let r: serde_json::Value = serde_json::from_str(&ok(r)).unwrap();
    assert_eq!((r["state"].as_str(), r["forced_off"].as_bool()), (Some("running"), Some(true)));
    let log = wait_for_serial(&vm.0, "PHYLLOME-COUNT: 1", 240);
    assert!(log.contains("PHYLLOME-BOOT"), "a disk-only snapshot boots afresh: {log}");
}

/// Bytes free in the file system holding `dir` (`stat -f`).
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text.split_whitespace().map(|n| n.parse().unwrap()).collect();
    v[0] * v[1]
}

#[test]
fn a_revert_killed_while_staging_or_short_of_space_leaves_no_copy_behind() {
    require_libvirt();
    let pool = SmallPool::new("snap-revert-pool", 160);
    let vm = TestVm::new("snap-stage");
    let args = create_guest_args(&vm.0, "phyllome.test=poweroff", &["--pool", &pool.name, "--no-encrypt"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let id = uuid(&vm);
    ok(phyllome(&["snapshot", "create", &vm.0, "one"]));
    let disk = pool.dir.join(format!("{}.qcow2", vm.0));
    let staged = pool.dir.join(format!(".{}.qcow2.phyllome-revert", vm.0));
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&disk).unwrap().ino();

    // Killed with its copy staged: the next command removes the copy (the record names it from the start).
    let mut child = Background::new(
        Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_CONNECT", URI)
            .env("PHYLLOME_TEST_PAUSE_AT", "stage")
            .args(["snapshot", "revert", &vm.0, "one"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the staged copy", 120, || staged.exists());
    std::thread::sleep(Duration::from_secs(1));
    child.kill();
    ok(phyllome(&["snapshot", "list", &vm.0]));
    assert!(!staged.exists(), "the killed revert's copy is left in the pool");
    nothing_half_made(&id);
    let vols = virsh_ok(&["vol-list", &pool.name]);
    assert!(!vols.contains("phyllome-revert"), "libvirt lists the copy as a volume: {vols}");

    // Too little space beside the disk for its copy: refused before anything is written.
    let filler = pool.dir.join("filler");
    let leave = 16u64 << 20;
    let size = free_bytes(&pool.dir) - leave;
    let st = Command::new("fallocate").args(["-l", &size.to_string()]).arg(&filler).status().unwrap();
    assert!(st.success());
    let (c, k, err) = refused(phyllome(&["snapshot", "revert", &vm.0, "one", "--json"]));
    assert_eq!((c, k.as_str()), (8, "no-space"), "{err}");
    assert!(err.contains("not enough space") && err.contains("to stage the revert"), "{err}");
    assert!(!staged.exists(), "a refused revert left its copy");
    assert_eq!(std::fs::metadata(&disk).unwrap().ino(), ino, "the disk was replaced");
    nothing_half_made(&id);
    std::fs::remove_file(&filler).unwrap();
    ok(phyllome(&["snapshot", "revert", &vm.0, "one"]));
    assert_ne!(std::fs::metadata(&disk).unwrap().ino(), ino, "the revert did not put the snapshot's disk in place");
    ok(phyllome(&["delete", &vm.0]));
}
