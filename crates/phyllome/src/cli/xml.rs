//! `phyllome xml`: the domain XML for a VM, tuned to this host.

use super::os::{print_rows, unknown_os};
use super::Fallible;
use clap::{Args, ValueEnum};
use phyllome::hostinfo;
use phyllome::model::build::{self, NetworkChoice, Request};
use phyllome::model::catalog::{self, Bus};
use phyllome::model::domain::DirectBoot;
use phyllome::request::{check_files, disk_ref};
use phyllome_libvirt::Libvirt;
use serde_json::json;

#[derive(Clone, Copy, ValueEnum)]
pub enum DiskBusArg {
    Virtio,
    Sata,
}

#[derive(Args)]
pub struct XmlArgs {
    /// Guest OS id (see `phyllome os list`).
    #[arg(long)]
    os: String,
    /// VM name: letters, digits, '.', '_' and '-', at most 64.
    #[arg(long)]
    name: String,
    /// Memory, e.g. 4G or 2048M (default: sized from the host).
    #[arg(long)]
    memory: Option<String>,
    /// vCPUs (default: sized from the host).
    #[arg(long)]
    cpus: Option<u32>,
    /// Disk size, e.g. 64G (default: the OS's recommendation).
    #[arg(long)]
    disk_size: Option<String>,
    /// Installer ISO (a recovery image for macOS).
    #[arg(long)]
    iso: Option<String>,
    /// Windows: the virtio-win driver ISO (default: found on the host).
    #[arg(long)]
    drivers: Option<String>,
    /// Turn secure boot on where the OS model leaves it off.
    #[arg(long)]
    secure_boot: bool,
    /// Bus of the main disk (e.g. sata to install Windows without virtio drivers).
    #[arg(long, value_enum)]
    disk_bus: Option<DiskBusArg>,
    /// none, user, or a libvirt network name.
    #[arg(long, default_value = "default")]
    network: String,
    /// macOS: your OpenCore image.
    #[arg(long)]
    opencore: Option<String>,
    /// macOS: the applesmc OSK string.
    #[arg(long)]
    osk: Option<String>,
    /// Do not encrypt the disk.
    #[arg(long)]
    no_encrypt: bool,
    /// Storage pool of the disk.
    #[arg(long, default_value = phyllome::POOL)]
    pool: String,
    /// Boot this kernel directly (with --initrd and --cmdline).
    #[arg(long)]
    kernel: Option<String>,
    #[arg(long, requires = "kernel")]
    initrd: Option<String>,
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Say why each device was chosen instead of printing the XML.
    #[arg(long)]
    explain: bool,
    /// Print XML, choices and warnings as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(uri: &str, a: XmlArgs) -> Fallible {
    // Everything that needs no host is checked first: a typo fails fast.
    if catalog::profile(&a.os).is_none() {
        return Err(unknown_os(&a.os).into());
    }
    phyllome::model::input::validate_name(&a.name)?;
    let network = match a.network.as_str() {
        "none" => NetworkChoice::None,
        "user" => NetworkChoice::User,
        "default" => NetworkChoice::Default,
        other => {
            phyllome::model::input::validate_name(other).map_err(|e| format!("--network: {e}"))?;
            NetworkChoice::Named(other.to_string())
        }
    };
    let mut req = Request {
        os: a.os,
        name: a.name.clone(),
        memory: a.memory,
        cpus: a.cpus,
        disk_size: a.disk_size,
        iso: a.iso,
        drivers: a.drivers,
        secure_boot: a.secure_boot,
        disk_bus: a.disk_bus.map(|b| match b {
            DiskBusArg::Virtio => Bus::Virtio,
            DiskBusArg::Sata => Bus::Sata,
        }),
        network,
        opencore: a.opencore,
        osk: a.osk,
        direct_boot: a.kernel.map(|kernel| DirectBoot { kernel, initrd: a.initrd, cmdline: a.cmdline }),
        disk: None,
        version: phyllome::VERSION.to_string(),
    };
    check_files(&req)?;
    let lv = Libvirt::connect(uri)?;
    let pool_path = lv.pool_path(&a.pool)?.unwrap_or_else(|| phyllome::POOL_PATH.to_string());
    req.disk = Some(disk_ref(&a.name, &a.pool, &pool_path, !a.no_encrypt));
    let (host, _) = hostinfo::gather(&lv, true)?;
    let plan = build::build(&req, &host)?;
    let xml = plan.domain.to_xml();
    if a.json {
        let v = json!({"name": a.name, "os": plan.profile.id, "memory_mib": plan.domain.memory_mib,
                       "vcpus": plan.domain.vcpus, "disk_gib": plan.disk_gib, "choices": plan.choices,
                       "warnings": plan.warnings, "xml": xml});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for w in &plan.warnings {
        eprintln!("phyllome: warning: {w}");
    }
    if a.explain {
        println!("{} for {} on this host ({} GiB disk)\n", plan.profile.name, a.name, plan.disk_gib);
        print_rows(plan.choices.iter().map(|c| (c.item, c.choice.as_str(), c.why.as_str())));
    } else {
        print!("{xml}");
    }
    Ok(())
}
