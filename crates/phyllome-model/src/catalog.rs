//! The guest OS catalog: the one place that decides which virtual hardware
//! each guest OS gets, and why.
//!
//! A profile states intent ("virtio disk", "secure boot required"); the
//! builder (the `build` module) then adapts that intent to the host (KVM or TCG,
//! firmware, swtpm, render node) and records its own reasons. Every choice
//! carries its reason as data, so `phyllome os show` and `phyllome xml
//! --explain` print the same words the code acts on.

use serde::Serialize;

/// A choice and the reason for it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pick<T> {
    pub value: T,
    pub why: &'static str,
}

const fn pick<T>(value: T, why: &'static str) -> Pick<T> {
    Pick { value, why }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Linux,
    Windows,
    Macos,
    Bsd,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachinePolicy {
    Q35,
    I440fx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecureBoot {
    /// The guest refuses to install without it.
    Required,
    /// On when the host has secure-boot firmware with Microsoft keys.
    Preferred,
    /// Off unless the user asks (`--secure-boot`).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum FirmwarePolicy {
    Bios,
    Uefi { secure_boot: SecureBoot },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    Required,
    Preferred,
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuPolicy {
    /// host-model under KVM (migratable, near-native), the most TCG can do otherwise.
    HostModel,
    /// The same named model on every host.
    Fixed(&'static str),
    /// An Intel model macOS knows, even on AMD hosts.
    AppleIntel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClockPolicy {
    Utc,
    LocalTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    Virtio,
    Sata,
    Ide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "model")]
pub enum VideoPolicy {
    /// virtio-gpu; with `virgl`, 3D when the host can render it.
    Virtio {
        virgl: bool,
    },
    Vga,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputPolicy {
    /// virtio keyboard and tablet (PS/2 stays for the firmware's menus).
    Virtio,
    /// USB tablet on xHCI; keyboard on PS/2.
    UsbTablet,
    /// USB keyboard and tablet on xHCI.
    UsbKeyboardTablet,
    /// The machine's PS/2 keyboard and mouse only.
    Ps2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoundPolicy {
    /// virtio-sound where QEMU and libvirt have it, else the named model.
    VirtioOr(&'static str),
    Model(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalloonPolicy {
    /// virtio-balloon with free page reporting: freed guest memory returns to the host.
    FreePageReporting,
    Plain,
    None,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Resources {
    pub min_cpus: u32,
    /// Upper bound for the default vCPU count (the user may ask for more).
    pub max_default_cpus: u32,
    pub min_memory_mib: u64,
    pub recommended_memory_mib: u64,
    pub min_disk_gib: u64,
    pub recommended_disk_gib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub family: Family,
    /// libosinfo id, so virt-manager, GNOME Boxes and cockpit recognise the guest.
    pub osinfo: Option<&'static str>,
    pub machine: Pick<MachinePolicy>,
    pub firmware: Pick<FirmwarePolicy>,
    pub tpm: Pick<Need>,
    pub cpu: Pick<CpuPolicy>,
    pub hyperv: Pick<bool>,
    pub clock: Pick<ClockPolicy>,
    pub disk_bus: Pick<Bus>,
    pub cdrom_bus: Pick<Bus>,
    pub nic: Pick<&'static str>,
    pub video: Pick<VideoPolicy>,
    pub input: Pick<InputPolicy>,
    pub usb: Pick<Option<&'static str>>,
    pub sound: Pick<SoundPolicy>,
    pub rng: Pick<bool>,
    pub balloon: Pick<BalloonPolicy>,
    pub guest_agent: Pick<bool>,
    pub suspend: Pick<bool>,
    /// Windows: attach the virtio-win driver ISO.
    pub drivers_iso: bool,
    pub resources: Resources,
}

// Reasons shared by several profiles.
const Q35: &str =
    "q35 is a PCIe machine: native PCIe for virtio devices, AHCI built in, and what current firmware expects";
const RNG: &str = "virtio-rng feeds the guest's entropy pool from the host's /dev/urandom: fast boot, good keys";
const AGENT: &str = "qemu-guest-agent channel: clean shutdown when ACPI is ignored, filesystem freeze, IP addresses";
const NO_SUSPEND: &str = "S3/S4 disabled: guest suspend in a VM is unreliable and the host pauses VMs better";
const VIRTIO_DISK: &str =
    "virtio-blk: the fastest generic disk; discard passes TRIM so freed blocks return to the host";
const SATA_CDROM: &str = "install media on SATA (AHCI): every firmware and installer can boot it without drivers";
const VIRTIO_NIC: &str = "virtio-net: the fastest generic NIC";
const XHCI: &str = "qemu-xhci: one USB 3 controller for tablets, redirection and passthrough";
const UTC: &str = "UTC hardware clock, as Unix-like systems expect";

/// FreeBSD and NetBSD releases have no virtio-gpu console driver to rely on.
const BSD_VGA: Pick<VideoPolicy> = pick(
    VideoPolicy::Vga,
    "standard VGA: OVMF gives it a framebuffer every BSD console (efifb/genfb) and X driver can use",
);
const WIN_HYPERV: &str = "Hyper-V enlightenments: Windows runs much faster (timers, spinlocks, IPIs, TLB flushes) when it knows it is virtualized";
const WIN_CLOCK: &str = "Windows keeps the RTC in local time; hypervclock gives it a stable clock source";
const WIN_DISK: &str =
    "virtio-blk needs the viostor driver from the virtio-win ISO during setup (or use --disk-bus sata)";
const WIN_NIC: &str =
    "virtio-net needs the NetKVM driver from the virtio-win ISO (setup continues without network until then)";
const WIN_VIDEO: &str =
    "virtio-gpu: OVMF drives it during setup, viogpudo after; no 3D since Windows has no virtio 3D driver";
const WIN_INPUT: &str =
    "USB tablet: Windows has an in-box driver, so the pointer follows the console without extra drivers";
const WIN_SOUND: &str = "ich9 HD Audio: Windows has an in-box driver; its virtio-sound driver is not in-box";
const WIN_BALLOON: &str = "no balloon: Windows works better with fixed memory (ballooning fights its memory manager)";
const WIN_CPU: &str =
    "host-model under KVM (near-native, still movable to another host), the most TCG can emulate otherwise";

fn windows(
    id: &'static str,
    name: &'static str,
    description: &'static str,
    osinfo: &'static str,
    secure_boot: Pick<SecureBoot>,
    tpm: Pick<Need>,
    resources: Resources,
) -> Profile {
    Profile {
        id,
        name,
        description,
        family: Family::Windows,
        osinfo: Some(osinfo),
        machine: pick(MachinePolicy::Q35, Q35),
        firmware: pick(FirmwarePolicy::Uefi { secure_boot: secure_boot.value }, secure_boot.why),
        tpm,
        cpu: pick(CpuPolicy::HostModel, WIN_CPU),
        hyperv: pick(true, WIN_HYPERV),
        clock: pick(ClockPolicy::LocalTime, WIN_CLOCK),
        disk_bus: pick(Bus::Virtio, WIN_DISK),
        cdrom_bus: pick(Bus::Sata, SATA_CDROM),
        nic: pick("virtio", WIN_NIC),
        video: pick(VideoPolicy::Virtio { virgl: false }, WIN_VIDEO),
        input: pick(InputPolicy::UsbTablet, WIN_INPUT),
        usb: pick(Some("qemu-xhci"), XHCI),
        sound: pick(SoundPolicy::Model("ich9"), WIN_SOUND),
        rng: pick(true, "virtio-rng (viorng driver): entropy from the host"),
        balloon: pick(BalloonPolicy::None, WIN_BALLOON),
        guest_agent: pick(true, AGENT),
        suspend: pick(false, NO_SUSPEND),
        drivers_iso: true,
        resources,
    }
}

fn bsd(
    id: &'static str,
    name: &'static str,
    description: &'static str,
    osinfo: &'static str,
    video: Pick<VideoPolicy>,
) -> Profile {
    Profile {
        id,
        name,
        description,
        family: Family::Bsd,
        osinfo: Some(osinfo),
        machine: pick(MachinePolicy::Q35, Q35),
        firmware: pick(
            FirmwarePolicy::Uefi { secure_boot: SecureBoot::Off },
            "UEFI without secure boot: the BSDs boot UEFI but ship no Microsoft-signed loader",
        ),
        tpm: pick(Need::No, "no TPM: the BSD installers do not use one"),
        cpu: pick(CpuPolicy::HostModel, WIN_CPU),
        hyperv: pick(false, "no Hyper-V enlightenments: not Windows"),
        clock: pick(ClockPolicy::Utc, UTC),
        disk_bus: pick(
            Bus::Virtio,
            "virtio-blk: vtblk (FreeBSD), vioblk (OpenBSD), ld@virtio (NetBSD); discard passes TRIM",
        ),
        cdrom_bus: pick(Bus::Sata, SATA_CDROM),
        nic: pick("virtio", "virtio-net: vtnet (FreeBSD), vio (OpenBSD), vioif (NetBSD)"),
        video,
        input: pick(
            InputPolicy::UsbKeyboardTablet,
            "USB keyboard and tablet: every BSD has USB HID; virtio-input drivers are missing or new",
        ),
        usb: pick(Some("qemu-xhci"), XHCI),
        sound: pick(SoundPolicy::Model("ich9"), "ich9 HD Audio: snd_hda (FreeBSD), azalia (OpenBSD, NetBSD)"),
        rng: pick(true, "virtio-rng: virtio_random (FreeBSD), viornd (OpenBSD, NetBSD)"),
        balloon: pick(BalloonPolicy::Plain, "virtio-balloon: virtio_balloon (FreeBSD), viomb (OpenBSD, NetBSD)"),
        guest_agent: pick(true, "qemu-guest-agent channel (virtio-console): the agent is packaged for the BSDs"),
        suspend: pick(false, NO_SUSPEND),
        drivers_iso: false,
        resources: Resources {
            min_cpus: 1,
            max_default_cpus: 8,
            min_memory_mib: 512,
            recommended_memory_mib: 2048,
            min_disk_gib: 4,
            recommended_disk_gib: 32,
        },
    }
}

/// Every guest OS Phyllome has a model for, in display order.
pub fn profiles() -> Vec<Profile> {
    vec![
        Profile {
            id: "linux",
            name: "Linux",
            description: "Any current Linux distribution: every device is virtio, with 3D acceleration when the host can render it",
            family: Family::Linux,
            osinfo: Some("http://libosinfo.org/linux/2022"),
            machine: pick(MachinePolicy::Q35, Q35),
            firmware: pick(
                FirmwarePolicy::Uefi { secure_boot: SecureBoot::Off },
                "UEFI; secure boot off by default (unsigned kernels and modules just work), --secure-boot turns it on with Microsoft keys for shim",
            ),
            tpm: pick(Need::Preferred, "TPM 2.0 (swtpm, CRB) when the host has swtpm: measured boot and systemd-cryptenroll"),
            cpu: pick(CpuPolicy::HostModel, WIN_CPU),
            hyperv: pick(false, "no Hyper-V enlightenments: Linux uses kvmclock and paravirtual spinlocks"),
            clock: pick(ClockPolicy::Utc, "UTC hardware clock, kvmclock under KVM"),
            disk_bus: pick(Bus::Virtio, VIRTIO_DISK),
            cdrom_bus: pick(Bus::Sata, SATA_CDROM),
            nic: pick("virtio", VIRTIO_NIC),
            video: pick(
                VideoPolicy::Virtio { virgl: true },
                "virtio-gpu; virgl 3D when the host has a render node and QEMU's GL modules",
            ),
            input: pick(InputPolicy::Virtio, "virtio keyboard and tablet (PS/2 stays for the firmware menus)"),
            usb: pick(Some("qemu-xhci"), XHCI),
            // Not virtio-sound, though QEMU 8.2 and libvirt 10.4 have it: QEMU (10.0 here) refuses to
            // save its state ("non-migratable device: .../virtio-sound-device"), which rules out memory
            // snapshots, suspend to disk and live migration, for a small gain in sound latency.
            sound: pick(
                SoundPolicy::Model("ich9"),
                "ich9 HD Audio, which every kernel drives; not virtio-sound: QEMU cannot save its state, so a VM with it could not be snapshotted with its memory, saved or migrated live",
            ),
            rng: pick(true, RNG),
            balloon: pick(
                BalloonPolicy::FreePageReporting,
                "virtio-balloon with free page reporting: memory the guest frees goes back to the host",
            ),
            guest_agent: pick(true, AGENT),
            suspend: pick(false, NO_SUSPEND),
            drivers_iso: false,
            resources: Resources {
                min_cpus: 1,
                max_default_cpus: 8,
                min_memory_mib: 512,
                recommended_memory_mib: 4096,
                min_disk_gib: 4,
                recommended_disk_gib: 32,
            },
        },
        windows(
            "windows11",
            "Windows 11",
            "Windows 11: secure boot with Microsoft keys and TPM 2.0 as setup demands, Hyper-V enlightenments, virtio drivers from virtio-win",
            "http://microsoft.com/win/11",
            pick(SecureBoot::Required, "UEFI with secure boot and Microsoft keys: Windows 11 setup refuses to install without"),
            pick(Need::Required, "TPM 2.0 (swtpm, CRB): Windows 11 setup refuses to install without"),
            Resources {
                min_cpus: 2,
                max_default_cpus: 8,
                min_memory_mib: 4096,
                recommended_memory_mib: 8192,
                min_disk_gib: 64,
                recommended_disk_gib: 80,
            },
        ),
        windows(
            "windows10",
            "Windows 10",
            "Windows 10: UEFI (secure boot when the host has Microsoft keys), TPM 2.0 when swtpm exists, Hyper-V enlightenments",
            "http://microsoft.com/win/10",
            pick(SecureBoot::Preferred, "UEFI; secure boot with Microsoft keys when the host has them (Windows 10 boots either way)"),
            pick(Need::Preferred, "TPM 2.0 when the host has swtpm: BitLocker and an upgrade path to Windows 11"),
            Resources {
                min_cpus: 1,
                max_default_cpus: 8,
                min_memory_mib: 2048,
                recommended_memory_mib: 4096,
                min_disk_gib: 32,
                recommended_disk_gib: 64,
            },
        ),
        windows(
            "windows-server",
            "Windows Server",
            "Windows Server 2019/2022/2025: secure boot with Microsoft keys, TPM 2.0, Hyper-V enlightenments",
            "http://microsoft.com/win/2k22",
            pick(SecureBoot::Required, "UEFI with secure boot and Microsoft keys: a supported Windows Server configuration"),
            pick(Need::Required, "TPM 2.0 (swtpm, CRB): BitLocker and Windows Server 2025's security baseline"),
            Resources {
                min_cpus: 2,
                max_default_cpus: 8,
                min_memory_mib: 2048,
                recommended_memory_mib: 4096,
                min_disk_gib: 32,
                recommended_disk_gib: 64,
            },
        ),
        Profile {
            id: "macos",
            name: "macOS (OpenCore)",
            description: "macOS Big Sur or later booted through a user-supplied OpenCore image; the user supplies the applesmc OSK string",
            family: Family::Macos,
            osinfo: None,
            machine: pick(MachinePolicy::Q35, Q35),
            firmware: pick(
                FirmwarePolicy::Uefi { secure_boot: SecureBoot::Off },
                "UEFI without secure boot: OpenCore is not signed by Microsoft",
            ),
            tpm: pick(Need::No, "no TPM: macOS does not use one"),
            cpu: pick(
                CpuPolicy::AppleIntel,
                "an Intel CPU model macOS supports (Haswell-noTSX, Penryn where that is all the host can do), also on AMD hosts",
            ),
            hyperv: pick(false, "no Hyper-V enlightenments: not Windows"),
            clock: pick(ClockPolicy::Utc, UTC),
            disk_bus: pick(Bus::Virtio, "virtio-blk: macOS has had a virtio-blk driver since Big Sur"),
            cdrom_bus: pick(Bus::Sata, "OpenCore and the recovery image on SATA (AHCI), which the firmware and macOS boot from"),
            nic: pick("virtio", "virtio-net: macOS has had a virtio-net driver since Big Sur"),
            video: pick(VideoPolicy::Vga, "standard VGA: OpenCore's GOP drives it and macOS has no virtio-gpu driver"),
            input: pick(InputPolicy::UsbKeyboardTablet, "USB keyboard and tablet: macOS has neither virtio-input nor PS/2 drivers"),
            usb: pick(Some("qemu-xhci"), "qemu-xhci: macOS drives xHCI natively"),
            sound: pick(SoundPolicy::Model("ich9"), "ich9 HD Audio: the only sound device macOS can drive (with AppleALC)"),
            rng: pick(false, "no virtio-rng: macOS has no driver"),
            balloon: pick(BalloonPolicy::None, "no balloon: macOS has no driver"),
            guest_agent: pick(false, "no guest agent: none exists for macOS"),
            suspend: pick(false, NO_SUSPEND),
            drivers_iso: false,
            resources: Resources {
                min_cpus: 2,
                max_default_cpus: 8,
                min_memory_mib: 4096,
                recommended_memory_mib: 8192,
                min_disk_gib: 64,
                recommended_disk_gib: 128,
            },
        },
        bsd("freebsd", "FreeBSD", "FreeBSD 13 or later, on virtio devices", "http://freebsd.org/freebsd/14.0", BSD_VGA),
        bsd(
            "openbsd",
            "OpenBSD",
            "OpenBSD 7 or later, on virtio devices",
            "http://openbsd.org/openbsd/7.5",
            pick(VideoPolicy::Virtio { virgl: false }, "virtio-gpu: OpenBSD drives it with viogpu(4) since 7.1"),
        ),
        bsd("netbsd", "NetBSD", "NetBSD 9 or later, on virtio devices", "http://netbsd.org/netbsd/9.0", BSD_VGA),
        Profile {
            id: "legacy",
            name: "Legacy (ReactOS, DOS, ...)",
            description: "Systems without virtio drivers: i440fx with SeaBIOS, IDE disk, e1000 network and VGA",
            family: Family::Legacy,
            osinfo: None,
            machine: pick(MachinePolicy::I440fx, "i440fx: the PCI chipset older systems were written for"),
            firmware: pick(FirmwarePolicy::Bios, "SeaBIOS: a PC BIOS, for systems that predate UEFI"),
            tpm: pick(Need::No, "no TPM: legacy systems have no driver"),
            cpu: pick(CpuPolicy::Fixed("qemu64"), "qemu64: a plain x86-64 CPU old systems do not trip over, the same on every host"),
            hyperv: pick(false, "no Hyper-V enlightenments: they confuse pre-Vista systems"),
            clock: pick(ClockPolicy::LocalTime, "RTC in local time, as DOS and older Windows-like systems expect"),
            disk_bus: pick(Bus::Ide, "IDE: every legacy system has a driver"),
            cdrom_bus: pick(Bus::Ide, "IDE CD-ROM: bootable from SeaBIOS, drivers everywhere"),
            nic: pick("e1000", "Intel e1000: the most widely supported emulated NIC"),
            video: pick(VideoPolicy::Vga, "standard VGA with VBE: works from DOS to ReactOS"),
            input: pick(InputPolicy::Ps2, "PS/2 keyboard and mouse: no USB stack needed"),
            usb: pick(None, "no USB controller: PS/2 input is enough"),
            sound: pick(SoundPolicy::Model("ac97"), "AC'97: the most widely supported emulated sound card"),
            rng: pick(false, "no virtio-rng: no driver"),
            balloon: pick(BalloonPolicy::None, "no balloon: no driver"),
            guest_agent: pick(false, "no guest agent: none exists"),
            suspend: pick(false, NO_SUSPEND),
            drivers_iso: false,
            resources: Resources {
                min_cpus: 1,
                max_default_cpus: 1,
                min_memory_mib: 64,
                recommended_memory_mib: 1024,
                min_disk_gib: 1,
                recommended_disk_gib: 16,
            },
        },
    ]
}

/// Looks up a profile by id.
pub fn profile(id: &str) -> Option<Profile> {
    profiles().into_iter().find(|p| p.id == id)
}

/// All profile ids, for error messages and completion.
pub fn ids() -> Vec<&'static str> {
    profiles().iter().map(|p| p.id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_cover_the_issue_list() {
        let ids = ids();
        for want in
            ["linux", "windows11", "windows10", "windows-server", "macos", "freebsd", "openbsd", "netbsd", "legacy"]
        {
            assert!(ids.contains(&want), "{want} missing");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn windows11_demands_secure_boot_and_tpm() {
        let p = profile("windows11").unwrap();
        assert_eq!(p.firmware.value, FirmwarePolicy::Uefi { secure_boot: SecureBoot::Required });
        assert_eq!(p.tpm.value, Need::Required);
        assert_eq!(p.balloon.value, BalloonPolicy::None);
        assert!(p.hyperv.value);
    }

    #[test]
    fn minimums_do_not_exceed_recommendations() {
        for p in profiles() {
            let r = p.resources;
            assert!(r.min_memory_mib <= r.recommended_memory_mib, "{}", p.id);
            assert!(r.min_disk_gib <= r.recommended_disk_gib, "{}", p.id);
            assert!(r.min_cpus <= r.max_default_cpus, "{}", p.id);
        }
    }
}
