//! What an ISO image says about itself (ECMA-119 / ISO 9660 and El Torito):
//! the primary volume descriptor's identifiers, which firmware its boot
//! catalog boots (BIOS, UEFI or both), and the names in its root directory,
//! which tell a virtio-win driver disc by its content.
//!
//! The parser reads through [`Sectors`], so it works the same on a file and
//! on bytes made in a test; every offset comes from the standards.

use phyllome_model::detect::{self, Detected, Field};
use serde::Serialize;
use std::io::{Read, Seek, SeekFrom};

pub const SECTOR: u64 = 2048;
/// Volume descriptors start at sector 16.
const FIRST_DESCRIPTOR: u32 = 16;
/// Past this many descriptors without a terminator the image is not read further.
const MAX_DESCRIPTORS: u32 = 64;
/// Root directory entries read at most (a driver disc has a few dozen).
const MAX_ROOT_BYTES: u32 = 256 * 1024;

/// A source of 2048-byte sectors.
pub trait Sectors {
    fn read(&mut self, lba: u32, len: usize) -> std::io::Result<Vec<u8>>;
}

impl<T: Read + Seek> Sectors for T {
    fn read(&mut self, lba: u32, len: usize) -> std::io::Result<Vec<u8>> {
        self.seek(SeekFrom::Start(lba as u64 * SECTOR))?;
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Boot {
    /// An El Torito entry for x86 BIOS (platform 0).
    pub bios: bool,
    /// An El Torito entry for UEFI (platform 0xEF).
    pub uefi: bool,
}

impl Boot {
    pub fn describe(&self) -> &'static str {
        match (self.bios, self.uefi) {
            (true, true) => "BIOS and UEFI",
            (true, false) => "BIOS only",
            (false, true) => "UEFI only",
            (false, false) => "not bootable",
        }
    }
}

/// The identifiers of the primary volume descriptor, trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Identifiers {
    pub volume_id: String,
    pub system_id: String,
    pub publisher_id: String,
    pub application_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IsoInfo {
    #[serde(flatten)]
    pub ids: Identifiers,
    pub boot: Boot,
    /// Names in the root directory (ISO 9660 names, upper case, without `;1`).
    #[serde(skip)]
    pub root: Vec<String>,
    /// A virtio-win driver disc: its root has the storage and network driver folders.
    pub virtio_win: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("not an ISO 9660 image (no primary volume descriptor at sector 16)")]
    NotIso,
    #[error("no such file")]
    Missing,
    #[error("not a regular file")]
    NotAFile,
    #[error("cannot read the image: {0}")]
    Io(#[from] std::io::Error),
}

/// A `d-characters` field: ASCII, space padded.
fn text(b: &[u8]) -> String {
    let s: String = b.iter().map(|&c| if c.is_ascii_graphic() || c == b' ' { c as char } else { ' ' }).collect();
    s.trim().to_string()
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

/// Reads the descriptors, the boot catalog and the root directory.
pub fn parse(s: &mut impl Sectors) -> Result<IsoInfo, IsoError> {
    let mut pvd: Option<Vec<u8>> = None;
    let mut catalog: Option<u32> = None;
    for i in 0..MAX_DESCRIPTORS {
        let d = match s.read(FIRST_DESCRIPTOR + i, SECTOR as usize) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        if &d[1..6] != b"CD001" {
            break;
        }
        match d[0] {
            1 if pvd.is_none() => pvd = Some(d),
            // The boot record: "EL TORITO SPECIFICATION", then the catalog's sector at byte 71.
            0 if d[7..].starts_with(b"EL TORITO SPECIFICATION") => catalog = Some(le32(&d, 71)),
            255 => break,
            _ => {}
        }
    }
    let pvd = pvd.ok_or(IsoError::NotIso)?;
    let ids = Identifiers {
        system_id: text(&pvd[8..40]),
        volume_id: text(&pvd[40..72]),
        publisher_id: text(&pvd[318..446]),
        application_id: text(&pvd[574..702]),
    };
    let boot = match catalog {
        Some(lba) => s.read(lba, SECTOR as usize).map(|c| boot_catalog(&c)).unwrap_or_default(),
        None => Boot::default(),
    };
    // The root directory's record is at byte 156: its extent at +2, its length at +10.
    let (root_lba, root_len) = (le32(&pvd, 156 + 2), le32(&pvd, 156 + 10).min(MAX_ROOT_BYTES));
    let root = if root_lba > 0 && root_len > 0 {
        s.read(root_lba, root_len as usize).map(|d| directory_names(&d)).unwrap_or_default()
    } else {
        Vec::new()
    };
    let has = |n: &str| root.iter().any(|r| r == n);
    let virtio_win = has("VIOSTOR") && (has("NETKVM") || has("VIOSCSI"));
    Ok(IsoInfo { ids, boot, root, virtio_win })
}

/// Which platforms an El Torito boot catalog has bootable entries for.
pub fn boot_catalog(c: &[u8]) -> Boot {
    let mut boot = Boot::default();
    // The validation entry: header 1, the platform at byte 1, the key 55 AA at 30.
    if c.len() < 64 || c[0] != 1 || c[30] != 0x55 || c[31] != 0xaa {
        return boot;
    }
    let mut mark = |platform: u8, bootable: bool| {
        if bootable {
            match platform {
                0 => boot.bios = true,
                0xef => boot.uefi = true,
                _ => {}
            }
        }
    };
    // The initial entry (bytes 32..64) boots on the validation entry's platform.
    mark(c[1], c[32] == 0x88);
    // Then section headers (0x90: more follow, 0x91: the last), each with its entries.
    let mut at = 64;
    while at + 32 <= c.len() {
        let (indicator, platform) = (c[at], c[at + 1]);
        if indicator != 0x90 && indicator != 0x91 {
            break;
        }
        let entries = u16::from_le_bytes([c[at + 2], c[at + 3]]) as usize;
        at += 32;
        for _ in 0..entries {
            if at + 32 > c.len() {
                return boot;
            }
            mark(platform, c[at] == 0x88);
            at += 32;
        }
        if indicator == 0x91 {
            break;
        }
    }
    boot
}

/// The names of a directory's records, upper case, without `;1` or a trailing dot.
pub fn directory_names(d: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    while at < d.len() {
        let len = d[at] as usize;
        if len == 0 {
            // Records do not cross sectors: the rest of this one is padding.
            at = (at / SECTOR as usize + 1) * SECTOR as usize;
            continue;
        }
        if at + len > d.len() || len < 34 {
            break;
        }
        let name_len = d[at + 32] as usize;
        if let Some(raw) = d.get(at + 33..at + 33 + name_len) {
            // 0 and 1 are the directory itself and its parent.
            if !(name_len == 1 && raw[0] <= 1) {
                let n = String::from_utf8_lossy(raw).to_ascii_uppercase();
                let n = n.split(';').next().unwrap_or_default().trim_end_matches('.').to_string();
                names.push(n);
            }
        }
        at += len;
    }
    names
}

/// Reads an ISO file: a regular file, or a drive (a block device such as
/// `/dev/sr0`). Anything else is refused without waiting on it: the file is
/// opened non-blocking (a FIFO would hold a plain open until a writer came)
/// and judged by what was opened, so a swap after a check cannot slip one in.
pub fn inspect(path: &std::path::Path) -> Result<IsoInfo, IsoError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            IsoError::Missing
        } else {
            IsoError::Io(e)
        }
    })?;
    let meta = f.metadata()?;
    if meta.is_file() {
        let mut f = f;
        return parse(&mut f);
    }
    if !meta.file_type().is_block_device() {
        return Err(IsoError::NotAFile);
    }
    // A drive is read without O_NONBLOCK: opened again, and still the same device.
    use std::os::unix::fs::MetadataExt;
    let mut drive = std::fs::File::open(path)?;
    if drive.metadata()?.rdev() != meta.rdev() {
        return Err(IsoError::NotAFile);
    }
    parse(&mut drive)
}

impl detect::Ids for Identifiers {
    fn get(&self, f: Field) -> &str {
        match f {
            Field::VolumeId => &self.volume_id,
            Field::SystemId => &self.system_id,
            Field::PublisherId => &self.publisher_id,
            Field::ApplicationId => &self.application_id,
        }
    }
}

/// Where osinfo-db lives (libosinfo's system, local and admin folders).
pub const OSINFO_DIRS: &[&str] = &["/usr/share/osinfo", "/usr/local/share/osinfo", "/etc/osinfo"];

/// One x86_64 ISO entry of osinfo-db: the OS and its identifier patterns.
#[derive(Debug, Clone)]
pub struct OsinfoMedia {
    pub os_id: String,
    pub name: String,
    pub family: String,
    pub patterns: Vec<(Field, regex::Regex)>,
}

/// Phyllome's profile for an osinfo-db OS, when it models that family.
pub fn profile_of_osinfo(os_id: &str, family: &str) -> Option<&'static str> {
    let win = os_id.strip_prefix("http://microsoft.com/win/");
    match (win, family) {
        (Some("11"), _) => Some("windows11"),
        (Some("10"), _) => Some("windows10"),
        (Some(v), _) if ["2k12", "2k12r2", "2k16", "2k19", "2k22", "2k25"].contains(&v) => Some("windows-server"),
        (Some(_), _) => Some("legacy"),
        (None, "linux") => Some("linux"),
        (None, "freebsd") => Some("freebsd"),
        (None, "openbsd") => Some("openbsd"),
        (None, "netbsd") => Some("netbsd"),
        (None, "msdos" | "freedos" | "dos") => Some("legacy"),
        _ => None,
    }
}

/// The x86_64 ISO entries of one osinfo-db OS file.
pub fn parse_osinfo(xml: &str) -> Vec<OsinfoMedia> {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    let mut out = Vec::new();
    for os in doc.descendants().filter(|n| n.has_tag_name("os")) {
        let child = |tag: &str| os.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text()).unwrap_or("");
        let (os_id, name, family) = (os.attribute("id").unwrap_or(""), child("name"), child("family"));
        for media in os.children().filter(|c| c.has_tag_name("media")) {
            if !matches!(media.attribute("arch"), None | Some("x86_64") | Some("i686")) {
                continue;
            }
            let Some(iso) = media.children().find(|c| c.has_tag_name("iso")) else { continue };
            let mut patterns = Vec::new();
            for (tag, field) in [
                ("volume-id", Field::VolumeId),
                ("system-id", Field::SystemId),
                ("publisher-id", Field::PublisherId),
                ("application-id", Field::ApplicationId),
            ] {
                if let Some(p) = iso.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text()) {
                    // A pattern this regex engine cannot read makes the entry unusable, not wrong.
                    match regex::Regex::new(p.trim()) {
                        Ok(re) => patterns.push((field, re)),
                        Err(_) => {
                            patterns.clear();
                            break;
                        }
                    }
                }
            }
            if patterns.iter().any(|(f, _)| *f == Field::VolumeId) {
                out.push(OsinfoMedia {
                    os_id: os_id.to_string(),
                    name: name.to_string(),
                    family: family.to_string(),
                    patterns,
                });
            }
        }
    }
    out
}

/// The first osinfo-db entry whose every pattern matches (libosinfo's rule), with a profile.
pub fn match_osinfo(ids: &Identifiers, db: &[OsinfoMedia]) -> Option<Detected> {
    use detect::Ids;
    db.iter().find_map(|m| {
        let os = profile_of_osinfo(&m.os_id, &m.family)?;
        m.patterns.iter().all(|(f, re)| re.is_match(ids.get(*f))).then(|| Detected {
            os,
            name: m.name.clone(),
            field: Field::VolumeId,
            value: ids.volume_id.clone(),
            source: "osinfo-db",
        })
    })
}

/// The first osinfo-db entry of this host that matches, file by file: the
/// patterns are compiled as each file is read and dropped after, so memory
/// stays small (a server lists media with this).
pub fn match_osinfo_db(ids: &Identifiers) -> Option<Detected> {
    for dir in OSINFO_DIRS {
        let Ok(vendors) = std::fs::read_dir(std::path::Path::new(dir).join("os")) else { continue };
        let mut files: Vec<_> = vendors
            .flatten()
            .filter_map(|v| std::fs::read_dir(v.path()).ok())
            .flat_map(|d| d.flatten().map(|f| f.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "xml"))
            .collect();
        files.sort();
        for f in files {
            // Only files that could match at all are parsed.
            let Ok(xml) = std::fs::read_to_string(&f) else { continue };
            if !xml.contains("<volume-id>") {
                continue;
            }
            if let Some(d) = match_osinfo(ids, &parse_osinfo(&xml)) {
                return Some(d);
            }
        }
    }
    None
}

/// The profile for an ISO: Phyllome's table first, then osinfo-db.
pub fn detect(info: &IsoInfo) -> Option<Detected> {
    detect::detect(&info.ids).or_else(|| match_osinfo_db(&info.ids))
}

/// The virtio-win driver discs among these files, found by content.
pub fn find_virtio_win(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().find(|p| inspect(p).is_ok_and(|i| i.virtio_win))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn put(img: &mut Vec<u8>, at: usize, bytes: &[u8]) {
        if img.len() < at + bytes.len() {
            img.resize(at + bytes.len(), 0);
        }
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn padded(s: &str, n: usize) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(n, b' ');
        v
    }

    fn record(name: &str, dir: bool) -> Vec<u8> {
        let len = 33 + name.len() + (name.len() + 1) % 2;
        let mut r = vec![0u8; len];
        r[0] = len as u8;
        r[25] = if dir { 2 } else { 0 };
        r[32] = name.len() as u8;
        r[33..33 + name.len()].copy_from_slice(name.as_bytes());
        r
    }

    /// A small image: a PVD with these ids, an optional El Torito catalog, a root directory.
    pub(crate) fn image(volume: &str, system: &str, publisher: &str, catalog: Option<&[u8]>, root: &[&str]) -> Vec<u8> {
        let s = SECTOR as usize;
        let mut img = vec![0u8; 16 * s];
        let mut pvd = vec![0u8; s];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[8..40].copy_from_slice(&padded(system, 32));
        pvd[40..72].copy_from_slice(&padded(volume, 32));
        pvd[318..446].copy_from_slice(&padded(publisher, 128));
        pvd[574..702].copy_from_slice(&padded("", 128));
        // Root directory at sector 20.
        let mut dir: Vec<u8> = Vec::new();
        dir.extend(record("\0", true));
        dir.extend(record("\u{1}", true));
        for n in root {
            dir.extend(record(n, !n.contains('.')));
        }
        pvd[156] = 34;
        pvd[158..162].copy_from_slice(&20u32.to_le_bytes());
        pvd[166..170].copy_from_slice(&(dir.len() as u32).to_le_bytes());
        put(&mut img, 16 * s, &pvd);
        let mut next = 17;
        if catalog.is_some() {
            let mut br = vec![0u8; s];
            br[1..6].copy_from_slice(b"CD001");
            br[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
            br[71..75].copy_from_slice(&21u32.to_le_bytes());
            put(&mut img, next * s, &br);
            next += 1;
        }
        let mut term = vec![0u8; s];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        put(&mut img, next * s, &term);
        put(&mut img, 20 * s, &dir);
        if let Some(c) = catalog {
            put(&mut img, 21 * s, c);
        }
        img.resize(22 * s, 0);
        img
    }

    /// A boot catalog with a BIOS initial entry and, when `efi`, an EFI section.
    pub(crate) fn catalog(bios: bool, efi: bool) -> Vec<u8> {
        let mut c = vec![0u8; 128];
        c[0] = 1;
        c[1] = if bios { 0 } else { 0xef };
        c[30] = 0x55;
        c[31] = 0xaa;
        c[32] = 0x88;
        if bios && efi {
            c[64] = 0x91;
            c[65] = 0xef;
            c[66] = 1;
            c[96] = 0x88;
        }
        c
    }

    #[test]
    fn identifiers_and_boot_platforms_are_read() {
        let img = image("CCCOMA_X64FRE_EN-US_DV9", "", "MICROSOFT CORPORATION", Some(&catalog(true, true)), &[]);
        let info = parse(&mut std::io::Cursor::new(img)).unwrap();
        assert_eq!(info.ids.volume_id, "CCCOMA_X64FRE_EN-US_DV9");
        assert_eq!(info.ids.publisher_id, "MICROSOFT CORPORATION");
        assert_eq!(info.boot, Boot { bios: true, uefi: true });
        assert_eq!(info.boot.describe(), "BIOS and UEFI");
        let bios_only = parse(&mut std::io::Cursor::new(image("X", "", "", Some(&catalog(true, false)), &[]))).unwrap();
        assert_eq!(bios_only.boot, Boot { bios: true, uefi: false });
        let efi_only = parse(&mut std::io::Cursor::new(image("X", "", "", Some(&catalog(false, true)), &[]))).unwrap();
        assert_eq!(efi_only.boot, Boot { bios: false, uefi: true });
        let none = parse(&mut std::io::Cursor::new(image("DATA", "LINUX", "", None, &[]))).unwrap();
        assert_eq!((none.boot.describe(), none.ids.system_id.as_str()), ("not bootable", "LINUX"));
    }

    #[test]
    fn a_driver_disc_is_known_by_its_folders_not_its_name() {
        let root = ["VIOSTOR", "NETKVM", "VIRTIO-WIN-GUEST-TOOLS.EXE;1"];
        let info = parse(&mut std::io::Cursor::new(image("MY DISC", "", "", None, &root))).unwrap();
        assert!(info.virtio_win);
        assert!(info.root.contains(&"VIRTIO-WIN-GUEST-TOOLS.EXE".to_string()), "{:?}", info.root);
        let named =
            parse(&mut std::io::Cursor::new(image("virtio-win-0.1.266", "", "", None, &["README.TXT;1"]))).unwrap();
        assert!(!named.virtio_win, "a name alone proves nothing");
    }

    #[test]
    fn osinfo_entries_are_matched_by_every_pattern_they_give() {
        let xml = r#"<libosinfo version="0.0.1"><os id="http://debian.org/debian/11"><name>Debian 11</name>
            <family>linux</family>
            <media arch="x86_64"><iso><volume-id>Debian 11.\d+.\d+ amd64 n</volume-id></iso></media>
            <media arch="aarch64"><iso><volume-id>Debian 11.\d+.\d+ arm64 n</volume-id></iso></media></os>
            <os id="http://microsoft.com/win/2k22"><name>Microsoft Windows Server 2022</name><family>winnt</family>
            <media arch="x86_64"><iso><volume-id>^SSS_X64FREE?_</volume-id><publisher-id>MICROSOFT CORPORATION</publisher-id></iso></media></os>
            <os id="http://apple.com/macos/13"><name>macOS 13</name><family>darwin</family>
            <media arch="x86_64"><iso><volume-id>macOS</volume-id></iso></media></os></libosinfo>"#;
        let db = parse_osinfo(xml);
        assert_eq!(db.len(), 3, "the arm64 entry is left out");
        let ids = |v: &str, p: &str| Identifiers { volume_id: v.into(), publisher_id: p.into(), ..Default::default() };
        let d = match_osinfo(&ids("Debian 11.6.0 amd64 n", ""), &db).unwrap();
        assert_eq!((d.os, d.name.as_str(), d.source), ("linux", "Debian 11", "osinfo-db"));
        assert_eq!(
            match_osinfo(&ids("SSS_X64FREE_EN-US_DV9", "MICROSOFT CORPORATION"), &db).unwrap().os,
            "windows-server"
        );
        assert!(match_osinfo(&ids("SSS_X64FREE_EN-US_DV9", "ME"), &db).is_none(), "every pattern must match");
        assert!(match_osinfo(&ids("macOS", ""), &db).is_none(), "no profile for an OS family Phyllome does not model");
        assert_eq!(profile_of_osinfo("http://microsoft.com/win/xp", "winnt"), Some("legacy"));
    }

    #[test]
    fn what_is_not_an_iso_is_refused_and_broken_catalogs_boot_nothing() {
        assert!(matches!(parse(&mut std::io::Cursor::new(vec![0u8; 40000])), Err(IsoError::NotIso)));
        assert!(matches!(parse(&mut std::io::Cursor::new(vec![0u8; 100])), Err(IsoError::NotIso)));
        let mut bad = catalog(true, true);
        bad[30] = 0;
        assert_eq!(boot_catalog(&bad), Boot::default(), "no validation key: nothing");
        let mut truncated = catalog(true, true);
        truncated[66] = 200; // 200 entries announced, one there
        assert_eq!(boot_catalog(&truncated), Boot { bios: true, uefi: true });
        assert_eq!(directory_names(&[0u8; 10]), Vec::<String>::new());
    }

    #[test]
    fn files_that_are_not_images_are_refused_without_waiting_on_them() {
        let dir = std::env::temp_dir().join(format!("phyllome-iso-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo.iso");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // With no writer, a plain open of a FIFO waits forever: this must answer at once.
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || tx.send(inspect(&f).map(|_| ())));
        let r = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("inspect of a FIFO returns");
        assert!(matches!(r, Err(IsoError::NotAFile)), "{r:?}");
        assert!(matches!(inspect(&dir), Err(IsoError::NotAFile)), "a folder");
        assert!(matches!(inspect(&dir.join("none.iso")), Err(IsoError::Missing)));
        let img = dir.join("deb.iso");
        std::fs::write(&img, image("Debian 12.8.0 amd64 n", "", "", None, &[])).unwrap();
        assert_eq!(inspect(&img).unwrap().ids.volume_id, "Debian 12.8.0 amd64 n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
