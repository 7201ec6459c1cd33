//! Snapshots of a whole VM: its disks, its UEFI variables and its TPM state,
//! and with `--memory` its RAM, never in plaintext at rest.
//!
//! Why Phyllome makes them itself rather than through libvirt's snapshot API
//! (each seen on libvirt 11.3 / QEMU 10.0 with a Phyllome VM: LUKS qcow2 pool
//! volume, qcow2 NVRAM, swtpm):
//! - an internal snapshot of a shut-off VM runs `qemu-img snapshot -c` without
//!   the disk's secret: "Parameter 'encrypt.key-secret' is required for cipher";
//! - libvirt refuses internal disk-only snapshots of a running VM ("active qemu
//!   domains require external disk snapshots");
//! - an internal snapshot with memory writes the RAM into the encrypted qcow2,
//!   and QEMU aborts on it (`qcow2_co_encdec: Assertion QEMU_IS_ALIGNED(len,
//!   sector_size)`), killing the guest;
//! - external snapshots cannot be reverted for pool volumes ("source disk for
//!   'vda' is not a regular file, reverting to snapshot is not supported"), and
//!   an external memory file is plaintext;
//! - no libvirt snapshot holds the swtpm state without memory.
//!
//! So a snapshot is a folder `SNAPSHOT_DIR/VM-UUID/NAME/` holding:
//! - each writable disk as a qcow2 still LUKS-encrypted under the disk's own key:
//!   of a shut-off VM the image file copied as it is (ciphertext); of a running
//!   VM a point-in-time copy QEMU writes while the guest runs on (libvirt's
//!   push-mode backup, its target encrypted with the disk's own secret);
//! - the NVRAM file and the swtpm state files, copied while the VM is off or
//!   paused (QEMU flushes its images when it pauses), with their owner and mode;
//! - with `--memory`: the RAM and device state, saved by libvirt to a private
//!   tmpfs (RAM, like the guest's own memory) and written to disk only
//!   encrypted with age (X25519, ChaCha20-Poly1305 STREAM), its identity kept
//!   in a libvirt secret that only libvirt's root clients can read;
//! - `snapshot.json`, the record.
//!
//! All or nothing: the folder is built as `.NAME.part` and renamed at the end;
//! a pending entry records what is under way (a backup job, a paused or frozen
//! guest, a saved memory file, staged revert files) so a failure, Ctrl-C or a
//! kill -9 leaves the VM as it was and no half snapshot.

use crate::disk::copy::{
    dir_files as copy_dir_files, du, same_owner, sparse as copy_sparse, sparse_into as copy_sparse_into,
};
use crate::disk::DiskError;
use crate::domxml;
use crate::domxml::shape;
use crate::errors::Classify;
use crate::host_files::FileId;
use crate::op::lock;
use crate::op::progress::{note, Progress, Report};
use crate::op::record::{Made, Operation};
use crate::op::undo::{self, drop_memory_mount};
use crate::paths::{tpm_dir, MEMORY_RUN, SNAPSHOT_DIR};
use crate::vm::{self, VmError};
use phyllome_libvirt::{Libvirt, State};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Kept free beyond what a snapshot needs.
const SPARE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Feature(#[from] phyllome_model::Unsupported),
    #[error("snapshot name {0:?}: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    BadName(String),
    #[error("--description: {0}")]
    BadDescription(&'static str),
    #[error("{vm} has no snapshot {name:?} (`phyllome snapshot list {vm}` shows them)")]
    NoSnapshot { vm: String, name: String },
    #[error("{vm} already has a snapshot {name:?}: choose another name")]
    Exists { vm: String, name: String },
    #[error("{0} is running: a revert replaces its disks and state; stop it first, or give --force to power it off")]
    RevertRunning(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    CannotHere(String),
    #[error("not enough space in {path} {what}: it needs {need_mib} MiB, {free_mib} MiB are free")]
    NoSpace { path: String, what: &'static str, need_mib: u64, free_mib: u64 },
    #[error("{vm}'s disks changed since snapshot {name:?} was taken ({what}): it cannot be reverted")]
    Changed { vm: String, name: String, what: String },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("the memory state of snapshot {0:?} cannot be read: {1}")]
    Memory(String, String),
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

impl From<DiskError> for SnapshotError {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::Io(path, e) => SnapshotError::Io(path, e),
            DiskError::Stopped(s) => SnapshotError::Vm(s.into()),
            DiskError::Job(why) => SnapshotError::Io(
                "disk copy".into(),
                std::io::Error::other(why.unwrap_or_else(|| "the backup job failed".into())),
            ),
            DiskError::Libvirt(e) => SnapshotError::Libvirt(e),
            DiskError::Journal(e) => SnapshotError::Vm(e.into()),
            DiskError::Image(why) => SnapshotError::Io("disk copy".into(), std::io::Error::other(why)),
        }
    }
}

impl From<crate::op::StepError> for SnapshotError {
    fn from(e: crate::op::StepError) -> Self {
        SnapshotError::Vm(e.into())
    }
}

impl From<crate::host_files::NotHere> for SnapshotError {
    fn from(e: crate::host_files::NotHere) -> Self {
        SnapshotError::Vm(e.into())
    }
}

impl From<lock::LockError> for SnapshotError {
    fn from(e: lock::LockError) -> Self {
        SnapshotError::Vm(e.into())
    }
}

fn io(what: impl AsRef<Path>, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io(what.as_ref().display().to_string(), e)
}

impl Classify for SnapshotError {
    fn kind(&self) -> crate::errors::ErrorKind {
        use crate::errors::ErrorKind as K;
        match self {
            SnapshotError::Vm(e) => e.kind(),
            SnapshotError::Libvirt(e) => e.kind(),
            SnapshotError::Feature(_) | SnapshotError::CannotHere(_) => K::Unsupported,
            SnapshotError::BadName(_) | SnapshotError::BadDescription(_) | SnapshotError::Refused(_) => K::InvalidInput,
            SnapshotError::NoSpace { .. } => K::NoSpace,
            SnapshotError::NoSnapshot { .. } => K::NotFound,
            SnapshotError::Exists { .. } | SnapshotError::RevertRunning(_) | SnapshotError::Changed { .. } => {
                K::Conflict
            }
            SnapshotError::Io(..) | SnapshotError::Memory(..) => K::Failed,
        }
    }
}

/// One disk copied into a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCopy {
    /// `vda`...
    pub target: String,
    /// The image it is a copy of.
    pub path: String,
    /// Its file name in the snapshot folder.
    pub file: String,
}

/// What `snapshot.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: String,
    pub vm_uuid: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub description: Option<String>,
    /// `running`, `paused` or `shut off`: the VM when it was taken.
    pub state: String,
    pub memory: bool,
    /// How consistent the disks are, in words.
    pub consistency: String,
    /// The snapshot the VM was at (made or reverted to) when this one was taken.
    pub parent: Option<String>,
    pub disks: Vec<DiskCopy>,
    /// The NVRAM file, when the VM has one (`nvram_present`: whether it existed yet).
    pub nvram: Option<String>,
    pub nvram_present: bool,
    /// Whether the VM has an emulated TPM, and whether its state existed yet.
    pub tpm: bool,
    pub tpm_present: bool,
    /// The libvirt secret holding the memory state's age identity.
    pub memory_secret: Option<String>,
    pub phyllome: String,
}

/// One row of `snapshot list` / `GET /api/v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub description: Option<String>,
    /// `running`, `paused` or `shut off`: the VM when it was taken.
    pub state: String,
    /// With the RAM: a revert resumes where the VM was.
    pub memory: bool,
    /// `shut off`, `memory`, `guest agent froze N filesystems` or `crash-consistent`.
    pub consistency: String,
    /// Bytes the snapshot takes on the host's disk.
    pub size_bytes: u64,
    pub parent: Option<String>,
    /// The snapshot the VM was last made from or reverted to.
    pub current: bool,
}

/// A snapshot to take.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub name: Option<String>,
    pub memory: bool,
    pub description: Option<String>,
}

/// What a revert did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reverted {
    pub vm: String,
    pub snapshot: String,
    /// The VM's state now: `running`, `paused` or `shut off`.
    pub state: String,
    /// It was running and was powered off first (`--force`).
    pub forced_off: bool,
}

/// Checks a snapshot name: it becomes a folder name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadName(crate::text::printable(name).into_owned()))
    }
}

fn check_description(d: &str) -> Result<()> {
    if d.len() > 1024 {
        return Err(SnapshotError::BadDescription("at most 1024 bytes"));
    }
    if d.chars().any(|c| c.is_control() && c != '\n') {
        return Err(SnapshotError::BadDescription("no control characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The operation: what it made or changed is recorded (`op::record::Made`) in the VM's
// operation lock, which also keeps other operations off the VM.

struct SnapshotOp<'a> {
    lv: &'a Libvirt,
    vm: String,
    uuid: String,
    p: Made,
    lock: Option<lock::Lock>,
    op: crate::op::Op,
}

impl<'a> SnapshotOp<'a> {
    /// Claims the VM for one snapshot operation: its lock, refused while another operation holds it.
    fn begin(lv: &'a Libvirt, vm: &str, uuid: &str, what: Operation) -> Result<SnapshotOp<'a>> {
        let lock = lock::take_uuid(lv, vm, uuid, what)?;
        let op = crate::op::Op::begin();
        Ok(SnapshotOp { lv, vm: vm.into(), uuid: uuid.into(), p: Made::default(), lock: Some(lock), op })
    }

    fn save(&mut self) -> Result<()> {
        let lock = self.lock.as_mut().expect("held until finish");
        lock.record(&self.p).map_err(|e| io(crate::paths::LOCK_DIR, e))
    }

    /// A step: test hooks (PHYLLOME_TEST_FAIL_AT / PAUSE_AT) and Ctrl-C.
    fn step(&self, name: &str) -> Result<()> {
        Ok(self.op.step(name)?)
    }

    /// Ctrl-C only, inside a step's loop.
    fn check(&self) -> Result<()> {
        Ok(self.op.check()?)
    }

    /// Makes a new file (0600) to stage into, recorded by path before it exists and by inode once made.
    fn stage_file(&mut self, path: &Path) -> Result<std::fs::File> {
        let name = path.to_string_lossy().into_owned();
        self.p.staged.push(FileId::planned(&name));
        self.save()?;
        let f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| io(path, e))?;
        *self.p.staged.last_mut().expect("pushed") = FileId::of(&name).map_err(|e| io(path, e))?;
        self.save()?;
        Ok(f)
    }

    /// Done: the lock goes, the signals are the process's again.
    fn finish(mut self) {
        if let Some(l) = self.lock.take() {
            l.release();
        }
    }

    /// Undoes what is recorded, then finishes (or, when libvirt is still busy with the VM,
    /// leaves the record for the next command).
    fn fail(mut self, e: SnapshotError) -> SnapshotError {
        let done = undo::changed_state(self.lv, &self.vm, &mut self.p);
        let interrupted = self.op.interrupted();
        if done {
            self.finish();
        } else {
            let _ = self.save();
            drop(self.lock.take());
        }
        if interrupted {
            SnapshotError::Vm(VmError::Interrupted)
        } else {
            e
        }
    }
}

/// Writes a new file of mode 0600, synced.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| io(path, e))?;
    f.write_all(data).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

// ---------------------------------------------------------------------------
// Reading snapshots.

fn vm_dir(uuid: &str) -> PathBuf {
    Path::new(SNAPSHOT_DIR).join(uuid)
}

fn current_of(uuid: &str) -> Option<String> {
    std::fs::read_to_string(vm_dir(uuid).join(".current")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn set_current(uuid: &str, name: Option<&str>) -> Result<()> {
    let path = vm_dir(uuid).join(".current");
    match name {
        Some(n) => {
            let tmp = vm_dir(uuid).join(".current.tmp");
            std::fs::write(&tmp, n).map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
        }
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
            _ => Ok(()),
        },
    }
}

fn read_record(uuid: &str, name: &str) -> Option<Record> {
    let text = std::fs::read(vm_dir(uuid).join(name).join("snapshot.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

fn records(uuid: &str) -> Vec<Record> {
    let Ok(dir) = std::fs::read_dir(vm_dir(uuid)) else { return vec![] };
    let mut out: Vec<Record> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| read_record(uuid, &n))
        .collect();
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    out
}

fn info_of(r: &Record, current: Option<&str>) -> SnapshotInfo {
    SnapshotInfo {
        size_bytes: du(&vm_dir(&r.vm_uuid).join(&r.name)),
        current: current == Some(r.name.as_str()),
        name: r.name.clone(),
        created: r.created,
        description: r.description.clone(),
        state: r.state.clone(),
        memory: r.memory,
        consistency: r.consistency.clone(),
        parent: r.parent.clone(),
    }
}

/// How many snapshots the VM with this UUID has (`list` and `info` show it).
pub fn count(uuid: &str) -> usize {
    records(uuid).len()
}

pub fn list(lv: &Libvirt, vm_name: &str) -> Result<Vec<SnapshotInfo>> {
    here(lv)?;
    vm::recover(lv);
    let uuid = vm::summary(lv, vm_name)?.uuid;
    let current = current_of(&uuid);
    Ok(records(&uuid).iter().map(|r| info_of(r, current.as_deref())).collect())
}

/// The writable disks of a domain: (target, image path).
fn writable_disks(lv: &Libvirt, s: &domxml::DomainSummary) -> Result<Vec<(String, String, Option<String>)>> {
    let mut out = vec![];
    for d in s.disks.iter().filter(|d| d.device == "disk") {
        let path = match (&d.file, &d.pool, &d.volume) {
            (Some(f), _, _) => f.clone(),
            (None, Some(pool), Some(vol)) => match lv.volume_info(pool, vol)? {
                Some(v) => v.path,
                None => return Err(SnapshotError::Refused(format!("disk {} ({pool}/{vol}) does not exist", d.target))),
            },
            _ => {
                return Err(SnapshotError::CannotHere(format!(
                    "disk {} is not a file: snapshots copy disk images",
                    d.target
                )))
            }
        };
        out.push((d.target.clone(), path, d.luks_secret.clone()));
    }
    Ok(out)
}

fn free_space(dir: &Path) -> Result<u64> {
    fs4::available_space(dir).map_err(|e| io(dir, e))
}

pub(crate) fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|k| k * 1024)
        .unwrap_or(0)
}

/// Mounts a private tmpfs of `bytes` for a plaintext memory state; returns the folder.
fn memory_mount(p: &mut Made, bytes: u64) -> Result<String> {
    let dir = format!("{MEMORY_RUN}/{}", std::process::id());
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io(&dir, e))?;
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700,nosuid,nodev,noexec"), "tmpfs", &dir])
        .status()
        .map_err(|e| io("mount", e))?;
    if !st.success() {
        let _ = std::fs::remove_dir(&dir);
        return Err(SnapshotError::CannotHere(format!(
            "cannot mount a tmpfs at {dir} for the memory state (mount exited {st}): a memory snapshot needs one"
        )));
    }
    p.mount = Some(dir.clone());
    Ok(dir)
}

// ---------------------------------------------------------------------------
// Create.

/// Snapshots are folders of this machine holding copies of the VM's disk images, UEFI
/// variables and TPM state: refused, before anything is made, for a VM of another host.
fn here(lv: &Libvirt) -> Result<()> {
    Ok(crate::host_files::here_only(lv, "snapshots (they copy the VM's disk images, UEFI variables and TPM state)")?)
}

/// Takes a snapshot of the VM `vm_name`.
pub fn create(lv: &Libvirt, vm_name: &str, req: &Request, report: Report<'_>) -> Result<SnapshotInfo> {
    here(lv)?;
    vm::recover(lv);
    report(Progress::Step { step: "check" });
    let xml = lv.inactive_xml(vm_name).map_err(|e| {
        if e.is_no_domain() {
            SnapshotError::Vm(VmError::NoSuchVm(vm_name.into()))
        } else {
            e.into()
        }
    })?;
    let s = domxml::parse(&xml).map_err(|e| VmError::Xml(vm_name.into(), e))?;
    report(Progress::Step { step: "claim" });
    // Held from here, so what is checked below stays true until the snapshot is made.
    let mut op = SnapshotOp::begin(lv, vm_name, &s.uuid, Operation::SnapshotCreate)?;
    let name = match &req.name {
        Some(n) => n.clone(),
        None => default_name(&s.uuid),
    };
    check_name(&name)?;
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    if vm_dir(&s.uuid).join(&name).exists() {
        return Err(SnapshotError::Exists { vm: vm_name.into(), name });
    }
    let state = lv.state(vm_name)?;
    let live = if state == State::Shutoff { xml.clone() } else { lv.xml(vm_name)? };
    let sh = shape(&live).map_err(|e| VmError::Xml(vm_name.into(), e))?;
    if !sh.hostdevs.is_empty() {
        return Err(SnapshotError::Refused(format!(
            "{vm_name} has a passed-through device ({}): its own state (firmware, queues, what it holds) is in no snapshot, \
             so a revert would hand the guest a device in another state. Detach it first (phyllome detach)",
            sh.hostdevs.join(", ")
        )));
    }
    vm::refuse_changed(lv, &s, "snapshot it: a snapshot would copy only the image over its encrypted volume")?;
    let running = matches!(state, State::Running | State::Paused);
    let prompt = s.encryption.as_deref() == Some("prompt");
    if req.memory {
        if !running {
            return Err(SnapshotError::Refused(format!("{vm_name} is shut off: --memory needs a running VM")));
        }
        if !sh.memory_blockers.is_empty() {
            return Err(SnapshotError::CannotHere(format!(
                "{vm_name}'s memory cannot be saved because of {}: take a snapshot without --memory",
                sh.memory_blockers.join(" and ")
            )));
        }
        if prompt {
            return Err(SnapshotError::Refused(format!(
                "{vm_name}'s disk key is a passphrase typed at each start; its memory holds that key, and a memory \
                 snapshot would need a key kept on this host. Take it without --memory, or with the VM stopped"
            )));
        }
    } else if running {
        let (host, _) = crate::host_facts::gather(lv, false).map_err(VmError::from)?;
        host.check(phyllome_model::Feature::LiveDiskCopy)?;
        if prompt {
            return Err(SnapshotError::Refused(format!(
                "{vm_name}'s disk key is a passphrase that only lives while QEMU starts: a copy of its running disk \
                 could not be encrypted with it. Stop it first (a stopped VM's encrypted disk is copied as it is)"
            )));
        }
    }
    let disks = writable_disks(lv, &s)?;
    // The space it needs: every disk's allocation (a running VM's copy holds no more), NVRAM, TPM, memory.
    let mut need: u64 = disks.iter().map(|(_, p, _)| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)).sum();
    let nvram = s.nvram.as_ref().map(|n| n.path.clone());
    need += nvram.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()).unwrap_or(0);
    let tpm = tpm_dir(&s.uuid);
    need += du(&tpm);
    let guest_bytes = s.memory_mib.max(1) * (1 << 20);
    if req.memory {
        need += guest_bytes;
        if mem_available() < guest_bytes + (256 << 20) {
            return Err(SnapshotError::Refused(format!(
                "the host has {} MiB of memory available; saving {vm_name}'s {} MiB of RAM through a tmpfs needs {} MiB",
                mem_available() >> 20,
                s.memory_mib,
                (guest_bytes + (256 << 20)) >> 20
            )));
        }
    }
    let vdir = vm_dir(&s.uuid);
    std::fs::create_dir_all(&vdir).map_err(|e| io(&vdir, e))?;
    let _ = std::fs::set_permissions(SNAPSHOT_DIR, std::fs::Permissions::from_mode(0o711));
    std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o711)).map_err(|e| io(&vdir, e))?;
    let free = free_space(&vdir)?;
    if free < need + SPARE {
        return Err(SnapshotError::NoSpace {
            path: vdir.display().to_string(),
            what: "for the snapshot",
            need_mib: (need + SPARE).div_ceil(1 << 20),
            free_mib: free >> 20,
        });
    }

    let r = (|| -> Result<Record> {
        let part = vdir.join(format!(".{name}.part"));
        let _ = std::fs::remove_dir_all(&part);
        std::fs::create_dir(&part).map_err(|e| io(&part, e))?;
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o711)).map_err(|e| io(&part, e))?;
        op.p.part = Some(FileId::of(&part.to_string_lossy()).map_err(|e| io(&part, e))?);
        op.save()?;
        let copies: Vec<DiskCopy> = disks
            .iter()
            .map(|(t, p, _)| DiskCopy { target: t.clone(), path: p.clone(), file: format!("disk-{t}.qcow2") })
            .collect();
        let mut record = Record {
            name: name.clone(),
            vm_uuid: s.uuid.clone(),
            created: crate::op::record::now(),
            description: req.description.clone(),
            state: crate::domxml::state_name(state).into(),
            memory: req.memory,
            consistency: String::new(),
            parent: current_of(&s.uuid),
            disks: copies.clone(),
            nvram: nvram.clone(),
            nvram_present: nvram.as_ref().is_some_and(|p| Path::new(p).exists()),
            tpm: sh.tpm_emulator,
            tpm_present: tpm.is_dir(),
            memory_secret: None,
            phyllome: crate::VERSION.into(),
        };
        // NVRAM and TPM, while the VM is off or paused.
        let copy_small = |record: &Record| -> Result<()> {
            if let Some(p) = &record.nvram {
                if record.nvram_present {
                    let to = part.join("nvram");
                    copy_sparse(Path::new(p), &to, &crate::op::progress::quiet, &AtomicBool::new(false))?;
                }
            }
            if record.tpm && record.tpm_present {
                copy_dir_files(&tpm, &part.join("tpm"))?;
            }
            Ok(())
        };
        if req.memory {
            report(Progress::Step { step: "save" });
            let dir = memory_mount(&mut op.p, guest_bytes + (64 << 20))?;
            let file = format!("{dir}/memory.save");
            op.p.save_file = Some(file.clone());
            // Recorded before libvirt is asked: it finishes a save whose caller died, and then only
            // the file holds the guest.
            op.p.saved = Some(state == State::Paused);
            op.save()?;
            op.step("save")?;
            lv.save(vm_name, &file)?;
            report(Progress::Step { step: "disk" });
            for c in &copies {
                copy_sparse(Path::new(&c.path), &part.join(&c.file), report, op.op.flag())?;
            }
            report(Progress::Step { step: "nvram-tpm" });
            copy_small(&record)?;
            op.step("memory")?;
            // The VM runs again before its saved state is encrypted: it is stopped only for the copies.
            report(Progress::Step { step: "restore" });
            lv.restore(&file, state == State::Paused)?;
            op.p.saved = None;
            op.save()?;
            report(Progress::Step { step: "memory" });
            let secret = encrypt_memory(lv, &mut op, &file, &part, vm_name, &name, report)?;
            record.memory_secret = Some(secret);
            drop_memory_mount(&mut op.p);
            op.save()?;
            record.consistency = "memory".into();
        } else if running {
            let frozen = if state == State::Running {
                report(Progress::Step { step: "freeze" });
                match lv.fs_freeze(vm_name) {
                    Ok(n) => {
                        op.p.frozen = true;
                        op.save()?;
                        Some(n)
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            report(Progress::Step { step: "disk" });
            let targets: Vec<(String, String, Option<String>)> = disks
                .iter()
                .zip(&copies)
                .map(|((t, p, secret), c)| {
                    let uuid = secret.as_ref().map(|_| lv.volume_secret(p)).transpose()?.flatten();
                    Ok((t.clone(), part.join(&c.file).to_string_lossy().into_owned(), uuid))
                })
                .collect::<Result<_>>()?;
            let skip: Vec<String> = s.disks.iter().filter(|d| d.device != "disk").map(|d| d.target.clone()).collect();
            op.p.backup = true;
            op.save()?;
            lv.backup_begin(vm_name, &crate::disk::backup::backup_xml(&targets, &skip))?;
            // The disks' point in time is fixed; now NVRAM and TPM, paused only for that.
            if state == State::Running {
                report(Progress::Step { step: "pause" });
                lv.suspend(vm_name)?;
                op.p.paused = true;
                op.save()?;
            }
            report(Progress::Step { step: "nvram-tpm" });
            let small = copy_small(&record);
            if op.p.paused {
                lv.resume(vm_name)?;
                op.p.paused = false;
            }
            if op.p.frozen {
                let _ = lv.fs_thaw(vm_name);
                op.p.frozen = false;
            }
            op.save()?;
            small?;
            record.consistency = match frozen {
                Some(n) => format!("guest agent froze {n} filesystems"),
                None => "crash-consistent (no guest agent answered)".into(),
            };
            if frozen.is_none() {
                note(report, "no guest agent answered: the disks are crash-consistent, as after a power cut");
            }
            report(Progress::Step { step: "copy" });
            crate::disk::backup::wait(lv, vm_name, op.op.flag(), report)?;
            op.p.backup = false;
            op.save()?;
        } else {
            report(Progress::Step { step: "disk" });
            for c in &copies {
                op.step("disk")?;
                copy_sparse(Path::new(&c.path), &part.join(&c.file), report, op.op.flag())?;
            }
            report(Progress::Step { step: "nvram-tpm" });
            copy_small(&record)?;
            record.consistency = "shut off".into();
        }
        op.step("finish")?;
        report(Progress::Step { step: "finish" });
        let json = part.join("snapshot.json");
        write_private(&json, &serde_json::to_vec_pretty(&record).expect("serializable"))?;
        let dest = vdir.join(&name);
        std::fs::rename(&part, &dest).map_err(|e| io(&dest, e))?;
        op.p.part = None;
        op.p.memory_secret = None;
        op.save()?;
        set_current(&s.uuid, Some(&name))?;
        Ok(record)
    })();
    match r {
        Ok(record) => {
            op.finish();
            Ok(info_of(&record, Some(&record.name)))
        }
        Err(e) => Err(op.fail(e)),
    }
}

fn default_name(uuid: &str) -> String {
    let taken: Vec<String> = records(uuid).into_iter().map(|r| r.name).collect();
    (1..)
        .map(|i| format!("snap{i}"))
        .find(|n| !taken.contains(n) && !vm_dir(uuid).join(n).exists())
        .expect("a free name")
}

/// Encrypts the saved memory into `part/memory.age` under a new age identity
/// kept in a libvirt secret; returns the secret's UUID.
fn encrypt_memory(
    lv: &Libvirt,
    op: &mut SnapshotOp<'_>,
    file: &str,
    part: &Path,
    vm_name: &str,
    snap: &str,
    report: Report<'_>,
) -> Result<String> {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let out_path = part.join("memory.age");
    let usage = vm_dir(&op.uuid).join(snap).join("memory.age");
    let secret = lv.define_readable_secret(
        &usage.to_string_lossy(),
        &format!("phyllome: memory key of snapshot {snap} of VM {vm_name}"),
        identity.to_string().expose_secret().as_bytes(),
    )?;
    op.p.memory_secret = Some(secret.clone());
    op.save()?;
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| SnapshotError::Memory(snap.into(), e.to_string()))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out_path)
        .map_err(|e| io(&out_path, e))?;
    let mut w = enc.wrap_output(std::io::BufWriter::with_capacity(1 << 20, out)).map_err(|e| io(&out_path, e))?;
    let mut src = std::fs::File::open(file).map_err(|e| io(file, e))?;
    let total = src.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    loop {
        op.check()?;
        let n = src.read(&mut buf).map_err(|e| io(file, e))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(|e| io(&out_path, e))?;
        done += n as u64;
        report(Progress::Bytes { done, total });
    }
    let out = w.finish().map_err(|e| io(&out_path, e))?;
    out.into_inner().map_err(|e| io(&out_path, e.into_error()))?.sync_all().map_err(|e| io(&out_path, e))?;
    Ok(secret)
}

/// Decrypts a snapshot's memory into `to`.
fn decrypt_memory(lv: &Libvirt, r: &Record, to: &str) -> Result<()> {
    let bad = |e: String| SnapshotError::Memory(r.name.clone(), e);
    let uuid = r.memory_secret.as_deref().ok_or_else(|| bad("its key is not recorded".into()))?;
    let value = lv.secret_value(uuid).map_err(|e| bad(format!("its key (libvirt secret {uuid}): {}", e.message)))?;
    let text = String::from_utf8(value).map_err(|_| bad("its key is not an age identity".into()))?;
    let identity: age::x25519::Identity =
        text.trim().parse().map_err(|_| bad("its key is not an age identity".into()))?;
    let path = vm_dir(&r.vm_uuid).join(&r.name).join("memory.age");
    let f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
    let dec = age::Decryptor::new(std::io::BufReader::with_capacity(1 << 20, f)).map_err(|e| bad(e.to_string()))?;
    let mut reader = dec.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(|e| bad(e.to_string()))?;
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to).map_err(|e| io(to, e))?;
    // A flipped byte or a cut file fails here (each 64 KiB chunk is authenticated).
    std::io::copy(&mut reader, &mut out).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Revert.

/// Puts the VM back to snapshot `snap`: disks, NVRAM, TPM state, and the RAM
/// for a memory snapshot (which resumes it). A running VM needs `force`.
pub fn revert(
    lv: &Libvirt,
    vm_name: &str,
    snap: &str,
    start: bool,
    force: bool,
    ask: &dyn Fn() -> vm::Result<Vec<u8>>,
    report: Report<'_>,
) -> Result<Reverted> {
    here(lv)?;
    vm::recover(lv);
    report(Progress::Step { step: "check" });
    check_name(snap).map_err(|_| SnapshotError::NoSnapshot {
        vm: vm_name.into(),
        name: crate::text::printable(snap).into_owned(),
    })?;
    let s = vm::summary(lv, vm_name)?;
    report(Progress::Step { step: "claim" });
    // Held from here, so what is checked below stays true until the revert is done.
    let mut op = SnapshotOp::begin(lv, vm_name, &s.uuid, Operation::SnapshotRevert)?;
    let r = read_record(&s.uuid, snap)
        .ok_or_else(|| SnapshotError::NoSnapshot { vm: vm_name.into(), name: snap.into() })?;
    let disks = writable_disks(lv, &s)?;
    let now_disks: Vec<(&str, &str)> = disks.iter().map(|(t, p, _)| (t.as_str(), p.as_str())).collect();
    let then: Vec<(&str, &str)> = r.disks.iter().map(|d| (d.target.as_str(), d.path.as_str())).collect();
    if now_disks != then {
        return Err(SnapshotError::Changed {
            vm: vm_name.into(),
            name: snap.into(),
            what: format!("then {then:?}, now {now_disks:?}"),
        });
    }
    let state = lv.state(vm_name)?;
    let active = matches!(state, State::Running | State::Paused);
    if active && !force {
        return Err(SnapshotError::RevertRunning(vm_name.into()));
    }
    let sdir = vm_dir(&s.uuid).join(snap);
    if r.memory {
        let need = std::fs::metadata(sdir.join("memory.age")).map(|m| m.len()).unwrap_or(0);
        if mem_available() < need + (256 << 20) {
            return Err(SnapshotError::Refused(format!(
                "restoring the memory of {snap} needs {} MiB of host memory; {} MiB are available",
                (need + (256 << 20)) >> 20,
                mem_available() >> 20
            )));
        }
    }
    let tdir = tpm_dir(&s.uuid);
    staging_space(&r, &sdir, &tdir)?;
    let res = (|| -> Result<Reverted> {
        // Stage every file beside the one it replaces, then swap them in.
        report(Progress::Step { step: "stage" });
        let mut swaps: Vec<(PathBuf, PathBuf)> = vec![];
        for d in &r.disks {
            let dst = Path::new(&d.path);
            let staged = staged_name(dst);
            let like = std::fs::metadata(dst).map_err(|e| io(dst, e))?;
            let _ = std::fs::remove_file(&staged);
            let mut out = op.stage_file(&staged)?;
            copy_sparse_into(&sdir.join(&d.file), &mut out, &staged, report, op.op.flag())?;
            same_owner(&staged, &like)?;
            op.step("stage")?;
            swaps.push((staged, dst.to_path_buf()));
        }
        let mut remove_nvram = false;
        if let Some(p) = &r.nvram {
            let dst = Path::new(p);
            if r.nvram_present {
                let staged = staged_name(dst);
                let _ = std::fs::remove_file(&staged);
                let mut out = op.stage_file(&staged)?;
                copy_sparse_into(&sdir.join("nvram"), &mut out, &staged, &crate::op::progress::quiet, op.op.flag())?;
                // Owned as the snapshot's copy was (libvirt's QEMU user, or root).
                let like = std::fs::metadata(dst)
                    .or_else(|_| std::fs::metadata(sdir.join("nvram")))
                    .map_err(|e| io(dst, e))?;
                same_owner(&staged, &like)?;
                swaps.push((staged, dst.to_path_buf()));
            } else {
                remove_nvram = true;
            }
        }
        let mut tpm_staged = None;
        if r.tpm && r.tpm_present {
            let staged = tdir.with_file_name(".tpm2.phyllome-revert");
            let _ = std::fs::remove_dir_all(&staged);
            std::fs::create_dir_all(tdir.parent().expect("has a parent")).map_err(|e| io(&tdir, e))?;
            op.p.staged.push(FileId::planned(&staged.to_string_lossy()));
            op.save()?;
            copy_dir_files(&sdir.join("tpm"), &staged)?;
            *op.p.staged.last_mut().expect("pushed") =
                FileId::of(&staged.to_string_lossy()).map_err(|e| io(&staged, e))?;
            op.save()?;
            tpm_staged = Some(staged);
        }
        op.step("revert")?;
        let forced_off = active;
        if active {
            report(Progress::Step { step: "power-off" });
            lv.destroy(vm_name)?;
        }
        // The swap: renames only, nothing left to fail on space.
        report(Progress::Step { step: "swap" });
        for (staged, dst) in &swaps {
            std::fs::rename(staged, dst).map_err(|e| io(dst, e))?;
        }
        if remove_nvram {
            if let Some(p) = &r.nvram {
                let _ = std::fs::remove_file(p);
            }
        }
        if r.tpm {
            let old = tdir.with_file_name(".tpm2.phyllome-old");
            let _ = std::fs::remove_dir_all(&old);
            if tdir.exists() {
                std::fs::rename(&tdir, &old).map_err(|e| io(&tdir, e))?;
            }
            if let Some(staged) = &tpm_staged {
                std::fs::rename(staged, &tdir).map_err(|e| io(&tdir, e))?;
            }
            let _ = std::fs::remove_dir_all(&old);
        }
        op.p.staged.clear();
        op.save()?;
        if let Some(pool) = s.main_disk().and_then(|d| d.pool.clone()) {
            let _ = lv.refresh_pool(&pool);
        }
        set_current(&s.uuid, Some(snap))?;
        let now_state = if r.memory {
            report(Progress::Step { step: "memory" });
            let dir = memory_mount(
                &mut op.p,
                std::fs::metadata(sdir.join("memory.age")).map(|m| m.len()).unwrap_or(0) + (64 << 20),
            )?;
            let file = format!("{dir}/memory.save");
            op.p.save_file = Some(file.clone());
            op.save()?;
            decrypt_memory(lv, &r, &file)?;
            // Whole now: should this process die, recovery restores it (the disks are the snapshot's already).
            op.p.saved = Some(r.state == "paused");
            op.save()?;
            report(Progress::Step { step: "restore" });
            lv.restore(&file, r.state == "paused")?;
            op.p.saved = None;
            drop_memory_mount(&mut op.p);
            op.save()?;
            r.state.clone()
        } else if start {
            report(Progress::Step { step: "start" });
            vm::start(lv, vm_name, ask)?;
            "running".into()
        } else {
            "shut off".into()
        };
        Ok(Reverted { vm: vm_name.into(), snapshot: snap.into(), state: now_state, forced_off })
    })();
    match res {
        Ok(done) => {
            op.finish();
            Ok(done)
        }
        Err(e) => Err(op.fail(e)),
    }
}

/// The name a revert stages a copy of `dst` under, beside it.
fn staged_name(dst: &Path) -> PathBuf {
    dst.with_file_name(format!(".{}.phyllome-revert", file_name(dst)))
}

/// Refuses a revert whose staged copies would not fit beside the files they
/// replace (each file system: the snapshot's disks, NVRAM and TPM state, and a spare).
fn staging_space(r: &Record, sdir: &Path, tdir: &Path) -> Result<()> {
    let allocated = |p: &Path| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
    let mut wants: Vec<(PathBuf, u64)> = vec![];
    for d in &r.disks {
        wants.push((Path::new(&d.path).parent().unwrap_or(Path::new("/")).into(), allocated(&sdir.join(&d.file))));
    }
    if let Some(n) = r.nvram.as_ref().filter(|_| r.nvram_present) {
        wants.push((Path::new(n).parent().unwrap_or(Path::new("/")).into(), allocated(&sdir.join("nvram"))));
    }
    if r.tpm && r.tpm_present {
        wants.push((tdir.parent().and_then(Path::parent).unwrap_or(Path::new("/")).into(), du(&sdir.join("tpm"))));
    }
    // Summed per file system (by device), checked where the first of them is.
    let mut per_fs: Vec<(u64, PathBuf, u64)> = vec![];
    for (dir, bytes) in wants {
        let dev = std::fs::metadata(&dir).map(|m| m.dev()).unwrap_or(0);
        match per_fs.iter_mut().find(|(d, _, _)| *d == dev) {
            Some((_, _, sum)) => *sum += bytes,
            None => per_fs.push((dev, dir, bytes)),
        }
    }
    for (_, dir, need) in per_fs {
        let free = free_space(&dir)?;
        if free < need + SPARE {
            return Err(SnapshotError::NoSpace {
                path: dir.display().to_string(),
                what: "to stage the revert",
                need_mib: (need + SPARE).div_ceil(1 << 20),
                free_mib: free >> 20,
            });
        }
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Delete.

/// Deletes one snapshot: its folder and its memory key. Its children get its parent.
pub fn delete(lv: &Libvirt, vm_name: &str, snap: &str) -> Result<()> {
    here(lv)?;
    vm::recover(lv);
    check_name(snap).map_err(|_| SnapshotError::NoSnapshot {
        vm: vm_name.into(),
        name: crate::text::printable(snap).into_owned(),
    })?;
    let uuid = vm::summary(lv, vm_name)?.uuid;
    let r =
        read_record(&uuid, snap).ok_or_else(|| SnapshotError::NoSnapshot { vm: vm_name.into(), name: snap.into() })?;
    let op = SnapshotOp::begin(lv, vm_name, &uuid, Operation::SnapshotDelete)?;
    let res = remove_one(lv, &r);
    op.finish();
    res
}

fn remove_one(lv: &Libvirt, r: &Record) -> Result<()> {
    for mut child in records(&r.vm_uuid).into_iter().filter(|c| c.parent.as_deref() == Some(&r.name)) {
        child.parent = r.parent.clone();
        let path = vm_dir(&r.vm_uuid).join(&child.name).join("snapshot.json");
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &serde_json::to_vec_pretty(&child).expect("serializable"))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    }
    if current_of(&r.vm_uuid).as_deref() == Some(&r.name) {
        set_current(&r.vm_uuid, r.parent.as_deref())?;
    }
    let dir = vm_dir(&r.vm_uuid).join(&r.name);
    std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    if let Some(u) = &r.memory_secret {
        lv.undefine_secret_uuid(u)?;
    }
    Ok(())
}

/// Deletes every snapshot of the VM with this UUID (when the VM is deleted); how many.
pub fn delete_all(lv: &Libvirt, uuid: &str) -> Result<usize> {
    let all = records(uuid);
    for r in &all {
        let dir = vm_dir(uuid).join(&r.name);
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        if let Some(u) = &r.memory_secret {
            lv.undefine_secret_uuid(u)?;
        }
    }
    let _ = std::fs::remove_file(vm_dir(uuid).join(".current"));
    let _ = std::fs::remove_dir(vm_dir(uuid));
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_folder_names_only_when_safe() {
        for ok in ["a", "before-update", "snap_1.2", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é", &"x".repeat(65), "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_description("after the driver update\nsecond line").is_ok());
        assert!(check_description("bell\u{7}").is_err());
        assert!(check_description(&"d".repeat(1025)).is_err());
    }

    #[test]
    fn records_refuse_unknown_fields() {
        let r = Record {
            name: "a".into(),
            vm_uuid: "u".into(),
            created: 1,
            description: None,
            state: "shut off".into(),
            memory: false,
            consistency: "shut off".into(),
            parent: None,
            disks: vec![],
            nvram: None,
            nvram_present: false,
            tpm: false,
            tpm_present: false,
            memory_secret: None,
            phyllome: "0".into(),
        };
        let mut v = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<Record>(v.clone()).unwrap(), r);
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<Record>(v).is_err());
    }
}
