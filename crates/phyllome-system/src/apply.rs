//! Carries out a [`Plan`] under a root directory.
//!
//! Files are written atomically (a temporary file renamed over the old one)
//! and keep their mode and owner. Commands and the libvirt pool go through an
//! [`Executor`], used on a live host only: on a `--root` tree nothing is
//! executed, commands are recorded, and the files a command is known to
//! change (grubby's) are written as it would write them. On a live host,
//! such a file the command left untouched is written the same way.

use crate::setup::{at, Action, FileEdit, Plan};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Runs what a live host needs beyond writing files.
pub trait Executor {
    /// Runs a command and fails when it does.
    fn run(&mut self, argv: &[String]) -> Result<(), String>;
    /// Defines, builds, starts and autostarts a storage pool in libvirt.
    /// Returns `Ok(false)` when this build cannot do it (the step is then
    /// reported as left to do).
    fn define_pool(&mut self, name: &str, path: &str) -> Result<bool, String>;
}

/// Runs commands with `std::process::Command` and defines no pool.
pub struct Commands;

impl Executor for Commands {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        run_command(argv)
    }
    fn define_pool(&mut self, _: &str, _: &str) -> Result<bool, String> {
        Ok(false)
    }
}

/// Runs one command, failing with its stderr.
pub fn run_command(argv: &[String]) -> Result<(), String> {
    let (cmd, args) = argv.split_first().ok_or("empty command")?;
    let out = std::process::Command::new(cmd).args(args).output().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({}): {}", cmd, out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// An error while applying: which change, and what failed.
#[derive(Debug, thiserror::Error)]
#[error("change {index} ({summary}) failed: {message}; the changes before it were made, run `phyllome host setup` again once fixed")]
pub struct ApplyError {
    pub index: usize,
    pub summary: String,
    pub message: String,
}

/// What happened to one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// A command on a `--root` tree: not run (its known file effects were written).
    Recorded,
    /// A step this build cannot carry out (told to the user).
    LeftToDo(String),
}

/// Applies every change of `plan` in order; stops at the first failure.
pub fn apply(root: &Path, live: bool, plan: &Plan, exec: &mut dyn Executor) -> Result<Vec<Outcome>, ApplyError> {
    let mut outcomes = Vec::new();
    for (i, change) in plan.changes.iter().enumerate() {
        let fail = |message: String| ApplyError { index: i + 1, summary: change.summary(), message };
        let outcome = match &change.action {
            Action::Write(edit) => write_file(root, edit, live).map(|_| Outcome::Done).map_err(fail)?,
            Action::Dir { path, mode, owner, .. } => {
                let full = at(root, path);
                fs::create_dir_all(&full).map_err(|e| fail(format!("create {path}: {e}")))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&full, Some(*uid), Some(*gid))
                        .map_err(|e| fail(format!("chown {path}: {e}")))?;
                }
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                    .map_err(|e| fail(format!("chmod {path}: {e}")))?;
                if live {
                    relabel(&full).map_err(fail)?;
                }
                Outcome::Done
            }
            Action::Run { argv, emulated } => {
                if live {
                    exec.run(argv).map_err(fail)?;
                    // A file the command left exactly as it was (an older grubby does not
                    // update /etc/default/grub or /etc/kernel/cmdline) gets the known
                    // effect from here, so the next run finds the host set up.
                    for e in emulated {
                        if fs::read_to_string(at(root, &e.path)).ok() == e.before {
                            write_file(root, e, live).map_err(fail)?;
                        }
                    }
                    Outcome::Done
                } else {
                    for e in emulated {
                        write_file(root, e, false).map_err(fail)?;
                    }
                    Outcome::Recorded
                }
            }
            Action::DefinePool { name, path } => {
                if !live {
                    Outcome::Recorded
                } else if exec.define_pool(name, path).map_err(fail)? {
                    Outcome::Done
                } else {
                    Outcome::LeftToDo(format!(
                        "this build cannot define pools yet: virsh pool-define-as {name} dir --target {path} && \
                         virsh pool-build {name} && virsh pool-start {name} && virsh pool-autostart {name}"
                    ))
                }
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Writes `edit.after` atomically. An existing file keeps its mode (and, live,
/// its owner); a new one is 0644 in directories created 0755.
fn write_file(root: &Path, edit: &FileEdit, live: bool) -> Result<(), String> {
    let full = at(root, &edit.path);
    let dir = full.parent().ok_or_else(|| format!("{} has no parent directory", edit.path))?;
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // Refuse to overwrite what changed since the plan was shown.
    let current = match fs::read_to_string(&full) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("read {}: {e}", edit.path)),
    };
    if current != edit.before {
        return Err(format!("{} changed since the plan was made; not overwritten", edit.path));
    }
    let meta = fs::metadata(&full).ok();
    let name = full.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.phyllome-new"));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
        f.write_all(edit.after.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("write {}: {e}", edit.path))?;
        let mode = meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {}: {e}", edit.path))?;
        if let (true, Some(m)) = (live, &meta) {
            std::os::unix::fs::chown(&tmp, Some(m.uid()), Some(m.gid()))
                .map_err(|e| format!("chown {}: {e}", edit.path))?;
        }
        fs::rename(&tmp, &full).map_err(|e| format!("replace {}: {e}", edit.path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if live {
        relabel(&full)?;
    }
    Ok(())
}

/// Gives a new file its SELinux label (a renamed temporary file keeps the
/// label of where it was made) on hosts where SELinux is on.
fn relabel(path: &Path) -> Result<(), String> {
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        return Ok(());
    }
    match ["/usr/sbin/restorecon", "/sbin/restorecon"].iter().find(|p| Path::new(p).exists()) {
        Some(restorecon) => run_command(&[restorecon.to_string(), path.display().to_string()]),
        None => Ok(()),
    }
}
