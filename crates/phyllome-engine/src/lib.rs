//! Phyllome's core: what the CLI (and later the web API) do, over the model,
//! the host facts and libvirt.

pub mod apply;
pub mod bundle;
pub mod clone;
pub mod domxml;
pub mod errors;
pub mod host_facts;
pub mod host_files;
pub mod image;
pub mod manifest;
pub mod media;
pub mod migrate;
pub mod op;
pub mod remotes;
pub mod retune;
pub mod share;
pub mod snapshot;
pub mod stats;
pub mod text;
pub mod vm;
pub mod volume;

pub use phyllome_model as model;

/// This build's version, recorded in every domain Phyllome creates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The storage pool Phyllome keeps its disks in.
pub const POOL: &str = "phyllome";
/// Where that pool lives when Phyllome creates it (readable by libvirt's QEMU user).
pub const POOL_PATH: &str = "/var/lib/libvirt/images/phyllome";
/// The host's ISO folder: installer media and driver discs (`phyllome iso`, the web UI's uploads).
pub const ISO_DIR: &str = "/var/lib/phyllome/isos";
/// Where a VM's direct-boot kernel and initrd are copied (`BOOT_DIR/NAME/`), so
/// libvirt relabels Phyllome's copies, never the user's files.
pub const BOOT_DIR: &str = "/var/lib/phyllome/boot";
