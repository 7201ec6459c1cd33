//! `phyllome devices`, `phyllome attach` and `phyllome detach`: the host's
//! PCI and USB devices, and passthrough as a last resort.
//!
//! A device given to a VM leaves the host while the VM runs, and VFIO takes
//! its whole IOMMU group with it. So attach refuses host-critical devices and
//! devices whose group is not isolated unless `--force`, and then prints the
//! risk before doing it.

use super::Fallible;
use clap::Args;
use phyllome_engine::model::hostdev::Hostdev;
use phyllome_engine::model::input::validate_name;
use phyllome_host::devices::{self, PciDevice, Relation, Verdict};
use phyllome_libvirt::Libvirt;
use std::path::PathBuf;

#[derive(Args)]
pub struct DevicesArgs {
    /// Print {"iommu_groups", "pci": [...], "usb": [...]}.
    #[arg(long)]
    json: bool,
    /// Read the devices through DIR (a recorded tree) instead of /.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
pub struct AttachArgs {
    /// The VM.
    name: String,
    /// pci:DOMAIN:BUS:SLOT.FN or usb:VENDOR:PRODUCT (see `phyllome devices`).
    device: String,
    /// Attach a host-critical device, or one whose IOMMU group is not isolated, after printing the risk.
    #[arg(long)]
    force: bool,
    /// Read the host's devices through DIR (a recorded tree) instead of /.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
pub struct DetachArgs {
    /// The VM.
    name: String,
    /// pci:DOMAIN:BUS:SLOT.FN or usb:VENDOR:PRODUCT, as it was attached.
    device: String,
}

fn root_exists(root: &std::path::Path) -> Result<(), String> {
    if root.is_dir() {
        Ok(())
    } else {
        Err(format!("--root {}: no such directory", root.display()))
    }
}

pub fn list(args: DevicesArgs) -> Fallible {
    root_exists(&args.root)?;
    let inv = devices::read_devices(&args.root);
    if args.json {
        let mut v = serde_json::to_value(&inv)?;
        if let Some(list) = v["pci"].as_array_mut() {
            for (item, dev) in list.iter_mut().zip(&inv.pci) {
                item["detail"] = dev.verdict_detail().into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if inv.iommu_groups == 0 {
        println!("PCI devices (IOMMU off: no groups, so nothing can be passed through; see `phyllome check`)");
    } else {
        println!("PCI devices (IOMMU on: {} groups)", inv.iommu_groups);
    }
    let dw = inv.pci.iter().map(|d| d.driver.as_deref().unwrap_or("-").len()).max().unwrap_or(1).max(6);
    println!("{:12}  {:5}  {:dw$}  {:13}  DEVICE", "ADDRESS", "GROUP", "DRIVER", "VERDICT");
    for d in &inv.pci {
        let group = d.iommu_group.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
        let driver = d.driver.as_deref().unwrap_or("-");
        println!(
            "{:12}  {group:5}  {driver:dw$}  {:13}  {}",
            d.address.to_string(),
            d.verdict.as_str(),
            d.description()
        );
        println!("{:12}  {}", "", d.verdict_detail());
    }
    println!("\nUSB devices");
    if inv.usb.is_empty() {
        println!("(none)");
        return Ok(());
    }
    let pw = inv.usb.iter().map(|u| u.bus_path.len()).max().unwrap_or(0).max(8);
    println!("{:pw$}  {:9}  DEVICE", "BUS PATH", "ID");
    for u in &inv.usb {
        println!(
            "{:pw$}  {}:{}  {} {} (bus {}, device {})",
            u.bus_path, u.vendor_id, u.product_id, u.vendor, u.product, u.bus, u.device_number
        );
    }
    Ok(())
}

/// The risks of passing `dev` through; empty when its group is isolated and nothing in it is host-critical.
pub fn pci_risks(dev: &PciDevice) -> Vec<String> {
    let mut risks = Vec::new();
    match dev.verdict {
        Verdict::HostCritical => {
            let losses: Vec<&str> = dev.host_critical.iter().map(|r| devices::consequence(r)).collect();
            risks.push(format!(
                "it is host-critical ({}): when the VM starts, {}",
                dev.host_critical.join("; "),
                losses.join(" and ")
            ))
        }
        Verdict::NoIommu => risks.push(
            "it has no IOMMU group (the IOMMU is off): the VM will not start with it until `phyllome check` \
             passes iommu.firmware and iommu.kernel"
                .into(),
        ),
        Verdict::Shared | Verdict::Isolated | Verdict::Bridge => {}
    }
    let others: Vec<String> = dev
        .group
        .iter()
        .filter(|p| p.relation == Relation::Device || !p.host_critical.is_empty())
        .map(|p| {
            let critical = if p.host_critical.is_empty() {
                String::new()
            } else {
                let losses: Vec<&str> = p.host_critical.iter().map(|r| devices::consequence(r)).collect();
                format!(", host-critical: {}, so {}", p.host_critical.join("; "), losses.join(" and "))
            };
            format!("{} ({}{critical})", p.address, p.description)
        })
        .collect();
    if !others.is_empty() {
        risks.push(format!(
            "its IOMMU group {} also holds {}: VFIO takes whole groups, so the VM starts only once all of them \
             have left the host too, and none of them is protected from the guest",
            dev.iommu_group.unwrap_or(0),
            others.join(", ")
        ));
    }
    risks
}

pub fn attach(uri: &str, a: AttachArgs) -> Fallible {
    phyllome_engine::host_files::here_only_uri(
        uri,
        "passing a device through (the device is checked on this machine)",
    )?;
    let dev = Hostdev::parse(&a.device)?;
    validate_name(&a.name)?;
    root_exists(&a.root)?;
    let on = if a.root == std::path::Path::new("/") { String::new() } else { format!(" in {}", a.root.display()) };
    let (what, risks, notes) = match dev {
        Hostdev::Pci(addr) => {
            let pci = devices::read_pci(&a.root);
            let d = pci
                .iter()
                .find(|d| d.address == addr)
                .ok_or_else(|| format!("no PCI device {addr}{on}: `phyllome devices` lists the ones there are"))?;
            if d.is_bridge() {
                return Err(format!(
                    "{addr} ({}) is a bridge: bridges cannot be passed through; pass the devices behind it",
                    d.description()
                )
                .into());
            }
            let functions: Vec<String> = d
                .companions()
                .filter(|p| p.relation == Relation::Function && p.host_critical.is_empty())
                .map(|p| format!("pci:{}", p.address))
                .collect();
            let notes = if functions.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "its IOMMU group also holds its other functions: attach them too ({}), or the VM cannot start",
                    functions.join(", ")
                )]
            };
            (format!("{dev} ({})", d.description()), pci_risks(d), notes)
        }
        Hostdev::Usb { vendor, product } => {
            let usb = devices::read_usb(&a.root);
            let matches: Vec<_> = usb
                .iter()
                .filter(|u| u.vendor_id == format!("{vendor:04x}") && u.product_id == format!("{product:04x}"))
                .collect();
            let mut risks = Vec::new();
            let mut notes = Vec::new();
            let what = match matches.first() {
                Some(u) => format!("{dev} ({} {}, {})", u.vendor, u.product, u.bus_path),
                None => {
                    risks.push(format!(
                        "no USB device {vendor:04x}:{product:04x} is plugged in{on}: the VM will not start \
                         until it is"
                    ));
                    dev.to_string()
                }
            };
            if matches.len() > 1 {
                notes.push(format!(
                    "{} devices match {vendor:04x}:{product:04x}: libvirt refuses to start the VM while more \
                     than one is plugged in",
                    matches.len()
                ));
            }
            (what, risks, notes)
        }
    };
    if !risks.is_empty() {
        if !a.force {
            return Err(format!(
                "refusing to pass {what} through to {}: {}. Passthrough is a last resort (a virtio device \
                 needs none of this); add --force to attach it anyway",
                a.name,
                risks.join("; ")
            )
            .into());
        }
        for r in &risks {
            eprintln!("phyllome: warning: --force: {what}: {r}");
        }
    }
    let lv = Libvirt::connect(uri)?;
    if !lv.exists(&a.name)? {
        return Err(format!("no VM named {:?} on {uri}", a.name).into());
    }
    let applied = lv.attach_device(&a.name, &dev.to_xml())?;
    println!(
        "attached {what} to {}: {}",
        a.name,
        where_applied(true, applied.running, applied.live, applied.live_error.as_deref())
    );
    for n in notes {
        eprintln!("phyllome: note: {n}");
    }
    Ok(())
}

/// Where a change took effect (from `Libvirt::attach_device`/`detach_device`).
fn where_applied(attach: bool, running: bool, live: bool, live_error: Option<&str>) -> String {
    let refused = live_error.map(|e| format!(" (libvirt refused the live change: {e})")).unwrap_or_default();
    match (running, live) {
        (true, true) => "in its definition and in the running VM".into(),
        (true, false) if attach => format!("in its definition, from its next boot{refused}"),
        (true, false) => format!("in its definition; the running VM is unchanged{refused}"),
        (false, _) => "in its definition (the VM is not running)".into(),
    }
}

pub fn detach(uri: &str, a: DetachArgs) -> Fallible {
    let dev = Hostdev::parse(&a.device)?;
    validate_name(&a.name)?;
    let lv = Libvirt::connect(uri)?;
    if !lv.exists(&a.name)? {
        return Err(format!("no VM named {:?} on {uri}", a.name).into());
    }
    let applied = lv.detach_device(&a.name, &dev.to_xml())?;
    println!(
        "detached {dev} from {}: {}",
        a.name,
        where_applied(false, applied.running, applied.live, applied.live_error.as_deref())
    );
    Ok(())
}
