//! `phyllome snapshot create|list|revert|delete`: whole-VM snapshots.

use super::prompt::read_passphrase;
use super::render::{human, reporter, utc, Steps};
use super::Fallible;
use clap::Subcommand;
use phyllome_engine::snapshot;
use phyllome_engine::text::printable;
use phyllome_libvirt::Libvirt;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot: disks, UEFI variables and TPM state (and the RAM with --memory).
    Create {
        vm: String,
        /// Its name (default: snap1, snap2...).
        name: Option<String>,
        /// Also save the RAM, so a revert resumes the VM where it was (the VM must run).
        #[arg(long)]
        memory: bool,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A VM's snapshots: name, when, with memory or not, size on disk, parent.
    List {
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// Put the VM back as it was at the snapshot.
    Revert {
        vm: String,
        name: String,
        /// Start the VM afterwards (a memory snapshot resumes it anyway).
        #[arg(long)]
        start: bool,
        /// Power a running VM off first (what it did since the snapshot is lost).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (the VM is not touched).
    Delete {
        vm: String,
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(uri: &str, cmd: SnapshotCommand) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    match cmd {
        SnapshotCommand::Create { vm, name, memory, description, json } => {
            let steps = Steps::new(&format!("snapshot of {vm}"));
            let req = snapshot::SnapshotRequest { name, memory, description };
            let s = snapshot::create(&lv, &vm, &req, &reporter(&steps))?;
            drop(steps);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                eprintln!(
                    "phyllome: took snapshot {} of {vm} ({}{}, {}): revert with `phyllome snapshot revert {vm} {}`",
                    s.name,
                    if s.memory { "with memory, " } else { "" },
                    s.consistency,
                    human(s.size_bytes as f64),
                    s.name
                );
            }
        }
        SnapshotCommand::List { vm, json } => {
            let rows = snapshot::list(&lv, &vm)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("phyllome: {vm} has no snapshots (phyllome snapshot create {vm})");
            } else {
                let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
                println!(
                    "{:w$}  {:20}  {:8}  {:6}  {:>9}  {:w$}  DESCRIPTION",
                    "NAME", "CREATED", "STATE", "MEMORY", "SIZE", "PARENT"
                );
                for r in rows {
                    println!(
                        "{:w$}  {:20}  {:8}  {:6}  {:>9}  {:w$}  {}",
                        format!("{}{}", r.name, if r.current { "*" } else { "" }),
                        utc(r.created),
                        r.state,
                        if r.memory { "yes" } else { "no" },
                        human(r.size_bytes as f64),
                        r.parent.as_deref().unwrap_or("-"),
                        printable(r.description.as_deref().unwrap_or("")).lines().next().unwrap_or("")
                    );
                }
            }
        }
        SnapshotCommand::Revert { vm, name, start, force, json } => {
            let steps = Steps::new(&format!("revert {vm} to {name}"));
            let ask = || read_passphrase(&format!("Passphrase of {vm}'s disk: "), false);
            let r = snapshot::revert(&lv, &vm, &name, start, force, &ask, &reporter(&steps))?;
            drop(steps);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                eprintln!(
                    "phyllome: {vm} is back at snapshot {name}{}; it is {}",
                    if r.forced_off { " (it was powered off first)" } else { "" },
                    r.state
                );
            }
        }
        SnapshotCommand::Delete { vm, name, json } => {
            snapshot::delete(&lv, &vm, &name)?;
            if json {
                println!("{}", serde_json::json!({ "vm": vm, "deleted": name }));
            } else {
                eprintln!("phyllome: deleted snapshot {name} of {vm}");
            }
        }
    }
    Ok(())
}
