//! What this host's libvirt and QEMU pair can do: the one place that knows
//! which version brings which feature.
//!
//! `phyllome-host` reads the record once ([`Platform`], inside the host facts,
//! beside libvirt's domain capabilities); every feature that depends on a
//! version asks [`Host::check`] (or [`Host::supports`]) here, never a version
//! number of its own. A feature the host cannot do is refused with
//! [`Unsupported`], which names the version it needs and what to update.

use crate::host::Host;
// The record's types live in `platform`, below the host facts that hold them; named here too.
pub use crate::platform::{Platform, Swtpm, Version, Virtiofsd};
use serde::Serialize;

/// The oldest libvirt Phyllome runs on: firmware auto-selection by feature
/// (secure-boot, enrolled-keys), which every UEFI model uses (`phyllome check` fails below it).
pub const MIN_LIBVIRT: Version = Version(7, 2, 0);
/// QEMU recommended: virtio-gpu-gl as a module, current q35 machine types (`phyllome check` warns below it).
pub const RECOMMENDED_QEMU: Version = Version(6, 2, 0);

/// Features that depend on the host's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// libvirt resolves `<os firmware='efi'>` when the VM is defined, so the
    /// definition names the OVMF build and NVRAM template it will use.
    FirmwareAtDefine,
    /// A qcow2 NVRAM for UEFI VMs, what internal snapshots of UEFI VMs need.
    QcowNvram,
    /// Internal snapshots (disk + NVRAM, with or without RAM) of a UEFI VM, with revert and delete.
    InternalSnapshotUefi,
    /// Reverting to an external (overlay) snapshot.
    ExternalSnapshotRevert,
    /// Shared folders over virtiofs.
    Virtiofs,
    /// Read-only shared folders over virtiofs.
    ReadonlyVirtiofs,
    /// The virtio-sound device.
    VirtioSound,
    /// A point-in-time copy of a running VM's disks while it runs on (libvirt's push-mode
    /// backup), what Phyllome's snapshots of running VMs are made with.
    LiveDiskCopy,
    /// A running VM with shared folders moved live: virtiofsd hands over which files the
    /// guest has open (never the files: both hosts must serve the same folder).
    VirtiofsMigration,
}

impl Feature {
    pub const ALL: [Feature; 9] = [
        Feature::FirmwareAtDefine,
        Feature::QcowNvram,
        Feature::InternalSnapshotUefi,
        Feature::ExternalSnapshotRevert,
        Feature::Virtiofs,
        Feature::ReadonlyVirtiofs,
        Feature::VirtioSound,
        Feature::LiveDiskCopy,
        Feature::VirtiofsMigration,
    ];

    /// What the feature is, for messages ("read-only shared folders need ...").
    pub fn what(self) -> &'static str {
        match self {
            Feature::FirmwareAtDefine => "firmware chosen when the VM is defined",
            Feature::QcowNvram => "a qcow2 UEFI variable store",
            Feature::InternalSnapshotUefi => "snapshots of UEFI VMs (internal, with revert and delete)",
            Feature::ExternalSnapshotRevert => "reverting external snapshots",
            Feature::Virtiofs => "shared folders (virtiofs)",
            Feature::ReadonlyVirtiofs => "read-only shared folders (virtiofs)",
            Feature::VirtioSound => "virtio-sound",
            Feature::LiveDiskCopy => "snapshots of running VMs (a disk copy while the VM runs)",
            Feature::VirtiofsMigration => "live moves of VMs with shared folders (virtiofs state)",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Feature::InternalSnapshotUefi
            | Feature::Virtiofs
            | Feature::ReadonlyVirtiofs
            | Feature::LiveDiskCopy
            | Feature::VirtiofsMigration => "need",
            _ => "needs",
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Feature::FirmwareAtDefine => "firmware-at-define",
            Feature::QcowNvram => "qcow2-nvram",
            Feature::InternalSnapshotUefi => "internal-snapshot-uefi",
            Feature::ExternalSnapshotRevert => "external-snapshot-revert",
            Feature::Virtiofs => "virtiofs",
            Feature::ReadonlyVirtiofs => "readonly-virtiofs",
            Feature::VirtioSound => "virtio-sound",
            Feature::LiveDiskCopy => "live-disk-copy",
            Feature::VirtiofsMigration => "virtiofs-migration",
        }
    }

    /// What the feature needs, in words, whatever a host has: "libvirt ≥ 10.5.0, QEMU ≥ 8.2.0 and ...".
    pub fn requirement(self) -> String {
        let n = self.needs();
        let mut parts: Vec<String> =
            [n.libvirt.map(|v| format!("libvirt ≥ {v}")), n.qemu.map(|v| format!("QEMU ≥ {v}"))]
                .into_iter()
                .flatten()
                .collect();
        match self {
            Feature::Virtiofs => parts.push("a virtiofs daemon".into()),
            Feature::ReadonlyVirtiofs => parts.push("the Rust virtiofsd ≥ 1.13".into()),
            Feature::VirtiofsMigration => parts.push("a virtiofsd that migrates its state (≥ 1.11)".into()),
            Feature::ExternalSnapshotRevert => parts.push("<externalSnapshot/> in the host capabilities".into()),
            _ => {}
        }
        match parts.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// The versions the feature needs (see shared/reference/libvirt-features.md
    /// and libvirt's NEWS for each).
    fn needs(self) -> Needs {
        match self {
            // 9.2: firmware auto-selection moved from start to define.
            Feature::FirmwareAtDefine => Needs { libvirt: Some(Version(9, 2, 0)), qemu: None },
            // 10.9 takes internal snapshots of UEFI VMs whose NVRAM is qcow2; 10.10 reverts and
            // deletes them with the NVRAM. A qcow2 NVRAM before that buys nothing, so it waits for 10.10.
            Feature::QcowNvram | Feature::InternalSnapshotUefi => {
                Needs { libvirt: Some(Version(10, 10, 0)), qemu: None }
            }
            // 9.9 reverts external snapshots (the host capabilities then list <externalSnapshot/>).
            Feature::ExternalSnapshotRevert => Needs { libvirt: Some(Version(9, 9, 0)), qemu: None },
            Feature::Virtiofs => Needs { libvirt: Some(Version(6, 2, 0)), qemu: Some(Version(5, 0, 0)) },
            // 11.0 accepts <readonly/> on a virtiofs filesystem ("does not yet support read-only mode" before).
            Feature::ReadonlyVirtiofs => Needs { libvirt: Some(Version(11, 0, 0)), qemu: None },
            // QEMU 8.2 brought the virtio-sound device; libvirt 10.4 its <sound model='virtio'>.
            Feature::VirtioSound => Needs { libvirt: Some(Version(10, 4, 0)), qemu: Some(Version(8, 2, 0)) },
            // libvirt 7.6 enabled the backup API (virDomainBackupBegin) by default; it runs on
            // QEMU's blockdev layer, which libvirt uses from QEMU 4.2.
            Feature::LiveDiskCopy => Needs { libvirt: Some(Version(7, 6, 0)), qemu: Some(Version(4, 2, 0)) },
            // QEMU 8.2 carries a vhost-user back end's state in the migration stream ("vhost-user-fs:
            // Implement internal migration"); libvirt 10.5 lets a VM with virtiofs migrate when its
            // daemon says `migrate-precopy` (before: "migration with virtiofs device is not
            // supported"), which the Rust virtiofsd does from 1.11.
            Feature::VirtiofsMigration => Needs { libvirt: Some(Version(10, 5, 0)), qemu: Some(Version(8, 2, 0)) },
        }
    }
}

struct Needs {
    libvirt: Option<Version>,
    qemu: Option<Version>,
}

/// A feature this host cannot do, and what would make it possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{what} {verb} {needs}; this host has {have}. Fix: {fix}")]
pub struct Unsupported {
    pub feature: Feature,
    pub what: &'static str,
    #[serde(skip)]
    verb: &'static str,
    /// "libvirt ≥ 11.0", "a virtiofs daemon with --readonly", ...
    pub needs: String,
    /// What the host has instead.
    pub have: String,
    pub fix: String,
}

const UPDATE_STACK: &str = "update libvirt and QEMU (Fedora: dnf upgrade libvirt qemu-kvm; Debian 12: install them from bookworm-backports, as Phyllome's setup does), then restart libvirtd";

const INSTALL_VIRTIOFSD: &str = "install virtiofsd (Fedora, Debian 13: the virtiofsd package; Debian 12: `cargo install virtiofsd` and a vhost-user descriptor in /usr/share/qemu/vhost-user/, as Phyllome's setup does)";

impl Host {
    /// Whether this host can do `feature`.
    pub fn supports(&self, feature: Feature) -> bool {
        self.check(feature).is_ok()
    }

    /// `Ok` when this host can do `feature`; otherwise what it needs.
    pub fn check(&self, feature: Feature) -> Result<(), Unsupported> {
        let p = &self.facts.platform;
        let needs = feature.needs();
        let refuse = |needs: String, have: String, fix: &str| {
            Err(Unsupported { feature, what: feature.what(), verb: feature.verb(), needs, have, fix: fix.to_string() })
        };
        if let Some(min) = needs.libvirt {
            if p.libvirt_version() < min {
                return refuse(format!("libvirt ≥ {min}"), format!("libvirt {}", or_unknown(&p.libvirt)), UPDATE_STACK);
            }
        }
        if let Some(min) = needs.qemu {
            if p.qemu_version() < min {
                return refuse(format!("QEMU ≥ {min}"), format!("QEMU {}", or_unknown(&p.qemu)), UPDATE_STACK);
            }
        }
        match feature {
            Feature::ExternalSnapshotRevert if !p.external_snapshot => refuse(
                "libvirt ≥ 9.9 listing <externalSnapshot/> in its host capabilities".into(),
                format!("libvirt {} without it", p.libvirt),
                UPDATE_STACK,
            ),
            Feature::Virtiofs | Feature::ReadonlyVirtiofs if !self.caps.has("filesystem.driverType", "virtiofs") => {
                refuse(
                    "libvirt and QEMU with the virtiofs filesystem driver".into(),
                    "a libvirt that lists no virtiofs driver".into(),
                    UPDATE_STACK,
                )
            }
            Feature::Virtiofs if p.virtiofsd.is_none() => {
                refuse("a virtiofs daemon (virtiofsd)".into(), "none".into(), INSTALL_VIRTIOFSD)
            }
            Feature::VirtiofsMigration
                if !p.virtiofsd.as_ref().is_some_and(|v| v.features.iter().any(|f| f == "migrate-precopy")) =>
            {
                refuse(
                    "a virtiofsd that migrates its state (the Rust virtiofsd ≥ 1.11: migrate-precopy)".into(),
                    match &p.virtiofsd {
                        Some(v) => format!("{} {}", v.path, or_unknown(&v.version)),
                        None => "no virtiofsd".into(),
                    },
                    INSTALL_VIRTIOFSD,
                )
            }
            Feature::ReadonlyVirtiofs if !p.virtiofsd.as_ref().is_some_and(|v| v.readonly) => refuse(
                "the Rust virtiofsd ≥ 1.13 (it takes --readonly)".into(),
                match &p.virtiofsd {
                    Some(v) => format!("{} {}", v.path, or_unknown(&v.version)),
                    None => "no virtiofsd".into(),
                },
                INSTALL_VIRTIOFSD,
            ),
            _ => Ok(()),
        }
    }

    /// Every feature with this host's answer, for `phyllome host facts`.
    pub fn features(&self) -> Vec<FeatureStatus> {
        Feature::ALL
            .iter()
            .map(|&f| {
                let r = self.check(f);
                FeatureStatus {
                    feature: f.id(),
                    what: f.what(),
                    supported: r.is_ok(),
                    needs: r.as_ref().err().map(|u| u.needs.clone()),
                    have: r.err().map(|u| u.have),
                }
            })
            .collect()
    }
}

fn or_unknown(v: &str) -> &str {
    if v.is_empty() {
        "(unknown version)"
    } else {
        v
    }
}

/// One row of the capability record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureStatus {
    pub feature: &'static str,
    pub what: &'static str,
    pub supported: bool,
    /// What is missing, when not supported.
    pub needs: Option<String>,
    pub have: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CpuVendor, DomainCaps, HostFacts, KvmState};

    fn host(libvirt: &str, qemu: &str, external_snapshot: bool, virtiofsd: Option<Virtiofsd>) -> Host {
        let mut caps = DomainCaps { virt_type: "qemu".into(), ..DomainCaps::default() };
        caps.enums.insert("filesystem.driverType".into(), vec!["path".into(), "virtiofs".into()]);
        Host {
            facts: HostFacts {
                description: String::new(),
                cpu_vendor: CpuVendor::Amd,
                cpu_model: String::new(),
                cpus: 2,
                memory_mib: 4096,
                render_nodes: vec![],
                kvm: KvmState::Absent,
                swtpm: true,
                virgl: false,
                firmware: vec![],
                virtio_win_iso: None,
                platform: Platform {
                    libvirt: libvirt.into(),
                    libvirt_library: libvirt.into(),
                    qemu: qemu.into(),
                    external_snapshot,
                    swtpm: None,
                    virtiofsd,
                },
            },
            caps,
        }
    }

    fn rust_virtiofsd() -> Option<Virtiofsd> {
        Some(Virtiofsd {
            path: "/usr/local/libexec/virtiofsd".into(),
            version: "1.14.0".into(),
            features: vec!["migrate-precopy".into()],
            readonly: true,
        })
    }

    fn c_virtiofsd() -> Option<Virtiofsd> {
        Some(Virtiofsd { path: "/usr/lib/qemu/virtiofsd".into(), ..Virtiofsd::default() })
    }

    #[test]
    fn debian12_stock_stack_lacks_every_new_feature() {
        let h = host("9.0.0", "7.2.22", false, c_virtiofsd());
        for f in [
            Feature::FirmwareAtDefine,
            Feature::QcowNvram,
            Feature::InternalSnapshotUefi,
            Feature::ExternalSnapshotRevert,
            Feature::ReadonlyVirtiofs,
            Feature::VirtioSound,
            Feature::VirtiofsMigration,
        ] {
            assert!(!h.supports(f), "{f:?} on 9.0/7.2");
        }
        // The C daemon QEMU 7.2 ships still serves read-write shares.
        assert!(h.supports(Feature::Virtiofs));
        let e = h.check(Feature::ReadonlyVirtiofs).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("read-only shared folders (virtiofs) need libvirt ≥ 11.0.0; this host has libvirt 9.0.0. Fix: {UPDATE_STACK}")
        );
        let e = h.check(Feature::VirtioSound).unwrap_err();
        assert!(e.to_string().starts_with("virtio-sound needs libvirt ≥ 10.4.0; this host has libvirt 9.0.0"), "{e}");
    }

    #[test]
    fn backports_stack_has_them_all() {
        let h = host("11.3.0", "10.0.2", true, rust_virtiofsd());
        for f in Feature::ALL {
            assert!(h.supports(f), "{f:?} on 11.3/10.0: {:?}", h.check(f));
        }
        assert!(h.features().iter().all(|s| s.supported && s.needs.is_none()));
    }

    #[test]
    fn each_threshold_sits_where_libvirt_and_qemu_put_it() {
        // 10.9 takes UEFI internal snapshots but cannot revert them: not enough.
        assert!(!host("10.9.0", "9.1.0", true, None).supports(Feature::InternalSnapshotUefi));
        assert!(host("10.10.0", "9.1.0", true, None).supports(Feature::QcowNvram));
        assert!(host("9.2.0", "7.2.0", false, None).supports(Feature::FirmwareAtDefine));
        assert!(!host("9.1.0", "7.2.0", false, None).supports(Feature::FirmwareAtDefine));
        // Revert of external snapshots needs the capability, not only the version.
        assert!(!host("9.9.0", "8.0.0", false, None).supports(Feature::ExternalSnapshotRevert));
        assert!(host("9.9.0", "8.0.0", true, None).supports(Feature::ExternalSnapshotRevert));
        // virtio-sound needs both halves.
        assert!(!host("10.4.0", "8.1.0", true, None).supports(Feature::VirtioSound));
        let e = host("10.4.0", "8.1.0", true, None).check(Feature::VirtioSound).unwrap_err();
        assert_eq!((e.needs.as_str(), e.have.as_str()), ("QEMU ≥ 8.2.0", "QEMU 8.1.0"));
        assert!(host("10.4.0", "8.2.0", true, None).supports(Feature::VirtioSound));
        // virtiofs state in the stream: QEMU 8.2, libvirt 10.5, and a daemon that migrates.
        assert!(!host("10.4.0", "8.2.0", true, rust_virtiofsd()).supports(Feature::VirtiofsMigration));
        assert!(!host("10.5.0", "8.1.0", true, rust_virtiofsd()).supports(Feature::VirtiofsMigration));
        assert!(host("10.5.0", "8.2.0", true, rust_virtiofsd()).supports(Feature::VirtiofsMigration));
        let old_daemon = Virtiofsd { features: vec![], ..rust_virtiofsd().unwrap() };
        let e = host("11.3.0", "10.0.2", true, Some(old_daemon)).check(Feature::VirtiofsMigration).unwrap_err();
        assert!(e.needs.contains("migrate-precopy"), "{e:?}");
        assert_eq!(
            Feature::VirtiofsMigration.requirement(),
            "libvirt ≥ 10.5.0, QEMU ≥ 8.2.0 and a virtiofsd that migrates its state (≥ 1.11)"
        );
    }

    #[test]
    fn shared_folders_need_a_daemon_and_read_only_needs_the_rust_one() {
        let none = host("11.3.0", "10.0.2", true, None);
        let e = none.check(Feature::Virtiofs).unwrap_err();
        assert!(e.to_string().contains("need a virtiofs daemon (virtiofsd); this host has none"), "{e}");
        let c = host("11.3.0", "10.0.2", true, c_virtiofsd());
        assert!(c.supports(Feature::Virtiofs));
        let e = c.check(Feature::ReadonlyVirtiofs).unwrap_err();
        assert!(e.needs.contains("--readonly") && e.have.contains("/usr/lib/qemu/virtiofsd"), "{e:?}");
        let mut no_driver = host("11.3.0", "10.0.2", true, rust_virtiofsd());
        no_driver.caps.enums.clear();
        assert!(!no_driver.supports(Feature::Virtiofs));
    }

    #[test]
    fn an_unknown_version_is_refused_and_said_so() {
        let h = host("", "", false, None);
        let e = h.check(Feature::QcowNvram).unwrap_err();
        assert!(e.to_string().contains("this host has libvirt (unknown version)"), "{e}");
    }
}
