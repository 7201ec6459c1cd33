//! Start (a typed passphrase in an ephemeral secret only while QEMU starts), stop
//! (power button, then the guest agent), kill, pause, resume, autostart.

use super::changed::refuse_changed;
use super::delete::recover;
use super::error::{Result, VmError};
use super::lookup::{state, summary};
use crate::disk;
use crate::op::progress::{note, Report};
use crate::op::record;
use phyllome_libvirt::{Libvirt, State};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Starts a domain, turning QEMU's LUKS error into a clear one.
pub(super) fn start_checked(lv: &Libvirt, name: &str) -> Result<()> {
    lv.start(name).map_err(|e| {
        if e.message.contains("Invalid password") || e.message.contains("cannot unlock") {
            VmError::WrongPassphrase(name.to_string())
        } else {
            VmError::Libvirt(e)
        }
    })
}

/// Starts a VM. For a passphrase-locked disk, `ask` is called for the
/// passphrase, which lives in an ephemeral libvirt secret only while QEMU starts.
pub fn start(lv: &Libvirt, name: &str, ask: &dyn Fn() -> Result<Vec<u8>>) -> Result<bool> {
    recover(lv);
    let _held = crate::op::lock::take(lv, name, record::Operation::Start)?;
    let st = state(lv, name)?;
    if st == State::Running {
        return Ok(false);
    }
    refuse_unfinished_move(lv, name)?;
    if st == State::Paused {
        lv.resume(name)?;
        return Ok(true);
    }
    let s = summary(lv, name)?;
    refuse_changed(lv, &s, "start it: the guest would write to an image that is not encrypted")?;
    // A qcow2 variable store lost since (libvirt cannot remake one itself).
    disk::nvram::prepare(lv, name)?;
    if s.encryption.as_deref() == Some("prompt") {
        let Some(path) = s.main_disk().and_then(|d| d.luks_secret.clone()) else {
            return Err(VmError::Disk(format!("{name} has no encrypted disk to unlock")));
        };
        let pass = ask()?;
        if pass.is_empty() {
            return Err(VmError::EmptyPassphrase);
        }
        let _ = lv.undefine_volume_secret(&path);
        lv.define_volume_secret(&path, &format!("phyllome: disk passphrase of VM {name}"), true, &pass)?;
        let r = start_checked(lv, name);
        let _ = lv.undefine_volume_secret(&path);
        r?;
    } else {
        start_checked(lv, name)?;
    }
    Ok(true)
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stopped {
    AlreadyOff,
    PowerButton,
    GuestAgent,
    Forced,
}

/// Stops a VM gracefully: the ACPI power button, then (after half the
/// timeout) the guest agent; forced off at the end only when `force`.
pub fn stop(lv: &Libvirt, name: &str, timeout: Duration, force: bool, progress: Report<'_>) -> Result<Stopped> {
    crate::op::lock::check(lv, name)?;
    match state(lv, name)? {
        State::Shutoff => return Ok(Stopped::AlreadyOff),
        State::Paused => lv.resume(name)?,
        _ => {}
    }
    lv.shutdown(name, false)?;
    note(progress, &format!("pressed {name}'s power button; waiting up to {} s", timeout.as_secs()));
    let start = Instant::now();
    let mut tried_agent = false;
    let mut last_report = 0;
    loop {
        if state(lv, name)? == State::Shutoff {
            return Ok(if tried_agent { Stopped::GuestAgent } else { Stopped::PowerButton });
        }
        let waited = start.elapsed();
        if !tried_agent && waited >= timeout / 2 {
            tried_agent = true;
            if lv.shutdown(name, true).is_ok() {
                note(progress, &format!("asked {name}'s guest agent to shut down"));
            }
        }
        if waited >= timeout {
            break;
        }
        if waited.as_secs() >= last_report + 5 {
            last_report = waited.as_secs();
            note(progress, &format!("still waiting for {name} ({last_report} s)"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if force {
        lv.destroy(name)?;
        return Ok(Stopped::Forced);
    }
    Err(VmError::StopTimeout { name: name.to_string(), secs: timeout.as_secs() })
}

pub fn kill(lv: &Libvirt, name: &str) -> Result<()> {
    match state(lv, name)? {
        State::Shutoff => Err(VmError::NotRunning(name.into())),
        _ => Ok(lv.destroy(name)?),
    }
}

pub fn pause(lv: &Libvirt, name: &str) -> Result<()> {
    crate::op::lock::check(lv, name)?;
    match state(lv, name)? {
        State::Running => Ok(lv.suspend(name)?),
        State::Paused => Ok(()),
        _ => Err(VmError::NotRunning(name.into())),
    }
}

pub fn resume(lv: &Libvirt, name: &str) -> Result<()> {
    crate::op::lock::check(lv, name)?;
    match state(lv, name)? {
        State::Paused => {
            let io_error = lv.pause_reason(name)? == Some("I/O error");
            lv.resume(name)?;
            if io_error {
                // QEMU retries the failed write and stops again when it fails: watch for a few seconds.
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(200));
                    // libvirt may report the second stop's reason as "unknown": a pause right after
                    // this resume of an I/O-error pause is that error again.
                    if state(lv, name)? == State::Paused {
                        return Err(VmError::IoPaused { name: name.into(), why: io_error_cause(lv, name) });
                    }
                }
            }
            Ok(())
        }
        State::Running => Ok(()),
        _ => Err(VmError::NotRunning(name.into())),
    }
}

/// What is known of why a VM's disk fails: its pool's free space.
fn io_error_cause(lv: &Libvirt, name: &str) -> String {
    let pool = summary(lv, name).ok().and_then(|s| s.main_disk().and_then(|d| d.pool.clone()));
    match pool.as_deref().map(|p| (p, lv.pool_free(p))) {
        Some((p, Ok(Some(free)))) if free < 64 << 20 => {
            format!("its disk's storage pool {p} is full ({free} bytes free): free space there, then resume")
        }
        Some((p, Ok(Some(free)))) => format!(
            "its disk's storage pool {p} has {:.1} GiB free, so the disk itself fails: see /var/log/libvirt/qemu/{name}.log",
            free as f64 / (1u64 << 30) as f64
        ),
        _ => format!("the disk is full or failing: see /var/log/libvirt/qemu/{name}.log"),
    }
}

/// Whether libvirt starts the VM when the host (libvirtd) starts.
pub fn set_autostart(lv: &Libvirt, name: &str, on: bool) -> Result<()> {
    state(lv, name)?;
    if on {
        refuse_unfinished_move(lv, name)?;
    }
    Ok(lv.set_autostart(name, on)?)
}

/// A VM whose move to another host was cut short (its record still there after
/// [`recover`]) may run on that host: it is not started here until the move is settled.
fn refuse_unfinished_move(lv: &Libvirt, name: &str) -> Result<()> {
    let uuid = lv.uuid(name)?;
    match crate::op::moves::unfinished(lv, &uuid) {
        Some((to, why)) => Err(VmError::MoveUnfinished { name: name.into(), to, why }),
        None => Ok(()),
    }
}
