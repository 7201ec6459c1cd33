//! `phyllome migrate VM --to URI`: a VM moved to another libvirt host with
//! libvirt's own migration, its encrypted disk, TPM and UEFI variables with it.
//!
//! - **Check first** ([`check`]): the VM's state fits the mode, nothing of the
//!   same name or disk exists there, the destination's libvirt can give what the
//!   VM has (accelerator, a swtpm TPM, secure-boot firmware), its free memory and
//!   pool space are enough, and for a live move libvirt's CPU comparison passes.
//! - **Pre-create there**, through the destination's libvirt only (it may be a
//!   remote host): a secret with a **new** random key (key custody: a disk's key
//!   never leaves its host; QEMU re-encrypts the disk as it copies it, see
//!   ARCHITECTURE.md), the empty LUKS volume made here under that key and
//!   uploaded into the destination's pool, and the UEFI variable store and
//!   direct-boot files uploaded.
//! - **Move**: peer to peer, persistent on the destination, with the disks copied
//!   (`--copy-storage`); the TPM state travels in QEMU's migration stream. A
//!   stopped VM (`--offline`) is started paused (no guest code runs) and moved
//!   the same way, then powered off there: its disk is re-encrypted and its TPM
//!   state carried alike.
//! - **Afterwards** the source's domain, volume, key, NVRAM and TPM state go,
//!   only once the destination has the VM. A failure leaves the VM where it was
//!   and removes what was pre-created there (by secret UUID and volume key).
//! - **A move cut short** (phyllome killed, the destination away) stays recorded
//!   until it is settled (`settle`) from what both hosts show by the VM's UUID:
//!   finished when it got there, undone when it did not. Every command's recovery,
//!   the next migration to that host and `phyllome host clean` ([`clean`]) do it;
//!   until then the VM does not start here (it may run there).

use crate::disk::nvram::NvramError;
use crate::errors::Classify;
use crate::op::moves::{self, host_label, Settled};
use crate::op::progress::{note, Progress, Report};
use crate::op::record::Record;
use crate::op::Op;
use crate::vm::{self, VmError};
use phyllome_libvirt::{Libvirt, MigrateAsk, MigrationStats, State};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct MoveRequest {
    /// The destination's libvirt URI.
    pub to: String,
    /// `true`: the VM keeps running while it moves; `false` (`--offline`): a stopped VM.
    pub live: bool,
    /// Copy the disks (needed without shared storage; Phyllome's disks are pool volumes on each host).
    pub copy_storage: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckItem {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Checked {
    pub vm: String,
    pub to: String,
    /// `live` or `offline`.
    pub mode: String,
    pub ok: bool,
    pub items: Vec<CheckItem>,
}

impl Checked {
    fn push(&mut self, what: &str, ok: bool, detail: impl Into<String>) {
        self.ok &= ok;
        self.items.push(CheckItem { what: what.into(), ok, detail: detail.into() });
    }

    /// The failed items, in words.
    pub fn failures(&self) -> String {
        self.items.iter().filter(|i| !i.ok).map(|i| format!("{}: {}", i.what, i.detail)).collect::<Vec<_>>().join("; ")
    }
}

#[derive(Debug, Clone, Serialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    /// The disk copy (NBD) in bytes: the disk's size, and what was copied (libvirt's figures
    /// while it ran: its completed job keeps none; at least the whole disk once it completed).
    pub disk_total: u64,
    pub disk_processed: u64,
    pub memory_total: u64,
    pub memory_processed: u64,
    /// How long the guest was paused at the switch-over, in milliseconds.
    pub downtime_ms: Option<u64>,
    pub time_elapsed_ms: u64,
}

impl From<&MigrationStats> for Stats {
    fn from(s: &MigrationStats) -> Self {
        Stats {
            data_total: s.data_total,
            data_processed: s.data_processed,
            data_remaining: s.data_remaining,
            disk_total: s.disk_total,
            disk_processed: s.disk_processed,
            memory_total: s.memory_total,
            memory_processed: s.memory_processed,
            downtime_ms: s.downtime_ms,
            time_elapsed_ms: s.time_elapsed_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Migrated {
    pub name: String,
    pub to: String,
    pub mode: String,
    pub check: Checked,
    /// libvirt's statistics of the completed migration.
    pub stats: Stats,
    /// What was removed from the source afterwards.
    pub removed_from_source: Vec<String>,
    /// An offline move: whether the definition was rebuilt for the destination.
    pub retuned: bool,
    /// What the destination chooses differently from this host, item by item, and why:
    /// applied on an offline move (`retuned`); after a live move, what its next cold boot
    /// there would change (`phyllome apply` or a re-import makes it so).
    pub changes: Vec<crate::retune::Change>,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot reach the destination {uri}: {why}")]
    Unreachable { uri: String, why: String },
    #[error("{vm} cannot move to {to}: {why}")]
    Refused { vm: String, to: String, why: String },
    #[error(
        "the migration of {vm} failed ({why}); it stays on this host, and what was made on the destination was removed"
    )]
    Failed { vm: String, why: String },
    #[error(
        "the migration of {vm} failed ({why}); it stays on this host. {} stay on {to} for now: the next phyllome command removes them once {to} answers (`phyllome host clean {to}` does it now; recorded in {record})",
        left.join(", ")
    )]
    LeftThere { vm: String, to: String, why: String, left: Vec<String>, record: String },
    #[error(
        "libvirt reported the migration of {vm} failed ({why}), yet it arrived on the destination: its copy here was removed"
    )]
    ArrivedAnyway { vm: String, why: String },
}

impl Classify for MigrateError {
    fn kind(&self) -> crate::errors::ErrorKind {
        use crate::errors::ErrorKind;
        match self {
            MigrateError::Vm(v) => v.kind(),
            MigrateError::Unreachable { .. } => ErrorKind::Unavailable,
            MigrateError::Refused { .. } => ErrorKind::Unsupported,
            MigrateError::Failed { .. } | MigrateError::LeftThere { .. } | MigrateError::ArrivedAnyway { .. } => {
                ErrorKind::Failed
            }
        }
    }
}

impl From<phyllome_libvirt::Error> for MigrateError {
    fn from(e: phyllome_libvirt::Error) -> Self {
        MigrateError::Vm(e.into())
    }
}

type Result<T> = std::result::Result<T, MigrateError>;

/// Writes the move's record (what it made so far) into `dir`.
fn save(m: &Record, dir: &Path) -> Result<()> {
    m.save(dir).map_err(|e| VmError::Disk(format!("{}: {e}", dir.display())).into())
}

/// Connects to the destination, with a clear error.
pub fn connect(uri: &str) -> Result<Libvirt> {
    Libvirt::connect(uri).map_err(|e| MigrateError::Unreachable { uri: uri.into(), why: e.message })
}

/// The loader of a domain's definition asks for secure boot.
fn wants_secure_boot(xml: &str) -> bool {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return false };
    doc.descendants().any(|n| {
        (n.has_tag_name("loader") && n.attribute("secure") == Some("yes"))
            || (n.has_tag_name("feature")
                && n.attribute("name") == Some("secure-boot")
                && n.attribute("enabled") == Some("yes"))
    })
}

/// The domain's type (`kvm` or `qemu`) and machine type.
fn domain_type(xml: &str) -> (String, String) {
    let Ok(doc) = roxmltree::Document::parse(xml) else { return ("qemu".into(), "q35".into()) };
    let t = doc.root_element().attribute("type").unwrap_or("qemu").to_string();
    let m = doc
        .descendants()
        .find(|n| n.has_tag_name("type") && n.parent().is_some_and(|p| p.has_tag_name("os")))
        .and_then(|n| n.attribute("machine"))
        .unwrap_or("q35")
        .to_string();
    (t, m)
}

/// The `<cpu>` element of a definition, and its mode.
fn cpu_of(xml: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let cpu = doc.root_element().children().find(|n| n.has_tag_name("cpu"))?;
    let mode = cpu.attribute("mode").unwrap_or("custom").to_string();
    Some((xml[cpu.range()].to_string(), mode))
}

/// Whether a domain capabilities document offers a secure-boot loader.
fn offers_secure_boot(domcaps: &str) -> bool {
    let Ok(doc) = roxmltree::Document::parse(domcaps) else { return false };
    doc.descendants().filter(|n| n.has_tag_name("loader")).any(|l| {
        l.children().any(|e| {
            e.has_tag_name("enum")
                && e.attribute("name") == Some("secure")
                && e.children().any(|v| v.has_tag_name("value") && v.text() == Some("yes"))
        })
    })
}

/// What a move of `name` to `dst` needs, item by item; changes nothing.
pub fn check(src: &Libvirt, dst: &Libvirt, name: &str, req: &MoveRequest) -> Result<Checked> {
    let mode = if req.live { "live" } else { "offline" };
    let mut c = Checked { vm: name.into(), to: req.to.clone(), mode: mode.into(), ok: true, items: vec![] };
    let state = vm::state(src, name)?;
    match (req.live, state) {
        (true, State::Running) => c.push("state", true, "running: moves live"),
        (true, s) => {
            c.push("state", false, format!("{s:?}: a live move needs it running (--offline moves a stopped VM)"))
        }
        (false, State::Shutoff) => c.push("state", true, "shut off: moves offline"),
        (false, s) => c.push("state", false, format!("{s:?}: --offline moves a stopped VM (--live a running one)")),
    }
    let xml = src.xml(name)?;
    let s = crate::domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    let shape = crate::domxml::shape(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    if !shape.hostdevs.is_empty() {
        c.push("devices", false, format!("passed-through {}: a device stays with its host", shape.hostdevs.join(", ")));
    }
    if s.encryption.as_deref() == Some("prompt") {
        c.push("disk key", false, "a typed passphrase: moving it is not supported yet");
    }
    let disks: Vec<_> = s.disks.iter().filter(|d| d.device == "disk").collect();
    let mut disk_alloc = 0;
    match disks.as_slice() {
        [d] => match (&d.pool, &d.volume) {
            (Some(pool), Some(volume)) if pool == crate::POOL => {
                let v = src.volume_info(pool, volume)?;
                disk_alloc = v.as_ref().map(|v| v.allocation).unwrap_or(0);
                let path_ok =
                    v.as_ref().is_some_and(|v| Path::new(&v.path).parent() == Some(Path::new(crate::paths::POOL_PATH)));
                c.push("disk", path_ok, format!("{pool}/{volume}, {} MiB written", disk_alloc >> 20));
                if !req.copy_storage {
                    c.push(
                        "storage",
                        false,
                        "Phyllome's disks are not shared between hosts: give --copy-storage to copy the disk",
                    );
                }
            }
            _ => c.push("disk", false, "not a volume of Phyllome's pool"),
        },
        other => c.push("disk", false, format!("{} disks: a move copies VMs with one", other.len())),
    }
    // The destination.
    let (dl, dq) = dst.versions()?;
    c.push("destination", true, format!("libvirt {dl}, QEMU {dq}"));
    let uuid_taken = dst.list_all()?.into_iter().any(|l| l.name == name || l.uuid() == s.uuid);
    c.push(
        "name",
        !uuid_taken,
        if uuid_taken { "a VM of that name or UUID exists there".to_string() } else { "free there".to_string() },
    );
    // A move of this VM cut short before: what settling it would do.
    if let Some(mut m) = moves::all(&moves::dir()).into_iter().find(|m| m.uuid() == s.uuid && m.made_through(src)) {
        let (ok, detail) = if !m.is_dead() {
            (false, format!("phyllome (process {}) is moving it now", m.pid))
        } else if m.t().to != req.to {
            let other = host_label(&m.t().to);
            (false, format!("a move of it to {other} was cut short: settle it first (phyllome host clean {other})"))
        } else {
            let seen = moves::settle(src, dst, &mut m, &moves::dir(), true, false, &vm::remove_moved);
            // One that did not get there is undone before this move; any other is no start.
            (seen.outcome == "undone", seen.note)
        };
        c.push("earlier move", ok, detail);
    }
    let vol_path = format!("{}/{name}.qcow2", crate::paths::POOL_PATH);
    if let Some(p) = dst.pool_path(crate::POOL)? {
        let same = p == crate::paths::POOL_PATH;
        c.push(
            "pool",
            same,
            if same {
                format!("{} at {p}", crate::POOL)
            } else {
                format!("{} is at {p} there, not {}", crate::POOL, crate::paths::POOL_PATH)
            },
        );
        let vol_name = format!("{name}.qcow2");
        if dst.volume_info(crate::POOL, &vol_name)?.is_some() || dst.volume_secret(&vol_path)?.is_some() {
            // A volume a domain there uses is that VM's disk, whoever made it: never removed.
            let user = crate::domxml::user_of_volume(dst, "", crate::POOL, &vol_name, Some(&vol_path))?;
            let leftover = moves::orphans(&moves::dir(), &req.to)
                .iter()
                .any(|m| m.t().volume == vol_name && m.t().volume_key.is_some());
            if let Some(user) = user {
                c.push("volume", false, format!("{vol_path} is the disk of VM {user} there"));
            } else if leftover {
                c.push(
                    "volume",
                    true,
                    format!("{vol_path} was left there by an interrupted migration: it is removed before the move"),
                );
            } else {
                c.push("volume", false, format!("{vol_path} or its key exists there"));
            }
        }
        if let Ok(Some(free)) = dst.pool_free(crate::POOL) {
            c.push(
                "space",
                free > disk_alloc + (256 << 20),
                format!("{} MiB free there for {} MiB", free >> 20, disk_alloc >> 20),
            );
        }
    } else {
        c.push("pool", true, format!("{} is made there at {}", crate::POOL, crate::paths::POOL_PATH));
    }
    let (ok, detail) = match dst.node_memory() {
        Ok(node) => {
            // The destination on this machine: its MemAvailable is this kernel's.
            let here = if dst.is_local() { Some(crate::host_facts::mem_available()).filter(|&b| b > 0) } else { None };
            memory_item(&node, here, s.memory_mib)
        }
        Err(_) => {
            let free = dst.free_memory()?;
            (
                free > (s.memory_mib << 20) + MEMORY_MARGIN,
                format!("{} MiB free there for {} MiB", free >> 20, s.memory_mib),
            )
        }
    };
    c.push("memory", ok, detail);
    let (virt, machine) = domain_type(&xml);
    match dst.domain_capabilities(&virt, &machine) {
        Ok(caps_xml) => {
            c.push("accelerator", true, format!("{virt} there"));
            let caps = phyllome_host::domcaps::parse_domcaps(&caps_xml).ok();
            if shape.tpm_emulator {
                let tpm = caps.as_ref().is_some_and(|k| k.supports("tpm") && k.has("tpm.backendModel", "emulator"));
                c.push(
                    "tpm",
                    tpm,
                    if tpm {
                        "swtpm there".to_string()
                    } else {
                        "no swtpm there (Debian: apt install swtpm swtpm-tools; Fedora: dnf install swtpm swtpm-tools)"
                            .to_string()
                    },
                );
            }
            if wants_secure_boot(&xml) {
                let sb = offers_secure_boot(&caps_xml);
                c.push(
                    "secure boot",
                    sb,
                    if sb {
                        "secure-boot OVMF there".to_string()
                    } else {
                        "no secure-boot OVMF there (Debian: apt install ovmf; Fedora: dnf install edk2-ovmf)"
                            .to_string()
                    },
                );
            }
        }
        Err(e) => c.push("accelerator", false, format!("{virt} is not available there: {}", e.message)),
    }
    let shares = crate::share::shares_of(&xml);
    if !shares.is_empty() {
        let (ok, detail) = shares_item(src, dst, name, &shares, req.live)?;
        c.push("shares", ok, detail);
    }
    if req.live {
        if let Some((cpu, mode)) = cpu_of(&xml) {
            if mode == "host-passthrough" {
                c.push("cpu", false, "host-passthrough: a live move needs an identical host CPU; use host-model");
            } else if mode == "maximum" || virt == "qemu" {
                c.push("cpu", true, "emulated (TCG): any host runs it");
            } else {
                let ok = dst.cpu_compatible(&cpu).unwrap_or(false);
                c.push("cpu", ok, if ok { "libvirt: compatible" } else { "libvirt: this CPU model cannot run there" });
            }
        }
    }
    Ok(c)
}

/// What the destination keeps for itself beyond the VM's memory.
const MEMORY_MARGIN: u64 = 128 << 20;

/// Whether the destination has the memory for a VM of `need_mib`, and the figure in words,
/// naming which it is: MemAvailable (the kernel's estimate of what it can give without
/// swapping) when known, from `meminfo` (a destination on this machine) or from libvirt
/// (which reports it from 12.3); else libvirt's free memory plus buffers and page cache,
/// which the kernel gives back as well (an upper bound: shared memory counts as cache).
fn memory_item(node: &phyllome_libvirt::NodeMemory, meminfo: Option<u64>, need_mib: u64) -> (bool, String) {
    let (available, what) = match (meminfo, node.available) {
        (Some(a), _) => (a, "MemAvailable".to_string()),
        (None, Some(a)) => (a, "MemAvailable, as libvirt reports it".to_string()),
        (None, None) => (
            node.free + node.buffers + node.cached,
            format!("libvirt's free memory, {} MiB, plus buffers and page cache", node.free >> 20),
        ),
    };
    (
        available > (need_mib << 20) + MEMORY_MARGIN,
        format!("{} MiB available there ({what}) for {need_mib} MiB", available >> 20),
    )
}

/// Whether the VM's shared folders let it move, in words. libvirt starts the VM's virtiofsd
/// on the destination for each folder, so each must be there. A live move also hands
/// virtiofsd's state over: which files the guest has open, found again by path there, never
/// the files themselves (a different folder of the same path makes the load fail, "Input/output
/// error", or worse, gives the guest other files). Phyllome copies a VM's disk, not its
/// folders, and cannot tell from here that a folder there is the same one: a live move with
/// shares is refused, naming what it would need. Offline the guest never ran, so nothing is
/// open; the folders need only be there (the definition there is rebuilt without shares).
fn shares_item(
    src: &Libvirt,
    dst: &Libvirt,
    name: &str,
    shares: &[crate::share::ShareRow],
    live: bool,
) -> Result<(bool, String)> {
    let listed = shares.iter().map(|s| format!("{} ({})", s.tag, s.dir)).collect::<Vec<_>>().join(", ");
    let tags = shares.iter().map(|s| s.tag.as_str()).collect::<Vec<_>>().join(" ");
    if live {
        let feature = phyllome_model::capability::Feature::VirtiofsMigration;
        let here = match crate::host_facts::gather(src, false) {
            Ok((host, _)) => match host.check(feature) {
                Ok(()) => "this host has them".to_string(),
                Err(u) => format!("this host has {}", u.have),
            },
            Err(_) => "this host's are not known".to_string(),
        };
        return Ok((
            false,
            format!(
                "{listed}: a live move hands over which files the guest has open, not the files, so both hosts must serve the same folders (shared storage) with {} ({here}); Phyllome copies the disk, not shared folders: move it stopped (--offline), or remove the shares first (phyllome share remove {name} TAG: {tags})",
                feature.requirement()
            ),
        ));
    }
    let mut missing = vec![];
    for s in shares {
        if !dst.folder_exists(&s.dir)? {
            missing.push(format!("{} ({})", s.dir, s.tag));
        }
    }
    if missing.is_empty() {
        Ok((true, format!("{listed}: folders of these paths are there too, as the move itself needs; the shares stay with this host (phyllome share add there afterwards)")))
    } else {
        Ok((
            false,
            format!(
                "{}: not on the destination, and libvirt starts a virtiofsd there for each: make them there, or remove the shares first (phyllome share remove {name} TAG)",
                missing.join(", ")
            ),
        ))
    }
}

/// The migration and NBD URIs for a destination on this same machine (a unix
/// socket URI): unix sockets both QEMUs can reach. None: libvirt's own (TCP).
fn data_uris(to: &str) -> (Option<String>, Option<String>) {
    if to.starts_with("qemu+unix://") {
        let base = format!("/tmp/phyllome-migrate-{}", std::process::id());
        (Some(format!("unix://{base}.sock")), Some(format!("unix://{base}-nbd.sock")))
    } else {
        (None, None)
    }
}

/// How long a failed migration waits for its destination to answer again, to remove
/// what it made there: a libvirtd that died is back within it under systemd
/// (`Restart=on-failure`, or socket activation at the first connection).
const UNDO_WAIT: Duration = Duration::from_secs(20);

/// After this process saw the migration fail: the paused source stopped again, its
/// autostart back, and the move settled over a new connection to the destination (the
/// old one may have died with its daemon; it is tried again for [`UNDO_WAIT`]). What
/// could not be removed stays recorded.
fn undo(src: &Libvirt, m: &mut Record, dir: &Path, progress: Report<'_>) -> Settled {
    if let Some(u) = &m.made.paused_source {
        let _ = src.destroy_paused_uuid(u);
    }
    let until = std::time::Instant::now() + UNDO_WAIT;
    let mut told = false;
    let dst = loop {
        match connect(&m.t().to) {
            Ok(d) => break Some(d),
            Err(_) if std::time::Instant::now() < until => {
                if !told && !m.nothing_there() {
                    note(progress, "the destination does not answer: waiting for it, to remove what was made there");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(_) => break None,
        }
    };
    match dst {
        Some(dst) => moves::settle(src, &dst, m, dir, false, true, &vm::remove_moved),
        None => {
            // libvirt said the move failed: the VM is here, whatever stays there.
            if m.t().autostart && src.set_autostart(&m.vm, true).is_ok() {
                m.t_mut().autostart = false;
            }
            m.remove_sockets();
            m.t_mut().why = Some("the destination did not answer".into());
            let _ = m.save(dir);
            Settled::left_as_is(m, "unreachable", "the destination did not answer".into())
        }
    }
}

/// Moves cut short from `src` to `to`, settled over the connection `dst` (or, with
/// `dry_run`, what would be done): `phyllome host clean`, and a migration to that host
/// before it starts. A move another phyllome command runs now is only said.
pub fn clean(src: &Libvirt, dst: &Libvirt, to: &str, dry_run: bool) -> Vec<Settled> {
    moves::clean(src, dst, to, dry_run, &vm::remove_moved)
}

/// The largest UEFI variable store or direct-boot file a move carries (they go through memory).
const CARRIED_MAX: u64 = 512 << 20;

/// A file of the source host (None when it does not exist there), read where it is: through
/// the source's libvirt when that is another host, never from this machine's disk.
fn on_source(src: &Libvirt, path: &str) -> std::io::Result<Option<Vec<u8>>> {
    let files = crate::host_files::HostFiles::of(src);
    if !files.exists(path)? {
        return Ok(None);
    }
    files.read(path, CARRIED_MAX).map(Some)
}

/// Moves `name` to `req.to` (after [`check`] passed).
pub fn migrate(src: &Libvirt, name: &str, req: &MoveRequest, progress: Report<'_>) -> Result<Migrated> {
    // Moves cut short before are settled first (those to this destination over its own
    // connection below, however long it takes to answer).
    let mut settled = moves::recover(src, &vm::remove_moved);
    vm::recover(src);
    let _held = crate::op::lock::take(src, name, crate::op::record::Operation::Migrate).map_err(VmError::from)?;
    vm::refuse_changed(
        src,
        &vm::summary(src, name)?,
        "migrate it: only the image over its encrypted volume would move",
    )?;
    let dst = connect(&req.to)?;
    let pending = moves::dir();
    settled.extend(clean(src, &dst, &req.to, false).into_iter().filter(|s| s.outcome != "in-progress"));
    let mut notes: Vec<String> =
        settled.iter().filter(|s| s.settled() || !s.removed.is_empty()).map(|s| s.note.clone()).collect();
    for n in &notes {
        note(progress, n);
    }
    progress(Progress::Step { step: "check" });
    let checked = check(src, &dst, name, req)?;
    if !checked.ok {
        return Err(MigrateError::Refused { vm: name.into(), to: req.to.clone(), why: checked.failures() });
    }
    let xml = src.inactive_xml(name)?;
    let s = crate::domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    // A record of an earlier move of it that settling above could not clear (what it left
    // there would not go): this move would overwrite it and lose track of those objects.
    if let Some(m) = moves::all(&pending).into_iter().find(|m| m.uuid() == s.uuid) {
        return Err(MigrateError::Refused {
            vm: name.into(),
            to: req.to.clone(),
            why: format!(
                "an earlier move of it to {} is not settled ({}): phyllome host clean {} first",
                host_label(&m.t().to),
                m.t().why.as_deref().unwrap_or("left as it was"),
                host_label(&m.t().to)
            ),
        });
    }
    let d = s.main_disk().cloned().ok_or_else(|| VmError::Disk(format!("{name} has no disk")))?;
    let vol = src
        .volume_info(crate::POOL, d.volume.as_deref().unwrap_or_default())?
        .ok_or_else(|| VmError::NoVolume(format!("{}/{name}.qcow2", crate::POOL)))?;
    let tuning = crate::retune::tuning_here(src, name, vol.capacity);
    let mut made = Record::moving(src, name, &s.uuid, &req.to, &format!("{name}.qcow2"));
    let op = Op::begin();
    // The disk copy's figures, as libvirt reports them while it runs (its completed job keeps none).
    let mut disk_seen = (0u64, 0u64);
    let mut libvirt_done = false;
    let result = (|| -> Result<MigrationStats> {
        let at = |st: &'static str| -> Result<()> { Ok(op.at(progress, st).map_err(VmError::from)?) };
        at("prepare")?;
        save(&made, &pending)?;
        if dst.ensure_dir_pool(crate::POOL, crate::paths::POOL_PATH)? {
            made.t_mut().pool = dst.pool_uuid(crate::POOL)?;
            save(&made, &pending)?;
            note(progress, &format!("made storage pool {} on the destination", crate::POOL));
        }
        if d.luks_secret.is_some() || s.encrypted() {
            let key = crate::disk::image::random_key().map_err(|e| VmError::Disk(format!("no randomness: {e}")))?;
            made.t_mut().secret = Some(dst.define_volume_secret(
                &vol.path,
                &format!("phyllome: disk passphrase of VM {name}"),
                false,
                &key,
            )?);
            save(&made, &pending)?;
            note(progress, "a new disk key on the destination: QEMU re-encrypts the disk as it copies it");
            // The empty LUKS qcow2 is made here and uploaded, as `create` makes its disks: the key
            // is random, so the LUKS slot needs no passphrase stretching. libvirt's own volume
            // creation (qemu-img's 2 s default) cost 4.9 s, and as much again when QEMU opens it
            // there (docs/benchmarks.md, "Migration").
            let image = phyllome_disk::bytes(vol.capacity, &key, phyllome_disk::Cost::RANDOM_KEY)
                .map_err(|e| VmError::Disk(e.to_string()))?;
            made.t_mut().volume_key = Some(dst.upload_volume(crate::POOL, &format!("{name}.qcow2"), &image, 0o600)?);
            save(&made, &pending)?;
        } else {
            return Err(MigrateError::Refused {
                vm: name.into(),
                to: req.to.clone(),
                why: "its disk is not encrypted: moving unencrypted disks is not supported".into(),
            });
        }
        // Each file goes up as a new volume of a transient pool over its folder; a folder
        // that was not there is recorded first, to go again with the files.
        let upload = |made: &mut Record, path: &str, bytes: &[u8], mode: u32| -> Result<()> {
            let p = Path::new(path);
            let (dir, file) = (
                p.parent().expect("a folder").to_string_lossy().into_owned(),
                p.file_name().expect("a file").to_string_lossy().into_owned(),
            );
            if !made.t_mut().dirs.contains(&dir) && !dst.folder_exists(&dir)? {
                made.t_mut().dirs.push(dir.clone());
                save(made, &pending)?;
            }
            let key = dst.upload_file(&dir, &file, bytes, mode)?;
            made.t_mut().files.push((dir, file, key));
            save(made, &pending)
        };
        // The source's files are read on the source's host (through its libvirt when it is another one).
        if let Some(n) = &s.nvram {
            if let Some(bytes) = on_source(src, &n.path)
                .map_err(|e| NvramError::Store(format!("{}: {e}", n.path)))
                .map_err(VmError::from)?
            {
                upload(&mut made, &n.path, &bytes, 0o600)?;
            }
        }
        for f in s.boot_files.iter().filter(|f| Path::new(f).starts_with(crate::paths::BOOT_DIR)) {
            let bytes = on_source(src, f)
                .and_then(|b| b.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)))
                .map_err(|e| VmError::Disk(format!("{f}: {e}")))?;
            upload(&mut made, f, &bytes, 0o644)?;
        }
        at("migrate")?;
        if src.autostart(name)? {
            // Off while it moves, so a reboot here cannot start it while it runs there.
            made.t_mut().autostart = true;
            save(&made, &pending)?;
            src.set_autostart(name, false)?;
        }
        if !req.live {
            // No guest code runs: QEMU only carries the disk, TPM and device state across.
            made.made.paused_source = Some(s.uuid.clone());
            save(&made, &pending)?;
            src.start_paused(name)?;
        }
        let (migrate_uri, disks_uri) = data_uris(&req.to);
        made.t_mut().sockets = [&migrate_uri, &disks_uri]
            .into_iter()
            .flatten()
            .filter_map(|u| u.strip_prefix("unix://").map(String::from))
            .collect();
        save(&made, &pending)?;
        let ask = MigrateAsk {
            live: true,
            copy_storage: true,
            paused: !req.live,
            migrate_uri,
            disks_uri,
            disks: vec![d.target.clone()],
        };
        // The migration runs on a connection of its own; this one reports its progress.
        let mut last_active: Option<MigrationStats> = None;
        let (tx, rx) = std::sync::mpsc::channel();
        let run = {
            let uri = src.uri();
            let name = name.to_string();
            let to = req.to.clone();
            std::thread::spawn(move || {
                let r = Libvirt::connect(&uri).and_then(|lv| lv.migrate_p2p(&name, &to, &ask));
                let _ = tx.send(());
                r
            })
        };
        loop {
            if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
                break;
            }
            if op.interrupted() {
                let _ = src.abort_job(name);
            }
            if let Ok(st) = src.migration_stats(name) {
                if st.active {
                    progress(Progress::Bytes { done: st.data_processed, total: st.data_total });
                    disk_seen = (disk_seen.0.max(st.disk_total), disk_seen.1.max(st.disk_processed));
                    last_active = Some(st);
                }
            }
        }
        let migrated = run
            .join()
            .map_err(|_| MigrateError::Failed { vm: name.into(), why: "the migration thread failed".into() })?;
        if let Err(e) = migrated {
            if op.interrupted() {
                return Err(VmError::Interrupted.into());
            }
            return Err(MigrateError::Failed { vm: name.into(), why: e.message });
        }
        libvirt_done = true;
        // The move completed: from here on it is finished, not undone, whatever happens
        // (a kill -9 here leaves the record, which the next command settles the same way).
        let _ = crate::op::step("migrated", &AtomicBool::new(false));
        made.made.paused_source = None;
        // The completed job's figures: the source's, else the destination's (libvirt keeps
        // them on either side), else the last ones seen while it ran.
        let complete = |s: &MigrationStats| s.data_total > 0 || s.downtime_ms.is_some();
        let stats = [src.migration_stats(name).ok(), dst.migration_stats(name).ok()]
            .into_iter()
            .flatten()
            .find(complete)
            .or(last_active)
            .unwrap_or_default();
        Ok(stats)
    })();
    drop(op);
    let mut stats = match result {
        Ok(s) => s,
        Err(e) if !libvirt_done => {
            // Settled from what both hosts show: normally the VM runs where it was, and the
            // destination gets back to what it had.
            let settled = undo(src, &mut made, &pending, progress);
            if settled.settled() && settled.outcome == "undone" {
                return Err(e);
            }
            let why = match e {
                MigrateError::Failed { why, .. } => why,
                other => other.to_string(),
            };
            if settled.outcome == "arrived" {
                return Err(MigrateError::ArrivedAnyway { vm: name.into(), why });
            }
            return Err(MigrateError::LeftThere {
                vm: name.into(),
                to: host_label(&req.to),
                why,
                left: settled.left,
                record: moves::file(&pending, &s.uuid).display().to_string(),
            });
        }
        Err(e) => return Err(e),
    };
    made.remove_sockets();
    // libvirt keeps no disk figures in a completed job: the ones seen while it copied, and at
    // least the disk's size (what the NBD copy covers) once it completed.
    if stats.disk_total == 0 {
        stats.disk_total = if disk_seen.0 > 0 { disk_seen.0 } else { vol.capacity };
    }
    stats.disk_processed = stats.disk_processed.max(disk_seen.1).max(stats.disk_total);
    progress(Progress::Step { step: "finish" });
    if !req.live {
        // It arrived paused; powered off there, as it was here.
        let _ = dst.destroy_paused_uuid(&s.uuid);
    }
    let there = dst.list_all()?.into_iter().find(|l| l.uuid() == s.uuid);
    let Some(there) = there else {
        return Err(MigrateError::Failed {
            vm: name.into(),
            why: "libvirt reported success, but the destination does not have the VM; nothing was removed here".into(),
        });
    };
    notes.push(format!("{name} is {:?} on the destination", there.state));
    if made.t_mut().autostart {
        match dst.set_autostart(name, true) {
            Ok(()) => notes.push("libvirt starts it there when that host boots, as it did here (autostart)".into()),
            Err(e) => notes.push(format!("its autostart could not be turned on there: {}", e.message)),
        }
    }
    // Re-tuning: rebuilt there when it arrived stopped; after a live move, only said.
    let mut retuned = false;
    let mut changes = vec![];
    match (&tuning, req.live) {
        (None, _) => notes.push("its manifest could not be read here: the definition was not re-tuned".into()),
        (Some(t), false) => match crate::retune::retune(&dst, name, &s.uuid, t) {
            Ok(c) => {
                progress(Progress::Step { step: "retune" });
                retuned = true;
                notes.push(if c.is_empty() {
                    "re-tuned for the destination: it chooses as this host did".into()
                } else {
                    format!("re-tuned for the destination: {} item(s) changed", c.len())
                });
                changes = c;
            }
            Err(why) => notes.push(format!("kept the moved definition, not re-tuned: {why}")),
        },
        (Some(t), true) => match crate::retune::plan_there(&dst, name, t) {
            Ok((plan, _)) => {
                // It runs as tuned here: recorded so `phyllome xml --vm` there can say what a cold boot changes.
                if let Err(e) = crate::retune::record(&dst, name, &t.here, &t.from) {
                    notes.push(format!("what it was tuned to here could not be recorded there: {e}"));
                }
                changes = crate::retune::changes(&t.from, &plan.choices);
                if !changes.is_empty() {
                    notes.push(format!(
                        "it runs there as defined here; the destination would choose {} item(s) differently at a cold boot (changes; phyllome xml --vm {name} --explain there)",
                        changes.len()
                    ));
                }
            }
            Err(why) => notes.push(format!("what the destination would choose is not known: {why}")),
        },
    }
    if tuning.as_ref().is_some_and(|t| !t.spec.shares.is_empty()) {
        notes.push("its shared folders stay with this host: add them there with phyllome share add".into());
    }
    // Only now: the source's copy goes (domain, volume, key, NVRAM, TPM state, snapshots),
    // and then the record: until both are gone, the next command finishes the move.
    let mut removed = vec![];
    if vm::state(src, name)? == State::Shutoff {
        let del = vm::delete(src, name, false)?;
        removed.push(format!("domain {name}"));
        removed.extend(del.volumes.iter().map(|v| format!("volume {v}")));
        removed.push(format!("{} secret(s), its NVRAM and TPM state, {} snapshot(s)", del.secrets, del.snapshots));
        made.forget(&pending);
    } else {
        notes.push(format!("{name} still runs here: it was not removed"));
    }
    Ok(Migrated {
        name: name.into(),
        to: req.to.clone(),
        mode: if req.live { "live".into() } else { "offline".into() },
        check: checked,
        stats: Stats::from(&stats),
        removed_from_source: removed,
        retuned,
        changes,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_check_counts_what_the_destination_can_give_and_says_which_figure() {
        let mib = |m: u64| m << 20;
        // The host: 764 MiB free, 21 GiB available once the page cache is counted.
        let node = phyllome_libvirt::NodeMemory {
            total: mib(24 << 10),
            free: mib(764),
            buffers: mib(263),
            cached: mib(20 << 10),
            available: None,
        };
        let (ok, detail) = memory_item(&node, None, 2048);
        assert!(ok, "{detail}");
        assert!(detail.contains("libvirt's free memory, 764 MiB, plus buffers and page cache"), "{detail}");
        assert!(detail.starts_with(&format!("{} MiB available there", 764 + 263 + (20 << 10))), "{detail}");
        // MemAvailable wins when known: read on this machine, or reported by libvirt.
        let (ok, detail) = memory_item(&node, Some(mib(1024)), 2048);
        assert!(!ok, "{detail}");
        assert_eq!(detail, "1024 MiB available there (MemAvailable) for 2048 MiB");
        let with = phyllome_libvirt::NodeMemory { available: Some(mib(4096)), ..node };
        let (ok, detail) = memory_item(&with, None, 2048);
        assert!(ok && detail.contains("(MemAvailable, as libvirt reports it)"), "{detail}");
        // A margin stays with the host.
        assert!(!memory_item(&with, None, 4096 - 64).0);
    }
}
