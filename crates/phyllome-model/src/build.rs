//! Turns a profile, a request and the host's facts into a domain, recording
//! why each device was chosen.

use crate::capability::Feature;
use crate::catalog::{
    self, BalloonPolicy, Bus, ClockPolicy, CpuPolicy, Family, FirmwarePolicy, InputPolicy, MachinePolicy, Need,
    Profile, SecureBoot, SoundPolicy, VideoPolicy,
};
use crate::domain::*;
use crate::host::{FirmwareDescriptor, Host, KvmState};
use crate::input::{self, human_mib, InputError};
use serde::Serialize;
use thiserror::Error;

/// Largest disk we create (64 TiB, qcow2's practical ceiling with 64 KiB clusters).
pub const MAX_DISK_GIB: u64 = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("unknown OS id {0:?}; known ids: {1}")]
    UnknownOs(String, String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{os} needs at least {min} of memory; {asked} was asked for")]
    MemoryBelowMinimum { os: &'static str, min: String, asked: String },
    #[error("{asked} of memory is more than this host's {host} of RAM")]
    MemoryAboveHost { asked: String, host: String },
    #[error("{os} needs at least {min} of memory, but this host has only {host} of RAM")]
    HostTooSmall { os: &'static str, min: String, host: String },
    #[error("--cpus must be at least 1")]
    ZeroCpus,
    #[error("{asked} vCPUs is more than libvirt allows for this machine ({max})")]
    TooManyCpus { asked: u32, max: u32 },
    #[error("{asked} vCPUs is more than this host's {host} logical CPUs")]
    CpusAboveHost { asked: u32, host: u32 },
    #[error("{os} usually needs a disk of at least {min} GiB; {asked} GiB was asked for (--force to make it anyway)")]
    DiskBelowMinimum { os: &'static str, min: u64, asked: u64 },
    #[error("disks are made in whole GiB: {asked} is {gib} GiB; say {down}G or {up}G")]
    DiskNotWholeGib { asked: String, gib: String, down: u64, up: u64 },
    #[error("memory is given in whole MiB: {asked} is {mib} MiB")]
    MemoryNotWholeMib { asked: String, mib: String },
    #[error("a {asked} GiB disk is larger than the {max} GiB Phyllome creates")]
    DiskTooLarge { asked: u64, max: u64 },
    #[error("{os} needs UEFI firmware, and this host's libvirt reports none. Fix: install OVMF (Debian: apt install ovmf; Fedora: dnf install edk2-ovmf) and restart libvirtd")]
    NoUefi { os: &'static str },
    #[error("{os} needs UEFI firmware with secure boot and Microsoft keys, and this host has none. Fix: install a secure-boot OVMF build (Debian: apt install ovmf; Fedora: dnf install edk2-ovmf) and restart libvirtd")]
    NoSecureBootFirmware { os: &'static str },
    #[error("{os} needs a TPM 2.0, and this host cannot emulate one ({why}). Fix: install swtpm (Debian: apt install swtpm swtpm-tools; Fedora: dnf install swtpm swtpm-tools) and restart libvirtd")]
    NoTpm { os: &'static str, why: &'static str },
    #[error(
        "macOS boots through OpenCore, which Phyllome does not ship: give your OpenCore image with --opencore PATH"
    )]
    MissingOpenCore,
    #[error(
        "macOS needs Apple's SMC key (OSK), which Phyllome does not ship: give it with --osk TEXT (64 characters)"
    )]
    MissingOsk,
    #[error("the OSK string must be 64 printable ASCII characters; the one given has {0}")]
    BadOsk(usize),
    #[error("--{0} is only for {1} guests")]
    OptionNotForOs(&'static str, &'static str),
    #[error(transparent)]
    Unsupported(#[from] crate::Unsupported),
}

/// Where the VM's main disk lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRef {
    pub pool: String,
    pub volume: String,
    /// The volume's path; also the usage id of its LUKS passphrase secret.
    pub path: String,
    pub encryption: Encryption,
}

/// How the main disk is encrypted at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Not encrypted (`--no-encrypt`).
    None,
    /// LUKS with a random key held in a private libvirt secret.
    Secret,
    /// LUKS with a passphrase the user types at each start.
    Prompt,
}

impl Encryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::Secret => "secret",
            Encryption::Prompt => "prompt",
        }
    }

    pub fn parse(s: &str) -> Option<Encryption> {
        [Encryption::None, Encryption::Secret, Encryption::Prompt].into_iter().find(|e| e.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkChoice {
    /// No NIC at all.
    None,
    /// QEMU user-mode networking (no host setup, NAT through the host).
    User,
    /// A libvirt network by name.
    Named(String),
    #[default]
    Default,
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub os: String,
    pub name: String,
    pub memory: Option<String>,
    pub cpus: Option<u32>,
    pub disk_size: Option<String>,
    pub iso: Option<String>,
    pub drivers: Option<String>,
    pub secure_boot: bool,
    pub disk_bus: Option<Bus>,
    pub network: NetworkChoice,
    pub opencore: Option<String>,
    pub osk: Option<String>,
    pub direct_boot: Option<DirectBoot>,
    pub disk: Option<DiskRef>,
    /// Make a disk below the OS's usual minimum anyway (`--force`).
    pub force: bool,
    /// Host folders shared over virtiofs (checked by the engine: paths, tags).
    pub shares: Vec<crate::domain::Share>,
    /// Phyllome's version, recorded in the domain's metadata.
    pub version: String,
    /// The manifest file or folder `phyllome apply` makes the VM from (absolute), recorded in the metadata.
    pub applied_from: Option<String>,
}

/// One decision, for `--explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub item: &'static str,
    pub choice: String,
    pub why: String,
}

/// A built VM: the domain plus the decisions and warnings behind it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub profile: Profile,
    pub domain: Domain,
    pub disk_gib: u64,
    /// The main disk the domain refers to.
    pub disk: Option<DiskRef>,
    pub choices: Vec<Choice>,
    pub warnings: Vec<String>,
}

struct Builder<'a> {
    host: &'a Host,
    profile: Profile,
    choices: Vec<Choice>,
    warnings: Vec<String>,
}

impl Builder<'_> {
    fn note(&mut self, item: &'static str, choice: impl Into<String>, why: impl Into<String>) {
        self.choices.push(Choice { item, choice: choice.into(), why: why.into() });
    }
}

/// Builds the domain for `req` on `host`.
pub fn build(req: &Request, host: &Host) -> Result<Plan, BuildError> {
    let profile =
        catalog::profile(&req.os).ok_or_else(|| BuildError::UnknownOs(req.os.clone(), catalog::ids().join(", ")))?;
    input::validate_name(&req.name)?;
    for path in [&req.iso, &req.drivers, &req.opencore].into_iter().flatten() {
        input::validate_path(path)?;
    }
    if let Some(b) = &req.direct_boot {
        input::validate_path(&b.kernel)?;
        if let Some(i) = &b.initrd {
            input::validate_path(i)?;
        }
    }
    let mut b = Builder { host, profile: profile.clone(), choices: Vec::new(), warnings: Vec::new() };
    let p = &profile;

    let kind = accelerator(&mut b);
    let memory_mib = memory(&mut b, req)?;
    let vcpus = cpus(&mut b, req)?;
    let disk_gib = disk_size(&mut b, req)?;
    let machine = match p.machine.value {
        MachinePolicy::Q35 => Machine::Q35,
        MachinePolicy::I440fx => Machine::Pc,
    };
    b.note("machine", machine.as_str(), p.machine.why);
    let firmware = firmware(&mut b, req)?;
    nvram_note(&mut b, &firmware);
    let tpm = tpm(&mut b)?;
    let cpu = cpu(&mut b, vcpus);
    let hyperv = hyperv(&mut b);
    let clock = clock(&mut b, !hyperv.is_empty());
    let smm = matches!(firmware, Firmware::Efi { secure_boot: true, .. });
    let features = Features { smm, hyperv, vmport_off: true };

    let mut devices = Vec::new();
    disks(&mut b, req, &mut devices)?;
    if let Some(model) = p.usb.value {
        devices.push(Device::UsbController(model));
        b.note("usb", model, p.usb.why);
    }
    network(&mut b, req, &mut devices);
    inputs(&mut b, &mut devices);
    display(&mut b, &mut devices);
    sound(&mut b, &mut devices);
    // The serial output is also kept in libvirt's log folder (through virtlogd), so
    // boot messages can be read after the fact.
    devices.push(Device::SerialConsole { log: format!("/var/log/libvirt/qemu/{}-serial.log", req.name) });
    b.note("serial", "serial console (pty)", "a text console for `phyllome console` and early boot messages");
    if p.guest_agent.value {
        devices.push(Device::GuestAgentChannel);
        b.note("guest-agent", "virtio-serial channel org.qemu.guest_agent.0", p.guest_agent.why);
    }
    if let Some(model) = tpm {
        devices.push(Device::Tpm { model });
    }
    if p.rng.value {
        devices.push(Device::Rng);
        b.note("rng", "virtio-rng (/dev/urandom)", p.rng.why);
    }
    for sh in &req.shares {
        b.host.check(if sh.readonly { Feature::ReadonlyVirtiofs } else { Feature::Virtiofs })?;
        devices.push(Device::Share(sh.clone()));
        let mode = if sh.readonly { "read-only (libvirt's <readonly/>, virtiofsd --readonly)" } else { "writable" };
        b.note(
            "share",
            format!("{} as {}, {mode}", sh.dir, sh.tag),
            "virtiofs, with shared memory (memfd) for virtiofsd".to_string(),
        );
    }
    match p.balloon.value {
        BalloonPolicy::FreePageReporting => devices.push(Device::Balloon { free_page_reporting: true }),
        BalloonPolicy::Plain => devices.push(Device::Balloon { free_page_reporting: false }),
        BalloonPolicy::None => devices.push(Device::NoBalloon),
    }
    let balloon_name = match p.balloon.value {
        BalloonPolicy::None => "none",
        BalloonPolicy::Plain => "virtio-balloon",
        BalloonPolicy::FreePageReporting => "virtio-balloon, free page reporting",
    };
    b.note("balloon", balloon_name, p.balloon.why);
    b.note("suspend", if p.suspend.value { "S3/S4 on" } else { "S3/S4 off" }, p.suspend.why);

    let qemu_args = macos_args(&mut b, req)?;
    let domain = Domain {
        kind,
        name: req.name.clone(),
        title: None,
        metadata: Metadata {
            os_id: p.id.to_string(),
            version: req.version.clone(),
            osinfo: p.osinfo.map(str::to_string),
            encryption: req.disk.as_ref().map_or(Encryption::None, |d| d.encryption).as_str().to_string(),
            asked: crate::domain::Asked {
                cpus: req.cpus,
                memory: req.memory.clone(),
                disk_size: req.disk_size.clone(),
            },
            applied_from: req.applied_from.clone(),
        },
        memory_mib,
        vcpus,
        machine,
        firmware,
        direct_boot: req.direct_boot.clone(),
        features,
        cpu,
        clock,
        suspend: p.suspend.value,
        devices,
        qemu_args,
    };
    Ok(Plan { profile, domain, disk_gib, disk: req.disk.clone(), choices: b.choices, warnings: b.warnings })
}

fn accelerator(b: &mut Builder) -> DomainType {
    let caps = &b.host.caps;
    if caps.is_kvm() && b.host.facts.kvm == KvmState::Usable {
        b.note("accelerator", "kvm", "KVM works on this host: guests run at near-native speed");
        return DomainType::Kvm;
    }
    let why = match b.host.facts.kvm {
        KvmState::Broken => {
            "/dev/kvm exists but cannot run guests on this host (see `phyllome check`): using TCG emulation, which is much slower"
        }
        KvmState::Absent => {
            "KVM is not available (virtualization off in firmware or no kvm module; see `phyllome check`): using TCG emulation, which is much slower"
        }
        KvmState::Usable => "libvirt offers no KVM domain type here: using TCG emulation, which is much slower",
    };
    b.warnings.push(format!("no usable KVM: {}", why.split(": ").last().unwrap_or(why)));
    b.note("accelerator", "qemu (TCG)", why);
    DomainType::Qemu
}

fn round_down_512(mib: u64) -> u64 {
    mib / 512 * 512
}

fn memory(b: &mut Builder, req: &Request) -> Result<u64, BuildError> {
    let r = b.profile.resources;
    let host_mib = b.host.facts.memory_mib;
    let os = b.profile.name;
    let mib = match &req.memory {
        Some(text) => {
            let bytes = input::parse_size(text)?;
            if !bytes.is_multiple_of(1 << 20) {
                let mib = format!("{:.2}", bytes as f64 / (1u64 << 20) as f64);
                return Err(BuildError::MemoryNotWholeMib { asked: text.clone(), mib });
            }
            let mib = bytes >> 20;
            if mib < r.min_memory_mib {
                return Err(BuildError::MemoryBelowMinimum {
                    os,
                    min: human_mib(r.min_memory_mib),
                    asked: human_mib(mib),
                });
            }
            if mib > host_mib {
                return Err(BuildError::MemoryAboveHost { asked: human_mib(mib), host: human_mib(host_mib) });
            }
            if mib > host_mib * 3 / 4 {
                b.warnings.push(format!(
                    "{} is more than three quarters of the host's {}: the host may start swapping",
                    human_mib(mib),
                    human_mib(host_mib)
                ));
            }
            b.note("memory", human_mib(mib), "as asked");
            mib
        }
        None => {
            if r.min_memory_mib > host_mib {
                return Err(BuildError::HostTooSmall {
                    os,
                    min: human_mib(r.min_memory_mib),
                    host: human_mib(host_mib),
                });
            }
            // The recommendation, but never more than half the host, and never below the minimum.
            let mib = r.recommended_memory_mib.min(round_down_512(host_mib / 2)).max(r.min_memory_mib);
            b.note(
                "memory",
                human_mib(mib),
                format!(
                    "{} recommended for {os}, at most half of the host's {} (--memory to change)",
                    human_mib(r.recommended_memory_mib),
                    human_mib(host_mib)
                ),
            );
            mib
        }
    };
    Ok(mib)
}

fn cpus(b: &mut Builder, req: &Request) -> Result<u32, BuildError> {
    let r = b.profile.resources;
    let host_cpus = b.host.facts.cpus.max(1);
    let max = b.host.caps.max_vcpus;
    let n = match req.cpus {
        Some(0) => return Err(BuildError::ZeroCpus),
        Some(n) => {
            if max > 0 && n > max {
                return Err(BuildError::TooManyCpus { asked: n, max });
            }
            if n > host_cpus {
                return Err(BuildError::CpusAboveHost { asked: n, host: host_cpus });
            }
            if n < r.min_cpus {
                b.warnings.push(format!("{} expects at least {} vCPUs", b.profile.name, r.min_cpus));
            }
            b.note("vcpus", n.to_string(), "as asked");
            n
        }
        None => {
            // Half the host's threads (the host keeps the rest), within the profile's bounds.
            let mut n = (host_cpus / 2).clamp(r.min_cpus, r.max_default_cpus).min(host_cpus).max(1);
            if b.profile.family == Family::Macos {
                n = 1 << (31 - n.leading_zeros());
            }
            let half = host_cpus / 2;
            let why = if n == half {
                format!("half of the host's {host_cpus} logical CPUs (--cpus to change)")
            } else if n > half && n == r.min_cpus {
                format!(
                    "{} needs at least {n}, more than half of the host's {host_cpus} logical CPUs (--cpus to change)",
                    b.profile.name
                )
            } else if n < half && n == r.max_default_cpus {
                format!("at most {n} by default, though the host has {host_cpus} logical CPUs (--cpus to change)")
            } else {
                format!("{n} of the host's {host_cpus} logical CPUs (--cpus to change)")
            };
            b.note("vcpus", n.to_string(), why);
            n
        }
    };
    Ok(n)
}

fn disk_size(b: &mut Builder, req: &Request) -> Result<u64, BuildError> {
    let r = b.profile.resources;
    let gib = match &req.disk_size {
        Some(text) => {
            let bytes = input::parse_size(text)?;
            if !bytes.is_multiple_of(1 << 30) {
                let g = bytes as f64 / (1u64 << 30) as f64;
                return Err(BuildError::DiskNotWholeGib {
                    asked: text.clone(),
                    gib: format!("{g:.2}"),
                    down: g.floor() as u64,
                    up: g.ceil() as u64,
                });
            }
            bytes >> 30
        }
        None => r.recommended_disk_gib,
    };
    if gib < r.min_disk_gib {
        // Advice, not a wall: a minimal system fits in less than the installer's usual need.
        if !req.force {
            return Err(BuildError::DiskBelowMinimum { os: b.profile.name, min: r.min_disk_gib, asked: gib });
        }
        b.warnings.push(format!(
            "a {gib} GiB disk is below the {} GiB {} usually needs (--force was given): its installer may refuse it",
            r.min_disk_gib, b.profile.name
        ));
    }
    if gib > MAX_DISK_GIB {
        return Err(BuildError::DiskTooLarge { asked: gib, max: MAX_DISK_GIB });
    }
    Ok(gib)
}

/// The host's UEFI firmware for q35 that has (or lacks) secure boot with enrolled keys.
fn find_firmware(host: &Host, secure_boot: bool) -> Option<&FirmwareDescriptor> {
    host.facts.firmware.iter().find(|f| {
        f.is_uefi_q35()
            && if secure_boot { f.has("secure-boot") && f.has("enrolled-keys") } else { !f.has("secure-boot") }
    })
}

fn firmware(b: &mut Builder, req: &Request) -> Result<Firmware, BuildError> {
    let os = b.profile.name;
    let why = b.profile.firmware.why;
    let secure = match b.profile.firmware.value {
        FirmwarePolicy::Bios => {
            if req.secure_boot {
                return Err(BuildError::OptionNotForOs("secure-boot", "UEFI"));
            }
            b.note("firmware", "BIOS (SeaBIOS)", why);
            return Ok(Firmware::Bios);
        }
        FirmwarePolicy::Uefi { secure_boot } => secure_boot,
    };
    if !b.host.caps.firmware.iter().any(|f| f == "efi") {
        return Err(BuildError::NoUefi { os });
    }
    let has_sb = find_firmware(b.host, true).is_some();
    let want_sb = match secure {
        SecureBoot::Required => {
            if !has_sb {
                return Err(BuildError::NoSecureBootFirmware { os });
            }
            true
        }
        SecureBoot::Preferred => {
            if !has_sb {
                b.warnings.push(format!(
                    "no secure-boot firmware with Microsoft keys on this host: {os} gets UEFI without secure boot"
                ));
            }
            has_sb
        }
        SecureBoot::Off if req.secure_boot => {
            if !has_sb {
                return Err(BuildError::NoSecureBootFirmware { os });
            }
            true
        }
        SecureBoot::Off => false,
    };
    let file = find_firmware(b.host, want_sb).map(|f| format!(" ({})", f.executable)).unwrap_or_default();
    let choice = if want_sb {
        format!("UEFI, secure boot with Microsoft keys{file}")
    } else {
        format!("UEFI, secure boot off{file}")
    };
    let why = if req.secure_boot && secure == SecureBoot::Off { "--secure-boot was given" } else { why };
    let when = match b.host.check(Feature::FirmwareAtDefine) {
        Ok(()) => "libvirt picks the build from the host's firmware descriptors when the VM is defined, so the definition names it".to_string(),
        Err(e) => format!("libvirt picks the build from the host's firmware descriptors at each start ({} for it at define time)", e.needs),
    };
    b.note("firmware", choice, format!("{why}; {when}"));
    // A qcow2 variable store where libvirt can snapshot, revert and delete UEFI VMs with it.
    let nvram = b.host.supports(Feature::QcowNvram).then(|| qcow2_nvram_path(&req.name));
    Ok(Firmware::Efi { secure_boot: want_sb, nvram })
}

/// Why the UEFI variable store is what it is.
fn nvram_note(b: &mut Builder, firmware: &Firmware) {
    let Firmware::Efi { nvram, .. } = firmware else { return };
    match (nvram, b.host.check(Feature::QcowNvram)) {
        (Some(path), _) => b.note(
            "nvram",
            format!("qcow2 {path}, made from the firmware's own template"),
            "qcow2, so snapshots hold the UEFI variables (secure-boot keys, boot entries) with the disk: libvirt ≥ 10.10 takes, reverts and deletes internal snapshots of UEFI VMs only with a qcow2 store",
        ),
        (None, Err(e)) => b.note(
            "nvram",
            "raw, made by libvirt from the firmware's template",
            format!("a qcow2 store, which UEFI snapshots need, needs {}; this host has {}", e.needs, e.have),
        ),
        (None, Ok(())) => b.note("nvram", "raw, made by libvirt from the firmware's template", "libvirt's default"),
    }
}

/// Why this host cannot give a guest an emulated TPM 2.0, if it cannot.
fn tpm_missing(host: &Host) -> Option<&'static str> {
    let caps = &host.caps;
    if !host.facts.swtpm {
        Some("swtpm is not installed")
    } else if !caps.supports("tpm") || !caps.has("tpm.backendModel", "emulator") {
        Some("libvirt reports no emulated TPM backend")
    } else if caps.enums.contains_key("tpm.backendVersion") && !caps.has("tpm.backendVersion", "2.0") {
        Some("libvirt reports no TPM 2.0 emulation")
    } else {
        None
    }
}

fn tpm(b: &mut Builder) -> Result<Option<&'static str>, BuildError> {
    let need = b.profile.tpm;
    if need.value == Need::No {
        b.note("tpm", "none", need.why);
        return Ok(None);
    }
    if let Some(why) = tpm_missing(b.host) {
        if need.value == Need::Required {
            return Err(BuildError::NoTpm { os: b.profile.name, why });
        }
        b.warnings.push(format!("no TPM for this VM: {why}"));
        b.note("tpm", "none", format!("{} — but {why}", need.why));
        return Ok(None);
    }
    // CRB is the TPM 2.0 interface Windows and Linux prefer; TIS only where CRB is missing.
    let model = if b.host.caps.has("tpm.model", "tpm-crb") || !b.host.caps.enums.contains_key("tpm.model") {
        "tpm-crb"
    } else {
        "tpm-tis"
    };
    b.note("tpm", format!("TPM 2.0, swtpm emulator, {model}"), need.why);
    Ok(Some(model))
}

fn cpu(b: &mut Builder, vcpus: u32) -> Cpu {
    let caps = &b.host.caps;
    let kvm = caps.is_kvm() && b.host.facts.kvm == KvmState::Usable;
    let (mode, why) = match b.profile.cpu.value {
        CpuPolicy::HostModel if kvm && caps.cpu_mode("host-model") => (
            CpuMode::HostModel,
            "host-model: the host CPU's features as a named model, so the VM can move to similar hosts",
        ),
        CpuPolicy::HostModel | CpuPolicy::AppleIntel if kvm || caps.cpu_mode("maximum") => {
            if b.profile.cpu.value == CpuPolicy::AppleIntel {
                let model = if caps.cpu_model_usable("Haswell-noTSX") { "Haswell-noTSX" } else { "Penryn" };
                let why = if model == "Penryn" {
                    "Penryn: the newest Intel model macOS knows that this host can provide"
                } else {
                    "Haswell-noTSX: an Intel model macOS supports, also presented on AMD hosts"
                };
                (CpuMode::Custom { model: model.into(), vendor: None, features: vec![] }, why)
            } else {
                (CpuMode::Maximum, "maximum: every feature TCG can emulate (host-model needs working KVM)")
            }
        }
        CpuPolicy::AppleIntel => (
            CpuMode::Custom { model: "Penryn".into(), vendor: None, features: vec![] },
            "Penryn: an Intel model macOS knows and every accelerator provides",
        ),
        CpuPolicy::HostModel => (
            CpuMode::Custom { model: "qemu64".into(), vendor: None, features: vec![] },
            "qemu64: libvirt offers neither host-model nor maximum here",
        ),
        CpuPolicy::Fixed(model) => {
            (CpuMode::Custom { model: model.into(), vendor: None, features: vec![] }, b.profile.cpu.why)
        }
    };
    let name = match &mode {
        CpuMode::HostModel => "host-model".to_string(),
        CpuMode::Maximum => "maximum".to_string(),
        CpuMode::Custom { model, .. } => model.clone(),
    };
    b.note(
        "cpu",
        format!(
            "{name}, 1 socket x {vcpus} core{}",
            if vcpus == 1 { "" } else { "s" }
        ),
        format!("{why}; all vCPUs as cores of one socket, since guests license by socket (Windows client editions use at most two)"),
    );
    Cpu { mode, cores: vcpus }
}

/// The enlightenments we want, in libvirt's order. Only those the host's
/// libvirt lists are used: under TCG that is a small subset.
fn hyperv(b: &mut Builder) -> Vec<HypervFeature> {
    if !b.profile.hyperv.value {
        return Vec::new();
    }
    let caps = &b.host.caps;
    let want: [(&str, HypervFeature); 12] = [
        ("relaxed", HypervFeature::On("relaxed")),
        ("vapic", HypervFeature::On("vapic")),
        // 8191 retries: the value Windows itself uses on Hyper-V.
        ("spinlocks", HypervFeature::Spinlocks(8191)),
        ("vpindex", HypervFeature::On("vpindex")),
        ("runtime", HypervFeature::On("runtime")),
        ("synic", HypervFeature::On("synic")),
        ("stimer", HypervFeature::StimerDirect),
        ("reset", HypervFeature::On("reset")),
        ("frequencies", HypervFeature::On("frequencies")),
        ("reenlightenment", HypervFeature::On("reenlightenment")),
        ("tlbflush", HypervFeature::On("tlbflush")),
        ("ipi", HypervFeature::On("ipi")),
    ];
    let kvm = caps.is_kvm() && b.host.facts.kvm == KvmState::Usable;
    let chosen: Vec<(&str, HypervFeature)> = want
        .into_iter()
        // synic and stimer depend on vpindex; everything but spinlocks needs KVM.
        .filter(|(name, _)| caps.hyperv_feature(name) && (kvm || *name == "spinlocks"))
        .collect();
    let names: Vec<&str> = chosen.iter().map(|(n, _)| *n).collect();
    let why = if kvm {
        b.profile.hyperv.why.to_string()
    } else {
        format!("{} — under TCG only what libvirt lists for it", b.profile.hyperv.why)
    };
    b.note("hyperv", if names.is_empty() { "none".into() } else { names.join(", ") }, why);
    chosen.into_iter().map(|(_, f)| f).collect()
}

fn clock(b: &mut Builder, hyperv: bool) -> Clock {
    let kvm = b.host.caps.is_kvm() && b.host.facts.kvm == KvmState::Usable;
    let why = b.profile.clock.why;
    match b.profile.clock.value {
        ClockPolicy::Utc => {
            let kvmclock = kvm && b.profile.family == Family::Linux;
            b.note("clock", if kvmclock { "utc, kvmclock" } else { "utc" }, why);
            Clock::Utc { kvmclock }
        }
        ClockPolicy::LocalTime => {
            let hypervclock = kvm && hyperv;
            b.note("clock", if hypervclock { "localtime, hypervclock" } else { "localtime" }, why);
            Clock::LocalTime { hypervclock }
        }
    }
}

fn bus(b: Bus) -> DiskBus {
    match b {
        Bus::Virtio => DiskBus::Virtio,
        Bus::Sata => DiskBus::Sata,
        Bus::Ide => DiskBus::Ide,
    }
}

fn disks(b: &mut Builder, req: &Request, devices: &mut Vec<Device>) -> Result<(), BuildError> {
    let p = b.profile.clone();
    let is_windows = p.family == Family::Windows;
    let is_macos = p.family == Family::Macos;
    if req.drivers.is_some() && !is_windows {
        return Err(BuildError::OptionNotForOs("drivers", "Windows"));
    }
    if (req.opencore.is_some() || req.osk.is_some()) && !is_macos {
        return Err(BuildError::OptionNotForOs(if req.opencore.is_some() { "opencore" } else { "osk" }, "macOS"));
    }
    let drivers = if is_windows { req.drivers.clone().or_else(|| b.host.facts.virtio_win_iso.clone()) } else { None };
    // Windows setup sees a virtio disk only with the virtio-win drivers: without them the
    // disk defaults to SATA, so setup can install (a user's explicit --disk-bus still wins).
    let sata_for_setup = is_windows && drivers.is_none() && req.disk_bus.is_none() && p.disk_bus.value == Bus::Virtio;
    let main_bus = if sata_for_setup { Bus::Sata } else { req.disk_bus.unwrap_or(p.disk_bus.value) };
    let next_index = |bus: DiskBus, used: &mut Vec<DiskBus>| {
        let i = used.iter().filter(|x| **x == bus).count();
        used.push(bus);
        bus.target(i)
    };
    let mut used = Vec::new();
    let mut boot = 1;

    if is_macos {
        let Some(opencore) = req.opencore.clone() else {
            return Err(BuildError::MissingOpenCore);
        };
        let format = if opencore.ends_with(".qcow2") { "qcow2" } else { "raw" };
        let dbus = bus(p.cdrom_bus.value);
        devices.push(Device::Disk(Disk {
            cdrom: false,
            source: DiskSource::File(opencore.clone()),
            format,
            bus: dbus,
            target: next_index(dbus, &mut used),
            readonly: false,
            boot_order: Some(boot),
            discard: false,
            luks_secret_usage: None,
            keep_label: false,
        }));
        boot += 1;
        b.note(
            "opencore",
            format!("{opencore} on {}", dbus.as_str()),
            "OpenCore boots first and chains to macOS; it is the user's image, Phyllome ships none",
        );
    }

    if let Some(disk) = &req.disk {
        let dbus = bus(main_bus);
        devices.push(Device::Disk(Disk {
            cdrom: false,
            source: DiskSource::Volume { pool: disk.pool.clone(), volume: disk.volume.clone() },
            format: "qcow2",
            bus: dbus,
            target: next_index(dbus, &mut used),
            readonly: false,
            // The disk boots first; while it is empty firmware falls through to the installer.
            boot_order: Some(boot),
            discard: true,
            luks_secret_usage: (disk.encryption != Encryption::None).then(|| disk.path.clone()),
            keep_label: false,
        }));
        boot += 1;
        let why = if req.disk_bus.is_some() {
            "--disk-bus was given"
        } else if sata_for_setup {
            "SATA, because no virtio-win driver ISO was given (--drivers PATH) or found on this host: Windows setup cannot see a virtio disk without it. With the ISO the disk is virtio-blk, which is faster"
        } else {
            p.disk_bus.why
        };
        let enc = match disk.encryption {
            Encryption::Secret => "qcow2, LUKS-encrypted (random key in a private libvirt secret)",
            Encryption::Prompt => "qcow2, LUKS-encrypted (passphrase asked at each start, kept nowhere)",
            Encryption::None => "qcow2, NOT encrypted (--no-encrypt)",
        };
        b.note("disk", format!("{} {}, {enc}, boot order {}", main_bus_name(main_bus), disk.volume, boot - 1), why);
    }

    if let Some(iso) = &req.iso {
        let dbus = bus(p.cdrom_bus.value);
        // macOS recovery images are disk images, not CDs.
        devices.push(Device::Disk(Disk {
            cdrom: !is_macos,
            source: DiskSource::File(iso.clone()),
            format: "raw",
            bus: dbus,
            target: next_index(dbus, &mut used),
            readonly: !is_macos,
            boot_order: Some(boot),
            discard: false,
            luks_secret_usage: None,
            // A read-only CD is given as it is: libvirt must not chown the user's file.
            keep_label: !is_macos,
        }));
        b.note("installer", format!("{iso} on {}", dbus.as_str()), p.cdrom_bus.why);
    }

    if is_windows {
        match &drivers {
            Some(iso) => {
                let dbus = bus(p.cdrom_bus.value);
                devices.push(Device::Disk(Disk {
                    cdrom: true,
                    source: DiskSource::File(iso.clone()),
                    format: "raw",
                    bus: dbus,
                    target: next_index(dbus, &mut used),
                    readonly: true,
                    boot_order: None,
                    discard: false,
                    luks_secret_usage: None,
                    keep_label: true,
                }));
                let why = if req.drivers.is_some() { "--drivers was given" } else { "found on this host" };
                b.note(
                    "drivers",
                    format!("virtio-win {iso}"),
                    format!("{why}: Windows setup loads viostor and NetKVM from it"),
                );
            }
            None if main_bus == Bus::Virtio => {
                b.warnings.push(
                    "--disk-bus virtio without a virtio-win driver ISO (--drivers PATH): Windows setup will not see the disk until you load viostor from one".into(),
                );
            }
            None if sata_for_setup => {
                b.warnings.push(
                    "no virtio-win driver ISO given (--drivers PATH) or found on this host: the disk is SATA so Windows setup can see it; give --drivers virtio-win.iso for a faster virtio disk".into(),
                );
            }
            None => {}
        }
    }
    Ok(())
}

fn main_bus_name(b: Bus) -> &'static str {
    match b {
        Bus::Virtio => "virtio-blk",
        Bus::Sata => "SATA",
        Bus::Ide => "IDE",
    }
}

fn network(b: &mut Builder, req: &Request, devices: &mut Vec<Device>) {
    let model = b.profile.nic.value;
    let why = b.profile.nic.why;
    match &req.network {
        NetworkChoice::None => b.note("network", "none", "--network none"),
        NetworkChoice::User => {
            devices.push(Device::Interface(Interface::User { model }));
            b.note("network", format!("{model}, user-mode"), why);
        }
        NetworkChoice::Named(n) => {
            devices.push(Device::Interface(Interface::Network { network: n.clone(), model }));
            b.note("network", format!("{model} on libvirt network {n}"), why);
        }
        NetworkChoice::Default => {
            devices.push(Device::Interface(Interface::Network { network: "default".into(), model }));
            b.note("network", format!("{model} on libvirt network default"), why);
        }
    }
}

fn inputs(b: &mut Builder, devices: &mut Vec<Device>) {
    let p = &b.profile.input;
    let (list, name): (&[(InputKind, InputBus)], &str) = match p.value {
        InputPolicy::Virtio => (
            &[(InputKind::Keyboard, InputBus::Virtio), (InputKind::Tablet, InputBus::Virtio)],
            "virtio keyboard, virtio tablet",
        ),
        InputPolicy::UsbTablet => (&[(InputKind::Tablet, InputBus::Usb)], "USB tablet, PS/2 keyboard"),
        InputPolicy::UsbKeyboardTablet => {
            (&[(InputKind::Keyboard, InputBus::Usb), (InputKind::Tablet, InputBus::Usb)], "USB keyboard, USB tablet")
        }
        InputPolicy::Ps2 => (&[], "PS/2 keyboard and mouse"),
    };
    devices.extend(list.iter().map(|&(kind, bus)| Device::Input { kind, bus }));
    let why = p.why;
    b.note("input", name, why);
}

fn display(b: &mut Builder, devices: &mut Vec<Device>) {
    let facts = &b.host.facts;
    let caps = &b.host.caps;
    let why = b.profile.video.why;
    let (model, accel3d) = match b.profile.video.value {
        VideoPolicy::Vga => ("vga", false),
        VideoPolicy::Virtio { virgl } => {
            let node = facts.render_nodes.first();
            let gl_ok = virgl && facts.virgl && caps.has("graphics.type", "egl-headless");
            match node {
                Some(n) if gl_ok => {
                    devices.push(Device::Graphics(Graphics::EglHeadless { rendernode: n.clone() }));
                    b.note("video", format!("virtio-gpu with virgl 3D on {n}"), why);
                    ("virtio", true)
                }
                _ => {
                    let missing = if !virgl {
                        ""
                    } else if node.is_none() {
                        " (2D only: this host has no GPU render node)"
                    } else if !facts.virgl {
                        " (2D only: QEMU's virtio-gpu GL modules are not installed)"
                    } else {
                        " (2D only: QEMU cannot render off-screen with egl-headless)"
                    };
                    b.note("video", format!("virtio-gpu{missing}"), why);
                    ("virtio", false)
                }
            }
        }
    };
    if model == "vga" {
        b.note("video", "VGA", why);
    }
    devices.push(Device::Graphics(Graphics::VncLoopback));
    b.note(
        "display",
        "VNC on 127.0.0.1, automatic port",
        "reachable only from this host: `phyllome display` locally, the web console through phyllome serve",
    );
    devices.push(Device::Video(Video { model, accel3d }));
}

fn sound(b: &mut Builder, devices: &mut Vec<Device>) {
    let why = b.profile.sound.why;
    let (model, why) = match b.profile.sound.value {
        SoundPolicy::VirtioOr(fallback) => match b.host.check(Feature::VirtioSound) {
            Ok(()) => ("virtio", why.to_string()),
            Err(e) => (fallback, format!("{why}; virtio-sound needs {}, this host has {}", e.needs, e.have)),
        },
        SoundPolicy::Model(m) => (m, why.to_string()),
    };
    devices.push(Device::Sound(model));
    b.note("sound", model, why);
}

fn macos_args(b: &mut Builder, req: &Request) -> Result<Vec<String>, BuildError> {
    if b.profile.family != Family::Macos {
        return Ok(Vec::new());
    }
    let Some(osk) = &req.osk else {
        return Err(BuildError::MissingOsk);
    };
    if osk.len() != 64 || !osk.bytes().all(|c| c.is_ascii_graphic() || c == b' ') || osk.contains(',') {
        return Err(BuildError::BadOsk(osk.chars().count()));
    }
    b.note(
        "applesmc",
        "isa-applesmc with the given OSK",
        "macOS checks for Apple's SMC; libvirt has no element for it, so it is a QEMU argument",
    );
    Ok(vec!["-device".into(), format!("isa-applesmc,osk={osk}")])
}
