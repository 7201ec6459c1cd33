//! Phyllome's disk volumes on their own: what `delete --keep-disk` leaves,
//! listed with the VMs that use them, and deleted with their key when no VM does.

use crate::domxml;
use crate::vm::{gib_tenths, Result, VmError};
use phyllome_libvirt::Libvirt;
use serde::Serialize;

/// One volume of a pool.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeRow {
    pub pool: String,
    pub name: String,
    pub path: String,
    pub capacity_gib: f64,
    pub allocation_gib: f64,
    /// Whether a libvirt secret holds its LUKS key.
    pub encrypted: bool,
    /// The VMs whose definition uses it.
    pub used_by: Vec<String>,
}

/// What `volume delete` removed.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeDeleted {
    pub pool: String,
    pub name: String,
    /// Whether its key's secret was removed too.
    pub secret: bool,
}

/// Every domain's disks: (VM name, pool, volume, file).
fn users(lv: &Libvirt) -> Result<Vec<(String, domxml::DiskSummary)>> {
    let mut out = Vec::new();
    for name in lv.domain_names()? {
        let Ok(xml) = lv.inactive_xml(&name) else { continue };
        let Ok(s) = domxml::parse(&xml) else { continue };
        out.extend(s.disks.into_iter().map(|d| (s.name.clone(), d)));
    }
    Ok(out)
}

fn used_by(all: &[(String, domxml::DiskSummary)], pool: &str, name: &str, path: &str) -> Vec<String> {
    let mut v: Vec<String> = all
        .iter()
        .filter(|(_, d)| {
            (d.pool.as_deref() == Some(pool) && d.volume.as_deref() == Some(name)) || d.file.as_deref() == Some(path)
        })
        .map(|(vm, _)| vm.clone())
        .collect();
    v.dedup();
    v
}

/// The volumes of `pool`.
pub fn list(lv: &Libvirt, pool: &str) -> Result<Vec<VolumeRow>> {
    let all = users(lv)?;
    let mut rows = Vec::new();
    for (name, info) in lv.volumes(pool)? {
        rows.push(VolumeRow {
            encrypted: lv.volume_secret(&info.path)?.is_some(),
            used_by: used_by(&all, pool, &name, &info.path),
            capacity_gib: gib_tenths(info.capacity),
            allocation_gib: gib_tenths(info.allocation),
            pool: pool.to_string(),
            name,
            path: info.path,
        });
    }
    Ok(rows)
}

/// Deletes a volume no VM uses, and the secret holding its key.
pub fn delete(lv: &Libvirt, pool: &str, name: &str) -> Result<VolumeDeleted> {
    let Some(info) = lv.volume_info(pool, name)? else {
        return Err(VmError::NoVolume(format!("{pool}/{name}")));
    };
    if let Some(other) = used_by(&users(lv)?, pool, name, &info.path).into_iter().next() {
        return Err(VmError::VolumeInUse { disk: format!("{pool}/{name}"), vm: other });
    }
    lv.delete_volume(pool, name)?;
    // The secret whose usage is this volume's path: its key, useless without it.
    let secret = lv.undefine_volume_secret(&info.path)?;
    Ok(VolumeDeleted { pool: pool.to_string(), name: name.to_string(), secret })
}
