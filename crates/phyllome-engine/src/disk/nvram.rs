//! The qcow2 UEFI variable store a definition names, made from its firmware's template.

use crate::domxml;
use crate::host_files::{FileId, HostFiles, Owner};
use phyllome_libvirt::Libvirt;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NvramError {
    #[error("cannot make the UEFI variable store: {0}")]
    Store(String),
    #[error("cannot read {0}'s domain XML: {1}")]
    Xml(String, roxmltree::Error),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
}

impl crate::errors::Classify for NvramError {
    fn kind(&self) -> crate::errors::ErrorKind {
        match self {
            NvramError::Libvirt(e) => e.kind(),
            _ => crate::errors::ErrorKind::Failed,
        }
    }
}

type Result<T> = std::result::Result<T, NvramError>;

/// The largest firmware variable template read (OVMF's are 128 KiB to 4 MiB).
const TEMPLATE_MAX: u64 = 64 << 20;

/// Makes the qcow2 UEFI variable store a definition names, when it is missing,
/// from the template libvirt picked at define time (libvirt copies a template
/// only into a store of the template's own format, and OVMF ships raw ones).
/// Only stores inside libvirt's NVRAM folder are made, on the VM's host: the
/// template is read there, converted here (`qemu-img convert` in a private
/// scratch folder) and written there, owned like libvirt's own stores (the
/// folder's owner: QEMU's user), mode 0600. `made` is called with the store's
/// identity the moment it exists. Returns the one made, if any.
pub fn prepare_with(
    lv: &Libvirt,
    name: &str,
    made: &mut dyn FnMut(&FileId) -> std::io::Result<()>,
) -> Result<Option<FileId>> {
    let s = domxml::parse(&lv.inactive_xml(name)?).map_err(|e| NvramError::Xml(name.into(), e))?;
    let Some(n) = s.nvram.filter(|n| n.format == "qcow2") else { return Ok(None) };
    let files = HostFiles::of(lv);
    let nv = |e: std::io::Error| NvramError::Store(format!("{}: {e}", n.path));
    if files.exists(&n.path).map_err(nv)? {
        return Ok(None);
    }
    if Path::new(&n.path).parent() != Some(Path::new(phyllome_model::domain::NVRAM_DIR)) {
        return Err(NvramError::Store(format!(
            "{} is outside libvirt's NVRAM folder {}",
            n.path,
            phyllome_model::domain::NVRAM_DIR
        )));
    }
    let Some(template) = &n.template else {
        return Err(NvramError::Store(format!("libvirt named no firmware template for {}", n.path)));
    };
    let tv = |e: std::io::Error| NvramError::Store(format!("{template}: {e}"));
    let raw = files.read(template, TEMPLATE_MAX).map_err(tv)?;
    let scratch = crate::host_files::Scratch::new().map_err(tv)?;
    let (from, to) = (scratch.path("template"), scratch.path("vars.qcow2"));
    std::fs::write(&from, &raw).map_err(tv)?;
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", n.template_format.as_deref().unwrap_or("raw"), "-O", "qcow2", &from, &to])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NvramError::Store(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(NvramError::Store(format!("{template} -> {}: {why}", n.path)));
    }
    let store = std::fs::read(&to).map_err(tv)?;
    let id = files.write_new(&n.path, &store, 0o600, Owner::LikeFolder, made).map_err(nv)?;
    Ok(Some(id))
}

/// [`prepare_with`], recorded nowhere (a start, or a test).
pub fn prepare(lv: &Libvirt, name: &str) -> Result<Option<FileId>> {
    prepare_with(lv, name, &mut |_| Ok(()))
}
