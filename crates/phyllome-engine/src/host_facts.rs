//! Gathers the live host's facts: the file system through `phyllome-host`,
//! libvirt's versions, host and domain capabilities, swtpm and virtiofsd (the
//! capability record, [`phyllome_model::capability`]), and the KVM probe.

use crate::errors::{Classify, ErrorKind};
use phyllome_host::{kvm, parse_domcaps, platform, read_facts};
use phyllome_libvirt::Libvirt;
use phyllome_model::host::KvmState;
use phyllome_model::{Host, Platform};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error("cannot read libvirt's domain capabilities: {0}")]
    Domcaps(#[from] phyllome_host::domcaps::DomcapsError),
}

impl Classify for HostError {
    fn kind(&self) -> ErrorKind {
        match self {
            HostError::Libvirt(e) => e.kind(),
            HostError::Domcaps(_) => ErrorKind::Failed,
        }
    }
}

/// This host's MemAvailable (the kernel's estimate of what it can give without
/// swapping), in bytes; 0 when unknown.
pub fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|k| k * 1024)
        .unwrap_or(0)
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
    if !lv.is_local() {
        // Another machine's libvirt: its facts, not this machine's files.
        return Ok((gather_remote(lv)?, None));
    }
    let root = Path::new("/");
    let mut facts = read_facts(root);
    let (libvirt, qemu) = lv.versions()?;
    let (swtpm, virtiofsd) = platform::tools(root);
    facts.platform = Platform {
        libvirt,
        libvirt_library: Libvirt::library_version().unwrap_or_default(),
        qemu,
        external_snapshot: platform::parse_external_snapshot(&lv.capabilities()?),
        swtpm,
        virtiofsd,
    };
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

/// What only the running host can answer for `phyllome check`: libvirt's
/// versions (or why it cannot be reached), the KVM probe, free space where
/// disks live and who is asking. The CLI and the web API ask the same.
pub fn check_inputs(lv: Result<&Libvirt, String>, uri: &str) -> phyllome_host::check::Inputs {
    use phyllome_host::check::{self, Versions};
    let libvirt = lv
        .clone()
        .and_then(|lv| lv.versions().map(|(libvirt, qemu)| Versions { libvirt, qemu }).map_err(|e| e.message.clone()));
    let migrations = lv.as_ref().ok().map(|lv| crate::op::moves::unsettled(lv));
    let pool_path = lv
        .ok()
        .and_then(|lv| lv.pool_path(crate::POOL).ok().flatten())
        .unwrap_or_else(|| crate::paths::POOL_PATH.into());
    // The probe boots a tiny guest under KVM for a few seconds at most, once per boot.
    let kvm_probe = if Path::new("/dev/kvm").exists() {
        qemu_binary().map(|qemu| kvm::probe_cached(&qemu, &phyllome_host::facts::read_firmware(Path::new("/"))))
    } else {
        None
    };
    check::Inputs {
        kvm_probe,
        libvirt: Some(libvirt),
        uri: uri.to_string(),
        disk: check::free_space(&pool_path),
        user: check::current_user(),
        not_live: None,
        migrations,
    }
}

/// Firmware descriptors larger than this are not firmware descriptors (they are a few hundred bytes).
const DESCRIPTOR_MAX: u64 = 64 << 10;

/// Reads another host, through its libvirt only (it may be remote; nothing of
/// this machine is read): the facts the VM models are tuned to, as [`gather`]
/// reads them here. What libvirt answers directly: its and QEMU's versions, host
/// and domain capabilities (KVM when it offers `kvm` domains, swtpm when it offers
/// the emulator TPM backend), logical CPUs and memory. The firmware descriptors
/// are that host's own files, read through libvirt's storage API. Not known over
/// libvirt, and taken as absent: render nodes (no GL display), virgl, a
/// virtio-win ISO, the virtiofs daemon, swtpm's own feature list, and the KVM
/// probe (libvirt's answer is trusted).
pub fn gather_remote(lv: &Libvirt) -> Result<Host, HostError> {
    use phyllome_model::host::{CpuVendor, HostFacts};
    let (libvirt, qemu) = lv.versions()?;
    let caps = lv.capabilities()?;
    let (cpus, memory_mib) = lv.node_cpus_memory()?;
    let (vendor, model) = host_cpu(&caps);
    let (kvm, xml) = match lv.domain_capabilities("kvm", "q35") {
        Ok(xml) => (KvmState::Usable, xml),
        Err(_) => (KvmState::Absent, lv.domain_capabilities("qemu", "q35")?),
    };
    let domcaps = parse_domcaps(&xml)?;
    let swtpm = domcaps.supports("tpm") && domcaps.has("tpm.backendModel", "emulator");
    let mut files = vec![];
    for dir in phyllome_host::facts::FIRMWARE_DIRS {
        for (name, bytes) in lv.read_files(&format!("/{dir}"), ".json", 256, DESCRIPTOR_MAX)? {
            files.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    let facts = HostFacts {
        description: format!("{} (read over libvirt)", lv.uri()),
        cpu_vendor: match vendor.as_str() {
            "Intel" => CpuVendor::Intel,
            "AMD" => CpuVendor::Amd,
            _ => CpuVendor::Other,
        },
        cpu_model: model,
        cpus: cpus.max(1),
        memory_mib,
        render_nodes: vec![],
        kvm,
        swtpm,
        virgl: false,
        firmware: phyllome_host::facts::firmware_from(files),
        virtio_win_iso: None,
        platform: Platform {
            libvirt,
            libvirt_library: Libvirt::library_version().unwrap_or_default(),
            qemu,
            external_snapshot: platform::parse_external_snapshot(&caps),
            swtpm: swtpm.then(phyllome_model::capability::Swtpm::default),
            virtiofsd: None,
        },
    };
    Ok(Host { facts, caps: domcaps })
}

/// The host CPU's vendor and model in libvirt's host capabilities.
fn host_cpu(caps: &str) -> (String, String) {
    let Ok(doc) = roxmltree::Document::parse(caps) else { return Default::default() };
    let Some(cpu) =
        doc.descendants().find(|n| n.has_tag_name("cpu") && n.parent().is_some_and(|p| p.has_tag_name("host")))
    else {
        return Default::default();
    };
    let text = |tag: &str| {
        cpu.children().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).unwrap_or_default().trim().to_string()
    };
    (text("vendor"), text("model"))
}
