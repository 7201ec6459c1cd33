//! The host's ISO folder (`phyllome iso list|add|remove`, and the web UI's
//! uploads): install media by file name, each checked to be an ISO, with the
//! OS it holds. A copy lands whole or not at all: it is written beside its
//! final name, hashed as it goes, and renamed only once complete.

use crate::errors::{Classify, ErrorKind};
use crate::media::iso::{self, Boot};
use crate::op::progress::{Progress, Report};
use phyllome_libvirt::Libvirt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum IsoDirError {
    #[error("{0}")]
    BadName(String),
    #[error("{0} is not an ISO image ({1})")]
    NotIso(String, String),
    #[error("{0} is already in the ISO folder: remove it first (phyllome iso remove {0})")]
    Exists(String),
    #[error("no {0} in the ISO folder (phyllome iso list shows it)")]
    Missing(String),
    #[error("{name} is used by VM {vm}: it stays")]
    InUse { name: String, vm: String },
    #[error("{0} does not exist")]
    NoFile(String),
    #[error(
        "{name} needs {need} MiB: the ISO folder's file system has {free} MiB free, and keeps {spare} MiB of it \
         spare (a full host file system hurts every VM on it){}",
        under_way(*.held)
    )]
    NoSpace { name: String, need: u64, free: u64, spare: u64, held: u64 },
    #[error("the ISO folder's file system filled up while {0} was written: the partial copy was removed")]
    Full(String),
    #[error("interrupted: the partial copy was removed")]
    Interrupted,
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
}

impl Classify for IsoDirError {
    fn kind(&self) -> ErrorKind {
        match self {
            IsoDirError::BadName(_) | IsoDirError::NotIso(..) => ErrorKind::InvalidInput,
            IsoDirError::NoSpace { .. } | IsoDirError::Full { .. } => ErrorKind::NoSpace,
            IsoDirError::Exists(_) | IsoDirError::InUse { .. } => ErrorKind::Conflict,
            IsoDirError::Missing(_) | IsoDirError::NoFile(_) => ErrorKind::NotFound,
            IsoDirError::Interrupted => ErrorKind::Interrupted,
            IsoDirError::Libvirt(e) => e.kind(),
            IsoDirError::Io(..) => ErrorKind::Failed,
        }
    }
}

pub type Result<T> = std::result::Result<T, IsoDirError>;

fn under_way(held_mib: u64) -> String {
    if held_mib == 0 {
        String::new()
    } else {
        format!(", and {held_mib} MiB are held for the copies under way")
    }
}

/// Space left free on the ISO folder's file system: a full host file system hurts every VM on it.
pub const SPARE: u64 = 64 << 20;

/// What copies under way in this process still have to write, per file
/// system (its device number): free space does not count it yet, so a copy
/// checked while others run is checked against free space less this. The web
/// server is one process, so this covers its concurrent uploads.
static UNDER_WAY: std::sync::Mutex<Vec<Held>> = std::sync::Mutex::new(Vec::new());

struct Held {
    id: u64,
    dev: u64,
    left: u64,
}

/// The space one copy holds until it is dropped.
struct Reservation {
    id: u64,
}

fn under_way_lock() -> std::sync::MutexGuard<'static, Vec<Held>> {
    UNDER_WAY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reservation {
    /// Holds `size` bytes on `dir`'s file system when `free` (its free space now), less
    /// what other copies there still hold, leaves `SPARE` beside it.
    fn take(dir: &Path, name: &str, size: u64, free: impl FnOnce() -> std::io::Result<u64>) -> Result<Reservation> {
        use std::os::unix::fs::MetadataExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let io = |e: std::io::Error| IsoDirError::Io(dir.display().to_string(), e);
        let dev = std::fs::metadata(dir).map_err(io)?.dev();
        // Checked and held under one lock, so two copies never both count the same bytes.
        let mut all = under_way_lock();
        let free = free().map_err(io)?;
        let held: u64 = all.iter().filter(|h| h.dev == dev).map(|h| h.left).sum();
        if size.saturating_add(SPARE).saturating_add(held) > free {
            return Err(IsoDirError::NoSpace {
                name: name.to_string(),
                need: size.div_ceil(1 << 20),
                free: free >> 20,
                spare: SPARE >> 20,
                held: held.div_ceil(1 << 20),
            });
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        all.push(Held { id, dev, left: size });
        Ok(Reservation { id })
    }

    /// `n` more bytes are written (and so counted by free space).
    fn wrote(&self, n: u64) {
        if let Some(h) = under_way_lock().iter_mut().find(|h| h.id == self.id) {
            h.left = h.left.saturating_sub(n);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        under_way_lock().retain(|h| h.id != self.id);
    }
}

/// Out of space (or quota) on the way: said as such, not as an I/O error naming a file.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A safe name for a file in the ISO folder, from whatever a user or a
/// browser gave: the last path part, characters outside `A-Za-z0-9._+-`
/// replaced by `_`, no leading dot, at most 128 characters, ending in `.iso`.
pub fn sanitize(raw: &str) -> Result<String> {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') { c } else { '_' })
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    if !name.to_ascii_lowercase().ends_with(".iso") {
        return Err(IsoDirError::BadName(format!("{raw:?}: an ISO's file name ends in .iso")));
    }
    if name.len() <= 4 || name.len() > 128 {
        return Err(IsoDirError::BadName(format!("{raw:?}: a name of 1 to 124 characters before .iso")));
    }
    Ok(name)
}

/// One ISO of the folder.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IsoFile {
    pub name: String,
    pub size_bytes: u64,
    pub volume_id: Option<String>,
    /// The profile detected from it.
    pub os: Option<String>,
    /// The OS in words.
    pub os_name: Option<String>,
    pub boot: Option<Boot>,
    pub virtio_win: bool,
    /// Why it is not a usable ISO, when it is not.
    pub problem: Option<String>,
}

/// An ISO file as `list` shows it: what it holds, or why it is not a usable ISO.
pub fn describe(path: &Path) -> IsoFile {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    described(name, size_bytes, iso::inspect(path))
}

fn described(name: String, size_bytes: u64, inspected: std::result::Result<iso::IsoInfo, iso::IsoError>) -> IsoFile {
    match inspected {
        Ok(info) => {
            let d = iso::detect(&info);
            IsoFile {
                name,
                size_bytes,
                volume_id: Some(info.ids.volume_id),
                os: d.as_ref().map(|d| d.os.to_string()),
                os_name: d.map(|d| d.name),
                boot: Some(info.boot),
                virtio_win: info.virtio_win,
                problem: None,
            }
        }
        Err(e) => IsoFile {
            name,
            size_bytes,
            volume_id: None,
            os: None,
            os_name: None,
            boot: None,
            virtio_win: false,
            problem: Some(e.to_string()),
        },
    }
}

/// The `.iso` files of the folder (none when it does not exist yet).
pub fn list(dir: &Path) -> Result<Vec<IsoFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IsoDirError::Io(dir.display().to_string(), e)),
    };
    let mut out: Vec<IsoFile> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n.to_ascii_lowercase().ends_with(".iso"))
        .map(|n| describe(&dir.join(n)))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What `add` made.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Added {
    pub path: String,
    pub sha256: String,
    #[serde(flatten)]
    pub iso: IsoFile,
}

/// The partial file of a copy, removed unless the copy completes.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `source` into the folder as `name`: refused before any byte is
/// written when the name is taken or the space is short; hashed (SHA-256) as
/// it is written; checked to be an ISO once complete; renamed into place only
/// then. `interrupted` stops it between blocks. Memory is one 1 MiB buffer.
pub fn receive(
    dir: &Path,
    name: &str,
    size: Option<u64>,
    source: &mut dyn Read,
    interrupted: &AtomicBool,
    progress: Report<'_>,
) -> Result<Added> {
    let name = sanitize(name)?;
    let io = |what: &Path, e: std::io::Error| IsoDirError::Io(what.display().to_string(), e);
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let target = dir.join(&name);
    if target.exists() {
        return Err(IsoDirError::Exists(name));
    }
    let held = match size {
        Some(size) => Some(Reservation::take(dir, &name, size, || fs4::available_space(dir))?),
        None => None,
    };
    let part_path = dir.join(format!(".{name}.part"));
    // The partial file is the folder's own business: errors name the copy, not it.
    let copying = |e: std::io::Error| {
        if is_full(&e) {
            IsoDirError::Full(name.clone())
        } else {
            IsoDirError::Io(format!("writing {name} into the ISO folder"), e)
        }
    };
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&part_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            IsoDirError::Exists(name.clone())
        } else {
            copying(e)
        }
    })?;
    let part = Partial(Some(part_path.clone()));
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    let total = size.unwrap_or(0);
    loop {
        if interrupted.load(Ordering::Relaxed) {
            return Err(IsoDirError::Interrupted);
        }
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(Path::new(&name), e)),
        };
        out.write_all(&buf[..n]).map_err(copying)?;
        if let Some(h) = &held {
            h.wrote(n as u64);
        }
        hash.update(&buf[..n]);
        done += n as u64;
        progress(Progress::Bytes { done, total });
    }
    out.sync_all().map_err(copying)?;
    drop(out);
    let info = iso::inspect(&part_path).map_err(|e| IsoDirError::NotIso(name.clone(), e.to_string()))?;
    // A hard link fails when the name was taken meanwhile; rename would replace it.
    std::fs::hard_link(&part_path, &target).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            IsoDirError::Exists(name.clone())
        } else {
            io(&target, e)
        }
    })?;
    drop(part);
    drop(held);
    let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let iso = described(name, done, Ok(info));
    Ok(Added { path: target.display().to_string(), sha256, iso })
}

/// `phyllome iso inspect FILE`: what an image says about itself. A missing
/// file is not found; a FIFO, a folder or a device other than a drive is not an ISO.
pub fn inspect(file: &Path) -> Result<iso::IsoInfo> {
    iso::inspect(file).map_err(|e| match e {
        iso::IsoError::Missing => IsoDirError::NoFile(file.display().to_string()),
        e => IsoDirError::NotIso(file.display().to_string(), e.to_string()),
    })
}

/// `phyllome iso add FILE`: copies a host file into the folder (Ctrl-C removes the partial copy).
pub fn add(dir: &Path, file: &Path, name: Option<&str>, progress: Report<'_>) -> Result<Added> {
    let io = |e: std::io::Error| IsoDirError::Io(file.display().to_string(), e);
    // Refused before copying gigabytes: the image must read as an ISO now (and a regular file: a copy
    // of a drive is made with other tools).
    inspect(file)?;
    let meta = std::fs::metadata(file).map_err(io)?;
    if !meta.is_file() {
        return Err(IsoDirError::NotIso(file.display().to_string(), "not a regular file".into()));
    }
    let name =
        name.map(str::to_string).unwrap_or_else(|| file.file_name().unwrap_or_default().to_string_lossy().into_owned());
    let op = crate::op::Op::begin();
    let mut f = std::fs::File::open(file).map_err(io)?;
    receive(dir, &name, Some(meta.len()), &mut f, op.flag(), progress)
}

/// `phyllome iso remove NAME`: removes an ISO no VM uses.
pub fn remove(lv: &Libvirt, dir: &Path, name: &str) -> Result<String> {
    if name.contains('/') || name.starts_with('.') || name.is_empty() {
        return Err(IsoDirError::BadName(format!("{name:?}: give the ISO's file name, as phyllome iso list shows it")));
    }
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        _ => return Err(IsoDirError::Missing(name.to_string())),
    }
    let wanted = path.display().to_string();
    for d in lv.list_all()? {
        let uses = roxmltree::Document::parse(&d.xml).ok().is_some_and(|doc| {
            doc.descendants().filter(|n| n.has_tag_name("source")).any(|n| n.attribute("file") == Some(wanted.as_str()))
        });
        if uses {
            return Err(IsoDirError::InUse { name: name.to_string(), vm: d.name });
        }
    }
    std::fs::remove_file(&path).map_err(|e| IsoDirError::Io(wanted.clone(), e))?;
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::progress::quiet;

    #[test]
    fn names_are_made_safe_and_stay_in_the_folder() {
        assert_eq!(sanitize("Win11_24H2_English_x64.iso").unwrap(), "Win11_24H2_English_x64.iso");
        assert_eq!(sanitize("../../etc/passwd.iso").unwrap(), "passwd.iso");
        assert_eq!(sanitize("C:\\Users\\me\\debian 12.iso").unwrap(), "debian_12.iso");
        assert_eq!(sanitize("..hidden.iso").unwrap(), "hidden.iso");
        assert_eq!(sanitize("a\u{202e}b\n.iso").unwrap(), "a_b_.iso");
        assert!(sanitize("notes.txt").is_err());
        assert!(sanitize(".iso").is_err());
        assert!(sanitize(&format!("{}.iso", "a".repeat(200))).is_err());
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("phyllome-isodir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_copy_lands_whole_with_its_hash_or_not_at_all() {
        let d = dir("copy");
        let img = crate::media::iso::tests::image("Debian 12.8.0 amd64 n", "", "", None, &[]);
        let seen = std::cell::Cell::new(0u64);
        let r = receive(&d, "deb.iso", Some(img.len() as u64), &mut &img[..], &AtomicBool::new(false), &|p| {
            if let Progress::Bytes { done, .. } = p {
                seen.set(done)
            }
        })
        .unwrap();
        assert_eq!(seen.get(), img.len() as u64);
        assert_eq!(r.sha256, Sha256::digest(&img).iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(r.iso.os.as_deref(), Some("linux"));
        assert_eq!(std::fs::read(d.join("deb.iso")).unwrap(), img);
        // The name is taken now; a file that is not an ISO is refused and leaves nothing.
        let again = receive(&d, "deb.iso", None, &mut &img[..], &AtomicBool::new(false), &quiet);
        assert!(matches!(again, Err(IsoDirError::Exists(_))));
        let junk = vec![7u8; 100_000];
        let bad = receive(&d, "junk.iso", None, &mut &junk[..], &AtomicBool::new(false), &quiet);
        assert!(matches!(bad, Err(IsoDirError::NotIso(..))), "{bad:?}");
        let interrupted = receive(&d, "stop.iso", None, &mut &img[..], &AtomicBool::new(true), &quiet);
        assert!(matches!(interrupted, Err(IsoDirError::Interrupted)));
        let too_big = receive(&d, "big.iso", Some(u64::MAX / 2), &mut &img[..], &AtomicBool::new(false), &quiet);
        assert!(matches!(too_big, Err(IsoDirError::NoSpace { .. })), "{too_big:?}");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("deb.iso")], "no partial file is left");
        let listed = list(&d).unwrap();
        assert_eq!((listed.len(), listed[0].os_name.as_deref()), (1, Some("Debian 12")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn copies_under_way_hold_their_space_until_they_end() {
        let d = dir("held");
        std::fs::create_dir_all(&d).unwrap();
        const MIB: u64 = 1 << 20;
        let free = 300 * MIB;
        let a = Reservation::take(&d, "a.iso", 100 * MIB, || Ok(free)).unwrap();
        let b = Reservation::take(&d, "b.iso", 100 * MIB, || Ok(free)).unwrap();
        // 300 MiB free, 200 held, 64 spare: a third 100 MiB copy does not fit, and the refusal says why.
        let e = Reservation::take(&d, "c.iso", 100 * MIB, || Ok(free)).err().unwrap();
        let IsoDirError::NoSpace { held, spare, .. } = &e else { panic!("{e:?}") };
        assert!(*held >= 200 && *spare == 64, "{e}");
        let text = e.to_string();
        assert!(text.contains("64 MiB") && text.contains("spare") && text.contains("under way"), "{text}");
        assert_eq!(e.kind(), crate::errors::ErrorKind::NoSpace);
        // What a copy wrote is in free space already: it holds only the rest.
        assert!(Reservation::take(&d, "c.iso", 30 * MIB, || Ok(free - 100 * MIB)).is_err());
        a.wrote(100 * MIB);
        assert!(Reservation::take(&d, "c.iso", 30 * MIB, || Ok(free - 100 * MIB)).is_ok());
        drop(b);
        drop(a);
        assert!(Reservation::take(&d, "c.iso", 200 * MIB, || Ok(free)).is_ok(), "ended copies hold nothing");
        let _ = std::fs::remove_dir_all(&d);
    }
}
