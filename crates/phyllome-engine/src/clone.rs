//! `phyllome clone VM NEW`: a full copy of a stopped VM on this host, under a
//! key of its own.
//!
//! - The disk is re-encrypted, never copied as ciphertext: two VMs never share a
//!   key. Phyllome cannot read a disk's key (a private libvirt secret), so QEMU
//!   does it: the source is started paused (no guest code runs), and libvirt's
//!   push backup copies its disk into the clone's volume, LUKS-encrypted with the
//!   clone's new random key; then the source is powered off again.
//! - A fresh UUID and MAC addresses (libvirt makes them), the NVRAM copied (the
//!   guest's boot entries and secure-boot keys), and a fresh TPM unless
//!   `keep_tpm`: a copied TPM clones everything the guest sealed in it (BitLocker
//!   keys, credentials), so two machines would hold the same secrets.
//! - All or nothing, with create's journal: the new name is claimed first, every
//!   object is recorded by identity as it is made, and a failure, Ctrl-C or
//!   kill -9 removes exactly those (and powers the paused source off).

use crate::disk::copy::{same_owner, sparse};
use crate::disk::reencrypt::ReEncrypt;
use crate::host_files::FileId;
use crate::op::journal::Journal;
use crate::op::progress::{note, Progress, Report};
use crate::op::record::{Operation, Record};
use crate::op::{undo, Op};
use crate::paths;
use crate::vm::{self, Result, VmError};
use phyllome_libvirt::{Libvirt, State};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cloned {
    pub name: String,
    pub from: String,
    pub uuid: String,
    /// The TPM state was copied (`--keep-tpm`).
    pub kept_tpm: bool,
}

/// The clone's definition: the source's with the new name, no UUID and no MAC
/// addresses (libvirt makes new ones), and its own disk, key, NVRAM, boot files and logs.
/// `apply`'s mark (`<phyllome:applied>`) stays with the source: `apply --prune` never removes a clone.
pub fn clone_xml(
    xml: &str,
    from: &str,
    to: &str,
    disk: (&str, &str),
    new_disk: (&str, &str),
    nvram: Option<(&str, &str)>,
) -> String {
    let mut out = String::with_capacity(xml.len());
    for line in xml.lines() {
        let t = line.trim_start();
        if t.starts_with("<uuid>") || t.starts_with("<mac address=") || t.starts_with("<phyllome:applied ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    // The mark written inside another line, should libvirt ever write the metadata on one.
    while let Some(at) = out.find("<phyllome:applied ") {
        let end = out[at..].find("/>").map_or(out.len(), |e| at + e + 2);
        out.replace_range(at..end, "");
    }
    let mut out = out.replacen(&format!("<name>{from}</name>"), &format!("<name>{to}</name>"), 1);
    // The main disk: its volume and its key's usage (the volume's path).
    out = out.replace(&format!("volume='{}'", disk.0), &format!("volume='{}'", new_disk.0));
    out = out.replace(&format!("usage='{}'", disk.1), &format!("usage='{}'", new_disk.1));
    if let Some((old, new)) = nvram {
        out = out.replace(&format!(">{old}</nvram>"), &format!(">{new}</nvram>"));
    }
    out = out.replace(&format!("{}/{from}/", paths::BOOT_DIR), &format!("{}/{to}/", paths::BOOT_DIR));
    out.replace(&format!("/var/log/libvirt/qemu/{from}-"), &format!("/var/log/libvirt/qemu/{to}-"))
}

/// Clones the stopped VM `from` as `to`.
pub fn clone(lv: &Libvirt, from: &str, to: &str, keep_tpm: bool, progress: Report<'_>) -> Result<Cloned> {
    crate::host_files::here_only(lv, "clone (it copies the VM's UEFI variables, boot files and TPM state as files)")
        .map_err(VmError::from)?;
    vm::recover(lv);
    phyllome_model::input::validate_name(to).map_err(phyllome_model::BuildError::from)?;
    // The source is this clone's until it is done: no snapshot, export or start of it meanwhile.
    let _held = crate::op::lock::take(lv, from, Operation::Clone)?;
    if vm::state(lv, from)? != State::Shutoff {
        return Err(VmError::Running(from.into()));
    }
    let xml = lv.inactive_xml(from)?;
    let s = crate::domxml::parse(&xml).map_err(|e| VmError::Xml(from.into(), e))?;
    vm::refuse_changed(lv, &s, "clone it: a clone would copy only the image over its encrypted volume")?;
    let shape = crate::domxml::shape(&xml).map_err(|e| VmError::Xml(from.into(), e))?;
    if !shape.hostdevs.is_empty() {
        return Err(VmError::Disk(format!(
            "{from} has a passed-through device ({}): two VMs cannot own one device; detach it first",
            shape.hostdevs.join(", ")
        )));
    }
    if s.encryption.as_deref() == Some("prompt") {
        return Err(VmError::Disk(format!(
            "{from}'s disk key is a typed passphrase: cloning it is not supported yet (start it, and copy what you need)"
        )));
    }
    let disks: Vec<_> = s.disks.iter().filter(|d| d.device == "disk").collect();
    let [d] = disks.as_slice() else {
        return Err(VmError::Disk(format!("{from} has {} disks: a clone copies VMs with one", disks.len())));
    };
    let (Some(pool), Some(volume)) = (d.pool.clone(), d.volume.clone()) else {
        return Err(VmError::Disk(format!("{from}'s disk is not a pool volume")));
    };
    let src_path = lv.volume_info(&pool, &volume)?.ok_or_else(|| VmError::NoVolume(format!("{pool}/{volume}")))?.path;
    let pool_dir = lv.pool_path(&pool)?.ok_or_else(|| VmError::NoPool(pool.clone()))?;
    let new_volume = format!("{to}.qcow2");
    let new_path = format!("{pool_dir}/{new_volume}");
    let nvram = s.nvram.as_ref().map(|n| {
        let ext = if n.format == "qcow2" { "qcow2" } else { "fd" };
        (n.path.clone(), format!("{}/{to}_VARS.{ext}", phyllome_model::domain::NVRAM_DIR))
    });

    let mut entry = Record::new(lv, Operation::Clone, to);
    entry.made.pool = Some(pool.clone());
    entry.made.volume = Some(new_volume.clone());
    entry.made.volume_path = Some(new_path.clone());
    let journal = Journal::open();
    progress(Progress::Step { step: "claim" });
    journal.begin(&entry)?;
    let check = || -> Result<()> {
        if lv.exists(to)? {
            return Err(VmError::NameBusy(to.into()));
        }
        if lv.volume_info(&pool, &new_volume)?.is_some() || Path::new(&new_path).exists() {
            return Err(VmError::VolumeExists { pool: pool.clone(), volume: new_volume.clone() });
        }
        if lv.volume_secret(&new_path)?.is_some() {
            return Err(VmError::SecretExists(new_path.clone()));
        }
        Ok(())
    };
    if let Err(e) = check() {
        journal.finish(to);
        return Err(e);
    }
    let op = Op::begin();
    let at = |st: &'static str| op.at(progress, st);
    let result = (|| -> Result<Cloned> {
        at("disk")?;
        if d.luks_secret.is_some() {
            let key = crate::disk::image::random_key().map_err(|e| VmError::Disk(format!("no randomness: {e}")))?;
            let secret =
                lv.define_volume_secret(&new_path, &format!("phyllome: disk passphrase of VM {to}"), false, &key)?;
            entry.made.secret_uuid = Some(secret.clone());
            journal.record(&entry)?;
            note(progress, &format!("re-encrypting {from}'s disk under a new key (QEMU copies it with {from} paused)"));
            let copy = ReEncrypt { vm: from, vm_uuid: &s.uuid, target: &d.target, dest: &new_path, secret: &secret };
            copy.run(lv, &journal, &mut entry, op.flag(), progress)?;
        } else {
            sparse(Path::new(&src_path), Path::new(&new_path), progress, op.flag())?;
            entry.made.volume_file = Some(FileId::of(&new_path).map_err(|e| VmError::Disk(e.to_string()))?);
            journal.record(&entry)?;
        }
        let like = std::fs::metadata(&src_path).map_err(|e| VmError::Disk(format!("{src_path}: {e}")))?;
        same_owner(Path::new(&new_path), &like)?;
        lv.refresh_pool(&pool)?;

        at("boot-files")?;
        let src_boot = Path::new(paths::BOOT_DIR).join(from);
        if src_boot.is_dir() && s.boot_files.iter().any(|f| Path::new(f).starts_with(&src_boot)) {
            let dst_boot = Path::new(paths::BOOT_DIR).join(to);
            std::fs::create_dir_all(&dst_boot).map_err(|e| VmError::Disk(format!("{}: {e}", dst_boot.display())))?;
            for f in &s.boot_files {
                let f = Path::new(f);
                let (Ok(rest), Some(name)) = (f.strip_prefix(&src_boot), f.file_name()) else { continue };
                let _ = rest;
                let dst = dst_boot.join(name);
                sparse(f, &dst, &crate::op::progress::quiet, op.flag())?;
                entry
                    .made
                    .boot_files
                    .push(FileId::of(&dst.to_string_lossy()).map_err(|e| VmError::Disk(e.to_string()))?);
                journal.record(&entry)?;
                std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                    .map_err(|e| VmError::Disk(e.to_string()))?;
            }
        }

        at("nvram")?;
        if let Some((old, new)) = &nvram {
            if Path::new(old).exists() {
                sparse(Path::new(old), Path::new(new), &crate::op::progress::quiet, op.flag())?;
                entry.made.nvram_file = Some(FileId::of(new).map_err(|e| VmError::Disk(e.to_string()))?);
                journal.record(&entry)?;
                let like = std::fs::metadata(old).map_err(|e| crate::disk::nvram::NvramError::Store(e.to_string()))?;
                same_owner(Path::new(new), &like)?;
            }
        }

        at("define")?;
        let new_xml = clone_xml(
            &xml,
            from,
            to,
            (&volume, &src_path),
            (&new_volume, &new_path),
            nvram.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        let uuid = lv.define(&new_xml)?;
        entry.made.domain_uuid = Some(uuid.clone());
        journal.record(&entry)?;

        let mut kept_tpm = false;
        if keep_tpm {
            at("tpm")?;
            let src_tpm = paths::tpm_dir(&s.uuid);
            if src_tpm.is_dir() {
                let dst = paths::tpm_dir(&uuid);
                let parent = dst.parent().expect("under the swtpm folder");
                std::fs::create_dir_all(parent).map_err(|e| VmError::Disk(format!("{}: {e}", parent.display())))?;
                crate::disk::copy::dir_files(&src_tpm, &dst)?;
                kept_tpm = true;
            }
        }
        at("finish")?;
        Ok(Cloned { name: to.into(), from: from.into(), uuid, kept_tpm })
    })();
    drop(op);
    match result {
        Ok(c) => {
            journal.finish(to);
            Ok(c)
        }
        Err(e) => {
            note(progress, "failed: removing what this command made");
            undo::made_objects(lv, to, &entry.made);
            journal.finish(to);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clone_gets_its_own_name_disk_key_nvram_boot_files_and_logs_and_no_uuid_or_mac() {
        let xml = "<domain type='qemu'>\n  <name>a</name>\n  <uuid>1111</uuid>\n  <metadata>\n    \
            <phyllome:vm xmlns:phyllome='https://phyllo.me/xmlns/phyllome/1'>\n      <phyllome:os>linux</phyllome:os>\n      \
            <phyllome:applied from='/srv/vms'/>\n    </phyllome:vm>\n  </metadata>\n  <os>\n    \
            <kernel>/var/lib/phyllome/boot/a/vmlinuz</kernel>\n    \
            <nvram format='qcow2'>/var/lib/libvirt/qemu/nvram/a_VARS.qcow2</nvram>\n  </os>\n  <devices>\n    \
            <disk type='volume' device='disk'>\n      <source pool='phyllome' volume='a.qcow2'>\n        \
            <encryption format='luks'>\n          <secret type='passphrase' usage='/p/a.qcow2'/>\n        </encryption>\n      \
            </source>\n    </disk>\n    <interface type='user'>\n      <mac address='52:54:00:aa:bb:cc'/>\n    </interface>\n    \
            <serial type='pty'>\n      <log file='/var/log/libvirt/qemu/a-serial.log' append='off'/>\n    </serial>\n  \
            </devices>\n</domain>\n";
        let out = clone_xml(
            xml,
            "a",
            "b",
            ("a.qcow2", "/p/a.qcow2"),
            ("b.qcow2", "/p/b.qcow2"),
            Some(("/var/lib/libvirt/qemu/nvram/a_VARS.qcow2", "/var/lib/libvirt/qemu/nvram/b_VARS.qcow2")),
        );
        for want in [
            "<name>b</name>",
            "volume='b.qcow2'",
            "usage='/p/b.qcow2'",
            ">/var/lib/libvirt/qemu/nvram/b_VARS.qcow2</nvram>",
            "/var/lib/phyllome/boot/b/vmlinuz",
            "/var/log/libvirt/qemu/b-serial.log",
        ] {
            assert!(out.contains(want), "{want} missing in {out}");
        }
        for gone in ["<uuid>", "<mac ", "a.qcow2", "a_VARS", "/boot/a/", "a-serial", "phyllome:applied"] {
            assert!(!out.contains(gone), "{gone} left in {out}");
        }
    }
}
