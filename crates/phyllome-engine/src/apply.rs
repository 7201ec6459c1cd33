//! `phyllome diff` and `phyllome apply`: a host's VMs as manifests (docs/manifest.md).
//!
//! - Pure: [`diff`] compares what a manifest asks with what a VM is (its own manifest, with
//!   the sizes it has now: [`observe`]) and says what would change, or why it cannot change
//!   in place; [`edit_definition`] writes new sizes into a definition.
//! - I/O, in two phases so a refusal changes nothing for any VM: [`load`] reads a FILE or DIR,
//!   [`plan`] reads libvirt and checks every manifest and every change (sizes against the host,
//!   shares, what a create needs) before anything is done; [`apply`] then acts.
//! - `--prune` removes only VMs whose Phyllome metadata says apply made them from this same
//!   FILE or DIR (`<phyllome:applied from='/abs/path'/>`), never another VM of the host.

use crate::domxml::{self, DomainSummary};
use crate::errors::{Classify, ErrorKind};
use crate::manifest::{self, Manifest, ManifestError, ShareEntry};
use crate::op::progress::{note, Report};
use crate::vm::{self, VmError};
use phyllome_libvirt::{Libvirt, State};
use phyllome_model::domain::{Asked, METADATA_NS};
use phyllome_model::input::parse_size;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What apply does to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Change,
    Unchanged,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Change => "change",
            Action::Unchanged => "unchanged",
            Action::Remove => "remove",
        }
    }
}

/// One field that differs, as the manifest and the VM write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `cpus`, `memory`, `disk_size`, `autostart` or `shares`.
    pub field: &'static str,
    pub from: String,
    pub to: String,
    /// The VM runs and this change is made only to a stopped VM: it waits ("stop NAME and apply again").
    pub needs_stop: bool,
}

/// What apply would do to one VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmDiff {
    pub name: String,
    pub action: Action,
    pub changes: Vec<Change>,
    /// The manifest that names it (none for a VM to remove).
    pub file: Option<String>,
    /// It runs (or is paused): its changes that need it stopped wait, and a VM to remove stays.
    pub running: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A VM's check or change failed; `file` is the manifest naming it.
    #[error("{file}: {source}")]
    InFile { file: String, source: Box<VmError> },
    #[error(transparent)]
    Vm(#[from] VmError),
}

impl Classify for ApplyError {
    fn kind(&self) -> ErrorKind {
        match self {
            ApplyError::Manifest(e) => e.kind(),
            ApplyError::InFile { source, .. } => source.kind(),
            ApplyError::Vm(e) => e.kind(),
        }
    }
}

impl From<phyllome_libvirt::Error> for ApplyError {
    fn from(e: phyllome_libvirt::Error) -> Self {
        ApplyError::Vm(e.into())
    }
}

/// Sizes as people write them: the largest unit that holds it whole.
pub fn human_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes > 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// The VM's manifest with the sizes it has now: vCPUs and memory of its definition, its disk's
/// capacity. The size it was asked with is kept where it still holds, so `512M` stays `512M`.
pub fn observe(m: &mut Manifest, s: &DomainSummary, disk_bytes: Option<u64>) {
    let keep = |asked: &Option<String>, bytes: u64| match asked {
        Some(a) if parse_size(a).ok() == Some(bytes) => a.clone(),
        _ => human_size(bytes),
    };
    m.cpus = Some(s.vcpus);
    m.memory = Some(keep(&m.memory, s.memory_mib << 20));
    m.disk_size = disk_bytes.map(|b| keep(&m.disk_size, b));
}

fn share_text(shares: &[ShareEntry]) -> String {
    if shares.is_empty() {
        return "none".into();
    }
    let mut v: Vec<String> =
        shares.iter().map(|s| format!("{}:{}{}", s.dir, s.tag, if s.writable { ":rw" } else { "" })).collect();
    v.sort();
    v.join(", ")
}

fn sorted_shares(shares: &[ShareEntry]) -> Vec<&ShareEntry> {
    let mut v: Vec<&ShareEntry> = shares.iter().collect();
    v.sort_by(|a, b| a.tag.cmp(&b.tag));
    v
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "none".to_string(), |s| format!("{s:?}"))
}

/// What apply would change to make the VM `have` (its [`observe`]d manifest) what `want`
/// says, in the order `cpus`, `memory`, `disk_size`, `autostart`, `shares`. Fields a manifest
/// leaves out (sizes the host decides, drivers found in the ISO folder, secure boot the profile
/// decides) are not compared. Refused, naming `file` and the field: what cannot change in place
/// (OS, encryption, secure boot), what apply does not change (network, install media, direct
/// boot), and a disk smaller than the VM's.
///
/// The kernel and initrd are compared by presence and command line only: a VM boots from
/// Phyllome's copies of them (`/var/lib/phyllome/boot/NAME/`), which keep no original name.
pub fn diff(want: &Manifest, have: &Manifest, running: bool, file: &str) -> Result<Vec<Change>, ManifestError> {
    let name = &want.name;
    let refuse = |field: &'static str, why: String| ManifestError::Field { file: file.to_string(), field, why };
    let anew = format!("delete {name} and apply again to make it anew, or give the manifest another name");
    if want.os != have.os {
        return Err(refuse(
            "os",
            format!(
                "{name} runs {:?} and the manifest says {:?}: a VM's OS cannot be changed in place ({anew})",
                have.os, want.os
            ),
        ));
    }
    if want.encryption != have.encryption {
        return Err(refuse(
            "encryption",
            format!(
                "{name}'s disk encryption is {:?} and the manifest says {:?}: it cannot be changed in place, the disk would be rewritten ({anew})",
                have.encryption, want.encryption
            ),
        ));
    }
    let have_secure_boot = have.firmware.as_ref().is_some_and(|f| f.secure_boot);
    if let Some(sb) = want.secure_boot.filter(|sb| *sb != have_secure_boot) {
        return Err(refuse(
            "secure_boot",
            format!(
                "{name} has secure boot {} and the manifest asks it {}: the UEFI variables were made for one or the other, it cannot be changed in place ({anew})",
                if have_secure_boot { "on" } else { "off" },
                if sb { "on" } else { "off" }
            ),
        ));
    }
    let not_here = |field: &'static str, from: String, to: String, how: &str| {
        refuse(
            field,
            format!("{name} has {from} and the manifest says {to}: apply does not change a VM's {how} (write what `phyllome manifest {name}` shows, or change the VM with virsh edit {name})"),
        )
    };
    if want.network != have.network {
        return Err(not_here(
            "network",
            format!("network {:?}", have.network),
            format!("{:?}", want.network),
            "network",
        ));
    }
    if want.media.iso != have.media.iso || (want.media.drivers.is_some() && want.media.drivers != have.media.drivers) {
        return Err(not_here(
            "media",
            format!("iso {}, drivers {}", opt(&have.media.iso), opt(&have.media.drivers)),
            format!("iso {}, drivers {}", opt(&want.media.iso), opt(&want.media.drivers)),
            "install media",
        ));
    }
    let boot = |m: &Manifest| m.boot.as_ref().map(|b| b.cmdline.clone().unwrap_or_default());
    if boot(want) != boot(have) {
        let text =
            |b: Option<String>| b.map_or_else(|| "no direct kernel boot".to_string(), |c| format!("cmdline {c:?}"));
        return Err(not_here("boot", text(boot(have)), text(boot(want)), "direct kernel boot"));
    }

    let mut changes = Vec::new();
    if let (Some(w), Some(h)) = (want.cpus, have.cpus) {
        if w != h {
            changes.push(Change { field: "cpus", from: h.to_string(), to: w.to_string(), needs_stop: running });
        }
    }
    let bytes = |s: &Option<String>| s.as_deref().and_then(|s| parse_size(s).ok());
    if let (Some(w), Some(h)) = (bytes(&want.memory), bytes(&have.memory)) {
        if w != h {
            changes.push(Change {
                field: "memory",
                from: have.memory.clone().unwrap_or_default(),
                to: want.memory.clone().unwrap_or_default(),
                needs_stop: running,
            });
        }
    }
    if let Some(w) = bytes(&want.disk_size) {
        let Some(h) = bytes(&have.disk_size) else {
            return Err(refuse("disk_size", format!("{name} has no disk volume in a storage pool to grow")));
        };
        let (ws, hs) = (want.disk_size.clone().unwrap_or_default(), have.disk_size.clone().unwrap_or_default());
        if w < h {
            return Err(refuse(
                "disk_size",
                format!("{ws} is smaller than {name}'s {hs} disk: a disk is never shrunk, its file systems would be cut (write disk_size = {hs:?} or more)"),
            ));
        }
        if w > h {
            changes.push(Change { field: "disk_size", from: hs, to: ws, needs_stop: running });
        }
    }
    if want.autostart != have.autostart {
        changes.push(Change {
            field: "autostart",
            from: have.autostart.to_string(),
            to: want.autostart.to_string(),
            needs_stop: false,
        });
    }
    if sorted_shares(&want.shares) != sorted_shares(&have.shares) {
        changes.push(Change {
            field: "shares",
            from: share_text(&have.shares),
            to: share_text(&want.shares),
            needs_stop: running,
        });
    }
    Ok(changes)
}

fn esc(v: &str) -> String {
    v.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;").replace('"', "&quot;")
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.has_tag_name(tag))
}

/// The definition `xml` with `memory_mib` and `vcpus` where given (the CPU topology's cores
/// following the vCPUs), and Phyllome's record of what was asked (`<phyllome:asked>`) made
/// `asked`. Everything else stays as it is. Pure.
pub fn edit_definition(
    xml: &str,
    memory_mib: Option<u64>,
    vcpus: Option<u32>,
    asked: &Asked,
) -> Result<String, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    if let Some(mib) = memory_mib {
        let m = child(root, "memory").ok_or("the definition has no <memory>")?;
        edits.push((m.range(), format!("<memory unit='KiB'>{}</memory>", mib << 10)));
        if let Some(c) = child(root, "currentMemory") {
            edits.push((c.range(), format!("<currentMemory unit='KiB'>{}</currentMemory>", mib << 10)));
        }
    }
    if let Some(n) = vcpus {
        let v = child(root, "vcpu").ok_or("the definition has no <vcpu>")?;
        let attrs: String = v
            .attributes()
            .filter(|a| a.name() != "current")
            .map(|a| format!(" {}='{}'", a.name(), esc(a.value())))
            .collect();
        edits.push((v.range(), format!("<vcpu{attrs}>{n}</vcpu>")));
        if let Some(t) = child(root, "cpu").and_then(|c| child(c, "topology")) {
            let others: u32 = ["sockets", "dies", "clusters", "threads"]
                .iter()
                .filter_map(|k| t.attribute(*k))
                .map(|v| v.parse::<u32>().unwrap_or(0))
                .product();
            let cores = t.attributes().find(|a| a.name() == "cores");
            match cores {
                Some(c) if others > 0 && n.is_multiple_of(others) => {
                    edits.push((c.range_value(), (n / others).to_string()))
                }
                _ => {
                    return Err(format!(
                        "its CPU topology ({}) cannot hold {n} vCPUs: change it with virsh edit",
                        t.attributes().map(|a| format!("{}={}", a.name(), a.value())).collect::<Vec<_>>().join(" ")
                    ))
                }
            }
        }
    }
    let ours =
        root.descendants().find(|n| n.tag_name().namespace() == Some(METADATA_NS) && n.tag_name().name() == "vm");
    if let Some(vm) = ours {
        let prefix = vm.lookup_prefix(METADATA_NS).unwrap_or("phyllome");
        let attr = |k: &str, v: Option<String>| v.map(|v| format!(" {k}='{}'", esc(&v))).unwrap_or_default();
        let el = if *asked == Asked::default() {
            String::new()
        } else {
            format!(
                "<{prefix}:asked{}{}{}/>",
                attr("cpus", asked.cpus.map(|c| c.to_string())),
                attr("memory", asked.memory.clone()),
                attr("disk", asked.disk_size.clone())
            )
        };
        let old =
            vm.children().find(|c| c.tag_name().namespace() == Some(METADATA_NS) && c.tag_name().name() == "asked");
        match old {
            Some(a) => edits.push((a.range(), el)),
            None if !el.is_empty() => {
                let close = format!("</{prefix}:vm>");
                let end = vm.range().end;
                if !xml[..end].ends_with(&close) {
                    return Err("Phyllome's metadata element is empty or unreadable".into());
                }
                edits.push((end - close.len()..end - close.len(), el));
            }
            None => {}
        }
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for (r, text) in edits {
        out.replace_range(r, &text);
    }
    Ok(out)
}

/// The manifests of a FILE, or of every `*.toml` of a DIR (by file name; hidden files left out).
pub struct Source {
    /// The FILE or DIR's absolute path: what apply records in the VMs it makes, and what `--prune` matches.
    pub path: String,
    /// Each manifest with the file that holds it (named as given, for messages).
    pub manifests: Vec<(String, Manifest)>,
}

/// Reads and checks every manifest of `path`; refuses two that name one VM.
pub fn load(path: &Path) -> Result<Source, ManifestError> {
    let shown = path.display().to_string();
    let abs = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ManifestError::Missing(shown.clone()),
        _ => ManifestError::Unreadable { file: shown.clone(), why: e.to_string() },
    })?;
    let files: Vec<PathBuf> = if abs.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| ManifestError::Unreadable { file: shown.clone(), why: e.to_string() })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml") && !n.starts_with('.'))
            .collect();
        names.sort();
        names.into_iter().map(|n| path.join(n)).collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut manifests: Vec<(String, Manifest)> = Vec::new();
    for f in files {
        let file = f.display().to_string();
        let text = std::fs::read_to_string(&f)
            .map_err(|e| ManifestError::Unreadable { file: file.clone(), why: e.to_string() })?;
        let m = Manifest::parse(&text, &file)?;
        if let Some((other, _)) = manifests.iter().find(|(_, o)| o.name == m.name) {
            return Err(ManifestError::Field {
                file,
                field: "name",
                why: format!("{} is named by {other} too: each VM has one manifest", m.name),
            });
        }
        manifests.push((file, m));
    }
    Ok(Source { path: abs.display().to_string(), manifests })
}

/// An existing VM as apply sees it.
struct Have {
    manifest: Manifest,
    summary: DomainSummary,
    xml: String,
    running: bool,
}

fn have(lv: &Libvirt, name: &str) -> vm::Result<Have> {
    let xml =
        lv.inactive_xml(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })?;
    let s = domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    let (mut m, _) = manifest::from_summary(&xml, &s, lv.autostart(name)?);
    let capacity = match s.main_disk().and_then(|d| Some((d.pool.as_deref()?, d.volume.as_deref()?))) {
        Some((pool, volume)) => lv.volume_info(pool, volume)?.map(|v| v.capacity),
        None => None,
    };
    observe(&mut m, &s, capacity);
    let running = vm::state(lv, name)? != State::Shutoff;
    Ok(Have { manifest: m, summary: s, xml, running })
}

/// What [`apply`] will do for one entry of the plan.
enum Work {
    Create(Box<Manifest>),
    Change(Box<Manifest>),
    Nothing,
    Remove { uuid: String },
}

/// Every VM's diff, checked: nothing in it is refused.
pub struct Plan {
    /// The FILE or DIR's absolute path.
    pub source: String,
    pub vms: Vec<VmDiff>,
    work: Vec<Work>,
}

/// The create request of a manifest, marked as made by apply from `source`.
fn spec_of(want: &Manifest, source: &str) -> vm::VmSpec {
    let mut spec = want.spec(Path::new(crate::paths::ISO_DIR));
    spec.request.applied_from = Some(source.to_string());
    spec
}

/// Share folders as `share add` records them (absolute, symlinks resolved), so a manifest
/// naming `/srv/data/` or a symlink to it does not differ from the VM forever.
fn canonical_shares(m: &mut Manifest) {
    for s in &mut m.shares {
        if let Ok(real) = std::fs::canonicalize(&s.dir) {
            s.dir = real.display().to_string();
        }
    }
}

/// What a create of `want` needs, checked without making anything: its files, sizes and
/// shares on this host (`vm::plan`), its network, and no leftover disk or key of its name.
fn check_create(lv: &Libvirt, file: &str, want: &Manifest, source: &str) -> Result<(), ApplyError> {
    if want.encryption == "prompt" {
        return Err(ManifestError::Field {
            file: file.into(),
            field: "encryption",
            why: format!("apply cannot type a passphrase: use \"secret\" or \"none\", or make it with `phyllome create {} --passphrase-prompt`", want.name),
        }
        .into());
    }
    let in_file = |e: VmError| ApplyError::InFile { file: file.into(), source: Box::new(e) };
    let p = vm::plan(lv, &want.name, &spec_of(want, source)).map_err(in_file)?;
    let disk = p.disk.clone().expect("plan() always asks for a disk");
    vm::preflight(lv, &want.name, &p, &disk, false, &crate::op::progress::quiet).map_err(in_file)?;
    Ok(())
}

/// The host's facts, gathered once for all the manifests.
fn host<'a>(lv: &Libvirt, cache: &'a mut Option<phyllome_model::Host>) -> vm::Result<&'a phyllome_model::Host> {
    if cache.is_none() {
        *cache = Some(crate::host_facts::gather(lv, true)?.0);
    }
    Ok(cache.as_ref().expect("gathered"))
}

/// Sizes and shares checked as create checks them, so a change fails here and not half way.
fn check_changes(
    lv: &Libvirt,
    cache: &mut Option<phyllome_model::Host>,
    file: &str,
    want: &Manifest,
    have: &Have,
    changes: &[Change],
) -> Result<(), ApplyError> {
    use phyllome_model::build::{self, NetworkChoice, Request};
    let bad =
        |field: &'static str, why: String| ApplyError::Manifest(ManifestError::Field { file: file.into(), field, why });
    let sized: Vec<&'static str> =
        changes.iter().map(|c| c.field).filter(|f| matches!(*f, "cpus" | "memory" | "disk_size")).collect();
    if !sized.is_empty() {
        let h = host(lv, cache)?;
        let base = Request {
            os: want.os.clone(),
            name: want.name.clone(),
            network: NetworkChoice::None,
            version: crate::VERSION.to_string(),
            // The disk's minimum is advice at create; an existing VM's disk only grows.
            force: true,
            disk: Some(crate::vm::disk_ref(&want.name, crate::POOL, crate::paths::POOL_PATH, build::Encryption::None)),
            ..Default::default()
        };
        // Only when the profile builds on this host at all is a refusal the size's.
        if build::build(&base, h).is_ok() {
            for field in sized {
                let mut r = base.clone();
                match field {
                    "cpus" => r.cpus = want.cpus,
                    "memory" => r.memory = want.memory.clone(),
                    _ => r.disk_size = want.disk_size.clone(),
                }
                build::build(&r, h).map_err(|e| bad(field, e.to_string()))?;
            }
        }
        if changes.iter().any(|c| matches!(c.field, "cpus")) {
            edit_definition(&have.xml, None, want.cpus, &Asked::default()).map_err(|e| bad("cpus", e))?;
        }
    }
    if changes.iter().any(|c| c.field == "shares") {
        let h = host(lv, cache)?;
        for s in shares_to_add(want, &have.manifest) {
            crate::share::resolve(lv, &s.dir, Some(&s.tag), s.writable, false)
                .map_err(|e| bad("shares", e.to_string()))?;
            crate::share::validate_tag(&s.tag).map_err(|e| bad("shares", e.to_string()))?;
            let feature =
                if s.writable { phyllome_model::Feature::Virtiofs } else { phyllome_model::Feature::ReadonlyVirtiofs };
            h.check(feature).map_err(|e| bad("shares", e.to_string()))?;
        }
        crate::share::with_shared_memory(&have.xml).map_err(|e| bad("shares", e.to_string()))?;
    }
    Ok(())
}

fn shares_to_add<'a>(want: &'a Manifest, have: &Manifest) -> Vec<&'a ShareEntry> {
    want.shares.iter().filter(|s| !have.shares.contains(s)).collect()
}

fn shares_to_remove<'a>(want: &Manifest, have: &'a Manifest) -> Vec<&'a ShareEntry> {
    have.shares.iter().filter(|s| !want.shares.contains(s)).collect()
}

/// Reads libvirt and checks every manifest and every change; changes nothing.
/// With `prune`, the VMs apply made from this source that no manifest names any more are to be removed.
pub fn plan(lv: &Libvirt, src: &Source, prune: bool) -> Result<Plan, ApplyError> {
    vm::recover(lv);
    let mut out = Plan { source: src.path.clone(), vms: Vec::new(), work: Vec::new() };
    let mut cache = None;
    for (file, want) in &src.manifests {
        let mut want = want.clone();
        canonical_shares(&mut want);
        let name = want.name.clone();
        if !lv.exists(&name)? {
            check_create(lv, file, &want, &src.path)?;
            out.vms.push(VmDiff {
                name,
                action: Action::Create,
                changes: vec![],
                file: Some(file.clone()),
                running: false,
            });
            out.work.push(Work::Create(Box::new(want)));
            continue;
        }
        let h = have(lv, &name).map_err(|e| ApplyError::InFile { file: file.clone(), source: Box::new(e) })?;
        let changes = diff(&want, &h.manifest, h.running, file)?;
        check_changes(lv, &mut cache, file, &want, &h, &changes)?;
        let action = if changes.is_empty() { Action::Unchanged } else { Action::Change };
        out.vms.push(VmDiff { name, action, changes, file: Some(file.clone()), running: h.running });
        out.work.push(if action == Action::Change { Work::Change(Box::new(want)) } else { Work::Nothing });
    }
    if prune {
        for d in lv.list_all()? {
            let Ok(s) = domxml::parse(&d.xml) else { continue };
            if s.applied_from.as_deref() != Some(src.path.as_str())
                || src.manifests.iter().any(|(_, m)| m.name == d.name)
            {
                continue;
            }
            let running = d.state != State::Shutoff;
            out.vms.push(VmDiff { name: d.name.clone(), action: Action::Remove, changes: vec![], file: None, running });
            out.work.push(Work::Remove { uuid: s.uuid });
        }
    }
    Ok(out)
}

/// What apply did to one VM.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: String,
    pub action: Action,
    /// The fields changed (for a create: none; for a removal: none).
    pub done: Vec<&'static str>,
    /// The fields that wait for the VM to be stopped.
    pub waiting: Vec<&'static str>,
    /// Why something was not done, in words (`stop NAME and apply again`).
    pub note: Option<String>,
    /// A removal's details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<vm::Deleted>,
}

/// Makes the host what the plan says: creates (not started), changes (those a running VM
/// cannot take wait), removals (of stopped VMs only). Stops at the first failure; what was done
/// before it was reported through `progress`.
pub fn apply(lv: &Libvirt, plan: &Plan, progress: Report<'_>) -> Result<Vec<Outcome>, ApplyError> {
    let mut outcomes = Vec::new();
    for (d, work) in plan.vms.iter().zip(&plan.work) {
        let in_file = |e: VmError| ApplyError::InFile {
            file: d.file.clone().unwrap_or_else(|| plan.source.clone()),
            source: Box::new(e),
        };
        let mut o = Outcome {
            name: d.name.clone(),
            action: d.action,
            done: vec![],
            waiting: vec![],
            note: None,
            removed: None,
        };
        match work {
            Work::Nothing => {}
            Work::Create(want) => {
                note(progress, &format!("creating {}", d.name));
                vm::create(lv, &d.name, &spec_of(want, &plan.source), None, false, progress).map_err(in_file)?;
                if want.autostart {
                    vm::set_autostart(lv, &d.name, true).map_err(in_file)?;
                }
            }
            Work::Change(want) => {
                // Read again: the VM may have started or stopped since the diff.
                let h = have(lv, &d.name).map_err(in_file)?;
                let changes = diff(want, &h.manifest, h.running, d.file.as_deref().unwrap_or_default())?;
                let (waiting, now): (Vec<&Change>, Vec<&Change>) = changes.iter().partition(|c| c.needs_stop);
                change(lv, want, &h, &now, progress).map_err(in_file)?;
                o.done = now.iter().map(|c| c.field).collect();
                o.waiting = waiting.iter().map(|c| c.field).collect();
                if !o.waiting.is_empty() {
                    o.note = Some(format!("{} runs: stop {} and apply again", d.name, d.name));
                }
            }
            Work::Remove { uuid } => {
                // Still the VM the plan found, still apply's from this source, still stopped.
                let xml = match lv.inactive_xml(&d.name) {
                    Ok(x) => x,
                    Err(e) if e.is_no_domain() => continue,
                    Err(e) => return Err(VmError::from(e).into()),
                };
                let s = domxml::parse(&xml).map_err(|e| VmError::Xml(d.name.clone(), e))?;
                if s.uuid != *uuid || s.applied_from.as_deref() != Some(plan.source.as_str()) {
                    o.note = Some(format!("{} changed since the diff: left as it is", d.name));
                } else if vm::state(lv, &d.name)? != State::Shutoff {
                    o.note = Some(format!("{} runs: stop {} and apply again to remove it", d.name, d.name));
                } else {
                    note(progress, &format!("removing {}", d.name));
                    o.removed = Some(vm::delete(lv, &d.name, false)?);
                }
            }
        }
        outcomes.push(o);
    }
    Ok(outcomes)
}

/// Makes the changes `now` to the VM `h`: the disk grown, then memory and vCPUs (the
/// persistent definition, with what was asked recorded), shares, autostart.
fn change(lv: &Libvirt, want: &Manifest, h: &Have, now: &[&Change], progress: Report<'_>) -> vm::Result<()> {
    let name = &want.name;
    let has = |f: &str| now.iter().any(|c| c.field == f);
    let mut asked = h.summary.asked.clone().unwrap_or_default();
    if has("disk_size") {
        let size = want.disk_size.as_deref().and_then(|s| parse_size(s).ok()).expect("checked by the diff");
        let d = h.summary.main_disk().expect("the diff found its disk");
        let (pool, volume) = (d.pool.clone().unwrap_or_default(), d.volume.clone().unwrap_or_default());
        note(progress, &format!("{name}: growing disk {pool}/{volume} to {}", human_size(size)));
        lv.grow_volume(&pool, &volume, size)?;
        asked.disk_size = want.disk_size.clone();
    }
    let memory_mib = has("memory").then(|| want.memory.as_deref().and_then(|m| parse_size(m).ok()).unwrap_or(0) >> 20);
    let cpus = if has("cpus") { want.cpus } else { None };
    if memory_mib.is_some() {
        asked.memory = want.memory.clone();
    }
    if cpus.is_some() {
        asked.cpus = want.cpus;
    }
    if memory_mib.is_some() || cpus.is_some() || has("disk_size") {
        let xml = edit_definition(&h.xml, memory_mib, cpus, &asked).map_err(VmError::Disk)?;
        lv.redefine(&xml)?;
        for c in now.iter().filter(|c| matches!(c.field, "memory" | "cpus")) {
            note(progress, &format!("{name}: {} {} -> {}", c.field, c.from, c.to));
        }
    }
    if has("shares") {
        for s in shares_to_remove(want, &h.manifest) {
            crate::share::remove(lv, name, &s.tag)?;
            note(progress, &format!("{name}: stopped sharing {} ({})", s.dir, s.tag));
        }
        for s in shares_to_add(want, &h.manifest) {
            crate::share::add(lv, name, &s.dir, Some(&s.tag), s.writable, false)?;
            note(progress, &format!("{name}: sharing {} as {}", s.dir, s.tag));
        }
    }
    if has("autostart") {
        vm::set_autostart(lv, name, want.autostart)?;
        note(progress, &format!("{name}: autostart {}", if want.autostart { "on" } else { "off" }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_errors_fall_into_their_class() {
        let missing = ManifestError::Missing("/vms".into());
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let field = ManifestError::Field { file: "a.toml".into(), field: "disk_size", why: "smaller".into() };
        assert_eq!(ApplyError::from(field).kind(), ErrorKind::InvalidInput);
        let busy = ApplyError::InFile { file: "a.toml".into(), source: Box::new(VmError::Running("a".into())) };
        assert_eq!(busy.kind(), ErrorKind::Conflict);
    }

    const VM: &str = r#"
version = 1
name = "deb"
os = "linux"
cpus = 2
memory = "512M"
disk_size = "4G"
encryption = "secret"
network = "none"

[boot]
kernel = "vmlinuz"
cmdline = "console=ttyS0"

[[shares]]
tag = "data"
dir = "/srv/data"
"#;

    fn m(text: &str) -> Manifest {
        Manifest::parse(text, "deb.toml").unwrap()
    }

    fn refused(want: &str, have: &str) -> String {
        diff(&m(want), &m(have), false, "deb.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_same_vm_has_no_changes_whatever_units_it_is_written_in() {
        assert_eq!(diff(&m(VM), &m(VM), false, "deb.toml").unwrap(), vec![]);
        let other_units = VM.replace("\"512M\"", "\"0.5G\"").replace("\"4G\"", "\"4096MiB\"");
        assert_eq!(diff(&m(&other_units), &m(VM), true, "deb.toml").unwrap(), vec![]);
        // What the manifest leaves to the host is not compared.
        let open = VM.replace("cpus = 2\n", "").replace("memory = \"512M\"\n", "").replace("disk_size = \"4G\"\n", "");
        assert_eq!(diff(&m(&open), &m(VM), false, "deb.toml").unwrap(), vec![]);
    }

    #[test]
    fn each_field_that_differs_is_one_change_and_a_running_vm_waits_for_the_sized_ones() {
        let want = VM
            .replace("cpus = 2", "cpus = 4")
            .replace("\"512M\"", "\"1G\"")
            .replace("\"4G\"", "\"8G\"")
            .replace("network = \"none\"", "network = \"none\"\nautostart = true")
            .replace("/srv/data\"", "/srv/data\"\nwritable = true");
        let c = diff(&m(&want), &m(VM), true, "deb.toml").unwrap();
        let got: Vec<(&str, &str, &str, bool)> =
            c.iter().map(|c| (c.field, c.from.as_str(), c.to.as_str(), c.needs_stop)).collect();
        assert_eq!(
            got,
            vec![
                ("cpus", "2", "4", true),
                ("memory", "512M", "1G", true),
                ("disk_size", "4G", "8G", true),
                ("autostart", "false", "true", false),
                ("shares", "/srv/data:data", "/srv/data:data:rw", true),
            ]
        );
        let stopped = diff(&m(&want), &m(VM), false, "deb.toml").unwrap();
        assert!(stopped.iter().all(|c| !c.needs_stop), "{stopped:?}");
        let none = VM.split("[[shares]]").next().unwrap().to_string();
        let c = diff(&m(&none), &m(VM), false, "deb.toml").unwrap();
        assert_eq!((c[0].field, c[0].from.as_str(), c[0].to.as_str()), ("shares", "/srv/data:data", "none"));
    }

    #[test]
    fn what_cannot_change_in_place_is_refused_with_file_and_field() {
        let cases = [
            (VM.replace("\"4G\"", "\"2G\""), "deb.toml: disk_size: 2G is smaller than deb's 4G disk"),
            (VM.replace("\"linux\"", "\"windows11\""), "deb.toml: os: deb runs \"linux\""),
            (VM.replace("\"secret\"", "\"none\""), "deb.toml: encryption: "),
            (VM.replace("network = \"none\"", "network = \"user\""), "deb.toml: network: "),
            (VM.replace("[boot]", "[media]\niso = \"d.iso\"\n[boot]"), "deb.toml: media: "),
            (VM.replace("console=ttyS0", "quiet"), "deb.toml: boot: "),
        ];
        for (want, msg) in cases {
            let e = refused(&want, VM);
            assert!(e.starts_with(msg), "{e} (wanted {msg})");
        }
        assert!(refused(&VM.replace("encryption", "secure_boot = true\nencryption"), VM).contains("secure_boot"));
        // A disk to grow where there is none.
        let mut no_disk = m(VM);
        no_disk.disk_size = None;
        let e = diff(&m(VM), &no_disk, false, "deb.toml").unwrap_err().to_string();
        assert!(e.contains("no disk volume"), "{e}");
    }

    #[test]
    fn observed_sizes_keep_the_asked_words_while_they_hold() {
        let xml = "<domain><name>deb</name><memory unit='KiB'>1048576</memory><vcpu>3</vcpu></domain>";
        let s = domxml::parse(xml).unwrap();
        let mut have = m(VM);
        have.memory = Some("1024M".into());
        observe(&mut have, &s, Some(4 << 30));
        assert_eq!(
            (have.cpus, have.memory.as_deref(), have.disk_size.as_deref()),
            (Some(3), Some("1024M"), Some("4G"))
        );
        have.memory = Some("2G".into());
        observe(&mut have, &s, None);
        assert_eq!(
            (have.memory.as_deref(), have.disk_size),
            (Some("1G"), None),
            "the VM's own size, not what was asked"
        );
        assert_eq!(human_size(1536 << 20), "1536M");
        assert_eq!(human_size(1000), "1000B");
    }

    const DOMAIN: &str = "<domain type='qemu'>\n  <name>deb</name>\n  <metadata>\n    \
        <phyllome:vm xmlns:phyllome=\"https://phyllo.me/xmlns/phyllome/1\">\n      <phyllome:os>linux</phyllome:os>\n      \
        <phyllome:asked memory=\"512M\"/>\n    </phyllome:vm>\n  </metadata>\n  \
        <memory unit='KiB'>524288</memory>\n  <currentMemory unit='KiB'>524288</currentMemory>\n  \
        <vcpu placement='static' current='1'>2</vcpu>\n  <cpu mode='maximum'>\n    \
        <topology sockets='1' dies='1' cores='2' threads='1'/>\n  </cpu>\n</domain>\n";

    #[test]
    fn a_definition_gets_new_sizes_and_records_them_as_asked() {
        let asked = Asked { cpus: Some(4), memory: Some("1G".into()), disk_size: None };
        let out = edit_definition(DOMAIN, Some(1024), Some(4), &asked).unwrap();
        let s = domxml::parse(&out).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (1024, 4));
        assert_eq!(s.asked, Some(asked));
        assert!(out.contains("<currentMemory unit='KiB'>1048576</currentMemory>"), "{out}");
        assert!(out.contains("<vcpu placement='static'>4</vcpu>"), "{out}");
        assert!(out.contains("cores='4'"), "{out}");
        // Only what is given changes.
        let same = edit_definition(DOMAIN, None, None, &Asked { memory: Some("512M".into()), ..Default::default() });
        assert_eq!(same.unwrap().replace('\'', "\""), DOMAIN.replace('\'', "\""));
        // A record where there was none; a topology that cannot hold the count.
        let bare = DOMAIN.replace("<phyllome:asked memory=\"512M\"/>\n      ", "");
        let out = edit_definition(&bare, None, None, &Asked { cpus: Some(2), ..Default::default() }).unwrap();
        assert_eq!(domxml::parse(&out).unwrap().asked.and_then(|a| a.cpus), Some(2));
        let odd = DOMAIN.replace("threads='1'", "threads='2'");
        assert!(edit_definition(&odd, None, Some(3), &Asked::default()).unwrap_err().contains("cannot hold 3 vCPUs"));
    }
}
