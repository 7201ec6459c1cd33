//! `phyllome os`: the guest OS catalog.

use super::Fallible;
use clap::Subcommand;
use phyllome_engine::model::catalog::{self, Profile};
use serde_json::json;

#[derive(Subcommand)]
pub enum OsCommand {
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

pub fn list(json: bool) -> Fallible {
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

pub fn unknown_os(id: &str) -> phyllome_engine::model::BuildError {
    phyllome_engine::model::BuildError::UnknownOs(id.to_string(), catalog::ids().join(", "))
}

/// The rows `os show` prints: (item, choice, why).
pub fn profile_rows(p: &Profile) -> Vec<(&'static str, String, &'static str)> {
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
        ("machine", format!("{:?}", p.machine.value).to_lowercase(), p.machine.why),
        ("firmware", fw, p.firmware.why),
        ("tpm", need(p.tpm.value).into(), p.tpm.why),
        ("cpu", format!("{:?}", p.cpu.value), p.cpu.why),
        ("hyperv", if p.hyperv.value { "on" } else { "off" }.into(), p.hyperv.why),
        ("clock", format!("{:?}", p.clock.value).to_lowercase(), p.clock.why),
        ("disk", format!("{:?}", p.disk_bus.value).to_lowercase(), p.disk_bus.why),
        ("installer", format!("{:?}", p.cdrom_bus.value).to_lowercase(), p.cdrom_bus.why),
        ("network", p.nic.value.into(), p.nic.why),
        ("video", format!("{:?}", p.video.value), p.video.why),
        ("input", format!("{:?}", p.input.value), p.input.why),
        ("usb", p.usb.value.unwrap_or("none").into(), p.usb.why),
        ("sound", format!("{:?}", p.sound.value), p.sound.why),
        ("rng", if p.rng.value { "virtio-rng" } else { "none" }.into(), p.rng.why),
        ("balloon", format!("{:?}", p.balloon.value), p.balloon.why),
        ("guest-agent", if p.guest_agent.value { "channel" } else { "none" }.into(), p.guest_agent.why),
        ("suspend", if p.suspend.value { "on" } else { "off" }.into(), p.suspend.why),
        (
            "resources",
            format!(
                "min {} vCPU, {} MiB, {} GiB disk; recommended {} MiB, {} GiB",
                r.min_cpus, r.min_memory_mib, r.min_disk_gib, r.recommended_memory_mib, r.recommended_disk_gib
            ),
            "defaults are sized from the host within these bounds",
        ),
    ]
}

pub fn show(id: &str, json: bool) -> Fallible {
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
    print_rows(profile_rows(&p).iter().map(|(a, b, c)| (*a, b.as_str(), *c)));
    Ok(())
}

pub fn print_rows<'a>(rows: impl Iterator<Item = (&'a str, &'a str, &'a str)> + Clone) {
    let w1 = rows.clone().map(|r| r.0.len()).max().unwrap_or(0);
    for (item, choice, why) in rows {
        println!("{item:w1$}  {choice}\n{:w1$}  why: {why}", "");
    }
}
