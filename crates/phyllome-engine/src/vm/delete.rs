//! Delete: a stopped VM's domain, NVRAM, TPM state, snapshots and (unless kept) its disk
//! volumes and their keys, never a disk another VM uses; and the recovery every command
//! runs first, which finishes a move that got to its destination by this delete.

use super::changed::{changed_disks, Image};
use super::error::{Result, VmError};
use super::lookup::state;
use super::snapshots;
use crate::domxml;
use crate::host_files::{FileId, HostFiles};
use crate::op::record;
use crate::op::undo;
use crate::paths::boot_dir;
use phyllome_libvirt::{Libvirt, State};
use serde::Serialize;
use std::path::Path;

/// Cleans up after the operations of processes that are gone (`op::recover`), finishing
/// a move that got to its destination with [`delete`]'s path; returns the VMs concerned.
pub fn recover(lv: &Libvirt) -> Vec<String> {
    crate::op::recover::recover(lv, &remove_moved)
}

/// The copy here of a VM that moved to another host, removed (`op::moves`).
pub(crate) fn remove_moved(lv: &Libvirt, name: &str) -> std::result::Result<crate::op::moves::RemovedHere, String> {
    let d = delete_now(lv, name, false).map_err(|e| e.to_string())?;
    Ok(crate::op::moves::RemovedHere { volumes: d.volumes, secrets: d.secrets, snapshots: d.snapshots })
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    pub name: String,
    pub volumes: Vec<String>,
    pub secrets: usize,
    pub kept_disk: bool,
    /// Its snapshots, removed with it.
    pub snapshots: usize,
    /// Images of it that stay, and why (an overlay made outside Phyllome, outside its pools).
    pub left: Vec<String>,
}

/// Deletes a stopped VM: domain, NVRAM and TPM state, and (unless `keep_disk`)
/// its disk volumes and their secrets. Installer media are never touched.
pub fn delete(lv: &Libvirt, name: &str, keep_disk: bool) -> Result<Deleted> {
    recover(lv);
    delete_now(lv, name, keep_disk)
}

/// [`delete`] without the recovery first (for the recovery itself, which finishes a move
/// by removing the source's copy).
pub(crate) fn delete_now(lv: &Libvirt, name: &str, keep_disk: bool) -> Result<Deleted> {
    let _held = crate::op::lock::take(lv, name, record::Operation::Delete)?;
    if state(lv, name)? != State::Shutoff {
        return Err(VmError::Running(name.into()));
    }
    let s = domxml::parse(&lv.inactive_xml(name)?).map_err(|e| VmError::Xml(name.into(), e))?;
    // Its volumes: the pool volumes its disks name, and those of a chain made outside Phyllome.
    let changed = changed_disks(lv, &s);
    let mut volumes: Vec<(String, String, Option<String>)> = s
        .disks
        .iter()
        .filter(|d| d.device == "disk")
        .filter_map(|d| Some((d.pool.clone()?, d.volume.clone()?, d.luks_secret.clone())))
        .collect();
    let mut left = vec![];
    for c in &changed {
        for image in [&c.top, &c.base] {
            match image {
                Image::Volume { pool, volume, secret } => volumes.push((pool.clone(), volume.clone(), secret.clone())),
                Image::Outside(path) => left.push(format!(
                    "{path}: an image of disk {} made outside Phyllome, outside its pool (not removed)",
                    c.target
                )),
                Image::Unknown => left.push(format!(
                    "the image under disk {} (not recorded, and its overlay cannot be read here)",
                    c.target
                )),
            }
        }
    }
    if !keep_disk {
        // A disk another VM also uses is not this VM's to delete: refuse before anything is removed.
        for (pool, volume, _) in &volumes {
            let path = lv.volume_info(pool, volume)?.map(|v| v.path);
            if let Some(other) = domxml::user_of_volume(lv, &s.uuid, pool, volume, path.as_deref())? {
                return Err(VmError::DiskShared { disk: format!("{pool}/{volume}"), other });
            }
        }
    }
    lv.undefine(name)?;
    let files = HostFiles::of(lv);
    // Snapshots are kept on this machine, and made of VMs of this machine's libvirt only.
    let snapshots = if files.is_local() {
        snapshots::delete_all(lv, &s.uuid).map_err(|e| VmError::Snapshots(e.to_string()))?
    } else {
        0
    };
    // Phyllome's copies of the kernel and initrd on the VM's host (never the user's files: only inside BOOT_DIR/NAME).
    let ours = boot_dir(name);
    let copies: Vec<FileId> = s
        .boot_files
        .iter()
        .filter(|p| Path::new(p).parent() == Some(Path::new(&ours)))
        .filter_map(|p| files.id_of(p))
        .collect();
    undo::remove_boot_files(&files, &copies);
    let mut out = Deleted { name: name.into(), volumes: vec![], secrets: 0, kept_disk: keep_disk, snapshots, left };
    if keep_disk {
        return Ok(out);
    }
    for (pool, volume, secret) in &volumes {
        let path = lv.volume_info(pool, volume)?.map(|v| v.path);
        if lv.delete_volume(pool, volume)? {
            out.volumes.push(format!("{pool}/{volume}"));
        }
        // Its key: by the secret the definition names, else by the volume's path (its usage id).
        for u in secret.iter().chain(path.iter()) {
            let gone = if is_uuid(u) { lv.undefine_secret_uuid(u)? } else { lv.undefine_volume_secret(u)? };
            if gone {
                out.secrets += 1;
                break;
            }
        }
    }
    Ok(out)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}
