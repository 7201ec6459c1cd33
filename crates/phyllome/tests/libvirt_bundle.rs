//! `phyllome export` / `phyllome import` in the real libvirtd, with the test
//! guest under TCG (OVMF with a qcow2 NVRAM, swtpm, a LUKS-encrypted disk):
//! - round trip: the guest writes a disk marker, an EFI variable and a TPM NV
//!   index; export, delete, import; the guest reads all three back, and the
//!   NVRAM and TPM state are byte-identical to what was exported;
//! - nothing in the clear: the bundle holds neither the marker nor the disk key
//!   (read from keys.age with the passphrase, as only its holder can);
//! - bad bundles (wrong passphrase, truncated, a flipped byte, unknown manifest
//!   or bundle version) are refused before anything is made;
//! - `--dry-run --host-facts` re-tunes the same bundle for recorded hosts, and
//!   a windows11 bundle is refused on a host without secure-boot OVMF;
//! - an injected failure in export or import leaves nothing.

mod common;
use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

const PASS: &str = "correct horse battery staple";

/// A bundle file under the test's own name, removed on drop.
struct TestFile(PathBuf);

impl TestFile {
    fn new(name: &str) -> TestFile {
        let p = std::env::temp_dir().join(format!("{PREFIX}{name}-{}.phyllome", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TestFile(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn uuid(name: &str) -> String {
    virsh_ok(&["domuuid", name]).trim().to_string()
}

fn boot(name: &str, action: &str, until: &str) -> String {
    redefine_cmdline(name, &format!("phyllome.test={action}"));
    ok(phyllome(&["start", name]));
    let log = wait_for_serial(name, until, 240);
    wait_state(name, "shut off", 120);
    log
}

fn state_line(log: &str) -> String {
    log.lines().find(|l| l.contains("PHYLLOME-STATE:")).map(|l| l.trim().to_string()).unwrap_or_else(|| panic!("{log}"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The parts of a bundle: (name, bytes).
fn parts(path: &str) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = vec![];
            e.read_to_end(&mut v).unwrap();
            (name, v)
        })
        .collect()
}

/// Writes a bundle from parts (a tampered copy).
fn write_parts(path: &str, parts: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in parts {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// What keys.age holds, opened with the passphrase (what only the bundle's holder can do).
fn open_keys(bundle: &str) -> serde_json::Value {
    let sealed = parts(bundle).into_iter().find(|(n, _)| n == "keys.age").unwrap().1;
    let dec = age::Decryptor::new(sealed.as_slice()).unwrap();
    let mut id = age::scrypt::Identity::new(PASS.to_string().into());
    id.set_max_work_factor(20);
    let mut r = dec.decrypt(std::iter::once(&id as &dyn age::Identity)).unwrap();
    let mut plain = vec![];
    r.read_to_end(&mut plain).unwrap();
    serde_json::from_slice(&plain).unwrap()
}

/// Nothing of an import of `name` exists: domain, disk, key, NVRAM, boot files, staging.
fn nothing_made(name: &str) {
    assert!(!virsh(&["dominfo", name]).status.success(), "domain {name} was made");
    assert!(!Path::new(&volume_path(name)).exists(), "disk of {name} was made");
    let secrets = virsh_ok(&["secret-list"]);
    assert!(!secrets.contains(&volume_path(name)), "a key for {name} was made");
    assert!(!Path::new(&format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.qcow2")).exists(), "NVRAM made");
    assert!(!Path::new(&format!("/var/lib/phyllome/boot/{name}")).exists(), "boot files made");
    // An import stages in a folder named by its pid, removed when it ends: none of a finished process is left.
    if let Ok(rd) = std::fs::read_dir("/var/lib/phyllome/import") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid = n.split('-').next().unwrap_or_default();
            assert!(Path::new(&format!("/proc/{pid}")).exists(), "staging folder {n} of a finished import is left");
        }
    }
    assert!(!Path::new(&format!("/var/lib/phyllome/pending/{name}.json")).exists(), "a journal entry is left");
}

fn export(name: &str, file: &TestFile) -> Output {
    phyllome_stdin_env(&["export", name, "-o", file.path(), "--passphrase-stdin", "--json"], &format!("{PASS}\n"), &[])
}

#[test]
fn a_vm_exported_deleted_and_imported_keeps_its_disk_uefi_variables_and_tpm() {
    require_libvirt();
    let vm = TestVm::new("bundle-trip");
    let args = create_guest_args(&vm.0, "phyllome.test=state:one", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let log = wait_for_serial(&vm.0, "PHYLLOME-STATE-WRITTEN", 240);
    wait_state(&vm.0, "shut off", 120);
    assert!(state_line(&log).contains("marker=MISSING efivar=MISSING tpm=missing"), "{log}");
    let nvram_path = format!("/var/lib/libvirt/qemu/nvram/{}_VARS.qcow2", vm.0);
    let nvram = std::fs::read(&nvram_path).unwrap();
    let tpm = std::fs::read(format!("/var/lib/libvirt/swtpm/{}/tpm2/tpm2-00.permall", uuid(&vm.0))).unwrap();

    // Autostart is part of the VM's desired state: it travels in the manifest.
    ok(phyllome(&["autostart", &vm.0, "on"]));
    let file = TestFile::new("trip");
    let v: serde_json::Value = serde_json::from_str(&ok(export(&vm.0, &file))).unwrap();
    let names: Vec<_> = v["export"]["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bundle.json", "manifest.toml", "disk.qcow2", "nvram.age", "tpm.age", "boot.age", "keys.age"]);
    assert_eq!(vm.state(), "shut off", "export leaves the VM off");
    assert!(!Path::new(&format!("{POOL_PATH}/.phyllome-export-{}.qcow2", vm.0)).exists(), "staging copy left");
    assert!(!virsh_ok(&["secret-list"]).contains(&format!(".phyllome-export-{}.", vm.0)), "export key left in libvirt");

    // Nothing in the clear: not the marker, not the disk key (hex or raw), not the passphrase.
    let bytes = std::fs::read(file.path()).unwrap();
    let keys = open_keys(file.path());
    let key = keys["disk_key"].as_str().unwrap();
    assert_eq!(key.len(), 64, "a 256-bit key in hex");
    let raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap()).collect();
    for (what, needle) in [
        ("the marker", b"PHYLLOME-MARKER:one".as_slice()),
        ("the disk key", key.as_bytes()),
        ("the raw disk key", raw.as_slice()),
        ("the passphrase", PASS.as_bytes()),
        ("the age identity", keys["identity"].as_str().unwrap().as_bytes()),
    ] {
        assert!(!contains(&bytes, needle), "the bundle holds {what} in the clear");
    }
    // keys.age is sealed by age's scrypt recipient, with the fixed work factor 2^18.
    let sealed = parts(file.path()).into_iter().find(|(n, _)| n == "keys.age").unwrap().1;
    let header = String::from_utf8_lossy(&sealed[..sealed.len().min(200)]).into_owned();
    assert!(header.starts_with("age-encryption.org/v1\n-> scrypt "), "{header}");
    assert!(header.lines().nth(1).is_some_and(|l| l.ends_with(" 18")), "{header}");
    // The disk part is a LUKS qcow2 image.
    let disk = parts(file.path()).into_iter().find(|(n, _)| n == "disk.qcow2").unwrap().1;
    assert_eq!(&disk[..4], b"QFI\xfb");
    assert!(contains(&disk[..1 << 20], b"LUKS\xba\xbe"), "the disk part is not LUKS-encrypted");

    ok(phyllome(&["delete", &vm.0]));
    let out = phyllome_stdin_env(&["import", file.path(), "--passphrase-stdin", "--json"], &format!("{PASS}\n"), &[]);
    let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!((v["name"].as_str(), v["dry_run"].as_bool()), (Some(vm.0.as_str()), Some(false)));
    assert_eq!(v["changes"].as_array().map(Vec::len), Some(0), "same host, same choices: {v}");
    assert_eq!(std::fs::read(&nvram_path).unwrap(), nvram, "NVRAM differs from the exported one");
    let tpm_now = std::fs::read(format!("/var/lib/libvirt/swtpm/{}/tpm2/tpm2-00.permall", uuid(&vm.0))).unwrap();
    assert_eq!(tpm_now, tpm, "TPM state differs from the exported one");
    assert_eq!(image_format(&volume_path(&vm.0)), "qcow2");
    assert!(virsh_ok(&["dominfo", &vm.0]).lines().any(|l| l.starts_with("Autostart:") && l.contains("enable")));

    // The guest sees its marker, its EFI variable and its TPM NV index again.
    let log = boot(&vm.0, "state:two", "PHYLLOME-STATE-WRITTEN");
    assert!(state_line(&log).contains("marker=one efivar=one tpm=present"), "after import: {log}");

    // The same bundle again, under another name: refused while the name is taken; a new name works.
    let out = phyllome_stdin_env(&["import", file.path(), "--passphrase-stdin", "--json"], &format!("{PASS}\n"), &[]);
    let (code, kind, _) = refused(out);
    assert_eq!((code, kind.as_str()), (5, "conflict"));
}

#[test]
fn bad_bundles_are_refused_before_anything_is_made() {
    require_libvirt();
    let vm = TestVm::new("bundle-bad");
    let args = create_guest_args(&vm.0, "phyllome.test=write-marker:bad", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let file = TestFile::new("bad");
    ok(export(&vm.0, &file));
    let target = TestVm::new("bundle-bad-import");
    let import = |path: &str, pass: &str| {
        phyllome_stdin_env(
            &["import", path, "--name", &target.0, "--passphrase-stdin", "--json"],
            &format!("{pass}\n"),
            &[],
        )
    };

    let (code, kind, msg) = refused(import(file.path(), "wrong passphrase"));
    assert_eq!((code, kind.as_str()), (3, "invalid-input"), "{msg}");
    assert!(msg.contains("passphrase does not open"), "{msg}");
    nothing_made(&target.0);

    let bytes = std::fs::read(file.path()).unwrap();
    let cut = TestFile::new("bad-cut");
    std::fs::write(cut.path(), &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, msg) = refused(import(cut.path(), PASS));
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    nothing_made(&target.0);

    // One flipped byte in the middle of the disk part: its checksum no longer matches.
    let mut p = parts(file.path());
    let disk = p.iter_mut().find(|(n, _)| n == "disk.qcow2").unwrap();
    let at = disk.1.len() / 2;
    disk.1[at] ^= 0x01;
    let flipped = TestFile::new("bad-flip");
    write_parts(flipped.path(), &p);
    let (code, _, msg) = refused(import(flipped.path(), PASS));
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("disk.qcow2 does not match its checksum"), "{msg}");
    nothing_made(&target.0);

    // A flipped byte in the sealed keys: age's authentication refuses it.
    let mut p = parts(file.path());
    let keys = p.iter_mut().find(|(n, _)| n == "keys.age").unwrap();
    let at = keys.1.len() - 20;
    keys.1[at] ^= 0x80;
    write_parts(flipped.path(), &p);
    let (code, _, msg) = refused(import(flipped.path(), PASS));
    assert_eq!(code, 3, "{msg}");
    nothing_made(&target.0);

    // An unknown manifest version, and an unknown bundle format version.
    let mut p = parts(file.path());
    let m = p.iter_mut().find(|(n, _)| n == "manifest.toml").unwrap();
    m.1 = String::from_utf8(m.1.clone()).unwrap().replace("version = 1", "version = 7").into_bytes();
    let newer = TestFile::new("bad-version");
    write_parts(newer.path(), &p);
    let (code, _, msg) = refused(import(newer.path(), PASS));
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("manifest version 7"), "{msg}");
    nothing_made(&target.0);
    let mut p = parts(file.path());
    let b = p.iter_mut().find(|(n, _)| n == "bundle.json").unwrap();
    b.1 = String::from_utf8(b.1.clone()).unwrap().replace("\"version\": 1", "\"version\": 9").into_bytes();
    write_parts(newer.path(), &p);
    let (code, _, msg) = refused(import(newer.path(), PASS));
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("bundle format version 9"), "{msg}");
    nothing_made(&target.0);

    // Not a bundle at all.
    let (code, _, msg) = refused(import(&format!("{GUEST}/vmlinuz"), PASS));
    assert_eq!(code, 3, "{msg}");
    nothing_made(&target.0);

    // An existing output file is not overwritten.
    let before = std::fs::read(file.path()).unwrap();
    let (code, _, msg) = refused(export(&vm.0, &file));
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("exists"), "{msg}");
    assert_eq!(std::fs::read(file.path()).unwrap(), before);
    // A VM that is not shut off is refused (a bundle holds one consistent state).
    virsh_ok(&["start", "--paused", &vm.0]);
    let other = TestFile::new("bad-running");
    let (code, kind, msg) = refused(export(&vm.0, &other));
    assert_eq!((code, kind.as_str()), (5, "conflict"), "{msg}");
    assert!(msg.contains("export a stopped VM"), "{msg}");
    assert!(!other.0.exists());
    virsh(&["destroy", &vm.0]);
}

#[test]
fn an_injected_failure_in_export_or_import_leaves_nothing() {
    require_libvirt();
    let vm = TestVm::new("bundle-fail");
    let args = create_guest_args(&vm.0, "phyllome.test=write-marker:fail", &["--start"]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_for_serial(&vm.0, "PHYLLOME-WROTE", 240);
    wait_state(&vm.0, "shut off", 120);
    let file = TestFile::new("fail");
    let out = phyllome_stdin_env(
        &["export", &vm.0, "-o", file.path(), "--passphrase-stdin", "--json"],
        &format!("{PASS}\n"),
        &[("PHYLLOME_TEST_FAIL_AT", "keys")],
    );
    assert!(!out.status.success());
    assert!(!file.0.exists(), "a half bundle was left at the output path");
    let partial = file.0.with_file_name(format!(".{}.partial", file.0.file_name().unwrap().to_string_lossy()));
    assert!(!partial.exists(), "the partial file was left");
    assert_eq!(vm.state(), "shut off");
    assert!(!Path::new(&format!("{POOL_PATH}/.phyllome-export-{}.qcow2", vm.0)).exists(), "staging copy left");
    assert!(!virsh_ok(&["secret-list"]).contains(&format!(".phyllome-export-{}.", vm.0)), "export key left in libvirt");

    ok(export(&vm.0, &file));
    let target = TestVm::new("bundle-fail-import");
    for step in ["volume", "define", "nvram", "finish"] {
        let out = phyllome_stdin_env(
            &["import", file.path(), "--name", &target.0, "--passphrase-stdin", "--json"],
            &format!("{PASS}\n"),
            &[("PHYLLOME_TEST_FAIL_AT", step)],
        );
        assert!(!out.status.success(), "import did not fail at {step}");
        nothing_made(&target.0);
    }
    // The VM exported is untouched, and the same bundle imports.
    ok(phyllome_stdin_env(
        &["import", file.path(), "--name", &target.0, "--passphrase-stdin", "--json"],
        &format!("{PASS}\n"),
        &[],
    ));
    let log = boot(&target.0, "read-marker", "PHYLLOME-MARKER");
    assert!(log.contains("PHYLLOME-MARKER:fail"), "{log}");
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hosts")
}

#[test]
fn a_dry_run_retunes_one_bundle_for_each_recorded_host_and_makes_nothing() {
    require_libvirt();
    let vm = TestVm::new("bundle-retune");
    let args = create_guest_args(&vm.0, "phyllome.test=write-marker:retune", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let file = TestFile::new("retune");
    ok(export(&vm.0, &file));
    let target = TestVm::new("bundle-retune-import");
    let dry = |host: &str| {
        let dir = fixtures().join(host);
        phyllome_stdin_env(
            &["import", file.path(), "--name", &target.0, "--dry-run", "--host-facts", dir.to_str().unwrap(), "--json"],
            &format!("{PASS}\n"),
            &[],
        )
    };
    let intel: serde_json::Value = serde_json::from_str(&ok(dry("intel-kvm-rendernode"))).unwrap();
    let xml = intel["xml"].as_str().unwrap();
    assert!(xml.contains("<domain type='kvm'"), "a KVM host gets KVM: {xml}");
    xmllint_domain(xml).unwrap();
    let items: Vec<_> = intel["changes"].as_array().unwrap().iter().map(|c| c["item"].as_str().unwrap()).collect();
    assert!(items.contains(&"cpu"), "the CPU is re-chosen for a KVM host: {items:?}");
    let amd: serde_json::Value = serde_json::from_str(&ok(dry("amd-kvm"))).unwrap();
    assert_ne!(amd["xml"], intel["xml"], "two hosts, two definitions");
    nothing_made(&target.0);
    // Text form: what changed, and with --explain every choice.
    let dir = fixtures().join("amd-kvm");
    let text = ok(phyllome_stdin_env(
        &["import", file.path(), "--name", &target.0, "--dry-run", "--explain", "--host-facts", dir.to_str().unwrap()],
        &format!("{PASS}\n"),
        &[],
    ));
    assert!(text.contains("changed cpu:") && text.contains("every choice on this host:"), "{text}");
    assert!(text.contains("nothing was made"), "{text}");
    nothing_made(&target.0);
}

#[test]
fn a_windows11_bundle_is_refused_on_a_host_without_secure_boot_firmware() {
    require_libvirt();
    let vm = TestVm::new("bundle-w11");
    ok(phyllome(&["create", &vm.0, "--os", "windows11", "--disk-size", "1G", "--force", "--network", "none"]));
    let file = TestFile::new("w11");
    ok(export(&vm.0, &file));
    let target = TestVm::new("bundle-w11-import");
    let dir = fixtures().join("intel-kvm-no-secboot-no-swtpm");
    let out = phyllome_stdin_env(
        &["import", file.path(), "--name", &target.0, "--dry-run", "--host-facts", dir.to_str().unwrap(), "--json"],
        &format!("{PASS}\n"),
        &[],
    );
    let (code, kind, msg) = refused(out);
    assert_eq!((code, kind.as_str()), (6, "unsupported"), "{msg}");
    assert!(msg.contains("apt install ovmf") && msg.contains("dnf install edk2-ovmf"), "{msg}");
    nothing_made(&target.0);
}

/// The staging folders of imports run by `pid`.
fn staging_of(pid: u32) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/var/lib/phyllome/import") else { return vec![] };
    rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{pid}-"))).map(|e| e.path()).collect()
}

#[test]
fn a_killed_import_leaves_no_staging_folder_after_the_next_command() {
    require_libvirt();
    let vm = TestVm::new("bundle-kill");
    ok(phyllome(&["create", &vm.0, "--os", "linux", "--disk-size", "1G", "--force", "--network", "none"]));
    let file = TestFile::new("kill");
    ok(export(&vm.0, &file));
    let target = TestVm::new("bundle-kill-import");
    // The bundle through a FIFO: all but its end, so the import waits for more with its disk staged.
    let fifo = std::env::temp_dir().join(format!("{PREFIX}import-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut child = Background::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_CONNECT", URI)
            .args(["import", fifo.to_str().unwrap(), "--name", &target.0, "--passphrase-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    use std::io::Write;
    child.stdin().write_all(format!("{PASS}\n").as_bytes()).unwrap();
    let bytes = std::fs::read(file.path()).unwrap();
    let held = bytes.len() - 4096;
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = w.write_all(&bytes[..held]);
            // Held open (no end of file) until the test is done with the reader.
            let _ = wait.recv_timeout(std::time::Duration::from_secs(180));
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let staged = staging_of(child.id());
        if staged.iter().any(|d| d.join("disk.qcow2").exists()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the import never staged the disk");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = child.id();
    child.kill();
    assert!(!staging_of(pid).is_empty(), "the kill left nothing to clean: the test proves nothing");
    // Any next command removes the dead import's staging folder (the whole bundle).
    ok(phyllome(&["list"]));
    assert!(staging_of(pid).is_empty(), "the killed import's staging folder is left: {:?}", staging_of(pid));
    let _ = done.send(());
    let _ = writer.join();
    let _ = std::fs::remove_file(&fifo);
    nothing_made(&target.0);
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// A copy of a bundle re-sealed as its maker (who knows the passphrase) can write one: its manifest
/// and bundle.json edited, their checksums changed to match inside keys.age.
fn reseal(from: &str, to: &str, manifest: impl Fn(String) -> String, info: impl Fn(&mut serde_json::Value)) {
    use std::io::Write;
    let mut p = parts(from);
    let mut keys = open_keys(from);
    for (name, data) in p.iter_mut() {
        match name.as_str() {
            "manifest.toml" => *data = manifest(String::from_utf8(data.clone()).unwrap()).into_bytes(),
            "bundle.json" => {
                let mut v: serde_json::Value = serde_json::from_slice(data).unwrap();
                info(&mut v);
                *data = serde_json::to_vec_pretty(&v).unwrap();
            }
            _ => continue,
        }
        keys["sha256"][name.as_str()] = sha256_hex(data).into();
    }
    let mut r = age::scrypt::Recipient::new(PASS.to_string().into());
    r.set_work_factor(18);
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut sealed = vec![];
    let mut w = enc.wrap_output(&mut sealed).unwrap();
    w.write_all(&serde_json::to_vec(&keys).unwrap()).unwrap();
    w.finish().unwrap();
    p.iter_mut().find(|(n, _)| n == "keys.age").unwrap().1 = sealed;
    write_parts(to, &p);
}

#[test]
fn a_resealed_bundle_shares_no_host_folder_unsaid_and_its_text_reaches_the_terminal_escaped() {
    require_libvirt();
    let vm = TestVm::new("bundle-share");
    let args = create_guest_args(&vm.0, "", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let file = TestFile::new("share");
    ok(export(&vm.0, &file));
    let target = TestVm::new("bundle-share-import");
    let data = PathBuf::from(format!("/var/tmp/{PREFIX}bundle-share-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _data = Gone(data.clone());

    // /usr shared writable, and terminal escape sequences in the exporting host's CPU and a choice.
    let evil = TestFile::new("share-usr");
    let shares = format!(
        "\n[[shares]]\ntag = \"usr\"\ndir = \"/usr\"\nwritable = true\n\n[[shares]]\ntag = \"data\"\ndir = \"{}\"\n",
        data.display()
    );
    reseal(
        file.path(),
        evil.path(),
        |m| m + &shares,
        |i| {
            i["source"]["cpu_model"] = "\u{1b}[2J\u{1b}]0;owned\u{7}Evil CPU".into();
            i["choices"][0]["choice"] = "\u{1b}[31mred".into();
        },
    );
    let import = |extra: &[&str]| {
        let mut a = vec!["import", evil.path(), "--name", &target.0, "--passphrase-stdin"];
        a.extend_from_slice(extra);
        phyllome_stdin_env(&a, &format!("{PASS}\n"), &[])
    };
    // Refused as `share add` refuses it, by a dry run and by the import itself; nothing made.
    for extra in [&["--dry-run", "--json"][..], &["--json"][..]] {
        let (code, kind, msg) = refused(import(extra));
        assert_eq!((code, kind.as_str()), (3, "invalid-input"), "{extra:?}: {msg}");
        assert!(msg.contains("/usr") && msg.contains("--force"), "{msg}");
        nothing_made(&target.0);
    }
    // With --force: every share is in the plan, said in words and in the XML.
    let out = import(&["--dry-run", "--force"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("host folder shared with it: /usr as usr, writable"), "{text}");
    assert!(text.contains(&format!("host folder shared with it: {} as data, read-only", data.display())), "{text}");
    assert!(text.contains("network: none"), "{text}");
    assert!(text.contains("<source dir='/usr'/>"), "{text}");
    // What came from the bundle is escaped: no raw escape or bell reaches the terminal.
    assert!(!out.stdout.iter().any(|b| *b == 0x1b || *b == 0x07), "raw control bytes in: {text:?}");
    assert!(text.contains("\\u{1b}[2J") && text.contains("Evil CPU"), "{text}");
    assert!(text.contains("\\u{1b}[31mred"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&ok(import(&["--dry-run", "--force", "--json"]))).unwrap();
    let dirs: Vec<_> = v["shares"].as_array().unwrap().iter().map(|s| s["dir"].as_str().unwrap()).collect();
    assert_eq!(dirs, ["/usr", data.to_str().unwrap()], "{v}");
    assert_eq!((v["shares"][0]["readonly"].as_bool(), v["network"].as_str()), (Some(false), Some("none")));
    nothing_made(&target.0);

    // A damaged keys.age is said to be that, in the bundle's words.
    for garbage in [b"age-encryption.org/v9\n-> x\n".as_slice(), b"no age file at all\n".as_slice()] {
        let mut p = parts(file.path());
        p.iter_mut().find(|(n, _)| n == "keys.age").unwrap().1 = garbage.to_vec();
        let broken = TestFile::new("share-keys");
        write_parts(broken.path(), &p);
        let out = phyllome_stdin_env(
            &["import", broken.path(), "--name", &target.0, "--passphrase-stdin", "--json"],
            &format!("{PASS}\n"),
            &[],
        );
        let (code, _, msg) = refused(out);
        assert_eq!(code, 3, "{msg}");
        assert!(msg.contains("keys.age") && msg.contains("damaged"), "{msg}");
        assert!(!msg.contains("upgrading") && !msg.contains("age file"), "{msg}");
        nothing_made(&target.0);
    }
}
