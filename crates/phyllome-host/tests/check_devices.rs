//! `phyllome-host`'s readiness checks and passthrough verdicts against the
//! recorded host trees in `fixtures/sysroots/`: an Intel laptop with poor
//! IOMMU groups, an AMD desktop with two GPUs in clean groups, a PC with
//! virtualization off in its firmware, a nested VM like our test machines.
//! (The `check`, `devices` and `attach` commands over the same trees are the
//! `phyllome` crate's tests.)

use phyllome_host::check::{self, DiskSpace, Inputs, Report, Status, User, Versions};
use phyllome_host::devices::{self, PciDevice, Verdict};
use phyllome_host::kvm::Probe;
use phyllome_model::host::KvmState;
use phyllome_model::hostdev::PciAddress;
use std::path::{Path, PathBuf};

fn sysroot(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sysroots").join(name);
    p.canonicalize().unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

const FIXTURES: [&str; 4] = ["intel-laptop-poor-iommu", "amd-desktop-two-gpus", "virt-off-in-firmware", "nested-vm"];

/// The live inputs of a healthy host: KVM probe verdict, libvirtd versions, 200 GiB free.
fn live(probe: Option<KvmState>) -> Inputs {
    Inputs {
        kvm_probe: probe.map(|state| Probe {
            state,
            detail: match state {
                KvmState::Usable => "a probe guest ran its firmware under KVM".into(),
                _ => "the probe guest crashed under KVM: KVM internal error. Suberror: 1".into(),
            },
        }),
        libvirt: Some(Ok(Versions { libvirt: "9.0.0".into(), qemu: "7.2.0".into() })),
        uri: "qemu:///system".into(),
        disk: Some(DiskSpace { path: "/var/lib/libvirt/images/phyllome".into(), free_bytes: 200 << 30 }),
        user: User::root(),
        not_live: None,
        migrations: Some(vec![]),
    }
}

fn get<'a>(r: &'a Report, id: &str) -> &'a check::Check {
    r.get(id).unwrap_or_else(|| panic!("no check {id}"))
}

fn status(r: &Report, id: &str) -> Status {
    get(r, id).status
}

fn fix<'a>(r: &'a Report, id: &str) -> &'a str {
    get(r, id).fix.as_deref().unwrap_or_else(|| panic!("{id} has no fix: {:?}", get(r, id)))
}

fn pci<'a>(list: &'a [PciDevice], addr: &str) -> &'a PciDevice {
    let a = PciAddress::parse(addr).unwrap();
    list.iter().find(|d| d.address == a).unwrap_or_else(|| panic!("no PCI device {addr}"))
}

// --- check: the report's shape ----------------------------------------------

#[test]
fn every_fixture_reports_every_check_with_a_fix_unless_it_passes() {
    let required = [
        "cpu.virtualization",
        "kvm.device",
        "kvm.functional",
        "kvm.nested",
        "vhost-net",
        "tun",
        "cgroup.controllers",
        "hugepages",
        "iommu.firmware",
        "iommu.kernel",
        "vfio.modules",
        "firmware.uefi",
        "firmware.secureboot",
        "tpm.swtpm",
        "gpu.rendernode",
        "virtiofsd",
        "qemu.version",
        "libvirt.connection",
        "libvirt.version",
        "resources.cpu",
        "resources.memory",
        "resources.disk",
        "migrations",
        "secure-guest",
    ];
    for name in FIXTURES {
        let r = check::run(&sysroot(name), &live(Some(KvmState::Usable)));
        let ids: Vec<&str> = r.checks.iter().map(|c| c.id).collect();
        assert_eq!(ids, required, "{name}");
        for c in &r.checks {
            assert!(!c.summary.is_empty(), "{name} {}", c.id);
            assert_eq!(c.fix.is_none(), c.status == Status::Pass, "{name} {}: {c:?}", c.id);
        }
        assert_eq!(r.verdict, r.checks.iter().map(|c| c.status).max().unwrap(), "{name}");
    }
}

// --- check: per fixture -------------------------------------------------------

#[test]
fn intel_laptop_is_ready_but_lacks_swtpm_and_virgl() {
    let r = check::run(&sysroot("intel-laptop-poor-iommu"), &live(Some(KvmState::Usable)));
    let warned: Vec<&str> = r.checks.iter().filter(|c| c.status != Status::Pass).map(|c| c.id).collect();
    assert_eq!(warned, ["tpm.swtpm", "gpu.rendernode", "virtiofsd"], "{r:#?}");
    assert_eq!(r.verdict, Status::Warn);
    assert!(get(&r, "cpu.virtualization").summary.contains("VT-x"));
    assert!(get(&r, "kvm.nested").summary.contains("kvm_intel nested=Y"));
    assert!(get(&r, "iommu.firmware").summary.contains("DMAR"));
    assert!(get(&r, "iommu.kernel").summary.contains("6 IOMMU groups"));
    assert!(get(&r, "vfio.modules").summary.contains("available"), "found in modules.dep");
    assert!(get(&r, "cgroup.controllers").summary.contains("cgroup v2"));
    // Ubuntu: apt packages.
    assert_eq!(fix(&r, "tpm.swtpm"), "apt install swtpm swtpm-tools");
    assert_eq!(fix(&r, "gpu.rendernode"), "apt install qemu-system-gui");
    assert!(fix(&r, "virtiofsd").starts_with("apt install virtiofsd"));
}

#[test]
fn amd_desktop_passes_everything() {
    let r = check::run(&sysroot("amd-desktop-two-gpus"), &live(Some(KvmState::Usable)));
    assert_eq!(r.verdict, Status::Pass, "{r:#?}");
    assert!(get(&r, "iommu.firmware").summary.contains("IVRS"));
    assert!(get(&r, "iommu.kernel").summary.contains("passthrough mode (iommu=pt)"));
    assert!(get(&r, "hugepages").summary.contains("8192 huge pages"));
    assert!(get(&r, "firmware.secureboot").summary.contains("30-edk2-ovmf-x64-sb-enrolled.json"));
    assert!(get(&r, "gpu.rendernode").summary.contains("virgl"));
    // Fedora's virtiofsd package, found through its vhost-user descriptor.
    assert!(get(&r, "virtiofsd").summary.contains("/usr/libexec/virtiofsd"));
    assert!(get(&r, "kvm.functional").summary.contains("KVM runs guests"));
}

#[test]
fn virtualization_off_in_firmware_says_where_to_turn_it_on() {
    let r = check::run(&sysroot("virt-off-in-firmware"), &live(None));
    assert_eq!(r.verdict, Status::Fail);
    assert!(r.failed());
    for id in ["cpu.virtualization", "kvm.device", "kvm.functional"] {
        assert_eq!(status(&r, id), Status::Fail, "{id}");
        let f = fix(&r, id);
        assert!(f.contains("firmware setup") && f.contains("'Intel Virtualization Technology' (VT-x"), "{id}: {f}");
    }
    assert!(get(&r, "kvm.functional").summary.contains("slow TCG emulation"));
    assert_eq!(status(&r, "iommu.firmware"), Status::Warn);
    assert!(fix(&r, "iommu.firmware").contains("'VT-d'"));
    // Intel: both parameters, written for Debian's GRUB.
    assert_eq!(status(&r, "iommu.kernel"), Status::Warn);
    let f = fix(&r, "iommu.kernel");
    assert!(f.contains("`intel_iommu=on iommu=pt`") && f.contains("update-grub"), "{f}");
    assert!(f.starts_with("first enable the IOMMU"), "{f}");
    assert_eq!(status(&r, "firmware.uefi"), Status::Fail);
    assert_eq!(fix(&r, "firmware.uefi"), "apt install ovmf");
    assert_eq!(status(&r, "resources.memory"), Status::Warn, "8 GiB is below the recommended 16");
    assert_eq!(status(&r, "resources.cpu"), Status::Pass);
    assert_eq!(status(&r, "vhost-net"), Status::Warn);
    assert!(fix(&r, "vhost-net").contains("modprobe vhost_net"));
}

#[test]
fn nested_vm_with_broken_kvm_fails_kvm_functional() {
    let r = check::run(&sysroot("nested-vm"), &live(Some(KvmState::Broken)));
    assert_eq!(r.verdict, Status::Fail);
    let f = get(&r, "kvm.functional");
    assert_eq!(f.status, Status::Fail);
    assert!(f.summary.contains("KVM internal error") && f.summary.contains("slow TCG emulation"), "{}", f.summary);
    assert!(fix(&r, "kvm.functional").contains("nested"), "{}", fix(&r, "kvm.functional"));
    assert_eq!(status(&r, "kvm.device"), Status::Pass, "the device exists; only the probe shows it is broken");
    assert_eq!(status(&r, "cpu.virtualization"), Status::Warn, "no svm, but kvm_pvm provides /dev/kvm");
    // AMD: iommu=pt only, and the VM gets told to pass devices through on its host.
    let k = fix(&r, "iommu.kernel");
    assert!(k.contains("`iommu=pt`") && !k.contains("intel_iommu"), "{k}");
    assert!(fix(&r, "iommu.firmware").contains("virtual IOMMU"));
    assert_eq!(status(&r, "cgroup.controllers"), Status::Pass, "cgroup v1 hierarchy");
    assert_eq!(status(&r, "resources.cpu"), Status::Warn);
    assert!(fix(&r, "resources.cpu").contains("more vCPUs"));
    // With a working probe the same tree has no failure.
    assert!(!check::run(&sysroot("nested-vm"), &live(Some(KvmState::Usable))).failed());
}

#[test]
fn missing_libvirtd_and_small_disk_fail_with_fixes() {
    let mut inputs = live(Some(KvmState::Usable));
    inputs.libvirt = Some(Err("Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file".into()));
    inputs.disk = Some(DiskSpace { path: "/var/lib/libvirt/images/phyllome".into(), free_bytes: 3 << 30 });
    let r = check::run(&sysroot("amd-desktop-two-gpus"), &inputs);
    assert_eq!(status(&r, "libvirt.connection"), Status::Fail);
    // Fedora with systemd.
    assert_eq!(fix(&r, "libvirt.connection"), "`systemctl enable --now libvirtd`");
    assert_eq!(status(&r, "libvirt.version"), Status::Warn);
    assert_eq!(status(&r, "resources.disk"), Status::Fail);
    assert!(get(&r, "resources.disk").summary.contains("3 GiB free"));
    let r = check::run(&sysroot("nested-vm"), &inputs);
    assert_eq!(fix(&r, "libvirt.connection"), "start the daemons: `virtlogd -d && libvirtd -d`", "no systemd");
}

// --- devices: verdicts per fixture ------------------------------------------

#[test]
fn intel_laptop_devices_show_every_verdict() {
    let list = devices::read_pci(&sysroot("intel-laptop-poor-iommu"));
    assert_eq!(list.len(), 15);
    let igpu = pci(&list, "0000:00:02.0");
    assert_eq!(igpu.verdict, Verdict::HostCritical);
    assert!(igpu.host_critical[0].starts_with("boot VGA"));
    assert_eq!(igpu.driver.as_deref(), Some("i915"));
    assert_eq!(igpu.device, "Alder Lake-P Integrated Graphics Controller");
    let nvme = pci(&list, "0000:04:00.0");
    assert_eq!(nvme.verdict, Verdict::HostCritical);
    assert_eq!(nvme.host_critical, ["controller of the root file system (/dev/nvme0n1p2)"]);
    let wifi = pci(&list, "0000:00:14.3");
    assert_eq!(wifi.host_critical, ["NIC of the default route (wlp0s20f3)"]);
    // The dGPU shares its group with the card reader: shared, naming it.
    let dgpu = pci(&list, "0000:01:00.0");
    assert_eq!(dgpu.verdict, Verdict::Shared);
    let others: Vec<String> = dgpu.shared_with().map(|p| p.address.to_string()).collect();
    assert_eq!(others, ["0000:02:00.0"]);
    assert!(dgpu.verdict_detail().contains("RTS525A PCI Express Card Reader"), "{}", dgpu.verdict_detail());
    // The USB controller's only group peers are its functions, but one carries the default route.
    let xhci = pci(&list, "0000:00:14.0");
    assert_eq!(xhci.verdict, Verdict::Shared);
    assert!(xhci.verdict_detail().contains("NIC of the default route"), "{}", xhci.verdict_detail());
    // The PCH audio's group holds only its own slot's functions: isolated, and they go with it.
    let audio = pci(&list, "0000:00:1f.3");
    assert_eq!(audio.verdict, Verdict::Isolated);
    assert_eq!(audio.companions().count(), 3);
    assert_eq!(pci(&list, "0000:00:00.0").verdict, Verdict::Bridge);
    // Not in this tree's pci.ids excerpt: lspci's fallback naming.
    assert_eq!(pci(&list, "0000:00:1d.0").device, "Device 51b0");
    assert_eq!(pci(&list, "0000:02:00.0").class_name, "Unassigned class");

    let usb = devices::read_usb(&sysroot("intel-laptop-poor-iommu"));
    let paths: Vec<&str> = usb.iter().map(|u| u.bus_path.as_str()).collect();
    assert_eq!(paths, ["3-1", "3-6", "3-10"], "no root hub, no interface, numeric order");
    assert_eq!((usb[0].vendor.as_str(), usb[0].product.as_str()), ("Logitech, Inc.", "Unifying Receiver"));
    assert_eq!(usb[1].product, "Integrated_Webcam_HD", "sysfs string when usb.ids lacks the product");
    assert_eq!((usb[2].vendor.as_str(), usb[2].product.as_str()), ("Intel Corp.", "AX211 Bluetooth"));
    assert_eq!(usb[0].spec(), "usb:046d:c52b");
}

#[test]
fn amd_desktop_gpus_are_in_clean_groups() {
    let list = devices::read_pci(&sysroot("amd-desktop-two-gpus"));
    // The passthrough GPU (already on vfio-pci) and its audio function: isolated.
    for a in ["0000:01:00.0", "0000:01:00.1"] {
        let d = pci(&list, a);
        assert_eq!(d.verdict, Verdict::Isolated, "{a}: {}", d.verdict_detail());
        assert_eq!(d.driver.as_deref(), Some("vfio-pci"));
    }
    assert_eq!(pci(&list, "0000:01:00.0").device, "AD102 [GeForce RTX 4090]", "names from usr/share/hwdata/pci.ids");
    // The boot GPU is the host's; its audio function shares a group with it.
    assert_eq!(pci(&list, "0000:0b:00.0").verdict, Verdict::HostCritical);
    assert_eq!(pci(&list, "0000:0b:00.1").verdict, Verdict::Shared);
    // Root on LUKS over NVMe, default route on a bridge over the I211.
    let nvme = pci(&list, "0000:02:00.0");
    assert_eq!(nvme.verdict, Verdict::HostCritical);
    assert!(nvme.host_critical[0].contains("/dev/mapper/luks-"), "{:?}", nvme.host_critical);
    assert_eq!(pci(&list, "0000:05:00.0").host_critical, ["NIC of the default route (br0)"]);
    assert_eq!(pci(&list, "0000:0c:00.3").verdict, Verdict::Isolated, "USB controller with its sibling function");
    let usb = devices::read_usb(&sysroot("amd-desktop-two-gpus"));
    assert_eq!(usb.iter().map(|u| u.bus_path.as_str()).collect::<Vec<_>>(), ["1-1", "1-1.2", "3-2"]);
    assert_eq!(usb[1].vendor, "Kingston", "no usb.ids: the device's own strings");
}

#[test]
fn without_an_iommu_nothing_can_be_passed_through() {
    let list = devices::read_pci(&sysroot("virt-off-in-firmware"));
    assert_eq!(pci(&list, "0000:00:14.0").verdict, Verdict::NoIommu);
    // Root on /dev/sda2, found through sys/block/sda.
    assert_eq!(pci(&list, "0000:00:17.0").host_critical, ["controller of the root file system (/dev/sda2)"]);
    assert_eq!(pci(&list, "0000:00:1f.6").verdict, Verdict::HostCritical);
    assert_eq!(pci(&list, "0000:00:02.0").verdict, Verdict::HostCritical);

    let list = devices::read_pci(&sysroot("nested-vm"));
    assert_eq!(pci(&list, "0000:00:02.0").host_critical, ["controller of the root file system (/dev/vda)"]);
    assert_eq!(pci(&list, "0000:00:03.0").host_critical, ["NIC of the default route (eth0)"]);
    assert_eq!(pci(&list, "0000:00:05.0").verdict, Verdict::NoIommu);
    assert_eq!(pci(&list, "0000:00:05.0").device, "Virtio 1.0 RNG");
    assert_eq!(devices::read_devices(&sysroot("nested-vm")).iommu_groups, 0);
    assert!(devices::read_usb(&sysroot("nested-vm")).is_empty());
}
