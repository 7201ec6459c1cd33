//! Shared folders (virtiofs): `phyllome share add|list|remove` and
//! `create --share`. Read-only unless asked; refused for the host's own
//! critical folders and for folders holding a VM's disk; the shared memory a
//! share needs is added with it.

use crate::errors::{Classify, ErrorKind};
use phyllome_libvirt::Libvirt;
use phyllome_model::domain::Share;
use phyllome_model::Feature;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share: {0}")]
    Bad(String),
    #[error("no VM named {0:?}")]
    NoSuchVm(String),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Host(#[from] crate::host_facts::HostError),
    #[error(transparent)]
    Build(#[from] phyllome_model::build::BuildError),
    #[error(transparent)]
    NotHere(#[from] crate::host_files::NotHere),
}

impl Classify for ShareError {
    fn kind(&self) -> ErrorKind {
        match self {
            ShareError::Bad(_) => ErrorKind::InvalidInput,
            ShareError::NoSuchVm(_) => ErrorKind::NotFound,
            ShareError::Libvirt(e) => e.kind(),
            ShareError::Host(e) => e.kind(),
            ShareError::Build(e) => e.kind(),
            ShareError::NotHere(e) => e.kind(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ShareError>;

/// Folders never shared without `--force`, nor anything inside them: the
/// host's configuration, boot and root's home, its programs and libraries,
/// the kernel's interfaces and devices, libvirt's state and sockets, and
/// Phyllome's own (with the ISO folder).
pub const CRITICAL: &[&str] = &[
    "/etc",
    "/boot",
    "/root",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/proc",
    "/sys",
    "/dev",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/lib/phyllome",
];

/// The host's system folders that are refused themselves (and so is any
/// folder holding them), though a folder inside them may be shared (`/var/www`).
pub const SYSTEM: &[&str] = &["/var", "/run", "/srv", "/home", "/mnt", "/media", "/tmp"];

/// virtiofs tags are at most 36 bytes.
const MAX_TAG: usize = 36;

/// Why sharing `dir` would expose the host, if it would: `dir` is, holds, or
/// lies inside a critical folder, is or holds a system folder, or is or holds
/// one of `disks` (VM disk images and variable stores).
pub fn critical(dir: &Path, disks: &[PathBuf]) -> Option<String> {
    if dir == Path::new("/") {
        return Some("/ is the whole host".into());
    }
    for c in CRITICAL.iter().chain(SYSTEM).map(Path::new) {
        if dir == c {
            return Some(format!("{} is one of the host's own folders", dir.display()));
        }
        if c.starts_with(dir) {
            return Some(format!("{} holds {}", dir.display(), c.display()));
        }
    }
    if let Some(c) = CRITICAL.iter().map(Path::new).find(|c| dir.starts_with(c)) {
        return Some(format!("{} is inside {}", dir.display(), c.display()));
    }
    disks.iter().find(|d| d.starts_with(dir)).map(|d| format!("{} holds the VM disk {}", dir.display(), d.display()))
}

/// A tag from a folder's name: letters, digits, `-` and `_`, at most 36.
pub fn default_tag(dir: &Path) -> String {
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "share".into());
    let t: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(MAX_TAG).collect();
    if t.is_empty() {
        "share".into()
    } else {
        t
    }
}

pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ShareError::Bad(format!("tag {tag:?}: 1 to {MAX_TAG} letters, digits, '-' or '_'")))
    }
}

/// `--share HOSTDIR[:TAG][:rw]`.
pub fn parse_spec(spec: &str) -> Result<(String, Option<String>, bool)> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    let writable = parts.len() > 1 && parts.last() == Some(&"rw");
    if writable {
        parts.pop();
    }
    match parts.as_slice() {
        [dir] => Ok((dir.to_string(), None, writable)),
        [dir, tag] => Ok((dir.to_string(), Some(tag.to_string()), writable)),
        _ => Err(ShareError::Bad(format!("--share {spec:?}: HOSTDIR[:TAG][:rw]"))),
    }
}

/// The checked share for `dir`: an existing absolute folder, not critical
/// unless `force`, with a valid tag.
pub fn resolve(lv: &Libvirt, dir: &str, tag: Option<&str>, writable: bool, force: bool) -> Result<Share> {
    crate::host_files::here_only(lv, "sharing a folder (the folder is checked on this machine)")?;
    if !dir.starts_with('/') {
        return Err(ShareError::Bad(format!("{dir:?}: give the folder's absolute path")));
    }
    let real = std::fs::canonicalize(dir).map_err(|e| ShareError::Bad(format!("{dir}: {e}")))?;
    if !real.is_dir() {
        return Err(ShareError::Bad(format!("{dir} is not a folder")));
    }
    if !force {
        guard(&real, &vm_disks(lv)?)?;
    }
    let tag = tag.map(str::to_string).unwrap_or_else(|| default_tag(&real));
    validate_tag(&tag)?;
    Ok(Share { dir: real.display().to_string(), tag, readonly: !writable })
}

/// `share add`'s refusal of a folder [`critical`] names (what `--force` overrides).
pub fn guard(dir: &Path, disks: &[PathBuf]) -> Result<()> {
    match critical(dir, disks) {
        Some(why) => {
            Err(ShareError::Bad(format!("{why}: sharing it would expose the host (--force to share it anyway)")))
        }
        None => Ok(()),
    }
}

/// Where every domain keeps its disks and UEFI variables: `<source file=...>`,
/// and pool volumes (`<source pool=... volume=...>`, Phyllome's own disks)
/// resolved through their pool, each with its symlinks resolved.
pub fn vm_disks(lv: &Libvirt) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut volumes: Vec<(String, String)> = Vec::new();
    for d in lv.list_all()? {
        let Ok(s) = crate::domxml::parse(&d.xml) else { continue };
        for disk in &s.disks {
            match (&disk.file, &disk.pool, &disk.volume) {
                (Some(f), _, _) => files.push(f.clone()),
                (None, Some(p), Some(v)) => volumes.push((p.clone(), v.clone())),
                _ => {}
            }
        }
        files.extend(s.nvram.map(|n| n.path));
    }
    // One listing a pool; a volume the pool no longer lists is where the pool would keep it.
    // A pool's folder, and its volumes' names and paths.
    type Pool = (Option<String>, Vec<(String, String)>);
    let mut pools: std::collections::BTreeMap<String, Pool> = Default::default();
    for (pool, volume) in volumes {
        if !pools.contains_key(&pool) {
            let listed = lv.volumes(&pool)?.into_iter().map(|(n, v)| (n, v.path)).collect();
            pools.insert(pool.clone(), (lv.pool_path(&pool)?, listed));
        }
        let (dir, listed) = &pools[&pool];
        match listed.iter().find(|(n, _)| *n == volume) {
            Some((_, path)) => files.push(path.clone()),
            None => files.extend(dir.as_ref().map(|d| format!("{}/{volume}", d.trim_end_matches('/')))),
        }
    }
    Ok(files.into_iter().map(|f| std::fs::canonicalize(&f).unwrap_or_else(|_| PathBuf::from(f))).collect())
}

/// One share of a VM.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareRow {
    pub tag: String,
    pub dir: String,
    pub readonly: bool,
}

/// The virtiofs shares of a domain's XML.
pub fn shares_of(xml: &str) -> Vec<ShareRow> {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    doc.descendants()
        .filter(|n| n.has_tag_name("filesystem"))
        .filter(|n| n.children().any(|c| c.has_tag_name("driver") && c.attribute("type") == Some("virtiofs")))
        .filter_map(|n| {
            let child = |t: &str| n.children().find(|c| c.has_tag_name(t));
            Some(ShareRow {
                tag: child("target")?.attribute("dir")?.to_string(),
                dir: child("source")?.attribute("dir")?.to_string(),
                readonly: child("readonly").is_some(),
            })
        })
        .collect()
}

/// The inactive XML with the shared memory backing added, when it is missing;
/// None when it is there already. Refused when a memory backing of another kind is set.
pub fn with_shared_memory(xml: &str) -> Result<Option<String>> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| ShareError::Bad(format!("the domain's XML: {e}")))?;
    let root = doc.root_element();
    if let Some(mb) = root.children().find(|c| c.has_tag_name("memoryBacking")) {
        let shared = mb.children().any(|c| c.has_tag_name("access") && c.attribute("mode") == Some("shared"));
        return if shared {
            Ok(None)
        } else {
            Err(ShareError::Bad(
                "the VM has its own <memoryBacking> without <access mode='shared'/>, which virtiofs needs: add it with virsh edit".into(),
            ))
        };
    }
    let at = root
        .children()
        .find(|c| c.has_tag_name("vcpu"))
        .map(|v| v.range().start)
        .ok_or_else(|| ShareError::Bad("the domain's XML has no <vcpu>".into()))?;
    let block = phyllome_model::domain::shared_memory().render();
    Ok(Some(format!("{}{}\n  {}", &xml[..at], block.trim_end(), &xml[at..])))
}

/// What `share add` / `share remove` did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareChange {
    pub vm: String,
    pub tag: String,
    pub dir: String,
    pub readonly: bool,
    /// `now` (the running VM has it too) or `next boot`.
    pub applies: &'static str,
    /// Why it does not apply now, when the VM runs.
    pub why_not_now: Option<String>,
}

fn share_xml(s: &Share) -> String {
    let mut d = phyllome_model::domain::Domain::share_element(s).render();
    d.truncate(d.trim_end().len());
    d
}

/// `phyllome share add VM HOSTDIR`.
pub fn add(lv: &Libvirt, vm: &str, dir: &str, tag: Option<&str>, writable: bool, force: bool) -> Result<ShareChange> {
    if !lv.exists(vm)? {
        return Err(ShareError::NoSuchVm(vm.to_string()));
    }
    let share = resolve(lv, dir, tag, writable, force)?;
    let (host, _) = crate::host_facts::gather(lv, false)?;
    host.check(if share.readonly { Feature::ReadonlyVirtiofs } else { Feature::Virtiofs })
        .map_err(phyllome_model::build::BuildError::from)?;
    let inactive = lv.inactive_xml(vm)?;
    if shares_of(&inactive).iter().any(|s| s.tag == share.tag) {
        return Err(ShareError::Bad(format!("{vm} already has a share tagged {}: give another --tag", share.tag)));
    }
    if let Some(edited) = with_shared_memory(&inactive)? {
        lv.redefine(&edited)?;
    }
    let applied = lv.attach_device(vm, &share_xml(&share))?;
    Ok(ShareChange {
        vm: vm.to_string(),
        tag: share.tag,
        dir: share.dir,
        readonly: share.readonly,
        applies: if !applied.running || applied.live { "now" } else { "next boot" },
        why_not_now: applied.live_error,
    })
}

/// `phyllome share list VM`: from the definition (what the next boot has).
pub fn list(lv: &Libvirt, vm: &str) -> Result<Vec<ShareRow>> {
    if !lv.exists(vm)? {
        return Err(ShareError::NoSuchVm(vm.to_string()));
    }
    Ok(shares_of(&lv.inactive_xml(vm)?))
}

/// `phyllome share remove VM TAG`. The shared memory stays (harmless, and
/// other shares may need it).
pub fn remove(lv: &Libvirt, vm: &str, tag: &str) -> Result<ShareChange> {
    let rows = list(lv, vm)?;
    let Some(row) = rows.into_iter().find(|s| s.tag == tag) else {
        return Err(ShareError::Bad(format!("{vm} has no share tagged {tag} (phyllome share list {vm})")));
    };
    let share = Share { dir: row.dir.clone(), tag: row.tag.clone(), readonly: row.readonly };
    let mut applied = lv.detach_device(vm, &share_xml(&share))?;
    if applied.live {
        // libvirt asks the guest to let the device go and returns: it is gone
        // when the guest agrees (its virtiofsd stops then), which a guest may never do.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let still = || lv.xml(vm).map(|x| shares_of(&x).iter().any(|s| s.tag == tag)).unwrap_or(false);
        while still() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        if still() {
            applied.live = false;
            applied.live_error = Some(
                "the guest has not released the device yet: its virtiofsd runs until it does, or until the VM stops"
                    .into(),
            );
        }
    }
    Ok(ShareChange {
        vm: vm.to_string(),
        tag: row.tag,
        dir: row.dir,
        readonly: row.readonly,
        applies: if !applied.running || applied.live { "now" } else { "next boot" },
        why_not_now: applied.live_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_folders_and_disk_holders_are_refused() {
        let disks = vec![PathBuf::from("/srv/vms/a.qcow2")];
        for d in [
            "/",
            "/etc",
            "/etc/ssh",
            "/boot",
            "/root/x",
            "/var/lib/libvirt/images",
            "/var",
            "/var/lib",
            "/var/lib/phyllome/isos",
            "/srv",
            "/srv/vms",
            "/srv/vms/a.qcow2",
            // The host's programs, libraries and kernel interfaces, and libvirt's sockets.
            "/usr",
            "/usr/local/share",
            "/bin",
            "/sbin",
            "/lib",
            "/lib64",
            "/opt",
            "/opt/tool",
            "/proc",
            "/proc/1",
            "/sys",
            "/dev",
            "/dev/shm",
            "/run",
            "/run/libvirt",
            "/run/libvirt/qemu",
            "/tmp",
            "/home",
        ] {
            assert!(critical(Path::new(d), &disks).is_some(), "{d}");
        }
        for d in ["/srv/data", "/home/me/share", "/var/tmp/x", "/var/www", "/etcetera", "/tmp/x", "/run/media/me/usb"] {
            assert_eq!(critical(Path::new(d), &disks), None, "{d}");
        }
        // Above a VM's disk, however far up.
        let deep = vec![PathBuf::from("/tmp/a/b/c/vm.qcow2")];
        for d in ["/tmp/a", "/tmp/a/b/c"] {
            assert!(critical(Path::new(d), &deep).unwrap().contains("VM disk"), "{d}");
        }
        assert_eq!(critical(Path::new("/tmp/a/other"), &deep), None);
    }

    #[test]
    fn specs_and_tags() {
        assert_eq!(parse_spec("/data").unwrap(), ("/data".into(), None, false));
        assert_eq!(parse_spec("/data:docs").unwrap(), ("/data".into(), Some("docs".into()), false));
        assert_eq!(parse_spec("/data:docs:rw").unwrap(), ("/data".into(), Some("docs".into()), true));
        assert_eq!(parse_spec("/data:rw").unwrap(), ("/data".into(), None, true));
        assert!(parse_spec("/a:b:c:d").is_err());
        assert_eq!(default_tag(Path::new("/home/me/My Photos")), "My_Photos");
        assert!(validate_tag("ok-tag_1").is_ok());
        assert!(validate_tag("").is_err() && validate_tag("a b").is_err() && validate_tag(&"x".repeat(37)).is_err());
    }

    #[test]
    fn shared_memory_is_added_once_and_shares_read_back() {
        let xml = "<domain type='qemu'>\n  <name>x</name>\n  <memory unit='KiB'>524288</memory>\n  <vcpu placement='static'>1</vcpu>\n  <devices>\n    <filesystem type='mount' accessmode='passthrough'>\n      <driver type='virtiofs'/>\n      <source dir='/srv/data'/>\n      <target dir='data'/>\n      <readonly/>\n    </filesystem>\n  </devices>\n</domain>";
        let edited = with_shared_memory(xml).unwrap().unwrap();
        assert!(
            edited.contains("<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>")
                || edited.contains("memfd"),
            "{edited}"
        );
        roxmltree::Document::parse(&edited).unwrap();
        assert_eq!(with_shared_memory(&edited).unwrap(), None, "not twice");
        let other = xml.replace("<vcpu", "<memoryBacking><hugepages/></memoryBacking><vcpu");
        assert!(with_shared_memory(&other).is_err(), "a custom backing is not overwritten");
        let rows = shares_of(xml);
        assert_eq!(
            (rows.len(), rows[0].tag.as_str(), rows[0].dir.as_str(), rows[0].readonly),
            (1, "data", "/srv/data", true)
        );
    }
}
