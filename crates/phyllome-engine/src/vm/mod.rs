//! A VM as a whole: create (all or nothing, encrypted by default), its lifecycle, delete,
//! the list and one VM's details, VMs changed outside Phyllome, and the store of its
//! snapshots. The CLI and the web API both call these; nothing here prints.

pub mod changed;
pub mod create;
pub mod delete;
pub mod error;
pub mod lifecycle;
pub mod list;
pub mod lookup;
pub mod snapshots;

pub(crate) use changed::refuse_changed;
pub use changed::{changed_disks, Changed, Image};
pub(crate) use create::preflight;
pub use create::{create, create_with, disk_ref, plan, Adopt, Created, VmSpec};
pub(crate) use delete::remove_moved;
pub use delete::{delete, recover, Deleted};
pub use error::{Result, VmError};
pub use lifecycle::{kill, pause, resume, set_autostart, start, stop, Stopped};
pub use list::{details, explain, gib_tenths, list, row, Details, DiskDetail, VmRow};
pub(crate) use lookup::state;
pub use lookup::summary;
