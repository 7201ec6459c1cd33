//! A VM found by name: its definition read back, its state; `NoSuchVm` when there is none.

use super::error::{Result, VmError};
use crate::domxml::{self, DomainSummary};
use phyllome_libvirt::{Libvirt, State};

pub fn summary(lv: &Libvirt, name: &str) -> Result<DomainSummary> {
    let xml = lv.xml(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })?;
    domxml::parse(&xml).map_err(|e| VmError::Xml(name.into(), e))
}

pub(crate) fn state(lv: &Libvirt, name: &str) -> Result<State> {
    lv.state(name).map_err(|e| if e.is_no_domain() { VmError::NoSuchVm(name.into()) } else { e.into() })
}
