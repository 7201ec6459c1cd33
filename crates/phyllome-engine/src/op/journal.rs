//! A create in progress holds a journal entry: created exclusively before
//! anything is checked, it claims the VM's name, and it records each object
//! the moment it is made, by identity (domain UUID, secret UUID, the disk
//! file's device and inode). When the process dies before finishing (kill -9,
//! power loss), the next phyllome command finds the entry of a dead process and
//! removes exactly those objects, only while their identity still matches, so
//! an interrupted create leaves nothing behind and touches nothing it did not make.

use crate::errors::{Classify, ErrorKind};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where entries live: on disk, so they survive a reboot after a crash.
pub const JOURNAL_DIR: &str = "/var/lib/phyllome/pending";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub pool: String,
    pub volume: String,
    pub volume_path: String,
    /// The qcow2 UEFI variable store the create will make, if any.
    #[serde(default)]
    pub nvram: Option<String>,
    pub pid: u32,
    pub boot_id: String,
    /// The libvirt connection the objects were made through (none in entries of
    /// older versions: this host's own libvirt).
    #[serde(default)]
    pub uri: Option<String>,
    /// What this create has made so far.
    #[serde(default)]
    pub made: Made,
}

/// A file by identity: its path, and the device and inode it had when made on this
/// machine, or the volume key libvirt gave it when it was made on another host through
/// its libvirt (`hostfiles.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl FileId {
    /// The identity of the file now at `path` on this machine.
    pub fn of(path: &str) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(FileId { path: path.to_string(), dev: m.dev(), ino: m.ino(), key: None })
    }

    /// A file made on another host through its libvirt, known there by its volume key.
    pub fn through(path: &str, key: &str) -> FileId {
        FileId { path: path.to_string(), dev: 0, ino: 0, key: Some(key.to_string()) }
    }

    /// Whether the file at the path on this machine is still the one recorded (not replaced, not gone).
    pub fn still_there(&self) -> bool {
        self.key.is_none() && FileId::of(&self.path).is_ok_and(|now| now == *self)
    }
}

/// The objects a create made, each recorded as soon as it exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub secret_uuid: Option<String>,
    pub volume_file: Option<FileId>,
    pub domain_uuid: Option<String>,
    pub nvram_file: Option<FileId>,
    /// The copies of the direct-boot kernel and initrd.
    #[serde(default)]
    pub boot_files: Vec<FileId>,
    /// A clone's source VM (UUID), started paused so QEMU re-encrypts its disk.
    #[serde(default)]
    pub paused_source: Option<String>,
}

/// Whether a record made through `recorded` (None: an older record, made through this
/// host's own libvirt) belongs to the connection `lv`: recovery acts on each record only
/// through the connection that made its objects, never another host's.
pub fn same_connection(recorded: Option<&str>, lv: &phyllome_libvirt::Libvirt) -> bool {
    match recorded {
        Some(u) => u == lv.uri(),
        None => lv.is_local(),
    }
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

impl Entry {
    pub fn new(name: &str, pool: &str, volume: &str, volume_path: &str) -> Entry {
        Entry {
            name: name.into(),
            pool: pool.into(),
            volume: volume.into(),
            volume_path: volume_path.into(),
            nvram: None,
            uri: None,
            pid: std::process::id(),
            boot_id: boot_id(),
            made: Made::default(),
        }
    }

    /// Whether the process that wrote the entry is gone.
    pub fn is_orphan(&self) -> bool {
        self.boot_id != boot_id() || !phyllome_alive(self.pid)
    }
}

/// Whether `pid` is a live phyllome process (a live process with that pid that
/// is not phyllome means the pid was reused).
pub fn phyllome_alive(pid: u32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
    matches!(exe, Ok(p) if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("phyllome")))
}

pub struct Journal {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("another phyllome command is creating {0} right now")]
    Busy(String),
    #[error("journal {0}: {1}")]
    Io(String, std::io::Error),
}

impl Classify for JournalError {
    fn kind(&self) -> ErrorKind {
        match self {
            JournalError::Busy(_) => ErrorKind::Conflict,
            JournalError::Io(..) => ErrorKind::Failed,
        }
    }
}

impl Journal {
    pub fn open() -> Journal {
        Journal { dir: PathBuf::from(JOURNAL_DIR) }
    }

    pub fn at(dir: &Path) -> Journal {
        Journal { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Records a create about to start; fails when one for the same name is under way.
    pub fn begin(&self, entry: &Entry) -> Result<(), JournalError> {
        let io = |e| JournalError::Io(self.dir.display().to_string(), e);
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let path = self.path(&entry.name);
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(JournalError::Busy(entry.name.clone()));
            }
            Err(e) => return Err(io(e)),
        };
        let text = serde_json::to_string(entry).expect("entry serializes");
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io)
    }

    /// Rewrites the entry (what was made so far), atomically: a crash leaves the old or the new one.
    pub fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        let io = |e| JournalError::Io(self.dir.display().to_string(), e);
        let tmp = self.dir.join(format!(".{}.json.tmp", entry.name));
        let text = serde_json::to_string(entry).expect("entry serializes");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, self.path(&entry.name)).map_err(io)
    }

    pub fn finish(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Entries whose process is gone.
    pub fn orphans(&self) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        rd.flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".json") && !e.file_name().to_string_lossy().starts_with('.')
            })
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str::<Entry>(&t).ok())
            .filter(Entry::is_orphan)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_known_by_its_inode_not_its_name() {
        let p = std::env::temp_dir().join(format!("phyllome-fileid-{}", std::process::id()));
        let path = p.to_str().unwrap();
        std::fs::write(&p, "a").unwrap();
        let id = FileId::of(path).unwrap();
        assert!(id.still_there());
        // Replaced by another file of the same name (made while the first still
        // existed, so with another inode): no longer ours.
        let other = std::env::temp_dir().join(format!("phyllome-fileid-other-{}", std::process::id()));
        std::fs::write(&other, "b").unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert!(!id.still_there());
        std::fs::remove_file(&p).unwrap();
        assert!(!id.still_there());
    }

    #[test]
    fn begin_is_exclusive_and_dead_entries_are_orphans() {
        let dir = std::env::temp_dir().join(format!("phyllome-journal-test-{}", std::process::id()));
        let j = Journal::at(&dir);
        let e = Entry::new("vm", "pool", "vm.qcow2", "/p/vm.qcow2");
        j.begin(&e).unwrap();
        assert!(matches!(j.begin(&e), Err(JournalError::Busy(_))));
        // Our own (test) process is alive but is not `phyllome`: treated as reused, so orphan.
        let dead = Entry { pid: u32::MAX, ..e.clone() };
        assert!(dead.is_orphan());
        let other_boot = Entry { boot_id: "x".into(), ..e.clone() };
        assert!(other_boot.is_orphan());
        // What was made is recorded in place, and read back.
        let mut made = e.clone();
        made.made.secret_uuid = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
        j.record(&made).unwrap();
        let back: Entry = serde_json::from_str(&std::fs::read_to_string(j.path("vm")).unwrap()).unwrap();
        assert_eq!(back.made, made.made);
        // An entry written before `made` existed still reads.
        let old = r#"{"name":"o","pool":"p","volume":"o.qcow2","volume_path":"/p/o.qcow2","pid":1,"boot_id":"b"}"#;
        assert_eq!(serde_json::from_str::<Entry>(old).unwrap().made, Made::default());
        j.finish("vm");
        assert!(j.orphans().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
