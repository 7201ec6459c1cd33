//! New disk keys and images: a random key, and the qcow2 image of a new disk, LUKS-encrypted
//! under it (or under a typed passphrase, through qemu-img).

use super::DiskError;
use phyllome_model::build::Encryption;
use std::io::Write;
use std::process::{Command, Stdio};

type Result<T> = std::result::Result<T, DiskError>;

/// PBKDF time for passphrases people type: slow on purpose (QEMU's default).
/// Disks keyed by a random 256-bit secret are written by `phyllome-disk`
/// with the LUKS1 minimum instead: brute force is hopeless whatever the count.
const PASSPHRASE_ITER_MS: u32 = 2000;

/// A random 256-bit key as 64 hex digits (printable, so it survives every layer as-is).
pub fn random_key() -> std::io::Result<Vec<u8>> {
    let mut raw = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    Ok(raw.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect())
}

/// Creates the qcow2 file with qemu-img. The key reaches qemu-img on its
/// standard input (`file=/dev/stdin`), never in its arguments or environment.
fn create_disk_file(path: &str, gib: u64, key: Option<(&[u8], u32)>) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some((_, iter_ms)) = key {
        cmd.args(["--object", "secret,id=sec0,file=/dev/stdin", "-o"]);
        cmd.arg(format!("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time={iter_ms}"));
    }
    cmd.arg(path).arg(format!("{gib}G"));
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| DiskError::Image(format!("cannot run qemu-img: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some((k, _)) = key {
            let _ = stdin.write_all(k);
        }
    }
    let out = child.wait_with_output().map_err(|e| DiskError::Image(e.to_string()))?;
    if !out.status.success() {
        return Err(DiskError::Image(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// Creates the qcow2 file, retrying QEMU's flaky PBKDF benchmark: QEMU
/// builds with the threaded benchmark (Debian's 7.2 among them) sometimes
/// measure 0 ms of CPU for the first round on a fast or busy host and fail with
/// "Unable to get accurate CPU usage" (fixed upstream in 2025). Each attempt
/// truncates the same scratch file.
fn create_disk(path: &str, gib: u64, key: Option<(&[u8], u32)>) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match create_disk_file(path, gib, key) {
            Err(DiskError::Image(msg)) if msg.contains("Unable to get accurate CPU usage") && attempt < 5 => {}
            other => return other,
        }
    }
}

/// The new disk's image, made here: for a random key, written directly by `phyllome-disk`
/// (about 2 MiB whatever the size); otherwise by qemu-img in a private scratch folder. It
/// is then written into the volume on the VM's host (`HostFiles::write_new_volume`).
pub fn disk_image(gib: u64, encryption: Encryption, key: Option<&[u8]>) -> Result<Vec<u8>> {
    if let (Encryption::Secret, Some(k)) = (encryption, key) {
        return phyllome_disk::bytes(gib << 30, k, phyllome_disk::Cost::RANDOM_KEY)
            .map_err(|e| DiskError::Image(e.to_string()));
    }
    let scratch = crate::host_files::Scratch::new().map_err(|e| DiskError::Image(format!("a scratch folder: {e}")))?;
    let path = scratch.path("disk.qcow2");
    create_disk(&path, gib, key.map(|k| (k, PASSPHRASE_ITER_MS)))?;
    std::fs::read(&path).map_err(|e| DiskError::Image(format!("{path}: {e}")))
}
