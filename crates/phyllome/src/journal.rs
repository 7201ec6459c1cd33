//! A create in progress leaves a journal entry naming everything it may have
//! made. When the process dies before finishing (kill -9, power loss), the
//! next phyllome command finds the entry of a dead process and removes those
//! objects, so an interrupted create leaves nothing behind.

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
}

fn boot_id() -> String {
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
            pid: std::process::id(),
            boot_id: boot_id(),
        }
    }

    /// Whether the process that wrote the entry is gone.
    pub fn is_orphan(&self) -> bool {
        if self.boot_id != boot_id() {
            return true;
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid));
        // A live process with that pid that is not phyllome means the pid was reused.
        !matches!(exe, Ok(p) if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("phyllome")))
    }
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

    pub fn finish(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Entries whose process is gone.
    pub fn orphans(&self) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        rd.flatten()
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
        j.finish("vm");
        assert!(j.orphans().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
