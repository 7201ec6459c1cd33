//! `phyllome image`: the Phyllome OS images (a Fedora Remix based on Fedora Server).

use super::Fallible;
use clap::{Args, Subcommand, ValueEnum};
use phyllome_engine::errors::Failure;
use phyllome_system::kickstart::{self, Bootloader, Edition, Recipe};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Write the flattened kickstart of a Phyllome OS edition.
    Kickstart(KickstartArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EditionArg {
    /// A minimal desktop with virt-manager and a browser on Phyllome's web UI.
    Desktop,
    /// No desktop: `phyllome serve` on the network, its port the only one opened.
    Headless,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BootloaderArg {
    Grub,
    /// UEFI only: kernels on the EFI system partition.
    SystemdBoot,
}

#[derive(Args)]
pub struct KickstartArgs {
    #[arg(long, value_enum)]
    edition: EditionArg,
    /// Put the root filesystem on LUKS2 (the installer asks for the passphrase).
    #[arg(long)]
    encrypted: bool,
    #[arg(long, value_enum, default_value = "grub")]
    bootloader: BootloaderArg,
    /// The Fedora release the remix is based on.
    #[arg(long, value_name = "VERSION", default_value_t = kickstart::DEFAULT_FEDORA)]
    fedora: u32,
    /// The administrator's user name (groups wheel and libvirt; root stays locked).
    #[arg(long, value_name = "NAME", default_value = "admin")]
    admin: String,
    /// The administrator's password as a crypt(3) hash (`openssl passwd -6`):
    /// created unattended. Without it the installer asks for the administrator.
    #[arg(long, value_name = "HASH")]
    admin_password_hash: Option<String>,
    /// An SSH public key for the administrator (repeatable).
    #[arg(long = "ssh-key", value_name = "KEY")]
    ssh_keys: Vec<String>,
    /// The repository holding the phyllome RPM (scripts/package.sh builds it).
    #[arg(long, value_name = "URL", default_value = kickstart::DEFAULT_PHYLLOME_REPO)]
    phyllome_repo: String,
    /// Install on this disk only (e.g. nvme0n1); by default every disk is erased.
    #[arg(long, value_name = "DEVICE")]
    disk: Option<String>,
    /// Write to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn kickstart(args: KickstartArgs) -> Fallible {
    let recipe = Recipe {
        edition: match args.edition {
            EditionArg::Desktop => Edition::Desktop,
            EditionArg::Headless => Edition::Headless,
        },
        encrypted: args.encrypted,
        bootloader: match args.bootloader {
            BootloaderArg::Grub => Bootloader::Grub,
            BootloaderArg::SystemdBoot => Bootloader::SystemdBoot,
        },
        fedora: args.fedora,
        admin: args.admin,
        admin_password_hash: args.admin_password_hash,
        ssh_keys: args.ssh_keys,
        phyllome_repo: args.phyllome_repo,
        disk: args.disk,
    };
    let text = kickstart::render(&recipe).map_err(Failure::failed)?;
    match args.output {
        Some(path) => {
            std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
