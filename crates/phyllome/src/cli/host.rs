//! `phyllome host`: the facts the VM models are tuned to.

use super::Fallible;
use clap::Subcommand;
use phyllome_engine::hostinfo;
use phyllome_libvirt::Libvirt;
use serde_json::json;

#[derive(Subcommand)]
pub enum HostCommand {
    /// Show the host facts the VM models are tuned to.
    Facts {
        #[arg(long)]
        json: bool,
        /// Write host.json and domcaps.xml into DIR (a recorded-host fixture).
        #[arg(long, value_name = "DIR")]
        record: Option<String>,
    },
    /// Configure this host for virtualization (IOMMU, vfio, nested, libvirt, storage pool), idempotently.
    /// Shows every change before making it.
    Setup {
        /// Only show the changes.
        #[arg(long)]
        dry_run: bool,
        /// Work on the system under DIR instead of this host (nothing is executed there).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: std::path::PathBuf,
    },
}

pub fn facts(uri: &str, json: bool, record: Option<String>) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    let (host, kvm_detail) = hostinfo::gather(&lv, true)?;
    if let Some(dir) = record {
        std::fs::create_dir_all(&dir)?;
        let virttype = &host.caps.virt_type;
        std::fs::write(format!("{dir}/domcaps.xml"), lv.domain_capabilities(virttype, "q35")?)?;
        std::fs::write(format!("{dir}/host.json"), serde_json::to_string_pretty(&host.facts)? + "\n")?;
        eprintln!("recorded {dir}/host.json and {dir}/domcaps.xml");
    }
    if json {
        let v =
            json!({"facts": host.facts, "kvm_detail": kvm_detail, "domcaps": host.caps, "features": host.features()});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = &host.facts;
    println!("cpu:       {} ({:?}), {} logical CPUs", f.cpu_model, f.cpu_vendor, f.cpus);
    println!("memory:    {}", phyllome_engine::model::input::human_mib(f.memory_mib));
    println!("kvm:       {:?}{}", f.kvm, kvm_detail.map(|d| format!(" ({d})")).unwrap_or_default());
    let p = &f.platform;
    let library = if p.libvirt_library.is_empty() || p.libvirt_library == p.libvirt {
        String::new()
    } else {
        format!(" (client library {})", p.libvirt_library)
    };
    println!("libvirt:   {}{library}, QEMU {}, domain type {}", p.libvirt, p.qemu, host.caps.virt_type);
    println!("firmware:  {}", f.firmware.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "));
    match &p.swtpm {
        Some(t) => println!("swtpm:     {} ({})", or(&t.version, "version unknown"), t.features.join(", ")),
        None => println!("swtpm:     {}", if f.swtpm { "yes (it did not describe itself)" } else { "no" }),
    }
    match &p.virtiofsd {
        Some(v) => println!(
            "virtiofsd: {} {}{}",
            v.path,
            or(&v.version, "(version unknown)"),
            if v.readonly { ", --readonly" } else { ", no read-only mode" }
        ),
        None => println!("virtiofsd: none (shared folders unavailable)"),
    }
    println!("snapshots: external revert {}", if p.external_snapshot { "yes" } else { "no" });
    println!("render:    {}", if f.render_nodes.is_empty() { "none".into() } else { f.render_nodes.join(", ") });
    println!("virgl:     {}", if f.virgl { "yes" } else { "no" });
    println!("\nwhat this libvirt {} and QEMU {} can do:", p.libvirt, p.qemu);
    for s in host.features() {
        match (&s.needs, &s.have) {
            (Some(needs), Some(have)) => println!("  no   {:<26} needs {needs} (has {have})", s.feature),
            _ => println!("  yes  {:<26} {}", s.feature, s.what),
        }
    }
    Ok(())
}

fn or<'a>(v: &'a str, unknown: &'a str) -> &'a str {
    if v.is_empty() {
        unknown
    } else {
        v
    }
}
