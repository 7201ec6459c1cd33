//! `phyllome diff` and `phyllome apply` in the real libvirtd: a folder of
//! manifests creates its VMs, a second apply changes nothing, changes of a
//! stopped VM take effect (memory, vCPUs, disk, autostart, shares) while those
//! of a running VM wait, refused manifests change nothing for any VM, and
//! `--prune` removes only what apply made from that folder.
//!
//! Diffs are compared with golden files, `fixtures/golden/apply/CASE.txt`, the
//! VM names (which carry the test's PID) written as placeholders; regenerate
//! them on purpose with `PHYLLOME_REGENERATE_GOLDEN=1 cargo test -p phyllome --test libvirt_apply`.
//!
//! A manifest names its kernel and initrd by file name in the host's ISO folder:
//! each test links the test guest's there under names of its own
//! (`phyllome-test-apply-CASE-PID-vmlinuz`), removed when the test ends.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

const ISO_DIR: &str = "/var/lib/phyllome/isos";

/// The test guest's kernel and initrd in the ISO folder, removed on drop.
struct BootFiles {
    kernel: String,
    initrd: String,
}

impl BootFiles {
    fn new(case: &str) -> BootFiles {
        assert!(Path::new(GUEST).join("vmlinuz").exists(), "run scripts/build-test-guest.sh");
        std::fs::create_dir_all(ISO_DIR).unwrap();
        let base = format!("{PREFIX}apply-{case}-{}", std::process::id());
        let b = BootFiles { kernel: format!("{base}-vmlinuz"), initrd: format!("{base}-initrd.img") };
        for (from, to) in [("vmlinuz", &b.kernel), ("initrd.img", &b.initrd)] {
            let (from, to) = (Path::new(GUEST).join(from), Path::new(ISO_DIR).join(to));
            let _ = std::fs::remove_file(&to);
            // A hard link costs nothing; a copy where the folders are on two file systems.
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap();
            }
        }
        b
    }
}

impl Drop for BootFiles {
    fn drop(&mut self) {
        for f in [&self.kernel, &self.initrd] {
            let _ = std::fs::remove_file(Path::new(ISO_DIR).join(f));
        }
    }
}

/// A folder of manifests (or of shared files), removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(what: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("{PREFIX}apply-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.0.join(file)).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test guest's manifest: linux, 512M, 4G, encrypted, no NIC, booting the guest's kernel.
fn manifest(name: &str, boot: &BootFiles) -> String {
    format!(
        "version = 1\nname = \"{name}\"\nos = \"linux\"\nmemory = \"512M\"\ndisk_size = \"4G\"\n\
         encryption = \"secret\"\nnetwork = \"none\"\n\n[boot]\nkernel = \"{}\"\ninitrd = \"{}\"\n\
         cmdline = \"console=ttyS0 panic=-1\"\n",
        boot.kernel, boot.initrd
    )
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn inactive_xml(name: &str) -> String {
    virsh_ok(&["dumpxml", "--inactive", name])
}

fn dominfo(name: &str, field: &str) -> String {
    let info = virsh_ok(&["dominfo", name]);
    let line = info.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{info}"));
    line.split_once(':').unwrap().1.trim().to_string()
}

fn capacity(name: &str) -> String {
    let info = virsh_ok(&["vol-info", &format!("{name}.qcow2"), "--pool", "phyllome"]);
    info.lines().find(|l| l.starts_with("Capacity:")).unwrap().split_once(':').unwrap().1.trim().to_string()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Compares `got` with `fixtures/golden/apply/CASE.txt`, each real name written as its placeholder.
fn golden(case: &str, got: &str, names: &[(&str, &str)]) {
    let mut text = got.to_string();
    for (real, placeholder) in names {
        text = text.replace(real, placeholder);
    }
    let path = root().join("fixtures/golden/apply").join(format!("{case}.txt"));
    if std::env::var_os("PHYLLOME_REGENERATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("{} is missing; got:\n{text}", path.display()));
    assert_eq!(want, text, "{} differs (PHYLLOME_REGENERATE_GOLDEN=1 to accept)", path.display());
}

#[test]
fn apply_creates_the_vms_of_a_folder_and_a_second_apply_changes_nothing() {
    require_libvirt();
    let boot = BootFiles::new("twice");
    let vm = TestVm::new("apply-twice");
    let dir = Dir::new("twice");
    dir.write("vm.toml", &manifest(&vm.0, &boot));
    let names = [(vm.0.as_str(), "VM")];

    golden("create", &ok(phyllome(&["diff", "-f", dir.path()])), &names);
    let out = ok(phyllome(&["apply", "-f", dir.path()]));
    assert!(out.contains(&format!("create {}\n", vm.0)) && out.contains(&format!("created {}", vm.0)), "{out}");
    // Made as the manifest says, not started, and marked as apply's from this folder.
    assert_eq!(vm.state(), "shut off");
    assert_eq!(dominfo(&vm.0, "Max memory"), "524288 KiB");
    assert_eq!(capacity(&vm.0), "4.00 GiB");
    let xml = inactive_xml(&vm.0);
    assert!(xml.contains(&format!("<phyllome:applied from=\"{}\"/>", dir.path())), "{xml}");

    let again = ok(phyllome(&["apply", "-f", dir.path()]));
    assert_eq!(again, format!("unchanged {}\nnothing to change\n", vm.0));
    assert_eq!(inactive_xml(&vm.0), xml, "the second apply changed the VM");
    golden("unchanged", &ok(phyllome(&["diff", "-f", dir.path()])), &names);
    let d = json(phyllome(&["diff", "-f", dir.path(), "--json"]));
    assert_eq!(d.as_array().unwrap().len(), 1);
    assert_eq!((d[0]["name"].as_str(), d[0]["action"].as_str()), (Some(vm.0.as_str()), Some("unchanged")));
    assert_eq!(d[0]["changes"], serde_json::json!([]));
    // A dry run says what would be done and does nothing.
    let other = TestVm::new("apply-twice-dry");
    dir.write("other.toml", &manifest(&other.0, &boot));
    let dry = ok(phyllome(&["apply", "-f", dir.path(), "--dry-run"]));
    assert!(dry.contains(&format!("create {}", other.0)), "{dry}");
    assert!(!other.exists(), "--dry-run created a VM");
}

#[test]
fn changes_of_a_stopped_vm_take_effect_and_a_running_vms_wait() {
    require_libvirt();
    let boot = BootFiles::new("change");
    let vm = TestVm::new("apply-change");
    let dir = Dir::new("change");
    let shared = Dir::new("change-share");
    let first = manifest(&vm.0, &boot);
    dir.write("vm.toml", &first);
    ok(phyllome(&["apply", "-f", dir.path()]));
    let names = [(vm.0.as_str(), "VM"), (shared.path(), "SHARE")];

    // Memory, vCPUs, disk, autostart and a share, on the stopped VM.
    let changed = first
        .replace("memory = \"512M\"", "memory = \"768M\"\ncpus = 2\nautostart = true")
        .replace("disk_size = \"4G\"", "disk_size = \"5G\"")
        + &format!("\n[[shares]]\ntag = \"data\"\ndir = \"{}\"\n", shared.path());
    dir.write("vm.toml", &changed);
    golden("change", &ok(phyllome(&["diff", "-f", dir.path()])), &names);
    let d = json(phyllome(&["diff", "-f", dir.path(), "--json"]));
    let memory = d[0]["changes"].as_array().unwrap().iter().find(|c| c["field"] == "memory").unwrap().clone();
    assert_eq!(memory, serde_json::json!({"field": "memory", "from": "512M", "to": "768M", "needs_stop": false}));
    let out = ok(phyllome(&["apply", "-f", dir.path()]));
    assert!(out.contains(&format!("changed {}: cpus, memory, disk_size, autostart, shares", vm.0)), "{out}");
    assert_eq!(dominfo(&vm.0, "Max memory"), "786432 KiB");
    assert_eq!(dominfo(&vm.0, "CPU(s)"), "2");
    assert_eq!(dominfo(&vm.0, "Autostart"), "enable");
    assert_eq!(capacity(&vm.0), "5.00 GiB");
    let xml = inactive_xml(&vm.0);
    assert!(xml.contains(&format!("<source dir='{}'/>", shared.path())), "{xml}");
    // The VM's own manifest says what it is now.
    let m = ok(phyllome(&["manifest", &vm.0]));
    assert!(m.contains("memory = \"768M\"") && m.contains("cpus = 2") && m.contains("disk_size = \"5G\""), "{m}");
    assert_eq!(ok(phyllome(&["diff", "-f", dir.path()])), format!("unchanged {}\n", vm.0));

    // The share removed again (the VM boots next without virtiofsd).
    let no_share = changed.split("\n[[shares]]").next().unwrap().to_string() + "\n";
    dir.write("vm.toml", &no_share);
    ok(phyllome(&["apply", "-f", dir.path()]));
    assert!(!inactive_xml(&vm.0).contains(shared.path()));

    // Running: memory waits for a stop, autostart does not.
    virsh_ok(&["start", &vm.0]);
    let running = no_share.replace("\"768M\"", "\"1G\"").replace("autostart = true", "autostart = false");
    dir.write("vm.toml", &running);
    golden("running", &ok(phyllome(&["diff", "-f", dir.path()])), &names);
    let out = ok(phyllome(&["apply", "-f", dir.path()]));
    assert!(out.contains(&format!("stop {} and apply again", vm.0)), "{out}");
    assert_eq!(vm.state(), "running", "apply stopped the VM");
    assert_eq!(dominfo(&vm.0, "Max memory"), "786432 KiB", "memory changed in a running VM");
    assert_eq!(dominfo(&vm.0, "Autostart"), "disable");
    virsh_ok(&["destroy", &vm.0]);
    let out = ok(phyllome(&["apply", "-f", dir.path()]));
    assert!(out.contains(&format!("changed {}: memory", vm.0)), "{out}");
    assert_eq!(dominfo(&vm.0, "Max memory"), "1048576 KiB");
}

#[test]
fn a_refused_manifest_changes_nothing_for_any_vm() {
    require_libvirt();
    let boot = BootFiles::new("refuse");
    let a = TestVm::new("apply-refuse-a");
    let z = TestVm::new("apply-refuse-z");
    let new = TestVm::new("apply-refuse-new");
    let dir = Dir::new("refuse");
    let (ma, mz) = (manifest(&a.0, &boot), manifest(&z.0, &boot));
    dir.write("a.toml", &ma);
    dir.write("z.toml", &mz);
    ok(phyllome(&["apply", "-f", dir.path()]));
    let before = (inactive_xml(&a.0), inactive_xml(&z.0));

    // Each case: a valid change of a, a valid create, and z.toml (read last) refused.
    dir.write("a.toml", &ma.replace("\"512M\"", "\"768M\""));
    dir.write("b.toml", &manifest(&new.0, &boot));
    let cases = [
        ("unknown OS id", mz.replace("os = \"linux\"", "os = \"plan9\""), "os: unknown OS id \"plan9\""),
        ("negative size", mz.replace("\"512M\"", "\"-512M\""), "memory: size \"-512M\" is not a size"),
        (
            "unknown key",
            mz.replace("network = \"none\"", "network = \"none\"\ncolour = \"blue\""),
            "unknown field `colour`",
        ),
        ("disk shrink", mz.replace("\"4G\"", "\"2G\""), "disk_size: 2G is smaller than"),
        ("OS change", mz.replace("os = \"linux\"", "os = \"freebsd\""), "cannot be changed in place"),
        ("encryption change", mz.replace("\"secret\"", "\"none\""), "encryption: "),
    ];
    for (case, text, why) in cases {
        dir.write("z.toml", &text);
        for cmd in ["diff", "apply"] {
            let out = phyllome(&[cmd, "-f", dir.path(), "--json"]);
            assert_eq!(out.status.code(), Some(3), "{case}: {cmd} exited {:?}", out.status);
            let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
            let msg = err["error"].as_str().unwrap();
            assert_eq!(err["kind"], "invalid-input", "{case}");
            assert!(msg.contains(&format!("{}/z.toml", dir.path())) && msg.contains(why), "{case}: {msg}");
            assert!(out.stdout.is_empty(), "{case}: {cmd} printed a diff");
        }
        assert_eq!((inactive_xml(&a.0), inactive_xml(&z.0)), before.clone(), "{case}: a VM was changed");
        assert!(!new.exists(), "{case}: the new VM was created");
    }
    // The text form names the file and the field too.
    let out = phyllome(&["apply", "-f", dir.path()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("phyllome: error: {}/z.toml: encryption:", dir.path())), "{err}");
}

#[test]
fn prune_removes_only_what_apply_made_from_that_folder() {
    require_libvirt();
    let boot = BootFiles::new("prune");
    let kept = TestVm::new("apply-prune-kept");
    let gone = TestVm::new("apply-prune-gone");
    let foreign = TestVm::new("apply-prune-foreign");
    let elsewhere = TestVm::new("apply-prune-elsewhere");
    let dir = Dir::new("prune");
    let other_dir = Dir::new("prune-other");
    dir.write("kept.toml", &manifest(&kept.0, &boot));
    dir.write("gone.toml", &manifest(&gone.0, &boot));
    other_dir.write("elsewhere.toml", &manifest(&elsewhere.0, &boot));
    ok(phyllome(&["apply", "-f", dir.path()]));
    ok(phyllome(&["apply", "-f", other_dir.path()]));
    // The same kind of name, made by create: not apply's.
    let args = create_guest_args(&foreign.0, "", &[]);
    ok(phyllome(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let names = [(kept.0.as_str(), "KEPT"), (gone.0.as_str(), "GONE")];

    dir.remove("gone.toml");
    // Without --prune nothing is removed.
    assert_eq!(ok(phyllome(&["apply", "-f", dir.path()])), format!("unchanged {}\nnothing to change\n", kept.0));
    assert!(gone.exists());
    golden("prune", &ok(phyllome(&["diff", "-f", dir.path(), "--prune"])), &names);

    // A running VM to prune is reported, not killed.
    virsh_ok(&["start", &gone.0]);
    let out = ok(phyllome(&["apply", "-f", dir.path(), "--prune"]));
    assert!(out.contains(&format!("remove {} (it runs", gone.0)), "{out}");
    assert!(out.contains(&format!("stop {} and apply again to remove it", gone.0)), "{out}");
    assert_eq!(gone.state(), "running");
    virsh_ok(&["destroy", &gone.0]);

    let out = ok(phyllome(&["apply", "-f", dir.path(), "--prune"]));
    let (listed, removed) = (out.find(&format!("remove {}\n", gone.0)), out.find(&format!("removed {}", gone.0)));
    assert!(listed.is_some() && removed.is_some() && listed < removed, "listed first, then removed: {out}");
    assert!(!gone.exists());
    assert!(
        !virsh(&["vol-info", &format!("{}.qcow2", gone.0), "--pool", "phyllome"]).status.success(),
        "its disk stayed"
    );
    for vm in [&kept, &foreign, &elsewhere] {
        assert!(vm.exists(), "{} was removed", vm.0);
    }
    let again = json(phyllome(&["diff", "-f", dir.path(), "--prune", "--json"]));
    assert_eq!(again.as_array().unwrap().len(), 1, "{again}");
}
