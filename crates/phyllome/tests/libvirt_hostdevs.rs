//! Hostdevs from the recorded AMD desktop (`fixtures/sysroots/`) attached to
//! and detached from a VM in the real libvirtd, stopped and running.

mod common;
use common::*;
use phyllome_engine::model::hostdev::Hostdev;
use phyllome_host::devices;
use std::path::Path;

// --- attach/detach in the real libvirtd ------------------------------------

fn hostdevs(xml: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("hostdev"))
        .map(|h| {
            let src = h.children().find(|c| c.has_tag_name("source")).unwrap();
            match h.attribute("type") {
                Some("pci") => {
                    let a = src.children().find(|c| c.has_tag_name("address")).unwrap();
                    let f =
                        |k: &str| u32::from_str_radix(a.attribute(k).unwrap().trim_start_matches("0x"), 16).unwrap();
                    format!("pci:{:04x}:{:02x}:{:02x}.{:x}", f("domain"), f("bus"), f("slot"), f("function"))
                }
                _ => {
                    let id = |t: &str| {
                        src.children().find(|c| c.has_tag_name(t)).unwrap().attribute("id").unwrap()[2..].to_string()
                    };
                    format!("usb:{}:{}", id("vendor"), id("product"))
                }
            }
        })
        .collect()
}

/// Whether this host itself has the device (live attach tests must never touch a real one).
fn host_has(dev: &str) -> bool {
    match Hostdev::parse(dev).unwrap() {
        Hostdev::Pci(a) => Path::new(&format!("/sys/bus/pci/devices/{a}")).exists(),
        Hostdev::Usb { vendor, product } => {
            devices::read_usb(Path::new("/")).iter().any(|u| u.spec() == format!("usb:{vendor:04x}:{product:04x}"))
        }
    }
}

#[test]
fn attach_and_detach_hostdevs_in_real_libvirtd() {
    require_libvirt();
    let name = format!("{PREFIX}hostdev");
    let dom = define_minimal_domain(&name);
    let amd = sysroot("amd-desktop-two-gpus");
    let amd = amd.to_str().unwrap();
    let (gpu, mouse, boot_gpu) = ("pci:0000:01:00.0", "usb:1532:0084", "pci:0000:0b:00.0");

    // An isolated GPU and a USB mouse from the recorded desktop, into a stopped VM.
    let (code, out, err) = attach(&[&name, gpu, "--root", amd]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("attached pci:0000:01:00.0 (VGA compatible controller: NVIDIA"), "{out}");
    assert!(out.contains("in its definition (the VM is not running)"), "{out}");
    assert!(err.contains("attach them too (pci:0000:01:00.1)"), "the GPU's audio function: {err}");
    let (code, out, err) = attach(&[&name, mouse, "--root", amd]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("Razer DeathAdder V2, 3-2"), "{out}");

    // The boot GPU: refused, then forced with the risk printed first.
    let (code, _, err) = attach(&[&name, boot_gpu, "--root", amd]);
    assert_eq!(code, Some(1));
    assert!(err.contains("the host's screen goes dark"), "{err}");
    let (code, _, err) = attach(&[&name, boot_gpu, "--root", amd, "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("warning: --force") && err.contains("the host's screen goes dark"), "{err}");

    // libvirt kept all three, managed, and its whole definition still validates.
    let xml = virsh_ok(&["dumpxml", "--inactive", &name]);
    assert_eq!(hostdevs(&xml), [gpu, mouse, boot_gpu], "{xml}");
    assert_eq!(xml.matches("mode='subsystem'").count(), 3);
    assert_eq!(xml.matches("managed='yes'").count(), 3);
    xmllint_domain(&xml).unwrap();

    // Attaching twice is libvirt's error, reported with the operation, and a conflict (exit 5).
    let (code, _, err) = attach(&[&name, gpu, "--root", amd]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("attach device to") && err.contains("already"), "{err}");

    for dev in [boot_gpu, gpu, mouse] {
        let out = phyllome(&["detach", &name, dev]);
        assert!(out.status.success(), "detach {dev}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("detached {dev} from {name}")));
    }
    assert!(hostdevs(&virsh_ok(&["dumpxml", "--inactive", &name])).is_empty());
    let out = phyllome(&["detach", &name, gpu]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not present"), "{}", String::from_utf8_lossy(&out.stderr));

    // A running VM: libvirt refuses a live hostdev this host does not have, so the change goes to the
    // definition for the next boot. Only with devices this host lacks: a live attach takes the real one.
    if host_has(mouse) || host_has(gpu) {
        eprintln!("skipping the running-VM part: this host has {mouse} or {gpu}");
        return;
    }
    virsh_ok(&["start", &name]);
    assert_eq!(dom.state(), "running");
    for dev in [mouse, gpu] {
        let (code, out, err) = attach(&[&name, dev, "--root", amd]);
        assert_eq!(code, Some(0), "{dev}: {err}");
        assert!(out.contains("from its next boot (libvirt refused the live change:"), "{dev}: {out}");
    }
    assert_eq!(hostdevs(&virsh_ok(&["dumpxml", "--inactive", &name])), [mouse, gpu]);
    assert!(hostdevs(&virsh_ok(&["dumpxml", &name])).is_empty(), "nothing reached the running VM");
    for dev in [mouse, gpu] {
        let out = phyllome(&["detach", &name, dev]);
        assert!(out.status.success(), "{dev}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("the running VM is unchanged"));
    }
    assert!(hostdevs(&virsh_ok(&["dumpxml", "--inactive", &name])).is_empty());
    drop(dom);
    assert!(!virsh(&["dominfo", &name]).status.success(), "domain left behind");
}
