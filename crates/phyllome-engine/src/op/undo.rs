//! Putting back what a crash record names, each object by identity and nothing by a name
//! alone: what a create made ([`made_objects`]), what an operation changed on a VM while it
//! ran ([`changed_state`]: a backup job, a pause, a freeze, a saved memory state, staged
//! copies), and what a migration made on its destination ([`made_there`]).

use super::record::{Made, MadeThere};
use crate::host_files::{FileId, HostFiles};
use crate::paths::{self, BOOT_DIR, INITRD_COPY, KERNEL_COPY, SNAPSHOT_DIR};
use phyllome_libvirt::{Libvirt, State};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Removes what an (interrupted or failed) create of VM `name` made, by identity: the
/// domain and the secret by UUID, files by device and inode (by volume key on another
/// host, through its libvirt), and files only inside the pool's own folder, libvirt's
/// NVRAM folder or Phyllome's boot folder. Nothing found by name alone is touched: a VM,
/// volume or secret someone else made with the same name stays.
pub fn made_objects(lv: &Libvirt, name: &str, m: &Made) {
    if let Some(uuid) = &m.paused_source {
        // A clone's source, started paused to copy its disk: off again.
        let _ = lv.destroy_paused_uuid(uuid);
    }
    if let Some(uuid) = &m.domain_uuid {
        // Undefining with the NVRAM flag also removes the store libvirt (or we) made for it.
        let _ = lv.remove_domain_by_uuid(uuid);
    }
    let files = HostFiles::of(lv);
    let in_nvram_dir = |p: &str| Path::new(p).parent() == Some(Path::new(phyllome_model::domain::NVRAM_DIR));
    if let Some(f) = m.nvram_file.as_ref().filter(|f| in_nvram_dir(&f.path)) {
        files.remove(f);
    }
    if let Some(nvram) = m.nvram.as_deref().filter(|p| in_nvram_dir(p)) {
        // A half-written store carries this create's temporary name, which only a holder of the claim writes.
        files.discard_partial(nvram);
    }
    let pool = m.pool.clone().unwrap_or_default();
    if let Some(f) = &m.volume_file {
        files.remove_volume(&pool, f);
    }
    // libvirt may list the volume while its file is gone (removed above, or by libvirt itself when a
    // backup into it ended with its paused source): re-read the pool, or the next command of this
    // name stumbles on a volume libvirt cannot find.
    if m.volume_file.is_some() || m.paused_source.is_some() {
        let _ = lv.refresh_pool(&pool);
    }
    if let Some(uuid) = &m.secret_uuid {
        let _ = lv.undefine_secret_uuid(uuid);
    }
    // A copy cut short carries its temporary name, in this name's own boot folder.
    for f in [KERNEL_COPY, INITRD_COPY] {
        files.discard_partial(&format!("{}/{f}", paths::boot_dir(name)));
    }
    remove_boot_files(&files, &m.boot_files);
}

/// Removes copied boot files that are still the ones made (inside BOOT_DIR only), then their folder if empty.
pub fn remove_boot_files(files: &HostFiles, made: &[FileId]) {
    for f in made.iter().filter(|f| Path::new(&f.path).starts_with(BOOT_DIR)) {
        if files.remove(f) {
            if let Some(dir) = Path::new(&f.path).parent() {
                files.remove_dir(&dir.to_string_lossy());
            }
        }
    }
}

/// How long an undo waits for a job libvirt goes on with (a save, a restore) to end.
const SETTLE: Duration = Duration::from_secs(120);

/// Waits until libvirt is done with the VM: no job (a save or restore it goes on
/// with after its caller died), not paused for a save (as it is a moment after
/// the save's job ended) and not on its way down ("in shutdown" after a save).
/// False when it is still busy after [`SETTLE`].
fn settle(lv: &Libvirt, vm: &str) -> bool {
    let until = std::time::Instant::now() + SETTLE;
    loop {
        let busy = lv.job(vm).is_ok_and(|j| j.active)
            || match lv.state(vm) {
                Ok(State::Other) => true,
                Ok(State::Paused) => lv.pause_reason(vm).is_ok_and(|r| r == Some("saving")),
                _ => false,
            };
        if !busy {
            return true;
        }
        if std::time::Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a file libvirt saved a domain into is whole: libvirt writes the
/// header's magic as `LibvirtQemudPart` first, and `LibvirtQemudSave` once the
/// save completed.
pub fn save_complete(header: &[u8]) -> bool {
    header.starts_with(b"LibvirtQemudSave")
}

fn save_file_complete(path: &str) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && save_complete(&head)
}

/// Puts VM `vm` back as it was and removes what a failed operation made while it ran
/// (clearing from `m` what is done). False when libvirt is still busy with the VM (its
/// save or restore goes on): the record must stay for a later try.
pub fn changed_state(lv: &Libvirt, vm: &str, m: &mut Made) -> bool {
    if m.backup {
        if lv.job(vm).is_ok_and(|j| j.active) {
            let _ = lv.abort_job(vm);
            for _ in 0..100 {
                if !lv.job(vm).is_ok_and(|j| j.active) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        m.backup = false;
    }
    if m.paused {
        if lv.state(vm).is_ok_and(|s| s == State::Paused) {
            let _ = lv.resume(vm);
        }
        m.paused = false;
    }
    if m.frozen {
        let _ = lv.fs_thaw(vm);
        m.frozen = false;
    }
    if let (Some(paused), Some(file)) = (m.saved, &m.save_file) {
        // Held open meanwhile, its tmpfs cannot be unmounted under it (by the sweep of a phyllome
        // that knows no such record, such as an older one still running).
        let _busy = std::fs::File::open(file);
        // libvirt goes on with a save (or restore) its caller asked for: wait for its end, then
        // a VM that is off with its state whole in the file runs again; one that runs is left so.
        if !settle(lv, vm) {
            return false;
        }
        if lv.state(vm).is_ok_and(|s| s == State::Shutoff) && save_file_complete(file) {
            let _ = lv.restore(file, paused);
        }
        m.saved = None;
    }
    drop_memory_mount(m);
    for f in m.staged.drain(..) {
        // A path recorded before its file was made names a file only a revert of this VM makes.
        if f.ino == 0 || f.still_there() {
            let _ = remove_any(Path::new(&f.path));
        }
    }
    if let Some(part) = m.part.take() {
        if part.still_there() && part.path.starts_with(SNAPSHOT_DIR) {
            let _ = std::fs::remove_dir_all(&part.path);
        }
    }
    if let Some(uuid) = m.memory_secret.take() {
        let _ = lv.undefine_secret_uuid(&uuid);
    }
    true
}

/// Removes the memory state's file and unmounts its tmpfs.
pub fn drop_memory_mount(m: &mut Made) {
    if let Some(f) = m.save_file.take() {
        let _ = std::fs::remove_file(f);
    }
    if let Some(mount) = m.mount.take() {
        let _ = std::process::Command::new("umount").arg(&mount).status();
        let _ = std::fs::remove_dir(&mount);
    }
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(p)?.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Removes from `dst` what a migration made there, each object by identity (volume key,
/// secret UUID, upload key, pool UUID), clearing from `t` what is gone. A volume a domain
/// there uses (defined or running) is not the record's any more: it stays, with its key,
/// and is said in the returned words.
pub fn made_there(dst: &Libvirt, t: &mut MadeThere) -> Vec<String> {
    let mut kept = vec![];
    if let Some(k) = t.volume_key.clone() {
        match crate::domxml::user_of_volume(dst, "", crate::POOL, &t.volume, Some(&k)) {
            Ok(Some(other)) => {
                kept.push(format!("volume {}/{} and its key: the disk of VM {other} there", crate::POOL, t.volume));
                t.volume_key = None;
                t.secret = None;
            }
            Ok(None) => {
                if dst.delete_volume_by_key(crate::POOL, &t.volume, &k).is_ok() {
                    t.volume_key = None;
                }
            }
            Err(_) => {}
        }
    }
    if let Some(s) = t.secret.clone() {
        if dst.undefine_secret_uuid(&s).is_ok() {
            t.secret = None;
        }
    }
    t.files.retain(|(dir, file, key)| dst.remove_uploaded(dir, file, key).is_err());
    if t.files.is_empty() {
        // Only while empty (an rmdir): a folder something else put files into stays.
        t.dirs.retain(|d| dst.remove_empty_folder(d).is_err());
    }
    if let Some(p) = t.pool.clone() {
        if t.volume_key.is_none() && dst.remove_empty_pool(&p).is_ok() {
            t.pool = None;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_file_is_whole_only_once_libvirt_wrote_its_final_magic() {
        assert!(save_complete(b"LibvirtQemudSave\x02\0\0\0"));
        assert!(!save_complete(b"LibvirtQemudPart\x02\0\0\0"), "libvirt is still writing it");
        assert!(!save_complete(b""));
        assert!(!save_complete(b"PHYLLOME-DECRYPTED"));
    }
}
