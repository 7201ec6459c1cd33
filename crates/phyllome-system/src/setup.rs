//! `phyllome host setup`: the planner.
//!
//! [`plan`] reads a root directory and returns the [`Change`]s that make the
//! host ready for virtualization, each with the file contents before and
//! after (or the command that will run) and why. It only reads: applying is
//! [`crate::apply`]. Phyllome owns a few things and touches nothing else:
//!
//! - the IOMMU parameters it adds to the kernel command line (never one the
//!   user already set to another value), through the host's own tool:
//!   grubby (Fedora), the GRUB defaults file + update-grub (Debian-like), or
//!   `/etc/kernel/cmdline` + kernel-install (systemd-boot);
//! - its own drop-ins `/etc/modules-load.d/phyllome-vfio.conf` and
//!   `/etc/modprobe.d/phyllome-kvm.conf`;
//! - the `vnc_listen` and `spice_listen` keys of libvirt's `qemu.conf` (never
//!   `security_driver` or any other key);
//! - its storage pool directory and the pool's definition in libvirt.

use crate::diff::line_diff;
use crate::edit::{self, ParamState};
use phyllome_model::host::CpuVendor;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const VFIO_MODULES_FILE: &str = "/etc/modules-load.d/phyllome-vfio.conf";
pub const KVM_MODPROBE_FILE: &str = "/etc/modprobe.d/phyllome-kvm.conf";
pub const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
pub const GRUB_DEFAULTS: &str = "/etc/default/grub";
pub const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";
pub const BLS_ENTRIES: &str = "/boot/loader/entries";
/// The mode of the pool directory: libvirt's QEMU user can reach the disks
/// (their own permissions decide) but not list them.
pub const POOL_MODE: u32 = 0o711;
/// The `qemu.conf` keys Phyllome owns, and their values (libvirt's syntax).
pub const QEMU_CONF_KEYS: [(&str, &str); 2] = [("vnc_listen", "\"127.0.0.1\""), ("spice_listen", "\"127.0.0.1\"")];

/// A path inside `root` (`/etc/x` under a fixture tree is `<root>/etc/x`).
pub use phyllome_host::facts::at;

/// An error while reading the host.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot understand {path}: {message}")]
    Parse { path: String, message: String },
}

/// How this host's kernel command line is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTool {
    /// Fedora and its family: `grubby --update-kernel=ALL --args=...`.
    Grubby,
    /// `/etc/default/grub`, then this command regenerates grub.cfg.
    GrubDefaults { regenerate: Vec<String> },
    /// systemd-boot and other kernel-install hosts: `/etc/kernel/cmdline`.
    KernelInstall,
    /// Nothing found (a container, or an unknown boot loader).
    Unknown,
}

impl fmt::Display for BootTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootTool::Grubby => write!(f, "grubby"),
            BootTool::GrubDefaults { regenerate } => write!(f, "{GRUB_DEFAULTS} + {}", regenerate.join(" ")),
            BootTool::KernelInstall => write!(f, "{KERNEL_CMDLINE} + kernel-install"),
            BootTool::Unknown => write!(f, "no known tool"),
        }
    }
}

/// What the planner knows of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub vendor: CpuVendor,
    pub boot: BootTool,
    /// systemd manages services (`/run/systemd/system` exists).
    pub systemd: bool,
}

fn exists(root: &Path, path: &str) -> bool {
    at(root, path).exists()
}

/// Reads the CPU vendor (`/proc/cpuinfo`) and finds the boot tool under `root`.
pub fn detect(root: &Path) -> HostView {
    let cpuinfo = fs::read_to_string(at(root, "/proc/cpuinfo")).unwrap_or_default();
    let (vendor, _, _) = phyllome_host::facts::parse_cpuinfo(&cpuinfo);
    let sbin = |name: &str| ["/usr/sbin/", "/usr/bin/", "/sbin/"].iter().any(|d| exists(root, &format!("{d}{name}")));
    let boot = if sbin("grubby") {
        BootTool::Grubby
    } else if exists(root, GRUB_DEFAULTS) {
        let regenerate = if sbin("update-grub") {
            vec!["update-grub".to_string()]
        } else if sbin("grub2-mkconfig") {
            vec!["grub2-mkconfig".into(), "-o".into(), "/boot/grub2/grub.cfg".into()]
        } else {
            vec!["grub-mkconfig".into(), "-o".into(), "/boot/grub/grub.cfg".into()]
        };
        BootTool::GrubDefaults { regenerate }
    } else if exists(root, KERNEL_CMDLINE) || (sbin("kernel-install") && has_bls_entries(root)) {
        BootTool::KernelInstall
    } else {
        BootTool::Unknown
    };
    HostView { vendor, boot, systemd: exists(root, "/run/systemd/system") }
}

/// Boot Loader Specification entries exist where systemd-boot reads them.
fn has_bls_entries(root: &Path) -> bool {
    [BLS_ENTRIES, "/efi/loader/entries", "/boot/efi/loader/entries"]
        .iter()
        .any(|d| !conf_files(root, d, ".conf").is_empty())
}

/// Whether libvirt already has the pool (asked by the caller on a live host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    /// Not asked: a `--root` tree, or libvirt did not answer.
    Unknown(String),
    Absent,
    /// Defined, with this target path.
    Defined(Option<String>),
}

/// What to plan for.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    /// `root` is the running host's `/`: commands run and libvirt is asked.
    pub live: bool,
    pub pool_name: String,
    pub pool_path: String,
    pub pool_state: PoolState,
}

/// One step of the setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    KernelParams,
    VfioModules,
    Nested,
    Libvirt,
    Pool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::KernelParams => "kernel parameters",
            Step::VfioModules => "vfio modules",
            Step::Nested => "nested virtualization",
            Step::Libvirt => "libvirt QEMU driver",
            Step::Pool => "storage pool",
        })
    }
}

/// A file's content before and after a change (`before` is `None` for a new file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    pub path: String,
    pub before: Option<String>,
    pub after: String,
}

/// What a change does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Writes a whole file (its mode and owner are kept when it exists).
    Write(FileEdit),
    /// Creates a directory or fixes its mode (and owner, when `owner` is set).
    Dir { path: String, mode: u32, owner: Option<(u32, u32)>, before: Option<(u32, u32, u32)> },
    /// Runs a command on a live host. On a `--root` tree it is only recorded,
    /// and `emulated` (the files the command changes, when Phyllome knows
    /// them) is written instead, so a second plan on the tree is empty.
    Run { argv: Vec<String>, emulated: Vec<FileEdit> },
    /// Defines (with mode 0711, owner root), builds, starts and autostarts the
    /// storage pool in libvirt (live hosts only; the caller does it through
    /// phyllome-libvirt, the one crate that talks to libvirt).
    DefinePool { name: String, path: String },
}

/// One change: what, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub step: Step,
    pub action: Action,
    pub why: String,
}

impl Change {
    /// A one-line summary: the verb and the target.
    pub fn summary(&self) -> String {
        match &self.action {
            Action::Write(e) if e.before.is_none() => format!("create {}", e.path),
            Action::Write(e) => format!("edit {}", e.path),
            Action::Dir { path, mode, owner, before: None } => {
                format!("create directory {path} (mode {mode:04o}{})", owner_text(*owner))
            }
            Action::Dir { path, mode, owner, before: Some((m, u, g)) } => {
                format!("set {path} to mode {mode:04o}{} (was {m:04o}, owner {u}:{g})", owner_text(*owner))
            }
            Action::Run { argv, .. } => format!("run {}", shell_words(argv)),
            Action::DefinePool { name, path, .. } => {
                format!("define libvirt storage pool {name} (dir {path}), build, start and autostart it")
            }
        }
    }
}

fn owner_text(owner: Option<(u32, u32)>) -> String {
    match owner {
        Some((0, 0)) => ", owner root:root".into(),
        Some((u, g)) => format!(", owner {u}:{g}"),
        None => String::new(),
    }
}

/// A command as a shell would show it (arguments with spaces or quotes quoted).
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The changes for one host, and what was found and left alone.
#[derive(Debug, Clone)]
pub struct Plan {
    pub host: HostView,
    pub changes: Vec<Change>,
    /// Settings found and kept, steps skipped, and what to do by hand.
    pub notes: Vec<String>,
}

impl Plan {
    /// The plan as shown to the user before anything is done (paths are the
    /// host's, without the `--root` prefix).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let vendor = match self.host.vendor {
            CpuVendor::Intel => "Intel",
            CpuVendor::Amd => "AMD",
            CpuVendor::Other => "unknown",
        };
        out.push_str(&format!(
            "host: {vendor} CPU; kernel command line through {}; services: {}\n",
            self.host.boot,
            if self.host.systemd { "systemd" } else { "no systemd" }
        ));
        match self.changes.len() {
            0 => out.push_str("no changes: this host is set up\n"),
            1 => out.push_str("1 change:\n"),
            n => out.push_str(&format!("{n} changes:\n")),
        }
        for (i, c) in self.changes.iter().enumerate() {
            out.push_str(&format!("\n{}. {}: {}\n   why: {}\n", i + 1, c.step, c.summary(), c.why));
            let edits: Vec<&FileEdit> = match &c.action {
                Action::Write(e) => vec![e],
                Action::Run { emulated, .. } => emulated.iter().collect(),
                _ => vec![],
            };
            let show_path = !matches!(c.action, Action::Write(_));
            for e in edits {
                if show_path {
                    out.push_str(&format!("   {}:\n", e.path));
                }
                for line in line_diff(e.before.as_deref().unwrap_or(""), &e.after) {
                    out.push_str(format!("     {line}").trim_end());
                    out.push('\n');
                }
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nnotes (left as they are, or for you to do):\n");
            for n in &self.notes {
                out.push_str(&format!("  - {n}\n"));
            }
        }
        out
    }
}

fn read_opt(root: &Path, path: &str) -> Result<Option<String>, PlanError> {
    match fs::read_to_string(at(root, path)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PlanError::Read { path: path.to_string(), source }),
    }
}

/// `*.conf` files of a directory under the root, sorted, as host paths.
fn conf_files(root: &Path, dir: &str, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(at(root, dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(ext))
                .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The IOMMU parameters for a CPU vendor: AMD's IOMMU is on by default.
pub fn iommu_params(vendor: CpuVendor) -> Vec<String> {
    match vendor {
        CpuVendor::Intel => vec!["intel_iommu=on".into(), "iommu=pt".into()],
        CpuVendor::Amd => vec!["iommu=pt".into()],
        CpuVendor::Other => vec![],
    }
}

const IOMMU_WHY: &str = "the IOMMU isolates devices passed through to VMs (GPUs, NICs, USB controllers) \
                         and iommu=pt keeps the host's own DMA fast; takes effect at the next boot";

/// Plans every step. Reads files under `opts.root` only.
pub fn plan(opts: &Options) -> Result<Plan, PlanError> {
    let root = opts.root.as_path();
    let host = detect(root);
    let mut p = Plan { host: host.clone(), changes: Vec::new(), notes: Vec::new() };
    kernel_params(root, &host, &mut p)?;
    vfio_modules(root, &mut p)?;
    nested(root, &host, &mut p)?;
    libvirt_qemu_conf(root, &host, &mut p)?;
    pool(root, opts, &mut p)?;
    Ok(p)
}

/// Decides which wanted parameters to add given the tokens of every place the
/// command line lives. A parameter set to another value anywhere is the
/// user's and is not added; one missing anywhere is added.
fn params_to_add(
    wanted: &[String],
    sources: &[(String, Vec<String>)],
    conflicts_only: &[(String, Vec<String>)],
    notes: &mut Vec<String>,
) -> Vec<String> {
    let mut add = Vec::new();
    for w in wanted {
        let conflicts: Vec<String> = sources
            .iter()
            .chain(conflicts_only)
            .filter_map(|(place, tokens)| match edit::param_state(tokens, w) {
                ParamState::Conflict(t) => Some(format!("{t} in {place}")),
                _ => None,
            })
            .collect();
        if !conflicts.is_empty() {
            notes.push(format!("kernel parameter {w} not added: you set {}", conflicts.join(", ")));
        } else if sources.iter().any(|(_, t)| edit::param_state(t, w) == ParamState::Missing) {
            add.push(w.clone());
        }
    }
    add
}

fn kernel_params(root: &Path, host: &HostView, p: &mut Plan) -> Result<(), PlanError> {
    let wanted = iommu_params(host.vendor);
    if wanted.is_empty() {
        p.notes.push("kernel parameters: CPU vendor unknown, so no IOMMU parameters are added".into());
        return Ok(());
    }
    let parse_err = |path: &str| {
        let path = path.to_string();
        move |message: String| PlanError::Parse { path, message }
    };
    match &host.boot {
        BootTool::Grubby => {
            // grubby --update-kernel=ALL --args changes every BLS entry, and
            // Fedora's grubby also GRUB_CMDLINE_LINUX and /etc/kernel/cmdline
            // so future kernels get the parameters too.
            let mut sources = Vec::new();
            let mut files = Vec::new();
            for path in conf_files(root, BLS_ENTRIES, ".conf") {
                let text = read_opt(root, &path)?.unwrap_or_default();
                if let Some(opts) = edit::bls_options(&text) {
                    sources.push((path.clone(), edit::cmdline_tokens(&opts)));
                    files.push((path, text));
                }
            }
            let grub = read_opt(root, GRUB_DEFAULTS)?;
            if let Some(text) = &grub {
                if let Some(a) = edit::shell_assignment(text, "GRUB_CMDLINE_LINUX").map_err(parse_err(GRUB_DEFAULTS))? {
                    sources.push((GRUB_DEFAULTS.to_string(), edit::cmdline_tokens(&a.value)));
                }
            }
            let cmdline = read_opt(root, KERNEL_CMDLINE)?;
            if let Some(text) = &cmdline {
                sources.push((KERNEL_CMDLINE.to_string(), edit::cmdline_tokens(text)));
            }
            if sources.is_empty() {
                p.notes.push(format!("kernel parameters: grubby found but no boot entries in {BLS_ENTRIES}"));
                return Ok(());
            }
            let add = params_to_add(&wanted, &sources, &[], &mut p.notes);
            if add.is_empty() {
                return Ok(());
            }
            let mut emulated = Vec::new();
            for (path, text) in files {
                if let Some(after) = edit::bls_add(&text, &add).filter(|a| *a != text) {
                    emulated.push(FileEdit { path, before: Some(text), after });
                }
            }
            if let Some(text) = grub {
                let after = edit::grub_defaults_add(&text, &add, IOMMU_WHY).map_err(parse_err(GRUB_DEFAULTS))?;
                if after != text && edit::shell_assignment(&text, "GRUB_CMDLINE_LINUX").ok().flatten().is_some() {
                    emulated.push(FileEdit { path: GRUB_DEFAULTS.into(), before: Some(text), after });
                }
            }
            if let Some(text) = cmdline {
                let after = edit::cmdline_file_add(&text, &add);
                if after != text {
                    emulated.push(FileEdit { path: KERNEL_CMDLINE.into(), before: Some(text), after });
                }
            }
            let argv = vec!["grubby".into(), "--update-kernel=ALL".into(), format!("--args={}", add.join(" "))];
            p.changes.push(Change { step: Step::KernelParams, action: Action::Run { argv, emulated }, why: IOMMU_WHY.into() });
        }
        BootTool::GrubDefaults { regenerate } => {
            let text = read_opt(root, GRUB_DEFAULTS)?.unwrap_or_default();
            let sources =
                vec![(GRUB_DEFAULTS.to_string(), edit::grub_defaults_tokens(&text).map_err(parse_err(GRUB_DEFAULTS))?)];
            // Debian's grub-mkconfig also reads /etc/default/grub.d/*.cfg: a
            // parameter set to another value there is the user's too.
            let mut elsewhere = Vec::new();
            for cfg in conf_files(root, "/etc/default/grub.d", ".cfg") {
                let t = read_opt(root, &cfg)?.unwrap_or_default();
                if let Some(a) = edit::shell_assignment(&t, "GRUB_CMDLINE_LINUX").ok().flatten() {
                    if !a.value.contains("$GRUB_CMDLINE_LINUX") && !a.value.contains("${GRUB_CMDLINE_LINUX}") {
                        p.notes.push(format!(
                            "{cfg} replaces GRUB_CMDLINE_LINUX: add {} there yourself if the next boot lacks it",
                            wanted.join(" ")
                        ));
                    }
                }
                if let Ok(tokens) = edit::grub_defaults_tokens(&t) {
                    elsewhere.push((cfg, tokens));
                }
            }
            let add = params_to_add(&wanted, &sources, &elsewhere, &mut p.notes);
            if add.is_empty() {
                return Ok(());
            }
            let after = edit::grub_defaults_add(&text, &add, IOMMU_WHY).map_err(parse_err(GRUB_DEFAULTS))?;
            if after != text {
                p.changes.push(Change {
                    step: Step::KernelParams,
                    action: Action::Write(FileEdit { path: GRUB_DEFAULTS.into(), before: Some(text), after }),
                    why: format!("add {} to GRUB_CMDLINE_LINUX: {IOMMU_WHY}", add.join(" ")),
                });
                p.changes.push(Change {
                    step: Step::KernelParams,
                    action: Action::Run { argv: regenerate.clone(), emulated: vec![] },
                    why: "GRUB reads its menu from grub.cfg, generated from /etc/default/grub".into(),
                });
            }
        }
        BootTool::KernelInstall => {
            let (text, seeded) = match read_opt(root, KERNEL_CMDLINE)? {
                Some(t) => (t, false),
                None => {
                    // kernel-install falls back to the running command line; keep it.
                    let running = read_opt(root, "/proc/cmdline")?.unwrap_or_default();
                    // Not the boot loader's own parameters, nor init's (after "--").
                    let kept: Vec<String> = edit::cmdline_tokens(&running)
                        .into_iter()
                        .take_while(|t| t != "--")
                        .filter(|t| !t.starts_with("BOOT_IMAGE=") && !t.starts_with("initrd="))
                        .collect();
                    (kept.join(" "), true)
                }
            };
            let sources = vec![(KERNEL_CMDLINE.to_string(), edit::cmdline_tokens(&text))];
            let add = params_to_add(&wanted, &sources, &[], &mut p.notes);
            if add.is_empty() {
                return Ok(());
            }
            let after = edit::cmdline_file_add(&text, &add);
            p.changes.push(Change {
                step: Step::KernelParams,
                action: Action::Write(FileEdit {
                    path: KERNEL_CMDLINE.into(),
                    before: if seeded { None } else { Some(text) },
                    after,
                }),
                why: format!(
                    "kernel-install builds every boot entry's command line from this file{}: {IOMMU_WHY}",
                    if seeded { " (started from the running command line)" } else { "" }
                ),
            });
            let mut kernels: Vec<String> = fs::read_dir(at(root, "/usr/lib/modules"))
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
                .unwrap_or_default();
            kernels.retain(|k| exists(root, &format!("/usr/lib/modules/{k}/vmlinuz")));
            kernels.sort();
            for k in kernels {
                p.changes.push(Change {
                    step: Step::KernelParams,
                    action: Action::Run {
                        argv: vec!["kernel-install".into(), "add".into(), k.clone(), format!("/usr/lib/modules/{k}/vmlinuz")],
                        emulated: vec![],
                    },
                    why: format!("rewrites the boot entry of kernel {k} with the new command line"),
                });
            }
        }
        BootTool::Unknown => p.notes.push(format!(
            "kernel parameters: no grubby, {GRUB_DEFAULTS} or kernel-install found: add {} to the kernel command line yourself",
            wanted.join(" ")
        )),
    }
    Ok(())
}

/// Plans writing a file Phyllome owns whole (only when its content differs).
fn owned_file(root: &Path, p: &mut Plan, step: Step, path: &str, content: String, why: &str) -> Result<(), PlanError> {
    let before = read_opt(root, path)?;
    if before.as_deref() != Some(content.as_str()) {
        p.changes.push(Change {
            step,
            action: Action::Write(FileEdit { path: path.into(), before, after: content }),
            why: why.into(),
        });
    }
    Ok(())
}

fn vfio_modules(root: &Path, p: &mut Plan) -> Result<(), PlanError> {
    let content = "# Managed by `phyllome host setup` (it rewrites this file): VFIO, to pass PCI\n\
                   # devices (GPUs, NICs, USB controllers) through to VMs. Your own modules go in\n\
                   # another file of this directory.\n\
                   vfio\nvfio_iommu_type1\nvfio_pci\n";
    owned_file(
        root,
        p,
        Step::VfioModules,
        VFIO_MODULES_FILE,
        content.into(),
        "loads VFIO at boot, so a device can be handed to a VM without a module load at start time",
    )
}

fn nested(root: &Path, host: &HostView, p: &mut Plan) -> Result<(), PlanError> {
    let module = match host.vendor {
        CpuVendor::Intel => "kvm_intel",
        CpuVendor::Amd => "kvm_amd",
        CpuVendor::Other => {
            p.notes.push("nested virtualization: CPU vendor unknown, so no KVM module options are set".into());
            return Ok(());
        }
    };
    // Another file setting nested= is the user's (or the distribution's) choice.
    for dir in ["/etc/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d", "/run/modprobe.d"] {
        for f in conf_files(root, dir, ".conf") {
            if f == KVM_MODPROBE_FILE {
                continue;
            }
            let text = read_opt(root, &f)?.unwrap_or_default();
            if let Some(o) = edit::modprobe_options(&text, module).into_iter().find(|o| o.starts_with("nested=")) {
                p.notes.push(format!("nested virtualization: {f} sets {module} {o}; not changed"));
                return Ok(());
            }
        }
    }
    let content = format!(
        "# Managed by `phyllome host setup` (it rewrites this file): nested virtualization,\n\
         # so VMs can run hypervisors of their own (Windows' WSL2 and Hyper-V features,\n\
         # KVM in a Linux guest). Takes effect when {module} is next loaded (at boot).\n\
         options {module} nested=1\n"
    );
    owned_file(root, p, Step::Nested, KVM_MODPROBE_FILE, content, "lets guests use hardware virtualization themselves")
}

fn libvirt_qemu_conf(root: &Path, host: &HostView, p: &mut Plan) -> Result<(), PlanError> {
    let Some(text) = read_opt(root, QEMU_CONF)? else {
        p.notes.push(format!("libvirt QEMU driver: {QEMU_CONF} not found (install libvirt first); not created"));
        return Ok(());
    };
    match edit::conf_value(&text, "security_driver") {
        Some((_, v)) => p.notes.push(format!("{QEMU_CONF}: security_driver = {v} and every key but vnc_listen and spice_listen")),
        None => p.notes.push(format!(
            "{QEMU_CONF}: security_driver (libvirt's default: SELinux or AppArmor) and every key but vnc_listen and spice_listen"
        )),
    }
    let after = edit::conf_set(&text, &QEMU_CONF_KEYS);
    if after == text {
        return Ok(());
    }
    p.changes.push(Change {
        step: Step::Libvirt,
        action: Action::Write(FileEdit { path: QEMU_CONF.into(), before: Some(text), after }),
        why: "VNC and SPICE consoles listen on 127.0.0.1 only: reached through phyllome (or an SSH tunnel), \
              never straight from the network"
            .into(),
    });
    // The daemons this host has: modular (virtqemud, Fedora) or monolithic (libvirtd, Debian).
    let units: Vec<String> = ["virtqemud.service", "libvirtd.service"]
        .into_iter()
        .filter(|u| {
            ["/usr/lib/systemd/system/", "/lib/systemd/system/"].iter().any(|d| exists(root, &format!("{d}{u}")))
        })
        .map(String::from)
        .collect();
    if host.systemd && !units.is_empty() {
        let mut argv = vec!["systemctl".to_string(), "try-restart".to_string()];
        argv.extend(units);
        p.changes.push(Change {
            step: Step::Libvirt,
            action: Action::Run { argv, emulated: vec![] },
            why: "libvirt reads qemu.conf when it starts; running VMs keep running".into(),
        });
    } else {
        p.notes.push("libvirt reads qemu.conf when it starts: restart libvirtd (or virtqemud) yourself".into());
    }
    Ok(())
}

fn pool(root: &Path, opts: &Options, p: &mut Plan) -> Result<(), PlanError> {
    let path = opts.pool_path.as_str();
    let full = at(root, path);
    // Ownership is set on the live host only: a fixture tree belongs to whoever made it.
    let owner = opts.live.then_some((0, 0));
    let why = "Phyllome's VM disks live here; mode 0711: libvirt's QEMU user reaches each disk \
               (whose own permissions decide) but nobody can list them";
    match fs::metadata(&full) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => p.changes.push(Change {
            step: Step::Pool,
            action: Action::Dir { path: path.into(), mode: POOL_MODE, owner, before: None },
            why: why.into(),
        }),
        Err(source) => return Err(PlanError::Read { path: path.into(), source }),
        Ok(m) if !m.is_dir() => {
            return Err(PlanError::Parse { path: path.into(), message: "exists and is not a directory".into() })
        }
        Ok(m) => {
            let mode = m.mode() & 0o7777;
            let owner_ok = owner.is_none_or(|(u, g)| m.uid() == u && m.gid() == g);
            if mode != POOL_MODE || !owner_ok {
                p.changes.push(Change {
                    step: Step::Pool,
                    action: Action::Dir {
                        path: path.into(),
                        mode: POOL_MODE,
                        owner,
                        before: Some((mode, m.uid(), m.gid())),
                    },
                    why: why.into(),
                });
            }
        }
    }
    if !opts.live {
        p.notes.push(format!(
            "storage pool {}: defined in libvirt on the live host only (not from a --root tree)",
            opts.pool_name
        ));
        return Ok(());
    }
    match &opts.pool_state {
        PoolState::Absent => p.changes.push(Change {
            step: Step::Pool,
            action: Action::DefinePool { name: opts.pool_name.clone(), path: path.into() },
            why: "VM disks are libvirt volumes in this pool, visible to virsh, virt-manager and cockpit".into(),
        }),
        PoolState::Defined(Some(existing)) if existing == path => {}
        PoolState::Defined(existing) => p.notes.push(format!(
            "storage pool {} exists in libvirt with target {}; not changed",
            opts.pool_name,
            existing.as_deref().unwrap_or("(none)")
        )),
        PoolState::Unknown(why) => {
            p.notes.push(format!("storage pool {}: could not ask libvirt ({why}); not defined", opts.pool_name))
        }
    }
    Ok(())
}
