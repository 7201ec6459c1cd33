//! Does KVM really run guests here? `/dev/kvm` existing is not enough: in
//! some nested setups the device opens but every guest dies with "KVM
//! internal error" or hangs. The probe boots the host's own OVMF under KVM for
//! a few seconds and watches its serial output, the same firmware our VMs use.

use phyllome_model::host::{FirmwareDescriptor, KvmState};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the probe guest may take to reach the firmware's boot manager.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub state: KvmState,
    pub detail: String,
}

/// Reads what a probe run printed and decides. Pure, for tests.
pub fn judge(output: &str, exited: bool, timed_out: bool) -> Probe {
    let broken = |detail: String| Probe { state: KvmState::Broken, detail };
    if output.contains("BdsDxe") || output.contains("No bootable device") || output.contains("Booting from") {
        return Probe { state: KvmState::Usable, detail: "a probe guest ran its firmware under KVM".into() };
    }
    if let Some(line) = output.lines().find(|l| l.contains("KVM internal error") || l.contains("emulation failure")) {
        return broken(format!("the probe guest crashed under KVM: {}", line.trim()));
    }
    if timed_out {
        return broken(format!("the probe guest hung under KVM for {} s", PROBE_TIMEOUT.as_secs()));
    }
    if exited {
        let last = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return broken(format!("QEMU could not run a guest under KVM: {}", last.trim()));
    }
    broken("the probe guest gave no sign of life".into())
}

/// The arguments of a probe run: OVMF without secure boot when the host has
/// it (its boot manager prints `BdsDxe` on the serial port), else SeaBIOS
/// with its debug console.
pub fn probe_args(firmware: &[FirmwareDescriptor]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-m",
        "128",
        "-smp",
        "1",
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plain = firmware
        .iter()
        .find(|f| f.is_uefi_q35() && !f.has("secure-boot") && !f.has("requires-smm") && f.nvram_template.is_some());
    match plain {
        Some(f) => {
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,readonly=on,file={}", f.executable));
            args.push("-drive".into());
            // snapshot=on: the firmware may write its variables; nothing reaches the template.
            args.push(format!("if=pflash,format=raw,snapshot=on,file={}", f.nvram_template.as_deref().unwrap_or("")));
        }
        None => {
            args.extend(
                ["-chardev", "stdio,id=dbg,signal=off", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"]
                    .map(String::from),
            );
            // -serial stdio and the debugcon cannot both own stdio.
            args.retain(|a| a != "-serial");
            args.retain(|a| a != "stdio");
        }
    }
    args
}

/// Runs the probe: at most [`PROBE_TIMEOUT`].
pub fn probe(qemu: &Path, firmware: &[FirmwareDescriptor]) -> Probe {
    let mut child = match Command::new(qemu)
        .args(probe_args(firmware))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Probe { state: KvmState::Broken, detail: format!("cannot run {}: {e}", qemu.display()) },
    };
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let start = Instant::now();
    let mut output = String::new();
    let mut exited = false;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => output.push_str(&chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exited = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let verdict = judge(&output, false, false);
        if verdict.state == KvmState::Usable || verdict.detail.contains("crashed") {
            break;
        }
        if exited || matches!(child.try_wait(), Ok(Some(_))) {
            // Drain what is left.
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                output.push_str(&chunk);
            }
            exited = true;
            break;
        }
        if start.elapsed() > PROBE_TIMEOUT {
            timed_out = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    judge(&output, exited, timed_out)
}

/// A cached verdict, valid for this boot and this QEMU binary.
pub fn cache_key(root: &Path, qemu: &Path) -> Option<String> {
    let boot_id = std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id")).ok()?;
    let mtime = std::fs::metadata(qemu).and_then(|m| m.modified()).ok()?;
    let secs = mtime.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(format!("{}:{}:{secs}", boot_id.trim(), qemu.display()))
}

/// Where the verdict is kept for this boot (listed in the engine's `paths.rs`).
pub const CACHE_FILE: &str = "/run/phyllome/kvm-probe";

/// Probes once per boot: the verdict is kept in /run (tmpfs, gone at reboot).
pub fn probe_cached(qemu: &Path, firmware: &[FirmwareDescriptor]) -> Probe {
    let key = cache_key(Path::new("/"), qemu);
    if let (Some(key), Ok(text)) = (&key, std::fs::read_to_string(CACHE_FILE)) {
        let mut parts = text.splitn(3, '\n');
        if parts.next() == Some(key.as_str()) {
            let state = match parts.next() {
                Some("usable") => Some(KvmState::Usable),
                Some("broken") => Some(KvmState::Broken),
                _ => None,
            };
            if let Some(state) = state {
                return Probe { state, detail: parts.next().unwrap_or("").trim().to_string() };
            }
        }
    }
    let p = probe(qemu, firmware);
    if let Some(key) = key {
        let state = if p.state == KvmState::Usable { "usable" } else { "broken" };
        let _ = std::fs::create_dir_all("/run/phyllome");
        let _ = std::fs::write(CACHE_FILE, format!("{key}\n{state}\n{}\n", p.detail));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_boot_manager_means_usable() {
        assert_eq!(judge("BdsDxe: loading Boot0001", false, false).state, KvmState::Usable);
        assert_eq!(judge("SeaBIOS\nNo bootable device.", true, false).state, KvmState::Usable);
    }

    #[test]
    fn internal_error_hang_or_exit_mean_broken() {
        let p = judge("warning: x\nKVM internal error. Suberror: 1\nemulation failure\n", true, false);
        assert_eq!(p.state, KvmState::Broken);
        assert!(p.detail.contains("KVM internal error"), "{}", p.detail);
        assert!(judge("", false, true).detail.contains("hung"));
        assert!(judge("Could not access KVM kernel module: Permission denied\n", true, false)
            .detail
            .contains("Permission denied"));
    }

    #[test]
    fn probe_prefers_plain_ovmf() {
        let fw = FirmwareDescriptor {
            name: "60.json".into(),
            executable: "/c.fd".into(),
            nvram_template: Some("/v.fd".into()),
            interfaces: vec!["uefi".into()],
            machines: vec!["pc-q35-*".into()],
            features: vec![],
        };
        let args = probe_args(&[fw]).join(" ");
        assert!(args.contains("file=/c.fd") && args.contains("snapshot=on,file=/v.fd"), "{args}");
        let args = probe_args(&[]).join(" ");
        assert!(args.contains("isa-debugcon") && !args.contains("-serial"), "{args}");
    }
}
