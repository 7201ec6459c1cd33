//! What several operations do to disks and the files beside them, in one place: copies
//! that keep holes, owner and mode (`copy`), libvirt's push backup and its one wait loop
//! (`backup`), re-encryption of a stopped VM's disk through QEMU (`reencrypt`), new keys
//! and images (`image`), and the qcow2 UEFI variable store made from its template (`nvram`).

pub mod backup;
pub mod copy;
pub mod image;
pub mod nvram;
pub mod reencrypt;

use crate::op::StepError;

/// Why a disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Stopped(#[from] StepError),
    /// libvirt's backup job failed (its words, when it gave some).
    #[error("{}", .0.as_deref().unwrap_or("the disk copy failed"))]
    Job(Option<String>),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Journal(#[from] crate::op::journal::JournalError),
    /// A new image could not be made (qemu-img's words, or why).
    #[error("{0}")]
    Image(String),
}

impl crate::errors::Classify for DiskError {
    fn kind(&self) -> crate::errors::ErrorKind {
        match self {
            DiskError::Stopped(e) => e.kind(),
            DiskError::Libvirt(e) => e.kind(),
            DiskError::Journal(e) => e.kind(),
            DiskError::Io(..) | DiskError::Job(_) | DiskError::Image(_) => crate::errors::ErrorKind::Failed,
        }
    }
}

pub(crate) fn io(what: impl AsRef<std::path::Path>, e: std::io::Error) -> DiskError {
    DiskError::Io(what.as_ref().display().to_string(), e)
}
