//! `phyllome volume list|delete`: disk volumes on their own, such as what
//! `delete --keep-disk` kept.

use super::Fallible;
use clap::Subcommand;
use phyllome_engine::text::printable;
use phyllome_engine::volume;
use phyllome_libvirt::Libvirt;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// List the volumes of a pool, with their size, encryption and the VMs that use them.
    List {
        #[arg(long, default_value = phyllome_engine::POOL)]
        pool: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume no VM uses, with the secret holding its key.
    Delete {
        name: String,
        #[arg(long, default_value = phyllome_engine::POOL)]
        pool: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(uri: &str, cmd: VolumeCommand) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    match cmd {
        VolumeCommand::List { pool, json } => {
            let rows = volume::list(&lv, &pool)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                eprintln!("phyllome: no volumes in pool {pool}");
                return Ok(());
            }
            let w = rows.iter().map(|r| printable(&r.name).chars().count()).max().unwrap_or(4).max(4);
            println!("{:w$}  {:>9}  {:>9}  {:9}  USED BY", "NAME", "SIZE", "ON DISK", "ENCRYPTED");
            for r in rows {
                let users = if r.used_by.is_empty() {
                    "- (phyllome volume delete removes it)".to_string()
                } else {
                    r.used_by.iter().map(|u| printable(u).into_owned()).collect::<Vec<_>>().join(", ")
                };
                println!(
                    "{:w$}  {:>5} GiB  {:>5} GiB  {:9}  {users}",
                    printable(&r.name),
                    r.capacity_gib,
                    r.allocation_gib,
                    if r.encrypted { "yes" } else { "no" }
                );
            }
        }
        VolumeCommand::Delete { name, pool, json } => {
            let d = volume::delete(&lv, &pool, &name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                let key = if d.secret { " and the secret holding its key" } else { "" };
                eprintln!("phyllome: deleted volume {}/{}{key}", d.pool, printable(&d.name));
            }
        }
    }
    Ok(())
}
