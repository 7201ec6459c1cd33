//! Parsing of `virConnectGetDomainCapabilities` answers.

use phyllome_model::DomainCaps;
use roxmltree::{Document, Node};

#[derive(Debug, thiserror::Error)]
pub enum DomcapsError {
    #[error("domain capabilities are not XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("domain capabilities have no <{0}>")]
    Missing(&'static str),
}

fn child<'a>(n: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text(n: Node, name: &str) -> Option<String> {
    child(n, name).and_then(|c| c.text()).map(|t| t.trim().to_string())
}

fn supported(n: Node) -> bool {
    n.attribute("supported") == Some("yes")
}

/// Values of `<enum name=NAME><value>..</value></enum>` directly under `n`.
fn enum_values(n: Node, name: &str) -> Option<Vec<String>> {
    n.children().find(|c| c.has_tag_name("enum") && c.attribute("name") == Some(name)).map(|e| values(e))
}

fn values(n: Node) -> Vec<String> {
    n.children().filter(|v| v.has_tag_name("value")).filter_map(|v| v.text()).map(|t| t.trim().to_string()).collect()
}

/// Parses a `<domainCapabilities>` document.
pub fn parse_domcaps(xml: &str) -> Result<DomainCaps, DomcapsError> {
    let doc = Document::parse(xml)?;
    let root = doc.root_element();
    if !root.has_tag_name("domainCapabilities") {
        return Err(DomcapsError::Missing("domainCapabilities"));
    }
    let mut caps = DomainCaps {
        virt_type: text(root, "domain").ok_or(DomcapsError::Missing("domain"))?,
        emulator: text(root, "path").unwrap_or_default(),
        machine: text(root, "machine").unwrap_or_default(),
        max_vcpus: child(root, "vcpu").and_then(|v| v.attribute("max")).and_then(|m| m.parse().ok()).unwrap_or(0),
        ..DomainCaps::default()
    };
    if let Some(os) = child(root, "os").filter(|o| supported(*o)) {
        caps.firmware = enum_values(os, "firmware").unwrap_or_default();
        if let Some(loader) = child(os, "loader").filter(|l| supported(*l)) {
            caps.loaders = values(loader);
            // libvirt before 7.2 had no firmware enum; a pflash loader means UEFI is possible.
            if caps.firmware.is_empty() && !caps.loaders.is_empty() {
                caps.firmware.push("efi".into());
            }
        }
    }
    if let Some(cpu) = child(root, "cpu") {
        for mode in cpu.children().filter(|m| m.has_tag_name("mode") && supported(*m)) {
            let name = mode.attribute("name").unwrap_or_default().to_string();
            if name == "custom" {
                caps.usable_cpu_models = mode
                    .children()
                    .filter(|m| m.has_tag_name("model") && m.attribute("usable") == Some("yes"))
                    .filter_map(|m| m.text())
                    .map(str::to_string)
                    .collect();
            }
            caps.cpu_modes.push(name);
        }
    }
    if let Some(mb) = child(root, "memoryBacking").filter(|m| supported(*m)) {
        if let Some(v) = enum_values(mb, "sourceType") {
            caps.enums.insert("memoryBacking.sourceType".into(), v);
        }
    }
    if let Some(devices) = child(root, "devices") {
        for dev in devices.children().filter(|d| d.is_element() && supported(*d)) {
            let dname = dev.tag_name().name();
            caps.devices.push(dname.to_string());
            for e in dev.children().filter(|e| e.has_tag_name("enum")) {
                let ename = e.attribute("name").unwrap_or_default();
                caps.enums.insert(format!("{dname}.{ename}"), values(e));
            }
        }
    }
    if let Some(features) = child(root, "features") {
        if let Some(hv) = child(features, "hyperv").filter(|h| supported(*h)) {
            caps.hyperv = Some(enum_values(hv, "features").unwrap_or_default());
        }
        for f in features.children().filter(|f| f.is_element() && supported(*f)) {
            caps.devices.push(format!("feature:{}", f.tag_name().name()));
        }
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<domainCapabilities>
  <path>/usr/bin/qemu-system-x86_64</path>
  <domain>qemu</domain>
  <machine>pc-q35-7.2</machine>
  <arch>x86_64</arch>
  <vcpu max='288'/>
  <os supported='yes'>
    <enum name='firmware'><value>efi</value></enum>
    <loader supported='yes'>
      <value>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</value>
      <enum name='secure'><value>yes</value><value>no</value></enum>
    </loader>
  </os>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='maximum' supported='yes'/>
    <mode name='custom' supported='yes'>
      <model usable='yes' vendor='unknown'>qemu64</model>
      <model usable='no' vendor='Intel'>Haswell-noTSX</model>
      <model usable='yes' vendor='Intel'>Penryn</model>
    </mode>
  </cpu>
  <devices>
    <tpm supported='yes'>
      <enum name='model'><value>tpm-tis</value><value>tpm-crb</value></enum>
      <enum name='backendModel'><value>emulator</value></enum>
    </tpm>
    <redirdev supported='no'/>
  </devices>
  <features>
    <sev supported='no'/>
    <hyperv supported='yes'><enum name='features'><value>spinlocks</value></enum></hyperv>
  </features>
</domainCapabilities>"#;

    #[test]
    fn parses_the_parts_the_model_uses() {
        let c = parse_domcaps(SAMPLE).unwrap();
        assert_eq!(c.virt_type, "qemu");
        assert_eq!(c.machine, "pc-q35-7.2");
        assert_eq!(c.max_vcpus, 288);
        assert_eq!(c.firmware, vec!["efi"]);
        assert_eq!(c.loaders, vec!["/usr/share/OVMF/OVMF_CODE_4M.ms.fd"]);
        assert_eq!(c.cpu_modes, vec!["maximum", "custom"]);
        assert!(c.cpu_model_usable("Penryn"));
        assert!(!c.cpu_model_usable("Haswell-noTSX"));
        assert!(c.supports("tpm"));
        assert!(!c.supports("redirdev"));
        assert!(c.has("tpm.model", "tpm-crb"));
        assert!(c.has("tpm.backendModel", "emulator"));
        assert_eq!(c.hyperv, Some(vec!["spinlocks".to_string()]));
        assert!(c.hyperv_feature("spinlocks"));
        assert!(!c.hyperv_feature("relaxed"));
    }

    #[test]
    fn rejects_other_documents() {
        assert!(matches!(parse_domcaps("<capabilities/>"), Err(DomcapsError::Missing(_))));
        assert!(matches!(parse_domcaps("<domainCapabilities>"), Err(DomcapsError::Xml(_))));
        assert!(matches!(parse_domcaps("<domainCapabilities/>"), Err(DomcapsError::Missing("domain"))));
    }
}
