//! Data loss and host safety (issue 10): what a create, its rollback, crash
//! recovery and delete may touch, checked in the real libvirtd.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn guest(name: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phyllome"));
    cmd.env("PHYLLOME_CONNECT", URI).arg("create").arg(name);
    cmd.args(["--os", "linux", "--kernel", &format!("{GUEST}/vmlinuz"), "--initrd", &format!("{GUEST}/initrd.img")]);
    cmd.args(["--cmdline", "console=ttyS0", "--memory", "512M", "--disk-size", "4G", "--network", "none"]);
    cmd
}

fn journal_entry(name: &str) -> String {
    format!("/var/lib/phyllome/pending/{name}.json")
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn secret_of(name: &str) -> Option<String> {
    let list = virsh_ok(&["secret-list"]);
    list.lines().find(|l| l.contains(&volume_path(name))).and_then(|l| l.split_whitespace().next()).map(str::to_string)
}

#[test]
fn a_create_that_loses_the_race_never_removes_the_winners_vm() {
    require_libvirt();
    let vm = TestVm::new("race");
    // B pauses before it claims the name; A creates the VM meanwhile and finishes.
    let b = guest(&vm.0)
        .env("PHYLLOME_TEST_PAUSE_AT", "claim")
        .env("PHYLLOME_TEST_PAUSE_SECS", "6")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let a = guest(&vm.0).output().unwrap();
    assert!(a.status.success(), "A: {}", String::from_utf8_lossy(&a.stderr));
    let uuid = virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    let secret = secret_of(&vm.0).expect("A's disk key");
    // B wakes up, claims, sees A's VM and stops, removing nothing.
    let b = b.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&b.stderr);
    assert_eq!(b.status.code(), Some(5), "B, a conflict: {err}");
    assert!(err.contains("already exists"), "B: {err}");
    assert!(!err.contains("remove it"), "B's message must not advise removing A's objects: {err}");
    assert_eq!(virsh_ok(&["domuuid", &vm.0]).trim(), uuid, "A's domain was replaced or removed");
    assert!(Path::new(&volume_path(&vm.0)).exists(), "A's disk was removed");
    assert_eq!(secret_of(&vm.0).as_deref(), Some(secret.as_str()), "A's disk key was removed");

    // While a create holds the claim (paused after making its secret), another one of the name stops at once.
    let other = TestVm::new("race-claim");
    let mut holder = guest(&other.0)
        .env("PHYLLOME_TEST_PAUSE_AT", "volume")
        .env("PHYLLOME_TEST_PAUSE_SECS", "30")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the holder's secret", 30, || secret_of(&other.0).is_some());
    let held = secret_of(&other.0).unwrap();
    let late = guest(&other.0).env("PHYLLOME_TEST_FAIL_AT", "secret").output().unwrap();
    let err = String::from_utf8_lossy(&late.stderr);
    assert_eq!(late.status.code(), Some(5), "a conflict");
    assert!(err.contains("another phyllome command is creating"), "{err}");
    assert_eq!(secret_of(&other.0).as_deref(), Some(held.as_str()), "the late create removed the holder's secret");
    // Interrupted, the holder removes what it made, and only that.
    let _ = Command::new("kill").arg("-INT").arg(holder.id().to_string()).status();
    holder.wait().unwrap();
    assert_eq!(secret_of(&other.0), None, "the interrupted create left its secret");
    assert!(!Path::new(&journal_entry(&other.0)).exists());
}

#[test]
fn recovery_after_kill_9_touches_only_what_the_dead_create_made() {
    require_libvirt();
    let vm = TestVm::new("recover-identity");
    // Killed after claiming the name and before making anything.
    let mut child = guest(&vm.0).env("PHYLLOME_TEST_PAUSE_AT", "secret").stdout(Stdio::null()).spawn().unwrap();
    wait_for("the journal entry", 60, || Path::new(&journal_entry(&vm.0)).exists());
    child.kill().unwrap();
    child.wait().unwrap();
    // Someone defines a domain and a volume of that very name by hand.
    let xml = format!(
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>",
        vm.0
    );
    let file = std::env::temp_dir().join(format!("{}.xml", vm.0));
    std::fs::write(&file, xml).unwrap();
    virsh_ok(&["define", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
    virsh_ok(&["vol-create-as", "phyllome", &format!("{}.qcow2", vm.0), "1M", "--format", "raw"]);
    ok(phyllome(&["list"]));
    assert!(!Path::new(&journal_entry(&vm.0)).exists(), "the orphaned entry was not cleared");
    assert!(virsh(&["dominfo", &vm.0]).status.success(), "recovery removed a domain it did not make");
    assert!(Path::new(&volume_path(&vm.0)).exists(), "recovery removed a volume it did not make");
}

#[test]
fn recovery_never_removes_a_path_outside_phyllomes_pools() {
    require_libvirt();
    let name = format!("{PREFIX}victim-{}", std::process::id());
    let victim = format!("/var/tmp/{name}");
    std::fs::write(&victim, "not phyllome's").unwrap();
    let id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&victim).unwrap();
        (m.dev(), m.ino())
    };
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    // An orphaned entry (its process long gone) that names the file, even with its true inode.
    let entry = serde_json::json!({
        "name": name, "pool": "phyllome", "volume": format!("{name}.qcow2"), "volume_path": victim,
        "pid": 999_999_999u32, "boot_id": boot,
        "made": {"volume_file": {"path": victim, "dev": id.0, "ino": id.1}},
    });
    std::fs::create_dir_all("/var/lib/phyllome/pending").unwrap();
    std::fs::write(journal_entry(&name), entry.to_string()).unwrap();
    ok(phyllome(&["list"]));
    let survived = Path::new(&victim).exists();
    let _ = std::fs::remove_file(&victim);
    let _ = std::fs::remove_file(journal_entry(&name));
    assert!(survived, "recovery deleted {victim}, which is outside every pool");
}

#[test]
fn delete_refuses_a_disk_another_vm_uses() {
    require_libvirt();
    let vm = TestVm::new("shared-disk");
    let other = TestVm::new("shared-disk-user");
    let out = guest(&vm.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A second VM, defined by hand, uses the same volume.
    let xml = format!(
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>\
         <devices><disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>\
         <source pool='phyllome' volume='{}.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        other.0, vm.0
    );
    let file = std::env::temp_dir().join(format!("{}.xml", other.0));
    std::fs::write(&file, xml).unwrap();
    virsh_ok(&["define", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
    let out = phyllome(&["delete", &vm.0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "a conflict: {err}");
    assert!(err.contains(&format!("also used by VM {}", other.0)), "{err}");
    assert!(vm.exists(), "the VM was undefined although its delete was refused");
    assert!(Path::new(&volume_path(&vm.0)).exists(), "the shared disk was removed");
    // Once the other VM is gone, delete goes through.
    virsh_ok(&["undefine", &other.0]);
    ok(phyllome(&["delete", &vm.0]));
    assert!(!vm.exists() && !Path::new(&volume_path(&vm.0)).exists());
}

#[test]
fn a_build_without_the_test_feature_ignores_the_test_hooks() {
    require_libvirt();
    // What a release or a package gets: the default features (its own target folder, so the
    // tests' build is left alone).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target/no-test-hooks");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--locked", "-p", "phyllome", "--bin", "phyllome", "--target-dir"])
        .arg(&target)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo build: {}", String::from_utf8_lossy(&out.stderr));
    let vm = TestVm::new("no-hooks");
    let mut cmd = guest(&vm.0);
    cmd.env("PHYLLOME_TEST_FAIL_AT", "claim");
    let plain = Command::new(target.join("debug/phyllome"))
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .output()
        .unwrap();
    assert!(plain.status.success(), "the hook was obeyed: {}", String::from_utf8_lossy(&plain.stderr));
    assert!(vm.exists());
    // The tests' own binary does obey them.
    // Removed at the end whatever happens (were the hook ignored, it would exist).
    let vm2 = TestVm(format!("{}-2", vm.0));
    let hooked = guest(&vm2.0).env("PHYLLOME_TEST_FAIL_AT", "claim").output().unwrap();
    assert!(String::from_utf8_lossy(&hooked.stderr).contains("injected failure at step claim"));
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode())
}

/// A file that carries an ISO 9660 volume descriptor (enough for the media check and for QEMU's CD drive).
fn fake_iso(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mut b = vec![0u8; 1 << 20];
    b[0x8000] = 1;
    b[0x8001..0x8006].copy_from_slice(b"CD001");
    std::fs::write(path, b).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn host_files_reach_a_guest_only_as_what_they_claim_and_keep_their_owner_and_mode() {
    require_libvirt();
    let dir = Path::new("/var/tmp").join(format!("{PREFIX}media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (kernel, initrd, iso) = (dir.join("vmlinuz"), dir.join("initrd.img"), dir.join("installer.iso"));
    std::fs::copy(format!("{GUEST}/vmlinuz"), &kernel).unwrap();
    std::fs::copy(format!("{GUEST}/initrd.img"), &initrd).unwrap();
    fake_iso(&iso, 0o644);
    let files = [&kernel, &initrd, &iso];
    let before: Vec<_> = files.iter().map(|f| owner_and_mode(f)).collect();
    let args = |name: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_phyllome"));
        c.env("PHYLLOME_CONNECT", URI).args(["create", name, "--os", "linux", "--kernel"]).arg(&kernel);
        c.arg("--initrd").arg(&initrd).arg("--iso").arg(&iso);
        c.args(["--cmdline", "console=ttyS0", "--memory", "512M", "--disk-size", "4G", "--network", "none"]);
        c
    };

    // Started, run, killed and deleted.
    let vm = TestVm::new("media-owner");
    let out = args(&vm.0).arg("--start").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(vm.state(), "running");
    let live = virsh_ok(&["dumpxml", &vm.0]);
    assert!(live.contains(&format!("<kernel>/var/lib/phyllome/boot/{}/vmlinuz</kernel>", vm.0)), "{live}");
    assert!(live.contains("<seclabel model='dac' relabel='no'/>"), "the ISO is relabelled: {live}");
    ok(phyllome(&["kill", &vm.0]));
    ok(phyllome(&["delete", &vm.0]));
    assert!(!Path::new(&format!("/var/lib/phyllome/boot/{}", vm.0)).exists(), "the boot copies were left");
    let after: Vec<_> = files.iter().map(|f| owner_and_mode(f)).collect();
    assert_eq!(after, before, "a file handed to the guest changed owner or mode");

    // A start that fails and is rolled back.
    let failed = TestVm::new("media-owner-fail");
    let out = args(&failed.0).arg("--start").env("PHYLLOME_TEST_FAIL_AT", "finish").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!failed.exists());
    let after: Vec<_> = files.iter().map(|f| owner_and_mode(f)).collect();
    assert_eq!(after, before, "a rolled-back start changed a file's owner or mode");

    // What QEMU's user cannot read is refused (Phyllome does not chown it), and so is what is not media.
    let private = dir.join("private.iso");
    fake_iso(&private, 0o600);
    let refused = TestVm::new("media-refused");
    let cases: Vec<(String, &str)> = vec![
        (private.display().to_string(), "cannot be read by QEMU's user"),
        ("/etc/shadow".into(), "is not an ISO 9660 or UDF image"),
        ("/proc/self/environ".into(), "kernel interface file"),
    ];
    for (path, want) in cases {
        let mut c = guest(&refused.0);
        let out = c.args(["--iso", &path]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "invalid input: {path}: {err}");
        assert!(err.contains(want), "{path}: {err}");
        assert!(!refused.exists());
    }
    let out = phyllome(&["create", &refused.0, "--os", "linux", "--kernel", "/etc/passwd", "--network", "none"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernel \"/etc/passwd\" is not a Linux kernel image"), "{err}");
    assert!(!refused.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_pool_is_named_in_create_list_and_resume() {
    require_libvirt();
    let pool = SmallPool::new("pool", 96);
    let vm = TestVm::new("io-full");
    // The guest writes 512 MiB of random data to its disk: the 96 MiB pool fills.
    let out = Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .args(["create", &vm.0, "--os", "linux", "--kernel", &format!("{GUEST}/vmlinuz")])
        .args(["--initrd", &format!("{GUEST}/initrd.img"), "--memory", "512M", "--network", "none"])
        .args(["--pool", &pool.name, "--no-encrypt", "--disk-size", "4G", "--start"])
        .args(["--cmdline", "console=ttyS0 panic=-1 phyllome.test=dd-bench"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("storage pool {} has", pool.name)) && err.contains("less than the 4 GiB disk"),
        "no warning: {err}"
    );
    let row = || {
        let out = phyllome(&["list", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array().unwrap().iter().find(|r| r["name"] == vm.0.as_str()).cloned().unwrap()
    };
    wait_for("the VM to pause on the full pool", 180, || row()["state"] == "paused");
    assert_eq!(row()["state_reason"], "I/O error", "{}", row());
    let text = String::from_utf8_lossy(&phyllome(&["list"]).stdout).into_owned();
    assert!(text.lines().any(|l| l.starts_with(&vm.0) && l.contains("paused: I/O error")), "{text}");
    let out = phyllome(&["resume", &vm.0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "resume on a full pool: {err}");
    assert!(err.contains("pauses again") && err.contains(&format!("storage pool {} is full", pool.name)), "{err}");
    let _ = phyllome(&["kill", &vm.0]);
    let out = phyllome(&["delete", &vm.0]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_kept_disk_can_be_listed_and_deleted_with_its_key_and_a_used_one_stays() {
    require_libvirt();
    let vm = TestVm::new("kept");
    let other = TestVm::new("kept-user");
    let out = guest(&vm.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = guest(&other.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let volume = format!("{}.qcow2", vm.0);
    let path = volume_path(&vm.0);
    let out = phyllome(&["delete", &vm.0, "--keep-disk"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = || -> serde_json::Value {
        let out = phyllome(&["volume", "list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = rows();
    let row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == volume.as_str())
        .cloned()
        .expect("the kept volume is listed");
    assert_eq!((row["encrypted"].as_bool(), row["used_by"].as_array().unwrap().len()), (Some(true), 0), "{row}");
    let used =
        all.as_array().unwrap().iter().find(|r| r["name"] == format!("{}.qcow2", other.0).as_str()).cloned().unwrap();
    assert_eq!(used["used_by"][0], other.0.as_str(), "{used}");
    // A volume a VM uses stays.
    let out = phyllome(&["volume", "delete", &format!("{}.qcow2", other.0)]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("used by VM {}", other.0)));
    assert!(Path::new(&volume_path(&other.0)).exists());
    // The kept one goes, with the secret holding its key.
    let secrets = || String::from_utf8_lossy(&virsh(&["secret-list"]).stdout).into_owned();
    assert!(secrets().contains(&path), "the kept disk's key is missing before the delete");
    let out = phyllome(&["volume", "delete", &volume]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!Path::new(&path).exists(), "the volume is still there");
    assert!(!secrets().contains(&path), "its key's secret is still there");
    let out = phyllome(&["volume", "delete", &volume]);
    assert_eq!(out.status.code(), Some(4), "a second delete: {}", String::from_utf8_lossy(&out.stderr));
}

/// A file a test made in Phyllome's pool, removed (and the pool re-read) however the test ends.
struct PoolFile(String);

impl Drop for PoolFile {
    fn drop(&mut self) {
        if std::fs::remove_file(&self.0).is_ok() {
            let _ = virsh(&["pool-refresh", "phyllome"]);
        }
    }
}

#[test]
fn a_disk_chain_made_outside_phyllome_is_named_refused_and_deleted_whole() {
    require_libvirt();
    let vm = TestVm::new("outside-chain");
    let copy = TestVm::new("outside-chain-clone");
    let out = guest(&vm.0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = secret_of(&vm.0).expect("the disk's key");
    // What the issue did: an external disk-only snapshot with virsh, the VM shut off.
    let overlay = PoolFile(format!("{POOL_PATH}/{}-outside.qcow2", vm.0));
    let spec = format!("vda,snapshot=external,file={}", overlay.0);
    virsh_ok(&["snapshot-create-as", &vm.0, "outside", "--disk-only", "--diskspec", &spec]);

    // `list` and `info` say the same: not all of it is encrypted, and why.
    let rows: serde_json::Value = serde_json::from_str(&ok(phyllome(&["list", "--json"]))).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == vm.0.as_str()).cloned().unwrap();
    let info: serde_json::Value = serde_json::from_str(&ok(phyllome(&["info", &vm.0, "--json"]))).unwrap();
    for (what, v) in [("list", &row), ("info", &info)] {
        assert_eq!(v["encrypted"], false, "{what}: {v}");
        let why = v["changed_outside"].as_str().unwrap_or_else(|| panic!("{what} does not say: {v}"));
        assert!(why.contains(&overlay.0) && why.contains("not encrypted"), "{what}: {why}");
    }
    assert_eq!(row["changed_outside"], info["changed_outside"]);
    let text = ok(phyllome(&["info", &vm.0]));
    assert!(text.contains("changed outside Phyllome, not all encrypted"), "{text}");
    let out = phyllome(&["list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with(&vm.0) && l.contains("changed")), "{table}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("was changed outside Phyllome"));

    // What cannot work is refused, saying what happened and how to undo it; nothing runs or is made.
    let bundle = std::env::temp_dir().join(format!("{}.phyllome", vm.0));
    let bundle = bundle.to_str().unwrap();
    for args in [
        vec!["start", vm.0.as_str()],
        vec!["snapshot", "create", vm.0.as_str(), "--json"],
        vec!["clone", vm.0.as_str(), copy.0.as_str(), "--json"],
        vec!["export", vm.0.as_str(), "-o", bundle, "--passphrase-stdin", "--json"],
    ] {
        let (code, _, msg) = refused(phyllome_stdin(&args, "a bundle passphrase\n"));
        assert_eq!(code, 5, "{args:?}: {msg}");
        assert!(msg.contains("changed outside Phyllome") && msg.contains(&overlay.0), "{args:?}: {msg}");
        assert!(msg.contains("snapshot-dumpxml") && msg.contains("phyllome delete"), "{args:?}: no way out: {msg}");
    }
    assert_eq!(vm.state(), "shut off");
    assert!(!copy.exists() && !Path::new(bundle).exists());

    // Delete removes it whole: the overlay, the volume under it and the volume's key.
    let out = phyllome(&["delete", &vm.0]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!vm.exists());
    assert!(!Path::new(&overlay.0).exists(), "the overlay is left");
    assert!(!Path::new(&volume_path(&vm.0)).exists(), "the volume under the overlay is left");
    assert!(!virsh(&["secret-dumpxml", &key]).status.success(), "the volume's key is left");
    let vols = virsh_ok(&["vol-list", "phyllome"]);
    assert!(!vols.contains(&vm.0), "libvirt still lists its volumes: {vols}");
}

/// A libvirt secret whose usage is `path`, as Phyllome's disk and memory keys are; its UUID.
fn define_secret(path: &str) -> String {
    let xml =
        format!("<secret ephemeral='no' private='yes'><usage type='volume'><volume>{path}</volume></usage></secret>");
    let file = std::env::temp_dir().join(format!("{PREFIX}secret-{}.xml", std::process::id()));
    std::fs::write(&file, xml).unwrap();
    let out = virsh_ok(&["secret-define", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
    out.split_whitespace().find(|w| w.len() == 36 && w.matches('-').count() == 4).expect("a secret UUID").to_string()
}

fn secret_exists(uuid: &str) -> bool {
    virsh(&["secret-dumpxml", uuid]).status.success()
}

/// A file's identity as the crash records of every release wrote it.
fn file_id(path: &str) -> serde_json::Value {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap();
    serde_json::json!({"path": path, "dev": m.dev(), "ino": m.ino()})
}

#[test]
fn crash_records_written_by_the_release_before_are_recovered() {
    require_libvirt();
    // A create, a snapshot operation (in the VM's lock) and a snapshot operation of the release
    // before the lock (its own record), all cut short by a kill -9 of an older phyllome, each
    // record in that release's format, naming real objects.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    let dead = 999_999_999u32;
    let created = TestVm::new("old-journal");
    let made = define_minimal_domain(&created.0);
    let domain_uuid = virsh_ok(&["domuuid", &created.0]).trim().to_string();
    let disk_key = define_secret(&volume_path(&created.0));
    virsh_ok(&["vol-create-as", "phyllome", &format!("{}.qcow2", created.0), "1M", "--format", "raw"]);
    let entry = serde_json::json!({
        "name": created.0, "pool": "phyllome", "volume": format!("{}.qcow2", created.0),
        "volume_path": volume_path(&created.0), "pid": dead, "boot_id": boot, "uri": URI,
        "made": {"secret_uuid": disk_key, "volume_file": file_id(&volume_path(&created.0)), "domain_uuid": domain_uuid},
    });
    std::fs::create_dir_all("/var/lib/phyllome/pending").unwrap();
    std::fs::write(journal_entry(&created.0), entry.to_string()).unwrap();

    let locked = define_minimal_domain(&format!("{PREFIX}old-lock-{}", std::process::id()));
    let locked_uuid = virsh_ok(&["domuuid", &locked.name]).trim().to_string();
    let part = format!("/var/lib/phyllome/snapshots/{locked_uuid}/.s1.part");
    std::fs::create_dir_all(&part).unwrap();
    let memory_key = define_secret(&format!("/var/lib/phyllome/snapshots/{locked_uuid}/s1/memory.age"));
    let lock = serde_json::json!({
        "vm": locked.name, "vm_uuid": locked_uuid, "op": "snapshot-create", "pid": dead, "boot_id": boot,
        "uri": URI, "since": 1, "record": {"part": file_id(&part), "memory_secret": memory_key, "backup": false,
        "frozen": false, "paused": false, "mount": null, "save_file": null, "saved": null, "staged": []},
    });
    let lock_file = format!("/var/lib/phyllome/operations/{locked_uuid}.json");
    std::fs::create_dir_all("/var/lib/phyllome/operations").unwrap();
    std::fs::write(&lock_file, lock.to_string()).unwrap();

    let older = define_minimal_domain(&format!("{PREFIX}old-pending-{}", std::process::id()));
    let older_uuid = virsh_ok(&["domuuid", &older.name]).trim().to_string();
    let staged = format!("/var/tmp/{PREFIX}staged-{}", std::process::id());
    std::fs::write(&staged, "a revert's staged copy").unwrap();
    let older_key = define_secret(&format!("/var/lib/phyllome/snapshots/{older_uuid}/s1/memory.age"));
    let pending = serde_json::json!({
        "vm": older.name, "vm_uuid": older_uuid, "pid": dead, "boot_id": boot, "uri": URI, "part": null,
        "memory_secret": older_key, "backup": false, "frozen": false, "paused": false, "mount": null,
        "save_file": null, "saved": null, "staged": [file_id(&staged)],
    });
    let pending_file = format!("/var/lib/phyllome/pending-snapshots/{older_uuid}.json");
    std::fs::create_dir_all("/var/lib/phyllome/pending-snapshots").unwrap();
    std::fs::write(&pending_file, pending.to_string()).unwrap();

    let out = phyllome(&["list"]);

    let left = [
        (!Path::new(&journal_entry(&created.0)).exists(), "the create's entry"),
        (!created.exists(), "the domain the create made"),
        (!secret_exists(&disk_key), "the disk key the create made"),
        (!Path::new(&volume_path(&created.0)).exists(), "the volume the create made"),
        (!Path::new(&part).exists(), "the snapshot's .part folder"),
        (!secret_exists(&memory_key), "the snapshot's memory key"),
        (!Path::new(&lock_file).exists(), "the lock of the dead snapshot"),
        (!Path::new(&staged).exists(), "the older release's staged copy"),
        (!secret_exists(&older_key), "the older release's memory key"),
        (!Path::new(&pending_file).exists(), "the older release's record"),
    ];
    // Whatever happened, nothing of this test stays.
    for (path, key) in [(&part, &memory_key), (&staged, &older_key)] {
        let _ = std::fs::remove_dir_all(path);
        let _ = std::fs::remove_file(path);
        virsh(&["secret-undefine", key]);
    }
    virsh(&["secret-undefine", &disk_key]);
    let _ = std::fs::remove_dir(format!("/var/lib/phyllome/snapshots/{locked_uuid}"));
    let _ = std::fs::remove_file(&lock_file);
    let _ = std::fs::remove_file(&pending_file);
    drop(made);
    ok(out);
    let not_recovered: Vec<&str> = left.iter().filter(|(gone, _)| !gone).map(|(_, what)| *what).collect();
    assert!(not_recovered.is_empty(), "left after recovery: {not_recovered:?}");
    assert!(locked.state() == "shut off" && older.state() == "shut off", "the VMs themselves stay");
}
