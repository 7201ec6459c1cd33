//! libvirt's bulk domain statistics (`virConnectGetAllDomainStats`): every
//! running domain's CPU, balloon, vCPU, interface and block counters in one
//! round trip.
//!
//! virt 0.5's `Connect::get_all_domain_stats` hands back records whose only
//! field is a raw pointer, and never frees the list. This module calls the C
//! API itself, copies every typed parameter into owned Rust values, and frees
//! libvirt's list before it returns, on every path.
#![allow(unsafe_code)]

use crate::{Error, Libvirt, Result};
use std::ffi::CStr;
use std::os::raw::c_char;
use virt::sys;

/// One typed parameter's value (`virTypedParameterType`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Double(f64),
    Bool(bool),
    Str(String),
}

impl Value {
    /// The value as an unsigned counter (None for negatives, strings and booleans).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::UInt(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            Value::Double(v) if v >= 0.0 => Some(v as u64),
            _ => None,
        }
    }
}

/// The statistics of one domain: its name, UUID and libvirt's flat list of
/// fields (`state.state`, `cpu.time`, `block.0.wr.bytes`...).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStats {
    pub name: String,
    pub uuid: String,
    pub fields: Vec<(String, Value)>,
}

/// The groups asked for: what `phyllome stats` shows.
const GROUPS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_VCPU
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK;

/// Frees libvirt's record list when dropped, whatever happens while it is read.
struct RecordList(*mut sys::virDomainStatsRecordPtr);

impl Drop for RecordList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from virConnectGetAllDomainStats, which
            // allocated it for us; it is freed once, here, and not used after.
            unsafe { sys::virDomainStatsRecordListFree(self.0) };
        }
    }
}

/// Copies a NUL-terminated C string libvirt owns.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that outlives the call.
unsafe fn owned(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Copies one typed parameter.
///
/// # Safety
/// `p` must point to a valid `virTypedParameter` whose `type_` says which
/// union member is set (libvirt's contract for the records it returns).
pub(crate) unsafe fn param(p: &sys::virTypedParameter) -> Option<(String, Value)> {
    // `field` is a fixed 80-byte array, NUL-terminated by libvirt; read at most its length.
    let bytes: Vec<u8> = p.field.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    let name = String::from_utf8_lossy(&bytes).into_owned();
    // SAFETY: `type_` names the member libvirt set.
    let value = unsafe {
        match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => Value::Int(p.value.i as i64),
            sys::VIR_TYPED_PARAM_UINT => Value::UInt(p.value.ui as u64),
            sys::VIR_TYPED_PARAM_LLONG => Value::Int(p.value.l),
            sys::VIR_TYPED_PARAM_ULLONG => Value::UInt(p.value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
            sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
            sys::VIR_TYPED_PARAM_STRING => Value::Str(owned(p.value.s)?),
            _ => return None,
        }
    };
    Some((name, value))
}

impl Libvirt {
    /// The statistics of every running (or paused) domain, in one round trip.
    /// Domains that are shut off have no counters and are left out.
    pub fn running_domain_stats(&self) -> Result<Vec<DomainStats>> {
        let mut list: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: the connection pointer is valid while `self` lives; on success
        // libvirt stores a NULL-terminated array of records in `list`, which
        // RecordList frees.
        let n = unsafe {
            sys::virConnectGetAllDomainStats(
                self.conn.as_ptr(),
                GROUPS,
                &mut list,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
            )
        };
        let list = RecordList(list);
        if n < 0 {
            return Err(Error::new("domain statistics", virt::error::Error::last_error()));
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: libvirt returned `n` records, each a valid pointer until the list is freed.
            let rec = unsafe { *list.0.add(i) };
            if rec.is_null() {
                break;
            }
            // SAFETY: `rec` is valid (above); its `dom` is a domain libvirt keeps
            // referenced while the list lives, and its name belongs to it.
            let (dom, params, nparams) = unsafe { ((*rec).dom, (*rec).params, (*rec).nparams) };
            if dom.is_null() {
                continue;
            }
            let Some(name) = (unsafe { owned(sys::virDomainGetName(dom)) }) else { continue };
            let mut uuid_buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
            // SAFETY: the buffer has the VIR_UUID_STRING_BUFLEN bytes libvirt writes.
            let uuid = if unsafe { sys::virDomainGetUUIDString(dom, uuid_buf.as_mut_ptr()) } == 0 {
                // SAFETY: libvirt wrote a NUL-terminated string into the buffer.
                unsafe { owned(uuid_buf.as_ptr()) }.unwrap_or_default()
            } else {
                String::new()
            };
            let mut fields = Vec::with_capacity(nparams.max(0) as usize);
            if !params.is_null() {
                for j in 0..nparams.max(0) as usize {
                    // SAFETY: `params` has `nparams` entries, valid while the list lives.
                    if let Some(f) = unsafe { param(&*params.add(j)) } {
                        fields.push(f);
                    }
                }
            }
            out.push(DomainStats { name, uuid, fields });
        }
        drop(list);
        Ok(out)
    }

    /// Domains defined (running or not), for the host's summary: two cheap counts.
    pub fn domain_count(&self) -> Result<u32> {
        let active = self.conn.num_of_domains().map_err(|e| Error::new("count domains", e))?;
        let inactive = self.conn.num_of_defined_domains().map_err(|e| Error::new("count domains", e))?;
        Ok(active + inactive)
    }

    /// The host's memory (bytes) and logical CPUs, as libvirt sees them.
    pub fn node_memory_and_cpus(&self) -> Result<(u64, u32)> {
        let n = self.conn.node_info().map_err(|e| Error::new("host information", e))?;
        Ok((n.memory * 1024, n.cpus))
    }

    /// The name of the host libvirtd runs on.
    pub fn hostname(&self) -> Result<String> {
        self.conn.hostname().map_err(|e| Error::new("host name", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(name: &str, type_: u32, value: sys::_virTypedParameter__bindgen_ty_1) -> sys::virTypedParameter {
        let mut field = [0 as c_char; 80];
        for (i, b) in name.bytes().enumerate() {
            field[i] = b as c_char;
        }
        sys::virTypedParameter { field, type_: type_ as i32, value }
    }

    #[test]
    fn typed_parameters_are_copied_by_their_type() {
        let p = typed("cpu.time", sys::VIR_TYPED_PARAM_ULLONG, sys::_virTypedParameter__bindgen_ty_1 { ul: u64::MAX });
        assert_eq!(unsafe { param(&p) }, Some(("cpu.time".into(), Value::UInt(u64::MAX))));
        let p = typed("state.state", sys::VIR_TYPED_PARAM_INT, sys::_virTypedParameter__bindgen_ty_1 { i: -1 });
        assert_eq!(unsafe { param(&p) }.unwrap().1.as_u64(), None);
        let s = std::ffi::CString::new("vda").unwrap();
        let p = typed(
            "block.0.name",
            sys::VIR_TYPED_PARAM_STRING,
            sys::_virTypedParameter__bindgen_ty_1 { s: s.as_ptr() as *mut c_char },
        );
        assert_eq!(unsafe { param(&p) }, Some(("block.0.name".into(), Value::Str("vda".into()))));
        let p = typed("x", 99, sys::_virTypedParameter__bindgen_ty_1 { ul: 1 });
        assert_eq!(unsafe { param(&p) }, None, "an unknown type is skipped, not misread");
        // A field that fills all 80 bytes (no NUL) is read to its end, not past it.
        let long = "f".repeat(80);
        let p = typed(&long, sys::VIR_TYPED_PARAM_BOOLEAN, sys::_virTypedParameter__bindgen_ty_1 { b: 1 });
        assert_eq!(unsafe { param(&p) }, Some((long, Value::Bool(true))));
    }
}
