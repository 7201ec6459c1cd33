//! One snapshot operation while it runs: the VM's lock holding what it made or changed
//! (`op::record::Made`), so a failure, Ctrl-C or kill -9 leaves the VM as it was; and the
//! checks and helpers create, revert and delete share.

use super::error::{io, Result, SnapshotError};
use crate::domxml;
use crate::host_files::FileId;
use crate::op::lock;
use crate::op::record::{Made, Operation};
use crate::op::undo;
use crate::vm::VmError;
use phyllome_libvirt::Libvirt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Kept free beyond what a snapshot needs.
const SPARE: u64 = 64 << 20;

/// Checks a snapshot name: it becomes a folder name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadName(crate::text::printable(name).into_owned()))
    }
}

pub(super) fn check_description(d: &str) -> Result<()> {
    if d.len() > 1024 {
        return Err(SnapshotError::BadDescription("at most 1024 bytes"));
    }
    if d.chars().any(|c| c.is_control() && c != '\n') {
        return Err(SnapshotError::BadDescription("no control characters"));
    }
    Ok(())
}

pub(super) struct SnapshotOp<'a> {
    lv: &'a Libvirt,
    vm: String,
    pub(super) uuid: String,
    /// What it made or changed so far.
    pub(super) p: Made,
    lock: Option<lock::Lock>,
    pub(super) op: crate::op::Op,
}

impl<'a> SnapshotOp<'a> {
    /// Claims the VM for one snapshot operation: its lock, refused while another operation holds it.
    pub(super) fn begin(lv: &'a Libvirt, vm: &str, uuid: &str, what: Operation) -> Result<SnapshotOp<'a>> {
        let lock = lock::take_uuid(lv, vm, uuid, what)?;
        let op = crate::op::Op::begin();
        Ok(SnapshotOp { lv, vm: vm.into(), uuid: uuid.into(), p: Made::default(), lock: Some(lock), op })
    }

    pub(super) fn save(&mut self) -> Result<()> {
        let lock = self.lock.as_mut().expect("held until finish");
        lock.record(&self.p).map_err(|e| io(crate::paths::LOCK_DIR, e))
    }

    /// A step: test hooks (PHYLLOME_TEST_FAIL_AT / PAUSE_AT) and Ctrl-C.
    pub(super) fn step(&self, name: &str) -> Result<()> {
        Ok(self.op.step(name)?)
    }

    /// Ctrl-C only, inside a step's loop.
    pub(super) fn check(&self) -> Result<()> {
        Ok(self.op.check()?)
    }

    /// Makes a new file (0600) to stage into, recorded by path before it exists and by inode once made.
    pub(super) fn stage_file(&mut self, path: &Path) -> Result<std::fs::File> {
        let name = path.to_string_lossy().into_owned();
        self.p.staged.push(FileId::planned(&name));
        self.save()?;
        let f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| io(path, e))?;
        *self.p.staged.last_mut().expect("pushed") = FileId::of(&name).map_err(|e| io(path, e))?;
        self.save()?;
        Ok(f)
    }

    /// Done: the lock goes, the signals are the process's again.
    pub(super) fn finish(mut self) {
        if let Some(l) = self.lock.take() {
            l.release();
        }
    }

    /// Undoes what is recorded, then finishes (or, when libvirt is still busy with the VM,
    /// leaves the record for the next command).
    pub(super) fn fail(mut self, e: SnapshotError) -> SnapshotError {
        let done = undo::changed_state(self.lv, &self.vm, &mut self.p);
        let interrupted = self.op.interrupted();
        if done {
            self.finish();
        } else {
            let _ = self.save();
            drop(self.lock.take());
        }
        if interrupted {
            SnapshotError::Vm(VmError::Interrupted)
        } else {
            e
        }
    }
}

/// Writes a new file of mode 0600, synced.
pub(super) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| io(path, e))?;
    f.write_all(data).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// The writable disks of a domain: (target, image path).
pub(super) fn writable_disks(lv: &Libvirt, s: &domxml::DomainSummary) -> Result<Vec<(String, String, Option<String>)>> {
    let mut out = vec![];
    for d in s.disks.iter().filter(|d| d.device == "disk") {
        let path = match (&d.file, &d.pool, &d.volume) {
            (Some(f), _, _) => f.clone(),
            (None, Some(pool), Some(vol)) => match lv.volume_info(pool, vol)? {
                Some(v) => v.path,
                None => return Err(SnapshotError::Refused(format!("disk {} ({pool}/{vol}) does not exist", d.target))),
            },
            _ => {
                return Err(SnapshotError::CannotHere(format!(
                    "disk {} is not a file: snapshots copy disk images",
                    d.target
                )))
            }
        };
        out.push((d.target.clone(), path, d.luks_secret.clone()));
    }
    Ok(out)
}

pub(super) fn free_space(dir: &Path) -> Result<u64> {
    fs4::available_space(dir).map_err(|e| io(dir, e))
}

/// Refuses when `dir`'s file system has less than `need` bytes and the spare free (`what`: what for).
pub(super) fn check_space(dir: &Path, need: u64, what: &'static str) -> Result<()> {
    let free = free_space(dir)?;
    if free < need + SPARE {
        return Err(SnapshotError::NoSpace {
            path: dir.display().to_string(),
            what,
            need_mib: (need + SPARE).div_ceil(1 << 20),
            free_mib: free >> 20,
        });
    }
    Ok(())
}

/// Snapshots are folders of this machine holding copies of the VM's disk images, UEFI
/// variables and TPM state: refused, before anything is made, for a VM of another host.
pub(super) fn here(lv: &Libvirt) -> Result<()> {
    Ok(crate::host_files::here_only(lv, "snapshots (they copy the VM's disk images, UEFI variables and TPM state)")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_folder_names_only_when_safe() {
        for ok in ["a", "before-update", "snap_1.2", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é", &"x".repeat(65), "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_description("after the driver update\nsecond line").is_ok());
        assert!(check_description("bell\u{7}").is_err());
        assert!(check_description(&"d".repeat(1025)).is_err());
    }
}
