//! `phyllome share add|list|remove`: host folders in a VM, over virtiofs.

use super::Fallible;
use clap::Subcommand;
use phyllome_engine::share;
use phyllome_engine::text::printable;
use phyllome_libvirt::Libvirt;

#[derive(Subcommand)]
pub enum ShareCommand {
    /// Share a host folder with a VM (read-only unless --writable).
    Add {
        vm: String,
        hostdir: String,
        /// The name the guest mounts it by: `mount -t virtiofs TAG /mnt` (default: the folder's name).
        #[arg(long)]
        tag: Option<String>,
        /// Let the guest write to it.
        #[arg(long)]
        writable: bool,
        /// Share a folder that holds the host's configuration, libvirt's state or a VM's disk.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// A VM's shared folders.
    List {
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop sharing a folder with a VM.
    Remove {
        vm: String,
        tag: String,
        #[arg(long)]
        json: bool,
    },
}

fn said(c: &share::ShareChange, verb: &str) {
    let mode = if c.readonly { "read-only" } else { "writable" };
    let when = match (c.applies, &c.why_not_now) {
        ("now", _) => "now".to_string(),
        (_, Some(why)) => format!("from the next boot (the running VM refused it now: {})", printable(why)),
        _ => "from the next boot".to_string(),
    };
    eprintln!("phyllome: {verb} {} as {} ({mode}) in {}: applies {when}", printable(&c.dir), c.tag, c.vm);
}

pub fn run(uri: &str, cmd: ShareCommand) -> Fallible {
    let lv = Libvirt::connect(uri)?;
    match cmd {
        ShareCommand::Add { vm, hostdir, tag, writable, force, json } => {
            let c = share::add(&lv, &vm, &hostdir, tag.as_deref(), writable, force)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                said(&c, "shared");
                eprintln!("phyllome: in the guest: mount -t virtiofs {} /mnt", c.tag);
            }
        }
        ShareCommand::List { vm, json } => {
            let rows = share::list(&lv, &vm)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("phyllome: {vm} has no shared folders (phyllome share add {vm} HOSTDIR)");
            } else {
                let w = rows.iter().map(|r| r.tag.len()).max().unwrap_or(3).max(3);
                println!("{:w$}  {:9}  FOLDER", "TAG", "MODE");
                for r in rows {
                    println!(
                        "{:w$}  {:9}  {}",
                        r.tag,
                        if r.readonly { "read-only" } else { "writable" },
                        printable(&r.dir)
                    );
                }
            }
        }
        ShareCommand::Remove { vm, tag, json } => {
            let c = share::remove(&lv, &vm, &tag)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                said(&c, "stopped sharing");
            }
        }
    }
    Ok(())
}
