//! Every path the engine keeps state in, and its mode, in one table ([`ALL`]).
//!
//! Each folder is made by the code that first needs it, with the mode given here; the
//! files in it get theirs from the same row. A mode of 0 means the folder is libvirt's
//! (or its pool's) and Phyllome does not set it. In the tests' own build (`test-hooks`)
//! two of them can be put elsewhere, named in `test_env`, so tests never touch the host's.

use std::path::PathBuf;

/// One place the engine keeps state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePath {
    pub path: &'static str,
    /// What it holds.
    pub holds: &'static str,
    /// The folder's mode when Phyllome makes it (0: not Phyllome's to set).
    pub dir_mode: u32,
    /// The mode of the files Phyllome writes in it.
    pub file_mode: u32,
    /// The variable that puts it elsewhere in the tests' build.
    pub test_env: Option<&'static str>,
}

/// The storage pool Phyllome keeps its disks in, when Phyllome creates it.
pub const POOL_PATH: &str = "/var/lib/libvirt/images/phyllome";
/// The host's ISO folder: installer media and driver discs (`phyllome iso`, the web UI's uploads).
pub const ISO_DIR: &str = "/var/lib/phyllome/isos";
/// Where a VM's direct-boot kernel and initrd are copied (`BOOT_DIR/NAME/`), so
/// libvirt relabels Phyllome's copies, never the user's files.
pub const BOOT_DIR: &str = "/var/lib/phyllome/boot";
/// The names of the kernel's and initrd's copies in [`boot_dir`].
pub const KERNEL_COPY: &str = "vmlinuz";
pub const INITRD_COPY: &str = "initrd.img";
/// Claims of new VMs' names while they are made (create, clone, import; `+export+NAME` for an export).
pub const JOURNAL_DIR: &str = "/var/lib/phyllome/pending";
/// One lock per VM (by UUID) while an operation holds it.
pub const LOCK_DIR: &str = "/var/lib/phyllome/operations";
/// Migrations' records (by VM UUID), until each move is settled.
pub const MOVES_DIR: &str = "/var/lib/phyllome/pending-migrations";
/// Where the release before the per-VM lock kept snapshot operations' records: read by recovery only.
pub const OLD_SNAPSHOT_RECORDS: &str = "/var/lib/phyllome/pending-snapshots";
/// Snapshots: one folder per VM (by UUID), one per snapshot.
pub const SNAPSHOT_DIR: &str = "/var/lib/phyllome/snapshots";
/// Where a memory state is in plaintext while it is saved or restored: a tmpfs
/// mounted for the operation (`MEMORY_RUN/PID`), so it is never on the host's disk.
pub const MEMORY_RUN: &str = "/run/phyllome/snapshot-memory";
/// libvirt's swtpm state folders (`UUID/tpm2`).
pub const SWTPM_DIR: &str = "/var/lib/libvirt/swtpm";
/// Where imports stage the parts they read (`STAGING_DIR/PID-N`), before checking them.
pub const STAGING_DIR: &str = "/var/lib/phyllome/import";
/// The named remote hosts (`phyllome host add`).
pub const HOSTS_FILE: &str = "/var/lib/phyllome/hosts.toml";

/// The table.
pub const ALL: &[StatePath] = &[
    StatePath {
        path: POOL_PATH,
        holds: "the phyllome pool's disk volumes",
        dir_mode: 0,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: ISO_DIR,
        holds: "install media and driver discs",
        dir_mode: 0o755,
        file_mode: 0o644,
        test_env: None,
    },
    StatePath {
        path: BOOT_DIR,
        holds: "copies of direct-boot kernels and initrds, per VM",
        dir_mode: 0o755,
        file_mode: 0o644,
        test_env: None,
    },
    StatePath {
        path: JOURNAL_DIR,
        holds: "crash records: a new VM's name claimed",
        dir_mode: 0o700,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: LOCK_DIR,
        holds: "crash records: one operation per VM",
        dir_mode: 0o700,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: MOVES_DIR,
        holds: "crash records: migrations until settled",
        dir_mode: 0o700,
        file_mode: 0o600,
        test_env: Some("PHYLLOME_TEST_PENDING_MIGRATIONS"),
    },
    StatePath {
        path: OLD_SNAPSHOT_RECORDS,
        holds: "crash records of an older release (read only)",
        dir_mode: 0,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: SNAPSHOT_DIR,
        holds: "snapshots, per VM UUID",
        dir_mode: 0o711,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: MEMORY_RUN,
        holds: "a tmpfs per process for a plaintext memory state",
        dir_mode: 0o700,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: SWTPM_DIR,
        holds: "libvirt's swtpm state, per VM UUID",
        dir_mode: 0,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: STAGING_DIR,
        holds: "an import's parts, per process",
        dir_mode: 0o700,
        file_mode: 0o600,
        test_env: None,
    },
    StatePath {
        path: HOSTS_FILE,
        holds: "the named remote hosts",
        dir_mode: 0o755,
        file_mode: 0o644,
        test_env: Some("PHYLLOME_TEST_HOSTS_FILE"),
    },
    StatePath {
        path: phyllome_host::kvm::CACHE_FILE,
        holds: "this boot's KVM probe verdict",
        dir_mode: 0o755,
        file_mode: 0o644,
        test_env: None,
    },
    StatePath {
        path: phyllome_host::platform::TOOLS_CACHE,
        holds: "this boot's swtpm and virtiofsd facts",
        dir_mode: 0o755,
        file_mode: 0o644,
        test_env: None,
    },
];

/// `path`, or in the tests' build the place its row's variable names.
fn place(path: &'static str) -> PathBuf {
    #[cfg(feature = "test-hooks")]
    if let Some(p) = ALL.iter().find(|r| r.path == path).and_then(|r| std::env::var(r.test_env?).ok()) {
        return p.into();
    }
    path.into()
}

/// Where migrations' records are.
pub fn moves_dir() -> PathBuf {
    place(MOVES_DIR)
}

/// Where the named remote hosts are.
pub fn hosts_file() -> PathBuf {
    place(HOSTS_FILE)
}

/// The folder holding the copies of VM `name`'s kernel and initrd.
pub fn boot_dir(name: &str) -> String {
    format!("{BOOT_DIR}/{name}")
}

/// libvirt's swtpm state folder of the VM with this UUID.
pub fn tpm_dir(uuid: &str) -> PathBuf {
    std::path::Path::new(SWTPM_DIR).join(uuid).join("tpm2")
}

/// The mode of the files Phyllome writes in `dir` (one of [`ALL`]).
pub fn file_mode(dir: &str) -> u32 {
    ALL.iter().find(|r| r.path == dir).map(|r| r.file_mode).unwrap_or(0o600)
}

/// Makes the folder `dir` (one of [`ALL`]) with its mode, when missing (its parents, when
/// missing too, get the usual 0755: QEMU's user must pass through `/var/lib/phyllome`).
pub fn make(dir: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if std::path::Path::new(dir).is_dir() {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(dir).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mode = ALL.iter().find(|r| r.path == dir).map(|r| r.dir_mode).filter(|m| *m != 0).unwrap_or(0o755);
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_path_is_listed_once_with_its_mode() {
        let mut paths: Vec<&str> = ALL.iter().map(|r| r.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), ALL.len(), "a path listed twice");
        for p in [POOL_PATH, ISO_DIR, BOOT_DIR, JOURNAL_DIR, LOCK_DIR, MOVES_DIR, SNAPSHOT_DIR, MEMORY_RUN, STAGING_DIR]
        {
            assert!(ALL.iter().any(|r| r.path == p), "{p} is not in the table");
        }
        // Crash records and staged parts name secrets' UUIDs and hold guest data: private.
        for p in [JOURNAL_DIR, LOCK_DIR, MOVES_DIR, STAGING_DIR, MEMORY_RUN] {
            assert_eq!(file_mode(p), 0o600, "{p}");
        }
        assert_eq!(boot_dir("a"), "/var/lib/phyllome/boot/a");
        assert_eq!(tpm_dir("u"), Path::new("/var/lib/libvirt/swtpm/u/tpm2"));
    }

    use std::path::Path;
}
