//! Storage pools and volumes.

use crate::{Error, Libvirt, Result};
use phyllome_model::xml::Element;
use virt::sys;

/// What a volume is: its path and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub path: String,
    pub capacity: u64,
    pub allocation: u64,
}

fn is_no_vol(e: &virt::error::Error) -> bool {
    e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_VOL
}

impl Libvirt {
    pub(crate) fn pool(&self, name: &str) -> Result<virt::storage_pool::StoragePool> {
        self.conn.lookup_storage_pool_by_name(name).map_err(|e| Error::new(format!("storage pool {name}"), e))
    }

    /// Makes sure a directory pool `name` at `path` exists, is built, active and autostarted.
    /// Returns true when it had to define it.
    pub fn ensure_dir_pool(&self, name: &str, path: &str) -> Result<bool> {
        let (pool, created) = match self.conn.lookup_storage_pool_by_name(name) {
            Ok(p) => (p, false),
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => {
                let xml = phyllome_pool_xml(name, path);
                let p = self
                    .conn
                    .define_storage_pool_xml(&xml, 0)
                    .map_err(|e| Error::new(format!("define storage pool {name}"), e))?;
                p.build(0).map_err(|e| Error::new(format!("build storage pool {name}"), e))?;
                let _ = p.set_autostart(true);
                (p, true)
            }
            Err(e) => return Err(Error::new(format!("storage pool {name}"), e)),
        };
        if !pool.is_active().map_err(|e| Error::new(format!("storage pool {name}"), e))? {
            pool.create(0).map_err(|e| Error::new(format!("start storage pool {name}"), e))?;
        }
        Ok(created)
    }

    /// Re-reads a pool's directory (after a volume was made outside libvirt).
    /// Free bytes in an existing pool (None when there is no such pool).
    pub fn pool_free(&self, name: &str) -> Result<Option<u64>> {
        match self.conn.lookup_storage_pool_by_name(name) {
            Ok(p) => {
                let _ = p.refresh(0);
                Ok(Some(p.info().map_err(|e| Error::new(format!("storage pool {name}"), e))?.available))
            }
            Err(e) if e.code().to_raw() == virt::sys::VIR_ERR_NO_STORAGE_POOL => Ok(None),
            Err(e) => Err(Error::new(format!("storage pool {name}"), e)),
        }
    }

    /// The volumes of a pool, by name (none when there is no such pool).
    pub fn volumes(&self, pool: &str) -> Result<Vec<(String, VolumeInfo)>> {
        let p = match self.conn.lookup_storage_pool_by_name(pool) {
            Ok(p) => p,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => return Ok(Vec::new()),
            Err(e) => return Err(Error::new(format!("storage pool {pool}"), e)),
        };
        let _ = p.refresh(0);
        let mut out = Vec::new();
        for v in p.list_all_volumes(0).map_err(|e| Error::new(format!("volumes of {pool}"), e))? {
            let (Ok(name), Ok(path), Ok(info)) = (v.name(), v.path(), v.info()) else { continue };
            out.push((name, VolumeInfo { path, capacity: info.capacity, allocation: info.allocation }));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn refresh_pool(&self, pool: &str) -> Result<()> {
        self.pool(pool)?.refresh(0).map_err(|e| Error::new(format!("refresh storage pool {pool}"), e))
    }

    pub fn volume_info(&self, pool: &str, volume: &str) -> Result<Option<VolumeInfo>> {
        let p = match self.conn.lookup_storage_pool_by_name(pool) {
            Ok(p) => p,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => return Ok(None),
            Err(e) => return Err(Error::new(format!("storage pool {pool}"), e)),
        };
        match p.lookup_storage_vol_by_name(volume) {
            Ok(v) => {
                let info = v.info().map_err(|e| Error::new(format!("volume {volume}"), e))?;
                let path = v.path().map_err(|e| Error::new(format!("volume {volume}"), e))?;
                Ok(Some(VolumeInfo { path, capacity: info.capacity, allocation: info.allocation }))
            }
            Err(e) if is_no_vol(&e) => Ok(None),
            Err(e) => Err(Error::new(format!("volume {volume}"), e)),
        }
    }

    /// Grows a volume to `capacity` bytes (libvirt runs `qemu-img resize`, with the
    /// volume's LUKS secret when it is encrypted). A smaller capacity is refused by libvirt.
    pub fn grow_volume(&self, pool: &str, volume: &str, capacity: u64) -> Result<()> {
        let v = self
            .pool(pool)?
            .lookup_storage_vol_by_name(volume)
            .map_err(|e| Error::new(format!("volume {pool}/{volume}"), e))?;
        v.resize(capacity, 0).map_err(|e| Error::new(format!("resize volume {pool}/{volume}"), e))
    }

    /// A pool's UUID (None when there is no such pool).
    pub fn pool_uuid(&self, name: &str) -> Result<Option<String>> {
        match self.conn.lookup_storage_pool_by_name(name) {
            Ok(p) => Ok(Some(p.uuid_string().map_err(|e| Error::new(format!("storage pool {name}"), e))?)),
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => Ok(None),
            Err(e) => Err(Error::new(format!("storage pool {name}"), e)),
        }
    }

    /// Removes the pool of this UUID (stopped, its empty folder deleted, undefined) only
    /// while it holds no volume. Ok(false): not there, or not empty.
    pub fn remove_empty_pool(&self, uuid: &str) -> Result<bool> {
        let p = match self.conn.lookup_storage_pool_by_uuid_string(uuid) {
            Ok(p) => p,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => return Ok(false),
            Err(e) => return Err(Error::new(format!("storage pool {uuid}"), e)),
        };
        let _ = p.refresh(0);
        if p.num_of_volumes().unwrap_or(1) != 0 {
            return Ok(false);
        }
        if p.is_active().unwrap_or(false) {
            p.destroy().map_err(|e| Error::new(format!("stop storage pool {uuid}"), e))?;
        }
        // The folder goes only when empty (rmdir), so nothing else in it is touched.
        let _ = p.delete(0);
        p.undefine().map_err(|e| Error::new(format!("undefine storage pool {uuid}"), e))?;
        Ok(true)
    }

    /// Deletes a volume; a missing one is not an error.
    pub fn delete_volume(&self, pool: &str, volume: &str) -> Result<bool> {
        let p = match self.conn.lookup_storage_pool_by_name(pool) {
            Ok(p) => p,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => return Ok(false),
            Err(e) => return Err(Error::new(format!("storage pool {pool}"), e)),
        };
        // The file may exist while libvirt has not seen it yet (made by qemu-img, then interrupted).
        let _ = p.refresh(0);
        match p.lookup_storage_vol_by_name(volume) {
            Ok(v) => {
                v.delete(0).map_err(|e| Error::new(format!("delete volume {volume}"), e))?;
                Ok(true)
            }
            Err(e) if is_no_vol(&e) => Ok(false),
            Err(e) => Err(Error::new(format!("volume {volume}"), e)),
        }
    }
}

/// A directory pool readable by libvirt's QEMU user, private to everyone else.
fn phyllome_pool_xml(name: &str, path: &str) -> String {
    Element::new("pool")
        .attr("type", "dir")
        .child(Element::leaf("name", name))
        .child(
            Element::new("target").child(Element::leaf("path", path)).child(
                Element::new("permissions")
                    .child(Element::leaf("mode", "0711"))
                    .child(Element::leaf("owner", "0"))
                    .child(Element::leaf("group", "0")),
            ),
        )
        .render()
}
