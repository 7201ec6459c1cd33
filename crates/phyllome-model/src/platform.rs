//! What libvirt, QEMU and their helpers are on a host, as `phyllome-host`
//! reads them once: the record the host facts hold ([`Platform`]) and the
//! versions in it. What those versions can do is decided in `capability`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A `major.minor.micro` version (`9.0.0`, `10.0.2`); missing parts are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads the leading numbers of `9.0.0`, `7.2.22`, `1:10.0.2+ds-2`, `virtiofsd 1.14.0`.
    pub fn parse(text: &str) -> Version {
        let t = text.trim();
        // Skip a leading program name ("virtiofsd 1.14.0") and a Debian epoch ("1:10.0.2").
        let t = t.rsplit(' ').next().unwrap_or(t);
        let t = t.split_once(':').map_or(t, |(_, v)| v);
        let mut it = t.split(['.', '-', '+', '~']).map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().unwrap_or(0)
        });
        Version(it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
    }

    pub fn is_known(&self) -> bool {
        *self != Version(0, 0, 0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// swtpm, as `swtpm socket --print-capabilities` describes itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swtpm {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub features: Vec<String>,
}

/// The virtiofs daemon libvirt will run for shared folders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Virtiofsd {
    pub path: String,
    /// Empty when the daemon did not say (QEMU 7.2's C daemon prints a banner, not a version).
    #[serde(default)]
    pub version: String,
    /// `--print-capabilities` features (`migrate-precopy`, ...).
    #[serde(default)]
    pub features: Vec<String>,
    /// The daemon takes `--readonly` (the Rust virtiofsd since 1.13).
    #[serde(default)]
    pub readonly: bool,
}

/// What libvirt, QEMU and their helpers are, read once from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// libvirtd's version (what decides features), as the daemon reports it.
    #[serde(default)]
    pub libvirt: String,
    /// The client library phyllome is linked against; may differ from the daemon's.
    #[serde(default)]
    pub libvirt_library: String,
    /// QEMU's version, as libvirtd reports it.
    #[serde(default)]
    pub qemu: String,
    /// The host capabilities list `<externalSnapshot/>`: external snapshots can be reverted.
    #[serde(default)]
    pub external_snapshot: bool,
    #[serde(default)]
    pub swtpm: Option<Swtpm>,
    #[serde(default)]
    pub virtiofsd: Option<Virtiofsd>,
}

impl Platform {
    pub fn libvirt_version(&self) -> Version {
        Version::parse(&self.libvirt)
    }

    pub fn qemu_version(&self) -> Version {
        Version::parse(&self.qemu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_every_form_we_meet() {
        assert_eq!(Version::parse("9.0.0"), Version(9, 0, 0));
        assert_eq!(Version::parse("7.2"), Version(7, 2, 0));
        assert_eq!(Version::parse("1:10.0.2+ds-2+deb13u1~bpo12+1"), Version(10, 0, 2));
        assert_eq!(Version::parse("11.3.0-2~bpo12+1"), Version(11, 3, 0));
        assert_eq!(Version::parse("virtiofsd 1.14.0"), Version(1, 14, 0));
        assert_eq!(Version::parse("garbage"), Version(0, 0, 0));
        assert!(Version(10, 10, 0) > Version(10, 9, 3) && Version(9, 9, 0) < Version(10, 0, 0));
        assert_eq!(Version(11, 3, 0).to_string(), "11.3.0");
    }
}
