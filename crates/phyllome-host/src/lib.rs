//! Host facts, read in one place.
//!
//! - [`domcaps`]: parses libvirt's domain capabilities (pure);
//! - [`facts`]: reads CPU, memory, render nodes, firmware descriptors and
//!   QEMU modules through a root directory, so tests run on fixture trees;
//! - [`platform`]: host capabilities, swtpm and virtiofsd for the capability record;
//! - [`kvm`]: decides whether KVM can really run guests (a bounded probe);
//! - [`check`]: the readiness report of `phyllome check` (pure, with injected live inputs);
//! - [`devices`]: PCI/USB devices and their passthrough verdicts;
//! - [`fixture`]: loads a recorded host (`fixtures/hosts/NAME`).

pub mod check;
pub mod devices;
pub mod domcaps;
pub mod facts;
pub mod fixture;
pub mod kvm;
pub mod platform;

pub use domcaps::parse_domcaps;
pub use facts::{parse_meminfo, read_facts};
