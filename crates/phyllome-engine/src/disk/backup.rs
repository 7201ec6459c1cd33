//! libvirt's push backup: QEMU copies a disk while its VM runs (or is paused), into a
//! new qcow2 encrypted with a secret libvirt holds. What a snapshot of a running VM, a
//! clone and an export use, with the one loop that waits for the job.

use super::DiskError;
use crate::op::progress::{Progress, Report};
use crate::op::StepError;
use phyllome_libvirt::Libvirt;
use phyllome_model::xml::Element;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The `<domainbackup>` that copies `disks` (target, destination, secret UUID)
/// and skips the rest of `skip`.
pub fn backup_xml(disks: &[(String, String, Option<String>)], skip: &[String]) -> String {
    let mut all = Element::new("disks");
    for (target, file, secret) in disks {
        let enc = secret.as_ref().map(|u| {
            Element::new("encryption")
                .attr("format", "luks")
                .child(Element::new("secret").attr("type", "passphrase").attr("uuid", u.clone()))
        });
        all = all.child(
            Element::new("disk")
                .attr("name", target.clone())
                .attr("backup", "yes")
                .attr("type", "file")
                .child(Element::new("driver").attr("type", "qcow2"))
                .child(Element::new("target").attr("file", file.clone()).child_opt(enc)),
        );
    }
    for target in skip {
        all = all.child(Element::new("disk").attr("name", target.clone()).attr("backup", "no"));
    }
    Element::new("domainbackup").attr("mode", "push").child(all).render()
}

/// Waits for VM `vm`'s backup job to end, reporting its bytes; fails when it failed.
/// Interrupted (`interrupted` set), it aborts the job and stops.
pub fn wait(lv: &Libvirt, vm: &str, interrupted: &AtomicBool, report: Report<'_>) -> Result<(), DiskError> {
    loop {
        if interrupted.load(Ordering::Relaxed) {
            let _ = lv.abort_job(vm);
            return Err(StepError::Interrupted.into());
        }
        let j = lv.job(vm)?;
        if !j.active {
            if j.completed {
                return Ok(());
            }
            return Err(DiskError::Job(j.error));
        }
        report(Progress::Bytes { done: j.processed, total: j.total });
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_xml_encrypts_each_copy_with_its_disks_secret() {
        let xml = backup_xml(
            &[("vda".into(), "/s/disk-vda.qcow2".into(), Some("u-1".into())), ("vdb".into(), "/s/d'b".into(), None)],
            &["sda".into()],
        );
        let flat: String = xml.lines().map(str::trim).collect();
        assert_eq!(
            flat,
            "<domainbackup mode='push'><disks>\
             <disk name='vda' backup='yes' type='file'><driver type='qcow2'/><target file='/s/disk-vda.qcow2'>\
             <encryption format='luks'><secret type='passphrase' uuid='u-1'/></encryption></target></disk>\
             <disk name='vdb' backup='yes' type='file'><driver type='qcow2'/><target file='/s/d&apos;b'/></disk>\
             <disk name='sda' backup='no'/></disks></domainbackup>"
        );
    }
}
