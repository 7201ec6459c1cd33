//! A memory state: saved by libvirt into a private tmpfs (RAM, like the guest's own
//! memory), written to disk only encrypted with age under an identity kept in a libvirt
//! secret, and decrypted back into a tmpfs to restore.

use super::error::{io, Result, SnapshotError};
use super::session::SnapshotOp;
use crate::op::progress::{Progress, Report};
use crate::op::record::Made;
use crate::paths::MEMORY_RUN;
use crate::vm::snapshots::{vm_dir, SnapshotRecord};
use phyllome_libvirt::Libvirt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mounts a private tmpfs of `bytes` for a plaintext memory state; returns the folder.
pub(super) fn memory_mount(p: &mut Made, bytes: u64) -> Result<String> {
    let dir = format!("{MEMORY_RUN}/{}", std::process::id());
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io(&dir, e))?;
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700,nosuid,nodev,noexec"), "tmpfs", &dir])
        .status()
        .map_err(|e| io("mount", e))?;
    if !st.success() {
        let _ = std::fs::remove_dir(&dir);
        return Err(SnapshotError::CannotHere(format!(
            "cannot mount a tmpfs at {dir} for the memory state (mount exited {st}): a memory snapshot needs one"
        )));
    }
    p.mount = Some(dir.clone());
    Ok(dir)
}

/// Encrypts the saved memory into `part/memory.age` under a new age identity
/// kept in a libvirt secret; returns the secret's UUID.
pub(super) fn encrypt_memory(
    lv: &Libvirt,
    op: &mut SnapshotOp<'_>,
    file: &str,
    part: &Path,
    vm_name: &str,
    snap: &str,
    report: Report<'_>,
) -> Result<String> {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let out_path = part.join("memory.age");
    let usage = vm_dir(&op.uuid).join(snap).join("memory.age");
    let secret = lv.define_readable_secret(
        &usage.to_string_lossy(),
        &format!("phyllome: memory key of snapshot {snap} of VM {vm_name}"),
        identity.to_string().expose_secret().as_bytes(),
    )?;
    op.p.memory_secret = Some(secret.clone());
    op.save()?;
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| SnapshotError::Memory(snap.into(), e.to_string()))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out_path)
        .map_err(|e| io(&out_path, e))?;
    let mut w = enc.wrap_output(std::io::BufWriter::with_capacity(1 << 20, out)).map_err(|e| io(&out_path, e))?;
    let mut src = std::fs::File::open(file).map_err(|e| io(file, e))?;
    let total = src.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    loop {
        op.check()?;
        let n = src.read(&mut buf).map_err(|e| io(file, e))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).map_err(|e| io(&out_path, e))?;
        done += n as u64;
        report(Progress::Bytes { done, total });
    }
    let out = w.finish().map_err(|e| io(&out_path, e))?;
    out.into_inner().map_err(|e| io(&out_path, e.into_error()))?.sync_all().map_err(|e| io(&out_path, e))?;
    Ok(secret)
}

/// Decrypts a snapshot's memory into `to`.
pub(super) fn decrypt_memory(lv: &Libvirt, r: &SnapshotRecord, to: &str) -> Result<()> {
    let bad = |e: String| SnapshotError::Memory(r.name.clone(), e);
    let uuid = r.memory_secret.as_deref().ok_or_else(|| bad("its key is not recorded".into()))?;
    let value = lv.secret_value(uuid).map_err(|e| bad(format!("its key (libvirt secret {uuid}): {}", e.message)))?;
    let text = String::from_utf8(value).map_err(|_| bad("its key is not an age identity".into()))?;
    let identity: age::x25519::Identity =
        text.trim().parse().map_err(|_| bad("its key is not an age identity".into()))?;
    let path = vm_dir(&r.vm_uuid).join(&r.name).join("memory.age");
    let f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
    let dec = age::Decryptor::new(std::io::BufReader::with_capacity(1 << 20, f)).map_err(|e| bad(e.to_string()))?;
    let mut reader = dec.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(|e| bad(e.to_string()))?;
    let mut out =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to).map_err(|e| io(to, e))?;
    // A flipped byte or a cut file fails here (each 64 KiB chunk is authenticated).
    std::io::copy(&mut reader, &mut out).map_err(|e| bad(e.to_string()))?;
    Ok(())
}
