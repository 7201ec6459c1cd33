//! What a move to another libvirt host needs: files put on the destination
//! through libvirt's own storage API (the destination may be a remote host:
//! nothing here touches its file system directly), encrypted volumes made by
//! the destination's libvirt, the destination's free memory and CPU
//! comparison, and libvirt's peer-to-peer migration with its statistics.

use crate::stats::Value;
use crate::{Error, Libvirt, Result};
use phyllome_model::xml::Element;
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

    /// A transient directory pool at `dir` for one transfer (built, so the folder exists), removed by the caller.
    fn transfer_pool(&self, dir: &str) -> Result<virt::storage_pool::StoragePool> {
        let name = format!("phyllome-transfer-{}", std::process::id());
        let xml = Element::new("pool")
            .attr("type", "dir")
            .child(Element::leaf("name", &name))
            .child(Element::new("target").child(Element::leaf("path", dir)))
            .render();
        self.conn
            .create_storage_pool_xml(&xml, sys::VIR_STORAGE_POOL_CREATE_WITH_BUILD)
            .map_err(|e| Error::new(format!("a transfer pool for {dir}"), e))
    }

    /// Writes a new file `dir/name` on the host of this connection (through a
    /// transient pool and a volume upload); its volume key. Refuses an existing file.
    pub fn upload_file(&self, dir: &str, name: &str, bytes: &[u8], mode: u32) -> Result<String> {
        let pool = self.transfer_pool(dir)?;
        let r = self.upload_into(&pool, dir, name, bytes, mode);
        let _ = pool.destroy();
        r
    }

    /// Writes a new volume `name` of `pool` holding `bytes` (a disk image made here, such
    /// as an empty LUKS qcow2), through libvirt's upload API; its key. libvirt then reads
    /// the image's format from the file, as for any file in a directory pool.
    pub fn upload_volume(&self, pool: &str, name: &str, bytes: &[u8], mode: u32) -> Result<String> {
        let p =
            self.conn.lookup_storage_pool_by_name(pool).map_err(|e| Error::new(format!("storage pool {pool}"), e))?;
        let key = self.upload_into(&p, pool, name, bytes, mode)?;
        let _ = p.refresh(0);
        Ok(key)
    }

    fn upload_into(
        &self,
        pool: &virt::storage_pool::StoragePool,
        dir: &str,
        name: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<String> {
        if pool.lookup_storage_vol_by_name(name).is_ok() {
            return Err(Error {
                op: format!("upload {dir}/{name}"),
                message: "the file exists there already".into(),
                code: 0,
            });
        }
        let xml = Element::new("volume")
            .child(Element::leaf("name", name))
            .child(Element::leaf("capacity", bytes.len().max(1).to_string()).attr("unit", "B"))
            .child(
                Element::new("target")
                    .child(Element::new("format").attr("type", "raw"))
                    .child(Element::new("permissions").child(Element::leaf("mode", format!("{mode:04o}")))),
            )
            .render();
        let v = virt::storage_vol::StorageVol::create_xml(pool, &xml, 0)
            .map_err(|e| Error::new(format!("create {dir}/{name}"), e))?;
        let key = v.key().map_err(|e| Error::new("volume key", e))?;
        let r = (|| {
            let stream = virt::stream::Stream::new(&self.conn, 0).map_err(|e| Error::new("new stream", e))?;
            v.upload(&stream, 0, bytes.len() as u64, 0).map_err(|e| Error::new(format!("upload {dir}/{name}"), e))?;
            let mut off = 0;
            while off < bytes.len() {
                let end = (off + (1 << 20)).min(bytes.len());
                let n = stream.send(&bytes[off..end]).map_err(|e| Error::new(format!("upload {dir}/{name}"), e))?;
                if n == 0 {
                    return Err(Error {
                        op: format!("upload {dir}/{name}"),
                        message: "the stream closed".into(),
                        code: 0,
                    });
                }
                off += n as usize;
            }
            stream.finish().map_err(|e| Error::new(format!("upload {dir}/{name}"), e))
        })();
        if let Err(e) = r {
            // Not left half-written: the volume this call made goes (it is still that key).
            let _ = v.delete(0);
            return Err(e);
        }
        Ok(key)
    }

    /// Removes a file [`Libvirt::upload_file`] made, only if it is still that volume (`key`).
    pub fn remove_uploaded(&self, dir: &str, name: &str, key: &str) -> Result<bool> {
        let pool = self.transfer_pool(dir)?;
        let r = match pool.lookup_storage_vol_by_name(name) {
            Ok(v) if v.key().ok().as_deref() == Some(key) => {
                v.delete(0).map(|_| true).map_err(|e| Error::new(format!("delete {dir}/{name}"), e))
            }
            _ => Ok(false),
        };
        let _ = pool.destroy();
        r
    }

    /// Whether the folder `dir` exists on the host of this connection (a transient
    /// directory pool over it, never built, so nothing there changes).
    pub fn dir_exists(&self, dir: &str) -> Result<bool> {
        let xml = Element::new("pool")
            .attr("type", "dir")
            .child(Element::leaf("name", format!("phyllome-look-{}", std::process::id())))
            .child(Element::new("target").child(Element::leaf("path", dir)))
            .render();
        match self.conn.create_storage_pool_xml(&xml, 0) {
            Ok(p) => {
                let _ = p.destroy();
                Ok(true)
            }
            // libvirt cannot open a folder that is not there ("cannot open directory ...").
            Err(e) if e.message().contains("No such file or directory") => Ok(false),
            Err(e) => Err(Error::new(format!("look for {dir}"), e)),
        }
    }

    /// Removes the folder `dir` on the host of this connection if it is empty (libvirt's
    /// delete of a directory pool is an rmdir, which leaves a folder with anything in it);
    /// whether it did. The pool is defined only for the call, never started.
    pub fn remove_empty_dir(&self, dir: &str) -> Result<bool> {
        let xml = Element::new("pool")
            .attr("type", "dir")
            .child(Element::leaf("name", format!("phyllome-rmdir-{}", std::process::id())))
            .child(Element::new("target").child(Element::leaf("path", dir)))
            .render();
        let pool =
            self.conn.define_storage_pool_xml(&xml, 0).map_err(|e| Error::new(format!("a pool over {dir}"), e))?;
        let removed = pool.delete(0).is_ok();
        let _ = pool.undefine();
        Ok(removed)
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
        let name = format!("phyllome-read-{}", std::process::id());
        let xml = Element::new("pool")
            .attr("type", "dir")
            .child(Element::leaf("name", &name))
            .child(Element::new("target").child(Element::leaf("path", dir)))
            .render();
        let pool = match self.conn.create_storage_pool_xml(&xml, 0) {
            Ok(p) => p,
            // No such folder there (libvirt cannot start the pool).
            Err(_) => return Ok(vec![]),
        };
        let r = (|| {
            let mut names = pool.list_volumes().map_err(|e| Error::new(format!("list {dir}"), e))?;
            names.retain(|n| n.ends_with(suffix));
            names.sort();
            names.truncate(max_files);
            let mut out = vec![];
            for n in names {
                let Ok(v) = pool.lookup_storage_vol_by_name(&n) else { continue };
                let Ok(info) = v.info() else { continue };
                if info.capacity > max_bytes {
                    continue;
                }
                let stream = virt::stream::Stream::new(&self.conn, 0).map_err(|e| Error::new("new stream", e))?;
                v.download(&stream, 0, info.capacity, 0).map_err(|e| Error::new(format!("read {dir}/{n}"), e))?;
                let mut bytes = vec![];
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let got = stream.recv(&mut buf).map_err(|e| Error::new(format!("read {dir}/{n}"), e))?;
                    if got <= 0 {
                        break;
                    }
                    bytes.extend_from_slice(&buf[..got as usize]);
                    if bytes.len() as u64 > max_bytes {
                        break;
                    }
                }
                let _ = stream.finish();
                if bytes.len() as u64 <= max_bytes {
                    out.push((n, bytes));
                }
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
