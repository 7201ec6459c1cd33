//! Shared folders over virtiofs, in the real libvirtd with the real
//! virtiofsd: the test guest mounts the share and reads a host file; a write
//! fails read-only and works with --writable; symlinks pointing outside the
//! share read nothing; the share survives stop and start; removing it leaves
//! no virtiofsd behind; the host's critical folders are refused.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn virtiofsd_for(dir: &Path) -> usize {
    let out = Command::new("pgrep").args(["-af", "virtiofsd"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&*dir.to_string_lossy())).count()
}

#[test]
fn a_guest_reads_a_read_only_share_writes_a_writable_one_and_cannot_leave_it() {
    require_libvirt();
    assert!(Path::new(GUEST).join("vmlinuz").exists(), "run scripts/build-test-guest.sh");
    let pid = std::process::id();
    let share = PathBuf::from(format!("/var/tmp/{PREFIX}share-{pid}"));
    let outside = PathBuf::from(format!("/var/tmp/{PREFIX}outside-{pid}"));
    let _dirs = Dirs(vec![share.clone(), outside.clone()]);
    for d in [&share, &outside] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    let marker = format!("host-file-{pid}");
    let secret = format!("outside-secret-{pid}");
    std::fs::write(share.join("hello.txt"), &marker).unwrap();
    std::fs::write(outside.join("secret.txt"), &secret).unwrap();
    // Symlinks inside the share to a folder outside it, absolute and relative.
    std::os::unix::fs::symlink(&outside, share.join("out")).unwrap();
    std::os::unix::fs::symlink(format!("../{}", outside.file_name().unwrap().to_string_lossy()), share.join("up"))
        .unwrap();
    Command::new("chmod").args(["-R", "a+rX"]).arg(&share).arg(&outside).status().unwrap();

    let vm = TestVm::new("share");
    ok(phyllome(&[
        "create",
        &vm.0,
        "--os",
        "linux",
        "--kernel",
        &format!("{GUEST}/vmlinuz"),
        "--initrd",
        &format!("{GUEST}/initrd.img"),
        "--cmdline",
        "console=ttyS0 panic=-1 phyllome.test=share:data",
        "--memory",
        "512M",
        "--disk-size",
        "4G",
        "--network",
        "none",
        "--share",
        &format!("{}:data", share.display()),
        "--start",
    ]));
    let xml = virsh_ok(&["dumpxml", &vm.0]);
    assert!(xml.contains("<readonly/>") && xml.contains("<source type='memfd'/>"), "{xml}");
    let run1 = wait_for_serial(&vm.0, "PHYLLOME-SHARE-DONE", 180);
    assert!(run1.contains(&format!("PHYLLOME-SHARE-READ:{marker}")), "{run1}");
    assert!(run1.contains("PHYLLOME-SHARE-WRITE:refused"), "read-only by default: {run1}");
    assert!(
        run1.contains("PHYLLOME-SHARE-ESCAPE-out:none") && run1.contains("PHYLLOME-SHARE-ESCAPE-up:none"),
        "{run1}"
    );
    assert!(!run1.contains(&secret), "a symlink led out of the share: {run1}");
    assert!(!share.join("from-guest.txt").exists());
    wait_state(&vm.0, "shut off", 60);

    let listed: serde_json::Value = serde_json::from_str(&ok(phyllome(&["share", "list", &vm.0, "--json"]))).unwrap();
    assert_eq!(listed, serde_json::json!([{"tag": "data", "dir": share.display().to_string(), "readonly": true}]));

    // Writable now; it survives a stop and a start.
    ok(phyllome(&["share", "remove", &vm.0, "data"]));
    let added: serde_json::Value = serde_json::from_str(&ok(phyllome(&[
        "share",
        "add",
        &vm.0,
        &share.display().to_string(),
        "--tag",
        "data",
        "--writable",
        "--json",
    ])))
    .unwrap();
    assert_eq!((added["readonly"].as_bool(), added["applies"].as_str()), (Some(false), Some("now")));
    ok(phyllome(&["start", &vm.0]));
    let run2 = wait_for_serial(&vm.0, "PHYLLOME-SHARE-DONE", 180);
    assert!(run2.contains("PHYLLOME-SHARE-WRITE:ok"), "{run2}");
    assert_eq!(std::fs::read_to_string(share.join("from-guest.txt")).unwrap().trim(), "guest-wrote");
    wait_state(&vm.0, "shut off", 60);
    ok(phyllome(&["start", &vm.0]));
    let run3 = wait_for_serial(&vm.0, "PHYLLOME-SHARE-DONE", 180);
    assert!(run3.contains(&format!("PHYLLOME-SHARE-READ:{marker}")), "the share survives stop and start: {run3}");
    wait_state(&vm.0, "shut off", 60);

    // Removed from a running VM: no virtiofsd is left for it (at once, or once the VM stops).
    redefine_cmdline(&vm.0, "");
    ok(phyllome(&["start", &vm.0]));
    wait_for_serial(&vm.0, "PHYLLOME-READY", 180);
    assert!(virtiofsd_for(&share) > 0, "virtiofsd serves the share while the VM runs");
    let removed: serde_json::Value =
        serde_json::from_str(&ok(phyllome(&["share", "remove", &vm.0, "data", "--json"]))).unwrap();
    if removed["applies"] == "next boot" {
        assert!(removed["why_not_now"].as_str().unwrap().contains("virtiofsd runs until"), "{removed}");
        ok(phyllome(&["kill", &vm.0]));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while virtiofsd_for(&share) > 0 {
        assert!(Instant::now() < deadline, "a virtiofsd for the removed share is left");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ok(phyllome(&["share", "list", &vm.0, "--json"])).trim(), "[]");

    // Refusals: critical host folders, a folder holding a VM's disk, bad tags, unknown VMs.
    for dir in ["/etc", "/", "/var/lib/libvirt/images", POOL_PATH, "/root", "/var/lib"] {
        let out = phyllome(&["share", "add", &vm.0, dir, "--json"]);
        assert_eq!(out.status.code(), Some(3), "{dir} refused");
        let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
        assert!(e["error"].as_str().unwrap().contains("--force"), "{e}");
    }
    let out = phyllome(&["share", "add", &vm.0, &share.display().to_string(), "--tag", "bad tag"]);
    assert_eq!(out.status.code(), Some(3));
    let out = phyllome(&["share", "add", "phyllome-test-no-such-vm", &share.display().to_string(), "--json"]);
    assert_eq!(out.status.code(), Some(4));
    let out = phyllome(&["share", "add", &vm.0, "relative/dir"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(ok(phyllome(&["share", "list", &vm.0, "--json"])).trim(), "[]", "refusals changed nothing");
}

/// A directory pool outside libvirt's own folders, with one volume; removed with its folder on drop.
struct OutsidePool {
    name: String,
    base: PathBuf,
}

impl Drop for OutsidePool {
    fn drop(&mut self) {
        virsh(&["vol-delete", "disk.qcow2", "--pool", &self.name]);
        virsh(&["pool-destroy", &self.name]);
        virsh(&["pool-undefine", &self.name]);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[test]
fn folders_at_or_above_a_pool_volume_and_the_hosts_system_folders_are_refused() {
    require_libvirt();
    let pid = std::process::id();
    let base = PathBuf::from(format!("/var/tmp/{PREFIX}guard-{pid}"));
    let pool_dir = base.join("vms/pool");
    let other = base.join("data");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&pool_dir).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let pool = OutsidePool { name: format!("{PREFIX}guard-{pid}"), base: base.clone() };
    virsh_ok(&["pool-define-as", &pool.name, "dir", "--target", pool_dir.to_str().unwrap()]);
    virsh_ok(&["pool-start", &pool.name]);
    virsh_ok(&["vol-create-as", &pool.name, "disk.qcow2", "1M", "--format", "qcow2"]);
    // A VM whose disk is that pool volume, as Phyllome's own disks are (<source pool=... volume=...>).
    let dom = TestDomain::adopt(&format!("{PREFIX}guard-{pid}"));
    let xml = format!(
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>\
         <source pool='{}' volume='disk.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        dom.name, pool.name
    );
    let file = base.join("dom.xml");
    std::fs::write(&file, xml).unwrap();
    virsh_ok(&["define", file.to_str().unwrap()]);

    let refused_dirs = [
        pool_dir.display().to_string(),
        base.join("vms").display().to_string(),
        base.display().to_string(),
        "/usr".into(),
        "/usr/share".into(),
        "/bin".into(),
        "/lib".into(),
        "/opt".into(),
        "/var".into(),
        "/proc".into(),
        "/sys".into(),
        "/dev".into(),
        "/run/libvirt".into(),
        "/run".into(),
    ];
    for dir in &refused_dirs {
        if !Path::new(dir).exists() {
            continue;
        }
        let out = phyllome(&["share", "add", &dom.name, dir, "--writable", "--json"]);
        assert_eq!(out.status.code(), Some(3), "{dir} must be refused: {}", String::from_utf8_lossy(&out.stdout));
        let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
        assert!(e["error"].as_str().unwrap().contains("--force"), "{e}");
    }
    let e: serde_json::Value =
        serde_json::from_slice(&phyllome(&["share", "add", &dom.name, pool_dir.to_str().unwrap(), "--json"]).stderr)
            .unwrap();
    assert!(e["error"].as_str().unwrap().contains("holds the VM disk"), "{e}");
    assert_eq!(ok(phyllome(&["share", "list", &dom.name, "--json"])).trim(), "[]", "refusals changed nothing");
    // A folder beside the disk's is fine.
    let added: serde_json::Value = serde_json::from_str(&ok(phyllome(&[
        "share",
        "add",
        &dom.name,
        other.to_str().unwrap(),
        "--writable",
        "--json",
    ])))
    .unwrap();
    assert_eq!(added["dir"], other.display().to_string());
}
