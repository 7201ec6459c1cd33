//! libvirt's bulk domain statistics (`virConnectGetAllDomainStats`): every
//! running domain's CPU, balloon, vCPU, interface and block counters in one
//! round trip.
//!
//! virt 0.5's `Connect::get_all_domain_stats` hands back records whose only
//! field is a raw pointer, and never frees the list. This module calls the C
//! API itself, copies every typed parameter into owned Rust values, and frees
//! libvirt's list before it returns, on every path.
//!
//! One domain must not hold up the others. The block and balloon groups need
//! the domain's job and an answer from its QEMU; a QEMU that is stopped
//! (SIGSTOP) or hung never answers, and libvirt waits for it without end. So
//! the call is asked with `VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT` (a domain
//! whose job another call holds is read without QEMU, not waited for) from a
//! thread of its own on a reference of the connection, and waited for at most
//! [`STATS_WITHIN`]: past that, the call is left to its thread (it holds the
//! stuck domain's job until QEMU answers) and asked again, and the second call
//! reads that domain without QEMU. A domain read without QEMU is told apart by
//! libvirt's control state (`virDomainGetControlInfo`): a command unanswered
//! for over a second is a stuck QEMU, another job is a busy domain. A call
//! that fails (a domain went away in the middle) is asked again, then domain
//! by domain, so a VM coming or going never fails the whole sample.
#![allow(unsafe_code)]

use crate::{Error, Libvirt, Result};
use std::ffi::CStr;
use std::os::raw::c_char;
use std::sync::mpsc::Sender;
use std::time::Duration;
use virt::sys;

/// How long one statistics call is waited for before the domains whose QEMU
/// does not answer are left to it and the others asked again.
pub const STATS_WITHIN: Duration = Duration::from_secs(2);

/// A command its QEMU has not answered for this long: the domain is stuck.
const STUCK_AFTER_MS: u64 = 1000;

/// Calls a sample may make when domains keep getting stuck or going away.
const ATTEMPTS: u32 = 4;

/// The longest [`Libvirt::running_domain_stats`] takes.
pub const STATS_MAX: Duration = Duration::from_secs(STATS_WITHIN.as_secs() * ATTEMPTS as u64);

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

/// Whether a domain's QEMU gave its part of the statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Monitor {
    /// Every group asked for came back.
    #[default]
    Answered,
    /// Another job held the domain: what QEMU gives (disk counters, the
    /// balloon's guest figures, QEMU's RSS) is missing from this sample.
    Busy,
    /// Its QEMU has not answered a command for over a second (stopped, hung):
    /// only what libvirt knows without it is there.
    Stuck,
}

/// The statistics of one domain: its name, UUID and libvirt's flat list of
/// fields (`state.state`, `cpu.time`, `block.0.wr.bytes`...).
#[derive(Debug, Clone, PartialEq)]
pub struct DomainStats {
    pub name: String,
    pub uuid: String,
    pub fields: Vec<(String, Value)>,
    pub monitor: Monitor,
}

impl DomainStats {
    /// Whether the record holds what only QEMU gives: `balloon.rss` comes with the job
    /// libvirt takes to ask QEMU (any running domain has it then, balloon or not).
    fn answered(&self) -> bool {
        let active = self.fields.iter().any(|(k, v)| k == "state.state" && matches!(v.as_u64(), Some(1..=3)));
        !active || self.fields.iter().any(|(k, _)| k == "balloon.rss")
    }
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

/// The flags of every call: running and paused domains, none waited for while another call holds it.
const FLAGS: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;

/// What one call on the worker thread gives.
type Call = Result<Vec<DomainStats>>;

/// The statistics of every running domain, with the state of each one read without QEMU.
fn all_domains(conn: &virt::connect::Connect) -> Call {
    let mut list: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: the connection is valid while `conn` lives; on success libvirt
    // stores a NULL-terminated array of records in `list`, which RecordList frees.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), GROUPS, &mut list, FLAGS) };
    let list = RecordList(list);
    if n < 0 {
        return Err(Error::new("domain statistics", virt::error::Error::last_error()));
    }
    Ok(records(&list, n))
}

/// The same, one domain at a time: a domain that fails (it went away) is left out.
fn each_domain(conn: &virt::connect::Connect) -> Call {
    let doms = conn
        .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        .map_err(|e| Error::new("list running domains", e))?;
    let mut out = Vec::with_capacity(doms.len());
    for d in &doms {
        let mut one = [
            // SAFETY: `d` keeps the domain referenced for the call; the array ends with NULL as libvirt wants.
            unsafe { d.as_ptr() },
            std::ptr::null_mut(),
        ];
        let mut list: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: `one` is a NULL-terminated array of valid domains; RecordList frees what libvirt stores.
        let n = unsafe { sys::virDomainListGetStats(one.as_mut_ptr(), GROUPS, &mut list, FLAGS) };
        let list = RecordList(list);
        if n > 0 {
            out.extend(records(&list, n));
        }
    }
    Ok(out)
}

/// libvirt's control state of a domain: (state, for how many ms).
///
/// # Safety
/// `dom` must be a valid domain pointer for the duration of the call.
unsafe fn control(dom: sys::virDomainPtr) -> Option<(u32, u64)> {
    let mut info = sys::virDomainControlInfo { state: 0, details: 0, stateTime: 0 };
    // SAFETY: the caller's contract; `info` is a valid out parameter.
    (unsafe { sys::virDomainGetControlInfo(dom, &mut info, 0) } == 0).then_some((info.state, info.stateTime))
}

/// Copies `n` records of `list`, and tells for each domain read without QEMU whether it is busy or stuck.
fn records(list: &RecordList, n: i32) -> Vec<DomainStats> {
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) as usize {
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
        let mut d = DomainStats { name, uuid, fields, monitor: Monitor::Answered };
        if !d.answered() {
            // SAFETY: `dom` is valid while the list lives (above).
            d.monitor = match unsafe { control(dom) } {
                Some((sys::VIR_DOMAIN_CONTROL_OCCUPIED, ms)) if ms >= STUCK_AFTER_MS => Monitor::Stuck,
                Some((sys::VIR_DOMAIN_CONTROL_ERROR, _)) => Monitor::Stuck,
                _ => Monitor::Busy,
            };
        }
        out.push(d);
    }
    out
}

/// Statistics calls of this process that libvirtd has not answered yet (one a
/// stuck QEMU, while it stays stuck). libvirtd serves at most 5 calls of a client
/// at once (`max_client_requests`) and queues the rest: past 4 unanswered, a new
/// call would only wait behind them, so none is asked.
static UNANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_UNANSWERED: usize = 4;

/// Runs `call` on a thread of its own with a reference of the connection, its result
/// sent to `tx`; false when none may be asked now ([`MAX_UNANSWERED`]). The thread goes
/// on alone if nobody waits for it any more (its reference keeps the connection open
/// until the call returns).
fn ask(conn: &virt::connect::Connect, call: fn(&virt::connect::Connect) -> Call, tx: &Sender<Call>) -> bool {
    use std::sync::atomic::Ordering;
    if UNANSWERED.fetch_add(1, Ordering::SeqCst) >= MAX_UNANSWERED {
        UNANSWERED.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    let (conn, tx) = (conn.clone(), tx.clone());
    let spawned = std::thread::Builder::new().name("libvirt-stats".into()).spawn(move || {
        let r = call(&conn);
        UNANSWERED.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send(r);
    });
    if spawned.is_err() {
        UNANSWERED.fetch_sub(1, Ordering::SeqCst);
    }
    spawned.is_ok()
}

impl Libvirt {
    /// The statistics of every running (or paused) domain. Domains that are shut
    /// off have no counters and are left out; a domain whose QEMU does not answer
    /// is read without it and marked [`Monitor::Stuck`] (see the module's documentation).
    /// Takes at most [`STATS_MAX`].
    pub fn running_domain_stats(&self) -> Result<Vec<DomainStats>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut last = None;
        let mut asked = 0;
        for attempt in 0..ATTEMPTS {
            // Twice the whole list, then domain by domain (one that fails is left out).
            let call = if attempt < 2 { all_domains } else { each_domain };
            if ask(&self.conn, call, &tx) {
                asked += 1;
            } else if asked == 0 {
                break;
            }
            // Any call of this sample may answer first: a slow one asked before, or this one
            // (which reads a domain whose QEMU holds the slow one's job without QEMU).
            let until = std::time::Instant::now() + STATS_WITHIN;
            match rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if e.is_unavailable() => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {}
            }
        }
        Err(last.unwrap_or_else(|| Error {
            op: "domain statistics".into(),
            message: format!(
                "libvirtd has not answered within {} s ({} calls of this process still unanswered)",
                STATS_MAX.as_secs(),
                UNANSWERED.load(std::sync::atomic::Ordering::SeqCst)
            ),
            code: 0,
        }))
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
