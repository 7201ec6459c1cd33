//! Acceptance in the real libvirtd: for every guest OS profile, the XML that
//! `phyllome xml` generates for this host is defined (with libvirt's
//! validation), started (under TCG where KVM does not work), seen running,
//! then destroyed and undefined.

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn generate(os: &str, name: &str, pool: &TestPool, extra: &[&str]) -> String {
    let mut args = vec!["xml", "--os", os, "--name", name, "--network", "none", "--no-encrypt", "--pool", &pool.name];
    args.extend_from_slice(extra);
    let out = phyllome(&args);
    assert!(out.status.success(), "phyllome xml --os {os} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Defines the XML as `phyllome create` does: validated, then the qcow2 UEFI
/// variable store made where the definition asks for one (libvirt cannot).
fn define(name: &str, xml: &str) -> TestDomain {
    let dom = TestDomain::adopt(name);
    let file = std::env::temp_dir().join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    virsh_ok(&["define", "--validate", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
    let lv = phyllome_libvirt::Libvirt::connect(URI).unwrap();
    phyllome_engine::disk::nvram::prepare(&lv, name).unwrap();
    dom
}

/// The files libvirt keeps for a domain: NVRAM (raw, or qcow2 where the host
/// can snapshot UEFI VMs with it) and the swtpm state directory.
fn nvram_paths(name: &str) -> [String; 2] {
    [format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.fd"), format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.qcow2")]
}

fn no_nvram(name: &str) -> bool {
    nvram_paths(name).iter().all(|p| !Path::new(p).exists())
}

fn tpm_state_dir(uuid: &str) -> String {
    format!("/var/lib/libvirt/swtpm/{uuid}")
}

#[test]
fn every_profile_defines_starts_and_runs_in_real_libvirtd() {
    require_libvirt();
    let pool = TestPool::new(&format!("accept-pool-{}", std::process::id()));
    // macOS needs an OpenCore image: an empty MBR-partitioned raw disk stands in (the VM starts; it does not boot macOS).
    let opencore = format!("{}/opencore.img", pool.path);
    let mut disk = vec![0u8; 1 << 20];
    disk[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    std::fs::write(&opencore, disk).unwrap();
    let osk = "o".repeat(64);
    for os in phyllome_engine::model::catalog::ids() {
        let name = format!("{PREFIX}accept-{os}-{}", std::process::id());
        let extra: Vec<&str> = if os == "macos" { vec!["--opencore", &opencore, "--osk", &osk] } else { vec![] };
        let xml = generate(os, &name, &pool, &extra);
        pool.create_volume(&format!("{name}.qcow2"), "1G");
        let dom = define(&name, &xml);
        virsh_ok(&["start", &name]);
        assert_eq!(dom.state(), "running", "{os}");
        let live = virsh_ok(&["dumpxml", &name]);
        assert!(live.contains("<phyllome:os>") && live.contains(&format!(">{os}<")), "{os}: metadata lost");
        drop(dom);
        assert!(!virsh(&["dominfo", &name]).status.success(), "{os}: domain still defined");
        assert!(no_nvram(&name), "{os}: NVRAM left behind");
    }
}

#[test]
fn windows11_runs_secure_boot_firmware_with_a_tpm() {
    require_libvirt();
    let pool = TestPool::new(&format!("accept-w11-pool-{}", std::process::id()));
    let name = format!("{PREFIX}accept-w11-{}", std::process::id());
    let xml = generate("windows11", &name, &pool, &[]);
    pool.create_volume(&format!("{name}.qcow2"), "1G");
    let dom = define(&name, &xml);
    virsh_ok(&["start", &name]);
    assert_eq!(dom.state(), "running");

    // libvirt resolved the firmware request to the secure-boot build with Microsoft keys.
    let live = virsh_ok(&["dumpxml", &name]);
    let loader = live.lines().find(|l| l.contains("<loader")).unwrap_or_default().to_string();
    assert!(loader.contains("secure='yes'"), "{loader}");
    let hostfw = std::fs::read_to_string("/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json")
        .ok()
        .and_then(|j| j.split("\"filename\": \"").nth(1).map(|s| s.split('"').next().unwrap_or("").to_string()));
    if let Some(code) = hostfw {
        assert!(loader.contains(&code), "expected {code} in {loader}");
    }
    assert!(live.contains("<tpm model='tpm-crb'>"), "no TPM in live XML");

    // QEMU really got a TPM and SMM, and swtpm and the NVRAM exist.
    let log = std::fs::read_to_string(format!("/var/log/libvirt/qemu/{name}.log")).unwrap();
    // The command line of this start: everything after the last "starting up".
    let cmdline = log.rsplit("starting up").next().unwrap_or_default();
    assert!(cmdline.contains("tpm-crb"), "QEMU command line has no tpm-crb");
    assert!(cmdline.contains("smm=on"), "QEMU command line has no SMM");
    // The variable store is qcow2 where this libvirt snapshots UEFI VMs with one, raw elsewhere.
    let [raw, qcow2] = nvram_paths(&name);
    if host_supports("qcow2-nvram") {
        assert!(live.contains("format='qcow2'>/var/lib/libvirt/qemu/nvram/"), "no qcow2 NVRAM in the live XML");
        assert_eq!(image_format(&qcow2), "qcow2");
        assert!(!Path::new(&raw).exists(), "a raw NVRAM beside the qcow2 one");
    } else {
        assert!(Path::new(&raw).exists(), "no NVRAM file");
    }
    let uuid = virsh_ok(&["domuuid", &name]).trim().to_string();
    assert!(Path::new(&tpm_state_dir(&uuid)).join("tpm2").exists(), "no swtpm state");

    // The firmware draws its logo and boot messages (on this build: "Security
    // Violation" for the unsigned shell). QEMU's own "not initialized" screen
    // has two colours; the TianoCore logo alone has dozens.
    let shot = std::env::temp_dir().join(format!("{name}.png"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut colours = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        if virsh(&["screenshot", &name, shot.to_str().unwrap()]).status.success() {
            colours = screenshot_colours(&shot);
            if colours > 8 {
                break;
            }
        }
    }
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("windows11-firmware.png");
    let _ = std::fs::copy(&shot, &artifacts);
    let _ = std::fs::remove_file(&shot);
    assert!(colours > 8, "the firmware never drew its screen ({colours} colours)");

    drop(dom);
    assert!(no_nvram(&name), "NVRAM left behind");
    assert!(!Path::new(&tpm_state_dir(&uuid)).exists(), "TPM state left behind");
}
