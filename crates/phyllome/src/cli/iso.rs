//! `phyllome iso inspect|list|add|remove`: install media, and what they hold.

use super::render::{byte_bar, human};
use super::Fallible;
use clap::Subcommand;
use phyllome_engine::host_files::here_only_uri;
use phyllome_engine::media::iso;
use phyllome_engine::media::iso_dir;
use phyllome_engine::op::progress::Progress;
use phyllome_engine::text::printable;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum IsoCommand {
    /// What an ISO says about itself: its identifiers, the OS detected, BIOS/UEFI boot, a driver disc or not.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The ISOs of the ISO folder, with the OS each holds.
    List {
        #[arg(long, value_name = "DIR", default_value = phyllome_engine::paths::ISO_DIR)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy an ISO into the ISO folder (checked to be an ISO; SHA-256 shown; Ctrl-C leaves nothing).
    Add {
        file: PathBuf,
        /// Its name in the folder (default: the file's name, made safe).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "DIR", default_value = phyllome_engine::paths::ISO_DIR)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove an ISO no VM uses from the ISO folder.
    Remove {
        name: String,
        #[arg(long, value_name = "DIR", default_value = phyllome_engine::paths::ISO_DIR)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(uri: &str, cmd: IsoCommand) -> Fallible {
    match cmd {
        IsoCommand::Inspect { file, json } => {
            let info = iso_dir::inspect(&file)?;
            let d = iso::detect(&info);
            if json {
                let v = serde_json::json!({
                    "file": file, "volume_id": info.ids.volume_id, "system_id": info.ids.system_id,
                    "publisher_id": info.ids.publisher_id, "application_id": info.ids.application_id,
                    "boot": info.boot, "virtio_win": info.virtio_win, "detected": d,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let row = |k: &str, v: &str| println!("{k:<16}{}", printable(v));
            row("volume id", &info.ids.volume_id);
            row("system id", &info.ids.system_id);
            row("publisher id", &info.ids.publisher_id);
            row("application id", &info.ids.application_id);
            row("boots", info.boot.describe());
            row("driver disc", if info.virtio_win { "yes: virtio-win (found by its folders)" } else { "no" });
            match d {
                Some(d) => {
                    row("detected", &format!("{} ({}), from its {} ({})", d.os, d.name, d.field.label(), d.source))
                }
                None => row("detected", "nothing: give --os to create from it (phyllome os list)"),
            }
        }
        IsoCommand::List { dir, json } => {
            here_only_uri(uri, "the ISO folder (this machine's)")?;
            let rows = iso_dir::list(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                eprintln!("phyllome: no ISOs in {} (phyllome iso add FILE)", dir.display());
                return Ok(());
            }
            let w = rows.iter().map(|r| printable(&r.name).chars().count()).max().unwrap_or(4).max(4);
            println!("{:w$}  {:>9}  {:<14}  {:<13}  OS", "NAME", "SIZE", "BOOTS", "DRIVERS");
            for r in rows {
                let boots = r.boot.as_ref().map_or("-", |b| b.describe());
                let os = match (&r.os, &r.os_name, &r.problem) {
                    (_, _, Some(p)) => format!("not usable: {p}"),
                    (Some(os), Some(n), _) => format!("{os} ({n})"),
                    _ => "unknown (create with --os)".into(),
                };
                println!(
                    "{:w$}  {:>9}  {:<14}  {:<13}  {}",
                    printable(&r.name),
                    human(r.size_bytes as f64),
                    boots,
                    if r.virtio_win { "virtio-win" } else { "-" },
                    printable(&os)
                );
            }
        }
        IsoCommand::Add { file, name, dir, json } => {
            here_only_uri(uri, "the ISO folder (this machine's)")?;
            let bar = byte_bar(!json);
            let report = |p: Progress<'_>| {
                if let Progress::Bytes { done, total } = p {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            };
            let r = iso_dir::add(&dir, &file, name.as_deref(), &report);
            bar.finish_and_clear();
            let a = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
                return Ok(());
            }
            let os = a.iso.os_name.clone().unwrap_or_else(|| "no OS detected".into());
            println!("added {} ({}, {})", a.path, human(a.iso.size_bytes as f64), printable(&os));
            println!("sha256 {}", a.sha256);
        }
        IsoCommand::Remove { name, dir, json } => {
            // Whether a VM uses it is asked of this machine's libvirt, whose VMs can.
            here_only_uri(uri, "the ISO folder (this machine's)")?;
            let lv = phyllome_libvirt::Libvirt::connect(uri)?;
            let path = iso_dir::remove(&lv, &dir, &name)?;
            if json {
                println!("{}", serde_json::json!({ "removed": path }));
            } else {
                eprintln!("phyllome: removed {}", printable(&path));
            }
        }
    }
    Ok(())
}
