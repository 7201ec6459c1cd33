//! The host side of Phyllome: the machine that runs the VMs.
//!
//! - [`setup`]: `phyllome host setup`, a pure planner. It reads a root
//!   directory (`/` on a live host, a fixture tree in tests) and returns the
//!   [`setup::Change`]s that make the host ready for virtualization: IOMMU
//!   kernel parameters through the host's own boot tool, vfio modules, nested
//!   virtualization, libvirt's QEMU driver listening on loopback only, and
//!   Phyllome's storage pool. Only settings Phyllome owns are touched, and a
//!   second plan on the result is empty.
//! - [`apply`]: carries out a plan under the root; commands (grubby,
//!   update-grub, kernel-install, systemctl) run on a live root only.
//! - [`edit`]: the pure text edits the planner uses (kernel command lines,
//!   `/etc/default/grub`, BLS entries, `qemu.conf`).
//! - [`kickstart`]: the Phyllome OS Fedora Remix recipes, composed from small
//!   named ingredients into a flattened kickstart per edition.

pub mod apply;
pub mod diff;
pub mod edit;
pub mod kickstart;
pub mod setup;

/// TCP port `phyllome serve` listens on in Phyllome OS (the unit's default).
pub const WEB_PORT: u16 = 7440;
