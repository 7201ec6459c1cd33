//! What snapshots ask of libvirt that virt 0.5 has no wrapper for: saving a
//! domain's memory to a file, a push-mode disk backup, aborting a job, and the
//! guest agent's filesystem freeze. Each is one libvirt call through `virt::sys`.

#![allow(unsafe_code)]

use crate::stats::Value;
use crate::{Error, Libvirt, Result};
use std::ffi::CString;
use virt::sys;

/// A domain's background job, as far as snapshots care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    /// A job is still running.
    pub active: bool,
    /// The last job completed (false: failed or cancelled); meaningful when not active.
    pub completed: bool,
    pub processed: u64,
    pub total: u64,
    /// libvirt's message for a failed job.
    pub error: Option<String>,
}

fn cstring(op: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error { op: op.into(), message: "contains a NUL byte".into(), code: 0 })
}

/// libvirt's last error, for a raw call that returned -1.
fn last_error(op: String) -> Error {
    Error::new(op, virt::error::Error::last_error())
}

impl Libvirt {
    /// Saves the domain's memory and device state to `path` (libvirtd writes it)
    /// and stops the domain; [`Libvirt::restore`] brings it back.
    pub fn save(&self, name: &str, path: &str) -> Result<()> {
        let dom = self.domain(name)?;
        let c_path = cstring("save", path)?;
        // SAFETY: `dom` is a live domain handle for the whole call; `c_path` is a
        // NUL-terminated string that outlives it; a null dxml is allowed by the API.
        let rc = unsafe { sys::virDomainSaveFlags(dom.as_ptr(), c_path.as_ptr(), std::ptr::null(), 0) };
        if rc < 0 {
            return Err(last_error(format!("save {name}")));
        }
        Ok(())
    }

    /// Starts a domain from a file [`Libvirt::save`] wrote, running or paused.
    pub fn restore(&self, path: &str, paused: bool) -> Result<()> {
        let flags = if paused { sys::VIR_DOMAIN_SAVE_PAUSED } else { sys::VIR_DOMAIN_SAVE_RUNNING };
        self.conn.restore_domain_flags(path, None, flags).map_err(|e| Error::new("restore", e))
    }

    /// Begins a push-mode backup described by `xml` (`<domainbackup>`): QEMU
    /// copies each disk as it was at this moment while the guest runs on.
    pub fn backup_begin(&self, name: &str, xml: &str) -> Result<()> {
        let dom = self.domain(name)?;
        let c_xml = cstring("backup", xml)?;
        // SAFETY: `dom` is a live handle; `c_xml` is NUL-terminated and outlives the
        // call; a null checkpoint XML means "no checkpoint", as documented.
        let rc = unsafe { sys::virDomainBackupBegin(dom.as_ptr(), c_xml.as_ptr(), std::ptr::null(), 0) };
        if rc < 0 {
            return Err(last_error(format!("backup {name}")));
        }
        Ok(())
    }

    /// The domain's running job, or how the last one ended.
    pub fn job(&self, name: &str) -> Result<Job> {
        let (kind, now) = self.job_stats(name, 0)?;
        let field = |f: &[(String, Value)], key: &str| f.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_u64());
        let bytes = |f: &[(String, Value)]| {
            (
                field(f, "disk_processed").or(field(f, "data_processed")).unwrap_or(0),
                field(f, "disk_total").or(field(f, "data_total")).unwrap_or(0),
            )
        };
        if kind == sys::VIR_DOMAIN_JOB_BOUNDED as i32 || kind == sys::VIR_DOMAIN_JOB_UNBOUNDED as i32 {
            let (processed, total) = bytes(&now);
            return Ok(Job { active: true, completed: false, processed, total, error: None });
        }
        let (kind, done) = self.job_stats(name, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)?;
        let (processed, total) = bytes(&done);
        let error = done.iter().find(|(k, _)| k == "errmsg").and_then(|(_, v)| match v {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        });
        Ok(Job { active: false, completed: kind == sys::VIR_DOMAIN_JOB_COMPLETED as i32, processed, total, error })
    }

    /// virDomainGetJobStats, copied into owned values and freed by libvirt's own
    /// function (virt 0.5's `job_stats` builds a Vec from libvirt's allocation,
    /// and from a null pointer when there is no job).
    pub(crate) fn job_stats(&self, name: &str, flags: u32) -> Result<(i32, Vec<(String, Value)>)> {
        let dom = self.domain(name)?;
        let mut kind: std::os::raw::c_int = 0;
        let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
        let mut n: std::os::raw::c_int = 0;
        // SAFETY: `dom` is a live handle; the out-pointers are valid locals that
        // libvirt fills with a list it allocates (or leaves null and 0).
        let rc = unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut n, flags) };
        if rc < 0 {
            return Err(last_error(format!("job of {name}")));
        }
        let mut out = Vec::new();
        if !params.is_null() {
            for i in 0..n.max(0) as usize {
                // SAFETY: libvirt returned `n` parameters at `params`, alive until freed below.
                if let Some(f) = unsafe { crate::stats::param(&*params.add(i)) } {
                    out.push(f);
                }
            }
            // SAFETY: `params`/`n` are exactly what libvirt allocated; freed once, not used after.
            unsafe { sys::virTypedParamsFree(params, n) };
        }
        Ok((kind, out))
    }

    /// Aborts the domain's running job (a backup...).
    pub fn abort_job(&self, name: &str) -> Result<()> {
        let dom = self.domain(name)?;
        // SAFETY: `dom` is a live handle for the whole call.
        let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
        if rc < 0 {
            return Err(last_error(format!("abort the job of {name}")));
        }
        Ok(())
    }

    /// Asks the guest agent to freeze the guest's filesystems; the number frozen.
    /// Fails when no agent answers.
    pub fn fs_freeze(&self, name: &str) -> Result<u32> {
        let dom = self.domain(name)?;
        // SAFETY: `dom` is a live handle; no mount points (null, 0) means all of them.
        let rc = unsafe { sys::virDomainFSFreeze(dom.as_ptr(), std::ptr::null_mut(), 0, 0) };
        if rc < 0 {
            return Err(last_error(format!("freeze {name}'s filesystems")));
        }
        Ok(rc as u32)
    }

    /// Thaws what [`Libvirt::fs_freeze`] froze.
    pub fn fs_thaw(&self, name: &str) -> Result<()> {
        let dom = self.domain(name)?;
        // SAFETY: `dom` is a live handle; null, 0 means all mount points.
        let rc = unsafe { sys::virDomainFSThaw(dom.as_ptr(), std::ptr::null_mut(), 0, 0) };
        if rc < 0 {
            return Err(last_error(format!("thaw {name}'s filesystems")));
        }
        Ok(())
    }
}
