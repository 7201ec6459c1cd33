//! Snapshots of a whole VM: its disks, its UEFI variables and its TPM state,
//! and with `--memory` its RAM, never in plaintext at rest.
//!
//! Why Phyllome makes them itself rather than through libvirt's snapshot API
//! (each seen on libvirt 11.3 / QEMU 10.0 with a Phyllome VM: LUKS qcow2 pool
//! volume, qcow2 NVRAM, swtpm):
//! - an internal snapshot of a shut-off VM runs `qemu-img snapshot -c` without
//!   the disk's secret: "Parameter 'encrypt.key-secret' is required for cipher";
//! - libvirt refuses internal disk-only snapshots of a running VM ("active qemu
//!   domains require external disk snapshots");
//! - an internal snapshot with memory writes the RAM into the encrypted qcow2,
//!   and QEMU aborts on it (`qcow2_co_encdec: Assertion QEMU_IS_ALIGNED(len,
//!   sector_size)`), killing the guest;
//! - external snapshots cannot be reverted for pool volumes ("source disk for
//!   'vda' is not a regular file, reverting to snapshot is not supported"), and
//!   an external memory file is plaintext;
//! - no libvirt snapshot holds the swtpm state without memory.
//!
//! So a snapshot is a folder `SNAPSHOT_DIR/VM-UUID/NAME/` holding:
//! - each writable disk as a qcow2 still LUKS-encrypted under the disk's own key:
//!   of a shut-off VM the image file copied as it is (ciphertext); of a running
//!   VM a point-in-time copy QEMU writes while the guest runs on (libvirt's
//!   push-mode backup, its target encrypted with the disk's own secret);
//! - the NVRAM file and the swtpm state files, copied while the VM is off or
//!   paused (QEMU flushes its images when it pauses), with their owner and mode;
//! - with `--memory`: the RAM and device state, saved by libvirt to a private
//!   tmpfs (RAM, like the guest's own memory) and written to disk only
//!   encrypted with age (X25519, ChaCha20-Poly1305 STREAM), its identity kept
//!   in a libvirt secret that only libvirt's root clients can read;
//! - `snapshot.json`, the record.
//!
//! All or nothing: the folder is built as `.NAME.part` and renamed at the end;
//! a pending entry records what is under way (a backup job, a paused or frozen
//! guest, a saved memory file, staged revert files) so a failure, Ctrl-C or a
//! kill -9 leaves the VM as it was and no half snapshot.
//!
//! The folder: `create`, `revert`, `delete` (and `list`), the session they share
//! (`session`: the VM's lock and what it records), the memory state (`memory`); the
//! records themselves are the VM's (`vm::snapshots`).

pub mod create;
pub mod delete;
pub mod error;
pub mod memory;
pub mod revert;
pub mod session;

pub use crate::vm::snapshots::SnapshotInfo;
pub use create::{create, SnapshotRequest};
pub use delete::{delete, list};
pub use error::{Result, SnapshotError};
pub use revert::{revert, Reverted};
pub use session::check_name;
