//! Listing a VM's snapshots and deleting one (its children get its parent).

use super::error::{io, Result, SnapshotError};
use super::session::{check_name, here, write_private, SnapshotOp};
use crate::op::record::Operation;
use crate::vm;
use crate::vm::snapshots::{
    current_of, info_of, read_record, records, set_current, vm_dir, SnapshotInfo, SnapshotRecord,
};
use phyllome_libvirt::Libvirt;

pub fn list(lv: &Libvirt, vm_name: &str) -> Result<Vec<SnapshotInfo>> {
    here(lv)?;
    vm::recover(lv);
    let uuid = vm::summary(lv, vm_name)?.uuid;
    let current = current_of(&uuid);
    Ok(records(&uuid).iter().map(|r| info_of(r, current.as_deref())).collect())
}

/// Deletes one snapshot: its folder and its memory key. Its children get its parent.
pub fn delete(lv: &Libvirt, vm_name: &str, snap: &str) -> Result<()> {
    here(lv)?;
    vm::recover(lv);
    check_name(snap).map_err(|_| SnapshotError::NoSnapshot {
        vm: vm_name.into(),
        name: crate::text::printable(snap).into_owned(),
    })?;
    let uuid = vm::summary(lv, vm_name)?.uuid;
    let r =
        read_record(&uuid, snap).ok_or_else(|| SnapshotError::NoSnapshot { vm: vm_name.into(), name: snap.into() })?;
    let op = SnapshotOp::begin(lv, vm_name, &uuid, Operation::SnapshotDelete)?;
    let res = remove_one(lv, &r);
    op.finish();
    res
}

fn remove_one(lv: &Libvirt, r: &SnapshotRecord) -> Result<()> {
    for mut child in records(&r.vm_uuid).into_iter().filter(|c| c.parent.as_deref() == Some(&r.name)) {
        child.parent = r.parent.clone();
        let path = vm_dir(&r.vm_uuid).join(&child.name).join("snapshot.json");
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &serde_json::to_vec_pretty(&child).expect("serializable"))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    }
    if current_of(&r.vm_uuid).as_deref() == Some(&r.name) {
        set_current(&r.vm_uuid, r.parent.as_deref())?;
    }
    let dir = vm_dir(&r.vm_uuid).join(&r.name);
    std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    if let Some(u) = &r.memory_secret {
        lv.undefine_secret_uuid(u)?;
    }
    Ok(())
}
