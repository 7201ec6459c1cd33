//! Devices added to and removed from a domain (`phyllome attach`/`detach`):
//! always in the persistent definition, and in the running VM too when it
//! runs and libvirt allows it. (The persistent definition itself is
//! `Libvirt::inactive_xml`.)

use crate::{Error, Libvirt, Result};
use virt::sys;

/// Where a device change took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The VM was running (or paused) when the change was made.
    pub running: bool,
    /// The running VM has the change too (otherwise it applies from the next boot).
    pub live: bool,
    /// libvirt's reason for refusing the live change, when it did.
    pub live_error: Option<String>,
}

impl Libvirt {
    /// Adds a device (`<hostdev>`, `<disk>`...) to a domain's definition, and to the running VM when it runs.
    pub fn attach_device(&self, name: &str, xml: &str) -> Result<Applied> {
        self.change_device(name, xml, false)
    }

    /// Removes a device from a domain's definition, and from the running VM when it runs.
    /// libvirt matches the device by its identity (a hostdev by its source address or IDs).
    pub fn detach_device(&self, name: &str, xml: &str) -> Result<Applied> {
        self.change_device(name, xml, true)
    }

    fn change_device(&self, name: &str, xml: &str, detach: bool) -> Result<Applied> {
        let dom = self.domain(name)?;
        let op = if detach { format!("detach device from {name}") } else { format!("attach device to {name}") };
        let running = dom.is_active().map_err(|e| Error::new(format!("state of {name}"), e))?;
        let call = |flags: u32| {
            if detach {
                dom.detach_device_flags(xml, flags)
            } else {
                dom.attach_device_flags(xml, flags)
            }
        };
        let config = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if running {
            // Both at once: libvirt saves the definition only when the live change worked.
            match call(config | sys::VIR_DOMAIN_AFFECT_LIVE) {
                Ok(()) => return Ok(Applied { running, live: true, live_error: None }),
                Err(live) => {
                    call(config).map_err(|e| Error::new(op, e))?;
                    return Ok(Applied { running, live: false, live_error: Some(live.message().to_string()) });
                }
            }
        }
        call(config).map_err(|e| Error::new(op, e))?;
        Ok(Applied { running, live: false, live_error: None })
    }
}
