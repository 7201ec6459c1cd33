//! Create, all or nothing, encrypted by default: the plan for this host (`phyllome xml`
//! too), what must not exist yet, then each object recorded in the create's claim the
//! moment it is made (`op::journal`), and undone by identity on any failure, Ctrl-C or
//! SIGTERM (`op::undo`); after a kill -9 the next command does it (`op::recover`).

use super::delete::recover;
use super::error::{Result, VmError};
use super::lifecycle::start_checked;
use crate::disk::{self, nvram::NvramError};
use crate::domxml;
use crate::host_facts;
use crate::host_files::{here_only, FileId, HostFiles, Owner};
use crate::media::files::check_files;
use crate::op::journal::Journal;
use crate::op::progress::{note, Progress, Report};
use crate::op::record::{self, Record};
use crate::op::{undo, Op};
use crate::paths::{self, boot_dir, INITRD_COPY, KERNEL_COPY};
use phyllome_libvirt::Libvirt;
use phyllome_model::build::{self, BuildError, DiskRef, Encryption, NetworkChoice, Plan, Request};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::AtomicBool;

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

/// The main disk of VM `name`: `NAME.qcow2` in `pool`.
pub fn disk_ref(name: &str, pool: &str, pool_path: &str, encryption: Encryption) -> DiskRef {
    let volume = format!("{name}.qcow2");
    DiskRef {
        pool: pool.to_string(),
        path: format!("{}/{volume}", pool_path.trim_end_matches('/')),
        volume,
        encryption,
    }
}

/// Validates and plans a VM on this host; changes nothing.
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
    let detected = crate::media::install::decide(&mut req, lv.is_local())?;
    for share in &spec.shares {
        let (dir, tag, writable) = crate::share::parse_spec(share)?;
        let s = crate::share::resolve(lv, &dir, tag.as_deref(), writable, spec.share_force)?;
        if req.shares.iter().any(|o| o.tag == s.tag) {
            return Err(crate::share::ShareError::Bad(format!(
                "two shares tagged {}: give each its own tag (HOSTDIR:TAG)",
                s.tag
            ))
            .into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ref_joins_pool_path() {
        let d = disk_ref("vm1", "phyllome", "/var/lib/x/", Encryption::Secret);
        assert_eq!(d.volume, "vm1.qcow2");
        assert_eq!(d.path, "/var/lib/x/vm1.qcow2");
        assert_eq!(d.encryption, Encryption::Secret);
    }
}
