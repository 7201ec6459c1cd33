//! A stopped VM's disk copied under another key. Phyllome never reads a disk's key (a
//! private libvirt secret), so QEMU does it: the VM is started paused (no guest code
//! runs), libvirt's push backup copies the disk into a new file LUKS-encrypted under
//! another secret, and the VM is powered off again. Clone and export use it.

use super::{backup, DiskError};
use crate::host_files::FileId;
use crate::op::journal::Journal;
use crate::op::progress::Report;
use crate::op::record::Record;
use phyllome_libvirt::Libvirt;
use std::sync::atomic::AtomicBool;

/// What to copy where.
pub struct ReEncrypt<'a> {
    /// The stopped VM, and its UUID.
    pub vm: &'a str,
    pub vm_uuid: &'a str,
    /// Its disk (`vda`...).
    pub target: &'a str,
    /// The new file the copy is written to.
    pub dest: &'a str,
    /// The UUID of the secret holding the copy's key.
    pub secret: &'a str,
}

impl ReEncrypt<'_> {
    /// Copies the disk. The paused VM and the copy are recorded in `claim` (kept by
    /// `journal`) as they happen, so a rollback (or the next command after a kill -9)
    /// undoes them.
    pub fn run(
        &self,
        lv: &Libvirt,
        journal: &Journal,
        claim: &mut Record,
        interrupted: &AtomicBool,
        progress: Report<'_>,
    ) -> Result<(), DiskError> {
        claim.made.paused_source = Some(self.vm_uuid.to_string());
        journal.record(claim)?;
        lv.start_paused(self.vm)?;
        let copied = (|| -> Result<(), DiskError> {
            let xml = backup::backup_xml(
                &[(self.target.to_string(), self.dest.to_string(), Some(self.secret.to_string()))],
                &[],
            );
            lv.backup_begin(self.vm, &xml)?;
            claim.made.volume_file = FileId::of(self.dest).ok();
            journal.record(claim)?;
            backup::wait(lv, self.vm, interrupted, progress)
        })();
        let _ = lv.destroy_paused_uuid(self.vm_uuid);
        claim.made.paused_source = None;
        journal.record(claim)?;
        copied?;
        claim.made.volume_file = Some(FileId::of(self.dest).map_err(|e| super::io(self.dest, e))?);
        journal.record(claim)?;
        Ok(())
    }
}
