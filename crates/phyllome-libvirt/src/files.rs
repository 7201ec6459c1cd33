//! Files of the host a connection reaches, through libvirt's storage API only:
//! that host may be another machine, whose file system Phyllome never touches
//! directly. A folder is opened as a transient directory pool (gone with the
//! call), its files are volumes: one is made exclusively with its mode and
//! owner, filled by a volume upload, read by a volume download, and removed
//! only while it still has the key it was made with. The volumes of a named
//! pool (a VM's disk) are made and filled the same way.

use crate::{Error, Libvirt, Result};
use phyllome_model::xml::Element;
use std::sync::atomic::{AtomicU32, Ordering};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

/// A file's mode, and its owner and group (None: libvirtd's, root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
}

/// Transient pools of this process are told apart by a counter: two threads may open folders at once.
static NEXT: AtomicU32 = AtomicU32::new(0);

fn refused(op: String, message: &str) -> Error {
    Error { op, message: message.into(), code: 0 }
}

/// `dir/name`, for messages.
fn at(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

impl Libvirt {
    /// A transient directory pool over `dir`, removed by the caller (`destroy`). `build`:
    /// the folder (and its parents) are made when missing; otherwise a folder that does not
    /// exist there is None.
    pub(crate) fn open_folder(&self, dir: &str, build: bool) -> Result<Option<StoragePool>> {
        let name = format!("phyllome-files-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let xml = Element::new("pool")
            .attr("type", "dir")
            .child(Element::leaf("name", &name))
            .child(Element::new("target").child(Element::leaf("path", dir)))
            .render();
        let flags = if build { sys::VIR_STORAGE_POOL_CREATE_WITH_BUILD } else { 0 };
        // libvirt allows one pool over a folder: another command's transient pool over the
        // same folder is gone within moments, so it is waited for (up to 10 s).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.conn.create_storage_pool_xml(&xml, flags) {
                Ok(p) => return Ok(Some(p)),
                // Not built, and no such folder there: libvirt cannot start the pool.
                Err(e) if !build && e.message().contains("No such file or directory") => return Ok(None),
                Err(e)
                    if e.message().contains("conflict with pool: 'phyllome-files-")
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => return Err(Error::new(format!("open {dir} there"), e)),
            }
        }
    }

    /// `f` over the folder `dir` of this connection's host (None: no such folder), the
    /// transient pool removed afterwards whatever `f` did.
    fn in_folder<T>(&self, dir: &str, build: bool, f: impl FnOnce(&StoragePool) -> Result<T>) -> Result<Option<T>> {
        let Some(pool) = self.open_folder(dir, build)? else { return Ok(None) };
        let r = f(&pool);
        let _ = pool.destroy();
        r.map(Some)
    }

    /// Whether the file `dir/name` exists on this connection's host.
    pub fn file_exists(&self, dir: &str, name: &str) -> Result<bool> {
        Ok(self.in_folder(dir, false, |p| Ok(p.lookup_storage_vol_by_name(name).is_ok()))?.unwrap_or(false))
    }

    /// The volume key of the file `dir/name` on this connection's host (its identity there), if it exists.
    pub fn file_key(&self, dir: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .in_folder(dir, false, |p| Ok(p.lookup_storage_vol_by_name(name).ok().and_then(|v| v.key().ok())))?
            .flatten())
    }

    /// The bytes of the file `dir/name` on this connection's host (None: no such file),
    /// refused when it is larger than `max_bytes`.
    pub fn read_file(&self, dir: &str, name: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .in_folder(dir, false, |p| match p.lookup_storage_vol_by_name(name) {
                Ok(v) => self.download(&v, &at(dir, name), max_bytes).map(Some),
                Err(_) => Ok(None),
            })?
            .flatten())
    }

    /// Whether the folder `dir` exists on this connection's host (the transient pool is never
    /// built, so nothing there changes).
    pub fn folder_exists(&self, dir: &str) -> Result<bool> {
        Ok(self.in_folder(dir, false, |_| Ok(()))?.is_some())
    }

    /// The owner and group of the folder `dir` on this connection's host (None: no such folder).
    pub fn folder_owner(&self, dir: &str) -> Result<Option<(u32, u32)>> {
        Ok(self
            .in_folder(dir, false, |p| {
                let xml = p.xml_desc(0).map_err(|e| Error::new(format!("folder {dir}"), e))?;
                Ok(target_owner(&xml))
            })?
            .flatten())
    }

    /// Makes the folder `dir` (and its parents) on this connection's host when missing.
    pub fn make_folder(&self, dir: &str) -> Result<()> {
        self.in_folder(dir, true, |_| Ok(())).map(|_| ())
    }

    /// Removes the folder `dir` of this connection's host only while it is empty; whether it
    /// did. It is a volume of a transient pool over its parent, which libvirt deletes with
    /// rmdir: a folder that holds anything stays.
    pub fn remove_empty_folder(&self, dir: &str) -> Result<bool> {
        let dir = dir.trim_end_matches('/');
        let Some((parent, name)) = dir.rsplit_once('/').filter(|(p, n)| !p.is_empty() && !n.is_empty()) else {
            return Ok(false);
        };
        Ok(self
            .in_folder(parent, false, |p| {
                let Ok(v) = p.lookup_storage_vol_by_name(name) else { return Ok(false) };
                let is_dir = v.info().is_ok_and(|i| i.kind == sys::VIR_STORAGE_VOL_DIR);
                Ok(is_dir && v.delete(0).is_ok())
            })?
            .unwrap_or(false))
    }

    /// Makes the new, empty file `dir/name` of `len` bytes on this connection's host (its
    /// folder made when missing), exclusively: an existing file is refused, never
    /// overwritten. Returns its volume key, the identity [`Libvirt::fill_file`] and
    /// [`Libvirt::remove_file`] check.
    pub fn new_file(&self, dir: &str, name: &str, len: u64, perms: Perms) -> Result<String> {
        self.in_folder(dir, true, |p| new_volume_in(p, &at(dir, name), name, len, perms))?
            .ok_or_else(|| refused(format!("create {}", at(dir, name)), "the folder cannot be made there"))
    }

    /// Writes `bytes` into the file `dir/name` made by [`Libvirt::new_file`], only while it
    /// still has `key`.
    pub fn fill_file(&self, dir: &str, name: &str, key: &str, bytes: &[u8]) -> Result<()> {
        self.in_folder(dir, false, |p| self.fill_in(p, &at(dir, name), name, key, bytes))?
            .ok_or_else(|| refused(format!("write {}", at(dir, name)), "its folder is gone"))
    }

    /// Removes the file `dir/name` of this connection's host only while it still has `key`; whether it did.
    pub fn remove_file(&self, dir: &str, name: &str, key: &str) -> Result<bool> {
        Ok(self.in_folder(dir, false, |p| remove_in(p, &at(dir, name), name, key))?.unwrap_or(false))
    }

    /// Makes the new, empty volume `name` of `len` bytes in the pool `pool`, exclusively; its key.
    pub fn new_volume(&self, pool: &str, name: &str, len: u64, perms: Perms) -> Result<String> {
        let p = self.pool(pool)?;
        new_volume_in(&p, &at(pool, name), name, len, perms)
    }

    /// Writes a disk image into the volume `name` of `pool` made by [`Libvirt::new_volume`],
    /// only while it still has `key`; libvirt then reads the image's format from the file.
    pub fn fill_volume(&self, pool: &str, name: &str, key: &str, bytes: &[u8]) -> Result<()> {
        let p = self.pool(pool)?;
        self.fill_in(&p, &at(pool, name), name, key, bytes)?;
        let _ = p.refresh(0);
        Ok(())
    }

    /// Uploads `bytes` into the volume `name` of `pool` if it still has `key`.
    pub(crate) fn fill_in(&self, pool: &StoragePool, what: &str, name: &str, key: &str, bytes: &[u8]) -> Result<()> {
        let v = pool.lookup_storage_vol_by_name(name).map_err(|e| Error::new(format!("write {what}"), e))?;
        if v.key().ok().as_deref() != Some(key) {
            return Err(refused(format!("write {what}"), "it is no longer the file this command made"));
        }
        let stream = virt::stream::Stream::new(&self.conn, 0).map_err(|e| Error::new("new stream", e))?;
        v.upload(&stream, 0, bytes.len() as u64, 0).map_err(|e| Error::new(format!("write {what}"), e))?;
        let mut off = 0;
        while off < bytes.len() {
            let end = (off + (1 << 20)).min(bytes.len());
            let n = stream.send(&bytes[off..end]).map_err(|e| Error::new(format!("write {what}"), e))?;
            if n == 0 {
                let _ = stream.abort();
                return Err(refused(format!("write {what}"), "the stream closed"));
            }
            off += n as usize;
        }
        stream.finish().map_err(|e| Error::new(format!("write {what}"), e))
    }

    /// A volume's bytes, at most `max_bytes` (more is an error, not a truncated file).
    pub(crate) fn download(&self, v: &StorageVol, what: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let info = v.info().map_err(|e| Error::new(format!("read {what}"), e))?;
        if info.capacity > max_bytes {
            return Err(refused(format!("read {what}"), &format!("larger than {max_bytes} bytes")));
        }
        let stream = virt::stream::Stream::new(&self.conn, 0).map_err(|e| Error::new("new stream", e))?;
        v.download(&stream, 0, info.capacity, 0).map_err(|e| Error::new(format!("read {what}"), e))?;
        let mut bytes = vec![];
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = stream.recv(&mut buf).map_err(|e| Error::new(format!("read {what}"), e))?;
            if got <= 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..got as usize]);
            if bytes.len() as u64 > max_bytes {
                let _ = stream.abort();
                return Err(refused(format!("read {what}"), &format!("larger than {max_bytes} bytes")));
            }
        }
        let _ = stream.finish();
        Ok(bytes)
    }
}

/// Makes the volume `name` in `pool` (refused when one exists: libvirt creates it with
/// O_EXCL), with its mode and owner; its key.
pub(crate) fn new_volume_in(pool: &StoragePool, what: &str, name: &str, len: u64, perms: Perms) -> Result<String> {
    if pool.lookup_storage_vol_by_name(name).is_ok() {
        return Err(refused(format!("create {what}"), "the file exists there already"));
    }
    let mut p = Element::new("permissions").child(Element::leaf("mode", format!("{:04o}", perms.mode)));
    if let Some((uid, gid)) = perms.owner {
        p = p.child(Element::leaf("owner", uid.to_string())).child(Element::leaf("group", gid.to_string()));
    }
    let xml = Element::new("volume")
        .child(Element::leaf("name", name))
        .child(Element::leaf("capacity", len.max(1).to_string()).attr("unit", "B"))
        .child(Element::new("target").child(Element::new("format").attr("type", "raw")).child(p))
        .render();
    let v = StorageVol::create_xml(pool, &xml, 0).map_err(|e| Error::new(format!("create {what}"), e))?;
    v.key().map_err(|e| Error::new("volume key", e))
}

/// Removes the volume `name` of `pool` if it still has `key`; whether it did.
pub(crate) fn remove_in(pool: &StoragePool, what: &str, name: &str, key: &str) -> Result<bool> {
    match pool.lookup_storage_vol_by_name(name) {
        Ok(v) if v.key().ok().as_deref() == Some(key) => {
            v.delete(0).map(|_| true).map_err(|e| Error::new(format!("delete {what}"), e))
        }
        _ => Ok(false),
    }
}

/// The `<owner>` and `<group>` of a pool's `<target><permissions>`: its folder's, as libvirt read them.
fn target_owner(pool_xml: &str) -> Option<(u32, u32)> {
    let doc = roxmltree::Document::parse(pool_xml).ok()?;
    let perms = doc
        .descendants()
        .find(|n| n.has_tag_name("permissions") && n.parent().is_some_and(|p| p.has_tag_name("target")))?;
    let num = |tag: &str| perms.children().find(|n| n.has_tag_name(tag))?.text()?.trim().parse::<u32>().ok();
    Some((num("owner")?, num("group")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_folders_owner_is_read_from_its_pools_target() {
        let xml = "<pool type='dir'><name>p</name><target><path>/var/lib/libvirt/qemu/nvram</path>\
                   <permissions><mode>0755</mode><owner>64055</owner><group>994</group></permissions></target></pool>";
        assert_eq!(super::target_owner(xml), Some((64055, 994)));
        assert_eq!(super::target_owner("<pool><target><path>/x</path></target></pool>"), None);
    }
}
