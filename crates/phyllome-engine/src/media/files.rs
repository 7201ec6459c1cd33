//! The host files a create request names, checked to be what they claim to be (with the
//! checks that need the host's file system: the model itself does no I/O), and whether
//! QEMU's user can read them.

use crate::errors::{Classify, ErrorKind};
use crate::media::magic::{self, Claim};
use phyllome_model::build::Request;
use phyllome_model::catalog::Family;
use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("{what} {path:?} does not exist")]
    Missing { what: &'static str, path: String },
    #[error("{what} {path:?} is not a regular file")]
    NotAFile { what: &'static str, path: String },
    #[error("{what} {path:?} cannot be read: {err}")]
    Unreadable { what: &'static str, path: String, err: String },
    #[error("{what} {path:?} is a block device that cannot be read ({err}): is a medium in the drive, and may this user open it?")]
    UnreadableDevice { what: &'static str, path: String, err: String },
    #[error("{what} {path:?} is not {expected}")]
    NotWhatItClaims { what: &'static str, path: String, expected: &'static str },
    #[error("{what} {path:?} is a kernel interface file, not a file a guest may be given")]
    KernelInterface { what: &'static str, path: String },
    #[error("{what} {path:?} cannot be read by QEMU's user {user} ({why}); Phyllome does not change its owner or mode. Make it readable (e.g. chmod o+r, and o+x on its folders), or copy it into /var/lib/phyllome/isos")]
    NotReadableByQemu { what: &'static str, path: String, user: String, why: String },
}

impl Classify for FileError {
    fn kind(&self) -> ErrorKind {
        match self {
            FileError::Missing { .. } => ErrorKind::NotFound,
            FileError::Unreadable { .. } | FileError::UnreadableDevice { .. } => ErrorKind::Failed,
            _ => ErrorKind::InvalidInput,
        }
    }
}

/// Opens the file a request names and checks that it is what it claims to be.
/// Symlinks are followed; what they lead to is what is checked.
fn check_file(what: &'static str, path: &str, claim: Claim) -> Result<(), FileError> {
    use std::os::unix::fs::FileTypeExt;
    let p = Path::new(path);
    let err = |e: std::io::Error| FileError::Unreadable { what, path: path.to_string(), err: e.to_string() };
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::Missing { what, path: path.to_string() })
        }
        Err(e) => return Err(err(e)),
    };
    let real = std::fs::canonicalize(p).map_err(err)?;
    if ["/proc", "/sys"].iter().any(|k| real.starts_with(k)) {
        return Err(FileError::KernelInterface { what, path: path.to_string() });
    }
    let block = meta.file_type().is_block_device();
    // A real drive (/dev/sr0) is fine as install media; anything else must be a regular file.
    if !(meta.is_file() || block && claim == Claim::Optical) {
        return Err(FileError::NotAFile { what, path: path.to_string() });
    }
    let mut f = std::fs::File::open(p).map_err(|e| {
        if block {
            FileError::UnreadableDevice { what, path: path.to_string(), err: e.to_string() }
        } else {
            err(e)
        }
    })?;
    let mut head = Vec::with_capacity(magic::HEAD);
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, magic::HEAD as u64), &mut head).map_err(|e| {
        if block {
            FileError::UnreadableDevice { what, path: path.to_string(), err: e.to_string() }
        } else {
            err(e)
        }
    })?;
    if !magic::check(claim, &head) {
        return Err(FileError::NotWhatItClaims { what, path: path.to_string(), expected: claim.expected() });
    }
    // Read-only installer media are given to QEMU as they are (libvirt is told not to
    // relabel them), so QEMU's own user must already be able to read them.
    if claim == Claim::Optical && !block {
        if let Some(user) = qemu_user() {
            if let Err(why) = readable_by(&real, &user) {
                return Err(FileError::NotReadableByQemu { what, path: path.to_string(), user: user.name, why });
            }
        }
    }
    Ok(())
}

/// Every file the request names must exist, be readable, and be what it claims to be.
pub fn check_files(req: &Request) -> Result<(), FileError> {
    let macos = phyllome_model::catalog::profile(&req.os).is_some_and(|p| p.family == Family::Macos);
    let mut files: Vec<(&'static str, &String, Claim)> = Vec::new();
    if let Some(p) = &req.iso {
        // macOS installs from a recovery disk image, not a CD.
        files.push(("ISO", p, if macos { Claim::DiskImage } else { Claim::Optical }));
    }
    if let Some(p) = &req.drivers {
        files.push(("driver ISO", p, Claim::Optical));
    }
    if let Some(p) = &req.opencore {
        files.push(("OpenCore image", p, Claim::DiskImage));
    }
    if let Some(b) = &req.direct_boot {
        files.push(("kernel", &b.kernel, Claim::Kernel));
        if let Some(i) = &b.initrd {
            files.push(("initrd", i, Claim::Initrd));
        }
    }
    for (what, path, claim) in files {
        // Relative paths are refused by the model with a clearer message.
        if path.starts_with('/') {
            check_file(what, path, claim)?;
        }
    }
    Ok(())
}

/// The user QEMU runs as under libvirt's system instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    pub name: String,
    pub uid: u32,
    pub gids: Vec<u32>,
}

/// `user = "…"` in qemu.conf, else the distribution's default (Debian's
/// libvirt-qemu, Fedora's qemu), resolved through /etc/passwd and /etc/group.
pub fn qemu_user() -> Option<QemuUser> {
    let conf = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    parse_qemu_user(&conf, &passwd, &group)
}

pub fn parse_qemu_user(qemu_conf: &str, passwd: &str, group: &str) -> Option<QemuUser> {
    let configured = qemu_conf.lines().map(str::trim).find_map(|l| {
        let v = l.strip_prefix("user")?.trim_start().strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_string())
    });
    let entry =
        |name: &str| passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 3 && f[0] == name);
    let (name, fields) = match configured {
        Some(n) if n.starts_with('+') => return None, // a numeric uid: not worth guessing its groups
        Some(n) => (n.clone(), entry(&n)?),
        None => ["libvirt-qemu", "qemu"].iter().find_map(|n| entry(n).map(|f| (n.to_string(), f)))?,
    };
    let uid = fields[2].parse().ok()?;
    let mut gids = vec![fields[3].parse().ok()?];
    for g in group.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() > 3) {
        if g[3].split(',').any(|m| m == name) {
            if let Ok(gid) = g[2].parse() {
                gids.push(gid);
            }
        }
    }
    Some(QemuUser { name, uid, gids })
}

/// Whether DAC lets `user` do `want` (4 read, 1 search) on a file of that mode and owner.
pub fn dac_allows(mode: u32, owner: u32, group: u32, user: &QemuUser, want: u32) -> bool {
    let bits = if user.uid == 0 {
        return true;
    } else if owner == user.uid {
        mode >> 6
    } else if user.gids.contains(&group) {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// Whether `user` can read `path`: search on every folder above it, read on the file.
fn readable_by(path: &Path, user: &QemuUser) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !dac_allows(m.mode(), m.uid(), m.gid(), user, 4) {
        return Err(format!("mode {:o}, owner {}:{}", m.mode() & 0o7777, m.uid(), m.gid()));
    }
    for dir in path.ancestors().skip(1) {
        let d = std::fs::metadata(dir).map_err(|e| e.to_string())?;
        if !dac_allows(d.mode(), d.uid(), d.gid(), user, 1) {
            return Err(format!(
                "folder {} has mode {:o}, owner {}:{}",
                dir.display(),
                d.mode() & 0o7777,
                d.uid(),
                d.gid()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_iso_is_named() {
        let req = Request { iso: Some("/nonexistent/x.iso".into()), ..Default::default() };
        assert_eq!(check_files(&req), Err(FileError::Missing { what: "ISO", path: "/nonexistent/x.iso".into() }));
        let req = Request { iso: Some("/".into()), ..Default::default() };
        assert!(matches!(check_files(&req), Err(FileError::NotAFile { .. })));
    }

    #[test]
    fn qemu_user_from_config_or_distribution_default() {
        let passwd = "root:x:0:0::/root:/bin/bash\nlibvirt-qemu:x:64055:108::/var/lib/libvirt:/usr/sbin/nologin\nqemu:x:107:107::/:/sbin/nologin\n";
        let group = "kvm:x:104:libvirt-qemu\nlibvirt-qemu:x:64055:\nqemu:x:107:\n";
        let u = parse_qemu_user("#user = \"root\"\n", passwd, group).unwrap();
        assert_eq!((u.name.as_str(), u.uid, u.gids.clone()), ("libvirt-qemu", 64055, vec![108, 104]));
        let q = parse_qemu_user("user = \"qemu\"\n", passwd, group).unwrap();
        assert_eq!((q.name.as_str(), q.uid), ("qemu", 107));
        assert_eq!(parse_qemu_user("", "root:x:0:0::/:/bin/sh\n", ""), None);
    }

    #[test]
    fn dac_by_owner_group_and_others() {
        let u = QemuUser { name: "libvirt-qemu".into(), uid: 64055, gids: vec![108] };
        assert!(dac_allows(0o100644, 0, 0, &u, 4), "world-readable");
        assert!(!dac_allows(0o100600, 0, 0, &u, 4), "root-only");
        assert!(!dac_allows(0o100640, 0, 42, &u, 4), "another group");
        assert!(dac_allows(0o100640, 0, 108, &u, 4), "its group");
        assert!(dac_allows(0o100400, 64055, 0, &u, 4), "its own");
        assert!(!dac_allows(0o40700, 0, 0, &u, 1), "a private folder");
        assert!(dac_allows(0o40711, 0, 0, &u, 1), "a searchable folder");
    }

    #[test]
    fn host_files_that_are_not_media_are_refused() {
        let iso = |p: &str| Request { os: "linux".into(), iso: Some(p.into()), ..Default::default() };
        assert!(matches!(check_files(&iso("/etc/shadow")), Err(FileError::NotWhatItClaims { .. })));
        assert!(matches!(check_files(&iso("/proc/self/environ")), Err(FileError::KernelInterface { .. })));
        let dir = std::env::temp_dir().join(format!("phyllome-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("innocent.iso");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
        assert!(matches!(check_files(&iso(link.to_str().unwrap())), Err(FileError::KernelInterface { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
