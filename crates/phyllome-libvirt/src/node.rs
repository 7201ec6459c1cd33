//! The host's memory as its libvirt reports it (`virNodeGetMemoryStats`),
//! which virt 0.5 does not wrap: what a destination can give a VM that moves
//! there is its available memory, not only what is free.
#![allow(unsafe_code)]

use crate::{Error, Libvirt, Result};
use std::ffi::CStr;
use virt::sys;

/// The host's memory figures, in bytes, as libvirt reads them from its `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMemory {
    pub total: u64,
    /// MemFree: unused, not counting what the kernel would give back.
    pub free: u64,
    pub buffers: u64,
    /// Cached (the page cache, shared memory included).
    pub cached: u64,
    /// MemAvailable, the kernel's own estimate of what can be given without swapping
    /// (reported by libvirt from 12.3 on; None before).
    pub available: Option<u64>,
}

impl Libvirt {
    /// The memory figures of this connection's host (all NUMA cells together).
    pub fn node_memory(&self) -> Result<NodeMemory> {
        let cells = sys::VIR_NODE_MEMORY_STATS_ALL_CELLS;
        let mut n: std::os::raw::c_int = 0;
        // SAFETY: the connection pointer is valid while `self` lives; with a null array
        // libvirt only writes the number of fields into `n`.
        let rc = unsafe { sys::virNodeGetMemoryStats(self.conn.as_ptr(), cells, std::ptr::null_mut(), &mut n, 0) };
        if rc < 0 || n <= 0 {
            return Err(Error::new("node memory", virt::error::Error::last_error()));
        }
        let mut params = vec![sys::virNodeMemoryStats { field: [0; 80], value: 0 }; n as usize];
        // SAFETY: `params` holds `n` elements, the count libvirt asked for; it writes at
        // most `n` of them and updates `n` to how many it wrote.
        let rc = unsafe { sys::virNodeGetMemoryStats(self.conn.as_ptr(), cells, params.as_mut_ptr(), &mut n, 0) };
        if rc < 0 {
            return Err(Error::new("node memory", virt::error::Error::last_error()));
        }
        let mut m = NodeMemory::default();
        for p in params.iter().take(n.max(0) as usize) {
            // SAFETY: libvirt writes each field name NUL-terminated within its 80 bytes
            // (VIR_NODE_MEMORY_STATS_FIELD_LENGTH); the array was zeroed, so a NUL is there anyway.
            let name = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_string_lossy();
            let bytes = p.value.saturating_mul(1024);
            match name.as_ref() {
                "total" => m.total = bytes,
                "free" => m.free = bytes,
                "buffers" => m.buffers = bytes,
                "cached" => m.cached = bytes,
                "available" => m.available = Some(bytes),
                _ => {}
            }
        }
        Ok(m)
    }
}
