//! Which profile an install ISO wants, from its volume descriptor: Phyllome's
//! own table for the OSes it models. It comes before osinfo-db (which the
//! engine also consults where it is installed), because distributions ship
//! osinfo-db years old: Debian 12's has no Debian 12.
//!
//! The patterns are the ones the media carry (most as osinfo-db records
//! them), anchored, and case-insensitive only where the media vary.

use regex::Regex;
use serde::Serialize;
use std::sync::OnceLock;

/// The primary volume descriptor's identifiers a rule may look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    VolumeId,
    SystemId,
    PublisherId,
    ApplicationId,
}

impl Field {
    pub fn label(self) -> &'static str {
        match self {
            Field::VolumeId => "volume id",
            Field::SystemId => "system id",
            Field::PublisherId => "publisher id",
            Field::ApplicationId => "application id",
        }
    }
}

/// A detection: the profile, the OS in words, and the field and value that told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detected {
    pub os: &'static str,
    pub name: String,
    pub field: Field,
    pub value: String,
    /// `phyllome` (this table) or `osinfo-db`.
    pub source: &'static str,
}

struct Rule {
    /// `{1}` is replaced by the first capture group (a version).
    name: &'static str,
    os: &'static str,
    when: &'static [(Field, &'static str)],
}

const RULES: &[Rule] = &[
    // Windows 10 22H2 and Windows 11 install ISOs share their volume ids (osinfo-db has the
    // same pattern for both): the windows11 profile runs either, with TPM and secure boot.
    Rule {
        name: "Windows 11 (or 10: their ISOs share volume ids)",
        os: "windows11",
        when: &[(Field::VolumeId, r"^(J_)?(CCSN?A|C?CCOMA)_X64FREE?_"), (Field::PublisherId, r"^MICROSOFT")],
    },
    Rule {
        name: "Windows 10",
        os: "windows10",
        when: &[(Field::VolumeId, r"^(J_)?(CENN?A|CPBA|CESN?N?)_X64FREV?_"), (Field::PublisherId, r"^MICROSOFT")],
    },
    Rule { name: "Windows Server", os: "windows-server", when: &[(Field::VolumeId, r"^SSS_X64FREE?V?_")] },
    Rule {
        name: "Windows Server (evaluation)",
        os: "windows-server",
        when: &[(Field::VolumeId, r"(?i)_SERVER_?EVAL_X64FRE")],
    },
    Rule { name: "Debian {1}", os: "linux", when: &[(Field::VolumeId, r"^Debian (\d+)(\.\d+)* (amd64|i386)")] },
    Rule { name: "Ubuntu {1}", os: "linux", when: &[(Field::VolumeId, r"^Ubuntu(?:-Server)? (\d+\.\d+)")] },
    Rule {
        name: "Fedora {1}",
        os: "linux",
        when: &[(Field::VolumeId, r"^Fedora-[A-Za-z]+-(?:[A-Za-z]+-)*?(?:x86_64-)?(\d+)")],
    },
    Rule { name: "Arch Linux", os: "linux", when: &[(Field::VolumeId, r"^ARCH_\d{6}")] },
    Rule { name: "openSUSE", os: "linux", when: &[(Field::VolumeId, r"^openSUSE")] },
    Rule { name: "FreeBSD {1}", os: "freebsd", when: &[(Field::VolumeId, r"^(\d+_\d+)_RELEASE_AMD64_")] },
    Rule { name: "FreeBSD", os: "freebsd", when: &[(Field::SystemId, r"^FreeBSD$")] },
    Rule { name: "OpenBSD {1}", os: "openbsd", when: &[(Field::VolumeId, r"^OpenBSD/amd64 +(\d+\.\d+)")] },
    Rule { name: "NetBSD {1}", os: "netbsd", when: &[(Field::VolumeId, r"(?i)^NetBSD[_ -]?(\d+(?:\.\d+)?)")] },
    Rule { name: "NetBSD", os: "netbsd", when: &[(Field::SystemId, r"^NetBSD$")] },
    Rule { name: "ReactOS", os: "legacy", when: &[(Field::VolumeId, r"(?i)^ReactOS")] },
];

fn compiled() -> &'static Vec<Vec<(Field, Regex)>> {
    static C: OnceLock<Vec<Vec<(Field, Regex)>>> = OnceLock::new();
    C.get_or_init(|| {
        RULES
            .iter()
            .map(|r| r.when.iter().map(|(f, p)| (*f, Regex::new(p).expect("the table's patterns compile"))).collect())
            .collect()
    })
}

/// The identifiers, as [`detect`] reads them.
pub trait Ids {
    fn get(&self, f: Field) -> &str;
}

/// The profile Phyllome's table finds for these identifiers, if any.
pub fn detect(ids: &impl Ids) -> Option<Detected> {
    for (rule, when) in RULES.iter().zip(compiled()) {
        let mut version = None;
        if when.iter().all(|(f, re)| match re.captures(ids.get(*f)) {
            Some(c) => {
                if version.is_none() {
                    version = c.get(1).map(|m| m.as_str().replace('_', "."));
                }
                true
            }
            None => false,
        }) {
            let (field, _) = when[0];
            let name = rule.name.replace("{1}", version.as_deref().unwrap_or("")).trim().to_string();
            return Some(Detected { os: rule.os, name, field, value: ids.get(field).to_string(), source: "phyllome" });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T<'a>(&'a str, &'a str, &'a str);
    impl Ids for T<'_> {
        fn get(&self, f: Field) -> &str {
            match f {
                Field::VolumeId => self.0,
                Field::SystemId => self.1,
                Field::PublisherId => self.2,
                Field::ApplicationId => "",
            }
        }
    }

    fn os(v: &str, s: &str, p: &str) -> Option<(&'static str, String)> {
        detect(&T(v, s, p)).map(|d| (d.os, d.name))
    }

    #[test]
    fn the_media_of_every_modelled_os_are_known() {
        let ms = "MICROSOFT CORPORATION";
        assert_eq!(os("CCCOMA_X64FRE_EN-US_DV9", "", ms).unwrap().0, "windows11");
        assert_eq!(os("CPBA_X64FRE_EN-US_DV5", "", ms).unwrap().0, "windows10");
        assert_eq!(os("SSS_X64FREE_EN-US_DV9", "", ms).unwrap().0, "windows-server");
        assert_eq!(
            os("17763.737.190906-2324.rs5_release_svc_refresh_SERVER_EVAL_x64FRE_en-us_1", "", ms).unwrap().0,
            "windows-server"
        );
        assert_eq!(os("Debian 12.8.0 amd64 n", "", ""), Some(("linux", "Debian 12".into())));
        assert_eq!(os("Ubuntu 24.04.1 LTS amd64", "", ""), Some(("linux", "Ubuntu 24.04".into())));
        assert_eq!(os("Fedora-WS-Live-42-1-1", "LINUX", ""), Some(("linux", "Fedora 42".into())));
        assert_eq!(os("Fedora-S-dvd-x86_64-42", "LINUX", ""), Some(("linux", "Fedora 42".into())));
        assert_eq!(os("ARCH_202411", "", "").unwrap().0, "linux");
        assert_eq!(os("openSUSE-Tumbleweed-DVD-x86_64", "", "").unwrap().0, "linux");
        assert_eq!(os("14_1_RELEASE_AMD64_CD", "FreeBSD", ""), Some(("freebsd", "FreeBSD 14.1".into())));
        assert_eq!(os("OpenBSD/amd64   7.6 Install CD", "", ""), Some(("openbsd", "OpenBSD 7.6".into())));
        assert_eq!(os("NETBSD_100", "NetBSD", "").unwrap().0, "netbsd");
        assert_eq!(os("ReactOS", "", "").unwrap().0, "legacy");
    }

    #[test]
    fn look_alikes_are_not_taken() {
        assert_eq!(os("CCCOMA_X64FRE_EN-US_DV9", "", "SOMEONE ELSE"), None, "a Windows volume id needs Microsoft");
        assert_eq!(os("my backup", "LINUX", ""), None);
        assert_eq!(os("Debian 12.8.0 arm64 n", "", ""), None, "not for this architecture");
        assert_eq!(os("", "", ""), None);
    }
}
