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

use crate::progress::{note, Progress, Report};
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
        "the migration of {vm} failed ({why}); it stays on this host. The destination did not answer, so {} stay there: the next phyllome migrate to it removes them (recorded in {record})",
        left.join(", ")
    )]
    LeftThere { vm: String, why: String, left: Vec<String>, record: String },
}

impl MigrateError {
    pub fn kind(&self) -> crate::errors::ErrorKind {
        use crate::errors::ErrorKind;
        match self {
            MigrateError::Vm(v) => crate::errors::classify(v as &(dyn std::error::Error + 'static)),
            MigrateError::Unreachable { .. } => ErrorKind::Unavailable,
            MigrateError::Refused { .. } => ErrorKind::Unsupported,
            MigrateError::Failed { .. } | MigrateError::LeftThere { .. } => ErrorKind::Failed,
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
    if !src.is_local() {
        c.push("source", false, "the source must be this host's own libvirt (its NVRAM and boot files are read here)");
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
        if dst.volume_info(crate::POOL, &format!("{name}.qcow2"))?.is_some() || dst.volume_secret(&vol_path)?.is_some()
        {
            let leftover = Made::orphans(&pending_dir(), &req.to)
                .iter()
                .any(|m| m.volume == format!("{name}.qcow2") && m.volume_key.is_some());
            if leftover {
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
    let free = dst.free_memory()?;
    let need = s.memory_mib << 20;
    c.push("memory", free > need + (128 << 20), format!("{} MiB free there for {} MiB", free >> 20, s.memory_mib));
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
/// (one JSON file per VM UUID), so that what a failure could not remove there
/// (the destination's libvirtd died, the network went) is removed later.
pub const PENDING_DIR: &str = "/var/lib/phyllome/pending-migrations";

/// What a migration made on the destination, by identity, on disk from before the
/// first object is made until the move completed or all of it was removed.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
struct Made {
    vm: String,
    /// The domain's UUID: the record's file name, and how the VM is known there.
    uuid: String,
    to: String,
    pid: u32,
    boot_id: String,
    /// The pool (its UUID), when this migration made it there.
    pool: Option<String>,
    secret: Option<String>,
    volume: String,
    volume_key: Option<String>,
    /// Uploaded files: folder, name, and the key libvirt gave the upload.
    files: Vec<(String, String, String)>,
    /// A stopped source started paused for the move (this process only).
    #[serde(skip)]
    paused_source: Option<String>,
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

    fn is_empty(&self) -> bool {
        self.pool.is_none() && self.secret.is_none() && self.volume_key.is_none() && self.files.is_empty()
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
        if self.pool.is_some() {
            left.push(format!("storage pool {}", crate::POOL));
        }
        left
    }

    /// Records of migrations whose process is gone, to a destination.
    fn orphans(dir: &Path, to: &str) -> Vec<Made> {
        let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
        rd.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice::<Made>(&std::fs::read(e.path()).ok()?).ok())
            .filter(|m| {
                m.to == to && (m.boot_id != crate::journal::boot_id() || !crate::journal::phyllome_alive(m.pid))
            })
            .collect()
    }
}

fn pending_dir() -> std::path::PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Ok(p) = std::env::var("PHYLLOME_TEST_PENDING_MIGRATIONS") {
        return p.into();
    }
    PENDING_DIR.into()
}

/// Removes from `dst` what `m` made there, each object by identity (volume key,
/// secret UUID, upload key, pool UUID), clearing from `m` what is gone. A domain of
/// the VM's UUID that the failed migration left there, not running, goes first.
fn undo_there(dst: &Libvirt, m: &mut Made) {
    if let Ok(list) = dst.list_all() {
        if list.iter().any(|l| l.uuid() == m.uuid && l.state != State::Running) {
            let _ = dst.remove_domain_by_uuid(&m.uuid);
        }
    }
    if let Some(k) = m.volume_key.clone() {
        if dst.delete_volume_by_key(crate::POOL, &m.volume, &k).is_ok() {
            m.volume_key = None;
        }
    }
    if let Some(s) = m.secret.clone() {
        if dst.undefine_secret_uuid(&s).is_ok() {
            m.secret = None;
        }
    }
    m.files.retain(|(dir, file, key)| dst.remove_uploaded(dir, file, key).is_err());
    if let Some(p) = m.pool.clone() {
        if m.volume_key.is_none() && dst.remove_empty_pool(&p).is_ok() {
            m.pool = None;
        }
    }
}

/// How long a failed migration waits for its destination to answer again, to remove
/// what it made there: a libvirtd that died is back within it under systemd
/// (`Restart=on-failure`, or socket activation at the first connection).
const UNDO_WAIT: Duration = Duration::from_secs(20);

/// After a failure: the paused source stopped again, and what was made on the
/// destination removed, over a new connection (the old one may have died with its
/// daemon; it is tried again for [`UNDO_WAIT`]). What could not be removed stays
/// recorded; returns it, in words.
fn undo(src: &Libvirt, m: &mut Made, dir: &Path, progress: Report<'_>) -> Vec<String> {
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
    if let Some(dst) = dst {
        undo_there(&dst, m);
    }
    if m.is_empty() {
        m.forget(dir);
        vec![]
    } else {
        let _ = m.save(dir);
        m.left()
    }
}

/// What migrations that died (or whose destination did not answer) left on `dst`,
/// removed now; in words, for the notes. A record whose VM is defined there is only
/// dropped: the move got there, and what it made belongs to that VM now.
fn recover_pending(dst: &Libvirt, to: &str, dir: &Path) -> Vec<String> {
    let mut notes = vec![];
    for mut m in Made::orphans(dir, to) {
        let there = dst.list_all().map(|l| l.iter().any(|l| l.uuid() == m.uuid));
        match there {
            Ok(true) => {
                notes.push(format!("an earlier migration of {} reached the destination; its record was dropped", m.vm));
                m.forget(dir);
            }
            Ok(false) => {
                let before = m.left();
                undo_there(dst, &mut m);
                let after = m.left();
                let removed: Vec<_> = before.iter().filter(|b| !after.contains(b)).cloned().collect();
                if !removed.is_empty() {
                    notes.push(format!(
                        "removed what an interrupted migration of {} left there: {}",
                        m.vm,
                        removed.join(", ")
                    ));
                }
                if m.is_empty() {
                    m.forget(dir);
                } else {
                    let _ = m.save(dir);
                }
            }
            Err(_) => {}
        }
    }
    notes
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
    let (host, _) = crate::hostinfo::gather(src, true).ok()?;
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
    let host = crate::hostinfo::gather_remote(dst).map_err(|e| format!("its host facts: {e}"))?;
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
    let _ = crate::tuned::record(dst, name, &there, &chosen);
    Ok(crate::bundle::changes(&t.from, &plan.choices))
}

/// Moves `name` to `req.to` (after [`check`] passed).
pub fn migrate(src: &Libvirt, name: &str, req: &Request, progress: Report<'_>) -> Result<Migrated> {
    vm::recover(src);
    let _held = crate::oplock::take(src, name, crate::oplock::Operation::Migrate)?;
    vm::refuse_changed(
        src,
        &vm::summary(src, name)?,
        "migrate it: only the image over its encrypted volume would move",
    )?;
    let dst = connect(&req.to)?;
    let pending = pending_dir();
    let mut notes = recover_pending(&dst, &req.to, &pending);
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
    let d = s.main_disk().cloned().ok_or_else(|| VmError::Disk(format!("{name} has no disk")))?;
    let vol = src
        .volume_info(crate::POOL, d.volume.as_deref().unwrap_or_default())?
        .ok_or_else(|| VmError::NoVolume(format!("{}/{name}.qcow2", crate::POOL)))?;
    let tuning = tuning_here(src, name, vol.capacity);
    let mut made = Made {
        vm: name.into(),
        uuid: s.uuid.clone(),
        to: req.to.clone(),
        pid: std::process::id(),
        boot_id: crate::journal::boot_id(),
        volume: format!("{name}.qcow2"),
        ..Made::default()
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let hooks: Vec<_> = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
        .iter()
        .filter_map(|sig| signal_hook::flag::register(*sig, Arc::clone(&interrupted)).ok())
        .collect();
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
        if let Some(n) = s.nvram.as_ref().filter(|n| Path::new(&n.path).exists()) {
            let p = Path::new(&n.path);
            let (dir, file) = (
                p.parent().expect("a folder").to_string_lossy().into_owned(),
                p.file_name().expect("a file").to_string_lossy().into_owned(),
            );
            let bytes = std::fs::read(p).map_err(|e| VmError::Nvram(format!("{}: {e}", n.path)))?;
            let key = dst.upload_file(&dir, &file, &bytes, 0o600)?;
            made.files.push((dir, file, key));
            made.save(&pending)?;
        }
        for f in s.boot_files.iter().filter(|f| Path::new(f).starts_with(crate::BOOT_DIR)) {
            let p = Path::new(f);
            let (dir, file) = (
                p.parent().expect("a folder").to_string_lossy().into_owned(),
                p.file_name().expect("a file").to_string_lossy().into_owned(),
            );
            let bytes = std::fs::read(p).map_err(|e| VmError::Disk(format!("{f}: {e}")))?;
            let key = dst.upload_file(&dir, &file, &bytes, 0o644)?;
            made.files.push((dir, file, key));
            made.save(&pending)?;
        }
        at("migrate")?;
        if !req.live {
            // No guest code runs: QEMU only carries the disk, TPM and device state across.
            made.paused_source = Some(s.uuid.clone());
            src.start_paused(name)?;
        }
        let (migrate_uri, disks_uri) = data_uris(&req.to);
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
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            // The VM runs where it was; the destination gets back to what it had.
            if dst
                .list_all()
                .map(|l| l.iter().any(|l| l.uuid() == s.uuid && l.state == State::Running))
                .unwrap_or(false)
            {
                // The move itself completed: the VM runs there. Nothing is undone.
                made.forget(&pending);
                return Err(e);
            }
            let left = undo(src, &mut made, &pending, progress);
            if left.is_empty() {
                return Err(e);
            }
            let why = match e {
                MigrateError::Failed { why, .. } => why,
                other => other.to_string(),
            };
            return Err(MigrateError::LeftThere {
                vm: name.into(),
                why,
                left,
                record: Made::file(&pending, &s.uuid).display().to_string(),
            });
        }
    };
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
    made.forget(&pending);
    notes.push(format!("{name} is {:?} on the destination", there.state));
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
                if let Err(e) = crate::tuned::record(&dst, name, &t.here, &t.from) {
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
    // Only now: the source's copy goes (domain, volume, key, NVRAM, TPM state, snapshots).
    let mut removed = vec![];
    if vm::state(src, name)? == State::Shutoff {
        let del = vm::delete(src, name, false)?;
        removed.push(format!("domain {name}"));
        removed.extend(del.volumes.iter().map(|v| format!("volume {v}")));
        removed.push(format!("{} secret(s), its NVRAM and TPM state, {} snapshot(s)", del.secrets, del.snapshots));
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
            boot_id: crate::journal::boot_id(),
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
        assert!(!m.is_empty());
        m.forget(&dir);
        assert!(Made::orphans(&dir, "qemu+ssh://root@b/system").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
