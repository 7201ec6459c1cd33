//! What can go wrong with a VM, for every VM operation of this folder and those built on them.

use crate::disk::{nvram::NvramError, DiskError};
use crate::errors::{Classify, ErrorKind};
use crate::host_facts::HostError;
use crate::media::files::FileError;
use crate::op::journal::JournalError;
use crate::op::StepError;
use phyllome_model::build::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Lock(#[from] crate::op::lock::LockError),
    #[error("a VM named {0:?} already exists")]
    NameBusy(String),
    #[error("no VM named {0:?}")]
    NoSuchVm(String),
    #[error("volume {volume} already exists in pool {pool} (it may be another VM's disk): choose another name")]
    VolumeExists { pool: String, volume: String },
    #[error("a libvirt secret for {0} already exists (it may be another VM's disk key): choose another name")]
    SecretExists(String),
    #[error("storage pool {0:?} does not exist")]
    NoPool(String),
    #[error("libvirt network {0:?} does not exist: use --network none, user, or an existing network")]
    NoNetwork(String),
    #[error("libvirt network {0:?} is not active: start it (virsh net-start {0}) or use --network none or user")]
    NetworkInactive(String),
    #[error("{name} was paused by an I/O error and pauses again on resume: {why}")]
    IoPaused { name: String, why: String },
    #[error("--network: {0}")]
    BadNetwork(String),
    #[error("{0} is running: stop it first (phyllome stop {0}, or phyllome kill {0})")]
    Running(String),
    #[error("disk {disk} is also used by VM {other}: remove it from {other} first, or delete with --keep-disk")]
    DiskShared { disk: String, other: String },
    #[error("volume {disk} is used by VM {vm}: it stays (phyllome delete {vm} removes both)")]
    VolumeInUse { disk: String, vm: String },
    #[error("no volume {0} (`phyllome volume list` shows them)")]
    NoVolume(String),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error(
        "{name} is not started here: its move to {to} is not settled ({why}), and it may run there. Once {to} answers, any phyllome command finishes the move or undoes it; `phyllome host clean {to}` does it now and says which"
    )]
    MoveUnfinished { name: String, to: String, why: String },
    #[error("interrupted: everything this command created was removed")]
    Interrupted,
    #[error("cannot create the disk: {0}")]
    Disk(String),
    #[error("the passphrase does not unlock {0}'s disk")]
    WrongPassphrase(String),
    #[error("{0}'s disk is locked by a passphrase: run `phyllome start {0}` where you can type it")]
    NeedPassphrase(String),
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("{name} did not shut down within {secs} s: try again with --force, or `phyllome kill {name}`")]
    StopTimeout { name: String, secs: u64 },
    #[error("cannot read {0}'s domain XML: {1}")]
    Xml(String, roxmltree::Error),
    #[error(transparent)]
    Nvram(#[from] NvramError),
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error(transparent)]
    Media(#[from] crate::media::install::MediaError),
    #[error(transparent)]
    NotHere(#[from] crate::host_files::NotHere),
    #[error("cannot remove the VM's snapshots: {0}")]
    Snapshots(String),
    #[error("{name} was changed outside Phyllome: {note}. Phyllome does not {action}. {undo}")]
    ChangedOutside { name: String, note: String, action: String, undo: String },
    #[error("injected failure at step {0} (PHYLLOME_TEST_FAIL_AT)")]
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    Injected(String),
}

impl Classify for VmError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmError::Build(e) => e.kind(),
            VmError::File(e) => e.kind(),
            VmError::Libvirt(e) => e.kind(),
            VmError::Host(e) => e.kind(),
            VmError::Journal(e) => e.kind(),
            VmError::Lock(e) => e.kind(),
            VmError::Nvram(e) => e.kind(),
            VmError::NameBusy(_)
            | VmError::VolumeExists { .. }
            | VmError::SecretExists(_)
            | VmError::Running(_)
            | VmError::NotRunning(_)
            | VmError::DiskShared { .. }
            | VmError::NetworkInactive(_)
            | VmError::IoPaused { .. }
            | VmError::VolumeInUse { .. }
            | VmError::MoveUnfinished { .. }
            | VmError::ChangedOutside { .. } => ErrorKind::Conflict,
            VmError::NeedPassphrase(_) => ErrorKind::InvalidInput,
            VmError::NoSuchVm(_) | VmError::NoPool(_) | VmError::NoNetwork(_) | VmError::NoVolume(_) => {
                ErrorKind::NotFound
            }
            VmError::BadNetwork(_) | VmError::EmptyPassphrase | VmError::WrongPassphrase(_) => ErrorKind::InvalidInput,
            VmError::Share(e) => e.kind(),
            VmError::Media(_) => ErrorKind::InvalidInput,
            VmError::Interrupted => ErrorKind::Interrupted,
            VmError::NotHere(e) => e.kind(),
            _ => ErrorKind::Failed,
        }
    }
}

pub type Result<T> = std::result::Result<T, VmError>;

impl From<StepError> for VmError {
    fn from(e: StepError) -> VmError {
        match e {
            StepError::Interrupted => VmError::Interrupted,
            StepError::Injected(step) => VmError::Injected(step),
        }
    }
}

/// A disk operation's failure, in create's terms ("cannot create the disk: ...").
impl From<DiskError> for VmError {
    fn from(e: DiskError) -> VmError {
        match e {
            DiskError::Io(path, e) => VmError::Disk(format!("{path}: {e}")),
            DiskError::Stopped(s) => s.into(),
            e @ DiskError::Job(_) => VmError::Disk(e.to_string()),
            DiskError::Image(why) => VmError::Disk(why),
            DiskError::Libvirt(e) => VmError::Libvirt(e),
            DiskError::Journal(e) => VmError::Journal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::files::FileError;
    use phyllome_model::build::BuildError;

    #[test]
    fn vm_errors_fall_into_their_class() {
        let kind = |e: VmError| crate::errors::Failure::from(e).kind();
        assert_eq!(kind(VmError::NameBusy("x".into())), ErrorKind::Conflict);
        assert_eq!(kind(VmError::NoSuchVm("x".into())), ErrorKind::NotFound);
        assert_eq!(kind(VmError::Interrupted), ErrorKind::Interrupted);
        let missing = FileError::Missing { what: "ISO", path: "/x".into() };
        assert_eq!(kind(VmError::File(missing)), ErrorKind::NotFound);
        assert_eq!(kind(VmError::Build(BuildError::ZeroCpus)), ErrorKind::InvalidInput);
        let tpm = BuildError::NoTpm { os: "Windows 11", why: "swtpm is not installed" };
        assert_eq!(kind(VmError::Build(tpm)), ErrorKind::Unsupported);
    }
}
