//! Host facts: everything about the host that the VM model depends on.
//!
//! These are plain data. `phyllome-host` reads them from a live host (or a
//! recorded fixture); the model only consumes them, so every host-dependent
//! decision can be tested against recorded hosts without touching one.

use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuVendor {
    Intel,
    Amd,
    Other,
}

/// Whether hardware virtualization can run guests on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvmState {
    /// `/dev/kvm` exists and a probe guest ran.
    Usable,
    /// No `/dev/kvm` (virtualization off in firmware, module not loaded, or a VM without nesting).
    Absent,
    /// `/dev/kvm` exists but guests crash or hang (seen in some nested setups).
    Broken,
}

/// A QEMU firmware descriptor (`/usr/share/qemu/firmware/*.json`), the same
/// files libvirt uses to auto-select firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareDescriptor {
    pub name: String,
    pub executable: String,
    #[serde(default)]
    pub nvram_template: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub machines: Vec<String>,
    #[serde(default)]
    pub features: Vec<String>,
}

impl FirmwareDescriptor {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// True when the descriptor is UEFI firmware for a q35 machine.
    pub fn is_uefi_q35(&self) -> bool {
        self.interfaces.iter().any(|i| i == "uefi")
            && self.machines.iter().any(|m| m.starts_with("pc-q35") || m == "q35")
    }
}

/// Host facts that are not libvirt's domain capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    #[serde(default)]
    pub description: String,
    pub cpu_vendor: CpuVendor,
    #[serde(default)]
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub render_nodes: Vec<String>,
    pub kvm: KvmState,
    pub swtpm: bool,
    /// QEMU has the virtio-gpu GL (virgl) device modules.
    #[serde(default)]
    pub virgl: bool,
    #[serde(default)]
    pub firmware: Vec<FirmwareDescriptor>,
    /// A virtio-win driver ISO found on the host, if any.
    #[serde(default)]
    pub virtio_win_iso: Option<String>,
    /// libvirt's, QEMU's, swtpm's and virtiofsd's versions and abilities: what
    /// `capability` decides features from.
    #[serde(default)]
    pub platform: Platform,
}

/// libvirt's domain capabilities, parsed (`virsh domcapabilities`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainCaps {
    /// `kvm` or `qemu` (TCG).
    pub virt_type: String,
    pub emulator: String,
    /// The concrete machine type libvirt resolved, e.g. `pc-q35-7.2`.
    pub machine: String,
    pub max_vcpus: u32,
    /// `<os><enum name='firmware'>` values (`efi`, `bios`).
    pub firmware: Vec<String>,
    pub loaders: Vec<String>,
    /// CPU modes libvirt reports as supported.
    pub cpu_modes: Vec<String>,
    /// Custom CPU models usable on this host.
    pub usable_cpu_models: Vec<String>,
    /// `None` when the answer has no `<hyperv>` element or says unsupported;
    /// otherwise the listed features (empty when the libvirt predates the list).
    pub hyperv: Option<Vec<String>>,
    /// Device enums keyed `device.enum`, e.g. `video.modelType` -> [vga, virtio, ...].
    pub enums: BTreeMap<String, Vec<String>>,
    /// Devices present and `supported='yes'` in the answer (`disk`, `tpm`, `sound`...).
    pub devices: Vec<String>,
}

impl DomainCaps {
    pub fn is_kvm(&self) -> bool {
        self.virt_type == "kvm"
    }

    /// Whether the device element is listed and supported.
    pub fn supports(&self, device: &str) -> bool {
        self.devices.iter().any(|d| d == device)
    }

    /// Whether `device.enum` lists `value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.enums.get(key).is_some_and(|v| v.iter().any(|x| x == value))
    }

    pub fn cpu_mode(&self, mode: &str) -> bool {
        self.cpu_modes.iter().any(|m| m == mode)
    }

    pub fn cpu_model_usable(&self, model: &str) -> bool {
        self.usable_cpu_models.iter().any(|m| m == model)
    }

    pub fn hyperv_feature(&self, feature: &str) -> bool {
        match &self.hyperv {
            None => false,
            // libvirt before the feature list: assume the classic set under KVM.
            Some(list) if list.is_empty() => self.is_kvm(),
            Some(list) => list.iter().any(|f| f == feature),
        }
    }
}

/// Everything the model needs to know about a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub facts: HostFacts,
    pub caps: DomainCaps,
}
