//! `phyllome xml`: the domain XML for a VM, tuned to this host. Its VM
//! options (`VmArgs`) are shared with `phyllome create`.

use super::os::print_rows;
use super::Fallible;
use clap::{Args, ValueEnum};
use phyllome_engine::model::catalog::Bus;
use phyllome_engine::model::domain::DirectBoot;
use phyllome_engine::model::{Encryption, Request};
use phyllome_engine::vm::{self, VmSpec};
use phyllome_libvirt::Libvirt;
use serde_json::json;

#[derive(Clone, Copy, ValueEnum)]
pub enum DiskBusArg {
    Virtio,
    Sata,
}

/// What a VM is made of: the options `xml` and `create` share.
#[derive(Args)]
pub struct VmArgs {
    /// Guest OS id (see `phyllome os list`); default: detected from the --iso image (one of the two is needed).
    #[arg(long)]
    pub os: Option<String>,
    /// Memory with its unit, e.g. 4G or 2048M; G/M are GiB/MiB, GB/MB powers of 1000 (default: sized from the host).
    #[arg(long)]
    pub memory: Option<String>,
    /// vCPUs (default: sized from the host).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Disk size in whole GiB with its unit, e.g. 64G (default: the OS's recommendation).
    #[arg(long)]
    pub disk_size: Option<String>,
    /// Make a disk below the OS's usual minimum anyway (the installer may still refuse it).
    #[arg(long)]
    pub force: bool,
    /// Installer ISO (a recovery image for macOS).
    #[arg(long)]
    pub iso: Option<String>,
    /// Windows: the virtio-win driver ISO (default: found on the host).
    #[arg(long)]
    pub drivers: Option<String>,
    /// Turn secure boot on where the OS model leaves it off.
    #[arg(long)]
    pub secure_boot: bool,
    /// Bus of the main disk (e.g. sata to install Windows without virtio drivers).
    #[arg(long, value_enum)]
    pub disk_bus: Option<DiskBusArg>,
    /// none, user, or a libvirt network name.
    #[arg(long, default_value = "default")]
    pub network: String,
    /// macOS: your OpenCore image.
    #[arg(long)]
    pub opencore: Option<String>,
    /// macOS: the applesmc OSK string.
    #[arg(long)]
    pub osk: Option<String>,
    /// Do not encrypt the disk.
    #[arg(long, conflicts_with = "passphrase_prompt")]
    pub no_encrypt: bool,
    /// Encrypt with a passphrase you type (asked again at every start) instead of a stored key.
    #[arg(long)]
    pub passphrase_prompt: bool,
    /// Storage pool of the disk.
    #[arg(long, default_value = phyllome_engine::POOL)]
    pub pool: String,
    /// Boot this kernel directly (with --initrd and --cmdline).
    #[arg(long)]
    pub kernel: Option<String>,
    #[arg(long, requires = "kernel")]
    pub initrd: Option<String>,
    #[arg(long, requires = "kernel")]
    pub cmdline: Option<String>,
    /// Share a host folder over virtiofs: HOSTDIR[:TAG][:rw] (read-only unless :rw; repeatable).
    #[arg(long, value_name = "HOSTDIR[:TAG][:rw]")]
    pub share: Vec<String>,
}

impl VmArgs {
    /// `--os` or `--iso` is needed to know what to make (a usage error otherwise, as clap's own).
    pub fn require_os(&self) -> Result<(), crate::Usage> {
        if self.os.is_none() && self.iso.is_none() {
            return Err(crate::Usage(
                "the following required arguments were not provided: --os <OS> (or --iso <ISO>, to detect it)".into(),
            ));
        }
        Ok(())
    }

    pub fn spec(&self) -> VmSpec {
        VmSpec {
            request: Request {
                // Empty: the engine detects it from the ISO.
                os: self.os.clone().unwrap_or_default(),
                memory: self.memory.clone(),
                cpus: self.cpus,
                disk_size: self.disk_size.clone(),
                force: self.force,
                iso: self.iso.clone(),
                drivers: self.drivers.clone(),
                secure_boot: self.secure_boot,
                disk_bus: self.disk_bus.map(|b| match b {
                    DiskBusArg::Virtio => Bus::Virtio,
                    DiskBusArg::Sata => Bus::Sata,
                }),
                opencore: self.opencore.clone(),
                osk: self.osk.clone(),
                direct_boot: self.kernel.clone().map(|kernel| DirectBoot {
                    kernel,
                    initrd: self.initrd.clone(),
                    cmdline: self.cmdline.clone(),
                }),
                ..Default::default()
            },
            network: self.network.clone(),
            shares: self.share.clone(),
            encryption: Some(if self.no_encrypt {
                Encryption::None
            } else if self.passphrase_prompt {
                Encryption::Prompt
            } else {
                Encryption::Secret
            }),
            pool: Some(self.pool.clone()),
            share_force: false,
        }
    }
}

#[derive(Args)]
pub struct XmlArgs {
    /// VM name: letters, digits, '.', '_' and '-', at most 64.
    #[arg(long, required_unless_present = "existing")]
    name: Option<String>,
    /// An existing VM instead: what Phyllome would make of it on this host at its next cold boot
    /// (from its manifest), and with --explain what that changes from what it was tuned to.
    #[arg(long = "vm", id = "existing", value_name = "VM", conflicts_with = "name")]
    existing: Option<String>,
    #[command(flatten)]
    vm: VmArgs,
    /// Say why each device was chosen instead of printing the XML.
    #[arg(long)]
    explain: bool,
    /// Print XML, choices and warnings as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(uri: &str, a: XmlArgs) -> Fallible {
    if let Some(vm) = &a.existing {
        return next_boot(uri, vm, a.explain, a.json);
    }
    a.vm.require_os()?;
    let spec = a.vm.spec();
    let name = a.name.clone().unwrap_or_default();
    // Refuse a bad name or OS id before connecting anywhere.
    phyllome_engine::model::input::validate_name(&name)?;
    if !spec.request.os.is_empty() && phyllome_engine::model::catalog::profile(&spec.request.os).is_none() {
        return Err(super::os::unknown_os(&spec.request.os).into());
    }
    phyllome_engine::media::files::check_files(&spec.request)?;

    let lv = Libvirt::connect(uri)?;
    let plan = vm::plan(&lv, &name, &spec)?;
    let xml = plan.domain.to_xml();
    if a.json {
        let v = json!({"name": name, "os": plan.profile.id, "memory_mib": plan.domain.memory_mib,
                       "vcpus": plan.domain.vcpus, "disk_gib": plan.disk_gib, "choices": plan.choices,
                       "warnings": plan.warnings, "xml": xml});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for w in &plan.warnings {
        eprintln!("phyllome: warning: {w}");
    }
    if a.explain {
        println!("{} for {} on this host ({} GiB disk)\n", plan.profile.name, name, plan.disk_gib);
        print_rows(plan.choices.iter().map(|c| (c.item, c.choice.as_str(), c.why.as_str())));
    } else {
        print!("{xml}");
    }
    Ok(())
}

/// `phyllome xml --vm VM [--explain] [--json]`: the definition an existing VM would get on this
/// host at its next cold boot, and what that changes from what it was tuned to.
fn next_boot(uri: &str, name: &str, explain: bool, json: bool) -> Fallible {
    use phyllome_engine::text::printable;
    let lv = Libvirt::connect(uri)?;
    let n = phyllome_engine::retune::next_boot(&lv, name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&n)?);
        return Ok(());
    }
    if !explain {
        print!("{}", n.xml);
        return Ok(());
    }
    let host = |h: &phyllome_engine::retune::SourceHost| {
        format!("{} ({} {}), libvirt {}, QEMU {}", h.virt_type, h.cpu_vendor, h.cpu_model, h.libvirt, h.qemu)
    };
    println!("{name} at its next cold boot on this host: {}", host(&n.here));
    match &n.tuned_on {
        Some(t) => {
            println!("tuned on:  {}", host(t));
            if n.changes.is_empty() {
                println!("changes:   nothing (this host chooses as that one did)");
            } else {
                println!("changes:");
                for c in &n.changes {
                    let side = |v: &Option<String>| {
                        v.as_deref().map(|t| printable(t).into_owned()).unwrap_or_else(|| "none".into())
                    };
                    println!("  {}: {} -> {} ({})", c.item, side(&c.from), side(&c.to), printable(&c.why));
                }
            }
        }
        None => println!("tuned on:  not recorded (Phyllome records it when a VM moves); what this host chooses:\n"),
    }
    if n.tuned_on.is_none() {
        print_rows(n.choices.iter().map(|c| (c.item, c.choice.as_str(), c.why.as_str())));
    }
    Ok(())
}
