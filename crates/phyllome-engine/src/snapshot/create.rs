//! Taking a snapshot: of a shut-off VM its files copied as they are; of a running one
//! a point-in-time copy QEMU writes (libvirt's push backup), or with `--memory` its RAM
//! saved, the disks copied while it is stopped, then the RAM encrypted.

use super::error::{io, Result, SnapshotError};
use super::memory::{encrypt_memory, memory_mount};
use super::session::{check_description, check_name, check_space, here, writable_disks, write_private, SnapshotOp};
use crate::disk::copy::{dir_files as copy_dir_files, du, sparse as copy_sparse};
use crate::domxml::{self, shape};
use crate::host_facts::mem_available;
use crate::host_files::FileId;
use crate::op::progress::{note, Progress, Report};
use crate::op::record::Operation;
use crate::op::undo::drop_memory_mount;
use crate::paths::{tpm_dir, SNAPSHOT_DIR};
use crate::vm::snapshots::{current_of, info_of, records, set_current, vm_dir, DiskCopy, SnapshotInfo, SnapshotRecord};
use crate::vm::{self, VmError};
use phyllome_libvirt::{Libvirt, State};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// A snapshot to take.
#[derive(Debug, Clone, Default)]
pub struct SnapshotRequest {
    pub name: Option<String>,
    pub memory: bool,
    pub description: Option<String>,
}

/// Takes a snapshot of the VM `vm_name`.
pub fn create(lv: &Libvirt, vm_name: &str, req: &SnapshotRequest, report: Report<'_>) -> Result<SnapshotInfo> {
    here(lv)?;
    vm::recover(lv);
    report(Progress::Step { step: "check" });
    let xml = lv.inactive_xml(vm_name).map_err(|e| {
        if e.is_no_domain() {
            SnapshotError::Vm(VmError::NoSuchVm(vm_name.into()))
        } else {
            e.into()
        }
    })?;
    let s = domxml::parse(&xml).map_err(|e| VmError::Xml(vm_name.into(), e))?;
    report(Progress::Step { step: "claim" });
    // Held from here, so what is checked below stays true until the snapshot is made.
    let mut op = SnapshotOp::begin(lv, vm_name, &s.uuid, Operation::SnapshotCreate)?;
    let name = match &req.name {
        Some(n) => n.clone(),
        None => default_name(&s.uuid),
    };
    check_name(&name)?;
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    if vm_dir(&s.uuid).join(&name).exists() {
        return Err(SnapshotError::Exists { vm: vm_name.into(), name });
    }
    let state = lv.state(vm_name)?;
    let live = if state == State::Shutoff { xml.clone() } else { lv.xml(vm_name)? };
    let sh = shape(&live).map_err(|e| VmError::Xml(vm_name.into(), e))?;
    if !sh.hostdevs.is_empty() {
        return Err(SnapshotError::Refused(format!(
            "{vm_name} has a passed-through device ({}): its own state (firmware, queues, what it holds) is in no snapshot, \
             so a revert would hand the guest a device in another state. Detach it first (phyllome detach)",
            sh.hostdevs.join(", ")
        )));
    }
    vm::refuse_changed(lv, &s, "snapshot it: a snapshot would copy only the image over its encrypted volume")?;
    let running = matches!(state, State::Running | State::Paused);
    let prompt = s.encryption.as_deref() == Some("prompt");
    if req.memory {
        if !running {
            return Err(SnapshotError::Refused(format!("{vm_name} is shut off: --memory needs a running VM")));
        }
        if !sh.memory_blockers.is_empty() {
            return Err(SnapshotError::CannotHere(format!(
                "{vm_name}'s memory cannot be saved because of {}: take a snapshot without --memory",
                sh.memory_blockers.join(" and ")
            )));
        }
        if prompt {
            return Err(SnapshotError::Refused(format!(
                "{vm_name}'s disk key is a passphrase typed at each start; its memory holds that key, and a memory \
                 snapshot would need a key kept on this host. Take it without --memory, or with the VM stopped"
            )));
        }
    } else if running {
        let (host, _) = crate::host_facts::gather(lv, false).map_err(VmError::from)?;
        host.check(phyllome_model::Feature::LiveDiskCopy)?;
        if prompt {
            return Err(SnapshotError::Refused(format!(
                "{vm_name}'s disk key is a passphrase that only lives while QEMU starts: a copy of its running disk \
                 could not be encrypted with it. Stop it first (a stopped VM's encrypted disk is copied as it is)"
            )));
        }
    }
    let disks = writable_disks(lv, &s)?;
    // The space it needs: every disk's allocation (a running VM's copy holds no more), NVRAM, TPM, memory.
    let mut need: u64 = disks.iter().map(|(_, p, _)| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)).sum();
    let nvram = s.nvram.as_ref().map(|n| n.path.clone());
    need += nvram.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()).unwrap_or(0);
    let tpm = tpm_dir(&s.uuid);
    need += du(&tpm);
    let guest_bytes = s.memory_mib.max(1) * (1 << 20);
    if req.memory {
        need += guest_bytes;
        if mem_available() < guest_bytes + (256 << 20) {
            return Err(SnapshotError::Refused(format!(
                "the host has {} MiB of memory available; saving {vm_name}'s {} MiB of RAM through a tmpfs needs {} MiB",
                mem_available() >> 20,
                s.memory_mib,
                (guest_bytes + (256 << 20)) >> 20
            )));
        }
    }
    let vdir = vm_dir(&s.uuid);
    std::fs::create_dir_all(&vdir).map_err(|e| io(&vdir, e))?;
    let _ = std::fs::set_permissions(SNAPSHOT_DIR, std::fs::Permissions::from_mode(0o711));
    std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o711)).map_err(|e| io(&vdir, e))?;
    check_space(&vdir, need, "for the snapshot")?;

    let r = (|| -> Result<SnapshotRecord> {
        let part = vdir.join(format!(".{name}.part"));
        let _ = std::fs::remove_dir_all(&part);
        std::fs::create_dir(&part).map_err(|e| io(&part, e))?;
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o711)).map_err(|e| io(&part, e))?;
        op.p.part = Some(FileId::of(&part.to_string_lossy()).map_err(|e| io(&part, e))?);
        op.save()?;
        let copies: Vec<DiskCopy> = disks
            .iter()
            .map(|(t, p, _)| DiskCopy { target: t.clone(), path: p.clone(), file: format!("disk-{t}.qcow2") })
            .collect();
        let mut record = SnapshotRecord {
            name: name.clone(),
            vm_uuid: s.uuid.clone(),
            created: crate::op::record::now(),
            description: req.description.clone(),
            state: crate::domxml::state_name(state).into(),
            memory: req.memory,
            consistency: String::new(),
            parent: current_of(&s.uuid),
            disks: copies.clone(),
            nvram: nvram.clone(),
            nvram_present: nvram.as_ref().is_some_and(|p| Path::new(p).exists()),
            tpm: sh.tpm_emulator,
            tpm_present: tpm.is_dir(),
            memory_secret: None,
            phyllome: crate::VERSION.into(),
        };
        // NVRAM and TPM, while the VM is off or paused.
        let copy_small = |record: &SnapshotRecord| -> Result<()> {
            if let Some(p) = &record.nvram {
                if record.nvram_present {
                    let to = part.join("nvram");
                    copy_sparse(Path::new(p), &to, &crate::op::progress::quiet, &AtomicBool::new(false))?;
                }
            }
            if record.tpm && record.tpm_present {
                copy_dir_files(&tpm, &part.join("tpm"))?;
            }
            Ok(())
        };
        if req.memory {
            report(Progress::Step { step: "save" });
            let dir = memory_mount(&mut op.p, guest_bytes + (64 << 20))?;
            let file = format!("{dir}/memory.save");
            op.p.save_file = Some(file.clone());
            // Recorded before libvirt is asked: it finishes a save whose caller died, and then only
            // the file holds the guest.
            op.p.saved = Some(state == State::Paused);
            op.save()?;
            op.step("save")?;
            lv.save(vm_name, &file)?;
            report(Progress::Step { step: "disk" });
            for c in &copies {
                copy_sparse(Path::new(&c.path), &part.join(&c.file), report, op.op.flag())?;
            }
            report(Progress::Step { step: "nvram-tpm" });
            copy_small(&record)?;
            op.step("memory")?;
            // The VM runs again before its saved state is encrypted: it is stopped only for the copies.
            report(Progress::Step { step: "restore" });
            lv.restore(&file, state == State::Paused)?;
            op.p.saved = None;
            op.save()?;
            report(Progress::Step { step: "memory" });
            let secret = encrypt_memory(lv, &mut op, &file, &part, vm_name, &name, report)?;
            record.memory_secret = Some(secret);
            drop_memory_mount(&mut op.p);
            op.save()?;
            record.consistency = "memory".into();
        } else if running {
            let frozen = if state == State::Running {
                report(Progress::Step { step: "freeze" });
                match lv.fs_freeze(vm_name) {
                    Ok(n) => {
                        op.p.frozen = true;
                        op.save()?;
                        Some(n)
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            report(Progress::Step { step: "disk" });
            let targets: Vec<(String, String, Option<String>)> = disks
                .iter()
                .zip(&copies)
                .map(|((t, p, secret), c)| {
                    let uuid = secret.as_ref().map(|_| lv.volume_secret(p)).transpose()?.flatten();
                    Ok((t.clone(), part.join(&c.file).to_string_lossy().into_owned(), uuid))
                })
                .collect::<Result<_>>()?;
            let skip: Vec<String> = s.disks.iter().filter(|d| d.device != "disk").map(|d| d.target.clone()).collect();
            op.p.backup = true;
            op.save()?;
            lv.backup_begin(vm_name, &crate::disk::backup::backup_xml(&targets, &skip))?;
            // The disks' point in time is fixed; now NVRAM and TPM, paused only for that.
            if state == State::Running {
                report(Progress::Step { step: "pause" });
                lv.suspend(vm_name)?;
                op.p.paused = true;
                op.save()?;
            }
            report(Progress::Step { step: "nvram-tpm" });
            let small = copy_small(&record);
            if op.p.paused {
                lv.resume(vm_name)?;
                op.p.paused = false;
            }
            if op.p.frozen {
                let _ = lv.fs_thaw(vm_name);
                op.p.frozen = false;
            }
            op.save()?;
            small?;
            record.consistency = match frozen {
                Some(n) => format!("guest agent froze {n} filesystems"),
                None => "crash-consistent (no guest agent answered)".into(),
            };
            if frozen.is_none() {
                note(report, "no guest agent answered: the disks are crash-consistent, as after a power cut");
            }
            report(Progress::Step { step: "copy" });
            crate::disk::backup::wait(lv, vm_name, op.op.flag(), report)?;
            op.p.backup = false;
            op.save()?;
        } else {
            report(Progress::Step { step: "disk" });
            for c in &copies {
                op.step("disk")?;
                copy_sparse(Path::new(&c.path), &part.join(&c.file), report, op.op.flag())?;
            }
            report(Progress::Step { step: "nvram-tpm" });
            copy_small(&record)?;
            record.consistency = "shut off".into();
        }
        op.step("finish")?;
        report(Progress::Step { step: "finish" });
        let json = part.join("snapshot.json");
        write_private(&json, &serde_json::to_vec_pretty(&record).expect("serializable"))?;
        let dest = vdir.join(&name);
        std::fs::rename(&part, &dest).map_err(|e| io(&dest, e))?;
        op.p.part = None;
        op.p.memory_secret = None;
        op.save()?;
        set_current(&s.uuid, Some(&name))?;
        Ok(record)
    })();
    match r {
        Ok(record) => {
            op.finish();
            Ok(info_of(&record, Some(&record.name)))
        }
        Err(e) => Err(op.fail(e)),
    }
}

fn default_name(uuid: &str) -> String {
    let taken: Vec<String> = records(uuid).into_iter().map(|r| r.name).collect();
    (1..)
        .map(|i| format!("snap{i}"))
        .find(|n| !taken.contains(n) && !vm_dir(uuid).join(n).exists())
        .expect("a free name")
}
