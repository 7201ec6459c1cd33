//! libvirt's domain lifecycle events, for `phyllome serve` to show state
//! changes as they happen.
//!
//! virt 0.5 wraps libvirt's event loop but not the domain event callbacks,
//! so this module registers one through the C API, kept to two small
//! callbacks that never panic. (Unsafe code lives here, in `stats.rs`, and in
//! phyllome-web's one `mallopt` call, nowhere else.)
#![allow(unsafe_code)]

use crate::{Error, Libvirt, Result};
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;
use virt::sys;

/// What happened to a domain (libvirt's `virDomainEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    Other,
}

impl Lifecycle {
    fn from_raw(event: c_int) -> Lifecycle {
        match event as sys::virDomainEventType {
            sys::VIR_DOMAIN_EVENT_DEFINED => Lifecycle::Defined,
            sys::VIR_DOMAIN_EVENT_UNDEFINED => Lifecycle::Undefined,
            sys::VIR_DOMAIN_EVENT_STARTED => Lifecycle::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => Lifecycle::Suspended,
            sys::VIR_DOMAIN_EVENT_RESUMED => Lifecycle::Resumed,
            sys::VIR_DOMAIN_EVENT_STOPPED => Lifecycle::Stopped,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => Lifecycle::Shutdown,
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Lifecycle::PmSuspended,
            sys::VIR_DOMAIN_EVENT_CRASHED => Lifecycle::Crashed,
            _ => Lifecycle::Other,
        }
    }
}

/// A lifecycle event of the domain `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub name: String,
    pub kind: Lifecycle,
}

type Callback = Box<dyn Fn(DomainEvent) + Send + Sync>;

/// Installs libvirt's default event loop and runs it on a thread of its own.
/// Must be called before the connections that watch events are opened;
/// later calls do nothing.
pub fn start_event_loop() -> Result<()> {
    static STARTED: OnceLock<std::result::Result<(), (String, i32)>> = OnceLock::new();
    let r = STARTED.get_or_init(|| {
        virt::event::event_register_default_impl().map_err(|e| (e.message().to_string(), e.code().to_raw() as i32))?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .map_err(|e| (e.to_string(), 0))?;
        Ok(())
    });
    r.clone().map_err(|(message, code)| Error { op: "libvirt event loop".into(), message, code })
}

/// Called by libvirt's event loop thread. Must not panic (it would unwind into C).
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    // SAFETY: `opaque` is the Box<Callback> leaked by `watch_lifecycle`, alive
    // until libvirt calls `free_callback`; `dom` is valid for this call, and the
    // name it returns is owned by the domain object.
    let f = unsafe { &*(opaque as *const Callback) };
    let name = unsafe { sys::virDomainGetName(dom) };
    if name.is_null() {
        return 0;
    }
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    let event = DomainEvent { name, kind: Lifecycle::from_raw(event) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(event)));
    0
}

/// Called by libvirt when the registration goes away (the connection closed).
unsafe extern "C" fn free_callback(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the pointer came from Box::into_raw in `watch_lifecycle`, and libvirt calls this once.
        drop(unsafe { Box::from_raw(opaque as *mut Callback) });
    }
}

impl Libvirt {
    /// Calls `f` (on libvirt's event loop thread) with every domain lifecycle
    /// event on this connection, until the connection closes. Needs
    /// [`start_event_loop`] before the connection was opened.
    pub fn watch_lifecycle(&self, f: impl Fn(DomainEvent) + Send + Sync + 'static) -> Result<()> {
        let callback: Callback = Box::new(f);
        let opaque = Box::into_raw(Box::new(callback)) as *mut c_void;
        // SAFETY: the connection pointer is valid while `self` lives; libvirt
        // keeps `opaque` until it calls `free_callback`.
        let ret = unsafe {
            sys::virConnectDomainEventRegister(self.conn.as_ptr(), Some(on_lifecycle), opaque, Some(free_callback))
        };
        if ret < 0 {
            // SAFETY: libvirt did not take the pointer.
            drop(unsafe { Box::from_raw(opaque as *mut Callback) });
            return Err(Error::new("register domain lifecycle events", virt::error::Error::last_error()));
        }
        Ok(())
    }

    /// Whether the connection to libvirtd is still open (a local check, no round trip).
    pub fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_map() {
        assert_eq!(Lifecycle::from_raw(sys::VIR_DOMAIN_EVENT_STARTED as c_int), Lifecycle::Started);
        assert_eq!(Lifecycle::from_raw(sys::VIR_DOMAIN_EVENT_UNDEFINED as c_int), Lifecycle::Undefined);
        assert_eq!(Lifecycle::from_raw(99), Lifecycle::Other);
    }
}
