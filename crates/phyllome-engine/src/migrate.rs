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

use crate::errors::Classify;
use crate::op::progress::{note, Progress, Report};
use crate::vm::{self, VmError};
use phyllome_libvirt::{Libvirt, MigrateAsk, MigrationStats, State};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Request {
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
    pub changes: Vec<crate::bundle::Change>,
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
pub fn check(src: &Libvirt, dst: &Libvirt, name: &str, req: &Request) -> Result<Checked> {
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
    let shape = crate::snapshot::shape(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
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
                    v.as_ref().is_some_and(|v| Path::new(&v.path).parent() == Some(Path::new(crate::POOL_PATH)));
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
    if let Some(mut m) = Made::all(&pending_dir()).into_iter().find(|m| m.uuid == s.uuid && m.made_through(src)) {
        let (ok, detail) = if !m.is_orphan() {
            (false, format!("phyllome (process {}) is moving it now", m.pid))
        } else if m.to != req.to {
            let other = host_label(&m.to);
            (false, format!("a move of it to {other} was cut short: settle it first (phyllome host clean {other})"))
        } else {
            let seen = settle(src, dst, &mut m, &pending_dir(), true, false);
            // One that did not get there is undone before this move; any other is no start.
            (seen.outcome == "undone", seen.note)
        };
        c.push("earlier move", ok, detail);
    }
    let vol_path = format!("{}/{name}.qcow2", crate::POOL_PATH);
    if let Some(p) = dst.pool_path(crate::POOL)? {
        let same = p == crate::POOL_PATH;
        c.push(
            "pool",
            same,
            if same {
                format!("{} at {p}", crate::POOL)
            } else {
                format!("{} is at {p} there, not {}", crate::POOL, crate::POOL_PATH)
            },
        );
        let vol_name = format!("{name}.qcow2");
        if dst.volume_info(crate::POOL, &vol_name)?.is_some() || dst.volume_secret(&vol_path)?.is_some() {
            // A volume a domain there uses is that VM's disk, whoever made it: never removed.
            let user = vm::other_user(dst, "", crate::POOL, &vol_name, Some(&vol_path))?;
            let leftover =
                Made::orphans(&pending_dir(), &req.to).iter().any(|m| m.volume == vol_name && m.volume_key.is_some());
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
        c.push("pool", true, format!("{} is made there at {}", crate::POOL, crate::POOL_PATH));
    }
    let (ok, detail) = match dst.node_memory() {
        Ok(node) => {
            // The destination on this machine: its MemAvailable is this kernel's.
            let here = if dst.is_local() { Some(crate::snapshot::mem_available()).filter(|&b| b > 0) } else { None };
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

/// Where a migration records what it made on its destination while it runs
/// (one JSON file per VM UUID), so that a move cut short (the destination's libvirtd
/// died, the network went, phyllome itself was killed) is settled later.
pub const PENDING_DIR: &str = "/var/lib/phyllome/pending-migrations";

/// How long the recovery every command runs waits for a destination to answer: a host
/// that is away costs each command this much while a move to it is unsettled.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);

/// What a migration made on the destination, by identity, and what it changed here,
/// on disk from before the first object is made until the move is settled.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
struct Made {
    vm: String,
    /// The domain's UUID: the record's file name, and how the VM is known on both hosts.
    uuid: String,
    to: String,
    /// The source's libvirt connection (None in records of older versions: this host's own).
    #[serde(default)]
    from: Option<String>,
    pid: u32,
    boot_id: String,
    /// The pool (its UUID), when this migration made it there.
    pool: Option<String>,
    secret: Option<String>,
    volume: String,
    volume_key: Option<String>,
    /// Uploaded files: folder, name, and the key libvirt gave the upload.
    files: Vec<(String, String, String)>,
    /// Folders there that did not exist before the uploads made them.
    #[serde(default)]
    dirs: Vec<String>,
    /// A stopped source started paused for the move (its UUID).
    #[serde(default)]
    paused_source: Option<String>,
    /// The source's libvirt autostart was on, and is off while it moves (so a reboot here
    /// cannot start it while it runs there).
    #[serde(default)]
    autostart: bool,
    /// The unix sockets of the migration streams on this machine (a destination on it).
    #[serde(default)]
    sockets: Vec<String>,
    /// Why the move is not settled yet, as last seen.
    #[serde(default)]
    why: Option<String>,
}

impl Made {
    fn file(dir: &Path, uuid: &str) -> std::path::PathBuf {
        dir.join(format!("{uuid}.json"))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let fail = |e: std::io::Error| VmError::Disk(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(fail)?;
        let path = Made::file(dir, &self.uuid);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("plain data");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(fail)?;
            f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(fail)?;
        }
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(())
    }

    fn forget(&self, dir: &Path) {
        let _ = std::fs::remove_file(Made::file(dir, &self.uuid));
    }

    /// Nothing of it is left on the destination.
    fn is_empty(&self) -> bool {
        self.pool.is_none()
            && self.secret.is_none()
            && self.volume_key.is_none()
            && self.files.is_empty()
            && self.dirs.is_empty()
    }

    /// What is still there, in words.
    fn left(&self) -> Vec<String> {
        let mut left = vec![];
        if self.volume_key.is_some() {
            left.push(format!("volume {}/{}", crate::POOL, self.volume));
        }
        if let Some(s) = &self.secret {
            left.push(format!("secret {s}"));
        }
        left.extend(self.files.iter().map(|(d, f, _)| format!("{d}/{f}")));
        left.extend(self.dirs.iter().map(|d| format!("folder {d}")));
        if self.pool.is_some() {
            left.push(format!("storage pool {}", crate::POOL));
        }
        left
    }

    /// The process that wrote it is gone (killed, or the host rebooted since).
    fn is_orphan(&self) -> bool {
        self.boot_id != crate::op::journal::boot_id() || !crate::op::journal::phyllome_alive(self.pid)
    }

    /// Made through the connection `lv` (recovery acts on a record only through the source
    /// it was made from, never another host's).
    fn made_through(&self, lv: &Libvirt) -> bool {
        crate::op::journal::same_connection(self.from.as_deref(), lv)
    }

    /// Every record in `dir`.
    fn all(dir: &Path) -> Vec<Made> {
        let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
        rd.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice::<Made>(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Records of migrations whose process is gone, to a destination.
    fn orphans(dir: &Path, to: &str) -> Vec<Made> {
        Made::all(dir).into_iter().filter(|m| m.to == to && m.is_orphan()).collect()
    }

    /// The unix sockets of its streams removed (QEMU leaves them), unless a live phyllome
    /// now has that process id (and so those names).
    fn remove_sockets(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        if self.pid != std::process::id() && crate::op::journal::phyllome_alive(self.pid) {
            return;
        }
        for s in self.sockets.drain(..) {
            if std::fs::symlink_metadata(&s).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&s);
            }
        }
    }
}

fn pending_dir() -> std::path::PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Ok(p) = std::env::var("PHYLLOME_TEST_PENDING_MIGRATIONS") {
        return p.into();
    }
    PENDING_DIR.into()
}

/// Held while records are settled, so that two commands never settle one move twice.
fn settle_lock(dir: &Path) -> Option<std::fs::File> {
    std::fs::create_dir_all(dir).ok()?;
    let f = std::fs::File::open(dir).ok()?;
    f.lock().ok()?;
    Some(f)
}

/// A destination as messages name it: its host name when it was added as one.
fn host_label(uri: &str) -> String {
    crate::remotes::Hosts::open().name_of(uri).unwrap_or_else(|| uri.to_string())
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

    fn left_as_is(m: &Made, outcome: &str, note: String) -> Settled {
        Settled {
            vm: m.vm.clone(),
            uuid: m.uuid.clone(),
            to: host_label(&m.to),
            outcome: outcome.into(),
            removed: vec![],
            left: m.left(),
            note,
        }
    }
}

/// Removes from `dst` what `m` made there, each object by identity (volume key, secret
/// UUID, upload key, pool UUID), clearing from `m` what is gone. A volume a domain there
/// uses (defined or running) is not this record's any more: it stays, with its key, and
/// is said in the returned words.
fn undo_there(dst: &Libvirt, m: &mut Made) -> Vec<String> {
    let mut kept = vec![];
    if let Some(k) = m.volume_key.clone() {
        match vm::other_user(dst, "", crate::POOL, &m.volume, Some(&k)) {
            Ok(Some(other)) => {
                kept.push(format!("volume {}/{} and its key: the disk of VM {other} there", crate::POOL, m.volume));
                m.volume_key = None;
                m.secret = None;
            }
            Ok(None) => {
                if dst.delete_volume_by_key(crate::POOL, &m.volume, &k).is_ok() {
                    m.volume_key = None;
                }
            }
            Err(_) => {}
        }
    }
    if let Some(s) = m.secret.clone() {
        if dst.undefine_secret_uuid(&s).is_ok() {
            m.secret = None;
        }
    }
    m.files.retain(|(dir, file, key)| dst.remove_uploaded(dir, file, key).is_err());
    if m.files.is_empty() {
        // Only while empty (an rmdir): a folder something else put files into stays.
        m.dirs.retain(|d| dst.remove_empty_folder(d).is_err());
    }
    if let Some(p) = m.pool.clone() {
        if m.volume_key.is_none() && dst.remove_empty_pool(&p).is_ok() {
            m.pool = None;
        }
    }
    kept
}

/// Settles the move `m` records, from what both hosts show by the VM's UUID: a move that
/// completed is finished (the VM's copy here removed, as after a move, through
/// `vm::delete`'s path), a failed one undone (what it made there removed, the source as it
/// was), anything else left as it is and said. `migration_failed`: this process saw
/// libvirt's migration fail, so a domain of the VM's UUID there that does not run is what
/// the failure left. With `dry_run` nothing changes.
fn settle(src: &Libvirt, dst: &Libvirt, m: &mut Made, dir: &Path, dry_run: bool, migration_failed: bool) -> Settled {
    let to = host_label(&m.to);
    let here = match src.by_uuid(&m.uuid) {
        Ok(h) => h,
        Err(e) => return Settled::left_as_is(m, "unreachable", format!("this host's libvirt: {}", e.message)),
    };
    let mut there = match dst.by_uuid(&m.uuid) {
        Ok(t) => t,
        Err(e) => return Settled::left_as_is(m, "unreachable", format!("{to}: {}", e.message)),
    };
    let migrating =
        here.as_ref().is_some_and(|(n, s)| *s != State::Shutoff && src.migration_stats(n).is_ok_and(|st| st.active));
    if migration_failed && !dry_run && there.as_ref().is_some_and(|(_, s)| *s != State::Running) {
        let _ = dst.remove_domain_by_uuid(&m.uuid);
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
                m.why = Some("libvirt was still moving it".into());
                let _ = m.save(dir);
            }
        }
        Outcome::Both => {
            s.outcome = "on-both-hosts".into();
            s.note = format!(
                "{vm_name} runs here and is defined on {to} too: nothing was removed; delete the copy you do not want (phyllome --connect URI delete {vm_name} there)"
            );
            if !dry_run {
                m.why = Some(format!("it runs here and is defined on {to} too"));
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
                if m.paused_source.is_some() && there_state == State::Paused {
                    // An offline move arrives paused: powered off there, as it was here.
                    let _ = dst.destroy_paused_uuid(&m.uuid);
                }
                if m.autostart && dst.set_autostart(&there_name, true).is_ok() {
                    m.autostart = false;
                }
                if let Some((name, _)) = &here {
                    match vm::delete_now(src, name, false) {
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
                    m.why = Some(format!("it is on {to}, but its copy here could not be removed"));
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
                    if m.paused_source.is_some() && *st == State::Paused {
                        let _ = src.destroy_paused_uuid(&m.uuid);
                    }
                    if m.autostart && src.set_autostart(name, true).is_ok() {
                        m.autostart = false;
                    }
                }
                let before = m.left();
                let kept = undo_there(dst, m);
                let after = m.left();
                s.removed = before.iter().filter(|b| !after.contains(b)).cloned().collect();
                s.left = after;
                s.left.extend(kept);
                m.remove_sockets();
                if m.is_empty() {
                    m.forget(dir);
                } else {
                    m.why = Some(format!("what it made on {to} could not all be removed"));
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

/// How long a failed migration waits for its destination to answer again, to remove
/// what it made there: a libvirtd that died is back within it under systemd
/// (`Restart=on-failure`, or socket activation at the first connection).
const UNDO_WAIT: Duration = Duration::from_secs(20);

/// After this process saw the migration fail: the paused source stopped again, its
/// autostart back, and the move settled over a new connection to the destination (the
/// old one may have died with its daemon; it is tried again for [`UNDO_WAIT`]). What
/// could not be removed stays recorded.
fn undo(src: &Libvirt, m: &mut Made, dir: &Path, progress: Report<'_>) -> Settled {
    if let Some(u) = &m.paused_source {
        let _ = src.destroy_paused_uuid(u);
    }
    let until = std::time::Instant::now() + UNDO_WAIT;
    let mut told = false;
    let dst = loop {
        match connect(&m.to) {
            Ok(d) => break Some(d),
            Err(_) if std::time::Instant::now() < until => {
                if !told && !m.is_empty() {
                    note(progress, "the destination does not answer: waiting for it, to remove what was made there");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(_) => break None,
        }
    };
    match dst {
        Some(dst) => settle(src, &dst, m, dir, false, true),
        None => {
            // libvirt said the move failed: the VM is here, whatever stays there.
            if m.autostart && src.set_autostart(&m.vm, true).is_ok() {
                m.autostart = false;
            }
            m.remove_sockets();
            m.why = Some("the destination did not answer".into());
            let _ = m.save(dir);
            Settled::left_as_is(m, "unreachable", "the destination did not answer".into())
        }
    }
}

/// Settles every move cut short from `src` whose destination answers within
/// `RECOVER_WITHIN` (5 s): what every phyllome command does first (`vm::recover`). Returns each
/// record looked at, settled or left.
pub fn recover(src: &Libvirt) -> Vec<Settled> {
    let dir = pending_dir();
    if !Made::all(&dir).iter().any(|m| m.is_orphan() && m.made_through(src)) {
        return vec![];
    }
    let Some(_lock) = settle_lock(&dir) else { return vec![] };
    let mut reached: std::collections::HashMap<String, std::result::Result<Libvirt, String>> = Default::default();
    let mut out = vec![];
    // Read again under the lock: another command may have settled some meanwhile.
    for mut m in Made::all(&dir).into_iter().filter(|m| m.is_orphan() && m.made_through(src)) {
        let dst = reached.entry(m.to.clone()).or_insert_with(|| crate::remotes::connect_within(&m.to, RECOVER_WITHIN));
        match dst {
            Ok(dst) => out.push(settle(src, dst, &mut m, &dir, false, false)),
            Err(why) => {
                let why = format!("{} does not answer: {why}", host_label(&m.to));
                m.why = Some(why.clone());
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
pub fn clean(src: &Libvirt, dst: &Libvirt, to: &str, dry_run: bool) -> Vec<Settled> {
    let dir = pending_dir();
    let _lock = if dry_run { None } else { settle_lock(&dir) };
    let mut out = vec![];
    for mut m in Made::all(&dir).into_iter().filter(|m| m.to == to && m.made_through(src)) {
        if m.is_orphan() {
            out.push(settle(src, dst, &mut m, &dir, dry_run, false));
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
    let m = Made::all(&pending_dir()).into_iter().find(|m| m.uuid == uuid && m.made_through(lv))?;
    let why = if !m.is_orphan() {
        format!("phyllome (process {}) is moving it now", m.pid)
    } else {
        m.why.clone().unwrap_or_else(|| "the phyllome command moving it stopped".into())
    };
    Some((host_label(&m.to), why))
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
    Made::all(&pending_dir())
        .into_iter()
        .filter(|m| m.made_through(lv))
        .map(|m| (m.uuid.clone(), Moving { orphan: m.is_orphan() }))
        .collect()
}

/// The moves cut short from `lv` that are not settled, in words (`phyllome check`).
pub fn unsettled(lv: &Libvirt) -> Vec<String> {
    Made::all(&pending_dir())
        .into_iter()
        .filter(|m| m.is_orphan() && m.made_through(lv))
        .map(|m| {
            let to = host_label(&m.to);
            let why = m.why.clone().unwrap_or_else(|| "not looked at since".into());
            let left = m.left();
            let left = if left.is_empty() { String::new() } else { format!("; left there: {}", left.join(", ")) };
            format!("{} to {to} ({why}{left}): phyllome host clean {to}", m.vm)
        })
        .collect()
}

/// The VM as Phyllome would make it, and what this host chooses for it: what the
/// destination's choices are compared with, and rebuilt from.
struct Tuning {
    spec: vm::VmSpec,
    /// This host, and what it chooses.
    here: crate::bundle::SourceHost,
    from: Vec<crate::bundle::SavedChoice>,
}

fn tuning_here(src: &Libvirt, name: &str, capacity: u64) -> Option<Tuning> {
    let (manifest, _) = crate::manifest::of_vm(src, name).ok()?;
    let (host, _) = crate::host_facts::gather(src, true).ok()?;
    let spec = crate::bundle::request_for(&manifest, capacity, None);
    let from = crate::bundle::plan_on(name, &spec, &host, vec![])
        .ok()?
        .choices
        .iter()
        .map(crate::bundle::SavedChoice::from)
        .collect();
    Some(Tuning { spec, here: crate::bundle::SourceHost::of(&host), from })
}

/// `xml` with the domain's UUID, and the MAC addresses of `old`'s interfaces in order
/// (the guest keeps its identity, its TPM state folder and its network configuration).
pub(crate) fn keep_identity(xml: &str, uuid: &str, old: &str) -> String {
    let macs: Vec<String> = roxmltree::Document::parse(old)
        .map(|d| {
            d.descendants()
                .filter(|n| n.has_tag_name("mac") && n.parent().is_some_and(|p| p.has_tag_name("interface")))
                .filter_map(|n| n.attribute("address").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::with_capacity(xml.len() + 128);
    let mut rest = xml;
    if let Some(i) = rest.find("</name>") {
        let end = i + "</name>".len();
        out.push_str(&rest[..end]);
        out.push_str(&format!("<uuid>{uuid}</uuid>"));
        rest = &rest[end..];
    }
    let mut macs = macs.into_iter();
    while let Some(i) = rest.find("<interface ") {
        let Some(close) = rest[i..].find('>') else { break };
        let end = i + close + 1;
        out.push_str(&rest[..end]);
        if let Some(mac) = macs.next() {
            out.push_str(&format!("<mac address='{mac}'/>"));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The destination's plan for the VM: its definition and choices, and the destination.
fn plan_there(
    dst: &Libvirt,
    name: &str,
    t: &Tuning,
) -> std::result::Result<(phyllome_model::build::Plan, crate::bundle::SourceHost), String> {
    let host = crate::host_facts::gather_remote(dst).map_err(|e| format!("its host facts: {e}"))?;
    let plan = crate::bundle::plan_on(name, &t.spec, &host, vec![]).map_err(|e| e.to_string())?;
    Ok((plan, crate::bundle::SourceHost::of(&host)))
}

/// After an offline move: the definition rebuilt for the destination, as import does,
/// keeping the UUID, MAC addresses, disk, key, UEFI variable store and TPM state that
/// moved. On any doubt the moved definition stays (and the reason is returned).
fn retune(
    dst: &Libvirt,
    name: &str,
    uuid: &str,
    t: &Tuning,
) -> std::result::Result<Vec<crate::bundle::Change>, String> {
    let arrived = dst.inactive_xml(name).map_err(|e| e.message)?;
    let (plan, there) = plan_there(dst, name, t)?;
    let xml = keep_identity(&plan.domain.to_xml(), uuid, &arrived);
    let (old, new) = (
        crate::domxml::parse(&arrived).map_err(|e| e.to_string())?,
        crate::domxml::parse(&xml).map_err(|e| e.to_string())?,
    );
    let nv = |s: &crate::domxml::DomainSummary| s.nvram.as_ref().map(|n| n.path.clone());
    if nv(&old) != nv(&new) {
        return Err(format!(
            "its UEFI variable store is {:?} there, the rebuilt definition names {:?}",
            nv(&old).unwrap_or_default(),
            nv(&new).unwrap_or_default()
        ));
    }
    let disk =
        |s: &crate::domxml::DomainSummary| s.main_disk().map(|d| (d.pool.clone(), d.volume.clone(), d.file.clone()));
    if disk(&old) != disk(&new) {
        return Err("the rebuilt definition names another disk".into());
    }
    if let Err(e) = dst.define(&xml) {
        let _ = dst.define(&arrived);
        return Err(e.message);
    }
    // Tuned there now: what `phyllome xml --vm` compares with later.
    let chosen: Vec<_> = plan.choices.iter().map(crate::bundle::SavedChoice::from).collect();
    let _ = crate::retune::record(dst, name, &there, &chosen);
    Ok(crate::bundle::changes(&t.from, &plan.choices))
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
pub fn migrate(src: &Libvirt, name: &str, req: &Request, progress: Report<'_>) -> Result<Migrated> {
    // Moves cut short before are settled first (those to this destination over its own
    // connection below, however long it takes to answer).
    let mut settled = recover(src);
    vm::recover(src);
    let _held = crate::op::lock::take(src, name, crate::op::lock::Operation::Migrate)?;
    vm::refuse_changed(
        src,
        &vm::summary(src, name)?,
        "migrate it: only the image over its encrypted volume would move",
    )?;
    let dst = connect(&req.to)?;
    let pending = pending_dir();
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
    if let Some(m) = Made::all(&pending).into_iter().find(|m| m.uuid == s.uuid) {
        return Err(MigrateError::Refused {
            vm: name.into(),
            to: req.to.clone(),
            why: format!(
                "an earlier move of it to {} is not settled ({}): phyllome host clean {} first",
                host_label(&m.to),
                m.why.as_deref().unwrap_or("left as it was"),
                host_label(&m.to)
            ),
        });
    }
    let d = s.main_disk().cloned().ok_or_else(|| VmError::Disk(format!("{name} has no disk")))?;
    let vol = src
        .volume_info(crate::POOL, d.volume.as_deref().unwrap_or_default())?
        .ok_or_else(|| VmError::NoVolume(format!("{}/{name}.qcow2", crate::POOL)))?;
    let tuning = tuning_here(src, name, vol.capacity);
    let mut made = Made {
        vm: name.into(),
        uuid: s.uuid.clone(),
        to: req.to.clone(),
        from: Some(src.uri()),
        pid: std::process::id(),
        boot_id: crate::op::journal::boot_id(),
        volume: format!("{name}.qcow2"),
        ..Made::default()
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let hooks: Vec<_> = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
        .iter()
        .filter_map(|sig| signal_hook::flag::register(*sig, Arc::clone(&interrupted)).ok())
        .collect();
    // The disk copy's figures, as libvirt reports them while it runs (its completed job keeps none).
    let mut disk_seen = (0u64, 0u64);
    let mut libvirt_done = false;
    let result = (|| -> Result<MigrationStats> {
        let at = |st: &'static str| -> Result<()> {
            progress(Progress::Step { step: st });
            Ok(vm::step(st, &interrupted)?)
        };
        at("prepare")?;
        made.save(&pending)?;
        if dst.ensure_dir_pool(crate::POOL, crate::POOL_PATH)? {
            made.pool = dst.pool_uuid(crate::POOL)?;
            made.save(&pending)?;
            note(progress, &format!("made storage pool {} on the destination", crate::POOL));
        }
        if d.luks_secret.is_some() || s.encrypted() {
            let key = vm::random_key().map_err(|e| VmError::Disk(format!("no randomness: {e}")))?;
            made.secret = Some(dst.define_volume_secret(
                &vol.path,
                &format!("phyllome: disk passphrase of VM {name}"),
                false,
                &key,
            )?);
            made.save(&pending)?;
            note(progress, "a new disk key on the destination: QEMU re-encrypts the disk as it copies it");
            // The empty LUKS qcow2 is made here and uploaded, as `create` makes its disks: the key
            // is random, so the LUKS slot needs no passphrase stretching. libvirt's own volume
            // creation (qemu-img's 2 s default) cost 4.9 s, and as much again when QEMU opens it
            // there (docs/benchmarks.md, "Migration").
            let image = phyllome_disk::bytes(vol.capacity, &key, phyllome_disk::Cost::RANDOM_KEY)
                .map_err(|e| VmError::Disk(e.to_string()))?;
            made.volume_key = Some(dst.upload_volume(crate::POOL, &format!("{name}.qcow2"), &image, 0o600)?);
            made.save(&pending)?;
        } else {
            return Err(MigrateError::Refused {
                vm: name.into(),
                to: req.to.clone(),
                why: "its disk is not encrypted: moving unencrypted disks is not supported".into(),
            });
        }
        // Each file goes up as a new volume of a transient pool over its folder; a folder
        // that was not there is recorded first, to go again with the files.
        let upload = |made: &mut Made, path: &str, bytes: &[u8], mode: u32| -> Result<()> {
            let p = Path::new(path);
            let (dir, file) = (
                p.parent().expect("a folder").to_string_lossy().into_owned(),
                p.file_name().expect("a file").to_string_lossy().into_owned(),
            );
            if !made.dirs.contains(&dir) && !dst.folder_exists(&dir)? {
                made.dirs.push(dir.clone());
                made.save(&pending)?;
            }
            let key = dst.upload_file(&dir, &file, bytes, mode)?;
            made.files.push((dir, file, key));
            made.save(&pending)
        };
        // The source's files are read on the source's host (through its libvirt when it is another one).
        if let Some(n) = &s.nvram {
            if let Some(bytes) = on_source(src, &n.path).map_err(|e| VmError::Nvram(format!("{}: {e}", n.path)))? {
                upload(&mut made, &n.path, &bytes, 0o600)?;
            }
        }
        for f in s.boot_files.iter().filter(|f| Path::new(f).starts_with(crate::BOOT_DIR)) {
            let bytes = on_source(src, f)
                .and_then(|b| b.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)))
                .map_err(|e| VmError::Disk(format!("{f}: {e}")))?;
            upload(&mut made, f, &bytes, 0o644)?;
        }
        at("migrate")?;
        if src.autostart(name)? {
            // Off while it moves, so a reboot here cannot start it while it runs there.
            made.autostart = true;
            made.save(&pending)?;
            src.set_autostart(name, false)?;
        }
        if !req.live {
            // No guest code runs: QEMU only carries the disk, TPM and device state across.
            made.paused_source = Some(s.uuid.clone());
            made.save(&pending)?;
            src.start_paused(name)?;
        }
        let (migrate_uri, disks_uri) = data_uris(&req.to);
        made.sockets = [&migrate_uri, &disks_uri]
            .into_iter()
            .flatten()
            .filter_map(|u| u.strip_prefix("unix://").map(String::from))
            .collect();
        made.save(&pending)?;
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
            if interrupted.load(Ordering::Relaxed) {
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
            if interrupted.load(Ordering::Relaxed) {
                return Err(VmError::Interrupted.into());
            }
            return Err(MigrateError::Failed { vm: name.into(), why: e.message });
        }
        libvirt_done = true;
        // The move completed: from here on it is finished, not undone, whatever happens
        // (a kill -9 here leaves the record, which the next command settles the same way).
        let _ = vm::step("migrated", &AtomicBool::new(false));
        made.paused_source = None;
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
    for h in hooks {
        signal_hook::low_level::unregister(h);
    }
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
                record: Made::file(&pending, &s.uuid).display().to_string(),
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
    if made.autostart {
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
        (Some(t), false) => match retune(&dst, name, &s.uuid, t) {
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
        (Some(t), true) => match plan_there(&dst, name, t) {
            Ok((plan, _)) => {
                // It runs as tuned here: recorded so `phyllome xml --vm` there can say what a cold boot changes.
                if let Err(e) = crate::retune::record(&dst, name, &t.here, &t.from) {
                    notes.push(format!("what it was tuned to here could not be recorded there: {e}"));
                }
                changes = crate::bundle::changes(&t.from, &plan.choices);
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
    fn a_rebuilt_definition_keeps_the_uuid_and_the_mac_addresses_in_order() {
        let old =
            "<domain><name>v</name><devices><interface type='network'><mac address='52:54:00:00:00:01'/></interface>\
                   <interface type='user'><mac address='52:54:00:00:00:02'/></interface></devices></domain>";
        let new = "<domain type='qemu'>\n  <name>v</name>\n  <devices>\n    <interface type='network'>\n      <model type='virtio'/>\n    </interface>\n    <interface type='user'>\n    </interface>\n  </devices>\n</domain>";
        let out = keep_identity(new, "0b6c1a4e-0000-4000-8000-000000000001", old);
        let doc = roxmltree::Document::parse(&out).unwrap();
        let uuid = doc.descendants().find(|n| n.has_tag_name("uuid")).and_then(|n| n.text());
        assert_eq!(uuid, Some("0b6c1a4e-0000-4000-8000-000000000001"));
        let macs: Vec<_> =
            doc.descendants().filter(|n| n.has_tag_name("mac")).filter_map(|n| n.attribute("address")).collect();
        assert_eq!(macs, ["52:54:00:00:00:01", "52:54:00:00:00:02"]);
        // Without interfaces there, only the UUID is added.
        let plain = keep_identity("<domain><name>v</name></domain>", "u", old);
        assert_eq!(plain, "<domain><name>v</name><uuid>u</uuid></domain>");
    }

    #[test]
    fn a_record_is_an_orphan_only_for_its_destination_once_its_process_is_gone() {
        let dir = std::env::temp_dir().join(format!("phyllome-test-pending-{}", std::process::id()));
        let mut m = Made {
            vm: "v".into(),
            uuid: "0b6c1a4e-0000-4000-8000-000000000001".into(),
            to: "qemu+ssh://root@b/system".into(),
            pid: std::process::id(),
            boot_id: crate::op::journal::boot_id(),
            volume: "v.qcow2".into(),
            secret: Some("s-uuid".into()),
            volume_key: Some("/pool/v.qcow2".into()),
            files: vec![("/nv".into(), "v_VARS.qcow2".into(), "/nv/v_VARS.qcow2".into())],
            ..Made::default()
        };
        m.save(&dir).unwrap();
        // Written 0600: it names a secret's UUID and paths.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(Made::file(&dir, &m.uuid)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A record of a process that is gone (no pid is u32::MAX).
        m.pid = u32::MAX;
        m.save(&dir).unwrap();
        assert_eq!(Made::orphans(&dir, "qemu+ssh://root@b/system").len(), 1);
        assert!(Made::orphans(&dir, "qemu+ssh://root@c/system").is_empty(), "another host's record");
        assert_eq!(m.left(), ["volume phyllome/v.qcow2", "secret s-uuid", "/nv/v_VARS.qcow2"]);
        // A folder the uploads made there is part of what is left.
        m.dirs.push("/b/v".into());
        assert_eq!(m.left().last().map(String::as_str), Some("folder /b/v"));
        assert!(!m.is_empty());
        m.forget(&dir);
        assert!(Made::orphans(&dir, "qemu+ssh://root@b/system").is_empty());
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
    fn the_memory_check_counts_what_the_destination_can_give_and_says_which_figure() {
        let mib = |m: u64| m << 20;
        // The issue's host: 764 MiB free, 21 GiB available once the page cache is counted.
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

    #[test]
    fn a_record_of_an_older_version_still_reads_as_one_made_here() {
        let old = r#"{"vm":"v","uuid":"u","to":"qemu+ssh://b/system","pid":1,"boot_id":"x","pool":null,
            "secret":null,"volume":"v.qcow2","volume_key":null,"files":[]}"#;
        let m: Made = serde_json::from_str(old).unwrap();
        assert!(m.from.is_none() && m.dirs.is_empty() && m.paused_source.is_none() && !m.autostart);
        assert!(m.is_orphan(), "another boot's record");
        assert!(m.is_empty());
    }
}
