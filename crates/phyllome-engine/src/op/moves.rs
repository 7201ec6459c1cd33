//! A migration's crash record (`paths::MOVES_DIR/UUID.json`, one [`Record`] with its
//! destination side, [`MadeThere`]): on disk from before the first object is made there
//! until the move is settled. A move cut short (phyllome killed, the destination away)
//! is settled from what both hosts show by the VM's UUID ([`settle`]): finished when it
//! got there (its copy here removed, by the VM delete the caller gives), undone when it
//! did not (what it made there removed, the source as it was). Every command's recovery,
//! the next migration to that host and `phyllome host clean` do it; until then the VM
//! does not start here (it may run there).

use super::record::{self, MadeThere, Record};
use super::undo;
use phyllome_libvirt::{Libvirt, State};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a move's settling removes of the VM's copy here, once it got there: the caller's
/// VM delete (domain, volumes, keys, NVRAM, TPM state, snapshots), or why it could not.
pub type RemoveHere<'a> = &'a dyn Fn(&Libvirt, &str) -> Result<RemovedHere, String>;

/// What [`RemoveHere`] removed.
#[derive(Debug, Clone, Default)]
pub struct RemovedHere {
    pub volumes: Vec<String>,
    pub secrets: usize,
    pub snapshots: usize,
}

/// Where the records are (elsewhere in the tests' build, see `paths`).
pub fn dir() -> PathBuf {
    crate::paths::moves_dir()
}

/// The record file of the VM with this UUID, in `dir`.
pub fn file(dir: &Path, uuid: &str) -> PathBuf {
    dir.join(format!("{uuid}.json"))
}

/// Every move recorded in `dir`.
pub fn all(dir: &Path) -> Vec<Record> {
    record::all_in(dir).into_iter().map(|(_, r)| r).filter(|r| r.there.is_some()).collect()
}

/// Records of migrations whose process is gone, to a destination.
pub fn orphans(dir: &Path, to: &str) -> Vec<Record> {
    all(dir).into_iter().filter(|m| m.t().to == to && m.is_dead()).collect()
}

impl Record {
    /// A move's record of this process: VM `vm` (`uuid`) from `src` to `to`.
    pub fn moving(src: &Libvirt, vm: &str, uuid: &str, to: &str, volume: &str) -> Record {
        Record {
            vm_uuid: Some(uuid.into()),
            there: Some(MadeThere { to: to.into(), volume: volume.into(), ..MadeThere::default() }),
            ..Record::new(src, record::Operation::Migrate, vm)
        }
    }

    /// Its destination side (a move's record has one).
    pub fn t(&self) -> &MadeThere {
        self.there.as_ref().expect("a move's record")
    }

    pub fn t_mut(&mut self) -> &mut MadeThere {
        self.there.as_mut().expect("a move's record")
    }

    /// The VM's UUID: the record's file name, and how the VM is known on both hosts.
    pub fn uuid(&self) -> &str {
        self.vm_uuid.as_deref().unwrap_or_default()
    }

    /// Writes it into `dir` (whole, 0600).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        if dir == Path::new(crate::paths::MOVES_DIR) {
            crate::paths::make(crate::paths::MOVES_DIR)?;
        } else {
            std::fs::create_dir_all(dir)?;
        }
        record::write(&file(dir, self.uuid()), self)
    }

    pub fn forget(&self, dir: &Path) {
        let _ = std::fs::remove_file(file(dir, self.uuid()));
    }

    /// Nothing of it is left on the destination.
    pub fn nothing_there(&self) -> bool {
        let t = self.t();
        t.pool.is_none() && t.secret.is_none() && t.volume_key.is_none() && t.files.is_empty() && t.dirs.is_empty()
    }

    /// What is still there, in words.
    pub fn left(&self) -> Vec<String> {
        let t = self.t();
        let mut left = vec![];
        if t.volume_key.is_some() {
            left.push(format!("volume {}/{}", crate::POOL, t.volume));
        }
        if let Some(s) = &t.secret {
            left.push(format!("secret {s}"));
        }
        left.extend(t.files.iter().map(|(d, f, _)| format!("{d}/{f}")));
        left.extend(t.dirs.iter().map(|d| format!("folder {d}")));
        if t.pool.is_some() {
            left.push(format!("storage pool {}", crate::POOL));
        }
        left
    }

    /// The unix sockets of its streams removed (QEMU leaves them), unless a live phyllome
    /// now has that process id (and so those names).
    pub fn remove_sockets(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        if self.pid != std::process::id() && record::phyllome_alive(self.pid) {
            return;
        }
        for s in self.t_mut().sockets.drain(..) {
            if std::fs::symlink_metadata(&s).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&s);
            }
        }
    }
}

/// How long the recovery every command runs waits for a destination to answer: a host
/// that is away costs each command this much while a move to it is unsettled.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);

/// Held while records are settled, so that two commands never settle one move twice.
pub fn settle_lock(dir: &Path) -> Option<std::fs::File> {
    std::fs::create_dir_all(dir).ok()?;
    let f = std::fs::File::open(dir).ok()?;
    f.lock().ok()?;
    Some(f)
}

/// A destination as messages name it: its host name when it was added as one.
pub fn host_label(uri: &str) -> String {
    crate::remotes::Remotes::open().name_of(uri).unwrap_or_else(|| uri.to_string())
}

/// What became of a move cut short, from both hosts' libvirt, by the VM's UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// libvirt still moves it (the source has a job): nothing is decided yet.
    UnderWay,
    /// The destination has it, and it does not run here: the move completed.
    Arrived,
    /// The destination does not have it: the move failed, the VM is (only) here.
    Failed,
    /// Defined there, and active here: nothing can be decided for the user.
    Both,
}

/// The decision, from what each side shows: `here` and `there` are the domain's state on
/// the source and the destination (None: no domain of that UUID), `migrating` whether
/// the source still has a job.
fn outcome(here: Option<State>, migrating: bool, there: Option<State>) -> Outcome {
    if migrating {
        return Outcome::UnderWay;
    }
    let active_here = here.is_some_and(|s| s != State::Shutoff);
    match there {
        None => Outcome::Failed,
        Some(_) if !active_here => Outcome::Arrived,
        Some(_) => Outcome::Both,
    }
}

/// A move that was cut short, and what was done about it (with a dry run: what would be).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Settled {
    pub vm: String,
    pub uuid: String,
    /// The destination: its host name when it has one.
    pub to: String,
    /// `arrived`: the move had completed, so the VM's copy here goes; `undone`: it stayed
    /// here, so what the move made there goes; left as it is: `under-way` (libvirt still
    /// moves it), `on-both-hosts` (defined there, running here), `unreachable`,
    /// `in-progress` (a phyllome command is moving it now).
    pub outcome: String,
    /// What was removed (a dry run: what would be).
    pub removed: Vec<String>,
    /// What stays, and why.
    pub left: Vec<String>,
    /// In words.
    pub note: String,
}

impl Settled {
    /// The move is settled: its record is gone.
    pub fn settled(&self) -> bool {
        matches!(self.outcome.as_str(), "arrived" | "undone") && self.left.is_empty()
    }

    pub fn left_as_is(m: &Record, outcome: &str, note: String) -> Settled {
        Settled {
            vm: m.vm.clone(),
            uuid: m.uuid().to_string(),
            to: host_label(&m.t().to),
            outcome: outcome.into(),
            removed: vec![],
            left: m.left(),
            note,
        }
    }
}

/// Settles the move `m` records, from what both hosts show by the VM's UUID: a move that
/// completed is finished (the VM's copy here removed, as after a move, through
/// `vm::delete`'s path), a failed one undone (what it made there removed, the source as it
/// was), anything else left as it is and said. `migration_failed`: this process saw
/// libvirt's migration fail, so a domain of the VM's UUID there that does not run is what
/// the failure left. With `dry_run` nothing changes.
#[allow(clippy::too_many_arguments)]
pub fn settle(
    src: &Libvirt,
    dst: &Libvirt,
    m: &mut Record,
    dir: &Path,
    dry_run: bool,
    migration_failed: bool,
    remove_here: RemoveHere<'_>,
) -> Settled {
    let to = host_label(&m.t().to);
    let here = match src.by_uuid(m.uuid()) {
        Ok(h) => h,
        Err(e) => return Settled::left_as_is(m, "unreachable", format!("this host's libvirt: {}", e.message)),
    };
    let mut there = match dst.by_uuid(m.uuid()) {
        Ok(t) => t,
        Err(e) => return Settled::left_as_is(m, "unreachable", format!("{to}: {}", e.message)),
    };
    let migrating =
        here.as_ref().is_some_and(|(n, s)| *s != State::Shutoff && src.migration_stats(n).is_ok_and(|st| st.active));
    if migration_failed && !dry_run && there.as_ref().is_some_and(|(_, s)| *s != State::Running) {
        let _ = dst.remove_domain_by_uuid(m.uuid());
        there = None;
    }
    let here_state = here.as_ref().map(|(_, s)| *s);
    let there_state = there.as_ref().map(|(_, s)| *s);
    let vm_name = m.vm.clone();
    let mut s = Settled::left_as_is(m, "", String::new());
    match outcome(here_state, migrating, there_state) {
        Outcome::UnderWay => {
            s.outcome = "under-way".into();
            s.note = format!(
                "libvirt still moves {vm_name} to {to}: the first phyllome command after it ends finishes or undoes the move"
            );
            if !dry_run {
                m.t_mut().why = Some("libvirt was still moving it".into());
                let _ = m.save(dir);
            }
        }
        Outcome::Both => {
            s.outcome = "on-both-hosts".into();
            s.note = format!(
                "{vm_name} runs here and is defined on {to} too: nothing was removed; delete the copy you do not want (phyllome --connect URI delete {vm_name} there)"
            );
            if !dry_run {
                m.t_mut().why = Some(format!("it runs here and is defined on {to} too"));
                let _ = m.save(dir);
            }
        }
        Outcome::Arrived => {
            s.outcome = "arrived".into();
            s.left.clear();
            let (there_name, there_state) = there.clone().expect("arrived: it is there");
            if dry_run {
                if let Some((name, _)) = &here {
                    s.removed.push(format!("{name} here: its domain, disk, key, NVRAM, TPM state and snapshots"));
                }
            } else {
                if m.made.paused_source.is_some() && there_state == State::Paused {
                    // An offline move arrives paused: powered off there, as it was here.
                    let _ = dst.destroy_paused_uuid(m.uuid());
                }
                if m.t().autostart && dst.set_autostart(&there_name, true).is_ok() {
                    m.t_mut().autostart = false;
                }
                if let Some((name, _)) = &here {
                    match remove_here(src, name) {
                        Ok(del) => {
                            s.removed.push(format!("domain {name} here"));
                            s.removed.extend(del.volumes.iter().map(|v| format!("volume {v} here")));
                            s.removed.push(format!(
                                "{} secret(s), its NVRAM and TPM state, {} snapshot(s) here",
                                del.secrets, del.snapshots
                            ));
                        }
                        Err(e) => s.left.push(format!("its copy here ({name}): {e}")),
                    }
                }
                m.remove_sockets();
                if s.left.is_empty() {
                    m.forget(dir);
                } else {
                    m.t_mut().why = Some(format!("it is on {to}, but its copy here could not be removed"));
                    let _ = m.save(dir);
                }
            }
            s.note = if dry_run {
                format!("an earlier migration of {vm_name} had reached {to}: its copy here goes")
            } else {
                format!("an earlier migration of {vm_name} had reached {to}: its copy here was removed")
            };
        }
        Outcome::Failed => {
            s.outcome = "undone".into();
            if dry_run {
                s.removed = m.left();
                s.left.clear();
            } else {
                if let Some((name, st)) = &here {
                    if m.made.paused_source.is_some() && *st == State::Paused {
                        let _ = src.destroy_paused_uuid(m.uuid());
                    }
                    if m.t().autostart && src.set_autostart(name, true).is_ok() {
                        m.t_mut().autostart = false;
                    }
                }
                let before = m.left();
                let kept = undo::made_there(dst, m.t_mut());
                let after = m.left();
                s.removed = before.iter().filter(|b| !after.contains(b)).cloned().collect();
                s.left = after;
                s.left.extend(kept);
                m.remove_sockets();
                if m.nothing_there() {
                    m.forget(dir);
                } else {
                    m.t_mut().why = Some(format!("what it made on {to} could not all be removed"));
                    let _ = m.save(dir);
                }
            }
            s.note = if dry_run {
                format!(
                    "an interrupted migration of {vm_name} did not get to {to}; what it left there goes: {}",
                    s.removed.join(", ")
                )
            } else if s.removed.is_empty() {
                format!("an interrupted migration of {vm_name} to {to} was undone")
            } else {
                format!("removed what an interrupted migration of {vm_name} left there: {}", s.removed.join(", "))
            };
        }
    }
    s
}

/// Settles every move cut short from `src` whose destination answers within
/// `RECOVER_WITHIN` (5 s): what every phyllome command does first (`op::recover`). Returns each
/// record looked at, settled or left.
pub fn recover(src: &Libvirt, remove_here: RemoveHere<'_>) -> Vec<Settled> {
    let dir = dir();
    if !all(&dir).iter().any(|m| m.is_dead() && m.made_through(src)) {
        return vec![];
    }
    let Some(_lock) = settle_lock(&dir) else { return vec![] };
    let mut reached: std::collections::HashMap<String, std::result::Result<Libvirt, String>> = Default::default();
    let mut out = vec![];
    // Read again under the lock: another command may have settled some meanwhile.
    for mut m in all(&dir).into_iter().filter(|m| m.is_dead() && m.made_through(src)) {
        let dst = reached
            .entry(m.t().to.clone())
            .or_insert_with(|| crate::remotes::connect_within(&m.t().to, RECOVER_WITHIN));
        match dst {
            Ok(dst) => out.push(settle(src, dst, &mut m, &dir, false, false, remove_here)),
            Err(why) => {
                let why = format!("{} does not answer: {why}", host_label(&m.t().to));
                m.t_mut().why = Some(why.clone());
                let _ = m.save(&dir);
                out.push(Settled::left_as_is(&m, "unreachable", why));
            }
        }
    }
    out
}

/// Moves cut short from `src` to `to`, settled over the connection `dst` (or, with
/// `dry_run`, what would be done): `phyllome host clean`, and a migration to that host
/// before it starts. A move another phyllome command runs now is only said.
pub fn clean(src: &Libvirt, dst: &Libvirt, to: &str, dry_run: bool, remove_here: RemoveHere<'_>) -> Vec<Settled> {
    let dir = dir();
    let _lock = if dry_run { None } else { settle_lock(&dir) };
    let mut out = vec![];
    for mut m in all(&dir).into_iter().filter(|m| m.t().to == to && m.made_through(src)) {
        if m.is_dead() {
            out.push(settle(src, dst, &mut m, &dir, dry_run, false, remove_here));
        } else {
            let note = format!("phyllome (process {}) is moving {} there now", m.pid, m.vm);
            out.push(Settled::left_as_is(&m, "in-progress", note));
        }
    }
    out
}

/// Why the VM of `uuid` must not start through `lv`: a move of it is recorded and not
/// settled (after [`recover`] tried), so it may run on that host. Its destination (host
/// name when it has one) and the reason.
pub fn unfinished(lv: &Libvirt, uuid: &str) -> Option<(String, String)> {
    let m = all(&dir()).into_iter().find(|m| m.uuid() == uuid && m.made_through(lv))?;
    let why = if !m.is_dead() {
        format!("phyllome (process {}) is moving it now", m.pid)
    } else {
        m.t().why.clone().unwrap_or_else(|| "the phyllome command moving it stopped".into())
    };
    Some((host_label(&m.t().to), why))
}

/// A VM's move recorded through this connection, for the VM list.
pub(crate) struct Moving {
    orphan: bool,
}

impl Moving {
    /// `migrating` while its phyllome runs, `unfinished migration` once that is gone.
    pub(crate) fn reason(&self) -> &'static str {
        if self.orphan {
            "unfinished migration"
        } else {
            "migrating"
        }
    }
}

/// The moves recorded through `lv`, by VM UUID.
pub(crate) fn moves_from(lv: &Libvirt) -> std::collections::HashMap<String, Moving> {
    all(&dir())
        .into_iter()
        .filter(|m| m.made_through(lv))
        .map(|m| (m.uuid().to_string(), Moving { orphan: m.is_dead() }))
        .collect()
}

/// The moves cut short from `lv` that are not settled, in words (`phyllome check`).
pub fn unsettled(lv: &Libvirt) -> Vec<String> {
    all(&dir())
        .into_iter()
        .filter(|m| m.is_dead() && m.made_through(lv))
        .map(|m| {
            let to = host_label(&m.t().to);
            let why = m.t().why.clone().unwrap_or_else(|| "not looked at since".into());
            let left = m.left();
            let left = if left.is_empty() { String::new() } else { format!("; left there: {}", left.join(", ")) };
            format!("{} to {to} ({why}{left}): phyllome host clean {to}", m.vm)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_an_orphan_only_for_its_destination_once_its_process_is_gone() {
        let dir = std::env::temp_dir().join(format!("phyllome-test-pending-{}", std::process::id()));
        let mut m = Record {
            vm_uuid: Some("0b6c1a4e-0000-4000-8000-000000000001".into()),
            there: Some(MadeThere {
                to: "qemu+ssh://root@b/system".into(),
                volume: "v.qcow2".into(),
                secret: Some("s-uuid".into()),
                volume_key: Some("/pool/v.qcow2".into()),
                files: vec![("/nv".into(), "v_VARS.qcow2".into(), "/nv/v_VARS.qcow2".into())],
                ..MadeThere::default()
            }),
            ..Record::new_local(record::Operation::Migrate, "v")
        };
        m.save(&dir).unwrap();
        // Written 0600: it names a secret's UUID and paths.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file(&dir, m.uuid())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A record of a process that is gone (no pid is u32::MAX).
        m.pid = u32::MAX;
        m.save(&dir).unwrap();
        assert_eq!(orphans(&dir, "qemu+ssh://root@b/system").len(), 1);
        assert!(orphans(&dir, "qemu+ssh://root@c/system").is_empty(), "another host's record");
        assert_eq!(m.left(), ["volume phyllome/v.qcow2", "secret s-uuid", "/nv/v_VARS.qcow2"]);
        // A folder the uploads made there is part of what is left.
        m.t_mut().dirs.push("/b/v".into());
        assert_eq!(m.left().last().map(String::as_str), Some("folder /b/v"));
        assert!(!m.nothing_there());
        m.forget(&dir);
        assert!(orphans(&dir, "qemu+ssh://root@b/system").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_move_is_settled_from_what_both_hosts_show() {
        use State::*;
        // libvirt still has the job: nothing is decided, whatever the destination shows.
        assert_eq!(outcome(Some(Running), true, Some(Paused)), Outcome::UnderWay);
        // There, and no longer active here: it got there (running, paused on arrival, or shut down since).
        assert_eq!(outcome(Some(Shutoff), false, Some(Running)), Outcome::Arrived);
        assert_eq!(outcome(Some(Shutoff), false, Some(Paused)), Outcome::Arrived);
        assert_eq!(outcome(Some(Shutoff), false, Some(Shutoff)), Outcome::Arrived);
        assert_eq!(outcome(None, false, Some(Running)), Outcome::Arrived);
        // Not there: it failed, and whatever the move made there goes.
        assert_eq!(outcome(Some(Running), false, None), Outcome::Failed);
        assert_eq!(outcome(Some(Shutoff), false, None), Outcome::Failed);
        assert_eq!(outcome(Some(Paused), false, None), Outcome::Failed);
        // Defined there and running here: never decided for the user.
        assert_eq!(outcome(Some(Running), false, Some(Shutoff)), Outcome::Both);
        assert_eq!(outcome(Some(Running), false, Some(Running)), Outcome::Both);
    }

    #[test]
    fn a_record_of_an_older_version_still_reads_as_one_made_here() {
        let old = r#"{"vm":"v","uuid":"u","to":"qemu+ssh://b/system","pid":1,"boot_id":"x","pool":null,
            "secret":null,"volume":"v.qcow2","volume_key":null,"files":[]}"#;
        let m = Record::parse(old.as_bytes()).unwrap();
        assert!(m.uri.is_none() && m.t().dirs.is_empty() && m.made.paused_source.is_none() && !m.t().autostart);
        assert!(m.is_dead(), "another boot's record");
        assert!(m.nothing_there());
        assert_eq!(m.uuid(), "u");
    }
}
