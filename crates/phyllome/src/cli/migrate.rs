//! `phyllome migrate VM --to URI`: libvirt's migration, checked first, with the encrypted disk, TPM and NVRAM.

use super::render::{human, reporter, Steps};
use super::Fallible;
use clap::Args;
use phyllome_engine::migrate::{self, MoveRequest};
use phyllome_engine::text::printable;
use phyllome_libvirt::{Libvirt, State};

#[derive(Args)]
pub struct MigrateArgs {
    pub name: String,
    /// The destination: a libvirt URI (qemu+ssh://host/system, qemu+tls://..., qemu+unix:///system?socket=...)
    /// or the name of a host added with `phyllome host add`.
    #[arg(long, value_name = "URI|HOST")]
    pub to: String,
    /// Move it running (the default for a running VM).
    #[arg(long, conflicts_with = "offline")]
    pub live: bool,
    /// Move it stopped (the default for a stopped VM).
    #[arg(long)]
    pub offline: bool,
    /// Copy the disk (Phyllome's disks are not shared between hosts).
    #[arg(long)]
    pub copy_storage: bool,
    /// Only check the destination, and say what the move needs.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(uri: &str, mut a: MigrateArgs) -> Fallible {
    if !a.to.contains("://") {
        // A host's name: its URI from the list (an unknown name is a not-found error naming `host list`).
        a.to = phyllome_engine::remotes::Remotes::open().uri(&a.to)?;
    }
    let lv = Libvirt::connect(uri)?;
    let live = if a.live || a.offline {
        a.live
    } else {
        lv.state(&a.name).map_err(|e| {
            if e.is_no_domain() {
                phyllome_engine::vm::VmError::NoSuchVm(a.name.clone())
            } else {
                e.into()
            }
        })? != State::Shutoff
    };
    let req = MoveRequest { to: a.to.clone(), live, copy_storage: a.copy_storage };
    if a.dry_run {
        let dst = migrate::connect(&a.to)?;
        let c = migrate::check(&lv, &dst, &a.name, &req)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            println!("{} move of {} to {}:", c.mode, a.name, printable(&a.to));
            for i in &c.items {
                println!("  {} {}: {}", if i.ok { "ok  " } else { "FAIL" }, i.what, printable(&i.detail));
            }
            println!(
                "{}",
                if c.ok { "it can move (dry run: nothing was changed)" } else { "it cannot move: fix the FAIL items" }
            );
        }
        if !c.ok {
            return Err(migrate::MigrateError::Refused { vm: a.name, to: a.to, why: c.failures() }.into());
        }
        return Ok(());
    }
    let steps = Steps::new(&format!("migrate {}", a.name));
    let report = reporter(&steps);
    let m = migrate::migrate(&lv, &a.name, &req, &report);
    drop(report);
    drop(steps);
    let m = m?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    for n in &m.notes {
        eprintln!("phyllome: {}", printable(n));
    }
    let down = m.stats.downtime_ms.map(|d| format!(", downtime {d} ms")).unwrap_or_default();
    println!(
        "moved {} {} to {} in {:.1} s (disk: {} of {} copied; memory: {} transferred{down}); removed here: {}",
        a.name,
        m.mode,
        printable(&a.to),
        m.stats.time_elapsed_ms as f64 / 1000.0,
        human(m.stats.disk_processed as f64),
        human(m.stats.disk_total as f64),
        human(m.stats.memory_processed as f64),
        m.removed_from_source.join(", ")
    );
    if !m.changes.is_empty() {
        println!(
            "{}",
            if m.retuned { "re-tuned there:" } else { "at a cold boot there, the destination would change:" }
        );
        for c in &m.changes {
            let side =
                |v: &Option<String>| v.as_deref().map(|t| printable(t).into_owned()).unwrap_or_else(|| "none".into());
            println!("  {}: {} -> {} ({})", c.item, side(&c.from), side(&c.to), printable(&c.why));
        }
    }
    Ok(())
}
