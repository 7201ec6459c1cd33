//! The one recovery, what every phyllome command does first: the crash records of
//! processes that are gone, made through this connection, are undone ([`recover`]).

use super::moves::{self, RemoveHere};
use super::record::{self, same_connection, Record};
use super::{journal::Journal, lock, undo};
use crate::paths::{MEMORY_RUN, OLD_SNAPSHOT_RECORDS, STAGING_DIR};
use phyllome_libvirt::Libvirt;
use std::path::Path;

/// Cleans up after the operations of processes that are gone; returns the VMs
/// concerned. Through the connection `lv` only (each record is undone through the
/// connection that made its objects):
/// - a create's claim: what it made is removed, and the name is free again;
/// - a VM's lock: what the operation changed is put back (the VM as it was, no half
///   snapshot), then the lock goes; a lock whose undo must wait (libvirt still saves or
///   restores the VM) stays for the next command;
/// - a migration: settled where its destination answers within 5 s (`remove_here`
///   removes the VM's copy here once it got there);
/// - the memory tmpfs and import staging folders of processes that are gone.
pub fn recover(lv: &Libvirt, remove_here: RemoveHere<'_>) -> Vec<String> {
    let journal = Journal::open();
    let mut cleaned = Vec::new();
    for r in journal.orphans().into_iter().filter(|r| r.made_through(lv)) {
        undo::made_objects(lv, &r.vm, &r.made);
        journal.finish(&r.vm);
        cleaned.push(r.vm);
    }
    cleaned.extend(locks(lv));
    cleaned.extend(older_snapshot_records(lv));
    sweep_memory_mounts();
    sweep_staging();
    cleaned.extend(moves::recover(lv, remove_here).into_iter().filter(|r| r.settled()).map(|r| r.vm));
    cleaned
}

/// What a dead operation of a VM changed, put back: true when done (its record may go).
fn undo_record(lv: &Libvirt, r: &Record) -> bool {
    let mut made = r.made.clone();
    if r.boot_id != record::boot_id() {
        // Nothing of a previous boot is running or mounted; its save file (on a tmpfs) is gone.
        made.backup = false;
        made.paused = false;
        made.frozen = false;
        made.saved = None;
        made.mount = None;
        made.save_file = None;
    }
    undo::changed_state(lv, &r.vm, &mut made)
}

/// The locks of dead processes: a bare one just goes; one keeping a record goes once its
/// record is undone, through the connection that made it.
fn locks(lv: &Libvirt) -> Vec<String> {
    let mut done = vec![];
    for (path, h) in lock::all() {
        let ours = h.made.is_empty() || same_connection(h.uri.as_deref(), lv);
        if !h.is_dead() || h.pid == std::process::id() || !ours {
            continue;
        }
        if !h.made.is_empty() && !undo_record(lv, &h) {
            continue;
        }
        lock::remove(&path, &h);
        done.push(h.vm);
    }
    done
}

/// The snapshot records of the release before the per-VM lock (`pending-snapshots/UUID.json`).
fn older_snapshot_records(lv: &Libvirt) -> Vec<String> {
    let mut done = vec![];
    for (path, r) in record::all_in(Path::new(OLD_SNAPSHOT_RECORDS)) {
        if r.is_dead() && r.made_through(lv) && undo_record(lv, &r) {
            let _ = std::fs::remove_file(&path);
            done.push(r.vm);
        }
    }
    done
}

/// Unmounts the memory tmpfs of any phyllome that is gone (its plaintext memory
/// state goes with it), but never one a record still names: its save file may be
/// all that is left of a running guest, until recovery restores it.
fn sweep_memory_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    let needed: Vec<String> = lock::all()
        .into_iter()
        .chain(record::all_in(Path::new(OLD_SNAPSHOT_RECORDS)))
        .filter_map(|(_, h)| h.made.mount)
        .collect();
    for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let Some(pid) = m.strip_prefix(&format!("{MEMORY_RUN}/")).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !record::phyllome_alive(pid) && !needed.iter().any(|n| n == m) {
            let _ = std::process::Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

/// The file in an import's staging folder that names the boot of the import that made it.
pub const STAGING_BOOT: &str = ".boot_id";

/// Removes the staging folders of imports whose process is gone (killed, or of
/// another boot).
fn sweep_staging() {
    let Ok(rd) = std::fs::read_dir(STAGING_DIR) else { return };
    let boot = record::boot_id();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(Ok(pid)) = name.split_once('-').map(|(p, _)| p.parse::<u32>()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let other_boot = std::fs::read_to_string(e.path().join(STAGING_BOOT)).is_ok_and(|b| b.trim() != boot);
        if other_boot || !record::phyllome_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
