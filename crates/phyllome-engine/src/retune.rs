//! Re-tuning a VM for another host's facts: what an import, a migration and `phyllome xml
//! --vm` share.
//!
//! - A VM is rebuilt from its manifest for a host ([`request_for`], [`plan_on`]); what the
//!   host chose for each item is compared with what another chose ([`SourceHost`],
//!   [`SavedChoice`], [`changes`]), and said ([`render_changes`]).
//! - After an offline move the definition is rebuilt for the destination, keeping the
//!   VM's identity ([`keep_identity`], [`retune`]).
//! - A VM that moves keeps the definition it was tuned to on its old host (a live
//!   move cannot change a running machine), so Phyllome records, in the domain's
//!   own metadata (`<tuned:tuned>`, persistent definition only), which host it was
//!   tuned on and what was chosen there, item by item. `phyllome xml --vm VM
//!   --explain` then rebuilds the VM from its manifest for the host it is on now
//!   and lists what would change at its next cold boot, and why ([`next_boot`]).

use crate::vm::{self, VmError};
use phyllome_libvirt::Libvirt;
use phyllome_model::build::{self, Choice, Encryption, Plan};
use phyllome_model::xml::Element;
use phyllome_model::Host;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The namespace of the record (its own: libvirt keeps one element per namespace).
pub const TUNED_NS: &str = "https://phyllo.me/xmlns/phyllome-tuned/1";

/// What a VM would be at its next cold boot on the host it is on.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NextBoot {
    pub name: String,
    /// This host.
    pub here: SourceHost,
    /// The host it was tuned on, when recorded.
    pub tuned_on: Option<SourceHost>,
    /// What this host chooses differently (empty without a record).
    pub changes: Vec<Change>,
    /// This host's choices, item by item.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub choices: Vec<Choice>,
    /// The definition it would get (its UUID and MAC addresses kept).
    pub xml: String,
}

/// The record's element: the host and its choices.
fn element(host: &SourceHost, choices: &[SavedChoice]) -> String {
    let mut e = Element::new("tuned")
        .attr("virt-type", &host.virt_type)
        .attr("cpu-vendor", &host.cpu_vendor)
        .attr("cpu-model", &host.cpu_model)
        .attr("libvirt", &host.libvirt)
        .attr("qemu", &host.qemu);
    for c in choices {
        e.push(Element::new("choice").attr("item", &c.item).attr("choice", &c.choice).attr("why", &c.why));
    }
    e.render()
}

/// The record in a domain definition, if it has one.
pub fn recorded(xml: &str) -> Option<(SourceHost, Vec<SavedChoice>)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let t = doc.descendants().find(|n| n.tag_name().namespace() == Some(TUNED_NS) && n.tag_name().name() == "tuned")?;
    let a = |k: &str| t.attribute(k).unwrap_or_default().to_string();
    let host = SourceHost {
        virt_type: a("virt-type"),
        cpu_vendor: a("cpu-vendor"),
        cpu_model: a("cpu-model"),
        libvirt: a("libvirt"),
        qemu: a("qemu"),
    };
    let choices = t
        .children()
        .filter(|c| c.tag_name().name() == "choice")
        .map(|c| SavedChoice {
            item: c.attribute("item").unwrap_or_default().into(),
            choice: c.attribute("choice").unwrap_or_default().into(),
            why: c.attribute("why").unwrap_or_default().into(),
        })
        .collect();
    Some((host, choices))
}

/// Records on `lv`'s domain `name` (its persistent definition: a running one is not
/// changed) that it was tuned on `host` with `choices`.
pub fn record(lv: &Libvirt, name: &str, host: &SourceHost, choices: &[SavedChoice]) -> vm::Result<()> {
    Ok(lv.set_config_metadata(name, TUNED_NS, "tuned", &element(host, choices))?)
}

/// The VM as Phyllome would make it now, from its manifest, for `host`.
pub fn plan_for(lv: &Libvirt, name: &str, host: &Host) -> vm::Result<phyllome_model::build::Plan> {
    let (manifest, _) = crate::manifest::of_vm(lv, name)?;
    let xml = lv.inactive_xml(name)?;
    let s = crate::domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))?;
    let capacity = match s.main_disk().and_then(|d| Some((d.pool.clone()?, d.volume.clone()?))) {
        Some((pool, volume)) => lv.volume_info(&pool, &volume)?.map(|v| v.capacity).unwrap_or(0),
        None => 0,
    };
    let spec = request_for(&manifest, capacity.max(1 << 30), None);
    plan_on(name, &spec, host, vec![])
}

/// What `name` would be at its next cold boot on `lv`'s host, and what changes from the
/// host it was tuned on (when recorded). Changes nothing.
pub fn next_boot(lv: &Libvirt, name: &str) -> vm::Result<NextBoot> {
    let (host, _) = crate::host_facts::gather(lv, true)?;
    let current =
        lv.inactive_xml(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })?;
    let plan = plan_for(lv, name, &host)?;
    let uuid = crate::domxml::parse(&current).map_err(|e| VmError::Xml(name.into(), e))?.uuid;
    let xml = keep_identity(&plan.domain.to_xml(), &uuid, &current);
    let rec = recorded(&current);
    let changes = rec.as_ref().map(|(_, from)| changes(from, &plan.choices)).unwrap_or_default();
    Ok(NextBoot {
        name: name.into(),
        here: SourceHost::of(&host),
        tuned_on: rec.map(|(h, _)| h),
        changes,
        choices: plan.choices,
        xml,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SourceHost {
    /// `kvm` or `qemu` (TCG).
    pub virt_type: String,
    pub cpu_vendor: String,
    pub cpu_model: String,
    pub libvirt: String,
    pub qemu: String,
}

impl SourceHost {
    pub fn of(host: &Host) -> SourceHost {
        SourceHost {
            virt_type: host.caps.virt_type.clone(),
            cpu_vendor: serde_json::to_value(host.facts.cpu_vendor)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            cpu_model: host.facts.cpu_model.clone(),
            libvirt: host.facts.platform.libvirt.clone(),
            qemu: host.facts.platform.qemu.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SavedChoice {
    pub item: String,
    pub choice: String,
    pub why: String,
}

impl From<&Choice> for SavedChoice {
    fn from(c: &Choice) -> Self {
        SavedChoice { item: c.item.to_string(), choice: c.choice.clone(), why: c.why.clone() }
    }
}

/// The create request for a manifest in a bundle, on any host: install media
/// are left out (they were for the install, and another host's ISO folder has
/// its own), the disk is the bundle's (its size, and always encrypted), and a
/// direct-boot kernel comes with the bundle (`boot`: where its files are).
pub fn request_for(
    m: &crate::manifest::Manifest,
    info_disk_size: u64,
    boot: Option<(&str, Option<&str>)>,
) -> vm::VmSpec {
    let mut spec = m.spec(Path::new(crate::paths::ISO_DIR));
    spec.request.iso = None;
    spec.request.drivers = None;
    spec.request.disk_size = Some(format!("{}G", info_disk_size.div_ceil(1 << 30).max(1)));
    // The disk exists: the OS's usual minimum is not this import's to enforce.
    spec.request.force = true;
    spec.encryption = Some(Encryption::Secret);
    if let (Some(b), Some((kernel, initrd))) = (&mut spec.request.direct_boot, boot) {
        b.kernel = kernel.to_string();
        b.initrd = initrd.map(String::from);
    }
    spec
}

/// A manifest's shares as the domain has them (tags and folders as written there).
pub fn manifest_shares(m: &crate::manifest::Manifest) -> Vec<phyllome_model::domain::Share> {
    m.shares
        .iter()
        .map(|s| phyllome_model::domain::Share { dir: s.dir.clone(), tag: s.tag.clone(), readonly: !s.writable })
        .collect()
}

/// The pure part of the re-tuning: the plan for `spec` on `host`.
pub fn plan_on(
    name: &str,
    spec: &vm::VmSpec,
    host: &Host,
    shares: Vec<phyllome_model::domain::Share>,
) -> vm::Result<Plan> {
    let network = match spec.network.as_str() {
        "none" => build::NetworkChoice::None,
        "user" => build::NetworkChoice::User,
        "default" | "" => build::NetworkChoice::Default,
        other => build::NetworkChoice::Named(other.to_string()),
    };
    let req = build::Request {
        name: name.to_string(),
        network,
        disk: Some(crate::vm::disk_ref(name, crate::POOL, crate::paths::POOL_PATH, Encryption::Secret)),
        version: crate::VERSION.to_string(),
        shares,
        ..spec.request.clone()
    };
    let mut plan = build::build(&req, host)?;
    if let Some(b) = &mut plan.domain.direct_boot {
        let dir = crate::paths::boot_dir(name);
        b.kernel = format!("{dir}/vmlinuz");
        if let Some(i) = &mut b.initrd {
            *i = format!("{dir}/initrd.img");
        }
    }
    Ok(plan)
}

/// One item the importing host decides differently from the exporting one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    pub item: String,
    /// The exporting host's choice (absent: it had none for this item).
    pub from: Option<String>,
    /// This host's (absent: none here).
    pub to: Option<String>,
    pub why: String,
}

/// What changed between the exporting host's choices and this host's, item by item.
pub fn changes(from: &[SavedChoice], to: &[Choice]) -> Vec<Change> {
    let mut out = vec![];
    let theirs: BTreeMap<&str, &SavedChoice> = from.iter().map(|c| (c.item.as_str(), c)).collect();
    let ours: BTreeMap<&str, &Choice> = to.iter().map(|c| (c.item, c)).collect();
    for c in to {
        match theirs.get(c.item) {
            Some(t) if t.choice == c.choice => {}
            t => out.push(Change {
                item: c.item.to_string(),
                from: t.map(|t| t.choice.clone()),
                to: Some(c.choice.clone()),
                why: c.why.clone(),
            }),
        }
    }
    for t in from.iter().filter(|t| !ours.contains_key(t.item.as_str())) {
        out.push(Change {
            item: t.item.clone(),
            from: Some(t.choice.clone()),
            to: None,
            why: "this host does not need it, or cannot give it".into(),
        });
    }
    out
}

/// The explanation an import prints for a terminal: the exporting host, what changed and why.
/// What comes from the bundle (its host, its choices) is anyone's text: it is shown escaped
/// ([`crate::text::printable`]).
pub fn render_changes(source: &SourceHost, here: &SourceHost, changes: &[Change]) -> String {
    use crate::text::printable;
    let host = |h: &SourceHost| {
        format!(
            "{} ({} {}), libvirt {}, QEMU {}",
            printable(&h.virt_type),
            printable(&h.cpu_vendor),
            printable(&h.cpu_model),
            printable(&h.libvirt),
            printable(&h.qemu)
        )
    };
    let mut out = format!("exported on: {}\nimported on: {}\n", host(source), host(here));
    if changes.is_empty() {
        out.push_str("changed: nothing (this host chooses as the exporting one did)\n");
    }
    for c in changes {
        out.push_str(&format!(
            "changed {}: {} -> {}\n    why: {}\n",
            printable(&c.item),
            printable(c.from.as_deref().unwrap_or("(none)")),
            printable(c.to.as_deref().unwrap_or("(none)")),
            printable(&c.why)
        ));
    }
    out
}

/// The VM as Phyllome would make it, and what this host chooses for it: what the
/// destination's choices are compared with, and rebuilt from.
pub(crate) struct Tuning {
    pub(crate) spec: vm::VmSpec,
    /// This host, and what it chooses.
    pub(crate) here: SourceHost,
    pub(crate) from: Vec<SavedChoice>,
}

pub(crate) fn tuning_here(src: &Libvirt, name: &str, capacity: u64) -> Option<Tuning> {
    let (manifest, _) = crate::manifest::of_vm(src, name).ok()?;
    let (host, _) = crate::host_facts::gather(src, true).ok()?;
    let spec = request_for(&manifest, capacity, None);
    let from = plan_on(name, &spec, &host, vec![]).ok()?.choices.iter().map(SavedChoice::from).collect();
    Some(Tuning { spec, here: SourceHost::of(&host), from })
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
pub(crate) fn plan_there(
    dst: &Libvirt,
    name: &str,
    t: &Tuning,
) -> std::result::Result<(phyllome_model::build::Plan, SourceHost), String> {
    let host = crate::host_facts::gather_remote(dst).map_err(|e| format!("its host facts: {e}"))?;
    let plan = plan_on(name, &t.spec, &host, vec![]).map_err(|e| e.to_string())?;
    Ok((plan, SourceHost::of(&host)))
}

/// After an offline move: the definition rebuilt for the destination, as import does,
/// keeping the UUID, MAC addresses, disk, key, UEFI variable store and TPM state that
/// moved. On any doubt the moved definition stays (and the reason is returned).
pub(crate) fn retune(dst: &Libvirt, name: &str, uuid: &str, t: &Tuning) -> std::result::Result<Vec<Change>, String> {
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
    let chosen: Vec<_> = plan.choices.iter().map(SavedChoice::from).collect();
    let _ = record(dst, name, &there, &chosen);
    Ok(changes(&t.from, &plan.choices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(item: &'static str, choice: &str) -> Choice {
        Choice { item, choice: choice.into(), why: format!("why {item}") }
    }

    #[test]
    fn changes_name_what_differs_appears_and_goes() {
        let from = vec![
            SavedChoice { item: "cpu".into(), choice: "host-passthrough".into(), why: "kvm".into() },
            SavedChoice { item: "video".into(), choice: "virtio-gpu with GL".into(), why: "render node".into() },
            SavedChoice { item: "disk".into(), choice: "virtio".into(), why: "fast".into() },
        ];
        let to = vec![choice("cpu", "qemu64"), choice("disk", "virtio"), choice("sound", "ich9")];
        let c = changes(&from, &to);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(
            (c[0].item.as_str(), c[0].from.as_deref(), c[0].to.as_deref()),
            ("cpu", Some("host-passthrough"), Some("qemu64"))
        );
        assert_eq!(c[0].why, "why cpu");
        assert_eq!((c[1].item.as_str(), c[1].from.as_deref()), ("sound", None));
        assert_eq!((c[2].item.as_str(), c[2].to.as_deref()), ("video", None));
        assert!(changes(
            &from,
            &[choice("cpu", "host-passthrough"), choice("video", "virtio-gpu with GL"), choice("disk", "virtio")]
        )
        .is_empty());
    }
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
    fn the_record_reads_back_what_was_written_escaped() {
        let host = SourceHost {
            virt_type: "kvm".into(),
            cpu_vendor: "amd".into(),
            cpu_model: "EPYC <7B13> & co".into(),
            libvirt: "11.3.0".into(),
            qemu: "10.0.2".into(),
        };
        let choices = vec![SavedChoice { item: "cpu".into(), choice: "host-model".into(), why: "\"KVM\" here".into() }];
        // libvirt stores the element under its key's prefix and the namespace.
        let inner = element(&host, &choices).replacen("<tuned ", &format!("<tuned:tuned xmlns:tuned='{TUNED_NS}' "), 1);
        let inner = inner.replace("<choice ", "<tuned:choice ").replace("</tuned>", "</tuned:tuned>");
        let xml = format!("<domain><name>v</name><metadata>{inner}</metadata></domain>");
        let (h, c) = recorded(&xml).expect("a record");
        assert_eq!(h, host);
        assert_eq!(c, choices);
        assert!(recorded("<domain><name>v</name></domain>").is_none());
    }
}
