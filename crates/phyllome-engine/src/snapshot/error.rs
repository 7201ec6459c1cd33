//! What can go wrong with a snapshot operation.

use crate::disk::DiskError;
use crate::errors::Classify;
use crate::op::lock;
use crate::vm::VmError;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Feature(#[from] phyllome_model::Unsupported),
    #[error("snapshot name {0:?}: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName(String),
    #[error("--description: {0}")]
    BadDescription(&'static str),
    #[error("{vm} has no snapshot {name:?} (`phyllome snapshot list {vm}` shows them)")]
    NoSnapshot { vm: String, name: String },
    #[error("{vm} already has a snapshot {name:?}: choose another name")]
    Exists { vm: String, name: String },
    #[error("{0} is running: a revert replaces its disks and state; stop it first, or give --force to power it off")]
    RevertRunning(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    CannotHere(String),
    #[error("not enough space in {path} {what}: it needs {need_mib} MiB, {free_mib} MiB are free")]
    NoSpace { path: String, what: &'static str, need_mib: u64, free_mib: u64 },
    #[error("{vm}'s disks changed since snapshot {name:?} was taken ({what}): it cannot be reverted")]
    Changed { vm: String, name: String, what: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the memory state of snapshot {0:?} cannot be read: {1}")]
    Memory(String, String),
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

impl From<DiskError> for SnapshotError {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::Io(path, e) => SnapshotError::Io(path, e),
            DiskError::Stopped(s) => SnapshotError::Vm(s.into()),
            DiskError::Job(why) => SnapshotError::Io(
                "disk copy".into(),
                std::io::Error::other(why.unwrap_or_else(|| "the backup job failed".into())),
            ),
            DiskError::Libvirt(e) => SnapshotError::Libvirt(e),
            DiskError::Journal(e) => SnapshotError::Vm(e.into()),
            DiskError::Image(why) => SnapshotError::Io("disk copy".into(), std::io::Error::other(why)),
        }
    }
}

impl From<crate::op::StepError> for SnapshotError {
    fn from(e: crate::op::StepError) -> Self {
        SnapshotError::Vm(e.into())
    }
}

impl From<crate::host_files::NotHere> for SnapshotError {
    fn from(e: crate::host_files::NotHere) -> Self {
        SnapshotError::Vm(e.into())
    }
}

impl From<lock::LockError> for SnapshotError {
    fn from(e: lock::LockError) -> Self {
        SnapshotError::Vm(e.into())
    }
}

pub(crate) fn io(what: impl AsRef<Path>, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io(what.as_ref().display().to_string(), e)
}

impl Classify for SnapshotError {
    fn kind(&self) -> crate::errors::ErrorKind {
        use crate::errors::ErrorKind as K;
        match self {
            SnapshotError::Vm(e) => e.kind(),
            SnapshotError::Libvirt(e) => e.kind(),
            SnapshotError::Feature(_) | SnapshotError::CannotHere(_) => K::Unsupported,
            SnapshotError::BadName(_) | SnapshotError::BadDescription(_) | SnapshotError::Refused(_) => K::InvalidInput,
            SnapshotError::NoSpace { .. } => K::NoSpace,
            SnapshotError::NoSnapshot { .. } => K::NotFound,
            SnapshotError::Exists { .. } | SnapshotError::RevertRunning(_) | SnapshotError::Changed { .. } => {
                K::Conflict
            }
            SnapshotError::Io(..) | SnapshotError::Memory(..) => K::Failed,
        }
    }
}
