//! Reads host facts through a root directory (`/` on a live host, a fixture
//! tree in tests).

use phyllome_model::host::{CpuVendor, FirmwareDescriptor, HostFacts, KvmState};
use std::fs;
use std::path::{Path, PathBuf};

/// Where QEMU firmware descriptors live, lowest priority first; a file in a
/// later directory overrides one of the same name in an earlier one (as libvirt does).
pub const FIRMWARE_DIRS: [&str; 2] = ["usr/share/qemu/firmware", "etc/qemu/firmware"];
/// Where distributions put QEMU's loadable modules.
const QEMU_MODULE_DIRS: [&str; 3] = ["usr/lib/x86_64-linux-gnu/qemu", "usr/lib64/qemu", "usr/lib/qemu"];
/// Where a virtio-win ISO is looked for (Fedora's virtio-win package, then the usual image folders).
const VIRTIO_WIN_PLACES: [&str; 3] = ["usr/share/virtio-win", "var/lib/libvirt/images", "var/lib/phyllome/iso"];

/// `rel` (absolute or not) inside the host tree at `root`.
pub fn at(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// CPU vendor, model name and logical CPU count from `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> (CpuVendor, String, u32) {
    let mut vendor = CpuVendor::Other;
    let mut model = String::new();
    let mut count = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => count += 1,
            "vendor_id" => {
                vendor = match value {
                    "GenuineIntel" => CpuVendor::Intel,
                    "AuthenticAMD" | "HygonGenuine" => CpuVendor::Amd,
                    _ => CpuVendor::Other,
                }
            }
            "model name" if model.is_empty() => model = value.to_string(),
            _ => {}
        }
    }
    (vendor, model, count)
}

/// MemTotal from `/proc/meminfo`, in MiB.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

/// Parses one QEMU firmware descriptor (docs/interop/firmware.json in QEMU).
pub fn parse_firmware_descriptor(name: &str, json: &str) -> Option<FirmwareDescriptor> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let mapping = v.get("mapping")?;
    let executable = mapping.get("executable")?.get("filename")?.as_str()?.to_string();
    let nvram_template =
        mapping.get("nvram-template").and_then(|n| n.get("filename")).and_then(|f| f.as_str()).map(str::to_string);
    let machines = v
        .get("targets")
        .and_then(|t| t.as_array())
        .map(|targets| {
            targets
                .iter()
                .filter(|t| t.get("architecture").and_then(|a| a.as_str()) == Some("x86_64"))
                .flat_map(|t| strings(t.get("machines").unwrap_or(&serde_json::Value::Null)))
                .collect()
        })
        .unwrap_or_default();
    Some(FirmwareDescriptor {
        name: name.to_string(),
        executable,
        nvram_template,
        interfaces: strings(v.get("interface-types").unwrap_or(&serde_json::Value::Null)),
        machines,
        features: strings(v.get("features").unwrap_or(&serde_json::Value::Null)),
    })
}

/// Firmware descriptors sorted by file name (libvirt's priority order).
pub fn read_firmware(root: &Path) -> Vec<FirmwareDescriptor> {
    let mut files = vec![];
    for dir in FIRMWARE_DIRS {
        let Ok(entries) = fs::read_dir(at(root, dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.ends_with(".json") {
                continue;
            }
            let Ok(text) = fs::read_to_string(e.path()) else {
                continue;
            };
            files.push((name, text));
        }
    }
    firmware_from(files)
}

/// The descriptors of `(file name, text)` pairs, in the order of [`FIRMWARE_DIRS`]
/// (a later folder's file replaces an earlier one of the same name), sorted by name.
pub fn firmware_from(files: impl IntoIterator<Item = (String, String)>) -> Vec<FirmwareDescriptor> {
    let mut by_name = std::collections::BTreeMap::new();
    for (name, text) in files {
        match parse_firmware_descriptor(&name, &text) {
            Some(d) => by_name.insert(name, Some(d)),
            // An empty or invalid file masks one of the same name (libvirt's convention).
            None => by_name.insert(name, None),
        };
    }
    by_name.into_values().flatten().collect()
}

fn render_nodes(root: &Path) -> Vec<String> {
    let mut nodes: Vec<String> = fs::read_dir(at(root, "dev/dri"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("renderD"))
                .map(|n| format!("/dev/dri/{n}"))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

fn find_virtio_win(root: &Path) -> Option<String> {
    for dir in VIRTIO_WIN_PLACES {
        let Ok(rd) = fs::read_dir(at(root, dir)) else {
            continue;
        };
        let mut isos: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("virtio-win") && n.ends_with(".iso"))
            .collect();
        isos.sort();
        // The unversioned name (Fedora's symlink to the newest) first, else the newest version.
        if let Some(n) = isos.iter().find(|n| *n == "virtio-win.iso").or(isos.last()) {
            return Some(format!("/{dir}/{n}"));
        }
    }
    None
}

/// Reads every host fact except libvirt's and KVM's functional state
/// (`kvm` is `Absent` or `Usable` from the device node alone; see [`crate::kvm`]).
pub fn read_facts(root: &Path) -> HostFacts {
    let cpuinfo = fs::read_to_string(at(root, "proc/cpuinfo")).unwrap_or_default();
    let (cpu_vendor, cpu_model, cpus) = parse_cpuinfo(&cpuinfo);
    let memory_mib = fs::read_to_string(at(root, "proc/meminfo")).ok().and_then(|t| parse_meminfo(&t)).unwrap_or(0);
    let swtpm = ["usr/bin/swtpm", "usr/local/bin/swtpm"].iter().any(|p| at(root, p).exists());
    let virgl = QEMU_MODULE_DIRS.iter().any(|d| at(root, d).join("hw-display-virtio-gpu-gl.so").exists());
    HostFacts {
        description: String::new(),
        cpu_vendor,
        cpu_model,
        cpus: cpus.max(1),
        memory_mib,
        render_nodes: render_nodes(root),
        kvm: if at(root, "dev/kvm").exists() { KvmState::Usable } else { KvmState::Absent },
        swtpm,
        virgl,
        firmware: read_firmware(root),
        virtio_win_iso: find_virtio_win(root),
        // The versions come from libvirtd; the tools are asked by `platform`.
        platform: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_vendor_model_count() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(parse_cpuinfo(text), (CpuVendor::Amd, "AMD EPYC 7B13".into(), 2));
        assert_eq!(parse_cpuinfo("vendor_id: GenuineIntel\nprocessor: 0").0, CpuVendor::Intel);
    }

    #[test]
    fn meminfo_total() {
        assert_eq!(parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24000));
        assert_eq!(parse_meminfo("garbage"), None);
    }

    #[test]
    fn firmware_descriptor_fields() {
        let json = r#"{"interface-types":["uefi"],"mapping":{"device":"flash","executable":{"filename":"/x/CODE.ms.fd","format":"raw"},"nvram-template":{"filename":"/x/VARS.ms.fd","format":"raw"}},"targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}],"features":["enrolled-keys","requires-smm","secure-boot"]}"#;
        let d = parse_firmware_descriptor("40-x.json", json).unwrap();
        assert_eq!(d.executable, "/x/CODE.ms.fd");
        assert_eq!(d.nvram_template.as_deref(), Some("/x/VARS.ms.fd"));
        assert!(d.is_uefi_q35() && d.has("secure-boot") && d.has("enrolled-keys"));
        assert!(parse_firmware_descriptor("bad.json", "{}").is_none());
    }
}
