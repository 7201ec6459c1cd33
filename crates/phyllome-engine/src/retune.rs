//! What a VM was tuned to, and what a host would choose for it at its next cold boot.
//!
//! A VM that moves keeps the definition it was tuned to on its old host (a live
//! move cannot change a running machine), so Phyllome records, in the domain's
//! own metadata (`<tuned:tuned>`, persistent definition only), which host it was
//! tuned on and what was chosen there, item by item. `phyllome xml --vm VM
//! --explain` then rebuilds the VM from its manifest for the host it is on now
//! and lists what would change at its next cold boot, and why.

use crate::bundle::{self, Change, SavedChoice, SourceHost};
use crate::vm::{self, VmError};
use phyllome_libvirt::Libvirt;
use phyllome_model::build::Choice;
use phyllome_model::xml::Element;
use phyllome_model::Host;
use serde::Serialize;

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
    let spec = bundle::request_for(&manifest, capacity.max(1 << 30), None);
    bundle::plan_on(name, &spec, host, vec![])
}

/// What `name` would be at its next cold boot on `lv`'s host, and what changes from the
/// host it was tuned on (when recorded). Changes nothing.
pub fn next_boot(lv: &Libvirt, name: &str) -> vm::Result<NextBoot> {
    let (host, _) = crate::host_facts::gather(lv, true)?;
    let current =
        lv.inactive_xml(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })?;
    let plan = plan_for(lv, name, &host)?;
    let uuid = crate::domxml::parse(&current).map_err(|e| VmError::Xml(name.into(), e))?.uuid;
    let xml = crate::migrate::keep_identity(&plan.domain.to_xml(), &uuid, &current);
    let rec = recorded(&current);
    let changes = rec.as_ref().map(|(_, from)| bundle::changes(from, &plan.choices)).unwrap_or_default();
    Ok(NextBoot {
        name: name.into(),
        here: SourceHost::of(&host),
        tuned_on: rec.map(|(h, _)| h),
        changes,
        choices: plan.choices,
        xml,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
