//! What `list` and `info` show: every VM's row in few round trips, one VM's details, and
//! why its devices are what they are.

use super::delete::recover;
use super::error::Result;
use super::lookup::{state, summary};
use super::snapshots;
use crate::domxml::{self, DomainSummary};
use crate::host_facts;
use phyllome_libvirt::{Libvirt, State};
use phyllome_model::build::{self, NetworkChoice, Request};
use serde::Serialize;
use std::path::Path;

/// How many snapshots the VM has: they are kept on this machine, for its own libvirt's VMs only.
fn snapshot_count(lv: &Libvirt, uuid: &str) -> usize {
    if lv.is_local() {
        snapshots::count(uuid)
    } else {
        0
    }
}

/// Bytes as GiB, to a tenth (the sizes `list`, `info` and `volume list` show).
pub fn gib_tenths(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 10.0).round() / 10.0
}

/// One row of `phyllome list`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmRow {
    pub name: String,
    pub os: Option<String>,
    /// `running`, `paused`, `shut off` or `other`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub encrypted: bool,
    pub disk_gib: Option<f64>,
    /// Why a paused VM is paused, when it was not a user's pause (`I/O error`...); for a VM
    /// being moved to another host, `migrating`, and `unfinished migration` when that move was
    /// cut short and is not settled yet (it may run on that host: `phyllome check` says where).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub state_reason: Option<&'static str>,
    /// How many snapshots it has (`phyllome snapshot list`).
    pub snapshots: usize,
    /// libvirt starts it when the host boots (`phyllome autostart`).
    pub autostart: bool,
    /// Its disks were changed outside Phyllome (an external snapshot's overlay), in words:
    /// `encrypted` is then false, as what the guest writes now is not.
    pub changed_outside: Option<String>,
}

pub fn row(lv: &Libvirt, name: &str) -> Result<VmRow> {
    row_of(lv, &summary(lv, name)?)
}

/// The row of a domain whose XML was already read.
fn row_of(lv: &Libvirt, s: &DomainSummary) -> Result<VmRow> {
    let st = state(lv, &s.name)?;
    // A volume deleted meanwhile (by another command) leaves the size unknown, not the row unreadable.
    let disk_gib = s.main_disk().and_then(|d| {
        lv.volume_info(d.pool.as_deref().unwrap_or_default(), d.volume.as_deref().unwrap_or_default())
            .ok()
            .flatten()
            .map(|v| gib_tenths(v.capacity))
    });
    let moving = crate::op::moves::moves_from(lv);
    let state_reason = match moving.get(&s.uuid) {
        Some(m) => Some(m.reason()),
        None if st == State::Paused => lv.pause_reason(&s.name).ok().flatten(),
        None => None,
    };
    Ok(VmRow {
        state_reason,
        name: s.name.clone(),
        os: s.os.clone(),
        state: domxml::state_name(st),
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        encrypted: s.encrypted(),
        disk_gib,
        snapshots: snapshot_count(lv, &s.uuid),
        autostart: lv.autostart(&s.name).unwrap_or(false),
        changed_outside: s.changed_outside_note(),
    })
}

/// One disk of `phyllome info` / `GET /api/v1/vms/{name}`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskDetail {
    pub target: String,
    pub device: String,
    pub pool: Option<String>,
    pub volume: Option<String>,
    pub file: Option<String>,
    pub encrypted: bool,
}

/// Everything `phyllome info` and the API's VM page show: its list row and more.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Details {
    #[serde(flatten)]
    pub row: VmRow,
    pub uuid: String,
    /// `secret`, `prompt` or `none` for VMs Phyllome made.
    pub encryption: Option<String>,
    pub disks: Vec<DiskDetail>,
    /// `vnc://127.0.0.1:PORT` while running.
    pub display: Option<String>,
    /// The Phyllome version that made the VM.
    pub created_by: Option<String>,
    pub nics: Vec<crate::domxml::NicSummary>,
}

pub fn details(lv: &Libvirt, name: &str) -> Result<Details> {
    let s = summary(lv, name)?;
    Ok(Details {
        row: row_of(lv, &s)?,
        uuid: s.uuid,
        encryption: s.encryption,
        disks: s
            .disks
            .into_iter()
            .map(|d| DiskDetail {
                encrypted: d.luks_secret.is_some(),
                target: d.target,
                device: d.device,
                pool: d.pool,
                volume: d.volume,
                file: d.file,
            })
            .collect(),
        display: s.vnc.map(|(h, p)| format!("vnc://{h}:{p}")),
        created_by: s.created_by,
        nics: s.nics,
    })
}

/// Why a VM's devices are what they are: what `phyllome xml --explain` says
/// for its OS, vCPUs and memory on this host. Empty for a VM Phyllome did not make.
pub fn explain(lv: &Libvirt, name: &str) -> Result<Vec<build::Choice>> {
    let s = summary(lv, name)?;
    let Some(os) = s.os.clone() else { return Ok(Vec::new()) };
    if phyllome_model::catalog::profile(&os).is_none() {
        return Ok(Vec::new());
    }
    let req = Request {
        name: name.to_string(),
        os,
        cpus: Some(s.vcpus),
        memory: Some(format!("{}MiB", s.memory_mib)),
        network: NetworkChoice::None,
        version: crate::VERSION.to_string(),
        ..Default::default()
    };
    let (host, _) = host_facts::gather(lv, true)?;
    Ok(build::build(&req, &host)?.choices)
}

/// Every VM's row, in few round trips (see `Libvirt::list_all`): a VM's
/// XML gives its OS, vCPUs, memory and encryption, and one more call its
/// disk's size.
pub fn list(lv: &Libvirt) -> Result<Vec<VmRow>> {
    recover(lv);
    let listed = lv.list_all()?;
    let parsed: Vec<_> = listed.iter().filter_map(|d| domxml::parse(&d.xml).ok().map(|s| (d, s))).collect();
    // A disk's size: on this host, from its image's header (32 bytes read); else libvirt reads it.
    let local = lv.is_local();
    let mut sizes: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut asks = Vec::new();
    let mut pools: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for (d, s) in &parsed {
        let Some(m) = s.main_disk() else { continue };
        let file = match (&m.pool, &m.volume) {
            (Some(pool), Some(v)) => pools
                .entry(pool.clone())
                .or_insert_with(|| lv.pool_path(pool).ok().flatten())
                .as_ref()
                .map(|dir| format!("{dir}/{v}")),
            _ => None,
        };
        match file.filter(|_| local).and_then(|f| phyllome_disk::virtual_size(Path::new(&f)).ok()) {
            Some(size) => {
                sizes.insert(d.name.as_str(), size);
            }
            None => asks.push((*d, m.target.as_str())),
        }
    }
    for ((d, _), c) in asks.iter().zip(phyllome_libvirt::Listed::capacities(&asks)) {
        if let Some(c) = c {
            sizes.insert(d.name.as_str(), c);
        }
    }
    let mut rows = Vec::new();
    let moving = crate::op::moves::moves_from(lv);
    for (d, s) in &parsed {
        let disk_gib = sizes.get(d.name.as_str()).map(|&c| gib_tenths(c));
        let state_reason = match moving.get(&s.uuid) {
            Some(m) => Some(m.reason()),
            None if d.state == State::Paused => lv.pause_reason(&d.name).ok().flatten(),
            None => None,
        };
        rows.push(VmRow {
            name: d.name.clone(),
            os: s.os.clone(),
            state: domxml::state_name(d.state),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            encrypted: s.encrypted(),
            disk_gib,
            state_reason,
            snapshots: snapshot_count(lv, &s.uuid),
            autostart: d.autostart,
            changed_outside: s.changed_outside_note(),
        });
    }
    Ok(rows)
}
