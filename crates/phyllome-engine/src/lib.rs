//! Phyllome's core: what the CLI and the web API do, over the model, the host facts and
//! libvirt. It prints nothing and knows no HTTP. ARCHITECTURE.md shows its modules.

pub mod apply;
pub mod bundle;
pub mod clone;
pub mod disk;
pub mod domxml;
pub mod errors;
pub mod host_facts;
pub mod host_files;
pub mod image;
pub mod manifest;
pub mod media;
pub mod migrate;
pub mod op;
pub mod paths;
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
