//! From user input to a model request, with the checks that need the host's
//! file system (the model itself does no I/O).

use phyllome_model::build::{DiskRef, Encryption, Request};
use std::path::Path;

/// The main disk of VM `name`: `NAME.qcow2` in `pool`.
pub fn disk_ref(name: &str, pool: &str, pool_path: &str, encryption: Encryption) -> DiskRef {
    let volume = format!("{name}.qcow2");
    DiskRef {
        pool: pool.to_string(),
        path: format!("{}/{volume}", pool_path.trim_end_matches('/')),
        volume,
        encryption,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("{what} {path:?} does not exist")]
    Missing { what: &'static str, path: String },
    #[error("{what} {path:?} is not a regular file")]
    NotAFile { what: &'static str, path: String },
    #[error("{what} {path:?} cannot be read: {err}")]
    Unreadable { what: &'static str, path: String, err: String },
}

fn check_file(what: &'static str, path: &str) -> Result<(), FileError> {
    let p = Path::new(path);
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::Missing { what, path: path.to_string() })
        }
        Err(e) => return Err(FileError::Unreadable { what, path: path.to_string(), err: e.to_string() }),
    };
    if !meta.is_file() && !meta.file_type().is_symlink() {
        use std::os::unix::fs::FileTypeExt;
        // Block devices are fine as install media.
        if !meta.file_type().is_block_device() {
            return Err(FileError::NotAFile { what, path: path.to_string() });
        }
    }
    std::fs::File::open(p).map_err(|e| FileError::Unreadable { what, path: path.to_string(), err: e.to_string() })?;
    Ok(())
}

/// Every file the request names must exist and be readable.
pub fn check_files(req: &Request) -> Result<(), FileError> {
    let mut files: Vec<(&'static str, &String)> = Vec::new();
    if let Some(p) = &req.iso {
        files.push(("ISO", p));
    }
    if let Some(p) = &req.drivers {
        files.push(("driver ISO", p));
    }
    if let Some(p) = &req.opencore {
        files.push(("OpenCore image", p));
    }
    if let Some(b) = &req.direct_boot {
        files.push(("kernel", &b.kernel));
        if let Some(i) = &b.initrd {
            files.push(("initrd", i));
        }
    }
    for (what, path) in files {
        // Relative paths are refused by the model with a clearer message.
        if path.starts_with('/') {
            check_file(what, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ref_joins_pool_path() {
        let d = disk_ref("vm1", "phyllome", "/var/lib/x/", Encryption::Secret);
        assert_eq!(d.volume, "vm1.qcow2");
        assert_eq!(d.path, "/var/lib/x/vm1.qcow2");
        assert_eq!(d.encryption, Encryption::Secret);
    }

    #[test]
    fn missing_iso_is_named() {
        let req = Request { iso: Some("/nonexistent/x.iso".into()), ..Default::default() };
        assert_eq!(check_files(&req), Err(FileError::Missing { what: "ISO", path: "/nonexistent/x.iso".into() }));
        let req = Request { iso: Some("/".into()), ..Default::default() };
        assert!(matches!(check_files(&req), Err(FileError::NotAFile { .. })));
    }
}
