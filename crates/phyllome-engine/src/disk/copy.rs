//! Copies of disk images and the small files beside them (UEFI variables, TPM state,
//! boot files): runs of zeros left as holes, owner and mode kept, never over a file.

use super::{io, DiskError};
use crate::op::progress::{Progress, Report};
use crate::op::StepError;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type Result<T> = std::result::Result<T, DiskError>;

/// Copies `src` to a new file `dst` (0600), leaving runs of zeros as holes, then syncs it.
pub fn sparse(src: &Path, dst: &Path, report: Report<'_>, interrupted: &AtomicBool) -> Result<u64> {
    let mut to =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst).map_err(|e| io(dst, e))?;
    sparse_into(src, &mut to, dst, report, interrupted)
}

/// [`sparse`] into a file made already (empty), `dst` its path.
pub fn sparse_into(
    src: &Path,
    to: &mut std::fs::File,
    dst: &Path,
    report: Report<'_>,
    interrupted: &AtomicBool,
) -> Result<u64> {
    let mut from = std::fs::File::open(src).map_err(|e| io(src, e))?;
    let total = from.metadata().map_err(|e| io(src, e))?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut last = std::time::Instant::now();
    loop {
        if interrupted.load(Ordering::Relaxed) {
            return Err(StepError::Interrupted.into());
        }
        let n = from.read(&mut buf).map_err(|e| io(src, e))?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(64 << 10) {
            if chunk.iter().all(|b| *b == 0) {
                to.seek(SeekFrom::Current(chunk.len() as i64)).map_err(|e| io(dst, e))?;
            } else {
                to.write_all(chunk).map_err(|e| io(dst, e))?;
            }
        }
        done += n as u64;
        if last.elapsed() > Duration::from_millis(200) {
            report(Progress::Bytes { done, total });
            last = std::time::Instant::now();
        }
    }
    to.set_len(done).map_err(|e| io(dst, e))?;
    to.sync_all().map_err(|e| io(dst, e))?;
    report(Progress::Bytes { done, total });
    Ok(done)
}

/// Gives `path` the owner and mode of `like`.
pub fn same_owner(path: &Path, like: &std::fs::Metadata) -> Result<()> {
    std::os::unix::fs::chown(path, Some(like.uid()), Some(like.gid())).map_err(|e| io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(like.mode() & 0o7777)).map_err(|e| io(path, e))
}

/// Copies the regular files of folder `src` (not libvirt's `.lock`) into new folder `dst`,
/// owner and mode kept: a TPM state folder.
pub fn dir_files(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir(dst).map_err(|e| io(dst, e))?;
    let meta = std::fs::metadata(src).map_err(|e| io(src, e))?;
    for e in std::fs::read_dir(src).map_err(|e| io(src, e))?.flatten() {
        let m = e.metadata().map_err(|x| io(e.path(), x))?;
        if !m.is_file() || e.file_name() == ".lock" {
            continue;
        }
        let to = dst.join(e.file_name());
        sparse(&e.path(), &to, &crate::op::progress::quiet, &AtomicBool::new(false))?;
        same_owner(&to, &m)?;
    }
    same_owner(dst, &meta)
}

/// Bytes a folder's files take on disk.
pub fn du(path: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(path) else { return 0 };
    dir.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_content_and_leaves_holes() {
        let dir = std::env::temp_dir().join(format!("phyllome-snap-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let mut data = vec![0u8; 3 << 20];
        data[10] = 1;
        data[(3 << 20) - 1] = 7;
        std::fs::write(&src, &data).unwrap();
        let dst = dir.join("dst");
        let n = sparse(&src, &dst, &crate::op::progress::quiet, &AtomicBool::new(false)).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let m = std::fs::metadata(&dst).unwrap();
        assert!(m.blocks() * 512 < 1 << 20, "{} bytes allocated", m.blocks() * 512);
        assert_eq!(m.mode() & 0o777, 0o600);
        // An existing destination is never overwritten.
        assert!(sparse(&src, &dst, &crate::op::progress::quiet, &AtomicBool::new(false)).is_err());
        // An interrupted copy stops.
        let stop = AtomicBool::new(true);
        assert!(matches!(
            sparse(&src, &dir.join("x"), &crate::op::progress::quiet, &stop),
            Err(DiskError::Stopped(StepError::Interrupted))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
