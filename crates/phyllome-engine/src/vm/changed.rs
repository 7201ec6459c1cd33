//! VMs changed outside Phyllome: a disk chain Phyllome did not make (an external
//! snapshot's overlay), resolved to its images, and the refusal that says how to undo it.

use super::error::{Result, VmError};
use crate::domxml::DomainSummary;
use phyllome_libvirt::{Libvirt, State};
use std::path::Path;

/// An image of a disk changed outside Phyllome, as far as this host can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// A volume of a pool (with the secret of its key, when encrypted).
    Volume { pool: String, volume: String, secret: Option<String> },
    /// A file outside the pools Phyllome knows of.
    Outside(String),
    /// Not recorded, and not readable from here.
    Unknown,
}

/// A disk of a Phyllome VM changed outside Phyllome (an external snapshot's overlay), resolved.
#[derive(Debug, Clone)]
pub struct Changed {
    pub target: String,
    /// The image the VM writes to now.
    pub top: Image,
    /// The image under it: Phyllome's volume.
    pub base: Image,
    /// libvirt recorded the chain (`<backingStore>`): the VM can run with it.
    pub recorded: bool,
}

/// The disks of `s` changed outside Phyllome, their images resolved: from the
/// chain libvirt recorded, else (on this host) from the overlay's qcow2 header.
pub fn changed_disks(lv: &Libvirt, s: &DomainSummary) -> Vec<Changed> {
    let pool_dir = |pool: &str| lv.pool_path(pool).ok().flatten();
    // A file in a pool's folder is that pool's volume.
    let as_image = |file: &str, pools: &[&str], secret: Option<String>| -> Image {
        let parent = Path::new(file).parent().map(|p| p.to_string_lossy().into_owned());
        for pool in pools {
            if parent.is_some() && pool_dir(pool) == parent {
                let volume = Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                return Image::Volume { pool: pool.to_string(), volume, secret };
            }
        }
        Image::Outside(file.to_string())
    };
    s.changed_outside()
        .into_iter()
        .map(|d| {
            let base_pool = d.backing.first().and_then(|b| b.pool.clone());
            let mut pools = vec![crate::POOL];
            pools.extend(base_pool.as_deref());
            let top = match (&d.pool, &d.volume, &d.file) {
                (Some(p), Some(v), _) => {
                    Image::Volume { pool: p.clone(), volume: v.clone(), secret: d.luks_secret.clone() }
                }
                (_, _, Some(f)) => as_image(f, &pools, d.luks_secret.clone()),
                _ => Image::Unknown,
            };
            let base = match d.backing.first() {
                Some(b) => match (&b.pool, &b.volume, &b.file) {
                    (Some(p), Some(v), _) => {
                        Image::Volume { pool: p.clone(), volume: v.clone(), secret: b.luks_secret.clone() }
                    }
                    (_, _, Some(f)) => as_image(f, &pools, b.luks_secret.clone()),
                    _ => Image::Unknown,
                },
                None => match d.file.as_deref().filter(|_| lv.is_local()) {
                    Some(f) => match phyllome_disk::backing_file(Path::new(f)) {
                        // Its key's secret is found by the volume's path, its usage id.
                        Ok(Some(b)) => as_image(&b, &pools, None),
                        _ => Image::Unknown,
                    },
                    None => Image::Unknown,
                },
            };
            Changed { target: d.target.clone(), top, base, recorded: !d.backing.is_empty() }
        })
        .collect()
}

/// Refuses `action` (e.g. "start it: ...") on a VM whose disks were changed outside
/// Phyllome, saying how to undo the change.
pub(crate) fn refuse_changed(lv: &Libvirt, s: &DomainSummary, action: &str) -> Result<()> {
    let Some(note) = s.changed_outside_note() else { return Ok(()) };
    let changed = changed_disks(lv, s);
    let running = lv.state(&s.name).is_ok_and(|st| st != State::Shutoff);
    let name = &s.name;
    let commit: Vec<String> =
        changed.iter().map(|c| format!("`virsh blockcommit {name} {} --active --pivot --delete`", c.target)).collect();
    let merge = format!(
        "{} (what the guest wrote to the overlay goes back into the encrypted volume), then drop libvirt's \
         snapshot record (`virsh snapshot-list {name}`, `virsh snapshot-delete {name} SNAPSHOT --metadata`)",
        commit.join(", ")
    );
    let undo = if running {
        format!("To undo it while it runs: {merge}.")
    } else if changed.iter().all(|c| c.recorded) {
        format!("To undo it: `virsh start {name}`, then {merge}.")
    } else {
        format!(
            "libvirt cannot start it this way either (the overlay keeps no record of the encrypted volume under it), \
             so nothing was written to the overlay. To undo it: define {name} again as it was (the <domain> in \
             `virsh snapshot-dumpxml {name} SNAPSHOT`; `virsh snapshot-list {name}` names it), drop the snapshot \
             record (`virsh snapshot-delete {name} SNAPSHOT --metadata`) and remove the overlay. Or \
             `phyllome delete {name}` removes the VM with its overlay, volume and key."
        )
    };
    Err(VmError::ChangedOutside { name: name.clone(), note, action: action.into(), undo })
}
