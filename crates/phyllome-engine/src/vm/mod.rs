//! The VM lifecycle: create (all or nothing, encrypted by default), start,
//! stop, kill, pause, resume, delete, list, info. The CLI and the web API
//! both call these; nothing here prints.

use crate::disk::{self, nvram::NvramError, DiskError};
use crate::domxml::{self, DomainSummary};
use crate::errors::{Classify, ErrorKind};
use crate::host_facts::{self, HostError};
use crate::host_files::FileId;
use crate::host_files::{here_only, HostFiles, Owner};
use crate::media::files::{check_files, disk_ref, FileError};
use crate::op::journal::{Journal, JournalError};
use crate::op::progress::{note, Progress, Report};
use crate::op::record::{self, Record};
use crate::op::{undo, Op, StepError};
use crate::paths::{self, boot_dir, INITRD_COPY, KERNEL_COPY};
use phyllome_libvirt::{Libvirt, State};
use phyllome_model::build::{self, BuildError, Encryption, NetworkChoice, Plan, Request};
use serde::Serialize;

use std::path::Path;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// What the user asks for, apart from the name.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// The model's request: OS, sizes, media, secure boot, disk bus, macOS
    /// parts, direct boot. Its name, network, disk and version are filled in by [`plan`].
    pub request: Request,
    /// `none`, `user`, `default` or a libvirt network name.
    pub network: String,
    pub encryption: Option<Encryption>,
    /// Storage pool for the disk (default: Phyllome's).
    pub pool: Option<String>,
    /// `--share HOSTDIR[:TAG][:rw]`, checked by [`plan`].
    pub shares: Vec<String>,
    /// Share folders that `share add` refuses without `--force` (an import given `--force`).
    pub share_force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Lock(#[from] crate::op::lock::LockError),
    #[error("a VM named {0:?} already exists")]
    NameBusy(String),
    #[error("no VM named {0:?}")]
    NoSuchVm(String),
    #[error("volume {volume} already exists in pool {pool} (it may be another VM's disk): choose another name")]
    VolumeExists { pool: String, volume: String },
    #[error("a libvirt secret for {0} already exists (it may be another VM's disk key): choose another name")]
    SecretExists(String),
    #[error("storage pool {0:?} does not exist")]
    NoPool(String),
    #[error("libvirt network {0:?} does not exist: use --network none, user, or an existing network")]
    NoNetwork(String),
    #[error("libvirt network {0:?} is not active: start it (virsh net-start {0}) or use --network none or user")]
    NetworkInactive(String),
    #[error("{name} was paused by an I/O error and pauses again on resume: {why}")]
    IoPaused { name: String, why: String },
    #[error("--network: {0}")]
    BadNetwork(String),
    #[error("{0} is running: stop it first (phyllome stop {0}, or phyllome kill {0})")]
    Running(String),
    #[error("disk {disk} is also used by VM {other}: remove it from {other} first, or delete with --keep-disk")]
    DiskShared { disk: String, other: String },
    #[error("volume {disk} is used by VM {vm}: it stays (phyllome delete {vm} removes both)")]
    VolumeInUse { disk: String, vm: String },
    #[error("no volume {0} (`phyllome volume list` shows them)")]
    NoVolume(String),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error(
        "{name} is not started here: its move to {to} is not settled ({why}), and it may run there. Once {to} answers, any phyllome command finishes the move or undoes it; `phyllome host clean {to}` does it now and says which"
    )]
    MoveUnfinished { name: String, to: String, why: String },
    #[error("interrupted: everything this command created was removed")]
    Interrupted,
    #[error("cannot create the disk: {0}")]
    Disk(String),
    #[error("the passphrase does not unlock {0}'s disk")]
    WrongPassphrase(String),
    #[error("{0}'s disk is locked by a passphrase: run `phyllome start {0}` where you can type it")]
    NeedPassphrase(String),
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("{name} did not shut down within {secs} s: try again with --force, or `phyllome kill {name}`")]
    StopTimeout { name: String, secs: u64 },
    #[error("cannot read {0}'s domain XML: {1}")]
    Xml(String, roxmltree::Error),
    #[error(transparent)]
    Nvram(#[from] NvramError),
    #[error("share: {0}")]
    BadShare(String),
    #[error("no OS given: choose one ({0}), or give an ISO to read it from")]
    NoOs(String),
    #[error("{path}: {why}")]
    Iso { path: String, why: String },
    #[error("{path} is not an install medium Phyllome knows ({ids}): choose the OS ({choices})")]
    UnknownMedia { path: String, ids: String, choices: String },
    #[error("{path} boots {boots}, but {os} starts from {needs}: use an image that boots {needs}, or another --os")]
    IsoFirmware { path: String, boots: &'static str, os: String, needs: &'static str },
    #[error(transparent)]
    NotHere(#[from] crate::host_files::NotHere),
    #[error("cannot remove the VM's snapshots: {0}")]
    Snapshots(String),
    #[error("{name} was changed outside Phyllome: {note}. Phyllome does not {action}. {undo}")]
    ChangedOutside { name: String, note: String, action: String, undo: String },
    #[error("injected failure at step {0} (PHYLLOME_TEST_FAIL_AT)")]
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    Injected(String),
}

impl Classify for VmError {
    fn kind(&self) -> ErrorKind {
        match self {
            VmError::Build(e) => e.kind(),
            VmError::File(e) => e.kind(),
            VmError::Libvirt(e) => e.kind(),
            VmError::Host(e) => e.kind(),
            VmError::Journal(e) => e.kind(),
            VmError::Lock(e) => e.kind(),
            VmError::Nvram(e) => e.kind(),
            VmError::NameBusy(_)
            | VmError::VolumeExists { .. }
            | VmError::SecretExists(_)
            | VmError::Running(_)
            | VmError::NotRunning(_)
            | VmError::DiskShared { .. }
            | VmError::NetworkInactive(_)
            | VmError::IoPaused { .. }
            | VmError::VolumeInUse { .. }
            | VmError::MoveUnfinished { .. }
            | VmError::ChangedOutside { .. } => ErrorKind::Conflict,
            VmError::NeedPassphrase(_) => ErrorKind::InvalidInput,
            VmError::NoSuchVm(_) | VmError::NoPool(_) | VmError::NoNetwork(_) | VmError::NoVolume(_) => {
                ErrorKind::NotFound
            }
            VmError::BadNetwork(_) | VmError::EmptyPassphrase | VmError::WrongPassphrase(_) => ErrorKind::InvalidInput,
            VmError::BadShare(_)
            | VmError::NoOs(_)
            | VmError::Iso { .. }
            | VmError::UnknownMedia { .. }
            | VmError::IsoFirmware { .. } => ErrorKind::InvalidInput,
            VmError::Interrupted => ErrorKind::Interrupted,
            VmError::NotHere(e) => e.kind(),
            _ => ErrorKind::Failed,
        }
    }
}

pub type Result<T> = std::result::Result<T, VmError>;

impl From<StepError> for VmError {
    fn from(e: StepError) -> VmError {
        match e {
            StepError::Interrupted => VmError::Interrupted,
            StepError::Injected(step) => VmError::Injected(step),
        }
    }
}

/// A disk operation's failure, in create's terms ("cannot create the disk: ...").
impl From<DiskError> for VmError {
    fn from(e: DiskError) -> VmError {
        match e {
            DiskError::Io(path, e) => VmError::Disk(format!("{path}: {e}")),
            DiskError::Stopped(s) => s.into(),
            e @ DiskError::Job(_) => VmError::Disk(e.to_string()),
            DiskError::Image(why) => VmError::Disk(why),
            DiskError::Libvirt(e) => VmError::Libvirt(e),
            DiskError::Journal(e) => VmError::Journal(e),
        }
    }
}

/// Validates and plans a VM on this host; changes nothing.
/// What the install ISO decides: the OS when none is given (from its volume
/// descriptor), whether it boots on the profile's firmware, and for Windows
/// the virtio-win disc of the ISO folder, found by its content.
fn media_checks(req: &mut Request, local: bool) -> Result<Option<phyllome_model::detect::Detected>> {
    use crate::media::iso;
    use phyllome_model::catalog::{self, Family, FirmwarePolicy};
    let info = match &req.iso {
        // Relative paths are refused by the model, with a clearer message.
        Some(path)
            if path.starts_with('/')
                && (req.os.is_empty() || catalog::profile(&req.os).is_some_and(|p| p.family != Family::Macos)) =>
        {
            Some(iso::inspect(Path::new(path)).map_err(|e| VmError::Iso { path: path.clone(), why: e.to_string() })?)
        }
        _ => None,
    };
    let mut detected = None;
    if req.os.is_empty() {
        let (Some(path), Some(info)) = (&req.iso, &info) else {
            return Err(VmError::NoOs(catalog::ids().join(", ")));
        };
        let Some(d) = iso::detect(info) else {
            let i = &info.ids;
            return Err(VmError::UnknownMedia {
                path: path.clone(),
                ids: format!(
                    "volume id {:?}, system id {:?}, publisher {:?}, application {:?}",
                    i.volume_id, i.system_id, i.publisher_id, i.application_id
                ),
                choices: catalog::ids().join(", "),
            });
        };
        req.os = d.os.to_string();
        detected = Some(d);
    }
    let Some(profile) = catalog::profile(&req.os) else { return Ok(detected) };
    if let (Some(path), Some(info)) = (&req.iso, &info) {
        // A direct kernel boot does not boot the ISO; an image with no boot entry at all is data.
        let booted = req.direct_boot.is_none() && (info.boot.bios || info.boot.uefi);
        let (fits, needs) = match profile.firmware.value {
            FirmwarePolicy::Uefi { .. } => (info.boot.uefi, "UEFI"),
            FirmwarePolicy::Bios => (info.boot.bios, "BIOS"),
        };
        if booted && !fits {
            return Err(VmError::IsoFirmware {
                path: path.clone(),
                boots: info.boot.describe(),
                os: req.os.clone(),
                needs,
            });
        }
    }
    // This machine's ISO folder is no place for another host's VM to read from.
    if profile.drivers_iso && req.drivers.is_none() && local {
        req.drivers = iso::find_virtio_win(Path::new(paths::ISO_DIR)).map(|p| p.to_string_lossy().into_owned());
    }
    Ok(detected)
}

pub fn plan(lv: &Libvirt, name: &str, spec: &VmSpec) -> Result<Plan> {
    phyllome_model::input::validate_name(name).map_err(BuildError::from)?;
    let network = match spec.network.as_str() {
        "none" => NetworkChoice::None,
        "user" => NetworkChoice::User,
        "default" | "" => NetworkChoice::Default,
        other => {
            phyllome_model::input::validate_name(other).map_err(|e| VmError::BadNetwork(e.to_string()))?;
            NetworkChoice::Named(other.to_string())
        }
    };
    let mut req = Request {
        name: name.to_string(),
        network,
        disk: None,
        version: crate::VERSION.to_string(),
        ..spec.request.clone()
    };
    // Media are given to QEMU where they are: on another host they would have to be that
    // host's files, which are not checked (nor read for the OS) from here.
    for (what, named) in [
        ("an install ISO (--iso)", &req.iso),
        ("a driver ISO (--drivers)", &req.drivers),
        ("an OpenCore image (--opencore)", &req.opencore),
    ] {
        if named.is_some() {
            here_only(lv, what)?;
        }
    }
    // A direct-boot kernel and initrd are this machine's files, copied to the VM's host.
    check_files(&req)?;
    let detected = media_checks(&mut req, lv.is_local())?;
    for share in &spec.shares {
        let (dir, tag, writable) = crate::share::parse_spec(share)?;
        let s = crate::share::resolve(lv, &dir, tag.as_deref(), writable, spec.share_force)?;
        if req.shares.iter().any(|o| o.tag == s.tag) {
            return Err(VmError::BadShare(format!("two shares tagged {}: give each its own tag (HOSTDIR:TAG)", s.tag)));
        }
        req.shares.push(s);
    }
    if phyllome_model::catalog::profile(&req.os).is_none() {
        return Err(BuildError::UnknownOs(req.os, phyllome_model::catalog::ids().join(", ")).into());
    }
    let pool = spec.pool.clone().unwrap_or_else(|| crate::POOL.to_string());
    let pool_path = lv.pool_path(&pool)?.unwrap_or_else(|| paths::POOL_PATH.to_string());
    req.disk = Some(disk_ref(name, &pool, &pool_path, spec.encryption.unwrap_or(Encryption::Secret)));
    let (host, _) = host_facts::gather(lv, true)?;
    let mut plan = build::build(&req, &host)?;
    if let Some(d) = detected {
        plan.choices.insert(
            0,
            build::Choice {
                item: "os",
                choice: format!("{} ({})", d.os, d.name),
                why: format!("detected from the ISO's {} {:?} ({})", d.field.label(), d.value, d.source),
            },
        );
    }
    if let Some(b) = &mut plan.domain.direct_boot {
        let dir = boot_dir(name);
        b.kernel = format!("{dir}/{KERNEL_COPY}");
        if let Some(i) = &mut b.initrd {
            *i = format!("{dir}/{INITRD_COPY}");
        }
        plan.choices.push(build::Choice {
            item: "boot-files",
            choice: format!("kernel and initrd copied into {dir}"),
            why: "libvirt chowns a direct-boot kernel to QEMU's user while the VM runs and may not give it back: it gets Phyllome's copy, and your files keep their owner and mode".into(),
        });
    }
    Ok(plan)
}

/// Copies the request's kernel and initrd (files of this machine) to where the plan's
/// domain expects them on the VM's host, recording each copy in the journal entry the
/// moment it exists.
fn copy_boot_files(files: &HostFiles, spec: &VmSpec, plan: &Plan, journal: &Journal, entry: &mut Record) -> Result<()> {
    let (Some(from), Some(to)) = (&spec.request.direct_boot, &plan.domain.direct_boot) else { return Ok(()) };
    let dir = Path::new(&to.kernel).parent().expect("a folder under BOOT_DIR").to_string_lossy().into_owned();
    files.make_dir(&dir).map_err(|e| VmError::Disk(format!("{dir}: {e}")))?;
    let pairs = [(Some(&from.kernel), Some(&to.kernel)), (from.initrd.as_ref(), to.initrd.as_ref())];
    for (src, dst) in pairs.into_iter().filter_map(|(a, b)| Some((a?, b?))) {
        let bytes = std::fs::read(src).map_err(|e| VmError::Disk(format!("{src}: {e}")))?;
        files
            .write_new(dst, &bytes, 0o644, Owner::Writer, &mut |id| {
                entry.made.boot_files.push(id.clone());
                journal.record(entry).map_err(std::io::Error::other)
            })
            .map_err(|e| VmError::Disk(format!("{dst}: {e}")))?;
    }
    Ok(())
}

/// Makes an empty file, exclusively, private (0600).
fn new_private_file(path: &str) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            VmError::Disk(format!("{path} appeared meanwhile; nothing was overwritten"))
        } else {
            VmError::Disk(format!("{path}: {e}"))
        }
    })
}

/// What must not exist yet, checked while this create holds the name's claim.
/// Returns whether the pool exists. (`apply` checks its creates with it before making anything.)
pub(crate) fn preflight(
    lv: &Libvirt,
    name: &str,
    plan: &Plan,
    disk: &phyllome_model::DiskRef,
    start: bool,
    progress: Report<'_>,
) -> Result<bool> {
    if lv.exists(name)? {
        return Err(VmError::NameBusy(name.to_string()));
    }
    let net = plan.domain.devices.iter().find_map(|d| match d {
        phyllome_model::domain::Device::Interface(phyllome_model::domain::Interface::Network { network, .. }) => {
            Some(network.clone())
        }
        _ => None,
    });
    if let Some(n) = net {
        match lv.network_state(&n)? {
            None => return Err(VmError::NoNetwork(n)),
            // Starting would fail half way: say so before creating anything.
            Some(false) if start => return Err(VmError::NetworkInactive(n)),
            Some(false) => {
                note(progress, &format!("libvirt network {n} is not active: `virsh net-start {n}` before starting"))
            }
            Some(true) => {}
        }
    }
    let pool_exists = lv.pool_path(&disk.pool)?.is_some();
    if !pool_exists && disk.pool != crate::POOL {
        return Err(VmError::NoPool(disk.pool.clone()));
    }
    let taken = HostFiles::of(lv).volume_taken(&disk.pool, &disk.path).map_err(|e| VmError::Disk(e.to_string()))?;
    if taken {
        return Err(VmError::VolumeExists { pool: disk.pool.clone(), volume: disk.volume.clone() });
    }
    if lv.volume_secret(&disk.path)?.is_some() {
        return Err(VmError::SecretExists(disk.path.clone()));
    }
    Ok(pool_exists)
}

/// Cleans up after the operations of processes that are gone (`op::recover`), finishing
/// a move that got to its destination with [`delete`]'s path; returns the VMs concerned.
pub fn recover(lv: &Libvirt) -> Vec<String> {
    crate::op::recover::recover(lv, &remove_moved)
}

/// The copy here of a VM that moved to another host, removed (`op::moves`).
pub(crate) fn remove_moved(lv: &Libvirt, name: &str) -> std::result::Result<crate::op::moves::RemovedHere, String> {
    let d = delete_now(lv, name, false).map_err(|e| e.to_string())?;
    Ok(crate::op::moves::RemovedHere { volumes: d.volumes, secrets: d.secrets, snapshots: d.snapshots })
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Created {
    pub name: String,
    pub os: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// `secret`, `prompt` or `none`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub encryption: Encryption,
    pub started: bool,
    pub warnings: Vec<String>,
    /// The OS detected from the ISO when none was given, and from what.
    pub detected: Option<String>,
}

/// Creates a VM: disk (LUKS-encrypted unless asked otherwise), secret and
/// domain, and starts it when asked. All or nothing: any failure, Ctrl-C or
/// SIGTERM removes what was made; a kill -9 is cleaned by the next command.
pub fn create(
    lv: &Libvirt,
    name: &str,
    spec: &VmSpec,
    passphrase: Option<&[u8]>,
    start: bool,
    progress: Report<'_>,
) -> Result<Created> {
    create_with(lv, name, spec, passphrase, start, None, progress)
}

/// A disk and firmware state that a create takes over instead of making new
/// ones (`phyllome import`). The secret then holds `key`, the disk's own.
pub struct Adopt {
    /// The LUKS-encrypted qcow2 image, moved into the pool.
    pub disk: std::path::PathBuf,
    pub key: Vec<u8>,
    /// The UEFI variable store's bytes, written where the definition names it.
    pub nvram: Option<Vec<u8>>,
    /// The swtpm state folder's files (name, bytes), written for the new domain.
    pub tpm: Vec<(String, Vec<u8>)>,
}

/// Moves `from` to `to` (a new name: never over an existing file), copying when they are on two filesystems.
fn move_new(from: &Path, to: &str) -> Result<()> {
    let err = |e: std::io::Error| VmError::Disk(format!("{} -> {to}: {e}", from.display()));
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(VmError::Disk(format!("{to} appeared meanwhile; nothing was overwritten")))
        }
        Err(e) if e.raw_os_error() == Some(18) => {
            // EXDEV: another filesystem.
            let mut out = new_private_file(to)?;
            let mut input = std::fs::File::open(from).map_err(err)?;
            std::io::copy(&mut input, &mut out).map_err(err)?;
            out.sync_all().map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    std::fs::remove_file(from).map_err(err)
}

/// [`create`], taking over an existing disk and firmware state when `adopt` is given.
pub fn create_with(
    lv: &Libvirt,
    name: &str,
    spec: &VmSpec,
    passphrase: Option<&[u8]>,
    start: bool,
    adopt: Option<&Adopt>,
    progress: Report<'_>,
) -> Result<Created> {
    recover(lv);
    if adopt.is_some() {
        // The adopted disk and state are staged here: they move into this machine's pool only.
        here_only(lv, "making a VM from an imported bundle")?;
    }
    let mut plan = plan(lv, name, spec)?;
    let detected = plan.choices.iter().find(|c| c.item == "os").map(|c| format!("{}, {}", c.choice, c.why));
    if let Some(d) = &detected {
        progress(Progress::Note { message: &format!("OS: {d}") });
    }
    let disk = plan.disk.clone().expect("plan() always asks for a disk");
    let encryption = spec.encryption.unwrap_or(Encryption::Secret);
    if encryption == Encryption::Prompt && passphrase.is_none_or(|p| p.is_empty()) {
        return Err(VmError::EmptyPassphrase);
    }
    let nvram = match &plan.domain.firmware {
        phyllome_model::domain::Firmware::Efi { nvram, .. } => nvram.clone(),
        phyllome_model::domain::Firmware::Bios => None,
    };
    // Claim the name before looking at what exists: of two creates of one name,
    // the second stops here, so no check can go stale before this create makes its objects.
    let mut entry =
        Record::new(lv, if adopt.is_some() { record::Operation::Import } else { record::Operation::Create }, name);
    entry.made.pool = Some(disk.pool.clone());
    entry.made.volume = Some(disk.volume.clone());
    entry.made.volume_path = Some(disk.path.clone());
    entry.made.nvram = nvram;
    let journal = Journal::open();
    progress(Progress::Step { step: "claim" });
    crate::op::step("claim", &AtomicBool::new(false))?;
    journal.begin(&entry)?;
    let pool_exists = match preflight(lv, name, &plan, &disk, start, progress) {
        Ok(p) => p,
        Err(e) => {
            journal.finish(name);
            return Err(e);
        }
    };
    // qcow2 grows as the guest writes: a pool smaller than the disk pauses the VM when it fills.
    if pool_exists {
        if let Ok(Some(free)) = lv.pool_free(&disk.pool) {
            if free < plan.disk_gib << 30 {
                plan.warnings.push(format!(
                    "storage pool {} has {:.1} GiB free, less than the {} GiB disk: the VM pauses with an I/O error when its disk fills the pool",
                    disk.pool,
                    free as f64 / (1u64 << 30) as f64,
                    plan.disk_gib
                ));
            }
        }
    }
    let op = Op::begin();

    let at = |s: &'static str| op.at(progress, s);
    let files = HostFiles::of(lv);
    let result = (|| -> Result<bool> {
        at("pool")?;
        if !pool_exists && lv.ensure_dir_pool(&disk.pool, paths::POOL_PATH)? {
            note(progress, &format!("created storage pool {} in {}", disk.pool, paths::POOL_PATH));
        }
        at("secret")?;
        let key = match (encryption, adopt) {
            (Encryption::Secret, Some(a)) => Some(a.key.clone()),
            (_, Some(_)) => return Err(VmError::Disk("an adopted disk is encrypted under its own key".into())),
            (Encryption::None, None) => None,
            (Encryption::Secret, None) => {
                Some(disk::image::random_key().map_err(|e| VmError::Disk(format!("no randomness: {e}")))?)
            }
            (Encryption::Prompt, None) => passphrase.map(<[u8]>::to_vec),
        };
        if let Some(k) = &key {
            let desc = format!("phyllome: disk passphrase of VM {name}");
            let uuid = lv.define_volume_secret(&disk.path, &desc, encryption == Encryption::Prompt, k)?;
            entry.made.secret_uuid = Some(uuid);
            journal.record(&entry)?;
        }
        at("volume")?;
        if let Some(a) = adopt {
            note(progress, &format!("moving the imported disk into {}/{}", disk.pool, disk.volume));
            move_new(&a.disk, &disk.path)?;
            entry.made.volume_file = Some(FileId::of(&disk.path).map_err(|e| VmError::Disk(e.to_string()))?);
            journal.record(&entry)?;
            lv.refresh_pool(&disk.pool)?;
        }
        let what = if key.is_some() { "encrypted disk" } else { "unencrypted disk" };
        if adopt.is_none() {
            note(progress, &format!("creating {what} {}/{} ({} GiB)", disk.pool, disk.volume, plan.disk_gib));
            let image = disk::image::disk_image(plan.disk_gib, encryption, key.as_deref())?;
            // The volume is made empty and exclusively, and recorded (inode, or volume key on another
            // host), before anything is written into it.
            files
                .write_new_volume(&disk.pool, &disk.path, &image, 0o600, &mut |id| {
                    entry.made.volume_file = Some(id.clone());
                    journal.record(&entry).map_err(std::io::Error::other)
                })
                .map_err(|e| VmError::Disk(format!("{}: {e}", disk.path)))?;
        }
        at("boot-files")?;
        copy_boot_files(&files, spec, &plan, &journal, &mut entry)?;
        at("define")?;
        entry.made.domain_uuid = Some(lv.define(&plan.domain.to_xml())?);
        journal.record(&entry)?;
        note(progress, &format!("defined VM {name}"));
        at("nvram")?;
        if let Some(bytes) = adopt.and_then(|a| a.nvram.as_ref()) {
            let s = domxml::parse(&lv.inactive_xml(name)?).map_err(|e| VmError::Xml(name.into(), e))?;
            let Some(n) =
                s.nvram.filter(|n| Path::new(&n.path).parent() == Some(Path::new(phyllome_model::domain::NVRAM_DIR)))
            else {
                return Err(NvramError::Store(format!(
                    "the imported variable store has no place in {name}'s definition"
                ))
                .into());
            };
            files
                .write_new(&n.path, bytes, 0o600, Owner::LikeFolder, &mut |id| {
                    entry.made.nvram_file = Some(id.clone());
                    journal.record(&entry).map_err(std::io::Error::other)
                })
                .map_err(|e| NvramError::Store(format!("{}: {e}", n.path)))?;
            note(progress, "wrote its UEFI variable store");
        }
        if let Some(a) = adopt.filter(|a| !a.tpm.is_empty()) {
            // Removed with the domain on a rollback (libvirt's undefine takes the TPM state along).
            let uuid = entry.made.domain_uuid.clone().expect("defined above");
            let dir = paths::tpm_dir(&uuid);
            std::fs::create_dir_all(&dir).map_err(|e| VmError::Disk(format!("{}: {e}", dir.display())))?;
            for (file, bytes) in &a.tpm {
                let to = dir.join(file);
                files
                    .write_new(&to.to_string_lossy(), bytes, 0o600, Owner::LikeFolder, &mut |_| Ok(()))
                    .map_err(|e| VmError::Disk(format!("{}: {e}", to.display())))?;
            }
            note(progress, "wrote its TPM state");
        }
        let nvram_made = disk::nvram::prepare_with(lv, name, &mut |id| {
            entry.made.nvram_file = Some(id.clone());
            journal.record(&entry).map_err(std::io::Error::other)
        })?;
        if nvram_made.is_some() {
            note(progress, "made its qcow2 UEFI variable store from the firmware's template");
        }
        let mut started = false;
        if start {
            at("start")?;
            note(progress, &format!("starting {name}"));
            start_checked(lv, name)?;
            started = true;
        }
        at("finish")?;
        Ok(started)
    })();

    // A passphrase typed by the user never outlives this command in libvirt.
    if encryption == Encryption::Prompt {
        if let Some(uuid) = entry.made.secret_uuid.take() {
            let _ = lv.undefine_secret_uuid(&uuid);
        }
    }
    drop(op);
    match result {
        Ok(started) => {
            journal.finish(name);
            Ok(Created {
                name: name.to_string(),
                os: plan.profile.id.to_string(),
                vcpus: plan.domain.vcpus,
                memory_mib: plan.domain.memory_mib,
                disk_gib: plan.disk_gib,
                encryption,
                started,
                warnings: plan.warnings,
                detected,
            })
        }
        Err(e) => {
            note(progress, "failed: removing what this command made");
            undo::made_objects(lv, name, &entry.made);
            journal.finish(name);
            Err(e)
        }
    }
}

/// Starts a domain, turning QEMU's LUKS error into a clear one.
fn start_checked(lv: &Libvirt, name: &str) -> Result<()> {
    lv.start(name).map_err(|e| {
        if e.message.contains("Invalid password") || e.message.contains("cannot unlock") {
            VmError::WrongPassphrase(name.to_string())
        } else {
            VmError::Libvirt(e)
        }
    })
}

pub fn summary(lv: &Libvirt, name: &str) -> Result<DomainSummary> {
    let xml = lv.xml(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })?;
    domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))
}

pub(crate) fn state(lv: &Libvirt, name: &str) -> Result<State> {
    lv.state(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })
}

/// Starts a VM. For a passphrase-locked disk, `ask` is called for the
/// passphrase, which lives in an ephemeral libvirt secret only while QEMU starts.
pub fn start(lv: &Libvirt, name: &str, ask: &dyn Fn() -> Result<Vec<u8>>) -> Result<bool> {
    recover(lv);
    let _held = crate::op::lock::take(lv, name, record::Operation::Start)?;
    let st = state(lv, name)?;
    if st == State::Running {
        return Ok(false);
    }
    refuse_unfinished_move(lv, name)?;
    if st == State::Paused {
        lv.resume(name)?;
        return Ok(true);
    }
    let s = summary(lv, name)?;
    refuse_changed(lv, &s, "start it: the guest would write to an image that is not encrypted")?;
    // A qcow2 variable store lost since (libvirt cannot remake one itself).
    disk::nvram::prepare(lv, name)?;
    if s.encryption.as_deref() == Some("prompt") {
        let Some(path) = s.main_disk().and_then(|d| d.luks_secret.clone()) else {
            return Err(VmError::Disk(format!("{name} has no encrypted disk to unlock")));
        };
        let pass = ask()?;
        if pass.is_empty() {
            return Err(VmError::EmptyPassphrase);
        }
        let _ = lv.undefine_volume_secret(&path);
        lv.define_volume_secret(&path, &format!("phyllome: disk passphrase of VM {name}"), true, &pass)?;
        let r = start_checked(lv, name);
        let _ = lv.undefine_volume_secret(&path);
        r?;
    } else {
        start_checked(lv, name)?;
    }
    Ok(true)
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stopped {
    AlreadyOff,
    PowerButton,
    GuestAgent,
    Forced,
}

/// Stops a VM gracefully: the ACPI power button, then (after half the
/// timeout) the guest agent; forced off at the end only when `force`.
pub fn stop(lv: &Libvirt, name: &str, timeout: Duration, force: bool, progress: Report<'_>) -> Result<Stopped> {
    crate::op::lock::check(lv, name)?;
    match state(lv, name)? {
        State::Shutoff => return Ok(Stopped::AlreadyOff),
        State::Paused => lv.resume(name)?,
        _ => {}
    }
    lv.shutdown(name, false)?;
    note(progress, &format!("pressed {name}'s power button; waiting up to {} s", timeout.as_secs()));
    let start = Instant::now();
    let mut tried_agent = false;
    let mut last_report = 0;
    loop {
        if state(lv, name)? == State::Shutoff {
            return Ok(if tried_agent { Stopped::GuestAgent } else { Stopped::PowerButton });
        }
        let waited = start.elapsed();
        if !tried_agent && waited >= timeout / 2 {
            tried_agent = true;
            if lv.shutdown(name, true).is_ok() {
                note(progress, &format!("asked {name}'s guest agent to shut down"));
            }
        }
        if waited >= timeout {
            break;
        }
        if waited.as_secs() >= last_report + 5 {
            last_report = waited.as_secs();
            note(progress, &format!("still waiting for {name} ({last_report} s)"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if force {
        lv.destroy(name)?;
        return Ok(Stopped::Forced);
    }
    Err(VmError::StopTimeout { name: name.to_string(), secs: timeout.as_secs() })
}

pub fn kill(lv: &Libvirt, name: &str) -> Result<()> {
    match state(lv, name)? {
        State::Shutoff => Err(VmError::NotRunning(name.into())),
        _ => Ok(lv.destroy(name)?),
    }
}

pub fn pause(lv: &Libvirt, name: &str) -> Result<()> {
    crate::op::lock::check(lv, name)?;
    match state(lv, name)? {
        State::Running => Ok(lv.suspend(name)?),
        State::Paused => Ok(()),
        _ => Err(VmError::NotRunning(name.into())),
    }
}

pub fn resume(lv: &Libvirt, name: &str) -> Result<()> {
    crate::op::lock::check(lv, name)?;
    match state(lv, name)? {
        State::Paused => {
            let io_error = lv.pause_reason(name)? == Some("I/O error");
            lv.resume(name)?;
            if io_error {
                // QEMU retries the failed write and stops again when it fails: watch for a few seconds.
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(200));
                    // libvirt may report the second stop's reason as "unknown": a pause right after
                    // this resume of an I/O-error pause is that error again.
                    if state(lv, name)? == State::Paused {
                        return Err(VmError::IoPaused { name: name.into(), why: io_error_cause(lv, name) });
                    }
                }
            }
            Ok(())
        }
        State::Running => Ok(()),
        _ => Err(VmError::NotRunning(name.into())),
    }
}

/// What is known of why a VM's disk fails: its pool's free space.
fn io_error_cause(lv: &Libvirt, name: &str) -> String {
    let pool = summary(lv, name).ok().and_then(|s| s.main_disk().and_then(|d| d.pool.clone()));
    match pool.as_deref().map(|p| (p, lv.pool_free(p))) {
        Some((p, Ok(Some(free)))) if free < 64 << 20 => {
            format!("its disk's storage pool {p} is full ({free} bytes free): free space there, then resume")
        }
        Some((p, Ok(Some(free)))) => format!(
            "its disk's storage pool {p} has {:.1} GiB free, so the disk itself fails: see /var/log/libvirt/qemu/{name}.log",
            free as f64 / (1u64 << 30) as f64
        ),
        _ => format!("the disk is full or failing: see /var/log/libvirt/qemu/{name}.log"),
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    pub name: String,
    pub volumes: Vec<String>,
    pub secrets: usize,
    pub kept_disk: bool,
    /// Its snapshots, removed with it.
    pub snapshots: usize,
    /// Images of it that stay, and why (an overlay made outside Phyllome, outside its pools).
    pub left: Vec<String>,
}

/// Deletes a stopped VM: domain, NVRAM and TPM state, and (unless `keep_disk`)
/// its disk volumes and their secrets. Installer media are never touched.
pub fn delete(lv: &Libvirt, name: &str, keep_disk: bool) -> Result<Deleted> {
    recover(lv);
    delete_now(lv, name, keep_disk)
}

/// [`delete`] without the recovery first (for the recovery itself, which finishes a move
/// by removing the source's copy).
pub(crate) fn delete_now(lv: &Libvirt, name: &str, keep_disk: bool) -> Result<Deleted> {
    let _held = crate::op::lock::take(lv, name, record::Operation::Delete)?;
    if state(lv, name)? != State::Shutoff {
        return Err(VmError::Running(name.into()));
    }
    let s = domxml::parse(&lv.inactive_xml(name)?).map_err(|e| VmError::Xml(name.into(), e))?;
    // Its volumes: the pool volumes its disks name, and those of a chain made outside Phyllome.
    let changed = changed_disks(lv, &s);
    let mut volumes: Vec<(String, String, Option<String>)> = s
        .disks
        .iter()
        .filter(|d| d.device == "disk")
        .filter_map(|d| Some((d.pool.clone()?, d.volume.clone()?, d.luks_secret.clone())))
        .collect();
    let mut left = vec![];
    for c in &changed {
        for image in [&c.top, &c.base] {
            match image {
                Image::Volume { pool, volume, secret } => volumes.push((pool.clone(), volume.clone(), secret.clone())),
                Image::Outside(path) => left.push(format!(
                    "{path}: an image of disk {} made outside Phyllome, outside its pool (not removed)",
                    c.target
                )),
                Image::Unknown => left.push(format!(
                    "the image under disk {} (not recorded, and its overlay cannot be read here)",
                    c.target
                )),
            }
        }
    }
    if !keep_disk {
        // A disk another VM also uses is not this VM's to delete: refuse before anything is removed.
        for (pool, volume, _) in &volumes {
            let path = lv.volume_info(pool, volume)?.map(|v| v.path);
            if let Some(other) = domxml::user_of_volume(lv, &s.uuid, pool, volume, path.as_deref())? {
                return Err(VmError::DiskShared { disk: format!("{pool}/{volume}"), other });
            }
        }
    }
    lv.undefine(name)?;
    let files = HostFiles::of(lv);
    // Snapshots are kept on this machine, and made of VMs of this machine's libvirt only.
    let snapshots = if files.is_local() {
        crate::snapshot::delete_all(lv, &s.uuid).map_err(|e| VmError::Snapshots(e.to_string()))?
    } else {
        0
    };
    // Phyllome's copies of the kernel and initrd on the VM's host (never the user's files: only inside BOOT_DIR/NAME).
    let ours = boot_dir(name);
    let copies: Vec<FileId> = s
        .boot_files
        .iter()
        .filter(|p| Path::new(p).parent() == Some(Path::new(&ours)))
        .filter_map(|p| files.id_of(p))
        .collect();
    undo::remove_boot_files(&files, &copies);
    let mut out = Deleted { name: name.into(), volumes: vec![], secrets: 0, kept_disk: keep_disk, snapshots, left };
    if keep_disk {
        return Ok(out);
    }
    for (pool, volume, secret) in &volumes {
        let path = lv.volume_info(pool, volume)?.map(|v| v.path);
        if lv.delete_volume(pool, volume)? {
            out.volumes.push(format!("{pool}/{volume}"));
        }
        // Its key: by the secret the definition names, else by the volume's path (its usage id).
        for u in secret.iter().chain(path.iter()) {
            let gone = if is_uuid(u) { lv.undefine_secret_uuid(u)? } else { lv.undefine_volume_secret(u)? };
            if gone {
                out.secrets += 1;
                break;
            }
        }
    }
    Ok(out)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// An image of a disk changed outside Phyllome, as far as this host can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// A volume of a pool (with the secret of its key, when encrypted).
    Volume { pool: String, volume: String, secret: Option<String> },
    /// A file outside the pools Phyllome knows of.
    Outside(String),
    /// Not recorded, and not readable from here.
    Unknown,
}

/// A disk of a Phyllome VM changed outside Phyllome (an external snapshot's overlay), resolved.
#[derive(Debug, Clone)]
pub struct Changed {
    pub target: String,
    /// The image the VM writes to now.
    pub top: Image,
    /// The image under it: Phyllome's volume.
    pub base: Image,
    /// libvirt recorded the chain (`<backingStore>`): the VM can run with it.
    pub recorded: bool,
}

/// The disks of `s` changed outside Phyllome, their images resolved: from the
/// chain libvirt recorded, else (on this host) from the overlay's qcow2 header.
pub fn changed_disks(lv: &Libvirt, s: &DomainSummary) -> Vec<Changed> {
    let pool_dir = |pool: &str| lv.pool_path(pool).ok().flatten();
    // A file in a pool's folder is that pool's volume.
    let as_image = |file: &str, pools: &[&str], secret: Option<String>| -> Image {
        let parent = Path::new(file).parent().map(|p| p.to_string_lossy().into_owned());
        for pool in pools {
            if parent.is_some() && pool_dir(pool) == parent {
                let volume = Path::new(file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                return Image::Volume { pool: pool.to_string(), volume, secret };
            }
        }
        Image::Outside(file.to_string())
    };
    s.changed_outside()
        .into_iter()
        .map(|d| {
            let base_pool = d.backing.first().and_then(|b| b.pool.clone());
            let mut pools = vec![crate::POOL];
            pools.extend(base_pool.as_deref());
            let top = match (&d.pool, &d.volume, &d.file) {
                (Some(p), Some(v), _) => {
                    Image::Volume { pool: p.clone(), volume: v.clone(), secret: d.luks_secret.clone() }
                }
                (_, _, Some(f)) => as_image(f, &pools, d.luks_secret.clone()),
                _ => Image::Unknown,
            };
            let base = match d.backing.first() {
                Some(b) => match (&b.pool, &b.volume, &b.file) {
                    (Some(p), Some(v), _) => {
                        Image::Volume { pool: p.clone(), volume: v.clone(), secret: b.luks_secret.clone() }
                    }
                    (_, _, Some(f)) => as_image(f, &pools, b.luks_secret.clone()),
                    _ => Image::Unknown,
                },
                None => match d.file.as_deref().filter(|_| lv.is_local()) {
                    Some(f) => match phyllome_disk::backing_file(Path::new(f)) {
                        // Its key's secret is found by the volume's path, its usage id.
                        Ok(Some(b)) => as_image(&b, &pools, None),
                        _ => Image::Unknown,
                    },
                    None => Image::Unknown,
                },
            };
            Changed { target: d.target.clone(), top, base, recorded: !d.backing.is_empty() }
        })
        .collect()
}

/// Refuses `action` (e.g. "start it: ...") on a VM whose disks were changed outside
/// Phyllome, saying how to undo the change.
pub(crate) fn refuse_changed(lv: &Libvirt, s: &DomainSummary, action: &str) -> Result<()> {
    let Some(note) = s.changed_outside_note() else { return Ok(()) };
    let changed = changed_disks(lv, s);
    let running = lv.state(&s.name).is_ok_and(|st| st != State::Shutoff);
    let name = &s.name;
    let commit: Vec<String> =
        changed.iter().map(|c| format!("`virsh blockcommit {name} {} --active --pivot --delete`", c.target)).collect();
    let merge = format!(
        "{} (what the guest wrote to the overlay goes back into the encrypted volume), then drop libvirt's \
         snapshot record (`virsh snapshot-list {name}`, `virsh snapshot-delete {name} SNAPSHOT --metadata`)",
        commit.join(", ")
    );
    let undo = if running {
        format!("To undo it while it runs: {merge}.")
    } else if changed.iter().all(|c| c.recorded) {
        format!("To undo it: `virsh start {name}`, then {merge}.")
    } else {
        format!(
            "libvirt cannot start it this way either (the overlay keeps no record of the encrypted volume under it), \
             so nothing was written to the overlay. To undo it: define {name} again as it was (the <domain> in \
             `virsh snapshot-dumpxml {name} SNAPSHOT`; `virsh snapshot-list {name}` names it), drop the snapshot \
             record (`virsh snapshot-delete {name} SNAPSHOT --metadata`) and remove the overlay. Or \
             `phyllome delete {name}` removes the VM with its overlay, volume and key."
        )
    };
    Err(VmError::ChangedOutside { name: name.clone(), note, action: action.into(), undo })
}

/// How many snapshots the VM has: they are kept on this machine, for its own libvirt's VMs only.
fn snapshot_count(lv: &Libvirt, uuid: &str) -> usize {
    if lv.is_local() {
        crate::snapshot::count(uuid)
    } else {
        0
    }
}

/// Whether libvirt starts the VM when the host (libvirtd) starts.
pub fn set_autostart(lv: &Libvirt, name: &str, on: bool) -> Result<()> {
    state(lv, name)?;
    if on {
        refuse_unfinished_move(lv, name)?;
    }
    Ok(lv.set_autostart(name, on)?)
}

/// A VM whose move to another host was cut short (its record still there after
/// [`recover`]) may run on that host: it is not started here until the move is settled.
fn refuse_unfinished_move(lv: &Libvirt, name: &str) -> Result<()> {
    let uuid = lv.uuid(name)?;
    match crate::op::moves::unfinished(lv, &uuid) {
        Some((to, why)) => Err(VmError::MoveUnfinished { name: name.into(), to, why }),
        None => Ok(()),
    }
}

/// Bytes as GiB, to a tenth (the sizes `list`, `info` and `volume list` show).
pub fn gib_tenths(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 10.0).round() / 10.0
}

/// One row of `phyllome list`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmRow {
    pub name: String,
    pub os: Option<String>,
    /// `running`, `paused`, `shut off` or `other`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub encrypted: bool,
    pub disk_gib: Option<f64>,
    /// Why a paused VM is paused, when it was not a user's pause (`I/O error`...); for a VM
    /// being moved to another host, `migrating`, and `unfinished migration` when that move was
    /// cut short and is not settled yet (it may run on that host: `phyllome check` says where).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub state_reason: Option<&'static str>,
    /// How many snapshots it has (`phyllome snapshot list`).
    pub snapshots: usize,
    /// libvirt starts it when the host boots (`phyllome autostart`).
    pub autostart: bool,
    /// Its disks were changed outside Phyllome (an external snapshot's overlay), in words:
    /// `encrypted` is then false, as what the guest writes now is not.
    pub changed_outside: Option<String>,
}

pub fn row(lv: &Libvirt, name: &str) -> Result<VmRow> {
    row_of(lv, &summary(lv, name)?)
}

/// The row of a domain whose XML was already read.
fn row_of(lv: &Libvirt, s: &DomainSummary) -> Result<VmRow> {
    let st = state(lv, &s.name)?;
    // A volume deleted meanwhile (by another command) leaves the size unknown, not the row unreadable.
    let disk_gib = s.main_disk().and_then(|d| {
        lv.volume_info(d.pool.as_deref().unwrap_or_default(), d.volume.as_deref().unwrap_or_default())
            .ok()
            .flatten()
            .map(|v| gib_tenths(v.capacity))
    });
    let moving = crate::op::moves::moves_from(lv);
    let state_reason = match moving.get(&s.uuid) {
        Some(m) => Some(m.reason()),
        None if st == State::Paused => lv.pause_reason(&s.name).ok().flatten(),
        None => None,
    };
    Ok(VmRow {
        state_reason,
        name: s.name.clone(),
        os: s.os.clone(),
        state: domxml::state_name(st),
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        encrypted: s.encrypted(),
        disk_gib,
        snapshots: snapshot_count(lv, &s.uuid),
        autostart: lv.autostart(&s.name).unwrap_or(false),
        changed_outside: s.changed_outside_note(),
    })
}

/// One disk of `phyllome info` / `GET /api/v1/vms/{name}`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskDetail {
    pub target: String,
    pub device: String,
    pub pool: Option<String>,
    pub volume: Option<String>,
    pub file: Option<String>,
    pub encrypted: bool,
}

/// Everything `phyllome info` and the API's VM page show: its list row and more.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Details {
    #[serde(flatten)]
    pub row: VmRow,
    pub uuid: String,
    /// `secret`, `prompt` or `none` for VMs Phyllome made.
    pub encryption: Option<String>,
    pub disks: Vec<DiskDetail>,
    /// `vnc://127.0.0.1:PORT` while running.
    pub display: Option<String>,
    /// The Phyllome version that made the VM.
    pub created_by: Option<String>,
    pub nics: Vec<crate::domxml::NicSummary>,
}

pub fn details(lv: &Libvirt, name: &str) -> Result<Details> {
    let s = summary(lv, name)?;
    Ok(Details {
        row: row_of(lv, &s)?,
        uuid: s.uuid,
        encryption: s.encryption,
        disks: s
            .disks
            .into_iter()
            .map(|d| DiskDetail {
                encrypted: d.luks_secret.is_some(),
                target: d.target,
                device: d.device,
                pool: d.pool,
                volume: d.volume,
                file: d.file,
            })
            .collect(),
        display: s.vnc.map(|(h, p)| format!("vnc://{h}:{p}")),
        created_by: s.created_by,
        nics: s.nics,
    })
}

/// Why a VM's devices are what they are: what `phyllome xml --explain` says
/// for its OS, vCPUs and memory on this host. Empty for a VM Phyllome did not make.
pub fn explain(lv: &Libvirt, name: &str) -> Result<Vec<build::Choice>> {
    let s = summary(lv, name)?;
    let Some(os) = s.os.clone() else { return Ok(Vec::new()) };
    if phyllome_model::catalog::profile(&os).is_none() {
        return Ok(Vec::new());
    }
    let req = Request {
        name: name.to_string(),
        os,
        cpus: Some(s.vcpus),
        memory: Some(format!("{}MiB", s.memory_mib)),
        network: NetworkChoice::None,
        version: crate::VERSION.to_string(),
        ..Default::default()
    };
    let (host, _) = host_facts::gather(lv, true)?;
    Ok(build::build(&req, &host)?.choices)
}

/// Every VM's row, in few round trips (see `Libvirt::list_all`): a VM's
/// XML gives its OS, vCPUs, memory and encryption, and one more call its
/// disk's size.
pub fn list(lv: &Libvirt) -> Result<Vec<VmRow>> {
    recover(lv);
    let listed = lv.list_all()?;
    let parsed: Vec<_> = listed.iter().filter_map(|d| domxml::parse(&d.xml).ok().map(|s| (d, s))).collect();
    // A disk's size: on this host, from its image's header (32 bytes read); else libvirt reads it.
    let local = lv.is_local();
    let mut sizes: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut asks = Vec::new();
    let mut pools: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for (d, s) in &parsed {
        let Some(m) = s.main_disk() else { continue };
        let file = match (&m.pool, &m.volume) {
            (Some(pool), Some(v)) => pools
                .entry(pool.clone())
                .or_insert_with(|| lv.pool_path(pool).ok().flatten())
                .as_ref()
                .map(|dir| format!("{dir}/{v}")),
            _ => None,
        };
        match file.filter(|_| local).and_then(|f| phyllome_disk::virtual_size(Path::new(&f)).ok()) {
            Some(size) => {
                sizes.insert(d.name.as_str(), size);
            }
            None => asks.push((*d, m.target.as_str())),
        }
    }
    for ((d, _), c) in asks.iter().zip(phyllome_libvirt::Listed::capacities(&asks)) {
        if let Some(c) = c {
            sizes.insert(d.name.as_str(), c);
        }
    }
    let mut rows = Vec::new();
    let moving = crate::op::moves::moves_from(lv);
    for (d, s) in &parsed {
        let disk_gib = sizes.get(d.name.as_str()).map(|&c| gib_tenths(c));
        let state_reason = match moving.get(&s.uuid) {
            Some(m) => Some(m.reason()),
            None if d.state == State::Paused => lv.pause_reason(&d.name).ok().flatten(),
            None => None,
        };
        rows.push(VmRow {
            name: d.name.clone(),
            os: s.os.clone(),
            state: domxml::state_name(d.state),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            encrypted: s.encrypted(),
            disk_gib,
            state_reason,
            snapshots: snapshot_count(lv, &s.uuid),
            autostart: d.autostart,
            changed_outside: s.changed_outside_note(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_errors_fall_into_their_class() {
        let kind = |e: VmError| crate::errors::Failure::from(e).kind();
        assert_eq!(kind(VmError::NameBusy("x".into())), ErrorKind::Conflict);
        assert_eq!(kind(VmError::NoSuchVm("x".into())), ErrorKind::NotFound);
        assert_eq!(kind(VmError::Interrupted), ErrorKind::Interrupted);
        let missing = FileError::Missing { what: "ISO", path: "/x".into() };
        assert_eq!(kind(VmError::File(missing)), ErrorKind::NotFound);
        assert_eq!(kind(VmError::Build(BuildError::ZeroCpus)), ErrorKind::InvalidInput);
        let tpm = BuildError::NoTpm { os: "Windows 11", why: "swtpm is not installed" };
        assert_eq!(kind(VmError::Build(tpm)), ErrorKind::Unsupported);
    }
}
