//! The one crash record: who runs an operation (process, boot, the libvirt connection
//! it works through, since when), which VM it is about, and what it made or changed so
//! far, each object by identity (secret and domain UUIDs, files by device and inode or
//! volume key). Every operation keeps one from before its first change until it is done:
//! a create, clone, import or export in `journal` (the claim of a name), a snapshot or
//! another operation on a VM in `lock`, a migration in `moves`. When its process is gone
//! (kill -9, power loss), the next command finds it and `undo` puts back exactly what it
//! names (`recover`).
//!
//! Records written by the releases before this format are read too ([`Record::parse`]):
//! a host upgraded in the middle of a failure loses nothing.

use crate::host_files::FileId;
use phyllome_libvirt::Libvirt;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The format's version, in every record written.
pub const FORMAT: u32 = 1;

/// What runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Create,
    Import,
    SnapshotCreate,
    SnapshotRevert,
    SnapshotDelete,
    Clone,
    Export,
    Migrate,
    Delete,
    Start,
}

impl Operation {
    /// What the VM is undergoing, after "is being".
    pub fn doing(self) -> &'static str {
        match self {
            Operation::Create | Operation::Import => "created",
            Operation::SnapshotCreate => "snapshotted",
            Operation::SnapshotRevert => "reverted to a snapshot",
            Operation::SnapshotDelete => "relieved of a snapshot",
            Operation::Clone => "cloned",
            Operation::Export => "exported",
            Operation::Migrate => "migrated",
            Operation::Delete => "deleted",
            Operation::Start => "started",
        }
    }
}

/// Everything an operation made or changed on the host it works on, each recorded the
/// moment it exists (or, for what libvirt goes on with, before it is asked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Made {
    /// A new VM's (or an export's staging copy's) disk: its pool, volume and path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_path: Option<String>,
    /// The qcow2 UEFI variable store a create will make, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvram: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_file: Option<FileId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvram_file: Option<FileId>,
    /// The copies of the direct-boot kernel and initrd.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub boot_files: Vec<FileId>,
    /// A stopped VM (UUID) started paused, so QEMU copies its disk (a clone's or export's
    /// source, a VM moving offline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_source: Option<String>,
    /// A snapshot's `.NAME.part` folder being built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<FileId>,
    /// The libvirt secret of a memory state's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_secret: Option<String>,
    /// A push backup was begun and may still run.
    #[serde(skip_serializing_if = "is_false")]
    pub backup: bool,
    /// The guest's filesystems were frozen by the agent.
    #[serde(skip_serializing_if = "is_false")]
    pub frozen: bool,
    /// The VM was paused by this operation.
    #[serde(skip_serializing_if = "is_false")]
    pub paused: bool,
    /// The tmpfs holding a plaintext memory state, and the file in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_file: Option<String>,
    /// The VM's state is in `save_file`, or libvirt may be writing it there (recorded
    /// before the save is asked, since libvirt finishes a save whose caller died): a
    /// VM found shut off with a complete save file is restored (paused or not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved: Option<bool>,
    /// Files being staged (revert's copies), by path before they exist, by inode once made.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub staged: Vec<FileId>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Made {
    /// Nothing is recorded.
    pub fn is_empty(&self) -> bool {
        *self == Made::default()
    }
}

/// What a migration made on its destination, by identity, and what it changed here for
/// the move: on disk from before the first object is made until the move is settled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MadeThere {
    /// The destination's libvirt URI.
    pub to: String,
    /// The pool (its UUID), when this migration made it there.
    pub pool: Option<String>,
    pub secret: Option<String>,
    pub volume: String,
    pub volume_key: Option<String>,
    /// Uploaded files: folder, name, and the key libvirt gave the upload.
    pub files: Vec<(String, String, String)>,
    /// Folders there that did not exist before the uploads made them.
    pub dirs: Vec<String>,
    /// The source's libvirt autostart was on, and is off while it moves (so a reboot here
    /// cannot start it while it runs there).
    pub autostart: bool,
    /// The unix sockets of the migration streams on this machine (a destination on it).
    pub sockets: Vec<String>,
    /// Why the move is not settled yet, as last seen.
    pub why: Option<String>,
}

/// One crash record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`FORMAT`]: tells this format from the older ones.
    pub record: u32,
    pub op: Operation,
    /// The VM's name (a new one's, for a create).
    pub vm: String,
    /// Its UUID, once it has one.
    #[serde(default)]
    pub vm_uuid: Option<String>,
    pub pid: u32,
    pub boot_id: String,
    /// The libvirt connection the operation works through (none in records of older
    /// versions: this host's own libvirt).
    #[serde(default)]
    pub uri: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub made: Made,
    /// A migration's destination side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub there: Option<MadeThere>,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether `pid` is a live phyllome process (a live process with that pid that
/// is not phyllome means the pid was reused).
pub fn phyllome_alive(pid: u32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
    matches!(exe, Ok(p) if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("phyllome")))
}

/// Whether a record made through `recorded` (None: an older record, made through this
/// host's own libvirt) belongs to the connection `lv`: recovery acts on each record only
/// through the connection that made its objects, never another host's.
pub fn same_connection(recorded: Option<&str>, lv: &Libvirt) -> bool {
    match recorded {
        Some(u) => u == lv.uri(),
        None => lv.is_local(),
    }
}

impl Record {
    /// A record of this process for `op` on VM `vm`, through `lv`.
    pub fn new(lv: &Libvirt, op: Operation, vm: &str) -> Record {
        Record { uri: Some(lv.uri()), ..Record::of_this_process(op, vm) }
    }

    /// A record of this process, not tied to a connection yet.
    fn of_this_process(op: Operation, vm: &str) -> Record {
        Record {
            record: FORMAT,
            op,
            vm: vm.into(),
            vm_uuid: None,
            pid: std::process::id(),
            boot_id: boot_id(),
            uri: None,
            since: now(),
            made: Made::default(),
            there: None,
        }
    }

    /// A record of this process not tied to a connection (tests).
    #[cfg(test)]
    pub fn new_local(op: Operation, vm: &str) -> Record {
        Record::of_this_process(op, vm)
    }

    /// Whether the process that wrote it is gone (dead, or of another boot).
    pub fn is_dead(&self) -> bool {
        self.boot_id != boot_id() || !phyllome_alive(self.pid)
    }

    /// Made through the connection `lv`.
    pub fn made_through(&self, lv: &Libvirt) -> bool {
        same_connection(self.uri.as_deref(), lv)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data")
    }

    /// A record in this format or in one of the older releases' (see [`old`]).
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        // This format's `record` is its version; an older lock's is the snapshot state it kept.
        if v.get("record").is_some_and(serde_json::Value::is_u64) {
            return serde_json::from_value(v).ok();
        }
        old::parse(v)
    }

    /// The record in the file `path`, if it reads as one.
    pub fn read(path: &Path) -> Option<Record> {
        Record::parse(&std::fs::read(path).ok()?)
    }
}

/// Writes `record` whole to `path` (0600): under a temporary name of this process, then
/// renamed into place, so a crash leaves the old record or the new one, never half of one.
pub fn write(path: &Path, record: &Record) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    write_new(&tmp, record)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Writes `record` into the new file `path` (0600, synced); fails when it exists.
pub fn write_new(path: &Path, record: &Record) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let written = f.write_all(&record.to_json()).and_then(|_| f.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// The `*.json` records of folder `dir` (hidden and temporary files left out), with their files.
pub fn all_in(dir: &Path) -> Vec<(std::path::PathBuf, Record)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| Record::read(&p).map(|r| (p, r)))
        .collect()
}

/// The formats of the releases before this one, each read into a [`Record`].
pub mod old {
    use super::*;

    /// A create's journal entry (`pending/NAME.json`).
    #[derive(Deserialize)]
    struct Entry {
        name: String,
        pool: String,
        volume: String,
        volume_path: String,
        #[serde(default)]
        nvram: Option<String>,
        pid: u32,
        boot_id: String,
        #[serde(default)]
        uri: Option<String>,
        #[serde(default)]
        made: EntryMade,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct EntryMade {
        secret_uuid: Option<String>,
        volume_file: Option<FileId>,
        domain_uuid: Option<String>,
        nvram_file: Option<FileId>,
        boot_files: Vec<FileId>,
        paused_source: Option<String>,
    }

    /// A snapshot operation's pending state: inside a lock (`record`), or on its own in
    /// `pending-snapshots/UUID.json` with the VM and process beside it.
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Pending {
        part: Option<FileId>,
        memory_secret: Option<String>,
        backup: bool,
        frozen: bool,
        paused: bool,
        mount: Option<String>,
        save_file: Option<String>,
        saved: Option<bool>,
        staged: Vec<FileId>,
    }

    impl Pending {
        fn made(self) -> Made {
            Made {
                part: self.part,
                memory_secret: self.memory_secret,
                backup: self.backup,
                frozen: self.frozen,
                paused: self.paused,
                mount: self.mount,
                save_file: self.save_file,
                saved: self.saved,
                staged: self.staged,
                ..Made::default()
            }
        }
    }

    #[derive(Deserialize)]
    struct PendingSnapshot {
        vm: String,
        vm_uuid: String,
        pid: u32,
        boot_id: String,
        #[serde(default)]
        uri: Option<String>,
        #[serde(flatten)]
        pending: Pending,
    }

    /// A VM's operation lock (`operations/UUID.json`).
    #[derive(Deserialize)]
    struct Holder {
        vm: String,
        vm_uuid: String,
        op: Operation,
        pid: u32,
        boot_id: String,
        uri: Option<String>,
        since: u64,
        #[serde(default)]
        record: Option<Pending>,
    }

    /// A migration's record (`pending-migrations/UUID.json`).
    #[derive(Deserialize)]
    struct Move {
        vm: String,
        uuid: String,
        to: String,
        #[serde(default)]
        from: Option<String>,
        pid: u32,
        boot_id: String,
        pool: Option<String>,
        secret: Option<String>,
        volume: String,
        volume_key: Option<String>,
        files: Vec<(String, String, String)>,
        #[serde(default)]
        dirs: Vec<String>,
        #[serde(default)]
        paused_source: Option<String>,
        #[serde(default)]
        autostart: bool,
        #[serde(default)]
        sockets: Vec<String>,
        #[serde(default)]
        why: Option<String>,
    }

    /// Whichever older format `v` is in.
    pub(super) fn parse(v: serde_json::Value) -> Option<Record> {
        let has = |k: &str| v.get(k).is_some();
        let base = |op, vm: String, vm_uuid, pid, boot_id, uri| Record {
            record: FORMAT,
            op,
            vm,
            vm_uuid,
            pid,
            boot_id,
            uri,
            since: 0,
            made: Made::default(),
            there: None,
        };
        if has("volume_path") {
            let e: Entry = serde_json::from_value(v).ok()?;
            let op = if e.name.starts_with("+export+") { Operation::Export } else { Operation::Create };
            let m = e.made;
            return Some(Record {
                made: Made {
                    pool: Some(e.pool),
                    volume: Some(e.volume),
                    volume_path: Some(e.volume_path),
                    nvram: e.nvram,
                    secret_uuid: m.secret_uuid,
                    volume_file: m.volume_file,
                    domain_uuid: m.domain_uuid,
                    nvram_file: m.nvram_file,
                    boot_files: m.boot_files,
                    paused_source: m.paused_source,
                    ..Made::default()
                },
                ..base(op, e.name, None, e.pid, e.boot_id, e.uri)
            });
        }
        if has("to") {
            let m: Move = serde_json::from_value(v).ok()?;
            return Some(Record {
                made: Made { paused_source: m.paused_source, ..Made::default() },
                there: Some(MadeThere {
                    to: m.to,
                    pool: m.pool,
                    secret: m.secret,
                    volume: m.volume,
                    volume_key: m.volume_key,
                    files: m.files,
                    dirs: m.dirs,
                    autostart: m.autostart,
                    sockets: m.sockets,
                    why: m.why,
                }),
                ..base(Operation::Migrate, m.vm, Some(m.uuid), m.pid, m.boot_id, m.from)
            });
        }
        if has("op") {
            let h: Holder = serde_json::from_value(v).ok()?;
            return Some(Record {
                since: h.since,
                made: h.record.map(Pending::made).unwrap_or_default(),
                ..base(h.op, h.vm, Some(h.vm_uuid), h.pid, h.boot_id, h.uri)
            });
        }
        let p: PendingSnapshot = serde_json::from_value(v).ok()?;
        // Which snapshot operation it was is not recorded; its state says what to undo.
        Some(Record {
            made: p.pending.made(),
            ..base(Operation::SnapshotCreate, p.vm, Some(p.vm_uuid), p.pid, p.boot_id, p.uri)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> String {
        "b0".into()
    }

    #[test]
    fn each_older_format_reads_as_the_one_record() {
        let id = serde_json::json!({"path": "/p/o.qcow2", "dev": 1, "ino": 2});
        // A create's journal entry, with and without `made` (the oldest had none).
        let entry = serde_json::json!({"name": "o", "pool": "p", "volume": "o.qcow2", "volume_path": "/p/o.qcow2",
            "pid": 7, "boot_id": boot(), "made": {"secret_uuid": "s-1", "volume_file": id}});
        let r = Record::parse(entry.to_string().as_bytes()).unwrap();
        assert_eq!((r.op, r.vm.as_str(), r.pid, r.uri.as_deref()), (Operation::Create, "o", 7, None));
        assert_eq!(r.made.secret_uuid.as_deref(), Some("s-1"));
        assert_eq!(r.made.volume_file.as_ref().map(|f| f.ino), Some(2));
        assert_eq!((r.made.pool.as_deref(), r.made.volume_path.as_deref()), (Some("p"), Some("/p/o.qcow2")));
        let bare = r#"{"name":"o","pool":"p","volume":"o.qcow2","volume_path":"/p/o.qcow2","pid":1,"boot_id":"b"}"#;
        assert_eq!(Record::parse(bare.as_bytes()).unwrap().made.secret_uuid, None);
        let export = r#"{"name":"+export+v","pool":"p","volume":"x","volume_path":"/p/x","pid":1,"boot_id":"b"}"#;
        assert_eq!(Record::parse(export.as_bytes()).unwrap().op, Operation::Export);
        // A VM's lock with a snapshot's pending state in it.
        let lock = serde_json::json!({"vm": "a", "vm_uuid": "u", "op": "snapshot-revert", "pid": 8, "boot_id": boot(),
            "uri": "qemu:///system", "since": 5, "record": {"paused": true, "staged": [id], "saved": false}});
        let r = Record::parse(lock.to_string().as_bytes()).unwrap();
        assert_eq!((r.op, r.vm_uuid.as_deref(), r.since), (Operation::SnapshotRevert, Some("u"), 5));
        assert!(r.made.paused && r.made.staged.len() == 1 && r.made.saved == Some(false));
        // A bare lock: nothing to undo.
        let bare = serde_json::json!({"vm": "a", "vm_uuid": "u", "op": "clone", "pid": 8, "boot_id": boot(),
            "uri": null, "since": 5});
        assert!(Record::parse(bare.to_string().as_bytes()).unwrap().made.is_empty());
        // The release before the lock: snapshot records of their own.
        let snap = serde_json::json!({"vm": "a", "vm_uuid": "u", "pid": 9, "boot_id": boot(), "backup": true,
            "frozen": false, "paused": false, "mount": "/run/phyllome/snapshot-memory/9", "save_file": null,
            "saved": null, "staged": [], "part": null, "memory_secret": "m-1"});
        let r = Record::parse(snap.to_string().as_bytes()).unwrap();
        assert!(r.made.backup && r.made.memory_secret.as_deref() == Some("m-1"));
        assert_eq!(r.made.mount.as_deref(), Some("/run/phyllome/snapshot-memory/9"));
        // A migration's record.
        let mv = serde_json::json!({"vm": "v", "uuid": "u", "to": "qemu+ssh://b/system", "pid": 1, "boot_id": "x",
            "pool": null, "secret": "s", "volume": "v.qcow2", "volume_key": "/k", "files": [["/d", "f", "/d/f"]],
            "paused_source": "u"});
        let r = Record::parse(mv.to_string().as_bytes()).unwrap();
        let t = r.there.as_ref().unwrap();
        assert_eq!((r.op, t.to.as_str(), t.secret.as_deref()), (Operation::Migrate, "qemu+ssh://b/system", Some("s")));
        assert_eq!((r.made.paused_source.as_deref(), r.uri.as_deref()), (Some("u"), None));
        assert!(t.dirs.is_empty() && !t.autostart);
        // Not a record at all.
        assert!(Record::parse(b"{\"x\": 1}").is_none());
        assert!(Record::parse(b"half a rec").is_none());
    }

    #[test]
    fn a_record_is_written_whole_and_private_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("phyllome-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r =
            Record { pid: u32::MAX, uri: Some("qemu:///system".into()), ..Record::new_local(Operation::Clone, "b") };
        r.made.paused_source = Some("u".into());
        let path = dir.join("b.json");
        write_new(&path, &r).unwrap();
        assert!(write_new(&path, &r).is_err(), "exclusive");
        r.made.domain_uuid = Some("d".into());
        write(&path, &r).unwrap();
        assert_eq!(Record::read(&path).unwrap(), r);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(all_in(&dir).len(), 1, "no temporary file is left or read");
        assert!(r.is_dead(), "no phyllome has pid u32::MAX");
        assert!(Record { boot_id: "another boot".into(), ..r }.is_dead());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
