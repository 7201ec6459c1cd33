//! `phyllome check`: what stands between this host and running guests well.
//!
//! A superset of `virt-host-validate qemu`. Every check reads the host
//! through a root directory (sysfs, procfs, /dev, /etc/os-release, the
//! firmware descriptors), so tests run on fixture trees; what only a live host
//! can answer (the KVM probe, libvirtd, free disk space, who runs us) comes in
//! as [`Inputs`]. Each check that does not pass carries the exact fix for this
//! host: the firmware setting, the kernel parameters for this CPU vendor, the
//! package for this distribution, the group to join.

use crate::devices::iommu_groups;
use crate::facts::read_facts;
use crate::kvm::Probe;
use phyllome_model::host::{CpuVendor, HostFacts, KvmState};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use phyllome_model::capability::{MIN_LIBVIRT, RECOMMENDED_QEMU};
use phyllome_model::Version;
/// Below this many logical CPUs the host cannot run a guest beside itself.
pub const MIN_CPUS: u32 = 2;
pub const RECOMMENDED_CPUS: u32 = 4;
/// 4 GiB and 16 GiB installed; the kernel reports a little less than what is
/// installed (firmware and kernel reservations), hence the slack.
pub const MIN_MEMORY_MIB: u64 = 3584;
pub const RECOMMENDED_MEMORY_MIB: u64 = 15 * 1024;
/// Free space where the disks live: a minimal Linux guest and its installer fit
/// in 10 GiB; Windows 11 asks for a 64 GiB disk.
pub const MIN_FREE_GIB: u64 = 10;
pub const RECOMMENDED_FREE_GIB: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    /// One line: what was found.
    pub summary: String,
    /// What to do on this host; `None` when the check passes.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The worst status of all checks.
    pub verdict: Status,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    pub fn failed(&self) -> bool {
        self.verdict == Status::Fail
    }
}

/// libvirt's and QEMU's versions, as libvirtd reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub libvirt: String,
    pub qemu: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpace {
    /// The directory VM disks go to (Phyllome's pool).
    pub path: String,
    pub free_bytes: u64,
}

/// Who runs the check (for /dev/kvm access and group fixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gids: Vec<u32>,
    pub name: String,
}

impl User {
    pub fn root() -> User {
        User { uid: 0, gids: vec![0], name: "root".into() }
    }
}

/// What only the live host can tell: injected, so the checks stay testable.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The KVM probe's verdict ([`crate::kvm::probe_cached`]); `None` when it did not run.
    pub kvm_probe: Option<Probe>,
    /// libvirtd's answer on `uri`; `None` when it was not asked.
    pub libvirt: Option<Result<Versions, String>>,
    pub uri: String,
    /// Free space where disks live; `None` when unknown.
    pub disk: Option<DiskSpace>,
    pub user: User,
    /// Set when the root is not the running host (`--root`): why the live-only checks did not run.
    pub not_live: Option<String>,
    /// Moves to other hosts that were cut short and are not settled, in words (each naming
    /// the VM, the destination and what is left); `None` when not asked.
    pub migrations: Option<Vec<String>>,
}

impl Inputs {
    /// Inputs for a recorded tree: nothing live is asked.
    pub fn recorded(reason: &str) -> Inputs {
        Inputs {
            kvm_probe: None,
            libvirt: None,
            uri: "qemu:///system".into(),
            disk: None,
            user: User::root(),
            not_live: Some(reason.to_string()),
            migrations: None,
        }
    }
}

use crate::facts::at;

fn check(id: &'static str, status: Status, summary: impl Into<String>, fix: Option<String>) -> Check {
    Check { id, status, summary: summary.into(), fix: if status == Status::Pass { None } else { fix } }
}

fn pass(id: &'static str, summary: impl Into<String>) -> Check {
    check(id, Status::Pass, summary, None)
}

fn warn(id: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Check {
    check(id, Status::Warn, summary, Some(fix.into()))
}

fn fail(id: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Check {
    check(id, Status::Fail, summary, Some(fix.into()))
}

/// The package manager this host's fixes are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    Apt,
    Dnf,
    Unknown,
}

/// Reads `/etc/os-release` (`ID`, `ID_LIKE`).
pub fn parse_os_release(text: &str) -> Distro {
    let mut ids = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ID=").or_else(|| line.strip_prefix("ID_LIKE=")) {
            ids.extend(v.trim_matches('"').split_whitespace().map(str::to_lowercase));
        }
    }
    if ids.iter().any(|i| matches!(i.as_str(), "debian" | "ubuntu")) {
        Distro::Apt
    } else if ids.iter().any(|i| matches!(i.as_str(), "fedora" | "rhel" | "centos")) {
        Distro::Dnf
    } else {
        Distro::Unknown
    }
}

impl Distro {
    fn install(&self, apt: &str, dnf: &str) -> String {
        match self {
            Distro::Apt => format!("apt install {apt}"),
            Distro::Dnf => format!("dnf install {dnf}"),
            Distro::Unknown => format!("install {apt} (Debian/Ubuntu) or {dnf} (Fedora)"),
        }
    }

    fn kernel_params(&self, params: &str) -> String {
        match self {
            Distro::Apt => format!(
                "add `{params}` to GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, run `update-grub`, and reboot"
            ),
            Distro::Dnf => format!("run `grubby --update-kernel=ALL --args=\"{params}\"` and reboot"),
            Distro::Unknown => format!("add `{params}` to the kernel command line in your boot loader, and reboot"),
        }
    }
}

/// The CPU flags of the first processor in `/proc/cpuinfo`.
pub fn cpu_flags(cpuinfo: &str) -> BTreeSet<String> {
    cpuinfo
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "flags").map(|(_, v)| v))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Available bytes from `df -Pk PATH`.
pub fn parse_df(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    let avail: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail * 1024)
}

/// Free space at `path` (or its nearest existing parent), via `df`.
pub fn free_space(path: &str) -> Option<DiskSpace> {
    let mut p = Path::new(path);
    while !p.exists() {
        p = p.parent()?;
    }
    let out = std::process::Command::new("df").arg("-Pk").arg(p).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_df(&String::from_utf8_lossy(&out.stdout)).map(|free_bytes| DiskSpace { path: path.to_string(), free_bytes })
}

/// The user running this process: `/proc/self/status` and `/etc/passwd`.
pub fn current_user() -> User {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    };
    // Uid: real effective saved fs; the effective one decides access.
    let uid = field("Uid:").get(1).copied().unwrap_or(0);
    let mut gids = field("Groups:");
    gids.extend(field("Gid:").get(1));
    let name = fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
            })
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid {uid}"));
    User { uid, gids, name }
}

/// Whether `user` may open a node read-write, from its mode and owner.
pub fn can_open_rw(user: &User, mode: u32, owner: u32, group: u32) -> bool {
    user.uid == 0
        || (owner == user.uid && mode & 0o600 == 0o600)
        || (user.gids.contains(&group) && mode & 0o060 == 0o060)
        || mode & 0o006 == 0o006
}

fn group_name(root: &Path, gid: u32) -> Option<String> {
    fs::read_to_string(at(root, "etc/group")).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
    })
}

/// Everything the checks read from the root, once.
struct Host<'a> {
    root: &'a Path,
    facts: HostFacts,
    flags: BTreeSet<String>,
    in_vm: bool,
    distro: Distro,
    cmdline: Vec<String>,
    meminfo: String,
}

impl Host<'_> {
    fn exists(&self, rel: &str) -> bool {
        at(self.root, rel).exists()
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(at(self.root, rel)).ok().map(|s| s.trim().to_string())
    }

    fn module(&self, name: &str) -> bool {
        self.exists(&format!("sys/module/{name}"))
    }

    fn cmdline_has(&self, token: &str) -> bool {
        self.cmdline.iter().any(|t| t == token)
    }

    fn vendor(&self) -> CpuVendor {
        self.facts.cpu_vendor
    }

    /// `kvm_intel` or `kvm_amd` for this CPU.
    fn kvm_module(&self) -> &'static str {
        match self.vendor() {
            CpuVendor::Amd => "kvm_amd",
            _ => "kvm_intel",
        }
    }

    fn hw_virt_name(&self) -> &'static str {
        match self.vendor() {
            CpuVendor::Amd => "AMD-V (svm)",
            _ => "Intel VT-x (vmx)",
        }
    }

    fn hw_virt(&self) -> bool {
        self.flags.contains("vmx") || self.flags.contains("svm")
    }

    /// The fix when the CPU shows no VT-x/AMD-V.
    fn enable_virtualization_fix(&self) -> String {
        if self.in_vm {
            format!(
                "this is a virtual machine: on the host that runs it, enable nested virtualization \
                 (`options {m} nested=1` in /etc/modprobe.d/kvm.conf, then reload {m}) and give this VM \
                 the host's CPU (libvirt: <cpu mode='host-passthrough'/>; in a cloud, an instance type \
                 with nested virtualization)",
                m = self.kvm_module()
            )
        } else {
            let setting = match self.vendor() {
                CpuVendor::Amd => "'SVM Mode' (AMD-V; often under Advanced > CPU Configuration)",
                _ => "'Intel Virtualization Technology' (VT-x; often under Advanced > CPU Configuration)",
            };
            format!(
                "reboot into the firmware setup (F2 or Del at power-on), enable {setting}, save, \
                 and power the machine off fully before booting again"
            )
        }
    }
}

fn cpu_virtualization(h: &Host) -> Check {
    const ID: &str = "cpu.virtualization";
    if h.flags.contains("vmx") {
        return pass(ID, "Intel VT-x (vmx) is in the CPU flags");
    }
    if h.flags.contains("svm") {
        return pass(ID, "AMD-V (svm) is in the CPU flags");
    }
    if h.module("kvm_pvm") {
        return warn(
            ID,
            "no VT-x/AMD-V in the CPU flags; KVM here is kvm_pvm (software-assisted, for VMs without nesting)",
            format!(
                "nothing to change if kvm.functional passes; for hardware virtualization: {}",
                h.enable_virtualization_fix()
            ),
        );
    }
    let summary = if h.in_vm {
        format!("no {} in the CPU flags: this VM's hypervisor does not pass it through", h.hw_virt_name())
    } else {
        format!("no {} in the CPU flags: virtualization is off in the firmware (or the CPU lacks it)", h.hw_virt_name())
    };
    fail(ID, summary, h.enable_virtualization_fix())
}

fn kvm_device(h: &Host, user: &User) -> Check {
    const ID: &str = "kvm.device";
    let path = at(h.root, "dev/kvm");
    if let Ok(meta) = fs::metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        if can_open_rw(user, meta.mode(), meta.uid(), meta.gid()) {
            return pass(ID, format!("/dev/kvm exists and {} can open it", user.name));
        }
        let group = group_name(h.root, meta.gid()).unwrap_or_else(|| "kvm".into());
        return fail(
            ID,
            format!("/dev/kvm exists but {} cannot open it (mode {:o}, group {group})", user.name, meta.mode() & 0o777),
            format!("`usermod -aG {group} {}` (as root), then log out and back in", user.name),
        );
    }
    if h.exists("dev/kvm.phyllome-broken") {
        // The project's setup moves it there (--kvm-aside-if-broken) after a probe guest failed under KVM.
        return fail(
            ID,
            "/dev/kvm was moved aside to /dev/kvm.phyllome-broken because a probe guest could not run under KVM",
            "fix KVM itself first (see kvm.functional); then `mv /dev/kvm.phyllome-broken /dev/kvm` (as root) puts the device back",
        );
    }
    let recreate = "recreate it: `mknod -m 660 /dev/kvm c 10 232 && chgrp kvm /dev/kvm` (udev normally does this)";
    if !h.hw_virt() {
        if h.module("kvm_pvm") {
            return fail(ID, "/dev/kvm is missing although kvm_pvm is loaded", recreate);
        }
        return fail(
            ID,
            "/dev/kvm is missing: the CPU offers no hardware virtualization",
            h.enable_virtualization_fix(),
        );
    }
    let m = h.kvm_module();
    if h.module(m) {
        return fail(ID, format!("/dev/kvm is missing although {m} is loaded"), recreate);
    }
    let bios = match h.vendor() {
        CpuVendor::Amd => "'SVM Mode'",
        _ => "'Intel Virtualization Technology'",
    };
    fail(
        ID,
        format!("/dev/kvm is missing: the {m} module is not loaded"),
        format!(
            "`modprobe {m}` (at every boot: `echo {m} > /etc/modules-load.d/kvm.conf`); if `dmesg` then says \
             virtualization is disabled by the BIOS, enable {bios} in the firmware setup"
        ),
    )
}

fn kvm_functional(h: &Host, inputs: &Inputs, device: &Check) -> Check {
    const ID: &str = "kvm.functional";
    let slow = "guests will run under slow TCG emulation (often 10 times slower or worse)";
    if !h.exists("dev/kvm") && !h.exists("dev/kvm.phyllome-broken") {
        return fail(
            ID,
            format!("KVM cannot run guests here (no /dev/kvm): {slow}"),
            format!("fix kvm.device: {}", device.fix.as_deref().unwrap_or("make /dev/kvm available")),
        );
    }
    let moved_aside = h.exists("dev/kvm.phyllome-broken") && !h.exists("dev/kvm");
    match &inputs.kvm_probe {
        Some(p) if p.state == KvmState::Usable => pass(ID, format!("KVM runs guests: {}", p.detail)),
        _ if moved_aside => fail(
            ID,
            format!("a probe guest could not run under KVM, so /dev/kvm was moved aside: {slow}"),
            if h.in_vm {
                "this host is a VM whose nested KVM is broken: fix nested virtualization on the host that runs it \
                 (a current kernel and QEMU there, nested=1, a host-passthrough CPU for this VM) or run Phyllome \
                 on bare metal; then put the device back: `mv /dev/kvm.phyllome-broken /dev/kvm`"
            } else {
                "look for KVM errors in `dmesg`, update the kernel and QEMU, check that virtualization is fully \
                 enabled in the firmware setup; then put the device back: `mv /dev/kvm.phyllome-broken /dev/kvm`"
            },
        ),
        Some(p) => {
            let fix = if h.in_vm {
                "this host is a VM whose nested KVM is broken: fix nested virtualization on the host that runs it \
                 (a current kernel and QEMU there, nested=1, a host-passthrough CPU for this VM) or run Phyllome \
                 on bare metal; meanwhile move the broken device aside so libvirt stops offering KVM: \
                 `mv /dev/kvm /dev/kvm.phyllome-broken`"
            } else {
                "look for KVM errors in `dmesg`, update the kernel and QEMU, and check that virtualization is \
                 fully enabled in the firmware setup; meanwhile move the broken device aside so libvirt stops \
                 offering KVM: `mv /dev/kvm /dev/kvm.phyllome-broken`"
            };
            fail(ID, format!("/dev/kvm exists but KVM cannot run a guest ({}): {slow}", p.detail), fix)
        }
        None => match &inputs.not_live {
            Some(why) => warn(
                ID,
                format!("/dev/kvm exists; no probe guest was run ({why})"),
                "run `phyllome check` on the host itself to probe KVM",
            ),
            None => warn(
                ID,
                "/dev/kvm exists, but no QEMU binary was found to run a probe guest",
                h.distro.install("qemu-system-x86", "qemu-kvm"),
            ),
        },
    }
}

fn kvm_nested(h: &Host) -> Check {
    const ID: &str = "kvm.nested";
    let what = "guests cannot run their own hypervisors (WSL2, Hyper-V, Windows VBS, nested VMs)";
    for m in ["kvm_intel", "kvm_amd"] {
        if let Some(v) = h.read(&format!("sys/module/{m}/parameters/nested")) {
            if matches!(v.as_str(), "Y" | "y" | "1") {
                return pass(ID, format!("nested virtualization is on ({m} nested={v})"));
            }
            return warn(
                ID,
                format!("nested virtualization is off ({m} nested={v}): {what}"),
                format!(
                    "`echo 'options {m} nested=1' > /etc/modprobe.d/kvm-nested.conf`, then with no VM running: \
                     `modprobe -r {m} && modprobe {m}`"
                ),
            );
        }
    }
    if h.module("kvm_pvm") {
        return warn(
            ID,
            format!("KVM here is kvm_pvm, which offers no nested virtualization: {what}"),
            "nothing to do on this host: nested guests need hardware KVM (kvm_intel or kvm_amd) with nested=1",
        );
    }
    warn(ID, format!("unknown: {} is not loaded", h.kvm_module()), "load KVM first (see kvm.device)")
}

fn modprobe_fix(module: &str) -> String {
    format!("`modprobe {module}` (at every boot: `echo {module} > /etc/modules-load.d/{module}.conf`)")
}

fn vhost_net(h: &Host) -> Check {
    const ID: &str = "vhost-net";
    if h.exists("dev/vhost-net") {
        pass(ID, "/dev/vhost-net exists: virtio networking runs in the kernel")
    } else {
        warn(ID, "no /dev/vhost-net: virtio networking runs in QEMU, slower", modprobe_fix("vhost_net"))
    }
}

fn tun(h: &Host) -> Check {
    const ID: &str = "tun";
    if h.exists("dev/net/tun") {
        pass(ID, "/dev/net/tun exists: VMs can have NAT and bridged networking")
    } else {
        fail(ID, "no /dev/net/tun: VMs cannot have NAT or bridged networking", modprobe_fix("tun"))
    }
}

fn cgroups(h: &Host) -> Check {
    const ID: &str = "cgroup.controllers";
    let what = "libvirt cannot pin guests or apply their CPU, memory and I/O limits";
    if let Some(list) = h.read("sys/fs/cgroup/cgroup.controllers") {
        let have: BTreeSet<&str> = list.split_whitespace().collect();
        // v2: cpuacct is part of cpu, blkio is io, devices is done with eBPF.
        let missing: Vec<&str> = ["cpu", "cpuset", "memory", "io"].into_iter().filter(|c| !have.contains(c)).collect();
        if missing.is_empty() {
            return pass(ID, "cgroup v2 with cpu, cpuset, memory and io");
        }
        return warn(
            ID,
            format!("cgroup v2 lacks {}: {what}", missing.join(", ")),
            "boot with `systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all` so no v1 hierarchy holds them, \
             or use a kernel built with them",
        );
    }
    let v1 = ["cpu", "cpuacct", "cpuset", "memory", "devices", "blkio"];
    let missing: Vec<&str> = v1.into_iter().filter(|c| !h.exists(&format!("sys/fs/cgroup/{c}"))).collect();
    if missing.len() == v1.len() {
        return warn(
            ID,
            format!("no cgroup file system at /sys/fs/cgroup: {what}"),
            "`mount -t cgroup2 none /sys/fs/cgroup`",
        );
    }
    if missing.is_empty() {
        return pass(ID, "cgroup v1 with cpu, cpuacct, cpuset, memory, devices and blkio");
    }
    warn(
        ID,
        format!("cgroup v1 lacks {}: {what}", missing.join(", ")),
        format!(
            "mount them, e.g. `mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}`, \
             or move to cgroup v2",
            c = missing[0]
        ),
    )
}

fn meminfo_value(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn hugepages(h: &Host) -> Check {
    const ID: &str = "hugepages";
    let reserved = meminfo_value(&h.meminfo, "HugePages_Total:").unwrap_or(0);
    let size_kib = meminfo_value(&h.meminfo, "Hugepagesize:").unwrap_or(2048);
    let gig = if h.flags.contains("pdpe1gb") { "; 1 GiB pages supported" } else { "" };
    if reserved > 0 {
        return pass(
            ID,
            format!(
                "{reserved} huge pages of {} MiB reserved ({} MiB){gig}",
                size_kib / 1024,
                reserved * size_kib / 1024
            ),
        );
    }
    let thp = h.read("sys/kernel/mm/transparent_hugepage/enabled").and_then(|t| {
        t.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']']).to_string())
    });
    match thp.as_deref() {
        Some(mode @ ("always" | "madvise")) => pass(
            ID,
            format!("transparent huge pages ({mode}) back guest memory; no static huge pages reserved (optional){gig}"),
        ),
        other => warn(
            ID,
            format!(
                "no huge pages: transparent huge pages are {}, none reserved; guest memory uses 4 KiB pages (slower)",
                other.unwrap_or("unavailable")
            ),
            "`echo madvise > /sys/kernel/mm/transparent_hugepage/enabled` (at every boot: kernel parameter \
             `transparent_hugepage=madvise`)",
        ),
    }
}

fn iommu_table(h: &Host) -> Option<&'static str> {
    ["DMAR", "IVRS"].into_iter().find(|t| h.exists(&format!("sys/firmware/acpi/tables/{t}")))
}

const PASSTHROUGH_ONLY: &str = "only device passthrough needs it";

fn iommu_firmware(h: &Host) -> Check {
    const ID: &str = "iommu.firmware";
    match iommu_table(h) {
        Some("DMAR") => pass(ID, "ACPI DMAR table: the firmware has Intel VT-d on"),
        Some(_) => pass(ID, "ACPI IVRS table: the firmware has the AMD IOMMU (AMD-Vi) on"),
        None if h.in_vm => warn(
            ID,
            format!("no ACPI DMAR/IVRS table: this VM has no virtual IOMMU ({PASSTHROUGH_ONLY})"),
            "pass devices through on the host that runs this VM instead; if it must be here, that host has to \
             give this VM a virtual IOMMU (libvirt: <iommu model='intel'/> with <ioapic driver='qemu'/>)",
        ),
        None => {
            let (table, setting) = match h.vendor() {
                CpuVendor::Amd => ("IVRS", "'IOMMU' (AMD-Vi; often under Advanced > AMD CBS > NBIO Common Options)"),
                _ => (
                    "DMAR",
                    "'VT-d' (Intel Virtualization Technology for Directed I/O; often under Advanced > System Agent)",
                ),
            };
            warn(
                ID,
                format!("no ACPI {table} table: the IOMMU is off in the firmware or missing ({PASSTHROUGH_ONLY})"),
                format!("reboot into the firmware setup and enable {setting}"),
            )
        }
    }
}

/// The kernel parameters that turn the IOMMU on, for this CPU vendor.
pub fn iommu_params(vendor: CpuVendor) -> &'static str {
    match vendor {
        // AMD-Vi is on by default once the firmware enables it; pt keeps host DMA untranslated (faster).
        CpuVendor::Amd => "iommu=pt",
        _ => "intel_iommu=on iommu=pt",
    }
}

fn iommu_kernel(h: &Host) -> Check {
    const ID: &str = "iommu.kernel";
    let groups = iommu_groups(h.root).len();
    if groups > 0 {
        if h.cmdline.iter().any(|t| t.starts_with("pcie_acs_override")) {
            return warn(
                ID,
                format!("{groups} IOMMU groups, but pcie_acs_override fakes their isolation: devices that look isolated can still reach each other"),
                "remove pcie_acs_override from the kernel command line, and pass through only devices that are isolated without it",
            );
        }
        let mode = if h.cmdline_has("iommu=pt") { ", passthrough mode (iommu=pt)" } else { "" };
        return pass(ID, format!("the kernel's IOMMU is on: {groups} IOMMU groups{mode}"));
    }
    let params = iommu_params(h.vendor());
    let off: Vec<&String> =
        h.cmdline.iter().filter(|t| matches!(t.as_str(), "intel_iommu=off" | "amd_iommu=off" | "iommu=off")).collect();
    let mut fix = String::new();
    if iommu_table(h).is_none() {
        fix.push_str("first enable the IOMMU (see iommu.firmware), then ");
    }
    if !off.is_empty() {
        fix.push_str(&format!("remove `{}` and ", off.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")));
    }
    fix.push_str(&h.distro.kernel_params(params));
    warn(
        ID,
        format!("no IOMMU groups: the kernel's IOMMU is off, so no device can be passed through ({PASSTHROUGH_ONLY})"),
        fix,
    )
}

fn vfio(h: &Host) -> Check {
    const ID: &str = "vfio.modules";
    if h.module("vfio_pci") {
        return pass(ID, "vfio-pci is loaded");
    }
    let release = h.read("proc/sys/kernel/osrelease").unwrap_or_default();
    // modules.dep: `kernel/drivers/vfio/pci/vfio-pci.ko.xz: deps`; modules.builtin: one path a line.
    let listed = |f: &str| {
        h.read(&format!("lib/modules/{release}/{f}")).is_some_and(|t| {
            t.lines()
                .filter_map(|l| l.split(':').next())
                .any(|m| m.rsplit('/').next().is_some_and(|n| n.starts_with("vfio-pci.ko")))
        })
    };
    if !release.is_empty() && (listed("modules.builtin") || listed("modules.dep")) {
        return pass(ID, "vfio-pci is available; libvirt loads it when a VM with a passthrough device starts");
    }
    warn(
        ID,
        format!("vfio-pci is neither loaded nor found in /lib/modules/{release} ({PASSTHROUGH_ONLY})"),
        format!(
            "`modprobe vfio-pci`; if it is missing, {}",
            h.distro.install("linux-image-amd64 (the kernel's modules)", "kernel-modules-core")
        ),
    )
}

fn firmware_uefi(h: &Host) -> Check {
    const ID: &str = "firmware.uefi";
    match h.facts.firmware.iter().find(|f| f.is_uefi_q35()) {
        Some(f) => pass(ID, format!("OVMF (UEFI) for q35 guests: {} ({})", f.executable, f.name)),
        None => fail(
            ID,
            "no UEFI firmware (OVMF) for q35 guests: Windows 11, macOS and most current OSes need it",
            h.distro.install("ovmf", "edk2-ovmf"),
        ),
    }
}

fn firmware_secureboot(h: &Host) -> Check {
    const ID: &str = "firmware.secureboot";
    let uefi: Vec<_> = h.facts.firmware.iter().filter(|f| f.is_uefi_q35() && f.has("secure-boot")).collect();
    if let Some(f) = uefi.iter().find(|f| f.has("enrolled-keys")) {
        return pass(ID, format!("secure-boot OVMF with Microsoft keys enrolled: {} ({})", f.executable, f.name));
    }
    let install = match h.distro {
        Distro::Apt => {
            "`apt install ovmf` (Debian 12 and Ubuntu 22.04 or later ship OVMF_CODE_4M.ms.fd with its descriptor)"
                .to_string()
        }
        _ => h.distro.install("ovmf", "edk2-ovmf"),
    };
    if uefi.is_empty() {
        return warn(ID, "no secure-boot OVMF build: Windows 11 needs secure boot", install);
    }
    warn(ID, "secure-boot OVMF without Microsoft keys enrolled: Windows 11 cannot boot with secure boot on", install)
}

fn tpm(h: &Host) -> Check {
    const ID: &str = "tpm.swtpm";
    if h.facts.swtpm {
        pass(ID, "swtpm is installed: guests get a TPM 2.0 (Windows 11 needs one)")
    } else {
        warn(
            ID,
            "no swtpm: guests get no TPM, and Windows 11 will not install",
            h.distro.install("swtpm swtpm-tools", "swtpm swtpm-tools"),
        )
    }
}

fn render_node(h: &Host) -> Check {
    const ID: &str = "gpu.rendernode";
    let nodes = &h.facts.render_nodes;
    match (nodes.first(), h.facts.virgl) {
        (Some(n), true) => pass(ID, format!("render node {n} and QEMU's virtio-gpu-gl: Linux guests get 3D (virgl)")),
        (Some(n), false) => warn(
            ID,
            format!("render node {n}, but QEMU has no virtio-gpu-gl module: guests get 2D graphics only"),
            h.distro.install("qemu-system-gui", "qemu-device-display-virtio-gpu-gl"),
        ),
        (None, _) => warn(
            ID,
            "no GPU render node (/dev/dri/renderD*): guests get 2D graphics only (no virgl)",
            "for 3D in Linux guests, the host needs a GPU with its kernel driver loaded (Mesa: i915, amdgpu, \
             nouveau); nothing to do on a headless server",
        ),
    }
}

fn qemu_binary(h: &Host) -> Option<&'static str> {
    ["usr/bin/qemu-system-x86_64", "usr/libexec/qemu-kvm", "usr/local/bin/qemu-system-x86_64"]
        .into_iter()
        .find(|p| h.exists(p))
}

fn qemu_version(h: &Host, inputs: &Inputs) -> Check {
    const ID: &str = "qemu.version";
    let Some(bin) = qemu_binary(h) else {
        return fail(ID, "QEMU is not installed", h.distro.install("qemu-system-x86", "qemu-kvm"));
    };
    match &inputs.libvirt {
        Some(Ok(v)) if Version::parse(&v.qemu) < RECOMMENDED_QEMU => warn(
            ID,
            format!("QEMU {} (/{bin}) is older than 6.2: no virtio-gpu-gl, older q35 machine types", v.qemu),
            "upgrade QEMU (Debian 12 ships 7.2, Fedora 39 ships 8.1)",
        ),
        Some(Ok(v)) => pass(ID, format!("QEMU {} (/{bin})", v.qemu)),
        Some(Err(_)) => warn(
            ID,
            format!("QEMU at /{bin}; its version is unknown: libvirtd did not answer"),
            "see libvirt.connection",
        ),
        None => pass(ID, format!("QEMU at /{bin}")),
    }
}

/// The virtiofs daemon that shared folders need: QEMU ≥ 8 no longer ships one.
fn virtiofsd(h: &Host) -> Check {
    const ID: &str = "virtiofsd";
    let build = "build the Rust daemon: `apt install libseccomp-dev libcap-ng-dev && cargo install virtiofsd`, copy ~/.cargo/bin/virtiofsd to /usr/local/libexec/virtiofsd and describe it to libvirt in /usr/share/qemu/vhost-user/50-virtiofsd.json ({\"type\": \"fs\", \"binary\": \"/usr/local/libexec/virtiofsd\"})";
    let install = match h.distro {
        Distro::Dnf => "dnf install virtiofsd".to_string(),
        Distro::Apt => format!("apt install virtiofsd (Debian 13, Ubuntu 24.04 and later); where there is no such package (Debian 12), {build}"),
        Distro::Unknown => format!("install your distribution's virtiofsd package, or {build}"),
    };
    match (crate::platform::described_virtiofsd(h.root), crate::platform::find_virtiofsd(h.root)) {
        (Some(bin), _) => pass(ID, format!("virtiofsd at {bin}: shared folders work")),
        (None, Some(bin)) => warn(
            ID,
            format!("virtiofsd at {bin}, but no vhost-user descriptor tells libvirt about it"),
            format!(
                "write /usr/share/qemu/vhost-user/50-virtiofsd.json with {{\"type\": \"fs\", \"binary\": \"{bin}\"}}"
            ),
        ),
        (None, None) => warn(ID, "no virtiofs daemon: shared folders are unavailable", install),
    }
}

fn libvirt_connection(h: &Host, inputs: &Inputs) -> Check {
    const ID: &str = "libvirt.connection";
    let uri = &inputs.uri;
    match &inputs.libvirt {
        Some(Ok(_)) => pass(ID, format!("libvirtd answers on {uri}")),
        Some(Err(e)) => {
            let denied = ["denied", "authentication", "not authorized", "Permission"].iter().any(|w| e.contains(w));
            let fix = if !h.exists("usr/sbin/libvirtd") && !h.exists("usr/sbin/virtqemud") {
                h.distro.install("libvirt-daemon-system", "libvirt-daemon-kvm")
            } else if denied && inputs.user.uid != 0 {
                format!("`usermod -aG libvirt {}` (as root), then log out and back in", inputs.user.name)
            } else if h.exists("run/systemd/system") {
                "`systemctl enable --now libvirtd`".to_string()
            } else {
                "start the daemons: `virtlogd -d && libvirtd -d`".to_string()
            };
            fail(ID, format!("libvirtd does not answer on {uri}: {e}"), fix)
        }
        None => warn(
            ID,
            format!("not asked ({})", inputs.not_live.as_deref().unwrap_or("no connection")),
            "run `phyllome check` on the host itself",
        ),
    }
}

fn libvirt_version(inputs: &Inputs) -> Check {
    const ID: &str = "libvirt.version";
    match &inputs.libvirt {
        Some(Ok(v)) if Version::parse(&v.libvirt) < MIN_LIBVIRT => fail(
            ID,
            format!(
                "libvirt {} is too old: Phyllome needs 7.2 or newer (firmware selection by secure-boot feature)",
                v.libvirt
            ),
            "upgrade libvirt (Debian 12 ships 9.0, Ubuntu 22.04 ships 8.0, Fedora 39 ships 9.7)",
        ),
        Some(Ok(v)) => pass(ID, format!("libvirt {}", v.libvirt)),
        Some(Err(_)) => warn(ID, "unknown: libvirtd did not answer", "see libvirt.connection"),
        None => warn(
            ID,
            format!("not asked ({})", inputs.not_live.as_deref().unwrap_or("no connection")),
            "run `phyllome check` on the host itself",
        ),
    }
}

fn resources_cpu(h: &Host) -> Check {
    const ID: &str = "resources.cpu";
    let n = h.facts.cpus;
    let more = if h.in_vm { "give this VM more vCPUs" } else { "use a host with more CPU cores" };
    if n < MIN_CPUS {
        fail(ID, format!("{n} logical CPU: at least {MIN_CPUS} are needed, one for the host and one for a guest"), more)
    } else if n < RECOMMENDED_CPUS {
        warn(
            ID,
            format!("{n} logical CPUs: {RECOMMENDED_CPUS} or more are recommended so guests and host do not compete"),
            more,
        )
    } else {
        pass(ID, format!("{n} logical CPUs"))
    }
}

fn gib(mib: u64) -> String {
    format!("{:.1} GiB", mib as f64 / 1024.0)
}

fn resources_memory(h: &Host) -> Check {
    const ID: &str = "resources.memory";
    let m = h.facts.memory_mib;
    let more = if h.in_vm { "give this VM more memory" } else { "add memory" };
    if m < MIN_MEMORY_MIB {
        fail(ID, format!("{} of memory: at least 4 GiB are needed", gib(m)), more)
    } else if m < RECOMMENDED_MEMORY_MIB {
        warn(ID, format!("{} of memory: 16 GiB are recommended to run a desktop guest beside the host", gib(m)), more)
    } else {
        pass(ID, format!("{} of memory", gib(m)))
    }
}

/// Moves cut short (phyllome killed, the destination away): each VM may run on the other
/// host, so it stays off here until the move is settled.
fn migrations(inputs: &Inputs) -> Check {
    const ID: &str = "migrations";
    match &inputs.migrations {
        None => pass(ID, "unsettled migrations: not asked"),
        Some(m) if m.is_empty() => pass(ID, "no migration was cut short"),
        Some(m) => warn(
            ID,
            format!("{} migration(s) cut short and not settled: {}", m.len(), m.join("; ")),
            "bring the destination back: the next phyllome command finishes or undoes each move;              `phyllome host clean HOST` does it now (`--dry-run` first says what it would do)",
        ),
    }
}

fn resources_disk(inputs: &Inputs) -> Check {
    const ID: &str = "resources.disk";
    let Some(d) = &inputs.disk else {
        return warn(
            ID,
            format!(
                "free space where disks live: {}",
                inputs.not_live.as_deref().map_or("unknown".to_string(), |w| format!("not asked ({w})"))
            ),
            "run `phyllome check` on the host itself",
        );
    };
    let free_gib = d.free_bytes / (1 << 30);
    let fix = format!(
        "free space on the file system of {p}, or keep VM disks on a bigger one before creating VMs: \
         `virsh pool-define-as phyllome dir --target /BIG/DISK/phyllome && virsh pool-build phyllome && \
         virsh pool-start phyllome && virsh pool-autostart phyllome`",
        p = d.path
    );
    if free_gib < MIN_FREE_GIB {
        fail(ID, format!("{free_gib} GiB free in {}: at least {MIN_FREE_GIB} GiB are needed", d.path), fix)
    } else if free_gib < RECOMMENDED_FREE_GIB {
        warn(
            ID,
            format!(
                "{free_gib} GiB free in {}: {RECOMMENDED_FREE_GIB} GiB recommended (Windows 11 asks for a 64 GiB disk)",
                d.path
            ),
            fix,
        )
    } else {
        pass(ID, format!("{free_gib} GiB free in {}", d.path))
    }
}

fn secure_guest(h: &Host) -> Check {
    const ID: &str = "secure-guest";
    let on = |p: &str| h.read(p).is_some_and(|v| matches!(v.as_str(), "Y" | "y" | "1"));
    if on("sys/module/kvm_amd/parameters/sev") {
        pass(ID, "AMD SEV is available for confidential guests")
    } else if on("sys/module/kvm_intel/parameters/tdx") {
        pass(ID, "Intel TDX is available for confidential guests")
    } else {
        pass(ID, "no AMD SEV or Intel TDX: confidential guests are unavailable (Phyllome's VMs do not use them)")
    }
}

/// Runs every check against `root` with the live inputs.
pub fn run(root: &Path, inputs: &Inputs) -> Report {
    let cpuinfo = fs::read_to_string(at(root, "proc/cpuinfo")).unwrap_or_default();
    let flags = cpu_flags(&cpuinfo);
    let h = Host {
        root,
        facts: read_facts(root),
        in_vm: flags.contains("hypervisor"),
        flags,
        distro: parse_os_release(&fs::read_to_string(at(root, "etc/os-release")).unwrap_or_default()),
        cmdline: fs::read_to_string(at(root, "proc/cmdline"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        meminfo: fs::read_to_string(at(root, "proc/meminfo")).unwrap_or_default(),
    };
    let device = kvm_device(&h, &inputs.user);
    let functional = kvm_functional(&h, inputs, &device);
    let checks = vec![
        cpu_virtualization(&h),
        device,
        functional,
        kvm_nested(&h),
        vhost_net(&h),
        tun(&h),
        cgroups(&h),
        hugepages(&h),
        iommu_firmware(&h),
        iommu_kernel(&h),
        vfio(&h),
        firmware_uefi(&h),
        firmware_secureboot(&h),
        tpm(&h),
        render_node(&h),
        virtiofsd(&h),
        qemu_version(&h, inputs),
        libvirt_connection(&h, inputs),
        libvirt_version(inputs),
        resources_cpu(&h),
        resources_memory(&h),
        resources_disk(inputs),
        migrations(inputs),
        secure_guest(&h),
    ];
    let verdict = checks.iter().map(|c| c.status).max().unwrap_or(Status::Pass);
    Report { verdict, checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn flags_versions_and_df() {
        let f = cpu_flags("processor: 0\nflags\t\t: fpu vmx hypervisor\n\nprocessor: 1\nflags: fpu\n");
        assert!(f.contains("vmx") && f.contains("hypervisor") && f.len() == 3);
        assert!(Version::parse("7.1.9") < MIN_LIBVIRT && Version::parse("7.2.0") >= MIN_LIBVIRT);
        let df = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n/dev/vda 263174212 12000000 83886080 13% /\n";
        assert_eq!(parse_df(df), Some(83886080 * 1024));
        assert_eq!(parse_df("garbage"), None);
    }

    #[test]
    fn os_release_picks_the_package_manager() {
        assert_eq!(parse_os_release("ID=debian\n"), Distro::Apt);
        assert_eq!(parse_os_release("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n"), Distro::Apt);
        assert_eq!(parse_os_release("ID=fedora\n"), Distro::Dnf);
        assert_eq!(parse_os_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n"), Distro::Dnf);
        assert_eq!(parse_os_release("ID=arch\n"), Distro::Unknown);
        assert!(Distro::Dnf.kernel_params("iommu=pt").contains("grubby --update-kernel=ALL --args=\"iommu=pt\""));
        assert!(Distro::Apt.kernel_params("iommu=pt").contains("update-grub"));
    }

    #[test]
    fn device_access_by_mode_owner_and_group() {
        let user = User { uid: 1000, gids: vec![1000, 108], name: "ann".into() };
        assert!(can_open_rw(&user, 0o660, 0, 108), "member of the kvm group");
        assert!(!can_open_rw(&user, 0o660, 0, 36), "not a member");
        assert!(can_open_rw(&user, 0o666, 0, 36), "world read-write");
        assert!(can_open_rw(&user, 0o600, 1000, 36), "owner");
        assert!(can_open_rw(&User::root(), 0o600, 5, 5), "root");
    }

    #[test]
    fn migrations_cut_short_are_a_warning_with_the_command_that_settles_them() {
        let mut inputs = Inputs::recorded("test");
        assert_eq!(migrations(&inputs).status, Status::Pass, "not asked");
        inputs.migrations = Some(vec![]);
        assert_eq!(migrations(&inputs).status, Status::Pass);
        inputs.migrations =
            Some(vec!["w11 to lab (lab does not answer; left there: volume phyllome/w11.qcow2)".into()]);
        let c = migrations(&inputs);
        assert_eq!(c.status, Status::Warn);
        assert!(c.summary.contains("w11 to lab") && c.summary.contains("volume phyllome/w11.qcow2"), "{c:?}");
        assert!(c.fix.as_deref().unwrap_or_default().contains("phyllome host clean HOST"), "{c:?}");
    }

    #[test]
    fn iommu_params_per_vendor() {
        assert_eq!(iommu_params(CpuVendor::Intel), "intel_iommu=on iommu=pt");
        assert_eq!(iommu_params(CpuVendor::Amd), "iommu=pt");
    }

    fn host_in(dir: &Path, cpuinfo: &str, meminfo: &str) -> Report {
        fs::create_dir_all(dir.join("proc")).unwrap();
        fs::write(dir.join("proc/cpuinfo"), cpuinfo).unwrap();
        fs::write(dir.join("proc/meminfo"), meminfo).unwrap();
        run(dir, &Inputs::recorded("test"))
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("phyllome-check-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn amd_with_svm_but_no_kvm_says_modprobe_then_firmware() {
        let d = scratch("amd-svm");
        let r = host_in(&d, "processor: 0\nvendor_id: AuthenticAMD\nflags: svm\n", "MemTotal: 2097152 kB\n");
        let dev = r.get("kvm.device").unwrap();
        assert_eq!(dev.status, Status::Fail);
        let fix = dev.fix.as_deref().unwrap();
        assert!(fix.contains("modprobe kvm_amd") && fix.contains("'SVM Mode'"), "{fix}");
        // One logical CPU and 2 GiB: below the minimum.
        assert_eq!(r.get("resources.cpu").unwrap().status, Status::Fail);
        assert_eq!(r.get("resources.memory").unwrap().status, Status::Fail);
        assert!(r.failed());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn virtiofsd_found_described_or_missing() {
        let d = scratch("virtiofsd");
        let cpu = "processor: 0\nvendor_id: GenuineIntel\nflags: vmx\n";
        let mem = "MemTotal: 2097152 kB\n";
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
        let c = host_in(&d, cpu, mem).get("virtiofsd").unwrap().clone();
        assert_eq!(c.status, Status::Warn);
        let fix = c.fix.unwrap();
        assert!(fix.contains("apt install virtiofsd") && fix.contains("cargo install virtiofsd"), "{fix}");
        assert!(!fix.contains("setup.sh"), "an installed package has no setup.sh: {fix}");
        // A daemon libvirt cannot find: the descriptor is the fix.
        fs::create_dir_all(d.join("usr/local/libexec")).unwrap();
        fs::write(d.join("usr/local/libexec/virtiofsd"), "").unwrap();
        let c = host_in(&d, cpu, mem).get("virtiofsd").unwrap().clone();
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.unwrap().contains("/usr/share/qemu/vhost-user/50-virtiofsd.json"));
        fs::create_dir_all(d.join("usr/share/qemu/vhost-user")).unwrap();
        fs::write(
            d.join("usr/share/qemu/vhost-user/50-x.json"),
            r#"{"type": "fs", "binary": "/usr/local/libexec/virtiofsd"}"#,
        )
        .unwrap();
        let c = host_in(&d, cpu, mem).get("virtiofsd").unwrap().clone();
        assert_eq!(
            (c.status, c.summary.as_str()),
            (Status::Pass, "virtiofsd at /usr/local/libexec/virtiofsd: shared folders work")
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_device_moved_aside_as_broken_is_reported_with_the_way_back() {
        let d = scratch("aside");
        fs::create_dir_all(d.join("dev")).unwrap();
        fs::write(d.join("dev/kvm.phyllome-broken"), "").unwrap();
        let r = host_in(&d, "processor: 0\nvendor_id: GenuineIntel\nflags: vmx\n", "MemTotal: 2097152 kB\n");
        let dev = r.get("kvm.device").unwrap();
        assert_eq!(dev.status, Status::Fail);
        assert!(dev.summary.contains("moved aside"), "{}", dev.summary);
        let func = r.get("kvm.functional").unwrap();
        assert_eq!(func.status, Status::Fail);
        assert!(func.summary.contains("slow TCG"), "{}", func.summary);
        // The way back works from an installed package too, which has no scripts/setup.sh.
        let fix = func.fix.as_deref().unwrap();
        assert!(fix.contains("mv /dev/kvm.phyllome-broken /dev/kvm") && !fix.contains("setup.sh"), "{fix}");
        assert!(!dev.fix.as_deref().unwrap().contains("setup.sh"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn probe_verdicts_and_disk_space() {
        let d = scratch("probe");
        fs::create_dir_all(d.join("dev")).unwrap();
        fs::write(d.join("dev/kvm"), "").unwrap();
        fs::create_dir_all(d.join("proc")).unwrap();
        fs::write(d.join("proc/cpuinfo"), "processor: 0\nvendor_id: GenuineIntel\nflags: vmx\n").unwrap();
        let mut inputs = Inputs::recorded("test");
        inputs.not_live = None;
        inputs.kvm_probe = Some(Probe { state: KvmState::Usable, detail: "ok".into() });
        inputs.disk = Some(DiskSpace { path: "/var/lib/x".into(), free_bytes: 5 << 30 });
        let r = run(&d, &inputs);
        assert_eq!(r.get("kvm.functional").unwrap().status, Status::Pass);
        assert_eq!(r.get("kvm.device").unwrap().status, Status::Pass);
        let disk = r.get("resources.disk").unwrap();
        assert_eq!(disk.status, Status::Fail);
        assert!(
            disk.summary.contains("5 GiB free in /var/lib/x")
                && disk.fix.as_deref().unwrap().contains("pool-define-as")
        );
        inputs.disk = Some(DiskSpace { path: "/x".into(), free_bytes: 32 << 30 });
        inputs.kvm_probe = Some(Probe { state: KvmState::Broken, detail: "the probe guest hung".into() });
        let r = run(&d, &inputs);
        assert_eq!(r.get("resources.disk").unwrap().status, Status::Warn);
        let f = r.get("kvm.functional").unwrap();
        assert_eq!(f.status, Status::Fail);
        assert!(f.summary.contains("hung") && f.summary.contains("slow TCG emulation"), "{}", f.summary);
        // No QEMU: the probe could not run.
        inputs.kvm_probe = None;
        let r = run(&d, &inputs);
        assert_eq!(r.get("kvm.functional").unwrap().status, Status::Warn);
        assert_eq!(r.get("qemu.version").unwrap().status, Status::Fail);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn libvirt_answers_and_versions() {
        let d = scratch("libvirt");
        fs::create_dir_all(d.join("usr/sbin")).unwrap();
        fs::write(d.join("usr/sbin/libvirtd"), "").unwrap();
        let mut inputs = Inputs::recorded("test");
        inputs.not_live = None;
        inputs.libvirt = Some(Ok(Versions { libvirt: "7.0.0".into(), qemu: "5.2.0".into() }));
        let r = host_in(&d, "", "");
        assert_eq!(r.get("libvirt.connection").unwrap().status, Status::Warn, "not asked");
        let r = run(&d, &inputs);
        assert_eq!(r.get("libvirt.version").unwrap().status, Status::Fail);
        assert_eq!(r.get("libvirt.connection").unwrap().status, Status::Pass);
        inputs.libvirt = Some(Err("Failed to connect socket: Permission denied".into()));
        inputs.user = User { uid: 1000, gids: vec![1000], name: "ann".into() };
        let r = run(&d, &inputs);
        let c = r.get("libvirt.connection").unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.as_deref().unwrap().contains("usermod -aG libvirt ann"), "{c:?}");
        let _ = fs::remove_dir_all(&d);
    }
}
