//! Gathers the live host's facts: the file system through `phyllome-host`,
//! libvirt's domain capabilities, and the KVM probe.

use phyllome_host::{kvm, parse_domcaps, read_facts};
use phyllome_libvirt::Libvirt;
use phyllome_model::host::KvmState;
use phyllome_model::Host;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error("cannot read libvirt's domain capabilities: {0}")]
    Domcaps(#[from] phyllome_host::domcaps::DomcapsError),
}

/// The QEMU binary the KVM probe runs.
pub fn qemu_binary() -> Option<PathBuf> {
    ["/usr/bin/qemu-system-x86_64", "/usr/libexec/qemu-kvm", "/usr/local/bin/qemu-system-x86_64"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Reads the live host. `probe_kvm` runs (or reuses this boot's) KVM probe
/// when `/dev/kvm` exists.
pub fn gather(lv: &Libvirt, probe_kvm: bool) -> Result<(Host, Option<String>), HostError> {
    let mut facts = read_facts(Path::new("/"));
    let (libvirt_version, qemu_version) = lv.versions()?;
    facts.libvirt_version = libvirt_version;
    facts.qemu_version = qemu_version;
    let mut kvm_detail = None;
    if facts.kvm == KvmState::Usable && probe_kvm {
        if let Some(qemu) = qemu_binary() {
            let p = kvm::probe_cached(&qemu, &facts.firmware);
            facts.kvm = p.state;
            kvm_detail = Some(p.detail);
        }
    }
    let xml = if facts.kvm == KvmState::Usable {
        match lv.domain_capabilities("kvm", "q35") {
            Ok(xml) => xml,
            Err(e) => {
                kvm_detail = Some(format!("libvirt offers no KVM domains: {}", e.message));
                facts.kvm = KvmState::Broken;
                lv.domain_capabilities("qemu", "q35")?
            }
        }
    } else {
        lv.domain_capabilities("qemu", "q35")?
    };
    let caps = parse_domcaps(&xml)?;
    Ok((Host { facts, caps }, kvm_detail))
}
