//! Host devices given to a VM (PCI or USB passthrough): the names users type
//! (`pci:0000:01:00.0`, `usb:046d:c52b`) and libvirt's `<hostdev>` element.
//!
//! Passthrough is a last resort: a device given to a VM leaves the host. The
//! decision whether a device may go is `phyllome-host`'s (`devices`); this
//! module only names devices and writes the XML.

use crate::xml::Element;
use serde::{Serialize, Serializer};
use std::fmt;

/// The hint every parse error ends with.
const FORMS: &str = "expected pci:DOMAIN:BUS:SLOT.FN (e.g. pci:0000:01:00.0) or usb:VENDOR:PRODUCT \
                     (e.g. usb:046d:c52b); `phyllome devices` lists them";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device {input:?}: {problem}; {FORMS}")]
pub struct HostdevError {
    pub input: String,
    pub problem: String,
}

fn err(input: &str, problem: impl Into<String>) -> HostdevError {
    HostdevError { input: input.to_string(), problem: problem.into() }
}

/// A PCI address, as sysfs writes it: `DOMAIN:BUS:SLOT.FUNCTION` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

fn hex_field(input: &str, what: &str, text: &str, max_digits: usize, max: u32) -> Result<u32, HostdevError> {
    if text.is_empty() || text.len() > max_digits || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(err(input, format!("{what} {text:?} is not {max_digits} hex digits at most")));
    }
    let v = u32::from_str_radix(text, 16).map_err(|_| err(input, format!("{what} {text:?} is not hex")))?;
    if v > max {
        return Err(err(input, format!("{what} {text} is above {max:x}")));
    }
    Ok(v)
}

impl PciAddress {
    /// Parses `DOMAIN:BUS:SLOT.FN` (`0000:01:00.0`) or `BUS:SLOT.FN` (domain 0, as lspci prints).
    pub fn parse(text: &str) -> Result<Self, HostdevError> {
        Self::parse_in(text, text)
    }

    fn parse_in(input: &str, text: &str) -> Result<Self, HostdevError> {
        let (rest, function) =
            text.rsplit_once('.').ok_or_else(|| err(input, "the PCI address has no '.FN' (function)"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, slot) = match parts.as_slice() {
            [d, b, s] => (*d, *b, *s),
            [b, s] => ("0", *b, *s),
            _ => return Err(err(input, "the PCI address is not DOMAIN:BUS:SLOT.FN")),
        };
        Ok(PciAddress {
            domain: hex_field(input, "domain", domain, 4, 0xffff)? as u16,
            bus: hex_field(input, "bus", bus, 2, 0xff)? as u8,
            slot: hex_field(input, "slot", slot, 2, 0x1f)? as u8,
            function: hex_field(input, "function", function, 1, 7)? as u8,
        })
    }

    /// Another function of the same physical device (same domain, bus and slot).
    pub fn same_slot(&self, other: &PciAddress) -> bool {
        (self.domain, self.bus, self.slot) == (other.domain, other.bus, other.slot)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.slot, self.function)
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A host device, as the user names it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hostdev {
    Pci(PciAddress),
    /// A USB device by its IDs (libvirt finds it on whatever port it is plugged into).
    Usb {
        vendor: u16,
        product: u16,
    },
}

impl Hostdev {
    /// Parses `pci:DOMAIN:BUS:SLOT.FN` or `usb:VENDOR:PRODUCT`.
    pub fn parse(spec: &str) -> Result<Self, HostdevError> {
        let spec_trimmed = spec.trim();
        if let Some(addr) = spec_trimmed.strip_prefix("pci:") {
            return PciAddress::parse_in(spec, addr).map(Hostdev::Pci);
        }
        if let Some(ids) = spec_trimmed.strip_prefix("usb:") {
            let (vendor, product) =
                ids.split_once(':').ok_or_else(|| err(spec, "a USB device is usb:VENDOR:PRODUCT"))?;
            return Ok(Hostdev::Usb {
                vendor: hex_field(spec, "vendor", vendor, 4, 0xffff)? as u16,
                product: hex_field(spec, "product", product, 4, 0xffff)? as u16,
            });
        }
        Err(err(spec, "it starts with neither pci: nor usb:"))
    }

    /// libvirt's `<hostdev>`: managed, so libvirt detaches the device from its host
    /// driver when the VM starts and gives it back when the VM stops.
    pub fn to_element(&self) -> Element {
        let (kind, source) = match self {
            Hostdev::Pci(a) => (
                "pci",
                Element::new("source").child(
                    Element::new("address")
                        .attr("domain", format!("0x{:04x}", a.domain))
                        .attr("bus", format!("0x{:02x}", a.bus))
                        .attr("slot", format!("0x{:02x}", a.slot))
                        .attr("function", format!("0x{:x}", a.function)),
                ),
            ),
            Hostdev::Usb { vendor, product } => (
                "usb",
                Element::new("source")
                    .child(Element::new("vendor").attr("id", format!("0x{vendor:04x}")))
                    .child(Element::new("product").attr("id", format!("0x{product:04x}"))),
            ),
        };
        Element::new("hostdev").attr("mode", "subsystem").attr("type", kind).attr("managed", "yes").child(source)
    }

    /// The `<hostdev>` element as a document, for libvirt's attach and detach calls.
    pub fn to_xml(&self) -> String {
        self.to_element().render()
    }
}

impl fmt::Display for Hostdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hostdev::Pci(a) => write!(f, "pci:{a}"),
            Hostdev::Usb { vendor, product } => write!(f, "usb:{vendor:04x}:{product:04x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pci_in_sysfs_and_lspci_forms() {
        let a = PciAddress { domain: 0, bus: 0x0b, slot: 0x1f, function: 7 };
        assert_eq!(Hostdev::parse("pci:0000:0b:1f.7"), Ok(Hostdev::Pci(a)));
        assert_eq!(Hostdev::parse("pci:0b:1f.7"), Ok(Hostdev::Pci(a)));
        assert_eq!(Hostdev::parse("pci:0B:1F.7").unwrap().to_string(), "pci:0000:0b:1f.7");
        let b = PciAddress::parse("10000:00:00.0");
        assert!(b.unwrap_err().to_string().contains("domain"), "five-digit domain");
        let d = PciAddress::parse("abcd:ff:00.0").unwrap();
        assert_eq!(d.to_string(), "abcd:ff:00.0");
    }

    #[test]
    fn refuses_bad_pci_addresses_with_the_forms() {
        for (bad, want) in [
            ("pci:0000:01:00", "'.FN'"),
            ("pci:0000:01:20.0", "slot 20 is above 1f"),
            ("pci:0000:01:00.8", "function 8 is above 7"),
            ("pci:0000:100:00.0", "bus"),
            ("pci:1:2:3:4.0", "not DOMAIN:BUS:SLOT.FN"),
            ("pci:00:0x.0", "slot"),
            ("0000:01:00.0", "neither pci: nor usb:"),
        ] {
            let e = Hostdev::parse(bad).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("pci:DOMAIN:BUS:SLOT.FN"), "{bad}: {e}");
        }
    }

    #[test]
    fn parses_usb_ids() {
        assert_eq!(Hostdev::parse("usb:046d:C52B"), Ok(Hostdev::Usb { vendor: 0x046d, product: 0xc52b }));
        assert_eq!(Hostdev::parse("usb:46d:c52b").unwrap().to_string(), "usb:046d:c52b");
        for bad in ["usb:046d", "usb:046d:c52b1", "usb:zzzz:0001", "usb::0001"] {
            assert!(Hostdev::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostdev_xml_is_managed_subsystem() {
        let pci = Hostdev::parse("pci:0000:0b:00.1").unwrap().to_xml();
        assert_eq!(
            pci,
            "<hostdev mode='subsystem' type='pci' managed='yes'>\n  <source>\n    \
             <address domain='0x0000' bus='0x0b' slot='0x00' function='0x1'/>\n  </source>\n</hostdev>\n"
        );
        let usb = Hostdev::parse("usb:046d:c52b").unwrap().to_xml();
        assert!(usb.contains("type='usb' managed='yes'"), "{usb}");
        assert!(usb.contains("<vendor id='0x046d'/>") && usb.contains("<product id='0xc52b'/>"), "{usb}");
    }

    #[test]
    fn same_slot_means_other_function() {
        let a = PciAddress::parse("0000:01:00.0").unwrap();
        assert!(a.same_slot(&PciAddress::parse("0000:01:00.1").unwrap()));
        assert!(!a.same_slot(&PciAddress::parse("0000:01:01.0").unwrap()));
    }
}
