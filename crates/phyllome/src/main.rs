//! The `phyllome` command line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use phyllome::hostinfo;
use phyllome::model::build::{self, NetworkChoice, Request};
use phyllome::model::catalog::{self, Bus, Profile};
use phyllome::model::domain::DirectBoot;
use phyllome::request::{check_files, disk_ref};
use phyllome_libvirt::Libvirt;
use serde_json::json;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "phyllome",
    version,
    about = "Run your favourite operating systems well, in virtual machines"
)]
struct Cli {
    /// libvirt connection URI.
    #[arg(
        long,
        global = true,
        env = "PHYLLOME_CONNECT",
        default_value = "qemu:///system"
    )]
    connect: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The guest OS catalog: which virtual hardware each OS gets, and why.
    #[command(subcommand)]
    Os(OsCommand),
    /// Print the libvirt domain XML for a VM, tuned to this host. Changes nothing.
    Xml(XmlArgs),
    /// What Phyllome knows about this host (CPU, memory, KVM, firmware, libvirt).
    #[command(subcommand)]
    Host(HostCommand),
}

#[derive(Subcommand)]
enum OsCommand {
    /// List the guest OS ids.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one guest OS model: its devices and why.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Show the host facts the VM models are tuned to.
    Facts {
        #[arg(long)]
        json: bool,
        /// Write host.json and domcaps.xml into DIR (a recorded-host fixture).
        #[arg(long, value_name = "DIR")]
        record: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DiskBusArg {
    Virtio,
    Sata,
}

#[derive(Args)]
struct XmlArgs {
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

type Fallible = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Os(OsCommand::List { json }) => os_list(json),
        Command::Os(OsCommand::Show { id, json }) => os_show(&id, json),
        Command::Xml(args) => xml(&cli.connect, args),
        Command::Host(HostCommand::Facts { json, record }) => {
            host_facts(&cli.connect, json, record)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phyllome: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn os_list(json: bool) -> Fallible {
    let profiles = catalog::profiles();
    if json {
        let list: Vec<_> = profiles
            .iter()
            .map(|p| json!({"id": p.id, "name": p.name, "family": p.family, "description": p.description}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let w = profiles.iter().map(|p| p.id.len()).max().unwrap_or(0);
    for p in &profiles {
        println!("{:w$}  {}", p.id, p.description);
    }
    Ok(())
}

fn unknown_os(id: &str) -> String {
    format!(
        "unknown OS id {id:?}; known ids: {}",
        catalog::ids().join(", ")
    )
}

/// The rows `os show` prints: (item, choice, why).
fn profile_rows(p: &Profile) -> Vec<(&'static str, String, &'static str)> {
    use catalog::*;
    let fw = match p.firmware.value {
        FirmwarePolicy::Bios => "BIOS (SeaBIOS)".to_string(),
        FirmwarePolicy::Uefi { secure_boot } => format!(
            "UEFI, secure boot {}",
            match secure_boot {
                SecureBoot::Required => "required",
                SecureBoot::Preferred => "when available",
                SecureBoot::Off => "off (--secure-boot to enable)",
            }
        ),
    };
    let need = |n: Need| match n {
        Need::Required => "TPM 2.0 required",
        Need::Preferred => "TPM 2.0 when swtpm exists",
        Need::No => "none",
    };
    let r = p.resources;
    vec![
        (
            "machine",
            format!("{:?}", p.machine.value).to_lowercase(),
            p.machine.why,
        ),
        ("firmware", fw, p.firmware.why),
        ("tpm", need(p.tpm.value).into(), p.tpm.why),
        ("cpu", format!("{:?}", p.cpu.value), p.cpu.why),
        (
            "hyperv",
            if p.hyperv.value { "on" } else { "off" }.into(),
            p.hyperv.why,
        ),
        (
            "clock",
            format!("{:?}", p.clock.value).to_lowercase(),
            p.clock.why,
        ),
        (
            "disk",
            format!("{:?}", p.disk_bus.value).to_lowercase(),
            p.disk_bus.why,
        ),
        (
            "installer",
            format!("{:?}", p.cdrom_bus.value).to_lowercase(),
            p.cdrom_bus.why,
        ),
        ("network", p.nic.value.into(), p.nic.why),
        ("video", format!("{:?}", p.video.value), p.video.why),
        ("input", format!("{:?}", p.input.value), p.input.why),
        ("usb", p.usb.value.unwrap_or("none").into(), p.usb.why),
        ("sound", format!("{:?}", p.sound.value), p.sound.why),
        (
            "rng",
            if p.rng.value { "virtio-rng" } else { "none" }.into(),
            p.rng.why,
        ),
        ("balloon", format!("{:?}", p.balloon.value), p.balloon.why),
        (
            "guest-agent",
            if p.guest_agent.value {
                "channel"
            } else {
                "none"
            }
            .into(),
            p.guest_agent.why,
        ),
        (
            "suspend",
            if p.suspend.value { "on" } else { "off" }.into(),
            p.suspend.why,
        ),
        (
            "resources",
            format!(
                "min {} vCPU, {} MiB, {} GiB disk; recommended {} MiB, {} GiB",
                r.min_cpus,
                r.min_memory_mib,
                r.min_disk_gib,
                r.recommended_memory_mib,
                r.recommended_disk_gib
            ),
            "defaults are sized from the host within these bounds",
        ),
    ]
}

fn os_show(id: &str, json: bool) -> Fallible {
    let p = catalog::profile(id).ok_or_else(|| unknown_os(id))?;
    if json {
        let devices: Vec<_> = profile_rows(&p)
            .into_iter()
            .map(|(item, choice, why)| json!({"item": item, "choice": choice, "why": why}))
            .collect();
        let v = json!({"id": p.id, "name": p.name, "family": p.family, "description": p.description,
                       "osinfo": p.osinfo, "devices": devices, "profile": p});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{} ({})\n{}\n", p.name, p.id, p.description);
    print_rows(
        profile_rows(&p)
            .iter()
            .map(|(a, b, c)| (*a, b.as_str(), *c)),
    );
    Ok(())
}

fn print_rows<'a>(rows: impl Iterator<Item = (&'a str, &'a str, &'a str)> + Clone) {
    let w1 = rows.clone().map(|r| r.0.len()).max().unwrap_or(0);
    for (item, choice, why) in rows {
        println!("{item:w1$}  {choice}\n{:w1$}  why: {why}", "");
    }
}

fn xml(uri: &str, a: XmlArgs) -> Fallible {
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
        direct_boot: a.kernel.map(|kernel| DirectBoot {
            kernel,
            initrd: a.initrd,
            cmdline: a.cmdline,
        }),
        disk: None,
        version: phyllome::VERSION.to_string(),
    };
    check_files(&req)?;
    let lv = Libvirt::connect(uri)?;
    let pool_path = lv
        .pool_path(&a.pool)?
        .unwrap_or_else(|| phyllome::POOL_PATH.to_string());
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
        println!(
            "{} for {} on this host ({} GiB disk)\n",
            plan.profile.name, a.name, plan.disk_gib
        );
        print_rows(
            plan.choices
                .iter()
                .map(|c| (c.item, c.choice.as_str(), c.why.as_str())),
        );
    } else {
        print!("{xml}");
    }
    Ok(())
}

fn host_facts(uri: &str, json: bool, record: Option<String>) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    let (host, kvm_detail) = hostinfo::gather(&lv, true)?;
    if let Some(dir) = record {
        std::fs::create_dir_all(&dir)?;
        let virttype = &host.caps.virt_type;
        std::fs::write(
            format!("{dir}/domcaps.xml"),
            lv.domain_capabilities(virttype, "q35")?,
        )?;
        std::fs::write(
            format!("{dir}/host.json"),
            serde_json::to_string_pretty(&host.facts)? + "\n",
        )?;
        eprintln!("recorded {dir}/host.json and {dir}/domcaps.xml");
    }
    if json {
        let v = json!({"facts": host.facts, "kvm_detail": kvm_detail, "domcaps": host.caps});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = &host.facts;
    println!(
        "cpu:       {} ({:?}), {} logical CPUs",
        f.cpu_model, f.cpu_vendor, f.cpus
    );
    println!(
        "memory:    {}",
        phyllome::model::input::human_mib(f.memory_mib)
    );
    println!(
        "kvm:       {:?}{}",
        f.kvm,
        kvm_detail.map(|d| format!(" ({d})")).unwrap_or_default()
    );
    println!(
        "libvirt:   {}, QEMU {}, domain type {}",
        f.libvirt_version, f.qemu_version, host.caps.virt_type
    );
    println!(
        "firmware:  {}",
        f.firmware
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("swtpm:     {}", if f.swtpm { "yes" } else { "no" });
    println!(
        "render:    {}",
        if f.render_nodes.is_empty() {
            "none".into()
        } else {
            f.render_nodes.join(", ")
        }
    );
    println!("virgl:     {}", if f.virgl { "yes" } else { "no" });
    Ok(())
}
