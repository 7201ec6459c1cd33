//! Reads back the parts of a libvirt domain XML that Phyllome reports:
//! its metadata, size, disks and display. Pure, for tests.

use phyllome_model::domain::METADATA_NS;
use roxmltree::{Document, Node};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSummary {
    pub target: String,
    pub device: String,
    pub pool: Option<String>,
    pub volume: Option<String>,
    pub file: Option<String>,
    /// Usage id or UUID of the LUKS passphrase secret, when encrypted.
    pub luks_secret: Option<String>,
    /// The images under this one (`<backingStore>`, nearest first): Phyllome makes none.
    pub backing: Vec<Layer>,
}

/// One image of a disk's backing chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    pub pool: Option<String>,
    pub volume: Option<String>,
    pub file: Option<String>,
    pub luks_secret: Option<String>,
}

/// The UEFI variable store, as `<os><nvram>` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvramSummary {
    pub path: String,
    /// `raw` when the element does not say.
    pub format: String,
    /// The template libvirt copies it from (filled in at define time by libvirt ≥ 9.2).
    pub template: Option<String>,
    pub template_format: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSummary {
    pub name: String,
    pub uuid: String,
    /// Phyllome's OS id, when Phyllome made the VM.
    pub os: Option<String>,
    /// `secret`, `prompt` or `none` (Phyllome's metadata).
    pub encryption: Option<String>,
    pub created_by: Option<String>,
    /// The sizes the user gave at create (`<phyllome:asked>`); None for VMs made before Phyllome recorded them.
    pub asked: Option<phyllome_model::domain::Asked>,
    /// The manifest file or folder `phyllome apply` made the VM from (`<phyllome:applied from=...>`).
    pub applied_from: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSummary>,
    /// VNC port and listen address of a running domain.
    pub vnc: Option<(String, u16)>,
    pub nvram: Option<NvramSummary>,
    /// The direct-boot kernel and initrd, when the domain has them.
    pub boot_files: Vec<String>,
    pub nics: Vec<NicSummary>,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NicSummary {
    /// `virtio`, `e1000e`...
    pub model: Option<String>,
    /// `network NAME`, `user`, `bridge NAME`...
    pub network: String,
    pub mac: Option<String>,
}

impl DomainSummary {
    /// The main disk: the first disk (not CD-ROM) that is a pool volume.
    pub fn main_disk(&self) -> Option<&DiskSummary> {
        self.disks.iter().find(|d| d.device == "disk" && d.volume.is_some())
    }

    /// Whether all of the main disk is encrypted (a plaintext image over it made outside Phyllome: no).
    pub fn encrypted(&self) -> bool {
        self.main_disk().is_some_and(|d| d.luks_secret.is_some()) && self.changed_outside().is_empty()
    }

    /// The disks of a VM Phyllome made that are no longer what it made: an image
    /// over its volume (an external snapshot's overlay: `<backingStore>`), or its
    /// volume replaced by a file (libvirt records no chain for a VM that was off).
    pub fn changed_outside(&self) -> Vec<&DiskSummary> {
        if self.os.is_none() {
            return vec![];
        }
        let replaced = self.main_disk().is_none();
        self.disks
            .iter()
            .filter(|d| d.device == "disk")
            .filter(|d| !d.backing.is_empty() || (replaced && d.file.is_some()))
            .collect()
    }

    /// [`Self::changed_outside`] in words, for `list` and `info`.
    pub fn changed_outside_note(&self) -> Option<String> {
        let notes: Vec<String> = self
            .changed_outside()
            .iter()
            .map(|d| {
                let top = d.file.clone().or_else(|| d.volume.clone()).unwrap_or_else(|| "?".into());
                let top = if d.luks_secret.is_some() { top } else { format!("{top} (not encrypted)") };
                match d.backing.first() {
                    Some(b) => {
                        let base = match (&b.pool, &b.volume, &b.file) {
                            (Some(p), Some(v), _) => format!("{p}/{v}"),
                            (_, _, Some(f)) => f.clone(),
                            _ => "?".into(),
                        };
                        let enc = if b.luks_secret.is_some() { "encrypted " } else { "" };
                        format!("disk {} writes to {top}, made outside Phyllome over its {enc}volume {base}", d.target)
                    }
                    None => format!("disk {} is {top}, put in place of its volume outside Phyllome", d.target),
                }
            })
            .collect();
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

fn child<'a>(n: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text(n: Node, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text()).map(|t| t.trim().to_string())
}

fn to_mib(value: &str, unit: Option<&str>) -> u64 {
    let v: u64 = value.trim().parse().unwrap_or(0);
    match unit.unwrap_or("KiB") {
        "b" | "bytes" => v >> 20,
        "KiB" | "k" | "K" => v >> 10,
        "MiB" | "M" | "m" => v,
        "GiB" | "G" | "g" => v << 10,
        _ => v >> 10,
    }
}

/// The LUKS secret (usage id or UUID) of a `<source>`.
fn luks_of(source: Option<Node>) -> Option<String> {
    source
        .and_then(|src| child(src, "encryption"))
        .and_then(|e| child(e, "secret"))
        .and_then(|sec| sec.attribute("usage").or(sec.attribute("uuid")))
        .map(str::to_string)
}

/// A disk's `<backingStore>` chain, nearest first (an empty `<backingStore/>` ends it).
fn chain(disk: Node) -> Vec<Layer> {
    let mut out = vec![];
    let mut at = child(disk, "backingStore");
    while let Some(b) = at {
        let Some(source) = child(b, "source") else { break };
        out.push(Layer {
            pool: source.attribute("pool").map(str::to_string),
            volume: source.attribute("volume").map(str::to_string),
            file: source.attribute("file").map(str::to_string),
            luks_secret: luks_of(Some(source)),
        });
        at = child(b, "backingStore");
    }
    out
}

pub fn parse(xml: &str) -> Result<DomainSummary, roxmltree::Error> {
    let doc = Document::parse(xml)?;
    let root = doc.root_element();
    let mut s = DomainSummary {
        name: text(root, "name").unwrap_or_default(),
        uuid: text(root, "uuid").unwrap_or_default(),
        vcpus: text(root, "vcpu").and_then(|v| v.parse().ok()).unwrap_or(0),
        ..Default::default()
    };
    if let Some(m) = child(root, "memory") {
        s.memory_mib = to_mib(m.text().unwrap_or("0"), m.attribute("unit"));
    }
    if let Some(ours) =
        root.descendants().find(|n| n.tag_name().namespace() == Some(METADATA_NS) && n.tag_name().name() == "vm")
    {
        let get = |name: &str| {
            ours.children()
                .find(|c| c.tag_name().name() == name && c.tag_name().namespace() == Some(METADATA_NS))
                .and_then(|c| c.text())
                .map(|t| t.trim().to_string())
        };
        s.os = get("os");
        s.encryption = get("encryption");
        s.created_by = get("version");
        let ours_el = |name: &str| {
            ours.children().find(|c| c.tag_name().name() == name && c.tag_name().namespace() == Some(METADATA_NS))
        };
        s.applied_from = ours_el("applied").and_then(|a| a.attribute("from")).map(str::to_string);
        if let Some(a) = ours_el("asked") {
            s.asked = Some(phyllome_model::domain::Asked {
                cpus: a.attribute("cpus").and_then(|c| c.parse().ok()),
                memory: a.attribute("memory").map(str::to_string),
                disk_size: a.attribute("disk").map(str::to_string),
            });
        }
    }
    if let Some(os) = child(root, "os") {
        s.boot_files = ["kernel", "initrd"].iter().filter_map(|k| text(os, k)).filter(|p| !p.is_empty()).collect();
    }
    s.nvram = child(root, "os").and_then(|os| child(os, "nvram")).and_then(|n| {
        Some(NvramSummary {
            path: n.text().map(str::trim).filter(|p| !p.is_empty())?.to_string(),
            format: n.attribute("format").unwrap_or("raw").to_string(),
            template: n.attribute("template").map(str::to_string),
            template_format: n.attribute("templateFormat").map(str::to_string),
        })
    });
    if let Some(devices) = child(root, "devices") {
        for d in devices.children().filter(|d| d.has_tag_name("disk")) {
            let source = child(d, "source");
            let luks = luks_of(source);
            s.disks.push(DiskSummary {
                target: child(d, "target").and_then(|t| t.attribute("dev")).unwrap_or_default().to_string(),
                device: d.attribute("device").unwrap_or("disk").to_string(),
                pool: source.and_then(|x| x.attribute("pool")).map(str::to_string),
                volume: source.and_then(|x| x.attribute("volume")).map(str::to_string),
                file: source.and_then(|x| x.attribute("file")).map(str::to_string),
                luks_secret: luks,
                backing: chain(d),
            });
        }
        for n in devices.children().filter(|n| n.has_tag_name("interface")) {
            let kind = n.attribute("type").unwrap_or("other");
            let source = child(n, "source");
            let named = source.and_then(|x| x.attribute("network").or(x.attribute("bridge")).or(x.attribute("dev")));
            s.nics.push(NicSummary {
                model: child(n, "model").and_then(|m| m.attribute("type")).map(str::to_string),
                network: match named {
                    Some(name) => format!("{kind} {name}"),
                    None => kind.to_string(),
                },
                mac: child(n, "mac").and_then(|m| m.attribute("address")).map(str::to_string),
            });
        }
        for g in devices.children().filter(|g| g.has_tag_name("graphics") && g.attribute("type") == Some("vnc")) {
            let port = g.attribute("port").and_then(|p| p.parse::<i32>().ok()).unwrap_or(-1);
            if port > 0 {
                let listen = g.attribute("listen").unwrap_or("127.0.0.1").to_string();
                s.vnc = Some((listen, port as u16));
            }
        }
    }
    Ok(s)
}

/// What of a domain's definition snapshots, clones, moves and manifests care about (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    pub tpm_emulator: bool,
    /// Passed-through devices, in words.
    pub hostdevs: Vec<String>,
    /// Devices QEMU cannot save with the RAM, in words.
    pub memory_blockers: Vec<String>,
}

pub fn shape(xml: &str) -> std::result::Result<Shape, roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    let mut s = Shape::default();
    let Some(devices) = doc.root_element().children().find(|n| n.has_tag_name("devices")) else {
        return Ok(s);
    };
    for d in devices.children().filter(|n| n.is_element()) {
        match d.tag_name().name() {
            "tpm" => {
                s.tpm_emulator |=
                    d.children().any(|b| b.has_tag_name("backend") && b.attribute("type") == Some("emulator"))
            }
            "hostdev" => {
                let addr = d
                    .descendants()
                    .find(|n| n.has_tag_name("address"))
                    .map(|a| {
                        a.attributes().map(|x| format!("{}={}", x.name(), x.value())).collect::<Vec<_>>().join(" ")
                    })
                    .unwrap_or_default();
                s.hostdevs.push(format!("{} {}", d.attribute("type").unwrap_or("hostdev"), addr).trim().to_string());
            }
            // QEMU 10.0 marks virtio-sound unmigratable: "non-migratable device: .../virtio-sound-device".
            "sound" if d.attribute("model") == Some("virtio") => {
                s.memory_blockers.push("virtio-sound (QEMU cannot save its state)".into())
            }
            // virtiofsd's state is not part of the VM's: QEMU refuses to save a VM with a vhost-user-fs device.
            "filesystem"
                if d.children().any(|c| c.has_tag_name("driver") && c.attribute("type") == Some("virtiofs")) =>
            {
                let tag =
                    d.children().find(|c| c.has_tag_name("target")).and_then(|t| t.attribute("dir")).unwrap_or("?");
                s.memory_blockers.push(format!("the shared folder {tag:?} (virtiofs state cannot be saved)"))
            }
            _ => {}
        }
    }
    Ok(s)
}

/// The name of another domain (not `uuid`) whose disks include the volume (or the file
/// `path`), if any.
pub fn user_of_volume(
    lv: &phyllome_libvirt::Libvirt,
    uuid: &str,
    pool: &str,
    volume: &str,
    path: Option<&str>,
) -> Result<Option<String>, phyllome_libvirt::Error> {
    for other in lv.domain_names()? {
        let Ok(xml) = lv.inactive_xml(&other) else { continue };
        let Ok(o) = parse(&xml) else { continue };
        if o.uuid == uuid {
            continue;
        }
        let uses = o.disks.iter().any(|d| {
            (d.pool.as_deref() == Some(pool) && d.volume.as_deref() == Some(volume))
                || (path.is_some() && d.file.as_deref() == path)
        });
        if uses {
            return Ok(Some(o.name));
        }
    }
    Ok(None)
}

/// A domain state in words (`list`, `info`, a snapshot's record).
pub fn state_name(s: phyllome_libvirt::State) -> &'static str {
    use phyllome_libvirt::State;
    match s {
        State::Running => "running",
        State::Paused => "paused",
        State::Shutoff => "shut off",
        State::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metadata_disks_and_vnc() {
        let xml = r#"<domain type='qemu' id='3'>
  <name>vm1</name><uuid>1234</uuid>
  <metadata><phyllome:vm xmlns:phyllome='https://phyllo.me/xmlns/phyllome/1'><phyllome:os>linux</phyllome:os><phyllome:version>0.1.0</phyllome:version><phyllome:encryption>secret</phyllome:encryption><phyllome:applied from='/srv/vms'/></phyllome:vm></metadata>
  <memory unit='KiB'>4194304</memory><vcpu placement='static'>2</vcpu>
  <devices>
    <disk type='volume' device='disk'><source pool='phyllome' volume='vm1.qcow2'><encryption format='luks'><secret type='passphrase' usage='/p/vm1.qcow2'/></encryption></source><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/isos/a.iso'/><target dev='sda' bus='sata'/></disk>
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'/>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><model type='virtio'/></interface>
    <interface type='user'><model type='e1000e'/></interface>
  </devices>
</domain>"#;
        let s = parse(xml).unwrap();
        assert_eq!((s.name.as_str(), s.os.as_deref(), s.vcpus, s.memory_mib), ("vm1", Some("linux"), 2, 4096));
        assert_eq!(s.encryption.as_deref(), Some("secret"));
        assert_eq!(s.applied_from.as_deref(), Some("/srv/vms"));
        assert!(s.encrypted());
        assert_eq!(s.main_disk().unwrap().volume.as_deref(), Some("vm1.qcow2"));
        assert_eq!(s.disks[1].file.as_deref(), Some("/isos/a.iso"));
        assert_eq!(s.vnc, Some(("127.0.0.1".into(), 5901)));
        assert_eq!(s.nics.len(), 2);
        assert_eq!(
            (s.nics[0].model.as_deref(), s.nics[0].network.as_str(), s.nics[0].mac.as_deref()),
            (Some("virtio"), "network default", Some("52:54:00:aa:bb:cc"))
        );
        assert_eq!((s.nics[1].model.as_deref(), s.nics[1].network.as_str()), (Some("e1000e"), "user"));
    }

    #[test]
    fn reads_the_nvram_libvirt_resolved() {
        let xml = "<domain><name>w</name><os firmware='efi'><loader readonly='yes' type='pflash' format='raw'>/c.fd</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd' templateFormat='raw' format='qcow2'>/var/lib/libvirt/qemu/nvram/w_VARS.qcow2</nvram></os></domain>";
        let n = parse(xml).unwrap().nvram.unwrap();
        assert_eq!((n.path.as_str(), n.format.as_str()), ("/var/lib/libvirt/qemu/nvram/w_VARS.qcow2", "qcow2"));
        assert_eq!(n.template.as_deref(), Some("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"));
        assert_eq!(n.template_format.as_deref(), Some("raw"));
        let raw = parse("<domain><os><nvram>/n/x_VARS.fd</nvram></os></domain>").unwrap().nvram.unwrap();
        assert_eq!((raw.format.as_str(), raw.template), ("raw", None));
        assert_eq!(parse("<domain><os><nvram/></os></domain>").unwrap().nvram, None);
    }

    const OURS: &str = "<metadata><phyllome:vm xmlns:phyllome='https://phyllo.me/xmlns/phyllome/1'><phyllome:os>linux</phyllome:os><phyllome:encryption>secret</phyllome:encryption></phyllome:vm></metadata>";

    #[test]
    fn an_overlay_made_outside_phyllome_is_found_with_or_without_its_chain() {
        // `virsh snapshot-create-as --disk-only` of a running VM: the chain is recorded.
        let running = format!(
            "<domain><name>v</name>{OURS}<devices><disk type='file' device='disk'>\
             <source file='/p/v-x.qcow2' index='2'/><backingStore type='volume' index='1'><format type='qcow2'/>\
             <source pool='phyllome' volume='v.qcow2'><encryption format='luks' engine='qemu'>\
             <secret type='passphrase' usage='/p/v.qcow2'/></encryption></source><backingStore/></backingStore>\
             <target dev='vda'/></disk></devices></domain>"
        );
        let s = parse(&running).unwrap();
        assert_eq!(s.disks[0].backing.len(), 1);
        assert_eq!(s.disks[0].backing[0].luks_secret.as_deref(), Some("/p/v.qcow2"));
        assert_eq!(s.changed_outside().len(), 1);
        assert!(!s.encrypted(), "a plaintext overlay over the volume: not all encrypted");
        assert_eq!(
            s.changed_outside_note().unwrap(),
            "disk vda writes to /p/v-x.qcow2 (not encrypted), made outside Phyllome over its encrypted volume phyllome/v.qcow2"
        );
        // Of a VM that was off: libvirt keeps only the overlay as a file.
        let off = format!(
            "<domain><name>v</name>{OURS}<devices><disk type='file' device='disk'><source file='/p/v-x.qcow2'/>\
             <target dev='vda'/></disk></devices></domain>"
        );
        let s = parse(&off).unwrap();
        assert_eq!(s.changed_outside().len(), 1);
        assert!(s.changed_outside_note().unwrap().contains("put in place of its volume"));
        // Phyllome's own VMs (a volume, a macOS OpenCore file beside it) and foreign domains: nothing.
        let mac = format!(
            "<domain><name>m</name>{OURS}<devices><disk type='file' device='disk'><source file='/o/OpenCore.qcow2'/>\
             <target dev='sda'/></disk><disk type='volume' device='disk'><source pool='phyllome' volume='m.qcow2'/>\
             <target dev='vda'/></disk></devices></domain>"
        );
        assert!(parse(&mac).unwrap().changed_outside().is_empty());
        let foreign = off.replace(OURS, "");
        assert!(parse(&foreign).unwrap().changed_outside().is_empty());
    }

    #[test]
    fn foreign_domains_have_no_phyllome_metadata() {
        let s = parse("<domain type='kvm'><name>x</name><memory unit='GiB'>2</memory><vcpu>1</vcpu></domain>").unwrap();
        assert_eq!((s.os.as_deref(), s.memory_mib, s.encrypted()), (None, 2048, false));
        assert_eq!(s.applied_from, None);
    }

    #[test]
    fn shape_finds_tpm_passthrough_and_what_blocks_a_memory_save() {
        let xml = "<domain><devices>\
            <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
            <sound model='virtio'/>\
            <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/><target dir='data'/></filesystem>\
            <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev>\
            </devices></domain>";
        let s = shape(xml).unwrap();
        assert!(s.tpm_emulator);
        assert_eq!(s.hostdevs, vec!["pci domain=0x0000 bus=0x01 slot=0x00 function=0x0"]);
        assert_eq!(s.memory_blockers.len(), 2, "{:?}", s.memory_blockers);
        let plain =
            shape("<domain><devices><sound model='ich9'/><tpm><backend type='passthrough'/></tpm></devices></domain>")
                .unwrap();
        assert_eq!(plain, Shape::default());
    }
}
