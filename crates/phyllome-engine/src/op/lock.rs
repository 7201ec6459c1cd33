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
//! recovered by the next command (`vm::recover`): its record, if any, is undone
//! first, then the lock goes. One thread may take the lock of a VM it already
//! holds (a revert that starts the VM, a migration that deletes its source):
//! that inner take is a no-op.

use crate::errors::Classify;
use crate::op::journal::{boot_id, phyllome_alive, same_connection};
use phyllome_libvirt::Libvirt;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The locks, one file per VM (by UUID).
pub const LOCK_DIR: &str = "/var/lib/phyllome/operations";

/// What holds a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    SnapshotCreate,
    SnapshotRevert,
    SnapshotDelete,
    Clone,
    Export,
    Migrate,
    Delete,
    Start,
}

impl Operation {
    /// What the VM is undergoing, after "is being".
    pub fn doing(self) -> &'static str {
        match self {
            Operation::SnapshotCreate => "snapshotted",
            Operation::SnapshotRevert => "reverted to a snapshot",
            Operation::SnapshotDelete => "relieved of a snapshot",
            Operation::Clone => "cloned",
            Operation::Export => "exported",
            Operation::Migrate => "migrated",
            Operation::Delete => "deleted",
            Operation::Start => "started",
        }
    }

    pub fn is_snapshot(self) -> bool {
        matches!(self, Operation::SnapshotCreate | Operation::SnapshotRevert | Operation::SnapshotDelete)
    }
}

/// A lock's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub vm: String,
    pub vm_uuid: String,
    pub op: Operation,
    pub pid: u32,
    pub boot_id: String,
    /// The libvirt connection it works through.
    pub uri: Option<String>,
    /// Seconds since the epoch.
    pub since: u64,
    /// What the operation records for its recovery (a snapshot operation's pending state).
    #[serde(default)]
    pub record: Option<serde_json::Value>,
}

impl Holder {
    /// Whether its process is gone (dead, or of another boot).
    pub fn is_dead(&self) -> bool {
        self.boot_id != boot_id() || !phyllome_alive(self.pid)
    }
}

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
}

impl Classify for LockError {
    fn kind(&self) -> crate::errors::ErrorKind {
        match self {
            LockError::Busy { .. } | LockError::Unrecovered { .. } => crate::errors::ErrorKind::Conflict,
            LockError::Io { .. } => crate::errors::ErrorKind::Failed,
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
    holder: Holder,
    /// Taken again by a thread that held it already: touches nothing.
    nested: bool,
    done: bool,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn path_of(uuid: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{uuid}.json"))
}

fn read(path: &Path) -> Option<Holder> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Takes the lock of VM `name` (looked up by name; its UUID names the lock) for `op`.
pub fn take(lv: &Libvirt, name: &str, op: Operation) -> Result<Lock, crate::vm::VmError> {
    let uuid =
        lv.uuid(name).map_err(
            |e| {
                if e.is_no_domain() {
                    crate::vm::VmError::NoSuchVm(name.into())
                } else {
                    e.into()
                }
            },
        )?;
    Ok(take_uuid(lv, name, &uuid, op)?)
}

/// Takes the lock of the VM with this UUID for `op`.
pub fn take_uuid(lv: &Libvirt, name: &str, uuid: &str, op: Operation) -> Result<Lock, LockError> {
    let path = path_of(uuid);
    let holder = Holder {
        vm: name.into(),
        vm_uuid: uuid.into(),
        op,
        pid: std::process::id(),
        boot_id: boot_id(),
        uri: Some(lv.uri()),
        since: now(),
        record: None,
    };
    if HELD.with(|h| h.borrow().iter().any(|u| u == uuid)) {
        return Ok(Lock { path, holder, nested: true, done: false });
    }
    let ioe = |p: &Path, e: std::io::Error| LockError::Io {
        vm: name.into(),
        path: p.display().to_string(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| ioe(Path::new(LOCK_DIR), e))?;
    // Written whole under a name of this process, then linked into place: exclusive, never half written.
    let tmp = Path::new(LOCK_DIR).join(format!(".{uuid}.{}.tmp", std::process::id()));
    write_new(&tmp, &holder).map_err(|e| ioe(&tmp, e))?;
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
                        secs: now().saturating_sub(other.since),
                    });
                }
                if other.record.is_some() {
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
    Ok(Lock { path, holder, nested: false, done: false })
}

fn write_new(path: &Path, holder: &Holder) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(&serde_json::to_vec(holder).expect("serializable"))?;
    f.sync_all()
}

/// Removes a dead holder's lock, only while it is still that holder's: it is
/// renamed aside first, and put back if another process replaced it meanwhile.
fn remove_dead(path: &Path, dead: &Holder) {
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
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Keeps `record` in the lock (atomically: a crash leaves the old or the new one).
    pub fn record<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        if self.nested {
            return Ok(());
        }
        self.holder.record = Some(serde_json::to_value(record).expect("serializable"));
        let tmp = self.path.with_extension(format!("json.{}.tmp", std::process::id()));
        write_new(&tmp, &self.holder)?;
        std::fs::rename(&tmp, &self.path)
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
        HELD.with(|h| h.borrow_mut().retain(|u| *u != self.holder.vm_uuid));
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.holder.record.is_none() {
            self.free();
        } else {
            HELD.with(|h| h.borrow_mut().retain(|u| *u != self.holder.vm_uuid));
        }
    }
}

/// Refuses when another live operation holds the VM (for commands that would
/// break one, such as stop or pause, without holding the VM themselves).
pub fn check(lv: &Libvirt, name: &str) -> Result<(), crate::vm::VmError> {
    let Ok(uuid) = lv.uuid(name) else { return Ok(()) };
    if HELD.with(|h| h.borrow().contains(&uuid)) {
        return Ok(());
    }
    match read(&path_of(&uuid)) {
        Some(h) if !h.is_dead() => {
            Err(LockError::Busy { vm: name.into(), op: h.op, pid: h.pid, secs: now().saturating_sub(h.since) }.into())
        }
        _ => Ok(()),
    }
}

/// Every lock there is, with its file.
pub fn all() -> Vec<(PathBuf, Holder)> {
    let Ok(rd) = std::fs::read_dir(LOCK_DIR) else { return vec![] };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| read(&p).map(|h| (p, h)))
        .collect()
}

/// Recovers the locks of dead processes made through `lv`'s connection:
/// `undo` finishes what a record says (true: done), then the lock goes; a
/// lock whose record is not done yet stays for the next command. Returns the VMs.
pub fn recover(lv: &Libvirt, undo: &dyn Fn(&Holder) -> bool) -> Vec<String> {
    let mut done = vec![];
    for (path, h) in all() {
        // A record is undone through the connection that made it; a bare lock of the dead just goes.
        let ours = h.record.is_none() || same_connection(h.uri.as_deref(), lv);
        if !h.is_dead() || h.pid == std::process::id() || !ours {
            continue;
        }
        if h.record.is_some() && !undo(&h) {
            continue;
        }
        remove_dead(&path, &h);
        done.push(h.vm);
    }
    done
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
    fn holders_read_back_and_the_dead_are_known() {
        let h = Holder {
            vm: "a".into(),
            vm_uuid: "u".into(),
            op: Operation::SnapshotRevert,
            pid: u32::MAX,
            boot_id: boot_id(),
            uri: None,
            since: 1,
            record: Some(serde_json::json!({"staged": []})),
        };
        let text = serde_json::to_string(&h).unwrap();
        assert!(text.contains("\"op\":\"snapshot-revert\""), "{text}");
        assert_eq!(serde_json::from_str::<Holder>(&text).unwrap(), h);
        assert!(h.is_dead(), "no phyllome has pid u32::MAX");
        assert!(Holder { boot_id: "another boot".into(), ..h }.is_dead());
    }
}
