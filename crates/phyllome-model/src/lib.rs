//! Phyllome's VM models: pure logic, no I/O.
//!
//! - [`catalog`]: the guest OS profiles, the one place that decides which
//!   devices each guest gets and why;
//! - [`build`]: adapts a profile to a host's facts and a user's request;
//! - [`domain`]: the typed libvirt domain it produces, rendered by [`xml`];
//! - [`host`]: the host facts the builder consumes;
//! - [`platform`]: what the host's libvirt, QEMU, swtpm and virtiofsd are (part of the host facts);
//! - [`capability`]: what the host's libvirt/QEMU versions can do, decided in one place;
//! - [`input`]: validation of names, sizes and paths.

pub mod build;
pub mod capability;
pub mod catalog;
pub mod detect;
pub mod domain;
pub mod host;
pub mod hostdev;
pub mod input;
pub mod platform;
pub mod xml;

pub use build::{build, BuildError, DiskRef, Encryption, NetworkChoice, Plan, Request};
pub use capability::{Feature, Unsupported};
pub use host::{DomainCaps, Host, HostFacts};
pub use platform::{Platform, Version};
