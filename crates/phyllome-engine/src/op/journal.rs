//! A create in progress (create, clone, import; an export's staging copy) claims a
//! name: its record ([`Record`]), `JOURNAL_DIR/NAME.json`, is created exclusively
//! before anything is checked, and rewritten with each object the moment it is made,
//! by identity (domain UUID, secret UUID, the disk file's device and inode). When the
//! process dies before finishing (kill -9, power loss), the next phyllome command finds
//! the claim of a dead process and removes exactly those objects, only while their
//! identity still matches (`op::recover`), so an interrupted create leaves nothing behind
//! and touches nothing it did not make.

use super::record::{self, Record};
use crate::paths::JOURNAL_DIR;
use std::path::{Path, PathBuf};

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

impl crate::errors::Classify for JournalError {
    fn kind(&self) -> crate::errors::ErrorKind {
        match self {
            JournalError::Busy(_) => crate::errors::ErrorKind::Conflict,
            JournalError::Io(..) => crate::errors::ErrorKind::Failed,
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

    fn io(&self, e: std::io::Error) -> JournalError {
        JournalError::Io(self.dir.display().to_string(), e)
    }

    /// Claims `claim.vm` for a create about to start; fails when one for the same name is under way.
    pub fn begin(&self, claim: &Record) -> Result<(), JournalError> {
        if self.dir.as_os_str() == JOURNAL_DIR {
            crate::paths::make(JOURNAL_DIR).map_err(|e| self.io(e))?;
        } else {
            std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        }
        match record::write_new(&self.path(&claim.vm), claim) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(JournalError::Busy(claim.vm.clone())),
            other => other.map_err(|e| self.io(e)),
        }
    }

    /// Rewrites the claim (what was made so far), atomically: a crash leaves the old or the new one.
    pub fn record(&self, claim: &Record) -> Result<(), JournalError> {
        record::write(&self.path(&claim.vm), claim).map_err(|e| self.io(e))
    }

    pub fn finish(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Claims whose process is gone.
    pub fn orphans(&self) -> Vec<Record> {
        record::all_in(&self.dir).into_iter().map(|(_, r)| r).filter(Record::is_dead).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::record::{Made, Operation};

    fn claim(name: &str) -> Record {
        let made = Made { pool: Some("pool".into()), volume_path: Some("/p/vm.qcow2".into()), ..Made::default() };
        Record { made, ..Record::new_local(Operation::Create, name) }
    }

    #[test]
    fn begin_is_exclusive_and_dead_claims_are_orphans() {
        let dir = std::env::temp_dir().join(format!("phyllome-journal-test-{}", std::process::id()));
        let j = Journal::at(&dir);
        let e = claim("vm");
        j.begin(&e).unwrap();
        assert!(matches!(j.begin(&e), Err(JournalError::Busy(_))));
        // Our own (test) process is alive but is not `phyllome`: treated as reused, so orphan.
        let dead = Record { pid: u32::MAX, ..e.clone() };
        assert!(dead.is_dead());
        let other_boot = Record { boot_id: "x".into(), ..e.clone() };
        assert!(other_boot.is_dead());
        // What was made is recorded in place, and read back.
        let mut made = e.clone();
        made.made.secret_uuid = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
        j.record(&made).unwrap();
        let back = Record::read(&j.path("vm")).unwrap();
        assert_eq!(back.made, made.made);
        // A claim of an older release (no `made` at all) is found as well.
        let old = r#"{"name":"o","pool":"p","volume":"o.qcow2","volume_path":"/p/o.qcow2","pid":1,"boot_id":"b"}"#;
        std::fs::write(j.path("o"), old).unwrap();
        let orphans = j.orphans();
        assert_eq!(orphans.iter().map(|r| r.vm.as_str()).collect::<Vec<_>>(), ["o"], "the live claim is not one");
        j.finish("o");
        j.finish("vm");
        assert!(j.orphans().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
