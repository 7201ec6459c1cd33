//! The files of the host a libvirt connection reaches: this machine's own when
//! the connection is local (`Libvirt::is_local`), else another host's, reached
//! through its libvirt only (transient directory pools, volume uploads and
//! downloads: `phyllome-libvirt`'s `files.rs`), never through this machine's
//! file system. Every path an operation touches belongs to the host it is aimed
//! at: create, start, delete, their rollback and recovery, and a move's source
//! reach a VM's boot files, UEFI variable store and disk image through here.
//! What cannot work that way is refused up front by [`here_only`], before
//! anything is made (ARCHITECTURE.md lists each command).
//!
//! Identity: a file made here is known by its device and inode; one made through
//! libvirt by the volume key libvirt gave it (for a directory pool, its path), and
//! it is removed only while that key is still there.

use phyllome_libvirt::{Libvirt, Perms};
use serde::{Deserialize, Serialize};
use std::io::{Error, ErrorKind, Result, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A file by identity: its path, and the device and inode it had when made on this
/// machine, or the volume key libvirt gave it when it was made on another host through
/// its libvirt. Crash records name files this way, so recovery never acts on a name alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl FileId {
    /// The identity of the file now at `path` on this machine.
    pub fn of(path: &str) -> Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(FileId { path: path.to_string(), dev: m.dev(), ino: m.ino(), key: None })
    }

    /// A file made on another host through its libvirt, known there by its volume key.
    pub fn through(path: &str, key: &str) -> FileId {
        FileId { path: path.to_string(), dev: 0, ino: 0, key: Some(key.to_string()) }
    }

    /// A file about to be made here, known by its path until it exists.
    pub fn planned(path: &str) -> FileId {
        FileId { path: path.to_string(), dev: 0, ino: 0, key: None }
    }

    /// Whether the file at the path on this machine is still the one recorded (not replaced, not gone).
    pub fn still_there(&self) -> bool {
        self.key.is_none() && FileId::of(&self.path).is_ok_and(|now| now == *self)
    }
}

/// A command that needs the files of the machine it runs on, aimed at another host.
#[derive(Debug, thiserror::Error)]
#[error("{what}: not over a connection to another host ({uri}), whose files Phyllome reaches through its libvirt only; run phyllome on that host")]
pub struct NotHere {
    pub what: String,
    pub uri: String,
}

impl crate::errors::Classify for NotHere {
    fn kind(&self) -> crate::errors::ErrorKind {
        crate::errors::ErrorKind::Unsupported
    }
}

/// Who owns a file made on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The writer's (root).
    Writer,
    /// The owner and group of the folder it is made in (libvirt's NVRAM stores are QEMU's user's).
    LikeFolder,
}

/// The files of the host `lv` reaches.
pub struct HostFiles<'a> {
    lv: &'a Libvirt,
    local: bool,
}

fn lv_err(e: phyllome_libvirt::Error) -> Error {
    Error::other(e.to_string())
}

/// `path`'s folder and file name.
fn split(path: &str) -> Result<(&str, &str)> {
    match path.rsplit_once('/') {
        Some((dir, name)) if !dir.is_empty() && !name.is_empty() => Ok((dir, name)),
        _ => Err(Error::new(ErrorKind::InvalidInput, format!("{path}: not an absolute file path"))),
    }
}

/// The name a file is written under before it is linked into place (here only).
pub(crate) fn partial(path: &str) -> String {
    format!("{path}.phyllome-tmp")
}

/// Writes `bytes` into `f` from its start, leaving runs of zeros as holes, then syncs it.
fn write_sparse(f: &mut std::fs::File, bytes: &[u8]) -> Result<()> {
    for chunk in bytes.chunks(64 << 10) {
        if chunk.iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(chunk.len() as i64))?;
        } else {
            f.write_all(chunk)?;
        }
    }
    f.set_len(bytes.len() as u64)?;
    f.sync_all()
}

impl<'a> HostFiles<'a> {
    /// The files of the host `lv` reaches.
    pub fn of(lv: &'a Libvirt) -> HostFiles<'a> {
        HostFiles { lv, local: lv.is_local() }
    }

    /// Whether they are this machine's own files.
    pub fn is_local(&self) -> bool {
        self.local
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        if self.local {
            return Ok(Path::new(path).exists());
        }
        let (dir, name) = split(path)?;
        self.lv.file_exists(dir, name).map_err(lv_err)
    }

    /// The file's bytes; larger than `max` is an error.
    pub fn read(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        if self.local {
            let len = std::fs::metadata(path)?.len();
            if len > max {
                return Err(Error::other(format!("larger than {max} bytes")));
            }
            return std::fs::read(path);
        }
        let (dir, name) = split(path)?;
        self.lv.read_file(dir, name, max).map_err(lv_err)?.ok_or_else(|| Error::from(ErrorKind::NotFound))
    }

    /// The identity of the file now at `path`, if there is one.
    pub fn id_of(&self, path: &str) -> Option<FileId> {
        if self.local {
            return FileId::of(path).ok();
        }
        let (dir, name) = split(path).ok()?;
        self.lv.file_key(dir, name).ok().flatten().map(|key| FileId::through(path, &key))
    }

    /// Makes the folder `dir` (and its parents) when missing.
    pub fn make_dir(&self, dir: &str) -> Result<()> {
        if self.local {
            return std::fs::create_dir_all(dir);
        }
        self.lv.make_folder(dir).map_err(lv_err)
    }

    /// Removes the folder `dir` only while it is empty; whether it did.
    pub fn remove_dir(&self, dir: &str) -> bool {
        if self.local {
            return std::fs::remove_dir(dir).is_ok();
        }
        self.lv.remove_empty_folder(dir).unwrap_or(false)
    }

    /// Makes the new file `path` holding `bytes`, with `mode` and `owner`, never over an
    /// existing file, and calls `made` with its identity the moment it exists (a journal
    /// records it there). Here it is written under [`partial`]'s name and linked into place
    /// complete; through libvirt it is made empty and exclusively, recorded, then filled.
    /// Whatever fails, a file this call made does not stay.
    pub fn write_new(
        &self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        owner: Owner,
        made: &mut dyn FnMut(&FileId) -> Result<()>,
    ) -> Result<FileId> {
        let (dir, name) = split(path)?;
        if !self.local {
            let owner = match owner {
                Owner::Writer => None,
                Owner::LikeFolder => self.lv.folder_owner(dir).map_err(lv_err)?,
            };
            let key = self.lv.new_file(dir, name, bytes.len() as u64, Perms { mode, owner }).map_err(lv_err)?;
            let id = FileId::through(path, &key);
            let filled = made(&id).and_then(|_| self.lv.fill_file(dir, name, &key, bytes).map_err(lv_err));
            if let Err(e) = filled {
                let _ = self.lv.remove_file(dir, name, &key);
                return Err(e);
            }
            return Ok(id);
        }
        write_new_here(path, bytes, mode, owner, made)
    }

    /// Removes the file `f` made, only while it is still that file (inode here, volume key
    /// through libvirt); whether it did.
    pub fn remove(&self, f: &FileId) -> bool {
        match (&f.key, self.local) {
            (None, true) => f.still_there() && std::fs::remove_file(&f.path).is_ok(),
            (Some(key), false) => {
                split(&f.path).is_ok_and(|(dir, name)| self.lv.remove_file(dir, name, key).unwrap_or(false))
            }
            // Recorded on one kind of host, asked on another: not this file.
            _ => false,
        }
    }

    /// What an interrupted [`HostFiles::write_new`] of `path` may have left (here only).
    pub fn discard_partial(&self, path: &str) {
        if self.local {
            let _ = std::fs::remove_file(partial(path));
        }
    }

    /// Whether `pool` has a volume at `path`, or a file is there (the pool may not exist yet).
    pub fn volume_taken(&self, pool: &str, path: &str) -> Result<bool> {
        let (_, name) = split(path)?;
        if self.local {
            return Ok(self.lv.volume_info(pool, name).map_err(lv_err)?.is_some() || Path::new(path).exists());
        }
        if self.lv.pool_path(pool).map_err(lv_err)?.is_some() {
            // The pool's own listing, re-read: a transient pool may not open the folder a pool has.
            let _ = self.lv.refresh_pool(pool);
            return Ok(self.lv.volume_info(pool, name).map_err(lv_err)?.is_some());
        }
        self.exists(path)
    }

    /// Makes the new volume at `path` in `pool` holding the disk image `bytes` (mode `mode`,
    /// never over an existing file), and calls `made` with its identity the moment it exists,
    /// before anything is written into it. Whatever fails, a volume this call made does not stay.
    pub fn write_new_volume(
        &self,
        pool: &str,
        path: &str,
        bytes: &[u8],
        mode: u32,
        made: &mut dyn FnMut(&FileId) -> Result<()>,
    ) -> Result<FileId> {
        let (_, name) = split(path)?;
        if !self.local {
            let key =
                self.lv.new_volume(pool, name, bytes.len() as u64, Perms { mode, owner: None }).map_err(lv_err)?;
            let id = FileId::through(path, &key);
            let filled = made(&id).and_then(|_| self.lv.fill_volume(pool, name, &key, bytes).map_err(lv_err));
            if let Err(e) = filled {
                let _ = self.lv.delete_volume_by_key(pool, name, &key);
                return Err(e);
            }
            return Ok(id);
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                Error::new(ErrorKind::AlreadyExists, "it appeared meanwhile; nothing was overwritten")
            } else {
                e
            }
        })?;
        let id = FileId::of(path)?;
        let written = made(&id).and_then(|_| write_sparse(&mut f, bytes));
        if let Err(e) = written {
            drop(f);
            if id.still_there() {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        let _ = self.lv.refresh_pool(pool);
        Ok(id)
    }

    /// Removes a volume `f` of `pool` a create made, only while it is still that one (inode
    /// and inside the pool's folder here, volume key through libvirt); whether it did.
    pub fn remove_volume(&self, pool: &str, f: &FileId) -> bool {
        let removed = match (&f.key, self.local) {
            (None, true) => {
                let pool_dir = self.lv.pool_path(pool).ok().flatten();
                let inside = pool_dir.is_some_and(|d| Path::new(&f.path).parent() == Some(Path::new(&d)));
                inside && f.still_there() && std::fs::remove_file(&f.path).is_ok()
            }
            (Some(key), false) => {
                split(&f.path).is_ok_and(|(_, name)| self.lv.delete_volume_by_key(pool, name, key).unwrap_or(false))
            }
            _ => false,
        };
        if removed {
            let _ = self.lv.refresh_pool(pool);
        }
        removed
    }
}

/// [`HostFiles::write_new`] on this machine: written under [`partial`]'s name, then linked into place.
fn write_new_here(
    path: &str,
    bytes: &[u8],
    mode: u32,
    owner: Owner,
    made: &mut dyn FnMut(&FileId) -> Result<()>,
) -> Result<FileId> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let (dir, _) = split(path)?;
    let tmp = partial(path);
    // A partial file of an earlier, interrupted write of this very file.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        write_sparse(&mut f, bytes)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if owner == Owner::LikeFolder {
            let folder = std::fs::metadata(dir)?;
            std::os::unix::fs::chown(&tmp, Some(folder.uid()), Some(folder.gid()))?;
        }
        // A link never replaces a file that appeared meanwhile.
        std::fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                Error::new(ErrorKind::AlreadyExists, "it exists already; nothing was overwritten")
            } else {
                e
            }
        })
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    let id = FileId::of(path)?;
    if let Err(e) = made(&id) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(id)
}

/// Refuses `what` when `lv` reaches another host: it needs that host's files directly
/// (copies of disk images, TPM state, a folder to share...), which its libvirt does not give.
pub fn here_only(lv: &Libvirt, what: &str) -> std::result::Result<(), NotHere> {
    if lv.is_local() {
        Ok(())
    } else {
        Err(NotHere { what: what.to_string(), uri: lv.uri() })
    }
}

/// [`here_only`] for a command that works on this machine alone, before it connects.
pub fn here_only_uri(uri: &str, what: &str) -> std::result::Result<(), NotHere> {
    if phyllome_libvirt::uri_is_local(uri) {
        Ok(())
    } else {
        Err(NotHere { what: what.to_string(), uri: uri.to_string() })
    }
}

/// A private folder here (0700, removed on drop) for what is made here and then
/// uploaded to another host: a disk image qemu-img writes, a converted variable store.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new() -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "phyllome-scratch-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // Exclusive: a folder of that name someone else made is never used.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_known_by_its_inode_not_its_name() {
        let p = std::env::temp_dir().join(format!("phyllome-fileid-{}", std::process::id()));
        let path = p.to_str().unwrap();
        std::fs::write(&p, "a").unwrap();
        let id = FileId::of(path).unwrap();
        assert!(id.still_there());
        // Replaced by another file of the same name (made while the first still
        // existed, so with another inode): no longer ours.
        let other = std::env::temp_dir().join(format!("phyllome-fileid-other-{}", std::process::id()));
        std::fs::write(&other, "b").unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert!(!id.still_there());
        std::fs::remove_file(&p).unwrap();
        assert!(!id.still_there());
    }

    #[test]
    fn a_file_is_written_whole_or_not_at_all_and_never_over_another() {
        let s = Scratch::new().unwrap();
        let path = s.path("f");
        let mut seen = vec![];
        let mut made = |id: &FileId| {
            seen.push(id.clone());
            Ok(())
        };
        let id = write_new_here(&path, b"\0\0abc", 0o640, Owner::Writer, &mut made).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0abc");
        assert_eq!(seen, std::slice::from_ref(&id));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        assert!(!Path::new(&partial(&path)).exists(), "the partial name stays");
        // An existing file is refused and left as it was.
        let e = write_new_here(&path, b"other", 0o600, Owner::Writer, &mut |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0abc");
        // A journal that cannot record it: the file does not stay.
        let p2 = s.path("g");
        assert!(write_new_here(&p2, b"x", 0o600, Owner::Writer, &mut |_| Err(Error::other("full"))).is_err());
        assert!(!Path::new(&p2).exists());
    }
}
