//! Reverting to a snapshot: every file staged beside the one it replaces (refused before
//! anything is written when they would not fit), then swapped in by renames, and the RAM
//! restored for a memory snapshot.

use super::error::{io, Result, SnapshotError};
use super::memory::{decrypt_memory, memory_mount};
use super::session::{check_name, check_space, here, writable_disks, SnapshotOp};
use crate::disk::copy::{dir_files as copy_dir_files, du, same_owner, sparse_into as copy_sparse_into};
use crate::host_facts::mem_available;
use crate::host_files::FileId;
use crate::op::progress::{Progress, Report};
use crate::op::record::Operation;
use crate::op::undo::drop_memory_mount;
use crate::paths::tpm_dir;
use crate::vm;
use crate::vm::snapshots::{read_record, set_current, vm_dir, SnapshotRecord};
use phyllome_libvirt::{Libvirt, State};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a revert did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reverted {
    pub vm: String,
    pub snapshot: String,
    /// The VM's state now: `running`, `paused` or `shut off`.
    pub state: String,
    /// It was running and was powered off first (`--force`).
    pub forced_off: bool,
}

/// Puts the VM back to snapshot `snap`: disks, NVRAM, TPM state, and the RAM
/// for a memory snapshot (which resumes it). A running VM needs `force`.
pub fn revert(
    lv: &Libvirt,
    vm_name: &str,
    snap: &str,
    start: bool,
    force: bool,
    ask: &dyn Fn() -> vm::Result<Vec<u8>>,
    report: Report<'_>,
) -> Result<Reverted> {
    here(lv)?;
    vm::recover(lv);
    report(Progress::Step { step: "check" });
    check_name(snap).map_err(|_| SnapshotError::NoSnapshot {
        vm: vm_name.into(),
        name: crate::text::printable(snap).into_owned(),
    })?;
    let s = vm::summary(lv, vm_name)?;
    report(Progress::Step { step: "claim" });
    // Held from here, so what is checked below stays true until the revert is done.
    let mut op = SnapshotOp::begin(lv, vm_name, &s.uuid, Operation::SnapshotRevert)?;
    let r = read_record(&s.uuid, snap)
        .ok_or_else(|| SnapshotError::NoSnapshot { vm: vm_name.into(), name: snap.into() })?;
    let disks = writable_disks(lv, &s)?;
    let now_disks: Vec<(&str, &str)> = disks.iter().map(|(t, p, _)| (t.as_str(), p.as_str())).collect();
    let then: Vec<(&str, &str)> = r.disks.iter().map(|d| (d.target.as_str(), d.path.as_str())).collect();
    if now_disks != then {
        return Err(SnapshotError::Changed {
            vm: vm_name.into(),
            name: snap.into(),
            what: format!("then {then:?}, now {now_disks:?}"),
        });
    }
    let state = lv.state(vm_name)?;
    let active = matches!(state, State::Running | State::Paused);
    if active && !force {
        return Err(SnapshotError::RevertRunning(vm_name.into()));
    }
    let sdir = vm_dir(&s.uuid).join(snap);
    if r.memory {
        let need = std::fs::metadata(sdir.join("memory.age")).map(|m| m.len()).unwrap_or(0);
        if mem_available() < need + (256 << 20) {
            return Err(SnapshotError::Refused(format!(
                "restoring the memory of {snap} needs {} MiB of host memory; {} MiB are available",
                (need + (256 << 20)) >> 20,
                mem_available() >> 20
            )));
        }
    }
    let tdir = tpm_dir(&s.uuid);
    staging_space(&r, &sdir, &tdir)?;
    let res = (|| -> Result<Reverted> {
        // Stage every file beside the one it replaces, then swap them in.
        report(Progress::Step { step: "stage" });
        let mut swaps: Vec<(PathBuf, PathBuf)> = vec![];
        for d in &r.disks {
            let dst = Path::new(&d.path);
            let staged = staged_name(dst);
            let like = std::fs::metadata(dst).map_err(|e| io(dst, e))?;
            let _ = std::fs::remove_file(&staged);
            let mut out = op.stage_file(&staged)?;
            copy_sparse_into(&sdir.join(&d.file), &mut out, &staged, report, op.op.flag())?;
            same_owner(&staged, &like)?;
            op.step("stage")?;
            swaps.push((staged, dst.to_path_buf()));
        }
        let mut remove_nvram = false;
        if let Some(p) = &r.nvram {
            let dst = Path::new(p);
            if r.nvram_present {
                let staged = staged_name(dst);
                let _ = std::fs::remove_file(&staged);
                let mut out = op.stage_file(&staged)?;
                copy_sparse_into(&sdir.join("nvram"), &mut out, &staged, &crate::op::progress::quiet, op.op.flag())?;
                // Owned as the snapshot's copy was (libvirt's QEMU user, or root).
                let like = std::fs::metadata(dst)
                    .or_else(|_| std::fs::metadata(sdir.join("nvram")))
                    .map_err(|e| io(dst, e))?;
                same_owner(&staged, &like)?;
                swaps.push((staged, dst.to_path_buf()));
            } else {
                remove_nvram = true;
            }
        }
        let mut tpm_staged = None;
        if r.tpm && r.tpm_present {
            let staged = tdir.with_file_name(".tpm2.phyllome-revert");
            let _ = std::fs::remove_dir_all(&staged);
            std::fs::create_dir_all(tdir.parent().expect("has a parent")).map_err(|e| io(&tdir, e))?;
            op.p.staged.push(FileId::planned(&staged.to_string_lossy()));
            op.save()?;
            copy_dir_files(&sdir.join("tpm"), &staged)?;
            *op.p.staged.last_mut().expect("pushed") =
                FileId::of(&staged.to_string_lossy()).map_err(|e| io(&staged, e))?;
            op.save()?;
            tpm_staged = Some(staged);
        }
        op.step("revert")?;
        let forced_off = active;
        if active {
            report(Progress::Step { step: "power-off" });
            lv.destroy(vm_name)?;
        }
        // The swap: renames only, nothing left to fail on space.
        report(Progress::Step { step: "swap" });
        for (staged, dst) in &swaps {
            std::fs::rename(staged, dst).map_err(|e| io(dst, e))?;
        }
        if remove_nvram {
            if let Some(p) = &r.nvram {
                let _ = std::fs::remove_file(p);
            }
        }
        if r.tpm {
            let old = tdir.with_file_name(".tpm2.phyllome-old");
            let _ = std::fs::remove_dir_all(&old);
            if tdir.exists() {
                std::fs::rename(&tdir, &old).map_err(|e| io(&tdir, e))?;
            }
            if let Some(staged) = &tpm_staged {
                std::fs::rename(staged, &tdir).map_err(|e| io(&tdir, e))?;
            }
            let _ = std::fs::remove_dir_all(&old);
        }
        op.p.staged.clear();
        op.save()?;
        if let Some(pool) = s.main_disk().and_then(|d| d.pool.clone()) {
            let _ = lv.refresh_pool(&pool);
        }
        set_current(&s.uuid, Some(snap))?;
        let now_state = if r.memory {
            report(Progress::Step { step: "memory" });
            let dir = memory_mount(
                &mut op.p,
                std::fs::metadata(sdir.join("memory.age")).map(|m| m.len()).unwrap_or(0) + (64 << 20),
            )?;
            let file = format!("{dir}/memory.save");
            op.p.save_file = Some(file.clone());
            op.save()?;
            decrypt_memory(lv, &r, &file)?;
            // Whole now: should this process die, recovery restores it (the disks are the snapshot's already).
            op.p.saved = Some(r.state == "paused");
            op.save()?;
            report(Progress::Step { step: "restore" });
            lv.restore(&file, r.state == "paused")?;
            op.p.saved = None;
            drop_memory_mount(&mut op.p);
            op.save()?;
            r.state.clone()
        } else if start {
            report(Progress::Step { step: "start" });
            vm::start(lv, vm_name, ask)?;
            "running".into()
        } else {
            "shut off".into()
        };
        Ok(Reverted { vm: vm_name.into(), snapshot: snap.into(), state: now_state, forced_off })
    })();
    match res {
        Ok(done) => {
            op.finish();
            Ok(done)
        }
        Err(e) => Err(op.fail(e)),
    }
}

/// The name a revert stages a copy of `dst` under, beside it.
fn staged_name(dst: &Path) -> PathBuf {
    dst.with_file_name(format!(".{}.phyllome-revert", file_name(dst)))
}

/// Refuses a revert whose staged copies would not fit beside the files they
/// replace (each file system: the snapshot's disks, NVRAM and TPM state, and a spare).
fn staging_space(r: &SnapshotRecord, sdir: &Path, tdir: &Path) -> Result<()> {
    let allocated = |p: &Path| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
    let mut wants: Vec<(PathBuf, u64)> = vec![];
    for d in &r.disks {
        wants.push((Path::new(&d.path).parent().unwrap_or(Path::new("/")).into(), allocated(&sdir.join(&d.file))));
    }
    if let Some(n) = r.nvram.as_ref().filter(|_| r.nvram_present) {
        wants.push((Path::new(n).parent().unwrap_or(Path::new("/")).into(), allocated(&sdir.join("nvram"))));
    }
    if r.tpm && r.tpm_present {
        wants.push((tdir.parent().and_then(Path::parent).unwrap_or(Path::new("/")).into(), du(&sdir.join("tpm"))));
    }
    // Summed per file system (by device), checked where the first of them is.
    let mut per_fs: Vec<(u64, PathBuf, u64)> = vec![];
    for (dir, bytes) in wants {
        let dev = std::fs::metadata(&dir).map(|m| m.dev()).unwrap_or(0);
        match per_fs.iter_mut().find(|(d, _, _)| *d == dev) {
            Some((_, _, sum)) => *sum += bytes,
            None => per_fs.push((dev, dir, bytes)),
        }
    }
    for (_, dir, need) in per_fs {
        check_space(&dir, need, "to stage the revert")?;
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
