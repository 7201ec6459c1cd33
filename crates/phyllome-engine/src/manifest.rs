//! A VM in Phyllome's terms: what the user chose, never what one host made of
//! it (docs/manifest.md). TOML, `version = 1`, unknown keys refused.
//!
//! Why TOML: it is written and read by people (comments, no indentation
//! rules, no implicit typing: YAML reads `no` as false and `1.10` as a number),
//! and the Rust ecosystem's `toml` crate maps it onto typed structs through
//! serde, refusing unknown keys as the format requires.

use crate::domxml;
use crate::errors::{Classify, ErrorKind};
use crate::vm::{self, VmError};
use phyllome_libvirt::Libvirt;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The manifest format this build reads and writes.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub name: String,
    /// Phyllome's OS id (`phyllome os list`).
    pub os: String,
    /// The OS's name, for people (written by `phyllome manifest`, checked against `os` when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// vCPUs, memory and disk size, only where the user set them: absent, the host decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<String>,
    /// `secret` (a random key in a libvirt secret), `prompt` (typed at each start) or `none`.
    pub encryption: String,
    /// `none`, `user` or a libvirt network's name.
    pub network: String,
    #[serde(default)]
    pub autostart: bool,
    /// Secure boot asked off (`--no-secure-boot`); absent: the profile's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    #[serde(default, skip_serializing_if = "Media::is_empty")]
    pub media: Media,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareEntry>,
    /// What the VM needs of a host, for people and for the checks before a move
    /// (the profile decides; a manifest cannot turn them off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareNeeds>,
}

/// Install media and drivers, by file name in the host's ISO folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drivers: Option<String>,
}

impl Media {
    fn is_empty(&self) -> bool {
        self.iso.is_none() && self.drivers.is_none()
    }
}

/// Direct kernel boot, by file name in the host's ISO folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// A shared folder: the guest's tag and the host folder (the one host path a
/// manifest carries: what is shared is the user's choice on each host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareEntry {
    pub tag: String,
    pub dir: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareNeeds {
    pub uefi: bool,
    /// `required`, `preferred` or `no` (the profile's TPM 2.0 need).
    pub tpm: String,
    pub secure_boot: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: {why}")]
    Syntax { file: String, why: String },
    #[error("{file}: manifest version {found} is not one this phyllome reads (it reads version {VERSION})")]
    Version { file: String, found: u32 },
    #[error("{file}: {field}: {why}")]
    Field { file: String, field: &'static str, why: String },
    #[error("{0}: no such file or folder")]
    Missing(String),
    #[error("{file}: {why}")]
    Unreadable { file: String, why: String },
}

impl Classify for ManifestError {
    fn kind(&self) -> ErrorKind {
        match self {
            ManifestError::Missing(_) => ErrorKind::NotFound,
            ManifestError::Unreadable { .. } => ErrorKind::Failed,
            ManifestError::Syntax { .. } | ManifestError::Version { .. } | ManifestError::Field { .. } => {
                ErrorKind::InvalidInput
            }
        }
    }
}

fn file_name(p: &str) -> String {
    Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Manifest {
    /// Reads and checks a manifest; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Manifest, ManifestError> {
        // The version first, so a newer format is refused as such, not for its new keys.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let syntax = |e: toml::de::Error| ManifestError::Syntax { file: file.into(), why: e.message().to_string() };
        let v: toml::Table = toml::from_str(text).map_err(syntax)?;
        let found = toml::Value::Table(v).try_into::<Versioned>().ok().and_then(|v| v.version);
        match found {
            Some(VERSION) => {}
            Some(n) => return Err(ManifestError::Version { file: file.into(), found: n }),
            None => {
                return Err(ManifestError::Field {
                    file: file.into(),
                    field: "version",
                    why: format!("missing (write version = {VERSION})"),
                })
            }
        }
        let m: Manifest = toml::from_str(text).map_err(syntax)?;
        m.check(file)?;
        Ok(m)
    }

    fn check(&self, file: &str) -> Result<(), ManifestError> {
        let bad = |field: &'static str, why: String| ManifestError::Field { file: file.into(), field, why };
        phyllome_model::input::validate_name(&self.name).map_err(|e| bad("name", e.to_string()))?;
        let Some(p) = phyllome_model::catalog::profile(&self.os) else {
            return Err(bad(
                "os",
                format!("unknown OS id {:?} (known: {})", self.os, phyllome_model::catalog::ids().join(", ")),
            ));
        };
        if let Some(n) = &self.os_name {
            if n != p.name {
                return Err(bad("os_name", format!("{n:?} is not the name of {} ({:?})", self.os, p.name)));
            }
        }
        if self.cpus == Some(0) {
            return Err(bad("cpus", "must be at least 1".into()));
        }
        for (field, v) in [("memory", &self.memory), ("disk_size", &self.disk_size)] {
            if let Some(v) = v {
                match phyllome_model::input::parse_size(v) {
                    Ok(0) => return Err(bad(field, "must be more than 0".into())),
                    Ok(_) => {}
                    Err(e) => return Err(bad(field, e.to_string())),
                }
            }
        }
        if !matches!(self.encryption.as_str(), "secret" | "prompt" | "none") {
            return Err(bad("encryption", format!("{:?}: use secret, prompt or none", self.encryption)));
        }
        if !matches!(self.network.as_str(), "none" | "user") {
            phyllome_model::input::validate_name(&self.network).map_err(|e| bad("network", e.to_string()))?;
        }
        for f in
            [&self.media.iso, &self.media.drivers].into_iter().flatten().chain(self.boot.as_ref().map(|b| &b.kernel))
        {
            if f.contains('/') || f.is_empty() || f.starts_with('.') {
                return Err(bad("media", format!("{f:?}: a file name in the host's ISO folder, not a path")));
            }
        }
        let mut tags = std::collections::BTreeSet::new();
        for s in &self.shares {
            if !s.dir.starts_with('/') {
                return Err(bad("shares", format!("{:?}: the host folder must be an absolute path", s.dir)));
            }
            if !tags.insert(&s.tag) {
                return Err(bad("shares", format!("tag {:?} given twice", s.tag)));
            }
        }
        Ok(())
    }

    /// The manifest as TOML, with a header saying what it is.
    pub fn to_toml(&self, notes: &[String]) -> String {
        let mut out = String::from(
            "# A VM in Phyllome's terms (docs/manifest.md): what was chosen, not what a host made of it.\n",
        );
        for n in notes {
            out.push_str(&format!("# {n}\n"));
        }
        out.push_str(&toml::to_string(self).expect("a manifest serializes"));
        out
    }
}

impl Manifest {
    /// What `create` is asked for this manifest: install media and kernels are
    /// looked up by file name in `iso_dir` (the host's ISO folder).
    pub fn spec(&self, iso_dir: &Path) -> vm::VmSpec {
        use phyllome_model::build::{Encryption, Request};
        let in_dir = |f: &String| iso_dir.join(f).to_string_lossy().into_owned();
        vm::VmSpec {
            request: Request {
                os: self.os.clone(),
                memory: self.memory.clone(),
                cpus: self.cpus,
                disk_size: self.disk_size.clone(),
                iso: self.media.iso.as_ref().map(in_dir),
                drivers: self.media.drivers.as_ref().map(in_dir),
                secure_boot: self.secure_boot == Some(true),
                direct_boot: self.boot.as_ref().map(|b| phyllome_model::domain::DirectBoot {
                    kernel: in_dir(&b.kernel),
                    initrd: b.initrd.as_ref().map(in_dir),
                    cmdline: b.cmdline.clone(),
                }),
                ..Default::default()
            },
            network: self.network.clone(),
            encryption: Encryption::parse(&self.encryption),
            pool: None,
            shares: self
                .shares
                .iter()
                .map(|s| format!("{}:{}{}", s.dir, s.tag, if s.writable { ":rw" } else { "" }))
                .collect(),
            share_force: false,
        }
    }
}

/// The manifest of an existing VM, from its definition and Phyllome's metadata;
/// with notes on what could not be told apart (VMs made before sizes were recorded).
pub fn of_vm(lv: &Libvirt, name: &str) -> vm::Result<(Manifest, Vec<String>)> {
    let xml =
        lv.inactive_xml(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })?;
    let s = domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    let autostart = lv.autostart(name)?;
    Ok(from_summary(&xml, &s, autostart))
}

/// [`of_vm`] without libvirt (pure, for tests).
pub fn from_summary(xml: &str, s: &domxml::DomainSummary, autostart: bool) -> (Manifest, Vec<String>) {
    let mut notes = vec![];
    let os = s.os.clone().unwrap_or_else(|| {
        notes.push("this VM was not made by Phyllome: its OS is given as generic linux; check it".into());
        "linux".into()
    });
    let profile = phyllome_model::catalog::profile(&os);
    let asked = s.asked.clone().unwrap_or_else(|| {
        notes.push(
            "cpus, memory and disk_size are left to the host: this VM was made before Phyllome recorded what was asked"
                .into(),
        );
        Default::default()
    });
    let doc = roxmltree::Document::parse(xml).ok();
    let os_el = doc.as_ref().and_then(|d| d.root_element().children().find(|n| n.has_tag_name("os")));
    let text = |tag: &str| {
        os_el
            .and_then(|o| o.children().find(|c| c.has_tag_name(tag)))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let secure_boot_off = os_el.is_some_and(|o| {
        o.descendants().any(|f| {
            f.has_tag_name("feature")
                && f.attribute("name") == Some("secure-boot")
                && f.attribute("enabled") == Some("no")
        })
    });
    let cds: Vec<String> =
        s.disks.iter().filter(|d| d.device == "cdrom").filter_map(|d| d.file.as_deref().map(file_name)).collect();
    let boot = text("kernel").map(|k| Boot {
        kernel: file_name(&k),
        initrd: text("initrd").map(|i| file_name(&i)),
        cmdline: text("cmdline"),
    });
    let network = match s.nics.first() {
        None => "none".to_string(),
        Some(n) if n.network == "user" => "user".into(),
        Some(n) => n.network.strip_prefix("network ").unwrap_or(&n.network).to_string(),
    };
    let shape = crate::domxml::shape(xml).unwrap_or_default();
    let uefi = s.nvram.is_some() || os_el.is_some_and(|o| o.attribute("firmware") == Some("efi"));
    let manifest = Manifest {
        version: VERSION,
        name: s.name.clone(),
        os_name: profile.as_ref().map(|p| p.name.to_string()),
        os,
        cpus: asked.cpus,
        memory: asked.memory,
        disk_size: asked.disk_size,
        encryption: s.encryption.clone().unwrap_or_else(|| if s.encrypted() { "secret".into() } else { "none".into() }),
        network,
        autostart,
        secure_boot: secure_boot_off.then_some(false),
        media: Media { iso: cds.first().cloned(), drivers: cds.get(1).cloned() },
        boot,
        shares: crate::share::shares_of(xml)
            .into_iter()
            .map(|r| ShareEntry { tag: r.tag, dir: r.dir, writable: !r.readonly })
            .collect(),
        firmware: Some(FirmwareNeeds {
            uefi,
            tpm: match (shape.tpm_emulator, profile.as_ref().map(|p| p.tpm.value)) {
                (_, Some(phyllome_model::catalog::Need::Required)) => "required".into(),
                (true, _) => "preferred".into(),
                _ => "no".into(),
            },
            secure_boot: os_el.is_some_and(|o| {
                o.descendants().any(|f| {
                    f.has_tag_name("feature")
                        && f.attribute("name") == Some("secure-boot")
                        && f.attribute("enabled") == Some("yes")
                })
            }),
        }),
    };
    (manifest, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
name = "w11"
os = "windows11"
os_name = "Windows 11"
cpus = 4
memory = "8G"
encryption = "secret"
network = "default"
autostart = true

[media]
iso = "Win11.iso"

[[shares]]
tag = "docs"
dir = "/home/me/Documents"
"#;

    #[test]
    fn a_manifest_reads_and_writes_back_the_same() {
        let m = Manifest::parse(GOOD, "w11.toml").unwrap();
        assert_eq!((m.cpus, m.memory.as_deref(), m.disk_size.as_deref()), (Some(4), Some("8G"), None));
        assert_eq!(
            m.shares,
            vec![ShareEntry { tag: "docs".into(), dir: "/home/me/Documents".into(), writable: false }]
        );
        let again = Manifest::parse(&m.to_toml(&["a note".into()]), "again").unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn a_manifest_asks_create_for_what_it_names() {
        let m = Manifest::parse(GOOD, "w11.toml").unwrap();
        let spec = m.spec(Path::new("/isos"));
        assert_eq!(spec.request.iso.as_deref(), Some("/isos/Win11.iso"));
        assert_eq!((spec.request.cpus, spec.request.memory.as_deref()), (Some(4), Some("8G")));
        assert_eq!(spec.encryption, Some(phyllome_model::build::Encryption::Secret));
        assert_eq!(spec.shares, vec!["/home/me/Documents:docs".to_string()]);
        assert_eq!(spec.network, "default");
    }

    #[test]
    fn bad_manifests_are_refused_with_the_field() {
        let refuse = |text: String, want: &str| {
            let e = Manifest::parse(&text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        };
        refuse(GOOD.replace("version = 1", "version = 2"), "manifest version 2 is not one this phyllome reads");
        refuse(GOOD.replace("version = 1\n", ""), "version: missing");
        refuse(GOOD.replace("autostart = true", "autostart = true\ncolour = \"blue\""), "unknown field `colour`");
        refuse(GOOD.replace("windows11", "plan9"), "unknown OS id \"plan9\"");
        refuse(GOOD.replace("\"Windows 11\"", "\"Windows 95\""), "os_name");
        refuse(GOOD.replace("\"8G\"", "\"-8G\""), "memory");
        refuse(GOOD.replace("\"8G\"", "\"0G\""), "memory: size \"0G\" is zero");
        refuse(GOOD.replace("cpus = 4", "cpus = -1"), "f.toml");
        refuse(GOOD.replace("cpus = 4", "cpus = 0"), "cpus: must be at least 1");
        refuse(GOOD.replace("\"secret\"", "\"rot13\""), "encryption");
        refuse(GOOD.replace("Win11.iso", "../etc/shadow"), "not a path");
        refuse(GOOD.replace("/home/me/Documents", "Documents"), "absolute path");
        refuse(GOOD.replace("name = \"w11\"", "name = \"a/b\""), "name");
        refuse("version = 1\nname = [".into(), "f.toml");
    }

    #[test]
    fn a_vms_manifest_holds_its_choices_not_host_paths() {
        let xml = "<domain type='qemu'><name>deb</name><uuid>u</uuid><memory unit='KiB'>524288</memory><vcpu>2</vcpu>\
            <metadata><phyllome:vm xmlns:phyllome='https://phyllo.me/xmlns/phyllome/1'><phyllome:os>linux</phyllome:os>\
            <phyllome:version>0.1.0</phyllome:version><phyllome:encryption>secret</phyllome:encryption>\
            <phyllome:asked memory='512M'/></phyllome:vm></metadata>\
            <os firmware='efi'><kernel>/var/lib/phyllome/boot/deb/vmlinuz</kernel><initrd>/var/lib/phyllome/boot/deb/initrd.img</initrd>\
            <cmdline>console=ttyS0</cmdline><nvram format='qcow2'>/var/lib/libvirt/qemu/nvram/deb_VARS.qcow2</nvram></os>\
            <devices><disk type='file' device='cdrom'><source file='/var/lib/phyllome/isos/debian.iso'/><target dev='sda'/></disk>\
            <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
            <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/data'/><target dir='data'/><readonly/></filesystem>\
            </devices></domain>";
        let s = domxml::parse(xml).unwrap();
        let (m, notes) = from_summary(xml, &s, false);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((m.os.as_str(), m.memory.as_deref(), m.cpus), ("linux", Some("512M"), None), "only what was asked");
        assert_eq!(m.media.iso.as_deref(), Some("debian.iso"));
        assert_eq!(m.boot.as_ref().map(|b| b.kernel.as_str()), Some("vmlinuz"));
        assert_eq!(m.network, "none");
        assert_eq!(m.shares, vec![ShareEntry { tag: "data".into(), dir: "/srv/data".into(), writable: false }]);
        let text = m.to_toml(&notes);
        assert!(!text.contains("/var/lib"), "a host path in {text}");
        assert_eq!(Manifest::parse(&text, "deb.toml").unwrap(), m);
        // A VM made before the sizes were recorded: the host decides them, and the manifest says so.
        let old = xml.replace("<phyllome:asked memory='512M'/>", "");
        let (m, notes) = from_summary(&old, &domxml::parse(&old).unwrap(), true);
        assert_eq!((m.memory, m.autostart), (None, true));
        assert!(notes[0].contains("left to the host"), "{notes:?}");
    }
}
