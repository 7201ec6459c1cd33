//! One long operation per VM at a time.
//!
//! A snapshot, a revert, a clone (of its source), an export, a migration, a
//! delete or a start of a VM holds the VM's lock: a file `LOCK_DIR/UUID.json`
//! made exclusively (written under a temporary name, then hard-linked into
//! place, so a reader never sees it half written). It names the operation, the
//! process and since when, so another one is refused as busy with what runs
//! ("busy: … is being cloned by phyllome pid N, for 12 s"). An operation can keep
//! its recovery record in it (snapshots do: what is paused, saved, staged).
//!
//! A lock whose process is gone (kill -9, power loss: another boot) is
//! recovered by the next command (`op::recover`): its record, if any, is undone
//! first, then the lock goes. One thread may take the lock of a VM it already
//! holds (a revert that starts the VM, a migration that deletes its source):
//! that inner take is a no-op.

use super::record::{self, Made, Record};
use crate::errors::Classify;
use crate::paths::LOCK_DIR;
use phyllome_libvirt::Libvirt;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::record::Operation;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("busy: {vm} is being {} by phyllome pid {pid}, for {secs} s; try again when that ends", op.doing())]
    Busy { vm: String, op: Operation, pid: u32, secs: u64 },
    #[error(
        "busy: an interrupted operation ({}) of {vm} through {uri} is not finished yet: any phyllome command through that connection finishes it (phyllome --connect {uri} list)",
        op.doing()
    )]
    Unrecovered { vm: String, op: Operation, uri: String },
    #[error("the operation lock of {vm} ({path}): {why}")]
    Io { vm: String, path: String, why: String },
    #[error("no VM named {0:?}")]
    NoSuchVm(String),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
}

impl Classify for LockError {
    fn kind(&self) -> crate::errors::ErrorKind {
        match self {
            LockError::Busy { .. } | LockError::Unrecovered { .. } => crate::errors::ErrorKind::Conflict,
            LockError::Io { .. } => crate::errors::ErrorKind::Failed,
            LockError::NoSuchVm(_) => crate::errors::ErrorKind::NotFound,
            LockError::Libvirt(e) => e.kind(),
        }
    }
}

thread_local! {
    /// The UUIDs whose lock this thread holds.
    static HELD: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A VM's lock, held until [`Lock::release`] or drop. A lock with a record is
/// left in place when dropped without release (a panic): recovery undoes it
/// once the process is gone.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    holder: Record,
    /// Taken again by a thread that held it already: touches nothing.
    nested: bool,
    done: bool,
    /// It keeps a record of what the operation made: left in place when dropped.
    keeps: bool,
}

fn path_of(uuid: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{uuid}.json"))
}

fn read(path: &Path) -> Option<Record> {
    Record::read(path)
}

/// Takes the lock of VM `name` (looked up by name; its UUID names the lock) for `op`.
pub fn take(lv: &Libvirt, name: &str, op: Operation) -> Result<Lock, LockError> {
    let uuid = lv.uuid(name).map_err(|e| if e.is_no_domain() { LockError::NoSuchVm(name.into()) } else { e.into() })?;
    take_uuid(lv, name, &uuid, op)
}

/// Takes the lock of the VM with this UUID for `op`.
pub fn take_uuid(lv: &Libvirt, name: &str, uuid: &str, op: Operation) -> Result<Lock, LockError> {
    let path = path_of(uuid);
    let holder = Record { vm_uuid: Some(uuid.into()), ..Record::new(lv, op, name) };
    if HELD.with(|h| h.borrow().iter().any(|u| u == uuid)) {
        return Ok(Lock { path, holder, nested: true, done: false, keeps: false });
    }
    let ioe = |p: &Path, e: std::io::Error| LockError::Io {
        vm: name.into(),
        path: p.display().to_string(),
        why: e.to_string(),
    };
    crate::paths::make(LOCK_DIR).map_err(|e| ioe(Path::new(LOCK_DIR), e))?;
    // Written whole under a name of this process, then linked into place: exclusive, never half written.
    let tmp = Path::new(LOCK_DIR).join(format!(".{uuid}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    record::write_new(&tmp, &holder).map_err(|e| ioe(&tmp, e))?;
    let mut tries = 0;
    let taken = loop {
        tries += 1;
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => break Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => {
                let Some(other) = read(&path) else {
                    // Released meanwhile: try again.
                    continue;
                };
                if !other.is_dead() {
                    break Err(LockError::Busy {
                        vm: name.into(),
                        op: other.op,
                        pid: other.pid,
                        secs: record::now().saturating_sub(other.since),
                    });
                }
                if !other.made.is_empty() {
                    // A dead operation's record is undone by recovery through its own connection first.
                    break Err(LockError::Unrecovered {
                        vm: name.into(),
                        op: other.op,
                        uri: other.uri.unwrap_or_else(|| "qemu:///system".into()),
                    });
                }
                remove_dead(&path, &other);
            }
            Err(e) => break Err(ioe(&path, e)),
        }
    };
    let _ = std::fs::remove_file(&tmp);
    taken?;
    HELD.with(|h| h.borrow_mut().push(uuid.to_string()));
    Ok(Lock { path, holder, nested: false, done: false, keeps: false })
}

/// Removes a dead holder's lock, only while it is still that holder's: it is
/// renamed aside first, and put back if another process replaced it meanwhile.
fn remove_dead(path: &Path, dead: &Record) {
    let aside = path.with_extension(format!("dead.{}", std::process::id()));
    if std::fs::rename(path, &aside).is_err() {
        return;
    }
    if read(&aside).as_ref() != Some(dead) {
        let _ = std::fs::hard_link(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
}

impl Lock {
    pub fn holder(&self) -> &Record {
        &self.holder
    }

    /// Keeps what the operation made or changed in the lock (atomically: a crash leaves
    /// the old or the new one). A lock that keeps something stays until it is undone.
    pub fn record(&mut self, made: &Made) -> std::io::Result<()> {
        if self.nested {
            return Ok(());
        }
        self.holder.made = made.clone();
        self.keeps = true;
        record::write(&self.path, &self.holder)
    }

    /// Done: the VM is free again.
    pub fn release(mut self) {
        self.free();
    }

    fn free(&mut self) {
        if self.done || self.nested {
            self.done = true;
            return;
        }
        self.done = true;
        if read(&self.path).is_some_and(|h| h.pid == self.holder.pid && h.since == self.holder.since) {
            let _ = std::fs::remove_file(&self.path);
        }
        HELD.with(|h| h.borrow_mut().retain(|u| Some(u) != self.holder.vm_uuid.as_ref()));
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.keeps {
            self.free();
        } else {
            HELD.with(|h| h.borrow_mut().retain(|u| Some(u) != self.holder.vm_uuid.as_ref()));
        }
    }
}

/// Refuses when another live operation holds the VM (for commands that would
/// break one, such as stop or pause, without holding the VM themselves).
pub fn check(lv: &Libvirt, name: &str) -> Result<(), LockError> {
    let Ok(uuid) = lv.uuid(name) else { return Ok(()) };
    if HELD.with(|h| h.borrow().contains(&uuid)) {
        return Ok(());
    }
    match read(&path_of(&uuid)) {
        Some(h) if !h.is_dead() => {
            Err(LockError::Busy { vm: name.into(), op: h.op, pid: h.pid, secs: record::now().saturating_sub(h.since) })
        }
        _ => Ok(()),
    }
}

/// Every lock there is, with its file.
pub fn all() -> Vec<(PathBuf, Record)> {
    record::all_in(Path::new(LOCK_DIR))
}

/// Removes the lock `path` of the dead holder `h`, once what it keeps is undone.
pub(crate) fn remove(path: &Path, h: &Record) {
    remove_dead(path, h);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_says_what_runs_and_a_dead_record_says_where_to_finish_it() {
        let e = LockError::Busy { vm: "w11".into(), op: Operation::Clone, pid: 42, secs: 7 };
        assert_eq!(e.to_string(), "busy: w11 is being cloned by phyllome pid 42, for 7 s; try again when that ends");
        assert_eq!(e.kind(), crate::errors::ErrorKind::Conflict);
        let e = LockError::Unrecovered {
            vm: "w11".into(),
            op: Operation::SnapshotCreate,
            uri: "qemu+ssh://h/system".into(),
        };
        assert!(e.to_string().contains("phyllome --connect qemu+ssh://h/system list"), "{e}");
    }

    #[test]
    fn a_lock_keeping_a_snapshots_state_reads_back() {
        let mut h = Record::new_local(Operation::SnapshotRevert, "a");
        h.made.staged.push(crate::host_files::FileId::planned("/x"));
        let text = String::from_utf8(h.to_json()).unwrap();
        assert!(text.contains("\"op\":\"snapshot-revert\""), "{text}");
        assert_eq!(Record::parse(text.as_bytes()).unwrap(), h);
    }
}
