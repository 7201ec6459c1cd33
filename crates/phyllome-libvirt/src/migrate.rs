//! What a move to another libvirt host needs: files put on the destination
//! through libvirt's own storage API (the destination may be a remote host:
//! nothing here touches its file system directly), encrypted volumes made by
//! the destination's libvirt, the destination's free memory and CPU
//! comparison, and libvirt's peer-to-peer migration with its statistics.

use crate::files::Perms;
use crate::stats::Value;
use crate::{Error, Libvirt, Result};
use virt::sys;

/// Statistics of a migration (running or completed), as libvirt reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStats {
    pub active: bool,
    pub completed: bool,
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    pub disk_total: u64,
    pub disk_processed: u64,
    pub memory_total: u64,
    pub memory_processed: u64,
    /// Milliseconds the guest was paused at the switch-over (completed migrations).
    pub downtime_ms: Option<u64>,
    pub time_elapsed_ms: u64,
    pub error: Option<String>,
}

/// How a migration is asked.
#[derive(Debug, Clone, Default)]
pub struct MigrateAsk {
    pub live: bool,
    /// Copy the disks (libvirt's NBD copy into volumes made beforehand on the destination).
    pub copy_storage: bool,
    /// Leave the domain paused on the destination.
    pub paused: bool,
    /// Where QEMU sends the migration stream (`unix:///path` between hosts on one machine), else libvirt's choice.
    pub migrate_uri: Option<String>,
    /// Where the destination's NBD server listens for the disks, likewise.
    pub disks_uri: Option<String>,
    /// The disks (targets) to copy.
    pub disks: Vec<String>,
}

impl Libvirt {
    /// Deletes the volume `name` of `pool` only if it still has `key`; whether it did.
    pub fn delete_volume_by_key(&self, pool: &str, name: &str, key: &str) -> Result<bool> {
        let Ok(p) = self.conn.lookup_storage_pool_by_name(pool) else { return Ok(false) };
        let _ = p.refresh(0);
        let Ok(v) = p.lookup_storage_vol_by_name(name) else { return Ok(false) };
        if v.key().ok().as_deref() != Some(key) {
            return Ok(false);
        }
        v.delete(0).map_err(|e| Error::new(format!("delete volume {pool}/{name}"), e))?;
        Ok(true)
    }

    /// Writes a new file `dir/name` on the host of this connection (through a
    /// transient pool and a volume upload); its volume key. Refuses an existing file.
    pub fn upload_file(&self, dir: &str, name: &str, bytes: &[u8], mode: u32) -> Result<String> {
        let key = self.new_file(dir, name, bytes.len() as u64, Perms { mode, owner: None })?;
        if let Err(e) = self.fill_file(dir, name, &key, bytes) {
            // Not left half-written: the file this call made goes (it is still that key).
            let _ = self.remove_file(dir, name, &key);
            return Err(e);
        }
        Ok(key)
    }

    /// Writes a new volume `name` of `pool` holding `bytes` (a disk image made here, such
    /// as an empty LUKS qcow2), through libvirt's upload API; its key. libvirt then reads
    /// the image's format from the file, as for any file in a directory pool.
    pub fn upload_volume(&self, pool: &str, name: &str, bytes: &[u8], mode: u32) -> Result<String> {
        let key = self.new_volume(pool, name, bytes.len() as u64, Perms { mode, owner: None })?;
        if let Err(e) = self.fill_volume(pool, name, &key, bytes) {
            let _ = self.delete_volume_by_key(pool, name, &key);
            return Err(e);
        }
        Ok(key)
    }

    /// Removes a file [`Libvirt::upload_file`] made, only if it is still that volume (`key`).
    pub fn remove_uploaded(&self, dir: &str, name: &str, key: &str) -> Result<bool> {
        self.remove_file(dir, name, key)
    }

    /// The files of `dir` on the host of this connection whose names end with `suffix`
    /// (a transient directory pool over it, never built, so the folder is not changed;
    /// each file read by a volume download). At most `max_files` files of `max_bytes`
    /// each: larger ones are skipped. A folder that does not exist there: none.
    pub fn read_files(
        &self,
        dir: &str,
        suffix: &str,
        max_files: usize,
        max_bytes: u64,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(pool) = self.open_folder(dir, false).unwrap_or(None) else { return Ok(vec![]) };
        let r = (|| {
            let mut names = pool.list_volumes().map_err(|e| Error::new(format!("list {dir}"), e))?;
            names.retain(|n| n.ends_with(suffix));
            names.sort();
            names.truncate(max_files);
            let mut out = vec![];
            for n in names {
                let Ok(v) = pool.lookup_storage_vol_by_name(&n) else { continue };
                if v.info().map_or(true, |i| i.capacity > max_bytes) {
                    continue;
                }
                let bytes = self.download(&v, &format!("{dir}/{n}"), max_bytes)?;
                out.push((n, bytes));
            }
            Ok(out)
        })();
        let _ = pool.destroy();
        r
    }

    /// Logical CPUs and memory (MiB) of this connection's host.
    pub fn node_cpus_memory(&self) -> Result<(u32, u64)> {
        let n = self.conn.node_info().map_err(|e| Error::new("node info", e))?;
        Ok((n.cpus, n.memory / 1024))
    }

    /// Free memory of this connection's host, in bytes.
    pub fn free_memory(&self) -> Result<u64> {
        self.conn.free_memory().map_err(|e| Error::new("free memory", e))
    }

    /// libvirt's comparison of a `<cpu>` definition with this host's CPU:
    /// true when the host can run it (identical or superset).
    pub fn cpu_compatible(&self, cpu_xml: &str) -> Result<bool> {
        let r = self.conn.compare_cpu(cpu_xml, 0).map_err(|e| Error::new("compare CPU", e))?;
        Ok(r == sys::VIR_CPU_COMPARE_IDENTICAL || r == sys::VIR_CPU_COMPARE_SUPERSET)
    }

    /// Migrates `name` peer to peer to `dest_uri` (the source's libvirtd talks
    /// to the destination's), persistent there, the source kept defined (the
    /// caller removes it once the destination runs the VM). Blocks until done.
    pub fn migrate_p2p(&self, name: &str, dest_uri: &str, ask: &MigrateAsk) -> Result<()> {
        let dom = self.domain(name)?;
        let mut flags = sys::VIR_MIGRATE_PEER2PEER | sys::VIR_MIGRATE_PERSIST_DEST;
        if ask.live {
            flags |= sys::VIR_MIGRATE_LIVE;
        }
        if ask.copy_storage {
            flags |= sys::VIR_MIGRATE_NON_SHARED_DISK;
        }
        if ask.paused {
            flags |= sys::VIR_MIGRATE_PAUSED;
        }
        let params = virt::domain::MigrateParameters {
            uri: ask.migrate_uri.clone(),
            disks_uri: ask.disks_uri.clone(),
            migrate_disks: ask.disks.clone(),
            ..Default::default()
        };
        dom.migrate_to_uri3(Some(dest_uri), params, flags).map_err(|e| Error::new(format!("migrate {name}"), e))
    }

    /// The statistics of `name`'s running migration, or of the last completed one.
    pub fn migration_stats(&self, name: &str) -> Result<MigrationStats> {
        let get = |f: &[(String, Value)], key: &str| f.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_u64());
        let fill = |f: &[(String, Value)], active: bool, completed: bool| MigrationStats {
            active,
            completed,
            data_total: get(f, "data_total").unwrap_or(0),
            data_processed: get(f, "data_processed").unwrap_or(0),
            data_remaining: get(f, "data_remaining").unwrap_or(0),
            disk_total: get(f, "disk_total").unwrap_or(0),
            disk_processed: get(f, "disk_processed").unwrap_or(0),
            memory_total: get(f, "memory_total").unwrap_or(0),
            memory_processed: get(f, "memory_processed").unwrap_or(0),
            downtime_ms: get(f, "downtime"),
            time_elapsed_ms: get(f, "time_elapsed").unwrap_or(0),
            error: f.iter().find(|(k, _)| k == "errmsg").and_then(|(_, v)| match v {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            }),
        };
        let (kind, now) = self.job_stats(name, 0)?;
        if kind == sys::VIR_DOMAIN_JOB_BOUNDED as i32 || kind == sys::VIR_DOMAIN_JOB_UNBOUNDED as i32 {
            return Ok(fill(&now, true, false));
        }
        // Kept: a progress poll must not take the figures the caller reads at the end.
        let (kind, done) =
            self.job_stats(name, sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)?;
        Ok(fill(&done, false, kind == sys::VIR_DOMAIN_JOB_COMPLETED as i32))
    }
}
