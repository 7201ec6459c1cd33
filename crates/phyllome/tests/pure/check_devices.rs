//! `phyllome check`, `phyllome devices` and `phyllome attach`'s refusals
//! against the recorded host trees in `fixtures/sysroots/` (no libvirt: the
//! refusals come first), and hostdev XML against libvirt's schema.

use crate::common::*;
use phyllome_engine::model::hostdev::Hostdev;

// --- check: the command -------------------------------------------------------

#[test]
fn check_json_shape_and_exit_codes() {
    for (name, code) in [("virt-off-in-firmware", 1), ("amd-desktop-two-gpus", 0), ("intel-laptop-poor-iommu", 0)] {
        let root = sysroot(name);
        let out = phyllome(&["check", "--json", "--root", root.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(code), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let verdict = v["verdict"].as_str().unwrap();
        assert_eq!(verdict == "fail", code == 1, "{name}");
        for c in v["checks"].as_array().unwrap() {
            let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["fix", "id", "status", "summary"], "{c}");
            assert!(["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
        }
        // Live-only checks are not asked about a recorded tree.
        let lv = v["checks"].as_array().unwrap().iter().find(|c| c["id"] == "libvirt.connection").unwrap();
        assert!(lv["summary"].as_str().unwrap().contains("not the running host"), "{lv}");
    }
    let text = phyllome(&["check", "--root", sysroot("virt-off-in-firmware").to_str().unwrap()]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("FAIL  cpu.virtualization") && s.contains("fix: reboot into the firmware setup"), "{s}");
    assert!(s.contains("verdict: fail"), "{s}");
    let bad = phyllome(&["check", "--root", "/nonexistent/phyllome-root"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("phyllome: error: --root /nonexistent/phyllome-root"));
}

#[test]
fn devices_command_text_and_json() {
    let root = sysroot("amd-desktop-two-gpus");
    let out = phyllome(&["devices", "--json", "--root", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["iommu_groups"], 7);
    let gpu = v["pci"].as_array().unwrap().iter().find(|d| d["address"] == "0000:01:00.0").unwrap();
    assert_eq!(gpu["verdict"], "isolated");
    assert_eq!(gpu["iommu_group"], 1);
    assert_eq!(gpu["vendor_id"], "10de");
    assert!(gpu["detail"].as_str().unwrap().contains("0000:01:00.1"));
    assert_eq!(v["usb"][2]["vendor_id"], "1532");
    let text = phyllome(&["devices", "--root", sysroot("intel-laptop-poor-iommu").to_str().unwrap()]);
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("PCI devices (IOMMU on: 6 groups)"), "{s}");
    assert!(s.lines().any(|l| l.starts_with("0000:01:00.0") && l.contains("nvidia") && l.contains("shared")), "{s}");
    assert!(s.contains("3-1       046d:c52b  Logitech, Inc. Unifying Receiver"), "{s}");
}

#[test]
fn attach_refuses_risky_devices_without_force() {
    let laptop = sysroot("intel-laptop-poor-iommu");
    let laptop = laptop.to_str().unwrap();
    let vm = "phyllome-test-never-defined";
    for (dev, want) in [
        ("pci:0000:00:02.0", "host-critical (boot VGA"),
        ("pci:0000:04:00.0", "the host loses its root file system"),
        ("pci:0000:01:00.0", "also holds 0000:02:00.0"),
        ("pci:0000:00:14.0", "the host loses its network connection"),
        ("usb:1234:5678", "no USB device 1234:5678 is plugged in"),
    ] {
        let (code, out, err) = attach(&[vm, dev, "--root", laptop]);
        assert_eq!(code, Some(1), "{dev}");
        assert!(out.is_empty());
        assert!(err.contains("refusing to pass") && err.contains(want) && err.contains("--force"), "{dev}: {err}");
    }
    let virt_off = sysroot("virt-off-in-firmware");
    let (code, _, err) = attach(&[vm, "pci:0000:00:14.0", "--root", virt_off.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no IOMMU group"), "{err}");
    // Never, even with --force: bridges, unknown devices, bad names.
    for (dev, want) in [
        ("pci:0000:00:1c.0", "is a bridge"),
        ("pci:0000:09:00.0", "no PCI device 0000:09:00.0"),
        ("pci:0000:01:00", "invalid device"),
        ("sata:1", "usb:VENDOR:PRODUCT"),
    ] {
        let (code, _, err) = attach(&[vm, dev, "--root", laptop, "--force"]);
        assert_eq!(code, Some(1), "{dev}");
        assert!(err.contains(want), "{dev}: {err}");
    }
}

#[test]
fn hostdev_xml_validates_against_libvirts_schema() {
    for dev in ["pci:0000:01:00.1", "pci:abcd:ff:1f.7", "usb:1532:0084"] {
        let hostdev = Hostdev::parse(dev).unwrap().to_xml();
        let domain = format!(
            "<domain type='qemu'>\n<name>phyllome-test-schema</name>\n<memory unit='MiB'>64</memory>\n\
             <os><type arch='x86_64' machine='q35'>hvm</type></os>\n<devices>\n{hostdev}</devices>\n</domain>\n"
        );
        xmllint_domain(&domain).unwrap_or_else(|e| panic!("{dev}: {e}\n{domain}"));
    }
}
