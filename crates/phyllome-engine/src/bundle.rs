//! `phyllome export` and `phyllome import`: one VM as one file, to move it to
//! new hardware, re-tuned for the host it arrives on.
//!
//! A bundle is a tar stream of parts, in this order:
//! - `bundle.json`: the format version, the exporting host (virt type, CPU,
//!   libvirt/QEMU) and what that host chose for each device, so an import can
//!   say what changed and why;
//! - `manifest.toml`: the VM in Phyllome's terms (docs/manifest.md);
//! - `disk.qcow2`: the disk, LUKS-encrypted under a key made for this export
//!   (QEMU re-encrypts it: Phyllome never reads a disk's own key, see
//!   ARCHITECTURE.md, "Key custody"). Flattened: snapshots stay behind;
//! - `nvram.age`, `tpm.age`, `boot.age`: the UEFI variables, the swtpm state and
//!   the direct-boot kernel and initrd, age-encrypted (X25519) to a key of this export;
//! - `keys.age`, last: the disk key, the X25519 identity and the SHA-256 of every
//!   part before it, encrypted with age's scrypt recipient under the export
//!   passphrase. age authenticates it, so a wrong passphrase or a changed byte
//!   is refused, and the checksums it carries cannot be changed along with a part.
//!
//! No part holds plaintext guest data or a bare key. Import reads the whole
//! stream into a private staging folder, then decrypts `keys.age` and checks
//! every checksum before anything is made; then create's journal makes the VM
//! all or nothing.

use crate::disk::reencrypt::ReEncrypt;
use crate::errors::Classify;
use crate::op::journal::Journal;
use crate::op::progress::{note, Progress, Report};
use crate::op::record::{Operation, Record};
use crate::op::{undo, Op};
use crate::paths::STAGING_DIR;
use crate::retune::{changes, manifest_shares, plan_on, request_for, Change, SavedChoice, SourceHost};
use crate::share::ShareError;
use crate::vm::{self, VmError};
use age::secrecy::{ExposeSecret, SecretString};
use phyllome_libvirt::{Libvirt, State};
use phyllome_model::build::Choice;
use phyllome_model::Host;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The `format` of `bundle.json`.
pub const FORMAT: &str = "phyllome-bundle";
/// The bundle format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The largest small part (bundle.json, manifest, NVRAM, TPM state, keys) read into memory.
const SMALL_PART: u64 = 64 << 20;
/// scrypt's work factor for the export passphrase: 2^18 (256 MiB of memory,
/// under a second of CPU here), fixed rather than age's time-based choice, so a
/// bundle written on a fast host opens on a slow one, and an import's cost is
/// known. An import accepts at most 2^20 (1 GiB): the bound on what a bundle
/// can make this host do.
const SCRYPT_LOG_N: u8 = 18;
const MAX_SCRYPT_LOG_N: u8 = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    pub format: String,
    pub version: u32,
    /// The phyllome that wrote it.
    pub phyllome: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub name: String,
    pub source: SourceHost,
    /// What the exporting host chose for each item (`--explain` there).
    pub choices: Vec<SavedChoice>,
    /// The disk's size as the guest sees it, in bytes.
    pub disk_virtual_size: u64,
    /// The variable store's format (`qcow2` or `raw`), when there is one.
    #[serde(default)]
    pub nvram_format: Option<String>,
    /// The parts that follow, in order, before `keys.age`.
    pub parts: Vec<String>,
}

/// What `keys.age` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    /// The export key of `disk.qcow2` (what its LUKS header is unlocked with).
    disk_key: String,
    /// The age X25519 identity the other `.age` parts are encrypted to.
    identity: String,
    /// SHA-256 (hex) of every part before `keys.age`.
    sha256: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("this is not a Phyllome bundle: {0}")]
    NotABundle(String),
    #[error("bundle format version {0} is not one this phyllome reads (it reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("the bundle is truncated or incomplete: {0}; nothing was made")]
    Truncated(String),
    #[error("the bundle is damaged: {0}; nothing was made")]
    Damaged(String),
    #[error("the passphrase does not open this bundle; nothing was made")]
    WrongPassphrase,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    CannotHere(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("{path}: {why}")]
    Io { path: String, why: String },
}

impl Classify for BundleError {
    fn kind(&self) -> crate::errors::ErrorKind {
        use crate::errors::ErrorKind;
        match self {
            BundleError::Vm(v) => v.kind(),
            BundleError::Manifest(_)
            | BundleError::NotABundle(_)
            | BundleError::Version(_)
            | BundleError::Truncated(_)
            | BundleError::Damaged(_)
            | BundleError::WrongPassphrase => ErrorKind::InvalidInput,
            BundleError::Refused(_) => ErrorKind::Conflict,
            BundleError::CannotHere(_) => ErrorKind::Unsupported,
            BundleError::NoSpace(_) => ErrorKind::NoSpace,
            BundleError::Io { .. } => ErrorKind::Failed,
        }
    }
}

impl From<phyllome_libvirt::Error> for BundleError {
    fn from(e: phyllome_libvirt::Error) -> Self {
        BundleError::Vm(e.into())
    }
}

impl From<ShareError> for BundleError {
    fn from(e: ShareError) -> Self {
        BundleError::Vm(e.into())
    }
}

impl From<crate::host_files::NotHere> for BundleError {
    fn from(e: crate::host_files::NotHere) -> Self {
        BundleError::Vm(e.into())
    }
}

impl From<crate::op::StepError> for BundleError {
    fn from(e: crate::op::StepError) -> Self {
        BundleError::Vm(e.into())
    }
}

impl From<crate::disk::DiskError> for BundleError {
    fn from(e: crate::disk::DiskError) -> Self {
        BundleError::Vm(e.into())
    }
}

impl From<crate::op::lock::LockError> for BundleError {
    fn from(e: crate::op::lock::LockError) -> Self {
        BundleError::Vm(e.into())
    }
}

impl From<crate::op::journal::JournalError> for BundleError {
    fn from(e: crate::op::journal::JournalError) -> Self {
        BundleError::Vm(e.into())
    }
}

fn io(path: impl AsRef<Path>, e: std::io::Error) -> BundleError {
    BundleError::Io { path: path.as_ref().display().to_string(), why: e.to_string() }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What of this host an imported VM reaches, for a terminal: every host folder the bundle
/// shares with it, and its network (escaped: the folders come from the bundle).
pub fn render_reach(imported: &Imported) -> String {
    use crate::text::printable;
    let mut out = String::new();
    if imported.shares.is_empty() {
        out.push_str("host folders shared with it: none\n");
    }
    for sh in &imported.shares {
        out.push_str(&format!(
            "host folder shared with it: {} as {}, {}\n",
            printable(&sh.dir),
            printable(&sh.tag),
            if sh.readonly { "read-only" } else { "writable" }
        ));
    }
    out.push_str(&format!("network: {}\n", printable(&imported.network)));
    out
}

// ---------------------------------------------------------------------------
// Export.

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Exported {
    pub name: String,
    /// Bytes written.
    pub bytes: u64,
    /// Parts and their sizes, in order.
    pub parts: Vec<PartInfo>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartInfo {
    pub name: String,
    pub size: u64,
}

/// A writer that counts and hashes what passes, and reports progress.
struct Counting<'a, W: Write> {
    inner: W,
    written: u64,
    total: u64,
    report: Report<'a>,
    last: std::time::Instant,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.last.elapsed() > Duration::from_millis(200) {
            (self.report)(Progress::Bytes { done: self.written, total: self.total });
            self.last = std::time::Instant::now();
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn age_encrypt(recipient: &age::x25519::Recipient, plain: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let enc = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
        .map_err(|e| e.to_string())?;
    let mut out = vec![];
    let mut w = enc.wrap_output(&mut out).map_err(|e| e.to_string())?;
    w.write_all(plain).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// A tar of a folder's regular files (not libvirt's `.lock`), in memory (the swtpm state: kilobytes).
fn tar_files(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(vec![]);
    let mut names: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        if !e.metadata()?.is_file() || e.file_name() == ".lock" {
            continue;
        }
        let data = std::fs::read(e.path())?;
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, e.file_name(), data.as_slice())?;
    }
    b.into_inner()
}

fn append_part<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    reader: impl Read,
    size: u64,
    sums: &mut BTreeMap<String, String>,
) -> std::io::Result<()> {
    struct Hashing<R> {
        inner: R,
        hash: Sha256,
    }
    impl<R: Read> Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_cksum();
    let mut r = Hashing { inner: reader, hash: Sha256::new() };
    tar.append_data(&mut h, name, &mut r)?;
    sums.insert(name.to_string(), hex(&r.hash.finalize()));
    Ok(())
}

/// Whether `name` can be exported now, as [`export`] would refuse it, without
/// doing anything: it must exist, be shut off and have one disk, a pool volume
/// keyed by Phyllome's secret (not a typed passphrase). For front ends that
/// answer before the export starts (the web API's download ticket).
pub fn check_exportable(lv: &Libvirt, name: &str) -> std::result::Result<(), BundleError> {
    crate::op::lock::check(lv, name).map_err(VmError::from)?;
    export_source(lv, name).map(|_| ())
}

/// The VM's definition, the index of its one disk and that disk's pool and
/// volume, or why it cannot be exported.
type Source = (crate::domxml::DomainSummary, usize, String, String);

fn export_source(lv: &Libvirt, name: &str) -> std::result::Result<Source, BundleError> {
    crate::host_files::here_only(
        lv,
        "export (it copies the VM's disk, UEFI variables, TPM state and boot files here)",
    )?;
    match vm::state(lv, name)? {
        State::Shutoff => {}
        _ => {
            return Err(BundleError::Refused(format!(
                "{name} is running: a bundle holds one consistent state, so export a stopped VM (phyllome stop {name})"
            )))
        }
    }
    let xml = lv.inactive_xml(name)?;
    let s = crate::domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    vm::refuse_changed(lv, &s, "export it: a bundle would hold only the image over its encrypted volume")?;
    if s.encryption.as_deref() == Some("prompt") {
        return Err(BundleError::CannotHere(format!(
            "{name}'s disk key is a passphrase typed at each start: exporting it is not supported yet"
        )));
    }
    let disks: Vec<usize> = (0..s.disks.len()).filter(|&i| s.disks[i].device == "disk").collect();
    let [d] = disks.as_slice() else {
        return Err(BundleError::CannotHere(format!("{name} has {} disks: a bundle holds VMs with one", disks.len())));
    };
    let (Some(pool), Some(volume)) = (s.disks[*d].pool.clone(), s.disks[*d].volume.clone()) else {
        return Err(BundleError::CannotHere(format!("{name}'s disk is not a pool volume")));
    };
    Ok((s, *d, pool, volume))
}

/// Exports the stopped VM `name` into `out`, with the passphrase that will
/// open the bundle. Constant memory: the disk streams from a staging copy.
pub fn export(
    lv: &Libvirt,
    name: &str,
    passphrase: &[u8],
    out: &mut dyn Write,
    progress: Report<'_>,
) -> std::result::Result<Exported, BundleError> {
    vm::recover(lv);
    if passphrase.is_empty() {
        return Err(VmError::EmptyPassphrase.into());
    }
    let _held = crate::op::lock::take(lv, name, Operation::Export)?;
    let (s, disk, pool, volume) = export_source(lv, name)?;
    let d = &s.disks[disk];
    let vol = lv.volume_info(&pool, &volume)?.ok_or_else(|| VmError::NoVolume(format!("{pool}/{volume}")))?;
    let pool_dir = lv.pool_path(&pool)?.ok_or_else(|| VmError::NoPool(pool.clone()))?;
    let (manifest, mut notes) = crate::manifest::of_vm(lv, name)?;
    let (host, _) = crate::host_facts::gather(lv, true).map_err(VmError::from)?;
    let boot = manifest.boot.as_ref().map(|b| ("/bundle/vmlinuz", b.initrd.as_ref().map(|_| "/bundle/initrd.img")));
    let spec = request_for(&manifest, vol.capacity, boot);
    let choices = plan_on(name, &spec, &host, manifest_shares(&manifest))
        .map(|p| p.choices.iter().map(SavedChoice::from).collect())
        .unwrap_or_default();

    // The staging copy needs up to the disk's allocation in its pool.
    if let Ok(Some(free)) = lv.pool_free(&pool) {
        if free < vol.allocation + (256 << 20) {
            return Err(BundleError::NoSpace(format!(
                "pool {pool} has {} MiB free: the export stages a re-encrypted copy of the disk ({} MiB written)",
                free >> 20,
                vol.allocation >> 20
            )));
        }
    }
    let staging = format!("{pool_dir}/.phyllome-export-{name}.qcow2");
    // The journal: a claim in a name no VM can have, with the paused source,
    // the temporary secret and the staging copy recorded by identity.
    let claim = format!("+export+{name}");
    let mut entry = Record::new(lv, Operation::Export, &claim);
    entry.made.pool = Some(pool.clone());
    entry.made.volume = Some(format!(".phyllome-export-{name}.qcow2"));
    entry.made.volume_path = Some(staging.clone());
    let journal = Journal::open();
    journal.begin(&entry)?;
    let op = Op::begin();
    let interrupted = op.flag();
    let at = |st: &'static str| -> std::result::Result<(), BundleError> { Ok(op.at(progress, st)?) };
    let result = (|| -> std::result::Result<Exported, BundleError> {
        if Path::new(&staging).exists() || lv.volume_secret(&staging)?.is_some() {
            return Err(BundleError::Refused(format!(
                "{staging} (or its key) exists: another export of {name} is under way, or left it"
            )));
        }
        at("disk")?;
        let key = crate::disk::image::random_key().map_err(|e| VmError::Disk(format!("no randomness: {e}")))?;
        let secret = lv.define_volume_secret(&staging, &format!("phyllome: export key of VM {name}"), false, &key)?;
        entry.made.secret_uuid = Some(secret.clone());
        journal.record(&entry)?;
        note(
            progress,
            &format!("re-encrypting {name}'s disk under the export key (QEMU copies it with {name} paused)"),
        );
        let copy = ReEncrypt { vm: name, vm_uuid: &s.uuid, target: &d.target, dest: &staging, secret: &secret };
        copy.run(lv, &journal, &mut entry, interrupted, progress)?;
        // The key is now in the bundle's hands only; libvirt need not keep it.
        let _ = lv.undefine_secret_uuid(&secret);
        entry.made.secret_uuid = None;
        journal.record(&entry)?;

        at("parts")?;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let enc = |what: &str, bytes: &[u8]| {
            age_encrypt(&recipient, bytes).map_err(|e| BundleError::Io { path: what.into(), why: e })
        };
        let nvram = match &s.nvram {
            Some(n) if Path::new(&n.path).exists() => {
                Some((enc("nvram", &std::fs::read(&n.path).map_err(|e| io(&n.path, e))?)?, n.format.clone()))
            }
            _ => None,
        };
        let tpm_dir = crate::paths::tpm_dir(&s.uuid);
        let tpm =
            if tpm_dir.is_dir() { Some(enc("tpm", &tar_files(&tpm_dir).map_err(|e| io(&tpm_dir, e))?)?) } else { None };
        let boot_files: Vec<&String> =
            s.boot_files.iter().filter(|f| Path::new(f).starts_with(crate::paths::BOOT_DIR)).collect();
        let boot = if boot_files.is_empty() {
            None
        } else {
            let mut b = tar::Builder::new(vec![]);
            for f in &boot_files {
                let p = Path::new(f);
                let mut h = tar::Header::new_gnu();
                let data = std::fs::read(p).map_err(|e| io(p, e))?;
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, p.file_name().expect("a file"), data.as_slice()).map_err(|e| io(p, e))?;
            }
            Some(enc("boot", &b.into_inner().map_err(|e| io("boot", e))?)?)
        };
        let disk_len = std::fs::metadata(&staging).map_err(|e| io(&staging, e))?.len();
        let mut parts = vec!["manifest.toml".to_string(), "disk.qcow2".to_string()];
        for (p, present) in [("nvram.age", nvram.is_some()), ("tpm.age", tpm.is_some()), ("boot.age", boot.is_some())] {
            if present {
                parts.push(p.into());
            }
        }
        let info = BundleInfo {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            phyllome: crate::VERSION.into(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            name: name.into(),
            source: SourceHost::of(&host),
            choices,
            disk_virtual_size: vol.capacity,
            nvram_format: nvram.as_ref().map(|(_, f)| f.clone()),
            parts,
        };
        let info_json = serde_json::to_vec_pretty(&info).expect("serializes");
        let manifest_text = manifest.to_toml(&notes);

        at("write")?;
        let total = disk_len + (4 << 20);
        let mut w = Counting { inner: out, written: 0, total, report: progress, last: std::time::Instant::now() };
        let mut sums = BTreeMap::new();
        let mut sizes = vec![];
        {
            let mut tar = tar::Builder::new(&mut w);
            let werr = |e: std::io::Error| io("the bundle", e);
            append_part(&mut tar, "bundle.json", info_json.as_slice(), info_json.len() as u64, &mut sums)
                .map_err(werr)?;
            sizes.push(PartInfo { name: "bundle.json".into(), size: info_json.len() as u64 });
            append_part(&mut tar, "manifest.toml", manifest_text.as_bytes(), manifest_text.len() as u64, &mut sums)
                .map_err(werr)?;
            sizes.push(PartInfo { name: "manifest.toml".into(), size: manifest_text.len() as u64 });
            struct Stop<'a, R> {
                inner: R,
                flag: &'a AtomicBool,
            }
            impl<R: Read> Read for Stop<'_, R> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    if self.flag.load(Ordering::Relaxed) {
                        return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
                    }
                    self.inner.read(buf)
                }
            }
            let f = std::fs::File::open(&staging).map_err(|e| io(&staging, e))?;
            let disk = Stop { inner: std::io::BufReader::with_capacity(1 << 20, f), flag: interrupted };
            append_part(&mut tar, "disk.qcow2", disk, disk_len, &mut sums).map_err(|e| {
                if interrupted.load(Ordering::Relaxed) {
                    BundleError::Vm(VmError::Interrupted)
                } else {
                    werr(e)
                }
            })?;
            sizes.push(PartInfo { name: "disk.qcow2".into(), size: disk_len });
            for (part, bytes) in
                [("nvram.age", nvram.as_ref().map(|(b, _)| b)), ("tpm.age", tpm.as_ref()), ("boot.age", boot.as_ref())]
            {
                if let Some(b) = bytes {
                    append_part(&mut tar, part, b.as_slice(), b.len() as u64, &mut sums).map_err(werr)?;
                    sizes.push(PartInfo { name: part.into(), size: b.len() as u64 });
                }
            }
            at("keys")?;
            let keys = Keys {
                disk_key: String::from_utf8(key.clone()).expect("hex digits"),
                identity: identity.to_string().expose_secret().to_string(),
                sha256: sums.clone(),
            };
            let plain = serde_json::to_vec(&keys).expect("serializes");
            let sealed = {
                let mut recipient = age::scrypt::Recipient::new(SecretString::from(
                    String::from_utf8(passphrase.to_vec())
                        .map_err(|_| BundleError::Refused("the passphrase is not UTF-8 text".into()))?,
                ));
                recipient.set_work_factor(SCRYPT_LOG_N);
                let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| BundleError::Io { path: "keys.age".into(), why: e.to_string() })?;
                let mut sealed = vec![];
                let mut wr = enc.wrap_output(&mut sealed).map_err(werr)?;
                wr.write_all(&plain).map_err(werr)?;
                wr.finish().map_err(werr)?;
                sealed
            };
            drop(plain);
            append_part(&mut tar, "keys.age", sealed.as_slice(), sealed.len() as u64, &mut BTreeMap::new())
                .map_err(werr)?;
            sizes.push(PartInfo { name: "keys.age".into(), size: sealed.len() as u64 });
            tar.finish().map_err(werr)?;
        }
        w.flush().map_err(|e| io("the bundle", e))?;
        progress(Progress::Bytes { done: w.written, total: w.written });
        at("finish")?;
        notes.push(
            "snapshots are not in the bundle: it holds the VM's current state (flattened), and they stay here".into(),
        );
        Ok(Exported { name: name.into(), bytes: w.written, parts: sizes, notes })
    })();
    drop(op);
    // The staging copy and the temporary key go, whatever happened (by identity).
    undo::made_objects(lv, &claim, &entry.made);
    journal.finish(&claim);
    result
}

// ---------------------------------------------------------------------------
// Import.

/// What the caller asks of an import.
pub struct ImportOptions<'a> {
    /// The VM's name here (default: the bundle's).
    pub name: Option<String>,
    pub passphrase: &'a [u8],
    /// Read and check everything, plan for this host, make nothing.
    pub dry_run: bool,
    /// Plan against this recorded host instead of this one (only with `dry_run`).
    pub host: Option<Host>,
    /// Share the folders the bundle names even where `share add` would refuse them
    /// without `--force` (the host's own folders, a folder holding a VM's disk).
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Imported {
    pub name: String,
    pub os: String,
    pub dry_run: bool,
    pub source: SourceHost,
    /// The host it was planned for (this one, or the recorded one of `--host-facts`).
    pub here: SourceHost,
    /// What this host decides differently from the exporting one, and why.
    pub changes: Vec<Change>,
    /// Every choice for this host (`--explain`).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub choices: Vec<Choice>,
    /// What of this host the VM reaches: the host folders shared with it (from the bundle's
    /// manifest, checked as `share add` checks them) and its network (`none`, `user` or a
    /// libvirt network's name).
    pub shares: Vec<crate::share::ShareRow>,
    pub network: String,
    pub warnings: Vec<String>,
    /// The domain XML this host gets (with `--dry-run`).
    pub xml: Option<String>,
}

/// A reader that counts what passes (for progress over a stream of unknown length).
struct Tally<'a, R> {
    inner: R,
    read: u64,
    total: u64,
    report: Report<'a>,
    last: std::time::Instant,
    interrupted: &'a AtomicBool,
}

impl<R: Read> Read for Tally<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.last.elapsed() > Duration::from_millis(200) {
            (self.report)(Progress::Bytes { done: self.read, total: self.total });
            self.last = std::time::Instant::now();
        }
        Ok(n)
    }
}

/// A private staging folder, removed with everything in it when dropped.
struct Staging(PathBuf);

impl Staging {
    fn new() -> std::result::Result<Staging, BundleError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::create_dir_all(STAGING_DIR).map_err(|e| io(STAGING_DIR, e))?;
        // PID-N: one process (a server) may run several imports.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(STAGING_DIR).join(format!("{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| io(&dir, e))?;
        let staging = Staging(dir);
        // Its boot, with the pid in its name: whoever finds it after this process is gone removes it.
        let boot = staging.0.join(STAGING_BOOT);
        std::fs::write(&boot, crate::op::record::boot_id()).map_err(|e| io(&boot, e))?;
        Ok(staging)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file in a staging folder that names the boot of the import that made it (whoever finds
/// the folder after that import is gone removes it: `op::recover`).
const STAGING_BOOT: &str = crate::op::recover::STAGING_BOOT;

fn damaged_or_truncated(what: &str, e: std::io::Error) -> BundleError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(format!("{what} ends early")),
        std::io::ErrorKind::Interrupted => BundleError::Vm(VmError::Interrupted),
        _ => BundleError::Damaged(format!("{what}: {e}")),
    }
}

fn read_small(r: &mut impl Read, what: &str, size: u64) -> std::result::Result<Vec<u8>, BundleError> {
    if size > SMALL_PART {
        return Err(BundleError::Damaged(format!("{what} is {size} bytes, more than a bundle's {what} can be")));
    }
    let mut v = Vec::with_capacity(size as usize);
    r.take(size).read_to_end(&mut v).map_err(|e| damaged_or_truncated(what, e))?;
    if (v.len() as u64) < size {
        return Err(BundleError::Truncated(format!("{what} ends early")));
    }
    Ok(v)
}

/// What is wrong with an age part of the bundle, in the bundle's terms (age's own
/// messages speak of age files and suggest upgrading age).
fn age_damage(what: &str, e: &age::DecryptError) -> BundleError {
    use age::DecryptError as D;
    BundleError::Damaged(match e {
        D::InvalidHeader | D::UnknownFormat => format!("{what} is not an encrypted part as an export writes it"),
        D::InvalidMac => format!("{what}'s header was changed"),
        D::DecryptionFailed | D::KeyDecryptionFailed => format!("{what} was changed or cut, and does not decrypt"),
        D::NoMatchingKeys => format!("{what} is not encrypted to this bundle's keys"),
        D::ExcessiveWork { required, .. } => {
            format!("{what} asks for scrypt work 2^{required}, more than an import does (at most 2^{MAX_SCRYPT_LOG_N})")
        }
        D::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => format!("{what} ends early"),
        _ => format!("{what} cannot be decrypted"),
    })
}

/// The same for an error while reading the decrypted stream (a changed or cut body).
fn age_read_damage(what: &str, e: &std::io::Error) -> BundleError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Damaged(format!("{what} ends early")),
        _ => BundleError::Damaged(format!("{what} was changed or cut, and does not decrypt")),
    }
}

fn age_decrypt(
    identity: &age::x25519::Identity,
    bytes: &[u8],
    what: &str,
) -> std::result::Result<Vec<u8>, BundleError> {
    let dec = age::Decryptor::new(bytes).map_err(|e| age_damage(what, &e))?;
    let mut r = dec.decrypt(std::iter::once(identity as &dyn age::Identity)).map_err(|e| age_damage(what, &e))?;
    let mut out = vec![];
    r.read_to_end(&mut out).map_err(|e| age_read_damage(what, &e))?;
    Ok(out)
}

/// The files of a tar held in memory: (name, bytes); plain names only.
fn untar_files(bytes: &[u8], what: &str) -> std::result::Result<Vec<(String, Vec<u8>)>, BundleError> {
    let mut out = vec![];
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().map_err(|e| BundleError::Damaged(format!("{what}: {e}")))? {
        let mut e = e.map_err(|e| BundleError::Damaged(format!("{what}: {e}")))?;
        let name = e.path().map_err(|e| BundleError::Damaged(format!("{what}: {e}")))?.to_string_lossy().into_owned();
        if name.contains('/') || name.starts_with('.') || name.is_empty() {
            return Err(BundleError::Damaged(format!("{what}: unexpected file name {name:?}")));
        }
        let mut v = vec![];
        e.read_to_end(&mut v).map_err(|e| BundleError::Damaged(format!("{what}: {e}")))?;
        out.push((name, v));
    }
    Ok(out)
}

/// Imports a bundle read from `input` (`total`: its length when known, for progress).
pub fn import(
    lv: &Libvirt,
    input: &mut dyn Read,
    total: u64,
    opts: &ImportOptions<'_>,
    progress: Report<'_>,
) -> std::result::Result<Imported, BundleError> {
    crate::host_files::here_only(
        lv,
        "import (the bundle is staged here and its disk and state move into this host's folders)",
    )
    .map_err(VmError::from)?;
    vm::recover(lv);
    if opts.passphrase.is_empty() {
        return Err(VmError::EmptyPassphrase.into());
    }
    let passphrase = String::from_utf8(opts.passphrase.to_vec())
        .map_err(|_| BundleError::WrongPassphrase)
        .map(SecretString::from)?;
    let op = Op::begin();
    import_inner(lv, input, total, opts, passphrase, op.flag(), progress)
}

fn import_inner(
    lv: &Libvirt,
    input: &mut dyn Read,
    total: u64,
    opts: &ImportOptions<'_>,
    passphrase: SecretString,
    interrupted: &AtomicBool,
    progress: Report<'_>,
) -> std::result::Result<Imported, BundleError> {
    progress(Progress::Step { step: "read" });
    let tally = Tally { inner: input, read: 0, total, report: progress, last: std::time::Instant::now(), interrupted };
    let mut archive = tar::Archive::new(tally);
    let mut entries = archive.entries().map_err(|e| damaged_or_truncated("the bundle", e))?;
    let mut next = |want: &str| -> std::result::Result<tar::Entry<'_, _>, BundleError> {
        match entries.next() {
            None => Err(BundleError::Truncated(format!("{want} is missing"))),
            Some(Err(e)) => Err(damaged_or_truncated("the bundle", e)),
            Some(Ok(e)) => {
                let name = e.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                if name != want {
                    return Err(BundleError::Damaged(format!("found {name:?} where {want} belongs")));
                }
                Ok(e)
            }
        }
    };
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let hash_small = |bytes: &[u8]| hex(&Sha256::digest(bytes));

    // bundle.json: the format first, so a newer one is refused as such.
    let mut e = next("bundle.json").map_err(|e| match e {
        BundleError::Damaged(_) => BundleError::NotABundle("it does not start with bundle.json".into()),
        other => other,
    })?;
    let size = e.size();
    let info_bytes = read_small(&mut e, "bundle.json", size)?;
    drop(e);
    sums.insert("bundle.json".into(), hash_small(&info_bytes));
    let v: serde_json::Value =
        serde_json::from_slice(&info_bytes).map_err(|e| BundleError::NotABundle(format!("bundle.json: {e}")))?;
    if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(BundleError::NotABundle("bundle.json names another format".into()));
    }
    match v.get("version").and_then(|n| n.as_u64()) {
        Some(n) if n == FORMAT_VERSION as u64 => {}
        Some(n) => return Err(BundleError::Version(n as u32)),
        None => return Err(BundleError::NotABundle("bundle.json has no version".into())),
    }
    let info: BundleInfo = serde_json::from_value(v).map_err(|e| BundleError::Damaged(format!("bundle.json: {e}")))?;
    let expected = ["manifest.toml", "disk.qcow2"];
    if info.parts.len() < 2 || info.parts[..2] != expected {
        return Err(BundleError::Damaged("bundle.json lists no manifest and disk".into()));
    }

    let mut e = next("manifest.toml")?;
    let size = e.size();
    let manifest_bytes = read_small(&mut e, "manifest.toml", size)?;
    drop(e);
    sums.insert("manifest.toml".into(), hash_small(&manifest_bytes));
    let manifest_text = String::from_utf8(manifest_bytes)
        .map_err(|_| BundleError::Damaged("manifest.toml is not UTF-8 text".into()))?;
    let manifest = crate::manifest::Manifest::parse(&manifest_text, "the bundle's manifest.toml")?;
    let name = opts.name.clone().unwrap_or_else(|| manifest.name.clone());
    phyllome_model::input::validate_name(&name).map_err(|e| VmError::Build(e.into()))?;

    // Refusals this host can tell now, before reading the disk: the name, and whether it can run the VM at all.
    let host = match &opts.host {
        Some(h) => h.clone(),
        None => crate::host_facts::gather(lv, true).map_err(VmError::from)?.0,
    };
    if opts.host.is_none() && lv.exists(&name)? {
        return Err(VmError::NameBusy(name).into());
    }
    let staging = if opts.dry_run { None } else { Some(Staging::new()?) };
    if let (Some(s), true) = (&staging, total > 0) {
        // The parts are staged first: refuse now rather than fill the disk half way.
        if let Ok(free) = fs4::available_space(&s.0) {
            if free < total + (64 << 20) {
                return Err(BundleError::NoSpace(format!(
                    "{STAGING_DIR} has {} MiB free: importing this bundle needs {} MiB there",
                    free >> 20,
                    (total >> 20) + 64
                )));
            }
        }
    }
    let boot_paths = staging.as_ref().map(|s| (s.0.join("vmlinuz"), s.0.join("initrd.img")));
    let boot = manifest.boot.as_ref().map(|b| {
        let (k, i) = boot_paths.clone().unwrap_or_else(|| ("/bundle/vmlinuz".into(), "/bundle/initrd.img".into()));
        (k.to_string_lossy().into_owned(), b.initrd.as_ref().map(|_| i.to_string_lossy().into_owned()))
    });
    let spec = request_for(&manifest, info.disk_virtual_size, boot.as_ref().map(|(k, i)| (k.as_str(), i.as_deref())));
    let mut warnings = vec![];
    // Shares: whoever made the bundle chose them, not this host's owner. The folder must exist
    // here (one that does not is left out, and said) and pass `share add`'s guards.
    let mut spec = spec;
    let mut shares = vec![];
    for sh in std::mem::take(&mut spec.shares) {
        let (dir, tag, writable) = crate::share::parse_spec(&sh)?;
        let from_bundle = |e: ShareError| match e {
            ShareError::Bad(why) => ShareError::Bad(format!("the bundle shares {dir} with the VM: {why}")),
            e => e,
        };
        let share = if opts.host.is_some() {
            // A recorded host: its folders cannot be looked at from here; the guards still apply.
            if !opts.force {
                crate::share::guard(Path::new(&dir), &[]).map_err(from_bundle)?;
            }
            let tag = tag.clone().unwrap_or_else(|| crate::share::default_tag(Path::new(&dir)));
            phyllome_model::domain::Share { dir: dir.clone(), tag, readonly: !writable }
        } else if Path::new(&dir).is_dir() {
            crate::share::resolve(lv, &dir, tag.as_deref(), writable, opts.force).map_err(from_bundle)?
        } else {
            warnings.push(format!("shared folder {dir} does not exist on this host: left out (phyllome share add)"));
            continue;
        };
        shares.push(share);
        spec.shares.push(sh);
    }
    spec.share_force = opts.force;
    let plan = plan_on(&name, &spec, &host, shares.clone())?;
    let shares: Vec<crate::share::ShareRow> =
        shares.into_iter().map(|s| crate::share::ShareRow { tag: s.tag, dir: s.dir, readonly: s.readonly }).collect();
    if let Some(i) = &manifest.media.iso {
        warnings.push(format!("install medium {i} is not attached: the imported VM is installed"));
    }

    // The disk and the encrypted parts: to the staging folder (or only hashed, in a dry run).
    let mut staged: BTreeMap<String, PathBuf> = BTreeMap::new();
    for part in info.parts.iter().skip(1) {
        if !matches!(part.as_str(), "disk.qcow2" | "nvram.age" | "tpm.age" | "boot.age") {
            return Err(BundleError::Damaged(format!("unknown part {part:?}")));
        }
        progress(Progress::Step { step: if part == "disk.qcow2" { "disk" } else { "parts" } });
        let mut e = next(part)?;
        let size = e.size();
        let mut hash = Sha256::new();
        let mut sink: Box<dyn Write> = match &staging {
            Some(s) => {
                use std::os::unix::fs::OpenOptionsExt;
                let p = s.0.join(part);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .map_err(|e| io(&p, e))?;
                staged.insert(part.clone(), p);
                Box::new(std::io::BufWriter::with_capacity(1 << 20, f))
            }
            None => Box::new(std::io::sink()),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = e.read(&mut buf).map_err(|x| damaged_or_truncated(part, x))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            sink.write_all(&buf[..n]).map_err(|x| io(part, x))?;
            done += n as u64;
        }
        sink.flush().map_err(|x| io(part, x))?;
        drop(sink);
        if done < size {
            return Err(BundleError::Truncated(format!("{part} ends early")));
        }
        sums.insert(part.clone(), hex(&hash.finalize()));
    }
    progress(Progress::Step { step: "verify" });
    let mut e = next("keys.age")?;
    let size = e.size();
    let sealed = read_small(&mut e, "keys.age", size)?;
    drop(e);
    let keys: Keys = {
        let dec = age::Decryptor::new(sealed.as_slice()).map_err(|e| age_damage("keys.age", &e))?;
        if !dec.is_scrypt() {
            return Err(BundleError::Damaged("keys.age is not sealed with a passphrase".into()));
        }
        let mut id = age::scrypt::Identity::new(passphrase);
        id.set_max_work_factor(MAX_SCRYPT_LOG_N);
        let mut r = dec.decrypt(std::iter::once(&id as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => BundleError::WrongPassphrase,
            other => age_damage("keys.age", &other),
        })?;
        let mut plain = vec![];
        r.read_to_end(&mut plain).map_err(|e| age_read_damage("keys.age", &e))?;
        serde_json::from_slice(&plain)
            .map_err(|_| BundleError::Damaged("keys.age does not hold the keys an export seals".into()))?
    };
    let listed: Vec<&str> = std::iter::once("bundle.json").chain(info.parts.iter().map(String::as_str)).collect();
    if keys.sha256.keys().map(String::as_str).collect::<Vec<_>>() != {
        let mut l = listed.clone();
        l.sort();
        l
    } {
        return Err(BundleError::Damaged("the sealed checksums name other parts than the bundle holds".into()));
    }
    for part in &listed {
        if keys.sha256.get(*part) != sums.get(*part) {
            return Err(BundleError::Damaged(format!("{part} does not match its checksum")));
        }
    }
    let identity: age::x25519::Identity =
        keys.identity.parse().map_err(|_| BundleError::Damaged("keys.age holds no age identity".into()))?;
    note(progress, "every part matches its sealed checksum");

    let changes = changes(&info.choices, &plan.choices);
    warnings.extend(plan.warnings.iter().cloned());
    let result = |xml: Option<String>, warnings: Vec<String>| Imported {
        name: name.clone(),
        os: manifest.os.clone(),
        dry_run: opts.dry_run,
        source: info.source.clone(),
        here: SourceHost::of(&host),
        changes: changes.clone(),
        choices: plan.choices.clone(),
        shares: shares.clone(),
        network: spec.network.clone(),
        warnings,
        xml,
    };
    let Some(staging) = staging else {
        return Ok(result(Some(plan.domain.to_xml()), warnings));
    };

    // Decrypt the small parts, then create under the journal, adopting the disk and its key.
    let read = |part: &str| -> std::result::Result<Option<Vec<u8>>, BundleError> {
        match staged.get(part) {
            Some(p) => {
                let b = std::fs::read(p).map_err(|e| io(p, e))?;
                Ok(Some(age_decrypt(&identity, &b, part)?))
            }
            None => Ok(None),
        }
    };
    if let Some(b) = read("boot.age")? {
        for (file, bytes) in untar_files(&b, "boot.age")? {
            if !matches!(file.as_str(), "vmlinuz" | "initrd.img") {
                return Err(BundleError::Damaged(format!("boot.age: unexpected file {file:?}")));
            }
            let p = staging.0.join(&file);
            std::fs::write(&p, bytes).map_err(|e| io(&p, e))?;
        }
    }
    let nvram = read("nvram.age")?;
    let nvram = match (nvram, &plan.domain.firmware) {
        (Some(bytes), phyllome_model::domain::Firmware::Efi { nvram: store, .. }) => {
            let want = if store.is_some() { "qcow2" } else { "raw" };
            let have = info.nvram_format.as_deref().unwrap_or("raw");
            if want == have {
                Some(bytes)
            } else {
                Some(convert_nvram(&staging.0, &bytes, have, want)?)
            }
        }
        (Some(_), _) => {
            warnings.push("the UEFI variable store is left out: this host boots the VM with BIOS".into());
            None
        }
        (None, _) => None,
    };
    let tpm = match read("tpm.age")? {
        Some(b) => untar_files(&b, "tpm.age")?,
        None => vec![],
    };
    let adopt = vm::Adopt {
        disk: staged.get("disk.qcow2").cloned().expect("always staged"),
        key: keys.disk_key.into_bytes(),
        nvram,
        tpm,
    };
    let created = vm::create_with(lv, &name, &spec, None, false, Some(&adopt), progress)?;
    if manifest.autostart {
        // Part of the VM's desired state: it comes up when this host boots, as it did on the other.
        if let Err(e) = lv.set_autostart(&name, true) {
            warnings.push(format!("autostart could not be turned on: {}", e.message));
        }
    }
    for w in created.warnings {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    drop(staging);
    Ok(result(None, warnings))
}

/// Converts a variable store between raw and qcow2 (through files in the private staging folder).
fn convert_nvram(dir: &Path, bytes: &[u8], from: &str, to: &str) -> std::result::Result<Vec<u8>, BundleError> {
    let (a, b) = (dir.join("nvram.in"), dir.join("nvram.out"));
    std::fs::write(&a, bytes).map_err(|e| io(&a, e))?;
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", from, "-O", to])
        .arg(&a)
        .arg(&b)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| io("qemu-img", e))?;
    if !out.status.success() {
        return Err(BundleError::Io {
            path: "the UEFI variable store".into(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let v = std::fs::read(&b).map_err(|e| io(&b, e))?;
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    Ok(v)
}
