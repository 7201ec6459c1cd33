//! A VM's snapshots as stored: `paths::SNAPSHOT_DIR/VM-UUID/NAME/` with its record
//! (`snapshot.json`), and which one the VM was last made from or reverted to. `list`
//! counts them and `delete` removes them with the VM; taking and reverting them is the
//! snapshot folder's work (`snapshot/`).

use crate::disk::copy::du;
use crate::disk::{io, DiskError};
use crate::paths::SNAPSHOT_DIR;
use phyllome_libvirt::Libvirt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, DiskError>;

/// One disk copied into a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCopy {
    /// `vda`...
    pub target: String,
    /// The image it is a copy of.
    pub path: String,
    /// Its file name in the snapshot folder.
    pub file: String,
}

/// What `snapshot.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRecord {
    pub name: String,
    pub vm_uuid: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub description: Option<String>,
    /// `running`, `paused` or `shut off`: the VM when it was taken.
    pub state: String,
    pub memory: bool,
    /// How consistent the disks are, in words.
    pub consistency: String,
    /// The snapshot the VM was at (made or reverted to) when this one was taken.
    pub parent: Option<String>,
    pub disks: Vec<DiskCopy>,
    /// The NVRAM file, when the VM has one (`nvram_present`: whether it existed yet).
    pub nvram: Option<String>,
    pub nvram_present: bool,
    /// Whether the VM has an emulated TPM, and whether its state existed yet.
    pub tpm: bool,
    pub tpm_present: bool,
    /// The libvirt secret holding the memory state's age identity.
    pub memory_secret: Option<String>,
    pub phyllome: String,
}

/// One row of `snapshot list` / `GET /api/v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub description: Option<String>,
    /// `running`, `paused` or `shut off`: the VM when it was taken.
    pub state: String,
    /// With the RAM: a revert resumes where the VM was.
    pub memory: bool,
    /// `shut off`, `memory`, `guest agent froze N filesystems` or `crash-consistent`.
    pub consistency: String,
    /// Bytes the snapshot takes on the host's disk.
    pub size_bytes: u64,
    pub parent: Option<String>,
    /// The snapshot the VM was last made from or reverted to.
    pub current: bool,
}

pub fn vm_dir(uuid: &str) -> PathBuf {
    Path::new(SNAPSHOT_DIR).join(uuid)
}

pub fn current_of(uuid: &str) -> Option<String> {
    std::fs::read_to_string(vm_dir(uuid).join(".current")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

pub fn set_current(uuid: &str, name: Option<&str>) -> Result<()> {
    let path = vm_dir(uuid).join(".current");
    match name {
        Some(n) => {
            let tmp = vm_dir(uuid).join(".current.tmp");
            std::fs::write(&tmp, n).map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
            _ => Ok(()),
        },
    }
}

pub fn read_record(uuid: &str, name: &str) -> Option<SnapshotRecord> {
    let text = std::fs::read(vm_dir(uuid).join(name).join("snapshot.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn records(uuid: &str) -> Vec<SnapshotRecord> {
    let Ok(dir) = std::fs::read_dir(vm_dir(uuid)) else { return vec![] };
    let mut out: Vec<SnapshotRecord> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| read_record(uuid, &n))
        .collect();
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    out
}

pub fn info_of(r: &SnapshotRecord, current: Option<&str>) -> SnapshotInfo {
    SnapshotInfo {
        size_bytes: du(&vm_dir(&r.vm_uuid).join(&r.name)),
        current: current == Some(r.name.as_str()),
        name: r.name.clone(),
        created: r.created,
        description: r.description.clone(),
        state: r.state.clone(),
        memory: r.memory,
        consistency: r.consistency.clone(),
        parent: r.parent.clone(),
    }
}

/// How many snapshots the VM with this UUID has (`list` and `info` show it).
pub fn count(uuid: &str) -> usize {
    records(uuid).len()
}

/// Deletes every snapshot of the VM with this UUID (when the VM is deleted); how many.
pub fn delete_all(lv: &Libvirt, uuid: &str) -> Result<usize> {
    let all = records(uuid);
    for r in &all {
        let dir = vm_dir(uuid).join(&r.name);
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        if let Some(u) = &r.memory_secret {
            lv.undefine_secret_uuid(u)?;
        }
    }
    let _ = std::fs::remove_file(vm_dir(uuid).join(".current"));
    let _ = std::fs::remove_dir(vm_dir(uuid));
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_refuse_unknown_fields() {
        let r = SnapshotRecord {
            name: "a".into(),
            vm_uuid: "u".into(),
            created: 1,
            description: None,
            state: "shut off".into(),
            memory: false,
            consistency: "shut off".into(),
            parent: None,
            disks: vec![],
            nvram: None,
            nvram_present: false,
            tpm: false,
            tpm_present: false,
            memory_secret: None,
            phyllome: "0".into(),
        };
        let mut v = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<SnapshotRecord>(v.clone()).unwrap(), r);
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<SnapshotRecord>(v).is_err());
    }
}
